//! tmpfs mounts of the container (`/dev`, masked directories, the v1
//! cgroup tmpfs, `/dev/shm`, a tmpfs `/tmp`): the dump lists their entries
//! in the image dir and copies the content of their regular files, as it
//! is, into one data file, instead of CRIU archiving each mount with
//! `tar --gzip` (a process per mount on both sides, and gzip's tens of
//! MB/s for the user's data); the restore makes the same tmpfs from the
//! list and hands it to CRIU as an external mount. A tmpfs the list cannot
//! carry (hard links, sockets, names that are not UTF-8, more than
//! [`MAX_ENTRIES`] entries) is left to CRIU.
//!
//! The list is taken before the dump (to tell CRIU which mounts are
//! external) and again once the tree is frozen; only the second one, with
//! the data copied then, is written: a container writing to its tmpfs
//! until the freeze is checkpointed as it was at the freeze.
use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{io, Error, ImagesError, Result};

/// Written into the image dir: the tmpfs mounts ferry makes again.
pub const TMPFS_FILE: &str = "ferry-tmpfs.json";
/// Written into the image dir: the content of their regular files, one
/// after another ([`Kind::Data`] says where).
pub const TMPFS_DATA_FILE: &str = "ferry-tmpfs.data";
/// Most entries listed per tmpfs (more: CRIU archives it).
const MAX_ENTRIES: usize = 4096;
/// Largest [`TMPFS_FILE`] read from an image dir.
const MAX_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    /// An empty regular file (a mount point for a file bind, as a rule).
    File,
    /// A regular file with content: `len` bytes at `offset` of
    /// [`TMPFS_DATA_FILE`], and its modification time.
    Data {
        offset: u64,
        len: u64,
        mtime: (i64, i64),
    },
    Char(u64),
    Block(u64),
    Fifo,
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative to the mount's root, in plain components.
    pub path: String,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One tmpfs: where it is mounted in the container (CRIU's key for it),
/// its mount flags and filesystem options, and its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tmpfs {
    pub key: String,
    pub flags: u64,
    pub options: String,
    pub root_mode: u32,
    pub root_uid: u32,
    pub root_gid: u32,
    pub entries: Vec<Entry>,
}

/// A tmpfs mount of `/proc/<pid>/mountinfo`: mount point (as the
/// container sees it), mount flags, superblock options.
fn tmpfs_mounts(pid: i32) -> std::io::Result<Vec<(String, u64, String)>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let l: Vec<&str> = left.split(' ').collect();
        let r: Vec<&str> = right.split(' ').collect();
        if l.len() < 6 || r.len() < 3 || r[0] != "tmpfs" || l[3] != "/" {
            continue;
        }
        let mut flags = 0u64;
        for f in l[5].split(',') {
            flags |= match f {
                "ro" => libc::MS_RDONLY,
                "nosuid" => libc::MS_NOSUID,
                "nodev" => libc::MS_NODEV,
                "noexec" => libc::MS_NOEXEC,
                _ => 0,
            };
        }
        // Mount points with spaces are escaped (\040): such a key is not
        // worth the trouble; CRIU keeps those.
        if l[4].contains('\\') {
            continue;
        }
        let options: Vec<&str> = r[2]
            .split(',')
            // The root's mode, owner and group are taken from the root
            // itself (a chmod after mounting shows there, not here).
            .filter(|o| {
                !["rw", "ro", "inode64"].contains(o)
                    && !["mode=", "uid=", "gid="].iter().any(|p| o.starts_with(p))
            })
            .collect();
        out.push((l[4].to_string(), flags, options.join(",")));
    }
    Ok(out)
}

fn stat_at(dir: &impl AsFd, name: &CString) -> std::io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, stat buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st)
}

