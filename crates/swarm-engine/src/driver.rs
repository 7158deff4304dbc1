//! The built-in attempt runner: one attempt of one code task in an
//! `agentswarm worker` process. It leases the worktree, spawns the worker,
//! relays its model requests to the gateway, enforces the wall-time and
//! memory limits, and reports how the attempt ended.

use crate::gateway::{CallError, Caller, Gateway};
use crate::metrics::LiveEntry;
use crate::runner::{
    AttemptJob, AttemptReport, AttemptRunner, Ended, Outcome, RunnerKind, Workspace,
};
use crate::wording::truncate;
use crate::Progress;
use nix::sys::signal::Signal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::chat::ChatMessage;
use swarm_protocol::worker::{
    FromWorker, ModelResult, ToWorker, WorkerStart, WorktreeSetup, SETUP_FAILED,
};
use swarm_protocol::{ProjectId, TaskId};
use swarm_store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Runs attempts in `agentswarm worker` processes; one for all attempts of a run.
pub struct BuiltinRunner {
    pub project: ProjectId,
    pub pool: Arc<swarm_git::WorktreePool>,
    pub transcripts_dir: PathBuf,
    /// Starts the worker processes, each in its enclosure (its memory limit
    /// and kill handle), keeping one spare ready.
    pub workers: crate::warm::WarmWorkers,
    /// Per worker node: its `ssh … agentswarm node worker` sessions, one
    /// kept spare (connected, waiting for its start message) as here.
    pub remote_workers:
        std::sync::Mutex<std::collections::HashMap<String, Arc<crate::warm::WarmWorkers>>>,
    pub worker_timeout: Duration,
    pub shutdown_grace: Duration,
    pub gateway: Gateway,
    pub store: Arc<dyn Store>,
    pub progress: broadcast::Sender<Progress>,
    /// The confinement of the commands the workers run.
    pub sandbox: swarm_exec::sandbox::SandboxPolicy,
    /// An existing repository's worktree preparation (`.agentswarm.toml`);
    /// `run_commands` is decided per attempt.
    pub prepare: swarm_protocol::worker::RepoPrepare,
    /// Which agent does which task (docs/agents.md).
    pub agents: AgentPlan,
}

/// Which agent does each task: the task's own choice (its plan's `agent`),
/// else the project's (`--agent`, the API's option, `[models.worker]
/// agent`), else the built-in agent.
#[derive(Debug, Clone, Default)]
pub struct AgentPlan {
    pub configured: std::collections::BTreeMap<String, swarm_config::AgentChoice>,
    pub project: Option<String>,
    pub tasks: std::collections::HashMap<TaskId, String>,
    /// Each task's `requires`: the labels its node must carry.
    pub requires: std::collections::HashMap<TaskId, Vec<String>>,
}

impl AgentPlan {
    /// The agent name for `task`.
    pub fn name_for(&self, task: &TaskId) -> &str {
        self.tasks
            .get(task)
            .or(self.project.as_ref())
            .map(String::as_str)
            .unwrap_or(swarm_config::BUILTIN)
    }

    /// The outside agent for `task` (`None`: the built-in one), or why the
    /// task names one that is not configured.
    pub fn spec_for(
        &self,
        task: &TaskId,
    ) -> Result<Option<swarm_protocol::agent::AgentSpec>, String> {
        let name = self.name_for(task);
        match self.configured.get(name) {
            Some(swarm_config::AgentChoice::Builtin) => Ok(None),
            Some(swarm_config::AgentChoice::External(s)) => Ok(Some(s.clone())),
            None => Err(format!(
                "agent {name:?} is not configured: add [agents.{name}] to agentswarm.toml (docs/agents.md)"
            )),
        }
    }

    /// The outside agents this plan uses (by a task, or as the project's).
    pub fn used(&self) -> Vec<swarm_protocol::agent::AgentSpec> {
        let mut names: Vec<&String> = self.tasks.values().chain(self.project.iter()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter_map(|n| match self.configured.get(n.as_str()) {
                Some(swarm_config::AgentChoice::External(s)) => Some(s.clone()),
                Some(swarm_config::AgentChoice::Builtin) | None => None,
            })
            .collect()
    }

    /// For manifest.json: which agent did which task, and on whose
    /// credentials; `None` when every task is the built-in agent's.
    pub fn report(&self) -> Option<serde_json::Value> {
        let used = self.used();
        if used.is_empty() {
            return None;
        }
        let agents: serde_json::Map<String, serde_json::Value> = used
            .iter()
            .map(|s| {
                let own = s.credentials == swarm_protocol::agent::Credentials::Own;
                (
                    s.name.clone(),
                    serde_json::json!({
                        "kind": s.kind.as_str(),
                        "speaks": s.speaks.as_str(),
                        "credentials": if own { "own" } else { "gateway" },
                        "note": if own {
                            "rate limits and costs of this agent's model calls are its vendor's; they are not in this manifest's usage"
                        } else {
                            "model calls through the gateway: in this manifest's usage"
                        },
                    }),
                )
            })
            .collect();
        let mut tasks: Vec<(&TaskId, &String)> = self.tasks.iter().collect();
        tasks.sort();
        Some(serde_json::json!({
            "project": self.project.clone().unwrap_or_else(|| swarm_config::BUILTIN.to_owned()),
            "tasks": tasks.into_iter().map(|(t, n)| (t.to_string(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
            "agents": agents,
        }))
    }

    /// Every name used that is not configured, with the task that uses it
    /// (checked before a run starts any task).
    pub fn unknown(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, n)| !self.configured.contains_key(n.as_str()))
            .map(|(t, n)| format!("task {t} names agent {n:?}"))
            .collect();
        if let Some(n) = &self.project {
            if !self.configured.contains_key(n.as_str()) {
                v.push(format!("the project's agent is {n:?}"));
            }
        }
        v.sort();
        v
    }
}

fn branch_name(task: &TaskId, attempt: u32) -> String {
    format!("task/{task}/{attempt}")
}

#[async_trait::async_trait]
impl AttemptRunner for BuiltinRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Builtin
    }

