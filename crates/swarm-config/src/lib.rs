//! Configuration: an optional `agentswarm.toml`, then the environment, then
//! command-line flags, resolved into one [`Config`] with every default filled
//! in and the source of every value recorded.
//!
//! Nothing here reads the process environment by itself: callers pass an
//! environment lookup, so tests never touch global state.

mod agents;
mod models;
pub mod nodes;
mod secrets;

pub use agents::{
    check_agent, own_credentials_notice, AgentChoice, AgentKind, AgentSpec, AgentWire, Credentials,
    FileAgent, OutputFormat, BUILTIN,
};

pub use models::{
    known_context_window, AgentSettings, FileModelRef, FileModels, FileProvider, FileRole,
    ModelRef, ModelRole, Models, Price, ProviderConfig, ProviderKind, RoleModels,
};
pub use secrets::Secrets;

use models::{ModelInputs, ModelMissing};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
pub use swarm_protocol::sandbox::{CommandLimits, SandboxMechanism, SandboxMode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{name} must be {expected}, got {value:?} (from {origin})")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
        origin: Source,
    },
    #[error(
        "no model is configured. Set OPENAI_BASE_URL (e.g. https://api.openai.com/v1 or \
         http://127.0.0.1:11434/v1 for Ollama), OPENAI_API_KEY (not needed for local servers) and \
         AGENTSWARM_MODEL (e.g. gpt-4o-mini), or [providers] and [models] tables in agentswarm.toml \
         (docs/providers.md). To try AgentSwarm without any model, run `agentswarm demo`."
    )]
    NoModel,
    #[error(
        "no model name is set: export AGENTSWARM_MODEL (e.g. AGENTSWARM_MODEL=gpt-4o-mini) or \
         set `model` under [models.worker] in agentswarm.toml"
    )]
    NoModelName,
    #[error("secrets file {path} is refused: {message}")]
    Secrets { path: PathBuf, message: String },
    #[error(
        "provider {provider} needs an API key, but {env} is not set: export it, or put \
         `{env}=…` in the secrets file (mode 600; `secrets_file` in agentswarm.toml or \
         AGENTSWARM_SECRETS_FILE)"
    )]
    MissingKey { provider: String, env: String },
    #[error("[agents.{name}] in agentswarm.toml is invalid: {message} (docs/agents.md)")]
    Agent { name: String, message: String },
    #[error(
        "agent {name:?} (from {origin}) is not configured: add an [agents.{name}] table to \
         agentswarm.toml (docs/agents.md), or use one of: {known}"
    )]
    UnknownAgent {
        name: String,
        origin: Source,
        known: String,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
    SecretsFile(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(n) => write!(f, "environment {n}"),
            Source::Flag(n) => write!(f, "flag {n}"),
            Source::SecretsFile(p) => write!(f, "secrets file {}", p.display()),
        }
    }
}

/// The file format: every field optional; unknown keys are an error.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub outputs_dir: Option<PathBuf>,
    pub max_concurrent_workers: Option<u32>,
    pub worker_timeout_seconds: Option<u64>,
    pub worker_memory_limit_mb: Option<u64>,
    pub min_free_memory_mb: Option<u64>,
    pub max_load_average: Option<f64>,
    pub shutdown_grace_seconds: Option<u64>,
    /// `auto`, `cgroup` or `watchdog`.
    pub memory_limiter: Option<String>,
    /// Workers start as `<wrapper…> <agentswarm> worker` (e.g. `["nice", "-n", "10"]`).
    pub worker_wrapper: Option<Vec<String>>,
    /// Model requests started in any 60 s, over all workers and projects (0: no limit).
    pub api_rate_limit_rpm: Option<u32>,
    /// `KEY=value` lines holding API keys; must be mode 600.
    pub secrets_file: Option<PathBuf>,
    /// Where `agentswarm serve` answers HTTP (API, dashboard, metrics):
    /// `ADDRESS:PORT`, default `127.0.0.1:7700`. Any address but loopback
    /// needs `AGENTSWARM_API_TOKEN`.
    pub bind: Option<String>,
    /// `[providers.NAME]`: the model endpoints.
    pub providers: Option<BTreeMap<String, FileProvider>>,
    /// `[models.planner]`, `[models.worker]`, `[models.fixer]`.
    pub models: Option<FileModels>,
    /// `[prices."MODEL"]`: US dollars per million input and output tokens.
    pub prices: Option<BTreeMap<String, Price>>,
    /// `[nodes.NAME]`: other machines that run attempts, over SSH.
    pub nodes: Option<BTreeMap<String, nodes::FileNode>>,
    /// `[agents.NAME]`: outside coding agents (ACP or command) that can do
    /// a task instead of the built-in agent (docs/agents.md).
    pub agents: Option<BTreeMap<String, FileAgent>>,
    /// `required`, `best-effort` (the default) or `off`: how model-run and
    /// verify commands are confined (docs/security.md).
    pub sandbox: Option<String>,
    /// `auto` (the default), `landlock` or `bubblewrap`.
    pub sandbox_mechanism: Option<String>,
    /// More trees confined commands may read and execute, such as toolchains
    /// in the service's home (`~/.rustup`); `~/` is the home directory.
    pub sandbox_read_paths: Option<Vec<PathBuf>>,
    /// Open files of a confined command (`RLIMIT_NOFILE`; 0: unchanged).
    pub sandbox_max_open_files: Option<u64>,
    /// Processes of a confined command (`RLIMIT_NPROC`; 0: unchanged).
    pub sandbox_max_processes: Option<u64>,
    /// The largest file a confined command may write, in MB (`RLIMIT_FSIZE`; 0: unchanged).
    pub sandbox_max_file_size_mb: Option<u64>,
    /// The unprivileged uid a root service's commands run as under Landlock
    /// (default 65534, `nobody`; never 0).
    pub sandbox_uid: Option<u32>,
    pub run: Option<FileRun>,
    /// `[repos]`: projects that start from an existing repository
    /// (`run --repo`; docs/existing-repos.md).
    pub repos: Option<FileRepos>,
}

/// `[repos]` of the config file.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRepos {
    /// The most files the base commit may hold (default 200000).
    pub max_files: Option<u64>,
    /// The most bytes its files may add up to, in MB (default 2048).
    pub max_size_mb: Option<u64>,
    /// Commits of history fetched from a URL (default 0: all of it; a
    /// shallow clone of a large repository is much faster).
    pub clone_depth: Option<u32>,
    /// The repository map in the planner's prompt, in tokens (about 4
    /// characters each; default 6000).
    pub map_tokens: Option<usize>,
}

