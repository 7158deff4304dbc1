//! End-to-end: the real binary, real git, real worker processes, against the
//! scripted model server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// A DAG wider than the cap: root → 12 parallel tasks → join → verify.
#[test]
fn wide_dag_respects_the_cap_and_merges_every_task_once() {
    let mut tasks: Vec<(String, Vec<String>)> = vec![("root".into(), vec![])];
    for i in 0..12 {
        tasks.push((format!("leaf{i:02}"), vec!["root".into()]));
    }
    tasks.push((
        "join".into(),
        (0..12).map(|i| format!("leaf{i:02}")).collect(),
    ));
    let refs: Vec<(&str, Vec<&str>)> = tasks
        .iter()
        .map(|(id, d)| (id.as_str(), d.iter().map(String::as_str).collect()))
        .collect();
    let refs2: Vec<(&str, &[&str])> = refs.iter().map(|(id, d)| (*id, d.as_slice())).collect();
    let p = plan(
        "widedag",
        &refs2,
        &[
            "test -f root.txt",
            "test -f join.txt",
            "ls leaf*.txt | wc -l | grep -qx 12",
        ],
    );

    let mut scripts = serde_json::Map::new();
    for (id, _) in &tasks {
        scripts.insert(id.clone(), json!({"turns": [write_turn(&format!("{id}.txt"), &format!("made by {id}\n")), finish_turn(&format!("wrote {id}.txt"))]}));
    }
    let h = Harness::new(json!({"latency_ms": 150, "tasks": scripts}));
    let (out, report) = h.run_plan(&p, &["--max-workers", "3"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done", "{report}");
    assert_eq!(report["tasks_total"], 15);
    assert_eq!(report["tasks_done"], 15);

    assert!(
        h.server.violations().is_empty(),
        "protocol violations: {:?}",
        h.server.violations()
    );
    let max = h.server.max_in_flight();
    assert!(max <= 3, "saw {max} requests in flight with a cap of 3");
    assert!(
        max >= 2,
        "expected parallel work, saw at most {max} request(s) in flight"
    );

    let project = report["project_id"].as_str().unwrap();
    let counts = trailer_counts(&h.repo(project));
    for (id, _) in &tasks {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "task {id} merged {:?} times",
            counts.get(id.as_str())
        );
    }
    assert_eq!(
        counts.len(),
        tasks.len(),
        "only plan tasks carry trailers: {counts:?}"
    );

    let delivery = std::path::PathBuf::from(report["delivery"].as_str().unwrap());
    assert_eq!(delivery.file_name().unwrap(), "widedag-delivery.tar.gz");
    let files = check_delivery(&delivery, "widedag");
    for (id, _) in &tasks {
        assert_eq!(
            files[&format!("{id}.txt")],
            format!("made by {id}\n").into_bytes()
        );
    }
    // A per-task archive with the task's own file and manifest.
    let task_archive = h
        .outputs_dir()
        .join(project)
        .join("tasks")
        .join("leaf03.tar.gz");
    let t = read_archive(&task_archive);
    assert_eq!(t["leaf03/leaf03.txt"], b"made by leaf03\n".to_vec());
    assert!(t.contains_key("manifest.json"));

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["status"], "done");
    assert_eq!(manifest["verify"]["passed"], true);
    assert_eq!(manifest["tasks"].as_array().unwrap().len(), 15);
    assert_eq!(manifest["final_commit"].as_str().unwrap().len(), 40);
}

