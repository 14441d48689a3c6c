//! `linux.cgroupsPath` as the systemd driver reads it: `slice:prefix:name`,
//! the container's unit `<prefix>-<name>.scope` in `slice` (runc's form).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Error;

/// The slice a container's scope goes into when the path names none.
pub const DEFAULT_SLICE: &str = "system.slice";
/// The scope prefix of ferry's default path.
pub const DEFAULT_PREFIX: &str = "ferry";

/// A container's transient scope and the slice it sits in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// e.g. `system.slice`.
    pub slice: String,
    /// e.g. `ferry-<id>.scope`.
    pub unit: String,
}

/// The default path for container `id` (runc's, with ferry's prefix).
pub fn default_path(id: &str) -> String {
    format!("{DEFAULT_SLICE}:{DEFAULT_PREFIX}:{id}")
}

impl Scope {
    /// Parses `slice:prefix:name`; an empty slice is `system.slice`. A
    /// name ending in `.slice` (a slice as the container's unit) is
    /// refused: the container's processes need a scope.
    pub fn parse(path: &str) -> Result<Scope, Error> {
        let bad = |why: &str| Error::BadPath {
            path: path.to_string(),
            why: why.to_string(),
        };
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(bad("expected three fields separated by ':'"));
        };
        let slice = if slice.is_empty() {
            DEFAULT_SLICE
        } else {
            slice
        };
        expand_slice(slice).map_err(|why| bad(&why))?;
        if name.is_empty() {
            return Err(bad("the name (third field) is empty"));
        }
        if name.ends_with(".slice") {
            return Err(bad(
                "a slice as the container's unit is not supported; name a scope",
            ));
        }
        for (what, s) in [("prefix", prefix), ("name", name)] {
            if let Some(c) = s.chars().find(|c| !unit_char(*c)) {
                return Err(bad(&format!(
                    "the {what} {s:?} has {c:?}; use letters, digits, '-', '_' and '.'"
                )));
            }
        }
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        // systemd's limit on unit names.
        if unit.len() > 255 {
            return Err(bad("the unit name would be longer than 255 bytes"));
        }
        Ok(Scope {
            slice: slice.to_string(),
            unit,
        })
    }

    /// The scope's directory relative to the cgroup root, as systemd
    /// places it: `a.slice/a-b.slice/<unit>`.
    pub fn relative_dir(&self) -> PathBuf {
        let slice = expand_slice(&self.slice).expect("checked at parse");
        PathBuf::from(slice).join(&self.unit)
    }
}

fn unit_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// systemd's slice nesting: `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`;
/// `-.slice` is the root (runc's ExpandSlice).
fn expand_slice(slice: &str) -> Result<String, String> {
    let Some(base) = slice.strip_suffix(".slice").filter(|b| !b.is_empty()) else {
        return Err(format!("slice {slice:?} does not end in \".slice\""));
    };
    if base == "-" {
        return Ok(String::new());
    }
    if let Some(c) = base.chars().find(|c| !unit_char(*c)) {
        return Err(format!("slice {slice:?} has {c:?}"));
    }
    let mut path = Vec::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if part.is_empty() {
            return Err(format!(
                "slice {slice:?} has an empty component (leading, trailing or doubled '-')"
            ));
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
        prefix.push('-');
    }
    Ok(path.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_nest_by_dash() {
        assert_eq!(expand_slice("system.slice").unwrap(), "system.slice");
        assert_eq!(
            expand_slice("a-b-c.slice").unwrap(),
            "a.slice/a-b.slice/a-b-c.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "");
        for bad in [
            "",
            ".slice",
            "a",
            "a--b.slice",
            "-a.slice",
            "a-.slice",
            "a/b.slice",
        ] {
            assert!(expand_slice(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_parse_as_runc_does() {
        let s = Scope::parse("machine.slice:libpod:abc123").unwrap();
        assert_eq!(s.slice, "machine.slice");
        assert_eq!(s.unit, "libpod-abc123.scope");
        assert_eq!(
            s.relative_dir(),
            PathBuf::from("machine.slice/libpod-abc123.scope")
        );
        let d = Scope::parse(&default_path("c1")).unwrap();
        assert_eq!(d.unit, "ferry-c1.scope");
        assert_eq!(Scope::parse(":ferry:c1").unwrap(), d);
        assert_eq!(Scope::parse("a-b.slice::x").unwrap().unit, "x.scope");
        assert_eq!(
            Scope::parse("a-b.slice::x").unwrap().relative_dir(),
            PathBuf::from("a.slice/a-b.slice/x.scope")
        );
    }

    #[test]
    fn malformed_paths_say_what_is_wrong() {
        for (path, says) in [
            ("/ferry/c1", "three fields"),
            ("a:b:c:d", "three fields"),
            ("system.slice:ferry:", "name"),
            ("system:ferry:c1", "does not end"),
            ("system.slice:fe/rry:c1", "'/'"),
            ("system.slice:ferry:x.slice", "slice as the container"),
            ("a--b.slice:ferry:c1", "empty component"),
        ] {
            let e = Scope::parse(path).unwrap_err().to_string();
            assert!(e.contains(says), "{path}: {e}");
            assert!(e.contains("slice:prefix:name"), "{path}: {e}");
        }
    }
}
