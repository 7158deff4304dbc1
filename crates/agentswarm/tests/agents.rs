//! End-to-end tests of outside agents (docs/agents.md): a plan whose tasks
//! are done by an ACP agent and by a `command` agent, each in the sandbox of
//! every mechanism this machine has, their model traffic through the
//! gateway's per-attempt endpoint to the scripted server. The agent is
//! `tests/support/fake_agent.py`, which speaks the wire formats as the real
//! agents do (streamed) and runs the tool calls the scripted model asks for.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

/// The real key of the harness's provider (fake, but it is what the
/// gateway holds): no agent may ever see it.
const REAL_KEY: &str = "test-key-not-a-real-secret";

fn support() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support")
}

fn agents_toml() -> String {
    let script = support().join("fake_agent.py");
    let script = script.to_str().unwrap();
    let dir = support();
    let dir = dir.to_str().unwrap();
    format!(
        r#"
[agents.fake-acp]
kind = "acp"
command = ["python3", "{script}", "acp", "--speaks", "anthropic"]
speaks = "anthropic"
read_paths = ["{dir}"]
env = {{ FAKE_AGENT_URL = "{{gateway}}", FAKE_AGENT_KEY = "{{token}}" }}

[agents.fake-cmd]
kind = "command"
command = ["python3", "{script}", "command", "--speaks", "openai_chat", "--prompt", "{{prompt}}"]
speaks = "openai_chat"
read_paths = ["{dir}"]
env = {{ FAKE_AGENT_URL = "{{gateway}}", FAKE_AGENT_KEY = "{{token}}" }}
"#
    )
}

fn write(path: &str, content: &str) -> Value {
    json!({"calls": [{"name": "write_file", "arguments": {"path": path, "content": content}}]})
}

fn run(command: &str) -> Value {
    json!({"calls": [{"name": "run", "arguments": {"command": command}}]})
}

/// Asks the agent's endpoint without the token, from inside the sandbox.
const NO_TOKEN: &str = "python3 -c \"import os,urllib.request as u; r=u.Request(os.environ['FAKE_AGENT_URL']+'/v1/messages', data=b'{}', method='POST'); \
exec('try:\\n u.urlopen(r)\\nexcept Exception as e: print(\\'REFUSED\\', e)')\"";

