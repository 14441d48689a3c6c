//! Writing a checkpoint image: the layout built in a hidden directory
//! beside the target, digests computed while the layer streams through,
//! then one rename (of the directory, or of the tar made of it).
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::*;

/// What to write besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// On the manifest and on its entry in `index.json`.
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339.
    pub created: Option<String>,
}

/// What an image write produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest_digest: String,
    pub layer: Descriptor,
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn hidden_name(p: &Path, what: &str) -> String {
    let stem = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    format!(".{}.{what}-", crate::archive::import::short_stem(&stem))
}

/// Refuses a target that cannot be written, before anything is dumped.
pub fn check_target(target: &ImageRef) -> Result<()> {
    match target.transport {
        Transport::Dir => match std::fs::symlink_metadata(&target.path) {
            Ok(m) => {
                let empty = m.is_dir()
                    && std::fs::read_dir(&target.path)
                        .map(|mut d| d.next().is_none())
                        .unwrap_or(false);
                if !empty {
                    return Err(Error::DirExists(target.path.clone()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("cannot use {}", target.path.display()))(e)),
        },
        Transport::Archive => {
            if target.path.is_dir() {
                return Err(Error::IsDir(target.path.clone()));
            }
        }
    }
    let parent = parent_of(&target.path);
    if !parent.is_dir() {
        return Err(Error::Io {
            context: format!("cannot write {target}"),
            source: io::Error::new(io::ErrorKind::NotFound, "its directory does not exist"),
        });
    }
    Ok(())
}

/// Writes an image to `target` whose layer is what `layer` writes (an
/// uncompressed tar). See the module docs for the guarantees.
pub fn write_image(
    target: &ImageRef,
    spec: &ImageSpec,
    layer: impl FnOnce(&mut dyn Write) -> crate::archive::Result<()>,
) -> Result<Written> {
    check_target(target)?;
    let parent = parent_of(&target.path);
    let staging = tempfile::Builder::new()
        .prefix(&hidden_name(&target.path, "oci"))
        .tempdir_in(&parent)
        .map_err(io_err(format!("cannot write in {}", parent.display())))?;
    let written = build_layout(staging.path(), target.tag.as_deref(), spec, layer)?;
    match target.transport {
        Transport::Dir => {
            let staged = staging.keep();
            if let Err(e) = std::fs::rename(&staged, &target.path) {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(io_err(format!(
                    "cannot move the image to {}",
                    target.path.display()
                ))(e));
            }
        }
        Transport::Archive => {
            let tmp = tempfile::Builder::new()
                .prefix(&hidden_name(&target.path, "tar"))
                .suffix(".tmp")
                .tempfile_in(&parent)
                .map_err(io_err(format!("cannot write in {}", parent.display())))?;
            tar_layout(staging.path(), tmp.as_file())?;
            tmp.as_file()
                .sync_all()
                .map_err(io_err(format!("cannot write {}", target.path.display())))?;
            tmp.persist(&target.path)
                .map_err(|e| io_err(format!("cannot write {}", target.path.display()))(e.error))?;
        }
    }
    if let Ok(d) = File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(written)
}

/// Writes `data` as a blob of `dir` and returns its descriptor.
fn put_blob(dir: &Path, media_type: &str, data: &[u8]) -> Result<Descriptor> {
    let digest = format!("sha256:{}", hex(Sha256::digest(data)));
    let path = blob_path(dir, &digest)?;
    let mut f = create_file(&path)?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))?;
    Ok(Descriptor {
        media_type: media_type.into(),
        digest,
        size: data.len() as u64,
        annotations: BTreeMap::new(),
    })
}

fn build_layout(
    dir: &Path,
    tag: Option<&str>,
    spec: &ImageSpec,
    layer: impl FnOnce(&mut dyn Write) -> crate::archive::Result<()>,
) -> Result<Written> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)
        .map_err(io_err(format!("cannot create {}", blobs.display())))?;
    // The layer: tar → (hash: diff ID) → gzip → (hash: digest) → file.
    let tmp = blobs.join(".layer");
    let file = create_file(&tmp)?;
    let compressed = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    let mut enc = Hashing::new(flate2::write::GzEncoder::new(
        compressed,
        flate2::Compression::fast(),
    ));
    layer(&mut enc)?;
    let diff_id = enc.digest();
    let compressed = enc
        .inner
        .finish()
        .map_err(io_err("cannot finish the layer's compression"))?;
    let digest = compressed.digest();
    let size = compressed.count;
    let file = compressed
        .inner
        .into_inner()
        .map_err(|e| io_err("cannot write the layer")(e.into_error()))?;
    file.sync_all().map_err(io_err("cannot write the layer"))?;
    std::fs::rename(&tmp, blob_path(dir, &digest)?).map_err(io_err("cannot write the layer"))?;
    let layer = Descriptor {
        media_type: LAYER_GZIP.into(),
        digest,
        size,
        annotations: BTreeMap::new(),
    };

    let config = ImageConfig {
        created: spec.created.clone(),
        architecture: oci_arch().into(),
        os: "linux".into(),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
    };
    let config = put_blob(dir, CONFIG_MEDIA_TYPE, &to_json(&config))?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.into()),
        config,
        layers: vec![layer.clone()],
        annotations: spec.annotations.clone(),
    };
    let mut mdesc = put_blob(dir, MANIFEST_MEDIA_TYPE, &to_json(&manifest))?;
    // podman reads the annotations from the manifest, CRI-O and
    // checkpointctl from the index entry too: both carry them.
    mdesc.annotations = spec.annotations.clone();
    if let Some(t) = tag {
        mdesc.annotations.insert(REF_NAME.into(), t.into());
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(INDEX_MEDIA_TYPE.into()),
        manifests: vec![mdesc.clone()],
    };
    write_small(&dir.join(INDEX_FILE), &to_json(&index))?;
    let layout = Layout {
        version: "1.0.0".into(),
    };
    write_small(&dir.join(LAYOUT_FILE), &to_json(&layout))?;
    Ok(Written {
        manifest_digest: mdesc.digest,
        layer,
    })
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("image JSON serializes")
}

fn write_small(path: &Path, data: &[u8]) -> Result<()> {
    let mut f = create_file(path)?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))
}

/// The layout in `dir` as one tar (sorted names: `blobs/`, `index.json`,
/// `oci-layout`), as podman's and skopeo's oci-archive holds it.
fn tar_layout(dir: &Path, out: &File) -> Result<()> {
    let ctx = || "cannot write the image archive".to_string();
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, out));
    b.mode(tar::HeaderMode::Deterministic);
    b.append_dir("blobs", dir.join("blobs"))
        .map_err(io_err(ctx()))?;
    b.append_dir("blobs/sha256", dir.join("blobs/sha256"))
        .map_err(io_err(ctx()))?;
    let mut blobs: Vec<String> = std::fs::read_dir(dir.join("blobs/sha256"))
        .map_err(io_err(ctx()))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<io::Result<_>>()
        .map_err(io_err(ctx()))?;
    blobs.sort();
    for name in blobs {
        let rel = format!("blobs/sha256/{name}");
        b.append_path_with_name(dir.join(&rel), &rel)
            .map_err(io_err(ctx()))?;
    }
    for name in [INDEX_FILE, LAYOUT_FILE] {
        b.append_path_with_name(dir.join(name), name)
            .map_err(io_err(ctx()))?;
    }
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(io_err(ctx()))
}
