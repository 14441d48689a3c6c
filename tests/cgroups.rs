//! Real cgroup tests: they need root and write to /sys/fs/cgroup. Every
//! cgroup is named `ferry-test-<pid>-<n>` and removed by a guard, even when
//! an assertion fails. Only spawned children are ever frozen.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry::cgroups::{Cgroup, CgroupDescriptor, FreezerState};
use oci_spec::runtime::LinuxResources;

#[path = "common/skip.rs"]
mod skip;
use skip::skip;
#[path = "common/cgroup2.rs"]
mod cgroup2;
use cgroup2::{cgroup2_root, Cgroup2Dir};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique() -> String {
    format!(
        "ferry-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            skip("cgroup tests need root (euid is not 0)");
            return;
        }
    };
}

/// Kills the children (after thawing) and removes the cgroup on drop.
struct Guard {
    desc: Option<CgroupDescriptor>,
    children: Vec<Child>,
    /// Top-level names to sweep from every hierarchy (for failed creates).
    names: Vec<String>,
}

impl Guard {
    fn new() -> Guard {
        Guard {
            desc: None,
            children: Vec::new(),
            names: Vec::new(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let cg = self.desc.as_ref().and_then(|d| Cgroup::load(d).ok());
        if let Some(cg) = &cg {
            let _ = cg.thaw();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(cg) = &cg {
            let _ = cg.remove();
        }
        if let Some(d) = &self.desc {
            for dir in d.dirs.values() {
                let _ = fs::remove_dir(dir);
            }
        }
        for name in &self.names {
            for dir in dirs_named(name) {
                remove_tree(&dir);
            }
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                remove_tree(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// Every `<hierarchy>/<name>` that exists under /sys/fs/cgroup (v1 and v2).
fn dirs_named(name: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    if root.join(name).exists() {
        out.push(root.join(name));
    }
    if let Ok(rd) = fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.path().join(name);
            if e.path().is_dir() && p.exists() {
                out.push(p);
            }
        }
    }
    out
}

fn resources(json: serde_json::Value) -> LinuxResources {
    serde_json::from_value(json).expect("valid LinuxResources JSON")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .trim()
        .to_string()
}

/// A shell loop that writes an increasing counter to `file`, whole and
/// renamed into place: frozen between two syscalls, it still leaves a
/// number there, never an empty file.
fn spawn_counter(file: &Path) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!(
            "i=0; while :; do i=$((i+1)); echo $i > {0}.tmp; mv {0}.tmp {0}; sleep 0.01; done",
            file.display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

fn counter(file: &Path) -> u64 {
    fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn proc_state(pid: u32) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("State:"))
        .unwrap_or("")
        .to_string()
}

#[test]
fn limits_tasks_freeze_stats_and_remove() {
    require_root!();
    let name = unique();
    let path = format!("/{name}");
    let mut guard = Guard::new();
    guard.names.push(name.clone());
    let res = resources(serde_json::json!({
        "memory": { "limit": 67108864, "reservation": 33554432, "swap": 134217728 },
        "pids": { "limit": 32 },
        "cpu": { "shares": 512, "quota": 50000, "period": 100000 }
    }));
    let cg = Cgroup::create(&path, Some(&res)).expect("create cgroup");
    guard.desc = Some(cg.descriptor().clone());
    let desc = cg.descriptor().clone();

    for dir in desc.dirs.values() {
        assert!(dir.is_dir(), "{} should exist", dir.display());
        assert!(dir.ends_with(&name), "{}", dir.display());
    }
    if desc.unified {
        let d = &desc.dirs["unified"];
        assert_eq!(read(&d.join("memory.max")), "67108864");
        assert_eq!(read(&d.join("memory.low")), "33554432");
        assert_eq!(read(&d.join("memory.swap.max")), "67108864");
        assert_eq!(read(&d.join("pids.max")), "32");
        assert_eq!(read(&d.join("cpu.max")), "50000 100000");
        assert_eq!(read(&d.join("cpu.weight")), "20");
    } else {
        assert_eq!(
            read(&desc.dirs["memory"].join("memory.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(
            read(&desc.dirs["memory"].join("memory.soft_limit_in_bytes")),
            "33554432"
        );
        assert_eq!(
            read(&desc.dirs["memory"].join("memory.memsw.limit_in_bytes")),
            "134217728"
        );
        assert_eq!(read(&desc.dirs["pids"].join("pids.max")), "32");
        assert_eq!(read(&desc.dirs["cpu"].join("cpu.shares")), "512");
        assert_eq!(read(&desc.dirs["cpu"].join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&desc.dirs["cpu"].join("cpu.cfs_period_us")), "100000");
    }

    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("count");
    let child = spawn_counter(&file);
    let pid = child.id();
    guard.children.push(child);
    cg.add_task(pid as i32).expect("add task");
    assert!(cg.pids().unwrap().contains(&(pid as i32)));
    // Every controller directory lists it, not just one.
    for dir in desc.dirs.values() {
        let procs = read(&dir.join("cgroup.procs"));
        assert!(
            procs.lines().any(|l| l == pid.to_string()),
            "{} lacks {pid}",
            dir.display()
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || counter(&file) > 3),
        "counter never advanced"
    );

    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
    cg.freeze().expect("freeze");
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Frozen);
    if desc.unified {
        let events = read(&desc.dirs["unified"].join("cgroup.events"));
        assert!(events.lines().any(|l| l == "frozen 1"), "{events}");
    } else {
        assert_eq!(read(&desc.dirs["freezer"].join("freezer.state")), "FROZEN");
    }
    let state = proc_state(pid);
    eprintln!("frozen child: {state}");
    assert!(
        state.contains('D') || state.contains('S') || state.contains('T'),
        "frozen child state {state:?}"
    );
    let frozen_at = counter(&file);
    assert!(frozen_at > 3, "no count while frozen: {frozen_at}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&file), frozen_at, "counter advanced while frozen");

    cg.thaw().expect("thaw");
    assert_eq!(cg.freezer_state().unwrap(), FreezerState::Thawed);
    assert!(
        wait_until(Duration::from_secs(5), || counter(&file) > frozen_at + 2),
        "counter did not advance after thaw"
    );

    let stats = cg.stats().expect("stats");
    assert!(stats.cpu.usage.total > 0, "{stats:?}");
    assert!(stats.memory.usage.usage > 0, "{stats:?}");
    assert!(!stats.memory.raw.is_empty(), "{stats:?}");
    assert!(stats.pids.current >= 1, "{stats:?}");
    assert_eq!(stats.memory.usage.limit, 64 << 20, "{stats:?}");
    assert_eq!(stats.pids.limit, 32, "{stats:?}");
    // Both versions report swap as memory+swap, as configured.
    if desc.unified
        || desc.dirs["memory"]
            .join("memory.memsw.limit_in_bytes")
            .exists()
    {
        assert_eq!(stats.memory.swap.limit, 128 << 20, "{stats:?}");
        assert!(
            stats.memory.swap.usage >= stats.memory.usage.usage,
            "{stats:?}"
        );
    }
    // The quota (50 ms per 100 ms) is enforced in periods the kernel counts.
    assert!(stats.cpu.throttling.periods > 0, "{stats:?}");
    assert!(!stats.cpuset.cpus.is_empty(), "{stats:?}");

    // A non-empty cgroup cannot be removed; the error names the directory.
    let err = cg.remove().expect_err("remove of a busy cgroup");
    eprintln!("busy remove: {err}");
    assert!(err.to_string().contains(&name), "{err}");

    let mut child = guard.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || cg
        .pids()
        .map(|p| p.is_empty())
        .unwrap_or(false)));
    cg.remove().expect("remove");
    for dir in desc.dirs.values() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(dirs_named(&name).is_empty());
    // Removing again is fine.
    cg.remove().expect("second remove");
}

#[test]
fn relative_path_lands_below_callers_cgroup_per_controller() {
    require_root!();
    let name = unique();
    let mut guard = Guard::new();
    let cg = Cgroup::create(&name, None).expect("create relative");
    guard.desc = Some(cg.descriptor().clone());
    let desc = cg.descriptor();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap();
    let mut checked = 0;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, p) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let keys: Vec<String> = if ctrls.is_empty() {
            vec!["unified".into()]
        } else {
            ctrls.split(',').map(String::from).collect()
        };
        for key in keys {
            let Some(dir) = desc.dirs.get(&key) else {
                continue;
            };
            let expected_tail = Path::new(p.trim_start_matches('/')).join(&name);
            assert!(
                dir.ends_with(&expected_tail),
                "{key}: {} does not end in {}",
                dir.display(),
                expected_tail.display()
            );
            assert!(dir.is_dir(), "{}", dir.display());
            checked += 1;
        }
    }
    assert!(checked > 0);
    if !desc.unified {
        // This is where hosts differ most: the memory hierarchy.
        let mem_own = own
            .lines()
            .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()))
            .expect("memory line in /proc/self/cgroup");
        let expected = Path::new("/sys/fs/cgroup/memory")
            .join(mem_own.trim_start_matches('/'))
            .join(&name);
        assert_eq!(desc.dirs["memory"], expected);
    }
    cg.remove().expect("remove");
    for dir in desc.dirs.values() {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn descriptor_json_round_trip_loads_the_same_cgroup() {
    require_root!();
    let name = unique();
    let mut guard = Guard::new();
    guard.names.push(name.clone());
    let cg = Cgroup::create(&format!("/{name}"), None).expect("create");
    guard.desc = Some(cg.descriptor().clone());
    let json = serde_json::to_string(cg.descriptor()).unwrap();
    let back: CgroupDescriptor = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, cg.descriptor());
    let loaded = Cgroup::load(&back).expect("load");
    assert_eq!(loaded.descriptor(), cg.descriptor());

    let child = Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id() as i32;
    guard.children.push(child);
    loaded.add_task(pid).expect("add via loaded handle");
    assert_eq!(cg.pids().unwrap(), vec![pid]);
    loaded
        .apply(&resources(serde_json::json!({ "pids": { "limit": 7 } })))
        .expect("apply via loaded handle");
    assert_eq!(cg.stats().unwrap().pids.limit, 7);

    let mut child = guard.children.pop().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wait_until(Duration::from_secs(5), || loaded
        .pids()
        .map(|p| p.is_empty())
        .unwrap_or(false)));
    loaded.remove().expect("remove via loaded handle");
    assert!(dirs_named(&name).is_empty());
}

#[test]
fn refused_resource_is_a_clear_error_and_leaves_nothing() {
    require_root!();
    for (res, needle) in [
        (serde_json::json!({ "cpu": { "quota": 500 } }), "cpu.quota"),
        (serde_json::json!({ "cpu": { "cpus": "9999" } }), "cpu.cpus"),
        (
            serde_json::json!({ "hugepageLimits": [{ "pageSize": "3MB", "limit": 0 }] }),
            "hugepageLimits",
        ),
    ] {
        let name = unique();
        let mut guard = Guard::new();
        guard.names.push(name.clone());
        // Nested, so the cleanup must remove the parent it made too.
        let path = format!("/{name}/inner");
        let err = Cgroup::create(&path, Some(&resources(res.clone()))).expect_err("must fail");
        let msg = err.to_string();
        eprintln!("refused: {msg}");
        assert!(msg.contains(needle), "{res}: {msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
        assert!(
            dirs_named(&name).is_empty(),
            "{res}: left {:?}",
            dirs_named(&name)
        );
    }
}

#[test]
fn add_task_of_missing_process_fails_with_context() {
    require_root!();
    let name = unique();
    let mut guard = Guard::new();
    guard.names.push(name.clone());
    let cg = Cgroup::create(&format!("/{name}"), None).expect("create");
    guard.desc = Some(cg.descriptor().clone());
    // pid_max is at most 2^22, so this pid cannot exist.
    let err = cg.add_task(i32::MAX - 1).expect_err("no such process");
    assert!(err.to_string().contains(&name), "{err}");
    cg.remove().unwrap();
}

/// The eBPF device program, run by the kernel: a shell moved into a cgroup2
/// directory carrying "deny all, allow /dev/zero read" may read /dev/zero,
/// and opening /dev/null or making a node fails; replacing the program (as
/// `update` does) swaps the verdicts without a moment of "allow all".
#[test]
fn device_program_is_enforced_by_the_kernel() {
    require_root!();
    let Some(root) = cgroup2_root() else {
        skip("no cgroup2 hierarchy mounted (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
        return;
    };
    use ferry::cgroups::devices_bpf::{self, Kind, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};
    let made = Cgroup2Dir::make(&root, &format!("ferry-devtest-{}", std::process::id()));
    let dir = made.path.clone();
    let deny_all = Rule {
        allow: false,
        kind: None,
        major: None,
        minor: None,
        access: ACC_READ | ACC_WRITE | ACC_MKNOD,
    };
    let dev = |major, minor, access| Rule {
        allow: true,
        kind: Some(Kind::Char),
        major: Some(major),
        minor: Some(minor),
        access,
    };
    // Exit codes name the check that went wrong.
    let probe = |script: &str| -> i32 {
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs || exit 10\n{script}",
                dir.display()
            ))
            .stdin(Stdio::null())
            .status()
            .unwrap();
        st.code().unwrap_or(-1)
    };
    let tmp = tempfile::tempdir().unwrap();
    let node = tmp.path().join("null");
    devices_bpf::apply(&dir, &[deny_all, dev(1, 5, ACC_READ)]).unwrap();
    let rc = probe(&format!(
        "true </dev/zero || exit 11\n\
         true </dev/null 2>&- && exit 12\n\
         true >/dev/zero 2>&- && exit 13\n\
         mknod {} c 1 3 2>&- && exit 14\n\
         exit 0",
        node.display()
    ));
    let _ = fs::remove_file(&node);
    assert_eq!(
        rc, 0,
        "device rules not enforced as written (exit code = check)"
    );
    // Replaced: now /dev/null is allowed and /dev/zero is not.
    devices_bpf::apply(&dir, &[deny_all, dev(1, 3, ACC_READ | ACC_WRITE)]).unwrap();
    let rc = probe(
        "true </dev/null || exit 11\ntrue >/dev/null || exit 12\ntrue </dev/zero 2>&- && exit 13\nexit 0",
    );
    assert_eq!(
        rc, 0,
        "replaced device program not in force (exit code = check)"
    );
}

/// runc's mapping of `linux.resources` on each version: kernel memory
/// ignored, pids 0 left alone, hugetlb per page size, and on v2 the
/// shares-to-weight conversion, `cpu.max`, memory+swap as swap alone and
/// `unified` keys written as is but only inside the cgroup.
#[test]
fn resources_map_as_runc_does() {
    require_root!();
    let name = unique();
    let mut guard = Guard::new();
    guard.names.push(name.clone());
    let sizes = ferry::cgroups::hugepage_sizes();
    let v2 = ferry::cgroups::CgroupLayout::host().is_v2();
    let mut res = serde_json::json!({
        "memory": { "limit": 67108864, "swap": 67108864, "kernel": 1048576, "reservation": -1 },
        "pids": { "limit": 0 },
        "cpu": { "shares": 2048, "period": 50000 }
    });
    if v2 {
        res["unified"] = serde_json::json!({ "memory.high": "50331648", "pids.max": "9" });
    }
    let hugetlb_here = v2 || Path::new("/sys/fs/cgroup/hugetlb").is_dir();
    if let (Some(size), true) = (sizes.first(), hugetlb_here) {
        // The kernel rounds a limit down to whole pages: 4 MiB of the
        // smallest size.
        res["hugepageLimits"] = serde_json::json!([{ "pageSize": size, "limit": 4 << 20 }]);
    }
    let cg = Cgroup::create(&format!("/{name}"), Some(&resources(res.clone()))).expect("create");
    guard.desc = Some(cg.descriptor().clone());
    let desc = cg.descriptor().clone();
    if v2 {
        let d = &desc.dirs["unified"];
        assert_eq!(read(&d.join("memory.max")), "67108864");
        assert_eq!(read(&d.join("memory.low")), "max");
        // swap == limit: no swap at all.
        if d.join("memory.swap.max").exists() {
            assert_eq!(read(&d.join("memory.swap.max")), "0");
        }
        assert_eq!(read(&d.join("cpu.weight")), "79");
        // A period alone leaves the quota unlimited.
        assert_eq!(read(&d.join("cpu.max")), "max 50000");
        assert_eq!(read(&d.join("memory.high")), "50331648");
        assert_eq!(read(&d.join("pids.max")), "9");
        if let Some(size) = sizes.first() {
            assert_eq!(read(&d.join(format!("hugetlb.{size}.max"))), "4194304");
        }
        // Now a quota alone keeps the period.
        cg.apply(&resources(serde_json::json!({ "cpu": { "quota": 20000 } })))
            .expect("quota");
        assert_eq!(read(&d.join("cpu.max")), "20000 50000");
        // Shares outside what v1 accepts have no weight.
        let err = cg
            .apply(&resources(serde_json::json!({ "cpu": { "shares": 1 } })))
            .expect_err("shares 1")
            .to_string();
        assert!(err.contains("cpu.shares 1 is outside"), "{err}");
        // Keys that would leave the directory, or name no controller file.
        for (key, needle) in [
            ("../cgroup.procs", "no slashes"),
            ("..", "CONTROLLER.PARAMETER"),
            ("memory.no_such_file", "no file"),
        ] {
            let r = resources(serde_json::json!({ "unified": { key: "1" } }));
            let err = cg.apply(&r).expect_err(key).to_string();
            eprintln!("{key}: {err}");
            assert!(err.contains(needle), "{key}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    } else {
        assert_eq!(
            read(&desc.dirs["memory"].join("memory.limit_in_bytes")),
            "67108864"
        );
        assert_eq!(read(&desc.dirs["cpu"].join("cpu.shares")), "2048");
        if let (Some(size), true) = (sizes.first(), hugetlb_here) {
            let f = desc.dirs["hugetlb"].join(format!("hugetlb.{size}.limit_in_bytes"));
            assert_eq!(read(&f), "4194304");
        }
    }
    // pids 0 left the default.
    let pids_dir = desc.dirs.get("pids").or(desc.dirs.get("unified")).unwrap();
    if !v2 {
        assert_eq!(read(&pids_dir.join("pids.max")), "max");
    }
    cg.remove().unwrap();
}

/// `clone3(CLONE_INTO_CGROUP)`: the child is in the cgroup2 directory from
/// its first instruction (no `cgroup.procs` write, which waits for an RCU
/// grace period); a descriptor that is no cgroup directory is refused, and
/// callers then fall back to moving the process.
#[test]
fn a_process_forked_into_a_cgroup2_directory_starts_there() {
    use ferry::cgroups::clone_into::{child_body, fork_into, Forked};
    use std::os::fd::AsFd;
    require_root!();
    let Some(root) = cgroup2_root() else {
        skip("no cgroup2 hierarchy mounted (neither /sys/fs/cgroup nor /sys/fs/cgroup/unified)");
        return;
    };
    let name = unique();
    let mut made = Cgroup2Dir::make(&root, &name);
    let dir = made.path.clone();
    let fd = fs::File::open(&dir).unwrap();
    // SAFETY: the child only waits for its SIGKILL.
    let pid = match unsafe { fork_into(fd.as_fd(), 0) }.expect("clone3 into the cgroup") {
        Forked::Child => loop {
            unsafe { libc::pause() };
        },
        Forked::Parent(pid) => pid,
    };
    made.child = Some(pid);
    let procs = read(&dir.join("cgroup.procs"));
    assert_eq!(procs.trim(), pid.to_string(), "cgroup.procs: {procs}");
    let own = read(Path::new(&format!("/proc/{pid}/cgroup")));
    assert!(
        own.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{name}"))),
        "{own}"
    );
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(pid, None);
    made.child = None;

    // A child that panics ends with 127; it never unwinds into this
    // test's frames (which would go on running the test in the child).
    // SAFETY: the child only panics (this thread's own allocator state and
    // output capture).
    let pid = match unsafe { fork_into(fd.as_fd(), 0) }.expect("clone3 into the cgroup") {
        Forked::Child => child_body(|| panic!("deliberate panic in a forked child")),
        Forked::Parent(pid) => pid,
    };
    made.child = Some(pid);
    let status = nix::sys::wait::waitpid(pid, None).unwrap();
    made.child = None;
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 127));
    drop(made);

    let not_a_cgroup = tempfile::tempdir().unwrap();
    let fd = fs::File::open(not_a_cgroup.path()).unwrap();
    // SAFETY: as above; the kernel refuses before any child exists.
    match unsafe { fork_into(fd.as_fd(), 0) } {
        Ok(Forked::Child) => unsafe { libc::_exit(0) },
        Ok(Forked::Parent(pid)) => {
            let _ = nix::sys::wait::waitpid(pid, None);
            panic!("a directory outside cgroupfs was accepted");
        }
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EBADF), "{e}"),
    }
}
