//! The one-shot commands: `check` (a file, a ConfigMap manifest, or what the
//! API serves now), `render`, `sync` (one pass of the daemon's reconciler)
//! and `cleanup`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use super::{load_options, settings};
use crate::agent::{Reconciler, SyncResult, Trigger};
use crate::backend::Backend;
use crate::backend::nftables;
use crate::backend::select::{self, AnyBackend, BackendKind};
use crate::cli::Options;
use crate::config::{self, Config, Fragment, Loaded, Origins};
use crate::logging::Escaped;
use crate::plan;
use crate::source::api;
use crate::source::file::FileSource;
use crate::source::{Content, Part, Read};
use crate::telemetry::Telemetry;

/// Every configured source read once: the `--config` files and
/// directories, then the `--configmap` objects. `whole`: one source holding
/// one whole config, read as upstream reads its file.
struct ReadOnce {
    parts: Vec<Part>,
    whole: bool,
    /// The file sources read, which know where a manifest's data is.
    files: Vec<FileSource>,
}

impl ReadOnce {
    /// ` (data.config line 3 is line 10 of FILE)` for an error in a
    /// ConfigMap manifest's data, else nothing.
    fn place(&self, name: &str, err: &config::ConfigError) -> String {
        self.files
            .iter()
            .find_map(|file| file.locate(name, err))
            .map(|p| format!(" ({p})"))
            .unwrap_or_default()
    }

    /// A part that was read but not accepted, as `check` says it: the part,
    /// the error and where in the file it is (a ConfigMap manifest's data
    /// counts its own lines), and a hint line when there is one.
    fn invalid(&self, name: &str, err: &config::ConfigError) -> anyhow::Error {
        let place = self.place(name, err);
        match err.hint() {
            Some(hint) => anyhow::anyhow!("{name}: invalid config: {err}{place}\nhint: {hint}"),
            None => anyhow::anyhow!("{name}: invalid config: {err}{place}"),
        }
    }
}

async fn read_sources(options: &Options) -> Result<ReadOnce> {
    let mut parts = Vec::new();
    let mut files = Vec::new();
    let mut whole = single_source(options);
    for path in &options.config {
        let mut file = FileSource::new(path.clone()).manifest_key(options.configmap_key.as_str());
        whole &= file.is_whole();
        parts.extend(file.read());
        files.push(file);
    }
    for source in &options.api_sources {
        let client = api::client(source)
            .await
            .map_err(anyhow::Error::msg)
            .context("--configmap")?;
        let snapshot = api::fetch(client, source, &options.configmap_key)
            .await
            .map_err(anyhow::Error::msg)?;
        parts.push(Part {
            name: format!(
                "configmap {} key {}",
                source.configmap, options.configmap_key
            ),
            read: Read::Ready(match snapshot.bytes {
                Some(bytes) => Content::Bytes(bytes),
                None => Content::Absent,
            }),
        });
    }
    // Every ConfigMap each selector picks now; one already read counts once.
    for selector in &options.api_selectors {
        let client = api::client(selector)
            .await
            .map_err(anyhow::Error::msg)
            .context("--configmap-selector")?;
        let selected = api::fetch_selected(client, selector, &options.configmap_key)
            .await
            .map_err(anyhow::Error::msg)?;
        for part in selected {
            if !parts.iter().any(|seen: &Part| seen.name == part.name) {
                parts.push(part);
            }
        }
    }
    Ok(ReadOnce {
        parts,
        whole,
        files,
    })
}

/// A loaded config, and with several parts where each CIDR came from.
pub(super) struct Effective {
    pub(super) config: Config,
    warnings: Vec<String>,
    origins: Option<Origins>,
}

