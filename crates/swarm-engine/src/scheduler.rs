//! The scheduler of one project's run: it holds the tasks' states, decides
//! which task is ready or blocked, dispatches ready tasks to free slots,
//! and decides after each attempt whether the task is done, runs again or
//! has failed. It acts only through two seams: an [`AttemptRunner`] for the
//! attempts of code tasks, and an [`Integration`] for the work on `main`
//! (the merge queue, verify, task archives, fix plans). The run's real ones
//! spawn workers and use git (`driver.rs`, `mainline.rs`); the unit tests
//! (`scheduler/tests.rs`) use fakes.
//!
//! It is event-driven: it sleeps on one channel and wakes when an attempt
//! ends, a merge completes or verify finishes, so a finished task's
//! dependents start at once rather than on the next poll.

use crate::metrics::LiveEntry;
use crate::prompts::{self, CommandResult};
use crate::runner::{AttemptJob, AttemptReport, AttemptRunner, Outcome, Workspace};
use crate::{wording, Engine, Result};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use swarm_config::RunLimits;
use swarm_git::MergeOutcome;
use swarm_protocol::{AttemptOutcome, Plan, ProjectId, ReviewMode, TaskId, TaskKind, TaskState};
use swarm_store::{now_ms, AttemptEnd, TaskRecord, TaskUpdate};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// What wakes the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    /// A runner is done with an attempt.
    Attempt {
        task: TaskId,
        attempt: u32,
        report: AttemptReport,
    },
    /// The merge queue is done with an attempt's commit.
    Merged {
        task: TaskId,
        attempt: u32,
        result: std::result::Result<MergeOutcome, String>,
    },
    /// The verify commands ran (or could not be run).
    Verified {
        attempt: u32,
        result: std::result::Result<Vec<CommandResult>, String>,
    },
    /// An attempt's commit is held on its review branch (`review = "tasks"`).
    Held {
        task: TaskId,
        attempt: u32,
        result: std::result::Result<(), String>,
    },
}

pub(crate) type Events = mpsc::UnboundedSender<Event>;

/// An attempt's commit for the merge queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MergeJob {
    pub task: TaskId,
    pub attempt: u32,
    pub branch: String,
    pub message: String,
}

/// One attempt of the verify task.
#[derive(Debug)]
pub(crate) struct VerifyJob {
    pub task: TaskId,
    pub attempt: u32,
    pub commands: Vec<String>,
    /// Dropped when the commands are done.
    pub live: LiveEntry,
}

/// The run's work on `main`, which the scheduler asks for and never does
/// itself. Results come back on the scheduler's [`Events`] channel.
#[async_trait::async_trait]
pub(crate) trait Integration: Send {
    /// Queues `job` for the merge queue (one merge at a time); the result
    /// comes back as [`Event::Merged`]. An error: the queue has stopped.
    fn merge(&mut self, job: MergeJob) -> Result<()>;

    /// Starts the verify commands on a clean checkout of `main`; the result
    /// comes back as [`Event::Verified`].
    fn verify(&mut self, job: VerifyJob);

    /// Kills the running verify commands (the run is stopping).
    async fn stop_verify(&mut self);

    /// Off the critical path: records the files the merged `task` changed,
    /// writes its archive from `workspace`, then gives the workspace back
    /// to `runner`.
    fn archive(&mut self, task: TaskRecord, workspace: Workspace, runner: Arc<dyn AttemptRunner>);

    /// As [`Integration::archive`] for a task whose workspace is gone (it
    /// waited in review): the archive is written from its commit.
    fn archive_commit(&mut self, task: TaskRecord);

    /// Holds `commit` on the review branch of `task`'s `attempt`
    /// (`swarm_git::review::branch`), so that it outlives the worktree and
    /// a restart; the result comes back as [`Event::Held`].
    fn hold(&mut self, task: TaskId, attempt: u32, commit: String);

    /// The commit `main` is at.
    fn main_head(&self) -> Option<String>;

    /// Asks the planner for the tasks of a fix round.
    async fn plan_fixes(
        &self,
        request: String,
        existing: &HashSet<TaskId>,
        max_tasks: u32,
    ) -> std::result::Result<Plan, String>;
}

