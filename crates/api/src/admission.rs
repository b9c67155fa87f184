//! Which connections the API server keeps when it is full.
//!
//! A connection that is between requests — idle, or trickling a request head a byte at a
//! time — holds a place without asking anything of the VMM. When every place is taken, the
//! one of those that has waited longest is closed to make room for the newcomer, so slow or
//! idle clients can never lock others out. A connection whose request is being answered is
//! never closed, nor one whose answer went out less than [`GRACE`] ago (it may still be
//! being written); only when no connection can go is a newcomer refused (503).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// How long a connection must have waited since its last answer before it may be closed to
/// make room.
pub const GRACE: Duration = Duration::from_millis(50);

/// One admitted connection, as the server sees it.
#[derive(Debug)]
pub struct Place {
    /// A request of it is being handled.
    busy: AtomicBool,
    /// Since when it has been waiting for a request (its last answer, or its opening).
    waiting_since: Mutex<Instant>,
    /// Asks the connection to close.
    close: Notify,
}

impl Place {
    /// Marks a request as started: the connection may not be closed for room.
    pub fn start(&self) {
        self.busy.store(true, Ordering::Release);
    }

    /// Marks the request's answer as ready: from now on the connection waits again.
    pub fn finish(&self) {
        *self.waiting_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.busy.store(false, Ordering::Release);
    }

    /// Resolves when the server wants this connection closed for room.
    pub async fn closing(&self) {
        self.close.notified().await;
    }
}

/// The admitted connections.
#[derive(Debug, Default)]
pub struct Places {
    places: Vec<Weak<Place>>,
}

impl Places {
    /// Admits a connection if there is room (`max` places), making room by closing the
    /// connection that has waited longest for a request if need be. `None` when every
    /// place is busy answering.
    pub fn admit(&mut self, max: usize) -> Option<Arc<Place>> {
        self.places.retain(|p| p.strong_count() > 0);
        if self.places.len() >= max {
            let now = Instant::now();
            let oldest = self
                .places
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.upgrade().map(|p| (i, p)))
                .filter(|(_, p)| !p.busy.load(Ordering::Acquire))
                .map(|(i, p)| {
                    let since = *p.waiting_since.lock().unwrap_or_else(|e| e.into_inner());
                    (i, p, since)
                })
                .filter(|(_, _, since)| now.duration_since(*since) >= GRACE)
                .min_by_key(|(_, _, since)| *since)?;
            // `notify_one` keeps the permit if the connection is not waiting on it yet.
            oldest.1.close.notify_one();
            self.places.swap_remove(oldest.0);
        }
        let place = Arc::new(Place {
            busy: AtomicBool::new(false),
            waiting_since: Mutex::new(Instant::now()),
            close: Notify::new(),
        });
        self.places.push(Arc::downgrade(&place));
        Some(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_waiting_idle_connection_makes_room_and_busy_ones_stay() {
        let mut places = Places::default();
        let a = places.admit(2).unwrap();
        std::thread::sleep(GRACE / 10);
        let b = places.admit(2).unwrap();
        // Both just opened: nobody may go yet.
        assert!(places.admit(2).is_none());
        std::thread::sleep(GRACE);
        // Full: `a` has waited longest and goes.
        let c = places.admit(2).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), a.closing())
                .await
                .expect("a is asked to close");
        });
        // Busy connections are never closed for room.
        b.start();
        c.start();
        assert!(places.admit(2).is_none());
        c.finish();
        assert!(places.admit(2).is_none(), "c just answered");
        std::thread::sleep(GRACE);
        let d = places.admit(2).unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), c.closing())
                .await
                .expect("c is asked to close");
        });
        // A connection that ended frees its place by itself.
        drop(d);
        assert!(places.admit(2).is_some());
    }
}
