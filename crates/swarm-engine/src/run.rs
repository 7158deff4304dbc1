//! One project's run from start to end: the budget and the key, the
//! sandbox decision, planning, then recovery, the scheduler with its
//! runner and its work on `main`, and the delivery. Each of those jobs has
//! its own module; this one wires them together.

use crate::driver::BuiltinRunner;
use crate::mainline::{Mainline, MainlineParts};
use crate::scheduler::Scheduler;
use crate::{delivery, new_tasks, packager, planner, recovery, wording};
use crate::{Engine, Error, Result, RunReport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm_config::ModelRole;
use swarm_git::Repo;
use swarm_protocol::{ProjectId, ProjectState, TaskState};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Run,
    /// Reconcile with git after a crash, then stop (`serve` does this for
    /// every project before it reports ready).
    RecoverOnly,
}

pub(crate) async fn run_project(
    engine: &Engine,
    id: &ProjectId,
    cancel: CancellationToken,
    mode: Mode,
) -> Result<RunReport> {
    // Our own token: an error or a halt stops this run's workers without
    // stopping the caller.
    let cancel = cancel.child_token();
    if mode == Mode::RecoverOnly {
        return run_inner(engine, id, cancel, mode).await;
    }
    let project = engine.store.project(id)?;
    if project.state.is_terminal() && project.state != ProjectState::Failed {
        return run_inner(engine, id, cancel, mode).await;
    }
    if let Some(msg) = engine.gateway.missing_key() {
        set_project(engine, id, ProjectState::Paused, Some(&msg))?;
        engine.emit(id, None, "project", format!("project {id} paused: {msg}"));
        return report(engine, id, None);
    }
    let limits = engine.limits_of(&project.options);
    let account = engine.gateway.open(id, &limits, cancel.clone())?;
    let result = if account.check_budget().is_some() {
        Ok(None)
    } else {
        run_inner(engine, id, cancel, mode).await.map(Some)
    };
    engine.gateway.close(id);
    if let Some(halt) = account.halted() {
        // The run stopped its workers as for Ctrl-C; say why it really ended.
        set_project(engine, id, halt.state(), Some(halt.message()))?;
        engine.store().append_event(
            id,
            None,
            "halt",
            &serde_json::json!({"state": halt.state().as_str(), "message": halt.message()}),
        )?;
        engine.emit(
            id,
            None,
            "project",
            format!("project {id}: {}: {}", halt.state(), halt.message()),
        );
        return report(engine, id, None);
    }
    match result? {
        Some(r) => Ok(r),
        None => report(engine, id, None),
    }
}

