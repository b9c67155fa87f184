//! Virtio entropy device (virtio 1.x, section 5.4) fed from a host file.
//!
//! The device has one request queue. The driver posts device-writable buffers; the device
//! fills them with bytes read from its source (normally `/dev/urandom`, opened by the caller
//! before any sandboxing) and returns each chain with the number of bytes it wrote.
//!
//! Bytes are read from the source straight into guest memory (through vm-memory's
//! bounds-checked slices), one descriptor after the other, resuming after short reads. A
//! chain gets a contiguous prefix of its writable bytes: filling stops at the first
//! descriptor that cannot be filled completely (end of the source, a read error, a buffer
//! outside guest memory, or the per-chain cap), and the used length says how far it got.
//!
//! What a guest controls is bounded:
//! - a chain holding any device-readable descriptor is malformed (the spec only allows
//!   device-writable buffers on this queue): it is returned with length 0, untouched;
//! - at most [`MAX_CHAIN_BYTES`] are written into one chain (the spec lets the device use
//!   less than the whole buffer);
//! - at most [`MAX_BYTES_PER_CALL`] bytes and [`MAX_CHAINS_PER_CALL`] chains are served per
//!   notification. When either budget runs out with requests still pending, the device
//!   re-arms its own queue notification, so its worker thread serves its other events first
//!   and then comes back to this queue.

use std::fs::File;
use std::io;
use std::sync::Arc;

use log::debug;
use virtio_queue::DescriptorChain;
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryMmap, Permissions, ReadVolatile, VolatileMemoryError,
};

use super::queue::{
    clear_notification, drain, interrupt_if_needed, log_limited, rearm, walk_chain, Budget, Seg,
    Served,
};
use super::{
    counters_map, ActivateError, ActiveQueue, VirtioCommon, VirtioDevice, VirtioInterrupt,
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, TYPE_RNG,
};

/// Largest size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes written into one chain.
pub const MAX_CHAIN_BYTES: u32 = 64 * 1024;
/// Most bytes served per queue notification before the device yields to other events.
pub const MAX_BYTES_PER_CALL: u64 = 1024 * 1024;
/// Most chains served per queue notification before the device yields to other events.
pub const MAX_CHAINS_PER_CALL: u32 = 1024;

/// Statistics, reported by [`VirtioDevice::counters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    /// Random bytes written into guest buffers.
    bytes: u64,
    /// Chains returned to the driver (well-formed or not).
    requests: u64,
    /// Malformed chains, buffers outside guest memory, and source failures.
    errors: u64,
}

/// What the activated device holds.
struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: ActiveQueue,
    /// A driver error was logged at warning level (later ones go to debug).
    warned: bool,
}

/// The source and the per-request state (everything a request needs besides the queue).
struct Source {
    file: File,
    /// A failure of the source was logged at warning level (later ones go to debug).
    warned: bool,
    descs: Vec<Seg>,
    counters: Counters,
}

/// A virtio-rng device model.
///
/// Create it with [`Rng::new`] from an open source file and hand it (as a [`VirtioDevice`])
/// to a virtio transport. See the module documentation for how requests are served.
pub struct Rng {
    source: Source,
    /// (head, used length) of the chains served in the current pass over the ring.
    completions: Vec<(u16, u32)>,
    common: VirtioCommon,
    active: Option<Active>,
}

impl Rng {
    /// Creates an entropy device that reads from `source`, which the caller opened for
    /// reading (for example `/dev/urandom`). The file is kept open for the device's life,
    /// across driver resets, so that it can be opened before the process confines itself.
    ///
    /// The source should not block: `/dev/urandom` (or `/dev/random` on Linux 5.6 and later,
    /// once seeded) never does. A regular file works too; once its end is reached, requests
    /// are returned with length 0.
    pub fn new(source: File) -> Rng {
        Rng {
            source: Source {
                file: source,
                warned: false,
                descs: Vec::new(),
                counters: Counters::default(),
            },
            completions: Vec::new(),
            // virtio-rng has no configuration space.
            common: VirtioCommon::new(
                TYPE_RNG,
                "virtio-rng",
                vec![QUEUE_SIZE],
                F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX,
                Vec::new(),
            ),
            active: None,
        }
    }
}

