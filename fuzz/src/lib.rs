//! Fuzz targets for what a hostile guest controls, runnable on stable Rust.
//!
//! Each target turns raw bytes into a sequence of guest actions with the `arbitrary` crate
//! and plays them against a device model, as a driver in the guest would: PCI configuration
//! space accesses, BAR accesses (virtio common configuration, ISR, device configuration,
//! notifications, the MSI-X table and PBA), writes of anything at all into guest memory
//! (descriptor tables, rings, request headers, frames, control commands), queue and host-side
//! processing, resets; and for the I/O
//! APIC, register accesses, interrupt lines and end-of-interrupts. An input passes when the
//! device neither panics nor takes long; guest memory is only reached through `vm-memory`'s
//! bounds-checked accessors, and a check after each input makes sure memory past the guest's
//! is not there to be written.
//!
//! [`run`] drives one target with inputs from a seeded generator; the `fuzz` program runs
//! a million inputs per target, and the tests a short run of each.

use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use devices::bus::BusDevice;
use devices::ioapic::{IoApic, MsiSink};
use devices::netns::NetNs;
use devices::pci::PciDevice;
use devices::tap::Tap;
use devices::virtio::block::{Block, BlockOptions};
use devices::virtio::console::Console;
use devices::virtio::net::{Net, NetOptions};
use devices::virtio::pci::{VirtioPci, BAR0_SIZE};
use devices::virtio::rng::Rng;
use devices::virtio::VirtioDevice;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

/// Guest memory of the fuzzed devices: small, so random addresses often land inside it.
const MEM_SIZE: u64 = 0x4_0000;
/// Where the fuzzer's own driver places queue 0's rings.
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
/// The longest an input may take before it counts as a hang.
pub const HANG: Duration = Duration::from_secs(1);

/// The fuzz targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// virtio-pci transport (config space, common config, MSI-X) over virtio-blk.
    Block,
    /// The same transport over the virtio console.
    Console,
    /// The same transport over the entropy device.
    Rng,
    /// The same transport over virtio-net (two queue pairs and the control queue) on a tap
    /// in a network namespace of its own: headers, frames and control commands.
    Net,
    /// The I/O APIC.
    IoApic,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 5] = [
        Target::Block,
        Target::Console,
        Target::Rng,
        Target::Net,
        Target::IoApic,
    ];

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Target::Block => "virtio-blk",
            Target::Console => "virtio-console",
            Target::Rng => "virtio-rng",
            Target::Net => "virtio-net",
            Target::IoApic => "ioapic",
        }
    }
}

/// Counts the MSIs a device sends (and accepts any).
#[derive(Default)]
struct CountingMsi(AtomicU64);

impl MsiSink for CountingMsi {
    fn send_msi(&self, _address: u64, _data: u32) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// One guest action on a virtio-pci device.
#[derive(Arbitrary, Debug)]
enum PciAction {
    ConfigRead(u8),
    ConfigWrite {
        reg: u8,
        offset: u8,
        data: Vec<u8>,
    },
    BarRead {
        offset: u16,
        len: u8,
    },
    BarWrite {
        offset: u16,
        data: Vec<u8>,
    },
    /// The usual start-up sequence, with one queue (0 to 5: a network device's receive,
    /// transmit and control queues among them) at the fuzzer's ring addresses.
    Setup {
        features: u32,
        size: u16,
        vector: u16,
        queue: u8,
    },
    /// Anything at all written into guest memory.
    Memory {
        addr: u32,
        data: Vec<u8>,
    },
    /// A well-formed-looking chain of `count` descriptors published on queue 0.
    Chain {
        descs: Vec<(u32, u32, u16, u16)>,
        avail_idx: u16,
    },
    Process(u8),
    /// The host side is ready (a frame came in on the tap, say).
    Host(u8),
    Reset,
}

/// One guest action on the I/O APIC.
#[derive(Arbitrary, Debug)]
enum IoApicAction {
    Read { offset: u8, len: u8 },
    Write { offset: u8, data: Vec<u8> },
    Pulse(u8),
    Level(u8, bool),
    Eoi(u8),
    Reset,
}

fn scratch_file(len: u64) -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "palisade-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("scratch file");
    let _ = std::fs::remove_file(&path);
    f.set_len(len).expect("size the scratch file");
    f
}

