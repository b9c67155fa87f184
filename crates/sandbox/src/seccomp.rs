//! System-call filters, one allow-list per thread role, built with `seccompiler`.
//!
//! Landlock mediates paths, TCP and scopes; the filters close what it does not see: new
//! sockets of any family (raw, packet, netlink, MPTCP, AF_ALG…), `connect()` to named Unix
//! sockets (not mediated by Landlock before ABI 9), `execve`, executable mappings, metadata
//! changes through held descriptors (`fchmod`, `fchown`, `fsetxattr`), `O_TMPFILE`, and
//! every administrative call (`mount`, `chroot`, `sethostname`…).
//!
//! A call outside a thread's list raises `SIGSYS` (`SECCOMP_RET_TRAP`); the handler writes
//! one line naming the thread and the call and ends the process, so a violation is never a
//! silent hang. In [`SeccompMode::Log`] the kernel logs the call and lets it through instead.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use syscalls::Sysno;

use crate::allowlist;

/// What the filters do with a call outside a thread's allow-list (`--seccomp`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// Stop the VMM, naming the thread and the call (`--seccomp true`, the default).
    #[default]
    Enforce,
    /// Let it through and have the kernel log it (`--seccomp log`).
    Log,
    /// Install no filter (`--seccomp false`).
    Off,
}

impl SeccompMode {
    /// Parses `true`, `false` or `log`, as Cloud Hypervisor's `--seccomp` does.
    pub fn parse(s: &str) -> Option<SeccompMode> {
        match s {
            "true" => Some(SeccompMode::Enforce),
            "log" => Some(SeccompMode::Log),
            "false" => Some(SeccompMode::Off),
            _ => None,
        }
    }

    /// The value of `--seccomp` that selects this mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SeccompMode::Enforce => "true",
            SeccompMode::Log => "log",
            SeccompMode::Off => "false",
        }
    }
}

/// The kind of work a thread does, which decides its allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The VMM thread: control, device queues, hot-plug, starting vCPUs.
    Vmm,
    /// The API server thread.
    Api,
    /// A vCPU thread.
    Vcpu,
    /// A device's worker thread: its queues and host descriptors.
    Device,
    /// A vsock device's worker thread: a device's, plus accepting host clients on its
    /// bound socket and watching their connections.
    Vsock,
    /// The janitor process.
    Janitor,
    /// The connector thread: connects to the Unix sockets of vhost-user backends and holds
    /// their first exchange; nothing else.
    Connector,
}

impl Role {
    /// The role's name in reports and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Vmm => "vmm",
            Role::Api => "api",
            Role::Vcpu => "vcpu",
            Role::Device => "device",
            Role::Vsock => "vsock",
            Role::Janitor => "janitor",
            Role::Connector => "connector",
        }
    }
}

/// What a role's list needs to know about the process it runs in.
#[derive(Clone, Debug, Default)]
pub struct FilterContext {
    /// `ioctl` requests the thread may make (KVM's, a tap's, a terminal's…).
    pub ioctls: Vec<u64>,
    /// The only descriptor the thread may send or receive socket messages on (the
    /// janitor's channel), if any.
    pub message_fd: Option<i32>,
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused the rules or the kernel refused the filter.
    #[error("seccomp filter for the {role} thread: {source}")]
    Filter {
        /// The role.
        role: &'static str,
        /// Why.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("cannot install the seccomp violation handler: {0}")]
    Handler(std::io::Error),
}

/// A system-call argument a condition looks at, by index.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    /// An argument the kernel reads as an `int` or `unsigned int` (descriptors, flags, ioctl
    /// requests, signal numbers): its low 32 bits are compared, which halves the filter's
    /// code and matches what the kernel uses.
    Int(u8),
    /// A pointer or other 64-bit argument: compared whole.
    Pointer(u8),
}

/// The rules of one allow-list, by system call: an empty list allows the call whatever its
/// arguments; otherwise the call is allowed when any rule (all of its conditions) matches.
#[derive(Default)]
pub struct Rules(BTreeMap<i64, Vec<SeccompRule>>);

impl Rules {
    /// Allows `calls` whatever their arguments.
    pub fn allow(&mut self, calls: &[Sysno]) -> &mut Self {
        for call in calls {
            self.0.insert(call.id() as i64, Vec::new());
        }
        self
    }

