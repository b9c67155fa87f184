//! The event monitor (`--event-monitor path=PATH|fd=N`): what happens to the VMM and its VM,
//! as Cloud Hypervisor reports it — one JSON object per event, each preceded by an empty
//! line, with the time since the VMM started, its source (`vmm`, `vm`), its name
//! (`starting`, `booting`, `booted`, `pausing`, `paused`, `resuming`, `resumed`,
//! `rebooting`, `rebooted`, `shutdown`, `deleted`; `guest` `panic`, `watchdog` `expired`) and
//! properties (`null`, or names and values such as a panic's `{"event": "panic"}`).
//!
//! The file is opened (or the descriptor claimed) when Palisade starts, before any thread is
//! confined; writing to it needs nothing more.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

struct Monitor {
    out: Mutex<File>,
    start: Instant,
}

static MONITOR: OnceLock<Monitor> = OnceLock::new();

/// Sends events to `out` from now on, timed from `start`.
pub fn init(out: File, start: Instant) {
    let _ = MONITOR.set(Monitor {
        out: Mutex::new(out),
        start,
    });
}

/// The text of one event, as Cloud Hypervisor writes it.
fn format(secs: u64, nanos: u32, source: &str, event: &str, properties: &[(&str, &str)]) -> String {
    let properties = if properties.is_empty() {
        "null".to_string()
    } else {
        let fields: Vec<String> = properties
            .iter()
            .map(|(k, v)| {
                let (k, v) = (serde_json::Value::from(*k), serde_json::Value::from(*v));
                format!("    {k}: {v}")
            })
            .collect();
        format!("{{\n{}\n  }}", fields.join(",\n"))
    };
    format!(
        "\n{{\n  \"timestamp\": {{\n    \"secs\": {secs},\n    \"nanos\": {nanos}\n  }},\n  \
         \"source\": {},\n  \"event\": {},\n  \"properties\": {properties}\n}}\n",
        serde_json::Value::from(source),
        serde_json::Value::from(event)
    )
}

/// Reports `event` from `source`, if a monitor was given.
pub fn emit(source: &str, event: &str) {
    emit_with(source, event, &[]);
}

/// Reports `event` from `source` with `properties`, if a monitor was given.
pub fn emit_with(source: &str, event: &str, properties: &[(&str, &str)]) {
    let Some(m) = MONITOR.get() else {
        return;
    };
    let t = m.start.elapsed();
    let text = format(t.as_secs(), t.subsec_nanos(), source, event, properties);
    let mut out = m.out.lock().unwrap_or_else(|e| e.into_inner());
    if let Err(e) = out.write_all(text.as_bytes()) {
        log::debug!("event monitor: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_json_object_after_an_empty_line() {
        let text = format(1, 522_797_680, "vm", "pausing", &[]);
        assert!(text.starts_with("\n{"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "timestamp": {"secs": 1, "nanos": 522_797_680u32},
                "source": "vm", "event": "pausing", "properties": null,
            })
        );
        // Several in a row are read back one by one.
        let two = format(0, 1, "vmm", "starting", &[]) + &format(0, 2, "vm", "booting", &[]);
        let events: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&two)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn properties_are_an_object_indented_as_cloud_hypervisor_does() {
        let text = format(0, 3, "guest", "panic", &[("event", "panic")]);
        assert!(
            text.ends_with("  \"properties\": {\n    \"event\": \"panic\"\n  }\n}\n"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["properties"], serde_json::json!({"event": "panic"}));
    }
}
