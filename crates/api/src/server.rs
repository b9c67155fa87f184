//! The API server: accepts connections on the listening socket and serves them with hyper
//! (HTTP/1.1) on a tokio current-thread runtime, all on one thread named `api`. Every API call
//! goes to the VMM thread with [`RequestSender::send`]; the VMM thread's answer completes a
//! one-shot channel the request's task waits on, so a slow VMM call never holds up the other
//! connections and the `api` thread never blocks on the VMM.
//!
//! A confinement applied to the `api` thread when it starts (see [`ServerOptions::confine`])
//! holds for all of the server: it starts no other thread.
//!
//! Status codes: 200 with the VMM's JSON, or 204; errors carry a JSON array of messages,
//! outermost first: 400 (bad request or VM configuration), 404 (no such endpoint, or no VM), 405
//! (method not allowed, with `Allow`; or the VM's state forbids the action), 408 (request body
//! not received in time), 409, 413 (body over [`crate::MAX_BODY_SIZE`]), 500, 501 (an endpoint
//! Palisade does not serve yet), 503 (every connection busy). Any Content-Type is accepted,
//! as Cloud Hypervisor does; the body must be JSON whatever it says. A request
//! that is not valid HTTP is answered by hyper itself, with an empty body: 400, or 431 for a
//! request head over [`crate::MAX_HEAD_SIZE`].

use std::convert::Infallible;
use std::error::Error as StdError;
use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use vmm::control::{ErrorKind, Reply, RequestError, RequestSender};

use crate::admission::{Place, Places};
use crate::fd_stream::{FdStream, ReceivedFds};
use crate::routes;
use crate::{MAX_BODY_SIZE, MAX_HEAD_SIZE};

/// A function run on the `api` thread before it starts serving (see
/// [`ServerOptions::confine`]).
/// What it returns is kept on that thread for as long as the server runs (a registration
/// of the thread's confinement, for instance).
pub type ConfineFn = Box<dyn FnOnce() -> io::Result<Box<dyn std::any::Any>> + Send>;