    /// Allows `call` when every condition `(argument, operation, value)` holds; several
    /// calls of this add alternatives.
    pub fn allow_if(&mut self, call: Sysno, conditions: &[(Arg, SeccompCmpOp, u64)]) -> &mut Self {
        let conditions = conditions
            .iter()
            .map(|(arg, op, value)| {
                let (index, len) = match arg {
                    Arg::Int(i) => (*i, SeccompCmpArgLen::Dword),
                    Arg::Pointer(i) => (*i, SeccompCmpArgLen::Qword),
                };
                // Only programming errors (an index above 5) can fail here.
                SeccompCondition::new(index, len, op.clone(), *value)
                    .expect("valid seccomp condition")
            })
            .collect();
        let rule = SeccompRule::new(conditions).expect("a rule with conditions");
        self.0.entry(call.id() as i64).or_default().push(rule);
        self
    }

    /// Allows `call` when its `int`-sized argument `arg` is one of `values`.
    pub fn allow_values(&mut self, call: Sysno, arg: u8, values: &[u64]) -> &mut Self {
        for v in values {
            self.allow_if(call, &[(Arg::Int(arg), SeccompCmpOp::Eq, *v)]);
        }
        self
    }

    /// How many system calls the list allows (in some form).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the list allows nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the list names `call`.
    pub fn names(&self, call: Sysno) -> bool {
        self.0.contains_key(&(call.id() as i64))
    }
}

/// A role's compiled filters, ready to install on a thread.
pub struct Filters {
    role: Role,
    mode: SeccompMode,
    programs: Vec<BpfProgram>,
    syscalls: usize,
}

impl Filters {
    /// The role they are for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// How many system calls the allow-list names.
    pub fn syscalls(&self) -> usize {
        self.syscalls
    }

    /// The mode they enforce.
    pub fn mode(&self) -> SeccompMode {
        self.mode
    }

    /// Installs the filters on the calling thread (and the threads it starts later), for good.
    pub fn install(&self) -> Result<(), SeccompError> {
        if self.mode == SeccompMode::Off {
            return Ok(());
        }
        install_violation_handler()?;
        for program in &self.programs {
            seccompiler::apply_filter(program).map_err(|source| SeccompError::Filter {
                role: self.role.name(),
                source,
            })?;
        }
        set_thread_role(self.role);
        Ok(())
    }
}

/// Builds the filters of `role` in `mode`.
pub fn build(role: Role, mode: SeccompMode, ctx: &FilterContext) -> Result<Filters, SeccompError> {
    let err = |source| SeccompError::Filter {
        role: role.name(),
        source,
    };
    let rules = allowlist::rules(role, ctx);
    let syscalls = rules.len();
    let has_clone3 = rules.names(Sysno::clone3);
    if mode == SeccompMode::Off {
        return Ok(Filters {
            role,
            mode,
            programs: Vec::new(),
            syscalls,
        });
    }
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let arch = TargetArch::x86_64;
    let main = SeccompFilter::new(rules.0, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| err(seccompiler::Error::Backend(e)))?;
    let mut programs =
        vec![BpfProgram::try_from(main).map_err(|e| err(seccompiler::Error::Backend(e)))?];
    if has_clone3 {
        // clone3 passes its flags in memory, out of a filter's reach: the C library is told
        // it does not exist and falls back to clone, whose flags the allow-list checks.
        let mut nosys = BTreeMap::new();
        nosys.insert(Sysno::clone3.id() as i64, Vec::new());
        let filter = SeccompFilter::new(
            nosys,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(|e| err(seccompiler::Error::Backend(e)))?;
        programs
            .push(BpfProgram::try_from(filter).map_err(|e| err(seccompiler::Error::Backend(e)))?);
    }
    Ok(Filters {
        role,
        mode,
        programs,
        syscalls,
    })
}

thread_local! {
    // This thread's role and name, for the violation message: the signal handler may make
    // no call the thread's own filter refuses, so it cannot ask the kernel for the name.
    static THREAD_ROLE: Cell<Option<Role>> = const { Cell::new(None) };
    static THREAD_NAME: Cell<[u8; 16]> = const { Cell::new([0; 16]) };
}

fn set_thread_role(role: Role) {
    THREAD_ROLE.with(|r| r.set(Some(role)));
    let mut name = [0u8; 16];
    let current = std::thread::current();
    let given = current.name().unwrap_or("?").as_bytes();
    let n = given.len().min(15);
    name[..n].copy_from_slice(&given[..n]);
    THREAD_NAME.with(|t| t.set(name));
}

/// Where violation messages go besides standard error (the log file), or -1.
static LOG_FD: AtomicI32 = AtomicI32::new(-1);

/// Sends violation messages to `fd` too (the `--log-file`); the descriptor must stay open.
pub fn set_log_fd(fd: i32) {
    LOG_FD.store(fd, Ordering::Release);
}

fn install_violation_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        // SAFETY: sigaction is plain data; the fields set below make a valid SA_SIGINFO action.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_violation as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised and the handler is async-signal-safe.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    });
    result
}