/// Copies of `taps` for a new network device (the kernel's tap outlives each input).
fn tap_copies(taps: &[Tap]) -> Vec<Tap> {
    taps.iter()
        .map(|t| {
            // SAFETY: duplicating a descriptor we hold; the copy is owned below.
            let fd = unsafe { libc::fcntl(t.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
            assert!(fd >= 0, "dup a tap");
            // SAFETY: `fd` was just made and is owned by nothing else.
            Tap::from_fd(unsafe { OwnedFd::from_raw_fd(fd) }).expect("adopt a tap")
        })
        .collect()
}

fn new_device(target: Target, taps: &[Tap]) -> Box<dyn VirtioDevice> {
    match target {
        Target::Net => Box::new(
            Net::new(
                tap_copies(taps),
                [0x52, 0x54, 0, 0x12, 0x34, 0x56],
                NetOptions {
                    queue_size: 16,
                    ..NetOptions::default()
                },
            )
            .expect("a network device"),
        ),
        Target::Block => Box::new(
            Block::new(
                scratch_file(64 * 1024),
                BlockOptions {
                    discard: true,
                    write_zeroes: true,
                    queue_size: 16,
                    ..BlockOptions::default()
                },
            )
            .expect("a block device"),
        ),
        Target::Console => Box::new(Console::new(Box::new(std::io::sink()), None)),
        Target::Rng => Box::new(Rng::new(
            std::fs::File::open("/dev/urandom").expect("/dev/urandom"),
        )),
        Target::IoApic => unreachable!("not a virtio device"),
    }
}

fn bar_write(dev: &mut VirtioPci, offset: u64, data: &[u8]) {
    dev.bar_write(0, offset, data);
}

fn setup(dev: &mut VirtioPci, features: u32, size: u16, vector: u16, queue: u16) {
    // virtio 1.x common configuration: status, features, queue 0, status.
    bar_write(dev, 0x14, &[1 | 2]);
    bar_write(dev, 0x08, &0u32.to_le_bytes());
    bar_write(dev, 0x0c, &features.to_le_bytes());
    bar_write(dev, 0x08, &1u32.to_le_bytes());
    bar_write(dev, 0x0c, &1u32.to_le_bytes()); // VIRTIO_F_VERSION_1
    bar_write(dev, 0x14, &[1 | 2 | 8]);
    bar_write(dev, 0x16, &queue.to_le_bytes());
    bar_write(dev, 0x18, &size.to_le_bytes());
    bar_write(dev, 0x1a, &vector.to_le_bytes());
    bar_write(dev, 0x20, &DESC.to_le_bytes());
    bar_write(dev, 0x28, &AVAIL.to_le_bytes());
    bar_write(dev, 0x30, &USED.to_le_bytes());
    bar_write(dev, 0x1c, &1u16.to_le_bytes());
    // DRIVER_OK (MSI-X is switched on, or not, by the input's own config writes).
    bar_write(dev, 0x14, &[1 | 2 | 8 | 4]);
}

/// Guest memory with a guard page on either side, filled with a pattern checked after each
/// input: a device that wrote past guest memory would change it.
struct GuardedMemory {
    base: *mut u8,
    len: usize,
}

const PAGE: usize = 4096;
const GUARD_BYTE: u8 = 0x5a;

impl GuardedMemory {
    fn new() -> (GuardedMemory, GuestMemoryMmap) {
        let len = MEM_SIZE as usize + 2 * PAGE;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, -1, 0) };
        assert_ne!(base, libc::MAP_FAILED, "mmap for guest memory");
        let base = base.cast::<u8>();
        let guarded = GuardedMemory { base, len };
        for page in [0, len - PAGE] {
            // SAFETY: both guard pages lie inside the mapping made above.
            unsafe { std::ptr::write_bytes(base.add(page), GUARD_BYTE, PAGE) };
        }
        // SAFETY: the region lies inside the mapping, which outlives the guest memory built on
        // it (see `play_virtio`), with the protection and flags it was made with.
        let region =
            unsafe { MmapRegion::build_raw(base.add(PAGE), MEM_SIZE as usize, prot, flags) }
                .expect("guest memory region");
        let region = GuestRegionMmap::new(region, GuestAddress(0)).expect("guest region");
        let mem = GuestMemoryMmap::from_regions(vec![region]).expect("guest memory");
        (guarded, mem)
    }

    fn guards_intact(&self) -> bool {
        [0, self.len - PAGE].iter().all(|&page| {
            // SAFETY: reading a guard page of our own mapping.
            let guard = unsafe { std::slice::from_raw_parts(self.base.add(page), PAGE) };
            guard.iter().all(|b| *b == GUARD_BYTE)
        })
    }
}

