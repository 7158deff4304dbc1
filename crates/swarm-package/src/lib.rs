//! Archives with manifests: a per-task archive as each task merges, and the
//! delivery (what `main` tracks, minus what must not ship) at the end.
//!
//! Layout of every archive (docs/outputs.md):
//!
//! ```text
//! manifest.txt           # agentswarm manifest v1 / # files: N / # bytes: B / "<sha256>  <size>  <path>"…
//! manifest.json          # the caller's document plus file_count, total_bytes, files, excluded, deleted
//! <prefix>/<path>…       # the files, paths as in the repository
//! ```
//!
//! The manifests list exactly the files under `<prefix>/`. Archives are
//! written to a temporary file and renamed into place, so a crash or a full
//! disk never leaves a truncated archive under the final name.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

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

/// What an archive holds.
#[derive(Debug, Clone)]
pub struct Packed {
    pub archive: PathBuf,
    pub files: Vec<FileEntry>,
    pub excluded: Vec<Excluded>,
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

fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Keeps `[A-Za-z0-9._-]`, replaces the rest: the name becomes a file name.
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

fn manifest_text(files: &[FileEntry], total: u64) -> String {
    let mut s = format!(
        "# agentswarm manifest v1\n# files: {}\n# bytes: {total}\n",
        files.len()
    );
    for f in files {
        s.push_str(&format!("{}  {}  {}\n", f.sha256, f.size, f.path));
    }
    s
}

/// Writes `archive` (a .tar.gz) holding `paths` of `root` under `prefix/`,
/// with manifest.txt and manifest.json (`manifest` plus the file lists).
pub fn write_archive(
    archive: &Path,
    prefix: &str,
    root: &Path,
    paths: &[String],
    manifest: serde_json::Value,
) -> Result<Packed> {
    let prefix = safe_name(prefix);
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut files = Vec::new();
    let mut excluded = Vec::new();
    let mut deleted = Vec::new();
    for path in sorted {
        if let Some(reason) = exclusion_reason(path) {
            excluded.push(Excluded {
                path: path.clone(),
                reason: reason.into(),
            });
            continue;
        }
        let full = root.join(path);
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
            Ok(_) => {
                let (size, sha256) = hash_file(&full).map_err(|source| Error::Read {
                    path: full.clone(),
                    source,
                })?;
                files.push(FileEntry {
                    path: path.clone(),
                    size,
                    sha256,
                });
            }
        }
    }
    let total_bytes = files.iter().map(|f| f.size).sum();
    let manifest_txt = manifest_text(&files, total_bytes);
    let mut doc = match manifest {
        serde_json::Value::Object(m) => m,
        serde_json::Value::Null => serde_json::Map::new(),
        other => {
            let mut m = serde_json::Map::new();
            m.insert("data".into(), other);
            m
        }
    };
    doc.insert(
        "archive".into(),
        archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .into(),
    );
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
    doc.insert("deleted".into(), deleted.clone().into());
    let mut manifest_json =
        serde_json::to_vec_pretty(&serde_json::Value::Object(doc)).unwrap_or_default();
    manifest_json.push(b'\n');

    let dir = archive.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_owned(),
        source,
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        archive
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let result =
        write_tar(&tmp, &prefix, root, &files, &manifest_txt, &manifest_json).and_then(|()| {
            std::fs::rename(&tmp, archive).map_err(|source| Error::Write {
                path: archive.to_owned(),
                source,
            })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(Packed {
        archive: archive.to_owned(),
        files,
        excluded,
        deleted,
        total_bytes,
        manifest_txt,
        manifest_json,
    })
}

fn write_tar(
    tmp: &Path,
    prefix: &str,
    root: &Path,
    files: &[FileEntry],
    txt: &str,
    json: &[u8],
) -> Result<()> {
    let werr = |source| Error::Write {
        path: tmp.to_owned(),
        source,
    };
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let file = std::fs::File::create(tmp).map_err(werr)?;
    let gz = flate2::write::GzEncoder::new(
        std::io::BufWriter::new(file),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    let add = |tar: &mut tar::Builder<_>,
               name: &str,
               mode: u32,
               size: u64,
               data: &mut dyn Read|
     -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).map_err(werr)
    };
    add(
        &mut tar,
        "manifest.txt",
        0o644,
        txt.len() as u64,
        &mut txt.as_bytes(),
    )?;
    add(
        &mut tar,
        "manifest.json",
        0o644,
        json.len() as u64,
        &mut &json[..],
    )?;
    for f in files {
        let full = root.join(&f.path);
        let rerr = |source| Error::Read {
            path: full.clone(),
            source,
        };
        let meta = std::fs::metadata(&full).map_err(rerr)?;
        if meta.len() != f.size {
            return Err(Error::Changed {
                path: f.path.clone(),
            });
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let mut reader = std::fs::File::open(&full).map_err(rerr)?.take(f.size);
        add(
            &mut tar,
            &format!("{prefix}/{}", f.path),
            mode,
            f.size,
            &mut reader,
        )?;
    }
    let gz = tar.into_inner().map_err(werr)?;
    let mut buf = gz.finish().map_err(werr)?;
    buf.flush().map_err(werr)?;
    let file = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)
}

/// Writes `out_dir/<name>-delivery.tar.gz` from the files `main` tracks and
/// the two manifests beside it (identical to the ones inside).
pub fn write_delivery(
    out_dir: &Path,
    name: &str,
    root: &Path,
    tracked: &[String],
    manifest: serde_json::Value,
) -> Result<Delivery> {
    let name = safe_name(name);
    let archive = out_dir.join(format!("{name}-delivery.tar.gz"));
    let packed = write_archive(&archive, &name, root, tracked, manifest)?;
    let manifest_txt = out_dir.join("manifest.txt");
    let manifest_json = out_dir.join("manifest.json");
    write_atomic(&manifest_txt, packed.manifest_txt.as_bytes())?;
    write_atomic(&manifest_json, &packed.manifest_json)?;
    Ok(Delivery {
        packed,
        manifest_txt,
        manifest_json,
    })
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
}
