//! What a model-run or verify command may touch (docs/security.md). The
//! supervisor builds a [`SandboxPolicy`] from the config and the project and
//! sends it to each worker in its start message; `swarm-exec` enforces it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The `sandbox` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// A command that cannot be fully confined is refused, with the reason.
    Required,
    /// Confine with what this machine offers; say once per run what is missing.
    #[default]
    BestEffort,
    /// No confinement beyond the environment allow-list of every child.
    Off,
}

impl SandboxMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMode::Required => "required",
            SandboxMode::BestEffort => "best-effort",
            SandboxMode::Off => "off",
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "required" => Ok(SandboxMode::Required),
            "best-effort" | "best_effort" => Ok(SandboxMode::BestEffort),
            "off" => Ok(SandboxMode::Off),
            other => Err(format!("unknown sandbox mode `{other}`")),
        }
    }
}

/// The `sandbox_mechanism` setting: which kernel facility confines commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMechanism {
    /// bubblewrap when it is installed, else Landlock (plus user and
    /// network namespaces where permitted).
    #[default]
    Auto,
    Landlock,
    Bubblewrap,
}

impl SandboxMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxMechanism::Auto => "auto",
            SandboxMechanism::Landlock => "landlock",
            SandboxMechanism::Bubblewrap => "bubblewrap",
        }
    }
}

impl fmt::Display for SandboxMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SandboxMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(SandboxMechanism::Auto),
            "landlock" => Ok(SandboxMechanism::Landlock),
            "bubblewrap" | "bwrap" => Ok(SandboxMechanism::Bubblewrap),
            other => Err(format!("unknown sandbox mechanism `{other}`")),
        }
    }
}

/// The mechanism the supervisor found on this machine for a policy
/// ([`SandboxPolicy::resolved`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mechanism {
    Landlock {
        abi: i32,
        namespaces: bool,
        /// The unprivileged uid a root service's commands run as (see
        /// [`SandboxPolicy::uid`]); `None`: the service's own uid.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<u32>,
    },
    Bubblewrap {
        path: PathBuf,
    },
    /// Nothing confines the command beyond rlimits and its environment.
    None,
}

/// Resource limits (rlimits) of a confined command. 0 leaves one unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandLimits {
    /// `RLIMIT_NOFILE`.
    pub open_files: u64,
    /// `RLIMIT_NPROC`: processes and threads. Counted per sandbox when a user
    /// namespace is available, else over the whole user.
    pub processes: u64,
    /// `RLIMIT_FSIZE`, in megabytes: the largest file a command may write.
    pub file_size_mb: u64,
}

impl Default for CommandLimits {
    fn default() -> Self {
        Self {
            open_files: 4096,
            processes: 1024,
            file_size_mb: 4096,
        }
    }
}

/// Everything a confined command may and may not reach. Its only writable
/// place is the directory it runs in (a worktree or the verify checkout),
/// which holds its private `HOME` and `TMPDIR`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    pub mode: SandboxMode,
    #[serde(default)]
    pub mechanism: SandboxMechanism,
    /// Network access (for package installs); otherwise the command gets an
    /// empty network namespace or, failing that, no TCP.
    #[serde(default)]
    pub allow_network: bool,
    /// Trees the command may read and execute: the system's and the
    /// configured `sandbox_read_paths`.
    #[serde(default)]
    pub read_only: Vec<PathBuf>,
    /// Paths the command never sees, even inside a `read_only` tree: the data
    /// directory, outputs, secrets and config files, the service's home.
    #[serde(default)]
    pub hidden: Vec<PathBuf>,
    #[serde(default)]
    pub limits: CommandLimits,
    /// The uid a root service's commands run as under Landlock (`sandbox_uid`):
    /// an unprivileged id, so that a command neither owns root's files (no
    /// chmod, chown or utime of them) nor escapes the process limit.
    #[serde(default = "default_sandbox_uid")]
    pub uid: u32,
    /// What the supervisor found this machine gives for the policy: a worker
    /// applies it as is rather than probe the machine again. `None`: decide
    /// where the sandbox is prepared.
    #[serde(default)]
    pub resolved: Option<Mechanism>,
}

impl SandboxPolicy {
    /// Whether the worker must kill what a command left running (a `setsid`
    /// daemon) before its own tools run again: whenever commands are
    /// confined, except under bubblewrap, whose PID namespace ends with the
    /// command.
    pub fn sweep_after_command(&self) -> bool {
        self.mode != SandboxMode::Off
            && !matches!(self.resolved, Some(Mechanism::Bubblewrap { .. }))
    }
}

impl Default for SandboxPolicy {
    /// No confinement: what a start message without a policy means.
    fn default() -> Self {
        Self {
            mode: SandboxMode::Off,
            mechanism: SandboxMechanism::Auto,
            allow_network: false,
            read_only: Vec::new(),
            hidden: Vec::new(),
            limits: CommandLimits::default(),
            uid: DEFAULT_SANDBOX_UID,
            resolved: None,
        }
    }
}

/// `sandbox_uid` by default: `nobody`.
pub const DEFAULT_SANDBOX_UID: u32 = 65534;

fn default_sandbox_uid() -> u32 {
    DEFAULT_SANDBOX_UID
}

/// The system trees a confined command may read by default.
pub const DEFAULT_READ_ONLY: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
    "/proc",
    "/sys",
    "/nix/store",
    // Where /etc/resolv.conf points under systemd-resolved: the files only,
    // not the directory, which holds resolved's socket.
    "/run/systemd/resolve/stub-resolv.conf",
    "/run/systemd/resolve/resolv.conf",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [
            SandboxMode::Required,
            SandboxMode::BestEffort,
            SandboxMode::Off,
        ] {
            assert_eq!(m.as_str().parse::<SandboxMode>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
        }
        assert!("strict".parse::<SandboxMode>().is_err());
        assert_eq!("bwrap".parse(), Ok(SandboxMechanism::Bubblewrap));
    }

    #[test]
    fn the_resolved_mechanism_travels_tagged_and_decides_the_sweep() {
        let mut p = SandboxPolicy {
            mode: SandboxMode::BestEffort,
            ..SandboxPolicy::default()
        };
        assert!(p.sweep_after_command(), "undecided: sweep");
        p.resolved = Some(Mechanism::Bubblewrap {
            path: "/usr/bin/bwrap".into(),
        });
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(
            json["resolved"],
            serde_json::json!({"kind": "bubblewrap", "path": "/usr/bin/bwrap"})
        );
        assert_eq!(serde_json::from_value::<SandboxPolicy>(json).unwrap(), p);
        assert!(
            !p.sweep_after_command(),
            "bubblewrap's PID namespace ends everything"
        );
        p.resolved = Some(Mechanism::Landlock {
            abi: 7,
            namespaces: true,
            uid: None,
        });
        assert!(p.sweep_after_command());
        assert!(!SandboxPolicy::default().sweep_after_command(), "off");
    }

    #[test]
    fn a_start_message_without_policy_means_off() {
        let p: SandboxPolicy = serde_json::from_str(r#"{"mode": "off"}"#).unwrap();
        assert_eq!(p, SandboxPolicy::default());
    }
}
