//! `serve`, `submit` and `cancel`: the daemon and the commands that talk to
//! it through the store.

use crate::cli::{Cli, LimitArgs, RunArgs};
use crate::commands::{build_engine, goal_and_plan, load_config, open_store};
use anyhow::{bail, Result};
use sd_notify::NotifyState;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_engine::serve::ServeEvent;
use swarm_protocol::{ProjectId, ProjectState};
use tokio_util::sync::CancellationToken;

/// `agentswarm serve`. Notifies systemd: `READY=1` after recovery,
/// `STATUS=` as it changes, `WATCHDOG=1` when `WatchdogSec` is set,
/// `STOPPING=1` at shutdown. Exits 0 after a clean stop.
pub async fn serve(cli: &Cli, limits: &LimitArgs) -> Result<ExitCode> {
    crate::commands::become_supervisor();
    let config = load_config(cli, limits, None, None)?;
    let store = open_store(&config)?;
    let grace = config.shutdown_grace_secs;
    let engine = Arc::new(build_engine(
        config,
        store,
        &crate::cli::TapeArgs::default(),
    )?);
    tracing::info!(
        data_dir = %engine.config().data_dir.display(),
        max_workers = engine.config().max_concurrent_workers,
        memory_limit = engine.limiter().mechanism().as_str(),
        "agentswarm serve starting: {}",
        engine.limiter().reason()
    );
    let mut progress = engine.subscribe();
    let printer = tokio::spawn(async move {
        loop {
            match progress.recv().await {
                Ok(p) if p.kind != "tool" => tracing::info!(project = %p.project, "{}", p.message),
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(skipped = n, "progress lines skipped")
                }
                Err(_) => break,
            }
        }
    });
    let cancel = CancellationToken::new();
    let signals = crate::commands::spawn_signal_handler(cancel.clone());
    let sweeper = swarm_engine::Engine::spawn_orphan_sweeper(cancel.clone());
    let watchdog = sd_notify::watchdog_enabled();
    // When WATCHDOG=1 was last sent, and the last STATUS= line.
    let sent = std::sync::Mutex::new((Instant::now(), String::new()));
    let result = swarm_engine::serve::serve(engine.clone(), cancel.clone(), |event| match event {
        ServeEvent::Ready { recovered } => {
            tracing::info!(recovered, "recovery done; ready");
            let _ = sd_notify::notify(&[NotifyState::Ready]);
        }
        ServeEvent::Status(line) => {
            let mut sent = sent.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(period) = watchdog {
                if sent.0.elapsed() >= period / 4 {
                    let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                    sent.0 = Instant::now();
                }
            }
            if line != sent.1 {
                let _ = sd_notify::notify(&[NotifyState::Status(&line)]);
                sent.1 = line;
            }
        }
        ServeEvent::ProjectStarted(id) => tracing::info!(project = %id, "project started"),
        ServeEvent::ProjectEnded { project, outcome } => {
            tracing::info!(project = %project, outcome = %outcome, "project ended")
        }
        ServeEvent::Stopping => {
            tracing::info!(
                grace_seconds = grace,
                "shutdown: no new workers; SIGTERM to every worker's process tree, SIGKILL after the grace"
            );
            let _ = sd_notify::notify(&[
                NotifyState::Stopping,
                NotifyState::Status("stopping: workers get SIGTERM"),
            ]);
        }
    })
    .await;
    signals.abort();
    let _ = sweeper.await;
    let orphans = swarm_exec::reap_orphans();
    tracing::info!(orphans, "shutdown: every worker reaped");
    drop(engine);
    tracing::info!("shutdown: store closed; exiting");
    printer.abort();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// `agentswarm submit`: a queued project for the daemon.
pub fn submit(cli: &Cli, args: &RunArgs) -> Result<ExitCode> {
    if args.model.is_some() || args.base_url.is_some() {
        bail!("`submit` queues the project for `agentswarm serve`, which uses its own model settings; drop --model/--base-url and set them in the daemon's environment or agentswarm.toml");
    }
    let (goal, plan) = goal_and_plan(args)?;
    let config = load_config(cli, &args.limits, None, None)?;
    let store = open_store(&config)?;
    let lock = swarm_engine::create_project(&config, store.as_ref(), &goal, plan)?;
    let id = lock.id().clone();
    drop(lock);
    if args.out.json {
        println!(
            "{}",
            serde_json::json!({"project_id": id, "status": "queued"})
        );
    } else {
        println!("{id}");
        eprintln!(
            "queued; `agentswarm serve` picks it up within a second (`agentswarm status {id}`)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentswarm cancel`: marks the project cancelled in the store; a daemon
/// running it stops its workers within a second.
pub fn cancel(cli: &Cli, project: &str) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let store = open_store(&config)?;
    let id = ProjectId::new(project);
    let p = store.project(&id)?;
    if store.cancel_project(&id)? {
        println!("project {id}: cancelled (was {})", p.state);
        // Wait briefly for a runner to let go, so that the answer is complete.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match swarm_engine::lock_project(&config, &id) {
                Ok(_) => break,
                Err(swarm_engine::Error::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(swarm_engine::Error::Busy(_)) => {
                    eprintln!("its runner is still stopping its workers");
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(ExitCode::SUCCESS)
    } else {
        match p.state {
            ProjectState::Cancelled => println!("project {id} was already cancelled"),
            s => println!("project {id} has already ended ({s}); nothing to cancel"),
        }
        Ok(ExitCode::SUCCESS)
    }
}
