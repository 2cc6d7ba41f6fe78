//! Fuzz target: any bytes given to the config parser, with every
//! combination of load options, must be accepted or rejected, never panic;
//! an accepted config must satisfy the invariants the rest of the agent
//! relies on, and survive a round trip through its own JSON form.
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
        let Ok(loaded) = config::parse(data, &opts) else {
            continue;
        };
        let config = &loaded.config;
        assert!(config.resync_interval >= Duration::from_secs(1));
        let count = i64::try_from(config.non_masquerade_cidrs.len()).unwrap_or(i64::MAX);
        assert!(count <= config.cidr_limit);
        if !enable_ipv6 {
            assert!(
                config
                    .non_masquerade_cidrs
                    .iter()
                    .all(|net| matches!(net, IpNet::V4(_)))
            );
        }
        for net in &config.non_masquerade_cidrs {
            assert_eq!(*net, net.trunc(), "host bits set in {net}");
        }
        // Our own JSON form reads back as the same config.
        let json = config.to_json();
        let again = config::parse(json.as_bytes(), &opts)
            .unwrap_or_else(|e| panic!("{json} rejected: {e}"));
        assert_eq!(&again.config, config, "{json}");
        assert_eq!(again.config.fingerprint(), config.fingerprint());
    }
    let _ = config::configmap_data(data, "config");
});
