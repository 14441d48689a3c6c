//! A process's open files and its root and working directory.
use std::collections::HashMap;

use super::describe::{self, FileKind};
use super::{missing_ok, ImageDir, OpenFile, Process, ProcessPaths};
use crate::criu::image::*;
use crate::proto::files::{Fdinfo_entry, File_entry};
use crate::proto::task::Fs_entry;

impl ImageDir {
    /// files.img, by id.
    pub(super) fn files(&self) -> Result<HashMap<u32, File_entry>> {
        let path = self.file("files.img");
        let Some(mut r) = missing_ok(EntryReader::open(&path, FILES_MAGIC))? else {
            return Ok(HashMap::new());
        };
        let mut map = HashMap::new();
        while let Some(e) = r.next::<File_entry>("file entry")? {
            map.insert(e.id(), e);
        }
        Ok(map)
    }

    pub(super) fn describe_id(&self, files: &HashMap<u32, File_entry>, id: u32) -> Option<String> {
        files.get(&id).map(|f| describe::describe(f).1)
    }

    /// Process `pid`'s open descriptors, sorted by number.
    pub fn open_files(&self, pid: u32) -> Result<Vec<OpenFile>> {
        let p = self.process(pid)?;
        let files = self.files()?;
        self.open_files_with(&p, &files)
    }

    pub(super) fn open_files_with(
        &self,
        p: &Process,
        files: &HashMap<u32, File_entry>,
    ) -> Result<Vec<OpenFile>> {
        if !p.state.has_memory() {
            return Ok(Vec::new());
        }
        let Some(ids) = p.ids else {
            return Ok(Vec::new());
        };
        let path = self.file(&format!("fdinfo-{}.img", ids.files));
        let Some(entries) = missing_ok(read_all::<Fdinfo_entry>(
            &path,
            FDINFO_MAGIC,
            "fdinfo entry",
        ))?
        else {
            return Ok(Vec::new());
        };
        let outside = self.outside_files();
        let mut out: Vec<OpenFile> = entries
            .iter()
            .map(|fd| {
                let (kind, description) = match files.get(&fd.id()) {
                    Some(f) => {
                        let (kind, d) = describe::describe(f);
                        match outside.get(&d) {
                            Some(path) => (kind, format!("{path} (outside the container: {d})")),
                            None => (kind, d),
                        }
                    }
                    None => (
                        FileKind::from_type(fd.type_()),
                        format!("(no entry {} in files.img)", fd.id()),
                    ),
                };
                OpenFile {
                    fd: fd.fd(),
                    kind,
                    description,
                }
            })
            .collect();
        out.sort_by_key(|f| f.fd);
        Ok(out)
    }

    /// Files CRIU could only mark external (`file[MNT:INO]`: the init's stdio
    /// open on a host file such as the caller's /dev/null), by key, with the
    /// path the checkpointing side recorded for them. Empty for images of
    /// other tools, or when the records are damaged: they only label.
    fn outside_files(&self) -> HashMap<String, String> {
        let (Ok(keys), Ok(paths)) = (
            crate::container::read_stdio_files(&self.path),
            crate::container::read_descriptors(&self.path),
        ) else {
            return HashMap::new();
        };
        keys.into_iter()
            .filter_map(|(fd, key)| {
                let path = paths.get(usize::try_from(fd).ok()?)?;
                (!path.chars().any(char::is_control)).then(|| (key, path.clone()))
            })
            .collect()
    }

    /// The executable, working and root directories of process `pid`.
    pub fn paths(&self, pid: u32) -> Result<ProcessPaths> {
        let files = self.files()?;
        self.paths_with(pid, &files)
    }

    pub(super) fn paths_with(
        &self,
        pid: u32,
        files: &HashMap<u32, File_entry>,
    ) -> Result<ProcessPaths> {
        let mut out = ProcessPaths::default();
        if let Some(mm) = missing_ok(self.mm(pid))? {
            out.exe = self.describe_id(files, mm.exe_file_id());
        }
        let fs_path = self.file(&format!("fs-{pid}.img"));
        if let Some(fs) = missing_ok(read_one::<Fs_entry>(&fs_path, FS_MAGIC, "fs entry"))? {
            out.cwd = self.describe_id(files, fs.cwd_id());
            out.root = self.describe_id(files, fs.root_id());
        }
        Ok(out)
    }
}
