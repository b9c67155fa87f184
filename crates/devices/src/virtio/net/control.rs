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