/// `name` in `dir`, never through a symlink.
fn open_at(dir: &impl AsFd, name: &CString, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    // SAFETY: valid fd and name; the result is checked.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the regular file `name` that `st` described, or fails if
/// something else took its place since (a running container's tmpfs can
/// change under the listing: a FIFO would block the read, a device node
/// would be read from the host).
fn open_file_at(dir: &impl AsFd, name: &CString, st: &libc::stat) -> std::io::Result<File> {
    use std::os::unix::fs::MetadataExt;
    let f = File::from(open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK,
    )?);
    let m = f.metadata()?;
    if !m.is_file() || m.ino() != st.st_ino || m.dev() != st.st_dev {
        return Err(std::io::Error::other(format!(
            "{} changed while it was read",
            name.to_string_lossy()
        )));
    }
    Ok(f)
}

fn open_dir_at(dir: &impl AsFd, name: &CString) -> std::io::Result<OwnedFd> {
    open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY)
}

/// Where the content of listed files goes while the tree is frozen; before
/// the freeze there is none, and files are listed with their size only.
///
/// A data file already in the images directory (a migration sends a copy
/// made before the freeze ahead of the dump) is compared as the content
/// comes, and left untouched as long as it holds the same bytes: a file
/// nobody changed since is not sent again. From the first difference on,
/// the content is written over it.
pub struct DataSink {
    file: File,
    len: u64,
    /// Length of the data file found there.
    earlier: u64,
    /// Its modification time: a rewritten file must not keep it.
    earlier_mtime: Option<std::time::SystemTime>,
    /// Every byte so far equals the data file found there.
    same: bool,
}

/// Bytes compared at a time.
const COMPARE_CHUNK: usize = 256 << 10;

/// Opens `images`' data file (for writing too, made if missing, when
/// `write`), refusing what an image directory (an import, a migration
/// peer's) may hold in its place: a link is not followed, a FIFO or device
/// node not opened, a file with other names not written through.
fn open_data_file(images: &Path, write: bool) -> std::io::Result<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = images.join(TMPFS_DATA_FILE);
    let refused = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{TMPFS_DATA_FILE} is not a regular file of its own"),
        )
    };
    // Checked before the open too: opening a device node can act on it.
    match std::fs::symlink_metadata(&path) {
        Ok(m) if !m.is_file() => return Err(refused()),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)?;
    let m = file.metadata()?;
    if !m.is_file() || (write && m.nlink() != 1) {
        return Err(refused());
    }
    Ok(file)
}

impl DataSink {
    pub fn create(images: &Path) -> std::io::Result<DataSink> {
        let file = open_data_file(images, true)?;
        let m = file.metadata()?;
        let earlier = m.len();
        Ok(DataSink {
            file,
            len: 0,
            earlier,
            earlier_mtime: m.modified().ok(),
            same: earlier > 0,
        })
    }

    /// Appends `len` bytes of `src`; its offset.
    fn append(&mut self, mut src: File, len: u64) -> std::io::Result<u64> {
        use std::io::Read;
        let offset = self.len;
        let mut done = 0;
        if self.same {
            done = self.matching(&mut src, offset, len)?;
            if done < len {
                self.same = false;
                // Compared chunks were read: go back to the first one
                // that differs.
                src.seek(SeekFrom::Start(done))?;
            }
        }
        if done < len {
            self.file.seek(SeekFrom::Start(offset + done))?;
            // std's copy uses copy_file_range/sendfile between files.
            let copied = std::io::copy(&mut (&mut src).take(len - done), &mut self.file)?;
            if copied != len - done {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} of {len} bytes read", done + copied),
                ));
            }
        }
        self.len += len;
        Ok(offset)
    }

    /// How many of `src`'s first `len` bytes equal the data file's at
    /// `offset`, in whole chunks: a chunk that differs counts as none.
    fn matching(&mut self, src: &mut File, offset: u64, len: u64) -> std::io::Result<u64> {
        use std::io::Read;
        use std::os::unix::fs::FileExt;
        if offset + len > self.earlier {
            return Ok(0);
        }
        let mut a = vec![0u8; COMPARE_CHUNK.min(len as usize)];
        let mut b = vec![0u8; a.len()];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(a.len() as u64) as usize;
            src.read_exact(&mut a[..n])?;
            self.file.read_exact_at(&mut b[..n], offset + done)?;
            if a[..n] != b[..n] {
                return Ok(done);
            }
            done += n as u64;
        }
        Ok(done)
    }

    /// Ends the data file at what was appended: untouched when it held
    /// the same bytes already.
    pub fn finish(self) -> std::io::Result<()> {
        if self.same && self.len == self.earlier {
            return Ok(());
        }
        self.file.set_len(self.len)?;
        // A sender that skips files whose times and size did not change
        // must see this one as changed, even where timestamps are coarse.
        if let Some(t) = self.earlier_mtime {
            if self.file.metadata()?.modified().ok() == Some(t) {
                self.file
                    .set_modified(t + std::time::Duration::from_micros(1))?;
            }
        }
        Ok(())
    }
}

