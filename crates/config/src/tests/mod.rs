//! Unit tests of the whole crate, one file per area.

mod device_validation;
mod params;
mod serde_json_io;
mod validation;
