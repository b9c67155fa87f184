//! The control queue's commands (receive mode, MAC filters, multi-queue): what a driver asks and what the device answers.

use super::*;

/// Executes one control command; returns the used length (1 once the acknowledgement is
/// written, 0 if it could not be) and the number of queue pairs to switch to, if any.
pub(super) fn control_command(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    mq: bool,
    max_pairs: usize,
    warned: &mut bool,
) -> (u32, Option<usize>) {
    // class, command, and the 16-bit argument of VQ_PAIRS_SET.
    let mut cmd = [0u8; 4];
    let mut readable = 0usize;
    let mut ack_at = None;
    let mut misordered = false;
    for d in chain {
        if d.is_write_only() {
            if ack_at.is_none() && d.len() > 0 {
                ack_at = Some(d.addr());
            }
            continue;
        }
        misordered |= ack_at.is_some();
        let len = d.len() as usize;
        let want = cmd.len().saturating_sub(readable).min(len);
        if want > 0
            && mem
                .read_slice(&mut cmd[readable..readable + want], d.addr())
                .is_err()
        {
            guest_error(
                warned,
                format_args!("virtio-net control: command outside guest memory"),
            );
            misordered = true;
        }
        readable = readable.saturating_add(len);
    }
    let Some(ack_at) = ack_at else {
        guest_error(
            warned,
            format_args!("virtio-net control: command without a writable acknowledgement byte"),
        );
        return (0, None);
    };
    let mut pairs = None;
    let ok = if misordered || readable < 2 {
        false
    } else if u32::from(cmd[0]) == VIRTIO_NET_CTRL_MQ
        && u32::from(cmd[1]) == VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET
    {
        let n = usize::from(u16::from_le_bytes([cmd[2], cmd[3]]));
        if mq && readable == 4 && (1..=max_pairs).contains(&n) {
            pairs = Some(n);
            true
        } else {
            debug!("virtio-net control: refusing {n} queue pairs (at most {max_pairs})");
            false
        }
    } else {
        debug!(
            "virtio-net control: unsupported command class {} command {}",
            cmd[0], cmd[1]
        );
        false
    };
    let ack = if ok { VIRTIO_NET_OK } else { VIRTIO_NET_ERR } as u8;
    if mem.write_obj(ack, ack_at).is_err() {
        guest_error(
            warned,
            format_args!("virtio-net control: acknowledgement outside guest memory"),
        );
        return (0, None);
    }
    (1, pairs)
}

impl Net {
    /// Answers the commands published on the control queue.
    pub(super) fn process_ctrl(&mut self) {
        let mut completed = false;
        let mut idle_passes = 0;
        loop {
            match self.ctrl_pass() {
                Some(0) => {}
                Some(_) => {
                    completed = true;
                    idle_passes = 0;
                    continue;
                }
                None => break,
            }
            // Ask to be notified of the next command (with EVENT_IDX this writes
            // avail_event, without which the driver would stop notifying), and look again
            // in case one arrived meanwhile.
            let Some(active) = self.active.as_mut() else {
                return;
            };
            let Some(ctrl) = active.ctrl.as_mut() else {
                return;
            };
            match ctrl.queue.enable_notification(&active.mem) {
                Ok(true) if idle_passes < 2 => idle_passes += 1,
                Ok(_) => break,
                Err(e) => {
                    let index = ctrl.index;
                    guest_error(
                        &mut active.warned,
                        format_args!("virtio-net queue {index}: cannot enable notifications: {e}"),
                    );
                    break;
                }
            }
        }
        if let Some(active) = self.active.as_mut() {
            if let Some(ctrl) = active.ctrl.as_mut() {
                let (queue, index) = (&mut ctrl.queue, ctrl.index);
                interrupt_if_needed(completed, queue, &active.mem, &*active.interrupt, index);
            }
        }
    }

    /// Answers the commands published so far; returns how many chains went back to the used
    /// ring, or `None` if the ring cannot be read.
    fn ctrl_pass(&mut self) -> Option<usize> {
        let mq = self.common.acked(F_MQ);
        let max_pairs = self.taps.len();
        let Net {
            active,
            counters,
            done,
            ..
        } = self;
        let active = active.as_mut()?;
        let Active {
            mem, ctrl, warned, ..
        } = active;
        let ctrl = ctrl.as_mut()?;
        let index = ctrl.index;
        let mem: &GuestMemoryMmap = mem;
        let mut new_pairs = None;
        done.clear();
        match ctrl.queue.iter(mem) {
            Ok(chains) => {
                for chain in chains {
                    let head = chain.head_index();
                    let (len, pairs) = control_command(mem, chain, mq, max_pairs, warned);
                    if len == 0 {
                        counters.errors += 1;
                    }
                    new_pairs = pairs.or(new_pairs);
                    done.push((head, len));
                }
            }
            Err(e) => {
                guest_error(warned, format_args!("virtio-net queue {index}: {e}"));
                return None;
            }
        }
        let done = std::mem::take(&mut self.done);
        // The new number of pairs applies before the driver sees the acknowledgement.
        if let Some(n) = new_pairs {
            self.set_active_pairs(n);
        }
        let mut returned = 0;
        if let Some(active) = self.active.as_mut() {
            let Active {
                mem, ctrl, warned, ..
            } = active;
            if let Some(ctrl) = ctrl.as_mut() {
                for &(head, len) in &done {
                    if return_chain(&mut ctrl.queue, mem, index, head, len, warned) {
                        returned += 1;
                    }
                }
            }
        }
        self.done = done;
        Some(returned)
    }
}
