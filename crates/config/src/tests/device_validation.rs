//! Validation of each device's configuration: consoles, disks, network devices, ids.

use super::validation::{fails, with};
use crate::*;
use serde_json::json;
use std::path::PathBuf;

#[test]
fn consoles() {
    let e = fails(&with(|c| {
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::File)
    }));
    assert_eq!(
        e,
        "serial.file: missing: mode File needs the path of the file to write to"
    );
    let e = fails(&with(|c| {
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::File)
    }));
    assert!(e.starts_with("console.file: missing"), "{e}");
    // A socket for the serial port, with its path.
    let socket = with(|c| {
        c.serial = ConsoleConfig {
            socket: Some("/tmp/s".into()),
            ..ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
        }
    });
    assert_eq!(socket.validate(), Ok(()));
    let e = fails(&with(|c| {
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
    }));
    assert_eq!(
        e,
        "serial.socket: missing: mode Socket needs the path of the socket"
    );
    let e = fails(&with(|c| {
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::Socket)
    }));
    assert!(
        e.starts_with("console.mode=Socket: not supported by Palisade"),
        "{e}"
    );
    // Both on the terminal, as Cloud Hypervisor allows (the serial port takes the input).
    let both = with(|c| {
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::Tty);
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::Tty);
    });
    assert_eq!(both.validate(), Ok(()));
    let e = fails(&with(|c| c.console.iommu = true));
    assert_eq!(
        e,
        "console.iommu: not supported by Palisade: remove it or set it to false"
    );
    let e = fails(&with(|c| c.console.id = Some("con".into())));
    assert!(
        e.starts_with("console.id: not supported by Palisade"),
        "{e}"
    );
    let e = fails(&with(|c| c.serial.pci_segment = 1));
    assert_eq!(
        e,
        "serial.pci_segment: is 1, but the VM has 1 PCI segment(s): raise platform.num_pci_segments or use a lower segment"
    );
    let e = fails(&with(|c| c.console.pci_device_id = Some(3)));
    assert!(
        e.starts_with("console.pci_device_id: not supported by Palisade"),
        "{e}"
    );
}

#[test]
fn disks() {
    let disk = |d: DiskConfig| with(|c| c.disks = Some(vec![DiskConfig::with_path("/ok"), d]));
    assert_eq!(
        fails(&disk(DiskConfig::default())),
        "disks[1].path: missing: give the path of the disk image"
    );
    assert_eq!(
        fails(&disk(DiskConfig {
            path: Some(PathBuf::new()),
            ..DiskConfig::default()
        })),
        "disks[1].path: missing: give the path of the disk image"
    );
    assert_eq!(
        fails(&disk(DiskConfig {
            num_queues: 0,
            ..DiskConfig::with_path("/a")
        })),
        "disks[1].num_queues=0: must be at least 1"
    );
    for q in [0, 3, 100] {
        assert_eq!(
            fails(&disk(DiskConfig {
                queue_size: q,
                ..DiskConfig::with_path("/a")
            })),
            format!("disks[1].queue_size={q}: must be a power of two between 1 and 32768")
        );
    }
    assert!(fails(&disk(DiskConfig {
        id: Some(String::new()),
        ..DiskConfig::with_path("/a")
    }))
    .starts_with("disks[1].id=: empty id"));
    // The stand-alone form, for vm.add-disk.
    assert_eq!(
        DiskConfig::default().validate().unwrap_err().to_string(),
        "disk.path: missing: give the path of the disk image"
    );
}

