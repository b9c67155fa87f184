//! Tests of the virtio PCI transport, with a probe device that records what it is told.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use vm_memory::{GuestAddress, GuestMemoryBackend as _};

use crate::test_util::RouteRecorder as Recorder;

/// A device with two queues that records what the transport does to it.
struct Probe {
    acked: Arc<Mutex<u64>>,
    activated: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    common: super::super::VirtioCommon,
    memory_regions: Arc<AtomicUsize>,
    // Each activation's queue positions (next available index, per queue).
    positions: Arc<Mutex<Vec<u16>>>,
}

impl VirtioDevice for Probe {
    fn common(&self) -> &super::super::VirtioCommon {
        &self.common
    }
    fn common_mut(&mut self) -> &mut super::super::VirtioCommon {
        &mut self.common
    }
    fn ack_features(&mut self, features: u64) {
        *self.acked.lock().unwrap() = features;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        le_bytes(0x1122_3344_5566_7788u64 >> (offset * 8), data)
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        self.memory_regions
            .store(mem.num_regions(), Ordering::SeqCst);
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), super::super::ActivateError> {
        assert_eq!(queues.len(), 2);
        *self.positions.lock().unwrap() = queues.iter().map(|q| q.queue.next_avail()).collect();
        self.activated.fetch_add(1, Ordering::SeqCst);
        self.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.interrupt = None;
    }
    fn process_queue(&mut self, index: u16) {
        self.processed.fetch_add(1, Ordering::SeqCst);
        if let Some(i) = &self.interrupt {
            i.trigger(InterruptCause::Queue(index));
        }
    }
}

struct Fixture {
    dev: VirtioPci,
    msis: Arc<Recorder>,
    acked: Arc<Mutex<u64>>,
    activated: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
    memory_regions: Arc<AtomicUsize>,
    positions: Arc<Mutex<Vec<u16>>>,
}

fn fixture() -> Fixture {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let msis = Arc::new(Recorder::default());
    let acked = Arc::new(Mutex::new(0));
    let activated = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let memory_regions = Arc::new(AtomicUsize::new(0));
    let positions = Arc::new(Mutex::new(Vec::new()));
    let probe = Probe {
        positions: positions.clone(),
        acked: acked.clone(),
        activated: activated.clone(),
        processed: processed.clone(),
        memory_regions: memory_regions.clone(),
        interrupt: None,
        common: super::super::VirtioCommon::new(
            super::super::TYPE_BLOCK,
            "probe",
            vec![16, 16],
            F_VERSION_1 | 1,
            Vec::new(),
        ),
    };
    let mut dev = VirtioPci::new(Box::new(probe), mem, msis.clone()).unwrap();
    dev.set_bar_address(0, 0x1_0000_0000);
    Fixture {
        dev,
        msis,
        acked,
        activated,
        processed,
        memory_regions,
        positions,
    }
}

#[test]
fn grown_memory_reaches_the_device() {
    let mut f = fixture();
    let grown = f
        .dev
        .mem
        .insert_region(Arc::new(
            vm_memory::GuestRegionMmap::from_range(GuestAddress(1 << 32), 1 << 20, None).unwrap(),
        ))
        .unwrap();
    f.dev.set_memory(grown);
    assert_eq!(f.memory_regions.load(Ordering::SeqCst), 2);
    assert_eq!(f.dev.mem.num_regions(), 2, "and the next activation");
}

fn w(dev: &mut VirtioPci, offset: u64, value: u64, len: usize) {
    dev.bar_write(0, offset, &value.to_le_bytes()[..len]);
}

fn r(dev: &mut VirtioPci, offset: u64, len: usize) -> u64 {
    let mut b = vec![0u8; len];
    dev.bar_read(0, offset, &mut b);
    from_le(&b)
}

/// Follows the capability list and returns (cfg_type, offset) of each virtio cap.
fn virtio_caps(dev: &mut VirtioPci) -> Vec<(u8, u32)> {
    let mut caps = Vec::new();
    let mut ptr = (dev.config_read(13) & 0xff) as usize;
    let byte = |dev: &mut VirtioPci, o: usize| (dev.config_read(o / 4) >> ((o % 4) * 8)) as u8;
    while ptr != 0 {
        if byte(dev, ptr) == CAP_VENDOR {
            let off = dev.config_read((ptr + 8) / 4);
            caps.push((byte(dev, ptr + 3), off));
        }
        ptr = byte(dev, ptr + 1) as usize;
    }
    caps
}

