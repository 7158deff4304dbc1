//! `agentswarm prune`: deletes what ended projects leave behind — their
//! repository, worktrees, transcripts and store rows — keeping their
//! deliveries in `OUTPUTS_DIR` unless asked.

use crate::{lock_project, Error, Result};
use std::path::Path;
use std::time::Duration;
use swarm_config::Config;
use swarm_protocol::{ProjectId, ProjectState};
use swarm_store::{now_ms, Store};

/// What `prune` looks at.
#[derive(Debug, Clone)]
pub struct PruneRequest {
    /// These projects only (each must have ended); empty: every ended
    /// project last changed more than `older_than` ago.
    pub projects: Vec<ProjectId>,
    pub older_than: Duration,
    /// Also delete `OUTPUTS_DIR/<project>` (the delivery and task archives).
    pub deliveries: bool,
    /// Say what would go; delete nothing.
    pub dry_run: bool,
}

/// One project `prune` dealt with.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    pub id: ProjectId,
    pub state: ProjectState,
    /// Days since it last changed.
    pub age_days: u64,
    /// Bytes of its data directory (and of its outputs with `deliveries`).
    pub bytes: u64,
    /// Deleted (false on a dry run, or when it was skipped).
    pub deleted: bool,
    /// Why it was left alone, if it was.
    pub skipped: Option<String>,
}

/// Deletes the ended projects `req` names (see [`PruneRequest`]).
pub fn prune(config: &Config, store: &dyn Store, req: &PruneRequest) -> Result<Vec<Pruned>> {
    let now = now_ms();
    let projects = store.list_projects()?;
    let chosen: Vec<_> = if req.projects.is_empty() {
        let cutoff = now - i64::try_from(req.older_than.as_millis()).unwrap_or(i64::MAX);
        projects
            .into_iter()
            .filter(|p| p.state.is_terminal() && p.updated_ms < cutoff)
            .collect()
    } else {
        let mut out = Vec::new();
        for id in &req.projects {
            let p = projects
                .iter()
                .find(|p| &p.id == id)
                .ok_or_else(|| Error::Store(swarm_store::Error::ProjectNotFound(id.clone())))?;
            out.push(p.clone());
        }
        out
    };
    let mut done = Vec::new();
    for p in chosen {
        let data = config.project_dir(p.id.as_str());
        let outputs = crate::packager::project_outputs(&config.outputs_dir, &p.id);
        let mut bytes = dir_bytes(&data);
        if req.deliveries {
            bytes += dir_bytes(&outputs);
        }
        let mut entry = Pruned {
            id: p.id.clone(),
            state: p.state,
            age_days: u64::try_from((now - p.updated_ms).max(0) / 86_400_000).unwrap_or(0),
            bytes,
            deleted: false,
            skipped: None,
        };
        if !p.state.is_terminal() {
            entry.skipped = Some(format!(
                "it is {}, not ended (cancel it first, or resume it)",
                p.state
            ));
        } else if !req.dry_run {
            // Held while deleting: no `resume` of it can start meanwhile.
            match lock_project(config, &p.id) {
                Ok(_lock) => {
                    remove_dir(&data)?;
                    if req.deliveries {
                        remove_dir(&outputs)?;
                    }
                    entry.deleted = store.delete_project(&p.id)?;
                    if !entry.deleted {
                        entry.skipped = Some("it was started again meanwhile".into());
                    }
                    let _ = std::fs::remove_file(
                        config.data_dir.join("locks").join(format!("{}.lock", p.id)),
                    );
                }
                Err(Error::Busy(_)) => {
                    entry.skipped = Some("a process is using it now".into());
                }
                Err(e) => return Err(e),
            }
        }
        done.push(entry);
    }
    Ok(done)
}

fn remove_dir(dir: &Path) -> Result<()> {
    // std's remove_dir_all does not follow symlinks.
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Other(format!(
            "cannot delete {}: {e}",
            dir.display()
        ))),
    }
}

/// Bytes of the regular files under `dir` (symlinks not followed).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        let Ok(meta) = e.metadata() else { continue };
        if meta.is_dir() {
            total += dir_bytes(&e.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}
