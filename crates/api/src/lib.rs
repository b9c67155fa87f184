//! Palisade's REST API: HTTP/1.1 on a Unix socket, shaped like Cloud Hypervisor's.
//!
//! - [`socket`]: creates (or adopts) the listening socket, refusing to take over a socket a
//!   live process still serves and never deleting anything that is not a stale socket;
//! - [`server`]: serves the API on that socket (hyper, HTTP/1.1, on a tokio current-thread
//!   runtime on one thread), turning each request into a [`vmm::control::Request`] for the VMM
//!   thread and its answer into the HTTP response;
//! - [`routes`]: the endpoints, which of them Palisade serves, and how a request maps onto the
//!   VMM's requests;
//! - [`client`]: a small blocking client, used by `palisade-remote` and by tests;
//! - [`admission`]: which connections stay when the server is full (idle and trickling ones
//!   make room for newcomers).
//!
//! The server enforces a hard limit on request bodies before reading any of them (from the
//! declared `Content-Length`, and while decoding a chunked body), a limit on request heads,
//! deadlines on idle, slow or stalled clients and a limit on connections, and it has no side
//! effect on the socket file at exit. A typical VMM binary does:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = config::ApiSocketConfig::parse("path=/tmp/palisade.sock")?;
//! let bound = api::socket::bind(&config)?;
//! let (sender, receiver) = vmm::control::request_channel()?;
//! let mut server = api::server::start(bound.try_clone_listener()?, sender)?;
//! // ... run the VMM thread with `receiver` until it exits ...
//! # drop(receiver);
//! server.stop();
//! bound.remove_file()?;
//! # Ok(())
//! # }
//! ```

pub mod admission;
pub mod client;
mod fd_stream;
pub mod routes;
pub mod server;
pub mod socket;

pub use client::{request, ClientError, ClientResponse};
pub use server::{start, ApiServer, ServerOptions};
pub use socket::{bind, BoundSocket, SocketError};

/// The prefix of every endpoint's path.
pub const API_PREFIX: &str = "/api/v1/";

/// The largest request body the server accepts (1 MiB); a larger one is refused with 413
/// before any of it is read.
pub const MAX_BODY_SIZE: usize = 1 << 20;

/// The largest request head (request line and header fields) the server accepts (16 KiB); a
/// larger one is refused with 431.
pub const MAX_HEAD_SIZE: usize = 16 << 10;
