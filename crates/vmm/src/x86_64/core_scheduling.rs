//! `cpus.core_scheduling`: which threads may share a physical core's hyper-threads (Linux
//! core scheduling, `prctl(PR_SCHED_CORE)`), so that a guest's vCPUs never run beside
//! another tenant's code on the same core.
//!
//! `Vm` (the default) gives the whole VMM process one cookie when the VM boots — its vCPUs
//! may pair with each other and with its own threads, never with other processes; vCPUs
//! added later inherit it. `Vcpu` gives every vCPU thread a cookie of its own. `Off` leaves
//! scheduling alone. A kernel without core scheduling (or a host without SMT) refuses the
//! call: the VM runs anyway, and the log says so once.

use std::sync::atomic::{AtomicBool, Ordering};

use config::CoreScheduling;

/// `PIDTYPE_PID` and `PIDTYPE_TGID`: one thread, or its whole thread group.
const SCOPE_THREAD: libc::c_ulong = 0;
const SCOPE_PROCESS: libc::c_ulong = 1;

static UNAVAILABLE_LOGGED: AtomicBool = AtomicBool::new(false);

fn create_cookie(tid: libc::pid_t, scope: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments only; no memory is passed.
    let r = unsafe {
        libc::prctl(
            libc::PR_SCHED_CORE,
            libc::PR_SCHED_CORE_CREATE as libc::c_ulong,
            tid as libc::c_ulong,
            scope,
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn report(result: std::io::Result<()>, what: &str) {
    match result {
        Ok(()) => log::debug!("core scheduling: {what} has a cookie of its own"),
        Err(e) => {
            if !UNAVAILABLE_LOGGED.swap(true, Ordering::Relaxed) {
                log::info!(
                    "core scheduling is not available on this host ({e}): vCPUs may share a \
                     core with other processes"
                );
            }
        }
    }
}

/// At boot: the process's cookie for `Vm`.
pub fn at_boot(mode: CoreScheduling) {
    if mode == CoreScheduling::Vm {
        report(create_cookie(0, SCOPE_PROCESS), "the VMM process");
    }
}

/// For vCPU thread `tid` once it runs: its own cookie for `Vcpu`.
pub fn for_vcpu(mode: CoreScheduling, tid: libc::pid_t) {
    if mode == CoreScheduling::Vcpu {
        report(create_cookie(tid, SCOPE_THREAD), "a vCPU thread");
    }
}
