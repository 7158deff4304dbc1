//! Reused worktrees. A fresh `git worktree add` checks out every file of the
//! project; on a slow filesystem that is most of a task's overhead and it
//! grows with the project. A worktree released after its attempt is reset to
//! the next attempt's branch instead, which writes only the files that
//! changed on `main` since.

use crate::{Repo, Result};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Worktrees under one directory, handed out one attempt at a time.
#[derive(Debug)]
pub struct WorktreePool {
    repo: Repo,
    dir: PathBuf,
    state: Mutex<State>,
}

/// A worktree handed out by [`WorktreePool::lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub path: PathBuf,
    /// `Some(dirty)`: an existing worktree to reset (and clean, if dirty);
    /// `None`: a new worktree to create at `path`.
    pub reuse: Option<bool>,
}

#[derive(Debug, Default)]
struct State {
    /// Idle worktrees and whether they need `git clean` (the attempt left
    /// uncommitted files behind).
    idle: Vec<(PathBuf, bool)>,
    next: u32,
}

impl WorktreePool {
    /// A pool creating worktrees `w1`, `w2`, … under `dir`, which should be
    /// empty (stale worktrees from a crash are removed by the caller).
    pub fn new(repo: Repo, dir: impl Into<PathBuf>) -> Self {
        Self {
            repo,
            dir: dir.into(),
            state: Mutex::new(State::default()),
        }
    }

    pub fn repo(&self) -> &Repo {
        &self.repo
    }

    /// Hands out a worktree without touching git: an idle one to reset (the
    /// worker does that, while its first model call is in flight) or the
    /// path of a new one to create. The caller must get it ready before use.
    pub fn lease(&self) -> Lease {
        let Ok(mut s) = self.state.lock() else {
            return Lease {
                path: self.dir.join(format!("w-{}", std::process::id())),
                reuse: None,
            };
        };
        if let Some((path, dirty)) = s.idle.pop() {
            return Lease {
                path,
                reuse: Some(dirty),
            };
        }
        s.next += 1;
        Lease {
            path: self.dir.join(format!("w{}", s.next)),
            reuse: None,
        }
    }

    /// Removes a worktree that could not be prepared. Blocking.
    pub fn discard(&self, path: &Path) -> Result<()> {
        self.repo.remove_worktree(path)
    }

    /// A worktree on a new branch `branch` at the current `main`, ready to
    /// use. Blocking. For tests: a worker gets its worktree ready itself from
    /// a [`Lease`].
    #[cfg(test)]
    pub(crate) fn acquire(&self, branch: &str) -> Result<PathBuf> {
        loop {
            let reuse = self.state.lock().ok().and_then(|mut s| s.idle.pop());
            let Some((path, dirty)) = reuse else { break };
            // A `.git` link the attempt replaced is restored (and logged) there.
            match self.repo.reset_worktree(&path, branch, dirty) {
                Ok(_) => {
                    tracing::debug!(path = %path.display(), branch, dirty, "worktree reused");
                    return Ok(path);
                }
                Err(e) => {
                    // A broken worktree is dropped; try the next or make one.
                    tracing::warn!(path = %path.display(), error = %e, "cannot reuse a worktree; removing it");
                    let _ = self.repo.remove_worktree(&path);
                }
            }
        }
        let n = match self.state.lock() {
            Ok(mut s) => {
                s.next += 1;
                s.next
            }
            Err(_) => std::process::id(),
        };
        let path = self.dir.join(format!("w{n}"));
        if path.exists() {
            self.repo.remove_worktree(&path)?;
        }
        std::fs::create_dir_all(&self.dir)?;
        self.repo.add_worktree(&path, branch)?;
        tracing::debug!(path = %path.display(), branch, "worktree created");
        Ok(path)
    }

    /// Gives a worktree back. `dirty`: the attempt may have left uncommitted
    /// files (it did not end in a commit).
    pub fn release(&self, path: &Path, dirty: bool) {
        tracing::debug!(path = %path.display(), dirty, "worktree released");
        if let Ok(mut s) = self.state.lock() {
            s.idle.push((path.to_owned(), dirty));
        }
    }

    /// Removes every idle worktree. Blocking.
    pub fn drain(&self) -> Result<()> {
        let idle = match self.state.lock() {
            Ok(mut s) => std::mem::take(&mut s.idle),
            Err(_) => Vec::new(),
        };
        for (path, _) in idle {
            self.repo.remove_worktree(&path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{commit_all, MergeOutcome, Trailers};

    #[test]
    fn a_released_worktree_is_reused_at_the_new_main_and_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repo::init(dir.path().join("repo"), "p").unwrap();
        let pool = WorktreePool::new(repo.clone(), dir.path().join("wt"));
        let a = pool.acquire("task/a/1").unwrap();
        std::fs::write(a.join("a.txt"), "a").unwrap();
        commit_all(
            &repo,
            &a,
            "a",
            "",
            &Trailers {
                project: "p".into(),
                task: "a".into(),
                attempt: 1,
            },
        )
        .unwrap();
        pool.release(&a, false);
        assert!(matches!(
            repo.merge("task/a/1", "m").unwrap(),
            MergeOutcome::Merged { .. }
        ));

        let b = pool.acquire("task/b/1").unwrap();
        assert_eq!(a, b, "the idle worktree is reused");
        assert_eq!(std::fs::read_to_string(b.join("a.txt")).unwrap(), "a");
        std::fs::write(b.join("junk.txt"), "left behind").unwrap();
        pool.release(&b, true);

        let c = pool.acquire("task/c/1").unwrap();
        assert!(
            !c.join("junk.txt").exists(),
            "a failed attempt's files are cleaned"
        );
        let second = pool.acquire("task/d/1").unwrap();
        assert_ne!(c, second, "a busy worktree is never handed out twice");
        pool.release(&c, false);
        pool.release(&second, false);
        pool.drain().unwrap();
        assert!(!c.exists() && !second.exists());
    }
}
