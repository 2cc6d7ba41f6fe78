//! Telemetry as its consumers see it: the agent's `/metrics`, `/healthz` and
//! `/readyz` fetched with curl, the exposition judged by `promtool check
//! metrics`, and a real `prometheus` scraping the agent and answering
//! queries about syncs, config changes and a rejected config.
//!
//! Each test runs the agent (and Prometheus) inside a namespace of its own
//! and listens on that namespace's loopback only, so the fixed ports below
//! cannot collide between tests or with anything on the machine. Requests
//! go through `ip netns exec NS curl`, always with a timeout.

use std::fmt;
use std::fs;
use std::fs::File;
use std::process::{Child, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::kernel::{
    COMPAT_EXAMPLE_CONFIG, COMPAT_EXAMPLE_RULES, DEFAULT_RULES, EMPTY_NAT, assert_nat,
    assert_only_v4_of, both_modes,
};
use crate::support::Family::V4;
use crate::support::http::{Response, get, parse_samples, sample};
use crate::support::process::describe;
use crate::support::*;

/// What the endpoint tests run besides the kernel tools.
const ENDPOINT_TOOLS: &[&str] = &["curl", "promtool"];

/// A config that fails validation: the CIDR has host bits set.
const INVALID_CONFIG: &str = "nonMasqueradeCIDRs:\n  - 10.0.0.1/8\n";

/// The default list written out: a config change away from the COMPAT
/// example whose rules are `DEFAULT_RULES`.
const RFC1918_CONFIG: &str =
    "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 172.16.0.0/12\n  - 192.168.0.0/16\n";

/// The Accept header Prometheus 2.x sends when scraping.
const PROMETHEUS_ACCEPT: &str = "Accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// For the Prometheus test: its first scrape comes only after target
/// discovery's first update (about 5 s after start), so this is four times
/// that; later waits are a few 1 s scrapes plus a wide margin.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(20);

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

fn metrics_flag(port: u16) -> String {
    format!("--metrics-address=127.0.0.1:{port}")
}

/// Polls `GET url` in `ns` until `done` accepts the response; fails at once
/// (with the log) if the agent exits meanwhile.
fn wait_http(
    agent: &mut Agent,
    ns: &Netns,
    url: &str,
    what: &str,
    done: impl FnMut(&Response) -> bool,
) -> Response {
    wait_until(
        DEADLINE,
        what,
        || {
            agent.assert_running();
            get(ns, url, &[])
        },
        done,
    )
}

/// `GET url` that must answer `status`.
fn fetch(ns: &Netns, url: &str, curl_args: &[&str], status: u16) -> Response {
    let response = get(ns, url, curl_args);
    assert_eq!(response.status, status, "GET {url}: {response}");
    response
}

/// Runs `promtool check metrics` on `exposition` inside `ns` (it reads
/// stdin, hence the file and the shell); must exit 0 with nothing to say.
fn promtool_check(ns: &Netns, exposition: &str) {
    let file = tempfile::Builder::new()
        .prefix("imqa-metrics-")
        .tempfile()
        .expect("temp file for the exposition");
    fs::write(file.path(), exposition).expect("write the exposition");
    let path = file.path().to_str().expect("temp path is UTF-8");
    let out = ns.exec(&["sh", "-c", "promtool check metrics < \"$1\"", "sh", path]);
    assert!(
        out.status.success(),
        "{}\n--- the exposition it judged\n{exposition}",
        describe("promtool check metrics", &out)
    );
}

/// The fingerprint the agent logged when it took a config in use on
/// `trigger` (`using config trigger="…" … fingerprint=…`); the last one.
fn logged_fingerprint(log: &str, trigger: &str) -> Option<String> {
    let trigger = format!("trigger=\"{trigger}\"");
    log.lines()
        .filter(|l| l.contains("using config") && l.contains(&trigger))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("fingerprint="))
        })
        .map(|f| f.trim_matches('"').to_owned())
        .next_back()
}

