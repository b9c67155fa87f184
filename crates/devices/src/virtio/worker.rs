//! The thread each virtio device does its work on.
//!
//! A device's data path — its queues' notifications, its host descriptors (a tap, a
//! console's input) and whatever completions it waits for — runs on a worker thread of its
//! own, with its own event loop (rust-vmm's `event-manager`), so that a busy or stuck device
//! never delays another device, a vCPU or the VMM's control of the machine. The vCPUs reach
//! the same device only through its transport (configuration and set-up), which shares the
//! model with the worker behind one lock; each call on the data path does a bounded amount
//! of work (the devices' budgets), so the lock is never held for long.
//!
//! The thread is confined by the caller's [`ThreadSetup`] before it serves anything: the
//! devices crate knows no sandbox, the VMM hands in its lock-down.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::VirtioDevice;

/// Confines a new worker thread (named by the argument) before it runs, returning what the
/// thread keeps for as long as it lives (its entry in the VMM's report of confined threads);
/// an error stops the worker before it touches the guest.
pub type ThreadSetup = Arc<dyn Fn(&str) -> Result<Box<dyn std::any::Any>, String> + Send + Sync>;

/// A device model as the transport and the device's worker share it.
#[derive(Clone)]
pub struct DeviceHandle {
    device: Arc<Mutex<Box<dyn VirtioDevice>>>,
    notify: Arc<[Arc<EventFd>]>,
    live: Arc<AtomicBool>,
    // Taken (shared) by the worker around each piece of work, and exclusively by a snapshot
    // to keep the device still while leaving its model readable.
    gate: Arc<RwLock<()>>,
}

impl DeviceHandle {
    /// Wraps `device`, whose queues are notified through `notify` (one eventfd per queue).
    pub fn new(device: Box<dyn VirtioDevice>, notify: Vec<Arc<EventFd>>) -> Self {
        DeviceHandle {
            device: Arc::new(Mutex::new(device)),
            notify: notify.into(),
            live: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(RwLock::new(())),
        }
    }

    /// Keeps the device's worker from doing anything until the guard goes: events wait,
    /// none is lost. The model itself stays lockable (to read its state).
    pub fn hold(&self) -> RwLockWriteGuard<'_, ()> {
        self.gate.write().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self) -> RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The device model, locked.
    pub fn lock(&self) -> MutexGuard<'_, Box<dyn VirtioDevice>> {
        self.device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue notification eventfds, in queue order.
    pub fn notify_eventfds(&self) -> &[Arc<EventFd>] {
        &self.notify
    }

    /// Marks the device live (activated by its driver) or not.
    pub(crate) fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
    }

    /// Whether the driver activated the device.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Runs the device on queue `index` if it is live; otherwise consumes the notification,
    /// so that its eventfd does not stay readable.
    pub fn process_queue(&self, index: u16) {
        let _work = self.work();
        if self.is_live() {
            self.lock().process_queue(index);
        } else if let Some(evt) = self.notify.get(usize::from(index)) {
            let _ = evt.read();
        }
    }

    /// Runs the device on its host descriptor `token` (as an idle device if it is not live).
    pub fn process_host(&self, token: u32) {
        let _work = self.work();
        if self.is_live() {
            self.lock().process_host(token);
        } else {
            self.lock().process_host_idle(token);
        }
    }
}

/// epoll data of the stop eventfd; queues use their index, host descriptors
/// `HOST_BASE + token`.
const STOP: u32 = u32::MAX;
const HOST_BASE: u32 = 0x1_0000;

/// The worker's one subscriber: the device's descriptors and the stop request.
struct DeviceEvents {
    handle: DeviceHandle,
    stop: Arc<EventFd>,
    stopped: bool,
}

