//! `vm.send-migration` and `vm.receive-migration`: the VMM's side of a live migration (see
//! [`crate::migration`] for the exchange).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use config::{ReceiveMigration, SendMigration};
use log::{info, warn};

use super::{wrong_state, Vmm};
use crate::control::{ErrorKind, Reply, RequestError, Response};
use crate::migration::pages::{receive_pages, PageTracker};
use crate::migration::wire::{Kind, Wire};
use crate::migration::{self, Hello, VmOffer};
use crate::snapshot::SnapshotState;
use crate::vm::{RestoreMemory, VmState};

/// How long one read or write on the migration socket may wait for the peer.
const PEER_WAIT: Duration = Duration::from_secs(30);
/// How long the destination waits for the source to connect.
const ACCEPT_WAIT: Duration = Duration::from_secs(120);
/// Copy passes while the guest runs, at most.
const MAX_PASSES: u32 = 8;

fn failed(action: &str, why: impl std::fmt::Display) -> RequestError {
    RequestError::new(ErrorKind::Internal, format!("{action}: {why}"))
}

fn bad(action: &str, why: impl std::fmt::Display) -> RequestError {
    RequestError::new(ErrorKind::BadRequest, format!("{action}: {why}"))
}

/// Waits (a bounded time) for one connection on `listener`; its stream.
fn accept(listener: &std::os::unix::net::UnixListener, wait: Duration) -> std::io::Result<OwnedFd> {
    let fd = listener.as_raw_fd();
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no source connected within {wait:?}"),
            ));
        }
        // SAFETY: one pollfd, owned by this frame.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error());
        }
        if n > 0 {
            // SAFETY: accept4 on the listener this function borrows, with no address asked.
            let s = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if s >= 0 {
                // SAFETY: `s` is a new descriptor this function owns from here.
                return Ok(unsafe { OwnedFd::from_raw_fd(s) });
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
    }
}

impl Vmm {
    /// `vm.send-migration`: the running (or paused) VM to the destination at `unix:PATH`.
    pub(super) fn send_migration(&mut self, body: SendMigration) -> Response {
        let action = "vm.send-migration";
        body.check().map_err(|e| bad(action, e))?;
        let state = self.require_vm(action)?;
        if !matches!(state, VmState::Running | VmState::Paused) {
            return Err(wrong_state(action, state, "Running or Paused"));
        }
        if let Some(vm) = &self.vm {
            if vm.config().net.iter().flatten().any(|n| n.fds.is_some()) {
                return Err(bad(
                    action,
                    "the VM's taps were passed as descriptors, which cannot travel; use tap names",
                ));
            }
        }
        let path = config::migration::unix_socket_path(&body.destination_url)
            .map_err(|e| bad(action, e))?;
        let stream =
            crate::connector::connect_and(&path, "migration", Ok).map_err(|e| match e {
                crate::connector::ConnectError::Denied(why) => {
                    RequestError::new(ErrorKind::Forbidden, format!("{action}: {why}"))
                }
                crate::connector::ConnectError::Failed(why) => bad(action, why),
            })?;
        let mut wire =
            Wire::new(OwnedFd::from(stream), PEER_WAIT).map_err(|e| failed(action, e))?;
        crate::events::emit("vm", "migrating");
        let started = Instant::now();
        let was_running = state == VmState::Running;
        match self.migrate_out(&mut wire, &body, was_running) {
            Ok(downtime) => {
                info!(
                    "migration to {} done: {} MiB sent in {:?}, downtime {:.1} ms",
                    path.display(),
                    wire.sent >> 20,
                    started.elapsed(),
                    downtime.as_secs_f64() * 1e3
                );
                crate::events::emit("vm", "migrated");
                // The destination runs the VM: this one is released.
                self.delete_vm(true);
                Ok(Reply::Done)
            }
            Err(e) => {
                // Whatever happened, the VM runs on here as it was.
                if let Some(vm) = &mut self.vm {
                    if was_running && vm.state() == VmState::Paused {
                        vm.resume();
                    }
                }
                warn!("{e}: the VM runs on here");
                Err(e)
            }
        }
    }

