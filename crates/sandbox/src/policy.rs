//! From a VM configuration to a Landlock policy: what the confined VMM may still open, and
//! what it holds open instead.
//!
//! Palisade opens every file a VM uses when the VM is created, before confinement, and keeps
//! the descriptors (a reboot reloads the kernel through them). Those items need no rule at
//! all: the ruleset only grants what must really be opened later — the user's
//! `--landlock-rules`, meant for hot-plug. This module is a pure function of the config, so
//! the policy for any VM can be checked without touching the file system.

use std::path::{Path, PathBuf};

use config::{ConsoleConfig, ConsoleOutputMode, VmConfig};
use serde::Serialize;

/// What a rule lets the VMM do with a path, in the user's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Access {
    /// Read (`r`).
    Read,
    /// Write (`w`).
    Write,
    /// Read and write (`rw`).
    ReadWrite,
}

impl Access {
    /// Parses `r`, `w` or `rw`.
    pub fn parse(s: &str) -> Option<Access> {
        match s {
            "r" => Some(Access::Read),
            "w" => Some(Access::Write),
            "rw" => Some(Access::ReadWrite),
            _ => None,
        }
    }

    /// The `access=` value that asks for this.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "r",
            Access::Write => "w",
            Access::ReadWrite => "rw",
        }
    }

    /// Whether this includes reading.
    pub fn reads(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    /// Whether this includes writing.
    pub fn writes(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }

    /// Whether this grants at least what `other` needs.
    pub fn covers(self, other: Access) -> bool {
        (!other.reads() || self.reads()) && (!other.writes() || self.writes())
    }
}

/// The config item a rule or a held descriptor comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// `payload.kernel`.
    Kernel,
    /// `payload.initramfs`.
    Initramfs,
    /// The serial port's file or pty.
    Serial,
    /// The virtio console's file or pty.
    Console,
    /// A disk, by id (or index when it has none).
    Disk {
        /// The disk's id.
        id: String,
    },
    /// The entropy source.
    Rng,
    /// A memory zone's file, by zone id.
    MemoryZone {
        /// The zone's id.
        id: String,
    },
    /// A network device's tap.
    Net {
        /// The device's id.
        id: String,
    },
    /// Network devices that may be hot-plugged through the API.
    NetHotplug,
    /// A virtio-fs device's backend socket, by device id.
    Fs {
        /// The device's id.
        id: String,
    },
    /// The vsock device's socket, by device id.
    Vsock {
        /// The device's id.
        id: String,
    },
    /// A persistent memory device's file, by device id.
    Pmem {
        /// The device's id.
        id: String,
    },
    /// The snapshot a VM was restored from (`vm.restore`, `--restore`).
    Snapshot,
    /// The socket a VM was received on (`vm.receive-migration`).
    Migration,
    /// A `--landlock-rules` / `landlock_rules` entry, by position.
    UserRule {
        /// Position in the list, from 0.
        index: usize,
    },
}

/// A path the confined VMM may still open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// File or directory (a directory covers everything beneath it).
    pub path: PathBuf,
    /// What may be done with it.
    pub access: Access,
    /// Where the rule comes from.
    pub origin: Origin,
}

/// A resource opened before confinement and kept open, so it needs no rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Held {
    /// The path it was opened from.
    pub path: PathBuf,
    /// How it is used (what was opened, with which access).
    pub how: String,
    /// Where it comes from.
    pub origin: Origin,
}

/// The Landlock policy of one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// What may still be opened after confinement.
    pub rules: Vec<Rule>,
    /// What is held open and therefore needs no rule.
    pub held: Vec<Held>,
}

