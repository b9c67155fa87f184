//! Landlock over a VM's life, end to end, with the real kernel's Landlock: the ruleset
//! logged at creation, a kernel without Landlock, the lifecycle and recreation from the API,
//! hot-plugged disks, and an older Landlock ABI.

mod common;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn the_ruleset_is_logged_once_with_every_rule_and_held_item() {
    let dir = TempDir::new("ll-log");
    std::fs::create_dir(dir.path("hotplug")).unwrap();
    let rule = format!("path={},access=rw", dir.path("hotplug").display());
    let kernel = guest("hello");
    let out = run_palisade(&[
        "--kernel",
        path_str(&kernel),
        "--landlock",
        "--landlock-rules",
        &rule,
        "-v",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let log = stderr(&out);
    assert_eq!(log.matches("Landlock ABI").count(), 1, "{log}");
    assert!(log.contains("enforced (full)"), "{log}");
    assert!(log.contains(&format!(
        "Landlock rule: {} access=rw (write_file read_file read_dir make_reg truncate) from landlock rule #0",
        dir.path("hotplug").display()
    )));
    assert!(log.contains(&format!("no rule needed for {} (kernel)", kernel.display())));
}

/// Runs palisade under a seccomp filter that makes the Landlock system calls fail with
/// ENOSYS, as on a kernel without Landlock.
fn without_landlock(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl.
    unsafe {
        cmd.pre_exec(|| {
            // struct sock_filter: code u16, jt u8, jf u8, k u32.
            const LD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
            const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
            const JGT: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
            const RET: u16 = 0x06; // BPF_RET | BPF_K
            const ALLOW: u32 = 0x7fff_0000;
            const ERRNO_ENOSYS: u32 = 0x0005_0000 | 38;
            let filter: [libc::sock_filter; 5] = [
                libc::sock_filter {
                    code: LD_NR,
                    jt: 0,
                    jf: 0,
                    k: 0,
                },
                // landlock_create_ruleset (444) ..= landlock_restrict_self (446)
                libc::sock_filter {
                    code: JGE,
                    jt: 0,
                    jf: 2,
                    k: 444,
                },
                libc::sock_filter {
                    code: JGT,
                    jt: 1,
                    jf: 0,
                    k: 446,
                },
                libc::sock_filter {
                    code: RET,
                    jt: 0,
                    jf: 0,
                    k: ERRNO_ENOSYS,
                },
                libc::sock_filter {
                    code: RET,
                    jt: 0,
                    jf: 0,
                    k: ALLOW,
                },
            ];
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

#[test]
fn no_landlock_in_the_kernel_means_no_vm_when_landlock_is_asked_for() {
    let kernel = guest("hello");
    let out = run_with_timeout(
        without_landlock(palisade().args(["--kernel", path_str(&kernel), "--landlock"])),
        Duration::from_secs(60),
    );
    assert!(stdout(&out).is_empty(), "the guest ran: {}", stdout(&out));
    assert_one_line_error(
        &out,
        "Landlock was requested but this kernel has no Landlock",
    );
    // The same kernel boots the VM when confinement was not asked for.
    let out = run_with_timeout(
        without_landlock(
            palisade()
                .args(["--kernel", path_str(&kernel)])
                .args(SERIAL_ON_STDOUT),
        ),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Hello from the Palisade test guest"));
}

fn wait_for(path: &Path, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
        < count
    {
        assert!(
            Instant::now() < deadline,
            "{needle:?} x{count} never appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lifecycle_under_landlock_from_the_api_and_recreation_within_the_ruleset() {
    let dir = TempDir::new("ll-api");
    let images = dir.path("images");
    let logs = dir.path("logs");
    std::fs::create_dir(&images).unwrap();
    std::fs::create_dir(&logs).unwrap();
    let kernel = images.join("echo.elf");
    std::fs::copy(guest("echo"), &kernel).unwrap();
    let serial = logs.join("serial.log");
    std::fs::write(&serial, "").unwrap();
    let mut vmm = ApiVmm::spawn(palisade(), &dir, &["--no-shutdown", "-v"]);
    let config = |kernel: &Path| {
        serde_json::json!({
            "payload": {"kernel": kernel},
            "memory": {"size": 64u64 << 20},
            "serial": {"mode": "File", "file": serial},
            "landlock_enable": true,
            "landlock_rules": [
                {"path": images, "access": "r"},
                {"path": logs, "access": "w"},
            ],
        })
    };
    let (code, body) = vmm.put("vm.create", &config(&kernel));
    assert_eq!(code, 204, "{body}");
    let info = vmm.info();
    let ll = &info["landlock"];
    assert_eq!(ll["requested"], serde_json::json!(true));
    assert_eq!(ll["confined"], serde_json::json!(true));
    assert_eq!(ll["enforcement"], serde_json::json!("full"));
    assert!(ll["abi"].as_i64().unwrap() >= 6);
    assert!(ll["threads"].as_u64().unwrap() >= 2, "{ll}");
    // The entropy source, then the user's two rules.
    let rules = ll["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(rules[0]["origin"], serde_json::json!({"kind": "rng"}));
    assert_eq!(rules[0]["rights"], serde_json::json!(["read_file"]));
    assert_eq!(
        rules[1]["rights"],
        serde_json::json!(["read_file", "read_dir"])
    );
    assert_eq!(
        rules[2]["rights"],
        serde_json::json!(["write_file", "make_reg", "truncate"]),
        "a written directory may have files created in it (snapshots), nothing else"
    );
    assert_eq!(
        rules[1]["origin"],
        serde_json::json!({"kind": "user_rule", "index": 0})
    );
    assert!(ll["handled"]["net"].as_array().unwrap().len() == 2);
    assert!(ll["held"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["origin"]["kind"] == "kernel"));
    assert_eq!(
        info["config"]["landlock_rules"].as_array().unwrap().len(),
        2
    );

    for (step, state) in [
        ("vm.boot", "Running"),
        ("vm.pause", "Paused"),
        ("vm.resume", "Running"),
        ("vm.reboot", "Running"),
    ] {
        let (code, body) = vmm.call("PUT", step, None);
        assert_eq!(code, 204, "{step}: {body}");
        assert_eq!(vmm.state(), state, "after {step}");
    }
    wait_for(&serial, "echo: ready", 2);
    let (code, _) = vmm.call("PUT", "vm.shutdown", None);
    assert_eq!(code, 204);
    let (code, _) = vmm.call("PUT", "vm.delete", None);
    assert_eq!(code, 204);

    // A new VM whose files fit the ruleset: created, booted, it runs.
    let (code, body) = vmm.put("vm.create", &config(&kernel));
    assert_eq!(code, 204, "{body}");
    let (code, _) = vmm.call("PUT", "vm.boot", None);
    assert_eq!(code, 204);
    wait_for(&serial, "echo: ready", 1);
    let (code, _) = vmm.call("PUT", "vm.delete", None);
    assert_eq!(code, 204);

    // One whose kernel lies outside: refused, with the path, the reason and the fix.
    let outside = dir.path("other-kernel.elf");
    std::fs::copy(guest("hello"), &outside).unwrap();
    let (code, body) = vmm.put("vm.create", &config(&outside));
    assert!((400..500).contains(&code), "{code}: {body}");
    assert!(body.contains(path_str(&outside)), "{body}");
    assert!(body.contains("outside the Landlock ruleset"), "{body}");
    assert!(body.contains("cannot widen"), "{body}");
    assert!(
        body.contains(&format!(
            "--landlock-rules path={},access=r",
            outside.display()
        )),
        "{body}"
    );
    // The VMM is still there and serving.
    let (code, _) = vmm.call("GET", "vmm.ping", None);
    assert_eq!(code, 200);

    // Clean exit, socket removed although the VMM itself may not delete files.
    let (code, _) = vmm.call("PUT", "vmm.shutdown", None);
    assert_eq!(code, 204);
    assert!(vmm.wait_exit().success(), "{}", vmm.log_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while vmm.socket.exists() {
        assert!(Instant::now() < deadline, "the API socket was left behind");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hotplugged_disks_follow_the_ruleset() {
    let dir = TempDir::new("ll-hotplug");
    let allowed = dir.path("allowed");
    let readonly = dir.path("readonly");
    let outside = dir.path("outside");
    for d in [&allowed, &readonly, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    let image = |d: &Path, name: &str| {
        let p = d.join(name);
        std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
        p
    };
    let (in_dir, single, ro_img, out_img) = (
        image(&allowed, "a.img"),
        image(&dir.0, "single.img"),
        image(&readonly, "r.img"),
        image(&outside, "o.img"),
    );
    let kernel = guest("echo");
    let serial_arg = ApiVmm::serial_arg(&dir);
    let rules = [
        format!("path={},access=rw", allowed.display()),
        format!("path={},access=rw", single.display()),
        format!("path={},access=r", readonly.display()),
    ];
    let mut args = vec![
        "--kernel",
        path_str(&kernel),
        "--serial",
        &serial_arg,
        "--no-shutdown",
        "--landlock",
        "--landlock-rules",
    ];
    args.extend(rules.iter().map(String::as_str));
    let mut vmm = ApiVmm::spawn(palisade(), &dir, &args);
    vmm.wait_serial("echo: ready", 1);
    let add = |path: &Path, id: &str, readonly: bool| {
        let disk = serde_json::json!({"path": path, "id": id, "readonly": readonly});
        vmm.put("vm.add-disk", &disk)
    };

    // Outside every rule: refused with the path, the reason and the rule to add.
    let (code, body) = add(&out_img, "out", false);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains(path_str(&out_img)), "{body}");
    assert!(body.contains("outside the Landlock ruleset"), "{body}");
    assert!(
        body.contains(&format!(
            "--landlock-rules path={},access=rw",
            out_img.display()
        )),
        "{body}"
    );
    // A read-write disk where only reading is allowed: refused, asking for rw.
    let (code, body) = add(&ro_img, "rw-on-r", false);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("access=rw"), "{body}");
    // The same disk read-only: only read access is needed, and granted.
    let (code, body) = add(&ro_img, "ro", true);
    assert_eq!(code, 200, "{body}");
    // A rule on the directory, and a rule on the file itself.
    let (code, body) = add(&in_dir, "dir", false);
    assert_eq!(code, 200, "{body}");
    let (code, body) = add(&single, "file", false);
    assert_eq!(code, 200, "{body}");

    // Nothing was added by the refusals, and the guest kept running.
    let info = vmm.info();
    let tree = info["device_tree"].as_object().unwrap();
    // The console and entropy devices every VM has start with an underscore.
    let mut ids: Vec<&String> = tree.keys().filter(|k| !k.starts_with('_')).collect();
    ids.sort();
    assert_eq!(ids, vec!["dir", "file", "ro"]);
    assert_eq!(info["state"], serde_json::json!("Running"));
    let (code, _) = vmm.call("PUT", "vmm.shutdown", None);
    assert_eq!(code, 204);
    assert!(vmm.wait_exit().success(), "{}", vmm.log_text());
}

/// Builds the shim that makes Palisade see an older Landlock ABI.
fn old_abi_shim() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("palisade-oldabi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("old_abi.so");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/old_abi.c");
        let status = Command::new("gcc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .status()
            .expect("run gcc");
        assert!(status.success(), "building the old-ABI shim failed");
        lib
    })
    .clone()
}

#[test]
fn an_older_landlock_abi_runs_partly_enforced_and_says_what_is_missing() {
    let kernel = guest("hello");
    let run = |abi: &str, verbose: bool| {
        let mut cmd = palisade();
        cmd.args(["--kernel", path_str(&kernel), "--landlock"])
            .args(SERIAL_ON_STDOUT)
            .env("LD_PRELOAD", old_abi_shim())
            .env("PALISADE_FAKE_LANDLOCK_ABI", abi);
        if verbose {
            cmd.arg("-v");
        }
        run_with_timeout(&mut cmd, Duration::from_secs(60))
    };
    // ABI 3: file rights up to truncate, no TCP, no scopes, no device ioctls.
    let out = run("3", false);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Hello from the Palisade test guest"));
    let warning = stderr(&out);
    assert_eq!(
        warning.lines().count(),
        1,
        "one warning at the default level: {warning}"
    );
    assert!(warning.contains("WARN"), "{warning}");
    for missing in ["fs: ioctl_dev", "net: connect_tcp", "scope: signal"] {
        assert!(warning.contains(missing), "{missing} in {warning}");
    }
    assert!(!warning.contains("fs: truncate"), "{warning}");
    let out = run("3", true);
    assert!(
        stderr(&out).contains("Landlock ABI 3 enforced (partial)"),
        "{}",
        stderr(&out)
    );
    // ABI 1 also lacks refer and truncate.
    let out = run("1", false);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("fs: refer") && stderr(&out).contains("fs: truncate"));
    // The real ABI of this machine needs no warning at all.
    let out = run("7", false);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
}
