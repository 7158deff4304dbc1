//! End-to-end: review before merge (`--review tasks`), through the CLI:
//! a task's commit waits in `review` until a person approves it (then it
//! merges) or rejects it with a comment (then a new attempt starts whose
//! prompt carries the comment); dependents wait; the decision survives a
//! `kill -9` of the run. The API's side is in api.rs; the held delivery
//! (`--review delivery`) in existing_repo.rs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::process::{Child, Output};
use std::time::Duration;

fn two_tasks() -> Value {
    two_tasks_checking(&["grep -qx v2 alpha.txt", "test -f beta.txt"])
}

fn two_tasks_checking(verify: &[&str]) -> Value {
    json!({
        "name": "reviewed",
        "summary": "two files, the second after the first",
        "tasks": [
            {"id": "alpha", "title": "Write alpha", "description": "Write alpha.txt.", "depends_on": [], "files": ["alpha.txt"]},
            {"id": "beta", "title": "Write beta", "description": "Write beta.txt.", "depends_on": ["alpha"], "files": ["beta.txt"]},
            {"id": "verify", "title": "Verify", "kind": "verify", "depends_on": ["beta"],
             "commands": verify}
        ]
    })
}

fn scenario() -> Value {
    json!({
        "planner": [two_tasks()],
        "tasks": {
            "alpha": {"attempts": [
                [write_turn("alpha.txt", "v1\n"), finish_turn("alpha is v1")],
                [write_turn("alpha.txt", "v2\n"), finish_turn("alpha is v2")]
            ]},
            "beta": {"turns": [write_turn("beta.txt", "beta\n"), finish_turn("beta written")]}
        }
    })
}

fn task<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {status}"))
}

/// Waits (60 s at most) until `status --json` says `task` is `state` at `attempt`.
fn wait_task(h: &Harness, project: &str, id: &str, state: &str, attempt: u64) -> Value {
    let mut last = Value::Null;
    let ok = swarm_testkit::wait_for(Duration::from_secs(60), || {
        last = h.status_json(project);
        let t = task(&last, id);
        t["state"] == state && t["attempts"].as_u64() == Some(attempt)
    });
    assert!(
        ok,
        "task {id} did not reach {state} (attempt {attempt}): {last}"
    );
    last
}

