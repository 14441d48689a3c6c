//! `ferry migrate` / `ferry serve` between two "hosts": two network
//! namespaces this test creates, joined by a veth pair whose addresses
//! exist only inside them. `ferry serve` runs in host B with its own state
//! root, bundle directory and cgroup parent; containers start in host A.
//! Needs root and a working CRIU; skips with the reason otherwise.
//!
//! Commands run in a host with `nsenter --net`, not `ip netns exec`: the
//! latter also remounts /sys for the namespace, which hides the cgroup
//! hierarchies mounted below /sys/fs/cgroup.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hosts::*;
use common::*;
use serde_json::{json, Value};

/// One clear line, then whatever else.
fn failure_line(out: &Output) -> String {
    assert!(!out.status.success(), "unexpectedly succeeded");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = err
        .lines()
        .find(|l| l.starts_with("ferry: "))
        .unwrap_or_else(|| panic!("no `ferry:` line in {err}"))
        .to_string();
    eprintln!("{line}");
    line
}

#[test]
fn counter_moves_to_b_and_back() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("c", 1);
    let (id, count) = w.counter("c");
    let before = read_num(&count).unwrap();
    let r = w.migrate_ok(&w.a, &w.b, &id, &["--keep-images"]);
    // The dump ran inside the container's network namespace (its pages
    // through ferry's relay): no namespace in the images, so no conntrack
    // table walked while the container was frozen.
    assert_eq!(dump_took_netns(&r), (false, false), "{r}");
    // B readied the restore before the freeze (the rootfs is shared).
    assert_eq!(r["restore_prepared"], true, "{r}");
    // The default mode: pre-copy where the kernel tracks dirty memory,
    // else stop-copy, and the report says why not the other.
    let tracks = ferry::criu::Criu::new()
        .unwrap()
        .features()
        .unwrap()
        .mem_track;
    let (chosen, other) = if tracks {
        ("pre-copy", "stop-copy")
    } else {
        ("stop-copy", "pre-copy")
    };
    assert_eq!(r["mode"], chosen, "{r}");
    let not = r["not_used"]
        .as_array()
        .and_then(|v| v.iter().find(|n| n["mode"] == other))
        .unwrap_or_else(|| panic!("no reason given for not using {other}: {r}"));
    let why = not["reason"].as_str().unwrap_or_default();
    if tracks {
        assert!(why.contains("shortens the downtime"), "{r}");
        assert!(r["pre_copy_stop"].as_str().is_some(), "{r}");
    } else {
        assert!(why.contains("soft-dirty"), "{r}");
    }
    assert!(
        r["not_used"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mode"] == "post-copy"),
        "{r}"
    );
    assert_eq!(r["tls"], true);
    assert!(r["pages"]["written"].as_u64().unwrap() > 0, "{r}");
    let downtime = r["timings"]["downtime"].as_f64().unwrap();
    assert!(downtime > 0.0 && downtime <= r["timings"]["total"].as_f64().unwrap());
    // It counts on, on B, from where it was.
    let at = read_num(&count).unwrap();
    assert!(at >= before, "counter went back: {before} -> {at}");
    assert_continues(&count, at);
    assert_eq!(w.b.status(&id).as_deref(), Some("running"));
    // Nothing of it is left on A.
    assert!(w.a.status(&id).is_none());
    assert!(!w.a.root().join(&id).exists());
    for d in default_cgroup_dirs(&id) {
        assert!(!d.exists(), "cgroup {} left on A", d.display());
    }
    assert!(w.b.containers() == vec![id.clone()]);
    w.b.assert_clean_images();

    // And back to A.
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    w.a.serve(&pki, "a", &shared);
    let before = read_num(&count).unwrap();
    w.migrate_ok(&w.b, &w.a, &id, &[]);
    let at = read_num(&count).unwrap();
    assert!(at >= before, "counter went back: {before} -> {at}");
    assert_continues(&count, at);
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    w.b.assert_clean(&id);
    // And to B once more: the bundle B kept from the first visit is
    // replaced.
    let before = read_num(&count).unwrap();
    w.migrate_ok(&w.a, &w.b, &id, &[]);
    assert_continues(&count, before);
    assert_eq!(w.b.status(&id).as_deref(), Some("running"));
    assert!(w.a.containers().is_empty());
}

