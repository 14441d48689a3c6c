//! What an import may write into one filesystem.
use std::path::{Path, PathBuf};

use super::{Error, Result};

/// How much an import may write into one filesystem: its free space (less
/// a reserve of 1% of its size, at most 256 MiB) and free inodes, measured
/// once before writing. Each entry is charged from its tar header *before*
/// its data is written, rounded up to whole blocks, so an archive larger
/// than the free space is refused before it can fill the filesystem.
pub(crate) struct SpaceBudget {
    path: PathBuf,
    block: u64,
    bytes_left: u64,
    inodes_left: u64,
    charged: u64,
    free_bytes: u64,
}

impl SpaceBudget {
    pub(crate) fn of(dir: &Path) -> Result<SpaceBudget> {
        let st = nix::sys::statvfs::statvfs(dir).map_err(|e| {
            Error::io(format!(
                "cannot measure the free space of {}",
                dir.display()
            ))(e.into())
        })?;
        let block = (st.fragment_size() as u64).max(512);
        let free_bytes = (st.blocks_available() as u64).saturating_mul(block);
        let size = (st.blocks() as u64).saturating_mul(block);
        let reserve = (size / 100).min(256 << 20);
        // Some filesystems report no inode limit at all (0 total).
        let inodes_left = if st.files() == 0 {
            u64::MAX
        } else {
            st.files_available() as u64
        };
        Ok(SpaceBudget {
            path: dir.to_path_buf(),
            block,
            bytes_left: free_bytes.saturating_sub(reserve),
            inodes_left,
            charged: 0,
            free_bytes,
        })
    }

    /// Charges one file or directory of `size` bytes.
    pub(crate) fn charge(&mut self, size: u64) -> Result<()> {
        let cost = size.div_ceil(self.block).max(1).saturating_mul(self.block);
        self.charged = self.charged.saturating_add(cost);
        if cost > self.bytes_left || self.inodes_left == 0 {
            return Err(self.refuse(self.inodes_left == 0));
        }
        self.bytes_left -= cost;
        self.inodes_left -= 1;
        Ok(())
    }

    fn refuse(&self, inodes: bool) -> Error {
        Error::NoSpace {
            path: self.path.clone(),
            needed_what: format!("at least {} bytes", self.charged),
            available: if inodes {
                "no inodes are free".to_string()
            } else {
                format!("{} bytes are free", self.free_bytes)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: u64, inodes: u64) -> SpaceBudget {
        SpaceBudget {
            path: PathBuf::from("/target"),
            block: 4096,
            bytes_left: bytes,
            inodes_left: inodes,
            charged: 0,
            free_bytes: bytes,
        }
    }

    #[test]
    fn entries_are_charged_in_whole_blocks_until_full() {
        let mut b = budget(3 * 4096, 10);
        b.charge(1).unwrap();
        b.charge(0).unwrap();
        b.charge(4096).unwrap();
        let err = b.charge(1).unwrap_err().to_string();
        assert!(err.contains("at least 16384 bytes"), "{err}");
        assert!(err.contains("12288 bytes are free"), "{err}");
        assert!(err.contains("/target"), "{err}");
    }

    #[test]
    fn inodes_run_out_too() {
        let mut b = budget(1 << 30, 1);
        b.charge(10).unwrap();
        let err = b.charge(10).unwrap_err().to_string();
        assert!(err.contains("no inodes are free"), "{err}");
    }

    #[test]
    fn measures_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        let b = SpaceBudget::of(d.path()).unwrap();
        assert!(b.free_bytes >= b.bytes_left);
        assert!(b.block >= 512);
    }
}
