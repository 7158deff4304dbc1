//! An existing repository's own checks and set-up (docs/existing-repos.md):
//! its `.agentswarm.toml` (`verify`, `setup`, `copy`), and the verify
//! commands detected from its build files when it names none.
//!
//! Which commands verify runs: the plan's, else `.agentswarm.toml`'s
//! `verify`, else the detected ones; the run says which and why.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use swarm_protocol::{Plan, TaskKind};

/// The per-repository configuration file, at the repository's top level.
pub const REPO_CONFIG: &str = ".agentswarm.toml";

/// `.agentswarm.toml`. Unknown keys are an error, as in agentswarm.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// The commands that check the project (its tests), run in order.
    #[serde(default)]
    pub verify: Vec<String>,
    /// Commands run once in each new worktree before a worker starts there
    /// (dependency install, code generation), in the sandbox.
    #[serde(default)]
    pub setup: Vec<String>,
    /// Files copied into each worktree and never committed:
    /// `{".env.example" = ".env"}` (source in the repository → destination).
    #[serde(default)]
    pub copy: BTreeMap<String, String>,
}

/// Reads `.agentswarm.toml` of the checkout at `root`, if it has one. A
/// file that does not parse is an error naming the problem.
pub fn repo_config(root: &Path) -> Result<Option<RepoConfig>> {
    let path = root.join(REPO_CONFIG);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::InvalidSource(format!(
                "cannot read {REPO_CONFIG}: {e}"
            )))
        }
    };
    let config: RepoConfig = toml::from_str(&text).map_err(|e| {
        Error::InvalidSource(format!(
            "the repository's {REPO_CONFIG} is invalid: {e}; it takes `verify = [\"…\"]`, \
             `setup = [\"…\"]` and `[copy]` (\"source\" = \"destination\")"
        ))
    })?;
    for (from, to) in &config.copy {
        for p in [from, to] {
            let bad = p.is_empty()
                || p.starts_with('/')
                || p.split('/')
                    .any(|c| c == ".." || c == ".git" || c.is_empty());
            if bad {
                return Err(Error::InvalidSource(format!(
                    "the repository's {REPO_CONFIG} copies {from:?} to {to:?}: paths must be \
                     relative, inside the repository, outside .git"
                )));
            }
        }
    }
    Ok(Some(config))
}

/// Verify commands and why they were picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    pub commands: Vec<String>,
    /// E.g. `.agentswarm.toml`, `detected: Cargo.toml`.
    pub why: String,
}

/// The repository's checks when a plan names none: `.agentswarm.toml`'s
/// `verify`, else detected from its files (`cargo test`, `pytest` or
/// `python3 -m unittest`, `npm test`, `go test ./...`, `make test`).
pub fn default_checks(root: &Path, config: Option<&RepoConfig>) -> Option<Checks> {
    if let Some(c) = config.filter(|c| !c.verify.is_empty()) {
        return Some(Checks {
            commands: c.verify.clone(),
            why: format!("{REPO_CONFIG} `verify`"),
        });
    }
    detect(root)
}

fn read(root: &Path, name: &str) -> Option<String> {
    let path = root.join(name);
    if !std::fs::symlink_metadata(&path).ok()?.is_file() {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// The checks detected from the build files at the top level of `root`.
pub fn detect(root: &Path) -> Option<Checks> {
    let found = |commands: &[&str], why: &str| {
        Some(Checks {
            commands: commands.iter().map(|c| (*c).to_owned()).collect(),
            why: format!("detected: {why}"),
        })
    };
    if read(root, "Cargo.toml").is_some() {
        return found(&["cargo test"], "Cargo.toml");
    }
    let pyproject = read(root, "pyproject.toml").unwrap_or_default();
    let setup_cfg = read(root, "setup.cfg").unwrap_or_default();
    let tox = read(root, "tox.ini").unwrap_or_default();
    if read(root, "pytest.ini").is_some()
        || read(root, "conftest.py").is_some()
        || pyproject.contains("[tool.pytest")
        || setup_cfg.contains("[tool:pytest]")
        || tox.contains("[pytest]")
    {
        return found(&["python3 -m pytest -q"], "a pytest configuration");
    }
    let python_project = !pyproject.is_empty()
        || !setup_cfg.is_empty()
        || read(root, "setup.py").is_some()
        || read(root, "requirements.txt").is_some();
    let tests_dir = root.join("tests").is_dir();
    if python_project || has_python_tests(root) {
        if tests_dir {
            return found(
                &["python3 -m unittest discover -s tests -v"],
                "Python tests under tests/",
            );
        }
        return found(&["python3 -m unittest discover -v"], "Python test files");
    }
    if let Some(pkg) = read(root, "package.json") {
        let has_test = serde_json::from_str::<serde_json::Value>(&pkg)
            .ok()
            .and_then(|v| v["scripts"]["test"].as_str().map(str::to_owned))
            .is_some_and(|t| !t.contains("no test specified"));
        if has_test {
            return found(&["npm test"], "package.json scripts.test");
        }
    }
    if read(root, "go.mod").is_some() {
        return found(&["go test ./..."], "go.mod");
    }
    for name in ["Makefile", "makefile", "GNUmakefile"] {
        if let Some(text) = read(root, name) {
            if text.lines().any(|l| l.starts_with("test:")) {
                return found(&["make test"], &format!("a `test` target in {name}"));
            }
        }
    }
    None
}

/// Python test files at the top level or under `tests/`.
fn has_python_tests(root: &Path) -> bool {
    let is_test = |name: &str| name.starts_with("test") && name.ends_with(".py");
    let listed = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|it| {
                it.flatten()
                    .any(|e| is_test(&e.file_name().to_string_lossy()))
            })
            .unwrap_or(false)
    };
    listed(root) || listed(&root.join("tests"))
}

