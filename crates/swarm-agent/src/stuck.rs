//! Loops and stalls: the patterns OpenHands' stuck detector looks for
//! (`openhands/controller/stuck.py`), over the steps of one attempt.
//!
//! The first time a pattern shows, the agent loop tells the model what was
//! seen (a nudge) and the history starts afresh; the next time any pattern
//! shows, the attempt ends `stuck` with the pattern as its reason.

/// The same call with the same result this many times in a row.
pub const SAME_RESULT_REPEATS: usize = 4;
/// The same call failing with the same error this many times in a row.
pub const SAME_ERROR_REPEATS: usize = 3;
/// Two calls (with their results) taking turns this many times each.
pub const ALTERNATION_REPEATS: usize = 3;
/// Replies without a tool call in a row.
pub const MONOLOGUE_REPLIES: usize = 3;
/// Context-window errors in a row (each followed by condensing).
pub const CONTEXT_ERRORS: usize = 3;

/// One step of the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// A tool call (its name and arguments, as a key) and its result.
    Call {
        key: String,
        name: String,
        result: String,
    },
    /// A reply without tool calls.
    Talk,
    /// The request was refused for the context window.
    ContextError,
}

/// A pattern found: a one-line description of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

#[derive(Debug, Default)]
pub struct StuckDetector {
    steps: Vec<Step>,
    /// Whether the model was already told once.
    nudged: bool,
}

/// What the agent loop does about the steps so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Tell the model (a user message), and go on.
    Nudge(String),
    /// End the attempt `stuck` with this reason.
    Stuck(String),
}

/// A call's key: its name and its arguments as canonical JSON (so that the
/// same arguments in another key order or spacing are the same call).
fn call_key(name: &str, arguments: &str) -> String {
    let args = serde_json::from_str::<serde_json::Value>(arguments)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| arguments.trim().to_owned());
    format!("{name} {args}")
}

