//! Virtio block device (virtio 1.x, section 5.2) backed by a host file or block device.
//!
//! Requests are read on the device's worker thread when a queue is notified. The guest's
//! buffers are checked against guest memory and turned into an `iovec` array, straight
//! between the file and guest memory, without a bounce buffer. Reads, writes and flushes then
//! go to the disk's restricted io_uring ([`uring`]) when it has one, and complete when the
//! ring says so; otherwise (and for discard, write-zeroes and get-id) they run on the thread,
//! with one positional system call per `IOV_MAX` segments (`pread`/`pwrite` for a single
//! segment). Short transfers are resumed and `EINTR` retried.
//!
//! The descriptor chain is walked with virtio-queue's [`DescriptorChain`] iterator, which
//! follows indirect tables and stops on loops, out-of-range indices and unreadable tables.
//! Every buffer is resolved through vm-memory's bounds-checked slices
//! ([`GuestMemoryBackend::get_slice`], or [`GuestMemory::get_slices`] for a buffer that
//! straddles two regions), as virtio-queue's `Reader`/`Writer` do. The device does not use
//! `Reader`/`Writer` themselves: they allocate per request, and they filter descriptors by
//! direction, which would hide a device-readable buffer placed after a device-writable one.
//! Walking the chain directly lets each request be checked for direction without
//! allocating.
//!
//! The request is the byte stream the spec describes: a 16-byte `virtio_blk_outhdr` at the
//! start of the device-readable bytes, the data, and a status byte at the very end of the
//! device-writable bytes. Since `VERSION_1` implies `VIRTIO_F_ANY_LAYOUT`, the split across
//! descriptors is free (a header split over two descriptors is accepted). Any malformed
//! request fails alone with `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for an unknown
//! type) and is returned to the used ring. When not even the status byte can be written,
//! it is returned with length 0 and is not executed.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryMmap, Permissions,
};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

use self::engine::{Engines, Lane, POOL_TOKEN, RING_TOKEN};
use self::pool::IoPool;
use self::uring::{Completion, Op, Submission, Uring};
use super::iov::{iovec_of, IoVecs, IOV_MAX};
use super::queue::{
    clear_notification, drain, interrupt_if_needed, return_chain, walk_chain, Budget, Seg, Served,
};
use super::worker::ThreadSetup;
use super::{
    counters_map, queue_size_is_valid, ActivateError, ActiveQueue, InterruptCause, VirtioCommon,
    VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
    MAX_QUEUE_SIZE, TYPE_BLOCK,
};
use crate::rate_limiter::RateLimiter;

/// The sector size of the virtio-blk protocol, in bytes.
pub const SECTOR_SIZE: u64 = 512;
const SECTOR_SHIFT: u32 = 9;

/// Size of the device configuration space (`struct virtio_blk_config` up to and including
/// `write_zeroes_may_unmap` and its padding).
pub const CONFIG_SPACE_SIZE: usize = 60;

/// Size of `struct virtio_blk_outhdr`.
const HEADER_SIZE: u64 = 16;
/// Size of `struct virtio_blk_discard_write_zeroes`.
const SEGMENT_SIZE: u64 = 16;
/// Largest `virtio_blk_outhdr.type`-independent id length (`VIRTIO_BLK_ID_BYTES`).
const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;

/// Discard limits: any length (punching a hole is cheap), up to Linux's segment limit.
const MAX_DISCARD_SECTORS: u32 = u32::MAX;
const MAX_DISCARD_SEG: u32 = 256;
/// Discard granularity, in sectors (4 KiB, the usual file-system block).
const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Write-zeroes limits: 32 MiB per request bounds the time the device thread spends writing
/// zeros when the file system cannot zero a range with `fallocate`.
const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 16;
const MAX_WRITE_ZEROES_SEG: u32 = 1;

/// How a caller configures a [`Block`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockOptions {
    /// Refuse writes, discards and write-zeroes (`VIRTIO_BLK_F_RO` is offered). The caller
    /// should also have opened the file read-only.
    pub readonly: bool,
    /// Serial number reported by `VIRTIO_BLK_T_GET_ID`: at most 20 bytes, zero-padded.
    pub id: String,
    /// Number of request queues (at least 1; `VIRTIO_BLK_F_MQ` is offered when above 1).
    pub num_queues: u16,
    /// Largest size of each queue (a power of two, 2 to 32768).
    pub queue_size: u16,
    /// Offer `VIRTIO_BLK_F_DISCARD` (ignored when `readonly`).
    pub discard: bool,
    /// Offer `VIRTIO_BLK_F_WRITE_ZEROES` (ignored when `readonly`).
    pub write_zeroes: bool,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            readonly: false,
            id: String::new(),
            num_queues: 1,
            queue_size: 256,
            discard: false,
            write_zeroes: false,
        }
    }
}

