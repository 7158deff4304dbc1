//! `search`: a regular expression over the worktree's text files, by
//! ripgrep's rules — `.gitignore` files respected, binary files (a NUL in
//! the first 8 KiB) skipped, symlinks never followed. The walk opens every
//! directory and file through [`beneath`] from the worktree descriptor; the
//! `ignore` crate only matches names against the rules read that way.

use super::files::{looks_binary, read_bytes};
use super::{open_error, Tools};
use crate::paths::beneath::{self, Resolver};
use crate::paths::{check, Purpose, RelPath};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use nix::dir::{Dir, Type};
use nix::fcntl::OFlag;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::rc::Rc;
use swarm_protocol::text::escape_control;

/// Files one search reads at most.
const MAX_FILES: usize = 20_000;
/// Files larger than this are skipped (and counted).
const MAX_SEARCH_BYTES: u64 = 4 * 1024 * 1024;
/// Characters of a matching line shown.
const MAX_MATCH_CHARS: usize = 300;

/// The rules of the `.gitignore` files from the root down to a directory.
type Rules = Rc<Vec<Gitignore>>;

/// A stand-in absolute path for matching (never opened).
fn match_path(parts: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    p.extend(parts);
    p
}

/// Whether the rules ignore `parts`: the deepest `.gitignore` that has a
/// say decides (a `!` rule re-includes).
fn ignored(rules: &[Gitignore], parts: &[OsString], is_dir: bool) -> bool {
    let p = match_path(parts);
    for g in rules.iter().rev() {
        let m = g.matched(&p, is_dir);
        if m.is_ignore() {
            return true;
        }
        if m.is_whitelist() {
            return false;
        }
    }
    false
}

/// What a walk found: files in order, and how many it left out.
pub(super) struct Walk {
    pub files: Vec<Vec<OsString>>,
    pub cut: bool,
}

