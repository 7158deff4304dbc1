//! Worker nodes (docs/scale-out.md): the machines attempts run on — this
//! one (`local`) and the `[nodes.NAME]` reached over SSH — their slots,
//! their state as their channels report it, and placement.
//!
//! Every SSH connection goes through the system's `ssh` client with strict
//! host-key checking, key authentication only (`BatchMode`) and one shared
//! connection per node (`ControlMaster`): the supervisor keeps a master
//! connection per node as its own child, and every attempt's channel, git
//! transfer and probe is a session on it.

use crate::gate::{Gate, Readings};
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use swarm_config::nodes::{Node, LOCAL};
use swarm_protocol::node::NodeInfo;
use swarm_protocol::ProjectId;
use tokio_util::sync::CancellationToken;

/// Seconds between two probes of a node (`agentswarm node info` over its
/// master connection): its version, free memory and load.
const PROBE_EVERY: Duration = Duration::from_secs(3);

/// The options every `ssh` to `node` takes, before the destination.
pub fn ssh_options(node: &Node, control_dir: &Path, master: Master) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        a.push("-o".into());
        a.push(o.into());
    };
    opt("BatchMode=yes".into());
    opt("StrictHostKeyChecking=yes".into());
    opt("ConnectTimeout=10".into());
    opt(format!(
        "ServerAliveInterval={}",
        swarm_protocol::worker::HEARTBEAT_SECS
    ));
    opt("ServerAliveCountMax=3".into());
    opt(format!("ControlPath={}/%C", control_dir.display()));
    match master {
        Master::Auto => {
            opt("ControlMaster=auto".into());
            opt("ControlPersist=60".into());
        }
        Master::Own => {
            opt("ControlMaster=yes".into());
            opt("ControlPersist=no".into());
        }
        Master::Use => opt("ControlMaster=no".into()),
    }
    if let Some(k) = &node.known_hosts_file {
        opt(format!("UserKnownHostsFile={}", k.display()));
    }
    if let Some(i) = &node.identity_file {
        a.push("-i".into());
        a.push(i.into());
        a.push("-o".into());
        a.push("IdentitiesOnly=yes".into());
    }
    a
}

/// How an `ssh` relates to the node's shared connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Master {
    /// Share one if there is one, else become it and linger 60 s (the
    /// `node` commands, which run once and exit).
    Auto,
    /// Be the master, in the foreground, for as long as the process runs
    /// (the supervisor's own, one per node).
    Own,
    /// A session on the master (a direct connection if there is none).
    Use,
}

/// `ssh` argv to run `remote` (a shell command line) on `node`.
pub fn ssh_argv(node: &Node, control_dir: &Path, master: Master, remote: &str) -> Vec<OsString> {
    let mut a = ssh_options(node, control_dir, master);
    a.push("-p".into());
    a.push(node.port.to_string().into());
    a.push("--".into());
    a.push(node.ssh.clone().into());
    a.push(remote.into());
    a
}

/// `GIT_SSH_COMMAND` for git transfers to `node` over its shared
/// connection (git adds the port, the destination and its command).
pub fn git_ssh_command(node: &Node, control_dir: &Path) -> String {
    let mut s = String::from("ssh");
    for a in ssh_options(node, control_dir, Master::Use) {
        s.push(' ');
        s.push_str(&shell_quote(&a.to_string_lossy()));
    }
    s
}

