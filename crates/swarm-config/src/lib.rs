//! Configuration: an optional `agentswarm.toml`, then the environment, then
//! command-line flags, resolved into one [`Config`] with every default filled
//! in and the source of every value recorded.
//!
//! Nothing here reads the process environment by itself: callers pass an
//! environment lookup, so tests never touch global state.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

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
        "no model endpoint is configured. Set OPENAI_BASE_URL (e.g. https://api.openai.com/v1 or \
         http://127.0.0.1:11434/v1 for Ollama), OPENAI_API_KEY (not needed for local servers) and \
         AGENTSWARM_MODEL (e.g. gpt-4o-mini), or a [model] table in agentswarm.toml. \
         To try AgentSwarm without any model, run `agentswarm demo`."
    )]
    NoModel,
    #[error(
        "AGENTSWARM_MODEL is not set: export the model name (e.g. AGENTSWARM_MODEL=gpt-4o-mini) or \
         set `model` under [model] in agentswarm.toml"
    )]
    NoModelName,
}

pub type Result<T> = std::result::Result<T, Error>;

/// Where a resolved value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File(p) => write!(f, "file {}", p.display()),
            Source::Env(n) => write!(f, "environment {n}"),
            Source::Flag(n) => write!(f, "flag {n}"),
        }
    }
}

/// The file format: every field optional; unknown keys are an error.
#[derive(Debug, Default, Clone, Deserialize)]
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
    pub model: Option<FileModel>,
    pub run: Option<FileRun>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileModel {
    pub base_url: Option<String>,
    /// Name of the environment variable holding the key (default `OPENAI_API_KEY`).
    pub api_key_env: Option<String>,
    pub model: Option<String>,
    pub request_timeout_seconds: Option<u64>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRun {
    pub max_tasks: Option<u32>,
    pub max_attempts: Option<u32>,
    pub max_turns: Option<u32>,
    pub max_fix_rounds: Option<u32>,
    pub command_timeout_seconds: Option<u64>,
    pub verify_timeout_seconds: Option<u64>,
    pub output_cap_bytes: Option<usize>,
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
        }
    }
}

