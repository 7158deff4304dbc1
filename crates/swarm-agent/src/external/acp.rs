//! The client side of the Agent Client Protocol (version 1: JSON-RPC 2.0,
//! one message a line, on the agent's stdio): `initialize` →
//! `session/new` → one `session/prompt`, whose `stopReason` ends the turn.
//!
//! What the worker answers for the agent:
//! - `session/request_permission`: allowed, by policy — the agent runs in
//!   the attempt's sandbox, which is what bounds it (the option of kind
//!   `allow_once`, else `allow_always`: Claude Code writes an "always" into
//!   `.claude/settings.local.json` of the worktree, and every task's copy
//!   of that file would then conflict at merge);
//! - `fs/*` and `terminal/*`: not offered (the client capabilities say so),
//!   so the agent uses its own tools, inside the same sandbox. Gemini CLI
//!   cannot create a file through a client's `fs` (docs/agents.md);
//! - any other request: "method not found".
//!
//! `session/update` notifications become tool events: tool calls (when the
//! agent's model traffic does not pass the gateway, which reports them
//! otherwise) and plan updates; the agent's message is the summary.
//!
//! Hand-written (about 150 lines on serde_json): the `agent-client-protocol`
//! crate's client needs a `LocalSet` and its own trait objects around the
//! connection, which is more than this subset of three requests needs.

use super::{short, AgentEnd, Ended, Shared};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use swarm_protocol::agent::{AgentSpec, Credentials};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};

struct Conn {
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
    next_id: u64,
    /// The agent's message of the current turn.
    message: String,
    shared: Arc<Shared>,
    report_tools: bool,
}

enum Reply {
    Result(Value),
    Error(String),
    Closed,
}

impl Conn {
    async fn write(&mut self, v: &Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await
    }

    /// Sends a request and handles what the agent sends until its answer.
    async fn call(&mut self, method: &str, params: Value) -> Reply {
        self.next_id += 1;
        let id = self.next_id;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if self.write(&req).await.is_err() {
            return Reply::Closed;
        }
        loop {
            let line = match self.lines.next_line().await {
                Ok(Some(l)) => l,
                Ok(None) | Err(_) => return Reply::Closed,
            };
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                // Not a protocol line (some agents log to stdout).
                eprintln!("agent stdout: {}", short(&line));
                continue;
            };
            match (msg.get("method").and_then(Value::as_str), msg.get("id")) {
                (Some(m), Some(rid)) => {
                    let answer = self.answer(m, msg.get("params").unwrap_or(&Value::Null));
                    let mut out = json!({"jsonrpc": "2.0", "id": rid});
                    match answer {
                        Ok(r) => out["result"] = r,
                        Err((code, message)) => {
                            out["error"] = json!({"code": code, "message": message})
                        }
                    }
                    if self.write(&out).await.is_err() {
                        return Reply::Closed;
                    }
                }
                (Some(m), None) => self.notified(m, msg.get("params").unwrap_or(&Value::Null)),
                (None, Some(rid)) if rid.as_u64() == Some(id) => {
                    if let Some(e) = msg.get("error") {
                        let m = e.get("message").and_then(Value::as_str).unwrap_or("error");
                        return Reply::Error(short(m));
                    }
                    return Reply::Result(msg.get("result").cloned().unwrap_or(Value::Null));
                }
                (None, _) => {}
            }
        }
    }

    /// Answers a request of the agent.
    fn answer(&mut self, method: &str, params: &Value) -> Result<Value, (i64, String)> {
        match method {
            "session/request_permission" => {
                let options = params
                    .get("options")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let pick = |kind: &str| {
                    options
                        .iter()
                        .find(|o| o.get("kind").and_then(Value::as_str) == Some(kind))
                        .and_then(|o| o.get("optionId").cloned())
                };
                let title = params
                    .pointer("/toolCall/title")
                    .and_then(Value::as_str)
                    .unwrap_or("a tool call");
                match pick("allow_once").or_else(|| pick("allow_always")) {
                    Some(id) => {
                        self.shared
                            .progress("permission", &format!("allowed (sandboxed): {title}"));
                        Ok(json!({"outcome": {"outcome": "selected", "optionId": id}}))
                    }
                    None => Ok(json!({"outcome": {"outcome": "cancelled"}})),
                }
            }
            other => Err((
                -32601,
                format!("method not found: {other} is not offered by AgentSwarm"),
            )),
        }
    }

    fn notified(&mut self, method: &str, params: &Value) {
        if method != "session/update" {
            return;
        }
        let Some(u) = params.get("update") else {
            return;
        };
        match u.get("sessionUpdate").and_then(Value::as_str) {
            Some("agent_message_chunk") => {
                if let Some(t) = u.pointer("/content/text").and_then(Value::as_str) {
                    self.message.push_str(t);
                }
            }
            Some("tool_call") => {
                // The tool call starts a new message.
                self.message.clear();
                if self.report_tools {
                    let title = u.get("title").and_then(Value::as_str).unwrap_or("tool");
                    let kind = u.get("kind").and_then(Value::as_str).unwrap_or("tool");
                    self.shared.progress(kind, title);
                }
            }
            Some("plan") => {
                let steps: Vec<String> = u
                    .get("entries")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        format!(
                            "[{}] {}",
                            e.get("status").and_then(Value::as_str).unwrap_or("?"),
                            e.get("content").and_then(Value::as_str).unwrap_or("")
                        )
                    })
                    .collect();
                self.shared.progress("plan", &steps.join("; "));
            }
            _ => {}
        }
    }
}

