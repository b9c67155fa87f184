//! `--watchdog`: a guest that arms the IB700 watchdog and stops petting it is reset when its
//! time runs out (it passes on its second boot, counted in RAM a warm reset keeps), and
//! the VMM says why. Under Landlock and the filters.

mod common;

use common::*;

#[test]
fn a_guest_that_stops_petting_the_watchdog_is_reset() {
    let kernel = guest("watchdog");
    let mut args = vec!["--kernel", path_str(&kernel), "--watchdog", "--landlock"];
    args.extend_from_slice(&SERIAL_ON_STDOUT);
    let out = run_palisade(&args);
    let text = assert_pass(&out, "PASS watchdog");
    assert!(text.contains("watchdog: armed, boot 1\n"), "{text}");
    assert!(text.contains("watchdog: no more pets\n"), "{text}");
    assert!(text.contains("watchdog: armed, boot 2\n"), "{text}");
    assert!(
        stderr(&out).contains("watchdog: the guest stopped petting it: resetting the VM"),
        "{}",
        stderr(&out)
    );
}
