//! Command-line option strings: each flag's parser and `VmConfig::from_params`.

use std::path::PathBuf;

use crate::*;

fn err<T: std::fmt::Debug>(r: Result<T, OptionError>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---- --cpus ----

#[test]
fn cpus_boot_only_sets_max() {
    let c = CpusConfig::parse("boot=4").unwrap();
    assert_eq!((c.boot_vcpus, c.max_vcpus), (4, 4));
    assert_eq!(c.max_phys_bits, DEFAULT_MAX_PHYS_BITS);
    assert!(!c.kvm_hyperv);
}

#[test]
fn cpus_boot_and_max() {
    let c = CpusConfig::parse("boot=2,max=8").unwrap();
    assert_eq!((c.boot_vcpus, c.max_vcpus), (2, 8));
    let c = CpusConfig::parse("boot=254,max=254").unwrap();
    assert_eq!((c.boot_vcpus, c.max_vcpus), (254, 254));
}

#[test]
fn cpus_defaults() {
    assert_eq!(CpusConfig::parse("").unwrap(), CpusConfig::default());
    assert_eq!(
        CpusConfig::parse(DEFAULT_CPUS_PARAM).unwrap(),
        CpusConfig::default()
    );
    let c = CpusConfig::parse("max=3").unwrap();
    assert_eq!((c.boot_vcpus, c.max_vcpus), (1, 3));
}

#[test]
fn cpus_compat_keys_stored() {
    let c = CpusConfig::parse("boot=2,kvm_hyperv=off,max_phys_bits=40").unwrap();
    assert_eq!(c.max_phys_bits, 40);
    assert!(!c.kvm_hyperv);
    assert!(CpusConfig::parse("kvm_hyperv=false").is_ok());
}

#[test]
fn cpus_bad_values() {
    assert_eq!(
        err(CpusConfig::parse("boot=0")),
        "boot=0: must be at least 1"
    );
    assert_eq!(err(CpusConfig::parse("boot=abc")), "boot=abc: not a number");
    assert_eq!(
        err(CpusConfig::parse("boot=-1")),
        "boot=-1: must not be negative"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=99999999999999999999")),
        "boot=99999999999999999999: too large"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=255")),
        "boot=255: must be at most 254"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=1000")),
        "boot=1000: must be at most 254"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=4,max=2")),
        "max=2: must be at least the boot vCPU count (4)"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=1,max=255")),
        "max=255: must be at most 254"
    );
    assert_eq!(err(CpusConfig::parse("max=")), "max=: not a number");
    assert_eq!(
        err(CpusConfig::parse("kvm_hyperv=on")),
        "kvm_hyperv=on: not supported by Palisade (use off)"
    );
    assert_eq!(
        err(CpusConfig::parse("kvm_hyperv=yes")),
        "kvm_hyperv=yes: not a boolean (use on or off)"
    );
    assert_eq!(
        err(CpusConfig::parse("max_phys_bits=20")),
        "max_phys_bits=20: must be between 36 and 52"
    );
    assert_eq!(
        err(CpusConfig::parse("max_phys_bits=x")),
        "max_phys_bits=x: not a number"
    );
}

#[test]
fn cpus_syntax_errors() {
    assert!(
        CpusConfig::parse("boot=1,features=amx")
            .unwrap()
            .features
            .amx
    );
    assert_eq!(
        err(CpusConfig::parse("boot=1,features=sgx")),
        "features=sgx: unknown CPU feature: Palisade knows amx"
    );
    assert_eq!(
        err(CpusConfig::parse("boot=1,nested=on")),
        "nested: unknown key (accepted keys: boot, max, kvm_hyperv, max_phys_bits, topology, affinity, features, core_scheduling)"
    );
    assert!(err(CpusConfig::parse("topology=1:x:1:1")).starts_with("topology=1:x:1:1: expected"));
    assert_eq!(
        err(CpusConfig::parse("boot=1,boot=2")),
        "boot: given more than once (give each key once)"
    );
    assert_eq!(
        err(CpusConfig::parse("4")),
        "4: missing `=` (write key=value)"
    );
}

// ---- --memory ----

#[test]
fn memory_sizes() {
    assert_eq!(MemoryConfig::parse("size=1G").unwrap().size, 1 << 30);
    assert_eq!(MemoryConfig::parse("size=512M").unwrap().size, 512 << 20);
    assert_eq!(MemoryConfig::parse("size=4096K").unwrap().size, 4 << 20);
    assert_eq!(MemoryConfig::parse("size=1048576").unwrap().size, 1 << 20);
    assert_eq!(MemoryConfig::parse("size=1T").unwrap().size, 1 << 40);
    assert_eq!(MemoryConfig::parse("").unwrap(), MemoryConfig::default());
    assert_eq!(
        MemoryConfig::parse(DEFAULT_MEMORY_PARAM).unwrap().size,
        DEFAULT_MEMORY_SIZE
    );
}

#[test]
fn memory_compat_keys_at_off() {
    let m = MemoryConfig::parse("size=1G,shared=off,hugepages=off,mergeable=false").unwrap();
    assert_eq!(m, MemoryConfig::with_size(1 << 30));
}

#[test]
fn memory_bad_values() {
    // 0 is for memory zones; alone it is refused by validation, naming the flag.
    assert_eq!(MemoryConfig::parse("size=0").unwrap().size, 0);
    let alone = VmParams {
        kernel: Some("/k".into()),
        memory: Some("size=0".into()),
        ..VmParams::default()
    };
    assert!(VmConfig::from_params(&alone)
        .unwrap_err()
        .to_string()
        .contains("must be at least 1 MiB"));
    assert_eq!(
        err(MemoryConfig::parse("size=512K")),
        "size=512K: must be at least 1 MiB (e.g. 512M)"
    );
    assert_eq!(
        err(MemoryConfig::parse("size=1048577")),
        "size=1048577: must be a multiple of 4 KiB"
    );
    assert_eq!(
        err(MemoryConfig::parse("size=2T")),
        "size=2T: must be at most 1 TiB"
    );
    assert_eq!(
        err(MemoryConfig::parse("size=99999999999T")),
        "size=99999999999T: too large"
    );
    assert!(err(MemoryConfig::parse("size=lots")).starts_with("size=lots: not a size"));
    assert!(err(MemoryConfig::parse("size=")).starts_with("size=: empty value"));
    assert!(MemoryConfig::parse("size=1G,shared=on").unwrap().shared);
    assert!(err(MemoryConfig::parse("shared=maybe")).starts_with("shared=maybe"));
    assert_eq!(
        err(MemoryConfig::parse("size=1G,mergeable=on")),
        "mergeable=on: not supported by Palisade (use off)"
    );
    let huge = MemoryConfig::parse("size=1G,hugepages=on,hugepage_size=1G").unwrap();
    assert!(huge.hugepages);
    assert_eq!(huge.hugepage_size, Some(1 << 30));
    let room = MemoryConfig::parse("size=1G,hotplug_size=2G,hotplug_method=acpi").unwrap();
    assert_eq!(room.hotplug_size, Some(2 << 30));
    assert!(err(MemoryConfig::parse("hotplug_size=lots")).starts_with("hotplug_size=lots"));
    assert!(err(MemoryConfig::parse("hotplug_method=dimm")).contains("use acpi or virtio-mem"));
    assert!(err(MemoryConfig::parse("prefault=on")).starts_with("prefault: unknown key"));
    assert!(err(MemoryConfig::parse("size=1G,size=2G")).starts_with("size: given more than once"));
}

// ---- --serial / --console ----

#[test]
fn console_modes() {
    for (s, mode) in [
        ("off", ConsoleOutputMode::Off),
        ("null", ConsoleOutputMode::Null),
        ("tty", ConsoleOutputMode::Tty),
        ("pty", ConsoleOutputMode::Pty),
    ] {
        assert_eq!(
            ConsoleConfig::parse(s).unwrap(),
            ConsoleConfig::with_mode(mode)
        );
    }
    let c = ConsoleConfig::parse("file=/tmp/serial.log").unwrap();
    assert_eq!(c, ConsoleConfig::with_file("/tmp/serial.log"));
    let c = ConsoleConfig::parse("file=\"/tmp/a,b=c.log\"").unwrap();
    assert_eq!(c.file, Some(PathBuf::from("/tmp/a,b=c.log")));
    let c = ConsoleConfig::parse("socket=/tmp/s.sock").unwrap();
    assert_eq!(c.mode, ConsoleOutputMode::Socket);
    assert_eq!(c.socket, Some(PathBuf::from("/tmp/s.sock")));
}

#[test]
fn console_bad_values() {
    assert_eq!(
        err(ConsoleConfig::parse("")),
        "empty value: use off, null, tty, pty, file=PATH or socket=PATH"
    );
    assert_eq!(
        err(ConsoleConfig::parse("serial")),
        "serial: unknown mode: use off, null, tty, pty, file=PATH or socket=PATH"
    );
    assert_eq!(err(ConsoleConfig::parse("file=")), "file=: empty value");
    assert!(
        err(ConsoleConfig::parse("file=/a,socket=/b")).starts_with("file and socket cannot both")
    );
    assert!(err(ConsoleConfig::parse("path=/a"))
        .starts_with("path: unknown key (accepted keys: file, socket)"));
    assert!(err(ConsoleConfig::parse("file=\"/a")).contains("file: unterminated quote"));
}

// ---- --disk ----

#[test]
fn disk_full() {
    let d = DiskConfig::parse(
        "path=/img/root.raw,readonly=on,direct=off,id=root,num_queues=4,queue_size=256,serial=SN1",
    )
    .unwrap();
    assert_eq!(d.path, Some(PathBuf::from("/img/root.raw")));
    assert!(d.readonly);
    assert!(!d.direct);
    assert_eq!(d.id.as_deref(), Some("root"));
    assert_eq!(d.num_queues, 4);
    assert_eq!(d.queue_size, 256);
    assert_eq!(d.serial.as_deref(), Some("SN1"));
    assert!(d.validate().is_ok());
}

#[test]
fn disk_defaults_and_quoting() {
    let d = DiskConfig::parse("path=\"/img/a,b.raw\"").unwrap();
    assert_eq!(d, DiskConfig::with_path("/img/a,b.raw"));
    assert_eq!(d.num_queues, DEFAULT_DISK_NUM_QUEUES);
    assert_eq!(d.queue_size, DEFAULT_DISK_QUEUE_SIZE);
    assert_eq!(
        DiskConfig::parse("path=/a,queue_size=1")
            .unwrap()
            .queue_size,
        1
    );
    assert_eq!(
        DiskConfig::parse("path=/a,queue_size=32768")
            .unwrap()
            .queue_size,
        32768
    );
}

#[test]
fn disk_bad_values() {
    assert_eq!(
        err(DiskConfig::parse("readonly=on")),
        "path: required (add path=...)"
    );
    assert_eq!(err(DiskConfig::parse("")), "path: required (add path=...)");
    assert_eq!(err(DiskConfig::parse("path=")), "path=: empty value");
    assert_eq!(
        err(DiskConfig::parse("path=/a,readonly=yes")),
        "readonly=yes: not a boolean (use on or off)"
    );
    assert_eq!(
        err(DiskConfig::parse("path=/a,num_queues=0")),
        "num_queues=0: must be at least 1"
    );
    assert_eq!(
        err(DiskConfig::parse("path=/a,num_queues=65536")),
        "num_queues=65536: must be at most 65535"
    );
    for q in ["0", "100", "65536"] {
        assert_eq!(
            err(DiskConfig::parse(&format!("path=/a,queue_size={q}"))),
            format!("queue_size={q}: must be a power of two between 1 and 32768")
        );
    }
    assert_eq!(err(DiskConfig::parse("path=/a,id=")), "id=: empty value");
    assert!(err(DiskConfig::parse("path=/a,vhost_user=on"))
        .starts_with("vhost_user: unknown key (accepted keys: path, readonly, direct, id, num_queues, queue_size, serial, pci_segment, rate_limit_group, bw_size,"));
    assert!(err(DiskConfig::parse("path=/a,path=/b")).starts_with("path: given more than once"));
    assert!(err(DiskConfig::parse("path=\"/a,readonly=on")).starts_with("path: unterminated quote"));
}

// ---- --net ----

#[test]
fn net_full() {
    let n = NetConfig::parse(
        "tap=tap0,mac=52:54:00:12:34:56,ip=192.168.249.1,mask=255.255.255.0,id=net0,num_queues=4,queue_size=512",
    )
    .unwrap();
    assert_eq!(n.tap.as_deref(), Some("tap0"));
    assert_eq!(n.mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(n.ip.as_deref(), Some("192.168.249.1"));
    assert_eq!(n.mask.as_deref(), Some("255.255.255.0"));
    assert_eq!(n.id.as_deref(), Some("net0"));
    assert_eq!((n.num_queues, n.queue_size), (4, 512));
    assert_eq!(n.fds, None);
    assert!(n.validate().is_ok());
}

#[test]
fn net_offloads() {
    let n = NetConfig::parse("tap=tap0").unwrap();
    assert!(n.offload_tso && n.offload_ufo && n.offload_csum);
    let n = NetConfig::parse("tap=tap0,offload_tso=off,offload_ufo=off,offload_csum=off").unwrap();
    assert!(!n.offload_tso && !n.offload_ufo && !n.offload_csum);
    assert!(n.validate().is_ok());
    assert!(err(NetConfig::parse("offload_tso=maybe")).starts_with("offload_tso=maybe:"));
}

#[test]
fn net_empty_values_mean_not_given() {
    let n = NetConfig::parse("tap=,mac=,ip=,mask=").unwrap();
    assert_eq!(n, NetConfig::default());
    assert_eq!(NetConfig::parse("").unwrap(), NetConfig::default());
    assert_eq!(
        NetConfig::parse("tap=,id=,num_queues=").unwrap(),
        NetConfig::default()
    );
}

#[test]
fn net_fds() {
    let n = NetConfig::parse("fd=[3,4],mac=52:54:00:00:00:01").unwrap();
    assert_eq!(n.fds, Some(vec![3, 4]));
    assert_eq!(n.num_queues, 4);
    let n = NetConfig::parse("fd=5").unwrap();
    assert_eq!(n.fds, Some(vec![5]));
    assert_eq!(n.num_queues, 2);
    let n = NetConfig::parse("fd=[5,6],num_queues=4").unwrap();
    assert_eq!(n.num_queues, 4);
    assert!(n.validate().is_ok());
}

#[test]
fn net_bad_values() {
    for mac in [
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "zz:54:00:12:34:56",
        "525400123456",
        "52-54-00-12-34-56",
        "5:54:00:12:34:56",
    ] {
        assert!(
            err(NetConfig::parse(&format!("mac={mac}")))
                .starts_with(&format!("mac={mac}: not a MAC address")),
            "{mac}"
        );
    }
    assert!(err(NetConfig::parse("mac=53:54:00:12:34:56")).contains("multicast"));
    assert!(err(NetConfig::parse("ip=300.1.1.1")).starts_with("ip=300.1.1.1: not an IPv4 address"));
    assert!(err(NetConfig::parse("ip=fe80::1")).starts_with("ip=fe80::1: not an IPv4 address"));
    assert!(err(NetConfig::parse("mask=255.0.255.0"))
        .starts_with("mask=255.0.255.0: not a valid netmask"));
    assert!(err(NetConfig::parse("mask=abc")).starts_with("mask=abc: not an IPv4 netmask"));
    for q in ["0", "1", "3"] {
        assert!(
            err(NetConfig::parse(&format!("num_queues={q}"))).starts_with(&format!(
                "num_queues={q}: must be an even number, at least 2"
            )),
            "{q}"
        );
    }
    assert_eq!(
        err(NetConfig::parse("num_queues=x")),
        "num_queues=x: not a number"
    );
    assert!(
        err(NetConfig::parse("queue_size=3")).starts_with("queue_size=3: must be a power of two")
    );
    assert!(err(NetConfig::parse("fd=[3,4],num_queues=2"))
        .starts_with("num_queues=2: 2 fd(s) need num_queues=4"));
    assert_eq!(err(NetConfig::parse("fd=[]")), "fd=[]: empty value");
    assert_eq!(err(NetConfig::parse("fd=[3,x]")), "fd=[3,x]: not a number");
    assert_eq!(
        err(NetConfig::parse("fd=[-1]")),
        "fd=[-1]: file descriptors are not negative"
    );
    assert!(err(NetConfig::parse("fd=[3,4")).starts_with("fd: unbalanced brackets"));
    assert!(err(NetConfig::parse("tap=tap0,fd=3")).starts_with("tap and fd cannot both be given"));
    assert!(err(NetConfig::parse("tap=tap0,vhost_user=on")).starts_with("vhost_user: unknown key"));
    assert!(err(NetConfig::parse("tap=a,tap=b")).starts_with("tap: given more than once"));
}

// ---- --rng ----

#[test]
fn rng() {
    assert_eq!(RngConfig::parse("").unwrap(), RngConfig::default());
    assert_eq!(
        RngConfig::parse(DEFAULT_RNG_PARAM).unwrap().src,
        PathBuf::from(DEFAULT_RNG_SOURCE)
    );
    assert_eq!(
        RngConfig::parse("src=/dev/random").unwrap().src,
        PathBuf::from("/dev/random")
    );
    assert_eq!(err(RngConfig::parse("src=")), "src=: empty value");
    assert_eq!(
        err(RngConfig::parse("src=/a,iommu=on")),
        "iommu: unknown key (accepted keys: src)"
    );
}

// ---- --landlock-rules ----

#[test]
fn landlock_rules() {
    for access in ["r", "w", "rw"] {
        let r = LandlockConfig::parse(&format!("path=/tmp,access={access}")).unwrap();
        assert_eq!(r.path, PathBuf::from("/tmp"));
        assert_eq!(r.access, access);
    }
    let r = LandlockConfig::parse("path=\"/srv/a,b\",access=rw").unwrap();
    assert_eq!(r.path, PathBuf::from("/srv/a,b"));
    assert_eq!(
        err(LandlockConfig::parse("path=/tmp,access=x")),
        "access=x: must be r, w or rw"
    );
    assert_eq!(
        err(LandlockConfig::parse("path=/tmp,access=wr")),
        "access=wr: must be r, w or rw"
    );
    assert_eq!(
        err(LandlockConfig::parse("path=/tmp")),
        "access: required (add access=...)"
    );
    assert_eq!(
        err(LandlockConfig::parse("access=r")),
        "path: required (add path=...)"
    );
    assert!(
        err(LandlockConfig::parse("path=/tmp,access=r,mode=x")).starts_with("mode: unknown key")
    );
}

// ---- --api-socket ----

#[test]
fn api_socket() {
    assert_eq!(
        ApiSocketConfig::parse("/run/palisade.sock").unwrap(),
        ApiSocketConfig::Path("/run/palisade.sock".into())
    );
    assert_eq!(
        ApiSocketConfig::parse("path=/run/p.sock").unwrap(),
        ApiSocketConfig::Path("/run/p.sock".into())
    );
    assert_eq!(
        ApiSocketConfig::parse("path=\"/run/a=b,c.sock\"").unwrap(),
        ApiSocketConfig::Path("/run/a=b,c.sock".into())
    );
    assert_eq!(
        ApiSocketConfig::parse("fd=3").unwrap(),
        ApiSocketConfig::Fd(3)
    );
    assert_eq!(
        err(ApiSocketConfig::parse("fd=-1")),
        "fd=-1: file descriptors are not negative"
    );
    assert_eq!(err(ApiSocketConfig::parse("fd=x")), "fd=x: not a number");
    assert!(err(ApiSocketConfig::parse("path=/a,fd=3")).starts_with("path and fd cannot both"));
    assert!(err(ApiSocketConfig::parse("")).starts_with("empty value"));
    assert!(err(ApiSocketConfig::parse("sock=/a"))
        .starts_with("sock: unknown key (accepted keys: path, fd)"));
    assert_eq!(err(ApiSocketConfig::parse("path=")), "path=: empty value");
}

// ---- VmConfig::from_params ----

fn params() -> VmParams {
    VmParams {
        kernel: Some("/boot/vmlinux".into()),
        ..VmParams::default()
    }
}

fn params_err(p: &VmParams) -> String {
    let e = VmConfig::from_params(p)
        .expect_err("expected an error")
        .to_string();
    assert!(!e.contains('\n'), "error is not one line: {e}");
    e
}

#[test]
fn from_params_defaults() {
    let c = VmConfig::from_params(&params()).unwrap();
    assert_eq!(c.payload.kernel, Some(PathBuf::from("/boot/vmlinux")));
    assert_eq!(c.payload.cmdline, None);
    assert_eq!(c.payload.initramfs, None);
    assert_eq!(c.cpus, CpusConfig::default());
    assert_eq!(c.memory, MemoryConfig::default());
    // Cloud Hypervisor's defaults: the serial port discards, the virtio console is the tty.
    assert_eq!(c.serial, ConsoleConfig::with_mode(ConsoleOutputMode::Null));
    assert_eq!(c.console, ConsoleConfig::with_mode(ConsoleOutputMode::Tty));
    assert_eq!(c.rng, RngConfig::default());
    assert_eq!(c.disks, None);
    assert_eq!(c.net, None);
    assert!(!c.landlock_enable);
    assert_eq!(c.landlock_rules, None);
    assert!(c.validate().is_ok());
}

#[test]
fn from_params_full() {
    let dir = std::env::temp_dir();
    let p = VmParams {
        kernel: Some("/boot/vmlinux".into()),
        initramfs: Some("/boot/initrd".into()),
        cmdline: Some("console=ttyS0 root=/dev/vda".into()),
        cpus: Some("boot=2,max=4".into()),
        memory: Some("size=1G".into()),
        serial: Some("file=/tmp/serial.log".into()),
        console: Some("off".into()),
        disks: vec![
            "path=/img/a.raw,id=a".into(),
            "path=/img/b.raw,readonly=on".into(),
        ],
        net: vec!["tap=,mac=,ip=,mask=".into(), "tap=tap1,id=n1".into()],
        rng: Some("src=/dev/random".into()),
        landlock: true,
        landlock_rules: vec![format!("path={},access=rw", dir.display())],
        ..VmParams::default()
    };
    let c = VmConfig::from_params(&p).unwrap();
    assert_eq!(c.payload.initramfs, Some(PathBuf::from("/boot/initrd")));
    assert_eq!(
        c.payload.cmdline.as_deref(),
        Some("console=ttyS0 root=/dev/vda")
    );
    assert_eq!((c.cpus.boot_vcpus, c.cpus.max_vcpus), (2, 4));
    assert_eq!(c.memory.size, 1 << 30);
    assert_eq!(c.serial, ConsoleConfig::with_file("/tmp/serial.log"));
    let disks = c.disks.as_ref().unwrap();
    assert_eq!(disks.len(), 2);
    assert!(disks[1].readonly);
    let net = c.net.as_ref().unwrap();
    assert_eq!(net[0], NetConfig::default());
    assert_eq!(net[1].tap.as_deref(), Some("tap1"));
    assert_eq!(c.rng.src, PathBuf::from("/dev/random"));
    assert!(c.landlock_enable);
    let rules = c.landlock_rules.as_ref().unwrap();
    assert_eq!(rules[0].path, dir);
    assert_eq!(rules[0].access, "rw");
    assert!(c.has_device_id("a"));
    assert!(c.has_device_id("n1"));
    assert!(!c.has_device_id("b"));
}

#[test]
fn from_params_kernel_errors() {
    let e = params_err(&VmParams::default());
    assert!(
        e.starts_with("--kernel: required: give the kernel image to boot"),
        "{e}"
    );
    let e = params_err(&VmParams {
        kernel: Some(String::new()),
        ..VmParams::default()
    });
    assert!(e.starts_with("--kernel: empty path"), "{e}");
    let e = params_err(&VmParams {
        firmware: Some("/fw".into()),
        ..params()
    });
    assert_eq!(
        e,
        "--firmware: not supported by Palisade: boot a kernel image with --kernel instead"
    );
    let e = params_err(&VmParams {
        initramfs: Some(String::new()),
        ..params()
    });
    assert!(e.starts_with("--initramfs: empty path"), "{e}");
}

#[test]
fn from_params_names_the_flag() {
    let cases: Vec<(VmParams, &str)> = vec![
        (VmParams { cpus: Some("boot=0".into()), ..params() }, "--cpus: boot=0: must be at least 1"),
        (VmParams { cpus: Some("boot=abc".into()), ..params() }, "--cpus: boot=abc: not a number"),
        (VmParams { memory: Some("size=1000".into()), ..params() }, "--memory: size=1000: must be at least 1 MiB (e.g. 512M)"),
        (VmParams { memory: Some("size=1G,mergeable=on".into()), ..params() }, "--memory: mergeable=on: not supported by Palisade (use off)"),
        (VmParams { serial: Some("bogus".into()), ..params() }, "--serial: bogus: unknown mode: use off, null, tty, pty, file=PATH or socket=PATH"),
        (VmParams { console: Some("socket=/tmp/s".into()), ..params() }, "--console: socket=/tmp/s: the socket mode is the serial port's (--serial socket=PATH); use off, null, tty, pty or file=PATH"),
        (VmParams { disks: vec!["path=/a".into(), "path=/b,num_queues=0".into()], ..params() }, "--disk: num_queues=0: must be at least 1"),
        (VmParams { disks: vec!["readonly=on".into()], ..params() }, "--disk: path: required (add path=...)"),
        (VmParams { net: vec!["mac=zz".into()], ..params() }, "--net: mac=zz: not a MAC address (write six pairs of hex digits, e.g. 52:54:00:12:34:56)"),
        (VmParams { rng: Some("src=".into()), ..params() }, "--rng: src=: empty value"),
        (VmParams { pmem: vec!["size=2M".into()], ..params() }, "--pmem: file: required (add file=...)"),
        (VmParams { pmem: vec!["file=/p,size=3M".into()], ..params() }, "--pmem: pmem[0].size=3145728: must be a non-zero multiple of 2 MiB"),
        (VmParams { landlock: true, landlock_rules: vec!["path=/tmp,access=x".into()], ..params() }, "--landlock-rules: access=x: must be r, w or rw"),
    ];
    for (p, want) in cases {
        assert_eq!(params_err(&p), want);
    }
}

#[test]
fn from_params_console_defaults_and_tty_conflict() {
    // `--serial tty` with the default console (tty) is taken, as Cloud Hypervisor does.
    let both = VmConfig::from_params(&VmParams {
        serial: Some("tty".into()),
        ..params()
    })
    .unwrap();
    assert_eq!(
        (both.serial.mode, both.console.mode),
        (ConsoleOutputMode::Tty, ConsoleOutputMode::Tty)
    );
    let c = VmConfig::from_params(&VmParams {
        serial: Some("off".into()),
        console: Some("tty".into()),
        ..params()
    })
    .unwrap();
    assert_eq!(c.serial.mode, ConsoleOutputMode::Off);
    assert_eq!(c.console.mode, ConsoleOutputMode::Tty);
    let c = VmConfig::from_params(&VmParams {
        serial: Some("pty".into()),
        console: Some("pty".into()),
        ..params()
    })
    .unwrap();
    assert_eq!(c.console.mode, ConsoleOutputMode::Pty);
}

#[test]
fn from_params_duplicate_ids() {
    let e = params_err(&VmParams {
        disks: vec!["path=/a,id=x".into(), "path=/b,id=x".into()],
        ..params()
    });
    assert_eq!(
        e,
        "--disk: id=x: already used by another --disk or --net (give each device its own id)"
    );
    let e = params_err(&VmParams {
        disks: vec!["path=/a,id=x".into()],
        net: vec!["id=x".into()],
        ..params()
    });
    assert_eq!(
        e,
        "--net: id=x: already used by another --disk or --net (give each device its own id)"
    );
}

#[test]
fn from_params_landlock_rules() {
    let e = params_err(&VmParams {
        landlock: true,
        landlock_rules: vec!["path=/nope,access=rw".into()],
        ..params()
    });
    assert_eq!(
        e,
        "--landlock-rules: path=/nope,access=rw: /nope does not exist (create it first or fix the path)"
    );
    let e = params_err(&VmParams {
        landlock: false,
        landlock_rules: vec!["path=/tmp,access=rw".into()],
        ..params()
    });
    assert!(e.starts_with("--landlock-rules: needs --landlock"), "{e}");
    let c = VmConfig::from_params(&VmParams {
        landlock: true,
        landlock_rules: vec!["path=/tmp,access=r".into(), "path=/,access=w".into()],
        ..params()
    })
    .unwrap();
    assert_eq!(c.landlock_rules.as_ref().map(Vec::len), Some(2));
    let c = VmConfig::from_params(&VmParams {
        landlock: true,
        ..params()
    })
    .unwrap();
    assert!(c.landlock_enable);
    assert_eq!(c.landlock_rules, None);
}

#[test]
fn params_error_flag_accessor() {
    let e = VmConfig::from_params(&VmParams {
        cpus: Some("boot=0".into()),
        ..params()
    })
    .unwrap_err();
    assert_eq!(e.flag(), "cpus");
    assert!(matches!(e, ParamsError::Option { .. }));
}
