//! `ferry inspect`, `ferry check` and checkpoint archives against real CRIU
//! dumps (and a real podman export). Needs root and a working criu.
#[path = "common/check_sleepers.rs"]
mod check_sleepers;
#[path = "common/skip.rs"]
mod skip;
use check_sleepers::check_sleepers;
use skip::skip;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry::archive::{self, Compression, ExportSpec, Metadata};
use ferry::criu::{AckAll, Criu, Opts};
use ferry::images::ImageDir;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

/// CRIU takes global locks; one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ferry() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferry"))
}

fn criu() -> Criu {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests drive CRIU and must run as root"
    );
    Criu::new().expect("criu must be installed (scripts/install-deps.sh)")
}

/// A process group killed on drop.
struct Tree {
    pid: i32,
}

impl Drop for Tree {
    fn drop(&mut self) {
        if self.pid > 1 {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

const MARK: &str = "FERRY_INSPECT_MARK=tree-42";

/// `sh -c script` in a session of its own (with the inspect mark in its
/// environment), killed with its group when the `Tree` drops.
fn spawn_script(script: &str) -> Tree {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .env("FERRY_INSPECT_MARK", "tree-42")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = cmd.spawn().unwrap();
    let tree = Tree {
        pid: child.id() as i32,
    };
    std::mem::forget(child);
    tree
}

/// `sh` holding `file` open on fd 7, with a `sleep` child.
fn spawn_tree(file: &Path) -> Tree {
    let script = format!(
        "exec 7<{}; sleep 1000 & while :; do sleep 1; done",
        file.display()
    );
    let tree = spawn_script(&script);
    // Wait for the sleep child.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tree.pid))
            .unwrap_or_default();
        if !children.trim().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tree
}

/// Dumps a fresh tree (left running, then killed) into `dir`.
fn dump_tree(work: &Path) -> PathBuf {
    let images = work.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let held = work.join("held-open.txt");
    std::fs::write(&held, "x").unwrap();
    let tree = spawn_tree(&held);
    std::thread::sleep(Duration::from_millis(200));
    let dir = File::open(&images).unwrap();
    let mut o = Opts::new();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.set_log_file("dump.log".into());
    o.set_log_level(4);
    o.set_pid(tree.pid);
    o.set_leave_running(true);
    criu().dump(o, &mut AckAll, &[]).unwrap();
    drop(tree);
    images
}

#[test]
fn real_dump_is_decoded() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let images = dump_tree(work.path());
    let d = ImageDir::open(&images).unwrap();
    let s = d.summary(true).unwrap();
    let names: Vec<&str> = s
        .processes
        .iter()
        .map(|p| p.process.comm.as_str())
        .collect();
    assert_eq!(names[0], "sh", "{names:?}");
    assert!(
        names[1..].iter().all(|n| *n == "sleep") && names.len() >= 2,
        "{names:?}"
    );
    let sh = &s.processes[0];
    let argv = sh.cmdline.clone().unwrap();
    assert_eq!(argv[0], "sh");
    assert_eq!(argv[1], "-c");
    assert!(argv[2].starts_with("exec 7<"), "{argv:?}");
    assert!(sh.env.as_ref().unwrap().iter().any(|e| e == MARK));
    assert!(sh.memory.unwrap().dumped_bytes > 0);
    let held = work.path().join("held-open.txt");
    assert!(
        sh.files
            .iter()
            .any(|f| f.fd == 7 && f.description == held.display().to_string()),
        "{:?}",
        sh.files
    );
    let sleep = &s.processes[1];
    assert_eq!(sleep.cmdline.as_ref().unwrap()[0], "sleep");
    assert!(sleep.memory.unwrap().dumped_bytes > 0);
    assert_eq!(
        s.criu_version.as_deref(),
        Some(criu().version().unwrap().to_string().as_str())
    );
    assert!(s.dump_stats.unwrap().pages_written > 0);
    // The host's namespaces are not dumped.
    assert!(s.namespaces.namespaces.iter().all(|n| !n.dumped));
}

#[test]
fn truncated_real_images_name_file_and_offset() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let images = dump_tree(work.path());
    let pid = ImageDir::open(&images).unwrap().process_tree().unwrap()[0].pid;
    let files_id = ImageDir::open(&images).unwrap().process_tree().unwrap()[0]
        .ids
        .unwrap()
        .files;
    let names = [
        "inventory.img".to_string(),
        "pstree.img".into(),
        format!("core-{pid}.img"),
        format!("mm-{pid}.img"),
        format!("pagemap-{pid}.img"),
        format!("fdinfo-{files_id}.img"),
        "files.img".into(),
        format!("fs-{pid}.img"),
        "stats-dump".into(),
    ];
    for name in &names {
        let path = images.join(name);
        let original = std::fs::read(&path).unwrap();
        let head = if name == "inventory.img" { 4 } else { 8 };
        // Inside the magic, inside the first length word, inside the first entry.
        for cut in [2, head + 2, head + 5] {
            std::fs::write(&path, &original[..cut]).unwrap();
            let err = ImageDir::open(&images)
                .and_then(|d| d.summary(false))
                .unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(name.as_str()), "{name} cut at {cut}: {msg}");
            assert!(msg.contains(" at offset "), "{name} cut at {cut}: {msg}");
            let out = Command::new(ferry())
                .arg("inspect")
                .arg(&images)
                .output()
                .unwrap();
            assert!(!out.status.success());
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains(name.as_str()) && !stderr.contains("panicked"),
                "{stderr}"
            );
        }
        std::fs::write(&path, &original).unwrap();
    }
    // The pages image shorter than the pagemap says.
    let pages = std::fs::read_dir(&images)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .unwrap();
    let original = std::fs::read(&pages).unwrap();
    std::fs::write(&pages, &original[..100]).unwrap();
    let err = ImageDir::open(&images).unwrap().summary(false).unwrap_err();
    assert!(
        err.to_string().contains(&pages.display().to_string()),
        "{err}"
    );
}

