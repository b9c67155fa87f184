//! JSON in and out: round trips, defaults, unknown fields, Cloud Hypervisor compatibility.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::*;

fn round_trip(c: &VmConfig) {
    let text = serde_json::to_string(c).unwrap();
    let back: VmConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, c, "{text}");
}

fn parse(v: Value) -> Result<VmConfig, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn full() -> VmConfig {
    VmConfig {
        cpus: CpusConfig {
            max_phys_bits: 40,
            ..CpusConfig::new(2, 4)
        },
        memory: MemoryConfig::with_size(1 << 30),
        payload: PayloadConfig {
            kernel: Some("/boot/vmlinux".into()),
            cmdline: Some("console=ttyS0".into()),
            initramfs: Some("/boot/initrd".into()),
            ..PayloadConfig::default()
        },
        serial: ConsoleConfig::with_file("/tmp/serial.log"),
        console: ConsoleConfig::with_mode(ConsoleOutputMode::Off),
        disks: Some(vec![DiskConfig {
            readonly: true,
            id: Some("root".into()),
            serial: Some("SN".into()),
            ..DiskConfig::with_path("/img/root.raw")
        }]),
        net: Some(vec![NetConfig {
            tap: Some("tap0".into()),
            mac: Some("52:54:00:12:34:56".into()),
            ip: Some("192.168.249.1".into()),
            mask: Some("255.255.255.0".into()),
            num_queues: 4,
            ..NetConfig::default()
        }]),
        rng: RngConfig::with_src("/dev/random"),
        landlock_enable: true,
        landlock_rules: Some(vec![LandlockConfig {
            path: "/tmp".into(),
            access: "rw".into(),
        }]),
        ..VmConfig::default()
    }
}

#[test]
fn round_trips() {
    round_trip(&VmConfig::default());
    round_trip(&full());
    // Non-default compatibility values survive too.
    let mut c = full();
    c.cpus.nested = false;
    c.cpus.core_scheduling = CoreScheduling::Vcpu;
    c.cpus.topology = Some(CpuTopology {
        threads_per_core: 2,
        cores_per_die: 1,
        dies_per_package: 1,
        packages: 1,
    });
    c.memory.thp = false;
    c.memory.hotplug_method = HotplugMethod::VirtioMem;
    c.watchdog = true;
    c.balloon = Some(BalloonConfig {
        size: 4096,
        deflate_on_oom: true,
        free_page_reporting: false,
    });
    c.fs = Some(vec![FsConfig::new("t", "/s")]);
    c.debug_console = Some(DebugConsoleConfig {
        file: None,
        mode: ConsoleOutputMode::Off,
        iobase: Some(0xe9),
    });
    if let Some(disks) = c.disks.as_mut() {
        disks[0].sparse = false;
        disks[0].image_type = Some(ImageType::Raw);
        disks[0].lock_granularity = Some(LockGranularity::Full);
    }
    if let Some(net) = c.net.as_mut() {
        net[0].offload_tso = false;
        net[0].vhost_mode = VhostMode::Server;
        net[0].fds = Some(vec![3, 4]);
    }
    round_trip(&c);
}

#[test]
fn parsed_params_round_trip() {
    let c = VmConfig::from_params(&VmParams {
        kernel: Some("/k".into()),
        cpus: Some("boot=2".into()),
        disks: vec!["path=/a,id=a".into()],
        net: vec!["fd=[3,4]".into()],
        ..VmParams::default()
    })
    .unwrap();
    round_trip(&c);
}

#[test]
fn minimal_body_gets_ch_defaults() {
    let c = parse(json!({"payload": {"kernel": "/k"}})).unwrap();
    assert_eq!(c.serial.mode, ConsoleOutputMode::Null);
    assert_eq!(c.console.mode, ConsoleOutputMode::Tty);
    assert_eq!(c.cpus, CpusConfig::default());
    assert_eq!(c.memory.size, DEFAULT_MEMORY_SIZE);
    assert_eq!(c.rng.src, PathBuf::from(DEFAULT_RNG_SOURCE));
    assert_eq!(c.cpus.max_phys_bits, 46);
    assert!(!c.landlock_enable);
    assert!(c.validate().is_ok());
}

#[test]
fn payload_is_required() {
    let e = parse(json!({})).unwrap_err();
    assert!(e.contains("missing field `payload`"), "{e}");
}

