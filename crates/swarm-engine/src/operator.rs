//! What an operator does to projects from outside a run (the HTTP API of
//! `serve`, the CLI): submit with options, cancel, resume with new limits,
//! and where a project's files are. The views are in `views.rs`.

use crate::{Engine, Error, Result};
use std::path::PathBuf;
use swarm_config::{Config, RunLimits, Source};
use swarm_protocol::api::ProjectOptions;
use swarm_protocol::{Plan, ProjectId, ProjectState, TaskId};
use swarm_store::Store;

/// `<data dir>/projects/<id>/transcripts/`.
pub(crate) fn transcripts_dir(config: &Config, id: &ProjectId) -> PathBuf {
    config.project_dir(id.as_str()).join("transcripts")
}

/// An attempt's transcript in `dir` (see [`transcripts_dir`]).
pub(crate) fn transcript_file(dir: &std::path::Path, task: &TaskId, attempt: u32) -> PathBuf {
    dir.join(format!("{task}-{attempt}.json"))
}

/// `limits` with the options a client gave laid over them. The one place
/// where limits are overridden: options of the API, of `submit`, and the
/// flags of `resume` ([`flag_options`]) all go through it.
pub fn apply_options(mut limits: RunLimits, o: &ProjectOptions) -> RunLimits {
    if let Some(v) = o.max_tasks {
        limits.max_tasks = v;
    }
    if let Some(v) = o.max_attempts {
        limits.max_attempts = v;
    }
    if let Some(v) = o.max_turns {
        limits.max_turns = v;
    }
    if let Some(v) = o.max_fix_rounds {
        limits.max_fix_rounds = v;
    }
    if o.max_cost_usd.is_some() {
        limits.max_cost_usd = o.max_cost_usd;
    }
    if o.max_tokens.is_some() {
        limits.max_tokens = o.max_tokens;
    }
    if let Some(v) = o.allow_network {
        limits.allow_network = v;
    }
    if o.agent.is_some() {
        limits.agent = o.agent.clone();
    }
    if let Some(v) = o.review {
        limits.review = v;
    }
    limits
}

/// What [`cancel_project`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The project was cancelled; it was in state `was`. Its runner stops
    /// its workers within a second.
    Cancelled { was: ProjectState },
    /// The project had already ended (`cancelled` included): nothing changed.
    AlreadyEnded(ProjectState),
}

/// Cancels a project that has not ended: it and its unfinished tasks
/// become `cancelled` (one conditional change in the store), which its
/// runner, in this process or another, sees and stops for. Needs no
/// engine: `agentswarm cancel` without a daemon uses the store alone.
pub fn cancel_project(store: &dyn Store, id: &ProjectId) -> Result<CancelOutcome> {
    let before = store.project(id)?.state;
    if store.cancel_project(id)? {
        Ok(CancelOutcome::Cancelled { was: before })
    } else {
        Ok(CancelOutcome::AlreadyEnded(before))
    }
}

/// The limits given as command-line flags, as options (`resume
/// --max-cost-usd 5` replaces the stored budget, nothing else).
pub fn flag_options(config: &Config) -> ProjectOptions {
    let flag = |key: &str| matches!(config.sources.get(key), Some(Source::Flag(_)));
    let run = &config.run;
    ProjectOptions {
        max_tasks: flag("run.max_tasks").then_some(run.max_tasks),
        max_attempts: flag("run.max_attempts").then_some(run.max_attempts),
        max_turns: flag("run.max_turns").then_some(run.max_turns),
        max_fix_rounds: flag("run.max_fix_rounds").then_some(run.max_fix_rounds),
        max_cost_usd: run.max_cost_usd.filter(|_| flag("run.max_cost_usd")),
        max_tokens: run.max_tokens.filter(|_| flag("run.max_tokens")),
        allow_network: flag("run.allow_network").then_some(run.allow_network),
        agent: run.agent.clone().filter(|_| flag("run.agent")),
        review: flag("run.review").then_some(run.review),
    }
}

