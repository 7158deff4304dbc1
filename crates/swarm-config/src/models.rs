//! Providers and the model of each role (`[providers.NAME]`, `[models.ROLE]`,
//! `[prices."MODEL"]`), resolved with the environment and flags.
//!
//! Without a `[providers]` table there is one implicit provider named
//! `default`: an OpenAI-compatible endpoint from `OPENAI_BASE_URL` (or
//! `--base-url`) with the key in `OPENAI_API_KEY` — the quick path for one
//! endpoint and one model (`AGENTSWARM_MODEL`).

use crate::{intern, Error, Overrides, Resolver, Result, Secrets, Source};
use secrecy::SecretString;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
pub use swarm_protocol::worker::AgentSettings;

/// `[providers.NAME]` in the file.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileProvider {
    /// `openai` (Chat Completions; OpenAI, OpenRouter, Ollama, vLLM,
    /// llama.cpp server, LM Studio) or `anthropic` (Messages). Default `openai`.
    pub kind: Option<String>,
    /// Default `https://api.openai.com/v1` or `https://api.anthropic.com/v1`.
    pub base_url: Option<String>,
    /// NAME of the variable (environment or secrets file) holding the key —
    /// never the key. Default for `anthropic`: `ANTHROPIC_API_KEY`; for
    /// `openai`: none (local servers need no key).
    pub api_key_env: Option<String>,
    /// Extra request headers (e.g. OpenRouter's `HTTP-Referer`, `X-Title`).
    pub headers: Option<BTreeMap<String, String>>,
    /// Default 300.
    pub request_timeout_seconds: Option<u64>,
    /// Default 10.
    pub connect_timeout_seconds: Option<u64>,
    /// Retries of a failed request (429, 5xx, …) before falling back. Default 4.
    pub max_retries: Option<u32>,
    /// Tokens (input + output) this provider may use in any 60 s; 0 or absent: no limit.
    pub tokens_per_minute: Option<u64>,
}

/// `[models.planner]`, `[models.worker]`, `[models.fixer]`.
#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileModels {
    pub planner: Option<FileRole>,
    pub worker: Option<FileRole>,
    pub fixer: Option<FileRole>,
}

#[derive(Debug, Default, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileRole {
    /// A name under `[providers]`; may be left out when there is only one.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// Tried in order when the model keeps failing (5xx or timeouts after
    /// retries, overloaded, model not found).
    pub fallback: Option<Vec<FileModelRef>>,
    /// The model's context window in tokens. Default: known for common
    /// model families (see docs/providers.md), else 32768.
    pub context_window_tokens: Option<u64>,
    /// Bytes of one tool result of the built-in agent. Default 32768.
    pub tool_result_max_bytes: Option<usize>,
    /// Lines of one `read_file` page. Default 2000.
    pub read_max_lines: Option<usize>,
    /// Matching lines one `search` shows. Default 200.
    pub search_max_matches: Option<usize>,
    /// Entries one `list_files` shows. Default 2000.
    pub list_max_entries: Option<usize>,
    /// Only under `[models.worker]`: the agent that does tasks, a name under
    /// `[agents]` (default: the built-in agent). A plan task's `agent`, or
    /// a project's (`--agent`, the API's `agent` option), comes first.
    pub agent: Option<String>,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileModelRef {
    pub provider: String,
    pub model: String,
}

/// `[prices."MODEL"]`: US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// Input written to the prompt cache. Default 1.25 × `input_per_mtok`
    /// (Anthropic's five-minute cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_per_mtok: Option<f64>,
    /// Input read from the prompt cache. Default 0.1 × `input_per_mtok`
    /// (Anthropic's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_per_mtok: Option<f64>,
}

impl Price {
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        self.cost_cached(input_tokens, output_tokens, 0, 0)
    }

    /// The cost when `cache_write` and `cache_read` of the `input_tokens`
    /// were written to or read from the prompt cache.
    pub fn cost_cached(
        &self,
        input_tokens: u64,
        output_tokens: u64,
        cache_write: u64,
        cache_read: u64,
    ) -> f64 {
        let plain = input_tokens.saturating_sub(cache_write + cache_read);
        let write = self
            .cache_write_per_mtok
            .unwrap_or(self.input_per_mtok * 1.25);
        let read = self
            .cache_read_per_mtok
            .unwrap_or(self.input_per_mtok * 0.1);
        (plain as f64 * self.input_per_mtok
            + cache_write as f64 * write
            + cache_read as f64 * read
            + output_tokens as f64 * self.output_per_mtok)
            / 1e6
    }
}

