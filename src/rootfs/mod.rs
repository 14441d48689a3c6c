//! Building the container's filesystem view inside its mount namespace:
//! mounts from config.json, /dev, pivot_root (or chroot), masked and
//! read-only paths. Runs in the container's init before the user process.
//!
//! Every path inside the rootfs is resolved by the kernel in the root
//! ([`resolve`]), and mounts are attached onto the resolved descriptors
//! ([`mountfd`]); mount options are sorted by [`options`], which refuses
//! what ferry cannot apply.
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::{chdir, chroot, pivot_root};
use oci_spec::runtime::{Mount, Spec};

mod devices;
pub mod mountfd;
pub mod options;
pub mod resolve;

use mountfd::MountFd;
use options::{Attrs, Options};
pub use resolve::RootDir;

pub type Result<T> = std::result::Result<T, String>;

fn ctx<T, E: std::fmt::Display>(
    r: std::result::Result<T, E>,
    what: impl FnOnce() -> String,
) -> Result<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

fn is_dir(fd: &impl AsFd) -> bool {
    fstat(fd.as_fd())
        .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)
}

/// Checks every mount's options (at create, before anything runs).
pub fn check_mount_options(spec: &Spec) -> std::result::Result<(), (usize, options::Error)> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        options::parse(
            m.typ().as_deref().unwrap_or_default(),
            &m.options().clone().unwrap_or_default(),
        )
        .map_err(|e| (i, e))?;
    }
    Ok(())
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
        // Opened on the bind just made, so mounts below it are seen.
        let root = RootDir::open(self.rootfs).map_err(|e| format!("rootfs {e}"))?;
        let mounts = self.spec.mounts().clone().unwrap_or_default();
        for m in &mounts {
            self.mount_one(&root, m)?;
        }
        let dev_is_tmpfs = mounts.iter().any(|m| {
            resolve::lexical(m.destination()) == Path::new("/dev")
                && m.typ().as_deref() != Some("bind")
        });
        if dev_is_tmpfs {
            devices::defaults(&root, self.in_userns)?;
        }
        for d in linux.devices().clone().unwrap_or_default() {
            devices::device(&root, &d, self.in_userns)?;
        }
        Ok(())
    }

    fn mount_one(&self, root: &RootDir, m: &Mount) -> Result<()> {
        let dest = m.destination();
        let shown = resolve::lexical(dest);
        let typ = m.typ().clone().unwrap_or_default();
        let opts = options::parse(&typ, &m.options().clone().unwrap_or_default())
            .map_err(|e| format!("mount {}: {e}", shown.display()))?;
        let target_err = |e: resolve::Error| format!("mount destination {e}");
        let mounted = if typ == "cgroup" || typ == "cgroup2" {
            let target = root.mkdir_all(dest, 0o755).map_err(target_err)?;
            self.mount_cgroup(&target, &opts)?
        } else if let Some(recursive) = opts.bind {
            let source = m.source().clone().unwrap_or_default();
            let tree = ctx(MountFd::clone_tree(&source, recursive), || {
                format!("bind mount source {}", source.display())
            })?;
            let target = if is_dir(&tree) {
                root.mkdir_all(dest, 0o755)
            } else {
                root.create_file(dest, 0o644)
            }
            .map_err(target_err)?;
            ctx(tree.attach(target.as_fd()), || {
                format!("bind-mounting {} to {}", source.display(), shown.display())
            })?;
            tree
        } else {
            // proc and sysfs are never mounted onto a symlink (runc's rule):
            // the kernel objects they expose must be where the path says.
            let target = if typ == "proc" || typ == "sysfs" {
                root.mkdir_all(dest, 0o755)
                    .and_then(|_| root.resolve_no_symlinks(dest))
                    .map_err(|e| format!("mount destination of {typ} {e}"))?
            } else {
                root.mkdir_all(dest, 0o755).map_err(target_err)?
            };
            self.mount_fs(&typ, m, &opts, &target)?
        };
        let what = || format!("applying the options of {}", shown.display());
        ctx(mounted.set_attrs(opts.attrs, false), what)?;
        ctx(mounted.set_attrs(opts.rec_attrs, true), what)?;
        for p in &opts.propagation {
            ctx(mounted.set_propagation(*p), || {
                format!("setting propagation of {}", shown.display())
            })?;
        }
        Ok(())
    }

    /// A new filesystem of type `typ` on `target`.
    fn mount_fs(&self, typ: &str, m: &Mount, opts: &Options, target: &OwnedFd) -> Result<MountFd> {
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned());
        let fs = match MountFd::new_fs(typ, source.as_deref(), &opts.fs_flags, &opts.data) {
            Ok(fs) => fs,
            // sysfs cannot be mounted without owning the network namespace;
            // bind the host's, read-only, as runc does.
            Err(e) if typ == "sysfs" && e.errno == nix::errno::Errno::EPERM => {
                let tree = ctx(MountFd::clone_tree(Path::new("/sys"), true), || {
                    "binding /sys".into()
                })?;
                let ro = Attrs {
                    set: options::ATTR_RDONLY,
                    clear: 0,
                };
                ctx(tree.set_attrs(ro, true), || "making /sys read-only".into())?;
                tree
            }
            Err(e) => {
                return Err(format!(
                    "mounting {typ} on {}: {e}",
                    resolve::lexical(m.destination()).display()
                ))
            }
        };
        ctx(fs.attach(target.as_fd()), || {
            format!(
                "mounting {typ} on {}",
                resolve::lexical(m.destination()).display()
            )
        })?;
        Ok(fs)
    }

    /// A `cgroup` mount shows the container its own cgroup: per-controller
    /// binds under a tmpfs on v1, the unified directory on v2.
    fn mount_cgroup(&self, target: &OwnedFd, opts: &Options) -> Result<MountFd> {
        let base = Attrs {
            set: options::ATTR_NOSUID | options::ATTR_NODEV | options::ATTR_NOEXEC,
            clear: 0,
        };
        // On v2 the one directory is the whole mount.
        let whole = match self.cgroup_dirs {
            [(key, dir)] if crate::cgroups::mount_subdir(key).is_none() => Some(dir),
            _ => None,
        };
        if let Some(dir) = whole {
            let tree = ctx(MountFd::clone_tree(Path::new(dir), false), || {
                format!("bind-mounting cgroup {dir}")
            })?;
            ctx(tree.attach(target.as_fd()), || {
                format!("bind-mounting cgroup {dir}")
            })?;
            ctx(tree.set_attrs(base, false), || format!("cgroup {dir}"))?;
            return Ok(tree);
        }
        let tmpfs = ctx(
            MountFd::new_fs("tmpfs", Some("tmpfs"), &[], &["mode=755".into()]),
            || "mounting tmpfs for cgroups".into(),
        )?;
        ctx(tmpfs.attach(target.as_fd()), || {
            "mounting tmpfs for cgroups".into()
        })?;
        ctx(tmpfs.set_attrs(base, false), || "cgroup tmpfs".into())?;
        // The tmpfs is new and ours: its directories need no resolving.
        for (controller, dir) in self.cgroup_dirs {
            let name = crate::cgroups::mount_subdir(controller).unwrap_or(controller);
            let what = || format!("bind-mounting cgroup {dir}");
            ctx(
                nix::sys::stat::mkdirat(
                    tmpfs.as_fd(),
                    name,
                    nix::sys::stat::Mode::from_bits_truncate(0o755),
                ),
                || format!("mkdir cgroup {name}"),
            )?;
            let sub = ctx(
                nix::fcntl::openat(
                    tmpfs.as_fd(),
                    name,
                    nix::fcntl::OFlag::O_PATH
                        | nix::fcntl::OFlag::O_NOFOLLOW
                        | nix::fcntl::OFlag::O_DIRECTORY
                        | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                ),
                what,
            )?;
            let tree = ctx(MountFd::clone_tree(Path::new(dir), false), what)?;
            ctx(tree.attach(sub.as_fd()), what)?;
            // The container's own options (ro, ...) hold for each controller.
            let mut attrs = base;
            attrs.set |= opts.attrs.set;
            attrs.clear |= opts.attrs.clear & !base.set;
            ctx(tree.set_attrs(attrs, false), what)?;
        }
        Ok(tmpfs)
    }
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

