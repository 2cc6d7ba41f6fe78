//! Validation of a bound config, in upstream's order and with its texts:
//! first the count of CIDRs against `cidrLimit` (all of them, before any is
//! parsed; the link-local ranges are never in the list), then each CIDR in
//! order: parse, alignment, then the IPv6-not-enabled check. Also our one
//! fix: a `resyncInterval` under one second is raised to one second, with a
//! warning (upstream busy-loops on zero or negative values).
//!
//! Our two lists, `masqueradeCIDRs` and `podCIDRs`, follow the same rules
//! after `nonMasqueradeCIDRs`, in that order, with the same texts prefixed by
//! the key. What must stay true:
//! - `cidrLimit` counts the three lists together (what the agent is asked to
//!   enforce), so a config with only `nonMasqueradeCIDRs` is limited exactly
//!   as upstream limits it, and spreading CIDRs over lists cannot multiply
//!   the limit;
//! - a network in both `nonMasqueradeCIDRs` and `masqueradeCIDRs` (compared
//!   as parsed networks, so `::ffff:10.0.0.0/104` is `10.0.0.0/8`) is refused:
//!   the decision at equal prefix length would be arbitrary.

use std::collections::HashSet;
use std::time::Duration;

use ipnet::IpNet;

use super::bind::Raw;
use super::cidr::{self, CidrError};
use super::duration;
use super::{Config, ConfigError, LoadOptions};

/// The shortest resync period we run with.
const MIN_RESYNC_NANOS: i64 = 1_000_000_000;

/// Validate `raw`; on success the config and any warnings.
pub(crate) fn validate(raw: Raw, opts: &LoadOptions) -> Result<(Config, Vec<String>), ConfigError> {
    let count = raw.cidrs.len() + raw.masquerade_cidrs.len() + raw.pod_cidrs.len();
    if i64::try_from(count).map_or(true, |n| n > raw.cidr_limit) {
        return Err(ConfigError::TooManyCidrs {
            limit: raw.cidr_limit,
            count,
        });
    }
    let nets = parse_list(&raw.cidrs, opts)?;
    let in_list = |key: &'static str| {
        move |error| ConfigError::InList {
            key,
            error: Box::new(error),
        }
    };
    let masquerade_cidrs =
        parse_list(&raw.masquerade_cidrs, opts).map_err(in_list("masqueradeCIDRs"))?;
    let pod_cidrs = parse_list(&raw.pod_cidrs, opts).map_err(in_list("podCIDRs"))?;
    if !masquerade_cidrs.is_empty() {
        let non_masquerade: HashSet<&IpNet> = nets.iter().collect();
        if let Some(both) = masquerade_cidrs.iter().find(|n| non_masquerade.contains(n)) {
            return Err(ConfigError::CidrInBothLists {
                cidr: both.to_string(),
            });
        }
    }

    let mut warnings = Vec::new();
    let mut resync = raw.resync_nanos;
    if resync < MIN_RESYNC_NANOS {
        warnings.push(format!(
            "resyncInterval {} is below the 1s minimum; using 1s",
            duration::format(resync)
        ));
        resync = MIN_RESYNC_NANOS;
    }
    let config = Config {
        non_masquerade_cidrs: nets,
        masquerade_cidrs,
        pod_cidrs,
        cidr_limit: raw.cidr_limit,
        masq_link_local: raw.masq_link_local,
        masq_link_local_ipv6: raw.masq_link_local_ipv6,
        resync_interval: Duration::from_nanos(resync.unsigned_abs()),
    };
    Ok((config, warnings))
}

