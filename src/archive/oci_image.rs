//! Checkpoints as OCI images: an image layout (`oci:DIR[:TAG]`) or the same
//! layout in one tar (`oci-archive:FILE[:TAG]`), as skopeo and podman name
//! these transports.
//!
//! The image has one gzip layer whose uncompressed tar is a checkpoint
//! archive (ferry's layout, see [`super`]; podman's `--create-image` layer
//! is podman's export layout the same way). Its manifest and its entry in
//! `index.json` carry the annotations podman's `container checkpoint
//! --create-image` and checkpointctl's `build` write, so podman and CRI-O
//! see a checkpoint image.
//!
//! Writing computes digests while streaming, builds the layout in a hidden
//! directory beside the target and renames it (or the tar made of it) into
//! place: a failure leaves nothing. Reading treats the image as hostile:
//! an `oci-archive` is unpacked with only the layout's own names allowed;
//! `oci-layout`, `index.json`, the manifest and the config are bounded and
//! parsed; every blob is found by a digest checked for shape (so it names a
//! file under `blobs/sha256/`) and its size and SHA-256 are verified before
//! the layer is unpacked through the archive import and its guards.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The name an image in a layout is found by.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const LAYOUT_FILE: &str = "oci-layout";
pub const INDEX_FILE: &str = "index.json";

/// Largest `oci-layout`, `index.json`, manifest or config read.
const MAX_JSON: u64 = 4 << 20;

/// Why an image could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0:?} is not an image reference ferry knows: use oci:DIR[:TAG] or oci-archive:FILE[:TAG]"
    )]
    BadReference(String),
    #[error("image tag {0:?} is invalid: use letters, digits and . _ - / : @ + (at most 255, not starting with a separator)")]
    BadTag(String),
    #[error("{} exists and is not an empty directory: an image layout is written to a new directory", .0.display())]
    DirExists(PathBuf),
    #[error("{} is a directory: oci-archive writes a file", .0.display())]
    IsDir(PathBuf),
    #[error("not an OCI image: {0}")]
    NotImage(String),
    #[error("OCI image entry {path:?} is rejected: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("OCI image {what} has media type {found:?}, expected {expected}")]
    MediaType {
        what: &'static str,
        found: String,
        expected: String,
    },
    #[error("OCI image blob {digest} is missing")]
    MissingBlob { digest: String },
    #[error("OCI image blob {digest} does not match its descriptor: {detail}")]
    DigestMismatch { digest: String, detail: String },
    #[error("OCI image {file} is invalid: {reason}")]
    BadJson { file: String, reason: String },
    #[error("OCI image holds {found} images and none is tagged {tag:?}")]
    NoSuchTag { tag: String, found: usize },
    #[error("OCI image holds {0} images: name one with :TAG")]
    Ambiguous(usize),
    #[error("OCI image has {0} layers: a checkpoint image has exactly one")]
    LayerCount(usize),
    #[error("OCI image exceeds the limit of {limit} {what}")]
    Limit { what: &'static str, limit: u64 },
    #[error(transparent)]
    Archive(#[from] super::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// How an image is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// An OCI image layout directory.
    Dir,
    /// An OCI image layout in one tar file.
    Archive,
}

/// `oci:DIR[:TAG]` or `oci-archive:FILE[:TAG]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub transport: Transport,
    pub path: PathBuf,
    pub tag: Option<String>,
}

