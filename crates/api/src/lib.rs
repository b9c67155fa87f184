//! Palisade's REST API: HTTP/1.1 on a Unix socket, shaped like Cloud Hypervisor's.
//!
//! - [`socket`]: creates (or adopts) the listening socket, refusing to take over a socket a
//!   live process still serves and never deleting anything that is not a stale socket;
//! - [`server`]: serves the API on that socket, turning each request into a
//!   [`vmm::control::Request`] for the VMM thread and its answer into the HTTP response;
//! - [`routes`]: the endpoints, which of them Palisade serves, and how a request maps onto the
//!   VMM's requests;
//! - [`client`]: a small blocking client, used by `palisade-remote` and by tests.
//!
//! The HTTP layer is written here rather than taken from a crate: the API needs a hard limit on
//! request bodies that is enforced before anything is read, deadlines on slow or stalled
//! clients, and no side effect on the socket file at exit. A typical VMM binary does:
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

pub mod client;
mod http;
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
