//! Durable state: projects, tasks and their dependencies, attempts, an
//! append-only event log and model-call accounting.
//!
//! [`Store`] is the interface the engine uses; [`SqliteStore`] is the
//! embedded implementation (one file, WAL, `synchronous=FULL`,
//! `busy_timeout`, writes in `BEGIN IMMEDIATE`). A PostgreSQL backend can be
//! added behind the same trait.
//!
//! Every task state change is one conditional
//! `UPDATE … WHERE project_id = ? AND id = ? AND state = ?` that reports
//! whether it happened, and appends a `task_state` event in the same
//! transaction.

mod sqlite;

pub use sqlite::SqliteStore;

use serde::{Deserialize, Serialize};
use swarm_protocol::{AttemptOutcome, Plan, ProjectId, ProjectState, TaskId, TaskKind, TaskState};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store database error: {message}")]
    Db {
        message: String,
        /// The database was busy or locked: a later try may succeed.
        busy: bool,
    },
    #[error("store data error: {0}")]
    Data(String),
    #[error(
        "project {0} not found; `agentswarm status` lists the projects in this data directory"
    )]
    ProjectNotFound(ProjectId),
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
}

impl Error {
    /// A busy or locked database may succeed on a later try; nothing else will.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Db { busy: true, .. })
    }
}

/// SQLite's errors become the store's own (the store's users never see
/// `rusqlite`'s types).
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        let busy = matches!(
            &e,
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        Error::Db {
            message: e.to_string(),
            busy,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewProject {
    pub id: ProjectId,
    pub goal: String,
    /// Run options as given (max_tasks, max_attempts, …), stored as JSON so
    /// `resume` runs with the same ones.
    pub options: serde_json::Value,
    /// The existing repository it starts from (a `RepoSource` as JSON), if any.
    #[serde(default)]
    pub source: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: ProjectId,
    pub goal: String,
    /// The plan's name once planned, else empty.
    pub name: String,
    pub state: ProjectState,
    pub plan: Option<Plan>,
    pub options: serde_json::Value,
    /// Fix rounds started so far.
    pub fix_round: u32,
    /// How many times the planner model was asked (initial plan and re-asks).
    pub planner_calls: u32,
    pub error: Option<String>,
    pub final_commit: Option<String>,
    /// Path of the delivery archive once written.
    pub delivery: Option<String>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Why ready tasks are not starting (the resource gate), while that lasts.
    pub waiting: Option<String>,
    /// The existing repository it starts from (a `RepoSource` as JSON), if any.
    #[serde(default)]
    pub source: Option<serde_json::Value>,
}

/// A task as the planner (or a fix round) gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub kind: TaskKind,
    pub depends_on: Vec<TaskId>,
    pub files: Vec<String>,
    pub commands: Vec<String>,
    /// 0 for the initial plan, N for tasks added by fix round N.
    pub fix_round: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub project_id: ProjectId,
    pub id: TaskId,
    pub title: String,
    pub description: String,
    pub kind: TaskKind,
    pub depends_on: Vec<TaskId>,
    pub files: Vec<String>,
    pub commands: Vec<String>,
    pub fix_round: u32,
    /// Insertion order within the project (plan order, then fix rounds).
    pub seq: i64,
    pub state: TaskState,
    /// Number of the current (or last) attempt; 0 before the first.
    pub attempt: u32,
    /// Attempts that count against `max_attempts` (interrupted ones do not).
    pub attempts_counted: u32,
    pub last_error: Option<String>,
    /// Paths whose merge conflicted on the last attempt (named in the next prompt).
    pub conflict_paths: Vec<String>,
    /// The task commit (on `task/<id>/<attempt>`) that was merged.
    pub commit: Option<String>,
    /// The merge commit on `main`.
    pub merge_commit: Option<String>,
    pub summary: Option<String>,
    /// Paths the merged commit changed.
    pub changed_files: Vec<String>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// The reviewer's comment when its last attempt was rejected in review
    /// (named in the next attempt's prompt); cleared when it merges.
    #[serde(default)]
    pub review_comment: Option<String>,
}

/// One conditional task state change. `None` fields are left as they are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskUpdate {
    /// The change happens only if the task is in one of these states.
    pub from: Vec<TaskState>,
    pub to: Option<TaskState>,
    /// …and only if its current attempt is this one.
    pub expect_attempt: Option<u32>,
    pub attempt: Option<u32>,
    pub attempts_counted: Option<u32>,
    /// `Some(None)` clears it.
    pub last_error: Option<Option<String>>,
    pub conflict_paths: Option<Vec<String>>,
    pub commit: Option<String>,
    pub merge_commit: Option<String>,
    pub summary: Option<String>,
    pub changed_files: Option<Vec<String>>,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// `Some(None)` clears it.
    pub review_comment: Option<Option<String>>,
}

