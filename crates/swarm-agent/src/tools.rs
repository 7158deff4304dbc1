//! The worker's tools (docs/worker-tools.md). Results are plain text for the
//! model; errors start with `error:` and never end the attempt.

use crate::paths::beneath::{self, Resolver};
use crate::paths::{check, Purpose, RelPath};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, SFlag};
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_exec::Sandbox;
use swarm_protocol::chat::ToolSpec;
use swarm_protocol::text::escape_control;

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

    fn root_fd(&self) -> Result<OwnedFd, String> {
        beneath::open_root(&self.root)
            .map_err(|e| format!("error: the worktree is not accessible: {e}"))
    }

    fn list_files(&self, path: &str) -> String {
        let rel = match check(path, Purpose::List) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let root = match self.root_fd() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        let open_dir = |parts: &[OsString]| {
            let rel = RelPath::from_parts(parts.to_vec());
            beneath::open_beneath(
                root.as_fd(),
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Resolver::Auto,
            )
        };
        if let Err(e) = open_dir(rel.parts()) {
            return match e {
                Errno::ENOTDIR if !final_is_symlink(root.as_fd(), &rel) => {
                    format!("error: `{path}` is not a directory")
                }
                Errno::ENOTDIR => open_error("list", path, Errno::ELOOP),
                e => open_error("list", path, e),
            };
        }
        let mut out = Vec::new();
        let mut stack = vec![rel.parts().to_vec()];
        let mut more = false;
        while let Some(parts) = stack.pop() {
            // Each directory is opened anew from the root, never through a
            // symlink: one swapped in meanwhile is skipped, not followed.
            let Ok(fd) = open_dir(&parts) else {
                continue;
            };
            let mut dir = match Dir::from_fd(fd) {
                Ok(d) => d,
                Err(e) => return format!("error: cannot list `{path}`: {e}"),
            };
            let mut entries: Vec<(OsString, Option<Type>)> = dir
                .iter()
                .flatten()
                .map(|e| {
                    (
                        OsStr::from_bytes(e.file_name().to_bytes()).to_owned(),
                        e.file_type(),
                    )
                })
                .filter(|(name, _)| name != "." && name != "..")
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, kind) in entries.into_iter().rev() {
                // Git's files, and the commands' private HOME and TMPDIR.
                if parts.is_empty() && (name == ".git" || name == swarm_exec::sandbox::PRIVATE_DIR)
                {
                    continue;
                }
                let is_dir = match kind {
                    Some(t) => t == Type::Directory,
                    None => fstatat(dir.as_fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|st| {
                            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
                        }),
                };
                let mut child = parts.clone();
                child.push(name);
                let shown = escape_control(
                    &child
                        .iter()
                        .map(|p| p.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                )
                .into_owned();
                if is_dir {
                    stack.push(child);
                    out.push(format!("{shown}/"));
                } else {
                    out.push(shown);
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
        self.read_file_with(path, Resolver::Auto)
    }

    /// `read_file` with the given resolver (tests take the fallback walk).
    pub fn read_file_with(&self, path: &str, how: Resolver) -> String {
        let rel = match check(path, Purpose::Read) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let root = match self.root_fd() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        // O_NONBLOCK: a FIFO a command left does not hang the worker.
        let fd = match beneath::open_beneath(
            root.as_fd(),
            &rel,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK,
            how,
        ) {
            Ok(fd) => fd,
            Err(e) => return open_error("read", path, e),
        };
        let file = std::fs::File::from(fd);
        let size = match file.metadata() {
            Ok(m) if m.is_dir() => {
                return format!("error: `{path}` is a directory; use list_files")
            }
            Ok(m) if !m.is_file() => return format!("error: `{path}` is not a regular file"),
            Ok(m) => m.len(),
            Err(e) => return format!("error: cannot read `{path}`: {e}"),
        };
        let mut bytes = Vec::new();
        // One byte more than the cap says whether there is more.
        if let Err(e) = file.take(READ_CAP as u64 + 1).read_to_end(&mut bytes) {
            return format!("error: cannot read `{path}`: {e}");
        }
        let mut s = String::from_utf8_lossy(&bytes[..bytes.len().min(READ_CAP)]).into_owned();
        if bytes.len() > READ_CAP {
            let total = size.max(bytes.len() as u64);
            s.push_str(&format!("\n[file cut at {READ_CAP} of {total} bytes]"));
        }
        s
    }

    fn write_file(&self, path: &str, content: &str) -> String {
        let rel = match check(path, Purpose::Write) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let root = match self.root_fd() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        match beneath::replace_file(root.as_fd(), &rel, content.as_bytes()) {
            Ok(()) => format!("wrote {} bytes to {path}", content.len()),
            Err(Errno::EISDIR) => format!("error: `{path}` is a directory"),
            Err(e) => open_error("write", path, e),
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

/// Whether the last name of `rel` is a symlink (its parents are opened
/// without following any).
fn final_is_symlink(root: std::os::fd::BorrowedFd<'_>, rel: &RelPath) -> bool {
    rel.split_last().is_some_and(|(parents, last)| {
        beneath::walk_dirs(root, parents, false)
            .is_ok_and(|dir| beneath::is_symlink(dir.as_fd(), last))
    })
}

/// The `error:` result for a failed open of `path`.
fn open_error(verb: &str, path: &str, e: Errno) -> String {
    match e {
        Errno::ENOENT => format!("error: `{path}` does not exist"),
        Errno::ELOOP => format!(
            "error: `{path}` is or goes through a symlink; the file tools do not follow symlinks (read the file it points to by its own path, or use run_command)"
        ),
        Errno::ENOTDIR => format!("error: a part of `{path}` is not a directory (or is a symlink, which the file tools do not follow)"),
        Errno::EXDEV => format!("error: `{path}` leads outside the worktree; refused"),
        e => format!("error: cannot {verb} `{path}`: {}", std::io::Error::from(e)),
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
    fn symlinks_fifos_and_control_characters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(root.join("inner")).unwrap();
        std::fs::write(root.join("inner/f"), "inner").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t").unwrap();
        std::os::unix::fs::symlink("inner", root.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("out")).unwrap();
        let t = tools(&root);
        for how in [Resolver::Auto, Resolver::Walk] {
            for p in ["link/f", "out/secret", "link"] {
                let r = t.read_file_with(p, how);
                assert!(
                    r.starts_with("error: ") && r.contains("symlink"),
                    "{p}: {r}"
                );
            }
            assert_eq!(t.read_file_with("inner/f", how), "inner");
        }
        // Listing shows a symlink as a name and does not descend into it.
        assert_eq!(
            t.execute("list_files", "{}").text,
            "inner/\ninner/f\nlink\nout"
        );
        let r = t.execute("list_files", r#"{"path": "out"}"#).text;
        assert!(r.starts_with("error: ") && r.contains("symlink"), "{r}");
        // A FIFO does not hang the worker.
        nix::unistd::mkfifo(
            &root.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let r = t.execute("read_file", r#"{"path": "fifo"}"#).text;
        assert_eq!(r, "error: `fifo` is not a regular file");
        // Names with control characters are refused, and escaped when a
        // command made one.
        let r = t
            .execute("write_file", r#"{"path": "a\nb", "content": "x"}"#)
            .text;
        assert!(r.contains("control character (U+000A)"), "{r}");
        let r = t
            .execute("write_file", r#"{"path": "x\u001b[2J", "content": "x"}"#)
            .text;
        assert!(r.contains("control character (U+001B)"), "{r}");
        std::fs::remove_file(root.join("fifo")).unwrap();
        std::fs::write(root.join("inner/evil\nname\u{1b}[31m"), "").unwrap();
        let listing = t.execute("list_files", r#"{"path": "inner"}"#).text;
        assert_eq!(listing, "inner/evil\\nname\\e[31m\ninner/f");
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
