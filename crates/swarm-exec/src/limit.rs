//! Memory limits over a worker's whole process tree (`WORKER_MEMORY_LIMIT_MB`).
//!
//! Three mechanisms, picked once at start-up by [`MemoryLimiter::detect`]:
//!
//! - **cgroup v2**: a child cgroup per worker with `memory.max`,
//!   `memory.swap.max = 0` and `memory.oom.group = 1`, so going over kills
//!   the whole tree at once. Needs a delegated subtree (systemd
//!   `Delegate=yes`). The supervisor moves itself into a `supervisor` leaf
//!   first: cgroup v2 lets a cgroup enable controllers for its children only
//!   while it holds no processes itself.
//! - **cgroup v1**: the memory controller's hierarchy, where it is writable
//!   (root on a host or VM without systemd's unified layout). The kernel
//!   OOM-kills inside the cgroup; the supervisor sees `oom_kill` rise and
//!   kills the rest of the tree.
//! - **watchdog**: no cgroup can be had; the supervisor sums the resident
//!   memory of the worker's process tree from `/proc` twice a second and
//!   kills the tree when it is over. The worker is a child subreaper, so
//!   double-forked grandchildren stay in its tree. A fast allocation can
//!   overshoot between two readings.
//!
//! A cgroup also makes the kill complete: every process that ever started in
//! it is listed in `cgroup.procs`, whatever its parent, group or session.
//! `RLIMIT_AS` is not used: it breaks Node, the JVM and Go, which reserve
//! far more address space than they use.

use crate::tree;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the operator asked for (`memory_limiter` in agentswarm.toml,
/// `AGENTSWARM_MEMORY_LIMITER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LimiterChoice {
    /// The best mechanism that works here.
    #[default]
    Auto,
    /// A cgroup, or fall back to the watchdog with the reason recorded.
    Cgroup,
    Watchdog,
}

impl std::str::FromStr for LimiterChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "cgroup" => Ok(Self::Cgroup),
            "watchdog" => Ok(Self::Watchdog),
            other => Err(format!(
                "unknown memory limiter {other:?}; use auto, cgroup or watchdog"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    CgroupV2,
    CgroupV1,
    Watchdog,
}

impl Mechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::CgroupV2 => "cgroup-v2",
            Mechanism::CgroupV1 => "cgroup-v1",
            Mechanism::Watchdog => "watchdog",
        }
    }
}

/// Cgroups of the enclosures alive in this process (and whether each is
/// v2), for [`kill_everything`].
static LIVE: Mutex<Option<HashMap<PathBuf, bool>>> = Mutex::new(None);

fn live() -> std::sync::MutexGuard<'static, Option<HashMap<PathBuf, bool>>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// SIGKILL to every process of every enclosure of this process and to
/// every orphan it adopted: the last step before exiting at once (a second
/// Ctrl-C). Worker processes die by their parent-death signal.
pub fn kill_everything() -> usize {
    let dirs: Vec<(PathBuf, bool)> = live()
        .iter()
        .flatten()
        .map(|(d, v2)| (d.clone(), *v2))
        .collect();
    let mut n = 0;
    for (d, v2) in dirs {
        n += kill_cgroup(&d, v2);
    }
    // Without cgroups: every descendant of this process.
    let me = std::process::id();
    let all = tree::snapshot();
    for p in tree::descendants(&all, me).into_iter().filter(|p| *p != me) {
        if kill(Pid::from_raw(p as i32), Signal::SIGKILL).is_ok() {
            n += 1;
        }
    }
    n
}

/// Makes one [`Enclosure`] per worker.
#[derive(Debug)]
pub struct MemoryLimiter {
    mechanism: Mechanism,
    /// The cgroup worker cgroups are made in.
    base: Option<PathBuf>,
    reason: String,
    next: AtomicU64,
}

impl MemoryLimiter {
    /// Picks the mechanism; never fails: what could not be used is in
    /// [`MemoryLimiter::reason`].
    pub fn detect(choice: LimiterChoice) -> MemoryLimiter {
        type Detect = fn() -> Result<PathBuf, String>;
        let cgroups: [(Mechanism, &str, &str, Detect); 2] = [
            (
                Mechanism::CgroupV2,
                "cgroup v2",
                "delegated subtree",
                detect_v2,
            ),
            (Mechanism::CgroupV1, "cgroup v1", "writable at", detect_v1),
        ];
        let mut tried = Vec::new();
        if choice == LimiterChoice::Watchdog {
            tried.push("the watchdog was asked for".to_owned());
        } else {
            for (mechanism, name, place, detect) in cgroups {
                match detect() {
                    Ok(base) => {
                        let reason =
                            format!("{name} memory controller, {place} {}", base.display());
                        return Self::with(mechanism, Some(base), reason);
                    }
                    Err(e) => tried.push(format!("{name}: {e}")),
                }
            }
        }
        Self::with(
            Mechanism::Watchdog,
            None,
            format!(
                "RSS watchdog over the worker's process tree ({})",
                tried.join("; ")
            ),
        )
    }

