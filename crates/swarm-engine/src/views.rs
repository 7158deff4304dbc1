//! The operator's views of projects: what `GET /api/v1/projects…` answers
//! and what `agentswarm status` prints when no daemon is up, built by the
//! same functions. Surfaces (the server, the CLI) only translate them.

use crate::{Engine, LiveWorker, Result};
use swarm_config::Config;
use swarm_protocol::api;
use swarm_protocol::{AttemptOutcome, ProjectId, ProjectState, TaskId, TaskKind, TaskState};
use swarm_store::{EventRecord, ProjectRecord, Store, TaskRecord};

/// Whether a project's stored state says a process runs it now.
fn claims_a_runner(state: ProjectState) -> bool {
    match state {
        ProjectState::Planning | ProjectState::Running => true,
        ProjectState::Queued
        | ProjectState::Done
        | ProjectState::Failed
        | ProjectState::Cancelled
        | ProjectState::Interrupted
        | ProjectState::BudgetExhausted
        | ProjectState::Paused => false,
    }
}

/// Whether `p` says it is running but no process runs it (its runner was
/// killed or crashed: its lock is free). Such a project is shown as
/// `interrupted`, as recovery will record it on `resume`.
fn runner_gone(config: &Config, p: &ProjectRecord) -> bool {
    claims_a_runner(p.state) && !crate::runner_alive(config, &p.id)
}

/// `p` and its tasks as they are when its runner is gone: the project
/// `interrupted` with what to do, its running tasks waiting for their
/// next attempt — except those approved in review, which the next run
/// merges (they stay `merging`).
fn as_interrupted(store: &dyn Store, p: &mut ProjectRecord, tasks: &mut [TaskRecord]) {
    let approved: std::collections::HashSet<(String, u64)> =
        if tasks.iter().any(|t| t.state == TaskState::Merging) {
            store
                .events_of_kind(&p.id, "review_approved", 100_000)
                .unwrap_or_default()
                .into_iter()
                .filter_map(|e| Some((e.task_id?.to_string(), e.data["attempt"].as_u64()?)))
                .collect()
        } else {
            Default::default()
        };
    p.state = ProjectState::Interrupted;
    p.waiting = None;
    p.error = Some(format!(
        "the process that ran it is gone (killed or crashed); `agentswarm resume {}` carries it on",
        p.id
    ));
    for t in tasks {
        let approved = approved.contains(&(t.id.to_string(), u64::from(t.attempt)));
        if t.state == TaskState::Running || (t.state == TaskState::Merging && !approved) {
            t.state = TaskState::Ready;
        }
    }
}

impl Engine {
    /// Reviews of this engine's projects (docs/existing-repos.md, "Review").
    pub fn reviewer(&self) -> crate::review::Reviewer<'_> {
        crate::review::Reviewer::new(self.store.as_ref(), &self.config)
    }

    /// Every project, newest first (see [`project_list`]).
    pub fn project_list(&self) -> Result<api::ProjectList> {
        Ok(project_list(self.store.as_ref(), &self.config)?)
    }

    /// One project's summary; `Store(ProjectNotFound)` if there is none.
    pub fn project_summary(&self, id: &ProjectId) -> Result<api::ProjectSummary> {
        Ok(project_summary(self.store.as_ref(), &self.config, id)?)
    }

    /// One project with its tasks and the workers of this engine running now.
    pub fn project_detail(&self, id: &ProjectId) -> Result<api::ProjectDetail> {
        Ok(project_detail(
            self.store.as_ref(),
            &self.config,
            id,
            &self.live_workers(),
        )?)
    }

    /// One task of a project; `None` if the project has no such task,
    /// `Store(ProjectNotFound)` if there is no such project.
    pub fn task_view(&self, id: &ProjectId, task: &TaskId) -> Result<Option<api::Task>> {
        let gone = runner_gone(&self.config, &self.store.project(id)?);
        match self.task_record(id, task)? {
            Some(mut t) => {
                if gone {
                    as_interrupted(
                        self.store.as_ref(),
                        &mut self.store.project(id)?,
                        std::slice::from_mut(&mut t),
                    );
                }
                Ok(Some(task_view(
                    self.store.as_ref(),
                    &t,
                    &self.live_workers(),
                )?))
            }
            None => Ok(None),
        }
    }

    /// A task as the store has it (for its files: archive, transcripts);
    /// `None` if the project has no such task, `Store(ProjectNotFound)` if
    /// there is no such project.
    pub fn task_record(&self, id: &ProjectId, task: &TaskId) -> Result<Option<TaskRecord>> {
        self.store.project(id)?;
        Ok(self.store.task(id, task)?)
    }

    /// The events after `after` (at most `limit`), of one project or of all.
    pub fn events(
        &self,
        project: Option<&ProjectId>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<EventRecord>> {
        Ok(match project {
            Some(id) => self.store.events(id, after, limit)?,
            None => self.store.all_events(after, limit)?,
        })
    }

    /// The commands of one verify attempt with their results; `None` while
    /// it runs or when it was interrupted (no results were recorded).
    pub fn verify_commands(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
    ) -> Result<Option<Vec<api::CommandRun>>> {
        // Every verify run of the project is one event; there are a few.
        let found = self
            .store
            .events_of_kind(id, "verify", 10_000)?
            .into_iter()
            .find(|e| {
                e.task_id.as_ref() == Some(task)
                    && e.data["attempt"].as_u64() == Some(u64::from(attempt))
            });
        Ok(found.map(|e| {
            let empty = Vec::new();
            e.data["results"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|r| api::CommandRun {
                    command: r["command"].as_str().unwrap_or_default().to_owned(),
                    output: r["output"].as_str().unwrap_or_default().to_owned(),
                    turn: None,
                    passed: r["passed"].as_bool(),
                    duration_ms: r["duration_ms"].as_u64(),
                })
                .collect()
        }))
    }
}

