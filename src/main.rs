//! Entry point: parse the command line, start logging, run the subcommand,
//! and turn the outcome into an exit code.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use ip_masq_agent::{cli, commands, logging};

fn main() -> ExitCode {
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        match arg.into_string() {
            Ok(arg) => args.push(arg),
            Err(arg) => {
                eprintln!("argument {arg:?} is not valid UTF-8");
                return ExitCode::from(2);
            }
        }
    }
    let invocation = match cli::parse(args) {
        Ok(invocation) => invocation,
        // Asked for: stdout, so `--help | less` works.
        Err(cli::CliError::Help(usage)) => {
            print!("{usage}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(err.exit_code());
        }
    };
    logging::init(invocation.options.log_format, invocation.options.verbosity);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(commands::run(invocation)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