/// Gives the verify task of `plan` the `checks` when the plan names no
/// command; returns why the commands in force were picked.
pub fn fill_verify(plan: &mut Plan, checks: Option<&Checks>) -> Option<String> {
    let verify = plan.tasks.iter_mut().find(|t| t.kind == TaskKind::Verify)?;
    if !verify.commands.is_empty() {
        return Some("the plan".into());
    }
    let c = checks?;
    verify.commands = c.commands.clone();
    Some(c.why.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let path = d.path().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        d
    }

    fn detected(files: &[(&str, &str)]) -> Option<Vec<String>> {
        detect(dir_with(files).path()).map(|c| c.commands)
    }

    #[test]
    fn checks_are_detected_from_build_files() {
        let v = |s: &str| Some(vec![s.to_owned()]);
        assert_eq!(detected(&[("Cargo.toml", "[package]")]), v("cargo test"));
        assert_eq!(
            detected(&[("pyproject.toml", "[tool.pytest.ini_options]\n")]),
            v("python3 -m pytest -q")
        );
        assert_eq!(
            detected(&[("tests/test_a.py", "")]),
            v("python3 -m unittest discover -s tests -v")
        );
        assert_eq!(
            detected(&[("test_a.py", "")]),
            v("python3 -m unittest discover -v")
        );
        assert_eq!(
            detected(&[("package.json", r#"{"scripts": {"test": "jest"}}"#)]),
            v("npm test")
        );
        assert_eq!(
            detected(&[(
                "package.json",
                r#"{"scripts": {"test": "echo \"Error: no test specified\" && exit 1"}}"#
            )]),
            None
        );
        assert_eq!(detected(&[("go.mod", "module x")]), v("go test ./..."));
        assert_eq!(
            detected(&[("Makefile", "all:\n\ntest: all\n\tx\n")]),
            v("make test")
        );
        assert_eq!(detected(&[("README.md", "hi")]), None);
    }

    #[test]
    fn the_repository_config_wins_over_detection_and_is_checked() {
        let d = dir_with(&[
            ("Cargo.toml", ""),
            (
                ".agentswarm.toml",
                "verify = [\"make check\"]\nsetup = [\"make deps\"]\n[copy]\n\".env.example\" = \".env\"\n",
            ),
        ]);
        let config = repo_config(d.path()).unwrap().unwrap();
        assert_eq!(config.setup, vec!["make deps".to_owned()]);
        assert_eq!(config.copy[".env.example"], ".env");
        let c = default_checks(d.path(), Some(&config)).unwrap();
        assert_eq!(c.commands, vec!["make check".to_owned()]);
        assert_eq!(c.why, ".agentswarm.toml `verify`");
        let bad = dir_with(&[(".agentswarm.toml", "verfy = []\n")]);
        let e = repo_config(bad.path()).unwrap_err().to_string();
        assert!(e.contains("invalid") && e.contains("verfy"), "{e}");
        let escape = dir_with(&[(".agentswarm.toml", "[copy]\n\"../x\" = \".env\"\n")]);
        assert!(repo_config(escape.path()).is_err());
        assert_eq!(
            repo_config(tempfile::tempdir().unwrap().path()).unwrap(),
            None
        );
    }
}
