//! Archives with manifests: a per-task archive as each task merges, and the
//! delivery (what `main` tracks, minus what must not ship) at the end.
//!
//! Layout of every archive (docs/outputs.md):
//!
//! ```text
//! <prefix>/<path>…       # the files, paths as in the repository
//! manifest.txt           # agentswarm manifest v1 / # files: N / # bytes: B / # withheld… / "<sha256>  <size>  <path>"…
//! manifest.json          # the caller's document plus file_count, total_bytes, files, excluded, withheld, deleted
//! ```
//!
//! The manifests list exactly the files under `<prefix>/`. Each file is read
//! once: the bytes scanned for secrets, hashed and archived are the same
//! bytes, so the manifests match the archive even if the tree changes while
//! it is packaged, and the file that was scanned is the file that ships. The
//! manifests therefore come last in the archive: they are known only once
//! every file has been read.
//!
//! A text file in which the caller's [`Scanner`] finds a secret (a key a
//! model pasted into a config file) is withheld: left out of the archive and
//! of the file list, and named, with what it holds but never the secret, in
//! both manifests. This crate knows nothing about what a key looks like; the
//! engine passes a scanner built from its key-shape detector and the
//! configured key values.
//!
//! File names are model-controlled too. A name with a control character (a
//! newline would split `manifest.txt` into a spoofed extra line; an ESC
//! sequence would reach the terminal of whoever reads it) is left out with
//! the reason, shown escaped ([`swarm_protocol::text::escape_control`]). A
//! name in which the scanner finds a secret (a file named like an API key)
//! is left out too, and every manifest gives it with the secret-bearing
//! parts of the path replaced by `[REDACTED]`: neither the archive nor a
//! manifest carries the key. Every path manifest.txt prints is escaped as a
//! last guard.
//!
//! Archives are written to a temporary file and renamed into place, so a
//! crash or a full disk never leaves a truncated archive under the final name.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use swarm_protocol::text::{escape_control, has_unsafe_chars};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} changed while it was being packaged; run again")]
    Changed { path: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Says what secret a text holds, as the object of "holds …" (for example
/// `an OpenAI-style key (sk-…)`), or `None` if it holds none. What it returns
/// goes into the manifests and the run's output, so it must describe the
/// secret, never quote it.
pub type Scanner<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// How much of a text file is scanned for secrets: its first 2 MiB. Source
/// and configuration files are far smaller; the rest of a larger file
/// (generated data, a minified bundle) is archived unscanned, which bounds the
/// memory and time a scan takes.
pub const SCAN_LIMIT: usize = 2 * 1024 * 1024;

/// A file with a NUL byte in its first 8 KiB is binary and is not scanned
/// (git's rule for telling text from binary).
pub const BINARY_PROBE: usize = 8 * 1024;

/// Why a path must not ship, or `None` if it may.
pub fn exclusion_reason(path: &str) -> Option<&'static str> {
    let p = Path::new(path);
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy()),
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Some("path outside the tree")
            }
            Component::CurDir => {}
        }
    }
    let file = parts.last().map(|s| s.to_lowercase()).unwrap_or_default();
    for dir in &parts[..parts.len().saturating_sub(1)] {
        match dir.as_ref() {
            ".git" => return Some("git metadata"),
            "target" | "node_modules" | "__pycache__" | ".pytest_cache" | ".mypy_cache"
            | ".ruff_cache" | ".tox" | ".venv" => return Some("build output"),
            ".ssh" | ".aws" | ".gnupg" => return Some("credentials directory"),
            _ => {}
        }
    }
    if file == ".git" {
        return Some("git metadata");
    }
    if file.starts_with(".env") {
        return Some("environment file (may hold secrets)");
    }
    const KEY_NAMES: &[&str] = &[
        "id_rsa",
        "id_dsa",
        "id_ecdsa",
        "id_ed25519",
        ".netrc",
        ".pgpass",
        ".npmrc",
        ".pypirc",
    ];
    const KEY_EXTENSIONS: &[&str] = &[".pem", ".key", ".p12", ".pfx", ".jks", ".keystore"];
    if KEY_NAMES.contains(&file.as_str()) || KEY_EXTENSIONS.iter().any(|e| file.ends_with(e)) {
        return Some("private key or credentials");
    }
    if file.ends_with(".pyc") || file.ends_with(".pyo") {
        return Some("build output");
    }
    None
}

/// Whether `head`, a file's first bytes, is text to be scanned.
fn is_text(head: &[u8]) -> bool {
    !head[..head.len().min(BINARY_PROBE)].contains(&0)
}

/// A packaged file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// A path left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Excluded {
    pub path: String,
    pub reason: String,
}

