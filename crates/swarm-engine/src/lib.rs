//! The engine: planner, scheduler, supervisor of worker processes, merge
//! queue, verify, packager and recovery. The only crate that knows all the
//! others. See docs/architecture.md.

mod driver;
mod gateway;
pub mod packager;
pub mod plan;
mod planner;
pub mod prompts;
mod run;
mod verify;

pub use gateway::Gateway;
pub use prompts::CommandResult;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use swarm_config::{Config, RunLimits};
use swarm_llm::ModelClient;
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
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// How the engine starts workers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The `agentswarm` executable; workers are `<program> <worker_args…>`.
    pub worker_program: PathBuf,
    pub worker_args: Vec<OsString>,
    /// SIGTERM to a worker, then SIGKILL after this.
    pub shutdown_grace: Duration,
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
}

pub struct Engine {
    config: Config,
    store: Arc<dyn Store>,
    gateway: Gateway,
    settings: EngineSettings,
    /// Worker slots over all projects (`MAX_CONCURRENT_WORKERS`).
    slots: Arc<Semaphore>,
    progress: broadcast::Sender<Progress>,
}

impl Engine {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        model: Arc<dyn ModelClient>,
        settings: EngineSettings,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_concurrent_workers as usize));
        let (progress, _) = broadcast::channel(4096);
        let gateway = Gateway::new(model, store.clone());
        Self {
            config,
            store,
            gateway,
            settings,
            slots,
            progress,
        }
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

    /// Creates a project for `goal`. With `plan`, the planner is skipped: the
    /// plan is validated (an invalid one is an error listing every problem)
    /// and stored at once.
    pub fn create_project(&self, goal: &str, plan: Option<Plan>) -> Result<ProjectId> {
        let limits = self.config.run.clone();
        if let Some(p) = &plan {
            let problems = plan::validate_plan(p, limits.max_tasks);
            if !problems.is_empty() {
                return Err(Error::InvalidPlan(problems));
            }
        }
        let id = new_project_id();
        let options = serde_json::to_value(&limits).map_err(|e| Error::Other(e.to_string()))?;
        self.store.create_project(&NewProject {
            id: id.clone(),
            goal: goal.to_owned(),
            options,
        })?;
        if let Some(p) = plan {
            self.store.save_plan(&id, &p, &new_tasks(&p, 0))?;
            self.store.append_event(
                &id,
                None,
                "plan",
                &serde_json::json!({"source": "user", "tasks": p.tasks.len()}),
            )?;
        }
        Ok(id)
    }

    /// Plans (if needed), runs and delivers `project` until it ends or
    /// `cancel` fires. Safe to call again on a stopped project (`resume`):
    /// finished tasks are never run again.
    pub async fn run(&self, project: &ProjectId, cancel: CancellationToken) -> Result<RunReport> {
        run::run_project(self, project, cancel).await
    }

    fn limits_of(&self, options: &serde_json::Value) -> RunLimits {
        serde_json::from_value(options.clone()).unwrap_or_else(|_| self.config.run.clone())
    }

    fn emit(
        &self,
        project: &ProjectId,
        task: Option<&TaskId>,
        kind: &'static str,
        message: String,
    ) {
        let _ = self.progress.send(Progress {
            project: project.clone(),
            task: task.cloned(),
            kind,
            message,
        });
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