pub use swarm_protocol::chat::ProviderKind;

/// A resolved provider. `Debug` shows where the key came from, never it.
#[derive(Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub base_url: String,
    pub api_key: Option<SecretString>,
    pub api_key_env: Option<String>,
    /// The provider cannot work without a key (`api_key_env` set, or Anthropic).
    pub key_required: bool,
    pub headers: BTreeMap<String, String>,
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    pub max_retries: u32,
    pub tokens_per_minute: u64,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("api_key_env", &self.api_key_env)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ProviderConfig {
    /// A provider with no key and every other setting at its default
    /// (timeouts 300 s and 10 s, 4 retries, no tokens-per-minute limit).
    pub fn new(name: &str, kind: ProviderKind, base_url: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: None,
            api_key_env: None,
            key_required: false,
            headers: BTreeMap::new(),
            request_timeout_secs: 300,
            connect_timeout_secs: 10,
            max_retries: 4,
            tokens_per_minute: 0,
        }
    }

    /// The error for a required key that is missing, saying what to do.
    pub fn missing_key(&self) -> Option<Error> {
        if !self.key_required || self.api_key.is_some() {
            return None;
        }
        Some(Error::MissingKey {
            provider: self.name.clone(),
            env: self
                .api_key_env
                .clone()
                .unwrap_or_else(|| "ANTHROPIC_API_KEY".into()),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    pub provider: String,
    pub model: String,
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

/// One role's model, its fallbacks and generation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleModels {
    pub primary: ModelRef,
    pub fallback: Vec<ModelRef>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    /// The built-in agent's bounds for this role's model.
    pub agent: AgentSettings,
}

/// The context window of a model known by name, in tokens; `None` when
/// the name is not one of the families below (the default 32768 is used).
pub fn known_context_window(model: &str) -> Option<u64> {
    // The name without a router's vendor prefix (`openai/gpt-4o`).
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    let starts = |p: &str| m.starts_with(p);
    Some(if starts("claude") {
        200_000
    } else if starts("gpt-4.1") {
        1_047_576
    } else if starts("gpt-5") {
        400_000
    } else if starts("o1") || starts("o3") || starts("o4") {
        200_000
    } else if starts("gpt-4o") || starts("gpt-4-turbo") {
        128_000
    } else if starts("gpt-3.5") {
        16_385
    } else if starts("gemini") {
        1_048_576
    } else if starts("deepseek")
        || starts("llama-3.1")
        || starts("llama3.1")
        || starts("mistral-large")
    {
        128_000
    } else if starts("qwen") {
        32_768
    } else {
        return None;
    })
}

/// The roles a model call is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelRole {
    Planner,
    Worker,
    Fixer,
}

impl ModelRole {
    pub const ALL: [ModelRole; 3] = [ModelRole::Planner, ModelRole::Worker, ModelRole::Fixer];
    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Planner => "planner",
            ModelRole::Worker => "worker",
            ModelRole::Fixer => "fixer",
        }
    }
}

/// Everything about models: providers, the model of each role, prices.
#[derive(Debug, Clone)]
pub struct Models {
    pub providers: BTreeMap<String, ProviderConfig>,
    pub planner: RoleModels,
    pub worker: RoleModels,
    pub fixer: RoleModels,
    /// By model name.
    pub prices: BTreeMap<String, Price>,
}

impl Models {
    pub fn role(&self, role: ModelRole) -> &RoleModels {
        match role {
            ModelRole::Planner => &self.planner,
            ModelRole::Worker => &self.worker,
            ModelRole::Fixer => &self.fixer,
        }
    }

    /// Whether some role's model or fallback is served by `provider`.
    pub fn uses(&self, provider: &str) -> bool {
        ModelRole::ALL.iter().any(|r| {
            let r = self.role(*r);
            std::iter::once(&r.primary)
                .chain(&r.fallback)
                .any(|m| m.provider == provider)
        })
    }

