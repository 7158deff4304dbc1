//! The worker's tools (docs/worker-tools.md). Results are plain text for the
//! model; errors start with `error:` and never end the attempt.

mod files;
mod patch;
mod search;

use crate::paths::beneath::{self, Resolver};
use crate::paths::{check, Purpose, RelPath};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstatat, SFlag};
use serde_json::{json, Value};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use swarm_exec::sandbox::SandboxPolicy;
use swarm_exec::Sandbox;
use swarm_protocol::chat::ToolSpec;
use swarm_protocol::text::escape_control;
use swarm_protocol::worker::AgentSettings;
/// The longest `timeout_seconds` a model may ask for.
pub const MAX_COMMAND_TIMEOUT_SECS: u64 = 3600;

/// The function-calling declarations sent with every model request.
pub fn tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec::function(
            "list_files",
            "List the files under a directory of the worktree, recursively (directories end in /). Without a path, the whole worktree.",
            json!({"type": "object", "properties": {
                "path": {"type": "string", "description": "Directory relative to the worktree root"},
                "depth": {"type": "integer", "minimum": 1, "description": "How many levels down to list (1: the directory's own entries); all without it"},
                "glob": {"type": "string", "description": "Only files whose path or name matches this glob, e.g. *.rs or src/**/test_*.py"}
            }, "additionalProperties": false}),
        ),
        ToolSpec::function(
            "read_file",
            "Read a text file of the worktree: numbered lines (`     N<TAB>line`), in pages; a note says when there is more and which start_line reads on.",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 1, "description": "First line to show (1-based); default 1"},
                "end_line": {"type": "integer", "minimum": 1, "description": "Last line to show; default the end of the file (pages are capped)"}
            }, "required": ["path"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "search",
            "Search the worktree's text files for a regular expression (Rust regex syntax), like ripgrep: .gitignore is respected, binary files are skipped. Returns path:line: text for each matching line, capped, with the counts.",
            json!({"type": "object", "properties": {
                "pattern": {"type": "string"},
                "path": {"type": "string", "description": "Directory to search; default the whole worktree"},
                "glob": {"type": "string", "description": "Only files whose path or name matches this glob, e.g. *.py"},
                "case_insensitive": {"type": "boolean"}
            }, "required": ["pattern"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "edit_file",
            "Edit a file: replace old_string, which must occur exactly once in the file (copy it exactly, with enough surrounding lines to be unique), with new_string; or, with insert_line instead of old_string, insert new_string after that line (0: at the top). Returns the edited region with line numbers.",
            json!({"type": "object", "properties": {
                "path": {"type": "string"},
                "old_string": {"type": "string"},
                "new_string": {"type": "string"},
                "insert_line": {"type": "integer", "minimum": 0}
            }, "required": ["path", "new_string"], "additionalProperties": false}),
        ),
        ToolSpec::function(
            "apply_patch",
            "Change several files at once, all or nothing, with a patch in this format:\n*** Begin Patch\n*** Add File: path\n+line\n*** Delete File: path\n*** Update File: path\n*** Move to: new/path (optional)\n@@ a line above the change (optional)\n context line\n-removed line\n+added line\n*** End Patch",
            json!({"type": "object", "properties": {"patch": {"type": "string"}}, "required": ["patch"], "additionalProperties": false}),
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
    settings: AgentSettings,
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
            settings: AgentSettings::default(),
            sandbox: SandboxPolicy::default(),
            prepared: Arc::default(),
        }
    }

    /// Bounds the results by the model's `settings`.
    pub fn with_settings(mut self, settings: AgentSettings) -> Self {
        self.settings = settings;
        self
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
            "list_files" | "read_file" | "write_file" | "edit_file" => args
                .get("path")
                .and_then(Value::as_str)
                .unwrap_or(".")
                .to_owned(),
            "run_command" => args
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            "search" => args
                .get("pattern")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            "apply_patch" => args
                .get("patch")
                .and_then(Value::as_str)
                .map(|p| {
                    p.lines()
                        .filter_map(|l| l.split_once(" File: ").map(|(_, f)| f))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
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
        let number = |key: &str| args.get(key).and_then(Value::as_u64);
        let out = match name {
            "list_files" => self.list_files(
                text("path").unwrap_or(""),
                number("depth").map(|d| d.max(1) as usize),
                text("glob"),
            ),
            "read_file" => match text("path") {
                Some(p) => self.read_page(p, number("start_line"), number("end_line"), Resolver::Auto),
                None => "error: read_file needs a string `path`".into(),
            },
            "write_file" => match (text("path"), text("content")) {
                (Some(p), Some(c)) => self.write_file(p, c),
                _ => "error: write_file needs string `path` and `content`".into(),
            },
            "edit_file" => match (text("path"), text("new_string")) {
                (Some(p), Some(new)) => self.edit_file(p, text("old_string"), new, number("insert_line")),
                _ => "error: edit_file needs string `path` and `new_string` (and `old_string` or `insert_line`)".into(),
            },
            "apply_patch" => match text("patch") {
                Some(p) => self.apply_patch(p),
                None => "error: apply_patch needs a string `patch` (*** Begin Patch … *** End Patch)".into(),
            },
            "search" => match text("pattern") {
                Some(p) => self.search(
                    p,
                    text("path").unwrap_or(""),
                    text("glob"),
                    args.get("case_insensitive").and_then(Value::as_bool).unwrap_or(false),
                ),
                None => "error: search needs a string `pattern`".into(),
            },
            "run_command" => match text("command") {
                Some(c) => {
                    let timeout = args
                        .get("timeout_seconds")
                        .and_then(Value::as_u64)
                        .map(|s| Duration::from_secs(s.clamp(1, MAX_COMMAND_TIMEOUT_SECS)))
                        .unwrap_or(self.command_timeout);
                    self.run_command(c, timeout)
                }
                None => "error: run_command needs a string `command`".into(),
            },
            "finish" => {
                let summary = text("summary").unwrap_or("").trim().to_owned();
                return ToolResult { text: "finished; your work will be committed".into(), finished: Some(summary) };
            }
            other => format!(
                "error: there is no tool `{other}`; the tools are {}",
                TOOL_NAMES.join(", ")
            ),
        };
        ToolResult::text(bound(out, self.settings.tool_result_max_bytes))
    }

    fn root_fd(&self) -> Result<OwnedFd, String> {
        beneath::open_root(&self.root)
            .map_err(|e| format!("error: the worktree is not accessible: {e}"))
    }

    fn list_files(&self, path: &str, depth: Option<usize>, glob: Option<&str>) -> String {
        let rel = match check(path, Purpose::List) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let globs = match glob.map(search::glob_set).transpose() {
            Ok(g) => g,
            Err(e) => return e,
        };
        let cap = self.settings.list_max_entries;
        let base_depth = rel.parts().len();
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
            let mut entries: Vec<(OsString, Option<Type>)> =
                swarm_exec::sandbox::dir_entries(&mut dir)
                    .into_iter()
                    .map(|(n, t)| (OsStr::from_bytes(n.to_bytes()).to_owned(), t))
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
                let deeper = depth.is_none_or(|d| child.len() - base_depth < d);
                if let Some(g) = &globs {
                    // Only matching files are shown; every directory is walked.
                    if is_dir {
                        if deeper {
                            stack.push(child);
                        }
                        continue;
                    }
                    let joined = child
                        .iter()
                        .map(|p| p.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/");
                    let file_name = child
                        .last()
                        .map(|p| p.to_string_lossy())
                        .unwrap_or_default();
                    if !g.is_match(&joined) && !g.is_match(file_name.as_ref()) {
                        continue;
                    }
                }
                let shown = escape_control(
                    &child
                        .iter()
                        .map(|p| p.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/"),
                )
                .into_owned();
                if is_dir {
                    if deeper {
                        stack.push(child);
                    }
                    out.push(format!("{shown}/"));
                } else {
                    out.push(shown);
                }
            }
            if out.len() > cap {
                more = true;
                break;
            }
        }
        out.sort();
        out.truncate(cap);
        if out.is_empty() {
            return "(no files)".into();
        }
        let mut s = out.join("\n");
        if more {
            s.push_str(&format!(
                "\n[listing cut at {cap} entries (list_max_entries); list a subdirectory, or give a depth or a glob]"
            ));
        }
        s
    }

    /// `read_file` with the given resolver (tests take the fallback walk).
    pub fn read_file_with(&self, path: &str, how: Resolver) -> String {
        self.read_page(path, None, None, how)
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

/// The tools, as the model knows them.
pub const TOOL_NAMES: [&str; 8] = [
    "list_files",
    "read_file",
    "search",
    "edit_file",
    "apply_patch",
    "write_file",
    "run_command",
    "finish",
];

/// `text` cut to `max` bytes: its head and its tail, with a note between
/// that says how much was left out.
pub fn bound(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let omitted_guess = text.len() - max;
    let note = format!(
        "\n[… {omitted_guess} bytes omitted: the result was cut at {max} bytes (tool_result_max_bytes); ask for less, e.g. a line range or a narrower pattern …]\n"
    );
    let room = max.saturating_sub(note.len());
    let mut head = room * 2 / 3;
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = text.len() - (room - head.min(room));
    while !text.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{}{note}{}", &text[..head], &text[tail..])
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
            "     1\tx = 1\n"
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
            assert_eq!(
                t.read_file_with("inner/f", how),
                "     1\tinner\n[no newline at the end of the file]"
            );
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

#[cfg(test)]
mod new_tool_tests {
    use super::*;
    use serde_json::json;

    fn tools(dir: &Path) -> Tools {
        Tools::new(dir, Duration::from_secs(10), 4096)
    }

    fn call(t: &Tools, name: &str, args: Value) -> String {
        t.execute(name, &args.to_string()).text
    }

    #[test]
    fn edit_file_replaces_one_unique_occurrence_or_shows_candidates() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path());
        std::fs::write(
            dir.path().join("a.py"),
            "def f():\n    return 1\n\ndef g():\n    return 1\n",
        )
        .unwrap();
        let r = call(
            &t,
            "edit_file",
            json!({"path": "a.py", "old_string": "def g():\n    return 1", "new_string": "def g():\n    return 2"}),
        );
        assert!(r.starts_with("edited a.py: replaced lines 4-5"), "{r}");
        assert!(r.contains("     5\t    return 2"), "{r}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.py")).unwrap(),
            "def f():\n    return 1\n\ndef g():\n    return 2\n"
        );
        // Not unique: the lines where it starts.
        let r = call(
            &t,
            "edit_file",
            json!({"path": "a.py", "old_string": "return", "new_string": "yield"}),
        );
        assert!(r.starts_with("error: old_string occurs 2 times"), "{r}");
        assert!(
            r.contains("     2\t    return 1") && r.contains("     5\t    return 2"),
            "{r}"
        );
        // Missing, but there with other indentation.
        let r = call(
            &t,
            "edit_file",
            json!({"path": "a.py", "old_string": "def f():\n  return 1", "new_string": "x"}),
        );
        assert!(
            r.contains("when whitespace is ignored") && r.contains("     2\t    return 1"),
            "{r}"
        );
        // Missing: lines holding its first line.
        let r = call(
            &t,
            "edit_file",
            json!({"path": "a.py", "old_string": "def g():\n    return 7", "new_string": "x"}),
        );
        assert!(
            r.contains("Lines that hold its first line") && r.contains("     4\tdef g():"),
            "{r}"
        );
        // Insert after a line.
        let r = call(
            &t,
            "edit_file",
            json!({"path": "a.py", "insert_line": 0, "new_string": "import os"}),
        );
        assert!(
            r.starts_with("edited a.py: inserted 1 lines after line 0"),
            "{r}"
        );
        assert!(std::fs::read_to_string(dir.path().join("a.py"))
            .unwrap()
            .starts_with("import os\ndef f():\n"));
        let r = call(
            &t,
            "edit_file",
            json!({"path": "nope.py", "old_string": "a", "new_string": "b"}),
        );
        assert!(
            r.starts_with("error: `nope.py` does not exist") && r.contains("write_file"),
            "{r}"
        );
    }

    #[test]
    fn a_5000_line_file_is_edited_in_one_small_call() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path());
        let content: String = (1..=5000)
            .map(|i| format!("let value_{i} = {i};\n"))
            .collect();
        std::fs::write(dir.path().join("big.rs"), &content).unwrap();
        let args = json!({"path": "big.rs", "old_string": "let value_2500 = 2500;", "new_string": "let value_2500 = 0;"});
        let r = call(&t, "edit_file", args.clone());
        assert!(
            r.starts_with("edited big.rs: replaced lines 2500-2500"),
            "{r}"
        );
        let after = std::fs::read_to_string(dir.path().join("big.rs")).unwrap();
        assert_eq!(
            after,
            content.replace("let value_2500 = 2500;", "let value_2500 = 0;")
        );
        // What the model sends: the edit's arguments against the whole file
        // rewritten with write_file.
        let edit_bytes = args.to_string().len();
        let rewrite_bytes = json!({"path": "big.rs", "content": after})
            .to_string()
            .len();
        assert!(
            edit_bytes * 500 < rewrite_bytes,
            "{edit_bytes} vs {rewrite_bytes}"
        );
        // The result is small too: the region, not the file.
        assert!(r.len() < 600, "{}", r.len());
    }

    #[test]
    fn read_file_pages_with_numbered_lines() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path()).with_settings(AgentSettings {
            read_max_lines: 100,
            ..AgentSettings::default()
        });
        let content: String = (1..=250).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("f.txt"), content).unwrap();
        let r = call(&t, "read_file", json!({"path": "f.txt"}));
        assert!(r.starts_with("     1\tline 1\n"), "{r}");
        assert!(r.ends_with("[lines 1-100 of 250 shown; the file goes on: call read_file with start_line 101 for more]"), "{r}");
        let r = call(&t, "read_file", json!({"path": "f.txt", "start_line": 240}));
        assert!(
            r.starts_with("   240\tline 240\n") && r.ends_with("[lines 240-250 of 250]"),
            "{r}"
        );
        let r = call(
            &t,
            "read_file",
            json!({"path": "f.txt", "start_line": 10, "end_line": 11}),
        );
        assert_eq!(r, "    10\tline 10\n    11\tline 11\n[lines 10-11 of 250]");
        let r = call(&t, "read_file", json!({"path": "f.txt", "start_line": 300}));
        assert!(r.starts_with("error: `f.txt` has 250 lines"), "{r}");
        // A byte bound cuts a page too, and says so.
        let t = tools(dir.path()).with_settings(AgentSettings {
            tool_result_max_bytes: 1024,
            ..AgentSettings::default()
        });
        let r = call(&t, "read_file", json!({"path": "f.txt"}));
        assert!(
            r.len() <= 1024 && r.contains("the file goes on: call read_file with start_line"),
            "{r}"
        );
        std::fs::write(dir.path().join("b.bin"), b"\x7fELF\0\0\x01").unwrap();
        assert!(call(&t, "read_file", json!({"path": "b.bin"})).contains("binary file"));
    }

    #[test]
    fn apply_patch_changes_several_files_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path());
        std::fs::write(dir.path().join("a.txt"), "one\ntwo\nthree\n").unwrap();
        std::fs::write(dir.path().join("gone.txt"), "bye\n").unwrap();
        std::fs::write(dir.path().join("old.txt"), "x\ny\n").unwrap();
        let patch = "*** Begin Patch\n*** Add File: sub/new.txt\n+hello\n+world\n*** Update File: a.txt\n@@\n one\n-two\n+TWO\n*** Delete File: gone.txt\n*** Update File: old.txt\n*** Move to: moved.txt\n-y\n+z\n*** End Patch\n";
        let r = call(&t, "apply_patch", json!({"patch": patch}));
        assert!(r.starts_with("applied the patch:"), "{r}");
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).ok();
        assert_eq!(read("sub/new.txt").as_deref(), Some("hello\nworld\n"));
        assert_eq!(read("a.txt").as_deref(), Some("one\nTWO\nthree\n"));
        assert_eq!(read("gone.txt"), None);
        assert_eq!(read("old.txt"), None);
        assert_eq!(read("moved.txt").as_deref(), Some("x\nz\n"));
        // One chunk that does not apply: nothing is changed.
        let bad = "*** Begin Patch\n*** Add File: b.txt\n+b\n*** Update File: a.txt\n-four\n+4\n*** End Patch";
        let r = call(&t, "apply_patch", json!({"patch": bad}));
        assert!(
            r.starts_with("error: `a.txt`, chunk 1: these lines were not found"),
            "{r}"
        );
        assert_eq!(read("b.txt"), None);
        // Through a symlink: refused, nothing written outside.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).unwrap();
        let r = call(
            &t,
            "apply_patch",
            json!({"patch": "*** Begin Patch\n*** Add File: out/x\n+x\n*** End Patch"}),
        );
        assert!(r.starts_with("error: ") && r.contains("symlink"), "{r}");
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn search_respects_gitignore_skips_binaries_and_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("src/gen")).unwrap();
        std::fs::create_dir_all(root.join("target")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join(".gitignore"), "target/\n*.log\n").unwrap();
        std::fs::write(root.join("src/.gitignore"), "gen/\n").unwrap();
        std::fs::write(root.join("src/main.rs"), "fn main() {\n    needle();\n}\n").unwrap();
        std::fs::write(root.join("src/lib.py"), "NEEDLE = 1\n").unwrap();
        std::fs::write(root.join("src/gen/x.rs"), "needle\n").unwrap();
        std::fs::write(root.join("target/out.rs"), "needle\n").unwrap();
        std::fs::write(root.join("run.log"), "needle\n").unwrap();
        std::fs::write(root.join("blob.bin"), b"needle\0\x01").unwrap();
        std::fs::write(outside.join("secret.rs"), "needle\n").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let t = tools(&root);
        let r = call(&t, "search", json!({"pattern": "needle"}));
        assert_eq!(
            r,
            "src/main.rs:2:     needle();\n[1 matches in 1 files; 1 binary files skipped]"
        );
        let r = call(
            &t,
            "search",
            json!({"pattern": "needle", "case_insensitive": true, "glob": "*.py"}),
        );
        assert_eq!(r, "src/lib.py:1: NEEDLE = 1\n[1 matches in 1 files]");
        let r = call(&t, "search", json!({"pattern": "nothing here"}));
        assert!(r.starts_with("no matches for `nothing here`"), "{r}");
        assert!(call(&t, "search", json!({"pattern": "("}))
            .starts_with("error: `(` is not a valid regular expression"));
        assert!(call(&t, "search", json!({"pattern": "x", "path": "link"})).contains("symlink"));
        // Capped, with the counts.
        let many: String = (0..50).map(|i| format!("hit {i}\n")).collect();
        std::fs::write(root.join("src/many.txt"), many).unwrap();
        let t = t.with_settings(AgentSettings {
            search_max_matches: 5,
            ..AgentSettings::default()
        });
        let r = call(&t, "search", json!({"pattern": "^hit"}));
        assert_eq!(r.lines().count(), 6, "{r}");
        assert!(r.ends_with("[50 matches in 1 files; the first 5 are shown — narrow the pattern, the path or the glob; 1 binary files skipped]"), "{r}");
    }

    #[test]
    fn list_files_takes_a_depth_and_a_glob() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b/c")).unwrap();
        std::fs::write(dir.path().join("a/x.rs"), "").unwrap();
        std::fs::write(dir.path().join("a/b/c/y.rs"), "").unwrap();
        std::fs::write(dir.path().join("a/b/z.py"), "").unwrap();
        let t = tools(dir.path());
        assert_eq!(call(&t, "list_files", json!({"depth": 1})), "a/");
        assert_eq!(
            call(&t, "list_files", json!({"depth": 2})),
            "a/\na/b/\na/x.rs"
        );
        assert_eq!(
            call(&t, "list_files", json!({"glob": "*.rs"})),
            "a/b/c/y.rs\na/x.rs"
        );
        assert_eq!(
            call(&t, "list_files", json!({"path": "a/b", "depth": 1})),
            "a/b/c/\na/b/z.py"
        );
        let t = t.with_settings(AgentSettings {
            list_max_entries: 10,
            ..AgentSettings::default()
        });
        for i in 0..20 {
            std::fs::write(dir.path().join(format!("f{i:02}")), "").unwrap();
        }
        let r = call(&t, "list_files", json!({}));
        assert!(r.ends_with("[listing cut at 10 entries (list_max_entries); list a subdirectory, or give a depth or a glob]"), "{r}");
    }

    #[test]
    fn every_result_is_bounded_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let t = tools(dir.path()).with_settings(AgentSettings {
            tool_result_max_bytes: 1024,
            ..AgentSettings::default()
        });
        std::fs::write(dir.path().join("wide.txt"), "é".repeat(3000)).unwrap();
        let r = call(&t, "search", json!({"pattern": "é"}));
        assert!(r.len() <= 1024, "{}", r.len());
        let big = bound("ab".repeat(5000), 1024);
        assert!(
            big.len() <= 1024
                && big.contains("bytes omitted")
                && big.starts_with("abab")
                && big.ends_with("ab")
        );
        assert_eq!(bound("short".into(), 1024), "short");
    }
}