impl VirtioDevice for Rng {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
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
        // One queue at most: `enabled_queues` refuses other indices and an empty set.
        let Some(queue) = self.common.enabled_queues(queues, &mem)?.pop() else {
            return Err(ActivateError::Invalid(
                "virtio-rng activated without its request queue enabled".into(),
            ));
        };
        self.active = Some(Active {
            mem,
            interrupt,
            queue,
            warned: false,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.common.reset();
    }

    fn process_queue(&mut self, index: u16) {
        let Rng {
            source,
            completions,
            active,
            ..
        } = self;
        let Some(active) = active.as_mut() else {
            return;
        };
        if index != 0 {
            return;
        }
        let Active {
            mem,
            interrupt,
            queue: aq,
            warned,
        } = active;
        clear_notification(&aq.notify);
        let queue = &mut aq.queue;
        let mem: &GuestMemoryMmap = mem;

        let budget = Budget {
            bytes: MAX_BYTES_PER_CALL,
            chains: u64::from(MAX_CHAINS_PER_CALL),
        };
        let drained = drain(
            queue,
            mem,
            format_args!("virtio-rng queue 0"),
            warned,
            completions,
            budget,
            |chain, bytes_left, _| {
                let cap = bytes_left.min(u64::from(MAX_CHAIN_BYTES)) as u32;
                let len = source.serve(mem, chain, cap);
                (Served::Used(len), u64::from(len))
            },
        );
        if drained.out_of_budget {
            // Come back later without waiting for the driver (which may not notify again).
            rearm(&aq.notify, "virtio-rng", aq.index);
        }
        interrupt_if_needed(drained.completed, queue, mem, interrupt.as_ref(), 0);
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.source.counters;
        counters_map(&[
            ("bytes", c.bytes),
            ("requests", c.requests),
            ("errors", c.errors),
        ])
    }
}

impl Source {
    /// Fills the device-writable buffers of one chain, up to `cap` bytes. Returns the used
    /// length: the bytes written, from the start of the chain's writable part.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        cap: u32,
    ) -> u32 {
        self.counters.requests += 1;
        walk_chain(chain, &mut self.descs, usize::from(QUEUE_SIZE) * 4);
        if self.descs.iter().any(|s| !s.write) {
            debug!("virtio-rng: request with a device-readable descriptor");
            self.counters.errors += 1;
            return 0;
        }
        let mut written = 0u32;
        for i in 0..self.descs.len() {
            let seg = self.descs[i];
            let want = seg.len.min(cap - written);
            if want == 0 {
                continue;
            }
            let got = self.fill(mem, seg.addr, want as usize);
            // `got` <= `want`, so the sum stays within `cap`.
            written += got as u32;
            if got < want as usize || written == cap {
                break;
            }
        }
        // A request that got nothing (no writable bytes, a buffer outside guest memory, a
        // failed or exhausted source) is an error; a partly filled one is not.
        if written == 0 {
            self.counters.errors += 1;
        }
        self.counters.bytes += u64::from(written);
        written
    }

