//! `palisade`: boots a VM from the command line, or serves the REST API on a Unix socket, with
//! Cloud Hypervisor's flags and option syntax.

mod logger;

use std::fs::OpenOptions;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use clap::{ArgAction, Parser};
use config::{ApiSocketConfig, VmConfig, VmParams};
use vmm::{Request, Vmm, VmmOptions};

/// Launch a Palisade VMM: a KVM virtual machine monitor that confines itself with Landlock.
#[derive(Parser, Debug)]
#[command(name = "palisade", version, about, long_about = None)]
struct Cli {
    /// Kernel to boot: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<String>,

    /// Firmware to boot (not supported by Palisade: boot a kernel directly).
    #[arg(long, value_name = "PATH")]
    firmware: Option<String>,

    /// Initial RAM disk.
    #[arg(long, value_name = "PATH")]
    initramfs: Option<String>,

    /// Kernel command line.
    #[arg(long, value_name = "STRING")]
    cmdline: Option<String>,

    /// vCPUs: "boot=<boot_vcpus>,max=<max_vcpus>" [default: boot=1].
    #[arg(long, value_name = "OPTIONS")]
    cpus: Option<String>,

    /// Memory: "size=<guest_memory_size>" (K, M, G suffixes) [default: size=512M].
    #[arg(long, value_name = "OPTIONS")]
    memory: Option<String>,

    /// Disks: "path=<image>,readonly=on|off,direct=on|off,id=<device_id>,num_queues=<n>,queue_size=<n>,serial=<serial>".
    #[arg(long, value_name = "DISK", num_args = 1.., action = ArgAction::Append)]
    disk: Vec<String>,

    /// Network devices: "tap=<if_name>,ip=<ip_addr>,mask=<net_mask>,mac=<mac_addr>,fd=<fd>,num_queues=<n>,queue_size=<n>,id=<device_id>".
    #[arg(long, value_name = "NET", num_args = 1.., action = ArgAction::Append)]
    net: Vec<String>,

    /// Entropy device: "src=<entropy_source_path>" [default: src=/dev/urandom].
    #[arg(long, value_name = "OPTIONS")]
    rng: Option<String>,

    /// Serial port: "off|null|tty|pty|file=<path>" [default: null].
    #[arg(long, value_name = "MODE")]
    serial: Option<String>,

    /// Virtio console: "off|null|tty|pty|file=<path>" [default: tty].
    #[arg(long, value_name = "MODE")]
    console: Option<String>,

    /// REST API socket: "path=<path>" or "fd=<fd>".
    #[arg(long, value_name = "SOCKET")]
    api_socket: Option<String>,

    /// Restore from a VM snapshot: "source_url=<source_url>,prefault=on|off,
    /// memory_restore_mode=copy,resume=true|false". The VM comes back paused unless
    /// `resume=true`.
    #[arg(long, value_name = "restore", conflicts_with_all = ["kernel", "firmware"])]
    restore: Option<String>,

    /// Confine the VMM with Landlock when the VM is created.
    #[arg(long)]
    landlock: bool,

    /// Extra Landlock rules: "path=<path/to/{file,dir}>,access=[r|w|rw]".
    #[arg(long, value_name = "RULE", num_args = 1.., action = ArgAction::Append)]
    landlock_rules: Vec<String>,

    /// A memory zone (with `--memory size=0`): "size=<guest_memory_region_size>,
    /// file=<backing_file>,shared=on|off,hugepages=on|off,hugepage_size=<hugepage_size>,
    /// id=<zone_identifier>,hotplug_size=<hotpluggable_memory_size>,
    /// hotplugged_size=<hotplugged_memory_size>".
    #[arg(long, value_name = "memory-zone", num_args = 1.., action = ArgAction::Append)]
    memory_zone: Vec<String>,

    /// Platform configuration: "num_pci_segments=<num_pci_segments>,
    /// system_manufacturer=<dmi_system_manufacturer>,system_product_name=<...>,
    /// system_version=<...>,system_serial_number=<...>,system_uuid=<...>,
    /// system_sku_number=<...>,system_family=<...>,oem_strings=<list_of_strings>,
    /// chassis_asset_tag=<...>".
    #[arg(long, value_name = "platform")]
    platform: Option<String>,

    /// A watchdog the guest must keep petting or be reset (the IB700's ports, which Linux's
    /// ib700wdt drives).
    #[arg(long)]
    watchdog: bool,

