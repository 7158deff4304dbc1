//! Keeping the conversation inside the model's context window
//! (docs/providers.md#context).
//!
//! Tokens are estimated: a message counts its UTF-8 bytes (text, tool
//! names and arguments) divided by [`BYTES_PER_TOKEN`], rounded up, plus
//! [`MESSAGE_OVERHEAD_TOKENS`]; the tool declarations count once. Before a
//! request would pass [`THRESHOLD_PERCENT`] of the window, the conversation
//! is condensed down to [`TARGET_PERCENT`]: old tool outputs are shortened
//! first, then the oldest turns are summarised. The system prompt and the
//! first user message (the task) are always kept, and so are the latest
//! turns.

use swarm_protocol::chat::{ChatMessage, Role, ToolSpec};

/// The estimate's divisor: about four bytes of English or code a token.
pub const BYTES_PER_TOKEN: u64 = 4;
/// What a message costs besides its text (role, separators).
pub const MESSAGE_OVERHEAD_TOKENS: u64 = 4;
/// Condense before a request passes this share of the window (the rest is
/// left for the reply).
pub const THRESHOLD_PERCENT: u64 = 75;
/// Condense down to this share of the window.
pub const TARGET_PERCENT: u64 = 50;
/// Messages at the end that are never shortened nor summarised.
pub const KEEP_LAST: usize = 6;
/// Bytes an old tool output is shortened to.
const SHORT_OUTPUT: usize = 300;
pub use swarm_protocol::chat::{summarised_turns, SUMMARY_PREFIX};
/// How a shortened tool output ends.
pub const SHORTENED_NOTE: &str = "[… older tool output shortened to fit the context window]";

/// The system prompt of the summary request.
pub const SUMMARY_SYSTEM: &str = "You summarise the earlier part of a coding agent's work so that it can go on without it. \
Write plain text, at most 300 words, with three parts: what was done (tools used and what they showed), \
which files were created or changed, and what is left to do for the task. Keep exact file names, \
function names and error messages that still matter.";

fn text_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(BYTES_PER_TOKEN)
}

/// The estimated tokens of one message.
pub fn message_tokens(m: &ChatMessage) -> u64 {
    let mut bytes = m.content.as_deref().map_or(0, str::len);
    for c in &m.tool_calls {
        bytes += c.id.len() + c.function.name.len() + c.function.arguments.len();
    }
    text_tokens(bytes) + MESSAGE_OVERHEAD_TOKENS
}

/// The estimated tokens of a request.
pub fn request_tokens(messages: &[ChatMessage], tools: &[ToolSpec]) -> u64 {
    let tools: usize = tools
        .iter()
        .map(|t| serde_json::to_string(t).map_or(0, |s| s.len()))
        .sum();
    text_tokens(tools) + messages.iter().map(message_tokens).sum::<u64>()
}

/// The window's shares.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub threshold: u64,
    pub target: u64,
}

impl Budget {
    pub fn of(window: u64) -> Self {
        Self {
            threshold: window * THRESHOLD_PERCENT / 100,
            target: window * TARGET_PERCENT / 100,
        }
    }
}

/// Stage one: shortens tool outputs from the oldest on, all but the last
/// `keep_last` messages, until the request is at most `target`. Returns how
/// many were shortened.
pub fn shorten_old_outputs(
    messages: &mut [ChatMessage],
    tools: &[ToolSpec],
    target: u64,
    keep_last: usize,
) -> usize {
    let mut total = request_tokens(messages, tools);
    let end = messages.len().saturating_sub(keep_last);
    let mut n = 0;
    for m in messages.iter_mut().take(end).skip(2) {
        if total <= target {
            break;
        }
        if m.role != Role::Tool {
            continue;
        }
        let Some(text) = m.content.as_mut() else {
            continue;
        };
        if text.len() <= SHORT_OUTPUT + SHORTENED_NOTE.len() + 1 || text.ends_with(SHORTENED_NOTE) {
            continue;
        }
        let before = text_tokens(text.len());
        let mut head = SHORT_OUTPUT;
        while !text.is_char_boundary(head) {
            head -= 1;
        }
        *text = format!("{}\n{SHORTENED_NOTE}", &text[..head]);
        total = total.saturating_sub(before - text_tokens(text.len()));
        n += 1;
    }
    n
}

/// Stage two: where the old turns end. `messages[2..cut]` are summarised;
/// `cut` never separates tool results from the call they answer. `None`
/// when there is nothing old enough.
pub fn summary_cut(messages: &[ChatMessage], keep_last: usize) -> Option<usize> {
    let mut cut = messages.len().checked_sub(keep_last)?;
    while cut > 2 && messages[cut].role == Role::Tool {
        cut -= 1;
    }
    (cut > 2).then_some(cut)
}