/// A person's decision on a task waiting in `review`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewDecision {
    /// `review` → `merging`: the run merges it (after a restart too).
    Approve,
    /// `review` → `ready`: the attempt is recorded `rejected` (not counted
    /// against `max_attempts`) and the next one's prompt carries `comment`.
    Reject { comment: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub project_id: ProjectId,
    pub task_id: TaskId,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// Why it ended (exit code, signal, error text); `None` while running or when merged.
    pub reason: Option<String>,
    pub turns: u32,
    pub commit: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
}

/// How one attempt ended, as the store records it (`Store::finish_attempt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptEnd {
    pub task: TaskId,
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    /// Why it ended; `None` when it merged.
    pub reason: Option<String>,
    /// Model turns the attempt took (a lower figure never replaces a stored one).
    pub turns: u32,
    /// The attempt's own commit, when it made one.
    pub commit: Option<String>,
}

impl AttemptEnd {
    /// The attempt's commit is on `main`.
    pub fn merged(task: &TaskId, attempt: u32, turns: u32, commit: Option<String>) -> Self {
        Self {
            task: task.clone(),
            attempt,
            outcome: AttemptOutcome::Merged,
            reason: None,
            turns,
            commit,
        }
    }

    /// The attempt ended without a merge (`outcome` says how, `reason` why).
    pub fn ended(
        task: &TaskId,
        attempt: u32,
        outcome: AttemptOutcome,
        reason: impl Into<String>,
        turns: u32,
    ) -> Self {
        Self {
            task: task.clone(),
            attempt,
            outcome,
            reason: Some(reason.into()),
            turns,
            commit: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub id: i64,
    pub project_id: ProjectId,
    pub task_id: Option<TaskId>,
    pub ts_ms: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCallRecord {
    pub project_id: ProjectId,
    pub task_id: Option<TaskId>,
    pub attempt: Option<u32>,
    /// `planner`, `worker` or `fixer`.
    pub role: String,
    /// The provider and model that answered (or the last one tried).
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
    pub retries: u32,
    /// Time spent waiting for the rate limits.
    pub waited_ms: u64,
    /// From the model's price in the config; `None` when it has none.
    pub cost_usd: Option<f64>,
    /// `ok` or an error kind such as `http_429`, `timeout`, `invalid_response`.
    pub outcome: String,
    pub ts_ms: i64,
}

/// Totals of model calls for one role, provider and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub role: String,
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub failed_calls: u64,
    pub retries: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Sum over the calls that had a price.
    pub cost_usd: f64,
    /// Calls of a model without a price (their cost is not in `cost_usd`).
    pub unpriced_calls: u64,
}

/// What a project's model calls have used so far (for its budget).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spent {
    pub tokens: u64,
    pub cost_usd: f64,
}

/// The store interface. Implementations are synchronous and fast (one local
/// transaction a call); async callers may call them directly for single
/// statements.
pub trait Store: Send + Sync {
    fn create_project(&self, project: &NewProject) -> Result<()>;
    fn project(&self, id: &ProjectId) -> Result<ProjectRecord>;
    /// Newest first.
    fn list_projects(&self) -> Result<Vec<ProjectRecord>>;
    /// Conditional: happens only when the state is one of `from`. Appends a
    /// `project_state` event. `error` replaces the stored error (None clears it).
    fn set_project_state(
        &self,
        id: &ProjectId,
        from: &[ProjectState],
        to: ProjectState,
        error: Option<&str>,
    ) -> Result<bool>;
    /// Records why ready tasks wait (`None`: they do not).
    fn set_project_waiting(&self, id: &ProjectId, waiting: Option<&str>) -> Result<()>;
    /// Cancels a project that has not ended: the project and every task not
    /// yet finished become `cancelled`. `false` if it had already ended.
    fn cancel_project(&self, id: &ProjectId) -> Result<bool>;
    /// Deletes an ended project (done, failed or cancelled) and all its rows:
    /// tasks, attempts, events, model calls. `false` (nothing deleted) when
    /// it has not ended.
    fn delete_project(&self, id: &ProjectId) -> Result<bool>;
    fn set_planner_calls(&self, id: &ProjectId, calls: u32) -> Result<()>;
    /// Replaces the run options (`resume` with new limits, e.g. a higher budget).
    fn set_project_options(&self, id: &ProjectId, options: &serde_json::Value) -> Result<()>;
    /// Replaces the project's source (its base commit, once a URL is cloned).
    fn set_project_source(&self, id: &ProjectId, source: &serde_json::Value) -> Result<()>;
    fn set_final(
        &self,
        id: &ProjectId,
        final_commit: Option<&str>,
        delivery: Option<&str>,
    ) -> Result<()>;

