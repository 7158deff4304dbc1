//! Checks a Chat Completions request the way a strict provider would: the
//! fields the API requires, well-formed messages, a `tool` message answering
//! every tool call by id (and none answering a call that was not made), and
//! only declared tools called.

use serde_json::Value;
use std::collections::HashSet;

pub fn request(body: &Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec!["the body is not a JSON object".into()]);
    };
    match obj.get("model") {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => problems.push("`model` must be a non-empty string".into()),
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        problems.push("`stream: true` is not scripted".into());
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
}
