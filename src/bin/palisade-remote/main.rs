//! palisade-remote: drives a running Palisade VMM (or Cloud Hypervisor) through its REST API
//! socket, with the same subcommands and arguments as Cloud Hypervisor's `ch-remote`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod bodies;

/// Remotely control a Palisade VMM through its API socket.
#[derive(Debug, Parser)]
#[command(name = "palisade-remote", version)]
struct Cli {
    /// Path of the VMM's HTTP API socket (a Unix domain socket).
    #[arg(long = "api-socket", value_name = "api-socket")]
    api_socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Add VFIO device
    AddDevice {
        /// "path=<device_path>,iommu=on|off,id=<device_id>,pci_segment=<segment_id>,pci_device_id=<pci_slot>"
        #[arg(value_name = "device_config")]
        config: String,
    },
    /// Add block device
    AddDisk {
        /// Disk options, as for palisade's --disk:
        /// "path=<image>,readonly=on|off,direct=on|off,id=<device_id>,num_queues=<n>,queue_size=<n>,serial=<serial_number>"
        #[arg(value_name = "disk_config")]
        disk_config: String,
    },
    /// Add virtio-fs backed fs device
    AddFs {
        /// "tag=<tag_name>,socket=<socket_path>,num_queues=<n>,queue_size=<n>,id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "fs_config")]
        config: String,
    },
    /// Add generic vhost-user device
    AddGenericVhostUser {
        /// "device_type=<number or name>,socket=<socket_path>,queue_sizes=[<sizes>],id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "generic_vhost_user_config")]
        config: String,
    },
    /// Add network device
    AddNet {
        /// Network options, as for palisade's --net:
        /// "tap=<if_name>,mac=<mac>,ip=<ipv4>,mask=<netmask>,fd=<[fd1,fd2,...]>,id=<device_id>,num_queues=<n>,queue_size=<n>,offload_tso=on|off,offload_ufo=on|off,offload_csum=on|off"
        #[arg(value_name = "net_config")]
        net_config: String,
    },
    /// Add persistent memory device
    AddPmem {
        /// "file=<backing_file_path>,size=<size>,iommu=on|off,discard_writes=on|off,id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "pmem_config")]
        config: String,
    },
    /// Add userspace device
    AddUserDevice {
        /// "socket=<socket_path>,id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "device_config")]
        config: String,
    },
    /// Add vDPA device
    AddVdpa {
        /// "path=<device_path>,num_queues=<n>,iommu=on|off,id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "vdpa_config")]
        config: String,
    },
    /// Add vsock device
    AddVsock {
        /// "cid=<context_id>,socket=<socket_path>,iommu=on|off,id=<device_id>,pci_segment=<segment_id>"
        #[arg(value_name = "vsock_config")]
        config: String,
    },
    /// Boot a created VM
    Boot,
    /// Create a coredump from VM
    Coredump {
        /// <destination_url> (file:///path)
        #[arg(value_name = "coredump_config")]
        destination_url: String,
    },
    /// Counters from the VM
    Counters,
    /// Create VM from a JSON configuration
    Create {
        /// File holding the VM configuration as JSON; `-` reads standard input
        #[arg(value_name = "path", default_value = "-")]
        path: String,
    },
    /// Delete a VM
    Delete,
    /// Info on the VM
    Info,
    /// Trigger NMI
    Nmi,
    /// Pause the VM
    Pause,
    /// Ping the VMM to check for API server availability
    Ping,
    /// Trigger a power button in the VM
    PowerButton,
    /// Reboot the VM
    Reboot,
    /// Receive a VM migration
    ReceiveMigration {
        /// "<receiver_url>" or "receiver_url=<url>[,tls_dir=<path>][,memory_mode=precopy|postcopy]"
        #[arg(value_name = "receive_migration_config")]
        config: String,
    },
    /// Remove VFIO and PCI device
    RemoveDevice {
        /// <device_id>
        #[arg(value_name = "id")]
        id: String,
    },
    /// Resize the VM
    Resize {
        /// New balloon size in bytes (supports K/M/G suffix)
        #[arg(long)]
        balloon: Option<String>,
        /// New vCPUs count
        #[arg(long)]
        cpus: Option<String>,
        /// New memory size in bytes (supports K/M/G suffix)
        #[arg(long)]
        memory: Option<String>,
    },
    /// Resize an attached disk
    ResizeDisk {
        /// Disk identifier
        #[arg(long)]
        disk: Option<String>,
        /// New disk size
        #[arg(long)]
        size: Option<String>,
    },
    /// Resize a memory zone
    ResizeZone {
        /// Memory zone identifier
        #[arg(long)]
        id: Option<String>,
        /// New memory zone size in bytes (supports K/M/G suffix)
        #[arg(long)]
        size: Option<String>,
    },
    /// Restore VM from a snapshot
    Restore {
        /// "source_url=<source_url>,prefault=on|off,memory_restore_mode=copy|ondemand,resume=true|false"
        #[arg(value_name = "restore_config")]
        config: String,
    },
    /// Resume the VM
    Resume,
    /// Initiate a VM migration
    SendMigration {
        /// "destination_url=<url>[,local=on|off,preserve_source=on|off,downtime_ms=<ms>,timeout_s=<s>,timeout_strategy=cancel|ignore,connections=<n>,tls_dir=<path>,memory_mode=precopy|postcopy]"
        #[arg(value_name = "send_migration_config")]
        config: String,
    },
    /// Shutdown the VM
    Shutdown,
    /// Shutdown the VMM
    ShutdownVmm,
    /// Create a snapshot from VM
    Snapshot {
        /// <destination_url> (file:///directory)
        #[arg(value_name = "snapshot_config")]
        destination_url: String,
    },
}

