//! The engine: planner, scheduler, supervisor of worker processes, merge
//! queue, verify, packager and recovery. The only crate that knows all the
//! others. See docs/architecture.md.

pub mod checks;
pub mod continuation;
mod delivery;
mod driver;
mod from_node;
pub mod gate;
mod gateway;
mod mainline;
pub mod metrics;
pub mod nodes;
pub mod operator;
pub mod packager;
pub mod plan;
mod planner;
pub mod probe;
pub mod prompts;
pub mod prune;
mod recovery;
mod redacted;
pub mod repomap;
pub mod review;
mod run;
pub mod runner;
mod scheduler;
pub mod serve;
pub mod source;
mod verify;
pub mod views;
mod warm;
mod wording;

pub use gate::GateStatus;
pub use gateway::{Gateway, Tape};
pub use metrics::{
    LiveWorker, Metrics, MetricsFormat, MetricsText, QuotaStatus, RateLimitStatus, SwarmStatus,
};
pub use prompts::CommandResult;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use swarm_config::{Config, RunLimits};
use swarm_exec::sandbox::{SandboxPolicy, DEFAULT_READ_ONLY};
use swarm_protocol::{Plan, ProjectId, ProjectState, TaskId, TaskKind};
use swarm_store::{NewProject, NewTask, Store};
use tokio::sync::{broadcast, Semaphore};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] swarm_store::Error),
    #[error(transparent)]
    Config(#[from] swarm_config::Error),
    #[error("git: {0}")]
    Git(#[from] swarm_git::Error),
    #[error("the plan is invalid:\n  - {}", .0.join("\n  - "))]
    InvalidPlan(Vec<String>),
    #[error("project {0} was cancelled; it cannot be resumed")]
    Cancelled(ProjectId),
    #[error("invalid options:\n  - {}", .0.join("\n  - "))]
    InvalidOptions(Vec<String>),
    /// Empty, or longer than [`MAX_GOAL_CHARS`]: refused before it is stored.
    #[error("{0}")]
    InvalidGoal(String),
    /// A cost budget for models without a price: it could not be enforced.
    #[error("{0}")]
    UnpricedBudget(String),
    #[error("project {0} is {1}: {hint}", hint = resume_hint(*.1))]
    NotResumable(ProjectId, ProjectState),
    #[error(
        "project {0} is being run by another agentswarm process (the `serve` daemon or another \
         `run`/`resume`); `agentswarm status {0}` shows its progress, `agentswarm cancel {0}` stops it"
    )]
    Busy(ProjectId),
    /// A `--repo`/`--base` that cannot be a project's starting point: said
    /// before anything is stored or any model is called.
    #[error("{0}")]
    InvalidSource(String),
    #[error("project {0} has no task {1}; `agentswarm status {0}` lists its tasks")]
    NoSuchTask(ProjectId, TaskId),
    /// A review decision on something that does not wait for one.
    #[error("{0}")]
    NotInReview(String),
    /// A review decision that cannot be taken as given (an empty comment).
    #[error("{0}")]
    InvalidReview(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

fn resume_hint(state: ProjectState) -> &'static str {
    if state.is_resumable() {
        return "it can be resumed";
    }
    match state {
        ProjectState::Done => "nothing to resume; its delivery is written",
        ProjectState::Cancelled => "a cancelled project cannot be resumed; submit the goal again",
        ProjectState::Queued
        | ProjectState::Planning
        | ProjectState::Running
        | ProjectState::Failed
        | ProjectState::Interrupted
        | ProjectState::BudgetExhausted
        | ProjectState::Paused => "it is queued or running already; the daemon carries it on",
    }
}

/// How the engine starts workers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The `agentswarm` executable; workers are `<program> <worker_args…>`.
    pub worker_program: PathBuf,
    pub worker_args: Vec<OsString>,
    /// SIGTERM to a worker, then SIGKILL after this.
    pub shutdown_grace: Duration,
}

