//! `agentswarm bench --repo-files N`: setting up a project on a generated
//! N-file repository (docs/benchmarks.md). The phases are timed in this
//! process through the engine's own functions (the checks made before a
//! project is stored, the copy of the base commit into a project
//! repository, the repository map and the agent instructions), then the
//! real binary runs `run --repo` against the scripted model and the time
//! from its start to the planner's request — every set-up step of a real
//! run — is measured.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

fn git(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@localhost")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@localhost")
        .stdin(Stdio::null())
        .output()
        .context("cannot run git")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// `files` source files (Python and Rust, a few definitions each) in
/// 3-level directories, a README, a Cargo.toml, an AGENTS.md; one commit.
fn generate(dir: &Path, files: u32) -> Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut bytes = 0u64;
    for i in 0..files {
        let sub = dir.join(format!(
            "pkg{:02}/mod{:02}/part{:02}",
            i % 50,
            (i / 50) % 20,
            (i / 1000) % 50
        ));
        if i < 1000 {
            std::fs::create_dir_all(&sub)?;
        }
        let (name, text) = if i % 2 == 0 {
            (
                format!("f{i}.py"),
                format!(
                    "import os\n\n\nclass Thing{i}:\n    def run(self):\n        return {i}\n\n\ndef helper_{i}(x):\n    return x + {i}\n"
                ),
            )
        } else {
            (
                format!("f{i}.rs"),
                format!(
                    "pub struct Thing{i};\n\nimpl Thing{i} {{\n    pub fn run(&self) -> u32 {{\n        {i}\n    }}\n}}\n\npub fn helper_{i}(x: u32) -> u32 {{\n    x + {i}\n}}\n"
                ),
            )
        };
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(name), &text)?;
        bytes += text.len() as u64;
    }
    std::fs::write(
        dir.join("README.md"),
        "# generated\n\nA generated repository for the benchmark.\n",
    )?;
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"generated\"\nversion = \"0.1.0\"\n",
    )?;
    std::fs::write(dir.join("AGENTS.md"), "Keep changes small.\n")?;
    git(dir, &["init", "-q", "-b", "main"])?;
    git(dir, &["add", "-A"])?;
    git(dir, &["commit", "-q", "-m", "generated"])?;
    Ok(bytes)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

pub async fn repo_case(exe: &Path, home: &Path, files: u32) -> Result<Value> {
    let src = home.join("repo-src");
    let started = Instant::now();
    let bytes = {
        let src = src.clone();
        tokio::task::spawn_blocking(move || generate(&src, files)).await??
    };
    let generate_ms = ms(started);

    // In process: the phases.
    let config = swarm_config::Config::resolve(
        None,
        &|name: &str| match name {
            "AGENTSWARM_HOME" => Some(home.join("inproc").to_string_lossy().into_owned()),
            _ => None,
        },
        &swarm_config::Overrides::default(),
    )?;
    let req = swarm_engine::source::SourceRequest {
        repo: src.to_string_lossy().into_owned(),
        base: None,
        push: false,
    };
    let (check_ms, prepare_ms, map_ms, map_chars, instructions_chars) = {
        let config = config.clone();
        let dest = home.join("inproc/repo");
        tokio::task::spawn_blocking(move || -> Result<(f64, f64, f64, usize, usize)> {
            let t = Instant::now();
            let source = swarm_engine::source::check(&config, &req)?;
            let check_ms = ms(t);
            let t = Instant::now();
            swarm_engine::source::prepare(&config, &source, &dest)?;
            let prepare_ms = ms(t);
            let t = Instant::now();
            let budget = config.repos.map_tokens * swarm_engine::repomap::CHARS_PER_TOKEN;
            let map = swarm_engine::repomap::map(&dest, budget)?;
            let instructions = swarm_engine::repomap::instructions(&dest);
            let map_ms = ms(t);
            Ok((
                check_ms,
                prepare_ms,
                map_ms,
                map.len(),
                instructions.map_or(0, |i| i.len()),
            ))
        })
        .await??
    };

    // End to end: `run --repo` until the planner is asked.
    let scenario = swarm_testkit::Scenario::from_json_str(
        &json!({"planner": [{"content": "no plan: the benchmark stops here"}]}).to_string(),
    )?;
    let server = swarm_testkit::ScriptedServer::start(scenario).await?;
    let dir = home.join("repo-run");
    std::fs::create_dir_all(&dir)?;
    let t = Instant::now();
    let mut child = tokio::process::Command::new(exe);
    child
        .args(["run", "--json", "--max-fix-rounds", "0", "--repo"])
        .arg(&src)
        .arg("bench goal")
        .current_dir(&dir);
    crate::bench::scripted_env(&mut child, &dir, &dir.join("data"), &server);
    let mut child = child
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start agentswarm run --repo")?;
    let deadline = std::time::Duration::from_secs(600);
    let mut asked = false;
    while t.elapsed() < deadline {
        if !server.requests().is_empty() {
            asked = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("run --repo ended ({status}) before it asked the planner");
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let _ = child.kill().await;
    let first = server.requests().into_iter().next();
    server.shutdown().await;
    let Some(first) = first.filter(|_| asked) else {
        bail!(
            "run --repo never asked the planner within {} s",
            deadline.as_secs()
        );
    };
    let to_planner_ms = first.arrived.duration_since(t).as_secs_f64() * 1000.0;
    let planner_request_chars = first.body["messages"][1]["content"]
        .as_str()
        .map_or(0, str::len);

    println!(
        "project set-up on a generated repository ({files} files, {:.1} MB of source, one commit):",
        bytes as f64 / 1e6
    );
    println!("  generate + git commit (not part of set-up): {generate_ms:.0} ms");
    println!("  checks before the project is stored:       {check_ms:.0} ms");
    println!("  project repository from the base commit:   {prepare_ms:.0} ms");
    println!("  repository map + agent instructions:       {map_ms:.0} ms  ({map_chars} characters ≈ {} tokens, budget {} tokens)", map_chars / swarm_engine::repomap::CHARS_PER_TOKEN, config.repos.map_tokens);
    println!("  `run --repo` start → planner request:       {to_planner_ms:.0} ms  (request {planner_request_chars} characters)");
    Ok(json!({
        "files": files,
        "source_bytes": bytes,
        "generate_ms": generate_ms,
        "check_ms": check_ms,
        "prepare_ms": prepare_ms,
        "map_ms": map_ms,
        "map_chars": map_chars,
        "map_budget_tokens": config.repos.map_tokens,
        "instructions_chars": instructions_chars,
        "run_to_planner_ms": to_planner_ms,
        "planner_request_chars": planner_request_chars,
    }))
}