pub fn project_url(id: &ProjectId) -> String {
    format!("/api/v1/projects/{id}")
}

pub fn summary(p: &ProjectRecord, tasks: &[TaskRecord]) -> api::ProjectSummary {
    api::ProjectSummary {
        id: p.id.to_string(),
        goal: p.goal.clone(),
        name: p.name.clone(),
        state: p.state,
        error: p.error.clone(),
        waiting: p.waiting.clone(),
        tasks_total: tasks.len(),
        tasks_done: tasks.iter().filter(|t| t.state == TaskState::Done).count(),
        created_ms: p.created_ms,
        updated_ms: p.updated_ms,
        delivery: p.delivery.clone(),
        delivery_url: p
            .delivery
            .as_ref()
            .map(|_| format!("{}/delivery", project_url(&p.id))),
    }
}

/// Every project, newest first, with the store's newest event id read
/// before them (a stream started after it misses nothing listed).
/// A project that says it runs but whose runner is gone is shown
/// `interrupted` (here and in the other views).
pub fn project_list(store: &dyn Store, config: &Config) -> swarm_store::Result<api::ProjectList> {
    let last_event_id = store.last_event_id(None)?;
    let mut projects = Vec::new();
    for mut p in store.list_projects()? {
        let mut tasks = store.tasks(&p.id)?;
        if runner_gone(config, &p) {
            as_interrupted(store, &mut p, &mut tasks);
        }
        projects.push(summary(&p, &tasks));
    }
    Ok(api::ProjectList {
        projects,
        last_event_id,
    })
}

pub fn project_summary(
    store: &dyn Store,
    config: &Config,
    id: &ProjectId,
) -> swarm_store::Result<api::ProjectSummary> {
    let mut p = store.project(id)?;
    let mut tasks = store.tasks(id)?;
    if runner_gone(config, &p) {
        as_interrupted(store, &mut p, &mut tasks);
    }
    Ok(summary(&p, &tasks))
}