    async fn run(self: Arc<Self>, job: AttemptJob, cancel: CancellationToken) -> AttemptReport {
        let task = job.task.clone();
        let (mut outcome, worktree) = drive(&self, job, cancel).await;
        // An agent on its own credentials that hit its vendor's usage limit:
        // not the task's fault; the agent waits for its reset.
        if let (Some(spec), Outcome::Ended { how, reason, turns }) =
            (self.own_credentials_agent(&task), &outcome)
        {
            if matches!(how, Ended::Failed | Ended::Crashed) {
                if let Some(wait) = usage_limit_reset(reason) {
                    let until = std::time::SystemTime::now() + wait;
                    self.gateway.hold_agent(&spec.name, until, reason);
                    outcome = Outcome::ended(
                        Ended::UsageLimit,
                        format!(
                            "agent {} is out of its usage limit (not counted): {reason}",
                            spec.name
                        ),
                        *turns,
                    );
                }
            }
        }
        AttemptReport {
            outcome,
            workspace: worktree.map(|path| Workspace { path }),
        }
    }

    fn release(&self, workspace: Workspace, dirty: bool) {
        self.pool.release(&workspace.path, dirty);
    }

    fn hold(&self, task: &TaskId) -> Option<crate::gateway::QuotaBlock> {
        let spec = self.own_credentials_agent(task)?;
        self.gateway.agent_hold(&spec.name)
    }

    fn agent_of(&self, task: &TaskId) -> Option<String> {
        self.agents.spec_for(task).ok().flatten().map(|s| s.name)
    }

    fn requires(&self, task: &TaskId) -> Vec<String> {
        self.agents.requires.get(task).cloned().unwrap_or_default()
    }
}

impl BuiltinRunner {
    /// The sessions to `node`, with spares kept ready (each `ssh`
    /// connected, `agentswarm node worker` waiting for its start message):
    /// one a slot where the node's `max_sessions` leaves room.
    fn remote_workers(
        &self,
        node: &Arc<crate::nodes::RemoteNode>,
    ) -> Arc<crate::warm::WarmWorkers> {
        let mut all = self
            .remote_workers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        all.entry(node.node.name.clone())
            .or_insert_with(|| {
                let here = self.workers.launch();
                let launch = crate::warm::WorkerLaunch {
                    program: PathBuf::from("ssh"),
                    args: node.ssh_argv(&self.node_worker_command(node)),
                    cwd: here.cwd.clone(),
                    limiter: here.limiter.clone(),
                    memory_limit: here.memory_limit,
                    env: crate::nodes::ssh_env(),
                };
                // As many as the node's sshd accepts besides the attempts'
                // own sessions (`max_sessions`), at most one a slot.
                let spares = usize::try_from(node.node.spare_sessions()).unwrap_or(0);
                Arc::new(crate::warm::WarmWorkers::with_spares(launch, spares))
            })
            .clone()
    }

    /// What runs an attempt on `node`: `agentswarm node worker` with this
    /// run's limits.
    fn node_worker_command(&self, node: &crate::nodes::RemoteNode) -> String {
        format!(
            "{} node worker --memory-mb {} --lost-after {} --grace-secs {}",
            crate::nodes::remote_binary(&node.node),
            self.workers.launch().memory_limit >> 20,
            node.node.lost_after_secs,
            self.shutdown_grace.as_secs().max(1),
        )
    }

    /// At the start of a run, for every node that is up: its spare
    /// sessions, and `main` (`head`) in its cache repository, both in the
    /// background, so that the first attempts there wait for neither.
    pub fn prepare_nodes(self: &Arc<Self>, nodes: &crate::nodes::NodeSet, head: String) {
        let repo_root = self.pool.repo().root().to_owned();
        // The sessions' working directory (where `ssh` starts; the nodes'
        // bundles are kept beside it) may not exist yet.
        if let Err(e) = std::fs::create_dir_all(&self.workers.launch().cwd) {
            tracing::warn!(error = %e, "cannot make the worktrees' directory");
        }
        for node in nodes.up_remotes() {
            self.remote_workers(&node).fill();
            let (project, repo_root, head) =
                (self.project.clone(), repo_root.clone(), head.clone());
            tokio::spawn(async move {
                // A failure here is the first attempt's to meet and report.
                if let Err(e) = node.sync_base(&project, &repo_root, &head, &[]).await {
                    tracing::debug!(node = %node.node.name, error = %e, "cannot send main to the node ahead of its attempts");
                }
            });
        }
    }

