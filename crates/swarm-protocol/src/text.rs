//! Text a model controls (file names, commands, summaries, reasons), made
//! safe to print: to the operator's terminal, to a log line, to
//! `manifest.txt`. docs/outputs.md#names-and-text describes the escaping.
//!
//! Here because every crate that prints such text depends on this one.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` must not be printed as it is: C0 and C1 control characters
/// (newline, carriage return, tab, ESC, DEL…) and the Unicode
/// bidirectional controls that reorder what a terminal shows.
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether `s` holds a character [`escape_control`] would escape.
pub fn has_unsafe_chars(s: &str) -> bool {
    s.chars().any(is_unsafe_char)
}

/// `s` with every unsafe character written as an escape: `\n`, `\r`, `\t`,
/// `\e` (ESC), `\xHH` for the other C0 controls and DEL, `\u{HHHH}` for C1
/// and bidirectional controls. A line of text stays one line, and no
/// terminal control sequence survives. Backslashes are left as they are.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !has_unsafe_chars(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            c if (c as u32) < 0x80 && is_unsafe_char(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_unsafe_char(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The first unsafe character of `s`, named for an error message
/// (`U+000A`), if there is one.
pub fn first_unsafe_char(s: &str) -> Option<String> {
    s.chars()
        .find(|c| is_unsafe_char(*c))
        .map(|c| format!("U+{:04X}", c as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(escape_control("src/main.rs"), Cow::Borrowed(_)));
        assert_eq!(escape_control("naïve café ✓"), "naïve café ✓");
    }

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_control("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(escape_control("\u{1b}[31mred\u{1b}[0m"), "\\e[31mred\\e[0m");
        assert_eq!(escape_control("bell\u{7}del\u{7f}"), "bell\\x07del\\x7f");
        assert_eq!(escape_control("c1\u{9b}2J"), "c1\\u{9b}2J");
        assert_eq!(escape_control("rlo\u{202e}txt.exe"), "rlo\\u{202e}txt.exe");
        assert_eq!(escape_control("back\\slash"), "back\\slash");
        for s in ["x\ny", "\u{1b}]0;title\u{7}", "\u{85}"] {
            let e = escape_control(s);
            assert!(!has_unsafe_chars(&e), "{e}");
            assert!(!e.contains('\n'));
        }
        assert_eq!(first_unsafe_char("ok\u{1b}"), Some("U+001B".into()));
        assert_eq!(first_unsafe_char("ok"), None);
    }
}
