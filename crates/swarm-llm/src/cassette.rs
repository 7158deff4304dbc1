//! `--record FILE` / `--replay FILE`: every model call's request and answer
//! as JSON lines, and answering model calls from such a file with no
//! network.
//!
//! # File format (version 1)
//!
//! One JSON object per line, one line per successful model call, in the
//! order the calls completed:
//!
//! ```json
//! {"v":1,
//!  "meta":{"role":"worker","task":"t3","attempt":1,"turn":4},
//!  "provider":"openai","model":"gpt-4o",
//!  "request":{"messages":[ChatMessage…],"tools":["read_file","write_file"]},
//!  "reply":{"message":ChatMessage,"usage":{"prompt_tokens":…,"completion_tokens":…,"total_tokens":…}}}
//! ```
//!
//! (shown on several lines here; in the file it is one line). `meta` is a
//! [`CallMeta`] (`task` and `attempt` are left out when absent), messages are
//! [`ChatMessage`]s in the OpenAI-compatible shape of `swarm_protocol::chat`,
//! `tools` holds only the tools' names. Every string is passed through the
//! [`Redactor`] before it is written, and the file is created with mode 0600.
//!
//! # Matching on replay
//!
//! A call is answered by comparing its *normalised* request with the
//! recorded ones. The normalised request is: the meta (role, task, attempt,
//! turn); the messages, where system, user and assistant messages keep their
//! role, content and tool calls (name and arguments), but `tool` messages
//! keep only their `tool_call_id` — tool outputs hold timings and absolute
//! paths that differ between runs; and the tools' names. The model name is
//! not part of it: a replay may use another model configuration.
//!
//! [`Replayer::answer`] takes the first unused entry with the same
//! normalised request; if there is none and the call is a worker's, the
//! first unused entry with the same meta (a worker's prompt may
//! legitimately differ in volatile details, such as what a dependency
//! changed; this is logged at debug level). Planner and fixer calls match
//! exactly: a different goal or verify output is a miss. Entries are
//! consumed in recorded order. Otherwise the answer is [`Error::ReplayMiss`].

use crate::redact::Redactor;
use crate::{CallMeta, Error, ModelRequest, Reply};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use swarm_protocol::chat::{ChatMessage, Role, Usage};

/// The `v` of the lines this version writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// A recording that cannot be replayed. Not worth retrying: the file has
/// to be fixed or recorded again.
#[derive(Debug, thiserror::Error)]
pub enum CassetteError {
    #[error("cannot read the recording {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{}:{line}: not a recorded model call ({message}); a recording holds one JSON object a line, \
         as written by --record — record the run again",
        path.display()
    )]
    BadLine {
        path: PathBuf,
        /// 1-based.
        line: usize,
        message: String,
    },
    #[error(
        "{}:{line}: recording format version {found}, but this AgentSwarm reads version {FORMAT_VERSION}; \
         record the run again with this version",
        path.display()
    )]
    Version {
        path: PathBuf,
        line: usize,
        found: u64,
    },
}

/// A line as written (borrows the call's data).
#[derive(Serialize)]
struct LineOut<'a> {
    v: u32,
    meta: &'a CallMeta,
    provider: &'a str,
    model: &'a str,
    request: RequestOut<'a>,
    reply: ReplyOut<'a>,
}

#[derive(Serialize)]
struct RequestOut<'a> {
    messages: &'a [ChatMessage],
    tools: Vec<&'a str>,
}

#[derive(Serialize)]
struct ReplyOut<'a> {
    message: &'a ChatMessage,
    usage: &'a Usage,
}

/// A line as read. `provider` and `model` are informational; unknown fields
/// are ignored so later versions may add some.
#[derive(Deserialize)]
struct LineIn {
    meta: CallMeta,
    request: RequestIn,
    reply: ReplyIn,
}

#[derive(Deserialize)]
struct RequestIn {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    tools: Vec<String>,
}