/// From a migration's kept images (`--keep-images`), which it then
/// removes: whether CRIU ran outside the container's network namespace,
/// and whether it took the namespace into the images (and so walked the
/// conntrack table for it).
fn dump_took_netns(r: &Value) -> (bool, bool) {
    let kept = r["warnings"]
        .as_array()
        .and_then(|w| {
            w.iter()
                .find_map(|w| w.as_str()?.strip_prefix("images kept in "))
        })
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no kept images in {r}"));
    let dump = kept.join("dump");
    let netns: Value =
        serde_json::from_slice(&std::fs::read(dump.join("ferry-netns.json")).unwrap()).unwrap();
    let inside = netns["criu_inside"].as_bool().unwrap();
    let taken = read_text(&dump.join("dump.log")).contains("Will take net namespace");
    std::fs::remove_dir_all(&kept).unwrap();
    (!inside, taken)
}

/// A container that brought its `lo` down migrates with CRIU outside its
/// namespace (CRIU's probes need `lo` up where it runs): the namespace is
/// in the images, and `lo` is down again on B.
#[test]
fn container_with_lo_down_migrates_with_criu_outside() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("lo", 15);
    let id = w.id("lodown");
    let data = w.work.path().join("lodown-data");
    std::fs::create_dir_all(&data).unwrap();
    let script = format!("ip link set lo down && {COUNTER}");
    let bundle = w.bundle("lodown", &["sh", "-c", &script], &data, grant_net_admin);
    w.a.start(&id, &bundle);
    let count = data.join("count");
    assert!(wait_until(Duration::from_secs(10), || read_num(&count).is_some()));
    let r = w.migrate_ok(&w.a, &w.b, &id, &["--keep-images"]);
    assert_eq!(dump_took_netns(&r), (true, true), "{r}");
    assert_continues(&count, read_num(&count).unwrap());
    let lo = w.b.ok(&["exec", &id, "ip", "link", "show", "lo"]);
    assert!(!lo.contains(",UP"), "{lo}");
}

impl Host {
    fn assert_clean_images(&self) {
        let left: Vec<_> = walk(&self.bundles().join(".incoming"))
            .into_iter()
            .filter(|p| !p.is_dir())
            .collect();
        assert!(left.is_empty(), "images left on {}: {left:?}", self.name);
    }
}

#[test]
fn rootfs_ship_into_an_empty_bundle_dir() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("s", 2);
    let (id, count) = w.counter("c");
    // Something the container wrote into its rootfs before the move.
    let r = w.migrate_ok(&w.a, &w.b, &id, &["--rootfs", "ship", "--compress", "zstd"]);
    assert_eq!(r["rootfs"], "ship");
    assert!(r["bytes"]["rootfs_precopy"].as_u64().unwrap() > 0, "{r}");
    // Readied before the freeze, the rootfs checked once its last pass
    // was in.
    assert_eq!(r["restore_prepared"], true, "{r}");
    let bundle = w.b.bundles().join(&id);
    assert!(bundle.join("rootfs/bin/busybox").is_file());
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["root"]["path"], "rootfs");
    let at = read_num(&count).unwrap();
    assert_continues(&count, at);
    let st: Value = serde_json::from_str(&w.b.ok(&["state", &id])).unwrap();
    assert_eq!(st["status"], "running");
    assert_eq!(st["bundle"], s(&bundle));
    assert!(!w.a.root().join(&id).exists());
}

