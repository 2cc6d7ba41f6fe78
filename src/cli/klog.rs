//! The 14 klog flags the upstream agent registers, with klog's grammars.
//!
//! Existing DaemonSets pass klog flags, so every one is accepted; only `-v`
//! has an effect (our log verbosity). The others are still checked as klog
//! checks them (severity names, `-vmodule` lists, `-log_backtrace_at`
//! locations), so what upstream refuses at start we refuse too, with klog's
//! messages, and the startup `FLAG:` lines print their values as klog would.

use super::goflag::{FlagValue, Kind, flag_set};
use super::strconv::{atoi, parse_int};

const KLOG_IGNORED: &str = "klog flag, accepted for compatibility; no effect";

flag_set! {
    /// klog's flag values, each held the way klog holds it.
    pub struct KlogFlags;
    /// Sorted by name (byte order), as Go prints and visits them.
    pub const KLOG_FLAGS;

    "add_dir_header" => add_dir_header: bool = false, KLOG_IGNORED;
    "alsologtostderr" => alsologtostderr: bool = false, KLOG_IGNORED;
    "legacy_stderr_threshold_behavior" => legacy_stderr_threshold_behavior: bool = true, KLOG_IGNORED;
    "log_backtrace_at" => log_backtrace_at: TraceLocation = TraceLocation::default(), KLOG_IGNORED;
    "log_dir" => log_dir: String = "", KLOG_IGNORED;
    "log_file" => log_file: String = "", KLOG_IGNORED;
    "log_file_max_size" => log_file_max_size: u64 = 1800_u64, KLOG_IGNORED;
    "logtostderr" => logtostderr: bool = true,
        "klog flag, accepted for compatibility; logs always go to standard error";
    "one_output" => one_output: bool = false, KLOG_IGNORED;
    "skip_headers" => skip_headers: bool = false, KLOG_IGNORED;
    "skip_log_headers" => skip_log_headers: bool = false, KLOG_IGNORED;
    "stderrthreshold" => stderrthreshold: Severity = Severity::ERROR, KLOG_IGNORED;
    "v" => v: Level = Level(0), "Log verbosity `level`; higher logs more detail";
    "vmodule" => vmodule: Vmodule = Vmodule::default(), KLOG_IGNORED;
}

/// klog's `Level` and severity hand strconv's error through unchanged; a
/// bit size of 32 keeps the value within i32, so the cast is exact.
fn int32(text: &str) -> Result<i32, String> {
    parse_int(text, 10, 32)
        .map(|v| v as i32)
        .map_err(|e| e.to_string())
}

/// klog's `-v`: any int32, base 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level(pub i32);

impl Level {
    /// Our log verbosity: negative levels as 0, large ones as 255.
    pub fn verbosity(self) -> u8 {
        u8::try_from(self.0.clamp(0, i32::from(u8::MAX))).unwrap_or(u8::MAX)
    }
}

impl FlagValue for Level {
    const KIND: Kind = Kind::Other;
    const ZERO: &'static str = "0";

    fn parse(text: &str) -> Result<Self, String> {
        int32(text).map(Level)
    }

    fn text(&self) -> String {
        self.0.to_string()
    }
}

/// klog's severity (`-stderrthreshold`): 0 INFO, 1 WARNING, 2 ERROR,
/// 3 FATAL, given by name or as any int32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Severity(pub i32);

impl Severity {
    pub const ERROR: Severity = Severity(2);

    /// klog's severity names, matched after Go's `strings.ToUpper`.
    fn by_name(text: &str) -> Option<Severity> {
        // Go's ToUpper maps each character alone (simple case mapping), so
        // keep characters whose full uppercase is more than one character.
        let upper: String = text
            .chars()
            .map(|c| {
                let mut up = c.to_uppercase();
                match (up.next(), up.next()) {
                    (Some(u), None) => u,
                    _ => c,
                }
            })
            .collect();
        match upper.as_str() {
            "INFO" => Some(Severity(0)),
            "WARNING" => Some(Severity(1)),
            "ERROR" => Some(Severity(2)),
            "FATAL" => Some(Severity(3)),
            _ => None,
        }
    }
}

impl FlagValue for Severity {
    const KIND: Kind = Kind::Other;
    const ZERO: &'static str = "0";

    fn parse(text: &str) -> Result<Self, String> {
        match Severity::by_name(text) {
            Some(severity) => Ok(severity),
            None => int32(text).map(Severity),
        }
    }

    fn text(&self) -> String {
        self.0.to_string()
    }
}

const VMODULE_SYNTAX: &str = "syntax error: expect comma-separated list of filename=N";

/// klog's `-vmodule`: patterns with a non-zero level, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vmodule(pub Vec<(String, i32)>);

impl FlagValue for Vmodule {
    const KIND: Kind = Kind::Other;
    const ZERO: &'static str = "";