/// Two tasks that may run at the same time append to the same file: the
/// second merge conflicts, the task re-runs on the new main, both lines land.
#[test]
fn parallel_edits_of_one_file_both_reach_main() {
    let p = plan(
        "shared",
        &[("base", &[]), ("left", &["base"]), ("right", &["base"])],
        &["grep -qx left shared.txt", "grep -qx right shared.txt"],
    );
    let append = |who: &str| {
        json!({"turns": [
            {"calls": [{"name": "run_command", "arguments": {"command": format!("echo {who} >> shared.txt")}}]},
            finish_turn(&format!("appended {who}")),
        ]})
    };
    let h = Harness::new(json!({
        "latency_ms": 50,
        "tasks": {"base": {"turns": [write_turn("shared.txt", "base\n"), finish_turn("base")]}, "left": append("left"), "right": append("right")}
    }));
    let (out, report) = h.run_plan(&p, &["--max-workers", "4"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = report["project_id"].as_str().unwrap();
    let shared = git(&h.repo(project), &["show", "main:shared.txt"]);
    assert!(shared.lines().any(|l| l == "left"), "{shared}");
    assert!(shared.lines().any(|l| l == "right"), "{shared}");
    let counts = trailer_counts(&h.repo(project));
    assert_eq!(counts.get("left"), Some(&1));
    assert_eq!(counts.get("right"), Some(&1));
    // The re-run got the conflicting path in its prompt.
    let status = h.status_json(project);
    let attempts: u64 = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["id"] == "left" || t["id"] == "right")
        .map(|t| t["attempts"].as_u64().unwrap())
        .sum();
    if attempts > 2 {
        let reran = h.server.requests().into_iter().any(|r| {
            r.attempt == Some(2)
                && r.body["messages"][1]["content"]
                    .as_str()
                    .is_some_and(|c| c.contains("shared.txt") && c.contains("conflicted"))
        });
        assert!(
            reran,
            "a conflicting re-run names the conflicting path in its prompt"
        );
    }
}

#[test]
fn a_malformed_plan_is_reasked_then_fails_clearly() {
    let cycle = json!({"name": "bad", "tasks": [
        {"id": "a", "title": "A", "depends_on": ["b"]},
        {"id": "b", "title": "B", "depends_on": ["a"]},
        {"id": "verify", "title": "V", "kind": "verify", "depends_on": ["a", "b"], "commands": ["true"]}]});
    let unknown = json!({"name": "bad", "tasks": [
        {"id": "a", "title": "A", "depends_on": ["ghost"]},
        {"id": "verify", "title": "V", "kind": "verify", "depends_on": ["a"], "commands": ["true"]}]});
    let no_verify = json!({"name": "bad", "tasks": [{"id": "a", "title": "A"}]});
    let h = Harness::new(json!({"planner": [cycle, unknown, no_verify]}));
    let out = h.run(&["run", "--json", "Build something"]);
    assert!(!out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "failed");
    let error = report["error"].as_str().unwrap();
    assert!(error.contains("no task of kind \"verify\""), "{error}");
    assert!(error.contains("2 re-asks"), "{error}");
    let planner = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Planner)
        .collect::<Vec<_>>();
    assert_eq!(planner.len(), 3, "initial request + 2 re-asks");
    // The re-asks told the planner what was wrong.
    let second = planner[1].body["messages"].as_array().unwrap();
    let reask = second.last().unwrap()["content"].as_str().unwrap();
    assert!(reask.contains("cycle"), "{reask}");
    let third = planner[2].body["messages"].as_array().unwrap();
    assert!(third.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("ghost"));
}

#[test]
fn a_user_plan_with_errors_is_refused_with_the_list() {
    let h = Harness::new(json!({}));
    let bad = json!({"name": "x", "tasks": [{"id": "a", "title": "A", "depends_on": ["a"]}]});
    let (out, _) = (h.run_plan_raw(&bad), ());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("depends on itself") && err.contains("verify"),
        "{err}"
    );
    assert_eq!(
        h.server.requests().len(),
        0,
        "no model call for a refused plan"
    );
    // A file that is not JSON, or not a plan: the file is named, and the
    // error says where, in words for a person's file.
    let path = h.home.path().join("broken.json");
    std::fs::write(&path, "{\n  \"name\": \"x\",\n").unwrap();
    let out = h.run(&["run", "--plan", path.to_str().unwrap(), "goal"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("the plan file {} is invalid", path.display()))
            && err.contains("it is not JSON")
            && err.contains("line 3"),
        "{err}"
    );
    assert!(!err.contains("reply"), "{err}");
    std::fs::write(&path, r#"{"name": "x", "tasks": [{"id": "a"}]}"#).unwrap();
    let out = h.run(&["run", "--plan", path.to_str().unwrap(), "goal"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("missing field `title`") && err.contains("docs/plan.md"),
        "{err}"
    );
    assert_eq!(h.server.requests().len(), 0);
}

#[test]
fn paths_outside_the_worktree_are_refused() {
    let p = plan("escape", &[("sneaky", &[])], &["test -f inside.txt"]);
    let outside = h_outside_name();
    let h = Harness::new(json!({"tasks": {"sneaky": {"turns": [
        {"calls": [
            {"name": "write_file", "arguments": {"path": "../outside.txt", "content": "escaped"}},
            {"name": "write_file", "arguments": {"path": outside, "content": "escaped"}},
            {"name": "read_file", "arguments": {"path": "/etc/hostname"}},
            {"name": "write_file", "arguments": {"path": "inside.txt", "content": "fine"}}
        ]},
        finish_turn("tried to escape"),
    ]}}}));
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done");
    assert!(
        !std::path::Path::new(&outside).exists(),
        "absolute path was written"
    );
    let project = report["project_id"].as_str().unwrap();
    let worktrees = h
        .data_dir()
        .join("projects")
        .join(project)
        .join("worktrees");
    assert!(!worktrees.join("outside.txt").exists());
    // The model saw errors for the three refused calls and success for the last.
    let second = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.task.as_deref() == Some("sneaky") && r.turn == Some(1))
        .expect("turn 2 request");
    let results: Vec<String> = second.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results.len(), 4, "{results:?}");
    for r in &results[..3] {
        assert!(r.starts_with("error:"), "{r}");
    }
    assert!(!results[3].starts_with("error:"), "{}", results[3]);
    let files = check_delivery(
        std::path::Path::new(report["delivery"].as_str().unwrap()),
        "escape",
    );
    assert_eq!(files.keys().collect::<Vec<_>>(), vec!["inside.txt"]);
}

