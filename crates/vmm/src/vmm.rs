//! The VMM thread: one epoll loop over the guest's power requests, vCPU faults, console
//! input, termination signals and control requests, and the VM lifecycle state machine.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use config::VmConfig;
use kvm_bindings::CpuId;
use kvm_ioctls::Kvm;
use log::{error, info, warn};
use serde_json::json;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::console;
use crate::control::{ErrorKind, Reply, Request, RequestError, RequestReceiver, Response};
use crate::device_manager::MachineEvents;
pub use crate::signals::block_termination_signals;
use crate::signals::SignalFd;
use crate::vcpu::{self, FaultSink};
use crate::vm::{self, Vm, VmError, VmState};
use sandbox::janitor::Janitor;
use sandbox::{Policy, Sandbox, SandboxError};

/// Options of the VMM process itself.
#[derive(Clone, Default)]
pub struct VmmOptions {
    /// Keep the VMM running when the guest powers off (`--no-shutdown`).
    pub no_shutdown: bool,
    /// The process that releases KVM VMs (and the API socket) away from the VMM's critical
    /// paths.
    pub janitor: Option<Arc<Janitor>>,
}

/// Why the VMM's loop ended, and the process exit status that goes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest powered off.
    GuestPoweroff,
    /// `vmm.shutdown` was requested.
    Requested,
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// A vCPU stopped the VM with an error.
    Fault(String),
}

