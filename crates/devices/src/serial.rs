//! The 16550A UART at 0x3f8 (COM1), on top of `vm-superio`'s register model.
//!
//! Output goes to any writer (terminal, file, pty, nowhere). Input is pushed by the VMM with
//! [`SerialPort::enqueue_input`]; when the guest drains the receive FIFO the port signals
//! `input_drained` so the VMM can start reading its input source again.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::debug;
use vm_superio::serial::SerialEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::ioapic::InterruptLine;

/// Base port of COM1.
pub const COM1_BASE: u64 = 0x3f8;
/// Number of ports of a 16550.
pub const COM1_LEN: u64 = 8;
/// The ISA interrupt line of COM1.
pub const COM1_IRQ: u32 = 4;

/// Bytes the receive FIFO holds (vm-superio's).
const SERIAL_FIFO_SIZE: usize = 64;

/// Raises the UART's interrupt line.
pub struct IrqTrigger(Arc<dyn InterruptLine>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger();
        Ok(())
    }
}

/// What went through a port, for `vm.counters`.
#[derive(Debug, Default)]
pub struct SerialCounters {
    /// Bytes the guest sent.
    pub tx_bytes: AtomicU64,
    /// Bytes the guest sent that could not be written out.
    pub tx_lost_bytes: AtomicU64,
    /// Bytes the guest read.
    pub rx_bytes: AtomicU64,
}

/// Counts traffic, and tells the VMM that the receive FIFO has room again.
pub struct PortEvents {
    drained: EventFd,
    counters: Arc<SerialCounters>,
}

impl SerialEvents for PortEvents {
    fn buffer_read(&self) {
        self.counters.rx_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn out_byte(&self) {
        self.counters.tx_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn tx_lost_byte(&self) {
        self.counters.tx_lost_bytes.fetch_add(1, Ordering::Relaxed);
    }
    fn in_buffer_empty(&self) {
        // Losing this wake-up only delays input until the next byte arrives.
        let _ = self.drained.write(1);
    }
}

/// What a snapshot keeps of a UART: its nine registers (divisor low and high, IER, IIR,
/// LCR, LSR, MCR, MSR, scratch) and the bytes waiting in its receive FIFO.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialPortState {
    /// The registers, in the order above.
    pub registers: [u8; 9],
    /// Received bytes the guest has not read.
    pub in_buffer: Vec<u8>,
}

type Uart = Serial<IrqTrigger, PortEvents, Box<dyn Write + Send>>;

/// A COM port.
pub struct SerialPort {
    uart: Uart,
    irq: Arc<dyn InterruptLine>,
    input_drained: EventFd,
    counters: Arc<SerialCounters>,
}

impl SerialPort {
    /// A UART that raises `irq`, signals `input_drained` when its FIFO empties, and writes
    /// what the guest sends to `out`.
    pub fn new(
        irq: Arc<dyn InterruptLine>,
        input_drained: EventFd,
        out: Box<dyn Write + Send>,
    ) -> io::Result<Self> {
        let counters = Arc::new(SerialCounters::default());
        let uart = Self::uart(&irq, &input_drained, &counters, out)?;
        Ok(SerialPort {
            uart,
            irq,
            input_drained,
            counters,
        })
    }

    fn uart(
        irq: &Arc<dyn InterruptLine>,
        drained: &EventFd,
        counters: &Arc<SerialCounters>,
        out: Box<dyn Write + Send>,
    ) -> io::Result<Uart> {
        Ok(Serial::with_events(
            IrqTrigger(irq.clone()),
            PortEvents {
                drained: drained.try_clone()?,
                counters: counters.clone(),
            },
            out,
        ))
    }

    /// The port's traffic counters (kept across resets).
    pub fn counters(&self) -> Arc<SerialCounters> {
        self.counters.clone()
    }