fn console_item(cfg: &ConsoleConfig, origin: Origin, held: &mut Vec<Held>) {
    match cfg.mode {
        ConsoleOutputMode::File => {
            if let Some(file) = &cfg.file {
                held.push(Held {
                    path: file.clone(),
                    how: "output file, opened for writing".into(),
                    origin,
                });
            }
        }
        ConsoleOutputMode::Pty => held.push(Held {
            // The pty's path is only known once it exists; /dev/ptmx is what was opened.
            path: cfg
                .file
                .clone()
                .unwrap_or_else(|| PathBuf::from("/dev/ptmx")),
            how: "pseudo-terminal, both sides held open".into(),
            origin,
        }),
        ConsoleOutputMode::Tty => held.push(Held {
            path: PathBuf::from("/dev/stdin"),
            how: "Palisade's own standard input and output".into(),
            origin,
        }),
        ConsoleOutputMode::Socket => {
            if let Some(socket) = &cfg.socket {
                held.push(Held {
                    path: socket.clone(),
                    how: "Unix socket, bound when Palisade started".into(),
                    origin,
                });
            }
        }
        ConsoleOutputMode::Off | ConsoleOutputMode::Null => {}
    }
}

impl Policy {
    /// The policy for `config`: every file of the VM is held; the user's rules are granted.
    pub fn from_config(config: &VmConfig) -> Policy {
        let mut held = Vec::new();
        if let Some(kernel) = &config.payload.kernel {
            held.push(Held {
                path: kernel.clone(),
                how: "kernel image, opened read-only (reloaded through it on reboot)".into(),
                origin: Origin::Kernel,
            });
        }
        if let Some(initramfs) = &config.payload.initramfs {
            held.push(Held {
                path: initramfs.clone(),
                how: "initramfs, opened read-only".into(),
                origin: Origin::Initramfs,
            });
        }
        console_item(&config.serial, Origin::Serial, &mut held);
        console_item(&config.console, Origin::Console, &mut held);
        for (index, disk) in config.disks.iter().flatten().enumerate() {
            if let Some(path) = &disk.path {
                held.push(Held {
                    path: path.clone(),
                    how: if disk.readonly {
                        "disk image, opened read-only".into()
                    } else {
                        "disk image, opened read-write".into()
                    },
                    origin: Origin::Disk {
                        id: disk.id.clone().unwrap_or_else(|| format!("_disk{index}")),
                    },
                });
            }
        }
        for (index, net) in config.net.iter().flatten().enumerate() {
            let id = net.id.clone().unwrap_or_else(|| format!("_net{index}"));
            let how = match (&net.fds, net.tap.as_deref().filter(|t| !t.is_empty())) {
                (Some(fds), _) if !fds.is_empty() => {
                    format!("tap passed in as descriptors {fds:?}")
                }
                (_, Some(tap)) => format!("tap {tap}, opened at creation"),
                _ => "new tap, created at creation".to_string(),
            };
            held.push(Held {
                path: PathBuf::from(TUN_DEVICE),
                how,
                origin: Origin::Net { id },
            });
        }
        for (index, pmem) in config.pmem.iter().flatten().enumerate() {
            held.push(Held {
                path: pmem.file.clone(),
                how: if pmem.discard_writes {
                    "persistent memory file, opened read-only and mapped privately \
                     (discard_writes)"
                        .into()
                } else {
                    "persistent memory file, opened read-write and mapped shared".into()
                },
                origin: Origin::Pmem {
                    id: pmem.id.clone().unwrap_or_else(|| format!("_pmem{index}")),
                },
            });
        }
        for (index, fs) in config.fs.iter().flatten().enumerate() {
            held.push(Held {
                path: fs.socket.clone(),
                how: "vhost-user backend socket, connected at creation by the connector \
                      thread; only the device's thread exchanges messages on it"
                    .into(),
                origin: Origin::Fs {
                    id: fs.id.clone().unwrap_or_else(|| format!("_fs{index}")),
                },
            });
        }
        if let Some(vsock) = &config.vsock {
            held.push(Held {
                path: vsock.socket.clone(),
                how: "vsock socket, bound and listening from creation (by the connector \
                      thread); a guest connection to host port P is relayed to the socket \
                      at this path followed by _P, which the connector connects to"
                    .into(),
                origin: Origin::Vsock {
                    id: vsock.id.clone().unwrap_or_else(|| "_vsock0".into()),
                },
            });
        }
        for zone in config.memory.zones.iter().flatten() {
            if let Some(file) = &zone.file {
                held.push(Held {
                    path: file.clone(),
                    how: "memory zone file, opened read-write and mapped as guest RAM".into(),
                    origin: Origin::MemoryZone {
                        id: zone.id.clone(),
                    },
                });
            }
        }
        held.push(Held {
            path: config.rng.src.clone(),
            how: "entropy source, opened read-only".into(),
            origin: Origin::Rng,
        });
        // Every VM has an entropy device: a VM created later in the same process opens the
        // source again, so it is also readable (and only readable).
        let mut rules = vec![Rule {
            path: config.rng.src.clone(),
            access: Access::Read,
            origin: Origin::Rng,
        }];
        rules.extend(
            config
                .landlock_rules
                .iter()
                .flatten()
                .enumerate()
                .filter_map(|(index, r)| {
                    Access::parse(&r.access).map(|access| Rule {
                        path: r.path.clone(),
                        access,
                        origin: Origin::UserRule { index },
                    })
                }),
        );
        Policy { rules, held }
    }

