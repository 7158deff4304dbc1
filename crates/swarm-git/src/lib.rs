//! Git through the `git` binary: the project repository, one worktree per
//! attempt, commits carrying the `Swarm-*` trailers, `--no-ff` merges into
//! `main` that never leave it half-merged, and file listings for packaging.
//!
//! Shelling out is what mature tools do for worktrees and merges (libgit2 and
//! gitoxide lack parts of both). Each operation spawns as few `git`
//! processes as it can: process creation is most of the per-task cost.
//!
//! Every invocation runs with the user's and the system's git configuration
//! ignored, hooks disabled and a fixed identity, so a run behaves the same on
//! every machine.
//!
//! A task worktree is written by the model's commands, so nothing in it is
//! trusted, its `.git` link included: git runs there (see [`commit_all`],
//! [`reset_worktree_at`]) with `GIT_DIR` set to the worktree's
//! administrative directory, found from the repository's side, and the link
//! is put back the way git wrote it first.

mod pool;

pub use pool::{Lease, WorktreePool};

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("git {command} failed ({exit}): {stderr}")]
    Command {
        command: String,
        exit: String,
        stderr: String,
    },
    #[error(transparent)]
    Exec(#[from] swarm_exec::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("unexpected git output: {0}")]
    Parse(String),
    #[error(
        "{} is not a worktree of the repository at {} (no .git/worktrees/*/gitdir names it); \
         remove the directory and create the worktree again",
        worktree.display(),
        repo.display()
    )]
    NotAWorktree { repo: PathBuf, worktree: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

/// The identity of every commit AgentSwarm makes.
pub const AUTHOR_NAME: &str = "AgentSwarm";
pub const AUTHOR_EMAIL: &str = "agentswarm@localhost";
/// The integration branch.
pub const MAIN: &str = "main";

/// Written to `.git/info/exclude` (shared by every worktree): what a worker
/// commit must never pick up — build output, caches and secrets. A project's
/// own `.gitignore` adds to it.
pub const DEFAULT_EXCLUDES: &str = "\
# written by agentswarm: never committed by a worker
/.agentswarm/
__pycache__/
*.py[co]
.pytest_cache/
.mypy_cache/
.ruff_cache/
.tox/
.venv/
node_modules/
target/
.env
.env.*
*.pem
*.key
id_rsa
id_ed25519
";

/// The trailers every task commit carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailers {
    pub project: String,
    pub task: String,
    pub attempt: u32,
}

impl Trailers {
    fn render(&self) -> String {
        format!(
            "Swarm-Project: {}\nSwarm-Task: {}\nSwarm-Attempt: {}\n",
            self.project, self.task, self.attempt
        )
    }
}

fn git_env() -> Vec<(OsString, OsString)> {
    [
        ("GIT_CONFIG_NOSYSTEM", "1"),
        ("GIT_CONFIG_GLOBAL", "/dev/null"),
        ("GIT_TERMINAL_PROMPT", "0"),
        ("GIT_AUTHOR_NAME", AUTHOR_NAME),
        ("GIT_AUTHOR_EMAIL", AUTHOR_EMAIL),
        ("GIT_COMMITTER_NAME", AUTHOR_NAME),
        ("GIT_COMMITTER_EMAIL", AUTHOR_EMAIL),
    ]
    .into_iter()
    .map(|(k, v)| (OsString::from(k), OsString::from(v)))
    .collect()
}

/// Runs git in `dir`; fails on a non-zero exit.
fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<swarm_exec::Captured> {
    let out = git_status(dir, args, stdin)?;
    if !out.exit.success() {
        return Err(command_error(args, &out));
    }
    Ok(out)
}

/// Runs git in `dir` and returns whatever it did.
fn git_status(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<swarm_exec::Captured> {
    git_status_env(dir, Vec::new(), args, stdin)
}

/// Runs git in `dir` with `env` added to [`git_env`].
fn git_status_env(
    dir: &Path,
    env: Vec<(OsString, OsString)>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<swarm_exec::Captured> {
    // No hooks; no automatic gc/maintenance child process after commits and
    // merges; no reflogs (a file created per task branch): creating files and
    // processes is most of what git costs here.
    let mut full: Vec<&str> = vec![
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.quotepath=false",
        "-c",
        "gc.auto=0",
        "-c",
        "maintenance.auto=false",
        "-c",
        "core.logAllRefUpdates=false",
    ];
    full.extend_from_slice(args);
    let mut full_env = git_env();
    full_env.extend(env);
    let opts = swarm_exec::RunOptions {
        cwd: Some(dir.to_owned()),
        env: full_env,
        stdin: stdin.map(<[u8]>::to_vec),
        timeout: Some(Duration::from_secs(600)),
    };
    Ok(swarm_exec::run("git", &full, &opts)?)
}

fn command_error(args: &[&str], out: &swarm_exec::Captured) -> Error {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    Error::Command {
        command: args.first().copied().unwrap_or("").to_owned(),
        exit: out.exit.to_string(),
        stderr: text.trim().chars().take(2000).collect(),
    }
}

fn nul_split(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// What a task worktree's `.git` link was before git ran there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitLink {
    /// The regular file git wrote, unchanged.
    Intact,
    /// Something else was there; it was removed and git's file written again.
    Restored(LinkFound),
}

/// What was at a worktree's `.git` instead of the file git wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFound {
    Missing,
    /// A regular file with other contents (another `gitdir:`, say).
    OtherFile,
    Directory,
    Symlink,
    /// A FIFO, socket or device.
    Special,
}

impl std::fmt::Display for LinkFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "missing",
            Self::OtherFile => "a file with other contents",
            Self::Directory => "a directory",
            Self::Symlink => "a symbolic link",
            Self::Special => "a special file",
        })
    }
}

