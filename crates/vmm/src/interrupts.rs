//! The VM's MSI routing: KVM GSI routes, one per MSI-X vector of every device, each with
//! the irqfd its vector is raised through.
//!
//! KVM replaces the whole routing table on every `KVM_SET_GSI_ROUTING`, so the table is
//! kept here and written out whole when the guest (re)programs a vector — rare: drivers
//! program their vectors once. A reboot builds a new KVM VM: [`GsiRoutes::attach`] writes
//! the table into it and binds every irqfd again, so device threads keep raising the same
//! eventfds across VMs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use devices::pci::msix::MsiRouting;
use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::pci_devices::CurrentVm;

/// The first GSI given to MSI routes: 0-23 are the I/O APIC's pins.
const FIRST_GSI: u32 = 24;
/// KVM's limit on routes (KVM_MAX_IRQ_ROUTES).
const MAX_ROUTES: u32 = 4096;

struct Route {
    irqfd: Arc<EventFd>,
    message: Option<(u64, u32)>,
}

/// The routing table of one VM, in step with whichever KVM VM runs the guest.
pub struct GsiRoutes {
    vm: Arc<CurrentVm>,
    routes: Mutex<BTreeMap<u32, Route>>,
}

fn os_error(e: kvm_ioctls::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.errno())
}

impl GsiRoutes {
    /// An empty table for the machine `vm` points at.
    pub fn new(vm: Arc<CurrentVm>) -> Self {
        GsiRoutes {
            vm,
            routes: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the table into `vm` and binds every irqfd to it (a new KVM VM).
    pub fn attach(&self, vm: &VmFd) {
        let routes = self.lock();
        if let Err(e) = write_table(vm, &routes) {
            log::warn!("cannot set the interrupt routes of the new VM: {e}");
        }
        for (gsi, route) in routes.iter() {
            if let Err(e) = vm.register_irqfd(&route.irqfd, *gsi) {
                log::warn!("cannot bind the irqfd of GSI {gsi}: {e}");
            }
        }
    }

    /// Unbinds every irqfd from `vm` (a machine going away). KVM's deassign waits until the
    /// binding is gone, where dropping the VM leaves that to a kernel worker: until then an
    /// eventfd cannot be bound to the next VM (`EBUSY`).
    pub fn detach(&self, vm: &VmFd) {
        for (gsi, route) in self.lock().iter() {
            if let Err(e) = vm.unregister_irqfd(&route.irqfd, *gsi) {
                log::debug!("cannot unbind the irqfd of GSI {gsi}: {e}");
            }
        }
    }

    /// Routes in use.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The KVM form of the programmed routes.
fn table(routes: &BTreeMap<u32, Route>) -> std::io::Result<KvmIrqRouting> {
    let mut table = KvmIrqRouting::new(0).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    for (gsi, route) in routes {
        let Some((address, data)) = route.message else {
            continue;
        };
        let mut entry = kvm_irq_routing_entry {
            gsi: *gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        entry.u.msi.address_lo = address as u32;
        entry.u.msi.address_hi = (address >> 32) as u32;
        entry.u.msi.data = data;
        table
            .push(entry)
            .map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    }
    Ok(table)
}

fn write_table(vm: &VmFd, routes: &BTreeMap<u32, Route>) -> std::io::Result<()> {
    vm.set_gsi_routing(&table(routes)?).map_err(os_error)
}

impl MsiRouting for GsiRoutes {
    fn add(&self, irqfd: &Arc<EventFd>) -> std::io::Result<u32> {
        let mut routes = self.lock();
        let gsi = (FIRST_GSI..MAX_ROUTES)
            .find(|g| !routes.contains_key(g))
            .ok_or_else(|| std::io::Error::other("no interrupt route left for another vector"))?;
        if let Some(vm) = self.vm.get() {
            vm.register_irqfd(irqfd, gsi).map_err(os_error)?;
        }
        routes.insert(
            gsi,
            Route {
                irqfd: irqfd.clone(),
                message: None,
            },
        );
        Ok(gsi)
    }

    fn set(&self, gsi: u32, address: u64, data: u32) -> std::io::Result<()> {
        let mut routes = self.lock();
        let route = routes
            .get_mut(&gsi)
            .ok_or_else(|| std::io::Error::other(format!("GSI {gsi} is not reserved")))?;
        let before = route.message.replace((address, data));
        let Some(vm) = self.vm.get() else {
            return Ok(());
        };
        if let Err(e) = write_table(&vm, &routes) {
            if let Some(route) = routes.get_mut(&gsi) {
                route.message = before;
            }
            return Err(e);
        }
        Ok(())
    }

    fn remove(&self, gsi: u32) {
        let mut routes = self.lock();
        let Some(route) = routes.remove(&gsi) else {
            return;
        };
        if let Some(vm) = self.vm.get() {
            let _ = vm.unregister_irqfd(&route.irqfd, gsi);
            if route.message.is_some() {
                if let Err(e) = write_table(&vm, &routes) {
                    log::warn!("cannot drop the interrupt route of GSI {gsi}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(message: Option<(u64, u32)>) -> Route {
        Route {
            irqfd: Arc::new(EventFd::new(0).unwrap()),
            message,
        }
    }

    #[test]
    fn the_kvm_table_holds_the_programmed_routes_only() {
        let mut routes = BTreeMap::new();
        routes.insert(24, route(Some((0xfee0_1000, 0x41))));
        routes.insert(25, route(None));
        routes.insert(26, route(Some((0x1_fee0_0000, 0x42))));
        let t = table(&routes).unwrap();
        let entries = t.as_slice();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].gsi, 24);
        assert_eq!(entries[0].type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: the entries were written as MSI routes.
        let (msi0, msi1) = unsafe { (entries[0].u.msi, entries[1].u.msi) };
        assert_eq!(
            (msi0.address_lo, msi0.address_hi, msi0.data),
            (0xfee0_1000, 0, 0x41)
        );
        assert_eq!(entries[1].gsi, 26);
        assert_eq!(
            (msi1.address_lo, msi1.address_hi, msi1.data),
            (0xfee0_0000, 1, 0x42)
        );
    }

    #[test]
    fn routes_are_reserved_and_freed_without_a_vm() {
        let routes = GsiRoutes::new(Arc::new(CurrentVm::default()));
        let a = routes.add(&Arc::new(EventFd::new(0).unwrap())).unwrap();
        let b = routes.add(&Arc::new(EventFd::new(0).unwrap())).unwrap();
        assert_eq!((a, b), (24, 25));
        routes.set(a, 0xfee0_0000, 0x30).unwrap();
        assert!(routes.set(99, 0, 0).is_err());
        routes.remove(a);
        assert_eq!(routes.len(), 1);
        let c = routes.add(&Arc::new(EventFd::new(0).unwrap())).unwrap();
        assert_eq!(c, 24, "a freed GSI is given again");
    }
}