/// Lists the entries below `dir` (on device `dev`), or `None` when it holds
/// anything a list cannot carry (hard links, sockets, too many entries).
fn list(
    dir: OwnedFd,
    dev: u64,
    prefix: &str,
    out: &mut Vec<Entry>,
    mut sink: Option<&mut DataSink>,
) -> std::io::Result<bool> {
    let names: Vec<CString> = {
        let d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(std::io::Error::from)?;
        let mut names = Vec::new();
        let mut d = d;
        for e in d.iter() {
            let e = e.map_err(std::io::Error::from)?;
            let n = e.file_name().to_owned();
            if n.as_bytes() != b"." && n.as_bytes() != b".." {
                names.push(n);
            }
        }
        names
    };
    for name in names {
        if out.len() >= MAX_ENTRIES {
            return Ok(false);
        }
        let st = stat_at(&dir, &name)?;
        let Ok(n) = name.to_str() else {
            return Ok(false);
        };
        let path = format!("{prefix}{n}");
        let fmt = st.st_mode & libc::S_IFMT;
        let other_mount = st.st_dev != dev;
        let kind = match fmt {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG if st.st_size == 0 && (st.st_nlink == 1 || other_mount) => Kind::File,
            libc::S_IFREG if st.st_nlink == 1 && !other_mount => {
                let len = st.st_size as u64;
                let offset = match sink.as_deref_mut() {
                    Some(sink) => sink.append(open_file_at(&dir, &name, &st)?, len)?,
                    None => 0,
                };
                Kind::Data {
                    offset,
                    len,
                    mtime: (st.st_mtime, st.st_mtime_nsec),
                }
            }
            libc::S_IFCHR => Kind::Char(st.st_rdev),
            libc::S_IFBLK => Kind::Block(st.st_rdev),
            libc::S_IFIFO => Kind::Fifo,
            libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(dir.as_fd(), name.as_c_str())
                    .map_err(std::io::Error::from)?;
                match target.to_str() {
                    Some(t) => Kind::Symlink(t.to_string()),
                    None => return Ok(false),
                }
            }
            _ => return Ok(false),
        };
        out.push(Entry {
            path: path.clone(),
            kind: kind.clone(),
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
        });
        // A mount below this one is a mount point here, nothing more.
        if kind == Kind::Dir && !other_mount {
            let sub = open_dir_at(&dir, &name)?;
            if !list(sub, dev, &format!("{path}/"), out, sink.as_deref_mut())? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The tmpfs mounts of the container `pid` that a list can carry (of
/// those mounted where `wanted` says), each with its list; with `sink`,
/// their files' content is copied into it.
pub fn collect(
    pid: i32,
    wanted: impl Fn(&str) -> bool,
    mut sink: Option<&mut DataSink>,
) -> Result<Vec<Tmpfs>> {
    let mounts = tmpfs_mounts(pid).map_err(io(format!("reading /proc/{pid}/mountinfo")))?;
    let proc_root = PathBuf::from(format!("/proc/{pid}/root"));
    let root = crate::rootfs::RootDir::open(&proc_root).map_err(|source| Error::Rootfs {
        rootfs: proc_root.clone(),
        source,
    })?;
    let mut out = Vec::new();
    for (key, flags, options) in mounts.into_iter().filter(|(k, _, _)| wanted(k)) {
        // Resolved in the container's root by the kernel, no symlink
        // followed: a mount point is where mountinfo says.
        let dir = match root
            .resolve_no_symlinks(Path::new(&key))
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno.unwrap_or(libc::EINVAL)))
            .and_then(|p| open_dir_at(&p, &CString::from(c".")))
        {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(key, error = %e, "tmpfs left to CRIU");
                continue;
            }
        };
        let st = stat_at(&dir, &CString::default()).map_err(io(format!("stat of {key}")))?;
        let mut entries = Vec::new();
        if list(dir, st.st_dev, "", &mut entries, sink.as_deref_mut())
            .map_err(io(format!("listing {key}")))?
        {
            out.push(Tmpfs {
                key,
                flags,
                options,
                root_mode: st.st_mode & 0o7777,
                root_uid: st.st_uid,
                root_gid: st.st_gid,
                entries,
            });
        } else {
            tracing::debug!(
                key,
                "tmpfs holds what a list cannot carry: CRIU archives it"
            );
        }
    }
    Ok(out)
}