    /// The outside agent that does `task`, when it runs on its own
    /// credentials (its vendor's quota, which the gateway does not see).
    fn own_credentials_agent(&self, task: &TaskId) -> Option<swarm_protocol::agent::AgentSpec> {
        self.agents
            .spec_for(task)
            .ok()
            .flatten()
            .filter(|s| s.credentials == swarm_protocol::agent::Credentials::Own)
    }
}

/// How long until an agent's usage limit resets, when `reason` (its last
/// words) says the limit is reached: the time it names (`…|<unix seconds>`
/// as Claude Code writes it, `try again in 2 hours`, `retry in 56s`), else
/// [`crate::gateway::DEFAULT_QUOTA_BLOCK`]. `None`: some other failure.
/// Hand-written: each CLI words it its own way and no crate knows them.
pub(crate) fn usage_limit_reset(reason: &str) -> Option<Duration> {
    let lower = reason.to_ascii_lowercase();
    let limited = [
        "usage limit",
        "quota exceeded",
        "exceeded your current quota",
        "rate limit reached",
        "limit reached",
    ]
    .iter()
    .any(|p| lower.contains(p));
    if !limited {
        return None;
    }
    // `usage limit reached|1718900000`: the reset as unix seconds.
    if let Some(epoch) = lower
        .split(['|', ' '])
        .filter_map(|w| {
            w.trim_matches(|c: char| !c.is_ascii_digit())
                .parse::<u64>()
                .ok()
        })
        .find(|n| *n > 1_000_000_000)
    {
        let reset = std::time::UNIX_EPOCH + Duration::from_secs(epoch);
        return Some(
            reset
                .duration_since(std::time::SystemTime::now())
                .unwrap_or(Duration::from_secs(1)),
        );
    }
    // `(try again|retry) in N (s|sec|seconds|m|min|minutes|h|hours)`.
    let words: Vec<&str> = lower.split_whitespace().collect();
    for (i, w) in words.iter().enumerate() {
        let (Some(&next), true) = (words.get(i + 1), *w == "in") else {
            continue;
        };
        let (num, unit) = match next.find(|c: char| !c.is_ascii_digit() && c != '.') {
            Some(j) if j > 0 => (&next[..j], &next[j..]),
            _ => (next, words.get(i + 2).copied().unwrap_or("")),
        };
        let Ok(n) = num.parse::<f64>() else { continue };
        let unit = unit.trim_matches(|c: char| !c.is_ascii_alphabetic());
        let secs = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => n,
            "m" | "min" | "mins" | "minute" | "minutes" => n * 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => n * 3600.0,
            _ => continue,
        };
        return Some(Duration::from_secs_f64(secs.max(1.0)));
    }
    Some(crate::gateway::DEFAULT_QUOTA_BLOCK)
}

/// Runs the attempt; returns how it ended and the worktree it used (to be
/// released to the pool once the caller is done with it).
async fn drive(
    ctx: &BuiltinRunner,
    mut job: AttemptJob,
    cancel: CancellationToken,
) -> (Outcome, Option<PathBuf>) {
    let branch = branch_name(&job.task, job.attempt);
    let external = match ctx.agents.spec_for(&job.task) {
        Ok(e) => e,
        Err(reason) => return (Outcome::ended(Ended::Failed, reason, 0), None),
    };
    if let Some(e) = &external {
        job.live.tool(0, &format!("agent {}", e.name));
    }
    let base = match ctx.pool.repo().head() {
        Ok(b) => b,
        Err(e) => {
            let reason = format!("{SETUP_FAILED}: cannot read main: {e}");
            return (Outcome::ended(Ended::Setup, reason, 0), None);
        }
    };
    if let Some(node) = job.node.take() {
        let planned = Planned {
            branch,
            base,
            external,
        };
        return (drive_remote(ctx, job, planned, node, cancel).await, None);
    }
    let AttemptJob {
        project,
        task,
        attempt,
        system_prompt,
        prompt,
        commit_subject,
        max_turns,
        command_timeout_secs,
        output_cap_bytes,
        live,
        ..
    } = job;
    // The worker prepares the worktree itself, while its first model call
    // is in flight; here it only gets a path and what to do with it.
    let lease = ctx.pool.lease();
    let setup = match lease.reuse {
        Some(dirty) => WorktreeSetup::Reset {
            branch,
            base,
            clean: dirty,
        },
        None => {
            let (pool, path) = (ctx.pool.clone(), lease.path.clone());
            // A stale directory from an earlier crash would make `worktree add` fail.
            let cleared = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                if path.exists() {
                    pool.discard(&path).map_err(std::io::Error::other)?;
                }
                std::fs::create_dir_all(path.parent().unwrap_or(&path))
            })
            .await;
            if let Ok(Err(e)) | Err(e) = cleared.map_err(std::io::Error::other) {
                let reason = format!("{SETUP_FAILED}: {e}");
                return (Outcome::ended(Ended::Setup, reason, 0), None);
            }
            WorktreeSetup::Create {
                repo: ctx.pool.repo().root().to_owned(),
                branch,
                base,
            }
        }
    };
    let worktree = lease.path;
    let mut prepare = ctx.prepare.clone();
    // Set-up commands run in a new worktree or one cleaned of what they made.
    prepare.run_commands = !prepare.commands.is_empty()
        && matches!(
            setup,
            WorktreeSetup::Create { .. } | WorktreeSetup::Reset { clean: true, .. }
        );
    let start = WorkerStart {
        project_id: project,
        task_id: task.clone(),
        attempt,
        worktree: worktree.clone(),
        repo: ctx.pool.repo().root().to_owned(),
        system_prompt,
        prompt,
        max_turns,
        command_timeout_secs,
        output_cap_bytes,
        commit_subject,
        setup,
        sandbox: ctx.sandbox.clone(),
        // The worker model's bounds (tool results, context window).
        agent: ctx.gateway.agent_settings(swarm_config::ModelRole::Worker),
        prepare,
        external,
    };
    let mut transcript: Vec<ChatMessage> = Vec::new();
    let outcome = run_process(
        ctx,
        &task,
        attempt,
        start,
        None,
        &cancel,
        &mut transcript,
        &live,
    )
    .await;
    drop(live);
    write_transcript(ctx, &task, attempt, &transcript, &outcome);
    if let Outcome::Ended {
        how: Ended::Failed,
        reason,
        turns,
    } = &outcome
    {
        if reason.starts_with(SETUP_FAILED) {
            // Whatever state that worktree is in, it is not handed out again.
            let pool = ctx.pool.clone();
            let path = worktree.clone();
            let _ = tokio::task::spawn_blocking(move || pool.discard(&path)).await;
            return (Outcome::ended(Ended::Setup, reason.clone(), *turns), None);
        }
    }
    (outcome, Some(worktree))
}