    /// The pvpanic PCI device: a guest panic is logged and reported as an event.
    #[arg(long)]
    pvpanic: bool,

    /// Memory balloon: "size=<balloon_size>,deflate_on_oom=on|off,free_page_reporting=on|off".
    #[arg(long, value_name = "balloon")]
    balloon: Option<String>,

    /// Persistent memory: "file=<backing_file_path>,size=<persistent_memory_size>,
    /// discard_writes=on|off,id=<device_id>,pci_segment=<segment_id>".
    #[arg(long, value_name = "pmem", num_args = 1.., action = ArgAction::Append)]
    pmem: Vec<String>,

    /// virtio-fs: "tag=<tag_name>,socket=<socket_path>,num_queues=<number_of_queues>,
    /// queue_size=<size_of_each_queue>,id=<device_id>,pci_segment=<segment_id>".
    #[arg(long, value_name = "fs", num_args = 1.., action = ArgAction::Append)]
    fs: Vec<String>,

    /// Virtio VSOCK parameters: "cid=<context_id>,socket=<socket_path>,iommu=on|off,
    /// id=<device_id>,pci_segment=<segment_id>".
    #[arg(long, value_name = "vsock")]
    vsock: Option<String>,

    /// A PCI segment's share of the BAR windows: "pci_segment=<segment_id>,
    /// mmio32_aperture_weight=<scale>,mmio64_aperture_weight=<scale>".
    #[arg(long, value_name = "pci-segment", num_args = 1.., action = ArgAction::Append)]
    pci_segment: Vec<String>,

    /// A rate limiter disks share: "bw_size=<bytes>,bw_one_time_burst=<bytes>,
    /// bw_refill_time=<ms>,ops_size=<io_ops>,ops_one_time_burst=<io_ops>,
    /// ops_refill_time=<ms>,id=<group_id>".
    #[arg(long, value_name = "rate-limit-group", num_args = 1.., action = ArgAction::Append)]
    rate_limit_group: Vec<String>,

    /// System-call filters of every thread: "true" (a forbidden call stops the VMM),
    /// "false" (no filter) or "log" (forbidden calls are logged by the kernel).
    #[arg(long, value_name = "true|false|log", default_value = "true")]
    seccomp: String,

    /// Keep the VMM running when the guest powers off.
    #[arg(long)]
    no_shutdown: bool,

    /// Log file [default: standard error].
    #[arg(long, value_name = "PATH")]
    log_file: Option<String>,

    /// File to report events to, as Cloud Hypervisor's event monitor: "path=<path>" or
    /// "fd=<fd>" (a descriptor Palisade inherits).
    #[arg(long, value_name = "monitor_config")]
    event_monitor: Option<String>,

    /// More log output (repeat for more).
    #[arg(short = 'v', action = ArgAction::Count)]
    verbose: u8,
}

impl Cli {
    fn vm_params(&self) -> VmParams {
        VmParams {
            kernel: self.kernel.clone(),
            firmware: self.firmware.clone(),
            initramfs: self.initramfs.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus.clone(),
            memory: self.memory.clone(),
            serial: self.serial.clone(),
            console: self.console.clone(),
            disks: self.disk.clone(),
            net: self.net.clone(),
            rng: self.rng.clone(),
            landlock: self.landlock,
            landlock_rules: self.landlock_rules.clone(),
            rate_limit_groups: self.rate_limit_group.clone(),
            memory_zones: self.memory_zone.clone(),
            platform: self.platform.clone(),
            pci_segments: self.pci_segment.clone(),
            balloon: self.balloon.clone(),
            pmem: self.pmem.clone(),
            fs: self.fs.clone(),
            vsock: self.vsock.clone(),
            watchdog: self.watchdog,
            pvpanic: self.pvpanic,
        }
    }

    /// Whether any flag describing a VM was given.
    fn describes_vm(&self) -> bool {
        self.kernel.is_some() || self.firmware.is_some()
    }
}

/// A one-line failure: printed as `palisade: <message>`, exit status 1.
struct Failure(String);

impl<T: std::fmt::Display> From<T> for Failure {
    fn from(e: T) -> Self {
        Failure(e.to_string())
    }
}

fn parse_cli() -> Result<Cli, ExitCode> {
    match Cli::try_parse() {
        Ok(cli) => Ok(cli),
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                // Help and version go to standard output, as usual.
                let _ = e.print();
                return Err(ExitCode::SUCCESS);
            }
            // Keep clap's first line (what is wrong, naming the flag) and drop the usage block.
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("palisade: {first} (see --help)");
            Err(ExitCode::from(1))
        }
    }
}

