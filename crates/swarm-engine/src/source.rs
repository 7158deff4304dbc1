//! Projects that start from an existing repository (docs/existing-repos.md):
//! the checks made before anything is stored or any model is called, the
//! project repository made from the base commit, and the delivery back
//! (branch `agentswarm/<project>`, `changes.patch`, a bundle, `PR.md`).

use crate::prompts::CommandResult;
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use swarm_config::Config;
use swarm_git::source as git_source;
use swarm_protocol::source::{delivery_branch, is_url, RepoSource};
use swarm_protocol::ProjectId;
use swarm_store::{ProjectRecord, TaskRecord};

/// What a user asked for: `--repo`, `--base`, `--push`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRequest {
    /// An absolute path or a git URL.
    pub repo: String,
    pub base: Option<String>,
    pub push: bool,
}

fn refuse(msg: String) -> Error {
    Error::InvalidSource(msg)
}

/// Checks `req` before a project is created — no model call, nothing
/// written anywhere — and says what the project starts from. A local path
/// is checked in full here (a git repository, the base exists, a clean
/// working tree unless a base is named, no submodules, no LFS, within the
/// `[repos]` limits); a URL only in its form, since cloning it can take
/// minutes: the rest is checked right after the clone, still before any
/// model call.
pub fn check(config: &Config, req: &SourceRequest) -> Result<RepoSource> {
    let repo = req.repo.trim();
    if repo.is_empty() {
        return Err(refuse(
            "--repo is empty; give a repository's path or a git URL".into(),
        ));
    }
    if let Some(b) = &req.base {
        if b.trim().is_empty() || b.starts_with('-') {
            return Err(refuse(format!(
                "--base {b:?} is not a branch name; give a branch of the repository (e.g. --base main)"
            )));
        }
    }
    if is_url(repo) {
        return check_url(repo, req);
    }
    let path = Path::new(repo);
    if !path.is_absolute() {
        return Err(refuse(format!(
            "the repository path {repo} is relative; give an absolute path"
        )));
    }
    if !path.is_dir() {
        return Err(refuse(format!(
            "{repo} does not exist or is not a directory; give the path of a git repository"
        )));
    }
    let info = git_source::inspect(path)
        .map_err(|e| match e.to_string() {
            s if s.contains("dubious ownership") => refuse(format!(
                "git refuses {repo}: it is owned by another user than the one agentswarm runs as \
                 (git's safe.directory); run agentswarm as the repository's owner, or give it a \
                 clone of the repository that this user owns"
            )),
            _ => Error::from(e),
        })?
        .ok_or_else(|| {
            refuse(format!(
            "{repo} is not a git repository; run `git init` and commit there first, or give the \
             path of a repository"
        ))
        })?;
    let root = info.root.clone();
    let (base_name, commit) = match &req.base {
        Some(b) => {
            let c = git_source::resolve_commit(&root, b)?.ok_or_else(|| {
                refuse(format!(
                    "the base {b:?} does not exist in {}; give one of its branches with --base \
                     (`git -C {} branch --list` lists them)",
                    root.display(),
                    root.display()
                ))
            })?;
            (b.clone(), c)
        }
        None => {
            let c = git_source::resolve_commit(&root, "HEAD")?.ok_or_else(|| {
                refuse(format!(
                    "{} has no commit yet; commit the project first (agentswarm starts from a commit)",
                    root.display()
                ))
            })?;
            if !info.bare {
                let dirty = git_source::dirty_paths(&root)?;
                if !dirty.is_empty() {
                    let shown: Vec<&str> = dirty.iter().take(5).map(String::as_str).collect();
                    return Err(refuse(format!(
                        "{} has uncommitted changes to {} tracked file(s) ({}{}); commit or stash \
                         them, or name the commit to start from with --base (e.g. --base {}); \
                         agentswarm never touches your working tree",
                        root.display(),
                        dirty.len(),
                        shown.join(", "),
                        if dirty.len() > shown.len() {
                            ", …"
                        } else {
                            ""
                        },
                        info.head_branch.as_deref().unwrap_or("HEAD"),
                    )));
                }
            }
            (info.head_branch.clone().unwrap_or_else(|| "HEAD".into()), c)
        }
    };
    check_tree(config, &root, &commit, &root.display().to_string())?;
    Ok(RepoSource {
        repo: root.to_string_lossy().into_owned(),
        base: Some(base_name),
        base_commit: Some(commit),
        push: req.push,
        branch: None,
        held: false,
    })
}

