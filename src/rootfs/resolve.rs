//! The one place paths inside a container's rootfs are resolved: by the
//! kernel, with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` through
//! libpathrs, so `..` and symlinks (absolute ones included) stay inside the
//! root. Callers get descriptors and act on them (mount onto them, create
//! below them), never on a path string that could be resolved again.
use std::fs::Permissions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use pathrs::error::ErrorKind;
use pathrs::flags::{OpenFlags, ResolverFlags};
use pathrs::{InodeType, Root};

#[derive(Debug, thiserror::Error)]
#[error("{path}: {what}")]
pub struct Error {
    /// The path inside the root (the root itself for `open`).
    pub path: String,
    pub what: String,
    /// The errno behind it, when the kernel refused.
    pub errno: Option<i32>,
}

pub type Result<T> = std::result::Result<T, Error>;

fn describe(e: &pathrs::error::Error) -> (String, Option<i32>) {
    match e.kind() {
        ErrorKind::OsError(Some(n)) => {
            let text = std::io::Error::from_raw_os_error(n).to_string();
            let text = text
                .split(" (os error")
                .next()
                .unwrap_or(&text)
                .to_lowercase();
            let hint = match n {
                libc::ELOOP => " (a symlink loop, or a chain of more than 40 links)",
                libc::EXDEV => " (the path left the root while being resolved)",
                _ => "",
            };
            (format!("{text}{hint}"), Some(n))
        }
        _ => (e.to_string(), None),
    }
}

fn err(path: &Path, what: &str, e: &pathrs::error::Error) -> Error {
    let (text, errno) = describe(e);
    Error {
        path: path.display().to_string(),
        what: format!("{what}: {text}"),
        errno,
    }
}

fn os_err(path: &Path, what: &str, e: std::io::Error) -> Error {
    Error {
        path: path.display().to_string(),
        what: format!("{what}: {e}"),
        errno: e.raw_os_error(),
    }
}

/// A directory tree whose paths are resolved inside it.
#[derive(Debug)]
pub struct RootDir {
    root: Root,
    host: PathBuf,
}

impl RootDir {
    /// Opens `host` (a trusted path on the host, or `/proc/PID/root`).
    pub fn open(host: &Path) -> Result<RootDir> {
        // Opened here, not by pathrs: `host` may be a magic link
        // (/proc/PID/root), which pathrs rightly refuses to follow.
        let fd = nix::fcntl::open(
            host,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| os_err(Path::new("/"), "opening the root", e.into()))?;
        let root = Root::from_fd(fd);
        Ok(RootDir {
            root,
            host: host.to_path_buf(),
        })
    }

    pub fn host_path(&self) -> &Path {
        &self.host
    }

    /// `path` inside the root, symlinks followed (in the root): an O_PATH fd.
    pub fn resolve(&self, path: &Path) -> Result<OwnedFd> {
        self.root
            .resolve(path)
            .map(OwnedFd::from)
            .map_err(|e| err(path, "resolving in the rootfs", &e))
    }

    /// Like [`RootDir::resolve`], but the last component is not followed.
    pub fn resolve_nofollow(&self, path: &Path) -> Result<OwnedFd> {
        self.root
            .resolve_nofollow(path)
            .map(OwnedFd::from)
            .map_err(|e| err(path, "resolving in the rootfs", &e))
    }

    /// `path`, refusing any symlink on the way (for mount points that must
    /// be real directories: /proc, /sys, and those CRIU resolves itself).
    pub fn resolve_no_symlinks(&self, path: &Path) -> Result<OwnedFd> {
        let mut root = self
            .root
            .try_clone()
            .map_err(|e| err(path, "cloning the root", &e))?;
        root.set_resolver_flags(ResolverFlags::NO_SYMLINKS);
        root.resolve(path).map(OwnedFd::from).map_err(|e| {
            let mut out = err(path, "resolving in the rootfs", &e);
            if out.errno == Some(libc::ELOOP) {
                out.what =
                    "is or passes through a symlink, where a real directory is required".into();
            }
            out
        })
    }

    /// `mkdir -p` inside the root; an O_PATH fd of the directory.
    pub fn mkdir_all(&self, path: &Path, mode: u32) -> Result<OwnedFd> {
        self.root
            .mkdir_all(path, &Permissions::from_mode(mode))
            .map(OwnedFd::from)
            .map_err(|e| self.dangling(err(path, "creating the directory in the rootfs", &e), path))
    }

    /// A clearer error for a failed creation at `path`: a symlink loop
    /// says so, and a symlink to nothing is named as such (its target is
    /// not created, as it could be anywhere: the caller must make it).
    fn dangling(&self, e: Error, path: &Path) -> Error {
        match self.root.resolve(path) {
            Err(r) if r.kind() == ErrorKind::OsError(Some(libc::ELOOP)) => {
                err(path, "resolving in the rootfs", &r)
            }
            Err(r) if r.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => {
                let is_link = self.root.resolve_nofollow(path).is_ok_and(|h| {
                    nix::sys::stat::fstat(&h)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
                });
                if !is_link {
                    return e;
                }
                Error {
                    what: "is a symlink to a missing target; create the target in the rootfs (ferry does not create it)".into(),
                    ..e
                }
            }
            _ => e,
        }
    }

