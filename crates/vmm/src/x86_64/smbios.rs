//! SMBIOS 3.0 tables: who the machine says it is (`platform.system_serial_number`,
//! `system_uuid`, `oem_strings`, manufacturer and the like), read by `dmidecode` and by
//! Linux's `/sys/class/dmi/id` in the guest.
//!
//! The 64-bit entry point sits at [`SMBIOS_START`], in the BIOS area a guest without
//! firmware scans (0xF0000-0xFFFFF, 16-byte aligned), with the structure table right after
//! it: BIOS information (type 0, marking a virtual machine), system information (type 1),
//! a chassis (type 3), OEM strings (type 11) when given, and the end marker (type 127).

use config::{parse_uuid, PlatformConfig};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the entry point goes: in the BIOS area, past the MP tables.
pub const SMBIOS_START: u64 = 0xf_8000;
/// The most the tables may take there (to the end of the BIOS area).
const SMBIOS_MAX: usize = 0x10_0000 - SMBIOS_START as usize;
const ENTRY_POINT_LEN: usize = 0x18;

const TYPE_BIOS: u8 = 0;
const TYPE_SYSTEM: u8 = 1;
const TYPE_CHASSIS: u8 = 3;
const TYPE_OEM_STRINGS: u8 = 11;
const TYPE_END: u8 = 127;

/// Why the tables could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// They do not fit the BIOS area.
    #[error("SMBIOS tables of {0} bytes do not fit below 1 MiB")]
    TooLarge(usize),
    /// Guest memory refused the write.
    #[error("cannot write the SMBIOS tables: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// One structure: its formatted area, then its strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<String>,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        let mut bytes = vec![kind, 0];
        bytes.extend_from_slice(&handle.to_le_bytes());
        Structure {
            bytes,
            strings: Vec::new(),
        }
    }

    /// Adds a string field: its number in the string set, or 0 for none.
    fn string(&mut self, text: Option<&str>) -> &mut Self {
        let index = match text.filter(|t| !t.is_empty()) {
            Some(t) => {
                self.strings.push(t.to_string());
                self.strings.len() as u8
            }
            None => 0,
        };
        self.bytes.push(index);
        self
    }

    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes[1] = self.bytes.len() as u8;
        let mut out = self.bytes;
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            for s in &self.strings {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            out.push(0);
        }
        out
    }
}

/// The UUID as SMBIOS stores it: the first three fields little endian.
fn uuid_bytes(text: &str) -> [u8; 16] {
    let mut b = parse_uuid(text).unwrap_or_default();
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// The structure table for `platform` (defaults when absent).
pub fn structures(platform: Option<&PlatformConfig>) -> Vec<u8> {
    let default = PlatformConfig::default();
    let p = platform.unwrap_or(&default);
    let manufacturer = p.system_manufacturer.as_deref().unwrap_or("Palisade");
    let product = p.system_product_name.as_deref().unwrap_or("palisade");
    let mut table = Vec::new();

    let mut bios = Structure::new(TYPE_BIOS, 0);
    bios.string(Some("Palisade")) // vendor
        .string(Some(env!("CARGO_PKG_VERSION"))) // version
        .raw(&0xe800u16.to_le_bytes()) // starting segment
        .string(None) // release date
        .raw(&[0]) // ROM size
        .raw(&(1u64 << 3).to_le_bytes()) // characteristics: not supported
        .raw(&[0, 1 << 4]) // extension byte 2: a virtual machine
        .raw(&[0, 0, 0xff, 0xff]); // BIOS release, no embedded controller
    table.extend(bios.finish());

    let mut system = Structure::new(TYPE_SYSTEM, 1);
    system
        .string(Some(manufacturer))
        .string(Some(product))
        .string(p.system_version.as_deref())
        .string(p.serial())
        .raw(&p.uuid().map(uuid_bytes).unwrap_or_default())
        .raw(&[6]) // wake-up: power switch
        .string(p.system_sku_number.as_deref())
        .string(p.system_family.as_deref());
    table.extend(system.finish());

    let mut chassis = Structure::new(TYPE_CHASSIS, 2);
    chassis
        .string(Some(manufacturer))
        .raw(&[1]) // type: other
        .string(None) // version
        .string(None) // serial number
        .string(p.chassis_asset_tag.as_deref())
        .raw(&[3, 3, 3, 2]) // boot-up, power supply, thermal: safe; security: unknown
        .raw(&0u32.to_le_bytes()) // OEM-defined
        .raw(&[0, 0, 0, 0]); // height, power cords, no contained elements (count, size)
    table.extend(chassis.finish());

    let oem: Vec<&str> = p
        .oem_strings
        .iter()
        .flatten()
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let mut next_handle = 3;
    if !oem.is_empty() {
        let mut strings = Structure::new(TYPE_OEM_STRINGS, next_handle);
        strings.raw(&[oem.len() as u8]);
        strings.strings = oem.iter().map(|s| s.to_string()).collect();
        table.extend(strings.finish());
        next_handle += 1;
    }
    table.extend(Structure::new(TYPE_END, next_handle).finish());
    table
}

/// The 64-bit entry point for a structure table of `len` bytes at `table`.
fn entry_point(table: u64, len: u32) -> [u8; ENTRY_POINT_LEN] {
    let mut e = [0u8; ENTRY_POINT_LEN];
    e[0..5].copy_from_slice(b"_SM3_");
    e[6] = ENTRY_POINT_LEN as u8;
    e[7] = 3; // version 3.2
    e[8] = 2;
    e[10] = 1; // entry point revision
    e[12..16].copy_from_slice(&len.to_le_bytes());
    e[16..24].copy_from_slice(&table.to_le_bytes());
    e[5] = 0u8.wrapping_sub(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)));
    e
}

