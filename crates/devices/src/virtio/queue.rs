//! Queue handling shared by the device models.
//!
//! Every device checks the queues the transport hands to [`VirtioDevice::activate`] the
//! same way ([`enabled_queues`]), returns chains to the used ring and interrupts the driver
//! (if it wants) the same way ([`return_chain`], [`interrupt_if_needed`]), and most serve a
//! queue with the same loop ([`drain`]), walk chains the same way ([`walk_chain`]) and yield
//! to other events the same way ([`rearm`]). Errors a guest can cause are logged at
//! warning level once, then at debug level ([`guest_error`]), so that a misbehaving guest
//! cannot flood the log.
//!
//! [`VirtioDevice::activate`]: super::VirtioDevice::activate

use std::fmt;
use std::sync::atomic::{fence, Ordering};

use log::{debug, warn};
use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, ActiveQueue, InterruptCause, VirtioInterrupt};

/// What a device with simple request queues holds while its driver runs it, and the one
/// loop that serves such a queue (the balloon's, persistent memory's).
pub(crate) struct Running {
    pub mem: GuestMemoryMmap,
    pub interrupt: std::sync::Arc<dyn VirtioInterrupt>,
    pub queues: Vec<ActiveQueue>,
    pub warned: bool,
}

impl Running {
    /// The device's queues and what it needs to serve them.
    pub fn new(
        mem: GuestMemoryMmap,
        interrupt: std::sync::Arc<dyn VirtioInterrupt>,
        queues: Vec<ActiveQueue>,
    ) -> Self {
        Running {
            mem,
            interrupt,
            queues,
            warned: false,
        }
    }

    /// Serves queue `index` of device `device`: clears its notification, hands up to
    /// `chains` chains to `serve` (which returns each one's used length), interrupts the
    /// driver if it wants, and comes back on its own when chains are left.
    pub fn serve_queue(
        &mut self,
        index: u16,
        device: &str,
        chains: u64,
        completions: &mut Vec<(u16, u32)>,
        mut serve: impl FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    ) {
        let Some(aq) = self.queues.iter_mut().find(|q| q.index == index) else {
            return;
        };
        clear_notification(&aq.notify);
        let budget = Budget {
            bytes: u64::MAX,
            chains,
        };
        let mem = self.mem.clone();
        let drained = drain(
            &mut aq.queue,
            &mem,
            format_args!("{device} queue {index}"),
            &mut self.warned,
            completions,
            budget,
            |chain, _, _| (Served::Used(serve(&mem, chain)), 0),
        );
        interrupt_if_needed(
            drained.completed,
            &mut aq.queue,
            &mem,
            self.interrupt.as_ref(),
            index,
        );
        if drained.out_of_budget {
            rearm(&aq.notify, device, index);
        }
    }
}

/// Clears a pending queue notification before the queue is served. The eventfd is
/// non-blocking, so an already clear one just answers EAGAIN.
pub(crate) fn clear_notification(notify: &EventFd) {
    let _ = notify.read();
}

/// Notifies a queue on the device's own behalf, so that its worker thread serves it again after
/// its other events: used when a device stops early to bound the work of one call.
pub(crate) fn rearm(notify: &EventFd, device: &str, index: u16) {
    if let Err(e) = notify.write(1) {
        warn!("{device}: cannot re-arm queue {index}: {e}");
    }
}

/// Logs an error at warning level the first time (setting `warned`), at debug level
/// afterwards. `kind` names the errors in the note the warning ends with ("further `kind`
/// errors are logged at debug level").
pub(crate) fn log_limited(warned: &mut bool, kind: &str, args: fmt::Arguments<'_>) {
    if *warned {
        debug!("{args}");
    } else {
        *warned = true;
        warn!("{args} (further {kind} errors are logged at debug level)");
    }
}

/// Logs a driver error at warning level the first time, at debug level afterwards.
pub(crate) fn guest_error(warned: &mut bool, args: fmt::Arguments<'_>) {
    log_limited(warned, "driver", args);
}

