//! Cgroup resources, `update` and `events` beside runc (the reference) on
//! the same bundle: what the kernel holds afterwards is read back from the
//! cgroup files of both containers and compared (as root, v1 or v2).
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::runc::Runc;
use common::*;
use serde_json::{json, Value};

fn is_v2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The cgroup directory of `pid` for controller `ctrl` (v1), or its one
/// directory (v2), from /proc/PID/cgroup.
fn dir_of(pid: u64, ctrl: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let rel = path.trim_start_matches('/');
        if is_v2() && ctrls.is_empty() {
            return Path::new("/sys/fs/cgroup").join(rel);
        }
        if ctrls.split(',').any(|c| c == ctrl) {
            return Path::new("/sys/fs/cgroup").join(ctrl).join(rel);
        }
    }
    panic!("pid {pid} has no {ctrl} cgroup in {text}");
}

fn ferry_pid(env: &Env, id: &str) -> u64 {
    env.state(id)["pid"].as_u64().unwrap()
}

fn runc_pid(runc: &Runc, id: &str) -> u64 {
    let v: Value = serde_json::from_str(&runc.ok(&["state", id])).unwrap();
    v["pid"].as_u64().unwrap()
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

/// A whole disk to throttle (major:minor): a real one, else a loop device
/// (the guest has no disk), if the host has either.
fn disk() -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with("ram"))
        .collect();
    names.sort_by_key(|n| (n.starts_with("loop"), n.clone()));
    let dev = std::fs::read_to_string(format!("/sys/block/{}/dev", names.first()?)).ok()?;
    Some(dev.trim().to_string())
}

/// Both runtimes' containers from the same bundle, each through `args`
/// (`run -d`), returning their IDs.
fn pair(env: &Env, runc: &Runc, bundle: &Path) -> (String, String) {
    let (f, r) = (env.id("f"), env.id("r"));
    let b = bundle.to_str().unwrap();
    env.ok(&["run", "-d", "--bundle", b, &f]);
    runc.ok(&["run", "-d", "--bundle", b, &r]);
    (f, r)
}