/// I/O statistics, reported by [`VirtioDevice::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    read_bytes: u64,
    write_bytes: u64,
    read_ops: u64,
    write_ops: u64,
    flush_ops: u64,
    errors: u64,
    /// Requests handed to io_uring.
    io_uring_ops: u64,
    /// Requests handed to the pool of I/O threads.
    thread_pool_ops: u64,
    /// Reads and writes a disk with an engine finished at once, without blocking.
    nowait_ops: u64,
}

/// Token of the rate limiter's timer among the device's host descriptors.
const LIMIT_TOKEN: u32 = 2;

/// What one pass over a chain learned about its shape.
#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    /// Bytes in device-readable descriptors.
    readable: u64,
    /// Bytes in device-writable descriptors.
    writable: u64,
    /// Index (in `Disk::descs`) of the last non-empty device-writable descriptor.
    last_writable: Option<usize>,
    /// A device-writable descriptor (possibly empty) was seen.
    writable_seen: bool,
    /// A device-readable descriptor follows a device-writable one.
    misordered: bool,
}

impl Layout {
    /// The shape of the chain `descs`.
    fn of(descs: &[Seg]) -> Layout {
        let mut layout = Layout::default();
        for (i, seg) in descs.iter().enumerate() {
            // The chain is at most 4 GiB long (virtio-queue stops iterating beyond), so the
            // sums cannot overflow.
            if seg.write {
                layout.writable += u64::from(seg.len);
                if seg.len > 0 {
                    layout.last_writable = Some(i);
                }
            } else {
                layout.readable += u64::from(seg.len);
                layout.misordered |= layout.writable_seen;
            }
            layout.writable_seen |= seg.write;
        }
        layout
    }
}

/// A page-aligned block of zeros to write from when a range cannot be zeroed with
/// `fallocate` (aligned so that it also works on files opened with `O_DIRECT`).
#[repr(C, align(4096))]
struct Zeros([u8; 65536]);
static ZEROS: Zeros = Zeros([0; 65536]);

/// Status and number of data bytes written into guest memory for one request.
type Outcome = (u8, u32);

/// The backing file and the per-request state (everything a request needs besides the queue).
struct Disk {
    file: File,
    capacity: u64,
    readonly: bool,
    id: [u8; ID_BYTES],
    discard: bool,
    write_zeroes: bool,
    descs: Vec<Seg>,
    /// Cleared before each request returns (see `Disk::process_chain`), or handed to the
    /// ring with it.
    iovecs: IoVecs,
    counters: Counters,
    /// Whether reads, and writes, are first tried at once with `RWF_NOWAIT` when the disk
    /// has an engine (not with `O_DIRECT`, where the call would wait for the device; writes
    /// stop being tried once the file system says it cannot).
    nowait: [bool; 2],
    /// Asynchronous I/O ([`Block::use_io_uring`], [`Block::use_thread_pool`]); without
    /// it requests run on the device's thread.
    engines: Engines<Pending>,
    /// Requests wait for its tokens (`rate_limiter_config`, `rate_limit_group`).
    limiter: Option<RateLimiter>,
    /// Set by `execute` when it leaves the request to an engine: where, and what to submit.
    deferred: Option<(Lane, Op, u64, u64)>,
    /// Empty iovec arrays back from completed requests, reused for the next ones.
    spare_iovecs: Vec<IoVecs>,
}

/// Empty iovec arrays kept for reuse.
const SPARE_IOVECS: usize = 64;

/// What a request in the ring returns to when it completes.
pub(crate) struct Pending {
    queue: u16,
    head: u16,
    /// Where its status byte goes (checked to lie in guest memory).
    status: GuestAddress,
}

/// What the activated device holds.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<ActiveQueue>,
    /// A queue-level driver error was logged at warning level (later ones go to debug, so
    /// that a misbehaving guest cannot flood the log).
    warned: bool,
}

