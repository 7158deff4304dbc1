//! What comes back from a worker node: the lines of an attempt's channel,
//! and the attempt's commits, fetched into the supervisor's repository from
//! the bundle the node sent on the channel, or over SSH from the node's
//! cache repository.
//!
//! Everything here was written by a node, and a node may be hostile (its
//! worker's commands are the model's; whoever owns the node owns its `git`
//! and its `agentswarm`). The supervisor's `git fetch` is the one git
//! process that reads it unconfined, so it takes nothing but what it asked
//! for (docs/security.md, "Worker nodes"):
//!
//! - **a bundle, or nothing**: a file that is not a bundle is refused before
//!   git sees it (git reads such a file as a repository, or as a `gitdir:`
//!   pointer to any repository on this machine, another project's included);
//! - **one ref**: the attempt's own branch, named by the supervisor, into
//!   itself; no tags, no other branch, no `FETCH_HEAD`;
//! - **checked objects**: `fetch.fsckObjects`, so a tree with a `.git` entry
//!   or a malformed object never enters the repository;
//! - **nothing runs**: hooks off (`reference-transaction` runs on a fetch),
//!   no transport but the node's own;
//! - **the reported commit**: the branch must be the commit the worker
//!   reported, or the attempt is not taken.
//!
//! And the channel's lines are read [`LINE_MAX`] bytes at most, so that a
//! node cannot make the supervisor hold an endless line in memory; the
//! driver takes a bundle only for the attempt's own branch and only up to
//! [`BUNDLE_MAX_BYTES`](swarm_protocol::worker::BUNDLE_MAX_BYTES).
//!
//! Each defence can be switched off in the tests below, which show the
//! attack working without it and refused with it.

use std::ffi::OsString;
use std::path::Path;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// The longest line a worker's channel may carry: a bundle of
/// `BUNDLE_MAX_BYTES` in base64 (4/3 of it) with room to spare. A model
/// request's whole conversation is far smaller.
pub(crate) const LINE_MAX: usize = 96 << 20;

/// The longest line after one longer than it: only the `commits` message
/// carries a bundle, once an attempt, and a model request's conversation
/// stays well under this. Lines wait in a queue while the conversation is
/// busy; this bounds what the queue can hold to one bundle and small lines.
pub(crate) const SMALL_LINE_MAX: usize = 8 << 20;

/// The cap on the line after one of `len` bytes read under `max`.
pub(crate) fn next_line_max(max: usize, len: usize) -> usize {
    if len > SMALL_LINE_MAX {
        SMALL_LINE_MAX
    } else {
        max
    }
}

/// One line of `from` without its newline, of at most `max` bytes; `None`
/// at the end. A longer line is an error, read no further than `max`.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    from: &mut R,
    max: usize,
) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    if (&mut *from).take(limit).read_until(b'\n', &mut buf).await? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a line longer than {max} bytes"),
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The bytes of the bundle a node's `commits` message carries, when it is
/// one to keep: for `ours`, the attempt's own branch, and at most
/// `BUNDLE_MAX_BYTES`. Otherwise the commit is fetched over SSH (one ref,
/// as any fetch here).
pub(crate) fn bundle_to_keep(branch: &str, ours: &str, base64: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if branch != ours {
        return Err(format!("the bundle is for {branch:?}, not {ours}"));
    }
    // Checked on the text first: no need to decode what is over the cap.
    let max = swarm_protocol::worker::BUNDLE_MAX_BYTES;
    if base64.len() / 4 * 3 > max + 3 {
        return Err(format!(
            "a bundle of about {} bytes is over the cap",
            base64.len() / 4 * 3
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64.as_bytes())
        .map_err(|e| e.to_string())?;
    if bytes.len() > max {
        return Err(format!("a bundle of {} bytes is over the cap", bytes.len()));
    }
    Ok(bytes)
}

/// Where a node's commits come from.
pub(crate) enum Source<'a> {
    /// A bundle the node sent on the attempt's channel, saved here.
    Bundle(&'a Path),
    /// The node's cache repository (`ssh://…`), with the `GIT_SSH_COMMAND`
    /// that rides on the node's shared connection.
    Ssh { url: String, git_ssh: String },
}

/// Which defences a fetch applies; [`Guards::ALL`] outside the tests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Guards {
    /// Refuse a bundle file that does not start with a bundle's signature.
    pub bundle_only: bool,
    /// Fetch the attempt's branch alone (else: every ref the source has).
    pub one_ref: bool,
    /// `fetch.fsckObjects`, with a `.git` path an error.
    pub fsck: bool,
    /// Hooks off, no transport but `file` (the bundle) and `ssh`.
    pub nothing_runs: bool,
    /// The branch must be at the reported commit.
    pub reported_commit: bool,
}

impl Guards {
    pub const ALL: Guards = Guards {
        bundle_only: true,
        one_ref: true,
        fsck: true,
        nothing_runs: true,
        reported_commit: true,
    };
}

/// The first line of a git bundle, version 2 or 3.
const SIGNATURES: [&[u8]; 2] = [b"# v2 git bundle\n", b"# v3 git bundle\n"];

/// Whether the file at `path` starts as a git bundle does (read through
/// no symlink: the path is the supervisor's own, but cheap to be sure).
fn is_bundle(path: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut head = [0u8; 16];
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| SIGNATURES.contains(&&head[..]))
}

