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
    let mut error = (!verify_done).then(|| wording::failure_summary(&s.order, &s.tasks));
    let store = engine.store.as_ref();
    // On an existing repository: what verify said on the base commit.
    let baseline = crate::source::baseline_of(store, &id)?;
    if let (Some(e), Some(false)) = (
        error.as_mut(),
        baseline
            .as_ref()
            .and_then(|b| b.get("passed"))
            .and_then(serde_json::Value::as_bool),
    ) {
        e.push_str(
            "; note: verify already failed on the base commit before any task ran (the \
             baseline), so some of these failures were there before the swarm",
        );
    }

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
    // An existing repository: the branch, patch, bundle and PR.md first, so
    // that both manifests name them.
    if let (Some(src), Some(head)) = (crate::source::of(&project), final_commit.clone()) {
        let (project2, tasks2, verify2) = (project.clone(), tasks.clone(), last_verify.clone());
        let (root, out) = (repo.root().to_owned(), outputs.clone());
        let baseline2 = baseline.clone();
        let src2 = src.clone();
        let hold = s.limits.review == swarm_protocol::ReviewMode::Delivery;
        let head2 = head.clone();
        let delivered = tokio::task::spawn_blocking(move || {
            crate::source::deliver(
                &project2,
                &src2,
                &tasks2,
                verify2.as_deref(),
                baseline2.as_ref(),
                &root,
                &head2,
                &out,
                hold,
            )
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))??;
        if let Some(obj) = manifest.as_object_mut() {
            if let Some(v) = obj.get_mut("verify").and_then(|v| v.as_object_mut()) {
                v.insert(
                    "baseline".into(),
                    baseline.clone().unwrap_or(serde_json::Value::Null),
                );
            }
            obj.insert("source".into(), delivered.manifest_json());
            obj.insert("beside".into(), delivered.beside_json());
        }
        if let Some(e) = &delivered.branch_error {
            engine.emit(&id, None, "info", format!("delivery: {e}"));
        }
        if let Some(b) = &delivered.branch {
            engine.emit(
                &id,
                None,
                "info",
                format!(
                    "delivery: branch {b} in {}{}",
                    delivered.repo,
                    if delivered.pushed { " (pushed)" } else { "" }
                ),
            );
        }
        if delivered.held {
            store.append_event(
                &id,
                None,
                "review_waiting",
                &serde_json::json!({"delivery": true, "commit": head}),
            )?;
            engine.emit(
                &id,
                None,
                "review",
                format!(
                    "delivery: the branch {} waits for review: `agentswarm review {id}` shows the whole change; \
                     `agentswarm review {id} --approve` writes it{}, --reject \"what to change\" plans a follow-up round",
                    swarm_protocol::source::delivery_branch(id.as_str()),
                    if src.push { " and pushes it" } else { "" }
                ),
            );
        }
        let mut stored = src;
        stored.branch = delivered.branch.clone();
        stored.held = delivered.held;
        store.set_project_source(
            &id,
            &serde_json::to_value(&stored).map_err(|e| Error::Other(e.to_string()))?,
        )?;
        store.append_event(&id, None, "delivery_source", &delivered.manifest_json())?;
    }
    let name = if plan_name.is_empty() {
        "project".to_owned()
    } else {
        plan_name.to_owned()
    };
    let redactor = engine.gateway.redactor().clone();
    let delivery = tokio::task::spawn_blocking(
        move || -> std::result::Result<swarm_package::Delivery, String> {
            // Merges do not write the integration worktree: bring it to main.
            repo.check_out_main().map_err(|e| e.to_string())?;
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
