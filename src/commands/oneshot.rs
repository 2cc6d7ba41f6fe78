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
use crate::config::{self, Config, Loaded};
use crate::plan;
use crate::source::Content;
use crate::source::api;
use crate::telemetry::Telemetry;

/// The config of the configured source, read once: the `--configmap`
/// object, else the `--config` file. The text names the source.
pub(super) async fn read_source(options: &Options) -> Result<(Content, String)> {
    match &options.api_source {
        Some(source) => {
            let client = api::client(source)
                .await
                .map_err(anyhow::Error::msg)
                .context("--configmap")?;
            let snapshot = api::fetch(client, source, &options.configmap_key)
                .await
                .map_err(anyhow::Error::msg)?;
            let origin = format!(
                "configmap {} key {}",
                source.configmap, options.configmap_key
            );
            let content = match snapshot.bytes {
                Some(bytes) => Content::Bytes(bytes),
                None => Content::Absent,
            };
            Ok((content, origin))
        }
        None => {
            let bytes = config::read(&options.config)
                .with_context(|| format!("reading {}", options.config.display()))?;
            let content = match bytes {
                Some(bytes) => Content::Bytes(bytes),
                None => Content::Absent,
            };
            Ok((content, options.config.display().to_string()))
        }
    }
}

/// Load and validate the configured source's config.
async fn load_source(options: &Options) -> Result<Loaded> {
    let (content, origin) = read_source(options).await?;
    let loaded = match content {
        Content::Bytes(bytes) => config::parse(&bytes, &load_options(options))
            .with_context(|| format!("loading {origin}"))?,
        Content::Absent => {
            info!(source = %origin, "no config; using the defaults");
            Loaded::absent(&load_options(options))
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    Ok(loaded)
}

/// One pass of the daemon's reconciler over every family.
pub async fn sync(options: &Options) -> Result<ExitCode> {
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
    print(&rendered(options, &loaded.config).await)?;
    Ok(ExitCode::SUCCESS)
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
}

async fn checked(options: &Options, file: Option<&Path>) -> Result<Checked> {
    if file.is_none() && options.api_source.is_some() {
        // Validate what the API serves now, as every node watching it would.
        let (content, origin) = read_source(options).await?;
        return Ok(Checked {
            absent: (
                format!("{origin}: absent; the agent uses the defaults"),
                false,
            ),
            name: origin,
            what: String::new(),
            bytes: match content {
                Content::Bytes(bytes) => Some(bytes),
                Content::Absent => None,
            },
        });
    }
    let path = file.unwrap_or(&options.config);
    let name = path.display().to_string();
    let absent = match file {
        Some(_) => (format!("{name}: no such file"), true),
        None => (
            format!("{name}: no config file; the agent uses the defaults"),
            false,
        ),
    };
    let Some(bytes) = config::read(path).with_context(|| format!("reading {name}"))? else {
        return Ok(Checked {
            name,
            what: String::new(),
            bytes: None,
            absent,
        });
    };
    // A ConfigMap manifest is checked by its data key, as a node sees it.
    let key = options.configmap_key.as_str();
    let (bytes, what) = match config::configmap_data(&bytes, key)
        .with_context(|| format!("reading ConfigMap {name}"))?
    {
        Some(data) => (data, format!(" ConfigMap data.{key}")),
        None => (bytes, " config file".to_owned()),
    };
    Ok(Checked {
        name,
        what,
        bytes: Some(bytes),
        absent,
    })
}

/// Validate a config and show what a node would do with it: warnings, the
/// effective config, its fingerprint and the rules.
pub async fn check(options: &Options, file: Option<&Path>) -> Result<ExitCode> {
    let Checked {
        name,
        what,
        bytes,
        absent: (absent, absent_fails),
    } = checked(options, file).await?;
    let loaded = match bytes {
        Some(bytes) => match config::parse(&bytes, &load_options(options)) {
            Ok(loaded) => {
                print(&format!("{name}: valid{what}\n"))?;
                loaded
            }
            Err(err) => {
                eprintln!("{name}: invalid{what}: {err}");
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
    let mut out = String::new();
    for warning in &loaded.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out.push_str(&format!(
        "effective config: {}\nfingerprint: {} (the ip_masq_agent_config metric of a node enforcing it)\n\n",
        loaded.config.to_json(),
        loaded.config.fingerprint()
    ));
    out.push_str(&rendered(options, &loaded.config).await);
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Remove our objects from both backends, every variant and family.
pub async fn cleanup(options: &Options) -> Result<ExitCode> {
    let chain = &options.masq_chain;
    let mut failed = false;
    let mut removed_any = false;
    for kind in [BackendKind::Iptables, BackendKind::Nftables] {
        let removal = select::remove_state(kind, chain).await;
        for line in removal.removed {
            removed_any = true;
            print(&format!("{line}\n"))?;
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
