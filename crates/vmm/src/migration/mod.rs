//! Live migration over a Unix socket (`vm.send-migration`, `vm.receive-migration`).
//!
//! The source dials the destination's socket (on the connector thread, the only one that
//! may connect; the path checked against its Landlock rules), then runs the exchange on the
//! VMM thread with plain reads and writes ([`wire`]):
//!
//! 1. `Hello` (format and version) and `Config` (the VM's configuration and its devices'
//!    slots); the destination creates the VM — confined as the configuration asks — and
//!    acknowledges, or says why it cannot.
//! 2. `Pages`, in passes while the guest runs ([`pages`]): first every page that is not
//!    zero, then those that changed, until a pass is small enough to fit the downtime asked
//!    for (or eight passes, or the timeout).
//! 3. The VM is paused, its devices held still with nothing in flight; the last changed
//!    pages and the `State` (vCPUs, devices, as in a snapshot) go; the destination restores
//!    them, resumes the VM and acknowledges.
//! 4. Only then does the source release its VM. Anything failing before — the destination
//!    gone, the socket closed, a refusal, a timeout — resumes the source VM as it was, and
//!    the call answers with one line.

pub mod pages;
pub mod wire;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The format the `Hello` message names.
pub const FORMAT: &str = "palisade-migration";
/// The protocol version.
pub const VERSION: u32 = 1;

/// The first message.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`] when sent by this Palisade.
    pub version: u32,
    /// The sender's Palisade.
    pub palisade_version: String,
}

impl Hello {
    /// This Palisade's.
    pub fn ours() -> Self {
        Hello {
            format: FORMAT.into(),
            version: VERSION,
            palisade_version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    /// Why the peer's hello cannot be answered, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("the peer speaks {:?}, not {FORMAT}", self.format));
        }
        if self.version != VERSION {
            return Err(format!(
                "the peer (Palisade {}) speaks migration version {}; this Palisade speaks {VERSION}",
                self.palisade_version, self.version
            ));
        }
        Ok(())
    }
}

/// The VM to build.
#[derive(Serialize, Deserialize)]
pub struct VmOffer {
    /// Its configuration.
    pub config: config::VmConfig,
    /// Each device's PCI slot, by id.
    pub slots: BTreeMap<String, u8>,
}

/// How the Landlock report names the socket a VM was received on: bound and accepted
/// before confinement, so it needs no rule.
pub fn held(path: &Path) -> sandbox::policy::Held {
    sandbox::policy::Held {
        path: path.to_owned(),
        how: "migration socket the VM was received on, bound and accepted before confinement"
            .into(),
        origin: sandbox::policy::Origin::Migration,
    }
}