#[test]
fn device_defaults_from_json() {
    let c = parse(json!({
        "payload": {"kernel": "/k"},
        "disks": [{"path": "/d"}],
        "net": [{}],
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2}
    }))
    .unwrap();
    let disks = c.disks.as_ref().unwrap();
    assert_eq!(disks[0], DiskConfig::with_path("/d"));
    assert_eq!(c.net.as_ref().unwrap()[0], NetConfig::default());
    assert_eq!(c.cpus, CpusConfig::new(2, 2));
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let cases = [
        (json!({"payload": {"kernel": "/k"}, "bogus": 1}), "bogus"),
        (
            json!({"payload": {"kernel": "/k", "kernal": "/x"}}),
            "kernal",
        ),
        (
            json!({"payload": {}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "cores": 2}}),
            "cores",
        ),
        (
            json!({"payload": {}, "memory": {"size": 1048576, "balloon": true}}),
            "balloon",
        ),
        (
            json!({"payload": {}, "disks": [{"path": "/d", "disable_whatever": true}]}),
            "disable_whatever",
        ),
        (json!({"payload": {}, "net": [{"tapp": "x"}]}), "tapp"),
        (
            json!({"payload": {}, "rng": {"src": "/dev/urandom", "rate": 1}}),
            "rate",
        ),
        (
            json!({"payload": {}, "serial": {"mode": "Tty", "path": "/x"}}),
            "path",
        ),
        (
            json!({"payload": {}, "landlock_rules": [{"path": "/", "access": "r", "x": 1}]}),
            "x",
        ),
        (
            json!({"payload": {}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "features": {"avx": true}}}),
            "avx",
        ),
        (
            json!({"payload": {}, "debug_console": {"mode": "Off", "port": 1}}),
            "port",
        ),
    ];
    for (body, field) in cases {
        let e = parse(body).unwrap_err();
        assert!(e.contains(&format!("unknown field `{field}`")), "{e}");
    }
}

#[test]
fn bad_enum_values_are_rejected() {
    let e = parse(json!({"payload": {}, "serial": {"mode": "Serial"}})).unwrap_err();
    assert!(e.contains("unknown variant `Serial`"), "{e}");
    let e = parse(json!({"payload": {}, "memory": {"size": 1048576, "hotplug_method": "Dimm"}}))
        .unwrap_err();
    assert!(e.contains("unknown variant `Dimm`"), "{e}");
}

/// A body shaped like what Cloud Hypervisor's clients send (and what its `vm.info` returns),
/// with every compatibility field present at its default or null.
fn ch_style_body() -> Value {
    json!({
        "cpus": {
            "boot_vcpus": 2, "max_vcpus": 2, "topology": null, "kvm_hyperv": false,
            "max_phys_bits": 46, "affinity": null, "features": {"amx": false}, "nested": true,
            "core_scheduling": "Vm"
        },
        "memory": {
            "size": 536870912, "mergeable": false, "hotplug_method": "Acpi", "hotplug_size": null,
            "hotplugged_size": null, "shared": false, "hugepages": false, "hugepage_size": null,
            "prefault": false, "reserve": false, "zones": null, "thp": true
        },
        "payload": {
            "firmware": null, "kernel": "/boot/vmlinux", "cmdline": "console=ttyS0",
            "initramfs": null, "igvm": null, "host_data": null
        },
        "rate_limit_groups": null,
        "disks": [{
            "path": "/img/root.raw", "readonly": false, "direct": false, "iommu": false,
            "num_queues": 1, "queue_size": 128, "vhost_user": false, "vhost_socket": null,
            "rate_limit_group": null, "rate_limiter_config": null, "id": "_disk0",
            "pci_segment": 0, "pci_device_id": null, "serial": null, "queue_affinity": null,
            "backing_files": false, "sparse": true, "image_type": "Raw",
            "lock_granularity": "ByteRange"
        }],
        "net": [{
            "tap": null, "ip": "192.168.249.1", "mask": "255.255.255.0",
            "mac": "52:54:00:a1:b2:c3", "host_mac": null, "mtu": null, "iommu": false,
            "num_queues": 2, "queue_size": 256, "vhost_user": false, "vhost_socket": null,
            "vhost_mode": "Client", "id": "_net1", "fds": null, "rate_limiter_config": null,
            "pci_segment": 0, "pci_device_id": null, "offload_tso": true, "offload_ufo": true,
            "offload_csum": true
        }],
        "rng": {"src": "/dev/urandom", "iommu": false, "id": null, "pci_segment": 0,
                "pci_device_id": null},
        "balloon": null,
        "fs": null,
        "generic_vhost_user": null,
        "pmem": null,
        "serial": {"file": null, "socket": null, "mode": "Null"},
        "console": {"file": null, "socket": null, "mode": "Tty", "iommu": false, "id": null,
                    "pci_segment": 0, "pci_device_id": null},
        "debug_console": {"file": null, "mode": "Off", "iobase": 233},
        "devices": null,
        "user_devices": null,
        "vdpa": null,
        "vsock": null,
        "numa": null,
        "iommu": false,
        "watchdog": false,
        "rtc": null,
        "pvpanic": false,
        "pci_segments": null,
        "platform": null,
        "tpm": null,
        "landlock_enable": false,
        "landlock_rules": null
    })
}

#[test]
fn ch_style_body_with_default_compat_fields_is_accepted() {
    let c = parse(ch_style_body()).unwrap();
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.cpus, CpusConfig::new(2, 2));
    assert_eq!(c.disks.as_ref().unwrap()[0].id.as_deref(), Some("_disk0"));
    assert_eq!(
        c.net.as_ref().unwrap()[0].mac.as_deref(),
        Some("52:54:00:a1:b2:c3")
    );
    round_trip(&c);
}

