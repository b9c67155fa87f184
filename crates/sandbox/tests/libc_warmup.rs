//! Once primed, the C library no longer opens a file when a confined thread's heap shrinks:
//! a thread whose filter kills the process on `openat` grows and frees its heap unharmed.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

#[test]
fn a_thread_that_may_not_open_files_can_free_its_heap() {
    sandbox::libc_warmup::prime();
    let rules: BTreeMap<i64, Vec<SeccompRule>> = [libc::SYS_openat, libc::SYS_open]
        .into_iter()
        .map(|n| (n, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::KillProcess,
        TargetArch::x86_64,
    )
    .unwrap();
    let program: BpfProgram = filter.try_into().unwrap();
    std::thread::spawn(move || {
        seccompiler::apply_filter(&program).unwrap();
        // As in `prime`: past the trim threshold, then all freed.
        let blocks: Vec<Vec<u8>> = (0..8).map(|_| vec![2u8; 96 << 10]).collect();
        drop(std::hint::black_box(blocks));
    })
    .join()
    .unwrap();
}
