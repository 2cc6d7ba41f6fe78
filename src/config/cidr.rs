//! CIDR parsing with the acceptance rules of Go's `net.ParseCIDR`, plus the
//! alignment check and the address printing upstream's error texts use.
//!
//! Accepted: `addr/prefix` split at the first `/`; an IPv4 dotted quad (four
//! decimal fields, 0-255, no leading zeros) or an IPv6 address as Go's
//! `netip.ParseAddr` reads it (hex groups of at most four digits, one `::`,
//! an embedded dotted quad at the end); no zone (`%eth0`); the prefix is
//! decimal digits only (leading zeros allowed, no sign or spaces), at most 32
//! for IPv4 and 128 for IPv6.
//!
//! IPv4-mapped IPv6 (`::ffff:10.0.0.0/104`): upstream treats these as IPv4
//! (Go's `To4()` is non-nil) but then hands the IPv6 text to `iptables`,
//! which fails, so upstream never enforces one. Here an aligned mapped
//! network is refused with an error naming the IPv4 range it denotes
//! (`10.0.0.0/8`: prefix minus 96): read as IPv4, `::ffff:0:0/96` would be
//! `0.0.0.0/0` and silently exempt every IPv4 destination. A mapped address
//! with a prefix below 96 is never aligned (its `ffff` bits are masked away)
//! and gets upstream's misalignment error.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why a CIDR was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CidrError {
    /// Go: `invalid CIDR address: <input>`.
    Parse,
    /// Host bits set; the two strings are Go's `ip.String()` and
    /// `ipnet.String()`.
    Misaligned { ip: String, network: String },
    /// An IPv4-mapped IPv6 range; the IPv4 range it denotes.
    Mapped { ipv4: String },
}

/// Parse `s` as upstream validates it; see the module doc.
pub(crate) fn parse(s: &str) -> Result<IpNet, CidrError> {
    let (addr, prefix) = s.split_once('/').ok_or(CidrError::Parse)?;
    let prefix = parse_prefix(prefix.as_bytes()).ok_or(CidrError::Parse)?;
    match parse_addr(addr.as_bytes()).ok_or(CidrError::Parse)? {
        Addr::V4(octets) => {
            if prefix > 32 {
                return Err(CidrError::Parse);
            }
            let ip = Ipv4Addr::from(octets);
            let net = Ipv4Net::new(ip, prefix).map_err(|_| CidrError::Parse)?;
            if net.network() != ip {
                return Err(CidrError::Misaligned {
                    ip: ip.to_string(),
                    network: net.trunc().to_string(),
                });
            }
            Ok(IpNet::V4(net))
        }
        Addr::V6(bytes) => {
            if prefix > 128 {
                return Err(CidrError::Parse);
            }
            let ip = Ipv6Addr::from(bytes);
            let net = Ipv6Net::new(ip, prefix).map_err(|_| CidrError::Parse)?;
            let network = net.network();
            if network != ip {
                return Err(CidrError::Misaligned {
                    ip: go_ip6_string(ip),
                    network: go_net6_string(network, prefix),
                });
            }
            match ip.to_ipv4_mapped() {
                // Aligned implies prefix >= 96 (see the module doc).
                Some(v4) => match prefix
                    .checked_sub(96)
                    .and_then(|p| Ipv4Net::new(v4, p).ok())
                {
                    Some(v4) => Err(CidrError::Mapped {
                        ipv4: v4.to_string(),
                    }),
                    None => Err(CidrError::Parse),
                },
                None => Ok(IpNet::V6(net)),
            }
        }
    }
}

/// Go's `net.IP.String()` for a 16-byte address: a mapped IPv4 address is
/// printed as the dotted quad; otherwise RFC 5952, as Rust prints it.
fn go_ip6_string(ip: Ipv6Addr) -> String {
    match ip.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => ip.to_string(),
    }
}

/// Go's `net.IPNet.String()` for a masked 16-byte network.
fn go_net6_string(network: Ipv6Addr, prefix: u8) -> String {
    match network.to_ipv4_mapped() {
        // Only reachable with prefix >= 96: the mask keeps the ffff bits.
        Some(v4) => format!("{v4}/{}", prefix.saturating_sub(96)),
        None => format!("{network}/{prefix}"),
    }
}

