//! HTTP to servers inside a namespace (the agent's `/metrics` and probes,
//! Prometheus' API), and reading the metrics text that comes back.
//!
//! The test process lives in the machine's own namespace and cannot reach a
//! namespace's loopback, so requests are made by `curl` run inside the
//! namespace, always with a timeout. Metrics are compared sample by sample
//! (name, label set, value), never as raw lines, so label order and
//! unrelated series do not matter.

use std::collections::BTreeMap;
use std::fmt;

use super::netns::Netns;
use super::process::texts;

/// curl's `--max-time`, in seconds, for every request.
pub const HTTP_TIMEOUT_SECS: u32 = 5;

/// What a request came to: an HTTP answer, or none (`status` 0) with curl's
/// error in `error` (e.g. connection refused while the server starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    pub error: String,
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status == 0 {
            write!(f, "no HTTP answer: {}", self.error.trim())
        } else {
            write!(
                f,
                "HTTP {} ({})\n{}",
                self.status, self.content_type, self.body
            )
        }
    }
}

/// `curl -sS --max-time 5 CURL_ARGS... URL` inside `ns`. Never panics on a
/// failed request: callers usually poll until the server answers.
pub fn get(ns: &Netns, url: &str, curl_args: &[&str]) -> Response {
    let timeout = HTTP_TIMEOUT_SECS.to_string();
    let mut args = vec![
        "curl",
        "-sS",
        "--max-time",
        &timeout,
        "-w",
        "\n%{http_code}\n%{content_type}",
    ];
    args.extend_from_slice(curl_args);
    args.push(url);
    let out = ns.exec(&args);
    let (stdout, stderr) = texts(&out);
    let mut response = parse_curl_output(&stdout).unwrap_or_else(|| Response {
        status: 0,
        content_type: String::new(),
        body: stdout.clone(),
        error: String::new(),
    });
    if !out.status.success() {
        response.status = 0;
        response.error = format!("curl {url}: {}: {stderr}", out.status);
    }
    response
}

/// Splits curl's stdout as `get` asks for it: the body, then a line with the
/// status code, then a line with the content type (possibly empty).
pub fn parse_curl_output(stdout: &str) -> Option<Response> {
    let (rest, content_type) = stdout.rsplit_once('\n')?;
    let (body, code) = rest.rsplit_once('\n')?;
    Some(Response {
        status: code.trim().parse().ok()?,
        content_type: content_type.trim().to_owned(),
        body: body.to_owned(),
        error: String::new(),
    })
}

/// One sample of a metrics exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every sample line of a Prometheus text or OpenMetrics exposition
/// (`name{label="value",...} value [timestamp]`); comments are skipped, and
/// so are lines that do not parse (promtool judges the format, not this).
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        };
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the sample named `name` with exactly the labels `labels`
/// (in any order), if the exposition has it.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_samples(text)
        .into_iter()
        .find(|s| s.name == name && s.labels == wanted)
        .map(|s| s.value)
}
