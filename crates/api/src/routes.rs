//! The endpoints of the API (every one Cloud Hypervisor's API has), which of them Palisade
//! serves, and the [`Request`] each served one becomes.

use std::os::fd::OwnedFd;

use config::{NetConfig, VmConfig};
use serde_json::error::Category;
use vmm::control::{ErrorKind, Request, RequestError};

/// One endpoint, `/api/v1/<name>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The name after the prefix, e.g. `vm.boot`.
    pub name: &'static str,
    /// The one HTTP method it accepts.
    pub method: &'static str,
    /// Whether Palisade serves it; the others answer 501.
    pub served: bool,
}

const fn served(name: &'static str, method: &'static str) -> Endpoint {
    Endpoint {
        name,
        method,
        served: true,
    }
}

const fn not_yet(name: &'static str) -> Endpoint {
    Endpoint {
        name,
        method: "PUT",
        served: false,
    }
}

/// Every endpoint: first those Palisade serves, then those it answers with 501.
pub const ENDPOINTS: &[Endpoint] = &[
    served("vmm.ping", "GET"),
    served("vmm.shutdown", "PUT"),
    served("vm.create", "PUT"),
    served("vm.boot", "PUT"),
    served("vm.shutdown", "PUT"),
    served("vm.reboot", "PUT"),
    served("vm.pause", "PUT"),
    served("vm.resume", "PUT"),
    served("vm.delete", "PUT"),
    served("vm.info", "GET"),
    served("vm.counters", "GET"),
    served("vm.power-button", "PUT"),
    served("vm.resize", "PUT"),
    served("vm.resize-disk", "PUT"),
    served("vm.resize-zone", "PUT"),
    not_yet("vm.add-device"),
    served("vm.remove-device", "PUT"),
    served("vm.add-disk", "PUT"),
    served("vm.add-fs", "PUT"),
    not_yet("vm.add-generic-vhost-user"),
    served("vm.add-pmem", "PUT"),
    served("vm.add-net", "PUT"),
    served("vm.add-vsock", "PUT"),
    not_yet("vm.add-vdpa"),
    not_yet("vm.add-user-device"),
    served("vm.snapshot", "PUT"),
    served("vm.coredump", "PUT"),
    served("vm.nmi", "PUT"),
    served("vm.restore", "PUT"),
    served("vm.receive-migration", "PUT"),
    served("vm.send-migration", "PUT"),
];

/// The endpoint at `path` (a full path such as `/api/v1/vm.boot`).
pub fn find(path: &str) -> Option<&'static Endpoint> {
    let name = path.strip_prefix(crate::API_PREFIX)?;
    ENDPOINTS.iter().find(|e| e.name == name)
}

