//! Payloads of the HTTP API of `agentswarm serve` (docs/api.md; the
//! contract is docs/openapi.json). The server builds them from the store;
//! the CLI reads them when it talks to a running daemon.

use crate::{AttemptOutcome, ProjectState, ReviewMode, TaskState};
use serde::{Deserialize, Serialize};

/// Run options a client may set on a project; what is not given comes from
/// the daemon's configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tasks: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fix_rounds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_network: Option<bool>,
    /// The agent that does the project's tasks unless a task names one (a
    /// name under `[agents]` in agentswarm.toml, or `builtin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Whether a person reviews the work before it lands: `off`, `tasks`
    /// (each task's commit waits for approval before it merges) or
    /// `delivery` (the delivery branch waits for approval).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewMode>,
}

impl ProjectOptions {
    /// What is wrong with the values, one line each (empty: nothing).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let positive = [
            ("max_tasks", self.max_tasks),
            ("max_attempts", self.max_attempts),
            ("max_turns", self.max_turns),
        ];
        for (name, v) in positive {
            if v == Some(0) {
                p.push(format!("{name} must be at least 1"));
            }
        }
        if self.max_tokens == Some(0) {
            p.push("max_tokens must be at least 1 (leave it out for no bound)".to_owned());
        }
        if let Some(c) = self.max_cost_usd {
            if !(c.is_finite() && c > 0.0) {
                p.push(format!(
                    "max_cost_usd must be a positive number of US dollars, not {c}"
                ));
            }
        }
        p
    }
}

/// `POST /api/v1/projects`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub goal: String,
    /// A plan document to run instead of asking the planner; validated as
    /// `agentswarm run --plan` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<serde_json::Value>,
    #[serde(default)]
    pub options: ProjectOptions,
    /// Start from this existing repository (an absolute path on the
    /// server's machine, or a git URL) instead of an empty one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// With `repo`: the branch to start from (default: the branch its
    /// `HEAD` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// With `repo`: push the delivery branch to its remote.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
}

/// `POST /api/v1/projects/{id}/resume`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    #[serde(default)]
    pub options: ProjectOptions,
}

/// A JSON error answer: what went wrong and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub status: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ready` once start-up recovery is done, `recovering` before.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectSummary {
    pub id: String,
    pub goal: String,
    pub name: String,
    pub state: ProjectState,
    pub error: Option<String>,
    pub waiting: Option<String>,
    pub tasks_total: usize,
    pub tasks_done: usize,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// The delivery archive's path on the daemon's machine, once written.
    pub delivery: Option<String>,
    pub delivery_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectList {
    pub projects: Vec<ProjectSummary>,
    /// The store's newest event id: `GET /api/v1/events` with `after` = this
    /// streams only what happens from now on.
    pub last_event_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectDetail {
    pub project: ProjectSummary,
    pub options: serde_json::Value,
    /// The existing repository the project starts from (`repo` at submit),
    /// with its base commit and, once delivered, its branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<crate::source::RepoSource>,
    pub fix_round: u32,
    /// How many times the planner model was asked.
    pub planner_calls: u32,
    pub final_commit: Option<String>,
    pub tasks: Vec<Task>,
    pub usage: Vec<Usage>,
    pub totals: UsageTotals,
    pub verify: Option<VerifyRun>,
    /// The project's newest event id, to start its event stream after.
    pub last_event_id: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub description: String,
    /// `code` or `verify`.
    pub kind: String,
    pub depends_on: Vec<String>,
    pub state: TaskState,
    pub attempt: u32,
    pub attempts_counted: u32,
    pub fix_round: u32,
    pub last_error: Option<String>,
    pub commit: Option<String>,
    pub merge_commit: Option<String>,
    pub summary: Option<String>,
    pub changed_files: Vec<String>,
    /// When its current (or last) attempt started.
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
    /// From `started_ms` to the finish, or to now while it runs (running,
    /// merging); none while it waits for an attempt (pending, ready).
    pub duration_ms: Option<i64>,
    pub worker: Option<Worker>,
    pub attempts: Vec<Attempt>,
    pub archive_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub reason: Option<String>,
    pub turns: u32,
    pub commit: Option<String>,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub transcript_url: Option<String>,
    pub output_url: String,
}

/// The worker running a task now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub attempt: u32,
    pub pid: Option<u32>,
    pub started_ms: i64,
    pub turns: u32,
    pub last_tool: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub role: String,
    pub provider: String,
    pub model: String,
    pub calls: u64,
    pub failed_calls: u64,
    pub retries: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
    pub unpriced_calls: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyRun {
    pub task: String,
    pub attempt: u32,
    pub passed: bool,
    pub results: Vec<serde_json::Value>,
}

/// One command an attempt ran and what it printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRun {
    pub command: String,
    pub output: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutput {
    pub task: String,
    pub attempt: u32,
    pub commands: Vec<CommandRun>,
}

/// One event of the log, as the API and `agentswarm logs --json` give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub project_id: String,
    pub task_id: Option<String>,
    pub ts_ms: i64,
    pub kind: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventPage {
    pub events: Vec<Event>,
}

/// `GET /api/v1/projects/{id}/review`: what waits for a person's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewList {
    pub project: String,
    /// The project's review mode.
    pub review: ReviewMode,
    /// Tasks in state `review` (with `review = "tasks"`), in plan order.
    pub tasks: Vec<ReviewTask>,
    /// With `review = "delivery"`: the delivery waits for approval.
    pub delivery_waiting: bool,
}

