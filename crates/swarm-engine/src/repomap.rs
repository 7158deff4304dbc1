//! What the planner sees of an existing repository (docs/existing-repos.md):
//! a bounded map — the size and languages, the README and the build and
//! test files, the tree, an outline of the source files' top-level
//! definitions — and the repository's own instructions for agents
//! (`AGENTS.md`, `CLAUDE.md`, `.github/copilot-instructions.md`), which the
//! workers get too.
//!
//! The map is built from git's listing of `HEAD` (no walk of the working
//! tree) and the files of the checkout, within a budget of characters
//! (`[repos] map_tokens` × 4): each section has a share of it and stops
//! when the share is spent, saying what it left out.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

/// Characters a token stands for, for the budget.
pub const CHARS_PER_TOKEN: usize = 4;

/// The most characters of agent instructions sent (planner and workers).
pub const MAX_INSTRUCTIONS_CHARS: usize = 16 * 1024;

/// Files a repository gives agents instructions in, in this order.
pub const INSTRUCTION_FILES: &[&str] =
    &["AGENTS.md", "CLAUDE.md", ".github/copilot-instructions.md"];

/// Build, test and CI files shown in full (up to their share).
const KEY_FILES: &[&str] = &[
    "Cargo.toml",
    "package.json",
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "requirements.txt",
    "requirements-dev.txt",
    "tox.ini",
    "pytest.ini",
    "go.mod",
    "Makefile",
    "makefile",
    "GNUmakefile",
    "CMakeLists.txt",
    "build.gradle",
    "pom.xml",
    "Gemfile",
    "composer.json",
    ".agentswarm.toml",
];

/// Whether `path` is a build, test or CI file worth showing.
fn is_key_file(path: &str) -> bool {
    KEY_FILES.contains(&path)
        || (path.starts_with(".github/workflows/")
            && (path.ends_with(".yml") || path.ends_with(".yaml")))
        || path == ".gitlab-ci.yml"
}

fn language(path: &str) -> Option<&'static str> {
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "rs" => "Rust",
        "py" => "Python",
        "js" | "mjs" | "cjs" | "jsx" => "JavaScript",
        "ts" | "tsx" => "TypeScript",
        "go" => "Go",
        "java" => "Java",
        "kt" => "Kotlin",
        "c" | "h" => "C",
        "cc" | "cpp" | "cxx" | "hpp" => "C++",
        "cs" => "C#",
        "rb" => "Ruby",
        "php" => "PHP",
        "swift" => "Swift",
        "sh" | "bash" => "Shell",
        "md" | "rst" => "Markdown",
        "html" | "css" | "scss" => "Web",
        "toml" | "yaml" | "yml" | "json" | "ini" | "cfg" => "Config",
        _ => return None,
    })
}

/// The top-level definitions of a source file (Python, Rust, JS/TS, Go),
/// as their first lines, at most `max` of them.
fn outline(path: &str, text: &str, max: usize) -> Vec<String> {
    let Some(lang) = language(path) else {
        return Vec::new();
    };
    let starts: &[&str] = match lang {
        "Python" => &["def ", "class ", "async def "],
        "Rust" => &[
            "pub fn ",
            "fn ",
            "pub struct ",
            "struct ",
            "pub enum ",
            "enum ",
            "pub trait ",
            "trait ",
            "impl",
            "pub mod ",
            "mod ",
            "pub async fn ",
            "async fn ",
            "pub type ",
        ],
        "JavaScript" | "TypeScript" => &[
            "function ",
            "export function ",
            "export default function",
            "class ",
            "export class ",
            "export const ",
            "export async function ",
            "export interface ",
            "interface ",
            "export type ",
            "async function ",
        ],
        "Go" => &["func ", "type "],
        _ => return Vec::new(),
    };
    text.lines()
        .filter(|l| starts.iter().any(|s| l.starts_with(s)))
        .take(max)
        .map(|l| {
            let l = l
                .trim_end()
                .trim_end_matches('{')
                .trim_end()
                .trim_end_matches(':');
            l.chars().take(120).collect()
        })
        .collect()
}

