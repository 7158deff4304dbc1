//! The two wire formats the server answers in: a scripted reply, a
//! violation, an injected error or a scenario error is built once and turned
//! into a Chat Completions or an Anthropic Messages body here.

use crate::{InjectedError, Wire};
use serde_json::{json, Value};

/// One assistant message the scenario asks for, before it has a wire format.
pub(crate) struct ScriptedReply {
    pub content: Option<String>,
    pub calls: Vec<ReplyCall>,
}

pub(crate) struct ReplyCall {
    /// `<task>_<attempt>_<turn>_<n>`: the call id without its wire prefix.
    pub id_stem: String,
    pub name: String,
    pub arguments: Value,
}

impl Wire {
    /// The id of a scripted tool call: `call_<stem>` (OpenAI) or
    /// `toolu_<stem>` with characters outside `[A-Za-z0-9_-]` replaced by `_`
    /// (Anthropic checks ids against that pattern).
    fn call_id(self, stem: &str) -> String {
        match self {
            Wire::OpenAi => format!("call_{stem}"),
            Wire::Anthropic => {
                let clean: String = stem
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                format!("toolu_{clean}")
            }
        }
    }
}

/// The 200 body for a scripted reply. `n` numbers the replies; `prompt_len`
/// is the request body's length in bytes (a token estimate: bytes / 4).
pub(crate) fn reply_body(
    wire: Wire,
    reply: &ScriptedReply,
    model: &Value,
    n: usize,
    prompt_len: usize,
) -> Value {
    let input_tokens = prompt_len / 4;
    match wire {
        Wire::OpenAi => {
            let calls: Vec<Value> = reply
                .calls
                .iter()
                .map(|c| {
                    json!({
                        "id": wire.call_id(&c.id_stem),
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments.to_string()},
                    })
                })
                .collect();
            let mut message = json!({"role": "assistant", "content": reply.content});
            let finish_reason = if calls.is_empty() {
                "stop"
            } else {
                message["tool_calls"] = Value::Array(calls);
                "tool_calls"
            };
            let output_tokens = message.to_string().len() / 4;
            json!({
                "id": format!("chatcmpl-scripted-{n}"),
                "object": "chat.completion",
                "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
                "usage": {"prompt_tokens": input_tokens, "completion_tokens": output_tokens, "total_tokens": input_tokens + output_tokens},
            })
        }
        Wire::Anthropic => {
            let mut content = Vec::new();
            if let Some(text) = reply.content.as_deref().filter(|t| !t.is_empty()) {
                content.push(json!({"type": "text", "text": text}));
            }
            for c in &reply.calls {
                content.push(json!({
                    "type": "tool_use",
                    "id": wire.call_id(&c.id_stem),
                    "name": c.name,
                    "input": c.arguments,
                }));
            }
            let stop_reason = if reply.calls.is_empty() {
                "end_turn"
            } else {
                "tool_use"
            };
            let output_tokens = Value::Array(content.clone()).to_string().len() / 4;
            json!({
                "id": format!("msg_scripted_{n}"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            })
        }
    }
}

/// A 200 body of [`reply_body`] as the provider streams it (`stream:
/// true`): Anthropic's events (`message_start`, a start, delta and stop per
/// content block, `message_delta`, `message_stop`), or Chat Completions
/// chunks ending in `data: [DONE]` (with a usage chunk when the request's
/// `stream_options.include_usage` asks).
pub(crate) fn stream_body(wire: Wire, body: &Value, include_usage: bool) -> String {
    let mut out = String::new();
    match wire {
        Wire::Anthropic => {
            let mut ev = |name: &str, data: Value| {
                out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
            };
            let mut start = body.clone();
            start["content"] = json!([]);
            start["stop_reason"] = Value::Null;
            start["usage"]["output_tokens"] = json!(0);
            ev(
                "message_start",
                json!({"type": "message_start", "message": start}),
            );
            for (i, b) in body["content"].as_array().into_iter().flatten().enumerate() {
                let (open, delta) = if b["type"] == "tool_use" {
                    (
                        json!({"type": "tool_use", "id": b["id"], "name": b["name"], "input": {}}),
                        json!({"type": "input_json_delta", "partial_json": b["input"].to_string()}),
                    )
                } else {
                    (
                        json!({"type": "text", "text": ""}),
                        json!({"type": "text_delta", "text": b["text"]}),
                    )
                };
                ev(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": i, "content_block": open}),
                );
                ev(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": i, "delta": delta}),
                );
                ev(
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": i}),
                );
            }
            ev(
                "message_delta",
                json!({"type": "message_delta", "delta": {"stop_reason": body["stop_reason"], "stop_sequence": null}, "usage": {"output_tokens": body["usage"]["output_tokens"]}}),
            );
            ev("message_stop", json!({"type": "message_stop"}));
        }
        Wire::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id": body["id"], "object": "chat.completion.chunk", "created": body["created"], "model": body["model"],
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let message = &body["choices"][0]["message"];
            let mut chunks = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            if let Some(t) = message["content"].as_str().filter(|t| !t.is_empty()) {
                chunks.push(chunk(json!({"content": t}), Value::Null));
            }
            for (i, c) in message["tool_calls"]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
            {
                let mut c = c.clone();
                c["index"] = json!(i);
                chunks.push(chunk(json!({"tool_calls": [c]}), Value::Null));
            }
            chunks.push(chunk(
                json!({}),
                body["choices"][0]["finish_reason"].clone(),
            ));
            if include_usage {
                chunks.push(json!({"id": body["id"], "object": "chat.completion.chunk", "created": body["created"],
                                   "model": body["model"], "choices": [], "usage": body["usage"]}));
            }
            for c in chunks {
                out.push_str(&format!("data: {c}\n\n"));
            }
            out.push_str("data: [DONE]\n\n");
        }
    }
    out
}

