//! Where a disk's asynchronous requests run: its restricted io_uring, or its pool of I/O
//! threads. Both take a batch of requests, announce completions on an eventfd the device
//! thread watches, and drain before the device lets go of guest memory.

use std::io;
use std::os::fd::RawFd;

use super::pool::IoPool;
use super::request::rw_vectored;
use super::uring::{Completion, Op, Submission, Uring};

/// A disk's asynchronous I/O engine.
pub(crate) enum Engine<T> {
    Ring(Box<Uring<T>>),
    Pool(IoPool<T>),
}

impl<T> Engine<T> {
    /// The eventfd that becomes readable when requests complete.
    pub fn eventfd(&self) -> RawFd {
        match self {
            Engine::Ring(r) => r.eventfd(),
            Engine::Pool(p) => p.eventfd(),
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        match self {
            Engine::Ring(r) => r.in_flight(),
            Engine::Pool(p) => p.in_flight(),
        }
    }

    /// Whether the engine takes another request.
    pub fn has_room(&self) -> bool {
        match self {
            Engine::Ring(r) => r.has_room(),
            Engine::Pool(p) => p.has_room(),
        }
    }

    /// Queues `s`; handed back when the engine is full.
    pub fn push(&mut self, s: Submission<T>) -> Result<(), Submission<T>> {
        match self {
            Engine::Ring(r) => r.push(s),
            Engine::Pool(p) => p.push(s),
        }
    }

    /// Starts the queued requests.
    pub fn submit(&mut self) -> io::Result<()> {
        match self {
            Engine::Ring(r) => r.submit(),
            Engine::Pool(p) => {
                p.submit();
                Ok(())
            }
        }
    }

    /// Calls `done` with every finished request (a ring's short transfers are finished
    /// with plain system calls first).
    pub fn reap(&mut self, done: impl FnMut(Completion<T>)) {
        match self {
            Engine::Ring(r) => r.reap(
                |fd, op, iovecs, offset| rw_vectored(fd, iovecs, offset, op == Op::Write),
                done,
            ),
            Engine::Pool(p) => p.reap(done),
        }
    }

    /// Waits until nothing is in flight, discarding the completions.
    pub fn drain(&mut self) -> Vec<T> {
        match self {
            Engine::Ring(r) => r.drain(),
            Engine::Pool(p) => p.drain(),
        }
    }
}