fn first_line(s: &str, max: usize) -> String {
    let line = s.lines().next().unwrap_or("");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

impl StuckDetector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn tool_call(&mut self, name: &str, arguments: &str, result: &str) {
        self.steps.push(Step::Call {
            key: call_key(name, arguments),
            name: name.to_owned(),
            result: result.to_owned(),
        });
    }

    pub fn talk(&mut self) {
        self.steps.push(Step::Talk);
    }

    pub fn context_error(&mut self) {
        self.steps.push(Step::ContextError);
    }

    /// The pattern the last steps show, if any.
    pub fn pattern(&self) -> Option<Pattern> {
        let s = &self.steps;
        let tail = |n: usize| (s.len() >= n).then(|| &s[s.len() - n..]);
        if let Some(t) = tail(SAME_ERROR_REPEATS) {
            if let Step::Call { key, name, result } = &t[0] {
                if result.starts_with("error:") && t.iter().all(|x| matches!(x, Step::Call { key: k, result: r, .. } if k == key && r == result)) {
                    return Some(Pattern(format!(
                        "the same `{name}` call failed {SAME_ERROR_REPEATS} times in a row with the same error ({})",
                        first_line(result, 160)
                    )));
                }
            }
        }
        if let Some(t) = tail(SAME_RESULT_REPEATS) {
            if let Step::Call { name, .. } = &t[0] {
                if t.iter().all(|x| x == &t[0]) {
                    return Some(Pattern(format!(
                        "the same `{name}` call with the same arguments gave the same result {SAME_RESULT_REPEATS} times in a row"
                    )));
                }
            }
        }
        if let Some(t) = tail(2 * ALTERNATION_REPEATS) {
            if let (Step::Call { name: a, .. }, Step::Call { name: b, .. }) = (&t[0], &t[1]) {
                let alternates = t[0] != t[1]
                    && t.iter().step_by(2).all(|x| x == &t[0])
                    && t.iter().skip(1).step_by(2).all(|x| x == &t[1]);
                if alternates {
                    return Some(Pattern(format!(
                        "alternating between the same two calls (`{a}` and `{b}`, with the same results) {ALTERNATION_REPEATS} times"
                    )));
                }
            }
        }
        if tail(MONOLOGUE_REPLIES).is_some_and(|t| t.iter().all(|x| *x == Step::Talk)) {
            return Some(Pattern(format!(
                "{MONOLOGUE_REPLIES} replies in a row without a tool call"
            )));
        }
        if tail(CONTEXT_ERRORS).is_some_and(|t| t.iter().all(|x| *x == Step::ContextError)) {
            return Some(Pattern(format!(
                "the request exceeded the model's context window {CONTEXT_ERRORS} times in a row, even after condensing"
            )));
        }
        None
    }

    /// What to do after the latest steps.
    pub fn verdict(&mut self) -> Verdict {
        let Some(Pattern(p)) = self.pattern() else {
            return Verdict::Fine;
        };
        if self.nudged {
            return Verdict::Stuck(format!("stuck: {p}"));
        }
        self.nudged = true;
        self.steps.clear();
        Verdict::Nudge(format!(
            "You seem to be stuck: {p}. Doing the same again will not give another result. \
             Step back: re-read the task, look at the error or the file from another angle, \
             and try a different approach. If this happens again the attempt ends."
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut StuckDetector, steps: &[(&str, &str, &str)]) -> Vec<Verdict> {
        steps
            .iter()
            .map(|(n, a, r)| {
                d.tool_call(n, a, r);
                d.verdict()
            })
            .collect()
    }

    #[test]
    fn the_same_call_and_result_repeated() {
        let mut d = StuckDetector::new();
        let v = feed(&mut d, &[("read_file", r#"{"path":"a"}"#, "x"); 4]);
        assert_eq!(v[..3], [Verdict::Fine, Verdict::Fine, Verdict::Fine]);
        assert!(matches!(&v[3], Verdict::Nudge(m) if m.contains("same result 4 times")));
        // Key order and spacing do not make another call.
        let v = feed(
            &mut d,
            &[
                ("read_file", r#"{"path": "a", "start_line": 1}"#, "x"),
                ("read_file", r#"{"start_line":1,"path":"a"}"#, "x"),
                ("read_file", r#"{"path":"a","start_line":1}"#, "x"),
                ("read_file", r#"{"path":"a","start_line":1}"#, "x"),
            ],
        );
        assert!(
            matches!(&v[3], Verdict::Stuck(m) if m.starts_with("stuck: the same `read_file` call"))
        );
    }

    #[test]
    fn the_same_error_repeated() {
        let mut d = StuckDetector::new();
        let e = "error: `x.py` does not exist";
        let v = feed(&mut d, &[("read_file", r#"{"path":"x.py"}"#, e); 3]);
        assert!(
            matches!(&v[2], Verdict::Nudge(m) if m.contains("failed 3 times") && m.contains("does not exist"))
        );
        // A different result in between breaks the run.
        let mut d = StuckDetector::new();
        let v = feed(
            &mut d,
            &[
                ("run_command", r#"{"command":"make"}"#, "error: a"),
                ("run_command", r#"{"command":"make"}"#, "exit code 0\n"),
                ("run_command", r#"{"command":"make"}"#, "error: a"),
            ],
        );
        assert!(v.iter().all(|x| *x == Verdict::Fine));
    }

    #[test]
    fn alternating_between_two_actions() {
        let mut d = StuckDetector::new();
        let a = ("run_command", r#"{"command":"make"}"#, "exit code 2\nfail");
        let b = (
            "edit_file",
            r#"{"path":"a"}"#,
            "error: old_string was not found",
        );
        let v = feed(&mut d, &[a, b, a, b, a, b]);
        assert!(v[..5].iter().all(|x| *x == Verdict::Fine), "{v:?}");
        assert!(matches!(&v[5], Verdict::Nudge(m) if m.contains("alternating")));
    }

    #[test]
    fn monologue_and_context_errors() {
        let mut d = StuckDetector::new();
        d.talk();
        d.talk();
        assert_eq!(d.verdict(), Verdict::Fine);
        d.talk();
        assert!(matches!(d.verdict(), Verdict::Nudge(m) if m.contains("without a tool call")));
        for _ in 0..3 {
            d.context_error();
        }
        assert!(matches!(d.verdict(), Verdict::Stuck(m) if m.contains("context window")));
    }
}
