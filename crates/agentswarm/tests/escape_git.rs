//! End-to-end: the sandbox escapes an adversarial review found through the
//! worker's own git and through root's power under Landlock (issue 13, §1 and
//! §3), driven by a hostile scripted model through the real binary, under
//! every sandbox mechanism this machine has (`AGENTSWARM_TEST_SANDBOXES`,
//! set by `.ci/run`, makes a missing one a failure). CI runs them as root.
//!
//! That each attack works with the defence off is shown where the defence
//! can be switched off: for the nested repository, against the worker's old
//! git call (`old_add` below, what `commit_all` ran before); for root under
//! Landlock, in crates/swarm-exec/tests/sandbox.rs
//! (`a_root_service_command_under_landlock_owns_nothing_outside_its_worktree`,
//! with the uid drop off).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn root_user() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A payload that, run by anything unconfined, takes the secrets and the
/// service's SSH key, leaves a marker outside every worktree and says so.
fn payload(marker: &Path, secrets: &Path, home: &Path) -> String {
    format!(
        "#!/bin/sh\n{{ echo PWNED; cat {s}; cat {h}/.ssh/id_rsa; }} > {m} 2>&1\nfalse\n",
        m = marker.display(),
        s = secrets.display(),
        h = home.display(),
    )
}

/// `git add -A` as the worker ran it before this fix (GIT_DIR from the
/// repository's side, hooks off, nothing else), in `wt`.
fn old_add(repo: &Path, wt: &Path) {
    let admin = std::fs::read_dir(repo.join(".git/worktrees"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|a| {
            std::fs::read_to_string(a.join("gitdir"))
                .is_ok_and(|g| Path::new(g.trim()).parent() == Some(wt))
        })
        .unwrap();
    let _ = std::process::Command::new("git")
        .args(["-c", "core.hooksPath=/dev/null", "add", "-A"])
        .current_dir(wt)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_DIR", admin)
        .env("GIT_WORK_TREE", wt)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
}

/// The review's reproduction: task `a` commits a nested repository, task `b`
/// plants a payload as that repository's `core.fsmonitor` (through a `.git`
/// directory, or a `.git` file naming a git directory elsewhere in the
/// worktree) and finishes.
#[test]
fn a_nested_repository_cannot_make_the_worker_run_a_program() {
    for mechanism in mechanisms() {
        for via in ["directory", "file"] {
            let home = reachable_home();
            let secrets = home.path().join("secrets.env");
            let marker = std::env::temp_dir().join(format!(
                "agentswarm-e2e-fsmonitor-{}-{mechanism}-{via}",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&marker);
            std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
            std::fs::write(
                home.path().join(".ssh/id_rsa"),
                "FAKE-SSH-KEY-not-a-real-key\n",
            )
            .unwrap();
            let plant = match via {
                "directory" => {
                    "WT=$(pwd); (cd sub && git init -q); git -C sub config core.fsmonitor \"sh $WT/pwn.sh; false\""
                }
                _ => {
                    "WT=$(pwd); git init -q --bare evil.git && git --git-dir=evil.git config core.bare false && \
                     git --git-dir=evil.git config core.fsmonitor \"sh $WT/pwn.sh; false\" && \
                     echo \"gitdir: $WT/evil.git\" > sub/.git"
                }
            };
            let a = json!({"turns": [
                run_turn("mkdir sub && cd sub && git init -q && echo hi > f && git add f && git -c user.name=x -c user.email=x@x commit -qm init"),
                finish_turn("a nested repository"),
            ]});
            let b = json!({"turns": [
                write_turn("pwn.sh", &payload(&marker, &secrets, home.path())),
                run_turn(plant),
                finish_turn("planted"),
            ]});
            let p = plan("nested", &[("a", &[]), ("b", &["a"])], &["test -f sub/f"]);
            let mut h = Harness::new(json!({"planner": [p], "tasks": {"a": a, "b": b}}));
            h.home = home;
            std::fs::write(&secrets, "OPENAI_API_KEY=test-key-not-a-real-secret\n").unwrap();
            std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();

            let out = h
                .cmd(&["run", "--json", "escape through git"])
                .env("AGENTSWARM_SECRETS_FILE", &secrets)
                .env("AGENTSWARM_SANDBOX", "required")
                .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
                .output()
                .unwrap();
            let report = last_json_line(&out);
            assert_eq!(
                report["status"],
                "done",
                "{mechanism}/{via}: {}",
                text(&out)
            );
            assert!(
                !marker.exists(),
                "{mechanism}/{via}: the payload ran: {}",
                std::fs::read_to_string(&marker).unwrap_or_default()
            );
            // The run says what it did with the nested repository.
            let project = report["project_id"].as_str().unwrap();
            let logs = text(&h.run(&["logs", project]));
            assert!(
                logs.contains("nested git repositories are not kept"),
                "{mechanism}/{via}: {logs}"
            );
            // Its files are plain content in main, not a gitlink.
            let repo = h.repo(project);
            let tree = git(&repo, &["ls-tree", "-r", "main"]);
            assert!(
                !tree.contains("160000") && tree.contains("sub/f"),
                "{mechanism}/{via}: {tree}"
            );

            // Against the old worker: the same plant, then its `git add -A`,
            // in a fresh worktree of a repository whose main has the gitlink
            // the old worker committed for task a.
            if mechanism == "landlock" && via == "directory" {
                let scratch = tempfile::tempdir().unwrap();
                let sc = scratch.path();
                git(sc, &["init", "-q", "-b", "main", "r"]);
                let r = sc.join("r");
                std::fs::create_dir_all(r.join("sub")).unwrap();
                let sh = |dir: &Path, script: &str| {
                    let ok = std::process::Command::new("sh")
                        .args(["-c", script])
                        .current_dir(dir)
                        .env("GIT_CONFIG_GLOBAL", "/dev/null")
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "{script}");
                };
                sh(&r, "cd sub && git init -q && echo hi > f && git add f && git -c user.name=x -c user.email=x@x commit -qm i && cd .. && git add -A 2>/dev/null && git -c user.name=x -c user.email=x@x commit -qm a");
                sh(
                    &r,
                    "git worktree add -q ../wt -b b && cd ../wt && rm -rf sub/* && mkdir -p sub",
                );
                let wt = sc.join("wt").canonicalize().unwrap();
                std::fs::write(wt.join("pwn.sh"), payload(&marker, &secrets, h.home.path()))
                    .unwrap();
                sh(&wt, plant);
                old_add(&r.canonicalize().unwrap(), &wt);
                let stolen = std::fs::read_to_string(&marker).unwrap_or_default();
                assert!(
                    stolen.contains("PWNED") && stolen.contains("not-a-real-secret"),
                    "the old worker's git did not run the payload: {stolen}"
                );
                std::fs::remove_file(&marker).unwrap();
            }
        }
    }
}

/// As root, a command under Landlock could chmod root's files, open the
/// secrets file's mode and change times outside its worktree, and the
/// process limit did not bind. The task must still complete.
#[test]
fn a_root_service_command_owns_nothing_outside_its_worktree() {
    if !root_user() {
        eprintln!("skipped: the attacks are root's");
        return;
    }
    for mechanism in mechanisms() {
        let home = reachable_home();
        // A root-owned file outside every worktree, readable to commands.
        let tool = home.path().join("opt-tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let secrets = home.path().join("secrets.env");
        let t = tool.display();
        let s = secrets.display();
        let attacks = [
            "head -c 1 /etc/shadow > /dev/null && echo SHADOW-READ".to_owned(),
            format!("chmod 4755 {t} && echo SETUID-SET"),
            format!("chmod 644 {s} && echo SECRETS-OPENED"),
            format!("touch -d 2001-01-01 {t} && echo TIMES-CHANGED"),
            "python3 -c \"\nimport os, time\nn = 0\ntry:\n    for i in range(100):\n        if os.fork() == 0:\n            time.sleep(2)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    pass\nprint('FORKED', n)\n\"".to_owned(),
        ];
        let mut turns: Vec<Value> = attacks.iter().map(|c| run_turn(c)).collect();
        // Legitimate work in its own worktree still works, chmod included.
        turns.push(write_turn("run.sh", "#!/bin/sh\necho RAN-OK\n"));
        turns.push(run_turn(
            "chmod +x run.sh && ./run.sh && touch -d 2001-01-01 run.sh && echo data > new.txt",
        ));
        turns.push(finish_turn("tried root's powers"));
        let p = plan(
            "rootly",
            &[("hostile", &[])],
            &["./run.sh", "test -f new.txt"],
        );
        let mut h = Harness::new(json!({"planner": [p], "tasks": {"hostile": {"turns": turns}}}));
        h.home = home;
        std::fs::write(&secrets, "OPENAI_API_KEY=test-key-not-a-real-secret\n").unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mtime = std::fs::metadata(&tool).unwrap().mtime();
        // A small process limit, so that the fork loop shows it binding.
        let config = h.home.path().join("agentswarm.toml");
        std::fs::write(&config, "sandbox_max_processes = 40\n").unwrap();

        let out = h
            .cmd(&["run", "--json", "use root's powers"])
            .env("AGENTSWARM_SECRETS_FILE", &secrets)
            .env("AGENTSWARM_SANDBOX", "required")
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .env("AGENTSWARM_CONFIG", &config)
            .output()
            .unwrap();
        let report = last_json_line(&out);
        assert_eq!(report["status"], "done", "{mechanism}: {}", text(&out));
        let results = tool_results(&h, "hostile");
        let joined = results.join("\n---\n");
        for bad in ["SETUID-SET", "SECRETS-OPENED", "TIMES-CHANGED"] {
            assert!(!joined.contains(bad), "{mechanism}: {bad}: {joined}");
        }
        // Under bubblewrap a root command is still uid 0 outside: it reads
        // root-only files bound into it (docs/security.md, still open).
        if mechanism == "landlock" {
            assert!(!joined.contains("SHADOW-READ"), "{mechanism}: {joined}");
        }
        assert_eq!(
            std::fs::metadata(&tool).unwrap().permissions().mode() & 0o7777,
            0o755,
            "{mechanism}"
        );
        assert_eq!(
            std::fs::metadata(&secrets).unwrap().permissions().mode() & 0o777,
            0o600,
            "{mechanism}"
        );
        assert_eq!(
            std::fs::metadata(&tool).unwrap().mtime(),
            mtime,
            "{mechanism}"
        );
        assert!(
            joined.contains("RAN-OK"),
            "{mechanism}: legitimate work failed: {joined}"
        );
        if mechanism == "landlock" {
            // bubblewrap's PID namespace bounds processes instead (docs/security.md).
            let forked: u32 = results[4]
                .lines()
                .find_map(|l| l.strip_prefix("FORKED "))
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("{mechanism}: {}", results[4]));
            assert!(
                forked < 100,
                "{mechanism}: the process limit did not bind: {joined}"
            );
        }
    }
}
