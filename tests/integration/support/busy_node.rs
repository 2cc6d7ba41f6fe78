//! A busy node's iptables state, generated: what kube-proxy in iptables mode
//! writes for many Services, in the shape of its real output (one
//! `KUBE-SVC-…` chain per Service with a masquerade mark and one statistic
//! jump per endpoint, one `KUBE-SEP-…` chain per endpoint, the
//! `KUBE-SERVICES` dispatch), plus kubelet's hint chains in mangle.
//!
//! Pure text for `iptables-restore`, so the kernel suites and `bench-node`
//! (which includes this file by path) load exactly the same node. Every
//! address is generated from the Service's index inside 10.96.0.0/12 (the
//! Services) and 10.64.0.0/12 (the Pods); nothing is random.

use std::fmt::Write as _;

/// Services on the busy node of issue #12's measurements.
pub const SERVICES: usize = 5_000;

/// Endpoints of Service `i`: two, except every fourth Service has one, which
/// gives about 36 000 nat rules in about 13 750 chains for 5 000 Services.
fn endpoints(i: usize) -> usize {
    if i % 4 == 3 { 1 } else { 2 }
}

/// A kube-proxy-style chain suffix: 16 characters of base32, from `seed`.
fn hash_name(seed: u64) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    // splitmix64: distinct seeds give distinct, stable names.
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // Overlapping 5-bit windows at a 4-bit stride: the low 4 bits of the 16
    // characters spell out all 64 bits, so distinct values give distinct names.
    (0..16)
        .map(|k| ALPHABET[((z >> (k * 4)) & 31) as usize] as char)
        .collect()
}

fn ipv4(base: u32, offset: usize) -> String {
    let a = base + offset as u32;
    format!(
        "{}.{}.{}.{}",
        a >> 24,
        (a >> 16) & 255,
        (a >> 8) & 255,
        a & 255
    )
}

/// How big the generated nat table is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub chains: usize,
    pub rules: usize,
}

/// `iptables-restore` input (no `--noflush` needed: it only adds) for
/// `services` Services, and the size of its nat table.
pub fn restore_text(services: usize) -> (String, Size) {
    let svc_base = u32::from_be_bytes([10, 96, 0, 0]);
    let pod_base = u32::from_be_bytes([10, 64, 0, 0]);
    let mut chains = String::new();
    let mut rules = String::new();
    let mut size = Size {
        chains: 3,
        rules: 0,
    };
    let mut rule = |text: String, size: &mut Size| {
        rules.push_str(&text);
        rules.push('\n');
        size.rules += 1;
    };
    rule(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        &mut size,
    );
    rule(
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        &mut size,
    );
    rule(
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        &mut size,
    );
    rule(
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into(),
        &mut size,
    );
    rule(
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN".into(),
        &mut size,
    );
    rule(
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        &mut size,
    );
    rule(
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
            .into(),
        &mut size,
    );
    for i in 0..services {
        let name = format!("default/svc-{i}:http");
        let svc = hash_name(i as u64);
        let cluster_ip = ipv4(svc_base, i + 10);
        let _ = writeln!(chains, ":KUBE-SVC-{svc} - [0:0]");
        size.chains += 1;
        rule(
            format!(
                "-A KUBE-SERVICES -d {cluster_ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-{svc}"
            ),
            &mut size,
        );
        rule(
            format!(
                "-A KUBE-SVC-{svc} ! -s 10.64.0.0/12 -d {cluster_ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
            ),
            &mut size,
        );
        let n = endpoints(i);
        for e in 0..n {
            let sep = hash_name(((i as u64) << 8) | (e as u64 + 1) | (1 << 40));
            let pod = ipv4(pod_base, i * 2 + e + 2);
            let _ = writeln!(chains, ":KUBE-SEP-{sep} - [0:0]");
            size.chains += 1;
            let statistic = if e + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - e) as f64
                )
            } else {
                String::new()
            };
            rule(
                format!(
                    "-A KUBE-SVC-{svc} -m comment --comment \"{name} -> {pod}:8080\"{statistic} -j KUBE-SEP-{sep}"
                ),
                &mut size,
            );
            rule(
                format!(
                    "-A KUBE-SEP-{sep} -s {pod}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ"
                ),
                &mut size,
            );
            rule(
                format!(
                    "-A KUBE-SEP-{sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {pod}:8080"
                ),
                &mut size,
            );
        }
    }
    rule(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
            .into(),
        &mut size,
    );
    size.chains += 1; // KUBE-NODEPORTS
    let text = format!(
        "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-KUBELET-CANARY - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n\
*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-NODEPORTS - [0:0]\n{chains}{rules}COMMIT\n"
    );
    (text, size)
}