/// A virtio-blk device model.
///
/// Create it with [`Block::new`] from an open file, and hand it (as a [`VirtioDevice`]) to a
/// virtio transport. See the module documentation for how requests are executed.
pub struct Block {
    disk: Disk,
    /// (head, used length) of the requests served in the current pass over a ring.
    completions: Vec<(u16, u32)>,
    num_queues: u16,
    queue_size: u16,
    common: VirtioCommon,
    active: Option<Active>,
    /// Queues that got completions in one pass over the ring (scratch).
    touched: Vec<u16>,
}

impl Block {
    /// Creates a block device over `file`, which the caller opened (read-only when
    /// `options.readonly`, with `O_DIRECT` if wanted). The capacity is the file's length in
    /// whole 512-byte sectors; a trailing partial sector is not exposed.
    pub fn new(mut file: File, options: BlockOptions) -> io::Result<Block> {
        let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
        if options.id.len() > ID_BYTES {
            return Err(invalid(format!(
                "disk id {:?} is {} bytes long; at most {ID_BYTES} are allowed",
                options.id,
                options.id.len()
            )));
        }
        if options.num_queues == 0 {
            return Err(invalid("a disk needs at least one queue".into()));
        }
        let qs = options.queue_size;
        if !queue_size_is_valid(qs) {
            return Err(invalid(format!(
                "disk queue size {qs} is not a power of two between 2 and {MAX_QUEUE_SIZE}"
            )));
        }
        // Seeking to the end measures regular files and block devices alike (the metadata
        // length of a block device is 0).
        let len = file.seek(SeekFrom::End(0))?;
        let capacity = len >> SECTOR_SHIFT;

        let mut avail_features = F_VERSION_1
            | F_RING_INDIRECT_DESC
            | F_RING_EVENT_IDX
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE)
            | (1 << VIRTIO_BLK_F_FLUSH);
        if options.readonly {
            avail_features |= 1 << VIRTIO_BLK_F_RO;
        }
        if options.num_queues > 1 {
            avail_features |= 1 << VIRTIO_BLK_F_MQ;
        }
        let discard = options.discard && !options.readonly;
        let write_zeroes = options.write_zeroes && !options.readonly;
        if discard {
            avail_features |= 1 << VIRTIO_BLK_F_DISCARD;
        }
        if write_zeroes {
            avail_features |= 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }

        let mut id = [0u8; ID_BYTES];
        id[..options.id.len()].copy_from_slice(options.id.as_bytes());
        let direct = is_direct(&file);

