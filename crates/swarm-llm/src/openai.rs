//! OpenAI-compatible Chat Completions over HTTP (non-streaming, with tool
//! calling): OpenAI, OpenRouter, Ollama, vLLM, llama.cpp server, LM Studio.
//!
//! Error bodies differ between these servers; [`OpenAiProvider`] reads all
//! of the shapes below and classifies them into [`Error`]:
//!
//! - OpenAI: `{"error":{"message","type","param","code":"context_length_exceeded"}}`
//! - OpenRouter: `{"error":{"code":400,"message","metadata":{"raw","provider_name"}}}`
//!   (a numeric code; the upstream error in `metadata.raw`; sometimes with
//!   HTTP 200; 403 with `metadata.reasons` is a moderation refusal, not a
//!   bad key)
//! - Ollama native / LM Studio: `{"error":"model \"x\" not found, try pulling it first"}`
//! - vLLM (older): `{"object":"error","message","type","code":400}`
//! - llama.cpp server: `{"error":{"code":400,"message","type":"exceed_context_size_error"}}`

use crate::{
    head, http_client, quirks, retry_after, transport_error, Error, ModelRequest, Provider,
    ProviderSettings, Reply, Result,
};
use secrecy::ExposeSecret;
use serde_json::Value;
use std::time::Duration;
use swarm_protocol::chat::{ChatRequest, ChatResponse};

pub struct OpenAiProvider {
    http: reqwest::Client,
    url: String,
    settings: ProviderSettings,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url)
            .field("settings", &self.settings)
            .finish()
    }
}

impl OpenAiProvider {
    pub fn new(settings: ProviderSettings) -> Result<Self> {
        Ok(Self {
            http: http_client(&settings)?,
            url: format!(
                "{}/chat/completions",
                settings.base_url.trim_end_matches('/')
            ),
            settings,
        })
    }

    fn error(
        &self,
        status: u16,
        body: &str,
        request: &ModelRequest,
        retry_after: Option<Duration>,
    ) -> Error {
        classify(
            &self.settings,
            &self.url,
            status,
            body,
            &request.model,
            retry_after,
        )
    }
}

/// What an error body says, whatever its shape.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ErrorBody {
    /// Whether the body was JSON at all (a plain-text 404 usually means a
    /// wrong `base_url`).
    pub json: bool,
    pub message: String,
    /// `error.code` (string or number) or a top-level `code`.
    pub code: String,
    /// `error.type` or a top-level `type`.
    pub kind: String,
    /// OpenRouter's moderation refusal (`error.metadata.reasons`).
    pub moderation: bool,
}

impl ErrorBody {
    pub(crate) fn parse(body: &str) -> Self {
        let Ok(v) = serde_json::from_str::<Value>(body) else {
            return Self {
                message: fallback_message(body),
                ..Self::default()
            };
        };
        let text = |p: &str| match v.pointer(p) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let mut message = text("/error/message")
            .or_else(|| text("/error"))
            .or_else(|| text("/message"))
            .or_else(|| text("/detail"))
            .unwrap_or_else(|| fallback_message(body));
        // OpenRouter passes the upstream provider's own error along.
        let raw = match v.pointer("/error/metadata/raw") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        if let Some(raw) = raw.filter(|r| !r.trim().is_empty()) {
            let from = text("/error/metadata/provider_name").unwrap_or_else(|| "upstream".into());
            message = format!("{message} ({from}: {})", head(raw.trim(), 300));
        }
        Self {
            json: true,
            message,
            code: text("/error/code")
                .or_else(|| text("/code"))
                .unwrap_or_default(),
            kind: text("/error/type")
                .or_else(|| text("/type"))
                .unwrap_or_default(),
            moderation: v.pointer("/error/metadata/reasons").is_some(),
        }
    }

    /// Message, code and type in lower case, for matching.
    fn haystack(&self) -> String {
        format!("{} {} {}", self.message, self.code, self.kind).to_lowercase()
    }
}

fn fallback_message(body: &str) -> String {
    let b = body.trim();
    if b.is_empty() {
        "(empty body)".to_owned()
    } else {
        head(b, 300).to_owned()
    }
}