fn check_url(url: &str, req: &SourceRequest) -> Result<RepoSource> {
    if url.contains("::") || url.starts_with("ext:") {
        return Err(refuse(format!(
            "{url}: only https://, ssh://, git://, file:// and user@host:path URLs are taken"
        )));
    }
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return Err(refuse(
                    "the repository URL holds a password or token; take it out and let git find \
                     your credentials (a credential helper in your git config, or an ssh agent) — \
                     a URL is stored and shown"
                        .into(),
                ));
            }
        }
    }
    Ok(RepoSource {
        repo: url.to_owned(),
        base: req.base.clone(),
        base_commit: None,
        push: req.push,
        branch: None,
        held: false,
    })
}

/// The checks of a base commit's tree: no submodules, no LFS, within the
/// configured limits. `shown` names the repository in errors.
fn check_tree(config: &Config, root: &Path, commit: &str, shown: &str) -> Result<()> {
    let tree = git_source::tree_summary(root, commit)?;
    if !tree.submodules.is_empty() {
        return Err(refuse(format!(
            "{shown} has submodules ({}), which agentswarm does not support yet: workers would \
             see empty directories; vendor them, or start from a repository without them",
            tree.submodules.join(", ")
        )));
    }
    if !tree.lfs_attributes.is_empty() {
        return Err(refuse(format!(
            "{shown} stores files in Git LFS ({} routes paths through filter=lfs), which \
             agentswarm does not support yet: workers would see pointer files instead of the \
             content",
            tree.lfs_attributes.join(", ")
        )));
    }
    let limits = &config.repos;
    if tree.files > limits.max_files {
        return Err(refuse(format!(
            "{shown} has {} files at its base commit, more than the {} allowed; raise `max_files` \
             under [repos] in agentswarm.toml",
            tree.files, limits.max_files
        )));
    }
    let mb = tree.bytes.div_ceil(1 << 20);
    if mb > limits.max_size_mb {
        return Err(refuse(format!(
            "{shown}'s files add up to {mb} MB at its base commit, more than the {} MB allowed; \
             raise `max_size_mb` under [repos] in agentswarm.toml",
            limits.max_size_mb
        )));
    }
    Ok(())
}

