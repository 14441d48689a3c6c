//! Files and directories on the caller's side of an operation: pid files,
//! image and work directories.
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{io, Error, Result};

/// Writes the pid file atomically, as runc does.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("ferry-tmp");
    std::fs::write(&tmp, pid.to_string()).map_err(io(format!("pid file {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("pid file {}", path.display())))
}

/// Fails unless `path` is (or can become) a writable directory; `what`
/// names it in errors ("image path").
pub(crate) fn writable_dir(path: &Path, what: &'static str) -> Result<PathBuf> {
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::NotADirectory {
                what,
                path: path.to_path_buf(),
            })
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(path).map_err(|source| Error::CreateDir {
                what,
                path: path.to_path_buf(),
                source,
            })?;
        }
        Err(e) => return Err(io(format!("{what} {}", path.display()))(e)),
    }
    tempfile::tempfile_in(path).map_err(|source| Error::NotWritable {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::canonicalize(path).map_err(io(format!("{what} {}", path.display())))
}

pub(crate) fn open_dir(path: &Path) -> Result<File> {
    File::open(path).map_err(io(format!("opening {}", path.display())))
}
