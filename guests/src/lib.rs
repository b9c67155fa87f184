//! Tiny guests for Palisade's tests and demo, written in assembly and built by `build.rs`
//! with the system toolchain (no downloads). Each prints an explicit success line before it
//! powers off, so a test checks what the guest saw, not only the VMM's exit status.
//!
//! | guest | entry | success line | needs |
//! | --- | --- | --- | --- |
//! | `hello` | PVH | `Hello from the Palisade test guest` | |
//! | `pvh_info` | PVH | `PASS pvh_info` | optional command line and initramfs |
//! | `linux64` | Linux 64-bit (ELF) | `PASS linux64` | optional command line and initrd |
//! | `bzimage` | Linux 64-bit (bzImage) | `PASS bzimage` | optional command line and initrd |
//! | `smp` | PVH | `PASS smp: N cpus` | any number of vCPUs |
//! | `echo` | PVH | `PASS echo` | input on the serial port ending with `q` |
//! | `reboot` | PVH | `PASS reboot` | `method=acpi` on the command line for an ACPI reset |
//! | `fault` | PVH | (none: the VMM must report a vCPU fault) | |
//! | `triple` | PVH | `PASS triple: reset after triple fault` | |
//! | `demo` | PVH | `PASS demo` | |
//! | `virtio_blk` | PVH | `PASS virtio_blk` | a disk; `expect=readonly` if it is read-only; `wait=hotplug` for a hot-added one |
//! | `hotplug` | PVH | `PASS hotplug` | a disk hot-added, then removed (API) |
//! | `virtio_net` | PVH | `PASS virtio_net` | a tap; `host=IP me=IP`; `wait=hotplug` for a hot-added one |
//! | `virtio_rng` | PVH | `PASS virtio_rng` | `expect=file` when the source is a file of bytes 0, 1, 2, … |
//! | `virtio_console` | PVH | `PASS virtio_console` | input ending with `q` on the console, or `expect=noinput` |
//! | `power_button` | PVH | `PASS power_button` | the power button pressed (`vm.power-button`) |
//! | `nmi` | PVH | `PASS nmi` | an NMI (`vm.nmi`) |
//! | `watchdog` | PVH | `PASS watchdog` | `--watchdog`: reset when it stops petting, passes on its second boot |
//! | `virtio_balloon` | PVH | `PASS virtio_balloon` | a balloon (`--balloon size=`), then `desired_balloon` 0 |
//! | `virtio_pmem` | PVH | `PASS virtio_pmem` | a pmem region (`--pmem file=`) read, written and flushed through PAE paging |
//! | `virtio_fs` | PVH | `PASS virtio_fs` | FUSE INIT, LOOKUP, OPEN, READ and WRITE on a virtio-fs device (`--fs`, virtiofsd) |
//! | `virtio_vsock` | PVH | `PASS virtio_vsock` | a vsock device (`--vsock`): accepts a host client's `CONNECT 1234`, exchanges data, connects to host port 5000 |
//! | `pvpanic` | PVH | `PASS pvpanic` | a panic reported through the pvpanic PCI device (`--pvpanic`) |
//! | `snapshot` | PVH | (none: counts for ever, `tick N irqs M`) | taken and restored (`vm.snapshot`, `vm.restore`) |
//! | `pci_segments` | PVH | `PASS pci_segments: N segments` | lists each MCFG segment's bus 0 |
//! | `memory_hotplug` | PVH | `PASS memory_hotplug` | two blocks of memory added (`vm.resize` `desired_ram`) |
//! | `cpu_hotplug` | PVH | `PASS cpu_hotplug` | a vCPU added, removed and added again (`vm.resize`) |
//!
//! A failed check prints `FAIL <name>: <why>` and powers off.
//!
//! The shared assembler headers: `guest.h` (console, numbers, command line, power off,
//! verdicts), `pvh.h` and `pvh_note.h` (the PVH start info and entry note), `mptable.h` (CPUs
//! from the MP table), `ap.h` (starting application processors), `irq.h` (GDT, IDT, local and I/O APIC, a timer watchdog) and `pci.h`
//! (configuration space, ECAM from ACPI's MCFG, BAR moves, virtio PCI capabilities).

use std::path::PathBuf;

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// The path of the built guest `name` (its image, ready for `--kernel`).
///
/// Panics if there is no such guest: a test asking for one that does not exist is a bug.
pub fn path(name: &str) -> PathBuf {
    let file = FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no test guest named {name}"));
    PathBuf::from(env!("OUT_DIR")).join(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_is_built() {
        assert!(ALL.contains(&"hello"));
        assert!(ALL.contains(&"virtio_blk"));
        assert!(ALL.contains(&"hotplug"));
        for name in ALL {
            let p = path(name);
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{} is missing or empty", p.display());
        }
    }

    #[test]
    fn the_bzimage_guest_is_a_flat_image_with_a_setup_header() {
        let image = std::fs::read(path("bzimage")).expect("read bzimage");
        assert_eq!(&image[0x202..0x206], b"HdrS");
        assert_eq!(&image[0x1fe..0x200], &[0x55, 0xaa]);
        assert_eq!(image[0x211] & 1, 1, "LOADED_HIGH");
    }

    #[test]
    #[should_panic(expected = "no test guest")]
    fn an_unknown_guest_panics() {
        path("no-such-guest");
    }
}
