//! Building the container's filesystem view inside its mount namespace:
//! mounts from config.json, /dev, pivot_root (or chroot), masked and
//! read-only paths. Runs in the container's init before the user process.
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount, Spec};

pub type Result<T> = std::result::Result<T, String>;

fn ctx<T, E: std::fmt::Display>(
    r: std::result::Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// `dest` inside `root`, with `..` and symlinks confined to `root`.
pub fn secure_join(root: &Path, dest: &Path) -> PathBuf {
    let mut out = root.to_path_buf();
    let mut hops = 0;
    let mut parts: Vec<PathBuf> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(PathBuf::from(p)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .rev()
        .collect();
    while let Some(part) = parts.pop() {
        if part == Path::new("..") {
            if out != root {
                out.pop();
            }
            continue;
        }
        let next = out.join(&part);
        match std::fs::read_link(&next) {
            Ok(target) if hops < 40 => {
                hops += 1;
                if target.is_absolute() {
                    out = root.to_path_buf();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => parts.push(PathBuf::from(p)),
                        Component::ParentDir => parts.push(PathBuf::from("..")),
                        _ => {}
                    }
                }
            }
            _ => out = next,
        }
    }
    out
}

struct MountOpts {
    flags: MsFlags,
    clear: MsFlags,
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> MountOpts {
    let mut o = MountOpts {
        flags: MsFlags::empty(),
        clear: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: Vec::new(),
    };
    for opt in options {
        let (set, clear, prop) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty(), MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty(), MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID, MsFlags::empty()),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty(), MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV, MsFlags::empty()),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty(), MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty(), MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty(), MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty(), MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty(), MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty(), MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty(), MsFlags::empty()),
            "rbind" => (
                MsFlags::MS_BIND | MsFlags::MS_REC,
                MsFlags::empty(),
                MsFlags::empty(),
            ),
            "private" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_PRIVATE),
            "rprivate" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            ),
            "shared" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SHARED),
            "rshared" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SHARED | MsFlags::MS_REC,
            ),
            "slave" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_SLAVE),
            "rslave" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
            ),
            "unbindable" => (MsFlags::empty(), MsFlags::empty(), MsFlags::MS_UNBINDABLE),
            "runbindable" => (
                MsFlags::empty(),
                MsFlags::empty(),
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            ),
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        o.flags |= set;
        o.flags &= !clear;
        o.clear |= clear;
        o.propagation |= prop;
    }
    o
}

/// Everything up to (not including) pivot_root.
pub struct Setup<'a> {
    pub spec: &'a Spec,
    pub rootfs: &'a Path,
    /// (controller, host directory) of the container's cgroup, for `cgroup` mounts.
    pub cgroup_dirs: &'a [(String, String)],
    /// In a user namespace devices cannot be created, only bind-mounted.
    pub in_userns: bool,
}