#[test]
fn disk_compat_fields() {
    let cases: Vec<(DiskConfig, &str)> = vec![
        (
            DiskConfig {
                iommu: true,
                ..DiskConfig::with_path("/a")
            },
            "disk.iommu: not supported by Palisade",
        ),
        (
            DiskConfig {
                vhost_user: true,
                ..DiskConfig::with_path("/a")
            },
            "disk.vhost_user: not supported by Palisade",
        ),
        (
            DiskConfig {
                vhost_socket: Some("/s".into()),
                ..DiskConfig::with_path("/a")
            },
            "disk.vhost_socket: not supported by Palisade",
        ),
        (
            DiskConfig {
                rate_limiter_config: Some(RateLimiterConfig {
                    ops: Some(TokenBucketConfig {
                        size: 1,
                        one_time_burst: None,
                        refill_time: 0,
                    }),
                    bandwidth: None,
                }),
                ..DiskConfig::with_path("/a")
            },
            "disk.rate_limiter_config: disk.rate_limiter_config.ops.refill_time=0",
        ),
        (
            DiskConfig {
                rate_limiter_config: Some(RateLimiterConfig::default()),
                rate_limit_group: Some("g".into()),
                ..DiskConfig::with_path("/a")
            },
            "disk.rate_limit_group: a disk has its own rate_limiter_config or a rate_limit_group",
        ),
        (
            DiskConfig {
                pci_device_id: Some(5),
                ..DiskConfig::with_path("/a")
            },
            "disk.pci_device_id: not supported by Palisade",
        ),
        (
            DiskConfig {
                queue_affinity: Some(vec![json!({"queue_index": 0, "host_cpus": [1]})]),
                ..DiskConfig::with_path("/a")
            },
            "disk.queue_affinity: not supported by Palisade",
        ),
        (
            DiskConfig {
                backing_files: true,
                ..DiskConfig::with_path("/a")
            },
            "disk.backing_files: not supported by Palisade",
        ),
        (
            DiskConfig {
                sparse: false,
                ..DiskConfig::with_path("/a")
            },
            "disk.sparse: not supported by Palisade: remove it or set it to true",
        ),
        (
            DiskConfig {
                image_type: Some(ImageType::Qcow2),
                ..DiskConfig::with_path("/a")
            },
            "disk.image_type=Qcow2: not supported by Palisade",
        ),
        (
            DiskConfig {
                lock_granularity: Some(LockGranularity::Full),
                ..DiskConfig::with_path("/a")
            },
            "disk.lock_granularity=Full: not supported by Palisade",
        ),
    ];
    for (d, want) in cases {
        let e = d.validate().unwrap_err().to_string();
        assert!(e.starts_with(want), "{e} / {want}");
    }
    let ok = DiskConfig {
        image_type: Some(ImageType::Raw),
        lock_granularity: Some(LockGranularity::ByteRange),
        rate_limiter_config: Some(RateLimiterConfig::default()),
        rate_limit_group: None,
        queue_affinity: Some(vec![]),
        ..DiskConfig::with_path("/a")
    };
    assert_eq!(ok.validate(), Ok(()));
}

#[test]
fn nets() {
    let net = |n: NetConfig| with(|c| c.net = Some(vec![n]));
    let e = fails(&net(NetConfig {
        mac: Some("52:54:00".into()),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].mac=52:54:00: not a MAC address"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        mac: Some("01:00:5e:00:00:01".into()),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].mac=01:00:5e:00:00:01: is a multicast address"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        ip: Some("1.2.3".into()),
        ..NetConfig::default()
    }));
    assert!(e.starts_with("net[0].ip=1.2.3: not an IPv4 address"), "{e}");
    let e = fails(&net(NetConfig {
        mask: Some("255.255.0.255".into()),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].mask=255.255.0.255: not a valid netmask"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        num_queues: 3,
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].num_queues=3: must be an even number, at least 2"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        num_queues: 0,
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].num_queues=0: must be an even number"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        queue_size: 6,
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].queue_size=6: must be a power of two"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        fds: Some(vec![3, 4]),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].num_queues: is 2 but 2 tap file descriptor(s) need 4 queues"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        fds: Some(vec![3]),
        tap: Some("tap0".into()),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].fds: tap and fds cannot both be given"),
        "{e}"
    );
    let e = fails(&net(NetConfig {
        fds: Some(vec![]),
        ..NetConfig::default()
    }));
    assert!(e.starts_with("net[0].fds=[]: empty list"), "{e}");
    let e = fails(&net(NetConfig {
        fds: Some(vec![-2]),
        ..NetConfig::default()
    }));
    assert!(
        e.starts_with("net[0].fds=[-2]: file descriptors are not negative"),
        "{e}"
    );
    let ok = NetConfig {
        mac: Some("52:54:00:AB:cd:ef".into()),
        ip: Some("10.0.0.1".into()),
        mask: Some("255.255.255.252".into()),
        fds: Some(vec![7]),
        ..NetConfig::default()
    };
    assert_eq!(ok.validate(), Ok(()));
    // Empty strings, as in CH's `tap=,mac=`, are not given.
    let empty = NetConfig {
        tap: Some(String::new()),
        mac: Some(String::new()),
        ip: Some(String::new()),
        mask: Some(String::new()),
        ..NetConfig::default()
    };
    assert_eq!(empty.validate(), Ok(()));
}

