//! Checkpoints as OCI images: an image layout (`oci:DIR[:TAG]`) or the same
//! layout in one tar (`oci-archive:FILE[:TAG]`), as skopeo and podman name
//! these transports.
//!
//! The image has one gzip layer whose uncompressed tar is a checkpoint
//! archive (ferry's layout, see [`crate::archive`]; podman's `--create-image` layer
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
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod annotations;
mod read;
mod write;

pub use annotations::checkpoint_annotations;
pub use read::{import_layer, open_image, Verified};
pub use write::{check_target, write_image, ImageSpec, Written};

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

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))
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

    /// A layer that is a tar holding one file.
    fn small_layer(w: &mut dyn Write) -> crate::archive::Result<()> {
        let mut b = tar::Builder::new(w);
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        b.append_data(&mut h, "hello", &b"world"[..])
            .map_err(crate::archive::Error::io("test layer"))?;
        b.finish().map_err(crate::archive::Error::io("test layer"))
    }

    fn spec() -> ImageSpec {
        let mut annotations = BTreeMap::new();
        annotations.insert("io.podman.annotations.checkpoint.name".into(), "c".into());
        ImageSpec {
            annotations,
            created: None,
        }
    }

    #[test]
    fn both_transports_round_trip_and_verify() {
        let d = tempfile::tempdir().unwrap();
        for r in [
            format!("oci:{}/dir:v1", d.path().display()),
            format!("oci-archive:{}/img.tar:v1", d.path().display()),
        ] {
            let r: ImageRef = r.parse().unwrap();
            let w = write_image(&r, &spec(), small_layer).unwrap();
            let v = open_image(&r, &d.path().join(".scratch")).unwrap();
            assert_eq!(v.layer, w.layer);
            assert_eq!(v.annotations["io.podman.annotations.checkpoint.name"], "c");
            assert_eq!(v.annotations[REF_NAME], "v1");
            let mut a = tar::Archive::new(v.layer_stream().unwrap());
            let mut e = a.entries().unwrap().next().unwrap().unwrap();
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            assert_eq!(text, "world");
            drop(e);
            drop(a);
            drop(v);
            // Another tag is not there.
            let other = ImageRef {
                tag: Some("v2".into()),
                ..r.clone()
            };
            let err = open_image(&other, &d.path().join(".scratch"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("none is tagged \"v2\""), "{err}");
        }
        let mut names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["dir", "img.tar"], "nothing hidden is left");
    }

    #[test]
    fn blobs_reached_through_a_symlink_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let r: ImageRef = format!("oci:{}/dir", d.path().display()).parse().unwrap();
        write_image(&r, &spec(), small_layer).unwrap();
        let dir = d.path().join("dir");
        std::fs::rename(dir.join("blobs"), d.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(d.path().join("elsewhere"), dir.join("blobs")).unwrap();
        let err = open_image(&r, &d.path().join(".scratch"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read blob"), "{err}");
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        for r in [
            format!("oci:{}/dir", d.path().display()),
            format!("oci-archive:{}/img.tar", d.path().display()),
        ] {
            let r: ImageRef = r.parse().unwrap();
            let err = write_image(&r, &spec(), |w| {
                small_layer(w)?;
                Err(crate::archive::Error::Missing("the rest".into()))
            })
            .unwrap_err();
            assert!(err.to_string().contains("the rest"), "{err}");
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn criu_version_as_podman_writes_it() {
        assert_eq!(annotations::criu_number("4.2.1"), "40201");
        assert_eq!(annotations::criu_number("3.17"), "31700");
    }
}
