//! containerd drives ferry as the runtime binary of its runc v2 shim
//! (`ctr run --runc-binary`): run, exec, pause/resume, kill, delete, and a
//! checkpoint of the task into an image restored from that image. The test
//! starts its own containerd (own config, root, state and socket) and
//! stops it. Needs root, containerd and ctr (scripts/install-deps.sh),
//! podman (to build the image) and CRIU.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A containerd of this test's own, with one namespace and one image;
/// everything (tasks, shims, mounts, files) removed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
    namespace: String,
    image: String,
    /// Where the shim tells ferry to keep its state (`--root`).
    ferry_root: PathBuf,
    ids: Vec<String>,
    /// The directories containerd makes under /run that did not exist
    /// before this test started it (removed when empty).
    made_dirs: Vec<&'static str>,
}

/// What containerd 1.6 makes under /run whatever its configuration (shim
/// sockets, fifos, the runc shim's roots), deepest first.
const RUN_DIRS: [&str; 4] = [
    "/run/containerd/runc",
    "/run/containerd/s",
    "/run/containerd/fifo",
    "/run/containerd",
];

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output_ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Containerd {
    /// `None` (with the reason printed) when containerd cannot run here.
    fn start() -> Option<Containerd> {
        if !is_root() {
            return None;
        }
        for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "podman"] {
            if !have(tool) {
                skip(&format!(
                    "{tool} is not installed (scripts/install-deps.sh installs it)"
                ));
                return None;
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("ferry-ctrd")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{0}/sock\"\n\
                 [ttrpc]\n  address = \"{0}/sock.ttrpc\"\n\
                 [debug]\n  address = \"{0}/debug.sock\"\n",
                d.display()
            ),
        )
        .unwrap();
        let made_dirs = RUN_DIRS
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        // containerd unpacks a checkpoint it restores from into a `ctrd-checkpoint*`
        // directory under $XDG_RUNTIME_DIR (else the system's temporary directory) and
        // never removes it: keep it inside this test's directory.
        let scratch = d.join("tmp");
        std::fs::create_dir(&scratch).unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("XDG_RUNTIME_DIR", &scratch)
            .env("TMPDIR", &scratch)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let namespace = format!("ferry-t{}", std::process::id());
        let mut c = Containerd {
            ferry_root: PathBuf::from("/run/containerd/runc").join(&namespace),
            dir,
            daemon,
            image: format!("localhost/ferry-ctrd-t{}:1", std::process::id()),
            namespace,
            ids: Vec::new(),
            made_dirs,
        };
        assert!(
            wait_until(Duration::from_secs(20), || c
                .run(&["version"])
                .status
                .success()),
            "containerd did not start: {}",
            std::fs::read_to_string(c.dir.path().join("containerd.log")).unwrap_or_default()
        );
        c.import_image();
        Some(c)
    }

    /// The busybox rootfs as an OCI image in this containerd, built by a
    /// podman with storage of its own.
    fn import_image(&mut self) {
        let d = self.dir.path();
        let archive = d.join("image.tar");
        let script = format!(
            "set -e; P='podman --root {0}/pm --runroot {0}/pmrun --storage-driver vfs'; \
             tar -C '{1}' -c . | $P import -q - {2} >/dev/null; \
             $P save -q --format oci-archive -o '{3}' {2}; $P rmi -f {2} >/dev/null",
            d.display(),
            rootfs_template().display(),
            self.image,
            archive.display()
        );
        output_ok(
            "building the image",
            Command::new("sh").args(["-c", &script]).output().unwrap(),
        );
        self.ok(&["images", "import", archive.to_str().unwrap()]);
    }

    fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["120", "ctr", "--address"])
            .arg(self.dir.path().join("sock"))
            .args(["--namespace", &self.namespace])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ctr(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        output_ok(&format!("ctr {args:?}"), self.run(args))
    }

    fn id(&mut self, n: &str) -> String {
        let id = format!("ferry-t{}-{n}", std::process::id());
        self.ids.push(id.clone());
        id
    }

    /// The task's status as `ctr task ls` shows it.
    fn status(&self, id: &str) -> String {
        self.ok(&["task", "ls"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.first() == Some(&id)).then(|| f[2].to_string())
            })
            .unwrap_or_default()
    }

    /// The counter's last number, read by a process exec'd in the task;
    /// `None` while the counter has not written it yet.
    fn try_count(&self, id: &str, exec_id: &str) -> Option<u64> {
        self.read_count(id, exec_id).ok()
    }

    /// The counter's last number; fails the test, with what the exec
    /// printed, when there is none.
    fn count(&self, id: &str, exec_id: &str) -> u64 {
        self.read_count(id, exec_id)
            .unwrap_or_else(|e| panic!("no count in the task: {e}"))
    }

    fn read_count(&self, id: &str, exec_id: &str) -> Result<u64, String> {
        let out = self.run(&[
            "task",
            "exec",
            "--exec-id",
            exec_id,
            id,
            "readlink",
            "/tmp/count",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.trim().parse().map_err(|_| {
            format!(
                "exec readlink /tmp/count: {}, stdout {stdout:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// ferry's own view of the container, in the root the shim gave it.
    fn ferry_status(&self, id: &str) -> Option<String> {
        let out = Command::new(ferry_bin())
            .arg("--root")
            .arg(&self.ferry_root)
            .args(["state", id])
            .output()
            .unwrap();
        out.status.success().then(|| {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["status"].as_str().unwrap_or_default().to_string()
        })
    }

    fn remove(&self, id: &str) {
        let _ = self.run(&["task", "kill", "--signal", "KILL", id]);
        let _ = wait_until(Duration::from_secs(10), || {
            self.run(&["task", "rm", "-f", id]).status.success()
                || !self.ok(&["task", "ls"]).contains(id)
        });
        let _ = self.run(&["containers", "rm", id]);
    }
}

/// The cgroup directories named `name` under `dir`, down to `depth` levels. Searched, not
/// derived (`invariants::cgroup_dirs_everywhere` looks below this process's own cgroup): on a v1
/// host the memory hierarchy put containerd's namespace directory at its root.
fn cgroup_dirs_named(dir: &Path, name: &str, depth: u32, found: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if e.file_name() == name {
            found.push(e.path());
        } else if depth > 0 {
            cgroup_dirs_named(&e.path(), name, depth - 1, found);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            self.remove(&id);
        }
        for r in self
            .ok(&["images", "ls", "-q"])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
        {
            let _ = self.run(&["images", "rm", &r]);
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // Shims this containerd started (they outlive it by design).
        let sock = self.dir.path().join("sock");
        if let Ok(rd) = std::fs::read_dir("/proc") {
            for e in rd.flatten() {
                let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                if cmd.starts_with("/usr/bin/containerd-shim-runc-v2")
                    && cmd.contains(sock.to_str().unwrap())
                {
                    if let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() {
                        // SAFETY: plain kill(2) of a shim this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for id in &self.ids {
            let _ = Command::new(ferry_bin())
                .arg("--root")
                .arg(&self.ferry_root)
                .args(["delete", "-f", id])
                .output();
        }
        let _ = std::fs::remove_dir(&self.ferry_root);
        // containerd puts each container's cgroup at /<namespace>/<id>: the namespace's own
        // directory stays after the last container is deleted, as it does under runc.
        let mut found = Vec::new();
        cgroup_dirs_named(Path::new("/sys/fs/cgroup"), &self.namespace, 5, &mut found);
        found.sort_by_key(|d| std::cmp::Reverse(d.as_os_str().len()));
        for d in found {
            let _ = std::fs::remove_dir(d);
        }
        // Only empty ones go (rmdir), and only those this test caused.
        for d in &self.made_dirs {
            let _ = std::fs::remove_dir(d);
        }
        // Snapshots may still be mounted below the root: unmount before the
        // temporary directory goes (never delete through a mount point).
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|p| p.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(Path::new(p), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn containerd_runs_execs_pauses_and_checkpoints_a_counter_through_ferry() {
    let Some(_g) = criu_lock() else { return };
    let Some(mut c) = Containerd::start() else {
        return;
    };
    let ferry = ferry_bin();
    let ferry = ferry.to_str().unwrap();
    let id = c.id("a");
    let image = c.image.clone();
    c.ok(&[
        "run",
        "-d",
        "--runc-binary",
        ferry,
        &image,
        &id,
        "sh",
        "-c",
        // The number is a symlink's target, renamed into place (as
        // common::COUNTER): a reader never sees a file truncated and not
        // yet written, and a checkpoint never catches a file open in the
        // rootfs, which the restore into a fresh one could not reopen.
        "trap 'exit 0' TERM; i=0; while :; do i=$((i+1)); ln -sf $i /tmp/count.new; mv -f /tmp/count.new /tmp/count; sleep 0.1; done",
    ]);
    assert_eq!(c.status(&id), "RUNNING");
    // ferry is the runtime: its state is in the root the shim passes.
    assert_eq!(c.ferry_status(&id).as_deref(), Some("running"));
    assert!(wait_until(Duration::from_secs(10), || c
        .try_count(&id, "e1")
        >= Some(3)));

    // pause / resume
    c.ok(&["task", "pause", &id]);
    assert_eq!(c.status(&id), "PAUSED");
    assert_eq!(c.ferry_status(&id).as_deref(), Some("paused"));
    c.ok(&["task", "resume", &id]);
    assert_eq!(c.status(&id), "RUNNING");

    // Checkpoint of the task into an image; the task runs on. The counter
    // is at `before` or past it when it is checkpointed.
    let before = c.count(&id, "e2");
    let reference = format!("localhost/ferry-ckpt-t{}:1", std::process::id());
    c.ok(&["containers", "checkpoint", "--task", &id, &reference]);
    assert_eq!(c.status(&id), "RUNNING");
    assert!(wait_until(Duration::from_secs(10), || c
        .try_count(&id, "e3")
        > Some(before)));
    let images = c.ok(&["images", "ls", "-q"]);
    assert!(images.lines().any(|l| l == reference), "{images}");

    // kill and delete: gone from containerd and from ferry.
    c.remove(&id);
    assert_eq!(c.ferry_status(&id), None);

    // Restore from the image (go-runc passes `-no-subreaper`) into a fresh
    // rootfs (the checkpoint has no rw layer): the first number the
    // counter writes there comes from its restored memory, past `before`;
    // a counter started afresh would write 1.
    c.ok(&["containers", "restore", "--live", &id, &reference]);
    assert_eq!(c.status(&id), "RUNNING");
    assert_eq!(c.ferry_status(&id).as_deref(), Some("running"));
    let mut first = Err(String::new());
    wait_until(Duration::from_secs(10), || {
        first = c.read_count(&id, "e4");
        first.is_ok()
    });
    let first = first.unwrap_or_else(|e| panic!("the restored counter never wrote: {e}"));
    assert!(
        first > before,
        "restarted: {first} after checkpoint at {before}"
    );
    assert!(wait_until(Duration::from_secs(10), || c
        .try_count(&id, "e5")
        > Some(first)));

    // kill with a signal: the task exits, delete removes it.
    c.ok(&["task", "kill", "--signal", "TERM", &id]);
    assert!(wait_until(Duration::from_secs(10), || c.status(&id) == "STOPPED"));
    // A kill of the stopped task: ferry answers as runc does, which the
    // shim reads as "already finished".
    let out = c.run(&["task", "kill", "--signal", "KILL", &id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("process already finished"), "{err}");
    c.ok(&["task", "rm", &id]);
    c.ok(&["containers", "rm", &id]);
    assert_eq!(c.ferry_status(&id), None);
}
