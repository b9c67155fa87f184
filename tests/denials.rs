//! What a hot-plug refused by Landlock is told: 403, the path and what it resolves to, the
//! right that is missing and the rule that would allow it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn refused_hot_plugs_name_the_missing_right_and_the_rule_to_add() {
    let dir = TempDir::new("denials");
    let ro = dir.path("ro");
    let rw = dir.path("rw");
    let outside = dir.path("outside");
    for d in [&ro, &rw, &outside] {
        std::fs::create_dir(d).unwrap();
    }
    let ro_img = ro.join("disk.img");
    let secret = outside.join("secret.img");
    for f in [&ro_img, &secret] {
        std::fs::write(f, vec![0u8; 1 << 20]).unwrap();
    }
    let link = rw.join("link.img");
    std::os::unix::fs::symlink(&secret, &link).unwrap();

    let vmm = ApiVmm::spawn(palisade(), &dir, &[]);
    let config = json!({
        "payload": {"kernel": guest("hello")},
        "serial": {"mode": "Null"}, "console": {"mode": "Off"},
        "landlock_enable": true,
        "landlock_rules": [
            {"path": ro, "access": "r"},
            {"path": rw, "access": "rw"},
        ],
    });
    assert_eq!(vmm.put("vm.create", &config).0, 204);

    // A symbolic link inside a writable rule that points outside every rule.
    let (code, body) = vmm.put("vm.add-disk", &json!({"path": link, "id": "a"}));
    assert_eq!(code, 403, "{body}");
    let resolved = std::fs::canonicalize(&secret).unwrap();
    for wanted in [
        format!(
            "{} (which resolves to {})",
            link.display(),
            resolved.display()
        ),
        "outside the Landlock ruleset".to_string(),
        format!("--landlock-rules path={},access=rw", resolved.display()),
    ] {
        assert!(body.contains(&wanted), "missing {wanted:?} in {body}");
    }

    // A file under a read-only rule, asked for writing: the rule is named, and what it lacks.
    let (code, body) = vmm.put("vm.add-disk", &json!({"path": ro_img, "id": "b"}));
    assert_eq!(code, 403, "{body}");
    for wanted in [
        format!("the Landlock rule path={},access=r", ro.display()),
        "does not allow writing".to_string(),
        format!("--landlock-rules path={},access=rw", ro_img.display()),
    ] {
        assert!(body.contains(&wanted), "missing {wanted:?} in {body}");
    }
    assert!(!body.contains("outside the Landlock ruleset"), "{body}");

    // Read-only, the same file is what the rule allows.
    let (code, body) = vmm.put(
        "vm.add-disk",
        &json!({"path": ro_img, "id": "c", "readonly": true}),
    );
    assert_eq!(code, 204, "{body}");
}
