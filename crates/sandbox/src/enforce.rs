//! Applying a policy: the Landlock ruleset, its enforcement on every thread, and what was
//! enforced.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use landlock::{
    CompatLevel, Compatible, RestrictSelfAttr, Ruleset, RulesetAttr, RulesetCreated, RulesetStatus,
    ABI,
};
use serde::Serialize;

use crate::policy::{Access, Held, Origin, Policy, Rule};
use crate::rights::{self, PathKind};
use crate::threads::{self, TaskList, ThreadError};

/// Why confinement could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The kernel has no usable Landlock.
    #[error("Landlock was requested but {0}; refusing to run the VM unconfined")]
    Unavailable(String),
    /// A rule's path cannot be used.
    #[error("landlock rule path={},access={}: {source}", path.display(), access.as_str())]
    RulePath {
        /// The rule's path.
        path: PathBuf,
        /// The rule's access.
        access: Access,
        /// Why.
        source: std::io::Error,
    },
    /// The ruleset could not be built or applied.
    #[error("cannot apply the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// Some thread could not be confined; the process is partly confined and must not go on.
    #[error("{0}; the VMM is only partly confined")]
    Thread(#[from] ThreadError),
}

/// A rule as enforced: the policy rule and the Landlock rights it became.
#[derive(Clone, Debug, Serialize)]
pub struct EnforcedRule {
    /// The rule.
    #[serde(flatten)]
    pub rule: Rule,
    /// The Landlock rights granted beneath its path.
    pub rights: Vec<String>,
}

/// The rights the ruleset handles (denied unless a rule grants them).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Handled {
    /// File-system rights.
    pub fs: Vec<String>,
    /// Network rights (no port is allowed).
    pub net: Vec<String>,
    /// Scopes (no abstract Unix socket or signal outside the sandbox).
    pub scopes: Vec<String>,
}

/// What confinement enforced, for `vm.info` and the log.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The kernel's Landlock ABI.
    pub abi: i32,
    /// `full`, or `partial` on a kernel older than Palisade's policy needs.
    pub enforcement: &'static str,
    /// What the policy asks for but this kernel cannot enforce.
    pub not_enforced: Vec<String>,
    /// Rights handled by the ruleset.
    pub handled: Handled,
    /// What may still be opened.
    pub rules: Vec<EnforcedRule>,
    /// What is held open instead of granted.
    pub held: Vec<Held>,
    /// Threads confined.
    pub threads: usize,
    /// How threads were confined: the kernel's all-threads flag, or each thread itself.
    pub method: &'static str,
    /// Landlock layers applied to the process so far (one per confined VM creation).
    pub layers: usize,
}

impl Report {
    /// The lines logged once when confinement is applied.
    pub fn log_lines(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "Landlock ABI {} enforced ({}) on {} threads ({}); {} rules, {} items held open",
            self.abi,
            self.enforcement,
            self.threads,
            self.method,
            self.rules.len(),
            self.held.len()
        )];
        lines.push(format!(
            "Landlock handles fs [{}], net [{}], scopes [{}]",
            self.handled.fs.join(" "),
            self.handled.net.join(" "),
            self.handled.scopes.join(" ")
        ));
        for r in &self.rules {
            lines.push(format!(
                "Landlock rule: {} access={} ({}) from {}",
                r.rule.path.display(),
                r.rule.access.as_str(),
                r.rights.join(" "),
                origin_text(&r.rule.origin)
            ));
        }
        for h in &self.held {
            lines.push(format!(
                "Landlock: no rule needed for {} ({}): {}",
                h.path.display(),
                origin_text(&h.origin),
                h.how
            ));
        }
        lines
    }
}

/// A short human description of an origin.
pub fn origin_text(origin: &Origin) -> String {
    match origin {
        Origin::Kernel => "kernel".into(),
        Origin::Initramfs => "initramfs".into(),
        Origin::Serial => "serial".into(),
        Origin::Console => "console".into(),
        Origin::Disk { id } => format!("disk {id}"),
        Origin::Rng => "rng".into(),
        Origin::MemoryZone { id } => format!("memory zone {id}"),
        Origin::Pmem { id } => format!("pmem {id}"),
        Origin::Fs { id } => format!("fs {id}"),
        Origin::Vsock { id } => format!("vsock {id}"),
        Origin::Snapshot => "snapshot".into(),
        Origin::Migration => "migration".into(),
        Origin::Net { id } => format!("net {id}"),
        Origin::NetHotplug => "network hot-plug".into(),
        Origin::UserRule { index } => format!("landlock rule #{index}"),
    }
}

// The confinement in force, process-wide (Landlock cannot be undone).
static CONFINED: Mutex<Option<Report>> = Mutex::new(None);

