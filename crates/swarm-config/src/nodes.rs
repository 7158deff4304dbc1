//! `[nodes.NAME]`: other machines the supervisor runs attempts on, over
//! SSH (docs/scale-out.md). The local machine is the node `local`.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One `[nodes.NAME]` table as written.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileNode {
    /// `user@host` (or `host`): whom `ssh` logs in as, where. Required,
    /// except in `[nodes.local]` (this machine), which takes only `labels`.
    #[serde(default)]
    pub ssh: String,
    /// The SSH port (default 22).
    pub port: Option<u16>,
    /// The private key `ssh` authenticates with (default: ssh's own choice).
    pub identity_file: Option<PathBuf>,
    /// The known-hosts file the node's host key must be in (default
    /// `~/.ssh/known_hosts`). Host keys are always checked strictly.
    pub known_hosts_file: Option<PathBuf>,
    /// The `agentswarm` binary on the node: an absolute path, or one
    /// relative to the login's home (default `.local/bin/agentswarm`, where
    /// `agentswarm node install` puts it).
    pub agentswarm: Option<String>,
    /// Attempts the node runs at once (default 2).
    pub max_workers: Option<u32>,
    /// What the node offers (e.g. `rust`, `gpu`, an installed agent), for
    /// placement.
    pub labels: Option<Vec<String>>,
    /// Where the node keeps its project caches and worktrees: an absolute
    /// path there (default `~/.cache/agentswarm-node` of the login).
    pub work_dir: Option<String>,
    /// Seconds without a heartbeat after which the node counts as lost and
    /// its attempts run elsewhere (default 10; heartbeats go every 2 s).
    pub lost_after_secs: Option<u64>,
    /// The sessions the node's sshd accepts on one connection (its
    /// `MaxSessions`, default 10). The supervisor opens up to two per slot
    /// (an attempt, and the next one while the first closes), one probe and
    /// one push, and keeps what is left, up to one per slot, as spare
    /// sessions ready for the next attempts.
    pub max_sessions: Option<u32>,
}

/// A node, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// `user@host` or `host`.
    pub ssh: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub agentswarm: String,
    pub max_workers: u32,
    pub labels: Vec<String>,
    /// Absolute, on the node; `None`: under the login's home.
    pub work_dir: Option<String>,
    pub lost_after_secs: u64,
    /// Sessions sshd accepts on one connection there (`MaxSessions`).
    pub max_sessions: u32,
}

impl Node {
    /// Sessions kept ready for the next attempts: what `max_sessions`
    /// leaves after two a slot, a probe and a push, at most one a slot.
    pub fn spare_sessions(&self) -> u32 {
        self.max_sessions
            .saturating_sub(sessions_needed(self.max_workers))
            .min(self.max_workers)
    }
}

/// Sessions a node with `max_workers` slots may have open at once besides
/// its spares: two a slot, a probe, a push.
fn sessions_needed(max_workers: u32) -> u32 {
    2 * max_workers + 2
}

/// sshd's default `MaxSessions`.
pub const DEFAULT_MAX_SESSIONS: u32 = 10;

/// Seconds between heartbeats on a node's channel (the worker protocol's
/// `HEARTBEAT_SECS`).
pub const HEARTBEAT_FLOOR_SECS: u64 = 2;
/// The name of this machine as a node.
pub const LOCAL: &str = "local";
/// Where `agentswarm node install` puts the binary, relative to the home.
pub const DEFAULT_REMOTE_BINARY: &str = ".local/bin/agentswarm";

/// The labels of this machine as a node (`[nodes.local] labels`), checked:
/// `[nodes.local]` takes nothing else (its slots are `MAX_CONCURRENT_WORKERS`).
pub fn local_labels(file: Option<&BTreeMap<String, FileNode>>) -> Result<Vec<String>, String> {
    let Some(n) = file.and_then(|f| f.get(LOCAL)) else {
        return Ok(Vec::new());
    };
    let set = [
        ("ssh", !n.ssh.is_empty()),
        ("port", n.port.is_some()),
        ("identity_file", n.identity_file.is_some()),
        ("known_hosts_file", n.known_hosts_file.is_some()),
        ("agentswarm", n.agentswarm.is_some()),
        ("max_workers", n.max_workers.is_some()),
        ("work_dir", n.work_dir.is_some()),
        ("lost_after_secs", n.lost_after_secs.is_some()),
        ("max_sessions", n.max_sessions.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, is_set)| *is_set) {
        return Err(format!(
            "[nodes.{LOCAL}]: `local` is this machine: it takes only `labels`, not `{key}` \
             (its slots are MAX_CONCURRENT_WORKERS); give another node another name"
        ));
    }
    Ok(n.labels.clone().unwrap_or_default())
}

