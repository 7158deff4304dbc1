//! What OpenAI-compatible servers do differently from the specification,
//! and how the provider copes (docs/providers.md#provider-quirks).
//!
//! - Requests: OpenAI's reasoning models (`o1`, `o3`, `o4`, `gpt-5`
//!   families) refuse `max_tokens` and any `temperature` but 1; they get
//!   `max_completion_tokens` and no `temperature`.
//! - Answers: tool-call `arguments` sent as a JSON object instead of a
//!   string, or a call without an `id`; tool calls written into the text by
//!   a local model whose server did not parse them (Hermes/Qwen
//!   `<tool_call>{…}</tool_call>`, or the whole reply one bare JSON object);
//!   a reply cut by `finish_reason: "length"` in the middle of a tool call.
//! - `reasoning_content` (DeepSeek, vLLM) and `reasoning` (OpenRouter) in an
//!   answer are never sent back: [`ChatMessage`] has no such field, so they
//!   are dropped when the answer is read.

use serde_json::{Map, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use swarm_protocol::chat::{ChatMessage, FunctionCall, ToolCall};

/// Whether `model` is one of OpenAI's reasoning models (the name after a
/// router's `vendor/` prefix).
pub fn is_reasoning_model(model: &str) -> bool {
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

/// Adapts a Chat Completions body for `model`.
pub fn adapt_request(body: &mut Value, model: &str) {
    if !is_reasoning_model(model) {
        return;
    }
    if let Some(obj) = body.as_object_mut() {
        if let Some(max) = obj.remove("max_tokens") {
            obj.insert("max_completion_tokens".into(), max);
        }
        obj.remove("temperature");
    }
}

/// A call id for a call the server sent without one (unique in the
/// process, so that the conversation never holds one twice).
fn fresh_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "call_{:08x}{:04x}",
        fastrand::u32(..),
        NEXT.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

/// Fixes the tool calls of every choice of a raw answer before it is read:
/// object arguments become their JSON text, a missing id or type is filled;
/// a missing `choices` is an empty one.
pub fn normalise_answer(answer: &mut Value) {
    // OpenAI reports the input read from its prompt cache here.
    if let Some(usage) = answer.get_mut("usage").and_then(Value::as_object_mut) {
        let cached = usage
            .get("prompt_tokens_details")
            .and_then(|d| d.get("cached_tokens"))
            .and_then(Value::as_u64);
        if let (Some(n), false) = (cached, usage.contains_key("cache_read_tokens")) {
            usage.insert("cache_read_tokens".into(), n.into());
        }
    }
    // No `choices` at all reads as none (an error object may say why).
    if let Some(obj) = answer.as_object_mut() {
        if obj.get("choices").is_none_or(Value::is_null) {
            obj.insert("choices".into(), Value::Array(Vec::new()));
        }
    }
    let Some(choices) = answer.get_mut("choices").and_then(Value::as_array_mut) else {
        return;
    };
    for choice in choices {
        let Some(calls) = choice
            .pointer_mut("/message/tool_calls")
            .and_then(Value::as_array_mut)
        else {
            continue;
        };
        for call in calls {
            let Some(obj) = call.as_object_mut() else {
                continue;
            };
            let has_id = obj
                .get("id")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !has_id {
                obj.insert("id".into(), Value::String(fresh_id()));
            }
            if !obj.get("type").is_some_and(Value::is_string) {
                obj.insert("type".into(), Value::String("function".into()));
            }
            if let Some(f) = obj.get_mut("function").and_then(Value::as_object_mut) {
                match f.get("arguments") {
                    Some(Value::String(_)) => {}
                    None | Some(Value::Null) => {
                        f.insert("arguments".into(), Value::String("{}".into()));
                    }
                    Some(other) => {
                        let text = other.to_string();
                        f.insert("arguments".into(), Value::String(text));
                    }
                }
            }
        }
    }
}

/// One call found in a reply's text.
fn call_from(v: &Value, declared: &[&str]) -> Option<ToolCall> {
    let obj = v.as_object()?;
    let name = obj.get("name")?.as_str()?;
    if !declared.contains(&name) {
        return None;
    }
    let args = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    Some(ToolCall {
        id: fresh_id(),
        kind: "function".into(),
        function: FunctionCall {
            name: name.to_owned(),
            arguments: args,
        },
    })
}

/// The text without a Markdown code fence around it.
fn unfence(text: &str) -> &str {
    let t = text.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

/// Tool calls a local model wrote into its text: `<tool_call>{…}</tool_call>`
/// blocks (Hermes, Qwen), or the whole text one JSON object `{"name", "arguments"}`
/// naming a declared tool. Returns the calls and the text left over.
pub fn calls_in_text(text: &str, declared: &[&str]) -> Option<(Vec<ToolCall>, String)> {
    const OPEN: &str = "<tool_call>";
    const CLOSE: &str = "</tool_call>";
    if text.contains(OPEN) {
        let mut calls = Vec::new();
        let mut rest = String::new();
        let mut tail = text;
        while let Some(at) = tail.find(OPEN) {
            rest.push_str(&tail[..at]);
            let after = &tail[at + OPEN.len()..];
            let (inner, next) = match after.find(CLOSE) {
                Some(end) => (&after[..end], &after[end + CLOSE.len()..]),
                None => (after, ""),
            };
            match serde_json::from_str::<Value>(unfence(inner))
                .ok()
                .and_then(|v| call_from(&v, declared))
            {
                Some(c) => calls.push(c),
                None => return None,
            }
            tail = next;
        }
        rest.push_str(tail);
        return (!calls.is_empty()).then(|| (calls, rest.trim().to_owned()));
    }
    let v: Value = serde_json::from_str(unfence(text)).ok()?;
    let calls: Vec<ToolCall> = match &v {
        Value::Array(items) => items
            .iter()
            .map(|i| call_from(i, declared))
            .collect::<Option<Vec<_>>>()?,
        one => vec![call_from(one, declared)?],
    };
    (!calls.is_empty()).then(|| (calls, String::new()))
}

/// After `finish_reason: "length"`: drops the calls whose arguments were
/// cut (not a JSON object) and says so in the reply's text, which the
/// model reads on its next turn.
pub fn drop_cut_calls(message: &mut ChatMessage) {
    let (whole, cut): (Vec<ToolCall>, Vec<ToolCall>) = std::mem::take(&mut message.tool_calls)
        .into_iter()
        .partition(|c| serde_json::from_str::<Map<String, Value>>(&c.function.arguments).is_ok());
    message.tool_calls = whole;
    if cut.is_empty() {
        return;
    }
    let names: Vec<&str> = cut.iter().map(|c| c.function.name.as_str()).collect();
    let note = format!(
        "[This reply was cut at the output token limit (finish_reason: length) in the middle of a {} call, which was not run. Make the call again with less text: edit_file or apply_patch change part of a file without rewriting it.]",
        names.join(", ")
    );
    message.content = Some(
        match message.content.take().filter(|c| !c.trim().is_empty()) {
            Some(text) => format!("{text}\n{note}"),
            None => note,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_cached_input_is_read_as_cache_reads() {
        let mut v: Value = serde_json::from_str(
            r#"{"choices": [], "usage": {"prompt_tokens": 1200, "completion_tokens": 5,
                "total_tokens": 1205, "prompt_tokens_details": {"cached_tokens": 1024}}}"#,
        )
        .unwrap();
        normalise_answer(&mut v);
        let usage: swarm_protocol::chat::Usage =
            serde_json::from_value(v["usage"].clone()).unwrap();
        assert_eq!((usage.prompt_tokens, usage.cache_read_tokens), (1200, 1024));
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens() {
        for m in [
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-mini",
            "openai/o3",
        ] {
            assert!(is_reasoning_model(m), "{m}");
        }
        for m in ["gpt-4o", "gpt-4.1-mini", "omni", "o1x", "qwen/qwen3"] {
            assert!(!is_reasoning_model(m), "{m}");
        }
        let mut b = serde_json::json!({"model": "o3", "max_tokens": 100, "temperature": 0.2});
        adapt_request(&mut b, "o3");
        assert_eq!(
            b,
            serde_json::json!({"model": "o3", "max_completion_tokens": 100})
        );
    }

    #[test]
    fn calls_written_in_text_are_found() {
        let tools = ["read_file", "finish"];
        let (calls, rest) = calls_in_text(
            "Let me look.\n<tool_call>\n{\"name\": \"read_file\", \"arguments\": {\"path\": \"a\"}}\n</tool_call>",
            &tools,
        )
        .unwrap();
        assert_eq!(rest, "Let me look.");
        assert_eq!(calls[0].function.name, "read_file");
        assert_eq!(calls[0].function.arguments, r#"{"path":"a"}"#);
        let (calls, rest) = calls_in_text(
            "```json\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"x\"}}\n```",
            &tools,
        )
        .unwrap();
        assert_eq!((calls.len(), rest.as_str()), (1, ""));
        // Not a declared tool, or plain prose: left alone.
        assert!(calls_in_text(r#"{"name": "rm_rf", "arguments": {}}"#, &tools).is_none());
        assert!(calls_in_text("I will read the file.", &tools).is_none());
        assert!(calls_in_text(r#"{"path": "a"}"#, &tools).is_none());
    }
}
