//! Resolving a path a tool received to a path inside the worktree.
//!
//! Refused, with an error the model sees: absolute paths, `..` that climbs
//! out of the worktree, anything under `.git`, and paths whose existing part
//! resolves (through symlinks) outside the worktree.

use std::path::{Component, Path, PathBuf};

/// What the path is for; listing may name the worktree itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    List,
    Read,
    Write,
}

/// Resolves `path` (relative to `root`) or says why not, as `error: …`.
pub fn resolve(root: &Path, path: &str, purpose: Purpose) -> Result<PathBuf, String> {
    let trimmed = path.trim();
    if trimmed.is_empty() || trimmed == "." {
        return match purpose {
            Purpose::List => Ok(root.to_owned()),
            Purpose::Read | Purpose::Write => Err("error: a file path is required".into()),
        };
    }
    if trimmed.contains('\0') {
        return Err("error: the path contains a NUL byte".into());
    }
    let p = Path::new(trimmed);
    if p.is_absolute() || trimmed.starts_with('~') {
        return Err(format!(
            "error: `{trimmed}` is absolute; use a path relative to the worktree root"
        ));
    }
    // Lexical normalisation: `..` may not climb above the root.
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s),
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
    if parts.first().is_some_and(|s| *s == ".git") {
        return Err(format!(
            "error: `{trimmed}` is inside .git, which the tools may not touch"
        ));
    }
    if parts.is_empty() {
        return match purpose {
            Purpose::List => Ok(root.to_owned()),
            Purpose::Read | Purpose::Write => Err("error: a file path is required".into()),
        };
    }
    let candidate: PathBuf = parts.iter().fold(root.to_owned(), |acc, s| acc.join(s));

    // Symlinks: the longest existing prefix must resolve inside the root.
    let real_root = root
        .canonicalize()
        .map_err(|e| format!("error: the worktree is not accessible: {e}"))?;
    let mut existing = candidate.as_path();
    loop {
        if std::fs::symlink_metadata(existing).is_ok() {
            break;
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    match existing.canonicalize() {
        Ok(real) if real.starts_with(&real_root) => {
            if real
                .strip_prefix(&real_root)
                .ok()
                .and_then(|r| r.components().next())
                .is_some_and(|c| c.as_os_str() == ".git")
            {
                return Err(format!(
                    "error: `{trimmed}` resolves into .git, which the tools may not touch"
                ));
            }
            Ok(candidate)
        }
        Ok(_) => Err(format!(
            "error: `{trimmed}` resolves (through a symlink) outside the worktree; refused"
        )),
        // A dangling symlink: refuse, it could be aimed anywhere.
        Err(_) => Err(format!(
            "error: `{trimmed}` goes through a broken symlink; refused"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_paths_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert_eq!(
            resolve(root, "a/b.txt", Purpose::Write).unwrap(),
            root.join("a/b.txt")
        );
        assert_eq!(
            resolve(root, "./a/../c", Purpose::Read).unwrap(),
            root.join("c")
        );
        assert_eq!(resolve(root, "", Purpose::List).unwrap(), root.to_owned());
    }

    #[test]
    fn escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(&root).unwrap();
        for bad in [
            "../outside",
            "/etc/passwd",
            "a/../../x",
            ".git/config",
            "~/x",
        ] {
            let e = resolve(&root, bad, Purpose::Write).unwrap_err();
            assert!(e.starts_with("error: "), "{bad}: {e}");
        }
        std::os::unix::fs::symlink(dir.path(), root.join("link")).unwrap();
        let e = resolve(&root, "link/secret", Purpose::Write).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        std::os::unix::fs::symlink("/nonexistent/zzz", root.join("dangling")).unwrap();
        assert!(resolve(&root, "dangling", Purpose::Write).is_err());
        std::fs::create_dir(root.join("inner")).unwrap();
        std::os::unix::fs::symlink(root.join("inner"), root.join("ok")).unwrap();
        assert!(resolve(&root, "ok/file", Purpose::Write).is_ok());
    }
}
