//! The one checker for relative paths that come from an untrusted source:
//! a migration peer's tree transfer (`files`) and the entries of a
//! checkpoint archive (ferry's `archive` module).
//!
//! A path passes when it is relative, holds no NUL byte, no `..`
//! component, and stays within the length, name and depth limits. What is
//! done with it afterwards (opening each parent with `O_NOFOLLOW`, or
//! resolving it inside a root with `RESOLVE_IN_ROOT`) is the caller's
//! second line of defence; this check is the first, done before anything
//! is touched.

/// What a path may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Longest path, bytes.
    pub max_path_len: usize,
    /// Longest component, bytes.
    pub max_name_len: usize,
    /// Most components.
    pub max_depth: usize,
    /// Tar writes `./a` and `dir/`: with this set, `.` and empty components
    /// are dropped; without it they are refused (a peer of ours never
    /// sends them).
    pub skip_dot_and_empty: bool,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("empty path")]
    Empty,
    #[error("path longer than {0} bytes")]
    TooLong(usize),
    #[error("absolute path")]
    Absolute,
    #[error("NUL byte in path")]
    Nul,
    #[error("empty path component")]
    EmptyComponent,
    #[error("'.' path component")]
    DotComponent,
    #[error("'..' path component")]
    DotDot,
    #[error("name too long (over {0} bytes)")]
    NameTooLong(usize),
    #[error("path too deep (over {0} components)")]
    TooDeep(usize),
}

/// Splits `raw` into its components after checking it against `rules`.
/// `.` alone is the root: no components.
pub fn check<'a>(raw: &'a [u8], rules: &Rules) -> Result<Vec<&'a [u8]>, Refusal> {
    if raw == b"." {
        return Ok(Vec::new());
    }
    if raw.is_empty() {
        return Err(Refusal::Empty);
    }
    if raw.len() > rules.max_path_len {
        return Err(Refusal::TooLong(rules.max_path_len));
    }
    if raw.contains(&0) {
        return Err(Refusal::Nul);
    }
    if raw[0] == b'/' {
        return Err(Refusal::Absolute);
    }
    let mut parts = Vec::new();
    for p in raw.split(|c| *c == b'/') {
        match p {
            b"" | b"." if rules.skip_dot_and_empty => continue,
            b"" => return Err(Refusal::EmptyComponent),
            b"." => return Err(Refusal::DotComponent),
            b".." => return Err(Refusal::DotDot),
            p if p.len() > rules.max_name_len => {
                return Err(Refusal::NameTooLong(rules.max_name_len))
            }
            p => parts.push(p),
        }
    }
    if parts.len() > rules.max_depth {
        return Err(Refusal::TooDeep(rules.max_depth));
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: Rules = Rules {
        max_path_len: 64,
        max_name_len: 8,
        max_depth: 3,
        skip_dot_and_empty: false,
    };
    const TAR: Rules = Rules {
        skip_dot_and_empty: true,
        ..STRICT
    };

    #[test]
    fn plain_paths_pass_and_split() {
        for rules in [STRICT, TAR] {
            assert_eq!(check(b"a/bc/d", &rules).unwrap(), [&b"a"[..], b"bc", b"d"]);
            assert!(check(b".", &rules).unwrap().is_empty());
        }
        assert_eq!(check(b"./a//b/", &TAR).unwrap(), [&b"a"[..], b"b"]);
        assert!(check(b"./", &TAR).unwrap().is_empty());
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let long = [b'a'; 65];
        for (raw, rules, why) in [
            (&b""[..], STRICT, Refusal::Empty),
            (&long[..], TAR, Refusal::TooLong(64)),
            (b"/etc", TAR, Refusal::Absolute),
            (b"a\0b", TAR, Refusal::Nul),
            (b"a//b", STRICT, Refusal::EmptyComponent),
            (b"./a", STRICT, Refusal::DotComponent),
            (b"a/../b", TAR, Refusal::DotDot),
            (b"../a", STRICT, Refusal::DotDot),
            (b"abcdefghi", TAR, Refusal::NameTooLong(8)),
            (b"a/b/c/d", TAR, Refusal::TooDeep(3)),
        ] {
            assert_eq!(
                check(raw, &rules),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }
}
