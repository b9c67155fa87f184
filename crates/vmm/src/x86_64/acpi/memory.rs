//! `\_SB.MHPC`: the memory hot-plug container, with one `PNP0C80` memory device per slot of
//! the memory hot-plug controller (`devices::memory_hotplug`, at [`MEMORY_HOTPLUG_START`]).
//!
//! `MSCN`, run by the GED on a memory event, sends a *device check* (Notify 1) to each slot
//! just filled; the guest then reads the device's `_STA` and `_CRS` (built from the
//! controller's base and length registers) and adds the memory. Present only when the VM has
//! room for hot-plugged memory.

use acpi_tables::{aml, Aml};

use super::{presence_method, to_bytes, RawAml};
use crate::x86_64::layout::{MEMORY_HOTPLUG_SIZE, MEMORY_HOTPLUG_START};
use devices::memory_hotplug::{MEMORY_INSERTING, MEMORY_PRESENT, MEMORY_SLOTS};

const _: () = assert!(MEMORY_HOTPLUG_START + MEMORY_HOTPLUG_SIZE <= 1 << 32);

/// Byte offsets of `_MIN`, `_MAX` and `_LEN` in a QWord address space descriptor.
const QWORD_MIN: u8 = 14;
const QWORD_MAX: u8 = 22;
const QWORD_LEN: u8 = 38;
/// Notify value: device check.
const DEVICE_CHECK: u8 = 1;

/// The ACPI name of memory slot `slot`: `M` and three hexadecimal digits.
pub(super) fn memory_name(slot: usize) -> String {
    format!("M{slot:03X}")
}

/// `\_SB.MHPC` and its memory devices.
pub(super) fn memory_container() -> Vec<u8> {
    let region = aml::OpRegion::new(
        "MHPR".into(),
        aml::OpRegionSpace::SystemMemory,
        &MEMORY_HOTPLUG_START,
        &MEMORY_HOTPLUG_SIZE,
    );
    let fields = aml::Field::new(
        "MHPR".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"MSEL", 32),
            aml::FieldEntry::Named(*b"MSTS", 32),
            aml::FieldEntry::Named(*b"MBAL", 32),
            aml::FieldEntry::Named(*b"MBAH", 32),
            aml::FieldEntry::Named(*b"MLNL", 32),
            aml::FieldEntry::Named(*b"MLNH", 32),
        ],
    );
    // Selection and the registers it picks are one transaction.
    let lock = aml::Mutex::new("MLCK".into(), 0);
    let acquire = aml::Acquire::new("MLCK".into(), 0xffff);
    let release = aml::Release::new("MLCK".into());
    let msel = aml::Path::new("MSEL");
    let select_arg = aml::Store::new(&msel, &aml::Arg(0));

    // MSTA(slot): 0xF if the slot holds memory, else 0.
    let msta = RawAml(presence_method(
        "MSTA",
        "MLCK",
        "MSEL",
        "MSTS",
        MEMORY_PRESENT,
    ));

    // MCRS(slot): a QWordMemory resource over the slot's memory.
    let template_memory = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::Cacheable,
        true,
        0u64,
        0xfffe_u64,
        None,
    );
    let template = aml::ResourceTemplate::new(vec![&template_memory]);
    let mr64 = aml::Name::new("MR64".into(), &template);
    let (min, max, len) = (
        aml::Path::new("MINL"),
        aml::Path::new("MAXL"),
        aml::Path::new("LENL"),
    );
    let buffer = aml::Path::new("MR64");
    let min_field = aml::CreateQWordField::new(&min, &buffer, &QWORD_MIN);
    let max_field = aml::CreateQWordField::new(&max, &buffer, &QWORD_MAX);
    let len_field = aml::CreateQWordField::new(&len, &buffer, &QWORD_LEN);
    let (high, low) = (aml::Local(1), aml::Local(2));
    let (mbah, mbal) = (aml::Path::new("MBAH"), aml::Path::new("MBAL"));
    let (mlnh, mlnl) = (aml::Path::new("MLNH"), aml::Path::new("MLNL"));
    let base_high = aml::ShiftLeft::new(&high, &mbah, &32u8);
    let base = aml::Or::new(&min, &high, &mbal);
    let length_high = aml::ShiftLeft::new(&low, &mlnh, &32u8);
    let length = aml::Or::new(&len, &low, &mlnl);
    let end = aml::Add::new(&high, &min, &len);
    let last = aml::Subtract::new(&max, &high, &aml::ONE);
    let return_template = aml::Return::new(&buffer);
    let mcrs = aml::Method::new(
        "MCRS".into(),
        1,
        true,
        vec![
            &mr64,
            &min_field,
            &max_field,
            &len_field,
            &acquire,
            &select_arg,
            &base_high,
            &base,
            &length_high,
            &length,
            &release,
            &end,
            &last,
            &return_template,
        ],
    );

    // MSCN: a device check for every slot just filled, each acknowledged.
    let scans: Vec<RawAml> = (0..MEMORY_SLOTS).map(|s| RawAml(scan_one(s))).collect();
    let mut mscn_body: Vec<&dyn Aml> = vec![&acquire];
    mscn_body.extend(scans.iter().map(|s| s as &dyn Aml));
    mscn_body.push(&release);
    let mscn = aml::Method::new("MSCN".into(), 0, true, mscn_body);

    let slots: Vec<RawAml> = (0..MEMORY_SLOTS)
        .map(|s| RawAml(memory_device(s)))
        .collect();
    let hid = aml::EISAName::new("PNP0A06");
    let hid = aml::Name::new("_HID".into(), &hid);
    let uid = aml::Name::new("_UID".into(), &"Memory hot-plug controller");
    let mut children: Vec<&dyn Aml> =
        vec![&hid, &uid, &region, &fields, &lock, &msta, &mcrs, &mscn];
    children.extend(slots.iter().map(|s| s as &dyn Aml));
    to_bytes(&aml::Device::new("MHPC".into(), children))
}

