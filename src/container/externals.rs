//! What CRIU must be told about a container's surroundings: mounts whose
//! source lies outside the container (declared external, keyed by their
//! destination inside it) and the stdio pipes it shares with its caller.
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use super::{io, Error, ImagesError, Result};
use crate::cgroups::CgroupDescriptor;
use crate::proto::rpc::{Ext_mount_map, Inherit_fd};
use crate::rootfs::RootDir;

/// Written into the image dir: what fds 0-2 of the init pointed at.
pub const DESCRIPTORS_FILE: &str = "descriptors.json";

/// One external mount: its key (the destination inside the container) and
/// the host path that backs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub key: String,
    pub source: PathBuf,
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// The external mounts of a container made from `spec` with its cgroup in
/// `cgroup`: bind mounts, per-controller cgroup binds, masked files (bound
/// from /dev/null) and the host /sys when the container has no network
/// namespace of its own.
pub fn mounts(spec: &Spec, bundle: &Path, cgroup: Option<&CgroupDescriptor>) -> Vec<External> {
    let mut out = Vec::new();
    for m in spec.mounts().clone().unwrap_or_default() {
        let dest = m.destination().to_string_lossy().into_owned();
        let typ = m.typ().clone().unwrap_or_default();
        if typ == "cgroup" || typ == "cgroup2" {
            let Some(cg) = cgroup else { continue };
            for (controller, dir) in &cg.dirs {
                let key = match crate::cgroups::mount_subdir(controller) {
                    None => dest.clone(),
                    Some(sub) => format!("{}/{sub}", dest.trim_end_matches('/')),
                };
                out.push(External {
                    key,
                    source: dir.clone(),
                });
            }
        } else if is_bind(&m) {
            let source = m.source().clone().unwrap_or_default();
            let source = if source.is_relative() {
                bundle.join(source)
            } else {
                source
            };
            out.push(External { key: dest, source });
        } else if typ == "sysfs"
            && !crate::spec::has_own_namespace(spec, oci_spec::runtime::LinuxNamespaceType::Network)
        {
            out.push(External {
                key: dest,
                source: "/sys".into(),
            });
        }
    }
    out
}

/// Mount points on kernel filesystems (made by the kernel, or by CRIU from
/// the images), not in the rootfs directory.
fn on_kernel_fs(key: &str) -> bool {
    ["/proc", "/sys", "/dev"]
        .iter()
        .any(|p| key == *p || key.starts_with(&format!("{p}/")))
}

/// Names each external mount by the path its destination resolves to in
/// `root` (symlinks followed inside it): the mount point the kernel, and so
/// CRIU, knows it by. With `create`, missing mount points are made (a
/// directory or an empty file, like the source), as a fresh rootfs (another
/// copy, another host) may lack them. Mount points on /proc, /sys and /dev
/// are left to the kernel and CRIU.
pub fn resolve_keys(ext: &mut [External], root: &RootDir, create: bool) -> Result<()> {
    let fail = |source| Error::Rootfs {
        rootfs: root.host_path().to_path_buf(),
        source,
    };
    for e in ext.iter_mut().filter(|e| !on_kernel_fs(&e.key)) {
        let key = PathBuf::from(&e.key);
        let fd = match root.resolve(&key) {
            Ok(fd) => fd,
            Err(err) if create && err.errno == Some(libc::ENOENT) => {
                let is_dir = std::fs::metadata(&e.source)
                    .map(|m| m.is_dir())
                    .unwrap_or(true);
                if is_dir {
                    root.mkdir_all(&key, 0o755)
                } else {
                    root.create_file(&key, 0o644)
                }
                .map_err(fail)?
            }
            Err(err) => return Err(fail(err)),
        };
        e.key = root
            .path_of(&fd, &key)
            .map_err(fail)?
            .to_string_lossy()
            .into_owned();
    }
    Ok(())
}

/// Masked paths that are files in the running container (`/dev/null` is
/// bound over them); directories are tmpfs mounts CRIU handles itself.
pub fn masked_files(spec: &Spec, pid: i32) -> Vec<External> {
    masked(spec, |p| {
        std::fs::metadata(format!("/proc/{pid}/root{p}")).is_ok_and(|m| !m.is_dir())
    })
}

/// Masked paths to map on restore: those the image recorded as external.
pub fn masked_files_in(spec: &Spec, keys: &[String]) -> Vec<External> {
    masked(spec, |p| keys.iter().any(|k| k == p))
}