impl Drop for GuardedMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping made in `new`; nothing uses it any more.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

fn play_virtio(
    target: Target,
    taps: &[Tap],
    u: &mut Unstructured<'_>,
    live: &mut bool,
) -> arbitrary::Result<()> {
    // Declared first, so dropped last: the device and `mem` go before the mapping.
    let (guarded, mem) = GuardedMemory::new();
    let result = play_virtio_on(target, taps, &mem, u, live);
    assert!(
        guarded.guards_intact(),
        "a device wrote outside guest memory"
    );
    result
}

fn play_virtio_on(
    target: Target,
    taps: &[Tap],
    mem: &GuestMemoryMmap,
    u: &mut Unstructured<'_>,
    live: &mut bool,
) -> arbitrary::Result<()> {
    let routes = Arc::new(devices::test_util::RouteRecorder::default());
    let mut dev =
        VirtioPci::new(new_device(target, taps), mem.clone(), routes).expect("a virtio-pci device");
    dev.set_bar_address(0, 0xc000_0000);
    let mut steps = 0;
    while !u.is_empty() && steps < 64 {
        steps += 1;
        match PciAction::arbitrary(u)? {
            PciAction::ConfigRead(reg) => {
                dev.config_read(reg as usize % 64);
            }
            PciAction::ConfigWrite { reg, offset, data } => {
                let data = &data[..data.len().min(4)];
                let _ = dev.config_write(reg as usize % 64, offset as usize % 4, data);
            }
            PciAction::BarRead { offset, len } => {
                let mut buf = vec![0u8; (len as usize % 8) + 1];
                dev.bar_read(0, offset as u64 % BAR0_SIZE, &mut buf);
            }
            PciAction::BarWrite { offset, data } => {
                let data = &data[..data.len().min(8)];
                bar_write(&mut dev, offset as u64 % BAR0_SIZE, data);
            }
            PciAction::Setup {
                features,
                size,
                vector,
                queue,
            } => setup(
                &mut dev,
                features,
                size % 32,
                vector % 4,
                u16::from(queue % 6),
            ),
            PciAction::Memory { addr, data } => {
                let _ = mem.write_slice(&data, GuestAddress(addr as u64 % MEM_SIZE));
            }
            PciAction::Chain { descs, avail_idx } => {
                for (i, (addr, len, flags, next)) in descs.iter().take(16).enumerate() {
                    let at = GuestAddress(DESC + 16 * i as u64);
                    let _ = mem.write_obj((*addr as u64) % (MEM_SIZE + 0x1000), at);
                    let _ = mem.write_obj(*len % 0x2_0000, at.unchecked_add(8));
                    let _ = mem.write_obj(*flags & 0x7, at.unchecked_add(12));
                    let _ = mem.write_obj(*next % 16, at.unchecked_add(14));
                }
                let _ = mem.write_obj(0u16, GuestAddress(AVAIL + 4));
                let _ = mem.write_obj(avail_idx, GuestAddress(AVAIL + 2));
            }
            PciAction::Process(q) => {
                // DRIVER_OK: the queue is served, not just notified.
                *live |= dev.status() & 4 != 0;
                dev.process_queue(q as u16 % 6)
            }
            PciAction::Host(token) => dev.process_host(u32::from(token % 3)),
            PciAction::Reset => bar_write(&mut dev, 0x14, &[0]),
        }
    }
    Ok(())
}

