//! A small blocking HTTP/1.1 client for the API socket: one request per connection, which may
//! carry file descriptors (`SCM_RIGHTS`).

use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Largest response accepted from the server.
const MAX_RESPONSE_SIZE: usize = 64 << 20;

/// What the server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body (empty for 204).
    pub body: String,
}

impl ClientResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error messages of an error response, outermost first: the JSON array of strings the
    /// API sends, or the status and the raw body when the body is not such an array.
    pub fn error_messages(&self) -> Vec<String> {
        match serde_json::from_str::<Vec<String>>(&self.body) {
            Ok(messages) if !messages.is_empty() => messages,
            _ => {
                let mut message = format!("HTTP {}", self.status);
                let body = self.body.trim();
                if !body.is_empty() {
                    message.push_str(": ");
                    message.push_str(body);
                }
                vec![message]
            }
        }
    }

    /// The error messages on one line, joined with `: `.
    pub fn error_line(&self) -> String {
        self.error_messages().join(": ")
    }
}

/// Why a request got no answer.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error(
        "cannot connect to the API socket {}: {source}; is palisade running with --api-socket \
         {}?",
        socket.display(),
        socket.display()
    )]
    Connect {
        /// The socket path.
        socket: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Sending the request or receiving the answer failed.
    #[error("API socket {}: {source}", socket.display())]
    Io {
        /// The socket path.
        socket: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The answer is not a valid HTTP response.
    #[error("API socket {}: invalid response: {reason}", socket.display())]
    InvalidResponse {
        /// The socket path.
        socket: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Sends `method path` (a full path such as `/api/v1/vm.boot`) with an optional JSON `body` to
/// the API at `socket`, and waits for the answer however long it takes.
pub fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<ClientResponse, ClientError> {
    request_with_timeout(socket, method, path, body, None)
}

/// Like [`request`], giving up on any single read or write that waits longer than `timeout`.
pub fn request_with_timeout(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Option<Duration>,
) -> Result<ClientResponse, ClientError> {
    request_with_fds(socket, method, path, body, &[], timeout)
}

/// Like [`request_with_timeout`], sending the descriptors `fds` with the request as
/// `SCM_RIGHTS` ancillary data (how tap descriptors go with `vm.add-net`).
///
/// The answer is complete when its `Content-Length` (or last chunk) has arrived: the client
/// does not wait for the server to close the connection, which Cloud Hypervisor never does.
pub fn request_with_fds(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    fds: &[RawFd],
    timeout: Option<Duration>,
) -> Result<ClientResponse, ClientError> {
    let io_error = |source| ClientError::Io {
        socket: socket.to_path_buf(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        socket: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(timeout).map_err(io_error)?;
    stream.set_write_timeout(timeout).map_err(io_error)?;

    let mut message =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if let Some(body) = body {
        message.push_str("Content-Type: application/json\r\n");
        message.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    message.push_str("Connection: close\r\n\r\n");
    let mut bytes = message.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body.as_bytes());
    }
    // The server may answer (and close) before taking the whole request, for instance when
    // the body is too large: its answer is still worth reading then.
    let sent = send_with_fds(&stream, &bytes, fds).and_then(|()| (&stream).flush());

    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let invalid = |reason: String| ClientError::InvalidResponse {
        socket: socket.to_path_buf(),
        reason,
    };
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                if raw.len() > MAX_RESPONSE_SIZE {
                    return Err(invalid(format!("larger than {MAX_RESPONSE_SIZE} bytes")));
                }
                if let Some(response) = parse_response(&raw, false).map_err(invalid)? {
                    return Ok(response);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if raw.is_empty() {
                    // Nothing came back: the first failure is the one to report.
                    sent.map_err(io_error)?;
                    return Err(io_error(e));
                }
                break;
            }
        }
    }
    if raw.is_empty() {
        sent.map_err(io_error)?;
    }
    parse_response(&raw, true)
        .map_err(invalid)?
        .ok_or_else(|| invalid("incomplete response".into()))
}

/// Writes all of `bytes`, the first part of it with `fds` attached (rust-vmm's
/// `ScmSocket`).
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let mut rest = bytes;
    if !fds.is_empty() {
        let n = stream
            .send_with_fds(&[rest], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        rest = &rest[n..];
    }
    let mut w = stream;
    w.write_all(rest)
}

/// Parses a response from the bytes received so far: `None` if more are needed (and
/// `closed` is false). Interim 1xx responses are skipped. Once the connection is closed, a
/// body without a length runs to the end.
fn parse_response(mut raw: &[u8], closed: bool) -> Result<Option<ClientResponse>, String> {
    loop {
        let Some(head_end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            if !closed {
                return Ok(None);
            }
            return Err(if raw.is_empty() {
                "the server closed the connection without answering".to_string()
            } else {
                "incomplete response head".to_string()
            });
        };
        let head = std::str::from_utf8(&raw[..head_end])
            .map_err(|_| "the response head is not valid UTF-8".to_string())?;
        let rest = &raw[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("malformed status line `{status_line}`"))?;
        if (100..200).contains(&status) {
            raw = rest;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("malformed header line `{line}`"));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("malformed Content-Length `{value}`"))?,
                );
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            }
        }
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if chunked {
            match decode_chunked(rest) {
                Ok(body) => body,
                Err(_) if !closed => return Ok(None),
                Err(e) => return Err(e.to_string()),
            }
        } else if let Some(length) = length {
            match rest.get(..length) {
                Some(body) => body.to_vec(),
                None if !closed => return Ok(None),
                None => return Err("the response body is shorter than its Content-Length".into()),
            }
        } else if !closed {
            return Ok(None);
        } else {
            rest.to_vec()
        };
        let body =
            String::from_utf8(body).map_err(|_| "the response body is not UTF-8".to_string())?;
        return Ok(Some(ClientResponse { status, body }));
    }
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunked body")?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunked body")?;
        body.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunked body")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let whole = |raw: &[u8]| parse_response(raw, true).map(Option::unwrap);
        let r = whole(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = whole(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.as_str()), (204, ""));
        let r = whole(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[1\r\n1;x\r\n]\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "[1]");
        let r = whole(b"HTTP/1.0 500 Oops\r\n\r\nplain").unwrap();
        assert_eq!(r.error_messages(), vec!["HTTP 500: plain"]);
        assert!(parse_response(b"", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}", true).is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n", true).is_err());
    }

    #[test]
    fn a_response_is_complete_without_the_connection_closing() {
        // Cloud Hypervisor's answer, on a connection it keeps open.
        let head = b"HTTP/1.1 200 \r\nServer: Cloud Hypervisor API\r\nContent-Length: 10\r\n\r\n";
        let mut raw = head.to_vec();
        assert_eq!(parse_response(&raw, false), Ok(None));
        raw.extend_from_slice(b"{\"pid\":42}");
        let r = parse_response(&raw, false).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{\"pid\":42}"));
        assert_eq!(
            parse_response(b"HTTP/1.1 204 \r\n\r\n", false)
                .unwrap()
                .unwrap()
                .status,
            204
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n";
        assert_eq!(parse_response(chunked, false), Ok(None));
    }

    #[test]
    fn error_messages_come_from_the_json_array() {
        let r = ClientResponse {
            status: 404,
            body: r#"["vm.boot: no VM", "cause"]"#.into(),
        };
        assert!(!r.is_success());
        assert_eq!(r.error_line(), "vm.boot: no VM: cause");
    }

    #[test]
    fn an_absent_socket_is_named() {
        let e = request(Path::new("/nonexistent/palisade.sock"), "GET", "/", None).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }));
        assert!(e.to_string().contains("/nonexistent/palisade.sock"), "{e}");
    }
}
