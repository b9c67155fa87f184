//! Networking from the guest's side: the `virtio_net` guest drives a virtio-net device,
//! broadcasts an ARP request for the host's address on its tap and waits for the host
//! kernel's reply. Every test runs Palisade inside a network namespace of its own, which it
//! creates and removes, so that the taps and the traffic stay on the test's own interfaces.
//!
//! The tests need root (namespaces and taps); without it each prints one line and passes.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use devices::netns::NetNs;
use serde_json::{json, Value};

/// The MAC address the tests give the guest when they choose it.
const FIXED_MAC: &str = "52:54:00:12:34:56";
/// The line the `virtio_net` guest prints in hot-plug mode before it sleeps.
const WAITING_LINE: &str = "virtio_net: waiting for a hot-plugged device\n";

/// Whether the network tests can run here; if not, says why on one line.
fn net_ready(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        Some("needs root for network namespaces and tap devices")
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        Some("/dev/net/tun is missing")
    } else if !Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Some("the ip command (iproute2) is missing")
    } else {
        None
    };
    if let Some(why) = why {
        // On CI the machine has all of it: a missing piece there is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: {why} (CI=true: not skipped)"
        );
        println!("skipping {test}: {why}");
        return false;
    }
    true
}

/// The link `name` in `ns` as `ip -j` describes it, if it exists.
fn link(ns: &NetNs, name: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "addr", "show", "dev", name])
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    let links: Value = serde_json::from_str(&stdout(&out)).expect("ip -j output");
    links.as_array().and_then(|l| l.first()).cloned()
}

/// The host's address on the test's subnet in `ns`, and the guest's.
fn addresses(ns: &NetNs, subnet: u32) -> (String, String) {
    let n = ns.index();
    (format!("10.{subnet}.{n}.1"), format!("10.{subnet}.{n}.2"))
}

/// Runs palisade inside `ns` with `args` to completion (the serial port on stdout).
fn run_in(ns: &NetNs, args: &[&str]) -> Output {
    let mut cmd = palisade();
    cmd.args(args);
    ns.enter(&mut cmd);
    run_with_timeout(&mut cmd, Duration::from_secs(60))
}

