//! Logging setup: human-readable text or JSON lines on stderr, with klog's
//! `-v=N` mapped onto levels so existing DaemonSet args keep their meaning.

use tracing::level_filters::LevelFilter;

use crate::cli::LogFormat;

/// klog verbosity to a level: 0-1 info (changes, errors), 2-3 debug (every
/// sync result, also "unchanged"), 4+ trace (payloads and commands).
pub fn level_for(verbosity: u8) -> LevelFilter {
    match verbosity {
        0 | 1 => LevelFilter::INFO,
        2 | 3 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    }
}

/// Install the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, verbosity: u8) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level_for(verbosity))
        .with_target(false)
        // Colour codes only help a human at a terminal, never a log pipeline.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) keeps the first subscriber; that is fine.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn klog_levels() {
        assert_eq!(level_for(0), LevelFilter::INFO);
        assert_eq!(level_for(2), LevelFilter::DEBUG);
        assert_eq!(level_for(9), LevelFilter::TRACE);
    }
}
