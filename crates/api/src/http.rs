//! The part of HTTP/1.1 the API needs, server side: reading one request head and its body from
//! a connection under size limits and deadlines, and writing a response.
//!
//! Bodies are framed by `Content-Length` or by chunked transfer coding; both are limited to
//! [`crate::MAX_BODY_SIZE`], and a `Content-Length` over the limit is refused before any byte
//! of the body is read.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Largest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD_SIZE: usize = 16 << 10;
/// Largest number of header fields accepted.
const MAX_HEADERS: usize = 100;
/// Largest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 1024;

/// An HTTP error to answer with before closing the connection.
#[derive(Debug)]
pub(crate) struct HttpError {
    pub status: u16,
    pub message: String,
}

impl HttpError {
    pub(crate) fn new(status: u16, message: impl Into<String>) -> Self {
        HttpError {
            status,
            message: message.into(),
        }
    }
}

/// Why reading from the client stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The client closed the connection, the connection failed, or it stayed idle too long:
    /// nobody to answer.
    Gone,
    /// The request is wrong (or too slow): answer with this error, then close.
    Http(HttpError),
}

impl From<HttpError> for ReadError {
    fn from(e: HttpError) -> Self {
        ReadError::Http(e)
    }
}

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Version {
    Http10,
    Http11,
}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request line and header fields.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: String,
    /// The path, without any query string.
    pub path: String,
    pub version: Version,
    /// Header fields, names in lower case, in order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The value of the first header field named `name` (lower case).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client wants the connection kept open after the response.
    pub(crate) fn keep_alive(&self) -> bool {
        let tokens = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        };
        let connection: Vec<String> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "connection")
            .flat_map(|(_, v)| tokens(v))
            .collect();
        match self.version {
            Version::Http11 => !connection.iter().any(|t| t == "close"),
            Version::Http10 => connection.iter().any(|t| t == "keep-alive"),
        }
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub(crate) fn expects_continue(&self) -> bool {
        self.version == Version::Http11
            && self
                .header("expect")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"))
    }

    /// How the body is delimited, from `Transfer-Encoding` and `Content-Length`.
    pub(crate) fn framing(&self) -> Result<Framing, HttpError> {
        let codings: Vec<String> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        let lengths: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .collect();
        if !codings.is_empty() {
            if !lengths.is_empty() {
                return Err(HttpError::new(
                    400,
                    "both Transfer-Encoding and Content-Length are given; send only one",
                ));
            }
            if codings != ["chunked"] {
                return Err(HttpError::new(
                    501,
                    format!(
                        "transfer coding `{}` is not supported; send the body with a \
                         Content-Length or chunked",
                        codings.join(", ")
                    ),
                ));
            }
            return Ok(Framing::Chunked);
        }
        let Some(first) = lengths.first() else {
            return Ok(Framing::None);
        };
        let parse = |v: &str| -> Result<u64, HttpError> {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HttpError::new(
                    400,
                    format!("Content-Length `{v}` is not a decimal number"),
                ));
            }
            // Digits only: a parse failure can only be an overflow, that is a huge body.
            Ok(v.parse::<u64>().unwrap_or(u64::MAX))
        };
        let length = parse(first)?;
        for other in &lengths[1..] {
            if parse(other)? != length {
                return Err(HttpError::new(400, "conflicting Content-Length values"));
            }
        }
        Ok(if length == 0 {
            Framing::None
        } else {
            Framing::Length(length)
        })
    }
}

/// One client connection: the stream and the bytes read from it but not used yet.
pub(crate) struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Start of the unused bytes in `buf`.
    pos: usize,
    /// End of the valid bytes in `buf`.
    end: usize,
    /// When reading must be done by (`None`: no limit).
    deadline: Option<Instant>,
    /// Whether a deadline passing means an idle connection (closed silently) rather than a
    /// slow request (answered with 408).
    idle: bool,
}

