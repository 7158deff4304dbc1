//! End-to-end tests of the sandbox: model-run commands that try to leave
//! their worktree fail, the tasks still complete, and legitimate work (files,
//! `python3 -m unittest`, sh scripts, a verify step) passes — for every
//! mechanism this machine has (`AGENTSWARM_TEST_SANDBOXES`, set by `.ci/run`,
//! makes a missing one a failure).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn write_secrets(h: &Harness) -> std::path::PathBuf {
    let path = h.home.path().join("secrets.env");
    std::fs::write(&path, "OPENAI_API_KEY=test-key-not-a-real-secret\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn connect(port: u16) -> String {
    format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('CONNECTED')\""
    )
}

fn manifest_of(report: &Value) -> Value {
    serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap()).unwrap()
}

#[test]
fn commands_that_leave_the_worktree_fail_and_the_work_still_lands() {
    for mechanism in mechanisms() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let marker = std::env::temp_dir().join(format!(
            "agentswarm-e2e-sandbox-{}-{mechanism}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&marker);

        let escapes = |data: &Path, secrets: &Path| -> Vec<(&'static str, String)> {
            vec![
                ("write /tmp", format!("echo x > {}", marker.display())),
                ("write ../other", "echo x > ../escaped.txt".into()),
                (
                    "write the data dir",
                    format!("echo x > {}/planted.txt", data.display()),
                ),
                (
                    "read the store",
                    format!("cat {}/agentswarm.db > /dev/null", data.display()),
                ),
                (
                    "read another task's worktree",
                    "cat ../w1/other.txt ../w2/other.txt".into(),
                ),
                (
                    "read the secrets file",
                    format!("cat {}", secrets.display()),
                ),
                ("connect to loopback", connect(port)),
            ]
        };

        // The commands aim at paths under the harness's home, which the
        // scenario must know before the server starts: make the home first.
        let home = reachable_home();
        let data = home.path().join("data");
        let secrets = home.path().join("secrets.env");
        let hostile = escapes(&data, &secrets);
        let mut turns: Vec<Value> = vec![run_turn("sleep 1")];
        turns.extend(hostile.iter().map(|(_, c)| run_turn(c)));
        // A daemon that leaves the command's process group is ended with the command.
        turns.push(run_turn(
            "setsid sh -c 'sleep 2; echo late > late.txt' > /dev/null 2>&1 < /dev/null & sleep 0.5; echo started",
        ));
        turns.push(run_turn(
            "sleep 3; test -e late.txt && echo LATE || echo NO-LATE",
        ));
        turns.push(write_turn("ok.txt", "fine\n"));
        turns.push(finish_turn("tried to leave; stayed"));
        let p = plan(
            "sandboxed",
            &[("other", &[]), ("hostile", &[])],
            &[
                "python3 -m unittest -v",
                "sh check.sh",
                "test -f ok.txt",
                // The verify step is confined too: these pass only if the reads fail.
                &format!("! cat {} 2>/dev/null", secrets.display()),
                &format!("! cat {}/agentswarm.db > /dev/null 2>&1", data.display()),
            ],
        );
        let other = json!({"turns": [
            write_turn("other.txt", "OTHER-TASK-CONTENT\n"),
            write_turn("test_math.py", "import unittest\n\nclass T(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(2 + 2, 4)\n"),
            write_turn("check.sh", "#!/bin/sh\nset -e\nmkdir -p build\necho ok > build/out\ntest \"$(cat build/out)\" = ok\n"),
            run_turn("python3 -m unittest -v && sh check.sh && echo LEGIT-OK"),
            run_turn("sleep 3"),
            finish_turn("wrote tests"),
        ]});
        let mut h = Harness::new(json!({
            "planner": [p],
            "tasks": {"other": other, "hostile": {"turns": turns}},
        }));
        h.home = home;
        write_secrets(&h);
        assert_eq!(h.data_dir(), data);

        let out = h
            .cmd(&["run", "--json", "--max-workers", "2", "try to escape"])
            .env("AGENTSWARM_SECRETS_FILE", &secrets)
            // Both mechanisms confine a root service too (under Landlock its
            // commands drop to an unprivileged uid).
            .env("AGENTSWARM_SANDBOX", "required")
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mechanism}: {}", text(&out));
        let report = last_json_line(&out);
        assert_eq!(report["status"], "done", "{mechanism}: {}", text(&out));
        assert!(
            text(&out).contains(&format!("sandbox: {mechanism}")),
            "the run says how it confines commands: {}",
            text(&out)
        );

        let results = tool_results(&h, "hostile");
        for (i, (what, cmd)) in hostile.iter().enumerate() {
            let r = &results[i + 1];
            assert!(
                !r.starts_with("exit code 0")
                    && !r.contains("CONNECTED")
                    && !r.contains("OTHER-TASK-CONTENT")
                    && !r.contains("not-a-real-secret"),
                "{mechanism}: `{what}` ({cmd}) was not stopped: {r}"
            );
        }
        let late = &results[hostile.len() + 2];
        assert!(late.contains("NO-LATE"), "{mechanism}: {late}");
        let legit = tool_results(&h, "other");
        assert!(
            legit[3].starts_with("exit code 0") && legit[3].contains("LEGIT-OK"),
            "{mechanism}: {}",
            legit[3]
        );
        assert!(!marker.exists(), "{mechanism}: a command wrote /tmp");
        assert!(!data.join("planted.txt").exists());
        let project = report["project_id"].as_str().unwrap();
        let worktrees = data.join("projects").join(project).join("worktrees");
        assert!(!worktrees.join("escaped.txt").exists());
        assert!(listener.accept().is_err(), "a connection reached the test");

        // Both tasks' work is on main, and verify ran its confined commands.
        let repo = h.repo(project);
        assert_eq!(git(&repo, &["show", "main:ok.txt"]), "fine\n");
        assert_eq!(
            git(&repo, &["show", "main:other.txt"]),
            "OTHER-TASK-CONTENT\n"
        );
        let manifest = manifest_of(&report);
        assert_eq!(manifest["verify"]["passed"], true, "{manifest}");
        assert_eq!(manifest["sandbox"]["mechanism"], mechanism);
        assert!(manifest["sandbox"]["mode"] == "required" || mechanism == "landlock");
        assert_eq!(manifest["sandbox"]["allow_network"], false);
        // The commands' private HOME and TMPDIR are not committed.
        let tracked = git(&repo, &["ls-files"]);
        assert!(!tracked.contains(".agentswarm"), "{tracked}");
    }
}

#[test]
fn a_project_that_allows_the_network_reaches_loopback() {
    for mechanism in mechanisms() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let p = plan("net", &[("fetch", &[])], &["test -f got.txt"]);
        let h = Harness::new(json!({
            "planner": [p],
            "tasks": {"fetch": {"turns": [
                run_turn(&format!("{} > got.txt && cat got.txt", connect(port))),
                finish_turn("fetched"),
            ]}},
        }));
        let out = h
            .cmd(&["run", "--json", "--allow-network", "fetch something"])
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mechanism}: {}", text(&out));
        let report = last_json_line(&out);
        let r = &tool_results(&h, "fetch")[0];
        assert!(
            r.starts_with("exit code 0") && r.contains("CONNECTED"),
            "{mechanism}: {r}"
        );
        let manifest = manifest_of(&report);
        assert_eq!(manifest["sandbox"]["allow_network"], true, "{manifest}");
        assert_eq!(manifest["sandbox"]["mechanism"], mechanism);
    }
}