/// Checks the queues handed to `activate` for a device named `device` (for messages, e.g.
/// `virtio-blk`) with `num_queues` queues, and returns the enabled ones, in the order given,
/// with EVENT_IDX set as negotiated.
///
/// A queue the driver did not enable is skipped (a driver may use fewer queues than
/// offered). An index out of range, an index given twice, or an enabled queue that lies
/// outside guest memory or is misaligned fails the activation; so does the lack of any
/// enabled queue.
pub(crate) fn enabled_queues(
    device: &str,
    num_queues: usize,
    queues: Vec<ActiveQueue>,
    mem: &GuestMemoryMmap,
    event_idx: bool,
) -> Result<Vec<ActiveQueue>, ActivateError> {
    let mut seen = vec![false; num_queues];
    let mut enabled = Vec::with_capacity(queues.len());
    for mut q in queues {
        let Some(slot) = seen.get_mut(usize::from(q.index)) else {
            let plural = if num_queues == 1 { "" } else { "s" };
            return Err(ActivateError::Invalid(format!(
                "{device} has {num_queues} queue{plural}; queue {} does not exist",
                q.index
            )));
        };
        if std::mem::replace(slot, true) {
            return Err(ActivateError::Invalid(format!(
                "{device} queue {} was given twice",
                q.index
            )));
        }
        if !q.queue.ready() {
            continue;
        }
        if !q.queue.is_valid(mem) {
            return Err(ActivateError::Invalid(format!(
                "{device} queue {} (size {}) lies outside guest memory or is misaligned",
                q.index,
                q.queue.size()
            )));
        }
        q.queue.set_event_idx(event_idx);
        enabled.push(q);
    }
    if enabled.is_empty() {
        return Err(ActivateError::Invalid(format!(
            "{device} activated without any enabled queue"
        )));
    }
    Ok(enabled)
}

/// Whether the driver wants an interrupt for the used buffers just added: with EVENT_IDX,
/// when `used_event` was crossed; without it, unless the driver set
/// `VRING_AVAIL_F_NO_INTERRUPT`.
fn needs_interrupt(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    if queue.event_idx_enabled() {
        return queue.needs_notification(mem).unwrap_or(true);
    }
    // Make the used index visible before reading the driver's flags.
    fence(Ordering::SeqCst);
    match mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Relaxed) {
        Ok(flags) => u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0,
        Err(_) => true,
    }
}

/// Raises the interrupt of queue `index` if chains were `completed` (returned to its used
/// ring) and the driver wants to hear about them (see [`needs_interrupt`]).
pub(crate) fn interrupt_if_needed(
    completed: bool,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
) {
    if completed && needs_interrupt(queue, mem) {
        interrupt.trigger(InterruptCause::Queue(index));
    }
}

/// Puts chain `head` with used length `len` on the used ring of the queue named `name` (for
/// messages, e.g. `virtio-net queue 3`); true if it was.
pub(crate) fn return_chain(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    head: u16,
    len: u32,
    name: fmt::Arguments<'_>,
    warned: &mut bool,
) -> bool {
    match queue.add_used(mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            guest_error(
                warned,
                format_args!("{name}: cannot return chain {head}: {e}"),
            );
            false
        }
    }
}

/// Puts the chains of `completions` (head, used length) on the used ring, in order; true if
/// any was.
pub(crate) fn return_chains(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    completions: &[(u16, u32)],
    name: fmt::Arguments<'_>,
    warned: &mut bool,
) -> bool {
    let mut any = false;
    for &(head, len) in completions {
        any |= return_chain(queue, mem, head, len, name, warned);
    }
    any
}

/// How much work one call of [`drain`] may do before it yields to the VMM's other events.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Bytes the served chains may be charged, in all.
    pub bytes: u64,
    /// Chains that may be served.
    pub chains: u64,
}

impl Budget {
    /// No limit (in practice: the budget cannot run out).
    pub const UNLIMITED: Budget = Budget {
        bytes: u64::MAX,
        chains: u64::MAX,
    };
}

/// What became of one chain [`drain`] handed to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Served {
    /// Done: back to the used ring with this used length.
    Used(u32),
    /// Kept by the device, which returns it itself once its asynchronous I/O completes.
    Kept,
    /// Not now (the device's rate limiter said wait): the chain goes back on the ring,
    /// untouched, and the queue is served again when the device's timer fires.
    Wait,
}

/// What a call of [`drain`] did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Drained {
    /// At least one chain went back to the used ring.
    pub completed: bool,
    /// The budget ran out, possibly with chains left on the ring: the caller should come
    /// back to the queue (re-arm its notification) without waiting for the driver.
    pub out_of_budget: bool,
}

