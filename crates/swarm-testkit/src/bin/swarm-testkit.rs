//! `swarm-testkit serve --scenario FILE`: the scripted model server for
//! manual runs (OpenAI Chat Completions and Anthropic Messages);
//! `swarm-testkit demo-scenario` prints the demo's scenario.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use swarm_testkit::{Scenario, ScriptedServer};

#[derive(Parser)]
#[command(
    name = "swarm-testkit",
    about = "A scripted OpenAI- and Anthropic-compatible model server (no real model, no key)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a scenario until Ctrl-C; prints the base URL to use as OPENAI_BASE_URL
    /// (the Anthropic Messages API is served at <base URL>/messages).
    Serve {
        /// A scenario file (docs/testkit.md); the demo's if absent.
        #[arg(long)]
        scenario: Option<std::path::PathBuf>,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Print the demo scenario as JSON (a starting point for your own).
    DemoScenario,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::DemoScenario => {
            println!(
                "{}",
                serde_json::to_string_pretty(&swarm_testkit::demo_scenario())?
            );
        }
        Cmd::Serve { scenario, listen } => {
            let sc = match scenario {
                Some(p) => Scenario::from_file(&p)?,
                None => Scenario::from_json_str(&swarm_testkit::demo_scenario().to_string())?,
            };
            let server = ScriptedServer::start_on(sc, listen).await?;
            println!("scripted model server on {}", server.base_url());
            println!(
                "serves POST {0}/chat/completions (OpenAI) and POST {0}/messages (Anthropic, needs an anthropic-version header)",
                server.base_url()
            );
            println!(
                "export OPENAI_BASE_URL={} OPENAI_API_KEY=not-a-real-key AGENTSWARM_MODEL=scripted",
                server.base_url()
            );
            tokio::signal::ctrl_c()
                .await
                .context("waiting for Ctrl-C")?;
            let n = server.requests().len();
            let v = server.violations();
            println!("{n} request(s), {} violation(s)", v.len());
            for x in v {
                println!("violation: {x}");
            }
            server.shutdown().await;
        }
    }
    Ok(())
}
