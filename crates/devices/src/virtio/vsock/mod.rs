//! The virtio socket device (virtio 1.2, 5.10) in its hybrid form: guest sockets reach host
//! programs over Unix sockets ([`muxer`]), as in Cloud Hypervisor and Firecracker.
//!
//! Three queues: the guest's receive queue (packets for it), its transmit queue (packets from
//! it) and an event queue (transport resets). The configuration space is the guest's context
//! id. The device runs on its worker thread: the queues' notifications and the host side's
//! one epoll descriptor, nothing else.

pub mod connection;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::queue::{
    clear_notification, guest_error, interrupt_if_needed, next_chain, rearm, return_chain,
    walk_chain, Seg,
};
use super::{
    counters_map, ActivateError, ActiveQueue, VirtioCommon, VirtioDevice, VirtioInterrupt,
    F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1,
};
use muxer::Muxer;
use packet::{capacity, read_chain, write_chain, Header, HDR_LEN};

/// The virtio device type of a socket device.
pub const TYPE_VSOCK: u32 = 19;
/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const RX: u16 = 0;
const TX: u16 = 1;
const EVENT: u16 = 2;
const HOST_TOKEN: u32 = 0;
/// The largest payload of one packet from the guest (Linux sends at most 64 KiB).
const MAX_PAYLOAD: u32 = 64 * 1024;
/// Chains served per call on each queue before the device yields.
const CHAINS_PER_CALL: usize = 256;
/// The event a transport reset is (the only event).
const EVENT_TRANSPORT_RESET: u32 = 0;

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<ActiveQueue>,
    warned: bool,
}

impl Active {
    fn queue(&mut self, index: u16) -> Option<&mut ActiveQueue> {
        self.queues.iter_mut().find(|q| q.index == index)
    }
}

/// What serving one queue of an active device takes.
struct Serving<'a> {
    mem: &'a GuestMemoryMmap,
    interrupt: &'a dyn VirtioInterrupt,
    aq: &'a mut ActiveQueue,
    warned: &'a mut bool,
}

/// Queue `index` of the active device, its notification taken; `None` when the device is
/// not active or the driver did not enable that queue.
fn serving(active: &mut Option<Active>, index: u16) -> Option<Serving<'_>> {
    let Active {
        mem,
        interrupt,
        queues,
        warned,
    } = active.as_mut()?;
    let aq = queues.iter_mut().find(|q| q.index == index)?;
    clear_notification(&aq.notify);
    let interrupt: &Arc<dyn VirtioInterrupt> = interrupt;
    Some(Serving {
        mem,
        interrupt: interrupt.as_ref(),
        aq,
        warned,
    })
}

/// A hybrid vsock device.
pub struct Vsock {
    common: VirtioCommon,
    muxer: Muxer,
    active: Option<Active>,
    descs: Vec<Seg>,
    payload: Vec<u8>,
    tx_waiting: bool,
    reset_pending: bool,
}

impl Vsock {
    /// A device for the guest with context id `cid`, whose host side is `muxer`.
    pub fn new(cid: u64, muxer: Muxer) -> Vsock {
        Vsock {
            common: VirtioCommon::new(
                TYPE_VSOCK,
                "virtio-vsock",
                vec![QUEUE_SIZE; 3],
                F_VERSION_1 | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX,
                cid.to_le_bytes().to_vec(),
            ),
            muxer,
            active: None,
            descs: Vec::new(),
            payload: Vec::new(),
            tx_waiting: false,
            reset_pending: false,
        }
    }

    /// Tells the guest its transport was reset (after a restore): every connection it had
    /// is gone. Delivered when the driver has an event buffer posted.
    pub fn transport_reset(&mut self) {
        self.muxer.reset();
        self.reset_pending = true;
        self.process_event();
    }

    fn process_event(&mut self) {
        let Some(Serving {
            mem,
            interrupt,
            aq,
            warned,
        }) = serving(&mut self.active, EVENT)
        else {
            return;
        };
        if !self.reset_pending {
            return;
        }
        let Some(chain) = aq.queue.pop_descriptor_chain(mem) else {
            return;
        };
        let head = chain.head_index();
        walk_chain(chain, &mut self.descs, 4);
        let len = if write_chain(mem, &self.descs, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()) {
            self.reset_pending = false;
            4
        } else {
            guest_error(
                warned,
                format_args!("virtio-vsock eventq: a buffer too small"),
            );
            0
        };
        let name = format_args!("virtio-vsock eventq");
        let done = return_chain(&mut aq.queue, mem, head, len, name, warned);
        interrupt_if_needed(done, &mut aq.queue, mem, interrupt, EVENT);
    }

