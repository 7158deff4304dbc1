//! The worker's tools (docs/worker-tools.md). Results are plain text for the
//! model; errors start with `error:` and never end the attempt.

use crate::paths::{resolve, Purpose};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_exec::Sandbox;
use swarm_protocol::chat::ToolSpec;

/// Bytes of a file `read_file` returns.
pub const READ_CAP: usize = 256 * 1024;
/// Entries `list_files` returns.
pub const LIST_CAP: usize = 2000;
/// The longest `timeout_seconds` a model may ask for.
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

/// The function-calling declarations sent with every model request.
pub fn tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec::function(
            "list_files",
            "List the files under a directory of the worktree, recursively (directories end in /). Without a path, the whole worktree.",
            json!({"type": "object", "properties": {"path": {"type": "string", "description": "Directory relative to the worktree root"}}, "additionalProperties": false}),
        ),
        ToolSpec::function(
            "read_file",
            "Read a text file of the worktree.",
            json!({"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "write_file",
            "Create or replace a file of the worktree with the given content; parent directories are created.",
            json!({"type": "object", "properties": {"path": {"type": "string"}, "content": {"type": "string"}}, "required": ["path", "content"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "run_command",
            "Run a shell command (sh -c) in the worktree root. Returns the exit code and the output (stdout and stderr, capped).",
            json!({"type": "object", "properties": {"command": {"type": "string"}, "timeout_seconds": {"type": "integer", "minimum": 1}}, "required": ["command"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "finish",
            "End the task: your work is committed. Give a short summary of what you did and which files you changed.",
            json!({"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"], "additionalProperties": false}),
        ),
    ]
}

/// What one tool call produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    pub text: String,
    /// Set by `finish`: the summary.
    pub finished: Option<String>,
}

impl ToolResult {
    fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            finished: None,
        }
    }
}

/// The tools of one attempt, bound to its worktree.
#[derive(Debug, Clone)]
pub struct Tools {
    root: PathBuf,
    command_timeout: Duration,
    output_cap: usize,
    sandbox: SandboxPolicy,
    /// Prepared at the first `run_command` (the worktree exists by then).
    prepared: Arc<OnceLock<Result<Arc<Sandbox>, String>>>,
}

impl Tools {
    /// Tools whose commands are not confined (see [`Tools::with_sandbox`]).
    pub fn new(root: impl Into<PathBuf>, command_timeout: Duration, output_cap: usize) -> Self {
        Self {
            root: root.into(),
            command_timeout,
            output_cap,
            sandbox: SandboxPolicy::default(),
            prepared: Arc::default(),
        }
    }

    /// Confines `run_command` by `policy`.
    pub fn with_sandbox(mut self, policy: SandboxPolicy) -> Self {
        self.sandbox = policy;
        self.prepared = Arc::default();
        self
    }

    fn sandbox(&self) -> Result<Arc<Sandbox>, String> {
        self.prepared
            .get_or_init(|| {
                Sandbox::prepare(&self.sandbox, &self.root)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// One line for progress: the tool and its main argument.
    pub fn describe(name: &str, arguments: &str) -> String {
        let args: Value = serde_json::from_str(arguments).unwrap_or(Value::Null);
        let main = match name {
            "list_files" | "read_file" | "write_file" => args
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_owned(),
            "run_command" => args
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            "finish" => args
                .get("summary")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            _ => String::new(),
        };
        let one_line: String = main.split_whitespace().collect::<Vec<_>>().join(" ");
        match one_line.char_indices().nth(120) {
            Some((i, _)) => format!("{}…", &one_line[..i]),
            None => one_line,
        }
    }

    /// Runs one call. `arguments` is the JSON object the model sent, as a string.
    pub fn execute(&self, name: &str, arguments: &str) -> ToolResult {
        let args: Value = match serde_json::from_str(if arguments.trim().is_empty() {
            "{}"
        } else {
            arguments
        }) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                return ToolResult::text(format!(
                    "error: the arguments of {name} must be a JSON object"
                ))
            }
            Err(e) => {
                return ToolResult::text(format!(
                    "error: the arguments of {name} are not valid JSON: {e}"
                ))
            }
        };
        let text = |key: &str| args.get(key).and_then(Value::as_str);
        match name {
            "list_files" => ToolResult::text(self.list_files(text("path").unwrap_or(""))),
            "read_file" => match text("path") {
                Some(p) => ToolResult::text(self.read_file(p)),
                None => ToolResult::text("error: read_file needs a string `path`"),
            },
            "write_file" => match (text("path"), text("content")) {
                (Some(p), Some(c)) => ToolResult::text(self.write_file(p, c)),
                _ => ToolResult::text("error: write_file needs string `path` and `content`"),
            },
            "run_command" => match text("command") {
                Some(c) => {
                    let timeout = args
                        .get("timeout_seconds")
                        .and_then(Value::as_u64)
                        .map(|s| Duration::from_secs(s.clamp(1, MAX_COMMAND_TIMEOUT_SECS)))
                        .unwrap_or(self.command_timeout);
                    ToolResult::text(self.run_command(c, timeout))
                }
                None => ToolResult::text("error: run_command needs a string `command`"),
            },
            "finish" => {
                let summary = text("summary").unwrap_or("").trim().to_owned();
                ToolResult { text: "finished; your work will be committed".into(), finished: Some(summary) }
            }
            other => ToolResult::text(format!(
                "error: there is no tool `{other}`; the tools are list_files, read_file, write_file, run_command and finish"
            )),
        }
    }

    fn list_files(&self, path: &str) -> String {
        let dir = match resolve(&self.root, path, Purpose::List) {
            Ok(d) => d,
            Err(e) => return e,
        };
        if !dir.is_dir() {
            return format!("error: `{path}` is not a directory");
        }
        let mut out = Vec::new();
        let mut stack = vec![dir.clone()];
        let mut more = false;
        while let Some(d) = stack.pop() {
            let mut entries: Vec<_> = match std::fs::read_dir(&d) {
                Ok(rd) => rd.flatten().collect(),
                Err(e) => return format!("error: cannot list `{path}`: {e}"),
            };
            entries.sort_by_key(|e| e.file_name());
            for e in entries.into_iter().rev() {
                let p = e.path();
                let Ok(rel) = p.strip_prefix(&self.root) else {
                    continue;
                };
                // Git's files, and the commands' private HOME and TMPDIR.
                if rel.components().next().is_some_and(|c| {
                    c.as_os_str() == ".git" || c.as_os_str() == swarm_exec::sandbox::PRIVATE_DIR
                }) {
                    continue;
                }
                let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    stack.push(p.clone());
                    out.push(format!("{}/", rel.display()));
                } else {
                    out.push(rel.display().to_string());
                }
            }
            if out.len() > LIST_CAP {
                more = true;
                break;
            }
        }
        out.sort();
        out.truncate(LIST_CAP);
        if out.is_empty() {
            return "(no files)".into();
        }
        let mut s = out.join("\n");
        if more {
            s.push_str(&format!(
                "\n[listing cut at {LIST_CAP} entries; list a subdirectory]"
            ));
        }
        s
    }

    fn read_file(&self, path: &str) -> String {
        let p = match resolve(&self.root, path, Purpose::Read) {
            Ok(p) => p,
            Err(e) => return e,
        };
        if p.is_dir() {
            return format!("error: `{path}` is a directory; use list_files");
        }
        match std::fs::read(&p) {
            Ok(bytes) => {
                let total = bytes.len();
                let mut s = String::from_utf8_lossy(&bytes[..total.min(READ_CAP)]).into_owned();
                if total > READ_CAP {
                    s.push_str(&format!("\n[file cut at {READ_CAP} of {total} bytes]"));
                }
                s
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                format!("error: `{path}` does not exist")
            }
            Err(e) => format!("error: cannot read `{path}`: {e}"),
        }
    }

    fn write_file(&self, path: &str, content: &str) -> String {
        let p = match resolve(&self.root, path, Purpose::Write) {
            Ok(p) => p,
            Err(e) => return e,
        };
        if p.is_dir() {
            return format!("error: `{path}` is a directory");
        }
        let write = || -> std::io::Result<()> {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Replace a symlink rather than write through it.
            if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                std::fs::remove_file(&p)?;
            }
            std::fs::write(&p, content)
        };
        match write() {
            Ok(()) => format!("wrote {} bytes to {path}", content.len()),
            Err(e) => format!("error: cannot write `{path}`: {e}"),
        }
    }

    fn run_command(&self, command: &str, timeout: Duration) -> String {
        let sandbox = match self.sandbox() {
            Ok(s) => s,
            Err(why) => return format!("error: the command was not run: {why}"),
        };
        let opts = swarm_exec::ShellOptions {
            cwd: self.root.clone(),
            env: Vec::new(),
            timeout,
            output_cap: self.output_cap,
            // The whole worker already runs inside its enclosure.
            enclosure: None,
            sandbox: Some(sandbox),
        };
        match swarm_exec::run_shell(command, &opts) {
            Ok(out) if out.timed_out => format!(
                "error: timed out after {} s and was killed; output so far:\n{}",
                timeout.as_secs(),
                out.output
            ),
            Ok(out) => format!("{}\n{}", out.exit, out.output),
            Err(e) => format!("error: {e}"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(dir: &Path) -> Tools {
        Tools::new(dir, Duration::from_secs(10), 4096)
    }

    #[test]
    fn write_read_list() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path());
        let r = t.execute(
            "write_file",
            r#"{"path": "pkg/a.py", "content": "x = 1\n"}"#,
        );
        assert_eq!(r.text, "wrote 6 bytes to pkg/a.py");
        assert_eq!(
            t.execute("read_file", r#"{"path": "pkg/a.py"}"#).text,
            "x = 1\n"
        );
        assert_eq!(t.execute("list_files", "{}").text, "pkg/\npkg/a.py");
        assert!(t
            .execute("read_file", r#"{"path": "nope"}"#)
            .text
            .starts_with("error: "));
    }

    #[test]
    fn run_command_reports_exit_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path());
        let r = t.execute("run_command", r#"{"command": "echo hi; exit 4"}"#);
        assert_eq!(r.text, "exit code 4\nhi\n");
        let r = t.execute(
            "run_command",
            r#"{"command": "sleep 5", "timeout_seconds": 1}"#,
        );
        assert!(
            r.text.starts_with("error: timed out after 1 s"),
            "{}",
            r.text
        );
    }

    #[test]
    fn a_sandboxed_command_is_confined_and_a_refused_one_is_not_run() {
        use swarm_exec::sandbox::{facilities, SandboxMode, DEFAULT_READ_ONLY};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir(&root).unwrap();
        let policy = SandboxPolicy {
            mode: SandboxMode::BestEffort,
            read_only: DEFAULT_READ_ONLY.iter().map(PathBuf::from).collect(),
            hidden: vec![dir.path().to_owned()],
            ..SandboxPolicy::default()
        };
        let t = tools(&root).with_sandbox(policy.clone());
        let r = t.execute(
            "run_command",
            r#"{"command": "echo in > inside.txt && echo out > ../outside.txt"}"#,
        );
        assert!(root.join("inside.txt").exists(), "{}", r.text);
        if facilities().landlock.is_ok() || facilities().bubblewrap.is_ok() {
            assert!(!r.text.starts_with("exit code 0"), "{}", r.text);
            assert!(!dir.path().join("outside.txt").exists());
        }
        // The private HOME is not listed.
        assert_eq!(t.execute("list_files", "{}").text, "inside.txt");

        // A worktree the sandbox cannot be prepared for: the command is not run.
        let gone = tools(&dir.path().join("missing")).with_sandbox(policy);
        let r = gone.execute("run_command", r#"{"command": "true"}"#);
        assert!(
            r.text
                .starts_with("error: the command was not run: cannot prepare"),
            "{}",
            r.text
        );
    }

    #[test]
    fn escapes_and_bad_calls_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir(&root).unwrap();
        let t = tools(&root);
        assert!(t
            .execute("write_file", r#"{"path": "../outside", "content": "x"}"#)
            .text
            .starts_with("error: "));
        assert!(t
            .execute("write_file", r#"{"path": "/tmp/abs", "content": "x"}"#)
            .text
            .starts_with("error: "));
        assert!(!dir.path().join("outside").exists());
        assert!(t
            .execute("delete_all", "{}")
            .text
            .starts_with("error: there is no tool"));
        assert!(t
            .execute("read_file", "not json")
            .text
            .starts_with("error: "));
        let f = t.execute("finish", r#"{"summary": "done"}"#);
        assert_eq!(f.finished.as_deref(), Some("done"));
    }
}
