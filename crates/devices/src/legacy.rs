//! The legacy controls through which a guest resets or powers off the machine.
//!
//! - The i8042 keyboard controller: writing command `0xfe` to port 0x64 pulses the CPU reset
//!   line. Linux uses it as a reboot method, and so do our test guests.
//! - The ACPI sleep-control register at port 0x600 (as in Cloud Hypervisor): writing
//!   `SLP_TYP=5 | SLP_EN` (0x34) enters S5, which is power-off; writing 1 is the FADT reset
//!   value.
//!
//! Each raises a request on an eventfd; the VMM decides what the request means
//! (reboot, exit, or keep running with `--no-shutdown`).

use log::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The i8042 range as Palisade maps it: ports 0x61 to 0x64.
pub const I8042_BASE: u64 = 0x61;
/// Length of the i8042 range.
pub const I8042_LEN: u64 = 4;
/// Port of the ACPI sleep-control register.
pub const ACPI_PM_BASE: u64 = 0x600;
/// Length of the ACPI power-management range.
pub const ACPI_PM_LEN: u64 = 8;

/// Value written to the sleep-control register to enter S5: SLP_TYP=5 (bits 2-4), SLP_EN (bit 5).
pub const S5_SLEEP_VALUE: u8 = (5 << 2) | (1 << 5);
/// Value written to the sleep-control register (the FADT reset register) to reset.
pub const ACPI_RESET_VALUE: u8 = 1;

const I8042_CMD_RESET_CPU: u8 = 0xfe;
// Offset of port 0x64 (command/status) inside the range starting at 0x61.
const I8042_COMMAND_OFFSET: u64 = 3;

/// Writes to an eventfd, logging (not failing) if the counter cannot take it: the only
/// possible error is an overflow after 2^64-2 unconsumed requests.
fn raise(evt: &EventFd, what: &str) {
    if let Err(e) = evt.write(1) {
        warn!("could not signal {what}: {e}");
    }
}

/// The reset line of the i8042 keyboard controller.
pub struct I8042 {
    reset_evt: EventFd,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest resets the CPU.
    pub fn new(reset_evt: EventFd) -> Self {
        I8042 { reset_evt }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, so drivers never wait on us.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_OFFSET && data.first() == Some(&I8042_CMD_RESET_CPU) {
            raise(&self.reset_evt, "i8042 reset");
        }
    }
}

/// The ACPI sleep-control (and reset) register.
pub struct AcpiPowerControl {
    reset_evt: EventFd,
    poweroff_evt: EventFd,
}

impl AcpiPowerControl {
    /// A register that signals `poweroff_evt` on S5 and `reset_evt` on the reset value.
    pub fn new(reset_evt: EventFd, poweroff_evt: EventFd) -> Self {
        AcpiPowerControl {
            reset_evt,
            poweroff_evt,
        }
    }
}

impl BusDevice for AcpiPowerControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 {
            return;
        }
        match data.first() {
            Some(&S5_SLEEP_VALUE) => raise(&self.poweroff_evt, "ACPI power-off"),
            Some(&ACPI_RESET_VALUE) => raise(&self.reset_evt, "ACPI reset"),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap()
    }

    fn fired(e: &EventFd) -> bool {
        e.read().is_ok()
    }

    #[test]
    fn i8042_resets_only_on_command_fe_at_port_64() {
        let reset = evt();
        let mut dev = I8042::new(reset.try_clone().unwrap());
        dev.write(I8042_COMMAND_OFFSET, &[0xd1]);
        dev.write(0, &[0xfe]);
        assert!(!fired(&reset));
        dev.write(I8042_COMMAND_OFFSET, &[0xfe]);
        assert!(fired(&reset));
        let mut status = [0xffu8];
        dev.read(I8042_COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }

    #[test]
    fn acpi_register_distinguishes_s5_and_reset() {
        let (reset, off) = (evt(), evt());
        let mut dev = AcpiPowerControl::new(reset.try_clone().unwrap(), off.try_clone().unwrap());
        dev.write(0, &[5 << 2]); // SLP_TYP=5 without SLP_EN: not a request.
        dev.write(1, &[S5_SLEEP_VALUE]);
        assert!(!fired(&off) && !fired(&reset));
        dev.write(0, &[S5_SLEEP_VALUE]);
        assert!(fired(&off) && !fired(&reset));
        dev.write(0, &[ACPI_RESET_VALUE]);
        assert!(fired(&reset) && !fired(&off));
    }
}