/// Waits for the agent's log to show a config taken in use on `trigger`.
fn wait_fingerprint(agent: &mut Agent, trigger: &str) -> String {
    let found = wait_until(
        DEADLINE,
        &format!(
            "a `using config` log line with trigger {trigger:?} and a fingerprint (the log follows)"
        ),
        || {
            agent.assert_running();
            logged_fingerprint(&agent.log(), trigger).unwrap_or_default()
        },
        |f| !f.is_empty(),
    );
    assert!(
        found.len() >= 8 && found.bytes().all(|b| b.is_ascii_hexdigit()),
        "fingerprint {found:?} is not a hex digest"
    );
    found
}

/// The `--version` output's version, as `build_info` must carry it.
fn agent_version(ns: &Netns) -> String {
    let out = oneshot(ns, &["--version"]);
    assert!(out.status.success(), "{}", describe("--version", &out));
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    text.strip_prefix("ip-masq-agent ")
        .unwrap_or(&text)
        .to_owned()
}

/// Asserts the sample `name{labels}` of `exposition` equals `value`.
fn assert_sample(exposition: &str, name: &str, labels: &[(&str, &str)], value: f64) {
    assert_eq!(
        sample(exposition, name, labels),
        Some(value),
        "{name}{labels:?} in\n{exposition}"
    );
}

both_modes! {
    /// A synced agent: `/metrics` in the classic text format passes
    /// `promtool check metrics` and shows the startup sync and config; the
    /// OpenMetrics form (what Prometheus asks for) carries the same samples;
    /// `/healthz` and `/readyz` answer 200.
    fn endpoint_metrics_pass_promtool_and_probes_answer(mode) {
        if !require_tools(ENDPOINT_TOOLS) {
            return;
        }
        const PORT: u16 = 20110;
        let ns = Netns::new();
        let version = agent_version(&ns);
        let volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        let mut agent = Agent::start(&ns, mode, &volume, &[&metrics_flag(PORT)]);

        let ready = wait_http(&mut agent, &ns, &url(PORT, "/readyz"), "/readyz to answer 200 after the first sync", |r| r.status == 200);
        assert_eq!(ready.body, "ok: rules in sync\n", "/readyz: {ready}");
        assert_nat(&ns, mode, V4, COMPAT_EXAMPLE_RULES);
        let health = fetch(&ns, &url(PORT, "/healthz"), &[], 200);
        assert_eq!(health.body, "ok: loop alive\n", "/healthz: {health}");

        let fingerprint = wait_fingerprint(&mut agent, "startup");
        let text = fetch(&ns, &url(PORT, "/metrics"), &[], 200);
        assert!(
            text.content_type.starts_with("text/plain") && text.content_type.contains("version=0.0.4"),
            "/metrics without an Accept header must be the classic text format: {}",
            text.content_type
        );
        promtool_check(&ns, &text.body);
        let m = text.body.as_str();
        assert_sample(m, "ip_masq_agent_syncs_total", &[("family", "ipv4"), ("result", "applied")], 1.0);
        assert_sample(m, "ip_masq_agent_sync_duration_seconds_count", &[("family", "ipv4")], 1.0);
        assert_sample(m, "ip_masq_agent_non_masquerade_cidrs", &[("family", "ipv4")], 2.0);
        // Upstream's config has neither of our lists: counted, at 0.
        assert_sample(m, "ip_masq_agent_masquerade_cidrs", &[("family", "ipv4")], 0.0);
        assert_sample(m, "ip_masq_agent_pod_cidrs", &[("family", "ipv4")], 0.0);
        assert_sample(m, "ip_masq_agent_config_loads_total", &[("result", "valid"), ("trigger", "startup")], 1.0);
        assert_sample(m, "ip_masq_agent_config_valid", &[], 1.0);
        assert_sample(m, "ip_masq_agent_config", &[("fingerprint", &fingerprint)], 1.0);
        assert_sample(m, "ip_masq_agent_build_info", &[("version", &version)], 1.0);
        let last_sync = sample(m, "ip_masq_agent_last_successful_sync_timestamp_seconds", &[("family", "ipv4")]);
        assert!(
            last_sync.is_some_and(|t| t > 1.6e9),
            "last successful sync should be a Unix time: {last_sync:?}\n{m}"
        );
        // Every failure series exists from the start, at 0, so that an
        // increase() alert sees the first failure; IPv6 is off, so none of
        // its series exist.
        let failures: Vec<_> = parse_samples(m)
            .into_iter()
            .filter(|s| s.name == "ip_masq_agent_sync_errors_total" || s.labels.get("result").is_some_and(|r| r == "failed"))
            .collect();
        assert_eq!(failures.len(), 10, "failed syncs and one series per error kind: {failures:?}");
        assert!(failures.iter().all(|s| s.value == 0.0), "no sync failed, yet: {failures:?}");
        assert_sample(m, "ip_masq_agent_sync_errors_total", &[("family", "ipv4"), ("kind", "lock_held")], 0.0);
        assert_sample(m, "ip_masq_agent_config_loads_total", &[("result", "invalid"), ("trigger", "file_event")], 0.0);
        assert!(!m.contains("family=\"ipv6\""), "IPv6 series with IPv6 off:\n{m}");

        let open = fetch(&ns, &url(PORT, "/metrics"), &["-H", PROMETHEUS_ACCEPT], 200);
        assert!(
            open.content_type.starts_with("application/openmetrics-text"),
            "/metrics must answer Prometheus' Accept header with OpenMetrics: {}",
            open.content_type
        );
        assert!(open.body.ends_with("# EOF\n"), "OpenMetrics ends with `# EOF`:\n{}", open.body);
        assert_eq!(
            parse_samples(&open.body),
            parse_samples(m),
            "the two formats must carry the same samples"
        );
        agent.assert_running();
    }
}

