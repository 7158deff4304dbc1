//! What review needs from git (docs/existing-repos.md, "Review"): a commit
//! waiting for a person is held on its own branch `review/<task>/<attempt>`
//! (recovery removes `task/*` branches, never these), merged from there
//! once approved; and a change is shown as one unified diff per file.

use crate::{git, git_status, source, Result};
use std::path::Path;

/// The branch that holds `task`'s `attempt` while it waits for review.
pub fn branch(task: &str, attempt: u32) -> String {
    format!("review/{task}/{attempt}")
}

/// Makes (or moves) branch `name` to point at `commit`.
pub fn hold(repo: &Path, name: &str, commit: &str) -> Result<()> {
    let full = format!("refs/heads/{name}");
    git(repo, &["update-ref", &full, commit], None)?;
    Ok(())
}

/// Whether branch `name` exists.
pub fn held(repo: &Path, name: &str) -> Result<bool> {
    let full = format!("refs/heads/{name}");
    let out = git_status(repo, &["rev-parse", "--verify", "-q", &full], None)?;
    Ok(out.exit.success())
}

/// Deletes branch `name` (nothing if it is not there).
pub fn release(repo: &Path, name: &str) -> Result<()> {
    let full = format!("refs/heads/{name}");
    git(repo, &["update-ref", "-d", &full], None)?;
    Ok(())
}

/// Every review branch there is (`review/<task>/<attempt>`).
pub fn list(repo: &Path) -> Result<Vec<String>> {
    crate::inproc::branches(&repo.join(".git"), "review/")
}

/// The commit `a` and `b` last had in common.
pub fn merge_base(repo: &Path, a: &str, b: &str) -> Result<String> {
    let out = git(repo, &["merge-base", a, b], None)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The commit `rev` names.
pub fn rev_parse(repo: &Path, rev: &str) -> Result<String> {
    let out = git(
        repo,
        &["rev-parse", "--verify", "-q", "--end-of-options", rev],
        None,
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// One file of a change: its line counts (`None` for a binary file) and
/// git's unified diff of it, headers included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub path: String,
    pub added: Option<u64>,
    pub removed: Option<u64>,
    pub diff: String,
}

/// The change from `base` to `head`, file by file, in git's order.
pub fn file_diffs(repo: &Path, base: &str, head: &str) -> Result<Vec<FileDiff>> {
    let stats = source::numstat(repo, base, head)?;
    let out = git(
        repo,
        &[
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--no-renames",
            base,
            head,
        ],
        None,
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    // `diff --git` starts each file's part, in the same order as numstat.
    let mut parts: Vec<String> = Vec::new();
    for line in text.split_inclusive('\n') {
        if line.starts_with("diff --git ") || parts.is_empty() {
            parts.push(String::new());
        }
        if let Some(last) = parts.last_mut() {
            last.push_str(line);
        }
    }
    Ok(stats
        .into_iter()
        .enumerate()
        .map(|(i, (added, removed, path))| FileDiff {
            diff: parts.get(i).cloned().unwrap_or_default(),
            path,
            added,
            removed,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    #[test]
    fn a_held_commit_survives_and_its_diff_is_per_file() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        sh(d, &["init", "-q", "-b", "main"]);
        std::fs::write(d.join("a.txt"), "one\n").unwrap();
        std::fs::write(d.join("b.bin"), [0u8, 1, 2]).unwrap();
        sh(d, &["add", "-A"]);
        sh(d, &["commit", "-q", "-m", "base"]);
        let base = sh(d, &["rev-parse", "HEAD"]);
        std::fs::write(d.join("a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(d.join("b.bin"), [0u8, 9, 9, 9]).unwrap();
        std::fs::write(d.join("c.txt"), "new\n").unwrap();
        sh(d, &["add", "-A"]);
        sh(d, &["commit", "-q", "-m", "change"]);
        let head = sh(d, &["rev-parse", "HEAD"]);
        sh(d, &["reset", "-q", "--hard", &base]);

        let name = branch("t1", 2);
        assert_eq!(name, "review/t1/2");
        assert!(!held(d, &name).unwrap());
        hold(d, &name, &head).unwrap();
        assert!(held(d, &name).unwrap());
        assert_eq!(list(d).unwrap(), vec![name.clone()]);
        assert_eq!(rev_parse(d, &name).unwrap(), head);
        assert_eq!(merge_base(d, "main", &name).unwrap(), base);

        let files = file_diffs(d, &base, &head).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b.bin", "c.txt"]);
        assert_eq!((files[0].added, files[0].removed), (Some(1), Some(0)));
        assert!(files[0].diff.starts_with("diff --git a/a.txt b/a.txt"));
        assert!(files[0].diff.contains("+two\n"));
        assert!(!files[0].diff.contains("c.txt"));
        assert_eq!((files[1].added, files[1].removed), (None, None));
        assert!(files[1].diff.contains("Binary files"));
        assert!(files[2].diff.contains("+new\n"));

        release(d, &name).unwrap();
        assert!(!held(d, &name).unwrap());
    }
}