/// Fetches `branch` (the supervisor's name for the attempt's branch) from
/// `source` into the repository at `repo_root` and checks that it is at
/// `commit`, what the worker reported. Blocking: run it off the runtime.
pub(crate) fn fetch_commits(
    repo_root: &Path,
    source: &Source<'_>,
    branch: &str,
    commit: &str,
    guards: Guards,
) -> Result<(), String> {
    let mut argv: Vec<OsString> = vec!["-C".into(), repo_root.into()];
    if guards.nothing_runs {
        for c in [
            "core.hooksPath=/dev/null",
            "core.fsmonitor=false",
            "protocol.allow=never",
            "protocol.file.allow=always",
            "protocol.ssh.allow=always",
            "gc.auto=0",
            "maintenance.auto=false",
        ] {
            argv.extend(["-c".into(), c.into()]);
        }
    }
    if guards.fsck {
        for c in [
            "fetch.fsckObjects=true",
            "fetch.fsck.hasDotgit=error",
            "fetch.fsck.hasDotdot=error",
        ] {
            argv.extend(["-c".into(), c.into()]);
        }
    }
    argv.extend([
        "fetch".into(),
        "--quiet".into(),
        "--no-tags".into(),
        "--no-write-fetch-head".into(),
        "--no-recurse-submodules".into(),
    ]);
    let mut env: Vec<(OsString, OsString)> = crate::nodes::ssh_env();
    match source {
        Source::Bundle(path) => {
            if guards.bundle_only && !is_bundle(path) {
                return Err(
                    "the node's bundle of the attempt's commits is not a git bundle: refused"
                        .into(),
                );
            }
            argv.push(path.into());
        }
        Source::Ssh { url, git_ssh } => {
            env.push(("GIT_SSH_COMMAND".into(), git_ssh.into()));
            argv.push(url.into());
        }
    }
    if guards.one_ref {
        argv.push(format!("+refs/heads/{branch}:refs/heads/{branch}").into());
    } else {
        argv.push("+refs/*:refs/*".into());
    }
    // Tried again before the node is blamed: a fetch can fail on what other
    // git processes do to this repository meanwhile. It reads every
    // worktree's administrative files (it refuses to move a branch checked
    // out in one), and one being added has an empty `commondir` for a
    // moment; and its check that the bundle's prerequisites are reachable
    // walks the refs while merges and clean-ups change them. A hostile
    // bundle fails every time.
    let mut tries = 0;
    loop {
        match git(
            &argv,
            &env,
            "cannot fetch the attempt's commit from the node",
        ) {
            Ok(_) => break,
            Err(e) if tries < 3 => {
                tries += 1;
                tracing::debug!(error = %e, tries, "fetching again");
                std::thread::sleep(std::time::Duration::from_millis(100 * tries));
            }
            Err(e) => return Err(e),
        }
    }
    if !guards.reported_commit {
        return Ok(());
    }
    let check: Vec<OsString> = vec![
        "-C".into(),
        repo_root.into(),
        "rev-parse".into(),
        "--verify".into(),
        "--quiet".into(),
        format!("refs/heads/{branch}^{{commit}}").into(),
    ];
    let got = git(&check, &[], "cannot read the fetched branch")?
        .trim()
        .to_owned();
    if got != commit {
        return Err(format!(
            "the node's branch {branch} is at {got:?}, not at the commit its worker reported ({commit})"
        ));
    }
    Ok(())
}

