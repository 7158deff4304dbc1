//! Checks a request the way a strict provider would.
//!
//! [`request`] checks a Chat Completions request: the fields the API
//! requires, well-formed messages, a `tool` message answering every tool call
//! by id (and none answering a call that was not made), and only declared
//! tools called. [`anthropic_request`] checks an Anthropic Messages request
//! the way api.anthropic.com does: the `anthropic-version` header, the
//! required fields, alternating `user`/`assistant` messages, and every
//! `tool_use` block answered by a `tool_result` block in the very next user
//! message.

use serde_json::Value;
use std::collections::HashSet;

/// OpenAI's reasoning models (`o1`, `o3`, `o4`, `gpt-5` families), which
/// take `max_completion_tokens` and no `temperature`.
fn is_reasoning_model(model: &str) -> bool {
    let m = model
        .rsplit('/')
        .next()
        .unwrap_or(model)
        .to_ascii_lowercase();
    ["o1", "o3", "o4"]
        .iter()
        .any(|p| m == *p || m.starts_with(&format!("{p}-")))
        || m.starts_with("gpt-5")
}

pub fn request(body: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec!["the body is not a JSON object".into()]);
    };
    match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => problems.push("`model` must be a non-empty string".into()),
    }
    match obj.get("stream") {
        None | Some(Value::Bool(_)) => {}
        Some(v) => problems.push(format!("`stream` must be a boolean, not {v}")),
    }
    if obj.contains_key("stream_options") && obj.get("stream") != Some(&Value::Bool(true)) {
        problems.push(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.".into(),
        );
    }
    // OpenAI's reasoning models, in OpenAI's words.
    let model = obj.get("model").and_then(Value::as_str).unwrap_or("");
    if is_reasoning_model(model) {
        if obj.contains_key("max_tokens") {
            problems.push("Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.".into());
        }
        if let Some(t) = obj.get("temperature").filter(|t| t.as_f64() != Some(1.0)) {
            problems.push(format!("Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."));
        }
    }
    if let Some(messages) = obj.get("messages").and_then(Value::as_array) {
        for (i, m) in messages.iter().enumerate() {
            for field in ["reasoning_content", "reasoning"] {
                if m.get(field).is_some() {
                    problems.push(format!("messages[{i}].{field}: a reasoning field of an earlier answer must not be sent back (DeepSeek refuses it with 400)"));
                }
            }
        }
    }
    let mut declared: Option<HashSet<String>> = None;
    if let Some(tools) = obj.get("tools") {
        let mut names = HashSet::new();
        match tools.as_array() {
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    if t.get("type").and_then(Value::as_str) != Some("function") {
                        problems.push(format!("tools[{i}].type must be \"function\""));
                    }
                    match t.pointer("/function/name").and_then(Value::as_str) {
                        Some(n) if !n.is_empty() => {
                            if !names.insert(n.to_owned()) {
                                problems.push(format!("tool {n} is declared twice"));
                            }
                        }
                        _ => problems.push(format!("tools[{i}].function.name is missing")),
                    }
                    if let Some(p) = t.pointer("/function/parameters") {
                        if !p.is_object() {
                            problems.push(format!(
                                "tools[{i}].function.parameters must be a JSON Schema object"
                            ));
                        }
                    }
                }
            }
            None => problems.push("`tools` must be an array".into()),
        }
        declared = Some(names);
    }
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        problems.push("`messages` must be an array".into());
        return Err(problems);
    };
    if messages.is_empty() {
        problems.push("`messages` must not be empty".into());
    }
    // Tool call ids waiting for their `tool` message.
    let mut pending: Vec<String> = Vec::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = m.get("content");
        if role != "tool" && !pending.is_empty() {
            problems.push(format!(
                "messages[{i}] ({role}) comes before the tool results of call(s) {}",
                pending.join(", ")
            ));
            pending.clear();
        }
        match role {
            "system" | "user" => {
                if !content.is_some_and(Value::is_string) {
                    problems.push(format!("messages[{i}] ({role}) needs string content"));
                }
            }
            "assistant" => {
                let calls = m.get("tool_calls").and_then(Value::as_array);
                let has_calls = calls.is_some_and(|c| !c.is_empty());
                match content {
                    Some(Value::String(_)) => {}
                    None | Some(Value::Null) if has_calls => {}
                    _ => problems.push(format!(
                        "messages[{i}] (assistant) needs string content or tool calls"
                    )),
                }
                for (j, c) in calls.into_iter().flatten().enumerate() {
                    let id = c.get("id").and_then(Value::as_str).unwrap_or("");
                    if id.is_empty() {
                        problems.push(format!("messages[{i}].tool_calls[{j}] has no id"));
                    } else if !seen_ids.insert(id.to_owned()) {
                        problems.push(format!("tool call id {id} is used twice"));
                    } else {
                        pending.push(id.to_owned());
                    }
                    if c.get("type").and_then(Value::as_str) != Some("function") {
                        problems.push(format!(
                            "messages[{i}].tool_calls[{j}].type must be \"function\""
                        ));
                    }
                    let name = c
                        .pointer("/function/name")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    if let Some(d) = &declared {
                        if !d.contains(name) {
                            problems.push(format!("messages[{i}] calls tool {name:?}, which the request does not declare"));
                        }
                    }
                    if !c
                        .pointer("/function/arguments")
                        .is_some_and(Value::is_string)
                    {
                        problems.push(format!(
                            "messages[{i}].tool_calls[{j}].function.arguments must be a string"
                        ));
                    }
                }
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).unwrap_or("");
                match pending.iter().position(|p| p == id) {
                    Some(k) => {
                        pending.remove(k);
                    }
                    None => problems.push(format!(
                        "messages[{i}] answers tool call {id:?}, which is not awaiting a result"
                    )),
                }
                if !content.is_some_and(Value::is_string) {
                    problems.push(format!("messages[{i}] (tool) needs string content"));
                }
            }
            other => problems.push(format!("messages[{i}] has an unknown role {other:?}")),
        }
    }
    if !pending.is_empty() {
        problems.push(format!(
            "tool call(s) {} have no tool message answering them",
            pending.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The top-level fields of a Messages request; anything else is refused
/// ("Extra inputs are not permitted"), which catches Chat Completions fields
/// (`n`, `response_format`, `max_completion_tokens`) sent to the wrong API.
const ANTHROPIC_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "metadata",
    "stop_sequences",
    "stream",
    "temperature",
    "top_k",
    "top_p",
    "tools",
    "tool_choice",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
    "context_management",
    "output_format",
];

/// `^[a-zA-Z0-9_-]+$`, the pattern of tool names and `tool_use` ids.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_text_block(b: &Value) -> bool {
    b.get("type").and_then(Value::as_str) == Some("text")
        && b.get("text").is_some_and(Value::is_string)
}

/// Anthropic's prompt caching: `cache_control` only on tools, system text
/// blocks and content blocks, always `{"type": "ephemeral"}` (with an
/// optional `ttl` of `5m` or `1h`), at most four in a request.
fn cache_breakpoints(obj: &serde_json::Map<String, Value>, problems: &mut Vec<String>) {
    let empty = Vec::new();
    let list = |v: Option<&Value>| v.and_then(Value::as_array).unwrap_or(&empty).clone();
    let mut marks: Vec<(String, Value)> = Vec::new();
    for (i, t) in list(obj.get("tools")).iter().enumerate() {
        if let Some(c) = t.get("cache_control") {
            marks.push((format!("tools[{i}]"), c.clone()));
        }
    }
    for (i, b) in list(obj.get("system")).iter().enumerate() {
        if let Some(c) = b.get("cache_control") {
            marks.push((format!("system[{i}]"), c.clone()));
        }
    }
    for (i, m) in list(obj.get("messages")).iter().enumerate() {
        if m.get("cache_control").is_some() {
            problems.push(format!(
                "messages[{i}].cache_control: cache_control belongs on a content block, not on the message"
            ));
        }
        for (j, b) in list(m.get("content")).iter().enumerate() {
            if let Some(c) = b.get("cache_control") {
                marks.push((format!("messages[{i}].content[{j}]"), c.clone()));
            }
        }
    }
    for (at, c) in &marks {
        let ok_type = c.get("type").and_then(Value::as_str) == Some("ephemeral");
        let ok_ttl = c
            .get("ttl")
            .is_none_or(|t| matches!(t.as_str(), Some("5m" | "1h")));
        let ok_keys = c
            .as_object()
            .is_some_and(|o| o.keys().all(|k| k == "type" || k == "ttl"));
        if !(ok_type && ok_ttl && ok_keys) {
            problems.push(format!(
                "{at}.cache_control must be {{\"type\": \"ephemeral\"}} (optionally with \"ttl\": \"5m\" or \"1h\"), not {c}"
            ));
        }
    }
    if marks.len() > 4 {
        problems.push(format!(
            "A maximum of 4 blocks with cache_control may be provided. Found {}.",
            marks.len()
        ));
    }
}

/// Checks an Anthropic Messages request (`POST /v1/messages`).
/// `anthropic_version` is the value of the `anthropic-version` header.
pub fn anthropic_request(anthropic_version: Option<&str>, body: &Value) -> Result<(), Vec<String>> {
    let mut problems: Vec<String> = Vec::new();
    if anthropic_version.is_none_or(|v| v.trim().is_empty()) {
        problems.push(
            "anthropic-version: header is required (e.g. `anthropic-version: 2023-06-01`)".into(),
        );
    }
    let Some(obj) = body.as_object() else {
        problems.push("the body is not a JSON object".into());
        return Err(problems);
    };
    for key in obj.keys() {
        if !ANTHROPIC_FIELDS.contains(&key.as_str()) {
            problems.push(format!("{key}: Extra inputs are not permitted"));
        }
    }
    match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => problems.push("`model` must be a non-empty string".into()),
    }
    match obj.get("max_tokens") {
        None => problems.push("max_tokens: Field required".into()),
        Some(v) if v.as_u64().is_some_and(|n| n > 0) => {}
        Some(v) => problems.push(format!("`max_tokens` must be a positive integer, not {v}")),
    }
    match obj.get("stream") {
        None | Some(Value::Bool(_)) => {}
        Some(v) => problems.push(format!("stream: Input should be a valid boolean, not {v}")),
    }
    match obj.get("system") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(blocks)) => {
            for (i, b) in blocks.iter().enumerate() {
                if !is_text_block(b) {
                    problems.push(format!(
                        "system[{i}] must be a text block: {{\"type\": \"text\", \"text\": \"…\"}}"
                    ));
                }
            }
        }
        Some(_) => problems.push("`system` must be a string or an array of text blocks".into()),
    }
    let mut declared: Option<HashSet<String>> = None;
    if let Some(tools) = obj.get("tools") {
        let mut names = HashSet::new();
        match tools.as_array() {
            Some(list) => {
                for (i, t) in list.iter().enumerate() {
                    match t.get("name").and_then(Value::as_str) {
                        Some(n) if is_identifier(n) && n.len() <= 64 => {
                            if !names.insert(n.to_owned()) {
                                problems.push(format!(
                                    "tools: tool names must be unique ({n} is declared twice)"
                                ));
                            }
                        }
                        Some(n) => problems.push(format!(
                            "tools[{i}].name {n:?} must match ^[a-zA-Z0-9_-]{{1,64}}$"
                        )),
                        None => problems.push(format!("tools[{i}].name: Field required")),
                    }
                    if !t.get("input_schema").is_some_and(Value::is_object) {
                        problems.push(format!(
                            "tools[{i}].input_schema must be a JSON Schema object"
                        ));
                    }
                    if t.get("description").is_some_and(|d| !d.is_string()) {
                        problems.push(format!("tools[{i}].description must be a string"));
                    }
                    if t.get("function").is_some() || t.get("parameters").is_some() {
                        problems.push(format!(
                            "tools[{i}] is in the Chat Completions shape; the Messages API wants {{name, description, input_schema}}"
                        ));
                    }
                }
            }
            None => problems.push("`tools` must be an array".into()),
        }
        declared = Some(names);
    }
    if let Some(choice) = obj.get("tool_choice") {
        match choice.get("type").and_then(Value::as_str) {
            Some("auto" | "any" | "none") => {}
            Some("tool") => {
                let name = choice.get("name").and_then(Value::as_str).unwrap_or("");
                if !declared.as_ref().is_some_and(|d| d.contains(name)) {
                    problems.push(format!(
                        "tool_choice names tool {name:?}, which the request does not declare"
                    ));
                }
            }
            _ => problems.push(
                "`tool_choice` must be an object whose type is auto, any, tool or none".into(),
            ),
        }
    }
    cache_breakpoints(obj, &mut problems);
    let Some(messages) = obj.get("messages").and_then(Value::as_array) else {
        problems.push("`messages` must be an array".into());
        return Err(problems);
    };
    if messages.is_empty() {
        problems.push("`messages` must not be empty".into());
    }
    // The `tool_use` ids of the previous (assistant) message, which the
    // next message must answer.
    let mut pending: Vec<String> = Vec::new();
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut prev_role: Option<&str> = None;
    let mut tool_blocks_without_tools = false;
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        match role {
            "user" | "assistant" => {}
            "system" => {
                problems.push(format!(
                    "messages[{i}]: the Messages API has no `system` role; send the system prompt as the top-level `system` field"
                ));
                continue;
            }
            other => {
                problems.push(format!(
                    "messages[{i}] has role {other:?}; only \"user\" and \"assistant\" are allowed"
                ));
                continue;
            }
        }
        if prev_role.is_none() && role != "user" {
            problems.push(format!(
                "messages[{i}]: the first message must use the \"user\" role"
            ));
        }
        if prev_role == Some(role) {
            problems.push(format!(
                "messages[{i}] ({role}) follows another {role} message; roles must alternate between \"user\" and \"assistant\""
            ));
        }
        prev_role = Some(role);
        let may_be_empty = role == "assistant" && i + 1 == messages.len();
        let blocks: &[Value] = match m.get("content") {
            Some(Value::String(s)) => {
                if s.is_empty() && !may_be_empty {
                    problems.push(format!(
                        "messages[{i}]: all messages must have non-empty content except for the optional final assistant message"
                    ));
                }
                &[]
            }
            Some(Value::Array(a)) => {
                if a.is_empty() && !may_be_empty {
                    problems.push(format!(
                        "messages[{i}]: all messages must have non-empty content except for the optional final assistant message"
                    ));
                }
                a
            }
            _ => {
                problems.push(format!(
                    "messages[{i}].content must be a string or an array of content blocks"
                ));
                &[]
            }
        };
        let mut uses: Vec<String> = Vec::new();
        let mut answered: HashSet<String> = HashSet::new();
        for (j, b) in blocks.iter().enumerate() {
            let at = format!("messages[{i}].content[{j}]");
            match b.get("type").and_then(Value::as_str).unwrap_or("") {
                "text" => match b.get("text").and_then(Value::as_str) {
                    Some(t) if !t.trim().is_empty() => {}
                    Some(_) => problems.push(format!(
                        "{at}: text content blocks must contain non-whitespace text"
                    )),
                    None => problems.push(format!("{at}.text must be a string")),
                },
                "image" | "document" => {
                    if role != "user" {
                        problems.push(format!(
                            "{at}: image and document blocks belong in user messages"
                        ));
                    }
                }
                "thinking" | "redacted_thinking" => {
                    if role != "assistant" {
                        problems.push(format!(
                            "{at}: thinking blocks belong in assistant messages"
                        ));
                    }
                }
                "tool_use" => {
                    if role != "assistant" {
                        problems.push(format!(
                            "{at}: tool_use blocks belong in assistant messages"
                        ));
                    }
                    let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                    if !is_identifier(id) {
                        problems.push(format!("{at}.id {id:?} must match ^[a-zA-Z0-9_-]+$"));
                    } else if !seen_ids.insert(id.to_owned()) {
                        problems.push(format!("{at}: tool_use id {id} is used twice"));
                    } else {
                        uses.push(id.to_owned());
                    }
                    let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                    match &declared {
                        Some(d) if d.contains(name) => {}
                        Some(_) => problems.push(format!(
                            "{at} calls tool {name:?}, which the request does not declare"
                        )),
                        None => tool_blocks_without_tools = true,
                    }
                    if !b.get("input").is_some_and(Value::is_object) {
                        problems.push(format!("{at}.input must be an object"));
                    }
                }
                "tool_result" => {
                    if role != "user" {
                        problems.push(format!("{at}: tool_result blocks belong in user messages"));
                    }
                    if declared.is_none() {
                        tool_blocks_without_tools = true;
                    }
                    let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                    if !pending.iter().any(|p| p == id) {
                        problems.push(format!(
                            "{at}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
                        ));
                    } else if !answered.insert(id.to_owned()) {
                        problems.push(format!("{at}: tool_use id {id} is answered twice"));
                    }
                    match b.get("content") {
                        None | Some(Value::String(_)) => {}
                        Some(Value::Array(parts)) => {
                            for (k, p) in parts.iter().enumerate() {
                                let t = p.get("type").and_then(Value::as_str);
                                let ok = match t {
                                    Some("text") => is_text_block(p),
                                    Some("image" | "document") => true,
                                    _ => false,
                                };
                                if !ok {
                                    problems.push(format!(
                                        "{at}.content[{k}] must be a text, image or document block"
                                    ));
                                }
                            }
                        }
                        Some(_) => problems.push(format!(
                            "{at}.content must be a string or an array of blocks"
                        )),
                    }
                    if b.get("is_error").is_some_and(|e| !e.is_boolean()) {
                        problems.push(format!("{at}.is_error must be a boolean"));
                    }
                }
                other => problems.push(format!("{at} has an unknown block type {other:?}")),
            }
        }
        let missing: Vec<&str> = pending
            .iter()
            .filter(|p| !answered.contains(*p))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            problems.push(format!(
                "messages[{i}]: `tool_use` ids were found without `tool_result` blocks immediately after: {}. Each `tool_use` block must have a corresponding `tool_result` block in the next message.",
                missing.join(", ")
            ));
        }
        pending = if role == "assistant" {
            uses
        } else {
            Vec::new()
        };
    }
    if !pending.is_empty() {
        problems.push(format!(
            "the conversation ends with `tool_use` ids {} that no `tool_result` block answers",
            pending.join(", ")
        ));
    }
    if tool_blocks_without_tools {
        problems.push(
            "Requests which include `tool_use` or `tool_result` blocks must define tools.".into(),
        );
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn undeclared_tools_and_orphan_results_are_caught() {
        let body = json!({"model": "m", "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {}}}], "messages": [
            {"role": "user", "content": "Task a: x"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "rm_rf", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            {"role": "tool", "tool_call_id": "c9", "content": "?"}]});
        let p = request(&body).unwrap_err();
        assert!(p.iter().any(|x| x.contains("rm_rf")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("c9")), "{p:?}");
        assert!(request(&json!({"messages": []})).is_err());
    }

    fn anthropic_tools() -> Value {
        json!([{"name": "read_file", "description": "r", "input_schema": {"type": "object"}}])
    }

    #[test]
    fn a_valid_anthropic_tool_round_trip_passes() {
        let body = json!({"model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "s"}], "tools": anthropic_tools(), "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Task a: x"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "reading"}, {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "ok"}]}]}]});
        assert_eq!(anthropic_request(Some("2023-06-01"), &body), Ok(()));
    }

    #[test]
    fn anthropic_violations_are_caught() {
        let problems = |body: Value| {
            anthropic_request(Some("2023-06-01"), &body)
                .unwrap_err()
                .join("\n")
        };
        // No anthropic-version header.
        let ok =
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
        assert!(anthropic_request(None, &ok).unwrap_err()[0].contains("anthropic-version"));
        // max_tokens missing or not positive.
        assert!(
            problems(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
                .contains("max_tokens")
        );
        assert!(problems(
            json!({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]})
        )
        .contains("max_tokens"));
        // A system role inside messages, and a first message that is not user.
        let p = problems(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}),
        );
        assert!(
            p.contains("no `system` role") && p.contains("first message"),
            "{p}"
        );
        // Consecutive user messages.
        assert!(problems(json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})).contains("alternate"));
        // cache_control: its shape, its place, at most four.
        let block = |c: Value| json!({"type": "text", "text": "x", "cache_control": c});
        let p = problems(
            json!({"model": "m", "max_tokens": 1, "system": [block(json!({"type": "persistent"}))],
            "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "ephemeral"}}]}),
        );
        assert!(
            p.contains("system[0].cache_control must be") && p.contains("not on the message"),
            "{p}"
        );
        let e = json!({"type": "ephemeral"});
        let p = problems(
            json!({"model": "m", "max_tokens": 1, "system": [block(e.clone()), block(e.clone()), block(e.clone())],
            "messages": [{"role": "user", "content": [block(e.clone()), block(json!({"type": "ephemeral", "ttl": "1h"}))]}]}),
        );
        assert!(
            p.contains("A maximum of 4 blocks with cache_control"),
            "{p}"
        );
        // A tool_use not answered in the next message, an unknown tool_result id,
        // an undeclared tool.
        let p = problems(
            json!({"model": "m", "max_tokens": 1, "tools": anthropic_tools(), "messages": [
            {"role": "user", "content": "Task a: x"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "rm_rf", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "?"}]}]}),
        );
        assert!(
            p.contains("rm_rf")
                && p.contains("toolu_9")
                && p.contains("immediately after: toolu_1"),
            "{p}"
        );
        // tool_use without any tools declared; tool_result in an assistant message.
        let p = problems(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "?"}, {"type": "tool_use", "id": "t", "name": "x", "input": {}}]}]}));
        assert!(
            p.contains("must define tools")
                && p.contains("belong in user messages")
                && p.contains("ends with `tool_use` ids t"),
            "{p}"
        );
        // Chat Completions fields and tools sent to the Messages API; streaming.
        let p = problems(
            json!({"model": "m", "max_tokens": 1, "n": 1, "stream": "yes",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
            "messages": [{"role": "user", "content": "x"}]}),
        );
        assert!(
            p.contains("n: Extra inputs") && p.contains("input_schema") && p.contains("stream"),
            "{p}"
        );
        // Duplicate tool names.
        assert!(problems(json!({"model": "m", "max_tokens": 1, "tools": [{"name": "a", "input_schema": {}}, {"name": "a", "input_schema": {}}],
            "messages": [{"role": "user", "content": "x"}]})).contains("unique"));
    }
}
