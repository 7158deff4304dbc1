//! An existing repository as a project's starting point (docs/existing-repos.md):
//! reading the user's repository (its commits, whether its working tree is
//! dirty, what its tree holds), copying one commit with its history into
//! the project repository, and delivering `main` back as a branch, a patch
//! and a bundle.
//!
//! Every call goes through the same hardened git invocation as the rest of
//! this crate (no hooks, no fsmonitor, no system or global configuration).
//! Only the calls that talk to a remote ([`fetch_base`] from a URL,
//! [`push_branch`]) see the operator's global git configuration and ssh
//! agent, for credential helpers and keys; they run in the supervisor,
//! never in a worker, and the URL is given on the command line, so the
//! project repository's configuration never holds it.
//!
//! Nothing here writes into the user's repository but
//! [`deliver_branch`], which fetches `main` of the project repository into
//! one branch of it (`agentswarm/<project>`): no checkout, no index, no
//! working-tree file, no `FETCH_HEAD`.

use crate::{git, git_status_env, Error, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What git says about a directory given as a source repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInfo {
    /// The top level of its working tree, or its git directory when bare.
    pub root: PathBuf,
    pub bare: bool,
    /// The branch `HEAD` names, if it names one.
    pub head_branch: Option<String>,
}

/// Whether `dir` is (inside) a git repository, and which.
/// `Ok(None)`: git says it is not one. A repository git refuses to use
/// (one owned by another user: `safe.directory`) is an error saying so.
pub fn inspect(dir: &Path) -> Result<Option<SourceInfo>> {
    let args = ["rev-parse", "--is-bare-repository", "--absolute-git-dir"];
    let out = git_status_env(dir, Vec::new(), &args, None)?;
    if !out.exit.success() {
        if String::from_utf8_lossy(&out.stderr).contains("dubious ownership") {
            return Err(crate::command_error(&args, &out));
        }
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let bare = lines.next() == Some("true");
    let git_dir = PathBuf::from(lines.next().unwrap_or_default());
    let root = if bare {
        git_dir
    } else {
        let top = git(dir, &["rev-parse", "--show-toplevel"], None)?;
        PathBuf::from(String::from_utf8_lossy(&top.stdout).trim())
    };
    let head = git_status_env(
        &root,
        Vec::new(),
        &["symbolic-ref", "--quiet", "--short", "HEAD"],
        None,
    )?;
    let head_branch = head
        .exit
        .success()
        .then(|| String::from_utf8_lossy(&head.stdout).trim().to_owned())
        .filter(|b| !b.is_empty());
    Ok(Some(SourceInfo {
        root,
        bare,
        head_branch,
    }))
}

/// The commit `rev` names in the repository at `root`, if it names one.
pub fn resolve_commit(root: &Path, rev: &str) -> Result<Option<String>> {
    if rev.starts_with('-') {
        return Ok(None);
    }
    let spec = format!("{rev}^{{commit}}");
    let out = git_status_env(
        root,
        Vec::new(),
        &[
            "rev-parse",
            "--verify",
            "--quiet",
            "--end-of-options",
            &spec,
        ],
        None,
    )?;
    Ok(out
        .exit
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty()))
}

/// Tracked files with uncommitted changes (staged or not) in the working
/// tree at `root`. Untracked files are not counted: they are not part of any
/// commit the project could start from either way.
pub fn dirty_paths(root: &Path) -> Result<Vec<String>> {
    let out = git(
        root,
        &["status", "--porcelain=v1", "-z", "--untracked-files=no"],
        None,
    )?;
    Ok(crate::nul_split(&out.stdout)
        .into_iter()
        .map(|entry| entry.get(3..).unwrap_or_default().to_owned())
        .filter(|p| !p.is_empty())
        .collect())
}

/// What a commit's tree holds, for the checks made before a project starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeSummary {
    /// Blobs (files and symlinks).
    pub files: u64,
    /// Their sizes added up.
    pub bytes: u64,
    /// Paths of submodules (gitlinks, mode 160000).
    pub submodules: Vec<String>,
    /// `.gitattributes` files that route paths through Git LFS.
    pub lfs_attributes: Vec<String>,
    /// Every path of the tree with its size, in git's order.
    pub entries: Vec<(String, u64)>,
}

