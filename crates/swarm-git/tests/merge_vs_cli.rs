//! The in-process merge (`Repo::merge`, libgit2) against the `git` binary's
//! `git merge --no-ff` (merge-ort) on generated histories: a base commit of
//! random files, then random edits on `main` and on a task branch (line
//! changes, appended and deleted lines, new, deleted and renamed files,
//! executable bits, a file where the other side has a directory). For every
//! history both must agree on whether the merge conflicts; a clean merge
//! must give the same tree and the parents `main`, branch; a conflict must
//! name the same paths and leave `main` where it was. `git fsck --strict`
//! must find the repository clean afterwards.
//!
//! `SWARM_MERGE_CASES` (default 100) and `SWARM_MERGE_SEED` (default: from
//! the clock, printed) reproduce or widen a run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use swarm_git::{MergeOutcome, Repo};

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new("git")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "user.name=T",
            "-c",
            "user.email=t@localhost",
            "-c",
            "core.logAllRefUpdates=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap()
}

fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Paths the generator uses: `x` and `x/y.txt` make file/directory clashes.
const PATHS: &[&str] = &[
    "a.txt",
    "b.txt",
    "c.py",
    "dir/d.txt",
    "dir/e.txt",
    "dir/sub/f.txt",
    "g/h.txt",
    "x",
    "x/y.txt",
];

fn lines(rng: &mut fastrand::Rng) -> Vec<String> {
    (0..rng.usize(3..16))
        .map(|_| format!("line {} {}", rng.u32(0..40), rng.alphanumeric()))
        .collect()
}

fn write(dir: &Path, rel: &str, lines: &[String]) {
    let p = dir.join(rel);
    if let Some(parent) = p.parent() {
        // A file where a directory should go: the directory wins.
        let mut up = parent.to_path_buf();
        while up != dir {
            if up.is_file() {
                std::fs::remove_file(&up).unwrap();
            }
            up.pop();
        }
        std::fs::create_dir_all(parent).unwrap();
    }
    if p.is_dir() {
        std::fs::remove_dir_all(&p).unwrap();
    }
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(p, text).unwrap();
}

/// The files in the checkout at `dir` now (not the index: edits come first).
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            if e.file_name() == ".git" {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

fn read(dir: &Path, rel: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(rel))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A few random edits in the checkout at `dir`, then one commit.
fn edit_and_commit(dir: &Path, rng: &mut fastrand::Rng, what: &str) {
    let edits = rng.usize(1..5);
    for _ in 0..edits {
        let tracked = files(dir);
        let pick = |rng: &mut fastrand::Rng| -> Option<String> {
            if tracked.is_empty() {
                None
            } else {
                Some(tracked[rng.usize(..tracked.len())].clone())
            }
        };
        match rng.u8(0..10) {
            // Change, insert or delete one line.
            0..=3 => {
                if let Some(f) = pick(rng) {
                    let mut l = read(dir, &f);
                    if l.is_empty() {
                        l.push("new".into());
                    }
                    let i = rng.usize(..l.len());
                    match rng.u8(0..3) {
                        0 => l[i] = format!("changed {} {}", rng.u32(0..9), rng.alphanumeric()),
                        1 => l.insert(i, format!("inserted {}", rng.u32(0..9))),
                        _ => {
                            l.remove(i);
                        }
                    }
                    write(dir, &f, &l);
                }
            }
            // Append a line.
            4 => {
                if let Some(f) = pick(rng) {
                    let mut l = read(dir, &f);
                    l.push(format!("appended {}", rng.u32(0..5)));
                    write(dir, &f, &l);
                }
            }
            // A new file (or one rewritten whole).
            5 | 6 => {
                let f = PATHS[rng.usize(..PATHS.len())];
                write(dir, f, &lines(rng));
            }
            // Delete a file.
            7 => {
                if let Some(f) = pick(rng) {
                    std::fs::remove_file(dir.join(&f)).unwrap();
                }
            }
            // Rename a file, sometimes changing it a little too.
            8 => {
                if let Some(f) = pick(rng) {
                    let to = PATHS[rng.usize(..PATHS.len())];
                    if to != f && !dir.join(to).exists() {
                        let mut l = read(dir, &f);
                        std::fs::remove_file(dir.join(&f)).unwrap();
                        if rng.bool() && !l.is_empty() {
                            l[0] = format!("renamed {}", rng.u32(0..3));
                        }
                        write(dir, to, &l);
                    }
                }
            }
            // Flip the executable bit.
            _ => {
                if let Some(f) = pick(rng) {
                    use std::os::unix::fs::PermissionsExt;
                    let p = dir.join(&f);
                    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode ^ 0o111))
                        .unwrap();
                }
            }
        }
    }
    git_ok(dir, &["add", "-A"]);
    git_ok(dir, &["commit", "-q", "--allow-empty", "-m", what]);
}

fn conflicted(dir: &Path) -> BTreeSet<String> {
    git_ok(dir, &["diff", "--name-only", "--diff-filter=U", "-z"])
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    clean: usize,
    conflict: usize,
    renames: usize,
}

