//! The secrets file: `KEY=value` lines read by the supervisor only, so that
//! API keys need not sit in the service's environment. It must not be
//! readable by group or others; a file that is is refused, saying which mode
//! to set.
//!
//! Format: one `NAME=value` a line; blank lines and `#` comments are
//! skipped; an optional `export ` prefix and one pair of surrounding quotes
//! are removed (the format of a systemd `EnvironmentFile`, minus escapes).

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// Values of a secrets file by name. `Debug` never prints a value.
#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Reads `path`, refusing it when group or others may read or write it.
    pub fn load(path: &Path) -> Result<Secrets> {
        use std::os::unix::fs::PermissionsExt;
        let bad = |message: String| Error::Secrets {
            path: path.to_owned(),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "it is readable or writable by group or others (mode {mode:03o}); \
                 run `chmod 600 {}` (and keep it owned by the service's user)",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(bad)
    }

    fn parse(text: &str) -> std::result::Result<Secrets, String> {
        let mut values = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            // Never echo the line: it holds a secret.
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!(
                    "line {} is not NAME=value (the value is not shown)",
                    i + 1
                ));
            };
            let name = name.trim();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "line {}: {name:?} is not a variable name (letters, digits, _)",
                    i + 1
                ));
            }
            let value = value.trim();
            let value = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            values.insert(name.to_owned(), value.to_owned());
        }
        Ok(Secrets { values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn parses_lines_and_refuses_open_modes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.env");
        std::fs::write(
            &path,
            "# keys\nexport OPENAI_API_KEY=\"sk-test-not-real-0000000000\"\n\nANTHROPIC_API_KEY=ant-test\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = Secrets::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("640"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Secrets::load(&path).unwrap();
        assert_eq!(s.get("OPENAI_API_KEY"), Some("sk-test-not-real-0000000000"));
        assert_eq!(s.get("ANTHROPIC_API_KEY"), Some("ant-test"));
        assert!(!format!("{s:?}").contains("not-real"));
    }

    #[test]
    fn a_bad_line_is_named_without_its_value() {
        let err = Secrets::parse("A=1\nsk-test-not-real-value\n").unwrap_err();
        assert!(err.contains("line 2") && !err.contains("not-real"), "{err}");
    }
}