#[derive(Deserialize)]
struct ReplyIn {
    message: ChatMessage,
    #[serde(default)]
    usage: Usage,
}

/// The part of a request that replay matches on, apart from the meta (see
/// the module documentation).
fn normalised<'a>(messages: &[ChatMessage], tools: impl Iterator<Item = &'a str>) -> Value {
    let messages: Vec<Value> = messages
        .iter()
        .map(|m| match m.role {
            Role::Tool => json!({"role": m.role, "tool_call_id": m.tool_call_id}),
            Role::System | Role::User | Role::Assistant => json!({
                "role": m.role,
                "content": m.content,
                "tool_calls": m.tool_calls.iter().map(|c| json!({
                    "name": c.function.name,
                    "arguments": c.function.arguments,
                })).collect::<Vec<_>>(),
            }),
        })
        .collect();
    json!({"messages": messages, "tools": tools.collect::<Vec<_>>()})
}

/// "role worker, task t3, attempt 1, turn 4"
fn describe(meta: &CallMeta) -> String {
    let mut s = format!("role {}", meta.role);
    if let Some(task) = &meta.task {
        s.push_str(&format!(", task {task}"));
    }
    if let Some(attempt) = meta.attempt {
        s.push_str(&format!(", attempt {attempt}"));
    }
    s.push_str(&format!(", turn {}", meta.turn));
    s
}

/// Writes model calls to a recording (`--record`). Shared by all workers:
/// each call is one `write` of one whole line under a lock, flushed at once,
/// so lines never interleave and a crash loses at most the call in flight.
pub struct Recorder {
    path: PathBuf,
    file: Mutex<File>,
    redactor: Redactor,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    /// Creates `path` (or truncates it) with mode 0600 — a recording holds
    /// whole prompts and answers. Every line is passed through `redactor`.
    pub fn create(path: &Path, redactor: Redactor) -> io::Result<Self> {
        let context = |e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot create the recording {}: {e}", path.display()),
            )
        };
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(path).map_err(context)?;
        // `mode` applies only to a new file; an existing one keeps its mode.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(context)?;
        }
        Ok(Self {
            path: path.to_owned(),
            file: Mutex::new(file),
            redactor,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one call as one redacted line and flushes it (no fsync). A
    /// short blocking write; callers on the runtime may call it directly.
    pub fn record(
        &self,
        meta: &CallMeta,
        provider: &str,
        request: &ModelRequest,
        reply: &Reply,
    ) -> io::Result<()> {
        let line = LineOut {
            v: FORMAT_VERSION,
            meta,
            provider,
            model: &request.model,
            request: RequestOut {
                messages: &request.messages,
                tools: request
                    .tools
                    .iter()
                    .map(|t| t.function.name.as_str())
                    .collect(),
            },
            reply: ReplyOut {
                message: &reply.message,
                usage: &reply.usage,
            },
        };
        let mut value = serde_json::to_value(&line)?;
        self.redactor.redact_json(&mut value);
        let mut bytes = serde_json::to_vec(&value)?;
        bytes.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.write_all(&bytes)
            .and_then(|()| file.flush())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot write to the recording {}: {e}", self.path.display()),
                )
            })
    }
}

/// One recorded call.
#[derive(Debug)]
struct Entry {
    /// 1-based line in the file, for log messages.
    line: usize,
    meta: CallMeta,
    key: Value,
    reply: Reply,
    used: bool,
}