impl EngineSettings {
    /// Workers are this executable's `worker` command, behind the configured
    /// wrapper (`worker_wrapper`), if any.
    pub fn for_executable(exe: PathBuf, config: &Config) -> Self {
        let mut argv: Vec<OsString> = config.worker_wrapper.iter().map(OsString::from).collect();
        argv.push(exe.into_os_string());
        argv.push("worker".into());
        let program = PathBuf::from(argv.remove(0));
        Self {
            worker_program: program,
            worker_args: argv,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
        }
    }
}

/// One line of live progress (also stored as an event where it matters).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Progress {
    pub project: ProjectId,
    pub task: Option<TaskId>,
    /// `task_state`, `tool`, `project`, `plan`, `verify`, `info`.
    pub kind: &'static str,
    pub message: String,
}

impl Progress {
    fn tool(
        project: &ProjectId,
        task: &TaskId,
        attempt: u32,
        turn: u32,
        tool: &str,
        detail: &str,
    ) -> Self {
        Self {
            project: project.clone(),
            task: Some(task.clone()),
            kind: "tool",
            message: format!("task {task} (attempt {attempt}, turn {turn}): {tool} {detail}"),
        }
    }
}

/// What `run` reports when it ends.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    pub project_id: ProjectId,
    pub status: ProjectState,
    pub delivery: Option<PathBuf>,
    pub manifest: Option<PathBuf>,
    pub tasks_total: usize,
    pub tasks_done: usize,
    /// Why the run did not end `done` (failed tasks, verify output, planner problems).
    pub error: Option<String>,
    /// On an existing repository: the delivery branch written there
    /// (`agentswarm/<project>`), once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// On an existing repository: the base commit the project started from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// On an existing repository: `changes.patch` (against the base), once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<PathBuf>,
}

pub struct Engine {
    config: Config,
    store: Arc<dyn Store>,
    gateway: Gateway,
    settings: EngineSettings,
    /// Worker slots over all projects and nodes (`MAX_CONCURRENT_WORKERS`
    /// here plus each node's `max_workers`).
    slots: Arc<Semaphore>,
    /// The machines attempts run on, and their slots (docs/scale-out.md).
    nodes: Arc<nodes::NodeSet>,
    progress: broadcast::Sender<Progress>,
    limiter: Arc<swarm_exec::MemoryLimiter>,
    gate: Arc<gate::Gate>,
    /// Shared with the gateway, which counts the model calls in it.
    metrics: Arc<Metrics>,
    /// The workers and verify runs running now.
    live: Arc<metrics::LiveTable>,
}