    fn with(mechanism: Mechanism, base: Option<PathBuf>, reason: String) -> Self {
        let l = MemoryLimiter {
            mechanism,
            base,
            reason,
            next: AtomicU64::new(0),
        };
        l.sweep_stale();
        l
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Which mechanism is active and why (for `agentswarm doctor` and the log).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// A fresh enclosure for one worker with `limit_bytes` for its whole tree.
    pub fn enclose(&self, limit_bytes: u64) -> std::io::Result<Enclosure> {
        let kind = match (&self.base, self.mechanism) {
            (Some(base), Mechanism::CgroupV2 | Mechanism::CgroupV1) => {
                let v2 = self.mechanism == Mechanism::CgroupV2;
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                let dir = base.join(format!("w-{}-{n}", std::process::id()));
                if dir.exists() {
                    remove_cgroup(&dir, v2);
                }
                std::fs::create_dir(&dir)?;
                let setup = || -> std::io::Result<File> {
                    if v2 {
                        write(&dir.join("memory.max"), &limit_bytes.to_string())?;
                        let _ = write(&dir.join("memory.swap.max"), "0");
                        let _ = write(&dir.join("memory.oom.group"), "1");
                    } else {
                        write(&dir.join("memory.limit_in_bytes"), &limit_bytes.to_string())?;
                        let memsw = dir.join("memory.memsw.limit_in_bytes");
                        if memsw.exists() {
                            let _ = write(&memsw, &limit_bytes.to_string());
                        }
                    }
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(dir.join("cgroup.procs"))
                };
                match setup() {
                    Ok(procs) => {
                        live()
                            .get_or_insert_with(HashMap::new)
                            .insert(dir.clone(), v2);
                        Kind::Cgroup { dir, v2, procs }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        return Err(e);
                    }
                }
            }
            _ => Kind::Watchdog,
        };
        Ok(Enclosure {
            kind,
            limit: limit_bytes,
            root: AtomicU32::new(0),
        })
    }

    /// Removes worker cgroups left by a supervisor that died (`kill -9`),
    /// killing whatever still runs in them.
    fn sweep_stale(&self) {
        let Some(base) = &self.base else { return };
        let Ok(entries) = std::fs::read_dir(base) else {
            return;
        };
        let me = std::process::id();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix("w-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = owner == me
                || std::fs::read_to_string(format!("/proc/{owner}/comm"))
                    .is_ok_and(|c| c.trim() == "agentswarm");
            if !alive {
                tracing::info!(cgroup = %e.path().display(), "removing a worker cgroup left by a dead supervisor");
                remove_cgroup(&e.path(), self.mechanism == Mechanism::CgroupV2);
            }
        }
    }
}

#[derive(Debug)]
enum Kind {
    Cgroup { dir: PathBuf, v2: bool, procs: File },
    Watchdog,
}

/// One worker's memory limit and the handle to kill its whole tree.
#[derive(Debug)]
pub struct Enclosure {
    kind: Kind,
    limit: u64,
    root: AtomicU32,
}

impl Enclosure {
    /// The fd a child writes `0` to, between fork and exec, to join the cgroup.
    pub(crate) fn join_fd(&self) -> Option<RawFd> {
        match &self.kind {
            Kind::Cgroup { procs, .. } => Some(procs.as_raw_fd()),
            Kind::Watchdog => None,
        }
    }

    /// The worker's pid, once spawned: the root of the watchdog's tree.
    pub(crate) fn set_root(&self, pid: u32) {
        self.root.store(pid, Ordering::Relaxed);
    }

    /// Whether [`Enclosure::over_limit`] is cheap (one small file read) and
    /// may be asked at every message of the worker, not only at the poll.
    pub fn cheap_check(&self) -> bool {
        matches!(self.kind, Kind::Cgroup { .. })
    }

    /// How often [`Enclosure::over_limit`] should be asked.
    pub fn poll_interval(&self) -> Duration {
        match self.kind {
            Kind::Cgroup { .. } => Duration::from_millis(250),
            Kind::Watchdog => Duration::from_millis(500),
        }
    }