impl std::str::FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<ImageRef> {
        let (transport, rest) = if let Some(r) = s.strip_prefix("oci-archive:") {
            (Transport::Archive, r)
        } else if let Some(r) = s.strip_prefix("oci:") {
            (Transport::Dir, r)
        } else {
            return Err(Error::BadReference(s.to_string()));
        };
        // As skopeo reads it: the path ends at the first ':'.
        let (path, tag) = match rest.split_once(':') {
            Some((p, t)) => (p, Some(t.to_string())),
            None => (rest, None),
        };
        if path.is_empty() {
            return Err(Error::BadReference(s.to_string()));
        }
        if let Some(t) = &tag {
            check_tag(t)?;
        }
        Ok(ImageRef {
            transport,
            path: PathBuf::from(path),
            tag,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = match self.transport {
            Transport::Dir => "oci",
            Transport::Archive => "oci-archive",
        };
        write!(f, "{t}:{}", self.path.display())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

fn check_tag(t: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "._-/:@+".contains(c);
    let first_ok = t.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if t.len() > 255 || !first_ok || !t.chars().all(ok_char) {
        return Err(Error::BadTag(t.to_string()));
    }
    Ok(())
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Index {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ImageConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    architecture: String,
    os: String,
    rootfs: RootFs,
}

#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

/// Architecture as OCI names it (Go's GOARCH) for this host.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn hex(bytes: impl AsRef<[u8]>) -> String {
    bytes.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Counts and hashes what passes through.
struct Hashing<T> {
    inner: T,
    hash: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Hashing<T> {
        Hashing {
            inner,
            hash: Sha256::new(),
            count: 0,
        }
    }
    fn digest(&self) -> String {
        format!("sha256:{}", hex(self.hash.clone().finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

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
    format!(".{}.{what}-", super::import::short_stem(&stem))
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
    layer: impl FnOnce(&mut dyn Write) -> super::Result<()>,
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

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))
}

fn build_layout(
    dir: &Path,
    tag: Option<&str>,
    spec: &ImageSpec,
    layer: impl FnOnce(&mut dyn Write) -> super::Result<()>,
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

/// `dir/blobs/sha256/HEX` for a digest of the right shape; anything else
/// (another algorithm, other characters, `../`) is refused.
fn blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            Error::NotImage(format!("digest {digest:?} is not sha256:<64 hex digits>"))
        })?;
    Ok(dir.join("blobs/sha256").join(hex))
}

/// Opens a blob of the layout in `dir` without following a symlink.
fn open_blob(dir: &Path, digest: &str) -> Result<File> {
    let path = blob_path(dir, digest)?;
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| match e.kind() {
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

fn read_small_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.kind() {
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
    _staging: Option<tempfile::TempDir>,
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

/// Opens and verifies the checkpoint image at `source`: for an oci-archive
/// the layout is first unpacked into a hidden directory in `scratch`.
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
            let t = tempfile::Builder::new()
                .prefix(".oci-image-")
                .tempdir_in(scratch)
                .map_err(io_err(format!("cannot write in {}", scratch.display())))?;
            let f = File::open(&source.path)
                .map_err(io_err(format!("cannot read {}", source.path.display())))?;
            unpack_layout(BufReader::with_capacity(1 << 20, f), t.path())?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let layout: Layout = parse(
        LAYOUT_FILE,
        &read_small_file(&dir.join(LAYOUT_FILE), LAYOUT_FILE)?,
    )?;
    if layout.version != "1.0.0" {
        return Err(Error::NotImage(format!(
            "image layout version {:?} (ferry reads 1.0.0)",
            layout.version
        )));
    }
    let index: Index = parse(
        INDEX_FILE,
        &read_small_file(&dir.join(INDEX_FILE), INDEX_FILE)?,
    )?;
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
    use super::space::SpaceBudget;
    let mut a = tar::Archive::new(super::tar_guard::TarGuard::new(input));
    let mut budget = SpaceBudget::of(dest)?;
    let mut seen = std::collections::HashSet::new();
    let mut n = 0u64;
    std::fs::create_dir_all(dest.join("blobs/sha256"))
        .map_err(io_err(format!("cannot create {}", dest.display())))?;
    let entries = a.entries().map_err(super::stream::stream_err)?;
    for entry in entries {
        let mut entry = entry.map_err(super::stream::stream_err)?;
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
        let copied = io::copy(&mut entry, &mut f).map_err(super::stream::stream_err)?;
        if copied != entry.size() {
            return Err(super::Error::Truncated(format!("{name} is cut short")).into());
        }
    }
    Ok(())
}

/// Creates `dest` from the image's layer: a ferry archive goes through
/// [`super::import_for`]; another engine's layout (podman's
/// `--create-image`) through [`super::import_engine`].
pub fn import_layer(
    v: &Verified,
    dest: &Path,
    limits: &super::Limits,
    host: &super::Host,
) -> Result<super::Imported> {
    let stream = v.layer_stream()?;
    Ok(super::import_any(stream, dest, limits, host)?)
}

/// Annotations of a checkpoint image, as podman's `--create-image` and
/// checkpointctl's `build` write them, from what ferry knows.
pub fn checkpoint_annotations(
    meta: &super::Metadata,
    name: &str,
    rootfs_image: Option<&str>,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    let image = rootfs_image.unwrap_or("");
    let cgroups = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2"
    } else {
        "v1"
    };
    let (dist, dist_version) = os_release();
    for (podman, criu, value) in [
        ("name", "container.name", name),
        ("rawImageName", "rawImageName", image),
        ("rootfsImageName", "rootfsImageName", image),
        (
            "criu.version",
            "criu.version",
            &criu_number(&meta.criu_version),
        ),
        ("runtime.name", "runtime.name", "ferry"),
        ("runtime.version", "runtime.version", &meta.ferry_version),
        ("host.arch", "host.arch", oci_arch()),
        ("host.kernel", "host.kernel", &meta.kernel),
        ("cgroups.version", "cgroup.version", cgroups),
        ("distribution.name", "distribution.name", &dist),
        (
            "distribution.version",
            "distribution.version",
            &dist_version,
        ),
    ] {
        a.insert(
            format!("io.podman.annotations.checkpoint.{podman}"),
            value.to_string(),
        );
        a.insert(format!("org.criu.checkpoint.{criu}"), value.to_string());
    }
    a.insert("org.criu.checkpoint.engine.name".into(), "ferry".into());
    a.insert(
        "org.criu.checkpoint.engine.version".into(),
        meta.ferry_version.clone(),
    );
    // CRI-O recognises a checkpoint image by this one.
    a.insert(
        "io.kubernetes.cri-o.annotations.checkpoint.name".into(),
        name.into(),
    );
    if let Some(t) = &Some(meta.checkpoint_time.clone()) {
        a.insert("org.opencontainers.image.created".into(), t.clone());
    }
    a
}

/// CRIU's version as podman writes it: major*10000 + minor*100 + sublevel.
fn criu_number(v: &str) -> String {
    let mut parts = v.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    (a * 10000 + b * 100 + c).to_string()
}

/// `ID` and `VERSION_ID` of /etc/os-release.
fn os_release() -> (String, String) {
    let text = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default()
    };
    (get("ID"), get("VERSION_ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_skopeo_and_others_are_refused() {
        let r: ImageRef = "oci:/tmp/x:v1".parse().unwrap();
        assert_eq!(r.transport, Transport::Dir);
        assert_eq!(r.path, Path::new("/tmp/x"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r: ImageRef = "oci-archive:a.tar".parse().unwrap();
        assert_eq!(r.transport, Transport::Archive);
        assert_eq!(r.tag, None);
        let r: ImageRef = "oci-archive:a.tar:localhost/ckpt:latest".parse().unwrap();
        assert_eq!(r.tag.as_deref(), Some("localhost/ckpt:latest"));
        for bad in [
            "docker://x",
            "x.tar",
            "oci:",
            "oci-archive::t",
            "oci:d:-x",
            "oci:d:a b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
        let e = "containers-storage:x"
            .parse::<ImageRef>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("oci:DIR[:TAG] or oci-archive:FILE[:TAG]"), "{e}");
    }

    #[test]
    fn digests_name_only_files_under_blobs() {
        let d = Path::new("/l");
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            blob_path(d, &good).unwrap(),
            d.join("blobs/sha256").join("a".repeat(64))
        );
        for bad in [
            "sha512:aa".to_string(),
            format!("sha256:../{}", "a".repeat(61)),
            format!("sha256:{}", "A".repeat(64)),
            "sha256:".into(),
        ] {
            assert!(blob_path(d, &bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn criu_version_as_podman_writes_it() {
        assert_eq!(criu_number("4.2.1"), "40201");
        assert_eq!(criu_number("3.17"), "31700");
    }
}
