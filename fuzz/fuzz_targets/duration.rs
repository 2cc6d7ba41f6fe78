//! Fuzz target: Go duration parsing never panics, and every duration it
//! yields (every i64, in fact) formats to text that parses back to itself.
#![no_main]

use ip_masq_agent::config::duration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(nanos) = duration::parse(text)
    {
        let formatted = duration::format(nanos);
        assert_eq!(
            duration::parse(&formatted),
            Ok(nanos),
            "{text:?} -> {formatted:?}"
        );
    }
    if let Some(bytes) = data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
        let nanos = i64::from_le_bytes(bytes);
        let formatted = duration::format(nanos);
        assert_eq!(
            duration::parse(&formatted),
            Ok(nanos),
            "{nanos} -> {formatted:?}"
        );
    }
});
