//! Loading and checking a bundle's `config.json` (OCI runtime spec).
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, PosixRlimitType, Spec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle {0}: no such directory")]
    NoBundle(PathBuf),
    #[error("{0}: no config.json in the bundle")]
    NoConfig(PathBuf),
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {max} bytes; a config.json is a few kilobytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path}: malformed JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config.json: {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("config.json: {field} is not supported by ferry: {reason}")]
    Unsupported { field: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

fn invalid(field: &str, reason: impl Into<String>) -> Error {
    Error::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn unsupported(field: &str, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Whether `linux.namespaces` lists a namespace of `typ`, made for the
/// container or joined by path.
pub fn has_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    namespaces_of(spec).any(|n| n.typ() == typ)
}

/// Whether the container gets a new namespace of `typ` (listed, no path).
pub fn has_own_namespace(spec: &Spec, typ: LinuxNamespaceType) -> bool {
    namespaces_of(spec).any(|n| n.typ() == typ && n.path().is_none())
}

fn namespaces_of(spec: &Spec) -> impl Iterator<Item = &oci_spec::runtime::LinuxNamespace> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .into_iter()
        .flatten()
}

/// Largest `config.json` read (the limit an imported archive puts on its
/// `spec.dump`, too).
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads and parses `<bundle>/config.json`; JSON errors carry line and column.
pub fn load(bundle: &Path) -> Result<Spec> {
    if !bundle.is_dir() {
        return Err(Error::NoBundle(bundle.to_path_buf()));
    }
    let path = bundle.join("config.json");
    if !path.exists() {
        return Err(Error::NoConfig(bundle.to_path_buf()));
    }
    let read_err = |source| Error::Read {
        path: path.clone(),
        source,
    };
    let f = std::fs::File::open(&path).map_err(read_err)?;
    // The size first, so a huge file is refused without reading it.
    let size = f.metadata().map_err(read_err)?.len();
    let mut text = String::new();
    if size <= MAX_CONFIG_BYTES {
        f.take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
    }
    if size > MAX_CONFIG_BYTES || text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::TooLarge {
            path,
            max: MAX_CONFIG_BYTES,
        });
    }
    serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
}

/// Where `root.path` points, relative to `bundle`; the directory need not
/// exist yet.
pub fn rootfs_path(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| invalid("root", "missing (set root.path to the rootfs directory)"))?;
    Ok(if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    })
}

/// The rootfs directory, resolved against the bundle.
pub fn rootfs(spec: &Spec, bundle: &Path) -> Result<PathBuf> {
    let path = rootfs_path(spec, bundle)?;
    if !path.is_dir() {
        return Err(invalid(
            "root.path",
            format!("{} is not a directory", path.display()),
        ));
    }
    Ok(path)
}

/// Refuses configurations ferry cannot honour, before anything is created.
/// Every field ferry does not implement is reported rather than ignored.
pub fn validate(spec: &Spec, bundle: &Path) -> Result<()> {
    rootfs(spec, bundle)?;
    validate_config(spec)
}

/// [`validate`] but for the rootfs, which may not be in place yet.
pub fn validate_config(spec: &Spec) -> Result<()> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("process", "missing (the container needs a process to run)"))?;
    validate_process(process)?;
    crate::rootfs::check_mount_options(spec)
        .map_err(|(i, e)| invalid(&format!("mounts[{i}].options"), e.to_string()))?;
    if let Some(linux) = spec.linux() {
        validate_linux(spec, linux)?;
    }
    for m in spec.mounts().iter().flatten() {
        if !m.destination().is_absolute() {
            return Err(invalid(
                "mounts",
                format!(
                    "destination {} is not an absolute path",
                    m.destination().display()
                ),
            ));
        }
    }
    Ok(())
}

