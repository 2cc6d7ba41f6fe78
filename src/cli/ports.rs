//! The `--to-ports` grammar: upstream's list of source port intervals.
//!
//! `A-B` or `A` items separated by commas, each number as Go's
//! `strconv.Atoi` reads it, nothing trimmed; empty means none. The result is
//! the plan's [`PortRange`]s, checked once here: no interval runs backwards
//! (upstream's startup error), and every port is 1..=65535, which upstream
//! leaves to iptables to reject at the first sync.

use super::strconv::{atoi, quote};
use crate::plan::PortRange;

/// Parse the whole flag value, in order.
pub fn parse_to_ports(text: &str) -> Result<Vec<PortRange>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(parse_port_interval).collect()
}

fn parse_port_interval(item: &str) -> Result<PortRange, String> {
    let parts: Vec<&str> = item.split('-').collect();
    let (first, last) = match parts[..] {
        [single] => {
            let port = atoi(single).map_err(|e| e.to_string())?;
            (port, port)
        }
        [first, last] => {
            let first = atoi(first).map_err(|e| e.to_string())?;
            let last = atoi(last).map_err(|e| e.to_string())?;
            (first, last)
        }
        _ => return Err(format!("invalid interval {}", quote(item))),
    };
    if first > last {
        return Err(format!("first is greater than last in {}", quote(item)));
    }
    let port = |n: i64| {
        u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
            format!(
                "port {n} in {} is out of range; ports are 1-65535",
                quote(item)
            )
        })
    };
    Ok(PortRange {
        first: port(first)?,
        last: port(last)?,
    })
}