both_modes! {
    /// Invalid from the start: `/readyz` answers 503 naming the error (and
    /// `/healthz` 200: the loop is fine), nothing is written; once kubelet
    /// swaps in a valid file, `/readyz` turns 200 with the rules in place.
    fn readyz_says_why_until_an_invalid_config_is_fixed(mode) {
        if !require_tools(ENDPOINT_TOOLS) {
            return;
        }
        const PORT: u16 = 20120;
        let ns = Netns::new();
        let mut volume = ConfigVolume::with("nonMasqueradeCIDRs:\n  - abcdefg\n");
        let mut agent = Agent::start(&ns, mode, &volume, &[&metrics_flag(PORT)]);

        let readyz = url(PORT, "/readyz");
        let not_ready = wait_http(&mut agent, &ns, &readyz, "/readyz to report the invalid config", |r| {
            r.body.contains("no valid config yet")
        });
        assert_eq!(not_ready.status, 503, "/readyz: {not_ready}");
        assert!(
            not_ready.body.contains(r#"CIDR "abcdefg" could not be parsed, invalid CIDR address: abcdefg"#),
            "/readyz must say why: {not_ready}"
        );
        fetch(&ns, &url(PORT, "/healthz"), &[], 200);
        let metrics = fetch(&ns, &url(PORT, "/metrics"), &[], 200);
        promtool_check(&ns, &metrics.body);
        assert_sample(&metrics.body, "ip_masq_agent_config_valid", &[], 0.0);
        assert_sample(&metrics.body, "ip_masq_agent_config_loads_total", &[("result", "invalid"), ("trigger", "startup")], 1.0);
        assert_nat(&ns, mode, V4, EMPTY_NAT);
        assert_only_v4_of(&ns, mode);

        volume.update(COMPAT_EXAMPLE_CONFIG);
        let ready = wait_http(&mut agent, &ns, &readyz, "/readyz to answer 200 once the config is fixed", |r| r.status == 200);
        assert_eq!(ready.body, "ok: rules in sync\n", "/readyz: {ready}");
        assert_nat(&ns, mode, V4, COMPAT_EXAMPLE_RULES);
        let metrics = fetch(&ns, &url(PORT, "/metrics"), &[], 200);
        assert_sample(&metrics.body, "ip_masq_agent_config_valid", &[], 1.0);
        agent.assert_running();
    }
}

/// A `prometheus` server inside a test's namespace, scraping the agent
/// every second; killed on drop, its data and log deleted with it.
struct Prometheus {
    child: Child,
    dir: TempDir,
    port: u16,
    exited: bool,
}

impl Prometheus {
    /// Starts `prometheus` in `ns` on 127.0.0.1:`port`, scraping
    /// 127.0.0.1:`target` (the agent) every 1 s with a 1 s timeout.
    fn start(ns: &Netns, target: u16, port: u16) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("imqa-prometheus-")
            .tempdir()
            .expect("temp dir for Prometheus");
        let config = dir.path().join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ip-masq-agent\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = File::create(dir.path().join("log")).expect("Prometheus log file");
        let mut cmd = ns.command("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log file"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Prometheus {
            child,
            dir,
            port,
            exited: false,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Panics, with its log, if Prometheus has exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait on Prometheus") {
            self.exited = true;
            panic!("prometheus exited ({status})\n--- its log\n{}", self.log());
        }
    }

    /// Waits until `/-/ready` answers 200.
    fn wait_ready(&mut self, ns: &Netns) {
        let ready = url(self.port, "/-/ready");
        wait_until(
            PROMETHEUS_DEADLINE,
            "Prometheus' /-/ready to answer 200",
            || {
                self.assert_running();
                get(ns, &ready, &[])
            },
            |r| r.status == 200,
        );
    }

    /// An instant query through `/api/v1/query`.
    fn query(&mut self, ns: &Netns, expr: &str) -> Query {
        self.assert_running();
        let param = format!("query={expr}");
        let response = get(
            ns,
            &url(self.port, "/api/v1/query"),
            &["-G", "--data-urlencode", &param],
        );
        Query::new(expr, response)
    }

    /// Polls `expr` until `done` accepts the result; on timeout the failure
    /// shows the last answer.
    fn wait_query(
        &mut self,
        ns: &Netns,
        agent: &mut Agent,
        expr: &str,
        what: &str,
        mut done: impl FnMut(&Query) -> bool,
    ) -> Query {
        wait_until(
            PROMETHEUS_DEADLINE,
            &format!("{what} (query {expr})"),
            || {
                agent.assert_running();
                self.query(ns, expr)
            },
            |q| q.ok() && done(q),
        )
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if !self.exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("--- prometheus log\n{}---", self.log());
        }
    }
}