    /// Reads `len` bytes from the source into guest memory at `addr`, resuming after short
    /// reads. Returns how many bytes were written: fewer than `len` when the source ends or
    /// fails, or when the range leaves guest memory.
    fn fill(&mut self, mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> usize {
        let Ok(slices) = GuestMemory::get_slices(mem, addr, len, Permissions::Write) else {
            debug!("virtio-rng: buffer at {:#x} outside guest memory", addr.0);
            return 0;
        };
        let mut done = 0usize;
        for slice in slices {
            let Ok(slice) = slice else {
                debug!("virtio-rng: buffer at {:#x} leaves guest memory", addr.0);
                return done;
            };
            let mut off = 0usize;
            while off < slice.len() {
                let Ok(mut rest) = slice.offset(off) else {
                    return done;
                };
                match (&self.file).read_volatile(&mut rest) {
                    Ok(0) => {
                        self.source_error(format_args!("the source has no more bytes"));
                        return done;
                    }
                    Ok(n) => {
                        // A read never returns more than asked for; stay safe if it did.
                        let n = n.min(rest.len());
                        off += n;
                        done += n;
                    }
                    Err(VolatileMemoryError::IOError(e))
                        if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.source_error(format_args!("reading the source failed: {e}"));
                        return done;
                    }
                }
            }
        }
        done
    }