        Ok(Block {
            disk: Disk {
                file,
                capacity,
                readonly: options.readonly,
                id,
                discard,
                write_zeroes,
                descs: Vec::new(),
                iovecs: IoVecs(Vec::new()),
                counters: Counters::default(),
                nowait: [!direct; 2],
                engines: Engines::default(),
                limiter: None,
                deferred: None,
                spare_iovecs: Vec::new(),
            },
            completions: Vec::new(),
            num_queues: options.num_queues,
            queue_size: qs,
            common: VirtioCommon::new(
                TYPE_BLOCK,
                "virtio-blk",
                vec![qs; usize::from(options.num_queues)],
                avail_features,
                build_config(capacity, &options).to_vec(),
            ),
            active: None,
            touched: Vec::new(),
        })
    }

    /// Makes requests wait for `limiter`'s tokens: bytes moved, and one operation each.
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.disk.limiter = Some(limiter);
    }

    /// Runs reads, writes and flushes asynchronously through a restricted io_uring over
    /// `image` (another open of the device's image, with the same access; see [`uring`]),
    /// with `fixed_buffers` (guest RAM), if given, registered as its buffers. Registering
    /// pins every page of it: the whole of guest RAM is faulted in and locked at once.
    /// Call it on a thread that may set rings up, before the device is handed to its
    /// worker.
    pub fn use_io_uring(
        &mut self,
        image: File,
        fixed_buffers: Option<&GuestMemoryMmap>,
    ) -> io::Result<()> {
        let entries = u32::from(self.queue_size) * u32::from(self.num_queues);
        self.disk.engines.ring = Some(Box::new(Uring::new(image, entries, fixed_buffers)?));
        Ok(())
    }

    /// Runs reads, writes and flushes asynchronously on `threads` I/O threads named `name`
    /// over `image` (another descriptor of the device's image), each confined by `setup`
    /// before it runs anything (see [`pool`]). For disks without io_uring.
    pub fn use_thread_pool(
        &mut self,
        image: File,
        threads: usize,
        name: &str,
        setup: Option<ThreadSetup>,
    ) -> io::Result<()> {
        let capacity = usize::from(self.queue_size) * usize::from(self.num_queues);
        let pool = IoPool::new(image, threads, capacity, name, setup)?;
        self.disk.engines.pool = Some(pool);
        Ok(())
    }

    /// Whether reads and writes are first tried at once without blocking (`RWF_NOWAIT`) on
    /// a disk with an engine; on by default, except with `O_DIRECT`. Off, every read and
    /// write goes to the engine.
    pub fn set_try_without_blocking(&mut self, on: bool) {
        let direct = is_direct(&self.disk.file);
        self.disk.nowait = [on && !direct; 2];
    }

    /// Whether requests go through io_uring.
    pub fn uses_io_uring(&self) -> bool {
        self.disk.engines.ring.is_some()
    }

    /// Where requests that cannot be done at once run: `"io_uring"`, `"thread pool"`,
    /// `"io_uring and thread pool"` (see [`engine`]) or `"device thread"`.
    pub fn io_engine(&self) -> &'static str {
        match (&self.disk.engines.ring, &self.disk.engines.pool) {
            (Some(_), Some(_)) => "io_uring and thread pool",
            (Some(_), None) => "io_uring",
            (None, Some(_)) => "thread pool",
            (None, None) => "device thread",
        }
    }

    /// Requests handed to an engine and not yet returned to the driver.
    pub fn io_in_flight(&self) -> usize {
        self.disk.engines.in_flight()
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity
    }

    /// Measures the image again; if its size changed (it was truncated or grown behind the
    /// VM's back, or resized), the capacity follows and a live driver is told with a
    /// configuration-change interrupt. Returns whether it changed.
    pub fn refresh_capacity(&mut self) -> bool {
        let Ok(len) = (&self.disk.file).seek(SeekFrom::End(0)) else {
            return false;
        };
        let capacity = len >> SECTOR_SHIFT;
        if capacity == self.disk.capacity {
            return false;
        }
        log::info!(
            "virtio-blk: the image is now {capacity} sectors (was {}); telling the guest",
            self.disk.capacity
        );
        self.disk.capacity = capacity;
        self.common.config[..8].copy_from_slice(&capacity.to_le_bytes());
        if let Some(active) = &self.active {
            active.interrupt.trigger(InterruptCause::Config);
        }
        true
    }
}

