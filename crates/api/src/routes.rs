//! The endpoints of the API (every one Cloud Hypervisor's API has), which of them Palisade
//! serves, and the [`Request`] each served one becomes.

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
    not_yet("vm.power-button"),
    not_yet("vm.resize"),
    not_yet("vm.resize-disk"),
    not_yet("vm.resize-zone"),
    not_yet("vm.add-device"),
    served("vm.remove-device", "PUT"),
    served("vm.add-disk", "PUT"),
    not_yet("vm.add-fs"),
    not_yet("vm.add-generic-vhost-user"),
    not_yet("vm.add-pmem"),
    served("vm.add-net", "PUT"),
    not_yet("vm.add-vsock"),
    not_yet("vm.add-vdpa"),
    not_yet("vm.add-user-device"),
    not_yet("vm.snapshot"),
    not_yet("vm.coredump"),
    not_yet("vm.nmi"),
    not_yet("vm.restore"),
    not_yet("vm.receive-migration"),
    not_yet("vm.send-migration"),
];

/// The endpoint at `path` (a full path such as `/api/v1/vm.boot`).
pub fn find(path: &str) -> Option<&'static Endpoint> {
    let name = path.strip_prefix(crate::API_PREFIX)?;
    ENDPOINTS.iter().find(|e| e.name == name)
}

/// The request for the VMM that a call of the served endpoint `name` with `body` (empty when
/// there is none) makes. Endpoints that take no body ignore it.
pub fn request_for(name: &str, body: &[u8]) -> Result<Request, RequestError> {
    Ok(match name {
        "vmm.ping" => Request::Ping,
        "vmm.shutdown" => Request::ShutdownVmm,
        "vm.create" => Request::Create(Box::new(json_body(name, "VM configuration", body)?)),
        "vm.add-disk" => Request::AddDisk(Box::new(json_body(name, "disk configuration", body)?)),
        "vm.add-net" => Request::AddNet(Box::new(json_body(name, "network configuration", body)?)),
        "vm.remove-device" => {
            let RemoveDevice { id } = json_body(name, "device to remove", body)?;
            Request::RemoveDevice(id)
        }
        "vm.boot" => Request::Boot,
        "vm.shutdown" => Request::Shutdown,
        "vm.reboot" => Request::Reboot,
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
                    "vm.add-net" => &br#"{"tap": "tap0"}"#[..],
                    "vm.remove-device" => &br#"{"id": "d"}"#[..],
                    _ => b"",
                };
                request_for(e.name, body).unwrap();
            }
        }
        assert_eq!(find("/api/v1/vm.nope"), None);
        assert_eq!(find("/api/v2/vm.boot"), None);
        assert_eq!(find("/vm.boot"), None);
    }

    #[test]
    fn vm_create_bodies_are_checked() {
        let message = |body: &str| {
            request_for("vm.create", body.as_bytes())
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
        match request_for("vm.create", br#"{"payload": {"kernel": "/k"}}"#).unwrap() {
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
