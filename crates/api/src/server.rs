//! The API server: accepts connections on the listening socket and serves each on its own
//! thread, passing every API call to the VMM thread and waiting for its answer.
//!
//! Threads: `api` accepts; each connection gets an `api-conn` thread, which reads requests
//! (HTTP/1.1 keep-alive), calls [`RequestSender::call`] and writes the answers. All of them are
//! started by the `api` thread, so a confinement applied to it when it starts (see
//! [`ServerOptions::confine`]) holds for every thread of the server.
//!
//! Status codes: 200 with the VMM's JSON, or 204; errors carry a JSON array of messages,
//! outermost first: 400 (bad request or VM configuration), 404 (no such endpoint, or no VM), 405
//! (method not allowed, with `Allow`; or the VM's state forbids the action), 408 (request not
//! received in time), 409, 413 (body over [`crate::MAX_BODY_SIZE`]), 415 (body not JSON), 431,
//! 500, 501 (an endpoint Palisade does not serve yet), 503 (too many connections), 505.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm::control::{Reply, RequestSender};

use crate::http::{Connection, Framing, HttpError, ReadError, RequestHead, Response};
use crate::routes;
use crate::MAX_BODY_SIZE;

/// A function run on the `api` thread before it starts serving (see
/// [`ServerOptions::confine`]).
pub type ConfineFn = Box<dyn FnOnce() -> io::Result<()> + Send>;

/// Tunables of the server.
pub struct ServerOptions {
    /// How long a kept-alive connection may stay idle between requests before it is closed.
    pub idle_timeout: Duration,
    /// How long a client has, once a request has started, to send all of it; a slower one is
    /// answered 408 and disconnected.
    pub request_timeout: Duration,
    /// How many connections are served at once; a client beyond that is answered 503.
    pub max_connections: usize,
    /// Run on the `api` thread before anything is served; every thread of the server is
    /// started from that thread afterwards and so inherits what it sets up (for instance a
    /// Landlock domain that allows no file-system access, which the API never needs). If it
    /// fails, [`start_with`] fails with its error.
    pub confine: Option<ConfineFn>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            confine: None,
        }
    }
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.max_connections)
            .field("confine", &self.confine.is_some())
            .finish()
    }
}

/// The options the serving threads use.
#[derive(Clone, Copy, Debug)]
struct Settings {
    idle_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
}

/// How long [`ApiServer::stop`] waits for answers in progress.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long, and how much, a connection closed early still reads from its client.
const LINGER_TIME: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 4 << 20;

/// State shared by the accept thread, the connection threads and [`ApiServer`].
struct Shared {
    stopping: AtomicBool,
    connections: Mutex<Connections>,
    /// Signalled whenever a connection ends.
    ended: Condvar,
}

#[derive(Default)]
struct Connections {
    next_id: u64,
    /// A handle on each open connection, to shut it down on stop.
    open: HashMap<u64, UnixStream>,
}

impl Shared {
    fn connections(&self) -> MutexGuard<'_, Connections> {
        // A panicking connection thread cannot leave the table inconsistent: recover it.
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// Removes a connection from the table when its thread ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.connections().open.remove(&self.id);
        self.shared.ended.notify_all();
    }
}

/// The running server. Stop it with [`ApiServer::stop`] (dropping it also stops it).
pub struct ApiServer {
    shared: Arc<Shared>,
    /// A second handle on the listening socket, to wake the accept thread on stop.
    listener: Option<UnixListener>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiServer")
            .field("running", &self.thread.is_some())
            .finish()
    }
}

/// Starts serving the API on `listener` with the default [`ServerOptions`].
pub fn start(listener: UnixListener, sender: RequestSender) -> io::Result<ApiServer> {
    start_with(listener, sender, ServerOptions::default())
}

