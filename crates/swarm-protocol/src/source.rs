//! An existing repository as a project's starting point
//! (docs/existing-repos.md).

use serde::{Deserialize, Serialize};

/// Where a project starts from when it does not start empty: a commit of an
/// existing repository, with its history. Stored with the project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSource {
    /// An absolute local path (the top level of the repository) or a git
    /// URL (`https://`, `ssh://`, `git@host:path`, `file://`).
    pub repo: String,
    /// The base branch (or other revision) as given; `None`: the branch
    /// `HEAD` names in the repository.
    #[serde(default)]
    pub base: Option<String>,
    /// The commit the project starts from. Resolved when the project is
    /// created for a local path, when it is cloned for a URL.
    #[serde(default)]
    pub base_commit: Option<String>,
    /// Push the delivery branch to the repository (a URL's remote; for a
    /// local path the branch is always written there).
    #[serde(default)]
    pub push: bool,
    /// The branch the last delivery wrote (`agentswarm/<project>`), once written.
    #[serde(default)]
    pub branch: Option<String>,
    /// With `review = "delivery"`: the delivery branch (and its push) waits
    /// for a person's approval (`agentswarm review PROJECT --approve`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl RepoSource {
    /// Whether `repo` is a URL rather than a local path.
    pub fn is_url(&self) -> bool {
        is_url(&self.repo)
    }
}

/// `https://…`, `ssh://…`, `git://…`, `file://…`, or scp-like `user@host:path`.
pub fn is_url(repo: &str) -> bool {
    if repo.contains("://") {
        return true;
    }
    // scp-like syntax: a colon before the first slash, and something before it.
    match (repo.find(':'), repo.find('/')) {
        (Some(c), Some(s)) => c > 0 && c < s && !repo.starts_with('/'),
        (Some(c), None) => c > 0,
        _ => false,
    }
}

/// The branch a project's delivery goes to: `agentswarm/<project>`.
pub fn delivery_branch(project: &str) -> String {
    format!("agentswarm/{project}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths_are_told_apart() {
        for u in [
            "https://github.com/a/b.git",
            "ssh://git@host/a.git",
            "git@github.com:a/b.git",
            "file:///srv/repo",
        ] {
            assert!(is_url(u), "{u}");
        }
        for p in ["/srv/repo", "./repo", "repo", "../a:b/c", "/a:b"] {
            assert!(!is_url(p), "{p}");
        }
    }
}