/// Lists the tree of `commit` (one `git ls-tree` and one `git cat-file` for
/// the `.gitattributes` files).
pub fn tree_summary(root: &Path, commit: &str) -> Result<TreeSummary> {
    let out = git(
        root,
        &["ls-tree", "-r", "-l", "-z", "--full-tree", commit],
        None,
    )?;
    let mut s = TreeSummary::default();
    let mut attributes: Vec<(String, String)> = Vec::new();
    for entry in crate::nul_split(&out.stdout) {
        // "<mode> SP <type> SP <object> SP+ <size> TAB <path>"
        let Some((meta, path)) = entry.split_once('\t') else {
            return Err(Error::Parse(format!("ls-tree: {entry}")));
        };
        let fields: Vec<&str> = meta.split_whitespace().collect();
        let [mode, kind, object, size] = fields.as_slice() else {
            return Err(Error::Parse(format!("ls-tree: {entry}")));
        };
        if *mode == "160000" || *kind == "commit" {
            s.submodules.push(path.to_owned());
            continue;
        }
        let size: u64 = size.parse().unwrap_or(0);
        s.files += 1;
        s.bytes += size;
        if path == ".gitattributes" || path.ends_with("/.gitattributes") {
            attributes.push((path.to_owned(), (*object).to_owned()));
        }
        s.entries.push((path.to_owned(), size));
    }
    if !attributes.is_empty() {
        let input: String = attributes.iter().map(|(_, o)| format!("{o}\n")).collect();
        let out = git(root, &["cat-file", "--batch"], Some(input.as_bytes()))?;
        // Each answer: "<object> blob <size>\n", the content, "\n".
        let mut rest: &[u8] = &out.stdout;
        for (path, _) in &attributes {
            let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
                break;
            };
            let header = String::from_utf8_lossy(&rest[..nl]).into_owned();
            let size: usize = header
                .rsplit(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let body = rest.get(nl + 1..nl + 1 + size).unwrap_or_default();
            if String::from_utf8_lossy(body).contains("filter=lfs") {
                s.lfs_attributes.push(path.clone());
            }
            rest = rest.get(nl + 2 + size..).unwrap_or_default();
        }
    }
    Ok(s)
}

/// The environment of git calls that reach a remote: the operator's global
/// git configuration (credential helpers, `url.*.insteadOf`) and ssh agent.
/// The hardened `-c` settings still outrank it.
fn remote_env() -> Vec<(OsString, OsString)> {
    let mut env = Vec::new();
    if let Some(sock) = std::env::var_os("SSH_AUTH_SOCK") {
        env.push(("SSH_AUTH_SOCK".into(), sock));
    }
    let global = std::env::var_os("XDG_CONFIG_HOME")
        .map(|d| PathBuf::from(d).join("git/config"))
        .filter(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".gitconfig"))
                .filter(|p| p.is_file())
        });
    if let Some(g) = global {
        env.push(("GIT_CONFIG_GLOBAL".into(), g.into_os_string()));
    }
    env
}

/// Runs git with [`remote_env`], `protocol.ext` off; fails on a non-zero exit.
fn git_remote(dir: &Path, args: &[&str]) -> Result<()> {
    let mut full = vec!["-c", "protocol.ext.allow=never"];
    full.extend_from_slice(args);
    let out = git_status_env(dir, remote_env(), &full, None)?;
    if !out.exit.success() {
        return Err(crate::command_error(args, &out));
    }
    Ok(())
}

