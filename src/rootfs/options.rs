//! config.json mount options, sorted into what the kernel applies where:
//! the kind of mount (bind or a new filesystem), attributes of the top mount,
//! attributes of the whole tree (`mount_setattr(AT_RECURSIVE)`), propagation,
//! and filesystem parameters. The option names are runc's (libcontainer
//! specconv); an option ferry cannot apply is refused, never ignored.

/// `MOUNT_ATTR_*` bits (linux/mount.h).
pub const ATTR_RDONLY: u64 = 0x1;
pub const ATTR_NOSUID: u64 = 0x2;
pub const ATTR_NODEV: u64 = 0x4;
pub const ATTR_NOEXEC: u64 = 0x8;
/// The atime setting is a 3-value field, not a bit set.
pub const ATTR_ATIME_MASK: u64 = 0x70;
pub const ATTR_RELATIME: u64 = 0x0;
pub const ATTR_NOATIME: u64 = 0x10;
pub const ATTR_STRICTATIME: u64 = 0x20;
pub const ATTR_NODIRATIME: u64 = 0x80;
pub const ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// Attributes to set and to clear, as `struct mount_attr` takes them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    pub set: u64,
    pub clear: u64,
}

impl Attrs {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Set(bit) => {
                self.set |= bit;
                self.clear &= !bit;
            }
            Change::Clear(bit) => {
                self.clear |= bit;
                self.set &= !bit;
            }
            Change::Atime(value) => {
                // The kernel wants the whole field cleared and one value set.
                self.set = (self.set & !ATTR_ATIME_MASK) | value;
                self.clear |= ATTR_ATIME_MASK;
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Set(u64),
    Clear(u64),
    Atime(u64),
}

/// Propagation types (`MS_*` values, as `mount_setattr` takes them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    pub kind: u64,
    pub recursive: bool,
}

/// One mount's options, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// `Some(recursive)` for a bind mount (`bind`, `rbind` or type `bind`).
    pub bind: Option<bool>,
    /// Attributes of the mount itself.
    pub attrs: Attrs,
    /// Attributes of the mount and every mount below it (`rro`, ...).
    pub rec_attrs: Attrs,
    /// Applied in the order given.
    pub propagation: Vec<Propagation>,
    /// Superblock flags for a new filesystem (`sync`, `dirsync`, ...).
    pub fs_flags: Vec<String>,
    /// Filesystem parameters for a new filesystem (`mode=755`, `size=64k`).
    pub data: Vec<String>,
}

impl Options {
    pub fn is_bind(&self) -> bool {
        self.bind.is_some()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("mount option {0:?} is not known to ferry (known: runc's mount options and, for new filesystems, their own parameters)")]
    Unknown(String),
    #[error("mount option {option:?} is not supported by ferry: {why}")]
    Unsupported { option: String, why: &'static str },
    #[error(
        "mount option {0:?} sets the filesystem, which a bind mount does not create; remove it"
    )]
    NotForBind(String),
}

fn mount_attr(opt: &str) -> Option<Change> {
    use Change::*;
    Some(match opt {
        "ro" => Set(ATTR_RDONLY),
        "rw" => Clear(ATTR_RDONLY),
        "nosuid" => Set(ATTR_NOSUID),
        "suid" => Clear(ATTR_NOSUID),
        "nodev" => Set(ATTR_NODEV),
        "dev" => Clear(ATTR_NODEV),
        "noexec" => Set(ATTR_NOEXEC),
        "exec" => Clear(ATTR_NOEXEC),
        "nodiratime" => Set(ATTR_NODIRATIME),
        "diratime" => Clear(ATTR_NODIRATIME),
        "nosymfollow" => Set(ATTR_NOSYMFOLLOW),
        "symfollow" => Clear(ATTR_NOSYMFOLLOW),
        "noatime" => Atime(ATTR_NOATIME),
        "strictatime" => Atime(ATTR_STRICTATIME),
        // Without noatime or strictatime the kernel uses relatime.
        "relatime" | "atime" | "norelatime" | "nostrictatime" => Atime(ATTR_RELATIME),
        _ => return None,
    })
}

