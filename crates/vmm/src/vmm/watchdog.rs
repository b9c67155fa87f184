//! The VMM's side of the watchdog (`--watchdog`): it keeps the timer the guest pets through
//! the IB700's ports (`devices::watchdog`), and resets a guest that stopped petting it.

use std::os::fd::AsRawFd;
use std::time::Instant;

use log::warn;

use super::{Token, Vmm};
use crate::vm::VmState;

impl Vmm {
    /// Starts watching the VM's watchdog, if it has one.
    pub(super) fn watch_watchdog(&mut self) {
        let Some(w) = self
            .vm
            .as_ref()
            .and_then(|vm| vm.devices().watchdog.as_ref())
        else {
            return;
        };
        let (pet, timer) = (w.pet_evt.as_raw_fd(), w.timer_fd());
        let _ = self.watch(pet, Token::WatchdogPet);
        let _ = self.watch(timer, Token::WatchdogTimer);
    }

    /// The guest started, petted or stopped the watchdog: the timer follows its deadline.
    pub(super) fn on_watchdog_pet(&mut self) {
        let Some(w) = self
            .vm
            .as_ref()
            .and_then(|vm| vm.devices().watchdog.as_ref())
        else {
            return;
        };
        let _ = w.pet_evt.read();
        w.arm();
    }

    /// The timer fired: a guest past its deadline is reset.
    pub(super) fn on_watchdog_timer(&mut self) {
        let Some(vm) = self.vm.as_ref() else {
            return;
        };
        let Some(w) = vm.devices().watchdog.as_ref() else {
            return;
        };
        w.consume_timer();
        if vm.state() != VmState::Running || !w.state.expired(Instant::now()) {
            // Petted meanwhile (or not running): wait for the deadline there is now.
            w.arm();
            return;
        }
        warn!("watchdog: the guest stopped petting it: resetting the VM");
        w.state.stop();
        crate::events::emit("watchdog", "expired");
        let _ = self.events.reset.write(1);
    }
}