fn masked(spec: &Spec, keep: impl Fn(&str) -> bool) -> Vec<External> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| keep(p))
        .map(|p| External {
            key: p,
            source: "/dev/null".into(),
        })
        .collect()
}

/// Dump side: each external is declared by key (value = key, as runc does).
pub fn dump_map(ext: &[External]) -> Vec<Ext_mount_map> {
    mount_map(ext, |e| e.key.clone())
}

/// Restore side: each key maps to the host source.
pub fn restore_map(ext: &[External]) -> Vec<Ext_mount_map> {
    mount_map(ext, |e| e.source.to_string_lossy().into_owned())
}

fn mount_map(ext: &[External], val: impl Fn(&External) -> String) -> Vec<Ext_mount_map> {
    ext.iter()
        .map(|e| {
            let mut m = Ext_mount_map::new();
            m.set_key(e.key.clone());
            m.set_val(val(e));
            m
        })
        .collect()
}

/// Records the init's stdio identities in the image dir.
pub fn write_descriptors(images: &Path, stdio: &[String]) -> Result<()> {
    let path = images.join(DESCRIPTORS_FILE);
    let text = serde_json::to_string(stdio).expect("strings serialize");
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
}

/// Largest `descriptors.json` or `stdio-files.json` read: each lists three
/// fds, and an imported image dir may hold a hostile one of any size.
pub const MAX_STDIO_JSON_BYTES: u64 = 1 << 20;

/// Reads a small file of the image dir whole, refusing one larger than
/// [`MAX_STDIO_JSON_BYTES`].
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut text = String::new();
    if size <= MAX_STDIO_JSON_BYTES {
        f.take(MAX_STDIO_JSON_BYTES + 1).read_to_string(&mut text)?;
    }
    if size > MAX_STDIO_JSON_BYTES || text.len() as u64 > MAX_STDIO_JSON_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_STDIO_JSON_BYTES} bytes"),
        ));
    }
    Ok(text)
}

fn damaged(path: PathBuf, source: serde_json::Error) -> Error {
    ImagesError::DamagedFile { path, source }.into()
}

