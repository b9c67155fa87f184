//! The API server on a real Unix socket, with a thread playing the VMM.

mod common;

use std::io::Write;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use api::routes::ENDPOINTS;
use api::server::ServerOptions;
use common::*;

#[test]
fn the_lifecycle_endpoints_answer_with_their_status_codes() {
    let h = Harness::start();

    let ping = h.call("GET", "vmm.ping", None);
    assert_eq!(ping.status, 200);
    let ping: serde_json::Value = serde_json::from_str(&ping.body).unwrap();
    assert_eq!(ping["version"], "test");

    for (method, endpoint) in [
        ("GET", "vm.info"),
        ("PUT", "vm.boot"),
        ("GET", "vm.counters"),
    ] {
        let r = h.call(method, endpoint, None);
        assert_eq!(r.status, 404, "{endpoint}");
        assert_eq!(
            messages(&r.body),
            vec![format!(
                "{endpoint}: no VM has been created; create one with vm.create first"
            )]
        );
    }

    assert_eq!(h.call("PUT", "vm.create", Some(VM_JSON)).status, 204);
    let again = h.call("PUT", "vm.create", Some(VM_JSON));
    assert_eq!(again.status, 405);
    assert!(again.error_line().contains("already exists"));

    let info = h.call("GET", "vm.info", None);
    assert_eq!(info.status, 200);
    let info: serde_json::Value = serde_json::from_str(&info.body).unwrap();
    assert_eq!(info["state"], "Created");
    assert_eq!(info["config"]["payload"]["kernel"], "/boot/vmlinux");

    // Wrong state: 405 with the VMM's message.
    let r = h.call("PUT", "vm.pause", None);
    assert_eq!(
        (r.status, r.error_line().as_str()),
        (405, "vm.pause: the VM is Created")
    );

    for (endpoint, status) in [
        ("vm.boot", 204),
        ("vm.pause", 204),
        ("vm.resume", 204),
        ("vm.reboot", 204),
        ("vm.shutdown", 204),
        ("vm.boot", 204),
        ("vm.shutdown", 204),
        ("vm.delete", 204),
        ("vm.delete", 204),
        ("vmm.shutdown", 204),
    ] {
        let r = h.call("PUT", endpoint, None);
        assert_eq!(r.status, status, "{endpoint}: {}", r.body);
        assert_eq!(r.body, "", "{endpoint}");
    }
    assert_eq!(h.call("GET", "vm.info", None).status, 404);
    assert_eq!(
        h.vmm.seen.lock().unwrap().first().map(String::as_str),
        Some("ping")
    );
}

#[test]
fn answers_carry_the_right_headers() {
    let h = Harness::start();
    let ok = h.raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&ok), 200);
    assert_eq!(header_of(&ok, "content-type"), Some("application/json"));
    assert_eq!(
        header_of(&ok, "content-length").map(|v| v.parse::<usize>().unwrap()),
        Some(body_of(&ok).len())
    );

    let done = h.raw(b"PUT /api/v1/vm.delete HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&done), 204);
    assert_eq!(header_of(&done, "content-length"), None);
    assert_eq!(body_of(&done), "");

    let err = h.raw(b"PUT /api/v1/vm.boot HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&err), 404);
    assert_eq!(header_of(&err, "content-type"), Some("application/json"));
    messages(body_of(&err));
}

#[test]
fn a_wrong_method_gets_405_with_allow() {
    let h = Harness::start();
    for endpoint in ENDPOINTS {
        for method in ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH"] {
            if method == endpoint.method {
                continue;
            }
            let r = h.raw(
                format!(
                    "{method} /api/v1/{} HTTP/1.1\r\nHost: x\r\n\r\n",
                    endpoint.name
                )
                .as_bytes(),
            );
            assert_eq!(status_of(&r), 405, "{method} {}", endpoint.name);
            assert_eq!(header_of(&r, "allow"), Some(endpoint.method));
            if method == "HEAD" {
                assert_eq!(body_of(&r), "", "a HEAD answer has no body");
            } else {
                let m = messages(body_of(&r));
                assert_eq!(
                    m,
                    vec![format!(
                        "{}: method {method} is not allowed; use {}",
                        endpoint.name, endpoint.method
                    )]
                );
            }
        }
    }
    // Nothing reached the VMM.
    assert!(h.vmm.seen.lock().unwrap().is_empty());
}