impl MutEventSubscriber for DeviceEvents {
    fn init(&mut self, ops: &mut EventOps) {
        let add = |ops: &mut EventOps, fd: RawFd, data: u32, set: EventSet| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, data, set)) {
                // Not pollable (such as /dev/null): there is nothing to wait for.
                log::debug!("device worker: not waiting on descriptor {fd}: {e:?}");
            }
        };
        add(ops, self.stop.as_raw_fd(), STOP, EventSet::IN);
        // A device whose queues another process serves (vhost-user) leaves their
        // notifications to it: reading them here would steal the driver's kicks.
        if self.handle.lock().serves_queues() {
            for (q, evt) in self.handle.notify.iter().enumerate() {
                add(ops, evt.as_raw_fd(), q as u32, EventSet::IN);
            }
        }
        // Host descriptors are edge-triggered: the device drains them itself and comes
        // back for the rest when the guest gives it room.
        for (fd, token) in self.handle.lock().host_fds() {
            let data = HOST_BASE.saturating_add(token);
            add(ops, fd, data, EventSet::IN | EventSet::EDGE_TRIGGERED);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            STOP => self.stopped = true,
            q if q < HOST_BASE => self.handle.process_queue(q as u16),
            host => self.handle.process_host(host - HOST_BASE),
        }
    }
}

/// A running device worker. Dropping it stops the thread.
pub struct DeviceWorker {
    stop: Arc<EventFd>,
    done: mpsc::Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

/// How long dropping a worker waits for its thread: a device stuck in a host call is left
/// to finish on its own rather than holding up the VMM.
const JOIN_WAIT: Duration = Duration::from_millis(200);

impl DeviceWorker {
    /// Starts the worker thread `name` for `handle`, confined by `setup` first.
    pub fn start(name: &str, handle: DeviceHandle, setup: ThreadSetup) -> std::io::Result<Self> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK | libc::EFD_CLOEXEC)?);
        let mut manager: EventManager<Arc<Mutex<DeviceEvents>>> =
            EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
        let events = Arc::new(Mutex::new(DeviceEvents {
            handle,
            stop: stop.clone(),
            stopped: false,
        }));
        manager.add_subscriber(events.clone());
        let (done_tx, done) = mpsc::channel();
        let (ready_tx, ready) = mpsc::sync_channel::<Result<(), String>>(1);
        let thread_name = name.to_string();
        let thread = std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || {
                let _confinement = match setup(&thread_name) {
                    Ok(kept) => kept,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                loop {
                    if let Err(e) = manager.run() {
                        log::error!("{thread_name}: event loop failed: {e:?}");
                        break;
                    }
                    if events.lock().unwrap_or_else(|e| e.into_inner()).stopped {
                        break;
                    }
                }
                // Everything the worker holds goes before it says it is done, so that the
                // device's descriptors are closed when the VMM moves on.
                drop(manager);
                drop(events);
                let _ = done_tx.send(());
            })?;
        // The device is handed over only once its thread is confined: a thread that cannot
        // confine itself fails the start instead of leaving a device that never answers.
        let confined = match ready.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{name}: cannot confine the device thread: {e}")),
            Err(_) => Err(format!("{name}: the device thread ended before starting")),
        };
        if let Err(e) = confined {
            let _ = thread.join();
            return Err(std::io::Error::other(e));
        }
        Ok(DeviceWorker {
            stop,
            done,
            thread: Some(thread),
        })
    }
}

