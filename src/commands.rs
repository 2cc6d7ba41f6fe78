//! The subcommands: each turns parsed options into an exit code, writing its
//! result to stdout and its diagnostics to the log (stderr).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use futures_util::future::join_all;
use tracing::{info, warn};

use k8s_openapi::api::core::v1::ObjectReference;

use crate::agent::{Agent, Input};
use crate::apisource::{self, events::EventSink};
use crate::backend::iptables::{self, Iptables, Variant};
use crate::backend::nftables::{self, Nftables};
use crate::backend::{Backend, BackendError, CleanupReport, ErrorKind, Selected};
use crate::cli::{ApiSource, BackendKind, Command, Invocation, IptablesMode, Options};
use crate::config::{self, Config, LoadOptions, Loaded};
use crate::plan::{self, ChainName, Family, Settings};
use crate::telemetry::{Telemetry, http};

/// Dispatch one invocation.
pub async fn run(invocation: Invocation) -> Result<ExitCode> {
    let Invocation {
        options,
        command,
        flags,
    } = invocation;
    match command {
        Command::Version => {
            println!("ip-masq-agent {}", crate::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { file } => check(&options, file.as_deref()).await,
        Command::Render => render(&options).await,
        Command::Sync => sync(&options).await,
        Command::Cleanup => cleanup(&options).await,
        Command::Run => {
            info!(version = crate::VERSION, "ip-masq-agent starting");
            for (name, value) in &flags {
                info!("FLAG: --{name}={}", crate::cli::go_quote(value));
            }
            daemon(&options).await
        }
    }
}

/// The rule-shaping settings from the flags.
pub fn settings(options: &Options) -> Settings {
    Settings {
        chain: options.masq_chain.clone(),
        enable_ipv6: options.enable_ipv6,
        random_fully: options.random_fully,
        to_ports: options.to_ports.clone(),
    }
}

pub fn load_options(options: &Options) -> LoadOptions {
    LoadOptions {
        all_reserved_ranges: options.nomasq_all_reserved_ranges,
        enable_ipv6: options.enable_ipv6,
    }
}

/// The iptables variant to use: the flag's, or what the node uses.
pub async fn choose_backend(mode: IptablesMode) -> Iptables {
    let variant = match mode {
        IptablesMode::Nft => Variant::Nft,
        IptablesMode::Legacy => Variant::Legacy,
        IptablesMode::Auto => {
            let (variant, evidence) = iptables::detect_variant().await;
            info!(
                variant = variant.label(),
                nft_kubelet_chains = evidence.nft_kubelet_chains,
                legacy_kubelet_chains = evidence.legacy_kubelet_chains,
                nft_rules = evidence.nft_rules,
                legacy_rules = evidence.legacy_rules,
                "iptables mode detected"
            );
            variant
        }
    };
    Iptables::new(variant)
}

/// The backend `--backend` asks for, ready to use.
pub async fn select_backend(options: &Options) -> Selected {
    match options.backend {
        BackendKind::Iptables => Selected::Iptables(choose_backend(options.iptables_mode).await),
        BackendKind::Nftables => Selected::Nftables(Nftables::new()),
    }
}

/// What removing one backend's state came to: the objects removed, and the
/// failures (each naming where it happened).
#[derive(Debug, Default)]
struct Removal {
    removed: Vec<String>,
    failures: Vec<String>,
}

impl Removal {
    fn record(
        &mut self,
        result: Result<CleanupReport, BackendError>,
        what: impl FnOnce() -> String,
    ) {
        match result {
            Ok(report) => self.removed.extend(report),
            // The tool is not installed: nothing of ours can be there.
            Err(err) if err.kind == ErrorKind::NotFound => {}
            Err(err) => self.failures.push(format!("{}: {err}", what())),
        }
    }
}

/// Remove our state from one backend, both families, every iptables
/// variant. Only what is present is touched. The places are independent
/// (separate tables), so they are examined concurrently: on a node with
/// nothing to remove this is the cost of one `iptables-save`, not four,
/// which is most of a one-shot `sync` on the nftables backend.
async fn remove_state(kind: BackendKind, chain: &ChainName) -> Removal {
    let families = [Family::Ipv4, Family::Ipv6];
    let mut removal = Removal::default();
    match kind {
        BackendKind::Iptables => {
            let jobs = [Variant::Nft, Variant::Legacy]
                .into_iter()
                .flat_map(|variant| families.map(|family| (variant, family)))
                .map(|(variant, family)| async move {
                    let result = Iptables::new(variant).cleanup(family, chain).await;
                    (variant, family, result)
                });
            for (variant, family, result) in join_all(jobs).await {
                removal.record(result, || {
                    format!("iptables ({}) {family}", variant.label())
                });
            }
        }
        BackendKind::Nftables => {
            let jobs = families.map(|family| async move {
                (family, Nftables::new().cleanup(family, chain).await)
            });
            for (family, result) in join_all(jobs).await {
                removal.record(result, || format!("nftables {family}"));
            }
        }
    }
    removal
}

/// Remove what the backend not chosen left behind (a node switching
/// backends), before the chosen one writes: two backends masquerading the
/// same traffic would be harmless, but a stale exemption list in the other
/// one would not follow config changes. A failure is logged and does not
/// stop enforcement.
async fn remove_other_backend(options: &Options) {
    let other = match options.backend {
        BackendKind::Iptables => BackendKind::Nftables,
        BackendKind::Nftables => BackendKind::Iptables,
    };
    let removal = remove_state(other, &options.masq_chain).await;
    for line in removal.removed {
        info!(backend = %options.backend, "removed the other backend's state: {line}");
    }
    for failure in removal.failures {
        warn!("cannot remove the other backend's state ({failure})");
    }
}

async fn daemon(options: &Options) -> Result<ExitCode> {
    let telemetry = Telemetry::default();
    if let Some(address) = options.metrics_address {
        match http::bind(address).await {
            Ok(listener) => {
                info!(%address, "serving /metrics, /healthz and /readyz");
                let served = telemetry.clone();
                tokio::spawn(async move {
                    if let Err(err) = http::serve(listener, served).await {
                        tracing::error!(error = %err, "metrics endpoint stopped");
                    }
                });
            }
            // Rules matter more than observability: keep enforcing them. The
            // missing readiness endpoint makes the problem visible.
            Err(err) => tracing::error!(%address, error = %err, "cannot serve metrics and probes"),
        }
    }
    let mut backend = select_backend(options).await;
    match backend.probe().await {
        Ok(_) => info!(backend = %backend.describe(), "kernel backend ready"),
        // Not fatal: the loop retries, and a fixed image or node recovers.
        Err(err) => warn!(error = %err, "cannot run {} yet; will keep retrying", options.backend),
    }
    remove_other_backend(options).await;
    let input = match &options.api_source {
        None => Input::File(options.config.clone()),
        Some(source) => api_input(options, source, &telemetry).await?,
    };
    let agent = Agent::new(
        settings(options),
        load_options(options),
        input,
        backend,
        telemetry,
    );
    agent.run().await.context("installing signal handlers")?;
    Ok(ExitCode::SUCCESS)
}

/// Connect the API source: credentials, the watch, and the Event sink.
/// With `--configmap`, the file (`--config`) is not read at all: one source
/// of truth per node, and the one that reaches every node at once wins.
async fn api_input(options: &Options, source: &ApiSource, telemetry: &Telemetry) -> Result<Input> {
    // Bad or missing credentials are a deployment error: exit so the pod
    // shows it (CrashLoopBackOff) instead of running without a config.
    let client = apisource::client(source)
        .await
        .map_err(anyhow::Error::msg)
        .context("--configmap")?;
    let node = std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let pod = match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
        (Ok(namespace), Ok(name)) if !namespace.is_empty() && !name.is_empty() => {
            Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace),
                name: Some(name),
                uid: std::env::var("POD_UID").ok().filter(|u| !u.is_empty()),
                ..Default::default()
            })
        }
        _ => {
            warn!(
                "POD_NAME and POD_NAMESPACE are not set (downward API); SyncFailed events are only logged"
            );
            None
        }
    };
    let key = &options.configmap_key;
    info!(configmap = %source.configmap, key = %key, node = %node, "reading the config through the Kubernetes API; --config is not used");
    let events = EventSink::spawn(client.clone(), node, pod, telemetry.metrics.clone());
    let snapshots = apisource::spawn_watch(client, source, key, telemetry.clone());
    Ok(Input::Api {
        configmap: source.configmap.clone(),
        key: key.to_string(),
        snapshots,
        events: Some(events),
    })
}