/// Writes the entry point and the tables for `platform` into guest memory.
pub fn write(mem: &GuestMemoryMmap, platform: Option<&PlatformConfig>) -> Result<(), SmbiosError> {
    let table = structures(platform);
    let total = ENTRY_POINT_LEN + table.len();
    if total > SMBIOS_MAX {
        return Err(SmbiosError::TooLarge(total));
    }
    let at = SMBIOS_START + ENTRY_POINT_LEN as u64;
    mem.write_slice(
        &entry_point(at, table.len() as u32),
        GuestAddress(SMBIOS_START),
    )?;
    mem.write_slice(&table, GuestAddress(at))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a table into (type, formatted bytes, strings), as a guest's parser would.
    fn parse(mut t: &[u8]) -> Vec<(u8, Vec<u8>, Vec<String>)> {
        let mut out = Vec::new();
        while !t.is_empty() {
            let (kind, len) = (t[0], usize::from(t[1]));
            let formatted = t[..len].to_vec();
            let mut rest = &t[len..];
            let mut strings = Vec::new();
            if rest.starts_with(&[0, 0]) {
                rest = &rest[2..];
            } else {
                loop {
                    let end = rest.iter().position(|&b| b == 0).unwrap();
                    strings.push(String::from_utf8(rest[..end].to_vec()).unwrap());
                    rest = &rest[end + 1..];
                    if rest[0] == 0 {
                        rest = &rest[1..];
                        break;
                    }
                }
            }
            out.push((kind, formatted, strings));
            t = rest;
            if kind == TYPE_END {
                assert!(t.is_empty(), "bytes after the end marker");
            }
        }
        out
    }

    fn string(s: &(u8, Vec<u8>, Vec<String>), offset: usize) -> Option<&str> {
        match s.1[offset] {
            0 => None,
            n => Some(&s.2[usize::from(n) - 1]),
        }
    }

    #[test]
    fn the_system_says_what_the_platform_gives() {
        let p = PlatformConfig {
            system_serial_number: Some("SN-42".into()),
            uuid: Some("00112233-4455-6677-8899-aabbccddeeff".into()),
            oem_strings: Some(vec!["io.katacontainers.pod=1".into(), "second".into()]),
            system_manufacturer: Some("Acme".into()),
            chassis_asset_tag: Some("tag-7".into()),
            ..PlatformConfig::default()
        };
        let all = parse(&structures(Some(&p)));
        let kinds: Vec<u8> = all.iter().map(|s| s.0).collect();
        assert_eq!(
            kinds,
            [
                TYPE_BIOS,
                TYPE_SYSTEM,
                TYPE_CHASSIS,
                TYPE_OEM_STRINGS,
                TYPE_END
            ]
        );
        let bios = &all[0];
        assert_eq!(string(bios, 4), Some("Palisade"));
        assert_eq!(bios.1[0x13] & (1 << 4), 1 << 4, "a virtual machine");
        let system = &all[1];
        assert_eq!(system.1.len(), 0x1b);
        assert_eq!(string(system, 4), Some("Acme"));
        assert_eq!(string(system, 5), Some("palisade"));
        assert_eq!(string(system, 7), Some("SN-42"));
        assert_eq!(
            &system.1[8..24],
            &[
                0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
                0xee, 0xff
            ]
        );
        assert_eq!(string(&all[2], 8), Some("tag-7"));
        assert_eq!(all[3].1[4], 2);
        assert_eq!(all[3].2, ["io.katacontainers.pod=1", "second"]);
        // Handles are distinct.
        let mut handles: Vec<u16> = all
            .iter()
            .map(|s| u16::from_le_bytes([s.1[2], s.1[3]]))
            .collect();
        handles.dedup();
        assert_eq!(handles.len(), all.len());
    }

    #[test]
    fn without_a_platform_the_defaults_are_written_and_the_entry_point_checks() {
        let all = parse(&structures(None));
        assert_eq!(all.len(), 4, "no OEM strings");
        assert_eq!(string(&all[1], 7), None, "no serial number");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        write(&mem, None).unwrap();
        let mut e = [0u8; ENTRY_POINT_LEN];
        mem.read_slice(&mut e, GuestAddress(SMBIOS_START)).unwrap();
        assert_eq!(&e[..5], b"_SM3_");
        assert_eq!(e.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        assert_eq!(SMBIOS_START % 16, 0);
        let len = u32::from_le_bytes(e[12..16].try_into().unwrap()) as usize;
        let at = u64::from_le_bytes(e[16..24].try_into().unwrap());
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(at)).unwrap();
        assert_eq!(table, structures(None));
    }
}
