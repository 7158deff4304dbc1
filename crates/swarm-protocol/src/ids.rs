//! Newtype ids.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A project: one goal, its plan and its repository.
    ProjectId
);
id_type!(
    /// A task inside a project's plan. Matches `[a-z0-9][a-z0-9_-]{0,63}`.
    TaskId
);

/// Whether `s` is a valid task id: `[a-z0-9][a-z0-9_-]{0,63}`.
pub fn is_valid_task_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_id_rule() {
        assert!(is_valid_task_id("a"));
        assert!(is_valid_task_id("0-core_x"));
        assert!(is_valid_task_id(&"a".repeat(64)));
        assert!(!is_valid_task_id(&"a".repeat(65)));
        assert!(!is_valid_task_id(""));
        assert!(!is_valid_task_id("-a"));
        assert!(!is_valid_task_id("_a"));
        assert!(!is_valid_task_id("Abc"));
        assert!(!is_valid_task_id("a b"));
        assert!(!is_valid_task_id("a/b"));
    }
}
