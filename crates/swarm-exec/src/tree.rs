//! Process trees read from `/proc`: who descends from whom, how much memory a
//! tree holds, and how to kill a whole tree, including grandchildren that
//! left their process group with `setsid`.
//!
//! Written by hand: the `procfs` crate would do the parsing, but the two
//! fields needed here (parent pid and resident pages of `/proc/<pid>/stat`)
//! do not justify the dependency.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;

/// One line of `/proc/<pid>/stat`, the parts we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub ppid: u32,
    /// `Z` for a zombie.
    pub state: char,
    pub rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name may hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); rss is field 24.
    Some(ProcStat {
        pid,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        rss_pages: rest.get(21)?.parse().ok()?,
    })
}

pub fn read_stat(pid: u32) -> Option<ProcStat> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
}

/// Every process on the machine, by pid.
pub fn snapshot() -> HashMap<u32, ProcStat> {
    let mut all = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return all;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(s) = read_stat(pid) {
            all.insert(pid, s);
        }
    }
    all
}

/// `root` and every process below it, parents before children.
pub fn descendants(all: &HashMap<u32, ProcStat>, root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for s in all.values() {
        children.entry(s.ppid).or_default().push(s.pid);
    }
    let mut out = Vec::new();
    if !all.contains_key(&root) {
        return out;
    }
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        out.push(p);
        if let Some(c) = children.get(&p) {
            stack.extend(c.iter().copied().filter(|c| *c != p));
        }
    }
    out
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

/// Resident memory of `root` and everything below it, in bytes.
pub fn tree_rss(root: u32) -> u64 {
    let all = snapshot();
    descendants(&all, root)
        .iter()
        .filter_map(|p| all.get(p))
        .map(|s| s.rss_pages)
        .sum::<u64>()
        * page_size()
}

/// Signals every process of the tree below and including `root`. With
/// SIGKILL the tree is first stopped, so that nothing forks between the
/// listing and the kill, and the listing is repeated until it is empty.
/// Returns how many processes were signalled.
pub fn signal_tree(root: u32, signal: Signal) -> usize {
    let mut total = 0;
    for _ in 0..5 {
        let all = snapshot();
        let tree: Vec<u32> = descendants(&all, root)
            .into_iter()
            .filter(|p| all.get(p).is_some_and(|s| s.state != 'Z'))
            .collect();
        if tree.is_empty() {
            break;
        }
        if signal == Signal::SIGKILL {
            for p in &tree {
                let _ = kill(Pid::from_raw(*p as i32), Signal::SIGSTOP);
            }
        }
        for p in &tree {
            if kill(Pid::from_raw(*p as i32), signal).is_ok() {
                total += 1;
            }
        }
        if signal != Signal::SIGKILL {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    total
}

/// The children of `pid`, from `/proc/<pid>/task/*/children` (one file a
/// thread: an orphan is adopted by any thread of its subreaper), or from a
/// full [`snapshot`] where the kernel lacks those files.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    let mut listed = false;
    for task in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
            listed = true;
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    if !listed {
        out = snapshot()
            .into_values()
            .filter(|s| s.ppid == pid)
            .map(|s| s.pid)
            .collect();
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// The children of this process (see [`children_of`]).
pub fn own_children() -> Vec<u32> {
    children_of(std::process::id())
}

/// SIGKILL to `root` and everything below it, found through the `children`
/// files (no full scan of `/proc`, so that a process that forks quickly has
/// little time between the listing and the kill). The tree is stopped
/// first, parents before children, and killed after: a shell must not see
/// its `sleep` die and run its next command (`sleep 2; echo late > f`)
/// between two kills. What forks in between is adopted by the nearest
/// subreaper when its parent dies: the caller lists again
/// ([`crate::reap_orphans`]). Returns how many processes were signalled.
pub fn kill_tree_now(root: u32) -> usize {
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() && tree.len() < 100_000 {
        let pid = tree[i];
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
        let below = children_of(pid);
        tree.extend(below);
        i += 1;
    }
    tree.iter()
        .filter(|p| kill(Pid::from_raw(**p as i32), Signal::SIGKILL).is_ok())
        .count()
}

/// Makes this process a child subreaper: orphans of its descendants are
/// re-parented to it instead of to init, so a double-forked `setsid`
/// grandchild stays in its tree where [`signal_tree`] finds it.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: prctl with these arguments only sets a flag on this process.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123 4096000 321 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                ppid: 17,
                state: 'S',
                rss_pages: 321
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn finds_this_process_and_its_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let all = snapshot();
        let me = std::process::id();
        let tree = descendants(&all, me);
        assert_eq!(tree[0], me);
        assert!(tree.contains(&child.id()));
        assert!(tree_rss(me) > 0);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