impl Engine {
    /// What is wrong with `options`, the agent named included.
    fn option_problems(&self, options: &ProjectOptions) -> Vec<String> {
        let mut problems = options.problems();
        if let Some(name) = &options.agent {
            if !self.config.agents.contains_key(name) {
                problems.push(format!(
                    "agent {name:?} is not configured on this server; configured: {} (docs/agents.md)",
                    self.config.agents.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        problems
    }

    /// The project's stored limits (the configured ones if they cannot be read).
    pub(crate) fn limits_of(&self, options: &serde_json::Value) -> RunLimits {
        serde_json::from_value(options.clone()).unwrap_or_else(|_| self.config.run.clone())
    }

    /// `resume` with limits on the command line: they replace the project's
    /// stored ones (e.g. a higher budget after `budget_exhausted`).
    pub fn update_limits(&self, id: &ProjectId, stored: &serde_json::Value) -> Result<()> {
        let before = self.limits_of(stored);
        let after = apply_options(before.clone(), &flag_options(&self.config));
        self.replace_limits(id, &before, &after)
    }

    /// Stores `after` as the project's limits, with a `limits` event, when
    /// they differ from `before`.
    fn replace_limits(&self, id: &ProjectId, before: &RunLimits, after: &RunLimits) -> Result<()> {
        if after != before {
            if after.max_cost_usd.is_some() && after.max_cost_usd != before.max_cost_usd {
                if let Some(why) = crate::budget_problem(&self.config, after) {
                    return Err(Error::UnpricedBudget(why));
                }
            }
            let options = serde_json::to_value(after).map_err(|e| Error::Other(e.to_string()))?;
            self.store.set_project_options(id, &options)?;
            self.store.append_event(id, None, "limits", &options)?;
        }
        Ok(())
    }

    /// See [`cancel_project`].
    pub fn cancel_project(&self, id: &ProjectId) -> Result<CancelOutcome> {
        cancel_project(self.store.as_ref(), id)
    }

    /// Queues a project with the configured limits and `options` over them;
    /// `serve` picks it up. An invalid plan or option is an error listing
    /// every problem.
    pub fn submit(
        &self,
        goal: &str,
        plan: Option<Plan>,
        options: &ProjectOptions,
    ) -> Result<ProjectId> {
        self.submit_on(goal, plan, options, None)
    }

    /// [`Engine::submit`] on an existing repository (`source`).
    pub fn submit_on(
        &self,
        goal: &str,
        plan: Option<Plan>,
        options: &ProjectOptions,
        source: Option<&crate::source::SourceRequest>,
    ) -> Result<ProjectId> {
        let problems = self.option_problems(options);
        if !problems.is_empty() {
            return Err(Error::InvalidOptions(problems));
        }
        let limits = apply_options(self.config.run.clone(), options);
        let lock = crate::create_project_from(
            &self.config,
            self.store.as_ref(),
            goal,
            plan,
            limits,
            source,
        )?;
        Ok(lock.id().clone())
    }

    /// Makes a stopped project (failed, interrupted, out of budget, paused)
    /// runnable again, with `options` replacing its stored limits: failed
    /// and blocked tasks get fresh attempts, and the project becomes
    /// `interrupted`, which the daemon carries on within a second. Finished
    /// tasks are never run again. `Busy` while another process runs it;
    /// `NotResumable` when it is done, cancelled or still running.
    pub fn resume_project(&self, id: &ProjectId, options: &ProjectOptions) -> Result<()> {
        let problems = self.option_problems(options);
        if !problems.is_empty() {
            return Err(Error::InvalidOptions(problems));
        }
        // Known before its lock file is made (the id comes from a client).
        self.store.project(id)?;
        let lock = self.lock(id)?;
        // Read under the lock: a run may have ended in between.
        let project = self.store.project(id)?;
        let state = project.state;
        if !state.is_resumable() {
            return Err(Error::NotResumable(id.clone(), state));
        }
        let before = self.limits_of(&project.options);
        self.replace_limits(id, &before, &apply_options(before.clone(), options))?;
        let reopened = match state {
            ProjectState::Failed => crate::recovery::reopen_failed(self, id)?,
            ProjectState::BudgetExhausted | ProjectState::Paused => {
                self.store
                    .set_project_state(id, &[state], ProjectState::Interrupted, None)?
            }
            ProjectState::Interrupted => true,
            ProjectState::Queued
            | ProjectState::Planning
            | ProjectState::Running
            | ProjectState::Done
            | ProjectState::Cancelled => return Err(Error::NotResumable(id.clone(), state)),
        };
        if !reopened {
            // Cancelled meanwhile (a cancel does not need the lock).
            let now = self.store.project(id)?.state;
            return Err(Error::NotResumable(id.clone(), now));
        }
        drop(lock);
        Ok(())
    }

    /// `<data dir>/projects/<id>/transcripts/<task>-<attempt>.json`, written
    /// when the attempt ends.
    pub fn transcript_path(&self, id: &ProjectId, task: &TaskId, attempt: u32) -> PathBuf {
        transcript_file(&transcripts_dir(&self.config, id), task, attempt)
    }

    /// `OUTPUTS_DIR/<id>/tasks/<task>.tar.gz`, written when the task merges.
    pub fn task_archive_path(&self, id: &ProjectId, task: &TaskId) -> PathBuf {
        let outputs = crate::packager::project_outputs(&self.config.outputs_dir, id);
        crate::packager::task_archive_path(&outputs, task)
    }

    /// `OUTPUTS_DIR/<id>/manifest.json`.
    pub fn manifest_path(&self, id: &ProjectId) -> PathBuf {
        crate::packager::project_outputs(&self.config.outputs_dir, id).join("manifest.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_replace_only_what_they_name() {
        let base = RunLimits::default();
        let o = ProjectOptions {
            max_cost_usd: Some(2.5),
            allow_network: Some(true),
            ..Default::default()
        };
        let l = apply_options(base.clone(), &o);
        assert_eq!(l.max_cost_usd, Some(2.5));
        assert!(l.allow_network);
        assert_eq!(l.max_attempts, base.max_attempts);
        assert_eq!(l.max_tasks, base.max_tasks);
        assert_eq!(
            apply_options(base.clone(), &ProjectOptions::default()),
            base
        );
    }

    #[test]
    fn only_the_limits_given_as_flags_replace_stored_ones() {
        let flags = swarm_config::Overrides {
            max_cost_usd: Some(5.0),
            max_attempts: Some(7),
            ..Default::default()
        };
        let config = Config::resolve(None, &|_: &str| None, &flags).unwrap();
        let o = flag_options(&config);
        assert_eq!(
            o,
            ProjectOptions {
                max_cost_usd: Some(5.0),
                max_attempts: Some(7),
                ..Default::default()
            }
        );
        // The stored limits keep what no flag named.
        let stored = RunLimits {
            max_turns: 3,
            max_fix_rounds: 0,
            ..RunLimits::default()
        };
        let after = apply_options(stored.clone(), &o);
        assert_eq!((after.max_turns, after.max_fix_rounds), (3, 0));
        assert_eq!((after.max_attempts, after.max_cost_usd), (7, Some(5.0)));
    }

    #[test]
    fn the_review_mode_is_kept_unless_a_flag_names_one() {
        let stored = RunLimits {
            review: swarm_protocol::ReviewMode::Tasks,
            ..RunLimits::default()
        };
        // A JSON round trip, as the store keeps it; an old project without
        // the key reads as `off`.
        let back: RunLimits =
            serde_json::from_value(serde_json::to_value(&stored).unwrap()).unwrap();
        assert_eq!(back.review, swarm_protocol::ReviewMode::Tasks);
        let mut old = serde_json::to_value(RunLimits::default()).unwrap();
        old.as_object_mut().unwrap().remove("review");
        let old: RunLimits = serde_json::from_value(old).unwrap();
        assert_eq!(old.review, swarm_protocol::ReviewMode::Off);

        let none = Config::resolve(None, &|_: &str| None, &Default::default()).unwrap();
        let kept = apply_options(stored.clone(), &flag_options(&none));
        assert_eq!(kept.review, swarm_protocol::ReviewMode::Tasks);
        let flags = swarm_config::Overrides {
            review: Some(swarm_protocol::ReviewMode::Off),
            ..Default::default()
        };
        let off = Config::resolve(None, &|_: &str| None, &flags).unwrap();
        let changed = apply_options(stored, &flag_options(&off));
        assert_eq!(changed.review, swarm_protocol::ReviewMode::Off);
        // The environment sets it too; a bad value says what is taken.
        let env = |k: &str| (k == "AGENTSWARM_REVIEW").then(|| "sometimes".to_owned());
        let e = Config::resolve(None, &env, &Default::default()).unwrap_err();
        assert!(e.to_string().contains("off, tasks or delivery"), "{e}");
    }

    #[test]
    fn cancel_changes_a_live_project_once() {
        let store = swarm_store::SqliteStore::in_memory().unwrap();
        let id = ProjectId::new("p1");
        store
            .create_project(&swarm_store::NewProject {
                id: id.clone(),
                goal: "a goal".into(),
                options: serde_json::json!({}),
                source: None,
            })
            .unwrap();
        assert_eq!(
            cancel_project(&store, &id).unwrap(),
            CancelOutcome::Cancelled {
                was: ProjectState::Queued
            }
        );
        assert_eq!(store.project(&id).unwrap().state, ProjectState::Cancelled);
        assert_eq!(
            cancel_project(&store, &id).unwrap(),
            CancelOutcome::AlreadyEnded(ProjectState::Cancelled)
        );
        assert!(matches!(
            cancel_project(&store, &ProjectId::new("nope")),
            Err(Error::Store(swarm_store::Error::ProjectNotFound(_)))
        ));
    }
}
