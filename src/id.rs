//! Container IDs: validation and exact lookup.
use std::path::Path;

/// Longest ID: it names the container's state directory and, by default,
/// its cgroup directory, and a file name holds at most 255 bytes (NAME_MAX).
pub const MAX_LEN: usize = 255;

/// Why an ID was refused; `Display` is the reason only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("it is empty")]
    Empty,
    #[error("it is {0} characters long, the limit is {MAX_LEN} (the ID names the container's state directory and cgroup, and a file name holds at most {MAX_LEN} bytes)")]
    TooLong(usize),
    #[error("'.' and '..' are not container IDs")]
    Dots,
    #[error("character {0:?} is not allowed (use letters, digits, '_', '+', '.', '-')")]
    BadChar(char),
}

/// Checks `id` against `^[A-Za-z0-9_+.-]+$`, at most [`MAX_LEN`]
/// characters, not `.`/`..`.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id == "." || id == ".." {
        return Err(IdError::Dots);
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '.' | '-')))
    {
        return Err(IdError::BadChar(c));
    }
    if id.len() > MAX_LEN {
        return Err(IdError::TooLong(id.len()));
    }
    Ok(())
}

/// A file name made of `id` and `suffix` that stays within NAME_MAX: the ID
/// is cut short to leave room for the suffix (the state directory itself is
/// the ID, which [`validate`] bounds).
pub fn file_name(id: &str, suffix: &str) -> String {
    let mut room = MAX_LEN.saturating_sub(suffix.len());
    while room < id.len() && !id.is_char_boundary(room) {
        room -= 1;
    }
    format!("{}{suffix}", &id[..room.min(id.len())])
}

/// Outcome of looking an ID up among the containers under a state root.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Found,
    /// No container has this ID; these IDs start with it (a hint only:
    /// IDs are never abbreviated).
    Missing {
        longer: Vec<String>,
    },
}

/// Looks for exactly `id` under `root`. IDs are never abbreviated: after a
/// container is gone, a command naming it must not reach another whose ID
/// merely starts the same (`web` vs `web-2`).
pub fn lookup(root: &Path, id: &str) -> Lookup {
    if root.join(id).is_dir() {
        return Lookup::Found;
    }
    let mut longer: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(id) && validate(name).is_ok())
        .collect();
    longer.sort();
    longer.truncate(5);
    Lookup::Missing { longer }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for id in ["a", "abc-123", "x_y+z.w", "A.b", &"a".repeat(MAX_LEN)] {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        assert_eq!(validate(""), Err(IdError::Empty));
        assert_eq!(validate("."), Err(IdError::Dots));
        assert_eq!(validate(".."), Err(IdError::Dots));
        assert_eq!(validate("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(validate("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(validate("a\0b"), Err(IdError::BadChar('\0')));
        assert_eq!(
            validate(&"a".repeat(MAX_LEN + 1)),
            Err(IdError::TooLong(MAX_LEN + 1))
        );
        assert_eq!(validate(&"a".repeat(1024)), Err(IdError::TooLong(1024)));
        let msg = IdError::TooLong(300).to_string();
        assert!(msg.contains("300") && msg.contains("255"), "{msg}");
    }

    #[test]
    fn derived_file_names_fit() {
        assert_eq!(file_name("c1", "-dump.log"), "c1-dump.log");
        let long = "a".repeat(MAX_LEN);
        let n = file_name(&long, "-restore.log");
        assert_eq!(n.len(), MAX_LEN);
        assert!(n.ends_with("a-restore.log"));
    }

    #[test]
    fn lookup_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["web-2", "alpha1", "alpha2", "beta"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        assert_eq!(lookup(dir.path(), "beta"), Lookup::Found);
        assert_eq!(
            lookup(dir.path(), "web"),
            Lookup::Missing {
                longer: vec!["web-2".into()]
            }
        );
        assert_eq!(
            lookup(dir.path(), "alp"),
            Lookup::Missing {
                longer: vec!["alpha1".into(), "alpha2".into()]
            }
        );
        assert_eq!(
            lookup(dir.path(), "gamma"),
            Lookup::Missing { longer: vec![] }
        );
    }
}
