//! The plan document (contract 1 in docs/plan.md; schema in docs/plan.schema.json).

use crate::ids::TaskId;
use serde::{Deserialize, Serialize};

/// What the planner returns: a named dependency graph of tasks ending in one
/// verify task. Validation lives in the engine (`swarm_engine::plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// A slug naming the deliverable; used in the delivery archive's name.
    pub name: String,
    #[serde(default)]
    pub summary: String,
    pub tasks: Vec<PlanTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanTask {
    pub id: TaskId,
    pub title: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub depends_on: Vec<TaskId>,
    /// Paths the task is expected to touch (a hint for the worker and for humans).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    #[serde(default)]
    pub kind: TaskKind,
    /// Shell commands; only for `kind = "verify"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// The agent that does this task: a name under `[agents]` in
    /// agentswarm.toml, or `builtin`; absent: the project's choice
    /// (docs/agents.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Labels the node that runs the task must carry (`[nodes.NAME]
    /// labels`, `[nodes.local] labels`), e.g. `gpu` (docs/scale-out.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    #[default]
    Code,
    Verify,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Code => "code",
            TaskKind::Verify => "verify",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "code" => Ok(TaskKind::Code),
            "verify" => Ok(TaskKind::Verify),
            other => Err(format!("unknown task kind {other:?}")),
        }
    }
}