/// Answers model calls from a recording (`--replay`).
pub struct Replayer {
    path: PathBuf,
    /// In recorded order.
    entries: Mutex<Vec<Entry>>,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("path", &self.path)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Replayer {
    /// Reads the whole recording. Blank lines are skipped; any other line
    /// that is not a version-1 call is an error naming the file and line.
    pub fn open(path: &Path) -> Result<Self, CassetteError> {
        let text = std::fs::read_to_string(path).map_err(|source| CassetteError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut entries = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if raw.trim().is_empty() {
                continue;
            }
            let bad = |message: String| CassetteError::BadLine {
                path: path.to_owned(),
                line,
                message,
            };
            let value: Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
            match value.get("v").and_then(Value::as_u64) {
                Some(v) if v == u64::from(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(CassetteError::Version {
                        path: path.to_owned(),
                        line,
                        found,
                    })
                }
                None => return Err(bad("no version field \"v\"".to_owned())),
            }
            let parsed: LineIn = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
            entries.push(Entry {
                line,
                key: normalised(
                    &parsed.request.messages,
                    parsed.request.tools.iter().map(String::as_str),
                ),
                meta: parsed.meta,
                reply: Reply {
                    message: parsed.reply.message,
                    usage: parsed.reply.usage,
                },
                used: false,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            entries: Mutex::new(entries),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded answer to this call (see the module documentation for
    /// the matching), or [`Error::ReplayMiss`] if the recording holds none.
    ///
    /// The live request is passed through the process-wide redactor
    /// ([`crate::redact::global`]) before the comparison, as the recorded
    /// one was when it was written, so a key in a prompt does not stop an
    /// exact match.
    pub fn answer(&self, meta: &CallMeta, request: &ModelRequest) -> crate::Result<Reply> {
        let mut key = normalised(
            &request.messages,
            request.tools.iter().map(|t| t.function.name.as_str()),
        );
        crate::redact::global().redact_json(&mut key);

        let mut entries = self.entries();
        let exact = entries
            .iter()
            .position(|e| !e.used && e.meta == *meta && e.key == key);
        // The loose match is for workers only, whose prompts carry volatile
        // details (what a dependency changed); the planner's and fixer's
        // requests (the goal, the verify output) must match exactly.
        let loose = meta.task.is_some();
        let index = match exact {
            Some(i) => i,
            None => match entries
                .iter()
                .position(|e| loose && !e.used && e.meta == *meta)
            {
                Some(i) => {
                    tracing::debug!(
                        recording = %self.path.display(),
                        line = entries[i].line,
                        "replay: the request of {} differs from the recorded one; \
                         answering with the next recorded reply of this call",
                        describe(meta)
                    );
                    i
                }
                None => {
                    let left = entries.iter().filter(|e| !e.used).count();
                    return Err(Error::ReplayMiss(format!(
                        "--replay {}: the recording does not hold this model call ({}; {left} unused \
                         recorded calls left). The run diverged from the recording, or the recording \
                         is from another goal or configuration; run without --replay, or record again \
                         with --record",
                        self.path.display(),
                        describe(meta),
                    )));
                }
            },
        };
        let entry = &mut entries[index];
        entry.used = true;
        Ok(entry.reply.clone())
    }

    /// Recorded calls not answered yet.
    pub fn remaining(&self) -> usize {
        self.entries().iter().filter(|e| !e.used).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarm_protocol::chat::{FunctionCall, ToolCall, ToolSpec};

    fn meta(task: Option<&str>, attempt: Option<u32>, turn: u32) -> CallMeta {
        CallMeta {
            role: if task.is_some() { "worker" } else { "planner" }.into(),
            task: task.map(str::to_owned),
            attempt,
            turn,
        }
    }

    fn request(messages: Vec<ChatMessage>) -> ModelRequest {
        ModelRequest {
            model: "gpt-test".into(),
            messages,
            tools: vec![ToolSpec::function(
                "read_file",
                "Read a file",
                json!({"type": "object"}),
            )],
            max_tokens: Some(1000),
            temperature: None,
        }
    }

    fn reply(text: &str) -> Reply {
        Reply {
            message: ChatMessage::assistant(text),
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: 5,
                total_tokens: 15,
                ..Usage::default()
            },
        }
    }

    fn tool_call_reply(id: &str) -> Reply {
        Reply {
            message: ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![ToolCall {
                    id: id.into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: "read_file".into(),
                        arguments: "{\"path\":\"src/lib.rs\"}".into(),
                    },
                }],
                tool_call_id: None,
            },
            usage: Usage::default(),
        }
    }

    /// The worker's conversation up to a tool result.
    fn after_tool(output: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage::system("You are a worker."),
            ChatMessage::user("Implement the parser."),
            tool_call_reply("call_1").message,
            ChatMessage::tool_result("call_1", output),
        ]
    }

    #[test]
    fn records_and_replays_exactly_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        let plan = request(vec![ChatMessage::user("Plan: build a CLI")]);
        let turn1 = request(vec![
            ChatMessage::system("You are a worker."),
            ChatMessage::user("Implement the parser."),
        ]);
        let turn2 = request(after_tool(
            "fn main() {} (read in 12 ms from /tmp/run-81/src)",
        ));
        rec.record(&meta(None, None, 1), "openai", &plan, &reply("the plan"))
            .unwrap();
        rec.record(
            &meta(Some("t1"), Some(1), 1),
            "openai",
            &turn1,
            &tool_call_reply("call_1"),
        )
        .unwrap();
        rec.record(
            &meta(Some("t1"), Some(1), 2),
            "openai",
            &turn2,
            &reply("done"),
        )
        .unwrap();
        drop(rec);

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["v"], 1);
        assert_eq!(first["meta"], json!({"role": "planner", "turn": 1}));
        assert_eq!(first["provider"], "openai");
        assert_eq!(first["model"], "gpt-test");
        assert_eq!(first["request"]["tools"], json!(["read_file"]));
        assert_eq!(first["reply"]["message"]["content"], "the plan");
        assert_eq!(first["reply"]["usage"]["total_tokens"], 15);

        let rp = Replayer::open(&path).unwrap();
        assert_eq!(rp.remaining(), 3);
        // Another model, and a tool output that differs (timing, path):
        // still the exact entry.
        let mut turn2_live = request(after_tool(
            "fn main() {} (read in 3 ms from /tmp/run-99/src)",
        ));
        turn2_live.model = "another-model".into();
        assert_eq!(
            rp.answer(&meta(None, None, 1), &plan).unwrap(),
            reply("the plan")
        );
        assert_eq!(
            rp.answer(&meta(Some("t1"), Some(1), 1), &turn1).unwrap(),
            tool_call_reply("call_1")
        );
        assert_eq!(
            rp.answer(&meta(Some("t1"), Some(1), 2), &turn2_live)
                .unwrap(),
            reply("done")
        );
        assert_eq!(rp.remaining(), 0);
    }

    #[test]
    fn exact_match_first_then_the_loose_fallback_in_recorded_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        let m = meta(Some("t2"), Some(1), 1);
        let a = request(vec![ChatMessage::user("prompt A")]);
        let b = request(vec![ChatMessage::user("prompt B")]);
        rec.record(&m, "openai", &a, &reply("answer A")).unwrap();
        rec.record(&m, "openai", &b, &reply("answer B")).unwrap();
        drop(rec);

        let rp = Replayer::open(&path).unwrap();
        // Exact: B although A comes first.
        assert_eq!(rp.answer(&m, &b).unwrap(), reply("answer B"));
        // Loose: the prompt changed (a date, a path); same meta → the first
        // unused entry.
        let changed = request(vec![ChatMessage::user("prompt A, run on 2031-01-01")]);
        assert_eq!(rp.answer(&m, &changed).unwrap(), reply("answer A"));
        assert_eq!(rp.remaining(), 0);
        // Both used up: a miss.
        assert!(matches!(rp.answer(&m, &a), Err(Error::ReplayMiss(_))));
    }