/// What `drive` decided for an attempt before it runs.
struct Planned {
    /// The attempt's branch.
    branch: String,
    /// The newest `main`.
    base: String,
    /// The outside agent that does it; `None`: the built-in one.
    external: Option<swarm_protocol::agent::AgentSpec>,
}

/// One attempt on a worker node: `main` goes to the node's cache
/// repository, `agentswarm node worker` there runs the worker (in the
/// node's own memory limiter and sandbox) with the channel over SSH, and
/// the attempt's commit comes back to this repository for the merge queue.
/// A node that cannot be reached, or goes silent, ends the attempt
/// `interrupted` (not counted) and leaves placement until it answers again.
async fn drive_remote(
    ctx: &BuiltinRunner,
    job: AttemptJob,
    planned: Planned,
    node: Arc<crate::nodes::RemoteNode>,
    cancel: CancellationToken,
) -> Outcome {
    let live = job.live;
    let name = node.node.name.clone();
    let lost = |why: &str| node_lost(&node, why, 0);
    let repo_root = ctx.pool.repo().root().to_owned();
    let began = std::time::Instant::now();
    let (remote_repo, base) = match node
        .sync_base(&job.project, &repo_root, &planned.base, &job.needs)
        .await
    {
        Ok(r) => r,
        Err(e) => return lost(&e),
    };
    let synced = began.elapsed();
    let worktree = remote_repo
        .parent()
        .unwrap_or(&remote_repo)
        .join("worktrees")
        .join(format!("{}-{}", job.task, job.attempt));
    let mut prepare = ctx.prepare.clone();
    prepare.run_commands = !prepare.commands.is_empty();
    let start = WorkerStart {
        project_id: job.project.clone(),
        task_id: job.task.clone(),
        attempt: job.attempt,
        worktree: worktree.clone(),
        repo: remote_repo.clone(),
        system_prompt: job.system_prompt,
        prompt: job.prompt,
        max_turns: job.max_turns,
        command_timeout_secs: job.command_timeout_secs,
        output_cap_bytes: job.output_cap_bytes,
        commit_subject: job.commit_subject,
        setup: WorktreeSetup::Create {
            repo: remote_repo.clone(),
            branch: planned.branch.clone(),
            base,
        },
        sandbox: ctx.sandbox.clone(),
        agent: ctx.gateway.agent_settings(swarm_config::ModelRole::Worker),
        prepare,
        external: planned.external,
    };
    let process = RemoteProcess {
        slot: job.slot.clone(),
        node: node.clone(),
    };
    let mut transcript: Vec<ChatMessage> = Vec::new();
    let (task, attempt) = (job.task, job.attempt);
    let outcome = run_process(
        ctx,
        &task,
        attempt,
        start,
        Some(process),
        &cancel,
        &mut transcript,
        &live,
    )
    .await;
    drop(live);
    let ran = began.elapsed();
    write_transcript(ctx, &task, attempt, &transcript, &outcome);
    tracing::debug!(node = %name, task = %task, attempt, synced_ms = synced.as_millis(), ran_ms = ran.as_millis(), "remote attempt ran");
    match outcome {
        Outcome::Committed {
            ref branch,
            ref commit,
            ..
        } => {
            let bundle = bundle_path(ctx, &task, attempt);
            let bundled = tokio::fs::try_exists(&bundle).await.unwrap_or(false);
            let fetched = node
                .fetch_branch(
                    &job.project,
                    &repo_root,
                    branch,
                    commit,
                    bundled.then_some(bundle.as_path()),
                )
                .await;
            if bundled {
                let _ = tokio::fs::remove_file(&bundle).await;
            }
            tracing::debug!(node = %name, task = %task, attempt, bundled, fetched_ms = (began.elapsed() - ran).as_millis(), "remote attempt's commits fetched");
            match fetched {
                Ok(()) => outcome,
                Err(e) => lost(&e),
            }
        }
        Outcome::Ended {
            how: Ended::Failed,
            ref reason,
            turns,
        } if reason.starts_with(SETUP_FAILED) => {
            Outcome::ended(Ended::Setup, format!("node {name}: {reason}"), turns)
        }
        // `ssh` itself failed (255: the connection broke, before the
        // heartbeat said so): the node's doing, not the agent's.
        Outcome::Ended {
            how: Ended::Crashed,
            ref reason,
            ..
        } if reason.contains("(exit code 255)") => lost("the connection broke"),
        other => other,
    }
}

