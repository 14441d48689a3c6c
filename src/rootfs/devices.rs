//! Device nodes in the container's /dev: the default set on a fresh /dev
//! and `linux.devices`. Every node is made below a directory resolved in the
//! rootfs; in a user namespace (no mknod) the host's node is bound instead.
use std::fs::Permissions;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::makedev;
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};
use pathrs::InodeType;

use super::mountfd::MountFd;
use super::resolve::RootDir;
use super::Result;

#[derive(Clone, Copy)]
enum Kind {
    Char,
    Block,
    Fifo,
}

struct Node<'a> {
    path: &'a Path,
    kind: Kind,
    major: u64,
    minor: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The nodes and links every container gets on a fresh (tmpfs) /dev.
pub fn defaults(root: &RootDir, in_userns: bool) -> Result<()> {
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = PathBuf::from("/dev").join(name);
        if !root.exists(&path).map_err(|e| e.to_string())? {
            let node = Node {
                path: &path,
                kind: Kind::Char,
                major,
                minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            };
            make(root, &node, in_userns)?;
        }
    }
    let mut links = vec![
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ];
    if root.resolve(Path::new("/dev/pts")).is_ok() {
        links.push(("ptmx", "pts/ptmx"));
    }
    for (link, target) in links {
        let path = PathBuf::from("/dev").join(link);
        if !root.exists(&path).map_err(|e| e.to_string())? {
            root.create(&path, &InodeType::Symlink(target.into()))
                .map_err(|e| format!("symlink {e}"))?;
        }
    }
    for d in ["/dev/shm", "/dev/mqueue"] {
        root.mkdir_all(Path::new(d), 0o755)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One `linux.devices` entry: whatever is at its path (a symlink too, never
/// what it points to) is replaced by the node.
pub fn device(root: &RootDir, d: &LinuxDevice, in_userns: bool) -> Result<()> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => Kind::Char,
        LinuxDeviceType::B => Kind::Block,
        LinuxDeviceType::P => Kind::Fifo,
        LinuxDeviceType::A => {
            return Err(format!(
                "device {}: type 'a' is not a node",
                d.path().display()
            ))
        }
    };
    let node = Node {
        path: d.path(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666),
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    };
    if !in_userns {
        root.remove_file(node.path)
            .map_err(|e| format!("device {e}"))?;
    }
    make(root, &node, in_userns)
}

fn make(root: &RootDir, n: &Node, in_userns: bool) -> Result<()> {
    let what = |e: &dyn std::fmt::Display| format!("device {}: {e}", n.path.display());
    if in_userns {
        // mknod is not allowed in a user namespace; bind the host's node.
        let host = PathBuf::from("/dev").join(n.path.file_name().unwrap_or_default());
        let target = root.create_file(n.path, 0o644).map_err(|e| what(&e))?;
        let tree = MountFd::clone_tree(&host, false)
            .map_err(|e| what(&format!("binding {}: {e}", host.display())))?;
        return tree
            .attach(target.as_fd())
            .map_err(|e| what(&format!("binding {}: {e}", host.display())));
    }
    let perm = Permissions::from_mode(n.mode & 0o7777);
    let dev = makedev(n.major, n.minor);
    let inode = match n.kind {
        Kind::Char => InodeType::CharacterDevice(perm, dev),
        Kind::Block => InodeType::BlockDevice(perm, dev),
        Kind::Fifo => InodeType::Fifo(perm),
    };
    root.create(n.path, &inode).map_err(|e| what(&e))?;
    let fd = root.resolve_nofollow(n.path).map_err(|e| what(&e))?;
    nix::unistd::fchownat(
        fd.as_fd(),
        "",
        Some(n.uid.into()),
        Some(n.gid.into()),
        nix::fcntl::AtFlags::AT_EMPTY_PATH,
    )
    .map_err(|e| what(&format!("chown: {e}")))?;
    // mknod applies the umask; set the configured mode exactly, on the node
    // just made (through its descriptor, not its path).
    std::fs::set_permissions(
        format!("/proc/self/fd/{}", fd.as_raw_fd()),
        Permissions::from_mode(n.mode & 0o7777),
    )
    .map_err(|e| what(&format!("chmod: {e}")))
}