#[test]
fn block_io_is_applied_as_runc_applies_it() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("bio");
    let dev = disk();
    let bundle = env.bundle("b", &["sleep", "1000"], |v| {
        let mut bio = json!({"weight": 300});
        if let Some(d) = &dev {
            let (major, minor) = d.split_once(':').unwrap();
            let (major, minor): (i64, i64) = (major.parse().unwrap(), minor.parse().unwrap());
            bio["throttleReadBpsDevice"] =
                json!([{"major": major, "minor": minor, "rate": 1048576}]);
            bio["throttleWriteIOPSDevice"] = json!([{"major": major, "minor": minor, "rate": 100}]);
        }
        v["linux"]["resources"]["blockIO"] = bio;
    });
    let (f, r) = pair(&env, &runc, &bundle);
    let (fd, rd) = (
        dir_of(ferry_pid(&env, &f), "blkio"),
        dir_of(runc_pid(&runc, &r), "blkio"),
    );
    // Every file runc wrote holds the same in ferry's cgroup.
    let files: Vec<&str> = if is_v2() {
        vec!["io.bfq.weight", "io.weight", "io.max"]
    } else {
        vec![
            "blkio.weight",
            "blkio.bfq.weight",
            "blkio.throttle.read_bps_device",
            "blkio.throttle.write_iops_device",
        ]
    };
    for file in files {
        if !rd.join(file).exists() {
            continue;
        }
        let (fv, rv) = (read(&fd, file), read(&rd, file));
        assert_eq!(fv, rv, "{file} differs from runc's");
        if let Some(d) = dev
            .as_ref()
            .filter(|_| file.contains("throttle") || file == "io.max")
        {
            assert!(fv.contains(d.as_str()), "{file}: {fv}");
        }
    }
    if is_v2() {
        // runc converts 300 to io.weight 1 + 290 * 9999 / 990 = 2930 without BFQ.
        let w = if fd.join("io.bfq.weight").exists() {
            read(&fd, "io.bfq.weight")
        } else {
            read(&fd, "io.weight")
        };
        assert!(w.ends_with(" 300") || w.ends_with(" 2930"), "weight {w}");
        if let Some(d) = &dev {
            let max = read(&fd, "io.max");
            assert!(max.contains(&format!("{d} rbps=1048576")), "{max}");
            assert!(max.contains("wiops=100"), "{max}");
        }
    } else {
        let w = if fd.join("blkio.weight").exists() {
            read(&fd, "blkio.weight")
        } else {
            read(&fd, "blkio.bfq.weight")
        };
        assert!(w.ends_with("300"), "weight {w}");
    }

    // What the kernel cannot do is refused in one line naming the field.
    let leaf = env.bundle("leaf", &["true"], |v| {
        v["linux"]["resources"]["blockIO"] = json!({"leafWeight": 300});
    });
    let leaf_has_file = !is_v2() && rd.join("blkio.leaf_weight").exists();
    if !leaf_has_file {
        let id = env.id("leaf");
        let err = env.fail(&["run", "--bundle", leaf.to_str().unwrap(), &id]);
        assert!(err.contains("blockIO.leafWeight is not supported"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        env.assert_gone(&id);
    }
}

/// A parent cgroup the test makes (with CPU limits) and removes last: it
/// must be declared before the Env and Runc so that it drops after them.
struct Parent {
    name: String,
}

impl Parent {
    /// `/sys/fs/cgroup[/cpu]/NAME` with a cfs quota of half a CPU and (v1)
    /// 50 ms of realtime runtime per second for its children (both fit).
    fn new(tag: &str) -> Parent {
        let name = format!("ferry-test-{}-{tag}", std::process::id());
        let p = Parent { name };
        let dir = p.dir("cpu");
        std::fs::create_dir_all(&dir).unwrap();
        if is_v2() {
            let ctrls = read(Path::new("/sys/fs/cgroup"), "cgroup.subtree_control");
            let enable: Vec<String> = ctrls.split_whitespace().map(|c| format!("+{c}")).collect();
            std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" ")).unwrap();
            std::fs::write(dir.join("cpu.max"), "50000 100000").unwrap();
        } else {
            std::fs::write(dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(dir.join("cpu.cfs_quota_us"), "50000").unwrap();
            std::fs::write(dir.join("cpu.rt_runtime_us"), "50000").unwrap();
        }
        p
    }

    fn dir(&self, ctrl: &str) -> PathBuf {
        if is_v2() {
            Path::new("/sys/fs/cgroup").join(&self.name)
        } else {
            Path::new("/sys/fs/cgroup").join(ctrl).join(&self.name)
        }
    }

    fn child(&self, leaf: &str) -> String {
        format!("/{}/{leaf}", self.name)
    }
}

impl Drop for Parent {
    fn drop(&mut self) {
        // The runtimes made it in the other hierarchies; rmdir only (empty).
        let roots: Vec<PathBuf> = if is_v2() {
            vec![PathBuf::from("/sys/fs/cgroup")]
        } else {
            std::fs::read_dir("/sys/fs/cgroup")
                .unwrap()
                .filter_map(|e| Some(e.ok()?.path()))
                .collect()
        };
        for root in roots {
            let _ = std::fs::remove_dir(root.join(&self.name));
        }
    }
}

fn cfs(dir: &Path) -> String {
    if is_v2() {
        read(dir, "cpu.max")
    } else {
        format!(
            "{} {}",
            read(dir, "cpu.cfs_quota_us"),
            read(dir, "cpu.cfs_period_us")
        )
    }
}

