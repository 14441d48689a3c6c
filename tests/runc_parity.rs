//! What a caller written for runc sees: the same command against runc
//! (Debian's, the reference) and ferry on the same bundle, compared (as root).
mod common;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::runc::{sleeping, Runc};
use common::*;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Kills the init and waits until both runtimes report it stopped.
fn stop(env: &Env, runc: &Runc, f: &str, r: &str) {
    env.ok(&["kill", f, "KILL"]);
    runc.ok(&["kill", r, "KILL"]);
    assert!(wait_until(Duration::from_secs(10), || {
        env.status(f) == "stopped" && runc.ok(&["state", r]).contains("\"stopped\"")
    }));
}

#[test]
fn kill_0_probes_the_init_as_runc_does() {
    let Some((env, runc, f, r)) = sleeping("kill0") else {
        return;
    };
    // Engines probe liveness with signal 0: success while it runs ...
    assert!(runc.run(&["kill", &r, "0"]).status.success());
    assert!(env.run(&["kill", &f, "0"]).status.success());
    assert_eq!(env.status(&f), "running");
    // ... and failure once it is gone.
    stop(&env, &runc, &f, &r);
    assert!(!runc.run(&["kill", &r, "0"]).status.success());
    let err = env.fail(&["kill", &f, "0"]);
    assert!(err.contains("stopped"), "{err}");
}

#[test]
fn ps_passes_its_options_to_ps_and_keeps_the_container_lines() {
    let Some((env, runc, f, r)) = sleeping("ps") else {
        return;
    };
    for args in [vec![], vec!["-e", "-x"], vec!["-o", "pid,stat,comm"]] {
        let (mut fa, mut ra) = (vec!["ps", f.as_str()], vec!["ps", r.as_str()]);
        fa.extend(&args);
        ra.extend(&args);
        let (ours, theirs) = (env.ok(&fa), runc.ok(&ra));
        // Same header, and exactly one line: the container's sleep.
        assert_eq!(ours.lines().next(), theirs.lines().next(), "{args:?}");
        assert_eq!(ours.lines().count(), 2, "{args:?}: {ours}");
        assert_eq!(theirs.lines().count(), 2, "{args:?}: {theirs}");
        assert!(ours.lines().nth(1).unwrap().contains("sleep"), "{ours}");
    }
    // Without a PID column there is nothing to match: both refuse.
    assert!(!runc.run(&["ps", &r, "-o", "comm"]).status.success());
    let err = env.fail(&["ps", &f, "-o", "comm"]);
    assert!(err.contains("PID column"), "{err}");

    // A stopped container has no processes: the header alone, success.
    stop(&env, &runc, &f, &r);
    let (ours, theirs) = (env.ok(&["ps", &f]), runc.ok(&["ps", &r]));
    assert_eq!(ours, theirs);
    assert_eq!(ours.lines().count(), 1, "{ours}");
    let pids: Vec<i32> = serde_json::from_str(&env.ok(&["ps", "--format", "json", &f])).unwrap();
    assert!(pids.is_empty());
}

#[test]
fn list_has_runcs_columns() {
    let Some((env, runc, f, r)) = sleeping("list") else {
        return;
    };
    let (ours, theirs) = (env.ok(&["list"]), runc.ok(&["list"]));
    // Same columns (their widths follow the cells: runc trims the trailing
    // zeros of the creation time's nanoseconds).
    let header = |t: &str| {
        t.lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(header(&ours), header(&theirs));
    let row: Vec<&str> = ours.lines().nth(1).unwrap().split_whitespace().collect();
    let theirs: Vec<&str> = theirs.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[0], f);
    assert_eq!(theirs[0], r);
    // Same status and owner columns; the pid is the init's.
    assert_eq!((row[2], row[5]), (theirs[2], theirs[5]));
    assert_eq!(row[1], env.state(&f)["pid"].to_string());
}

#[test]
fn run_keep_leaves_the_stopped_container_as_runc_does() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else {
        return;
    };
    let env = Env::new("keep");
    let bundle = env.bundle("b", &["sh", "-c", "exit 3"], |_| {});
    let bundle = bundle.to_str().unwrap();
    let (f, r) = (env.id("f"), env.id("r"));
    let ours = env.run(&["run", "--keep", "--bundle", bundle, &f]);
    let theirs = runc.run(&["run", "--keep", "--bundle", bundle, &r]);
    assert_eq!(ours.status.code(), Some(3), "{}", text(&ours.stderr));
    assert_eq!(theirs.status.code(), Some(3), "{}", text(&theirs.stderr));
    assert_eq!(env.status(&f), "stopped");
    assert!(runc.ok(&["state", &r]).contains("\"stopped\""));
    env.ok(&["delete", &f]);
    env.assert_gone(&f);

    // Without --keep the container is gone once it exits.
    let g = env.id("g");
    assert_eq!(
        env.run(&["run", "--bundle", bundle, &g]).status.code(),
        Some(3)
    );
    env.assert_gone(&g);
}