/// Where the config bytes of a one-shot command come from, for messages.
struct Origin(String);

/// The config bytes from the configured source: the `--configmap` object
/// read once, else the `--config` file. `None`: absent (defaults).
async fn read_source(options: &Options) -> Result<(Option<Vec<u8>>, Origin)> {
    match &options.api_source {
        Some(source) => {
            let client = apisource::client(source)
                .await
                .map_err(anyhow::Error::msg)
                .context("--configmap")?;
            let snapshot = apisource::fetch(client, source, &options.configmap_key)
                .await
                .map_err(anyhow::Error::msg)?;
            Ok((
                snapshot.bytes,
                Origin(format!(
                    "configmap {} key {}",
                    source.configmap, options.configmap_key
                )),
            ))
        }
        None => {
            let bytes = config::read(&options.config)
                .with_context(|| format!("reading {}", options.config.display()))?;
            Ok((bytes, Origin(options.config.display().to_string())))
        }
    }
}

/// Load and validate the configured source's config.
async fn load_source(options: &Options) -> Result<Loaded> {
    let (bytes, Origin(origin)) = read_source(options).await?;
    let loaded = match bytes {
        Some(bytes) => config::parse(&bytes, &load_options(options))
            .with_context(|| format!("loading {origin}"))?,
        None => {
            info!(source = %origin, "no config; using the defaults");
            Loaded::absent(&load_options(options))
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    Ok(loaded)
}

async fn sync(options: &Options) -> Result<ExitCode> {
    let loaded = load_source(options).await?;
    let settings = settings(options);
    let mut backend = select_backend(options).await;
    remove_other_backend(options).await;
    let mut ok = true;
    for family in plan::families(&settings) {
        let desired = plan::plan(&loaded.config, &settings, family);
        let result = backend.reconcile(&desired).await;
        if let Ok(outcome) = &result {
            for jump in &outcome.foreign_jumps {
                warn!(family = %family, rule = %jump, "another rule we do not own also jumps to {}; traffic may traverse it twice", settings.chain);
            }
        }
        match result {
            Ok(outcome) if outcome.wrote => {
                info!(family = %family, result = "applied", "rules applied: {}", outcome.differences.join("; "))
            }
            Ok(_) => info!(family = %family, result = "unchanged", "rules unchanged"),
            Err(err) => {
                tracing::error!(family = %family, result = "failed", "sync failed: {err}");
                ok = false;
                // IPv6 is not attempted after an IPv4 failure, as upstream.
                break;
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Render every family's transaction as `render` and `check` print it.
async fn rendered(options: &Options, config: &Config) -> String {
    let settings = settings(options);
    let backend = match options.backend {
        BackendKind::Iptables => {
            let mut backend = Iptables::new(match options.iptables_mode {
                IptablesMode::Legacy => Variant::Legacy,
                _ => Variant::Nft,
            });
            // The version decides --random-fully; without iptables here,
            // assume a current release (rendering needs neither root nor
            // the tools).
            let _ = backend.probe_version().await;
            Selected::Iptables(backend)
        }
        BackendKind::Nftables => Selected::Nftables(Nftables::new()),
    };
    let mut out = String::new();
    for family in plan::families(&settings) {
        let desired = plan::plan(config, &settings, family);
        let tool = match (options.backend, family) {
            (BackendKind::Nftables, _) => "nft -f -",
            (BackendKind::Iptables, Family::Ipv4) => "iptables-restore --noflush",
            (BackendKind::Iptables, Family::Ipv6) => "ip6tables-restore --noflush",
        };
        out.push_str(&format!("# {family}: {tool}\n"));
        out.push_str(&backend.render(&desired));
    }
    out
}

async fn render(options: &Options) -> Result<ExitCode> {
    let loaded = load_source(options).await?;
    print(&rendered(options, &loaded.config).await)?;
    Ok(ExitCode::SUCCESS)
}

async fn check(options: &Options, file: Option<&Path>) -> Result<ExitCode> {
    if file.is_none() && options.api_source.is_some() {
        return check_live(options).await;
    }
    let path = file.unwrap_or(&options.config);
    let bytes = config::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = options.configmap_key.as_str();
    let loaded = match bytes {
        Some(bytes) => {
            let (text, origin) = match config::configmap_data(&bytes, key)
                .with_context(|| format!("reading ConfigMap {}", path.display()))?
            {
                Some(data) => (data, format!("ConfigMap data.{key}")),
                None => (bytes, "config file".to_owned()),
            };
            match config::parse(&text, &load_options(options)) {
                Ok(loaded) => {
                    print(&format!("{}: valid {origin}\n", path.display()))?;
                    loaded
                }
                Err(err) => {
                    eprintln!("{}: invalid {origin}: {err}", path.display());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        None if file.is_some() => {
            eprintln!("{}: no such file", path.display());
            return Ok(ExitCode::FAILURE);
        }
        None => {
            print(&format!(
                "{}: no config file; the agent uses the defaults\n",
                path.display()
            ))?;
            config::parse(b"", &load_options(options))?
        }
    };
    check_report(options, &loaded).await
}

/// `check` with `--configmap` and no FILE: validate what the API serves now,
/// as every node watching it would.
async fn check_live(options: &Options) -> Result<ExitCode> {
    let (bytes, Origin(origin)) = read_source(options).await?;
    let loaded = match bytes {
        Some(bytes) => match config::parse(&bytes, &load_options(options)) {
            Ok(loaded) => {
                print(&format!("{origin}: valid\n"))?;
                loaded
            }
            Err(err) => {
                eprintln!("{origin}: invalid: {err}");
                return Ok(ExitCode::FAILURE);
            }
        },
        None => {
            print(&format!("{origin}: absent; the agent uses the defaults\n"))?;
            config::parse(b"", &load_options(options))?
        }
    };
    check_report(options, &loaded).await
}

/// What `check` prints after the verdict: warnings, the effective config,
/// its fingerprint and the rules.
async fn check_report(options: &Options, loaded: &Loaded) -> Result<ExitCode> {
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

async fn cleanup(options: &Options) -> Result<ExitCode> {
    let chain = &options.masq_chain;
    let mut failed = false;
    let mut removed_any = false;
    for kind in [BackendKind::Iptables, BackendKind::Nftables] {
        let removal = remove_state(kind, chain).await;
        for line in removal.removed {
            removed_any = true;
            print(&format!("{line}\n"))?;
        }
        for failure in removal.failures {
            tracing::error!("cleanup failed: {failure}");
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
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to stdout"),
    }
}
