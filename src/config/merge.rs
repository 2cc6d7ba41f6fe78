//! Several config sources as one config: each source (a file of a
//! directory, a ConfigMap) is a fragment that states only what it sets, and
//! the fragments merge the way Azure's ip-masq-agent-v2 merges its files:
//!
//! - `nonMasqueradeCIDRs`, `masqueradeCIDRs` and `podCIDRs` are united,
//!   without duplicates, in the order the fragments come (name order) and
//!   then their own order. A fragment without `nonMasqueradeCIDRs` adds
//!   none: the default list applies only when there is no fragment at all.
//! - `masqLinkLocal` and `masqLinkLocalIPv6` are OR-ed.
//! - `resyncInterval`: the shortest that any fragment sets (the default
//!   when none does), so no owner's interval is stretched by another's.
//! - `cidrLimit` guards each fragment against a bad edit of its own lists:
//!   it counts that fragment's CIDRs, and is not applied again to the union.
//!
//! Each fragment is decoded and validated on its own, so a bad one is
//! refused as a whole and cannot affect the others. The one check that
//! needs the union: a network that one fragment exempts and another
//! masquerades is a conflict naming both, and the merged config is refused.

use ipnet::IpNet;

use super::{
    Config, ConfigError, LoadOptions, MAX_CONFIG_BYTES, bind, decode, raw_defaults, validate,
};

/// One source's config, as it states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Lists hold only what the fragment lists; unset flags are false.
    pub config: Config,
    /// Whether the fragment sets `resyncInterval` (else it has no say).
    pub sets_resync: bool,
    /// Things corrected rather than rejected, worth logging.
    pub warnings: Vec<String>,
}

/// Pure: the bytes of one source to its validated fragment. No I/O.
pub fn parse_fragment(bytes: &[u8], opts: &LoadOptions) -> Result<Fragment, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            len: bytes.len(),
            max: MAX_CONFIG_BYTES,
        });
    }
    let tree = decode::decode(bytes)?;
    let sets_resync = bind::sets_resync(&tree);
    let mut base = raw_defaults(opts.all_reserved_ranges);
    // A fragment lists its own ranges; the defaults are for no config at all.
    base.cidrs.clear();
    let raw = bind::bind(&tree, base)?;
    let (config, mut warnings) = validate::validate(raw, opts)?;
    warnings.splice(0..0, bind::unknown_keys(&tree));
    Ok(Fragment {
        config,
        sets_resync,
        warnings,
    })
}

/// Where each CIDR of a merged config came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// (config key, CIDR, the sources that list it), in merged order.
    pub cidrs: Vec<(&'static str, IpNet, Vec<String>)>,
}

/// The merged config and where its CIDRs came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub config: Config,
    pub origins: Origins,
}