/// A linked worktree's git directories, found from the repository's side:
/// git runs with `GIT_DIR` and `GIT_WORK_TREE` set, so it never reads the
/// worktree's `.git` (which the model's commands can rewrite: a directory
/// with `core.fsmonitor` in its config, a link to another repository).
#[derive(Debug)]
struct WorktreeGit {
    work_tree: PathBuf,
    admin: PathBuf,
}

impl WorktreeGit {
    /// Finds the administrative directory of `worktree` under the
    /// repository's `.git/worktrees` and puts the worktree's `.git` link back
    /// the way git wrote it. No process: a readdir at most and a few small
    /// file reads.
    fn open(repo: &Repo, worktree: &Path) -> Result<(Self, GitLink)> {
        let work_tree = std::fs::canonicalize(worktree)?;
        let admin = find_admin_dir(&repo.root, &work_tree).ok_or_else(|| Error::NotAWorktree {
            repo: repo.root.clone(),
            worktree: worktree.to_owned(),
        })?;
        let link = restore_link(&work_tree, &admin)?;
        if let GitLink::Restored(found) = link {
            tracing::warn!(
                worktree = %work_tree.display(),
                %found,
                "the worktree's .git was not the file git wrote; restored it"
            );
        }
        Ok((Self { work_tree, admin }, link))
    }

    fn git(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<swarm_exec::Captured> {
        let env = vec![
            (
                OsString::from("GIT_DIR"),
                self.admin.clone().into_os_string(),
            ),
            (
                OsString::from("GIT_WORK_TREE"),
                self.work_tree.clone().into_os_string(),
            ),
        ];
        let out = git_status_env(&self.work_tree, env, args, stdin)?;
        if !out.exit.success() {
            return Err(command_error(args, &out));
        }
        Ok(out)
    }
}

/// The canonical path of the directory under `<root>/.git/worktrees` whose
/// `gitdir` file names `<work_tree>/.git` (`work_tree` canonical). Git names
/// that directory after the worktree's basename (plus a number when the name
/// is taken), so that one is read first; git records the worktree's real
/// path, so an exact record wins over one that only resolves to it.
fn find_admin_dir(root: &Path, work_tree: &Path) -> Option<PathBuf> {
    let worktrees = root.join(".git").join("worktrees");
    let want = work_tree.join(".git");
    let likely = work_tree.file_name().map(|name| worktrees.join(name));
    if let Some(dir) = likely.as_deref() {
        if recorded_link(dir).is_some_and(|r| r == want) {
            return std::fs::canonicalize(dir).ok();
        }
    }
    let records: Vec<(PathBuf, PathBuf)> = std::fs::read_dir(&worktrees)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|dir| recorded_link(&dir).map(|r| (dir, r)))
        .collect();
    records
        .iter()
        .find(|(_, r)| *r == want)
        .or_else(|| records.iter().find(|(_, r)| same_link(r, &want)))
        .and_then(|(dir, _)| std::fs::canonicalize(dir).ok())
}

/// The worktree's `.git` as the `gitdir` file in `admin` records it, made
/// absolute (git may record it relative to `admin`).
fn recorded_link(admin: &Path) -> Option<PathBuf> {
    let text = std::fs::read(admin.join("gitdir")).ok()?;
    let text = text.strip_suffix(b"\n").unwrap_or(&text);
    Some(admin.join(Path::new(std::ffi::OsStr::from_bytes(text))))
}

/// Whether `recorded` (a `.git` under some directory) is `want` (a `.git`
/// under a canonical directory) once its directory is resolved. The `.git`
/// itself is never resolved: it is the worktree's and may be anything.
fn same_link(recorded: &Path, want: &Path) -> bool {
    recorded.file_name() == Some(std::ffi::OsStr::new(".git"))
        && recorded
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p.join(".git") == want)
}