#[test]
fn net_compat_fields() {
    let cases: Vec<(NetConfig, &str)> = vec![
        (
            NetConfig {
                host_mac: Some("52:54:00:00:00:02".into()),
                ..NetConfig::default()
            },
            "net.host_mac: not supported by Palisade",
        ),
        (
            NetConfig {
                mtu: Some(9000),
                ..NetConfig::default()
            },
            "net.mtu: not supported by Palisade",
        ),
        (
            NetConfig {
                iommu: true,
                ..NetConfig::default()
            },
            "net.iommu: not supported by Palisade",
        ),
        (
            NetConfig {
                vhost_user: true,
                ..NetConfig::default()
            },
            "net.vhost_user: not supported by Palisade",
        ),
        (
            NetConfig {
                vhost_socket: Some("/s".into()),
                ..NetConfig::default()
            },
            "net.vhost_socket: not supported by Palisade",
        ),
        (
            NetConfig {
                vhost_mode: VhostMode::Server,
                ..NetConfig::default()
            },
            "net.vhost_mode=Server: not supported by Palisade",
        ),
        (
            NetConfig {
                pci_device_id: Some(1),
                ..NetConfig::default()
            },
            "net.pci_device_id: not supported by Palisade",
        ),
        (
            NetConfig {
                rate_limiter_config: Some(RateLimiterConfig {
                    bandwidth: Some(TokenBucketConfig {
                        size: 1,
                        one_time_burst: None,
                        refill_time: 100_000_000,
                    }),
                    ops: None,
                }),
                ..NetConfig::default()
            },
            "net.rate_limiter_config: net.rate_limiter_config.bandwidth.refill_time=100000000: must be at most",
        ),
    ];
    for (n, want) in cases {
        let e = n.validate().unwrap_err().to_string();
        assert!(e.starts_with(want), "{e} / {want}");
    }
}

#[test]
fn duplicate_ids() {
    let e = fails(&with(|c| {
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
    }));
    assert_eq!(
        e,
        "id \"d\" is used by both disks[0] and disks[1]: give each device its own id"
    );
    let e = fails(&with(|c| {
        c.disks = Some(vec![DiskConfig {
            id: Some("x".into()),
            ..DiskConfig::with_path("/a")
        }]);
        c.net = Some(vec![
            NetConfig::default(),
            NetConfig {
                id: Some("x".into()),
                ..NetConfig::default()
            },
        ]);
    }));
    assert_eq!(
        e,
        "id \"x\" is used by both disks[0] and net[1]: give each device its own id"
    );
    let ok = with(|c| {
        c.disks = Some(vec![DiskConfig {
            id: Some("a".into()),
            ..DiskConfig::with_path("/a")
        }]);
        c.net = Some(vec![NetConfig {
            id: Some("b".into()),
            ..NetConfig::default()
        }]);
    });
    assert_eq!(ok.validate(), Ok(()));
}
