//! runc beside ferry: the same command on the same bundle, to compare what a
//! caller sees. runc keeps its state under a private root and every
//! container it made is removed (forcibly) when the `Runc` drops.
use std::cell::RefCell;
use std::path::Path;
use std::process::{Command, Output, Stdio};

pub struct Runc {
    root: tempfile::TempDir,
    ids: RefCell<Vec<String>>,
}

impl Runc {
    /// `None` (after `skip`) when runc is not installed.
    pub fn new() -> Option<Runc> {
        if let Err(e) = Command::new("runc").arg("--version").output() {
            super::skip(&format!("runc is not installed ({e}): it is the reference"));
            return None;
        }
        Some(Runc {
            root: tempfile::Builder::new()
                .prefix("runc-root")
                .tempdir()
                .unwrap(),
            ids: RefCell::new(Vec::new()),
        })
    }

    /// Runs `runc --root <private> args...` with output captured in files
    /// (a detached container inherits them; a pipe would never close).
    pub fn run(&self, args: &[&str]) -> Output {
        if let Some(i) = args.iter().position(|a| *a == "run" || *a == "create") {
            if let Some(id) = args.last().filter(|_| i + 1 < args.len()) {
                self.ids.borrow_mut().push(id.to_string());
            }
        }
        let mut c = Command::new("runc");
        c.arg("--root").arg(self.root.path()).args(args);
        super::capture(c)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "runc {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

/// ferry's and runc's environments with one `sleep 1000` container each,
/// running from the same bundle.
pub fn sleeping(tag: &str) -> Option<(super::Env, Runc, String, String)> {
    if !super::is_root() {
        return None;
    }
    let runc = Runc::new()?;
    let env = super::Env::new(tag);
    let bundle = env.bundle("b", &["sleep", "1000"], |_| {});
    let bundle = bundle.to_str().unwrap();
    let (f, r) = (env.id("f"), env.id("r"));
    env.ok(&["run", "-d", "--bundle", bundle, &f]);
    runc.ok(&["run", "-d", "--bundle", bundle, &r]);
    Some((env, runc, f, r))
}

impl Drop for Runc {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(self.root.path())
                .args(["delete", "--force", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
