//! End-to-end tests of the model gateway: both wire formats, retries,
//! fallbacks, the rate limit, budgets, record/replay and secrets — the real
//! binary against the scripted model server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use swarm_testkit::{RequestKind, Wire};

/// A two-task plan whose tasks write a file, run a command and finish.
fn two_task_scenario(extra: Value) -> (Value, Value) {
    let p = plan(
        "gw",
        &[("alpha", &[]), ("beta", &["alpha"])],
        &["test -f alpha.txt", "test -f beta.txt"],
    );
    let mut sc = json!({
        "planner": [p.clone()],
        "tasks": {
            "alpha": {"turns": [write_turn("alpha.txt", "a\n"), run_turn("cat alpha.txt"), finish_turn("alpha done")]},
            "beta": {"turns": [write_turn("beta.txt", "b\n"), finish_turn("beta done")]},
        },
    });
    if let (Some(o), Some(e)) = (sc.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            o.insert(k.clone(), v.clone());
        }
    }
    (sc, p)
}

/// `agentswarm ARGS` with `config` as ./agentswarm.toml and none of the
/// quick-path model variables: the file alone picks the models.
fn with_config(h: &Harness, config: &str, args: &[&str]) -> Command {
    std::fs::write(h.home.path().join("agentswarm.toml"), config).unwrap();
    let mut c = h.cmd(args);
    c.env_remove("AGENTSWARM_MODEL")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    c
}

fn worker_requests(h: &Harness) -> Vec<swarm_testkit::RecordedRequest> {
    h.server
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Worker)
        .collect()
}

#[test]
fn a_full_run_through_the_anthropic_wire_format() {
    let (sc, _) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let config = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"ANTHROPIC_API_KEY\"\n\
         [models.worker]\nmodel = \"claude-test-worker\"\nmax_tokens = 2048\n\
         [models.planner]\nmodel = \"claude-test-planner\"\n",
        h.server.base_url()
    );
    let out = with_config(&h, &config, &["run", "--json", "build gw"])
        .env("ANTHROPIC_API_KEY", "sk-ant-test-FAKE-not-a-real-key-0000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{report}");
    assert!(
        h.server.violations().is_empty(),
        "{:?}",
        h.server.violations()
    );
    let reqs = h.server.requests();
    assert!(reqs
        .iter()
        .all(|r| r.wire == Wire::Anthropic && r.authorized));
    assert_eq!(
        reqs.iter()
            .filter(|r| r.kind == RequestKind::Planner)
            .count(),
        1
    );
    assert!(reqs
        .iter()
        .filter(|r| r.kind == RequestKind::Planner)
        .all(|r| r.model.as_deref() == Some("claude-test-planner")));
    // Tool calls round-trip: alpha's third request answers its run_command
    // with a tool_result holding the command's output.
    let alpha: Vec<_> = worker_requests(&h)
        .into_iter()
        .filter(|r| r.task.as_deref() == Some("alpha"))
        .collect();
    assert_eq!(alpha.len(), 3);
    let last_user = alpha[2].body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .unwrap()
        .clone();
    let block = &last_user["content"][0];
    assert_eq!(block["type"], "tool_result", "{last_user}");
    // What `cat alpha.txt` printed, as the worker's run_command reports it.
    assert_eq!(block["content"], "exit code 0\na\n", "{block}");
    assert_eq!(alpha[0].body["max_tokens"], 2048);
    let status = h.status_json(report["project_id"].as_str().unwrap());
    let usage = status["usage"].as_array().unwrap();
    assert!(usage.iter().any(|u| u["provider"] == "claude"
        && u["model"] == "claude-test-worker"
        && u["role"] == "worker"));
}

