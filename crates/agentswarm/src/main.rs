//! The `agentswarm` binary: parses flags, resolves the config and calls the
//! engine. `agentswarm worker` (internal) runs one task attempt and starts no
//! async runtime, to stay small.

mod bench;
mod cli;
mod client;
mod commands;
mod daemon;
mod doctor;
mod live;
mod logs;
mod output;
mod service;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    if matches!(cli.command, cli::Command::Worker) {
        return commands::worker();
    }
    // The daemon logs what it does (to the journal under systemd).
    let verbose = match cli.command {
        cli::Command::Serve { .. } => cli.verbose.max(1),
        _ => cli.verbose,
    };
    init_tracing(verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTSWARM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Every line masks the configured keys and key-shaped strings.
        .with_writer(|| swarm_llm::redact::RedactingWriter::new(std::io::stderr()))
        .with_target(false)
        .init();
}
