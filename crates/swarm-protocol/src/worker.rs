//! Worker ⇄ supervisor messages: one JSON object per line, on the worker's
//! stdin (supervisor → worker) and stdout (worker → supervisor). The worker
//! writes nothing else to stdout; its diagnostics go to stderr.
//!
//! Sequence: `Start` → (`ModelRequest` → `ModelReply`)* interleaved with
//! `Progress` → `Finished` | `Failed`. The supervisor answers every
//! `ModelRequest` with exactly one `ModelReply` carrying the same `seq`.

use crate::chat::{ChatMessage, ToolSpec, Usage};
use crate::ids::{ProjectId, TaskId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToWorker {
    Start(Box<WorkerStart>),
    ModelReply {
        seq: u64,
        #[serde(flatten)]
        result: ModelResult,
    },
    /// The supervisor is there (every [`HEARTBEAT_SECS`]). Only on a
    /// node's channel: `agentswarm node worker` takes it, the worker never
    /// sees one.
    Heartbeat,
}

/// Seconds between two heartbeats on a node's channel (docs/scale-out.md).
pub const HEARTBEAT_SECS: u64 = 2;

/// A heartbeat as a line, either way (`ToWorker::Heartbeat` and
/// `FromWorker::Heartbeat` serialize alike): relays tell it apart without
/// parsing the line.
pub const HEARTBEAT_LINE: &str = r#"{"type":"heartbeat"}"#;

/// The largest bundle a node sends on an attempt's channel (and the
/// supervisor takes from one); bigger ones are fetched over a connection of
/// their own.
pub const BUNDLE_MAX_BYTES: usize = 64 << 20;

/// Everything a worker needs for one attempt of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStart {
    pub project_id: ProjectId,
    pub task_id: TaskId,
    pub attempt: u32,
    /// The attempt's git worktree; every tool path resolves inside it.
    pub worktree: PathBuf,
    /// The project repository (its root, where `main` is checked out). The
    /// worker finds the worktree's git directory from here for the reset and
    /// the commit, never trusting the worktree's `.git`, which the model's
    /// commands can rewrite. Empty: not given (the worker then cannot commit).
    #[serde(default)]
    pub repo: PathBuf,
    /// The system prompt of the worker role.
    pub system_prompt: String,
    /// The first user message; begins with `Task <id>: <title>`.
    pub prompt: String,
    pub max_turns: u32,
    /// Default timeout of one `run_command`, in seconds.
    pub command_timeout_secs: u64,
    /// Bytes of command output kept (head and tail) in a tool result.
    pub output_cap_bytes: usize,
    /// The commit message's subject line; the worker appends the
    /// `Swarm-Project`, `Swarm-Task` and `Swarm-Attempt` trailers.
    pub commit_subject: String,
    /// What the worker does to get `worktree` ready. It does this while its
    /// first model call is in flight, and before it runs any tool.
    #[serde(default)]
    pub setup: WorktreeSetup,
    /// The confinement of the commands the model runs (none when absent).
    #[serde(default)]
    pub sandbox: crate::sandbox::SandboxPolicy,
    /// The worker model's bounds: tool results and its context window.
    #[serde(default)]
    pub agent: AgentSettings,
    /// An existing repository's own preparation of a worktree
    /// (`.agentswarm.toml`: `copy`, `setup`), done after [`WorkerStart::setup`].
    #[serde(default)]
    pub prepare: RepoPrepare,
    /// An outside agent that does the attempt instead of the built-in loop
    /// (docs/agents.md); `None`: the built-in agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<crate::agent::AgentSpec>,
}

/// What `.agentswarm.toml` asks of each worktree (docs/existing-repos.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RepoPrepare {
    /// Files copied inside the worktree (source, destination), every
    /// attempt; the destinations are never committed.
    pub copy: Vec<(String, String)>,
    /// Shell commands run in the worktree, in the sandbox, in order.
    pub commands: Vec<String>,
    /// Whether to run `commands` this attempt: the worktree is new, or was
    /// cleaned of untracked and ignored files (what the commands made).
    pub run_commands: bool,
    /// Wall time of each command, in seconds.
    pub timeout_secs: u64,
}

