//! Locking one thread down for its role: its own Landlock domain, its capabilities lowered
//! to what the role needs, its system-call filter — and a record of all three for `vm.info`
//! and the log.
//!
//! Order matters: the Landlock domain and the capability changes need system calls the
//! filter then forbids, so the filter comes last.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use caps::Capability;
use landlock::{RulesetStatus, ABI};
use serde::Serialize;

use crate::capabilities::{self, CapsError};
use crate::enforce::kernel_abi;
use crate::rights;
use crate::seccomp::{Filters, Role, SeccompError, SeccompMode};

/// The Landlock domain a thread takes when it locks itself down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadLandlock {
    /// A domain that grants no file-system right at all, no TCP port and no scope: for
    /// threads that never open anything (vCPUs, the API server).
    NoFiles,
    /// A domain whose only file-system right is making socket files (`bind` of a Unix
    /// socket): for the connector, which binds vsock sockets at paths checked against the
    /// VM's policy first ([`crate::may_bind`]), and may neither open nor remove anything.
    SocketFilesOnly,
    /// Whatever the thread has (the VMM thread takes the VM's ruleset when the VM is
    /// created, see [`crate::Sandbox::confine`]).
    Unchanged,
}

/// How one thread is confined.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadRecord {
    /// The thread's name.
    pub thread: String,
    /// Its id.
    pub tid: i32,
    /// Its role.
    pub role: Role,
    /// Its Landlock domain.
    pub landlock: String,
    /// Its system-call filter.
    pub seccomp: String,
    /// The capabilities it holds (effective and permitted).
    pub capabilities: Vec<String>,
    /// Whether it holds a domain of its own without file rights.
    #[serde(skip)]
    pub no_files: bool,
}

impl ThreadRecord {
    /// The line logged for this thread.
    pub fn log_line(&self) -> String {
        format!(
            "thread {} ({}): Landlock {}; seccomp {}; capabilities {}",
            self.thread,
            self.tid,
            self.landlock,
            self.seccomp,
            if self.capabilities.is_empty() {
                "none".to_string()
            } else {
                self.capabilities.join(" ")
            }
        )
    }
}

/// Why a thread could not lock itself down.
#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    /// Its Landlock domain could not be applied.
    #[error("thread {thread}: cannot apply its Landlock domain: {source}")]
    Landlock {
        /// The thread.
        thread: String,
        /// Why.
        source: landlock::RulesetError,
    },
    /// Its capabilities could not be lowered.
    #[error("thread {thread}: {source}")]
    Caps {
        /// The thread.
        thread: String,
        /// Why.
        source: CapsError,
    },
    /// Its filter could not be installed.
    #[error("thread {thread}: {source}")]
    Seccomp {
        /// The thread.
        thread: String,
        /// Why.
        source: SeccompError,
    },
}

static MODE: OnceLock<SeccompMode> = OnceLock::new();
static THREADS: Mutex<BTreeMap<i32, ThreadRecord>> = Mutex::new(BTreeMap::new());

/// Sets the process's seccomp mode (`--seccomp`); the first call wins.
pub fn set_seccomp_mode(mode: SeccompMode) {
    let _ = MODE.set(mode);
}

/// The process's seccomp mode ([`SeccompMode::Enforce`] unless set).
pub fn seccomp_mode() -> SeccompMode {
    MODE.get().copied().unwrap_or_default()
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn thread_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// Applies a domain that handles every file-system right but making socket files (and
/// every TCP port and scope) to the calling thread.
fn socket_files_domain() -> Result<String, landlock::RulesetError> {
    let Ok(abi_number) = kernel_abi() else {
        return Ok("unavailable (the kernel has no Landlock)".into());
    };
    let abi = ABI::from(abi_number);
    let status = rights::ruleset_handling_all_but_sockets(abi)?
        .create()?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "socket files only (own domain)".into(),
        RulesetStatus::PartiallyEnforced => {
            "socket files only (own domain, partly enforced)".into()
        }
        RulesetStatus::NotEnforced => "not enforced by this kernel".into(),
    })
}

