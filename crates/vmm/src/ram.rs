//! How a VM's RAM is laid out and backed: one zone (the whole of `memory`), or the
//! `memory.zones` in order, each with its own backing and its own room for hot-plugged
//! memory.
//!
//! Boot RAM is the zones' sizes end to end, split around the 32-bit hole as
//! [`layout::ram_regions`] says; a zone may so be two regions. The rooms for hot-plugged
//! memory follow one another from [`layout::hotplug_memory_start`], in zone order, so the
//! 64-bit PCI window starts past all of them. A shared zone's memory is in the memfd of its
//! page size, after whatever other zones put there; a file-backed zone's in its file, from
//! the start.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use config::MemoryConfig;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::files::{self, Kind};
use crate::guest_ram::{self, Backing};
use crate::x86_64::layout;

/// One zone of RAM.
pub struct Zone {
    /// Its name (`None` for the whole of RAM without zones).
    pub id: Option<String>,
    /// Bytes at boot.
    pub size: u64,
    /// Its pages.
    pub backing: Backing,
    /// The file it lives in, if any, opened read-write at creation.
    file: Option<File>,
    /// Where its room for hot-plugged memory starts.
    pub room_start: u64,
    /// Bytes of room.
    pub room: u64,
    /// Bytes of the room already used.
    pub hotplugged: u64,
}

/// The RAM of a VM.
pub struct Ram {
    /// The zones, in guest address order.
    pub zones: Vec<Zone>,
    /// Bytes of each memfd (by page size) already holding guest memory.
    memfd_used: [u64; 3],
}

fn memfd_slot(backing: Backing) -> usize {
    match backing.hugepage_size {
        None => 0,
        Some(guest_ram::HUGE_1G) => 2,
        Some(_) => 1,
    }
}

impl Ram {
    /// The zones `memory` describes; each zone file is opened here (read-write, a regular
    /// file) and made long enough for the zone and its room.
    pub fn plan(memory: &MemoryConfig) -> io::Result<Ram> {
        let zones_cfg = memory.zones.as_deref().unwrap_or_default();
        let mut zones = Vec::new();
        if zones_cfg.is_empty() {
            zones.push(Zone {
                id: None,
                size: memory.size,
                backing: Backing::of(memory),
                file: None,
                room_start: 0,
                room: memory.hotplug_size.unwrap_or(0),
                hotplugged: 0,
            });
        }
        for z in zones_cfg {
            let file = match &z.file {
                Some(path) => Some(open_zone_file(path, z.size + z.hotplug_size.unwrap_or(0))?),
                None => None,
            };
            zones.push(Zone {
                id: Some(z.id.clone()),
                size: z.size,
                backing: Backing {
                    shared: z.shared,
                    hugepage_size: z.page_size(),
                },
                file,
                room_start: 0,
                room: z.hotplug_size.unwrap_or(0),
                hotplugged: 0,
            });
        }
        let boot: u64 = zones.iter().map(|z| z.size).sum();
        let mut room_start = layout::hotplug_memory_start(boot);
        for z in &mut zones {
            z.room_start = room_start;
            room_start += z.room;
        }
        Ok(Ram {
            zones,
            memfd_used: [0; 3],
        })
    }

    /// Bytes of RAM at boot.
    pub fn boot_size(&self) -> u64 {
        self.zones.iter().map(|z| z.size).sum()
    }

    /// Bytes of room for hot-plugged memory, all zones together.
    pub fn room(&self) -> u64 {
        self.zones.iter().map(|z| z.room).sum()
    }

