//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and delivery of
//! its vectors as MSIs.

use std::sync::Arc;

use crate::ioapic::MsiSink;

/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
const ENTRY_SIZE: u64 = 16;
const CTRL_MASKED: u32 = 1;
/// Message control bit: MSI-X enabled.
pub const MSG_CTRL_ENABLE: u16 = 1 << 15;
/// Message control bit: all vectors masked.
pub const MSG_CTRL_FUNCTION_MASK: u16 = 1 << 14;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiSink>,
}

impl Msix {
    /// `count` vectors (all masked, as after reset), delivered through `sink`.
    pub fn new(count: u16, sink: Arc<dyn MsiSink>) -> Self {
        let count = count.max(1) as usize;
        Msix {
            entries: vec![
                Entry {
                    control: CTRL_MASKED,
                    ..Default::default()
                };
                count
            ],
            pending: vec![0; count.div_ceil(64)],
            enabled: false,
            function_masked: false,
            sink,
        }
    }

    /// Number of vectors.
    pub fn count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Size of the vector table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the pending-bit array in bytes.
    pub fn pba_size(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// The capability's bytes (id, next, message control, table and PBA locations), with
    /// the table at `table_offset` and the PBA at `pba_offset` of BAR `bar`.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> ([u8; 12], [u8; 12]) {
        let ctrl = self.count() - 1;
        let mut bytes = [0u8; 12];
        bytes[0] = CAP_ID_MSIX;
        bytes[2..4].copy_from_slice(&ctrl.to_le_bytes());
        bytes[4..8].copy_from_slice(&(table_offset | bar as u32).to_le_bytes());
        bytes[8..12].copy_from_slice(&(pba_offset | bar as u32).to_le_bytes());
        // Only the enable and function-mask bits of message control are writable.
        let mut writable = [0u8; 12];
        writable[3] = 0xc0;
        (bytes, writable)
    }

    /// Applies a write of the message control word's upper byte (enable, function mask).
    pub fn set_control(&mut self, control: u16) {
        let was_masked = !self.enabled || self.function_masked;
        self.enabled = control & MSG_CTRL_ENABLE != 0;
        self.function_masked = control & MSG_CTRL_FUNCTION_MASK != 0;
        if was_masked && self.enabled && !self.function_masked {
            for v in 0..self.entries.len() {
                self.deliver_if_pending(v);
            }
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reads the vector table.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let (index, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(index) else {
            return;
        };
        let words = [e.address_lo, e.address_hi, e.data, e.control];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let end = (start + data.len()).min(16);
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    /// Writes the vector table; unmasking a vector with a pending message delivers it.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (index, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get_mut(index) else {
            return;
        };
        let mut bytes = [0u8; 16];
        let words = [e.address_lo, e.address_hi, e.data, e.control];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = field as usize;
        let end = (start + data.len()).min(16);
        bytes[start..end].copy_from_slice(&data[..end - start]);
        let word =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        *e = Entry {
            address_lo: word(0),
            address_hi: word(4),
            data: word(8),
            control: word(12) & CTRL_MASKED,
        };
        self.deliver_if_pending(index);
    }

    /// Reads the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut bytes = Vec::with_capacity(self.pending.len() * 8);
        for q in &self.pending {
            bytes.extend_from_slice(&q.to_le_bytes());
        }
        let start = offset as usize;
        if start >= bytes.len() {
            return;
        }
        let end = (start + data.len()).min(bytes.len());
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    fn masked(&self, vector: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[vector].control & CTRL_MASKED != 0
    }

    fn send(&self, vector: usize) {
        let e = self.entries[vector];
        let address = (e.address_hi as u64) << 32 | e.address_lo as u64;
        if let Err(err) = self.sink.send_msi(address, e.data) {
            log::warn!("MSI-X vector {vector}: cannot deliver: {err}");
        }
    }

    fn deliver_if_pending(&mut self, vector: usize) {
        let (word, bit) = (vector / 64, 1u64 << (vector % 64));
        if self.pending[word] & bit != 0 && !self.masked(vector) {
            self.pending[word] &= !bit;
            self.send(vector);
        }
    }

    /// Signals `vector`: sent now, or marked pending while masked. Out-of-range vectors
    /// (e.g. VIRTIO_MSI_NO_VECTOR) are dropped.
    pub fn trigger(&mut self, vector: u16) {
        let vector = vector as usize;
        if vector >= self.entries.len() {
            return;
        }
        if self.masked(vector) {
            self.pending[vector / 64] |= 1 << (vector % 64);
        } else {
            self.send(vector);
        }
    }

    /// Back to the reset state: disabled, every vector masked, nothing pending.
    pub fn reset(&mut self) {
        let n = self.entries.len();
        *self = Msix::new(n as u16, self.sink.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::MsiRecorder as Recorder;

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&data.to_le_bytes());
        bytes[12] = masked as u8;
        m.write_table(v * 16, &bytes);
    }

    #[test]
    fn delivers_programmed_vectors_only_when_enabled_and_unmasked() {
        let rec = Arc::new(Recorder::default());
        let mut m = Msix::new(3, rec.clone());
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        m.trigger(1);
        assert!(rec.0.lock().unwrap().is_empty(), "MSI-X disabled: pending");
        m.set_control(MSG_CTRL_ENABLE);
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[(0xfee0_0000, 0x41)]);
        m.trigger(1);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        m.trigger(7);
        m.trigger(0xffff);
        assert_eq!(rec.0.lock().unwrap().len(), 2, "unknown vectors dropped");
    }

    #[test]
    fn masked_vectors_set_pending_bits_and_fire_on_unmask() {
        let rec = Arc::new(Recorder::default());
        let mut m = Msix::new(2, rec.clone());
        m.set_control(MSG_CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_1000, 0x30, true);
        m.trigger(0);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert!(rec.0.lock().unwrap().is_empty());
        program(&mut m, 0, 0xfee0_1000, 0x30, false);
        assert_eq!(rec.0.lock().unwrap().as_slice(), &[(0xfee0_1000, 0x30)]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // Function mask holds everything.
        m.set_control(MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK);
        m.trigger(0);
        assert_eq!(rec.0.lock().unwrap().len(), 1);
        m.set_control(MSG_CTRL_ENABLE);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
    }

    #[test]
    fn table_reads_back_and_reset_masks_all() {
        let rec = Arc::new(Recorder::default());
        let mut m = Msix::new(2, rec);
        program(&mut m, 1, 0x1234_5678_9abc_def0, 0x55, false);
        let mut b = [0u8; 4];
        m.read_table(16 + 8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x55);
        m.read_table(16 + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
        m.read_table(999 * 16, &mut b);
        assert_eq!(b, [0; 4]);
        m.reset();
        m.read_table(16 + 12, &mut b);
        assert_eq!(b[0] & 1, 1);
        assert!(!m.enabled());
        let (cap, w) = m.capability(0, 0x4000, 0x6000);
        assert_eq!(cap[0], CAP_ID_MSIX);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 1);
        assert_eq!(u32::from_le_bytes([cap[4], cap[5], cap[6], cap[7]]), 0x4000);
        assert_eq!(w[3], 0xc0);
    }
}