/// `s` as one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@%,+".contains(c))
    {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Why an `ssh` run failed, in words that say what to do.
pub fn ssh_failure(node: &Node, code: Option<i32>, stderr: &str) -> String {
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

/// The node's binary, quoted for its shell (the config refused quotes).
pub fn remote_binary(node: &Node) -> String {
    format!("'{}'", node.agentswarm)
}

/// Asks `node` for its [`NodeInfo`] (blocking: one `ssh` run).
pub fn probe(node: &Node, control_dir: &Path, master: Master) -> Result<NodeInfo, String> {
    let argv = ssh_argv(
        node,
        control_dir,
        master,
        &format!("{} node info --json", remote_binary(node)),
    );
    let opts = swarm_exec::RunOptions {
        env: ssh_env(),
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let out = swarm_exec::run("ssh", &argv, &opts)
        .map_err(|e| format!("cannot run ssh: {e} (install the OpenSSH client)"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.exit.success() {
        return Err(ssh_failure(node, out.exit.code, &stderr));
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
            crate::wording::truncate(stdout.trim(), 120),
            node.name
        )
    })
}

/// Whether `info` is a node this supervisor can run attempts on.
pub fn usable(node: &Node, info: &NodeInfo) -> Result<(), String> {
    let mine = env!("CARGO_PKG_VERSION");
    if info.version != mine {
        return Err(format!(
            "the node runs agentswarm {}, this supervisor {mine}: `agentswarm node install {}`",
            info.version, node.name
        ));
    }
    if info.git.is_none() {
        return Err(format!(
            "git is not installed on the node (attempts need it there): install git on {}",
            node.name
        ));
    }
    Ok(())
}

impl NodeEntry {
    /// Whether it carries every label of `needs`.
    fn offers(&self, needs: &[String]) -> bool {
        needs.iter().all(|n| self.labels.contains(n))
    }
}

/// A remote node as the supervisor sees it now.
#[derive(Debug, Clone)]
enum Health {
    /// Not probed yet.
    Unknown,
    /// Answered the last probe and can run attempts.
    Up(Box<NodeInfo>),
    /// Answers, but cannot run attempts (another version, no git): not
    /// used until that changes.
    Refused(String),
    /// Does not answer (or lost its channel): not used until it does.
    Down(String),
}

/// A worker node: `local`, or one reached over SSH.
pub struct NodeEntry {
    pub name: String,
    /// Attempts it runs at once (`MAX_CONCURRENT_WORKERS` for `local`).
    pub slots: u32,
    /// What it offers (`labels`), for tasks that require some.
    pub labels: Vec<String>,
    busy: AtomicU32,
    /// `None` for `local`.
    remote: Option<Arc<RemoteNode>>,
}

/// A node over SSH: its configuration, health and shared connection.
pub struct RemoteNode {
    pub node: Node,
    control_dir: PathBuf,
    health: Mutex<Health>,
    /// The supervisor's master connection to it.
    master: Mutex<Option<swarm_exec::ChildProcess>>,
    /// Per project: the `main` commit the node's cache repository has
    /// (pushes to one node and project go one at a time).
    synced: tokio::sync::Mutex<HashMap<ProjectId, String>>,
}

impl std::fmt::Debug for RemoteNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteNode({})", self.node.name)
    }
}

impl RemoteNode {
    /// The node's info from its last probe, if it is up.
    pub fn info(&self) -> Option<NodeInfo> {
        match &*self.health.lock().unwrap_or_else(|e| e.into_inner()) {
            Health::Up(i) => Some((**i).clone()),
            _ => None,
        }
    }

    /// `ssh` argv for a session running `remote` there.
    pub fn ssh_argv(&self, remote: &str) -> Vec<OsString> {
        ssh_argv(&self.node, &self.control_dir, Master::Use, remote)
    }

    /// Where the node keeps its caches and worktrees.
    pub fn work_dir(&self) -> Option<PathBuf> {
        if let Some(w) = &self.node.work_dir {
            return Some(PathBuf::from(w));
        }
        self.info()?
            .home
            .map(|h| h.join(".cache").join("agentswarm-node"))
    }

    /// The project's cache repository on the node.
    pub fn repo_for(&self, project: &ProjectId) -> Option<PathBuf> {
        Some(self.work_dir()?.join(project.as_str()).join("repo"))
    }

    fn git_url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}:{}{}",
            self.node.ssh,
            self.node.port,
            repo.display()
        )
    }

    /// Takes the node out of placement: its channel or a transfer failed.
    pub fn mark_down(&self, reason: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if !matches!(*h, Health::Down(_)) {
            tracing::warn!(node = %self.node.name, %reason, "node lost; its attempts run elsewhere until it answers again");
        }
        *h = Health::Down(reason.to_owned());
        // A new master is made at the next probe.
        if let Some(mut m) = self.master.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = m.start_kill();
        }
    }

    /// The commit of the supervisor's repository at `repo_root` an attempt
    /// on this node starts from, in the node's cache repository of
    /// `project` (made on first use): the `main` the node has already when
    /// it holds every commit in `needs` (the merges of the task's
    /// dependencies), else `head`, pushed there over the shared connection.
    /// Pushes to one node go one at a time, and an attempt that waited for
    /// another's push mostly finds what it needs there: a wide plan costs a
    /// push per wave, not per task.
    pub async fn sync_base(
        &self,
        project: &ProjectId,
        repo_root: &Path,
        head: &str,
        needs: &[String],
    ) -> Result<(PathBuf, String), String> {
        let remote_repo = self
            .repo_for(project)
            .ok_or_else(|| format!("node {} has not answered yet", self.node.name))?;
        let mut synced = self.synced.lock().await;
        // Another attempt found it gone while this one waited.
        if let Health::Down(why) = &*self.health.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(why.clone());
        }
        if let Some(have) = synced.get(project) {
            if have == head || contains_all(repo_root, have, needs).await {
                return Ok((remote_repo, have.clone()));
            }
        }
        let base = head;
        if !synced.contains_key(project) {
            // `git init` of an existing repository changes nothing. Without
            // reflogs, as the project's own repository (`Repo::init`): the
            // worker's confined libgit2 helper needs that (docs/git.md).
            let q = shell_quote(&remote_repo.to_string_lossy());
            let script = format!(
                "mkdir -p {q} && git init -q {q} && git -C {q} config core.logAllRefUpdates false"
            );
            run_quiet(
                "ssh",
                &self.ssh_argv(&script),
                &[],
                "cannot make the node's cache repository",
            )
            .await?;
        }
        let git_ssh = git_ssh_command(&self.node, &self.control_dir);
        let argv: Vec<OsString> = vec![
            "-C".into(),
            repo_root.into(),
            "push".into(),
            "--quiet".into(),
            "--force".into(),
            "--no-verify".into(),
            self.git_url(&remote_repo).into(),
            format!("{base}:refs/swarm/main").into(),
        ];
        run_quiet(
            "git",
            &argv,
            &[("GIT_SSH_COMMAND", git_ssh.as_str())],
            "cannot send main to the node",
        )
        .await?;
        synced.insert(project.clone(), base.to_owned());
        Ok((remote_repo, base.to_owned()))
    }

    /// Brings the node's `branch` back into the supervisor's repository at
    /// `repo_root`, from `bundle` (what the node sent over the attempt's
    /// channel) or else over the shared connection; `commit` is what the
    /// worker said it committed. Everything it takes is the node's, so it
    /// takes it guarded (`from_node`).
    pub async fn fetch_branch(
        &self,
        project: &ProjectId,
        repo_root: &Path,
        branch: &str,
        commit: &str,
        bundle: Option<&Path>,
    ) -> Result<(), String> {
        let url = match bundle {
            Some(_) => None,
            None => Some(
                self.git_url(
                    &self
                        .repo_for(project)
                        .ok_or_else(|| format!("node {} is not up", self.node.name))?,
                ),
            ),
        };
        let git_ssh = git_ssh_command(&self.node, &self.control_dir);
        let (repo_root, branch, commit) =
            (repo_root.to_owned(), branch.to_owned(), commit.to_owned());
        let bundle = bundle.map(Path::to_owned);
        tokio::task::spawn_blocking(move || {
            let source = match (&bundle, url) {
                (Some(b), _) => crate::from_node::Source::Bundle(b),
                (None, Some(url)) => crate::from_node::Source::Ssh { url, git_ssh },
                (None, None) => return Err("no source for the attempt's commits".to_owned()),
            };
            crate::from_node::fetch_commits(
                &repo_root,
                &source,
                &branch,
                &commit,
                crate::from_node::Guards::ALL,
            )
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// One probe: makes the master connection if there is none, then asks
    /// the node for its info and updates its health.
    async fn poll(self: &Arc<Self>) {
        self.ensure_master().await;
        let me = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            probe(&me.node, &me.control_dir, Master::Use)
                .and_then(|i| usable(&me.node, &i).map(|()| i))
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let was_up = matches!(*h, Health::Up(_));
        *h = match result {
            Ok(info) => {
                if !was_up {
                    tracing::info!(node = %self.node.name, version = %info.version, sandbox = %info.sandbox, "node ready");
                }
                Health::Up(Box::new(info))
            }
            // What only the operator can change: another version, no git,
            // a host key that is not the one expected.
            Err(e)
                if e.contains("supervisor")
                    || e.contains("git is not installed")
                    || e.contains("host key") =>
            {
                Health::Refused(e)
            }
            Err(e) => {
                if was_up {
                    tracing::warn!(node = %self.node.name, error = %e, "node stopped answering");
                }
                Health::Down(e)
            }
        };
    }

    /// Starts the supervisor's master connection to the node, unless one
    /// runs. It is this process's child (it dies with it) and is killed
    /// when the engine is dropped.
    async fn ensure_master(&self) {
        {
            let mut m = self.master.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(child) = m.as_mut() {
                if matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                *m = None;
            }
        }
        let mut argv = ssh_options(&self.node, &self.control_dir, Master::Own);
        argv.extend(["-N".into(), "-n".into(), "-p".into()]);
        argv.push(self.node.port.to_string().into());
        argv.push("--".into());
        argv.push(self.node.ssh.clone().into());
        let opts = swarm_exec::SpawnOptions {
            cwd: None,
            env: ssh_env(),
            stderr: swarm_exec::ChildStderr::Null,
            enclosure: None,
        };
        match swarm_exec::spawn_child(Path::new("ssh"), &argv, &opts) {
            Ok(child) => {
                // Wait (briefly) for the socket, so the probe rides on it.
                let socket_dir = self.control_dir.clone();
                let before = std::fs::read_dir(&socket_dir)
                    .map(|d| d.count())
                    .unwrap_or(0);
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until
                    && std::fs::read_dir(&socket_dir)
                        .map(|d| d.count())
                        .unwrap_or(0)
                        <= before
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                *self.master.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
            }
            Err(e) => tracing::warn!(node = %self.node.name, error = %e, "cannot start ssh"),
        }
    }
}

/// Whether `commit` of the repository at `repo` has every commit of `needs`
/// in its history (`git merge-base --is-ancestor`; no: on any doubt).
async fn contains_all(repo: &Path, commit: &str, needs: &[String]) -> bool {
    for need in needs {
        let argv: Vec<OsString> = vec![
            "-C".into(),
            repo.into(),
            "merge-base".into(),
            "--is-ancestor".into(),
            need.into(),
            commit.into(),
        ];
        if run_quiet("git", &argv, &[], "git merge-base")
            .await
            .is_err()
        {
            return false;
        }
    }
    true
}

/// What `ssh` needs of this process's environment beyond the allow-listed
/// variables: the operator's agent, when keys are held there.
pub fn ssh_env() -> Vec<(OsString, OsString)> {
    std::env::var_os("SSH_AUTH_SOCK")
        .map(|v| vec![(OsString::from("SSH_AUTH_SOCK"), v)])
        .unwrap_or_default()
}

/// A transfer or a command on a node takes at most this long.
pub(crate) const TRANSFER_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `program argv` to its end (a registered child of this process, with
/// the allow-listed environment plus `env`); its stdout, or `Err(what:
/// last line of stderr)`.
async fn run_quiet(
    program: &str,
    argv: &[OsString],
    env: &[(&str, &str)],
    what: &str,
) -> Result<String, String> {
    let mut opts = swarm_exec::RunOptions {
        env: ssh_env(),
        timeout: Some(TRANSFER_TIMEOUT),
        ..Default::default()
    };
    opts.env.extend(
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v))),
    );
    let (program, argv) = (program.to_owned(), argv.to_vec());
    let out = tokio::task::spawn_blocking(move || swarm_exec::run(&program, &argv, &opts))
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .map_err(|e| format!("{what}: {e}"))?;
    stdout_or_last_error(&out, what)
}

