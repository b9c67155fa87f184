//! The virtio memory balloon (virtio 1.2, 5.5): the host asks for guest memory back (a
//! target in pages, `num_pages` in the configuration space), the driver hands over pages on
//! the inflate queue, and the device gives them back to the host (`madvise`); pages the
//! driver takes back come through the deflate queue. With free page reporting, the driver
//! also reports free memory, which goes back to the host the same way and is returned at
//! once.
//!
//! The pages are 4 KiB frames named by their guest frame number (a `u32` each). Every frame
//! is checked to lie in guest memory; a chain that names one outside it, or that is not
//! whole frame numbers, is returned and counted as an error without touching anything.

use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::queue::{walk_chain, Running, Seg};
use super::{
    counters_map, ActivateError, ActiveQueue, InterruptCause, VirtioCommon, VirtioDevice,
    VirtioInterrupt, F_RING_INDIRECT_DESC, F_VERSION_1,
};

/// The virtio device type of a memory balloon.
pub const TYPE_BALLOON: u32 = 5;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 128;
/// The balloon's page size (the frames the driver names).
pub const PAGE_SIZE: u64 = 4096;
/// Feature: the driver may take pages back when the guest runs out of memory.
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
/// Feature: free page reporting, on the queue after the deflate queue.
pub const F_PAGE_REPORTING: u64 = 1 << 5;
/// Queue indices.
const INFLATE: u16 = 0;
const DEFLATE: u16 = 1;
const REPORTING: u16 = 2;
/// Chains served per notification before the device yields.
const MAX_CHAINS_PER_CALL: u64 = 256;

/// How the balloon is set up (`--balloon`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// Bytes to ask for at start.
    pub size: u64,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Offer `VIRTIO_BALLOON_F_PAGE_REPORTING`.
    pub free_page_reporting: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    inflated_pages: u64,
    deflated_pages: u64,
    reported_pages: u64,
    released_bytes: u64,
    errors: u64,
}

/// A virtio-balloon device model.
pub struct Balloon {
    common: VirtioCommon,
    active: Option<Running>,
    counters: Counters,
    descs: Vec<Seg>,
    completions: Vec<(u16, u32)>,
    frames: Vec<u32>,
}

fn config(num_pages: u32, actual: u32) -> Vec<u8> {
    let mut c = num_pages.to_le_bytes().to_vec();
    c.extend_from_slice(&actual.to_le_bytes());
    c
}

impl Balloon {
    /// A balloon asking for `options.size` bytes.
    pub fn new(options: BalloonOptions) -> Balloon {
        let mut features = F_VERSION_1 | F_RING_INDIRECT_DESC;
        if options.deflate_on_oom {
            features |= F_DEFLATE_ON_OOM;
        }
        let mut queues = vec![QUEUE_SIZE; 2];
        if options.free_page_reporting {
            features |= F_PAGE_REPORTING;
            queues.push(QUEUE_SIZE);
        }
        Balloon {
            common: VirtioCommon::new(
                TYPE_BALLOON,
                "virtio-balloon",
                queues,
                features,
                config(pages_of(options.size), 0),
            ),
            active: None,
            counters: Counters::default(),
            descs: Vec::new(),
            completions: Vec::new(),
            frames: Vec::new(),
        }
    }

    /// Pages the host asks for.
    pub fn target_pages(&self) -> u32 {
        u32::from_le_bytes(self.common.config[0..4].try_into().unwrap_or_default())
    }

    /// Pages the driver says the balloon holds.
    pub fn actual_pages(&self) -> u32 {
        u32::from_le_bytes(self.common.config[4..8].try_into().unwrap_or_default())
    }
}

fn pages_of(bytes: u64) -> u32 {
    u32::try_from(bytes / PAGE_SIZE).unwrap_or(u32::MAX)
}

/// Gives the host back the 4 KiB page at guest frame `pfn`; false when it is not guest
/// memory or the host would not take it. Private memory is dropped (it reads as zeros next time); shared memory has its
/// backing punched out as well.
fn release(mem: &GuestMemoryMmap, pfn: u32) -> bool {
    let addr = GuestAddress(u64::from(pfn) * PAGE_SIZE);
    let Some(region) = mem.find_region(addr) else {
        return false;
    };
    let Ok(host) = mem.get_host_address(addr) else {
        return false;
    };
    if region.len() < PAGE_SIZE {
        return false;
    }
    let advice = if region.file_offset().is_some() {
        libc::MADV_REMOVE
    } else {
        libc::MADV_DONTNEED
    };
    // SAFETY: `host` is the start of a 4 KiB page inside a mapping of guest memory the device
    // holds; dropping its contents is what the driver asked for (it gave the page up).
    // Huge-page memory refuses a 4 KiB piece: the page stays, and is not counted released.
    unsafe { libc::madvise(host.cast(), PAGE_SIZE as usize, advice) == 0 }
}