/// A file left out because it holds a secret. In manifest.json it is
/// `{"path": …, "reason": "holds …"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    pub path: String,
    /// What the [`Scanner`] found, e.g. `an OpenAI-style key (sk-…)`; never
    /// the secret itself.
    pub holds: String,
}

impl Withheld {
    /// `holds …`, as the manifests give it.
    pub fn reason(&self) -> String {
        format!("holds {}", self.holds)
    }
}

impl Serialize for Withheld {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Withheld", 2)?;
        st.serialize_field("path", &self.path)?;
        st.serialize_field("reason", &self.reason())?;
        st.end()
    }
}

/// What an archive holds.
#[derive(Debug, Clone)]
pub struct Packed {
    pub archive: PathBuf,
    pub files: Vec<FileEntry>,
    pub excluded: Vec<Excluded>,
    /// Files left out because they hold a secret, sorted by path.
    pub withheld: Vec<Withheld>,
    /// Listed paths that do not exist in the tree (deleted by the change).
    pub deleted: Vec<String>,
    pub total_bytes: u64,
    /// The manifests as written into the archive.
    pub manifest_txt: String,
    pub manifest_json: Vec<u8>,
}

/// The delivery and the manifests written beside it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub packed: Packed,
    pub manifest_txt: PathBuf,
    pub manifest_json: PathBuf,
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest: the name becomes a file name.
/// The SHA-256 of `bytes`, in lowercase hex (as in the manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn safe_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c| c == '.' || c == '-').to_owned();
    if s.is_empty() {
        "project".into()
    } else {
        s
    }
}

fn manifest_text(
    files: &[FileEntry],
    total: u64,
    withheld: &[Withheld],
    beside: &serde_json::Value,
) -> String {
    let mut s = format!(
        "# agentswarm manifest v1\n# files: {}\n# bytes: {total}\n",
        files.len()
    );
    // Files delivered next to the archive (an existing repository's patch,
    // bundle and PR.md), named in `beside` of manifest.json.
    for b in beside.as_array().into_iter().flatten() {
        let field = |k: &str| b.get(k).map(|v| v.to_string().trim_matches('"').to_owned());
        if let (Some(path), Some(size), Some(sha)) = (field("path"), field("size"), field("sha256"))
        {
            s.push_str(&format!(
                "# beside  {sha}  {size}  {}\n",
                escape_control(&path)
            ));
        }
    }
    if !withheld.is_empty() {
        let n = withheld.len();
        s.push_str(&format!(
            "# withheld: {n} {} holding a secret, not in this archive\n",
            if n == 1 { "file" } else { "files" }
        ));
        for w in withheld {
            s.push_str(&format!(
                "# withheld  {}  {}\n",
                escape_control(&w.path),
                escape_control(&w.reason())
            ));
        }
    }
    for f in files {
        s.push_str(&format!(
            "{}  {}  {}\n",
            f.sha256,
            f.size,
            escape_control(&f.path)
        ));
    }
    s
}

/// `path` with every component in which `scan` finds a secret replaced by
/// `[REDACTED]` (the whole path if only the whole holds one), for the
/// manifests of a file whose name holds a secret.
pub fn redacted_name(path: &str, scan: &Scanner<'_>) -> String {
    let parts: Vec<String> = path
        .split('/')
        .map(|part| {
            if scan(part).is_some() {
                "[REDACTED]".to_owned()
            } else {
                escape_control(part).into_owned()
            }
        })
        .collect();
    let joined = parts.join("/");
    if scan(&joined).is_some() {
        "[REDACTED]".to_owned()
    } else {
        joined
    }
}

/// Sorts `paths` into the regular files to pack, the excluded paths and the
/// deleted ones. Reads metadata only.
fn classify(
    root: &Path,
    paths: &[String],
    scan: &Scanner<'_>,
) -> Result<(Vec<String>, Vec<Excluded>, Vec<String>)> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut regular = Vec::new();
    let mut excluded = Vec::new();
    let mut deleted = Vec::new();
    for path in sorted {
        // Names first: what follows would print them.
        if let Some(holds) = scan(path) {
            let shown = redacted_name(path, scan);
            match std::fs::symlink_metadata(root.join(path)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(shown),
                _ => excluded.push(Excluded {
                    path: shown,
                    reason: format!("its name holds {holds}"),
                }),
            }
            continue;
        }
        if has_unsafe_chars(path) {
            let shown = escape_control(path).into_owned();
            match std::fs::symlink_metadata(root.join(path)) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(shown),
                _ => excluded.push(Excluded {
                    path: shown,
                    reason: "its name holds a control character".into(),
                }),
            }
            continue;
        }
        if let Some(reason) = exclusion_reason(path) {
            excluded.push(Excluded {
                path: path.clone(),
                reason: reason.into(),
            });
            continue;
        }
        let full = root.join(path);
        // A directory on the way that is a symlink (a command swapped `d/`
        // for a link) would lead the archive out of the tree: never follow it.
        if under_symlink(root, path) {
            excluded.push(Excluded {
                path: path.clone(),
                reason: "under a symbolic link".into(),
            });
            continue;
        }
        match std::fs::symlink_metadata(&full) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => deleted.push(path.clone()),
            Err(source) => return Err(Error::Read { path: full, source }),
            Ok(m) if m.file_type().is_symlink() => excluded.push(Excluded {
                path: path.clone(),
                reason: "symbolic link".into(),
            }),
            Ok(m) if !m.is_file() => excluded.push(Excluded {
                path: path.clone(),
                reason: "not a regular file".into(),
            }),
            Ok(_) => regular.push(path.clone()),
        }
    }
    Ok((regular, excluded, deleted))
}

