//! `read_file` (numbered lines, in pages) and `edit_file` (one exact,
//! unique replacement, or an insertion at a line). Every file is opened
//! through [`beneath`]: never through a symlink, written by a rename.

use super::{open_error, Tools};
use crate::paths::beneath::{self, Resolver};
use crate::paths::{check, Purpose, RelPath};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use std::io::Read;
use std::os::fd::AsFd;

/// The largest file the file tools read whole (edits, patches, pages).
pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Lines of context shown around an edit.
const EDIT_CONTEXT: usize = 3;
/// A line longer than this is cut in a numbered listing.
const MAX_LINE_CHARS: usize = 2000;

/// The bytes of a regular file below the root, or the `error:` to show.
pub(super) fn read_bytes(
    tools: &Tools,
    rel: &RelPath,
    path: &str,
    how: Resolver,
) -> Result<Vec<u8>, String> {
    let root = tools.root_fd()?;
    // O_NONBLOCK: a FIFO a command left does not hang the worker.
    let fd = beneath::open_beneath(root.as_fd(), rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, how)
        .map_err(|e| open_error("read", path, e))?;
    let file = std::fs::File::from(fd);
    let size = match file.metadata() {
        Ok(m) if m.is_dir() => {
            return Err(format!("error: `{path}` is a directory; use list_files"))
        }
        Ok(m) if !m.is_file() => return Err(format!("error: `{path}` is not a regular file")),
        Ok(m) => m.len(),
        Err(e) => return Err(format!("error: cannot read `{path}`: {e}")),
    };
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "error: `{path}` has {size} bytes, more than the file tools handle ({MAX_FILE_BYTES}); use run_command (sed -n, head, grep)"
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("error: cannot read `{path}`: {e}"))?;
    Ok(bytes)
}

/// Whether `bytes` look binary (a NUL in the first 8 KiB, ripgrep's rule).
pub(super) fn looks_binary(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(8192)].contains(&0)
}

/// The lines of a text, without their `\n`.
fn lines_of(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n').collect()
}

/// `lines` numbered from `first` (1-based), one `{n:>6}\t{line}` a line.
fn numbered(lines: &[&str], first: usize) -> String {
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        out.push_str(&format!("{:>6}\t{}\n", first + i, cut_line(line)));
    }
    out
}

fn cut_line(line: &str) -> std::borrow::Cow<'_, str> {
    match line.char_indices().nth(MAX_LINE_CHARS) {
        Some((i, _)) => format!("{}[… line cut at {MAX_LINE_CHARS} characters]", &line[..i]).into(),
        None => line.into(),
    }
}

impl Tools {
    /// `read_file`: numbered lines `start..=end` (1-based), at most
    /// `read_max_lines` lines and `tool_result_max_bytes` bytes a page.
    pub(super) fn read_page(
        &self,
        path: &str,
        start: Option<u64>,
        end: Option<u64>,
        how: Resolver,
    ) -> String {
        let rel = match check(path, Purpose::Read) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let bytes = match read_bytes(self, &rel, path, how) {
            Ok(b) => b,
            Err(e) => return e,
        };
        if looks_binary(&bytes) {
            return format!(
                "error: `{path}` is a binary file ({} bytes); the file tools show text only — use run_command (file, xxd | head) to inspect it",
                bytes.len()
            );
        }
        let text = String::from_utf8_lossy(&bytes);
        let lines = lines_of(&text);
        let total = lines.len();
        if total == 0 {
            return format!("(`{path}` is empty)");
        }
        let first = start.unwrap_or(1).max(1) as usize;
        if first > total {
            return format!(
                "error: `{path}` has {total} lines; start_line {first} is past the end"
            );
        }
        let asked_last = end.map_or(total, |e| (e as usize).clamp(first, total));
        let page_last = asked_last.min(first + self.settings.read_max_lines - 1);
        // Room for the note.
        let budget = self.settings.tool_result_max_bytes.saturating_sub(200);
        let mut out = String::new();
        let mut last = first - 1;
        for (i, line) in lines[first - 1..page_last].iter().enumerate() {
            let n = first + i;
            let row = format!("{n:>6}\t{}\n", cut_line(line));
            if !out.is_empty() && out.len() + row.len() > budget {
                break;
            }
            out.push_str(&row);
            last = n;
        }
        if last < asked_last {
            out.push_str(&format!(
                "[lines {first}-{last} of {total} shown; the file goes on: call read_file with start_line {} for more]",
                last + 1
            ));
        } else if first > 1 || last < total {
            out.push_str(&format!("[lines {first}-{last} of {total}]"));
        } else if text.ends_with('\n') {
            // The whole file: as it is, numbered.
        } else {
            out.push_str("[no newline at the end of the file]");
        }
        out
    }