/// Where a node's bundle of an attempt's commits waits for its fetch.
fn bundle_path(ctx: &BuiltinRunner, task: &TaskId, attempt: u32) -> PathBuf {
    ctx.workers
        .launch()
        .cwd
        .join(".bundles")
        .join(format!("{task}-{attempt}.bundle"))
}

/// The `ssh` to a node's `agentswarm node worker` that runs an attempt's
/// worker there (here, a warm `agentswarm worker` does).
struct RemoteProcess {
    /// The attempt's slot on the node.
    slot: crate::runner::Slot,
    /// The node at the other end of the channel (heartbeats both ways).
    node: Arc<crate::nodes::RemoteNode>,
}

fn timed_out(ctx: &BuiltinRunner, turns: u32) -> Outcome {
    let secs = ctx.worker_timeout.as_secs();
    let reason = format!("timeout: the attempt ran longer than {secs} s (WORKER_TIMEOUT_SECONDS)");
    ended(Ended::TimedOut, reason, turns)
}

fn over_memory(reason: String, turns: u32) -> Outcome {
    ended(Ended::MemoryLimit, reason, turns)
}

/// Why an attempt is ended from outside the worker.
enum Stop {
    Timeout,
    Memory(String),
    Cancelled,
    /// The node's channel went silent (no heartbeat within its
    /// `lost_after_secs`).
    NodeLost(Arc<crate::nodes::RemoteNode>),
}

impl Stop {
    fn outcome(self, ctx: &BuiltinRunner, turns: u32) -> Outcome {
        match self {
            Stop::Timeout => timed_out(ctx, turns),
            Stop::Memory(reason) => over_memory(reason, turns),
            Stop::Cancelled => interrupted(turns),
            Stop::NodeLost(node) => {
                let why = format!("no heartbeat for {} s", node.node.lost_after_secs);
                node_lost(&node, &why, turns)
            }
        }
    }
}

/// `node` is taken out of placement until a probe answers, and the attempt
/// it ran ends `interrupted`, not counted.
fn node_lost(node: &crate::nodes::RemoteNode, why: &str, turns: u32) -> Outcome {
    node.mark_down(why);
    let reason = format!(
        "interrupted: node {}: {why} (not counted; the task runs again on another node)",
        node.node.name
    );
    ended(Ended::Interrupted, reason, turns)
}

/// When the last line came from the worker's channel, for heartbeats.
#[derive(Clone)]
struct LastHeard {
    since: tokio::time::Instant,
    ms: Arc<std::sync::atomic::AtomicU64>,
}

impl LastHeard {
    fn new() -> Self {
        Self {
            since: tokio::time::Instant::now(),
            ms: Arc::default(),
        }
    }

    fn now(&self) {
        let ms = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let at = Duration::from_millis(self.ms.load(std::sync::atomic::Ordering::Relaxed));
        self.since.elapsed().saturating_sub(at)
    }
}

/// Resolves when the attempt must end: its wall time is up, its tree went
/// over the memory limit (polled from one period after the start), or the
/// run is stopping.
async fn stop_signal(
    ctx: &BuiltinRunner,
    enclosure: &swarm_exec::Enclosure,
    cancel: &CancellationToken,
    node: Option<(Arc<crate::nodes::RemoteNode>, LastHeard)>,
) -> Stop {
    let period = enclosure.poll_interval();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let memory = async {
        loop {
            tick.tick().await;
            if let Some(reason) = enclosure.over_limit() {
                return reason;
            }
        }
    };
    let silent = async {
        let Some((node, heard)) = node else {
            return std::future::pending().await;
        };
        let lost_after = Duration::from_secs(node.node.lost_after_secs);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if heard.silent_for() > lost_after {
                return Stop::NodeLost(node);
            }
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(ctx.worker_timeout) => Stop::Timeout,
        reason = memory => Stop::Memory(reason),
        _ = cancel.cancelled() => Stop::Cancelled,
        lost = silent => lost,
    }
}