impl Tools {
    /// The files below `base` that `.gitignore` files do not exclude, in
    /// path order; `.git`, the private directory and symlinks are skipped.
    pub(super) fn walk_files(&self, base: &RelPath, max: usize) -> Result<Walk, String> {
        let root = self.root_fd()?;
        let mut files = Vec::new();
        // The rules of the directories above `base`.
        let mut rules: Vec<Gitignore> = Vec::new();
        for depth in 0..base.parts().len() {
            if let Some(g) = self.gitignore_of(&base.parts()[..depth]) {
                rules.push(g);
            }
        }
        let mut stack: Vec<(Vec<OsString>, Rules)> = vec![(base.parts().to_vec(), Rc::new(rules))];
        let mut cut = false;
        while let Some((parts, rules)) = stack.pop() {
            let rel = RelPath::from_parts(parts.clone());
            let Ok(fd) = beneath::open_beneath(
                root.as_fd(),
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Resolver::Auto,
            ) else {
                continue; // swapped for a symlink meanwhile: skipped, not followed
            };
            let Ok(mut dir) = Dir::from_fd(fd) else {
                continue;
            };
            let mut entries: Vec<(OsString, Option<Type>)> =
                swarm_exec::sandbox::dir_entries(&mut dir)
                    .into_iter()
                    .map(|(n, t)| (OsStr::from_bytes(n.to_bytes()).to_owned(), t))
                    .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let rules = match entries
                .iter()
                .any(|(n, t)| n == ".gitignore" && *t == Some(Type::File))
                .then(|| self.gitignore_of(&parts))
                .flatten()
            {
                Some(g) => {
                    let mut v = (*rules).clone();
                    v.push(g);
                    Rc::new(v)
                }
                None => rules,
            };
            let mut dirs = Vec::new();
            for (name, kind) in entries {
                if name == ".git" || (parts.is_empty() && name == swarm_exec::sandbox::PRIVATE_DIR)
                {
                    continue;
                }
                let kind = kind.or_else(|| {
                    nix::sys::stat::fstatat(
                        dir.as_fd(),
                        name.as_os_str(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .ok()
                    .map(|st| {
                        let t = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                            & nix::sys::stat::SFlag::S_IFMT;
                        if t == nix::sys::stat::SFlag::S_IFDIR {
                            Type::Directory
                        } else if t == nix::sys::stat::SFlag::S_IFREG {
                            Type::File
                        } else {
                            Type::Symlink
                        }
                    })
                });
                let mut child = parts.clone();
                child.push(name);
                match kind {
                    Some(Type::Directory) if !ignored(&rules, &child, true) => dirs.push(child),
                    Some(Type::File) if !ignored(&rules, &child, false) => {
                        if files.len() >= max {
                            cut = true;
                            break;
                        }
                        files.push(child);
                    }
                    // Symlinks, FIFOs, sockets, devices: never read.
                    _ => {}
                }
            }
            if cut {
                break;
            }
            for d in dirs.into_iter().rev() {
                stack.push((d, rules.clone()));
            }
        }
        Ok(Walk { files, cut })
    }

    /// The rules of `dir/.gitignore`, read beneath the root.
    fn gitignore_of(&self, dir: &[OsString]) -> Option<Gitignore> {
        let mut parts = dir.to_vec();
        parts.push(".gitignore".into());
        let rel = RelPath::from_parts(parts);
        let bytes = read_bytes(self, &rel, ".gitignore", Resolver::Auto).ok()?;
        let mut b = GitignoreBuilder::new(match_path(dir));
        for line in String::from_utf8_lossy(&bytes).lines() {
            // A rule that does not parse is skipped, as git does.
            let _ = b.add_line(None, line);
        }
        b.build().ok()
    }

    /// `search`: lines matching `pattern` under `path`, in files matching
    /// `glob`.
    pub(super) fn search(
        &self,
        pattern: &str,
        path: &str,
        glob: Option<&str>,
        case_insensitive: bool,
    ) -> String {
        let re = match regex::RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(1 << 22)
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                return format!(
                    "error: `{pattern}` is not a valid regular expression (Rust regex syntax): {e}"
                )
            }
        };
        let globs = match glob.map(glob_set).transpose() {
            Ok(g) => g,
            Err(e) => return e,
        };
        let base = match check(path, Purpose::List) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let walk = match self.walk_files(&base, MAX_FILES) {
            Ok(w) => w,
            Err(e) => return e,
        };
        if walk.files.is_empty() && !base.is_root() {
            let root = match self.root_fd() {
                Ok(r) => r,
                Err(e) => return e,
            };
            if let Err(e) = beneath::open_beneath(
                root.as_fd(),
                &base,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Resolver::Auto,
            ) {
                return open_error("search", path, e);
            }
        }
        let cap = self.settings.search_max_matches;
        let (mut shown, mut matches, mut files_with, mut searched) =
            (Vec::new(), 0usize, 0usize, 0usize);
        let (mut binary, mut large) = (0usize, 0usize);
        for parts in &walk.files {
            let name = parts
                .iter()
                .map(|p| p.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if let Some(g) = &globs {
                let file_name = parts
                    .last()
                    .map(|p| p.to_string_lossy())
                    .unwrap_or_default();
                if !g.is_match(&name) && !g.is_match(file_name.as_ref()) {
                    continue;
                }
            }
            let rel = RelPath::from_parts(parts.clone());
            let bytes = match read_bytes(self, &rel, &name, Resolver::Auto) {
                Ok(b) if b.len() as u64 > MAX_SEARCH_BYTES => {
                    large += 1;
                    continue;
                }
                Ok(b) => b,
                Err(e) if e.contains("more than the file tools handle") => {
                    large += 1;
                    continue;
                }
                Err(_) => continue,
            };
            if looks_binary(&bytes) {
                binary += 1;
                continue;
            }
            searched += 1;
            let text = String::from_utf8_lossy(&bytes);
            let mut here = 0;
            for (i, line) in text.lines().enumerate() {
                if re.is_match(line) {
                    here += 1;
                    if shown.len() < cap {
                        let line = match line.char_indices().nth(MAX_MATCH_CHARS) {
                            Some((at, _)) => format!("{}…", &line[..at]),
                            None => line.to_owned(),
                        };
                        shown.push(format!(
                            "{}:{}: {}",
                            escape_control(&name),
                            i + 1,
                            escape_control(&line)
                        ));
                    }
                }
            }
            if here > 0 {
                files_with += 1;
                matches += here;
            }
        }
        let mut skipped = Vec::new();
        if binary > 0 {
            skipped.push(format!("{binary} binary files skipped"));
        }
        if large > 0 {
            skipped.push(format!(
                "{large} files over {} MiB skipped",
                MAX_SEARCH_BYTES >> 20
            ));
        }
        if walk.cut {
            skipped.push(format!(
                "the walk stopped at {MAX_FILES} files: search a subdirectory"
            ));
        }
        let skipped = if skipped.is_empty() {
            String::new()
        } else {
            format!("; {}", skipped.join("; "))
        };
        if matches == 0 {
            return format!("no matches for `{pattern}` ({searched} files searched{skipped})");
        }
        let mut out = shown.join("\n");
        if matches > shown.len() {
            out.push_str(&format!(
                "\n[{matches} matches in {files_with} files; the first {} are shown — narrow the pattern, the path or the glob{skipped}]",
                shown.len()
            ));
        } else {
            out.push_str(&format!(
                "\n[{matches} matches in {files_with} files{skipped}]"
            ));
        }
        out
    }
}

/// A glob (`*.rs`, `src/**/*.py`) as a matcher, or the `error:` to show.
pub(super) fn glob_set(glob: &str) -> Result<globset::GlobSet, String> {
    let g = globset::Glob::new(glob)
        .map_err(|e| format!("error: `{glob}` is not a valid glob: {e}"))?;
    globset::GlobSetBuilder::new()
        .add(g)
        .build()
        .map_err(|e| format!("error: `{glob}` is not a valid glob: {e}"))
}
