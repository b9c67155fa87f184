//! Stand-ins for the VMM that unit tests of several devices share.

use std::sync::Mutex;

use crate::ioapic::MsiSink;

/// Records every MSI sent, in order, instead of delivering it.
#[derive(Default)]
pub struct MsiRecorder(pub Mutex<Vec<(u64, u32)>>);

impl MsiSink for MsiRecorder {
    fn send_msi(&self, address: u64, data: u32) -> std::io::Result<()> {
        self.0.lock().unwrap().push((address, data));
        Ok(())
    }
}
