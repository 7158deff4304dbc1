//! Review before merge (docs/existing-repos.md, "Review"): what waits for
//! a person, the diff they read, and their decision. The decision is one
//! durable change in the store ([`swarm_store::Store::decide_review`]),
//! made here by whichever surface the person used (the CLI on the store,
//! or the daemon's API); the run that holds the project sees it within a
//! second (`Scheduler::poll_reviews`), and a run started later finds it
//! (an approved task is `merging` with its review branch, which recovery
//! keeps). These functions need no engine: `agentswarm review` without a
//! daemon calls them with the store and the configuration.

use crate::{Error, Result};
use std::path::PathBuf;
use swarm_config::Config;
use swarm_git::review as git_review;
use swarm_protocol::api;
use swarm_protocol::{ProjectId, ProjectState, ReviewMode, TaskId, TaskState};
use swarm_store::{ReviewDecision, Store, TaskRecord};

/// The longest reviewer's comment (it goes into a prompt).
pub const MAX_COMMENT_CHARS: usize = 8000;

fn repo_root(config: &Config, id: &ProjectId) -> PathBuf {
    config.project_dir(id.as_str()).join("repo")
}

fn mode_of(config: &Config, options: &serde_json::Value) -> ReviewMode {
    serde_json::from_value::<swarm_config::RunLimits>(options.clone())
        .map(|l| l.review)
        .unwrap_or(config.run.review)
}

/// The delivery of `p` waits for a person (`review = "delivery"`): its
/// run ended and the branch was held.
fn delivery_held(p: &swarm_store::ProjectRecord) -> bool {
    matches!(p.state, ProjectState::Done | ProjectState::Failed)
        && crate::source::of(p).is_some_and(|s| s.held)
}

fn diff_url(id: &ProjectId, task: &TaskId) -> String {
    format!("{}/tasks/{task}/review", crate::views::project_url(id))
}

/// The task `task` of project `id`, or an error that says which exist.
fn find(store: &dyn Store, id: &ProjectId, task: &TaskId) -> Result<TaskRecord> {
    store.project(id)?;
    store
        .task(id, task)?
        .ok_or_else(|| Error::NoSuchTask(id.clone(), task.clone()))
}

/// The task must wait in review now.
fn in_review(id: &ProjectId, t: &TaskRecord) -> Result<()> {
    if t.state == TaskState::Review {
        return Ok(());
    }
    let hint = match t.state {
        TaskState::Merging | TaskState::Done => "it was approved already",
        TaskState::Pending | TaskState::Ready | TaskState::Running => {
            "it has no commit waiting; it is reviewed once an attempt commits"
        }
        TaskState::Failed | TaskState::Blocked | TaskState::Cancelled => "it has ended",
        TaskState::Review => "",
    };
    Err(Error::NotInReview(format!(
        "task {} of project {id} is {}, not waiting for review ({hint}); `agentswarm review {id}` lists what waits",
        t.id, t.state
    )))
}

/// Reviews of one store's projects.
pub struct Reviewer<'a> {
    store: &'a dyn Store,
    config: &'a Config,
}

impl<'a> Reviewer<'a> {
    pub fn new(store: &'a dyn Store, config: &'a Config) -> Self {
        Self { store, config }
    }

