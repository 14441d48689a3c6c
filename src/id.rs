//! Container IDs: validation and unambiguous-prefix resolution.
use std::path::Path;

pub const MAX_LEN: usize = 1024;

/// Why an ID was refused; `Display` is the reason only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {MAX_LEN} characters")]
    TooLong,
    #[error("'.' and '..' are not container IDs")]
    Dots,
    #[error("character {0:?} is not allowed (use letters, digits, '_', '+', '.', '-')")]
    BadChar(char),
}

/// Checks `id` against `^[A-Za-z0-9_+.-]+$`, at most 1024 characters, not `.`/`..`.
pub fn validate(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_LEN {
        return Err(IdError::TooLong);
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
    Ok(())
}

/// Outcome of looking an ID up among the containers under a state root.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    Exact(String),
    Prefix(String),
    Ambiguous(Vec<String>),
    Missing,
}

/// Finds `id` under `root`: an exact match wins, else a unique prefix.
pub fn lookup(root: &Path, id: &str) -> Lookup {
    if root.join(id).is_dir() {
        return Lookup::Exact(id.to_string());
    }
    let mut matches: Vec<String> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(id))
        .collect();
    matches.sort();
    match matches.len() {
        0 => Lookup::Missing,
        1 => Lookup::Prefix(matches.remove(0)),
        _ => Lookup::Ambiguous(matches),
    }
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
        assert_eq!(validate(&"a".repeat(MAX_LEN + 1)), Err(IdError::TooLong));
    }

    #[test]
    fn prefix_lookup() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["alpha1", "alpha2", "beta"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        assert_eq!(lookup(dir.path(), "beta"), Lookup::Exact("beta".into()));
        assert_eq!(lookup(dir.path(), "be"), Lookup::Prefix("beta".into()));
        assert_eq!(
            lookup(dir.path(), "alp"),
            Lookup::Ambiguous(vec!["alpha1".into(), "alpha2".into()])
        );
        assert_eq!(lookup(dir.path(), "gamma"), Lookup::Missing);
    }
}
