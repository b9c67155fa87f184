//! vCPU threads: each runs `KVM_RUN` in a loop and dispatches port and MMIO exits to the buses.
//!
//! The VMM steers them through a shared [`VcpuControl`]: run, pause (park on a condition
//! variable) or stop. A thread blocked inside `KVM_RUN` is pulled out by a signal whose
//! handler sets the `immediate_exit` flag of that thread's `kvm_run` page, so a kick sent just
//! before the thread enters the kernel is not lost.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use devices::ioapic::IoApic;
use devices::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::{debug, trace};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::snapshot::vcpu_state::VcpuState;

/// What the VMM wants the vCPUs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Desired {
    Run = 0,
    Pause = 1,
    Stop = 2,
}

/// Shared steering of all vCPUs of one running machine.
pub struct VcpuControl {
    desired: AtomicU8,
    parked: Mutex<usize>,
    changed: Condvar,
    /// Bumped for each `vm.nmi`: a vCPU that sees it change injects an NMI into itself
    /// (`KVM_NMI` is a vCPU's own call, made between runs).
    nmis: std::sync::atomic::AtomicU32,
    /// The registers each vCPU had when it last parked (for `vm.coredump`).
    parked_registers: Mutex<std::collections::BTreeMap<u8, crate::coredump::VcpuRegisters>>,
    /// One bit per vCPU index: that vCPU's thread must end (it was unplugged), whatever the
    /// others do.
    retiring: [AtomicU64; 4],
    /// Bumped to have every parked vCPU read its whole state (a snapshot).
    capture_round: AtomicU32,
    /// What each vCPU read in the last round.
    captured: Mutex<BTreeMap<u8, Result<VcpuState, String>>>,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            desired: AtomicU8::new(Desired::Run as u8),
            parked: Mutex::new(0),
            changed: Condvar::new(),
            nmis: std::sync::atomic::AtomicU32::new(0),
            parked_registers: Mutex::default(),
            retiring: Default::default(),
            capture_round: AtomicU32::new(0),
            captured: Mutex::default(),
        }
    }
}

impl VcpuControl {
    fn desired(&self) -> Desired {
        match self.desired.load(Ordering::Acquire) {
            0 => Desired::Run,
            1 => Desired::Pause,
            _ => Desired::Stop,
        }
    }

    fn set(&self, d: Desired) {
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.desired.store(d as u8, Ordering::Release);
        self.changed.notify_all();
    }

    fn is_retiring(&self, index: u8) -> bool {
        let (word, bit) = (usize::from(index / 64), index % 64);
        self.retiring[word].load(Ordering::Acquire) & (1 << bit) != 0
    }

    /// Marks vCPU `index` as one whose thread must end (`on`), or no longer (`!on`).
    fn set_retiring(&self, index: u8, on: bool) {
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let (word, bit) = (usize::from(index / 64), index % 64);
        if on {
            self.retiring[word].fetch_or(1 << bit, Ordering::AcqRel);
        } else {
            self.retiring[word].fetch_and(!(1 << bit), Ordering::AcqRel);
        }
        self.changed.notify_all();
    }

    /// The registers of every parked vCPU, by index.
    pub fn parked_registers(&self) -> Vec<crate::coredump::VcpuRegisters> {
        let r = self
            .parked_registers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.values().copied().collect()
    }

