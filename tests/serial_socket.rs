//! `--serial socket=PATH`: the serial port on a Unix socket Palisade binds when it starts
//! (no thread may make one later): a client gets the guest's output and sends it input; the
//! socket goes when Palisade does. Asked for through the API, or on a path that exists, it is
//! refused on one line.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn a_client_of_the_serial_socket_talks_to_the_guest() {
    let dir = TempDir::new("serial-socket");
    let sock = dir.path("serial.sock");
    let kernel = guest("echo");
    let serial = format!("socket={}", sock.display());
    let vmm = ApiVmm::spawn(
        palisade(),
        &dir,
        &[
            "--kernel",
            path_str(&kernel),
            "--serial",
            &serial,
            "--console",
            "off",
            "--landlock",
            "--no-shutdown",
        ],
    );
    let mut client = UnixStream::connect(&sock).expect("the serial socket is there");
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    client.write_all(b"over the socket q").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("PASS echo") {
        assert!(
            Instant::now() < deadline,
            "no PASS on the socket: {:?}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 256];
        if let Ok(n) = client.read(&mut buf) {
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let text = String::from_utf8_lossy(&seen).to_string();
    assert!(
        text.contains("over the socket "),
        "the guest echoed the input: {text}"
    );
    let info = vmm.info();
    assert_eq!(info["config"]["serial"]["mode"], "Socket", "{info}");
    assert!(info["landlock"]["held"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["path"] == json!(sock)));
    drop(vmm);
}

#[test]
fn a_serial_socket_is_refused_through_the_api_and_on_a_path_that_exists() {
    let dir = TempDir::new("serial-socket-refused");
    let sock = dir.path("serial.sock");
    let vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    let config = json!({
        "payload": {"kernel": guest("echo")},
        "serial": {"mode": "Socket", "socket": sock},
        "console": {"mode": "Off"},
    });
    let (code, text) = vmm.put("vm.create", &config);
    assert!(code >= 400, "{code} {text}");
    assert!(
        text.contains("give it on the command line (--serial socket=PATH)"),
        "{text}"
    );
    assert!(!sock.exists(), "nothing was bound");

    std::fs::write(&sock, b"not a socket").unwrap();
    let kernel = guest("echo");
    let serial = format!("socket={}", sock.display());
    let out = run_palisade(&["--kernel", path_str(&kernel), "--serial", &serial]);
    assert_one_line_error(&out, "exists: remove it, or give another path");
    assert_eq!(std::fs::read(&sock).unwrap(), b"not a socket", "left alone");
    let out = run_palisade(&["--kernel", path_str(&kernel), "--console", &serial]);
    assert_one_line_error(&out, "the socket mode is the serial port's");
}