/// Checks a file given on the command line can be opened, naming the flag if not.
fn check_readable(flag: &str, path: Option<&Path>, kind: vmm::files::Kind) -> Result<(), Failure> {
    if let Some(path) = path {
        vmm::files::open_read(path, kind).map_err(|e| {
            let sep = if flag.ends_with('=') { "" } else { " " };
            Failure(format!("{flag}{sep}{}: {e}", path.display()))
        })?;
    }
    Ok(())
}

fn run(cli: Cli, start: Instant) -> Result<ExitCode, Failure> {
    let seccomp = sandbox::SeccompMode::parse(&cli.seccomp).ok_or_else(|| {
        Failure(format!(
            "--seccomp {}: expected true, false or log",
            cli.seccomp
        ))
    })?;
    sandbox::lockdown::set_seccomp_mode(seccomp);
    // Parsed first, to claim the tap descriptors `--net fd=` names before Palisade opens
    // anything that could take one of their numbers.
    let parsed = if cli.describes_vm() {
        let config = VmConfig::from_params(&cli.vm_params())?;
        for n in config
            .net
            .iter()
            .flatten()
            .flat_map(|n| n.fds.iter().flatten())
        {
            vmm::passed_fds::claim_inherited(*n)
                .map_err(|e| Failure(format!("--net fd={n}: {e}")))?;
        }
        // Bound now: no thread may make a socket once the filters are on.
        if config.serial.mode == config::ConsoleOutputMode::Socket {
            if let Some(path) = &config.serial.socket {
                vmm::serial_socket::bind_early(path)
                    .map_err(|e| Failure(format!("--serial socket={}: {e}", path.display())))?;
            }
        }
        Some(config)
    } else {
        None
    };
    if let Some(spec) = &cli.event_monitor {
        let out = open_event_monitor(spec)
            .map_err(|e| Failure(format!("--event-monitor {spec}: {e}")))?;
        vmm::events::init(out, start);
    }
    let log_file = match &cli.log_file {
        Some(path) => Some(
            vmm::files::open(
                Path::new(path),
                OpenOptions::new().create(true).append(true),
                0,
                vmm::files::Kind::Regular,
            )
            .map_err(|e| Failure(format!("--log-file {path}: {e}")))?,
        ),
        None => None,
    };
    if let Some(f) = &log_file {
        // A seccomp violation is reported there too; the logger keeps the file open.
        sandbox::seccomp::set_log_fd(std::os::fd::AsRawFd::as_raw_fd(f));
    }
    logger::init(cli.verbose, log_file, start);

    let vm_config = if let Some(config) = parsed {
        use vmm::files::Kind;
        check_readable("--kernel", config.payload.kernel.as_deref(), Kind::Regular)?;
        check_readable(
            "--initramfs",
            config.payload.initramfs.as_deref(),
            Kind::Regular,
        )?;
        check_readable("--rng src=", Some(config.rng.src.as_path()), Kind::Source)?;
        for disk in config.disks.iter().flatten() {
            check_readable("--disk path=", disk.path.as_deref(), Kind::Disk)?;
        }
        Some(config)
    } else if cli.api_socket.is_none() && cli.restore.is_none() {
        return Err(Failure(
            "nothing to run: give --kernel to boot a VM, or --api-socket to serve the API".into(),
        ));
    } else {
        None
    };

    let api_socket = match &cli.api_socket {
        Some(s) => {
            let cfg =
                ApiSocketConfig::parse(s).map_err(|e| Failure(format!("--api-socket: {e}")))?;
            Some(api::socket::bind(&cfg).map_err(|e| Failure(format!("--api-socket: {e}")))?)
        }
        None => None,
    };
    // While the process has one thread: the janitor that removes the socket at exit (the
    // confined VMM itself may not be allowed to) and releases KVM VMs off the VMM's exit and
    // reboot paths.
    let socket_path = api_socket.as_ref().and_then(|s| s.path());
    let janitor = sandbox::janitor::spawn(socket_path).map_err(|e| match socket_path {
        Some(path) => Failure(format!("--api-socket {}: {e}", path.display())),
        None => Failure(format!("cannot start the janitor process: {e}")),
    })?;
    // Before any thread starts, so that every thread inherits the mask and SIGTERM/SIGINT
    // reach the VMM's signalfd.
    vmm::vmm::block_termination_signals()?;
    let (control, mut server) = match &api_socket {
        Some(socket) => {
            let (sender, receiver) = vmm::control::request_channel()?;
            let listener = socket.try_clone_listener()?;
            let options = api::server::ServerOptions {
                confine: Some(Box::new(|| {
                    vmm::thread_policy::lock_down_api()
                        .map(|r| Box::new(r) as Box<dyn std::any::Any>)
                        .map_err(std::io::Error::other)
                })),
                ..Default::default()
            };
            let server = api::server::start_with(listener, sender, options)
                .map_err(|e| Failure(format!("cannot start the API server: {e}")))?;
            log::info!("API listening on {}", socket.describe());
            (Some(receiver), Some(server))
        }
        None => (None, None),
    };
    let restore = cli
        .restore
        .as_deref()
        .map(config::RestoreConfig::parse)
        .transpose()
        .map_err(|e| Failure(format!("--restore: {e}")))?;
    let needs_connector = api_socket.is_some()
        || restore.is_some()
        || vm_config
            .as_ref()
            .is_some_and(|c| c.fs.as_ref().is_some_and(|f| !f.is_empty()) || c.vsock.is_some());
    if needs_connector {
        vmm::connector::start_early().map_err(Failure)?;
    }
    let options = VmmOptions {
        no_shutdown: cli.no_shutdown,
        janitor: Some(std::sync::Arc::new(janitor)),
    };
    let mut vmm = Vmm::new(options, control).map_err(|e| Failure(format!("cannot start: {e}")))?;

    if let Some(config) = vm_config {
        vmm.handle(Request::Create(Box::new(config))).map_err(|e| {
            Failure(format!(
                "cannot create the VM: {}",
                e.messages.join(": ").trim_start_matches("vm.create: ")
            ))
        })?;
        vmm.handle(Request::Boot).map_err(|e| {
            Failure(format!(
                "cannot boot the VM: {}",
                e.messages.join(": ").trim_start_matches("vm.boot: ")
            ))
        })?;
    }

    if let Some(restore) = restore {
        vmm.handle(Request::Restore(restore)).map_err(|e| {
            Failure(format!(
                "cannot restore the VM: {}",
                e.messages.join(": ").trim_start_matches("vm.restore: ")
            ))
        })?;
    }

    vmm::events::emit("vmm", "starting");
    let reason = vmm.run();
    log::info!("exiting: {reason:?}");
    vmm::events::emit("vmm", "shutdown");
    if let Some(server) = server.as_mut() {
        server.stop();
    }
    if let Some(socket) = &api_socket {
        // Under Landlock this is refused; the janitor removes the socket once we are gone.
        if let Err(e) = socket.remove_file() {
            log::debug!("API socket left to the janitor: {e}");
        }
    }
    if let vmm::ExitReason::Fault(message) = &reason {
        eprintln!("palisade: {message}");
    }
    Ok(ExitCode::from(reason.exit_code() as u8))
}

