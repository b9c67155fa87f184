//! Which guest pages the destination does not have yet.
//!
//! Every page's content is hashed when it is sent, and each pass sends the pages whose hash
//! changed since: writes by the vCPUs and by device threads alike show, without a dirty
//! bitmap in KVM or in the devices. The destination's memory starts zero, so zero pages are
//! never sent in the first pass. The final pass runs with the VM paused and its devices held,
//! so it leaves nothing behind.

use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::wire::{Kind, Wire};

/// Bytes of a page.
pub const PAGE: usize = 4096;
/// Pages copied out of guest memory at once.
const BATCH_PAGES: usize = 256;

/// A 64-bit hash of a page: four independent lanes of multiply-and-rotate over its words
/// (so that the processor runs them side by side), folded together at the end.
fn page_hash(page: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut lanes = [0u64, 1, 2, 3];
    for chunk in page.chunks_exact(32) {
        for (lane, word) in lanes.iter_mut().zip(chunk.chunks_exact(8)) {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            *lane = (lane.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
    lanes[0] ^ lanes[1].rotate_left(16) ^ lanes[2].rotate_left(32) ^ lanes[3].rotate_left(48)
}

/// The hash of what the destination holds for each page, region by region.
pub struct PageTracker {
    hashes: Vec<Vec<u64>>,
}

/// What one pass sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassResult {
    /// Pages sent.
    pub pages: u64,
}

impl PageTracker {
    /// A tracker for `mem`, as if the destination held zeros everywhere.
    pub fn new(mem: &GuestMemoryMmap) -> Self {
        let zero = page_hash(&[0u8; PAGE]);
        PageTracker {
            hashes: mem
                .iter()
                .map(|r| vec![zero; (r.len() as usize).div_ceil(PAGE)])
                .collect(),
        }
    }

    /// Sends every page of `mem` whose content the destination does not have.
    pub fn send_changed(
        &mut self,
        mem: &GuestMemoryMmap,
        wire: &mut Wire,
    ) -> Result<PassResult, String> {
        let mut result = PassResult::default();
        let mut batch = vec![0u8; BATCH_PAGES * PAGE];
        for (region, hashes) in mem.iter().zip(self.hashes.iter_mut()) {
            let base = region.start_addr();
            let pages = hashes.len();
            let mut first = 0;
            while first < pages {
                let count = BATCH_PAGES.min(pages - first);
                let bytes = &mut batch[..count * PAGE];
                let at = base.unchecked_add((first * PAGE) as u64);
                vm_memory::Bytes::read_slice(mem, bytes, at)
                    .map_err(|e| format!("guest memory at {:#x}: {e}", at.raw_value()))?;
                // Runs of changed pages go out as one message each.
                let mut run: Option<usize> = None;
                for i in 0..=count {
                    let changed = i < count && {
                        let h = page_hash(&bytes[i * PAGE..(i + 1) * PAGE]);
                        let old = std::mem::replace(&mut hashes[first + i], h);
                        old != h
                    };
                    match (changed, run) {
                        (true, None) => run = Some(i),
                        (false, Some(start)) => {
                            let address = at.unchecked_add((start * PAGE) as u64);
                            send_pages(wire, address, &bytes[start * PAGE..i * PAGE])?;
                            result.pages += (i - start) as u64;
                            run = None;
                        }
                        _ => {}
                    }
                }
                first += count;
            }
        }
        Ok(result)
    }
}

fn send_pages(wire: &mut Wire, address: GuestAddress, bytes: &[u8]) -> Result<(), String> {
    wire.send(Kind::Pages, &[&address.raw_value().to_le_bytes(), bytes])
        .map_err(|e| format!("sending guest memory: {e}"))
}

/// Writes a received pages payload (guest address, then pages) into `mem`; pages outside
/// guest memory are the sender's error.
pub fn receive_pages(mem: &GuestMemoryMmap, payload: &[u8]) -> Result<(), String> {
    let (address, pages) = payload.split_at(8);
    let mut a = [0u8; 8];
    a.copy_from_slice(address);
    let address = u64::from_le_bytes(a);
    vm_memory::Bytes::write_slice(mem, pages, GuestAddress(address)).map_err(|e| {
        format!(
            "{} bytes of pages at guest address {address:#x} do not fit guest memory: {e}",
            pages.len()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;
    use vm_memory::Bytes;

    #[test]
    fn only_changed_pages_go_and_they_arrive() {
        let ranges = [
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x100_0000), 0x8000),
        ];
        let src = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        let dst = GuestMemoryMmap::<()>::from_ranges(&ranges).unwrap();
        src.write_slice(b"one", GuestAddress(0x2000)).unwrap();
        src.write_slice(b"two", GuestAddress(0x100_7ff0)).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let mut tx = Wire::new(a.into(), Duration::from_secs(5)).unwrap();
        let mut rx = Wire::new(b.into(), Duration::from_secs(5)).unwrap();
        let mut tracker = PageTracker::new(&src);
        // Three small messages fit the socket's buffer: sent first, then read.
        assert_eq!(
            tracker.send_changed(&src, &mut tx).unwrap().pages,
            2,
            "zero pages stay"
        );
        assert_eq!(
            tracker.send_changed(&src, &mut tx).unwrap().pages,
            0,
            "nothing changed"
        );
        src.write_slice(b"three", GuestAddress(0x2000)).unwrap();
        assert_eq!(tracker.send_changed(&src, &mut tx).unwrap().pages, 1);
        tx.send_ack(Ok(())).unwrap();
        let mut messages = 0;
        loop {
            let (kind, len) = rx.recv_header().unwrap();
            if kind == Kind::Ack {
                break;
            }
            receive_pages(&dst, &rx.recv_payload(len).unwrap()).unwrap();
            messages += 1;
        }
        assert_eq!(messages, 3);
        let mut buf = [0u8; 5];
        dst.read_slice(&mut buf, GuestAddress(0x2000)).unwrap();
        assert_eq!(&buf, b"three");
        dst.read_slice(&mut buf[..3], GuestAddress(0x100_7ff0))
            .unwrap();
        assert_eq!(&buf[..3], b"two");
        let mut outside = 0x2_0000_0000u64.to_le_bytes().to_vec();
        outside.extend_from_slice(&[0u8; PAGE]);
        assert!(receive_pages(&dst, &outside).is_err());
    }
}
