//! Issue target for Landlock: computing and applying a policy of 1,000 rules across all
//! threads of the process in under 5 ms (median).
//!
//! Confinement cannot be undone, so every sample runs in a fresh child process (this same
//! program with `--sample`): it starts idle threads standing for the VMM's own (event loop,
//! API, connections), builds a VM configuration with 1,000 `landlock_rules` on real files,
//! and times `Policy::from_config` plus `Sandbox::confine` — ruleset creation, 1,000 rules,
//! and every thread confining itself.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use bench::{report, summarize};

const RULES: usize = 1000;
const EXTRA_THREADS: usize = 1;
const SAMPLES: usize = 60;

fn sample(dir: &str) -> Duration {
    let sandbox = sandbox::Sandbox::prepare().expect("prepare");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let stop_rx = std::sync::Arc::new(std::sync::Mutex::new(stop_rx));
    let threads: Vec<_> = (0..EXTRA_THREADS)
        .map(|_| {
            let rx = stop_rx.clone();
            std::thread::spawn(move || {
                let _ = rx.lock().map(|r| r.recv());
            })
        })
        .collect();
    let mut config = config::VmConfig::default();
    config.payload.kernel = Some(PathBuf::from("/nonexistent/kernel"));
    config.landlock_enable = true;
    config.landlock_rules = Some(
        (0..RULES)
            .map(|i| config::LandlockConfig {
                path: PathBuf::from(format!("{dir}/f{i}")),
                access: if i % 2 == 0 { "r".into() } else { "rw".into() },
            })
            .collect(),
    );
    let start = Instant::now();
    let policy = sandbox::Policy::from_config(&config);
    let report = sandbox.confine(&policy).expect("confine");
    let took = start.elapsed();
    // The user's rules, plus the entropy source every VM reads.
    assert_eq!(report.rules.len(), RULES + 1);
    assert_eq!(report.threads, EXTRA_THREADS + 1);
    // Confinement is real: a path outside the rules is now refused.
    assert!(std::fs::File::open("/etc/hostname").is_err());
    drop(stop_tx);
    for t in threads {
        let _ = t.join();
    }
    took
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 3 && args[1] == "--sample" {
        println!("{}", sample(&args[2]).as_nanos());
        return;
    }
    let dir = std::env::temp_dir().join(format!("palisade-bench-landlock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for i in 0..RULES {
        std::fs::write(dir.join(format!("f{i}")), b"x").expect("rule file");
    }
    let me = std::env::current_exe().expect("own path");
    let mut samples: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let out = Command::new(&me)
                .arg("--sample")
                .arg(&dir)
                .output()
                .expect("run sample");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let ns: u64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("ns");
            Duration::from_nanos(ns)
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    report(
        &format!(
            "Landlock policy of {RULES} rules on {} threads",
            EXTRA_THREADS + 1
        ),
        &summarize(&mut samples),
        "< 5 ms median",
    );
}
