//! Git for a project: the repository, one worktree per attempt, commits
//! carrying the `Swarm-*` trailers, `--no-ff` merges into `main` that never
//! leave it half-merged, and file listings for packaging.
//!
//! Creating and removing worktrees goes through the `git` binary; the merge
//! and the listings run in this process with libgit2 (`inproc`), falling
//! back to `git merge-tree` where libgit2's merge could differ from git's;
//! the worker's checkout and commit run with libgit2 in its confined git
//! helper ([`WorktreeHelper`]), or as `git` processes ([`commit_all`],
//! [`reset_worktree_at`]) where it has none.
//! Each operation spawns as few `git` processes as it can: process creation
//! is most of the per-task cost.
//!
//! Every invocation runs with the user's and the system's git configuration
//! ignored, hooks disabled and a fixed identity, so a run behaves the same on
//! every machine.
//!
//! A task worktree is written by the model's commands, so nothing in it is
//! trusted, its `.git` link included: git runs there (see [`commit_all`],
//! [`reset_worktree_at`]) with `GIT_DIR` set to the worktree's
//! administrative directory, found from the repository's side, and the link
//! is put back the way git wrote it first. Nested repositories (a `.git`
//! directory or file anywhere below the worktree's root) are removed before
//! git runs there, so git never enters one and never obeys its
//! configuration; their files are committed as plain content. Every git call
//! also turns off what could run a program from configuration git does read
//! (fsmonitor, hooks, submodule recursion, transports), and with
//! [`Repo::confine`] git on a worktree runs in a Landlock domain that
//! reaches only the worktree and the repository (docs/security.md).

mod inproc;
mod jailed;
mod pool;
pub mod review;
pub mod source;

pub use inproc::merge_counts;
pub use jailed::WorktreeHelper;
pub use pool::{Lease, WorktreePool};

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    #[error(
        "these paths have control or bidirectional characters or are not UTF-8, and would be \
         misread in listings and manifests: {}; rename or delete them",
        paths.join(", ")
    )]
    UnsafeNames {
        /// The paths, relative to the worktree, with control characters
        /// escaped.
        paths: Vec<String>,
    },
    #[error("cannot confine git on a worktree: {0}")]
    Confine(String),
    /// libgit2 (the in-process merge and listings) failed.
    #[error("git (in process): {0}")]
    Lib(String),
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

/// Configuration on every git call. Given with `-c`, it outranks every
/// configuration file and reaches every git process this one starts
/// (through `GIT_CONFIG_PARAMETERS`), a nested repository's included.
const HARDENED: &[&str] = &[
    // Nothing runs a program: no hooks, no filesystem monitor, no pager, no
    // signing program, no submodule work (which would run git inside them).
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "core.pager=cat",
    "-c",
    "commit.gpgSign=false",
    "-c",
    "submodule.recurse=false",
    "-c",
    "status.submoduleSummary=false",
    "-c",
    "diff.ignoreSubmodules=all",
];

/// Runs git in `dir` with `env` added to [`git_env`].
fn git_status_env(
    dir: &Path,
    env: Vec<(OsString, OsString)>,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<swarm_exec::Captured> {
    git_confined(dir, env, &[], args, stdin, None)
}

/// Runs git in `dir` with `env` added to [`git_env`], `extra` configuration
/// before `args`, in `jail` when given.
fn git_confined(
    dir: &Path,
    env: Vec<(OsString, OsString)>,
    extra: &[&str],
    args: &[&str],
    stdin: Option<&[u8]>,
    jail: Option<Arc<swarm_exec::Jail>>,
) -> Result<swarm_exec::Captured> {
    // No automatic gc/maintenance child process after commits and merges; no
    // reflogs (a file created per task branch): creating files and processes
    // is most of what git costs here.
    let mut full: Vec<&str> = HARDENED.to_vec();
    full.extend_from_slice(&[
        "-c",
        "core.quotepath=false",
        "-c",
        "gc.auto=0",
        "-c",
        "maintenance.auto=false",
        "-c",
        "core.logAllRefUpdates=false",
    ]);
    full.extend_from_slice(extra);
    full.extend_from_slice(args);
    let mut full_env = git_env();
    full_env.extend(env);
    let opts = swarm_exec::RunOptions {
        cwd: Some(dir.to_owned()),
        env: full_env,
        stdin: stdin.map(<[u8]>::to_vec),
        timeout: Some(Duration::from_secs(600)),
        jail,
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
    jail: Option<Arc<swarm_exec::Jail>>,
    /// Nested repositories removed before git ran (relative paths).
    nested: Vec<String>,
    /// Paths git would misreport (control characters, not UTF-8).
    unsafe_names: Vec<String>,
}

impl WorktreeGit {
    /// The worktree made ready for git ([`inspect`]) and git's Landlock
    /// domain for it.
    fn open(repo: &Repo, worktree: &Path) -> Result<(Self, GitLink)> {
        let Inspected {
            work_tree,
            admin,
            scan,
            link,
        } = inspect(repo, worktree)?;
        let jail = repo.jail_for(&work_tree)?;
        Ok((
            Self {
                work_tree,
                admin,
                jail,
                nested: scan.nested,
                unsafe_names: scan.unsafe_names,
            },
            link,
        ))
    }
}

/// A task worktree made ready for git: its administrative directory found
/// from the repository's side, its `.git` link put back the way git wrote
/// it, nested repositories removed, unsafe names listed.
struct Inspected {
    work_tree: PathBuf,
    admin: PathBuf,
    scan: Scan,
    link: GitLink,
}

/// See [`Inspected`]. No process: a readdir at most, a few small file reads
/// and a walk of the worktree by descriptors.
fn inspect(repo: &Repo, worktree: &Path) -> Result<Inspected> {
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
    let scan = scan_worktree(&work_tree)?;
    for nested in &scan.nested {
        tracing::warn!(
            worktree = %work_tree.display(),
            nested = %nested,
            "removed a nested repository's .git; its files are plain content"
        );
    }
    Ok(Inspected {
        work_tree,
        admin,
        scan,
        link,
    })
}

impl WorktreeGit {
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
        // No transport either: nothing here fetches, so no URL or command
        // from configuration is ever used.
        let extra = ["-c", "protocol.allow=never"];
        let out = git_confined(&self.work_tree, env, &extra, args, stdin, self.jail.clone())?;
        if !out.exit.success() {
            return Err(command_error(args, &out));
        }
        Ok(out)
    }
}

impl WorktreeGit {
    /// Replaces every gitlink in the index (a nested repository an earlier
    /// version committed, or one in `main`) by the plain files under its
    /// path, and returns those paths. Without a gitlink (the index holds no
    /// mode 160000 entry: checked on its bytes first) no process runs.
    fn unlink_gitlinks(&self) -> Result<Vec<String>> {
        let index = std::fs::read(self.admin.join("index")).unwrap_or_default();
        // An entry's mode is a big-endian u32: 0o160000 for a gitlink.
        if !index.windows(4).any(|w| w == [0, 0, 0xe0, 0]) {
            return Ok(Vec::new());
        }
        let out = self.git(&["ls-files", "--stage", "-z"], None)?;
        let links: Vec<String> = nul_split(&out.stdout)
            .into_iter()
            .filter_map(|entry| {
                let (meta, path) = entry.split_once('\t')?;
                meta.starts_with("160000 ").then(|| path.to_owned())
            })
            .collect();
        if links.is_empty() {
            return Ok(links);
        }
        let mut args = vec!["rm", "-q", "--cached", "--"];
        args.extend(links.iter().map(String::as_str));
        self.git(&args, None)?;
        let mut args = vec!["add", "-A", "--"];
        args.extend(links.iter().map(String::as_str));
        self.git(&args, None)?;
        Ok(links)
    }
}

/// A small file of a worktree's administrative directory (`gitdir`,
/// `HEAD`), read as the supervisor reads it: `.git/worktrees` is writable
/// from the workers' git domain, so a symlink there is not followed (to
/// `/dev/zero`, say), a FIFO does not block (`O_NONBLOCK`), anything but a
/// regular file is refused, and at most 4 KiB is read. `None` for any of
/// these, or a file that is not there.
pub(crate) fn read_admin_file(path: &Path) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(4096).read_to_string(&mut text).ok()?;
    Some(text)
}

