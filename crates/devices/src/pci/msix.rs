//! MSI-X: the vector table and pending-bit array a device exposes in a BAR, and delivery of
//! its vectors through irqfds.
//!
//! Every vector owns an eventfd bound (by the VM's [`MsiRouting`]) to an interrupt route
//! that the table's address and data are written into when the guest unmasks the vector.
//! Raising a vector from a device thread is then one `write` to that eventfd: no lock, no
//! ioctl. Masking is a gate in front of the eventfd ([`MsixVectors::trigger`]): a masked
//! vector sets its pending bit instead, and unmasking delivers it. The table itself (which
//! only vCPUs touch, through the BAR) sits behind the transport's lock as before.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Capability id of MSI-X.
pub const CAP_ID_MSIX: u8 = 0x11;
const ENTRY_SIZE: u64 = 16;
const CTRL_MASKED: u32 = 1;
/// Message control bit: MSI-X enabled.
pub const MSG_CTRL_ENABLE: u16 = 1 << 15;
/// Message control bit: all vectors masked.
pub const MSG_CTRL_FUNCTION_MASK: u16 = 1 << 14;

/// The VM's interrupt routing table, which MSI-X vectors are delivered through.
pub trait MsiRouting: Send + Sync {
    /// Reserves a route and binds `irqfd` to it (now and in every later KVM VM); returns
    /// the route's number.
    fn add(&self, irqfd: &Arc<EventFd>) -> io::Result<u32>;
    /// Points route `route` at the message (`address`, `data`).
    fn set(&self, route: u32, address: u64, data: u32) -> io::Result<()>;
    /// Unbinds the route's irqfd and forgets the route.
    fn remove(&self, route: u32);
}

/// The delivery side of one vector.
struct Gate {
    irqfd: Arc<EventFd>,
    /// Enabled and unmasked (function and vector): writes to the irqfd reach the guest.
    open: AtomicBool,
    pending: AtomicBool,
}

/// The vectors of one function as device threads raise them, without taking a lock.
pub struct MsixVectors {
    gates: Vec<Gate>,
    sent: AtomicU64,
}

impl MsixVectors {
    /// Raises `vector`: delivered now if open, otherwise left pending until the guest
    /// unmasks it. Out-of-range vectors (e.g. VIRTIO_MSI_NO_VECTOR) are dropped.
    pub fn trigger(&self, vector: u16) {
        let Some(gate) = self.gates.get(usize::from(vector)) else {
            return;
        };
        if gate.open.load(Ordering::SeqCst) {
            self.send(gate);
            return;
        }
        gate.pending.store(true, Ordering::SeqCst);
        // The guest may have unmasked it between the two loads: whoever takes the pending
        // bit delivers it, so it is delivered once.
        if gate.open.load(Ordering::SeqCst) && gate.pending.swap(false, Ordering::SeqCst) {
            self.send(gate);
        }
    }