/// Creates the project repository at `dest` (which must not exist) holding
/// `rev` of `source` (a path or a URL) with its history as `main`, checked
/// out. With `depth`, only that many commits of history (a shallow fetch:
/// for large remote repositories). The repository is made beside `dest`
/// and renamed into place, so a crash never leaves half of one there.
///
/// `rev` is a commit id, or for a URL also a branch name.
pub fn fetch_base(
    source: &str,
    rev: &str,
    dest: &Path,
    depth: Option<u32>,
    remote: bool,
) -> Result<String> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}-tmp-{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("repo"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<String> {
        git(&tmp, &["init", "-q", "-b", crate::MAIN], None)?;
        let refspec = format!("+{rev}:refs/heads/{}", crate::MAIN);
        let depth_arg = depth.map(|d| format!("--depth={d}"));
        let mut args = vec![
            "fetch",
            "-q",
            "--update-head-ok",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
        ];
        if let Some(d) = &depth_arg {
            args.push(d);
        }
        args.extend_from_slice(&["--end-of-options", source, &refspec]);
        if remote {
            git_remote(&tmp, &args)?;
        } else {
            git(&tmp, &args, None)?;
        }
        git(&tmp, &["reset", "-q", "--hard", crate::MAIN], None)?;
        let head = git(&tmp, &["rev-parse", "--verify", crate::MAIN], None)?;
        Ok(String::from_utf8_lossy(&head.stdout).trim().to_owned())
    })();
    match result {
        Ok(head) => {
            std::fs::rename(&tmp, dest)?;
            Ok(head)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Makes `branch` of the user's repository at `source` point at `commit`
/// of the project repository at `project_repo` (created or moved; refused
/// by git when that branch is checked out there). Writes objects and that
/// one ref, nothing else.
pub fn deliver_branch(
    source: &Path,
    project_repo: &Path,
    commit: &str,
    branch: &str,
) -> Result<()> {
    let refspec = format!("+{commit}:refs/heads/{branch}");
    let from = project_repo.to_string_lossy();
    git(
        source,
        &[
            "fetch",
            "-q",
            "--no-tags",
            "--no-write-fetch-head",
            "--no-recurse-submodules",
            "--end-of-options",
            &from,
            &refspec,
        ],
        None,
    )?;
    Ok(())
}

/// Pushes `commit` of the project repository at `project_repo` to
/// `branch` of `remote` (a URL or path), replacing what is there.
pub fn push_branch(project_repo: &Path, remote: &str, commit: &str, branch: &str) -> Result<()> {
    let refspec = format!("+{commit}:refs/heads/{branch}");
    git_remote(
        project_repo,
        &[
            "push",
            "-q",
            "--no-recurse-submodules",
            "--end-of-options",
            remote,
            &refspec,
        ],
    )
}

/// Every commit reachable from `rev` (its whole history, one `git
/// rev-list`).
pub fn reachable(repo: &Path, rev: &str) -> Result<std::collections::HashSet<String>> {
    let out = git(repo, &["rev-list", "--end-of-options", rev], None)?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// The difference from `base` to `head` as a patch that `git apply` takes
/// (binary files included).
pub fn diff(repo: &Path, base: &str, head: &str) -> Result<Vec<u8>> {
    let out = git(
        repo,
        &[
            "diff",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            "--full-index",
            base,
            head,
        ],
        None,
    )?;
    Ok(out.stdout)
}

/// One file's line counts: added, deleted (`None` for a binary file), path.
pub type FileStat = (Option<u64>, Option<u64>, String);

/// Per-file counts from `base` to `head`.
pub fn numstat(repo: &Path, base: &str, head: &str) -> Result<Vec<FileStat>> {
    let out = git(
        repo,
        &["diff", "--numstat", "-z", "--no-renames", base, head],
        None,
    )?;
    let mut rows = Vec::new();
    for field in crate::nul_split(&out.stdout) {
        let mut parts = field.splitn(3, '\t');
        let (Some(a), Some(d), Some(p)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        rows.push((a.parse().ok(), d.parse().ok(), p.to_owned()));
    }
    Ok(rows)
}

/// Writes a bundle at `file` holding `branch` (made to point at `head` in
/// the project repository) with every commit since `base`, so that
/// `git fetch <file> <branch>` in a clone of the source brings the work in.
/// `Ok(false)`: nothing since `base`, no bundle written (git refuses an
/// empty one).
pub fn bundle(repo: &Path, file: &Path, branch: &str, base: &str, head: &str) -> Result<bool> {
    if base == head {
        return Ok(false);
    }
    let full = format!("refs/heads/{branch}");
    git(repo, &["update-ref", &full, head], None)?;
    let tmp = file.with_extension(format!("tmp-{}", std::process::id()));
    let t = tmp.to_string_lossy();
    let exclude = format!("^{base}");
    let r = git(repo, &["bundle", "create", "-q", &t, &full, &exclude], None);
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, file)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(dir: &Path, script: &str) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn user_repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        sh(
            d.path(),
            "git init -q -b trunk && echo one > a.txt && mkdir src && echo 'fn x() {}' > src/lib.rs \
             && git add -A && git commit -qm first && echo two >> a.txt && git commit -qam second",
        );
        d
    }

    #[test]
    fn a_repository_is_inspected_and_a_plain_directory_is_not_one() {
        let d = user_repo();
        let info = inspect(&d.path().join("src")).unwrap().unwrap();
        assert_eq!(info.root, std::fs::canonicalize(d.path()).unwrap());
        assert!(!info.bare);
        assert_eq!(info.head_branch.as_deref(), Some("trunk"));
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(inspect(plain.path()).unwrap(), None);
        assert!(resolve_commit(d.path(), "trunk").unwrap().is_some());
        assert_eq!(resolve_commit(d.path(), "no-such-branch").unwrap(), None);
        assert_eq!(resolve_commit(d.path(), "--all").unwrap(), None);
    }

    #[test]
    fn dirty_tracked_files_are_found_untracked_ones_are_not() {
        let d = user_repo();
        std::fs::write(d.path().join("new.txt"), "untracked").unwrap();
        assert!(dirty_paths(d.path()).unwrap().is_empty());
        std::fs::write(d.path().join("a.txt"), "changed").unwrap();
        assert_eq!(dirty_paths(d.path()).unwrap(), vec!["a.txt".to_owned()]);
    }

    #[test]
    fn the_tree_summary_counts_files_and_finds_lfs_and_submodules() {
        let d = user_repo();
        let head = resolve_commit(d.path(), "HEAD").unwrap().unwrap();
        let s = tree_summary(d.path(), &head).unwrap();
        assert_eq!(s.files, 2);
        assert_eq!(s.bytes, 8 + 10);
        assert!(s.submodules.is_empty() && s.lfs_attributes.is_empty());
        sh(
            d.path(),
            "echo '*.bin filter=lfs diff=lfs merge=lfs -text' > .gitattributes \
             && git update-index --add --cacheinfo 160000,$(git rev-parse HEAD),vendor/lib \
             && git add .gitattributes && git commit -qm more",
        );
        let head = resolve_commit(d.path(), "HEAD").unwrap().unwrap();
        let s = tree_summary(d.path(), &head).unwrap();
        assert_eq!(s.submodules, vec!["vendor/lib".to_owned()]);
        assert_eq!(s.lfs_attributes, vec![".gitattributes".to_owned()]);
    }

    #[test]
    fn a_base_is_fetched_with_history_and_delivered_back_as_a_branch_only() {
        let d = user_repo();
        let base = resolve_commit(d.path(), "trunk~1").unwrap().unwrap();
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("repo");
        let head = fetch_base(&d.path().to_string_lossy(), &base, &dest, None, false).unwrap();
        assert_eq!(head, base);
        assert_eq!(
            std::fs::read_to_string(dest.join("a.txt")).unwrap(),
            "one\n"
        );
        let config = std::fs::read_to_string(dest.join(".git/config")).unwrap();
        assert!(!config.contains("remote"), "{config}");
        assert!(!dest.join(".git/FETCH_HEAD").exists());
        // Work on main, then deliver it.
        sh(
            &dest,
            "echo three > b.txt && git add b.txt && git commit -qm work",
        );
        let main = resolve_commit(&dest, "main").unwrap().unwrap();
        std::fs::write(d.path().join("a.txt"), "uncommitted\n").unwrap();
        deliver_branch(d.path(), &dest, &main, "agentswarm/p1").unwrap();
        assert_eq!(
            resolve_commit(d.path(), "agentswarm/p1")
                .unwrap()
                .as_deref(),
            Some(main.as_str())
        );
        // The user's checkout and uncommitted work are untouched.
        assert_eq!(
            std::fs::read_to_string(d.path().join("a.txt")).unwrap(),
            "uncommitted\n"
        );
        assert!(!d.path().join("b.txt").exists());
        let patch = diff(&dest, &base, &main).unwrap();
        assert!(String::from_utf8_lossy(&patch).contains("+three"));
        let rows = numstat(&dest, &base, &main).unwrap();
        assert_eq!(rows, vec![(Some(1), Some(0), "b.txt".to_owned())]);
        let history = reachable(&dest, &base).unwrap();
        assert!(history.contains(&base) && !history.contains(&main));
        assert_eq!(history.len(), 1);
        let file = work.path().join("x.bundle");
        assert!(bundle(&dest, &file, "agentswarm/p1", &base, &main).unwrap());
        assert!(!bundle(&dest, &file, "agentswarm/p1", &main, &main).unwrap());
        let out = git(
            d.path(),
            &["bundle", "verify", "-q", &file.to_string_lossy()],
            None,
        );
        assert!(out.is_ok(), "{out:?}");
    }
}