    /// The cost of a call in US dollars, when the model has a price.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
        self.prices
            .get(model)
            .map(|p| p.cost(input_tokens, output_tokens))
    }

    /// The models some role uses (primary or fallback) that have no
    /// `[prices."MODEL"]` entry, sorted, each once: their calls count $0
    /// towards a cost budget.
    pub fn unpriced(&self) -> Vec<&str> {
        let mut names: Vec<&str> = ModelRole::ALL
            .iter()
            .flat_map(|r| {
                let r = self.role(*r);
                std::iter::once(&r.primary).chain(&r.fallback)
            })
            .map(|m| m.model.as_str())
            .filter(|m| !self.prices.contains_key(*m))
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The cost of a call to `model` of `provider` whose input was partly
    /// written to or read from the prompt cache, when the model has a price.
    /// Without a `cache_read_per_mtok`, cache reads are priced as Anthropic
    /// prices them (0.1 × input) on an Anthropic provider, and as plain
    /// input on others (OpenAI's discount depends on the model: an
    /// overestimate, never an underestimate).
    pub fn cost_cached(
        &self,
        provider: &str,
        model: &str,
        input_tokens: u64,
        output_tokens: u64,
        cache_write: u64,
        cache_read: u64,
    ) -> Option<f64> {
        let anthropic = self
            .providers
            .get(provider)
            .is_some_and(|p| p.kind == ProviderKind::Anthropic);
        self.prices.get(model).map(|p| {
            let mut p = *p;
            if !anthropic && p.cache_read_per_mtok.is_none() {
                p.cache_read_per_mtok = Some(p.input_per_mtok);
            }
            p.cost_cached(input_tokens, output_tokens, cache_write, cache_read)
        })
    }

    /// Every configured key value (for redaction).
    pub fn key_values(&self) -> Vec<String> {
        use secrecy::ExposeSecret;
        self.providers
            .values()
            .filter_map(|p| p.api_key.as_ref().map(|k| k.expose_secret().to_owned()))
            .collect()
    }
}

/// Why no model is configured (kept until a command needs one).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ModelMissing {
    Nothing,
    Name,
}

pub(crate) struct ModelInputs<'a> {
    pub providers: Option<&'a BTreeMap<String, FileProvider>>,
    pub models: Option<&'a FileModels>,
    pub prices: Option<&'a BTreeMap<String, Price>>,
    pub flags: &'a Overrides,
    pub secrets: &'a Secrets,
    pub secrets_path: Option<&'a std::path::Path>,
}

