//! Builds every test guest from `asm/` with the system assembler and linker.
//!
//! A guest is one file `asm/NAME.S`. Its first line may be a directive comment
//! `/* ld: SCRIPT.ld */` or `/* ld: SCRIPT.ld; image: EXT */`: the linker script to use
//! (default `pvh.ld`) and, with `image`, that the guest is booted from a flat file
//! `NAME.EXT` cut from the linked ELF with `objcopy -O binary` (the bzImage guest) instead of
//! from the ELF `NAME.elf` itself.

use std::path::{Path, PathBuf};
use std::process::Command;

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (install gcc and binutils)"));
    assert!(status.success(), "{cmd:?} failed");
}

/// What a guest's first-line directive asks for: a linker script and an optional flat image
/// extension.
fn directive(text: &str) -> (String, Option<String>) {
    let mut script = "pvh.ld".to_string();
    let mut image = None;
    let first = text.lines().next().unwrap_or("").trim();
    if let Some(body) = first
        .strip_prefix("/*")
        .and_then(|r| r.strip_suffix("*/"))
        .filter(|b| b.trim_start().starts_with("ld:"))
    {
        for item in body.split(';') {
            match item.split_once(':').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("ld", v)) => script = v.to_string(),
                Some(("image", v)) => image = Some(v.to_string()),
                _ => panic!("unknown item {item:?} in the guest directive {first:?}"),
            }
        }
    }
    (script, image)
}

fn main() {
    let src = Path::new("asm");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    println!("cargo:rerun-if-changed=asm");
    let mut guests = Vec::new();
    for entry in std::fs::read_dir(src).expect("asm directory") {
        let path = entry.expect("asm entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("S") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("read guest source");
        let (script, image) = directive(&text);
        let obj = out.join(format!("{name}.o"));
        let elf = out.join(format!("{name}.elf"));
        run(Command::new("gcc")
            .args([
                "-c",
                "-nostdlib",
                "-ffreestanding",
                "-Wa,--fatal-warnings",
                "-I",
            ])
            .arg(src)
            .arg(&path)
            .arg("-o")
            .arg(&obj));
        run(Command::new("ld")
            .args(["-nostdlib", "--no-dynamic-linker", "-static"])
            .arg("--no-warn-rwx-segments")
            .arg("-T")
            .arg(src.join(&script))
            .arg("-o")
            .arg(&elf)
            .arg(&obj));
        let file = match image {
            Some(ext) => {
                let file = format!("{name}.{ext}");
                run(Command::new("objcopy")
                    .args(["-O", "binary"])
                    .arg(&elf)
                    .arg(out.join(&file)));
                file
            }
            None => format!("{name}.elf"),
        };
        guests.push((name, file));
    }
    guests.sort();
    let names: String = guests
        .iter()
        .map(|(n, _)| format!("    \"{n}\",\n"))
        .collect();
    let files: String = guests
        .iter()
        .map(|(n, f)| format!("    (\"{n}\", \"{f}\"),\n"))
        .collect();
    std::fs::write(
        out.join("guests.rs"),
        format!(
            "/// Every guest built.\npub const ALL: &[&str] = &[\n{names}];\n\n\
             /// Each guest's bootable file in `OUT_DIR`.\nconst FILES: &[(&str, &str)] = &[\n{files}];\n"
        ),
    )
    .expect("write guest list");
}