pub(crate) struct Scheduler<'e, I> {
    pub(crate) engine: &'e Engine,
    pub(crate) id: ProjectId,
    pub(crate) goal: String,
    pub(crate) limits: RunLimits,
    runner: Arc<dyn AttemptRunner>,
    pub(crate) integration: I,
    pub(crate) tasks: BTreeMap<TaskId, TaskRecord>,
    /// Task ids in plan order.
    pub(crate) order: Vec<TaskId>,
    tx: Events,
    rx: mpsc::UnboundedReceiver<Event>,
    /// Attempts running in a runner.
    attempts: usize,
    /// Merges queued or in progress.
    merging: usize,
    /// The verify task's attempt while it runs, and its slot.
    verifying: Option<(u32, (OwnedSemaphorePermit, crate::nodes::NodeLease))>,
    /// A slot acquired while waiting for one, used by the next dispatch.
    spare: Option<OwnedSemaphorePermit>,
    /// Ready tasks wait for a slot another project holds.
    needs_slot: bool,
    /// Ready tasks wait for the resource gate.
    gated: bool,
    /// Ready tasks wait for a node with a free slot (the overall cap has
    /// room, the nodes that can take them do not); woken by `nodes_changed`.
    needs_node: bool,
    nodes_changed: tokio::sync::watch::Receiver<u64>,
    /// Ready code tasks wait for the worker model's provider to reset its
    /// quota (the gateway's circuit breaker), until then.
    quota_until: Option<tokio::time::Instant>,
    /// Why ready tasks wait, as last recorded in the store.
    waiting: Option<String>,
    /// The stop was seen and handled.
    stopping: bool,
    pub(crate) last_verify: Option<Vec<CommandResult>>,
    /// Workspaces of attempts that ended, until their merge is decided.
    workspaces: HashMap<(TaskId, u32), Workspace>,
    /// Model turns of attempts that committed and wait for their merge.
    turns: HashMap<(TaskId, u32), u32>,
    /// Setup failures in a row, per task (see [`crate::runner::SETUP_RETRIES`]).
    setup_failures: HashMap<TaskId, u32>,
    /// When each attempt started by this run started, until it ends (for
    /// `agentswarm_attempt_duration_seconds`).
    attempt_started: HashMap<(TaskId, u32), Instant>,
    pub(crate) cancel: CancellationToken,
    /// The workers' system prompt (with an existing repository's
    /// instructions for agents: [`Scheduler::set_worker_system`]).
    worker_system: String,
    /// Commits (and summaries) of attempts being held for review, until
    /// their review branch exists.
    holding: HashMap<(TaskId, u32), (String, String)>,
    /// When the store is next looked at for review decisions (a deadline,
    /// not a sleep restarted by every event, so that a busy run still looks).
    next_review_poll: tokio::time::Instant,
}

impl<'e, I: Integration> Scheduler<'e, I> {
    /// A scheduler over the project's tasks as the store has them. The
    /// integration is made with the sender of the scheduler's event channel,
    /// on which it reports.
    pub(crate) fn new(
        engine: &'e Engine,
        id: &ProjectId,
        goal: &str,
        limits: RunLimits,
        runner: Arc<dyn AttemptRunner>,
        integration: impl FnOnce(Events) -> I,
        cancel: CancellationToken,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let integration = integration(tx.clone());
        let mut s = Self {
            engine,
            id: id.clone(),
            goal: goal.to_owned(),
            limits,
            runner,
            integration,
            tasks: BTreeMap::new(),
            order: Vec::new(),
            tx,
            rx,
            attempts: 0,
            merging: 0,
            verifying: None,
            spare: None,
            needs_slot: false,
            gated: false,
            needs_node: false,
            nodes_changed: engine.nodes.watch(),
            quota_until: None,
            waiting: None,
            stopping: false,
            last_verify: None,
            workspaces: HashMap::new(),
            turns: HashMap::new(),
            setup_failures: HashMap::new(),
            attempt_started: HashMap::new(),
            cancel,
            worker_system: prompts::WORKER_SYSTEM.to_owned(),
            holding: HashMap::new(),
            next_review_poll: tokio::time::Instant::now() + REVIEW_POLL,
        };
        s.reload()?;
        Ok(s)
    }

    /// The system prompt of every worker this scheduler starts from now on.
    pub(crate) fn set_worker_system(&mut self, system: String) {
        self.worker_system = system;
    }

    pub(crate) fn store(&self) -> &dyn swarm_store::Store {
        self.engine.store.as_ref()
    }