#[test]
fn ch_style_body_with_non_default_compat_field_is_refused_by_validate() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/cpus/nested",
            json!(false),
            "cpus.nested: not supported by Palisade",
        ),
        (
            "/memory/mergeable",
            json!(true),
            "memory.mergeable: not supported by Palisade",
        ),
        (
            "/disks/0/vhost_user",
            json!(true),
            "disks[0].vhost_user: not supported by Palisade",
        ),
        (
            "/disks/0/image_type",
            json!("Qcow2"),
            "disks[0].image_type=Qcow2: not supported by Palisade",
        ),
        (
            "/net/0/mtu",
            json!(1400),
            "net[0].mtu: not supported by Palisade",
        ),
        (
            "/pmem",
            json!([{"file": "/p", "iommu": true}]),
            "pmem[0].iommu: not supported by Palisade",
        ),
        (
            "/platform",
            json!({"iommu_segments": [1]}),
            "platform.iommu_segments: not supported by Palisade",
        ),
        (
            "/payload/firmware",
            json!("/fw"),
            "payload.firmware: not supported by Palisade",
        ),
        (
            "/console/mode",
            json!("Socket"),
            "console.mode=Socket: not supported by Palisade",
        ),
    ];
    for (pointer, value, want) in cases {
        let mut body = ch_style_body();
        if let Some(slot) = body.pointer_mut(pointer) {
            *slot = value;
        }
        let c = parse(body).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with(want), "{pointer}: {e}");
    }
}

#[test]
fn output_omits_default_compat_fields() {
    let c = parse(ch_style_body()).unwrap();
    let out = serde_json::to_value(&c).unwrap();
    let obj = out.as_object().unwrap();
    for absent in [
        "balloon",
        "fs",
        "pmem",
        "iommu",
        "watchdog",
        "pvpanic",
        "platform",
        "tpm",
        "vsock",
        "rtc",
        "numa",
        "devices",
        "rate_limit_groups",
        "landlock_rules",
    ] {
        assert!(!obj.contains_key(absent), "{absent} in {out}");
    }
    // debug_console was given (at its default), so it is echoed.
    assert!(obj.contains_key("debug_console"));
    let cpus = out["cpus"].as_object().unwrap();
    for absent in [
        "nested",
        "topology",
        "kvm_hyperv",
        "features",
        "core_scheduling",
        "affinity",
    ] {
        assert!(!cpus.contains_key(absent), "cpus.{absent} in {out}");
    }
    assert_eq!(out["cpus"]["max_phys_bits"], json!(46));
    let memory = out["memory"].as_object().unwrap();
    assert_eq!(memory.keys().collect::<Vec<_>>(), ["size"]);
    let disk = out["disks"][0].as_object().unwrap();
    for absent in [
        "iommu",
        "vhost_user",
        "sparse",
        "pci_segment",
        "queue_affinity",
    ] {
        assert!(!disk.contains_key(absent), "disk.{absent} in {out}");
    }
    let net = out["net"][0].as_object().unwrap();
    for absent in ["offload_tso", "vhost_mode", "mtu", "pci_segment"] {
        assert!(!net.contains_key(absent), "net.{absent} in {out}");
    }
    assert_eq!(
        out["serial"],
        json!({"mode": "Null"}),
        "console output carries only what is set"
    );
}

#[test]
fn default_config_serializes_cleanly() {
    let out = serde_json::to_value(VmConfig::default()).unwrap();
    assert_eq!(
        out,
        json!({
            "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "max_phys_bits": 46},
            "memory": {"size": 536870912},
            "payload": {},
            "serial": {"mode": "Null"},
            "console": {"mode": "Tty"},
            "rng": {"src": "/dev/urandom"},
            "landlock_enable": false
        })
    );
}

#[test]
fn device_bodies_for_hotplug() {
    let d: DiskConfig = serde_json::from_value(json!({"path": "/d", "id": "d1"})).unwrap();
    assert_eq!(d.validate(), Ok(()));
    let e = serde_json::from_value::<DiskConfig>(json!({"path": "/d", "colour": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `colour`"), "{e}");
    let n: NetConfig = serde_json::from_value(json!({"tap": "tap3"})).unwrap();
    assert_eq!(n.validate(), Ok(()));
}

#[test]
fn the_cpu_profile_is_the_host_s() {
    let c: VmConfig = serde_json::from_value(json!({
        "payload": {"kernel": "/k"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "profile": "Host"},
    }))
    .unwrap();
    assert_eq!(c.cpus.profile, CpuProfile::Host);
    let e = serde_json::from_value::<VmConfig>(json!({
        "payload": {"kernel": "/k"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "profile": "SapphireRapids"},
    }))
    .unwrap_err();
    assert!(
        e.to_string().contains("unknown variant `SapphireRapids`"),
        "{e}"
    );
}
