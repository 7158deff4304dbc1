//! Masking of secrets in everything AgentSwarm writes — logs, events,
//! transcripts, error messages, `--record` files — and detection of
//! key-shaped strings in the files of a delivery.
//!
//! Two kinds of secret are masked:
//! - the configured key values (the API keys the providers were given):
//!   each occurrence becomes `[REDACTED]`;
//! - anything shaped like a well-known key, configured or not (a key a
//!   model pasted into a file, a key in a tool's output): it keeps its
//!   recognisable prefix, e.g. `sk-[REDACTED]`, `AKIA[REDACTED]`,
//!   `-----BEGIN RSA PRIVATE KEY----- [REDACTED]`, so a reader sees what
//!   kind of key was there.
//!
//! The shapes use the `regex` crate. Replacing the handful of configured
//! values is a plain substring replacement, written by hand: there are a few
//! of them, and `str::replace` needs no crate.
//!
//! A process-wide [`Redactor`] is installed once at start-up with
//! [`install_global`] and used by [`RedactingWriter`], the log writer; until
//! then [`global`] masks the key shapes only.

use regex::Regex;
use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

/// What a configured value becomes.
const MASK: &str = "[REDACTED]";

/// Configured values shorter than this are not masked: a short value (a
/// placeholder like `none`, a test key `abc`) is too likely to occur in
/// ordinary text, and masking it there would garble logs and recordings.
/// Real API keys are far longer.
pub const MIN_SECRET_LEN: usize = 8;

/// A kind of key recognised by its shape.
struct Shape {
    /// For [`key_shapes`]: what the packager tells the user it found.
    name: &'static str,
    pattern: &'static str,
    /// `$1` is the recognisable prefix where the pattern captures one.
    replacement: &'static str,
}

/// The shapes, applied in this order. A key must start at a word boundary
/// (so `task-…`, `risk-free`, `desk-…` never match `sk-`) and carry enough
/// key characters after its prefix. `(?-u:\b)` is an ASCII word boundary,
/// which keeps the regexes on their fast path for non-ASCII text.
///
/// The Anthropic shape comes before the generic `sk-` one, so an Anthropic
/// key is reported (and masked) as such; the PEM block comes first so its
/// body is masked whole.
const SHAPES: &[Shape] = &[
    Shape {
        name: "PEM private key (-----BEGIN … PRIVATE KEY-----)",
        // Through the END line, or to the end of the text if it has none.
        pattern: r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----(?s:.*?)(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)",
        replacement: "-----BEGIN ${1}PRIVATE KEY----- [REDACTED]",
    },
    Shape {
        name: "Anthropic key (sk-ant-…)",
        pattern: r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{20,}",
        replacement: "sk-ant-[REDACTED]",
    },
    Shape {
        name: "OpenAI-style key (sk-…)",
        // OpenAI `sk-`, `sk-proj-`, `sk-svcacct-`, `sk-admin-`; OpenRouter `sk-or-v1-`.
        pattern: r"(?-u:\b)(sk-(?:proj-|svcacct-|admin-|or-v1-)?)[A-Za-z0-9_-]{20,}",
        replacement: "${1}[REDACTED]",
    },
    Shape {
        name: "AWS access key id (AKIA…)",
        // ASIA: the same for temporary credentials.
        pattern: r"(?-u:\b)(AKIA|ASIA)[0-9A-Z]{16}(?-u:\b)",
        replacement: "${1}[REDACTED]",
    },
    Shape {
        name: "GitHub token (ghp_…, github_pat_…)",
        pattern: r"(?-u:\b)(gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}",
        replacement: "${1}[REDACTED]",
    },
    Shape {
        name: "Slack token (xox…-)",
        pattern: r"(?-u:\b)(xox[abprs]-)[A-Za-z0-9-]{10,}",
        replacement: "${1}[REDACTED]",
    },
];

