//! `agentswarm serve`: the daemon. It recovers every unfinished project
//! first, then runs every queued or unfinished project of the store at once,
//! all sharing the engine's worker slots (`MAX_CONCURRENT_WORKERS` counts
//! over all of them). The store is its inbox: `agentswarm submit` adds a
//! queued project, `agentswarm cancel` marks one cancelled, and the daemon
//! looks once a second.

use crate::{Engine, Error, Result, RunReport};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_protocol::{ProjectId, ProjectState};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What the daemon reports as it goes (the binary turns these into systemd
/// notifications and log lines).
#[derive(Debug, Clone, PartialEq)]
pub enum ServeEvent {
    /// Recovery is done; projects start now.
    Ready {
        recovered: usize,
    },
    /// Once a second, and whenever the status line changes.
    Status(String),
    ProjectStarted(ProjectId),
    ProjectEnded {
        project: ProjectId,
        outcome: String,
    },
    /// Shutdown began: no new work starts; running workers are stopped.
    Stopping,
}

/// How long a project whose run failed with an error (not a failed task: an
/// error such as an unreadable repository) waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub async fn serve(
    engine: Arc<Engine>,
    cancel: CancellationToken,
    on: impl Fn(ServeEvent) + Send + Sync,
) -> Result<()> {
    let mut recovered = 0;
    for p in engine.store.list_projects()? {
        if p.state.is_terminal() {
            continue;
        }
        match engine.lock(&p.id) {
            Ok(lock) => match engine.recover(&lock).await {
                Ok(()) => recovered += 1,
                Err(e) => tracing::error!(project = %p.id, error = %e, "recovery failed"),
            },
            Err(Error::Busy(_)) => {}
            Err(e) => return Err(e),
        }
    }
    on(ServeEvent::Ready { recovered });

    let mut runs: HashMap<ProjectId, CancellationToken> = HashMap::new();
    let mut set: JoinSet<(ProjectId, Result<RunReport>)> = JoinSet::new();
    let mut retry_after: HashMap<ProjectId, Instant> = HashMap::new();
    let mut last_status = String::new();
    while !cancel.is_cancelled() {
        // A store error (a full disk, a locked file) must not abandon the
        // runs in progress: log it and look again in a second.
        let projects = match engine.store.list_projects() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the projects; trying again");
                Vec::new()
            }
        };
        let mut waiting = 0;
        // Oldest first: projects are listed newest first.
        for p in projects.iter().rev() {
            if let Some(token) = runs.get(&p.id) {
                if p.state == ProjectState::Cancelled && !token.is_cancelled() {
                    tracing::info!(project = %p.id, "cancelled: stopping its workers");
                    token.cancel();
                }
                continue;
            }
            if p.state.is_terminal() || p.state.awaits_operator() {
                continue;
            }
            if retry_after.get(&p.id).is_some_and(|t| Instant::now() < *t) {
                waiting += 1;
                continue;
            }
            match engine.lock(&p.id) {
                Ok(lock) => {
                    let token = cancel.child_token();
                    runs.insert(p.id.clone(), token.clone());
                    on(ServeEvent::ProjectStarted(p.id.clone()));
                    let e = engine.clone();
                    set.spawn(async move {
                        let report = e.run(&lock, token).await;
                        (lock.id().clone(), report)
                    });
                }
                // Run in the foreground by `run` or `resume`.
                Err(Error::Busy(_)) => waiting += 1,
                Err(e) => {
                    tracing::error!(project = %p.id, error = %e, "cannot lock the project");
                    retry_after.insert(p.id.clone(), Instant::now() + RETRY_AFTER);
                    waiting += 1;
                }
            }
        }
        let (status, key) = status_line(&engine, runs.len(), waiting);
        // Logged when it says something new, not when the gate's readings
        // moved (they change every second while it is closed).
        if key != last_status {
            tracing::info!("{status}");
            last_status = key;
        }
        on(ServeEvent::Status(status));
        tokio::select! {
            _ = cancel.cancelled() => break,
            Some(joined) = set.join_next() => {
                if let Ok((id, report)) = joined {
                    runs.remove(&id);
                    let outcome = match report {
                        Ok(r) => r.status.to_string(),
                        Err(Error::Cancelled(_)) => "cancelled".to_owned(),
                        Err(e) => {
                            retry_after.insert(id.clone(), Instant::now() + RETRY_AFTER);
                            format!("error: {e} (next try in {} s)", RETRY_AFTER.as_secs())
                        }
                    };
                    on(ServeEvent::ProjectEnded { project: id, outcome });
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    on(ServeEvent::Stopping);
    // Every run's token is a child of `cancel`: each stops its workers
    // (SIGTERM, then SIGKILL after the grace) and records them interrupted.
    while let Some(joined) = set.join_next().await {
        if let Ok((id, report)) = joined {
            let outcome = match report {
                Ok(r) => r.status.to_string(),
                Err(e) => format!("error: {e}"),
            };
            on(ServeEvent::ProjectEnded {
                project: id,
                outcome,
            });
        }
    }
    Ok(())
}

/// The daemon's status line, and the same without the gate's figures (to
/// tell a change of state from a change of readings).
fn status_line(engine: &Engine, running: usize, waiting: usize) -> (String, String) {
    let mut s = format!(
        "running {running} project(s), {} of {} worker(s) busy",
        engine.running_workers(),
        engine.config.max_concurrent_workers
    );
    if waiting > 0 {
        s.push_str(&format!("; {waiting} queued"));
    }
    let mut key = s.clone();
    if let Some(why) = engine.gate_closed() {
        key.push_str(&format!("; gated: {}", crate::scheduler::cause(&why)));
        s.push_str(&format!("; gated: {why}"));
    }
    (s, key)
}
