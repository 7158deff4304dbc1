//! What an outside agent sends to its model endpoint, translated to the
//! swarm's conversation (Chat Completions messages, which the gateway
//! sends to any provider in the provider's own format), and the gateway's
//! answer rendered back in the agent's format: a JSON body, or the
//! server-sent events of a streamed answer.
//!
//! Four formats: Anthropic Messages, OpenAI Chat Completions, OpenAI
//! Responses and Gemini's generateContent. The
//! request side is read leniently (content as a string or as parts, the
//! fields agents add that the gateway has no use for are ignored); the
//! answer side is written exactly as the vendors' APIs write it, since
//! agents parse it strictly. Hand-written: the vendors' SDKs are clients,
//! and no crate serves these formats.

use serde_json::{json, Value};
use swarm_protocol::chat::{ChatMessage, FunctionCall, Role, ToolCall, ToolSpec, Usage};

/// A request of an agent, in the swarm's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRequest {
    pub messages: Vec<ChatMessage>,
    pub tools: Vec<ToolSpec>,
    pub stream: bool,
    /// The model the agent asked for (echoed back; the gateway's model
    /// answers).
    pub model: String,
    /// Chat Completions `stream_options.include_usage`.
    pub include_usage: bool,
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") | Some("input_text") | Some("output_text") => {
                    p.get("text").and_then(Value::as_str).map(str::to_owned)
                }
                Some("image") | Some("image_url") => Some("[image omitted]".to_owned()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn bad(what: impl Into<String>) -> String {
    what.into()
}

/// An Anthropic tool-use id may only hold `[a-zA-Z0-9_-]`.
fn anthropic_id(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads an Anthropic Messages request body.
pub fn from_anthropic(body: &Value) -> Result<AgentRequest, String> {
    let mut messages = Vec::new();
    let system = body.get("system").map(text_of).unwrap_or_default();
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return Err(bad("`messages` must be an array"));
    };
    for m in list {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content").cloned().unwrap_or(Value::Null);
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(a) => a,
            _ => Vec::new(),
        };
        match role {
            "user" => {
                let mut text = Vec::new();
                for b in &blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("tool_result") => {
                            let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                            let mut t = b.get("content").map(text_of).unwrap_or_default();
                            if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                                t = format!("error: {t}");
                            }
                            messages.push(ChatMessage::tool_result(id, t));
                        }
                        _ => {
                            let t = text_of(&Value::Array(vec![b.clone()]));
                            if !t.is_empty() {
                                text.push(t);
                            }
                        }
                    }
                }
                if !text.is_empty() {
                    messages.push(ChatMessage::user(text.join("\n")));
                }
            }
            "assistant" => {
                let mut text = Vec::new();
                let mut calls = Vec::new();
                for b in &blocks {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(t) = b.get("text").and_then(Value::as_str) {
                                text.push(t.to_owned());
                            }
                        }
                        Some("tool_use") => calls.push(ToolCall {
                            id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: b
                                    .get("name")
                                    .and_then(Value::as_str)
                                    .unwrap_or("")
                                    .to_owned(),
                                arguments: b.get("input").cloned().unwrap_or(json!({})).to_string(),
                            },
                        }),
                        // Thinking blocks are the provider's to keep; a
                        // different provider could not check their signature.
                        _ => {}
                    }
                }
                let joined = text.join("\n");
                messages.push(ChatMessage {
                    role: Role::Assistant,
                    content: (!joined.is_empty() || calls.is_empty()).then_some(joined),
                    tool_calls: calls,
                    tool_call_id: None,
                });
            }
            // Not in Anthropic's API, but Claude Code's SDK sends it.
            "system" => {
                let t = text_of(&Value::Array(blocks));
                if !t.is_empty() {
                    messages.push(ChatMessage::system(t));
                }
            }
            other => {
                return Err(bad(format!(
                    "message role {other:?} is not user, assistant or system"
                )))
            }
        }
    }
    let mut tools = Vec::new();
    for t in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // Server tools (web search and the like) have no schema: the
        // provider behind the gateway may not offer them.
        let Some(schema) = t.get("input_schema") else {
            continue;
        };
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        let description = t.get("description").and_then(Value::as_str).unwrap_or("");
        tools.push(ToolSpec::function(name, description, schema.clone()));
    }
    Ok(AgentRequest {
        messages,
        tools,
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        include_usage: true,
    })
}