impl Connection {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            buf: vec![0; 8 << 10],
            pos: 0,
            end: 0,
            deadline: None,
            idle: false,
        }
    }

    /// Whether bytes of a next request are already buffered.
    fn has_buffered(&self) -> bool {
        self.pos < self.end
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
        if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            if self.end == self.buf.len() {
                // Only the head reader keeps unused bytes across reads, and it bounds their
                // amount to MAX_HEAD_SIZE; everything else consumes what it reads.
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        loop {
            let timeout = match self.deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.timed_out());
                    }
                    Some(left)
                }
            };
            if self.stream.set_read_timeout(timeout).is_err() {
                return Err(ReadError::Gone);
            }
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.timed_out())
                }
                Err(_) => return Err(ReadError::Gone),
            }
        }
    }

    fn timed_out(&self) -> ReadError {
        if self.idle {
            ReadError::Gone
        } else {
            ReadError::Http(HttpError::new(
                408,
                "the request was not received in time; send it whole without pausing",
            ))
        }
    }

    /// Reads the next request head. Waits up to `idle` for it to start, then up to `request`
    /// for the whole request (head and body) to arrive.
    pub(crate) fn read_head(
        &mut self,
        idle: Duration,
        request: Duration,
    ) -> Result<RequestHead, ReadError> {
        // Tolerate empty lines between requests (RFC 9112, section 2.2).
        loop {
            if !self.has_buffered() {
                self.deadline = Some(Instant::now() + idle);
                self.idle = true;
                if !self.fill()? {
                    return Err(ReadError::Gone);
                }
            }
            while self.has_buffered() && matches!(self.buf[self.pos], b'\r' | b'\n') {
                self.pos += 1;
            }
            if self.has_buffered() {
                break;
            }
        }
        self.deadline = Some(Instant::now() + request);
        self.idle = false;
        let head_end = loop {
            let window = &self.buf[self.pos..self.end];
            if let Some(end) = find_head_end(window) {
                break end;
            }
            if window.len() >= MAX_HEAD_SIZE {
                return Err(head_too_large().into());
            }
            if !self.fill()? {
                return Err(ReadError::Gone);
            }
        };
        if head_end > MAX_HEAD_SIZE {
            return Err(head_too_large().into());
        }
        let head = parse_head(&self.buf[self.pos..self.pos + head_end])?;
        self.pos += head_end;
        Ok(head)
    }

    /// Reads a body delimited by `framing`, at most `limit` bytes.
    pub(crate) fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
    ) -> Result<Vec<u8>, ReadError> {
        match framing {
            Framing::None => Ok(Vec::new()),
            Framing::Length(n) => {
                if n > limit as u64 {
                    return Err(body_too_large(limit).into());
                }
                let n = n as usize;
                let mut body = Vec::with_capacity(n);
                self.read_exact_into(&mut body, n)?;
                Ok(body)
            }
            Framing::Chunked => self.read_chunked(limit),
        }
    }

    /// Appends exactly `n` bytes to `out`.
    fn read_exact_into(&mut self, out: &mut Vec<u8>, n: usize) -> Result<(), ReadError> {
        let mut left = n;
        while left > 0 {
            if !self.has_buffered() && !self.fill()? {
                return Err(ReadError::Gone);
            }
            let take = left.min(self.end - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            left -= take;
        }
        Ok(())
    }

    /// Reads one line (up to `max` bytes, without its line end).
    fn read_line(&mut self, max: usize, what: &str) -> Result<Vec<u8>, ReadError> {
        let mut line = Vec::new();
        loop {
            if !self.has_buffered() && !self.fill()? {
                return Err(ReadError::Gone);
            }
            let window = &self.buf[self.pos..self.end];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&window[..i]);
                self.pos += i + 1;
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            line.extend_from_slice(window);
            self.pos = self.end;
            if line.len() > max {
                return Err(HttpError::new(400, format!("{what} is too long")).into());
            }
        }
    }

    fn read_chunked(&mut self, limit: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(MAX_CHUNK_LINE, "a chunk-size line")?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size_text = std::str::from_utf8(size_text)
                .map(str::trim)
                .unwrap_or_default();
            let size = if !size_text.is_empty() && size_text.bytes().all(|b| b.is_ascii_hexdigit())
            {
                // Hex digits only: a parse failure can only be an overflow.
                u64::from_str_radix(size_text, 16).unwrap_or(u64::MAX)
            } else {
                return Err(HttpError::new(400, "malformed chunk size in a chunked body").into());
            };
            if size == 0 {
                break;
            }
            if size > (limit - body.len()) as u64 {
                return Err(body_too_large(limit).into());
            }
            self.read_exact_into(&mut body, size as usize)?;
            if !self.read_line(0, "chunk data")?.is_empty() {
                return Err(HttpError::new(400, "chunk data longer than its size").into());
            }
        }
        // Trailer fields, up to the empty line; their content is not used.
        let mut trailer = 0;
        loop {
            let line = self.read_line(MAX_HEAD_SIZE, "the trailer")?;
            if line.is_empty() {
                return Ok(body);
            }
            trailer += line.len();
            if trailer > MAX_HEAD_SIZE {
                return Err(HttpError::new(431, "the trailer is too large").into());
            }
        }
    }

    /// Writes `response` (without its body when answering `HEAD`) and flushes it. Errors mean
    /// the client has gone.
    pub(crate) fn write_response(
        &mut self,
        response: &Response,
        head_only: bool,
    ) -> io::Result<()> {
        let mut bytes = response.to_bytes();
        if head_only {
            bytes.truncate(bytes.len() - response.body.as_ref().map_or(0, String::len));
        }
        self.stream.write_all(&bytes)?;
        self.stream.flush()
    }

    /// Writes an interim `100 Continue`.
    pub(crate) fn write_continue(&mut self) -> io::Result<()> {
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    }

    /// Closes the connection after an answer that left part of the request unread: stops
    /// writing, then reads and throws away what the client still sends for a short while (at
    /// most `max_bytes`, through a small buffer), so that it can read the answer rather than
    /// see its writes fail.
    pub(crate) fn linger(mut self, max_time: Duration, max_bytes: usize) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let deadline = Instant::now() + max_time;
        let mut scratch = [0u8; 4096];
        let mut total = 0;
        while total < max_bytes {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stream.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match self.stream.read(&mut scratch) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn head_too_large() -> HttpError {
    HttpError::new(
        431,
        format!("the request head is larger than {MAX_HEAD_SIZE} bytes"),
    )
}

fn body_too_large(limit: usize) -> HttpError {
    HttpError::new(
        413,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

/// Length of the head at the start of `bytes`, including the empty line that ends it.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = bytes[i..].iter().position(|&b| b == b'\n') {
        let after = i + nl + 1;
        match bytes.get(after) {
            Some(b'\n') => return Some(after + 1),
            Some(b'\r') if bytes.get(after + 1) == Some(&b'\n') => return Some(after + 2),
            _ => i = after,
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn parse_head(bytes: &[u8]) -> Result<RequestHead, HttpError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| HttpError::new(400, "the request head is not valid UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::new(
            400,
            "malformed request line; expected `METHOD /path HTTP/1.1`",
        ));
    };
    if !is_token(method) || !target.starts_with('/') {
        return Err(HttpError::new(
            400,
            "malformed request line; expected `METHOD /path HTTP/1.1`",
        ));
    }
    let version = match version {
        "HTTP/1.1" => Version::Http11,
        "HTTP/1.0" => Version::Http10,
        v if v.starts_with("HTTP/") => {
            return Err(HttpError::new(
                505,
                format!("{v} is not supported; use HTTP/1.1"),
            ))
        }
        _ => {
            return Err(HttpError::new(
                400,
                "malformed request line; expected `METHOD /path HTTP/1.1`",
            ))
        }
    };
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or_default()
        .to_string();
    let mut headers = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if line.starts_with([' ', '\t']) {
            return Err(HttpError::new(400, "folded header lines are not accepted"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::new(
                400,
                format!("malformed header line `{}`", line.escape_debug()),
            ));
        };
        if !is_token(name) {
            return Err(HttpError::new(
                400,
                format!("malformed header name `{}`", name.escape_debug()),
            ));
        }
        if headers.len() == MAX_HEADERS {
            return Err(HttpError::new(
                431,
                format!("more than {MAX_HEADERS} header fields"),
            ));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(RequestHead {
        method: method.to_string(),
        path,
        version,
        headers,
    })
}

/// A response to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Response {
    pub status: u16,
    /// The JSON body, if any.
    pub body: Option<String>,
    /// The `Allow` header, for 405.
    pub allow: Option<String>,
    /// Whether the connection closes after this response.
    pub close: bool,
}

impl Response {
    pub(crate) fn empty(status: u16) -> Self {
        Response {
            status,
            body: None,
            allow: None,
            close: false,
        }
    }

    pub(crate) fn json(status: u16, body: String) -> Self {
        Response {
            body: Some(body),
            ..Response::empty(status)
        }
    }

    /// An error response: the messages as a JSON array of strings, outermost first.
    pub(crate) fn error(status: u16, messages: &[String]) -> Self {
        let body = serde_json::to_string(messages).unwrap_or_else(|_| "[]".to_string());
        Response::json(status, body)
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        head.push_str("Server: Palisade\r\n");
        if let Some(allow) = &self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        match &self.body {
            Some(body) => {
                head.push_str("Content-Type: application/json\r\n");
                head.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            // 204 and 1xx carry no Content-Length at all (RFC 9110, section 8.6).
            None if self.status == 204 || self.status < 200 => {}
            None => head.push_str("Content-Length: 0\r\n"),
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if let Some(body) = &self.body {
            bytes.extend_from_slice(body.as_bytes());
        }
        bytes
    }
}

/// The reason phrase of the status codes the API uses.
pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        parse_head(text.as_bytes()).unwrap()
    }

    #[test]
    fn head_end_is_found_with_either_line_ending() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest"), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn request_line_and_headers_parse() {
        let h = head("PUT /api/v1/vm.boot?x=1 HTTP/1.1\r\nHost: a\r\nContent-LENGTH:  12 \r\n\r\n");
        assert_eq!(h.method, "PUT");
        assert_eq!(h.path, "/api/v1/vm.boot");
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.header("content-length"), Some("12"));
        assert_eq!(h.framing().unwrap(), Framing::Length(12));
        assert!(h.keep_alive());
    }

    #[test]
    fn malformed_heads_are_refused() {
        for bad in [
            "GET\r\n\r\n",
            "GET /a HTTP/1.1 extra\r\n\r\n",
            "GET a HTTP/1.1\r\n\r\n",
            "GET /a FTP/1.0\r\n\r\n",
            "GET /a HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /a HTTP/1.1\r\nbad name: x\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad.as_bytes()).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(
            parse_head(b"GET /a HTTP/2.0\r\n\r\n").unwrap_err().status,
            505
        );
    }

    #[test]
    fn framing_follows_the_headers() {
        assert_eq!(
            head("GET / HTTP/1.1\r\n\r\n").framing().unwrap(),
            Framing::None
        );
        assert_eq!(
            head("PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
                .framing()
                .unwrap(),
            Framing::None
        );
        assert_eq!(
            head("PUT / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .framing()
                .unwrap(),
            Framing::Chunked
        );
        assert_eq!(
            head("PUT / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n")
                .framing()
                .unwrap(),
            Framing::Length(u64::MAX)
        );
        let status = |t: &str| head(t).framing().unwrap_err().status;
        assert_eq!(status("PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status("PUT / HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("PUT / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
    }

    #[test]
    fn keep_alive_depends_on_version_and_connection() {
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive());
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive());
    }

    #[test]
    fn responses_are_serialized() {
        let text = String::from_utf8(Response::empty(204).to_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("Content-Length"));
        let mut r = Response::error(405, &["no".to_string()]);
        r.allow = Some("PUT".into());
        r.close = true;
        let text = String::from_utf8(r.to_bytes()).unwrap();
        assert!(text.contains("Allow: PUT\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("Content-Length: 6\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n[\"no\"]"));
    }

    fn connection_with(input: &[u8]) -> Connection {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(input).unwrap();
        drop(b);
        Connection::new(a)
    }

    #[test]
    fn chunked_bodies_are_decoded_and_limited() {
        let mut c = connection_with(b"4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nTrailer: x\r\n\r\n");
        assert_eq!(c.read_body(Framing::Chunked, 100).unwrap(), b"{\"a\":1}");
        let mut c = connection_with(b"10\r\n0123456789abcdef\r\n0\r\n\r\n");
        match c.read_body(Framing::Chunked, 8) {
            Err(ReadError::Http(e)) => assert_eq!(e.status, 413),
            other => panic!("{other:?}"),
        }
        let mut c = connection_with(b"zz\r\n");
        match c.read_body(Framing::Chunked, 8) {
            Err(ReadError::Http(e)) => assert_eq!(e.status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pipelined_requests_are_read_one_after_the_other() {
        let mut c = connection_with(
            b"PUT /a HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}\r\nGET /b HTTP/1.1\r\n\r\n",
        );
        let t = Duration::from_secs(5);
        let h = c.read_head(t, t).unwrap();
        assert_eq!(h.path, "/a");
        assert_eq!(c.read_body(h.framing().unwrap(), 10).unwrap(), b"{}");
        assert_eq!(c.read_head(t, t).unwrap().path, "/b");
        assert!(matches!(c.read_head(t, t), Err(ReadError::Gone)));
    }

    #[test]
    fn an_oversized_head_is_refused() {
        let mut input = b"GET / HTTP/1.1\r\nX: ".to_vec();
        input.extend(std::iter::repeat_n(b'a', MAX_HEAD_SIZE));
        let mut c = connection_with(&input);
        let t = Duration::from_secs(5);
        match c.read_head(t, t) {
            Err(ReadError::Http(e)) => assert_eq!(e.status, 431),
            other => panic!("{other:?}"),
        }
    }
}