/// Writes `archive` (a .tar.gz) holding `paths` of `root` under `prefix/`,
/// with manifest.txt and manifest.json (`manifest` plus the file lists).
/// Files in which `scan` finds a secret are withheld.
pub fn write_archive(
    archive: &Path,
    prefix: &str,
    root: &Path,
    paths: &[String],
    manifest: serde_json::Value,
    scan: &Scanner<'_>,
) -> Result<Packed> {
    let prefix = safe_name(prefix);
    let (regular, excluded, deleted) = classify(root, paths, scan)?;
    let dir = archive.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    let archive_name = archive
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{archive_name}.tmp-{}", std::process::id()));
    let mut out = TarOut::create(&tmp)?;
    let result = (|| {
        let mut files = Vec::new();
        let mut withheld = Vec::new();
        for path in &regular {
            match pack_file(&mut out, root, &prefix, path, scan)? {
                Outcome::Archived(f) => files.push(f),
                Outcome::Withheld(w) => withheld.push(w),
            }
        }
        let total_bytes = files.iter().map(|f| f.size).sum();
        let beside = manifest
            .get("beside")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let manifest_txt = manifest_text(&files, total_bytes, &withheld, &beside);
        let mut doc = match manifest {
            serde_json::Value::Object(m) => m,
            serde_json::Value::Null => serde_json::Map::new(),
            other => {
                let mut m = serde_json::Map::new();
                m.insert("data".into(), other);
                m
            }
        };
        doc.insert("archive".into(), archive_name.clone().into());
        doc.insert("prefix".into(), prefix.clone().into());
        doc.insert("file_count".into(), files.len().into());
        doc.insert("total_bytes".into(), total_bytes.into());
        doc.insert(
            "files".into(),
            serde_json::to_value(&files).unwrap_or_default(),
        );
        doc.insert(
            "excluded".into(),
            serde_json::to_value(&excluded).unwrap_or_default(),
        );
        doc.insert(
            "withheld".into(),
            serde_json::to_value(&withheld).unwrap_or_default(),
        );
        doc.insert("deleted".into(), deleted.clone().into());
        let mut manifest_json =
            serde_json::to_vec_pretty(&serde_json::Value::Object(doc)).unwrap_or_default();
        manifest_json.push(b'\n');
        out.add("manifest.txt", 0o644, &mut manifest_txt.as_bytes())?;
        out.add("manifest.json", 0o644, &mut &manifest_json[..])?;
        out.finish()?;
        std::fs::rename(&tmp, archive).map_err(|source| Error::Write {
            path: archive.to_owned(),
            source,
        })?;
        Ok(Packed {
            archive: archive.to_owned(),
            files,
            excluded,
            withheld,
            deleted,
            total_bytes,
            manifest_txt,
            manifest_json,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

enum Outcome {
    Archived(FileEntry),
    Withheld(Withheld),
}

/// Whether a directory on the way from `root` to `path` is a symbolic link.
fn under_symlink(root: &Path, path: &str) -> bool {
    let mut dir = root.to_owned();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        dir.push(part);
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return true;
        }
    }
    false
}

/// Reads `root/path` once: scans its first [`SCAN_LIMIT`] bytes if it is
/// text, and archives it unless `scan` finds a secret, hashing the bytes as
/// they are archived.
fn pack_file(
    out: &mut TarOut,
    root: &Path,
    prefix: &str,
    path: &str,
    scan: &Scanner<'_>,
) -> Result<Outcome> {
    let full = root.join(path);
    let rerr = |source| Error::Read {
        path: full.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&full)
        .map_err(rerr)?;
    let meta = file.metadata().map_err(rerr)?;
    let mut head = Vec::new();
    (&mut file)
        .take(SCAN_LIMIT as u64)
        .read_to_end(&mut head)
        .map_err(rerr)?;
    if is_text(&head) {
        if let Some(holds) = scan(&String::from_utf8_lossy(&head)) {
            return Ok(Outcome::Withheld(Withheld {
                path: path.to_owned(),
                holds,
            }));
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = if meta.permissions().mode() & 0o111 != 0 {
        0o755
    } else {
        0o644
    };
    let name = format!("{prefix}/{path}");
    if head.len() < SCAN_LIMIT {
        // `head` is the whole file.
        out.add(&name, mode, &mut &head[..])?;
        return Ok(Outcome::Archived(FileEntry {
            path: path.to_owned(),
            size: head.len() as u64,
            sha256: hex::encode(Sha256::digest(&head)),
        }));
    }
    // A large file: `head`, then the rest streamed from the open file. The
    // tar header needs the size first; a file that shrinks or grows meanwhile
    // is reported, and the half-written archive discarded.
    let changed = || Error::Changed {
        path: path.to_owned(),
    };
    let size = meta.len();
    if size < head.len() as u64 {
        return Err(changed());
    }
    let mut reader = Hashing {
        inner: (&head[..]).chain(&mut file).take(size),
        hash: Sha256::new(),
        count: 0,
        read_error: None,
    };
    if let Err(e) = out.add_sized(&name, mode, size, &mut reader) {
        return Err(match reader.read_error.take() {
            Some(source) => Error::Read { path: full, source },
            None => e,
        });
    }
    let (count, sha256) = (reader.count, hex::encode(reader.hash.finalize()));
    let mut more = [0u8; 1];
    if count != size || file.read(&mut more).map_err(rerr)? != 0 {
        return Err(changed());
    }
    Ok(Outcome::Archived(FileEntry {
        path: path.to_owned(),
        size,
        sha256,
    }))
}

/// Hashes and counts what is read through it; keeps a read error so that it
/// is reported as the source file's, not the archive's.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
    count: u64,
    read_error: Option<std::io::Error>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hash.update(&buf[..n]);
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let kind = e.kind();
                let message = e.to_string();
                self.read_error = Some(e);
                Err(std::io::Error::new(kind, message))
            }
        }
    }
}

/// The temporary .tar.gz being written.
struct TarOut {
    tar: tar::Builder<flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>>,
    tmp: PathBuf,
    mtime: u64,
}

impl TarOut {
    fn create(tmp: &Path) -> Result<Self> {
        let file = std::fs::File::create(tmp).map_err(|source| Error::Write {
            path: tmp.to_owned(),
            source,
        })?;
        let gz = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(file),
            flate2::Compression::default(),
        );
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self {
            tar,
            tmp: tmp.to_owned(),
            mtime,
        })
    }

    fn werr(&self, source: std::io::Error) -> Error {
        Error::Write {
            path: self.tmp.clone(),
            source,
        }
    }

    /// Adds a file whose bytes are all in `data`.
    fn add(&mut self, name: &str, mode: u32, data: &mut &[u8]) -> Result<()> {
        self.add_sized(name, mode, data.len() as u64, data)
    }

    fn add_sized(&mut self, name: &str, mode: u32, size: u64, data: &mut dyn Read) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(self.mtime);
        h.set_entry_type(tar::EntryType::Regular);
        let r = self.tar.append_data(&mut h, name, data);
        r.map_err(|e| self.werr(e))
    }

    fn finish(self) -> Result<()> {
        let werr = |source| Error::Write {
            path: self.tmp.clone(),
            source,
        };
        let gz = self.tar.into_inner().map_err(werr)?;
        let mut buf = gz.finish().map_err(werr)?;
        buf.flush().map_err(werr)?;
        // Not synced: a task archive can be rebuilt from its commit (recovery
        // does, for one that is missing or incomplete, see
        // [`is_complete_archive`]), and the delivery syncs everything it
        // wrote at once (`write_delivery`).
        buf.into_inner().map_err(|e| werr(e.into_error()))?;
        Ok(())
    }
}

