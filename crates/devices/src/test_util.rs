//! Stand-ins for the VMM that unit tests of several devices share.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

use crate::ioapic::MsiSink;
use crate::pci::msix::MsiRouting;

/// Records every MSI sent, in order, instead of delivering it.
#[derive(Default)]
pub struct MsiRecorder(pub Mutex<Vec<(u64, u32)>>);

impl MsiSink for MsiRecorder {
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push((address, data));
        Ok(())
    }
}

/// An interrupt routing table that delivers nowhere: it remembers each route's message and
/// reads the irqfds bound to it, so a test sees which messages were raised.
#[derive(Default)]
pub struct RouteRecorder(Mutex<RecordedRoutes>);

/// A route's irqfd and the message programmed into it.
type RecordedRoute = (std::sync::Arc<EventFd>, Option<(u64, u32)>);

#[derive(Default)]
struct RecordedRoutes {
    next: u32,
    routes: std::collections::BTreeMap<u32, RecordedRoute>,
    writes: usize,
}

impl RouteRecorder {
    /// The messages raised since the last call (by route, not in time order).
    pub fn take(&self) -> Vec<(u64, u32)> {
        let state = self.0.lock().unwrap();
        let mut raised = Vec::new();
        for (irqfd, message) in state.routes.values() {
            if let Ok(n) = irqfd.read() {
                let message = message.expect("an interrupt on a route never programmed");
                raised.extend(std::iter::repeat_n(message, n as usize));
            }
        }
        raised
    }

    /// Routes reserved.
    pub fn routes(&self) -> usize {
        self.0.lock().unwrap().routes.len()
    }

    /// Times a route was (re)programmed.
    pub fn route_writes(&self) -> usize {
        self.0.lock().unwrap().writes
    }
}

impl MsiRouting for RouteRecorder {
    fn add(&self, irqfd: &std::sync::Arc<EventFd>) -> std::io::Result<u32> {
        let mut state = self.0.lock().unwrap();
        state.next += 1;
        let route = state.next;
        state.routes.insert(route, (irqfd.clone(), None));
        Ok(route)
    }

    fn set(&self, route: u32, address: u64, data: u32) -> std::io::Result<()> {
        let mut state = self.0.lock().unwrap();
        state.writes += 1;
        match state.routes.get_mut(&route) {
            Some(r) => {
                r.1 = Some((address, data));
                Ok(())
            }
            None => Err(std::io::Error::other("no such route")),
        }
    }

    fn remove(&self, route: u32) {
        self.0.lock().unwrap().routes.remove(&route);
    }
}