    /// Queues bytes for the guest to read; returns how many fitted in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        if self.uart.fifo_capacity() == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(bytes) {
            Ok(n) => n,
            Err(e) => {
                debug!("serial input: {e:?}");
                0
            }
        }
    }

    /// Whether the receive FIFO can take more input.
    pub fn wants_input(&self) -> bool {
        self.uart.fifo_capacity() > 0
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialPortState {
        let s = self.uart.state();
        SerialPortState {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Takes the registers and FIFO of `state` (a snapshot's), keeping the output and
    /// interrupt; refused, changing nothing, when the FIFO holds more than a 16550's.
    pub fn restore(&mut self, state: &SerialPortState) -> io::Result<()> {
        if state.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "serial port state holds {} received bytes; a 16550 holds {SERIAL_FIFO_SIZE}",
                    state.in_buffer.len()
                ),
            ));
        }
        let [baud_divisor_low, baud_divisor_high, interrupt_enable, interrupt_identification, line_control, line_status, modem_control, modem_status, scratch] =
            state.registers;
        let registers = vm_superio::serial::SerialState {
            baud_divisor_low,
            baud_divisor_high,
            interrupt_enable,
            interrupt_identification,
            line_control,
            line_status,
            modem_control,
            modem_status,
            scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let events = PortEvents {
            drained: self.input_drained.try_clone()?,
            counters: self.counters.clone(),
        };
        let out = std::mem::replace(self.uart.writer_mut(), Box::new(io::sink()));
        // The FIFO size was checked above and raising the interrupt cannot fail, so the
        // output is not lost here.
        self.uart = Serial::from_state(&registers, IrqTrigger(self.irq.clone()), events, out)
            .map_err(|e| io::Error::other(format!("serial port state: {e:?}")))?;
        Ok(())
    }

    /// Returns the UART to its power-on state, keeping its output and interrupt.
    pub fn reset(&mut self) -> io::Result<()> {
        let out = std::mem::replace(self.uart.writer_mut(), Box::new(io::sink()));
        self.uart = Self::uart(&self.irq, &self.input_drained, &self.counters, out)?;
        Ok(())
    }
}

impl BusDevice for SerialPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // A UART has byte-wide registers; wider accesses read the first one.
        data.fill(0);
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(offset, value) {
                // The guest cannot be told; the byte is lost (e.g. the reader went away).
                debug!("serial output: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl InterruptLine for Counter {
        fn trigger(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const LSR: u64 = 5;

    fn port() -> (SerialPort, Captured, Arc<Counter>, EventFd) {
        let out = Captured::default();
        let irq = Arc::new(Counter::default());
        let drained = EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
        let port = SerialPort::new(
            irq.clone(),
            drained.try_clone().unwrap(),
            Box::new(out.clone()),
        )
        .unwrap();
        (port, out, irq, drained)
    }

    #[test]
    fn guest_output_reaches_the_writer() {
        let (mut port, out, _, _) = port();
        for b in b"hi\n" {
            port.write(DATA, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(port.counters().tx_bytes.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn input_is_readable_raises_an_interrupt_and_reports_drain() {
        let (mut port, _, irq, drained) = port();
        port.write(IER, &[1]); // Enable the received-data interrupt.
        let before = irq.0.load(Ordering::SeqCst);
        assert_eq!(port.enqueue_input(b"ok"), 2);
        assert!(irq.0.load(Ordering::SeqCst) > before);
        let mut b = [0u8];
        port.read(LSR, &mut b);
        assert_eq!(b[0] & 1, 1, "data-ready bit");
        port.read(DATA, &mut b);
        assert_eq!(b[0], b'o');
        port.read(DATA, &mut b);
        assert_eq!(b[0], b'k');
        assert!(drained.read().is_ok());
        assert_eq!(port.counters().rx_bytes.load(Ordering::Relaxed), 2);
        port.read(LSR, &mut b);
        assert_eq!(b[0] & 1, 0);
    }

    #[test]
    fn a_full_fifo_takes_no_more_input() {
        let (mut port, _, _, _) = port();
        let big = [b'x'; 1000];
        let taken = port.enqueue_input(&big);
        assert!(taken > 0 && taken < big.len());
        assert!(!port.wants_input());
        assert_eq!(port.enqueue_input(b"y"), 0);
    }

    #[test]
    fn reset_keeps_output_but_clears_registers() {
        let (mut port, out, _, _) = port();
        port.write(7, &[0x5a]); // Scratch register.
        port.enqueue_input(b"zz");
        port.reset().unwrap();
        let mut b = [0u8];
        port.read(7, &mut b);
        assert_eq!(b[0], 0);
        port.read(LSR, &mut b);
        assert_eq!(b[0] & 1, 0);
        port.write(DATA, b"!");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"!");
    }

    #[test]
    fn registers_and_fifo_survive_a_state_round_trip() {
        let (mut a, _, _, _) = port();
        a.write(7, &[0x5a]); // scratch
        a.write(3, &[0x03]); // line control: 8 bits
        assert_eq!(a.enqueue_input(b"hi"), 2);
        let state = a.state();
        let (mut b, out, _, _) = port();
        b.restore(&state).unwrap();
        let mut byte = [0u8];
        b.read(7, &mut byte);
        assert_eq!(byte[0], 0x5a);
        b.read(0, &mut byte);
        assert_eq!(byte[0], b'h', "the FIFO came along");
        // Its output still goes where it went.
        b.write(0, b"x");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"x");
        let mut full = state;
        full.in_buffer = vec![0; 65];
        assert!(b.restore(&full).is_err());
        b.read(7, &mut byte);
        assert_eq!(byte[0], 0x5a, "a refused state changes nothing");
    }
}
