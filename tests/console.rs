//! The virtio console and the entropy device from the guest's side.
//!
//! The `virtio_console` guest writes a hello line through the console's transmit queue,
//! echoes what arrives on its receive queue until `q`, and writes its PASS line through the
//! console too; the tests drive it through each host side: a file (output only), a
//! pseudo-terminal Palisade creates, and Palisade's own terminal. The `virtio_rng` guest reads
//! the entropy device twice, from `/dev/urandom` and from a file the test wrote.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

const HELLO: &str = "hello from the virtio console\n";
const PASS_LINE: &str = "PASS virtio_console\n";
/// What the tests type: the guest echoes `abc ` and stops at `q`.
const TYPED: &[u8] = b"abc q";
/// What the guest writes through the console for [`TYPED`].
const ROUND_TRIP: &str = "hello from the virtio console\nabc \nPASS virtio_console\n";

/// Reads `from` until what was read contains `needle` or [`PATIENCE`] runs out (then panics
/// with what was read); returns everything read. `from` may be non-blocking or not: it is
/// polled before each read.
fn read_until(from: &mut File, seen: &mut Vec<u8>, needle: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(seen).contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{needle:?} never arrived; read so far: {:?}",
            String::from_utf8_lossy(seen)
        );
        let mut pfd = libc::pollfd {
            fd: from.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if ready <= 0 {
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => panic!(
                "end of file before {needle:?}; read: {:?}",
                String::from_utf8_lossy(seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    String::from_utf8_lossy(seen).into_owned()
}

/// Boots `name` with `args` (and 128 MiB) to completion.
fn run_guest(name: &str, args: &[&str]) -> Output {
    let kernel = guest(name);
    let mut all = vec!["--kernel", path_str(&kernel), "--memory", "size=128M"];
    all.extend_from_slice(args);
    run_palisade(&all)
}

// ---------------------------------------------------------------------------------------------
// The console.

#[test]
fn a_file_console_holds_what_the_guest_wrote() {
    let dir = TempDir::new("console-file");
    let file = dir.path("console.log");
    std::fs::write(&file, "stale content that must go\n").unwrap();
    let console = format!("file={}", file.display());
    let out = run_guest(
        "virtio_console",
        &[
            "--console",
            &console,
            "--serial",
            "tty",
            "--cmdline",
            "expect=noinput",
        ],
    );
    let text = assert_pass(&out, "PASS virtio_console");
    assert!(text.contains(" 1af4:1043\n"), "{text}");
    assert!(text.contains("console: hello written\n"), "{text}");
    // The console's output went to the file, and only there.
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(written, format!("{HELLO}{PASS_LINE}"));
    assert!(
        !text.contains(HELLO),
        "console output on the serial port:\n{text}"
    );
}

#[test]
fn without_a_console_the_guest_finds_no_device() {
    let out = run_guest(
        "virtio_console",
        &[
            "--console",
            "off",
            "--serial",
            "tty",
            "--cmdline",
            "expect=noinput",
        ],
    );
    let text = stdout(&out);
    assert!(
        text.contains("FAIL virtio_console: no virtio console (1af4:1043) on bus 0"),
        "{text}\nstderr: {}",
        stderr(&out)
    );
    assert!(!text.contains(" 1af4:1043\n"), "{text}");
}

/// Sends SIGTERM to `child` and waits for it to end.
fn terminate(child: impl Into<Child>) -> Output {
    let child: Child = child.into();
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions; the pid is our own child, not yet
    // waited for, so it cannot have been reused.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    wait_output(child, PATIENCE)
}

#[test]
fn a_pty_console_echoes_what_is_typed() {
    let kernel = guest("virtio_console");
    let mut child = palisade()
        .args(["--kernel", path_str(&kernel), "--memory", "size=128M"])
        .args(["--console", "pty", "--serial", "tty", "-v", "--no-shutdown"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    let path = read_log_until(&mut child, "virtio console on ");
    let path = path.trim().to_string();
    assert!(path.starts_with("/dev/pts/"), "{path:?}");
    let mut pty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut seen = Vec::new();
    read_until(&mut pty, &mut seen, HELLO);
    pty.write_all(TYPED).unwrap();
    let text = read_until(&mut pty, &mut seen, PASS_LINE);
    assert_eq!(text, ROUND_TRIP);

    // The serial port (Palisade's stdout) has the guest's progress and its verdict; the guest
    // then powers off, and --no-shutdown keeps Palisade until it is told to go.
    let mut serial_out = File::from(std::os::fd::OwnedFd::from(
        child.stdout.take().expect("piped stdout"),
    ));
    let mut serial = Vec::new();
    let serial = read_until(&mut serial_out, &mut serial, "PASS virtio_console\n");
    assert!(!serial.contains("FAIL"), "{serial}");
    assert!(
        serial.contains("console: received 5 bytes, echoed 4\n"),
        "{serial}"
    );
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn a_pty_console_delivers_early_and_long_input_whole() {
    // Typed before the guest is ready, and eight times what its receive buffers hold: the
    // device must keep it and hand it over in order as the guest gives buffers back.
    let kernel = guest("virtio_console");
    let dir = TempDir::new("console-pty-long");
    let serial_file = dir.path("serial.log");
    let serial = format!("file={}", serial_file.display());
    let mut child = palisade()
        .args(["--kernel", path_str(&kernel), "--memory", "size=128M"])
        .args([
            "--console",
            "pty",
            "--serial",
            &serial,
            "-v",
            "--no-shutdown",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    let path = read_log_until(&mut child, "virtio console on ");
    let mut pty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path.trim())
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let long: String = (0..2000)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    pty.write_all(long.as_bytes()).unwrap();
    pty.write_all(b"q").unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut pty, &mut seen, PASS_LINE);
    assert_eq!(text, format!("{HELLO}{long}\n{PASS_LINE}"));
    let deadline = Instant::now() + PATIENCE;
    while !std::fs::read_to_string(&serial_file)
        .unwrap_or_default()
        .contains("PASS virtio_console\n")
    {
        assert!(Instant::now() < deadline, "no PASS on the serial port");
        std::thread::sleep(Duration::from_millis(10));
    }
    let serial = std::fs::read_to_string(&serial_file).unwrap();
    assert!(
        serial.contains("console: received 2001 bytes, echoed 2000\n"),
        "{serial}"
    );
    let out = terminate(child);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

fn termios_of(f: &File) -> libc::termios {
    // SAFETY: termios is plain data filled by tcgetattr.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and termios.
    assert_eq!(unsafe { libc::tcgetattr(f.as_raw_fd(), &mut t) }, 0);
    t
}

#[test]
fn a_tty_console_echoes_what_is_typed_and_restores_the_terminal() {
    let dir = TempDir::new("console-tty");
    let serial_file = dir.path("serial.log");
    let serial = format!("file={}", serial_file.display());
    let (mut master, slave) = open_pty();
    let before = termios_of(&slave);
    assert_ne!(before.c_lflag & libc::ICANON, 0, "a fresh pty is canonical");
    let kernel = guest("virtio_console");
    let child = palisade()
        .args(["--kernel", path_str(&kernel), "--memory", "size=128M"])
        .args(["--console", "tty", "--serial", &serial])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    let mut seen = Vec::new();
    read_until(&mut master, &mut seen, HELLO);
    let during = termios_of(&slave);
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO),
        0,
        "raw while the guest runs"
    );
    master.write_all(TYPED).unwrap();
    let text = read_until(&mut master, &mut seen, PASS_LINE);
    // Raw: no echo of the typed keys by the terminal, no CR added to the guest's newlines.
    assert_eq!(text, ROUND_TRIP);
    let out = wait_output(child, PATIENCE);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = termios_of(&slave);
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    assert_eq!(after.c_oflag, before.c_oflag, "output modes restored");
    let serial = std::fs::read_to_string(&serial_file).unwrap();
    assert!(
        serial.lines().any(|l| l == "PASS virtio_console"),
        "{serial}"
    );
    assert!(!serial.contains("FAIL"), "{serial}");
}

// ---------------------------------------------------------------------------------------------
// The entropy device.

/// The guest's `rng: <hex>` lines (its reads).
fn rng_reads(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("rng: "))
        .filter(|hex| hex.len() == 128 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_guest_reads_random_bytes_from_the_default_source() {
    let first = run_guest("virtio_rng", &SERIAL_ON_STDOUT);
    let text = assert_pass(&first, "PASS virtio_rng");
    assert!(text.contains(" 1af4:1044\n"), "{text}");
    let reads = rng_reads(&text);
    assert_eq!(reads.len(), 2, "{text}");
    assert_ne!(reads[0], reads[1]);
    // Another VM gets other bytes.
    let second = run_guest("virtio_rng", &SERIAL_ON_STDOUT);
    let again = rng_reads(&assert_pass(&second, "PASS virtio_rng"));
    assert!(
        again.iter().all(|r| !reads.contains(r)),
        "{reads:?} {again:?}"
    );
}

#[test]
fn the_guest_reads_the_file_given_as_the_source() {
    let dir = TempDir::new("rng-file");
    let source = dir.path("entropy.bin");
    std::fs::write(&source, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let src = format!("src={}", source.display());
    let mut args = vec!["--rng", &src, "--cmdline", "expect=file"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    let out = run_guest("virtio_rng", &args);
    let text = assert_pass(&out, "PASS virtio_rng");
    assert!(text.contains("rng: matches the file\n"), "{text}");
    let hex = |range: std::ops::Range<u8>| range.map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(rng_reads(&text), vec![hex(0..64), hex(64..128)], "{text}");
}

#[test]
fn a_source_file_that_runs_out_gives_no_more_bytes() {
    // 64 bytes: the first read takes them all; the second gets nothing, and the guest says so.
    let dir = TempDir::new("rng-short");
    let source = dir.path("entropy.bin");
    std::fs::write(&source, (0..64u8).collect::<Vec<u8>>()).unwrap();
    let src = format!("src={}", source.display());
    let mut args = vec!["--rng", &src, "--cmdline", "expect=file"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    let out = run_guest("virtio_rng", &args);
    let text = stdout(&out);
    assert!(
        text.contains("FAIL virtio_rng: the device wrote 0 bytes, not 64"),
        "{text}\nstderr: {}",
        stderr(&out)
    );
    assert_eq!(rng_reads(&text).len(), 1, "{text}");
}

#[test]
fn under_landlock_the_guest_still_reads_the_source() {
    let dir = TempDir::new("rng-landlock");
    let source = dir.path("entropy.bin");
    std::fs::write(&source, (0..=255u8).collect::<Vec<u8>>()).unwrap();
    let src = format!("src={}", source.display());
    let mut args = vec!["--rng", &src, "--cmdline", "expect=file", "--landlock"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    let out = run_guest("virtio_rng", &args);
    let text = assert_pass(&out, "PASS virtio_rng");
    assert!(text.contains("rng: matches the file\n"), "{text}");
}