impl Balloon {
    /// Reads the frame numbers of a chain into `self.frames`; false if the chain is not
    /// made of whole `u32`s in device-readable guest memory.
    fn read_frames(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> bool {
        walk_chain(chain, &mut self.descs, 64);
        self.frames.clear();
        for seg in &self.descs {
            if seg.write || !seg.len.is_multiple_of(4) {
                return false;
            }
            for i in 0..seg.len / 4 {
                let Some(addr) = seg.addr.checked_add(u64::from(i) * 4) else {
                    return false;
                };
                match mem.read_obj::<u32>(addr) {
                    Ok(pfn) => self.frames.push(u32::from_le(pfn)),
                    Err(_) => return false,
                }
            }
        }
        true
    }

    /// A free page report: each device-writable buffer is free guest memory, whole pages.
    fn serve_report(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) {
        walk_chain(chain, &mut self.descs, 64);
        let whole = |s: &Seg| {
            s.write
                && s.addr.0.is_multiple_of(PAGE_SIZE)
                && u64::from(s.len).is_multiple_of(PAGE_SIZE)
                && mem.get_slice(s.addr, s.len as usize).is_ok()
        };
        if !self.descs.iter().all(whole) {
            self.counters.errors += 1;
            return;
        }
        for s in &self.descs {
            for page in 0..u64::from(s.len) / PAGE_SIZE {
                let pfn = (s.addr.0 / PAGE_SIZE + page) as u32;
                if release(mem, pfn) {
                    self.counters.released_bytes += PAGE_SIZE;
                }
                self.counters.reported_pages += 1;
            }
        }
    }

    fn serve(
        &mut self,
        queue: u16,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) {
        if queue == REPORTING {
            return self.serve_report(mem, chain);
        }
        if !self.read_frames(mem, chain)
            || self
                .frames
                .iter()
                .any(|&p| !mem.address_in_range(GuestAddress(u64::from(p) * PAGE_SIZE)))
        {
            self.counters.errors += 1;
            return;
        }
        let n = self.frames.len() as u64;
        match queue {
            DEFLATE => self.counters.deflated_pages += n,
            INFLATE => {
                for &pfn in &self.frames {
                    if release(mem, pfn) {
                        self.counters.released_bytes += PAGE_SIZE;
                    }
                }
                self.counters.inflated_pages += n;
            }
            _ => {}
        }
    }
}

impl VirtioDevice for Balloon {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4-7) is the driver's to write.
        let end = offset.saturating_add(data.len() as u64);
        if offset >= 4 && end <= 8 {
            let at = offset as usize;
            self.common.config[at..at + data.len()].copy_from_slice(data);
        } else {
            self.common.ignore_config_write(offset, data);
        }
    }

    fn restore_config(&mut self, config: &[u8]) {
        if let Some(actual) = config.get(4..8) {
            self.write_config(4, actual);
        }
    }

    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        if let Some(active) = &mut self.active {
            active.mem = mem;
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let queues = self.common.enabled_queues(queues, &mem)?;
        self.active = Some(Running::new(mem, interrupt, queues));
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.common.reset();
        // The driver starts again from an empty balloon; the target stays.
        self.common.config[4..8].fill(0);
    }

    fn process_queue(&mut self, index: u16) {
        let Some(mut running) = self.active.take() else {
            return;
        };
        let mut completions = std::mem::take(&mut self.completions);
        running.serve_queue(
            index,
            "virtio-balloon",
            MAX_CHAINS_PER_CALL,
            &mut completions,
            |mem, chain| {
                self.serve(index, mem, chain);
                0
            },
        );
        self.completions = completions;
        self.active = Some(running);
    }

    fn resize(&mut self, bytes: u64) -> Result<(), String> {
        let pages = pages_of(bytes);
        self.common.config[0..4].copy_from_slice(&pages.to_le_bytes());
        if let Some(active) = &self.active {
            active.interrupt.trigger(InterruptCause::Config);
        }
        Ok(())
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counters;
        counters_map(&[
            ("target_pages", u64::from(self.target_pages())),
            ("actual_pages", u64::from(self.actual_pages())),
            ("inflated_pages", c.inflated_pages),
            ("deflated_pages", c.deflated_pages),
            ("reported_pages", c.reported_pages),
            ("released_bytes", c.released_bytes),
            ("errors", c.errors),
        ])
    }
}

#[cfg(test)]
mod tests;