impl Resolver<'_> {
    /// A key by variable name: the environment first, then the secrets file.
    pub(crate) fn key(
        &self,
        name: &str,
        secrets: &Secrets,
        secrets_path: Option<&std::path::Path>,
    ) -> Option<(SecretString, Source)> {
        if let Some(v) = (self.env)(name).filter(|v| !v.trim().is_empty()) {
            return Some((
                SecretString::from(v.trim().to_owned()),
                Source::Env(intern(name)),
            ));
        }
        let v = secrets.get(name).filter(|v| !v.trim().is_empty())?;
        Some((
            SecretString::from(v.trim().to_owned()),
            Source::SecretsFile(secrets_path.map(|p| p.to_owned()).unwrap_or_default()),
        ))
    }

    pub(crate) fn file_source(&self) -> Source {
        self.file_path
            .clone()
            .map(Source::File)
            .unwrap_or(Source::Default)
    }

    pub(crate) fn models(
        &mut self,
        i: ModelInputs<'_>,
    ) -> Result<std::result::Result<Models, ModelMissing>> {
        let mut providers = BTreeMap::new();
        match i.providers {
            Some(table) if !table.is_empty() => {
                for (name, p) in table {
                    let pc = self.provider(name, p, &i)?;
                    providers.insert(name.clone(), pc);
                }
            }
            _ => {
                // The quick path: one OpenAI-compatible endpoint from the environment.
                let base_url: String = self.pick(
                    "providers.default.base_url",
                    i.flags.base_url.clone().map(|v| (v, "--base-url")),
                    Some("OPENAI_BASE_URL"),
                    None,
                    "https://api.openai.com/v1".to_owned(),
                    "a URL",
                )?;
                let given =
                    self.sources.get("providers.default.base_url") != Some(&Source::Default);
                let key = self.key("OPENAI_API_KEY", i.secrets, i.secrets_path);
                let any_model = i.models.is_some()
                    || i.flags.model.is_some()
                    || ["AGENTSWARM_MODEL", "AGENTSWARM_WORKER_MODEL"]
                        .iter()
                        .any(|n| (self.env)(n).is_some_and(|s| !s.trim().is_empty()));
                if !given && key.is_none() && !any_model {
                    return Ok(Err(ModelMissing::Nothing));
                }
                check_url(
                    self,
                    "providers.default.base_url",
                    "OPENAI_BASE_URL",
                    &base_url,
                )?;
                let mut default = ProviderConfig::new("default", ProviderKind::OpenAi, &base_url);
                default.api_key_env = Some("OPENAI_API_KEY".into());
                // Local servers need no key; OpenAI (the default endpoint)
                // and OpenRouter always do: say so before any request.
                default.key_required = !given || hosted_needs_key(&base_url);
                if let Some((value, src)) = key {
                    self.sources.insert("providers.default.api_key", src);
                    default.api_key = Some(value);
                }
                providers.insert("default".to_owned(), default);
            }
        }

        let fm = i.models.cloned().unwrap_or_default();
        let only = (providers.len() == 1)
            .then(|| providers.keys().next().cloned())
            .flatten();
        let worker = match self.role(
            ModelRole::Worker,
            fm.worker.as_ref(),
            None,
            &only,
            &providers,
            i.flags,
        )? {
            Some(r) => r,
            None => return Ok(Err(ModelMissing::Name)),
        };
        let planner = match self.role(
            ModelRole::Planner,
            fm.planner.as_ref(),
            Some(&worker),
            &only,
            &providers,
            i.flags,
        )? {
            Some(r) => r,
            None => worker.clone(),
        };
        let fixer = match self.role(
            ModelRole::Fixer,
            fm.fixer.as_ref(),
            Some(&planner),
            &only,
            &providers,
            i.flags,
        )? {
            Some(r) => r,
            None => planner.clone(),
        };
        let prices = i.prices.cloned().unwrap_or_default();
        for (model, p) in &prices {
            if !(p.input_per_mtok.is_finite()
                && p.output_per_mtok.is_finite()
                && p.input_per_mtok >= 0.0
                && p.output_per_mtok >= 0.0)
            {
                return Err(Error::Invalid {
                    name: "prices",
                    expected: "prices of 0 or more US dollars per million tokens",
                    value: model.clone(),
                    origin: self.file_source(),
                });
            }
        }
        Ok(Ok(Models {
            providers,
            planner,
            worker,
            fixer,
            prices,
        }))
    }

    fn provider(
        &mut self,
        name: &str,
        p: &FileProvider,
        i: &ModelInputs<'_>,
    ) -> Result<ProviderConfig> {
        let origin = self.file_source();
        let kind = match p.kind.as_deref().unwrap_or("openai") {
            "openai" => ProviderKind::OpenAi,
            "anthropic" => ProviderKind::Anthropic,
            other => {
                return Err(Error::Invalid {
                    name: "providers.*.kind",
                    expected: "openai or anthropic",
                    value: format!("{other} (provider {name})"),
                    origin,
                })
            }
        };
        let base_url = p.base_url.clone().unwrap_or_else(|| match kind {
            ProviderKind::OpenAi => "https://api.openai.com/v1".into(),
            ProviderKind::Anthropic => "https://api.anthropic.com/v1".into(),
        });
        let key_name = intern(&format!("providers.{name}.base_url"));
        self.sources.insert(key_name, origin.clone());
        check_url(self, key_name, "providers.*.base_url", &base_url)?;
        let api_key_env = p.api_key_env.clone().or(match kind {
            ProviderKind::Anthropic => Some("ANTHROPIC_API_KEY".to_owned()),
            ProviderKind::OpenAi => None,
        });
        let key = api_key_env
            .as_deref()
            .and_then(|n| self.key(n, i.secrets, i.secrets_path));
        let defaults = ProviderConfig::new(name, kind, &base_url);
        let request_timeout_secs = p
            .request_timeout_seconds
            .unwrap_or(defaults.request_timeout_secs);
        let connect_timeout_secs = p
            .connect_timeout_seconds
            .unwrap_or(defaults.connect_timeout_secs);
        if request_timeout_secs == 0 || connect_timeout_secs == 0 {
            return Err(Error::Invalid {
                name: "providers.*.request_timeout_seconds",
                expected: "a positive number of seconds",
                value: format!("0 (provider {name})"),
                origin,
            });
        }
        let api_key = key.map(|(value, src)| {
            self.sources
                .insert(intern(&format!("providers.{name}.api_key")), src);
            value
        });
        Ok(ProviderConfig {
            api_key,
            key_required: p.api_key_env.is_some() || kind == ProviderKind::Anthropic,
            api_key_env,
            headers: p.headers.clone().unwrap_or_default(),
            request_timeout_secs,
            connect_timeout_secs,
            max_retries: p.max_retries.unwrap_or(defaults.max_retries),
            tokens_per_minute: p.tokens_per_minute.unwrap_or(defaults.tokens_per_minute),
            ..defaults
        })
    }

    /// A role's models: flag `--model` > `AGENTSWARM_<ROLE>_MODEL` >
    /// `AGENTSWARM_MODEL` > the file > the role it defaults to (`inherit`).
    /// `None` when no model name is found anywhere.
    #[allow(clippy::too_many_arguments)]
    fn role(
        &mut self,
        role: ModelRole,
        file: Option<&FileRole>,
        inherit: Option<&RoleModels>,
        only: &Option<String>,
        providers: &BTreeMap<String, ProviderConfig>,
        flags: &Overrides,
    ) -> Result<Option<RoleModels>> {
        let key = intern(&format!("models.{}.model", role.as_str()));
        let role_env = match role {
            ModelRole::Planner => "AGENTSWARM_PLANNER_MODEL",
            ModelRole::Worker => "AGENTSWARM_WORKER_MODEL",
            ModelRole::Fixer => "AGENTSWARM_FIXER_MODEL",
        };
        let env_model = |name: &'static str| {
            (self.env)(name)
                .filter(|s| !s.trim().is_empty())
                .map(|v| (v.trim().to_owned(), name))
        };
        let (model, source) = if let Some(m) = &flags.model {
            (m.clone(), Source::Flag("--model"))
        } else if let Some((m, n)) = env_model(role_env).or_else(|| env_model("AGENTSWARM_MODEL")) {
            (m, Source::Env(n))
        } else if let Some(m) = file.and_then(|f| f.model.clone()) {
            (m, self.file_source())
        } else if let Some(r) = inherit {
            // Nothing of its own: the whole role is inherited, but for the file's settings.
            if file.is_none() {
                return Ok(None);
            }
            (r.primary.model.clone(), Source::Default)
        } else {
            return Ok(None);
        };
        self.sources.insert(key, source);
        let provider = match file.and_then(|f| f.provider.clone()) {
            Some(p) => p,
            None => match (inherit, only) {
                (Some(r), _) => r.primary.provider.clone(),
                (None, Some(only)) => only.clone(),
                (None, None) => {
                    return Err(Error::Invalid {
                        name: "models.*.provider",
                        expected: "the name of one of the [providers]",
                        value: format!("nothing (role {})", role.as_str()),
                        origin: self.file_source(),
                    })
                }
            },
        };
        let mut fallback = Vec::new();
        for f in file.and_then(|f| f.fallback.clone()).unwrap_or_default() {
            fallback.push(ModelRef {
                provider: f.provider,
                model: f.model,
            });
        }
        for r in std::iter::once(&provider).chain(fallback.iter().map(|f| &f.provider)) {
            if !providers.contains_key(r) {
                return Err(Error::Invalid {
                    name: "models.*.provider",
                    expected: "the name of one of the [providers]",
                    value: format!(
                        "{r} (role {}; known: {})",
                        role.as_str(),
                        providers.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                    origin: self.file_source(),
                });
            }
        }
        let agent = agent_settings(file, inherit, &model);
        Ok(Some(RoleModels {
            primary: ModelRef { provider, model },
            fallback,
            max_tokens: file
                .and_then(|f| f.max_tokens)
                .or(inherit.and_then(|r| r.max_tokens)),
            temperature: file
                .and_then(|f| f.temperature)
                .or(inherit.and_then(|r| r.temperature)),
            agent,
        }))
    }
}

