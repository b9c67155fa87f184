//! Virtio block device (virtio 1.x, section 5.2) backed by a host file or block device.
//!
//! Requests run synchronously on the VMM thread when a queue is notified. Each request does
//! one positional system call (per `IOV_MAX` segments) straight between the file and guest
//! memory, without a bounce buffer: the guest's buffers are checked against guest memory,
//! turned into an `iovec` array reused from request to request, and handed to
//! `preadv`/`pwritev` (`pread`/`pwrite` when there is a single segment). Short transfers
//! are resumed and `EINTR` retried.
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

use super::iov::{iovec_of, IoVecs, IOV_MAX};
use super::queue::{
    clear_notification, drain, enabled_queues, interrupt_if_needed, walk_chain, Budget, Seg,
};
use super::{
    counters_map, log_ignored_config_write, queue_size_is_valid, read_config_bytes, ActivateError,
    ActiveQueue, InterruptCause, VirtioDevice, VirtioInterrupt, F_RING_EVENT_IDX,
    F_RING_INDIRECT_DESC, F_VERSION_1, MAX_QUEUE_SIZE, TYPE_BLOCK,
};

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
}

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
    /// Cleared before each request returns (see `Disk::process_chain`).
    iovecs: IoVecs,
    counters: Counters,
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
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_SPACE_SIZE],
    active: Option<Active>,
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
            },
            completions: Vec::new(),
            num_queues: options.num_queues,
            queue_size: qs,
            avail_features,
            acked_features: 0,
            config: build_config(capacity, &options),
            active: None,
        })
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
        self.config[..8].copy_from_slice(&capacity.to_le_bytes());
        if let Some(active) = &self.active {
            active.interrupt.trigger(InterruptCause::Config);
        }
        true
    }
}

/// Lays out `struct virtio_blk_config` (virtio 1.2, 5.2.4), little endian.
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
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.queue_size; usize::from(self.num_queues)]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `writeback` is writable, and only with VIRTIO_BLK_F_CONFIG_WCE (not offered).
        log_ignored_config_write("virtio-blk", offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let event_idx = self.acked_features & F_RING_EVENT_IDX != 0;
        let num_queues = usize::from(self.num_queues);
        let ready = enabled_queues("virtio-blk", num_queues, queues, &mem, event_idx)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queues: ready,
            warned: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
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
            |chain, _, _| (disk.process_chain(mem, chain), 0),
        );
        interrupt_if_needed(drained.completed, queue, mem, interrupt.as_ref(), index);
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
        ])
    }
}

impl Disk {
    /// Executes one request and writes its status. Returns the used length: the bytes
    /// written into guest memory (data and status), or 0 when not even the status byte could
    /// be written.
    fn process_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        // Keep the reused buffers small after a pathological chain.
        walk_chain(chain, &mut self.descs, 4 * IOV_MAX);
        let layout = Layout::of(&self.descs);

        // The status byte is the last byte of the device-writable part of the chain.
        let status_slice = layout
            .last_writable
            .and_then(|i| {
                self.descs[i]
                    .addr
                    .checked_add(u64::from(self.descs[i].len) - 1)
            })
            .and_then(|addr| GuestMemoryBackend::get_slice(mem, addr, 1).ok());
        let Some(status_slice) = status_slice else {
            // A request that cannot report its outcome is not executed.
            debug!("virtio-blk: request without a writable status byte in guest memory");
            self.counters.errors += 1;
            return 0;
        };

