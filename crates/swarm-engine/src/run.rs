//! One project's run from start to end: the budget and the key, the
//! sandbox decision, planning, then recovery, the scheduler with its
//! runner and its work on `main`, and the delivery. Each of those jobs has
//! its own module; this one wires them together.

use crate::driver::{AgentPlan, BuiltinRunner};
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

    // An existing repository: the project repository is made from its base
    // commit (cloned, for a URL) and checked before any model call.
    let repo_root = project_dir.join("repo");
    // Its `.agentswarm.toml` and the checks it names or that are detected.
    let mut repo_config: Option<crate::checks::RepoConfig> = None;
    let mut repo_checks: Option<crate::checks::Checks> = None;
    if let Some(src) = crate::source::of(&project) {
        let config = engine.config.clone();
        let root = repo_root.clone();
        let before = src.clone();
        let prepared =
            tokio::task::spawn_blocking(move || crate::source::prepare(&config, &src, &root))
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
        match prepared {
            Ok(src) => {
                let root = repo_root.clone();
                let found = tokio::task::spawn_blocking(move || {
                    crate::checks::repo_config(&root).map(|c| {
                        let checks = crate::checks::default_checks(&root, c.as_ref());
                        (c, checks)
                    })
                })
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
                match found {
                    Ok((c, checks)) => {
                        repo_config = c;
                        repo_checks = checks;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        set_project(engine, id, ProjectState::Failed, Some(&msg))?;
                        engine.emit(id, None, "project", format!("project {id} failed: {msg}"));
                        return report(engine, id, None);
                    }
                }
                if src != before {
                    let v = serde_json::to_value(&src).map_err(|e| Error::Other(e.to_string()))?;
                    store.set_project_source(id, &v)?;
                    project = store.project(id)?;
                }
                if announce {
                    engine.emit(
                        id,
                        None,
                        "project",
                        format!(
                            "repository: {} at {} ({})",
                            src.repo,
                            src.base.as_deref().unwrap_or("HEAD"),
                            src.base_commit.as_deref().unwrap_or("?")
                        ),
                    );
                }
            }
            Err(e) => {
                let msg = e.to_string();
                set_project(engine, id, ProjectState::Failed, Some(&msg))?;
                engine.emit(id, None, "project", format!("project {id} failed: {msg}"));
                return report(engine, id, None);
            }
        }
    }

    // Planning: asked once; a stored plan is never asked for again.
    if project.plan.is_none() {
        set_project(engine, id, ProjectState::Planning, None)?;
        engine.emit(id, None, "project", format!("project {id}: planning"));
        let request = match crate::source::of(&project) {
            None => crate::prompts::planner_request(&project.goal, limits.max_tasks),
            Some(_) => {
                let root = repo_root.clone();
                let budget = engine.config.repos.map_tokens * crate::repomap::CHARS_PER_TOKEN;
                let (map, instructions) = tokio::task::spawn_blocking(move || {
                    (
                        crate::repomap::map(&root, budget),
                        crate::repomap::instructions(&root),
                    )
                })
                .await
                .map_err(|e| Error::Other(e.to_string()))?;
                let map = map?;
                store.append_event(
                    id,
                    None,
                    "repo_map",
                    &serde_json::json!({
                        "chars": map.len(),
                        "budget_chars": budget,
                        "instructions_chars": instructions.as_ref().map_or(0, String::len),
                    }),
                )?;
                crate::prompts::planner_request_on_repo(
                    &project.goal,
                    limits.max_tasks,
                    &map,
                    instructions.as_deref(),
                    repo_checks.as_ref(),
                )
            }
        };
        let outcome = tokio::select! {
            o = planner::plan_with(&engine.gateway, id, request, limits.max_tasks, repo_checks.as_ref()) => o,
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
                if crate::source::of(&project).is_some() {
                    announce_verify(engine, id, &plan, repo_checks.as_ref())?;
                }
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
        requires: plan
            .tasks
            .iter()
            .filter(|t| !t.requires.is_empty())
            .map(|t| (t.id.clone(), t.requires.clone()))
            .collect(),
    };
    // A task that needs labels no node carries would wait for ever: said
    // before any task starts.
    let unplaceable = engine.nodes.unplaceable(&agents.requires);
    if !unplaceable.is_empty() && mode != Mode::RecoverOnly {
        let why = format!(
            "{}: add the labels to a node in agentswarm.toml ([nodes.NAME] labels, or [nodes.local] labels for this machine; docs/scale-out.md) and resume",
            unplaceable.join("; ")
        );
        set_project(engine, id, ProjectState::Paused, Some(&why))?;
        engine.emit(id, None, "project", format!("project {id} paused: {why}"));
        return report(engine, id, None);
    }
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

    let pid = id.to_string();
    let repo = {
        let root = repo_root.clone();
        tokio::task::spawn_blocking(move || Repo::init(root, &pid))
            .await
            .map_err(|e| Error::Other(e.to_string()))??
    };

    // `.agentswarm.toml`'s copied files are never committed.
    let prepare = match &repo_config {
        Some(c) => {
            let dests: Vec<String> = c.copy.values().cloned().collect();
            let root = repo_root.clone();
            tokio::task::spawn_blocking(move || crate::source::exclude(&root, &dests))
                .await
                .map_err(|e| Error::Other(e.to_string()))??;
            swarm_protocol::worker::RepoPrepare {
                copy: c.copy.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
                commands: c.setup.clone(),
                run_commands: false,
                timeout_secs: limits.verify_timeout_secs,
            }
        }
        None => Default::default(),
    };
    let worktrees_dir = project_dir.join("worktrees");
    let pool = Arc::new(swarm_git::WorktreePool::new(
        repo.clone(),
        worktrees_dir.clone(),
    ));
    let memory_limit = engine.config.worker_memory_limit_mb << 20;
    let runner = Arc::new(BuiltinRunner {
        project: id.clone(),
        pool: pool.clone(),
        transcripts_dir: crate::operator::transcripts_dir(&engine.config, id),
        // A spare a local slot, up to four: when the model's latency is
        // steady, attempts end in waves, and one spare served one attempt of
        // each wave while the others waited for a process to start and join
        // its cgroup (docs/benchmarks.md). An idle spare holds about 4.5 MB.
        workers: crate::warm::WarmWorkers::with_spares(
            crate::warm::WorkerLaunch {
                program: engine.settings.worker_program.clone(),
                args: engine.settings.worker_args.clone(),
                cwd: worktrees_dir.clone(),
                limiter: engine.limiter.clone(),
                memory_limit,
                env: Vec::new(),
            },
            usize::try_from(engine.config.max_concurrent_workers.min(4)).unwrap_or(1),
        ),
        remote_workers: Default::default(),
        worker_timeout: Duration::from_secs(engine.config.worker_timeout_secs),
        shutdown_grace: engine.settings.shutdown_grace,
        gateway: engine.gateway.clone(),
        store: store.clone(),
        progress: engine.progress.clone(),
        sandbox: sandbox.clone(),
        prepare,
        agents,
    });
    // This machine's spares, started while the run sets up, so that the
    // first wave of attempts finds them ready.
    runner.workers.fill();
    // The nodes' first probes, so that the first tasks can go there too.
    if engine.nodes.has_remote() {
        engine.nodes.probe_all().await;
        // Their spare sessions and `main`, while the run starts.
        let r = repo.clone();
        if let Ok(Ok(head)) = tokio::task::spawn_blocking(move || r.head()).await {
            runner.prepare_nodes(&engine.nodes, head);
        }
    }
    let baseline_sandbox = sandbox.clone();
    let baseline_limits = limits.clone();
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
    if crate::source::of(&project).is_some() {
        let root = repo_root.clone();
        let instructions = tokio::task::spawn_blocking(move || crate::repomap::instructions(&root))
            .await
            .map_err(|e| Error::Other(e.to_string()))?;
        run.set_worker_system(crate::prompts::worker_system(instructions.as_deref()));
    }
    let stale = run.stale();
    let cleaned =
        recovery::clean_up(repo.clone(), worktrees_dir.clone(), !stale.is_empty()).await?;
    let (mut commits, held) = (cleaned.commits, cleaned.held);
    // On an existing repository, commits of its own history that carry
    // Swarm trailers (an earlier delivery merged there) are not this run's.
    if let (Some(base), false) = (
        crate::source::of(&project).and_then(|s| s.base_commit),
        commits.is_empty(),
    ) {
        let root = repo_root.clone();
        let history =
            tokio::task::spawn_blocking(move || swarm_git::source::reachable(&root, &base))
                .await
                .map_err(|e| Error::Other(e.to_string()))??;
        commits.retain(|c| !history.contains(&c.sha));
    }
    run.reconcile(stale, &commits, &held)?;
    let unneeded = recovery::stale_review_branches(&run.tasks, &held);
    if !unneeded.is_empty() {
        let root = repo_root.clone();
        tokio::task::spawn_blocking(move || {
            for b in unneeded {
                if let Err(e) = swarm_git::review::release(&root, &b) {
                    tracing::warn!(branch = b, error = %e, "cannot delete a stale review branch");
                }
            }
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))?;
    }
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
    let archive_repo = repo.clone();
    let rebuilt = tokio::task::spawn_blocking(move || {
        recovery::rebuild_archives(
            &archive_repo,
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
    if let Some(src) = crate::source::of(&project) {
        let verify_commands = store
            .tasks(id)?
            .into_iter()
            .find(|t| t.kind == swarm_protocol::TaskKind::Verify)
            .map(|t| t.commands)
            .unwrap_or_default();
        crate::source::baseline(
            engine,
            id,
            &src,
            &repo,
            &worktrees_dir.join("baseline"),
            &verify_commands,
            &baseline_limits,
            baseline_sandbox,
            &run.cancel,
        )
        .await?;
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

/// Says which verify commands an existing repository's project runs and
/// why (the plan's, `.agentswarm.toml`'s, or detected), as a
/// `verify_commands` event and a progress line.
fn announce_verify(
    engine: &Engine,
    id: &ProjectId,
    plan: &swarm_protocol::Plan,
    checks: Option<&crate::checks::Checks>,
) -> Result<()> {
    let Some(verify) = plan
        .tasks
        .iter()
        .find(|t| t.kind == swarm_protocol::TaskKind::Verify)
    else {
        return Ok(());
    };
    let why = match checks {
        Some(c) if c.commands == verify.commands => c.why.clone(),
        Some(_) | None => "the plan".to_owned(),
    };
    engine.store.append_event(
        id,
        None,
        "verify_commands",
        &serde_json::json!({"commands": verify.commands, "why": why}),
    )?;
    engine.emit(
        id,
        None,
        "verify",
        format!("verify will run: {} ({why})", verify.commands.join(" && ")),
    );
    Ok(())
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
    let source = crate::source::of(&p);
    let patch = source.as_ref().and(delivery.as_ref()).and_then(|d| {
        let patch = d.parent()?.join("changes.patch");
        patch.is_file().then_some(patch)
    });
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
        error: p.error.clone(),
        branch: source.as_ref().and_then(|s| s.branch.clone()),
        base: source.as_ref().and_then(|s| s.base_commit.clone()),
        patch,
    })
}