    /// Adds what hot-plugging network devices needs — opening the tun device to create or
    /// attach taps — when the VM has network devices and an API may add more.
    pub fn with_net_hotplug(mut self, config: &VmConfig, api: bool) -> Policy {
        if api && config.net.as_ref().is_some_and(|n| !n.is_empty()) {
            self.rules.push(Rule {
                path: PathBuf::from(TUN_DEVICE),
                access: Access::ReadWrite,
                origin: Origin::NetHotplug,
            });
        }
        self
    }

    /// What the user should hear about this policy for `config`: a `readonly=on` disk whose
    /// image lies under a rule that allows writing could be reopened for writing by a
    /// compromised VMM (through `/proc/self/fd`, say), so read-only would only be a promise.
    pub fn warnings(&self, config: &VmConfig) -> Vec<String> {
        config
            .disks
            .iter()
            .flatten()
            .filter(|d| d.readonly)
            .filter_map(|d| {
                let path = d.path.as_ref()?;
                let rule = self.allowing(path, Access::Write)?;
                Some(format!(
                    "disk {}: readonly=on, but its image lies under the Landlock rule                      path={},access={}, which lets the VMM write it; narrow the rule to keep                      the disk read-only even for a compromised VMM",
                    path.display(),
                    rule.path.display(),
                    rule.access.as_str()
                ))
            })
            .collect()
    }

    /// The rule that lets `path` be opened with `access`, if any: the path itself or a
    /// directory above it, with enough access.
    pub fn allowing(&self, path: &Path, access: Access) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| path.starts_with(&r.path) && r.access.covers(access))
    }
}