/// Reads a Chat Completions request body.
pub fn from_openai_chat(body: &Value) -> Result<AgentRequest, String> {
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return Err(bad("`messages` must be an array"));
    };
    let mut messages = Vec::new();
    for m in list {
        let role = match m.get("role").and_then(Value::as_str).unwrap_or("") {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => return Err(bad(format!("message role {other:?} is not known"))),
        };
        let content = m.get("content").map(text_of);
        let mut calls = Vec::new();
        for c in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = c.get("function").cloned().unwrap_or(json!({}));
            calls.push(ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: f
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    arguments: f
                        .get("arguments")
                        .and_then(Value::as_str)
                        .unwrap_or("{}")
                        .to_owned(),
                },
            });
        }
        let content = match (&role, content) {
            (Role::Assistant, Some(c)) if c.is_empty() && !calls.is_empty() => None,
            (Role::Assistant, None) if calls.is_empty() => Some(String::new()),
            (Role::Assistant, c) => c,
            (_, c) => Some(c.unwrap_or_default()),
        };
        messages.push(ChatMessage {
            role,
            content,
            tool_calls: calls,
            tool_call_id: m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    let mut tools = Vec::new();
    for t in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(f) = t.get("function") else { continue };
        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
        let description = f.get("description").and_then(Value::as_str).unwrap_or("");
        let params = f
            .get("parameters")
            .cloned()
            .unwrap_or(json!({"type": "object", "properties": {}}));
        tools.push(ToolSpec::function(name, description, params));
    }
    Ok(AgentRequest {
        messages,
        tools,
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true),
    })
}

fn tool_input(args: &str) -> Value {
    match serde_json::from_str::<Value>(args) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// An Anthropic Messages answer.
pub fn to_anthropic(message: &ChatMessage, usage: &Usage, model: &str, id: &str) -> Value {
    let mut content = Vec::new();
    if let Some(t) = message.content.as_deref().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in &message.tool_calls {
        content.push(json!({"type": "tool_use", "id": anthropic_id(&c.id), "name": c.function.name, "input": tool_input(&c.function.arguments)}));
    }
    if content.is_empty() {
        content.push(json!({"type": "text", "text": ""}));
    }
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": if message.tool_calls.is_empty() { "end_turn" } else { "tool_use" },
        "stop_sequence": null,
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens},
    })
}

/// The same answer as Anthropic's server-sent events, in order.
pub fn to_anthropic_events(
    message: &ChatMessage,
    usage: &Usage,
    model: &str,
    id: &str,
) -> Vec<(String, Value)> {
    let full = to_anthropic(message, usage, model, id);
    let mut start = full.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"] = json!({"input_tokens": usage.prompt_tokens, "output_tokens": 0});
    let mut ev = vec![(
        "message_start".to_owned(),
        json!({"type": "message_start", "message": start}),
    )];
    for (i, block) in full["content"].as_array().into_iter().flatten().enumerate() {
        let (open, delta) = match block["type"].as_str() {
            Some("tool_use") => (
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}),
                json!({"type": "input_json_delta", "partial_json": block["input"].to_string()}),
            ),
            _ => (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": block["text"]}),
            ),
        };
        ev.push((
            "content_block_start".into(),
            json!({"type": "content_block_start", "index": i, "content_block": open}),
        ));
        ev.push((
            "content_block_delta".into(),
            json!({"type": "content_block_delta", "index": i, "delta": delta}),
        ));
        ev.push((
            "content_block_stop".into(),
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    ev.push((
        "message_delta".into(),
        json!({"type": "message_delta", "delta": {"stop_reason": full["stop_reason"], "stop_sequence": null}, "usage": {"output_tokens": usage.completion_tokens}}),
    ));
    ev.push(("message_stop".into(), json!({"type": "message_stop"})));
    ev
}

/// A Chat Completions answer.
pub fn to_openai_chat(
    message: &ChatMessage,
    usage: &Usage,
    model: &str,
    id: &str,
    created: u64,
) -> Value {
    let mut m = json!({"role": "assistant", "content": message.content.clone().filter(|c| !c.is_empty() || message.tool_calls.is_empty())});
    if !message.tool_calls.is_empty() {
        m["tool_calls"] = serde_json::to_value(&message.tool_calls).unwrap_or(Value::Null);
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": m, "finish_reason": finish(message)}],
        "usage": usage_json(usage),
    })
}

