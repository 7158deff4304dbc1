//! End-to-end tests with real coding agents (docs/agents.md): Claude Code
//! through `claude-code-acp` (ACP), Claude Code's `claude -p` (a `command`
//! agent), opencode (`opencode acp`) and Gemini CLI (`gemini --acp`, which
//! speaks the Gemini API to the gateway), installed at pinned versions by
//! `.ci/run` (npm, into `target/agent-clis`). They run real tasks in the
//! sandbox against the scripted server, through the gateway's per-attempt
//! endpoint; nothing leaves loopback and no key is real.
//!
//! `AGENTSWARM_TEST_AGENTS` (set by `.ci/run`) names the agents that must be
//! there: a missing one fails the test instead of skipping it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::PathBuf;

const REAL_KEY: &str = "test-key-not-a-real-secret";

fn agents_dir() -> PathBuf {
    std::env::var_os("AGENTSWARM_TEST_AGENTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/agent-clis")
        })
}

/// The agent CLIs this machine has, or `None` (after saying why) when they
/// are missing and not required.
fn installed() -> Option<PathBuf> {
    let dir = agents_dir();
    let bins = dir.join("node_modules/.bin");
    let required = std::env::var("AGENTSWARM_TEST_AGENTS").unwrap_or_default();
    let mut missing = Vec::new();
    for name in ["claude-code-acp", "claude", "opencode", "gemini", "codex"] {
        if !bins.join(name).exists() {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        return Some(std::fs::canonicalize(dir).unwrap());
    }
    let named: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|m| required.split(',').any(|r| r.trim() == *m))
        .collect();
    if !named.is_empty() {
        panic!(
            "AGENTSWARM_TEST_AGENTS names {named:?}, but they are not installed in {} (.ci/run installs them)",
            dir.display()
        );
    }
    eprintln!(
        "skipping the real agents: {missing:?} not installed in {} (run the npm install of .ci/run)",
        dir.display()
    );
    None
}