/// Tunables of the server.
pub struct ServerOptions {
    /// How long the server waits for a whole request head, counted from the moment the
    /// connection opens or the previous answer on it was sent: a connection that stays idle
    /// that long, or stalls in the middle of a request head, is closed without an answer.
    pub idle_timeout: Duration,
    /// How long a client has, once a request's head has arrived, to send all of its body; a
    /// slower one is answered 408 and disconnected.
    pub request_timeout: Duration,
    /// How many connections are served at once. Beyond that, the connection that has waited
    /// longest for a request (idle, or trickling its head) is closed to make room (see
    /// [`crate::admission`]); only when every connection is busy answering is the newcomer
    /// answered 503 (as many again at most; further ones are closed at once).
    pub max_connections: usize,
    /// Run on the `api` thread once its runtime is built, before anything is served. The
    /// server runs entirely on that thread, so whatever it sets up (a Landlock domain without
    /// file rights, a system-call filter) holds for all of it. If it fails, [`start_with`]
    /// fails with its error.
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

/// How long [`ApiServer::stop`] waits for answers in progress.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How long a client refused for lack of room has to send its request head.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// The running server. Stop it with [`ApiServer::stop`] (dropping it also stops it).
pub struct ApiServer {
    /// Set to `true` to stop the server.
    stop: watch::Sender<bool>,
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
///
/// The listening socket is made non-blocking (a flag it shares with every other handle on it).
pub fn start_with(
    listener: UnixListener,
    sender: RequestSender,
    mut options: ServerOptions,
) -> io::Result<ApiServer> {
    listener.set_nonblocking(true)?;
    let waker = listener.try_clone()?;
    let confine = options.confine.take();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
    let thread = std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let listener = {
                let _context = runtime.enter();
                match tokio::net::UnixListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
            };
            // After the runtime and its descriptors exist, before the first connection.
            let _confinement = match confine.map(|confine| confine()).transpose() {
                Ok(kept) => kept,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let server = Server::new(sender, &options, stop_rx);
            runtime.block_on(server.serve(listener, waker));
            // Dropping the runtime drops every connection still open: they are cut.
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
        stop: stop_tx,
        thread: Some(thread),
    })
}

impl ApiServer {
    /// Stops the server: stops accepting, lets every answer in progress be written (waiting up
    /// to a couple of seconds), closes every connection and joins the `api` thread. Idle
    /// connections and requests still being received are dropped. Calling it again does
    /// nothing.
    ///
    /// This shuts down the listening socket (an adopted descriptor included) but never removes
    /// the socket file: see [`crate::socket::BoundSocket::remove_file`].
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.send_replace(true);
        if thread.join().is_err() {
            log::error!("API server: the API thread panicked");
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `future` until it completes, or until `cancel` does; `None` if `cancel` came first.
async fn until<F: Future, C: Future>(future: F, cancel: C) -> Option<F::Output> {
    let mut future = pin!(future);
    let mut cancel = pin!(cancel);
    poll_fn(|cx| {
        // The cancellation first: once it is there, `future` is not polled again.
        if cancel.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        future.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Runs `future` until it completes, or until the server stops; `None` if it stopped first.
async fn unless_stopped<F: Future>(
    future: F,
    stop: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    // Also done if the `ApiServer` is gone altogether.
    until(future, stop.wait_for(|stopping| *stopping)).await
}

/// What every request handler shares.
struct Context {
    sender: RequestSender,
    request_timeout: Duration,
    stop: watch::Receiver<bool>,
}

/// The server's state on the `api` thread.
struct Server {
    context: Arc<Context>,
    /// Serves the admitted connections.
    http: http1::Builder,
    /// Serves the refused ones: one request, answered 503.
    refusal_http: http1::Builder,
    max_connections: usize,
}

impl Server {
    fn new(sender: RequestSender, options: &ServerOptions, stop: watch::Receiver<bool>) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            // `Content-Length`, not `content-length`: ch-remote looks for it by that spelling.
            .title_case_headers(true)
            .header_read_timeout(options.idle_timeout)
            .max_buf_size(MAX_HEAD_SIZE)
            // A client may shut down its sending side once its request is out and still get
            // the answer.
            .half_close(true);
        let mut refusal_http = http.clone();
        refusal_http
            .keep_alive(false)
            .header_read_timeout(REFUSAL_TIMEOUT);
        Server {
            context: Arc::new(Context {
                sender,
                request_timeout: options.request_timeout,
                stop,
            }),
            http,
            refusal_http,
            max_connections: options.max_connections.max(1),
        }
    }

    /// Serves until the stop; `waker` is a second handle on the listening socket.
    async fn serve(self, listener: tokio::net::UnixListener, waker: UnixListener) {
        let mut stop = self.context.stop.clone();
        let mut connections = JoinSet::new();
        let mut refusals = JoinSet::new();
        let mut places = Places::default();
        loop {
            let Some(accepted) = unless_stopped(listener.accept(), &mut stop).await else {
                break;
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(_) if *stop.borrow() => break,
                Err(e) => match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => continue,
                    _ => {
                        // Out of descriptors or memory, most likely: give the system a moment
                        // rather than spin, and keep serving.
                        log::error!("API server: cannot accept a connection: {e}");
                        let pause = tokio::time::sleep(Duration::from_millis(100));
                        if unless_stopped(pause, &mut stop).await.is_none() {
                            break;
                        }
                        continue;
                    }
                },
            };
            reap(&mut connections);
            reap(&mut refusals);
            if let Some(place) = places.admit(self.max_connections) {
                connections.spawn(serve_connection(
                    stream,
                    self.http.clone(),
                    self.context.clone(),
                    place,
                ));
            } else if refusals.len() < self.max_connections {
                refusals.spawn(refuse(
                    stream,
                    self.refusal_http.clone(),
                    self.max_connections,
                ));
            } else {
                // Too busy even to refuse politely.
                drop(stream);
            }
        }
        log::debug!("API server: stopped accepting");
        // Only once the runtime no longer watches it: a shut-down listener stays readable
        // forever, and accept(2) on it keeps failing with EAGAIN.
        drop(listener);
        // std offers no shutdown(2) for listeners; one issued through a stream handle on the
        // same descriptor is the same call. It makes connecting fail from now on, even though
        // the socket stays open (the caller holds another handle on it).
        if let Err(e) = UnixStream::from(OwnedFd::from(waker)).shutdown(Shutdown::Both) {
            log::warn!("API server: cannot shut down the listening socket: {e}");
        }
        drop(refusals);
        // Idle connections close at once; those with an answer in progress once it is written.
        let all_done = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, all_done).await.is_err() {
            log::warn!(
                "API server: {} connection(s) still busy at stop were cut",
                connections.len()
            );
        }
    }
}

/// Collects the connection tasks that have ended.
fn reap(tasks: &mut JoinSet<()>) {
    while let Some(result) = tasks.try_join_next() {
        if let Err(e) = result {
            if e.is_panic() {
                log::error!("API server: a connection handler panicked");
            }
        }
    }
}

/// Serves the requests of one connection until it closes, or the server stops.
async fn serve_connection(
    stream: tokio::net::UnixStream,
    http: http1::Builder,
    context: Arc<Context>,
    place: Arc<Place>,
) {
    let mut stop = context.stop.clone();
    // Whether a request of this connection has reached the handler (its head was received).
    let started = Arc::new(AtomicBool::new(false));
    let received = Arc::new(std::sync::Mutex::new(ReceivedFds::default()));
    let service = {
        let started = started.clone();
        let place = place.clone();
        let received = received.clone();
        service_fn(move |request| {
            started.store(true, Ordering::Relaxed);
            place.start();
            let context = context.clone();
            let place = place.clone();
            let received = received.clone();
            async move {
                let response = answer(request, &context, &received).await;
                place.finish();
                response
            }
        })
    };
    let stream = TokioIo::new(FdStream::new(stream, received));
    let mut connection = pin!(http.serve_connection(stream, service));
    match unless_stopped(until(connection.as_mut(), place.closing()), &mut stop).await {
        Some(Some(Ok(()))) => return,
        Some(Some(Err(e))) => {
            log::debug!("API server: connection ended: {e}");
            return;
        }
        Some(None) => {
            log::debug!("API server: a connection waiting for a request made room for another");
            return;
        }
        None => {}
    }
    if !started.load(Ordering::Relaxed) {
        // Not even one request head received: nothing worth waiting for.
        return;
    }
    // Closes the connection if it is idle; otherwise once the answer in progress is written.
    // A request still being received is abandoned by its handler, which watches for the stop.
    connection.as_mut().graceful_shutdown();
    if let Err(e) = connection.await {
        log::debug!("API server: connection ended at stop: {e}");
    }
}

/// Answers the first request of a connection beyond the limit with 503, then closes it.
async fn refuse(stream: tokio::net::UnixStream, http: http1::Builder, max: usize) {
    let service = service_fn(move |_request| async move {
        let mut response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the API is serving {max} connections already; retry once some have closed"),
        );
        close_after(&mut response);
        Ok::<_, Infallible>(response)
    });
    let _ = http.serve_connection(TokioIo::new(stream), service).await;
}

type HttpResponse = hyper::Response<Full<Bytes>>;

/// Why a request got no answer: the client went away, or the server is stopping. Hyper then
/// closes the connection without answering.
#[derive(Debug)]
struct NoAnswer;

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request was abandoned")
    }
}