fn finish(message: &ChatMessage) -> &'static str {
    if message.tool_calls.is_empty() {
        "stop"
    } else {
        "tool_calls"
    }
}

fn usage_json(u: &Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.prompt_tokens + u.completion_tokens})
}

/// The same answer as Chat Completions chunks (each a `data:` line; the
/// caller ends with `data: [DONE]`).
pub fn to_openai_chunks(
    message: &ChatMessage,
    usage: &Usage,
    model: &str,
    id: &str,
    created: u64,
    include_usage: bool,
) -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if let Some(t) = message.content.as_deref().filter(|t| !t.is_empty()) {
        out.push(chunk(json!({"content": t}), Value::Null));
    }
    for (i, c) in message.tool_calls.iter().enumerate() {
        out.push(chunk(
            json!({"tool_calls": [{"index": i, "id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}]}),
            Value::Null,
        ));
    }
    out.push(chunk(json!({}), json!(finish(message))));
    if include_usage {
        out.push(
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": usage_json(usage)}),
        );
    }
    out
}

/// Reads a Gemini `generateContent` / `streamGenerateContent` request body
/// (the model is in the URL). Gemini's function calls may come without
/// ids: a call gets `gemini_<turn>_<n>`, and an answer without an id is
/// matched to the earliest open call of its name.
pub fn from_gemini(body: &Value, stream: bool, model: &str) -> Result<AgentRequest, String> {
    let mut messages = Vec::new();
    let system = body
        .pointer("/systemInstruction/parts")
        .or_else(|| body.pointer("/system_instruction/parts"))
        .map(gemini_text)
        .unwrap_or_default();
    if !system.is_empty() {
        messages.push(ChatMessage::system(system));
    }
    let Some(contents) = body.get("contents").and_then(Value::as_array) else {
        return Err(bad("`contents` must be an array"));
    };
    let mut open: Vec<(String, String)> = Vec::new();
    for (turn, c) in contents.iter().enumerate() {
        let parts: Vec<Value> = c
            .get("parts")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        match c.get("role").and_then(Value::as_str).unwrap_or("user") {
            "model" => {
                let mut text = Vec::new();
                let mut calls = Vec::new();
                for (i, p) in parts.iter().enumerate() {
                    if p.get("thought").and_then(Value::as_bool) == Some(true) {
                        continue;
                    }
                    if let Some(f) = p.get("functionCall") {
                        let name = f
                            .get("name")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned();
                        let id = f
                            .get("id")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .unwrap_or_else(|| format!("gemini_{turn}_{i}"));
                        open.push((id.clone(), name.clone()));
                        calls.push(ToolCall {
                            id,
                            kind: "function".into(),
                            function: FunctionCall {
                                name,
                                arguments: f.get("args").cloned().unwrap_or(json!({})).to_string(),
                            },
                        });
                    } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                        text.push(t.to_owned());
                    }
                }
                let joined = text.join("");
                messages.push(ChatMessage {
                    role: Role::Assistant,
                    content: (!joined.is_empty() || calls.is_empty()).then_some(joined),
                    tool_calls: calls,
                    tool_call_id: None,
                });
            }
            _ => {
                let mut text = Vec::new();
                for p in &parts {
                    if let Some(f) = p.get("functionResponse") {
                        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                        let id = match f.get("id").and_then(Value::as_str) {
                            Some(id) => {
                                open.retain(|(o, _)| o != id);
                                id.to_owned()
                            }
                            None => match open.iter().position(|(_, n)| n == name) {
                                Some(i) => open.remove(i).0,
                                None => format!("gemini_{turn}_{name}"),
                            },
                        };
                        let out = match f.get("response") {
                            Some(Value::Object(o)) if o.len() == 1 && o.contains_key("output") => {
                                text_of(&o["output"])
                            }
                            Some(v) => v.to_string(),
                            None => String::new(),
                        };
                        messages.push(ChatMessage::tool_result(id, out));
                    } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                        text.push(t.to_owned());
                    }
                }
                if !text.is_empty() {
                    messages.push(ChatMessage::user(text.join("\n")));
                }
            }
        }
    }
    let mut tools = Vec::new();
    for group in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for d in group
            .get("functionDeclarations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = d.get("name").and_then(Value::as_str).unwrap_or("");
            let description = d.get("description").and_then(Value::as_str).unwrap_or("");
            let params = d
                .get("parametersJsonSchema")
                .or_else(|| d.get("parameters"))
                .cloned()
                .map(lower_gemini_types)
                .unwrap_or(json!({"type": "object", "properties": {}}));
            tools.push(ToolSpec::function(name, description, params));
        }
    }
    Ok(AgentRequest {
        messages,
        tools,
        stream,
        model: model.to_owned(),
        include_usage: true,
    })
}

