//! What a worker node says of itself (`agentswarm node info --json`, run
//! over SSH by the supervisor): enough to decide whether attempts may run
//! there, and where (docs/scale-out.md).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeInfo {
    pub version: String,
    pub hostname: String,
    pub cpus: usize,
    /// The sandbox mechanism its commands would run under, and its gaps.
    pub sandbox: String,
    pub sandbox_gaps: Vec<String>,
    /// The memory limiter its workers would run under.
    pub memory_limiter: String,
    pub free_memory_mb: Option<u64>,
    pub load_1m: Option<f64>,
    /// The login's home there (where the node's work directory defaults to).
    #[serde(default)]
    pub home: Option<PathBuf>,
    /// `git --version` there; `None`: no git, so no attempt can run there.
    #[serde(default)]
    pub git: Option<String>,
}