/// Lays out `struct virtio_blk_config` (virtio 1.2, 5.2.4), little endian.
/// Whether `file` was opened with `O_DIRECT`.
fn is_direct(file: &File) -> bool {
    // SAFETY: F_GETFL on a descriptor the file owns; no memory is passed.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

fn build_config(capacity: u64, options: &BlockOptions) -> [u8; CONFIG_SPACE_SIZE] {
    let mut c = [0u8; CONFIG_SPACE_SIZE];
    let mut put = |offset: usize, bytes: &[u8]| {
        c[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(0, &capacity.to_le_bytes());
    // size_max (8): VIRTIO_BLK_F_SIZE_MAX is not offered; left zero.
    // seg_max (12): leave room for the header and status descriptors.
    put(12, &(u32::from(options.queue_size) - 2).to_le_bytes());
    // geometry (16..20): zero (VIRTIO_BLK_F_GEOMETRY is not offered).
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    // topology (24..32): physical_block_exp 0, alignment_offset 0, min_io_size 1 sector,
    // opt_io_size 0 (VIRTIO_BLK_F_TOPOLOGY is not offered).
    put(26, &1u16.to_le_bytes());
    // writeback (32): the device has a write-back cache (it offers VIRTIO_BLK_F_FLUSH).
    put(32, &[1]);
    put(34, &options.num_queues.to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
    put(48, &MAX_WRITE_ZEROES_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    // write_zeroes_may_unmap (56): the unmap flag is honoured by punching a hole.
    put(56, &[1]);
    c
}

impl VirtioDevice for Block {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    // The configuration space takes no write: `writeback` is writable only with
    // VIRTIO_BLK_F_CONFIG_WCE, which is not offered.

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
        let ready = self.common.enabled_queues(queues, &mem)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queues: ready,
            warned: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // Nothing the kernel still holds may write guest memory once the driver sees the
        // device reset.
        self.disk.engines.drain();
        if let Some(limiter) = &mut self.disk.limiter {
            limiter.reset();
        }
        self.active = None;
        self.common.reset();
    }

    fn process_queue(&mut self, index: u16) {
        if self.active.is_none() {
            return;
        }
        // One measurement per notification: a request is judged against the image's size
        // now, not at creation.
        self.refresh_capacity();
        let Block {
            disk,
            completions,
            active,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        let Active {
            mem,
            interrupt,
            queues,
            warned,
        } = active;
        let Some(aq) = queues.iter_mut().find(|q| q.index == index) else {
            return;
        };
        clear_notification(&aq.notify);
        let queue = &mut aq.queue;
        let mem: &GuestMemoryMmap = mem;

        let drained = drain(
            queue,
            mem,
            format_args!("virtio-blk queue {index}"),
            warned,
            completions,
            Budget::UNLIMITED,
            |chain, _, _| (disk.process_chain(mem, chain, index), 0),
        );
        if let Err(e) = disk.engines.submit() {
            warn!("virtio-blk queue {index}: cannot submit I/O: {e}");
        }
        interrupt_if_needed(drained.completed, queue, mem, interrupt.as_ref(), index);
    }

    fn host_fds(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        let mut fds = self.disk.engines.eventfds();
        if let Some(limiter) = &self.disk.limiter {
            fds.push((limiter.timer_fd(), LIMIT_TOKEN));
        }
        fds
    }

    fn process_host(&mut self, token: u32) {
        if token == LIMIT_TOKEN {
            // Tokens are back: serve what waited on every queue.
            if let Some(limiter) = &mut self.disk.limiter {
                limiter.timer_fired();
            }
            let queues: Vec<u16> = self
                .active
                .iter()
                .flat_map(|a| a.queues.iter().map(|q| q.index))
                .collect();
            for index in queues {
                self.process_queue(index);
            }
            return;
        }
        if token != RING_TOKEN && token != POOL_TOKEN {
            return;
        }
        let Block {
            disk,
            active,
            touched,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        // Out of the disk while it completes requests into the disk's counters.
        let mut engines = std::mem::take(&mut disk.engines);
        touched.clear();
        engines.reap(token, |c| {
            let (queue, head, len) = disk.complete(&active.mem, c);
            let Some(aq) = active.queues.iter_mut().find(|q| q.index == queue) else {
                return;
            };
            let name = format_args!("virtio-blk queue {queue}");
            if return_chain(
                &mut aq.queue,
                &active.mem,
                head,
                len,
                name,
                &mut active.warned,
            ) && !touched.contains(&queue)
            {
                touched.push(queue);
            }
        });
        disk.engines = engines;
        for &queue in touched.iter() {
            if let Some(aq) = active.queues.iter_mut().find(|q| q.index == queue) {
                let interrupt = active.interrupt.as_ref();
                interrupt_if_needed(true, &mut aq.queue, &active.mem, interrupt, queue);
            }
        }
    }

    fn resize(&mut self, bytes: u64) -> Result<(), String> {
        if self.disk.readonly {
            return Err("the disk is read-only".into());
        }
        if bytes == 0 || !bytes.is_multiple_of(1 << SECTOR_SHIFT) {
            return Err(format!(
                "desired_size {bytes} is not a positive whole number of 512-byte sectors"
            ));
        }
        self.disk
            .file
            .set_len(bytes)
            .map_err(|e| format!("cannot resize the image to {bytes} bytes: {e}"))?;
        self.refresh_capacity();
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.io_in_flight()
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.disk.counters;
        counters_map(&[
            ("read_bytes", c.read_bytes),
            ("write_bytes", c.write_bytes),
            ("read_ops", c.read_ops),
            ("write_ops", c.write_ops),
            ("flush_ops", c.flush_ops),
            ("errors", c.errors),
            ("io_uring_ops", c.io_uring_ops),
            ("thread_pool_ops", c.thread_pool_ops),
            ("nowait_ops", c.nowait_ops),
            (
                "rate_limited",
                self.disk.limiter.as_ref().map_or(0, RateLimiter::throttled),
            ),
        ])
    }
}

mod engine;
pub mod pool;
mod request;
#[cfg(test)]
mod tests;
pub mod uring;