/// The resolved `[repos]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoSettings {
    pub max_files: u64,
    pub max_size_mb: u64,
    /// 0: the whole history.
    pub clone_depth: u32,
    pub map_tokens: usize,
}

impl Default for RepoSettings {
    fn default() -> Self {
        Self {
            max_files: 200_000,
            max_size_mb: 2048,
            clone_depth: 0,
            map_tokens: 6000,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRun {
    pub max_tasks: Option<u32>,
    pub max_attempts: Option<u32>,
    pub max_turns: Option<u32>,
    pub max_fix_rounds: Option<u32>,
    pub command_timeout_seconds: Option<u64>,
    pub verify_timeout_seconds: Option<u64>,
    pub output_cap_bytes: Option<usize>,
    /// A project ends `budget_exhausted` when its model calls reach this cost.
    pub max_cost_usd: Option<f64>,
    /// … or this many tokens (input + output).
    pub max_tokens: Option<u64>,
    /// Let the project's commands use the network (package installs); the
    /// manifest records it.
    pub allow_network: Option<bool>,
    /// Whether a person reviews the work before it lands: `off`, `tasks`
    /// (each task's commit waits for `agentswarm review --approve` before
    /// it merges) or `delivery` (the delivery branch waits).
    #[schemars(schema_with = "review_mode_schema")]
    pub review: Option<swarm_protocol::ReviewMode>,
}

fn review_mode_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = swarm_protocol::ReviewMode::ALL
        .iter()
        .map(|m| m.as_str())
        .collect();
    schemars::json_schema!({"type": "string", "enum": names})
}

/// The JSON Schema of `agentswarm.toml` (checked in as docs/agentswarm.schema.json).
pub fn file_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(FileConfig)).unwrap_or_default()
}

impl FileConfig {
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig> {
        toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// Per-run limits; stored with each project so `resume` uses the same ones.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunLimits {
    pub max_tasks: u32,
    pub max_attempts: u32,
    pub max_turns: u32,
    pub max_fix_rounds: u32,
    pub command_timeout_secs: u64,
    pub verify_timeout_secs: u64,
    pub output_cap_bytes: usize,
    /// Budget of the project's model calls in US dollars (none: no bound).
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    /// Budget of the project's tokens, input + output (none: no bound).
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// The project's commands may use the network.
    #[serde(default)]
    pub allow_network: bool,
    /// The agent that does the project's tasks unless a task names one: a
    /// name under `[agents]`, or `builtin` (none: the built-in agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Whether a person reviews the work before it lands (stored with the
    /// project, so `resume` and a restarted daemon keep it).
    #[serde(default)]
    pub review: swarm_protocol::ReviewMode,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_tasks: 64,
            max_attempts: 3,
            max_turns: 40,
            max_fix_rounds: 2,
            command_timeout_secs: 300,
            verify_timeout_secs: 600,
            output_cap_bytes: 16 * 1024,
            max_cost_usd: None,
            max_tokens: None,
            allow_network: false,
            agent: None,
            review: swarm_protocol::ReviewMode::Off,
        }
    }
}

/// The confinement of model-run and verify commands. The per-project part
/// (`allow_network`) is in [`RunLimits`].
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSettings {
    pub mode: SandboxMode,
    pub mechanism: SandboxMechanism,
    /// `sandbox_read_paths`, with `~/` expanded.
    pub read_paths: Vec<PathBuf>,
    /// The service user's home (`HOME`): hidden from commands, and what
    /// `~/` means. `None` when unset or `/`.
    pub home: Option<PathBuf>,
    pub limits: CommandLimits,
    /// `sandbox_uid`: the uid a root service's commands run as under Landlock.
    pub uid: u32,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub outputs_dir: PathBuf,
    pub max_concurrent_workers: u32,
    pub worker_timeout_secs: u64,
    /// Per worker, its whole process tree.
    pub worker_memory_limit_mb: u64,
    /// No worker starts while available memory is below this (0: no bound).
    pub min_free_memory_mb: u64,
    /// No worker starts while the 1-minute load average is above this (0: no bound).
    pub max_load_average: f64,
    /// SIGTERM to workers, then SIGKILL after this.
    pub shutdown_grace_secs: u64,
    /// `auto`, `cgroup` or `watchdog`.
    pub memory_limiter: String,
    pub worker_wrapper: Vec<String>,
    /// Read the resource gate's readings from this JSON file instead of
    /// /proc (`{"available_mb": 512, "load1": 0.5}`); for tests and drills.
    pub gate_stats_file: Option<PathBuf>,
    pub run: RunLimits,
    /// `API_RATE_LIMIT_RPM`: model requests started in any window (0: no limit).
    pub api_rate_limit_rpm: u32,
    /// The rate limit's window: 60 s, shorter only for tests and drills
    /// (`AGENTSWARM_RATE_WINDOW_MS`).
    pub rate_window_ms: u64,
    pub secrets_file: Option<PathBuf>,
    /// The HTTP API's address (`serve`).
    pub bind: std::net::SocketAddr,
    /// `AGENTSWARM_API_TOKEN` from the environment or the secrets file: the
    /// bearer token the API asks for.
    pub api_token: Option<secrecy::SecretString>,
    pub sandbox: SandboxSettings,
    /// `[nodes.NAME]`, checked (the local machine is not among them).
    pub nodes: Vec<nodes::Node>,
    /// `[nodes.local] labels`: what this machine offers, for placement.
    pub local_labels: Vec<String>,
    /// `[repos]`: limits and budgets of projects on an existing repository.
    pub repos: RepoSettings,
    /// `[agents.NAME]`, resolved; always holds `builtin`.
    pub agents: BTreeMap<String, AgentChoice>,
    /// `Err` keeps why no model is configured until a command needs one.
    models: std::result::Result<Models, ModelMissing>,
    /// Source of each resolved value, by its name in the file.
    pub sources: BTreeMap<&'static str, Source>,
    pub file: Option<PathBuf>,
}

/// Values given on the command line (highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub outputs_dir: Option<PathBuf>,
    pub max_concurrent_workers: Option<u32>,
    pub max_tasks: Option<u32>,
    pub max_attempts: Option<u32>,
    pub max_turns: Option<u32>,
    pub max_fix_rounds: Option<u32>,
    pub model: Option<String>,
    pub base_url: Option<String>,
    pub max_cost_usd: Option<f64>,
    pub max_tokens: Option<u64>,
    /// `--allow-network`.
    pub allow_network: Option<bool>,
    /// `--agent`: the project's agent.
    pub agent: Option<String>,
    /// `--review`.
    pub review: Option<swarm_protocol::ReviewMode>,
}