    #[test]
    fn tool_outputs_are_not_compared_but_tool_call_ids_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        let m = meta(Some("t1"), Some(1), 2);
        let mut other_call = after_tool("output of call 9");
        other_call[2] = tool_call_reply("call_9").message;
        other_call[3] = ChatMessage::tool_result("call_9", "output of call 9");
        rec.record(&m, "openai", &request(other_call), &reply("for call_9"))
            .unwrap();
        rec.record(
            &m,
            "openai",
            &request(after_tool("took 12 ms")),
            &reply("for call_1"),
        )
        .unwrap();
        drop(rec);

        let rp = Replayer::open(&path).unwrap();
        // The loose fallback would pick the first entry; the exact match on
        // call_1 (output ignored) picks the second.
        let live = request(after_tool("took 3 ms, /home/other/path"));
        assert_eq!(rp.answer(&m, &live).unwrap(), reply("for call_1"));
    }

    #[test]
    fn a_miss_names_the_call_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        let a = request(vec![ChatMessage::user("prompt A")]);
        rec.record(&meta(Some("t1"), Some(1), 1), "openai", &a, &reply("x"))
            .unwrap();
        drop(rec);

        let rp = Replayer::open(&path).unwrap();
        let err = rp.answer(&meta(Some("t1"), Some(2), 7), &a).unwrap_err();
        assert!(!err.is_retryable());
        assert_eq!(err.kind(), "replay_miss");
        let msg = err.to_string();
        for part in [
            "role worker, task t1, attempt 2, turn 7",
            &path.display().to_string(),
            "does not hold this model call",
            "diverged",
            "1 unused",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg:?}");
        }
        assert_eq!(rp.remaining(), 1, "a miss consumes nothing");
    }

    #[test]
    fn a_bad_line_is_named_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        rec.record(
            &meta(None, None, 1),
            "openai",
            &request(vec![ChatMessage::user("p")]),
            &reply("r"),
        )
        .unwrap();
        drop(rec);
        let good = std::fs::read_to_string(&path).unwrap();

        std::fs::write(&path, format!("{good}\n{{\"v\":1,\"meta\":tru")).unwrap();
        let err = Replayer::open(&path).unwrap_err();
        assert!(
            matches!(err, CassetteError::BadLine { line: 3, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!("{}:3:", path.display())),
            "{err}"
        );

        std::fs::write(&path, format!("{good}{{\"v\":1,\"meta\":{{}}}}\n")).unwrap();
        let err = Replayer::open(&path).unwrap_err();
        assert!(
            matches!(err, CassetteError::BadLine { line: 2, .. }),
            "{err:?}"
        );

        std::fs::write(&path, good.replace("\"v\":1", "\"v\":2")).unwrap();
        let err = Replayer::open(&path).unwrap_err();
        assert!(
            matches!(
                err,
                CassetteError::Version {
                    line: 1,
                    found: 2,
                    ..
                }
            ),
            "{err:?}"
        );

        let missing = dir.path().join("nope.jsonl");
        let err = Replayer::open(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }

    #[test]
    fn the_recording_holds_no_configured_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        let secret = "my-local-gateway-token-0042";
        let rec = Recorder::create(&path, Redactor::new(vec![secret.to_owned()])).unwrap();
        let req = request(vec![
            ChatMessage::user(format!("use the key {secret}")),
            ChatMessage {
                role: Role::Assistant,
                content: None,
                tool_calls: vec![ToolCall {
                    id: "c1".into(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: "run".into(),
                        arguments: json!({"cmd": format!("curl -H 'x-key: {secret}'")}).to_string(),
                    },
                }],
                tool_call_id: None,
            },
            ChatMessage::tool_result("c1", "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34"),
        ]);
        rec.record(&meta(None, None, 1), "openai", &req, &reply(secret))
            .unwrap();
        drop(rec);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("Ab12Cd34"), "{text}");
        assert!(text.contains("[REDACTED]"));
        // Still one valid line.
        assert_eq!(Replayer::open(&path).unwrap().remaining(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn the_recording_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.jsonl");
        std::fs::write(&path, "old content\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let rec = Recorder::create(&path, Redactor::default()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(rec);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "", "truncated");

        let fresh = dir.path().join("fresh.jsonl");
        drop(Recorder::create(&fresh, Redactor::default()).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