/// `process`: something to run, in an absolute cwd, with what ferry applies.
fn validate_process(process: &oci_spec::runtime::Process) -> Result<()> {
    match process.args() {
        Some(args) if !args.is_empty() => {}
        _ => return Err(invalid("process.args", "empty (name the program to run)")),
    }
    if let Some((field, value)) = nul_in_process(process) {
        return Err(invalid(
            &field,
            format!("{value:?} contains a NUL byte, which no program argument, variable or path can hold"),
        ));
    }
    if !process.cwd().is_absolute() {
        return Err(invalid(
            "process.cwd",
            format!("{} is not an absolute path", process.cwd().display()),
        ));
    }
    if process.apparmor_profile().is_some() {
        return Err(unsupported(
            "process.apparmorProfile",
            "AppArmor profiles are not applied; remove the field",
        ));
    }
    if process.selinux_label().is_some() {
        return Err(unsupported(
            "process.selinuxLabel",
            "SELinux labels are not applied; remove the field",
        ));
    }
    for rl in process.rlimits().iter().flatten() {
        check_rlimit(rl.typ(), rl.soft(), rl.hard())?;
    }
    Ok(())
}

/// `linux`: seccomp, namespaces, id mappings, sysctls and the cgroups path.
fn validate_linux(spec: &Spec, linux: &oci_spec::runtime::Linux) -> Result<()> {
    if let Some(s) = linux.seccomp() {
        crate::seccomp::build(s).map_err(|e| unsupported("linux.seccomp", e))?;
    }
    if linux.intel_rdt().is_some() {
        return Err(unsupported("linux.intelRdt", "Intel RDT is not managed"));
    }
    if linux.personality().is_some() {
        return Err(unsupported(
            "linux.personality",
            "execution domains are not set",
        ));
    }
    let namespaces = linux.namespaces().clone().unwrap_or_default();
    validate_namespaces(&namespaces)?;
    let user_ns = namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none());
    let has_maps = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if has_maps && !user_ns {
        return Err(invalid(
            "linux.uidMappings",
            "mappings need a new user namespace in linux.namespaces",
        ));
    }
    if user_ns && !has_maps {
        return Err(invalid(
            "linux.namespaces",
            "a new user namespace needs linux.uidMappings and linux.gidMappings",
        ));
    }
    crate::sysctl::validate(spec).map_err(|e| invalid("linux.sysctl", e))?;
    if let Some(path) = linux.cgroups_path() {
        if path
            .components()
            .any(|c| c == std::path::Component::ParentDir)
        {
            return Err(invalid("linux.cgroupsPath", "must not contain '..'"));
        }
    }
    Ok(())
}

