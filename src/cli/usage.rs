//! The usage text, in the layout of Go's `flag.PrintDefaults`.
//!
//! Operators compare our `-h` with upstream's, so each flag is printed as Go
//! prints it: `  -name value` then the help on the next line after a tab
//! (a one-letter boolean keeps it on its line), the value named by the help's
//! first back-quoted word or else by the type, and `(default X)` only when
//! the default differs from the type's zero value, quoted for strings. Our
//! subcommands follow the flags.

use super::flags::{LowArgs, entries};
use super::goflag::{Kind, Spec};
use super::strconv::quote;

/// The program name Go's usage text starts with.
const PROGRAM: &str = "ip-masq-agent";

/// The whole usage text.
pub fn usage() -> String {
    let defaults = LowArgs::default();
    let mut out = format!("Usage of {PROGRAM}:\n");
    for entry in entries() {
        let spec = entry.spec();
        let (value_name, help) = unquote_usage(spec);
        let mut line = format!("  -{}", spec.name);
        if !value_name.is_empty() {
            line.push(' ');
            line.push_str(&value_name);
        }
        // Go keeps a one-letter boolean's help on its line.
        if line.len() <= 4 {
            line.push('\t');
        } else {
            line.push_str("\n    \t");
        }
        line.push_str(&help.replace('\n', "\n    \t"));
        let default = entry.text(&defaults);
        if default != spec.zero {
            if spec.kind == Kind::String {
                line.push_str(&format!(" (default {})", quote(&default)));
            } else {
                line.push_str(&format!(" (default {default})"));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(COMMANDS_USAGE);
    out
}

const COMMANDS_USAGE: &str = "
Commands (without one, the agent runs and keeps the rules in place):
  check [FILE]  validate a config file (default: every configured source, merged; -: stdin) and exit
  render        print the rules the config would produce and exit
  explain [--from SOURCE] [--output=text|json] ADDRESS...
                print whether the config masquerades traffic to each ADDRESS, and why
  sync          apply the rules once and exit
  cleanup       remove this agent's chain and jump rules and exit
  version       print the version and exit
  help          print this text (also -h, --help)
Flags may come before and after the command:
  ip-masq-agent [flags] [command [flags] [FILE | ADDRESS...]]
  (check also takes flags after FILE: ip-masq-agent check FILE --strict)
";

/// Go's `flag.UnquoteUsage`: the first back-quoted word in the help names
/// the value (and loses its quotes); otherwise the type does.
fn unquote_usage(spec: &Spec) -> (String, String) {
    let help = spec.help;
    if let Some(open) = help.find('`')
        && let Some(len) = help[open + 1..].find('`')
    {
        let name = &help[open + 1..open + 1 + len];
        let unquoted = format!("{}{}{}", &help[..open], name, &help[open + 2 + len..]);
        return (name.to_owned(), unquoted);
    }
    (spec.kind.usage_name().to_owned(), help.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_lists_every_flag_in_go_layout() {
        let text = usage();
        assert!(text.starts_with("Usage of ip-masq-agent:\n  -add_dir_header\n"));
        for entry in entries() {
            let name = entry.spec().name;
            assert!(text.contains(&format!("\n  -{name}")), "{name} missing");
        }
        for expected in [
            concat!(
                "  -config file\n    \tPath of the config file (YAML or JSON), or of a directory whose files are merged; ",
                "repeat to merge several; if a lone file is absent, defaults apply (default \"/etc/config/ip-masq-agent\")\n"
            ),
            "  -enable-ipv6\n    \tAlso program IPv6 rules (ip6tables) and accept IPv6 CIDRs in the config\n",
            "  -backend backend\n    \tKernel backend: iptables (the upstream agent's rules) or nftables (a native table with the list in an interval set) (default iptables)\n",
            "  -iptables-mode mode\n    \tiptables mode: auto (use what the node uses), nft or legacy (default auto)\n",
            "  -log_file_max_size uint\n    \tklog flag, accepted for compatibility; no effect (default 1800)\n",
            "  -logtostderr\n    \tklog flag, accepted for compatibility; logs always go to standard error (default true)\n",
            "  -masq-chain chain\n    \tName of the nat chain that holds the masquerade rules (default \"IP-MASQ-AGENT\")\n",
            "  -random-fully\n    \tAdd --random-fully to MASQUERADE rules when iptables supports it (1.6.2 and later) (default true)\n",
            "  -stderrthreshold value\n    \tklog flag, accepted for compatibility; no effect (default 2)\n",
            "  -to-ports ranges\n    \tSource port ranges for masqueraded tcp, udp and sctp, comma-separated (e.g. 1024-29999,32768-65535); empty leaves the choice to the kernel\n",
            "  -v level\n    \tLog verbosity level; higher logs more detail\n",
            "  -vmodule value\n    \tklog flag, accepted for compatibility; no effect\n",
            "  check [FILE]  validate a config file (default: every configured source, merged; -: stdin) and exit\n",
            "  help          print this text (also -h, --help)\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }
}
