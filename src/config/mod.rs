//! (in progress) Config contract; decoding and validation land here.
use std::time::Duration;

use ipnet::IpNet;

/// A validated agent config. CIDRs are parsed once, here, and never again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Config order, duplicates kept, IPv4 and IPv6 mixed.
    pub non_masquerade_cidrs: Vec<IpNet>,
    pub cidr_limit: i64,
    pub masq_link_local: bool,
    pub masq_link_local_ipv6: bool,
    /// Already floored to the 1 s minimum.
    pub resync_interval: Duration,
}
