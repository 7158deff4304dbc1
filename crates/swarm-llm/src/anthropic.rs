//! Anthropic Messages over HTTP (non-streaming, with tool use):
//! `POST {base_url}/messages` with `x-api-key` and `anthropic-version`.
//!
//! The conversation ([`swarm_protocol::chat`], OpenAI-shaped) is translated
//! on the way out and the answer on the way back. Anthropic is stricter than
//! OpenAI, so the translation repairs what it would refuse:
//!
//! - `system` messages become the top-level `system` string, joined with a
//!   blank line.
//! - `tool` messages become `tool_result` blocks of a user message;
//!   consecutive messages of one role are merged into one message (tool
//!   results first, as Anthropic wants), so roles strictly alternate,
//!   starting with `user`. If the conversation starts with an assistant
//!   message, or has no message at all, a user message [`PLACEHOLDER`] is
//!   put first.
//! - Anthropic refuses empty and whitespace-only text blocks and messages
//!   without blocks: such text is dropped, and a message left without any
//!   block gets one text block [`PLACEHOLDER`]. A blank tool result is sent
//!   as [`PLACEHOLDER`] too.
//! - Tool call arguments are JSON text in our format and an object
//!   (`input`) in Anthropic's: empty arguments are sent as `{}`, arguments
//!   that are not a JSON object as `{"_raw": "<the text>"}`, so the model
//!   sees what it sent and the request stays valid.
//! - Every `tool_use` must be answered by a `tool_result` in the next
//!   message, and every `tool_result` must answer a `tool_use` of the
//!   message before: a missing answer is added as a `tool_result` saying
//!   [`NO_RESULT`], an unmatched result (e.g. after the router dropped old
//!   turns) is sent as text, and a `tool` message without `tool_call_id` too.
//! - `max_tokens` is required: [`DEFAULT_MAX_TOKENS`] when the request has
//!   none. `temperature` is clamped to Anthropic's range 0–1.
//! - A final assistant message (a prefill) loses its trailing whitespace,
//!   which Anthropic refuses.

use crate::openai::{mentions_context_limit, scrub};
use crate::{
    head, http_client, retry_after, transport_error, Error, ModelRequest, Provider,
    ProviderSettings, Reply, Result,
};
use reqwest::header::HeaderValue;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::Duration;
use swarm_protocol::chat::{ChatMessage, FunctionCall, Role, ToolCall, ToolSpec, Usage};

/// The `anthropic-version` header sent unless the settings' headers set one.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";
/// `max_tokens` when the request does not say.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;
/// The text of a message that would otherwise have no content block.
pub const PLACEHOLDER: &str = "(empty)";
/// The `tool_result` content for a tool call the conversation never answered.
pub const NO_RESULT: &str = "(no result was recorded for this tool call)";

pub struct AnthropicProvider {
    http: reqwest::Client,
    url: String,
    /// `x-api-key`, marked sensitive.
    key: Option<HeaderValue>,
    /// Whether the settings' headers carry their own `anthropic-version`.
    own_version: bool,
    settings: ProviderSettings,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url)
            .field("settings", &self.settings)
            .finish()
    }
}

impl AnthropicProvider {
    pub fn new(settings: ProviderSettings) -> Result<Self> {
        let key = match &settings.api_key {
            None => None,
            Some(key) => {
                let mut v =
                    HeaderValue::from_str(key.expose_secret()).map_err(|_| Error::Setup {
                        provider: settings.name.clone(),
                        message: format!(
                        "the API key contains characters that cannot be sent in an HTTP header \
                         (a line break or a non-ASCII character?). {}",
                        settings.key_hint()
                    ),
                    })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(Self {
            http: http_client(&settings)?,
            url: format!("{}/messages", settings.base_url.trim_end_matches('/')),
            key,
            own_version: settings
                .headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("anthropic-version")),
            settings,
        })
    }
}

#[async_trait::async_trait]
impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.settings.name
    }

    async fn send(&self, request: &ModelRequest) -> Result<Reply> {
        let body = cached_body(&to_wire(request));
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(key) = &self.key {
            req = req.header("x-api-key", key.clone());
        }
        if !self.own_version {
            req = req.header("anthropic-version", ANTHROPIC_VERSION);
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
            return Err(classify(
                &self.settings,
                status,
                &text,
                &request.model,
                retry_after,
            ));
        }
        from_wire(&text).map_err(|message| Error::InvalidResponse {
            provider: self.settings.name.clone(),
            message: scrub(&self.settings, message),
        })
    }
}

// ---- request -------------------------------------------------------------

#[derive(Debug, Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<WireMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum WireRole {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct WireMessage {
    role: WireRole,
    content: Vec<Block>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: String,
    },
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    name: &'a str,
    description: &'a str,
    input_schema: Value,
}