/// A finished command's stdout, or `Err(what: the last line of its
/// stderr)` when it failed.
pub(crate) fn stdout_or_last_error(
    out: &swarm_exec::Captured,
    what: &str,
) -> Result<String, String> {
    if out.exit.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("no message");
    Err(format!("{what}: {last}"))
}

/// Why no node takes an attempt now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unplaced {
    /// Every node that could take it is busy (or down).
    Full,
    /// The nodes with a free slot have their resource gate closed: why.
    Gated(String),
}

/// A slot on a node, held while an attempt (or verify) runs there.
pub struct NodeLease {
    entry: Arc<NodeEntry>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl NodeLease {
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// The node over SSH; `None`: this machine.
    pub fn remote(&self) -> Option<&Arc<RemoteNode>> {
        self.entry.remote.as_ref()
    }
}

impl std::fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeLease({})", self.entry.name)
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        self.entry.busy.fetch_sub(1, Ordering::AcqRel);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A node as `status`, the API and `/metrics` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    pub name: String,
    /// `user@host`; empty for `local`.
    pub address: String,
    pub slots: u32,
    pub busy: u32,
    /// `up`, `down`, `refused` or `connecting`.
    pub state: String,
    /// Why it is down or refused.
    pub reason: Option<String>,
    /// Its resource gate from its last readings: why closed, if so.
    pub gate: Option<String>,
    pub free_memory_mb: Option<u64>,
    pub load_1m: Option<f64>,
    pub sandbox: Option<String>,
    pub memory_limiter: Option<String>,
    pub labels: Vec<String>,
}