/// The answer to one instant query: each series' labels and value.
struct Query {
    expr: String,
    response: Response,
    series: Option<Vec<(serde_json::Map<String, Value>, f64)>>,
}

impl Query {
    fn new(expr: &str, response: Response) -> Query {
        let series = (response.status == 200)
            .then(|| serde_json::from_str::<Value>(&response.body).ok())
            .flatten()
            .filter(|v| v["status"] == "success" && v["data"]["resultType"] == "vector")
            .and_then(|v| {
                v["data"]["result"]
                    .as_array()?
                    .iter()
                    .map(|s| {
                        let labels = s["metric"].as_object()?.clone();
                        let value = s["value"][1].as_str()?.parse().ok()?;
                        Some((labels, value))
                    })
                    .collect()
            });
        Query {
            expr: expr.to_owned(),
            response,
            series,
        }
    }

    /// Whether Prometheus answered with a vector.
    fn ok(&self) -> bool {
        self.series.is_some()
    }

    fn series(&self) -> &[(serde_json::Map<String, Value>, f64)] {
        self.series.as_deref().unwrap_or_default()
    }

    /// The value of a query expected to give one series (e.g. a `sum`).
    fn single(&self) -> Option<f64> {
        match self.series() {
            [(_, v)] => Some(*v),
            _ => None,
        }
    }

