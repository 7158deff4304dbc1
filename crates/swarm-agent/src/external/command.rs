//! A `command` agent: a non-interactive CLI given the task in its
//! arguments. Its standard output is read as it comes, one line at a time,
//! by the configured format: tool calls become tool events, the final
//! message the summary. Its exit status says whether it succeeded — except
//! Codex, which may never exit after its answer: its `turn.completed` ends
//! the attempt.

use super::{short, AgentEnd, Ended, Shared};
use serde_json::Value;
use std::sync::Arc;
use swarm_protocol::agent::{AgentSpec, Credentials, OutputFormat};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::ChildStdout;

/// What one line of output says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Line {
    Tool { name: String, detail: String },
    Message(String),
    Done(AgentEnd),
    Nothing,
}

/// Reads one line of `format`.
pub(super) fn parse(format: OutputFormat, line: &str) -> Line {
    let v = || serde_json::from_str::<Value>(line).ok();
    let s = |v: &Value, p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match format {
        OutputFormat::Text => {
            if line.trim().is_empty() {
                Line::Nothing
            } else {
                Line::Message(line.trim().to_owned())
            }
        }
        OutputFormat::ClaudeStreamJson => {
            let Some(v) = v() else { return Line::Nothing };
            match v.get("type").and_then(Value::as_str) {
                Some("assistant") => {
                    let blocks = v.pointer("/message/content").and_then(Value::as_array);
                    for b in blocks.into_iter().flatten() {
                        if b.get("type").and_then(Value::as_str) == Some("tool_use") {
                            return Line::Tool {
                                name: s(b, "/name"),
                                detail: b.get("input").map(Value::to_string).unwrap_or_default(),
                            };
                        }
                    }
                    Line::Nothing
                }
                Some("result") => {
                    if v.get("is_error").and_then(Value::as_bool) == Some(true) {
                        Line::Done(AgentEnd::Failed {
                            reason: format!("claude: {} {}", s(&v, "/subtype"), s(&v, "/result")),
                        })
                    } else {
                        Line::Done(AgentEnd::Finished {
                            summary: s(&v, "/result"),
                        })
                    }
                }
                _ => Line::Nothing,
            }
        }
        OutputFormat::CodexJson => {
            let Some(v) = v() else { return Line::Nothing };
            match v.get("type").and_then(Value::as_str) {
                Some("item.started") if s(&v, "/item/type") == "command_execution" => Line::Tool {
                    name: "command".into(),
                    detail: s(&v, "/item/command"),
                },
                Some("item.completed") if s(&v, "/item/type") == "agent_message" => {
                    Line::Message(s(&v, "/item/text"))
                }
                Some("item.completed") if s(&v, "/item/type") == "file_change" => Line::Tool {
                    name: "file_change".into(),
                    detail: v
                        .pointer("/item/changes")
                        .map(Value::to_string)
                        .unwrap_or_default(),
                },
                Some("turn.completed") => Line::Done(AgentEnd::Finished {
                    summary: String::new(),
                }),
                Some("turn.failed") | Some("error") => Line::Done(AgentEnd::Failed {
                    reason: format!(
                        "codex: {}",
                        [s(&v, "/error/message"), s(&v, "/message")].concat()
                    ),
                }),
                _ => Line::Nothing,
            }
        }
    }
}

pub(super) async fn run(
    stdout: ChildStdout,
    format: OutputFormat,
    shared: &Arc<Shared>,
    spec: &AgentSpec,
) -> Ended {
    let mut lines = BufReader::new(stdout).lines();
    let mut last = String::new();
    // Tool calls are reported by the gateway when the traffic passes it.
    let report_tools = spec.credentials == Credentials::Own;
    while let Ok(Some(line)) = lines.next_line().await {
        match parse(format, &line) {
            Line::Tool { name, detail } => {
                if report_tools {
                    shared.progress(&name, &detail);
                }
            }
            Line::Message(m) => last = m,
            Line::Done(AgentEnd::Finished { summary }) => {
                let summary = if summary.trim().is_empty() {
                    last
                } else {
                    summary
                };
                return Ended::Done(AgentEnd::Finished {
                    summary: short(summary.trim()),
                });
            }
            Line::Done(failed) => return Ended::Done(failed),
            Line::Nothing => {}
        }
    }
    let summary = short(last.trim());
    Ended::ExitStatus(if summary.is_empty() {
        format!("agent {} finished", spec.name)
    } else {
        summary
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_known_formats_are_read() {
        let c = OutputFormat::ClaudeStreamJson;
        assert_eq!(
            parse(
                c,
                r#"{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Write","input":{"file_path":"a"}}]}}"#
            ),
            Line::Tool {
                name: "Write".into(),
                detail: r#"{"file_path":"a"}"#.into()
            }
        );
        assert_eq!(
            parse(
                c,
                r#"{"type":"result","subtype":"success","is_error":false,"result":"wrote a"}"#
            ),
            Line::Done(AgentEnd::Finished {
                summary: "wrote a".into()
            })
        );
        assert!(matches!(
            parse(
                c,
                r#"{"type":"result","subtype":"error_max_turns","is_error":true}"#
            ),
            Line::Done(AgentEnd::Failed { .. })
        ));
        let x = OutputFormat::CodexJson;
        assert_eq!(
            parse(
                x,
                r#"{"type":"item.completed","item":{"type":"agent_message","text":"done"}}"#
            ),
            Line::Message("done".into())
        );
        assert!(matches!(
            parse(x, r#"{"type":"turn.completed","usage":{}}"#),
            Line::Done(AgentEnd::Finished { .. })
        ));
        assert_eq!(parse(OutputFormat::Text, "  "), Line::Nothing);
        assert_eq!(
            parse(OutputFormat::Text, "ok\n"),
            Line::Message("ok".into())
        );
    }
}
