//! Palisade's self-confinement with Landlock.
//!
//! When a VM is created with Landlock on, Palisade computes a [`policy::Policy`] from its
//! configuration (a pure function: what is held open, what may still be opened), turns it
//! into a Landlock ruleset that handles every right the kernel knows, and confines every
//! thread of the process to it ([`enforce::Sandbox::confine`]). The [`enforce::Report`] says
//! what was enforced. [`janitor`] removes the API socket at exit without giving the confined
//! VMM the right to delete files.
//!
//! Landlock is one layer of three: every thread also locks itself down for its role
//! ([`lockdown`]) with its own Landlock domain, the capabilities the role needs
//! ([`capabilities`]) and a system-call filter ([`seccomp`], lists in [`allowlist`]).

pub mod allowlist;
pub mod capabilities;
pub mod enforce;
pub mod janitor;
pub mod libc_warmup;
pub mod lockdown;
pub mod policy;
pub mod rights;
pub mod seccomp;
pub mod threads;

pub use caps::Capability;
pub use enforce::{current, explain_denial, may_bind, may_connect, Report, Sandbox, SandboxError};
pub use policy::{Access, Origin, Policy};
pub use seccomp::{Role, SeccompMode};