/// Copies the content of the tmpfs mounts of the running container `pid`
/// into `images` ahead of a dump, which later finds the copy and leaves it
/// untouched where nothing changed (see [`DataSink`]). Whether any content
/// was copied.
///
/// Best effort: the container runs and may change its tmpfs meanwhile (a
/// file removed, truncated or replaced); the dump copies it again anyway,
/// so a failure here only means nothing is sent early.
pub fn copy_ahead(pid: i32, images: &Path) -> bool {
    let path = images.join(TMPFS_DATA_FILE);
    let copied = (|| -> Result<bool> {
        let mut sink =
            DataSink::create(images).map_err(io(format!("writing {}", path.display())))?;
        collect(pid, |_| true, Some(&mut sink))?;
        let copied = sink.len > 0;
        sink.finish()
            .map_err(io(format!("writing {}", path.display())))?;
        Ok(copied)
    })();
    if let Err(e) = &copied {
        tracing::warn!(error = %e, "tmpfs contents not copied ahead: the dump copies them");
    }
    let copied = copied.unwrap_or(false);
    if !copied {
        let _ = std::fs::remove_file(&path);
    }
    copied
}

pub fn write(images: &Path, list: &[Tmpfs]) -> Result<()> {
    let path = images.join(TMPFS_FILE);
    let text = serde_json::to_string(list).expect("plain fields serialize");
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
}

/// The listed tmpfs mounts (none in images where CRIU kept them all).
pub fn read(images: &Path) -> Result<Vec<Tmpfs>> {
    use std::io::Read;
    let path = images.join(TMPFS_FILE);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
    };
    let mut text = String::new();
    f.take(MAX_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io(format!("reading {}", path.display())))?;
    let damaged = |msg: String| {
        io(format!("reading {}", path.display()))(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            msg,
        ))
    };
    if text.len() as u64 > MAX_BYTES {
        return Err(damaged(format!("larger than {MAX_BYTES} bytes")));
    }
    let list: Vec<Tmpfs> = serde_json::from_str(&text).map_err(|source| {
        Error::from(ImagesError::DamagedFile {
            path: path.clone(),
            source,
        })
    })?;
    for t in &list {
        if !t.key.starts_with('/') || t.entries.len() > MAX_ENTRIES {
            return Err(damaged(format!("bad tmpfs entry {}", t.key)));
        }
        for e in &t.entries {
            if !plain(&e.path) {
                return Err(damaged(format!("bad path {:?} in tmpfs {}", e.path, t.key)));
            }
        }
    }
    Ok(list)
}

/// A relative path of normal components only (an image dir is untrusted).
fn plain(p: &str) -> bool {
    !p.is_empty()
        && p.split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
}