/// Go's `dtoi` on the whole prefix text: one or more decimal digits.
fn parse_prefix(s: &[u8]) -> Option<u8> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: u32 = 0;
    for &c in s {
        n = n * 10 + u32::from(c - b'0');
        if n > 128 {
            return None;
        }
    }
    u8::try_from(n).ok()
}

enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// Go's `netip.ParseAddr`, minus zones (which `ParseCIDR` rejects anyway):
/// the first `.` or `:` decides the family.
fn parse_addr(s: &[u8]) -> Option<Addr> {
    for &c in s {
        match c {
            b'.' => return parse_ipv4(s).map(Addr::V4),
            b':' => return parse_ipv6(s).map(Addr::V6),
            b'%' => return None,
            _ => {}
        }
    }
    None
}

fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut fields = 0;
    for field in s.split(|&c| c == b'.') {
        if fields == 4 || field.is_empty() || field.len() > 3 {
            return None;
        }
        if field.len() > 1 && field[0] == b'0' {
            return None; // Go rejects leading zeros (no octal ambiguity)
        }
        if !field.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let value = field
            .iter()
            .fold(0u32, |acc, &c| acc * 10 + u32::from(c - b'0'));
        out[fields] = u8::try_from(value).ok()?;
        fields += 1;
    }
    (fields == 4).then_some(out)
}

