//! `agentswarm node check|install`: the worker nodes of `[nodes.NAME]`,
//! reached with the system's `ssh` client (docs/scale-out.md).
//!
//! Every connection checks the node's host key strictly against the known
//! hosts file (never `StrictHostKeyChecking=no`), authenticates with a key
//! (`BatchMode`: never a password prompt) and shares one connection per
//! node (`ControlMaster`).

use crate::cli::{Cli, LimitArgs};
use crate::commands::load_config;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::process::{Command, ExitCode, Stdio};
use swarm_config::nodes::Node;
use swarm_engine::nodes::{probe, ssh_argv, ssh_failure, Master};
use swarm_protocol::node::NodeInfo;

/// `ssh` to `node` with the swarm's options, running `remote` there.
fn ssh(node: &Node, control_dir: &std::path::Path, remote: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args(ssh_argv(node, control_dir, Master::Auto, remote));
    c
}

/// This machine's [`NodeInfo`] (`agentswarm node info`, run by `check` on
/// the node).
pub fn info(cli: &Cli, json: bool) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let (_, assessment) = crate::doctor::assess_sandbox(&config);
    let readings = swarm_engine::gate::Gate::from_config(&config)
        .readings()
        .ok();
    let info = NodeInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        sandbox: assessment.mechanism_name().to_owned(),
        sandbox_gaps: assessment.gaps.clone(),
        memory_limiter: swarm_engine::memory_limiter(&config)
            .mechanism()
            .as_str()
            .to_owned(),
        free_memory_mb: readings.map(|r| r.available_mb),
        load_1m: readings.map(|r| r.load1),
        home: std::env::var_os("HOME").map(std::path::PathBuf::from),
        git: Command::new("git")
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
    };
    if json {
        println!("{}", serde_json::to_string(&info)?);
    } else {
        println!("{}", describe(&info));
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(i: &NodeInfo) -> String {
    let mut s = format!(
        "agentswarm {} on {} ({} CPUs): sandbox {}, memory limiter {}",
        i.version, i.hostname, i.cpus, i.sandbox, i.memory_limiter
    );
    if let (Some(m), Some(l)) = (i.free_memory_mb, i.load_1m) {
        s.push_str(&format!(", free memory {m} MB, load {l:.2}"));
    }
    if !i.sandbox_gaps.is_empty() {
        s.push_str(&format!(" (sandbox gaps: {})", i.sandbox_gaps.join("; ")));
    }
    s
}

/// Where the shared SSH connections' sockets live.
fn control_dir(config: &swarm_config::Config) -> Result<std::path::PathBuf> {
    let dir = config.data_dir.join("ssh");
    // The sockets are the logged-in connections: this user's alone.
    swarm_engine::nodes::make_private_dir(&dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn chosen<'a>(config: &'a swarm_config::Config, name: Option<&str>) -> Result<Vec<&'a Node>> {
    match name {
        None if config.nodes.is_empty() => bail!(
            "no nodes are configured: add [nodes.NAME] tables to agentswarm.toml (docs/scale-out.md)"
        ),
        None => Ok(config.nodes.iter().collect()),
        Some(n) => match config.nodes.iter().find(|x| x.name == n) {
            Some(x) => Ok(vec![x]),
            None => bail!(
                "no node {n} in the config; the nodes are: {}",
                config
                    .nodes
                    .iter()
                    .map(|x| x.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// `agentswarm node check [NAME]`: connects to each node, compares its
/// version with this one's and shows what it offers. Exit 1 if any is not
/// ready.
pub fn check(cli: &Cli, name: Option<&str>, json: bool) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let nodes = chosen(&config, name)?;
    let control = control_dir(&config)?;
    let mut all_ok = true;
    let mut report = Vec::new();
    for node in nodes {
        let result = probe(node, &control, Master::Auto)
            .and_then(|info| swarm_engine::nodes::usable(node, &info).map(|()| info));
        all_ok &= result.is_ok();
        if json {
            report.push(match &result {
                Ok(info) => serde_json::json!({"node": node.name, "ok": true, "slots": node.max_workers, "labels": node.labels, "info": info}),
                Err(e) => serde_json::json!({"node": node.name, "ok": false, "error": e}),
            });
        } else {
            match &result {
                Ok(info) => println!(
                    "{} ({}): ready — {}; {} slot(s){}",
                    node.name,
                    node.ssh,
                    describe(info),
                    node.max_workers,
                    if node.labels.is_empty() {
                        String::new()
                    } else {
                        format!(", labels {}", node.labels.join(", "))
                    }
                ),
                Err(e) => println!("{} ({}): NOT READY — {e}", node.name, node.ssh),
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(report));
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `agentswarm node install NAME`: copies this binary to the node (to a
/// temporary name, then renamed: a worker starting meanwhile never runs a
/// half-written file), then checks it.
pub fn install(cli: &Cli, name: &str) -> Result<ExitCode> {
    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let node = chosen(&config, Some(name))?[0];
    let control = control_dir(&config)?;
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let bytes = std::fs::read(&exe).with_context(|| format!("cannot read {}", exe.display()))?;
    let target = &node.agentswarm;
    let script = format!(
        "set -e; t='{target}'; mkdir -p \"$(dirname \"$t\")\"; cat > \"$t.tmp.$$\"; chmod 755 \"$t.tmp.$$\"; mv -f \"$t.tmp.$$\" \"$t\""
    );
    let mut child = ssh(node, &control, &script)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ssh (install the OpenSSH client)")?;
    if let Some(mut stdin) = child.stdin.take() {
        // A failed write shows as ssh's own error below.
        let _ = stdin.write_all(&bytes);
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let why = ssh_failure(
            node,
            out.status.code(),
            &String::from_utf8_lossy(&out.stderr),
        );
        bail!("cannot install agentswarm on {}: {why}", node.name);
    }
    println!(
        "installed {} ({} MB) on {} at {target}",
        exe.display(),
        bytes.len() >> 20,
        node.name
    );
    check(cli, Some(name), false)
}

/// How a node's attempt ended, as `node worker` saw it.
enum HostEnd {
    /// The worker exited by itself (after its result, or not).
    Exited,
    /// The supervisor went away or went silent: the worker's tree is ended.
    Gone(String),
    /// The tree went over its memory limit (already reported).
    OverMemory,
}

/// `agentswarm node worker` (internal; run on a node over SSH by the
/// supervisor): runs one `agentswarm worker` in this machine's own memory
/// limiter, relays its channel, and keeps the heartbeat both ways. When the
/// supervisor's side goes quiet for `lost_after` seconds, or its channel
/// closes (the supervisor stopped, or the link is gone), the worker's whole
/// tree is ended: nothing is left running on the node.
pub async fn worker_host(
    cli: &Cli,
    memory_mb: u64,
    lost_after: u64,
    grace_secs: u64,
) -> Result<ExitCode> {
    use nix::sys::signal::Signal;
    use swarm_protocol::worker::{FromWorker, ToWorker, HEARTBEAT_SECS};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let config = load_config(cli, &LimitArgs::default(), None, None)?;
    let limiter = swarm_engine::memory_limiter(&config);
    let mut from_supervisor = BufReader::new(tokio::io::stdin()).lines();
    let mut to_supervisor = tokio::io::stdout();
    let first = from_supervisor
        .next_line()
        .await?
        .context("the supervisor sent no start message")?;
    let start = match serde_json::from_str::<ToWorker>(&first) {
        Ok(ToWorker::Start(s)) => s,
        _ => bail!("the supervisor's first message is not a start message"),
    };
    let worktrees = start
        .worktree
        .parent()
        .context("the worktree has no parent directory")?
        .to_owned();
    std::fs::create_dir_all(&worktrees)
        .with_context(|| format!("cannot create {}", worktrees.display()))?;
    let enclosure = std::sync::Arc::new(limiter.enclose(memory_mb << 20).with_context(|| {
        format!(
            "cannot set up the memory limit ({})",
            limiter.mechanism().as_str()
        )
    })?);
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let opts = swarm_exec::SpawnOptions {
        cwd: Some(worktrees),
        env: Vec::new(),
        stderr: swarm_exec::ChildStderr::Inherit,
        enclosure: Some(enclosure.clone()),
    };
    let mut child = swarm_exec::spawn_child(&exe, &["worker".into()], &opts)?;
    let pid = child.pid();
    let (Some(mut to_worker), Some(worker_out)) = (child.stdin.take(), child.stdout.take()) else {
        bail!("the worker has no stdio pipes");
    };
    let mut from_worker = BufReader::new(worker_out).lines();
    let line = |msg: &FromWorker| -> Vec<u8> {
        let mut l = serde_json::to_vec(msg).unwrap_or_default();
        l.push(b'\n');
        l
    };
    to_worker.write_all(first.as_bytes()).await?;
    to_worker.write_all(b"\n").await?;
    to_worker.flush().await?;

    let lost_after = std::time::Duration::from_secs(lost_after);
    let mut heard = tokio::time::Instant::now();
    let every = std::time::Duration::from_secs(HEARTBEAT_SECS);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let end = loop {
        tokio::select! {
            l = from_supervisor.next_line() => match l {
                Ok(Some(l)) => {
                    heard = tokio::time::Instant::now();
                    if l == swarm_protocol::worker::HEARTBEAT_LINE {
                        continue;
                    }
                    let sent = async {
                        to_worker.write_all(l.as_bytes()).await?;
                        to_worker.write_all(b"\n").await?;
                        to_worker.flush().await
                    };
                    // A worker that stopped reading has ended; its exit shows below.
                    let _ = sent.await;
                }
                _ => break HostEnd::Gone("the supervisor's channel closed".into()),
            },
            l = from_worker.next_line() => match l {
                Ok(Some(l)) => {
                    // The commits go first, over this channel, so that the
                    // supervisor needs no second connection to fetch them.
                    if let Some(commits) = commits_of(&start, &l).await {
                        let sent = async {
                            to_supervisor.write_all(&line(&commits)).await?;
                            to_supervisor.flush().await
                        };
                        if sent.await.is_err() {
                            break HostEnd::Gone("the supervisor's channel closed".into());
                        }
                    }
                    let sent = async {
                        to_supervisor.write_all(l.as_bytes()).await?;
                        to_supervisor.write_all(b"\n").await?;
                        to_supervisor.flush().await
                    };
                    if sent.await.is_err() {
                        break HostEnd::Gone("the supervisor's channel closed".into());
                    }
                }
                _ => break HostEnd::Exited,
            },
            _ = tick.tick() => {
                if let Some(reason) = enclosure.over_limit() {
                    let _ = to_supervisor.write_all(&line(&FromWorker::OverMemory { reason })).await;
                    let _ = to_supervisor.flush().await;
                    break HostEnd::OverMemory;
                }
                if heard.elapsed() > lost_after {
                    break HostEnd::Gone(format!(
                        "no heartbeat from the supervisor for {} s",
                        lost_after.as_secs()
                    ));
                }
                let beat = async {
                    to_supervisor.write_all(&line(&FromWorker::Heartbeat)).await?;
                    to_supervisor.flush().await
                };
                if beat.await.is_err() {
                    break HostEnd::Gone("the supervisor's channel closed".into());
                }
            }
        }
    };
    drop(to_worker);
    let status = match end {
        HostEnd::Exited => child.wait().await.ok(),
        HostEnd::Gone(why) => {
            eprintln!("agentswarm node worker: {why}: ending the worker's tree");
            let grace = std::time::Duration::from_secs(grace_secs);
            let _ = swarm_exec::signal_group(pid, Signal::SIGTERM);
            enclosure.signal_all(Signal::SIGTERM);
            match tokio::time::timeout(grace, child.wait()).await {
                Ok(s) if enclosure.pids().is_empty() => s.ok(),
                _ => {
                    let _ = swarm_exec::signal_group(pid, Signal::SIGKILL);
                    enclosure.signal_all(Signal::SIGKILL);
                    child.wait().await.ok()
                }
            }
        }
        HostEnd::OverMemory => {
            let _ = swarm_exec::signal_group(pid, Signal::SIGKILL);
            enclosure.signal_all(Signal::SIGKILL);
            child.wait().await.ok()
        }
    };
    // What the worker's commands left (a `setsid` daemon) goes too.
    enclosure.signal_all(Signal::SIGKILL);
    enclosure.release();
    // The worktree goes (symlink-safe, as the supervisor removes its own:
    // not `git worktree remove`, which walks by path what the attempt
    // wrote); its branch stays in the cache repository until the supervisor
    // has fetched it.
    if !start.repo.as_os_str().is_empty() {
        let (repo, worktree) = (start.repo.clone(), start.worktree.clone());
        let removed = tokio::task::spawn_blocking(move || {
            swarm_git::Repo::open(&repo).and_then(|r| r.remove_worktree(&worktree))
        })
        .await;
        if let Ok(Err(e)) = removed {
            eprintln!("agentswarm node worker: cannot remove the worktree: {e}");
        }
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(match status {
        Some(s) if s.success() => ExitCode::SUCCESS,
        Some(s) => {
            if let Some(sig) = s.signal() {
                eprintln!("agentswarm node worker: the worker was killed by signal {sig}");
            }
            ExitCode::from(
                u8::try_from(s.code().unwrap_or(128 + s.signal().unwrap_or(0))).unwrap_or(1),
            )
        }
        None => ExitCode::from(1),
    })
}

/// Bundles bigger than this go by `git fetch` over a connection of their own.
const BUNDLE_MAX: usize = swarm_protocol::worker::BUNDLE_MAX_BYTES;

/// When `line` is the worker's `Finished` with a commit: the task branch's
/// commits over the attempt's base as a git bundle, for the channel.
async fn commits_of(
    start: &swarm_protocol::worker::WorkerStart,
    line: &str,
) -> Option<swarm_protocol::worker::FromWorker> {
    use base64::Engine as _;
    use swarm_protocol::worker::{FromWorker, WorktreeSetup};
    let WorktreeSetup::Create { repo, branch, base } = &start.setup else {
        return None;
    };
    // Only the one `Finished` line is parsed, not every relayed one.
    if !line.starts_with(r#"{"type":"finished""#) {
        return None;
    }
    match serde_json::from_str::<FromWorker>(line).ok()? {
        FromWorker::Finished { commit, .. } if !commit.is_empty() => {}
        _ => return None,
    }
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["bundle", "create", "--quiet", "-"])
        .arg(format!("refs/heads/{branch}"))
        .arg(format!("^{base}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await
        .ok()?;
    if !out.status.success() || out.stdout.is_empty() || out.stdout.len() > BUNDLE_MAX {
        return None;
    }
    Some(FromWorker::Commits {
        branch: branch.clone(),
        bundle: base64::engine::general_purpose::STANDARD.encode(&out.stdout),
    })
}
