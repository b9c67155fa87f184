//! Every boot path and machine behaviour, from the guest's side: PVH, the Linux 64-bit
//! entry (ELF and bzImage), command line and initramfs delivery, SMP bring-up, serial input,
//! reset through the i8042, ACPI and a triple fault, and faults that stop the VM.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use common::*;

fn boot(guest_name: &str, extra: &[&str]) -> std::process::Output {
    let kernel = guest(guest_name);
    let mut args = vec!["--kernel", path_str(&kernel)];
    if !extra.contains(&"--memory") {
        args.extend_from_slice(&["--memory", "size=128M"]);
    }
    args.extend_from_slice(extra);
    run_palisade(&args)
}

fn initramfs(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path("initramfs.img");
    std::fs::write(&p, "palisade initramfs marker 7\nsecond line\n").unwrap();
    p
}

#[test]
fn pvh_entry_gets_cmdline_memory_map_and_initramfs_module() {
    let dir = TempDir::new("pvh");
    let initrd = initramfs(&dir);
    let out = boot(
        "pvh_info",
        &[
            "--cmdline",
            "console=ttyS0 marker=42",
            "--initramfs",
            path_str(&initrd),
        ],
    );
    assert_pass(&out, "PASS pvh_info");
    let text = stdout(&out);
    assert!(
        text.contains("cmdline: console=ttyS0 marker=42\n"),
        "{text}"
    );
    // 128 MiB minus the 385 KiB BIOS hole below 1 MiB.
    assert!(text.contains("memmap: 3 entries, 130687 KiB RAM"), "{text}");
    assert!(
        text.contains("initramfs: 40 bytes: palisade initramfs marker 7"),
        "{text}"
    );
}

#[test]
fn pvh_entry_without_initramfs_has_no_module() {
    let out = boot("pvh_info", &[]);
    assert_pass(&out, "PASS pvh_info");
    assert!(!stdout(&out).contains("initramfs:"));
}

#[test]
fn linux_64bit_entry_from_an_elf_gets_boot_params() {
    let dir = TempDir::new("linux64");
    let initrd = initramfs(&dir);
    let out = boot(
        "linux64",
        &[
            "--cmdline",
            "root=/dev/vda quiet",
            "--initramfs",
            path_str(&initrd),
        ],
    );
    assert_pass(&out, "PASS linux64");
    let text = stdout(&out);
    assert!(text.contains("cmdline: root=/dev/vda quiet\n"), "{text}");
    assert!(text.contains("e820: 3 entries, 130687 KiB RAM"), "{text}");
    assert!(
        text.contains("initrd: 40 bytes: palisade initramfs marker 7"),
        "{text}"
    );
}

#[test]
fn bzimage_is_loaded_and_entered_at_its_64bit_entry() {
    let dir = TempDir::new("bzimage");
    let initrd = initramfs(&dir);
    let out = boot(
        "bzimage",
        &[
            "--cmdline",
            "console=ttyS0",
            "--initramfs",
            path_str(&initrd),
        ],
    );
    assert_pass(&out, "PASS bzimage");
    let text = stdout(&out);
    assert!(text.contains("cmdline: console=ttyS0\n"), "{text}");
    assert!(text.contains("initrd: 40 bytes:"), "{text}");
}

#[test]
fn more_memory_is_reported_to_the_guest() {
    let out = boot("pvh_info", &["--memory", "size=256M"]);
    assert_pass(&out, "memmap: 3 entries, 261759 KiB RAM");
}

#[test]
fn every_vcpu_comes_up_with_its_own_apic_id() {
    for n in [1u32, 2, 4] {
        let cpus = format!("boot={n}");
        let out = boot("smp", &["--cpus", &cpus]);
        assert_pass(&out, &format!("PASS smp: {n} cpus"));
        let text = stdout(&out);
        for id in 1..n {
            assert!(text.contains(&format!("cpu {id} up\n")), "{text}");
        }
        assert!(text.contains("cpu 0 up (boot cpu)"), "{text}");
    }
}