fn to_wire(request: &ModelRequest) -> MessagesRequest<'_> {
    let (system, messages) = translate(&request.messages);
    MessagesRequest {
        model: &request.model,
        max_tokens: request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        system,
        messages,
        tools: request.tools.iter().map(wire_tool).collect(),
        temperature: request.temperature.map(|t| t.clamp(0.0, 1.0)),
    }
}

/// Prompt-caching breakpoints Anthropic allows in one request.
pub const MAX_CACHE_BREAKPOINTS: usize = 4;

/// The request as sent, with prompt caching: `cache_control` (ephemeral)
/// on the last tool, on the system prompt, on the first user message (the
/// task: with the tools and the system prompt, the prefix that never
/// changes) and on the last message (so that each turn reads the
/// conversation before it from the cache). The system prompt is sent as a
/// text block to carry its mark.
fn cached_body(wire: &MessagesRequest<'_>) -> Value {
    let mut v = match serde_json::to_value(wire) {
        Ok(v) => v,
        Err(_) => return Value::Null,
    };
    let mark = || serde_json::json!({"type": "ephemeral"});
    if let Some(tool) = v
        .get_mut("tools")
        .and_then(Value::as_array_mut)
        .and_then(|t| t.last_mut())
        .and_then(Value::as_object_mut)
    {
        tool.insert("cache_control".into(), mark());
    }
    if let Some(Value::String(text)) = v.get("system").cloned() {
        v["system"] = serde_json::json!([{"type": "text", "text": text, "cache_control": mark()}]);
    }
    if let Some(messages) = v.get_mut("messages").and_then(Value::as_array_mut) {
        let last = messages.len().saturating_sub(1);
        for i in [0, last] {
            if let Some(block) = messages
                .get_mut(i)
                .and_then(|m| m.get_mut("content"))
                .and_then(Value::as_array_mut)
                .and_then(|c| c.last_mut())
                .and_then(Value::as_object_mut)
            {
                block.insert("cache_control".into(), mark());
            }
        }
    }
    v
}

fn wire_tool(t: &ToolSpec) -> WireTool<'_> {
    let input_schema = match &t.function.parameters {
        // Anthropic requires an object schema.
        Value::Null => serde_json::json!({"type": "object", "properties": {}}),
        p => p.clone(),
    };
    WireTool {
        name: &t.function.name,
        description: &t.function.description,
        input_schema,
    }
}

/// Non-blank text as a block.
fn text_block(text: Option<&str>) -> Option<Block> {
    text.filter(|t| !t.trim().is_empty())
        .map(|t| Block::Text { text: t.to_owned() })
}

/// A tool call's arguments as the object Anthropic wants (see the module
/// documentation).
fn tool_input(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(Map::new());
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            let mut raw = Map::new();
            raw.insert("_raw".into(), Value::String(arguments.to_owned()));
            Value::Object(raw)
        }
    }
}

/// The system prompt and the alternating message list.
fn translate(messages: &[ChatMessage]) -> (Option<String>, Vec<WireMessage>) {
    let system: Vec<&str> = messages
        .iter()
        .filter(|m| m.role == Role::System)
        .filter_map(|m| m.content.as_deref())
        .filter(|t| !t.trim().is_empty())
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));

    let mut out: Vec<WireMessage> = Vec::new();
    for m in messages {
        let (role, blocks) = match m.role {
            Role::System => continue,
            Role::User => (
                WireRole::User,
                text_block(m.content.as_deref()).into_iter().collect(),
            ),
            Role::Assistant => {
                let mut blocks: Vec<Block> = text_block(m.content.as_deref()).into_iter().collect();
                blocks.extend(m.tool_calls.iter().map(|c| Block::ToolUse {
                    id: c.id.clone(),
                    name: c.function.name.clone(),
                    input: tool_input(&c.function.arguments),
                }));
                (WireRole::Assistant, blocks)
            }
            Role::Tool => {
                // Blank results are sent as the placeholder, like blank text.
                let content = m
                    .content
                    .clone()
                    .filter(|c| !c.trim().is_empty())
                    .unwrap_or_else(|| PLACEHOLDER.to_owned());
                let block = match &m.tool_call_id {
                    Some(id) => Block::ToolResult {
                        tool_use_id: id.clone(),
                        content,
                    },
                    None => unmatched_result("(unknown)", &content),
                };
                (WireRole::User, vec![block])
            }
        };
        match out.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => out.push(WireMessage {
                role,
                content: blocks,
            }),
        }
    }

    pair_tool_calls(&mut out);

    if out.first().is_none_or(|m| m.role != WireRole::User) {
        out.insert(
            0,
            WireMessage {
                role: WireRole::User,
                content: Vec::new(),
            },
        );
    }
    for m in &mut out {
        if m.role == WireRole::User {
            // Tool results first, then text (stable).
            m.content
                .sort_by_key(|b| !matches!(b, Block::ToolResult { .. }));
        }
        if m.content.is_empty() {
            m.content.push(Block::Text {
                text: PLACEHOLDER.to_owned(),
            });
        }
    }
    if let Some(last) = out.last_mut().filter(|m| m.role == WireRole::Assistant) {
        if let Some(Block::Text { text }) = last.content.last_mut() {
            let trimmed = text.trim_end().len();
            text.truncate(trimmed);
        }
    }
    (system, out)
}