fn h_outside_name() -> String {
    format!(
        "/tmp/agentswarm-escape-{}-{}",
        std::process::id(),
        fastrand_like()
    )
}

fn fastrand_like() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn a_failed_verify_gets_a_fix_round_then_passes() {
    let p = plan(
        "fixme",
        &[("code", &[])],
        &["test -f code.txt", "test -f fixed.txt"],
    );
    let fix = json!({"name": "fix", "summary": "add the missing file", "tasks": [
        {"id": "add-fixed", "title": "Add fixed.txt", "description": "Create fixed.txt", "depends_on": ["code"]}]});
    let h = Harness::new(json!({
        "fixer": [fix],
        "tasks": {
            "code": {"turns": [write_turn("code.txt", "code\n"), finish_turn("code")]},
            "f1-add-fixed": {"turns": [write_turn("fixed.txt", "fixed\n"), finish_turn("fixed")]}
        }
    }));
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done");
    let fixer = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == swarm_testkit::RequestKind::Fixer)
        .collect::<Vec<_>>();
    assert_eq!(fixer.len(), 1);
    let ask = fixer[0].body["messages"][1]["content"].as_str().unwrap();
    assert!(
        ask.starts_with("Verify failed") && ask.contains("test -f fixed.txt"),
        "{ask}"
    );
    let project = report["project_id"].as_str().unwrap();
    assert_eq!(
        trailer_counts(&h.repo(project)).get("f1-add-fixed"),
        Some(&1)
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["verify"]["fix_rounds"], 1);
    assert_eq!(manifest["verify"]["passed"], true);
}

