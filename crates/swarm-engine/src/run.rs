//! One project's run: planning, recovery, the ready-based scheduler, the
//! merge queue, verify and fix rounds, and the final delivery.
//!
//! The scheduler is event-driven: it sleeps on a channel and wakes when a
//! worker ends, a merge completes or verify finishes, so a finished task's
//! dependents start at once rather than on the next poll.

use crate::driver::{self, branch_name, DriverContext, Job, WorkerOutcome};
use crate::packager;
use crate::planner;
use crate::prompts::{self, CommandResult};
use crate::verify;
use crate::{new_tasks, Engine, Error, Result, RunReport};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm_config::RunLimits;
use swarm_git::{MergeOutcome, Repo};
use swarm_protocol::worker::{WorkerStart, WorktreeSetup};
use swarm_protocol::{AttemptOutcome, Plan, ProjectId, ProjectState, TaskId, TaskKind, TaskState};
use swarm_store::{now_ms, TaskRecord, TaskUpdate};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

enum Msg {
    Worker {
        task: TaskId,
        attempt: u32,
        worktree: Option<PathBuf>,
        outcome: WorkerOutcome,
    },
    Merged {
        task: TaskId,
        attempt: u32,
        result: std::result::Result<MergeOutcome, String>,
    },
    Verified {
        attempt: u32,
        result: std::result::Result<Vec<CommandResult>, String>,
    },
}

