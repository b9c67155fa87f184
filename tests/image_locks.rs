//! One image, one writer: disk images are locked (shared for `readonly=on`, exclusive
//! otherwise), in one VM and across VMMs, and the lock goes with the disk.

mod common;

use common::*;
use serde_json::json;

fn image(dir: &TempDir, name: &str) -> std::path::PathBuf {
    let path = dir.path(name);
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    path
}

#[test]
fn the_same_image_twice_in_one_vm_is_refused_unless_both_are_read_only() {
    let dir = TempDir::new("locks-one-vm");
    let img = image(&dir, "shared.img");
    let hello = guest("hello");
    let rw = format!("path={}", img.display());
    let out = run_palisade(&["--kernel", path_str(&hello), "--disk", &rw, "--disk", &rw]);
    assert_one_line_error(&out, "the image is in use");
    assert!(stderr(&out).contains(path_str(&img)), "{}", stderr(&out));
    let ro = format!("path={},readonly=on", img.display());
    let out = run_palisade(&["--kernel", path_str(&hello), "--disk", &rw, "--disk", &ro]);
    assert_one_line_error(&out, "holds a write lock on it");
    // Readers share.
    let out = run_palisade(&["--kernel", path_str(&hello), "--disk", &ro, "--disk", &ro]);
    assert_pass(&out, "Hello from the Palisade test guest");
}

#[test]
fn a_second_vmm_cannot_write_an_image_the_first_has_until_it_lets_go() {
    let dir_a = TempDir::new("locks-a");
    let dir_b = TempDir::new("locks-b");
    let img = image(&dir_a, "disk.img");
    let config = json!({
        "payload": {"kernel": guest("hello")},
        "serial": {"mode": "Null"}, "console": {"mode": "Off"},
        "disks": [{"path": img, "id": "d0"}],
    });
    let a = ApiVmm::spawn(palisade(), &dir_a, &[]);
    let b = ApiVmm::spawn(palisade(), &dir_b, &[]);
    let (code, body) = a.put("vm.create", &config);
    assert_eq!(code, 204, "{body}");
    let (code, body) = b.put("vm.create", &config);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("the image is in use"), "{body}");
    assert_eq!(
        b.call("GET", "vm.info", None).0,
        404,
        "nothing was created in B"
    );

    // Hot-plugging it into A again conflicts too.
    let (code, body) = a.put("vm.add-disk", &json!({"path": img, "id": "d1"}));
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("the image is in use"), "{body}");

    // Once A deletes its VM, the image is free.
    assert_eq!(a.put("vm.delete", &json!({})).0, 204);
    let (code, body) = b.put("vm.create", &config);
    assert_eq!(code, 204, "{body}");
}