#[test]
fn verify_that_keeps_failing_ends_failed_with_a_partial_delivery() {
    let p = plan("never", &[("code", &[])], &["false"]);
    let fix = json!({"name": "fix", "tasks": [{"id": "try", "title": "Try", "depends_on": []}]});
    let h = Harness::new(
        json!({"fixer": [fix], "tasks": {"code": {"turns": [write_turn("code.txt", "x\n"), finish_turn("code")]}}}),
    );
    let (out, report) = h.run_plan(&p, &["--max-fix-rounds", "1"]);
    assert!(!out.status.success());
    assert_eq!(report["status"], "failed");
    assert!(
        report["error"].as_str().unwrap().contains("verify failed"),
        "{report}"
    );
    let delivery = std::path::Path::new(report["delivery"].as_str().expect("partial delivery"));
    let files = check_delivery(delivery, "never");
    assert!(files.contains_key("code.txt"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&read_archive(delivery)["manifest.json"]).unwrap();
    assert_eq!(manifest["status"], "failed");
    assert_eq!(manifest["verify"]["passed"], false);
}

#[test]
fn a_task_that_keeps_failing_blocks_its_dependents() {
    let p = plan(
        "blocked",
        &[("ok", &[]), ("broken", &[]), ("after", &["broken"])],
        &["true"],
    );
    let h = Harness::new(json!({"tasks": {
        "ok": {"turns": [write_turn("ok.txt", "ok\n"), finish_turn("ok")]},
        "broken": {"turns": [{"content": "I will not use tools."}, {"content": "Still no."}, {"content": "No."}]}
    }}));
    let (out, report) = h.run_plan(&p, &["--max-turns", "3", "--max-attempts", "2"]);
    assert!(!out.status.success());
    assert_eq!(report["status"], "failed");
    let project = report["project_id"].as_str().unwrap();
    let status = h.status_json(project);
    let state = |id: &str| {
        status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(state("ok")["state"], "done");
    assert_eq!(state("broken")["state"], "failed");
    assert_eq!(state("broken")["attempts"], 2);
    assert!(
        state("broken")["last_error"]
            .as_str()
            .unwrap()
            .contains("max_turns"),
        "{}",
        state("broken")
    );
    assert_eq!(state("after")["state"], "blocked");
    assert_eq!(state("verify")["state"], "blocked");
    // What merged stays merged and ships in the partial delivery.
    assert_eq!(trailer_counts(&h.repo(project)).get("ok"), Some(&1));
    let files = check_delivery(
        std::path::Path::new(report["delivery"].as_str().unwrap()),
        "blocked",
    );
    assert!(files.contains_key("ok.txt"));
}

#[test]
fn resume_after_ctrl_c_does_not_redo_finished_tasks() {
    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    // A chain, so the run is part-way when it is stopped.
    let mut list: Vec<(&str, Vec<&str>)> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        list.push((
            id.as_str(),
            if i == 0 {
                vec![]
            } else {
                vec![ids[i - 1].as_str()]
            },
        ));
    }
    let refs: Vec<(&str, &[&str])> = list.iter().map(|(a, b)| (*a, b.as_slice())).collect();
    let p = plan("chain", &refs, &["test -f t5.txt"]);
    let mut scripts = serde_json::Map::new();
    for id in &ids {
        scripts.insert(
            id.clone(),
            json!({"turns": [write_turn(&format!("{id}.txt"), id), finish_turn(id)]}),
        );
    }
    let h = Harness::new(json!({"latency_ms": 250, "tasks": scripts}));
    let path = h.home.path().join("plan.json");
    std::fs::write(&path, p.to_string()).unwrap();
    let child = h
        .cmd(&[
            "run",
            "--json",
            "--plan",
            path.to_str().unwrap(),
            "chain goal",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once two tasks are merged.
    let stopped = swarm_testkit::wait_for(Duration::from_secs(30), || {
        h.server
            .requests()
            .iter()
            .any(|r| r.task.as_deref() == Some("t2"))
    });
    assert!(stopped, "run never reached t2");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "interrupted");
    let project = report["project_id"].as_str().unwrap().to_owned();
    let done_before = h.done_tasks(&project);
    assert!(done_before.len() >= 2, "{done_before:?}");
    let requests_before = h.server.requests().len();

    let out = h.run(&["resume", &project, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_json_line(&out)["status"], "done");
    let after: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .skip(requests_before)
        .collect();
    for r in &after {
        let task = r.task.clone().unwrap_or_default();
        assert!(
            !done_before.contains(&task),
            "finished task {task} was asked for again after resume"
        );
    }
    let counts = trailer_counts(&h.repo(&project));
    for id in &ids {
        assert_eq!(
            counts.get(id.as_str()),
            Some(&1),
            "task {id} merged once: {counts:?}"
        );
    }
}

#[test]
fn without_a_model_the_error_says_what_to_set() {
    let h = Harness::new(json!({}));
    let out = h
        .cmd(&["run", "Build a thing"])
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("AGENTSWARM_MODEL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "AGENTSWARM_MODEL",
        "agentswarm demo",
    ] {
        assert!(err.contains(needle), "missing {needle}: {err}");
    }
}

#[test]
fn status_lists_projects_and_tasks() {
    let p = plan("tiny", &[("one", &[])], &["test -f one.txt"]);
    let h = Harness::new(
        json!({"tasks": {"one": {"turns": [write_turn("one.txt", "1"), finish_turn("one")]}}}),
    );
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let project = report["project_id"].as_str().unwrap();
    let list = h.run(&["status", "--json"]);
    let list = last_json_line(&list);
    assert_eq!(list[0]["project_id"], project);
    assert_eq!(list[0]["state"], "done");
    let st = h.status_json(project);
    assert_eq!(st["tasks_done"], 2);
    let one = &st["tasks"][0];
    assert_eq!(one["id"], "one");
    assert_eq!(one["state"], "done");
    assert_eq!(one["attempts"], 1);
    let table = h.run(&["status", project]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("one") && table.contains("done") && table.contains("tiny"),
        "{table}"
    );
    // The start of an id names the project when it is the only one so.
    let (out2, report2) = h.run_plan(&p, &[]);
    assert!(out2.status.success(), "{}", text(&out2));
    let other = report2["project_id"].as_str().unwrap();
    let common = project
        .chars()
        .zip(other.chars())
        .take_while(|(a, b)| a == b)
        .count();
    let prefix = &project[..common + 1];
    assert_eq!(h.status_json(prefix)["project_id"], project);
    let logs = h.run(&["logs", prefix]);
    assert!(
        logs.status.success() && text(&logs).contains("one"),
        "{}",
        text(&logs)
    );
    let shared = &project[..common];
    let ambiguous = h.run(&["status", shared]);
    assert!(!ambiguous.status.success());
    let err = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        err.contains("is the start of 2 project ids")
            && err.contains(project)
            && err.contains(other),
        "{err}"
    );
    // Live progress: a line per state change.
    let stdout = String::from_utf8_lossy(&out.stdout);
    for change in [
        "task one: pending -> ready",
        "task one: ready -> running",
        "task one: running -> merging",
        "task one: merging -> done",
    ] {
        assert!(stdout.contains(change), "missing {change:?} in:\n{stdout}");
    }
}

impl Harness {
    fn run_plan_raw(&self, plan: &serde_json::Value) -> std::process::Output {
        let path = self.home.path().join("plan.json");
        std::fs::write(&path, plan.to_string()).unwrap();
        self.run(&["run", "--plan", path.to_str().unwrap(), "goal"])
    }
}

#[test]
fn a_model_that_answers_429_or_garbage_is_retried() {
    let p = plan("retry", &[("one", &[])], &["test -f one.txt"]);
    let h = Harness::new(json!({
        "tasks": {"one": {"turns": [write_turn("one.txt", "1\n"), finish_turn("one")]}},
        "errors": [
            {"kind": "worker", "task": "one", "turn": 0, "status": 429, "retry_after_secs": 0, "times": 2},
            {"kind": "worker", "task": "one", "turn": 1, "malformed": true}
        ]
    }));
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report["status"], "done");
    let statuses: Vec<u16> = h.server.requests().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        h.server.requests().len(),
        5,
        "2 × 429, 1 ok, 1 malformed, 1 ok: {statuses:?}"
    );
    // One attempt: the retries happened inside the gateway, not as new attempts.
    let status = h.status_json(report["project_id"].as_str().unwrap());
    assert_eq!(status["tasks"][0]["attempts"], 1);
    // The key never reaches anything the run wrote: store, transcripts, repo, archives.
    for dir in [h.data_dir(), h.outputs_dir()] {
        for file in files_under(&dir) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            let found = bytes
                .windows(b"test-key-not-a-real-secret".len())
                .any(|w| w == b"test-key-not-a-real-secret");
            assert!(!found, "the API key was written to {}", file.display());
        }
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("test-key-not-a-real-secret"));
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// `prune` deletes an ended project's data and rows, keeps its delivery
/// unless asked, says what it would do on a dry run, and leaves a project
/// that has not ended alone.
#[test]
fn prune_deletes_ended_projects_and_keeps_deliveries_unless_asked() {
    let p = plan("tiny", &[("one", &[])], &["test -f one.txt"]);
    let h = Harness::new(
        json!({"tasks": {"one": {"turns": [write_turn("one.txt", "1"), finish_turn("one")]}}}),
    );
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let first = report["project_id"].as_str().unwrap().to_owned();
    let delivery = std::path::PathBuf::from(report["delivery"].as_str().unwrap());
    let data = h.data_dir().join("projects").join(&first);
    assert!(data.join("repo").exists() && delivery.exists());

    // Nothing is 30 days old yet.
    let out = h.run(&["prune"]);
    assert!(text(&out).contains("nothing to prune"), "{}", text(&out));
    let out = h.run(&["prune", "--dry-run", &first]);
    assert!(
        out.status.success() && text(&out).contains(&format!("would prune {first}")),
        "{}",
        text(&out)
    );
    assert!(data.exists(), "a dry run deletes nothing");

    let out = h.run(&["prune", &first]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("pruned {first}")) && text(&out).contains("deliveries kept"),
        "{}",
        text(&out)
    );
    assert!(!data.exists(), "its data directory is gone");
    assert!(delivery.exists(), "its delivery is kept");
    let status = h.run(&["status", &first]);
    assert!(
        !status.status.success() && text(&status).contains("not found"),
        "{}",
        text(&status)
    );

    // With --deliveries, OUTPUTS_DIR/<project> goes too.
    let (out, report) = h.run_plan(&p, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let second = report["project_id"].as_str().unwrap().to_owned();
    let out = h.run(&["prune", "--deliveries", &second]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!h.outputs_dir().join(&second).exists());

    // A project that has not ended is left alone (exit 1, with why).
    let queued = h.run(&["submit", "--json", "later"]);
    let queued = last_json_line(&queued)["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = h.run(&["prune", &queued]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("it is queued, not ended"),
        "{}",
        text(&out)
    );
    assert_eq!(h.status_json(&queued)["state"], "queued");
}
