//! Validation of a bound config, in upstream's order and with its texts:
//! first the count of CIDRs against `cidrLimit` (all of them, before any is
//! parsed; the link-local ranges are never in the list), then each CIDR in
//! order: parse, alignment, then the IPv6-not-enabled check. Also our one
//! fix: a `resyncInterval` under one second is raised to one second, with a
//! warning (upstream busy-loops on zero or negative values).

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
    let count = raw.cidrs.len();
    if i64::try_from(count).map_or(true, |n| n > raw.cidr_limit) {
        return Err(ConfigError::TooManyCidrs {
            limit: raw.cidr_limit,
            count,
        });
    }
    let mut nets: Vec<IpNet> = Vec::with_capacity(count);
    for text in &raw.cidrs {
        let net = cidr::parse(text).map_err(|e| match e {
            CidrError::Parse => ConfigError::UnparsableCidr { cidr: text.clone() },
            CidrError::Misaligned { ip, network } => ConfigError::MisalignedCidr {
                cidr: text.clone(),
                ip,
                network,
            },
        })?;
        if !opts.enable_ipv6 && matches!(net, IpNet::V6(_)) {
            return Err(ConfigError::Ipv6NotEnabled { cidr: text.clone() });
        }
        nets.push(net);
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
        cidr_limit: raw.cidr_limit,
        masq_link_local: raw.masq_link_local,
        masq_link_local_ipv6: raw.masq_link_local_ipv6,
        resync_interval: Duration::from_nanos(resync.unsigned_abs()),
    };
    Ok((config, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(cidrs: &[&str], limit: i64) -> Raw {
        Raw {
            cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
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