/// The confinement in force, if the process is confined.
pub fn current() -> Option<Report> {
    CONFINED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The kernel's Landlock ABI version, or why there is none.
pub fn kernel_abi() -> Result<i32, String> {
    // SAFETY: the version query takes no attribute pointer and has no side effect.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    if v >= 1 {
        return Ok(v as i32);
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => "Landlock is built into this kernel but disabled (add landlock to the lsm= boot parameter)".into(),
        Some(libc::ENOSYS) => "this kernel has no Landlock (it needs Linux 5.13 or later built with CONFIG_SECURITY_LANDLOCK)".into(),
        _ => format!("the Landlock version query failed: {e}"),
    })
}

/// `struct landlock_path_beneath_attr` of the kernel's UAPI.
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// Adds a rule granting `rights` beneath `anchor` to the ruleset `ruleset`.
fn add_path_rule(
    ruleset: &OwnedFd,
    anchor: &OwnedFd,
    rights: landlock::BitFlags<landlock::AccessFs>,
) -> std::io::Result<()> {
    let attr = PathBeneathAttr {
        allowed_access: rights.bits(),
        parent_fd: anchor.as_raw_fd(),
    };
    // SAFETY: `attr` is a valid landlock_path_beneath_attr that outlives the call; both
    // descriptors are open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `path` as a Landlock rule anchor (`O_PATH`) and tells what kind of file it is,
/// with one path lookup.
fn open_rule_path(path: &Path) -> std::io::Result<(OwnedFd, PathKind)> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: `c_path` is NUL-terminated; O_PATH needs no mode argument.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: stat is plain data that fstat fills in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` writable.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => PathKind::Directory {
            under_dev: path.starts_with("/dev"),
        },
        libc::S_IFCHR | libc::S_IFBLK => PathKind::Device,
        _ => PathKind::File,
    };
    Ok((fd, kind))
}

/// What confinement needs from before any thread starts: a handle on the thread list.
pub struct Sandbox {
    tasks: TaskList,
}

impl Sandbox {
    /// Prepares confinement; call at start-up, while `/proc` can still be opened.
    pub fn prepare() -> std::io::Result<Sandbox> {
        threads::install_handler()?;
        Ok(Sandbox {
            tasks: TaskList::open()?,
        })
    }

    /// Confines every thread of the process to `policy`, for good.
    pub fn confine(&self, policy: &Policy) -> Result<Report, SandboxError> {
        let abi_number = kernel_abi().map_err(SandboxError::Unavailable)?;
        let abi = ABI::from(abi_number);
        let fs = rights::handled_fs(abi);
        let net = rights::handled_net(abi);
        let scopes = rights::handled_scopes(abi);

        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(fs)?;
        if !net.is_empty() {
            ruleset = ruleset.handle_access(net)?;
        }
        if !scopes.is_empty() {
            ruleset = ruleset.scope(scopes)?;
        }
        let created: RulesetCreated = ruleset.create()?;
        // Rules go straight to the kernel through a duplicate of the ruleset's descriptor:
        // the crate's own path re-inspects each file, which doubles the cost of large
        // policies, and the rights here are already exact for the file's kind and the ABI.
        let ruleset_fd: Option<OwnedFd> = created
            .try_clone()
            .map_err(|e| SandboxError::Thread(ThreadError::Io(e)))?
            .into();
        let ruleset_fd = ruleset_fd.ok_or_else(|| {
            SandboxError::Unavailable("the Landlock ruleset could not be created".into())
        })?;
        let mut enforced = Vec::with_capacity(policy.rules.len());
        for rule in &policy.rules {
            let rule_error = |source| SandboxError::RulePath {
                path: rule.path.clone(),
                access: rule.access,
                source,
            };
            let (fd, kind) = open_rule_path(&rule.path).map_err(rule_error)?;
            let granted = rights::granted(rule.access, kind) & fs;
            add_path_rule(&ruleset_fd, &fd, granted).map_err(rule_error)?;
            enforced.push(EnforcedRule {
                rule: rule.clone(),
                rights: rights::fs_names(granted),
            });
        }

        let (status, threads, method) = if abi_number >= 8 {
            let status = created.all_threads(true)?.restrict_self()?;
            let count = self.tasks.tids().map(|t| t.len()).unwrap_or(1);
            (status.ruleset, count, "all-threads flag")
        } else {
            // Threads already in a domain of their own without file rights stay as they are:
            // the VM's ruleset could only add rights they must not have.
            let skip = crate::lockdown::no_files_tids();
            let others = threads::confine_others(ruleset_fd.as_raw_fd(), &self.tasks, &skip)?;
            let status = created.restrict_self()?;
            (
                status.ruleset,
                others + skip.len() + 1,
                "each thread confined itself",
            )
        };
        if status == RulesetStatus::NotEnforced {
            return Err(SandboxError::Unavailable(
                "the kernel enforced none of the ruleset".into(),
            ));
        }
        crate::lockdown::note_vm_ruleset(format!("the VM's ruleset ({} rules)", enforced.len()));
        let not_enforced = rights::not_enforced(abi);
        let mut state = CONFINED.lock().unwrap_or_else(|e| e.into_inner());
        let layers = state.as_ref().map_or(0, |r| r.layers) + 1;
        let report = Report {
            abi: abi_number,
            enforcement: if not_enforced.is_empty() && status == RulesetStatus::FullyEnforced {
                "full"
            } else {
                "partial"
            },
            not_enforced,
            handled: Handled {
                fs: rights::fs_names(fs),
                net: rights::net_names(net),
                scopes: rights::scope_names(scopes),
            },
            rules: enforced,
            held: policy.held.clone(),
            threads,
            method,
            layers,
        };
        *state = Some(report.clone());
        Ok(report)
    }
}

/// Whether the confined VMM may connect to the Unix socket at `path`: always before
/// confinement; after it, only to a socket under one of the rules (Landlock itself does not
/// mediate connecting on the kernels Palisade supports, so the connector thread asks this
/// before every connection). The error is one line with the rule that would allow it.
pub fn may_connect(path: &Path) -> Result<(), String> {
    let Some(report) = current() else {
        return Ok(());
    };
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if under_writable_rule(&report, &target) {
        return Ok(());
    }
    Err(format!(
        "socket {} is outside the Landlock ruleset, and the confined VMM connects only to \
         sockets under its rules; allow it with {}",
        path.display(),
        crate::policy::suggested_rule(path, Access::ReadWrite)
    ))
}

/// Whether `target` (resolved) lies under a rule with write access.
fn under_writable_rule(report: &Report, target: &Path) -> bool {
    let resolved = |rule: &Path| std::fs::canonicalize(rule).unwrap_or_else(|_| rule.to_path_buf());
    report
        .rules
        .iter()
        .any(|r| target.starts_with(resolved(&r.rule.path)) && r.rule.access.writes())
}

/// Whether the VMM may bind a Unix socket at `path` (a hot-plugged vsock device's): always
/// before confinement; after it, only at a path under a rule with write access. The
/// connector binds it, whose domain lets it make socket files anywhere: this is the check
/// that keeps it to the rules. The error is one line with the rule that would allow it.
pub fn may_bind(path: &Path) -> Result<(), String> {
    let Some(report) = current() else {
        return Ok(());
    };
    let parent = path.parent().unwrap_or(Path::new("/"));
    let dir = std::fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
    let target = match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    };
    if under_writable_rule(&report, &target) {
        return Ok(());
    }
    Err(format!(
        "socket {} is outside the Landlock ruleset, and the confined VMM binds sockets only \
         under its rules; allow it with {}",
        path.display(),
        crate::policy::suggested_rule(path, Access::ReadWrite)
    ))
}

/// If the process is confined and Landlock is why `path` cannot be opened with `access`, the
/// one-line explanation for the user: the path (and what it resolves to, for a symbolic
/// link), which right is missing and from which rule, and the `--landlock-rules` that would
/// allow it. `None` when the ruleset allows it (the refusal came from elsewhere).
pub fn explain_denial(path: &Path, access: Access) -> Option<String> {
    let report = current()?;
    // Landlock judges the file a path resolves to: so must the explanation.
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let resolved = |rule: &Path| std::fs::canonicalize(rule).unwrap_or_else(|_| rule.to_path_buf());
    let under: Vec<&EnforcedRule> = report
        .rules
        .iter()
        .filter(|r| target.starts_with(resolved(&r.rule.path)))
        .collect();
    if under.iter().any(|r| r.rule.access.covers(access)) {
        return None;
    }
    let shown = if target != path {
        format!(
            "{} (which resolves to {})",
            path.display(),
            target.display()
        )
    } else {
        path.display().to_string()
    };
    let fix = crate::policy::suggested_rule(&target, access);
    Some(match under.first() {
        Some(r) => {
            let missing = if access.writes() && !r.rule.access.writes() {
                "writing"
            } else {
                "reading"
            };
            format!(
                "{shown}: Permission denied: the Landlock rule path={},access={} ({}) does not \
                 allow {missing}, and a running Palisade cannot widen its ruleset; restart it \
                 with {fix} to allow it",
                r.rule.path.display(),
                r.rule.access.as_str(),
                origin_text(&r.rule.origin),
            )
        }
        None => format!(
            "{shown}: Permission denied: the path is outside the Landlock ruleset applied when \
             the VM was created, and a running Palisade cannot widen it; restart Palisade with \
             {fix} to allow it"
        ),
    })
}