fn parse_ipv6(input: &[u8]) -> Option<[u8; 16]> {
    if input.contains(&b'%') {
        return None; // a zone, or an empty one: both rejected by ParseCIDR
    }
    let mut ip = [0u8; 16];
    let mut s = input;
    let mut ellipsis: Option<usize> = None;
    if s.starts_with(b"::") {
        ellipsis = Some(0);
        s = &s[2..];
        if s.is_empty() {
            return Some(ip);
        }
    }
    let mut i = 0;
    while i < 16 {
        let digits = s.iter().take_while(|c| c.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 4 {
            return None;
        }
        if s.get(digits) == Some(&b'.') {
            // A trailing dotted quad: only where the last two groups go.
            if (ellipsis.is_none() && i != 12) || i + 4 > 16 {
                return None;
            }
            let v4 = parse_ipv4(s)?;
            ip[i..i + 4].copy_from_slice(&v4);
            s = &[];
            i += 4;
            break;
        }
        let text = std::str::from_utf8(&s[..digits]).ok()?;
        let group = u16::from_str_radix(text, 16).ok()?;
        ip[i..i + 2].copy_from_slice(&group.to_be_bytes());
        i += 2;
        s = &s[digits..];
        if s.is_empty() {
            break;
        }
        if s[0] != b':' || s.len() == 1 {
            return None;
        }
        s = &s[1..];
        if s[0] == b':' {
            if ellipsis.is_some() {
                return None;
            }
            ellipsis = Some(i);
            s = &s[1..];
            if s.is_empty() {
                break;
            }
        }
    }
    if !s.is_empty() {
        return None;
    }
    match ellipsis {
        Some(at) if i < 16 => {
            let n = 16 - i;
            ip.copy_within(at..i, at + n);
            ip[at..at + n].fill(0);
        }
        // `::` must stand for at least one group of zeros.
        Some(_) => return None,
        None if i < 16 => return None,
        None => {}
    }
    Some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        match parse(s) {
            Ok(net) => net.to_string(),
            Err(e) => panic!("{s:?} rejected: {e:?}"),
        }
    }

    fn misaligned(s: &str) -> (String, String) {
        match parse(s) {
            Err(CidrError::Misaligned { ip, network }) => (ip, network),
            other => panic!("{s:?}: {other:?}"),
        }
    }

    #[test]
    fn accepts_what_go_accepts() {
        assert_eq!(ok("10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(ok("0.0.0.0/0"), "0.0.0.0/0");
        assert_eq!(ok("255.255.255.255/32"), "255.255.255.255/32");
        assert_eq!(ok("10.0.0.0/08"), "10.0.0.0/8");
        assert_eq!(ok("10.0.0.0/0008"), "10.0.0.0/8");
        assert_eq!(ok("fc00::/7"), "fc00::/7");
        assert_eq!(ok("FC00::/7"), "fc00::/7");
        assert_eq!(ok("::/0"), "::/0");
        assert_eq!(ok("::1/128"), "::1/128");
        assert_eq!(ok("2001:db8:0:0:0:0:0:0/32"), "2001:db8::/32");
        assert_eq!(ok("2001:0db8::/32"), "2001:db8::/32");
        assert_eq!(ok("1:2:3:4:5:6:7:8/128"), "1:2:3:4:5:6:7:8/128");
        assert_eq!(ok("1:2:3:4:5:6:1.2.3.4/128"), "1:2:3:4:5:6:102:304/128");
        assert_eq!(ok("::1.2.3.4/128"), "::102:304/128");
        assert_eq!(ok("1::/16"), "1::/16");
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "abcdefg",
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "10.0.0.0/8 ",
            " 10.0.0.0/8",
            "10.0.0.0/8/8",
            "010.0.0.0/8",
            "10.00.0.0/16",
            "256.0.0.0/8",
            "10.0.0/8",
            "10.0.0.0.0/8",
            "10..0.0/8",
            ".10.0.0/8",
            "10.0.0.0./8",
            "1e1.0.0.0/8",
            "fc00::/129",
            "fe80::1%eth0/64",
            "fe80::%/64",
            "%eth0/8",
            ":::/0",
            "1:::/16",
            "::1::/16",
            "12345::/16",
            "1:2:3:4:5:6:7:8:9/128",
            "1:2:3:4:5:6:7/128",
            "1:2:3:4:5:6:7:8::/128",
            "1::2:3:4:5:6:7:8/128",
            ":1::/16",
            "1:/16",
            "1:2:3:4:5:1.2.3.4/128",
            "::1.2.3/128",
            "::01.2.3.4/128",
            "1.2.3.4::/8",
            "/8",
            "",
            "10.0.0.0/1000000000",
            "１0.0.0.0/8",
        ] {
            assert_eq!(parse(bad), Err(CidrError::Parse), "{bad:?}");
        }
    }

    #[test]
    fn alignment_errors_print_go_strings() {
        assert_eq!(
            misaligned("10.0.0.1/8"),
            ("10.0.0.1".into(), "10.0.0.0/8".into())
        );
        assert_eq!(
            misaligned("1:0:0:1:0:0:0:1/16"),
            ("1:0:0:1::1".into(), "1::/16".into())
        );
        assert_eq!(
            misaligned("fc00::1/7"),
            ("fc00::1".into(), "fc00::/7".into())
        );
        assert_eq!(
            misaligned("2001:DB8:0:0:1::1/64"),
            ("2001:db8::1:0:0:1".into(), "2001:db8::/64".into())
        );
    }

    #[test]
    fn ipv4_mapped_is_refused_naming_the_ipv4_range() {
        let mapped = |s: &str| match parse(s) {
            Err(CidrError::Mapped { ipv4 }) => ipv4,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(mapped("::ffff:10.0.0.0/104"), "10.0.0.0/8");
        assert_eq!(mapped("::ffff:0.0.0.0/96"), "0.0.0.0/0");
        assert_eq!(mapped("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(mapped("::ffff:a00:0/104"), "10.0.0.0/8");
        assert_eq!(mapped("::ffff:10.1.2.3/128"), "10.1.2.3/32");
        assert_eq!(
            misaligned("::ffff:10.0.0.1/104"),
            ("10.0.0.1".into(), "10.0.0.0/8".into())
        );
        assert_eq!(
            misaligned("::ffff:10.0.0.0/64"),
            ("10.0.0.0".into(), "::/64".into())
        );
        assert_eq!(
            misaligned("::ffff:10.0.0.0/95"),
            ("10.0.0.0".into(), "::fffe:0:0/95".into())
        );
        // IPv4-compatible (not mapped) addresses stay IPv6.
        assert_eq!(ok("::10.0.0.0/104"), "::a00:0/104");
    }
}