/// `[agents.*]` for the three real agents installed under `dir`.
fn agents_toml(dir: &std::path::Path) -> String {
    let d = dir.to_str().unwrap();
    // Gemini skips a system settings file below a directory others may
    // write to ("Parent directory '/tmp' is insecure"), as a checkout under
    // /tmp is; without its settings its shell needs a pty, which the sandbox
    // has not. So they go where no parent is writable by others.
    let settings_dir = std::path::Path::new("/run/agentswarm-test-gemini");
    std::fs::create_dir_all(settings_dir).unwrap();
    let settings = settings_dir.join("settings.json");
    std::fs::write(&settings, include_str!("support/gemini-settings.json")).unwrap();
    let settings = settings.to_str().unwrap();
    let settings_dir = settings_dir.to_str().unwrap();
    let opencode = json!({
        "provider": {"swarm": {"npm": "@ai-sdk/openai-compatible", "name": "swarm",
            "options": {"baseURL": "{gateway}/v1", "apiKey": "{token}"},
            "models": {"scripted": {"name": "scripted"}}}},
        "model": "swarm/scripted", "small_model": "swarm/scripted",
        "autoupdate": false, "share": "disabled"
    })
    .to_string();
    format!(
        r#"
[agents.claude]
kind = "acp"
command = ["{d}/node_modules/.bin/claude-code-acp"]
speaks = "anthropic"
read_paths = ["{d}"]
env = {{ ANTHROPIC_BASE_URL = "{{gateway}}", ANTHROPIC_API_KEY = "{{token}}", CLAUDE_CODE_EXECUTABLE = "{d}/node_modules/@anthropic-ai/claude-code-linux-x64/claude", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1" }}

[agents.claude-p]
kind = "command"
command = ["{d}/node_modules/@anthropic-ai/claude-code-linux-x64/claude", "-p", "{{prompt}}", "--output-format", "stream-json", "--verbose", "--allowedTools", "Bash,Write,Edit,Read"]
output = "claude_stream_json"
speaks = "anthropic"
read_paths = ["{d}"]
env = {{ ANTHROPIC_BASE_URL = "{{gateway}}", ANTHROPIC_API_KEY = "{{token}}", CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1" }}

[agents.gemini]
kind = "acp"
command = ["{d}/node_modules/.bin/gemini", "--acp", "-m", "gemini-2.5-pro"]
speaks = "gemini"
read_paths = ["{d}", "{settings_dir}"]
env = {{ GOOGLE_GEMINI_BASE_URL = "{{gateway}}", GEMINI_API_KEY = "{{token}}", GEMINI_CLI_TRUST_WORKSPACE = "true", GEMINI_CLI_SYSTEM_SETTINGS_PATH = "{settings}" }}

[agents.codex]
kind = "command"
command = ["{d}/node_modules/.bin/codex", "exec", "--json", "--skip-git-repo-check", "--sandbox", "danger-full-access", "-c", 'model="gpt-5.1-codex"', "-c", 'model_provider="swarm"', "-c", 'model_providers.swarm={{name="swarm",base_url="{{gateway}}/v1",env_key="SWARM_TOKEN",wire_api="responses"}}', "-c", "analytics.enabled=false", "-c", "features.plugins=false", "{{prompt}}"]
output = "codex_json"
speaks = "openai_responses"
read_paths = ["{d}"]
env = {{ SWARM_TOKEN = "{{token}}" }}

[agents.opencode]
kind = "acp"
command = ["{d}/node_modules/.bin/opencode", "acp"]
speaks = "openai_chat"
read_paths = ["{d}"]
env = {{ OPENCODE_CONFIG_CONTENT = '{opencode}', OPENCODE_DISABLE_MODELS_FETCH = "1" }}
"#
    )
}

/// The scripted turns of a task done by `agent`: one shell call that
/// writes `<task>.txt` and dumps the agent's environment, then an answer.
fn turns(agent: &str, task: &str) -> Value {
    let command = format!("echo {task} by {agent} > {task}.txt && env > env-{task}.txt");
    let call = match agent {
        "gemini" => json!({"name": "run_shell_command", "arguments": {"command": command}}),
        "codex" => json!({"name": "exec_command", "arguments": {"cmd": command}}),
        _ => {
            json!({"name": tool_of(agent), "arguments": {"command": command, "description": format!("Write {task}.txt")}})
        }
    };
    json!({"turns": [
        {"calls": [call]},
        {"content": format!("Wrote {task}.txt.")}
    ]})
}

/// The name of the shell tool of `agent`.
fn tool_of(agent: &str) -> &'static str {
    match agent {
        "opencode" => "bash",
        "gemini" => "run_shell_command",
        "codex" => "exec_command",
        _ => "Bash",
    }
}

/// Runs `assignments` (task, agent) as one plan with a verify task over
/// them; checks what a user would: the run is done, every file is in the
/// delivery, each agent had its token and never the key, the calls are
/// the project's, and the tool calls are in the log.
fn run_plan_with(
    dir: &std::path::Path,
    mechanism: &str,
    assignments: &[(&str, &str)],
    extra: &[&str],
) {
    let tasks: serde_json::Map<String, Value> = assignments
        .iter()
        .map(|(t, a)| ((*t).to_owned(), turns(a, t)))
        .collect();
    let h = Harness::new(json!({"tasks": tasks, "other": "A title"}));
    std::fs::write(h.home.path().join("agentswarm.toml"), agents_toml(dir)).unwrap();
    let ids: Vec<(&str, &[&str])> = assignments.iter().map(|(t, _)| (*t, &[][..])).collect();
    let check: Vec<String> = assignments
        .iter()
        .map(|(t, _)| format!("test -s {t}.txt"))
        .collect();
    let mut p = plan("real", &ids, &[&check.join(" && ")]);
    for (i, (_, a)) in assignments.iter().enumerate() {
        p["tasks"][i]["agent"] = json!(a);
    }
    let path = h.home.path().join("plan.json");
    std::fs::write(&path, p.to_string()).unwrap();
    let mut args = vec![
        "run",
        "--json",
        "--max-attempts",
        "1",
        "--plan",
        path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push("real agents goal");
    let started = std::time::Instant::now();
    let out = h
        .cmd(&args)
        .env("AGENTSWARM_SANDBOX", "required")
        .env("AGENTSWARM_SANDBOX_MECHANISM", mechanism)
        .output()
        .unwrap();
    let report = last_json_line(&out);
    assert_eq!(report["status"], "done", "{mechanism}: {}", text(&out));
    eprintln!(
        "{mechanism}: {} tasks with real agents in {:.1} s",
        assignments.len(),
        started.elapsed().as_secs_f64()
    );
    let project = report["project_id"].as_str().unwrap().to_owned();
    let delivery = check_delivery(
        std::path::Path::new(report["delivery"].as_str().unwrap()),
        "real",
    );
    let file = |name: &str| -> String {
        let key = delivery
            .keys()
            .find(|k| k.ends_with(&format!("/{name}")) || *k == name)
            .unwrap_or_else(|| panic!("{mechanism}: {name} not delivered: {:?}", delivery.keys()));
        String::from_utf8_lossy(&delivery[key]).into_owned()
    };
    for (t, a) in assignments {
        assert_eq!(
            file(&format!("{t}.txt")),
            format!("{t} by {a}\n"),
            "{mechanism}"
        );
        let env = file(&format!("env-{t}.txt"));
        assert!(
            env.contains("swarm-attempt-"),
            "{mechanism}: {a} had no token: {env}"
        );
        assert!(
            !env.contains(REAL_KEY),
            "{mechanism}: the real key reached {a}"
        );
    }
    // Every call the agents made reached the provider through the gateway,
    // and is the project's: counted by the same books as the built-in agent's.
    let reqs = h.server.requests();
    let status = h.status_json(&project);
    let counted: u64 = status["usage"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["calls"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(counted as usize, reqs.len(), "{mechanism}: {status}");
    assert!(
        h.server.violations().is_empty(),
        "{mechanism}: {:?}",
        h.server.violations()
    );
    let logs = text(&h.run(&["logs", &project]));
    for (t, a) in assignments {
        let tool = tool_of(a);
        assert!(
            logs.lines()
                .any(|l| l.contains(&format!(" {t} ")) && l.contains(tool)),
            "{mechanism}: no {tool} event of task {t}: {logs}"
        );
    }
    assert!(!logs.contains(REAL_KEY));
}

#[test]
fn claude_code_claude_p_opencode_gemini_cli_and_codex_do_tasks_in_each_sandbox() {
    let Some(dir) = installed() else { return };
    for mechanism in mechanisms() {
        run_plan_with(
            &dir,
            mechanism,
            &[
                ("a", "claude"),
                ("b", "claude-p"),
                ("c", "opencode"),
                ("d", "gemini"),
                ("e", "codex"),
            ],
            &[],
        );
    }
}

/// The acceptance of issue 14: a 10-task plan with different real agents
/// in one project (Gemini CLI, Claude Code and opencode), chosen per task,
/// offline.
#[test]
fn a_ten_task_plan_with_real_agents_chosen_per_task() {
    let Some(dir) = installed() else { return };
    let mechanism = mechanisms()[0];
    let assignments: Vec<(String, &str)> = (1..=9)
        .map(|i| (format!("t{i}"), ["gemini", "claude", "opencode"][i % 3]))
        .collect();
    let refs: Vec<(&str, &str)> = assignments.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    run_plan_with(&dir, mechanism, &refs, &["--max-workers", "3"]);
}