/// The model endpoint (OpenAI-compatible Chat Completions).
#[derive(Clone, PartialEq)]
pub struct ModelConfig {
    pub base_url: String,
    /// The key's value; never printed (see the Debug impl).
    pub api_key: Option<String>,
    /// Where the key came from (for messages; never the value).
    pub api_key_env: String,
    pub model: String,
    pub request_timeout_secs: u64,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

impl fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelConfig")
            .field("base_url", &self.base_url)
            .field(
                "api_key",
                &self
                    .api_key
                    .as_ref()
                    .map(|k| format!("[redacted, {} chars]", k.len())),
            )
            .field("api_key_env", &self.api_key_env)
            .field("model", &self.model)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .finish()
    }
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
    /// `Err` keeps why no model is configured until a command needs one.
    model: std::result::Result<ModelConfig, ModelMissing>,
    /// Source of each resolved value, by its name in the file.
    pub sources: BTreeMap<&'static str, Source>,
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy)]
enum ModelMissing {
    Nothing,
    Name,
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
        if let Some((v, name)) = flag {
            self.sources.insert(key, Source::Flag(name));
            return Ok(v);
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
                return Ok(v);
            }
        }
        if let Some(v) = file {
            let src = self
                .file_path
                .clone()
                .map(Source::File)
                .unwrap_or(Source::Default);
            self.sources.insert(key, src);
            return Ok(v);
        }
        self.sources.insert(key, Source::Default);
        Ok(default)
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

        let fm = file.model.clone().unwrap_or_default();
        let api_key_env = fm
            .api_key_env
            .clone()
            .unwrap_or_else(|| "OPENAI_API_KEY".to_owned());
        let api_key = env(&api_key_env).filter(|k| !k.trim().is_empty());
        let base_url_given = flags.base_url.is_some()
            || env("OPENAI_BASE_URL").is_some_and(|s| !s.trim().is_empty())
            || fm.base_url.is_some();
        let model_given = flags.model.is_some()
            || env("AGENTSWARM_MODEL").is_some_and(|s| !s.trim().is_empty())
            || fm.model.is_some();
        let model = if !base_url_given && !model_given && api_key.is_none() {
            Err(ModelMissing::Nothing)
        } else if !model_given {
            Err(ModelMissing::Name)
        } else {
            let base_url: String = r.pick(
                "model.base_url",
                flags.base_url.clone().map(|v| (v, "--base-url")),
                Some("OPENAI_BASE_URL"),
                fm.base_url.clone(),
                "https://api.openai.com/v1".to_owned(),
                "a URL",
            )?;
            let model: String = r.pick(
                "model.model",
                flags.model.clone().map(|v| (v, "--model")),
                Some("AGENTSWARM_MODEL"),
                fm.model.clone(),
                String::new(),
                "a model name",
            )?;
            let request_timeout_secs = r.pick(
                "model.request_timeout_seconds",
                None,
                None,
                fm.request_timeout_seconds,
                300,
                "",
            )?;
            if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
                return Err(r.invalid(
                    "model.base_url",
                    "OPENAI_BASE_URL",
                    "an http:// or https:// URL",
                    base_url,
                ));
            }
            r.sources.insert(
                "model.api_key",
                if api_key.is_some() {
                    Source::Env(leak_name(&api_key_env))
                } else {
                    Source::Default
                },
            );
            Ok(ModelConfig {
                base_url: base_url.trim_end_matches('/').to_owned(),
                api_key,
                api_key_env,
                model,
                request_timeout_secs,
                max_tokens: fm.max_tokens,
                temperature: fm.temperature,
            })
        };

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
            model,
            sources: r.sources,
            file: file_path,
        })
    }

    /// The model endpoint, or the error that says which variables to set.
    pub fn model(&self) -> Result<&ModelConfig> {
        match &self.model {
            Ok(m) => Ok(m),
            Err(ModelMissing::Nothing) => Err(Error::NoModel),
            Err(ModelMissing::Name) => Err(Error::NoModelName),
        }
    }

    /// Replace the model endpoint (used by `agentswarm demo`, which starts its own).
    pub fn set_model(&mut self, model: ModelConfig) {
        self.model = Ok(model);
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

/// Source names are `&'static str`; the key variable's name is configurable,
/// so the few distinct names are interned once.
fn leak_name(name: &str) -> &'static str {
    match name {
        "OPENAI_API_KEY" => "OPENAI_API_KEY",
        _ => Box::leak(name.to_owned().into_boxed_str()),
    }
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
        let err = c.model().unwrap_err().to_string();
        assert!(
            err.contains("OPENAI_BASE_URL") && err.contains("agentswarm demo"),
            "{err}"
        );
    }

    #[test]
    fn env_over_file_and_flags_over_env() {
        let file = FileConfig::parse(
            "max_concurrent_workers = 4\noutputs_dir = \"/srv/out\"\n[model]\nmodel = \"m-file\"\nbase_url = \"http://h/v1/\"\n[run]\nmax_turns = 7\n",
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
        let m = c.model().unwrap();
        assert_eq!(m.model, "m-flag");
        assert_eq!(m.base_url, "http://h/v1");
        assert_eq!(m.api_key.as_deref(), Some("test-key-not-real"));
        assert!(!format!("{m:?}").contains("test-key-not-real"));
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
            .model()
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
        assert_eq!(c.model().unwrap().api_key, None);
        let env = env_of(&[
            ("OPENAI_BASE_URL", "ftp://x"),
            ("AGENTSWARM_MODEL", "llama3"),
        ]);
        assert!(Config::resolve(None, &env, &Overrides::default()).is_err());
    }
}
