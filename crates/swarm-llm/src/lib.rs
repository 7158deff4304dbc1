//! Model providers and the gateway's building blocks.
//!
//! - [`Provider`]: one HTTP request to one provider, in its wire format —
//!   [`openai`] (OpenAI-compatible Chat Completions: OpenAI, OpenRouter,
//!   Ollama, vLLM, llama.cpp server, LM Studio) or [`anthropic`] (Anthropic
//!   Messages). No retries here.
//! - [`router`]: a role's route (a model and its fallbacks), with the retry
//!   policy, the shared rate limiter and the context-length shrink applied
//!   around every request.
//! - [`ratelimit`]: the sliding-window request limiter (`API_RATE_LIMIT_RPM`)
//!   and the per-provider tokens-per-minute limiter.
//! - [`redact`]: masks API keys and key-shaped strings.
//! - [`cassette`]: `--record` / `--replay` of model calls.
//!
//! A provider is the only code that holds an API key; the key never appears
//! in a `Debug` output or an error message.

pub mod anthropic;
pub mod cassette;
pub mod openai;
pub mod quirks;
pub mod ratelimit;
pub mod redact;
pub mod router;

use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;
use swarm_protocol::chat::{ChatMessage, ToolSpec, Usage};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Any other non-2xx answer (429, 5xx, 529, 400 …).
    #[error("{provider} answered HTTP {status}: {message}")]
    Http {
        provider: String,
        status: u16,
        message: String,
        /// From `retry-after-ms` or `retry-after`.
        retry_after: Option<Duration>,
    },
    /// 401/403, or no key where the provider needs one. Not retried; the
    /// project pauses until the key is fixed.
    #[error("{provider} rejected the API key (HTTP {status}): {message}. {hint}")]
    Auth {
        provider: String,
        status: u16,
        message: String,
        /// What to do, e.g. "Check OPENAI_API_KEY (environment or secrets file)".
        hint: String,
    },
    /// The model does not exist at this provider (or the key may not use it).
    #[error("{provider} does not serve model {model:?} (HTTP {status}): {message}")]
    ModelNotFound {
        provider: String,
        model: String,
        status: u16,
        message: String,
    },
    /// The conversation is longer than the model's context window.
    #[error("{provider}: the conversation exceeds the model's context window: {message}")]
    ContextLength { provider: String, message: String },
    #[error("{provider}: the model request timed out after {after:?}")]
    Timeout { provider: String, after: Duration },
    #[error("cannot reach {provider} at {url}: {message}")]
    Connect {
        provider: String,
        url: String,
        message: String,
    },
    #[error("{provider} sent an invalid response: {message}")]
    InvalidResponse { provider: String, message: String },
    /// `--replay` has no recorded answer for this request.
    #[error("{0}")]
    ReplayMiss(String),
    /// The provider is configured wrongly (a bad header name, …).
    #[error("provider {provider}: {message}")]
    Setup { provider: String, message: String },
}

impl Error {
    /// 429, 408, 409, 5xx, 529, timeouts, broken connections and garbled
    /// bodies may succeed on a later try; 400/401/403/404 will not.
    pub fn is_retryable(&self) -> bool {
        if self.is_quota() {
            // Not within seconds: the gateway holds calls until the reset.
            return false;
        }
        match self {
            Error::Http { status, .. } => {
                matches!(status, 408 | 409 | 429) || (500..=599).contains(status)
            }
            Error::Timeout { .. } | Error::Connect { .. } | Error::InvalidResponse { .. } => true,
            Error::Auth { .. }
            | Error::ModelNotFound { .. }
            | Error::ContextLength { .. }
            | Error::ReplayMiss(_)
            | Error::Setup { .. } => false,
        }
    }

    /// Whether the next model in the role's fallback list should be tried
    /// once this error is final: the provider keeps failing (retries spent),
    /// or does not serve the model.
    pub fn wants_fallback(&self) -> bool {
        self.is_retryable()
            || matches!(self, Error::ModelNotFound { .. })
            // Out of credits (OpenRouter) or payment required: this
            // provider cannot serve, another may.
            || matches!(self, Error::Http { status: 402, .. })
            || self.is_quota()
    }