    /// Records what vCPU `index` has in its registers as it parks.
    fn record(&self, index: u8, vcpu: &VcpuFd) {
        let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
            return;
        };
        self.parked_registers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, crate::coredump::VcpuRegisters { regs, sregs });
    }

    /// A control whose vCPUs park before they first run (a restored machine, which waits
    /// for `vm.resume`).
    pub fn paused() -> Self {
        let control = VcpuControl::default();
        control
            .desired
            .store(Desired::Pause as u8, Ordering::Release);
        control
    }

    /// Keeps what vCPU `index` read of itself, and wakes the VMM waiting for it.
    fn store_capture(&self, index: u8, state: Result<VcpuState, String>) {
        self.captured
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(index, state);
        let _guard = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        self.changed.notify_all();
    }

    /// Called by vCPU thread `index` between runs; returns false when the thread must end.
    /// While parked, the thread runs `capture` whenever a snapshot asks for its state.
    fn checkpoint(&self, index: u8, capture: &mut dyn FnMut()) -> bool {
        if self.is_retiring(index) {
            return false;
        }
        if self.desired() == Desired::Run {
            return true;
        }
        let mut parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = self.capture_round.load(Ordering::Acquire);
        loop {
            if self.is_retiring(index) {
                return false;
            }
            match self.desired() {
                Desired::Run => return true,
                Desired::Stop => return false,
                Desired::Pause => {
                    *parked += 1;
                    self.changed.notify_all();
                    parked = self
                        .changed
                        .wait_while(parked, |_| {
                            self.desired() == Desired::Pause
                                && !self.is_retiring(index)
                                && self.capture_round.load(Ordering::Acquire) == seen
                        })
                        .unwrap_or_else(|e| e.into_inner());
                    *parked -= 1;
                    let round = self.capture_round.load(Ordering::Acquire);
                    if round != seen {
                        seen = round;
                        drop(parked);
                        capture();
                        parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
                    }
                }
            }
        }
    }

    /// Blocks vCPU thread `index`, which has nothing more to run, until it must end.
    fn wait_for_stop(&self, index: u8) {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = self
            .changed
            .wait_while(parked, |_| {
                self.desired() != Desired::Stop && !self.is_retiring(index)
            })
            .unwrap_or_else(|e| e.into_inner());
    }

    /// Waits until `count` vCPUs are parked (or the machine is stopping).
    fn wait_parked(&self, count: usize) {
        let parked = self.parked.lock().unwrap_or_else(|e| e.into_inner());
        let _unused = self
            .changed
            .wait_while(parked, |p| *p < count && self.desired() == Desired::Pause)
            .unwrap_or_else(|e| e.into_inner());
    }
}

/// Why a vCPU stopped the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcpuFault {
    /// The vCPU's index.
    pub vcpu: u8,
    /// The exit or error, named.
    pub reason: String,
    /// The guest instruction pointer at the time, when it could be read.
    pub rip: Option<u64>,
}

impl std::fmt::Display for VcpuFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {} stopped the VM: {}", self.vcpu, self.reason)?;
        match self.rip {
            Some(rip) => write!(f, " at guest RIP {rip:#x}"),
            None => write!(f, " (guest RIP unreadable)"),
        }
    }
}

/// Where vCPUs report faults: the first one is kept and `evt` wakes the VMM.
pub struct FaultSink {
    fault: Mutex<Option<VcpuFault>>,
    evt: EventFd,
}

impl FaultSink {
    /// A sink that wakes `evt`.
    pub fn new(evt: EventFd) -> Self {
        FaultSink {
            fault: Mutex::new(None),
            evt,
        }
    }

    fn report(&self, fault: VcpuFault) {
        let mut slot = self.fault.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(fault);
        }
        // Overflowing the counter is impossible in practice; the fault is stored regardless.
        let _ = self.evt.write(1);
    }

    /// Takes the first fault reported, if any.
    pub fn take(&self) -> Option<VcpuFault> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    /// Port I/O devices.
    pub pio: Arc<Bus>,
    /// MMIO devices.
    pub mmio: Arc<Bus>,
    /// The I/O APIC, told of end-of-interrupts for level-triggered vectors.
    pub ioapic: Arc<Mutex<IoApic>>,
    /// Steering.
    pub control: Arc<VcpuControl>,
    /// Fault reporting.
    pub faults: Arc<FaultSink>,
    /// Raised when the CPU resets itself (triple fault), as the chipset would.
    pub reset: Arc<EventFd>,
    /// The thread's system-call filter, installed before it first runs the guest.
    pub filters: Arc<sandbox::seccomp::Filters>,
    /// The MSRs a snapshot reads (KVM's list).
    pub msr_indices: Arc<Vec<u32>>,
}