#[test]
fn update_writes_what_runc_writes_in_an_order_the_kernel_takes() {
    if !is_root() {
        return;
    }
    let parent = Parent::new("upd");
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("upd");
    let cfg = |leaf: String| {
        move |v: &mut Value| {
            v["linux"]["cgroupsPath"] = json!(leaf);
            v["linux"]["resources"]["cpu"] = json!({"quota": 50000, "period": 100000});
        }
    };
    let fb = env.bundle("f", &["sleep", "1000"], cfg(parent.child("f")));
    let rb = env.bundle("r", &["sleep", "1000"], cfg(parent.child("r")));
    let (f, r) = (env.id("f"), env.id("r"));
    env.ok(&["run", "-d", "--bundle", fb.to_str().unwrap(), &f]);
    runc.ok(&["run", "-d", "--bundle", rb.to_str().unwrap(), &r]);
    let fpid = ferry_pid(&env, &f);
    let rpid = runc_pid(&runc, &r);
    let (fd, rd) = (dir_of(fpid, "cpu"), dir_of(rpid, "cpu"));
    assert!(fd.starts_with(parent.dir("cpu")), "{}", fd.display());

    // Lowering the period first would put 50000/50000 over the parent's
    // half CPU (v1 refuses it); raising the quota first likewise.
    for args in [
        ["--cpu-period", "50000", "--cpu-quota", "25000"],
        ["--cpu-period", "200000", "--cpu-quota", "100000"],
    ] {
        runc.ok(&[&["update"], &args[..], &[r.as_str()]].concat());
        env.ok(&[&["update"], &args[..], &[f.as_str()]].concat());
        assert_eq!(cfs(&fd), cfs(&rd), "after {args:?}");
    }
    assert_eq!(cfs(&fd), "100000 200000");

    // Realtime period and runtime (v1; v2 has none and ferry says so).
    let rt = ["--cpu-rt-period", "500000", "--cpu-rt-runtime", "10000"];
    if is_v2() {
        let err = env.fail(&[&["update"], &rt[..], &[f.as_str()]].concat());
        assert!(err.contains("realtime") && err.contains("v2"), "{err}");
    } else {
        runc.ok(&[&["update"], &rt[..], &[r.as_str()]].concat());
        env.ok(&[&["update"], &rt[..], &[f.as_str()]].concat());
        for file in ["cpu.rt_period_us", "cpu.rt_runtime_us"] {
            assert_eq!(read(&fd, file), read(&rd, file), "{file}");
        }
        assert_eq!(read(&fd, "cpu.rt_runtime_us"), "10000");
    }

    // cpuset through -r, in runc's template where 0 and "" leave a value.
    let file = env.work.path().join("res.json");
    let res = json!({"cpu": {"shares": 0, "quota": 0, "period": 0, "cpus": "0", "mems": ""},
                     "memory": {"limit": 0}, "blockIO": {"weight": 0}});
    std::fs::write(&file, res.to_string()).unwrap();
    let file = file.to_str().unwrap();
    runc.ok(&["update", "-r", file, &r]);
    env.ok(&["update", "-r", file, &f]);
    let (fs, rs) = (dir_of(fpid, "cpuset"), dir_of(rpid, "cpuset"));
    assert_eq!(read(&fs, "cpuset.cpus"), "0");
    assert_eq!(read(&fs, "cpuset.cpus"), read(&rs, "cpuset.cpus"));
    assert_eq!(cfs(&fd), cfs(&rd), "the zeros left quota and period alone");

    // The rest of runc's flags: applied where the kernel can, else refused.
    let pids = ["--pids-limit", "42"];
    runc.ok(&[&["update"], &pids[..], &[r.as_str()]].concat());
    env.ok(&[&["update"], &pids[..], &[f.as_str()]].concat());
    assert_eq!(read(&dir_of(fpid, "pids"), "pids.max"), "42");
    let (fb, rb) = (dir_of(fpid, "blkio"), dir_of(rpid, "blkio"));
    let weight = [
        "blkio.bfq.weight",
        "blkio.weight",
        "io.bfq.weight",
        "io.weight",
    ]
    .into_iter()
    .find(|w| rb.join(w).exists());
    if let Some(w) = weight {
        runc.ok(&["update", "--blkio-weight", "200", &r]);
        env.ok(&["update", "--blkio-weight", "200", &f]);
        assert_eq!(read(&fb, w), read(&rb, w), "{w}");
    }
    for (flag, word) in [
        ("--kernel-memory", "kernel memory"),
        ("--l3-cache-schema", "resctrl"),
        ("--mem-bw-schema", "resctrl"),
    ] {
        let err = env.fail(&["update", flag, "L3:0=f", &f]);
        assert!(err.contains(flag) && err.contains(word), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }

    // state.json records what was applied.
    let rec = &env.state_file(&f)["config"]["linux"]["resources"];
    assert_eq!(rec["cpu"]["period"], 200000, "{rec}");
    assert_eq!(rec["cpu"]["quota"], 100000, "{rec}");
    assert_eq!(rec["cpu"]["cpus"], "0", "{rec}");
    assert_eq!(rec["pids"]["limit"], 42, "{rec}");
    if !is_v2() {
        assert_eq!(rec["cpu"]["realtimeRuntime"], 10000, "{rec}");
    }
    drop(env);
    drop(runc);
    drop(parent);
}

/// Runs `events` and returns its lines as they come.
fn stream(mut child: Child) -> (Child, mpsc::Receiver<String>) {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Lines until one of type `kind` arrives (or the timeout); all of them.
fn until(rx: &mpsc::Receiver<String>, kind: &str, timeout: Duration) -> Vec<String> {
    let end = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = serde_json::from_str::<Value>(&line).unwrap()["type"] == kind;
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    seen
}

#[test]
fn events_streams_oom_kills_as_runc_does() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else { return };
    let env = Env::new("oom");
    // The hog starts once `events` listens; the shell outlives it.
    let script = "while [ ! -e /go ]; do sleep 0.1; done; /memhog 64 /tmp; sleep 1000";
    let bundle = env.bundle("b", &["sh", "-c", script], |v| {
        let mib32 = 32 << 20;
        v["linux"]["resources"]["memory"] = json!({"limit": mib32, "swap": mib32});
    });
    std::fs::copy(memhog(), bundle.join("rootfs/memhog")).unwrap();
    std::fs::create_dir_all(bundle.join("rootfs/tmp")).unwrap();
    let (f, r) = pair(&env, &runc, &bundle);

    let events = |root: &Path, bin: &Path, id: &str| {
        std::process::Command::new(bin)
            .arg("--root")
            .arg(root)
            .args(["events", "--interval", "1s", id])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (mut fchild, frx) = stream(events(env.root.path(), &ferry_bin(), &f));
    let (mut rchild, rrx) = stream(events(runc.root(), Path::new("runc"), &r));
    // Both are listening once their first statistics arrive.
    assert!(!until(&frx, "stats", Duration::from_secs(30)).is_empty());
    assert!(!until(&rrx, "stats", Duration::from_secs(30)).is_empty());
    // The container sees its rootfs at the bundle's (shared) rootfs.
    std::fs::write(bundle.join("rootfs/go"), "").unwrap();

    let rlines = until(&rrx, "oom", Duration::from_secs(60));
    let flines = until(&frx, "oom", Duration::from_secs(60));
    let expect = json!({"type": "oom", "id": f});
    assert_eq!(
        flines
            .last()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()),
        Some(expect),
        "ferry events: {flines:?}"
    );
    assert!(
        rlines.last().is_some_and(|l| l.contains("\"oom\"")),
        "runc events (the reference): {rlines:?}"
    );
    if !is_v2() {
        // v1 also tells of the pressure the hog caused (around the kill).
        let more = until(&frx, "memoryPressure", Duration::from_secs(3));
        let all: Vec<&String> = flines.iter().chain(&more).collect();
        assert!(
            all.iter()
                .any(|l| l.contains(r#""type":"memoryPressure""#) && l.contains(r#""level":"#)),
            "{all:?}"
        );
    }

    // The stream ends by itself when the container stops.
    env.ok(&["kill", &f, "KILL"]);
    assert!(
        wait_until(Duration::from_secs(15), || fchild
            .try_wait()
            .unwrap()
            .is_some()),
        "ferry events still running after the container stopped"
    );
    assert!(fchild.wait().unwrap().success());
    let _ = rchild.kill();
    let _ = rchild.wait();
}