    /// `Some(description)` once the tree went over its limit.
    pub fn over_limit(&self) -> Option<String> {
        let mb = self.limit >> 20;
        match &self.kind {
            Kind::Cgroup { dir, v2, .. } => {
                let (file, key) = if *v2 {
                    ("memory.events", "oom_kill")
                } else {
                    ("memory.oom_control", "oom_kill")
                };
                let kills = read_key(&dir.join(file), key).unwrap_or(0);
                (kills > 0).then(|| {
                    format!(
                        "memory_limit: the worker's process tree reached {mb} MB (WORKER_MEMORY_LIMIT_MB) and the kernel killed {kills} process(es) of it"
                    )
                })
            }
            Kind::Watchdog => {
                let root = self.root.load(Ordering::Relaxed);
                if root == 0 {
                    return None;
                }
                let rss = tree::tree_rss(root);
                (rss > self.limit).then(|| {
                    format!(
                        "memory_limit: the worker's process tree used {} MB, over {mb} MB (WORKER_MEMORY_LIMIT_MB)",
                        rss >> 20
                    )
                })
            }
        }
    }

    /// Pids in the enclosure now.
    pub fn pids(&self) -> Vec<u32> {
        match &self.kind {
            Kind::Cgroup { dir, .. } => cgroup_pids(dir),
            Kind::Watchdog => {
                let root = self.root.load(Ordering::Relaxed);
                if root == 0 {
                    return Vec::new();
                }
                let all = tree::snapshot();
                tree::descendants(&all, root)
                    .into_iter()
                    .filter(|p| all.get(p).is_some_and(|s| s.state != 'Z'))
                    .collect()
            }
        }
    }

    /// Sends `signal` to every process of the tree; returns how many got it.
    pub fn signal_all(&self, signal: Signal) -> usize {
        match &self.kind {
            Kind::Cgroup { dir, v2, .. } => {
                if signal == Signal::SIGKILL {
                    kill_cgroup(dir, *v2)
                } else {
                    cgroup_pids(dir)
                        .into_iter()
                        .filter(|p| kill(Pid::from_raw(*p as i32), signal).is_ok())
                        .count()
                }
            }
            Kind::Watchdog => {
                let root = self.root.load(Ordering::Relaxed);
                // A root that is gone has no tree below it any more (and
                // scanning /proc costs milliseconds).
                if root == 0 || !Path::new(&format!("/proc/{root}")).exists() {
                    0
                } else {
                    tree::signal_tree(root, signal)
                }
            }
        }
    }