fn one_case(scratch: &Path, case: usize, rng: &mut fastrand::Rng, tally: &mut Tally) {
    let root = scratch.join(format!("r{case}"));
    let repo = Repo::init(&root, "p").unwrap();
    // A base of random files on main, then the task branch forks there.
    for _ in 0..rng.usize(2..6) {
        let f = PATHS[rng.usize(..PATHS.len())];
        write(&root, f, &lines(rng));
    }
    git_ok(&root, &["add", "-A"]);
    git_ok(&root, &["commit", "-q", "-m", "base"]);
    let wt = scratch.join(format!("w{case}"));
    git_ok(
        &root,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "task/t/1",
            wt.to_str().unwrap(),
            "main",
        ],
    );
    edit_and_commit(&wt, rng, "task");
    // Main moves on meanwhile (or, sometimes, does not).
    if rng.u8(0..5) > 0 {
        edit_and_commit(&root, rng, "other");
    }
    let main = git_ok(&root, &["rev-parse", "main"]);
    let task = git_ok(&root, &["rev-parse", "task/t/1"]);

    // git merge --no-ff, in a throwaway checkout of main.
    let cli = scratch.join(format!("c{case}"));
    git_ok(
        &root,
        &[
            "worktree",
            "add",
            "-q",
            "--detach",
            cli.to_str().unwrap(),
            &main,
        ],
    );
    let out = git(&cli, &["merge", "--no-ff", "--no-edit", "-m", "m", &task]);
    let cli_text = String::from_utf8_lossy(&out.stdout).into_owned();
    if cli_text.contains("rename") || cli_text.contains("Rename") {
        tally.renames += 1;
    }
    let expected = if out.status.success() {
        Ok(git_ok(&cli, &["rev-parse", "HEAD^{tree}"]))
    } else {
        let paths = conflicted(&cli);
        assert!(
            !paths.is_empty(),
            "case {case}: git merge failed without conflicts: {cli_text}"
        );
        Err(paths)
    };

    let got = repo
        .merge("task/t/1", "Merge task t (attempt 1): t")
        .unwrap();
    let context = || {
        format!(
            "case {case}: git said:\n{cli_text}\nbase/main/task:\n{}",
            git_ok(
                &root,
                &["log", "--stat", "--format=%h %s", "main", "task/t/1"]
            )
        )
    };
    match (expected, got) {
        (Ok(tree), MergeOutcome::Merged { commit }) => {
            tally.clean += 1;
            assert_eq!(
                git_ok(&root, &["rev-parse", &format!("{commit}^{{tree}}")]),
                tree,
                "{}",
                context()
            );
            assert_eq!(
                git_ok(
                    &root,
                    &["rev-parse", &format!("{commit}^1"), &format!("{commit}^2")]
                ),
                format!("{main}\n{task}"),
                "{}",
                context()
            );
            assert_eq!(git_ok(&root, &["rev-parse", "main"]), commit);
            assert_eq!(
                git_ok(&root, &["log", "-1", "--format=%B", "main"]),
                "Merge task t (attempt 1): t"
            );
        }
        (Err(paths), MergeOutcome::Conflict { paths: got }) => {
            tally.conflict += 1;
            // Where the two differ only in presentation: in a file/directory
            // conflict git merge names the file moved aside `<path>~<side>`
            // (the in-process merge names `<path>`); in a rename/rename
            // conflict it also names the renamed file's old path, which
            // `git merge-tree` (deciding when a side deleted a path) does
            // not. Compare without those suffixes and old paths.
            let base = git_ok(&root, &["merge-base", &main, &task]);
            let mut sources = BTreeSet::new();
            for side in [&main, &task] {
                let out = git_ok(&root, &["diff", "-M", "--name-status", "-z", &base, side]);
                let f: Vec<&str> = out.split('\0').collect();
                let mut i = 0;
                while i < f.len() {
                    if f[i].starts_with('R') && i + 2 < f.len() {
                        sources.insert(f[i + 1].to_owned());
                        i += 3;
                    } else {
                        i += 2;
                    }
                }
            }
            let normal = |set: Vec<String>| -> BTreeSet<String> {
                let all: BTreeSet<String> = set
                    .into_iter()
                    .map(|p| match p.split_once('~') {
                        Some((path, side)) if side == "HEAD" || side == main || side == task => {
                            path.to_owned()
                        }
                        _ => p,
                    })
                    .collect();
                let kept: BTreeSet<String> = all
                    .iter()
                    .filter(|p| !sources.contains(*p))
                    .cloned()
                    .collect();
                if kept.is_empty() {
                    all
                } else {
                    kept
                }
            };
            let got = normal(got);
            let paths = normal(paths.into_iter().collect());
            assert_eq!(got, paths, "{}", context());
            assert_eq!(
                git_ok(&root, &["rev-parse", "main"]),
                main,
                "main moved on a conflict"
            );
        }
        (expected, got) => panic!("{}\ngit: {expected:?}\nin process: {got:?}", context()),
    }
    let fsck = git(&root, &["fsck", "--strict", "--no-dangling"]);
    assert!(
        fsck.status.success() && fsck.stdout.is_empty(),
        "case {case}: fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
fn in_process_merge_agrees_with_git_merge_on_generated_histories() {
    let cases: usize = std::env::var("SWARM_MERGE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let seed: u64 = std::env::var("SWARM_MERGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("SWARM_MERGE_SEED={seed} SWARM_MERGE_CASES={cases}");
    let scratch = tempfile::tempdir().unwrap();
    let mut tally = Tally::default();
    for case in 0..cases {
        // One generator per case, so a failing case replays on its own seed.
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_add(case as u64));
        one_case(scratch.path(), case, &mut rng, &mut tally);
    }
    let (in_process, by_git) = swarm_git::merge_counts();
    eprintln!("{tally:?}; decided in process: {in_process}, by git merge-tree: {by_git}");
    // Both ways of deciding must be exercised.
    assert!(in_process as usize > cases / 10 && by_git as usize > cases / 10);
    // The generator must exercise both outcomes.
    assert!(
        tally.clean > cases / 10 && tally.conflict > cases / 10,
        "{tally:?}"
    );
}