    /// Records how an attempt ended; one started by this run is also
    /// observed in `agentswarm_attempt_duration_seconds`.
    pub(crate) fn end_attempt(&mut self, end: AttemptEnd) -> Result<()> {
        self.store().finish_attempt(&self.id, &end)?;
        if let Some(started) = self
            .attempt_started
            .remove(&(end.task.clone(), end.attempt))
        {
            let kind = self
                .tasks
                .get(&end.task)
                .map(|t| t.kind)
                .unwrap_or_default();
            self.engine
                .metrics
                .attempt_ended(kind, end.outcome, started.elapsed());
        }
        Ok(())
    }

    /// `task` reached `done` through an attempt of this run: observes its
    /// time from its first attempt's start (in the store, so attempts of
    /// earlier runs count) in `agentswarm_task_duration_seconds`.
    pub(crate) fn observe_task_done(&self, task: &TaskId) {
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

    /// Reads the tasks again (after a fix round added some).
    pub(crate) fn reload(&mut self) -> Result<()> {
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
    pub(crate) fn set(&mut self, task: &TaskId, update: TaskUpdate) -> Result<bool> {
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
                let done = self.done_count() + usize::from(to == TaskState::Done);
                let msg = wording::transition(&t, from, to, done, self.order.len());
                self.engine.emit(&self.id, Some(task), "task_state", msg);
            }
            self.tasks.insert(task.clone(), t);
        }
        Ok(true)
    }

