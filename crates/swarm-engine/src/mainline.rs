//! The run's work on `main`, as the scheduler asks for it ([`Integration`]):
//! the merge queue (one merge at a time per project), verify on a clean
//! checkout, the per-task archives, and the planner's fix rounds.

use crate::gateway::Gateway;
use crate::runner::{AttemptRunner, Workspace};
use crate::scheduler::{Event, Events, Integration, MergeJob, VerifyJob};
use crate::{packager, planner, verify, Result};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_git::Repo;
use swarm_protocol::{Plan, ProjectId, TaskId, TaskState};
use swarm_store::{Store, TaskRecord, TaskUpdate};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

/// What [`Mainline`] is made of.
pub(crate) struct MainlineParts {
    pub project: ProjectId,
    pub repo: Repo,
    /// Where the verify checkout goes (beside the workers' worktrees).
    pub worktrees_dir: PathBuf,
    /// `OUTPUTS_DIR/<project>`.
    pub outputs: PathBuf,
    pub store: Arc<dyn Store>,
    pub gateway: Gateway,
    pub limiter: Arc<swarm_exec::MemoryLimiter>,
    /// The memory limit of the verify commands, in bytes (the workers').
    pub memory_limit: u64,
    pub verify_timeout: Duration,
    pub output_cap: usize,
    pub sandbox: SandboxPolicy,
    pub cancel: CancellationToken,
}

pub(crate) struct Mainline {
    parts: MainlineParts,
    events: Events,
    merges: Option<mpsc::UnboundedSender<MergeJob>>,
    merge_queue: Option<JoinHandle<()>>,
    /// The enclosure the running verify commands are in (killed on stop).
    verify_enclosure: Option<Arc<swarm_exec::Enclosure>>,
    /// Per-task archives and worktree clean-up, off the critical path.
    background: JoinSet<()>,
}

impl Mainline {
    /// Starts the merge queue; results go to `events`.
    pub(crate) fn start(parts: MainlineParts, events: Events) -> Self {
        let (merges, jobs) = mpsc::unbounded_channel();
        let merge_queue = tokio::spawn(merge_queue(parts.repo.clone(), jobs, events.clone()));
        Self {
            parts,
            events,
            merges: Some(merges),
            merge_queue: Some(merge_queue),
            verify_enclosure: None,
            background: JoinSet::new(),
        }
    }

    pub(crate) fn repo(&self) -> &Repo {
        &self.parts.repo
    }

    pub(crate) fn outputs(&self) -> &PathBuf {
        &self.parts.outputs
    }

    /// Closes the merge queue and waits for it (nothing may be merging).
    pub(crate) async fn close_merge_queue(&mut self) {
        self.merges = None;
        if let Some(q) = self.merge_queue.take() {
            let _ = q.await;
        }
    }

    /// Waits for the archives and worktree clean-ups still running.
    pub(crate) async fn settle(&mut self) {
        while self.background.join_next().await.is_some() {}
    }
}

