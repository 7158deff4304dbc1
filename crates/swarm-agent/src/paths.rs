//! Checking a path a tool received, before anything is opened.
//!
//! Refused, with an error the model sees: absolute paths, `..` that climbs
//! out of the worktree, anything under `.git`, and names with control
//! characters (a newline in a file name would split `manifest.txt` and the
//! operator's log lines). What is left is a list of plain names below the
//! worktree root, which [`beneath`] opens one by one without following a
//! symlink at any of them.

pub mod beneath;

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use swarm_protocol::text::first_unsafe_char;

/// What the path is for; listing may name the worktree itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    List,
    Read,
    Write,
}

/// A checked path: plain names below the worktree root (none: the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    parts: Vec<OsString>,
}

impl RelPath {
    /// A path of plain names already checked (a directory being listed).
    pub(crate) fn from_parts(parts: Vec<OsString>) -> Self {
        Self { parts }
    }

    pub fn parts(&self) -> &[OsString] {
        &self.parts
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The path relative to the root (`.` for the root).
    pub fn to_path(&self) -> PathBuf {
        if self.parts.is_empty() {
            return PathBuf::from(".");
        }
        self.parts.iter().collect()
    }

    /// The parent's names and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(&[OsString], &OsString)> {
        self.parts.split_last().map(|(last, parent)| (parent, last))
    }
}

/// Checks `path` (relative to the worktree root) or says why not, as `error: …`.
pub fn check(path: &str, purpose: Purpose) -> Result<RelPath, String> {
    let trimmed = path.trim();
    if trimmed.is_empty() || trimmed == "." {
        return match purpose {
            Purpose::List => Ok(RelPath { parts: Vec::new() }),
            Purpose::Read | Purpose::Write => Err("error: a file path is required".into()),
        };
    }
    if trimmed.contains('\0') {
        return Err("error: the path contains a NUL byte".into());
    }
    if let Some(c) = first_unsafe_char(trimmed) {
        return Err(format!(
            "error: the path contains a control character ({c}); file names may not contain newlines, escape sequences or other control characters"
        ));
    }
    let p = Path::new(trimmed);
    if p.is_absolute() || trimmed.starts_with('~') {
        return Err(format!(
            "error: `{trimmed}` is absolute; use a path relative to the worktree root"
        ));
    }
    // Lexical normalisation: `..` may not climb above the root.
    let mut parts: Vec<OsString> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return Err(format!(
                        "error: `{trimmed}` leads outside the worktree; paths must stay inside it"
                    ));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "error: `{trimmed}` is absolute; use a path relative to the worktree root"
                ));
            }
        }
    }
    if parts.first().is_some_and(|s| s == ".git") {
        return Err(format!(
            "error: `{trimmed}` is inside .git, which the tools may not touch"
        ));
    }
    if parts.is_empty() && purpose != Purpose::List {
        return Err("error: a file path is required".into());
    }
    Ok(RelPath { parts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_paths_are_names_below_the_root() {
        assert_eq!(
            check("a/b.txt", Purpose::Write).unwrap().to_path(),
            PathBuf::from("a/b.txt")
        );
        assert_eq!(
            check("./a/../c", Purpose::Read).unwrap().to_path(),
            PathBuf::from("c")
        );
        assert!(check("", Purpose::List).unwrap().is_root());
        assert!(check("a/..", Purpose::List).unwrap().is_root());
        assert!(check("a/..", Purpose::Read).is_err());
    }

    #[test]
    fn escapes_and_control_characters_are_refused() {
        for bad in [
            "../outside",
            "/etc/passwd",
            "a/../../x",
            ".git/config",
            "~/x",
            "a\nb",
            "x\u{1b}[2J",
            "tab\there",
            "del\u{7f}",
            "rlo\u{202e}gnp.exe",
        ] {
            let e = check(bad, Purpose::Write).unwrap_err();
            assert!(e.starts_with("error: "), "{bad}: {e}");
        }
        let e = check("evil\nname", Purpose::Write).unwrap_err();
        assert!(e.contains("control character (U+000A)"), "{e}");
    }
}