/// Runs git with the allow-listed environment plus `env`; its stdout, or
/// `Err(what: last line of stderr)`.
fn git(argv: &[OsString], env: &[(OsString, OsString)], what: &str) -> Result<String, String> {
    let opts = swarm_exec::RunOptions {
        env: env.to_vec(),
        timeout: Some(crate::nodes::TRANSFER_TIMEOUT),
        ..Default::default()
    };
    let out = swarm_exec::run("git", argv, &opts).map_err(|e| format!("{what}: {e}"))?;
    crate::nodes::stdout_or_last_error(&out, what)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Each attack a hostile node can make through the fetch, first with its
    //! defence off (the attack works), then with every defence on (refused,
    //! and the supervisor's repository is as it was).

    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const BRANCH: &str = "task/t1/1";

    fn sh(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn with(on: bool, off: impl FnOnce(&mut Guards)) -> Guards {
        let mut g = Guards::ALL;
        if !on {
            off(&mut g);
        }
        g
    }

    /// The supervisor's project repository (`main` at one commit) and a
    /// node's cache repository holding that `main` and the attempt's branch
    /// with one honest commit on it.
    struct World {
        _dir: tempfile::TempDir,
        root: PathBuf,
        supervisor: PathBuf,
        node: PathBuf,
        base: String,
        honest: String,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_owned();
        let supervisor = root.join("supervisor");
        let node = root.join("node");
        for r in [&supervisor, &node] {
            std::fs::create_dir_all(r).unwrap();
            sh(r, &["init", "-q", "-b", "main"]);
        }
        std::fs::write(supervisor.join("README"), "base\n").unwrap();
        sh(&supervisor, &["add", "README"]);
        sh(&supervisor, &["commit", "-q", "-m", "base"]);
        let base = sh(&supervisor, &["rev-parse", "HEAD"]);
        sh(
            &node,
            &[
                "fetch",
                "-q",
                supervisor.to_str().unwrap(),
                "main:refs/swarm/main",
            ],
        );
        sh(&node, &["checkout", "-q", "-b", BRANCH, &base]);
        std::fs::write(node.join("work.txt"), "the task's work\n").unwrap();
        sh(&node, &["add", "work.txt"]);
        sh(&node, &["commit", "-q", "-m", "task t1"]);
        let honest = sh(&node, &["rev-parse", "HEAD"]);
        // As a node's cache repository: no branch checked out there.
        sh(&node, &["checkout", "-q", "--detach"]);
        World {
            _dir: dir,
            root,
            supervisor,
            node,
            base,
            honest,
        }
    }

    impl World {
        /// A bundle of the node's `refs` over the base, as `node worker`
        /// makes it (with more refs when the node is hostile).
        fn bundle(&self, name: &str, refs: &[&str]) -> PathBuf {
            let path = self.root.join(name);
            let mut args = vec!["bundle", "create", "-q", path.to_str().unwrap()];
            args.extend_from_slice(refs);
            let not_base = format!("^{}", self.base);
            args.push(&not_base);
            sh(&self.node, &args);
            path
        }

        fn supervisor_ref(&self, r: &str) -> Option<String> {
            let out = Command::new("git")
                .arg("-C")
                .arg(&self.supervisor)
                .args(["rev-parse", "--verify", "--quiet", r])
                .output()
                .unwrap();
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    }

    /// A node that sends one endless line: read unbounded (as `lines()`
    /// did), the supervisor holds all of it; capped, it stops at the cap.
    #[tokio::test]
    async fn an_endless_line_is_refused_at_the_cap() {
        let mut long = vec![b'x'; 1 << 20];
        long.push(b'\n');
        long.extend_from_slice(b"{\"type\":\"heartbeat\"}\n");
        let mut off = tokio::io::BufReader::new(&long[..]);
        let all = read_line(&mut off, usize::MAX).await.unwrap().unwrap();
        assert_eq!(all.len(), 1 << 20, "the attack did not work");
        let mut on = tokio::io::BufReader::new(&long[..]);
        let e = read_line(&mut on, 64 << 10).await.unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        // Lines within the cap, and a last line without its newline, read as before.
        let mut ok = tokio::io::BufReader::new(&b"ab\n\ncd"[..]);
        for want in [Some("ab"), Some(""), Some("cd"), None] {
            assert_eq!(read_line(&mut ok, 2).await.unwrap().as_deref(), want);
        }
    }

    /// Only one line may be bundle-sized: after it, the cap is the small
    /// one, so that the lines waiting for the conversation hold at most one
    /// bundle (before, each of 64 queued lines could be 96 MB).
    #[tokio::test]
    async fn only_one_line_may_be_bundle_sized() {
        let big = SMALL_LINE_MAX + 1;
        let mut text = vec![b'x'; big];
        text.push(b'\n');
        text.extend_from_slice(&text.clone());
        // Without the lowered cap, both lines are read whole.
        let mut off = tokio::io::BufReader::new(&text[..]);
        for _ in 0..2 {
            let l = read_line(&mut off, LINE_MAX).await.unwrap().unwrap();
            assert_eq!(l.len(), big, "the attack did not work");
        }
        let mut on = tokio::io::BufReader::new(&text[..]);
        let mut max = LINE_MAX;
        let first = read_line(&mut on, max).await.unwrap().unwrap();
        max = next_line_max(max, first.len());
        assert_eq!(max, SMALL_LINE_MAX);
        let e = read_line(&mut on, max).await.unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        // Small lines leave the cap as it is.
        assert_eq!(next_line_max(LINE_MAX, 100), LINE_MAX);
    }

    /// A `commits` message for another branch, or over the cap, is not
    /// kept (before this check any was written out as the attempt's bundle).
    #[test]
    fn a_bundle_for_another_branch_or_over_the_cap_is_not_kept() {
        use base64::Engine as _;
        let enc = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        assert_eq!(
            bundle_to_keep(BRANCH, BRANCH, &enc(b"# v2 git bundle\n")).unwrap(),
            b"# v2 git bundle\n"
        );
        let e = bundle_to_keep("main", BRANCH, &enc(b"x")).unwrap_err();
        assert!(e.contains("not task/t1/1"), "{e}");
        let big = vec![0u8; swarm_protocol::worker::BUNDLE_MAX_BYTES + 1];
        let e = bundle_to_keep(BRANCH, BRANCH, &enc(&big)).unwrap_err();
        assert!(e.contains("over the cap"), "{e}");
        let e = bundle_to_keep(BRANCH, BRANCH, "not base64!").unwrap_err();
        assert!(!e.is_empty());
    }

    #[test]
    fn the_honest_bundle_is_fetched() {
        let w = world();
        let b = w.bundle("honest.bundle", &[&format!("refs/heads/{BRANCH}")]);
        fetch_commits(
            &w.supervisor,
            &Source::Bundle(&b),
            BRANCH,
            &w.honest,
            Guards::ALL,
        )
        .unwrap();
        assert_eq!(w.supervisor_ref(BRANCH).as_deref(), Some(w.honest.as_str()));
    }

    /// The node's bundle also carries another attempt's branch, waiting in
    /// the merge queue here (its work would merge under that task's name),
    /// and a tag. (`main` is checked out in the project's repository, and
    /// git itself refuses to fetch into it.)
    #[test]
    fn a_bundle_carrying_other_refs_moves_only_the_attempt_branch() {
        const OTHER: &str = "task/t2/1";
        for on in [false, true] {
            let w = world();
            sh(&w.supervisor, &["branch", OTHER, &w.base]);
            sh(&w.node, &["branch", "-f", OTHER, &w.honest]);
            sh(&w.node, &["tag", "v9", &w.honest]);
            let b = w.bundle(
                "wide.bundle",
                &[
                    &format!("refs/heads/{BRANCH}"),
                    &format!("refs/heads/{OTHER}"),
                    "refs/tags/v9",
                ],
            );
            let guards = with(on, |g| g.one_ref = false);
            fetch_commits(
                &w.supervisor,
                &Source::Bundle(&b),
                BRANCH,
                &w.honest,
                guards,
            )
            .unwrap();
            let other = w.supervisor_ref(&format!("refs/heads/{OTHER}"));
            let tag = w.supervisor_ref("refs/tags/v9");
            assert_eq!(w.supervisor_ref(BRANCH).as_deref(), Some(w.honest.as_str()));
            if on {
                assert_eq!(
                    other.as_deref(),
                    Some(w.base.as_str()),
                    "another attempt's branch moved"
                );
                assert_eq!(tag, None, "the node's tag came in");
            } else {
                assert_eq!(
                    other.as_deref(),
                    Some(w.honest.as_str()),
                    "the attack did not work"
                );
                assert!(tag.is_some(), "the attack did not bring the tag");
            }
        }
    }

    /// The worker reports one commit; the node's branch is another (say, one
    /// a command made after `finish`, which no review saw).
    #[test]
    fn a_branch_that_is_not_the_reported_commit_is_refused() {
        for on in [false, true] {
            let w = world();
            sh(&w.node, &["checkout", "-q", BRANCH]);
            sh(
                &w.node,
                &["commit", "-q", "--allow-empty", "-m", "sneaked in"],
            );
            sh(&w.node, &["checkout", "-q", "--detach"]);
            let b = w.bundle("moved.bundle", &[&format!("refs/heads/{BRANCH}")]);
            let guards = with(on, |g| g.reported_commit = false);
            let r = fetch_commits(
                &w.supervisor,
                &Source::Bundle(&b),
                BRANCH,
                &w.honest,
                guards,
            );
            if on {
                let e = r.unwrap_err();
                assert!(e.contains("not at the commit its worker reported"), "{e}");
            } else {
                r.unwrap();
                assert_ne!(w.supervisor_ref(BRANCH).as_deref(), Some(w.honest.as_str()));
            }
        }
    }

    /// The "bundle" is a `gitdir:` file naming another repository of this
    /// machine (another project's, whose task branches have the same
    /// names): git would fetch from it.
    #[test]
    fn a_bundle_that_points_at_another_repository_is_refused() {
        for on in [false, true] {
            let w = world();
            let other = w.root.join("other-project");
            std::fs::create_dir_all(&other).unwrap();
            sh(&other, &["init", "-q", "-b", "main"]);
            std::fs::write(other.join("secret.txt"), "another project's\n").unwrap();
            sh(&other, &["add", "secret.txt"]);
            sh(&other, &["commit", "-q", "-m", "secret"]);
            sh(&other, &["branch", BRANCH]);
            let secret = sh(&other, &["rev-parse", "HEAD"]);
            let b = w.root.join("pointer.bundle");
            std::fs::write(&b, format!("gitdir: {}\n", other.join(".git").display())).unwrap();
            let guards = with(on, |g| g.bundle_only = false);
            let r = fetch_commits(&w.supervisor, &Source::Bundle(&b), BRANCH, &secret, guards);
            if on {
                let e = r.unwrap_err();
                assert!(e.contains("not a git bundle"), "{e}");
                assert_eq!(w.supervisor_ref(BRANCH), None);
            } else {
                r.unwrap();
                assert_eq!(
                    w.supervisor_ref(BRANCH).as_deref(),
                    Some(secret.as_str()),
                    "the attack did not work"
                );
            }
        }
    }

    /// A commit whose tree holds `.git/hooks/post-checkout`: written by
    /// git's plumbing on the node, never by a checkout.
    #[test]
    fn a_tree_with_a_dot_git_entry_is_refused() {
        for on in [false, true] {
            let w = world();
            let blob = Command::new("git")
                .arg("-C")
                .arg(&w.node)
                .args(["hash-object", "-w", "--stdin"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin
                        .take()
                        .unwrap()
                        .write_all(b"#!/bin/sh\necho PWNED\n")?;
                    c.wait_with_output()
                })
                .unwrap();
            let blob = String::from_utf8_lossy(&blob.stdout).trim().to_owned();
            let mktree = |entry: String| -> String {
                let mut c = Command::new("git")
                    .arg("-C")
                    .arg(&w.node)
                    .arg("mktree")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                c.stdin.take().unwrap().write_all(entry.as_bytes()).unwrap();
                let out = c.wait_with_output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().to_owned()
            };
            let hooks = mktree(format!("100755 blob {blob}\tpost-checkout\n"));
            let dotgit = mktree(format!("040000 tree {hooks}\thooks\n"));
            let top = mktree(format!("040000 tree {dotgit}\t.git\n"));
            let evil = sh(&w.node, &["commit-tree", "-m", "evil", "-p", &w.base, &top]);
            sh(&w.node, &["branch", "-f", BRANCH, &evil]);
            let b = w.bundle("dotgit.bundle", &[&format!("refs/heads/{BRANCH}")]);
            let guards = with(on, |g| g.fsck = false);
            let r = fetch_commits(&w.supervisor, &Source::Bundle(&b), BRANCH, &evil, guards);
            if on {
                let e = r.unwrap_err();
                assert!(e.contains("fsck") || e.contains("index-pack"), "{e}");
                assert_eq!(w.supervisor_ref(BRANCH), None);
            } else {
                r.unwrap();
                assert_eq!(w.supervisor_ref(BRANCH).as_deref(), Some(evil.as_str()));
            }
        }
    }

    /// A `reference-transaction` hook in the supervisor's repository (say,
    /// one a confined git planted) runs on every fetch unless hooks are off.
    #[test]
    fn no_hook_runs_on_the_fetch() {
        use std::os::unix::fs::PermissionsExt;
        for on in [false, true] {
            let w = world();
            let marker = w.root.join("hook-ran");
            let hook = w.supervisor.join(".git/hooks/reference-transaction");
            std::fs::create_dir_all(hook.parent().unwrap()).unwrap();
            std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
            let b = w.bundle("honest.bundle", &[&format!("refs/heads/{BRANCH}")]);
            let guards = with(on, |g| g.nothing_runs = false);
            fetch_commits(
                &w.supervisor,
                &Source::Bundle(&b),
                BRANCH,
                &w.honest,
                guards,
            )
            .unwrap();
            assert_eq!(marker.exists(), !on, "hooks on: {}", !on);
        }
    }
}