/// The project's source as stored, if it has one.
pub fn of(project: &ProjectRecord) -> Option<RepoSource> {
    project
        .source
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// Makes the project repository at `repo_root` from the source's base
/// commit when it does not exist yet (a clone for a URL, then the checks a
/// URL could not have before), and returns the source with its base commit
/// known. Blocking: call it off the runtime.
pub fn prepare(config: &Config, source: &RepoSource, repo_root: &Path) -> Result<RepoSource> {
    let mut source = source.clone();
    if repo_root.join(".git").is_dir() {
        return Ok(source);
    }
    if source.is_url() {
        let rev = source.base.clone().unwrap_or_else(|| "HEAD".into());
        let depth = (config.repos.clone_depth > 0).then_some(config.repos.clone_depth);
        let head =
            git_source::fetch_base(&source.repo, &rev, repo_root, depth, true).map_err(|e| {
                refuse(format!(
                    "cannot clone {} (base {rev}): {e}; check the URL, the branch, and that this \
                     machine's git credentials (ssh agent, credential helper) reach it",
                    source.repo
                ))
            })?;
        if let Err(e) = check_tree(config, repo_root, &head, &source.repo) {
            let _ = std::fs::remove_dir_all(repo_root);
            return Err(e);
        }
        source.base_commit = Some(head);
        return Ok(source);
    }
    let commit = source
        .base_commit
        .clone()
        .ok_or_else(|| Error::Other("the project's source has no base commit".into()))?;
    git_source::fetch_base(&source.repo, &commit, repo_root, None, false).map_err(|e| {
        refuse(format!(
            "cannot copy commit {commit} of {}: {e}; is the repository still there?",
            source.repo
        ))
    })?;
    Ok(source)
}

/// What the delivery of a project on an existing repository wrote.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Delivered {
    pub repo: String,
    pub base: Option<String>,
    pub base_commit: String,
    /// `agentswarm/<project>`, when it was written to the source repository.
    pub branch: Option<String>,
    /// Why the branch could not be written or pushed, if so.
    pub branch_error: Option<String>,
    pub pushed: bool,
    /// With `review = "delivery"`: the branch (and push) wait for approval.
    pub held: bool,
    pub patch: Option<PathBuf>,
    pub bundle: Option<PathBuf>,
    pub pr: Option<PathBuf>,
    /// Files written beside the archive: name, size, sha256 (named in both manifests).
    pub files: Vec<(String, u64, String)>,
}

impl Delivered {
    /// The `source` object of manifest.json.
    pub fn manifest_json(&self) -> serde_json::Value {
        let name = |p: &Option<PathBuf>| {
            p.as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
        };
        serde_json::json!({
            "repo": self.repo,
            "base": self.base,
            "base_commit": self.base_commit,
            "branch": self.branch,
            "branch_error": self.branch_error,
            "pushed": self.pushed,
            "held_for_review": self.held,
            "patch": name(&self.patch),
            "bundle": name(&self.bundle),
            "pr": name(&self.pr),
        })
    }

    /// The `beside` list of manifest.json: the files next to the archive.
    pub fn beside_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.files
                .iter()
                .map(|(n, size, sha)| serde_json::json!({"path": n, "size": size, "sha256": sha}))
                .collect(),
        )
    }
}

/// What [`write_branch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BranchWritten {
    /// The branch, when it was written (or, for a URL, pushed).
    pub branch: Option<String>,
    pub pushed: bool,
    /// Why it could not be written or pushed.
    pub error: Option<String>,
}

/// Writes `head` of the project repository `repo` as `branch` in the
/// source repository (a local path), pushing it on to its `origin` when
/// asked; for a URL, pushes it there when asked. Blocking.
pub fn write_branch(source: &RepoSource, repo: &Path, head: &str, branch: &str) -> BranchWritten {
    let mut w = BranchWritten::default();
    if source.is_url() {
        if source.push {
            match git_source::push_branch(repo, &source.repo, head, branch) {
                Ok(()) => {
                    w.pushed = true;
                    w.branch = Some(branch.to_owned());
                }
                Err(e) => w.error = Some(format!("cannot push {branch}: {e}")),
            }
        }
        return w;
    }
    match git_source::deliver_branch(Path::new(&source.repo), repo, head, branch) {
        Ok(()) => {
            w.branch = Some(branch.to_owned());
            if source.push {
                match git_source::push_branch(
                    Path::new(&source.repo),
                    "origin",
                    &format!("refs/heads/{branch}"),
                    branch,
                ) {
                    Ok(()) => w.pushed = true,
                    Err(e) => w.error = Some(format!("cannot push {branch} to origin: {e}")),
                }
            }
        }
        Err(e) => {
            w.error = Some(format!(
                "cannot write branch {branch} in {}: {e}; changes.patch and the bundle hold \
                 the same work",
                source.repo
            ))
        }
    }
    w
}

