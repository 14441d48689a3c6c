//! The root task's namespaces and mounts.
use super::{fstype_name, missing_ok, ImageDir, Mount, Namespace, NamespaceIds, Namespaces};
use crate::criu::image::*;
use crate::proto::namespaces::{Mnt_entry, Utsns_entry};

/// Each namespace kind, its id among the root task's, and the prefix of
/// the image CRIU writes for it (`PREFIX-ID.img`; none for cgroup).
type NamespaceImage = (
    &'static str,
    fn(&NamespaceIds) -> Option<u32>,
    Option<&'static str>,
);

const NAMESPACE_IMAGES: [NamespaceImage; 8] = [
    ("pid", |i| i.pid_ns, Some("pidns")),
    ("net", |i| i.net_ns, Some("netns")),
    ("ipc", |i| i.ipc_ns, Some("ipcns-var")),
    ("uts", |i| i.uts_ns, Some("utsns")),
    ("mnt", |i| i.mnt_ns, Some("mountpoints")),
    ("user", |i| i.user_ns, Some("userns")),
    ("cgroup", |i| i.cgroup_ns, None),
    ("time", |i| i.time_ns, Some("timens")),
];

impl ImageDir {
    /// The root task's ids. (The inventory's `root_ids` are CRIU's own,
    /// the namespaces the tree was dumped from.)
    pub(super) fn root_ids(&self) -> Result<Option<NamespaceIds>> {
        let tree = self.process_tree()?;
        match tree.first().and_then(|p| p.ids) {
            Some(ids) => Ok(Some(ids)),
            None => Ok(self.inventory()?.root_ids),
        }
    }

    /// Mounts of the root task's mount namespace; empty when CRIU did not
    /// dump it (the tree shared the host's mount namespace).
    pub fn mounts(&self) -> Result<Vec<Mount>> {
        let Some(id) = self.root_ids()?.and_then(|i| i.mnt_ns) else {
            return Ok(Vec::new());
        };
        let path = self.file(&format!("mountpoints-{id}.img"));
        let Some(entries) = missing_ok(read_all::<Mnt_entry>(&path, MNTS_MAGIC, "mount entry"))?
        else {
            return Ok(Vec::new());
        };
        // CRIU calls a root on a filesystem it cannot restore (ext4, xfs,
        // ...) `unsupported`; the dumping side recorded its real type.
        let root_fs = super::root_fs::read(&self.path);
        Ok(entries
            .iter()
            .map(|m| Mount {
                id: m.mnt_id(),
                parent_id: m.parent_mnt_id(),
                mountpoint: m.mountpoint().to_string(),
                fstype: m
                    .fsname
                    .clone()
                    .filter(|s| !s.is_empty())
                    .or_else(|| {
                        root_fs
                            .as_ref()
                            .filter(|_| m.mountpoint() == "/" && m.fstype() == 0)
                            .map(|r| r.fstype.clone())
                    })
                    .unwrap_or_else(|| fstype_name(m.fstype()).to_string()),
                source: m.source().to_string(),
                root: m.root().to_string(),
                options: m.options().to_string(),
                external: if m.ext_mount() {
                    Some(m.ext_key.clone().unwrap_or_default())
                } else {
                    None
                },
            })
            .collect())
    }

    /// The root task's namespaces and which of them are in the images.
    pub fn namespaces(&self) -> Result<Namespaces> {
        let mut out = Namespaces::default();
        let Some(ids) = self.root_ids()? else {
            return Ok(out);
        };
        for (kind, id_of, image) in NAMESPACE_IMAGES {
            let Some(id) = id_of(&ids) else { continue };
            out.namespaces.push(Namespace {
                kind,
                id,
                dumped: image
                    .is_some_and(|prefix| self.file(&format!("{prefix}-{id}.img")).exists()),
            });
        }
        if let Some(id) = ids.uts_ns {
            let path = self.file(&format!("utsns-{id}.img"));
            if let Some(u) = missing_ok(read_one::<Utsns_entry>(&path, UTSNS_MAGIC, "utsns entry"))?
            {
                out.hostname = Some(u.nodename().to_string());
                out.domainname = Some(u.domainname().to_string());
            }
        }
        Ok(out)
    }
}
