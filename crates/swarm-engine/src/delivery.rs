//! The end of a run: the delivery archive of what `main` tracks, its
//! manifests, and the project's final state (`done`, `failed`, or
//! `interrupted` when the run was stopped with work left).

use crate::mainline::Mainline;
use crate::prompts::CommandResult;
use crate::run::{report, set_project};
use crate::scheduler::Scheduler;
use crate::{packager, wording, Error, Result, RunReport};
use std::sync::Arc;
use swarm_protocol::{ProjectState, TaskState};
use swarm_store::Store;

/// Waits for the background work, writes the delivery (also for a failed
/// run, marked failed), and records the final state.
pub(crate) async fn finish(
    s: &mut Scheduler<'_, Mainline>,
    plan_name: &str,
    sandbox_report: &serde_json::Value,
    agents_report: &Option<serde_json::Value>,
    pool: Arc<swarm_git::WorktreePool>,
) -> Result<RunReport> {
    s.integration.settle().await;
    let engine = s.engine;
    let id = s.id.clone();
    let verify_done = s
        .verify_task()
        .is_some_and(|v| s.tasks[&v].state == TaskState::Done);
    let unfinished = s.tasks.values().any(|t| !t.state.is_terminal());
    if s.cancel.is_cancelled() && !verify_done && unfinished {
        set_project(engine, &id, ProjectState::Interrupted, None)?;
        engine.emit(
            &id,
            None,
            "project",
            format!("project {id}: interrupted; `agentswarm resume {id}` carries on"),
        );
        return report(engine, &id, None);
    }
    let status = if verify_done {
        ProjectState::Done
    } else {
        ProjectState::Failed
    };
    let error = (!verify_done).then(|| wording::failure_summary(&s.order, &s.tasks));

    let store = engine.store.as_ref();
    let project = store.project(&id)?;
    let tasks = store.tasks(&id)?;
    let repo = s.integration.repo().clone();
    let final_commit = repo.head().ok();
    let last_verify = match s.last_verify.clone() {
        Some(v) => Some(v),
        None => verify_results_from_events(store, &id)?,
    };
    let mut manifest = packager::manifest_json(
        &project,
        &tasks,
        status.as_str(),
        final_commit.as_deref(),
        last_verify.as_deref(),
        store,
    );
    if let Some(obj) = manifest.as_object_mut() {
        obj.insert("sandbox".into(), sandbox_report.clone());
        if let Some(a) = agents_report {
            obj.insert("agents".into(), a.clone());
        }
        if let Some(e) = &error {
            obj.insert("error".into(), serde_json::Value::String(e.clone()));
        }
    }
    let outputs = s.integration.outputs().clone();
    let name = if plan_name.is_empty() {
        "project".to_owned()
    } else {
        plan_name.to_owned()
    };
    let redactor = engine.gateway.redactor().clone();
    let delivery = tokio::task::spawn_blocking(
        move || -> std::result::Result<swarm_package::Delivery, String> {
            let tracked = repo.tracked_files().map_err(|e| e.to_string())?;
            let d = packager::write_delivery(
                &outputs,
                &name,
                repo.root(),
                &tracked,
                manifest,
                &redactor,
            )
            .map_err(|e| e.to_string())?;
            if let Err(e) = pool.drain() {
                tracing::warn!(error = %e, "cannot remove the idle worktrees");
            }
            let _ = repo.delete_branches("task/");
            let _ = repo.prune_worktrees();
            Ok(d)
        },
    )
    .await
    .map_err(|e| Error::Other(e.to_string()))?;
    let (delivery_path, manifest_path, error) = match delivery {
        Ok(d) => {
            if !d.packed.excluded.is_empty() {
                engine.emit(
                    &id,
                    None,
                    "info",
                    format!(
                        "left out of the delivery: {}",
                        d.packed
                            .excluded
                            .iter()
                            .map(|e| format!("{} ({})", e.path, e.reason))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            if let Some(line) = packager::withheld_message("delivery", &d.packed.withheld) {
                engine.emit(&id, None, "info", line);
            }
            (Some(d.packed.archive), Some(d.manifest_json), error)
        }
        Err(e) => (
            None,
            None,
            Some(format!(
                "{}writing the delivery failed: {e}",
                error.map(|x| x + "; ").unwrap_or_default()
            )),
        ),
    };
    let status = if delivery_path.is_none() {
        ProjectState::Failed
    } else {
        status
    };
    store.set_final(
        &id,
        final_commit.as_deref(),
        delivery_path.as_ref().and_then(|p| p.to_str()),
    )?;
    // Processes this supervisor spawned (workers, git, verify commands): the benchmark reads it.
    store.append_event(
        &id,
        None,
        "run_stats",
        &serde_json::json!({"spawned": swarm_exec::spawned_count()}),
    )?;
    set_project(engine, &id, status, error.as_deref())?;
    engine.emit(&id, None, "project", format!("project {id}: {status}"));
    report(engine, &id, manifest_path)
}

/// The last verify run's results as the event log has them (a resumed run
/// that did not verify again).
fn verify_results_from_events(
    store: &dyn Store,
    id: &swarm_protocol::ProjectId,
) -> Result<Option<Vec<CommandResult>>> {
    let mut last = None;
    let mut after = 0;
    loop {
        let events = store.events(id, after, 1000)?;
        let Some(tail) = events.last() else { break };
        after = tail.id;
        for e in events.iter().filter(|e| e.kind == "verify") {
            if let Some(r) = e.data.get("results") {
                last = serde_json::from_value(r.clone()).ok();
            }
        }
    }
    Ok(last)
}