    /// pending → ready when every dependency is done; pending → blocked when
    /// one failed for good.
    pub(crate) fn advance(&mut self) -> Result<()> {
        loop {
            let changes = ready_or_blocked(&self.order, &self.tasks);
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
        let mut ready: Vec<TaskId> = self
            .order
            .iter()
            .filter(|id| self.tasks[*id].state == TaskState::Ready)
            .cloned()
            .collect();
        self.needs_slot = false;
        self.gated = false;
        self.needs_node = false;
        self.nodes_changed.borrow_and_update();
        self.quota_until = None;
        let mut waiting = None;
        // This machine's gate is read once a dispatch (two /proc reads), and
        // only when something is ready to start. Other nodes report theirs.
        let local_gate = if ready.is_empty() {
            Ok(())
        } else {
            self.engine.gate.check()
        };
        if let Err(why) = &local_gate {
            if !self.engine.nodes.has_remote() {
                self.gated = true;
                // Another project may use the slot meanwhile.
                self.spare = None;
                return self.set_waiting(Some(format!("waiting: {why}")));
            }
        }
        // The quota circuit breaker: while the worker model's providers are
        // out of quota, no code attempt starts (it would only wait in the
        // gateway, holding a slot and its time limit); verify needs no model.
        if ready.iter().any(|id| self.tasks[id].kind == TaskKind::Code) {
            if let Some(block) = self.engine.gateway.quota_block() {
                ready.retain(|id| self.tasks[id].kind != TaskKind::Code);
                let left = block
                    .until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                self.quota_until = Some(tokio::time::Instant::now() + left);
                self.spare = None;
                waiting = Some(wording::waiting_for_quota(
                    &block.provider,
                    block.until,
                    &block.reason,
                ));
            }
        }
        // Tasks whose outside agent is out of its own usage limit wait for
        // its reset (docs/agents.md); the others go on.
        if ready.iter().any(|id| self.tasks[id].kind == TaskKind::Code) {
            let mut held = None::<crate::gateway::QuotaBlock>;
            ready.retain(|id| {
                if self.tasks[id].kind != TaskKind::Code {
                    return true;
                }
                match self.runner.hold(id) {
                    Some(b) => {
                        if held.as_ref().is_none_or(|h| b.until < h.until) {
                            held = Some(b);
                        }
                        false
                    }
                    None => true,
                }
            });
            if let Some(b) = held {
                let left = b
                    .until
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                let at = tokio::time::Instant::now() + left;
                self.quota_until = Some(self.quota_until.map_or(at, |q| q.min(at)));
                if waiting.is_none() {
                    waiting = Some(wording::waiting_for_quota(&b.provider, b.until, &b.reason));
                }
            }
        }
        let mut unplaced = None::<crate::nodes::Unplaced>;
        for id in ready {
            let Some(permit) = self
                .spare
                .take()
                .or_else(|| self.engine.slots.clone().try_acquire_owned().ok())
            else {
                self.needs_slot = true;
                if self.attempts == 0 && self.verifying.is_none() && waiting.is_none() {
                    waiting = Some(wording::waiting_for_slots(
                        self.engine.config.max_concurrent_workers,
                    ));
                }
                break;
            };
            // Which machine: verify runs here; a code task on the node with
            // the most free slots that can take it.
            let lease = match self.tasks[&id].kind {
                TaskKind::Verify => self.engine.nodes.place_local(),
                TaskKind::Code => {
                    let agent = self.runner.agent_of(&id);
                    let requires = self.runner.requires(&id);
                    match self.engine.nodes.place(
                        agent.as_deref(),
                        &requires,
                        &local_gate,
                        &self.engine.gate,
                    ) {
                        Ok(l) => l,
                        Err(why) => {
                            // The slot goes to the next task, which another
                            // node may take.
                            self.spare = Some(permit);
                            if !matches!(unplaced, Some(crate::nodes::Unplaced::Gated(_))) {
                                unplaced = Some(why);
                            }
                            continue;
                        }
                    }
                }
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
                .insert((id.clone(), attempt), Instant::now());
            let live = self.engine.live.enter(&self.id, &id, attempt);
            tracing::debug!(task = %id, attempt, runner = %self.runner.kind(), node = lease.name(), "attempt dispatched");
            if self.engine.nodes.has_remote() {
                // Where it runs, under what: a node's own mechanisms (this
                // machine's are in the run's `sandbox` event).
                let mut data = serde_json::json!({"attempt": attempt, "node": lease.name()});
                if let Some(info) = lease.remote().and_then(|r| r.info()) {
                    data["sandbox"] = info.sandbox.into();
                    data["memory_limiter"] = info.memory_limiter.into();
                }
                self.store()
                    .append_event(&self.id, Some(&id), "placed", &data)?;
            }
            match t.kind {
                TaskKind::Verify => {
                    self.engine.emit(
                        &self.id,
                        Some(&id),
                        "verify",
                        wording::verify_starts(t.commands.len()),
                    );
                    self.verifying = Some((attempt, (permit, lease)));
                    self.integration.verify(VerifyJob {
                        task: id,
                        attempt,
                        commands: t.commands.clone(),
                        live,
                    });
                }
                TaskKind::Code => {
                    let node = lease.remote().cloned();
                    let slot = crate::runner::Slot::new((permit, lease));
                    let job = AttemptJob {
                        project: self.id.clone(),
                        task: id.clone(),
                        attempt,
                        system_prompt: self.worker_system.clone(),
                        prompt,
                        commit_subject: format!("{}: {}", id, t.title),
                        max_turns: self.limits.max_turns,
                        command_timeout_secs: self.limits.command_timeout_secs,
                        output_cap_bytes: self.limits.output_cap_bytes,
                        live,
                        node,
                        // A retry (after a conflict, say) starts from the
                        // newest main wherever it runs.
                        needs: if t.attempt > 0 {
                            self.integration.main_head().into_iter().collect()
                        } else {
                            t.depends_on
                                .iter()
                                .filter_map(|d| self.tasks.get(d)?.merge_commit.clone())
                                .collect()
                        },
                        slot: slot.clone(),
                    };
                    let runner = self.runner.clone();
                    let tx = self.tx.clone();
                    let cancel = self.cancel.child_token();
                    self.attempts += 1;
                    tokio::spawn(async move {
                        let report = runner.run(job, cancel).await;
                        // The slot is free once the attempt is over, before
                        // its merge (if the runner has not freed it yet).
                        slot.free();
                        let _ = tx.send(Event::Attempt {
                            task: id,
                            attempt,
                            report,
                        });
                    });
                }
            }
        }
        if let Some(why) = unplaced {
            // A slot kept for a task no node took goes back to the others.
            self.spare = None;
            match why {
                crate::nodes::Unplaced::Gated(why) => {
                    self.gated = true;
                    waiting = waiting.or(Some(format!("waiting: {why}")));
                }
                crate::nodes::Unplaced::Full => {
                    self.needs_node = true;
                    if self.attempts == 0 && self.verifying.is_none() {
                        waiting = waiting.or(Some(wording::waiting_for_nodes()));
                    }
                }
            }
        }
        self.set_waiting(waiting)
    }

    /// Why ready tasks wait, as last recorded.
    pub(crate) fn waiting(&self) -> Option<&str> {
        self.waiting.as_deref()
    }

    /// Records (on change) why ready tasks wait, for `status` and the log.
    fn set_waiting(&mut self, waiting: Option<String>) -> Result<()> {
        // A change of cause, not of figures: the gate's readings move every
        // second, and a line (and a stored event) each second is a flood.
        if self.waiting.as_deref().map(cause) == waiting.as_deref().map(cause) {
            return Ok(());
        }
        record_waiting(
            self.engine,
            &self.id,
            self.waiting.is_some(),
            waiting.as_deref(),
        )?;
        self.waiting = waiting;
        Ok(())
    }

    /// Tasks wait for a person's decision (the run looks at the store for
    /// it once a second).
    fn in_review(&self) -> bool {
        self.tasks.values().any(|t| t.state == TaskState::Review)
    }

    fn busy(&self) -> bool {
        self.attempts > 0
            || self.merging > 0
            || !self.holding.is_empty()
            || (self.in_review() && !self.cancel.is_cancelled())
            || (self.verifying.is_some() && !self.cancel.is_cancelled())
            || ((self.needs_slot || self.gated || self.needs_node)
                && !self.cancel.is_cancelled()
                && self.tasks.values().any(|t| t.state == TaskState::Ready))
            || (self.quota_until.is_some()
                && !self.cancel.is_cancelled()
                && self
                    .tasks
                    .values()
                    .any(|t| t.state == TaskState::Ready && t.kind == TaskKind::Code))
    }

    /// Runs the project's tasks until nothing is left to do or start (all
    /// finished, or the run stopped and its attempts ended).
    pub(crate) async fn schedule(&mut self) -> Result<()> {
        // Approved before a stop or a crash, not merged yet.
        self.merge_approved()?;
        self.advance()?;
        self.dispatch()?;
        while self.busy() {
            let slots = self.engine.slots.clone();
            let event = tokio::select! {
                e = self.rx.recv() => e,
                _ = self.cancel.cancelled(), if !self.stopping => {
                    self.stopping = true;
                    // The verify commands are killed; the attempt is not counted.
                    self.interrupt_verify().await?;
                    self.needs_slot = false;
                    self.gated = false;
                    self.needs_node = false;
                    self.quota_until = None;
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
                // A node's slot freed, or a node came up.
                _ = self.nodes_changed.changed(), if self.needs_node && !self.gated => {
                    self.dispatch()?;
                    continue;
                }
                // A person decides in another process (`agentswarm review`,
                // the API): the store is where the decision arrives.
                _ = tokio::time::sleep_until(self.next_review_poll), if self.in_review() && !self.cancel.is_cancelled() => {
                    self.next_review_poll = tokio::time::Instant::now() + REVIEW_POLL;
                    self.poll_reviews()?;
                    self.advance()?;
                    self.dispatch()?;
                    continue;
                }
                // The provider's reset (it is checked again then: another
                // quota answer may have moved it).
                _ = sleep_until_or_never(self.quota_until), if self.quota_until.is_some() && !self.gated => {
                    self.dispatch()?;
                    continue;
                }
            };
            let Some(event) = event else { break };
            match event {
                Event::Attempt {
                    task,
                    attempt,
                    report,
                } => {
                    self.attempts -= 1;
                    if let Some(w) = report.workspace {
                        self.workspaces.insert((task.clone(), attempt), w);
                    }
                    self.on_attempt(task, attempt, report.outcome)?;
                }
                Event::Merged {
                    task,
                    attempt,
                    result,
                } => {
                    self.merging -= 1;
                    self.on_merged(task, attempt, result)?;
                }
                Event::Verified { attempt, result } => {
                    if self.verifying.as_ref().map(|v| v.0) == Some(attempt) {
                        self.verifying = None;
                        self.on_verified(attempt, result).await?;
                    }
                }
                Event::Held {
                    task,
                    attempt,
                    result,
                } => self.on_held(task, attempt, result)?,
            }
            self.advance()?;
            self.dispatch()?;
        }
        Ok(())
    }

    /// After an error: stops the running attempts and waits for them (up
    /// to `until`) so that none is left behind.
    pub(crate) async fn stop_attempts(&mut self, until: tokio::time::Instant) {
        self.cancel.cancel();
        while self.attempts > 0 {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some(Event::Attempt { .. })) => self.attempts -= 1,
                Ok(Some(Event::Merged { .. } | Event::Verified { .. } | Event::Held { .. })) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    async fn interrupt_verify(&mut self) -> Result<()> {
        if let Some((attempt, _permit)) = self.verifying.take() {
            self.integration.stop_verify().await;
            if let Some(v) = self.verify_task() {
                let reason = "interrupted: the supervisor is shutting down";
                self.end_attempt(AttemptEnd::ended(
                    &v,
                    attempt,
                    AttemptOutcome::Interrupted,
                    reason,
                    0,
                ))?;
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

    pub(crate) fn verify_task(&self) -> Option<TaskId> {
        self.order
            .iter()
            .find(|id| self.tasks[*id].kind == TaskKind::Verify)
            .cloned()
    }

    fn on_attempt(&mut self, task: TaskId, attempt: u32, outcome: Outcome) -> Result<()> {
        match outcome {
            Outcome::Committed {
                branch,
                commit,
                summary,
                turns,
                notes,
            } => {
                let title = self
                    .tasks
                    .get(&task)
                    .map(|t| t.title.clone())
                    .unwrap_or_default();
                self.turns.insert((task.clone(), attempt), turns);
                // What the worker changed in the work before committing it
                // (nested repositories removed) is the operator's to know.
                for note in &notes {
                    self.store().append_event(
                        &self.id,
                        Some(&task),
                        "note",
                        &serde_json::json!({"attempt": attempt, "message": note}),
                    )?;
                    self.engine
                        .emit(&self.id, Some(&task), "info", format!("{task}: {note}"));
                }
                if self.limits.review == ReviewMode::Tasks {
                    // Held for a person: the commit goes to its review
                    // branch first, then the task waits in `review`.
                    self.holding
                        .insert((task.clone(), attempt), (commit.clone(), summary));
                    self.integration.hold(task, attempt, commit);
                    return Ok(());
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
                        branch,
                        message: format!("Merge task {task} (attempt {attempt}): {title}"),
                        task,
                        attempt,
                    };
                    if let Err(e) = self.integration.merge(job) {
                        self.merging -= 1;
                        return Err(e);
                    }
                } else {
                    // A result for an attempt that is no longer current.
                    self.attempt_started.remove(&(task.clone(), attempt));
                    self.release_workspace(&task, attempt, false);
                }
            }
            Outcome::Ended { how, reason, turns } => {
                // Out of time while its model calls were held for a quota
                // reset: the provider's doing, not the agent's.
                let quota = (how == crate::runner::Ended::TimedOut)
                    .then(|| self.engine.gateway.quota_block())
                    .flatten();
                let setups = self.setup_failures.entry(task.clone()).or_default();
                if how == crate::runner::Ended::Setup {
                    *setups += 1;
                } else {
                    *setups = 0;
                }
                let (counts, reason) = match quota {
                    Some(b) => (
                        false,
                        format!(
                            "{reason} while provider {} was out of quota (not counted)",
                            b.provider
                        ),
                    ),
                    // The swarm's own failure: tried again at once, a few
                    // times, before it uses up an attempt.
                    None if how == crate::runner::Ended::Setup
                        && *setups <= crate::runner::SETUP_RETRIES =>
                    {
                        (
                            false,
                            format!("{reason} (the swarm's own failure: not counted)"),
                        )
                    }
                    None => (how.counts(), reason),
                };
                self.end_attempt(AttemptEnd::ended(
                    &task,
                    attempt,
                    how.recorded_as(),
                    reason.clone(),
                    turns,
                ))?;
                self.retry_or_fail(
                    &task,
                    attempt,
                    TaskState::Running,
                    counts,
                    reason,
                    Vec::new(),
                )?;
                self.release_workspace(&task, attempt, true);
            }
        }
        Ok(())
    }

    /// After a failed attempt: back to `ready` while attempts are left, else `failed`.
    pub(crate) fn retry_or_fail(
        &mut self,
        task: &TaskId,
        attempt: u32,
        from: TaskState,
        counted: bool,
        reason: String,
        conflicts: Vec<String>,
    ) -> Result<()> {
        let t = &self.tasks[task];
        let (to, used) = after_failure(t.attempts_counted, counted, self.limits.max_attempts);
        let reason = if to == TaskState::Failed {
            wording::no_attempts_left(&reason, attempt, self.limits.max_attempts)
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
                self.end_attempt(AttemptEnd::merged(&task, attempt, turns, task_commit))?;
                if self.set(
                    &task,
                    TaskUpdate {
                        from: vec![TaskState::Merging],
                        to: Some(TaskState::Done),
                        expect_attempt: Some(attempt),
                        merge_commit: Some(merge_commit),
                        last_error: Some(None),
                        review_comment: Some(None),
                        finished_ms: Some(now_ms()),
                        ..Default::default()
                    },
                )? {
                    self.observe_task_done(&task);
                }
                let record = self.tasks.get(&task).cloned();
                let workspace = self.workspaces.remove(&(task.clone(), attempt));
                match (record, workspace) {
                    (Some(record), Some(workspace)) => {
                        self.integration
                            .archive(record, workspace, self.runner.clone());
                    }
                    // It waited in review (its worktree went back then) or
                    // ran on a worker node: the archive is made from its commit.
                    (Some(record), None) => self.integration.archive_commit(record),
                    (None, _) => {}
                }
            }
            Ok(MergeOutcome::Conflict { paths }) => {
                let reason = wording::merge_conflict(&paths);
                self.end_attempt(AttemptEnd::ended(
                    &task,
                    attempt,
                    AttemptOutcome::Conflict,
                    reason.clone(),
                    turns,
                ))?;
                self.retry_or_fail(&task, attempt, TaskState::Merging, true, reason, paths)?;
                self.release_workspace(&task, attempt, false);
            }
            Err(e) => {
                let reason = format!("merge failed: {e}");
                self.end_attempt(AttemptEnd::ended(
                    &task,
                    attempt,
                    AttemptOutcome::Failed,
                    reason.clone(),
                    turns,
                ))?;
                self.retry_or_fail(&task, attempt, TaskState::Merging, true, reason, Vec::new())?;
                self.release_workspace(&task, attempt, false);
            }
        }
        Ok(())
    }

    /// The commit of `task`'s `attempt` is held on its review branch (or
    /// could not be): the task waits in `review`, its worktree goes back.
    fn on_held(
        &mut self,
        task: TaskId,
        attempt: u32,
        result: std::result::Result<(), String>,
    ) -> Result<()> {
        let Some((commit, summary)) = self.holding.remove(&(task.clone(), attempt)) else {
            return Ok(());
        };
        if let Err(e) = result {
            let reason = format!("cannot hold the commit for review: {e}");
            self.end_attempt(AttemptEnd::ended(
                &task,
                attempt,
                AttemptOutcome::Failed,
                reason.clone(),
                self.turns
                    .get(&(task.clone(), attempt))
                    .copied()
                    .unwrap_or(0),
            ))?;
            self.turns.remove(&(task.clone(), attempt));
            self.retry_or_fail(&task, attempt, TaskState::Running, true, reason, Vec::new())?;
            self.release_workspace(&task, attempt, false);
            return Ok(());
        }
        if self.set(
            &task,
            TaskUpdate {
                from: vec![TaskState::Running],
                to: Some(TaskState::Review),
                expect_attempt: Some(attempt),
                commit: Some(commit.clone()),
                summary: Some(summary),
                ..Default::default()
            },
        )? {
            // The attempt's work is over; its outcome waits for the decision
            // (`merged` or `rejected` then).
            let turns = self
                .turns
                .get(&(task.clone(), attempt))
                .copied()
                .unwrap_or(0);
            self.store().finish_attempt(
                &self.id,
                &AttemptEnd {
                    task: task.clone(),
                    attempt,
                    outcome: AttemptOutcome::Review,
                    reason: None,
                    turns,
                    commit: Some(commit.clone()),
                },
            )?;
            self.store().append_event(
                &self.id,
                Some(&task),
                "review_waiting",
                &serde_json::json!({"attempt": attempt, "commit": commit}),
            )?;
            self.engine.emit(
                &self.id,
                Some(&task),
                "review",
                wording::review_waiting(&self.id, &task),
            );
        }
        // Committed: the worktree is clean; the commit is on its branch.
        self.release_workspace(&task, attempt, false);
        Ok(())
    }

    /// Looks in the store for decisions on the tasks waiting in review:
    /// approved ones (now `merging`) go to the merge queue; rejected ones
    /// (now `ready`) start again with the comment.
    pub(crate) fn poll_reviews(&mut self) -> Result<()> {
        let waiting: Vec<TaskId> = self
            .order
            .iter()
            .filter(|id| self.tasks[*id].state == TaskState::Review)
            .cloned()
            .collect();
        for id in waiting {
            let Some(now) = self.store().task(&self.id, &id)? else {
                continue;
            };
            match now.state {
                TaskState::Review => continue,
                TaskState::Merging => {
                    self.engine.emit(
                        &self.id,
                        Some(&id),
                        "review",
                        format!("{id}: approved in review; merging"),
                    );
                    self.tasks.insert(id.clone(), now);
                    self.queue_approved(&id)?;
                }
                TaskState::Ready => {
                    self.attempt_started.remove(&(id.clone(), now.attempt));
                    self.turns.remove(&(id.clone(), now.attempt));
                    self.engine.emit(
                        &self.id,
                        Some(&id),
                        "review",
                        format!(
                            "{id}: rejected in review ({}); a new attempt follows",
                            now.review_comment.as_deref().unwrap_or("no comment")
                        ),
                    );
                    self.tasks.insert(id.clone(), now);
                }
                TaskState::Pending
                | TaskState::Running
                | TaskState::Done
                | TaskState::Failed
                | TaskState::Blocked
                | TaskState::Cancelled => {
                    self.tasks.insert(id.clone(), now);
                }
            }
        }
        Ok(())
    }

    /// Queues the merge of every task approved in review that no merge is
    /// queued for yet: at the start of a run (approved while no run was
    /// going, or before a crash).
    fn merge_approved(&mut self) -> Result<()> {
        let approved: Vec<TaskId> = self
            .order
            .iter()
            .filter(|id| self.tasks[*id].state == TaskState::Merging)
            .cloned()
            .collect();
        for id in approved {
            self.queue_approved(&id)?;
        }
        Ok(())
    }

    fn queue_approved(&mut self, id: &TaskId) -> Result<()> {
        let Some(t) = self.tasks.get(id) else {
            return Ok(());
        };
        let job = MergeJob {
            task: id.clone(),
            attempt: t.attempt,
            branch: swarm_git::review::branch(id.as_str(), t.attempt),
            message: format!("Merge task {id} (attempt {}): {}", t.attempt, t.title),
        };
        self.merging += 1;
        if let Err(e) = self.integration.merge(job) {
            self.merging -= 1;
            return Err(e);
        }
        Ok(())
    }

    /// Gives an attempt's workspace back to the runner. `dirty`: the attempt
    /// did not end in a commit, so it may have left files behind.
    fn release_workspace(&mut self, task: &TaskId, attempt: u32, dirty: bool) {
        if let Some(w) = self.workspaces.remove(&(task.clone(), attempt)) {
            self.runner.release(w, dirty);
        }
    }
}

/// How often a run looks in the store for review decisions.
const REVIEW_POLL: Duration = Duration::from_secs(1);

/// What a waiting line says without its figures (`free memory 812 MB <
/// 1024 MB` and `free memory 790 MB < 1024 MB` are one cause).
pub(crate) fn cause(line: &str) -> String {
    line.chars()
        .filter(|c| !c.is_ascii_digit() && *c != '.')
        .collect()
}

/// Records a change of why project `id`'s work waits: in the store (for
/// `status`), as a `waiting` event (for `logs`) and as progress. `None`
/// after a wait (`was_waiting`): work starts again.
pub(crate) fn record_waiting(
    engine: &Engine,
    id: &ProjectId,
    was_waiting: bool,
    waiting: Option<&str>,
) -> Result<()> {
    let line = match waiting {
        Some(w) => w.to_owned(),
        None if was_waiting => "starting work again".to_owned(),
        None => {
            return engine
                .store
                .set_project_waiting(id, None)
                .map_err(Into::into)
        }
    };
    engine.store.set_project_waiting(id, waiting)?;
    engine.store.append_event(
        id,
        None,
        "waiting",
        &serde_json::json!({"waiting": waiting, "message": line}),
    )?;
    engine.emit(id, None, "info", format!("project {id}: {line}"));
    Ok(())
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_or_never(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The ready/blocked rule: a pending task becomes `ready` when every
/// dependency is done, `blocked` (with the reason) when one failed, was
/// blocked or cancelled; an unknown dependency counts as failed.
pub(crate) fn ready_or_blocked(
    order: &[TaskId],
    tasks: &BTreeMap<TaskId, TaskRecord>,
) -> Vec<(TaskId, TaskState, Option<String>)> {
    let mut changes = Vec::new();
    for id in order {
        let Some(t) = tasks.get(id) else { continue };
        if t.state != TaskState::Pending {
            continue;
        }
        let states: Vec<(&TaskId, TaskState)> = t
            .depends_on
            .iter()
            .map(|d| {
                (
                    d,
                    tasks.get(d).map(|x| x.state).unwrap_or(TaskState::Failed),
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
    changes
}

/// The retry rule: after an attempt that did not merge, the task runs again
/// while fewer than `max_attempts` attempts counted; an attempt that does
/// not count (interrupted) never uses one up. Returns the next state and
/// the attempts counted so far.
pub(crate) fn after_failure(
    counted_before: u32,
    counts: bool,
    max_attempts: u32,
) -> (TaskState, u32) {
    let used = counted_before + u32::from(counts);
    let to = if used < max_attempts {
        TaskState::Ready
    } else {
        TaskState::Failed
    };
    (to, used)
}

#[cfg(test)]
mod tests;
