//! `apply_patch`: Codex's `*** Begin Patch` format (docs/worker-tools.md).
//! Every change is worked out in memory first; only when all of them apply
//! are files written, and a write that fails rolls the earlier ones back.

use super::files::read_bytes;
use super::{open_error, Tools};
use crate::paths::beneath::{self, Resolver};
use crate::paths::{check, Purpose, RelPath};
use nix::errno::Errno;
use std::os::fd::AsFd;

/// One parsed file operation.
#[derive(Debug, PartialEq)]
enum Op {
    Add {
        path: String,
        lines: Vec<String>,
    },
    Delete {
        path: String,
    },
    Update {
        path: String,
        move_to: Option<String>,
        chunks: Vec<Chunk>,
    },
}

#[derive(Debug, Default, PartialEq)]
struct Chunk {
    /// The `@@ …` line: the chunk starts after the next line equal to it.
    anchor: Option<String>,
    old: Vec<String>,
    new: Vec<String>,
    /// `*** End of File`: the old lines end the file.
    at_eof: bool,
}

fn parse(patch: &str) -> Result<Vec<Op>, String> {
    let lines: Vec<&str> = patch
        .lines()
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    let (Some(start), Some(end)) = (start, end) else {
        return Err("error: the patch is empty; it must start with `*** Begin Patch` and end with `*** End Patch`".into());
    };
    if lines[start].trim() != "*** Begin Patch" {
        return Err("error: the patch must start with the line `*** Begin Patch`".into());
    }
    if end == start || lines[end].trim() != "*** End Patch" {
        return Err("error: the patch must end with the line `*** End Patch`".into());
    }
    let body = &lines[start + 1..end];
    let mut ops = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let line = body[i];
        let at = i + start + 2;
        i += 1;
        if let Some(path) = line.strip_prefix("*** Add File: ") {
            let mut content = Vec::new();
            while i < body.len() && !body[i].starts_with("*** ") {
                match body[i].strip_prefix('+') {
                    Some(rest) => content.push(rest.to_owned()),
                    None => {
                        return Err(format!(
                            "error: patch line {}: every line of an added file starts with `+`",
                            i + start + 2
                        ))
                    }
                }
                i += 1;
            }
            ops.push(Op::Add {
                path: path.trim().to_owned(),
                lines: content,
            });
        } else if let Some(path) = line.strip_prefix("*** Delete File: ") {
            ops.push(Op::Delete {
                path: path.trim().to_owned(),
            });
        } else if let Some(path) = line.strip_prefix("*** Update File: ") {
            let mut move_to = None;
            if let Some(to) = body.get(i).and_then(|l| l.strip_prefix("*** Move to: ")) {
                move_to = Some(to.trim().to_owned());
                i += 1;
            }
            let mut chunks: Vec<Chunk> = Vec::new();
            let mut cur: Option<Chunk> = None;
            while i < body.len() {
                let l = body[i];
                if l == "*** End of File" {
                    if let Some(c) = cur.as_mut() {
                        c.at_eof = true;
                    }
                    i += 1;
                    continue;
                }
                if l.starts_with("*** ") {
                    break;
                }
                if let Some(rest) = l.strip_prefix("@@") {
                    chunks.extend(cur.take());
                    let anchor = rest.trim();
                    cur = Some(Chunk {
                        anchor: (!anchor.is_empty()).then(|| anchor.to_owned()),
                        ..Chunk::default()
                    });
                    i += 1;
                    continue;
                }
                let c = cur.get_or_insert_with(Chunk::default);
                match l.chars().next() {
                    Some(' ') => {
                        c.old.push(l[1..].to_owned());
                        c.new.push(l[1..].to_owned());
                    }
                    None => {
                        c.old.push(String::new());
                        c.new.push(String::new());
                    }
                    Some('-') => c.old.push(l[1..].to_owned()),
                    Some('+') => c.new.push(l[1..].to_owned()),
                    Some(_) => {
                        return Err(format!(
                            "error: patch line {}: a line of an update starts with ` ` (context), `-` (removed), `+` (added) or `@@`; got `{}`",
                            i + start + 2,
                            l.chars().take(60).collect::<String>()
                        ))
                    }
                }
                i += 1;
            }
            chunks.extend(cur.take());
            if chunks.is_empty() && move_to.is_none() {
                return Err(format!(
                    "error: patch line {at}: `*** Update File: {}` has no changes",
                    path.trim()
                ));
            }
            ops.push(Op::Update {
                path: path.trim().to_owned(),
                move_to,
                chunks,
            });
        } else if line.trim().is_empty() {
            continue;
        } else {
            return Err(format!(
                "error: patch line {at}: expected `*** Add File: `, `*** Update File: ` or `*** Delete File: `, got `{}`",
                line.chars().take(60).collect::<String>()
            ));
        }
    }
    if ops.is_empty() {
        return Err("error: the patch changes no file".into());
    }
    Ok(ops)
}

