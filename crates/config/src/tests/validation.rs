//! `VmConfig::validate` and the per-device checks.

use std::path::PathBuf;

use serde_json::json;

use crate::*;

pub(super) fn good() -> VmConfig {
    VmConfig {
        payload: PayloadConfig {
            kernel: Some("/boot/vmlinux".into()),
            ..PayloadConfig::default()
        },
        ..VmConfig::default()
    }
}

pub(super) fn fails(c: &VmConfig) -> String {
    let e = c
        .validate()
        .expect_err("expected a validation error")
        .to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

pub(super) fn with(f: impl FnOnce(&mut VmConfig)) -> VmConfig {
    let mut c = good();
    f(&mut c);
    c
}

#[test]
fn good_config_validates() {
    assert_eq!(good().validate(), Ok(()));
    let c = with(|c| {
        c.cpus = CpusConfig::new(4, 254);
        c.memory = MemoryConfig::with_size(1 << 40);
        c.disks = Some(vec![
            DiskConfig::with_path("/a"),
            DiskConfig::with_path("/b"),
        ]);
        c.net = Some(vec![NetConfig::default(), NetConfig::default()]);
        c.serial = ConsoleConfig::with_file("/tmp/s.log");
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::Pty);
        c.landlock_enable = true;
        c.landlock_rules = Some(vec![LandlockConfig {
            path: std::env::temp_dir(),
            access: "rw".into(),
        }]);
    });
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn vcpu_counts() {
    assert_eq!(
        fails(&with(|c| c.cpus = CpusConfig::new(0, 0))),
        "cpus.boot_vcpus=0: must be at least 1"
    );
    assert_eq!(
        fails(&with(|c| c.cpus = CpusConfig::new(255, 255))),
        "cpus.boot_vcpus=255: must be at most 254"
    );
    assert_eq!(
        fails(&with(|c| c.cpus = CpusConfig::new(4, 2))),
        "cpus.max_vcpus=2: must be at least the boot vCPU count (4)"
    );
    assert_eq!(
        fails(&with(|c| c.cpus = CpusConfig::new(1, 255))),
        "cpus.max_vcpus=255: must be at most 254"
    );
    assert_eq!(
        fails(&with(|c| c.cpus.max_phys_bits = 60)),
        "cpus.max_phys_bits=60: must be between 36 and 52"
    );
}

#[test]
fn memory_size() {
    assert_eq!(
        fails(&with(|c| c.memory.size = 0)),
        "memory.size=0: must be at least 1 MiB (e.g. 512M)"
    );
    assert_eq!(
        fails(&with(|c| c.memory.size = (1 << 20) + 512)),
        "memory.size=1049088: must be a multiple of 4 KiB"
    );
    assert_eq!(
        fails(&with(|c| c.memory.size = (1 << 40) + 4096)),
        "memory.size=1099511631872: must be at most 1 TiB"
    );
    assert!(with(|c| c.memory.size = 1 << 20).validate().is_ok());
}

#[test]
fn payload() {
    let e = fails(&with(|c| c.payload.kernel = None));
    assert_eq!(
        e,
        "payload.kernel: missing: give the kernel image to boot (Palisade boots a kernel; firmware is not supported)"
    );
    let e = fails(&with(|c| {
        c.payload.kernel = None;
        c.payload.firmware = Some("/fw".into());
    }));
    assert_eq!(
        e,
        "payload.firmware: not supported by Palisade: boot a kernel image with payload.kernel instead"
    );
    let e = fails(&with(|c| c.payload.kernel = Some(PathBuf::new())));
    assert!(e.starts_with("payload.kernel=: empty path"), "{e}");
    let e = fails(&with(|c| c.payload.igvm = Some("/x.igvm".into())));
    assert_eq!(
        e,
        "payload.igvm: not supported by Palisade: remove it or set it to null"
    );
    let e = fails(&with(|c| c.payload.host_data = Some("00".into())));
    assert!(
        e.starts_with("payload.host_data: not supported by Palisade"),
        "{e}"
    );
}

#[test]
fn landlock_rules() {
    let rule = |path: &str, access: &str| {
        with(|c| {
            c.landlock_enable = true;
            c.landlock_rules = Some(vec![
                LandlockConfig {
                    path: "/tmp".into(),
                    access: "r".into(),
                },
                LandlockConfig {
                    path: path.into(),
                    access: access.into(),
                },
            ]);
        })
    };
    assert_eq!(
        fails(&rule("/tmp", "x")),
        "landlock_rules[1] (path=/tmp,access=x): access must be r, w or rw"
    );
    assert_eq!(
        fails(&rule("/nope-palisade", "rw")),
        "landlock_rules[1] (path=/nope-palisade,access=rw): /nope-palisade does not exist (create it first or fix the path)"
    );
    assert!(fails(&rule("", "r")).contains("path is empty"));
    assert_eq!(rule("/", "w").validate(), Ok(()));
    let e = fails(&with(|c| {
        c.landlock_rules = Some(vec![LandlockConfig {
            path: "/tmp".into(),
            access: "r".into(),
        }]);
    }));
    assert!(
        e.starts_with("landlock_rules: given but landlock_enable is false"),
        "{e}"
    );
    // An empty list is fine without Landlock.
    assert_eq!(with(|c| c.landlock_rules = Some(vec![])).validate(), Ok(()));
}

#[test]
fn cpus_and_memory_compat_fields() {
    let cases: Vec<(VmConfig, &str)> = vec![
        (
            with(|c| c.cpus.kvm_hyperv = true),
            "cpus.kvm_hyperv: not supported by Palisade",
        ),
        (
            with(|c| {
                c.cpus.max_vcpus = 4;
                c.cpus.topology = Some(topo(1, 2, 1, 1));
            }),
            "cpus.topology=1:2:1:1: holds 2 vCPUs (threads × cores × dies × packages) but max_vcpus is 4",
        ),
        (
            with(|c| {
                c.cpus.max_vcpus = 2;
                c.cpus.topology = Some(topo(0, 2, 1, 1));
            }),
            "cpus.topology=0:2:1:1: no part may be 0",
        ),
        (
            with(|c| {
                c.cpus.max_vcpus = 240;
                c.cpus.topology = Some(topo(1, 5, 1, 48));
            }),
            "cpus.topology=1:5:1:48: needs APIC ids above 253",
        ),
        (
            with(|c| c.cpus.nested = false),
            "cpus.nested: not supported by Palisade: remove it or set it to true",
        ),
        (
            with(|c| {
                c.cpus.affinity = Some(vec![CpuAffinity {
                    vcpu: 3,
                    host_cpus: vec![0],
                }])
            }),
            "cpus.affinity[0].vcpu=3: there are 1 vCPUs",
        ),
        (
            with(|c| {
                c.cpus.affinity = Some(vec![CpuAffinity {
                    vcpu: 0,
                    host_cpus: vec![],
                }])
            }),
            "cpus.affinity[0].host_cpus=[]: give host CPU numbers",
        ),
        (
            with(|c| c.memory.hotplugged_size = Some(0)),
            "memory.hotplugged_size: not supported by Palisade",
        ),
        (
            with(|c| c.memory.mergeable = true),
            "memory.mergeable: not supported by Palisade",
        ),
        (
            with(|c| c.memory.hotplug_method = HotplugMethod::VirtioMem),
            "memory.hotplug_method=VirtioMem: not supported by Palisade",
        ),
        (
            with(|c| c.memory.prefault = true),
            "memory.prefault: not supported by Palisade",
        ),
        (
            with(|c| c.memory.reserve = true),
            "memory.reserve: not supported by Palisade",
        ),
        (
            with(|c| c.memory.thp = false),
            "memory.thp: not supported by Palisade",
        ),
        (
            with(|c| {
                c.memory.size = 0;
                c.memory.zones = Some(vec![MemoryZoneConfig {
                    id: "z".into(),
                    size: 1 << 20,
                    host_numa_node: Some(0),
                    ..MemoryZoneConfig::default()
                }])
            }),
            "memory.zones[0].host_numa_node: not supported by Palisade",
        ),
        (
            with(|c| c.rng.id = Some("rng".into())),
            "rng.id: not supported by Palisade",
        ),
        (
            with(|c| c.rng.iommu = true),
            "rng.iommu: not supported by Palisade",
        ),
        (
            with(|c| c.rng.pci_device_id = Some(1)),
            "rng.pci_device_id: not supported by Palisade",
        ),
        (with(|c| c.rng.src = PathBuf::new()), "rng.src=: empty path"),
    ];
    for (c, want) in cases {
        let e = fails(&c);
        assert!(e.starts_with(want), "{e} / {want}");
    }
    assert_eq!(
        with(|c| c.cpus.core_scheduling = CoreScheduling::Off).validate(),
        Ok(())
    );
}

#[test]
fn top_level_compat_fields() {
    let cases: Vec<(VmConfig, &str)> = vec![
        (
            with(|c| c.generic_vhost_user = Some(vec![json!({})])),
            "generic_vhost_user",
        ),
        (
            with(|c| c.devices = Some(vec![json!({"path": "/sys/x"})])),
            "devices",
        ),
        (
            with(|c| c.user_devices = Some(vec![json!({"socket": "/s"})])),
            "user_devices",
        ),
        (
            with(|c| c.vdpa = Some(vec![json!({"path": "/dev/vhost-vdpa-0"})])),
            "vdpa",
        ),
        (
            with(|c| c.numa = Some(vec![json!({"guest_numa_id": 0})])),
            "numa",
        ),
        (with(|c| c.iommu = true), "iommu"),
        (with(|c| c.rtc = Some(json!({"id": "rtc0"}))), "rtc"),
        (
            with(|c| {
                c.platform = Some(PlatformConfig {
                    iommufd: true,
                    ..PlatformConfig::default()
                })
            }),
            "platform.iommufd",
        ),
        (
            with(|c| {
                c.platform = Some(PlatformConfig {
                    tdx: true,
                    ..PlatformConfig::default()
                })
            }),
            "platform.tdx",
        ),
        (with(|c| c.tpm = Some(json!({"socket": "/s"}))), "tpm"),
        (
            with(|c| {
                c.debug_console = Some(DebugConsoleConfig {
                    file: None,
                    mode: ConsoleOutputMode::Tty,
                    iobase: Some(0xe9),
                })
            }),
            "debug_console.mode=Tty",
        ),
    ];
    for (c, field) in cases {
        let e = fails(&c);
        assert!(
            e.starts_with(&format!("{field}: not supported by Palisade")),
            "{e} / {field}"
        );
    }
    // Null, empty lists and empty objects count as not given.
    let ok = with(|c| {
        c.fs = Some(vec![]);
        c.platform = Some(PlatformConfig::default());
        c.rtc = Some(serde_json::Value::Null);
        c.debug_console = Some(DebugConsoleConfig {
            file: None,
            mode: ConsoleOutputMode::Off,
            iobase: Some(0xe9),
        });
    });
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn error_field_accessor() {
    let e = with(|c| c.cpus = CpusConfig::new(0, 0))
        .validate()
        .unwrap_err();
    assert_eq!(e.field(), "cpus.boot_vcpus");
    let e = with(|c| {
        c.disks = Some(vec![
            DiskConfig {
                id: Some("d".into()),
                ..DiskConfig::with_path("/a")
            },
            DiskConfig {
                id: Some("d".into()),
                ..DiskConfig::with_path("/b")
            },
        ])
    })
    .validate()
    .unwrap_err();
    assert_eq!(e.field(), "disks[1]");
}

fn topo(threads: u8, cores: u8, dies: u8, packages: u8) -> CpuTopology {
    CpuTopology {
        threads_per_core: threads,
        cores_per_die: cores,
        dies_per_package: dies,
        packages,
    }
}

#[test]
fn a_topology_that_holds_max_vcpus_is_accepted() {
    let mut c = VmConfig::default();
    c.payload.kernel = Some("/k".into());
    c.cpus = CpusConfig::new(2, 6);
    c.cpus.topology = Some(topo(1, 3, 1, 2));
    c.validate().unwrap();
    // Packages of 3 cores take 2 bits each: APIC ids 0-2 and 4-6.
    assert_eq!(topology_max_apic_id(&topo(1, 3, 1, 2)), 6);
    assert_eq!(topology_max_apic_id(&topo(2, 2, 2, 1)), 7);
    let p = CpusConfig::parse("boot=2,max=6,topology=1:3:1:2").unwrap();
    assert_eq!(p.topology, Some(topo(1, 3, 1, 2)));
    assert!(CpusConfig::parse("topology=1:2").is_err());
}

#[test]
fn platform_identity_is_checked() {
    let platform = |p: PlatformConfig| with(|c| c.platform = Some(p));
    let ok = platform(PlatformConfig {
        num_pci_segments: Some(1),
        system_serial_number: Some("SN-1".into()),
        uuid: Some("a1b2c3d4-0000-4000-8000-00000000abcd".into()),
        oem_strings: Some(vec!["io.katacontainers=1".into()]),
        ..PlatformConfig::default()
    });
    assert_eq!(ok.validate(), Ok(()));
    let e = fails(&platform(PlatformConfig {
        system_uuid: Some("not-a-uuid".into()),
        ..PlatformConfig::default()
    }));
    assert!(
        e.starts_with("platform.system_uuid=not-a-uuid: not a UUID"),
        "{e}"
    );
    let e = fails(&platform(PlatformConfig {
        oem_strings: Some(vec!["a\0b".into()]),
        ..PlatformConfig::default()
    }));
    assert!(e.starts_with("platform.oem_strings="), "{e}");
    assert_eq!(
        parse_uuid("00112233-4455-6677-8899-aabbccddeeff").unwrap(),
        [
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
}

#[test]
fn hotplug_room_is_checked() {
    assert_eq!(
        with(|c| c.memory.hotplug_size = Some(1 << 30)).validate(),
        Ok(())
    );
    let e = fails(&with(|c| c.memory.hotplug_size = Some(4097)));
    assert!(
        e.starts_with("memory.hotplug_size=4097: must be a multiple of 4 KiB"),
        "{e}"
    );
    let e = fails(&with(|c| c.memory.hotplug_size = Some(1 << 40)));
    assert!(e.contains("within 1 TiB"), "{e}");
    let m = MemoryConfig {
        hotplug_size: Some(1 << 30),
        ..MemoryConfig::with_size(512 << 20)
    };
    assert_eq!(m.address_space(), (1 << 30) + (512 << 20));
}

#[test]
fn vcpu_affinity_parses_and_is_checked() {
    let p = CpusConfig::parse("boot=2,affinity=[0@[1],1@[0,1]]").unwrap();
    assert_eq!(
        p.affinity,
        Some(vec![
            CpuAffinity {
                vcpu: 0,
                host_cpus: vec![1]
            },
            CpuAffinity {
                vcpu: 1,
                host_cpus: vec![0, 1]
            },
        ])
    );
    assert!(p.validate().is_ok());
    assert!(CpusConfig::parse("boot=2,affinity=[0@1]").is_err());
    assert!(CpusConfig::parse("boot=2,affinity=[x@[1]]").is_err());
    let twice = CpusConfig::parse("boot=2,affinity=[0@[1],0@[0]]").unwrap();
    assert!(twice
        .validate()
        .unwrap_err()
        .to_string()
        .contains("given twice"));
}

#[test]
fn rate_limit_groups_are_named_once_and_disks_name_one() {
    let cases: Vec<(VmConfig, &str)> = vec![
        (
            with(|c| {
                c.rate_limit_groups = Some(vec![
                    RateLimitGroupConfig {
                        id: "g".into(),
                        ..RateLimitGroupConfig::default()
                    };
                    2
                ])
            }),
            "rate_limit_groups[1].id",
        ),
        (
            with(|c| {
                c.disks = Some(vec![DiskConfig {
                    rate_limit_group: Some("g".into()),
                    ..DiskConfig::with_path("/a")
                }])
            }),
            "disks[0].rate_limit_group: no rate limit group \"g\"",
        ),
    ];
    for (c, want) in cases {
        let e = fails(&c);
        assert!(e.starts_with(want), "{e} / {want}");
    }
}

#[test]
fn huge_pages_are_checked() {
    let huge = |size: u64, page: Option<u64>| {
        with(|c| {
            c.memory.size = size;
            c.memory.hugepages = page.is_some();
            c.memory.hugepage_size = page.filter(|&p| p != 0);
        })
    };
    assert_eq!(huge(64 << 20, Some(0)).validate(), Ok(()));
    assert_eq!(huge(2 << 30, Some(1 << 30)).validate(), Ok(()));
    assert!(fails(&huge(64 << 20, Some(1 << 30))).contains("whole number of 1024 MiB huge pages"));
    assert!(fails(&huge(64 << 20, Some(4 << 20))).contains("use 2 MiB (2097152) or 1 GiB"));
    let orphan = with(|c| c.memory.hugepage_size = Some(2 << 20));
    assert!(fails(&orphan).starts_with("memory.hugepage_size: given without memory.hugepages"));
}

#[test]
fn devices_must_be_on_a_segment_the_vm_has() {
    let two = |c: &mut VmConfig| {
        c.platform = Some(PlatformConfig {
            num_pci_segments: Some(2),
            ..PlatformConfig::default()
        })
    };
    let ok = with(|c| {
        two(c);
        c.rng.pci_segment = 1;
        c.disks = Some(vec![DiskConfig {
            pci_segment: 1,
            ..DiskConfig::with_path("/a")
        }]);
    });
    assert_eq!(ok.validate(), Ok(()));
    let bad = with(|c| {
        two(c);
        c.net = Some(vec![NetConfig {
            pci_segment: 2,
            ..NetConfig::default()
        }]);
    });
    assert!(fails(&bad).starts_with("net[0].pci_segment: is 2, but the VM has 2 PCI segment(s)"));
    let many = with(|c| {
        c.platform = Some(PlatformConfig {
            num_pci_segments: Some(17),
            ..PlatformConfig::default()
        })
    });
    assert!(fails(&many).contains("must be between 1 and 16"));
    let weight = |segment: u16, w: u32| {
        with(|c| {
            two(c);
            c.pci_segments = Some(vec![PciSegmentConfig {
                pci_segment: segment,
                mmio32_aperture_weight: Some(w),
                mmio64_aperture_weight: None,
            }]);
        })
    };
    assert_eq!(weight(1, 3).validate(), Ok(()));
    assert_eq!(weight(1, 3).pci_aperture_weights(), vec![(1, 1), (3, 1)]);
    assert!(fails(&weight(2, 1)).starts_with("pci_segments[0].pci_segment=2: the VM has 2"));
    assert!(fails(&weight(0, 0)).contains("must be between 1 and 1024"));
}

#[test]
fn a_balloon_is_whole_pages() {
    let balloon = |size| {
        with(|c| {
            c.balloon = Some(BalloonConfig {
                size,
                ..BalloonConfig::default()
            })
        })
    };
    assert_eq!(balloon(8192).validate(), Ok(()));
    assert!(
        fails(&balloon(100)).starts_with("balloon.size=100: must be a whole number of 4 KiB pages")
    );
    let parsed = BalloonConfig::parse("size=1M,free_page_reporting=on").unwrap();
    assert_eq!((parsed.size, parsed.free_page_reporting), (1 << 20, true));
}
