//! Tap descriptors handed over with API requests, as Kata Containers and ch-remote send
//! them: `SCM_RIGHTS` ancillary data on the request's bytes. A tap the test opened in a
//! network namespace of its own reaches a hot-plug guest that exchanges ARP with the host
//! through it; a body that names descriptor numbers without sending any is refused, and the
//! VMM's own descriptor of that number is left alone.
//!
//! Needs root (a network namespace and taps); without it each test says so and passes, but
//! under `CI=true` that is a failure.

mod common;

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::*;
use devices::netns::NetNs;
use devices::tap::Tap;
use serde_json::{json, Value};

/// The line the `virtio_net` guest prints in hot-plug mode before it sleeps.
const WAITING_LINE: &str = "virtio_net: waiting for a hot-plugged device\n";

fn ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 && Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: needs root and /dev/net/tun (CI=true: not skipped)"
    );
    println!("skipping {test}: needs root and /dev/net/tun");
    false
}

/// `PUT /api/v1/endpoint` with `body`, and `fds` sent with it as `SCM_RIGHTS` data.
fn send_with_fds(socket: &Path, endpoint: &str, body: &Value, fds: &[RawFd]) -> (u16, String) {
    let path = format!("/api/v1/{endpoint}");
    let body = body.to_string();
    let r = api::client::request_with_fds(socket, "PUT", &path, Some(&body), fds, None)
        .expect("the API answers");
    (r.status, r.body)
}

/// A tap named `name` in `ns`, with `host`/24, up; the test holds its descriptor.
fn test_tap(ns: &NetNs, name: &str, host: &str) -> Tap {
    let tap = ns.run(|| Tap::open(Some(name), 1).expect("tap").remove(0));
    ns.ip(&["addr", "add", &format!("{host}/24"), "dev", name]);
    ns.ip(&["link", "set", name, "up"]);
    tap
}

/// Palisade in `ns` with the hot-plug `virtio_net` guest waiting.
fn waiting_guest(ns: &NetNs, dir: &TempDir, host: &str, me: &str) -> ApiVmm {
    let kernel = guest("virtio_net");
    let cmdline = format!("wait=hotplug host={host} me={me}");
    let serial = ApiVmm::serial_arg(dir);
    let mut cmd = palisade();
    cmd.args([
        "--serial",
        &serial,
        "--console",
        "off",
        "--memory",
        "size=128M",
    ])
    .args(["--kernel", path_str(&kernel), "--cmdline", &cmdline])
    .args(["--no-shutdown", "-v"]);
    ns.enter(&mut cmd);
    let vmm = ApiVmm::spawn(cmd, dir, &[]);
    vmm.wait_serial(WAITING_LINE, 1);
    vmm
}

