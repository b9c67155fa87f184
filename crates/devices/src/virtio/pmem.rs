//! The virtio persistent memory device (virtio 1.2, 5.19): a host file the guest reaches as
//! memory at a guest-physical range the VMM maps it at (the configuration space says where),
//! and one request queue on which the driver asks for its writes to be made durable.
//!
//! The device model owns only the request queue: mapping the file into the guest is the
//! VMM's job (a KVM memory slot), done before the device exists. A flush is an `fsync` of
//! the backing file, which writes back the pages the guest dirtied through the shared
//! mapping. With `discard_writes` the mapping is private, there is nothing to write back, and
//! a flush just succeeds.
//!
//! A request is a device-readable `u32` type followed by a device-writable `u32` status. A
//! chain that is not that shape is returned with length 0 and counted as an error; a request
//! of an unknown type is answered with `EIO`.

use std::fs::File;
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::queue::{walk_chain, Running, Seg};
use super::{
    counters_map, ActivateError, ActiveQueue, VirtioCommon, VirtioDevice, VirtioInterrupt,
    F_RING_INDIRECT_DESC, F_VERSION_1,
};

/// The virtio device type of persistent memory.
pub const TYPE_PMEM: u32 = 27;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The one request type: make the guest's writes durable.
pub const REQ_FLUSH: u32 = 0;
/// Status: done.
pub const RESP_OK: u32 = 0;
/// Status: failed (or not a request the device knows).
pub const RESP_EIO: u32 = 1;
/// Requests served per notification before the device yields (each may be an `fsync`).
const MAX_CHAINS_PER_CALL: u64 = 64;

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    flushes: u64,
    flush_errors: u64,
    malformed: u64,
}

/// A virtio-pmem device model.
pub struct Pmem {
    common: VirtioCommon,
    file: File,
    discard_writes: bool,
    active: Option<Running>,
    counters: Counters,
    descs: Vec<Seg>,
    completions: Vec<(u16, u32)>,
}

impl Pmem {
    /// A device for the region of `size` bytes at guest address `start`, backed by `file`
    /// (mapped there by the caller, privately when `discard_writes`).
    pub fn new(file: File, start: u64, size: u64, discard_writes: bool) -> Pmem {
        let mut config = start.to_le_bytes().to_vec();
        config.extend_from_slice(&size.to_le_bytes());
        Pmem {
            common: VirtioCommon::new(
                TYPE_PMEM,
                "virtio-pmem",
                vec![QUEUE_SIZE],
                F_VERSION_1 | F_RING_INDIRECT_DESC,
                config,
            ),
            file,
            discard_writes,
            active: None,
            counters: Counters::default(),
            descs: Vec::new(),
            completions: Vec::new(),
        }
    }

    /// Serves one request; returns the used length (4 with a status, 0 for a malformed
    /// chain).
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        walk_chain(chain, &mut self.descs, 8);
        let request = self.descs.iter().find(|s| !s.write && s.len >= 4);
        let status = self.descs.iter().rev().find(|s| s.write && s.len >= 4);
        let (Some(request), Some(status)) = (request.copied(), status.copied()) else {
            self.counters.malformed += 1;
            return 0;
        };
        let Ok(kind) = mem.read_obj::<u32>(request.addr) else {
            self.counters.malformed += 1;
            return 0;
        };
        let answer = match u32::from_le(kind) {
            REQ_FLUSH => self.flush(),
            _ => RESP_EIO,
        };
        match mem.write_obj(answer.to_le(), status.addr) {
            Ok(()) => 4,
            Err(_) => {
                self.counters.malformed += 1;
                0
            }
        }
    }

    fn flush(&mut self) -> u32 {
        self.counters.flushes += 1;
        if self.discard_writes {
            return RESP_OK;
        }
        match self.file.sync_all() {
            Ok(()) => RESP_OK,
            Err(e) => {
                self.counters.flush_errors += 1;
                log::warn!("virtio-pmem: flush failed: {e}");
                RESP_EIO
            }
        }
    }
}

impl VirtioDevice for Pmem {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
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

    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        if let Some(active) = &mut self.active {
            active.mem = mem;
        }
    }

    fn reset(&mut self) {
        self.active = None;
        self.common.reset();
    }

    fn process_queue(&mut self, index: u16) {
        let Some(mut running) = self.active.take() else {
            return;
        };
        let mut completions = std::mem::take(&mut self.completions);
        running.serve_queue(
            index,
            "virtio-pmem",
            MAX_CHAINS_PER_CALL,
            &mut completions,
            |mem, chain| self.serve(mem, chain),
        );
        self.completions = completions;
        self.active = Some(running);
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.counters;
        counters_map(&[
            ("flushes", c.flushes),
            ("flush_errors", c.flush_errors),
            ("malformed", c.malformed),
        ])
    }
}

#[cfg(test)]
mod tests;