/// `local` and the configured nodes, with their slots.
pub struct NodeSet {
    entries: Vec<Arc<NodeEntry>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    cancel: CancellationToken,
}

impl NodeSet {
    /// `local` with `local_slots`, and `nodes`; their connections' sockets
    /// under `control_dir` (made mode 700 on first use).
    pub fn new(
        local_slots: u32,
        local_labels: &[String],
        nodes: &[Node],
        control_dir: PathBuf,
    ) -> Self {
        let mut entries = vec![Arc::new(NodeEntry {
            name: LOCAL.to_owned(),
            slots: local_slots,
            labels: local_labels.to_vec(),
            busy: AtomicU32::new(0),
            remote: None,
        })];
        for n in nodes {
            entries.push(Arc::new(NodeEntry {
                name: n.name.clone(),
                slots: n.max_workers,
                labels: n.labels.clone(),
                busy: AtomicU32::new(0),
                remote: Some(Arc::new(RemoteNode {
                    node: n.clone(),
                    control_dir: control_dir.clone(),
                    health: Mutex::new(Health::Unknown),
                    master: Mutex::new(None),
                    synced: tokio::sync::Mutex::new(HashMap::new()),
                })),
            }));
        }
        Self {
            entries,
            changed: Arc::new(tokio::sync::watch::channel(0).0),
            cancel: CancellationToken::new(),
        }
    }

