//! What an operator does to projects from outside a run (the HTTP API of
//! `serve`, the CLI): submit with options, cancel, resume, and where a
//! project's files are.

use crate::{Engine, Error, Result};
use std::path::PathBuf;
use swarm_config::RunLimits;
use swarm_protocol::api::ProjectOptions;
use swarm_protocol::{Plan, ProjectId, ProjectState, TaskId};

/// `limits` with the options a client gave laid over them.
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
    limits
}

impl Engine {
    /// Queues a project with the configured limits and `options` over them;
    /// `serve` picks it up. An invalid plan or option is an error listing
    /// every problem.
    pub fn submit(
        &self,
        goal: &str,
        plan: Option<Plan>,
        options: &ProjectOptions,
    ) -> Result<ProjectId> {
        let problems = options.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidOptions(problems));
        }
        let limits = apply_options(self.config.run.clone(), options);
        let lock =
            crate::create_project_with(&self.config, self.store.as_ref(), goal, plan, limits)?;
        Ok(lock.id().clone())
    }

    /// Makes a stopped project (failed, interrupted, out of budget, paused)
    /// runnable again, with `options` replacing its stored limits: failed
    /// and blocked tasks get fresh attempts, and the project becomes
    /// `interrupted`, which the daemon carries on within a second. Finished
    /// tasks are never run again. `Busy` while another process runs it;
    /// `NotResumable` when it is done, cancelled or still running.
    pub fn resume_project(&self, id: &ProjectId, options: &ProjectOptions) -> Result<()> {
        let problems = options.problems();
        if !problems.is_empty() {
            return Err(Error::InvalidOptions(problems));
        }
        // Known before its lock file is made (the id comes from a client).
        self.store.project(id)?;
        let lock = self.lock(id)?;
        // Read under the lock: a run may have ended in between.
        let project = self.store.project(id)?;
        let state = project.state;
        match state {
            ProjectState::Done
            | ProjectState::Cancelled
            | ProjectState::Queued
            | ProjectState::Planning
            | ProjectState::Running
            | ProjectState::Verifying => return Err(Error::NotResumable(id.clone(), state)),
            ProjectState::Failed
            | ProjectState::Interrupted
            | ProjectState::BudgetExhausted
            | ProjectState::Paused => {}
        }
        let before = self.limits_of(&project.options);
        self.replace_limits(id, &before, &apply_options(before.clone(), options))?;
        let reopened = match state {
            ProjectState::Failed => crate::recovery::reopen_failed(self, id)?,
            ProjectState::BudgetExhausted | ProjectState::Paused => {
                self.store
                    .set_project_state(id, &[state], ProjectState::Interrupted, None)?
            }
            _ => true,
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
        self.config
            .project_dir(id.as_str())
            .join("transcripts")
            .join(format!("{task}-{attempt}.json"))
    }

    /// `OUTPUTS_DIR/<id>/tasks/<task>.tar.gz`, written when the task merges.
    pub fn task_archive_path(&self, id: &ProjectId, task: &TaskId) -> PathBuf {
        crate::packager::project_outputs(&self.config.outputs_dir, id)
            .join("tasks")
            .join(format!("{task}.tar.gz"))
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
}
