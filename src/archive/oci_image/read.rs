//! Reading a checkpoint image as hostile input: only the layout's own
//! names, bounded JSON, blobs named by well-formed digests, sizes and
//! SHA-256 (and the layer's diff ID) verified before the layer is used.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;

/// Opens a blob of the layout in `dir` without following a symlink.
fn open_blob(dir: &Path, digest: &str) -> Result<File> {
    let path = blob_path(dir, digest)?;
    let rel = path.strip_prefix(dir).unwrap_or(&path);
    open_beneath(dir, rel).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::MissingBlob {
            digest: digest.into(),
        },
        _ => io_err(format!("cannot read blob {digest}"))(e),
    })
}

/// Reads a small JSON blob whole, checking its size and digest.
fn read_json_blob<T: serde::de::DeserializeOwned>(
    dir: &Path,
    d: &Descriptor,
    what: &str,
) -> Result<T> {
    if d.size > MAX_JSON {
        return Err(Error::Limit {
            what: "bytes in a manifest or config",
            limit: MAX_JSON,
        });
    }
    let mut bytes = Vec::new();
    open_blob(dir, &d.digest)?
        .take(d.size + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("cannot read blob {}", d.digest)))?;
    verify(
        d,
        bytes.len() as u64,
        &format!("sha256:{}", hex(Sha256::digest(&bytes))),
    )?;
    parse(what, &bytes)
}

fn verify(d: &Descriptor, size: u64, digest: &str) -> Result<()> {
    if size != d.size {
        return Err(Error::DigestMismatch {
            digest: d.digest.clone(),
            detail: format!("it holds {size} bytes, the descriptor says {}", d.size),
        });
    }
    if digest != d.digest {
        return Err(Error::DigestMismatch {
            digest: d.digest.clone(),
            detail: format!("its content hashes to {digest}"),
        });
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadJson {
        file: what.into(),
        reason: e.to_string(),
    })
}

/// Opens `rel` for reading beneath the layout `dir`, resolved by the
/// kernel: no symlink (a `blobs` that points elsewhere too), no other
/// mount, nothing outside `dir`.
fn open_beneath(dir: &Path, rel: &Path) -> io::Result<File> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let d = File::open(dir)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS
                | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = openat2(&d, rel, how).map_err(io::Error::from)?;
    let f = File::from(fd);
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(f)
}

fn read_small_file(dir: &Path, name: &str, what: &str) -> Result<Vec<u8>> {
    let f = open_beneath(dir, Path::new(name)).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NotImage(format!("{what} is missing")),
        _ => io_err(format!("cannot read {what}"))(e),
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(format!("cannot read {what}")))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(Error::Limit {
            what: "bytes in a manifest or config",
            limit: MAX_JSON,
        });
    }
    Ok(bytes)
}

fn expect_type(what: &'static str, found: &str, expected: &[&str]) -> Result<()> {
    if expected.contains(&found) {
        return Ok(());
    }
    Err(Error::MediaType {
        what,
        found: found.into(),
        expected: expected.join(" or "),
    })
}

/// A checkpoint image whose blobs were verified.
#[derive(Debug)]
pub struct Verified {
    /// The layout (for an oci-archive, where it was unpacked).
    dir: PathBuf,
    /// Removed on drop: an oci-archive's unpacked layout.
    _staging: Option<Scratch>,
    pub layer: Descriptor,
    /// The annotations of the manifest (the index entry's added where the
    /// manifest lacks them).
    pub annotations: BTreeMap<String, String>,
}

impl Verified {
    /// The layer as an uncompressed tar stream.
    pub fn layer_stream(&self) -> Result<Box<dyn Read + '_>> {
        let f = BufReader::with_capacity(1 << 20, open_blob(&self.dir, &self.layer.digest)?);
        Ok(match self.layer.media_type.as_str() {
            LAYER_GZIP => Box::new(flate2::read::GzDecoder::new(f)),
            LAYER_ZSTD => Box::new(
                zstd::stream::read::Decoder::new(f).map_err(io_err("cannot read the layer"))?,
            ),
            _ => Box::new(f),
        })
    }
}

/// The directory an oci-archive's layout is unpacked into, removed when
/// dropped. It is the caller's to name, so that what a killed process left
/// there can be found and removed later.
#[derive(Debug)]
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = crate::fs_remove::remove_tree(&self.0);
    }
}