fn inspect_json(path: &Path, env: bool) -> Value {
    let mut c = Command::new(ferry());
    c.arg("inspect").arg(path).args(["--format", "json"]);
    if env {
        c.arg("--env");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "ferry inspect {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn process_names(v: &Value) -> Vec<String> {
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["comm"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn inspect_cli_on_dir_and_ferry_archive() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let images = dump_tree(work.path());

    let v = inspect_json(&images, true);
    assert_eq!(process_names(&v)[0], "sh");
    assert!(v["processes"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e == MARK));
    let v = inspect_json(&images, false);
    assert!(v["processes"][0].get("env").is_none());
    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&images)
        .output()
        .unwrap();
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.contains(" sh -c exec 7<") && tree.contains(" sleep 1000"),
        "{tree}"
    );

    // A ferry archive of the same images.
    let config = work.path().join("config.json");
    std::fs::write(&config, r#"{"ociVersion":"1.0.2"}"#).unwrap();
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/tool"), vec![1u8; 5000]).unwrap();
    let archive_path = work.path().join("ctr.tar.zst");
    let spec = ExportSpec {
        rootfs_image: None,
        images_dir: images.clone(),
        descriptors: None,
        config,
        metadata: Metadata::for_host("inspect-ctr", criu().version().unwrap()),
        dump_stats: None,
        rootfs: Some(rootfs),
        compression: Compression::Zstd,
    };
    archive::export(&spec, File::create(&archive_path).unwrap()).unwrap();
    let v = inspect_json(&archive_path, false);
    assert_eq!(v["archive"]["layout"], "ferry");
    assert_eq!(v["archive"]["compression"], "zstd");
    assert_eq!(v["archive"]["metadata"]["container_id"], "inspect-ctr");
    assert_eq!(
        v["archive"]["metadata"]["architecture"],
        std::env::consts::ARCH
    );
    assert!(v["archive"]["rootfs_diff_bytes"].as_u64().unwrap() > 5000);
    let names = process_names(&v);
    assert_eq!(names[0], "sh");
    assert!(names[1..].iter().all(|n| n == "sleep"), "{names:?}");
    assert!(
        v["processes"][0]["memory"]["dumped_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(v["dump_stats"]["pages_written"].as_u64().unwrap() > 0);

    // Importing it here works; the tree view shows the archive metadata.
    let dest = work.path().join("imported");
    let imp = archive::import(
        File::open(&archive_path).unwrap(),
        &dest,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(imp.metadata.container_id, "inspect-ctr");
    assert!(ImageDir::open(&imp.images_dir)
        .unwrap()
        .summary(false)
        .is_ok());
    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&archive_path)
        .output()
        .unwrap();
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(tree.contains("container: inspect-ctr"), "{tree}");

    // A file that is not an archive is refused with the documented message.
    let junk = work.path().join("junk");
    std::fs::write(&junk, vec![b'j'; 2000]).unwrap();
    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a checkpoint archive: the data starts with neither a tar header nor zstd or gzip magic"),
        "{err}"
    );
}

/// podman containers and images made by a test, removed on drop.
struct Podman {
    containers: Vec<String>,
    images: Vec<String>,
}

impl Drop for Podman {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("podman")
                .args(["rm", "-f", "-t", "0", c])
                .output();
        }
        for i in &self.images {
            let _ = Command::new("podman").args(["rmi", "-f", i]).output();
        }
    }
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?}: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn inspect_podman_exported_checkpoint() {
    let _s = serial();
    criu();
    if Command::new("podman").arg("--version").output().is_err() {
        skip("podman is not installed (scripts/install-deps.sh)");
        return;
    }
    let tag = format!("{}", std::process::id());
    let image = format!("localhost/ferry-inspect-busybox:{tag}");
    let name = format!("ferry-inspect-{tag}");
    let mut guard = Podman {
        containers: Vec::new(),
        images: Vec::new(),
    };
    let work = tempfile::tempdir().unwrap();
    let rootfs = work.path().join("rootfs");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-rootfs.sh");
    run(Command::new("bash").arg(script).arg(&rootfs)).unwrap();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    guard.images.push(image.clone());
    run(Command::new("podman")
        .args(["import", "-", &image])
        .stdin(tar.stdout.take().unwrap()))
    .unwrap();
    assert!(tar.wait().unwrap().success());
    guard.containers.push(name.clone());
    // runc, named: podman prefers crun where both are installed, and crun
    // refuses the cgroup v1 hybrid layout.
    run(Command::new("podman").args([
        "run",
        "-d",
        "--runtime",
        "runc",
        "--name",
        &name,
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=4096:4096",
        "--network",
        "none",
        &image,
        "sh",
        "-c",
        "sleep 100000 & while :; do sleep 1; done",
    ]))
    .unwrap();
    // Checkpointed once its shell has started the background sleep.
    let pid = run(Command::new("podman").args(["inspect", "--format", "{{.State.Pid}}", &name]))
        .unwrap()
        .trim()
        .to_string();
    let sleeping = || {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|n| n.trim() == "sleep")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sleeping() {
        assert!(
            Instant::now() < deadline,
            "no sleep in container {name} (pid {pid}) after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let exported = work.path().join("podman-checkpoint.tar.gz");
    if let Err(e) = run(Command::new("podman")
        .args(["container", "checkpoint", "--export"])
        .arg(&exported)
        .arg(&name))
    {
        skip(&format!(
            "podman container checkpoint does not work here: {e}"
        ));
        return;
    }
    let v = inspect_json(&exported, true);
    assert_eq!(v["archive"]["layout"], "podman");
    // podman compresses with zstd (4.x) or gzip (older): both are read.
    let compression = v["archive"]["compression"].as_str().unwrap().to_string();
    assert!(
        compression == "zstd" || compression == "gzip",
        "{compression}"
    );
    let mut names = process_names(&v);
    names.sort();
    names.dedup();
    assert_eq!(names, ["sh", "sleep"], "{v}");
    assert_eq!(v["processes"][0]["comm"], "sh");
    assert_eq!(
        v["processes"][0]["pid"], 1,
        "container init is pid 1 in its namespace"
    );
    for p in v["processes"].as_array().unwrap() {
        assert!(p["memory"]["dumped_bytes"].as_u64().unwrap() > 0, "{p}");
    }
    assert_eq!(
        v["processes"][0]["cmdline"][2],
        "sleep 100000 & while :; do sleep 1; done"
    );
    // A container: its mounts and namespaces are in the images.
    assert!(
        v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountpoint"] == "/proc"),
        "{}",
        v["mounts"]
    );
    let dumped: Vec<&str> = v["namespaces"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["dumped"] == true)
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert!(
        dumped.contains(&"mnt") && dumped.contains(&"uts"),
        "{dumped:?}"
    );
    assert!(v["archive"]["container"]["name"].as_str().unwrap() == name);
    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&exported)
        .output()
        .unwrap();
    assert!(out.status.success());
    let tree = String::from_utf8(out.stdout).unwrap();
    assert!(
        tree.contains(&format!("archive: podman ({compression})")),
        "{tree}"
    );
    drop(guard);
}

#[test]
fn check_json_agrees_with_criu() {
    let _s = serial();
    let c = criu();
    let out = Command::new(ferry())
        .args(["check", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Root may open perf events: CRIU's breakpoints find the kernel's perf hooks on.
    let hooks = v["criu"]["breakpoint_hooks"].as_str().unwrap_or_default();
    assert!(hooks.starts_with("turned on ahead"), "perf hooks: {hooks}");
    let cap = |name: &str| -> (String, String) {
        let c = v["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {v}"));
        (
            c["status"].as_str().unwrap().to_string(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    let works = |name: &str| cap(name).0 == "works";

    assert_eq!(v["criu"]["version"], c.version().unwrap().to_string());
    assert_eq!(v["criu"]["path"], c.binary.display().to_string());
    assert_eq!(works("checkpoint-restore"), c.check().is_ok());

    let f = c.features().unwrap();
    assert_eq!(v["criu"]["features"]["mem_track"], f.mem_track);
    assert_eq!(v["criu"]["features"]["lazy_pages"], f.lazy_pages);
    let feature = |name: &str| {
        Command::new(&c.binary)
            .args(["check", "--feature", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    assert_eq!(works("pre-copy"), f.mem_track);
    assert_eq!(works("pre-copy"), feature("mem_dirty_track"));
    if !f.mem_track {
        assert!(
            cap("pre-copy").1.contains("soft-dirty"),
            "{:?}",
            cap("pre-copy")
        );
    }
    if !f.lazy_pages {
        assert!(!works("post-copy"));
    } else if !works("post-copy") {
        // Measured: the feature check passes but serving lazy pages fails.
        assert!(
            cap("post-copy").1.contains("lazy-pages dump fails"),
            "{:?}",
            cap("post-copy")
        );
    }
    assert!(feature("uffd-noncoop") || !works("post-copy"));
    let nft = feature("network_lock_nftables");
    let methods: Vec<&str> = v["network_lock_methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(methods.contains(&"nftables"), nft);
    assert_eq!(works("network-lock"), !methods.is_empty());
    assert_eq!(
        works("tcp-established"),
        c.check().is_ok() && !methods.is_empty()
    );
    assert!(works("page-server"), "{:?}", cap("page-server"));

    // The cgroup layout, from the filesystems mounted.
    let unified = Path::new("/sys/fs/cgroup/unified")
        .join("cgroup.controllers")
        .exists();
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let expect = if v2 {
        "v2"
    } else if unified {
        "hybrid"
    } else {
        "v1"
    };
    assert_eq!(v["cgroups"], expect);
    // A new process is forked into its cgroup on v2, moved on v1; a move
    // waits for an RCU grace period unless a hierarchy has favordynmods.
    let join = v["cgroup_join"].as_str().unwrap_or_default();
    let favored = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .any(|l| l.contains(" cgroup") && l.contains("favordynmods"));
    match (v2, favored) {
        (true, _) => assert!(join.starts_with("forked into it"), "{join}"),
        (false, true) => assert!(join.contains("without waiting"), "{join}"),
        (false, false) => assert!(join.contains("waits for an RCU grace period"), "{join}"),
    }
    assert_eq!(
        v["kernel"]["release"],
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap()
            .trim()
    );

    // No process of the checks is left behind.
    let left = check_sleepers();
    assert!(left.is_empty(), "left behind by `ferry check`: {left:?}");

    let text = Command::new(ferry()).arg("check").output().unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("checkpoint-restore") && text.contains("post-copy"),
        "{text}"
    );
}

fn inspect_memory(images: &Path, args: &[&str]) -> std::process::Output {
    Command::new(ferry())
        .arg("inspect")
        .arg(images)
        .args(args)
        .output()
        .unwrap()
}

/// checkpointctl's memparse: where a text or a pattern sits in a process's
/// dumped memory, with context, and a hexdump of it all.
#[test]
fn inspect_memory_finds_text_and_patterns_with_context() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let images = dump_tree(work.path());
    let v = inspect_json(&images, false);
    let pid = v["processes"][0]["pid"].as_u64().unwrap().to_string();
    let json = |args: &[&str]| -> Vec<Value> {
        let out = inspect_memory(&images, args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The environment block holds FERRY_INSPECT_MARK=tree-42.
    let text = json(&[
        "--memory",
        &pid,
        "--search",
        "tree-42",
        "--context",
        "19",
        "--format",
        "json",
    ]);
    assert!(!text.is_empty());
    assert!(text.iter().all(|m| m["match"] == "tree-42"), "{text:?}");
    assert!(
        text.iter().any(|m| m["before"] == "FERRY_INSPECT_MARK="),
        "{text:?}"
    );
    // The same places through a regular expression.
    let re = json(&[
        "--memory",
        &pid,
        "--search-regex",
        "tree-[0-9]+",
        "--context",
        "19",
        "--format",
        "json",
    ]);
    assert_eq!(re, text);
    // Nothing where nothing is.
    assert!(json(&[
        "--memory",
        &pid,
        "--search",
        "no-such-text-9c1d",
        "--format",
        "json"
    ])
    .is_empty());
    // The text view marks the match.
    let out = inspect_memory(
        &images,
        &["--memory", &pid, "--search", "tree-42", "--context", "3"],
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.lines().any(|l| l.contains("  RK=[tree-42].")),
        "{shown}"
    );
    // The hexdump covers the dumped pages: xxd-style lines.
    let out = inspect_memory(&images, &["--memory", &pid]);
    let dump = String::from_utf8_lossy(&out.stdout);
    let first = dump.lines().next().unwrap();
    assert_eq!(first.len(), 16 + 2 + 47 + 2 + 18, "{first:?}");
    let pages = v["processes"][0]["memory"]["dumped_bytes"]
        .as_u64()
        .unwrap();
    assert_eq!(dump.lines().count() as u64, pages / 16);
    // A process that is not in the checkpoint: one line saying so.
    let out = inspect_memory(&images, &["--memory", "999999", "--search", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("process 999999 is not in this checkpoint"),
        "{err}"
    );
}

/// The children of `pid`, from /proc.
fn children(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Dumps the tree rooted at `pid` into `images`, leaving it running.
fn dump_running(pid: i32, images: &Path) {
    std::fs::create_dir_all(images).unwrap();
    let dir = File::open(images).unwrap();
    let mut o = Opts::new();
    o.set_images_dir_fd(dir.as_raw_fd());
    o.set_log_file("dump.log".into());
    o.set_pid(pid);
    o.set_leave_running(true);
    criu().dump(o, &mut AckAll, &[]).unwrap();
}

/// Two checkpoints of one tree that forked a process and opened a file
/// in between: `--diff` says exactly that.
#[test]
fn inspect_diff_names_what_changed_between_two_checkpoints() {
    let _s = serial();
    let work = tempfile::tempdir().unwrap();
    let (first, second, go, stay) = (
        work.path().join("first.txt"),
        work.path().join("second.txt"),
        work.path().join("go"),
        work.path().join("stay"),
    );
    std::fs::write(&first, "1").unwrap();
    std::fs::write(&second, "2").unwrap();
    for f in [&go, &stay] {
        nix::unistd::mkfifo(f.as_path(), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    }
    // The shell waits in open(2) of a fifo, with no short-lived children
    // coming and going between the checkpoints.
    let script = format!(
        "exec 7<{}; sleep 1000 & read x <{}; exec 8<{}; sleep 1000 & read y <{}",
        first.display(),
        go.display(),
        second.display(),
        stay.display()
    );
    let tree = spawn_script(&script);
    let wait_children = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && children(tree.pid).len() < n {
            std::thread::sleep(Duration::from_millis(20));
        }
        children(tree.pid)
    };
    let before: Vec<u32> = wait_children(1);
    let a = work.path().join("a");
    dump_running(tree.pid, &a);
    std::fs::write(&go, "go\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut added = Vec::new();
    while Instant::now() < deadline {
        let now = children(tree.pid);
        added = now
            .iter()
            .filter(|p| !before.contains(p))
            .copied()
            .collect();
        let comm_is_sleep_1000 = |p: &u32| {
            std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default() == b"sleep\x001000\x00"
        };
        added.retain(comm_is_sleep_1000);
        if !added.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(added.len(), 1, "the second sleep did not start");
    let b = work.path().join("b");
    dump_running(tree.pid, &b);
    drop(tree);

    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&a)
        .arg("--diff")
        .arg(&b)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        d["processes_added"],
        serde_json::json!([{"pid": added[0], "comm": "sleep"}]),
        "{d:#}"
    );
    assert_eq!(d["processes_removed"], serde_json::json!([]), "{d:#}");
    let sh = d["processes_changed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["comm"] == "sh")
        .unwrap_or_else(|| panic!("sh unchanged: {d:#}"));
    assert_eq!(
        sh["files_opened"],
        serde_json::json!([{"fd": 8, "type": "file", "description": second.display().to_string()}]),
        "{d:#}"
    );
    assert_eq!(sh["files_closed"], serde_json::json!([]), "{d:#}");
    assert_eq!(d["mounts_added"], serde_json::json!([]));
    // The text view, and a checkpoint against itself.
    let out = Command::new(ferry())
        .arg("inspect")
        .arg(&a)
        .arg("--diff")
        .arg(&b)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("+ process {} sleep", added[0])),
        "{text}"
    );
    assert!(
        text.contains(&format!("    + fd 8 {}", second.display())),
        "{text}"
    );
    let same = Command::new(ferry())
        .arg("inspect")
        .arg(&a)
        .arg("--diff")
        .arg(&a)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&same.stdout).contains("no change"));
}
