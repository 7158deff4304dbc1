//! The seam between the scheduler, which decides, and whatever runs an
//! attempt, which acts: a job and a cancellation token go in, an outcome
//! comes out (the shape of codex-rs's `SessionTask`: `kind`, `run`, and
//! here `release` where it has `abort`).
//!
//! The first runner is the built-in agent loop in an `agentswarm worker`
//! process ([`crate::driver::BuiltinRunner`]). An ACP agent, a command agent
//! or a runner on a remote node plug in here the same way: they get the
//! task's prompt and limits, work in a workspace of their own, and end with
//! a commit the merge queue can merge, or with a reason.

use crate::metrics::LiveEntry;
use std::path::PathBuf;
use std::sync::Arc;
use swarm_protocol::{AttemptOutcome, ProjectId, TaskId};
use tokio_util::sync::CancellationToken;

/// Which kind of runner ran an attempt (for logs and, later, placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunnerKind {
    /// The built-in agent loop in an `agentswarm worker` child process.
    Builtin,
}

impl RunnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunnerKind::Builtin => "builtin",
        }
    }
}

impl std::fmt::Display for RunnerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an attempt holds while it runs: its node's slot and a worker
/// permit. The scheduler gives them back when the runner reports; a runner
/// may give them back earlier, once the attempt no longer uses its node (a
/// node's attempt whose worker has reported and whose commits are in hand:
/// what is left, fetching them, runs on the supervisor).
#[derive(Clone, Default)]
pub struct Slot(Arc<std::sync::Mutex<Option<Box<dyn Send>>>>);

impl Slot {
    pub fn new(held: impl Send + 'static) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Box::new(held)))))
    }

    /// Gives the slot back (once; later calls do nothing).
    pub fn free(&self) {
        let held = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        // Dropped outside the lock: a node lease wakes the scheduler.
        drop(held);
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

/// One attempt of one code task, as the scheduler hands it to a runner.
#[derive(Debug)]
pub struct AttemptJob {
    pub project: ProjectId,
    pub task: TaskId,
    /// 1-based; the runner's commit carries it (`Swarm-Attempt`), and only
    /// the current attempt's result is accepted.
    pub attempt: u32,
    pub system_prompt: String,
    /// The task's first user message (docs/worker-tools.md).
    pub prompt: String,
    /// The subject line of the attempt's commit.
    pub commit_subject: String,
    /// Model turns the agent may take.
    pub max_turns: u32,
    /// Wall time of one command the agent runs.
    pub command_timeout_secs: u64,
    /// Bytes of a command's output the agent gets back.
    pub output_cap_bytes: usize,
    /// The attempt's row in the engine's live table: runners report the
    /// process, turns and tools there. Dropped when the attempt is over.
    pub live: LiveEntry,
    /// The worker node it runs on; `None`: this machine.
    pub node: Option<Arc<crate::nodes::RemoteNode>>,
    /// The merge commits of the task's dependencies: the attempt may start
    /// from any `main` that holds them (a node's cached one; docs/scale-out.md).
    pub needs: Vec<String>,
    /// Its slot, which the runner may give back before it reports.
    pub slot: Slot,
}

/// How an attempt ended without a commit to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Ended {
    /// The agent gave up, ran out of turns, or a tool or model error ended it.
    Failed,
    /// The agent stopped making progress (a runner that can tell says so).
    /// Recorded as `stuck` (a counted attempt).
    Stuck,
    /// The agent's process died (exit code or signal in the reason).
    Crashed,
    /// Over the attempt's wall time (`WORKER_TIMEOUT_SECONDS`).
    TimedOut,
    /// Over the attempt's memory limit (`WORKER_MEMORY_LIMIT_MB`).
    MemoryLimit,
    /// The run stopped (the cancellation token fired, or the project halted).
    Interrupted,
    /// The swarm could not prepare the attempt's workspace (its own failure,
    /// not the agent's: git, the file system). Recorded as `failed`; not
    /// counted the first [`SETUP_RETRIES`] times in a row for a task.
    Setup,
    /// An outside agent on its own credentials said its vendor's usage
    /// limit is reached: the attempt is not counted, and the agent gets no
    /// task until the reset ([`AttemptRunner::hold`]). Recorded as `failed`.
    UsageLimit,
}

/// Setup failures in a row a task gets without using up an attempt.
pub const SETUP_RETRIES: u32 = 2;

impl Ended {
    /// Whether the attempt counts against `max_attempts`: an interrupted
    /// one does not, the task simply runs again.
    pub fn counts(self) -> bool {
        match self {
            Ended::Interrupted | Ended::UsageLimit => false,
            Ended::Setup
            | Ended::Failed
            | Ended::Stuck
            | Ended::Crashed
            | Ended::TimedOut
            | Ended::MemoryLimit => true,
        }
    }

