//! Fuzz target: any bytes given to the config parser, with every
//! combination of load options, must be accepted or rejected, never panic;
//! an accepted config must satisfy the invariants the rest of the agent
//! relies on (for all three CIDR lists: aligned, of an enabled family,
//! counted together against `cidrLimit`, no network both masqueraded and
//! not), and survive a round trip through its own JSON form.
#![no_main]

use std::time::Duration;

use ip_masq_agent::config::{self, LoadOptions};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for (all_reserved_ranges, enable_ipv6) in
        [(false, false), (false, true), (true, false), (true, true)]
    {
        let opts = LoadOptions {
            all_reserved_ranges,
            enable_ipv6,
        };
        let loaded = match config::parse(data, &opts) {
            Ok(loaded) => loaded,
            Err(err) => {
                // What an error adds to its text must not panic either.
                let _ = (err.hint(), err.line());
                continue;
            }
        };
        let config = &loaded.config;
        assert!(config.resync_interval >= Duration::from_secs(1));
        let lists = [
            &config.non_masquerade_cidrs,
            &config.masquerade_cidrs,
            &config.pod_cidrs,
        ];
        let total: usize = lists.iter().map(|l| l.len()).sum();
        let count = i64::try_from(total).unwrap_or(i64::MAX);
        assert!(count <= config.cidr_limit);
        for net in lists.iter().flat_map(|l| l.iter()) {
            assert_eq!(*net, net.trunc(), "host bits set in {net}");
            assert!(enable_ipv6 || matches!(net, IpNet::V4(_)), "{net} without --enable-ipv6");
        }
        for net in &config.masquerade_cidrs {
            assert!(
                !config.non_masquerade_cidrs.contains(net),
                "{net} in both nonMasqueradeCIDRs and masqueradeCIDRs"
            );
        }
        // Our own JSON form reads back as the same config.
        let json = config.to_json();
        let again = config::parse(json.as_bytes(), &opts)
            .unwrap_or_else(|e| panic!("{json} rejected: {e}"));
        assert_eq!(&again.config, config, "{json}");
        assert_eq!(
            again.config.fingerprint_with_flags(""),
            config.fingerprint_with_flags("")
        );
    }
    // A manifest's data, and where in the file it starts: any answer, no panic.
    if let Ok(Some(inner)) = config::configmap_data(data, "config") {
        if let Some(line) = config::manifest_data_line(data, "config", &inner) {
            assert!(line >= 2, "data cannot start on the file's first line");
        }
    }
});
