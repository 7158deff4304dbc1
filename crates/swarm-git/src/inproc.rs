//! Git in this process, through libgit2 (`git2`), for what sits on every
//! task's path: the merge into `main` and the listing of a commit's changes.
//! Each of these was a `git` process (two for a merge: `merge` forks `stash
//! create`), and the merge queue is serial, so at a cap of several workers
//! they were most of the span (docs/benchmarks.md). A merge whose result
//! could differ from git's merge-ort is left to `git merge-tree` (see
//! [`merge_into_main`]).
//!
//! What libgit2 is given to work on cannot run a program: it has no hooks,
//! no filesystem monitor, no external filter, merge or diff drivers (only
//! the built-in ones), and it never looks at a worktree here — the
//! repository is opened bare, so `main`'s checkout is neither read nor
//! written by a merge. The system, global and XDG configuration files are
//! not read (their search paths are emptied before the first open), like
//! the `git` calls that run with `GIT_CONFIG_NOSYSTEM=1` and
//! `GIT_CONFIG_GLOBAL=/dev/null`; only the repository's own configuration,
//! which no task can write, applies.

use crate::{Change, ChangeKind, Error, Result, AUTHOR_EMAIL, AUTHOR_NAME, MAIN};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

impl From<git2::Error> for Error {
    fn from(e: git2::Error) -> Self {
        Error::Lib(e.message().to_owned())
    }
}

static SEARCH_PATHS: Once = Once::new();

/// Opens the repository whose git directory is `git_dir`, bare: no worktree
/// is read or written, and (bare) no reflog is written for `main`.
pub(crate) fn open(git_dir: &Path) -> Result<git2::Repository> {
    settings();
    Ok(git2::Repository::open_bare(git_dir)?)
}

/// Sets `core.logAllRefUpdates = false` in the repository's own
/// configuration unless it is already (`git init` writes `true` for a
/// repository with a worktree). See `Repo::write_settings`.
pub(crate) fn turn_off_reflogs(git_dir: &Path) -> Result<()> {
    if !reflogs_off(git_dir)? {
        let repo = open(git_dir)?;
        let mut local = repo.config()?.open_level(git2::ConfigLevel::Local)?;
        local.set_bool(REFLOGS, false)?;
    }
    Ok(())
}

/// Whether the repository's configuration has `core.logAllRefUpdates =
/// false`. Reads only the repository's own configuration file, which no
/// task can write.
pub(crate) fn reflogs_off(git_dir: &Path) -> Result<bool> {
    let repo = open(git_dir)?;
    let local = repo.config()?.open_level(git2::ConfigLevel::Local)?;
    Ok(local.get_bool(REFLOGS).ok() == Some(false))
}

/// The setting that decides whether ref updates write reflogs.
pub(crate) const REFLOGS: &str = "core.logAllRefUpdates";

/// Opens libgit2's process-wide settings the way every use here needs them
/// (see [`open`]).
pub(crate) fn settings() {
    SEARCH_PATHS.call_once(|| {
        for level in [
            git2::ConfigLevel::System,
            git2::ConfigLevel::XDG,
            git2::ConfigLevel::Global,
            git2::ConfigLevel::ProgramData,
        ] {
            // SAFETY: libgit2's options are process-wide and must not change
            // while another thread uses libgit2; every use of libgit2 in
            // this crate calls this function first, and this `Once` makes
            // the others wait until it has completed.
            if let Err(e) = unsafe { git2::opts::set_search_path(level, "") } {
                tracing::warn!(error = %e, "cannot clear libgit2's configuration search path");
            }
        }
        // With strict object creation (libgit2's default), writing a tree
        // first checks that every object it names exists: one loose-object
        // lookup per entry, 6–10 ms for a directory of 1,000 files, which
        // made the merge queue the bottleneck of a large plan
        // (docs/benchmarks.md). Every tree written here is made of entries
        // read from existing trees (a merge) or of blobs just written from
        // the worktree (a commit). What a branch brings to a merge comes
        // from a confined attempt and is checked before it can reach `main`,
        // once an entry (`objects_present`).
        git2::opts::strict_object_creation(false);
    });
}

/// The result of [`merge_into_main`].
pub(crate) enum Merged {
    /// `main` now points at `commit`.
    Commit(String),
    /// Nothing was written to `main`; these paths conflicted.
    Conflict(Vec<String>),
}

/// Merges decided in process, and by `git merge-tree` (see [`merge_into_main`]).
static IN_PROCESS: AtomicU64 = AtomicU64::new(0);
static BY_GIT: AtomicU64 = AtomicU64::new(0);