/// Boots the `virtio_net` guest inside `ns` with `extra` arguments.
fn run_virtio_net(ns: &NetNs, extra: &[&str]) -> Output {
    let kernel = guest("virtio_net");
    let mut args = vec!["--kernel", path_str(&kernel), "--memory", "size=128M"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    args.extend_from_slice(extra);
    run_in(ns, &args)
}

/// Checks that the `virtio_net` guest reported no failure and passed; `context` goes in the
/// failure message.
fn assert_net_pass(text: &str, context: &str) {
    assert!(
        !text.contains("FAIL"),
        "the guest reported a failure:\n{text}\n{context}"
    );
    assert!(
        text.lines().any(|l| l == "PASS virtio_net"),
        "no PASS line:\n{text}\n{context}"
    );
}

/// The MAC on the guest's `prefix` line (`mac: …`, `arp: … is at …`).
fn mac_after(text: &str, prefix: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{text}"))
        .trim()
        .to_string()
}

/// Checks the guest's ARP exchange with `host`, whose tap in `ns` is `tap`: the reply names
/// the tap's own MAC.
fn expect_arp_reply(ns: &NetNs, text: &str, host: &str, tap: &str) {
    let link = link(ns, tap).unwrap_or_else(|| panic!("no {tap} in {}:\n{text}", ns.name()));
    let tap_mac = link["address"].as_str().expect("tap address");
    assert_eq!(
        mac_after(text, &format!("arp: {host} is at ")),
        tap_mac,
        "{text}"
    );
}

#[test]
fn palisade_creates_the_tap_and_the_guest_gets_an_arp_reply() {
    if !net_ready("palisade_creates_the_tap_and_the_guest_gets_an_arp_reply") {
        return;
    }
    let ns = NetNs::new();
    let (host, me) = addresses(&ns, 200);
    let dir = TempDir::new("net-create");
    let net = format!("tap=,ip={host},mask=255.255.255.0,id=net0");
    let cmdline = format!("host={host} me={me}");
    let vmm = start_in(
        &ns,
        &dir,
        &[
            "--kernel",
            path_str(&guest("virtio_net")),
            "--net",
            &net,
            "--cmdline",
            &cmdline,
            "--no-shutdown",
        ],
    );
    let text = vmm.wait_serial("PASS virtio_net\n", 1);
    assert!(text.contains(" 1af4:1041\n"), "{text}");

    // What vm.info says of the device: the tap the kernel named, the MAC the guest read.
    let info = vmm.info();
    let config = &info["config"]["net"][0];
    assert_eq!(config["id"], json!("net0"), "{info}");
    let tap = config["tap"].as_str().expect("tap name").to_string();
    assert!(!tap.is_empty(), "{info}");
    assert_eq!(
        mac_after(&text, "mac: "),
        config["mac"].as_str().unwrap(),
        "{text}"
    );
    assert!(info["device_tree"]["net0"]["pci_bdf"].is_string(), "{info}");

    // The tap lives in the test's namespace, with the address asked for, and answered.
    let link = link(&ns, &tap).unwrap_or_else(|| panic!("no {tap} in the namespace"));
    let addresses: Vec<&str> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str())
        .collect();
    assert!(addresses.contains(&host.as_str()), "{link}");
    assert!(
        link["flags"].as_array().unwrap().contains(&json!("UP")),
        "{link}"
    );
    expect_arp_reply(&ns, &text, &host, &tap);

    // The device counted the request out and the reply (and anything else) in.
    let counters = vmm.get("vm.counters");
    let net0 = &counters["net0"];
    assert!(net0["tx_frames"].as_u64().unwrap() >= 1, "{counters}");
    assert!(net0["rx_frames"].as_u64().unwrap() >= 1, "{counters}");
    // The frame in reached the guest through the device's irqfd.
    assert!(net0["interrupts"].as_u64().unwrap() >= 1, "{counters}");
    assert_eq!(net0["tx_dropped"], json!(0), "{counters}");
    assert_eq!(net0["errors"], json!(0), "{counters}");
    drop(vmm);
    // Palisade's tap goes with it.
    assert!(!ns.links().contains(&tap), "{tap} outlived palisade");
    ns.remove();
}

#[test]
fn a_tap_the_test_made_is_used_with_the_mac_given() {
    if !net_ready("a_tap_the_test_made_is_used_with_the_mac_given") {
        return;
    }
    let ns = NetNs::new();
    let (host, me) = addresses(&ns, 200);
    ns.ip(&["tuntap", "add", "name", "ptap0", "mode", "tap"]);
    ns.ip(&["addr", "add", &format!("{host}/24"), "dev", "ptap0"]);
    ns.ip(&["link", "set", "ptap0", "up"]);

    let net = format!("tap=ptap0,mac={FIXED_MAC}");
    let cmdline = format!("host={host} me={me}");
    let out = run_virtio_net(&ns, &["--net", &net, "--cmdline", &cmdline]);
    let text = stdout(&out);
    assert_net_pass(&text, &stderr(&out));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        text.lines().any(|l| l == format!("mac: {FIXED_MAC}")),
        "{text}"
    );
    assert!(text.contains("link: up\n"), "{text}");
    expect_arp_reply(&ns, &text, &host, "ptap0");
    // The test's tap is left as it was, for the test to remove (with the namespace).
    assert!(ns.links().contains(&"ptap0".to_string()));
    ns.remove();
}

#[test]
fn without_a_reply_the_guest_gives_up_and_says_so() {
    // The host address is not on the tap: nobody answers, and the guest must not make a
    // reply up. (`arp=once`: one request, one watchdog period to wait: about 10 s.)
    if !net_ready("without_a_reply_the_guest_gives_up_and_says_so") {
        return;
    }
    let ns = NetNs::new();
    let (host, me) = addresses(&ns, 200);
    let (other, _) = addresses(&ns, 201);
    let net = format!("tap=,ip={host},mask=255.255.255.0");
    let cmdline = format!("host={other} me={me} arp=once");
    let out = run_virtio_net(&ns, &["--net", &net, "--cmdline", &cmdline]);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL virtio_net: no ARP reply from the host"),
        "{text}\n{}",
        stderr(&out)
    );
    assert!(!text.contains(" is at "), "{text}");
    ns.remove();
}