impl ExitReason {
    /// The process exit status.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::Fault(_) => 1,
            _ => 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
enum Token {
    Reset = 1,
    Poweroff,
    Fault,
    Control,
    ConsoleInput,
    InputDrained,
    Signal,
    Eject,
    WatchdogPet,
    WatchdogTimer,
    Panic,
}

impl Token {
    fn from_u64(v: u64) -> Option<Token> {
        [
            Token::Reset,
            Token::Poweroff,
            Token::Fault,
            Token::Control,
            Token::ConsoleInput,
            Token::InputDrained,
            Token::Signal,
            Token::Eject,
            Token::WatchdogPet,
            Token::WatchdogTimer,
            Token::Panic,
        ]
        .into_iter()
        .find(|t| *t as u64 == v)
    }
}

/// The VMM: at most one VM, and the loop that drives it.
pub struct Vmm {
    kvm: Kvm,
    cpuid: CpuId,
    options: VmmOptions,
    events: MachineEvents,
    fault_evt: EventFd,
    faults: Arc<FaultSink>,
    epoll: Epoll,
    control: Option<RequestReceiver>,
    signals: Option<SignalFd>,
    sandbox: Sandbox,
    vm: Option<Vm>,
    input_watched: bool,
    exit: Option<ExitReason>,
    // The VMM thread's confinement record, kept while the VMM runs.
    _lockdown: Option<sandbox::lockdown::Registration>,
}

/// Errors starting the VMM.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// KVM is not usable.
    #[error(transparent)]
    Kvm(#[from] VmError),
    /// The VMM thread could not lock itself down.
    #[error(transparent)]
    Lockdown(#[from] sandbox::lockdown::LockdownError),
    /// Its system-call filter could not be built.
    #[error(transparent)]
    Seccomp(#[from] sandbox::seccomp::SeccompError),
    /// A host resource of the event loop could not be set up.
    #[error("cannot set up the {what}: {source}")]
    Io {
        /// Which resource.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

mod hotplug_requests;
mod info;
mod migration_requests;
mod pvpanic;
mod snapshot_requests;
mod watchdog;
use hotplug_requests::hotplug_error;

impl Vmm {
    /// Opens KVM and sets up the loop. `control` carries API requests, if there is an API.
    pub fn new(options: VmmOptions, control: Option<RequestReceiver>) -> Result<Self, StartError> {
        let (kvm, cpuid) = vm::open_kvm()?;
        vcpu::install_kick_handler().map_err(io_err("vCPU kick signal handler"))?;
        let sandbox = Sandbox::prepare().map_err(io_err("Landlock thread list"))?;
        let events = MachineEvents::new().map_err(io_err("eventfd"))?;
        let fault_evt =
            EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).map_err(io_err("eventfd"))?;
        let faults = Arc::new(FaultSink::new(
            fault_evt.try_clone().map_err(io_err("eventfd"))?,
        ));
        let epoll = Epoll::new().map_err(io_err("epoll"))?;
        let signals = SignalFd::termination().map_err(io_err("signalfd"))?;
        // Every socket the VMM thread will use exists now: interface ioctls on taps go
        // through this one, so the filter can forbid creating any.
        devices::tap::hold_control_socket().map_err(io_err("interface control socket"))?;
        // Locked down before the first request or guest exit: it keeps what creating a VM
        // and hot-plug may need, until the VM is created and more is known.
        let channel = options.janitor.as_ref().map(|j| j.channel_fd());
        // Made before the filter, which forbids making one (see `guest_ram`).
        crate::guest_ram::reserve();
        let filters = crate::thread_policy::filters(sandbox::Role::Vmm, channel)?;
        let keep = crate::thread_policy::vmm_capabilities(control.is_some(), true);
        let lockdown = sandbox::lockdown::lock_down(
            sandbox::lockdown::ThreadLandlock::Unchanged,
            &keep,
            &filters,
        )?;
        let vmm = Vmm {
            kvm,
            cpuid,
            options,
            events,
            fault_evt,
            faults,
            epoll,
            control,
            signals: Some(signals),
            sandbox,
            vm: None,
            input_watched: false,
            exit: None,
            _lockdown: Some(lockdown),
        };
        vmm.watch(vmm.events.reset.as_raw_fd(), Token::Reset)?;
        vmm.watch(vmm.events.poweroff.as_raw_fd(), Token::Poweroff)?;
        vmm.watch(vmm.fault_evt.as_raw_fd(), Token::Fault)?;
        if let Some(c) = &vmm.control {
            vmm.watch(c.eventfd().as_raw_fd(), Token::Control)?;
        }
        if let Some(s) = &vmm.signals {
            vmm.watch(s.fd(), Token::Signal)?;
        }
        Ok(vmm)
    }

    fn watch(&self, fd: RawFd, token: Token) -> Result<(), StartError> {
        self.epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token as u64),
            )
            .map_err(io_err("epoll"))
    }

    fn unwatch(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }

    /// Runs until the VMM should exit; returns why.
    pub fn run(&mut self) -> ExitReason {
        let mut events = vec![EpollEvent::default(); 16];
        loop {
            if let Some(reason) = self.exit.take() {
                self.teardown();
                return reason;
            }
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.teardown();
                    return ExitReason::Fault(format!("epoll_wait failed: {e}"));
                }
            };
            for event in &events[..n] {
                match Token::from_u64(event.data()) {
                    Some(Token::Reset) => self.on_reset(),
                    Some(Token::Poweroff) => self.on_poweroff(),
                    Some(Token::Fault) => self.on_fault(),
                    Some(Token::Control) => self.on_control(),
                    Some(Token::ConsoleInput) => self.on_console_input(),
                    Some(Token::InputDrained) => self.on_input_drained(),
                    Some(Token::Signal) => self.on_signal(),
                    Some(Token::Eject) => self.on_eject(),
                    Some(Token::WatchdogPet) => self.on_watchdog_pet(),
                    Some(Token::WatchdogTimer) => self.on_watchdog_timer(),
                    Some(Token::Panic) => self.on_panic(),
                    None => {}
                }
            }
        }
    }

    fn teardown(&mut self) {
        // The janitor tears the KVM VM down once this process is gone: exit stays fast.
        self.delete_vm(false);
    }

    fn on_reset(&mut self) {
        let _ = self.events.reset.read();
        if self.vm.as_ref().map(Vm::state) != Some(VmState::Running) {
            return;
        }
        info!("guest requested a reset: rebooting");
        if let Err(e) = self.reboot_vm() {
            error!("reboot failed: {e}");
            self.exit = Some(ExitReason::Fault(format!("reboot failed: {e}")));
        }
    }

    fn on_poweroff(&mut self) {
        let _ = self.events.poweroff.read();
        if self.vm.as_ref().map(Vm::state) != Some(VmState::Running) {
            return;
        }
        info!("guest powered off");
        crate::events::emit("vm", "shutdown");
        if self.options.no_shutdown {
            if let Some(vm) = &mut self.vm {
                vm.shutdown();
            }
        } else {
            self.exit = Some(ExitReason::GuestPoweroff);
        }
    }