impl Drop for DeviceWorker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        // Joined once it has let go of the device (or failed to start, which drops the
        // sender); a thread stuck in a host call is left to end on its own.
        let finished = !matches!(
            self.done.recv_timeout(JOIN_WAIT),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
        if let Some(thread) = self.thread.take() {
            if finished {
                let _ = thread.join();
            } else {
                log::warn!("a device thread is still busy in a host call; leaving it to end");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActivateError, ActiveQueue, VirtioCommon, VirtioInterrupt};
    use std::sync::atomic::AtomicUsize;
    use vm_memory::GuestMemoryMmap;

    /// Counts the notifications it serves; blocks in them while `gate` is closed.
    struct Probe {
        served: Arc<AtomicUsize>,
        gate: Option<Arc<Mutex<()>>>,
        notify: Arc<EventFd>,
        common: VirtioCommon,
    }

    impl VirtioDevice for Probe {
        fn common(&self) -> &VirtioCommon {
            &self.common
        }
        fn common_mut(&mut self) -> &mut VirtioCommon {
            &mut self.common
        }
        fn set_memory(&mut self, _: GuestMemoryMmap) {}
        fn activate(
            &mut self,
            _: GuestMemoryMmap,
            _: Arc<dyn VirtioInterrupt>,
            _: Vec<ActiveQueue>,
        ) -> Result<(), ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn process_queue(&mut self, _: u16) {
            let _ = self.notify.read();
            if let Some(gate) = &self.gate {
                drop(gate.lock().unwrap());
            }
            self.served.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn live_device(gate: Option<Arc<Mutex<()>>>) -> (DeviceHandle, Arc<AtomicUsize>) {
        let served = Arc::new(AtomicUsize::new(0));
        let notify = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let handle = DeviceHandle::new(
            Box::new(Probe {
                served: served.clone(),
                gate,
                notify: notify.clone(),
                common: VirtioCommon::new(99, "probe", vec![8], 0, Vec::new()),
            }),
            vec![notify],
        );
        handle.set_live(true);
        (handle, served)
    }

    fn no_confinement() -> ThreadSetup {
        Arc::new(|_| Ok(Box::new(()) as Box<dyn std::any::Any>))
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_stuck_device_delays_no_other_and_is_left_behind_when_stopped() {
        let gate = Arc::new(Mutex::new(()));
        let held = gate.lock().unwrap();
        let (stuck, stuck_served) = live_device(Some(gate.clone()));
        let (other, other_served) = live_device(None);
        let w1 = DeviceWorker::start("stuck", stuck.clone(), no_confinement()).unwrap();
        let w2 = DeviceWorker::start("other", other.clone(), no_confinement()).unwrap();
        stuck.notify_eventfds()[0].write(1).unwrap();
        for n in 1..=3 {
            other.notify_eventfds()[0].write(1).unwrap();
            wait_for("the other device is served", || {
                other_served.load(Ordering::SeqCst) == n
            });
        }
        assert_eq!(stuck_served.load(Ordering::SeqCst), 0);
        // Stopping a worker stuck in its device waits a bounded time, then moves on.
        let t = std::time::Instant::now();
        drop(w1);
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(w2);
        drop(held);
        wait_for("the stuck call finishes", || {
            stuck_served.load(Ordering::SeqCst) == 1
        });
    }

    #[test]
    fn notifications_before_activation_are_consumed_and_a_failed_setup_fails_the_start() {
        let (handle, served) = live_device(None);
        handle.set_live(false);
        let w = DeviceWorker::start("idle", handle.clone(), no_confinement()).unwrap();
        handle.notify_eventfds()[0].write(1).unwrap();
        wait_for("the notification is consumed", || {
            handle.notify_eventfds()[0].read().is_err()
        });
        assert_eq!(served.load(Ordering::SeqCst), 0);
        drop(w);

        let (handle, served) = live_device(None);
        handle.notify_eventfds()[0].write(1).unwrap();
        let refuse: ThreadSetup = Arc::new(|_| Err("no".to_string()));
        let e = DeviceWorker::start("refused", handle.clone(), refuse)
            .err()
            .expect("a worker that cannot confine itself does not start");
        assert_eq!(
            e.to_string(),
            "refused: cannot confine the device thread: no"
        );
        assert_eq!(
            served.load(Ordering::SeqCst),
            0,
            "an unconfined worker never serves"
        );
        assert_eq!(
            handle.notify_eventfds()[0].read().unwrap(),
            1,
            "nor does it consume a notification"
        );
    }
}
