//! MAC addresses: generated, parsed and formatted as Cloud Hypervisor writes them.

/// A random MAC address: locally administered (bit 1 of the first byte set) and unicast
/// (bit 0 clear).
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    // SAFETY: getrandom writes at most `mac.len()` bytes into the array.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr() as *mut libc::c_void, mac.len(), 0) };
    if n != mac.len() as isize {
        // No kernel randomness (cannot happen on Linux 3.17+): fall back on the standard
        // library's randomly seeded hasher.
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        mac.copy_from_slice(&h.finish().to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & !0x01) | 0x02;
    mac
}

/// Parses a unicast MAC address written as six colon-separated pairs of hex digits
/// (`52:54:00:12:34:56`).
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let bad = || {
        format!(
            "{text:?} is not a MAC address (write six pairs of hex digits, e.g. 52:54:00:12:34:56)"
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{text} is a multicast address (the lowest bit of the first byte must be 0)"
        ));
    }
    Ok(mac)
}

/// Formats a MAC address as `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