/// Two packages of three cores: core numbers take two bits, so the APIC ids skip 3; every
/// vCPU is started by its id from the MP table and reports the same id through CPUID and
/// its local APIC.
#[test]
fn a_topology_lays_out_the_apic_ids() {
    let out = boot("smp", &["--cpus", "boot=6,topology=1:3:1:2"]);
    assert_pass(&out, "PASS smp: 6 cpus");
    let text = stdout(&out);
    assert!(text.contains("APIC ids: 0 (boot) 1 2 4 5 6"), "{text}");
    for id in [1, 2, 4, 5, 6] {
        assert!(text.contains(&format!("cpu {id} up\n")), "{text}");
    }
    // A topology that does not hold max_vcpus is refused on one line.
    let out = boot("smp", &["--cpus", "boot=4,topology=1:2:1:1"]);
    assert_one_line_error(&out, "cpus.topology=1:2:1:1: holds 2 vCPUs");
}

#[test]
fn max_vcpus_above_boot_vcpus_lists_only_booted_cpus() {
    let out = boot("smp", &["--cpus", "boot=2,max=4"]);
    assert_pass(&out, "PASS smp: 2 cpus");
}

#[test]
fn serial_input_from_stdin_reaches_the_guest() {
    let kernel = guest("echo");
    let mut child = palisade()
        .args(["--kernel", path_str(&kernel), "--memory", "size=64M"])
        .args(SERIAL_ON_STDOUT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"palisade echo q")
        .unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_pass(&out, "PASS echo");
    assert!(stdout(&out).contains("palisade echo "), "{}", stdout(&out));
}