/// Writes `changes.patch`, the bundle and `PR.md` into `outputs`, and the
/// branch `agentswarm/<project>` into the source repository (and pushes it
/// when asked) unless `hold` (`review = "delivery"`). Blocking. A branch that cannot be written is reported in
/// [`Delivered::branch_error`], not an error: the patch and bundle carry
/// the same work.
#[allow(clippy::too_many_arguments)]
pub fn deliver(
    project: &ProjectRecord,
    source: &RepoSource,
    tasks: &[TaskRecord],
    verify: Option<&[CommandResult]>,
    baseline: Option<&serde_json::Value>,
    repo: &Path,
    head: &str,
    outputs: &Path,
    hold: bool,
) -> Result<Delivered> {
    let base = source
        .base_commit
        .clone()
        .ok_or_else(|| Error::Other("the project's source has no base commit".into()))?;
    std::fs::create_dir_all(outputs)
        .map_err(|e| Error::Other(format!("cannot create {}: {e}", outputs.display())))?;
    let branch = delivery_branch(project.id.as_str());
    let mut d = Delivered {
        repo: source.repo.clone(),
        base: source.base.clone(),
        base_commit: base.clone(),
        ..Default::default()
    };
    let patch = git_source::diff(repo, &base, head)?;
    let patch_path = outputs.join("changes.patch");
    write_atomic(&patch_path, &patch)?;
    d.files.push(described("changes.patch", &patch));
    d.patch = Some(patch_path);
    let bundle_name = format!("{}.bundle", swarm_package::safe_name(&project.name));
    let bundle_path = outputs.join(&bundle_name);
    if git_source::bundle(repo, &bundle_path, &branch, &base, head)? {
        let bytes = std::fs::read(&bundle_path)
            .map_err(|e| Error::Other(format!("cannot read {}: {e}", bundle_path.display())))?;
        d.files.push(described(&bundle_name, &bytes));
        d.bundle = Some(bundle_path);
    }
    if hold {
        d.held = true;
    } else {
        let w = write_branch(source, repo, head, &branch);
        (d.branch, d.pushed, d.branch_error) = (w.branch, w.pushed, w.error);
    }
    let stats = git_source::numstat(repo, &base, head).unwrap_or_default();
    let pr = pr_text(project, &d, tasks, verify, baseline, &stats);
    let pr_path = outputs.join("PR.md");
    write_atomic(&pr_path, pr.as_bytes())?;
    d.files.push(described("PR.md", pr.as_bytes()));
    d.pr = Some(pr_path);
    Ok(d)
}

fn described(name: &str, bytes: &[u8]) -> (String, u64, String) {
    (
        name.to_owned(),
        bytes.len() as u64,
        swarm_package::sha256_hex(bytes),
    )
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, data)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::Other(format!("cannot write {}: {e}", path.display()))
        })
}

