//! Recovery after a crash or a stop, and reopening a failed project.
//!
//! On start, `main` is repaired if a merge was cut short, stale worktrees
//! and task branches are removed, and every task left `running` or
//! `merging` is looked up in git: a commit on `main` whose trailers match
//! its current attempt means it merged (`done`); otherwise it goes back to
//! `ready` and the attempt is recorded `interrupted` (not counted).

use crate::scheduler::{Integration, Scheduler};
use crate::{Engine, Error, Result};
use std::path::PathBuf;
use swarm_git::{Repo, TaskCommit};
use swarm_protocol::{AttemptOutcome, ProjectId, ProjectState, TaskState};
use swarm_store::{now_ms, AttemptEnd, TaskRecord, TaskUpdate};

/// What [`clean_up`] found.
pub(crate) struct CleanedUp {
    /// The task commits on `main` (when asked for).
    pub commits: Vec<TaskCommit>,
    /// The review branches (`review/<task>/<attempt>`): commits waiting
    /// for a person, or approved and not merged yet.
    pub held: std::collections::HashSet<String>,
}

/// Repairs `main`, removes every worktree under `worktrees` and every
/// `task/*` branch (no worker of the project runs: its lock is held), and
/// returns the task commits on `main` when `need_log`, and the review
/// branches (which it keeps).
pub(crate) async fn clean_up(repo: Repo, worktrees: PathBuf, need_log: bool) -> Result<CleanedUp> {
    tokio::task::spawn_blocking(move || -> Result<CleanedUp> {
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
        // Every task branch is either merged or an abandoned attempt.
        repo.delete_branches("task/")?;
        let held = swarm_git::review::list(repo.root())?.into_iter().collect();
        let commits = if need_log {
            repo.task_commits()?
        } else {
            Vec::new()
        };
        Ok(CleanedUp { commits, held })
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
}

impl<I: Integration> Scheduler<'_, I> {
    /// The tasks a stopped run left `running` or `merging`.
    pub(crate) fn stale(&self) -> Vec<TaskRecord> {
        self.tasks
            .values()
            .filter(|t| matches!(t.state, TaskState::Running | TaskState::Merging))
            .cloned()
            .collect()
    }

    /// Settles each stale task by what `main` holds: its current attempt's
    /// commit merged → `done`; approved in review and held on its review
    /// branch (`held`) → stays `merging` (the run merges it); otherwise →
    /// `ready`, the attempt `interrupted`.
    pub(crate) fn reconcile(
        &mut self,
        stale: Vec<TaskRecord>,
        commits: &[TaskCommit],
        held: &std::collections::HashSet<String>,
    ) -> Result<()> {
        for t in stale {
            let merged = commits
                .iter()
                .find(|c| c.task == t.id.as_str() && c.attempt == t.attempt);
            let approved = t.state == TaskState::Merging
                && held.contains(&swarm_git::review::branch(t.id.as_str(), t.attempt));
            if merged.is_none() && approved {
                continue;
            }
            if let Some(c) = merged {
                self.end_attempt(AttemptEnd::merged(&t.id, t.attempt, 0, Some(c.sha.clone())))?;
                self.set(
                    &t.id,
                    TaskUpdate {
                        from: vec![TaskState::Running, TaskState::Merging],
                        to: Some(TaskState::Done),
                        commit: Some(c.sha.clone()),
                        review_comment: Some(None),
                        finished_ms: Some(now_ms()),
                        ..Default::default()
                    },
                )?;
            } else {
                let reason = "interrupted: the supervisor stopped during this attempt";
                self.end_attempt(AttemptEnd::ended(
                    &t.id,
                    t.attempt,
                    AttemptOutcome::Interrupted,
                    reason,
                    0,
                ))?;
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
}

/// The review branches no task needs any more (its decision was carried
/// out, or the run stopped between the merge and the branch's removal).
pub(crate) fn stale_review_branches(
    tasks: &std::collections::BTreeMap<swarm_protocol::TaskId, TaskRecord>,
    held: &std::collections::HashSet<String>,
) -> Vec<String> {
    let needed: std::collections::HashSet<String> = tasks
        .values()
        .filter(|t| matches!(t.state, TaskState::Review | TaskState::Merging))
        .map(|t| swarm_git::review::branch(t.id.as_str(), t.attempt))
        .collect();
    let mut stale: Vec<String> = held.difference(&needed).cloned().collect();
    stale.sort();
    stale
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
            | TaskState::Review
            | TaskState::Merging
            | TaskState::Done
            | TaskState::Cancelled => continue,
        };
        store.update_task(id, &t.id, &update)?;
    }
    Ok(store.set_project_state(id, &[ProjectState::Failed], ProjectState::Interrupted, None)?)
}

/// Writes the archive of every task in `done` (done, with a commit) that
/// has none in `outputs`, or one cut short (task archives are not synced one
/// by one: a crash of the machine can leave one empty or partly written),
/// from a detached checkout of its commit under
/// `scratch`. Returns how many were written; a failure is logged and the
/// next task tried (an archive is a convenience, `main` has the work).
pub(crate) fn rebuild_archives(
    repo: &swarm_git::Repo,
    scratch: &std::path::Path,
    outputs: &std::path::Path,
    project: &ProjectId,
    done: &[TaskRecord],
    redactor: &swarm_llm::redact::Redactor,
) -> usize {
    let mut written = 0;
    for t in done {
        let Some(commit) = t.commit.as_deref() else {
            continue;
        };
        if swarm_package::is_complete_archive(&crate::packager::task_archive_path(outputs, &t.id)) {
            continue;
        }
        let checkout = scratch.join(format!("archive-{}", t.id));
        let result = (|| -> std::result::Result<(), String> {
            if checkout.exists() {
                repo.remove_worktree(&checkout).map_err(|e| e.to_string())?;
            }
            std::fs::create_dir_all(scratch).map_err(|e| e.to_string())?;
            repo.add_detached_worktree_at(&checkout, commit)
                .map_err(|e| e.to_string())?;
            let files: Vec<String> = repo
                .changed_files(commit)
                .map_err(|e| e.to_string())?
                .into_iter()
                .map(|c| c.path)
                .collect();
            crate::packager::task_archive(outputs, project, t, &checkout, &files, redactor)
                .map(drop)
        })();
        if let Err(e) = repo.remove_worktree(&checkout) {
            tracing::warn!(task = %t.id, error = %e, "cannot remove the archive checkout");
        }
        match result {
            Ok(()) => written += 1,
            Err(e) => tracing::warn!(task = %t.id, error = %e, "cannot rebuild the task archive"),
        }
    }
    written
}