/// One project with its tasks, attempts, usage and last verify run;
/// `live` names the workers running now (none outside the daemon).
pub fn project_detail(
    store: &dyn Store,
    config: &Config,
    id: &ProjectId,
    live: &[LiveWorker],
) -> swarm_store::Result<api::ProjectDetail> {
    // Read first: a stream started after it misses nothing of this view.
    let last_event_id = store.last_event_id(Some(id))?;
    let mut p = store.project(id)?;
    let mut records = store.tasks(id)?;
    if runner_gone(config, &p) {
        as_interrupted(store, &mut p, &mut records);
    }
    let mut tasks = Vec::with_capacity(records.len());
    for t in &records {
        tasks.push(task_view(store, t, live)?);
    }
    let usage: Vec<api::Usage> = store
        .usage(id)?
        .into_iter()
        .map(|u| api::Usage {
            role: u.role,
            provider: u.provider,
            model: u.model,
            calls: u.calls,
            failed_calls: u.failed_calls,
            retries: u.retries,
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
            cost_usd: u.cost_usd,
            unpriced_calls: u.unpriced_calls,
        })
        .collect();
    let totals = usage.iter().fold(api::UsageTotals::default(), |mut t, u| {
        t.calls += u.calls;
        t.input_tokens += u.input_tokens;
        t.output_tokens += u.output_tokens;
        t.cost_usd += u.cost_usd;
        t
    });
    Ok(api::ProjectDetail {
        project: summary(&p, &records),
        options: p.options.clone(),
        source: crate::source::of(&p),
        fix_round: p.fix_round,
        planner_calls: p.planner_calls,
        final_commit: p.final_commit.clone(),
        tasks,
        usage,
        totals,
        verify: last_verify(store, id)?,
        last_event_id,
    })
}

/// The newest `verify` event of the project.
fn last_verify(store: &dyn Store, id: &ProjectId) -> swarm_store::Result<Option<api::VerifyRun>> {
    let found = store.events_of_kind(id, "verify", 1)?.into_iter().next();
    Ok(found.map(|e| api::VerifyRun {
        task: e.task_id.map(|t| t.to_string()).unwrap_or_default(),
        attempt: e.data["attempt"].as_u64().unwrap_or(0) as u32,
        passed: e.data["passed"].as_bool().unwrap_or(false),
        results: e.data["results"].as_array().cloned().unwrap_or_default(),
    }))
}

pub fn task_view(
    store: &dyn Store,
    t: &TaskRecord,
    live: &[LiveWorker],
) -> swarm_store::Result<api::Task> {
    let base = format!("{}/tasks/{}", project_url(&t.project_id), t.id);
    let attempts = store
        .attempts(&t.project_id, &t.id)?
        .into_iter()
        .map(|a| api::Attempt {
            attempt: a.attempt,
            // A task shown waiting has no attempt running (its runner is gone).
            outcome: match (a.outcome, t.state) {
                (AttemptOutcome::Running, TaskState::Ready) => AttemptOutcome::Interrupted,
                (o, _) => o,
            },
            reason: a.reason,
            turns: a.turns,
            commit: a.commit,
            started_ms: a.started_ms,
            ended_ms: a.ended_ms,
            transcript_url: (t.kind == TaskKind::Code && a.outcome != AttemptOutcome::Running)
                .then(|| format!("{base}/attempts/{}/transcript", a.attempt)),
            output_url: format!("{base}/attempts/{}/output", a.attempt),
        })
        .collect();
    let worker = live
        .iter()
        .find(|w| w.project == t.project_id && w.task == t.id)
        .map(|w| api::Worker {
            attempt: w.attempt,
            pid: w.pid,
            started_ms: w.started_ms,
            turns: w.turns,
            last_tool: w.last_tool.clone(),
        });
    // A task waiting for its next attempt (ready, pending) has no duration.
    let end = match t.state {
        TaskState::Running | TaskState::Review | TaskState::Merging => Some(swarm_store::now_ms()),
        TaskState::Done | TaskState::Failed | TaskState::Blocked | TaskState::Cancelled => {
            t.finished_ms
        }
        TaskState::Pending | TaskState::Ready => None,
    };
    let duration_ms = t
        .started_ms
        .zip(end)
        .map(|(start, end)| (end - start).max(0));
    Ok(api::Task {
        id: t.id.to_string(),
        title: t.title.clone(),
        description: t.description.clone(),
        kind: t.kind.as_str().to_owned(),
        depends_on: t.depends_on.iter().map(|d| d.to_string()).collect(),
        state: t.state,
        attempt: t.attempt,
        attempts_counted: t.attempts_counted,
        fix_round: t.fix_round,
        last_error: t.last_error.clone(),
        commit: t.commit.clone(),
        merge_commit: t.merge_commit.clone(),
        summary: t.summary.clone(),
        changed_files: t.changed_files.clone(),
        started_ms: t.started_ms,
        finished_ms: t.finished_ms,
        duration_ms,
        worker,
        attempts,
        archive_url: (t.state == TaskState::Done && t.kind == TaskKind::Code)
            .then(|| format!("{base}/archive")),
    })
}