/// Removes every entry of `work_tree` but its `.git` link, never following
/// a symlink.
fn empty_worktree(work_tree: &Path) -> Result<()> {
    for entry in std::fs::read_dir(work_tree)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// What [`scan_worktree`] found and did.
#[derive(Debug, Default)]
struct Scan {
    nested: Vec<String>,
    unsafe_names: Vec<String>,
    /// Symbolic links (relative paths), outside the commands' private
    /// directory: a checkout must not write through one (see
    /// `jailed::reset`).
    symlinks: Vec<PathBuf>,
}

/// Walks a worktree and removes every `.git` below its root — a directory,
/// a file or a link: a nested repository, which git would record as a
/// gitlink and later run `git status` in, obeying that repository's
/// configuration. Also lists the names git would misreport (control or
/// bidirectional characters, not UTF-8), outside the commands' private
/// directory. Cheap next to git's own walk of the same tree.
///
/// By directory descriptors, each opened `O_NOFOLLOW` beneath the last, and
/// removing relative to them: a directory swapped for a symlink meanwhile
/// is skipped, never followed out of the worktree.
fn scan_worktree(work_tree: &Path) -> Result<Scan> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    use std::ffi::OsStr;
    use std::os::fd::AsFd;

    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut scan = Scan::default();
    let top = open(work_tree, flags, Mode::empty()).map_err(std::io::Error::from)?;
    // (descriptor, path relative to the worktree)
    let mut stack: Vec<(std::os::fd::OwnedFd, PathBuf)> = vec![(top, PathBuf::new())];
    while let Some((fd, rel)) = stack.pop() {
        let mut dir = Dir::from_fd(fd).map_err(std::io::Error::from)?;
        for (name, kind) in swarm_exec::sandbox::dir_entries(&mut dir) {
            let os = OsStr::from_bytes(name.to_bytes());
            let child = rel.join(os);
            if os == ".git" {
                if rel.as_os_str().is_empty() {
                    continue; // the worktree's own link, restored by `open`
                }
                remove_at(dir.as_fd(), &name)?;
                scan.nested
                    .push(String::from_utf8_lossy(rel.as_os_str().as_bytes()).into_owned());
                continue;
            }
            let private = child.starts_with(swarm_exec::sandbox::PRIVATE_DIR);
            if !private && !safe_name(os) {
                scan.unsafe_names.push(escape_path(&String::from_utf8_lossy(
                    child.as_os_str().as_bytes(),
                )));
            }
            if kind == Some(Type::Symlink) && !private {
                scan.symlinks.push(child.clone());
            }
            if kind == Some(Type::Directory) || kind.is_none() {
                match openat(dir.as_fd(), name.as_c_str(), flags, Mode::empty()) {
                    Ok(sub) => stack.push((sub, child)),
                    // A symlink (`O_NOFOLLOW`) the directory did not type.
                    Err(nix::errno::Errno::ELOOP) if kind.is_none() && !private => {
                        scan.symlinks.push(child)
                    }
                    // A file, a symlink, or gone: nothing to walk.
                    Err(
                        nix::errno::Errno::ENOTDIR
                        | nix::errno::Errno::ELOOP
                        | nix::errno::Errno::ENOENT,
                    ) => {}
                    Err(e) => return Err(std::io::Error::from(e).into()),
                }
            }
        }
    }
    scan.nested.sort();
    scan.unsafe_names.sort();
    Ok(scan)
}