pub(super) async fn run(
    stdin: ChildStdin,
    stdout: ChildStdout,
    prompt: &str,
    cwd: &Path,
    shared: &Arc<Shared>,
    spec: &AgentSpec,
) -> Ended {
    let mut c = Conn {
        stdin,
        lines: BufReader::new(stdout).lines(),
        next_id: 0,
        message: String::new(),
        shared: shared.clone(),
        report_tools: spec.credentials == Credentials::Own,
    };
    let failed = |what: &str, e: String| {
        Ended::Done(AgentEnd::Failed {
            reason: format!("agent {}: {what} failed: {e}", spec.name),
        })
    };
    let init = json!({
        "protocolVersion": 1,
        "clientCapabilities": {"fs": {"readTextFile": false, "writeTextFile": false}, "terminal": false},
        "clientInfo": {"name": "agentswarm", "version": env!("CARGO_PKG_VERSION")},
    });
    match c.call("initialize", init).await {
        Reply::Result(_) => {}
        Reply::Error(e) => return failed("initialize", e),
        Reply::Closed => return Ended::Exited,
    }
    let session = match c
        .call("session/new", json!({"cwd": cwd, "mcpServers": []}))
        .await
    {
        Reply::Result(r) => r.get("sessionId").cloned().unwrap_or(Value::Null),
        Reply::Error(e) => return failed("session/new", e),
        Reply::Closed => return Ended::Exited,
    };
    let params = json!({"sessionId": session, "prompt": [{"type": "text", "text": prompt}]});
    match c.call("session/prompt", params).await {
        Reply::Result(r) => {
            let reason = r.get("stopReason").and_then(Value::as_str).unwrap_or("");
            match reason {
                "end_turn" => {
                    let summary = short(c.message.trim());
                    Ended::Done(AgentEnd::Finished {
                        summary: if summary.is_empty() {
                            format!("agent {} ended its turn", spec.name)
                        } else {
                            summary
                        },
                    })
                }
                other => Ended::Done(AgentEnd::Failed {
                    reason: format!("agent {} stopped: {other}", spec.name),
                }),
            }
        }
        Reply::Error(e) => failed("session/prompt", e),
        Reply::Closed => Ended::Exited,
    }
}
