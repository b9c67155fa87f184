//! The VMM's side of pvpanic (`--pvpanic`): a guest that panicked is logged and reported to
//! the event monitor; what happens next (a reboot, a crash kernel, a halt) is the guest's.

use std::os::fd::AsRawFd;

use log::error;

use super::{Token, Vmm};

impl Vmm {
    /// Starts watching the VM's pvpanic device, if it has one.
    pub(super) fn watch_panic(&mut self) {
        let fd = self
            .vm
            .as_ref()
            .and_then(|vm| vm.devices().pvpanic.as_ref())
            .map(|p| p.evt.as_raw_fd());
        if let Some(fd) = fd {
            let _ = self.watch(fd, Token::Panic);
        }
    }

    /// The guest wrote a panic event.
    pub(super) fn on_panic(&mut self) {
        let Some(events) = self.vm.as_ref().and_then(|vm| vm.devices().pvpanic.clone()) else {
            return;
        };
        let (pending, total) = events.take();
        if pending == 0 {
            return;
        }
        let what = match (
            pending & devices::pvpanic::PANICKED != 0,
            pending & devices::pvpanic::CRASH_LOADED != 0,
        ) {
            (true, true) => "panicked, and loads a crash kernel",
            (true, false) => "panicked",
            _ => "panicked and loads a crash kernel",
        };
        error!("pvpanic: the guest {what} (panic events so far: {total})");
        // As Cloud Hypervisor reports it, one event per kind written.
        if pending & devices::pvpanic::PANICKED != 0 {
            crate::events::emit_with("guest", "panic", &[("event", "panic")]);
        }
        if pending & devices::pvpanic::CRASH_LOADED != 0 {
            crate::events::emit_with("guest", "panic", &[("event", "crash_loaded")]);
        }
    }
}