/// The data file of `images` (None when no listed file has content), to
/// pass to [`make`].
pub fn open_data(images: &Path) -> Result<Option<File>> {
    match open_data_file(images, false) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(format!(
            "reading {}",
            images.join(TMPFS_DATA_FILE).display()
        ))(e)),
    }
}

/// Mounts a tmpfs like `t` at `at` (an empty directory of ferry's) and
/// makes its entries, file content from `content`. Parents come before
/// children in the list.
pub fn make(t: &Tmpfs, at: &Path, mut content: Option<&File>) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    let flags = MsFlags::from_bits_truncate(t.flags & !libc::MS_RDONLY);
    let data = format!(
        "mode={:o},uid={},gid={}{}{}",
        t.root_mode,
        t.root_uid,
        t.root_gid,
        if t.options.is_empty() { "" } else { "," },
        t.options
    );
    mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(data.as_str()))
        .map_err(super::sys(format!("mounting tmpfs at {}", at.display())))?;
    let dir = nix::fcntl::open(
        at,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(super::sys(format!("opening {}", at.display())))?;
    for e in &t.entries {
        make_entry(&dir, e, content.as_mut())
            .map_err(|err| io(format!("making {} in the tmpfs for {}", e.path, t.key))(err))?;
    }
    if t.flags & libc::MS_RDONLY != 0 {
        mount(
            None::<&str>,
            at,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(super::sys(format!("making {} read-only", at.display())))?;
    }
    Ok(())
}

fn make_entry(dir: &OwnedFd, e: &Entry, data: Option<&mut &File>) -> std::io::Result<()> {
    // Within a new tmpfs of ferry's, made in list order: no component is a
    // symlink the list did not make before (and symlinks are never
    // followed: AT_SYMLINK_NOFOLLOW, O_NOFOLLOW on the last component
    // through the checks below).
    let name = CString::new(e.path.as_bytes())?;
    let fd = dir.as_raw_fd();
    let mode = e.mode as libc::mode_t;
    // SAFETY: valid fd and NUL-terminated names.
    let r = unsafe {
        match &e.kind {
            Kind::Dir => libc::mkdirat(fd, name.as_ptr(), mode),
            Kind::File => {
                let f = libc::openat(
                    fd,
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode,
                );
                if f >= 0 {
                    libc::close(f);
                    0
                } else {
                    -1
                }
            }
            Kind::Char(dev) => libc::mknodat(fd, name.as_ptr(), libc::S_IFCHR | mode, *dev),
            Kind::Block(dev) => libc::mknodat(fd, name.as_ptr(), libc::S_IFBLK | mode, *dev),
            Kind::Fifo => libc::mknodat(fd, name.as_ptr(), libc::S_IFIFO | mode, 0),
            Kind::Data { offset, len, .. } => {
                let f = libc::openat(
                    fd,
                    name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_WRONLY
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    mode,
                );
                if f < 0 {
                    -1
                } else {
                    let mut out = File::from_raw_fd(f);
                    let Some(data) = data else {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!("{TMPFS_DATA_FILE} is missing"),
                        ));
                    };
                    copy_range(data, *offset, *len, &mut out)?;
                    0
                }
            }
            Kind::Symlink(target) => {
                let t = CString::new(target.as_bytes())?;
                libc::symlinkat(t.as_ptr(), fd, name.as_ptr())
            }
        }
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    unsafe {
        if libc::fchownat(fd, name.as_ptr(), e.uid, e.gid, libc::AT_SYMLINK_NOFOLLOW) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // The umask cut the mode (and setuid bits need setting after chown).
        if !matches!(e.kind, Kind::Symlink(_)) && libc::fchmodat(fd, name.as_ptr(), mode, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Kind::Data { mtime, .. } = e.kind {
            let times = [
                libc::timespec {
                    tv_sec: 0,
                    tv_nsec: libc::UTIME_OMIT,
                },
                libc::timespec {
                    tv_sec: mtime.0,
                    tv_nsec: mtime.1,
                },
            ];
            if libc::utimensat(fd, name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Copies `len` bytes at `offset` of `data` to `out`; the data file is
/// untrusted: a range past its end is an error, not a short file.
fn copy_range(data: &mut &File, offset: u64, len: u64, out: &mut File) -> std::io::Result<()> {
    use std::io::Read;
    data.seek(SeekFrom::Start(offset))?;
    let copied = std::io::copy(&mut data.take(len), out)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{TMPFS_DATA_FILE} ends before byte {}", offset + len),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_past_the_data_files_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("d"), b"0123456789").unwrap();
        let data = File::open(dir.path().join("d")).unwrap();
        let copy = |offset, len| {
            let mut out = File::create(dir.path().join("out")).unwrap();
            copy_range(&mut &data, offset, len, &mut out)
                .map(|()| std::fs::read(dir.path().join("out")).unwrap())
        };
        assert_eq!(copy(2, 3).unwrap(), b"234");
        assert_eq!(copy(0, 10).unwrap(), b"0123456789");
        for (offset, len) in [(8, 3), (11, 1), (u64::MAX, 1)] {
            assert!(copy(offset, len).is_err(), "{offset} {len}");
        }
    }

    /// A data file already there with the same bytes is left untouched
    /// (its mtime and ctime stay, so a migration does not send it again);
    /// one that differs anywhere, or in length, ends up with the new bytes.
    #[test]
    fn an_equal_data_file_is_left_untouched_and_a_changed_one_rewritten() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let big: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.join("a"), &big).unwrap();
        std::fs::write(src.join("b"), b"tail").unwrap();
        let run = || {
            let mut sink = DataSink::create(dir.path()).unwrap();
            for name in ["a", "b"] {
                let f = File::open(src.join(name)).unwrap();
                let len = f.metadata().unwrap().len();
                sink.append(f, len).unwrap();
            }
            sink.finish().unwrap();
            let data = dir.path().join(TMPFS_DATA_FILE);
            let md = std::fs::metadata(&data).unwrap();
            (
                std::fs::read(&data).unwrap(),
                (md.mtime(), md.mtime_nsec(), md.ctime_nsec()),
            )
        };
        let mut want = big.clone();
        want.extend_from_slice(b"tail");
        let (first, stamp) = run();
        assert_eq!(first, want);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (again, same_stamp) = run();
        assert_eq!(again, want);
        assert_eq!(same_stamp, stamp, "an equal data file was written");
        // One byte in the second chunk of the first file.
        let mut changed = big.clone();
        changed[300_000] ^= 0xff;
        std::fs::write(src.join("a"), &changed).unwrap();
        let (got, new_stamp) = run();
        let mut want2 = changed.clone();
        want2.extend_from_slice(b"tail");
        assert_eq!(got, want2);
        assert_ne!(new_stamp, stamp);
        // Shorter: the old tail goes.
        std::fs::write(src.join("a"), b"short").unwrap();
        let (got, _) = run();
        assert_eq!(got, b"shorttail");
    }

    #[test]
    fn a_data_file_that_is_a_link_or_a_fifo_is_refused_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        let images = dir.path().join("img");
        std::fs::create_dir(&images).unwrap();
        let data = images.join(TMPFS_DATA_FILE);
        // A link: neither written through nor read through.
        std::os::unix::fs::symlink(&target, &data).unwrap();
        assert!(DataSink::create(&images).is_err());
        assert!(open_data(&images).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A hard link to another file.
        std::fs::remove_file(&data).unwrap();
        std::fs::hard_link(&target, &data).unwrap();
        assert!(DataSink::create(&images).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        // A FIFO: refused without blocking.
        std::fs::remove_file(&data).unwrap();
        nix::unistd::mkfifo(&data, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(DataSink::create(&images).is_err());
        assert!(open_data(&images).is_err());
    }

    #[test]
    fn only_plain_relative_paths_are_made() {
        assert!(plain("pts"));
        assert!(plain("a/b"));
        for bad in ["", "/etc", "..", "a/../b", "a//b", "./a"] {
            assert!(!plain(bad), "{bad}");
        }
    }
}