struct CompiledShape {
    name: &'static str,
    re: Regex,
    replacement: &'static str,
}

static COMPILED: LazyLock<Vec<CompiledShape>> = LazyLock::new(compile_shapes);

// The patterns are constants, so a failure is a programming error that the
// test `every_shape_compiles` catches before any release; there is nothing
// a caller could do about it at run time.
#[allow(clippy::expect_used)]
fn compile_shapes() -> Vec<CompiledShape> {
    SHAPES
        .iter()
        .map(|s| CompiledShape {
            name: s.name,
            re: Regex::new(s.pattern).expect("the key-shape patterns are valid regexes"),
            replacement: s.replacement,
        })
        .collect()
}

/// Replaces every match of `shape` in `text`, borrowing when nothing matches.
fn mask_shape<'a>(text: Cow<'a, str>, shape: &CompiledShape) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(s) => shape.re.replace_all(s, shape.replacement),
        Cow::Owned(s) => {
            if shape.re.is_match(&s) {
                Cow::Owned(shape.re.replace_all(&s, shape.replacement).into_owned())
            } else {
                Cow::Owned(s)
            }
        }
    }
}

/// Masks configured secret values and key shapes. Cheap to clone (the
/// values are shared). Its `Debug` shows how many values it holds, never
/// the values.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Trimmed, deduplicated, longest first (so a value that contains
    /// another is masked whole).
    secrets: Arc<Vec<String>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.len())
            .field("shapes", &SHAPES.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for these configured key values (and every key shape).
    /// Values are trimmed (a key read from a file often ends in a newline);
    /// values shorter than [`MIN_SECRET_LEN`] characters after trimming are
    /// ignored, as too likely to mask ordinary text.
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = secrets
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| s.chars().count() >= MIN_SECRET_LEN)
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self {
            secrets: Arc::new(values),
        }
    }

    /// Whether one of the configured values occurs in `text` (key shapes
    /// are [`key_shapes`]'s business).
    pub fn holds_configured(&self, text: &str) -> bool {
        self.secrets.iter().any(|s| text.contains(s.as_str()))
    }

    /// `text` with every configured value replaced by `[REDACTED]` and every
    /// key shape masked. Borrows `text` when there is nothing to mask.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        for shape in COMPILED.iter() {
            out = mask_shape(out, shape);
        }
        out
    }

    /// `text` with every configured value replaced by `[REDACTED]`; key
    /// shapes are left alone. For what goes to the model endpoint: a key a
    /// command or a file tool read must not reach it, but a key-shaped
    /// string in a project's own files (a test fixture, an example config)
    /// is the model's work and is passed on as it is.
    pub fn redact_configured<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        for secret in self.secrets.iter() {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }

    /// Masks the configured values ([`Redactor::redact_configured`]) in
    /// every message of a conversation before it is sent to a provider: the
    /// text, tool results and tool-call arguments. Returns how many
    /// messages changed.
    pub fn redact_messages(&self, messages: &mut [swarm_protocol::chat::ChatMessage]) -> usize {
        if self.secrets.is_empty() {
            return 0;
        }
        let mut changed = 0;
        for m in messages.iter_mut() {
            let mut hit = false;
            if let Some(text) = m.content.as_mut() {
                if let Cow::Owned(masked) = self.redact_configured(text) {
                    *text = masked;
                    hit = true;
                }
            }
            for call in m.tool_calls.iter_mut() {
                if let Cow::Owned(masked) = self.redact_configured(&call.function.arguments) {
                    call.function.arguments = masked;
                    hit = true;
                }
            }
            changed += usize::from(hit);
        }
        changed
    }

    /// Redacts every string of `v` in place: values at any depth, including
    /// JSON documents held inside strings (tool arguments). Object keys are
    /// left alone: they are field names, not data.
    pub fn redact_json(&self, v: &mut serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) => {
                let masked = match self.redact(s) {
                    Cow::Owned(m) => Some(m),
                    Cow::Borrowed(_) => None,
                };
                if let Some(m) = masked {
                    *s = m;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| self.redact_json(x)),
            Value::Object(map) => map.values_mut().for_each(|x| self.redact_json(x)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// The kinds of key whose shape occurs in `text`, in a fixed order, each
/// once; empty if none. For the packager's scan of a delivery, e.g.
/// `["OpenAI-style key (sk-…)"]`.
pub fn key_shapes(text: &str) -> Vec<&'static str> {
    let mut found = Vec::new();
    // Mask as we go, as `redact` does, so an Anthropic key is reported as
    // one kind, not also as a generic `sk-` key.
    let mut rest = Cow::Borrowed(text);
    for shape in COMPILED.iter() {
        if shape.re.is_match(&rest) {
            found.push(shape.name);
            rest = mask_shape(rest, shape);
        }
    }
    found
}

static GLOBAL: RwLock<Option<Redactor>> = RwLock::new(None);

/// Installs the process-wide redactor (called once at start-up, after the
/// configuration has been read). A later call replaces it.
pub fn install_global(r: Redactor) {
    *GLOBAL.write().unwrap_or_else(PoisonError::into_inner) = Some(r);
}

/// The process-wide redactor; masks the key shapes only until
/// [`install_global`] is called.
pub fn global() -> Redactor {
    GLOBAL
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
}

/// Text without a newline is written out anyway past this many bytes, to
/// bound memory; a key split exactly at that point could then escape.
const MAX_PENDING: usize = 64 * 1024;

/// Wraps a writer (stderr, a log file) so that everything written through it
/// is redacted, for `tracing_subscriber::fmt().with_writer(|| RedactingWriter::new(std::io::stderr()))`.
///
/// Text is held until a newline and written line by line (all complete
/// lines of the buffer at once, so a PEM block inside one event is masked
/// whole), so a key split across two `write` calls is still masked.
/// `flush` flushes the complete lines only; the incomplete rest is written
/// when its line ends or when the writer is dropped.
pub struct RedactingWriter<W: Write> {
    inner: W,
    pending: Vec<u8>,
    /// `None`: [`global`] at each write.
    redactor: Option<Redactor>,
}

impl<W: Write> RedactingWriter<W> {
    /// Redacts with the process-wide redactor ([`global`]).
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            redactor: None,
        }
    }

    /// Redacts with `redactor`.
    pub fn with_redactor(inner: W, redactor: Redactor) -> Self {
        Self {
            inner,
            pending: Vec::new(),
            redactor: Some(redactor),
        }
    }

    /// Writes the first `len` pending bytes, redacted.
    fn emit(&mut self, len: usize) -> io::Result<()> {
        let rest = self.pending.split_off(len);
        let chunk = std::mem::replace(&mut self.pending, rest);
        // Log text is UTF-8; an invalid byte becomes U+FFFD, which is fine
        // for a log and keeps the masking on `str`.
        let text = String::from_utf8_lossy(&chunk);
        let fallback;
        let redactor = match &self.redactor {
            Some(r) => r,
            None => {
                fallback = global();
                &fallback
            }
        };
        self.inner.write_all(redactor.redact(&text).as_bytes())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if let Some(last_newline) = self.pending.iter().rposition(|&b| b == b'\n') {
            self.emit(last_newline + 1)?;
        }
        if self.pending.len() > MAX_PENDING {
            self.emit(self.pending.len())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> Drop for RedactingWriter<W> {
    fn drop(&mut self) {
        // Nowhere to report an error from a drop; a log line is lost at worst.
        if !self.pending.is_empty() {
            let _ = self.emit(self.pending.len());
        }
        let _ = self.inner.flush();
    }
}

impl<W: Write> std::fmt::Debug for RedactingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedactingWriter")
            .field("pending_bytes", &self.pending.len())
            .field("redactor", &self.redactor)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_values_are_masked_in_a_conversation_and_shapes_kept() {
        use swarm_protocol::chat::{ChatMessage, FunctionCall, ToolCall};
        let r = Redactor::new(["test-key-not-a-real-secret".to_owned()]);
        let shaped = "sk-proj-FAKEFAKEFAKEFAKEFAKEFAKE1234";
        let mut assistant = ChatMessage::assistant("");
        assistant.tool_calls.push(ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "write_file".into(),
                arguments: r#"{"content": "KEY=test-key-not-a-real-secret"}"#.into(),
            },
        });
        let mut messages = vec![
            ChatMessage::user("Task t1: test"),
            assistant,
            ChatMessage::tool_result(
                "c1",
                format!(
                    "exit code 0\nOPENAI_API_KEY=test-key-not-a-real-secret\nfixture {shaped}\n"
                ),
            ),
        ];
        assert_eq!(r.redact_messages(&mut messages), 2);
        let all = serde_json::to_string(&messages).unwrap();
        assert!(!all.contains("test-key-not-a-real-secret"), "{all}");
        assert!(all.contains("OPENAI_API_KEY=[REDACTED]"), "{all}");
        assert!(
            all.contains(shaped),
            "key shapes are the model's work: {all}"
        );
        assert_eq!(Redactor::default().redact_messages(&mut messages), 0);
    }

    // Made-up keys of the right shapes (the AWS one is AWS's documented example).
    const OPENAI: &str = "sk-abcdEFGH1234ijklMNOP5678qrstUVWX";
    const OPENAI_PROJ: &str = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34";
    const OPENROUTER: &str = "sk-or-v1-0123456789abcdef0123456789abcdef";
    const ANTHROPIC: &str = "sk-ant-api03-Zy98Xw76Vu54Ts32Rq10_Po98-Nm76";
    const AWS: &str = "AKIAIOSFODNN7EXAMPLE";
    const GITHUB: &str = "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789";
    const GITHUB_PAT: &str = "github_pat_11ABCDEFG0123456789_abcdefghijklmnop";
    const SLACK: &str = "xoxb-1234567890-0987654321-AbCdEfGhIjKl";

    #[test]
    fn every_shape_compiles() {
        assert_eq!(COMPILED.len(), SHAPES.len());
    }

    #[test]
    fn each_shape_is_found_and_masked() {
        let cases = [
            (OPENAI, "sk-[REDACTED]", "OpenAI-style key (sk-…)"),
            (OPENAI_PROJ, "sk-proj-[REDACTED]", "OpenAI-style key (sk-…)"),
            (OPENROUTER, "sk-or-v1-[REDACTED]", "OpenAI-style key (sk-…)"),
            (ANTHROPIC, "sk-ant-[REDACTED]", "Anthropic key (sk-ant-…)"),
            (AWS, "AKIA[REDACTED]", "AWS access key id (AKIA…)"),
            (
                GITHUB,
                "ghp_[REDACTED]",
                "GitHub token (ghp_…, github_pat_…)",
            ),
            (
                GITHUB_PAT,
                "github_pat_[REDACTED]",
                "GitHub token (ghp_…, github_pat_…)",
            ),
            (SLACK, "xoxb-[REDACTED]", "Slack token (xox…-)"),
        ];
        let r = Redactor::default();
        for (key, masked, name) in cases {
            let text = format!("export KEY=\"{key}\"; echo done");
            assert_eq!(
                r.redact(&text),
                format!("export KEY=\"{masked}\"; echo done"),
                "{key}"
            );
            assert_eq!(key_shapes(&text), vec![name], "{key}");
        }
    }

    #[test]
    fn pem_private_keys_are_masked_through_the_end_line_or_the_end() {
        let r = Redactor::default();
        let pem = "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x\nq9Zr==\n-----END RSA PRIVATE KEY-----\nafter";
        assert_eq!(
            r.redact(pem),
            "key:\n-----BEGIN RSA PRIVATE KEY----- [REDACTED]\nafter"
        );
        let open = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASC";
        assert_eq!(r.redact(open), "-----BEGIN PRIVATE KEY----- [REDACTED]");
        assert_eq!(
            key_shapes(open),
            vec!["PEM private key (-----BEGIN … PRIVATE KEY-----)"]
        );
        // A public key or certificate is not a secret.
        let public = "-----BEGIN PUBLIC KEY-----\nMFkwEwYH\n-----END PUBLIC KEY-----";
        assert!(matches!(r.redact(public), Cow::Borrowed(_)));
    }

    #[test]
    fn ordinary_text_is_borrowed_and_not_flagged() {
        let r = Redactor::new(vec!["a-configured-secret".to_owned()]);
        let text = "The task-force ran a risk-free desk-check: disk-0123456789abcdefghijklmnop, \
                    sk-short, ask-me-anything-about-everything-here, AKIA1234, ghp_short, \
                    xoxb-1, mask-ant-0123456789abcdefghijklmn.";
        assert!(matches!(r.redact(text), Cow::Borrowed(_)));
        assert!(key_shapes(text).is_empty(), "{:?}", key_shapes(text));
    }

    #[test]
    fn configured_values_are_masked_and_short_ones_ignored() {
        let r = Redactor::new(vec![
            "  local-gateway-token-42\n".to_owned(),
            "abc".to_owned(),
            "local-gateway-token-42-long".to_owned(),
        ]);
        assert_eq!(
            format!("{r:?}"),
            "Redactor { secrets: 2, shapes: 6 }",
            "no values in Debug"
        );
        assert_eq!(
            r.redact("token local-gateway-token-42-long and local-gateway-token-42, abc"),
            "token [REDACTED] and [REDACTED], abc"
        );
    }

    #[test]
    fn json_strings_are_redacted_at_any_depth_and_keys_left_alone() {
        let r = Redactor::new(vec!["local-gateway-token-42".to_owned()]);
        let mut v = serde_json::json!({
            "local-gateway-token-42": 1,
            "messages": [{"role": "user", "content": "use local-gateway-token-42 please"}],
            "tool_calls": [{"arguments": format!("{{\"env\":\"KEY={OPENAI}\"}}")}],
            "n": 3, "ok": true, "none": null
        });
        r.redact_json(&mut v);
        assert_eq!(v["messages"][0]["content"], "use [REDACTED] please");
        assert_eq!(
            v["tool_calls"][0]["arguments"],
            "{\"env\":\"KEY=sk-[REDACTED]\"}"
        );
        assert!(v.get("local-gateway-token-42").is_some());
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn writer_masks_a_key_split_across_writes() {
        let mut out = Vec::new();
        {
            let mut w = RedactingWriter::new(&mut out);
            let (a, b) = OPENAI.split_at(10);
            w.write_all(format!("INFO calling with {a}").as_bytes())
                .unwrap();
            w.write_all(format!("{b} now\nsecond line without newline").as_bytes())
                .unwrap();
            w.flush().unwrap();
        }
        let written = String::from_utf8(out).unwrap();
        assert_eq!(
            written,
            "INFO calling with sk-[REDACTED] now\nsecond line without newline"
        );
    }

    #[test]
    fn writer_with_configured_values() {
        let mut out = Vec::new();
        {
            let r = Redactor::new(vec!["local-gateway-token-42".to_owned()]);
            let mut w = RedactingWriter::with_redactor(&mut out, r);
            w.write_all(b"a local-gateway-").unwrap();
            w.write_all(b"token-42 b\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), "a [REDACTED] b\n");
    }

    #[test]
    fn global_masks_shapes_by_default() {
        // Other tests may install a global redactor; every one masks shapes.
        assert_eq!(global().redact(AWS), "AKIA[REDACTED]");
    }
}