        let (status, written) = self.execute(mem, &layout);
        self.iovecs.0.clear();
        if self.iovecs.0.capacity() > IOV_MAX {
            self.iovecs.0.shrink_to(IOV_MAX);
        }
        if status != VIRTIO_BLK_S_OK as u8 {
            self.counters.errors += 1;
        }
        // Cannot fail: the slice is one byte long. (The used index is published later with
        // release ordering, which orders this store before it.)
        let _ = status_slice.store(status, 0, Ordering::Relaxed);
        written.saturating_add(1)
    }

    /// Validates and runs the request described by `self.descs` and `layout`.
    fn execute(&mut self, mem: &GuestMemoryMmap, layout: &Layout) -> Outcome {
        const IOERR: Outcome = (VIRTIO_BLK_S_IOERR as u8, 0);
        const UNSUPP: Outcome = (VIRTIO_BLK_S_UNSUPP as u8, 0);
        const OK: Outcome = (VIRTIO_BLK_S_OK as u8, 0);

        // Device-readable descriptors must all come before device-writable ones.
        if layout.misordered {
            debug!("virtio-blk: device-readable descriptor after a device-writable one");
            return IOERR;
        }
        let (readable, writable) = (layout.readable, layout.writable);
        let header = if readable < HEADER_SIZE {
            None
        } else {
            self.read_header(mem)
        };
        let Some((req_type, sector)) = header else {
            debug!("virtio-blk: request header missing, short or unreadable");
            return IOERR;
        };
        // `writable` >= 1: the status byte was found.
        let in_len = writable - 1;
        let out_len = readable - HEADER_SIZE;

        match req_type {
            VIRTIO_BLK_T_IN => {
                if out_len != 0 {
                    debug!("virtio-blk: read request with device-readable data buffers");
                    return IOERR;
                }
                let Some(offset) = self.check_range(sector, in_len) else {
                    return IOERR;
                };
                if !self.build_iovecs(mem, true, 0, in_len) {
                    return IOERR;
                }
                let fd = self.file.as_raw_fd();
                let (done, res) = rw_vectored(fd, &mut self.iovecs.0, offset, false);
                // Bounded by the chain length, which virtio-queue caps at 4 GiB.
                let done32 = u32::try_from(done).unwrap_or(u32::MAX);
                self.counters.read_bytes += done as u64;
                match res {
                    Ok(()) => {
                        self.counters.read_ops += 1;
                        (VIRTIO_BLK_S_OK as u8, done32)
                    }
                    Err(e) => {
                        debug!("virtio-blk: read of sector {sector} failed: {e}");
                        (VIRTIO_BLK_S_IOERR as u8, done32)
                    }
                }
            }
            VIRTIO_BLK_T_OUT => {
                if self.readonly {
                    return IOERR;
                }
                if in_len != 0 {
                    debug!("virtio-blk: write request with device-writable data buffers");
                    return IOERR;
                }
                let Some(offset) = self.check_range(sector, out_len) else {
                    return IOERR;
                };
                if !self.build_iovecs(mem, false, HEADER_SIZE, out_len) {
                    return IOERR;
                }
                let fd = self.file.as_raw_fd();
                let (done, res) = rw_vectored(fd, &mut self.iovecs.0, offset, true);
                self.counters.write_bytes += done as u64;
                match res {
                    Ok(()) => {
                        self.counters.write_ops += 1;
                        OK
                    }
                    Err(e) => {
                        debug!("virtio-blk: write of sector {sector} failed: {e}");
                        IOERR
                    }
                }
            }
            VIRTIO_BLK_T_FLUSH => {
                self.counters.flush_ops += 1;
                match retry_eintr(|| self.file.sync_data()) {
                    Ok(()) => OK,
                    Err(e) => {
                        warn!("virtio-blk: flush failed: {e}");
                        IOERR
                    }
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                // A buffer smaller than the id gets what fits.
                let n = usize::try_from(in_len).map_or(ID_BYTES, |l| l.min(ID_BYTES));
                let id = self.id;
                if !self.write_stream(mem, 0, &id[..n]) {
                    return IOERR;
                }
                (VIRTIO_BLK_S_OK as u8, n as u32)
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
                if self.readonly {
                    return IOERR;
                }
                let discard = req_type == VIRTIO_BLK_T_DISCARD;
                if (discard && !self.discard) || (!discard && !self.write_zeroes) {
                    return UNSUPP;
                }
                self.discard_or_zero(mem, discard, out_len, in_len)
            }
            other => {
                debug!("virtio-blk: unsupported request type {other}");
                UNSUPP
            }
        }
    }

    /// The byte offset of `sector` if `len` bytes from it are whole sectors within the disk.
    fn check_range(&self, sector: u64, len: u64) -> Option<u64> {
        if len & (SECTOR_SIZE - 1) != 0 {
            debug!("virtio-blk: data length {len} is not a multiple of {SECTOR_SIZE}");
            return None;
        }
        let end = sector.checked_add(len >> SECTOR_SHIFT)?;
        if end > self.capacity {
            debug!(
                "virtio-blk: sectors {sector}..{end} lie beyond the capacity {}",
                self.capacity
            );
            return None;
        }
        // Cannot overflow: capacity << 9 is the file length.
        Some(sector << SECTOR_SHIFT)
    }

    /// Fills `self.iovecs` with the guest memory of `len` bytes of the device-writable
    /// (`write`) or device-readable stream, starting `skip` bytes into it. False if any of it
    /// lies outside guest memory.
    fn build_iovecs(&mut self, mem: &GuestMemoryMmap, write: bool, skip: u64, len: u64) -> bool {
        let iovecs = &mut self.iovecs.0;
        iovecs.clear();
        let perm = if write {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let ok = for_each_in_stream(&self.descs, write, skip, len, |addr, n| {
            // One region lookup when the piece lies in one region (the usual case).
            if let Ok(slice) = GuestMemoryBackend::get_slice(mem, addr, n) {
                iovecs.push(iovec_of(&slice, write));
                return true;
            }
            let Ok(slices) = GuestMemory::get_slices(mem, addr, n, perm) else {
                return false;
            };
            for slice in slices {
                let Ok(slice) = slice else {
                    return false;
                };
                iovecs.push(iovec_of(&slice, write));
            }
            true
        });
        if !ok {
            debug!("virtio-blk: data buffer outside guest memory");
        }
        ok
    }

    /// Reads `virtio_blk_outhdr` (type and sector) from the start of the device-readable
    /// stream: with two loads when it lies, aligned, in the first descriptor (the usual
    /// layout), through the general path otherwise.
    fn read_header(&self, mem: &GuestMemoryMmap) -> Option<(u32, u64)> {
        if let Some(first) = self.descs.first().filter(|d| !d.write && d.len >= 16) {
            if let Ok(hdr) = GuestMemoryBackend::get_slice(mem, first.addr, 16) {
                // Both fail (and the general path is taken) if the header is misaligned.
                let req_type = hdr.load::<u32>(0, Ordering::Relaxed);
                let sector = hdr.load::<u64>(8, Ordering::Relaxed);
                if let (Ok(t), Ok(s)) = (req_type, sector) {
                    return Some((u32::from_le(t), u64::from_le(s)));
                }
            }
        }
        let mut hdr = [0u8; HEADER_SIZE as usize];
        if !self.read_stream(mem, 0, &mut hdr) {
            return None;
        }
        let req_type = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        Some((req_type, sector))
    }

    /// Copies bytes of the device-readable stream, from `skip`, into `out`.
    fn read_stream(&self, mem: &GuestMemoryMmap, skip: u64, out: &mut [u8]) -> bool {
        let mut done = 0usize;
        for_each_in_stream(&self.descs, false, skip, out.len() as u64, |addr, n| {
            let buf = &mut out[done..done + n];
            done += n;
            // One region lookup in the usual case; the general path handles a piece that
            // straddles two regions.
            match GuestMemoryBackend::get_slice(mem, addr, n) {
                Ok(slice) => slice.copy_to(buf) == n,
                Err(_) => mem.read_slice(buf, addr).is_ok(),
            }
        })
    }

    /// Copies `data` into the device-writable stream from `skip`.
    fn write_stream(&self, mem: &GuestMemoryMmap, skip: u64, data: &[u8]) -> bool {
        let mut done = 0usize;
        for_each_in_stream(&self.descs, true, skip, data.len() as u64, |addr, n| {
            let ok = mem.write_slice(&data[done..done + n], addr).is_ok();
            done += n;
            ok
        })
    }

    /// Runs a discard or write-zeroes request: `payload` bytes of 16-byte segments after the
    /// header, and no device-writable data besides the status (`in_len` must be 0).
    fn discard_or_zero(
        &mut self,
        mem: &GuestMemoryMmap,
        discard: bool,
        payload: u64,
        in_len: u64,
    ) -> Outcome {
        const IOERR: Outcome = (VIRTIO_BLK_S_IOERR as u8, 0);
        const UNSUPP: Outcome = (VIRTIO_BLK_S_UNSUPP as u8, 0);
        let (max_seg, max_sectors) = if discard {
            (MAX_DISCARD_SEG, MAX_DISCARD_SECTORS)
        } else {
            (MAX_WRITE_ZEROES_SEG, MAX_WRITE_ZEROES_SECTORS)
        };
        if in_len != 0
            || payload == 0
            || payload & (SEGMENT_SIZE - 1) != 0
            || payload / SEGMENT_SIZE > u64::from(max_seg)
        {
            debug!("virtio-blk: malformed discard/write-zeroes payload of {payload} bytes");
            return IOERR;
        }
        for i in 0..payload / SEGMENT_SIZE {
            let mut seg = [0u8; SEGMENT_SIZE as usize];
            if !self.read_stream(mem, HEADER_SIZE + i * SEGMENT_SIZE, &mut seg) {
                return IOERR;
            }
            let sector = u64::from_le_bytes([
                seg[0], seg[1], seg[2], seg[3], seg[4], seg[5], seg[6], seg[7],
            ]);
            let num_sectors = u32::from_le_bytes([seg[8], seg[9], seg[10], seg[11]]);
            let flags = u32::from_le_bytes([seg[12], seg[13], seg[14], seg[15]]);
            // Unknown flags, and the unmap flag on a discard, are unsupported (5.2.6.2).
            let allowed = if discard {
                0
            } else {
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            };
            if flags & !allowed != 0 {
                return UNSUPP;
            }
            if num_sectors > max_sectors {
                return IOERR;
            }
            let len = u64::from(num_sectors) << SECTOR_SHIFT;
            let Some(offset) = self.check_range(sector, len) else {
                return IOERR;
            };
            if len == 0 {
                continue;
            }
            let res = if discard {
                self.punch_hole(offset, len)
            } else {
                self.zero_range(offset, len, flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0)
            };
            if let Err(e) = res {
                debug!("virtio-blk: discard/write-zeroes at sector {sector} failed: {e}");
                return IOERR;
            }
        }
        self.counters.write_ops += 1;
        (VIRTIO_BLK_S_OK as u8, 0)
    }

    /// Discards a range: a hole reads back as zeros. A file that cannot hold holes ignores
    /// the hint.
    fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match falloc(&self.file, true, offset, len) {
            Err(e) if is_unsupported(&e) => Ok(()),
            other => other,
        }
    }

    /// Zeroes a range: with `unmap`, by punching a hole if the file can hold one; otherwise
    /// (or if that fails) with `FALLOC_FL_ZERO_RANGE`, and failing that by writing zeros.
    fn zero_range(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        if unmap && falloc(&self.file, true, offset, len).is_ok() {
            return Ok(());
        }
        match falloc(&self.file, false, offset, len) {
            Err(e) if is_unsupported(&e) => {}
            other => return other,
        }
        let fd = self.file.as_raw_fd();
        let mut offset = offset;
        let mut left = len;
        const CHUNKS: usize = 16;
        let zero_iov = libc::iovec {
            iov_base: ZEROS.0.as_ptr() as *mut libc::c_void,
            iov_len: ZEROS.0.len(),
        };
        while left > 0 {
            let mut iovs = [zero_iov; CHUNKS];
            let want = left.min((CHUNKS * ZEROS.0.len()) as u64);
            let mut rem = want;
            let mut count = 0;
            for iov in iovs.iter_mut() {
                if rem == 0 {
                    break;
                }
                iov.iov_len = rem.min(ZEROS.0.len() as u64) as usize;
                rem -= iov.iov_len as u64;
                count += 1;
            }
            // `pwritev` only reads from the iovecs' memory (the static zeros).
            let (done, res) = rw_vectored(fd, &mut iovs[..count], offset, true);
            res?;
            offset += done as u64;
            left -= done as u64;
        }
        Ok(())
    }
}