    /// What waits for a person in project `id`.
    pub fn list(&self, id: &ProjectId) -> Result<api::ReviewList> {
        let (store, config) = (self.store, self.config);
        let project = store.project(id)?;
        let root = repo_root(config, id);
        let mut tasks = Vec::new();
        for t in store.tasks(id)? {
            if t.state != TaskState::Review {
                continue;
            }
            let commit = t.commit.clone().unwrap_or_default();
            let files = match git_review::merge_base(&root, "main", &commit)
                .and_then(|base| swarm_git::source::numstat(&root, &base, &commit))
            {
                Ok(stats) => stats
                    .into_iter()
                    .map(|(added, removed, path)| api::FileChange {
                        path,
                        added,
                        removed,
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(task = %t.id, error = %e, "cannot list the files of a commit in review");
                    Vec::new()
                }
            };
            tasks.push(api::ReviewTask {
                diff_url: diff_url(id, &t.id),
                task: t.id.to_string(),
                title: t.title.clone(),
                attempt: t.attempt,
                commit,
                summary: t.summary.clone(),
                files,
            });
        }
        Ok(api::ReviewList {
            project: id.to_string(),
            review: mode_of(config, &project.options),
            tasks,
            delivery_waiting: delivery_held(&project),
        })
    }

    /// The change task `task` waits with: its attempt's commit against the
    /// commit of `main` it started from (the merge base), and `main` now,
    /// which it would merge into. Blocking (git).
    pub fn task_diff(&self, id: &ProjectId, task: &TaskId) -> Result<api::ReviewDiff> {
        let (store, config) = (self.store, self.config);
        let t = find(store, id, task)?;
        in_review(id, &t)?;
        let root = repo_root(config, id);
        let commit = t.commit.clone().ok_or_else(|| {
            Error::Other(format!("task {task} waits for review without a commit"))
        })?;
        let main = git_review::rev_parse(&root, "main")?;
        let base = git_review::merge_base(&root, &main, &commit)?;
        let files = git_review::file_diffs(&root, &base, &commit)?;
        Ok(api::ReviewDiff {
            project: id.to_string(),
            task: Some(task.to_string()),
            attempt: Some(t.attempt),
            base,
            commit,
            main,
            files: to_api(files),
        })
    }

    /// Approves task `task`'s commit: it goes to the merge queue (the run
    /// holding the project merges it within a second; a stopped project's
    /// next run does).
    pub fn approve_task(&self, id: &ProjectId, task: &TaskId) -> Result<api::ReviewOutcome> {
        let store = self.store;
        let t = find(store, id, task)?;
        in_review(id, &t)?;
        if !store.decide_review(id, task, t.attempt, &ReviewDecision::Approve)? {
            return Err(changed_meanwhile(store, id, task));
        }
        Ok(api::ReviewOutcome {
            project: id.to_string(),
            task: Some(task.to_string()),
            decision: "approved".into(),
            state: TaskState::Merging.to_string(),
            message: format!(
                "task {task} (attempt {}) approved: it merges into main{}",
                t.attempt,
                running_note(self.config, id)
            ),
        })
    }

    /// Rejects task `task`'s commit with `comment`: the attempt is recorded
    /// `rejected` (not counted against `max_attempts`) and a new attempt,
    /// whose prompt carries the comment, starts from `main`.
    pub fn reject_task(
        &self,
        id: &ProjectId,
        task: &TaskId,
        comment: &str,
    ) -> Result<api::ReviewOutcome> {
        let store = self.store;
        if let Some(why) = comment_problem(comment) {
            return Err(Error::InvalidReview(why));
        }
        let t = find(store, id, task)?;
        in_review(id, &t)?;
        let decision = ReviewDecision::Reject {
            comment: comment.trim().to_owned(),
        };
        if !store.decide_review(id, task, t.attempt, &decision)? {
            return Err(changed_meanwhile(store, id, task));
        }
        // The rejected commit is not needed any more (a run's start removes
        // the branch if this fails).
        let branch = git_review::branch(task.as_str(), t.attempt);
        if let Err(e) = git_review::release(&repo_root(self.config, id), &branch) {
            tracing::warn!(branch, error = %e, "cannot delete the review branch of a rejected attempt");
        }
        Ok(api::ReviewOutcome {
            project: id.to_string(),
            task: Some(task.to_string()),
            decision: "rejected".into(),
            state: TaskState::Ready.to_string(),
            message: format!(
                "task {task} (attempt {}) rejected: attempt {} starts from main with your comment{}",
                t.attempt,
                t.attempt + 1,
                running_note(self.config, id)
            ),
        })
    }
}

fn to_api(files: Vec<git_review::FileDiff>) -> Vec<api::FileDiff> {
    files
        .into_iter()
        .map(|f| api::FileDiff {
            path: f.path,
            added: f.added,
            removed: f.removed,
            diff: f.diff,
        })
        .collect()
}

/// Checks a reviewer's comment: something to act on, not too long.
pub fn comment_problem(comment: &str) -> Option<String> {
    let c = comment.trim();
    if c.is_empty() {
        return Some("a rejection needs a comment that says what to change (`--reject \"…\"`, or `comment` in the body)".into());
    }
    let n = c.chars().count();
    if n > MAX_COMMENT_CHARS {
        return Some(format!(
            "the comment is {n} characters, more than {MAX_COMMENT_CHARS}; say what to change in fewer words"
        ));
    }
    None
}

fn changed_meanwhile(store: &dyn Store, id: &ProjectId, task: &TaskId) -> Error {
    match store.task(id, task) {
        Ok(Some(t)) => match in_review(id, &t) {
            Err(e) => e,
            Ok(()) => Error::NotInReview(format!(
                "task {task} moved on to another attempt meanwhile; look again with `agentswarm review {id}`"
            )),
        },
        Ok(None) => Error::NoSuchTask(id.clone(), task.clone()),
        Err(e) => e.into(),
    }
}

/// Said after a decision when no process runs the project.
fn running_note(config: &Config, id: &ProjectId) -> String {
    if crate::runner_alive(config, id) {
        return String::new();
    }
    format!(
        " when the project runs again (no process runs it now: `agentswarm resume {id}`, or the daemon picks it up)"
    )
}

impl Reviewer<'_> {
    /// The project, which must hold its delivery for review.
    fn held_delivery(
        &self,
        id: &ProjectId,
    ) -> Result<(
        swarm_store::ProjectRecord,
        swarm_protocol::source::RepoSource,
    )> {
        let p = self.store.project(id)?;
        let src = crate::source::of(&p);
        if !delivery_held(&p) {
            let why = match (&src, mode_of(self.config, &p.options)) {
                (None, _) => "it does not work on an existing repository (no --repo): there is no branch to hold".to_owned(),
                (Some(_), ReviewMode::Delivery) if !p.state.is_terminal() => {
                    format!("it is {}; the delivery waits for review once its run ends", p.state)
                }
                (Some(s), _) if s.branch.is_some() => {
                    format!("its branch {} was written already", s.branch.clone().unwrap_or_default())
                }
                (Some(_), mode) => format!("its review mode is {mode}, not delivery"),
            };
            return Err(Error::NotInReview(format!(
                "the delivery of project {id} does not wait for review: {why}"
            )));
        }
        let src = src.ok_or_else(|| Error::Other("no source".into()))?;
        Ok((p, src))
    }