// ---------------------------------------------------------------------------------------------
// Hot-plug through the API.

/// Starts palisade in `ns` with an API socket, the serial port in a file, no virtio console,
/// 128 MiB and `extra`; waits for the API.
fn start_in(ns: &NetNs, dir: &TempDir, extra: &[&str]) -> ApiVmm {
    let serial_arg = ApiVmm::serial_arg(dir);
    let mut cmd = palisade();
    cmd.args(["--serial", &serial_arg, "--console", "off"])
        .args(["--memory", "size=128M", "-v"]);
    ns.enter(&mut cmd);
    ApiVmm::spawn(cmd, dir, extra)
}

/// Starts the `virtio_net` guest in `ns` in hot-plug mode, talking to `host` as `me`, and
/// waits until it sleeps.
fn waiting_guest(ns: &NetNs, dir: &TempDir, host: &str, me: &str, extra: &[&str]) -> ApiVmm {
    let kernel = guest("virtio_net");
    let cmdline = format!("wait=hotplug host={host} me={me}");
    let mut args = vec![
        "--kernel",
        path_str(&kernel),
        "--cmdline",
        &cmdline,
        "--no-shutdown",
    ];
    args.extend_from_slice(extra);
    let vmm = start_in(ns, dir, &args);
    vmm.wait_serial(WAITING_LINE, 1);
    vmm
}

/// The slot of a `0000:00:SS.0` address, as the guest prints it (`00:SS.0`).
fn guest_bdf(bdf: &str) -> String {
    let rest = bdf
        .strip_prefix("0000:")
        .unwrap_or_else(|| panic!("not a segment 0 address: {bdf:?}"));
    assert!(
        rest.starts_with("00:") && rest.ends_with(".0"),
        "not bus 0 function 0: {bdf:?}"
    );
    rest.to_string()
}

/// Adds a new tap with `host`/24 as `id` through the API, expecting 200; checks the answer,
/// vm.info and the tap in `ns`. Returns the address the guest prints and the tap's name.
fn add_net_ok(vmm: &ApiVmm, ns: &NetNs, host: &str, id: &str) -> (String, String) {
    let body = json!({"tap": "", "ip": host, "mask": "255.255.255.0", "id": id});
    let (code, reply) = vmm.put("vm.add-net", &body);
    assert_eq!(
        code,
        200,
        "{reply}\nserial: {}\nlog: {}",
        vmm.serial_text(),
        vmm.log_text()
    );
    let reply: Value = serde_json::from_str(&reply).unwrap();
    assert_eq!(reply["id"], json!(id), "{reply}");
    let bdf = reply["bdf"].as_str().expect("bdf").to_string();
    let shown = guest_bdf(&bdf);
    assert_ne!(shown, "00:00.0", "slot 0 is the host bridge's");

    let info = vmm.info();
    assert_eq!(
        info["device_tree"][id]["pci_bdf"],
        json!(bdf),
        "{id} not in the device tree: {info}"
    );
    let config = info["config"]["net"]
        .as_array()
        .and_then(|nets| nets.iter().find(|n| n["id"] == json!(id)))
        .unwrap_or_else(|| panic!("{id} not in the configuration: {info}"))
        .clone();
    let tap = config["tap"].as_str().unwrap_or_default().to_string();
    assert!(!tap.is_empty(), "no tap name for {id}: {info}");
    let link =
        link(ns, &tap).unwrap_or_else(|| panic!("{tap} is not in the namespace: {:?}", ns.links()));
    let addresses: Vec<&str> = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["local"].as_str())
        .collect();
    assert!(addresses.contains(&host), "{link}");
    (shown, tap)
}