/// Where the config file is looked for when `--config` is not given:
/// `AGENTSWARM_CONFIG`, `./agentswarm.toml`, the user's config dir,
/// `/etc/agentswarm/agentswarm.toml`. The first that exists wins.
pub fn find_config_file(
    explicit: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_owned());
    }
    if let Some(p) = env("AGENTSWARM_CONFIG").filter(|s| !s.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let mut candidates = vec![cwd.join("agentswarm.toml")];
    if let Some(dir) = dirs::config_dir() {
        candidates.push(dir.join("agentswarm").join("agentswarm.toml"));
    }
    candidates.push(PathBuf::from("/etc/agentswarm/agentswarm.toml"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The default data directory: `AGENTSWARM_HOME`, else the user's data dir
/// (`~/.local/share/agentswarm`), else `./.agentswarm`.
fn default_data_dir() -> PathBuf {
    dirs::data_dir()
        .map(|d| d.join("agentswarm"))
        .unwrap_or_else(|| PathBuf::from(".agentswarm"))
}

struct Resolver<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file_path: Option<PathBuf>,
    sources: BTreeMap<&'static str, Source>,
}

impl Resolver<'_> {
    /// flag > env > file > default, recording the source under `key`.
    /// The error for a value of `key` (reported as `name`) that is not `expected`.
    fn invalid(
        &self,
        key: &str,
        name: &'static str,
        expected: &'static str,
        value: impl ToString,
    ) -> Error {
        Error::Invalid {
            name,
            expected,
            value: value.to_string(),
            origin: self.sources.get(key).cloned().unwrap_or(Source::Default),
        }
    }

    fn pick<T: std::str::FromStr>(
        &mut self,
        key: &'static str,
        flag: Option<(T, &'static str)>,
        env_name: Option<&'static str>,
        file: Option<T>,
        default: T,
        expected: &'static str,
    ) -> Result<T> {
        match self.pick_opt(key, flag, env_name, file, expected)? {
            Some(v) => Ok(v),
            None => {
                self.sources.insert(key, Source::Default);
                Ok(default)
            }
        }
    }
}

impl Resolver<'_> {
    /// As [`Resolver::pick`] for a value without a default.
    fn pick_opt<T: std::str::FromStr>(
        &mut self,
        key: &'static str,
        flag: Option<(T, &'static str)>,
        env_name: Option<&'static str>,
        file: Option<T>,
        expected: &'static str,
    ) -> Result<Option<T>> {
        if let Some((v, name)) = flag {
            self.sources.insert(key, Source::Flag(name));
            return Ok(Some(v));
        }
        if let Some(name) = env_name {
            if let Some(raw) = (self.env)(name).filter(|s| !s.trim().is_empty()) {
                let v = raw.trim().parse::<T>().map_err(|_| Error::Invalid {
                    name,
                    expected,
                    value: raw.clone(),
                    origin: Source::Env(name),
                })?;
                self.sources.insert(key, Source::Env(name));
                return Ok(Some(v));
            }
        }
        if file.is_some() {
            let src = self.file_source();
            self.sources.insert(key, src);
        }
        Ok(file)
    }
}

impl Resolver<'_> {
    fn sandbox(&mut self, file: &FileConfig) -> Result<SandboxSettings> {
        let mode: String = self.pick(
            "sandbox",
            None,
            Some("AGENTSWARM_SANDBOX"),
            file.sandbox.clone(),
            SandboxMode::default().as_str().to_owned(),
            "required, best-effort or off",
        )?;
        let mode: SandboxMode = mode.parse().map_err(|_| {
            self.invalid("sandbox", "sandbox", "required, best-effort or off", &mode)
        })?;
        let mechanism: String = self.pick(
            "sandbox_mechanism",
            None,
            Some("AGENTSWARM_SANDBOX_MECHANISM"),
            file.sandbox_mechanism.clone(),
            SandboxMechanism::default().as_str().to_owned(),
            "auto, landlock or bubblewrap",
        )?;
        let mechanism: SandboxMechanism = mechanism.parse().map_err(|_| {
            self.invalid(
                "sandbox_mechanism",
                "sandbox_mechanism",
                "auto, landlock or bubblewrap",
                &mechanism,
            )
        })?;
        let home = (self.env)("HOME")
            .map(PathBuf::from)
            .or_else(dirs::home_dir)
            .filter(|h| h.is_absolute() && h.parent().is_some());
        let mut read_paths = Vec::new();
        for p in file.sandbox_read_paths.clone().unwrap_or_default() {
            let p = match (p.strip_prefix("~"), &home) {
                (Ok(rest), Some(h)) => h.join(rest),
                _ => p,
            };
            if !p.is_absolute() {
                self.sources
                    .insert("sandbox_read_paths", self.file_source());
                return Err(self.invalid(
                    "sandbox_read_paths",
                    "sandbox_read_paths",
                    "absolute paths (or ~/…)",
                    p.display(),
                ));
            }
            read_paths.push(p);
        }
        if file.sandbox_read_paths.is_some() {
            let src = self.file_source();
            self.sources.insert("sandbox_read_paths", src);
        }
        let d = CommandLimits::default();
        let limits = CommandLimits {
            open_files: self.pick(
                "sandbox_max_open_files",
                None,
                None,
                file.sandbox_max_open_files,
                d.open_files,
                "",
            )?,
            processes: self.pick(
                "sandbox_max_processes",
                None,
                None,
                file.sandbox_max_processes,
                d.processes,
                "",
            )?,
            file_size_mb: self.pick(
                "sandbox_max_file_size_mb",
                None,
                None,
                file.sandbox_max_file_size_mb,
                d.file_size_mb,
                "",
            )?,
        };
        let uid: u32 = self.pick(
            "sandbox_uid",
            None,
            Some("AGENTSWARM_SANDBOX_UID"),
            file.sandbox_uid,
            swarm_protocol::sandbox::DEFAULT_SANDBOX_UID,
            "an unprivileged uid (not 0)",
        )?;
        if uid == 0 {
            return Err(self.invalid(
                "sandbox_uid",
                "sandbox_uid",
                "an unprivileged uid (not 0)",
                uid,
            ));
        }
        Ok(SandboxSettings {
            mode,
            mechanism,
            read_paths,
            home,
            limits,
            uid,
        })
    }
}

fn positive(name: &'static str, v: u64, source: Option<&Source>) -> Result<()> {
    if v == 0 {
        return Err(Error::Invalid {
            name,
            expected: "a positive integer",
            value: "0".into(),
            origin: source.cloned().unwrap_or(Source::Default),
        });
    }
    Ok(())
}

impl Config {
    /// Resolve `file` (if any, loaded from `file_path`), the environment
    /// (through `env`) and `flags`.
    pub fn resolve(
        file: Option<(FileConfig, PathBuf)>,
        env: &dyn Fn(&str) -> Option<String>,
        flags: &Overrides,
    ) -> Result<Config> {
        let (file, file_path) = match file {
            Some((f, p)) => (f, Some(p)),
            None => (FileConfig::default(), None),
        };
        let mut r = Resolver {
            env,
            file_path: file_path.clone(),
            sources: BTreeMap::new(),
        };
        let data_dir: PathBuf = r.pick(
            "data_dir",
            flags.data_dir.clone().map(|v| (v, "--data-dir")),
            Some("AGENTSWARM_HOME"),
            file.data_dir.clone(),
            default_data_dir(),
            "a directory path",
        )?;
        let outputs_dir: PathBuf = r.pick(
            "outputs_dir",
            flags.outputs_dir.clone().map(|v| (v, "--outputs-dir")),
            Some("OUTPUTS_DIR"),
            file.outputs_dir.clone(),
            data_dir.join("outputs"),
            "a directory path",
        )?;
        let max_concurrent_workers: u32 = r.pick(
            "max_concurrent_workers",
            flags.max_concurrent_workers.map(|v| (v, "--max-workers")),
            Some("MAX_CONCURRENT_WORKERS"),
            file.max_concurrent_workers,
            10,
            "a positive integer",
        )?;
        positive(
            "MAX_CONCURRENT_WORKERS",
            max_concurrent_workers.into(),
            r.sources.get("max_concurrent_workers"),
        )?;
        let worker_timeout_secs: u64 = r.pick(
            "worker_timeout_seconds",
            None,
            Some("WORKER_TIMEOUT_SECONDS"),
            file.worker_timeout_seconds,
            1800,
            "a positive number of seconds",
        )?;
        positive(
            "WORKER_TIMEOUT_SECONDS",
            worker_timeout_secs,
            r.sources.get("worker_timeout_seconds"),
        )?;
        let worker_memory_limit_mb: u64 = r.pick(
            "worker_memory_limit_mb",
            None,
            Some("WORKER_MEMORY_LIMIT_MB"),
            file.worker_memory_limit_mb,
            2048,
            "a positive number of megabytes",
        )?;
        positive(
            "WORKER_MEMORY_LIMIT_MB",
            worker_memory_limit_mb,
            r.sources.get("worker_memory_limit_mb"),
        )?;
        let min_free_memory_mb: u64 = r.pick(
            "min_free_memory_mb",
            None,
            Some("MIN_FREE_MEMORY_MB"),
            file.min_free_memory_mb,
            1024,
            "a number of megabytes (0: no bound)",
        )?;
        let max_load_average: f64 = r.pick(
            "max_load_average",
            None,
            Some("MAX_LOAD_AVERAGE"),
            file.max_load_average,
            3.0,
            "a number (0: no bound)",
        )?;
        if !(max_load_average.is_finite() && max_load_average >= 0.0) {
            return Err(r.invalid(
                "max_load_average",
                "MAX_LOAD_AVERAGE",
                "a number of 0 or more (0: no bound)",
                max_load_average,
            ));
        }
        let shutdown_grace_secs: u64 = r.pick(
            "shutdown_grace_seconds",
            None,
            Some("SHUTDOWN_GRACE_SECONDS"),
            file.shutdown_grace_seconds,
            10,
            "a number of seconds",
        )?;
        let memory_limiter: String = r.pick(
            "memory_limiter",
            None,
            Some("AGENTSWARM_MEMORY_LIMITER"),
            file.memory_limiter.clone(),
            "auto".to_owned(),
            "auto, cgroup or watchdog",
        )?;
        if !matches!(memory_limiter.as_str(), "auto" | "cgroup" | "watchdog") {
            return Err(r.invalid(
                "memory_limiter",
                "AGENTSWARM_MEMORY_LIMITER",
                "auto, cgroup or watchdog",
                memory_limiter,
            ));
        }
        let worker_wrapper: Vec<String> = file.worker_wrapper.clone().unwrap_or_default();
        r.sources.insert(
            "worker_wrapper",
            match (&file.worker_wrapper, &file_path) {
                (Some(_), Some(p)) => Source::File(p.clone()),
                _ => Source::Default,
            },
        );
        let gate_stats_file = env("AGENTSWARM_GATE_STATS_FILE")
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from);
        if gate_stats_file.is_some() {
            r.sources
                .insert("gate_stats_file", Source::Env("AGENTSWARM_GATE_STATS_FILE"));
        }

        let fr = file.run.clone().unwrap_or_default();
        let d = RunLimits::default();
        let max_cost_usd: Option<f64> = r.pick_opt(
            "run.max_cost_usd",
            flags.max_cost_usd.map(|v| (v, "--max-cost-usd")),
            Some("AGENTSWARM_MAX_COST_USD"),
            fr.max_cost_usd,
            "a number of US dollars",
        )?;
        if max_cost_usd.is_some_and(|c| !(c.is_finite() && c > 0.0)) {
            return Err(r.invalid(
                "run.max_cost_usd",
                "max_cost_usd",
                "a positive number of US dollars",
                max_cost_usd.unwrap_or_default(),
            ));
        }
        let max_tokens: Option<u64> = r.pick_opt(
            "run.max_tokens",
            flags.max_tokens.map(|v| (v, "--max-tokens")),
            Some("AGENTSWARM_MAX_TOKENS"),
            fr.max_tokens,
            "a positive number of tokens",
        )?;
        if max_tokens == Some(0) {
            return Err(r.invalid(
                "run.max_tokens",
                "max_tokens",
                "a positive number of tokens",
                0,
            ));
        }
        let run = RunLimits {
            max_tasks: r.pick(
                "run.max_tasks",
                flags.max_tasks.map(|v| (v, "--max-tasks")),
                None,
                fr.max_tasks,
                d.max_tasks,
                "",
            )?,
            max_attempts: r.pick(
                "run.max_attempts",
                flags.max_attempts.map(|v| (v, "--max-attempts")),
                None,
                fr.max_attempts,
                d.max_attempts,
                "",
            )?,
            max_turns: r.pick(
                "run.max_turns",
                flags.max_turns.map(|v| (v, "--max-turns")),
                None,
                fr.max_turns,
                d.max_turns,
                "",
            )?,
            max_fix_rounds: r.pick(
                "run.max_fix_rounds",
                flags.max_fix_rounds.map(|v| (v, "--max-fix-rounds")),
                None,
                fr.max_fix_rounds,
                d.max_fix_rounds,
                "",
            )?,
            command_timeout_secs: r.pick(
                "run.command_timeout_seconds",
                None,
                None,
                fr.command_timeout_seconds,
                d.command_timeout_secs,
                "",
            )?,
            verify_timeout_secs: r.pick(
                "run.verify_timeout_seconds",
                None,
                None,
                fr.verify_timeout_seconds,
                d.verify_timeout_secs,
                "",
            )?,
            output_cap_bytes: r.pick(
                "run.output_cap_bytes",
                None,
                None,
                fr.output_cap_bytes,
                d.output_cap_bytes,
                "",
            )?,
            max_cost_usd,
            max_tokens,
            allow_network: r.pick(
                "run.allow_network",
                flags.allow_network.map(|v| (v, "--allow-network")),
                Some("AGENTSWARM_ALLOW_NETWORK"),
                fr.allow_network,
                false,
                "true or false",
            )?,
            agent: r.pick_opt(
                "run.agent",
                flags.agent.clone().map(|v| (v, "--agent")),
                Some("AGENTSWARM_AGENT"),
                file.models
                    .as_ref()
                    .and_then(|m| m.worker.as_ref())
                    .and_then(|w| w.agent.clone()),
                "an agent name",
            )?,
            review: r.pick(
                "run.review",
                flags.review.map(|v| (v, "--review")),
                Some("AGENTSWARM_REVIEW"),
                fr.review,
                swarm_protocol::ReviewMode::Off,
                "off, tasks or delivery",
            )?,
        };
        for (name, v) in [
            ("run.max_tasks", u64::from(run.max_tasks)),
            ("run.max_attempts", u64::from(run.max_attempts)),
            ("run.max_turns", u64::from(run.max_turns)),
            ("run.command_timeout_seconds", run.command_timeout_secs),
            ("run.verify_timeout_seconds", run.verify_timeout_secs),
            ("run.output_cap_bytes", run.output_cap_bytes as u64),
        ] {
            positive(name, v, r.sources.get(name))?;
        }

        let api_rate_limit_rpm: u32 = r.pick(
            "api_rate_limit_rpm",
            None,
            Some("API_RATE_LIMIT_RPM"),
            file.api_rate_limit_rpm,
            20,
            "a number of requests per minute (0: no limit)",
        )?;
        let rate_window_ms: u64 = r.pick(
            "rate_window_ms",
            None,
            Some("AGENTSWARM_RATE_WINDOW_MS"),
            None,
            60_000,
            "a positive number of milliseconds",
        )?;
        positive(
            "AGENTSWARM_RATE_WINDOW_MS",
            rate_window_ms,
            r.sources.get("rate_window_ms"),
        )?;

        let secrets_file: Option<PathBuf> = r.pick_opt(
            "secrets_file",
            None,
            Some("AGENTSWARM_SECRETS_FILE"),
            file.secrets_file.clone(),
            "a file path",
        )?;
        let secrets = match &secrets_file {
            Some(path) => Secrets::load(path)?,
            None => Secrets::default(),
        };
        let bind: std::net::SocketAddr = r.pick(
            "bind",
            None, // `serve --bind` is applied by the daemon
            Some("AGENTSWARM_BIND"),
            match &file.bind {
                Some(raw) => Some(raw.trim().parse().map_err(|_| Error::Invalid {
                    name: "bind",
                    expected: "ADDRESS:PORT, such as 127.0.0.1:7700",
                    value: raw.clone(),
                    origin: r.file_source(),
                })?),
                None => None,
            },
            std::net::SocketAddr::from(([127, 0, 0, 1], 7700)),
            "ADDRESS:PORT, such as 127.0.0.1:7700",
        )?;
        let api_token = r
            .key("AGENTSWARM_API_TOKEN", &secrets, secrets_file.as_deref())
            .map(|(token, source)| {
                r.sources.insert("api_token", source);
                token
            });
        let sandbox = r.sandbox(&file)?;
        let nodes = nodes::resolve(file.nodes.as_ref(), dirs::home_dir().as_deref()).map_err(
            |message| Error::Parse {
                path: file_path.clone().unwrap_or_default(),
                message,
            },
        )?;
        let local_labels =
            nodes::local_labels(file.nodes.as_ref()).map_err(|message| Error::Parse {
                path: file_path.clone().unwrap_or_default(),
                message,
            })?;
        let repos = {
            let f = file.repos.clone().unwrap_or_default();
            let d = RepoSettings::default();
            RepoSettings {
                max_files: r.pick("repos.max_files", None, None, f.max_files, d.max_files, "")?,
                max_size_mb: r.pick(
                    "repos.max_size_mb",
                    None,
                    None,
                    f.max_size_mb,
                    d.max_size_mb,
                    "",
                )?,
                clone_depth: r.pick(
                    "repos.clone_depth",
                    None,
                    None,
                    f.clone_depth,
                    d.clone_depth,
                    "",
                )?,
                map_tokens: r.pick(
                    "repos.map_tokens",
                    None,
                    None,
                    f.map_tokens,
                    d.map_tokens,
                    "",
                )?,
            }
        };
        for (role, f) in [
            (
                "planner",
                file.models.as_ref().and_then(|m| m.planner.as_ref()),
            ),
            ("fixer", file.models.as_ref().and_then(|m| m.fixer.as_ref())),
        ] {
            if f.is_some_and(|f| f.agent.is_some()) {
                return Err(Error::Parse {
                    path: file_path.clone().unwrap_or_default(),
                    message: format!("`agent` under [models.{role}] is not supported: only the worker role runs as an outside agent; move it to [models.worker]"),
                });
            }
        }
        let agents = agents::resolve_agents(file.agents.as_ref(), sandbox.home.as_deref())?;
        if let Some(name) = &run.agent {
            if !agents.contains_key(name) {
                return Err(Error::UnknownAgent {
                    name: name.clone(),
                    origin: r
                        .sources
                        .get("run.agent")
                        .cloned()
                        .unwrap_or(Source::Default),
                    known: agents.keys().cloned().collect::<Vec<_>>().join(", "),
                });
            }
        }
        let models = r.models(ModelInputs {
            providers: file.providers.as_ref(),
            models: file.models.as_ref(),
            prices: file.prices.as_ref(),
            flags,
            secrets: &secrets,
            secrets_path: secrets_file.as_deref(),
        })?;

        Ok(Config {
            data_dir,
            outputs_dir,
            max_concurrent_workers,
            worker_timeout_secs,
            worker_memory_limit_mb,
            min_free_memory_mb,
            max_load_average,
            shutdown_grace_secs,
            memory_limiter,
            worker_wrapper,
            gate_stats_file,
            run,
            api_rate_limit_rpm,
            rate_window_ms,
            secrets_file,
            bind,
            api_token,
            sandbox,
            nodes,
            local_labels,
            repos,
            agents,
            models,
            sources: r.sources,
            file: file_path,
        })
    }

    /// Providers and models, or the error that says which variables to set.
    pub fn models(&self) -> Result<&Models> {
        match &self.models {
            Ok(m) => Ok(m),
            Err(ModelMissing::Nothing) => Err(Error::NoModel),
            Err(ModelMissing::Name) => Err(Error::NoModelName),
        }
    }

    /// Every secret value this config holds (model keys, the API token): what
    /// the redactor masks.
    pub fn secret_values(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        let mut v = self.models().map(|m| m.key_values()).unwrap_or_default();
        v.extend(self.api_token.iter().map(|t| t.expose_secret().to_owned()));
        v
    }

    /// Replace the models (used by `agentswarm demo`, which starts its own server).
    pub fn set_models(&mut self, models: Models) {
        self.models = Ok(models);
    }

    /// The SQLite file.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join("agentswarm.db")
    }

    /// Where a project's repository and worktrees live.
    pub fn project_dir(&self, project: &str) -> PathBuf {
        self.data_dir.join("projects").join(project)
    }
}