    /// The outcome the store records for it.
    pub fn recorded_as(self) -> AttemptOutcome {
        match self {
            Ended::Failed | Ended::Setup | Ended::UsageLimit => AttemptOutcome::Failed,
            Ended::Stuck => AttemptOutcome::Stuck,
            Ended::Crashed => AttemptOutcome::Crashed,
            Ended::TimedOut => AttemptOutcome::Timeout,
            Ended::MemoryLimit => AttemptOutcome::MemoryLimit,
            Ended::Interrupted => AttemptOutcome::Interrupted,
        }
    }
}

/// What the runner reports when the attempt is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The agent finished: its work is one commit on `branch` of the
    /// project's repository, ready for the merge queue.
    Committed {
        branch: String,
        commit: String,
        summary: String,
        turns: u32,
        /// What the runner changed in the work before committing it (a
        /// nested repository removed), for the operator: `note` events.
        notes: Vec<String>,
    },
    /// The attempt ended without a commit.
    Ended {
        how: Ended,
        reason: String,
        turns: u32,
    },
}

impl Outcome {
    pub fn ended(how: Ended, reason: impl Into<String>, turns: u32) -> Self {
        Outcome::Ended {
            how,
            reason: reason.into(),
            turns,
        }
    }
}

/// Where an attempt worked (a worktree of the project's repository). The
/// scheduler keeps it until the attempt's merge is decided, then gives it
/// back with [`AttemptRunner::release`] (or archives it first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workspace {
    pub path: PathBuf,
}

/// An attempt's [`Outcome`] and the workspace it leaves behind, if any.
#[derive(Debug)]
pub struct AttemptReport {
    pub outcome: Outcome,
    pub workspace: Option<Workspace>,
}

/// Runs attempts. One runner serves every attempt of a run; it is shared
/// by the tasks the scheduler spawns, one per attempt.
#[async_trait::async_trait]
pub trait AttemptRunner: Send + Sync + 'static {
    fn kind(&self) -> RunnerKind;

    /// Runs `job` to its end. When `cancel` fires the runner stops the
    /// attempt within its shutdown grace and reports [`Ended::Interrupted`].
    /// It never fails: whatever goes wrong is an [`Outcome::Ended`] with
    /// the reason.
    async fn run(self: Arc<Self>, job: AttemptJob, cancel: CancellationToken) -> AttemptReport;

    /// Takes back a workspace [`AttemptRunner::run`] left. `dirty`: the
    /// attempt did not end in a commit, so files may be left in it.
    fn release(&self, workspace: Workspace, dirty: bool);

    /// Why `task` must not start now, and until when: the agent that would
    /// do it is out of its usage limit. `None`: it may start.
    fn hold(&self, _task: &TaskId) -> Option<crate::gateway::QuotaBlock> {
        None
    }

    /// The outside agent that does `task` (a remote node must carry its name
    /// among its labels); `None`: the built-in agent, which every node has.
    fn agent_of(&self, _task: &TaskId) -> Option<String> {
        None
    }

    /// The labels the node that runs `task` must carry (its plan's
    /// `requires`).
    fn requires(&self, _task: &TaskId) -> Vec<String> {
        Vec::new()
    }
}
