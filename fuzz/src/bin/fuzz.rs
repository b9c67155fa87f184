//! Plays a million inputs (or the count given) against every fuzz target and prints what it
//! found: `fuzz [count] [seed]`. Exits 1 if any input panicked or hung.

use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    // Panics are reported below, once each, with the input that caused them.
    std::panic::set_hook(Box::new(|_| {}));
    let mut failed = false;
    for target in fuzz::Target::ALL {
        let started = Instant::now();
        let f = fuzz::run(target, seed, count);
        let secs = started.elapsed().as_secs_f64();
        println!(
            "{:<15} {} inputs in {secs:.1} s ({:.0}/s), {} with a live queue, slowest {:?}, {} panics, {} hangs",
            target.name(),
            f.inputs,
            f.inputs as f64 / secs,
            f.live,
            f.slowest,
            f.panics.len(),
            f.hangs.len()
        );
        for (i, message) in &f.panics {
            println!("  input {i} (seed {seed}) panicked: {message}");
        }
        for (i, took) in &f.hangs {
            println!("  input {i} (seed {seed}) took {took:?}");
        }
        failed |= !f.panics.is_empty() || !f.hangs.is_empty();
    }
    std::process::exit(i32::from(failed));
}