/// Reads at most `max` bytes of `root/path` as text (`None` for a binary
/// file, a symlink, or one that cannot be read).
fn read_text(root: &Path, path: &str, max: usize) -> Option<String> {
    use std::io::Read;
    let full = root.join(path);
    let meta = std::fs::symlink_metadata(&full).ok()?;
    if !meta.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    std::fs::File::open(&full)
        .ok()?
        .take(max as u64)
        .read_to_end(&mut buf)
        .ok()?;
    if buf.iter().take(8192).any(|b| *b == 0) {
        return None;
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn clip(text: &str, max: usize) -> (String, bool) {
    if text.len() <= max {
        return (text.to_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 20 => format!("{} MB", b >> 20),
        b if b >= 10 << 10 => format!("{} KB", b >> 10),
        b => format!("{b} B"),
    }
}

/// The repository's instructions for agents, concatenated with their file
/// names, at most [`MAX_INSTRUCTIONS_CHARS`]; `None` if it has none.
pub fn instructions(root: &Path) -> Option<String> {
    let mut s = String::new();
    for name in INSTRUCTION_FILES {
        let Some(text) = read_text(root, name, MAX_INSTRUCTIONS_CHARS + 1) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let _ = write!(s, "--- {name} ---\n{}\n", text.trim_end());
    }
    if s.is_empty() {
        return None;
    }
    let (mut s, cut) = clip(&s, MAX_INSTRUCTIONS_CHARS);
    if cut {
        s.push_str("\n[… truncated]\n");
    }
    Some(s)
}

/// The map of the repository checked out at `root` (its `HEAD`), at most
/// about `budget` characters.
pub fn map(root: &Path, budget: usize) -> swarm_git::Result<String> {
    let tree = swarm_git::source::tree_summary(root, "HEAD")?;
    Ok(render(root, &tree.entries, budget))
}

fn render(root: &Path, entries: &[(String, u64)], budget: usize) -> String {
    let total: u64 = entries.iter().map(|(_, s)| s).sum();
    let mut out = String::new();
    // Size and languages (by bytes).
    let mut langs: BTreeMap<&str, u64> = BTreeMap::new();
    for (p, size) in entries {
        if let Some(l) = language(p) {
            *langs.entry(l).or_default() += size;
        }
    }
    let mut langs: Vec<(&str, u64)> = langs.into_iter().collect();
    langs.sort_by_key(|l| std::cmp::Reverse(l.1));
    let _ = writeln!(
        out,
        "{} files, {} in all. Languages by size: {}.",
        entries.len(),
        human(total),
        if langs.is_empty() {
            "none recognised".to_owned()
        } else {
            langs
                .iter()
                .take(6)
                .map(|(l, b)| format!("{l} {}%", b * 100 / total.max(1)))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );

    // The README and the build, test and CI files: 35% of the budget.
    let files_budget = budget * 35 / 100;
    let mut used = 0;
    let readme = entries
        .iter()
        .map(|(p, _)| p.as_str())
        .find(|p| p.to_ascii_lowercase().starts_with("readme") && !p.contains('/'));
    let keys: Vec<&str> = readme
        .into_iter()
        .chain(
            entries
                .iter()
                .map(|(p, _)| p.as_str())
                .filter(|p| is_key_file(p)),
        )
        .collect();
    let mut left_out: Vec<&str> = Vec::new();
    for p in keys {
        let room = files_budget.saturating_sub(used);
        if room < 200 {
            left_out.push(p);
            continue;
        }
        let Some(text) = read_text(root, p, room.min(4000) + 1) else {
            continue;
        };
        let (text, cut) = clip(&text, room.min(4000));
        let _ = writeln!(
            out,
            "\n--- {p}{} ---\n{}",
            if cut { " (first part)" } else { "" },
            text.trim_end()
        );
        used += text.len() + p.len() + 16;
    }
    if !left_out.is_empty() {
        let _ = writeln!(
            out,
            "\n(also: {} — read them with read_file)",
            left_out.join(", ")
        );
    }

    // The tree: 30% of the budget. Directories collapse to counts when
    // their files do not fit.
    let tree_budget = budget * 30 / 100;
    let _ = writeln!(out, "\nTree (path, size):");
    let listing: String = entries
        .iter()
        .map(|(p, s)| format!("{p} {}\n", human(*s)))
        .collect();
    if listing.len() <= tree_budget {
        out.push_str(&listing);
    } else {
        out.push_str(&collapsed_tree(entries, tree_budget));
    }

    // The outline of source files: the rest.
    let outline_budget = budget.saturating_sub(out.len());
    let mut section = String::new();
    let mut skipped = 0usize;
    let mut sources: Vec<&(String, u64)> = entries
        .iter()
        .filter(|(p, s)| {
            *s <= 256 * 1024
                && matches!(
                    language(p),
                    Some("Rust" | "Python" | "JavaScript" | "TypeScript" | "Go")
                )
        })
        .collect();
    // Shallow paths first: the entry points and packages before the depths.
    sources.sort_by_key(|(p, _)| (p.matches('/').count(), p.clone()));
    for (p, _) in sources {
        if section.len() + 200 > outline_budget {
            skipped += 1;
            continue;
        }
        let Some(text) = read_text(root, p, 256 * 1024) else {
            continue;
        };
        let defs = outline(p, &text, 30);
        if defs.is_empty() {
            continue;
        }
        let block = format!("{p}:\n  {}\n", defs.join("\n  "));
        if section.len() + block.len() > outline_budget {
            skipped += 1;
            continue;
        }
        section.push_str(&block);
    }
    if !section.is_empty() {
        let _ = writeln!(out, "\nTop-level definitions:");
        out.push_str(&section);
    }
    if skipped > 0 {
        let _ = writeln!(
            out,
            "({skipped} more source files not outlined: the map's budget is spent)"
        );
    }
    out
}

/// The tree as directories with their file counts and sizes, the
/// shallowest first, then files of the top level, within `budget`.
fn collapsed_tree(entries: &[(String, u64)], budget: usize) -> String {
    let mut dirs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut top_files = Vec::new();
    for (p, s) in entries {
        let parts: Vec<&str> = p.split('/').collect();
        if parts.len() == 1 {
            top_files.push(format!("{p} {}\n", human(*s)));
        }
        for depth in 1..parts.len().min(4) {
            let d = parts[..depth].join("/");
            let e = dirs.entry(d).or_default();
            e.0 += 1;
            e.1 += s;
        }
    }
    let mut lines: Vec<(usize, String)> = dirs
        .into_iter()
        .map(|(d, (n, b))| {
            (
                d.matches('/').count(),
                format!("{d}/ ({n} files, {})\n", human(b)),
            )
        })
        .collect();
    lines.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = String::new();
    let mut dropped = 0;
    for line in top_files
        .into_iter()
        .chain(lines.into_iter().map(|(_, l)| l))
    {
        if out.len() + line.len() > budget {
            dropped += 1;
            continue;
        }
        out.push_str(&line);
    }
    if dropped > 0 {
        let _ = writeln!(
            out,
            "({dropped} more entries; list_files shows any directory)"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outlines_find_top_level_definitions() {
        let py = "import os\n\nclass Parser:\n    def inner(self):\n        pass\n\ndef main():\n    pass\n";
        assert_eq!(outline("a.py", py, 10), vec!["class Parser", "def main()"]);
        let rs =
            "use x;\npub struct Foo {\n}\nimpl Foo {\n    fn bar() {}\n}\npub fn run() -> u8 {\n";
        assert_eq!(
            outline("a.rs", rs, 10),
            vec!["pub struct Foo", "impl Foo", "pub fn run() -> u8"]
        );
        assert!(outline("a.txt", py, 10).is_empty());
    }

    #[test]
    fn the_map_stays_within_its_budget_on_a_large_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.md"), "# big\n".repeat(2000)).unwrap();
        let entries: Vec<(String, u64)> = (0..20_000)
            .map(|i| (format!("pkg{}/mod{}/file{i}.py", i % 50, i % 7), 1000))
            .chain(std::iter::once(("README.md".to_owned(), 12_000)))
            .collect();
        let budget = 6000 * CHARS_PER_TOKEN;
        let map = render(dir.path(), &entries, budget);
        assert!(map.len() <= budget + 500, "{} > {budget}", map.len());
        assert!(map.starts_with("20001 files"), "{map}");
        assert!(map.contains("Python 99%"), "{map}");
        assert!(map.contains("--- README.md (first part) ---"), "{map}");
        assert!(map.contains("pkg0/ (400 files"), "{map}");
    }

    #[test]
    fn instructions_are_gathered_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(instructions(dir.path()), None);
        std::fs::write(dir.path().join("AGENTS.md"), "Use tabs.\n").unwrap();
        std::fs::create_dir_all(dir.path().join(".github")).unwrap();
        std::fs::write(
            dir.path().join(".github/copilot-instructions.md"),
            "x".repeat(MAX_INSTRUCTIONS_CHARS * 2),
        )
        .unwrap();
        let s = instructions(dir.path()).unwrap();
        assert!(s.starts_with("--- AGENTS.md ---\nUse tabs.\n"), "{s}");
        assert!(s.contains("--- .github/copilot-instructions.md ---"));
        assert!(s.len() <= MAX_INSTRUCTIONS_CHARS + 20);
        assert!(s.ends_with("[… truncated]\n"));
    }
}