/// `rro`, `rnosuid`, ...: the same attributes over the whole mount tree.
fn recursive_attr(opt: &str) -> Option<Change> {
    let plain = match opt {
        "rrw" => "rw",
        "rsuid" => "suid",
        "rdev" => "dev",
        "rexec" => "exec",
        "ratime" => "atime",
        "rdiratime" => "diratime",
        "rsymfollow" => "symfollow",
        _ => opt.strip_prefix('r')?,
    };
    // "rbind", "rprivate", ... are not attributes; mount_attr rejects them.
    mount_attr(plain)
}

fn propagation(opt: &str) -> Option<Propagation> {
    let (name, recursive) = match opt.strip_prefix('r') {
        Some(n @ ("private" | "shared" | "slave" | "unbindable")) => (n, true),
        _ => (opt, false),
    };
    let kind = match name {
        "private" => libc::MS_PRIVATE,
        "shared" => libc::MS_SHARED,
        "slave" => libc::MS_SLAVE,
        "unbindable" => libc::MS_UNBINDABLE,
        _ => return None,
    };
    Some(Propagation { kind, recursive })
}

/// Superblock flags the kernel's generic filesystem context understands.
const FS_FLAGS: &[&str] = &[
    "sync",
    "async",
    "dirsync",
    "lazytime",
    "nolazytime",
    "mand",
    "nomand",
];

/// Other filesystem flags runc knows (passed to the filesystem, which
/// refuses those it does not have); like `FS_FLAGS`, not for a bind mount.
const OTHER_FS_FLAGS: &[&str] = &["iversion", "noiversion", "acl", "noacl", "silent", "loud"];

/// Flags runc knows that ferry does not implement.
fn unsupported(opt: &str) -> Option<&'static str> {
    Some(match opt {
        "remount" => "ferry mounts afresh and never remounts",
        "tmpcopyup" => "copying the rootfs contents into a tmpfs is not implemented",
        "idmap" | "ridmap" => "id-mapped mounts are not implemented",
        _ => return None,
    })
}