/// Serves the chains the driver publishes on `queue` until the ring stays empty or the
/// `budget` runs out, returning each chain to the used ring after every pass over it.
///
/// `serve` is called with each chain, the bytes left in the budget, and the driver-error
/// flag `warned`; it returns what became of the chain ([`Served`]) and the bytes to charge
/// to the budget.
/// `completions` is scratch space, reused from call to call. Messages name the queue
/// `name` (e.g. `virtio-blk queue 0`).
///
/// Driver notifications are off while the ring is drained, and enabled again before the
/// device goes idle; chains published meanwhile are served too (a bounded number of times,
/// in case the ring cannot be read, which would make the loop spin). An impossible avail
/// index stops the queue until its next notification.
pub(crate) fn drain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    name: fmt::Arguments<'_>,
    warned: &mut bool,
    completions: &mut Vec<(u16, u32)>,
    mut budget: Budget,
    mut serve: impl FnMut(DescriptorChain<&'m GuestMemoryMmap>, u64, &mut bool) -> (Served, u64),
) -> Drained {
    let mut completed = false;
    let mut out_of_budget = false;
    let mut waiting = false;
    let mut idle_passes = 0;
    'outer: loop {
        // Ask the driver not to notify while the ring is drained (a no-op with EVENT_IDX,
        // where the avail_event written below already suppresses notifications).
        if let Err(e) = queue.disable_notification(mem) {
            let msg = format_args!("{name}: cannot disable notifications: {e}");
            guest_error(warned, msg);
        }
        loop {
            // Serve every chain published so far (within the budget), then return them all.
            completions.clear();
            let mut served = 0usize;
            match queue.iter(mem) {
                Ok(mut chains) => {
                    while budget.bytes > 0 && budget.chains > 0 {
                        let Some(chain) = chains.next() else {
                            break;
                        };
                        let head = chain.head_index();
                        let (outcome, charged) = serve(chain, budget.bytes, warned);
                        budget.bytes = budget.bytes.saturating_sub(charged);
                        match outcome {
                            Served::Used(len) => completions.push((head, len)),
                            Served::Kept => {}
                            Served::Wait => {
                                waiting = true;
                                break;
                            }
                        }
                        budget.chains -= 1;
                        served += 1;
                    }
                }
                Err(e) => {
                    // The driver published an impossible avail index: stop serving the queue
                    // until it is notified again (a reset fixes it).
                    guest_error(warned, format_args!("{name}: {e}"));
                    break 'outer;
                }
            }
            if waiting {
                // The chain goes back where it was, for the next pass.
                queue.go_to_previous_position();
                completed |= return_chains(queue, mem, completions, name, warned);
                break 'outer;
            }
            completed |= return_chains(queue, mem, completions, name, warned);
            if budget.bytes == 0 || budget.chains == 0 {
                // Whatever is left is served on the next call, which the caller brings about.
                out_of_budget = true;
                break 'outer;
            }
            if served == 0 {
                break;
            }
            idle_passes = 0;
        }
        match queue.enable_notification(mem) {
            // More chains arrived while notifications were off: serve them too (unless the
            // ring cannot be read, which would make this loop spin).
            Ok(true) if idle_passes < 2 => idle_passes += 1,
            Ok(_) => break,
            Err(e) => {
                let msg = format_args!("{name}: cannot enable notifications: {e}");
                guest_error(warned, msg);
                break;
            }
        }
    }
    Drained {
        completed,
        out_of_budget,
    }
}

/// The next chain the driver made available on `queue`. When there is none, notifications
/// are turned back on and the ring is looked at again, so that chains published meanwhile
/// are served too — twice in a row at most (`idle_looks` counts them; a chain found clears
/// it), so that an impossible avail index cannot keep the device spinning.
pub(crate) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    idle_looks: &mut u32,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    loop {
        if let Some(chain) = queue.pop_descriptor_chain(mem) {
            *idle_looks = 0;
            return Some(chain);
        }
        match queue.enable_notification(mem) {
            Ok(true) if *idle_looks < 2 => *idle_looks += 1,
            _ => return None,
        }
    }
}

/// One descriptor of a chain being served.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seg {
    /// Where the buffer starts in guest memory (not checked).
    pub addr: GuestAddress,
    /// The buffer's length.
    pub len: u32,
    /// The buffer is device-writable.
    pub write: bool,
}

/// Walks `chain` (following indirect tables) into `descs`, which is cleared first and, after
/// a pathological chain, shrunk back to a capacity of `keep`.
pub(crate) fn walk_chain(
    chain: DescriptorChain<&GuestMemoryMmap>,
    descs: &mut Vec<Seg>,
    keep: usize,
) {
    descs.clear();
    for d in chain {
        descs.push(Seg {
            addr: d.addr(),
            len: d.len(),
            write: d.is_write_only(),
        });
    }
    if descs.capacity() > keep {
        descs.shrink_to(keep);
    }
}
