//! A short run of every fuzz target (the `fuzz` program runs a million inputs each).

#[test]
fn every_target_survives_a_short_run() {
    for target in fuzz::Target::ALL {
        let f = fuzz::run(target, 7, 3_000);
        assert_eq!(f.inputs, 3_000);
        assert!(f.panics.is_empty(), "{}: {:?}", target.name(), f.panics);
        assert!(f.hangs.is_empty(), "{}: {:?}", target.name(), f.hangs);
        if target != fuzz::Target::IoApic {
            // Some inputs get as far as a started driver's queue being served.
            assert!(
                f.live > 0,
                "{}: no input reached a live queue",
                target.name()
            );
        }
    }
}

#[test]
fn the_inputs_reach_the_devices() {
    // A run must exercise the devices, not stop at the first byte: inputs are long enough
    // to hold many actions, and differ from one another.
    let mut inputs = fuzz::Inputs::new(3);
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut total = 0;
    for _ in 0..100 {
        inputs.fill(&mut a);
        inputs.fill(&mut b);
        total += a.len();
        assert!(a.is_empty() || a != b);
    }
    assert!(total > 100 * 100, "inputs average {} bytes", total / 100);
}