/// Changes into `cwd`, resolved by the kernel in the process's root (the
/// container's), with the caller's permissions.
pub fn chdir_in_root(cwd: &Path) -> Result<()> {
    RootDir::open(Path::new("/"))
        .and_then(|root| root.resolve(cwd))
        .map_err(|e| format!("cwd {e}"))
        .and_then(|dir| {
            nix::unistd::fchdir(&dir).map_err(|e| format!("cwd {}: {e}", cwd.display()))
        })
}

/// After entering the root: masked and read-only paths, read-only root.
/// Paths are resolved in the new root, like those of [`Setup`].
pub fn finish(spec: &Spec) -> Result<()> {
    let linux = spec.linux().clone().unwrap_or_default();
    let root = RootDir::open(Path::new("/")).map_err(|e| format!("root {e}"))?;
    let found = |p: &Path| match root.resolve(p) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.errno == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    };
    for p in linux.masked_paths().clone().unwrap_or_default() {
        let path = PathBuf::from(&p);
        let Some(target) = found(&path).map_err(|e| format!("masked path {e}"))? else {
            continue;
        };
        let what = || format!("masking {p}");
        let mask = if is_dir(&target) {
            let fs = ctx(MountFd::new_fs("tmpfs", Some("tmpfs"), &[], &[]), what)?;
            ctx(fs.attach(target.as_fd()), what)?;
            let ro = Attrs {
                set: options::ATTR_RDONLY,
                clear: 0,
            };
            ctx(fs.set_attrs(ro, false), what)?;
            fs
        } else {
            let null = ctx(MountFd::clone_tree(Path::new("/dev/null"), false), what)?;
            ctx(null.attach(target.as_fd()), what)?;
            null
        };
        drop(mask);
    }
    for p in linux.readonly_paths().clone().unwrap_or_default() {
        let path = PathBuf::from(&p);
        let Some(target) = found(&path).map_err(|e| format!("readonly path {e}"))? else {
            continue;
        };
        let what = || format!("making {p} read-only");
        let tree = ctx(MountFd::clone_fd(target.as_fd(), true), what)?;
        ctx(tree.attach(target.as_fd()), what)?;
        let ro = Attrs {
            set: options::ATTR_RDONLY
                | options::ATTR_NOSUID
                | options::ATTR_NODEV
                | options::ATTR_NOEXEC,
            clear: 0,
        };
        ctx(tree.set_attrs(ro, true), what)?;
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
        let parsed = options::parse("", std::slice::from_ref(prop))
            .map_err(|e| format!("rootfsPropagation: {e}"))?;
        for p in parsed.propagation {
            let mut flags = MsFlags::from_bits_truncate(p.kind as libc::c_ulong);
            if p.recursive {
                flags |= MsFlags::MS_REC;
            }
            ctx(
                mount(None::<&str>, "/", None::<&str>, flags, None::<&str>),
                || format!("rootfsPropagation {prop}"),
            )?;
        }
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