fn review(h: &Harness, args: &[&str]) -> Output {
    let mut all = vec!["review"];
    all.extend_from_slice(args);
    h.run(&all)
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "expected a refusal: {}", text(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The worker prompts (first user message) task `id` got, by attempt.
fn prompts(h: &Harness, id: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| {
            r.kind == swarm_testkit::RequestKind::Worker
                && r.task.as_deref() == Some(id)
                && r.turn == Some(0)
        })
        .map(|r| {
            let first = r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or_default()
                .to_owned();
            (r.attempt.unwrap_or(0), first)
        })
        .collect();
    v.sort_by_key(|(a, _)| *a);
    v
}

fn finish(mut child: Reaped, stdout: impl std::io::Read) -> (std::process::ExitStatus, String) {
    let mut rest = String::new();
    let mut stdout = stdout;
    stdout.read_to_string(&mut rest).unwrap();
    (child.0.wait().unwrap(), rest)
}

#[test]
fn a_task_waits_in_review_then_reject_reruns_it_with_the_comment_and_approve_merges_it() {
    let h = Harness::new(scenario());
    let plan = h.home.path().join("plan.json");
    std::fs::write(&plan, two_tasks().to_string()).unwrap();
    let (child, stdout, project) = h.spawn_run(&[
        "run",
        "--no-progress",
        "--review",
        "tasks",
        "--plan",
        plan.to_str().unwrap(),
        "reviewed goal",
    ]);
    // A run waits for review for ever: a failing test must not leave it.
    let child = Reaped(child);
    let p = project.as_str();

    // alpha's commit waits; beta, which depends on it, waits too.
    let status = wait_task(&h, p, "alpha", "review", 1);
    assert_eq!(task(&status, "beta")["state"], "pending", "{status}");
    assert_eq!(status["tasks_in_review"], json!(["alpha"]), "{status}");
    // Nothing is merged yet.
    let repo = h.repo(p);
    assert!(!repo.join("alpha.txt").exists());
    assert!(git(&repo, &["log", "--format=%s", "main"])
        .lines()
        .all(|l| !l.contains("alpha")));

    // The list and the diff.
    let list = ok(&review(&h, &[p]));
    assert!(list.contains("alpha (attempt 1): Write alpha"), "{list}");
    assert!(list.contains("alpha.txt (+1 -0)"), "{list}");
    assert!(
        list.contains(&format!("agentswarm review {p} alpha")),
        "{list}"
    );
    let diff = ok(&review(&h, &[p, "alpha"]));
    assert!(diff.contains("=== alpha.txt (+1 -0)"), "{diff}");
    assert!(diff.contains("+v1"), "{diff}");
    let j: Value = serde_json::from_str(ok(&review(&h, &[p, "alpha", "--json"])).trim()).unwrap();
    assert_eq!(j["task"], "alpha");
    assert_eq!(j["files"][0]["path"], "alpha.txt");
    assert!(j["files"][0]["diff"].as_str().unwrap().contains("+v1"));

    // Bad input is refused, clearly, and changes nothing.
    let e = refused(&review(&h, &[p, "beta", "--approve"]));
    assert!(
        e.contains("task beta of project") && e.contains("is pending, not waiting for review"),
        "{e}"
    );
    let e = refused(&review(&h, &[p, "nosuch", "--approve"]));
    assert!(e.contains("has no task nosuch"), "{e}");
    let e = refused(&review(&h, &[p, "alpha", "--reject", "  "]));
    assert!(e.contains("needs a comment"), "{e}");
    let e = refused(&review(&h, &[p, "alpha", "--approve", "--reject", "x"]));
    assert!(
        e.contains("--reject") || e.contains("cannot be used"),
        "{e}"
    );
    assert_eq!(task(&h.status_json(p), "alpha")["state"], "review");

    // Rejected: a second attempt runs, its prompt carries the comment.
    let said = ok(&review(&h, &[p, "alpha", "--reject", "Write v2, not v1"]));
    assert!(said.contains("alpha (attempt 1) rejected"), "{said}");
    let status = wait_task(&h, p, "alpha", "review", 2);
    let alpha = task(&status, "alpha");
    assert_eq!(
        alpha["attempts_counted"], 0,
        "a rejection is not counted: {alpha}"
    );
    assert_eq!(
        alpha["attempt_history"][0]["outcome"], "rejected",
        "{alpha}"
    );
    assert_eq!(alpha["attempt_history"][1]["outcome"], "review", "{alpha}");
    assert!(alpha["attempt_history"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("Write v2, not v1"));
    let prompts = prompts(&h, "alpha");
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert!(!prompts[0].1.contains("Write v2, not v1"));
    assert!(
        prompts[1].1.contains("A reviewer rejected"),
        "{}",
        prompts[1].1
    );
    assert!(
        prompts[1].1.contains("Write v2, not v1"),
        "{}",
        prompts[1].1
    );
    assert!(ok(&review(&h, &[p, "alpha"])).contains("+v2"));
    // The rejected attempt cannot be approved any more.
    assert_eq!(task(&status, "beta")["state"], "pending");

    // Approved: it merges, beta starts, waits, is approved; the run ends done.
    let said = ok(&review(&h, &[p, "alpha", "--approve"]));
    assert!(said.contains("alpha (attempt 2) approved"), "{said}");
    let e = refused(&review(&h, &[p, "alpha", "--approve"]));
    assert!(e.contains("not waiting for review"), "{e}");
    wait_task(&h, p, "beta", "review", 1);
    assert_eq!(task(&h.status_json(p), "alpha")["state"], "done");
    ok(&review(&h, &[p, "beta", "--approve"]));
    let (exit, rest) = finish(child, stdout);
    assert!(exit.success(), "{rest}");
    assert!(
        rest.contains(&format!(
            "alpha: waits for review: `agentswarm review {p} alpha`"
        )),
        "{rest}"
    );
    assert!(
        rest.contains("alpha: rejected in review (Write v2, not v1)"),
        "{rest}"
    );
    assert!(
        rest.contains("alpha: approved in review; merging"),
        "{rest}"
    );
    let status = h.status_json(p);
    assert_eq!(status["state"], "done", "{status}");
    assert_eq!(
        std::fs::read_to_string(repo.join("alpha.txt")).unwrap(),
        "v2\n"
    );
    // Each task merged once; no review branch is left.
    let counts = trailer_counts(&repo);
    assert_eq!(counts.get("alpha"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("beta"), Some(&1), "{counts:?}");
    assert!(git(&repo, &["branch", "--list", "review/*"])
        .trim()
        .is_empty());
    assert!(ok(&review(&h, &[p])).contains("nothing waits for review"));
}

#[test]
fn a_task_in_review_survives_kill_9_and_an_approval_made_while_nothing_runs_is_merged_once() {
    let h = Harness::new(scenario());
    let plan = h.home.path().join("plan.json");
    let checks = two_tasks_checking(&["grep -qx v1 alpha.txt", "test -f beta.txt"]);
    std::fs::write(&plan, checks.to_string()).unwrap();
    let (child, _stdout, project) = h.spawn_run(&[
        "run",
        "--no-progress",
        "--review",
        "tasks",
        "--plan",
        plan.to_str().unwrap(),
        "reviewed goal",
    ]);
    let mut child = Reaped(child);
    let p = project.as_str();
    wait_task(&h, p, "alpha", "review", 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.0.wait().unwrap();

    // Still in review with nothing running it; the commit is kept.
    let status = h.status_json(p);
    assert_eq!(status["state"], "interrupted", "{status}");
    assert_eq!(task(&status, "alpha")["state"], "review", "{status}");
    assert!(ok(&review(&h, &[p, "alpha"])).contains("+v1"));

    // `resume` keeps it in review (the attempt is not run again), and the
    // review mode was stored with the project.
    let (mut child, _stdout2) = spawn_resume(&h, p);
    // Once it runs, recovery is over: alpha is still in review.
    let mut last = Value::Null;
    let running = swarm_testkit::wait_for(Duration::from_secs(60), || {
        last = h.status_json(p);
        last["state"] == "running"
    });
    assert!(running, "resume did not start: {last}");
    assert_eq!(task(&h.status_json(p), "alpha")["state"], "review");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.0.wait().unwrap();
    assert_eq!(
        prompts(&h, "alpha").len(),
        1,
        "the attempt in review ran again"
    );

    // Approved while no process runs the project: recorded, merged by the
    // next run, once.
    let said = ok(&review(&h, &[p, "alpha", "--approve"]));
    assert!(said.contains("when the project runs again"), "{said}");
    assert_eq!(task(&h.status_json(p), "alpha")["state"], "merging");
    let (child, stdout) = spawn_resume(&h, p);
    wait_task(&h, p, "beta", "review", 1);
    assert_eq!(task(&h.status_json(p), "alpha")["state"], "done");
    ok(&review(&h, &[p, "beta", "--approve"]));
    let (exit, rest) = finish(child, stdout);
    assert!(exit.success(), "{rest}");
    assert_eq!(h.status_json(p)["state"], "done");
    let repo = h.repo(p);
    let counts = trailer_counts(&repo);
    assert_eq!(counts.get("alpha"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("beta"), Some(&1), "{counts:?}");
    assert_eq!(
        std::fs::read_to_string(repo.join("alpha.txt")).unwrap(),
        "v1\n"
    );
    assert_eq!(prompts(&h, "alpha").len(), 1);
    assert!(git(&repo, &["branch", "--list", "review/*"])
        .trim()
        .is_empty());
}

/// `agentswarm resume PROJECT` in the background, killed if the test fails.
fn spawn_resume(h: &Harness, project: &str) -> (Reaped, std::process::ChildStdout) {
    let mut c = h
        .cmd(&["resume", project, "--no-progress"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = c.stdout.take().unwrap();
    (Reaped(c), out)
}

/// A child killed when dropped (a failing test leaves no daemon behind).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With a daemon up, `agentswarm review` goes through its API (as `status`
/// and `cancel` do): the same list, diff and decisions, and a refusal
/// comes back as the API's message.
#[test]
fn review_through_the_daemon() {
    let h = Harness::new(scenario());
    let log = h.home.path().join("serve.log");
    let mut serve = Reaped(
        h.cmd(&["serve"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let up = swarm_testkit::wait_for(Duration::from_secs(60), || ready_daemon(&h).is_some());
    assert!(
        up,
        "serve did not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let plan = h.home.path().join("plan.json");
    std::fs::write(&plan, two_tasks().to_string()).unwrap();
    let out = h.run(&[
        "submit",
        "--json",
        "--review",
        "tasks",
        "--plan",
        plan.to_str().unwrap(),
        "reviewed goal",
    ]);
    let project = last_json_line(&out)["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = project.as_str();

    wait_task(&h, p, "alpha", "review", 1);
    let list = ok(&review(&h, &[p]));
    assert!(list.contains("alpha (attempt 1): Write alpha"), "{list}");
    assert!(ok(&review(&h, &[p, "alpha"])).contains("+v1"));
    let e = refused(&review(&h, &[p, "beta", "--approve"]));
    assert!(e.contains("not waiting for review"), "{e}");
    ok(&review(&h, &[p, "alpha", "--reject", "Write v2, not v1"]));
    wait_task(&h, p, "alpha", "review", 2);
    assert!(prompts(&h, "alpha")[1].1.contains("Write v2, not v1"));
    ok(&review(&h, &[p, "alpha", "--approve"]));
    wait_task(&h, p, "beta", "review", 1);
    ok(&review(&h, &[p, "beta", "--approve"]));
    let mut last = Value::Null;
    let done = swarm_testkit::wait_for(Duration::from_secs(60), || {
        last = h.status_json(p);
        last["state"] == "done"
    });
    assert!(done, "{last}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(serve.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    serve.0.wait().unwrap();
    // The decisions went through the API.
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        log.matches("task rejected through the API").count(),
        1,
        "{log}"
    );
    assert_eq!(
        log.matches("task approved through the API").count(),
        2,
        "{log}"
    );
}