/// `PR.md`: a pull request's description — the goal, what each task did,
/// the files changed, verify before and after.
fn pr_text(
    project: &ProjectRecord,
    d: &Delivered,
    tasks: &[TaskRecord],
    verify: Option<&[CommandResult]>,
    baseline: Option<&serde_json::Value>,
    stats: &[(Option<u64>, Option<u64>, String)],
) -> String {
    use std::fmt::Write;
    let esc = swarm_protocol::text::escape_control;
    let mut s = String::new();
    let title = project
        .plan
        .as_ref()
        .map(|p| p.summary.clone())
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| project.goal.lines().next().unwrap_or_default().to_owned());
    let _ = writeln!(s, "# {}\n", esc(title.trim()));
    let _ = writeln!(
        s,
        "Goal:\n\n> {}\n",
        esc(&project.goal).replace("\\n", "\n> ")
    );
    let _ = writeln!(
        s,
        "Branch `{}` on `{}` ({}), made by AgentSwarm project `{}`.\n",
        d.branch
            .clone()
            .unwrap_or_else(|| delivery_branch(project.id.as_str())),
        d.base.clone().unwrap_or_else(|| "HEAD".into()),
        short(&d.base_commit),
        project.id
    );
    let _ = writeln!(s, "## Tasks\n");
    for t in tasks
        .iter()
        .filter(|t| t.kind == swarm_protocol::TaskKind::Code)
    {
        let _ = writeln!(
            s,
            "- **{}** ({}, {}): {}",
            esc(&t.title),
            t.id,
            t.state,
            esc(t.summary.as_deref().unwrap_or("-").trim())
        );
        if !t.changed_files.is_empty() {
            let files: Vec<String> = t
                .changed_files
                .iter()
                .map(|f| format!("`{}`", esc(f)))
                .collect();
            let _ = writeln!(s, "  files: {}", files.join(", "));
        }
    }
    let _ = writeln!(s, "\n## Files changed\n");
    if stats.is_empty() {
        let _ = writeln!(s, "none");
    }
    for (a, del, path) in stats {
        let counts = match (a, del) {
            (Some(a), Some(d)) => format!("+{a} −{d}"),
            _ => "binary".into(),
        };
        let _ = writeln!(s, "- `{}` ({counts})", esc(path));
    }
    let _ = writeln!(s, "\n## Verify\n");
    if let Some(b) = baseline {
        let passed = b.get("passed").and_then(serde_json::Value::as_bool);
        let _ = writeln!(
            s,
            "Before (on the base commit): {}",
            match passed {
                Some(true) => "passed",
                Some(false) => "failed — these failures were already there",
                None => "not run",
            }
        );
        if let Some(results) = b.get("results").and_then(serde_json::Value::as_array) {
            for r in results {
                let _ = writeln!(
                    s,
                    "- `{}`: exit {}",
                    esc(r.get("command").and_then(|c| c.as_str()).unwrap_or("?")),
                    r.get("exit").map(|e| e.to_string()).unwrap_or_default()
                );
            }
        }
        let _ = writeln!(s);
    }
    match verify {
        Some(results) => {
            let all = !results.is_empty() && results.iter().all(|r| r.passed);
            let _ = writeln!(s, "After: {}", if all { "passed" } else { "failed" });
            for r in results {
                let _ = writeln!(
                    s,
                    "- `{}`: exit {} ({} ms)",
                    esc(&r.command),
                    esc(&r.exit),
                    r.duration_ms
                );
            }
        }
        None => {
            let _ = writeln!(s, "After: not run");
        }
    }
    s
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// `agentswarm/<project>` of a project id.
pub fn branch_of(id: &ProjectId) -> String {
    delivery_branch(id.as_str())
}

/// The baseline verify's results (the `baseline` event), if one ran.
pub fn baseline_of(
    store: &dyn swarm_store::Store,
    id: &ProjectId,
) -> Result<Option<serde_json::Value>> {
    Ok(store
        .events_of_kind(id, "baseline", 1)?
        .into_iter()
        .last()
        .map(|e| e.data))
}