/// A new CA in `dir` and a certificate `name` for `addr` from it.
fn new_pki(dir: &Path, name: &str, addr: &str) {
    let st = Command::new(ferry_bin())
        .args(["certs", "--dir", s(dir), "--host"])
        .arg(format!("{name},{addr}"))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn untrusted_certificate_is_refused_before_anything_freezes() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("u", 3);
    let (id, count) = w.counter("c");
    // A certificate for A's address from a CA B does not trust.
    let rogue = w.work.path().join("rogue");
    new_pki(&rogue, "a", &w.a.addr);
    let at = read_num(&count).unwrap();
    // A certificate from another CA is refused by B at the handshake.
    let out = w.migrate(&w.a, &w.b, &id, &[], Some((&rogue, "a")));
    let line = failure_line(&out);
    assert!(line.contains("certificate"), "{line}");
    assert!(line.contains("kept running"), "{line}");
    assert!(w.b.serve_log().contains("refused connection"));
    // One that does not match the CA given is refused before connecting.
    let mixed = w.work.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(w.pki.join("ca.pem"), mixed.join("ca.pem")).unwrap();
    std::fs::copy(rogue.join("a.pem"), mixed.join("a.pem")).unwrap();
    std::fs::copy(rogue.join("a-key.pem"), mixed.join("a-key.pem")).unwrap();
    let out = w.migrate(&w.a, &w.b, &id, &[], Some((&mixed, "a")));
    let line = failure_line(&out);
    assert!(
        line.contains("does not verify against the trusted CA"),
        "{line}"
    );
    // A work directory others can write to (where the images and the
    // destination's pinned certificate go) is refused.
    let work = w.a.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let line = failure_line(&w.migrate(&w.a, &w.b, &id, &[], None));
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(line.contains("refusing the work directory"), "{line}");
    // B's certificate file renewed on disk while `serve` runs with the old
    // one: the page server would present the new one, which the source
    // pins against the old; refused before the freeze.
    let renewed = w.work.path().join("renewed");
    new_pki(&renewed, "b", &w.b.addr);
    let b_pem = w.pki.join("b.pem");
    let old = std::fs::read(&b_pem).unwrap();
    std::fs::copy(renewed.join("b.pem"), &b_pem).unwrap();
    let out = w.migrate(&w.a, &w.b, &id, &[], None);
    std::fs::write(&b_pem, old).unwrap();
    let line = failure_line(&out);
    assert!(line.contains("changed since this host loaded it"), "{line}");
    assert!(line.contains("kept running"), "{line}");
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    assert_continues(&count, at);
    w.b.assert_clean(&id);
    assert!(w.b.containers().is_empty());
    assert!(!w.b.bundles().join(&id).exists());
}

#[test]
fn restore_failure_on_b_resumes_a() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("r", 4);
    let (id, count) = w.counter("c");
    // Once B has passed its preflight (its images directory exists), a
    // container of the same ID appears on B: B refuses while it readies
    // the restore, before A freezes anything.
    let incoming = w.b.bundles().join(".incoming");
    let clash = w.b.root().join(&id);
    let watcher = {
        let (incoming, clash, id) = (incoming.clone(), clash.clone(), id.clone());
        on_first(
            move || {
                walk(&incoming)
                    .iter()
                    .any(|p| {
                        p.file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{id}-")))
                    })
                    .then_some(())
            },
            move |()| std::fs::create_dir_all(&clash).unwrap(),
        )
    };
    let out = w.migrate(&w.a, &w.b, &id, &[], None);
    assert!(watcher.join().unwrap(), "the migration never reached B");
    let line = failure_line(&out);
    assert!(line.contains("already exists"), "{line}");
    assert!(line.contains("kept running on this host"), "{line}");
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    assert_continues(&count, read_num(&count).unwrap());
    // B holds only the clashing directory.
    std::fs::remove_dir(&clash).unwrap();
    w.b.assert_clean(&id);

    // The criu B readied for the restore dies while A dumps (its pages
    // arriving): the restore fails after the freeze, and A resumes.
    let killer = {
        let (parent, id) = (w.b.cgroup_parent.clone(), id.clone());
        on_first(
            move || {
                let criu = criu_in(&cgroup_dirs(&format!("{parent}/{id}")));
                criu.first()
                    .copied()
                    .filter(|_| pages_arriving(&incoming, &id))
            },
            |pid| {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            },
        )
    };
    let out = w.migrate(&w.a, &w.b, &id, &[], None);
    assert!(killer.join().unwrap(), "B never readied the restore");
    let line = failure_line(&out);
    assert!(line.contains("resumed on this host"), "{line}");
    // A runs on, counter intact.
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    let at = read_num(&count).unwrap();
    assert_continues(&count, at);
    w.b.assert_clean(&id);
}

/// A memhog container of `mib` MiB on A; returns (id, data dir).
fn memhog_container(w: &mut World, name: &str, mib: u32) -> (String, PathBuf) {
    w.memhog(name, mib, &[], "maxgap", Duration::from_secs(30))
}