#[test]
fn an_acp_agent_and_a_command_agent_do_tasks_in_the_sandbox_through_the_gateway() {
    for mechanism in mechanisms() {
        let scenario = json!({
            "tasks": {
                "a": {"turns": [
                    write("a.txt", "written by the ACP agent\n"),
                    run("env > env-a.txt; echo ran"),
                    run(NO_TOKEN),
                    {"content": "Wrote a.txt."}
                ]},
                "b": {"turns": [
                    write("b.txt", "written by the command agent\n"),
                    run("env > env-b.txt"),
                    {"content": "Wrote b.txt."}
                ]}
            }
        });
        let h = Harness::new(scenario);
        std::fs::write(h.home.path().join("agentswarm.toml"), agents_toml()).unwrap();
        let mut p = plan(
            "agents",
            &[("a", &[]), ("b", &[])],
            &["test -s a.txt && test -s b.txt"],
        );
        p["tasks"][0]["agent"] = json!("fake-acp");
        p["tasks"][1]["agent"] = json!("fake-cmd");
        let path = h.home.path().join("plan.json");
        std::fs::write(&path, p.to_string()).unwrap();
        let out = h
            .cmd(&[
                "run",
                "--json",
                "--plan",
                path.to_str().unwrap(),
                "agents goal",
            ])
            .env("AGENTSWARM_SANDBOX", "required")
            .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
            .output()
            .unwrap();
        let report = last_json_line(&out);
        assert_eq!(report["status"], "done", "{mechanism}: {}", text(&out));
        let project = report["project_id"].as_str().unwrap().to_owned();

        // The files the agents wrote are merged and delivered; verify passed.
        let delivery = check_delivery(
            std::path::Path::new(report["delivery"].as_str().unwrap()),
            "agents",
        );
        let file = |name: &str| {
            let key = delivery
                .keys()
                .find(|k| k.ends_with(&format!("/{name}")) || *k == name)
                .unwrap_or_else(|| {
                    panic!("{mechanism}: {name} not delivered: {:?}", delivery.keys())
                });
            String::from_utf8_lossy(&delivery[key]).into_owned()
        };
        assert_eq!(file("a.txt"), "written by the ACP agent\n");
        assert_eq!(file("b.txt"), "written by the command agent\n");

        // Each agent held the attempt's token, never the real key.
        for env in ["env-a.txt", "env-b.txt"] {
            let e = file(env);
            assert!(
                e.contains("FAKE_AGENT_KEY=swarm-attempt-"),
                "{mechanism}: {env}: {e}"
            );
            assert!(
                !e.contains(REAL_KEY),
                "{mechanism}: the real key reached the agent: {e}"
            );
            assert!(!e.contains("OPENAI_API_KEY"), "{mechanism}: {e}");
            // Its endpoint is loopback inside its own namespace (the relay).
            assert!(
                e.contains("FAKE_AGENT_URL=http://127.0.0.1:"),
                "{mechanism}: {e}"
            );
        }

        // Every model call went through the gateway to the provider, in the
        // provider's format (Chat Completions; the ACP agent spoke Anthropic
        // Messages), with the agent's own tools.
        let reqs = h.server.requests();
        for (task, calls) in [("a", 4), ("b", 3)] {
            let mine: Vec<_> = reqs
                .iter()
                .filter(|r| r.task.as_deref() == Some(task))
                .collect();
            assert_eq!(mine.len(), calls, "{mechanism}: task {task}: {mine:?}");
            for r in &mine {
                assert_eq!(r.wire, swarm_testkit::Wire::OpenAi);
                let names: Vec<&str> = r.body["tools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["function"]["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, ["write_file", "run"], "{mechanism}");
            }
        }
        assert!(
            h.server.violations().is_empty(),
            "{:?}",
            h.server.violations()
        );
        // A request without the attempt's token was refused.
        let a_results = tool_results_of(&reqs, "a");
        assert!(
            a_results
                .iter()
                .any(|r| r.contains("REFUSED") && r.contains("401")),
            "{mechanism}: {a_results:?}"
        );

        // The manifest says which agent did which task, through the gateway.
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
                .unwrap();
        assert_eq!(manifest["agents"]["tasks"]["a"], "fake-acp", "{manifest}");
        assert_eq!(manifest["agents"]["tasks"]["b"], "fake-cmd");
        assert_eq!(
            manifest["agents"]["agents"]["fake-acp"]["credentials"],
            "gateway"
        );

        // The calls are counted as the project's.
        let status = h.status_json(&project);
        let calls: u64 = status["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["calls"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(calls, 7, "{mechanism}: {status}");

        // Their tool calls are the tasks' tool events, and the transcript
        // holds the conversation; neither holds the key.
        let logs = h.run(&["logs", &project]);
        let logs = text(&logs);
        assert!(logs.contains("write_file"), "{mechanism}: {logs}");
        assert!(
            logs.contains("permission"),
            "{mechanism}: the ACP permission was not logged: {logs}"
        );
        let transcript = std::fs::read_to_string(
            h.data_dir()
                .join("projects")
                .join(&project)
                .join("transcripts/a-1.json"),
        )
        .unwrap();
        assert!(transcript.contains("write_file") && transcript.contains("a.txt"));
        assert!(!transcript.contains(REAL_KEY) && !logs.contains(REAL_KEY));
    }
}

fn tool_results_of(reqs: &[swarm_testkit::RecordedRequest], task: &str) -> Vec<String> {
    reqs.iter()
        .filter(|r| r.task.as_deref() == Some(task))
        .filter_map(|r| r.body["messages"].as_array()?.last().cloned())
        .filter_map(|m| m["content"].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn an_agent_that_is_not_configured_is_refused_before_any_task_starts() {
    let h = Harness::new(json!({}));
    std::fs::write(h.home.path().join("agentswarm.toml"), agents_toml()).unwrap();
    let path = h.home.path().join("p.json");
    std::fs::write(&path, plan("agents", &[("a", &[])], &["true"]).to_string()).unwrap();
    let out = h.run(&[
        "run",
        "--agent",
        "nope",
        "--plan",
        path.to_str().unwrap(),
        "goal",
    ]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("agent \"nope\" (from flag --agent) is not configured"),
        "{t}"
    );
    assert!(t.contains("builtin, fake-acp, fake-cmd"), "{t}");

    let mut p = plan("agents", &[("a", &[])], &["true"]);
    p["tasks"][0]["agent"] = json!("typo");
    let (out, report) = h.run_plan(&p, &[]);
    assert_eq!(report["status"], "paused", "{}", text(&out));
    assert!(
        text(&out).contains("task a names agent \"typo\""),
        "{}",
        text(&out)
    );
    assert!(h.server.requests().is_empty(), "no model call was made");
}

#[test]
fn a_missing_agent_program_is_said_by_doctor_and_before_any_task_starts() {
    let h = Harness::new(json!({}));
    let toml = agents_toml().replace("\"python3\", ", "\"/nonexistent/python3\", ");
    std::fs::write(h.home.path().join("agentswarm.toml"), toml).unwrap();
    let out = h.run(&["doctor"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("agent fake-acp: its program /nonexistent/python3 is not an executable file"),
        "{t}"
    );

    let mut p = plan("agents", &[("a", &[])], &["true"]);
    p["tasks"][0]["agent"] = json!("fake-cmd");
    let (out, report) = h.run_plan(&p, &[]);
    assert_eq!(report["status"], "paused", "{}", text(&out));
    assert!(
        text(&out).contains("agent fake-cmd: its program"),
        "{}",
        text(&out)
    );
    assert!(h.server.requests().is_empty(), "no model call was made");
}

#[test]
fn an_agent_with_its_own_credentials_gets_its_login_and_the_run_says_whose_costs_they_are() {
    let h = Harness::new(json!({"tasks": {"a": {"turns": [
        run("cat $HOME/fake-login/token > login.txt"),
        {"content": "Copied."}
    ]}}}));
    let login = h.home.path().join("fake-login");
    std::fs::create_dir_all(&login).unwrap();
    std::fs::write(login.join("token"), "subscription-login\n").unwrap();
    let toml = agents_toml().replace(
        "[agents.fake-cmd]\n",
        &format!(
            "[agents.fake-cmd]\ncredentials = \"own\"\nhome_files = [\"{}\"]\n",
            login.display()
        ),
    );
    std::fs::write(h.home.path().join("agentswarm.toml"), toml).unwrap();
    let mut p = plan("agents", &[("a", &[])], &["test -s login.txt"]);
    p["tasks"][0]["agent"] = json!("fake-cmd");
    let (out, report) = h.run_plan(&p, &[]);
    assert_eq!(report["status"], "done", "{}", text(&out));
    assert!(
        text(&out).contains("agent fake-cmd uses its own credentials")
            && text(&out).contains("costs are the vendor's"),
        "{}",
        text(&out)
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(report["manifest"].as_str().unwrap()).unwrap())
            .unwrap();
    assert_eq!(manifest["agents"]["tasks"]["a"], "fake-cmd", "{manifest}");
    assert_eq!(
        manifest["agents"]["agents"]["fake-cmd"]["credentials"],
        "own"
    );
    let delivery = check_delivery(
        std::path::Path::new(report["delivery"].as_str().unwrap()),
        "agents",
    );
    let key = delivery.keys().find(|k| k.ends_with("login.txt")).unwrap();
    assert_eq!(delivery[key], b"subscription-login\n");
}

/// An agent on its own credentials that says its vendor's usage limit is
/// reached: its attempts are not counted (one attempt is allowed), no task
/// goes to it until the reset it names, and then the work resumes by itself.
#[test]
fn an_own_credentials_agent_out_of_its_usage_limit_gets_no_task_until_its_reset() {
    let task = |f: &str| json!({"turns": [write(f, "done\n"), {"content": "Done."}]});
    let h = Harness::new(json!({"tasks": {"a": task("a.txt"), "b": task("b.txt")}}));
    let until = std::time::SystemTime::now() + std::time::Duration::from_secs(6);
    let until_s = until
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The command agent, on its own credentials, told when its limit ends.
    let toml = agents_toml();
    let cmd = toml.find("[agents.fake-cmd]").unwrap();
    let (acp, command) = toml.split_at(cmd);
    let command = command
        .replacen(
            "[agents.fake-cmd]\n",
            "[agents.fake-cmd]\ncredentials = \"own\"\n",
            1,
        )
        .replacen(
            "FAKE_AGENT_KEY = \"{token}\" }",
            &format!("FAKE_AGENT_KEY = \"{{token}}\", FAKE_AGENT_LIMIT_UNTIL = \"{until_s}\" }}"),
            1,
        );
    let toml = format!("{acp}{command}");
    assert!(toml.contains("FAKE_AGENT_LIMIT_UNTIL"), "{toml}");
    std::fs::write(h.home.path().join("agentswarm.toml"), &toml).unwrap();
    let mut p = plan(
        "limits",
        &[("a", &[]), ("b", &[])],
        &["test -f a.txt && test -f b.txt"],
    );
    p["tasks"][0]["agent"] = json!("fake-cmd");
    p["tasks"][1]["agent"] = json!("fake-cmd");
    let (out, report) = h.run_plan(&p, &["--max-attempts", "1"]);
    assert_eq!(report["status"], "done", "{}", text(&out));
    let status = h.status_json(report["project_id"].as_str().unwrap());
    let until_ms = (until_s * 1000) as i64;
    for t in status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "code")
    {
        assert_eq!(t["attempts_counted"], 0, "{t}");
        let history = t["attempt_history"].as_array().unwrap();
        let first = &history[0];
        assert!(
            first["reason"]
                .as_str()
                .unwrap()
                .contains("is out of its usage limit (not counted)"),
            "{t}"
        );
        // No attempt of this agent started during the hold.
        for a in &history[1..] {
            assert!(a["started_ms"].as_i64().unwrap() >= until_ms - 1000, "{t}");
        }
    }
    let logs = text(&h.run(&["logs", report["project_id"].as_str().unwrap()]));
    assert!(
        logs.contains("agent fake-cmd is out of its usage limit until"),
        "{logs}"
    );
}

#[test]
fn an_agent_is_held_to_max_turns_and_the_attempt_wall_time() {
    // max_turns: the third model request of the agent is refused, and the
    // attempt fails with that reason.
    let looping: Vec<Value> = (0..6).map(|i| run(&format!("echo {i}"))).collect();
    let h = Harness::new(
        json!({"tasks": {"a": {"turns": looping}, "b": {"turns": [run("sleep 60.417")]}}}),
    );
    std::fs::write(h.home.path().join("agentswarm.toml"), agents_toml()).unwrap();
    let mut p = plan("agents", &[("a", &[])], &["true"]);
    p["tasks"][0]["agent"] = json!("fake-acp");
    let (out, report) = h.run_plan(&p, &["--max-turns", "2", "--max-attempts", "1"]);
    assert_eq!(report["status"], "failed", "{}", text(&out));
    assert!(
        text(&out).contains("max_turns (2) reached without the agent ending its turn"),
        "{}",
        text(&out)
    );
    let a_calls = h
        .server
        .requests()
        .iter()
        .filter(|r| r.task.as_deref() == Some("a"))
        .count();
    assert_eq!(a_calls, 2, "the refused request never reached the provider");

    // The wall time: an agent whose command hangs is ended with its whole
    // tree when WORKER_TIMEOUT_SECONDS is up.
    let mut p = plan("agents", &[("b", &[])], &["true"]);
    p["tasks"][0]["agent"] = json!("fake-cmd");
    let path = h.home.path().join("plan-b.json");
    std::fs::write(&path, p.to_string()).unwrap();
    let started = std::time::Instant::now();
    let out = h
        .cmd(&[
            "run",
            "--json",
            "--max-attempts",
            "1",
            "--plan",
            path.to_str().unwrap(),
            "goal",
        ])
        .env("WORKER_TIMEOUT_SECONDS", "3")
        .output()
        .unwrap();
    let report = last_json_line(&out);
    assert_eq!(report["status"], "failed", "{}", text(&out));
    assert!(
        text(&out).contains("timeout: the attempt ran longer than 3 s"),
        "{}",
        text(&out)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let left = std::process::Command::new("pgrep")
        .args(["-f", "sleep 60.417"])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "the agent's command outlived the attempt: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