/// Applies a domain that grants nothing on the file system (nor TCP ports, nor scopes) to
/// the calling thread. Returns how it was enforced, in the report's words.
fn no_files_domain() -> Result<String, landlock::RulesetError> {
    let Ok(abi_number) = kernel_abi() else {
        return Ok("unavailable (the kernel has no Landlock)".into());
    };
    let abi = ABI::from(abi_number);
    let status = rights::ruleset_handling_all(abi)?
        .create()?
        .restrict_self()?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "no file rights (own domain)".into(),
        RulesetStatus::PartiallyEnforced => "no file rights (own domain, partly enforced)".into(),
        RulesetStatus::NotEnforced => "not enforced by this kernel".into(),
    })
}

fn seccomp_text(filters: &Filters) -> String {
    match filters.mode() {
        SeccompMode::Off => "off (--seccomp false)".into(),
        SeccompMode::Enforce => format!(
            "{} allow-list ({} system calls), enforcing",
            filters.role().name(),
            filters.syscalls()
        ),
        SeccompMode::Log => format!(
            "{} allow-list ({} system calls), logging only",
            filters.role().name(),
            filters.syscalls()
        ),
    }
}

/// Locks the calling thread down: Landlock domain, capabilities lowered to `keep`, then
/// `filters`. Registers the result; the record stays until [`forget`] or the returned
/// guard is dropped.
pub fn lock_down(
    landlock: ThreadLandlock,
    keep: &[Capability],
    filters: &Filters,
) -> Result<Registration, LockdownError> {
    let thread = thread_name();
    let landlock_text = match landlock {
        ThreadLandlock::NoFiles => no_files_domain().map_err(|source| LockdownError::Landlock {
            thread: thread.clone(),
            source,
        })?,
        ThreadLandlock::SocketFilesOnly => {
            socket_files_domain().map_err(|source| LockdownError::Landlock {
                thread: thread.clone(),
                source,
            })?
        }
        ThreadLandlock::Unchanged => {
            "not yet confined (the VM's ruleset comes at vm.create)".into()
        }
    };
    let held = capabilities::keep_only(keep).map_err(|source| LockdownError::Caps {
        thread: thread.clone(),
        source,
    })?;
    filters.install().map_err(|source| LockdownError::Seccomp {
        thread: thread.clone(),
        source,
    })?;
    let tid = gettid();
    let record = ThreadRecord {
        thread,
        tid,
        role: filters.role(),
        landlock: landlock_text,
        seccomp: seccomp_text(filters),
        capabilities: held,
        // A domain of its own: the VM's ruleset, applied to the others, is not for it.
        no_files: landlock != ThreadLandlock::Unchanged,
    };
    log::info!("{}", record.log_line());
    THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(tid, record);
    Ok(Registration { tid })
}

/// Lowers the calling thread's capabilities to `keep` again and updates its record
/// (the VMM thread, once the VM is created and what may still happen is known).
pub fn lower_capabilities(keep: &[Capability]) -> Result<Vec<String>, CapsError> {
    let held = capabilities::keep_only(keep)?;
    if let Some(r) = THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&gettid())
    {
        r.capabilities = held.clone();
    }
    Ok(held)
}

/// Notes that the calling thread now holds the VM's Landlock ruleset.
pub(crate) fn note_vm_ruleset(text: String) {
    if let Some(r) = THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&gettid())
    {
        r.landlock = text;
    }
}

/// Threads that hold their own domain without file rights: confining them again to the
/// VM's ruleset would change nothing.
pub(crate) fn no_files_tids() -> Vec<i32> {
    THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|r| r.no_files)
        .map(|r| r.tid)
        .collect()
}

/// Every locked-down thread now, by thread id.
pub fn threads() -> Vec<ThreadRecord> {
    THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// Removes a thread's record (it has ended).
pub fn forget(tid: i32) {
    THREADS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&tid);
}

/// A locked-down thread's record, removed when this is dropped (when the thread ends).
#[must_use]
pub struct Registration {
    tid: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        forget(self.tid);
    }
}

/// Parses a capability's kernel name (for tests and reports).
pub fn capability(name: &str) -> Option<Capability> {
    capabilities::parse(name)
}
