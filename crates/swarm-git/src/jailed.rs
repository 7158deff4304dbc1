//! The worker's git on its task worktree — switching the worktree to the
//! attempt's branch, and `add -A` + `commit` for `finish` — in process
//! (libgit2), in a helper forked from the worker without `exec` and
//! confined in the same Landlock domain the `git` processes ran in
//! ([`Repo::confine`]; docs/security.md, "Git in a worktree").
//!
//! Why a helper and not the worker itself: libgit2 parses what the model's
//! commands wrote (ignore and attribute files, the index, every file it
//! hashes), and the worker process is in no Landlock domain (a domain
//! forbids the `mount` bubblewrap needs for each command). A domain on one
//! thread of the worker would not confine a memory-safety bug either: the
//! thread shares the worker's memory. A process forked before the worker
//! starts any thread costs a `fork` (no `exec`, no dynamic loading, no
//! configuration read) once per attempt instead of a `git` process (fork,
//! exec, start-up) per step.
//!
//! What stays in the worker, before each request, is what today's `git`
//! calls had before them too ([`crate::inspect`]): the `.git` link put back,
//! nested repositories removed by a walk by descriptors, unsafe names
//! refused, the repository's worktree lock held.
//!
//! The helper answers one request at a time, as one JSON line each way.

use crate::{
    commit_message, empty_worktree, inspect, Commit, Error, GitLink, Inspected, Repo, Result,
    Trailers, AUTHOR_EMAIL, AUTHOR_NAME,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Request {
    /// `git checkout -f -B <branch> <start>`.
    Reset {
        admin: PathBuf,
        work_tree: PathBuf,
        branch: String,
        start: String,
        /// The worktree's symbolic links (relative paths, as bytes).
        symlinks: Vec<Vec<u8>>,
    },
    /// `git add -A` (gitlinks replaced by their files) and `git commit
    /// --allow-empty -F -`.
    Commit {
        admin: PathBuf,
        work_tree: PathBuf,
        message: String,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Reply {
    Reset,
    Committed {
        sha: String,
        /// Gitlinks in the index replaced by their files.
        gitlinks: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// The worker's git helper for one task worktree (see the module's
/// documentation). Start it while the process has one thread.
#[derive(Debug)]
pub struct WorktreeHelper {
    repo: Repo,
    forked: Mutex<swarm_exec::fork::Forked>,
}

impl WorktreeHelper {
    /// Forks the helper for the worktree at `worktree` (which must exist,
    /// though it need not be a worktree yet), confined as git on it would
    /// be ([`Repo::confine`]; unconfined when `repo` is not confined or the
    /// kernel has no Landlock). Fails when this process has more than one
    /// thread.
    pub fn start(repo: &Repo, worktree: &Path) -> Result<Self> {
        // Checked here too, so that a repository `Repo::init` has not
        // opened (one a remote node keeps, say) gets `git` processes instead
        // of a helper whose every ref update fails.
        if !crate::inproc::reflogs_off(&repo.root.join(".git"))? {
            return Err(Error::Lib(format!(
                "{} has reflogs on ({} is not false in its configuration)",
                repo.root.display(),
                crate::inproc::REFLOGS
            )));
        }
        let work_tree = std::fs::canonicalize(worktree)?;
        let jail = repo.jail_for(&work_tree)?;
        let forked = swarm_exec::fork::fork_confined(jail.as_deref(), serve)?;
        Ok(Self {
            repo: repo.clone(),
            forked: Mutex::new(forked),
        })
    }

    /// [`crate::reset_worktree_at`] in the helper.
    pub fn reset(&self, path: &Path, branch: &str, start: &str, clean: bool) -> Result<GitLink> {
        let Inspected {
            work_tree,
            admin,
            link,
            scan,
        } = inspect(&self.repo, path)?;
        let symlinks = if clean {
            empty_worktree(&work_tree)?;
            Vec::new()
        } else {
            scan.symlinks
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect()
        };
        let _lock = self.repo.worktree_lock(false)?;
        match self.ask(&Request::Reset {
            admin,
            work_tree,
            branch: branch.to_owned(),
            start: start.to_owned(),
            symlinks,
        })? {
            Reply::Reset => Ok(link),
            other => Err(unexpected(other)),
        }
    }

    /// [`crate::commit_all`] in the helper.
    pub fn commit(
        &self,
        dir: &Path,
        subject: &str,
        body: &str,
        trailers: &Trailers,
    ) -> Result<Commit> {
        let Inspected {
            work_tree,
            admin,
            scan,
            link,
        } = inspect(&self.repo, dir)?;
        if !scan.unsafe_names.is_empty() {
            return Err(Error::UnsafeNames {
                paths: scan.unsafe_names,
            });
        }
        match self.ask(&Request::Commit {
            admin,
            work_tree,
            message: commit_message(subject, body, trailers),
        })? {
            Reply::Committed { sha, gitlinks } => {
                let mut nested = scan.nested;
                nested.extend(gitlinks);
                nested.sort();
                nested.dedup();
                Ok(Commit { sha, link, nested })
            }
            other => Err(unexpected(other)),
        }
    }

    fn ask(&self, request: &Request) -> Result<Reply> {
        let mut forked = self.forked.lock().unwrap_or_else(|p| p.into_inner());
        let mut line = serde_json::to_vec(request).map_err(|e| Error::Parse(e.to_string()))?;
        line.push(b'\n');
        let sock = forked.socket();
        let sent = sock.write_all(&line).and_then(|()| sock.flush());
        let mut answer = String::new();
        let read = sent.and_then(|()| {
            let mut reader = BufReader::new(&*forked.socket());
            reader.read_line(&mut answer)
        });
        match read {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(_) => {
                let how = forked.finish();
                return Err(Error::Lib(format!("the git helper ended ({how})")));
            }
        }
        match serde_json::from_str(&answer).map_err(|e| Error::Parse(e.to_string()))? {
            Reply::Error { message } => Err(Error::Lib(message)),
            reply => Ok(reply),
        }
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Parse(format!("the git helper answered {reply:?}"))
}

/// The helper's loop: a request a line until end of file.
fn serve(sock: UnixStream) -> i32 {
    crate::inproc::settings();
    // The paths come from the worker, named explicitly (as `GIT_DIR` and
    // `GIT_WORK_TREE` were for `git`, which then skips its ownership
    // check too); under a root service the worktree belongs to the sandbox
    // uid.
    // SAFETY: process-wide libgit2 option, set before any other libgit2 use
    // in this single-threaded process.
    if let Err(e) = unsafe { git2::opts::set_verify_owner_validation(false) } {
        eprintln!("agentswarm: git helper: {e}");
        return 1;
    }
    let Ok(read) = sock.try_clone() else {
        return 1;
    };
    let mut reader = BufReader::new(read);
    let mut out = sock;
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return 0,
            Ok(_) => {}
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request).unwrap_or_else(|e| Reply::Error {
                message: e.to_string(),
            }),
            Err(e) => Reply::Error {
                message: format!("bad request: {e}"),
            },
        };
        let Ok(mut bytes) = serde_json::to_vec(&reply) else {
            return 1;
        };
        bytes.push(b'\n');
        if out.write_all(&bytes).is_err() {
            return 0;
        }
    }
}

fn handle(request: Request) -> Result<Reply> {
    match request {
        Request::Reset {
            admin,
            work_tree,
            branch,
            start,
            symlinks,
        } => {
            let repo = open_worktree(&admin, &work_tree)?;
            let symlinks: Vec<PathBuf> = symlinks
                .into_iter()
                .map(|p| PathBuf::from(std::ffi::OsString::from_vec(p)))
                .collect();
            reset(&repo, &work_tree, &branch, &start, &symlinks)?;
            Ok(Reply::Reset)
        }
        Request::Commit {
            admin,
            work_tree,
            message,
        } => {
            let repo = open_worktree(&admin, &work_tree)?;
            let (sha, gitlinks) = commit(&repo, &message)?;
            Ok(Reply::Committed { sha, gitlinks })
        }
    }
}

/// The linked worktree whose administrative directory is `admin`, with its
/// working tree set to `work_tree` (never found through the worktree's own
/// `.git`, which its commands can rewrite).
pub(crate) fn open_worktree(admin: &Path, work_tree: &Path) -> Result<git2::Repository> {
    crate::inproc::settings();
    let repo = git2::Repository::open_ext(
        admin,
        git2::RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&std::ffi::OsStr>(),
    )?;
    repo.set_workdir(work_tree, false)?;
    // libgit2 takes no `-c core.logAllRefUpdates=false`: without this in
    // the repository's configuration (`Repo::init` writes it), every ref
    // update would write a reflog, outside what the domain lets it write.
    if repo.config()?.get_bool(crate::inproc::REFLOGS).ok() != Some(false) {
        return Err(Error::Lib(format!(
            "{} has reflogs on ({} is not false); run the project again with this version \
             of agentswarm, which sets it when it opens the repository",
            admin.display(),
            crate::inproc::REFLOGS
        )));
    }
    Ok(repo)
}

/// `git checkout -f -B <branch> <start>`: the tracked files made those of
/// `start` (only what differs is written; untracked files stay), the index
/// that of `start`, the branch created or moved to `start` and checked out.
///
/// `symlinks` are the worktree's symbolic links. Each one where `start` has
/// a directory or a file is removed first: libgit2's checkout, unlike git's,
/// does not check the leading directories of a path it writes, and wrote
/// through a planted `dir -> /elsewhere` to `/elsewhere/file` (the Landlock
/// domain refused it; this test is in `tests/worktree_helper.rs`). With them
/// gone it makes what git makes: the directory or file in the link's place.
pub(crate) fn reset(
    repo: &git2::Repository,
    work_tree: &Path,
    branch: &str,
    start: &str,
    symlinks: &[PathBuf],
) -> Result<()> {
    let commit = repo.revparse_single(start)?.peel_to_commit()?;
    let tree = commit.tree()?;
    for link in symlinks {
        let replaced = match tree.get_path(link) {
            Ok(entry) => entry.filemode() != 0o120000,
            Err(e) if e.code() == git2::ErrorCode::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if replaced {
            match std::fs::remove_file(work_tree.join(link)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout.force().recreate_missing(true);
    repo.checkout_tree(commit.as_object(), Some(&mut checkout))?;
    // The index must be exactly `start`'s tree, as after `checkout -B`:
    // entries staged earlier for paths neither tree has would survive a
    // checkout.
    let mut index = repo.index()?;
    if index.write_tree()? != tree.id() {
        index.read_tree(&tree)?;
        index.write()?;
    }
    let name = format!("refs/heads/{branch}");
    repo.reference(&name, commit.id(), true, "")?;
    repo.set_head(&name)?;
    Ok(())
}

/// `git add -A` and `git commit --allow-empty`: every file not ignored
/// staged, deletions included, each gitlink in the index replaced by the
/// files under its path, and one commit on the checked-out branch with
/// `message` (cleaned up as `git commit -F -` does). Returns the commit and
/// the gitlinks replaced.
pub(crate) fn commit(repo: &git2::Repository, message: &str) -> Result<(String, Vec<String>)> {
    let mut index = repo.index()?;
    let gitlinks: Vec<Vec<u8>> = index
        .iter()
        .filter(|e| e.mode == 0o160000)
        .map(|e| e.path)
        .collect();
    for path in &gitlinks {
        index.remove_path(Path::new(std::ffi::OsStr::from_bytes(path)))?;
    }
    index.add_all(
        std::iter::empty::<&str>(),
        git2::IndexAddOption::DEFAULT,
        None,
    )?;
    index.update_all(std::iter::empty::<&str>(), None)?;
    index.write()?;
    let tree = repo.find_tree(index.write_tree()?)?;
    let parent = repo.head()?.peel_to_commit()?;
    let sig = git2::Signature::now(AUTHOR_NAME, AUTHOR_EMAIL)?;
    let message = git2::message_prettify(message, None)?;
    let sha = repo.commit(Some("HEAD"), &sig, &sig, &message, &tree, &[&parent])?;
    Ok((
        sha.to_string(),
        gitlinks
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect(),
    ))
}