    /// The source's exchange; the downtime (pause to the destination's answer).
    fn migrate_out(
        &mut self,
        wire: &mut Wire,
        body: &SendMigration,
        was_running: bool,
    ) -> Result<Duration, RequestError> {
        let action = "vm.send-migration";
        let Some(vm) = &mut self.vm else {
            return Err(failed(action, "no VM"));
        };
        let io = |e: std::io::Error| failed(action, format!("migration socket: {e}"));
        wire.send_json(Kind::Hello, &Hello::ours()).map_err(io)?;
        let offer = VmOffer {
            config: vm.config().clone(),
            slots: vm.devices().pci.slots(),
        };
        wire.send_json(Kind::Config, &offer).map_err(io)?;
        wire.recv_ack()
            .map_err(io)?
            .map_err(|e| failed(action, format!("the destination refused the VM: {e}")))?;
        let deadline = Instant::now() + Duration::from_secs(body.timeout_s);
        let downtime = Duration::from_millis(body.downtime_ms);
        let mut tracker = PageTracker::new(vm.guest_memory());
        for pass in 1..=MAX_PASSES {
            let started = Instant::now();
            let sent = tracker
                .send_changed(vm.guest_memory(), wire)
                .map_err(|e| failed(action, e))?;
            let took = started.elapsed();
            log::debug!("migration pass {pass}: {} pages in {took:?}", sent.pages);
            // The next pass sends about as much again: stop once that fits the downtime.
            if pass > 1 && took <= downtime {
                break;
            }
            if Instant::now() > deadline {
                if body.ignores_timeout() {
                    break;
                }
                return Err(failed(
                    action,
                    format!(
                        "not done within timeout_s={} (timeout_strategy=Cancel)",
                        body.timeout_s
                    ),
                ));
            }
        }
        let paused_at = Instant::now();
        if was_running {
            vm.pause();
        }
        // The destination takes the disks' locks once it has everything.
        vm.release_image_locks();
        let answer = vm.with_state_held(|vm, state| {
            tracker
                .send_changed(vm.guest_memory(), wire)
                .map_err(crate::vm::VmError::Snapshot)?;
            wire.send_json(Kind::State, &state)
                .map_err(|e| crate::vm::VmError::Snapshot(format!("migration socket: {e}")))?;
            wire.recv_ack()
                .map_err(|e| crate::vm::VmError::Snapshot(format!("migration socket: {e}")))
        });
        let failure = match answer {
            Ok(Ok(())) => return Ok(paused_at.elapsed()),
            Ok(Err(e)) => failed(
                action,
                format!("the destination could not take the VM: {e}"),
            ),
            Err(e) => RequestError::from_error(ErrorKind::Internal, action, &e),
        };
        // The VM runs on here: its disks are its own again.
        if let Err(e) = vm.take_image_locks() {
            warn!("{action}: the VM runs on without its image locks: {e}");
        }
        Err(failure)
    }

    /// `vm.receive-migration`: listens on `unix:PATH` for one source and runs its VM.
    pub(super) fn receive_migration(&mut self, body: ReceiveMigration) -> Response {
        let action = "vm.receive-migration";
        body.check().map_err(|e| bad(action, e))?;
        self.require_no_vm(action)?;
        let path =
            config::migration::unix_socket_path(&body.receiver_url).map_err(|e| bad(action, e))?;
        let listener = crate::connector::bind(&path, "migration").map_err(|e| match e {
            crate::connector::ConnectError::Denied(why) => {
                RequestError::new(ErrorKind::Forbidden, format!("{action}: {why}"))
            }
            crate::connector::ConnectError::Failed(why) => bad(action, why),
        })?;
        let accepted = accept(&listener, ACCEPT_WAIT);
        drop(listener);
        // One source per call: the socket goes (where the sandbox lets it).
        let _ = std::fs::remove_file(&path);
        let fd = accepted.map_err(|e| failed(action, format!("{}: {e}", path.display())))?;
        let mut wire = Wire::new(fd, PEER_WAIT).map_err(|e| failed(action, e))?;
        crate::events::emit("vm", "receiving");
        match self.migrate_in(&mut wire, &path) {
            Ok(()) => {
                let _ = wire.send_ack(Ok(()));
                crate::events::emit("vm", "received");
                info!("VM received on {}, running", path.display());
                Ok(Reply::Done)
            }
            Err(e) => {
                let _ = wire.send_ack(Err(e.to_string()));
                // Nothing half-received is left behind.
                self.delete_vm(true);
                Err(e)
            }
        }
    }

    /// The destination's exchange: the VM built, its memory and state received, resumed.
    fn migrate_in(&mut self, wire: &mut Wire, path: &Path) -> Result<(), RequestError> {
        let action = "vm.receive-migration";
        let io = |e: std::io::Error| bad(action, format!("migration socket: {e}"));
        let hello: Hello = wire.recv_json(Kind::Hello).map_err(io)?;
        hello.check().map_err(|e| bad(action, e))?;
        let offer: VmOffer = wire.recv_json(Kind::Config).map_err(io)?;
        if offer.config.net.iter().flatten().any(|n| n.fds.is_some()) {
            return Err(bad(
                action,
                "the VM's taps were passed as descriptors, which cannot travel",
            ));
        }
        // The source still holds its disks' locks: they are taken once it has let go.
        let placement = crate::pci_devices::Placement {
            slots: offer.slots,
            defer_image_locks: true,
        };
        self.create_confined(offer.config, action, placement, vec![migration::held(path)])?;
        wire.send_ack(Ok(())).map_err(io)?;
        let state: SnapshotState = loop {
            let (kind, len) = wire.recv_header().map_err(io)?;
            let payload = wire.recv_payload(len).map_err(io)?;
            match kind {
                Kind::Pages => {
                    let Some(vm) = &self.vm else {
                        return Err(failed(action, "no VM"));
                    };
                    receive_pages(vm.guest_memory(), &payload).map_err(|e| bad(action, e))?;
                }
                Kind::State => {
                    break serde_json::from_slice(&payload)
                        .map_err(|e| bad(action, format!("a damaged state: {e}")))?;
                }
                other => return Err(bad(action, format!("unexpected {other:?} message"))),
            }
        };
        let Some(vm) = &mut self.vm else {
            return Err(failed(action, "no VM"));
        };
        vm.take_image_locks()
            .map_err(|e| RequestError::from_error(ErrorKind::BadRequest, action, &e))?;
        vm.restore_state(&self.kvm, &self.cpuid, &state, RestoreMemory::Received)
            .map_err(|e| RequestError::from_error(ErrorKind::BadRequest, action, &e))?;
        vm.set_came_from(migration::held(path));
        vm.resume();
        Ok(())
    }
}
