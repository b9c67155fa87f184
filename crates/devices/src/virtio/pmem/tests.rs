//! The pmem request queue driven as a driver would, over real memory and real files.

use std::os::fd::{FromRawFd, OwnedFd};

use super::*;
use crate::virtio::test_driver::{Driver, OUTSIDE, QSIZE, R, W};

type Harness = Driver<Pmem, ()>;

fn harness(file: File, discard_writes: bool) -> Harness {
    let mut h = Driver::for_device(Pmem::new(file, 1 << 32, 4 << 20, discard_writes), (), |f| f);
    h.check_kicks = true;
    h.start(&[QSIZE], None);
    h
}

fn temp_file() -> File {
    let path = std::env::temp_dir().join(format!("pmem-dev-{}", std::process::id()));
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

/// A pipe's read end: a descriptor `fsync` refuses (EINVAL).
fn unsyncable() -> File {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two descriptors, which are then owned below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(write);
    read
}

/// Publishes a request of `kind` on queue 0 and returns (status buffer, head).
fn request(h: &mut Harness, kind: u32) -> (u64, u16) {
    let req = h.data(&kind.to_le_bytes());
    let status = h.buf(4, 0xee);
    let head = h.publish_chain(0, &[(req, 4, R), (status, 4, W)]);
    (status, head)
}

fn status_of(h: &Harness, at: u64) -> u32 {
    u32::from_le_bytes(h.read_guest(at, 4).try_into().unwrap())
}

#[test]
fn the_config_space_holds_the_region() {
    let h = harness(temp_file(), false);
    let mut data = [0u8; 16];
    h.dev.read_config(0, &mut data);
    assert_eq!(u64::from_le_bytes(data[..8].try_into().unwrap()), 1 << 32);
    assert_eq!(u64::from_le_bytes(data[8..].try_into().unwrap()), 4 << 20);
    assert_eq!(h.dev.device_type(), TYPE_PMEM);
}

#[test]
fn a_flush_syncs_the_file_and_answers_ok() {
    let mut h = harness(temp_file(), false);
    let (status, head) = request(&mut h, REQ_FLUSH);
    h.kick(0);
    assert_eq!(h.used_idx(0), 1);
    assert_eq!(h.used_len(0, head), 4);
    assert_eq!(status_of(&h, status), RESP_OK);
    assert_eq!(h.dev.counters()["flushes"], 1);
    assert_eq!(h.dev.counters()["flush_errors"], 0);
}

#[test]
fn a_failed_sync_answers_eio_and_discarded_writes_need_none() {
    let mut h = harness(unsyncable(), false);
    let (status, _) = request(&mut h, REQ_FLUSH);
    h.kick(0);
    assert_eq!(status_of(&h, status), RESP_EIO);
    assert_eq!(h.dev.counters()["flush_errors"], 1);
    // With discard_writes nothing is written back: the same descriptor is never synced.
    let mut h = harness(unsyncable(), true);
    let (status, _) = request(&mut h, REQ_FLUSH);
    h.kick(0);
    assert_eq!(status_of(&h, status), RESP_OK);
    assert_eq!(h.dev.counters()["flush_errors"], 0);
}

#[test]
fn hostile_requests_fail_alone() {
    let mut h = harness(temp_file(), false);
    // An unknown request type: EIO, not a flush.
    let (status, _) = request(&mut h, 7);
    // No status buffer at all.
    let req = h.data(&REQ_FLUSH.to_le_bytes());
    let bare = h.publish_chain(0, &[(req, 4, R)]);
    // A request outside guest memory.
    let st = h.buf(4, 0xee);
    let outside = h.publish_chain(0, &[(OUTSIDE, 4, R), (st, 4, W)]);
    // And a good one after them all.
    let (good, _) = request(&mut h, REQ_FLUSH);
    h.kick(0);
    assert_eq!(h.used_idx(0), 4, "every chain goes back");
    assert_eq!(status_of(&h, status), RESP_EIO);
    assert_eq!(h.used_len(0, bare), 0);
    assert_eq!(h.used_len(0, outside), 0);
    assert_eq!(
        status_of(&h, st),
        0xeeeeeeee,
        "nothing written for a bad request"
    );
    assert_eq!(status_of(&h, good), RESP_OK);
    assert_eq!(h.dev.counters()["flushes"], 1);
    assert_eq!(h.dev.counters()["malformed"], 2);
}