/// A tool result without its call, as text.
fn unmatched_result(id: &str, content: &str) -> Block {
    Block::Text {
        text: format!("[result of tool call {id}]\n{content}"),
    }
}

/// Makes every `tool_use` answered by the next (user) message and every
/// `tool_result` answer a `tool_use` of the message before. `out`
/// alternates roles.
fn pair_tool_calls(out: &mut Vec<WireMessage>) {
    let mut i = 0;
    while i < out.len() {
        match out[i].role {
            WireRole::Assistant => {
                let calls: Vec<String> = out[i]
                    .content
                    .iter()
                    .filter_map(|b| match b {
                        Block::ToolUse { id, .. } => Some(id.clone()),
                        _ => None,
                    })
                    .collect();
                if !calls.is_empty() && out.get(i + 1).is_none_or(|m| m.role != WireRole::User) {
                    out.insert(
                        i + 1,
                        WireMessage {
                            role: WireRole::User,
                            content: Vec::new(),
                        },
                    );
                }
                if let Some(next) = out.get_mut(i + 1) {
                    let answered: HashSet<String> = next
                        .content
                        .iter()
                        .filter_map(|b| match b {
                            Block::ToolResult { tool_use_id, .. } => Some(tool_use_id.clone()),
                            _ => None,
                        })
                        .collect();
                    for id in calls.into_iter().filter(|id| !answered.contains(id)) {
                        next.content.push(Block::ToolResult {
                            tool_use_id: id,
                            content: NO_RESULT.to_owned(),
                        });
                    }
                }
            }
            WireRole::User => {
                let called: HashSet<String> = match i.checked_sub(1).and_then(|p| out.get(p)) {
                    Some(prev) => prev
                        .content
                        .iter()
                        .filter_map(|b| match b {
                            Block::ToolUse { id, .. } => Some(id.clone()),
                            _ => None,
                        })
                        .collect(),
                    None => HashSet::new(),
                };
                let mut seen = HashSet::new();
                for b in &mut out[i].content {
                    if let Block::ToolResult {
                        tool_use_id,
                        content,
                    } = b
                    {
                        // Unmatched, or a second answer to the same call.
                        if !called.contains(tool_use_id.as_str())
                            || !seen.insert(tool_use_id.clone())
                        {
                            *b = unmatched_result(tool_use_id, content);
                        }
                    }
                }
            }
        }
        i += 1;
    }
}

// ---- response ------------------------------------------------------------

