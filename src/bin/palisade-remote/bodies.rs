//! The JSON bodies of palisade-remote's calls, built from ch-remote's `key=value` syntax.
//!
//! Disks and networks go through Palisade's own parsers (the same as `--disk`, `--net`).
//! The other devices, and the resize, snapshot, restore and migration calls, are described
//! by a table of their keys: each key's JSON name, type, and the default ch-remote sends
//! when it is not given, so that the body is the one Cloud Hypervisor expects.

use config::option_parser::{parse_bool, parse_int, parse_size, split_list, OptionParser};
use serde_json::{json, Map, Value};

/// How a value is written.
#[derive(Clone, Copy)]
pub enum Kind {
    /// A string, as given.
    Text,
    /// `on|off|true|false`.
    Bool,
    /// A whole number.
    Int,
    /// A byte count, with an optional K/M/G/T suffix.
    Size,
    /// `[a,b,…]` of whole numbers.
    IntList,
    /// One of the given words (case-insensitive), written as its JSON spelling.
    Choice(&'static [(&'static str, &'static str)]),
    /// A virtio device type: a number, or the name of one.
    DeviceType,
}

/// One key of a `key=value` configuration.
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    /// What ch-remote sends when the key is not given (`None`: nothing).
    pub default: Option<fn() -> Value>,
}

const fn key(name: &'static str, kind: Kind) -> Key {
    Key {
        name,
        kind,
        default: None,
    }
}

const fn with_default(name: &'static str, kind: Kind, default: fn() -> Value) -> Key {
    Key {
        name,
        kind,
        default: Some(default),
    }
}

fn zero() -> Value {
    json!(0)
}
fn one() -> Value {
    json!(1)
}
fn no() -> Value {
    json!(false)
}
fn null() -> Value {
    Value::Null
}
fn empty_list() -> Value {
    json!([])
}

const MEMORY_MODES: &[(&str, &str)] = &[("precopy", "Precopy"), ("postcopy", "Postcopy")];

/// A configuration a subcommand takes: its keys, and the accepted names.
pub struct Schema {
    pub what: &'static str,
    pub names: &'static [&'static str],
    pub keys: &'static [Key],
    /// Keys that must be given.
    pub required: &'static [&'static str],
}

macro_rules! schema {
    ($what:literal, [$($name:literal),*], [$($key:expr),* $(,)?], required [$($req:literal),*]) => {
        Schema {
            what: $what,
            names: &[$($name),*],
            keys: &[$($key),*],
            required: &[$($req),*],
        }
    };
}

pub const DEVICE: Schema = schema!(
    "device",
    ["path", "iommu", "id", "pci_segment", "pci_device_id", "x_nv_gpudirect_clique", "x_exclude_mmap_bars"],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("path", Kind::Text),
        key("iommu", Kind::Bool),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
        key("x_nv_gpudirect_clique", Kind::Int),
        with_default("x_exclude_mmap_bars", Kind::IntList, empty_list),
    ],
    required []
);

pub const FS: Schema = schema!(
    "fs",
    ["tag", "socket", "num_queues", "queue_size", "id", "pci_segment", "pci_device_id"],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("tag", Kind::Text),
        key("socket", Kind::Text),
        with_default("num_queues", Kind::Int, one),
        with_default("queue_size", Kind::Int, || json!(1024)),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required ["tag", "socket"]
);

pub const GENERIC_VHOST_USER: Schema = schema!(
    "generic vhost-user device",
    ["device_type", "socket", "queue_sizes", "id", "pci_segment", "pci_device_id"],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("socket", Kind::Text),
        key("queue_sizes", Kind::IntList),
        key("device_type", Kind::DeviceType),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required ["socket", "device_type", "queue_sizes"]
);

pub const PMEM: Schema = schema!(
    "pmem",
    [
        "file",
        "size",
        "iommu",
        "discard_writes",
        "id",
        "pci_segment",
        "pci_device_id"
    ],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("file", Kind::Text),
        key("size", Kind::Size),
        key("iommu", Kind::Bool),
        with_default("discard_writes", Kind::Bool, no),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required["file"]
);