    /// Interrupts delivered to the guest so far.
    pub fn delivered(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    fn send(&self, gate: &Gate) {
        match gate.irqfd.write(1) {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => log::warn!("MSI-X: cannot raise an interrupt: {e}"),
        }
    }

    fn open(&self, vector: usize) {
        let gate = &self.gates[vector];
        gate.open.store(true, Ordering::SeqCst);
        if gate.pending.swap(false, Ordering::SeqCst) {
            self.send(gate);
        }
    }

    fn close(&self, vector: usize) {
        self.gates[vector].open.store(false, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn message(&self) -> (u64, u32) {
        (
            (u64::from(self.address_hi) << 32) | u64::from(self.address_lo),
            self.data,
        )
    }
}

const MASKED_ENTRY: Entry = Entry {
    address_lo: 0,
    address_hi: 0,
    data: 0,
    control: CTRL_MASKED,
};

/// What a snapshot keeps of a function's MSI-X: each vector's table entry (address low,
/// address high, data, control) and pending bit, and the enable and function-mask bits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MsixState {
    /// The vector table.
    pub table: Vec<[u32; 4]>,
    /// Each vector's pending bit.
    pub pending: Vec<bool>,
    /// MSI-X enabled.
    pub enabled: bool,
    /// Every vector masked.
    pub function_masked: bool,
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    /// Each vector's route, and the message last written into it.
    routes: Vec<(u32, Option<(u64, u32)>)>,
    vectors: Arc<MsixVectors>,
    enabled: bool,
    function_masked: bool,
    routing: Arc<dyn MsiRouting>,
}

impl Drop for Msix {
    fn drop(&mut self) {
        for (route, _) in &self.routes {
            self.routing.remove(*route);
        }
    }
}

impl Msix {
    /// `count` vectors (all masked, as after reset), each with a route in `routing`.
    pub fn new(count: u16, routing: Arc<dyn MsiRouting>) -> io::Result<Self> {
        let count = count.max(1) as usize;
        let mut gates = Vec::with_capacity(count);
        let mut routes = Vec::with_capacity(count);
        for _ in 0..count {
            let irqfd = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
            let route = match routing.add(&irqfd) {
                Ok(route) => route,
                Err(e) => {
                    for (r, _) in &routes {
                        routing.remove(*r);
                    }
                    return Err(e);
                }
            };
            routes.push((route, None));
            gates.push(Gate {
                irqfd,
                open: AtomicBool::new(false),
                pending: AtomicBool::new(false),
            });
        }
        Ok(Msix {
            entries: vec![MASKED_ENTRY; count],
            routes,
            vectors: Arc::new(MsixVectors {
                gates,
                sent: AtomicU64::new(0),
            }),
            enabled: false,
            function_masked: false,
            routing,
        })
    }

    /// The vectors, for the device threads that raise them.
    pub fn vectors(&self) -> Arc<MsixVectors> {
        self.vectors.clone()
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
        self.entries.len().div_ceil(64) as u64 * 8
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
        self.enabled = control & MSG_CTRL_ENABLE != 0;
        self.function_masked = control & MSG_CTRL_FUNCTION_MASK != 0;
        for v in 0..self.entries.len() {
            self.update_gate(v);
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
        let bytes = entry_bytes(e);
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
        let mut bytes = entry_bytes(e);
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
        self.update_gate(index);
    }

    /// Reads the pending-bit array.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let mut bytes = vec![0u8; self.pba_size() as usize];
        for (v, gate) in self.vectors.gates.iter().enumerate() {
            if gate.pending.load(Ordering::SeqCst) {
                bytes[v / 8] |= 1 << (v % 8);
            }
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

    /// Opens or closes vector `vector`'s gate as the table and control say, pointing its
    /// route at the table's message first.
    fn update_gate(&mut self, vector: usize) {
        if self.masked(vector) {
            self.vectors.close(vector);
            return;
        }
        let message = self.entries[vector].message();
        let (route, programmed) = &mut self.routes[vector];
        if *programmed != Some(message) {
            if let Err(e) = self.routing.set(*route, message.0, message.1) {
                // Left closed: an interrupt stays pending rather than going astray.
                log::warn!("MSI-X vector {vector}: cannot route it: {e}");
                self.vectors.close(vector);
                return;
            }
            *programmed = Some(message);
        }
        self.vectors.open(vector);
    }

    /// Signals `vector` (see [`MsixVectors::trigger`]).
    pub fn trigger(&self, vector: u16) {
        self.vectors.trigger(vector);
    }

    /// The table, pending bits and control, for a snapshot.
    pub fn state(&self) -> MsixState {
        MsixState {
            table: self
                .entries
                .iter()
                .map(|e| [e.address_lo, e.address_hi, e.data, e.control])
                .collect(),
            pending: self
                .vectors
                .gates
                .iter()
                .map(|g| g.pending.load(Ordering::SeqCst))
                .collect(),
            enabled: self.enabled,
            function_masked: self.function_masked,
        }
    }

    /// Checks that `state` describes this function's vectors.
    pub fn check_state(&self, state: &MsixState) -> Result<(), String> {
        let count = self.entries.len();
        if state.table.len() != count || state.pending.len() != count {
            return Err(format!(
                "MSI-X state has {} vectors and {} pending bits; the device has {count} vectors",
                state.table.len(),
                state.pending.len()
            ));
        }
        Ok(())
    }

    /// Takes the table, pending bits and control of `state` (checked with
    /// [`Msix::check_state`] first), routing each unmasked vector to its message and
    /// delivering what was pending there.
    pub fn restore(&mut self, state: &MsixState) -> Result<(), String> {
        self.check_state(state)?;
        for (v, (e, pending)) in state.table.iter().zip(&state.pending).enumerate() {
            self.entries[v] = Entry {
                address_lo: e[0],
                address_hi: e[1],
                data: e[2],
                control: e[3] & CTRL_MASKED,
            };
            self.vectors.gates[v]
                .pending
                .store(*pending, Ordering::SeqCst);
        }
        self.enabled = state.enabled;
        self.function_masked = state.function_masked;
        for v in 0..self.entries.len() {
            self.update_gate(v);
        }
        Ok(())
    }

    /// Back to the reset state: disabled, every vector masked, nothing pending. The routes
    /// stay reserved.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        for v in 0..self.entries.len() {
            self.entries[v] = MASKED_ENTRY;
            self.vectors.close(v);
            self.vectors.gates[v].pending.store(false, Ordering::SeqCst);
        }
    }
}

fn entry_bytes(e: &Entry) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    for (i, w) in [e.address_lo, e.address_hi, e.data, e.control]
        .iter()
        .enumerate()
    {
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::RouteRecorder;

    fn program(m: &mut Msix, v: u64, addr: u64, data: u32, masked: bool) {
        let mut bytes = [0u8; 16];
        bytes[0..8].copy_from_slice(&addr.to_le_bytes());
        bytes[8..12].copy_from_slice(&data.to_le_bytes());
        bytes[12] = masked as u8;
        m.write_table(v * 16, &bytes);
    }

    fn fixture(count: u16) -> (Arc<RouteRecorder>, Msix) {
        let rec = Arc::new(RouteRecorder::default());
        let m = Msix::new(count, rec.clone()).unwrap();
        (rec, m)
    }

    #[test]
    fn delivers_programmed_vectors_only_when_enabled_and_unmasked() {
        let (rec, mut m) = fixture(3);
        assert_eq!(rec.routes(), 3, "one route per vector");
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        m.trigger(1);
        assert!(rec.take().is_empty(), "MSI-X disabled: pending");
        m.set_control(MSG_CTRL_ENABLE);
        assert_eq!(rec.take(), vec![(0xfee0_0000, 0x41)]);
        m.trigger(1);
        m.trigger(7);
        m.trigger(0xffff);
        assert_eq!(
            rec.take(),
            vec![(0xfee0_0000, 0x41)],
            "unknown vectors dropped"
        );
        assert_eq!(m.vectors().delivered(), 2);
    }

    #[test]
    fn masked_vectors_set_pending_bits_and_fire_on_unmask() {
        let (rec, mut m) = fixture(2);
        m.set_control(MSG_CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_1000, 0x30, true);
        m.vectors().trigger(0);
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 1);
        assert!(rec.take().is_empty());
        program(&mut m, 0, 0xfee0_1000, 0x30, false);
        assert_eq!(rec.take(), vec![(0xfee0_1000, 0x30)]);
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
        // Function mask holds everything.
        m.set_control(MSG_CTRL_ENABLE | MSG_CTRL_FUNCTION_MASK);
        m.trigger(0);
        m.trigger(0);
        assert!(rec.take().is_empty());
        m.set_control(MSG_CTRL_ENABLE);
        assert_eq!(rec.take().len(), 1, "one pending bit, one interrupt");
    }

    #[test]
    fn the_route_follows_the_table_and_is_written_only_when_it_changes() {
        let (rec, mut m) = fixture(1);
        m.set_control(MSG_CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x20, false);
        program(&mut m, 0, 0xfee0_0000, 0x20, true);
        program(&mut m, 0, 0xfee0_0000, 0x20, false);
        assert_eq!(
            rec.route_writes(),
            1,
            "the same message is not routed twice"
        );
        program(&mut m, 0, 0xfee0_0000, 0x20, true);
        program(&mut m, 0, 0xfee0_2000, 0x21, false);
        m.trigger(0);
        assert_eq!(rec.take(), vec![(0xfee0_2000, 0x21)]);
        assert_eq!(rec.route_writes(), 2);
    }

    #[test]
    fn racing_triggers_and_unmasks_lose_nothing() {
        let (rec, mut m) = fixture(1);
        m.set_control(MSG_CTRL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x20, true);
        let vectors = m.vectors();
        let raiser = std::thread::spawn(move || {
            for _ in 0..20_000 {
                vectors.trigger(0);
            }
        });
        for i in 0..20_000 {
            program(&mut m, 0, 0xfee0_0000, 0x20, i % 2 == 0);
        }
        raiser.join().unwrap();
        program(&mut m, 0, 0xfee0_0000, 0x20, false);
        // The last trigger was either delivered or is pending and went out on the final
        // unmask: at least one interrupt, and nothing left pending.
        assert!(!rec.take().is_empty());
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0);
    }

    #[test]
    fn table_reads_back_reset_masks_all_and_drop_frees_the_routes() {
        let (rec, mut m) = fixture(2);
        program(&mut m, 1, 0x1234_5678_9abc_def0, 0x55, false);
        let mut b = [0u8; 4];
        m.read_table(16 + 8, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x55);
        m.read_table(16 + 4, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x1234_5678);
        m.read_table(999 * 16, &mut b);
        assert_eq!(b, [0; 4]);
        m.set_control(MSG_CTRL_ENABLE);
        m.reset();
        m.read_table(16 + 12, &mut b);
        assert_eq!(b[0] & 1, 1);
        assert!(!m.enabled());
        m.trigger(1);
        assert!(rec.take().is_empty(), "masked after reset");
        let (cap, w) = m.capability(0, 0x4000, 0x6000);
        assert_eq!(cap[0], CAP_ID_MSIX);
        assert_eq!(u16::from_le_bytes([cap[2], cap[3]]), 1);
        assert_eq!(u32::from_le_bytes([cap[4], cap[5], cap[6], cap[7]]), 0x4000);
        assert_eq!(w[3], 0xc0);
        drop(m);
        assert_eq!(rec.routes(), 0);
    }
}