#[test]
fn memory_of_256_mib_arrives_intact() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("m", 5);
    let (id, data) = memhog_container(&mut w, "hog", 256);
    let sum = read_text(&data.join("sum-before"));
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    assert!(r["pages"]["written"].as_u64().unwrap() >= 256 * 256, "{r}");
    w.b.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(
        read_text(&data.join("sum-after")),
        sum,
        "memory changed in flight"
    );
    eprintln!(
        "256 MiB: downtime {} ms, total {} ms, largest heartbeat gap {} us",
        r["timings"]["downtime"],
        r["timings"]["total"],
        read_text(&data.join("maxgap"))
    );
}

/// Waits until B's page server is receiving `id`'s pages.
fn wait_transfer(w: &World, id: &str) {
    let incoming = w.b.bundles().join(".incoming");
    assert!(
        wait_until(Duration::from_secs(20), || pages_arriving(&incoming, id)),
        "no pages arrived on B"
    );
}

/// Whether `id`'s pages are arriving in B's `incoming` images.
fn pages_arriving(incoming: &Path, id: &str) -> bool {
    walk(incoming).iter().any(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
            && p.to_string_lossy().contains(&format!("{id}-"))
    })
}

/// A thread that looks for `seen` every millisecond for up to 20 s and
/// runs `act` with it the first time it is there; joins to whether it was.
fn on_first<T>(
    mut seen: impl FnMut() -> Option<T> + Send + 'static,
    act: impl FnOnce(T) + Send + 'static,
) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(t) = seen() {
                act(t);
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    })
}