/// Makes `<work_tree>/.git` the regular file `gitdir: <admin>\n` that
/// `git worktree add` writes, removing whatever else is there without
/// following symlinks.
fn restore_link(work_tree: &Path, admin: &Path) -> Result<GitLink> {
    let link = work_tree.join(".git");
    let mut expected = b"gitdir: ".to_vec();
    expected.extend_from_slice(admin.as_os_str().as_bytes());
    expected.push(b'\n');
    // Commands of the attempt may still be running and change it under us.
    for _ in 0..3 {
        let found = match std::fs::symlink_metadata(&link) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LinkFound::Missing,
            Err(e) => return Err(e.into()),
            Ok(m) if m.is_file() => {
                if m.len() == expected.len() as u64 && read_regular(&link)? == expected {
                    return Ok(GitLink::Intact);
                }
                LinkFound::OtherFile
            }
            Ok(m) if m.is_dir() => LinkFound::Directory,
            Ok(m) if m.is_symlink() => LinkFound::Symlink,
            Ok(_) => LinkFound::Special,
        };
        let removed = match found {
            LinkFound::Missing => Ok(()),
            // Does not follow symlinks inside the directory.
            LinkFound::Directory => std::fs::remove_dir_all(&link),
            // Removes a symlink itself, never its target.
            LinkFound::OtherFile | LinkFound::Symlink | LinkFound::Special => {
                std::fs::remove_file(&link)
            }
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        // O_CREAT|O_EXCL: never writes through a symlink planted meanwhile.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&link)
        {
            Ok(mut file) => {
                file.write_all(&expected)?;
                return Ok(GitLink::Restored(found));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Io(std::io::Error::other(format!(
        "{} keeps changing; stop what runs in the worktree and try again",
        link.display()
    ))))
}

/// The contents of `path` if it is still a regular file once opened.
fn read_regular(path: &Path) -> Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(Vec::new());
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A commit made by [`commit_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The full sha.
    pub sha: String,
    /// What the worktree's `.git` was before the commit (restored if it was
    /// not git's file; also logged with `tracing::warn!`).
    pub link: GitLink,
}

/// Stages everything in `dir`, a worktree of `repo`, and commits it, even
/// when nothing changed, with `subject` and the trailers. Git runs with
/// `GIT_DIR` set to the worktree's administrative directory in `repo`, never
/// trusting `dir/.git`, which is restored first if it is not the file git
/// wrote. Two git processes.
pub fn commit_all(
    repo: &Repo,
    dir: &Path,
    subject: &str,
    body: &str,
    trailers: &Trailers,
) -> Result<Commit> {
    let (wt, link) = WorktreeGit::open(repo, dir)?;
    wt.git(&["add", "-A"], None)?;
    let mut message = subject.trim().to_owned();
    if !body.trim().is_empty() {
        message.push_str("\n\n");
        message.push_str(body.trim());
    }
    message.push_str("\n\n");
    message.push_str(&trailers.render());
    let out = wt.git(
        &[
            "-c",
            "core.abbrev=40",
            "commit",
            "--allow-empty",
            "--no-verify",
            "-F",
            "-",
        ],
        Some(message.as_bytes()),
    )?;
    // First line: `[branch sha] subject` or `[branch (root-commit) sha] subject`.
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    let inside = first
        .strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .unwrap_or_default();
    let sha = inside.split_whitespace().last().unwrap_or_default();
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(Commit {
            sha: sha.to_owned(),
            link,
        })
    } else {
        Err(Error::Parse(format!(
            "commit did not print its sha: {first}"
        )))
    }
}

/// Switches the existing worktree of `repo` at `path` to a new branch
/// `branch` at commit `start`, overwriting tracked files (only those that
/// differ are written). With `clean`, untracked and ignored files go too.
/// Like [`commit_all`], git never trusts `path/.git` and it is restored
/// first if it is not the file git wrote.
pub fn reset_worktree_at(
    repo: &Repo,
    path: &Path,
    branch: &str,
    start: &str,
    clean: bool,
) -> Result<GitLink> {
    let (wt, link) = WorktreeGit::open(repo, path)?;
    wt.git(&["checkout", "-q", "-f", "-B", branch, start], None)?;
    if clean {
        wt.git(&["clean", "-q", "-ffdx"], None)?;
    }
    Ok(link)
}

/// The version of the git binary, e.g. `git version 2.47.3`.
pub fn version() -> Result<String> {
    let out = git(Path::new("/"), &["--version"], None)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// How a merge ended. `main` is never left half-merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    Merged {
        commit: String,
    },
    /// The merge was aborted; these paths conflicted.
    Conflict {
        paths: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    Other,
}

/// A path a commit changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub path: String,
    pub kind: ChangeKind,
}

/// A task commit reachable from `main`, found by its trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCommit {
    pub sha: String,
    pub task: String,
    pub attempt: u32,
}

/// A project repository: `main` is checked out at [`Repo::root`], which is
/// the integration worktree (only merges write to it).
#[derive(Debug, Clone)]
pub struct Repo {
    root: PathBuf,
}

impl Repo {
    /// An existing repository.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        if !root.join(".git").is_dir() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} is not a git repository", root.display()),
            )));
        }
        Ok(Self { root })
    }

    /// Opens the repository at `root`, creating it (branch `main`, one empty
    /// commit carrying the project trailer) if it does not exist yet.
    pub fn init(root: impl Into<PathBuf>, project: &str) -> Result<Self> {
        let root = root.into();
        if root.join(".git").is_dir() {
            let repo = Self { root };
            repo.write_excludes()?;
            if repo.head().is_ok() {
                return Ok(repo);
            }
            // Created but never committed (a crash during init): commit now.
            repo.initial_commit(project)?;
            return Ok(repo);
        }
        std::fs::create_dir_all(&root)?;
        git(&root, &["init", "-q", "-b", MAIN], None)?;
        let repo = Self { root };
        repo.write_excludes()?;
        repo.initial_commit(project)?;
        Ok(repo)
    }

    fn write_excludes(&self) -> Result<()> {
        let info = self.root.join(".git/info");
        std::fs::create_dir_all(&info)?;
        std::fs::write(info.join("exclude"), DEFAULT_EXCLUDES)?;
        Ok(())
    }

    fn initial_commit(&self, project: &str) -> Result<()> {
        let message = format!("Start project {project}\n\nSwarm-Project: {project}\n");
        git(
            &self.root,
            &["commit", "-q", "--allow-empty", "--no-verify", "-F", "-"],
            Some(message.as_bytes()),
        )?;
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The commit `main` points at. Reads the loose ref when there is one
    /// (no process), else asks git.
    pub fn head(&self) -> Result<String> {
        if let Ok(s) = std::fs::read_to_string(self.root.join(".git/refs/heads").join(MAIN)) {
            let s = s.trim();
            if s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(s.to_owned());
            }
        }
        let out = git(
            &self.root,
            &["rev-parse", "--verify", "refs/heads/main"],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A new worktree at `path` on a new branch `branch` starting at the
    /// current `main` (an existing branch of that name is reset).
    pub fn add_worktree(&self, path: &Path, branch: &str) -> Result<()> {
        let start = self.head()?;
        self.add_worktree_at(path, branch, &start)
    }

    /// A new worktree at `path` on a new branch `branch` at commit `start`.
    pub fn add_worktree_at(&self, path: &Path, branch: &str, start: &str) -> Result<()> {
        let p = path.to_string_lossy();
        git(
            &self.root,
            &["worktree", "add", "-q", "-B", branch, &p, start],
            None,
        )?;
        Ok(())
    }

    /// A detached checkout of the current `main` at `path` (for verify).
    pub fn add_detached_worktree(&self, path: &Path) -> Result<()> {
        let p = path.to_string_lossy();
        let start = self.head()?;
        git(
            &self.root,
            &["worktree", "add", "-q", "--detach", &p, &start],
            None,
        )?;
        Ok(())
    }

    /// Points an existing worktree at a new branch `branch` starting at the
    /// current `main`, overwriting tracked files (only those that differ are
    /// written). With `clean`, untracked and ignored files go too. See
    /// [`reset_worktree_at`].
    pub fn reset_worktree(&self, path: &Path, branch: &str, clean: bool) -> Result<GitLink> {
        // Resolve main first: `checkout -B <branch> main` resolves the name
        // twice (for the files, then for the branch), so a merge landing in
        // between would leave the branch ahead of the files it checked out.
        let start = self.head()?;
        reset_worktree_at(self, path, branch, &start, clean)
    }

    /// Removes a worktree and its directory, whatever state it is in.
    pub fn remove_worktree(&self, path: &Path) -> Result<()> {
        let p = path.to_string_lossy();
        let out = git_status(
            &self.root,
            &["worktree", "remove", "--force", "--force", &p],
            None,
        )?;
        if out.exit.success() {
            return Ok(());
        }
        // Not a registered worktree (or half-created): remove the directory
        // and let git forget it.
        if path.exists() {
            std::fs::remove_dir_all(path)?;
        }
        self.prune_worktrees()
    }

    pub fn prune_worktrees(&self) -> Result<()> {
        git(&self.root, &["worktree", "prune"], None)?;
        Ok(())
    }

    /// Deletes every local branch whose name starts with `prefix`.
    pub fn delete_branches(&self, prefix: &str) -> Result<usize> {
        let pattern = format!("refs/heads/{prefix}");
        let out = git(
            &self.root,
            &["for-each-ref", "--format=%(refname:short)", &pattern],
            None,
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let branches: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        if branches.is_empty() {
            return Ok(0);
        }
        let mut args = vec!["branch", "-q", "-D"];
        args.extend(branches.iter().copied());
        if git(&self.root, &args, None).is_ok() {
            return Ok(branches.len());
        }
        // Some branch is still checked out in a worktree: delete the others one by one.
        Ok(branches
            .iter()
            .filter(|b| git(&self.root, &["branch", "-q", "-D", b], None).is_ok())
            .count())
    }

    /// Merges `branch` into `main` with `--no-ff`. On a conflict the merge is
    /// aborted and the conflicting paths returned; on any other failure `main`
    /// is reset to where it was.
    pub fn merge(&self, branch: &str, message: &str) -> Result<MergeOutcome> {
        let before = self.head()?;
        let out = match git_status(
            &self.root,
            &["merge", "--no-ff", "--no-edit", "-q", "-m", message, branch],
            None,
        ) {
            Ok(out) => out,
            Err(e) => {
                // git could not run or was killed: main must not stay half-merged.
                if let Err(r) = self.repair(Some(&before)) {
                    tracing::error!(error = %r, "cannot repair main after a failed merge");
                }
                return Err(e);
            }
        };
        if out.exit.success() {
            return Ok(MergeOutcome::Merged {
                commit: self.head()?,
            });
        }
        let conflicted = git_status(
            &self.root,
            &["diff", "--name-only", "--diff-filter=U", "-z"],
            None,
        )?;
        let paths = nul_split(&conflicted.stdout);
        // Whatever happened, main ends where it began, with a clean tree.
        self.repair(Some(&before))?;
        if paths.is_empty() {
            Err(command_error(&["merge"], &out))
        } else {
            Ok(MergeOutcome::Conflict { paths })
        }
    }

    /// Brings the integration worktree back to a clean `main` after a merge
    /// that did not finish (a crash, a timeout, a killed git): stale lock
    /// files go, a merge in progress is aborted, and the tree is reset to
    /// `to` (default: what `main` points at). Only call it while nothing else
    /// writes to the integration worktree (the merge queue, or recovery).
    pub fn repair(&self, to: Option<&str>) -> Result<()> {
        let git_dir = self.root.join(".git");
        for lock in ["index.lock", "HEAD.lock", "refs/heads/main.lock"] {
            match std::fs::remove_file(git_dir.join(lock)) {
                Ok(()) => tracing::warn!(lock, "removed a stale git lock file"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if git_dir.join("MERGE_HEAD").exists() {
            let _ = git_status(&self.root, &["merge", "--abort"], None);
        }
        git(
            &self.root,
            &["reset", "-q", "--hard", to.unwrap_or(MAIN)],
            None,
        )?;
        Ok(())
    }

    /// Paths `commit` changed relative to its first parent.
    pub fn changed_files(&self, commit: &str) -> Result<Vec<Change>> {
        let out = git(
            &self.root,
            &[
                "diff-tree",
                "-r",
                "-z",
                "--no-commit-id",
                "--name-status",
                "--root",
                commit,
            ],
            None,
        )?;
        let fields = nul_split(&out.stdout);
        let mut changes = Vec::new();
        let mut it = fields.into_iter();
        while let Some(status) = it.next() {
            let kind = match status.chars().next() {
                Some('A') => ChangeKind::Added,
                Some('M') => ChangeKind::Modified,
                Some('D') => ChangeKind::Deleted,
                _ => ChangeKind::Other,
            };
            // Renames and copies (R/C) carry two paths; -r without -M does not emit them.
            if matches!(status.chars().next(), Some('R') | Some('C')) {
                let _ = it.next();
            }
            let Some(path) = it.next() else {
                return Err(Error::Parse(format!(
                    "diff-tree: status {status} without a path"
                )));
            };
            changes.push(Change { path, kind });
        }
        Ok(changes)
    }

    /// Every path `main` tracks (from the integration worktree's index).
    pub fn tracked_files(&self) -> Result<Vec<String>> {
        let out = git(&self.root, &["ls-files", "-z"], None)?;
        Ok(nul_split(&out.stdout))
    }

    /// Task commits reachable from `main` (found by their trailers).
    pub fn task_commits(&self) -> Result<Vec<TaskCommit>> {
        let format = "--format=%H%x00%(trailers:key=Swarm-Task,valueonly,separator=)%x00%(trailers:key=Swarm-Attempt,valueonly,separator=)%x00";
        let out = git(&self.root, &["log", "--no-merges", format, MAIN], None)?;
        let fields: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|s| String::from_utf8_lossy(s).trim().to_owned())
            .collect();
        let mut commits = Vec::new();
        for chunk in fields.chunks(3) {
            let [sha, task, attempt] = chunk else {
                continue;
            };
            if task.is_empty() {
                continue;
            }
            if let Ok(attempt) = attempt.parse() {
                commits.push(TaskCommit {
                    sha: sha.clone(),
                    task: task.clone(),
                    attempt,
                });
            }
        }
        Ok(commits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers(task: &str, attempt: u32) -> Trailers {
        Trailers {
            project: "p1".into(),
            task: task.into(),
            attempt,
        }
    }

    fn task_commit(
        repo: &Repo,
        dir: &Path,
        task: &str,
        attempt: u32,
        files: &[(&str, &str)],
    ) -> String {
        let wt = dir.join(format!("{task}-{attempt}"));
        repo.add_worktree(&wt, &format!("task/{task}/{attempt}"))
            .unwrap();
        for (path, content) in files {
            let p = wt.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        commit_all(
            repo,
            &wt,
            &format!("{task}: work"),
            "",
            &trailers(task, attempt),
        )
        .unwrap()
        .sha
    }

    #[test]
    fn init_is_idempotent_and_main_has_a_commit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let head = repo.head().unwrap();
        assert_eq!(head.len(), 40);
        let again = Repo::init(dir.path().join("repo"), "p1").unwrap();
        assert_eq!(again.head().unwrap(), head);
        assert!(repo.tracked_files().unwrap().is_empty());
    }

    #[test]
    fn task_commit_merges_with_trailers() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let sha = task_commit(&repo, dir.path(), "a", 1, &[("src/a.py", "print(1)\n")]);
        let MergeOutcome::Merged { commit } = repo.merge("task/a/1", "Merge task a").unwrap()
        else {
            panic!("conflict")
        };
        assert_eq!(repo.head().unwrap(), commit);
        assert_eq!(repo.tracked_files().unwrap(), vec!["src/a.py".to_owned()]);
        assert_eq!(
            repo.task_commits().unwrap(),
            vec![TaskCommit {
                sha: sha.clone(),
                task: "a".into(),
                attempt: 1
            }]
        );
        assert_eq!(
            repo.changed_files(&sha).unwrap(),
            vec![Change {
                path: "src/a.py".into(),
                kind: ChangeKind::Added
            }]
        );
        // Build output and secrets in a worktree are never committed.
        let wt = dir.path().join("c-1");
        repo.add_worktree(&wt, "task/c/1").unwrap();
        std::fs::create_dir_all(wt.join("pkg/__pycache__")).unwrap();
        std::fs::write(wt.join("pkg/__pycache__/m.cpython-311.pyc"), "x").unwrap();
        std::fs::write(wt.join(".env"), "KEY=not-real").unwrap();
        std::fs::write(wt.join("pkg/m.py"), "").unwrap();
        let c = commit_all(&repo, &wt, "c", "", &trailers("c", 1))
            .unwrap()
            .sha;
        assert_eq!(
            repo.changed_files(&c)
                .unwrap()
                .iter()
                .map(|c| c.path.as_str())
                .collect::<Vec<_>>(),
            ["pkg/m.py"]
        );
        repo.remove_worktree(&dir.path().join("a-1")).unwrap();
        repo.remove_worktree(&wt).unwrap();
        assert!(!dir.path().join("a-1").exists());
        assert_eq!(repo.delete_branches("task/").unwrap(), 2);
    }

    #[test]
    fn conflict_is_aborted_and_main_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        task_commit(&repo, dir.path(), "a", 1, &[("f.txt", "one\n")]);
        task_commit(&repo, dir.path(), "b", 1, &[("f.txt", "two\n")]);
        assert!(matches!(
            repo.merge("task/a/1", "m").unwrap(),
            MergeOutcome::Merged { .. }
        ));
        let head = repo.head().unwrap();
        let outcome = repo.merge("task/b/1", "m").unwrap();
        assert_eq!(
            outcome,
            MergeOutcome::Conflict {
                paths: vec!["f.txt".into()]
            }
        );
        assert_eq!(repo.head().unwrap(), head);
        assert_eq!(
            std::fs::read_to_string(repo.root().join("f.txt")).unwrap(),
            "one\n"
        );
        let status = git(repo.root(), &["status", "--porcelain"], None).unwrap();
        assert!(
            status.stdout.is_empty(),
            "main's worktree is dirty: {}",
            String::from_utf8_lossy(&status.stdout)
        );
    }

    #[test]
    fn a_merge_cut_short_is_repaired() {
        // What a supervisor killed during `git merge` leaves behind: a merge
        // in progress with conflict markers and a stale index.lock.
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        task_commit(&repo, dir.path(), "a", 1, &[("f.txt", "one\n")]);
        task_commit(&repo, dir.path(), "b", 1, &[("f.txt", "two\n")]);
        repo.merge("task/a/1", "m").unwrap();
        let head = repo.head().unwrap();
        let out = git_status(
            repo.root(),
            &["merge", "--no-ff", "--no-edit", "task/b/1"],
            None,
        )
        .unwrap();
        assert!(!out.exit.success());
        assert!(repo.root().join(".git/MERGE_HEAD").exists());
        std::fs::write(repo.root().join(".git/index.lock"), "").unwrap();
        // With the lock in place, the next merge cannot land — and repairs main.
        assert!(!matches!(
            repo.merge("task/b/1", "m"),
            Ok(MergeOutcome::Merged { .. })
        ));
        assert!(!repo.root().join(".git/index.lock").exists());
        assert!(!repo.root().join(".git/MERGE_HEAD").exists());
        assert_eq!(repo.head().unwrap(), head);
        std::fs::write(repo.root().join(".git/index.lock"), "").unwrap();
        repo.repair(None).unwrap();
        let status = git(repo.root(), &["status", "--porcelain"], None).unwrap();
        assert!(
            status.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&status.stdout)
        );
        assert_eq!(
            std::fs::read_to_string(repo.root().join("f.txt")).unwrap(),
            "one\n"
        );
    }

    #[test]
    fn deletions_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        task_commit(&repo, dir.path(), "a", 1, &[("x", "1"), ("y", "2")]);
        repo.merge("task/a/1", "m").unwrap();
        let wt = dir.path().join("b-1");
        repo.add_worktree(&wt, "task/b/1").unwrap();
        std::fs::remove_file(wt.join("x")).unwrap();
        let sha = commit_all(&repo, &wt, "b", "body", &trailers("b", 1))
            .unwrap()
            .sha;
        assert_eq!(
            repo.changed_files(&sha).unwrap(),
            vec![Change {
                path: "x".into(),
                kind: ChangeKind::Deleted
            }]
        );
    }

    /// The commit a branch of `repo` points at.
    fn branch_head(repo: &Repo, branch: &str) -> String {
        let out = git(
            repo.root(),
            &["rev-parse", "--verify", &format!("refs/heads/{branch}")],
            None,
        )
        .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// The branch a worktree of `repo` has checked out, from its admin dir.
    fn worktree_head(repo: &Repo, name: &str) -> String {
        std::fs::read_to_string(repo.root().join(".git/worktrees").join(name).join("HEAD")).unwrap()
    }

    /// Replaces the worktree's `.git` file by a git directory (valid for
    /// discovery) whose config runs `touch <marker>` as `core.fsmonitor`.
    fn plant_fsmonitor(scratch: &Path, name: &str, wt: &Path, marker: &Path) {
        let evil = scratch.join(name);
        git(scratch, &["init", "-q", evil.to_str().unwrap()], None).unwrap();
        let config = evil.join(".git/config");
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!(
            "[core]\n\tfsmonitor = \"touch {}; true\"\n",
            marker.display()
        ));
        std::fs::write(&config, text).unwrap();
        std::fs::remove_file(wt.join(".git")).unwrap();
        std::fs::rename(evil.join(".git"), wt.join(".git")).unwrap();
    }

    fn assert_link_restored(wt: &Path, original: &[u8]) {
        let meta = std::fs::symlink_metadata(wt.join(".git")).unwrap();
        assert!(meta.is_file(), "{:?}", meta.file_type());
        assert_eq!(std::fs::read(wt.join(".git")).unwrap(), original);
    }

    #[test]
    fn a_git_dir_planted_in_a_worktree_never_runs_its_config() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let wt = dir.path().join("w1");
        repo.add_worktree(&wt, "task/a/1").unwrap();
        let original = std::fs::read(wt.join(".git")).unwrap();
        let marker = dir.path().join("marker");

        plant_fsmonitor(dir.path(), "evil1", &wt, &marker);
        // The attack is real: git finding `.git` by itself runs the command.
        git_status(&wt, &["add", "-A"], None).unwrap();
        assert!(marker.exists(), "plain discovery ran the planted fsmonitor");
        std::fs::remove_file(&marker).unwrap();

        std::fs::write(wt.join("a.txt"), "a").unwrap();
        let commit = commit_all(&repo, &wt, "a", "", &trailers("a", 1)).unwrap();
        assert!(!marker.exists(), "commit_all ran the planted fsmonitor");
        assert_eq!(commit.link, GitLink::Restored(LinkFound::Directory));
        assert_link_restored(&wt, &original);
        assert_eq!(branch_head(&repo, "task/a/1"), commit.sha);
        assert_eq!(
            repo.changed_files(&commit.sha).unwrap(),
            vec![Change {
                path: "a.txt".into(),
                kind: ChangeKind::Added
            }]
        );

        plant_fsmonitor(dir.path(), "evil2", &wt, &marker);
        std::fs::write(wt.join("junk.txt"), "left behind").unwrap();
        let main = repo.head().unwrap();
        let link = reset_worktree_at(&repo, &wt, "task/b/1", &main, true).unwrap();
        assert!(
            !marker.exists(),
            "reset_worktree_at ran the planted fsmonitor"
        );
        assert_eq!(link, GitLink::Restored(LinkFound::Directory));
        assert_link_restored(&wt, &original);
        assert_eq!(worktree_head(&repo, "w1"), "ref: refs/heads/task/b/1\n");
        assert_eq!(branch_head(&repo, "task/b/1"), main);
        assert!(!wt.join("a.txt").exists() && !wt.join("junk.txt").exists());
    }

    #[test]
    fn a_git_link_to_another_repository_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let other = Repo::init(dir.path().join("other"), "p2").unwrap();
        let ow = dir.path().join("ow");
        other.add_worktree(&ow, "task/a/1").unwrap();
        let other_link = std::fs::read(ow.join(".git")).unwrap();
        let other_head = branch_head(&other, "task/a/1");
        let wt = dir.path().join("w1");
        repo.add_worktree(&wt, "task/a/1").unwrap();
        let original = std::fs::read(wt.join(".git")).unwrap();

        std::fs::write(wt.join(".git"), &other_link).unwrap();
        std::fs::write(wt.join("a.txt"), "a").unwrap();
        let commit = commit_all(&repo, &wt, "a", "", &trailers("a", 1)).unwrap();
        assert_eq!(commit.link, GitLink::Restored(LinkFound::OtherFile));
        assert_link_restored(&wt, &original);
        assert_eq!(branch_head(&repo, "task/a/1"), commit.sha);
        assert_eq!(branch_head(&other, "task/a/1"), other_head);

        std::fs::write(wt.join(".git"), &other_link).unwrap();
        let main = repo.head().unwrap();
        let link = reset_worktree_at(&repo, &wt, "task/b/1", &main, false).unwrap();
        assert_eq!(link, GitLink::Restored(LinkFound::OtherFile));
        assert_link_restored(&wt, &original);
        assert_eq!(worktree_head(&repo, "w1"), "ref: refs/heads/task/b/1\n");
        assert_eq!(worktree_head(&other, "ow"), "ref: refs/heads/task/a/1\n");
        assert_eq!(branch_head(&other, "task/a/1"), other_head);
    }

    #[test]
    fn a_symlinked_git_link_is_replaced_without_touching_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let other = Repo::init(dir.path().join("other"), "p2").unwrap();
        let ow = dir.path().join("ow");
        other.add_worktree(&ow, "task/a/1").unwrap();
        let other_admin = other.root().join(".git/worktrees/ow");
        let other_head = branch_head(&other, "task/a/1");
        let wt = dir.path().join("w1");
        repo.add_worktree(&wt, "task/a/1").unwrap();
        let original = std::fs::read(wt.join(".git")).unwrap();

        std::fs::remove_file(wt.join(".git")).unwrap();
        std::os::unix::fs::symlink(&other_admin, wt.join(".git")).unwrap();
        std::fs::write(wt.join("a.txt"), "a").unwrap();
        let commit = commit_all(&repo, &wt, "a", "", &trailers("a", 1)).unwrap();
        assert_eq!(commit.link, GitLink::Restored(LinkFound::Symlink));
        assert_link_restored(&wt, &original);
        assert_eq!(branch_head(&repo, "task/a/1"), commit.sha);
        assert_eq!(branch_head(&other, "task/a/1"), other_head);
        assert!(other_admin.join("HEAD").is_file(), "the target was removed");

        std::fs::remove_file(wt.join(".git")).unwrap();
        std::os::unix::fs::symlink(&other_admin, wt.join(".git")).unwrap();
        let main = repo.head().unwrap();
        let link = reset_worktree_at(&repo, &wt, "task/b/1", &main, true).unwrap();
        assert_eq!(link, GitLink::Restored(LinkFound::Symlink));
        assert_link_restored(&wt, &original);
        assert_eq!(worktree_head(&repo, "w1"), "ref: refs/heads/task/b/1\n");
        assert_eq!(worktree_head(&other, "ow"), "ref: refs/heads/task/a/1\n");
        assert!(other_admin.join("HEAD").is_file(), "the target was removed");
    }

    #[test]
    fn worktrees_are_found_from_the_repository_side() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        // Same basename: the second admin dir is `w1`, found by the scan.
        let a = dir.path().join("a/w");
        let b = dir.path().join("b/w");
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::create_dir_all(dir.path().join("b")).unwrap();
        repo.add_worktree(&a, "task/a/1").unwrap();
        repo.add_worktree(&b, "task/b/1").unwrap();
        assert!(repo.root().join(".git/worktrees/w1").is_dir());
        let ca = commit_all(&repo, &a, "a", "", &trailers("a", 1)).unwrap();
        let cb = commit_all(&repo, &b, "b", "", &trailers("b", 1)).unwrap();
        // What git wrote is recognised as such.
        assert_eq!((ca.link, cb.link), (GitLink::Intact, GitLink::Intact));
        assert_eq!(branch_head(&repo, "task/a/1"), ca.sha);
        assert_eq!(branch_head(&repo, "task/b/1"), cb.sha);

        // Through a symlinked parent directory.
        std::os::unix::fs::symlink(dir.path().join("b"), dir.path().join("via")).unwrap();
        let main = repo.head().unwrap();
        let link =
            reset_worktree_at(&repo, &dir.path().join("via/w"), "task/c/1", &main, false).unwrap();
        assert_eq!(link, GitLink::Intact);
        assert_eq!(worktree_head(&repo, "w1"), "ref: refs/heads/task/c/1\n");

        // A record not in canonical form (relative, as newer gits can write).
        std::fs::write(
            repo.root().join(".git/worktrees/w1/gitdir"),
            "../../../../b/w/.git\n",
        )
        .unwrap();
        let c = commit_all(&repo, &b, "c", "", &trailers("c", 1)).unwrap();
        assert_eq!(branch_head(&repo, "task/c/1"), c.sha);

        // A missing link is written again.
        let original = std::fs::read(a.join(".git")).unwrap();
        std::fs::remove_file(a.join(".git")).unwrap();
        let c = commit_all(&repo, &a, "a2", "", &trailers("a", 2)).unwrap();
        assert_eq!(c.link, GitLink::Restored(LinkFound::Missing));
        assert_link_restored(&a, &original);

        // A directory that is no worktree of this repository is refused.
        let stray = dir.path().join("stray");
        std::fs::create_dir_all(&stray).unwrap();
        assert!(matches!(
            commit_all(&repo, &stray, "s", "", &trailers("s", 1)),
            Err(Error::NotAWorktree { .. })
        ));
        assert!(!stray.join(".git").exists());
    }

    #[test]
    fn removing_a_stray_directory_works() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let stray = dir.path().join("stray");
        std::fs::create_dir_all(stray.join("sub")).unwrap();
        repo.remove_worktree(&stray).unwrap();
        assert!(!stray.exists());
        assert!(version().unwrap().starts_with("git version"));
    }
}