/// Per-model bounds of the built-in agent (`[models.worker]` in the
/// configuration; docs/worker-tools.md and docs/providers.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSettings {
    /// The model's context window, in tokens (estimated: 4 bytes a token).
    pub context_window_tokens: u64,
    /// Bytes of one tool result; longer ones are cut (head and tail kept)
    /// with a note.
    pub tool_result_max_bytes: usize,
    /// Lines of one `read_file` page.
    pub read_max_lines: usize,
    /// Matching lines one `search` shows.
    pub search_max_matches: usize,
    /// Entries one `list_files` shows.
    pub list_max_entries: usize,
}

impl AgentSettings {
    pub const DEFAULT_CONTEXT_WINDOW_TOKENS: u64 = 32_768;
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            context_window_tokens: Self::DEFAULT_CONTEXT_WINDOW_TOKENS,
            tool_result_max_bytes: 32 * 1024,
            read_max_lines: 2000,
            search_max_matches: 200,
            list_max_entries: 2000,
        }
    }
}

/// Preparing the attempt's worktree (see [`WorkerStart::setup`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorktreeSetup {
    /// The worktree is ready as it is.
    #[default]
    Ready,
    /// A new worktree of the repository at `repo`, on a new branch `branch`
    /// at commit `base`.
    Create {
        repo: PathBuf,
        branch: String,
        base: String,
    },
    /// An idle worktree reused: switch it to a new branch `branch` at commit
    /// `base`; `clean` also removes untracked and ignored files.
    Reset {
        branch: String,
        base: String,
        clean: bool,
    },
}

/// How a `Failed` reason starts when the worktree could not be prepared
/// (the supervisor then discards that worktree).
pub const SETUP_FAILED: &str = "cannot prepare the worktree";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ModelResult {
    Ok {
        message: ChatMessage,
        #[serde(default)]
        usage: Usage,
    },
    /// The call failed for good (after the gateway's retries); the attempt ends.
    Error { error: String },
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FromWorker {
    /// Ask the supervisor's model gateway for the next assistant message.
    ModelRequest {
        seq: u64,
        /// 1-based turn number.
        turn: u32,
        messages: Vec<ChatMessage>,
        tools: Vec<ToolSpec>,
    },
    /// A tool call is about to run (for live progress and the event log).
    /// An outside agent's tool calls, messages and plan updates come as
    /// these too (`tool` is then the agent's own tool name, or `message`
    /// and `plan`).
    Progress {
        turn: u32,
        tool: String,
        detail: String,
    },
    /// The agent called `finish` and the work is committed on the task branch.
    Finished {
        summary: String,
        /// Full sha of the task commit (always made, empty if nothing changed).
        commit: String,
        turns: u32,
        /// What the worker itself changed in the work before committing it
        /// (a nested repository it removed), for the operator. Apart from
        /// the model's summary, so that the model cannot write one.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        notes: Vec<String>,
    },
    /// The attempt failed; `reason` says why in one line.
    Failed { reason: String, turns: u32 },
    /// The agent kept looping after it was told so; `reason` names the
    /// pattern (docs/worker-tools.md#loops-and-stalls).
    Stuck { reason: String, turns: u32 },
    /// The node is there (every [`HEARTBEAT_SECS`]). Only on a node's
    /// channel, from `agentswarm node worker`, never from the worker.
    Heartbeat,
    /// Sent by `agentswarm node worker` when the worker's tree went over
    /// its memory limit on the node and was killed; the attempt ends
    /// `memory_limit`.
    OverMemory { reason: String },
    /// Sent by `agentswarm node worker` just before it relays a `Finished`:
    /// the attempt's commits as a git bundle (base64) of the task branch
    /// over the attempt's base, so the supervisor needs no second
    /// connection to fetch them.
    Commits { branch: String, bundle: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_one_line_either_way() {
        for line in [
            serde_json::to_string(&ToWorker::Heartbeat).unwrap(),
            serde_json::to_string(&FromWorker::Heartbeat).unwrap(),
        ] {
            assert_eq!(line, HEARTBEAT_LINE);
        }
    }

    #[test]
    fn messages_are_tagged_lines() {
        let m = FromWorker::Failed {
            reason: "max_turns (40) reached".into(),
            turns: 40,
        };
        let s = serde_json::to_string(&m).unwrap();
        assert!(s.starts_with(r#"{"type":"failed""#), "{s}");
        assert_eq!(serde_json::from_str::<FromWorker>(&s).unwrap(), m);

        let r = ToWorker::ModelReply {
            seq: 3,
            result: ModelResult::Error {
                error: "boom".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"type":"model_reply","seq":3,"status":"error","error":"boom"}"#
        );
        assert_eq!(serde_json::from_str::<ToWorker>(&s).unwrap(), r);
    }
}