/// Removes `name` in `dir` — a file, a link or a whole tree — never
/// following a symlink: each level is opened `O_NOFOLLOW` beneath the last
/// and emptied relative to its descriptor (what the standard library's
/// `remove_dir_all` does for a path; written here for a descriptor).
fn remove_at(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::CStr) -> Result<()> {
    use nix::dir::Dir;
    use nix::errno::Errno;
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::Mode;
    use nix::unistd::{unlinkat, UnlinkatFlags};
    use std::os::fd::AsFd;

    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR | Errno::EPERM) => {}
        Err(e) => return Err(std::io::Error::from(e).into()),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(std::io::Error::from(e).into()),
    };
    let mut sub = Dir::from_fd(fd).map_err(std::io::Error::from)?;
    for (n, _) in swarm_exec::sandbox::dir_entries(&mut sub) {
        remove_at(sub.as_fd(), &n)?;
    }
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(std::io::Error::from(e).into()),
    }
}

/// A name that prints as itself: UTF-8 without control characters or the
/// bidirectional controls that reorder what a terminal shows (the same rule
/// as the file tools' and the printing's: `swarm_protocol::text`).
fn safe_name(name: &std::ffi::OsStr) -> bool {
    std::str::from_utf8(name.as_bytes()).is_ok_and(|s| !swarm_protocol::text::has_unsafe_chars(s))
}

/// `path` with control characters written as escapes (`\n`, `\u{1b}`).
fn escape_path(path: &str) -> String {
    path.chars()
        .flat_map(|c| {
            if swarm_protocol::text::is_unsafe_char(c) {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
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
    /// Directories (relative to the worktree) that held a nested repository:
    /// its `.git` was removed and its files committed as plain content.
    pub nested: Vec<String>,
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
    if !wt.unsafe_names.is_empty() {
        return Err(Error::UnsafeNames {
            paths: wt.unsafe_names,
        });
    }
    wt.git(&["add", "-A"], None)?;
    let mut nested = wt.nested.clone();
    nested.extend(wt.unlink_gitlinks()?);
    nested.sort();
    nested.dedup();
    let message = commit_message(subject, body, trailers);
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
            nested,
        })
    } else {
        Err(Error::Parse(format!(
            "commit did not print its sha: {first}"
        )))
    }
}

