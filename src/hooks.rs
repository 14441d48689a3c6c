//! OCI hooks: each gets the container state JSON on stdin.
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prestart,
    CreateRuntime,
    CreateContainer,
    StartContainer,
    Poststart,
    Poststop,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Prestart => "prestart",
            Kind::CreateRuntime => "createRuntime",
            Kind::CreateContainer => "createContainer",
            Kind::StartContainer => "startContainer",
            Kind::Poststart => "poststart",
            Kind::Poststop => "poststop",
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{kind} hook {path}: {reason}")]
pub struct Error {
    pub kind: Kind,
    pub path: String,
    pub reason: String,
}

/// The hooks of one kind from a config.
pub fn of_kind(hooks: Option<&Hooks>, kind: Kind) -> Vec<Hook> {
    let Some(h) = hooks else { return Vec::new() };
    #[allow(deprecated)]
    let list = match kind {
        Kind::Prestart => h.prestart(),
        Kind::CreateRuntime => h.create_runtime(),
        Kind::CreateContainer => h.create_container(),
        Kind::StartContainer => h.start_container(),
        Kind::Poststart => h.poststart(),
        Kind::Poststop => h.poststop(),
    };
    list.clone().unwrap_or_default()
}

/// How long waiting on a process that runs the hooks of `kind` may take:
/// `base` plus every hook's timeout, or `None` (no bound) when a hook has
/// none, since the OCI spec lets a hook run for as long as it likes.
pub fn bound(hooks: Option<&Hooks>, kind: Kind, base: Duration) -> Option<Duration> {
    of_kind(hooks, kind).iter().try_fold(base, |total, h| {
        h.timeout()
            .map(|t| total + Duration::from_secs(t.max(1) as u64))
    })
}

/// Runs every hook of `kind` in order, stopping at the first failure.
pub fn run(hooks: Option<&Hooks>, kind: Kind, state_json: &str) -> Result<(), Error> {
    for hook in of_kind(hooks, kind) {
        run_one(&hook, kind, state_json)?;
    }
    Ok(())
}

/// Runs every hook of `kind`, collecting failures instead of stopping
/// (poststart and poststop failures are warnings per the OCI spec).
pub fn run_all(hooks: Option<&Hooks>, kind: Kind, state_json: &str) -> Vec<Error> {
    of_kind(hooks, kind)
        .iter()
        .filter_map(|h| run_one(h, kind, state_json).err())
        .collect()
}

fn run_one(hook: &Hook, kind: Kind, state_json: &str) -> Result<(), Error> {
    let path = hook.path().display().to_string();
    let fail = |reason: String| Error {
        kind,
        path: path.clone(),
        reason,
    };
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((arg0, rest)) = args.split_first() {
            cmd.arg0(arg0).args(rest);
        }
    }
    cmd.env_clear();
    for kv in hook.env().clone().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| fail(format!("cannot run: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that ignores its stdin may exit before reading it.
        let _ = stdin.write_all(state_json.as_bytes());
    }
    let timeout = hook.timeout().map(|t| Duration::from_secs(t.max(1) as u64));
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(fail(format!("wait: {e}"))),
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "timed out after {}s",
                timeout.unwrap_or_default().as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let stderr = stderr.trim();
    Err(fail(if stderr.is_empty() {
        format!("failed with {status}")
    } else {
        format!("failed with {status}: {stderr}")
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder};

    fn hook(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default().path("/bin/sh").args(vec![
            "sh".to_string(),
            "-c".to_string(),
            script.to_string(),
        ]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[test]
    fn hook_gets_state_on_stdin_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hooks = HooksBuilder::default()
            .create_runtime(vec![hook(&format!("cat > {}", out.display()), None)])
            .poststop(vec![hook("echo bad >&2; exit 3", None)])
            .build()
            .unwrap();
        run(Some(&hooks), Kind::CreateRuntime, "{\"id\":\"x\"}").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"id\":\"x\"}");
        let errs = run_all(Some(&hooks), Kind::Poststop, "{}");
        assert_eq!(errs.len(), 1);
        let msg = errs[0].to_string();
        assert!(msg.contains("poststop") && msg.contains("bad"), "{msg}");
    }

    #[test]
    fn hook_timeout_kills_it() {
        let hooks = HooksBuilder::default()
            .prestart(vec![hook("sleep 30", Some(1))])
            .build()
            .unwrap();
        let t = Instant::now();
        let err = run(Some(&hooks), Kind::Prestart, "{}").unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
