//! The x86_64 machine: memory layout, boot protocols, CPU state and firmware tables.

pub mod acpi;
pub mod amx;
pub mod boot;
pub mod core_scheduling;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod smbios;
pub mod topology;
