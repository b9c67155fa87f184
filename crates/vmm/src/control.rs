//! Requests to the VMM thread and their answers: what the REST API (or the command line)
//! asks the VMM to do, and how it answers.
//!
//! Requests travel over a channel; an eventfd wakes the VMM's event loop; each request carries
//! a [`Responder`], a function the VMM thread calls with the answer. [`RequestSender::call`]
//! waits for that answer on a one-shot channel; [`RequestSender::send`] lets the caller decide
//! how to be told (the API server completes an asynchronous one-shot channel with it, so that it
//! never blocks). Error kinds map onto the REST API's status codes.

use std::sync::mpsc::{channel, sync_channel, Receiver, SendError, Sender};
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
    /// Add a virtio-blk device (`vm.add-disk`).
    AddDisk(Box<config::DiskConfig>),
    /// Add a virtio-net device (`vm.add-net`).
    AddNet(Box<config::NetConfig>),
    /// Add a virtio-fs device (`vm.add-fs`).
    AddFs(Box<config::FsConfig>),
    /// Add the vsock device (`vm.add-vsock`).
    AddVsock(Box<config::VsockConfig>),
    /// Add a virtio-pmem device (`vm.add-pmem`).
    AddPmem(Box<config::PmemConfig>),
    /// Remove a device by id (`vm.remove-device`).
    RemoveDevice(String),
    /// Press the power button (`vm.power-button`).
    PowerButton,
    /// Send every vCPU a non-maskable interrupt (`vm.nmi`).
    Nmi,
    /// Resize a disk's image (`vm.resize-disk`): id and size in bytes.
    ResizeDisk(String, u64),
    /// Write the paused guest as an ELF core (`vm.coredump`) to this `file://` URL.
    Coredump(String),
    /// Change the vCPU count, RAM size or balloon (`vm.resize`).
    Resize(Resize),
    /// Grow a memory zone (`vm.resize-zone`): its id and its new size in bytes.
    ResizeZone(String, u64),
    /// Write the paused VM to this `file:///DIR` URL (`vm.snapshot`).
    Snapshot(String),
    /// Create the VM from a snapshot (`vm.restore`).
    Restore(config::RestoreConfig),
    /// Migrate the VM to another VMM (`vm.send-migration`).
    SendMigration(config::SendMigration),
    /// Receive a VM from another VMM (`vm.receive-migration`).
    ReceiveMigration(config::ReceiveMigration),
}

/// The body of `vm.resize`: what to change, each optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resize {
    /// vCPUs the guest should have.
    pub desired_vcpus: Option<u32>,
    /// Bytes of RAM the guest should have.
    pub desired_ram: Option<u64>,
    /// Bytes the balloon should hold.
    pub desired_balloon: Option<u64>,
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
    /// The sandbox refuses it: outside the Landlock ruleset (403).
    Forbidden,
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
            ErrorKind::Forbidden => 403,
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

/// The answer given for a request the VMM will never carry out.
fn vmm_gone() -> RequestError {
    RequestError::new(ErrorKind::Internal, "the VMM is shutting down")
}

type ReplyFn = Box<dyn FnOnce(Response) + Send>;

/// Where the answer to one request goes: a function called exactly once with it.
///
/// The VMM thread answers with [`Responder::send`]. A responder dropped without answering (the
/// VMM ended with the request still queued, or dropped it) answers "the VMM is shutting down"
/// (an internal error) as it goes, so a requester is never left waiting.
pub struct Responder(Option<ReplyFn>);

impl Responder {
    /// A responder that hands the answer to `on_reply`.
    pub fn new(on_reply: impl FnOnce(Response) + Send + 'static) -> Self {
        Responder(Some(Box::new(on_reply)))
    }