impl Setup<'_> {
    pub fn prepare(&self) -> Result<()> {
        let linux = self.spec.linux().clone().unwrap_or_default();
        // Keep our mounts from propagating back to the host.
        let prop = match linux.rootfs_propagation().as_deref() {
            Some("shared") | Some("rshared") => MsFlags::MS_SLAVE,
            Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
            _ => MsFlags::MS_SLAVE,
        };
        ctx(
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                prop | MsFlags::MS_REC,
                None::<&str>,
            ),
            || "making / a slave mount".into(),
        )?;
        // pivot_root needs the new root to be a mount point.
        ctx(
            mount(
                Some(self.rootfs),
                self.rootfs,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
            || format!("bind-mounting rootfs {}", self.rootfs.display()),
        )?;
        let mounts = self.spec.mounts().clone().unwrap_or_default();
        for m in &mounts {
            self.mount_one(m)?;
        }
        let dev_is_tmpfs = mounts
            .iter()
            .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() != Some("bind"));
        if dev_is_tmpfs {
            self.default_devices()?;
        }
        for d in linux.devices().clone().unwrap_or_default() {
            self.device(&d)?;
        }
        Ok(())
    }

    fn mount_one(&self, m: &Mount) -> Result<()> {
        let dest = secure_join(self.rootfs, m.destination());
        let opts = parse_options(&m.options().clone().unwrap_or_default());
        let typ = m.typ().clone().unwrap_or_default();
        let is_bind = opts.flags.contains(MsFlags::MS_BIND) || typ == "bind";
        let source = m.source().clone().unwrap_or_default();
        if typ == "cgroup" || typ == "cgroup2" {
            return self.mount_cgroup(&dest, &opts);
        }
        if is_bind {
            let meta = ctx(std::fs::metadata(&source), || {
                format!("bind mount source {}", source.display())
            })?;
            if meta.is_dir() {
                ctx(std::fs::create_dir_all(&dest), || {
                    format!("mkdir {}", dest.display())
                })?;
            } else {
                create_file(&dest)?;
            }
            let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
            ctx(
                mount(Some(&source), &dest, None::<&str>, flags, None::<&str>),
                || {
                    format!(
                        "bind-mounting {} to {}",
                        source.display(),
                        m.destination().display()
                    )
                },
            )?;
            let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC);
            if !extra.is_empty() {
                ctx(
                    mount(
                        None::<&str>,
                        &dest,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra,
                        None::<&str>,
                    ),
                    || format!("remounting {} with its options", m.destination().display()),
                )?;
            }
        } else {
            ctx(std::fs::create_dir_all(&dest), || {
                format!("mkdir {}", dest.display())
            })?;
            let data = opts.data.join(",");
            let src = if source.as_os_str().is_empty() {
                PathBuf::from(&typ)
            } else {
                source.clone()
            };
            let res = mount(
                Some(&src),
                &dest,
                Some(typ.as_str()),
                opts.flags,
                (!data.is_empty()).then_some(data.as_str()),
            );
            match res {
                // sysfs cannot be mounted without owning the network namespace;
                // fall back to a read-only bind of the host's, as runc does.
                Err(nix::errno::Errno::EPERM) if typ == "sysfs" => ctx(
                    mount(
                        Some("/sys"),
                        &dest,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY,
                        None::<&str>,
                    ),
                    || "bind-mounting /sys".into(),
                )?,
                r => ctx(r, || {
                    format!("mounting {typ} on {}", m.destination().display())
                })?,
            }
        }
        if !opts.propagation.is_empty() {
            ctx(
                mount(
                    None::<&str>,
                    &dest,
                    None::<&str>,
                    opts.propagation,
                    None::<&str>,
                ),
                || format!("setting propagation of {}", m.destination().display()),
            )?;
        }
        Ok(())
    }

    /// A `cgroup` mount shows the container its own cgroup: per-controller
    /// binds under a tmpfs on v1, the unified directory on v2.
    fn mount_cgroup(&self, dest: &Path, opts: &MountOpts) -> Result<()> {
        ctx(std::fs::create_dir_all(dest), || {
            format!("mkdir {}", dest.display())
        })?;
        let ro = opts.flags & MsFlags::MS_RDONLY;
        let base = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let unified = self.cgroup_dirs.len() == 1 && self.cgroup_dirs[0].0 == "unified";
        if unified {
            let dir = &self.cgroup_dirs[0].1;
            ctx(
                mount(
                    Some(dir.as_str()),
                    dest,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
                || format!("bind-mounting cgroup {dir}"),
            )?;
            return remount(dest, MsFlags::MS_BIND | base | ro);
        }
        ctx(
            mount(Some("tmpfs"), dest, Some("tmpfs"), base, Some("mode=755")),
            || "mounting tmpfs for cgroups".into(),
        )?;
        for (controller, dir) in self.cgroup_dirs {
            let name = controller.trim_start_matches("name=");
            let target = dest.join(name);
            ctx(std::fs::create_dir_all(&target), || {
                format!("mkdir {}", target.display())
            })?;
            ctx(
                mount(
                    Some(dir.as_str()),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
                || format!("bind-mounting cgroup {dir}"),
            )?;
            remount(&target, MsFlags::MS_BIND | base | ro)?;
        }
        if !ro.is_empty() {
            remount(dest, base | ro)?;
        }
        Ok(())
    }

    fn default_devices(&self) -> Result<()> {
        let dev = self.rootfs.join("dev");
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let path = dev.join(name);
            if !path.exists() {
                self.make_node(&path, SFlag::S_IFCHR, major, minor, 0o666, 0, 0)?;
            }
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("core", "/proc/kcore"),
        ] {
            let path = dev.join(link);
            if path.symlink_metadata().is_err() {
                ctx(symlink(target, &path), || format!("symlink /dev/{link}"))?;
            }
        }
        let ptmx = dev.join("ptmx");
        if dev.join("pts").is_dir() && ptmx.symlink_metadata().is_err() {
            ctx(symlink("pts/ptmx", &ptmx), || "symlink /dev/ptmx".into())?;
        }
        for d in ["shm", "mqueue"] {
            let _ = std::fs::create_dir_all(dev.join(d));
        }
        Ok(())
    }

    fn device(&self, d: &LinuxDevice) -> Result<()> {
        let path = secure_join(self.rootfs, d.path());
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(format!(
                    "device {}: type 'a' is not a node",
                    d.path().display()
                ))
            }
        };
        if let Some(parent) = path.parent() {
            ctx(std::fs::create_dir_all(parent), || {
                format!("mkdir {}", parent.display())
            })?;
        }
        let _ = std::fs::remove_file(&path);
        self.make_node(
            &path,
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &self,
        path: &Path,
        kind: SFlag,
        major: u64,
        minor: u64,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let host = PathBuf::from("/dev").join(path.file_name().unwrap_or_default());
        if self.in_userns {
            // mknod is not allowed in a user namespace; bind the host node.
            create_file(path)?;
            return ctx(
                mount(
                    Some(&host),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
                || format!("bind-mounting {}", host.display()),
            );
        }
        ctx(
            mknod(
                path,
                kind,
                Mode::from_bits_truncate(mode),
                makedev(major, minor),
            ),
            || format!("mknod {}", path.display()),
        )?;
        ctx(
            nix::unistd::chown(path, Some(uid.into()), Some(gid.into())),
            || format!("chown {}", path.display()),
        )?;
        // mknod applies the umask; set the configured mode exactly.
        use std::os::unix::fs::PermissionsExt;
        ctx(
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)),
            || format!("chmod {}", path.display()),
        )
    }
}