/// Pure: merge named fragments (in the order given) into one config. No
/// fragment at all means the defaults.
pub fn merge(fragments: &[(String, &Fragment)], opts: &LoadOptions) -> Result<Merged, ConfigError> {
    let defaults = Config::defaults(opts.all_reserved_ranges);
    if fragments.is_empty() {
        return Ok(Merged {
            config: defaults,
            origins: Origins::default(),
        });
    }
    let mut origins = Origins::default();
    let mut unite = |key: &'static str, list: fn(&Config) -> &Vec<IpNet>| {
        let mut out: Vec<IpNet> = Vec::new();
        for (name, fragment) in fragments {
            for net in list(&fragment.config) {
                match origins
                    .cidrs
                    .iter_mut()
                    .find(|(k, n, _)| *k == key && n == net)
                {
                    Some((_, _, from)) => {
                        if !from.contains(name) {
                            from.push(name.clone());
                        }
                    }
                    None => {
                        out.push(*net);
                        origins.cidrs.push((key, *net, vec![name.clone()]));
                    }
                }
            }
        }
        out
    };
    let non_masquerade_cidrs = unite("nonMasqueradeCIDRs", |c| &c.non_masquerade_cidrs);
    let masquerade_cidrs = unite("masqueradeCIDRs", |c| &c.masquerade_cidrs);
    let pod_cidrs = unite("podCIDRs", |c| &c.pod_cidrs);
    if let Some(net) = masquerade_cidrs
        .iter()
        .find(|n| non_masquerade_cidrs.contains(n))
    {
        let from = |key: &str| {
            origins
                .cidrs
                .iter()
                .find(|(k, n, _)| *k == key && n == net)
                .map(|(_, _, from)| from.join(", "))
                .unwrap_or_default()
        };
        return Err(ConfigError::CidrInBothSources {
            cidr: net.to_string(),
            non_masquerade: from("nonMasqueradeCIDRs"),
            masquerade: from("masqueradeCIDRs"),
        });
    }
    let resync_interval = fragments
        .iter()
        .filter(|(_, f)| f.sets_resync)
        .map(|(_, f)| f.config.resync_interval)
        .min()
        .unwrap_or(defaults.resync_interval);
    let cidr_limit = fragments
        .iter()
        .map(|(_, f)| f.config.cidr_limit)
        .max()
        .unwrap_or(defaults.cidr_limit);
    let any = |flag: fn(&Config) -> bool| fragments.iter().any(|(_, f)| flag(&f.config));
    Ok(Merged {
        config: Config {
            non_masquerade_cidrs,
            masquerade_cidrs,
            pod_cidrs,
            cidr_limit,
            masq_link_local: any(|c| c.masq_link_local),
            masq_link_local_ipv6: any(|c| c.masq_link_local_ipv6),
            resync_interval,
        },
        origins,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn opts() -> LoadOptions {
        LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6: true,
        }
    }

    fn fragment(text: &str) -> Fragment {
        parse_fragment(text.as_bytes(), &opts()).unwrap()
    }

    fn merged(parts: &[(&str, &str)]) -> Result<Merged, ConfigError> {
        let fragments: Vec<(String, Fragment)> = parts
            .iter()
            .map(|(n, t)| (n.to_string(), fragment(t)))
            .collect();
        let named: Vec<(String, &Fragment)> =
            fragments.iter().map(|(n, f)| (n.clone(), f)).collect();
        merge(&named, &opts())
    }

    fn nets(config: &[IpNet]) -> Vec<String> {
        config.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn a_fragment_states_only_what_it_sets() {
        let f = fragment("masqLinkLocal: true\n");
        assert!(
            f.config.non_masquerade_cidrs.is_empty(),
            "no default list in a fragment"
        );
        assert!(f.config.masq_link_local);
        assert!(!f.sets_resync);
        assert!(fragment("resyncInterval: 5s\n").sets_resync);
    }

    #[test]
    fn lists_are_united_without_duplicates_in_fragment_order() {
        let m = merged(&[
            ("platform", "nonMasqueradeCIDRs: [10.0.0.0/8, 10.128.0.0/9]\n"),
            ("users", "nonMasqueradeCIDRs: [192.168.0.0/16, 10.0.0.0/8]\nmasqueradeCIDRs: [10.9.0.0/16]\n"),
        ])
        .unwrap();
        assert_eq!(
            nets(&m.config.non_masquerade_cidrs),
            ["10.0.0.0/8", "10.128.0.0/9", "192.168.0.0/16"]
        );
        assert_eq!(nets(&m.config.masquerade_cidrs), ["10.9.0.0/16"]);
        let from_both = m
            .origins
            .cidrs
            .iter()
            .find(|(k, n, _)| *k == "nonMasqueradeCIDRs" && n.to_string() == "10.0.0.0/8")
            .unwrap();
        assert_eq!(from_both.2, ["platform", "users"]);
    }

    #[test]
    fn flags_are_ored_and_the_shortest_interval_wins() {
        let m = merged(&[
            ("a", "masqLinkLocal: true\nresyncInterval: 30s\n"),
            ("b", "masqLinkLocalIPv6: false\nresyncInterval: 10s\n"),
            ("c", "nonMasqueradeCIDRs: []\n"),
        ])
        .unwrap();
        assert!(m.config.masq_link_local);
        assert!(!m.config.masq_link_local_ipv6);
        assert_eq!(m.config.resync_interval, Duration::from_secs(10));
        // Nobody sets an interval: the default.
        let m = merged(&[("a", "masqLinkLocal: true\n")]).unwrap();
        assert_eq!(m.config.resync_interval, Duration::from_secs(60));
    }

    #[test]
    fn no_fragment_means_the_defaults() {
        let m = merge(&[], &opts()).unwrap();
        assert_eq!(m.config, Config::defaults(false));
    }

    #[test]
    fn cidr_limit_counts_each_fragment() {
        let many: Vec<String> = (0..40).map(|i| format!("10.{i}.0.0/16")).collect();
        let a = format!("nonMasqueradeCIDRs: [{}]\n", many[..20].join(", "));
        let b = format!("nonMasqueradeCIDRs: [{}]\n", many[20..].join(", "));
        let m = merged(&[("a", &a), ("b", &b)]).unwrap();
        assert_eq!(m.config.non_masquerade_cidrs.len(), 40);
        let err = parse_fragment(format!("cidrLimit: 10\n{a}").as_bytes(), &opts()).unwrap_err();
        assert!(err.to_string().contains("up to 10 CIDRs"), "{err}");
    }

    #[test]
    fn a_network_exempted_by_one_and_masqueraded_by_another_is_a_conflict() {
        let err = merged(&[
            ("platform", "nonMasqueradeCIDRs: [10.9.0.0/16]\n"),
            ("users", "masqueradeCIDRs: [10.9.0.0/16]\n"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"CIDR "10.9.0.0/16" is in nonMasqueradeCIDRs of platform and in masqueradeCIDRs of users; a destination cannot be both masqueraded and not, so remove it from one of them"#
        );
    }
}
