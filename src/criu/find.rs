//! Finding the criu binary.
use std::path::{Path, PathBuf};

use super::errors::{Error, Result};
use super::version::MIN_VERSION;
use super::CRIU_ENV;

/// Searched after PATH: where CRIU installs, and where ferry's script puts it.
const EXTRA_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Finds criu: `$FERRY_CRIU` if set, else PATH, then /usr/local/sbin,
/// /usr/sbin, /sbin.
pub fn find_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(CRIU_ENV) {
        let p = PathBuf::from(p);
        if is_executable(&p) {
            return Ok(p);
        }
        return Err(Error::NotFound {
            looked_in: format!("{CRIU_ENV}={} is not an executable file", p.display()),
            min: MIN_VERSION,
        });
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(EXTRA_DIRS.iter().map(PathBuf::from));
    for d in &dirs {
        let candidate = d.join("criu");
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(Error::NotFound {
        looked_in: format!(
            "searched PATH and {}; set {CRIU_ENV} to override",
            EXTRA_DIRS.join(", ")
        ),
        min: MIN_VERSION,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_names_the_fix() {
        let err = Error::NotFound {
            looked_in: "x".into(),
            min: MIN_VERSION,
        };
        assert!(err.to_string().contains("scripts/install-deps.sh"));
    }
}
