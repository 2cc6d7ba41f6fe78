//! Logging setup: human-readable text or JSON lines on stderr, with klog's
//! `-v=N` mapped onto levels so existing DaemonSet args keep their meaning.
//! It owns [`LogFormat`] and its flag spelling (`text`, `json`), which the
//! command line hands it; this module depends on nothing else in the crate.

use std::fmt;
use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Format of log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogFormat {
    type Err = String;

    /// The spellings `as_str` prints, exactly (no case folding).
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json".into()),
        }
    }
}

/// klog verbosity to a level: 0-1 info (changes, errors), 2-3 debug (every
/// sync result, also "unchanged"), 4+ trace (payloads and commands).
pub fn level_for(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 | 1 => LevelFilter::INFO,
        2 | 3 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Our own events at `verbosity`'s level; libraries (notify, axum, tokio)
/// only from warn up: their info lines (e.g. notify on a vanished watch)
/// confuse more than they tell, and at `-v=4` they would drown ours.
pub fn filter(verbosity: u8) -> Targets {
    let level = level_for(verbosity);
    Targets::new()
        .with_target("ip_masq_agent", level)
        .with_default(level.min(LevelFilter::WARN))
}

/// Install the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, verbosity: u8) {
    // Colour codes only help a human at a terminal, never a log pipeline.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(|| OneLine(std::io::stderr()))
        .with_target(false)
        .with_ansi(ansi);
    let registry = tracing_subscriber::registry();
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Text => registry
            .with(layer.with_filter(filter(verbosity)))
            .try_init(),
        LogFormat::Json => registry
            .with(
                layer
                    .json()
                    .flatten_event(true)
                    .with_filter(filter(verbosity)),
            )
            .try_init(),
    };
}

/// Stderr for log events, one line each: the formatter hands over a whole
/// event per write, and a newline inside it (an iptables error quoted with
/// its stderr, a multi-line library message) would split it for every
/// line-based log shipper, so it is escaped as `\n`; only the last stays.
struct OneLine<W>(W);

impl<W: std::io::Write> std::io::Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// `event` with every line break but a final one written as `\n` / `\r`.
fn one_line(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    if !body.iter().any(|&b| b == b'\n' || b == b'\r') {
        return std::borrow::Cow::Borrowed(event);
    }
    let mut out = Vec::with_capacity(event.len() + 8);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(b),
        }
    }
    if body.len() < event.len() {
        out.push(b'\n');
    }
    std::borrow::Cow::Owned(out)
}

/// A value from outside (a file, the API) as it may appear in a log line:
/// control characters are escaped, so no text can end a line and forge the
/// next one.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => fmt::Write::write_char(f, c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_format_spellings_round_trip() {
        for format in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(format.as_str().parse::<LogFormat>(), Ok(format));
        }
        assert_eq!(
            "JSON".parse::<LogFormat>(),
            Err("must be text or json".into())
        );
    }

    #[test]
    fn klog_levels() {
        assert_eq!(level_for(0), LevelFilter::INFO);
        assert_eq!(level_for(2), LevelFilter::DEBUG);
        assert_eq!(level_for(9), LevelFilter::TRACE);
    }

    #[test]
    fn libraries_stay_at_info() {
        let f = filter(9);
        assert!(f.would_enable("ip_masq_agent::agent", &tracing::Level::TRACE));
        assert!(!f.would_enable("notify::inotify", &tracing::Level::INFO));
        assert!(f.would_enable("notify::inotify", &tracing::Level::WARN));
        assert!(!filter(0).would_enable("ip_masq_agent::agent", &tracing::Level::DEBUG));
    }

    #[test]
    fn a_log_event_is_one_line() {
        let event =
            b"WARN cannot remove (nft: exited 1: Operation not permitted\nnetlink: Error)\n";
        assert_eq!(
            one_line(event).as_ref(),
            b"WARN cannot remove (nft: exited 1: Operation not permitted\\nnetlink: Error)\n"
        );
        assert!(matches!(
            one_line(b"INFO fine\n"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut out = OneLine(Vec::new());
        std::io::Write::write_all(&mut out, b"a\r\nb\n").unwrap();
        assert_eq!(out.0, b"a\\r\\nb\n");
    }

    #[test]
    fn escaped_values_cannot_end_a_line() {
        let forged = "10.0.0.0/8\n2026-12-03T00:00:00Z  INFO rules applied\t\u{1b}[31m";
        assert_eq!(
            Escaped(forged).to_string(),
            "10.0.0.0/8\\n2026-12-03T00:00:00Z  INFO rules applied\\t\\u{1b}[31m"
        );
        assert_eq!(Escaped("plain: ünïcode").to_string(), "plain: ünïcode");
    }
}