fn interrupted(turns: u32) -> Outcome {
    let reason = "interrupted: the supervisor is shutting down".to_owned();
    ended(Ended::Interrupted, reason, turns)
}

fn ended(how: Ended, reason: String, turns: u32) -> Outcome {
    Outcome::Ended { how, reason, turns }
}

#[allow(clippy::too_many_arguments)]
async fn run_process(
    ctx: &BuiltinRunner,
    task: &TaskId,
    attempt: u32,
    start: WorkerStart,
    remote: Option<RemoteProcess>,
    cancel: &CancellationToken,
    transcript: &mut Vec<ChatMessage>,
    live: &LiveEntry,
) -> Outcome {
    let asked = std::time::Instant::now();
    let started = match &remote {
        None => ctx.workers.take().await,
        Some(r) => ctx.remote_workers(&r.node).take().await,
    };
    tracing::debug!(task = %task, attempt, took_ms = asked.elapsed().as_millis(), "worker process taken");
    let (child, enclosure) = match started {
        Ok(started) => started,
        Err(reason) => return ended(Ended::Failed, reason, 0),
    };
    live.set_pid(child.pid());
    let (node, slot) = match remote {
        Some(r) => (Some(r.node), Some(r.slot)),
        None => (None, None),
    };
    let channel = Channel { child, node, slot };
    let outcome = talk(
        ctx, task, attempt, start, cancel, transcript, channel, &enclosure, live,
    )
    .await;
    // Whatever is left of the tree goes, and so does its cgroup.
    let e = enclosure.clone();
    let _ = tokio::task::spawn_blocking(move || e.release()).await;
    outcome
}

/// The worker's process and, for a node, the node at its other end.
struct Channel {
    child: swarm_exec::ChildProcess,
    node: Option<Arc<crate::nodes::RemoteNode>>,
    /// A node's attempt gives its slot back once its worker has reported
    /// and its commits are here (see `FromWorker::Finished` below).
    slot: Option<crate::runner::Slot>,
}