    /// Slots over all nodes.
    pub fn total_slots(&self) -> u32 {
        self.entries.iter().map(|e| e.slots).sum()
    }

    /// The nodes over SSH that answered their last probe.
    pub fn up_remotes(&self) -> Vec<Arc<RemoteNode>> {
        self.entries
            .iter()
            .filter_map(|e| e.remote.clone())
            .filter(|r| r.info().is_some())
            .collect()
    }

    pub fn has_remote(&self) -> bool {
        self.entries.len() > 1
    }

    /// Starts probing every remote node (every 3 s) until the set is
    /// dropped. Needs a tokio runtime; without remote nodes it does nothing.
    pub fn start(&self) {
        let remotes: Vec<Arc<RemoteNode>> = self
            .entries
            .iter()
            .filter_map(|e| e.remote.clone())
            .collect();
        if remotes.is_empty() {
            return;
        }
        if let Some(dir) = remotes.first().map(|r| r.control_dir.clone()) {
            if let Err(e) = make_private_dir(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot make the ssh control directory");
            }
        }
        for r in remotes {
            let cancel = self.cancel.clone();
            let changed = self.changed.clone();
            tokio::spawn(async move {
                loop {
                    r.poll().await;
                    // A node coming up frees slots for the waiting runs.
                    changed.send_modify(|n| *n = n.wrapping_add(1));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(PROBE_EVERY) => {}
                    }
                }
                if let Some(mut m) = r.master.lock().unwrap_or_else(|e| e.into_inner()).take() {
                    let _ = m.start_kill();
                }
            });
        }
    }

    /// Probes every remote node once now (a run's start waits for this, so
    /// its first tasks can go to the nodes).
    pub async fn probe_all(&self) {
        let mut polls = tokio::task::JoinSet::new();
        for r in self.entries.iter().filter_map(|e| e.remote.clone()) {
            polls.spawn(async move { r.poll().await });
        }
        while polls.join_next().await.is_some() {}
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Changes whenever a slot frees or a node's health changes.
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The tasks of `requires` (a task and the labels its node must carry)
    /// that no node can take, each said with what it needs.
    pub fn unplaceable(
        &self,
        requires: &HashMap<swarm_protocol::TaskId, Vec<String>>,
    ) -> Vec<String> {
        let mut out: Vec<String> = requires
            .iter()
            .filter(|(_, needs)| !self.entries.iter().any(|e| e.offers(needs)))
            .map(|(task, needs)| {
                format!("task {task} requires a node labelled {}", needs.join(", "))
            })
            .collect();
        out.sort();
        out
    }

    /// A slot for an attempt, on the node with the largest share of free
    /// slots that carries every label of `requires` and, when the attempt's
    /// agent is an outside `agent`, is this machine or a node that carries
    /// its name among its labels. `local_gate`: this machine's gate, read
    /// once by the caller.
    pub fn place(
        &self,
        agent: Option<&str>,
        requires: &[String],
        local_gate: &Result<(), String>,
        gate: &Gate,
    ) -> Result<NodeLease, Unplaced> {
        let mut best: Option<(&Arc<NodeEntry>, f64)> = None;
        let mut gated = Vec::new();
        for e in &self.entries {
            let busy = e.busy.load(Ordering::Acquire);
            if busy >= e.slots || !e.offers(requires) {
                continue;
            }
            match &e.remote {
                None => {
                    if let Err(why) = local_gate {
                        gated.push(if self.has_remote() {
                            format!("{LOCAL}: {why}")
                        } else {
                            why.clone()
                        });
                        continue;
                    }
                }
                Some(r) => {
                    if agent.is_some_and(|a| !r.node.labels.iter().any(|l| l == a)) {
                        continue;
                    }
                    let Some(info) = r.info() else { continue };
                    if let (Some(m), Some(l)) = (info.free_memory_mb, info.load_1m) {
                        let readings = Readings {
                            available_mb: m,
                            load1: l,
                        };
                        if let Err(why) = gate.judge(&readings) {
                            gated.push(format!("{}: {why}", e.name));
                            continue;
                        }
                    }
                }
            }
            let free = f64::from(e.slots - busy) / f64::from(e.slots);
            if best.is_none_or(|(_, f)| free > f) {
                best = Some((e, free));
            }
        }
        match best {
            Some((e, _)) => {
                e.busy.fetch_add(1, Ordering::AcqRel);
                Ok(NodeLease {
                    entry: e.clone(),
                    changed: self.changed.clone(),
                })
            }
            None if !gated.is_empty() => Err(Unplaced::Gated(gated.join("; "))),
            None => Err(Unplaced::Full),
        }
    }

    /// A slot on this machine (verify runs here), whatever its gate says.
    pub fn place_local(&self) -> NodeLease {
        let e = &self.entries[0];
        e.busy.fetch_add(1, Ordering::AcqRel);
        NodeLease {
            entry: e.clone(),
            changed: self.changed.clone(),
        }
    }

    /// The nodes as they stand, `local` first.
    pub fn status(&self, local_gate: &crate::gate::GateStatus, gate: &Gate) -> Vec<NodeStatus> {
        self.entries
            .iter()
            .map(|e| {
                let busy = e.busy.load(Ordering::Acquire);
                match &e.remote {
                    None => NodeStatus {
                        name: e.name.clone(),
                        address: String::new(),
                        slots: e.slots,
                        busy,
                        state: "up".into(),
                        reason: None,
                        gate: local_gate.reason.clone(),
                        free_memory_mb: local_gate.free_memory_mb,
                        load_1m: local_gate.load_1m,
                        sandbox: None,
                        memory_limiter: None,
                        labels: e.labels.clone(),
                    },
                    Some(r) => {
                        let h = r.health.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let (state, reason, info) = match h {
                            Health::Unknown => ("connecting", None, None),
                            Health::Up(i) => ("up", None, Some(*i)),
                            Health::Refused(w) => ("refused", Some(w), None),
                            Health::Down(w) => ("down", Some(w), None),
                        };
                        NodeStatus {
                            name: e.name.clone(),
                            address: r.node.ssh.clone(),
                            slots: e.slots,
                            busy,
                            state: state.into(),
                            reason,
                            gate: info.as_ref().and_then(|i| {
                                let readings = Readings {
                                    available_mb: i.free_memory_mb?,
                                    load1: i.load_1m?,
                                };
                                gate.judge(&readings).err()
                            }),
                            free_memory_mb: info.as_ref().and_then(|i| i.free_memory_mb),
                            load_1m: info.as_ref().and_then(|i| i.load_1m),
                            sandbox: info.as_ref().map(|i| i.sandbox.clone()),
                            memory_limiter: info.as_ref().map(|i| i.memory_limiter.clone()),
                            labels: r.node.labels.clone(),
                        }
                    }
                }
            })
            .collect()
    }
}