pub const USER_DEVICE: Schema = schema!(
    "user device",
    ["socket", "id", "pci_segment", "pci_device_id"],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("socket", Kind::Text),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required["socket"]
);

pub const VDPA: Schema = schema!(
    "vDPA device",
    [
        "path",
        "num_queues",
        "iommu",
        "id",
        "pci_segment",
        "pci_device_id"
    ],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("path", Kind::Text),
        with_default("num_queues", Kind::Int, one),
        key("iommu", Kind::Bool),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required["path"]
);

pub const VSOCK: Schema = schema!(
    "vsock",
    ["cid", "socket", "iommu", "id", "pci_segment", "pci_device_id"],
    [
        with_default("pci_segment", Kind::Int, zero),
        key("cid", Kind::Int),
        key("socket", Kind::Text),
        key("iommu", Kind::Bool),
        key("id", Kind::Text),
        key("pci_device_id", Kind::Int),
    ],
    required ["cid", "socket"]
);

pub const RESTORE: Schema = schema!(
    "restore configuration",
    ["source_url", "prefault", "memory_restore_mode", "resume"],
    [
        key("source_url", Kind::Text),
        with_default("prefault", Kind::Bool, no),
        with_default(
            "memory_restore_mode",
            Kind::Choice(&[("copy", "Copy"), ("ondemand", "OnDemand")]),
            || json!("Copy")
        ),
        with_default("net_fds", Kind::Text, null),
        with_default("vfio_fds", Kind::Text, null),
        with_default("iommufd_fd", Kind::Text, null),
        with_default("resume", Kind::Bool, no),
        with_default("zone_updates", Kind::Text, empty_list),
    ],
    required["source_url"]
);

pub const SEND_MIGRATION: Schema = schema!(
    "send migration configuration",
    [
        "destination_url",
        "local",
        "preserve_source",
        "downtime_ms",
        "timeout_s",
        "timeout_strategy",
        "connections",
        "tls_dir",
        "memory_mode"
    ],
    [
        key("destination_url", Kind::Text),
        with_default("local", Kind::Bool, no),
        with_default("preserve_source", Kind::Bool, no),
        with_default("downtime_ms", Kind::Int, || json!(300)),
        with_default("timeout_s", Kind::Int, || json!(3600)),
        with_default(
            "timeout_strategy",
            Kind::Choice(&[("cancel", "Cancel"), ("ignore", "Ignore")]),
            || json!("Cancel")
        ),
        with_default("connections", Kind::Int, one),
        with_default("tls_dir", Kind::Text, null),
        with_default("memory_mode", Kind::Choice(MEMORY_MODES), || json!(
            "Precopy"
        )),
    ],
    required["destination_url"]
);

pub const RECEIVE_MIGRATION: Schema = schema!(
    "receive migration configuration",
    ["receiver_url", "tls_dir", "memory_mode"],
    [
        key("receiver_url", Kind::Text),
        with_default("tls_dir", Kind::Text, null),
        with_default("memory_mode", Kind::Choice(MEMORY_MODES), || json!(
            "Precopy"
        )),
        with_default("vfio_fds", Kind::Text, null),
        with_default("iommufd_fd", Kind::Text, null),
        with_default("zone_updates", Kind::Text, empty_list),
    ],
    required["receiver_url"]
);

/// Virtio device types by name, for `device_type=`.
const DEVICE_TYPES: &[(&str, u64)] = &[
    ("net", 1),
    ("block", 2),
    ("console", 3),
    ("rng", 4),
    ("balloon", 5),
    ("scsi", 8),
    ("9p", 9),
    ("gpu", 16),
    ("input", 18),
    ("vsock", 19),
    ("crypto", 20),
    ("iommu", 23),
    ("mem", 24),
    ("sound", 25),
    ("fs", 26),
    ("pmem", 27),
    ("i2c", 34),
    ("scmi", 32),
    ("gpio", 41),
];