/// Opens and verifies the checkpoint image at `source`: for an oci-archive
/// the layout is first unpacked into `scratch`, which must not exist (it
/// is created, and removed again with the returned [`Verified`]).
pub fn open_image(source: &ImageRef, scratch: &Path) -> Result<Verified> {
    let (dir, staging) = match source.transport {
        Transport::Dir => {
            if !source.path.is_dir() {
                return Err(Error::NotImage(format!(
                    "{} is not a directory (an oci-archive file is named oci-archive:FILE)",
                    source.path.display()
                )));
            }
            (source.path.clone(), None)
        }
        Transport::Archive => {
            let f = File::open(&source.path)
                .map_err(io_err(format!("cannot read {}", source.path.display())))?;
            std::fs::create_dir(scratch)
                .map_err(io_err(format!("cannot create {}", scratch.display())))?;
            let t = Scratch(scratch.to_path_buf());
            unpack_layout(BufReader::with_capacity(1 << 20, f), &t.0)?;
            (t.0.clone(), Some(t))
        }
    };
    let layout: Layout = parse(
        LAYOUT_FILE,
        &read_small_file(&dir, LAYOUT_FILE, LAYOUT_FILE)?,
    )?;
    if layout.version != "1.0.0" {
        return Err(Error::NotImage(format!(
            "image layout version {:?} (ferry reads 1.0.0)",
            layout.version
        )));
    }
    let index: Index = parse(INDEX_FILE, &read_small_file(&dir, INDEX_FILE, INDEX_FILE)?)?;
    if index.schema_version != 2 {
        return Err(Error::NotImage(format!(
            "{INDEX_FILE} has schemaVersion {}",
            index.schema_version
        )));
    }
    let entry = pick(&index.manifests, source.tag.as_deref())?;
    expect_type("manifest", &entry.media_type, &[MANIFEST_MEDIA_TYPE])?;
    let manifest: Manifest = read_json_blob(&dir, entry, "manifest")?;
    if let Some(t) = &manifest.media_type {
        expect_type("manifest", t, &[MANIFEST_MEDIA_TYPE])?;
    }
    expect_type("config", &manifest.config.media_type, &[CONFIG_MEDIA_TYPE])?;
    let config: ImageConfig = read_json_blob(&dir, &manifest.config, "config")?;
    if manifest.layers.len() != 1 || config.rootfs.diff_ids.len() != 1 {
        return Err(Error::LayerCount(manifest.layers.len()));
    }
    let layer = manifest.layers[0].clone();
    expect_type(
        "layer",
        &layer.media_type,
        &[LAYER_GZIP, LAYER_ZSTD, LAYER_TAR],
    )?;
    let mut annotations = entry.annotations.clone();
    annotations.extend(manifest.annotations.clone());
    let v = Verified {
        dir,
        _staging: staging,
        layer,
        annotations,
    };
    verify_layer(&v, &config.rootfs.diff_ids[0])?;
    Ok(v)
}

/// The manifest named `tag`, or the only one.
fn pick<'a>(manifests: &'a [Descriptor], tag: Option<&str>) -> Result<&'a Descriptor> {
    match tag {
        Some(t) => manifests
            .iter()
            .find(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t))
            .ok_or(Error::NoSuchTag {
                tag: t.into(),
                found: manifests.len(),
            }),
        None => match manifests {
            [one] => Ok(one),
            [] => Err(Error::NotImage(format!("{INDEX_FILE} lists no image"))),
            more => Err(Error::Ambiguous(more.len())),
        },
    }
}

