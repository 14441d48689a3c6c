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

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// CRIU takes host-wide locks (iptables, its cgroup yard): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        return None;
    }
    let c = ferry::criu::Criu::new().ok()?;
    if let Err(e) = c.require(ferry::criu::MIN_VERSION).and_then(|_| c.check()) {
        skip(&format!("CRIU is not usable here: {e}"));
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file opened for appending, for a child's stdout/stderr (a detached
/// container inherits it; CRIU reattaches append-mode files anywhere).
fn append(p: &Path) -> std::fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
}

/// A "host": a network namespace with its own ferry state root, bundle
/// directory and cgroup parent, and maybe a `ferry serve`.
struct Host {
    ns: NetNs,
    name: &'static str,
    addr: String,
    dir: tempfile::TempDir,
    cgroup_parent: String,
    serve: Option<Child>,
    port: u16,
}

impl Host {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn bundles(&self) -> PathBuf {
        self.dir.path().join("bundles")
    }

    /// `ferry --root ROOT args...` inside this host (`migrate` keeps its
    /// work files in this host's directory).
    fn ferry(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns.name))
            .arg(ferry_bin())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .stdin(Stdio::null());
        if args.first() == Some(&"migrate") {
            c.arg("--work-dir").arg(self.dir.path().join("work"));
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.ferry(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status(&self, id: &str) -> Option<String> {
        let out = self.run(&["state", id]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(String::from)
    }

    /// Starts a detached container from `bundle`, stdio on append-mode
    /// files.
    fn start(&self, id: &str, bundle: &Path) {
        let log = self.dir.path().join(format!("{id}.log"));
        let st = self
            .ferry(&["run", "-d", "--bundle", s(bundle), id])
            .stdout(append(&log))
            .stderr(append(&log))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "ferry run {id}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Starts `ferry serve` here with `creds` (name of a host certificate
    /// in `pki`), allowing shared root filesystems under `shared`.
    fn serve(&mut self, pki: &Path, creds: &str, shared: &Path) {
        let out = self.dir.path().join("serve.out");
        let _ = std::fs::remove_file(&out);
        let listen = format!("{}:0", self.addr);
        let child = self
            .ferry(&[
                "serve",
                "--listen",
                &listen,
                "--bundle-dir",
                s(&self.bundles()),
                "--cgroup-parent",
                &self.cgroup_parent,
                "--allow-shared-rootfs",
                s(shared),
                "--ca",
                s(&pki.join("ca.pem")),
                "--cert",
                s(&pki.join(format!("{creds}.pem"))),
                "--key",
                s(&pki.join(format!("{creds}-key.pem"))),
            ])
            .stdout(append(&out))
            .stderr(append(&self.dir.path().join("serve.err")))
            .spawn()
            .unwrap();
        self.serve = Some(child);
        let mut port = None;
        assert!(
            wait_until(Duration::from_secs(10), || {
                port = std::fs::read_to_string(&out).ok().and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("listening on "))
                        .and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| p.trim().parse().ok())
                });
                port.is_some()
            }),
            "ferry serve did not start: {}",
            std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default()
        );
        self.port = port.unwrap();
    }

    /// Stops `ferry serve` with `sig` (by pid) and waits for it.
    fn stop_serve(&mut self, sig: nix::sys::signal::Signal) {
        if let Some(mut c) = self.serve.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            // nsenter execs ferry: the child is the server itself.
            let _ = nix::sys::signal::kill(pid, sig);
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.wait();
        }
    }

    fn to(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default()
    }

    /// Containers in this host's state root.
    fn containers(&self) -> Vec<String> {
        std::fs::read_dir(self.root())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing of `id` on this host: no state, no cgroup under the parent,
    /// no images of a migration in progress.
    fn assert_clean(&self, id: &str) {
        assert!(
            !self.root().join(id).exists(),
            "state of {id} left on {}",
            self.name
        );
        for d in cgroup_dirs(&format!("{}/{id}", self.cgroup_parent)) {
            assert!(!d.exists(), "cgroup {} left on {}", d.display(), self.name);
        }
        let incoming = self.bundles().join(".incoming");
        let left: Vec<_> = walk(&incoming)
            .into_iter()
            .filter(|p| !p.is_dir())
            .collect();
        assert!(left.is_empty(), "images left on {}: {left:?}", self.name);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop_serve(nix::sys::signal::Signal::SIGTERM);
        for id in self.containers() {
            let _ = self
                .ferry(&["delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // The parent cgroup this host's containers went under.
        for d in cgroup_dirs(&self.cgroup_parent) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Two hosts joined by a veth pair, a CA with a certificate for each, and
/// a work directory for bundles and data.
struct World {
    // Hosts first: they must go before the namespaces' link and the files.
    a: Host,
    b: Host,
    pki: PathBuf,
    work: tempfile::TempDir,
    ids: Vec<String>,
}

fn host(tag: &str, name: &'static str, addr: &str) -> Host {
    let ns = NetNs::new(&format!("m{tag}"));
    Host {
        ns,
        name,
        addr: addr.to_string(),
        dir: tempfile::Builder::new()
            .prefix(&format!("ferry-mig-{name}"))
            .tempdir()
            .unwrap(),
        cgroup_parent: format!("ferry-t{}-{tag}", std::process::id()),
        serve: None,
        port: 0,
    }
}

impl World {
    /// `net` picks the link's subnet (10.251.net.0/24) so tests do not
    /// share addresses.
    fn new(tag: &str, net: u8) -> World {
        let a = host(&format!("{tag}a"), "A", &format!("10.251.{net}.1"));
        let b = host(&format!("{tag}b"), "B", &format!("10.251.{net}.2"));
        let la = format!("mg{}{tag}a", std::process::id() % 100000);
        let lb = format!("mg{}{tag}b", std::process::id() % 100000);
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["link", "add", &la, "type", "veth", "peer", "name", &lb]);
        ip(&["link", "set", &la, "netns", &a.ns.name]);
        ip(&["link", "set", &lb, "netns", &b.ns.name]);
        for (h, l) in [(&a, &la), (&b, &lb)] {
            ip(&[
                "-n",
                &h.ns.name,
                "addr",
                "add",
                &format!("{}/24", h.addr),
                "dev",
                l,
            ]);
            ip(&["-n", &h.ns.name, "link", "set", l, "up"]);
        }
        let work = tempfile::Builder::new()
            .prefix("ferry-mig-work")
            .tempdir()
            .unwrap();
        let pki = work.path().join("pki");
        let st = Command::new(ferry_bin())
            .args(["certs", "--dir", s(&pki), "--host"])
            .arg(format!("a,{}", a.addr))
            .arg("--host")
            .arg(format!("b,{}", b.addr))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        let mut w = World {
            a,
            b,
            pki,
            work,
            ids: Vec::new(),
        };
        let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
        w.b.serve(&pki, "b", &shared);
        w
    }

    fn id(&mut self, name: &str) -> String {
        let id = format!("t{}-{name}", std::process::id());
        self.ids.push(id.clone());
        id
    }

    /// A bundle in the work dir running `args`, with `data` bound at /data.
    fn bundle(
        &self,
        name: &str,
        args: &[&str],
        data: &Path,
        edit: impl FnOnce(&mut Value),
    ) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let st = Command::new("cp")
            .arg("-a")
            .arg(rootfs_template())
            .arg(dir.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success());
        let out = Command::new(ferry_bin())
            .args(["spec", "--bundle", s(&dir)])
            .output()
            .unwrap();
        assert!(out.status.success());
        let path = dir.join("config.json");
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["process"]["terminal"] = Value::Bool(false);
        v["process"]["args"] = json!(args);
        v["root"]["readonly"] = Value::Bool(false);
        add_bind(&mut v, data, "/data");
        edit(&mut v);
        std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        dir
    }

    /// A counter container on A; returns (id, count file).
    fn counter(&mut self, name: &str) -> (String, PathBuf) {
        let id = self.id(name);
        let data = self.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let bundle = self.bundle(name, &["sh", "-c", COUNTER], &data, |_| {});
        self.a.start(&id, &bundle);
        let count = data.join("count");
        assert!(wait_until(Duration::from_secs(5), || read_num(&count)
            .unwrap_or(0)
            >= 3));
        (id, count)
    }

    /// `ferry migrate` from `from` to `to`'s server with `from`'s
    /// certificate (`creds` overrides it).
    fn migrate(
        &self,
        from: &Host,
        to: &Host,
        id: &str,
        extra: &[&str],
        creds: Option<(&Path, &str)>,
    ) -> Output {
        let (dir, name) = creds.unwrap_or((&self.pki, if from.name == "A" { "a" } else { "b" }));
        let target = to.to();
        let ca = dir.join("ca.pem");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        let mut args = vec![
            "migrate",
            id,
            "--to",
            &target,
            "--json",
            "--ca",
            s(&ca),
            "--cert",
            s(&cert),
            "--key",
            s(&key),
        ];
        args.extend_from_slice(extra);
        from.run(&args)
    }

    fn migrate_ok(&self, from: &Host, to: &Host, id: &str, extra: &[&str]) -> Value {
        let out = self.migrate(from, to, id, extra, None);
        assert!(
            out.status.success(),
            "migrate {id} failed: {}\nserve log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            to.serve_log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The counter goes on from at least `from` (never restarts at 1).
fn assert_continues(count: &Path, from: u64) {
    assert!(
        wait_until(Duration::from_secs(5), || read_num(count).unwrap_or(0)
            > from + 3),
        "counter stuck at {:?}, expected it to pass {from}",
        read_num(count)
    );
}

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
    let r = w.migrate_ok(&w.a, &w.b, &id, &[]);
    // The default mode runs on every host: stop-copy, and the report says
    // why not pre-copy (no soft-dirty tracking here; on a stock kernel,
    // which has it, because the source does not implement pre-dump yet).
    assert_eq!(r["mode"], "stop-copy", "{r}");
    let pre = r["not_used"]
        .as_array()
        .and_then(|v| v.iter().find(|n| n["mode"] == "pre-copy"))
        .unwrap_or_else(|| panic!("no reason given for not using pre-copy: {r}"));
    let why = pre["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("soft-dirty") || why.contains("does not implement pre-dump"),
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

#[test]
fn untrusted_certificate_is_refused_before_anything_freezes() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("u", 3);
    let (id, count) = w.counter("c");
    // A certificate for A's address from a CA B does not trust.
    let rogue = w.work.path().join("rogue");
    let st = Command::new(ferry_bin())
        .args(["certs", "--dir", s(&rogue), "--host"])
        .arg(format!("a,{}", w.a.addr))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
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
    // container of the same ID appears on B.
    let incoming = w.b.bundles().join(".incoming");
    let clash = w.b.root().join(&id);
    let watcher = {
        let (incoming, clash, id) = (incoming.clone(), clash.clone(), id.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let seen = walk(&incoming).iter().any(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{id}-")))
                });
                if seen {
                    std::fs::create_dir_all(&clash).unwrap();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            false
        })
    };
    let out = w.migrate(&w.a, &w.b, &id, &[], None);
    assert!(watcher.join().unwrap(), "the migration never reached B");
    let line = failure_line(&out);
    assert!(line.contains("already exists"), "{line}");
    assert!(line.contains("resumed on this host"), "{line}");
    // A runs on, counter intact.
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    let at = read_num(&count).unwrap();
    assert_continues(&count, at);
    // B holds only the clashing directory.
    std::fs::remove_dir(&clash).unwrap();
    w.b.assert_clean(&id);
}

/// A memhog container of `mib` MiB on A; returns (id, data dir).
fn memhog_container(w: &mut World, name: &str, mib: u32) -> (String, PathBuf) {
    let id = w.id(name);
    let data = w.work.path().join(format!("{name}-data"));
    std::fs::create_dir_all(&data).unwrap();
    let m = mib.to_string();
    let bundle = w.bundle(name, &["/memhog", &m, "/data"], &data, |_| {});
    std::fs::copy(memhog(), bundle.join("rootfs/memhog")).unwrap();
    w.a.start(&id, &bundle);
    assert!(
        wait_until(Duration::from_secs(30), || data.join("maxgap").exists()),
        "memhog did not start"
    );
    (id, data)
}

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
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
        wait_until(Duration::from_secs(20), || walk(&incoming).iter().any(
            |p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
                    && p.to_string_lossy().contains(&format!("{id}-"))
            }
        )),
        "no pages arrived on B"
    );
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
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    w.a.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
    // B: no container; a restarted server sweeps the dead one's images.
    assert!(w.b.containers().is_empty());
    let (pki, shared) = (w.pki.clone(), w.work.path().to_path_buf());
    w.b.serve(&pki, "b", &shared);
    w.b.assert_clean(&id);
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
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    w.a.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
    // With the link back, B cleans up (the source's abort or its own
    // dead-peer timeout).
    w.b.ns.exec(&["ip", "link", "set", &link, "up"]);
    assert!(
        wait_until(Duration::from_secs(45), || {
            walk(&w.b.bundles().join(".incoming"))
                .iter()
                .all(|p| p.is_dir())
        }),
        "B kept the images: {}",
        w.b.serve_log()
    );
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
    assert!(
        wait_until(Duration::from_secs(30), || walk(
            &w.b.bundles().join(".incoming")
        )
        .iter()
        .all(|p| p.is_dir())),
        "B kept the images: {}",
        w.b.serve_log()
    );
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
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    w.a.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
}