/// Load and validate every configured source, merged.
pub(super) async fn load_source(options: &Options) -> Result<Effective> {
    let mut sources = read_sources(options).await?;
    let parts = std::mem::take(&mut sources.parts);
    let whole = sources.whole;
    let opts = load_options(options);
    let effective = if whole {
        let Some(Part { name, read }) = parts.into_iter().next() else {
            anyhow::bail!("no config source");
        };
        let loaded = match read {
            Read::Ready(Content::Bytes(bytes)) => {
                config::parse(&bytes, &opts).map_err(|err| sources.invalid(&name, &err))?
            }
            Read::Ready(Content::Absent) | Read::NotYet => {
                info!(source = %name, "no config; using the defaults");
                Loaded::absent(&opts)
            }
            // The error names the file already.
            Read::Failed(err) => anyhow::bail!("{err}"),
        };
        Effective {
            config: loaded.config,
            warnings: loaded.warnings,
            origins: None,
        }
    } else {
        let mut fragments = Vec::new();
        let mut warnings = Vec::new();
        for Part { name, read } in parts {
            match read {
                Read::Ready(Content::Bytes(bytes)) => {
                    let fragment = config::parse_fragment(&bytes, &opts)
                        .map_err(|err| sources.invalid(&name, &err))?;
                    warnings.extend(fragment.warnings.iter().map(|w| format!("{name}: {w}")));
                    fragments.push((name, fragment));
                }
                Read::Ready(Content::Absent) | Read::NotYet => {}
                Read::Failed(err) => anyhow::bail!("{err}"),
            }
        }
        let named: Vec<(String, &Fragment)> =
            fragments.iter().map(|(n, f)| (n.clone(), f)).collect();
        let merged = config::merge(&named, &opts).context("merging the config sources")?;
        Effective {
            config: merged.config,
            warnings,
            origins: Some(merged.origins),
        }
    };
    for warning in &effective.warnings {
        warn!("{}", Escaped(warning));
    }
    Ok(effective)
}

/// CAP_NET_ADMIN's bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

/// Whether this process may change the kernel's rules: CAP_NET_ADMIN in
/// its effective set (`/proc/self/status`, `CapEff`). Unknown (no /proc) is
/// taken as yes, and the kernel answers instead.
fn may_administer_network() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_none_or(|caps| caps & (1 << CAP_NET_ADMIN) != 0)
}

/// `sync` and `cleanup` without CAP_NET_ADMIN: say so first, and only that,
/// rather than let each iptables and nft call fail in its own words.
fn require_net_admin(command: &str) -> Result<()> {
    if may_administer_network() {
        return Ok(());
    }
    anyhow::bail!(
        "{command} changes the kernel's nat rules and needs CAP_NET_ADMIN: run it as root \
         (or with the NET_ADMIN capability); render and check need no privileges"
    )
}

/// One pass of the daemon's reconciler over every family.
pub async fn sync(options: &Options) -> Result<ExitCode> {
    require_net_admin("sync")?;
    let loaded = load_source(options).await?;
    let backend = AnyBackend::select(options.backend, options.iptables_mode).await;
    select::remove_other(options.backend, &options.masq_chain).await;
    let mut reconciler = Reconciler::new(settings(options), backend, Telemetry::default()).once();
    Ok(
        match reconciler.sync(&loaded.config, Trigger::Startup).await {
            SyncResult::Ok | SyncResult::NoConfig => ExitCode::SUCCESS,
            SyncResult::Failed(_) => ExitCode::FAILURE,
        },
    )
}

/// Every family's transaction as `render` and `check` print it, each under
/// a header naming the command that applies it.
async fn rendered(options: &Options, config: &Config) -> String {
    let settings = settings(options);
    let backend = AnyBackend::for_render(options.backend, options.iptables_mode).await;
    let mut out = String::new();
    for family in plan::families(&settings) {
        let desired = plan::plan(config, &settings, family);
        out.push_str(&format!("# {family}: {}\n", backend.apply_command(family)));
        out.push_str(&backend.render(&desired));
    }
    out
}