    /// Stores the validated plan, its name and its tasks (state `pending`) in one
    /// transaction. Fails if the project already has a plan.
    fn save_plan(&self, id: &ProjectId, plan: &Plan, tasks: &[NewTask]) -> Result<()>;
    /// Adds the tasks of fix round `round` (state `pending`), makes
    /// `verify_task` depend on each of them, puts it back to `pending` and sets
    /// the project's `fix_round` — one transaction.
    fn add_fix_tasks(
        &self,
        id: &ProjectId,
        round: u32,
        tasks: &[NewTask],
        verify_task: &TaskId,
    ) -> Result<()>;

    /// In plan order (`seq`).
    fn tasks(&self, id: &ProjectId) -> Result<Vec<TaskRecord>>;
    fn task(&self, id: &ProjectId, task: &TaskId) -> Result<Option<TaskRecord>>;
    /// One conditional UPDATE; `Ok(true)` if it happened. When `to` is set a
    /// `task_state` event (`{"from","to","attempt","error"}`) is appended in the
    /// same transaction.
    fn update_task(&self, id: &ProjectId, task: &TaskId, update: &TaskUpdate) -> Result<bool>;

    fn start_attempt(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        started_ms: i64,
    ) -> Result<()>;
    /// Records how an attempt ended.
    fn finish_attempt(&self, id: &ProjectId, end: &AttemptEnd) -> Result<()>;
    /// Records a person's decision on `task`, which must be in `review` at
    /// `attempt`: the state change, the attempt's outcome (on a reject) and
    /// a `review_approved` / `review_rejected` event, in one durable
    /// transaction. `Ok(false)`: the task was not in review at that attempt.
    fn decide_review(
        &self,
        id: &ProjectId,
        task: &TaskId,
        attempt: u32,
        decision: &ReviewDecision,
    ) -> Result<bool>;
    fn attempts(&self, id: &ProjectId, task: &TaskId) -> Result<Vec<AttemptRecord>>;

    /// Returns the new event's id.
    fn append_event(
        &self,
        id: &ProjectId,
        task: Option<&TaskId>,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64>;
    /// Events with `id > after`, oldest first, at most `limit`.
    fn events(&self, id: &ProjectId, after: i64, limit: usize) -> Result<Vec<EventRecord>>;

    /// The project's events of one kind, newest first, at most `limit`.
    fn events_of_kind(&self, id: &ProjectId, kind: &str, limit: usize) -> Result<Vec<EventRecord>>;
    /// The newest event's id: of `project`, or of the whole store (0: none).
    fn last_event_id(&self, project: Option<&ProjectId>) -> Result<i64>;
    /// Every project's events with `id > after`, oldest first, at most
    /// `limit` (event ids are unique over the store).
    fn all_events(&self, after: i64, limit: usize) -> Result<Vec<EventRecord>>;

    fn record_model_call(&self, call: &ModelCallRecord) -> Result<()>;
    fn usage(&self, id: &ProjectId) -> Result<Vec<UsageTotals>>;
    fn spent(&self, id: &ProjectId) -> Result<Spent>;
}