fn drive_to_ok(f: &mut Fixture) {
    let dev = &mut f.dev;
    w(dev, 0x14, status::ACKNOWLEDGE as u64, 1);
    w(dev, 0x14, (status::ACKNOWLEDGE | status::DRIVER) as u64, 1);
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, 1, 4);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, 1, 4); // VERSION_1
    w(
        dev,
        0x14,
        (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK) as u64,
        1,
    );
    assert_ne!(r(dev, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    for q in 0..2u64 {
        w(dev, 0x16, q, 2);
        w(dev, 0x18, 8, 2);
        w(dev, 0x1a, q, 2);
        w(dev, 0x20, 0x1000 + q * 0x1000, 8);
        w(dev, 0x28, 0x1100 + q * 0x1000, 8);
        w(dev, 0x30, 0x1200 + q * 0x1000, 8);
        w(dev, 0x1c, 1, 2);
    }
    w(
        dev,
        0x14,
        (status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK) as u64,
        1,
    );
}

/// Points MSI-X vector 1 at vector 0x45 of APIC 0 and writes `control` into the capability's
/// message control word; the table entry written.
fn program_vector_1(dev: &mut VirtioPci, control: u16) -> [u8; 16] {
    let mut entry = [0u8; 16];
    entry[0..8].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
    entry[8..12].copy_from_slice(&0x45u32.to_le_bytes());
    dev.bar_write(0, MSIX_TABLE_OFFSET + 16, &entry);
    let ctrl = dev.msix_control_offset();
    dev.config_write(ctrl / 4, ctrl % 4, &control.to_le_bytes());
    entry
}

#[test]
fn identity_and_capabilities() {
    let mut f = fixture();
    assert_eq!(f.dev.config_read(0), 0x1042_1af4);
    assert_eq!(f.dev.config_read(2) >> 24, 0x01);
    let caps = virtio_caps(&mut f.dev);
    let types: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(
        types,
        vec![CFG_COMMON, CFG_ISR, CFG_DEVICE, CFG_NOTIFY, CFG_PCI]
    );
    assert_eq!(caps[3].1 as u64, NOTIFY_OFFSET);
    assert_eq!(r(&mut f.dev, 0x12, 2), 2, "num_queues");
    assert_eq!(r(&mut f.dev, DEVICE_OFFSET, 4), 0x5566_7788);
    assert_eq!(f.dev.ioeventfds().len(), 2);
    assert_eq!(f.dev.ioeventfds()[1].1, NOTIFY_OFFSET + 4);
}

#[test]
fn negotiation_activation_notification_and_msix() {
    let mut f = fixture();
    drive_to_ok(&mut f);
    assert_eq!(f.activated.load(Ordering::SeqCst), 1);
    assert_eq!(*f.acked.lock().unwrap(), F_VERSION_1 | 1);
    // Program and enable MSI-X vector 1 (queue 1).
    program_vector_1(&mut f.dev, 0x8001);
    // A notification written by the guest without ioeventfd reaches the eventfd.
    w(&mut f.dev, NOTIFY_OFFSET + 4, 1, 2);
    assert_eq!(f.dev.notify_eventfds()[1].read().unwrap(), 1);
    f.dev.process_queue(1);
    assert_eq!(f.processed.load(Ordering::SeqCst), 1);
    assert_eq!(f.msis.take(), vec![(0xfee0_0000, 0x45)]);
    assert_eq!(f.dev.interrupts_delivered(), 1);
    // Queue set-up is frozen while live.
    w(&mut f.dev, 0x16, 0, 2);
    w(&mut f.dev, 0x20, 0xdead_0000, 8);
    assert_eq!(r(&mut f.dev, 0x20, 8), 0x1000);
    // Reset by writing status 0: the device is stopped, state cleared.
    w(&mut f.dev, 0x14, 0, 1);
    assert_eq!(r(&mut f.dev, 0x14, 1), 0);
    assert_eq!(r(&mut f.dev, 0x1a, 2), NO_VECTOR as u64);
    f.dev.process_queue(1);
    assert_eq!(
        f.processed.load(Ordering::SeqCst),
        1,
        "not live after reset"
    );
}

#[test]
fn bad_features_and_bad_queues_are_refused() {
    let mut f = fixture();
    let dev = &mut f.dev;
    w(dev, 0x14, 3, 1);
    // Bit 5 is not offered: FEATURES_OK must not stick.
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, 1 << 5, 4);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, 1, 4);
    w(dev, 0x14, 3 | status::FEATURES_OK as u64, 1);
    assert_eq!(r(dev, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    // Without VERSION_1 either.
    w(dev, 0x14, 0, 1);
    w(dev, 0x14, 3, 1);
    w(dev, 0x08, 0, 4);
    w(dev, 0x0c, 1, 4);
    w(dev, 0x14, 3 | status::FEATURES_OK as u64, 1);
    assert_eq!(r(dev, 0x14, 1) as u8 & status::FEATURES_OK, 0);
    // Invalid queue size and vector are not taken.
    w(dev, 0x16, 0, 2);
    w(dev, 0x18, 12, 2);
    assert_eq!(r(dev, 0x18, 2), 16);
    w(dev, 0x18, 32, 2);
    assert_eq!(r(dev, 0x18, 2), 16);
    w(dev, 0x1a, 9, 2);
    assert_eq!(r(dev, 0x1a, 2), NO_VECTOR as u64);
    // Queues outside guest memory: the device is not activated and asks for a reset.
    let mut g = fixture();
    let dev = &mut g.dev;
    w(dev, 0x14, 3, 1);
    w(dev, 0x08, 1, 4);
    w(dev, 0x0c, 1, 4);
    w(dev, 0x14, 3 | status::FEATURES_OK as u64, 1);
    w(dev, 0x16, 0, 2);
    w(dev, 0x20, 0x7fff_0000_0000, 8);
    w(dev, 0x1c, 1, 2);
    w(
        dev,
        0x14,
        3 | (status::FEATURES_OK | status::DRIVER_OK) as u64,
        1,
    );
    assert_eq!(g.activated.load(Ordering::SeqCst), 0);
    assert_ne!(r(&mut g.dev, 0x14, 1) as u8 & status::DEVICE_NEEDS_RESET, 0);
}

#[test]
fn function_reset_restores_the_bar_and_masks_msix() {
    let mut f = fixture();
    drive_to_ok(&mut f);
    f.dev.config_write(1, 0, &[6, 0]);
    let moves = f.dev.config_write(4, 0, &0xc000_0004u32.to_le_bytes());
    assert_eq!(moves.len(), 1);
    f.dev.reset();
    assert_eq!(f.dev.bars()[0].1.address, 0x1_0000_0000);
    assert_eq!(f.dev.config_read(4) & !0xf, 0);
    assert_eq!(f.dev.config_read(5), 1);
    assert_eq!(r(&mut f.dev, 0x14, 1), 0);
}

#[test]
fn a_fresh_device_takes_a_live_ones_state_and_carries_on_from_the_used_ring() {
    let mut f = fixture();
    drive_to_ok(&mut f);
    let entry = program_vector_1(&mut f.dev, 0x8000);
    let state = f.dev.state();
    assert_eq!(state.queues[1].desc, 0x2000);
    assert_eq!(state.queues[1].vector, 1);
    assert!(state.msix.enabled);
    // A live device takes no state.
    assert!(f.dev.restore(&state).is_err());

    // The restored guest memory says the driver had 5 buffers of queue 1 back.
    let mut g = fixture();
    vm_memory::Bytes::write_obj(&g.dev.mem, 5u16, GuestAddress(0x2200 + 2)).unwrap();
    g.dev.restore(&state).unwrap();
    assert_eq!(g.activated.load(Ordering::SeqCst), 1);
    assert_eq!(*g.positions.lock().unwrap(), vec![0, 5]);
    assert_eq!(*g.acked.lock().unwrap(), F_VERSION_1 | 1);
    assert_eq!(r(&mut g.dev, 0x14, 1), state.status as u64);
    w(&mut g.dev, 0x16, 1, 2);
    assert_eq!(r(&mut g.dev, 0x1a, 2), 1, "queue 1's vector");
    assert_eq!(r(&mut g.dev, 0x20, 8), 0x2000);
    let mut back = [0u8; 16];
    g.dev.bar_read(0, MSIX_TABLE_OFFSET + 16, &mut back);
    assert_eq!(back, entry);
    // Each queue is looked at once, for what the driver made available meanwhile.
    assert_eq!(g.dev.notify_eventfds()[0].read().unwrap(), 1);
    // The interrupt goes out through the restored route.
    g.dev.process_queue(1);
    assert_eq!(g.msis.take(), vec![(0xfee0_0000, 0x45)]);

    // A state that does not fit is refused and changes nothing.
    let mut h = fixture();
    let mut wrong = state.clone();
    wrong.queues.push(wrong.queues[0]);
    assert!(h.dev.restore(&wrong).unwrap_err().contains("queues"));
    let mut wrong = state.clone();
    wrong.queues[0].size = 3;
    assert!(h.dev.restore(&wrong).is_err());
    let mut wrong = state;
    wrong.config_vector = 77;
    assert!(h.dev.restore(&wrong).unwrap_err().contains("vector 77"));
    assert_eq!(r(&mut h.dev, 0x14, 1), 0);
    assert_eq!(h.activated.load(Ordering::SeqCst), 0);
}