    /// Kills what is left and removes the cgroup. Blocks up to a second.
    pub fn release(&self) {
        self.signal_all(Signal::SIGKILL);
        match &self.kind {
            Kind::Cgroup { dir, v2, .. } => remove_cgroup(dir, *v2),
            // Once the worker is gone its tree is no longer below it: what it
            // left went to the supervisor (a child subreaper), whose sweep
            // (`reap_orphans`, every few seconds) ends it.
            Kind::Watchdog => {}
        }
    }
}

impl Drop for Enclosure {
    fn drop(&mut self) {
        if let Kind::Cgroup { dir, .. } = &self.kind {
            // Normally already gone (`release`); an rmdir of a busy cgroup fails harmlessly.
            let _ = std::fs::remove_dir(dir);
            if let Some(set) = live().as_mut() {
                set.remove(dir);
            }
        }
    }
}

/// Hands `fd` to the child: it writes `0` (itself) to `cgroup.procs`.
/// Async-signal-safe: one `write` on an fd opened before the fork.
pub(crate) fn join_cgroup_in_child(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: writes one byte from a static buffer to an open fd.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

fn cgroup_pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// SIGKILL to every process in the cgroup, repeated until it is empty
/// (a process may fork while the list is read). `cgroup.kill` (v2, Linux
/// 5.14+) does it in one step.
fn kill_cgroup(dir: &Path, v2: bool) -> usize {
    let mut total = 0;
    if v2 && write(&dir.join("cgroup.kill"), "1").is_ok() {
        total = cgroup_pids(dir).len();
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let pids = cgroup_pids(dir);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for p in pids {
            if kill(Pid::from_raw(p as i32), Signal::SIGKILL).is_ok() {
                total += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    total
}

fn remove_cgroup(dir: &Path, v2: bool) {
    kill_cgroup(dir, v2);
    // A killed process leaves the cgroup when it is reaped, which its parent
    // may do a moment later.
    // The supervisor, as a child subreaper, may be that parent.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut tries = 0u32;
    while std::fs::remove_dir(dir).is_err() && Instant::now() < deadline && dir.exists() {
        tries += 1;
        if tries.is_multiple_of(20) {
            crate::reap_orphans();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `(mount point, root within the hierarchy)` of the first mount whose
/// filesystem type is `fstype` and whose super options satisfy `opts`.
fn find_mount(fstype: &str, opts: impl Fn(&str) -> bool) -> Option<(PathBuf, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    for line in info.lines() {
        let (left, right) = line.split_once(" - ")?;
        let l: Vec<&str> = left.split_whitespace().collect();
        let r: Vec<&str> = right.split_whitespace().collect();
        if r.first() == Some(&fstype) && r.get(2).is_some_and(|o| opts(o)) {
            return Some((PathBuf::from(l.get(4)?), (*l.get(3)?).to_owned()));
        }
    }
    None
}

fn own_cgroup(pred: impl Fn(&str) -> bool) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
        pred(ctrls).then(|| path.to_owned())
    })
}

fn join_hierarchy(mount: &Path, root: &str, path: &str) -> PathBuf {
    let rel = path.strip_prefix(root).unwrap_or(path);
    mount.join(rel.trim_start_matches('/'))
}

fn detect_v2() -> Result<PathBuf, String> {
    let path = own_cgroup(|c| c.is_empty()).ok_or("this process is in no cgroup v2 hierarchy")?;
    let (mount, root) =
        find_mount("cgroup2", |_| true).ok_or("no cgroup2 filesystem is mounted")?;
    let mut dir = join_hierarchy(&mount, &root, &path);
    // Started earlier by this same process (`detect` again), or by a unit
    // whose main process we moved: work from the delegated parent.
    if dir.file_name().is_some_and(|n| n == "supervisor") {
        if let Some(p) = dir.parent() {
            dir = p.to_owned();
        }
    }
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).map_err(|e| {
        format!(
            "cannot read {}: {e}",
            dir.join("cgroup.controllers").display()
        )
    })?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "the memory controller is not available in {} (run under systemd with Delegate=yes)",
            dir.display()
        ));
    }
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    if enabled.split_whitespace().any(|c| c == "memory") {
        probe_mkdir(&dir)?;
        return Ok(dir);
    }
    let me = std::process::id();
    let others: Vec<u32> = cgroup_pids(&dir).into_iter().filter(|p| *p != me).collect();
    if !others.is_empty() {
        return Err(format!(
            "{} also holds {} other process(es), so it is not delegated to AgentSwarm (run under systemd with Delegate=yes)",
            dir.display(),
            others.len()
        ));
    }
    let leaf = dir.join("supervisor");
    std::fs::create_dir_all(&leaf).map_err(|e| format!("cannot create {}: {e}", leaf.display()))?;
    write(&leaf.join("cgroup.procs"), &me.to_string())
        .map_err(|e| format!("cannot move the supervisor into {}: {e}", leaf.display()))?;
    if let Err(e) = write(&dir.join("cgroup.subtree_control"), "+memory") {
        // Back where we were; the watchdog takes over.
        let _ = write(&dir.join("cgroup.procs"), &me.to_string());
        let _ = std::fs::remove_dir(&leaf);
        return Err(format!(
            "cannot enable the memory controller in {}: {e}",
            dir.display()
        ));
    }
    Ok(dir)
}

fn detect_v1() -> Result<PathBuf, String> {
    let path = own_cgroup(|c| c.split(',').any(|x| x == "memory"))
        .ok_or("this process is in no v1 memory cgroup")?;
    let (mount, root) = find_mount("cgroup", |o| o.split(',').any(|x| x == "memory"))
        .ok_or("the v1 memory controller is not mounted")?;
    let base = join_hierarchy(&mount, &root, &path).join("agentswarm");
    std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
    if !base.join("memory.limit_in_bytes").exists() {
        return Err(format!("{} has no memory.limit_in_bytes", base.display()));
    }
    probe_mkdir(&base)?;
    Ok(base)
}

/// Checks that a child cgroup can be made here.
fn probe_mkdir(dir: &Path) -> Result<(), String> {
    let probe = dir.join(format!("probe-{}", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot create a cgroup in {}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses() {
        assert_eq!("auto".parse::<LimiterChoice>(), Ok(LimiterChoice::Auto));
        assert_eq!(
            "watchdog".parse::<LimiterChoice>(),
            Ok(LimiterChoice::Watchdog)
        );
        assert!("rlimit".parse::<LimiterChoice>().is_err());
    }

    #[test]
    fn hierarchy_paths_join() {
        assert_eq!(
            join_hierarchy(Path::new("/sys/fs/cgroup/memory"), "/", "/a/b"),
            PathBuf::from("/sys/fs/cgroup/memory/a/b")
        );
        assert_eq!(
            join_hierarchy(Path::new("/sys/fs/cgroup"), "/a", "/a/b"),
            PathBuf::from("/sys/fs/cgroup/b")
        );
    }

    #[test]
    fn watchdog_is_always_available() {
        let l = MemoryLimiter::detect(LimiterChoice::Watchdog);
        assert_eq!(l.mechanism(), Mechanism::Watchdog);
        assert!(l.reason().contains("watchdog"), "{}", l.reason());
        let e = l.enclose(1 << 30).unwrap();
        assert!(e.over_limit().is_none());
        assert!(e.pids().is_empty());
    }
}