/// The device through which taps are created.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// The `--landlock-rules` value that would let `path` be opened with `access`.
pub fn suggested_rule(path: &Path, access: Access) -> String {
    format!(
        "--landlock-rules path={},access={}",
        path.display(),
        access.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{DiskConfig, LandlockConfig};

    fn only_rng(p: &Policy) -> Vec<Origin> {
        p.rules.iter().map(|r| r.origin.clone()).collect()
    }

    fn base() -> VmConfig {
        let mut c = VmConfig::default();
        c.payload.kernel = Some("/boot/vmlinux".into());
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::Null);
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::Off);
        c.landlock_enable = true;
        c
    }

    #[test]
    fn a_read_only_disk_under_a_writable_rule_is_warned_about() {
        let mut c = base();
        let mut ro = DiskConfig::with_path(PathBuf::from("/srv/images/ro.raw"));
        ro.readonly = true;
        let rw = DiskConfig::with_path(PathBuf::from("/srv/images/rw.raw"));
        c.disks = Some(vec![ro, rw]);
        c.landlock_rules = Some(vec![LandlockConfig {
            path: "/srv/images".into(),
            access: "r".into(),
        }]);
        let p = Policy::from_config(&c);
        assert!(p.warnings(&c).is_empty());
        c.landlock_rules.as_mut().unwrap()[0].access = "rw".into();
        let p = Policy::from_config(&c);
        let w = p.warnings(&c);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("/srv/images/ro.raw") && w[0].contains("path=/srv/images,access=rw"));
    }

    #[test]
    fn pmem_files_are_held_with_the_access_they_were_opened_with() {
        let mut c = base();
        let mut private = config::PmemConfig::with_file("/srv/pmem/golden.img");
        private.discard_writes = true;
        private.id = Some("golden".into());
        c.pmem = Some(vec![
            config::PmemConfig::with_file("/srv/pmem/data.img"),
            private,
        ]);
        let p = Policy::from_config(&c);
        assert_eq!(
            only_rng(&p),
            vec![Origin::Rng],
            "held, so no rule is granted"
        );
        let data = p
            .held
            .iter()
            .find(|h| h.path.ends_with("data.img"))
            .unwrap();
        assert_eq!(
            data.origin,
            Origin::Pmem {
                id: "_pmem0".into()
            }
        );
        assert!(data.how.contains("read-write"), "{}", data.how);
        let golden = p
            .held
            .iter()
            .find(|h| h.path.ends_with("golden.img"))
            .unwrap();
        assert_eq!(
            golden.origin,
            Origin::Pmem {
                id: "golden".into()
            }
        );
        assert!(golden.how.contains("read-only"), "{}", golden.how);
    }

    #[test]
    fn access_values_parse_and_cover() {
        assert_eq!(Access::parse("r"), Some(Access::Read));
        assert_eq!(Access::parse("w"), Some(Access::Write));
        assert_eq!(Access::parse("rw"), Some(Access::ReadWrite));
        assert_eq!(Access::parse("rwx"), None);
        assert_eq!(Access::parse("R"), None);
        assert!(Access::ReadWrite.covers(Access::Read));
        assert!(Access::ReadWrite.covers(Access::Write));
        assert!(!Access::Read.covers(Access::Write));
        assert!(!Access::Write.covers(Access::Read));
        assert!(!Access::Read.covers(Access::ReadWrite));
    }

    #[test]
    fn kernel_and_initramfs_are_held_not_granted() {
        let mut c = base();
        c.payload.initramfs = Some("/boot/initrd".into());
        let p = Policy::from_config(&c);
        assert_eq!(only_rng(&p), vec![Origin::Rng]);
        let origins: Vec<_> = p.held.iter().map(|h| h.origin.clone()).collect();
        assert_eq!(
            origins,
            vec![Origin::Kernel, Origin::Initramfs, Origin::Rng]
        );
        assert_eq!(p.held[0].path, PathBuf::from("/boot/vmlinux"));
        assert!(p.held[0].how.contains("read-only"));
    }

    #[test]
    fn console_files_ptys_and_ttys_are_held() {
        let mut c = base();
        c.serial = ConsoleConfig::with_file(PathBuf::from("/var/log/serial.log"));
        c.console = ConsoleConfig::with_mode(ConsoleOutputMode::Pty);
        let p = Policy::from_config(&c);
        assert_eq!(only_rng(&p), vec![Origin::Rng]);
        let serial = p.held.iter().find(|h| h.origin == Origin::Serial).unwrap();
        assert_eq!(serial.path, PathBuf::from("/var/log/serial.log"));
        assert!(serial.how.contains("writing"));
        let console = p.held.iter().find(|h| h.origin == Origin::Console).unwrap();
        assert_eq!(console.path, PathBuf::from("/dev/ptmx"));
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::Tty);
        let p = Policy::from_config(&c);
        assert!(p.held.iter().any(|h| h.origin == Origin::Serial));
        c.serial = ConsoleConfig::with_mode(ConsoleOutputMode::Off);
        let p = Policy::from_config(&c);
        assert!(!p.held.iter().any(|h| h.origin == Origin::Serial));
    }

    #[test]
    fn disks_are_held_with_their_access() {
        let mut c = base();
        let mut ro = DiskConfig::with_path(PathBuf::from("/img/ro.raw"));
        ro.readonly = true;
        ro.id = Some("root".into());
        let rw = DiskConfig::with_path(PathBuf::from("/img/rw.raw"));
        c.disks = Some(vec![ro, rw]);
        let p = Policy::from_config(&c);
        let ro = p
            .held
            .iter()
            .find(|h| h.origin == Origin::Disk { id: "root".into() })
            .unwrap();
        assert!(ro.how.contains("read-only"));
        let rw = p
            .held
            .iter()
            .find(|h| {
                h.origin
                    == Origin::Disk {
                        id: "_disk1".into(),
                    }
            })
            .unwrap();
        assert!(rw.how.contains("read-write"));
        assert_eq!(only_rng(&p), vec![Origin::Rng]);
    }

    #[test]
    fn user_rules_become_rules_in_order_with_their_origin() {
        let mut c = base();
        c.landlock_rules = Some(vec![
            LandlockConfig {
                path: "/srv/hotplug".into(),
                access: "rw".into(),
            },
            LandlockConfig {
                path: "/srv/iso/cd.iso".into(),
                access: "r".into(),
            },
        ]);
        let p = Policy::from_config(&c);
        assert_eq!(
            p.rules[1..],
            vec![
                Rule {
                    path: "/srv/hotplug".into(),
                    access: Access::ReadWrite,
                    origin: Origin::UserRule { index: 0 }
                },
                Rule {
                    path: "/srv/iso/cd.iso".into(),
                    access: Access::Read,
                    origin: Origin::UserRule { index: 1 }
                },
            ]
        );
    }

    #[test]
    fn taps_are_held_and_tun_is_granted_only_for_net_hotplug_with_an_api() {
        let mut c = base();
        let p = Policy::from_config(&c).with_net_hotplug(&c, true);
        assert!(
            !p.rules.iter().any(|r| r.origin == Origin::NetHotplug),
            "no net devices"
        );
        c.net = Some(vec![config::NetConfig {
            tap: Some("vmtap0".into()),
            id: Some("n0".into()),
            ..Default::default()
        }]);
        let p = Policy::from_config(&c);
        let held = p
            .held
            .iter()
            .find(|h| h.origin == Origin::Net { id: "n0".into() })
            .unwrap();
        assert!(held.how.contains("vmtap0"));
        assert!(!p.rules.iter().any(|r| r.origin == Origin::NetHotplug));
        let p = Policy::from_config(&c).with_net_hotplug(&c, false);
        assert!(
            !p.rules.iter().any(|r| r.origin == Origin::NetHotplug),
            "no API"
        );
        let p = Policy::from_config(&c).with_net_hotplug(&c, true);
        let tun = p
            .rules
            .iter()
            .find(|r| r.origin == Origin::NetHotplug)
            .unwrap();
        assert_eq!(
            (tun.path.as_path(), tun.access),
            (Path::new(TUN_DEVICE), Access::ReadWrite)
        );
    }

    #[test]
    fn the_entropy_source_is_held_and_readable_only() {
        let mut c = base();
        c.rng.src = "/srv/entropy".into();
        let p = Policy::from_config(&c);
        let rule = &p.rules[0];
        assert_eq!(
            (rule.path.as_path(), rule.access),
            (Path::new("/srv/entropy"), Access::Read)
        );
        assert!(p
            .held
            .iter()
            .any(|h| h.origin == Origin::Rng && h.path == Path::new("/srv/entropy")));
        assert!(p
            .allowing(Path::new("/srv/entropy"), Access::Write)
            .is_none());
    }

    #[test]
    fn allowing_finds_the_covering_rule_or_none() {
        let mut c = base();
        c.landlock_rules = Some(vec![
            LandlockConfig {
                path: "/srv/ro".into(),
                access: "r".into(),
            },
            LandlockConfig {
                path: "/srv/rw".into(),
                access: "rw".into(),
            },
        ]);
        let p = Policy::from_config(&c);
        assert!(p
            .allowing(Path::new("/srv/ro/a.raw"), Access::Read)
            .is_some());
        assert!(p
            .allowing(Path::new("/srv/ro/a.raw"), Access::ReadWrite)
            .is_none());
        assert!(p
            .allowing(Path::new("/srv/rw/b/c.raw"), Access::ReadWrite)
            .is_some());
        // Component-wise prefix: /srv/rwx is not beneath /srv/rw.
        assert!(p
            .allowing(Path::new("/srv/rwx/c.raw"), Access::Read)
            .is_none());
        assert!(p.allowing(Path::new("/etc/passwd"), Access::Read).is_none());
        assert_eq!(
            suggested_rule(Path::new("/data/d.raw"), Access::ReadWrite),
            "--landlock-rules path=/data/d.raw,access=rw"
        );
    }
}