fn create_file(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        ctx(std::fs::create_dir_all(parent), || {
            format!("mkdir {}", parent.display())
        })?;
    }
    if !path.exists() {
        ctx(std::fs::File::create(path), || {
            format!("create {}", path.display())
        })?;
    }
    Ok(())
}

fn remount(path: &Path, flags: MsFlags) -> Result<()> {
    ctx(
        mount(
            None::<&str>,
            path,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        ),
        || format!("remounting {}", path.display()),
    )
}

/// Makes `rootfs` the root: pivot_root, or a MS_MOVE + chroot with `no_pivot`.
pub fn enter(rootfs: &Path, no_pivot: bool) -> Result<()> {
    ctx(chdir(rootfs), || format!("chdir {}", rootfs.display()))?;
    if no_pivot {
        ctx(
            mount(
                Some(rootfs),
                "/",
                None::<&str>,
                MsFlags::MS_MOVE,
                None::<&str>,
            ),
            || "moving rootfs to /".into(),
        )?;
        ctx(chroot("."), || "chroot".into())?;
    } else {
        // pivot_root(".", ".") stacks the old root under the new one; detach it.
        ctx(pivot_root(".", "."), || {
            format!("pivot_root {}", rootfs.display())
        })?;
        ctx(
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            ),
            || "making old root a slave".into(),
        )?;
        ctx(umount2(".", MntFlags::MNT_DETACH), || {
            "detaching old root".into()
        })?;
    }
    ctx(chdir("/"), || "chdir /".into())
}

/// After entering the root: masked and read-only paths, read-only root.
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => ctx(
                mount(
                    Some("tmpfs"),
                    path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None::<&str>,
                ),
                || format!("masking {p}"),
            )?,
            Ok(_) => ctx(
                mount(
                    Some("/dev/null"),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                ),
                || format!("masking {p}"),
            )?,
            Err(_) => {}
        }
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let path = Path::new(&p);
        if !path.exists() {
            continue;
        }
        ctx(
            mount(
                Some(path),
                path,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            ),
            || format!("binding {p}"),
        )?;
        remount(
            path,
            MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
        )?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount(Path::new("/"), MsFlags::MS_BIND | MsFlags::MS_RDONLY)?;
    }
    if let Some(prop) = linux.rootfs_propagation() {
        let flags = parse_options(std::slice::from_ref(prop)).propagation;
        if !flags.is_empty() {
            ctx(
                mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
                || format!("rootfsPropagation {prop}"),
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("etc")).unwrap();
        symlink("/etc", r.join("abs")).unwrap();
        symlink("../../../..", r.join("etc/up")).unwrap();
        assert_eq!(secure_join(r, Path::new("/../../x")), r.join("x"));
        assert_eq!(
            secure_join(r, Path::new("/abs/passwd")),
            r.join("etc/passwd")
        );
        assert_eq!(secure_join(r, Path::new("/etc/up/y")), r.join("y"));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let o = parse_options(&[
            "rbind".into(),
            "ro".into(),
            "rprivate".into(),
            "size=64k".into(),
        ]);
        assert!(o
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, vec!["size=64k".to_string()]);
    }
}