    fn on_fault(&mut self) {
        let _ = self.fault_evt.read();
        let Some(fault) = self.faults.take() else {
            return;
        };
        if let Some(vm) = &mut self.vm {
            vm.shutdown();
        }
        if self.options.no_shutdown {
            error!("{fault}; the VMM keeps running (--no-shutdown)");
        } else {
            // The caller reports it as the reason the VMM ends.
            self.exit = Some(ExitReason::Fault(fault.to_string()));
        }
    }

    fn on_eject(&mut self) {
        let Some(vm) = &mut self.vm else {
            return;
        };
        let gone = vm.finish_ejects();
        for id in &gone {
            info!("device {id} ejected by the guest and removed");
        }
    }

    fn on_signal(&mut self) {
        while let Some(signo) = self.signals.as_ref().and_then(SignalFd::read) {
            let name = crate::signals::name(signo);
            if crate::signals::terminates(signo) {
                info!("received {name}: shutting down");
                self.exit = Some(ExitReason::Signal(signo));
            } else {
                warn!("received {name}: Palisade gives it no meaning; ignored");
            }
        }
    }

    fn on_control(&mut self) {
        let Some(control) = &self.control else {
            return;
        };
        for (request, reply) in control.drain() {
            let response = self.handle(request);
            // The requester may have gone away (client disconnected); nothing to do then.
            reply.send(response);
        }
    }

