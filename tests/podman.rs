//! podman drives ferry as its OCI runtime (`podman --runtime ferry`):
//! lifecycle, exec, logs, pause, checkpoint/restore (in place, exported,
//! imported, as a copy) of a counter container. Needs root, podman and
//! conmon (scripts/install-deps.sh) and CRIU.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// One test's podman world: a local busybox image, ferry's state root, and
/// the containers made; all removed on drop, also when the test fails.
struct Podman {
    image: String,
    names: Vec<String>,
}

impl Podman {
    /// `None` (with the reason printed) when podman cannot run here.
    fn new() -> Option<Podman> {
        if !is_root() {
            return None;
        }
        for tool in ["podman", "conmon"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !found {
                skip(&format!(
                    "{tool} is not installed (scripts/install-deps.sh installs it)"
                ));
                return None;
            }
        }
        // One image per test: removing it (`rmi -f`) when one test ends
        // would also remove the containers of a test still running.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let image = format!("localhost/ferry-t{}-{n}", std::process::id());
        // One import at a time: podman 4.3 loses an image now and then
        // when two imports of the same layer race (containers/podman#14578;
        // seen here as `podman run` of a just-imported image trying to
        // pull it).
        static IMPORT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = IMPORT.lock().unwrap_or_else(|e| e.into_inner());
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -C '{}' -c . | podman import -q - {image}",
                rootfs_template().display()
            ))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "podman import of the busybox rootfs failed");
        let exists = Command::new("podman")
            .args(["image", "exists", &image])
            .status()
            .unwrap();
        assert!(
            exists.success(),
            "podman import said {image} was stored, but it is not there"
        );
        Some(Podman {
            image,
            names: Vec::new(),
        })
    }

    fn name(&mut self, n: &str) -> String {
        let name = format!("ferry-t{}-{n}", std::process::id());
        self.names.push(name.clone());
        name
    }

    /// podman with ferry as the runtime. ferry keeps its state in its
    /// default root: podman's cleanup after a container exits runs without
    /// `--runtime-flag`, so another root would not be seen by it.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["120", "podman", "--runtime"])
            .arg(ferry_bin())
            .args(["--cgroup-manager", "cgroupfs"])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// ferry's state directory of a podman container.
    fn state_dir(&self, name: &str) -> PathBuf {
        let id = self.ok(&["inspect", "--format", "{{.Id}}", name]);
        Path::new(ferry::container::DEFAULT_ROOT).join(id.trim())
    }

    fn status(&self, name: &str) -> String {
        self.ok(&["inspect", "--format", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }

    /// The last number the counter printed.
    fn count(&self, name: &str) -> u64 {
        let out = self.run(&["logs", name]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .next_back()
            .unwrap_or(0)
    }

    fn wait_count(&self, name: &str, above: u64) -> bool {
        wait_until(Duration::from_secs(10), || self.count(name) > above)
    }

    /// `podman run -d` of a counter printing an increasing number.
    fn counter(&self, name: &str) {
        self.ok(&[
            "run",
            "-d",
            "--name",
            name,
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=4096:4096",
            "--network",
            "none",
            &self.image,
            "sh",
            "-c",
            "i=0; while :; do i=$((i+1)); echo $i; sleep 0.1; done",
        ]);
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = self
                .cmd(&["rm", "-f", "-t", "0", n])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn podman_runs_and_checkpoints_a_counter_through_ferry() {
    let Some(mut p) = Podman::new() else { return };
    let a = p.name("a");
    let copy = p.name("copy");
    let export_dir = tempfile::tempdir().unwrap();
    let exported: PathBuf = export_dir.path().join("a.tar.gz");

    // run -d, ps, logs, exec
    p.counter(&a);
    assert!(p.wait_count(&a, 3), "counter did not start");
    assert_eq!(p.status(&a), "running");
    let ps = p.ok(&["ps", "--format", "{{.Names}} {{.Status}}"]);
    assert!(
        ps.lines().any(|l| l.starts_with(&format!("{a} Up"))),
        "{ps}"
    );
    assert_eq!(p.ok(&["exec", &a, "echo", "hello"]).trim(), "hello");
    let cmdline = p.ok(&["exec", &a, "cat", "/proc/1/cmdline"]);
    assert!(cmdline.starts_with("sh\0-c\0i=0"), "{cmdline:?}");
    // podman's default seccomp profile filters the init and exec'd processes.
    let st = p.ok(&[
        "exec",
        &a,
        "grep",
        "^Seccomp:",
        "/proc/1/status",
        "/proc/self/status",
    ]);
    assert_eq!(st.matches("Seccomp:\t2").count(), 2, "{st}");
    assert!(p.state_dir(&a).join("state.json").is_file());

    // pause / unpause
    p.ok(&["pause", &a]);
    assert_eq!(p.status(&a), "paused");
    let frozen = p.count(&a);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(p.count(&a), frozen, "counter moved while paused");
    p.ok(&["unpause", &a]);
    assert_eq!(p.status(&a), "running");
    assert!(p.wait_count(&a, frozen + 2));

    // checkpoint --leave-running --print-stats
    let out = p.ok(&[
        "container",
        "checkpoint",
        "--leave-running",
        "--print-stats",
        &a,
    ]);
    let stats: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let criu = &stats["container_statistics"][0]["criu_statistics"];
    assert!(criu["frozen_time"].as_u64().unwrap() > 0, "{stats}");
    assert!(criu["pages_written"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(p.status(&a), "running");
    let before = p.count(&a);
    assert!(
        p.wait_count(&a, before + 2),
        "stopped after --leave-running"
    );

    // checkpoint --tcp-established, restore --tcp-established: the counter
    // continues (never restarts at 1).
    p.ok(&["container", "checkpoint", "--tcp-established", &a]);
    assert_eq!(p.status(&a), "exited");
    let at_dump = p.count(&a);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.count(&a), at_dump);
    let out = p.ok(&[
        "container",
        "restore",
        "--tcp-established",
        "--print-stats",
        &a,
    ]);
    let stats: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let criu = &stats["container_statistics"][0]["criu_statistics"];
    assert!(criu["restore_time"].as_u64().unwrap() > 0, "{stats}");
    assert_eq!(p.status(&a), "running");
    assert!(p.wait_count(&a, at_dump + 3), "counter did not continue");
    let st = p.ok(&["exec", &a, "grep", "^Seccomp:", "/proc/1/status"]);
    assert!(st.contains("Seccomp:\t2"), "filter lost in restore: {st}");
    let out = p.run(&["logs", &a]);
    let all: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "counter restarted or skipped: {all:?}"
    );

    // checkpoint --export; the container is removed; restore --import
    // brings it back, and --name makes a copy from the same archive.
    p.ok(&["container", "checkpoint", "--export", s(&exported), &a]);
    assert!(exported.is_file());
    let at_export = p.count(&a);
    p.ok(&["rm", "-f", &a]);
    p.ok(&["container", "restore", "--import", s(&exported)]);
    assert_eq!(p.status(&a), "running");
    assert!(p.wait_count(&a, at_export + 3));
    p.ok(&[
        "container",
        "restore",
        "--import",
        s(&exported),
        "--name",
        &copy,
    ]);
    assert_eq!(p.status(&copy), "running");
    assert!(p.wait_count(&copy, at_export + 3));
    let ps = p.ok(&["ps", "--format", "{{.Names}}"]);
    assert!(ps.contains(&a) && ps.contains(&copy), "{ps}");

    // kill, stop, rm -f
    p.ok(&["kill", &copy]);
    assert!(wait_until(Duration::from_secs(10), || p.status(&copy) == "exited"));
    p.ok(&["stop", "-t", "1", &a]);
    assert_eq!(p.status(&a), "exited");
    let state_a = p.state_dir(&a);
    let state_copy = p.state_dir(&copy);
    p.ok(&["rm", "-f", &a, &copy]);
    for d in [state_a, state_copy] {
        assert!(!d.exists(), "ferry state left behind: {}", d.display());
    }
}

/// `podman container checkpoint --pre-checkpoint`, then
/// `--with-previous`, then `restore`: podman asks ferry for a pre-dump and
/// then a dump against it (`--parent-path`). Where the kernel does not
/// track dirty memory, the pre-checkpoint is refused and the container
/// runs on.
#[test]
fn podman_pre_checkpoint_then_checkpoint_with_previous() {
    let Some(mut p) = Podman::new() else { return };
    let a = p.name("pre");
    p.counter(&a);
    assert!(p.wait_count(&a, 3), "counter did not start");
    let tracks = ferry::criu::Criu::new()
        .and_then(|c| c.features())
        .map(|f| f.mem_track)
        .unwrap_or(false);
    if !tracks {
        let out = p.run(&["container", "checkpoint", "--pre-checkpoint", &a]);
        assert!(!out.status.success(), "pre-checkpoint without soft-dirty");
        assert_eq!(p.status(&a), "running");
        let at = p.count(&a);
        assert!(p.wait_count(&a, at + 2));
        return;
    }
    p.ok(&["container", "checkpoint", "--pre-checkpoint", &a]);
    assert_eq!(p.status(&a), "running");
    let at_pre = p.count(&a);
    assert!(p.wait_count(&a, at_pre + 2), "stopped after the pre-dump");
    p.ok(&["container", "checkpoint", "--with-previous", &a]);
    assert_eq!(p.status(&a), "exited");
    let at_dump = p.count(&a);
    p.ok(&["container", "restore", &a]);
    assert_eq!(p.status(&a), "running");
    assert!(p.wait_count(&a, at_dump + 3), "counter did not continue");
    let out = p.run(&["logs", &a]);
    let all: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(
        all.windows(2).all(|w| w[1] == w[0] + 1),
        "counter restarted or skipped: {all:?}"
    );
}

#[test]
fn podman_rm_force_of_a_running_container_and_kill_with_signal() {
    let Some(mut p) = Podman::new() else { return };
    let b = p.name("b");
    p.counter(&b);
    assert!(p.wait_count(&b, 2));
    // sh as pid 1 ignores TERM; KILL by name ends it.
    p.ok(&["kill", "--signal", "KILL", &b]);
    assert!(wait_until(Duration::from_secs(10), || p.status(&b) == "exited"));
    p.ok(&["start", &b]);
    assert_eq!(p.status(&b), "running");
    let state = p.state_dir(&b);
    assert!(state.is_dir());
    p.ok(&["rm", "-f", &b]);
    let out = p.run(&["inspect", &b]);
    assert!(!out.status.success(), "container still known to podman");
    assert!(!state.exists(), "ferry state left behind");
}

/// podman's configuration naming ferry as the runtime `ferry`: podman
/// restores a checkpoint image only with the runtime its
/// `io.podman.annotations.checkpoint.runtime.name` names, and a runtime
/// given as a path is named by that path.
fn named_runtime_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"ferry\"\n\n[engine.runtimes]\nferry = [\"{}\"]\n",
            ferry_bin().display()
        ),
    )
    .unwrap();
    conf
}

/// A counter started by ferry itself, checkpointed with `--export-image
/// oci-archive:`, loaded into podman's storage (`podman load`) and
/// restored by `podman container restore IMAGE` with ferry as the runtime:
/// the counter goes on from where it was.
#[test]
fn podman_restores_a_checkpoint_image_ferry_wrote() {
    let Some(mut p) = Podman::new() else { return };
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("pimg");
    let restored = p.name("from-image");
    let ckpt_image = format!("localhost/ferry-ckpt-t{}", std::process::id());
    let conf = named_runtime_conf(env.work.path());
    // Removed with the configuration that names the runtime, also when
    // the test fails.
    struct Cleanup {
        conf: PathBuf,
        name: String,
        image: String,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for args in [
                vec!["rm", "-f", "-t", "0", &self.name],
                vec!["rmi", "-f", &self.image],
            ] {
                let _ = Command::new("podman")
                    .args(args)
                    .env("CONTAINERS_CONF", &self.conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let _cleanup = Cleanup {
        conf: conf.clone(),
        name: restored.clone(),
        image: format!("{ckpt_image}:latest"),
    };

    // The source: podman's image rootfs has a 0555 root directory, and
    // CRIU checks the mode of the root it restores into; stdio are pipes
    // (conmon's are).
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let bundle = env.counter_bundle("c", &data);
    std::fs::set_permissions(
        bundle.join("rootfs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let id = env.id("c");
    let mut child = env.spawn_detached(&id, &bundle);
    assert!(child.wait().unwrap().success());
    let count = data.join("count");
    wait_counting(&count);

    let archive = env.work.path().join("ckpt.tar");
    let reference = format!("oci-archive:{}:{ckpt_image}:latest", archive.display());
    env.ok(&[
        "checkpoint",
        "--export-image",
        &reference,
        "--rootfs-image",
        &p.image,
        &id,
    ]);
    env.assert_gone(&id);
    let at_dump = read_num(&count).unwrap();

    let podman = |args: &[&str]| {
        let out = Command::new("timeout")
            .args(["120", "podman"])
            .args(args)
            .env("CONTAINERS_CONF", &conf)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    podman(&["load", "-q", "-i", s(&archive)]);
    let inspect = podman(&["image", "inspect", &format!("{ckpt_image}:latest")]);
    let v: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(
        v[0]["Annotations"]["io.podman.annotations.checkpoint.runtime.name"],
        "ferry"
    );
    podman(&[
        "container",
        "restore",
        "--name",
        &restored,
        &format!("{ckpt_image}:latest"),
    ]);
    let status = podman(&["inspect", "--format", "{{.State.Status}}", &restored]);
    assert_eq!(status.trim(), "running");
    assert_continues(&count, at_dump);
    podman(&["rm", "-f", "-t", "0", &restored]);
}

/// The other way: `podman container checkpoint --create-image` with ferry
/// as the runtime, `podman save --format oci-archive`, then `ferry restore
/// --image oci-archive:FILE` into a bundle made of the image's `spec.dump`
/// and a fresh copy of the container image's rootfs: the counter goes on.
#[test]
fn ferry_restores_a_checkpoint_image_podman_created() {
    let Some(mut p) = Podman::new() else { return };
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("pcreate");
    let name = p.name("create-image");
    let ckpt_image = format!("localhost/podman-ckpt-t{}:latest", std::process::id());
    struct Rmi(String);
    impl Drop for Rmi {
        fn drop(&mut self) {
            let _ = Command::new("podman")
                .args(["rmi", "-f", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let _rmi = Rmi(ckpt_image.clone());
    let data = env.work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let volume = format!("{}:/data", data.display());
    p.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        "none",
        "-v",
        &volume,
        &p.image,
        "sh",
        "-c",
        COUNTER,
    ]);
    let count = data.join("count");
    wait_counting(&count);
    p.ok(&[
        "container",
        "checkpoint",
        "--create-image",
        &ckpt_image,
        &name,
    ]);
    let at_dump = read_num(&count).unwrap();
    let archive = env.work.path().join("podman-ckpt.tar");
    p.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        s(&archive),
        &ckpt_image,
    ]);

    // The bundle: podman's spec.dump from the image's layer (its mounts
    // name podman's files for the container, still there), and the image's
    // rootfs with the mode podman's overlay root has.
    let spec = spec_dump_of(&archive);
    let bundle = env.work.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(rootfs_template())
        .arg(bundle.join("rootfs"))
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::set_permissions(
        bundle.join("rootfs"),
        std::os::unix::fs::PermissionsExt::from_mode(0o555),
    )
    .unwrap();
    let mut spec = spec;
    spec["root"]["path"] = Value::from("rootfs");
    std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();

    let id = env.id("r");
    let reference = format!("oci-archive:{}", archive.display());
    env.ok(&[
        "restore",
        "-d",
        "--image",
        &reference,
        "--bundle",
        s(&bundle),
        &id,
    ]);
    assert_eq!(env.status(&id), "running");
    assert_continues(&count, at_dump);
    env.ok(&["delete", "--force", &id]);
    env.assert_gone(&id);
}

/// `spec.dump` of the one layer of a checkpoint image in an oci-archive.
fn spec_dump_of(archive: &Path) -> Value {
    use std::io::Read;
    let mut files = std::collections::HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(archive).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        e.read_to_end(&mut bytes).unwrap();
        files.insert(name, bytes);
    }
    let json = |name: &str| -> Value { serde_json::from_slice(&files[name]).unwrap() };
    let blob = |digest: &Value| format!("blobs/sha256/{}", &digest.as_str().unwrap()[7..]);
    let index = json("index.json");
    let manifest = json(&blob(&index["manifests"][0]["digest"]));
    let layer = &files[&blob(&manifest["layers"][0]["digest"])];
    let mut inner = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
    for e in inner.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some("spec.dump") {
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            return serde_json::from_slice(&bytes).unwrap();
        }
    }
    panic!("no spec.dump in the checkpoint image's layer");
}