impl Drop for NodeSet {
    fn drop(&mut self) {
        self.cancel.cancel();
        for e in &self.entries {
            if let Some(r) = &e.remote {
                if let Some(mut m) = r.master.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    let _ = m.start_kill();
                }
            }
        }
    }
}

/// A directory only this user may enter (the ssh sockets are logged-in
/// connections).
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> Gate {
        struct Fixed;
        impl crate::gate::StatsSource for Fixed {
            fn read(&self) -> std::io::Result<Readings> {
                Ok(Readings {
                    available_mb: 4096,
                    load1: 0.1,
                })
            }
            fn describe(&self) -> String {
                "fixed".into()
            }
        }
        Gate::new(Box::new(Fixed), 0, 0.0)
    }

    #[test]
    fn placement_keeps_to_slots_labels_and_the_gate() {
        let set = NodeSet::new(2, &["gpu".to_owned()], &[], PathBuf::from("/nonexistent"));
        let open = Ok(());
        let none: Vec<String> = Vec::new();
        let gpu = vec!["gpu".to_owned()];
        let a = set.place(None, &gpu, &open, &gate()).unwrap();
        let b = set.place(None, &none, &open, &gate()).unwrap();
        assert_eq!((a.name(), b.name()), ("local", "local"));
        assert!(a.remote().is_none());
        // Both slots taken: full, until one is given back.
        let mut watch = set.watch();
        watch.borrow_and_update();
        assert_eq!(
            set.place(None, &none, &open, &gate()).unwrap_err(),
            Unplaced::Full
        );
        drop(a);
        assert!(
            watch.has_changed().unwrap(),
            "a freed slot wakes the waiters"
        );
        // A label nobody has: never placed, and said before a run starts.
        let rust = vec!["rust".to_owned()];
        assert_eq!(
            set.place(None, &rust, &open, &gate()).unwrap_err(),
            Unplaced::Full
        );
        let mut requires = HashMap::new();
        requires.insert(swarm_protocol::TaskId::new("t1"), rust);
        requires.insert(swarm_protocol::TaskId::new("t2"), gpu);
        assert_eq!(
            set.unplaceable(&requires),
            vec!["task t1 requires a node labelled rust".to_owned()]
        );
        // This machine's gate closed: why, in its own words.
        let closed = Err("load average 9.00 > 3.00 (MAX_LOAD_AVERAGE)".to_owned());
        assert_eq!(
            set.place(None, &none, &closed, &gate()).unwrap_err(),
            Unplaced::Gated("load average 9.00 > 3.00 (MAX_LOAD_AVERAGE)".into())
        );
    }
}