    /// Answers the request. The requester may have gone away meanwhile; that is its business.
    pub fn send(mut self, response: Response) {
        if let Some(on_reply) = self.0.take() {
            on_reply(response);
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(on_reply) = self.0.take() {
            on_reply(Err(vmm_gone()));
        }
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

type Envelope = (Request, Responder);

/// The sending side, cloned into each API connection handler.
#[derive(Clone)]
pub struct RequestSender {
    tx: Sender<Envelope>,
    wake: Arc<EventFd>,
}

impl RequestSender {
    /// Sends `request` to the VMM thread and waits for its answer.
    pub fn call(&self, request: Request) -> Response {
        let (reply_tx, reply_rx) = sync_channel(1);
        self.send(request, move |response| {
            let _ = reply_tx.send(response);
        });
        reply_rx.recv().unwrap_or_else(|_| Err(vmm_gone()))
    }

    /// Sends `request` to the VMM thread without waiting. `on_reply` is called exactly once
    /// with the answer: on the VMM thread when it answers, or at once on this thread when the
    /// VMM is gone (with "the VMM is shutting down"). It must not block: the VMM's event loop
    /// waits for it.
    pub fn send(&self, request: Request, on_reply: impl FnOnce(Response) + Send + 'static) {
        match self.tx.send((request, Responder::new(on_reply))) {
            // An eventfd write only fails when its counter would overflow, which one write per
            // request cannot make happen; the request is queued either way.
            Ok(()) => {
                let _ = self.wake.write(1);
            }
            // Dropping the responder answers that the VMM is gone.
            Err(SendError(envelope)) => drop(envelope),
        }
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

    /// Takes every pending request, each with the [`Responder`] to answer it through.
    pub fn drain(&self) -> Vec<(Request, Responder)> {
        // Consume the wake-ups first so a request sent after this read wakes us again.
        let _ = self.wake.read();
        self.rx.try_iter().collect()
    }
}

/// A connected sender/receiver pair.
pub fn request_channel() -> std::io::Result<(RequestSender, RequestReceiver)> {
    let (tx, rx) = channel();
    let wake = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
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
                reply.send(answer);
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
    fn a_reply_can_be_delivered_through_a_callback() {
        let (tx, rx) = request_channel().unwrap();
        let (got_tx, got_rx) = channel();
        let on_reply = move |tag: &'static str| {
            let got_tx = got_tx.clone();
            move |response: Response| {
                let thread = std::thread::current().name().map(str::to_string);
                got_tx.send((tag, thread, response)).unwrap();
            }
        };
        // Queued before the VMM thread even runs: nothing blocks the sender.
        tx.send(Request::Ping, on_reply("ping"));
        tx.send(Request::Boot, on_reply("boot"));
        tx.send(Request::Info, on_reply("info"));
        let vmm = std::thread::Builder::new()
            .name("vmm".into())
            .spawn(move || {
                let mut left = 3;
                while left > 0 {
                    for (request, reply) in rx.drain() {
                        left -= 1;
                        match request {
                            Request::Ping => {
                                reply.send(Ok(Reply::Json(serde_json::json!({"ok": true}))))
                            }
                            Request::Boot => reply.send(Ok(Reply::Done)),
                            // Dropped without an answer.
                            _ => drop(reply),
                        }
                    }
                    std::thread::yield_now();
                }
            })
            .unwrap();
        let mut answers: Vec<_> = (0..3).map(|_| got_rx.recv().unwrap()).collect();
        answers.sort_by_key(|(tag, _, _)| *tag);
        let vmm_thread = Some("vmm".to_string());
        assert_eq!(answers[0].0, "boot");
        assert_eq!(
            (&answers[0].1, &answers[0].2),
            (&vmm_thread, &Ok(Reply::Done))
        );
        assert_eq!(answers[1].0, "info");
        assert_eq!(answers[1].1, vmm_thread);
        let dropped = answers[1].2.as_ref().unwrap_err();
        assert_eq!(dropped.kind, ErrorKind::Internal);
        assert_eq!(dropped.messages, vec!["the VMM is shutting down"]);
        assert_eq!(answers[2].0, "ping");
        assert_eq!(
            answers[2].2,
            Ok(Reply::Json(serde_json::json!({"ok": true})))
        );
        vmm.join().unwrap();

        // The VMM is gone: the callback is called at once, on the sending thread.
        let here = std::thread::current().name().map(str::to_string);
        tx.send(Request::Pause, on_reply("late"));
        let (tag, thread, response) = got_rx.try_recv().unwrap();
        assert_eq!((tag, thread), ("late", here));
        assert_eq!(response.unwrap_err().kind, ErrorKind::Internal);
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