/// Talks to a running worker until it reports, dies, runs out of time, goes
/// over its memory limit or the run is cancelled; then ends its whole tree.
#[allow(clippy::too_many_arguments)]
async fn talk(
    ctx: &BuiltinRunner,
    task: &TaskId,
    attempt: u32,
    start: WorkerStart,
    cancel: &CancellationToken,
    transcript: &mut Vec<ChatMessage>,
    channel: Channel,
    enclosure: &swarm_exec::Enclosure,
    live: &LiveEntry,
) -> Outcome {
    let Channel {
        mut child,
        node: remote,
        slot,
    } = channel;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return ended(Ended::Failed, "worker process has no stdio pipes".into(), 0);
    };
    let stdin = Arc::new(tokio::sync::Mutex::new(stdin));
    let stderr_tail = child.stderr.take().map(|err| {
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
            while let Ok(Some(l)) = lines.next_line().await {
                tracing::debug!(target: "worker", "{l}");
                if tail.len() == 10 {
                    tail.pop_front();
                }
                tail.push_back(l);
            }
            tail.into_iter().collect::<Vec<_>>().join(" | ")
        })
    });
    // Lines are read apart from the conversation, so that a node's
    // heartbeats count while a model call is in flight.
    let heard = LastHeard::new();
    // Bounded in lines and, with the caps below, in bytes: one bundle and
    // eight small lines at most wait here.
    let (line_tx, mut lines) = tokio::sync::mpsc::channel::<String>(8);
    let reader = {
        let heard = heard.clone();
        tokio::spawn(async move {
            let mut from = BufReader::new(stdout);
            // Capped: a node's channel is not this program's to trust.
            let mut max = crate::from_node::LINE_MAX;
            loop {
                let l = match crate::from_node::read_line(&mut from, max).await {
                    Ok(Some(l)) => {
                        max = crate::from_node::next_line_max(max, l.len());
                        l
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "the worker's channel sent what is not a line of the protocol; reading no more of it");
                        break;
                    }
                };
                heard.now();
                if l == swarm_protocol::worker::HEARTBEAT_LINE {
                    continue;
                }
                if line_tx.send(l).await.is_err() {
                    break;
                }
            }
        })
    };
    // And to a node, heartbeats of this side.
    let beats = remote.as_ref().map(|_| {
        let stdin = stdin.clone();
        tokio::spawn(async move {
            let every = Duration::from_secs(swarm_protocol::worker::HEARTBEAT_SECS);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                if send(&mut *stdin.lock().await, &ToWorker::Heartbeat)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        })
    });

    let mut turns = 0;
    let mut result: Option<Outcome> = None;
    // Where an attempt's time goes, for the debug log.
    let began = std::time::Instant::now();
    let mut first_call: Option<Duration> = None;
    if let Err(e) = send(&mut *stdin.lock().await, &ToWorker::Start(Box::new(start))).await {
        result = Some(ended(
            Ended::Crashed,
            format!("cannot talk to the worker: {e}"),
            0,
        ));
    }
    let stopped = stop_signal(
        ctx,
        enclosure,
        cancel,
        remote.clone().map(|n| (n, heard.clone())),
    );
    tokio::pin!(stopped);
    let caller = Caller {
        project: &ctx.project,
        task: Some(task),
        attempt: Some(attempt),
        role: swarm_config::ModelRole::Worker,
        turn: 0,
    };

    while result.is_none() {
        let line = tokio::select! {
            l = lines.recv() => l,
            why = &mut stopped => {
                result = Some(why.outcome(ctx, turns));
                break;
            }
        };
        let Some(line) = line else {
            break; // EOF: the process ended; its exit status says how
        };
        // The kernel may have OOM-killed a command between two polls: the
        // attempt ends here, before the worker takes another turn.
        if let Some(reason) = enclosure
            .cheap_check()
            .then(|| enclosure.over_limit())
            .flatten()
        {
            result = Some(over_memory(reason, turns));
            break;
        }
        let msg: FromWorker = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                result = Some(ended(
                    Ended::Crashed,
                    format!(
                        "worker sent an invalid message ({e}): {}",
                        truncate(&line, 200)
                    ),
                    turns,
                ));
                break;
            }
        };
        match msg {
            FromWorker::ModelRequest {
                seq,
                turn,
                messages,
                tools,
            } => {
                first_call.get_or_insert_with(|| began.elapsed());
                turns = turn;
                live.turn(turn);
                *transcript = messages.clone();
                let call = ctx
                    .gateway
                    .complete(Caller { turn, ..caller }, messages, tools);
                let reply = tokio::select! {
                    r = call => r,
                    why = &mut stopped => {
                        result = Some(why.outcome(ctx, turns));
                        break;
                    }
                };
                let result_msg = match reply {
                    Ok(c) => {
                        transcript.push(c.reply.message.clone());
                        ModelResult::Ok {
                            message: c.reply.message,
                            usage: c.reply.usage,
                        }
                    }
                    // The project is halting: its run stops this worker
                    // now, and the attempt ends `interrupted`.
                    Err(CallError::Halted(_)) => {
                        result = Some((&mut stopped).await.outcome(ctx, turns));
                        break;
                    }
                    // Masked here: commands the model runs can read what the
                    // worker process holds, and a worker never holds a key.
                    Err(e) => ModelResult::Error {
                        error: ctx.gateway.redactor().redact(&e.to_string()).into_owned(),
                    },
                };
                if let Err(e) = send(
                    &mut *stdin.lock().await,
                    &ToWorker::ModelReply {
                        seq,
                        result: result_msg,
                    },
                )
                .await
                {
                    // The worker is gone: its exit status and last words
                    // (below) say more than the broken pipe.
                    tracing::debug!(error = %e, "cannot send the model's reply to the worker");
                    break;
                }
            }
            FromWorker::Progress { turn, tool, detail } => {
                turns = turn;
                live.tool(turn, &tool);
                let data = serde_json::json!({"attempt": attempt, "turn": turn, "tool": tool, "detail": detail});
                let _ = ctx
                    .store
                    .append_event(&ctx.project, Some(task), "tool", &data);
                let _ = ctx.progress.send(Progress::tool(
                    &ctx.project,
                    task,
                    attempt,
                    turn,
                    &tool,
                    &detail,
                ));
            }
            FromWorker::Finished {
                summary,
                commit,
                turns,
                notes,
            } => {
                // The node's work is done (its commits came ahead of this);
                // its clean-up, this side's wait for the channel to close
                // and the fetch need no slot there.
                if let Some(slot) = &slot {
                    slot.free();
                }
                result = Some(Outcome::Committed {
                    branch: branch_name(task, attempt),
                    commit,
                    summary,
                    turns,
                    notes,
                });
            }
            FromWorker::Failed { reason, turns } => {
                result = Some(ended(Ended::Failed, reason, turns));
            }
            FromWorker::Stuck { reason, turns } => {
                result = Some(ended(Ended::Stuck, reason, turns));
            }
            FromWorker::OverMemory { reason } => {
                result = Some(over_memory(reason, turns));
            }
            // A node's commits, ahead of its `Finished` (docs/scale-out.md).
            // Only for this attempt's branch and up to the cap; the fetch
            // takes nothing but that branch either way (`from_node`).
            FromWorker::Commits { branch, bundle } if remote.is_some() => {
                let path = bundle_path(ctx, task, attempt);
                let saved = match crate::from_node::bundle_to_keep(
                    &branch,
                    &branch_name(task, attempt),
                    &bundle,
                ) {
                    // Up to 64 MB: written off the runtime's threads.
                    Ok(bytes) => async {
                        tokio::fs::create_dir_all(path.parent().unwrap_or(&path)).await?;
                        tokio::fs::write(&path, bytes).await
                    }
                    .await
                    .map_err(|e: std::io::Error| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = saved {
                    tracing::warn!(task = %task, attempt, branch = ?branch, error = %e, "cannot keep the node's bundle; fetching the commit instead");
                }
            }
            other => {
                tracing::warn!(?other, "unexpected worker message");
            }
        }
    }
    if let Some(b) = beats {
        b.abort();
    }
    drop(stdin);
    drop(lines);

    let reported = began.elapsed();
    let status = stop(ctx, &mut child, enclosure, result.as_ref()).await;
    tracing::debug!(task = %task, attempt, first_call_ms = first_call.map(|d| d.as_millis()), reported_ms = reported.as_millis(), stopped_ms = began.elapsed().as_millis(), "worker's timeline");
    reader.abort();
    let tail = match stderr_tail {
        Some(h) => tokio::time::timeout(Duration::from_millis(500), h)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default(),
        None => String::new(),
    };
    match result {
        Some(r) => r,
        None => {
            // The kernel's OOM killer took the worker or a command of it.
            if let Some(reason) = enclosure.over_limit() {
                return over_memory(reason, turns);
            }
            let how = match status {
                Some(s) => describe_status(s),
                None => "unknown exit status".into(),
            };
            let mut reason = format!("worker process ended without a result ({how})");
            if !tail.is_empty() {
                reason.push_str(": ");
                reason.push_str(&truncate(&tail, 500));
            }
            ended(Ended::Crashed, reason, turns)
        }
    }
}