async fn merge_queue(repo: Repo, mut jobs: mpsc::UnboundedReceiver<MergeJob>, tx: Events) {
    // One merge at a time per project: this loop is the only merger.
    while let Some(job) = jobs.recv().await {
        let r = repo.clone();
        let (branch, message) = (job.branch, job.message);
        let result = tokio::task::spawn_blocking(move || {
            let merged = r.merge(&branch, &message);
            // A commit approved in review is merged (or conflicted and runs
            // again): its review branch has done its job.
            if merged.is_ok() && branch.starts_with("review/") {
                if let Err(e) = swarm_git::review::release(r.root(), &branch) {
                    tracing::warn!(branch, error = %e, "cannot delete the review branch");
                }
            }
            merged
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        let _ = tx.send(Event::Merged {
            task: job.task,
            attempt: job.attempt,
            result,
        });
    }
}

#[async_trait::async_trait]
impl Integration for Mainline {
    fn merge(&mut self, job: MergeJob) -> Result<()> {
        match &self.merges {
            Some(q) if q.send(job).is_ok() => Ok(()),
            Some(_) | None => Err(crate::Error::Other("the merge queue stopped".into())),
        }
    }

    fn verify(&mut self, job: VerifyJob) {
        let p = &self.parts;
        let repo = p.repo.clone();
        let checkout = p
            .worktrees_dir
            .join(format!("{}-{}", job.task, job.attempt));
        let (timeout, output_cap) = (p.verify_timeout, p.output_cap);
        let enclosure = match p.limiter.enclose(p.memory_limit) {
            Ok(e) => Some(Arc::new(e)),
            Err(e) => {
                tracing::warn!(error = %e, "verify runs without its memory limit: the enclosure could not be made");
                None
            }
        };
        self.verify_enclosure = enclosure.clone();
        let cancel = p.cancel.clone();
        let sandbox = p.sandbox.clone();
        let tx = self.events.clone();
        let VerifyJob {
            attempt,
            commands,
            live,
            task: _,
        } = job;
        tokio::task::spawn_blocking(move || {
            let result = verify::run_verify(
                &repo,
                &checkout,
                &commands,
                verify::Limits {
                    timeout,
                    output_cap,
                    sandbox: &sandbox,
                },
                enclosure.clone(),
                &cancel,
            );
            if let Some(e) = enclosure {
                e.release();
            }
            drop(live);
            let _ = tx.send(Event::Verified { attempt, result });
        });
    }

    async fn stop_verify(&mut self) {
        if let Some(e) = self.verify_enclosure.take() {
            let _ = tokio::task::spawn_blocking(move || e.release()).await;
        }
    }

    fn archive(
        &mut self,
        record: TaskRecord,
        workspace: Workspace,
        runner: Arc<dyn AttemptRunner>,
    ) {
        let p = &self.parts;
        let repo = p.repo.clone();
        let outputs = p.outputs.clone();
        let store = p.store.clone();
        let id = p.project.clone();
        let redactor = p.gateway.redactor().clone();
        self.background.spawn_blocking(move || {
            let files = match record.commit.as_deref().map(|c| repo.changed_files(c)) {
                Some(Ok(changes)) => changes.into_iter().map(|c| c.path).collect::<Vec<_>>(),
                Some(Err(e)) => {
                    tracing::warn!(task = %record.id, error = %e, "cannot list the task's changed files");
                    Vec::new()
                }
                None => Vec::new(),
            };
            let update = TaskUpdate {
                from: vec![TaskState::Done],
                changed_files: Some(files.clone()),
                ..Default::default()
            };
            if let Err(e) = store.update_task(&id, &record.id, &update) {
                tracing::warn!(task = %record.id, error = %e, "cannot store the task's changed files");
            }
            if let Err(e) =
                packager::task_archive(&outputs, &id, &record, &workspace.path, &files, &redactor)
            {
                tracing::warn!(task = %record.id, error = %e, "cannot write the task archive");
            }
            // Everything was committed: the worktree is clean for the next attempt.
            runner.release(workspace, false);
        });
    }

    fn archive_commit(&mut self, record: TaskRecord) {
        let p = &self.parts;
        let repo = p.repo.clone();
        let outputs = p.outputs.clone();
        let store = p.store.clone();
        let id = p.project.clone();
        let redactor = p.gateway.redactor().clone();
        let scratch = p.worktrees_dir.clone();
        self.background.spawn_blocking(move || {
            if let Some(Ok(changes)) = record.commit.as_deref().map(|c| repo.changed_files(c)) {
                let update = TaskUpdate {
                    from: vec![TaskState::Done],
                    changed_files: Some(changes.into_iter().map(|c| c.path).collect()),
                    ..Default::default()
                };
                if let Err(e) = store.update_task(&id, &record.id, &update) {
                    tracing::warn!(task = %record.id, error = %e, "cannot store the task's changed files");
                }
            }
            crate::recovery::rebuild_archives(&repo, &scratch, &outputs, &id, &[record], &redactor);
        });
    }

    fn hold(&mut self, task: TaskId, attempt: u32, commit: String) {
        let root = self.parts.repo.root().to_owned();
        let tx = self.events.clone();
        self.background.spawn_blocking(move || {
            let branch = swarm_git::review::branch(task.as_str(), attempt);
            let result =
                swarm_git::review::hold(&root, &branch, &commit).map_err(|e| e.to_string());
            let _ = tx.send(Event::Held {
                task,
                attempt,
                result,
            });
        });
    }

    fn main_head(&self) -> Option<String> {
        self.parts.repo.head().ok()
    }

    async fn plan_fixes(
        &self,
        request: String,
        existing: &HashSet<TaskId>,
        max_tasks: u32,
    ) -> std::result::Result<Plan, String> {
        let p = &self.parts;
        planner::fix_plan(&p.gateway, &p.project, request, existing, max_tasks)
            .await
            .result
            .map_err(|e| e.to_string())
    }
}