/// The event monitor's file: `path=PATH` (created, or emptied) or `fd=N` (inherited).
fn open_event_monitor(spec: &str) -> Result<std::fs::File, String> {
    let o = config::option_parser::OptionParser::new(&["path", "fd"])
        .parse(spec)
        .map_err(|e| e.to_string())?;
    match (o.get("path"), o.get("fd")) {
        (Some(path), None) => vmm::files::open(
            Path::new(path),
            OpenOptions::new().write(true).create(true).truncate(true),
            0,
            vmm::files::Kind::Regular,
        )
        .map_err(|e| e.to_string()),
        (None, Some(fd)) => {
            let n: i32 = fd.parse().map_err(|_| format!("fd={fd}: not a number"))?;
            let n = vmm::passed_fds::claim_inherited(n).map_err(|e| e.to_string())?;
            vmm::passed_fds::take(n)
                .map(std::fs::File::from)
                .ok_or_else(|| format!("fd={fd}: not open"))
        }
        _ => Err("give one of path=PATH or fd=N".into()),
    }
}

fn main() -> ExitCode {
    let start = Instant::now();
    sandbox::libc_warmup::prime();
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    match run(cli, start) {
        Ok(code) => code,
        Err(Failure(message)) => {
            vmm::console::restore_terminal();
            eprintln!("palisade: {message}");
            ExitCode::from(1)
        }
    }
}