/// What to send: method, endpoint name and body.
struct Call {
    method: &'static str,
    endpoint: &'static str,
    body: Option<String>,
    /// Descriptors of this process sent with the request (`add-net fd=`).
    fds: Vec<i32>,
}

impl Call {
    fn get(endpoint: &'static str) -> Call {
        Call {
            method: "GET",
            endpoint,
            body: None,
            fds: Vec::new(),
        }
    }

    fn put(endpoint: &'static str) -> Call {
        Call {
            method: "PUT",
            endpoint,
            body: None,
            fds: Vec::new(),
        }
    }

    fn put_json(endpoint: &'static str, body: String) -> Call {
        Call {
            method: "PUT",
            endpoint,
            body: Some(body),
            fds: Vec::new(),
        }
    }
}

/// Reads the VM configuration for `create` from a file or, for `-`, standard input.
fn read_config(path: &str) -> Result<String, String> {
    if path == "-" {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| {
            format!("create: cannot read the VM configuration from standard input: {e}")
        })?;
        Ok(text)
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| format!("create: cannot read the VM configuration {path}: {e}"))
    }
}

/// The body `schema` makes of `config`, for `command`'s `endpoint`.
fn put_schema(
    command: &str,
    endpoint: &'static str,
    schema: &bodies::Schema,
    config: &str,
) -> Result<Call, String> {
    let body = bodies::build(schema, config).map_err(|e| format!("{command}: {e}"))?;
    Ok(Call::put_json(endpoint, body.to_string()))
}

/// A byte count with an optional K/M/G suffix, for `--memory` and friends.
fn size_arg(command: &str, flag: &str, value: &Option<String>) -> Result<Value, String> {
    match value {
        None => Ok(Value::Null),
        Some(v) => config::option_parser::parse_size(v)
            .map(|n| json!(n))
            .map_err(|e| format!("{command}: --{flag} {v}: {e}")),
    }
}

