//! Paired rounds: a device model against the system calls it stands for, timed in turns.
//!
//! Each round runs both sides, alternating which goes first, after one warm-up run each.
//! The best round of each side is compared (the figure a target is judged by), and the
//! median of the per-round ratios is shown beside it as a check on noise.

use std::time::{Duration, Instant};

/// How many paired rounds a comparison runs.
pub const ROUNDS: usize = 31;

/// The timings of a comparison.
pub struct Comparison {
    /// Operations per round.
    pub ops: usize,
    /// Fastest round of: the device on the VMM thread, the device with its simulated
    /// driver, the system calls.
    pub best: (Duration, Duration, Duration),
    /// Median over rounds of (system-call time / VMM-thread time) of the same round.
    pub median_ratio: f64,
}

impl Comparison {
    /// Operations per second of the best rounds: (VMM thread, with driver, system calls).
    pub fn rates(&self) -> (f64, f64, f64) {
        let rate = |d: Duration| self.ops as f64 / d.as_secs_f64();
        (rate(self.best.0), rate(self.best.1), rate(self.best.2))
    }
}

/// Runs `device(round)` (which returns its VMM-thread time) and `direct(round)`, each
/// doing `ops` operations, in [`ROUNDS`] paired rounds.
pub fn compare(
    ops: usize,
    device: impl FnMut(usize) -> Duration,
    direct: impl FnMut(usize),
) -> Comparison {
    compare_prepared(ops, || {}, device, direct)
}

/// As [`compare`], with `prepare()` run, untimed, before each run of either side (to queue
/// the work a side then drains, say).
pub fn compare_prepared(
    ops: usize,
    mut prepare: impl FnMut(),
    mut device: impl FnMut(usize) -> Duration,
    mut direct: impl FnMut(usize),
) -> Comparison {
    prepare();
    device(0);
    prepare();
    direct(0);
    let mut best = (Duration::MAX, Duration::MAX, Duration::MAX);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let mut run_device = |prepare: &mut dyn FnMut()| {
            prepare();
            let t = Instant::now();
            let vmm = device(round);
            (vmm, t.elapsed())
        };
        let mut run_direct = |prepare: &mut dyn FnMut()| {
            prepare();
            let t = Instant::now();
            direct(round);
            t.elapsed()
        };
        let ((vmm, wall), d) = if round % 2 == 0 {
            let v = run_device(&mut prepare);
            (v, run_direct(&mut prepare))
        } else {
            let d = run_direct(&mut prepare);
            (run_device(&mut prepare), d)
        };
        best = (best.0.min(vmm), best.1.min(wall), best.2.min(d));
        ratios.push(d.as_secs_f64() / vmm.as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    Comparison {
        ops,
        best,
        median_ratio: ratios[ratios.len() / 2],
    }
}

/// Prints the device's rates against the direct side's, in `unit`s per second, and whether
/// the ratio with the driver meets `target`.
pub fn print(c: &Comparison, unit: &str, direct: &str, target: f64) {
    let (vmm, wall, sys) = c.rates();
    println!(
        "  device, VMM thread   {vmm:>9.0} {unit}/s   ratio {:.2}x (median of rounds {:.2}x)",
        vmm / sys,
        c.median_ratio,
    );
    println!(
        "  device, with driver  {wall:>9.0} {unit}/s   ratio {:.2}x   target >= {target}x: {}",
        wall / sys,
        if wall / sys >= target { "ok" } else { "MISSED" }
    );
    println!("  {direct:<20} {sys:>9.0} {unit}/s");
}