impl Engine {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        gateway: Gateway,
        settings: EngineSettings,
    ) -> Self {
        let nodes = Arc::new(nodes::NodeSet::new(
            config.max_concurrent_workers,
            &config.local_labels,
            &config.nodes,
            config.data_dir.join("ssh"),
        ));
        if tokio::runtime::Handle::try_current().is_ok() {
            nodes.start();
        }
        let slots = Arc::new(Semaphore::new(nodes.total_slots() as usize));
        let (progress, _) = broadcast::channel(4096);
        let store: Arc<dyn Store> = Arc::new(redacted::RedactedStore::new(
            store,
            gateway.redactor().clone(),
        ));
        let limiter = Arc::new(memory_limiter(&config));
        tracing::info!(
            mechanism = limiter.mechanism().as_str(),
            reason = limiter.reason(),
            "memory limit"
        );
        let gate = Arc::new(gate::Gate::from_config(&config));
        let metrics = gateway.metrics().clone();
        Self {
            config,
            store,
            gateway,
            settings,
            slots,
            nodes,
            progress,
            limiter,
            gate,
            metrics,
            live: Arc::default(),
        }
    }

    /// Kills and reaps, every two seconds until `cancel` fires, what the
    /// workers left behind and this process adopted (see
    /// `swarm_exec::reap_orphans`). Supervisors run it beside their work.
    pub fn spawn_orphan_sweeper(cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
                let found = tokio::task::spawn_blocking(swarm_exec::reap_orphans)
                    .await
                    .unwrap_or(0);
                if found > 0 {
                    tracing::info!(found, "killed and reaped processes left by workers");
                }
            }
        })
    }

    /// The memory-limit mechanism in use and why.
    pub fn limiter(&self) -> &swarm_exec::MemoryLimiter {
        &self.limiter
    }

    /// Workers running now over all projects of this engine.
    pub fn running_workers(&self) -> usize {
        self.nodes.total_slots() as usize - self.slots.available_permits()
    }

    /// Why no new worker may start now, if so.
    pub fn gate_closed(&self) -> Option<String> {
        self.gate.check().err()
    }

    /// The workers (and verify runs) of every project running now, sorted
    /// by project, then start time.
    pub fn live_workers(&self) -> Vec<LiveWorker> {
        self.live.snapshot()
    }

    /// A snapshot of the swarm: slots, ready tasks, the resource gate and
    /// the rate limiter. Reads the store (every unfinished project's tasks)
    /// and `/proc`: a few milliseconds at most, blocking.
    pub fn swarm_status(&self) -> SwarmStatus {
        let (ready_tasks, review_tasks, _) = self.store_counts();
        self.status_with(ready_tasks, review_tasks)
    }

    fn status_with(&self, ready_tasks: u32, review_tasks: u32) -> SwarmStatus {
        let limiter = self.gateway.rate_limit();
        let gate = self.gate.status();
        let now = std::time::SystemTime::now();
        SwarmStatus {
            workers_running: u32::try_from(self.live.len()).unwrap_or(u32::MAX),
            workers_cap: self.nodes.total_slots(),
            ready_tasks,
            review_tasks,
            nodes: self.nodes.status(&gate, &self.gate),
            gate,
            rate_limit: RateLimitStatus {
                rpm: limiter.limit,
                started_in_window: limiter.started_in_window,
                waiting: limiter.waiting,
                wait_seconds_total: self.metrics.rate_limit_wait_seconds(),
            },
            quota_blocked: self
                .gateway
                .all_holds()
                .iter()
                .map(|b| QuotaStatus::of(b, now))
                .collect(),
        }
    }

    /// Ready tasks and tasks waiting in review over every unfinished
    /// project, and projects per state (every state, 0 where none is in
    /// it). A store error is logged and counts nothing.
    fn store_counts(&self) -> (u32, u32, Vec<(ProjectState, u32)>) {
        let mut per_state: Vec<(ProjectState, u32)> =
            ProjectState::ALL.iter().map(|s| (*s, 0)).collect();
        let projects = match self.store.list_projects() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "status: cannot list the projects");
                return (0, 0, per_state);
            }
        };
        let mut ready = 0u32;
        let mut review = 0u32;
        for p in &projects {
            if let Some(n) = per_state.iter_mut().find(|(s, _)| *s == p.state) {
                n.1 += 1;
            }
            if p.state.is_terminal() || p.plan.is_none() {
                continue;
            }
            match self.store.tasks(&p.id) {
                Ok(tasks) => {
                    let n = tasks
                        .iter()
                        .filter(|t| t.state == swarm_protocol::TaskState::Ready)
                        .count();
                    ready = ready.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                    let n = tasks
                        .iter()
                        .filter(|t| t.state == swarm_protocol::TaskState::Review)
                        .count();
                    review = review.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                }
                Err(e) => {
                    tracing::warn!(project = %p.id, error = %e, "status: cannot read the tasks");
                }
            }
        }
        (ready, review, per_state)
    }

    /// The metrics in the Prometheus text format (version 0.0.4), with the
    /// gauges read afresh; see [`Engine::metrics_text_as`].
    pub fn metrics_text(&self) -> MetricsText {
        self.metrics_text_as(MetricsFormat::Prometheus)
    }

    /// The metrics in `format` (pick it with [`MetricsFormat::negotiate`]
    /// from the request's `Accept` header), gauges refreshed from
    /// [`Engine::swarm_status`] and the store. Families:
    /// `agentswarm_workers_running`, `agentswarm_workers_max`,
    /// `agentswarm_ready_tasks`, `agentswarm_gate_open`,
    /// `agentswarm_gate_free_memory_mb`, `agentswarm_gate_load_average`,
    /// `agentswarm_model_calls_total{role,provider,model,outcome}`,
    /// `agentswarm_model_tokens_total{role,provider,model,direction}`,
    /// `agentswarm_model_cost_usd_total{role,provider,model}`,
    /// `agentswarm_model_retries_total{provider,model}`,
    /// `agentswarm_rate_limit_wait_seconds_total`,
    /// `agentswarm_rate_limit_waiting`, `agentswarm_rate_limit_rpm`,
    /// `agentswarm_provider_quota_blocked_seconds{provider}`,
    /// `agentswarm_attempt_duration_seconds{kind,outcome}` and
    /// `agentswarm_task_duration_seconds{kind}` (histograms),
    /// `agentswarm_projects{state}`, `agentswarm_tasks_finished_total{state}`.
    pub fn metrics_text_as(&self, format: MetricsFormat) -> MetricsText {
        let (ready, review, projects) = self.store_counts();
        let status = self.status_with(ready, review);
        self.metrics.refresh(&status, &projects);
        let blocked: Vec<(String, u64)> = status
            .quota_blocked
            .iter()
            .map(|b| (b.provider.clone(), b.resets_in_secs))
            .collect();
        self.metrics.quota(&blocked);
        self.metrics.render(format)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Live progress of every run of this engine.
    pub fn subscribe(&self) -> broadcast::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Takes the lock that makes one process the only runner of `project`;
    /// see [`lock_project`].
    pub fn lock(&self, project: &ProjectId) -> Result<ProjectLock> {
        lock_project(&self.config, project)
    }

    /// See [`create_project`].
    pub fn create_project(&self, goal: &str, plan: Option<Plan>) -> Result<ProjectLock> {
        create_project(&self.config, self.store.as_ref(), goal, plan)
    }

    /// See [`continuation::continue_project`] (`run --continue`).
    pub async fn continue_project(&self, project: &ProjectLock, goal: &str) -> Result<Vec<TaskId>> {
        continuation::continue_project(self, project, goal).await
    }

    /// See [`create_project_from`]: a project on an existing repository.
    pub fn create_project_on(
        &self,
        goal: &str,
        plan: Option<Plan>,
        source: Option<&source::SourceRequest>,
    ) -> Result<ProjectLock> {
        create_project_from(
            &self.config,
            self.store.as_ref(),
            goal,
            plan,
            self.config.run.clone(),
            source,
        )
    }

    /// Plans (if needed), runs and delivers the locked project until it ends
    /// or `cancel` fires. Safe to call again on a stopped project (`resume`):
    /// finished tasks are never run again.
    pub async fn run(&self, project: &ProjectLock, cancel: CancellationToken) -> Result<RunReport> {
        run::run_project(self, &project.id, cancel, run::Mode::Run).await
    }

    /// Crash recovery only: reconciles the project's `running` and `merging`
    /// tasks with git, repairs `main` and removes stale worktrees and task
    /// branches, without starting anything.
    pub async fn recover(&self, project: &ProjectLock) -> Result<()> {
        run::run_project(
            self,
            &project.id,
            CancellationToken::new(),
            run::Mode::RecoverOnly,
        )
        .await
        .map(|_| ())
    }

    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// What the commands of a project (its limits, its repository at
    /// `repo_root`) may touch: the system's trees read-only; never the data
    /// directory, outputs, secrets, config or the service's home.
    pub fn sandbox_policy(&self, limits: &RunLimits, repo_root: &Path) -> SandboxPolicy {
        let c = &self.config;
        let mut read_only: Vec<PathBuf> = DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect();
        read_only.extend(c.sandbox.read_paths.iter().cloned());
        // `git status`, `git diff` and `git log` in a worktree read the
        // repository; its admin files are never writable from a command.
        read_only.push(repo_root.join(".git"));
        let mut hidden = vec![
            c.data_dir.clone(),
            c.outputs_dir.clone(),
            PathBuf::from("/etc/agentswarm"),
        ];
        hidden.extend(c.secrets_file.clone());
        hidden.extend(c.file.clone());
        hidden.extend(c.sandbox.home.clone());
        SandboxPolicy {
            mode: c.sandbox.mode,
            mechanism: c.sandbox.mechanism,
            allow_network: limits.allow_network,
            read_only,
            hidden,
            limits: c.sandbox.limits,
            uid: c.sandbox.uid,
            resolved: None,
        }
    }

    fn emit(
        &self,
        project: &ProjectId,
        task: Option<&TaskId>,
        kind: &'static str,
        message: String,
    ) {
        let message = self.gateway.redactor().redact(&message).into_owned();
        let _ = self.progress.send(Progress {
            project: project.clone(),
            task: task.cloned(),
            kind,
            message,
        });
    }
}

