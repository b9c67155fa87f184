//! Descriptors: a VM created and deleted a thousand times, with every kind of device, leaves
//! the VMM with exactly the descriptors it started with — under a limit of 64 open files —
//! and every descriptor Palisade opens is close-on-exec.

mod common;

use std::os::unix::process::CommandExt;

use common::*;
use devices::netns::NetNs;
use serde_json::json;

/// The VMM's open descriptors: number → what they point at.
fn descriptors(pid: u32) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().parse().ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some((n, target.to_string_lossy().into_owned()))
        })
        .collect();
    fds.sort();
    fds
}

/// Whether descriptor `fd` of `pid` is close-on-exec (`flags` in fdinfo holds `O_CLOEXEC`).
fn close_on_exec(pid: u32, fd: u32) -> bool {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
    info.lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_CLOEXEC as u64 != 0)
}

/// Waits until the VMM holds exactly `before` (the API connection of the last request may
/// take a moment to be closed by the server), and fails with the difference if it never does.
fn assert_settled(pid: u32, before: &[(u32, String)], when: &str) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let now = descriptors(pid);
        if now == before {
            return;
        }
        if std::time::Instant::now() > deadline {
            assert_eq!(now, before, "{when}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_thousand_create_delete_cycles_leak_nothing() {
    let dir = TempDir::new("leaks");
    let ns = NetNs::new();
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let serial = dir.path("serial.log");
    let mut cmd = palisade();
    ns.enter(&mut cmd);
    // SAFETY: setrlimit between fork and exec touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            // A VM with these four devices holds about 60 descriptors (queue eventfds,
            // irqfds, each device thread's event loop, the disk's ring): a leak of even one
            // per cycle exhausts the limit long before the thousandth.
            let limit = libc::rlimit {
                rlim_cur: 128,
                rlim_max: 128,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Whatever the test's own parent left open stays out of palisade: the
            // descriptors looked at below are all its own.
            const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
            Ok(())
        });
    }
    let vmm = ApiVmm::spawn(cmd, &dir, &[]);
    let pid = vmm.pid();
    let config = json!({
        "payload": {"kernel": guest("hello")},
        "serial": {"mode": "File", "file": serial},
        "console": {"mode": "Pty"},
        "disks": [{"path": disk, "id": "disk0"}],
        "net": [{"tap": "", "id": "net0"}],
        "rng": {"src": "/dev/urandom"},
    });
    // What it holds at rest: the connection of the last request is gone once two looks
    // a moment apart agree.
    let before = loop {
        let a = descriptors(pid);
        std::thread::sleep(std::time::Duration::from_millis(100));
        if descriptors(pid) == a {
            break a;
        }
    };
    for cycle in 0..1000 {
        let (code, body) = vmm.put("vm.create", &config);
        assert_eq!(code, 204, "cycle {cycle}: {body}");
        if cycle == 0 {
            // Everything the VM holds is close-on-exec.
            for (fd, target) in descriptors(pid) {
                if fd > 2 {
                    assert!(
                        close_on_exec(pid, fd),
                        "fd {fd} ({target}) is inherited by exec"
                    );
                }
            }
        }
        let (code, body) = vmm.put("vm.delete", &json!({}));
        assert_eq!(code, 204, "cycle {cycle}: {body}");
        if cycle % 100 == 99 {
            assert_settled(pid, &before, &format!("after {} cycles", cycle + 1));
        }
    }
    drop(vmm);
    ns.remove();
}