/// Starts serving the API on `listener` on a new thread named `api`; returns once that thread
/// runs (and `options.confine`, if any, succeeded).
pub fn start_with(
    listener: UnixListener,
    sender: RequestSender,
    mut options: ServerOptions,
) -> io::Result<ApiServer> {
    listener.set_nonblocking(false)?;
    let waker = listener.try_clone()?;
    let shared = Arc::new(Shared {
        stopping: AtomicBool::new(false),
        connections: Mutex::new(Connections::default()),
        ended: Condvar::new(),
    });
    let confine = options.confine.take();
    let settings = Settings {
        idle_timeout: options.idle_timeout,
        request_timeout: options.request_timeout,
        max_connections: options.max_connections.max(1),
    };
    let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let thread_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            if let Some(confine) = confine {
                if let Err(e) = confine() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            accept_loop(listener, sender, thread_shared, settings);
        })?;
    let started = ready_rx.recv().unwrap_or_else(|_| {
        Err(io::Error::other(
            "the API thread ended before it started serving",
        ))
    });
    if let Err(e) = started {
        let _ = thread.join();
        return Err(e);
    }
    Ok(ApiServer {
        shared,
        listener: Some(waker),
        thread: Some(thread),
    })
}

impl ApiServer {
    /// Stops the server: stops accepting, lets every answer in progress be written (waiting up
    /// to a couple of seconds), closes every connection and joins the `api` thread. Idle and
    /// half-received requests are dropped. Calling it again does nothing.
    ///
    /// This shuts down the listening socket (an adopted descriptor included) but never removes
    /// the socket file: see [`crate::socket::BoundSocket::remove_file`].
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(listener) = self.listener.take() {
            // std offers no shutdown(2) for listeners; one issued through a stream handle on the
            // same descriptor is the same call, and it wakes the blocked accept(2) with EINVAL.
            let as_stream = UnixStream::from(OwnedFd::from(listener));
            if let Err(e) = as_stream.shutdown(Shutdown::Both) {
                log::warn!("API server: cannot shut down the listening socket: {e}");
            }
        }
        if thread.join().is_err() {
            log::error!("API server: the accept thread panicked");
        }
        // No new connection can appear now. Stop reading on the open ones: idle ones end at
        // once; one waiting for the VMM still writes its answer, then ends.
        let deadline = Instant::now() + STOP_GRACE;
        let mut connections = self.shared.connections();
        for stream in connections.open.values() {
            let _ = stream.shutdown(Shutdown::Read);
        }
        while !connections.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            connections = match self.shared.ended.wait_timeout(connections, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        for stream in connections.open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if !connections.open.is_empty() {
            log::warn!(
                "API server: {} connection(s) still busy at stop were cut",
                connections.open.len()
            );
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: UnixListener,
    sender: RequestSender,
    shared: Arc<Shared>,
    settings: Settings,
) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(_) if shared.stopping() => break,
            Err(e) => match e.kind() {
                io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                _ => {
                    // Out of descriptors or memory, most likely: give the system a moment
                    // rather than spin, and keep serving.
                    log::error!("API server: cannot accept a connection: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        if shared.stopping() {
            break;
        }
        serve_new(stream, &sender, &shared, settings);
    }
    log::debug!("API server: stopped accepting");
}

/// Registers `stream` and starts its connection thread, or refuses it if too many are open.
fn serve_new(stream: UnixStream, sender: &RequestSender, shared: &Arc<Shared>, settings: Settings) {
    let id = {
        let mut connections = shared.connections();
        if connections.open.len() >= settings.max_connections {
            drop(connections);
            refuse_busy(stream, settings.max_connections);
            return;
        }
        let handle = match stream.try_clone() {
            Ok(handle) => handle,
            Err(e) => {
                log::error!("API server: cannot register a connection: {e}");
                return;
            }
        };
        let id = connections.next_id;
        connections.next_id += 1;
        connections.open.insert(id, handle);
        id
    };
    let registration = Registration {
        shared: shared.clone(),
        id,
    };
    let sender = sender.clone();
    let thread_shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("api-conn".into())
        .spawn(move || {
            let _registration = registration;
            serve_connection(stream, &sender, &thread_shared, settings);
        });
    if let Err(e) = spawned {
        // The closure (and with it the registration and the stream) has been dropped.
        log::error!("API server: cannot start a connection thread: {e}");
    }
}

fn refuse_busy(stream: UnixStream, max: usize) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut response = Response::error(
        503,
        &[format!(
            "the API is serving {max} connections already; retry once some have closed"
        )],
    );
    response.close = true;
    let mut connection = Connection::new(stream);
    let _ = connection.write_response(&response, false);
}

/// Serves the requests of one connection until it closes.
fn serve_connection(
    stream: UnixStream,
    sender: &RequestSender,
    shared: &Shared,
    settings: Settings,
) {
    let mut connection = Connection::new(stream);
    loop {
        if shared.stopping() {
            return;
        }
        let head = match connection.read_head(settings.idle_timeout, settings.request_timeout) {
            Ok(head) => head,
            Err(ReadError::Gone) => return,
            Err(ReadError::Http(e)) => return fail(connection, e),
        };
        let keep_alive = head.keep_alive();
        let (mut response, body_left) = match answer(&mut connection, &head, sender) {
            Ok(response) => (response, false),
            Err(Answer::Gone) => return,
            Err(Answer::Early(response)) => (response, true),
        };
        let close = body_left || !keep_alive || shared.stopping();
        response.close = close;
        if connection
            .write_response(&response, head.method == "HEAD")
            .is_err()
        {
            return;
        }
        if body_left {
            // The body was not read, so the next request's start is unknown.
            return connection.linger(LINGER_TIME, LINGER_BYTES);
        }
        if close {
            return;
        }
    }
}

/// Answers a request that could not be read, then closes the connection.
fn fail(mut connection: Connection, error: HttpError) {
    let mut response = Response::error(error.status, &[error.message]);
    response.close = true;
    if connection.write_response(&response, false).is_ok() {
        connection.linger(LINGER_TIME, LINGER_BYTES);
    }
}

/// Why [`answer`] gave no ordinary response.
enum Answer {
    /// The client went away.
    Gone,
    /// An answer given without reading the request's body.
    Early(Response),
}

fn error(status: u16, message: String) -> Response {
    Response::error(status, &[message])
}

/// Works out the response to one request, reading its body when it is needed.
fn answer(
    connection: &mut Connection,
    head: &RequestHead,
    sender: &RequestSender,
) -> Result<Response, Answer> {
    let framing = match head.framing() {
        Ok(framing) => framing,
        Err(e) => return Err(Answer::Early(error(e.status, e.message))),
    };
    let early = |response: Response| {
        if framing == Framing::None {
            Ok(response)
        } else {
            Err(Answer::Early(response))
        }
    };
    let Some(endpoint) = routes::find(&head.path) else {
        return early(error(
            404,
            format!(
                "{}: no such endpoint; the endpoints are under {}",
                head.path,
                crate::API_PREFIX
            ),
        ));
    };
    let name = endpoint.name;
    if head.method != endpoint.method {
        let mut response = error(
            405,
            format!(
                "{name}: method {} is not allowed; use {}",
                head.method, endpoint.method
            ),
        );
        response.allow = Some(endpoint.method.to_string());
        return early(response);
    }
    if let Framing::Length(length) = framing {
        if length > MAX_BODY_SIZE as u64 {
            return Err(Answer::Early(error(
                413,
                format!(
                    "{name}: the request body ({length} bytes) is larger than the limit of \
                     {MAX_BODY_SIZE} bytes"
                ),
            )));
        }
    }
    if framing != Framing::None {
        if let Some(content_type) = head.header("content-type") {
            let media_type = content_type.split(';').next().unwrap_or_default().trim();
            if !media_type.eq_ignore_ascii_case("application/json") {
                return Err(Answer::Early(error(
                    415,
                    format!("{name}: the body is `{content_type}`; send it as application/json"),
                )));
            }
        }
        if head.expects_continue() && connection.write_continue().is_err() {
            return Err(Answer::Gone);
        }
    }
    let body = match connection.read_body(framing, MAX_BODY_SIZE) {
        Ok(body) => body,
        Err(ReadError::Gone) => return Err(Answer::Gone),
        Err(ReadError::Http(e)) => {
            return Err(Answer::Early(error(
                e.status,
                format!("{name}: {}", e.message),
            )))
        }
    };
    if !endpoint.served {
        return Ok(error(
            501,
            format!("{name}: Palisade does not support this endpoint yet"),
        ));
    }
    let request = match routes::request_for(name, &body) {
        Ok(request) => request,
        Err(e) => return Ok(Response::error(e.kind.http_status(), &e.messages)),
    };
    Ok(match sender.call(request) {
        Ok(Reply::Done) => Response::empty(204),
        Ok(Reply::Json(value)) => Response::json(200, value.to_string()),
        Err(e) => Response::error(e.kind.http_status(), &e.messages),
    })
}
