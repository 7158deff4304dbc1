//! OpenAI-compatible Chat Completions over HTTP (non-streaming).

use crate::{CallError, Completion, CompletionRequest, Error, ModelClient, Result, RetryPolicy};
use std::time::{Duration, Instant};
use swarm_protocol::chat::{ChatRequest, ChatResponse};

pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    api_key: Option<secrecy::SecretString>,
    key_env: String,
    model: String,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    timeout: Duration,
    retry: RetryPolicy,
}

impl std::fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("model", &self.model)
            .finish()
    }
}

/// What the client needs; built from the resolved config by the caller.
#[derive(Clone)]
pub struct OpenAiSettings {
    pub base_url: String,
    pub api_key: Option<String>,
    pub key_env: String,
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub timeout: Duration,
    pub retry: RetryPolicy,
}

impl OpenAiClient {
    pub fn new(s: OpenAiSettings) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| Error::Connect {
                url: s.base_url.clone(),
                message: e.to_string(),
            })?;
        Ok(Self {
            http,
            url: format!("{}/chat/completions", s.base_url.trim_end_matches('/')),
            api_key: s.api_key.map(secrecy::SecretString::from),
            key_env: s.key_env,
            model: s.model,
            max_tokens: s.max_tokens,
            temperature: s.temperature,
            timeout: s.timeout,
            retry: s.retry,
        })
    }

    async fn send_once(&self, body: &ChatRequest) -> Result<Completion> {
        use secrecy::ExposeSecret;
        let started = Instant::now();
        let mut req = self.http.post(&self.url).timeout(self.timeout).json(body);
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let resp = req.send().await.map_err(|e| self.transport_error(e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.map_err(|e| self.transport_error(e))?;
        if !(200..300).contains(&status) {
            let message = error_message(&text);
            return Err(match status {
                401 | 403 => Error::Auth {
                    status,
                    message,
                    key_env: self.key_env.clone(),
                },
                _ => Error::Http {
                    status,
                    message,
                    retry_after,
                },
            });
        }
        let parsed: ChatResponse = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidResponse(format!("{e} in body starting {:?}", head(&text, 200)))
        })?;
        let choice = parsed
            .choices
            .into_iter()
            .next()
            .ok_or_else(|| Error::InvalidResponse("no choices in the response".into()))?;
        Ok(Completion {
            message: choice.message,
            usage: parsed.usage.unwrap_or_default(),
            retries: 0,
            latency: started.elapsed(),
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Timeout(self.timeout)
        } else if e.is_decode() || e.is_body() {
            Error::InvalidResponse(e.to_string())
        } else {
            // reqwest's message does not include headers, so the key cannot leak here.
            Error::Connect {
                url: self.url.clone(),
                message: e.to_string(),
            }
        }
    }
}

#[async_trait::async_trait]
impl ModelClient for OpenAiClient {
    fn model(&self) -> &str {
        &self.model
    }

    async fn complete(
        &self,
        request: CompletionRequest,
    ) -> std::result::Result<Completion, CallError> {
        let body = ChatRequest {
            model: self.model.clone(),
            messages: request.messages,
            tools: request.tools,
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        };
        let started = Instant::now();
        let mut retries = 0;
        loop {
            match self.send_once(&body).await {
                Ok(mut c) => {
                    c.retries = retries;
                    c.latency = started.elapsed();
                    return Ok(c);
                }
                Err(e) if e.is_retryable() && retries < self.retry.max_retries => {
                    retries += 1;
                    let ra = match &e {
                        Error::Http { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let delay = self.retry.delay(retries, ra);
                    tracing::warn!(error = %e, retry = retries, delay_ms = delay.as_millis() as u64, "model call failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    return Err(CallError {
                        error,
                        retries,
                        latency: started.elapsed(),
                    });
                }
            }
        }
    }
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds; an HTTP date is ignored).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// The `error.message` of an OpenAI-style error body, else the body's start.
fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| head(body, 300).to_owned())
}

fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