#[test]
fn spec_writes_runcs_default_config() {
    let Some(_runc) = Runc::new() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ferry"), dir.path().join("runc"));
    for d in [&ours, &theirs] {
        std::fs::create_dir(d).unwrap();
    }
    let out = std::process::Command::new(ferry_bin())
        .args(["spec", "--bundle"])
        .arg(&ours)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = std::process::Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&theirs)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ours = std::fs::read_to_string(ours.join("config.json")).unwrap();
    let theirs = std::fs::read_to_string(theirs.join("config.json")).unwrap();
    // Byte for byte, but for the hostname each runtime names after itself.
    assert_eq!(
        ours.replace("\"hostname\": \"ferry\"", "\"hostname\": \"runc\""),
        theirs
    );
    // A second spec does not overwrite the first, as with runc.
    let again = std::process::Command::new(ferry_bin())
        .args(["spec", "--bundle"])
        .arg(dir.path().join("ferry"))
        .output()
        .unwrap();
    assert!(!again.status.success());
}

/// Every key path of a JSON value (objects walked, arrays as leaves).
fn key_paths(v: &serde_json::Value, at: &str, out: &mut std::collections::BTreeSet<String>) {
    if let serde_json::Value::Object(m) = v {
        for (k, child) in m {
            let p = format!("{at}.{k}");
            out.insert(p.clone());
            key_paths(child, &p, out);
        }
    }
}

#[test]
fn events_stats_have_runcs_fields_and_units() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else {
        return;
    };
    let env = Env::new("stats");
    // Limits of every kind, so both report the same limits; a shell that
    // reads a file, so both have counted some cpu time and memory.
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "cat /bin/busybox >/dev/null; sleep 1000"],
        |v| {
            v["linux"]["resources"]["memory"] =
                serde_json::json!({"limit": 67108864, "swap": 134217728});
            v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 40});
            v["linux"]["resources"]["cpu"] = serde_json::json!({"quota": 50000, "period": 100000});
        },
    );
    let bundle = bundle.to_str().unwrap();
    let (f, r) = (env.id("f"), env.id("r"));
    env.ok(&["run", "-d", "--bundle", bundle, &f]);
    runc.ok(&["run", "-d", "--bundle", bundle, &r]);
    let parse = |t: String| -> serde_json::Value { serde_json::from_str(t.trim()).unwrap() };
    // Wait until both inits have read the file and sleep (the same
    // number of processes: one caught while `cat` still ran has one more).
    let busy = |v: &serde_json::Value| v["data"]["cpu"]["usage"]["total"].as_u64() > Some(0);
    let (mut ours, mut theirs) = (serde_json::Value::Null, serde_json::Value::Null);
    assert!(wait_until(Duration::from_secs(10), || {
        ours = parse(env.ok(&["events", "--stats", &f]));
        theirs = parse(runc.ok(&["events", "--stats", &r]));
        busy(&ours) && busy(&theirs) && ours["data"]["pids"] == theirs["data"]["pids"]
    }));
    eprintln!("ferry: {ours}\nrunc:  {theirs}");
    assert_eq!(
        (ours["type"].as_str(), theirs["type"].as_str()),
        (Some("stats"), Some("stats"))
    );
    assert_eq!(ours["id"], f.as_str());
    let (o, t) = (&ours["data"], &theirs["data"]);

    // The same fields, but for those runc leaves out when zero (two
    // containers' counters differ): blkio entries, peaks, throttled time.
    let (mut po, mut pt) = (Default::default(), Default::default());
    key_paths(o, "", &mut po);
    key_paths(t, "", &mut pt);
    let omitempty = [
        "total",
        "percpu",
        "percpu_kernel",
        "percpu_user",
        "usage",
        "max",
        "cache",
        "periods",
        "throttledPeriods",
        "throttledTime",
    ];
    // runc 1.1 reads no cpuset files on v2; ferry reports the effective
    // cpus and mems there too.
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let ours_only_v2 = [".cpuset.cpus", ".cpuset.mems"];
    for p in po.symmetric_difference(&pt) {
        let last = p.rsplit('.').next().unwrap();
        let v2_extra = v2 && po.contains(p) && ours_only_v2.contains(&p.as_str());
        assert!(
            v2_extra || p.starts_with(".blkio") || omitempty.contains(&last),
            "{p} only in {}",
            if po.contains(p) { "ferry's" } else { "runc's" }
        );
    }
    // Same limits, same units, same cpuset, same memory.stat keys.
    assert_eq!(o["memory"]["usage"]["limit"], 64u64 << 20);
    assert_eq!(o["memory"]["usage"]["limit"], t["memory"]["usage"]["limit"]);
    assert_eq!(o["memory"]["swap"]["limit"], t["memory"]["swap"]["limit"]);
    assert_eq!(o["pids"], t["pids"]);
    assert_eq!(o["pids"]["limit"], 40);
    let mut cpuset = o["cpuset"].clone();
    if v2 {
        assert!(!cpuset["cpus"].as_array().unwrap().is_empty(), "{cpuset}");
        for k in ["cpus", "mems"] {
            cpuset.as_object_mut().unwrap().remove(k);
        }
    }
    assert_eq!(cpuset, t["cpuset"]);
    assert_eq!(o["hugetlb"], t["hugetlb"]);
    assert_eq!(o["intel_rdt"], t["intel_rdt"]);
    assert_eq!(o["network_interfaces"], t["network_interfaces"]);
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v["memory"]["raw"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    assert!(!keys(o).is_empty());
    assert_eq!(keys(o), keys(t));
    // Nanoseconds and bytes: a shell that read a megabyte file used well
    // over a microsecond and has more than a page charged, on both.
    for v in [o, t] {
        assert!(v["cpu"]["usage"]["total"].as_u64().unwrap() > 1_000, "{v}");
        assert!(
            v["memory"]["usage"]["usage"].as_u64().unwrap() > 4096,
            "{v}"
        );
    }
    if let Some(per) = t["cpu"]["usage"]["percpu"].as_array() {
        assert_eq!(
            o["cpu"]["usage"]["percpu"].as_array().unwrap().len(),
            per.len()
        );
    }
}

