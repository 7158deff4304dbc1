//! Outside coding agents (`[agents.NAME]` in agentswarm.toml; docs/agents.md):
//! what the supervisor tells a worker about the agent that runs an attempt
//! instead of the built-in loop.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How an outside agent is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// The Agent Client Protocol: JSON-RPC 2.0 on the agent's stdio
    /// (`gemini --acp`, `claude-code-acp`, `codex-acp`, `opencode acp`).
    Acp,
    /// A non-interactive CLI given the task's prompt (`{prompt}` in its
    /// arguments), its output parsed by [`OutputFormat`].
    Command,
}

impl AgentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentKind::Acp => "acp",
            AgentKind::Command => "command",
        }
    }
}

/// The model API an agent speaks to its endpoint (the gateway's, or its
/// vendor's with its own credentials).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentWire {
    /// Anthropic Messages (`POST /v1/messages`), streamed or not.
    Anthropic,
    /// OpenAI Chat Completions (`POST /v1/chat/completions`), streamed or not.
    OpenaiChat,
    /// Google's Gemini API (`POST /v1beta/models/<m>:generateContent`, or
    /// `:streamGenerateContent?alt=sse`).
    Gemini,
    /// OpenAI Responses (`POST /v1/responses`), streamed or not (Codex).
    OpenaiResponses,
}

impl AgentWire {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentWire::Anthropic => "anthropic",
            AgentWire::OpenaiChat => "openai_chat",
            AgentWire::Gemini => "gemini",
            AgentWire::OpenaiResponses => "openai_responses",
        }
    }
}

/// How a `command` agent's standard output is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    /// Plain text: the last non-empty lines are the summary.
    #[default]
    Text,
    /// Claude Code's `--output-format stream-json` (one JSON event a line).
    ClaudeStreamJson,
    /// Codex's `exec --json` (one JSON event a line).
    CodexJson,
}

/// Whose credentials the agent's model traffic uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// The gateway's: the agent gets a per-attempt token for the gateway's
    /// endpoint; the real key stays in the supervisor.
    #[default]
    Gateway,
    /// The agent's own login: its config directory is copied into the
    /// attempt's private HOME and the network is open to it. Rate limits and
    /// costs are then the vendor's, not the swarm's.
    Own,
}

/// One configured outside agent, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSpec {
    /// Its name under `[agents]`.
    pub name: String,
    pub kind: AgentKind,
    /// The program and its arguments. In a `command` agent's arguments
    /// `{prompt}` is replaced by the task's prompt. In arguments and `env`
    /// values, `{gateway}` is the agent's endpoint (`http://127.0.0.1:PORT`
    /// inside the sandbox) and `{token}` its per-attempt token.
    pub command: Vec<String>,
    /// Added to the agent's environment (after the sandbox's allow-list).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub speaks: AgentWire,
    #[serde(default)]
    pub output: OutputFormat,
    /// More trees the agent may read and execute in the sandbox (where it
    /// is installed).
    #[serde(default)]
    pub read_paths: Vec<PathBuf>,
    #[serde(default)]
    pub credentials: Credentials,
    /// With own credentials: files and directories copied into the
    /// attempt's private HOME (`~/.claude` becomes `$HOME/.claude`).
    #[serde(default)]
    pub home_files: Vec<HomeFile>,
}

/// One entry of [`AgentSpec::home_files`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeFile {
    /// Where it is (absolute).
    pub from: PathBuf,
    /// Where it goes, relative to the attempt's HOME: the path below `~/`,
    /// else the file name.
    pub to: PathBuf,
}