/// A task whose commit waits for review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewTask {
    pub task: String,
    pub title: String,
    pub attempt: u32,
    /// The attempt's commit.
    pub commit: String,
    pub summary: Option<String>,
    /// The files it changes, with line counts.
    pub files: Vec<FileChange>,
    /// `GET` this for the diff.
    pub diff_url: String,
}

/// One file of a change and its line counts (binary: both `None`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    pub added: Option<u64>,
    pub removed: Option<u64>,
}

/// `GET …/tasks/{task}/review` and `GET …/delivery/review`: a change to
/// review, as a unified diff per file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewDiff {
    pub project: String,
    /// The task (none: the whole delivery).
    pub task: Option<String>,
    pub attempt: Option<u32>,
    /// What the change is compared with: the commit where the task's
    /// attempt started from `main` (the merge base), or the base commit.
    pub base: String,
    /// The change's commit (the attempt's, or `main` for the delivery).
    pub commit: String,
    /// `main` now: what the change would merge into.
    pub main: String,
    pub files: Vec<FileDiff>,
}

/// One file's part of a [`ReviewDiff`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileDiff {
    pub path: String,
    pub added: Option<u64>,
    pub removed: Option<u64>,
    /// git's unified diff of the file (headers included).
    pub diff: String,
}

/// `POST …/tasks/{task}/approve` and `POST …/delivery/approve`: no body,
/// or an empty object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {}

/// `POST …/tasks/{task}/reject` and `POST …/delivery/reject`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectRequest {
    /// What to change: the next attempt's prompt carries it (for the
    /// delivery: the goal of the follow-up round).
    pub comment: String,
}

/// `POST …/tasks/{task}/approve` and `…/reject`: what the decision did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewOutcome {
    pub project: String,
    pub task: Option<String>,
    /// `approved` or `rejected`.
    pub decision: String,
    /// The task's (or, for the delivery, the project's) state after it.
    pub state: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_options_are_refused_by_name() {
        let e = serde_json::from_str::<SubmitRequest>(r#"{"goal":"g","options":{"max_cost":3}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("max_cost"), "{e}");
        let ok: SubmitRequest =
            serde_json::from_str(r#"{"goal":"g","options":{"max_cost_usd":3}}"#).unwrap();
        assert_eq!(ok.options.max_cost_usd, Some(3.0));
        assert!(ok.options.problems().is_empty());
    }

    #[test]
    fn option_values_are_checked() {
        let o = ProjectOptions {
            max_attempts: Some(0),
            max_cost_usd: Some(-1.0),
            ..Default::default()
        };
        let p = o.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("max_attempts"));
        assert!(p[1].contains("max_cost_usd"));
    }
}