/// Appends `s` to `buf` at `*len`, as far as it fits.
fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
    let n = s.len().min(buf.len() - *len);
    buf[*len..*len + n].copy_from_slice(&s[..n]);
    *len += n;
}

fn push_num(buf: &mut [u8], len: &mut usize, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    push(buf, len, &digits[i..]);
}

/// The violation line for a call by `thread` of `role`: what was called, by whom, what now.
fn violation_line(buf: &mut [u8], thread: &[u8], role: Option<Role>, nr: i64) -> usize {
    let mut len = 0;
    push(buf, &mut len, b"palisade: seccomp: thread ");
    push(buf, &mut len, thread);
    if let Some(role) = role {
        push(buf, &mut len, b" (");
        push(buf, &mut len, role.name().as_bytes());
        push(buf, &mut len, b" allow-list)");
    }
    push(buf, &mut len, b" made the forbidden system call ");
    let name = usize::try_from(nr).ok().and_then(Sysno::new);
    match name {
        Some(s) => push(buf, &mut len, s.name().as_bytes()),
        None => push(buf, &mut len, b"unknown"),
    }
    push(buf, &mut len, b" (");
    push_num(buf, &mut len, nr as u64);
    push(
        buf,
        &mut len,
        b"); stopping the VMM (run with --seccomp log to log such calls instead, and report it if \
          this was not an attack)\n",
    );
    len
}

extern "C" fn on_violation(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // siginfo's SIGSYS fields: the call's address (8 bytes) at offset 16, then its number.
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers; offset 24 is inside it.
    let nr = unsafe { std::ptr::read_unaligned((info as *const u8).add(24).cast::<i32>()) };
    let name = THREAD_NAME.with(|t| t.get());
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    let thread: &[u8] = if end == 0 { b"?" } else { &name[..end] };
    let role = THREAD_ROLE.with(|r| r.get());
    let mut line = [0u8; 320];
    let len = violation_line(&mut line, thread, role, nr as i64);
    for fd in [libc::STDERR_FILENO, LOG_FD.load(Ordering::Acquire)] {
        if fd >= 0 {
            // SAFETY: writing a local buffer; write is in every allow-list.
            unsafe { libc::write(fd, line.as_ptr().cast(), len) };
        }
    }
    // SAFETY: ending the process at once; exit_group is in every allow-list.
    unsafe { libc::syscall(libc::SYS_exit_group, 1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_like_cloud_hypervisor() {
        assert_eq!(SeccompMode::parse("true"), Some(SeccompMode::Enforce));
        assert_eq!(SeccompMode::parse("false"), Some(SeccompMode::Off));
        assert_eq!(SeccompMode::parse("log"), Some(SeccompMode::Log));
        assert_eq!(SeccompMode::parse("on"), None);
        for m in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(SeccompMode::parse(m.as_str()), Some(m));
        }
    }

    #[test]
    fn the_violation_line_names_thread_role_and_call() {
        let mut buf = [0u8; 320];
        let n = violation_line(&mut buf, b"vcpu0", Some(Role::Vcpu), 41);
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("palisade: seccomp: thread vcpu0 (vcpu allow-list) made the forbidden system call socket (41); stopping the VMM"), "{text}");
        assert!(text.ends_with('\n') && text.lines().count() == 1);
        let n = violation_line(&mut buf, b"x", None, 100_000);
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .contains("unknown (100000)"));
    }

    #[test]
    fn every_role_builds_in_every_mode() {
        let ctx = FilterContext {
            ioctls: vec![0xae80],
            message_fd: Some(3),
        };
        for role in [
            Role::Vmm,
            Role::Api,
            Role::Vcpu,
            Role::Device,
            Role::Vsock,
            Role::Janitor,
            Role::Connector,
        ] {
            for mode in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
                let f = build(role, mode, &ctx).unwrap();
                assert!(f.syscalls() > 5);
                assert_eq!(f.programs.is_empty(), mode == SeccompMode::Off);
            }
        }
    }

    // Denials end the process, so they are tested end to end (tests/sandbox.rs).
    #[test]
    fn an_installed_filter_lets_the_allowed_calls_through() {
        let ctx = FilterContext::default();
        let filters = build(Role::Vcpu, SeccompMode::Enforce, &ctx).unwrap();
        let r = std::thread::spawn(move || {
            filters.install().unwrap();
            // Allocation, a futex, a write to a pipe-like descriptor and thread exit are all
            // on the vCPU list.
            let v: Vec<u8> = vec![7; 1 << 20];
            let m = std::sync::Mutex::new(v.len());
            let n = *m.lock().unwrap();
            // SAFETY: writing zero bytes to standard error.
            unsafe { libc::write(2, std::ptr::null(), 0) };
            n
        })
        .join()
        .unwrap();
        assert_eq!(r, 1 << 20);
    }
}