/// The old turns as text for the summary request, at most `max_bytes`
/// (the latest part kept).
pub fn render(old: &[ChatMessage], max_bytes: usize) -> String {
    let mut out = String::new();
    for m in old {
        let who = match m.role {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool result",
        };
        let mut text = m.content.clone().unwrap_or_default();
        if m.role == Role::Tool && text.len() > 600 {
            let mut head = 600;
            while !text.is_char_boundary(head) {
                head -= 1;
            }
            text = format!("{} […]", &text[..head]);
        }
        out.push_str(&format!("[{who}] {text}\n"));
        for c in &m.tool_calls {
            out.push_str(&format!(
                "[call] {} {}\n",
                c.function.name,
                cut(&c.function.arguments, 400)
            ));
        }
    }
    if out.len() > max_bytes {
        let mut from = out.len() - max_bytes;
        while !out.is_char_boundary(from) {
            from += 1;
        }
        out = format!("[… the oldest part left out …]\n{}", &out[from..]);
    }
    out
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A summary made without the model (when the summary call fails): the
/// calls made, and the files written.
pub fn mechanical_summary(old: &[ChatMessage]) -> String {
    let mut calls = Vec::new();
    let mut files = std::collections::BTreeSet::new();
    for m in old {
        for c in &m.tool_calls {
            let args: serde_json::Value =
                serde_json::from_str(&c.function.arguments).unwrap_or(serde_json::Value::Null);
            if matches!(c.function.name.as_str(), "write_file" | "edit_file") {
                if let Some(p) = args.get("path").and_then(|p| p.as_str()) {
                    files.insert(p.to_owned());
                }
            }
            calls.push(format!(
                "{} {}",
                c.function.name,
                cut(&c.function.arguments, 120)
            ));
        }
    }
    let mut s = format!("Tool calls made ({}), oldest first:\n", calls.len());
    // The latest 40 calls; older ones only counted.
    let skip = calls.len().saturating_sub(40);
    if skip > 0 {
        s.push_str(&format!("(… {skip} older calls …)\n"));
    }
    for c in &calls[skip..] {
        s.push_str(&format!("- {c}\n"));
    }
    if !files.is_empty() {
        s.push_str(&format!(
            "Files written: {}\n",
            files.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    s.push_str(
        "What is left: check the worktree (list_files, run_command) and go on with the task.",
    );
    s
}

/// The message that replaces the `old` messages: how many, and how many
/// model turns they held (an earlier summary among them counts its own),
/// so that the model — and a scripted server — knows where the work is.
pub fn summary_message(old: &[ChatMessage], summary: &str) -> ChatMessage {
    let turns = old
        .iter()
        .map(|m| match m.role {
            Role::Assistant => 1,
            _ => m.content.as_deref().and_then(summarised_turns).unwrap_or(0),
        })
        .sum::<u32>();
    ChatMessage::user(format!(
        "{SUMMARY_PREFIX} {} earlier messages ({turns} model turns) were summarised to fit the context window.]\n{}",
        old.len(),
        cut(summary.trim(), 6000)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_says_how_many_turns_it_stands_for_earlier_summaries_included() {
        let first = summary_message(
            &[
                ChatMessage::assistant("a"),
                ChatMessage::user("r"),
                ChatMessage::assistant("b"),
            ],
            "did a and b",
        );
        assert_eq!(summarised_turns(first.content.as_deref().unwrap()), Some(2));
        let second = summary_message(&[first, ChatMessage::assistant("c")], "more");
        let text = second.content.as_deref().unwrap();
        assert!(
            text.starts_with("[Condensed: 2 earlier messages (3 model turns)"),
            "{text}"
        );
        assert_eq!(summarised_turns(text), Some(3));
        assert_eq!(summarised_turns("Task t1: x"), None);
    }
    use swarm_protocol::chat::{FunctionCall, ToolCall};

    fn turn(i: usize, output: usize) -> Vec<ChatMessage> {
        let mut a = ChatMessage::assistant("");
        a.content = None;
        a.tool_calls = vec![ToolCall {
            id: format!("c{i}"),
            kind: "function".into(),
            function: FunctionCall {
                name: "read_file".into(),
                arguments: format!(r#"{{"path":"f{i}"}}"#),
            },
        }];
        vec![
            a,
            ChatMessage::tool_result(format!("c{i}"), "x".repeat(output)),
        ]
    }

    #[test]
    fn estimates_and_stage_one() {
        assert_eq!(
            message_tokens(&ChatMessage::user("abcdefgh")),
            2 + MESSAGE_OVERHEAD_TOKENS
        );
        let mut m = vec![ChatMessage::system("s"), ChatMessage::user("task")];
        for i in 0..10 {
            m.extend(turn(i, 4000));
        }
        let before = request_tokens(&m, &[]);
        assert!(before > 10_000);
        let n = shorten_old_outputs(&mut m, &[], 5_000, KEEP_LAST);
        assert!(
            n > 0 && request_tokens(&m, &[]) <= 5_000,
            "{n} {}",
            request_tokens(&m, &[])
        );
        // The latest outputs are intact.
        assert_eq!(m.last().unwrap().content.as_ref().unwrap().len(), 4000);
        assert!(m[3].content.as_ref().unwrap().ends_with(SHORTENED_NOTE));
    }

    #[test]
    fn the_cut_keeps_calls_with_their_results() {
        let mut m = vec![ChatMessage::system("s"), ChatMessage::user("task")];
        for i in 0..5 {
            m.extend(turn(i, 10));
        }
        let cut = summary_cut(&m, 5).unwrap();
        assert_eq!(m[cut].role, Role::Assistant);
        assert_eq!(cut, 6);
        assert_eq!(summary_cut(&m[..5], 4), None);
        let s = mechanical_summary(&m[2..cut]);
        assert!(s.contains("read_file") && s.contains("What is left"), "{s}");
        let r = render(&m[2..cut], 100);
        assert!(
            r.len() < 200 && r.starts_with("[… the oldest part left out"),
            "{r}"
        );
    }
}