/// Where `want` starts in `lines` at or after `from`: exactly, then
/// ignoring trailing whitespace, then ignoring all surrounding whitespace.
fn seek(lines: &[String], want: &[String], from: usize, at_eof: bool) -> Option<usize> {
    if want.is_empty() {
        return Some(if at_eof { lines.len() } else { from });
    }
    if want.len() > lines.len() {
        return None;
    }
    let last = lines.len() - want.len();
    let starts: Vec<usize> = if at_eof {
        vec![last]
    } else {
        (from..=last).collect()
    };
    let eqs: [fn(&str, &str) -> bool; 3] = [
        |a, b| a == b,
        |a, b| a.trim_end() == b.trim_end(),
        |a, b| a.trim() == b.trim(),
    ];
    for eq in eqs {
        for &s in &starts {
            if s >= from
                && lines[s..s + want.len()]
                    .iter()
                    .zip(want)
                    .all(|(a, b)| eq(a, b))
            {
                return Some(s);
            }
        }
    }
    None
}

/// The new text of `path` after `chunks`.
fn apply_chunks(path: &str, text: &str, chunks: &[Chunk]) -> Result<String, String> {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut edits: Vec<(usize, usize, &[String])> = Vec::new();
    let mut cursor = 0;
    for (n, c) in chunks.iter().enumerate() {
        if let Some(anchor) = &c.anchor {
            match lines[cursor.min(lines.len())..].iter().position(|l| l.trim() == anchor.trim()) {
                Some(p) => cursor += p + 1,
                None => {
                    return Err(format!(
                        "error: `{path}`, chunk {}: the `@@ {anchor}` line was not found after line {cursor}; nothing was changed",
                        n + 1
                    ))
                }
            }
        }
        let Some(at) = seek(&lines, &c.old, cursor, c.at_eof) else {
            let shown: Vec<String> = c.old.iter().take(8).map(|l| format!("  {l}")).collect();
            return Err(format!(
                "error: `{path}`, chunk {}: these lines were not found after line {cursor}; nothing was changed. Read the file and copy the context lines exactly:\n{}",
                n + 1,
                shown.join("\n")
            ));
        };
        edits.push((at, c.old.len(), &c.new));
        cursor = at + c.old.len();
    }
    for (at, len, new) in edits.into_iter().rev() {
        lines.splice(at..at + len, new.iter().cloned());
    }
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    Ok(out)
}

/// A change worked out in memory: the new content (`None`: delete).
struct Change {
    rel: RelPath,
    path: String,
    content: Option<Vec<u8>>,
}