struct MergeJob {
    task: TaskId,
    attempt: u32,
    branch: String,
    message: String,
}

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
            reopen_failed(engine, id)?;
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
    let assessment = swarm_exec::sandbox::assess(&sandbox, swarm_exec::sandbox::facilities());
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

    let repo_root = project_dir.join("repo");
    let pid = id.to_string();
    let repo = {
        let root = repo_root.clone();
        tokio::task::spawn_blocking(move || Repo::init(root, &pid))
            .await
            .map_err(|e| Error::Other(e.to_string()))??
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(DriverContext {
        project: id.clone(),
        worktrees_dir: project_dir.join("worktrees"),
        pool: Arc::new(swarm_git::WorktreePool::new(
            repo.clone(),
            project_dir.join("worktrees"),
        )),
        transcripts_dir: project_dir.join("transcripts"),
        worker_program: engine.settings.worker_program.clone(),
        worker_args: engine.settings.worker_args.clone(),
        worker_timeout: Duration::from_secs(engine.config.worker_timeout_secs),
        shutdown_grace: engine.settings.shutdown_grace,
        limiter: engine.limiter.clone(),
        memory_limit: engine.config.worker_memory_limit_mb << 20,
        gateway: engine.gateway.clone(),
        store: store.clone(),
        progress: engine.progress.clone(),
        sandbox,
        sandbox_report,
    });
    let (merge_tx, merge_rx) = mpsc::unbounded_channel();
    let merge_queue = tokio::spawn(merge_queue(repo.clone(), merge_rx, tx.clone()));

    let mut run = Run {
        engine,
        id: id.clone(),
        goal: project.goal.clone(),
        plan,
        limits,
        repo,
        ctx,
        outputs,
        tasks: BTreeMap::new(),
        order: Vec::new(),
        tx,
        rx,
        merge_tx: Some(merge_tx),
        workers: 0,
        merging: 0,
        verifying: None,
        spare: None,
        needs_slot: false,
        gated: false,
        waiting: None,
        stopping: false,
        background: JoinSet::new(),
        last_verify: None,
        turns: Default::default(),
        worktrees: Default::default(),
        attempt_started: Default::default(),
        cancel,
    };
    run.reload()?;
    run.recover().await?;
    if mode == Mode::RecoverOnly {
        run.merge_tx = None;
        let _ = merge_queue.await;
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
        run.cancel.cancel();
        let until =
            tokio::time::Instant::now() + engine.settings.shutdown_grace + Duration::from_secs(5);
        while run.workers > 0 {
            match tokio::time::timeout_at(until, run.rx.recv()).await {
                Ok(Some(Msg::Worker { .. })) => run.workers -= 1,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
    // Nothing is merging any more: closing the queue ends its task.
    run.merge_tx = None;
    let _ = merge_queue.await;
    result?;
    run.finish().await
}

/// A failed project can be resumed: its failed tasks get fresh attempts, the
/// tasks they blocked wait again, and the project becomes `interrupted`;
/// `false` if it was no longer `failed`.
pub(crate) fn reopen_failed(engine: &Engine, id: &ProjectId) -> Result<bool> {
    let store = &engine.store;
    for t in store.tasks(id)? {
        let update = match t.state {
            TaskState::Failed => TaskUpdate {
                from: vec![TaskState::Failed],
                to: Some(TaskState::Ready),
                attempts_counted: Some(0),
                ..Default::default()
            },
            TaskState::Blocked => TaskUpdate {
                from: vec![TaskState::Blocked],
                to: Some(TaskState::Pending),
                last_error: Some(None),
                ..Default::default()
            },
            TaskState::Pending
            | TaskState::Ready
            | TaskState::Running
            | TaskState::Merging
            | TaskState::Done
            | TaskState::Cancelled => continue,
        };
        store.update_task(id, &t.id, &update)?;
    }
    Ok(store.set_project_state(id, &[ProjectState::Failed], ProjectState::Interrupted, None)?)
}

fn set_project(
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
fn report(engine: &Engine, id: &ProjectId, manifest: Option<PathBuf>) -> Result<RunReport> {
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

async fn merge_queue(
    repo: Repo,
    mut jobs: mpsc::UnboundedReceiver<MergeJob>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    // One merge at a time per project: this loop is the only merger.
    while let Some(job) = jobs.recv().await {
        let r = repo.clone();
        let (branch, message) = (job.branch, job.message);
        let result = tokio::task::spawn_blocking(move || r.merge(&branch, &message))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = tx.send(Msg::Merged {
            task: job.task,
            attempt: job.attempt,
            result,
        });
    }
}

struct Run<'e> {
    engine: &'e Engine,
    id: ProjectId,
    goal: String,
    plan: Plan,
    limits: RunLimits,
    repo: Repo,
    ctx: Arc<DriverContext>,
    outputs: PathBuf,
    tasks: BTreeMap<TaskId, TaskRecord>,
    /// Task ids in plan order.
    order: Vec<TaskId>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
    merge_tx: Option<mpsc::UnboundedSender<MergeJob>>,
    /// Worker processes running.
    workers: usize,
    /// Merges queued or in progress.
    merging: usize,
    /// The verify task's attempt while it runs, its slot, and the
    /// enclosure its commands run in (killed on stop).
    verifying: Option<(
        u32,
        tokio::sync::OwnedSemaphorePermit,
        Option<Arc<swarm_exec::Enclosure>>,
    )>,
    /// A slot acquired while waiting for one, used by the next dispatch.
    spare: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Ready tasks wait for a slot another project holds.
    needs_slot: bool,
    /// Ready tasks wait for the resource gate.
    gated: bool,
    /// Why ready tasks wait, as last recorded in the store.
    waiting: Option<String>,
    /// The stop was seen and handled.
    stopping: bool,
    /// Per-task archives and worktree clean-up, off the critical path.
    background: JoinSet<()>,
    last_verify: Option<Vec<CommandResult>>,
    /// Worktrees of attempts whose worker ended, until they go back to the pool.
    worktrees: std::collections::HashMap<(TaskId, u32), PathBuf>,
    /// Model turns of attempts that finished and wait for their merge.
    turns: std::collections::HashMap<(TaskId, u32), u32>,
    /// When each attempt started by this run started, until it ends (for
    /// `agentswarm_attempt_duration_seconds`).
    attempt_started: std::collections::HashMap<(TaskId, u32), std::time::Instant>,
    cancel: CancellationToken,
}

impl Run<'_> {
    fn store(&self) -> &dyn swarm_store::Store {
        self.engine.store.as_ref()
    }

    /// Records how an attempt ended; one started by this run is also
    /// observed in `agentswarm_attempt_duration_seconds`.
    fn finish_attempt(
        &mut self,
        task: &TaskId,
        attempt: u32,
        outcome: AttemptOutcome,
        reason: Option<&str>,
        turns: u32,
        commit: Option<&str>,
    ) -> Result<()> {
        self.store()
            .finish_attempt(&self.id, task, attempt, outcome, reason, turns, commit)?;
        if let Some(started) = self.attempt_started.remove(&(task.clone(), attempt)) {
            let kind = self.tasks.get(task).map(|t| t.kind).unwrap_or_default();
            self.engine
                .metrics
                .attempt_ended(kind, outcome, started.elapsed());
        }
        Ok(())
    }

    /// `task` reached `done` through an attempt of this run: observes its
    /// time from its first attempt's start (in the store, so attempts of
    /// earlier runs count) in `agentswarm_task_duration_seconds`.
    fn observe_task_done(&self, task: &TaskId) {
        let Some(kind) = self.tasks.get(task).map(|t| t.kind) else {
            return;
        };
        let first = match self.store().attempts(&self.id, task) {
            Ok(attempts) => attempts.iter().map(|a| a.started_ms).min(),
            Err(e) => {
                tracing::warn!(task = %task, error = %e, "cannot read the task's attempts");
                None
            }
        };
        if let Some(first) = first {
            let ms = u64::try_from(now_ms().saturating_sub(first)).unwrap_or(0);
            self.engine
                .metrics
                .task_done(kind, Duration::from_millis(ms));
        }
    }

    fn reload(&mut self) -> Result<()> {
        let tasks = self.store().tasks(&self.id)?;
        self.order = tasks.iter().map(|t| t.id.clone()).collect();
        self.tasks = tasks.into_iter().map(|t| (t.id.clone(), t)).collect();
        Ok(())
    }

    fn done_count(&self) -> usize {
        self.tasks
            .values()
            .filter(|t| t.state == TaskState::Done)
            .count()
    }

    /// One conditional state change in the store, mirrored in memory and
    /// reported as progress. Returns whether it happened.
    fn set(&mut self, task: &TaskId, update: TaskUpdate) -> Result<bool> {
        let changed = self.store().update_task(&self.id, task, &update)?;
        if !changed {
            tracing::warn!(task = %task, ?update, "state change did not apply");
            return Ok(false);
        }
        let before = self.tasks.get(task).map(|t| t.state);
        if let Some(to) = update.to {
            self.engine.metrics.task_finished(to);
        }
        if let Some(t) = self.store().task(&self.id, task)? {
            if let (Some(to), Some(from)) = (update.to, before) {
                let mut msg = format!(
                    "[{}/{}] task {}: {} -> {}",
                    self.done_count() + usize::from(to == TaskState::Done),
                    self.order.len(),
                    task,
                    from,
                    to
                );
                if to == TaskState::Running {
                    msg.push_str(&format!(" (attempt {})", t.attempt));
                }
                if let (Some(err), true) = (
                    &t.last_error,
                    matches!(
                        to,
                        TaskState::Ready | TaskState::Failed | TaskState::Blocked
                    ) && from != TaskState::Pending,
                ) {
                    msg.push_str(&format!(": {}", driver::truncate(err, 300)));
                }
                self.engine.emit(&self.id, Some(task), "task_state", msg);
            }
            self.tasks.insert(task.clone(), t);
        }
        Ok(true)
    }

    /// After a crash or a stop: a task left `running` or `merging` is looked up
    /// in git (its commit already in `main` → done), else it goes back to
    /// `ready`; stale worktrees are removed.
    async fn recover(&mut self) -> Result<()> {
        let stale: Vec<TaskRecord> = self
            .tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Running | TaskState::Merging))
            .cloned()
            .collect();
        let repo = self.repo.clone();
        let worktrees = self.ctx.worktrees_dir.clone();
        let need_log = !stale.is_empty();
        let commits = tokio::task::spawn_blocking(move || -> Result<Vec<swarm_git::TaskCommit>> {
            // A merge cut short by a crash leaves main mid-merge or locked.
            repo.repair(None)?;
            if worktrees.exists() {
                for entry in std::fs::read_dir(&worktrees)
                    .map_err(|e| Error::Other(e.to_string()))?
                    .flatten()
                {
                    let _ = repo.remove_worktree(&entry.path());
                }
            }
            repo.prune_worktrees()?;
            // No worker of this project runs now (we hold its lock): every
            // task branch is either merged or an abandoned attempt.
            repo.delete_branches("task/")?;
            if need_log {
                Ok(repo.task_commits()?)
            } else {
                Ok(Vec::new())
            }
        })
        .await
        .map_err(|e| Error::Other(e.to_string()))??;
        for t in stale {
            let merged = commits
                .iter()
                .find(|c| c.task == t.id.as_str() && c.attempt == t.attempt);
            if let Some(c) = merged {
                self.finish_attempt(
                    &t.id,
                    t.attempt,
                    AttemptOutcome::Merged,
                    None,
                    0,
                    Some(&c.sha),
                )?;
                self.set(
                    &t.id,
                    TaskUpdate {
                        from: vec![TaskState::Running, TaskState::Merging],
                        to: Some(TaskState::Done),
                        commit: Some(c.sha.clone()),
                        finished_ms: Some(now_ms()),
                        ..Default::default()
                    },
                )?;
            } else {
                let reason = "interrupted: the supervisor stopped during this attempt";
                self.finish_attempt(
                    &t.id,
                    t.attempt,
                    AttemptOutcome::Interrupted,
                    Some(reason),
                    0,
                    None,
                )?;
                self.set(
                    &t.id,
                    TaskUpdate {
                        from: vec![TaskState::Running, TaskState::Merging],
                        to: Some(TaskState::Ready),
                        last_error: Some(Some(reason.into())),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    /// pending → ready when every dependency is done; pending → blocked when
    /// one failed for good.
    fn advance(&mut self) -> Result<()> {
        loop {
            let mut changes = Vec::new();
            for id in &self.order {
                let t = &self.tasks[id];
                if t.state != TaskState::Pending {
                    continue;
                }
                let states: Vec<(&TaskId, TaskState)> = t
                    .depends_on
                    .iter()
                    .map(|d| {
                        (
                            d,
                            self.tasks
                                .get(d)
                                .map(|x| x.state)
                                .unwrap_or(TaskState::Failed),
                        )
                    })
                    .collect();
                if let Some((d, s)) = states.iter().find(|(_, s)| {
                    matches!(
                        s,
                        TaskState::Failed | TaskState::Blocked | TaskState::Cancelled
                    )
                }) {
                    changes.push((
                        id.clone(),
                        TaskState::Blocked,
                        Some(format!("blocked: dependency {d} is {s}")),
                    ));
                } else if states.iter().all(|(_, s)| *s == TaskState::Done) {
                    changes.push((id.clone(), TaskState::Ready, None));
                }
            }
            if changes.is_empty() {
                return Ok(());
            }
            for (id, to, err) in changes {
                self.set(
                    &id,
                    TaskUpdate {
                        from: vec![TaskState::Pending],
                        to: Some(to),
                        last_error: err.map(Some),
                        ..Default::default()
                    },
                )?;
            }
        }
    }

    /// Starts every ready task a slot is free for, in plan order.
    fn dispatch(&mut self) -> Result<()> {
        if self.cancel.is_cancelled() {
            return Ok(());
        }
        let ready: Vec<TaskId> = self
            .order
            .iter()
            .filter(|id| self.tasks[*id].state == TaskState::Ready)
            .cloned()
            .collect();
        self.needs_slot = false;
        self.gated = false;
        let mut waiting = None;
        // The gate is read once a dispatch (two /proc reads), and only when
        // something is ready to start.
        if !ready.is_empty() {
            if let Err(why) = self.engine.gate.check() {
                self.gated = true;
                // Another project may use the slot meanwhile.
                self.spare = None;
                return self.set_waiting(Some(format!("waiting: {why}")));
            }
        }
        for id in ready {
            let Some(permit) = self
                .spare
                .take()
                .or_else(|| self.engine.slots.clone().try_acquire_owned().ok())
            else {
                self.needs_slot = true;
                if self.workers == 0 && self.verifying.is_none() {
                    waiting = Some(format!(
                        "waiting: all {} worker slots (MAX_CONCURRENT_WORKERS) are in use by other projects",
                        self.engine.config.max_concurrent_workers
                    ));
                }
                break;
            };
            let t = self.tasks[&id].clone();
            let attempt = t.attempt + 1;
            let prompt = match t.kind {
                TaskKind::Code => {
                    let deps: Vec<&TaskRecord> = t
                        .depends_on
                        .iter()
                        .filter_map(|d| self.tasks.get(d))
                        .collect();
                    prompts::worker_prompt(&t, &self.goal, &deps, attempt)
                }
                TaskKind::Verify => String::new(),
            };
            let started = now_ms();
            if !self.set(
                &id,
                TaskUpdate {
                    from: vec![TaskState::Ready],
                    to: Some(TaskState::Running),
                    attempt: Some(attempt),
                    conflict_paths: Some(Vec::new()),
                    started_ms: Some(started),
                    ..Default::default()
                },
            )? {
                // Changed under us (`agentswarm cancel`): take the store's word for it.
                if let Some(t) = self.store().task(&self.id, &id)? {
                    self.tasks.insert(id.clone(), t);
                }
                continue;
            }
            self.store()
                .start_attempt(&self.id, &id, attempt, started)?;
            self.attempt_started
                .insert((id.clone(), attempt), std::time::Instant::now());
            let live = self.engine.live.enter(&self.id, &id, attempt);
            match t.kind {
                TaskKind::Verify => self.start_verify(&t, attempt, permit, live),
                TaskKind::Code => {
                    let start = WorkerStart {
                        project_id: self.id.clone(),
                        task_id: id.clone(),
                        attempt,
                        worktree: PathBuf::new(),
                        repo: self.ctx.pool.repo().root().to_owned(),
                        system_prompt: prompts::WORKER_SYSTEM.to_owned(),
                        prompt,
                        max_turns: self.limits.max_turns,
                        command_timeout_secs: self.limits.command_timeout_secs,
                        output_cap_bytes: self.limits.output_cap_bytes,
                        commit_subject: format!("{}: {}", id, t.title),
                        // Filled in by the driver.
                        setup: WorktreeSetup::Ready,
                        sandbox: self.ctx.sandbox.clone(),
                        // Filled in by the driver (the worker model's bounds).
                        agent: Default::default(),
                    };
                    let ctx = self.ctx.clone();
                    let tx = self.tx.clone();
                    let cancel = self.cancel.child_token();
                    self.workers += 1;
                    tokio::spawn(async move {
                        let (outcome, worktree) = driver::drive(
                            ctx,
                            Job {
                                task: id.clone(),
                                attempt,
                                start,
                                live,
                            },
                            cancel,
                        )
                        .await;
                        drop(permit);
                        let _ = tx.send(Msg::Worker {
                            task: id,
                            attempt,
                            worktree,
                            outcome,
                        });
                    });
                }
            }
        }
        self.set_waiting(waiting)
    }

    /// Records (on change) why ready tasks wait, for `status` and the log.
    fn set_waiting(&mut self, waiting: Option<String>) -> Result<()> {
        if self.waiting == waiting {
            return Ok(());
        }
        if let Some(w) = &waiting {
            self.engine
                .emit(&self.id, None, "info", format!("project {}: {w}", self.id));
        } else if self.waiting.is_some() {
            self.engine.emit(
                &self.id,
                None,
                "info",
                format!("project {}: starting work again", self.id),
            );
        }
        self.store()
            .set_project_waiting(&self.id, waiting.as_deref())?;
        self.waiting = waiting;
        Ok(())
    }

    fn start_verify(
        &mut self,
        t: &TaskRecord,
        attempt: u32,
        permit: tokio::sync::OwnedSemaphorePermit,
        live: crate::metrics::LiveEntry,
    ) {
        let repo = self.repo.clone();
        let checkout = self.ctx.worktrees_dir.join(format!("{}-{attempt}", t.id));
        let commands = t.commands.clone();
        let timeout = Duration::from_secs(self.limits.verify_timeout_secs);
        let cap = self.limits.output_cap_bytes;
        let tx = self.tx.clone();
        self.engine.emit(
            &self.id,
            Some(&t.id),
            "verify",
            format!(
                "verify: running {} command(s) on a clean checkout of main",
                commands.len()
            ),
        );
        let enclosure = match self.ctx.limiter.enclose(self.ctx.memory_limit) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "verify runs without its memory limit: the enclosure could not be made");
                None
            }
        };
        self.verifying = Some((attempt, permit, enclosure.clone()));
        let cancel = self.cancel.clone();
        let sandbox = self.ctx.sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let result = verify::run_verify(
                &repo,
                &checkout,
                &commands,
                verify::Limits {
                    timeout,
                    output_cap: cap,
                    sandbox: &sandbox,
                },
                enclosure.clone(),
                &cancel,
            );
            if let Some(e) = enclosure {
                e.release();
            }
            drop(live);
            let _ = tx.send(Msg::Verified { attempt, result });
        });
    }

    fn busy(&self) -> bool {
        self.workers > 0
            || self.merging > 0
            || (self.verifying.is_some() && !self.cancel.is_cancelled())
            || ((self.needs_slot || self.gated)
                && !self.cancel.is_cancelled()
                && self.tasks.values().any(|t| t.state == TaskState::Ready))
    }

    async fn schedule(&mut self) -> Result<()> {
        self.advance()?;
        self.dispatch()?;
        while self.busy() {
            let slots = self.engine.slots.clone();
            let msg = tokio::select! {
                m = self.rx.recv() => m,
                _ = self.cancel.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    // The verify commands' enclosure is killed; the attempt is not counted.
                    self.interrupt_verify().await?;
                    self.needs_slot = false;
                    self.gated = false;
                    self.spare = None;
                    self.set_waiting(None)?;
                    continue;
                }
                // Nothing else wakes a run that waits on the gate or on a slot
                // another project holds.
                permit = slots.acquire_owned(), if self.needs_slot && !self.gated => {
                    self.spare = permit.ok();
                    self.dispatch()?;
                    continue;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)), if self.gated => {
                    self.dispatch()?;
                    continue;
                }
            };
            let Some(msg) = msg else { break };
            match msg {
                Msg::Worker {
                    task,
                    attempt,
                    worktree,
                    outcome,
                } => {
                    self.workers -= 1;
                    if let Some(path) = worktree {
                        self.worktrees.insert((task.clone(), attempt), path);
                    }
                    self.on_worker(task, attempt, outcome)?;
                }
                Msg::Merged {
                    task,
                    attempt,
                    result,
                } => {
                    self.merging -= 1;
                    self.on_merged(task, attempt, result)?;
                }
                Msg::Verified { attempt, result } => {
                    if self.verifying.as_ref().map(|v| v.0) == Some(attempt) {
                        self.verifying = None;
                        self.on_verified(attempt, result).await?;
                    }
                }
            }
            self.advance()?;
            self.dispatch()?;
        }
        Ok(())
    }

    async fn interrupt_verify(&mut self) -> Result<()> {
        if let Some((attempt, _permit, enclosure)) = self.verifying.take() {
            if let Some(e) = enclosure {
                let _ = tokio::task::spawn_blocking(move || e.release()).await;
            }
            if let Some(v) = self.verify_task() {
                let reason = "interrupted: the supervisor is shutting down";
                self.finish_attempt(
                    &v,
                    attempt,
                    AttemptOutcome::Interrupted,
                    Some(reason),
                    0,
                    None,
                )?;
                self.set(
                    &v,
                    TaskUpdate {
                        from: vec![TaskState::Running],
                        to: Some(TaskState::Ready),
                        last_error: Some(Some(reason.into())),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    fn verify_task(&self) -> Option<TaskId> {
        self.order
            .iter()
            .find(|id| self.tasks[*id].kind == TaskKind::Verify)
            .cloned()
    }

    fn on_worker(&mut self, task: TaskId, attempt: u32, outcome: WorkerOutcome) -> Result<()> {
        match outcome {
            WorkerOutcome::Finished {
                summary,
                commit,
                turns,
            } => {
                let title = self
                    .tasks
                    .get(&task)
                    .map(|t| t.title.clone())
                    .unwrap_or_default();
                self.turns.insert((task.clone(), attempt), turns);
                // What the worker changed in the work before committing it
                // (nested repositories removed) is the operator's to know.
                for note in summary
                    .lines()
                    .filter_map(|l| l.strip_prefix("[agentswarm] "))
                {
                    self.store().append_event(
                        &self.id,
                        Some(&task),
                        "note",
                        &serde_json::json!({"attempt": attempt, "message": note}),
                    )?;
                    self.engine
                        .emit(&self.id, Some(&task), "info", format!("{task}: {note}"));
                }
                if self.set(
                    &task,
                    TaskUpdate {
                        from: vec![TaskState::Running],
                        to: Some(TaskState::Merging),
                        expect_attempt: Some(attempt),
                        commit: Some(commit),
                        summary: Some(summary),
                        ..Default::default()
                    },
                )? {
                    self.merging += 1;
                    let job = MergeJob {
                        branch: branch_name(&task, attempt),
                        message: format!("Merge task {task} (attempt {attempt}): {title}"),
                        task,
                        attempt,
                    };
                    if self.merge_tx.as_ref().is_none_or(|q| q.send(job).is_err()) {
                        self.merging -= 1;
                        return Err(Error::Other("the merge queue stopped".into()));
                    }
                } else {
                    // A result for an attempt that is no longer current.
                    self.attempt_started.remove(&(task.clone(), attempt));
                    self.release_worktree(&task, attempt, false);
                }
            }
            WorkerOutcome::Ended {
                outcome,
                reason,
                turns,
            } => {
                self.finish_attempt(&task, attempt, outcome, Some(&reason), turns, None)?;
                let counted = outcome != AttemptOutcome::Interrupted;
                self.retry_or_fail(
                    &task,
                    attempt,
                    TaskState::Running,
                    counted,
                    reason,
                    Vec::new(),
                )?;
                self.release_worktree(&task, attempt, true);
            }
        }
        Ok(())
    }

    /// After a failed attempt: back to `ready` while attempts are left, else `failed`.
    fn retry_or_fail(
        &mut self,
        task: &TaskId,
        attempt: u32,
        from: TaskState,
        counted: bool,
        reason: String,
        conflicts: Vec<String>,
    ) -> Result<()> {
        let t = &self.tasks[task];
        let used = t.attempts_counted + u32::from(counted);
        let to = if used < self.limits.max_attempts {
            TaskState::Ready
        } else {
            TaskState::Failed
        };
        let reason = if to == TaskState::Failed {
            format!(
                "{reason} (attempt {attempt}; no attempts left of {})",
                self.limits.max_attempts
            )
        } else {
            reason
        };
        self.set(
            task,
            TaskUpdate {
                from: vec![from],
                to: Some(to),
                expect_attempt: Some(attempt),
                attempts_counted: Some(used),
                last_error: Some(Some(reason)),
                conflict_paths: Some(conflicts),
                finished_ms: (to == TaskState::Failed).then(now_ms),
                ..Default::default()
            },
        )?;
        Ok(())
    }

    fn on_merged(
        &mut self,
        task: TaskId,
        attempt: u32,
        result: std::result::Result<MergeOutcome, String>,
    ) -> Result<()> {
        let turns = self.turns.remove(&(task.clone(), attempt)).unwrap_or(0);
        match result {
            Ok(MergeOutcome::Merged {
                commit: merge_commit,
            }) => {
                let task_commit = self.tasks.get(&task).and_then(|t| t.commit.clone());
                self.finish_attempt(
                    &task,
                    attempt,
                    AttemptOutcome::Merged,
                    None,
                    turns,
                    task_commit.as_deref(),
                )?;
                if self.set(
                    &task,
                    TaskUpdate {
                        from: vec![TaskState::Merging],
                        to: Some(TaskState::Done),
                        expect_attempt: Some(attempt),
                        merge_commit: Some(merge_commit),
                        last_error: Some(None),
                        finished_ms: Some(now_ms()),
                        ..Default::default()
                    },
                )? {
                    self.observe_task_done(&task);
                }
                self.archive_task(&task, attempt);
            }
            Ok(MergeOutcome::Conflict { paths }) => {
                let reason = format!(
                    "merge conflict in {}; re-running on the new main",
                    paths.join(", ")
                );
                self.finish_attempt(
                    &task,
                    attempt,
                    AttemptOutcome::Conflict,
                    Some(&reason),
                    turns,
                    None,
                )?;
                self.retry_or_fail(&task, attempt, TaskState::Merging, true, reason, paths)?;
                self.release_worktree(&task, attempt, false);
            }
            Err(e) => {
                let reason = format!("merge failed: {e}");
                self.finish_attempt(
                    &task,
                    attempt,
                    AttemptOutcome::Failed,
                    Some(&reason),
                    turns,
                    None,
                )?;
                self.retry_or_fail(&task, attempt, TaskState::Merging, true, reason, Vec::new())?;
                self.release_worktree(&task, attempt, false);
            }
        }
        Ok(())
    }

    /// Off the critical path: record the files the task changed, write its
    /// archive from its worktree, then remove the worktree.
    fn archive_task(&mut self, task: &TaskId, attempt: u32) {
        let Some(record) = self.tasks.get(task).cloned() else {
            return;
        };
        let Some(worktree) = self.worktrees.remove(&(task.clone(), attempt)) else {
            return;
        };
        let repo = self.repo.clone();
        let pool = self.ctx.pool.clone();
        let outputs = self.outputs.clone();
        let store = self.engine.store.clone();
        let id = self.id.clone();
        let redactor = self.engine.gateway.redactor().clone();
        self.background.spawn_blocking(move || {
            let files = match record.commit.as_deref().map(|c| repo.changed_files(c)) {
                Some(Ok(changes)) => changes.into_iter().map(|c| c.path).collect::<Vec<_>>(),
                Some(Err(e)) => {
                    tracing::warn!(task = %record.id, error = %e, "cannot list the task's changed files");
                    Vec::new()
                }
                None => Vec::new(),
            };
            let update = TaskUpdate { from: vec![TaskState::Done], changed_files: Some(files.clone()), ..Default::default() };
            if let Err(e) = store.update_task(&id, &record.id, &update) {
                tracing::warn!(task = %record.id, error = %e, "cannot store the task's changed files");
            }
            if let Err(e) = packager::task_archive(&outputs, &id, &record, &worktree, &files, &redactor) {
                tracing::warn!(task = %record.id, error = %e, "cannot write the task archive");
            }
            // Everything was committed: the worktree is clean for the next attempt.
            pool.release(&worktree, false);
        });
    }

    /// Gives an attempt's worktree back to the pool. `dirty`: the attempt did
    /// not end in a commit, so it may have left files behind.
    fn release_worktree(&mut self, task: &TaskId, attempt: u32, dirty: bool) {
        if let Some(path) = self.worktrees.remove(&(task.clone(), attempt)) {
            self.ctx.pool.release(&path, dirty);
        }
    }

    async fn on_verified(
        &mut self,
        attempt: u32,
        result: std::result::Result<Vec<CommandResult>, String>,
    ) -> Result<()> {
        let Some(verify_id) = self.verify_task() else {
            return Ok(());
        };
        let results = match result {
            Ok(r) => r,
            Err(reason) => {
                self.finish_attempt(
                    &verify_id,
                    attempt,
                    AttemptOutcome::Failed,
                    Some(&reason),
                    0,
                    None,
                )?;
                return self.retry_or_fail(
                    &verify_id,
                    attempt,
                    TaskState::Running,
                    true,
                    reason,
                    Vec::new(),
                );
            }
        };
        let passed = !results.is_empty() && results.iter().all(|r| r.passed);
        self.store().append_event(
            &self.id,
            Some(&verify_id),
            "verify",
            &serde_json::json!({"attempt": attempt, "passed": passed, "results": results}),
        )?;
        for r in &results {
            self.engine.emit(
                &self.id,
                Some(&verify_id),
                "verify",
                format!(
                    "verify: `{}` → {} ({} ms)",
                    r.command,
                    if r.passed {
                        "ok".to_owned()
                    } else {
                        r.exit.clone()
                    },
                    r.duration_ms
                ),
            );
        }
        self.last_verify = Some(results.clone());
        if passed {
            self.finish_attempt(&verify_id, attempt, AttemptOutcome::Merged, None, 0, None)?;
            let head = self.repo.head().ok();
            if self.set(
                &verify_id,
                TaskUpdate {
                    from: vec![TaskState::Running],
                    to: Some(TaskState::Done),
                    summary: Some(format!("{} verify command(s) passed", results.len())),
                    merge_commit: head,
                    last_error: Some(None),
                    finished_ms: Some(now_ms()),
                    ..Default::default()
                },
            )? {
                self.observe_task_done(&verify_id);
            }
            return Ok(());
        }
        let failed: Vec<&CommandResult> = results.iter().filter(|r| !r.passed).collect();
        let reason = format!(
            "verify failed: {}",
            failed
                .iter()
                .map(|r| format!("`{}` ({})", r.command, r.exit))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.finish_attempt(
            &verify_id,
            attempt,
            AttemptOutcome::Failed,
            Some(&reason),
            0,
            None,
        )?;
        let project = self.store().project(&self.id)?;
        let round = project.fix_round + 1;
        if round > self.limits.max_fix_rounds || self.cancel.is_cancelled() {
            let reason = if self.cancel.is_cancelled() {
                reason
            } else {
                format!(
                    "{reason}; no fix rounds left of {}",
                    self.limits.max_fix_rounds
                )
            };
            self.set(
                &verify_id,
                TaskUpdate {
                    from: vec![TaskState::Running],
                    to: Some(TaskState::Failed),
                    last_error: Some(Some(reason)),
                    finished_ms: Some(now_ms()),
                    ..Default::default()
                },
            )?;
            return Ok(());
        }
        self.engine.emit(
            &self.id,
            Some(&verify_id),
            "verify",
            format!(
                "verify failed; asking the planner for fix round {round} of {}",
                self.limits.max_fix_rounds
            ),
        );
        let existing: HashSet<TaskId> = self.tasks.keys().cloned().collect();
        let request = prompts::fix_request(&self.goal, round, &results, self.limits.max_tasks);
        let outcome = tokio::select! {
            o = planner::fix_plan(&self.engine.gateway, &self.id, request, &existing, self.limits.max_tasks) => o,
            _ = self.cancel.cancelled() => {
                self.set(&verify_id, TaskUpdate { from: vec![TaskState::Running], to: Some(TaskState::Ready), last_error: Some(Some("interrupted while planning fixes".into())), ..Default::default() })?;
                return Ok(());
            }
        };
        match outcome.result {
            Ok(fix) => {
                let tasks = fix_tasks(&fix, round, &existing);
                self.store()
                    .add_fix_tasks(&self.id, round, &tasks, &verify_id)?;
                self.store().update_task(
                    &self.id,
                    &verify_id,
                    &TaskUpdate {
                        from: vec![],
                        last_error: Some(Some(reason)),
                        ..Default::default()
                    },
                )?;
                self.engine.emit(
                    &self.id,
                    None,
                    "plan",
                    format!(
                        "fix round {round}: {} task(s): {}",
                        tasks.len(),
                        tasks
                            .iter()
                            .map(|t| t.id.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
                self.reload()?;
            }
            Err(e) => {
                self.set(
                    &verify_id,
                    TaskUpdate {
                        from: vec![TaskState::Running],
                        to: Some(TaskState::Failed),
                        last_error: Some(Some(format!("{reason}; fix planning failed: {e}"))),
                        finished_ms: Some(now_ms()),
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    /// Ends the run: waits for the background work, writes the delivery (also
    /// for a failed run, marked failed), and records the final state.
    async fn finish(mut self) -> Result<RunReport> {
        while self.background.join_next().await.is_some() {}
        let verify_done = self
            .verify_task()
            .is_some_and(|v| self.tasks[&v].state == TaskState::Done);
        let unfinished = self.tasks.values().any(|t| !t.state.is_terminal());
        if self.cancel.is_cancelled() && !verify_done && unfinished {
            set_project(self.engine, &self.id, ProjectState::Interrupted, None)?;
            self.engine.emit(
                &self.id,
                None,
                "project",
                format!(
                    "project {}: interrupted; `agentswarm resume {}` carries on",
                    self.id, self.id
                ),
            );
            return report(self.engine, &self.id, None);
        }
        let status = if verify_done {
            ProjectState::Done
        } else {
            ProjectState::Failed
        };
        let error = (!verify_done).then(|| self.failure_summary());

        let project = self.store().project(&self.id)?;
        let tasks = self.store().tasks(&self.id)?;
        let repo = self.repo.clone();
        let final_commit = repo.head().ok();
        let last_verify = match self.last_verify.clone() {
            Some(v) => Some(v),
            None => self.verify_results_from_events()?,
        };
        let mut manifest = packager::manifest_json(
            &project,
            &tasks,
            status.as_str(),
            final_commit.as_deref(),
            last_verify.as_deref(),
            self.store(),
        );
        if let Some(obj) = manifest.as_object_mut() {
            obj.insert("sandbox".into(), self.ctx.sandbox_report.clone());
            if let Some(e) = &error {
                obj.insert("error".into(), serde_json::Value::String(e.clone()));
            }
        }
        let outputs = self.outputs.clone();
        let name = if self.plan.name.is_empty() {
            "project".to_owned()
        } else {
            self.plan.name.clone()
        };
        let pool = self.ctx.pool.clone();
        let redactor = self.engine.gateway.redactor().clone();
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
                    self.engine.emit(
                        &self.id,
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
                    self.engine.emit(&self.id, None, "info", line);
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
        self.store().set_final(
            &self.id,
            final_commit.as_deref(),
            delivery_path.as_ref().and_then(|p| p.to_str()),
        )?;
        // Processes this supervisor spawned (workers, git, verify commands): the benchmark reads it.
        self.store().append_event(
            &self.id,
            None,
            "run_stats",
            &serde_json::json!({"spawned": swarm_exec::spawned_count()}),
        )?;
        set_project(self.engine, &self.id, status, error.as_deref())?;
        self.engine.emit(
            &self.id,
            None,
            "project",
            format!("project {}: {}", self.id, status),
        );
        report(self.engine, &self.id, manifest_path)
    }

    fn verify_results_from_events(&self) -> Result<Option<Vec<CommandResult>>> {
        let mut last = None;
        let mut after = 0;
        loop {
            let events = self.store().events(&self.id, after, 1000)?;
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

    fn failure_summary(&self) -> String {
        let mut parts = Vec::new();
        for id in &self.order {
            let t = &self.tasks[id];
            match t.state {
                TaskState::Failed => parts.push(format!(
                    "task {} failed: {}",
                    id,
                    t.last_error.as_deref().unwrap_or("unknown reason")
                )),
                TaskState::Pending | TaskState::Ready | TaskState::Running | TaskState::Merging => {
                    parts.push(format!("task {id} did not finish ({})", t.state))
                }
                TaskState::Done | TaskState::Blocked | TaskState::Cancelled => {}
            }
        }
        let blocked: Vec<&str> = self
            .order
            .iter()
            .filter(|id| self.tasks[*id].state == TaskState::Blocked)
            .map(|i| i.as_str())
            .collect();
        if !blocked.is_empty() {
            parts.push(format!("blocked by those: {}", blocked.join(", ")));
        }
        if parts.is_empty() {
            "the run ended without a passing verify".into()
        } else {
            parts.join("; ")
        }
    }
}

/// Fix tasks get fresh ids (`f<round>-<id>`); their dependencies on each
/// other are renamed to match, dependencies on existing tasks are kept.
fn fix_tasks(plan: &Plan, round: u32, existing: &HashSet<TaskId>) -> Vec<swarm_store::NewTask> {
    let mut taken: HashSet<TaskId> = existing.clone();
    let mut rename: BTreeMap<TaskId, TaskId> = BTreeMap::new();
    for t in &plan.tasks {
        let base: String = format!("f{round}-{}", t.id).chars().take(60).collect();
        let mut candidate = TaskId::new(base.clone());
        let mut n = 2;
        while taken.contains(&candidate) {
            candidate = TaskId::new(format!("{base}-{n}"));
            n += 1;
        }
        taken.insert(candidate.clone());
        rename.insert(t.id.clone(), candidate);
    }
    let mut tasks = new_tasks(plan, round);
    for t in &mut tasks {
        if let Some(new) = rename.get(&t.id) {
            t.id = new.clone();
        }
        for d in &mut t.depends_on {
            if let Some(new) = rename.get(d) {
                *d = new.clone();
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_protocol::PlanTask;

    #[test]
    fn fix_tasks_get_fresh_ids_and_renamed_deps() {
        let plan = Plan {
            name: "fix".into(),
            summary: String::new(),
            tasks: vec![
                PlanTask {
                    id: "a".into(),
                    title: "A".into(),
                    description: String::new(),
                    depends_on: vec!["core".into()],
                    files: vec![],
                    kind: TaskKind::Code,
                    commands: vec![],
                },
                PlanTask {
                    id: "b".into(),
                    title: "B".into(),
                    description: String::new(),
                    depends_on: vec!["a".into()],
                    files: vec![],
                    kind: TaskKind::Code,
                    commands: vec![],
                },
            ],
        };
        let existing: HashSet<TaskId> = ["core".into(), "f1-a".into()].into_iter().collect();
        let tasks = fix_tasks(&plan, 1, &existing);
        assert_eq!(tasks[0].id.as_str(), "f1-a-2");
        assert_eq!(tasks[0].depends_on, vec![TaskId::from("core")]);
        assert_eq!(tasks[1].id.as_str(), "f1-b");
        assert_eq!(tasks[1].depends_on, vec![TaskId::from("f1-a-2")]);
        assert!(tasks.iter().all(|t| t.fix_round == 1));
    }
}