    fn on_console_input(&mut self) {
        let Some(vm) = &self.vm else {
            return;
        };
        let devices = vm.devices();
        let Some(input) = devices.serial.as_ref().and_then(|s| s.input.as_ref()) else {
            return;
        };
        if let crate::console::ConsoleInput::Socket(socket) = input {
            if !socket.connected() {
                // The listener was readable: watch the client from now on.
                let listener = socket.fd();
                if socket.accept() {
                    self.unwatch(listener);
                    self.input_watched = self.watch(socket.fd(), Token::ConsoleInput).is_ok();
                }
                return;
            }
        }
        if !devices.serial_wants_input() {
            // The guest is not reading: stop polling until it drains the FIFO.
            self.unwatch(input.fd());
            self.input_watched = false;
            return;
        }
        let mut buf = [0u8; 64];
        let fd = input.fd();
        match input.read(&mut buf) {
            Ok(0) if matches!(input, crate::console::ConsoleInput::Socket(_)) => {
                // The client left: wait for the next one.
                self.unwatch(fd);
                self.input_watched = self.watch(input.fd(), Token::ConsoleInput).is_ok();
            }
            Ok(0) => {
                // End of input (e.g. stdin closed): nothing more will come.
                self.unwatch(input.fd());
                self.input_watched = false;
            }
            Ok(n) => {
                let taken = devices.serial_input(&buf[..n]);
                if taken < n {
                    warn!(
                        "serial input: the guest's FIFO overflowed, {} bytes dropped",
                        n - taken
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                warn!("serial input: {e}");
                self.unwatch(input.fd());
                self.input_watched = false;
            }
        }
    }

    fn on_input_drained(&mut self) {
        let Some(serial) = self.vm.as_ref().and_then(|vm| vm.devices().serial.as_ref()) else {
            return;
        };
        let _ = serial.input_drained.read();
        if !self.input_watched {
            if let Some(input) = &serial.input {
                let fd = input.fd();
                if self.watch(fd, Token::ConsoleInput).is_ok() {
                    self.input_watched = true;
                }
            }
        }
    }

    /// Carries out one request in the VM's current state.
    pub fn handle(&mut self, request: Request) -> Response {
        match request {
            Request::Ping => Ok(Reply::Json(ping_info())),
            Request::ShutdownVmm => {
                self.exit = Some(ExitReason::Requested);
                Ok(Reply::Done)
            }
            Request::Create(config) => self.create_vm(*config),
            Request::Boot => {
                let state = self.require_vm("vm.boot")?;
                if !matches!(state, VmState::Created | VmState::Shutdown) {
                    return Err(wrong_state("vm.boot", state, "Created or Shutdown"));
                }
                crate::events::emit("vm", "booting");
                self.boot_vm()
                    .map(|_| {
                        crate::events::emit("vm", "booted");
                        Reply::Done
                    })
                    .map_err(|e| RequestError::from_error(ErrorKind::Internal, "vm.boot", &e))
            }
            Request::Shutdown => {
                let state = self.require_vm("vm.shutdown")?;
                if !matches!(state, VmState::Running | VmState::Paused) {
                    return Err(wrong_state("vm.shutdown", state, "Running or Paused"));
                }
                if let Some(vm) = &mut self.vm {
                    vm.shutdown();
                }
                crate::events::emit("vm", "shutdown");
                Ok(Reply::Done)
            }
            Request::Reboot => {
                let state = self.require_vm("vm.reboot")?;
                if !matches!(state, VmState::Running | VmState::Paused) {
                    return Err(wrong_state("vm.reboot", state, "Running or Paused"));
                }
                self.reboot_vm()
                    .map(|_| Reply::Done)
                    .map_err(|e| RequestError::from_error(ErrorKind::Internal, "vm.reboot", &e))
            }
            Request::Pause => {
                let state = self.require_vm("vm.pause")?;
                if state != VmState::Running {
                    return Err(wrong_state("vm.pause", state, "Running"));
                }
                crate::events::emit("vm", "pausing");
                if let Some(vm) = &mut self.vm {
                    vm.pause();
                }
                crate::events::emit("vm", "paused");
                Ok(Reply::Done)
            }
            Request::Resume => {
                let state = self.require_vm("vm.resume")?;
                if state != VmState::Paused {
                    return Err(wrong_state("vm.resume", state, "Paused"));
                }
                crate::events::emit("vm", "resuming");
                if let Some(vm) = &mut self.vm {
                    vm.resume();
                }
                crate::events::emit("vm", "resumed");
                Ok(Reply::Done)
            }
            Request::Delete => {
                // Deleting when there is no VM is not an error, as in the reference API.
                self.delete_vm(true);
                Ok(Reply::Done)
            }
            Request::Info => {
                self.require_vm("vm.info")?;
                Ok(Reply::Json(self.info()))
            }
            Request::AddDisk(disk) => self.add_disk(*disk),
            Request::AddNet(net) => self.add_net(*net),
            Request::AddPmem(pmem) => self.add_pmem(*pmem),
            Request::AddFs(fs) => self.add_fs(*fs),
            Request::AddVsock(vsock) => self.add_vsock(*vsock),
            Request::RemoveDevice(id) => self.remove_device(&id),
            Request::PowerButton => {
                // As Cloud Hypervisor: a paused guest gets the press when it resumes.
                let state = self.require_vm("vm.power-button")?;
                if !matches!(state, VmState::Running | VmState::Paused) {
                    return Err(wrong_state("vm.power-button", state, "Running or Paused"));
                }
                if let Some(vm) = &self.vm {
                    vm.devices().press_power_button();
                }
                info!("power button pressed");
                Ok(Reply::Done)
            }
            Request::Coredump(url) => {
                let state = self.require_vm("vm.coredump")?;
                if state != VmState::Paused {
                    return Err(wrong_state("vm.coredump", state, "Paused"));
                }
                let Some(path) = url.strip_prefix("file://").filter(|p| p.starts_with('/')) else {
                    return Err(RequestError::new(
                        ErrorKind::BadRequest,
                        format!("vm.coredump: destination_url {url:?} is not file:///PATH"),
                    ));
                };
                if let Some(vm) = &self.vm {
                    vm.coredump(std::path::Path::new(path))
                        .map_err(|e| hotplug_error("vm.coredump", e))?;
                }
                info!("core of the guest written to {path}");
                Ok(Reply::Done)
            }
            Request::ResizeZone(id, bytes) => {
                self.require_vm("vm.resize-zone")?;
                if let Some(vm) = &mut self.vm {
                    vm.resize_zone(&id, bytes)
                        .map_err(|e| hotplug_error("vm.resize-zone", e))?;
                }
                Ok(Reply::Done)
            }
            Request::Resize(resize) => {
                self.require_vm("vm.resize")?;
                if let Some(vm) = &mut self.vm {
                    vm.resize(&resize)
                        .map_err(|e| hotplug_error("vm.resize", e))?;
                }
                Ok(Reply::Done)
            }
            Request::ResizeDisk(id, bytes) => {
                self.require_vm("vm.resize-disk")?;
                if let Some(vm) = &mut self.vm {
                    vm.resize_disk(&id, bytes)
                        .map_err(|e| hotplug_error("vm.resize-disk", e))?;
                }
                info!("disk {id} resized to {bytes} bytes");
                Ok(Reply::Done)
            }
            Request::Nmi => {
                let state = self.require_vm("vm.nmi")?;
                if !matches!(state, VmState::Running | VmState::Paused) {
                    return Err(wrong_state("vm.nmi", state, "Running or Paused"));
                }
                if let Some(vm) = &self.vm {
                    vm.nmi();
                }
                info!("NMI sent to every vCPU");
                Ok(Reply::Done)
            }
            Request::Snapshot(url) => self.snapshot_vm(&url),
            Request::Restore(restore) => self.restore_vm(restore),
            Request::SendMigration(body) => self.send_migration(body),
            Request::ReceiveMigration(body) => self.receive_migration(body),
            Request::Counters => {
                self.require_vm("vm.counters")?;
                let counters = self
                    .vm
                    .as_ref()
                    .map_or(json!({}), |vm| vm.devices().counters());
                Ok(Reply::Json(counters))
            }
        }
    }
    /// Refuses `action` (which makes a VM) while a VM exists.
    fn require_no_vm(&self, action: &str) -> Result<(), RequestError> {
        match &self.vm {
            Some(vm) => Err(RequestError::new(
                ErrorKind::WrongState,
                format!(
                    "{action}: a VM already exists (state {:?}); delete it with vm.delete first",
                    vm.state()
                ),
            )),
            None => Ok(()),
        }
    }

    fn require_vm(&self, action: &str) -> Result<VmState, RequestError> {
        self.vm.as_ref().map(Vm::state).ok_or_else(|| {
            RequestError::new(
                ErrorKind::NotFound,
                format!("{action}: no VM has been created; create one with vm.create first"),
            )
        })
    }

    fn create_vm(&mut self, config: VmConfig) -> Response {
        // Descriptors sent for the VM's devices and not adopted are closed, whatever happens.
        let fds: Vec<i32> = config
            .net
            .iter()
            .flatten()
            .flat_map(|n| n.fds.iter().flatten().copied())
            .collect();
        let answer = self.create_vm_inner(config);
        crate::passed_fds::discard(&fds);
        answer
    }

    fn create_vm_inner(&mut self, config: VmConfig) -> Response {
        self.create_confined(config, "vm.create", Default::default(), Vec::new())
            .map(|()| Reply::Done)
    }

    /// Creates the VM of `config` (for `action`), its devices placed as `placement` says, and
    /// confines the VMM if the config asks, with `held` added to what the report lists.
    fn create_confined(
        &mut self,
        config: VmConfig,
        action: &str,
        placement: crate::pci_devices::Placement,
        held: Vec<sandbox::policy::Held>,
    ) -> Result<(), RequestError> {
        self.require_no_vm(action)?;
        config
            .validate()
            .map_err(|e| RequestError::new(ErrorKind::BadRequest, format!("{action}: {e}")))?;
        if config.cpus.features.amx {
            self.cpuid = crate::x86_64::amx::enable(&self.kvm)
                .map_err(|e| RequestError::new(ErrorKind::BadRequest, format!("{action}: {e}")))?;
        }
        let landlock = config.landlock_enable;
        let api = self.control.is_some();
        let vm = Vm::create(
            config,
            &self.events,
            self.faults.clone(),
            self.options.janitor.clone(),
            placement,
        )
        .map_err(|e| RequestError::from_error(ErrorKind::BadRequest, action, &e))?;
        // What the VMM thread may still need once this VM exists: nothing without an API;
        // under Landlock, only what the ruleset lets a hot-plug or a later VM use.
        let mut keep = crate::thread_policy::vmm_capabilities(api, api);
        if landlock {
            // The VM's files are open: from here on only the policy's rules can be opened.
            let mut policy = Policy::from_config(vm.config()).with_net_hotplug(vm.config(), api);
            policy.held.extend(held);
            let tun = std::path::Path::new(sandbox::policy::TUN_DEVICE);
            let net_hotplug = api && policy.allowing(tun, sandbox::Access::ReadWrite).is_some();
            keep = crate::thread_policy::vmm_capabilities(net_hotplug, false);
            for warning in policy.warnings(vm.config()) {
                warn!("{warning}");
            }
            match self.sandbox.confine(&policy) {
                Ok(report) => {
                    for line in report.log_lines() {
                        info!("{line}");
                    }
                    if !report.not_enforced.is_empty() {
                        warn!(
                            "Landlock ABI {} is older than Palisade's policy needs; not enforced: {}",
                            report.abi,
                            report.not_enforced.join(", ")
                        );
                    }
                }
                Err(e) => {
                    if matches!(e, SandboxError::Thread(_)) {
                        // Some threads are confined and some are not: never go on like that.
                        error!("{e}: stopping the VMM");
                        self.exit = Some(ExitReason::Fault(e.to_string()));
                    }
                    return Err(RequestError::from_error(ErrorKind::Internal, action, &e));
                }
            }
        }
        if let Err(e) = sandbox::lockdown::lower_capabilities(&keep) {
            // The process would hold more than it should: never go on like that.
            error!("{e}: stopping the VMM");
            self.exit = Some(ExitReason::Fault(e.to_string()));
            return Err(RequestError::from_error(ErrorKind::Internal, action, &e));
        }
        self.vm = Some(vm);
        self.start_console_input();
        if let Some(vm) = &self.vm {
            let _ = self.watch(vm.devices().eject_evt.as_raw_fd(), Token::Eject);
        }
        self.watch_watchdog();
        self.watch_panic();
        Ok(())
    }

    fn start_console_input(&mut self) {
        if self
            .vm
            .as_ref()
            .is_some_and(|vm| vm.devices().console_on_stdin)
        {
            if let Err(e) = console::stdin_raw_mode() {
                warn!("cannot put the terminal in raw mode: {e}");
            }
        }
        let Some(serial) = self.vm.as_ref().and_then(|vm| vm.devices().serial.as_ref()) else {
            return;
        };
        let drained = serial.input_drained.as_raw_fd();
        let input = serial
            .input
            .as_ref()
            .map(|i| (i.fd(), matches!(i, console::ConsoleInput::Stdin)));
        let _ = self.watch(drained, Token::InputDrained);
        if let Some((fd, is_stdin)) = input {
            if is_stdin {
                if let Err(e) = console::stdin_raw_mode() {
                    warn!("cannot put the terminal in raw mode: {e}");
                }
            }
            self.input_watched = self.watch(fd, Token::ConsoleInput).is_ok();
        }
    }

    fn boot_vm(&mut self) -> Result<(), VmError> {
        self.start_vm(false)
    }

    fn reboot_vm(&mut self) -> Result<(), VmError> {
        crate::events::emit("vm", "rebooting");
        self.start_vm(true)?;
        crate::events::emit("vm", "rebooted");
        Ok(())
    }

    /// Boots the VM, or reboots it; either way devices removed while the guest ran are gone
    /// afterwards (their worker threads with them).
    fn start_vm(&mut self, reboot: bool) -> Result<(), VmError> {
        let Some(vm) = &mut self.vm else {
            return Ok(());
        };
        if reboot {
            vm.reboot(&self.kvm, &self.cpuid)
        } else {
            vm.boot(&self.kvm, &self.cpuid)
        }
    }

    /// Destroys the VM; with `release`, waits until its kernel side is gone too.
    fn delete_vm(&mut self, release: bool) {
        if let Some(vm) = self.vm.take() {
            crate::events::emit("vm", "deleted");
            if let Some(serial) = &vm.devices().serial {
                self.unwatch(serial.input_drained.as_raw_fd());
                if let Some(input) = &serial.input {
                    self.unwatch(input.fd());
                }
            }
            self.unwatch(vm.devices().eject_evt.as_raw_fd());
            if let Some(w) = &vm.devices().watchdog {
                self.unwatch(w.pet_evt.as_raw_fd());
                self.unwatch(w.timer_fd());
            }
            self.input_watched = false;
            drop(vm);
            // The VM is gone for good: have its kernel side torn down now, so that its
            // kernel threads do not outlive it (a later vm.create confines every thread).
            if let Some(janitor) = self.options.janitor.as_ref().filter(|_| release) {
                if let Err(e) = janitor.release() {
                    warn!("the janitor could not release the deleted VM: {e}");
                }
            }
            console::restore_terminal();
        }
    }
}
fn wrong_state(action: &str, state: VmState, allowed: &str) -> RequestError {
    RequestError::new(
        ErrorKind::WrongState,
        format!("{action}: the VM is {state:?}; this is only allowed when it is {allowed}"),
    )
}

/// The `vmm.ping` document.
pub fn ping_info() -> serde_json::Value {
    json!({
        "build_version": env!("CARGO_PKG_VERSION"),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": ["kvm", "landlock"],
    })
}
