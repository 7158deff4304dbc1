//! `serve`, `submit` and `cancel`: the daemon (with its HTTP API) and the
//! commands that talk to it, through its API when it is up, else through
//! the store.

use crate::cli::{Cli, LimitArgs, SubmitArgs};
use crate::client::{ApiFailure, Client};
use crate::commands::{build_engine, goal_and_plan, load_config, open_store};
use anyhow::{bail, Context, Result};
use sd_notify::NotifyState;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_engine::operator::CancelOutcome;
use swarm_engine::serve::ServeEvent;
use swarm_protocol::{ProjectId, ProjectState};
use tokio_util::sync::CancellationToken;

/// `agentswarm serve`. Notifies systemd: `READY=1` after recovery,
/// `STATUS=` as it changes, `WATCHDOG=1` when `WatchdogSec` is set,
/// `STOPPING=1` at shutdown. Exits 0 after a clean stop.
pub async fn serve(
    cli: &Cli,
    limits: &LimitArgs,
    bind: Option<std::net::SocketAddr>,
) -> Result<ExitCode> {
    crate::commands::become_supervisor();
    let mut config = load_config(cli, limits, None, None)?;
    if let Some(b) = bind {
        config.bind = b;
        config
            .sources
            .insert("bind", swarm_config::Source::Flag("--bind"));
    }
    let token = config.api_token.clone();
    if let Err(why) = swarm_server::check_bind(config.bind, token.as_ref()) {
        bail!("{why}");
    }
    // One daemon a data directory: a second would run the same projects and,
    // on exit, take the first one's advertisement with it.
    let _only_daemon = crate::client::Endpoint::claim(&config.data_dir)?;
    // Listen before recovery: /healthz answers `recovering` until it is done.
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (is another `agentswarm serve` running? choose another address with --bind or AGENTSWARM_BIND)",
                config.bind
            )
        })?;
    let address = listener.local_addr()?;
    let store = open_store(&config)?;
    let grace = config.shutdown_grace_secs;
    let data_dir = config.data_dir.clone();
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
    let phase = swarm_server::Phase::default();
    let http_stop = CancellationToken::new();
    let app = swarm_server::router(swarm_server::AppState::new(
        engine.clone(),
        phase.clone(),
        token.clone(),
        http_stop.clone(),
    ));
    let http = tokio::spawn(swarm_server::serve(
        listener,
        app,
        http_stop.clone(),
        Duration::from_secs(5),
    ));
    let endpoint = crate::client::Endpoint::advertise(&data_dir, address)?;
    tracing::info!(
        address = %address,
        token = if token.is_some() { "required" } else { "none (loopback only)" },
        "HTTP API and dashboard: http://{address}/"
    );
    let signals = crate::commands::spawn_signal_handler(cancel.clone());
    let sweeper = swarm_engine::Engine::spawn_orphan_sweeper(cancel.clone());
    let watchdog = sd_notify::watchdog_enabled();
    // When WATCHDOG=1 was last sent, and the last STATUS= line.
    let sent = std::sync::Mutex::new((Instant::now(), String::new()));
    let result = swarm_engine::serve::serve(engine.clone(), cancel.clone(), |event| match event {
        ServeEvent::Ready { recovered } => {
            phase.set_ready();
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
            tracing::info!(project = %project, outcome = %outcome, "project ended");
            // What the project allocated is free now: give its pages back,
            // or the daemon's RSS creeps up project after project.
            crate::malloc::release_free_memory();
        }
        ServeEvent::Stopping => {
            phase.set_stopping();
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
    http_stop.cancel();
    match http.await {
        Ok(Ok(())) => tracing::info!("shutdown: HTTP API closed"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP API ended with an error"),
        Err(e) => tracing::warn!(error = %e, "the HTTP API task failed"),
    }
    drop(endpoint);
    let _ = sweeper.await;
    let orphans = swarm_exec::reap_orphans();
    tracing::info!(orphans, "shutdown: every worker reaped");
    drop(engine);
    tracing::info!("shutdown: store closed; exiting");
    printer.abort();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The per-project options among the limit flags.
fn project_options(l: &LimitArgs) -> swarm_protocol::api::ProjectOptions {
    swarm_protocol::api::ProjectOptions {
        max_tasks: l.max_tasks,
        max_attempts: l.max_attempts,
        max_turns: l.max_turns,
        max_fix_rounds: l.max_fix_rounds,
        max_cost_usd: l.max_cost_usd,
        max_tokens: l.max_tokens,
        allow_network: l.allow_network.then_some(true),
        agent: l.agent.clone(),
        review: l.review,
    }
}

/// `agentswarm submit`: a queued project for the daemon, through its API
/// when it is up, else straight into the store.
pub async fn submit(cli: &Cli, args: &SubmitArgs) -> Result<ExitCode> {
    let (goal, plan) = goal_and_plan(
        args.goal.as_deref(),
        args.goal_file.as_deref(),
        args.plan.as_deref(),
    )?;
    let limits = LimitArgs::from(&args.limits);
    let config = load_config(cli, &limits, None, None)?;
    let mut daemon = true;
    let source = args.repo.request()?;
    let id = match Client::discover(&config).await? {
        Some(client) => {
            let body = serde_json::to_value(swarm_protocol::api::SubmitRequest {
                goal,
                plan: plan.map(serde_json::to_value).transpose()?,
                options: project_options(&limits),
                repo: source.as_ref().map(|s| s.repo.clone()),
                base: source.as_ref().and_then(|s| s.base.clone()),
                push: source.as_ref().is_some_and(|s| s.push),
            })?;
            let created: swarm_protocol::api::ProjectSummary =
                client.post("/api/v1/projects", &body).await?;
            ProjectId::new(created.id)
        }
        None => {
            daemon = false;
            let store = open_store(&config)?;
            let lock = swarm_engine::create_project_from(
                &config,
                store.as_ref(),
                &goal,
                plan,
                config.run.clone(),
                source.as_ref(),
            )?;
            let id = lock.id().clone();
            drop(lock);
            id
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({"project_id": id, "status": "queued", "daemon": daemon})
        );
    } else {
        println!("{id}");
    }
    if daemon {
        eprintln!("queued; the daemon starts it within a second (`agentswarm status {id}`)");
    } else {
        eprintln!(
            "queued, but no `agentswarm serve` is running on {}: the project starts when one \
             does (`agentswarm serve`, or `systemctl start agentswarm` for the service), or run \
             it in the foreground now with `agentswarm resume {id}`",
            config.data_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `agentswarm cancel`: through the daemon's API when it is up (it stops the
/// project's workers within a second), else marks the project cancelled in
/// the store.
pub async fn cancel(cli: &Cli, project: &str) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let id = ProjectId::new(project);
    if let Some(client) = Client::discover(&config).await? {
        let path = crate::client::project_path(id.as_str())?;
        let before: swarm_protocol::api::ProjectDetail = client.get(&path).await?;
        let before = before.project.state;
        let cancelled = client
            .post::<swarm_protocol::api::ProjectSummary>(
                &format!("{path}/cancel"),
                &serde_json::json!({}),
            )
            .await;
        match cancelled {
            Ok(_) => println!("project {id}: cancelled (was {before})"),
            Err(e)
                if e.downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 409) =>
            {
                match before {
                    ProjectState::Cancelled => println!("project {id} was already cancelled"),
                    s => println!("project {id} has already ended ({s}); nothing to cancel"),
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e),
        }
        if client.is_local() {
            wait_for_runner(&config, &id).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let store = open_store(&config)?;
    match swarm_engine::operator::cancel_project(store.as_ref(), &id)? {
        CancelOutcome::Cancelled { was } => {
            println!("project {id}: cancelled (was {was})");
            wait_for_runner(&config, &id).await?;
        }
        CancelOutcome::AlreadyEnded(ProjectState::Cancelled) => {
            println!("project {id} was already cancelled")
        }
        CancelOutcome::AlreadyEnded(s) => {
            println!("project {id} has already ended ({s}); nothing to cancel")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits (at most 30 s) for whoever runs the project to let go of it, so
/// that `cancel` answers once its workers are stopped.
async fn wait_for_runner(config: &swarm_config::Config, id: &ProjectId) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match swarm_engine::lock_project(config, id) {
            Ok(_) => return Ok(()),
            Err(swarm_engine::Error::Busy(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(swarm_engine::Error::Busy(_)) => {
                eprintln!("its runner is still stopping its workers");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
}
