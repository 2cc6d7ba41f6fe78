//! Fuzz the command-line parser: any argument list must give a result, never
//! a panic, and an accepted one must keep the invariants callers rely on.
//!
//! The input is split on NUL bytes into arguments, as argv is; arguments
//! that are not UTF-8 are converted lossily, since `cli::parse` takes
//! strings.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = if data.is_empty() {
        Vec::new()
    } else {
        data.split(|&b| b == 0)
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect()
    };
    match ip_masq_agent::cli::parse(args) {
        Ok(invocation) => {
            let names: Vec<&str> = invocation.flags.iter().map(|(n, _)| n.as_str()).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "flags not sorted: {names:?}"
            );
            for range in &invocation.options.to_ports {
                assert!(range.first >= 1 && range.first <= range.last);
            }
        }
        Err(error) => {
            assert!(matches!(error.exit_code(), 0..=2));
            assert!(!error.to_string().is_empty());
        }
    }
});