/// Whether an error text (lower case) says the prompt does not fit the
/// model's context window, in the words of OpenAI, Anthropic, OpenRouter,
/// vLLM, llama.cpp, LM Studio or Gemini.
pub(crate) fn mentions_context_limit(lower: &str) -> bool {
    const MARKERS: &[&str] = &[
        "context_length_exceeded",
        "exceed_context_size",
        "context length",
        "context window",
        "context size",
        "context limit",
        "maximum context",
        "prompt is too long",
        "input is too long",
        "too many tokens",
        "exceeds the maximum number of tokens",
    ];
    MARKERS.iter().any(|m| lower.contains(m))
}

/// Whether an error text (lower case) says the model does not exist.
fn mentions_unknown_model(lower: &str) -> bool {
    const MARKERS: &[&str] = &[
        "model_not_found",
        "model not found",
        "not a valid model",
        "unknown model",
        "no such model",
        "try pulling it",
        "no endpoints found",
    ];
    MARKERS.iter().any(|m| lower.contains(m))
        || (lower.contains("model") && lower.contains("does not exist"))
}

/// Replaces the key, should a server ever echo it, by `[redacted]`.
pub(crate) fn scrub(settings: &ProviderSettings, message: String) -> String {
    match &settings.api_key {
        Some(key) if !key.expose_secret().is_empty() && message.contains(key.expose_secret()) => {
            message.replace(key.expose_secret(), "[redacted]")
        }
        _ => message,
    }
}

/// A non-2xx answer (or a 2xx one carrying an error) as one of ours.
fn classify(
    settings: &ProviderSettings,
    url: &str,
    status: u16,
    body: &str,
    model: &str,
    retry_after: Option<Duration>,
) -> Error {
    let provider = settings.name.clone();
    let parsed = ErrorBody::parse(body);
    let lower = parsed.haystack();
    let message = scrub(settings, parsed.message);
    match status {
        // OpenRouter refuses flagged input with 403; the key is fine.
        403 if parsed.moderation || lower.contains("flagged") || lower.contains("moderation") => {
            Error::Http {
                provider,
                status,
                message,
                retry_after,
            }
        }
        401 | 403 => Error::Auth {
            provider,
            status,
            message,
            hint: settings.key_hint(),
        },
        404 => Error::ModelNotFound {
            provider,
            model: model.to_owned(),
            status,
            message: if parsed.json {
                message
            } else {
                format!(
                    "{message} (POST {url}; if the model exists, check base_url — \
                     OpenAI-compatible servers usually want it to end in /v1)"
                )
            },
        },
        400 | 413 | 422 | 500 if mentions_context_limit(&lower) => {
            Error::ContextLength { provider, message }
        }
        400 | 422 if mentions_unknown_model(&lower) => Error::ModelNotFound {
            provider,
            model: model.to_owned(),
            status,
            message,
        },
        _ => Error::Http {
            provider,
            status,
            message,
            retry_after,
        },
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.settings.name
    }

    async fn send(&self, request: &ModelRequest) -> Result<Reply> {
        let body = ChatRequest {
            model: request.model.clone(),
            messages: request.messages.clone(),
            tools: request.tools.clone(),
            max_tokens: request.max_tokens,
            temperature: request.temperature,
        };
        let mut body = serde_json::to_value(&body).map_err(|e| Error::Setup {
            provider: self.settings.name.clone(),
            message: format!("cannot encode the request: {e}"),
        })?;
        quirks::adapt_request(&mut body, &request.model);
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.settings.api_key {
            req = req.bearer_auth(key.expose_secret());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&self.settings, &self.url, e))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        let text = resp
            .text()
            .await
            .map_err(|e| transport_error(&self.settings, &self.url, e))?;
        if !(200..300).contains(&status) {
            return Err(self.error(status, &text, request, retry_after));
        }
        let parsed: ChatResponse = match serde_json::from_str::<Value>(&text).and_then(|mut v| {
            quirks::normalise_answer(&mut v);
            serde_json::from_value(v)
        }) {
            Ok(p) => p,
            Err(e) => {
                // OpenRouter reports some upstream failures with HTTP 200
                // and an error object; classify those by their own code.
                if let Some(code) = embedded_error_status(&text) {
                    return Err(self.error(code, &text, request, retry_after));
                }
                return Err(Error::InvalidResponse {
                    provider: self.settings.name.clone(),
                    message: scrub(
                        &self.settings,
                        format!("{e} in body starting {:?}", head(&text, 200)),
                    ),
                });
            }
        };
        let Some(choice) = parsed.choices.into_iter().next() else {
            // OpenRouter answers an upstream failure with an error object
            // and no choices; others send empty choices when overloaded.
            if let Some(code) = embedded_error_status(&text) {
                return Err(self.error(code, &text, request, retry_after));
            }
            return Err(Error::InvalidResponse {
                provider: self.settings.name.clone(),
                message: scrub(
                    &self.settings,
                    format!(
                        "no choices in the response (body starting {:?}); retried, then the next fallback",
                        head(&text, 200)
                    ),
                ),
            });
        };
        let mut message = choice.message;
        if message.tool_calls.is_empty() && !request.tools.is_empty() {
            let declared: Vec<&str> = request
                .tools
                .iter()
                .map(|t| t.function.name.as_str())
                .collect();
            if let Some((calls, rest)) = message
                .content
                .as_deref()
                .and_then(|c| quirks::calls_in_text(c, &declared))
            {
                message.tool_calls = calls;
                message.content = (!rest.is_empty()).then_some(rest);
            }
        }
        if choice.finish_reason.as_deref() == Some("length") {
            quirks::drop_cut_calls(&mut message);
        }
        Ok(Reply {
            message,
            usage: parsed.usage.unwrap_or_default(),
        })
    }
}