    /// Whether the provider said that a quota or usage limit is reached: a
    /// 429 whose `Retry-After` is [`QUOTA_MIN_RETRY_AFTER`] or longer, or
    /// one that speaks of a quota (OpenAI's `insufficient_quota`: "You
    /// exceeded your current quota…") or a usage limit.
    pub fn is_quota(&self) -> bool {
        match self {
            Error::Http {
                status: 429,
                message,
                retry_after,
                ..
            } => {
                let m = message.to_lowercase();
                retry_after.is_some_and(|d| d >= QUOTA_MIN_RETRY_AFTER)
                    || m.contains("quota")
                    || m.contains("usage limit")
            }
            _ => false,
        }
    }

    /// How long the provider asked to wait (`Retry-After`), if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short kind for accounting: `http_429`, `timeout`, `connect`, …
    pub fn kind(&self) -> String {
        match self {
            Error::Http { status, .. } | Error::Auth { status, .. } => format!("http_{status}"),
            Error::ModelNotFound { .. } => "model_not_found".into(),
            Error::ContextLength { .. } => "context_length".into(),
            Error::Timeout { .. } => "timeout".into(),
            Error::Connect { .. } => "connect".into(),
            Error::InvalidResponse { .. } => "invalid_response".into(),
            Error::ReplayMiss(_) => "replay_miss".into(),
            Error::Setup { .. } => "setup".into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// A 429 asking to wait this long or longer is a quota, not a rate limit.
pub const QUOTA_MIN_RETRY_AFTER: Duration = Duration::from_secs(60);

/// A provider's wire format (one type for the config and the clients).
pub use swarm_protocol::chat::ProviderKind;

/// What a provider needs; built from the resolved config by the caller.
#[derive(Clone)]
pub struct ProviderSettings {
    /// The provider's name in the config (`[providers.NAME]`).
    pub name: String,
    pub kind: ProviderKind,
    /// E.g. `https://api.openai.com/v1`, `https://api.anthropic.com/v1`.
    pub base_url: String,
    pub api_key: Option<SecretString>,
    /// The variable the key is read from, for messages (never the value).
    pub api_key_env: Option<String>,
    /// Extra request headers (e.g. OpenRouter's `HTTP-Referer`).
    pub headers: Vec<(String, String)>,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("api_key_env", &self.api_key_env)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ProviderSettings {
    /// What to tell the user when the key is refused or missing.
    pub fn key_hint(&self) -> String {
        match &self.api_key_env {
            Some(env) => format!(
                "Check {env} (in the environment or the secrets file) for provider {}",
                self.name
            ),
            None => format!(
                "Set `api_key_env` under [providers.{}] in agentswarm.toml and export that variable",
                self.name
            ),
        }
    }
}

/// One request to a model, in the conversation format of
/// [`swarm_protocol::chat`]; providers translate it to their wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// Who makes a model call, for accounting, the rate limiter's log lines
/// and `--record`/`--replay`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct CallMeta {
    /// `planner`, `worker` or `fixer`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// 1-based turn of a worker; the call's number within a planner or
    /// fixer exchange.
    pub turn: u32,
}

/// A provider's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub message: ChatMessage,
    pub usage: Usage,
}

/// One provider endpoint. `send` makes exactly one HTTP request.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name in the config.
    fn name(&self) -> &str;
    async fn send(&self, request: &ModelRequest) -> Result<Reply>;
}

/// The provider for `settings.kind`.
pub fn build_provider(settings: ProviderSettings) -> Result<Arc<dyn Provider>> {
    Ok(match settings.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAiProvider::new(settings)?),
        ProviderKind::Anthropic => Arc::new(anthropic::AnthropicProvider::new(settings)?),
    })
}