/// The baseline verify: the verify commands on the base commit, before any
/// task ran, so that failures already there are reported as such and not
/// blamed on the swarm. Runs once per project (a `baseline` event records
/// it, with `round` 0), and once per follow-up round (`--continue`: on the
/// commit main was at when the round was planned, `round` N), only while
/// `main` is still at that commit, confined like verify.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn baseline(
    engine: &crate::Engine,
    id: &ProjectId,
    source: &RepoSource,
    repo: &swarm_git::Repo,
    checkout: &Path,
    commands: &[String],
    limits: &swarm_config::RunLimits,
    sandbox: swarm_exec::sandbox::SandboxPolicy,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let store = engine.store();
    if commands.is_empty() {
        return Ok(());
    }
    let last = store.events_of_kind(id, "baseline", 1)?.into_iter().next();
    // A follow-up round (`--continue`) starts from what main holds then: its
    // baseline is taken there, once per round.
    let round = store
        .events_of_kind(id, "continue", 1)?
        .into_iter()
        .next()
        .and_then(|e| {
            Some((
                e.data["round"].as_u64()?,
                e.data["main"].as_str()?.to_owned(),
            ))
        });
    let (round, base) = match round {
        Some((round, main)) => {
            if last.is_some_and(|b| b.data["round"].as_u64() == Some(round)) {
                return Ok(());
            }
            (round, main)
        }
        None => {
            if last.is_some() {
                return Ok(());
            }
            let Some(base) = source.base_commit.clone() else {
                return Ok(());
            };
            (0, base)
        }
    };
    if repo.head()? != base {
        return Ok(());
    }
    let on = if round == 0 {
        "the base commit".to_owned()
    } else {
        format!("main as follow-up round {round} found it")
    };
    engine.emit(
        id,
        None,
        "verify",
        format!(
            "baseline: running the verify commands on {on} ({})",
            short(&base)
        ),
    );
    let enclosure = engine
        .limiter
        .enclose(engine.config.worker_memory_limit_mb << 20)
        .ok()
        .map(std::sync::Arc::new);
    let (repo2, checkout2, commands2, cancel2) = (
        repo.clone(),
        checkout.to_owned(),
        commands.to_vec(),
        cancel.clone(),
    );
    let timeout = std::time::Duration::from_secs(limits.verify_timeout_secs);
    let output_cap = limits.output_cap_bytes;
    let enc = enclosure.clone();
    let result = tokio::task::spawn_blocking(move || {
        crate::verify::run_verify(
            &repo2,
            &checkout2,
            &commands2,
            crate::verify::Limits {
                timeout,
                output_cap,
                sandbox: &sandbox,
            },
            enc,
            &cancel2,
        )
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?;
    if let Some(e) = enclosure {
        e.release();
    }
    if cancel.is_cancelled() {
        return Ok(());
    }
    let data = match &result {
        Ok(results) => {
            let passed = !results.is_empty() && results.iter().all(|r| r.passed);
            serde_json::json!({
                "base_commit": base,
                "round": round,
                "passed": passed,
                "results": results.iter().map(|r| serde_json::json!({
                    "command": r.command, "exit": r.exit, "passed": r.passed,
                    "duration_ms": r.duration_ms,
                    "output_tail": tail_chars(&r.output, 2000),
                })).collect::<Vec<_>>(),
            })
        }
        Err(e) => {
            serde_json::json!({"base_commit": base, "round": round, "passed": null, "error": e})
        }
    };
    store.append_event(id, None, "baseline", &data)?;
    let line = match &result {
        Ok(results) if results.iter().all(|r| r.passed) => {
            format!("baseline: verify passes on {on}")
        }
        Ok(results) => format!(
            "baseline: verify already fails on {on} ({} of {} command(s) failed: {}); \
             these failures were there before the swarm",
            results.iter().filter(|r| !r.passed).count(),
            results.len(),
            results
                .iter()
                .filter(|r| !r.passed)
                .map(|r| format!("`{}` exit {}", r.command, r.exit))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("baseline: could not run: {e}"),
    };
    engine.emit(id, None, "verify", line);
    Ok(())
}

fn tail_chars(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Adds `paths` (relative to the repository's top level) to the project
/// repository's `.git/info/exclude`, shared by every worktree, so that no
/// worker commits them (`.agentswarm.toml`'s copied files).
pub fn exclude(repo_root: &Path, paths: &[String]) -> Result<()> {
    if paths.is_empty() {
        return Ok(());
    }
    let file = repo_root.join(".git/info/exclude");
    let mut text = std::fs::read_to_string(&file).unwrap_or_default();
    text.push_str("# written by agentswarm: copied into each worktree by .agentswarm.toml\n");
    for p in paths {
        text.push('/');
        text.push_str(p.trim_start_matches('/'));
        text.push('\n');
    }
    std::fs::write(&file, text)
        .map_err(|e| Error::Other(format!("cannot write {}: {e}", file.display())))
}