/// The status an error object inside a 2xx body stands for: its numeric
/// `code` when that is an HTTP error status, else 502 (retryable).
fn embedded_error_status(body: &str) -> Option<u16> {
    let v: Value = serde_json::from_str(body).ok()?;
    let error = v.get("error")?;
    if error.is_null() {
        return None;
    }
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c));
    Some(code.unwrap_or(502))
}

/// A scripted HTTP server on loopback for the providers' tests: answers
/// every POST to `path` with one canned response and records what it got.
#[cfg(test)]
pub(crate) mod test_server {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub headers: HeaderMap,
        pub body: serde_json::Value,
    }

    pub(crate) struct MockServer {
        /// `http://127.0.0.1:PORT/v1`
        pub base_url: String,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl MockServer {
        pub(crate) fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for MockServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Serves `POST /v1{path}` with `status`, `headers` and `body`.
    pub(crate) async fn serve(
        path: &str,
        status: u16,
        headers: &[(&str, &str)],
        body: &str,
    ) -> MockServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reply_headers = HeaderMap::new();
        for (k, v) in headers {
            reply_headers.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        reply_headers.insert("content-type", HeaderValue::from_static("application/json"));
        let status = StatusCode::from_u16(status).unwrap();
        let body = body.to_owned();
        let record = seen.clone();
        let handler = move |headers: HeaderMap, bytes: Bytes| {
            let record = record.clone();
            let reply_headers = reply_headers.clone();
            let body = body.clone();
            async move {
                let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                record.lock().unwrap().push(Seen {
                    headers,
                    body: json,
                });
                (status, reply_headers, body)
            }
        };
        let app = axum::Router::new().route(&format!("/v1{path}"), axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockServer {
            base_url: format!("http://{addr}/v1"),
            seen,
            task,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::serve;
    use super::*;
    use crate::ProviderKind;
    use secrecy::SecretString;
    use swarm_protocol::chat::{ChatMessage, Role, ToolSpec};

    const FAKE_KEY: &str = "sk-test-not-real-0123456789";

    fn settings(base_url: &str) -> ProviderSettings {
        ProviderSettings {
            name: "openai".into(),
            kind: ProviderKind::OpenAi,
            base_url: base_url.into(),
            api_key: Some(SecretString::from(FAKE_KEY)),
            api_key_env: Some("OPENAI_API_KEY".into()),
            headers: vec![("HTTP-Referer".into(), "https://example.test/swarm".into())],
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn request() -> ModelRequest {
        ModelRequest {
            model: "gpt-test".into(),
            messages: vec![ChatMessage::system("be brief"), ChatMessage::user("hi")],
            tools: vec![ToolSpec::function(
                "read_file",
                "Read a file",
                serde_json::json!({"type":"object","properties":{"path":{"type":"string"}}}),
            )],
            max_tokens: Some(100),
            temperature: Some(0.2),
        }
    }

    fn classify_(status: u16, body: &str) -> Error {
        classify(
            &settings("http://x/v1"),
            "http://x/v1/chat/completions",
            status,
            body,
            "m",
            Some(Duration::from_secs(3)),
        )
    }

    #[test]
    fn error_body_shapes() {
        let b = ErrorBody::parse(
            r#"{"error":{"message":"bad","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
        );
        assert_eq!(
            (b.message.as_str(), b.code.as_str()),
            ("bad", "context_length_exceeded")
        );
        let b = ErrorBody::parse(r#"{"error":"model \"x\" not found, try pulling it first"}"#);
        assert_eq!(b.message, "model \"x\" not found, try pulling it first");
        let b = ErrorBody::parse(
            r#"{"error":{"code":400,"message":"Provider returned error","metadata":{"raw":"prompt is too long","provider_name":"Anthropic"}}}"#,
        );
        assert_eq!(b.code, "400");
        assert_eq!(
            b.message,
            "Provider returned error (Anthropic: prompt is too long)"
        );
        let b = ErrorBody::parse(
            r#"{"object":"error","message":"The model `x` does not exist.","type":"NotFoundError","code":404}"#,
        );
        assert_eq!(b.message, "The model `x` does not exist.");
        assert_eq!(b.kind, "NotFoundError");
        let b = ErrorBody::parse("404 page not found");
        assert!(!b.json);
        assert_eq!(b.message, "404 page not found");
        assert_eq!(ErrorBody::parse("").message, "(empty body)");
    }

    #[test]
    fn classifies_auth() {
        for s in [401, 403] {
            let e = classify_(
                s,
                r#"{"error":{"message":"Incorrect API key provided","code":"invalid_api_key"}}"#,
            );
            assert!(
                matches!(e, Error::Auth { status, ref hint, .. } if status == s && hint.contains("OPENAI_API_KEY")),
                "{e:?}"
            );
        }
        // OpenRouter's moderation refusal is not a key problem.
        let e = classify_(
            403,
            r#"{"error":{"code":403,"message":"Your input was flagged","metadata":{"reasons":["violence"]}}}"#,
        );
        assert!(matches!(e, Error::Http { status: 403, .. }), "{e:?}");
    }

    #[test]
    fn classifies_model_not_found() {
        // OpenAI
        let e = classify_(
            404,
            r#"{"error":{"message":"The model `m` does not exist or you do not have access to it.","code":"model_not_found"}}"#,
        );
        assert!(
            matches!(e, Error::ModelNotFound { status: 404, .. }),
            "{e:?}"
        );
        // Ollama native and OpenAI-compatible
        let e = classify_(
            404,
            r#"{"error":"model \"m\" not found, try pulling it first"}"#,
        );
        assert!(
            matches!(e, Error::ModelNotFound { ref message, .. } if message.contains("try pulling")),
            "{e:?}"
        );
        // OpenRouter: 400 for a bad model id
        let e = classify_(
            400,
            r#"{"error":{"message":"m is not a valid model ID","code":400}}"#,
        );
        assert!(
            matches!(e, Error::ModelNotFound { status: 400, .. }),
            "{e:?}"
        );
        // A plain-text 404 says where we asked.
        let e = classify_(404, "404 page not found");
        assert!(
            matches!(e, Error::ModelNotFound { ref message, .. } if message.contains("base_url")),
            "{e:?}"
        );
    }

    #[test]
    fn classifies_context_length() {
        for (status, body) in [
            (
                400,
                r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"Provider returned error","metadata":{"raw":"{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\",\"message\":\"prompt is too long: 210000 tokens > 200000 maximum\"}}","provider_name":"Anthropic"}}}"#,
            ),
            (
                400,
                r#"{"object":"error","message":"This model's maximum context length is 4096 tokens.","type":"BadRequestError","code":400}"#,
            ),
            (
                400,
                r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            ),
            (
                413,
                r#"{"error":{"message":"Request too large: too many tokens"}}"#,
            ),
        ] {
            let e = classify_(status, body);
            assert!(
                matches!(e, Error::ContextLength { .. }),
                "{status} {body}: {e:?}"
            );
        }
    }

    #[test]
    fn classifies_the_rest_as_http_with_retry_after() {
        for s in [400, 408, 429, 500, 502, 503, 529] {
            let e = classify_(s, r#"{"error":{"message":"nope","type":"server_error"}}"#);
            assert!(
                matches!(e, Error::Http { status, retry_after: Some(ra), .. } if status == s && ra == Duration::from_secs(3)),
                "{s}: {e:?}"
            );
        }
        // Go's "context canceled" is not a context-window problem.
        let e = classify_(500, r#"{"error":"context canceled"}"#);
        assert!(matches!(e, Error::Http { status: 500, .. }), "{e:?}");
    }

    #[test]
    fn the_key_is_scrubbed_from_messages() {
        let body = format!(r#"{{"error":{{"message":"Incorrect API key provided: {FAKE_KEY}"}}}}"#);
        let e = classify_(401, &body);
        assert!(!e.to_string().contains(FAKE_KEY), "{e}");
        assert!(e.to_string().contains("[redacted]"), "{e}");
    }

    #[test]
    fn embedded_errors_in_2xx_bodies() {
        assert_eq!(
            embedded_error_status(r#"{"error":{"code":429,"message":"x"}}"#),
            Some(429)
        );
        assert_eq!(
            embedded_error_status(r#"{"error":{"message":"x"}}"#),
            Some(502)
        );
        assert_eq!(embedded_error_status(r#"{"choices":[]}"#), None);
        assert_eq!(embedded_error_status("not json"), None);
    }

    #[tokio::test]
    async fn sends_bearer_key_and_extra_headers_and_parses_the_reply() {
        let body = r#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-test",
          "choices":[{"index":0,"message":{"role":"assistant","content":null,
          "tool_calls":[{"id":"call_1","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"a\"}"}}]},
          "finish_reason":"tool_calls"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        let server = serve("/chat/completions", 200, &[], body).await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let reply = p.send(&request()).await.unwrap();
        assert_eq!(reply.message.role, Role::Assistant);
        assert_eq!(
            reply.message.tool_calls[0].function.arguments,
            r#"{"path":"a"}"#
        );
        assert_eq!(reply.usage.total_tokens, 5);

        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let h = &seen[0].headers;
        assert_eq!(h["authorization"], format!("Bearer {FAKE_KEY}").as_str());
        assert_eq!(h["http-referer"], "https://example.test/swarm");
        assert!(h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let sent = &seen[0].body;
        assert_eq!(sent["model"], "gpt-test");
        assert_eq!(sent["max_tokens"], 100);
        assert_eq!(sent["messages"][0]["role"], "system");
        assert_eq!(sent["tools"][0]["function"]["name"], "read_file");

        let debug = format!("{p:?}");
        assert!(!debug.contains(FAKE_KEY), "{debug}");
    }

    /// One answer with `message` (raw JSON) and `finish`, sent by a
    /// scripted server; what the provider made of it, and the body it sent
    /// (checked as strictly as the scripted model server checks).
    async fn quirk(model: &str, message: &str, finish: &str) -> (Result<Reply>, serde_json::Value) {
        let body = format!(
            r#"{{"id":"c1","object":"chat.completion","created":1,"model":"m",
              "choices":[{{"index":0,"message":{message},"finish_reason":"{finish}"}}],
              "usage":{{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}}}"#
        );
        let server = serve("/chat/completions", 200, &[], &body).await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let mut r = request();
        r.model = model.into();
        r.tools.push(ToolSpec::function(
            "finish",
            "Finish",
            serde_json::json!({"type":"object","properties":{"summary":{"type":"string"}}}),
        ));
        let reply = p.send(&r).await;
        let sent = server.seen()[0].body.clone();
        swarm_testkit::validate::request(&sent).unwrap();
        (reply, sent)
    }

    #[tokio::test]
    async fn quirk_arguments_as_an_object_and_calls_without_ids() {
        let (reply, _) = quirk(
            "qwen",
            r#"{"role":"assistant","content":null,"tool_calls":[
                {"function":{"name":"read_file","arguments":{"path":"a.txt"}}},
                {"id":"","type":"function","function":{"name":"finish"}}]}"#,
            "tool_calls",
        )
        .await;
        let m = reply.unwrap().message;
        assert_eq!(m.tool_calls[0].function.arguments, r#"{"path":"a.txt"}"#);
        assert_eq!(m.tool_calls[1].function.arguments, "{}");
        assert!(m
            .tool_calls
            .iter()
            .all(|c| c.id.starts_with("call_") && c.kind == "function"));
        assert_ne!(m.tool_calls[0].id, m.tool_calls[1].id);
    }

    #[tokio::test]
    async fn quirk_tool_calls_written_in_the_content() {
        let hermes = serde_json::json!({"role": "assistant", "content":
            "I'll read it.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>\n<tool_call>{\"name\": \"finish\", \"arguments\": {\"summary\": \"s\"}}</tool_call>"});
        let (reply, _) = quirk("qwen2.5-coder", &hermes.to_string(), "stop").await;
        let m = reply.unwrap().message;
        assert_eq!(m.content.as_deref(), Some("I'll read it."));
        let names: Vec<_> = m
            .tool_calls
            .iter()
            .map(|c| c.function.name.as_str())
            .collect();
        assert_eq!(names, ["read_file", "finish"]);
        assert_eq!(m.tool_calls[0].function.arguments, r#"{"path":"a"}"#);

        let bare = serde_json::json!({"role": "assistant", "content": "{\"name\": \"read_file\", \"arguments\": {\"path\": \"b\"}}"});
        let (reply, _) = quirk("llama3", &bare.to_string(), "stop").await;
        let m = reply.unwrap().message;
        assert_eq!((m.content, m.tool_calls.len()), (None, 1));
        // Prose that mentions a tool stays prose.
        let prose =
            serde_json::json!({"role": "assistant", "content": "Next I will call read_file on a."});
        let (reply, _) = quirk("llama3", &prose.to_string(), "stop").await;
        assert!(reply.unwrap().message.tool_calls.is_empty());
    }

    #[tokio::test]
    async fn quirk_finish_reason_length_in_the_middle_of_a_call() {
        let (reply, _) = quirk(
            "gpt-4o",
            r#"{"role":"assistant","content":null,"tool_calls":[
                {"id":"c1","type":"function","function":{"name":"read_file","arguments":"{\"path\":\"a\"}"}},
                {"id":"c2","type":"function","function":{"name":"finish","arguments":"{\"summary\":\"a very long summ"}}]}"#,
            "length",
        )
        .await;
        let m = reply.unwrap().message;
        assert_eq!(
            m.tool_calls.len(),
            1,
            "the whole call is kept, the cut one dropped"
        );
        let note = m.content.unwrap();
        assert!(
            note.contains("finish_reason: length") && note.contains("finish call"),
            "{note}"
        );
    }

    #[tokio::test]
    async fn quirk_empty_choices_are_retried_and_fall_back() {
        for body in [r#"{"id":"x","choices":[]}"#, r#"{"id":"x"}"#] {
            let server = serve("/chat/completions", 200, &[], body).await;
            let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
            let e = p.send(&request()).await.unwrap_err();
            assert!(matches!(e, Error::InvalidResponse { .. }), "{body}: {e:?}");
            assert!(e.is_retryable() && e.wants_fallback());
            assert!(e.to_string().contains("no choices"), "{e}");
        }
        // With an error object: classified by its code.
        let server = serve(
            "/chat/completions",
            200,
            &[],
            r#"{"choices":[],"error":{"code":429,"message":"Rate limit exceeded upstream"}}"#,
        )
        .await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let e = p.send(&request()).await.unwrap_err();
        assert!(matches!(e, Error::Http { status: 429, .. }), "{e:?}");
    }

    #[tokio::test]
    async fn quirk_reasoning_models_get_max_completion_tokens() {
        let ok = r#"{"role":"assistant","content":"hi"}"#;
        let (_, sent) = quirk("o3-mini", ok, "stop").await;
        assert_eq!(sent["max_completion_tokens"], 100);
        assert!(sent.get("max_tokens").is_none() && sent.get("temperature").is_none());
        let (_, sent) = quirk("gpt-5-mini", ok, "stop").await;
        assert_eq!(sent["max_completion_tokens"], 100);
        let (_, sent) = quirk("gpt-4.1", ok, "stop").await;
        assert_eq!(
            (
                sent["max_tokens"].as_u64(),
                sent.get("max_completion_tokens")
            ),
            (Some(100), None)
        );
    }

    #[tokio::test]
    async fn quirk_reasoning_content_is_not_sent_back() {
        let (reply, _) = quirk(
            "deepseek-reasoner",
            r#"{"role":"assistant","content":"done","reasoning_content":"thinking…","reasoning":"more"}"#,
            "stop",
        )
        .await;
        let m = reply.unwrap().message;
        assert_eq!(m.content.as_deref(), Some("done"));
        // The next request carries the answer without its reasoning.
        let body = r#"{"choices":[{"message":{"role":"assistant","content":"ok"}}]}"#;
        let server = serve("/chat/completions", 200, &[], body).await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let mut r = request();
        r.messages.push(m);
        r.messages.push(ChatMessage::user("go on"));
        p.send(&r).await.unwrap();
        let sent = &server.seen()[0].body;
        assert!(!sent.to_string().contains("reasoning"), "{sent}");
        swarm_testkit::validate::request(sent).unwrap();
    }

    #[tokio::test]
    async fn quirk_openrouter_402_falls_back() {
        let server = serve(
            "/chat/completions",
            402,
            &[],
            r#"{"error":{"code":402,"message":"Insufficient credits. Add more using https://openrouter.ai/credits"}}"#,
        )
        .await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let e = p.send(&request()).await.unwrap_err();
        assert!(matches!(e, Error::Http { status: 402, .. }), "{e:?}");
        assert!(
            !e.is_retryable(),
            "the same provider will not have credits a second later"
        );
        assert!(e.wants_fallback());
        assert_eq!(server.seen().len(), 1);
    }

    #[tokio::test]
    async fn http_errors_keep_the_key_out_and_read_retry_after() {
        let server = serve(
            "/chat/completions",
            429,
            &[("retry-after", "7")],
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
        .await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let e = p.send(&request()).await.unwrap_err();
        assert!(
            matches!(e, Error::Http { status: 429, retry_after: Some(ra), .. } if ra == Duration::from_secs(7)),
            "{e:?}"
        );
        assert!(!e.to_string().contains(FAKE_KEY));
        assert!(!format!("{e:?}").contains(FAKE_KEY));
    }

    #[tokio::test]
    async fn no_key_means_no_authorization_header() {
        let server = serve(
            "/chat/completions",
            200,
            &[],
            r#"{"choices":[{"message":{"role":"assistant","content":"ok"}}]}"#,
        )
        .await;
        let mut s = settings(&server.base_url);
        s.api_key = None;
        let reply = OpenAiProvider::new(s)
            .unwrap()
            .send(&request())
            .await
            .unwrap();
        assert_eq!(reply.message.content.as_deref(), Some("ok"));
        assert!(server.seen()[0].headers.get("authorization").is_none());
    }

    #[tokio::test]
    async fn garbled_and_embedded_error_bodies() {
        let server = serve("/chat/completions", 200, &[], "<html>oops</html>").await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let e = p.send(&request()).await.unwrap_err();
        assert!(matches!(e, Error::InvalidResponse { .. }), "{e:?}");

        let server = serve(
            "/chat/completions",
            200,
            &[],
            r#"{"error":{"code":503,"message":"upstream overloaded"}}"#,
        )
        .await;
        let p = OpenAiProvider::new(settings(&server.base_url)).unwrap();
        let e = p.send(&request()).await.unwrap_err();
        assert!(matches!(e, Error::Http { status: 503, .. }), "{e:?}");
    }
}
