//! Requests to the VMM thread and their answers: what the REST API (or the command line)
//! asks the VMM to do, and how it answers.
//!
//! Requests travel over a channel; an eventfd wakes the VMM's event loop; the sender waits on
//! a one-shot reply channel. Error kinds map onto the REST API's status codes.

use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

use config::VmConfig;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// An action for the VMM.
#[derive(Debug)]
pub enum Request {
    /// Is the VMM alive? (`vmm.ping`)
    Ping,
    /// End the VMM process (`vmm.shutdown`).
    ShutdownVmm,
    /// Create the VM (`vm.create`).
    Create(Box<VmConfig>),
    /// Boot the created VM (`vm.boot`).
    Boot,
    /// Stop the running VM (`vm.shutdown`).
    Shutdown,
    /// Reset the running VM (`vm.reboot`).
    Reboot,
    /// Park the vCPUs (`vm.pause`).
    Pause,
    /// Unpark the vCPUs (`vm.resume`).
    Resume,
    /// Destroy the VM (`vm.delete`).
    Delete,
    /// Describe the VM (`vm.info`).
    Info,
    /// Device counters (`vm.counters`).
    Counters,
}

/// A successful answer.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// Done; nothing to report (HTTP 204).
    Done,
    /// Done, with a JSON document (HTTP 200).
    Json(serde_json::Value),
}

/// The kind of a failure, as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request or configuration is invalid (400).
    BadRequest,
    /// No VM, or no such device (404).
    NotFound,
    /// The VM's state does not allow the action (405).
    WrongState,
    /// An id is already taken (409).
    Conflict,
    /// Anything else (500).
    Internal,
}

impl ErrorKind {
    /// The HTTP status code of this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::WrongState => 405,
            ErrorKind::Conflict => 409,
            ErrorKind::Internal => 500,
        }
    }
}

/// A failed request: its kind and messages, outermost first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What went wrong, most general first; each says what to do.
    pub messages: Vec<String>,
}

impl RequestError {
    /// A failure with one message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RequestError {
            kind,
            messages: vec![message.into()],
        }
    }

    /// A failure from an error and its chain of sources.
    pub fn from_error(kind: ErrorKind, context: &str, e: &dyn std::error::Error) -> Self {
        let mut messages = vec![format!("{context}: {e}")];
        let mut source = e.source();
        while let Some(s) = source {
            let text = s.to_string();
            // Skip sources whose text the outer message already carries.
            if !messages.iter().any(|m| m.contains(&text)) {
                messages.push(text);
            }
            source = s.source();
        }
        RequestError { kind, messages }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.messages.join(": "))
    }
}

impl std::error::Error for RequestError {}

/// The answer to a request.
pub type Response = Result<Reply, RequestError>;

type Envelope = (Request, SyncSender<Response>);

/// The sending side, cloned into each API connection handler.
#[derive(Clone)]
pub struct RequestSender {
    tx: Sender<Envelope>,
    wake: Arc<EventFd>,
}

impl RequestSender {
    /// Sends `request` to the VMM thread and waits for its answer.
    pub fn call(&self, request: Request) -> Response {
        let gone = || RequestError::new(ErrorKind::Internal, "the VMM is shutting down");
        let (reply_tx, reply_rx) = sync_channel(1);
        self.tx.send((request, reply_tx)).map_err(|_| gone())?;
        self.wake.write(1).map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }
}

/// The receiving side, owned by the VMM thread.
pub struct RequestReceiver {
    rx: Receiver<Envelope>,
    wake: Arc<EventFd>,
}

impl RequestReceiver {
    /// The eventfd to poll.
    pub fn eventfd(&self) -> &EventFd {
        &self.wake
    }

    /// Takes every pending request.
    pub fn drain(&self) -> Vec<(Request, SyncSender<Response>)> {
        // Consume the wake-ups first so a request sent after this read wakes us again.
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A connected sender/receiver pair.
pub fn request_channel() -> std::io::Result<(RequestSender, RequestReceiver)> {
    let (tx, rx) = channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    Ok((
        RequestSender {
            tx,
            wake: wake.clone(),
        },
        RequestReceiver { rx, wake },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_round_trips_through_the_channel() {
        let (tx, rx) = request_channel().unwrap();
        let server = std::thread::spawn(move || loop {
            let batch = rx.drain();
            if batch.is_empty() {
                std::thread::yield_now();
                continue;
            }
            for (req, reply) in batch {
                let answer = match req {
                    Request::Ping => Ok(Reply::Json(serde_json::json!({"ok": true}))),
                    _ => Err(RequestError::new(ErrorKind::WrongState, "no")),
                };
                reply.send(answer).unwrap();
            }
            return;
        });
        assert_eq!(
            tx.call(Request::Ping).unwrap(),
            Reply::Json(serde_json::json!({"ok": true}))
        );
        server.join().unwrap();
        // The receiver is gone: calls fail cleanly instead of hanging.
        let err = tx.call(Request::Boot).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Internal);
    }

    #[test]
    fn error_chains_become_message_lists() {
        #[derive(Debug)]
        struct Inner;
        impl std::fmt::Display for Inner {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("inner cause")
            }
        }
        impl std::error::Error for Inner {}
        #[derive(Debug)]
        struct Outer(Inner);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = RequestError::from_error(ErrorKind::Internal, "vm.boot", &Outer(Inner));
        assert_eq!(e.messages, vec!["vm.boot: outer", "inner cause"]);
        assert_eq!(e.kind.http_status(), 500);
        assert_eq!(ErrorKind::WrongState.http_status(), 405);
    }
}