/// The API call a command makes.
fn call_for(command: &Command) -> Result<Call, String> {
    use bodies::*;
    Ok(match command {
        Command::Ping => Call::get("vmm.ping"),
        Command::Info => Call::get("vm.info"),
        Command::Counters => Call::get("vm.counters"),
        Command::Create { path } => Call::put_json("vm.create", read_config(path)?),
        Command::Boot => Call::put("vm.boot"),
        Command::Shutdown => Call::put("vm.shutdown"),
        Command::Reboot => Call::put("vm.reboot"),
        Command::Pause => Call::put("vm.pause"),
        Command::Resume => Call::put("vm.resume"),
        Command::Delete => Call::put("vm.delete"),
        Command::ShutdownVmm => Call::put("vmm.shutdown"),
        Command::Nmi => Call::put("vm.nmi"),
        Command::PowerButton => Call::put("vm.power-button"),
        Command::AddDisk { disk_config } => {
            let disk =
                config::DiskConfig::parse(disk_config).map_err(|e| format!("add-disk: {e}"))?;
            let body = serde_json::to_string(&disk).map_err(|e| format!("add-disk: {e}"))?;
            Call::put_json("vm.add-disk", body)
        }
        Command::AddNet { net_config } => {
            let net = config::NetConfig::parse(net_config).map_err(|e| format!("add-net: {e}"))?;
            let body = serde_json::to_string(&net).map_err(|e| format!("add-net: {e}"))?;
            // The descriptors `fd=` names are this process's: they go with the request as
            // SCM_RIGHTS data, and the body's numbers only say how many.
            let mut call = Call::put_json("vm.add-net", body);
            call.fds = net.fds.unwrap_or_default();
            call
        }
        Command::AddDevice { config } => {
            put_schema("add-device", "vm.add-device", &DEVICE, config)?
        }
        Command::AddFs { config } => put_schema("add-fs", "vm.add-fs", &FS, config)?,
        Command::AddGenericVhostUser { config } => put_schema(
            "add-generic-vhost-user",
            "vm.add-generic-vhost-user",
            &GENERIC_VHOST_USER,
            config,
        )?,
        Command::AddPmem { config } => put_schema("add-pmem", "vm.add-pmem", &PMEM, config)?,
        Command::AddUserDevice { config } => put_schema(
            "add-user-device",
            "vm.add-user-device",
            &USER_DEVICE,
            config,
        )?,
        Command::AddVdpa { config } => put_schema("add-vdpa", "vm.add-vdpa", &VDPA, config)?,
        Command::AddVsock { config } => put_schema("add-vsock", "vm.add-vsock", &VSOCK, config)?,
        Command::RemoveDevice { id } => {
            if id.is_empty() {
                return Err(
                    "remove-device: the device id is empty; give the id of a device".into(),
                );
            }
            Call::put_json("vm.remove-device", json!({ "id": id }).to_string())
        }
        Command::Resize {
            balloon,
            cpus,
            memory,
        } => {
            let cpus = match cpus {
                None => Value::Null,
                Some(c) => json!(c
                    .parse::<u32>()
                    .map_err(|e| format!("resize: --cpus {c}: {e}"))?),
            };
            let body = json!({
                "desired_vcpus": cpus,
                "desired_ram": size_arg("resize", "memory", memory)?,
                "desired_balloon": size_arg("resize", "balloon", balloon)?,
            });
            Call::put_json("vm.resize", body.to_string())
        }
        Command::ResizeDisk { disk, size } => {
            let body = json!({"id": disk, "desired_size": size_arg("resize-disk", "size", size)?});
            Call::put_json("vm.resize-disk", body.to_string())
        }
        Command::ResizeZone { id, size } => {
            let body = json!({"id": id, "desired_ram": size_arg("resize-zone", "size", size)?});
            Call::put_json("vm.resize-zone", body.to_string())
        }
        Command::Snapshot { destination_url } => Call::put_json(
            "vm.snapshot",
            json!({ "destination_url": destination_url }).to_string(),
        ),
        Command::Coredump { destination_url } => Call::put_json(
            "vm.coredump",
            json!({ "destination_url": destination_url }).to_string(),
        ),
        Command::Restore { config } => put_schema("restore", "vm.restore", &RESTORE, config)?,
        Command::SendMigration { config } => {
            let body = build_with_url(&SEND_MIGRATION, "destination_url", config)
                .map_err(|e| format!("send-migration: {e}"))?;
            Call::put_json("vm.send-migration", body.to_string())
        }
        Command::ReceiveMigration { config } => {
            let body = build_with_url(&RECEIVE_MIGRATION, "receiver_url", config)
                .map_err(|e| format!("receive-migration: {e}"))?;
            Call::put_json("vm.receive-migration", body.to_string())
        }
    })
}

/// Makes the call; returns what to print on success.
fn run(socket: &Path, command: &Command) -> Result<Option<String>, String> {
    let call = call_for(command)?;
    let path = format!("{}{}", api::API_PREFIX, call.endpoint);
    let body = call.body.as_deref();
    let response = api::client::request_with_fds(socket, call.method, &path, body, &call.fds, None)
        .map_err(|e| e.to_string())?;
    if !response.is_success() {
        return Err(response.error_line());
    }
    if response.body.trim().is_empty() {
        return Ok(None);
    }
    // Pretty-print JSON; anything else as it came.
    Ok(Some(
        match serde_json::from_str::<serde_json::Value>(&response.body) {
            Ok(value) => serde_json::to_string_pretty(&value).unwrap_or(response.body),
            Err(_) => response.body,
        },
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli.api_socket, &cli.command) {
        Ok(output) => {
            if let Some(text) = output {
                // A reader that went away (`| head`) is not an error of the call.
                use std::io::Write;
                let _ = writeln!(std::io::stdout(), "{text}");
            }
            ExitCode::SUCCESS
        }
        Err(message) => {
            // One line, whatever the messages held.
            let line = message.replace(['\n', '\r'], " ");
            eprintln!("palisade-remote: {line}");
            ExitCode::FAILURE
        }
    }
}