    /// `pattern=N,...`, N a non-negative int32; empty items are skipped and
    /// level 0 entries dropped.
    fn parse(text: &str) -> Result<Self, String> {
        let mut filter = Vec::new();
        for item in text.split(',').filter(|item| !item.is_empty()) {
            let parts: Vec<&str> = item.split('=').collect();
            let [pattern, level] = parts[..] else {
                return Err(VMODULE_SYNTAX.into());
            };
            if pattern.is_empty() || level.is_empty() {
                return Err(VMODULE_SYNTAX.into());
            }
            let level = int32(level).map_err(|_| VMODULE_SYNTAX.to_owned())?;
            if level < 0 {
                return Err("negative value for vmodule level".into());
            }
            if level > 0 {
                filter.push((pattern.to_owned(), level));
            }
        }
        Ok(Vmodule(filter))
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(pattern, level)| format!("{pattern}={level}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

const BACKTRACE_SYNTAX: &str = "syntax error: expect file.go:234";

/// klog's `-log_backtrace_at`: a file and line; ("", 0) when unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceLocation {
    pub file: String,
    pub line: i64,
}

impl FlagValue for TraceLocation {
    const KIND: Kind = Kind::Other;
    const ZERO: &'static str = ":0";

    /// `file.ext:N` with N > 0, or empty.
    fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Ok(TraceLocation::default());
        }
        let parts: Vec<&str> = text.split(':').collect();
        let [file, line] = parts[..] else {
            return Err(BACKTRACE_SYNTAX.into());
        };
        if !file.contains('.') {
            return Err(BACKTRACE_SYNTAX.into());
        }
        let line = atoi(line).map_err(|_| BACKTRACE_SYNTAX.to_owned())?;
        if line <= 0 {
            return Err("negative or zero value for level".into());
        }
        Ok(TraceLocation {
            file: file.to_owned(),
            line,
        })
    }

    fn text(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fail, flag_value, ok, opts};
    use crate::cli::Command;

    #[test]
    fn klog_flags_from_daemonsets_are_accepted() {
        let inv = ok(&[
            "--logtostderr",
            "--alsologtostderr=false",
            "--stderrthreshold=INFO",
            "--log_dir=/var/log",
            "--log_file=/var/log/agent.log",
            "--log_file_max_size=0x10",
            "--vmodule=sync=4,zero=0,,loop*=2",
            "--log_backtrace_at=main.go:12",
            "--add_dir_header",
            "--skip_headers=true",
            "--skip_log_headers",
            "--one_output=1",
            "--legacy_stderr_threshold_behavior=false",
            "--v=4",
            "--nomasq-all-reserved-ranges",
            "--masq-chain=IP-MASQ",
        ]);
        assert_eq!(inv.command, Command::Run);
        assert_eq!(inv.options.verbosity, 4);
        assert!(inv.options.nomasq_all_reserved_ranges);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "0");
        assert_eq!(flag_value(&inv, "log_file_max_size"), "16");
        assert_eq!(flag_value(&inv, "vmodule"), "sync=4,loop*=2");
        assert_eq!(flag_value(&inv, "log_backtrace_at"), "main.go:12");
        assert_eq!(
            flag_value(&inv, "legacy_stderr_threshold_behavior"),
            "false"
        );
        assert_eq!(flag_value(&inv, "log_dir"), "/var/log");
        // Severity names in any case; numbers as int32.
        let inv = ok(&["--stderrthreshold", "warning"]);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "1");
        let inv = ok(&["--stderrthreshold=7"]);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "7");
        let inv = ok(&["--log_backtrace_at="]);
        assert_eq!(flag_value(&inv, "log_backtrace_at"), ":0");
    }

    #[test]
    fn klog_values_are_checked_as_klog_checks_them() {
        for (arg, message) in [
            (
                "-v=x",
                "invalid value \"x\" for flag -v: strconv.ParseInt: parsing \"x\": invalid syntax",
            ),
            // klog's Level is base 10: no 0x prefix, unlike Go's int flags.
            (
                "-v=0x10",
                "invalid value \"0x10\" for flag -v: strconv.ParseInt: parsing \"0x10\": invalid syntax",
            ),
            (
                "-v=2147483648",
                "invalid value \"2147483648\" for flag -v: strconv.ParseInt: parsing \"2147483648\": value out of range",
            ),
            (
                "--stderrthreshold=bogus",
                "invalid value \"bogus\" for flag -stderrthreshold: strconv.ParseInt: parsing \"bogus\": invalid syntax",
            ),
            (
                "--vmodule=foo",
                "invalid value \"foo\" for flag -vmodule: syntax error: expect comma-separated list of filename=N",
            ),
            (
                "--vmodule=a=x",
                "invalid value \"a=x\" for flag -vmodule: syntax error: expect comma-separated list of filename=N",
            ),
            (
                "--vmodule=a=-1",
                "invalid value \"a=-1\" for flag -vmodule: negative value for vmodule level",
            ),
            (
                "--log_backtrace_at=main:12",
                "invalid value \"main:12\" for flag -log_backtrace_at: syntax error: expect file.go:234",
            ),
            (
                "--log_backtrace_at=main.go:0",
                "invalid value \"main.go:0\" for flag -log_backtrace_at: negative or zero value for level",
            ),
            (
                "--log_file_max_size=-1",
                "invalid value \"-1\" for flag -log_file_max_size: parse error",
            ),
            (
                "--log_file_max_size=99999999999999999999",
                "invalid value \"99999999999999999999\" for flag -log_file_max_size: value out of range",
            ),
        ] {
            assert_eq!(fail(&[arg]), (message.to_owned(), 2), "{arg}");
        }
    }

    #[test]
    fn v_maps_into_u8() {
        for (arg, want) in [
            ("-v=0", 0),
            ("-v=-1", 0),
            ("-v=-2147483648", 0),
            ("-v=+3", 3),
            ("-v=007", 7),
            ("-v=255", 255),
            ("-v=256", 255),
            ("-v=2147483647", 255),
        ] {
            assert_eq!(opts(&[arg]).verbosity, want, "{arg}");
        }
        // The flag list keeps Go's value, not the clamped one.
        assert_eq!(flag_value(&ok(&["-v=-1"]), "v"), "-1");
        assert_eq!(flag_value(&ok(&["-v=007"]), "v"), "7");
    }

    #[test]
    fn severity_names_fold_case_as_go_does() {
        // Go's ToUpper turns a dotless i into I, so klog takes this as INFO.
        assert_eq!(
            flag_value(&ok(&["--stderrthreshold=ınfo"]), "stderrthreshold"),
            "0"
        );
    }
}