pub async fn render(options: &Options) -> Result<ExitCode> {
    let loaded = load_source(options).await?;
    let mut out = String::new();
    if let Some(origins) = &loaded.origins {
        // As comments, so the output still feeds the restore tools.
        for line in origins_text(origins).lines() {
            out.push_str(&format!("# {line}\n"));
        }
    }
    out.push_str(&rendered(options, &loaded.config).await);
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Whether the configured sources are one whole config (one file, or one
/// ConfigMap), read as upstream reads its file.
pub(super) fn single_source(options: &Options) -> bool {
    match (options.config.as_slice(), options.api_sources.len()) {
        _ if !options.api_selectors.is_empty() => false,
        ([path], 0) => !path.is_dir(),
        ([], 1) => true,
        _ => false,
    }
}

/// What `check` looks at, and how its verdict names it.
struct Checked {
    /// The path, or the ConfigMap read through the API.
    name: String,
    /// What kind of text it held, e.g. " config file" (empty for the API).
    what: String,
    bytes: Option<Vec<u8>>,
    /// What to say, and whether that fails, when there is nothing.
    absent: (String, bool),
    /// About the manifest rather than the config in it.
    warnings: Vec<String>,
    /// For a ConfigMap manifest: the file's bytes, so an error in its data
    /// can also be placed by the file's line.
    manifest: Option<Vec<u8>>,
}

/// `check -`: the config comes from stdin.
const STDIN: &str = "-";

/// The one whole config `check` looks at: FILE, else the one source.
async fn checked(options: &Options, file: Option<&Path>) -> Result<Checked> {
    let path = match (file, options.config.first()) {
        (Some(file), _) => file,
        (None, Some(path)) => path.as_path(),
        (None, None) => {
            // Validate what the API serves now, as every node watching it would.
            let ReadOnce { parts, .. } = read_sources(options).await?;
            let Some(Part { name, read }) = parts.into_iter().next() else {
                anyhow::bail!("no config source");
            };
            return Ok(Checked {
                absent: (
                    format!("{name}: absent; the agent uses the defaults"),
                    false,
                ),
                name,
                what: String::new(),
                warnings: Vec::new(),
                bytes: match read {
                    Read::Ready(Content::Bytes(bytes)) => Some(bytes),
                    _ => None,
                },
                manifest: None,
            });
        }
    };
    let (name, read) = if file.is_some_and(|f| f.as_os_str() == STDIN) {
        let stdin = std::io::stdin().lock();
        (
            "stdin".to_owned(),
            config::read_stream(stdin, "stdin").map(Some),
        )
    } else {
        (path.display().to_string(), config::read(path))
    };
    let absent = match file {
        Some(_) => (format!("{name}: no such file"), true),
        None => (
            format!("{name}: no config file; the agent uses the defaults"),
            false,
        ),
    };
    // The error names the file already.
    let Some(bytes) = read? else {
        return Ok(Checked {
            name,
            what: String::new(),
            bytes: None,
            absent,
            warnings: Vec::new(),
            manifest: None,
        });
    };
    // A ConfigMap manifest is checked by its data key, as a node sees it.
    let key = options.configmap_key.as_str();
    let warnings = config::configmap_warnings(&bytes);
    let (data, what, manifest) = match config::configmap_data(&bytes, key) {
        Ok(Some(data)) => (data, format!(" ConfigMap data.{key}"), Some(bytes)),
        Ok(None) => (bytes, " config file".to_owned(), None),
        Err(err) => anyhow::bail!(
            "{name}: a ConfigMap manifest, but {err}; pass --configmap-key naming the key that holds the config"
        ),
    };
    Ok(Checked {
        name,
        what,
        bytes: Some(data),
        absent,
        warnings,
        manifest,
    })
}

/// Validate a config and show what a node would do with it: warnings, the
/// effective config, its fingerprint and the rules. With several sources
/// (or a directory), each part is checked on its own, then the merge.
pub async fn check(options: &Options, file: Option<&Path>) -> Result<ExitCode> {
    if file.is_none() && !single_source(options) {
        return check_merged(options).await;
    }
    let Checked {
        name,
        what,
        bytes,
        absent: (absent, absent_fails),
        warnings: mut manifest_warnings,
        manifest,
    } = checked(options, file).await?;
    let loaded = match bytes {
        Some(bytes) => match config::parse(&bytes, &load_options(options)) {
            Ok(loaded) => {
                print(&format!("{name}: valid{what}\n"))?;
                loaded
            }
            Err(err) => {
                let key = options.configmap_key.as_str();
                let place = manifest
                    .and_then(|file| config::manifest_line(&file, key, &bytes, &err))
                    .zip(err.line())
                    .map(|(line, at)| format!(" (data.{key} line {at} is line {line} of {name})"))
                    .unwrap_or_default();
                eprintln!("{name}: invalid{what}: {err}{place}");
                if let Some(hint) = err.hint() {
                    eprintln!("hint: {hint}");
                }
                return Ok(ExitCode::FAILURE);
            }
        },
        None if absent_fails => {
            eprintln!("{absent}");
            return Ok(ExitCode::FAILURE);
        }
        None => {
            print(&format!("{absent}\n"))?;
            Loaded::absent(&load_options(options))
        }
    };
    manifest_warnings.extend(loaded.warnings);
    report(options, &loaded.config, &manifest_warnings, None).await?;
    Ok(verdict(options, &manifest_warnings))
}

/// `check` passes, unless `--strict` and there is a warning.
fn verdict(options: &Options, warnings: &[String]) -> ExitCode {
    if options.strict && !warnings.is_empty() {
        eprintln!("check --strict: {} warning(s), failing", warnings.len());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `check` of several parts: each one's verdict, then the merged config
/// and where each of its CIDRs came from.
async fn check_merged(options: &Options) -> Result<ExitCode> {
    let mut sources = read_sources(options).await?;
    let parts = std::mem::take(&mut sources.parts);
    let opts = load_options(options);
    let mut fragments = Vec::new();
    let mut warnings = Vec::new();
    let mut failed = false;
    for Part { name, read } in parts {
        match read {
            Read::Ready(Content::Bytes(bytes)) => match config::parse_fragment(&bytes, &opts) {
                Ok(fragment) => {
                    print(&format!("{name}: valid config fragment\n"))?;
                    warnings.extend(fragment.warnings.iter().map(|w| format!("{name}: {w}")));
                    fragments.push((name, fragment));
                }
                Err(err) => {
                    let place = sources.place(&name, &err);
                    eprintln!("{name}: invalid config fragment: {err}{place}");
                    if let Some(hint) = err.hint() {
                        eprintln!("hint: {hint}");
                    }
                    failed = true;
                }
            },
            Read::Ready(Content::Absent) | Read::NotYet => {
                print(&format!("{name}: absent; contributes nothing\n"))?;
            }
            Read::Failed(err) => {
                // The error names the file already.
                eprintln!("{err}");
                failed = true;
            }
        }
    }
    if failed {
        return Ok(ExitCode::FAILURE);
    }
    let named: Vec<(String, &Fragment)> = fragments.iter().map(|(n, f)| (n.clone(), f)).collect();
    let merged = match config::merge(&named, &opts) {
        Ok(merged) => merged,
        Err(err) => {
            eprintln!("merged config: invalid: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if fragments.is_empty() {
        print("no config in any source; the agent uses the defaults\n")?;
    }
    report(options, &merged.config, &warnings, Some(&merged.origins)).await?;
    Ok(verdict(options, &warnings))
}

/// What `check` prints after the verdict: warnings, where each CIDR came
/// from (merged sources), the effective config, its fingerprint and the rules.
async fn report(
    options: &Options,
    config: &Config,
    warnings: &[String],
    origins: Option<&Origins>,
) -> Result<()> {
    let mut out = String::new();
    for warning in warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    if let Some(origins) = origins {
        out.push_str(&origins_text(origins));
    }
    out.push_str(&format!(
        "effective config: {}\nfingerprint: {} (the ip_masq_agent_config metric of a node enforcing it)\n\n",
        config.to_json(),
        plan::fingerprint(
            config,
            &settings(options),
            options.nomasq_all_reserved_ranges,
            options.backend.as_str()
        )
    ));
    out.push_str(&rendered(options, config).await);
    print(&out)
}

/// One line per merged CIDR: its key, the CIDR and the sources listing it.
fn origins_text(origins: &Origins) -> String {
    let mut out = String::new();
    if !origins.cidrs.is_empty() {
        out.push_str("sources of each CIDR:\n");
    }
    for (key, net, from) in &origins.cidrs {
        out.push_str(&format!("  {key} {net}: {}\n", from.join(", ")));
    }
    out
}

/// Remove our objects from both backends, every variant and family.
pub async fn cleanup(options: &Options) -> Result<ExitCode> {
    require_net_admin("cleanup")?;
    let chain = &options.masq_chain;
    let mut failed = false;
    let mut removed_any = false;
    for kind in [BackendKind::Iptables, BackendKind::Nftables] {
        let removal = select::remove_state(kind, chain).await;
        for line in removal.removed {
            removed_any = true;
            print(&format!("{line}\n"))?;
        }
        // Something of ours is still there and may still act on traffic:
        // the node is not clean, so the exit status must say so.
        for line in removal.kept {
            removed_any = true;
            error!("cleanup incomplete: {line}");
            failed = true;
        }
        for failure in removal.failures {
            error!("cleanup failed: {failure}");
            failed = true;
        }
    }
    if !removed_any && !failed {
        print(&format!(
            "nothing to remove: no {chain} chain or jump and no {} table found\n",
            nftables::TABLE
        ))?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Write to stdout, treating a closed pipe (`| head`) as the end, not a crash.
pub(super) fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