/// The memory-limit mechanism `config.memory_limiter` asks for, detected on
/// this machine (`agentswarm doctor` shows the same).
pub fn memory_limiter(config: &Config) -> swarm_exec::MemoryLimiter {
    // The config crate already refused any other value.
    let choice = config
        .memory_limiter
        .parse::<swarm_exec::LimiterChoice>()
        .unwrap_or_default();
    swarm_exec::MemoryLimiter::detect(choice)
}

/// Takes the lock that makes one process the only runner of `project` (a
/// `flock` on `<data dir>/locks/<project>.lock`, released when the holder
/// exits, however it exits).
pub fn lock_project(config: &Config, project: &ProjectId) -> Result<ProjectLock> {
    let dir = config.data_dir.join("locks");
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Other(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(format!("{project}.lock"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::Other(format!("cannot open {}: {e}", path.display())))?;
    // A few tries: `status` probes the lock for an instant ([`runner_alive`]).
    let mut file = file;
    for _ in 0..5 {
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(flock) => {
                return Ok(ProjectLock {
                    id: project.clone(),
                    _flock: flock,
                })
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                file = f;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err((_, e)) => {
                return Err(Error::Other(format!("cannot lock {}: {e}", path.display())))
            }
        }
    }
    Err(Error::Busy(project.clone()))
}

/// Whether some process holds `project`'s lock now, i.e. runs it. Probes
/// with a shared lock, released at once (a runner taking the lock in that
/// instant retries, see [`lock_project`]); creates no file. When the lock
/// cannot be probed, says yes: the store's word stands.
pub fn runner_alive(config: &Config, project: &ProjectId) -> bool {
    let path = config
        .data_dir
        .join("locks")
        .join(format!("{project}.lock"));
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_probe) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err(_) => true,
    }
}

