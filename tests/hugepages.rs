//! `memory.hugepages`: guest RAM, and memory hot-plugged later, in huge pages — private or
//! in the shared memfd — reserved when it is mapped, so that a host without enough free
//! pages refuses the VM on one line instead of killing it on a later page fault. The test
//! reserves the pages it needs (as root) and gives them back.

mod common;

use common::*;
use serde_json::json;

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// Sets the pool of 2 MiB pages; puts the old size back when dropped.
struct HugePool(String);

impl HugePool {
    fn set(pages: u64) -> HugePool {
        let old = std::fs::read_to_string(NR_HUGEPAGES).expect("hugetlb support");
        std::fs::write(NR_HUGEPAGES, pages.to_string())
            .expect("reserving huge pages needs root (write to /proc/sys/vm/nr_hugepages)");
        assert_eq!(
            meminfo("HugePages_Total"),
            pages,
            "the kernel gave fewer pages"
        );
        HugePool(old.trim().to_string())
    }
}

impl Drop for HugePool {
    fn drop(&mut self) {
        let _ = std::fs::write(NR_HUGEPAGES, &self.0);
    }
}

fn meminfo(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
}

/// Huge pages in use or promised to mappings.
fn huge_pages_taken() -> u64 {
    meminfo("HugePages_Total") - meminfo("HugePages_Free") + meminfo("HugePages_Rsvd")
}

/// The sizes (KiB) of `pid`'s mappings made of 2 MiB pages.
fn huge_mappings(pid: u32) -> Vec<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut out = Vec::new();
    let mut size = 0;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
        }
        if line.starts_with("KernelPageSize:") && line.contains("2048 kB") {
            out.push(size);
        }
    }
    out
}

#[test]
fn guest_ram_lives_in_huge_pages_private_or_shared() {
    let kernel = guest("memory_hotplug");
    // With no free huge page, the VM is refused at once, saying what to reserve.
    let _empty = HugePool::set(0);
    let out = run_palisade(&[
        "--kernel",
        path_str(&kernel),
        "--memory",
        "size=64M,hugepages=on",
    ]);
    assert_one_line_error(&out, "32 free huge pages of 2048 KiB");
    drop(_empty);

    let _pool = HugePool::set(192);
    for shared in [false, true] {
        let before = huge_pages_taken();
        let dir = TempDir::new("hugepages");
        let memory = json!({"size": 64 << 20, "hugepages": true, "shared": shared,
                            "hotplug_size": 256 << 20});
        let vmm = created_vm(
            &dir,
            "memory_hotplug",
            json!({"memory": memory,
                                                             "landlock_enable": true}),
        );
        assert_eq!(
            huge_pages_taken() - before,
            32,
            "64 MiB of RAM is 32 pages, taken at creation (shared={shared})"
        );
        assert_eq!(vmm.put("vm.boot", &json!({})).0, 204);
        vmm.wait_serial("memory_hotplug: ready", 1);
        assert!(
            huge_mappings(vmm.pid()).contains(&(64 << 10)),
            "guest RAM is a 64 MiB mapping of 2 MiB pages: {:?}",
            huge_mappings(vmm.pid())
        );
        // Hot-plugged memory is made of huge pages too, and the guest uses it.
        for total in [192u64, 320] {
            let (code, text) = vmm.put("vm.resize", &json!({"desired_ram": total << 20}));
            assert_eq!(code, 204, "{text}");
        }
        vmm.wait_serial("PASS memory_hotplug", 1);
        assert_eq!(huge_pages_taken() - before, 32 + 128, "shared={shared}");
        assert!(huge_mappings(vmm.pid()).contains(&(128 << 10)));
        drop(vmm);
    }
}

#[test]
fn huge_page_settings_are_checked() {
    for (memory, message) in [
        (
            "size=64M,hugepage_size=2M",
            "memory.hugepage_size: given without memory.hugepages",
        ),
        (
            "size=64M,hugepages=on,hugepage_size=4M",
            "use 2 MiB (2097152) or 1 GiB",
        ),
        (
            "size=65M,hugepages=on",
            "must be a whole number of 2 MiB huge pages",
        ),
    ] {
        let kernel = guest("hello");
        let out = run_palisade(&["--kernel", path_str(&kernel), "--memory", memory]);
        assert_one_line_error(&out, message);
    }
}