/// Calls `f(addr, len)` for each piece of `len` bytes of the device-writable (`write`) or
/// device-readable stream of `descs`, starting `skip` bytes in. False if `f` fails, an address
/// overflows, or the stream is shorter than `skip + len`.
fn for_each_in_stream(
    descs: &[Seg],
    write: bool,
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> bool,
) -> bool {
    for s in descs.iter().filter(|s| s.write == write) {
        if len == 0 {
            break;
        }
        let seg_len = u64::from(s.len);
        if skip >= seg_len {
            skip -= seg_len;
            continue;
        }
        let take = (seg_len - skip).min(len);
        let Some(addr) = s.addr.checked_add(skip) else {
            return false;
        };
        // `take` <= u32::MAX, so it fits a usize.
        if !f(addr, take as usize) {
            return false;
        }
        skip = 0;
        len -= take;
    }
    len == 0
}

/// Reads (or writes) the whole of `iovecs` at `offset` with as few `preadv`/`pwritev` calls
/// as possible, resuming after short transfers and `EINTR`. Returns the bytes transferred and
/// whether all were. `iovecs` is consumed (advanced) in place.
fn rw_vectored(
    fd: libc::c_int,
    iovecs: &mut [libc::iovec],
    mut offset: u64,
    write: bool,
) -> (usize, io::Result<()>) {
    let mut total = 0usize;
    let mut idx = 0usize;
    while idx < iovecs.len() {
        if iovecs[idx].iov_len == 0 {
            idx += 1;
            continue;
        }
        let count = (iovecs.len() - idx).min(IOV_MAX);
        let Ok(off) = libc::off_t::try_from(offset) else {
            return (total, Err(io::Error::from_raw_os_error(libc::EOVERFLOW)));
        };
        let iov = iovecs[idx..].as_ptr();
        let ret = if count == 1 {
            // One segment (the common 4 KiB case): plain pread/pwrite spare the kernel the
            // iovec import.
            let one = iovecs[idx];
            if write {
                // SAFETY: `one` describes mapped memory (guest memory held by the device, or
                // static zeros) of `iov_len` bytes, valid for the call's duration.
                unsafe { libc::pwrite(fd, one.iov_base, one.iov_len, off) }
            } else {
                // SAFETY: as above; the memory is writable guest memory (checked with
                // `Permissions::Write`), which the guest expects the device to overwrite.
                unsafe { libc::pread(fd, one.iov_base, one.iov_len, off) }
            }
        } else if write {
            // SAFETY: `iov` points to `count` initialized iovecs; each describes memory that is
            // mapped (guest memory held by the device, or static zeros) for the call's duration.
            unsafe { libc::pwritev(fd, iov, count as libc::c_int, off) }
        } else {
            // SAFETY: as above; the memory is writable guest memory (checked with
            // `Permissions::Write`), which the guest expects the device to overwrite.
            unsafe { libc::preadv(fd, iov, count as libc::c_int, off) }
        };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (total, Err(e));
        }
        if ret == 0 {
            // End of file (the file shrank) or a device that accepts nothing more.
            let kind = if write {
                io::ErrorKind::WriteZero
            } else {
                io::ErrorKind::UnexpectedEof
            };
            return (total, Err(kind.into()));
        }
        let mut n = ret as usize;
        total += n;
        offset += n as u64;
        while n > 0 && idx < iovecs.len() {
            let iov = &mut iovecs[idx];
            if n >= iov.iov_len {
                n -= iov.iov_len;
                idx += 1;
            } else {
                // SAFETY: `n` < `iov_len`, so the advanced pointer stays inside the buffer.
                iov.iov_base = unsafe { (iov.iov_base as *mut u8).add(n) } as *mut libc::c_void;
                iov.iov_len -= n;
                n = 0;
            }
        }
    }
    (total, Ok(()))
}

/// `fallocate` (`FALLOC_FL_PUNCH_HOLE` or `FALLOC_FL_ZERO_RANGE`) with `FALLOC_FL_KEEP_SIZE`,
/// retried on `EINTR`.
fn falloc(file: &File, punch: bool, offset: u64, len: u64) -> io::Result<()> {
    retry_eintr(|| {
        let mode = if punch {
            FallocateMode::PunchHole
        } else {
            FallocateMode::ZeroRange
        };
        fallocate(file, mode, true, offset, len)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))
    })
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

