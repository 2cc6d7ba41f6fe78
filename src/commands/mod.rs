//! The subcommands: each turns parsed options into an exit code, writing its
//! result to stdout and its diagnostics to the log (stderr). `daemon` wires
//! the long-running agent; `oneshot` holds `check`, `render`, `sync` and
//! `cleanup`, where `sync` is one pass of the same reconciler; `explain`
//! asks the masquerade decision about addresses.

mod daemon;
mod explain;
mod live;
mod oneshot;

use std::process::ExitCode;

use anyhow::Result;
use tracing::info;

use crate::cli::{Command, Invocation, Options};
use crate::config::LoadOptions;
use crate::plan::Settings;

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
        Command::Check { file } => oneshot::check(&options, file.as_deref()).await,
        Command::Render => oneshot::render(&options).await,
        Command::Explain {
            source,
            addresses,
            output,
            live: false,
        } => explain::explain(&options, source, &addresses, output).await,
        Command::Explain {
            source,
            addresses,
            output,
            live: true,
        } => live::explain_live(&options, source, &addresses, output).await,
        Command::Sync => oneshot::sync(&options).await,
        Command::Cleanup {
            stale_chains: false,
        } => oneshot::cleanup(&options).await,
        Command::Cleanup { stale_chains: true } => live::cleanup_stale(&options).await,
        Command::Run => {
            info!(version = crate::VERSION, "ip-masq-agent starting");
            for (name, value) in &flags {
                info!("FLAG: --{name}={}", crate::cli::go_quote(value));
            }
            daemon::run(&options).await
        }
    }
}

/// The rule-shaping settings from the flags.
fn settings(options: &Options) -> Settings {
    Settings {
        chain: options.masq_chain.clone(),
        enable_ipv6: options.enable_ipv6,
        random_fully: options.random_fully,
        authoritative: options.authoritative,
        to_ports: options.to_ports.clone(),
    }
}

/// The config-loading settings from the flags.
fn load_options(options: &Options) -> LoadOptions {
    LoadOptions {
        all_reserved_ranges: options.nomasq_all_reserved_ranges,
        enable_ipv6: options.enable_ipv6,
    }
}