/// The `[nodes]` tables but `local`, checked: a problem is a message that
/// names the node and says what to write instead.
pub fn resolve(
    file: Option<&BTreeMap<String, FileNode>>,
    home: Option<&std::path::Path>,
) -> Result<Vec<Node>, String> {
    let mut out = Vec::new();
    for (name, n) in file.into_iter().flatten() {
        let bad = |what: String| format!("[nodes.{name}]: {what}");
        if name == LOCAL {
            // This machine: only its labels (see `local_labels`).
            continue;
        }
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(bad("a node's name may hold letters, digits, - and _".into()));
        }
        let target = n.ssh.trim();
        let host = target.rsplit('@').next().unwrap_or_default();
        if host.is_empty() || target.starts_with('-') || target.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "ssh = {:?} is not `user@host` or `host`",
                n.ssh
            )));
        }
        let expand = |p: &PathBuf| -> PathBuf {
            match (p.strip_prefix("~"), home) {
                (Ok(rest), Some(h)) => h.join(rest),
                _ => p.clone(),
            }
        };
        let max_workers = n.max_workers.unwrap_or(2);
        if max_workers == 0 {
            return Err(bad("max_workers must be at least 1".into()));
        }
        let agentswarm = n
            .agentswarm
            .clone()
            .unwrap_or_else(|| DEFAULT_REMOTE_BINARY.to_owned());
        if agentswarm.trim().is_empty() || agentswarm.contains(['\'', '\n']) {
            return Err(bad(format!(
                "agentswarm = {agentswarm:?} is not a path on the node"
            )));
        }
        let work_dir = n.work_dir.clone();
        if let Some(w) = &work_dir {
            if !w.starts_with('/') || w.contains(['\'', '\n']) {
                return Err(bad(format!(
                    "work_dir = {w:?} must be an absolute path on the node"
                )));
            }
        }
        let lost_after_secs = n.lost_after_secs.unwrap_or(10);
        if lost_after_secs < 2 * crate::nodes::HEARTBEAT_FLOOR_SECS {
            return Err(bad(format!(
                "lost_after_secs = {lost_after_secs} is shorter than two heartbeats; give at least {}",
                2 * HEARTBEAT_FLOOR_SECS
            )));
        }
        let max_sessions = n.max_sessions.unwrap_or(DEFAULT_MAX_SESSIONS);
        if max_sessions < sessions_needed(max_workers) {
            return Err(bad(format!(
                "max_workers = {max_workers} needs up to {} ssh sessions on one connection, and \
                 the node's sshd accepts {max_sessions} (max_sessions; sshd's MaxSessions, 10 by \
                 default): lower max_workers, or raise MaxSessions in the node's sshd_config and \
                 set max_sessions to match",
                sessions_needed(max_workers)
            )));
        }
        out.push(Node {
            name: name.clone(),
            ssh: target.to_owned(),
            port: n.port.unwrap_or(22),
            identity_file: n.identity_file.as_ref().map(expand),
            known_hosts_file: n.known_hosts_file.as_ref().map(expand),
            agentswarm,
            max_workers,
            labels: n.labels.clone().unwrap_or_default(),
            work_dir,
            lost_after_secs,
            max_sessions,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(toml_text: &str) -> Result<Vec<Node>, String> {
        let map: BTreeMap<String, FileNode> = toml::from_str(toml_text).unwrap();
        resolve(Some(&map), Some(std::path::Path::new("/home/op")))
    }

    #[test]
    fn nodes_resolve_with_defaults_and_refuse_what_cannot_work() {
        let n = nodes(
            "[b1]\nssh = \"build@10.0.0.2\"\nidentity_file = \"~/.ssh/swarm\"\nlabels = [\"rust\"]\n",
        )
        .unwrap();
        assert_eq!(n[0].name, "b1");
        assert_eq!(n[0].port, 22);
        assert_eq!(n[0].max_workers, 2);
        assert_eq!(n[0].agentswarm, DEFAULT_REMOTE_BINARY);
        assert_eq!(
            n[0].identity_file.as_deref(),
            Some(std::path::Path::new("/home/op/.ssh/swarm"))
        );
        let map: BTreeMap<String, FileNode> = toml::from_str("[local]\nssh = \"h\"\n").unwrap();
        let e = local_labels(Some(&map)).unwrap_err();
        assert!(e.contains("`local` is this machine"), "{e}");
        let map: BTreeMap<String, FileNode> =
            toml::from_str("[local]\nlabels = [\"gpu\"]\n[b]\nssh = \"h\"\n").unwrap();
        assert_eq!(local_labels(Some(&map)).unwrap(), vec!["gpu".to_owned()]);
        let all = resolve(Some(&map), None).unwrap();
        assert_eq!(all.len(), 1, "local is not among the remote nodes");
        let e = nodes("[x]\nmax_workers = 2\n").unwrap_err();
        assert!(e.contains("is not `user@host`"), "{e}");
        let e = nodes("[x]\nssh = \"-oProxyCommand=evil\"\n").unwrap_err();
        assert!(e.contains("is not `user@host`"), "{e}");
        let e = nodes("[x]\nssh = \"h\"\nmax_workers = 0\n").unwrap_err();
        assert!(e.contains("max_workers"), "{e}");
        // Five slots need twelve sessions; sshd's default is ten.
        let e = nodes("[x]\nssh = \"h\"\nmax_workers = 5\n").unwrap_err();
        assert!(e.contains("MaxSessions") && e.contains("12"), "{e}");
        let n = nodes("[x]\nssh = \"h\"\nmax_workers = 5\nmax_sessions = 16\n").unwrap();
        assert_eq!(n[0].spare_sessions(), 4);
        let n = nodes("[x]\nssh = \"h\"\nmax_workers = 4\n").unwrap();
        assert_eq!(n[0].spare_sessions(), 0);
        let n = nodes("[x]\nssh = \"h\"\nmax_workers = 2\n").unwrap();
        assert_eq!(n[0].spare_sessions(), 2);
        let unknown =
            toml::from_str::<BTreeMap<String, FileNode>>("[x]\nssh = \"h\"\nhostname = \"y\"\n");
        assert!(unknown.is_err(), "an unknown key in a node is refused");
    }
}
