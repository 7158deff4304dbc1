//! The worker's git helper (`WorktreeHelper`: libgit2 in a forked, confined
//! process) against the `git` calls it replaces (`commit_all`,
//! `reset_worktree_at`) on the same edits: the same trees, messages,
//! branches, index and files. Without the test harness (`harness = false`),
//! because the helper is forked only from a process with one thread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use swarm_git::{commit_all, reset_worktree_at, MergeOutcome, Repo, Trailers, WorktreeHelper};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(out.status.success(), "git {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn trailers(task: &str, attempt: u32) -> Trailers {
    Trailers {
        project: "p1".into(),
        task: task.into(),
        attempt,
    }
}

fn write(wt: &Path, rel: &str, text: &str) {
    let path = wt.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// What the nested repository's trap touches: beside the worktrees.
fn marker(wt: &Path) -> PathBuf {
    wt.parent().unwrap().join("trap-ran")
}

/// The trap of `edit`'s round 0 is live: git working in the nested
/// repository runs it.
fn trap_fires(wt: &Path) -> bool {
    let _ = std::fs::remove_file(marker(wt));
    git(&wt.join("nested"), &["status", "--porcelain"]);
    let fired = marker(wt).exists();
    let _ = std::fs::remove_file(marker(wt));
    fired
}

/// The same edits in both worktrees, one round at a time.
fn edit(wt: &Path, round: u32) {
    match round {
        0 => {
            write(wt, "a.txt", "a\n");
            write(wt, "src/lib.rs", "pub fn f() {}\n");
            write(wt, "src/deep/x/y.py", "print(1)\n");
            write(wt, ".gitignore", "*.log\nbuild/\n");
            write(wt, "run.log", "ignored\n");
            write(wt, "build/out.o", "ignored\n");
            write(wt, ".env", "SECRET=1\n");
            write(wt, "node_modules/m/index.js", "ignored\n");
            write(wt, ".agentswarm/tmp/scratch", "private\n");
            write(wt, "sub/.gitignore", "local.txt\n");
            write(wt, "sub/local.txt", "ignored\n");
            write(wt, "sub/kept.txt", "kept\n");
            write(wt, "run.sh", "#!/bin/sh\necho hi\n");
            std::fs::set_permissions(wt.join("run.sh"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
            std::os::unix::fs::symlink("a.txt", wt.join("link")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", wt.join("abs-link")).unwrap();
            std::fs::create_dir_all(wt.join("empty/dir")).unwrap();
            write(wt, "crlf.txt", "one\r\ntwo\r\n");
            write(wt, "empty.txt", "");
            // A nested repository whose configuration runs a program when
            // git works in it (`trap_fires` shows that it does).
            write(wt, "nested/file.txt", "plain\n");
            git(&wt.join("nested"), &["init", "-q"]);
            let trap = format!("sh -c 'touch {}'", marker(wt).display());
            git(&wt.join("nested"), &["config", "core.fsmonitor", &trap]);
        }
        1 => {
            std::fs::remove_file(wt.join("a.txt")).unwrap();
            write(wt, "src/lib.rs", "pub fn f() {}\npub fn g() {}\n");
            std::fs::set_permissions(wt.join("run.sh"), std::fs::Permissions::from_mode(0o644))
                .unwrap();
            std::fs::remove_file(wt.join("link")).unwrap();
            write(wt, "link", "now a file\n");
            std::fs::remove_dir_all(wt.join("src/deep")).unwrap();
            write(wt, "src/deep", "a file where a directory was\n");
        }
        _ => {}
    }
}

fn tree_of(repo: &Path, commit: &str) -> String {
    git(repo, &["rev-parse", &format!("{commit}^{{tree}}")])
}

fn message_of(repo: &Path, commit: &str) -> String {
    git(repo, &["log", "-1", "--format=%B", commit])
}

/// Every path in `wt` but `.git`, with its kind and contents.
fn listing(wt: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![wt.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(wt)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".git" {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let what = if meta.is_symlink() {
                format!("-> {}", std::fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path.clone());
                "dir".into()
            } else {
                format!(
                    "{:o} {}",
                    meta.permissions().mode() & 0o111,
                    String::from_utf8_lossy(&std::fs::read(&path).unwrap())
                )
            };
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

struct Setup {
    _dir: tempfile::TempDir,
    base: PathBuf,
    plain: Repo,
    repo: Repo,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let plain = Repo::init(base.join("repo"), "p1").unwrap();
    let system: Vec<PathBuf> = swarm_exec::sandbox::DEFAULT_READ_ONLY
        .iter()
        .map(PathBuf::from)
        .collect();
    let repo = plain.clone().confine(system);
    std::fs::create_dir_all(base.join("wt")).unwrap();
    Setup {
        _dir: dir,
        base,
        plain,
        repo,
    }
}

fn commits_and_resets_match_git() {
    let s = setup();
    let main = s.plain.head().unwrap();
    let (wh, wg) = (s.base.join("wt/w1"), s.base.join("wt/w2"));
    s.repo.add_worktree_at(&wh, "task/h/1", &main).unwrap();
    s.repo.add_worktree_at(&wg, "task/g/1", &main).unwrap();
    let helper = WorktreeHelper::start(&s.repo, &wh).unwrap();
    let root = s.plain.root().to_owned();
    for round in 0..3 {
        edit(&wh, round);
        edit(&wg, round);
        if round == 0 {
            assert!(trap_fires(&wh) && trap_fires(&wg), "the trap does not work");
        }
        let body = "  did things  \n\n\n\nand more\t\n";
        let h = helper
            .commit(&wh, "t: title ", body, &trailers("t", 1))
            .unwrap();
        let g = commit_all(&s.repo, &wg, "t: title ", body, &trailers("t", 1)).unwrap();
        assert_eq!(
            tree_of(&root, &h.sha),
            tree_of(&root, &g.sha),
            "round {round}"
        );
        assert_eq!(message_of(&root, &h.sha), message_of(&root, &g.sha));
        assert_eq!(h.nested, g.nested);
        assert_eq!(
            git(&root, &["rev-parse", "refs/heads/task/h/1"]).trim(),
            h.sha
        );
        assert_eq!(git(&wh, &["status", "--porcelain"]), "");
        assert_eq!(listing(&wh), listing(&wg), "round {round}");
    }
    assert!(
        !marker(&wh).exists(),
        "git ran the nested repository's program"
    );
    assert!(!root.join(".git/logs").exists(), "a reflog was written");
    // Merged into main, then both worktrees move to the new main: the files,
    // the index and the branch are git's, untracked files stay.
    assert!(matches!(
        s.plain.merge("task/h/1", "merge h").unwrap(),
        MergeOutcome::Merged { .. }
    ));
    let main = s.plain.head().unwrap();
    for clean in [false, true] {
        write(&wh, "untracked.txt", "u\n");
        write(&wg, "untracked.txt", "u\n");
        write(&wh, "src/lib.rs", "changed, not committed\n");
        write(&wg, "src/lib.rs", "changed, not committed\n");
        let n = if clean { 3 } else { 2 };
        let (bh, bg) = (format!("task/h/{n}"), format!("task/g/{n}"));
        helper.reset(&wh, &bh, &main, clean).unwrap();
        reset_worktree_at(&s.repo, &wg, &bg, &main, clean).unwrap();
        assert_eq!(listing(&wh), listing(&wg), "clean {clean}");
        assert_eq!(
            git(&wh, &["status", "--porcelain", "--ignored"]),
            git(&wg, &["status", "--porcelain", "--ignored"])
        );
        assert_eq!(
            git(&wh, &["symbolic-ref", "HEAD"]).trim(),
            format!("refs/heads/{bh}")
        );
        assert_eq!(git(&wh, &["rev-parse", "HEAD"]).trim(), main);
        assert_eq!(git(&wh, &["ls-files", "-s"]), git(&wg, &["ls-files", "-s"]));
    }
    assert!(!root.join(".git/logs").exists(), "a reflog was written");
}

/// A reset never writes through a symlink the attempt left where the new
/// `main` has a directory or a file: it replaces the link, as git does.
fn a_reset_never_writes_through_a_planted_symlink() {
    let s = setup();
    let main = s.plain.head().unwrap();
    let (wh, wg) = (s.base.join("wt/w1"), s.base.join("wt/w2"));
    s.repo.add_worktree_at(&wh, "task/h/1", &main).unwrap();
    s.repo.add_worktree_at(&wg, "task/g/1", &main).unwrap();
    let helper = WorktreeHelper::start(&s.repo, &wh).unwrap();
    write(&wg, "trap/file", "from main\n");
    write(&wg, "deep/er/file", "from main\n");
    write(&wg, "plain", "from main\n");
    commit_all(&s.repo, &wg, "g", "", &trailers("g", 1)).unwrap();
    s.plain.merge("task/g/1", "merge g").unwrap();
    let outside = s.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("plain"), "outside\n").unwrap();
    std::os::unix::fs::symlink(&outside, wh.join("trap")).unwrap();
    std::fs::create_dir_all(wh.join("deep")).unwrap();
    std::os::unix::fs::symlink(&outside, wh.join("deep/er")).unwrap();
    std::os::unix::fs::symlink(outside.join("plain"), wh.join("plain")).unwrap();
    std::os::unix::fs::symlink(&outside, wh.join("kept")).unwrap();
    let main = s.plain.head().unwrap();
    helper.reset(&wh, "task/h/2", &main, false).unwrap();
    assert!(
        !outside.join("file").exists(),
        "written through the symlink"
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("plain")).unwrap(),
        "outside\n"
    );
    for f in ["trap/file", "deep/er/file", "plain"] {
        assert_eq!(
            std::fs::read_to_string(wh.join(f)).unwrap(),
            "from main\n",
            "{f}"
        );
    }
    // A link in no path of `main` stays, as git leaves it.
    assert!(std::fs::symlink_metadata(wh.join("kept"))
        .unwrap()
        .is_symlink());
}

/// Forked only from a process with one thread.
fn refused_with_threads() {
    let s = setup();
    let main = s.plain.head().unwrap();
    let wh = s.base.join("wt/w1");
    s.repo.add_worktree_at(&wh, "task/h/1", &main).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || rx.recv());
    let err = WorktreeHelper::start(&s.repo, &wh).unwrap_err();
    assert!(err.to_string().contains("single-threaded"), "{err}");
    drop(tx);
    t.join().unwrap().unwrap_err();
}

/// A repository `Repo::init` did not open (reflogs on) gets no helper: the
/// worker then runs `git` as before.
fn refused_with_reflogs_on() {
    let s = setup();
    let main = s.plain.head().unwrap();
    let wh = s.base.join("wt/w1");
    s.repo.add_worktree_at(&wh, "task/h/1", &main).unwrap();
    git(s.plain.root(), &["config", "core.logAllRefUpdates", "true"]);
    let err = WorktreeHelper::start(&s.repo, &wh).unwrap_err();
    assert!(err.to_string().contains("reflogs on"), "{err}");
}

fn main() {
    let tests: [(&str, fn()); 4] = [
        ("commits_and_resets_match_git", commits_and_resets_match_git),
        (
            "a_reset_never_writes_through_a_planted_symlink",
            a_reset_never_writes_through_a_planted_symlink,
        ),
        ("refused_with_threads", refused_with_threads),
        ("refused_with_reflogs_on", refused_with_reflogs_on),
    ];
    for (name, test) in tests {
        eprintln!("test {name} ...");
        test();
        eprintln!("test {name} ... ok");
    }
}