/// Source keys and variable names are `&'static str`; the few made at run
/// time (provider names, the key variables they name) are interned once
/// per process.
fn intern(s: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static NAMES: OnceLock<Mutex<std::collections::BTreeSet<&'static str>>> = OnceLock::new();
    let Ok(mut set) = NAMES.get_or_init(Default::default).lock() else {
        return "?";
    };
    if let Some(k) = set.get(s) {
        return k;
    }
    let k: &'static str = Box::leak(s.to_owned().into_boxed_str());
    set.insert(k);
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn defaults_without_anything() {
        let c = Config::resolve(None, &env_of(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.max_concurrent_workers, 10);
        assert_eq!(c.worker_timeout_secs, 1800);
        assert_eq!(c.worker_memory_limit_mb, 2048);
        assert_eq!(c.min_free_memory_mb, 1024);
        assert_eq!(c.max_load_average, 3.0);
        assert_eq!(c.shutdown_grace_secs, 10);
        assert_eq!(c.memory_limiter, "auto");
        assert_eq!(c.run, RunLimits::default());
        assert_eq!(c.outputs_dir, c.data_dir.join("outputs"));
        assert_eq!(c.api_rate_limit_rpm, 20);
        assert_eq!(c.rate_window_ms, 60_000);
        let err = c.models().unwrap_err().to_string();
        assert!(
            err.contains("OPENAI_BASE_URL") && err.contains("agentswarm demo"),
            "{err}"
        );
    }

    #[test]
    fn env_over_file_and_flags_over_env() {
        let file = FileConfig::parse(
            "max_concurrent_workers = 4\noutputs_dir = \"/srv/out\"\n[providers.h]\nbase_url = \"http://h/v1/\"\napi_key_env = \"OPENAI_API_KEY\"\n[models.worker]\nmodel = \"m-file\"\n[run]\nmax_turns = 7\n",
            Path::new("/x/agentswarm.toml"),
        )
        .unwrap();
        let env = env_of(&[
            ("MAX_CONCURRENT_WORKERS", "6"),
            ("AGENTSWARM_MODEL", "m-env"),
            ("OPENAI_API_KEY", "test-key-not-real"),
        ]);
        let flags = Overrides {
            model: Some("m-flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(Some((file, "/x/agentswarm.toml".into())), &env, &flags).unwrap();
        assert_eq!(c.max_concurrent_workers, 6);
        assert_eq!(
            c.sources["max_concurrent_workers"],
            Source::Env("MAX_CONCURRENT_WORKERS")
        );
        assert_eq!(c.outputs_dir, PathBuf::from("/srv/out"));
        assert_eq!(
            c.sources["outputs_dir"],
            Source::File("/x/agentswarm.toml".into())
        );
        assert_eq!(c.run.max_turns, 7);
        let m = c.models().unwrap();
        assert_eq!(m.worker.primary.model, "m-flag");
        assert_eq!(m.planner.primary.model, "m-flag");
        let p = &m.providers["h"];
        assert_eq!(p.base_url, "http://h/v1");
        assert_eq!(m.key_values(), vec!["test-key-not-real".to_owned()]);
        assert!(!format!("{c:?}").contains("test-key-not-real"));
    }

    #[test]
    fn sandbox_settings_resolve_and_bad_ones_say_what_to_write() {
        let c = Config::resolve(None, &env_of(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.sandbox.mode, SandboxMode::BestEffort);
        assert_eq!(c.sandbox.mechanism, SandboxMechanism::Auto);
        assert_eq!(c.sandbox.limits, CommandLimits::default());
        assert!(!c.run.allow_network);

        let file = FileConfig::parse(
            "sandbox = \"required\"\nsandbox_read_paths = [\"/opt/tool\", \"~/.rustup\"]\nsandbox_max_processes = 64\n[run]\nallow_network = true\n",
            Path::new("/x/agentswarm.toml"),
        )
        .unwrap();
        let env = env_of(&[
            ("AGENTSWARM_SANDBOX_MECHANISM", "bubblewrap"),
            ("HOME", "/home/svc"),
        ]);
        let c = Config::resolve(
            Some((file.clone(), "/x/agentswarm.toml".into())),
            &env,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.sandbox.mode, SandboxMode::Required);
        assert_eq!(c.sandbox.mechanism, SandboxMechanism::Bubblewrap);
        assert_eq!(c.sandbox.read_paths[0], PathBuf::from("/opt/tool"));
        assert_eq!(c.sandbox.read_paths[1], PathBuf::from("/home/svc/.rustup"));
        assert_eq!(c.sandbox.home, Some(PathBuf::from("/home/svc")));
        assert_eq!(c.sandbox.limits.processes, 64);
        assert!(c.run.allow_network);
        assert_eq!(
            c.sources.get("sandbox_mechanism"),
            Some(&Source::Env("AGENTSWARM_SANDBOX_MECHANISM"))
        );

        let err = Config::resolve(
            None,
            &env_of(&[("AGENTSWARM_SANDBOX", "strict")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("strict") && err.contains("required, best-effort or off"),
            "{err}"
        );
        let file = FileConfig::parse("sandbox_read_paths = [\"tools\"]\n", Path::new("/x/a.toml"))
            .unwrap();
        let err = Config::resolve(
            Some((file, "/x/a.toml".into())),
            &env_of(&[]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tools") && err.contains("absolute"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = FileConfig::parse(
            "max_workers = 3\n",
            Path::new("/etc/agentswarm/agentswarm.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("max_workers") && err.contains("/etc/agentswarm/agentswarm.toml"),
            "{err}"
        );
    }

    #[test]
    fn bad_env_value_is_a_clear_error() {
        let err = Config::resolve(
            None,
            &env_of(&[("MAX_CONCURRENT_WORKERS", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("MAX_CONCURRENT_WORKERS") && err.contains("lots"),
            "{err}"
        );
        let err = Config::resolve(
            None,
            &env_of(&[("MAX_CONCURRENT_WORKERS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("positive"), "{err}");
    }

    #[test]
    fn limits_come_from_the_deployment_names() {
        let env = env_of(&[
            ("WORKER_MEMORY_LIMIT_MB", "512"),
            ("MIN_FREE_MEMORY_MB", "0"),
            ("MAX_LOAD_AVERAGE", "1.5"),
            ("SHUTDOWN_GRACE_SECONDS", "3"),
            ("AGENTSWARM_MEMORY_LIMITER", "watchdog"),
        ]);
        let c = Config::resolve(None, &env, &Overrides::default()).unwrap();
        assert_eq!(c.worker_memory_limit_mb, 512);
        assert_eq!(c.min_free_memory_mb, 0);
        assert_eq!(c.max_load_average, 1.5);
        assert_eq!(c.shutdown_grace_secs, 3);
        assert_eq!(c.memory_limiter, "watchdog");
        assert_eq!(
            c.sources["worker_memory_limit_mb"],
            Source::Env("WORKER_MEMORY_LIMIT_MB")
        );
        for (k, v) in [
            ("WORKER_MEMORY_LIMIT_MB", "0"),
            ("MAX_LOAD_AVERAGE", "-1"),
            ("AGENTSWARM_MEMORY_LIMITER", "rlimit"),
        ] {
            let err = Config::resolve(None, &env_of(&[(k, v)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(k), "{err}");
        }
    }

    #[test]
    fn key_without_model_name_says_so() {
        let c = Config::resolve(
            None,
            &env_of(&[("OPENAI_API_KEY", "test-key")]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(c
            .models()
            .unwrap_err()
            .to_string()
            .contains("AGENTSWARM_MODEL"));
    }

    #[test]
    fn local_server_needs_no_key() {
        let env = env_of(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:11434/v1"),
            ("AGENTSWARM_MODEL", "llama3"),
        ]);
        let c = Config::resolve(None, &env, &Overrides::default()).unwrap();
        let m = c.models().unwrap();
        assert!(m.providers["default"].api_key.is_none());
        assert_eq!(m.worker.primary.model, "llama3");
        let env = env_of(&[
            ("OPENAI_BASE_URL", "ftp://x"),
            ("AGENTSWARM_MODEL", "llama3"),
        ]);
        assert!(Config::resolve(None, &env, &Overrides::default()).is_err());
    }

    fn resolve_file(text: &str, env: &[(&str, &str)]) -> Result<Config> {
        let path = PathBuf::from("/x/agentswarm.toml");
        let file = FileConfig::parse(text, &path)?;
        Config::resolve(Some((file, path)), &env_of(env), &Overrides::default())
    }

    #[test]
    fn roles_providers_and_fallbacks() {
        let c = resolve_file(
            r#"
[providers.openrouter]
base_url = "https://openrouter.ai/api/v1"
api_key_env = "OPENROUTER_API_KEY"
headers = { "X-Title" = "agentswarm" }
[providers.claude]
kind = "anthropic"
tokens_per_minute = 40000
[models.worker]
provider = "openrouter"
model = "qwen/qwen-2.5-coder-32b-instruct"
max_tokens = 4096
tool_result_max_bytes = 8192
fallback = [{ provider = "claude", model = "claude-sonnet-4-5" }]
[models.planner]
provider = "claude"
model = "claude-opus-4-1"
temperature = 0.2
[prices."claude-opus-4-1"]
input_per_mtok = 15.0
output_per_mtok = 75.0
"#,
            &[
                ("OPENROUTER_API_KEY", "sk-or-v1-test-not-real"),
                ("ANTHROPIC_API_KEY", "sk-ant-test-not-real"),
                ("AGENTSWARM_FIXER_MODEL", "claude-haiku"),
            ],
        )
        .unwrap();
        let m = c.models().unwrap();
        assert_eq!(
            m.worker.primary.to_string(),
            "openrouter/qwen/qwen-2.5-coder-32b-instruct"
        );
        assert_eq!(m.worker.fallback[0].to_string(), "claude/claude-sonnet-4-5");
        assert_eq!(m.worker.max_tokens, Some(4096));
        // The agent's bounds: set, or known for the model, or the defaults.
        assert_eq!(m.worker.agent.tool_result_max_bytes, 8192);
        assert_eq!(m.worker.agent.context_window_tokens, 32_768);
        assert_eq!(m.worker.agent.read_max_lines, 2000);
        assert_eq!(m.planner.agent.context_window_tokens, 200_000);
        assert_eq!(m.planner.primary.to_string(), "claude/claude-opus-4-1");
        // The fixer inherits the planner's provider, its model from the environment.
        assert_eq!(m.fixer.primary.to_string(), "claude/claude-haiku");
        assert_eq!(
            c.sources["models.fixer.model"],
            Source::Env("AGENTSWARM_FIXER_MODEL")
        );
        let claude = &m.providers["claude"];
        assert_eq!(claude.kind, ProviderKind::Anthropic);
        assert_eq!(claude.base_url, "https://api.anthropic.com/v1");
        assert_eq!(claude.tokens_per_minute, 40000);
        assert!(claude.missing_key().is_none());
        assert_eq!(m.providers["openrouter"].headers["X-Title"], "agentswarm");
        assert_eq!(m.cost("claude-opus-4-1", 1_000_000, 100_000), Some(22.5));
        assert_eq!(m.cost("unpriced", 1, 1), None);
        // Prompt-cache tokens (of the input): writes at 1.25 ×, reads at 0.1 ×.
        let cost = m
            .cost_cached("claude", "claude-opus-4-1", 1_000_000, 0, 200_000, 500_000)
            .unwrap();
        let expected = 300_000.0 * 15.0 / 1e6 + 200_000.0 * 18.75 / 1e6 + 500_000.0 * 1.5 / 1e6;
        assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
        // OpenAI-compatible providers: cached input as plain input unless
        // the price says what a cache read costs.
        let cost = m
            .cost_cached("openrouter", "claude-opus-4-1", 1_000_000, 0, 0, 500_000)
            .unwrap();
        assert!((cost - 15.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn model_errors_name_what_to_fix() {
        let err = resolve_file("[models.workr]\nmodel = \"m\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("workr") && err.contains("/x/agentswarm.toml"),
            "{err}"
        );
        let err = resolve_file(
            "[providers.a]\n[models.worker]\nprovider = \"b\"\nmodel = \"m\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("b (role worker; known: a)"), "{err}");
        let err = resolve_file("[providers.a]\nkind = \"gemini\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("openai or anthropic"), "{err}");
        // A key named but not set is found missing, with what to do.
        let c = resolve_file(
            "[providers.a]\napi_key_env = \"A_KEY\"\n[models.worker]\nmodel = \"m\"\n",
            &[],
        )
        .unwrap();
        let err = c.models().unwrap().providers["a"]
            .missing_key()
            .unwrap()
            .to_string();
        assert!(
            err.contains("A_KEY") && err.contains("secrets file"),
            "{err}"
        );
    }

    #[test]
    fn the_api_address_and_token() {
        let c = resolve_file("", &[]).unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:7700");
        assert!(c.api_token.is_none());
        let c = resolve_file("bind = \"0.0.0.0:8080\"\n", &[]).unwrap();
        assert_eq!(c.bind.to_string(), "0.0.0.0:8080");
        let c = resolve_file(
            "bind = \"0.0.0.0:8080\"\n",
            &[
                ("AGENTSWARM_BIND", "127.0.0.1:9000"),
                ("AGENTSWARM_API_TOKEN", "tok-not-real"),
            ],
        )
        .unwrap();
        assert_eq!(c.bind.to_string(), "127.0.0.1:9000");
        assert_eq!(c.sources["bind"], Source::Env("AGENTSWARM_BIND"));
        assert!(c.secret_values().contains(&"tok-not-real".to_owned()));
        assert!(
            !format!("{c:?}").contains("tok-not-real"),
            "Debug never prints the token"
        );
        let err = resolve_file("bind = \"localhost\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("ADDRESS:PORT"), "{err}");
    }

    #[test]
    fn keys_come_from_the_secrets_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets.env");
        std::fs::write(&secrets, "A_KEY=sk-test-from-file-not-real\n").unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "secrets_file = {:?}\n[providers.a]\napi_key_env = \"A_KEY\"\n[models.worker]\nmodel = \"m\"\n",
            secrets.display().to_string()
        );
        let c = resolve_file(&text, &[]).unwrap();
        assert_eq!(
            c.models().unwrap().key_values(),
            vec!["sk-test-from-file-not-real".to_owned()]
        );
        assert_eq!(
            c.sources["providers.a.api_key"],
            Source::SecretsFile(secrets.clone())
        );
        // The environment wins over the file.
        let c = resolve_file(&text, &[("A_KEY", "sk-test-from-env-not-real")]).unwrap();
        assert_eq!(
            c.models().unwrap().key_values(),
            vec!["sk-test-from-env-not-real".to_owned()]
        );
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = resolve_file(&text, &[]).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn budget_and_rate_limit() {
        let c = resolve_file(
            "api_rate_limit_rpm = 30\n[run]\nmax_cost_usd = 2.5\n",
            &[("AGENTSWARM_MAX_TOKENS", "100000")],
        )
        .unwrap();
        assert_eq!(c.api_rate_limit_rpm, 30);
        assert_eq!(c.run.max_cost_usd, Some(2.5));
        assert_eq!(c.run.max_tokens, Some(100_000));
        let c = resolve_file("", &[("API_RATE_LIMIT_RPM", "5")]).unwrap();
        assert_eq!(c.api_rate_limit_rpm, 5);
        assert_eq!(
            c.sources["api_rate_limit_rpm"],
            Source::Env("API_RATE_LIMIT_RPM")
        );
        assert!(resolve_file("[run]\nmax_cost_usd = -1.0\n", &[]).is_err());
        // Limits stored before budgets existed still load.
        let old: RunLimits = serde_json::from_str(
            r#"{"max_tasks":1,"max_attempts":1,"max_turns":1,"max_fix_rounds":0,"command_timeout_secs":1,"verify_timeout_secs":1,"output_cap_bytes":1}"#,
        )
        .unwrap();
        assert_eq!(old.max_cost_usd, None);
    }

    #[test]
    fn the_worker_agent_comes_from_the_file_the_environment_or_the_flag() {
        let text = "[agents.gem]\nkind = \"acp\"\ncommand = [\"gemini\", \"--acp\"]\nspeaks = \"openai_chat\"\n[models.worker]\nmodel = \"m\"\nagent = \"gem\"\n";
        let c = resolve_file(text, &[]).unwrap();
        assert_eq!(c.run.agent.as_deref(), Some("gem"));
        assert!(matches!(c.agents["gem"], AgentChoice::External(_)));
        let c = resolve_file(text, &[("AGENTSWARM_AGENT", "builtin")]).unwrap();
        assert_eq!(c.run.agent.as_deref(), Some("builtin"));
        let path = PathBuf::from("/x/agentswarm.toml");
        let flags = Overrides {
            agent: Some("nope".into()),
            ..Overrides::default()
        };
        let file = FileConfig::parse(text, &path).unwrap();
        let e = Config::resolve(Some((file, path)), &env_of(&[]), &flags)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("agent \"nope\" (from flag --agent) is not configured"),
            "{e}"
        );
        assert!(e.contains("builtin, gem"), "{e}");
        let e = resolve_file("[models.planner]\nmodel = \"m\"\nagent = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("only the worker role"), "{e}");
    }

    #[test]
    fn the_checked_in_schema_is_current() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/agentswarm.schema.json");
        let want = serde_json::to_string_pretty(&file_schema()).unwrap() + "\n";
        if std::env::var_os("AGENTSWARM_BLESS").is_some() {
            std::fs::write(&path, &want).unwrap();
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            have == want,
            "docs/agentswarm.schema.json is stale: run `AGENTSWARM_BLESS=1 cargo test -p swarm-config schema`"
        );
    }

    #[test]
    fn the_example_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/agentswarm.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        FileConfig::parse(&text, &path).unwrap();
    }
}
