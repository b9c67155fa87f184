//! Prints the path of a built test guest: `guest-path NAME` (used by scripts/demo).

fn main() -> std::process::ExitCode {
    let name = std::env::args().nth(1).unwrap_or_default();
    if !test_guests::ALL.contains(&name.as_str()) {
        eprintln!(
            "guest-path: no guest named {name:?}; known: {}",
            test_guests::ALL.join(", ")
        );
        return std::process::ExitCode::from(1);
    }
    println!("{}", test_guests::path(&name).display());
    std::process::ExitCode::SUCCESS
}