/// The guest passed with the hot-added device, and frames went both ways through it.
fn expect_traffic(vmm: &ApiVmm, id: &str) {
    let text = vmm.wait_serial("PASS virtio_net\n", 1);
    assert!(text.contains("hot-plugged: "), "{text}");
    let counters = vmm.get("vm.counters");
    assert!(
        counters[id]["tx_frames"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert!(
        counters[id]["rx_frames"].as_u64().unwrap() >= 1,
        "{counters}"
    );
}

fn open_fds(pid: u32) -> Vec<RawFd> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

#[test]
fn a_tap_sent_with_add_net_is_used_and_numbers_without_descriptors_are_refused() {
    if !ready("a_tap_sent_with_add_net_is_used_and_numbers_without_descriptors_are_refused") {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("tap-fds");
    let (host, me) = ("10.231.0.1", "10.231.0.2");
    let tap = test_tap(&ns, "ktap0", host);
    let vmm = waiting_guest(&ns, &dir, host, me);

    // A number the VMM holds (its highest), with no descriptor sent: refused, untouched.
    let own = *open_fds(vmm.pid()).iter().max().unwrap();
    let (code, body) = send_with_fds(
        &vmm.socket,
        "vm.add-net",
        &json!({"id": "stolen", "fds": [own]}),
        &[],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("SCM_RIGHTS"), "{body}");
    assert!(open_fds(vmm.pid()).contains(&own), "fd {own} was closed");
    assert_eq!(vmm.state(), "Running");
    // Descriptors sent to an endpoint that takes none are refused (and closed).
    let (code, body) = send_with_fds(
        &vmm.socket,
        "vm.add-disk",
        &json!({"path": "/nonexistent"}),
        &[tap.as_raw_fd()],
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("takes no file descriptors"), "{body}");

    // The tap, sent as Kata sends it: the body's number is a placeholder.
    let before = open_fds(vmm.pid()).len();
    let (code, body) = send_with_fds(
        &vmm.socket,
        "vm.add-net",
        &json!({"id": "katanet", "fds": [3]}),
        &[tap.as_raw_fd()],
    );
    assert_eq!(code, 200, "{body}\n{}", vmm.log_text());
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["id"], "katanet");
    // The VMM holds its own copy of the tap; the test may close its one.
    assert!(open_fds(vmm.pid()).len() > before);
    drop(tap);
    expect_traffic(&vmm, "katanet");
    let info = vmm.info();
    let net = info["config"]["net"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "katanet")
        .unwrap()
        .clone();
    assert_eq!(net["fds"].as_array().unwrap().len(), 1, "{net}");
    drop(vmm);
    ns.remove();
}

/// `client add-net fd=3,id=ID` with the test's tap as the client's descriptor 3: the client
/// sends the descriptors `fd=` names from its own table.
fn client_hands_its_tap_over(mut client: Command, tag: &str, subnet: u8) {
    let ns = NetNs::new();
    let dir = TempDir::new(tag);
    let (host, me) = (format!("10.{subnet}.0.1"), format!("10.{subnet}.0.2"));
    let tap = test_tap(&ns, &format!("{tag}0"), &host);
    let vmm = waiting_guest(&ns, &dir, &host, &me);
    let fd = tap.as_raw_fd();
    client
        .arg("--api-socket")
        .arg(&vmm.socket)
        .args(["add-net", "fd=3,id=handed"]);
    // SAFETY: dup2/fcntl in the child between fork and exec, on a descriptor the parent
    // holds; when the tap already is descriptor 3, dup2 would leave it close-on-exec.
    unsafe {
        client.pre_exec(move || {
            let r = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = client.output().expect("run the client");
    assert!(
        out.status.success(),
        "{tag}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        vmm.log_text()
    );
    drop(tap);
    expect_traffic(&vmm, "handed");
    drop(vmm);
    ns.remove();
}

#[test]
fn ch_remote_add_net_fd_hands_its_tap_over() {
    if !ready("ch_remote_add_net_fd_hands_its_tap_over") {
        return;
    }
    let Some(ch) = reference_tool("CH_REMOTE", "ch-remote") else {
        return;
    };
    client_hands_its_tap_over(Command::new(ch), "chtap", 232);
}

#[test]
fn palisade_remote_add_net_fd_hands_its_tap_over() {
    if !ready("palisade_remote_add_net_fd_hands_its_tap_over") {
        return;
    }
    client_hands_its_tap_over(remote(), "prtap", 233);
}

#[test]
fn a_tap_sent_with_vm_create_is_the_boot_network_device() {
    if !ready("a_tap_sent_with_vm_create_is_the_boot_network_device") {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("tap-fds-create");
    let (host, me) = ("10.234.0.1", "10.234.0.2");
    let tap = test_tap(&ns, "ctap0", host);
    let mut cmd = palisade();
    cmd.args(["--no-shutdown", "-v"]);
    ns.enter(&mut cmd);
    let vmm = ApiVmm::spawn(cmd, &dir, &[]);
    let config = json!({
        "payload": {"kernel": guest("virtio_net"), "cmdline": format!("host={host} me={me}")},
        "memory": {"size": 128 << 20},
        "serial": {"mode": "File", "file": dir.path("serial.log")},
        "console": {"mode": "Off"},
        "net": [{"id": "boot0", "fds": [-1]}],
    });
    // Without the descriptor: refused, and nothing is created.
    let (code, body) = send_with_fds(&vmm.socket, "vm.create", &config, &[]);
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        api::client::request(&vmm.socket, "GET", "/api/v1/vm.info", None)
            .unwrap()
            .status,
        404
    );
    let (code, body) = send_with_fds(&vmm.socket, "vm.create", &config, &[tap.as_raw_fd()]);
    assert_eq!(code, 204, "{body}\n{}", vmm.log_text());
    drop(tap);
    assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
    let text = vmm.wait_serial("PASS virtio_net\n", 1);
    assert!(text.contains("link: up"), "{text}");
    let counters = vmm.get("vm.counters");
    assert!(
        counters["boot0"]["rx_frames"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    drop(vmm);
    ns.remove();
}