/// The `_ses.<id>` session keyrings the kernel lists.
fn session_keyrings() -> String {
    std::fs::read_to_string("/proc/keys")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" _ses."))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The permission word and name of `_ses.<id>`, if the kernel lists it.
fn keyring_of(id: &str) -> Option<(String, String)> {
    session_keyrings().lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(8).map(|n| n.trim_end_matches(':')) == Some(&format!("_ses.{id}")))
            .then(|| (f[3].to_string(), f[8].to_string()))
    })
}

#[test]
fn each_container_gets_its_own_session_keyring_as_with_runc() {
    let Some((env, runc, f, r)) = sleeping("keyring") else {
        return;
    };
    let (ours, theirs) = (keyring_of(&f), keyring_of(&r));
    let keys = session_keyrings();
    assert!(ours.is_some(), "no _ses.{f} keyring: {keys}");
    assert!(theirs.is_some(), "no _ses.{r} keyring: {keys}");
    // Made searchable the same way.
    assert_eq!(ours.unwrap().0, theirs.unwrap().0, "{keys}");
    // --no-new-keyring keeps the caller's.
    let bundle = env.bundle("nk", &["sleep", "1000"], |_| {});
    let g = env.id("g");
    env.ok(&[
        "run",
        "-d",
        "--no-new-keyring",
        "--bundle",
        bundle.to_str().unwrap(),
        &g,
    ]);
    assert_eq!(keyring_of(&g), None, "{}", session_keyrings());
    stop(&env, &runc, &f, &r);
}

#[test]
fn preserve_fds_passes_the_callers_fds_as_runc_does() {
    if !is_root() {
        return;
    }
    let Some(runc) = Runc::new() else {
        return;
    };
    let env = Env::new("pfds");
    let file = env.work.path().join("fd3");
    std::fs::write(&file, "from-fd-3\n").unwrap();
    let bundle = env.bundle(
        "b",
        &["sh", "-c", "cat <&3; { cat <&4; } 2>&1 || true"],
        |_| {},
    );
    let (f, r) = (env.id("f"), env.id("r"));
    // `sh` opens fd 3 on the file for the runtime it starts.
    let with_fd3 = |runtime: &[&str], id: &str| -> Output {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(r#""$@" 3<"$FD3""#)
            .arg("sh")
            .args(runtime)
            .args(["run", "--preserve-fds", "1", "--bundle"])
            .arg(&bundle)
            .arg(id)
            .env("FD3", &file)
            .stdin(Stdio::null());
        c.output().unwrap()
    };
    let ferry = ferry_bin();
    let root = env.root.path().to_str().unwrap();
    let ours = with_fd3(&[ferry.to_str().unwrap(), "--root", root], &f);
    let theirs = with_fd3(&["runc", "--root", runc.root().to_str().unwrap()], &r);
    assert!(ours.status.success(), "{}", text(&ours.stderr));
    assert!(theirs.status.success(), "{}", text(&theirs.stderr));
    let (o, t) = (text(&ours.stdout), text(&theirs.stdout));
    assert!(o.starts_with("from-fd-3\n"), "{o}");
    // fd 4 was not preserved: the program does not have it, in both.
    assert!(o.contains("Bad file descriptor"), "{o}");
    assert_eq!(o, t);
    // Asked to pass an fd it was not given: refused before anything runs.
    let g = env.id("g");
    let out = Command::new(&ferry)
        .args(["--root", root, "run", "--preserve-fds", "2", "--bundle"])
        .arg(&bundle)
        .arg(&g)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--preserve-fds 2: fd 3 was not passed"),
        "{err}"
    );
    env.assert_gone(&g);
}