/// The request for the VMM that a call of the served endpoint `name` with `body` (empty when
/// there is none) and the descriptors `fds` sent with it (`SCM_RIGHTS`) makes. Endpoints
/// that take no body ignore it; only `vm.create` and `vm.add-net` take descriptors (taps).
pub fn request_for(name: &str, body: &[u8], fds: Vec<OwnedFd>) -> Result<Request, RequestError> {
    let takes_fds = matches!(name, "vm.create" | "vm.add-net");
    if !takes_fds && !fds.is_empty() {
        return Err(RequestError::new(
            ErrorKind::BadRequest,
            format!(
                "{name}: takes no file descriptors, but {} came with the request",
                fds.len()
            ),
        ));
    }
    Ok(match name {
        "vmm.ping" => Request::Ping,
        "vmm.shutdown" => Request::ShutdownVmm,
        "vm.create" => {
            let mut config: VmConfig = json_body(name, "VM configuration", body)?;
            let nets = config.net.iter_mut().flatten();
            attach_fds(name, nets.filter(|n| n.fds.is_some()), fds)?;
            Request::Create(Box::new(config))
        }
        "vm.add-disk" => Request::AddDisk(Box::new(json_body(name, "disk configuration", body)?)),
        "vm.add-fs" => Request::AddFs(Box::new(json_body(name, "fs configuration", body)?)),
        "vm.add-vsock" => {
            Request::AddVsock(Box::new(json_body(name, "vsock configuration", body)?))
        }
        "vm.add-pmem" => Request::AddPmem(Box::new(json_body(name, "pmem configuration", body)?)),
        "vm.add-net" => {
            let mut net: NetConfig = json_body(name, "network configuration", body)?;
            // Descriptors sent without `fds` in the body are the device's taps all the same,
            // as Cloud Hypervisor takes them.
            if net.fds.is_none() && !fds.is_empty() {
                net.fds = Some(Vec::new());
            }
            attach_fds(
                name,
                std::iter::once(&mut net).filter(|n| n.fds.is_some()),
                fds,
            )?;
            Request::AddNet(Box::new(net))
        }
        "vm.remove-device" => {
            let RemoveDevice { id } = json_body(name, "device to remove", body)?;
            Request::RemoveDevice(id)
        }
        "vm.boot" => Request::Boot,
        "vm.shutdown" => Request::Shutdown,
        "vm.reboot" => Request::Reboot,
        "vm.power-button" => Request::PowerButton,
        "vm.nmi" => Request::Nmi,
        "vm.coredump" => {
            let Destination { destination_url } = json_body(name, "destination", body)?;
            Request::Coredump(destination_url)
        }
        "vm.snapshot" => {
            let Destination { destination_url } = json_body(name, "snapshot configuration", body)?;
            Request::Snapshot(destination_url)
        }
        "vm.restore" => Request::Restore(json_body(name, "restore configuration", body)?),
        "vm.send-migration" => {
            Request::SendMigration(json_body(name, "send migration configuration", body)?)
        }
        "vm.receive-migration" => {
            Request::ReceiveMigration(json_body(name, "receive migration configuration", body)?)
        }
        "vm.resize-disk" => {
            let ResizeDisk { id, desired_size } = json_body(name, "disk resize", body)?;
            Request::ResizeDisk(id, desired_size)
        }
        "vm.resize" => {
            let resize: vmm::control::Resize = json_body(name, "resize", body)?;
            if resize == vmm::control::Resize::default() {
                return Err(RequestError::new(
                    ErrorKind::BadRequest,
                    format!("{name}: nothing to resize: give desired_vcpus, desired_ram or desired_balloon"),
                ));
            }
            Request::Resize(resize)
        }
        "vm.resize-zone" => {
            let ResizeZone { id, desired_ram } = json_body(name, "zone resize", body)?;
            Request::ResizeZone(id, desired_ram)
        }
        "vm.pause" => Request::Pause,
        "vm.resume" => Request::Resume,
        "vm.delete" => Request::Delete,
        "vm.info" => Request::Info,
        "vm.counters" => Request::Counters,
        _ => {
            return Err(RequestError::new(
                ErrorKind::NotFound,
                format!("{name}: not an endpoint Palisade serves"),
            ))
        }
    })
}

/// Hands `fds`, in order, to the `nets` that name descriptors: each takes as many as its
/// `fds` lists (or all, for one that lists none), and its numbers become those of the
/// descriptors received, kept for the VMM to adopt ([`vmm::passed_fds`]). Numbers in a body
/// without descriptors sent with it are refused: they would name descriptors of Palisade's
/// own.
fn attach_fds<'a>(
    endpoint: &str,
    nets: impl Iterator<Item = &'a mut NetConfig>,
    fds: Vec<OwnedFd>,
) -> Result<(), RequestError> {
    let bad = |message: String| RequestError::new(ErrorKind::BadRequest, message);
    let mut nets: Vec<&mut NetConfig> = nets.collect();
    let wanted: usize = nets
        .iter()
        .map(|n| n.fds.as_ref().map_or(0, Vec::len))
        .sum();
    let open_ended = nets.len() == 1 && nets[0].fds.as_ref().is_some_and(Vec::is_empty);
    if fds.is_empty() && wanted > 0 {
        return Err(bad(format!(
            "{endpoint}: the body names file descriptors ({wanted}), but none came with the \
             request: send the taps with it as SCM_RIGHTS ancillary data"
        )));
    }
    if !open_ended && wanted != fds.len() {
        return Err(bad(format!(
            "{endpoint}: the body names {wanted} file descriptor(s), but {} came with the \
             request",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    for net in &mut nets {
        let count = match net.fds.as_ref().map_or(0, Vec::len) {
            0 => fds.len(),
            n => n,
        };
        net.fds = Some(
            fds.by_ref()
                .take(count)
                .map(vmm::passed_fds::give)
                .collect(),
        );
    }
    Ok(())
}

/// The body of `vm.coredump` (and `vm.snapshot`).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Destination {
    destination_url: String,
}

/// The body of `vm.resize-disk`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeDisk {
    id: String,
    desired_size: u64,
}

/// The body of `vm.resize-zone`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeZone {
    id: String,
    desired_ram: u64,
}

/// The body of `vm.remove-device`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveDevice {
    id: String,
}