/// Writes `out_dir/<name>-delivery.tar.gz` from the files `main` tracks and
/// the two manifests beside it (identical to the ones inside). Files in which
/// `scan` finds a secret are withheld.
pub fn write_delivery(
    out_dir: &Path,
    name: &str,
    root: &Path,
    tracked: &[String],
    manifest: serde_json::Value,
    scan: &Scanner<'_>,
) -> Result<Delivery> {
    let name = safe_name(name);
    let archive = out_dir.join(format!("{name}-delivery.tar.gz"));
    let packed = write_archive(&archive, &name, root, tracked, manifest, scan)?;
    let manifest_txt = out_dir.join("manifest.txt");
    let manifest_json = out_dir.join("manifest.json");
    write_atomic(&manifest_txt, packed.manifest_txt.as_bytes())?;
    write_atomic(&manifest_json, &packed.manifest_json)?;
    sync_filesystem(out_dir)?;
    Ok(Delivery {
        packed,
        manifest_txt,
        manifest_json,
    })
}

/// Makes everything written to the filesystem holding `dir` durable, with
/// one `syncfs`: the delivery, its manifests, and the run's task archives
/// written (unsynced) before it — one sync a run instead of one a file.
fn sync_filesystem(dir: &Path) -> Result<()> {
    let werr = |source| Error::Write {
        path: dir.to_owned(),
        source,
    };
    use std::os::fd::AsRawFd;
    let d = std::fs::File::open(dir).map_err(werr)?;
    // SAFETY: `d` is an open descriptor for the call's whole duration.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(werr(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether `path` is a whole archive as [`write_archive`] writes it: a gzip
/// stream read to its end (its length and CRC checked) holding a tar whose
/// last entry is `manifest.json`. An archive cut short by a crash of the
/// machine before its data reached the disk is not.
pub fn is_complete_archive(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let Ok(entries) = tar.entries() else {
        return false;
    };
    let mut last = None;
    for entry in entries {
        let Ok(mut entry) = entry else {
            return false;
        };
        if std::io::copy(&mut entry, &mut std::io::sink()).is_err() {
            return false;
        }
        last = entry.path().ok().map(|p| p.into_owned());
    }
    // The tar ends with its two zero blocks; the gzip trailer is checked
    // when the decoder reaches the end of its stream.
    let mut rest = tar.into_inner();
    if std::io::copy(&mut rest, &mut std::io::sink()).is_err() {
        return false;
    }
    last.is_some_and(|p| p.as_os_str() == "manifest.json")
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let werr = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let r = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// The engine's scanner in little: the key shapes swarm-llm detects.
    fn key_scanner(text: &str) -> Option<String> {
        let found = swarm_llm::redact::key_shapes(text);
        (!found.is_empty()).then(|| found.join(" and "))
    }

    /// Checks what `check_delivery` in the end-to-end tests checks: the
    /// manifests list exactly the files under the prefix, with their sizes
    /// and hashes. Returns those files, without the prefix.
    fn check_manifests(packed: &Packed, prefix: &str) -> BTreeMap<String, Vec<u8>> {
        let entries = read(&packed.archive);
        let txt = String::from_utf8(entries["manifest.txt"].clone()).unwrap();
        assert_eq!(txt, packed.manifest_txt);
        assert_eq!(entries["manifest.json"], packed.manifest_json);
        let payload: BTreeMap<String, Vec<u8>> = entries
            .iter()
            .filter_map(|(p, d)| {
                p.strip_prefix(&format!("{prefix}/"))
                    .map(|rest| (rest.to_owned(), d.clone()))
            })
            .collect();
        assert_eq!(payload.len() + 2, entries.len(), "{:?}", entries.keys());
        let header: usize = txt
            .lines()
            .find_map(|l| l.strip_prefix("# files: "))
            .unwrap()
            .parse()
            .unwrap();
        let lines: Vec<&str> = txt.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(header, payload.len(), "{txt}");
        assert_eq!(lines.len(), payload.len(), "{txt}");
        let bytes: usize = payload.values().map(Vec::len).sum();
        assert!(txt.contains(&format!("# bytes: {bytes}\n")), "{txt}");
        for line in lines {
            let parts: Vec<&str> = line.split("  ").collect();
            let data = &payload[parts[2]];
            assert_eq!(parts[1], data.len().to_string(), "{line}");
            assert_eq!(parts[0], hex::encode(Sha256::digest(data)), "{line}");
        }
        let json: serde_json::Value = serde_json::from_slice(&packed.manifest_json).unwrap();
        assert_eq!(json["file_count"], payload.len());
        assert_eq!(json["total_bytes"], bytes);
        payload
    }

    /// The archive, decompressed.
    fn tar_bytes(path: &Path) -> Vec<u8> {
        let mut d = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
            .read_to_end(&mut d)
            .unwrap();
        d
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    fn read(path: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(path).unwrap(),
        ));
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let p = e.path().unwrap().to_string_lossy().into_owned();
                let mut d = Vec::new();
                e.read_to_end(&mut d).unwrap();
                (p, d)
            })
            .collect()
    }

    #[test]
    fn what_must_not_ship() {
        for p in [
            ".env",
            ".env.local",
            "config/.env.prod",
            "target/debug/x",
            "web/node_modules/a.js",
            "pkg/__pycache__/m.cpython-311.pyc",
            "keys/server.pem",
            ".ssh/id_ed25519",
            "id_rsa",
            ".git/config",
        ] {
            assert!(exclusion_reason(p).is_some(), "{p} should be excluded");
        }
        for p in [
            "src/main.rs",
            "README.md",
            "environment.py",
            "pkg/targets.py",
            "docs/keyboard.md",
        ] {
            assert_eq!(exclusion_reason(p), None, "{p} should ship");
        }
    }

    #[test]
    fn delivery_manifests_match_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.py"), "print('a')\n").unwrap();
        std::fs::write(root.join("README.md"), "# hi\n").unwrap();
        std::fs::write(root.join(".env"), "OPENAI_API_KEY=sk-fake-test\n").unwrap();
        let tracked = vec![
            "src/a.py".to_owned(),
            "README.md".into(),
            ".env".into(),
            "gone.txt".into(),
        ];
        let out = dir.path().join("out");
        let d = write_delivery(
            &out,
            "my app",
            &root,
            &tracked,
            serde_json::json!({"status": "done"}),
            &key_scanner,
        )
        .unwrap();
        assert_eq!(d.packed.archive, out.join("my-app-delivery.tar.gz"));
        let files = read(&d.packed.archive);
        assert_eq!(
            files.keys().cloned().collect::<Vec<_>>(),
            [
                "manifest.json",
                "manifest.txt",
                "my-app/README.md",
                "my-app/src/a.py"
            ]
        );
        assert_eq!(
            std::fs::read(&d.manifest_txt).unwrap(),
            files["manifest.txt"]
        );
        assert_eq!(
            std::fs::read(&d.manifest_json).unwrap(),
            files["manifest.json"]
        );
        let txt = String::from_utf8(files["manifest.txt"].clone()).unwrap();
        assert!(txt.contains("# files: 2\n"), "{txt}");
        let sha = hex::encode(Sha256::digest(b"print('a')\n"));
        assert!(txt.contains(&format!("{sha}  11  src/a.py\n")), "{txt}");
        let json: serde_json::Value = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(json["status"], "done");
        assert_eq!(json["file_count"], 2);
        assert_eq!(json["excluded"][0]["path"], ".env");
        assert_eq!(json["deleted"][0], "gone.txt");
        assert!(
            !String::from_utf8_lossy(&std::fs::read(&d.packed.archive).unwrap())
                .contains("sk-fake")
        );
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    // Obviously fake keys of the right shapes.
    const FAKE_OPENAI: &str = "sk-proj-FAKEFAKEFAKEFAKEFAKEFAKE1234";
    const FAKE_PEM_BODY: &str = "MIIEpAIBAAKCAQEAfakefakefakefakefakefakefake";

    #[test]
    fn files_holding_a_secret_are_withheld_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("config")).unwrap();
        std::fs::create_dir_all(root.join("deploy")).unwrap();
        std::fs::write(
            root.join("config/settings.py"),
            format!("DEBUG = False\nOPENAI_API_KEY = \"{FAKE_OPENAI}\"\n"),
        )
        .unwrap();
        // Not named like a key file, so only the scan can catch it.
        std::fs::write(
            root.join("deploy/server.txt"),
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\n{FAKE_PEM_BODY}\n-----END RSA PRIVATE KEY-----\n"
            ),
        )
        .unwrap();
        std::fs::write(root.join("app.py"), "print('hello')\n").unwrap();
        let tracked = vec![
            "config/settings.py".to_owned(),
            "deploy/server.txt".into(),
            "app.py".into(),
        ];
        let out = dir.path().join("out");
        let d = write_delivery(
            &out,
            "app",
            &root,
            &tracked,
            serde_json::json!({}),
            &key_scanner,
        )
        .unwrap();

        let payload = check_manifests(&d.packed, "app");
        assert_eq!(payload.keys().collect::<Vec<_>>(), ["app.py"]);
        assert_eq!(
            d.packed.withheld,
            [
                Withheld {
                    path: "config/settings.py".into(),
                    holds: "OpenAI-style key (sk-…)".into(),
                },
                Withheld {
                    path: "deploy/server.txt".into(),
                    holds: "PEM private key (-----BEGIN … PRIVATE KEY-----)".into(),
                },
            ]
        );
        let json: serde_json::Value = serde_json::from_slice(&d.packed.manifest_json).unwrap();
        assert_eq!(
            json["withheld"],
            serde_json::json!([
                {"path": "config/settings.py", "reason": "holds OpenAI-style key (sk-…)"},
                {"path": "deploy/server.txt", "reason": "holds PEM private key (-----BEGIN … PRIVATE KEY-----)"},
            ])
        );
        assert_eq!(json["file_count"], 1);
        assert_eq!(json["excluded"], serde_json::json!([]));
        let txt = &d.packed.manifest_txt;
        assert!(
            txt.contains(
                "# withheld: 2 files holding a secret, not in this archive\n\
                 # withheld  config/settings.py  holds OpenAI-style key (sk-…)\n\
                 # withheld  deploy/server.txt  holds PEM private key (-----BEGIN … PRIVATE KEY-----)\n"
            ),
            "{txt}"
        );
        // The secrets are nowhere: not in the archive, not in the manifests beside it.
        let everything = [
            tar_bytes(&d.packed.archive),
            std::fs::read(&d.manifest_txt).unwrap(),
            std::fs::read(&d.manifest_json).unwrap(),
        ]
        .concat();
        assert!(!contains(&everything, FAKE_OPENAI));
        assert!(!contains(&everything, FAKE_PEM_BODY));
        assert!(contains(&everything, "print('hello')"));
    }

    #[test]
    fn control_characters_and_key_shaped_names_never_ship_nor_print() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(root.join("keys")).unwrap();
        let spoof =
            "a\n0000000000000000000000000000000000000000000000000000000000000000  1  fake.txt";
        let esc = "b\u{1b}[2J\u{1b}]0;owned\u{7}.txt";
        let key_name = format!("keys/{FAKE_OPENAI}.txt");
        std::fs::write(root.join("ok.txt"), "ok\n").unwrap();
        std::fs::write(root.join(spoof), "x").unwrap();
        std::fs::write(root.join(esc), "x").unwrap();
        std::fs::write(root.join(&key_name), "x").unwrap();
        let gone = format!("{FAKE_OPENAI}-deleted");
        let paths = vec![
            "ok.txt".to_owned(),
            spoof.into(),
            esc.into(),
            key_name.clone(),
            gone.clone(),
        ];
        let d = write_delivery(
            &dir.path().join("out"),
            "names",
            &root,
            &paths,
            serde_json::json!({}),
            &key_scanner,
        )
        .unwrap();
        let payload = check_manifests(&d.packed, "names");
        assert_eq!(payload.keys().collect::<Vec<_>>(), ["ok.txt"]);
        let json: serde_json::Value = serde_json::from_slice(&d.packed.manifest_json).unwrap();
        assert_eq!(
            json["excluded"],
            serde_json::json!([
                {"path": "a\\n0000000000000000000000000000000000000000000000000000000000000000  1  fake.txt", "reason": "its name holds a control character"},
                {"path": "b\\e[2J\\e]0;owned\\x07.txt", "reason": "its name holds a control character"},
                {"path": "keys/[REDACTED]", "reason": "its name holds OpenAI-style key (sk-…)"},
            ])
        );
        assert_eq!(json["deleted"], serde_json::json!(["[REDACTED]"]));
        let everything = [
            tar_bytes(&d.packed.archive),
            std::fs::read(&d.manifest_txt).unwrap(),
            std::fs::read(&d.manifest_json).unwrap(),
        ]
        .concat();
        assert!(!contains(&everything, FAKE_OPENAI));
        assert!(!everything.contains(&0x1b));
        assert_eq!(
            redacted_name(&format!("{FAKE_OPENAI}/x\ny"), &key_scanner),
            "[REDACTED]/x\\ny"
        );
    }

    #[test]
    fn an_archive_cut_short_is_not_complete() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(&root).unwrap();
        // Incompressible bytes, so that the cuts below land inside the file's data.
        let data: Vec<u8> = (0..40_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("a.bin"), &data).unwrap();
        let archive = dir.path().join("t1.tar.gz");
        write_archive(
            &archive,
            "t1",
            &root,
            &["a.bin".into()],
            serde_json::Value::Null,
            &key_scanner,
        )
        .unwrap();
        assert!(is_complete_archive(&archive));
        let whole = std::fs::read(&archive).unwrap();
        let cut = dir.path().join("cut.tar.gz");
        for len in [0, 10, whole.len() / 2, whole.len() - 9, whole.len() - 1] {
            std::fs::write(&cut, &whole[..len]).unwrap();
            assert!(
                !is_complete_archive(&cut),
                "cut at {len} of {}",
                whole.len()
            );
        }
        // The first kilobyte lost (zeroed), as a crash can leave a block.
        let mut zeroed = whole.clone();
        zeroed[20..1044].fill(0);
        std::fs::write(&cut, &zeroed).unwrap();
        assert!(!is_complete_archive(&cut));
        assert!(!is_complete_archive(&dir.path().join("missing.tar.gz")));
    }

    #[test]
    fn a_task_archive_withholds_too_and_says_nothing_when_clean() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.txt"), "a\n").unwrap();
        std::fs::write(root.join("b.txt"), format!("token: {FAKE_OPENAI}\n")).unwrap();
        let archive = dir.path().join("tasks/t1.tar.gz");
        let paths = vec!["a.txt".to_owned(), "b.txt".into()];
        let p = write_archive(
            &archive,
            "t1",
            &root,
            &paths,
            serde_json::json!({"task": "t1"}),
            &key_scanner,
        )
        .unwrap();
        assert_eq!(
            check_manifests(&p, "t1").keys().collect::<Vec<_>>(),
            ["a.txt"]
        );
        assert_eq!(p.withheld.len(), 1);
        assert!(p
            .manifest_txt
            .contains("# withheld: 1 file holding a secret"));
        assert!(!contains(&tar_bytes(&archive), FAKE_OPENAI));

        std::fs::write(root.join("b.txt"), "b\n").unwrap();
        let p = write_archive(
            &archive,
            "t1",
            &root,
            &paths,
            serde_json::Value::Null,
            &key_scanner,
        )
        .unwrap();
        assert_eq!(check_manifests(&p, "t1").len(), 2);
        assert!(p.withheld.is_empty());
        assert!(!p.manifest_txt.contains("withheld"), "{}", p.manifest_txt);
        let json: serde_json::Value = serde_json::from_slice(&p.manifest_json).unwrap();
        assert_eq!(json["withheld"], serde_json::json!([]));
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        let outside = dir.path().join("data");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("agentswarm.db"), "SQLite format 3 STORE").unwrap();
        std::fs::write(root.join("ok.txt"), "ok\n").unwrap();
        // The task "changed" d/agentswarm.db; a command replaced d by a link out.
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        std::os::unix::fs::symlink(outside.join("agentswarm.db"), root.join("direct")).unwrap();
        let archive = dir.path().join("out/t.tar.gz");
        let paths = vec!["ok.txt".into(), "d/agentswarm.db".into(), "direct".into()];
        let p = write_archive(
            &archive,
            "t",
            &root,
            &paths,
            serde_json::Value::Null,
            &|_: &str| None,
        )
        .unwrap();
        let files = read(&archive);
        assert!(files.contains_key("t/ok.txt"), "{:?}", files.keys());
        assert!(!contains(&tar_bytes(&archive), "STORE"));
        let reasons: Vec<(&str, &str)> = p
            .excluded
            .iter()
            .map(|e| (e.path.as_str(), e.reason.as_str()))
            .collect();
        assert!(
            reasons.contains(&("d/agentswarm.db", "under a symbolic link")),
            "{reasons:?}"
        );
        assert!(
            reasons.contains(&("direct", "symbolic link")),
            "{reasons:?}"
        );
    }

    #[test]
    fn binary_files_are_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(&root).unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        png.extend_from_slice(b"looks like text after the NUL");
        std::fs::write(root.join("logo.png"), &png).unwrap();
        std::fs::write(root.join("notes.md"), "plain text\n").unwrap();
        let scanned = std::cell::RefCell::new(Vec::new());
        // Finds a "secret" in every text it is shown but the file names.
        let scan = |text: &str| {
            if text == "logo.png" || text == "notes.md" {
                return None;
            }
            scanned.borrow_mut().push(text.to_owned());
            Some("a secret".to_owned())
        };
        let p = write_archive(
            &dir.path().join("x.tar.gz"),
            "x",
            &root,
            &["logo.png".to_owned(), "notes.md".into()],
            serde_json::Value::Null,
            &scan,
        )
        .unwrap();
        assert_eq!(check_manifests(&p, "x")["logo.png"], png);
        assert_eq!(*scanned.borrow(), ["plain text\n"]);
        assert_eq!(p.withheld[0].path, "notes.md");
    }

    #[test]
    fn large_files_are_scanned_in_their_first_part_and_archived_whole() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(&root).unwrap();
        let line = "word,count,more text to fill the line\n";
        let mut big = line.repeat(SCAN_LIMIT / line.len() + 10);
        big.push_str(&format!("late = \"{FAKE_OPENAI}\"\n"));
        assert!(big.len() > SCAN_LIMIT);
        std::fs::write(root.join("data.csv"), &big).unwrap();
        let early = format!("key = \"{FAKE_OPENAI}\"\n{big}");
        std::fs::write(root.join("early.csv"), &early).unwrap();
        let p = write_archive(
            &dir.path().join("x.tar.gz"),
            "x",
            &root,
            &["data.csv".to_owned(), "early.csv".into()],
            serde_json::Value::Null,
            &key_scanner,
        )
        .unwrap();
        // Past the scanned part a key is not seen: the documented limit.
        assert_eq!(check_manifests(&p, "x")["data.csv"], big.as_bytes());
        assert_eq!(p.withheld[0].path, "early.csv");
    }
}