/// The agent's bounds: the role's own settings, else the inherited role's,
/// else the defaults (the context window known for `model`).
fn agent_settings(
    file: Option<&FileRole>,
    inherit: Option<&RoleModels>,
    model: &str,
) -> AgentSettings {
    let base = inherit.map(|r| r.agent.clone()).unwrap_or_default();
    let context = file
        .and_then(|f| f.context_window_tokens)
        .or(known_context_window(model))
        .unwrap_or(base.context_window_tokens)
        .max(1024);
    let Some(f) = file else {
        return AgentSettings {
            context_window_tokens: context,
            ..base
        };
    };
    AgentSettings {
        context_window_tokens: context,
        tool_result_max_bytes: f
            .tool_result_max_bytes
            .unwrap_or(base.tool_result_max_bytes)
            .max(1024),
        read_max_lines: f.read_max_lines.unwrap_or(base.read_max_lines).max(10),
        search_max_matches: f
            .search_max_matches
            .unwrap_or(base.search_max_matches)
            .max(1),
        list_max_entries: f.list_max_entries.unwrap_or(base.list_max_entries).max(10),
    }
}

fn check_url(r: &Resolver<'_>, key: &str, name: &'static str, url: &str) -> Result<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    Err(r.invalid(key, name, "an http:// or https:// URL", url))
}

/// Whether `url` is a hosted endpoint that refuses requests without a key.
fn hosted_needs_key(url: &str) -> bool {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or(url)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    ["openai.com", "openrouter.ai"]
        .iter()
        .any(|d| host == *d || host.ends_with(&format!(".{d}")))
}