/// The JSON body of `endpoint` (a `what`), with a message that names what is wrong.
fn json_body<T: serde::de::DeserializeOwned>(
    endpoint: &str,
    what: &str,
    body: &[u8],
) -> Result<T, RequestError> {
    let bad = |message: String| RequestError::new(ErrorKind::BadRequest, message);
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(format!(
            "{endpoint}: the request has no body; send the {what} as JSON \
             (Content-Type: application/json)"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        bad(match e.classify() {
            Category::Syntax | Category::Eof => {
                format!("{endpoint}: the body is not valid JSON: {e}")
            }
            Category::Data | Category::Io => format!("{endpoint}: invalid {what}: {e}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_unique_and_found_by_path() {
        for (i, e) in ENDPOINTS.iter().enumerate() {
            assert!(ENDPOINTS[..i].iter().all(|o| o.name != e.name));
            assert_eq!(find(&format!("/api/v1/{}", e.name)), Some(e));
            if e.served {
                let body = match e.name {
                    "vm.create" => &br#"{"payload": {"kernel": "/k"}}"#[..],
                    "vm.add-disk" => &br#"{"path": "/d"}"#[..],
                    "vm.add-pmem" => &br#"{"file": "/p"}"#[..],
                    "vm.add-fs" => &br#"{"tag": "t", "socket": "/s"}"#[..],
                    "vm.add-vsock" => &br#"{"cid": 3, "socket": "/s"}"#[..],
                    "vm.add-net" => &br#"{"tap": "tap0"}"#[..],
                    "vm.remove-device" => &br#"{"id": "d"}"#[..],
                    "vm.resize-disk" => &br#"{"id": "d", "desired_size": 512}"#[..],
                    "vm.coredump" | "vm.snapshot" => &br#"{"destination_url": "file:///c"}"#[..],
                    "vm.restore" => &br#"{"source_url": "file:///s"}"#[..],
                    "vm.send-migration" => &br#"{"destination_url": "unix:/m"}"#[..],
                    "vm.receive-migration" => &br#"{"receiver_url": "unix:/m"}"#[..],
                    "vm.resize" => &br#"{"desired_vcpus": 2}"#[..],
                    "vm.resize-zone" => &br#"{"id": "z", "desired_ram": 1}"#[..],
                    _ => b"",
                };
                request_for(e.name, body, Vec::new()).unwrap();
            }
        }
        assert_eq!(find("/api/v1/vm.nope"), None);
        assert_eq!(find("/api/v2/vm.boot"), None);
        assert_eq!(find("/vm.boot"), None);
    }

    #[test]
    fn vm_create_bodies_are_checked() {
        let message = |body: &str| {
            request_for("vm.create", body.as_bytes(), Vec::new())
                .unwrap_err()
                .messages[0]
                .clone()
        };
        assert!(message("").contains("has no body"));
        assert!(message("{").contains("not valid JSON"));
        let unknown = message(r#"{"payload": {}, "cpuz": 1}"#);
        assert!(
            unknown.contains("invalid VM configuration: unknown field `cpuz`"),
            "{unknown}"
        );
        let wrong_type = message(r#"{"payload": {}, "memory": {"size": "big"}}"#);
        assert!(wrong_type.contains("invalid type"), "{wrong_type}");
        match request_for("vm.create", br#"{"payload": {"kernel": "/k"}}"#, Vec::new()).unwrap() {
            Request::Create(config) => {
                assert_eq!(
                    config.payload.kernel.as_deref(),
                    Some(std::path::Path::new("/k"))
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