async fn run_inner(
    engine: &Engine,
    id: &ProjectId,
    cancel: CancellationToken,
    mode: Mode,
) -> Result<RunReport> {
    let store = engine.store.clone();
    let mut project = store.project(id)?;
    let limits = engine.limits_of(&project.options);
    if mode == Mode::RecoverOnly && (project.plan.is_none() || project.state.is_terminal()) {
        return report(engine, id, None);
    }
    match project.state {
        ProjectState::Cancelled => return Err(Error::Cancelled(id.clone())),
        ProjectState::Done => return report(engine, id, None),
        ProjectState::Failed => {
            recovery::reopen_failed(engine, id)?;
        }
        ProjectState::Queued
        | ProjectState::Planning
        | ProjectState::Running
        | ProjectState::Interrupted
        | ProjectState::BudgetExhausted
        | ProjectState::Paused => {}
    }

    let project_dir = engine.config.project_dir(id.as_str());
    let outputs = packager::project_outputs(&engine.config.outputs_dir, id);

    let mut sandbox = engine.sandbox_policy(&limits, &project_dir.join("repo"));
    // The project's directory: what a root service's commands, dropped to
    // the sandbox uid, must be able to reach.
    std::fs::create_dir_all(&project_dir)
        .map_err(|e| Error::Other(format!("cannot create {}: {e}", project_dir.display())))?;
    let assessment =
        swarm_exec::sandbox::assess_at(&sandbox, swarm_exec::sandbox::facilities(), &project_dir);
    // Decided once here: workers and verify apply it without probing again.
    sandbox.resolved = Some(assessment.mechanism.clone());
    // Checked before planning: a run whose commands cannot be confined as
    // required must not spend anything first.
    if let (Some(why), false) = (&assessment.refusal, mode == Mode::RecoverOnly) {
        set_project(engine, id, ProjectState::Paused, Some(why))?;
        engine.emit(id, None, "project", format!("project {id} paused: {why}"));
        return report(engine, id, None);
    }
    // Where the results go, checked before anything is spent: an
    // unwritable OUTPUTS_DIR would otherwise show only after every task ran.
    if mode != Mode::RecoverOnly {
        for (dir, what) in [
            (&outputs, "OUTPUTS_DIR (deliveries and task archives)"),
            (
                &project_dir,
                "the data dir (the project's repository and worktrees)",
            ),
        ] {
            if let Err(e) = check_writable(dir) {
                let why = format!(
                    "{what} is not writable: {}: {e}; make it writable (or point OUTPUTS_DIR/AGENTSWARM_HOME elsewhere), then `agentswarm resume {id}`",
                    dir.display()
                );
                set_project(engine, id, ProjectState::Paused, Some(&why))?;
                engine.emit(id, None, "project", format!("project {id} paused: {why}"));
                return report(engine, id, None);
            }
        }
    }
    let summary = assessment.summary(sandbox.allow_network);
    let announce = mode != Mode::RecoverOnly;
    if announce {
        engine.emit(id, None, "project", format!("sandbox: {summary}"));
    }
    if announce && !assessment.gaps.is_empty() {
        engine.emit(
            id,
            None,
            "project",
            format!(
                "sandbox ({}): not confined here: {}",
                sandbox.mode,
                assessment.gaps.join("; ")
            ),
        );
    }
    let sandbox_report = serde_json::json!({
        "mode": sandbox.mode.as_str(),
        "mechanism": assessment.mechanism_name(),
        "summary": summary,
        "allow_network": sandbox.allow_network,
        "gaps": assessment.gaps,
    });
    if announce {
        store.append_event(id, None, "sandbox", &sandbox_report)?;
    }

    // Planning: asked once; a stored plan is never asked for again.
    if project.plan.is_none() {
        set_project(engine, id, ProjectState::Planning, None)?;
        engine.emit(id, None, "project", format!("project {id}: planning"));
        let outcome = tokio::select! {
            o = planner::plan(&engine.gateway, id, &project.goal, limits.max_tasks) => o,
            _ = cancel.cancelled() => {
                set_project(engine, id, ProjectState::Interrupted, None)?;
                return report(engine, id, None);
            }
            Err(e) = note_quota_holds(engine, id, ModelRole::Planner) => return Err(e),
        };
        store.set_project_waiting(id, None)?;
        store.set_planner_calls(id, project.planner_calls + outcome.calls)?;
        match outcome.result {
            Ok(plan) => {
                store.save_plan(id, &plan, &new_tasks(&plan, 0))?;
                store.append_event(id, None, "plan", &serde_json::json!({"source": "planner", "tasks": plan.tasks.len(), "calls": outcome.calls}))?;
                engine.emit(
                    id,
                    None,
                    "plan",
                    format!(
                        "plan {:?}: {} tasks ({} planner call(s))",
                        plan.name,
                        plan.tasks.len(),
                        outcome.calls
                    ),
                );
            }
            Err(e) => {
                let msg = e.to_string();
                set_project(engine, id, ProjectState::Failed, Some(&msg))?;
                return report(engine, id, None);
            }
        }
        project = store.project(id)?;
    }
    let plan = project
        .plan
        .clone()
        .ok_or_else(|| Error::Other("the project has no plan".into()))?;

    let repo_root = project_dir.join("repo");
    let pid = id.to_string();
    let repo = {
        let root = repo_root.clone();
        tokio::task::spawn_blocking(move || Repo::init(root, &pid))
            .await
            .map_err(|e| Error::Other(e.to_string()))??
    };

    let worktrees_dir = project_dir.join("worktrees");
    let pool = Arc::new(swarm_git::WorktreePool::new(
        repo.clone(),
        worktrees_dir.clone(),
    ));
    let memory_limit = engine.config.worker_memory_limit_mb << 20;
    let runner = Arc::new(BuiltinRunner {
        project: id.clone(),
        worktrees_dir: worktrees_dir.clone(),
        pool: pool.clone(),
        transcripts_dir: crate::operator::transcripts_dir(&engine.config, id),
        worker_program: engine.settings.worker_program.clone(),
        worker_args: engine.settings.worker_args.clone(),
        worker_timeout: Duration::from_secs(engine.config.worker_timeout_secs),
        shutdown_grace: engine.settings.shutdown_grace,
        limiter: engine.limiter.clone(),
        memory_limit,
        gateway: engine.gateway.clone(),
        store: store.clone(),
        progress: engine.progress.clone(),
        sandbox: sandbox.clone(),
    });
    let parts = MainlineParts {
        project: id.clone(),
        repo: repo.clone(),
        worktrees_dir: worktrees_dir.clone(),
        outputs: outputs.clone(),
        store: store.clone(),
        gateway: engine.gateway.clone(),
        limiter: engine.limiter.clone(),
        memory_limit,
        verify_timeout: Duration::from_secs(limits.verify_timeout_secs),
        output_cap: limits.output_cap_bytes,
        sandbox,
        cancel: cancel.clone(),
    };
    let mut run = Scheduler::new(
        engine,
        id,
        &project.goal,
        limits,
        runner,
        |events| Mainline::start(parts, events),
        cancel,
    )?;
    let stale = run.stale();
    let commits =
        recovery::clean_up(repo.clone(), worktrees_dir.clone(), !stale.is_empty()).await?;
    run.reconcile(stale, &commits)?;
    if mode == Mode::RecoverOnly {
        run.integration.close_merge_queue().await;
        return report(engine, id, None);
    }
    // Task archives an earlier run could not write (a full disk, a crash
    // before the archive): rebuilt from the tasks' commits.
    let done: Vec<_> = run
        .tasks
        .values()
        .filter(|t| t.state == TaskState::Done && t.commit.is_some())
        .cloned()
        .collect();
    let (redactor, pid) = (engine.gateway.redactor().clone(), id.clone());
    let (archive_outputs, archive_dir) = (outputs.clone(), worktrees_dir.clone());
    let rebuilt = tokio::task::spawn_blocking(move || {
        recovery::rebuild_archives(
            &repo,
            &archive_dir,
            &archive_outputs,
            &pid,
            &done,
            &redactor,
        )
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?;
    if rebuilt > 0 {
        engine.emit(
            id,
            None,
            "project",
            format!("project {id}: {rebuilt} task archive(s) an earlier run missed written"),
        );
    }
    set_project(engine, id, ProjectState::Running, None)?;
    engine.emit(
        id,
        None,
        "project",
        format!(
            "project {id}: running {} tasks, at most {} at once",
            run.order.len(),
            engine.config.max_concurrent_workers
        ),
    );

    let result = run.schedule().await;
    if result.is_err() {
        // Never leave workers running behind an error: stop them and wait.
        let until =
            tokio::time::Instant::now() + engine.settings.shutdown_grace + Duration::from_secs(5);
        run.stop_attempts(until).await;
    }
    // Nothing is merging any more: closing the queue ends its task.
    run.integration.close_merge_queue().await;
    result?;
    delivery::finish(&mut run, &plan.name, &sandbox_report, pool).await
}

/// Whether files can be created in `dir` (made if missing): a file is
/// created there and removed.
fn check_writable(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(format!(
        ".agentswarm-write-check-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// While a model call of `role` for project `id` is out (the caller drops
/// this future when it is answered): the project's `waiting` says when the
/// role's providers are out of quota, for as long as the gateway holds the
/// call for their reset. Returns only a store error.
pub(crate) async fn note_quota_holds(
    engine: &Engine,
    id: &ProjectId,
    role: ModelRole,
) -> Result<std::convert::Infallible> {
    let mut shown: Option<String> = None;
    loop {
        let block = engine.gateway.quota_block_for(role);
        match (&block, &shown) {
            (Some(b), s) if s.as_deref() != Some(b.provider.as_str()) => {
                let msg = wording::waiting_for_quota(&b.provider, b.until, &b.reason);
                crate::scheduler::record_waiting(engine, id, s.is_some(), Some(&msg))?;
                shown = Some(b.provider.clone());
            }
            (None, Some(_)) => {
                crate::scheduler::record_waiting(engine, id, true, None)?;
                shown = None;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) fn set_project(
    engine: &Engine,
    id: &ProjectId,
    to: ProjectState,
    error: Option<&str>,
) -> Result<()> {
    // A cancelled project stays cancelled (`agentswarm cancel` wins over a
    // run that is still winding down).
    let from: Vec<ProjectState> = ProjectState::ALL
        .iter()
        .copied()
        .filter(|s| *s != to && *s != ProjectState::Cancelled)
        .collect();
    engine.store.set_project_state(id, &from, to, error)?;
    Ok(())
}

/// The report of a project as it stands in the store.
pub(crate) fn report(
    engine: &Engine,
    id: &ProjectId,
    manifest: Option<PathBuf>,
) -> Result<RunReport> {
    let p = engine.store.project(id)?;
    let tasks = engine.store.tasks(id)?;
    let delivery = p.delivery.as_ref().map(PathBuf::from);
    let manifest = manifest.or_else(|| {
        delivery
            .as_ref()
            .and_then(|d| d.parent().map(|dir| dir.join("manifest.json")))
    });
    Ok(RunReport {
        project_id: id.clone(),
        status: p.state,
        delivery,
        manifest,
        tasks_total: tasks.len(),
        tasks_done: tasks.iter().filter(|t| t.state == TaskState::Done).count(),
        error: p.error,
    })
}
