//! Work the C library does lazily, the first time it is needed, by opening a file — which
//! a confined thread may not do (its filter stops the VMM on `openat`). It is made to
//! happen once, at start-up, before any thread is confined.
//!
//! glibc reads `/proc/sys/vm/overcommit_memory` the first time the heap of a thread's arena
//! shrinks (and caches the answer for the process). Which thread gets there first, and
//! when, depends on its allocations: the API thread did, after closing hundreds of
//! connections at once.

/// Makes the C library do now what it would otherwise do later with a file open.
pub fn prime() {
    // A thread of its own gets an arena of its own; growing its heap past the trim
    // threshold and freeing it all makes glibc shrink that heap, which is the lazy step.
    let _ = std::thread::Builder::new()
        .name("warmup".into())
        .spawn(|| {
            // Below the mmap threshold (128 KiB), so that they come from the arena's heap;
            // never touched, so no page of them is faulted in.
            let blocks: Vec<Vec<u8>> = (0..8).map(|_| Vec::with_capacity(96 << 10)).collect();
            drop(std::hint::black_box(blocks));
        })
        .and_then(|t| {
            t.join()
                .map_err(|_| std::io::Error::other("warm-up panicked"))
        });
}