fn gemini_text(parts: &Value) -> String {
    parts
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Gemini's OpenAPI-style schemas write types in capitals (`OBJECT`);
/// JSON Schema wants them lower-case.
fn lower_gemini_types(v: Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .map(|(k, v)| {
                    let v = match (k.as_str(), v) {
                        ("type", Value::String(t)) => Value::String(t.to_ascii_lowercase()),
                        (_, v) => lower_gemini_types(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(lower_gemini_types).collect()),
        other => other,
    }
}

/// A Gemini `GenerateContentResponse` (also the one event of a stream).
pub fn to_gemini(message: &ChatMessage, usage: &Usage, model: &str) -> Value {
    let mut parts = Vec::new();
    if let Some(t) = message.content.as_deref().filter(|t| !t.is_empty()) {
        parts.push(json!({"text": t}));
    }
    for c in &message.tool_calls {
        parts.push(json!({"functionCall": {"id": c.id, "name": c.function.name, "args": tool_input(&c.function.arguments)}}));
    }
    if parts.is_empty() {
        parts.push(json!({"text": ""}));
    }
    json!({
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}],
        "usageMetadata": {"promptTokenCount": usage.prompt_tokens, "candidatesTokenCount": usage.completion_tokens,
                          "totalTokenCount": usage.prompt_tokens + usage.completion_tokens},
        "modelVersion": model,
    })
}

/// Reads an OpenAI Responses request body (`POST /v1/responses`, what
/// Codex speaks). Free-form ("custom") tool calls travel as function calls
/// whose arguments are `{"input": …}`; reasoning items stay the provider's.
pub fn from_responses(body: &Value) -> Result<AgentRequest, String> {
    let mut messages = Vec::new();
    if let Some(i) = body.get("instructions").and_then(Value::as_str) {
        if !i.is_empty() {
            messages.push(ChatMessage::system(i));
        }
    }
    let items: Vec<Value> = match body.get("input") {
        Some(Value::String(t)) => vec![json!({"type": "message", "role": "user", "content": t})],
        Some(Value::Array(a)) => a.clone(),
        _ => return Err(bad("`input` must be a string or an array")),
    };
    for it in &items {
        let kind = it.get("type").and_then(Value::as_str).unwrap_or("message");
        let s = |k: &str| it.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
        match kind {
            "message" => {
                let text = it.get("content").map(text_of).unwrap_or_default();
                match it.get("role").and_then(Value::as_str).unwrap_or("user") {
                    "system" | "developer" => messages.push(ChatMessage::system(text)),
                    "assistant" => push_assistant(&mut messages, Some(text), None),
                    // Codex sends its environment context and the prompt as
                    // two user items: one user message, as a person writes it.
                    _ => match messages.last_mut() {
                        Some(m) if m.role == Role::User => {
                            let old = m.content.take().unwrap_or_default();
                            m.content = Some(format!("{old}\n{text}"));
                        }
                        _ => messages.push(ChatMessage::user(text)),
                    },
                }
            }
            "function_call" => push_assistant(
                &mut messages,
                None,
                Some(ToolCall {
                    id: s("call_id"),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: s("name"),
                        arguments: s("arguments"),
                    },
                }),
            ),
            "custom_tool_call" => push_assistant(
                &mut messages,
                None,
                Some(ToolCall {
                    id: s("call_id"),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: s("name"),
                        arguments: json!({"input": s("input")}).to_string(),
                    },
                }),
            ),
            "function_call_output" | "custom_tool_call_output" => {
                let out = it.get("output").map(text_of).unwrap_or_default();
                messages.push(ChatMessage::tool_result(s("call_id"), out));
            }
            _ => {}
        }
    }
    let mut tools = Vec::new();
    for t in body
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("");
        let description = t.get("description").and_then(Value::as_str).unwrap_or("");
        match t.get("type").and_then(Value::as_str) {
            Some("function") => tools.push(ToolSpec::function(
                name,
                description,
                t.get("parameters").cloned().unwrap_or(json!({"type": "object", "properties": {}})),
            )),
            Some("custom") => tools.push(ToolSpec::function(
                name,
                description,
                json!({"type": "object", "properties": {"input": {"type": "string", "description": "The tool's free-form input."}}, "required": ["input"]}),
            )),
            // Hosted tools (web search, …) are the vendor's.
            _ => {}
        }
    }
    Ok(AgentRequest {
        messages,
        tools,
        stream: body.get("stream").and_then(Value::as_bool) == Some(true),
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        include_usage: true,
    })
}