#[test]
fn killed_serve_mid_transfer_resumes_a() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("k", 6);
    let (id, data) = memhog_container(&mut w, "hog", 256);
    let sum = read_text(&data.join("sum-before"));
    let child = migrate_cmd(&w, &id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_transfer(&w, &id);
    w.b.stop_serve(nix::sys::signal::Signal::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let line = failure_line(&out);
    assert!(line.contains("resumed on this host"), "{line}");
    assert_memory_intact_on_a(&w, &id, &data, &sum);
    // B had readied the restore before the freeze: the container it was
    // making is left being created (`delete --force` removes it), and a
    // restarted server removes it with the dead one's images.
    assert_eq!(w.b.containers(), vec![id.clone()]);
    assert_eq!(w.b.status(&id).as_deref(), Some("creating"));
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    w.b.serve(&pki, "b", &shared);
    assert!(w.b.containers().is_empty());
    w.b.assert_clean(&id);
}

/// A runs the memhog container on, its memory as it was (`sum`).
fn assert_memory_intact_on_a(w: &World, id: &str, data: &Path, sum: &str) {
    assert_eq!(w.a.status(id).as_deref(), Some("running"));
    w.a.ok(&["kill", id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
}

/// B removes the images of an aborted migration within `secs` seconds.
fn wait_images_gone_from_b(w: &World, secs: u64) {
    assert!(
        wait_until(Duration::from_secs(secs), || {
            walk(&w.b.bundles().join(".incoming"))
                .iter()
                .all(|p| p.is_dir())
        }),
        "B kept the images: {}",
        w.b.serve_log()
    );
}

#[test]
fn cut_link_mid_transfer_resumes_a() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("l", 7);
    // CRIU's page-server connection has no timeout of its own: a cut link
    // is noticed after TCP's retransmissions (tcp_retries2, per namespace).
    for h in [&w.a, &w.b] {
        let out = h.ns.exec(&["sysctl", "-qw", "net.ipv4.tcp_retries2=4"]);
        assert!(out.status.success());
    }
    let (id, data) = memhog_container(&mut w, "hog", 256);
    let sum = read_text(&data.join("sum-before"));
    let link = format!("mg{}lb", std::process::id() % 100000);
    let child = migrate_cmd(&w, &id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_transfer(&w, &id);
    let out = w.b.ns.exec(&["ip", "link", "set", &link, "down"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.wait_with_output().unwrap();
    let line = failure_line(&out);
    assert!(line.contains("resumed on this host"), "{line}");
    assert_memory_intact_on_a(&w, &id, &data, &sum);
    // With the link back, B cleans up (the source's abort or its own
    // dead-peer timeout).
    w.b.ns.exec(&["ip", "link", "set", &link, "up"]);
    wait_images_gone_from_b(&w, 45);
    w.b.assert_clean(&id);
    assert!(w.b.containers().is_empty());
}

#[test]
fn veth_container_with_a_tcp_server_is_reachable_on_b() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("v", 8);
    let id = w.id("srv");
    let data = w.work.path().join("srv-data");
    std::fs::create_dir_all(&data).unwrap();
    let tag = std::process::id() % 10000;
    let bundle = w.bundle("srv", &["nc", "-ll", "-p", "7000", "-e", "/bin/cat"], &data, |v| {
        v["annotations"] = json!({
            "org.ferry.net.veth": format!(
                "host=fv{tag},container=eth0,address=10.78.8.2/24,host-address=10.78.8.1/24,mac=02:42:0a:4e:08:02"
            )
        });
    });
    w.a.start(&id, &bundle);
    let echo = |h: &Host| -> String {
        let out =
            h.ns.command(&["sh", "-c", "echo ping | busybox nc -w 2 10.78.8.2 7000"])
                .output()
                .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(wait_until(Duration::from_secs(5), || echo(&w.a) == "ping\n"));
    w.migrate_ok(&w.a, &w.b, &id, &[]);
    // Reachable from B's side of the veth, gone from A's.
    assert!(wait_until(Duration::from_secs(5), || echo(&w.b) == "ping\n"));
    let links = w.a.ns.exec(&["ip", "link"]);
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&format!("fv{tag}")),
        "veth left on A"
    );
    let inside = w.b.ok(&["exec", &id, "ip", "addr", "show", "eth0"]);
    assert!(
        inside.contains("10.78.8.2/24") && inside.contains("02:42:0a:4e:08:02"),
        "{inside}"
    );
}

/// `ferry migrate ID` from A to B with A's certificate.
fn migrate_cmd(w: &World, id: &str) -> Command {
    w.a.ferry(&[
        "migrate",
        id,
        "--to",
        &w.b.to(),
        "--ca",
        s(&w.pki.join("ca.pem")),
        "--cert",
        s(&w.pki.join("a.pem")),
        "--key",
        s(&w.pki.join("a-key.pem")),
    ])
}

/// `ferry migrate ... ID` from A to B, in the background, in its own
/// process group.
fn spawn_migrate(w: &World, id: &str) -> Child {
    use std::os::unix::process::CommandExt;
    migrate_cmd(w, id)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A link that silently drops every packet while memory streams (an nft
/// drop rule on B: no reset, no error): CRIU's page-server write fails once
/// the stream has been silent for ferry's bound, the dump fails, and the
/// container runs on at A, memory intact, within seconds instead of the
/// quarter hour TCP's own retries would take.
#[test]
fn silently_dropped_link_mid_memory_resumes_a_within_seconds() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("q", 14);
    let (id, data) = memhog_container(&mut w, "hog", 512);
    let sum = read_text(&data.join("sum-before"));
    let child = spawn_migrate(&w, &id);
    wait_transfer(&w, &id);
    let table = format!("ferry_drop_{}", std::process::id());
    let nft = |args: &str| {
        let out = w.b.ns.exec(&["nft", args]);
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft(&format!(
        "add table inet {table} {{ chain in {{ type filter hook input priority -400; policy drop; }}; }}"
    ));
    let cut = Instant::now();
    let out = child.wait_with_output().unwrap();
    let waited = cut.elapsed();
    nft(&format!("delete table inet {table}"));
    let line = failure_line(&out);
    assert!(line.contains("resumed on this host"), "{line}");
    assert!(
        waited < ferry::criu::page_socket::USER_TIMEOUT + Duration::from_secs(12),
        "the source resumed {waited:?} after the link went silent: {line}"
    );
    assert_memory_intact_on_a(&w, &id, &data, &sum);
    // B gives up on its side too and removes what arrived.
    wait_images_gone_from_b(&w, 90);
    w.b.assert_clean(&id);
}

#[test]
fn ctrl_c_mid_transfer_resumes_a_and_sigterm_on_serve_cleans_b() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("i", 9);
    let (id, data) = memhog_container(&mut w, "hog", 256);
    let sum = read_text(&data.join("sum-before"));
    // Ctrl-C on a terminal: SIGINT to the whole process group, CRIU too.
    let child = spawn_migrate(&w, &id);
    wait_transfer(&w, &id);
    let pgid = nix::unistd::Pid::from_raw(-(child.id() as i32));
    nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let line = failure_line(&out);
    assert!(line.contains("cancelled"), "{line}");
    assert!(line.contains("resumed on this host"), "{line}");
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    wait_images_gone_from_b(&w, 30);
    w.b.assert_clean(&id);

    // SIGTERM to serve during a transfer: it aborts, cleans up and exits.
    let child = spawn_migrate(&w, &id);
    wait_transfer(&w, &id);
    w.b.stop_serve(nix::sys::signal::Signal::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let line = failure_line(&out);
    assert!(line.contains("resumed on this host"), "{line}");
    w.b.assert_clean(&id);
    assert!(w.b.containers().is_empty());
    assert_memory_intact_on_a(&w, &id, &data, &sum);
}

/// The container's tmpfs contents cross before the freeze: a file in
/// /dev/shm nobody touches is not sent again after the dump; one the
/// container keeps rewriting is, as it was at the freeze. Both arrive
/// intact.
#[test]
fn tmpfs_contents_cross_before_the_freeze() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("tmpfs", 9);
    let start = |w: &mut World, name: &str, tick: bool| {
        let id = w.id(name);
        let data = w.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        // Ticking, the count lives in /dev/shm: a copy older than the
        // freeze would make it go back, which the loop sees (its own
        // memory holds the number it wrote last) and marks in /data. It
        // ticks every few milliseconds, so that /dev/shm surely changes
        // between the early copy and the freeze (shipping the early copy
        // alone takes longer).
        let (next, pause) = if tick {
            (
                "j=$(cat /dev/shm/tick); [ \"$j\" -ge $i ] || echo \"$i -> $j\" >> /data/wentback; \
                 i=$((j + 1)); echo $i > /dev/shm/tick",
                "0.005",
            )
        } else {
            ("i=$((i+1))", "0.05")
        };
        let script = format!(
            "head -c 2097152 /dev/urandom > /dev/shm/big; i=0; echo 0 > /dev/shm/tick; \
             while :; do {next}; ln -sf $i /data/count.tmp; mv -f /data/count.tmp /data/count; \
             sleep {pause}; done"
        );
        let bundle = w.bundle(name, &["sh", "-c", &script], &data, |_| {});
        w.a.start(&id, &bundle);
        let count = data.join("count");
        wait_counting(&count);
        let sum = w.a.ok(&["exec", &id, "sha256sum", "/dev/shm/big"]);
        (id, count, sum)
    };
    const BIG: u64 = 2 << 20;

    // Untouched since it was written: sent once, before the freeze.
    let (id, count, sum) = start(&mut w, "still", false);
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    let early = r["bytes"]["early_images"].as_u64().unwrap();
    let after = r["bytes"]["images"].as_u64().unwrap();
    assert!(early >= BIG, "{r}");
    assert!(after < BIG, "the unchanged tmpfs copy was sent again: {r}");
    assert_eq!(w.b.ok(&["exec", &id, "sha256sum", "/dev/shm/big"]), sum);
    assert_continues(&count, read_num(&count).unwrap());
    w.b.ok(&["delete", "-f", &id]);

    // Rewritten until the freeze: sent again after the dump, as frozen.
    let (id, count, sum) = start(&mut w, "ticking", true);
    let before = read_num(&count).unwrap();
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    assert!(r["bytes"]["early_images"].as_u64().unwrap() >= BIG, "{r}");
    assert!(r["bytes"]["images"].as_u64().unwrap() >= BIG, "{r}");
    assert_eq!(w.b.ok(&["exec", &id, "sha256sum", "/dev/shm/big"]), sum);
    let at = read_num(&count).unwrap();
    assert!(
        at >= before,
        "the count kept in /dev/shm went back: {before} -> {at}"
    );
    assert_continues(&count, at);
    let went_back = count.with_file_name("wentback");
    assert!(
        !went_back.exists(),
        "the count kept in /dev/shm went back (as the container saw it): {}",
        read_text(&went_back)
    );
    w.b.ok(&["delete", "-f", &id]);
}
