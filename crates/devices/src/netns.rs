//! Network namespaces for tests and benchmarks that need tap devices of their own.
//!
//! Built for the device unit tests, the integration tests and the benchmarks (the
//! `test-util` feature), never for `palisade` itself: each user gets a namespace of its own
//! with `ip netns add`, so its interfaces and traffic stay away from the host's, and the
//! namespace is deleted when dropped, also when a test fails.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace named `palisade-test-<pid>-<n>`, deleted when dropped.
pub struct NetNs {
    name: String,
    /// The namespace itself, for `setns` (held so that children can enter it after fork).
    handle: File,
    /// A small number unique to this namespace in this process, 1 to 250 (for addresses).
    index: u8,
}

impl NetNs {
    /// Creates a namespace. Panics when it cannot (root and iproute2 are needed).
    pub fn new() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("palisade-test-{}-{n}", std::process::id());
        checked(
            Command::new("ip").args(["netns", "add", &name]),
            &format!("ip netns add {name}"),
        );
        let handle = File::open(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("open the namespace {name}: {e}"));
        NetNs {
            name,
            handle,
            index: (n % 250) as u8 + 1,
        }
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A small number unique to this namespace in this process, 1 to 250 (for addresses).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Runs `ip -n <ns> args…`, which must succeed, and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = checked(
            Command::new("ip").args(["-n", &self.name]).args(args),
            &format!("ip -n {} {}", self.name, args.join(" ")),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The names of the namespace's links.
    pub fn links(&self) -> Vec<String> {
        // `ip -o link` prints one line per link: "N: NAME[@PARENT]: <FLAGS> …".
        self.ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Runs `f` on a thread that entered the namespace (setns(2) affects only that thread),
    /// with IPv6 disabled there so that the kernel sends no unsolicited frames (router and
    /// neighbour solicitations) out of new interfaces.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.handle.as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain system call on a descriptor `self` keeps open; it changes
                // only this thread's network namespace.
                let ret = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(ret, 0, "setns: {}", io::Error::last_os_error());
                for which in ["all", "default"] {
                    let _ = std::fs::write(
                        format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"),
                        "1",
                    );
                }
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Sets `cmd` to start inside the namespace.
    pub fn enter(&self, cmd: &mut Command) {
        let fd = self.handle.as_raw_fd();
        // SAFETY: the closure runs in the child between fork and exec and only makes the
        // async-signal-safe setns system call on a descriptor the parent keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    /// Deletes the namespace now and checks that it is gone.
    pub fn remove(self) {
        let name = self.name.clone();
        drop(self);
        let out = checked(Command::new("ip").args(["netns", "list"]), "ip netns list");
        let listed = String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str()));
        assert!(!listed, "the namespace {name} is still there");
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

/// Runs `cmd`, which must succeed; `what` names it in the panic message.
fn checked(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (iproute2 is needed)"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}