/// How many merges this process decided in process and how many it left to
/// `git merge-tree`.
pub fn merge_counts() -> (u64, u64) {
    (
        IN_PROCESS.load(Ordering::Relaxed),
        BY_GIT.load(Ordering::Relaxed),
    )
}

/// Merges `branch` into `main` like `git merge --no-ff -m <message>`: a merge
/// commit whose parents are `main` and the branch, with the tree git's
/// merge-ort would make.
///
/// When neither side deleted (or changed the type of) a path since their one
/// merge base and no attributes apply to the changed paths, there is nothing
/// for merge-ort's rename detection (of files or directories) or attribute
/// lookups to act on, and libgit2's three-way merge without rename detection
/// gives git's tree and conflicts: that is done in this process, which is
/// the common case of a task that adds and edits files. Otherwise `git
/// merge-tree --write-tree` (merge-ort itself, on objects only) decides, one
/// process. libgit2's own rename detection is not used: it misses renames of
/// small files that git finds and merges some rename/rename cases git
/// reports as conflicts (the property test against `git merge` found both).
///
/// Either way the commit is written and `main` moved here, only if it still
/// points where it did when the merge began (a compare-and-swap on the ref,
/// under git's lock file), so it is never left half-merged: a crash leaves
/// at most unreferenced objects.
pub(crate) fn merge_into_main(root: &Path, branch: &str, message: &str) -> Result<Merged> {
    let repo = open(&root.join(".git"))?;
    let main_ref = format!("refs/heads/{MAIN}");
    let ours_id = repo.refname_to_id(&main_ref)?;
    let theirs_id = repo.refname_to_id(&format!("refs/heads/{branch}"))?;
    let ours = repo.find_commit(ours_id)?;
    let theirs = repo.find_commit(theirs_id)?;
    // A shallow repository (an existing repository cloned with a depth):
    // libgit2's history walks stop at the missing parents with an error, so
    // git, which knows the shallow boundary, walks it.
    let shallow = root.join(".git/shallow").exists();
    // Already merged: `git merge --no-ff` says "Already up to date" and makes
    // no commit.
    let (merged, bases) = if shallow {
        let (t, o) = (theirs_id.to_string(), ours_id.to_string());
        let args = ["merge-base", "--is-ancestor", &t, &o];
        let out = crate::git_status(root, &args, None)?;
        match out.exit.code {
            Some(0) => (true, Vec::new()),
            Some(1) => (false, Vec::new()),
            _ => return Err(crate::command_error(&args, &out)),
        }
    } else {
        // One walk answers both questions: the branch is already in `main`
        // exactly when it is their merge base.
        let bases: Vec<git2::Oid> = repo
            .merge_bases(ours_id, theirs_id)?
            .iter()
            .copied()
            .collect();
        (bases == [theirs_id], bases)
    };
    if theirs_id == ours_id || merged {
        return Ok(Merged::Commit(ours_id.to_string()));
    }
    objects_present(&repo, &ours.tree()?, &theirs.tree()?)?;
    let simple = if shallow {
        None
    } else {
        simple_merge(&repo, root, &bases, &ours, &theirs)?
    };
    let decided = match simple {
        Some(d) => {
            IN_PROCESS.fetch_add(1, Ordering::Relaxed);
            d
        }
        None => {
            BY_GIT.fetch_add(1, Ordering::Relaxed);
            merge_tree(root, ours_id, theirs_id)?
        }
    };
    let tree_id = match decided {
        Ok(tree) => tree,
        Err(mut paths) => {
            paths.sort();
            paths.dedup();
            return Ok(Merged::Conflict(paths));
        }
    };
    let tree = repo.find_tree(tree_id)?;
    let sig = git2::Signature::now(AUTHOR_NAME, AUTHOR_EMAIL)?;
    // `git merge -m` cleans the message up the same way (whitespace mode:
    // trailing spaces and blank lines go, the message ends in a newline).
    let message = git2::message_prettify(message, None)?;
    let commit = repo.commit(None, &sig, &sig, &message, &tree, &[&ours, &theirs])?;
    repo.reference_matching(&main_ref, commit, true, ours_id, "merge")?;
    Ok(Merged::Commit(commit.to_string()))
}