#[test]
fn unknown_paths_get_404() {
    let h = Harness::start();
    for path in [
        "/",
        "/api/v1/",
        "/api/v1/vm.nope",
        "/api/v2/vm.boot",
        "/vm.boot",
        "/api/v1/vm.boot/",
        "/api/v1/VM.BOOT",
    ] {
        for method in ["GET", "PUT"] {
            let r = h.raw(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
            assert_eq!(status_of(&r), 404, "{method} {path}");
            let m = messages(body_of(&r));
            assert!(
                m[0].starts_with(&format!("{path}: no such endpoint")),
                "{m:?}"
            );
        }
    }
    // A query string does not change the endpoint.
    let r = h.raw(b"GET /api/v1/vmm.ping?verbose=1 HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 200);
}

#[test]
fn endpoints_palisade_does_not_serve_answer_501() {
    let h = Harness::start();
    let unserved: Vec<_> = ENDPOINTS.iter().filter(|e| !e.served).collect();
    assert_eq!(unserved.len(), 4);
    for endpoint in unserved {
        for body in [None, Some(r#"{"id": "disk0"}"#)] {
            let r = h.call("PUT", endpoint.name, body);
            assert_eq!(r.status, 501, "{}", endpoint.name);
            assert_eq!(
                r.error_messages(),
                vec![format!(
                    "{}: Palisade does not support this endpoint yet",
                    endpoint.name
                )]
            );
        }
    }
    assert!(h.vmm.seen.lock().unwrap().is_empty());
}

#[test]
fn vm_create_refuses_bad_bodies_with_400() {
    let h = Harness::start();
    let create = |body: Option<&str>| h.call("PUT", "vm.create", body);

    let r = create(None);
    assert_eq!(r.status, 400);
    assert!(
        r.error_line()
            .contains("vm.create: the request has no body"),
        "{r:?}"
    );
    assert_eq!(create(Some("")).status, 400);

    let r = create(Some(r#"{"payload": "#));
    assert_eq!(r.status, 400);
    assert!(
        r.error_line()
            .starts_with("vm.create: the body is not valid JSON: "),
        "{r:?}"
    );

    let r = create(Some(r#"{"payload": {"kernel": "/k"}, "cpuz": {}}"#));
    assert_eq!(r.status, 400);
    assert!(
        r.error_line()
            .contains("vm.create: invalid VM configuration: unknown field `cpuz`"),
        "{r:?}"
    );

    let r = create(Some(r#"{"payload": {"kernel": "/k", "kernal": "/k"}}"#));
    assert_eq!(r.status, 400);
    assert!(r.error_line().contains("unknown field `kernal`"), "{r:?}");

    let r = create(Some(r#"{"payload": {}, "memory": {"size": "lots"}}"#));
    assert_eq!(r.status, 400);
    assert!(
        r.error_line().contains("invalid type: string \"lots\""),
        "{r:?}"
    );

    let r = create(Some("[1, 2]"));
    assert_eq!(r.status, 400);
    assert!(r.error_line().contains("invalid VM configuration"), "{r:?}");

    // An error from the VMM keeps its kind and all its messages.
    let r = create(Some(r#"{"payload": {}}"#));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.error_messages(),
        vec![
            "vm.create: invalid VM configuration",
            "payload.kernel: required"
        ]
    );
    assert_eq!(h.vmm.seen.lock().unwrap().as_slice(), ["create"]);
}

#[test]
fn any_content_type_is_taken_and_the_body_must_be_json() {
    let h = Harness::start();
    // As Cloud Hypervisor: `curl -d` sends a form type, and the JSON is taken all the same.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/jsonx",
    ] {
        let r = h.raw(
            format!(
                "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: {content_type}\r\n\
                 Content-Length: {}\r\n\r\n{VM_JSON}",
                VM_JSON.len()
            )
            .as_bytes(),
        );
        assert_eq!(status_of(&r), 204, "{content_type}");
        let r = h.raw(b"PUT /api/v1/vm.delete HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status_of(&r), 204);
    }
    let r = h.raw(
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
          Content-Length: 7\r\n\r\nkernel=",
    );
    assert_eq!(status_of(&r), 400);
    assert!(messages(body_of(&r))[0].contains("not valid JSON"), "{r}");
    // Parameters and case do not matter; a missing Content-Type is taken as JSON.
    for content_type in ["Application/JSON; charset=utf-8", ""] {
        let header = if content_type.is_empty() {
            String::new()
        } else {
            format!("Content-Type: {content_type}\r\n")
        };
        let r = h.raw(
            format!("PUT /api/v1/vm.delete HTTP/1.1\r\n{header}Content-Length: 2\r\n\r\n{{}}")
                .as_bytes(),
        );
        assert_eq!(status_of(&r), 204, "{content_type:?}");
    }
}

#[test]
fn a_body_over_1_mib_gets_413_without_being_read() {
    let h = Harness::start();
    let over = api::MAX_BODY_SIZE + 1;

    // Declared too large: answered at once, only a few bytes sent.
    let r = h.raw(
        format!(
            "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: application/json\r\n\
             Content-Length: {over}\r\n\r\n{{\"payload\""
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&r), 413);
    assert!(messages(body_of(&r))[0].starts_with("vm.create: the request body"));
    assert_eq!(header_of(&r, "connection"), Some("close"));

    // An absurd length, then the client goes away: the server must neither allocate it nor
    // wait for it. A length that does not even fit in 64 bits is not a valid Content-Length:
    // hyper refuses the request as malformed (400, empty body) before it reaches the API.
    for (length, status) in [
        ("1099511627776000", 413),
        ("99999999999999999999999999", 400),
    ] {
        let started = Instant::now();
        let r = h.raw(
            format!("PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: {length}\r\n\r\nabc")
                .as_bytes(),
        );
        assert_eq!(status_of(&r), status, "{length}");
        assert_eq!(header_of(&r, "connection"), Some("close"));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    // The whole over-sized body sent by a client that does not wait: still 413.
    let body = "x".repeat(2 * api::MAX_BODY_SIZE);
    let r = h.call("PUT", "vm.create", Some(&body));
    assert_eq!(r.status, 413);

    // Chunked: the limit applies to the decoded size.
    let mut chunked =
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..(over / 65536 + 1) {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend(std::iter::repeat_n(b' ', 65536));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(status_of(&h.raw(&chunked)), 413);

    // Exactly at the limit is accepted (and then judged as JSON).
    let mut at_limit = VM_JSON.to_string();
    at_limit.push_str(&" ".repeat(api::MAX_BODY_SIZE - VM_JSON.len()));
    assert_eq!(h.call("PUT", "vm.create", Some(&at_limit)).status, 204);

    // And the server goes on serving.
    assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
}

#[test]
fn expect_100_continue_is_honoured() {
    let h = Harness::start();
    let mut s = h.connect();
    s.write_all(
        format!(
            "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: application/json\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            VM_JSON.len()
        )
        .as_bytes(),
    )
    .unwrap();
    let interim = read_one_response(&mut s);
    assert_eq!(status_of(&interim), 100);
    s.write_all(VM_JSON.as_bytes()).unwrap();
    assert_eq!(status_of(&read_one_response(&mut s)), 204);

    // Over the limit: refused without asking for the body.
    let r = h.raw(
        b"PUT /api/v1/vm.create HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5000000\r\n\r\n",
    );
    assert_eq!(status_of(&r), 413);
    assert!(!r.contains("100 Continue"));
}

#[test]
fn chunked_bodies_are_accepted() {
    let h = Harness::start();
    let (a, b) = VM_JSON.split_at(10);
    let request = format!(
        "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    assert_eq!(status_of(&h.raw(request.as_bytes())), 204);
    assert_eq!(h.call("GET", "vm.info", None).status, 200);
}

#[test]
fn malformed_requests_get_400_and_the_server_goes_on() {
    let h = Harness::start();
    // What is not valid HTTP is refused by hyper itself, with an empty body; the connection is
    // closed. (An unknown HTTP version and a transfer coding other than chunked are malformed
    // requests to hyper as well: 400.)
    for bytes in [
        &b"HELLO\r\n\r\n"[..],
        b"GET /api/v1/vmm.ping\r\n\r\n",
        b"GET /api/v1/vmm.ping HTTP/1.1\r\nbroken header\r\n\r\n",
        b"GET /api/v1/vmm.ping HTTP/3.0\r\n\r\n",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"\xff\xfe /api HTTP/1.1\r\n\r\n",
    ] {
        let r = h.raw(bytes);
        let request = String::from_utf8_lossy(bytes);
        assert_eq!(status_of(&r), 400, "{request:?}");
        assert_eq!(body_of(&r), "", "{request:?}");
        assert_eq!(header_of(&r, "connection"), Some("close"), "{request:?}");
    }
    // A body whose framing is broken is found out by the API while reading it: 400, with the
    // message.
    let r =
        h.raw(b"PUT /api/v1/vm.create HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nnothex\r\n");
    assert_eq!(status_of(&r), 400);
    let m = messages(body_of(&r));
    assert!(
        m[0].starts_with("vm.create: malformed request body: "),
        "{m:?}"
    );
    assert_eq!(header_of(&r, "connection"), Some("close"));

    let mut huge_head = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: ".to_vec();
    huge_head.extend(std::iter::repeat_n(b'a', 64 << 10));
    assert_eq!(status_of(&h.raw(&huge_head)), 431);
    // Just under the limit is fine.
    let mut big_head = b"GET /api/v1/vmm.ping HTTP/1.1\r\nX-Long: ".to_vec();
    big_head.extend(std::iter::repeat_n(b'a', api::MAX_HEAD_SIZE - 100));
    big_head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status_of(&h.raw(&big_head)), 200);
    assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
}

#[test]
fn truncated_requests_and_disconnects_do_not_disturb_the_server() {
    let h = Harness::start();
    // Connect and leave at once.
    drop(h.connect());
    // Half a request line, then gone.
    assert_eq!(h.raw(b"GET /api/v1/vm"), "");
    // A head without its end, then gone.
    assert_eq!(
        h.raw(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Type: app"),
        ""
    );
    // A body shorter than announced, then gone.
    assert_eq!(
        h.raw(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"payl"),
        ""
    );
    // Gone while the VMM is answering (the fake VMM is quick, so just close after sending).
    {
        let mut s = h.connect();
        s.write_all(b"PUT /api/v1/vm.delete HTTP/1.1\r\n\r\n")
            .unwrap();
    }
    // A client that stalls in the middle of its request and stays connected does not hold up
    // the others.
    let mut stalled = h.connect();
    stalled
        .write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    let mut stalled_head = h.connect();
    stalled_head.write_all(b"GET /api/v1/vmm.pi").unwrap();

    for _ in 0..3 {
        assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
    }
    assert_eq!(h.call("PUT", "vm.create", Some(VM_JSON)).status, 204);
    assert_eq!(h.call("GET", "vm.info", None).status, 200);
    drop(stalled);
    drop(stalled_head);
    assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
}

#[test]
fn a_request_not_sent_in_time_gets_408() {
    let options = ServerOptions {
        request_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let h = Harness::start_with(options, Duration::ZERO);
    let mut s = h.connect();
    s.write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    let started = Instant::now();
    let r = read_all(&mut s);
    assert_eq!(status_of(&r), 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
}

#[test]
fn an_idle_connection_is_closed_silently() {
    let options = ServerOptions {
        idle_timeout: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let h = Harness::start_with(options, Duration::ZERO);
    let mut s = h.connect();
    assert_eq!(read_all(&mut s), "");
}

#[test]
fn a_stalled_request_head_is_closed_after_the_idle_timeout() {
    let options = ServerOptions {
        idle_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let h = Harness::start_with(options, Duration::ZERO);
    // Before any request, and after one answer on a kept-alive connection.
    let mut fresh = h.connect();
    fresh.write_all(b"GET /api/v1/vmm.pi").unwrap();
    let mut kept = h.connect();
    kept.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_one_response(&mut kept)), 200);
    kept.write_all(b"GET /api/v1/vmm.pi").unwrap();
    let started = Instant::now();
    assert_eq!(read_all(&mut fresh), "");
    assert_eq!(read_all(&mut kept), "");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(h.call("GET", "vmm.ping", None).status, 200);
}

#[test]
fn a_connection_is_kept_alive_for_several_requests() {
    let h = Harness::start();
    let mut s = h.connect();
    for _ in 0..3 {
        s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        assert_eq!(status_of(&read_one_response(&mut s)), 200);
    }
    // Pipelined, with a body in between.
    s.write_all(
        format!(
            "PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: {}\r\n\r\n{VM_JSON}\
             GET /api/v1/vm.info HTTP/1.1\r\n\r\n\
             GET /api/v1/nope HTTP/1.1\r\n\r\n\
             GET /api/v1/vmm.ping HTTP/1.1\r\nConnection: close\r\n\r\n",
            VM_JSON.len()
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(status_of(&read_one_response(&mut s)), 204);
    assert_eq!(status_of(&read_one_response(&mut s)), 200);
    assert_eq!(status_of(&read_one_response(&mut s)), 404);
    let last = read_one_response(&mut s);
    assert_eq!(status_of(&last), 200);
    assert_eq!(header_of(&last, "connection"), Some("close"));
    assert_eq!(read_all(&mut s), "");

    // HTTP/1.0 closes after one answer (which hyper gives in HTTP/1.0 too).
    let r = h.raw(b"GET /api/v1/vmm.ping HTTP/1.0\r\n\r\nGET /api/v1/vmm.ping HTTP/1.0\r\n\r\n");
    // The status line is Cloud Hypervisor's: no reason phrase (ch-remote depends on it).
    assert_eq!(r.matches(" 200 \r\n").count(), 1, "{r}");
    assert!(r.starts_with("HTTP/1.0 200 \r\n"), "{r}");
}

#[test]
fn sixty_four_concurrent_clients_are_all_answered() {
    let h = Harness::start_with(ServerOptions::default(), Duration::from_millis(2));
    let socket = h.socket.clone();
    let barrier = Arc::new(Barrier::new(64));
    let threads: Vec<_> = (0..64)
        .map(|i| {
            let socket = socket.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let (method, path, expected) = match i % 4 {
                    0 => ("GET", "/api/v1/vmm.ping", 200),
                    1 => ("PUT", "/api/v1/vm.boot", 404),
                    2 => ("PUT", "/api/v1/vm.add-vdpa", 501),
                    _ => ("GET", "/api/v1/vm.nope", 404),
                };
                let r = api::client::request_with_timeout(
                    &socket,
                    method,
                    path,
                    None,
                    Some(Duration::from_secs(30)),
                )
                .unwrap();
                assert_eq!(r.status, expected, "{method} {path}");
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let seen = h.vmm.seen.lock().unwrap();
    assert_eq!(seen.len(), 32);
}

#[test]
fn when_every_connection_is_busy_a_newcomer_gets_503() {
    let options = ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    };
    // Each answer takes half a second: both connections are busy when the third arrives.
    let h = Harness::start_with(options, Duration::from_millis(500));
    let mut a = h.connect();
    let mut b = h.connect();
    for s in [&mut a, &mut b] {
        s.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
            .unwrap();
    }
    // Both requests have reached the VMM: their connections are busy.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.vmm.seen.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the requests never reached the VMM"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = h.raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 503);
    // The busy ones were not disturbed.
    for s in [&mut a, &mut b] {
        assert_eq!(status_of(&read_one_response(s)), 200);
    }
}

#[test]
fn idle_connections_make_room_for_newcomers_oldest_first() {
    let options = ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    };
    let h = Harness::start_with(options, Duration::ZERO);
    let mut a = h.connect();
    a.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_one_response(&mut a)), 200);
    // `b` trickles a request head it never finishes.
    let mut b = h.connect();
    b.write_all(b"GET /api/v1/vm").unwrap();
    std::thread::sleep(api::admission::GRACE * 2);
    // Full, but both wait for a request: the newcomer is served, and `a` (waiting longest,
    // since its answer) is closed to make room.
    let r = h.raw(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&r), 200, "{r}");
    assert_eq!(read_all(&mut a), "", "the oldest idle connection is closed");
    // `b` still holds its place until the next newcomer needs it.
    b.write_all(b".info HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(status_of(&read_one_response(&mut b)), 404);
}

#[test]
fn a_vmm_that_is_gone_gives_500() {
    let mut h = Harness::start();
    h.vmm.stop();
    let r = h.call("GET", "vmm.ping", None);
    assert_eq!(r.status, 500);
    assert_eq!(r.error_messages(), vec!["the VMM is shutting down"]);
}

#[test]
fn stop_ends_idle_connections_and_lets_answers_in_progress_finish() {
    let mut h = Harness::start_with(ServerOptions::default(), Duration::from_millis(300));
    let mut idle = h.connect();
    let mut busy = h.connect();
    busy.write_all(b"PUT /api/v1/vmm.shutdown HTTP/1.1\r\n\r\n")
        .unwrap();
    // Let the request reach the VMM before stopping.
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.vmm.seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    h.server.stop();
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = read_all(&mut busy);
    assert_eq!(status_of(&answer), 204);
    assert_eq!(header_of(&answer, "connection"), Some("close"));
    assert_eq!(read_all(&mut idle), "");
    // Nobody listens any more; the file stays until the binary removes it.
    assert!(std::os::unix::net::UnixStream::connect(&h.socket).is_err());
    assert!(h.socket.exists());
    h.server.stop();
    h.bound.remove_file().unwrap();
    assert!(!h.socket.exists());
}

#[test]
fn stop_does_not_wait_for_requests_still_being_received() {
    let mut h = Harness::start();
    let mut half_head = h.connect();
    half_head.write_all(b"PUT /api/v1/vm.cre").unwrap();
    let mut half_body = h.connect();
    half_body
        .write_all(b"PUT /api/v1/vm.create HTTP/1.1\r\nContent-Length: 50\r\n\r\n{")
        .unwrap();
    let mut kept = h.connect();
    kept.write_all(b"GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(status_of(&read_one_response(&mut kept)), 200);
    kept.write_all(b"GET /api/v1/vmm.pi").unwrap();
    // Let the server take in what was sent.
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    h.server.stop();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    for s in [&mut half_head, &mut half_body, &mut kept] {
        assert_eq!(read_all(s), "");
    }
    assert!(h.vmm.seen.lock().unwrap().len() == 1);
}

#[test]
fn the_confine_hook_runs_on_the_api_thread_first() {
    let dir = TempDir::new("confine");
    let bound = api::socket::bind(&config::ApiSocketConfig::Path(dir.join("api.sock"))).unwrap();
    let (sender, _vmm) = FakeVmm::start(Duration::ZERO);
    let (tx, rx) = std::sync::mpsc::channel();
    let options = ServerOptions {
        confine: Some(Box::new(move || {
            tx.send(std::thread::current().name().map(str::to_string))
                .unwrap();
            Ok(Box::new(()))
        })),
        ..ServerOptions::default()
    };
    let mut server =
        api::server::start_with(bound.try_clone_listener().unwrap(), sender.clone(), options)
            .unwrap();
    assert_eq!(rx.recv().unwrap().as_deref(), Some("api"));
    server.stop();

    let options = ServerOptions {
        confine: Some(Box::new(|| Err(std::io::Error::other("no landlock here")))),
        ..ServerOptions::default()
    };
    let e =
        api::server::start_with(bound.try_clone_listener().unwrap(), sender, options).unwrap_err();
    assert_eq!(e.to_string(), "no landlock here");
}