impl StdError for NoAnswer {}

fn with_common_headers(mut response: HttpResponse) -> HttpResponse {
    response
        .headers_mut()
        .insert(SERVER, HeaderValue::from_static("Palisade"));
    // The status line as Cloud Hypervisor writes it, `HTTP/1.1 200 ` with no reason phrase:
    // its own client, ch-remote, reads everything after the version as the status code.
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(b""));
    response
}

/// A response without a body.
fn empty(status: StatusCode) -> HttpResponse {
    let mut response = hyper::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    with_common_headers(response)
}

/// A response with a JSON body.
fn json(status: StatusCode, body: String) -> HttpResponse {
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    with_common_headers(response)
}

/// An error response: the messages as a JSON array of strings, outermost first.
fn error_list(status: StatusCode, messages: &[String]) -> HttpResponse {
    let body = serde_json::to_string(messages).unwrap_or_else(|_| "[]".to_string());
    json(status, body)
}

fn error(status: StatusCode, message: String) -> HttpResponse {
    error_list(status, &[message])
}

/// The response for a failed VMM request.
fn request_error(e: &RequestError) -> HttpResponse {
    let status =
        StatusCode::from_u16(e.kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_list(status, &e.messages)
}

/// Marks `response` as the last one of its connection.
fn close_after(response: &mut HttpResponse) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

/// Why a request body could not be read.
enum BodyError {
    /// Over [`MAX_BODY_SIZE`].
    TooLarge,
    /// Not valid HTTP framing (a bad chunk size, say).
    Malformed(String),
    /// The connection ended or failed.
    Gone,
}

fn classify_body_error(e: &(dyn StdError + 'static)) -> BodyError {
    if e.downcast_ref::<LengthLimitError>().is_some() {
        return BodyError::TooLarge;
    }
    let mut cause = Some(e);
    while let Some(e) = cause {
        if let Some(io_error) = e.downcast_ref::<io::Error>() {
            return match io_error.kind() {
                // What hyper's decoder reports for framing it cannot decode.
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                    BodyError::Malformed(io_error.to_string())
                }
                _ => BodyError::Gone,
            };
        }
        cause = e.source();
    }
    BodyError::Gone
}

/// Works out the response to one request, reading its body when it is needed.
async fn answer(
    request: hyper::Request<Incoming>,
    context: &Context,
    received: &std::sync::Mutex<ReceivedFds>,
) -> Result<HttpResponse, NoAnswer> {
    let has_body = !request.body().is_end_stream();
    // An answer given without reading the body ends the connection: the next request's start
    // is unknown.
    let early = |mut response: HttpResponse| {
        if has_body {
            close_after(&mut response);
        }
        Ok(response)
    };
    let path = request.uri().path();
    let Some(endpoint) = routes::find(path) else {
        return early(error(
            StatusCode::NOT_FOUND,
            format!(
                "{path}: no such endpoint; the endpoints are under {}",
                crate::API_PREFIX
            ),
        ));
    };
    let name = endpoint.name;
    if request.method().as_str() != endpoint.method {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{name}: method {} is not allowed; use {}",
                request.method(),
                endpoint.method
            ),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(endpoint.method));
        return early(response);
    }
    // The declared length (hyper has checked it is one number), before any byte is read.
    let declared = request.body().size_hint().lower();
    if declared > MAX_BODY_SIZE as u64 {
        return early(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{name}: the request body ({declared} bytes) is larger than the limit of \
                 {MAX_BODY_SIZE} bytes"
            ),
        ));
    }
    // Any Content-Type is taken, or none (`curl -d` sends a form type), as Cloud Hypervisor
    // does: the body must be JSON all the same.
    // Reading the body is what makes hyper send `100 Continue` to a client that expects it.
    let body = if has_body {
        let limited = Limited::new(request.into_body(), MAX_BODY_SIZE);
        let mut stop = context.stop.clone();
        let read = tokio::time::timeout(context.request_timeout, limited.collect());
        // A request still being received when the server stops is dropped.
        let Some(read) = unless_stopped(read, &mut stop).await else {
            return Err(NoAnswer);
        };
        let failed = |status, message: String| {
            let mut response = error(status, format!("{name}: {message}"));
            close_after(&mut response);
            Ok(response)
        };
        match read {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) => {
                return match classify_body_error(&*e) {
                    BodyError::TooLarge => failed(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!(
                            "the request body is larger than the limit of {MAX_BODY_SIZE} bytes"
                        ),
                    ),
                    BodyError::Malformed(reason) => failed(
                        StatusCode::BAD_REQUEST,
                        format!("malformed request body: {reason}"),
                    ),
                    BodyError::Gone => Err(NoAnswer),
                }
            }
            Err(_elapsed) => {
                return failed(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body was not received in time; send it whole without pausing"
                        .to_string(),
                )
            }
        }
    } else {
        Bytes::new()
    };
    // The descriptors sent with this request (dropped, so closed, unless it uses them).
    let (fds, lost) = received.lock().unwrap_or_else(|e| e.into_inner()).take();
    if lost {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            format!("{name}: too many file descriptors came with the request; none was used"),
        ));
    }
    if !endpoint.served {
        return Ok(error(
            StatusCode::NOT_IMPLEMENTED,
            format!("{name}: Palisade does not support this endpoint yet"),
        ));
    }
    let vmm_request = match routes::request_for(name, &body, fds) {
        Ok(vmm_request) => vmm_request,
        Err(e) => return Ok(request_error(&e)),
    };
    let (reply_tx, reply_rx) = oneshot::channel();
    context.sender.send(vmm_request, move |response| {
        // The client may be gone and its task with it; nothing to do then.
        let _ = reply_tx.send(response);
    });
    // The VMM always answers (see `Responder`); a lost answer would mean it is gone.
    let response = reply_rx.await.unwrap_or_else(|_| {
        Err(RequestError::new(
            ErrorKind::Internal,
            "the VMM is shutting down",
        ))
    });
    Ok(match response {
        Ok(Reply::Done) => empty(StatusCode::NO_CONTENT),
        Ok(Reply::Json(value)) => json(StatusCode::OK, value.to_string()),
        Err(e) => request_error(&e),
    })
}