/// Checks that every object the branch's tree names where it differs from
/// `main`'s is in the object store, of the kind its entry says: what
/// libgit2's strict object creation checked for every entry of every tree
/// written (off here, see [`settings`]), for the entries that can be new.
/// The branch's objects were written by an attempt's confined git, so they
/// are not trusted; `main`'s were checked when they came in.
fn objects_present(
    repo: &git2::Repository,
    ours: &git2::Tree<'_>,
    theirs: &git2::Tree<'_>,
) -> Result<()> {
    let odb = repo.odb()?;
    let mut opts = git2::DiffOptions::new();
    opts.include_typechange(true).ignore_submodules(true);
    let diff = repo.diff_tree_to_tree(Some(ours), Some(theirs), Some(&mut opts))?;
    for d in diff.deltas() {
        let file = d.new_file();
        let want = match file.mode() {
            git2::FileMode::Blob | git2::FileMode::BlobExecutable | git2::FileMode::Link => {
                git2::ObjectType::Blob
            }
            // Deleted on the branch, or a gitlink (a commit of another
            // repository, not in this store).
            _ => continue,
        };
        let path = file
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        match odb.read_header(file.id()) {
            Ok((_, kind)) if kind == want => {}
            Ok((_, kind)) => {
                return Err(Error::Lib(format!(
                    "the branch's tree names {path} as a {want} but {} is a {kind}",
                    file.id()
                )))
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => {
                return Err(Error::Lib(format!(
                    "the branch's tree names {path} as {}, which is not in the object store",
                    file.id()
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A merge's tree, or its conflicting paths.
type Decided = std::result::Result<git2::Oid, Vec<String>>;

/// The merge in process, or `None` when it could differ from merge-ort's:
/// more than one merge base, a path deleted or changed in type on either
/// side, a `.gitattributes` changed or governing a changed path, or
/// `info/attributes` present.
fn simple_merge(
    repo: &git2::Repository,
    root: &Path,
    bases: &[git2::Oid],
    ours: &git2::Commit<'_>,
    theirs: &git2::Commit<'_>,
) -> Result<Option<Decided>> {
    let [base] = bases else {
        return Ok(None);
    };
    if root.join(".git/info/attributes").exists() {
        return Ok(None);
    }
    let base_tree = repo.find_commit(*base)?.tree()?;
    let our_tree = ours.tree()?;
    let their_tree = theirs.tree()?;
    for side in [&our_tree, &their_tree] {
        let mut opts = git2::DiffOptions::new();
        opts.include_typechange(true);
        let diff = repo.diff_tree_to_tree(Some(&base_tree), Some(side), Some(&mut opts))?;
        for d in diff.deltas() {
            if !matches!(d.status(), git2::Delta::Added | git2::Delta::Modified) {
                return Ok(None);
            }
            let Some(path) = d.new_file().path_bytes() else {
                return Ok(None);
            };
            if attributes_apply(&[&base_tree, &our_tree, &their_tree], path)? {
                return Ok(None);
            }
        }
    }
    let mut opts = git2::MergeOptions::new();
    opts.find_renames(false);
    let mut index = repo.merge_trees(&base_tree, &our_tree, &their_tree, Some(&opts))?;
    if index.has_conflicts() {
        let mut paths = Vec::new();
        for c in index.conflicts()? {
            let c = c?;
            // Without renames every entry of a conflict has the same path.
            for e in [c.ancestor, c.our, c.their].into_iter().flatten() {
                paths.push(String::from_utf8_lossy(&e.path).into_owned());
            }
        }
        return Ok(Some(Err(paths)));
    }
    Ok(Some(Ok(index.write_tree_to(repo)?)))
}

/// Whether `path` is a `.gitattributes` or a `.gitattributes` in one of its
/// directories (in any of `trees`) could apply to it.
fn attributes_apply(trees: &[&git2::Tree<'_>], path: &[u8]) -> Result<bool> {
    let mut dir: &[u8] = path;
    loop {
        let name = dir.rsplit(|b| *b == b'/').next().unwrap_or(dir);
        if dir.len() == path.len() && name == b".gitattributes" {
            return Ok(true);
        }
        dir = match dir.iter().rposition(|b| *b == b'/') {
            Some(i) => &dir[..i],
            None => &[],
        };
        let mut candidate = dir.to_vec();
        if !candidate.is_empty() {
            candidate.push(b'/');
        }
        candidate.extend_from_slice(b".gitattributes");
        let candidate = Path::new(std::ffi::OsStr::from_bytes(&candidate));
        for t in trees {
            match t.get_path(candidate) {
                Ok(_) => return Ok(true),
                Err(e) if e.code() == git2::ErrorCode::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        if dir.is_empty() {
            return Ok(false);
        }
    }
}

/// `git merge-tree --write-tree` of `ours` and `theirs`: merge-ort on objects
/// only (no worktree, no index), the tree written to the object store.
fn merge_tree(root: &Path, ours: git2::Oid, theirs: git2::Oid) -> Result<Decided> {
    let (o, t) = (ours.to_string(), theirs.to_string());
    let args = [
        "merge-tree",
        "--write-tree",
        "-z",
        "--name-only",
        "--no-messages",
        &o,
        &t,
    ];
    let out = crate::git_status(root, &args, None)?;
    let fields = crate::nul_split(&out.stdout);
    let tree = fields
        .first()
        .and_then(|f| git2::Oid::from_str(f.trim()).ok());
    match (out.exit.code, tree) {
        (Some(0), Some(tree)) => Ok(Ok(tree)),
        // A file in a file/directory conflict is named `<path>~<commit>`
        // (where git merge says `~HEAD`): the path is what the task must know.
        (Some(1), Some(_)) if fields.len() > 1 => Ok(Err(fields[1..]
            .iter()
            .map(|p| match p.rsplit_once('~') {
                Some((path, side)) if side == o || side == t => path.to_owned(),
                _ => p.clone(),
            })
            .collect())),
        _ => Err(crate::command_error(&args, &out)),
    }
}

/// `git worktree prune`: the administrative directory of every worktree
/// whose directory (or its `.git` link) is gone is removed, unless the
/// worktree is locked (as `git worktree add` locks one it is still making).
/// Unlike git, an empty `.git/worktrees` is left in place: a worker's
/// Landlock domain may name it (see `Repo::remove_worktree`).
pub(crate) fn prune_worktrees(git_dir: &Path) -> Result<()> {
    let repo = open(git_dir)?;
    // Listed from the directory: libgit2's list leaves out entries it
    // cannot read, which git prunes.
    let entries = match std::fs::read_dir(git_dir.join("worktrees")) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        // A name that is not UTF-8: not one this program made.
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let name = name.as_str();
        let admin = entry.path();
        match repo.find_worktree(name) {
            Ok(wt) => {
                if wt.is_prunable(None)? {
                    wt.prune(None)?;
                }
            }
            // An administrative directory libgit2 cannot read (no `gitdir`
            // file: git prunes it too), unless it is being made.
            Err(e) if !admin.join("locked").exists() => {
                tracing::debug!(worktree = name, error = %e, "pruning an unreadable worktree entry");
                let removed = if entry.file_type()?.is_dir() {
                    std::fs::remove_dir_all(&admin)
                } else {
                    std::fs::remove_file(&admin)
                };
                match removed {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(_) => {}
        }
    }
    Ok(())
}

/// Every local branch whose name starts with `prefix` (`refs/heads/` left
/// off), like `git for-each-ref --format=%(refname:short) refs/heads/<prefix>`.
pub(crate) fn branches(git_dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let repo = open(git_dir)?;
    let mut names = Vec::new();
    for r in repo.references()? {
        let r = r?;
        let Some(name) = r.name_bytes().strip_prefix(b"refs/heads/") else {
            continue;
        };
        if name.starts_with(prefix.as_bytes()) {
            names.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Deletes each of the local branches `names`, like `git branch -D`: one
/// checked out in a worktree is kept. Returns how many went.
pub(crate) fn delete_branches(git_dir: &Path, names: &[String]) -> Result<usize> {
    let repo = open(git_dir)?;
    // Read once: `Branch::delete` would open every worktree for every branch.
    let checked_out = checked_out_branches(git_dir)?;
    let mut deleted = 0;
    for name in names {
        let full = format!("refs/heads/{name}");
        if checked_out.contains(full.as_bytes()) {
            tracing::debug!(branch = %name, "branch kept: a worktree has it checked out");
            continue;
        }
        match repo.find_reference(&full) {
            Ok(mut r) => {
                r.delete()?;
                deleted += 1;
            }
            Err(e) if e.code() == git2::ErrorCode::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}

/// The refs the main worktree's and every linked worktree's `HEAD` name
/// (a detached `HEAD` names none).
fn checked_out_branches(git_dir: &Path) -> Result<std::collections::HashSet<Vec<u8>>> {
    let mut heads = vec![git_dir.join("HEAD")];
    match std::fs::read_dir(git_dir.join("worktrees")) {
        Ok(entries) => {
            for entry in entries {
                heads.push(entry?.path().join("HEAD"));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let mut names = std::collections::HashSet::new();
    for head in heads {
        // A worktree's `HEAD` is writable from the workers' git domain.
        let Some(text) = crate::read_admin_file(&head) else {
            continue;
        };
        if let Some(target) = text.strip_prefix("ref: ") {
            names.insert(target.trim_end().as_bytes().to_vec());
        }
    }
    Ok(names)
}

/// Paths `commit` changed relative to its first parent (every path of its
/// tree for a root commit), like `git diff-tree -r --name-status --root`
/// without rename detection.
pub(crate) fn changed_files(git_dir: &Path, commit: &str) -> Result<Vec<Change>> {
    let repo = open(git_dir)?;
    let commit = repo.revparse_single(commit)?.peel_to_commit()?;
    let tree = commit.tree()?;
    let parent = match commit.parent(0) {
        Ok(p) => Some(p.tree()?),
        Err(_) => None,
    };
    let mut opts = git2::DiffOptions::new();
    opts.include_typechange(true).ignore_submodules(false);
    let diff = repo.diff_tree_to_tree(parent.as_ref(), Some(&tree), Some(&mut opts))?;
    let mut changes = Vec::new();
    for d in diff.deltas() {
        let kind = match d.status() {
            git2::Delta::Added => ChangeKind::Added,
            git2::Delta::Modified => ChangeKind::Modified,
            git2::Delta::Deleted => ChangeKind::Deleted,
            _ => ChangeKind::Other,
        };
        let file = if kind == ChangeKind::Deleted {
            d.old_file()
        } else {
            d.new_file()
        };
        let Some(path) = file.path_bytes() else {
            continue;
        };
        changes.push(Change {
            path: String::from_utf8_lossy(path).into_owned(),
            kind,
        });
    }
    Ok(changes)
}

/// Every path `main`'s tree holds (files, symlinks and gitlinks), sorted like
/// `git ls-files`.
pub(crate) fn tracked_files(git_dir: &Path) -> Result<Vec<String>> {
    let repo = open(git_dir)?;
    let tree = repo
        .find_reference(&format!("refs/heads/{MAIN}"))?
        .peel_to_tree()?;
    let mut paths = Vec::new();
    list_tree(&repo, &tree, &mut Vec::new(), &mut paths)?;
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .collect())
}

/// Appends the path of every non-tree entry below `tree` (named `prefix`).
/// By bytes: a name that is not UTF-8 is listed lossily, not skipped.
fn list_tree(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    prefix: &mut Vec<u8>,
    out: &mut Vec<Vec<u8>>,
) -> Result<()> {
    for entry in tree.iter() {
        let len = prefix.len();
        prefix.extend_from_slice(entry.name_bytes());
        if entry.kind() == Some(git2::ObjectType::Tree) {
            prefix.push(b'/');
            let sub = repo.find_tree(entry.id())?;
            list_tree(repo, &sub, prefix, out)?;
        } else {
            out.push(prefix.clone());
        }
        prefix.truncate(len);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A task branch whose tree names an object that is not there (or one
    /// of another kind): with strict object creation off, libgit2 would
    /// write the merged tree and `main` would name it.
    #[test]
    fn a_branch_naming_missing_or_mistyped_objects_does_not_reach_main() {
        let dir = tempfile::tempdir().unwrap();
        let repo = crate::Repo::init(dir.path().join("repo"), "p").unwrap();
        let root = repo.root().to_owned();
        let git = open(&root.join(".git")).unwrap();
        let main = git.refname_to_id("refs/heads/main").unwrap();
        let main_commit = git.find_commit(main).unwrap();
        let missing = git2::Oid::from_str("1234567890123456789012345678901234567890").unwrap();
        let a_tree = main_commit.tree().unwrap().id();
        for (branch, target) in [("task/missing/1", missing), ("task/mistyped/1", a_tree)] {
            let mut tb = git.treebuilder(Some(&main_commit.tree().unwrap())).unwrap();
            tb.insert("planted.txt", target, 0o100644).unwrap();
            let tree = git.find_tree(tb.write().unwrap()).unwrap();
            let sig = git2::Signature::now("t", "t@example.invalid").unwrap();
            let commit = git
                .commit(None, &sig, &sig, "t", &tree, &[&main_commit])
                .unwrap();
            git.reference(&format!("refs/heads/{branch}"), commit, true, "")
                .unwrap();

            // The merge without the check: a tree naming `target` as a file.
            let theirs = git.find_commit(commit).unwrap();
            let bases = [main];
            let decided = simple_merge(&git, &root, &bases, &main_commit, &theirs).unwrap();
            let Some(Ok(merged)) = decided else {
                panic!("the attack did not work: {branch}")
            };
            let entry = git
                .find_tree(merged)
                .unwrap()
                .get_name("planted.txt")
                .map(|e| e.id());
            assert_eq!(entry, Some(target));

            // With it: refused, and `main` untouched.
            let e = merge_into_main(&root, branch, "m")
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("not in the object store") || e.contains("is a tree"),
                "{branch}: {e}"
            );
            assert_eq!(git.refname_to_id("refs/heads/main").unwrap(), main);
        }
    }
}