/// A task commit's message: the subject, the body and the trailers.
fn commit_message(subject: &str, body: &str, trailers: &Trailers) -> String {
    let mut message = subject.trim().to_owned();
    if !body.trim().is_empty() {
        message.push_str("\n\n");
        message.push_str(body.trim());
    }
    message.push_str("\n\n");
    message.push_str(&trailers.render());
    message
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
    if clean {
        // Everything but the `.git` link goes, symlink-safely (not `git
        // clean`, which walks by path; see `Repo::remove_worktree`), and the
        // checkout below writes every tracked file again.
        empty_worktree(&wt.work_tree)?;
    }
    let lock = repo.worktree_lock(false)?;
    wt.git(&["checkout", "-q", "-f", "-B", branch, start], None)?;
    drop(lock);
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
    /// With [`Repo::confine`]: the trees git on a task worktree may read
    /// besides the repository.
    confined: Option<Arc<Vec<PathBuf>>>,
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
        Ok(Self {
            root,
            confined: None,
        })
    }

    /// Runs git on task worktrees in a Landlock domain (where the kernel has
    /// Landlock): `read` (the system's trees) and the repository readable;
    /// writable only the worktree, the object store, the task branches
    /// (`refs/heads/task/`) and the worktrees' administrative directories —
    /// not `main`, not the repository's configuration or hooks.
    pub fn confine(mut self, read: Vec<PathBuf>) -> Self {
        self.confined = Some(Arc::new(read));
        self
    }

    /// The domain for git on the worktree at `work_tree` (which exists).
    fn jail_for(&self, work_tree: &Path) -> Result<Option<Arc<swarm_exec::Jail>>> {
        let Some(read) = &self.confined else {
            return Ok(None);
        };
        let git_dir = std::fs::canonicalize(self.root.join(".git"))?;
        let task_refs = git_dir.join("refs/heads/task");
        std::fs::create_dir_all(&task_refs)?;
        std::fs::create_dir_all(git_dir.join("worktrees"))?;
        let mut readable = read.as_ref().clone();
        readable.push(git_dir.clone());
        let writable = [
            work_tree.to_owned(),
            git_dir.join("objects"),
            task_refs,
            git_dir.join("worktrees"),
        ];
        swarm_exec::Jail::new(&readable, &writable)
            .map(|j| j.map(Arc::new))
            .map_err(Error::Confine)
    }

    /// Opens the repository at `root`, creating it (branch `main`, one empty
    /// commit carrying the project trailer) if it does not exist yet.
    pub fn init(root: impl Into<PathBuf>, project: &str) -> Result<Self> {
        let root = root.into();
        if root.join(".git").is_dir() {
            let repo = Self {
                root,
                confined: None,
            };
            repo.write_settings()?;
            if repo.head().is_ok() {
                return Ok(repo);
            }
            // Created but never committed (a crash during init): commit now.
            repo.initial_commit(project)?;
            return Ok(repo);
        }
        std::fs::create_dir_all(&root)?;
        git(&root, &["init", "-q", "-b", MAIN], None)?;
        let repo = Self {
            root,
            confined: None,
        };
        repo.write_settings()?;
        repo.initial_commit(project)?;
        Ok(repo)
    }

    /// What every project repository holds in its `.git`: the excludes
    /// (what a worker never commits) and `core.logAllRefUpdates = false`,
    /// which the `git` calls also give on their command line and which
    /// libgit2 in the worker's git helper reads from here (it takes no `-c`):
    /// no reflog file for each task branch.
    fn write_settings(&self) -> Result<()> {
        let info = self.root.join(".git/info");
        std::fs::create_dir_all(&info)?;
        std::fs::write(info.join("exclude"), DEFAULT_EXCLUDES)?;
        inproc::turn_off_reflogs(&self.root.join(".git"))
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

    /// Holds the repository's worktree lock (a `flock` on
    /// `.git/agentswarm-worktrees.lock`, across processes) until dropped:
    /// `exclusive` for what creates or removes a worktree's administrative
    /// directory, shared for git commands that read every one of them
    /// (`checkout -B`, `branch -D` check where a branch is checked out). Git
    /// writes those files non-atomically, so a reader could find one
    /// half-made ("failed to read .git/worktrees/w2/commondir").
    fn worktree_lock(&self, exclusive: bool) -> Result<nix::fcntl::Flock<std::fs::File>> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join(".git/agentswarm-worktrees.lock"))?;
        let arg = if exclusive {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockShared
        };
        nix::fcntl::Flock::lock(file, arg).map_err(|(_, e)| Error::Io(std::io::Error::from(e)))
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
    /// current `main` (an existing branch of that name is reset). For tests:
    /// the worker creates its worktree with [`Repo::add_worktree_at`].
    #[cfg(test)]
    pub(crate) fn add_worktree(&self, path: &Path, branch: &str) -> Result<()> {
        let start = self.head()?;
        self.add_worktree_at(path, branch, &start)
    }

    /// A new worktree at `path` on a new branch `branch` at commit `start`.
    pub fn add_worktree_at(&self, path: &Path, branch: &str, start: &str) -> Result<()> {
        let p = path.to_string_lossy();
        let args = ["worktree", "add", "-q", "-B", branch, &p, start];
        let _lock = self.worktree_lock(true)?;
        if self.confined.is_none() {
            git(&self.root, &args, None)?;
            return Ok(());
        }
        // The domain names the worktree, so it must exist (git fills an
        // empty directory).
        std::fs::create_dir_all(path)?;
        let jail = self.jail_for(&std::fs::canonicalize(path)?)?;
        let out = git_confined(&self.root, Vec::new(), &[], &args, None, jail)?;
        if !out.exit.success() {
            return Err(command_error(&args, &out));
        }
        Ok(())
    }

    /// A detached checkout of the current `main` at `path` (for verify).
    pub fn add_detached_worktree(&self, path: &Path) -> Result<()> {
        let start = self.head()?;
        self.add_detached_worktree_at(path, &start)
    }

    /// A detached checkout of `commit` at `path` (to rebuild a task's
    /// archive from its commit).
    pub fn add_detached_worktree_at(&self, path: &Path, commit: &str) -> Result<()> {
        let p = path.to_string_lossy();
        let _lock = self.worktree_lock(true)?;
        git(
            &self.root,
            &["worktree", "add", "-q", "--detach", &p, commit],
            None,
        )?;
        Ok(())
    }

    /// Points an existing worktree at a new branch `branch` starting at the
    /// current `main`, overwriting tracked files (only those that differ are
    /// written). With `clean`, untracked and ignored files go too. See
    /// [`reset_worktree_at`]. For tests: the worker resets its worktree with
    /// [`reset_worktree_at`] at the commit it was given.
    #[cfg(test)]
    pub(crate) fn reset_worktree(&self, path: &Path, branch: &str, clean: bool) -> Result<GitLink> {
        // Resolve main first: `checkout -B <branch> main` resolves the name
        // twice (for the files, then for the branch), so a merge landing in
        // between would leave the branch ahead of the files it checked out.
        let start = self.head()?;
        reset_worktree_at(self, path, branch, &start, clean)
    }

    /// Removes a worktree and its directory, whatever state it is in.
    ///
    /// Not with `git worktree remove`: git walks the tree by path (`lstat`,
    /// then `opendir`), so a process still running there could swap a
    /// directory for a symlink in between and have git delete files
    /// elsewhere. The standard library's `remove_dir_all` opens each level
    /// `O_NOFOLLOW` beneath the last; then git forgets the worktree.
    ///
    /// Not with `git worktree prune` either, while workers run: it deletes
    /// `.git/worktrees` when it empties it, and a worker whose Landlock
    /// domain (made when its attempt started) names that directory could
    /// then not write the one git makes again (a new inode): its commit
    /// failed with `Permission denied`. Only this worktree's administrative
    /// directory goes; `prune_worktrees` at a run's start takes the rest.
    pub fn remove_worktree(&self, path: &Path) -> Result<()> {
        // Where git's `gitdir` file of this worktree points, as git wrote it
        // (the real path of `<worktree>/.git`), read before it goes.
        let dot_git = match (path.parent(), path.file_name()) {
            (Some(parent), Some(name)) => std::fs::canonicalize(parent)
                .map(|p| p.join(name).join(".git"))
                .unwrap_or_else(|_| path.join(".git")),
            _ => path.join(".git"),
        };
        match std::fs::remove_dir_all(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_worktree(&dot_git)
    }

    /// Removes the administrative directory (`.git/worktrees/<name>`) whose
    /// `gitdir` names `dot_git`, and never `.git/worktrees` itself.
    fn forget_worktree(&self, dot_git: &Path) -> Result<()> {
        let _lock = self.worktree_lock(true)?;
        let admin = self.root.join(".git").join("worktrees");
        let Ok(entries) = std::fs::read_dir(&admin) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let Some(named) = read_admin_file(&entry.path().join("gitdir")) else {
                continue;
            };
            if Path::new(named.trim()) == dot_git {
                // Inside `.git/worktrees`, without following links.
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// Forgets every worktree whose directory is gone (`git worktree
    /// prune`, in this process).
    pub fn prune_worktrees(&self) -> Result<()> {
        let _lock = self.worktree_lock(true)?;
        inproc::prune_worktrees(&self.root.join(".git"))
    }

    /// Deletes every local branch whose name starts with `prefix`.
    /// One checked out in a worktree is kept. In this process.
    pub fn delete_branches(&self, prefix: &str) -> Result<usize> {
        let git_dir = self.root.join(".git");
        let branches = inproc::branches(&git_dir, prefix)?;
        if branches.is_empty() {
            return Ok(0);
        }
        let _lock = self.worktree_lock(false)?;
        inproc::delete_branches(&git_dir, &branches)
    }

    /// Merges `branch` into `main` like `git merge --no-ff`: a merge commit on
    /// `main`, or, on a conflict, the conflicting paths and `main` untouched.
    /// In this process when the result cannot differ from git's merge-ort,
    /// else decided by one `git merge-tree` (see `inproc::merge_into_main`). The merge never
    /// reads or writes the integration worktree, so `main`'s checkout at
    /// [`Repo::root`] lags behind until [`Repo::check_out_main`]; `main`
    /// itself moves by a compare-and-swap of its ref and is never left
    /// half-merged.
    pub fn merge(&self, branch: &str, message: &str) -> Result<MergeOutcome> {
        match inproc::merge_into_main(&self.root, branch, message)? {
            inproc::Merged::Commit(commit) => Ok(MergeOutcome::Merged { commit }),
            inproc::Merged::Conflict(paths) => Ok(MergeOutcome::Conflict { paths }),
        }
    }

    /// Brings the integration worktree (the checkout at [`Repo::root`]) to
    /// what `main` points at: merges do not write it. One `git` process.
    pub fn check_out_main(&self) -> Result<()> {
        git(&self.root, &["reset", "-q", "--hard", MAIN], None)?;
        Ok(())
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

    /// Paths `commit` changed relative to its first parent (in this process).
    pub fn changed_files(&self, commit: &str) -> Result<Vec<Change>> {
        inproc::changed_files(&self.root.join(".git"), commit)
    }

    /// Every path `main` tracks (from its tree, in this process: the
    /// integration worktree may lag behind `main`).
    pub fn tracked_files(&self) -> Result<Vec<String>> {
        inproc::tracked_files(&self.root.join(".git"))
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
        // Merging it again changes nothing, as with git merge.
        assert_eq!(
            repo.merge("task/a/1", "again").unwrap(),
            MergeOutcome::Merged {
                commit: commit.clone()
            }
        );
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
        assert!(!dir.path().join("a-1").exists());
        // As `git branch -D`: the branch a worktree has checked out stays.
        assert_eq!(repo.delete_branches("task/").unwrap(), 1);
        assert_eq!(
            crate::inproc::branches(&repo.root().join(".git"), "task/").unwrap(),
            ["task/c/1"]
        );
        repo.remove_worktree(&wt).unwrap();
        assert_eq!(repo.delete_branches("task/").unwrap(), 1);
        assert!(git(repo.root(), &["branch", "--list", "task/*"], None)
            .unwrap()
            .stdout
            .is_empty());
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
        let shown = git(repo.root(), &["show", "main:f.txt"], None).unwrap();
        assert_eq!(shown.stdout, b"one\n");
        // The merges never wrote the integration worktree; checking main out
        // there gives a clean tree.
        assert!(!repo.root().join("f.txt").exists());
        repo.check_out_main().unwrap();
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
        // What a supervisor killed mid-merge leaves behind: with the merge in
        // process, a stale lock on main's ref (and unreferenced objects);
        // from a version that ran `git merge`, a merge in progress with
        // conflict markers and a stale index.lock.
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        task_commit(&repo, dir.path(), "a", 1, &[("f.txt", "one\n")]);
        task_commit(&repo, dir.path(), "b", 1, &[("f.txt", "two\n")]);
        task_commit(&repo, dir.path(), "c", 1, &[("g.txt", "three\n")]);
        repo.merge("task/a/1", "m").unwrap();
        let head = repo.head().unwrap();
        repo.check_out_main().unwrap();
        let out = git_status(
            repo.root(),
            &["merge", "--no-ff", "--no-edit", "task/b/1"],
            None,
        )
        .unwrap();
        assert!(!out.exit.success());
        assert!(repo.root().join(".git/MERGE_HEAD").exists());
        std::fs::write(repo.root().join(".git/index.lock"), "").unwrap();
        std::fs::write(repo.root().join(".git/refs/heads/main.lock"), "").unwrap();
        // With main's ref locked, the next merge cannot land, and main stays.
        assert!(repo.merge("task/c/1", "m").is_err());
        assert_eq!(repo.head().unwrap(), head);
        repo.repair(None).unwrap();
        assert!(!repo.root().join(".git/index.lock").exists());
        assert!(!repo.root().join(".git/refs/heads/main.lock").exists());
        assert!(!repo.root().join(".git/MERGE_HEAD").exists());
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
        assert!(matches!(
            repo.merge("task/c/1", "m").unwrap(),
            MergeOutcome::Merged { .. }
        ));
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
        let out = std::process::Command::new("git")
            .args(["add", "-A"])
            .current_dir(&wt)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
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

    /// Runs `script` in `dir` with `sh`, outside git (a task's command).
    fn sh(dir: &Path, script: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GIT_DIR")
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
    }

    /// `git add -A` the way the worker ran it before nested repositories
    /// were removed: GIT_DIR from the repository's side, hooks off.
    fn old_add(repo: &Repo, wt: &Path) {
        let admin = find_admin_dir(repo.root(), &wt.canonicalize().unwrap()).unwrap();
        let out = std::process::Command::new("git")
            .args(["-c", "core.hooksPath=/dev/null", "add", "-A"])
            .current_dir(wt)
            .env("GIT_DIR", admin)
            .env("GIT_WORK_TREE", wt)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .unwrap();
        // It may fail after the fact (a nested repository without a commit).
        let _ = out;
    }

    /// The ways a command can make git, run by the worker in its worktree,
    /// run a program: each plants `touch <marker>` behind a nested repository.
    fn plant_nested(wt: &Path, variant: &str, marker: &Path) {
        let m = marker.display();
        let script = match variant {
            // A nested repository's own configuration (the review's case).
            "fsmonitor" => format!(
                "mkdir -p sub && cd sub && git init -q && echo hi > f && \
                 git config core.fsmonitor 'touch {m}; false'"
            ),
            // Reached through a `.git` file naming a git directory elsewhere.
            "gitfile" => format!(
                "mkdir -p hidden sub && git init -q --bare hidden/repo.git && \
                 git --git-dir=hidden/repo.git config core.bare false && \
                 git --git-dir=hidden/repo.git config core.fsmonitor 'touch {m}; false' && \
                 echo 'gitdir: ../hidden/repo.git' > sub/.git && echo hi > sub/f"
            ),
            // Another key that runs a program: a clean filter named by the
            // nested repository's attributes.
            "filter" => format!(
                "mkdir -p sub && cd sub && git init -q && echo hi > f && git add f && \
                 git config filter.x.clean 'touch {m}; cat' && \
                 echo '* filter=x' > .gitattributes && echo ho > f"
            ),
            other => panic!("{other}"),
        };
        sh(wt, &script);
    }

    #[test]
    fn a_nested_repository_never_makes_git_run_a_program() {
        for variant in ["fsmonitor", "gitfile", "filter"] {
            let dir = tempfile::tempdir().unwrap();
            let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
            let marker = dir.path().join("marker");

            // Task a leaves a nested repository in main, as the old worker
            // committed it: a gitlink (the review's first step).
            let a = dir.path().join("a");
            repo.add_worktree(&a, "task/a/1").unwrap();
            sh(
                &a,
                "mkdir sub && cd sub && git init -q && echo hi > f && git add f && \
                 git -c user.name=x -c user.email=x@x commit -qm init",
            );
            old_add(&repo, &a);
            sh(
                &a, "true", // the worktree is ready for the old commit
            );
            let admin = find_admin_dir(repo.root(), &a.canonicalize().unwrap()).unwrap();
            let out = std::process::Command::new("git")
                .args(["commit", "-qm", "a"])
                .current_dir(&a)
                .env("GIT_DIR", &admin)
                .env("GIT_WORK_TREE", &a)
                .env("GIT_AUTHOR_NAME", "x")
                .env("GIT_AUTHOR_EMAIL", "x@x")
                .env("GIT_COMMITTER_NAME", "x")
                .env("GIT_COMMITTER_EMAIL", "x@x")
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            assert!(matches!(
                repo.merge("task/a/1", "m").unwrap(),
                MergeOutcome::Merged { .. }
            ));

            // Task b plants the program. Defence off: git obeys it.
            let b = dir.path().join("b");
            repo.add_worktree(&b, "task/b/1").unwrap();
            sh(&b, "rm -rf sub");
            plant_nested(&b, variant, &marker);
            old_add(&repo, &b);
            assert!(
                marker.exists(),
                "{variant}: the attack did not work unguarded"
            );
            std::fs::remove_file(&marker).unwrap();

            // Defence on: the same plant (again: the old add staged it), then commit_all.
            let c = dir.path().join("c");
            repo.add_worktree(&c, "task/c/1").unwrap();
            sh(&c, "rm -rf sub");
            plant_nested(&c, variant, &marker);
            let commit = commit_all(&repo, &c, "c", "", &trailers("c", 1)).unwrap();
            assert!(
                !marker.exists(),
                "{variant}: commit_all ran the planted program"
            );
            assert_eq!(commit.nested, vec!["sub".to_owned()], "{variant}");
            assert!(!c.join("sub/.git").exists(), "{variant}");
            // The files are plain content now: no gitlink in the commit.
            let tree = git(repo.root(), &["ls-tree", "-r", &commit.sha], None).unwrap();
            let tree = String::from_utf8_lossy(&tree.stdout).into_owned();
            assert!(!tree.contains("160000"), "{variant}: {tree}");
            assert!(tree.contains("sub/f"), "{variant}: {tree}");

            // A reused worktree is reset without running it either.
            plant_nested(&c, variant, &marker);
            let main = repo.head().unwrap();
            reset_worktree_at(&repo, &c, "task/d/1", &main, true).unwrap();
            assert!(
                !marker.exists(),
                "{variant}: the reset ran the planted program"
            );
        }
    }

    /// The scan before it went by descriptors: by path (the defence off).
    fn scan_by_path(work_tree: &Path) {
        let mut stack = vec![work_tree.to_owned()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(kind) = e.file_type() else { continue };
                if e.file_name() == ".git" && dir != work_tree {
                    let _ = std::fs::remove_dir_all(e.path());
                } else if kind.is_dir() {
                    stack.push(e.path());
                }
            }
        }
    }

    /// A command that swaps a directory of its worktree for a symlink while
    /// the worker scans for nested repositories must not get a `.git`
    /// outside the worktree removed.
    #[test]
    fn the_nested_repository_scan_never_follows_a_swapped_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let attempt = |scan: &dyn Fn(&Path)| -> bool {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().canonicalize().unwrap();
            let wt = base.join("wt");
            let victim = base.join("victim");
            std::fs::create_dir_all(victim.join(".git")).unwrap();
            std::fs::write(victim.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
            std::fs::create_dir_all(wt.join("d/x")).unwrap();
            std::os::unix::fs::symlink(&victim, wt.join("l")).unwrap();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let flipper = {
                let stop = stop.clone();
                let a = std::ffi::CString::new(wt.join("d").as_os_str().as_bytes()).unwrap();
                let b = std::ffi::CString::new(wt.join("l").as_os_str().as_bytes()).unwrap();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // SAFETY: renameat2 (RENAME_EXCHANGE) with two valid C strings.
                        unsafe {
                            libc::syscall(
                                libc::SYS_renameat2,
                                libc::AT_FDCWD,
                                a.as_ptr(),
                                libc::AT_FDCWD,
                                b.as_ptr(),
                                2u32,
                            );
                        }
                    }
                })
            };
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(3) && victim.join(".git").exists() {
                scan(&wt);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            flipper.join().unwrap();
            !victim.join(".git").exists()
        };
        assert!(
            attempt(&|wt| scan_by_path(wt)),
            "the race did not work against the path walk"
        );
        assert!(
            !attempt(&|wt| {
                let _ = scan_worktree(wt);
            }),
            "scan_worktree removed a .git outside the worktree"
        );
    }

    /// A process still running in a worktree that is being removed swaps a
    /// directory for a symlink to a victim directory: `git worktree remove`
    /// (the defence off) deletes the victim's files; `remove_worktree` never.
    #[test]
    fn removing_a_worktree_never_follows_a_swapped_symlink() {
        use std::os::unix::ffi::OsStrExt;
        let attempt = |git_remove: bool| -> bool {
            let dir = tempfile::tempdir().unwrap();
            let base = dir.path().canonicalize().unwrap();
            let repo = Repo::init(base.join("repo"), "p1").unwrap();
            let victim = base.join("victim");
            std::fs::create_dir_all(&victim).unwrap();
            let started = std::time::Instant::now();
            let mut lost = false;
            let mut round = 0;
            while !lost && started.elapsed() < Duration::from_secs(4) {
                round += 1;
                for i in 0..20 {
                    std::fs::write(victim.join(format!("f{i}")), "keep").unwrap();
                }
                let wt = base.join(format!("w{round}"));
                repo.add_worktree(&wt, &format!("task/r/{round}")).unwrap();
                for i in 0..40 {
                    std::fs::create_dir_all(wt.join(format!("d{i}"))).unwrap();
                    for j in 0..20 {
                        std::fs::write(wt.join(format!("d{i}/f{j}")), "x").unwrap();
                    }
                    std::os::unix::fs::symlink(&victim, wt.join(format!("l{i}"))).unwrap();
                }
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let flipper = {
                    let stop = stop.clone();
                    let pairs: Vec<(std::ffi::CString, std::ffi::CString)> = (0..40)
                        .map(|i| {
                            let c = |n: String| {
                                std::ffi::CString::new(wt.join(n).as_os_str().as_bytes()).unwrap()
                            };
                            (c(format!("d{i}")), c(format!("l{i}")))
                        })
                        .collect();
                    std::thread::spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            for (a, b) in &pairs {
                                // SAFETY: renameat2 (RENAME_EXCHANGE) with valid C strings.
                                unsafe {
                                    libc::syscall(
                                        libc::SYS_renameat2,
                                        libc::AT_FDCWD,
                                        a.as_ptr(),
                                        libc::AT_FDCWD,
                                        b.as_ptr(),
                                        2u32,
                                    );
                                }
                            }
                        }
                    })
                };
                if git_remove {
                    let p = wt.to_string_lossy().into_owned();
                    let _ = git_status(
                        repo.root(),
                        &["worktree", "remove", "--force", "--force", &p],
                        None,
                    );
                } else {
                    let _ = repo.remove_worktree(&wt);
                }
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                flipper.join().unwrap();
                lost = (0..20).any(|i| !victim.join(format!("f{i}")).exists());
                let _ = std::fs::remove_dir_all(&wt);
                let _ = repo.prune_worktrees();
            }
            lost
        };
        assert!(
            attempt(true),
            "the race did not work against git worktree remove"
        );
        assert!(
            !attempt(false),
            "remove_worktree deleted files outside the worktree"
        );
    }

    #[test]
    fn paths_with_control_characters_are_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let wt = dir.path().join("w");
        repo.add_worktree(&wt, "task/a/1").unwrap();
        std::fs::write(wt.join("ok.txt"), "fine").unwrap();
        std::fs::write(wt.join("evil\nb2.py 0 x"), "spoof").unwrap();
        std::fs::create_dir(wt.join("d\u{1b}[31m")).unwrap();
        let err = commit_all(&repo, &wt, "a", "", &trailers("a", 1)).unwrap_err();
        let Error::UnsafeNames { paths } = &err else {
            panic!("{err}")
        };
        assert_eq!(
            paths,
            &["d\\u{1b}[31m".to_owned(), "evil\\nb2.py 0 x".to_owned()]
        );
        assert!(!err.to_string().contains('\n'), "{err}");
        assert_eq!(branch_head(&repo, "task/a/1"), repo.head().unwrap());
        // Renamed: committed.
        std::fs::remove_dir(wt.join("d\u{1b}[31m")).unwrap();
        std::fs::rename(wt.join("evil\nb2.py 0 x"), wt.join("evil.py")).unwrap();
        let c = commit_all(&repo, &wt, "a", "", &trailers("a", 1)).unwrap();
        assert_eq!(repo.changed_files(&c.sha).unwrap().len(), 2);
    }

    #[test]
    fn confined_git_reaches_only_the_worktree_and_the_repository() {
        if swarm_exec::sandbox::facilities().landlock.is_err() {
            eprintln!("skipped: no Landlock");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let secret = base.join("secrets.env");
        std::fs::write(&secret, "KEY=test-key-not-a-real-secret\n").unwrap();
        let system: Vec<PathBuf> = swarm_exec::sandbox::DEFAULT_READ_ONLY
            .iter()
            .map(PathBuf::from)
            .collect();
        let plain = Repo::init(base.join("repo"), "p1").unwrap();
        let confined = plain.clone().confine(system);
        // A new worktree, a commit and a reset all work confined.
        let wt = base.join("wt/w1");
        std::fs::create_dir_all(base.join("wt")).unwrap();
        confined
            .add_worktree_at(&wt, "task/a/1", &plain.head().unwrap())
            .unwrap();
        std::fs::write(wt.join("a.txt"), "a").unwrap();
        let c = commit_all(&confined, &wt, "a", "", &trailers("a", 1)).unwrap();
        assert_eq!(branch_head(&plain, "task/a/1"), c.sha);
        assert!(matches!(
            plain.merge("task/a/1", "m").unwrap(),
            MergeOutcome::Merged { .. }
        ));
        reset_worktree_at(&confined, &wt, "task/b/1", &plain.head().unwrap(), true).unwrap();

        // Should some configuration make git run a program anyway (here one
        // given on purpose), that program reaches nothing else.
        let payload = base.join("wt/w1/payload.sh");
        std::fs::write(
            &payload,
            format!(
                "cat {s} > {w}/stolen 2>/dev/null; echo x > {o} 2>/dev/null; \
                 echo '[core] fsmonitor = evil' >> {r}/.git/config 2>/dev/null; \
                 echo 0000000000000000000000000000000000000000 > {r}/.git/refs/heads/main 2>/dev/null; \
                 echo ran > {w}/ran; false",
                s = secret.display(),
                w = wt.display(),
                o = base.join("outside").display(),
                r = base.join("repo").display(),
            ),
        )
        .unwrap();
        let run = |repo: &Repo| {
            let (w, _) = WorktreeGit::open(repo, &wt).unwrap();
            let env = vec![
                (OsString::from("GIT_DIR"), w.admin.clone().into_os_string()),
                (
                    OsString::from("GIT_WORK_TREE"),
                    w.work_tree.clone().into_os_string(),
                ),
            ];
            let fsmonitor = format!("core.fsmonitor=sh {}", payload.display());
            git_confined(
                &wt,
                env,
                &["-c", &fsmonitor],
                &["status"],
                None,
                w.jail.clone(),
            )
            .unwrap();
            assert!(wt.join("ran").exists(), "the payload did not run");
            std::fs::remove_file(wt.join("ran")).unwrap();
        };
        let main = plain.head().unwrap();
        // Unconfined, it takes the secret, writes outside, rewrites config and main.
        run(&plain);
        assert!(std::fs::read_to_string(wt.join("stolen"))
            .unwrap()
            .contains("test-key"));
        assert!(base.join("outside").exists());
        let config = std::fs::read_to_string(base.join("repo/.git/config")).unwrap();
        assert!(config.contains("evil"));
        // Put things back.
        std::fs::remove_file(wt.join("stolen")).unwrap();
        std::fs::remove_file(base.join("outside")).unwrap();
        std::fs::write(
            base.join("repo/.git/config"),
            config.replace("[core] fsmonitor = evil\n", ""),
        )
        .unwrap();
        std::fs::write(base.join("repo/.git/refs/heads/main"), format!("{main}\n")).unwrap();

        run(&confined);
        let stolen = std::fs::read_to_string(wt.join("stolen")).unwrap_or_default();
        assert!(!stolen.contains("test-key"), "{stolen}");
        assert!(!base.join("outside").exists());
        let config = std::fs::read_to_string(base.join("repo/.git/config")).unwrap();
        assert!(!config.contains("evil"), "{config}");
        assert_eq!(plain.head().unwrap(), main);
    }

    /// Workers create worktrees of one repository at once, while others
    /// reset theirs and the supervisor removes and prunes: git reads every
    /// worktree's admin directory for most of these, and a half-made one
    /// made `git worktree add` fail ("failed to read .git/worktrees/w2/commondir").
    #[test]
    fn concurrent_worktree_work_on_one_repository_never_fails() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let main = repo.head().unwrap();
        for round in 0..15 {
            let threads: Vec<_> = (0..12)
                .map(|i| {
                    let repo = repo.clone();
                    let main = main.clone();
                    let wt = dir.path().join(format!("r{round}/w{i}"));
                    std::thread::spawn(move || -> Result<()> {
                        std::fs::create_dir_all(wt.parent().unwrap())?;
                        repo.add_worktree_at(&wt, &format!("task/t{i}/{round}"), &main)?;
                        reset_worktree_at(&repo, &wt, &format!("task/t{i}/{round}b"), &main, true)?;
                        repo.remove_worktree(&wt)?;
                        repo.prune_worktrees()
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap().unwrap();
            }
        }
    }

    #[test]
    fn admin_files_are_read_without_following_links_or_blocking() {
        let dir = tempfile::tempdir().unwrap();
        // What a worker's git domain could plant in `.git/worktrees/<w>/`:
        // a `HEAD` that is a link to a file elsewhere, which names a branch.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, "ref: refs/heads/task/kept/1\n").unwrap();
        let head = dir.path().join("HEAD");
        std::os::unix::fs::symlink(&elsewhere, &head).unwrap();
        // Read as before, the link is followed.
        assert_eq!(
            std::fs::read_to_string(&head).unwrap(),
            "ref: refs/heads/task/kept/1\n"
        );
        assert_eq!(read_admin_file(&head), None);
        // A FIFO, which a plain read would wait on for ever.
        let fifo = dir.path().join("gitdir");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string for the call's duration.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert_eq!(read_admin_file(&fifo), None);
        // A file that never ends is read 4 KiB at most.
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(100_000)).unwrap();
        assert_eq!(read_admin_file(&big).map(|t| t.len()), Some(4096));
        assert_eq!(
            read_admin_file(&elsewhere).as_deref(),
            Some("ref: refs/heads/task/kept/1\n")
        );
    }

    #[test]
    fn prune_forgets_only_worktrees_whose_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p1").unwrap();
        let main = repo.head().unwrap();
        let (kept, gone, locked) = (
            dir.path().join("kept"),
            dir.path().join("gone"),
            dir.path().join("locked"),
        );
        repo.add_worktree_at(&kept, "task/k/1", &main).unwrap();
        repo.add_worktree_at(&gone, "task/g/1", &main).unwrap();
        repo.add_worktree_at(&locked, "task/l/1", &main).unwrap();
        git(
            repo.root(),
            &["worktree", "lock", &locked.to_string_lossy()],
            None,
        )
        .unwrap();
        std::fs::remove_dir_all(&gone).unwrap();
        std::fs::remove_dir_all(&locked).unwrap();
        // An entry half made by a crash: no `gitdir` file.
        std::fs::create_dir_all(repo.root().join(".git/worktrees/half")).unwrap();
        repo.prune_worktrees().unwrap();
        let list = String::from_utf8(
            git(repo.root(), &["worktree", "list", "--porcelain"], None)
                .unwrap()
                .stdout,
        )
        .unwrap();
        assert!(list.contains(&*kept.to_string_lossy()), "{list}");
        assert!(list.contains(&*locked.to_string_lossy()), "{list}");
        assert!(!list.contains(&*gone.to_string_lossy()), "{list}");
        assert!(!repo.root().join(".git/worktrees/half").exists());
        // git agrees there is nothing left to prune.
        let dry = git(repo.root(), &["worktree", "prune", "-n", "-v"], None).unwrap();
        assert!(dry.stdout.is_empty() && dry.stderr.is_empty(), "{dry:?}");
        repo.remove_worktree(&kept).unwrap();
        git(
            repo.root(),
            &["worktree", "unlock", &locked.to_string_lossy()],
            None,
        )
        .unwrap();
        repo.prune_worktrees().unwrap();
        // Emptied, the directory stays (a running worker's domain may name it).
        assert!(repo.root().join(".git/worktrees").is_dir());
        assert_eq!(
            std::fs::read_dir(repo.root().join(".git/worktrees"))
                .unwrap()
                .count(),
            0
        );
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