/// `--serial tty` with the virtio console left at its default (tty too), as Cloud
/// Hypervisor takes it: both write to the terminal, the serial port gets the input.
#[test]
fn serial_and_console_may_share_the_terminal() {
    let kernel = guest("echo");
    let mut child = palisade()
        .args(["--kernel", path_str(&kernel), "--memory", "size=64M"])
        .args(["--serial", "tty"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shared q").unwrap();
    let out = wait_output(child, Duration::from_secs(60));
    assert_pass(&out, "PASS echo");
    assert!(stdout(&out).contains("shared "), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("both use the terminal"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn i8042_reset_reboots_and_reloads_the_kernel() {
    let out = boot("reboot", &[]);
    assert_pass(&out, "PASS reboot");
    let text = stdout(&out);
    assert!(text.contains("reboot: first boot") && text.contains("reboot: second boot"));
}

#[test]
fn acpi_reset_register_reboots_too() {
    let out = boot("reboot", &["--cmdline", "method=acpi"]);
    assert_pass(&out, "PASS reboot");
    assert!(stdout(&out).contains("through ACPI"));
}

#[test]
fn a_triple_fault_resets_the_machine() {
    let out = boot("triple", &[]);
    assert_pass(&out, "PASS triple: reset after triple fault");
}

#[test]
fn reboot_brings_every_vcpu_back() {
    // The smp guest cannot reboot itself, but reboot + smp is covered by rebooting smp's
    // machine: boot the reboot guest with 4 vCPUs and check it still passes.
    let out = boot("reboot", &["--cpus", "boot=4"]);
    assert_pass(&out, "PASS reboot");
}

#[test]
fn an_unhandled_fault_stops_the_vm_with_an_error_naming_exit_and_rip() {
    let out = boot("fault", &[]);
    assert!(stdout(&out).contains("fault: jumping to unbacked memory"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("KVM internal error"), "{err}");
    assert!(err.contains("guest RIP 0xd0000000"), "{err}");
}

#[test]
fn demo_guest_runs() {
    let out = boot("demo", &["--cpus", "boot=2", "--cmdline", "console=ttyS0"]);
    assert_pass(&out, "PASS demo");
    assert!(stdout(&out).contains("cpus: 2 in the MP table"));
}

#[test]
fn no_shutdown_keeps_the_vmm_until_sigterm() {
    let kernel = guest("hello");
    let mut child = palisade()
        .args(["--kernel", path_str(&kernel), "--no-shutdown", "-v"])
        .args(SERIAL_ON_STDOUT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    let mut stdout_pipe = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    while !seen.ends_with(b"\n") {
        let n = stdout_pipe.read(&mut buf).unwrap();
        assert!(n > 0, "guest output ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    // The guest powers off, but the VMM stays: it is still there to take SIGTERM (had it
    // exited on its own, its log would not say it received the signal).
    use std::io::BufRead;
    let mut log = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    log.by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("guest powered off"))
        .expect("the guest powered off");
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = log.map(|l| l.unwrap()).collect();
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        rest.iter()
            .any(|l| l.contains("received SIGTERM: shutting down")),
        "{rest:?}"
    );
}

#[test]
fn pty_serial_passes_input_and_output() {
    let kernel = guest("echo");
    let mut child = palisade()
        // --no-shutdown keeps the pty open until the test has read everything.
        .args([
            "--kernel",
            path_str(&kernel),
            "--serial",
            "pty",
            "--no-shutdown",
            "-v",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map(ChildGuard::new)
        .unwrap();
    let pty = read_log_until(&mut child, "serial port on ");
    let pty = pty.trim().to_string();
    let mut term = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&pty)
        .unwrap_or_else(|e| panic!("open {pty}: {e}"));
    term.write_all(b"via pty q").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("PASS echo") {
        let n = term.read(&mut buf).unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains("echo: ready") && text.contains("via pty "),
        "{text}"
    );
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = wait_output(child, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(0));
}

/// A guest that powers off and is booted again (`--no-shutdown`, then `vm.boot`) finds its
/// virtio device as after power-on: MSI-X off and status 0 (the guest driver fails
/// otherwise), so no queue or interrupt state of one boot reaches the next; and its
/// interrupts reach it on every boot.
#[test]
fn devices_are_reset_between_boots() {
    let dir = TempDir::new("boot-reset");
    let vmm = created_vm(&dir, "virtio_rng", serde_json::json!({}));
    for boot in 1..=3 {
        assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
        let text = vmm.wait_serial("PASS virtio_rng", boot);
        assert!(!text.contains("FAIL"), "boot {boot}:\n{text}");
        vmm.wait_state("Shutdown");
    }
    // The device served every boot.
    let counters = vmm.get("vm.counters");
    assert!(
        counters["_rng0"]["interrupts"].as_u64().unwrap() >= 3,
        "{counters}"
    );
}

/// The memfd behind shared guest RAM, seen from outside: its size.
fn guest_ram_memfd_size(pid: u32) -> Option<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().contains("memfd:palisade-guest-ram"))
        })
        .map(|e| std::fs::metadata(e.path()).unwrap().len())
}

/// `memory.shared`: guest RAM is the VMM's memfd (which a vhost-user backend could map),
/// sized to the VM while it exists and emptied when it goes; under Landlock and the
/// filters, with a disk guest using it for its queues.
#[test]
fn shared_guest_ram_lives_in_a_memfd() {
    let dir = TempDir::new("shared-ram");
    let extra = serde_json::json!({"memory": {"shared": true}, "landlock_enable": true});
    let vmm = created_vm(&dir, "echo", extra);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
    assert_eq!(guest_ram_memfd_size(vmm.pid()), Some(64 << 20));
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", vmm.pid())).unwrap();
    assert!(maps.contains("/memfd:palisade-guest-ram"), "{maps}");
    assert_eq!(vmm.info()["config"]["memory"]["shared"], true);
    assert_eq!(vmm.put("vm.delete", &serde_json::json!({})).0, 204);
    assert_eq!(guest_ram_memfd_size(vmm.pid()), Some(0));

    // On the command line too, with a disk whose queues live in that memory.
    let disk = dir.path("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let out = run_palisade(&[
        "--kernel",
        path_str(&guest("virtio_blk")),
        "--memory",
        "size=64M,shared=on",
        "--disk",
        &format!("path={}", disk.display()),
        "--landlock",
    ]);
    assert_pass(&out, "PASS virtio_blk");
}

/// What Kata Containers' Cloud Hypervisor driver sends at `vm.create` (without the devices
/// still to come, vsock and virtio-fs): a topology, the platform with its identity, room for
/// hot-plugged memory, shared memory. The VM is created and boots, and `vm.info` gives the
/// configuration back, `memory.hotplug_size` included.
#[test]
fn a_kata_style_vm_create_is_taken() {
    let dir = TempDir::new("kata-create");
    let kata = serde_json::json!({
        "payload": {"cmdline": "console=hvc0 quiet"},
        "cpus": {"boot_vcpus": 1, "max_vcpus": 4,
                 "topology": {"threads_per_core": 1, "cores_per_die": 4,
                              "dies_per_package": 1, "packages": 1}},
        "memory": {"size": 128 << 20, "hotplug_size": 1u64 << 30, "shared": true},
        "platform": {"num_pci_segments": 1, "serial_number": "kata-sandbox-1",
                     "uuid": "7f2b1c9e-4d3a-4b5c-8e6f-0a1b2c3d4e5f",
                     "oem_strings": ["io.katacontainers.sandbox=1"]},
        "rng": {"src": "/dev/urandom"},
    });
    let vmm = created_vm(&dir, "echo", kata);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
    let info = vmm.info();
    let c = &info["config"];
    assert_eq!(c["memory"]["hotplug_size"], 1u64 << 30, "{info}");
    assert_eq!(c["cpus"]["topology"]["cores_per_die"], 4);
    assert_eq!(c["platform"]["serial_number"], "kata-sandbox-1");
    assert_eq!(
        c["platform"]["oem_strings"][0],
        "io.katacontainers.sandbox=1"
    );
}

/// `vm.power-button` (and `palisade-remote power-button`): the generic event device
/// interrupts the guest with the power button's event; before boot it is refused.
#[test]
fn the_power_button_reaches_the_guest() {
    let dir = TempDir::new("power-button");
    let vmm = created_vm(&dir, "power_button", serde_json::json!({}));
    let (code, body) = vmm.put("vm.power-button", &serde_json::json!({}));
    assert_eq!(code, 405, "{body}");
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("power_button: waiting", 1);
    let out = vmm.remote(&["power-button"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = vmm.wait_serial("PASS power_button", 1);
    assert!(text.contains("power_button: pressed"), "{text}");
}

/// `vm.nmi` (and `palisade-remote nmi`): every vCPU gets a non-maskable interrupt, which
/// wakes a guest halted with interrupts off.
#[test]
fn an_nmi_reaches_the_guest() {
    let dir = TempDir::new("nmi");
    let vmm = created_vm(&dir, "nmi", serde_json::json!({}));
    assert_eq!(vmm.put("vm.nmi", &serde_json::json!({})).0, 405);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("nmi: waiting", 1);
    let out = vmm.remote(&["nmi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = vmm.wait_serial("PASS nmi", 1);
    assert!(text.contains("nmi: received"), "{text}");
}

/// The first `PT_LOAD` segment of an ELF64 file: (physical address, file offset, size).
fn first_load(elf: &[u8]) -> (u64, usize, usize) {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54), u16_at(56));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .find(|&p| u32::from_le_bytes(elf[p..p + 4].try_into().unwrap()) == 1)
        .map(|p| {
            (
                u64_at(p + 24),
                u64_at(p + 8) as usize,
                u64_at(p + 32) as usize,
            )
        })
        .expect("a PT_LOAD segment")
}

/// `vm.coredump` of a paused guest: an ELF core whose memory holds the guest's kernel where
/// it was loaded, that `readelf` reads; refused while running, and under Landlock outside
/// the rules (with the rule to give), then allowed by one.
#[test]
fn a_paused_guest_dumps_its_core() {
    let dir = TempDir::new("coredump");
    let dumps = dir.path("dumps");
    std::fs::create_dir(&dumps).unwrap();
    let kernel = guest("echo");
    let sandbox = serde_json::json!({
        "landlock_enable": true,
        "landlock_rules": [{"path": dumps, "access": "rw"}],
    });
    let vmm = created_vm(&dir, "echo", sandbox);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
    let core = dumps.join("guest.core");
    let url = format!("file://{}", core.display());
    let dump = |url: &str| vmm.put("vm.coredump", &serde_json::json!({"destination_url": url}));
    assert_eq!(dump(&url).0, 405, "only a paused VM");
    assert_eq!(vmm.put("vm.pause", &serde_json::json!({})).0, 204);
    let outside = format!("file://{}", dir.path("outside.core").display());
    let (code, body) = dump(&outside);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("--landlock-rules"), "{body}");
    assert_eq!(dump("/not/a/url").0, 400);
    // A directory rule with write access lets the core be created there.
    let (code, body) = dump(&url);
    assert_eq!(code, 204, "{body}");
    assert!(core.is_file());
    let out = vmm.remote(&["coredump", &url]);
    assert!(out.status.success(), "{}", stderr(&out));

    let bytes = std::fs::read(&core).unwrap();
    let (paddr, offset, size) = first_load(&std::fs::read(&kernel).unwrap());
    let kernel_bytes = &std::fs::read(&kernel).unwrap()[offset..offset + size.min(64)];
    // In the core: the load segment whose range holds `paddr`.
    let (base, at, _) = first_load(&bytes);
    assert_eq!(base, 0, "RAM from address 0");
    let start = at + paddr as usize;
    assert_eq!(&bytes[start..start + kernel_bytes.len()], kernel_bytes);
    let readelf = std::process::Command::new("readelf")
        .args(["-h", "-l", "-n"])
        .arg(&core)
        .output()
        .expect("readelf (binutils)");
    let text = String::from_utf8_lossy(&readelf.stdout);
    assert!(readelf.status.success(), "{text}");
    assert!(text.contains("CORE (Core file)"), "{text}");
    assert!(text.contains("NT_PRSTATUS"), "{text}");
    assert_eq!(vmm.put("vm.resume", &serde_json::json!({})).0, 204);
}

/// The CPUs the thread named `name` of `pid` may run on, as `/proc` lists them.
fn cpus_allowed(pid: u32, name: &str) -> Option<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .find(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .and_then(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
        })
}

/// `cpus.affinity`: each vCPU thread runs only on the host CPUs given for it; a host CPU that
/// does not exist fails the boot with the vCPU and CPUs named.
#[test]
fn vcpu_threads_are_pinned_as_asked() {
    let dir = TempDir::new("affinity");
    let pinned = serde_json::json!({"cpus": {
        "boot_vcpus": 2, "max_vcpus": 2,
        "affinity": [{"vcpu": 0, "host_cpus": [1]}, {"vcpu": 1, "host_cpus": [0]}],
    }});
    let vmm = created_vm(&dir, "echo", pinned);
    assert_eq!(vmm.put("vm.boot", &serde_json::json!({})).0, 204);
    vmm.wait_serial("echo: ready", 1);
    assert_eq!(cpus_allowed(vmm.pid(), "vcpu0").as_deref(), Some("1"));
    assert_eq!(cpus_allowed(vmm.pid(), "vcpu1").as_deref(), Some("0"));
    assert_eq!(
        vmm.info()["config"]["cpus"]["affinity"][0]["host_cpus"],
        serde_json::json!([1])
    );

    let dir = TempDir::new("affinity-bad");
    let absent = serde_json::json!({"cpus": {
        "boot_vcpus": 1, "max_vcpus": 1, "affinity": [{"vcpu": 0, "host_cpus": [1000]}],
    }});
    let vmm = created_vm(&dir, "echo", absent);
    let (code, body) = vmm.put("vm.boot", &serde_json::json!({}));
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("cannot pin vCPU 0 to host CPUs [1000]"),
        "{body}"
    );
}

/// `--cpus features=amx`: where KVM gives guests AMX (asked for as Palisade asks, from this
/// process) the VM boots with it; where it does not, the VM is refused on one line saying
/// so. A VM without the feature boots either way.
#[test]
fn amx_is_given_where_kvm_has_it_and_refused_on_one_line_otherwise() {
    let (kvm, _) = vmm::vm::open_kvm().expect("/dev/kvm");
    let offered = vmm::x86_64::amx::enable(&kvm);
    let out = boot("hello", &["--cpus", "boot=1,features=amx"]);
    match offered {
        Ok(_) => {
            assert_pass(&out, "Hello from the Palisade test guest");
        }
        Err(why) => {
            // Whichever refuses — the host kernel (no guest AMX permission) or KVM (no AMX
            // in its CPUID) — the VM is refused with the same line this process got.
            assert!(
                why.contains("KVM on this host offers guests no AMX")
                    || why.contains("the host kernel gives guests no AMX state"),
                "{why}"
            );
            assert_one_line_error(&out, &why);
        }
    }
    let out = boot("hello", &["--cpus", "boot=1"]);
    assert_pass(&out, "Hello from the Palisade test guest");
    let out = boot("hello", &["--cpus", "boot=1,features=avx9"]);
    assert_one_line_error(&out, "features=avx9: unknown CPU feature");
}

/// The core-scheduling cookie of thread `tid` of `pid` (`PR_SCHED_CORE_GET`), or the error
/// of a kernel without core scheduling.
fn core_cookie(tid: u32) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    // SAFETY: PR_SCHED_CORE_GET writes one u64 where the last argument points.
    let r = unsafe {
        libc::prctl(
            libc::PR_SCHED_CORE,
            libc::PR_SCHED_CORE_GET as libc::c_ulong,
            tid as libc::c_ulong,
            0 as libc::c_ulong,
            &mut cookie as *mut u64 as libc::c_ulong,
        )
    };
    if r == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `cpus.core_scheduling`: where the kernel has core scheduling, `vcpu` gives each vCPU
/// thread a cookie of its own and `vm` one for the whole VMM; where it has not, the VM boots
/// all the same and the log says so once.
#[test]
fn core_scheduling_cookies_where_the_kernel_has_them() {
    let supported = core_cookie(std::process::id()).is_ok();
    for mode in ["vcpu", "vm"] {
        let dir = TempDir::new("core-sched");
        let serial = ApiVmm::serial_arg(&dir);
        let cpus = format!("boot=1,core_scheduling={mode}");
        let kernel = guest("echo");
        let vmm = ApiVmm::spawn(
            palisade(),
            &dir,
            &[
                "--kernel",
                path_str(&kernel),
                "--cpus",
                &cpus,
                "--serial",
                &serial,
                "--console",
                "off",
                "--no-shutdown",
                "-v",
            ],
        );
        vmm.wait_serial("echo: ready", 1);
        // Cloud Hypervisor's default, Vm, is left out of vm.info's configuration.
        let shown = vmm.info()["config"]["cpus"]["core_scheduling"].clone();
        let expected = if mode == "vm" {
            serde_json::Value::Null
        } else {
            serde_json::json!("Vcpu")
        };
        assert_eq!(shown, expected, "{mode}");
        if supported {
            let vcpu = std::fs::read_dir(format!("/proc/{}/task", vmm.pid()))
                .unwrap()
                .flatten()
                .find(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "vcpu0")
                })
                .and_then(|t| t.file_name().to_str()?.parse::<u32>().ok())
                .expect("a vcpu0 thread");
            let (main, vcpu) = (core_cookie(vmm.pid()).unwrap(), core_cookie(vcpu).unwrap());
            assert_ne!(vcpu, 0, "{mode}: the vCPU has a cookie");
            assert_eq!(
                main == vcpu,
                mode == "vm",
                "{mode}: main {main:#x}, vcpu {vcpu:#x}"
            );
        } else {
            let log = vmm.log_text();
            assert!(
                log.matches("core scheduling is not available on this host")
                    .count()
                    <= 1,
                "{log}"
            );
            assert!(
                log.contains("core scheduling is not available on this host"),
                "{log}"
            );
        }
    }
}