#[test]
fn a_full_run_through_the_openai_wire_format_with_provider_headers() {
    let (sc, _) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let config = format!(
        "[providers.router]\nbase_url = \"{}\"\napi_key_env = \"ROUTER_KEY\"\nheaders = {{ \"X-Title\" = \"AgentSwarm\" }}\n\
         [models.worker]\nmodel = \"openai-test-worker\"\n",
        h.server.base_url()
    );
    let out = with_config(&h, &config, &["run", "--json", "build gw"])
        .env("ROUTER_KEY", "sk-or-v1-test-FAKE-not-a-real-key-000")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_json_line(&out)["status"], "done");
    assert!(
        h.server.violations().is_empty(),
        "{:?}",
        h.server.violations()
    );
    let reqs = h.server.requests();
    assert!(reqs.iter().all(|r| r.wire == Wire::OpenAi && r.authorized));
    let alpha: Vec<_> = worker_requests(&h)
        .into_iter()
        .filter(|r| r.task.as_deref() == Some("alpha"))
        .collect();
    let msgs = alpha[2].body["messages"].as_array().unwrap();
    let answer = msgs.last().unwrap();
    assert_eq!(answer["role"], "tool");
    assert_eq!(answer["content"], "exit code 0\na\n", "{answer}");
}

#[test]
fn a_429_with_retry_after_is_waited_out() {
    let (sc, _) = two_task_scenario(json!({
        "errors": [{"kind": "planner", "status": 429, "retry_after_secs": 2, "times": 2}]
    }));
    let h = Harness::new(sc);
    let out = h.run(&["run", "--json", "build gw"]);
    assert!(out.status.success(), "{}", text(&out));
    let planner: Vec<_> = h
        .server
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Planner)
        .collect();
    assert_eq!(planner.len(), 3, "two 429s then the answer");
    for pair in planner.windows(2) {
        let gap = pair[1].arrived - pair[0].arrived;
        assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    }
    let status = h.status_json(last_json_line(&out)["project_id"].as_str().unwrap());
    let planner_usage = status["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["role"] == "planner")
        .unwrap()
        .clone();
    assert_eq!(planner_usage["retries"], 2, "{planner_usage}");
}