    /// Maps boot RAM: the shared memfds emptied first, then each zone's part of each RAM
    /// range.
    pub fn map_boot(&mut self) -> io::Result<GuestMemoryMmap> {
        for z in &self.zones {
            if z.backing.shared && z.file.is_none() {
                guest_ram::release(z.backing);
            }
        }
        self.memfd_used = [0; 3];
        let mut ranges = layout::ram_regions(self.boot_size()).into_iter();
        let mut current = ranges.next();
        let mut regions = Vec::new();
        for index in 0..self.zones.len() {
            let mut left = self.zones[index].size;
            let mut zone_offset = 0u64;
            while left > 0 {
                let Some((start, len)) = current else {
                    return Err(io::Error::other("zones larger than the RAM layout"));
                };
                let take = left.min(len);
                regions.push(self.map_part(index, start, take, zone_offset)?);
                left -= take;
                zone_offset += take;
                current = if take == len {
                    ranges.next()
                } else {
                    Some((start + take, len - take))
                };
            }
        }
        GuestMemoryMmap::from_regions(regions).map_err(|e| io::Error::other(e.to_string()))
    }

    /// Maps `len` bytes of zone `index` at guest address `start`, `zone_offset` bytes into
    /// the zone (which places it in the zone's file).
    fn map_part(
        &mut self,
        index: usize,
        start: u64,
        len: u64,
        zone_offset: u64,
    ) -> io::Result<GuestRegionMmap> {
        let zone = &self.zones[index];
        let size = usize::try_from(len).map_err(|_| io::Error::other("zone too large"))?;
        let named = |e: io::Error| {
            let what = zone
                .id
                .as_deref()
                .map_or(String::new(), |id| format!("zone {id}: "));
            io::Error::new(e.kind(), format!("{what}{e}"))
        };
        if let Some(file) = &zone.file {
            return guest_ram::map_file_region(
                GuestAddress(start),
                size,
                file,
                zone_offset,
                zone.backing.shared,
            )
            .map_err(named);
        }
        let slot = memfd_slot(zone.backing);
        let offset = self.memfd_used[slot];
        let region = guest_ram::map_region(GuestAddress(start), size, offset, zone.backing)
            .map_err(named)?;
        if zone.backing.shared {
            self.memfd_used[slot] += len;
        }
        Ok(region)
    }

    /// Maps `bytes` more of zone `index`'s room (memory hot-plug); returns the region and
    /// where it starts. The zone counts it only once [`Ram::commit`] is called.
    pub fn map_hotplug(&mut self, index: usize, bytes: u64) -> io::Result<GuestRegionMmap> {
        let zone = &self.zones[index];
        let start = zone.room_start + zone.hotplugged;
        let offset = zone.size + zone.hotplugged;
        self.map_part(index, start, bytes, offset)
    }

    /// Records `bytes` of zone `index`'s room as used (after [`Ram::map_hotplug`] and the
    /// rest of the hot-plug went well).
    pub fn commit(&mut self, index: usize, bytes: u64) {
        self.zones[index].hotplugged += bytes;
    }

    /// Undoes a [`Ram::map_hotplug`] that went no further: the memfd shrinks back.
    pub fn abandon(&mut self, index: usize, bytes: u64) {
        let backing = self.zones[index].backing;
        if backing.shared && self.zones[index].file.is_none() {
            let slot = memfd_slot(backing);
            self.memfd_used[slot] -= bytes;
            guest_ram::shrink(backing, self.memfd_used[slot]);
        }
    }

    /// Gives the shared memfds' pages back (the VM goes).
    pub fn release(&self) {
        for z in &self.zones {
            if z.backing.shared && z.file.is_none() {
                guest_ram::release(z.backing);
            }
        }
    }

    /// The zone named `id`.
    pub fn zone_index(&self, id: &str) -> Option<usize> {
        self.zones.iter().position(|z| z.id.as_deref() == Some(id))
    }
}

/// Opens a zone's file read-write (a regular file), long enough for `len` bytes.
fn open_zone_file(path: &Path, len: u64) -> io::Result<File> {
    let file = files::open(
        path,
        OpenOptions::new().read(true).write(true),
        0,
        Kind::Regular,
    )
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("memory zone file {}: {e}", path.display()),
        )
    })?;
    if file.metadata()?.len() < len {
        file.set_len(len).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "memory zone file {}: cannot extend it to {len} bytes: {e}",
                    path.display()
                ),
            )
        })?;
    }
    Ok(file)
}