/// Adds text or a call to the assistant message at the end, or starts one
/// (the Responses API gives each call its own item).
fn push_assistant(messages: &mut Vec<ChatMessage>, text: Option<String>, call: Option<ToolCall>) {
    let starts_new = !matches!(messages.last(), Some(m) if m.role == Role::Assistant);
    if starts_new {
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
    }
    if let Some(m) = messages.last_mut() {
        if let Some(t) = text {
            m.content = Some(match m.content.take() {
                Some(old) if !old.is_empty() => format!("{old}\n{t}"),
                _ => t,
            });
        }
        m.tool_calls.extend(call);
    }
}

/// The output items of a Responses answer. A call to a tool the agent
/// declared free-form (`custom`) goes back as a `custom_tool_call`.
fn responses_output(message: &ChatMessage, custom: &[String], id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    if let Some(t) = message.content.as_deref().filter(|t| !t.is_empty()) {
        out.push(json!({"type": "message", "id": format!("{id}_msg"), "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": t, "annotations": []}]}));
    }
    for (i, c) in message.tool_calls.iter().enumerate() {
        if custom.contains(&c.function.name) {
            let input = tool_input(&c.function.arguments)
                .get("input")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            out.push(
                json!({"type": "custom_tool_call", "id": format!("{id}_ctc{i}"), "call_id": c.id,
                            "name": c.function.name, "input": input, "status": "completed"}),
            );
        } else {
            out.push(json!({"type": "function_call", "id": format!("{id}_fc{i}"), "call_id": c.id,
                            "name": c.function.name, "arguments": c.function.arguments, "status": "completed"}));
        }
    }
    out
}

/// The names of the free-form (`custom`) tools of a Responses request.
pub fn responses_custom_tools(body: &Value) -> Vec<String> {
    body.get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("custom"))
        .filter_map(|t| t.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// A Responses answer (`object: "response"`).
pub fn to_responses(
    message: &ChatMessage,
    usage: &Usage,
    model: &str,
    id: &str,
    created: u64,
    custom: &[String],
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": "completed",
        "model": model,
        "output": responses_output(message, custom, id),
        "usage": {"input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                  "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                  "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
                  "output_tokens_details": {"reasoning_tokens": 0}},
    })
}