#[derive(Debug, Deserialize)]
struct MessagesResponse {
    content: Vec<ResponseBlock>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ResponseBlock {
    Text {
        text: String,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    /// `thinking`, `redacted_thinking`, server tool blocks, …
    #[serde(other)]
    Other,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
}

/// A 2xx body as our reply; the error is a message for
/// [`Error::InvalidResponse`].
fn from_wire(body: &str) -> std::result::Result<Reply, String> {
    let parsed: MessagesResponse = serde_json::from_str(body)
        .map_err(|e| format!("{e} in body starting {:?}", head(body, 200)))?;
    let mut text = String::new();
    let mut has_text = false;
    let mut tool_calls = Vec::new();
    for block in parsed.content {
        match block {
            ResponseBlock::Text { text: t } => {
                text.push_str(&t);
                has_text = true;
            }
            ResponseBlock::ToolUse { id, name, input } => {
                let input = match input {
                    Value::Null => Value::Object(Map::new()),
                    v => v,
                };
                tool_calls.push(ToolCall {
                    id,
                    kind: "function".to_owned(),
                    function: FunctionCall {
                        name,
                        arguments: input.to_string(),
                    },
                });
            }
            ResponseBlock::Other => {}
        }
    }
    let u = parsed.usage.unwrap_or_default();
    let prompt_tokens = u.input_tokens
        + u.cache_creation_input_tokens.unwrap_or(0)
        + u.cache_read_input_tokens.unwrap_or(0);
    Ok(Reply {
        message: ChatMessage {
            role: Role::Assistant,
            content: has_text.then_some(text),
            tool_calls,
            tool_call_id: None,
        },
        usage: Usage {
            prompt_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: prompt_tokens + u.output_tokens,
            cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
            cache_read_tokens: u.cache_read_input_tokens.unwrap_or(0),
        },
    })
}

// ---- errors --------------------------------------------------------------

/// A non-2xx answer (`{"type":"error","error":{"type","message"}}`) as one
/// of ours.
fn classify(
    settings: &ProviderSettings,
    status: u16,
    body: &str,
    model: &str,
    retry_after: Option<Duration>,
) -> Error {
    let provider = settings.name.clone();
    let v: Option<Value> = serde_json::from_str(body).ok();
    let field = |p: &str| {
        v.as_ref()
            .and_then(|v| v.pointer(p))
            .and_then(Value::as_str)
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    let kind = field("/error/type").unwrap_or_default();
    let message = field("/error/message")
        .or_else(|| field("/error"))
        .unwrap_or_else(|| match body.trim() {
            "" => "(empty body)".to_owned(),
            b => head(b, 300).to_owned(),
        });
    let message = scrub(settings, message);
    match status {
        401 | 403 => Error::Auth {
            provider,
            status,
            message,
            hint: settings.key_hint(),
        },
        _ if status == 404 || kind == "not_found_error" => Error::ModelNotFound {
            provider,
            model: model.to_owned(),
            status,
            message,
        },
        413 => Error::ContextLength { provider, message },
        400 if kind == "request_too_large" || mentions_context_limit(&message.to_lowercase()) => {
            Error::ContextLength { provider, message }
        }
        _ => Error::Http {
            provider,
            status,
            message: if kind.is_empty() {
                message
            } else {
                format!("{kind}: {message}")
            },
            retry_after,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::test_server::serve;
    use crate::ProviderKind;
    use secrecy::SecretString;
    use serde_json::json;

    const FAKE_KEY: &str = "sk-ant-test-not-real";

    fn settings(base_url: &str) -> ProviderSettings {
        ProviderSettings {
            name: "anthropic".into(),
            kind: ProviderKind::Anthropic,
            base_url: base_url.into(),
            api_key: Some(SecretString::from(FAKE_KEY)),
            api_key_env: Some("ANTHROPIC_API_KEY".into()),
            headers: vec![("anthropic-beta".into(), "test-beta".into())],
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn call(id: &str, name: &str, args: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: name.into(),
                arguments: args.into(),
            },
        }
    }

    fn assistant_calls(text: Option<&str>, calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            role: Role::Assistant,
            content: text.map(str::to_owned),
            tool_calls: calls,
            tool_call_id: None,
        }
    }

    fn request(messages: Vec<ChatMessage>) -> ModelRequest {
        ModelRequest {
            model: "claude-test".into(),
            messages,
            tools: vec![ToolSpec::function(
                "read_file",
                "Read a file",
                json!({"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}),
            )],
            max_tokens: None,
            temperature: Some(0.3),
        }
    }

    fn wire(messages: Vec<ChatMessage>) -> Value {
        serde_json::to_value(to_wire(&request(messages))).unwrap()
    }

    /// Roles alternate starting with user; no message and no text block is
    /// empty; every tool_use is answered in the next message and every
    /// tool_result answers the message before; results come first.
    fn assert_valid(v: &Value) {
        let msgs = v["messages"].as_array().unwrap();
        assert!(!msgs.is_empty());
        for (i, m) in msgs.iter().enumerate() {
            let want = if i % 2 == 0 { "user" } else { "assistant" };
            assert_eq!(m["role"], want, "message {i} in {v:#}");
            let blocks = m["content"].as_array().unwrap();
            assert!(!blocks.is_empty(), "message {i} has no block: {v:#}");
            let mut results_done = false;
            for b in blocks {
                match b["type"].as_str().unwrap() {
                    "text" => {
                        assert!(!b["text"].as_str().unwrap().trim().is_empty(), "{v:#}");
                        results_done = true;
                    }
                    "tool_result" => {
                        assert!(!results_done, "text before a tool_result: {v:#}");
                        assert!(!b["content"].as_str().unwrap().trim().is_empty(), "{v:#}");
                        let id = &b["tool_use_id"];
                        let prev = &msgs[i - 1]["content"];
                        assert!(
                            prev.as_array()
                                .unwrap()
                                .iter()
                                .any(|p| p["type"] == "tool_use" && &p["id"] == id),
                            "unmatched result {id}: {v:#}"
                        );
                    }
                    "tool_use" => {
                        assert!(b["input"].is_object());
                        let next = msgs.get(i + 1).expect("tool_use in the last message");
                        assert!(
                            next["content"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|n| n["type"] == "tool_result" && n["tool_use_id"] == b["id"]),
                            "unanswered call {}: {v:#}",
                            b["id"]
                        );
                    }
                    other => panic!("unexpected block type {other}"),
                }
            }
        }
    }

    #[test]
    fn hoists_system_messages_and_sets_defaults() {
        let v = wire(vec![
            ChatMessage::system("You are a worker."),
            ChatMessage::user("hi"),
            ChatMessage::system("Be brief."),
        ]);
        assert_eq!(v["system"], "You are a worker.\n\nBe brief.");
        assert_eq!(v["model"], "claude-test");
        assert_eq!(v["max_tokens"], DEFAULT_MAX_TOKENS);
        assert!((v["temperature"].as_f64().unwrap() - 0.3).abs() < 1e-6);
        assert_eq!(
            v["messages"],
            json!([{"role":"user","content":[{"type":"text","text":"hi"}]}])
        );
        assert_eq!(
            v["tools"],
            json!([{"name":"read_file","description":"Read a file",
                    "input_schema":{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}}])
        );
        assert_valid(&v);

        let mut r = request(vec![ChatMessage::user("hi")]);
        r.max_tokens = Some(123);
        r.temperature = Some(1.7);
        r.tools.clear();
        let v = serde_json::to_value(to_wire(&r)).unwrap();
        assert_eq!(v["max_tokens"], 123);
        assert_eq!(v["temperature"], 1.0);
        assert!(v.get("system").is_none());
        assert!(v.get("tools").is_none());
    }

    #[test]
    fn tool_use_and_tool_result_round_trip() {
        let v = wire(vec![
            ChatMessage::system("sys"),
            ChatMessage::user("read a"),
            assistant_calls(
                Some("Reading."),
                vec![call("toolu_1", "read_file", r#"{"path":"a"}"#)],
            ),
            ChatMessage::tool_result("toolu_1", "contents of a"),
        ]);
        assert_eq!(
            v["messages"],
            json!([
                {"role":"user","content":[{"type":"text","text":"read a"}]},
                {"role":"assistant","content":[
                    {"type":"text","text":"Reading."},
                    {"type":"tool_use","id":"toolu_1","name":"read_file","input":{"path":"a"}}]},
                {"role":"user","content":[
                    {"type":"tool_result","tool_use_id":"toolu_1","content":"contents of a"}]}
            ])
        );
        assert_valid(&v);

        // And the answer back: a tool_use block becomes a ToolCall whose
        // arguments parse to the same input.
        let reply = from_wire(
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
                "content":[{"type":"tool_use","id":"toolu_2","name":"read_file","input":{"path":"b"}}],
                "stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":5}}"#,
        )
        .unwrap();
        let c = &reply.message.tool_calls[0];
        assert_eq!(
            (c.id.as_str(), c.kind.as_str(), c.function.name.as_str()),
            ("toolu_2", "function", "read_file")
        );
        let again = wire(vec![
            ChatMessage::user("x"),
            reply.message.clone(),
            ChatMessage::tool_result("toolu_2", "b!"),
        ]);
        assert_eq!(
            again["messages"][1]["content"][0]["input"],
            json!({"path":"b"})
        );
        assert_valid(&again);
    }

    #[test]
    fn merges_consecutive_tool_results_and_a_following_user_message() {
        let v = wire(vec![
            ChatMessage::user("do two things"),
            assistant_calls(
                None,
                vec![call("t1", "read_file", "{}"), call("t2", "read_file", "")],
            ),
            ChatMessage::tool_result("t1", "one"),
            ChatMessage::tool_result("t2", "two"),
            ChatMessage::user("Budget: 3 turns left."),
            ChatMessage::user("Also this."),
        ]);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type":"tool_result","tool_use_id":"t1","content":"one"},
                {"type":"tool_result","tool_use_id":"t2","content":"two"},
                {"type":"text","text":"Budget: 3 turns left."},
                {"type":"text","text":"Also this."}
            ])
        );
        // Empty arguments are sent as {}.
        assert_eq!(msgs[1]["content"][1]["input"], json!({}));
        assert_valid(&v);
    }

    #[test]
    fn tool_results_go_before_text_in_a_merged_message() {
        let v = wire(vec![
            ChatMessage::user("go"),
            assistant_calls(None, vec![call("t1", "read_file", "{}")]),
            ChatMessage::user("note first"),
            ChatMessage::tool_result("t1", "one"),
        ]);
        assert_eq!(v["messages"][2]["content"][0]["type"], "tool_result");
        assert_eq!(v["messages"][2]["content"][1]["text"], "note first");
        assert_valid(&v);
    }

    #[test]
    fn arguments_that_are_not_an_object_are_wrapped() {
        assert_eq!(tool_input(r#"{"a":1}"#), json!({"a":1}));
        assert_eq!(tool_input("  "), json!({}));
        assert_eq!(tool_input("[1,2]"), json!({"_raw":"[1,2]"}));
        assert_eq!(tool_input("{broken"), json!({"_raw":"{broken"}));
    }

    #[test]
    fn empty_messages_stay_valid() {
        let v = wire(vec![
            ChatMessage::user(""),
            assistant_calls(None, vec![]),
            ChatMessage::user("   "),
            assistant_calls(Some("done  \n"), vec![]),
        ]);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 4);
        assert_eq!(
            msgs[0]["content"],
            json!([{"type":"text","text":PLACEHOLDER}])
        );
        assert_eq!(
            msgs[1]["content"],
            json!([{"type":"text","text":PLACEHOLDER}])
        );
        // A final assistant message loses trailing whitespace.
        assert_eq!(msgs[3]["content"][0]["text"], "done");
        assert_valid(&v);

        // Only a system prompt, or an assistant message first.
        let v = wire(vec![ChatMessage::system("sys")]);
        assert_eq!(
            v["messages"],
            json!([{"role":"user","content":[{"type":"text","text":PLACEHOLDER}]}])
        );
        let v = wire(vec![
            ChatMessage::assistant("I start."),
            ChatMessage::user("ok"),
        ]);
        assert_eq!(v["messages"][0]["role"], "user");
        assert_valid(&v);
    }

    #[test]
    fn repairs_unpaired_tool_calls_and_results() {
        let v = wire(vec![
            // A result whose call was dropped from the conversation.
            ChatMessage::tool_result("gone", "old output"),
            ChatMessage::user("continue"),
            // A call never answered, then one answered twice.
            assistant_calls(
                None,
                vec![call("a", "read_file", "{}"), call("b", "read_file", "{}")],
            ),
            ChatMessage::tool_result("b", "B"),
            ChatMessage::tool_result("b", "B again"),
            // A tool message without an id.
            ChatMessage {
                role: Role::Tool,
                content: Some("anonymous".into()),
                tool_calls: vec![],
                tool_call_id: None,
            },
            // A call as the very last message.
            assistant_calls(None, vec![call("c", "read_file", "{}")]),
        ]);
        let msgs = v["messages"].as_array().unwrap();
        assert_eq!(
            msgs[0]["content"],
            json!([{"type":"text","text":"[result of tool call gone]\nold output"},
                   {"type":"text","text":"continue"}])
        );
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type":"tool_result","tool_use_id":"b","content":"B"},
                {"type":"tool_result","tool_use_id":"a","content":NO_RESULT},
                {"type":"text","text":"[result of tool call b]\nB again"},
                {"type":"text","text":"[result of tool call (unknown)]\nanonymous"}
            ])
        );
        assert_eq!(
            msgs[4],
            json!({"role":"user","content":[{"type":"tool_result","tool_use_id":"c","content":NO_RESULT}]})
        );
        assert_valid(&v);
    }

    #[test]
    fn alternation_always_holds() {
        // Every sequence of up to 5 messages over a small alphabet.
        let alphabet = [
            ChatMessage::system("s"),
            ChatMessage::user("u"),
            ChatMessage::user(""),
            ChatMessage::assistant("a"),
            assistant_calls(None, vec![]),
            assistant_calls(None, vec![call("t1", "read_file", "{}")]),
            assistant_calls(Some("x"), vec![call("t2", "read_file", "nope")]),
            ChatMessage::tool_result("t1", "r1"),
            ChatMessage::tool_result("t2", ""),
        ];
        let n = alphabet.len();
        for len in 0..=5u32 {
            for mut code in 0..n.pow(len) {
                let mut msgs = Vec::new();
                for _ in 0..len {
                    msgs.push(alphabet[code % n].clone());
                    code /= n;
                }
                assert_valid(&wire(msgs));
            }
        }
    }

    #[test]
    fn parses_text_tool_use_and_usage() {
        let reply = from_wire(
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
                "content":[
                  {"type":"thinking","thinking":"hmm","signature":"sig"},
                  {"type":"text","text":"Let me look. "},
                  {"type":"tool_use","id":"toolu_1","name":"read_file","input":{"path":"src/lib.rs"}},
                  {"type":"text","text":"And this."},
                  {"type":"tool_use","id":"toolu_2","name":"list","input":{}}
                ],
                "stop_reason":"tool_use",
                "usage":{"input_tokens":100,"output_tokens":20,
                         "cache_creation_input_tokens":30,"cache_read_input_tokens":50}}"#,
        )
        .unwrap();
        let m = &reply.message;
        assert_eq!(m.role, Role::Assistant);
        assert_eq!(m.content.as_deref(), Some("Let me look. And this."));
        assert_eq!(m.tool_calls.len(), 2);
        assert_eq!(
            m.tool_calls[0].function.arguments,
            r#"{"path":"src/lib.rs"}"#
        );
        assert_eq!(m.tool_calls[1].function.arguments, "{}");
        assert_eq!(
            reply.usage,
            Usage {
                prompt_tokens: 180,
                completion_tokens: 20,
                total_tokens: 200,
                cache_write_tokens: 30,
                cache_read_tokens: 50,
            }
        );

        let reply = from_wire(
            r#"{"content":[{"type":"tool_use","id":"t","name":"n","input":{}}],"usage":{"input_tokens":1,"output_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(reply.message.content, None);
        assert_eq!(reply.usage.total_tokens, 3);

        assert!(from_wire("<html>").is_err());
        assert!(from_wire(r#"{"type":"message"}"#).is_err());
    }

    fn classify_(status: u16, body: &str) -> Error {
        classify(
            &settings("http://x/v1"),
            status,
            body,
            "claude-test",
            Some(Duration::from_secs(2)),
        )
    }

    fn body(kind: &str, message: &str) -> String {
        json!({"type":"error","error":{"type":kind,"message":message}}).to_string()
    }

    #[test]
    fn classifies_errors() {
        let e = classify_(401, &body("authentication_error", "invalid x-api-key"));
        assert!(
            matches!(e, Error::Auth { status: 401, ref hint, .. } if hint.contains("ANTHROPIC_API_KEY")),
            "{e:?}"
        );
        let e = classify_(403, &body("permission_error", "no access"));
        assert!(matches!(e, Error::Auth { status: 403, .. }), "{e:?}");

        let e = classify_(404, &body("not_found_error", "model: claude-nope"));
        assert!(
            matches!(e, Error::ModelNotFound { status: 404, ref model, .. } if model == "claude-test"),
            "{e:?}"
        );
        let e = classify_(400, &body("not_found_error", "model: claude-nope"));
        assert!(
            matches!(e, Error::ModelNotFound { status: 400, .. }),
            "{e:?}"
        );

        for msg in [
            "prompt is too long: 210000 tokens > 200000 maximum",
            "input length and `max_tokens` exceed context limit: 199000 + 4096 > 200000",
        ] {
            let e = classify_(400, &body("invalid_request_error", msg));
            assert!(matches!(e, Error::ContextLength { .. }), "{msg}: {e:?}");
        }
        let e = classify_(
            413,
            &body("request_too_large", "Request exceeds the maximum size"),
        );
        assert!(matches!(e, Error::ContextLength { .. }), "{e:?}");

        let e = classify_(
            400,
            &body("invalid_request_error", "messages: roles must alternate"),
        );
        assert!(
            matches!(e, Error::Http { status: 400, .. }) && !e.is_retryable(),
            "{e:?}"
        );

        for (status, kind) in [
            (429, "rate_limit_error"),
            (500, "api_error"),
            (529, "overloaded_error"),
            (503, "api_error"),
        ] {
            let e = classify_(status, &body(kind, "try later"));
            match &e {
                Error::Http {
                    status: s,
                    retry_after,
                    message,
                    ..
                } => {
                    assert_eq!(*s, status);
                    assert_eq!(*retry_after, Some(Duration::from_secs(2)));
                    assert_eq!(message, &format!("{kind}: try later"));
                }
                other => panic!("{status}: {other:?}"),
            }
            assert!(e.is_retryable());
        }
        let e = classify_(502, "<html>Bad Gateway</html>");
        assert!(
            matches!(e, Error::Http { status: 502, ref message, .. } if message == "<html>Bad Gateway</html>"),
            "{e:?}"
        );
        let e = classify_(500, "");
        assert!(
            matches!(e, Error::Http { ref message, .. } if message == "(empty body)"),
            "{e:?}"
        );
    }

    #[test]
    fn an_echoed_key_is_scrubbed() {
        let e = classify_(
            401,
            &body("authentication_error", &format!("bad key {FAKE_KEY}")),
        );
        assert!(!e.to_string().contains(FAKE_KEY), "{e}");
    }

    #[test]
    fn a_key_that_cannot_be_a_header_is_a_setup_error_without_the_key() {
        let mut s = settings("http://x/v1");
        s.api_key = Some(SecretString::from("sk-ant-bad\nkey"));
        let e = AnthropicProvider::new(s).unwrap_err();
        assert!(matches!(e, Error::Setup { .. }), "{e:?}");
        assert!(!e.to_string().contains("sk-ant-bad"), "{e}");
        assert!(e.to_string().contains("ANTHROPIC_API_KEY"), "{e}");
    }

    #[tokio::test]
    async fn sends_the_right_headers_and_body() {
        let server = serve(
            "/messages",
            200,
            &[],
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
                "content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":12,"output_tokens":3}}"#,
        )
        .await;
        let p = AnthropicProvider::new(settings(&format!("{}/", server.base_url))).unwrap();
        assert_eq!(p.name(), "anthropic");
        let reply = p
            .send(&request(vec![
                ChatMessage::system("sys"),
                ChatMessage::user("hi"),
            ]))
            .await
            .unwrap();
        assert_eq!(reply.message.content.as_deref(), Some("hello"));
        assert_eq!(reply.usage.total_tokens, 15);

        let seen = server.seen();
        assert_eq!(seen.len(), 1);
        let h = &seen[0].headers;
        assert_eq!(h["x-api-key"], FAKE_KEY);
        assert_eq!(h["anthropic-version"], ANTHROPIC_VERSION);
        assert_eq!(h["anthropic-beta"], "test-beta");
        assert!(h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        assert!(h.get("authorization").is_none());
        let sent = &seen[0].body;
        assert_eq!(sent["system"][0]["text"], "sys");
        assert_eq!(sent["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(sent["messages"][0]["content"][0]["text"], "hi");

        let debug = format!("{p:?}");
        assert!(!debug.contains(FAKE_KEY), "{debug}");
        assert!(!debug.contains("sk-ant"), "{debug}");
    }

    #[tokio::test]
    async fn the_stable_prefix_and_the_last_turn_are_cached_and_priced() {
        let server = serve(
            "/messages",
            200,
            &[],
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-test",
                "content":[{"type":"text","text":"ok"}],"stop_reason":"end_turn",
                "usage":{"input_tokens":100,"output_tokens":10,
                         "cache_creation_input_tokens":2000,"cache_read_input_tokens":30000}}"#,
        )
        .await;
        let p = AnthropicProvider::new(settings(&format!("{}/", server.base_url))).unwrap();
        let mut r = request(vec![
            ChatMessage::system("sys"),
            ChatMessage::user("Task t1: the task"),
            ChatMessage::assistant("working"),
            ChatMessage::user("go on"),
        ]);
        r.tools = vec![
            ToolSpec::function("a", "A", serde_json::json!({"type": "object"})),
            ToolSpec::function("b", "B", serde_json::json!({"type": "object"})),
        ];
        let reply = p.send(&r).await.unwrap();
        assert_eq!(reply.usage.prompt_tokens, 32_100);
        assert_eq!(reply.usage.cache_write_tokens, 2000);
        assert_eq!(reply.usage.cache_read_tokens, 30_000);
        let sent = &server.seen()[0].body;
        let mark = serde_json::json!({"type": "ephemeral"});
        assert_eq!(sent["tools"][1]["cache_control"], mark);
        assert!(sent["tools"][0].get("cache_control").is_none());
        assert_eq!(sent["system"][0]["cache_control"], mark);
        assert_eq!(sent["messages"][0]["content"][0]["cache_control"], mark);
        assert!(sent["messages"][1]["content"][0]
            .get("cache_control")
            .is_none());
        assert_eq!(sent["messages"][2]["content"][0]["cache_control"], mark);
        // As strict as the scripted server: at most four breakpoints, each
        // in the documented shape.
        swarm_testkit::validate::anthropic_request(Some(ANTHROPIC_VERSION), sent).unwrap();
    }

    #[tokio::test]
    async fn errors_over_http_carry_retry_after_and_never_the_key() {
        let server = serve(
            "/messages",
            529,
            &[("retry-after", "4")],
            &body("overloaded_error", "Overloaded"),
        )
        .await;
        let p = AnthropicProvider::new(settings(&server.base_url)).unwrap();
        let e = p
            .send(&request(vec![ChatMessage::user("hi")]))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Http { status: 529, retry_after: Some(ra), .. } if ra == Duration::from_secs(4)),
            "{e:?}"
        );
        assert!(!e.to_string().contains(FAKE_KEY));
        assert!(!format!("{e:?}").contains(FAKE_KEY));

        let server = serve(
            "/messages",
            401,
            &[],
            &body("authentication_error", "invalid x-api-key"),
        )
        .await;
        let p = AnthropicProvider::new(settings(&server.base_url)).unwrap();
        let e = p
            .send(&request(vec![ChatMessage::user("hi")]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Auth { .. }), "{e:?}");
        assert!(!e.to_string().contains(FAKE_KEY), "{e}");

        let server = serve("/messages", 200, &[], "not json").await;
        let p = AnthropicProvider::new(settings(&server.base_url)).unwrap();
        let e = p
            .send(&request(vec![ChatMessage::user("hi")]))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::InvalidResponse { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn no_key_and_own_version_header() {
        let server = serve(
            "/messages",
            200,
            &[],
            r#"{"content":[{"type":"text","text":"ok"}],"usage":{"input_tokens":1,"output_tokens":1}}"#,
        )
        .await;
        let mut s = settings(&server.base_url);
        s.api_key = None;
        s.headers = vec![("Anthropic-Version".into(), "2099-01-01".into())];
        AnthropicProvider::new(s)
            .unwrap()
            .send(&request(vec![ChatMessage::user("hi")]))
            .await
            .unwrap();
        let h = &server.seen()[0].headers;
        assert!(h.get("x-api-key").is_none());
        assert_eq!(h.get_all("anthropic-version").iter().count(), 1);
        assert_eq!(h["anthropic-version"], "2099-01-01");
    }
}