fn value_of(kind: Kind, text: &str) -> Result<Value, String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    Ok(match kind {
        Kind::Text => json!(text),
        Kind::Bool => json!(parse_bool(text).map_err(|e| err(&e))?),
        Kind::Int => json!(parse_int::<u64>(text).map_err(|e| err(&e))?),
        Kind::Size => json!(parse_size(text).map_err(|e| err(&e))?),
        Kind::IntList => {
            let items = split_list(text).map_err(|e| err(&e))?;
            let numbers: Result<Vec<u64>, _> = items.into_iter().map(parse_int::<u64>).collect();
            json!(numbers.map_err(|e| err(&e))?)
        }
        Kind::Choice(choices) => {
            let lower = text.to_ascii_lowercase();
            let found = choices.iter().find(|(word, _)| *word == lower);
            let names: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
            json!(
                found
                    .ok_or_else(|| format!("expected one of {}", names.join(", ")))?
                    .1
            )
        }
        Kind::DeviceType => match parse_int::<u64>(text) {
            Ok(n) => json!(n),
            Err(_) => json!(
                DEVICE_TYPES
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(text))
                    .ok_or_else(|| format!("not a virtio device type: {text}"))?
                    .1
            ),
        },
    })
}

/// The JSON object `input` (`key=value,…`) describes under `schema`.
pub fn build(schema: &Schema, input: &str) -> Result<Value, String> {
    let parser = OptionParser::new(schema.names);
    let options = parser.parse(input).map_err(|e| e.to_string())?;
    for required in schema.required {
        if options.get(required).is_none_or(str::is_empty) {
            return Err(format!("{}: {required}= is required", schema.what));
        }
    }
    let mut body = Map::new();
    for k in schema.keys {
        match options.get(k.name) {
            Some(text) if !text.is_empty() || matches!(k.kind, Kind::Text) => {
                let value =
                    value_of(k.kind, text).map_err(|e| format!("{}={text}: {e}", k.name))?;
                body.insert(k.name.to_string(), value);
            }
            _ => {
                if let Some(default) = k.default {
                    body.insert(k.name.to_string(), default());
                }
            }
        }
    }
    Ok(Value::Object(body))
}

/// As [`build`], for a configuration that may also be just its URL (`url_key`'s value).
pub fn build_with_url(schema: &Schema, url_key: &str, input: &str) -> Result<Value, String> {
    if input.contains('=') {
        build(schema, input)
    } else {
        build(schema, &format!("{url_key}={input}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_follow_the_schemas() {
        let v = build(&VSOCK, "cid=3,socket=/v.sock").unwrap();
        assert_eq!(v, json!({"pci_segment": 0, "cid": 3, "socket": "/v.sock"}));
        let v = build(&PMEM, "file=/p,size=1M,discard_writes=on").unwrap();
        assert_eq!(v["size"], json!(1 << 20));
        assert_eq!(v["discard_writes"], json!(true));
        let v = build(
            &GENERIC_VHOST_USER,
            "socket=/g,device_type=fs,queue_sizes=[8,8]",
        )
        .unwrap();
        assert_eq!(v["device_type"], json!(26));
        assert_eq!(v["queue_sizes"], json!([8, 8]));
        let v = build_with_url(&SEND_MIGRATION, "destination_url", "unix:/m").unwrap();
        assert_eq!(v["destination_url"], json!("unix:/m"));
        assert_eq!(v["timeout_strategy"], json!("Cancel"));
        assert!(build(&VSOCK, "cid=3")
            .unwrap_err()
            .contains("socket= is required"));
        assert!(build(&VSOCK, "cid=x,socket=/s")
            .unwrap_err()
            .starts_with("cid=x"));
        assert!(build(&VSOCK, "cid=3,socket=/s,bogus=1").is_err());
        let e = build(&RESTORE, "source_url=file:///s,memory_restore_mode=lazy").unwrap_err();
        assert!(e.contains("copy, ondemand"), "{e}");
    }
}