/// Exponential backoff with jitter (how many retries is the provider's
/// `max_retries`, on each router target).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based): `base · 2^(retry-1)`
    /// with ±25 % jitter, capped at `max_delay` — but never less than the
    /// server's `retry-after` when it gave one.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_delay);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        let backoff = exp.mul_f64(jitter).min(self.max_delay);
        match retry_after {
            Some(ra) => ra.max(Duration::from_millis(1)),
            None => backoff,
        }
    }
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds; an HTTP date
/// is ignored), as providers send them.
pub(crate) fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        if ms.is_finite() {
            return Some(Duration::from_secs_f64(ms.clamp(0.0, 3_600_000.0) / 1000.0));
        }
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// The first `n` characters of `s`.
pub(crate) fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// An HTTP client with the provider's timeouts and headers.
pub(crate) fn http_client(s: &ProviderSettings) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &s.headers {
        let name =
            reqwest::header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| Error::Setup {
                provider: s.name.clone(),
                message: format!("header name {k:?}: {e}"),
            })?;
        let value = reqwest::header::HeaderValue::from_str(v).map_err(|e| Error::Setup {
            provider: s.name.clone(),
            message: format!("value of header {k:?}: {e}"),
        })?;
        headers.insert(name, value);
    }
    reqwest::Client::builder()
        .connect_timeout(s.connect_timeout)
        .timeout(s.request_timeout)
        .pool_max_idle_per_host(32)
        .default_headers(headers)
        .build()
        .map_err(|e| Error::Setup {
            provider: s.name.clone(),
            message: e.to_string(),
        })
}

/// A transport error as one of ours; reqwest's message never holds headers,
/// so no key can leak through it.
pub(crate) fn transport_error(s: &ProviderSettings, url: &str, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout {
            provider: s.name.clone(),
            after: s.request_timeout,
        }
    } else if e.is_decode() || e.is_body() {
        Error::InvalidResponse {
            provider: s.name.clone(),
            message: e.to_string(),
        }
    } else {
        Error::Connect {
            provider: s.name.clone(),
            url: url.to_owned(),
            message: connect_detail(&e),
        }
    }
}

/// What went wrong on the way to a server, as a person would say it:
/// reqwest's own text ("error sending request for url …") names the URL
/// again and hides the cause, which is the innermost error of the chain.
fn connect_detail(e: &reqwest::Error) -> String {
    let mut innermost: Option<&(dyn std::error::Error + 'static)> = None;
    let mut next = std::error::Error::source(e);
    while let Some(c) = next {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return "connection refused (is the server running, on that port?)".into()
                }
                std::io::ErrorKind::ConnectionReset => {
                    return "connection reset by the server".into()
                }
                _ => {}
            }
        }
        innermost = Some(c);
        next = c.source();
    }
    match innermost {
        Some(c) => c.to_string(),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(status: u16) -> Error {
        Error::Http {
            provider: "p".into(),
            status,
            message: String::new(),
            retry_after: None,
        }
    }

    #[test]
    fn quota_answers_are_not_retried_but_fall_back() {
        let quota = |message: &str, retry_after: Option<u64>| Error::Http {
            provider: "p".into(),
            status: 429,
            message: message.into(),
            retry_after: retry_after.map(Duration::from_secs),
        };
        let openai = quota(
            "You exceeded your current quota, please check your plan and billing details.",
            None,
        );
        let long_wait = quota("Rate limit reached", Some(3600));
        for e in [&openai, &long_wait] {
            assert!(
                e.is_quota() && !e.is_retryable() && e.wants_fallback(),
                "{e}"
            );
        }
        assert_eq!(long_wait.retry_after(), Some(Duration::from_secs(3600)));
        // A plain rate limit is retried as before.
        let brief = quota("Rate limit reached", Some(7));
        assert!(!brief.is_quota() && brief.is_retryable());
        assert!(!http(500).is_quota());
    }

    #[test]
    fn retryable_classes() {
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(http(s).is_retryable(), "{s}");
        }
        for s in [400, 403, 404, 422] {
            assert!(!http(s).is_retryable(), "{s}");
        }
        let auth = Error::Auth {
            provider: "p".into(),
            status: 401,
            message: String::new(),
            hint: String::new(),
        };
        assert!(!auth.is_retryable() && !auth.wants_fallback());
        let gone = Error::ModelNotFound {
            provider: "p".into(),
            model: "m".into(),
            status: 404,
            message: String::new(),
        };
        assert!(!gone.is_retryable() && gone.wants_fallback());
        assert!(Error::Timeout {
            provider: "p".into(),
            after: Duration::from_secs(1)
        }
        .is_retryable());
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let d1 = p.delay(1, None);
        let d3 = p.delay(3, None);
        assert!(
            d1 >= Duration::from_millis(75) && d1 <= Duration::from_millis(125),
            "{d1:?}"
        );
        assert!(
            d3 >= Duration::from_millis(300) && d3 <= Duration::from_millis(500),
            "{d3:?}"
        );
        assert!(p.delay(30, None) <= Duration::from_secs(1));
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
    }
}
