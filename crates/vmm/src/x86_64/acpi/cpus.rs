//! `\_SB.CPUS`: the processor container, with one `ACPI0007` device per vCPU the guest may
//! ever have, backed by the vCPU hot-plug controller (`devices::cpu_hotplug`, at
//! [`CPU_HOTPLUG_START`]).
//!
//! `CSCN`, run by the GED on a vCPU event, walks every vCPU: one just added gets a *device
//! check* (Notify 1), after which the guest reads its `_STA` and `_MAT` and brings it up; one
//! the VMM wants back gets an *eject request* (Notify 3), after which the guest takes it
//! offline and runs its `_EJ0`. vCPU 0 has no `_EJ0`: it is never removed.

use acpi_tables::{aml, Aml};

use super::{presence_method, to_bytes, AcpiLayout, RawAml};
use crate::x86_64::layout::{CPU_HOTPLUG_SIZE, CPU_HOTPLUG_START};
use devices::cpu_hotplug::{CPU_EJECT, CPU_INSERTING, CPU_PRESENT, CPU_REMOVING};

const _: () = assert!(CPU_HOTPLUG_START + CPU_HOTPLUG_SIZE <= 1 << 32);

/// MADT structure type of a processor local APIC, and its length (`_MAT` returns one).
const LOCAL_APIC_ENTRY: [u8; 2] = [0, 8];
/// Its "enabled" flag.
const LOCAL_APIC_ENABLED: u8 = 1;
/// Notify values: device check, eject request (ACPI 5.6.6).
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;

/// The ACPI name of vCPU `index`: `C` and three hexadecimal digits.
pub(super) fn cpu_name(index: u8) -> String {
    format!("C{index:03X}")
}

/// `\_SB.CPUS`, for the vCPUs of `layout`.
pub(super) fn processor_container(layout: &AcpiLayout) -> Vec<u8> {
    let max = layout.max_vcpus.max(layout.boot_vcpus);
    let region = aml::OpRegion::new(
        "PRST".into(),
        aml::OpRegionSpace::SystemMemory,
        &CPU_HOTPLUG_START,
        &CPU_HOTPLUG_SIZE,
    );
    let fields = aml::Field::new(
        "PRST".into(),
        aml::FieldAccessType::DWord,
        aml::FieldLockRule::NoLock,
        aml::FieldUpdateRule::WriteAsZeroes,
        vec![
            aml::FieldEntry::Named(*b"CSEL", 32),
            aml::FieldEntry::Named(*b"CSTS", 32),
        ],
    );
    // The selection and the status it picks are one transaction: a mutex keeps two methods
    // (the guest may run them on several CPUs at once) from interleaving.
    let lock = aml::Mutex::new("CLCK".into(), 0);
    let (csel, csts) = (aml::Path::new("CSEL"), aml::Path::new("CSTS"));
    let acquire = aml::Acquire::new("CLCK".into(), 0xffff);
    let release = aml::Release::new("CLCK".into());

    // CSTA(index): 0xF if the vCPU is present, else 0.
    let csta = RawAml(presence_method("CSTA", "CLCK", "CSEL", "CSTS", CPU_PRESENT));
    let select_arg = aml::Store::new(&csel, &aml::Arg(0));

    // CEJ0(index): the guest has taken the vCPU offline.
    let eject = aml::Store::new(&csts, &CPU_EJECT);
    let cej0 = aml::Method::new(
        "CEJ0".into(),
        1,
        true,
        vec![&acquire, &select_arg, &eject, &release],
    );

    // CSCN: tell the guest of every added or withdrawn vCPU, and acknowledge each.
    let scans: Vec<RawAml> = (0..max).map(|i| RawAml(scan_one(i))).collect();
    let mut cscn_body: Vec<&dyn Aml> = vec![&acquire];
    cscn_body.extend(scans.iter().map(|s| s as &dyn Aml));
    cscn_body.push(&release);
    let cscn = aml::Method::new("CSCN".into(), 0, true, cscn_body);

    let cpus: Vec<RawAml> = (0..max)
        .map(|i| {
            let apic_id = layout.apic_ids.get(usize::from(i)).copied().unwrap_or(i);
            RawAml(processor(i, apic_id))
        })
        .collect();
    let hid = aml::Name::new("_HID".into(), &"ACPI0010");
    let cid = aml::EISAName::new("PNP0A05");
    let cid = aml::Name::new("_CID".into(), &cid);
    let mut children: Vec<&dyn Aml> =
        vec![&hid, &cid, &region, &fields, &lock, &csta, &cej0, &cscn];
    children.extend(cpus.iter().map(|c| c as &dyn Aml));
    to_bytes(&aml::Device::new("CPUS".into(), children))
}

/// The part of `CSCN` for vCPU `index` (the mutex held).
fn scan_one(index: u8) -> Vec<u8> {
    let index_value = u32::from(index);
    let (csel, csts) = (aml::Path::new("CSEL"), aml::Path::new("CSTS"));
    let status = aml::Local(0);
    let select = aml::Store::new(&csel, &index_value);
    let read = aml::Store::new(&status, &csts);
    let device = aml::Path::new(&cpu_name(index));
    let mut out = to_bytes(&select);
    out.extend(to_bytes(&read));
    for (bit, event) in [(CPU_INSERTING, DEVICE_CHECK), (CPU_REMOVING, EJECT_REQUEST)] {
        let masked = aml::And::new(&aml::ZERO, &status, &bit);
        let set = aml::NotEqual::new(&masked, &aml::ZERO);
        let notify = aml::Notify::new(&device, &event);
        let acknowledge = aml::Store::new(&csts, &bit);
        out.extend(to_bytes(&aml::If::new(&set, vec![&notify, &acknowledge])));
    }
    out
}

/// `\_SB.CPUS.Cnnn`: vCPU `index`, whose local APIC has id `apic_id`.
fn processor(index: u8, apic_id: u8) -> Vec<u8> {
    let uid = u32::from(index);
    let call_sta = aml::MethodCall::new("CSTA".into(), vec![&uid]);
    let return_sta = aml::Return::new(&call_sta);
    let sta = aml::Method::new("_STA".into(), 0, false, vec![&return_sta]);
    // The MADT entry the guest uses for a hot-added vCPU: ACPI processor UID = index, as
    // in the MADT.
    let entry = aml::BufferData::new(vec![
        LOCAL_APIC_ENTRY[0],
        LOCAL_APIC_ENTRY[1],
        index,
        apic_id,
        LOCAL_APIC_ENABLED,
        0,
        0,
        0,
    ]);
    let mat = aml::Name::new("_MAT".into(), &entry);
    let call_ej0 = aml::MethodCall::new("CEJ0".into(), vec![&uid]);
    let ej0 = aml::Method::new("_EJ0".into(), 1, false, vec![&call_ej0]);
    let hid = aml::Name::new("_HID".into(), &"ACPI0007");
    let uid_name = aml::Name::new("_UID".into(), &uid);
    let mut children: Vec<&dyn Aml> = vec![&hid, &uid_name, &sta, &mat];
    if index != 0 {
        children.push(&ej0);
    }
    to_bytes(&aml::Device::new(cpu_name(index).as_str().into(), children))
}
