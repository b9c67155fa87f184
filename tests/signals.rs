//! The signals a VMM receives in practice: SIGTERM, SIGINT, SIGHUP and SIGQUIT shut it down
//! in order (exit status 0, one log line, the API socket removed); SIGUSR1 and SIGUSR2,
//! which would kill it without a word by default, are logged and ignored.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn signal(vmm: &ApiVmm, signo: i32) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(vmm.pid() as i32, signo) };
}

/// Waits until `path` is gone (the janitor removes the socket once the VMM has exited).
fn wait_gone(path: &std::path::Path) {
    let deadline = Instant::now() + PATIENCE;
    while path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was left behind",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn termination_signals_shut_the_vmm_down_in_order() {
    for (signo, name) in [
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
    ] {
        let dir = TempDir::new(&format!("signal-{name}"));
        let mut vmm = ApiVmm::spawn(palisade(), &dir, &["-v"]);
        signal(&vmm, signo);
        let status = vmm.wait_exit();
        assert_eq!(status.code(), Some(0), "{name}: {}", vmm.log_text());
        assert!(
            vmm.log_text()
                .contains(&format!("received {name}: shutting down")),
            "{name}: {}",
            vmm.log_text()
        );
        wait_gone(&vmm.socket);
    }
}

#[test]
fn user_signals_are_logged_and_ignored() {
    let dir = TempDir::new("signal-usr");
    let mut vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    for (signo, name) in [(libc::SIGUSR1, "SIGUSR1"), (libc::SIGUSR2, "SIGUSR2")] {
        signal(&vmm, signo);
        let wanted = format!("received {name}: Palisade gives it no meaning; ignored");
        let deadline = Instant::now() + PATIENCE;
        while !vmm.log_text().contains(&wanted) {
            assert!(Instant::now() < deadline, "{name}: {}", vmm.log_text());
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(vmm.call("GET", "vmm.ping", None).0, 200, "{name}");
    }
    signal(&vmm, libc::SIGTERM);
    assert_eq!(vmm.wait_exit().code(), Some(0));
    wait_gone(&vmm.socket);
}
