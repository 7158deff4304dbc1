//! One project's run from start to end: the budget and the key, the
//! sandbox decision, planning, then recovery, the scheduler with its
//! runner and its work on `main`, and the delivery. Each of those jobs has
//! its own module; this one wires them together.

use crate::driver::{AgentPlan, BuiltinRunner};
use crate::mainline::{Mainline, MainlineParts};
use crate::scheduler::Scheduler;
use crate::{delivery, new_tasks, packager, planner, recovery};
use crate::{Engine, Error, Result, RunReport};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
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
        | ProjectState::Verifying
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
        };
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

    let agents = AgentPlan {
        configured: engine.config.agents.clone(),
        project: limits.agent.clone(),
        tasks: plan
            .tasks
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.agent.clone()?)))
            .collect(),
    };
    // Checked before any task starts: a name that is not configured would
    // fail every attempt of its task.
    let unknown = agents.unknown();
    if !unknown.is_empty() && mode != Mode::RecoverOnly {
        let why = format!(
            "{} not configured: add them under [agents] in agentswarm.toml (docs/agents.md) and resume",
            unknown.join("; ")
        );
        set_project(engine, id, ProjectState::Paused, Some(&why))?;
        engine.emit(id, None, "project", format!("project {id} paused: {why}"));
        return report(engine, id, None);
    }
    // An agent whose program is missing would fail every attempt of its
    // tasks: said before any task starts. One with its own credentials is
    // announced: the swarm does not count its calls.
    let used = agents.used();
    let path = std::env::var_os("PATH");
    let broken: Vec<String> = used
        .iter()
        .flat_map(|s| swarm_config::check_agent(s, path.as_deref()))
        .collect();
    if !broken.is_empty() && mode != Mode::RecoverOnly {
        let why = broken.join("; ");
        set_project(engine, id, ProjectState::Paused, Some(&why))?;
        engine.emit(id, None, "project", format!("project {id} paused: {why}"));
        return report(engine, id, None);
    }
    if announce {
        for notice in used.iter().filter_map(swarm_config::own_credentials_notice) {
            engine.emit(id, None, "project", notice);
        }
    }
    let agents_report = agents.report();

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
        transcripts_dir: project_dir.join("transcripts"),
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
        agents,
    });
    let parts = MainlineParts {
        project: id.clone(),
        repo: repo.clone(),
        worktrees_dir: worktrees_dir.clone(),
        outputs,
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
    let commits = recovery::clean_up(repo, worktrees_dir, !stale.is_empty()).await?;
    run.reconcile(stale, &commits)?;
    if mode == Mode::RecoverOnly {
        run.integration.close_merge_queue().await;
        return report(engine, id, None);
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
    delivery::finish(&mut run, &plan.name, &sandbox_report, &agents_report, pool).await
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
