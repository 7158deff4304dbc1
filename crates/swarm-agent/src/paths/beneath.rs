//! Opening files beneath the worktree without following a symlink at any
//! component, so that a process that swaps a directory for a symlink
//! (`renameat2(RENAME_EXCHANGE)`) while a tool runs cannot lead the tool
//! outside the worktree: there is no check that could go stale before the
//! open, the open itself refuses.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of the worktree root (Linux 5.6 and later); where the
//! kernel lacks it (`ENOSYS`), a walk that opens one component at a time
//! with `O_NOFOLLOW | O_DIRECTORY` from the same root descriptor. Writes
//! create missing directories with `mkdirat` on the directory descriptor
//! they walked to, and put the file in place with a rename, which replaces
//! a symlink (or a hard link) instead of writing through it.

use crate::paths::RelPath;
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, renameat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstatat, mkdirat, Mode, SFlag};
use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Set once `openat2` answered `ENOSYS`: the walk is used from then on.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The worktree root, opened as a directory (the worktree path itself comes
/// from the supervisor and is followed as usual).
pub fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    nix::fcntl::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Which way [`open_beneath`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2`, or the walk where the kernel lacks it.
    Auto,
    /// The component-wise `O_NOFOLLOW` walk only.
    Walk,
}

/// Opens `rel` below `root` with `flags`; a symlink at any component is
/// refused with `ELOOP` (or `ENOTDIR` where a directory was expected).
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &RelPath,
    flags: OFlag,
    how: Resolver,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    if rel.is_root() {
        return openat(root, ".", flags, Mode::empty());
    }
    if how == Resolver::Auto && !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS;
        match openat2(
            root,
            &rel.to_path(),
            OpenHow::new().flags(flags).resolve(resolve),
        ) {
            Err(Errno::ENOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            done => return done,
        }
    }
    let Some((parents, last)) = rel.split_last() else {
        return openat(root, ".", flags, Mode::empty());
    };
    let dir = walk_dirs(root, parents, false)?;
    openat(&dir, last.as_os_str(), flags, Mode::empty())
}

/// Opens the directories `names` one below the other from `root`, each with
/// `O_NOFOLLOW | O_DIRECTORY`; with `create`, makes the missing ones
/// (`mkdirat`, mode 0755 less the umask).
pub fn walk_dirs<N: AsRef<OsStr>>(
    root: BorrowedFd<'_>,
    names: &[N],
    create: bool,
) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut cur = openat(root, ".", flags, Mode::empty())?;
    for name in names {
        let name = name.as_ref();
        let next = match openat(&cur, name, flags, Mode::empty()) {
            Err(Errno::ENOENT) if create => {
                match mkdirat(&cur, name, Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e),
                }
                openat(&cur, name, flags, Mode::empty())?
            }
            other => other?,
        };
        cur = next;
    }
    Ok(cur)
}

/// Whether `name` in `dir` is a symlink (not followed).
pub fn is_symlink(dir: BorrowedFd<'_>, name: &OsStr) -> bool {
    fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// Puts a file with `content` at `rel` below `root`: missing directories
/// are created, an existing file keeps its mode, and whatever was at the
/// name (a file, a symlink) is replaced by a rename, never written through.
/// `EISDIR` when a directory is there.
pub fn replace_file(root: BorrowedFd<'_>, rel: &RelPath, content: &[u8]) -> Result<(), Errno> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let Some((parents, last)) = rel.split_last() else {
        return Err(Errno::EISDIR);
    };
    let dir = walk_dirs(root, parents, true)?;
    let mode = match fstatat(&dir, last.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => {
            let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
            if kind == SFlag::S_IFDIR {
                return Err(Errno::EISDIR);
            }
            if kind == SFlag::S_IFREG {
                Mode::from_bits_truncate(st.st_mode & 0o7777)
            } else {
                Mode::from_bits_truncate(0o644)
            }
        }
        Err(_) => Mode::from_bits_truncate(0o644),
    };
    let (tmp, fd) = loop {
        let tmp = format!(
            ".agentswarm-write-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match openat(&dir, tmp.as_str(), flags, Mode::from_bits_truncate(0o600)) {
            Err(Errno::EEXIST) => continue,
            other => break (tmp, other?),
        }
    };
    let written = (|| {
        let mut file = std::fs::File::from(fd);
        file.write_all(content)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)))?;
        // Not setuid/setgid: the model's file is never more than 0777.
        fchmod(file.as_fd(), mode & Mode::from_bits_truncate(0o777))?;
        renameat(&dir, tmp.as_str(), &dir, last.as_os_str())
    })();
    if written.is_err() {
        let _ = nix::unistd::unlinkat(&dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    written
}

/// Removes the file at `rel` below `root` (a symlink there is removed
/// itself, never followed); `EISDIR` when a directory is there.
pub fn remove_file(root: BorrowedFd<'_>, rel: &RelPath) -> Result<(), Errno> {
    let Some((parents, last)) = rel.split_last() else {
        return Err(Errno::EISDIR);
    };
    let dir = walk_dirs(root, parents, false)?;
    let st = fstatat(&dir, last.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
        return Err(Errno::EISDIR);
    }
    nix::unistd::unlinkat(
        &dir,
        last.as_os_str(),
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paths::{check, Purpose};
    use std::os::fd::AsFd;

    fn rel(p: &str) -> RelPath {
        check(p, Purpose::List).unwrap()
    }

    #[test]
    fn both_resolvers_refuse_a_symlink_at_every_component() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let root = dir.path().join("wt");
        std::fs::create_dir_all(outside.join("d")).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::write(outside.join("d/secret"), "s").unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/f"), "inside").unwrap();
        std::fs::create_dir(root.join("inner")).unwrap();
        std::fs::write(root.join("inner/f"), "inner").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("a/out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("a/b/last")).unwrap();
        std::os::unix::fs::symlink("../../inner", root.join("a/b/rel")).unwrap();
        std::os::unix::fs::symlink("inner", root.join("in")).unwrap();
        std::os::unix::fs::symlink("/proc/self/root", root.join("magic")).unwrap();
        let rootfd = open_root(&root).unwrap();
        for how in [Resolver::Auto, Resolver::Walk] {
            let open = |p: &str| open_beneath(rootfd.as_fd(), &rel(p), OFlag::O_RDONLY, how);
            assert!(open("a/b/f").is_ok(), "{how:?}");
            for bad in [
                "out/secret",
                "a/out/secret",
                "a/out/d/secret",
                "a/b/last",
                "a/b/rel/f",
                "in/f",
                "in",
                "magic/etc/passwd",
            ] {
                let e = open(bad).unwrap_err();
                assert!(
                    matches!(e, Errno::ELOOP | Errno::ENOTDIR),
                    "{how:?} {bad}: {e}"
                );
            }
            assert_eq!(open("a/nope").unwrap_err(), Errno::ENOENT);
        }
    }

    #[test]
    fn writes_create_directories_and_replace_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        let root = dir.path().join("wt");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(outside.join("target"), "keep").unwrap();
        let rootfd = open_root(&root).unwrap();
        replace_file(rootfd.as_fd(), &rel("x/y/z.txt"), b"hello").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("x/y/z.txt")).unwrap(),
            "hello"
        );

        // A final symlink is replaced, not written through.
        std::os::unix::fs::symlink(outside.join("target"), root.join("x/link")).unwrap();
        replace_file(rootfd.as_fd(), &rel("x/link"), b"new").unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("target")).unwrap(),
            "keep"
        );
        assert!(!std::fs::symlink_metadata(root.join("x/link"))
            .unwrap()
            .file_type()
            .is_symlink());

        // A symlinked parent is refused, nothing is created outside.
        std::os::unix::fs::symlink(&outside, root.join("up")).unwrap();
        let e = replace_file(rootfd.as_fd(), &rel("up/new/f"), b"x").unwrap_err();
        assert!(matches!(e, Errno::ELOOP | Errno::ENOTDIR), "{e}");
        assert!(!outside.join("new").exists());

        // A directory is not replaced; an executable keeps its mode.
        assert_eq!(
            replace_file(rootfd.as_fd(), &rel("x/y"), b"x").unwrap_err(),
            Errno::EISDIR
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("x/y/z.txt"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        replace_file(rootfd.as_fd(), &rel("x/y/z.txt"), b"#!/bin/sh\n").unwrap();
        let mode = std::fs::metadata(root.join("x/y/z.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(root.join("x"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