    /// `edit_file`: replaces the one occurrence of `old` with `new`, or
    /// inserts `new` after line `insert_line` (0: at the top).
    pub(super) fn edit_file(
        &self,
        path: &str,
        old: Option<&str>,
        new: &str,
        insert_line: Option<u64>,
    ) -> String {
        let rel = match check(path, Purpose::Write) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let bytes = match read_bytes(self, &rel, path, Resolver::Auto) {
            Ok(b) => b,
            Err(e) if e.contains("does not exist") => {
                return format!("{e}; create it with write_file")
            }
            Err(e) => return e,
        };
        let Ok(text) = String::from_utf8(bytes) else {
            return format!("error: `{path}` is not UTF-8 text; edit it with run_command");
        };
        let (updated, first_line, new_lines, what) = match (old, insert_line) {
            (Some(_), Some(_)) => {
                return "error: give either old_string (to replace it) or insert_line (to insert new_string after that line), not both".into()
            }
            (None, None) => {
                return "error: edit_file needs old_string (the exact text to replace) or insert_line (insert new_string after that line; 0 for the top)".into()
            }
            (None, Some(at)) => {
                let lines = lines_of(&text);
                let at = at as usize;
                if at > lines.len() {
                    return format!(
                        "error: `{path}` has {} lines; insert_line must be 0 to {}",
                        lines.len(),
                        lines.len()
                    );
                }
                let offset: usize = lines[..at].iter().map(|l| l.len() + 1).sum();
                let offset = offset.min(text.len());
                let mut insert = new.to_owned();
                if !insert.ends_with('\n') {
                    insert.push('\n');
                }
                let mut updated = text.clone();
                if offset == text.len() && !text.is_empty() && !text.ends_with('\n') {
                    updated.push('\n');
                }
                let offset = offset.min(updated.len());
                updated.insert_str(offset, &insert);
                let added = lines_of(&insert).len();
                (updated, at + 1, added, format!("inserted {added} lines after line {at}"))
            }
            (Some(old), None) => {
                if old.is_empty() {
                    return "error: old_string is empty; to add text use insert_line".into();
                }
                if old == new {
                    return "error: old_string and new_string are the same; nothing to change".into();
                }
                let found: Vec<usize> = text.match_indices(old).map(|(i, _)| i).collect();
                match found.as_slice() {
                    [] => return not_found(path, &text, old),
                    [at] => {
                        let first_line = text[..*at].matches('\n').count() + 1;
                        let old_lines = spanned_lines(old);
                        let mut updated = String::with_capacity(text.len() + new.len());
                        updated.push_str(&text[..*at]);
                        updated.push_str(new);
                        updated.push_str(&text[at + old.len()..]);
                        let new_lines = spanned_lines(new);
                        let what = format!(
                            "replaced lines {first_line}-{} with {new_lines} lines",
                            first_line + old_lines - 1
                        );
                        (updated, first_line, new_lines, what)
                    }
                    many => {
                        let mut s = format!(
                            "error: old_string occurs {} times in `{path}`; it must occur exactly once. Add lines around it to make it unique. It starts on lines:\n",
                            many.len()
                        );
                        let lines = lines_of(&text);
                        for at in many.iter().take(10) {
                            let n = text[..*at].matches('\n').count() + 1;
                            if let Some(l) = lines.get(n - 1) {
                                s.push_str(&format!("{n:>6}\t{}\n", cut_line(l)));
                            }
                        }
                        return s;
                    }
                }
            }
        };
        let root = match self.root_fd() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        if let Err(e) = beneath::replace_file(root.as_fd(), &rel, updated.as_bytes()) {
            return match e {
                Errno::EISDIR => format!("error: `{path}` is a directory"),
                e => open_error("write", path, e),
            };
        }
        let lines = lines_of(&updated);
        let from = first_line.saturating_sub(EDIT_CONTEXT).max(1);
        let to = (first_line + new_lines.max(1) - 1 + EDIT_CONTEXT).min(lines.len());
        let mut out = format!("edited {path}: {what}; lines {from}-{to} now read:\n");
        if from <= to {
            out.push_str(&numbered(&lines[from - 1..to], from));
        }
        out
    }
}

/// The error for an `old_string` that is not in the file, with the lines
/// that come closest (a whitespace-insensitive match, or lines holding its
/// first line).
fn not_found(path: &str, text: &str, old: &str) -> String {
    let lines = lines_of(text);
    let wanted: Vec<&str> = lines_of(old).iter().map(|l| l.trim()).collect();
    let mut s = format!(
        "error: old_string was not found in `{path}` (it must match exactly, whitespace included)."
    );
    // The same lines with other indentation or trailing spaces.
    if !wanted.is_empty() && wanted.iter().any(|l| !l.is_empty()) {
        for start in 0..lines.len() {
            let end = start + wanted.len();
            if end <= lines.len()
                && lines[start..end]
                    .iter()
                    .zip(&wanted)
                    .all(|(a, b)| a.trim() == *b)
            {
                s.push_str(&format!(
                    " These lines match it when whitespace is ignored; copy them exactly:\n{}",
                    numbered(&lines[start..end], start + 1)
                ));
                return s;
            }
        }
    }
    let key = wanted.iter().find(|l| !l.is_empty()).copied().unwrap_or("");
    let candidates: Vec<usize> = if key.is_empty() {
        Vec::new()
    } else {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(key) || (l.trim().len() > 3 && key.contains(l.trim())))
            .map(|(i, _)| i)
            .take(5)
            .collect()
    };
    if candidates.is_empty() {
        s.push_str(" No line holds its first line either; read the file (read_file) and copy the text to replace from it.");
    } else {
        s.push_str(" Lines that hold its first line:\n");
        for i in candidates {
            s.push_str(&format!("{:>6}\t{}\n", i + 1, cut_line(lines[i])));
        }
    }
    s
}

/// The lines a piece of text covers: a final newline ends its last line
/// rather than starting another (`"a\n"` is one line, `""` none).
fn spanned_lines(s: &str) -> usize {
    s.matches('\n').count() + usize::from(!s.is_empty() && !s.ends_with('\n'))
}
