//! The agent's model endpoint: HTTP on a UNIX socket in the attempt's
//! private directory (the relay in the sandbox forwards the agent's TCP
//! connections to it): Anthropic Messages, Chat Completions, Responses and
//! Gemini's generateContent. Every request must carry the attempt's token
//! (`x-api-key`, `Authorization: Bearer` or `x-goog-api-key`); its
//! conversation goes to the supervisor's gateway as this worker's model
//! request — under the shared rate limit, the budget, the accounting,
//! recording and redaction — and the answer comes back in the agent's
//! format, streamed when it asked for a stream.

use super::wire::{self, AgentRequest};
use super::{Pump, Shared};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use std::sync::Arc;
use swarm_protocol::worker::ModelResult;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Anthropic,
    OpenaiChat,
    /// Gemini's `models/<model>:generateContent` (or `:streamGenerateContent`).
    Gemini {
        stream: bool,
    },
    /// OpenAI Responses.
    Responses,
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/messages", post(anthropic))
        .route("/messages", post(anthropic))
        .route("/v1/chat/completions", post(openai))
        .route("/chat/completions", post(openai))
        .route("/v1beta/models/{*rest}", post(gemini))
        .route("/v1/responses", post(responses))
        .route("/responses", post(responses))
        .fallback(not_found)
        .with_state(shared)
}

async fn anthropic(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(s, headers, body, Format::Anthropic, "").await
}

async fn openai(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(s, headers, body, Format::OpenaiChat, "").await
}

async fn responses(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    serve(s, headers, body, Format::Responses, "").await
}

async fn gemini(
    State(s): State<Arc<Shared>>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (model, action) = rest.rsplit_once(':').unwrap_or((rest.as_str(), ""));
    match action {
        "generateContent" => serve(s, headers, body, Format::Gemini { stream: false }, model).await,
        "streamGenerateContent" => {
            serve(s, headers, body, Format::Gemini { stream: true }, model).await
        }
        // Answered here, without a model call: a rough count (4 bytes a token).
        "countTokens" => axum::Json(json!({"totalTokens": body.len() / 4})).into_response(),
        _ => not_found().await,
    }
}

async fn not_found() -> Response {
    // Claude Code probes `HEAD /` and `count_tokens`; a 404 makes it carry on.
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"type": "error", "error": {"type": "not_found_error", "message": "not served by the AgentSwarm gateway"}})),
    )
        .into_response()
}

fn error(format: Format, status: StatusCode, kind: &str, message: &str) -> Response {
    let body = match format {
        Format::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
        Format::OpenaiChat | Format::Responses => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
        }
        Format::Gemini { .. } => {
            json!({"error": {"code": status.as_u16(), "message": message, "status": kind}})
        }
    };
    (status, axum::Json(body)).into_response()
}

fn token_of(headers: &HeaderMap) -> Option<&str> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    h("x-api-key")
        .or_else(|| h("authorization").and_then(|a| a.strip_prefix("Bearer ")))
        .or_else(|| h("x-goog-api-key"))
}

async fn serve(
    s: Arc<Shared>,
    headers: HeaderMap,
    body: Bytes,
    format: Format,
    url_model: &str,
) -> Response {
    use subtle::ConstantTimeEq;
    let authorized = token_of(&headers)
        .map(|t| bool::from(t.as_bytes().ct_eq(s.token.as_bytes())))
        .unwrap_or(false);
    if !authorized {
        return error(
            format,
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "this endpoint needs the attempt's token (the key the agent was given)",
        );
    }
    let parsed: Result<AgentRequest, String> = serde_json::from_slice::<Value>(&body)
        .map_err(|e| format!("the body is not JSON: {e}"))
        .and_then(|v| match format {
            Format::Anthropic => wire::from_anthropic(&v),
            Format::OpenaiChat => wire::from_openai_chat(&v),
            Format::Gemini { stream } => wire::from_gemini(&v, stream, url_model),
            Format::Responses => wire::from_responses(&v),
        });
    let custom = serde_json::from_slice::<Value>(&body)
        .map(|v| wire::responses_custom_tools(&v))
        .unwrap_or_default();
    let req = match parsed {
        Ok(r) => r,
        Err(e) => return error(format, StatusCode::BAD_REQUEST, "invalid_request_error", &e),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let sent = match s.pump.lock() {
        Ok(p) => p
            .send(Pump::Model {
                messages: req.messages.clone(),
                tools: req.tools.clone(),
                reply: tx,
            })
            .is_ok(),
        Err(_) => false,
    };
    if !sent {
        return error(
            format,
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "the attempt is over",
        );
    }
    let result = match rx.await {
        Ok(r) => r,
        Err(_) => {
            return error(
                format,
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                "the attempt is over",
            )
        }
    };
    let (message, usage) = match result {
        ModelResult::Ok { message, usage } => (message, usage),
        // Already retried by the gateway: a client error, so that the agent
        // stops instead of retrying it again.
        ModelResult::Error { error: e } => {
            return error(format, StatusCode::BAD_REQUEST, "invalid_request_error", &e)
        }
    };
    let n = s.next_id();
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let model = if req.model.is_empty() {
        "agentswarm".to_owned()
    } else {
        req.model.clone()
    };
    match (format, req.stream) {
        (Format::Anthropic, false) => axum::Json(wire::to_anthropic(
            &message,
            &usage,
            &model,
            &format!("msg_swarm{n}"),
        ))
        .into_response(),
        (Format::Anthropic, true) => {
            let mut text = String::new();
            for (event, data) in
                wire::to_anthropic_events(&message, &usage, &model, &format!("msg_swarm{n}"))
            {
                text.push_str(&format!("event: {event}\ndata: {data}\n\n"));
            }
            sse(text)
        }
        (Format::OpenaiChat, false) => axum::Json(wire::to_openai_chat(
            &message,
            &usage,
            &model,
            &format!("chatcmpl-swarm{n}"),
            created,
        ))
        .into_response(),
        (Format::OpenaiChat, true) => {
            let mut text = String::new();
            for c in wire::to_openai_chunks(
                &message,
                &usage,
                &model,
                &format!("chatcmpl-swarm{n}"),
                created,
                req.include_usage,
            ) {
                text.push_str(&format!("data: {c}\n\n"));
            }
            text.push_str("data: [DONE]\n\n");
            sse(text)
        }
        (Format::Responses, false) => axum::Json(wire::to_responses(
            &message,
            &usage,
            &model,
            &format!("resp_swarm{n}"),
            created,
            &custom,
        ))
        .into_response(),
        (Format::Responses, true) => {
            let mut text = String::new();
            for (event, data) in wire::to_responses_events(
                &message,
                &usage,
                &model,
                &format!("resp_swarm{n}"),
                created,
                &custom,
            ) {
                text.push_str(&format!("event: {event}\ndata: {data}\n\n"));
            }
            sse(text)
        }
        (Format::Gemini { stream: false }, _) => {
            axum::Json(wire::to_gemini(&message, &usage, &model)).into_response()
        }
        (Format::Gemini { stream: true }, _) => sse(format!(
            "data: {}\r\n\r\n",
            wire::to_gemini(&message, &usage, &model)
        )),
    }
}

/// The whole answer is known when it arrives (the gateway's providers are
/// called without streaming), so the events go out in one body.
fn sse(text: String) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}