thread_local! {
    // The kvm_run page of the vCPU this thread runs, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set before the thread
            // first enters KVM_RUN and cleared before the VcpuFd (and its mapping) is dropped;
            // a volatile byte store is async-signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// The signal that kicks a vCPU out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler; call once before starting vCPUs.
pub fn install_kick_handler() -> std::io::Result<()> {
    register_signal_handler(kick_signal(), kick_handler)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// A running vCPU thread; it hands its vCPU back when it ends.
pub struct VcpuThread {
    index: u8,
    tid: libc::pid_t,
    handle: JoinHandle<VcpuFd>,
}

impl VcpuThread {
    /// Starts a thread running `vcpu`; returns once the thread is locked down, so that no
    /// vCPU thread of a started VM is ever seen unconfined.
    pub fn spawn(index: u8, vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<Self> {
        let (ready_tx, ready) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || run(index, vcpu, ctx, ready_tx))?;
        match ready.recv() {
            Ok(Ok(tid)) => Ok(VcpuThread { index, tid, handle }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(std::io::Error::other(format!(
                    "cannot lock vCPU thread {index} down: {e}"
                )))
            }
            Err(_) => {
                let _ = handle.join();
                Err(std::io::Error::other(format!(
                    "vCPU thread {index} ended before starting"
                )))
            }
        }
    }

    /// Restricts the thread to the host CPUs `cpus` (`cpus.affinity`).
    pub fn pin(&self, cpus: &[usize]) -> std::io::Result<()> {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes within it for
        // numbers below CPU_SETSIZE, which validation ensures.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            // SAFETY: as above.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: the thread is alive (its handle is held) and `set` is a valid cpu_set_t.
        let r = unsafe {
            libc::pthread_setaffinity_np(
                self.handle.as_pthread_t(),
                std::mem::size_of::<libc::cpu_set_t>(),
                &set,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        }
    }

    /// Interrupts `KVM_RUN` so the thread looks at its control.
    pub fn kick(&self) {
        if self.handle.is_finished() {
            return;
        }
        if let Err(e) = self.handle.kill(kick_signal()) {
            debug!("kicking a vCPU: {e}");
        }
    }

    /// The vCPU's index.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The thread's id.
    pub fn tid(&self) -> libc::pid_t {
        self.tid
    }

    /// Waits for the thread to end; returns its vCPU (none if the thread panicked).
    pub fn join(self) -> Option<VcpuFd> {
        match self.handle.join() {
            Ok(vcpu) => Some(vcpu),
            Err(_) => {
                log::error!("vCPU thread {} panicked", self.index);
                None
            }
        }
    }
}

/// Ends the thread of one vCPU while the others go on (the guest ejected it); returns the
/// vCPU, which KVM cannot destroy, for a later hot-plug to run again.
pub fn retire(control: &VcpuControl, thread: VcpuThread) -> Option<VcpuFd> {
    let index = thread.index;
    control.set_retiring(index, true);
    thread.kick();
    let vcpu = thread.join();
    control.set_retiring(index, false);
    vcpu
}

/// Pauses every vCPU and waits until all are parked.
pub fn pause_all(control: &VcpuControl, threads: &[VcpuThread]) {
    control.set(Desired::Pause);
    threads.iter().for_each(VcpuThread::kick);
    control.wait_parked(threads.len());
}

/// Has every parked vCPU read its whole state (the machine is paused); returns the states
/// by index, or the first vCPU's error.
pub fn capture_all(
    control: &VcpuControl,
    threads: &[VcpuThread],
) -> Result<Vec<VcpuState>, String> {
    control
        .captured
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let parked = control.parked.lock().unwrap_or_else(|e| e.into_inner());
    control.capture_round.fetch_add(1, Ordering::AcqRel);
    control.changed.notify_all();
    let count = |c: &VcpuControl| c.captured.lock().unwrap_or_else(|e| e.into_inner()).len();
    let (_parked, wait) = control
        .changed
        .wait_timeout_while(parked, std::time::Duration::from_secs(10), |_| {
            count(control) < threads.len()
        })
        .unwrap_or_else(|e| e.into_inner());
    if wait.timed_out() {
        return Err(format!(
            "only {} of {} vCPUs reported their state",
            count(control),
            threads.len()
        ));
    }
    let captured = std::mem::take(&mut *control.captured.lock().unwrap_or_else(|e| e.into_inner()));
    captured
        .into_iter()
        .map(|(index, state)| state.map_err(|e| format!("vCPU {index}: {e}")))
        .collect()
}

/// Waits until every one of `threads` is parked (a restored machine, started paused).
pub fn wait_all_parked(control: &VcpuControl, threads: &[VcpuThread]) {
    control.wait_parked(threads.len());
}

/// Sends every vCPU a non-maskable interrupt (a paused one gets it when it resumes).
pub fn nmi_all(control: &VcpuControl, threads: &[VcpuThread]) {
    control.nmis.fetch_add(1, Ordering::AcqRel);
    threads.iter().for_each(VcpuThread::kick);
}

/// Lets paused vCPUs run again.
pub fn resume_all(control: &VcpuControl) {
    control.set(Desired::Run);
}

/// Stops every vCPU and joins their threads.
pub fn stop_all(control: &VcpuControl, threads: Vec<VcpuThread>) {
    control.set(Desired::Stop);
    threads.iter().for_each(VcpuThread::kick);
    for thread in threads {
        thread.join();
    }
}

/// How one exit was handled.
enum Outcome {
    Continue,
    Reset,
    Fault(String),
}

fn handle_exit(exit: VcpuExit<'_>, ctx: &VcpuContext) -> Outcome {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !ctx.pio.read(port as u64, data) {
                trace!("unhandled port read {port:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::IoOut(port, data) => {
            if !ctx.pio.write(port as u64, data) {
                trace!("unhandled port write {port:#x}");
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !ctx.mmio.read(addr, data) {
                trace!("unhandled MMIO read {addr:#x}");
                data.fill(0xff);
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !ctx.mmio.write(addr, data) {
                trace!("unhandled MMIO write {addr:#x}");
            }
        }
        VcpuExit::IoapicEoi(vector) => {
            ctx.ioapic
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .end_of_interrupt(vector);
        }
        // A triple fault puts the processor in shutdown, which a PC turns into a reset.
        VcpuExit::Shutdown => return Outcome::Reset,
        VcpuExit::InternalError => return Outcome::Fault("KVM internal error".into()),
        VcpuExit::FailEntry(reason, cpu) => {
            return Outcome::Fault(format!(
                "KVM entry failure (hardware reason {reason:#x}, host CPU {cpu})"
            ))
        }
        VcpuExit::Hlt => return Outcome::Fault("unexpected HLT exit".into()),
        VcpuExit::SystemEvent(kind, _) => {
            return Outcome::Fault(format!("unexpected system event {kind}"))
        }
        other => return Outcome::Fault(format!("unhandled exit {}", exit_name(&other))),
    }
    Outcome::Continue
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    let debug = format!("{exit:?}");
    debug
        .split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_string()
}

/// Extra detail for an internal error: KVM's sub-error code.
fn internal_error_detail(vcpu: &mut VcpuFd) -> String {
    let run = vcpu.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the active member.
    let suberror = unsafe { run.__bindgen_anon_1.internal.suberror };
    match suberror {
        1 => "emulation failure".into(),
        2 => "simultaneous exception".into(),
        3 => "delivery event during event vectoring".into(),
        n => format!("sub-error {n}"),
    }
}

fn run(
    index: u8,
    mut vcpu: VcpuFd,
    ctx: VcpuContext,
    ready: std::sync::mpsc::SyncSender<Result<libc::pid_t, String>>,
) -> VcpuFd {
    // Locked down before the guest runs: nothing the guest makes this thread do may reach
    // a file, a socket or a capability.
    let _lockdown = match crate::thread_policy::lock_down_vcpu(&ctx.filters) {
        Ok(registration) => registration,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return vcpu;
        }
    };
    // SAFETY: gettid has no arguments and cannot fail.
    let _ = ready.send(Ok(unsafe { libc::gettid() }));
    // A vCPU run again after a hot-unplug may still carry the kick that ended its last
    // thread.
    vcpu.set_kvm_immediate_exit(0);
    let run_page: *mut kvm_run = vcpu.get_kvm_run();
    KVM_RUN.with(|r| r.set(run_page));
    let mut nmis_seen = ctx.control.nmis.load(Ordering::Acquire);
    loop {
        if ctx.control.desired() == Desired::Pause {
            ctx.control.record(index, &vcpu);
        }
        let mut capture = || {
            let state = VcpuState::capture(index, &vcpu, &ctx.msr_indices);
            ctx.control.store_capture(index, state);
        };
        if !ctx.control.checkpoint(index, &mut capture) {
            break;
        }
        let nmis = ctx.control.nmis.load(Ordering::Acquire);
        if nmis != nmis_seen {
            nmis_seen = nmis;
            if let Err(e) = vcpu.nmi() {
                log::warn!("vCPU {index}: cannot inject an NMI: {e}");
            }
        }
        let outcome = match vcpu.run() {
            Ok(exit) => {
                let internal = matches!(exit, VcpuExit::InternalError);
                match handle_exit(exit, &ctx) {
                    Outcome::Continue => continue,
                    Outcome::Reset => {
                        log::info!("vCPU {index}: triple fault: resetting the VM");
                        if let Err(e) = ctx.reset.write(1) {
                            format!("triple fault, and the reset request failed: {e}")
                        } else {
                            // Nothing more to run until the VMM rebuilds the machine.
                            ctx.control.wait_for_stop(index);
                            break;
                        }
                    }
                    Outcome::Fault(reason) if internal => {
                        format!("{reason}: {}", internal_error_detail(&mut vcpu))
                    }
                    Outcome::Fault(reason) => reason,
                }
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => format!("KVM_RUN failed: {e}"),
        };
        let rip = vcpu.get_regs().ok().map(|r| r.rip);
        ctx.faults.report(VcpuFault {
            vcpu: index,
            reason: outcome,
            rip,
        });
        break;
    }
    KVM_RUN.with(|r| r.set(std::ptr::null_mut()));
    vcpu
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn control_parks_and_releases_threads() {
        let control = Arc::new(VcpuControl::default());
        let mut threads = Vec::new();
        for _ in 0..3 {
            let c = control.clone();
            threads.push(std::thread::spawn(move || {
                let mut laps = 0u64;
                while c.checkpoint(0, &mut || {}) {
                    laps += 1;
                    std::thread::sleep(Duration::from_micros(50));
                }
                laps
            }));
        }
        control.set(Desired::Pause);
        control.wait_parked(3);
        assert_eq!(*control.parked.lock().unwrap(), 3);
        control.set(Desired::Run);
        std::thread::sleep(Duration::from_millis(5));
        control.set(Desired::Stop);
        for t in threads {
            assert!(t.join().unwrap() > 0);
        }
    }

    #[test]
    fn a_retiring_vcpu_ends_alone_even_when_parked() {
        let control = Arc::new(VcpuControl::default());
        let spawn = |index: u8| {
            let c = control.clone();
            std::thread::spawn(move || {
                while c.checkpoint(index, &mut || {}) {
                    std::thread::sleep(Duration::from_micros(50));
                }
                index
            })
        };
        let (first, second) = (spawn(1), spawn(2));
        control.set_retiring(2, true);
        assert_eq!(second.join().unwrap(), 2);
        control.set_retiring(2, false);
        assert!(!first.is_finished(), "the other vCPU keeps running");
        control.set(Desired::Pause);
        control.wait_parked(1);
        control.set_retiring(1, true);
        assert_eq!(first.join().unwrap(), 1, "a parked vCPU can be retired too");
        assert!(!control.is_retiring(2));
    }

    #[test]
    fn fault_sink_keeps_the_first_fault_and_wakes_the_vmm() {
        let evt = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        let sink = FaultSink::new(evt.try_clone().unwrap());
        let fault = |vcpu| VcpuFault {
            vcpu,
            reason: "x".into(),
            rip: Some(0x1000),
        };
        sink.report(fault(1));
        sink.report(fault(2));
        assert_eq!(evt.read().unwrap(), 2);
        assert_eq!(sink.take().unwrap().vcpu, 1);
        assert!(sink.take().is_none());
        assert_eq!(
            fault(0).to_string(),
            "vCPU 0 stopped the VM: x at guest RIP 0x1000"
        );
    }
}
