//! The long-running agent: telemetry and its HTTP listener, the backend, the
//! config source, then the loop. Wiring only; the loop is in `agent`.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tracing::{error, info, warn};

use super::{load_options, settings};
use crate::agent::{Agent, Trigger};
use crate::backend::select::{self, AnyBackend};
use crate::backend::{Backend, ErrorKind};
use crate::cli::Options;
use crate::plan;
use crate::source::api::{self, ConfigMapSource, SelectorSource};
use crate::source::file::FileSource;
use crate::source::{Source, Sources};
use crate::telemetry::{Series, Telemetry, http};

pub async fn run(options: &Options) -> Result<ExitCode> {
    let settings = settings(options);
    let families = plan::families(&settings);
    let error_kinds = ErrorKind::ALL.map(ErrorKind::label);
    let triggers = Trigger::READS.map(Trigger::as_str);
    let telemetry = Telemetry::new(Series {
        families: &families,
        error_kinds: &error_kinds,
        triggers: &triggers,
    });
    if let Some(address) = options.metrics_address {
        serve(address, &telemetry).await;
    }
    let mut backend = AnyBackend::select(options.backend, options.iptables_mode).await;
    match backend.probe().await {
        Ok(()) => info!(backend = %backend.describe(), "kernel backend ready"),
        // Not fatal: the loop retries, and a fixed image or node recovers.
        Err(err) => warn!(error = %err, "cannot run {} yet; will keep retrying", options.backend),
    }
    select::remove_other(options.backend, &options.masq_chain).await;
    // The `--config` paths, or with `--configmap` the ConfigMaps only (cli
    // leaves the files out), merged when there are several. Bad or missing
    // credentials are a deployment error: exit so the pod shows it
    // (CrashLoopBackOff) instead of running without a config.
    let mut sources: Vec<Source> = options
        .config
        .iter()
        .map(|path| {
            let file = FileSource::new(path.clone()).manifest_key(options.configmap_key.as_str());
            Source::File(file)
        })
        .collect();
    api::announce(&telemetry, &options.api_sources, &options.api_selectors);
    for api in &options.api_sources {
        sources.push(Source::ConfigMap(
            ConfigMapSource::connect(api, &options.configmap_key, &telemetry)
                .await
                .map_err(anyhow::Error::msg)
                .context("--configmap")?,
        ));
    }
    for selector in &options.api_selectors {
        sources.push(Source::Selector(
            SelectorSource::connect(selector, &options.configmap_key, &telemetry)
                .await
                .map_err(anyhow::Error::msg)
                .context("--configmap-selector")?,
        ));
    }
    let agent = Agent::new(
        settings,
        load_options(options),
        Sources::new(sources),
        backend,
        telemetry,
    )
    .backend_flag(options.backend.as_str());
    agent.run().await.context("installing signal handlers")?;
    Ok(ExitCode::SUCCESS)
}

/// Serve metrics and probes. Rules matter more than observability: a port
/// that cannot be bound is logged and the agent keeps enforcing; the missing
/// readiness endpoint makes the problem visible.
async fn serve(address: SocketAddr, telemetry: &Telemetry) {
    match http::bind(address).await {
        Ok(listener) => {
            info!(%address, "serving /metrics, /healthz and /readyz");
            let served = telemetry.clone();
            tokio::spawn(async move {
                if let Err(err) = http::serve(listener, served, http::Limits::default()).await {
                    error!(error = %err, "metrics endpoint stopped");
                }
            });
        }
        Err(err) => error!(%address, error = %err, "cannot serve metrics and probes"),
    }
}
