//! The balloon driven through its queues as a driver would, over real anonymous memory.

use super::*;
use crate::virtio::test_driver::{Driver, OUTSIDE, QSIZE, R, W};

type Harness = Driver<Balloon, ()>;

fn harness(options: BalloonOptions) -> Harness {
    let queues = if options.free_page_reporting { 3 } else { 2 };
    let mut h = Driver::for_device(Balloon::new(options), (), |f| f);
    h.check_kicks = true;
    h.start(&vec![QSIZE; queues], None);
    h
}

/// A buffer holding the frame numbers `pfns`.
fn frames(h: &mut Harness, pfns: &[u32]) -> (u64, u32) {
    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
    (h.data(&bytes), bytes.len() as u32)
}

#[test]
fn the_target_is_in_the_config_and_the_driver_writes_actual() {
    let mut h = harness(BalloonOptions {
        size: 8 << 20,
        ..BalloonOptions::default()
    });
    assert_eq!(h.dev.target_pages(), 2048);
    h.dev.write_config(4, &100u32.to_le_bytes());
    assert_eq!(h.dev.actual_pages(), 100);
    // num_pages is the device's: a driver write there is ignored.
    h.dev.write_config(0, &5u32.to_le_bytes());
    assert_eq!(h.dev.target_pages(), 2048);
    h.dev.resize(16 << 20).unwrap();
    assert_eq!(h.dev.target_pages(), 4096);
    assert!(h.irq.causes().contains(&InterruptCause::Config));
    assert_eq!(h.dev.counters()["target_pages"], 4096);
    assert_eq!(h.dev.counters()["actual_pages"], 100);
}

#[test]
fn inflated_pages_go_back_to_the_host_and_read_as_zeros() {
    let mut h = harness(BalloonOptions::default());
    // Two pages the guest fills, then gives up.
    let page = h.alloc(3 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    h.mem
        .write_slice(&[0xab; 8192], GuestAddress(page))
        .unwrap();
    let pfn = (page / PAGE_SIZE) as u32;
    let (buf, len) = frames(&mut h, &[pfn, pfn + 1]);
    h.publish_chain(0, &[(buf, len, R)]);
    h.kick(0);
    assert_eq!(h.used_idx(0), 1);
    assert_eq!(
        h.read_guest(page, 8192),
        vec![0; 8192],
        "released memory reads as zeros"
    );
    assert_eq!(h.dev.counters()["inflated_pages"], 2);
    assert_eq!(h.dev.counters()["released_bytes"], 8192);
    // Deflating takes them back: counted, nothing released.
    let (buf, len) = frames(&mut h, &[pfn, pfn + 1]);
    h.publish_chain(1, &[(buf, len, R)]);
    h.kick(1);
    assert_eq!(h.used_idx(1), 1);
    assert_eq!(h.dev.counters()["deflated_pages"], 2);
    assert_eq!(h.dev.counters()["released_bytes"], 8192);
}

#[test]
fn hostile_chains_are_returned_and_touch_nothing() {
    let mut h = harness(BalloonOptions::default());
    let page = h.alloc(2 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    h.mem
        .write_slice(&[0x5a; 4096], GuestAddress(page))
        .unwrap();
    let pfn = (page / PAGE_SIZE) as u32;
    // A frame outside guest memory next to a real one: nothing is released.
    let outside = (OUTSIDE / PAGE_SIZE) as u32;
    let (buf, len) = frames(&mut h, &[pfn, outside]);
    h.publish_chain(0, &[(buf, len, R)]);
    // Frame numbers that are not whole u32s, and a device-writable buffer.
    let (buf, _) = frames(&mut h, &[pfn]);
    h.publish_chain(0, &[(buf, 3, R)]);
    h.publish_chain(0, &[(buf, 4, W)]);
    h.kick(0);
    assert_eq!(h.used_idx(0), 3, "every chain goes back");
    assert_eq!(
        h.read_guest(page, 4096),
        vec![0x5a; 4096],
        "nothing was released"
    );
    assert_eq!(h.dev.counters()["errors"], 3);
    assert_eq!(h.dev.counters()["inflated_pages"], 0);
}

#[test]
fn reported_free_pages_are_released_and_returned() {
    let mut h = harness(BalloonOptions {
        free_page_reporting: true,
        ..BalloonOptions::default()
    });
    assert!(h.dev.features() & F_PAGE_REPORTING != 0);
    let page = h.alloc(5 * PAGE_SIZE).next_multiple_of(PAGE_SIZE);
    h.mem
        .write_slice(&[0x11; 16384], GuestAddress(page))
        .unwrap();
    h.publish_chain(2, &[(page, 16384, W)]);
    // Not whole pages: refused, untouched.
    h.publish_chain(2, &[(page + 1, 4096, W)]);
    h.kick(2);
    assert_eq!(h.used_idx(2), 2);
    assert_eq!(h.read_guest(page, 16384), vec![0; 16384]);
    assert_eq!(h.dev.counters()["reported_pages"], 4);
    assert_eq!(h.dev.counters()["errors"], 1);
}
