//! `agentswarm doctor`: what this installation would run with, and whether
//! the machine lets it.

use crate::cli::{Cli, LimitArgs};
use crate::commands::load_config;
use anyhow::Result;
use serde_json::json;
use std::process::ExitCode;
use swarm_engine::gate::Gate;

/// Prints what a run would use; exits 1 when something a run needs is
/// missing or broken (no model, a missing key, git, the store, a sandbox
/// that `required` refuses, and with `check_model` a model that does not
/// answer).
pub async fn doctor(cli: &Cli, as_json: bool, check_model: bool) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let src = |k: &str| {
        config
            .sources
            .get(k)
            .map(|s| s.to_string())
            .unwrap_or_else(|| "default".into())
    };
    let mut values: Vec<(String, String)> = [
        ("data_dir", config.data_dir.display().to_string()),
        ("outputs_dir", config.outputs_dir.display().to_string()),
        (
            "max_concurrent_workers",
            config.max_concurrent_workers.to_string(),
        ),
        (
            "worker_timeout_seconds",
            config.worker_timeout_secs.to_string(),
        ),
        (
            "worker_memory_limit_mb",
            config.worker_memory_limit_mb.to_string(),
        ),
        ("min_free_memory_mb", config.min_free_memory_mb.to_string()),
        ("max_load_average", config.max_load_average.to_string()),
        (
            "shutdown_grace_seconds",
            config.shutdown_grace_secs.to_string(),
        ),
        ("memory_limiter", config.memory_limiter.clone()),
        ("worker_wrapper", config.worker_wrapper.join(" ")),
        ("api_rate_limit_rpm", config.api_rate_limit_rpm.to_string()),
        (
            "secrets_file",
            config
                .secrets_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
        ),
        ("bind", config.bind.to_string()),
        (
            "api_token",
            // Never the value: whether it is set, and (below) from where.
            match (&config.api_token, config.bind.ip().is_loopback()) {
                (Some(_), _) => "set".into(),
                (None, true) => "not set (loopback only)".into(),
                (None, false) => {
                    "MISSING: `serve` refuses a non-loopback bind without AGENTSWARM_API_TOKEN"
                        .into()
                }
            },
        ),
        ("sandbox", config.sandbox.mode.to_string()),
        ("sandbox_mechanism", config.sandbox.mechanism.to_string()),
        (
            "sandbox_read_paths",
            config
                .sandbox
                .read_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "sandbox_max_open_files",
            config.sandbox.limits.open_files.to_string(),
        ),
        (
            "sandbox_max_processes",
            config.sandbox.limits.processes.to_string(),
        ),
        (
            "sandbox_max_file_size_mb",
            config.sandbox.limits.file_size_mb.to_string(),
        ),
        ("sandbox_uid", config.sandbox.uid.to_string()),
        ("run.allow_network", config.run.allow_network.to_string()),
        ("run.review", config.run.review.to_string()),
        ("run.max_tasks", config.run.max_tasks.to_string()),
        ("run.max_attempts", config.run.max_attempts.to_string()),
        ("run.max_turns", config.run.max_turns.to_string()),
        ("run.max_fix_rounds", config.run.max_fix_rounds.to_string()),
        (
            "run.max_cost_usd",
            config
                .run
                .max_cost_usd
                .map(|c| format!("{c}"))
                .unwrap_or_else(|| "none".into()),
        ),
        (
            "run.max_tokens",
            config
                .run
                .max_tokens
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if config.rate_window_ms != 60_000 {
        values.push(("rate_window_ms".into(), config.rate_window_ms.to_string()));
    }
    let model = match config.models() {
        Ok(m) => {
            for (name, p) in &m.providers {
                values.push((format!("providers.{name}.kind"), p.kind.as_str().into()));
                values.push((format!("providers.{name}.base_url"), p.base_url.clone()));
                // The key's presence, never its value or length.
                let key = match (&p.api_key, &p.api_key_env) {
                    (Some(_), Some(env)) => format!("set ({env})"),
                    (None, Some(env)) if p.key_required => format!("MISSING: {env} is not set"),
                    (None, Some(env)) => {
                        format!("not set ({env} is empty; fine for local servers)")
                    }
                    (_, None) => "none (no api_key_env)".into(),
                };
                values.push((format!("providers.{name}.api_key"), key));
                if p.tokens_per_minute > 0 {
                    values.push((
                        format!("providers.{name}.tokens_per_minute"),
                        p.tokens_per_minute.to_string(),
                    ));
                }
            }
            for role in swarm_config::ModelRole::ALL {
                let r = m.role(role);
                let mut v = r.primary.to_string();
                for f in &r.fallback {
                    v.push_str(&format!(" → {f}"));
                }
                values.push((format!("models.{}.model", role.as_str()), v));
            }
            for (model, p) in &m.prices {
                values.push((
                    format!("prices.{model}"),
                    format!(
                        "${} in / ${} out per Mtok",
                        p.input_per_mtok, p.output_per_mtok
                    ),
                ));
            }
            let missing: Vec<String> = m
                .providers
                .values()
                .filter(|p| m.uses(&p.name))
                .filter_map(|p| p.missing_key().map(|e| e.to_string()))
                .collect();
            json!({"ok": missing.is_empty(), "missing_keys": missing})
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };

    let limiter = swarm_engine::memory_limiter(&config);
    let facilities = swarm_exec::sandbox::facilities();
    let (policy, assessment) = assess_sandbox(&config);
    let available = |r: Result<String, &String>| match r {
        Ok(v) => json!({"available": true, "detail": v}),
        Err(why) => json!({"available": false, "needs": why}),
    };
    let sandbox = json!({
        "mode": config.sandbox.mode.as_str(),
        "mechanism": assessment.mechanism_name(),
        "summary": assessment.summary(policy.allow_network),
        "gaps": assessment.gaps,
        "refusal": assessment.refusal,
        "landlock": available(facilities.landlock.as_ref().map(|abi| format!("ABI {abi}"))),
        "namespaces": available(facilities.namespaces.as_ref().map(|()| "network namespaces".to_owned())),
        "bubblewrap": available(facilities.bubblewrap.as_ref().map(|p| p.display().to_string())),
        // Only a root service's commands drop to `sandbox_uid`.
        "uid_drop": swarm_exec::sandbox::running_as_root().then(|| available(
            facilities.uid_drop.as_ref().map(|()| format!("commands run as uid {}", config.sandbox.uid)),
        )),
    });
    let gate = Gate::from_config(&config);
    let readings = gate.readings();
    let verdict = gate.check();
    let git = swarm_git::version().map_err(|e| e.to_string());
    let store = store_health(&config);
    let checks = if check_model && config.models().is_ok() {
        swarm_engine::probe::check_models(&config, std::time::Duration::from_secs(30)).await
    } else {
        Vec::new()
    };
    // What stops a run from starting or from getting anywhere.
    let mut problems: Vec<String> = Vec::new();
    if let Some(e) = model.get("error").and_then(|e| e.as_str()) {
        problems.push(format!("no model: {e}"));
    }
    for e in model["missing_keys"].as_array().into_iter().flatten() {
        problems.push(e.as_str().unwrap_or_default().to_owned());
    }
    for c in checks.iter().filter(|c| !c.ok) {
        problems.push(format!(
            "the {} model ({} at {}) does not answer: {}",
            c.role,
            c.model,
            c.provider,
            c.error.as_deref().unwrap_or("")
        ));
    }
    if let Err(e) = &git {
        problems.push(format!("git is not usable: {e}"));
    }
    if let Some(e) = store.get("error").and_then(|e| e.as_str()) {
        problems.push(format!("the store cannot be opened: {e}"));
    }
    if let Some(why) = &assessment.refusal {
        problems.push(why.clone());
    }
    // Outside agents (docs/agents.md): each configured one, whether its
    // program is there, and whose credentials it uses.
    let path = std::env::var_os("PATH");
    let mut agents = Vec::new();
    for (name, choice) in &config.agents {
        let swarm_config::AgentChoice::External(spec) = choice else {
            continue;
        };
        let broken = swarm_config::check_agent(spec, path.as_deref());
        problems.extend(broken.iter().cloned());
        agents.push(json!({
            "name": name,
            "kind": spec.kind.as_str(),
            "speaks": spec.speaks.as_str(),
            "credentials": if spec.credentials == swarm_config::Credentials::Own { "own" } else { "gateway" },
            "notice": swarm_config::own_credentials_notice(spec),
            "problems": broken,
        }));
    }
    let code = if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };

    if as_json {
        let v = json!({
            "config_file": config.file.as_ref().map(|p| p.display().to_string()),
            "values": values.iter().map(|(k, v)| json!({"key": k, "value": v, "source": src(k)})).collect::<Vec<_>>(),
            "model": model,
            "memory_limit": {"mechanism": limiter.mechanism().as_str(), "reason": limiter.reason()},
            "sandbox": sandbox,
            "gate": {
                "source": gate.source(),
                "readings": readings.as_ref().ok(),
                "error": readings.as_ref().err().map(|e| e.to_string()),
                "open": verdict.is_ok(),
                "why_closed": verdict.as_ref().err(),
            },
            "git": git,
            "store": store,
            "nodes": config.nodes.iter().map(|n| json!({"name": n.name, "ssh": n.ssh, "port": n.port, "max_workers": n.max_workers, "labels": n.labels})).collect::<Vec<_>>(),
            "model_checks": checks,
            "agents": agents,
            "worker_agent": config.run.agent.clone().unwrap_or_else(|| swarm_config::BUILTIN.to_owned()),
            "ready": problems.is_empty(),
            "problems": problems,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    println!(
        "config file: {}",
        config
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none (defaults, environment and flags only)".into())
    );
    for (k, v) in &values {
        println!("  {k:<24} {v:<40} ({})", src(k));
    }
    if let Some(e) = model.get("error").and_then(|e| e.as_str()) {
        println!("model: not configured — {e}");
    }
    for e in model["missing_keys"].as_array().into_iter().flatten() {
        println!("model: {}", e.as_str().unwrap_or_default());
    }
    for c in &checks {
        match &c.error {
            None => println!(
                "model check: {} → {} at {} ({}): answered in {} ms",
                c.role, c.model, c.provider, c.base_url, c.latency_ms
            ),
            Some(e) => println!(
                "model check: {} → {} at {} ({}): FAILED after {} ms — {e}",
                c.role, c.model, c.provider, c.base_url, c.latency_ms
            ),
        }
    }
    println!(
        "memory limit: {} — {}",
        limiter.mechanism().as_str(),
        limiter.reason()
    );
    println!(
        "sandbox ({}): {}",
        config.sandbox.mode,
        assessment.summary(policy.allow_network)
    );
    for name in ["landlock", "namespaces", "bubblewrap", "uid_drop"] {
        let f = &sandbox[name];
        if f.is_null() {
            continue;
        }
        match f["available"].as_bool() {
            Some(true) => println!(
                "  {name:<11} available: {}",
                f["detail"].as_str().unwrap_or("")
            ),
            _ => println!(
                "  {name:<11} unavailable: {}",
                f["needs"].as_str().unwrap_or("")
            ),
        }
    }
    if config.sandbox.mode != swarm_exec::sandbox::SandboxMode::Off {
        for gap in &assessment.gaps {
            println!("  not confined here: {gap}");
        }
    }
    if let Some(why) = &assessment.refusal {
        println!("  REFUSED: {why}");
    }
    println!(
        "worker agent: {}",
        config.run.agent.as_deref().unwrap_or(swarm_config::BUILTIN)
    );
    for a in &agents {
        println!(
            "  agent {}: {}, speaks {}, {} credentials{}",
            a["name"].as_str().unwrap_or(""),
            a["kind"].as_str().unwrap_or(""),
            a["speaks"].as_str().unwrap_or(""),
            a["credentials"].as_str().unwrap_or(""),
            if a["problems"].as_array().is_some_and(|p| p.is_empty()) {
                "; program found"
            } else {
                ""
            }
        );
        if let Some(n) = a["notice"].as_str() {
            println!("    {n}");
        }
        for p in a["problems"].as_array().into_iter().flatten() {
            println!("    PROBLEM: {}", p.as_str().unwrap_or(""));
        }
    }
    match &readings {
        Ok(r) => println!(
            "resource gate: available memory {} MB (bound {} MB), load average {:.2} (bound {}) → {} [{}]",
            r.available_mb,
            config.min_free_memory_mb,
            r.load1,
            config.max_load_average,
            match &verdict {
                Ok(()) => "open".to_owned(),
                Err(why) => format!("closed: {why}"),
            },
            gate.source()
        ),
        Err(e) => println!("resource gate: no readings from {}: {e}", gate.source()),
    }
    match config.nodes.as_slice() {
        [] => println!("nodes: only this machine (no [nodes.NAME] in the config)"),
        nodes => println!(
            "nodes: {} (not yet used for attempts; `agentswarm node check` connects to them)",
            nodes
                .iter()
                .map(|n| format!("{} ({}:{}, {} slots)", n.name, n.ssh, n.port, n.max_workers))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
    match &git {
        Ok(v) => println!("git: {v}"),
        Err(e) => println!("git: NOT USABLE — {e}"),
    }
    match store.get("error").and_then(|e| e.as_str()) {
        Some(e) => println!("store: {e}"),
        None => println!(
            "store: {} — {} project(s), integrity {}",
            store["path"].as_str().unwrap_or(""),
            store["projects"],
            store["integrity"].as_str().unwrap_or("?")
        ),
    }
    if problems.is_empty() {
        println!(
            "ready to run{}",
            if check_model {
                ""
            } else {
                " (the model endpoints were not contacted: `agentswarm doctor --check-model` does)"
            }
        );
    } else {
        println!("NOT READY:");
        for p in &problems {
            println!("  - {p}");
        }
    }
    Ok(code)
}

fn store_health(config: &swarm_config::Config) -> serde_json::Value {
    let path = config.store_path();
    if !path.exists() {
        return json!({"path": path.display().to_string(), "projects": 0, "integrity": "not created yet"});
    }
    match swarm_store::SqliteStore::open(&path) {
        Ok(s) => {
            let integrity = s.quick_check().unwrap_or_else(|e| e.to_string());
            let projects = swarm_store::Store::list_projects(&s)
                .map(|p| p.len())
                .unwrap_or(0);
            json!({"path": path.display().to_string(), "projects": projects, "integrity": integrity})
        }
        Err(e) => json!({"path": path.display().to_string(), "error": e.to_string()}),
    }
}

/// How this machine would confine the configured sandbox's commands (what
/// `doctor` and `node info` report).
pub(crate) fn assess_sandbox(
    config: &swarm_config::Config,
) -> (
    swarm_exec::sandbox::SandboxPolicy,
    swarm_exec::sandbox::Assessment,
) {
    let policy = swarm_exec::sandbox::SandboxPolicy {
        mode: config.sandbox.mode,
        mechanism: config.sandbox.mechanism,
        allow_network: config.run.allow_network,
        uid: config.sandbox.uid,
        ..Default::default()
    };
    let assessment = swarm_exec::sandbox::assess_at(
        &policy,
        swarm_exec::sandbox::facilities(),
        &config.data_dir,
    );
    (policy, assessment)
}