/// The longest goal a project takes, in characters (256 Ki): a goal is sent
/// in every planner request and listed by the API; details belong in the
/// repository or the plan.
pub const MAX_GOAL_CHARS: usize = 256 * 1024;

/// Why `goal` cannot be a project's goal, if it cannot.
pub fn goal_problem(goal: &str) -> Option<String> {
    if goal.trim().is_empty() {
        return Some("the goal is empty; describe the software to build".into());
    }
    let chars = goal.chars().count();
    (chars > MAX_GOAL_CHARS).then(|| {
        format!(
            "the goal is {chars} characters long, more than the {MAX_GOAL_CHARS} a project takes; \
             put the details in the plan or the repository and keep the goal to what to build"
        )
    })
}

/// Why `limits` hold a cost budget (`max_cost_usd`) that cannot be
/// measured, if they do: some model a role uses (primary or fallback) has
/// no price, so its calls would count $0 and the budget would never be
/// reached. Without a model configuration nothing is known yet: no problem.
pub fn budget_problem(config: &Config, limits: &RunLimits) -> Option<String> {
    let max = limits.max_cost_usd?;
    let models = config.models().ok()?;
    let unpriced = models.unpriced();
    if unpriced.is_empty() {
        return None;
    }
    let names = unpriced
        .iter()
        .map(|m| format!("\"{m}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let first = unpriced.first().copied().unwrap_or_default();
    Some(format!(
        "max_cost_usd {max} cannot be enforced: no price is configured for {names}, whose calls \
         would count $0; add one per model to agentswarm.toml, e.g. \
         [prices.\"{first}\"] input_per_mtok = 0.40 and output_per_mtok = 1.60 (US dollars per \
         million tokens; see docs/providers.md), or bound the project with --max-tokens instead"
    ))
}

/// Creates a project for `goal` and holds its lock (drop the lock to leave
/// the project to `agentswarm serve`). With `plan`, the planner is skipped:
/// the plan is validated (an invalid one is an error listing every problem)
/// and stored at once. Needs no model: `submit` uses it.
pub fn create_project(
    config: &Config,
    store: &dyn Store,
    goal: &str,
    plan: Option<Plan>,
) -> Result<ProjectLock> {
    create_project_with(config, store, goal, plan, config.run.clone())
}

/// [`create_project`] with run limits other than the configured ones (a
/// project submitted through the API with its own budget).
pub fn create_project_with(
    config: &Config,
    store: &dyn Store,
    goal: &str,
    plan: Option<Plan>,
    limits: RunLimits,
) -> Result<ProjectLock> {
    create_project_from(config, store, goal, plan, limits, None)
}

/// [`create_project_with`] on an existing repository (`--repo`): `source`
/// is checked first ([`source::check`]); a bad one is an error before
/// anything is stored.
pub fn create_project_from(
    config: &Config,
    store: &dyn Store,
    goal: &str,
    plan: Option<Plan>,
    limits: RunLimits,
    source: Option<&source::SourceRequest>,
) -> Result<ProjectLock> {
    if let Some(why) = goal_problem(goal) {
        return Err(Error::InvalidGoal(why));
    }
    if let Some(why) = budget_problem(config, &limits) {
        return Err(Error::UnpricedBudget(why));
    }
    if let Some(p) = &plan {
        let problems = plan::validate_plan(p, limits.max_tasks);
        if !problems.is_empty() {
            return Err(Error::InvalidPlan(problems));
        }
    }
    let source = match source {
        Some(req) => Some(
            serde_json::to_value(source::check(config, req)?)
                .map_err(|e| Error::Other(e.to_string()))?,
        ),
        None => None,
    };
    let id = new_project_id();
    let lock = lock_project(config, &id)?;
    let options = serde_json::to_value(&limits).map_err(|e| Error::Other(e.to_string()))?;
    store.create_project(&NewProject {
        id: id.clone(),
        goal: goal.to_owned(),
        options,
        source,
    })?;
    if let Some(p) = plan {
        store.save_plan(&id, &p, &new_tasks(&p, 0))?;
        store.append_event(
            &id,
            None,
            "plan",
            &serde_json::json!({"source": "user", "tasks": p.tasks.len()}),
        )?;
    }
    Ok(lock)
}

/// Held while a process runs a project; see [`lock_project`].
#[derive(Debug)]
pub struct ProjectLock {
    id: ProjectId,
    _flock: nix::fcntl::Flock<std::fs::File>,
}

impl ProjectLock {
    pub fn id(&self) -> &ProjectId {
        &self.id
    }
}

/// Plan tasks as store rows.
fn new_tasks(plan: &Plan, fix_round: u32) -> Vec<NewTask> {
    plan.tasks
        .iter()
        .map(|t| NewTask {
            id: t.id.clone(),
            title: t.title.clone(),
            description: t.description.clone(),
            kind: t.kind,
            depends_on: t.depends_on.clone(),
            files: t.files.clone(),
            commands: if t.kind == TaskKind::Verify {
                t.commands.clone()
            } else {
                Vec::new()
            },
            fix_round,
        })
        .collect()
}

/// `20261125-033000-a1b2`: sortable by creation time, unique enough for one host.
fn new_project_id() -> ProjectId {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let digits: String = now.chars().filter(|c| c.is_ascii_digit()).collect();
    let (date, time) = digits.split_at(8.min(digits.len()));
    ProjectId::new(format!("{date}-{time}-{:04x}", fastrand::u16(..)))
}
