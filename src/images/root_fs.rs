//! The filesystem type of the container's root, recorded beside the images.
//!
//! CRIU names only the filesystems it knows how to restore; a root on ext4,
//! xfs or btrfs (any directory rootfs) appears in `mountpoints-N.img` as
//! `unsupported`. The dumping side reads the type from the init's mountinfo
//! and writes it here, so `ferry inspect` can name it on any host.
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Written into the image dir at checkpoint.
pub const ROOT_FS_FILE: &str = "ferry-root.json";

/// Largest record read back: it holds two short strings, and an imported
/// image dir may hold a hostile one of any size.
const MAX_BYTES: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// As mountinfo names it (`ext4`, `overlay`, `xfs`, ...).
    pub fstype: String,
    /// The mount source (`/dev/vda`, `overlay`, ...).
    pub source: String,
}

/// The root mount of `pid`'s mount namespace, from its mountinfo (fields
/// after the ` - ` separator: type, source, super options).
pub fn of_process(pid: i32) -> Option<RootFs> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    parse_mountinfo(&text)
}

fn parse_mountinfo(text: &str) -> Option<RootFs> {
    // The last mount on "/" is the one the process sees.
    text.lines().rev().find_map(|line| {
        let (head, tail) = line.split_once(" - ")?;
        if head.split(' ').nth(4)? != "/" {
            return None;
        }
        let mut t = tail.split(' ');
        Some(RootFs {
            fstype: t.next()?.to_string(),
            source: t.next()?.to_string(),
        })
    })
}

/// Records `root` in `images`.
pub fn write(images: &Path, root: &RootFs) -> std::io::Result<()> {
    std::fs::write(
        images.join(ROOT_FS_FILE),
        serde_json::to_vec(root).expect("strings serialize"),
    )
}

/// The record in `images`, if one was written and is well-formed; anything
/// else (absent, oversized, damaged) is no record: it only improves a label.
pub fn read(images: &Path) -> Option<RootFs> {
    use std::io::Read;
    let f = std::fs::File::open(images.join(ROOT_FS_FILE)).ok()?;
    let mut buf = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut buf).ok()?;
    if buf.len() as u64 > MAX_BYTES {
        return None;
    }
    let root: RootFs = serde_json::from_slice(&buf).ok()?;
    let printable = |s: &str| !s.is_empty() && s.len() < 256 && !s.chars().any(char::is_control);
    (printable(&root.fstype) && printable(&root.source)).then_some(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_visible_root_mount_is_found() {
        let text = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
300 22 0:50 / /proc rw - proc proc rw\n\
301 22 254:0 /bundle/rootfs / rw - xfs /dev/sdb1 rw\n";
        assert_eq!(
            parse_mountinfo(text),
            Some(RootFs {
                fstype: "xfs".into(),
                source: "/dev/sdb1".into()
            })
        );
        assert_eq!(
            parse_mountinfo("300 22 0:50 / /proc rw - proc proc rw\n"),
            None
        );
    }

    #[test]
    fn a_damaged_or_hostile_record_is_no_record() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()), None);
        let root = RootFs {
            fstype: "ext4".into(),
            source: "/dev/vda".into(),
        };
        write(dir.path(), &root).unwrap();
        assert_eq!(read(dir.path()), Some(root));
        for bad in [
            b"{".to_vec(),
            br#"{"fstype":"ext4\u001b[2J","source":"x"}"#.to_vec(),
            vec![b' '; 5000],
        ] {
            std::fs::write(dir.path().join(ROOT_FS_FILE), bad).unwrap();
            assert_eq!(read(dir.path()), None);
        }
    }
}