fn play_ioapic(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let msi = Arc::new(CountingMsi::default());
    let mut ioapic = IoApic::new(1, msi);
    let mut steps = 0;
    while !u.is_empty() && steps < 64 {
        steps += 1;
        match IoApicAction::arbitrary(u)? {
            IoApicAction::Read { offset, len } => {
                let mut buf = vec![0u8; (len as usize % 8) + 1];
                ioapic.read(offset as u64 % 0x40, &mut buf);
            }
            IoApicAction::Write { offset, data } => {
                let data = &data[..data.len().min(8)];
                ioapic.write(offset as u64 % 0x40, data);
            }
            IoApicAction::Pulse(pin) => ioapic.pulse(pin as usize),
            IoApicAction::Level(pin, high) => ioapic.set_level(pin as usize, high),
            IoApicAction::Eoi(vector) => ioapic.end_of_interrupt(vector),
            IoApicAction::Reset => ioapic.reset(),
        }
    }
    Ok(())
}

/// Plays one input against `target` (`taps` back a network device); returns whether it
/// had a live device process a queue.
pub fn play(target: Target, taps: &[Tap], data: &[u8]) -> bool {
    let mut u = Unstructured::new(data);
    let mut live = false;
    // Running out of bytes ends an input early: that is not a failure.
    let _ = match target {
        Target::IoApic => play_ioapic(&mut u),
        t => play_virtio(t, taps, &mut u, &mut live),
    };
    live
}

/// A small, fast, seeded generator of input bytes (xorshift64*).
pub struct Inputs {
    state: u64,
}

impl Inputs {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Inputs {
        Inputs {
            state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Fills `buf` with a fresh input of a random length up to its capacity.
    pub fn fill(&mut self, buf: &mut Vec<u8>) {
        let len = (self.next() % 512) as usize;
        buf.clear();
        while buf.len() < len {
            buf.extend_from_slice(&self.next().to_le_bytes());
        }
        buf.truncate(len);
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Inputs played.
    pub inputs: u64,
    /// Inputs that panicked, by index (at most a few are kept).
    pub panics: Vec<(u64, String)>,
    /// Inputs that took longer than [`HANG`], by index.
    pub hangs: Vec<(u64, Duration)>,
    /// The slowest input.
    pub slowest: Duration,
    /// Inputs in which a live device (driver started) processed a queue.
    pub live: u64,
}

/// Plays `count` inputs from `seed` against `target`.
pub fn run(target: Target, seed: u64, count: u64) -> Findings {
    // A network device needs taps: two queues' worth, in a namespace made for the run.
    let ns = (target == Target::Net).then(NetNs::new);
    let taps = match &ns {
        Some(ns) => ns.run(|| Tap::open(None, 2).expect("a tap in the fuzz namespace")),
        None => Vec::new(),
    };
    let findings = run_with(target, &taps, seed, count);
    drop(taps);
    if let Some(ns) = ns {
        ns.remove();
    }
    findings
}

fn run_with(target: Target, taps: &[Tap], seed: u64, count: u64) -> Findings {
    let mut inputs = Inputs::new(seed ^ target as u64);
    let mut buf = Vec::with_capacity(512);
    let mut findings = Findings::default();
    for i in 0..count {
        inputs.fill(&mut buf);
        let t = Instant::now();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| play(target, taps, &buf)));
        if let Ok(true) = result {
            findings.live += 1;
        }
        let took = t.elapsed();
        findings.slowest = findings.slowest.max(took);
        if took > HANG && findings.hangs.len() < 8 {
            findings.hangs.push((i, took));
        }
        if let Err(e) = result {
            let message = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            if findings.panics.len() < 8 {
                let _ = writeln!(
                    std::io::stderr(),
                    "{}: input {i} panicked: {message}",
                    target.name()
                );
                findings.panics.push((i, message));
            }
        }
        findings.inputs += 1;
    }
    findings
}