fn retry_eintr(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    use virtio_bindings::virtio_ring::{
        VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
        VRING_USED_F_NO_NOTIFY,
    };
    use vmm_sys_util::tempfile::TempFile;

    use crate::virtio::test_driver::{Driver, MEM_END, OUTSIDE, QSIZE, R, REGION, W};
    use crate::virtio::InterruptCause;

    const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
    const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
    const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

    /// The test plays the driver; the host side is the temporary backing file.
    type Harness = Driver<Block, TempFile>;

    /// A request written into guest memory.
    struct Req {
        head: u16,
        data: Vec<u64>,
        status: u64,
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 512) as u8).collect()
    }

    impl Harness {
        fn new(options: BlockOptions, contents: &[u8]) -> Harness {
            Self::with(options, contents, |f| f, None)
        }

        /// Creates the device; `features` maps the offered features to those acked;
        /// `ready` (if given) lists which queues the driver enabled.
        fn with(
            options: BlockOptions,
            contents: &[u8],
            features: impl Fn(u64) -> u64,
            ready: Option<&[u16]>,
        ) -> Harness {
            let tmp = TempFile::new().unwrap();
            tmp.as_file().write_all(contents).unwrap();
            let file = OpenOptions::new()
                .read(true)
                .write(!options.readonly)
                .open(tmp.as_path())
                .unwrap();
            let num_queues = usize::from(options.num_queues);
            let blk = Block::new(file, options).unwrap();
            let mut h = Driver::for_device(blk, tmp, features);
            // Every kick clears the notification.
            h.check_kicks = true;
            h.start(&vec![QSIZE; num_queues], ready);
            h
        }

        fn header(&mut self, req_type: u32, sector: u64) -> u64 {
            let hdr = self.alloc(16);
            let mut b = [0u8; 16];
            b[0..4].copy_from_slice(&req_type.to_le_bytes());
            b[8..16].copy_from_slice(&sector.to_le_bytes());
            self.mem.write_slice(&b, GuestAddress(hdr)).unwrap();
            hdr
        }

        fn status_buf(&mut self) -> u64 {
            let s = self.alloc(1);
            self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
            s
        }

        /// Builds `[header][data...][status]` with data descriptors of `lens`, writable
        /// when `data_flags` is `W`, and publishes it on queue `q`.
        fn request(
            &mut self,
            q: usize,
            req_type: u32,
            sector: u64,
            lens: &[u32],
            data_flags: u16,
        ) -> Req {
            let hdr = self.header(req_type, sector);
            let data: Vec<u64> = lens.iter().map(|&l| self.alloc(u64::from(l))).collect();
            let status = self.status_buf();
            let mut descs = vec![(hdr, 16, R)];
            descs.extend(data.iter().zip(lens).map(|(&a, &l)| (a, l, data_flags)));
            descs.push((status, 1, W));
            let head = self.chain(q, &descs);
            self.publish(q, head);
            Req { head, data, status }
        }

        fn status(&self, req: &Req) -> u8 {
            self.mem.read_obj(GuestAddress(req.status)).unwrap()
        }

        /// Submits a request on queue 0 and returns (status, used length).
        fn submit(
            &mut self,
            req_type: u32,
            sector: u64,
            lens: &[u32],
            flags: u16,
        ) -> (u8, u32, Req) {
            let req = self.request(0, req_type, sector, lens, flags);
            self.kick(0);
            (self.status(&req), self.used_len(0, req.head), req)
        }

        fn read_file(&self, offset: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.host.as_file().read_exact_at(&mut v, offset).unwrap();
            v
        }

        fn file_contents(&self) -> Vec<u8> {
            std::fs::read(self.host.as_path()).unwrap()
        }

        /// Writes discard/write-zeroes segments and publishes the request.
        fn dwz(&mut self, req_type: u32, segs: &[(u64, u32, u32)]) -> (u8, u32) {
            let hdr = self.header(req_type, 0);
            let payload = self.alloc(16 * segs.len() as u64);
            for (i, &(sector, n, flags)) in segs.iter().enumerate() {
                let mut b = [0u8; 16];
                b[0..8].copy_from_slice(&sector.to_le_bytes());
                b[8..12].copy_from_slice(&n.to_le_bytes());
                b[12..16].copy_from_slice(&flags.to_le_bytes());
                self.mem
                    .write_slice(&b, GuestAddress(payload + 16 * i as u64))
                    .unwrap();
            }
            let status = self.status_buf();
            let head = self.chain(
                0,
                &[
                    (hdr, 16, R),
                    (payload, 16 * segs.len() as u32, R),
                    (status, 1, W),
                ],
            );
            self.publish(0, head);
            self.kick(0);
            let s = self.mem.read_obj(GuestAddress(status)).unwrap();
            (s, self.used_len(0, head))
        }
    }

    fn disk(sectors: usize) -> Vec<u8> {
        pattern(sectors * 512)
    }

    fn rw_options() -> BlockOptions {
        BlockOptions {
            id: "palisade-disk-0".into(),
            queue_size: QSIZE,
            discard: true,
            write_zeroes: true,
            ..BlockOptions::default()
        }
    }

    #[test]
    fn a_truncated_or_grown_image_changes_the_capacity_and_tells_the_driver() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        assert_eq!(h.dev.capacity_sectors(), 64);
        h.host.as_file().set_len(16 * 512).unwrap();
        // The next request meets the new size: sector 20 is gone.
        let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 20, &[512], W);
        assert_eq!(status, S_IOERR);
        assert_eq!(h.dev.capacity_sectors(), 16);
        let mut capacity = [0u8; 8];
        h.dev.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 16);
        assert!(h.irq.causes().contains(&InterruptCause::Config));
        // Grown again: reachable again, and no change means no interrupt.
        h.host.as_file().set_len(32 * 512).unwrap();
        let (status, _, _) = h.submit(VIRTIO_BLK_T_IN, 20, &[512], W);
        assert_eq!(status, S_OK);
        assert_eq!(h.dev.capacity_sectors(), 32);
        let configs = |h: &Harness| {
            h.irq
                .causes()
                .iter()
                .filter(|c| **c == InterruptCause::Config)
                .count()
        };
        let before = configs(&h);
        assert!(!h.dev.refresh_capacity());
        assert_eq!(configs(&h), before);
    }

    #[test]
    fn reads_sectors_the_file_holds() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        assert_eq!(h.dev.capacity_sectors(), 64);
        let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 3, &[1024], W);
        assert_eq!(status, S_OK);
        assert_eq!(used, 1025);
        assert_eq!(h.read_guest(req.data[0], 1024), &contents[3 * 512..5 * 512]);
        assert_eq!(h.counter("read_ops"), 1);
        assert_eq!(h.counter("read_bytes"), 1024);
        assert_eq!(h.counter("errors"), 0);
        assert_eq!(h.irq.count(), 1);
        assert_eq!(h.irq.causes()[0], InterruptCause::Queue(0));
    }

    #[test]
    fn writes_reach_the_file() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        let hdr = h.header(VIRTIO_BLK_T_OUT, 10);
        let data = h.alloc(1024);
        let payload: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
        h.mem.write_slice(&payload, GuestAddress(data)).unwrap();
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 16, R), (data, 1024, R), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        assert_eq!(h.used_len(0, head), 1);
        assert_eq!(h.read_file(10 * 512, 1024), payload);
        // Nothing else changed.
        let after = h.file_contents();
        assert_eq!(after[..10 * 512], contents[..10 * 512]);
        assert_eq!(after[12 * 512..], contents[12 * 512..]);
        assert_eq!(h.counter("write_ops"), 1);
        assert_eq!(h.counter("write_bytes"), 1024);
    }

    #[test]
    fn flush_syncs() {
        let mut h = Harness::new(rw_options(), &disk(8));
        let (status, used, _) = h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
        assert_eq!((status, used), (S_OK, 1));
        assert_eq!(h.counter("flush_ops"), 1);
    }

    #[test]
    fn get_id_writes_the_zero_padded_id_or_what_fits() {
        let mut h = Harness::new(rw_options(), &disk(8));
        let (status, used, req) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[20], W);
        assert_eq!((status, used), (S_OK, 21));
        let mut want = b"palisade-disk-0".to_vec();
        want.resize(20, 0);
        assert_eq!(h.read_guest(req.data[0], 20), want);

        let (status, used, req) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[8], W);
        assert_eq!((status, used), (S_OK, 9));
        assert_eq!(h.read_guest(req.data[0], 8), b"palisade");

        // A larger buffer receives exactly 20 bytes.
        let (status, used, _) = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[64], W);
        assert_eq!((status, used), (S_OK, 21));
    }

    #[test]
    fn discard_punches_a_hole() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        assert_eq!(
            h.dwz(VIRTIO_BLK_T_DISCARD, &[(8, 8, 0), (32, 4, 0)]),
            (S_OK, 1)
        );
        let after = h.file_contents();
        assert_eq!(after.len(), contents.len(), "the file keeps its size");
        assert!(after[8 * 512..16 * 512].iter().all(|&b| b == 0));
        assert!(after[32 * 512..36 * 512].iter().all(|&b| b == 0));
        assert_eq!(after[..8 * 512], contents[..8 * 512]);
        assert_eq!(after[16 * 512..32 * 512], contents[16 * 512..32 * 512]);
        assert_eq!(after[36 * 512..], contents[36 * 512..]);
        // The unmap flag and unknown flags are unsupported on a discard.
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 1)]).0, S_UNSUPP);
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 4)]).0, S_UNSUPP);
        // Beyond the capacity.
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(60, 8, 0)]).0, S_IOERR);
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(u64::MAX, 1, 0)]).0, S_IOERR);
        assert_eq!(h.file_contents()[60 * 512..], contents[60 * 512..]);
    }

    #[test]
    fn write_zeroes_with_and_without_unmap() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        let flag = VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;
        assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(1, 3, 0)]), (S_OK, 1));
        assert_eq!(
            h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(20, 9, flag)]),
            (S_OK, 1)
        );
        let after = h.file_contents();
        assert_eq!(after.len(), contents.len());
        assert!(after[512..4 * 512].iter().all(|&b| b == 0));
        assert!(after[20 * 512..29 * 512].iter().all(|&b| b == 0));
        assert_eq!(after[..512], contents[..512]);
        assert_eq!(after[4 * 512..20 * 512], contents[4 * 512..20 * 512]);
        assert_eq!(after[29 * 512..], contents[29 * 512..]);
        // Unknown flags, too many segments, too many sectors.
        assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 2)]).0, S_UNSUPP);
        assert_eq!(
            h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0), (2, 1, 0)]).0,
            S_IOERR
        );
        assert_eq!(
            h.dwz(
                VIRTIO_BLK_T_WRITE_ZEROES,
                &[(0, MAX_WRITE_ZEROES_SECTORS + 1, 0)]
            )
            .0,
            S_IOERR
        );
        assert_eq!(h.file_contents()[..512], contents[..512]);
        assert_eq!(h.counter("write_ops"), 2);
    }

    #[test]
    fn discard_and_write_zeroes_not_offered_are_unsupported() {
        let options = BlockOptions {
            discard: false,
            write_zeroes: false,
            ..rw_options()
        };
        let mut h = Harness::new(options, &disk(8));
        assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(h.dev.features() & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]).0, S_UNSUPP);
        assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]).0, S_UNSUPP);
        assert_eq!(h.file_contents(), disk(8));
    }

    #[test]
    fn readonly_disk_refuses_writes() {
        let contents = disk(16);
        let options = BlockOptions {
            readonly: true,
            ..rw_options()
        };
        let mut h = Harness::new(options, &contents);
        let f = h.dev.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);

        let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
        let data = h.alloc(512);
        h.mem.write_slice(&[0xaa; 512], GuestAddress(data)).unwrap();
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 16, R), (data, 512, R), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        assert_eq!(h.used_len(0, head), 1);
        assert_eq!(h.dwz(VIRTIO_BLK_T_DISCARD, &[(0, 1, 0)]).0, S_IOERR);
        assert_eq!(h.dwz(VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 1, 0)]).0, S_IOERR);
        assert_eq!(h.file_contents(), contents, "file unchanged");
        // Reads, flushes and GET_ID still work.
        let (status, _, req) = h.submit(VIRTIO_BLK_T_IN, 0, &[512], W);
        assert_eq!(status, S_OK);
        assert_eq!(h.read_guest(req.data[0], 512), &contents[..512]);
        assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
        assert_eq!(h.submit(VIRTIO_BLK_T_GET_ID, 0, &[20], W).0, S_OK);
        assert_eq!(h.counter("errors"), 3);
        assert_eq!(h.counter("write_ops"), 0);
    }

    #[test]
    fn request_spanning_several_descriptors_and_regions() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        // Header split over two descriptors, three data descriptors, one straddling the
        // boundary between the two memory regions.
        let hdr = h.header(VIRTIO_BLK_T_IN, 5);
        let d1 = h.alloc(512);
        let d2 = h.alloc(1024);
        let d3 = REGION - 256;
        let status = h.status_buf();
        let head = h.chain(
            0,
            &[
                (hdr, 8, R),
                (hdr + 8, 8, R),
                (d1, 512, W),
                (d2, 1024, W),
                (d3, 512, W),
                (status, 1, W),
            ],
        );
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        assert_eq!(h.used_len(0, head), 2049);
        assert_eq!(h.read_guest(d1, 512), &contents[5 * 512..6 * 512]);
        assert_eq!(h.read_guest(d2, 1024), &contents[6 * 512..8 * 512]);
        assert_eq!(h.read_guest(d3, 512), &contents[8 * 512..9 * 512]);

        // And a write gathered from several descriptors.
        let hdr = h.header(VIRTIO_BLK_T_OUT, 40);
        h.mem.write_slice(&[1; 512], GuestAddress(d1)).unwrap();
        h.mem.write_slice(&[2; 1024], GuestAddress(d2)).unwrap();
        h.mem.write_slice(&[3; 512], GuestAddress(d3)).unwrap();
        let status = h.status_buf();
        let head = h.chain(
            0,
            &[
                (hdr, 16, R),
                (d1, 512, R),
                (d2, 1024, R),
                (d3, 512, R),
                (status, 1, W),
            ],
        );
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        let mut want = vec![1u8; 512];
        want.extend([2u8; 1024]);
        want.extend([3u8; 512]);
        assert_eq!(h.read_file(40 * 512, 2048), want);
    }

    #[test]
    fn indirect_descriptors() {
        let contents = disk(32);
        let mut h = Harness::new(rw_options(), &contents);
        let hdr = h.header(VIRTIO_BLK_T_IN, 7);
        let data = h.alloc(1024);
        let status = h.status_buf();
        let table = h.alloc(48);
        let next = VRING_DESC_F_NEXT as u16;
        h.write_raw_desc(table, hdr, 16, next, 1);
        h.write_raw_desc(table + 16, data, 1024, W | next, 2);
        h.write_raw_desc(table + 32, status, 1, W, 0);
        let head = h.chain(0, &[(table, 48, VRING_DESC_F_INDIRECT as u16)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        assert_eq!(h.used_len(0, head), 1025);
        assert_eq!(h.read_guest(data, 1024), &contents[7 * 512..9 * 512]);
    }

    #[test]
    fn more_segments_than_iov_max() {
        // 1100 data descriptors in an indirect table: two preadv calls.
        let contents = disk(1200);
        let mut h = Harness::new(rw_options(), &contents);
        let n = 1100u16;
        let hdr = h.header(VIRTIO_BLK_T_IN, 50);
        let data = h.alloc(u64::from(n) * 512);
        let status = h.status_buf();
        let table = h.alloc(16 * (u64::from(n) + 2));
        let next = VRING_DESC_F_NEXT as u16;
        h.write_raw_desc(table, hdr, 16, next, 1);
        for i in 0..n {
            // Data descriptors in reverse memory order so no two slices are adjacent.
            let addr = data + u64::from(n - 1 - i) * 512;
            h.write_raw_desc(table + 16 * u64::from(i + 1), addr, 512, W | next, i + 2);
        }
        h.write_raw_desc(table + 16 * u64::from(n + 1), status, 1, W, 0);
        let head = h.chain(
            0,
            &[(table, 16 * (u32::from(n) + 2), VRING_DESC_F_INDIRECT as u16)],
        );
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        assert_eq!(h.used_len(0, head), u32::from(n) * 512 + 1);
        for i in 0..u64::from(n) {
            let addr = data + (u64::from(n) - 1 - i) * 512;
            let sector = (50 + i) as usize;
            assert_eq!(
                h.read_guest(addr, 512),
                &contents[sector * 512..(sector + 1) * 512]
            );
        }
    }

    #[test]
    fn misaligned_header_and_status() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);
        let buf = h.alloc(64);
        let hdr = buf + 3;
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        b[8..16].copy_from_slice(&6u64.to_le_bytes());
        h.mem.write_slice(&b, GuestAddress(hdr)).unwrap();
        let data = h.alloc(512);
        let status = buf + 33;
        let head = h.chain(0, &[(hdr, 16, R), (data, 512, W), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_OK);
        assert_eq!(h.read_guest(data, 512), &contents[6 * 512..7 * 512]);
    }

    #[test]
    fn short_chains_and_misplaced_headers() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);

        // Header only: no status byte can be written; returned with length 0.
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let head = h.chain(0, &[(hdr, 16, R)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 0);

        // Status only.
        let status = h.status_buf();
        let head = h.chain(0, &[(status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        assert_eq!(h.used_len(0, head), 1);

        // Header shorter than 16 bytes.
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 8, R), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        assert_eq!(h.used_len(0, head), 1);

        // Header in a writable descriptor.
        let hdr = h.header(VIRTIO_BLK_T_GET_ID, 0);
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 16, W), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        assert_eq!(h.used_len(0, head), 1);
        assert_eq!(
            h.read_guest(hdr, 1)[0],
            VIRTIO_BLK_T_GET_ID as u8,
            "untouched"
        );

        // A write without a writable status byte: nothing written, length 0.
        let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
        let data = h.alloc(512);
        h.mem.write_slice(&[0x55; 512], GuestAddress(data)).unwrap();
        let head = h.chain(0, &[(hdr, 16, R), (data, 512, R)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 0);

        // Readable data after the status byte.
        let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
        let status = h.status_buf();
        let head = h.chain(0, &[(hdr, 16, R), (status, 1, W), (data, 512, R)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);

        assert_eq!(h.file_contents(), contents);
        assert_eq!(h.used_idx(0), 6);
        assert_eq!(h.counter("errors"), 6);
    }

    #[test]
    fn data_in_the_wrong_direction() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);
        // A read whose data buffer is device-readable.
        let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 0, &[512], R);
        assert_eq!((status, used), (S_IOERR, 1));
        assert!(h.read_guest(req.data[0], 512).iter().all(|&b| b == 0));
        // A write whose data buffer is device-writable.
        let (status, used, req) = h.submit(VIRTIO_BLK_T_OUT, 0, &[512], W);
        assert_eq!((status, used), (S_IOERR, 1));
        assert!(h.read_guest(req.data[0], 512).iter().all(|&b| b == 0));
        assert_eq!(h.file_contents(), contents);
        assert_eq!(h.counter("read_ops") + h.counter("write_ops"), 0);
    }

    #[test]
    fn buffers_outside_guest_memory() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);
        for (addr, len, flags, t) in [
            (OUTSIDE, 512, W, VIRTIO_BLK_T_IN),
            (MEM_END - 256, 512, W, VIRTIO_BLK_T_IN),
            (u64::MAX - 255, 512, W, VIRTIO_BLK_T_IN),
            (OUTSIDE, 512, R, VIRTIO_BLK_T_OUT),
            (MEM_END - 256, 512, R, VIRTIO_BLK_T_OUT),
        ] {
            let hdr = h.header(t, 0);
            let status = h.status_buf();
            let head = h.chain(0, &[(hdr, 16, R), (addr, len, flags), (status, 1, W)]);
            h.publish(0, head);
            h.kick(0);
            assert_eq!(h.read_guest(status, 1)[0], S_IOERR, "{addr:#x}");
            assert_eq!(h.used_len(0, head), 1);
        }
        // Header outside guest memory.
        let status = h.status_buf();
        let head = h.chain(0, &[(OUTSIDE, 16, R), (status, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        // Status byte outside guest memory: the request is not executed (the file keeps
        // its contents) and the chain comes back with length 0.
        let hdr = h.header(VIRTIO_BLK_T_OUT, 0);
        let data = h.alloc(512);
        h.mem.write_slice(&[0x77; 512], GuestAddress(data)).unwrap();
        let head = h.chain(0, &[(hdr, 16, R), (data, 512, R), (OUTSIDE, 1, W)]);
        h.publish(0, head);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 0);
        assert_eq!(h.file_contents(), contents);
        // The queue still works.
        assert_eq!(h.submit(VIRTIO_BLK_T_IN, 0, &[512], W).0, S_OK);
    }

    #[test]
    fn lengths_and_sectors_out_of_range() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);
        for (t, sector, len, flags) in [
            (VIRTIO_BLK_T_IN, 0, 100, W),
            (VIRTIO_BLK_T_OUT, 0, 513, R),
            (VIRTIO_BLK_T_IN, 16, 512, W),
            (VIRTIO_BLK_T_IN, 15, 1024, W),
            (VIRTIO_BLK_T_OUT, 15, 1024, R),
            (VIRTIO_BLK_T_IN, u64::MAX, 512, W),
            (VIRTIO_BLK_T_IN, u64::MAX >> 9, 512, W),
            (VIRTIO_BLK_T_OUT, u64::MAX, 512, R),
        ] {
            let (status, used, _) = h.submit(t, sector, &[len], flags);
            assert_eq!((status, used), (S_IOERR, 1), "type {t} sector {sector}");
        }
        assert_eq!(h.file_contents(), contents);
        // The last sector is fine.
        let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 15, &[512], W);
        assert_eq!((status, used), (S_OK, 513));
        assert_eq!(h.read_guest(req.data[0], 512), &contents[15 * 512..]);
    }

    #[test]
    fn trailing_partial_sector_is_not_exposed() {
        let mut contents = disk(4);
        contents.extend([9u8; 100]);
        let mut h = Harness::new(rw_options(), &contents);
        assert_eq!(h.dev.capacity_sectors(), 4);
        let mut cap = [0u8; 8];
        h.dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 4);
        assert_eq!(h.submit(VIRTIO_BLK_T_IN, 3, &[512], W).0, S_OK);
        assert_eq!(h.submit(VIRTIO_BLK_T_IN, 4, &[512], W).0, S_IOERR);
    }

    #[test]
    fn unknown_request_types_are_unsupported() {
        let mut h = Harness::new(rw_options(), &disk(8));
        for t in [2, 3, 14, 99, u32::MAX] {
            let (status, used, _) = h.submit(t, 0, &[512], W);
            assert_eq!((status, used), (S_UNSUPP, 1), "type {t}");
        }
    }

    #[test]
    fn hostile_chain_structures_do_not_stall_the_queue() {
        let contents = disk(16);
        let mut h = Harness::new(rw_options(), &contents);
        let next = VRING_DESC_F_NEXT as u16;

        // A loop: header -> status -> header -> ... (ends at the queue size).
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        let status = h.status_buf();
        h.write_desc(0, 0, hdr, 16, next, 1);
        h.write_desc(0, 1, status, 1, W | next, 0);
        h.publish(0, 0);
        h.kick(0);
        assert_eq!(h.read_guest(status, 1)[0], S_IOERR);
        assert_eq!(h.used_len(0, 0), 1);

        // A next index beyond the queue: the chain ends there, without a status byte.
        let hdr = h.header(VIRTIO_BLK_T_IN, 0);
        h.write_desc(0, 2, hdr, 16, next, 1000);
        h.publish(0, 2);
        h.kick(0);
        assert_eq!(h.used_len(0, 2), 0);

        // An indirect table whose length is not a multiple of 16, and a nested one.
        let table = h.alloc(64);
        let status = h.status_buf();
        h.write_raw_desc(table, table, 32, VRING_DESC_F_INDIRECT as u16, 0);
        h.write_desc(0, 3, table, 20, VRING_DESC_F_INDIRECT as u16, 0);
        h.write_desc(0, 4, table, 16, VRING_DESC_F_INDIRECT as u16, 0);
        h.write_desc(0, 5, hdr, 16, next, 6);
        h.write_desc(0, 6, OUTSIDE, 16, VRING_DESC_F_INDIRECT as u16, 0);
        for head in [3, 4, 5] {
            h.publish(0, head);
        }
        // A head index beyond the queue: cannot be returned, skipped.
        h.publish(0, 200);
        h.kick(0);
        for head in [3, 4, 5] {
            assert_eq!(h.used_len(0, head), 0);
        }
        assert_eq!(h.used_idx(0), 5);
        let _ = status;

        // The queue still serves well-formed requests.
        h.rings[0].next_desc = 10;
        let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 1, &[512], W);
        assert_eq!((status, used), (S_OK, 513));
        assert_eq!(h.read_guest(req.data[0], 512), &contents[512..1024]);
        // EVENT_IDX is on and the driver left used_event at 0: only the first batch interrupts.
        assert_eq!(h.irq.count(), 1);
    }

    #[test]
    fn avail_index_beyond_the_queue_is_ignored() {
        let mut h = Harness::new(rw_options(), &disk(8));
        let avail = h.rings[0].avail;
        h.mem
            .write_obj(200u16.to_le(), GuestAddress(avail + 2))
            .unwrap();
        h.kick(0);
        assert_eq!(h.used_idx(0), 0);
        assert_eq!(h.irq.count(), 0);
    }

    #[test]
    fn batch_of_requests_gets_one_interrupt() {
        let contents = disk(64);
        let mut h = Harness::new(rw_options(), &contents);
        let reqs: Vec<Req> = (0..8u64)
            .map(|i| {
                let t = if i == 3 { 77 } else { VIRTIO_BLK_T_IN };
                h.request(0, t, i * 4, &[2048], W)
            })
            .collect();
        h.kick(0);
        assert_eq!(h.used_idx(0), 8);
        assert_eq!(h.irq.count(), 1);
        for (i, r) in reqs.iter().enumerate() {
            if i == 3 {
                assert_eq!(h.status(r), S_UNSUPP);
            } else {
                assert_eq!(h.status(r), S_OK);
                let s = i * 4 * 512;
                assert_eq!(h.read_guest(r.data[0], 2048), &contents[s..s + 2048]);
            }
        }
        // A kick with nothing new raises no interrupt.
        h.kick(0);
        assert_eq!(h.irq.count(), 1);
    }

    #[test]
    fn interrupts_follow_avail_flags_without_event_idx() {
        let mut h = Harness::with(rw_options(), &disk(8), |f| f & !F_RING_EVENT_IDX, None);
        h.set_avail_flags(0, VRING_AVAIL_F_NO_INTERRUPT as u16);
        assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
        assert_eq!(h.irq.count(), 0);
        h.set_avail_flags(0, 0);
        assert_eq!(h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R).0, S_OK);
        assert_eq!(h.irq.count(), 1);
        // Notifications are enabled again once the ring is drained.
        assert_eq!(h.used_flags(0) & VRING_USED_F_NO_NOTIFY as u16, 0);
    }

    #[test]
    fn interrupts_are_suppressed_with_event_idx() {
        let mut h = Harness::new(rw_options(), &disk(8));
        assert_ne!(h.dev.acked_features & F_RING_EVENT_IDX, 0);

        // used_event 0: the first used buffer (index 0) interrupts.
        h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
        assert_eq!(h.irq.count(), 1);
        // The device asks to be notified when the driver adds the next request.
        assert_eq!(h.avail_event(0), 1);

        // The driver wants an interrupt once used index 5 is written.
        h.set_used_event(0, 5);
        h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R); // used idx 2
        assert_eq!(h.irq.count(), 1);
        for _ in 0..3 {
            h.request(0, VIRTIO_BLK_T_FLUSH, 0, &[], R);
        }
        h.kick(0); // used idx 5: entry 4 written, event 5 not yet reached
        assert_eq!(h.used_idx(0), 5);
        assert_eq!(h.irq.count(), 1);
        h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R); // entry 5 written
        assert_eq!(h.irq.count(), 2);
        assert_eq!(h.avail_event(0), 6);
    }

    #[test]
    fn config_space_layout() {
        let options = BlockOptions {
            num_queues: 4,
            ..rw_options()
        };
        let h = Harness::new(options, &disk(100));
        let rd = |off: u64, len: usize| {
            let mut v = vec![0xeeu8; len];
            h.dev.read_config(off, &mut v);
            v
        };
        let u32_at = |off: u64| u32::from_le_bytes(rd(off, 4).try_into().unwrap());
        assert_eq!(u64::from_le_bytes(rd(0, 8).try_into().unwrap()), 100);
        assert_eq!(u32_at(8), 0, "size_max");
        assert_eq!(u32_at(12), u32::from(QSIZE) - 2, "seg_max");
        assert_eq!(rd(16, 4), [0; 4], "geometry");
        assert_eq!(u32_at(20), 512, "blk_size");
        assert_eq!(rd(32, 1), [1], "writeback");
        assert_eq!(u16::from_le_bytes(rd(34, 2).try_into().unwrap()), 4);
        assert_eq!(u32_at(36), MAX_DISCARD_SECTORS);
        assert_eq!(u32_at(40), MAX_DISCARD_SEG);
        assert_eq!(u32_at(44), DISCARD_SECTOR_ALIGNMENT);
        assert_eq!(u32_at(48), MAX_WRITE_ZEROES_SECTORS);
        assert_eq!(u32_at(52), MAX_WRITE_ZEROES_SEG);
        assert_eq!(rd(56, 4), [1, 0, 0, 0]);
        // Past the end, partly and wholly, and at absurd offsets.
        assert_eq!(rd(58, 6), [0; 6]);
        assert_eq!(rd(4096, 4), [0; 4]);
        assert_eq!(rd(u64::MAX - 1, 4), [0; 4]);
        // Unaligned reads see the same bytes.
        assert_eq!(rd(1, 2), [0, 0]);
        assert_eq!(rd(0, 1), [100]);
    }

    #[test]
    fn config_writes_are_ignored() {
        let mut h = Harness::new(rw_options(), &disk(8));
        let mut before = [0u8; CONFIG_SPACE_SIZE];
        h.dev.read_config(0, &mut before);
        h.dev.write_config(0, &[0xff; CONFIG_SPACE_SIZE]);
        h.dev.write_config(u64::MAX, &[1, 2, 3]);
        let mut after = [0u8; CONFIG_SPACE_SIZE];
        h.dev.read_config(0, &mut after);
        assert_eq!(before, after);
    }

    #[test]
    fn features_offered() {
        let h = Harness::new(rw_options(), &disk(8));
        let f = h.dev.features();
        for bit in [
            F_VERSION_1,
            F_RING_INDIRECT_DESC,
            F_RING_EVENT_IDX,
            1 << VIRTIO_BLK_F_SEG_MAX,
            1 << VIRTIO_BLK_F_BLK_SIZE,
            1 << VIRTIO_BLK_F_FLUSH,
            1 << VIRTIO_BLK_F_DISCARD,
            1 << VIRTIO_BLK_F_WRITE_ZEROES,
        ] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_MQ), 0);
        assert_eq!(h.dev.device_type(), TYPE_BLOCK);
        assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE]);
    }

    #[test]
    fn multiple_queues() {
        let contents = disk(32);
        let options = BlockOptions {
            num_queues: 3,
            ..rw_options()
        };
        let mut h = Harness::new(options, &contents);
        assert_ne!(h.dev.features() & (1 << VIRTIO_BLK_F_MQ), 0);
        assert_eq!(h.dev.queue_max_sizes(), vec![QSIZE; 3]);
        let r1 = h.request(1, VIRTIO_BLK_T_IN, 2, &[512], W);
        let r2 = h.request(2, VIRTIO_BLK_T_IN, 9, &[512], W);
        // Kicking queue 0 does not serve the others.
        h.kick(0);
        assert_eq!(h.irq.count(), 0);
        h.kick(2);
        assert_eq!(h.status(&r2), S_OK);
        assert_eq!(h.used_idx(1), 0);
        h.kick(1);
        assert_eq!(h.status(&r1), S_OK);
        assert_eq!(h.read_guest(r1.data[0], 512), &contents[2 * 512..3 * 512]);
        assert_eq!(h.read_guest(r2.data[0], 512), &contents[9 * 512..10 * 512]);
        assert_eq!(
            h.irq.causes(),
            vec![InterruptCause::Queue(2), InterruptCause::Queue(1)]
        );
        // An unknown queue index is ignored.
        h.dev.process_queue(7);
    }

    #[test]
    fn driver_may_enable_fewer_queues() {
        let options = BlockOptions {
            num_queues: 4,
            ..rw_options()
        };
        let mut h = Harness::with(options, &disk(8), |f| f, Some(&[0, 1]));
        let r = h.request(1, VIRTIO_BLK_T_IN, 0, &[512], W);
        h.kick(1);
        assert_eq!(h.status(&r), S_OK);
        h.rings[3].notify.write(1).unwrap();
        h.dev.process_queue(3);
    }

    #[test]
    fn activation_is_validated() {
        let mut h = Harness::new(rw_options(), &disk(8));
        h.dev.reset();
        let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
        // Queue index out of range.
        let mut queues = h.make_rings(&[QSIZE; 2], None);
        assert!(h
            .dev
            .activate(h.mem.clone(), irq.clone(), queues.split_off(1))
            .is_err());
        // No queue enabled.
        let queues = h.make_rings(&[QSIZE], Some(&[]));
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
        // A ring outside guest memory.
        let mut queues = h.make_rings(&[QSIZE], None);
        queues[0]
            .queue
            .try_set_used_ring_address(GuestAddress(OUTSIDE))
            .unwrap();
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), queues).is_err());
        // Processing an inactive device does nothing.
        h.dev.process_queue(0);
        assert_eq!(h.used_idx(0), 0);
    }

    #[test]
    fn reset_and_reactivate() {
        let contents = disk(8);
        let mut h = Harness::new(rw_options(), &contents);
        assert_eq!(h.submit(VIRTIO_BLK_T_IN, 0, &[512], W).0, S_OK);
        h.dev.reset();
        assert_eq!(h.dev.acked_features, 0);
        // A request published after the reset is not served.
        let stale = h.request(0, VIRTIO_BLK_T_IN, 0, &[512], W);
        h.dev.process_queue(0);
        assert_eq!(h.status(&stale), 0xff);

        let f = h.dev.features();
        h.dev.ack_features(f);
        let queues = h.make_rings(&[QSIZE], None);
        h.dev
            .activate(h.mem.clone(), h.irq.clone(), queues)
            .unwrap();
        let (status, used, req) = h.submit(VIRTIO_BLK_T_IN, 1, &[512], W);
        assert_eq!((status, used), (S_OK, 513));
        assert_eq!(h.read_guest(req.data[0], 512), &contents[512..1024]);
    }

    #[test]
    fn counters_are_reported() {
        let mut h = Harness::new(rw_options(), &disk(16));
        h.submit(VIRTIO_BLK_T_IN, 0, &[4096], W);
        h.submit(VIRTIO_BLK_T_OUT, 8, &[512, 512], R);
        h.submit(VIRTIO_BLK_T_FLUSH, 0, &[], R);
        h.submit(VIRTIO_BLK_T_IN, 100, &[512], W);
        let c = h.dev.counters();
        let get = |k: &str| c[k].as_u64().unwrap();
        assert_eq!(get("read_bytes"), 4096);
        assert_eq!(get("read_ops"), 1);
        assert_eq!(get("write_bytes"), 1024);
        assert_eq!(get("write_ops"), 1);
        assert_eq!(get("flush_ops"), 1);
        assert_eq!(get("errors"), 1);
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn options_are_validated() {
        let file = || TempFile::new().unwrap().into_file();
        let bad = [
            BlockOptions {
                id: "x".repeat(21),
                ..BlockOptions::default()
            },
            BlockOptions {
                num_queues: 0,
                ..BlockOptions::default()
            },
            BlockOptions {
                queue_size: 100,
                ..BlockOptions::default()
            },
            BlockOptions {
                queue_size: 0,
                ..BlockOptions::default()
            },
        ];
        for o in bad {
            let err = Block::new(file(), o.clone()).err().expect("accepted");
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{o:?}");
        }
        let ok = BlockOptions {
            id: "x".repeat(20),
            ..BlockOptions::default()
        };
        assert_eq!(Block::new(file(), ok).unwrap().capacity_sectors(), 0);
    }
}
