//! `vm.info`: the VM's configuration and state, its device tree (each PCI device's address
//! and resources), and the sandbox it runs in.

use serde_json::json;

use super::Vmm;

impl Vmm {
    pub(super) fn info(&self) -> serde_json::Value {
        match &self.vm {
            Some(vm) => {
                let confinement = sandbox::current();
                let mut landlock = confinement.as_ref().map_or(json!({}), |r| json!(r));
                landlock["requested"] = json!(vm.config().landlock_enable);
                landlock["confined"] = json!(confinement.is_some());
                if confinement.is_some() {
                    // What is held now, hot-plugged devices included.
                    let mut held = sandbox::Policy::from_config(vm.config()).held;
                    held.extend(vm.came_from().cloned());
                    landlock["held"] = json!(held);
                }
                let devices: serde_json::Map<String, serde_json::Value> = vm
                    .devices()
                    .pci
                    .entries()
                    .iter()
                    .map(|e| {
                        // As Cloud Hypervisor reports them: where the VMM placed the BAR.
                        let (base, size) = e.bar0();
                        let mut resources =
                            vec![json!({"MmioAddressRange": {"base": base, "size": size}})];
                        if let Some((base, size)) = e.device_memory() {
                            resources
                                .push(json!({"MmioAddressRange": {"base": base, "size": size}}));
                        }
                        let node = json!({
                            "id": e.id,
                            "resources": resources,
                            "children": [],
                            "pci_bdf": e.bdf(),
                        });
                        (e.id.clone(), node)
                    })
                    .collect();
                json!({
                    "sandbox": {
                        "seccomp": sandbox::lockdown::seccomp_mode(),
                        "threads": sandbox::lockdown::threads(),
                    },
                    "config": vm.config(),
                    "state": vm.state(),
                    "memory_actual_size": vm.memory_size(),
                    "device_tree": devices,
                    "landlock": landlock,
                })
            }
            None => json!({}),
        }
    }
}
