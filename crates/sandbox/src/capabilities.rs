//! Dropping capabilities, one thread at a time.
//!
//! Capability sets belong to threads: `capset` and `PR_CAPBSET_DROP` change the calling
//! thread only, so each thread lowers its own, keeping just what its role needs. Everything
//! else goes from every set — effective, permitted, inheritable, ambient and, where the
//! thread may still change it (`CAP_SETPCAP`), the bounding set — so it cannot come back.

use caps::{CapSet, Capability, CapsHashSet};

/// Why capabilities could not be lowered.
#[derive(Debug, thiserror::Error)]
#[error("cannot drop capabilities: {0}")]
pub struct CapsError(String);

impl From<caps::errors::CapsError> for CapsError {
    fn from(e: caps::errors::CapsError) -> Self {
        CapsError(e.to_string())
    }
}

/// Lowers the calling thread's capabilities to `keep` (as far as it holds them); returns
/// what it holds afterwards.
pub fn keep_only(keep: &[Capability]) -> Result<Vec<String>, CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let effective = caps::read(None, CapSet::Effective)?;
    if effective.contains(&Capability::CAP_SETPCAP) {
        // Dropping a capability the set no longer holds succeeds: no need to read first.
        for cap in caps::all() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    // Kernels without ambient capabilities have none to clear.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient)?;
    }
    caps::clear(None, CapSet::Inheritable)?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    // The effective set must stay within the permitted one: lower it first.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(names(&kept))
}

/// The calling thread's effective capabilities, by name.
pub fn effective() -> Vec<String> {
    caps::read(None, CapSet::Effective)
        .map(|s| names(&s))
        .unwrap_or_default()
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// Parses a capability name as the kernel spells it (`CAP_NET_ADMIN`).
pub fn parse(name: &str) -> Option<Capability> {
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_only_what_it_asks_for_and_others_keep_theirs() {
        let before = effective();
        let kept = std::thread::spawn(|| {
            let kept = keep_only(&[Capability::CAP_NET_ADMIN]).unwrap();
            assert_eq!(effective(), kept);
            // Nothing may be raised again.
            assert!(caps::raise(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).is_err());
            if !kept.is_empty() {
                assert!(!caps::has_cap(None, CapSet::Bounding, Capability::CAP_SYS_ADMIN).unwrap());
            }
            kept
        })
        .join()
        .unwrap();
        assert!(kept.iter().all(|c| c == "CAP_NET_ADMIN"));
        // The other thread's sets are its own.
        assert_eq!(effective(), before);
        assert_eq!(parse("CAP_NET_ADMIN"), Some(Capability::CAP_NET_ADMIN));
    }
}