    /// Serves the guest's transmissions.
    fn process_tx(&mut self) {
        let Some(Serving {
            mem,
            interrupt,
            aq,
            warned,
        }) = serving(&mut self.active, TX)
        else {
            return;
        };
        let mut completed = false;
        let mut yielded = false;
        let mut served = 0;
        let mut idle_looks = 0;
        loop {
            if self.muxer.backlogged() {
                // The guest is not taking the answers it causes: its transmissions wait
                // until it does (`process_rx` comes back here).
                self.tx_waiting = true;
                break;
            }
            if served == CHAINS_PER_CALL {
                yielded = true;
                break;
            }
            let Some(chain) = next_chain(&mut aq.queue, mem, &mut idle_looks) else {
                break;
            };
            let _ = aq.queue.disable_notification(mem);
            served += 1;
            let head = chain.head_index();
            walk_chain(chain, &mut self.descs, 8);
            let mut raw = [0u8; HDR_LEN];
            if !read_chain(mem, &self.descs, 0, &mut raw) {
                self.muxer.counters.bad_packets += 1;
                guest_error(
                    warned,
                    format_args!("virtio-vsock txq: a packet without a header"),
                );
            } else {
                let h = Header::from_bytes(&raw);
                let room = capacity(&self.descs, false).saturating_sub(HDR_LEN as u64);
                if h.len > MAX_PAYLOAD || u64::from(h.len) > room {
                    self.muxer.counters.bad_packets += 1;
                    guest_error(
                        warned,
                        format_args!(
                            "virtio-vsock txq: a packet claims {} bytes it has not",
                            h.len
                        ),
                    );
                } else {
                    self.payload.resize(h.len as usize, 0);
                    if read_chain(mem, &self.descs, HDR_LEN as u64, &mut self.payload) {
                        self.muxer.from_guest(&h, &self.payload);
                    } else {
                        self.muxer.counters.bad_packets += 1;
                    }
                }
            }
            let name = format_args!("virtio-vsock txq");
            completed |= return_chain(&mut aq.queue, mem, head, 0, name, warned);
        }
        if yielded {
            rearm(&aq.notify, "virtio-vsock", TX);
        }
        interrupt_if_needed(completed, &mut aq.queue, mem, interrupt, TX);
        if self.payload.capacity() > 2 * MAX_PAYLOAD as usize {
            self.payload.shrink_to(MAX_PAYLOAD as usize);
        }
    }

    /// Fills the guest's receive buffers with what the host side has for it.
    fn process_rx(&mut self) {
        let Some(Serving {
            mem,
            interrupt,
            aq,
            warned,
        }) = serving(&mut self.active, RX)
        else {
            return;
        };
        let mut completed = false;
        let mut served = 0;
        let mut idle_looks = 0;
        while self.muxer.has_for_guest() {
            if served == CHAINS_PER_CALL {
                rearm(&aq.notify, "virtio-vsock", RX);
                break;
            }
            // No buffer: back when the driver posts one.
            let Some(chain) = next_chain(&mut aq.queue, mem, &mut idle_looks) else {
                break;
            };
            served += 1;
            let head = chain.head_index();
            walk_chain(chain, &mut self.descs, 8);
            let room = capacity(&self.descs, true);
            if room < HDR_LEN as u64 {
                self.muxer.counters.bad_packets += 1;
                guest_error(
                    warned,
                    format_args!("virtio-vsock rxq: a buffer too small for a header"),
                );
                let name = format_args!("virtio-vsock rxq");
                completed |= return_chain(&mut aq.queue, mem, head, 0, name, warned);
                continue;
            }
            let room = (room - HDR_LEN as u64) as usize;
            let Some(h) = self.muxer.next_for_guest(room, &mut self.payload) else {
                // Nothing after all (a connection turned out to have nothing to read).
                aq.queue.go_to_previous_position();
                break;
            };
            let ok = write_chain(mem, &self.descs, 0, &h.to_bytes())
                && write_chain(mem, &self.descs, HDR_LEN as u64, &self.payload);
            let len = if ok {
                (HDR_LEN + self.payload.len()) as u32
            } else {
                guest_error(
                    warned,
                    format_args!("virtio-vsock rxq: a buffer outside guest memory"),
                );
                0
            };
            let name = format_args!("virtio-vsock rxq");
            completed |= return_chain(&mut aq.queue, mem, head, len, name, warned);
        }
        interrupt_if_needed(completed, &mut aq.queue, mem, interrupt, RX);
        if self.tx_waiting && !self.muxer.backlogged() {
            self.tx_waiting = false;
            if let Some(aq) = self.active.as_mut().and_then(|a| a.queue(TX)) {
                rearm(&aq.notify, "virtio-vsock", TX);
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn common(&self) -> &VirtioCommon {
        &self.common
    }

    fn common_mut(&mut self) -> &mut VirtioCommon {
        &mut self.common
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Result<(), ActivateError> {
        let queues = self.common.enabled_queues(queues, &mem)?;
        for q in &queues {
            rearm(&q.notify, "virtio-vsock", q.index);
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            warned: false,
        });
        Ok(())
    }

    fn set_memory(&mut self, mem: GuestMemoryMmap) {
        if let Some(active) = &mut self.active {
            active.mem = mem;
        }
    }

    fn resumed(&mut self) {
        // The host ends of the guest's connections did not come along.
        self.transport_reset();
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
        self.tx_waiting = false;
        self.reset_pending = false;
        self.common.reset();
    }

    fn process_queue(&mut self, index: u16) {
        match index {
            RX => self.process_rx(),
            TX => {
                self.process_tx();
                self.process_rx();
            }
            EVENT => self.process_event(),
            _ => {}
        }
    }

    fn host_fds(&self) -> Vec<(std::os::fd::RawFd, u32)> {
        vec![(self.muxer.fd(), HOST_TOKEN)]
    }

    fn process_host(&mut self, _token: u32) {
        self.muxer.process_host(true);
        self.process_rx();
    }

    fn process_host_idle(&mut self, _token: u32) {
        // No driver: host clients are turned away rather than left waiting.
        self.muxer.process_host(false);
    }

    fn counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let c = &self.muxer.counters;
        counters_map(&[
            ("host_connections", c.host_connections),
            ("guest_connections", c.guest_connections),
            ("open_connections", self.muxer.connections() as u64),
            ("resets", c.resets),
            ("bad_handshakes", c.bad_handshakes),
            ("bad_packets", c.bad_packets),
            ("tx_bytes", c.tx_bytes),
            ("rx_bytes", c.rx_bytes),
        ])
    }
}
