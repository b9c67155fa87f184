//! palisade-remote: drives a running Palisade VMM through its REST API socket, with the same
//! subcommands and arguments as Cloud Hypervisor's `ch-remote`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Check that the VMM's API answers, and show its version
    Ping,
    /// Show the VM's configuration and state
    Info,
    /// Show the VM's device counters
    Counters,
    /// Create the VM from a JSON configuration
    Create {
        /// File holding the VM configuration as JSON; `-` reads standard input
        #[arg(value_name = "path", default_value = "-")]
        path: String,
    },
    /// Boot the created VM
    Boot,
    /// Shut the VM down
    Shutdown,
    /// Reboot the VM
    Reboot,
    /// Pause the VM
    Pause,
    /// Resume the paused VM
    Resume,
    /// Delete the VM
    Delete,
    /// Shut the VMM down
    ShutdownVmm,
    /// Add a block device to the VM
    AddDisk {
        /// Disk options, as for palisade's --disk:
        /// path=<image>,readonly=on|off,direct=on|off,id=<device_id>,num_queues=<n>,queue_size=<n>,serial=<serial_number>
        #[arg(value_name = "disk_config")]
        disk_config: String,
    },
    /// Add a network device to the VM
    AddNet {
        /// Network options, as for palisade's --net:
        /// tap=<if_name>,mac=<mac>,ip=<ipv4>,mask=<netmask>,id=<device_id>,num_queues=<n>,queue_size=<n>
        #[arg(value_name = "net_config")]
        net_config: String,
    },
    /// Remove a device from the VM
    RemoveDevice {
        /// Identifier of the device to remove
        #[arg(value_name = "id")]
        id: String,
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

/// The API call a command makes.
fn call_for(command: &Command) -> Result<Call, String> {
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
        Command::RemoveDevice { id } => {
            if id.is_empty() {
                return Err(
                    "remove-device: the device id is empty; give the id of a device".into(),
                );
            }
            Call::put_json(
                "vm.remove-device",
                serde_json::json!({ "id": id }).to_string(),
            )
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
                println!("{text}");
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