    /// Logs a host-side failure at warning level the first time, at debug level afterwards.
    fn source_error(&mut self, args: std::fmt::Arguments<'_>) {
        log_limited(
            &mut self.warned,
            "source",
            format_args!("virtio-rng: {args}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use virtio_bindings::virtio_ring::{
        VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    };
    use vm_memory::Bytes;
    use vmm_sys_util::tempfile::TempFile;

    use crate::virtio::test_driver::{Driver, OUTSIDE, POISON, QSIZE, R, REGION, W};
    use crate::virtio::InterruptCause;

    /// The test plays the driver of the request queue (queue 0); the host side is the
    /// temporary file the device reads, if any.
    type Harness = Driver<Rng, Option<TempFile>>;

    impl Harness {
        /// A device reading `/dev/urandom`, all features acked.
        fn urandom() -> Harness {
            let file = File::open("/dev/urandom").unwrap();
            Self::with(Rng::new(file), None, |f| f)
        }

        /// A device reading a regular file holding `contents`.
        fn file(contents: &[u8]) -> Harness {
            let tmp = TempFile::new().unwrap();
            tmp.as_file().write_all(contents).unwrap();
            let file = File::open(tmp.as_path()).unwrap();
            Self::with(Rng::new(file), Some(tmp), |f| f)
        }

        fn with(rng: Rng, tmp: Option<TempFile>, features: impl Fn(u64) -> u64) -> Harness {
            let mut h = Driver::for_device(rng, tmp, features);
            h.start(&[QSIZE], None);
            h
        }

        /// Lays out a fresh (zeroed) ring and the queue describing it.
        fn make_ring(&mut self, ready: bool) -> Vec<ActiveQueue> {
            self.make_rings(&[QSIZE], if ready { None } else { Some(&[]) })
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 13 + i / 251) as u8).collect()
    }

    #[test]
    fn fills_buffers_from_urandom() {
        let mut h = Harness::urandom();
        let a = h.buf(4096, POISON);
        let b = h.buf(100, POISON);
        let head = h.publish_chain(0, &[(a, 4096, W), (b, 100, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 4196);
        let data = [h.read_guest(a, 4096), h.read_guest(b, 100)].concat();
        // 4196 random bytes are neither all zero nor all the poison byte (odds 2^-33568).
        assert!(data.iter().any(|&x| x != 0));
        assert!(data.iter().any(|&x| x != POISON));
        // A second request gets different bytes. (The driver asks for an interrupt on the
        // next used buffer, as Linux does when it re-enables callbacks.)
        h.set_used_event(0, 1);
        let c = h.buf(4096, POISON);
        let head = h.publish_chain(0, &[(c, 4096, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 4096);
        assert_ne!(h.read_guest(c, 4096), data[..4096]);
        assert_eq!(h.counter("bytes"), 8292);
        assert_eq!(h.counter("requests"), 2);
        assert_eq!(h.counter("errors"), 0);
        assert_eq!(h.irq.causes(), vec![InterruptCause::Queue(0); 2]);
        // The device cleared the notification.
        assert!(h.rings[0].notify.read().is_err());
    }

    #[test]
    fn bytes_come_from_the_source_in_order() {
        let contents = pattern(10_000);
        let mut h = Harness::file(&contents);
        let a = h.buf(1000, POISON);
        let b = h.buf(24, POISON);
        let c = h.buf(3000, POISON);
        let h1 = h.publish_chain(0, &[(a, 1000, W), (b, 24, W)]);
        let h2 = h.publish_chain(0, &[(c, 3000, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h1), 1024);
        assert_eq!(h.used_len(0, h2), 3000);
        assert_eq!(h.read_guest(a, 1000), &contents[..1000]);
        assert_eq!(h.read_guest(b, 24), &contents[1000..1024]);
        assert_eq!(h.read_guest(c, 3000), &contents[1024..4024]);
        // One batch, one interrupt.
        assert_eq!(h.irq.count(), 1);

        // The end of the source: the chain gets what is left; then nothing, as an error.
        let d = h.buf(8000, POISON);
        let h3 = h.publish_chain(0, &[(d, 8000, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h3), 10_000 - 4024);
        assert_eq!(h.read_guest(d, 10_000 - 4024), &contents[4024..]);
        assert_eq!(h.read_guest(d + 10_000 - 4024, 1), [POISON]);
        assert_eq!(h.counter("errors"), 0);
        let e = h.buf(16, POISON);
        let h4 = h.publish_chain(0, &[(e, 16, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h4), 0);
        assert_eq!(h.read_guest(e, 16), [POISON; 16]);
        assert_eq!(h.counter("bytes"), 10_000);
        assert_eq!(h.counter("requests"), 4);
        assert_eq!(h.counter("errors"), 1);
    }

    #[test]
    fn buffers_may_straddle_regions_and_be_indirect() {
        let contents = pattern(600);
        let mut h = Harness::file(&contents);
        // 200 bytes before the region boundary, 200 after.
        let straddle = REGION - 200;
        h.mem
            .write_slice(&[POISON; 400], GuestAddress(straddle))
            .unwrap();
        let table = h.buf(32, POISON);
        let small = h.buf(200, POISON);
        h.write_raw_desc(table, straddle, 400, W | VRING_DESC_F_NEXT as u16, 1);
        h.write_raw_desc(table + 16, small, 200, W, 0);
        let head = h.publish_chain(0, &[(table, 32, VRING_DESC_F_INDIRECT as u16)]);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 600);
        assert_eq!(h.read_guest(straddle, 400), &contents[..400]);
        assert_eq!(h.read_guest(small, 200), &contents[400..]);
    }

    #[test]
    fn hostile_chains_get_correct_used_lengths() {
        let contents = pattern(1 << 20);
        let mut h = Harness::file(&contents);
        let mut offset = 0usize;

        // Readable only, and readable mixed with writable: length 0, untouched.
        let a = h.buf(64, POISON);
        let h1 = h.publish_chain(0, &[(a, 64, R)]);
        let b = h.buf(64, POISON);
        let c = h.buf(64, POISON);
        let h2 = h.publish_chain(0, &[(b, 64, W), (c, 64, R)]);
        // A zero-length writable buffer.
        let h3 = h.publish_chain(0, &[(b, 0, W)]);
        // Entirely outside guest memory, and a buffer running off the end of memory.
        let h4 = h.publish_chain(0, &[(OUTSIDE, 512, W)]);
        let end = 2 * REGION - 100;
        let h5 = h.publish_chain(0, &[(end, 300, W), (a, 64, W)]);
        // A valid buffer followed by one outside memory: the first is used.
        let d = h.buf(128, POISON);
        let h6 = h.publish_chain(0, &[(d, 128, W), (OUTSIDE, 128, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h1), 0);
        assert_eq!(h.used_len(0, h2), 0);
        assert_eq!(h.read_guest(a, 64), [POISON; 64]);
        assert_eq!(h.read_guest(b, 64), [POISON; 64]);
        assert_eq!(h.used_len(0, h3), 0);
        assert_eq!(h.used_len(0, h4), 0);
        assert_eq!(h.used_len(0, h5), 100);
        assert_eq!(h.read_guest(end, 100), &contents[..100]);
        offset += 100;
        assert_eq!(h.read_guest(a, 64), [POISON; 64]);
        assert_eq!(h.used_len(0, h6), 128);
        assert_eq!(h.read_guest(d, 128), &contents[offset..offset + 128]);
        offset += 128;
        // h1, h2, h3 (nothing to fill), h4: errors; h5 and h6 gave bytes.
        assert_eq!(h.counter("errors"), 4);

        // A huge buffer: capped per chain.
        let big = h.buf(u64::from(MAX_CHAIN_BYTES) + 4096, POISON);
        let h7 = h.publish_chain(0, &[(big, u32::MAX, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h7), MAX_CHAIN_BYTES);
        let cap = MAX_CHAIN_BYTES as usize;
        assert_eq!(h.read_guest(big, cap), &contents[offset..offset + cap]);
        assert_eq!(h.read_guest(big + cap as u64, 1), [POISON]);

        // A descriptor loop and a head beyond the queue do not stall the queue.
        let e = h.buf(16, POISON);
        let at = h.rings[0].desc + 20 * 16;
        h.write_raw_desc(at, e, 16, W | VRING_DESC_F_NEXT as u16, 20);
        h.rings[0].next_desc = 21;
        h.publish(0, 20);
        h.publish(0, 500);
        let f = h.buf(32, POISON);
        let h8 = h.publish_chain(0, &[(f, 32, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, h8), 32);
        // The loop was returned (with what fit in its descriptors); the bad head was not.
        assert_eq!(h.used_idx(0), 9);
        assert_eq!(h.used_elem(0, 7).0, 20);
    }

    #[test]
    fn work_per_call_is_bounded() {
        let mut h = Harness::urandom();
        let chains = (MAX_BYTES_PER_CALL / u64::from(MAX_CHAIN_BYTES)) as u16 + 4;
        assert!(chains < QSIZE);
        let len = MAX_CHAIN_BYTES;
        for _ in 0..chains {
            let b = h.buf(u64::from(len), POISON);
            h.publish_chain(0, &[(b, len, W)]);
        }
        h.kick(0);
        let first = (MAX_BYTES_PER_CALL / u64::from(len)) as u16;
        assert_eq!(h.used_idx(0), first);
        assert_eq!(h.counter("bytes"), MAX_BYTES_PER_CALL);
        // The device re-armed its notification so that the VMM calls it again.
        assert_eq!(h.rings[0].notify.read().unwrap(), 1);
        h.dev.process_queue(0);
        assert_eq!(h.used_idx(0), chains);
        assert!(h.rings[0].notify.read().is_err());
        for i in 0..chains {
            assert_eq!(h.used_elem(0, i).1, len);
        }
    }

    #[test]
    fn interrupts_follow_avail_flags_without_event_idx() {
        let file = File::open("/dev/urandom").unwrap();
        let mut h = Harness::with(Rng::new(file), None, |f| f & !F_RING_EVENT_IDX);
        h.set_avail_flags(0, VRING_AVAIL_F_NO_INTERRUPT as u16);
        let b = h.buf(16, POISON);
        h.publish_chain(0, &[(b, 16, W)]);
        h.kick(0);
        assert_eq!(h.used_idx(0), 1);
        assert_eq!(h.irq.count(), 0);
        h.set_avail_flags(0, 0);
        h.publish_chain(0, &[(b, 16, W)]);
        h.kick(0);
        assert_eq!(h.irq.count(), 1);
    }

    #[test]
    fn interrupts_are_suppressed_with_event_idx() {
        let mut h = Harness::urandom();
        let b = h.buf(16, POISON);
        h.publish_chain(0, &[(b, 16, W)]);
        h.kick(0);
        assert_eq!(h.irq.count(), 1);
        // The driver wants an interrupt once used entry 3 is written.
        h.set_used_event(0, 3);
        h.publish_chain(0, &[(b, 16, W)]);
        h.kick(0);
        assert_eq!(h.irq.count(), 1);
        h.publish_chain(0, &[(b, 16, W)]);
        h.publish_chain(0, &[(b, 16, W)]);
        h.kick(0);
        assert_eq!(h.used_idx(0), 4);
        assert_eq!(h.irq.count(), 2);
    }

    #[test]
    fn features_config_and_type() {
        let mut h = Harness::urandom();
        let f = h.dev.features();
        for bit in [F_VERSION_1, F_RING_INDIRECT_DESC, F_RING_EVENT_IDX] {
            assert_ne!(f & bit, 0, "{bit:#x}");
        }
        assert_eq!(h.dev.device_type(), TYPE_RNG);
        assert_eq!(h.dev.queue_max_sizes(), vec![QUEUE_SIZE]);
        let mut cfg = [0xeeu8; 8];
        h.dev.read_config(0, &mut cfg);
        assert_eq!(cfg, [0; 8]);
        h.dev.write_config(u64::MAX, &[1, 2, 3]);
        h.dev.read_config(u64::MAX - 2, &mut cfg);
        assert_eq!(cfg, [0; 8]);
        // Unknown features are not acked.
        h.dev.ack_features(u64::MAX);
        assert_eq!(h.dev.common.acked_features, f);
        assert!(h.dev.host_fds().is_empty());
        let c = h.dev.counters();
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn activation_is_validated() {
        let mut h = Harness::urandom();
        h.dev.reset();
        let irq: Arc<dyn VirtioInterrupt> = h.irq.clone();
        // Queue not enabled.
        let q = h.make_ring(false);
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Wrong index.
        let mut q = h.make_ring(true);
        q[0].index = 1;
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Twice.
        let mut q = h.make_ring(true);
        q.extend(h.make_ring(true));
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Outside guest memory.
        let mut q = h.make_ring(true);
        q[0].queue
            .try_set_used_ring_address(GuestAddress(OUTSIDE))
            .unwrap();
        assert!(h.dev.activate(h.mem.clone(), irq.clone(), q).is_err());
        // Nothing.
        assert!(h.dev.activate(h.mem.clone(), irq, Vec::new()).is_err());
        // An inactive device ignores notifications.
        let b = h.buf(16, POISON);
        h.publish_chain(0, &[(b, 16, W)]);
        h.dev.process_queue(0);
        assert_eq!(h.used_idx(0), 0);
    }

    #[test]
    fn reset_and_reactivate() {
        let contents = pattern(256);
        let mut h = Harness::file(&contents);
        let a = h.buf(100, POISON);
        let head = h.publish_chain(0, &[(a, 100, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 100);
        h.dev.reset();
        assert_eq!(h.dev.common.acked_features, 0);
        let stale = h.buf(16, POISON);
        h.publish_chain(0, &[(stale, 16, W)]);
        h.dev.process_queue(0);
        assert_eq!(h.read_guest(stale, 16), [POISON; 16]);

        let f = h.dev.features();
        h.dev.ack_features(f);
        let q = h.make_ring(true);
        h.dev.activate(h.mem.clone(), h.irq.clone(), q).unwrap();
        let b = h.buf(100, POISON);
        let head = h.publish_chain(0, &[(b, 100, W)]);
        h.kick(0);
        assert_eq!(h.used_len(0, head), 100);
        // The source continues where it was.
        assert_eq!(h.read_guest(b, 100), &contents[100..200]);
        assert_eq!(h.counter("requests"), 2);
        // Other queue indices are ignored.
        h.dev.process_queue(3);
    }
}