/// An error body in the provider's shape. `code` is OpenAI's `code` field
/// (Anthropic has none); `kind` is OpenAI's `type` or Anthropic's
/// `error.type`.
fn error_body(wire: Wire, kind: &str, message: &str, code: Option<&str>) -> Value {
    match wire {
        Wire::OpenAi => {
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Wire::Anthropic => json!({"type": "error", "error": {"type": kind, "message": message}}),
    }
}

/// The 400 body for a request that broke the wire format.
pub(crate) fn violation_body(wire: Wire, message: &str) -> Value {
    error_body(wire, "invalid_request_error", message, None)
}

/// The 500 body when the scenario cannot answer a request.
pub(crate) fn scenario_error_body(wire: Wire, message: &str) -> Value {
    match wire {
        Wire::OpenAi => error_body(wire, "scenario", message, None),
        Wire::Anthropic => error_body(wire, "api_error", message, None),
    }
}

/// A 200 body that is not JSON (`malformed: true`).
pub(crate) fn malformed_body(wire: Wire) -> &'static str {
    match wire {
        Wire::OpenAi => "{\"choices\": [ this is not json",
        Wire::Anthropic => "{\"type\": \"message\", \"content\": [ this is not json",
    }
}

/// The status and body of an injected error that is not `malformed`.
/// Never echoes a request header (an API key) back.
pub(crate) fn injected_error_body(
    wire: Wire,
    e: &InjectedError,
    model: Option<&str>,
) -> (u16, Value) {
    let model = model.unwrap_or("");
    if e.context_length {
        let body = match wire {
            Wire::OpenAi => error_body(
                wire,
                "invalid_request_error",
                "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. Please reduce the length of the messages.",
                Some("context_length_exceeded"),
            ),
            Wire::Anthropic => error_body(
                wire,
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
                None,
            ),
        };
        return (400, body);
    }
    if e.insufficient_quota {
        let body = match wire {
            Wire::OpenAi => error_body(
                wire,
                "insufficient_quota",
                "You exceeded your current quota, please check your plan and billing details.",
                Some("insufficient_quota"),
            ),
            Wire::Anthropic => error_body(
                wire,
                "rate_limit_error",
                "This request would exceed your organization's usage limit; it resets at the next period.",
                None,
            ),
        };
        return (429, body);
    }
    let status = e.status;
    let body = match (wire, status) {
        (Wire::OpenAi, 401) => error_body(
            wire,
            "invalid_request_error",
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            Some("invalid_api_key"),
        ),
        (Wire::OpenAi, 404) => error_body(
            wire,
            "invalid_request_error",
            &format!("The model `{model}` does not exist or you do not have access to it."),
            Some("model_not_found"),
        ),
        (Wire::OpenAi, 429) => error_body(
            wire,
            "requests",
            "scripted error 429: Rate limit reached for requests. Please try again later.",
            Some("rate_limit_exceeded"),
        ),
        (Wire::OpenAi, 400..=499) => error_body(
            wire,
            "invalid_request_error",
            &format!("scripted error {status}"),
            None,
        ),
        (Wire::OpenAi, _) => error_body(
            wire,
            "server_error",
            &format!("scripted error {status}: The server had an error while processing your request."),
            None,
        ),
        (Wire::Anthropic, 401) => error_body(wire, "authentication_error", "invalid x-api-key", None),
        (Wire::Anthropic, 404) => {
            error_body(wire, "not_found_error", &format!("model: {model}"), None)
        }
        (Wire::Anthropic, 429) => error_body(
            wire,
            "rate_limit_error",
            "scripted error 429: Number of request tokens has exceeded your per-minute rate limit",
            None,
        ),
        (Wire::Anthropic, 529) => error_body(wire, "overloaded_error", "Overloaded", None),
        (Wire::Anthropic, _) => {
            error_body(wire, "api_error", &format!("scripted error {status}"), None)
        }
    };
    (status, body)
}