/// The part of `MSCN` for `slot` (the mutex held).
fn scan_one(slot: usize) -> Vec<u8> {
    let index = slot as u32;
    let (msel, msts) = (aml::Path::new("MSEL"), aml::Path::new("MSTS"));
    let status = aml::Local(0);
    let select = aml::Store::new(&msel, &index);
    let read = aml::Store::new(&status, &msts);
    let device = aml::Path::new(&memory_name(slot));
    let masked = aml::And::new(&aml::ZERO, &status, &MEMORY_INSERTING);
    let set = aml::NotEqual::new(&masked, &aml::ZERO);
    let notify = aml::Notify::new(&device, &DEVICE_CHECK);
    let acknowledge = aml::Store::new(&msts, &MEMORY_INSERTING);
    let mut out = to_bytes(&select);
    out.extend(to_bytes(&read));
    out.extend(to_bytes(&aml::If::new(&set, vec![&notify, &acknowledge])));
    out
}

/// `\_SB.MHPC.Mnnn`: memory slot `slot`.
fn memory_device(slot: usize) -> Vec<u8> {
    let index = slot as u32;
    let call_sta = aml::MethodCall::new("MSTA".into(), vec![&index]);
    let return_sta = aml::Return::new(&call_sta);
    let sta = aml::Method::new("_STA".into(), 0, false, vec![&return_sta]);
    let call_crs = aml::MethodCall::new("MCRS".into(), vec![&index]);
    let return_crs = aml::Return::new(&call_crs);
    let crs = aml::Method::new("_CRS".into(), 0, true, vec![&return_crs]);
    let hid = aml::EISAName::new("PNP0C80");
    to_bytes(&aml::Device::new(
        memory_name(slot).as_str().into(),
        vec![
            &aml::Name::new("_HID".into(), &hid),
            &aml::Name::new("_UID".into(), &index),
            &sta,
            &crs,
        ],
    ))
}