    /// The file at `path` (any type, followed in the root), created empty
    /// with its missing parents if there is none.
    pub fn create_file(&self, path: &Path, mode: u32) -> Result<OwnedFd> {
        match self.root.resolve(path) {
            Ok(h) => return Ok(h.into()),
            Err(e) if e.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => {}
            Err(e) => return Err(err(path, "resolving in the rootfs", &e)),
        }
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent, 0o755)?;
        }
        // O_EXCL: never follow a dangling symlink left at the name.
        self.root
            .create_file(
                path,
                OpenFlags::O_RDONLY | OpenFlags::O_EXCL | OpenFlags::O_CLOEXEC,
                &Permissions::from_mode(mode),
            )
            .map(OwnedFd::from)
            .map_err(|e| self.dangling(err(path, "creating the file in the rootfs", &e), path))
    }

    /// Creates an inode (device node, symlink, ...) at `path`; its parent
    /// is resolved in the root and created if missing.
    pub fn create(&self, path: &Path, inode: &InodeType) -> Result<()> {
        if let Some(parent) = path.parent() {
            self.mkdir_all(parent, 0o755)?;
        }
        self.root
            .create(path, inode)
            .map_err(|e| err(path, "creating in the rootfs", &e))
    }

    /// Removes the file or symlink at `path` (not what a symlink points to).
    pub fn remove_file(&self, path: &Path) -> Result<()> {
        match self.root.remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => Ok(()),
            Err(e) => Err(err(path, "removing from the rootfs", &e)),
        }
    }

    /// Removes `path` and, for a directory, everything below it, resolved
    /// in the root (pathrs never follows a symlink out of it).
    pub fn remove_all(&self, path: &Path) -> Result<()> {
        match self.root.remove_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => Ok(()),
            Err(e) => Err(err(path, "removing from the rootfs", &e)),
        }
    }

    /// Whether anything (a dangling symlink too) is at `path`.
    pub fn exists(&self, path: &Path) -> Result<bool> {
        match self.root.resolve_nofollow(path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::OsError(Some(libc::ENOENT)) => Ok(false),
            Err(e) => Err(err(path, "resolving in the rootfs", &e)),
        }
    }

    /// Opens `path` in the root (a regular open, not O_PATH).
    pub fn open_file(&self, path: &Path, flags: i32) -> Result<std::fs::File> {
        self.root
            .open_subpath(path, OpenFlags::from_bits_retain(flags as u64))
            .map_err(|e| err(path, "opening in the rootfs", &e))
    }

    /// Where `fd` (resolved in this root) sits, as a path inside the root.
    pub fn path_of(&self, fd: impl AsFd, asked: &Path) -> Result<PathBuf> {
        let link = |fd: i32| {
            std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map_err(|e| os_err(asked, "naming the resolved path", e))
        };
        let root = link(self.root.as_fd().as_raw_fd())?;
        let target = link(fd.as_fd().as_raw_fd())?;
        let rel = target.strip_prefix(&root).map_err(|_| Error {
            path: asked.display().to_string(),
            what: format!("resolved to {}, outside the root", target.display()),
            errno: None,
        })?;
        Ok(Path::new("/").join(rel))
    }

    /// `path` with its symlinks resolved in the root, as a path inside it.
    pub fn canonical(&self, path: &Path) -> Result<PathBuf> {
        let fd = self.resolve(path)?;
        self.path_of(&fd, path)
    }
}

/// An absolute, `..`-free spelling of a container path (for messages and
/// keys): `a/../b` → `/b`. Only the string; resolution is the kernel's.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_and_dotdot_stay_inside() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../..", r.join("etc/up")).unwrap();
        let root = RootDir::open(r).unwrap();
        std::fs::create_dir(r.join("x")).unwrap();
        assert_eq!(
            root.canonical(Path::new("/../../x")).unwrap(),
            Path::new("/x")
        );
        assert_eq!(
            root.canonical(Path::new("/abs")).unwrap(),
            Path::new("/etc")
        );
        assert_eq!(
            root.canonical(Path::new("/etc/up/x")).unwrap(),
            Path::new("/x")
        );
        // mkdir -p through an absolute link lands inside the root.
        root.mkdir_all(Path::new("/abs/made"), 0o755).unwrap();
        assert!(r.join("etc/made").is_dir());
    }

    #[test]
    fn loops_fail_with_eloop() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        symlink("/a", r.join("b")).unwrap();
        symlink("/b", r.join("a")).unwrap();
        let root = RootDir::open(r).unwrap();
        let e = root.resolve(Path::new("/a")).unwrap_err();
        assert_eq!(e.errno, Some(libc::ELOOP), "{e}");
        assert!(e.to_string().starts_with("/a: "), "{e}");
        assert!(root.mkdir_all(Path::new("/a/x"), 0o755).is_err());
        assert!(root.create_file(Path::new("/a"), 0o644).is_err());
    }

    #[test]
    fn no_symlinks_refuses_links() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        std::fs::create_dir(r.join("real")).unwrap();
        symlink("real", r.join("link")).unwrap();
        let root = RootDir::open(r).unwrap();
        assert!(root.resolve_no_symlinks(Path::new("/real")).is_ok());
        let e = root.resolve_no_symlinks(Path::new("/link")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn lexical_spelling() {
        assert_eq!(lexical(Path::new("a/../b/./c")), Path::new("/b/c"));
        assert_eq!(lexical(Path::new("/../../x")), Path::new("/x"));
    }
}
