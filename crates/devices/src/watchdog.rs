//! A watchdog a Linux guest has a driver for (`ib700wdt`): the IB700's two I/O ports. A
//! write to port 0x443 (re)starts it with the timeout its value picks (30 - 2 × value
//! seconds, value 0-15); a write to port 0x441 stops it. A guest that stops writing is
//! reset when the time runs out.
//!
//! The device runs on the vCPU that writes its ports, whose filter has no timer calls: it
//! only records the deadline and signals `pet_evt`, and the VMM thread keeps the timer and
//! resets the VM when the deadline passes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The first of the watchdog's ports (stop).
pub const WATCHDOG_BASE: u64 = 0x441;
/// Its ports: 0x441 (stop) to 0x443 (start and pet).
pub const WATCHDOG_LEN: u64 = 3;
const STOP: u64 = 0;
const START: u64 = 2;

/// The deadline the guest set, shared with the VMM thread.
#[derive(Debug, Default)]
pub struct WatchdogState {
    deadline: Mutex<Option<Instant>>,
}

impl WatchdogState {
    /// When the guest must write again, if the watchdog runs.
    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the watchdog ran out at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| now >= d)
    }

    /// What is left until the deadline, if the watchdog runs (a snapshot keeps it).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Runs the watchdog with `left` until its deadline (a restore), or stops it.
    pub fn restore(&self, left: Option<Duration>) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = left.map(|l| Instant::now() + l);
    }

    /// Stops it (VM reset or shutdown).
    pub fn stop(&self) {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The IB700 watchdog's ports.
pub struct Ib700 {
    state: Arc<WatchdogState>,
    pet_evt: EventFd,
}

impl Ib700 {
    /// A stopped watchdog that signals `pet_evt` whenever its deadline changes.
    pub fn new(pet_evt: EventFd) -> Self {
        Ib700 {
            state: Arc::default(),
            pet_evt,
        }
    }

    /// The deadline, for the VMM thread.
    pub fn state(&self) -> Arc<WatchdogState> {
        self.state.clone()
    }

    /// The timeout value `v` picks.
    pub fn timeout(v: u8) -> Duration {
        Duration::from_secs(30 - 2 * u64::from(v.min(15)))
    }
}

impl BusDevice for Ib700 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let deadline = match (offset, data.first()) {
            (START, Some(&v)) => Some(Instant::now() + Self::timeout(v)),
            (STOP, Some(_)) => None,
            _ => return,
        };
        *self
            .state
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = deadline;
        let _ = self.pet_evt.write(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn a_write_starts_or_pets_it_and_the_other_port_stops_it() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut w = Ib700::new(evt.try_clone().unwrap());
        let state = w.state();
        assert_eq!(state.deadline(), None);
        w.write(START, &[13]); // 4 seconds
        let d = state.deadline().unwrap();
        assert!(d > Instant::now() + Duration::from_secs(3));
        assert!(!state.expired(Instant::now()));
        assert!(state.expired(d));
        assert_eq!(evt.read().unwrap(), 1);
        w.write(STOP, &[0]);
        assert_eq!(state.deadline(), None);
        assert!(!state.expired(Instant::now() + Duration::from_secs(60)));
        assert_eq!(Ib700::timeout(0), Duration::from_secs(30));
        assert_eq!(Ib700::timeout(99), Duration::from_secs(0));
        w.write(1, &[5]);
        assert_eq!(state.deadline(), None, "port 0x442 does nothing");
    }

    #[test]
    fn the_time_left_is_kept_and_counts_on_after_a_restore() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut w = Ib700::new(evt.try_clone().unwrap());
        assert_eq!(w.state().remaining(), None);
        w.write(START, &[13]);
        let left = w.state().remaining().unwrap();
        assert!(left > Duration::from_secs(3) && left <= Duration::from_secs(4));
        let other = Ib700::new(evt);
        other.state().restore(Some(left));
        let d = other.state().deadline().unwrap();
        assert!(d > Instant::now() + Duration::from_secs(3));
        other.state().restore(None);
        assert_eq!(other.state().deadline(), None);
    }
}
