//! The user program: its environment, its lookup in PATH, and the exec.
use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Process;

use super::{Failure, Result};

/// process.env with HOME added when missing (as runc does).
pub fn environment(process: &Process) -> Vec<String> {
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let home = if process.user().uid() == 0 {
            "/root"
        } else {
            "/"
        };
        env.push(format!("HOME={home}"));
    }
    env
}

/// Finds `arg0` in the container's PATH, like execvp would.
pub fn resolve_program(arg0: &str, env: &[String]) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let not_found = |why: String| Failure::new("program", format!("exec {arg0}: {why}"));
    if arg0.contains('/') {
        let p = PathBuf::from(arg0);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(not_found("no such executable in the container".into()))
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| Path::new(d).join(arg0))
        .find(|p| executable(p))
        .ok_or_else(|| not_found(format!("executable file not found in $PATH ({path})")))
}

/// The user program, resolved and ready to exec.
pub struct Program {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
}

impl Program {
    /// Replaces this process; returns only why it could not. A NUL byte in
    /// an argument is an error, never a silently emptied argument.
    pub fn exec(&self) -> Failure {
        let prepared = (|| -> Result<_> {
            let path = CString::new(self.path.as_os_str().as_encoded_bytes()).map_err(|_| {
                Failure::new(
                    "exec",
                    format!("program {} contains a NUL byte", self.path.display()),
                )
            })?;
            Ok((
                path,
                cstrings("args", &self.args)?,
                cstrings("env", &self.env)?,
            ))
        })();
        match prepared {
            Ok((path, args, env)) => {
                let errno = nix::unistd::execve(&path, &args, &env).unwrap_err();
                Failure::sys("exec", format!("exec {}", self.path.display()), errno)
            }
            Err(f) => f,
        }
    }
}

fn cstrings(what: &str, v: &[String]) -> Result<Vec<CString>> {
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            CString::new(s.as_str())
                .map_err(|_| Failure::new("exec", format!("{what}[{i}] {s:?} contains a NUL byte")))
        })
        .collect()
}