    /// The whole change the held delivery would write: the base commit
    /// against `main`. Blocking (git).
    pub fn delivery_diff(&self, id: &ProjectId) -> Result<api::ReviewDiff> {
        let (_, src) = self.held_delivery(id)?;
        let root = repo_root(self.config, id);
        let main = git_review::rev_parse(&root, "main")?;
        let base = src
            .base_commit
            .clone()
            .ok_or_else(|| Error::Other(format!("project {id} has no base commit")))?;
        let files = git_review::file_diffs(&root, &base, &main)?;
        Ok(api::ReviewDiff {
            project: id.to_string(),
            task: None,
            attempt: None,
            base,
            commit: main.clone(),
            main,
            files: to_api(files),
        })
    }

    /// Writes the held delivery: the branch in the source repository (and
    /// its push, when asked). Takes the project's lock (refused while a run
    /// holds it). Blocking (git).
    pub fn approve_delivery(&self, id: &ProjectId) -> Result<api::ReviewOutcome> {
        let _lock = crate::lock_project(self.config, id)?;
        let (p, mut src) = self.held_delivery(id)?;
        let root = repo_root(self.config, id);
        let head = git_review::rev_parse(&root, "main")?;
        let branch = swarm_protocol::source::delivery_branch(id.as_str());
        let w = crate::source::write_branch(&src, &root, &head, &branch);
        src.held = false;
        src.branch = w.branch.clone();
        let v = serde_json::to_value(&src).map_err(|e| Error::Other(e.to_string()))?;
        self.store.set_project_source(id, &v)?;
        self.store.append_event(
            id,
            None,
            "review_approved",
            &serde_json::json!({"delivery": true, "commit": head, "branch": w.branch, "pushed": w.pushed, "branch_error": w.error}),
        )?;
        let message = match (&w.branch, &w.error) {
            (Some(b), None) => format!(
                "the delivery of project {id} is approved: branch {b} written in {}{}",
                src.repo,
                if w.pushed { " and pushed" } else { "" }
            ),
            (Some(b), Some(e)) => format!(
                "the delivery of project {id} is approved: branch {b} written in {}, but {e}",
                src.repo
            ),
            (None, Some(e)) => format!("the delivery of project {id} is approved, but {e}"),
            (None, None) => format!(
                "the delivery of project {id} is approved (a URL without --push: no branch is written; changes.patch and the bundle are in OUTPUTS_DIR)"
            ),
        };
        Ok(api::ReviewOutcome {
            project: id.to_string(),
            task: None,
            decision: "approved".into(),
            state: p.state.to_string(),
            message,
        })
    }

    /// Records the rejection of the held delivery with `comment` (the goal
    /// of the follow-up round the caller then plans, as `run --continue`
    /// does). The delivery stays held until that round ends (and is held
    /// again then).
    pub fn reject_delivery(&self, id: &ProjectId, comment: &str) -> Result<api::ReviewOutcome> {
        if let Some(why) = comment_problem(comment) {
            return Err(Error::InvalidReview(why));
        }
        let (p, _) = self.held_delivery(id)?;
        self.store.append_event(
            id,
            None,
            "review_rejected",
            &serde_json::json!({"delivery": true, "comment": comment.trim()}),
        )?;
        Ok(api::ReviewOutcome {
            project: id.to_string(),
            task: None,
            decision: "rejected".into(),
            state: p.state.to_string(),
            message: format!(
                "the delivery of project {id} is rejected: a follow-up round plans your comment as its goal; \
                 its delivery waits for review again"
            ),
        })
    }
}