/// Sorts `options` of a mount of type `typ`. Unknown options of a new
/// filesystem are its parameters (the kernel refuses those it does not
/// know); on a bind mount they are errors.
pub fn parse(typ: &str, options: &[String]) -> Result<Options, Error> {
    let mut o = Options::default();
    if typ == "bind" {
        o.bind = Some(false);
    }
    for opt in options {
        let opt = opt.as_str();
        if opt == "bind" {
            o.bind = Some(o.bind.unwrap_or(false));
        } else if opt == "rbind" {
            o.bind = Some(true);
        } else if opt == "defaults" {
            // mount(8)'s "no options": nothing to apply.
        } else if let Some(c) = mount_attr(opt) {
            o.attrs.apply(c);
        } else if let Some(c) = recursive_attr(opt) {
            o.rec_attrs.apply(c);
        } else if let Some(p) = propagation(opt) {
            o.propagation.push(p);
        } else if let Some(why) = unsupported(opt) {
            return Err(Error::Unsupported {
                option: opt.into(),
                why,
            });
        } else if FS_FLAGS.contains(&opt) {
            o.fs_flags.push(opt.into());
        } else {
            o.data.push(opt.into());
        }
    }
    if o.is_bind() {
        if let Some(opt) = o.fs_flags.first().or(o.data.first()) {
            let fs_flag =
                FS_FLAGS.contains(&opt.as_str()) || OTHER_FS_FLAGS.contains(&opt.as_str());
            return Err(if opt.contains('=') || fs_flag {
                Error::NotForBind(opt.clone())
            } else {
                Error::Unknown(opt.clone())
            });
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(typ: &str, opts: &[&str]) -> Result<Options, Error> {
        parse(typ, &opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn bind_flags_propagation_split() {
        let o = p("bind", &["rbind", "ro", "nosuid", "rprivate"]).unwrap();
        assert_eq!(o.bind, Some(true));
        assert_eq!(o.attrs.set, ATTR_RDONLY | ATTR_NOSUID);
        assert_eq!(
            o.propagation,
            vec![Propagation {
                kind: libc::MS_PRIVATE,
                recursive: true
            }]
        );
        assert!(o.data.is_empty() && o.rec_attrs.is_empty());
    }

    #[test]
    fn recursive_attributes() {
        let o = p("bind", &["rbind", "rro", "rnosuid", "rnodev", "rnoexec"]).unwrap();
        assert_eq!(
            o.rec_attrs.set,
            ATTR_RDONLY | ATTR_NOSUID | ATTR_NODEV | ATTR_NOEXEC
        );
        assert!(o.attrs.is_empty());
        let o = p("bind", &["rbind", "rro", "rrw", "rsuid"]).unwrap();
        assert_eq!(o.rec_attrs.set, 0);
        assert_eq!(o.rec_attrs.clear, ATTR_RDONLY | ATTR_NOSUID);
        let o = p("bind", &["bind", "rnoatime", "rnodiratime"]).unwrap();
        assert_eq!(o.rec_attrs.set, ATTR_NOATIME | ATTR_NODIRATIME);
        assert_eq!(o.rec_attrs.clear, ATTR_ATIME_MASK);
        let o = p("bind", &["bind", "rnoatime", "rstrictatime"]).unwrap();
        assert_eq!(o.rec_attrs.set, ATTR_STRICTATIME);
        let o = p("bind", &["bind", "rnoatime", "ratime"]).unwrap();
        assert_eq!(o.rec_attrs.set & ATTR_ATIME_MASK, ATTR_RELATIME);
        assert_eq!(o.rec_attrs.clear, ATTR_ATIME_MASK);
    }

    #[test]
    fn later_options_win() {
        let o = p("tmpfs", &["ro", "rw", "noexec", "exec"]).unwrap();
        assert_eq!(o.attrs.set, 0);
        assert_eq!(o.attrs.clear, ATTR_RDONLY | ATTR_NOEXEC);
    }

    #[test]
    fn filesystem_parameters_kept_for_new_filesystems() {
        let o = p(
            "tmpfs",
            &["nosuid", "mode=755", "size=64k", "sync", "strictatime"],
        )
        .unwrap();
        assert_eq!(o.bind, None);
        assert_eq!(o.data, vec!["mode=755".to_string(), "size=64k".into()]);
        assert_eq!(o.fs_flags, vec!["sync".to_string()]);
        assert_eq!(o.attrs.set, ATTR_NOSUID | ATTR_STRICTATIME);
        let o = p("devpts", &["newinstance", "ptmxmode=0666"]).unwrap();
        assert_eq!(o.data.len(), 2);
    }

    #[test]
    fn unknown_options_refused() {
        assert_eq!(
            p("bind", &["rbind", "rfoo"]),
            Err(Error::Unknown("rfoo".into()))
        );
        // A new filesystem's kernel driver refuses parameters it does not know.
        assert_eq!(
            p("tmpfs", &["rfoo"]).unwrap().data,
            vec!["rfoo".to_string()]
        );
        assert_eq!(
            p("none", &["bind", "frobnicate"]),
            Err(Error::Unknown("frobnicate".into()))
        );
        assert_eq!(
            p("bind", &["mode=755"]),
            Err(Error::NotForBind("mode=755".into()))
        );
        assert_eq!(
            p("bind", &["bind", "sync"]),
            Err(Error::NotForBind("sync".into()))
        );
        assert!(matches!(
            p("tmpfs", &["tmpcopyup"]),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            p("bind", &["rbind", "remount"]),
            Err(Error::Unsupported { .. })
        ));
        assert!(p("bind", &["rbind", "ridmap"]).is_err());
        assert_eq!(
            p("bind", &["bind", "acl"]),
            Err(Error::NotForBind("acl".into()))
        );
        assert_eq!(p("ext4", &["acl"]).unwrap().data, vec!["acl".to_string()]);
    }

    #[test]
    fn type_bind_without_option_is_a_plain_bind() {
        assert_eq!(p("bind", &[]).unwrap().bind, Some(false));
        assert_eq!(p("none", &["bind"]).unwrap().bind, Some(false));
        assert_eq!(p("bind", &["rbind"]).unwrap().bind, Some(true));
        assert_eq!(p("proc", &[]).unwrap().bind, None);
    }
}
