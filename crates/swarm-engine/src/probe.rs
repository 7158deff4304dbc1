//! `agentswarm doctor --check-model`: one tiny request per role's model,
//! straight to its provider (no rate limiter, no retries, no accounting), so
//! that an operator learns before a run whether each endpoint answers.

use std::time::{Duration, Instant};
use swarm_config::{Config, ModelRole, ProviderConfig};
use swarm_llm::{ModelRequest, ProviderSettings};
use swarm_protocol::chat::ChatMessage;

/// The settings a provider is built from, out of its resolved config.
pub(crate) fn provider_settings(name: &str, p: &ProviderConfig) -> ProviderSettings {
    ProviderSettings {
        name: name.to_owned(),
        kind: p.kind,
        base_url: p.base_url.clone(),
        api_key: p.api_key.clone(),
        api_key_env: p.api_key_env.clone(),
        headers: p
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        request_timeout: Duration::from_secs(p.request_timeout_secs),
        connect_timeout: Duration::from_secs(p.connect_timeout_secs),
    }
}

/// The whole request text: short, and recognisable by test servers.
pub const PROBE_PROMPT: &str = "Reply with the single word OK.";

/// How one role's model answered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelCheck {
    pub role: &'static str,
    pub provider: String,
    pub model: String,
    pub base_url: String,
    pub ok: bool,
    /// From the request to the answer.
    pub latency_ms: u64,
    /// What went wrong, said for a person (no key: errors never hold one).
    pub error: Option<String>,
}

/// Sends one short request ("reply OK", at most 16 tokens, no tools) to the
/// primary model of each role, one role after the other, each bounded by
/// `timeout` (and its provider's own timeouts, whichever is shorter). A
/// model that several roles share is asked once per role: each role may
/// set other limits.
pub async fn check_models(config: &Config, timeout: Duration) -> Vec<ModelCheck> {
    let Ok(models) = config.models() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for role in ModelRole::ALL {
        let r = models.role(role);
        let target = &r.primary;
        let mut check = ModelCheck {
            role: role.as_str(),
            provider: target.provider.clone(),
            model: target.model.clone(),
            base_url: String::new(),
            ok: false,
            latency_ms: 0,
            error: None,
        };
        let Some(p) = models.providers.get(&target.provider) else {
            check.error = Some(format!("provider {} is not configured", target.provider));
            out.push(check);
            continue;
        };
        check.base_url = p.base_url.clone();
        if let Some(e) = p.missing_key() {
            check.error = Some(e.to_string());
            out.push(check);
            continue;
        }
        let mut settings = provider_settings(&target.provider, p);
        settings.request_timeout = settings.request_timeout.min(timeout);
        settings.connect_timeout = settings.connect_timeout.min(timeout);
        let provider = match swarm_llm::build_provider(settings) {
            Ok(p) => p,
            Err(e) => {
                check.error = Some(e.to_string());
                out.push(check);
                continue;
            }
        };
        let request = ModelRequest {
            model: target.model.clone(),
            messages: vec![ChatMessage::user(PROBE_PROMPT)],
            tools: Vec::new(),
            max_tokens: Some(16),
            temperature: None,
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(timeout, provider.send(&request)).await;
        check.latency_ms = started.elapsed().as_millis() as u64;
        match answer {
            Ok(Ok(_)) => check.ok = true,
            Ok(Err(e)) => check.error = Some(e.to_string()),
            Err(_) => {
                check.error = Some(format!(
                    "no answer within {} s from {}",
                    timeout.as_secs(),
                    p.base_url
                ))
            }
        }
        out.push(check);
    }
    out
}