/// Waits for the hot-plug guest's verdict on the device at `shown`, talking to `host` through
/// `tap`.
fn expect_hotplug_pass(vmm: &ApiVmm, ns: &NetNs, shown: &str, host: &str, tap: &str) -> String {
    let text = vmm.wait_serial("PASS virtio_net\n", 1);
    for line in [
        format!("hot-plugged: {shown}"),
        format!("virtio-net: {shown}"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?}:\n{text}");
    }
    let waiting = text.find(WAITING_LINE).unwrap();
    assert!(
        text.find("hot-plugged: ").unwrap() > waiting,
        "the guest found the device before it waited:\n{text}"
    );
    expect_arp_reply(ns, &text, host, tap);
    text
}

#[test]
fn a_net_device_is_hot_added_through_the_api_and_the_guest_uses_it() {
    if !net_ready("a_net_device_is_hot_added_through_the_api_and_the_guest_uses_it") {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-hot");
    let (host, me) = addresses(&ns, 200);
    let vmm = waiting_guest(&ns, &dir, &host, &me, &[]);
    let (shown, tap) = add_net_ok(&vmm, &ns, &host, "hotnet");
    expect_hotplug_pass(&vmm, &ns, &shown, &host, &tap);
    let counters = vmm.get("vm.counters");
    assert!(
        counters["hotnet"]["tx_frames"].as_u64().unwrap() >= 1,
        "{counters}"
    );
    assert!(
        counters["hotnet"]["rx_frames"].as_u64().unwrap() >= 1,
        "{counters}"
    );

    // The id is taken now.
    let (code, body) = vmm.put("vm.add-net", &json!({"tap": "", "id": "hotnet"}));
    assert_eq!(code, 409, "{body}");
    drop(vmm);
    assert!(!ns.links().contains(&tap), "{tap} outlived palisade");
    ns.remove();
}

#[test]
fn under_landlock_without_a_boot_net_device_add_net_is_refused_with_the_rule_to_give() {
    if !net_ready(
        "under_landlock_without_a_boot_net_device_add_net_is_refused_with_the_rule_to_give",
    ) {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-ll-refused");
    let (host, me) = addresses(&ns, 200);
    // A directory the rules allow, for the disk that shows what the guest was told.
    let disks = dir.path("disks");
    std::fs::create_dir(&disks).unwrap();
    let rule = format!("path={},access=rw", disks.display());
    let vmm = waiting_guest(
        &ns,
        &dir,
        &host,
        &me,
        &["--landlock", "--landlock-rules", &rule],
    );
    assert_eq!(vmm.info()["landlock"]["confined"], json!(true));
    let links_before = ns.links();

    let body = json!({"tap": "", "ip": host, "mask": "255.255.255.0", "id": "hotnet"});
    let (code, reply) = vmm.put("vm.add-net", &body);
    assert_eq!(code, 403, "{reply}");
    assert!(reply.contains("/dev/net/tun"), "{reply}");
    assert!(reply.contains("outside the Landlock ruleset"), "{reply}");
    assert!(
        reply.contains("--landlock-rules path=/dev/net/tun,access=rw"),
        "{reply}"
    );
    // Nothing was added, no tap made, the guest told of nothing; the VM runs on.
    let info = vmm.info();
    assert!(info["device_tree"].get("hotnet").is_none(), "{info}");
    assert_eq!(info["state"], json!("Running"), "{info}");
    assert_eq!(ns.links(), links_before);
    // The guest takes hot-plug events in order: a disk plugged now is the first it hears
    // of, so the refused device never reached it.
    let img = disks.join("barrier.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let (code, reply) = vmm.put("vm.add-disk", &json!({"path": img, "id": "barrier"}));
    assert_eq!(code, 200, "{reply}");
    let bdf = serde_json::from_str::<Value>(&reply).unwrap()["bdf"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = std::time::Instant::now() + PATIENCE;
    let text = loop {
        let text = vmm.serial_text();
        // The whole line: the guest prints it a piece at a time.
        if text
            .split("hot-plugged: ")
            .nth(1)
            .is_some_and(|rest| rest.contains('\n'))
        {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(10));
    };
    let first = text
        .lines()
        .find(|l| l.starts_with("hot-plugged: "))
        .unwrap();
    assert_eq!(first, format!("hot-plugged: {}", guest_bdf(&bdf)), "{text}");
    drop(vmm);
    ns.remove();
}

#[test]
fn under_landlock_a_rule_for_the_tun_device_lets_add_net_through() {
    if !net_ready("under_landlock_a_rule_for_the_tun_device_lets_add_net_through") {
        return;
    }
    let ns = NetNs::new();
    let dir = TempDir::new("net-ll-rule");
    let (host, me) = addresses(&ns, 200);
    let vmm = waiting_guest(
        &ns,
        &dir,
        &host,
        &me,
        &[
            "--landlock",
            "--landlock-rules",
            "path=/dev/net/tun,access=rw",
        ],
    );
    assert_eq!(vmm.info()["landlock"]["confined"], json!(true));
    let (shown, tap) = add_net_ok(&vmm, &ns, &host, "hotnet");
    expect_hotplug_pass(&vmm, &ns, &shown, &host, &tap);
    drop(vmm);
    ns.remove();
}

#[test]
fn under_landlock_a_boot_net_device_and_an_api_let_add_net_through() {
    if !net_ready("under_landlock_a_boot_net_device_and_an_api_let_add_net_through") {
        return;
    }
    // Palisade grants itself /dev/net/tun: the VM has a network device and an API that may
    // add more. The boot device is on one subnet, the hot-added one on another.
    let ns = NetNs::new();
    let dir = TempDir::new("net-ll-boot");
    let (boot_host, _) = addresses(&ns, 200);
    let (host, me) = addresses(&ns, 201);
    let boot = format!("tap=,ip={boot_host},mask=255.255.255.0,id=bootnet");
    let vmm = waiting_guest(&ns, &dir, &host, &me, &["--landlock", "--net", &boot]);
    let info = vmm.info();
    assert_eq!(info["landlock"]["confined"], json!(true), "{info}");
    let rules = info["landlock"]["rules"].to_string();
    assert!(rules.contains("/dev/net/tun"), "{info}");

    let (shown, tap) = add_net_ok(&vmm, &ns, &host, "hotnet");
    assert_ne!(
        Some(shown.as_str()),
        info["device_tree"]["bootnet"]["pci_bdf"]
            .as_str()
            .map(guest_bdf)
            .as_deref()
    );
    expect_hotplug_pass(&vmm, &ns, &shown, &host, &tap);
    drop(vmm);
    ns.remove();
}

/// A network device with `rate_limiter_config` (`bw_*`/`ops_*` on `--net`): the guest's
/// exchange gets through its limiters, with the filters on and under Landlock, and the
/// device reports what they held back.
#[test]
fn a_rate_limited_net_device_still_carries_the_guests_traffic() {
    if !net_ready("a_rate_limited_net_device_still_carries_the_guests_traffic") {
        return;
    }
    let ns = NetNs::new();
    let (host, me) = addresses(&ns, 201);
    let dir = TempDir::new("net-limited");
    let net = format!(
        "tap=,ip={host},mask=255.255.255.0,id=net0,bw_size=1048576,bw_refill_time=100,\
         ops_size=20,ops_refill_time=100"
    );
    let cmdline = format!("host={host} me={me}");
    let vmm = start_in(
        &ns,
        &dir,
        &[
            "--kernel",
            path_str(&guest("virtio_net")),
            "--net",
            &net,
            "--cmdline",
            &cmdline,
            "--landlock",
            "--no-shutdown",
        ],
    );
    let text = vmm.wait_serial("PASS virtio_net\n", 1);
    assert_net_pass(&text, "rate-limited");
    let info = vmm.info();
    let limits = &info["config"]["net"][0]["rate_limiter_config"];
    assert_eq!(
        limits["ops"],
        json!({"size": 20, "refill_time": 100}),
        "{info}"
    );
    let counters = vmm.get("vm.counters");
    assert!(counters["net0"]["tx_rate_limited"].is_u64(), "{counters}");
    assert!(counters["net0"]["rx_rate_limited"].is_u64(), "{counters}");
    drop(vmm);
    ns.remove();
}