/// Each namespace once, none ferry cannot make, and joined ones existing.
fn validate_namespaces(namespaces: &[oci_spec::runtime::LinuxNamespace]) -> Result<()> {
    let mut seen = Vec::new();
    for ns in namespaces {
        if seen.contains(&ns.typ()) {
            return Err(invalid(
                "linux.namespaces",
                format!("{:?} namespace listed twice", ns.typ()),
            ));
        }
        seen.push(ns.typ());
        if ns.typ() == LinuxNamespaceType::Time {
            return Err(unsupported("linux.namespaces", "time namespaces"));
        }
        if let Some(path) = ns.path() {
            if !path.exists() {
                return Err(invalid(
                    "linux.namespaces",
                    format!(
                        "{:?} namespace path {} does not exist",
                        ns.typ(),
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The first argument, environment entry or cwd of `p` holding a NUL byte
/// (JSON allows "\u0000"; exec cannot pass it), as (field, value).
pub fn nul_in_process(p: &oci_spec::runtime::Process) -> Option<(String, String)> {
    let args = p.args().clone().unwrap_or_default();
    if let Some((i, a)) = args.iter().enumerate().find(|(_, a)| a.contains('\0')) {
        return Some((format!("process.args[{i}]"), a.clone()));
    }
    let env = p.env().clone().unwrap_or_default();
    if let Some((i, e)) = env.iter().enumerate().find(|(_, e)| e.contains('\0')) {
        return Some((format!("process.env[{i}]"), e.clone()));
    }
    let cwd = p.cwd().to_string_lossy();
    cwd.contains('\0')
        .then(|| ("process.cwd".to_string(), cwd.into_owned()))
}

/// This host may forbid raising limits (no CAP_SYS_RESOURCE): refuse up front
/// instead of failing inside the container.
fn check_rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> Result<()> {
    let name = format!("{typ:?}")
        .to_uppercase()
        .replace("RLIMIT", "RLIMIT_");
    if soft > hard {
        return Err(invalid(
            "process.rlimits",
            format!("{name}: soft limit {soft} is above hard limit {hard}"),
        ));
    }
    let resource = rlimit_resource(typ);
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(resource as _, &mut cur) } != 0 {
        return Ok(());
    }
    let have_cap = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_RESOURCE,
    )
    .unwrap_or(false);
    if hard > cur.rlim_max && !have_cap {
        return Err(invalid(
            "process.rlimits",
            format!(
                "{name}: hard limit {hard} is above this host's hard limit {} and ferry may not raise it (no CAP_SYS_RESOURCE); lower it to at most {}",
                cur.rlim_max, cur.rlim_max
            ),
        ));
    }
    Ok(())
}

pub fn rlimit_resource(typ: PosixRlimitType) -> libc::c_int {
    use PosixRlimitType::*;
    (match typ {
        RlimitCpu => libc::RLIMIT_CPU,
        RlimitFsize => libc::RLIMIT_FSIZE,
        RlimitData => libc::RLIMIT_DATA,
        RlimitStack => libc::RLIMIT_STACK,
        RlimitCore => libc::RLIMIT_CORE,
        RlimitRss => libc::RLIMIT_RSS,
        RlimitNproc => libc::RLIMIT_NPROC,
        RlimitNofile => libc::RLIMIT_NOFILE,
        RlimitMemlock => libc::RLIMIT_MEMLOCK,
        RlimitAs => libc::RLIMIT_AS,
        RlimitLocks => libc::RLIMIT_LOCKS,
        RlimitSigpending => libc::RLIMIT_SIGPENDING,
        RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        RlimitNice => libc::RLIMIT_NICE,
        RlimitRtprio => libc::RLIMIT_RTPRIO,
        RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// The default configuration written by `ferry spec` (like `runc spec`).
/// The config.json `ferry spec` writes: byte for byte what `runc spec`
/// (1.1.5) writes but for the hostname, so a caller that starts from runc's
/// default and edits it gets the same container. Its ambient capabilities
/// are not inheritable, so the kernel refuses to raise them: as with runc,
/// the container starts with a warning naming each.
pub const DEFAULT_CONFIG: &str = include_str!("default_config.json");

pub fn default_spec() -> Spec {
    serde_json::from_str(DEFAULT_CONFIG).expect("the default config parses")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let dir = bundle_with("{\n  \"ociVersion\": \"1.0.2\",\n  oops\n}");
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 3 column 3"), "{err}");
        assert!(err.contains("malformed JSON"), "{err}");
    }

    #[test]
    fn missing_bundle_and_config() {
        let err = load(Path::new("/nonexistent/bundle")).unwrap_err();
        assert!(matches!(err, Error::NoBundle(_)));
        let dir = tempfile::tempdir().unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::NoConfig(_)), "{err}");
    }

    #[test]
    fn default_spec_validates() {
        let spec = default_spec();
        let dir = bundle_with(&serde_json::to_string(&spec).unwrap());
        let spec = load(dir.path()).unwrap();
        validate(&spec, dir.path()).unwrap();
    }

    #[test]
    fn rejects_unsupported_and_invalid_fields() {
        let mut v = serde_json::to_value(default_spec()).unwrap();
        v["linux"]["seccomp"] = serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"});
        let dir = bundle_with(&v.to_string());
        let err = validate(&load(dir.path()).unwrap(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("linux.seccomp"), "{err}");

        let mut v = serde_json::to_value(default_spec()).unwrap();
        v["process"]["args"] = serde_json::json!([]);
        let dir = bundle_with(&v.to_string());
        let err = validate(&load(dir.path()).unwrap(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("process.args"), "{err}");

        let mut v = serde_json::to_value(default_spec()).unwrap();
        v["root"]["path"] = serde_json::json!("missing-rootfs");
        let dir = bundle_with(&v.to_string());
        let err = validate(&load(dir.path()).unwrap(), dir.path()).unwrap_err();
        assert!(err.to_string().contains("root.path"), "{err}");
    }

    #[test]
    fn rlimit_above_host_hard_limit_is_refused() {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur) };
        let have_cap = caps::has_cap(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_RESOURCE,
        )
        .unwrap();
        if have_cap || cur.rlim_max == libc::RLIM_INFINITY {
            eprintln!("skipped: this process may raise RLIMIT_NOFILE (CAP_SYS_RESOURCE present)");
            return;
        }
        let err = check_rlimit(PosixRlimitType::RlimitNofile, 1024, cur.rlim_max + 1).unwrap_err();
        assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
        check_rlimit(PosixRlimitType::RlimitNofile, 1024, cur.rlim_max).unwrap();
    }
}

#[cfg(test)]
mod prop_tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn bundle_with(config: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        dir
    }

    /// Strings a hostile config.json would put where paths and names go.
    fn weird_string() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just("../../..".to_string()),
            Just("/".to_string()),
            Just("".to_string()),
            Just("a\0b".to_string()),
            Just("/proc/self/ns/net".to_string()),
            Just("x".repeat(70_000)),
            Just("a/".repeat(3000)),
            "\\PC{0,40}",
        ]
    }

    fn hostile_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            Just(Value::from(u64::MAX)),
            Just(Value::from(-1)),
            any::<f64>().prop_map(Value::from),
            weird_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(weird_string(), inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Replaces the node reached by following `steps` (indices into the
    /// objects and arrays on the way) with `new`.
    fn replace_at(v: &mut Value, steps: &[prop::sample::Index], new: Value) {
        let Some((s, rest)) = steps.split_first() else {
            *v = new;
            return;
        };
        match v {
            Value::Object(m) if !m.is_empty() => {
                let k = m.keys().nth(s.index(m.len())).unwrap().clone();
                replace_at(m.get_mut(&k).unwrap(), rest, new);
            }
            Value::Array(a) if !a.is_empty() => {
                let i = s.index(a.len());
                replace_at(&mut a[i], rest, new);
            }
            _ => *v = new,
        }
    }

    /// What create checks before it forks, on a loaded config.
    fn pre_fork_checks(dir: &Path) {
        let Ok(spec) = load(dir) else { return };
        if validate(&spec, dir).is_err() {
            return;
        }
        let _ = rootfs(&spec, dir);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let _ = crate::network::VethConfig::from_annotations(&annotations);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let dir = bundle_with(&bytes);
            pre_fork_checks(dir.path());
        }

        /// The default config with one node replaced by something hostile:
        /// loading and validating give a config or an error naming the
        /// problem.
        #[test]
        fn mutated_configs_never_panic(
            edits in proptest::collection::vec(
                (proptest::collection::vec(any::<prop::sample::Index>(), 0..6), hostile_value()),
                1..4,
            ),
        ) {
            let mut v = serde_json::to_value(default_spec()).unwrap();
            v["annotations"] = serde_json::json!({
                crate::network::VETH_ANNOTATION: "host=veth0,container=eth0,address=10.0.3.2/30"
            });
            v["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO",
                    "args": [{"index": 0, "value": 1, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}]
            });
            v["process"]["rlimits"] = serde_json::json!([
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}
            ]);
            for (path, new) in edits {
                replace_at(&mut v, &path, new);
            }
            let dir = bundle_with(&serde_json::to_vec(&v).unwrap());
            pre_fork_checks(dir.path());
        }

        #[test]
        fn veth_annotations_parse_or_fail(s in "\\PC{0,80}|([a-z-]{1,12}=[0-9a-f.:/]{0,20},?){0,6}") {
            let _ = crate::network::VethConfig::parse(&s);
        }
    }

    /// serde_json's recursion limit refuses deep nesting before the stack
    /// runs out.
    #[test]
    fn deeply_nested_config_is_a_json_error() {
        let text = format!(
            r#"{{"ociVersion":"1.0.2","annotations":{}"#,
            "[".repeat(1 << 20)
        );
        let dir = bundle_with(text.as_bytes());
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Json { .. }), "{err}");
    }

    /// config.json was read whole, however large.
    #[test]
    fn oversized_config_is_refused() {
        let dir = bundle_with(b"");
        let f = std::fs::File::create(dir.path().join("config.json")).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