/// Reads `descriptors.json` (absent in images of other tools: no pipes).
pub fn read_descriptors(images: &Path) -> Result<Vec<String>> {
    let path = images.join(DESCRIPTORS_FILE);
    match read_small(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| damaged(path, source)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// Written into the image dir: stdio fds of the init that are host files
/// CRIU was told are external (`file[mnt_id:inode]`), to be replaced by the
/// restoring caller's fds.
pub const STDIO_FILES: &str = "stdio-files.json";

/// fds 0-2 of `pid` open on files of mounts the container cannot see (the
/// caller's /dev/null, a log file): CRIU cannot dump those, only mark them
/// external. Returns (fd, key).
pub fn stdio_external_files(pid: i32) -> Vec<(i32, String)> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let visible: std::collections::HashSet<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    (0..3)
        .filter_map(|fd| {
            let target = crate::proc::fd_target(pid, fd)?;
            if !target.starts_with('/') {
                return None;
            }
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            let mnt_id: u64 = info
                .lines()
                .find_map(|l| l.strip_prefix("mnt_id:"))?
                .trim()
                .parse()
                .ok()?;
            if visible.contains(mnt_id.to_string().as_str()) {
                return None;
            }
            let ino = std::os::unix::fs::MetadataExt::ino(
                &std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?,
            );
            Some((fd, format!("file[{mnt_id:x}:{ino:x}]")))
        })
        .collect()
}

pub fn write_stdio_files(images: &Path, files: &[(i32, String)]) -> Result<()> {
    let path = images.join(STDIO_FILES);
    let text = serde_json::to_string(files).expect("pairs serialize");
    std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
}

pub fn read_stdio_files(images: &Path) -> Result<Vec<(i32, String)>> {
    let path = images.join(STDIO_FILES);
    match read_small(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|source| damaged(path, source)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// inherit_fd entries replacing external stdio files with `fds[fd]`.
pub fn inherit_files(files: &[(i32, String)], fds: &[i32; 3]) -> Vec<Inherit_fd> {
    files
        .iter()
        .filter(|(fd, _)| (0..3).contains(fd))
        .map(|(fd, key)| {
            let mut f = Inherit_fd::new();
            f.set_key(key.clone());
            f.set_fd(fds[*fd as usize]);
            f
        })
        .collect()
}

/// For every recorded pipe among fds 0-2, the descriptor (in criu's table)
/// that replaces it: `fds[i]` is where this caller's fd i was duplicated.
pub fn inherit_pipes(recorded: &[String], fds: &[i32; 3]) -> Vec<Inherit_fd> {
    recorded
        .iter()
        .take(3)
        .enumerate()
        .filter(|(_, d)| d.starts_with("pipe:"))
        .map(|(i, d)| {
            let mut f = Inherit_fd::new();
            f.set_key(d.clone());
            f.set_fd(fds[i]);
            f
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_cgroups_and_masks_are_external() {
        let mut spec = crate::spec::default_spec();
        let mut mounts = spec.mounts().clone().unwrap();
        let bind: oci_spec::runtime::Mount = serde_json::from_value(serde_json::json!({
            "destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]
        }))
        .unwrap();
        mounts.push(bind);
        let cg: oci_spec::runtime::Mount = serde_json::from_value(serde_json::json!({
            "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"
        }))
        .unwrap();
        mounts.push(cg);
        spec.set_mounts(Some(mounts));
        let desc = CgroupDescriptor {
            path: "ferry/x".into(),
            systemd: None,
            unified: false,
            dirs: [
                (
                    "memory".to_string(),
                    PathBuf::from("/sys/fs/cgroup/memory/ferry/x"),
                ),
                (
                    "name=systemd".to_string(),
                    PathBuf::from("/sys/fs/cgroup/systemd/ferry/x"),
                ),
            ]
            .into_iter()
            .collect(),
        };
        let ext = super::mounts(&spec, Path::new("/b"), Some(&desc));
        assert!(ext.contains(&External {
            key: "/data".into(),
            source: "/b/data".into()
        }));
        assert!(ext.iter().any(|e| e.key == "/sys/fs/cgroup/memory"));
        assert!(ext.iter().any(|e| e.key == "/sys/fs/cgroup/systemd"));
        let map = dump_map(&ext);
        assert!(map.iter().all(|m| m.key() == m.val()));
        let map = restore_map(&ext);
        assert!(map
            .iter()
            .any(|m| m.key() == "/data" && m.val() == "/b/data"));
    }

    #[test]
    fn keys_name_where_destinations_resolve_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path().join("rootfs");
        std::fs::create_dir_all(r.join("realdir")).unwrap();
        std::os::unix::fs::symlink("/realdir", r.join("linkdir")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let ext = |key: &str| External {
            key: key.into(),
            source: src.clone(),
        };
        let mut list = vec![
            ext("/linkdir"),
            ext("/made/here"),
            ext("/sys/fs/cgroup/cpu"),
        ];
        let root = RootDir::open(&r).unwrap();
        // Without create, a missing mount point is an error naming it.
        let err = resolve_keys(&mut list.clone(), &root, false).unwrap_err();
        assert!(err.to_string().contains("/made/here"), "{err}");
        resolve_keys(&mut list, &root, true).unwrap();
        let keys: Vec<&str> = list.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["/realdir", "/made/here", "/sys/fs/cgroup/cpu"]);
        assert!(r.join("made/here").is_dir());
        assert!(!r.join("sys").exists());
    }

    #[test]
    fn only_pipes_are_inherited() {
        let rec = vec!["pipe:[11]".into(), "/dev/null".into(), "pipe:[12]".into()];
        let fds = inherit_pipes(&rec, &[100, 101, 102]);
        assert_eq!(fds.len(), 2);
        assert_eq!((fds[0].key(), fds[0].fd()), ("pipe:[11]", 100));
        assert_eq!((fds[1].key(), fds[1].fd()), ("pipe:[12]", 102));
    }
}

#[cfg(test)]
mod hostile_input_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever an image dir holds in these files: a list or an error.
        #[test]
        fn stdio_files_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(DESCRIPTORS_FILE), &bytes).unwrap();
            std::fs::write(dir.path().join(STDIO_FILES), &bytes).unwrap();
            if let Ok(d) = read_descriptors(dir.path()) {
                let _ = inherit_pipes(&d, &[3, 4, 5]);
            }
            if let Ok(f) = read_stdio_files(dir.path()) {
                let _ = inherit_files(&f, &[3, 4, 5]);
            }
        }
    }

    /// These were read whole, however large.
    #[test]
    fn oversized_stdio_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for name in [DESCRIPTORS_FILE, STDIO_FILES] {
            let f = std::fs::File::create(dir.path().join(name)).unwrap();
            f.set_len(MAX_STDIO_JSON_BYTES + 1).unwrap();
        }
        let err = read_descriptors(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("larger than {MAX_STDIO_JSON_BYTES}")),
            "{err}"
        );
        let err = read_stdio_files(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("larger than {MAX_STDIO_JSON_BYTES}")),
            "{err}"
        );
    }
}
