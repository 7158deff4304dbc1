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
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use swarm_config::nodes::Node;

/// What `agentswarm node info --json` prints on a node: enough to decide
/// whether it can run attempts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub version: String,
    pub hostname: String,
    pub cpus: usize,
    /// The sandbox mechanism its commands would run under, and its gaps.
    pub sandbox: String,
    pub sandbox_gaps: Vec<String>,
    /// The memory limiter its workers would run under.
    pub memory_limiter: String,
    pub free_memory_mb: Option<u64>,
    pub load_1m: Option<f64>,
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

/// `ssh` to `node` with the swarm's options; the remote command follows.
fn ssh(node: &Node, control_dir: &Path) -> Command {
    let mut c = Command::new("ssh");
    let opt = |c: &mut Command, o: String| {
        c.arg("-o").arg(o);
    };
    opt(&mut c, "BatchMode=yes".into());
    opt(&mut c, "StrictHostKeyChecking=yes".into());
    opt(&mut c, "ConnectTimeout=10".into());
    opt(&mut c, "ServerAliveInterval=2".into());
    opt(&mut c, "ServerAliveCountMax=3".into());
    opt(&mut c, "ControlMaster=auto".into());
    opt(&mut c, format!("ControlPath={}/%C", control_dir.display()));
    opt(&mut c, "ControlPersist=60".into());
    if let Some(k) = &node.known_hosts_file {
        opt(&mut c, format!("UserKnownHostsFile={}", k.display()));
    }
    if let Some(i) = &node.identity_file {
        c.arg("-i").arg(i);
        opt(&mut c, "IdentitiesOnly=yes".into());
    }
    c.arg("-p").arg(node.port.to_string());
    c.arg("--").arg(&node.ssh);
    c
}

/// The node's binary, quoted for its shell (the config refused quotes).
fn remote_binary(node: &Node) -> String {
    format!("'{}'", node.agentswarm)
}

/// Why an `ssh` run failed, in words that say what to do.
fn ssh_failure(node: &Node, code: Option<i32>, stderr: &str) -> String {
    let host = node.ssh.rsplit('@').next().unwrap_or(&node.ssh);
    let known = node.known_hosts_file.as_ref().map_or_else(
        || "~/.ssh/known_hosts".to_owned(),
        |p| p.display().to_string(),
    );
    let first = stderr
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no message");
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return format!(
            "the host key of {host} does not match the one in {known}: refused. If the node was \
             really reinstalled, check its new key's fingerprint and replace the line"
        );
    }
    if stderr.contains("Host key verification failed") || stderr.contains("No ED25519 host key") {
        return format!(
            "the host key of {host} is not in {known}: refused (host keys are always checked). \
             Check the key's fingerprint on the node (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), \
             then add it: `ssh-keyscan -p {} {host} >> {known}`",
            node.port
        );
    }
    if stderr.contains("Permission denied") {
        return format!(
            "{} refused the key{}: {first}",
            node.ssh,
            node.identity_file
                .as_ref()
                .map(|p| format!(" {}", p.display()))
                .unwrap_or_default()
        );
    }
    if code == Some(255) {
        return format!("cannot reach {host} port {}: {first}", node.port);
    }
    if code == Some(127) || stderr.contains("No such file") || stderr.contains("not found") {
        return format!(
            "agentswarm is not installed on the node at {}: `agentswarm node install {}`",
            node.agentswarm, node.name
        );
    }
    format!(
        "`agentswarm node info` failed on the node ({}): {first}",
        code.map_or("signal".into(), |c| format!("exit code {c}"))
    )
}

/// Asks `node` for its [`NodeInfo`].
pub fn probe(node: &Node, control_dir: &Path) -> std::result::Result<NodeInfo, String> {
    let out = ssh(node, control_dir)
        .arg(format!("{} node info --json", remote_binary(node)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ssh: {e} (install the OpenSSH client)"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(ssh_failure(node, out.status.code(), &stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or("");
    serde_json::from_str(line).map_err(|_| {
        format!(
            "{} on the node did not answer as agentswarm {} does (`node info --json` printed {:?}): `agentswarm node install {}`",
            node.agentswarm,
            env!("CARGO_PKG_VERSION"),
            crate::output::one_line(&stdout, 120),
            node.name
        )
    })
}

/// Where the shared SSH connections' sockets live.
fn control_dir(config: &swarm_config::Config) -> Result<std::path::PathBuf> {
    let dir = config.data_dir.join("ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The sockets are the logged-in connections: this user's alone.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
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
    let mine = env!("CARGO_PKG_VERSION");
    let mut all_ok = true;
    let mut report = Vec::new();
    for node in nodes {
        let result = probe(node, &control).and_then(|info| {
            if info.version == mine {
                Ok(info)
            } else {
                Err(format!(
                    "the node runs agentswarm {}, this supervisor {mine}: `agentswarm node install {}`",
                    info.version, node.name
                ))
            }
        });
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
    let mut child = ssh(node, &control)
        .arg(script)
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
