//! The command line: good and bad values of every flag, as a user types them.

mod common;

use common::*;

#[test]
fn hello_guest_prints_and_powers_off_with_status_zero() {
    let kernel = guest("hello");
    let out = run_palisade(&["--kernel", path_str(&kernel), "--memory", "size=128M"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    assert!(stdout(&out).contains("Hello from the Palisade test guest\n"));
}

#[test]
fn version_and_help_exit_zero() {
    let out = run_palisade(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("palisade "));
    let out = run_palisade(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for flag in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--cpus",
        "--memory",
        "--serial",
        "--console",
        "--api-socket",
        "--landlock",
        "--landlock-rules",
        "--no-shutdown",
        "--log-file",
        "-v",
    ] {
        assert!(help.contains(flag), "help lacks {flag}");
    }
}

#[test]
fn bad_command_lines_fail_with_one_line_naming_the_flag() {
    let k = guest("hello");
    let k = path_str(&k);
    let long_cmdline = "x".repeat(5000);
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--kernel"], "--kernel"),
        (
            &["--kernel", "/nonexistent/vmlinux"],
            "--kernel /nonexistent/vmlinux",
        ),
        (
            &["--kernel", k, "--initramfs", "/nonexistent/initrd"],
            "--initramfs",
        ),
        (&["--kernel", k, "--cpus", "boot=0"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=abc"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=4,max=2"], "--cpus"),
        (&["--kernel", k, "--cpus", "boot=1,colour=red"], "colour"),
        (&["--kernel", k, "--memory", "size=12X"], "--memory"),
        (&["--kernel", k, "--memory", "size=100"], "--memory"),
        (&["--kernel", k, "--memory", "sise=1G"], "sise"),
        (&["--kernel", k, "--serial", "loud"], "--serial"),
        (&["--kernel", k, "--serial", "file="], "--serial"),
        (&["--kernel", k, "--console", "socket=/x"], "--console"),
        (&["--kernel", k, "--cmdline", &long_cmdline], "--cmdline"),
        (
            &["--kernel", k, "--rng", "src=/nonexistent/random"],
            "--rng src=/nonexistent/random",
        ),
        (&["--kernel", k, "--rng", "source=/dev/urandom"], "--rng"),
        (
            &["--kernel", k, "--disk", "path=/nonexistent/disk.img"],
            "--disk path=/nonexistent/disk.img",
        ),
        (
            &["--kernel", k, "--disk", "path=/tmp,queue_size=3"],
            "--disk",
        ),
        (&["--kernel", k, "--disk", "readonly=on"], "--disk"),
        (
            &["--kernel", k, "--landlock-rules", "path=/tmp,access=rw"],
            "--landlock",
        ),
        (&["--firmware", "/x"], "--firmware"),
        (&[], "nothing to run"),
    ];
    for (args, needle) in cases {
        let out = run_palisade(args);
        assert!(stdout(&out).is_empty(), "{args:?} started a guest");
        assert_one_line_error(&out, needle);
    }
}

#[test]
fn a_kernel_that_is_not_a_kernel_is_refused_before_anything_runs() {
    let dir = TempDir::new("notkernel");
    let bogus = dir.path("bogus");
    std::fs::write(&bogus, vec![0x42u8; 8192]).unwrap();
    let out = run_palisade(&["--kernel", path_str(&bogus)]);
    assert_one_line_error(&out, "not a kernel");
}

#[test]
fn serial_file_mode_writes_the_console_to_the_file() {
    let dir = TempDir::new("serialfile");
    let log = dir.path("serial.log");
    let k = guest("hello");
    let arg = format!("file={}", log.display());
    let out = run_palisade(&["--kernel", path_str(&k), "--serial", &arg]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "Hello from the Palisade test guest\n"
    );
}

#[test]
fn serial_null_and_off_print_nothing_but_the_guest_still_runs() {
    let k = guest("hello");
    for mode in ["null", "off"] {
        let out = run_palisade(&["--kernel", path_str(&k), "--serial", mode]);
        assert_eq!(out.status.code(), Some(0), "{mode}: {}", stderr(&out));
        assert!(stdout(&out).is_empty(), "{mode}");
    }
}

#[test]
fn good_values_of_the_device_flags_boot() {
    let dir = TempDir::new("devflags");
    let img = dir.path("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let disk = format!(
        "path={},readonly=on,id=data,num_queues=2,queue_size=64",
        img.display()
    );
    let k = guest("hello");
    let out = run_palisade(&[
        "--kernel",
        path_str(&k),
        "--rng",
        "src=/dev/urandom",
        "--disk",
        &disk,
        "--cpus",
        "boot=2,max=4",
        "--memory",
        "size=64M",
        "--cmdline",
        "a=1 b=\"two words\"",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Hello from the Palisade test guest"));
}

#[test]
fn log_file_and_verbosity() {
    let dir = TempDir::new("logfile");
    let log = dir.path("palisade.log");
    let k = guest("hello");
    let out = run_palisade(&[
        "--kernel",
        path_str(&k),
        "-vv",
        "--log-file",
        path_str(&log),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).is_empty(), "logs went to the file");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("INFO: guest powered off"), "{text}");
    // Without -v, a clean run logs nothing.
    let out = run_palisade(&["--kernel", path_str(&k)]);
    assert!(stderr(&out).is_empty(), "{}", stderr(&out));
    let out = run_palisade(&[
        "--kernel",
        path_str(&k),
        "--log-file",
        "/nonexistent/dir/x.log",
    ]);
    assert_one_line_error(&out, "--log-file");
}

fn termios_of(f: &std::fs::File) -> libc::termios {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and termios.
    assert_eq!(unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn tty_mode_reads_the_terminal_raw_and_restores_it_on_exit() {
    use std::io::{Read, Write};
    let (mut master, slave) = open_pty();
    let before = termios_of(&slave);
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a fresh pty is in canonical mode"
    );
    let kernel = guest("echo");
    let child = palisade()
        .args(["--kernel", path_str(&kernel)])
        .args(SERIAL_ON_STDOUT)
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    // Wait for the guest's prompt, then check the terminal is raw while it runs.
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("echo: ready") {
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    let during = termios_of(&slave);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO),
        0,
        "raw while the guest runs"
    );
    // Keys go to the guest one by one, without waiting for a newline.
    master.write_all(b"ab").unwrap();
    while !String::from_utf8_lossy(&seen).contains("ab") {
        let n = master.read(&mut buf).unwrap();
        seen.extend_from_slice(&buf[..n]);
    }
    master.write_all(b"q").unwrap();
    let out = wait_output(child, std::time::Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = termios_of(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    assert_eq!(after.c_oflag, before.c_oflag, "output modes restored");
}