/// Hashes the layer blob (its size and digest) and its uncompressed
/// content (the config's diff ID) in one pass.
fn verify_layer(v: &Verified, diff_id: &str) -> Result<()> {
    let f = open_blob(&v.dir, &v.layer.digest)?;
    let len = f.metadata().map_err(io_err("cannot read the layer"))?.len();
    if len != v.layer.size {
        return Err(Error::DigestMismatch {
            digest: v.layer.digest.clone(),
            detail: format!("it holds {len} bytes, the descriptor says {}", v.layer.size),
        });
    }
    let mut raw = Hashing::new(BufReader::with_capacity(1 << 20, f.take(v.layer.size)));
    let copied = {
        let mut plain: Box<dyn Read> = match v.layer.media_type.as_str() {
            LAYER_GZIP => Box::new(flate2::read::GzDecoder::new(&mut raw)),
            LAYER_ZSTD => Box::new(
                zstd::stream::read::Decoder::new(&mut raw)
                    .map_err(io_err("cannot read the layer"))?,
            ),
            _ => Box::new(&mut raw),
        };
        let mut h = Hashing::new(&mut plain);
        let r = io::copy(&mut h, &mut io::sink());
        r.map(|_| h.digest())
    };
    // A wrong digest is what matters most; say it before a decoding error.
    io::copy(&mut raw, &mut io::sink()).map_err(io_err("cannot read the layer"))?;
    verify(&v.layer, raw.count, &raw.digest())?;
    let plain = copied.map_err(|e| Error::DigestMismatch {
        digest: v.layer.digest.clone(),
        detail: format!("it does not decompress: {e}"),
    })?;
    if plain != diff_id {
        return Err(Error::DigestMismatch {
            digest: v.layer.digest.clone(),
            detail: format!(
                "its uncompressed content hashes to {plain}, the config's diff ID is {diff_id}"
            ),
        });
    }
    Ok(())
}

/// Most entries an oci-archive may hold: the layout files and a few blobs.
const MAX_LAYOUT_ENTRIES: u64 = 64;

/// Unpacks an oci-archive's layout into `dest`: only `oci-layout`,
/// `index.json`, `blobs/`, `blobs/sha256/` and `blobs/sha256/<64 hex>`
/// as regular files and directories, each once, within the free space.
fn unpack_layout(input: impl Read, dest: &Path) -> Result<()> {
    use crate::archive::space::SpaceBudget;
    let mut a = tar::Archive::new(crate::archive::tar_guard::TarGuard::new(input));
    let mut budget = SpaceBudget::of(dest)?;
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    std::fs::create_dir_all(dest.join("blobs/sha256"))
        .map_err(io_err(format!("cannot create {}", dest.display())))?;
    let entries = a.entries().map_err(crate::archive::stream::stream_err)?;
    for entry in entries {
        let mut entry = entry.map_err(crate::archive::stream::stream_err)?;
        n += 1;
        if n > MAX_LAYOUT_ENTRIES {
            return Err(Error::Limit {
                what: "entries in an oci-archive",
                limit: MAX_LAYOUT_ENTRIES,
            });
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let norm = name
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        let reject = |reason: &str| Error::UnsafeEntry {
            path: name.clone(),
            reason: reason.into(),
        };
        let kind = entry.header().entry_type();
        let is_blob = norm
            .strip_prefix("blobs/sha256/")
            .is_some_and(|h| blob_path(dest, &format!("sha256:{h}")).is_ok());
        match (kind, norm.as_str()) {
            (tar::EntryType::XGlobalHeader, _) => continue,
            (tar::EntryType::Directory, "" | "blobs" | "blobs/sha256") => continue,
            (tar::EntryType::Regular | tar::EntryType::Continuous, LAYOUT_FILE | INDEX_FILE) => {}
            (tar::EntryType::Regular | tar::EntryType::Continuous, _) if is_blob => {}
            (
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory,
                _,
            ) => return Err(reject(
                "an OCI image layout holds only oci-layout, index.json and blobs/sha256/<digest>",
            )),
            _ => return Err(reject("only regular files and directories are allowed")),
        }
        if !seen.insert(norm.clone()) {
            return Err(reject("it appears twice"));
        }
        budget.charge(entry.size())?;
        let target = dest.join(&norm);
        let mut f = create_file(&target)?;
        let copied = io::copy(&mut entry, &mut f).map_err(crate::archive::stream::stream_err)?;
        if copied != entry.size() {
            return Err(crate::archive::Error::Truncated(format!("{name} is cut short")).into());
        }
    }
    Ok(())
}

/// Creates `dest` from the image's layer through
/// [`crate::archive::import_any`]: ferry's archive with all its checks, or
/// another engine's layout (podman's `--create-image`).
pub fn import_layer(
    v: &Verified,
    dest: &Path,
    limits: &crate::archive::Limits,
    host: &crate::archive::Host,
) -> Result<crate::archive::Imported> {
    let stream = v.layer_stream()?;
    Ok(crate::archive::import_any(stream, dest, limits, host)?)
}