/// Ends the worker and its whole tree. A worker that reported its result
/// exits by itself (up to 2 s); otherwise, and after a timeout or a stop,
/// the tree gets SIGTERM, then SIGKILL after the shutdown grace. Over the
/// memory limit there is no grace.
async fn stop(
    ctx: &BuiltinRunner,
    child: &mut swarm_exec::ChildProcess,
    enclosure: &swarm_exec::Enclosure,
    result: Option<&Outcome>,
) -> Option<std::process::ExitStatus> {
    let pid = child.pid();
    let reported = matches!(
        result,
        Some(Outcome::Committed { .. })
            | Some(Outcome::Ended {
                how: Ended::Failed | Ended::Stuck,
                ..
            })
    );
    let over_memory = matches!(
        result,
        Some(Outcome::Ended {
            how: Ended::MemoryLimit,
            ..
        })
    );
    if reported || result.is_none() {
        if let Ok(s) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            return s.ok();
        }
    }
    let grace = if over_memory {
        Duration::ZERO
    } else {
        ctx.shutdown_grace
    };
    if !grace.is_zero() {
        let _ = swarm_exec::signal_group(pid, Signal::SIGTERM);
        enclosure.signal_all(Signal::SIGTERM);
        tracing::info!(%pid, "worker: SIGTERM sent to its process tree");
        let until = tokio::time::Instant::now() + grace;
        // The grace ends early once every process of the tree is gone.
        while tokio::time::Instant::now() < until {
            if let Ok(status) = tokio::time::timeout(Duration::from_millis(50), child.wait()).await
            {
                if enclosure.pids().is_empty() {
                    return status.ok();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = swarm_exec::signal_group(pid, Signal::SIGKILL);
    let killed = enclosure.signal_all(Signal::SIGKILL);
    tracing::info!(%pid, killed, "worker: SIGKILL sent to what was left of its tree");
    child.wait().await.ok()
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "unknown exit status".into(),
    }
}

async fn send(stdin: &mut tokio::process::ChildStdin, msg: &ToWorker) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await
}

/// The attempt's conversation, for debugging: `<project>/transcripts/<task>-<attempt>.json`.
fn write_transcript(
    ctx: &BuiltinRunner,
    task: &TaskId,
    attempt: u32,
    messages: &[ChatMessage],
    outcome: &Outcome,
) {
    let path = crate::operator::transcript_file(&ctx.transcripts_dir, task, attempt);
    let outcome = match outcome {
        Outcome::Committed {
            branch: _,
            summary,
            commit,
            turns,
            notes: _,
        } => {
            serde_json::json!({"result": "finished", "summary": summary, "commit": commit, "turns": turns})
        }
        Outcome::Ended { how, reason, turns } => {
            serde_json::json!({"result": how.recorded_as().as_str(), "reason": reason, "turns": turns})
        }
    };
    let mut doc = serde_json::json!({"task": task, "attempt": attempt, "outcome": outcome, "messages": messages});
    // Tool outputs may hold anything a command printed.
    ctx.gateway.redactor().redact_json(&mut doc);
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(&ctx.transcripts_dir)?;
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?,
        )
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, path = %path.display(), "could not write the transcript");
    }
}

#[cfg(test)]
mod usage_limit_tests {
    use super::*;

    #[test]
    fn usage_limit_messages_give_their_reset() {
        let soon = std::time::SystemTime::now() + Duration::from_secs(120);
        let epoch = soon
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let d = usage_limit_reset(&format!("Claude AI usage limit reached|{epoch}")).unwrap();
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(110),
            "{d:?}"
        );
        assert_eq!(
            usage_limit_reset("You've hit your usage limit. Try again in 2 hours."),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            usage_limit_reset("Quota exceeded for model; please retry in 56s"),
            Some(Duration::from_secs(56))
        );
        assert_eq!(
            usage_limit_reset("5-hour limit reached"),
            Some(crate::gateway::DEFAULT_QUOTA_BLOCK)
        );
        assert_eq!(
            usage_limit_reset("agent claude failed (exit code 1): SyntaxError"),
            None
        );
    }
}
