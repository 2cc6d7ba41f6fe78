//! `explain`: the masquerade decision for destinations, asked of the config
//! a node would enforce. It reads the configured sources as `sync` does
//! (files, directories and ConfigMap manifests by their data key, ConfigMaps
//! through the API, merged as the agent merges them), validates them with
//! the agent's own load options, and prints [`policy::decide`]'s answer per
//! address. No root and no kernel: it never touches rules.
//!
//! What must stay true: each answer's first two fields are the address and
//! `masquerade` / `no-masquerade`; an IPv6 address without `--enable-ipv6`
//! gets `no-masquerade` (the agent programs no IPv6 rules then, so IPv6
//! traffic is left alone) with that reason.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::json;

use super::oneshot::{load_source, print};
use crate::cli::{Options, OutputFormat};
use crate::config::Config;
use crate::policy::{self, Verdict};

/// The reason given for IPv6 destinations when the agent leaves IPv6 alone.
const IPV6_DISABLED: &str = "ipv6 not enabled (--enable-ipv6): the agent leaves IPv6 traffic alone";

pub async fn explain(
    options: &Options,
    source: Option<IpAddr>,
    addresses: &[IpAddr],
    output: OutputFormat,
) -> Result<ExitCode> {
    let config = load(options).await?;
    let text = answers(&config, options.enable_ipv6, source, addresses, output)?;
    print(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// The config the agent would enforce from the configured sources, read
/// and merged as `sync` reads them (a ConfigMap manifest by its data key).
pub(super) async fn load(options: &Options) -> Result<Config> {
    Ok(load_source(options).await?.config)
}

/// Every answer, one line each. Pure.
fn answers(
    config: &Config,
    enable_ipv6: bool,
    source: Option<IpAddr>,
    addresses: &[IpAddr],
    output: OutputFormat,
) -> Result<String> {
    let mut out = String::new();
    for &address in addresses {
        let line = if address.is_ipv6() && !enable_ipv6 {
            match output {
                OutputFormat::Text => {
                    format!("{address} {} {IPV6_DISABLED}", Verdict::NoMasquerade)
                }
                OutputFormat::Json => {
                    let mut object = json!({
                        "address": address.to_string(),
                        "verdict": Verdict::NoMasquerade.as_str(),
                    });
                    if let Some(source) = source {
                        object["source"] = json!(source.to_string());
                    }
                    object["rule"] = json!("ipv6-disabled");
                    object["why"] = json!(IPV6_DISABLED);
                    object.to_string()
                }
            }
        } else {
            let decision = policy::decide(config, source, address)?;
            match output {
                OutputFormat::Text => decision.to_string(),
                OutputFormat::Json => decision.to_json().to_string(),
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn config(text: &str, enable_ipv6: bool) -> Config {
        let opts = config::LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6,
        };
        config::parse(text.as_bytes(), &opts).unwrap().config
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    const EXAMPLE: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]\nmasqueradeCIDRs: [10.9.0.0/16]\npodCIDRs: [10.4.0.0/14]\n";

    #[test]
    fn one_line_per_address_in_the_order_given() {
        let c = config(EXAMPLE, false);
        let text = answers(
            &c,
            false,
            None,
            &ips(&[
                "10.9.5.9",
                "10.9.5.200",
                "10.1.1.1",
                "10.4.1.1",
                "169.254.169.254",
                "8.8.8.8",
                "fd00::1",
            ]),
            OutputFormat::Text,
        )
        .unwrap();
        assert_eq!(
            text,
            "10.9.5.9 masquerade masqueradeCIDRs 10.9.0.0/16, longer than nonMasqueradeCIDRs 10.0.0.0/8
10.9.5.200 no-masquerade nonMasqueradeCIDRs 10.9.5.128/25, longer than masqueradeCIDRs 10.9.0.0/16
10.1.1.1 no-masquerade nonMasqueradeCIDRs 10.0.0.0/8
10.4.1.1 no-masquerade podCIDRs 10.4.0.0/14
169.254.169.254 no-masquerade link-local 169.254.0.0/16 (masqLinkLocal is false)
8.8.8.8 masquerade default: in no list
fd00::1 no-masquerade ipv6 not enabled (--enable-ipv6): the agent leaves IPv6 traffic alone
"
        );
    }

    #[test]
    fn the_source_rule_and_ipv6_when_enabled() {
        let c = config(
            "nonMasqueradeCIDRs: [fd00::/8]\nmasqueradeCIDRs: [fd09::/16]\npodCIDRs: [fd40::/64]\n",
            true,
        );
        let from_outside = answers(
            &c,
            true,
            Some("2001:db8::7".parse().unwrap()),
            &ips(&["fd09::1"]),
            OutputFormat::Text,
        )
        .unwrap();
        assert_eq!(
            from_outside,
            "fd09::1 no-masquerade pod source rule: the source is outside podCIDRs\n"
        );
        let from_pod = answers(
            &c,
            true,
            Some("fd40::2".parse().unwrap()),
            &ips(&["fd09::1", "fd01::1"]),
            OutputFormat::Text,
        )
        .unwrap();
        assert_eq!(
            from_pod,
            "fd09::1 masquerade masqueradeCIDRs fd09::/16, longer than nonMasqueradeCIDRs fd00::/8\nfd01::1 no-masquerade nonMasqueradeCIDRs fd00::/8\n"
        );
    }

    #[test]
    fn json_is_one_object_per_line_with_the_lines_facts() {
        let c = config(EXAMPLE, false);
        let addresses = ips(&["10.9.5.9", "8.8.8.8", "fd00::1"]);
        let source = Some("10.4.0.9".parse().unwrap());
        let text = answers(&c, false, source, &addresses, OutputFormat::Text).unwrap();
        let json = answers(&c, false, source, &addresses, OutputFormat::Json).unwrap();
        assert_eq!(json.lines().count(), 3);
        for (line, object) in text.lines().zip(json.lines()) {
            let v: serde_json::Value = serde_json::from_str(object).unwrap();
            let mut fields = line.splitn(3, ' ');
            assert_eq!(v["address"], fields.next().unwrap());
            assert_eq!(v["verdict"], fields.next().unwrap());
            assert_eq!(v["why"], fields.next().unwrap());
            assert_eq!(v["source"], "10.4.0.9");
        }
        let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
        assert_eq!(last["rule"], "ipv6-disabled");
    }
}