/// The same answer as the Responses API's server-sent events.
pub fn to_responses_events(
    message: &ChatMessage,
    usage: &Usage,
    model: &str,
    id: &str,
    created: u64,
    custom: &[String],
) -> Vec<(String, Value)> {
    let full = to_responses(message, usage, model, id, created, custom);
    let mut start = full.clone();
    start["status"] = json!("in_progress");
    start["output"] = json!([]);
    start["usage"] = Value::Null;
    let mut ev = vec![
        (
            "response.created".to_owned(),
            json!({"type": "response.created", "response": start.clone()}),
        ),
        (
            "response.in_progress".to_owned(),
            json!({"type": "response.in_progress", "response": start}),
        ),
    ];
    for (i, item) in full["output"].as_array().into_iter().flatten().enumerate() {
        ev.push((
            "response.output_item.added".into(),
            json!({"type": "response.output_item.added", "output_index": i, "item": item}),
        ));
        if item["type"] == "message" {
            let text = item["content"][0]["text"].clone();
            ev.push(("response.output_text.delta".into(), json!({"type": "response.output_text.delta", "item_id": item["id"], "output_index": i, "content_index": 0, "delta": text})));
            ev.push(("response.output_text.done".into(), json!({"type": "response.output_text.done", "item_id": item["id"], "output_index": i, "content_index": 0, "text": text})));
        }
        ev.push((
            "response.output_item.done".into(),
            json!({"type": "response.output_item.done", "output_index": i, "item": item}),
        ));
    }
    ev.push((
        "response.completed".into(),
        json!({"type": "response.completed", "response": full}),
    ));
    for (n, (_, e)) in ev.iter_mut().enumerate() {
        e["sequence_number"] = json!(n);
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_anthropic_conversation_becomes_chat_messages_and_back() {
        let body = json!({
            "model": "claude-x", "max_tokens": 100, "stream": true,
            "system": [{"type": "text", "text": "be brief"}],
            "tools": [{"name": "Write", "description": "write", "input_schema": {"type": "object"}},
                      {"type": "web_search_20250305", "name": "web_search"}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "<system-reminder>x</system-reminder>"}, {"type": "text", "text": "Task a: do"}]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}, {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {"file_path": "a"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "ok"}]}]}
            ]
        });
        let r = from_anthropic(&body).unwrap();
        assert!(r.stream);
        assert_eq!(r.tools.len(), 1, "the server tool is left out");
        assert_eq!(r.messages[0], ChatMessage::system("be brief"));
        assert_eq!(
            r.messages[1].content.as_deref(),
            Some("<system-reminder>x</system-reminder>\nTask a: do")
        );
        assert_eq!(
            r.messages[2].tool_calls[0].function.arguments,
            r#"{"file_path":"a"}"#
        );
        assert_eq!(r.messages[2].content, None);
        assert_eq!(r.messages[3], ChatMessage::tool_result("toolu_1", "ok"));

        let reply = ChatMessage {
            role: Role::Assistant,
            content: Some("done".into()),
            tool_calls: vec![ToolCall {
                id: "call.9".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "Write".into(),
                    arguments: r#"{"a":1}"#.into(),
                },
            }],
            tool_call_id: None,
        };
        let u = Usage {
            prompt_tokens: 5,
            completion_tokens: 2,
            total_tokens: 7,
            ..Usage::default()
        };
        let v = to_anthropic(&reply, &u, "claude-x", "msg_1");
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(v["content"][1]["id"], "call_9");
        assert_eq!(v["content"][1]["input"], json!({"a": 1}));
        let ev = to_anthropic_events(&reply, &u, "claude-x", "msg_1");
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[5].1["delta"]["partial_json"], r#"{"a":1}"#);
        assert_eq!(ev[7].1["delta"]["stop_reason"], "tool_use");
    }

    #[test]
    fn a_gemini_conversation_becomes_chat_messages_and_back() {
        let body = json!({
            "systemInstruction": {"role": "user", "parts": [{"text": "sys"}]},
            "tools": [{"functionDeclarations": [{"name": "write_file", "description": "w",
                "parameters": {"type": "OBJECT", "properties": {"path": {"type": "STRING"}}}}]}],
            "contents": [
                {"role": "user", "parts": [{"text": "Task a: do"}]},
                {"role": "model", "parts": [{"text": "thinking", "thought": true}, {"functionCall": {"name": "write_file", "args": {"path": "a"}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "write_file", "response": {"output": "ok"}}}]}
            ]
        });
        let r = from_gemini(&body, true, "gemini-x").unwrap();
        assert_eq!(r.messages[0], ChatMessage::system("sys"));
        assert_eq!(
            r.tools[0].function.parameters["properties"]["path"]["type"],
            "string"
        );
        let id = r.messages[2].tool_calls[0].id.clone();
        assert_eq!(id, "gemini_1_1");
        assert_eq!(r.messages[2].content, None, "the thought is left out");
        assert_eq!(r.messages[3], ChatMessage::tool_result(id, "ok"));
        let reply = ChatMessage {
            role: Role::Assistant,
            content: None,
            tool_calls: vec![ToolCall {
                id: "c9".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "write_file".into(),
                    arguments: r#"{"path":"b"}"#.into(),
                },
            }],
            tool_call_id: None,
        };
        let v = to_gemini(&reply, &Usage::default(), "gemini-x");
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["functionCall"]["args"]["path"],
            "b"
        );
        assert_eq!(
            v["candidates"][0]["content"]["parts"][0]["functionCall"]["id"],
            "c9"
        );
    }

    #[test]
    fn a_responses_conversation_becomes_chat_messages_and_back() {
        let body = json!({
            "model": "gpt-x", "instructions": "be codex", "stream": true, "store": false,
            "tools": [{"type": "function", "name": "shell", "description": "run", "parameters": {"type": "object"}},
                      {"type": "custom", "name": "apply_patch", "description": "patch", "format": {"type": "grammar"}},
                      {"type": "web_search"}],
            "input": [
                {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "perms"}]},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Task a: do"}]},
                {"type": "reasoning", "summary": []},
                {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{\"command\":[\"ls\"]}"},
                {"type": "custom_tool_call", "call_id": "c2", "name": "apply_patch", "input": "*** Begin Patch"},
                {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
                {"type": "custom_tool_call_output", "call_id": "c2", "output": "Done"}
            ]
        });
        let r = from_responses(&body).unwrap();
        assert_eq!(r.tools.len(), 2, "the hosted tool is left out");
        assert_eq!(r.messages[0], ChatMessage::system("be codex"));
        assert_eq!(r.messages[1], ChatMessage::system("perms"));
        assert_eq!(
            r.messages[3].tool_calls.len(),
            2,
            "one assistant message holds both calls"
        );
        assert_eq!(
            r.messages[3].tool_calls[1].function.arguments,
            r#"{"input":"*** Begin Patch"}"#
        );
        assert_eq!(r.messages[4], ChatMessage::tool_result("c1", "a.txt"));
        let custom = responses_custom_tools(&body);
        let reply = ChatMessage {
            role: Role::Assistant,
            content: Some("ok".into()),
            tool_calls: vec![ToolCall {
                id: "c3".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "apply_patch".into(),
                    arguments: r#"{"input":"P"}"#.into(),
                },
            }],
            tool_call_id: None,
        };
        let ev = to_responses_events(&reply, &Usage::default(), "gpt-x", "resp_1", 1, &custom);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"response.created"));
        assert_eq!(names.last(), Some(&"response.completed"));
        let out = &ev.last().unwrap().1["response"]["output"];
        assert_eq!(out[0]["content"][0]["text"], "ok");
        assert_eq!(out[1]["type"], "custom_tool_call");
        assert_eq!(out[1]["input"], "P");
    }

    #[test]
    fn a_chat_completions_conversation_becomes_chat_messages_and_back() {
        let body = json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "tools": [{"type": "function", "function": {"name": "bash", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "developer", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "Task a: do"}]},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "bash", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "out"}
            ]
        });
        let r = from_openai_chat(&body).unwrap();
        assert!(r.stream && r.include_usage);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(r.messages[1].content.as_deref(), Some("Task a: do"));
        assert_eq!(r.messages[2].content, None);
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("c1"));
        let reply = ChatMessage::assistant("all done");
        let chunks = to_openai_chunks(&reply, &Usage::default(), "m", "chatcmpl-1", 1, true);
        assert_eq!(chunks[1]["choices"][0]["delta"]["content"], "all done");
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        let v = to_openai_chat(&reply, &Usage::default(), "m", "chatcmpl-1", 1);
        assert_eq!(v["choices"][0]["message"]["content"], "all done");
    }
}