#[test]
fn a_503_is_retried_and_a_401_pauses_the_project() {
    let (sc, _) = two_task_scenario(json!({
        "errors": [{"kind": "planner", "status": 503, "times": 3}]
    }));
    let h = Harness::new(sc);
    let out = h.run(&["run", "--json", "build gw"]);
    assert!(out.status.success(), "{}", text(&out));
    let planner = h
        .server
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Planner)
        .count();
    assert_eq!(planner, 4, "three 503s then the answer");

    let (sc, _) = two_task_scenario(json!({"errors": [{"status": 401, "times": 1000}]}));
    let h = Harness::new(sc);
    let out = h.run(&["run", "--json", "build gw"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(h.server.requests().len(), 1, "a 401 is not retried");
    let report = last_json_line(&out);
    assert_eq!(report["status"], "paused");
    let why = report["error"].as_str().unwrap();
    assert!(
        why.contains("OPENAI_API_KEY") && why.contains("401"),
        "{why}"
    );
    assert!(!text(&out).contains("test-key-not-a-real-secret"));
    // One message for the project, not one failure per task.
    let status = h.status_json(report["project_id"].as_str().unwrap());
    assert_eq!(status["state"], "paused");
}

#[test]
fn a_missing_key_is_refused_before_anything_starts() {
    let (sc, _) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let config = format!(
        "[providers.p]\nbase_url = \"{}\"\napi_key_env = \"UNSET_TEST_KEY\"\n[models.worker]\nmodel = \"m\"\n",
        h.server.base_url()
    );
    let out = with_config(&h, &config, &["run", "build gw"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("UNSET_TEST_KEY") && err.contains("secrets file"),
        "{err}"
    );
    assert!(h.server.requests().is_empty());
}

#[test]
fn a_provider_that_keeps_failing_falls_back() {
    let (sc, _) = two_task_scenario(json!({
        "errors": [{"model": "flaky-primary", "status": 503, "times": 1000}]
    }));
    let h = Harness::new(sc);
    let config = format!(
        "[providers.p]\nbase_url = \"{}\"\nmax_retries = 1\n\
         [models.worker]\nmodel = \"flaky-primary\"\nfallback = [{{ provider = \"p\", model = \"steady-backup\" }}]\n\
         [models.planner]\nmodel = \"steady-backup\"\n",
        h.server.base_url()
    );
    let out = with_config(&h, &config, &["run", "--json", "build gw"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done");
    let workers = worker_requests(&h);
    assert!(workers
        .iter()
        .any(|r| r.model.as_deref() == Some("steady-backup") && r.status == 200));
    assert!(workers
        .iter()
        .filter(|r| r.model.as_deref() == Some("flaky-primary"))
        .all(|r| r.status == 503));
    let status = h.status_json(report["project_id"].as_str().unwrap());
    assert!(status["usage"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["role"] == "worker" && u["model"] == "steady-backup"));
}

/// A real 60-second window: with API_RATE_LIMIT_RPM=2, the third request
/// waits for the first to leave the window.
#[test]
fn the_rate_limit_holds_in_every_60_second_window() {
    let (sc, _) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let out = h
        .cmd(&["run", "--json", "build gw"])
        .env("API_RATE_LIMIT_RPM", "2")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let reqs = h.server.requests();
    assert!(reqs.len() >= 3, "{} requests", reqs.len());
    assert!(h.server.max_in_window(Duration::from_secs(60)) <= 2);
    let mut starts: Vec<_> = reqs.iter().map(|r| r.arrived).collect();
    starts.sort();
    // The third waited for the first to leave the window, and started in
    // the next one (how fully windows are used is measured by `bench`).
    let gap = starts[2] - starts[0];
    assert!(
        gap >= Duration::from_secs(60) && gap < Duration::from_secs(120),
        "third request {gap:?} after the first"
    );
}

/// The quota circuit breaker: 20 queued tasks, 4 slots; the first worker
/// call gets a quota answer with an 8 s reset. The attempts already running
/// wait in the gateway and run out of their 3 s time limit meanwhile; their
/// slots must stay empty until the reset (not be handed to new attempts
/// that would only wait too), none of those attempts counts (one attempt
/// per task is allowed), and at the reset work resumes by itself.
#[test]
fn a_quota_answer_stops_every_dispatch_until_the_reset() {
    let ids: Vec<String> = (1..=20).map(|i| format!("t{i:02}")).collect();
    let tasks: Vec<(&str, &[&str])> = ids.iter().map(|i| (i.as_str(), &[][..])).collect();
    let p = plan("quota", &tasks, &["test -f t20.txt"]);
    let mut scripts = serde_json::Map::new();
    for id in &ids {
        scripts.insert(
            id.clone(),
            json!({"turns": [write_turn(&format!("{id}.txt"), "x\n"), finish_turn("done")]}),
        );
    }
    let h = Harness::new(json!({
        "tasks": scripts,
        "errors": [{"kind": "worker", "task": "t01", "status": 429,
                    "insufficient_quota": true, "retry_after_secs": 8}],
    }));
    let (wall0, clock0) = (std::time::SystemTime::now(), std::time::Instant::now());
    let path = h.home.path().join("plan.json");
    std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
    let out = h
        .cmd(&[
            "run",
            "--json",
            "--max-attempts",
            "1",
            "--plan",
            path.to_str().unwrap(),
            "quota goal",
        ])
        .env("MAX_CONCURRENT_WORKERS", "4")
        .env("WORKER_TIMEOUT_SECONDS", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let project = last_json_line(&out)["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = h.status_json(&project);
    assert_eq!(status["state"], "done", "{status}");

    // Server time to wall-clock milliseconds, as the store records them.
    let wall_ms = |at: std::time::Instant| -> i64 {
        let t = wall0 + (at - clock0);
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    let quota = h
        .server
        .requests()
        .into_iter()
        .find(|r| r.status == 429)
        .expect("the quota answer was sent");
    let (blocked, reset) = (wall_ms(quota.received), wall_ms(quota.received) + 8_000);

    let attempts: Vec<Value> = status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "code")
        .flat_map(|t| t["attempt_history"].as_array().unwrap().clone())
        .collect();
    let timed_out: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["outcome"] == "timeout")
        .collect();
    assert!(
        !timed_out.is_empty(),
        "the held attempts ran out of time: {attempts:?}"
    );
    for a in &timed_out {
        let reason = a["reason"].as_str().unwrap();
        assert!(
            reason.contains("out of quota") && reason.contains("not counted"),
            "{reason}"
        );
    }
    // Slots freed during the hold stayed free: no attempt started after the
    // quota answer was in (give the worker's call 500 ms to note it) and
    // before the reset.
    let started_in_hold: Vec<&Value> = attempts
        .iter()
        .filter(|a| {
            let s = a["started_ms"].as_i64().unwrap();
            s > blocked + 500 && s < reset - 200
        })
        .collect();
    assert!(
        started_in_hold.is_empty(),
        "attempts dispatched while the provider was out of quota: {started_in_hold:?}"
    );
    // Work resumed by itself at the reset, and nothing failed for it.
    let after_reset = attempts
        .iter()
        .filter(|a| a["started_ms"].as_i64().unwrap() >= reset - 200)
        .count();
    assert!(
        after_reset >= 10,
        "{after_reset} attempts after the reset: {attempts:?}"
    );
    for t in status["tasks"].as_array().unwrap() {
        assert_eq!(t["state"], "done", "{t}");
        assert_eq!(t["attempts_counted"], 0, "no failed attempt counted: {t}");
    }
    // The operator was told why work waited.
    let logs = h.run(&["logs", &project]);
    let logs = text(&logs);
    assert!(logs.contains("provider default is out of quota"), "{logs}");
    assert!(logs.contains("starting work again"), "{logs}");
}

/// A planner call held for a quota reset: the project says why it waits
/// while it waits, and plans once the reset passed.
#[test]
fn a_planner_held_for_a_quota_reset_says_so_and_carries_on() {
    let (sc, _) = two_task_scenario(json!({
        "errors": [{"kind": "planner", "status": 429, "insufficient_quota": true, "retry_after_secs": 4}]
    }));
    let h = Harness::new(sc);
    let (mut child, _stdout, project) = h.spawn_run(&["run", "--no-progress", "build gw"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let status = h.status_json(&project);
        if let Some(w) = status["waiting"].as_str() {
            break (status["state"].clone(), w.to_owned());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never said why it waits: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(waiting.0, "planning");
    assert!(
        waiting.1.contains("provider default is out of quota until"),
        "{}",
        waiting.1
    );
    assert!(child.wait().unwrap().success());
    let status = h.status_json(&project);
    assert_eq!(status["state"], "done", "{status}");
    assert!(status["waiting"].is_null(), "{status}");
    let planner: Vec<u16> = h
        .server
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::Planner)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        planner,
        [429, 200],
        "one quota answer, then the plan after the reset"
    );
}

fn spent_cost(status: &Value) -> f64 {
    status["cost_usd"].as_f64().unwrap()
}

#[test]
fn a_spent_budget_ends_the_project_and_resume_carries_on() {
    let chain = plan(
        "budget",
        &[
            ("one", &[]),
            ("two", &["one"]),
            ("three", &["two"]),
            ("four", &["three"]),
        ],
        &["test -f four.txt"],
    );
    let mut tasks = serde_json::Map::new();
    for id in ["one", "two", "three", "four"] {
        tasks.insert(
            id.into(),
            json!({"turns": [write_turn(&format!("{id}.txt"), id), finish_turn(id)]}),
        );
    }
    let sc = json!({"planner": [chain], "tasks": tasks});
    let config =
        "[prices.\"scripted-test-model\"]\ninput_per_mtok = 1000.0\noutput_per_mtok = 1000.0\n";

    // What the whole run costs, measured once.
    let h = Harness::new(sc.clone());
    std::fs::write(h.home.path().join("agentswarm.toml"), config).unwrap();
    let out = h.run(&["run", "--json", "build it"]);
    assert!(out.status.success(), "{}", text(&out));
    let full = spent_cost(&h.status_json(last_json_line(&out)["project_id"].as_str().unwrap()));
    assert!(full > 0.0);

    // Half of it: the run stops in the middle.
    let h = Harness::new(sc);
    std::fs::write(h.home.path().join("agentswarm.toml"), config).unwrap();
    let budget = format!("{:.6}", full / 2.0);
    let out = h.run(&[
        "run",
        "--json",
        "--max-workers",
        "1",
        "--max-cost-usd",
        &budget,
        "build it",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "budget_exhausted", "{report}");
    assert!(report["error"].as_str().unwrap().contains("max_cost_usd"));
    let project = report["project_id"].as_str().unwrap().to_owned();
    let done_before = h.done_tasks(&project);
    assert!(
        !done_before.is_empty() && done_before.len() < 5,
        "stopped mid-run: {done_before:?}"
    );
    let asked_before = worker_requests(&h).len();

    // The same budget again: refused at once, nothing asked.
    let out = h.run(&["resume", &project, "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert_eq!(worker_requests(&h).len(), asked_before);

    let out = h.run(&["resume", &project, "--json", "--max-cost-usd", "1000000"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(last_json_line(&out)["status"], "done");
    for t in &done_before {
        let again = worker_requests(&h)[asked_before..]
            .iter()
            .filter(|r| r.task.as_deref() == Some(t.as_str()))
            .count();
        assert_eq!(again, 0, "task {t} was done and must not run again");
    }
    let counts = trailer_counts(&h.repo(&project));
    for id in ["one", "two", "three", "four"] {
        assert_eq!(counts.get(id), Some(&1), "{id}: {counts:?}");
    }
}

/// A cost budget is refused, before anything is stored or asked, when a
/// model some role uses has no price: its calls would count $0 and the
/// budget would never be reached.
#[test]
fn a_cost_budget_without_a_price_is_refused_before_anything_is_stored() {
    let (sc, plan) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let plan_file = h.home.path().join("plan.json");
    std::fs::write(&plan_file, plan.to_string()).unwrap();
    let plan_file = plan_file.to_str().unwrap();
    let refused = |out: &std::process::Output, models: &[&str]| {
        assert_eq!(out.status.code(), Some(1), "{}", text(out));
        let err = String::from_utf8_lossy(&out.stderr);
        for m in models {
            assert!(err.contains(&format!("\"{m}\"")), "{m} not named: {err}");
        }
        assert!(
            err.contains("max_cost_usd")
                && err.contains("[prices.")
                && err.contains("docs/providers.md"),
            "{err}"
        );
    };
    refused(
        &h.run(&["run", "--max-cost-usd", "0.0001", "build it"]),
        &["scripted-test-model"],
    );
    refused(
        &h.run(&[
            "submit",
            "--max-cost-usd",
            "1",
            "--plan",
            plan_file,
            "build it",
        ]),
        &["scripted-test-model"],
    );
    // The primary priced, a fallback not: still refused, naming the fallback.
    let config = format!(
        "[providers.local]\nbase_url = \"{}\"\n\
         [models.worker]\nprovider = \"local\"\nmodel = \"scripted-test-model\"\n\
         fallback = [{{ provider = \"local\", model = \"spare-model\" }}]\n\
         [prices.\"scripted-test-model\"]\ninput_per_mtok = 1.0\noutput_per_mtok = 1.0\n",
        h.server.base_url()
    );
    let out = with_config(&h, &config, &["run", "--max-cost-usd", "1", "build it"])
        .output()
        .unwrap();
    refused(&out, &["spare-model"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("\"scripted-test-model\""),
        "{}",
        text(&out)
    );
    std::fs::remove_file(h.home.path().join("agentswarm.toml")).unwrap();
    let out = h.run(&["status", "--json"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("\"id\""),
        "a project was stored: {}",
        text(&out)
    );

    // `resume` with a new budget: refused, the stored limits unchanged.
    let out = h.run(&["submit", "--json", "--plan", plan_file, "build it"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = last_json_line(&out)["project_id"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(
        &h.run(&["resume", &project, "--max-cost-usd", "1"]),
        &["scripted-test-model"],
    );
    let status = h.status_json(&project);
    assert!(status["options"]["max_cost_usd"].is_null(), "{status}");
    assert!(h.server.requests().is_empty(), "a model was asked");
}

#[test]
fn a_recorded_run_replays_to_the_same_delivery_without_the_server() {
    let (sc, _) = two_task_scenario(json!({}));
    let h = Harness::new(sc);
    let tape = h.home.path().join("calls.jsonl");
    let out = h.run(&[
        "run",
        "--json",
        "--record",
        tape.to_str().unwrap(),
        "build gw",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let first = last_json_line(&out);
    let asked = h.server.requests().len();
    assert_eq!(
        std::fs::read_to_string(&tape).unwrap().lines().count(),
        asked
    );

    // A new home, and an endpoint where nothing listens.
    let h2 = Harness::new(json!({}));
    std::fs::copy(&tape, h2.home.path().join("calls.jsonl")).unwrap();
    let out = h2
        .cmd(&["run", "--json", "--replay", "calls.jsonl", "build gw"])
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let second = last_json_line(&out);
    assert!(h2.server.requests().is_empty());
    let a = check_delivery(Path::new(first["delivery"].as_str().unwrap()), "gw");
    let b = check_delivery(Path::new(second["delivery"].as_str().unwrap()), "gw");
    assert_eq!(a, b, "the replayed delivery differs");

    // Another goal is not in the recording: a clear miss.
    let out = h2
        .cmd(&["run", "--json", "--replay", "calls.jsonl", "something else"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("planner") && all.contains("calls.jsonl"),
        "{all}"
    );
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

#[test]
fn keys_reach_no_worker_no_file_and_no_delivery() {
    const KEY: &str = "sk-test-FAKEfakeFAKEfake0123456789abcdef";
    const WRITTEN: &str = "sk-proj-MODELwrittenFAKEkey0123456789abc";
    let p = plan("sec", &[("leak", &[])], &["test -f ok.txt"]);
    let sc = json!({
        "planner": [p],
        "tasks": {"leak": {"turns": [
            run_turn("env; echo \"key=$OPENAI_API_KEY\""),
            write_turn("ok.txt", "fine\n"),
            write_turn("settings.py", &format!("API_KEY = \"{WRITTEN}\"\n")),
            finish_turn(&format!("done; by the way the key is {KEY}")),
        ]}},
    });
    let h = Harness::new(sc);
    let out = h
        .cmd(&["run", "--json", "-v", "build sec"])
        .env("OPENAI_API_KEY", KEY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done");

    // The worker's environment holds no key: `env` printed neither it nor its name.
    let env_result = worker_requests(&h)[1].body["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(env_result.contains("PATH="), "{env_result}");
    assert!(
        !env_result.contains(KEY) && !env_result.contains("OPENAI_API_KEY"),
        "{env_result}"
    );

    // Nowhere on disk, nor on the terminal.
    assert_eq!(
        files_containing(&h.data_dir(), KEY.as_bytes()),
        Vec::<String>::new()
    );
    assert_eq!(
        files_containing(&h.outputs_dir(), KEY.as_bytes()),
        Vec::<String>::new()
    );
    assert!(!text(&out).contains(KEY));

    // The model-written key is kept out of the delivery and named in the manifest.
    let delivery = Path::new(report["delivery"].as_str().unwrap());
    let files = check_delivery(delivery, "sec");
    assert!(files.contains_key("ok.txt"));
    assert!(!files.contains_key("settings.py"), "{:?}", files.keys());
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(delivery.parent().unwrap().join("manifest.json")).unwrap(),
    )
    .unwrap();
    let withheld = manifest["withheld"].to_string();
    assert!(withheld.contains("settings.py"), "{manifest}");
    assert_eq!(
        files_containing(&h.outputs_dir(), WRITTEN.as_bytes()),
        Vec::<String>::new()
    );
    assert!(
        text(&out).contains("settings.py"),
        "the run says what it withheld"
    );
}
