//! The verify step and the fix rounds. Verify runs the plan's commands,
//! the engine itself, in a clean (detached) checkout of `main`, each with a
//! timeout; it passes when every command exits 0. When it fails, the
//! planner is asked for fix tasks (at most `max_fix_rounds` times), and
//! verify runs again once they merged.

use crate::prompts::{self, CommandResult};
use crate::scheduler::{Integration, Scheduler};
use crate::{new_tasks, wording, Result};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use swarm_config::ModelRole;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_exec::Sandbox;
use swarm_protocol::AttemptOutcome;
use swarm_protocol::{Plan, TaskId, TaskState};
use swarm_store::{now_ms, AttemptEnd, TaskUpdate};
use tokio_util::sync::CancellationToken;

/// How each verify command runs.
pub struct Limits<'a> {
    pub timeout: Duration,
    /// Bytes of output kept (head and tail).
    pub output_cap: usize,
    /// The same confinement as the workers' commands, on the checkout.
    pub sandbox: &'a SandboxPolicy,
}

/// Runs blocking: call it through `spawn_blocking`. The commands run inside
/// `enclosure` (the same memory limit as a worker), which the engine kills
/// when it stops, and in the project's sandbox; no command starts after
/// `cancel` fired.
pub fn run_verify(
    repo: &swarm_git::Repo,
    checkout: &Path,
    commands: &[String],
    limits: Limits<'_>,
    enclosure: Option<Arc<swarm_exec::Enclosure>>,
    cancel: &CancellationToken,
) -> std::result::Result<Vec<CommandResult>, String> {
    let Limits {
        timeout,
        output_cap,
        sandbox,
    } = limits;
    if checkout.exists() {
        let _ = repo.remove_worktree(checkout);
    }
    repo.add_detached_worktree(checkout)
        .map_err(|e| format!("cannot check out main for verify: {e}"))?;
    let sandbox = match Sandbox::prepare(sandbox, checkout) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = repo.remove_worktree(checkout);
            return Err(format!("the verify commands were not run: {e}"));
        }
    };
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        if cancel.is_cancelled() {
            break;
        }
        let opts = swarm_exec::ShellOptions {
            cwd: checkout.to_owned(),
            env: Vec::new(),
            timeout,
            output_cap,
            enclosure: enclosure.clone(),
            sandbox: Some(sandbox.clone()),
        };
        let r = match swarm_exec::run_shell(command, &opts) {
            Ok(out) => CommandResult {
                command: command.clone(),
                exit: if out.timed_out {
                    format!("timed out after {} s", timeout.as_secs())
                } else {
                    out.exit.to_string()
                },
                passed: out.exit.success() && !out.timed_out,
                timed_out: out.timed_out,
                duration_ms: out.duration.as_millis() as u64,
                output: out.output,
            },
            Err(e) => CommandResult {
                command: command.clone(),
                exit: format!("could not run: {e}"),
                passed: false,
                timed_out: false,
                duration_ms: 0,
                output: String::new(),
            },
        };
        results.push(r);
    }
    // Nothing a command started may still run while the checkout goes (a
    // `setsid` daemon could swap a directory for a symlink under the
    // removal): the enclosure's processes, then what the supervisor adopted.
    if let Some(e) = &enclosure {
        e.signal_all(nix::sys::signal::Signal::SIGKILL);
    }
    swarm_exec::reap_orphans();
    if let Err(e) = repo.remove_worktree(checkout) {
        tracing::warn!(error = %e, "could not remove the verify checkout");
    }
    Ok(results)
}

impl<I: Integration> Scheduler<'_, I> {
    /// The verify task's attempt ended: done when every command passed;
    /// otherwise a fix round when one is left, else the verify task fails.
    pub(crate) async fn on_verified(
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
                self.end_attempt(AttemptEnd::ended(
                    &verify_id,
                    attempt,
                    AttemptOutcome::Failed,
                    reason.clone(),
                    0,
                ))?;
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
                wording::verify_result(r),
            );
        }
        self.last_verify = Some(results.clone());
        if passed {
            self.end_attempt(AttemptEnd::merged(&verify_id, attempt, 0, None))?;
            let head = self.integration.main_head();
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
        let reason = wording::verify_failed(&results);
        self.end_attempt(AttemptEnd::ended(
            &verify_id,
            attempt,
            AttemptOutcome::Failed,
            reason.clone(),
            0,
        ))?;
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
        let cancel = self.cancel.clone();
        let (engine, id) = (self.engine, self.id.clone());
        let outcome = tokio::select! {
            o = self.integration.plan_fixes(request, &existing, self.limits.max_tasks) => Some(o),
            _ = cancel.cancelled() => None,
            Err(e) = crate::run::note_quota_holds(engine, &id, ModelRole::Fixer) => return Err(e),
        };
        // What the scheduler last recorded, in place of a quota note.
        self.store().set_project_waiting(&self.id, self.waiting())?;
        let Some(outcome) = outcome else {
            self.set(
                &verify_id,
                TaskUpdate {
                    from: vec![TaskState::Running],
                    to: Some(TaskState::Ready),
                    last_error: Some(Some("interrupted while planning fixes".into())),
                    ..Default::default()
                },
            )?;
            return Ok(());
        };
        match outcome {
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
}

/// Fix tasks get fresh ids (`f<round>-<id>`); their dependencies on each
/// other are renamed to match, dependencies on existing tasks are kept.
pub(crate) fn fix_tasks(
    plan: &Plan,
    round: u32,
    existing: &HashSet<TaskId>,
) -> Vec<swarm_store::NewTask> {
    prefixed_tasks(plan, &format!("f{round}"), round, existing)
}

/// `plan`'s tasks with fresh ids `<prefix>-<id>` (unique among `existing`),
/// their dependencies on each other renamed to match, and `fix_round` as
/// their fix round.
pub(crate) fn prefixed_tasks(
    plan: &Plan,
    prefix: &str,
    round: u32,
    existing: &HashSet<TaskId>,
) -> Vec<swarm_store::NewTask> {
    let mut taken: HashSet<TaskId> = existing.clone();
    let mut rename: BTreeMap<TaskId, TaskId> = BTreeMap::new();
    for t in &plan.tasks {
        let base: String = format!("{prefix}-{}", t.id).chars().take(60).collect();
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
    use swarm_protocol::{PlanTask, TaskKind};

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
                    agent: None,
                    requires: vec![],
                },
                PlanTask {
                    id: "b".into(),
                    title: "B".into(),
                    description: String::new(),
                    depends_on: vec!["a".into()],
                    files: vec![],
                    kind: TaskKind::Code,
                    commands: vec![],
                    agent: None,
                    requires: vec![],
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