    /// The values of `label` over the series, sorted.
    fn label_values(&self, label: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .series()
            .iter()
            .filter_map(|(labels, _)| labels.get(label)?.as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query {} -> {}", self.expr, self.response)
    }
}

/// A real Prometheus scrapes the agent (OpenMetrics, 1 s interval) and, via
/// its query API: sees the startup sync; after a kubelet-style update sees
/// the applied-sync count rise and the new config's fingerprint (the one the
/// agent logged) replace the old; after an invalid update sees
/// `config_valid` drop to 0 while the kernel's rules stay exactly as they
/// were. Runs once, with iptables-nft: the rule-level behaviour under both
/// backends is covered by the endpoint and daemon tests.
fn prometheus_body(mode: Mode) {
    const AGENT_PORT: u16 = 20210;
    const PROMETHEUS_PORT: u16 = 20290;
    let ns = Netns::new();
    let mut volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
    let mut agent = Agent::start(&ns, mode, &volume, &[&metrics_flag(AGENT_PORT)]);
    wait_for_text(
        DEADLINE,
        "the first sync",
        || save(&ns, mode, V4),
        COMPAT_EXAMPLE_RULES,
    );
    let first = wait_fingerprint(&mut agent, "startup");

    let mut prometheus = Prometheus::start(&ns, AGENT_PORT, PROMETHEUS_PORT);
    prometheus.wait_ready(&ns);

    let applied = r#"sum(ip_masq_agent_syncs_total{result="applied"})"#;
    let before = prometheus
        .wait_query(
            &ns,
            &mut agent,
            applied,
            "Prometheus to have scraped the startup sync",
            |q| q.single().is_some(),
        )
        .single()
        .unwrap_or_default();
    assert!(
        before >= 1.0,
        "at least the startup sync was applied: {before}"
    );
    prometheus.wait_query(
        &ns,
        &mut agent,
        "ip_masq_agent_config",
        "the startup config's fingerprint, as the agent logged it",
        |q| q.label_values("fingerprint") == [first.as_str()],
    );
    prometheus.wait_query(
        &ns,
        &mut agent,
        "ip_masq_agent_config_valid",
        "config_valid 1",
        |q| q.single() == Some(1.0),
    );

    // A config change, as kubelet publishes it.
    volume.update(RFC1918_CONFIG);
    wait_for_text(
        DEADLINE,
        "the changed config's rules",
        || save(&ns, mode, V4),
        DEFAULT_RULES,
    );
    let second = wait_fingerprint(&mut agent, "file_event");
    assert_ne!(
        second, first,
        "a different config must have a different fingerprint"
    );
    prometheus.wait_query(
        &ns,
        &mut agent,
        applied,
        &format!("the applied-sync count to rise above {before}"),
        |q| q.single().is_some_and(|v| v > before),
    );
    prometheus.wait_query(
        &ns,
        &mut agent,
        "ip_masq_agent_config",
        &format!("the fingerprint to change from {first} to {second}, the only one left"),
        |q| q.label_values("fingerprint") == [second.as_str()],
    );

    // An invalid config: rejected as a whole, the rules stay as they are.
    let rules_before = save(&ns, mode, V4);
    let applied_lines = agent.count_lines("rules applied");
    volume.update(INVALID_CONFIG);
    prometheus.wait_query(
        &ns,
        &mut agent,
        "ip_masq_agent_config_valid",
        "config_valid to become 0 after the invalid update",
        |q| q.single() == Some(0.0),
    );
    prometheus.wait_query(
        &ns,
        &mut agent,
        r#"ip_masq_agent_config_loads_total{result="invalid",trigger="file_event"}"#,
        "the rejected load, counted with its trigger",
        |q| q.single().is_some_and(|v| v >= 1.0),
    );
    let still = prometheus.query(&ns, "ip_masq_agent_config");
    assert_eq!(
        still.label_values("fingerprint"),
        [second.as_str()],
        "the last valid config stays enforced: {still}"
    );
    assert_text_eq(
        "iptables-save -t nat after the invalid update",
        &save(&ns, mode, V4),
        &rules_before,
    );
    assert_eq!(
        agent.count_lines("rules applied"),
        applied_lines,
        "nothing may be written for an invalid config\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("keeping the last valid config"),
        "the rejection is logged:\n{}",
        agent.log()
    );
    agent.assert_running();
    prometheus.assert_running();
}

/// See `prometheus_body`; `telemetry::prometheus_scrape::nft`.
mod prometheus_scrape {
    #[test]
    fn nft() {
        if crate::support::require_tools(&["curl", "prometheus"]) {
            super::prometheus_body(crate::support::Mode::Nft);
        }
    }
}
