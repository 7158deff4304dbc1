//! Model clients. [`ModelClient`] is the interface the engine's gateway
//! uses; [`OpenAiClient`] speaks the OpenAI-compatible Chat Completions wire
//! format (OpenAI, OpenRouter, Ollama, vLLM, llama.cpp server, LM Studio).
//!
//! The client is the only code that holds an API key; the key never appears
//! in a `Debug` output or an error message.

mod openai;

pub use openai::{OpenAiClient, OpenAiSettings};

use std::time::Duration;
use swarm_protocol::chat::{ChatMessage, ToolSpec, Usage};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model endpoint answered HTTP {status}: {message}")]
    Http {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("model endpoint rejected the API key (HTTP {status}): {message}. Check {key_env}")]
    Auth {
        status: u16,
        message: String,
        key_env: String,
    },
    #[error("model request timed out after {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the model endpoint {url}: {message}")]
    Connect { url: String, message: String },
    #[error("model endpoint sent an invalid response: {0}")]
    InvalidResponse(String),
}

impl Error {
    /// 429, 408, 409, 5xx, timeouts, broken connections and garbled bodies
    /// may succeed on a later try; 400/401/403/404 will not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Http { status, .. } => {
                matches!(status, 408 | 409 | 429) || (500..=599).contains(status)
            }
            Error::Auth { .. } => false,
            Error::Timeout(_) | Error::Connect { .. } | Error::InvalidResponse(_) => true,
        }
    }

    /// A short kind for accounting: `http_429`, `timeout`, `connect`, …
    pub fn kind(&self) -> String {
        match self {
            Error::Http { status, .. } | Error::Auth { status, .. } => format!("http_{status}"),
            Error::Timeout(_) => "timeout".into(),
            Error::Connect { .. } => "connect".into(),
            Error::InvalidResponse(_) => "invalid_response".into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone, PartialEq)]
pub struct CompletionRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub message: ChatMessage,
    pub usage: Usage,
    /// Requests sent beyond the first (retries).
    pub retries: u32,
    pub latency: Duration,
}

/// A failed call with what it cost, for accounting.
#[derive(Debug)]
pub struct CallError {
    pub error: Error,
    pub retries: u32,
    pub latency: Duration,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.retries > 0 {
            write!(f, "{} (after {} retries)", self.error, self.retries)
        } else {
            write!(f, "{}", self.error)
        }
    }
}

#[async_trait::async_trait]
pub trait ModelClient: Send + Sync {
    /// The model name, for accounting.
    fn model(&self) -> &str;
    /// One completion, with the client's retry policy applied.
    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> std::result::Result<Completion, CallError>;
}

/// Bounded exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first request.
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 4,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1-based): the server's
    /// `retry-after` when given (at least), else `base · 2^(retry-1)` with
    /// ±25 % jitter, capped at `max_delay`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        let http = |status| Error::Http {
            status,
            message: String::new(),
            retry_after: None,
        };
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(http(s).is_retryable(), "{s}");
        }
        for s in [400, 403, 404, 422] {
            assert!(!http(s).is_retryable(), "{s}");
        }
        assert!(!Error::Auth {
            status: 401,
            message: String::new(),
            key_env: "K".into()
        }
        .is_retryable());
        assert!(Error::Timeout(Duration::from_secs(1)).is_retryable());
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        let p = RetryPolicy {
            max_retries: 5,
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
