//! Slow and idle clients cannot lock others out of the API: with 300 connections trickling a
//! request head a byte every half second, 64 clients arriving at once are all answered
//! within a second.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn trickling_connections_do_not_keep_fast_clients_out() {
    let dir = TempDir::new("slow-clients");
    let vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    let socket = vmm.socket.clone();

    let mut tricklers: Vec<UnixStream> = (0..300)
        .map(|_| {
            let mut s = UnixStream::connect(&socket).unwrap();
            s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Slow: ")
                .unwrap();
            s
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let trickle = {
        let done = done.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while !done.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                for s in &mut tricklers {
                    // A connection closed to make room fails here: that is the point.
                    let _ = s.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    };
    // The trickling connections are all waiting well past the grace an answer gets.
    std::thread::sleep(Duration::from_millis(600));

    let clients: Vec<_> = (0..64)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = api::client::request_with_timeout(
                    &socket,
                    "GET",
                    "/api/v1/vmm.ping",
                    None,
                    Some(Duration::from_secs(5)),
                );
                (r.map(|r| r.status), t.elapsed())
            })
        })
        .collect();
    for c in clients {
        let (status, took) = c.join().unwrap();
        assert_eq!(status.as_ref().ok(), Some(&200), "{status:?}");
        assert!(took < Duration::from_secs(1), "answered in {took:?}");
    }
    done.store(true, Ordering::Relaxed);
    trickle.join().unwrap();
    assert_eq!(vmm.call("GET", "vmm.ping", None).0, 200);
}