/// Parse, align and family-check each CIDR of one list, in order.
fn parse_list(texts: &[String], opts: &LoadOptions) -> Result<Vec<IpNet>, ConfigError> {
    let mut nets = Vec::with_capacity(texts.len());
    for text in texts {
        let net = cidr::parse(text).map_err(|e| match e {
            CidrError::Parse => ConfigError::UnparsableCidr { cidr: text.clone() },
            CidrError::Misaligned { ip, network } => ConfigError::MisalignedCidr {
                cidr: text.clone(),
                ip,
                network,
            },
            CidrError::Mapped { ipv4 } => ConfigError::MappedCidr {
                cidr: text.clone(),
                ipv4,
            },
        })?;
        if !opts.enable_ipv6 && matches!(net, IpNet::V6(_)) {
            return Err(ConfigError::Ipv6NotEnabled { cidr: text.clone() });
        }
        nets.push(net);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(cidrs: &[&str], limit: i64) -> Raw {
        Raw {
            cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
            masquerade_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            cidr_limit: limit,
            masq_link_local: false,
            masq_link_local_ipv6: false,
            resync_nanos: 60_000_000_000,
        }
    }

    fn err(r: Raw, enable_ipv6: bool) -> String {
        let opts = LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6,
        };
        validate(r, &opts).unwrap_err().to_string()
    }

    #[test]
    fn count_is_checked_first() {
        assert_eq!(
            err(raw(&["bad", "worse"], 1), false),
            "the daemon can only accept up to 1 CIDRs (excluding link-local), but got 2 CIDRs (excluding link local)"
        );
        assert_eq!(
            err(raw(&[], -1), false),
            "the daemon can only accept up to -1 CIDRs (excluding link-local), but got 0 CIDRs (excluding link local)"
        );
    }

    #[test]
    fn cidrs_checked_in_order_parse_align_family() {
        assert_eq!(
            err(raw(&["10.0.0.1/8", "abcdefg"], 64), false),
            r#"CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#
        );
        assert_eq!(
            err(raw(&["fc00::/7", "10.0.0.1/8"], 64), false),
            "ipv6 is not enabled, but ipv6 cidr fc00::/7 provided. Enable ipv6 using --enable-ipv6 agent flag"
        );
        // Parse and alignment come before the family check of the same CIDR.
        assert_eq!(
            err(raw(&["fc00::1/7"], 64), false),
            r#"CIDR "fc00::1/7" is not aligned to a CIDR block, ip: "fc00::1" network: "fc00::/7""#
        );
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn limit_counts_all_three_lists() {
        let mut r = raw(&["10.0.0.0/8"], 3);
        r.masquerade_cidrs = strings(&["10.9.0.0/16", "bad"]);
        r.pod_cidrs = strings(&["10.4.0.0/14"]);
        assert_eq!(
            err(r.clone(), false),
            "the daemon can only accept up to 3 CIDRs (excluding link-local), but got 4 CIDRs (excluding link local)"
        );
        r.cidr_limit = 4;
        assert_eq!(
            err(r, false),
            r#"masqueradeCIDRs: CIDR "bad" could not be parsed, invalid CIDR address: bad"#
        );
    }

    #[test]
    fn new_lists_use_the_upstream_rules_and_name_their_key() {
        let mut r = raw(&["10.0.0.0/8"], 64);
        r.masquerade_cidrs = strings(&["10.9.0.1/16"]);
        assert_eq!(
            err(r, false),
            r#"masqueradeCIDRs: CIDR "10.9.0.1/16" is not aligned to a CIDR block, ip: "10.9.0.1" network: "10.9.0.0/16""#
        );
        let mut r = raw(&[], 64);
        r.pod_cidrs = strings(&["10.4.0.0/14", "fd00:10::/64"]);
        assert_eq!(
            err(r.clone(), false),
            "podCIDRs: ipv6 is not enabled, but ipv6 cidr fd00:10::/64 provided. Enable ipv6 using --enable-ipv6 agent flag"
        );
        let opts = LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6: true,
        };
        let (config, _) = validate(r, &opts).unwrap();
        assert_eq!(
            config.pod_cidrs,
            [
                "10.4.0.0/14".parse::<IpNet>().unwrap(),
                "fd00:10::/64".parse().unwrap()
            ]
        );
        // Upstream's list is checked first, with upstream's text unprefixed.
        let mut r = raw(&["abc"], 64);
        r.masquerade_cidrs = strings(&["xyz"]);
        assert_eq!(
            err(r, false),
            r#"CIDR "abc" could not be parsed, invalid CIDR address: abc"#
        );
    }

    #[test]
    fn the_same_network_in_both_lists_is_refused() {
        let mut r = raw(&["10.0.0.0/8", "10.9.0.0/16"], 64);
        r.masquerade_cidrs = strings(&["10.9.5.0/24", "10.9.0.0/16"]);
        assert_eq!(
            err(r, true),
            r#"CIDR "10.9.0.0/16" is in both nonMasqueradeCIDRs and masqueradeCIDRs; a destination cannot be both masqueraded and not, so remove it from one of them"#
        );
        // Duplicates within one list stay allowed, as upstream allows them.
        let mut r = raw(&["10.0.0.0/8", "10.0.0.0/8"], 64);
        r.masquerade_cidrs = strings(&["10.9.0.0/16", "10.9.0.0/16"]);
        r.pod_cidrs = strings(&["10.0.0.0/8", "10.9.0.0/16"]);
        let (config, _) = validate(r, &LoadOptions::default()).unwrap();
        assert_eq!(config.masquerade_cidrs.len(), 2);
    }

    #[test]
    fn resync_is_floored_with_a_warning() {
        let mut r = raw(&[], 64);
        r.resync_nanos = 0;
        let (config, warnings) = validate(r, &LoadOptions::default()).unwrap();
        assert_eq!(config.resync_interval, Duration::from_secs(1));
        assert_eq!(
            warnings,
            vec!["resyncInterval 0s is below the 1s minimum; using 1s".to_owned()]
        );
        let mut r = raw(&[], 64);
        r.resync_nanos = -5_000_000_000;
        let (config, warnings) = validate(r, &LoadOptions::default()).unwrap();
        assert_eq!(config.resync_interval, Duration::from_secs(1));
        assert_eq!(
            warnings,
            vec!["resyncInterval -5s is below the 1s minimum; using 1s".to_owned()]
        );
        let mut r = raw(&[], 64);
        r.resync_nanos = 1_000_000_000;
        let (config, warnings) = validate(r, &LoadOptions::default()).unwrap();
        assert_eq!(config.resync_interval, Duration::from_secs(1));
        assert!(warnings.is_empty());
    }
}