impl Tools {
    pub(super) fn apply_patch(&self, patch: &str) -> String {
        let ops = match parse(patch) {
            Ok(o) => o,
            Err(e) => return e,
        };
        let mut changes: Vec<Change> = Vec::new();
        let mut report: Vec<String> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        let checked = |p: &str| check(p, Purpose::Write);
        for op in &ops {
            let result: Result<(), String> = (|| {
                match op {
                    Op::Add { path, lines } => {
                        let rel = checked(path)?;
                        if read_bytes(self, &rel, path, Resolver::Auto).is_ok() {
                            return Err(format!("error: `{path}` already exists; change it with `*** Update File: {path}`; nothing was changed"));
                        }
                        let mut content = lines.join("\n");
                        content.push('\n');
                        report.push(format!("A {path} ({} lines)", lines.len()));
                        changes.push(Change {
                            rel,
                            path: path.clone(),
                            content: Some(content.into_bytes()),
                        });
                    }
                    Op::Delete { path } => {
                        let rel = checked(path)?;
                        read_bytes(self, &rel, path, Resolver::Auto)?;
                        report.push(format!("D {path}"));
                        changes.push(Change {
                            rel,
                            path: path.clone(),
                            content: None,
                        });
                    }
                    Op::Update {
                        path,
                        move_to,
                        chunks,
                    } => {
                        let rel = checked(path)?;
                        let bytes = read_bytes(self, &rel, path, Resolver::Auto)?;
                        let text = String::from_utf8(bytes).map_err(|_| {
                            format!("error: `{path}` is not UTF-8 text; change it with run_command")
                        })?;
                        let updated = apply_chunks(path, &text, chunks)?;
                        match move_to {
                            Some(to) => {
                                let to_rel = checked(to)?;
                                report.push(format!("M {path} -> {to}"));
                                changes.push(Change {
                                    rel: to_rel,
                                    path: to.clone(),
                                    content: Some(updated.into_bytes()),
                                });
                                changes.push(Change {
                                    rel,
                                    path: path.clone(),
                                    content: None,
                                });
                            }
                            None => {
                                report.push(format!("M {path} ({} chunks)", chunks.len()));
                                changes.push(Change {
                                    rel,
                                    path: path.clone(),
                                    content: Some(updated.into_bytes()),
                                });
                            }
                        }
                    }
                }
                Ok(())
            })();
            if let Err(e) = result {
                return e;
            }
        }
        for c in &changes {
            if !seen.insert(c.rel.to_path()) {
                return format!("error: the patch changes `{}` twice; merge those changes into one; nothing was changed", c.path);
            }
        }
        let root = match self.root_fd() {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        // What each path held before, to roll back.
        let mut done: Vec<(&Change, Option<Vec<u8>>)> = Vec::new();
        for c in &changes {
            let before = read_bytes(self, &c.rel, &c.path, Resolver::Auto).ok();
            let r = match &c.content {
                Some(bytes) => beneath::replace_file(root.as_fd(), &c.rel, bytes),
                None => beneath::remove_file(root.as_fd(), &c.rel),
            };
            if let Err(e) = r {
                for (c, before) in done.into_iter().rev() {
                    let _ = match before {
                        Some(b) => beneath::replace_file(root.as_fd(), &c.rel, &b),
                        None => beneath::remove_file(root.as_fd(), &c.rel),
                    };
                }
                let why = match e {
                    Errno::EISDIR => format!("error: `{}` is a directory", c.path),
                    e => open_error("write", &c.path, e),
                };
                return format!(
                    "{why}; the patch was not applied (the files written before were restored)"
                );
            }
            done.push((c, before));
        }
        format!("applied the patch:\n{}", report.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_operations() {
        let ops = parse(
            "*** Begin Patch\n*** Add File: a.txt\n+one\n+two\n*** Delete File: b.txt\n*** Update File: c.txt\n*** Move to: d.txt\n@@ fn main\n-old\n+new\n ctx\n*** End of File\n*** End Patch\n",
        )
        .unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            ops[0],
            Op::Add {
                path: "a.txt".into(),
                lines: vec!["one".into(), "two".into()]
            }
        );
        let Op::Update {
            move_to, chunks, ..
        } = &ops[2]
        else {
            panic!()
        };
        assert_eq!(move_to.as_deref(), Some("d.txt"));
        assert_eq!(chunks[0].anchor.as_deref(), Some("fn main"));
        assert_eq!(chunks[0].old, vec!["old", "ctx"]);
        assert_eq!(chunks[0].new, vec!["new", "ctx"]);
        assert!(chunks[0].at_eof);
        assert!(parse("*** Update File: x\n")
            .unwrap_err()
            .contains("Begin Patch"));
        assert!(parse("*** Begin Patch\nhello\n*** End Patch")
            .unwrap_err()
            .contains("patch line 2"));
    }

    #[test]
    fn chunks_apply_in_order_and_tolerate_trailing_whitespace() {
        let text = "a\nb  \nc\nd\nb\ne\n";
        let chunks = vec![Chunk {
            anchor: Some("d".into()),
            old: vec!["b".into()],
            new: vec!["B".into()],
            at_eof: false,
        }];
        assert_eq!(
            apply_chunks("f", text, &chunks).unwrap(),
            "a\nb  \nc\nd\nB\ne\n"
        );
        let chunks = vec![Chunk {
            anchor: None,
            old: vec!["b".into(), "c".into()],
            new: vec!["x".into()],
            at_eof: false,
        }];
        assert_eq!(apply_chunks("f", text, &chunks).unwrap(), "a\nx\nd\nb\ne\n");
        let missing = vec![Chunk {
            anchor: None,
            old: vec!["zzz".into()],
            new: vec![],
            at_eof: false,
        }];
        assert!(apply_chunks("f", text, &missing)
            .unwrap_err()
            .contains("not found"));
    }
}
