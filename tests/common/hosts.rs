//! Two "hosts" for migration tests: network namespaces this test creates,
//! joined by a veth pair whose addresses exist only inside them, each with
//! its own ferry state root, bundle directory and cgroup parent, and maybe
//! a `ferry serve`.
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::*;

/// CRIU takes host-wide locks (iptables, its cgroup yard): one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> Option<MutexGuard<'static, ()>> {
    if !is_root() {
        return None;
    }
    let c = ferry::criu::Criu::new().ok()?;
    if let Err(e) = c.require(ferry::criu::MIN_VERSION).and_then(|_| c.check()) {
        super::skip(&format!("CRIU is not usable here: {e}"));
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A file opened for appending, for a child's stdout/stderr (a detached
/// container inherits it; CRIU reattaches append-mode files anywhere).
pub fn append(p: &Path) -> std::fs::File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
}

/// A "host": a network namespace with its own ferry state root, bundle
/// directory and cgroup parent, and maybe a `ferry serve`.
pub struct Host {
    pub ns: NetNs,
    pub name: &'static str,
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub cgroup_parent: String,
    pub serve: Option<Child>,
    pub port: u16,
}

impl Host {
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    pub fn bundles(&self) -> PathBuf {
        self.dir.path().join("bundles")
    }

    /// `ferry --root ROOT args...` inside this host (`migrate` keeps its
    /// work files in this host's directory).
    pub fn ferry(&self, args: &[&str]) -> Command {
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

    pub fn run(&self, args: &[&str]) -> Output {
        self.ferry(args).output().unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ferry {args:?} on {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self, id: &str) -> Option<String> {
        let out = self.run(&["state", id]);
        if !out.status.success() {
            return None;
        }
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(String::from)
    }

    /// Starts a detached container from `bundle`, stdio on append-mode
    /// files.
    pub fn start(&self, id: &str, bundle: &Path) {
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
    pub fn serve(&mut self, pki: &Path, creds: &str, shared: &Path) {
        self.serve_on(pki, creds, shared, 0);
    }

    /// Like [`Host::serve`], on `port` (0: any).
    pub fn serve_on(&mut self, pki: &Path, creds: &str, shared: &Path, port: u16) {
        let out = self.dir.path().join("serve.out");
        let _ = std::fs::remove_file(&out);
        let listen = format!("{}:{port}", self.addr);
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
            wait_until(Duration::from_secs(30), || {
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
    pub fn stop_serve(&mut self, sig: nix::sys::signal::Signal) {
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

    pub fn to(&self) -> String {
        format!("{}:{}", self.addr, self.port)
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.err")).unwrap_or_default()
    }

    /// Containers in this host's state root.
    pub fn containers(&self) -> Vec<String> {
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
    pub fn assert_clean(&self, id: &str) {
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

pub fn walk(dir: &Path) -> Vec<PathBuf> {
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
pub struct World {
    // Hosts first: they must go before the namespaces' link and the files.
    pub a: Host,
    pub b: Host,
    pub pki: PathBuf,
    pub work: tempfile::TempDir,
    pub ids: Vec<String>,
}

pub fn host(tag: &str, name: &'static str, addr: &str) -> Host {
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
    pub fn new(tag: &str, net: u8) -> World {
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

    pub fn id(&mut self, name: &str) -> String {
        let id = format!("t{}-{name}", std::process::id());
        self.ids.push(id.clone());
        id
    }

    /// A bundle in the work dir running `args`, with `data` bound at /data.
    pub fn bundle(
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
    pub fn counter(&mut self, name: &str) -> (String, PathBuf) {
        let id = self.id(name);
        let data = self.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let bundle = self.bundle(name, &["sh", "-c", COUNTER], &data, |_| {});
        self.a.start(&id, &bundle);
        let count = data.join("count");
        wait_counting(&count);
        (id, count)
    }

    /// A memhog container on A running `/memhog ARGS /data...` (size in
    /// MiB first, then memhog's other arguments), started once it wrote
    /// `ready` in its data dir (within `timeout`); returns (id, data dir).
    pub fn memhog(
        &mut self,
        name: &str,
        mib: u32,
        more: &[&str],
        ready: &str,
        timeout: Duration,
    ) -> (String, PathBuf) {
        let id = self.id(name);
        let data = self.work.path().join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        let m = mib.to_string();
        let mut args = vec!["/memhog", &m, "/data"];
        args.extend_from_slice(more);
        let bundle = self.bundle(name, &args, &data, |_| {});
        std::fs::copy(memhog(), bundle.join("rootfs/memhog")).unwrap();
        self.a.start(&id, &bundle);
        assert!(
            wait_until(timeout, || data.join(ready).exists()),
            "memhog did not start"
        );
        (id, data)
    }

    /// `ferry migrate` from `from` to `to`'s server with `from`'s
    /// certificate (`creds` overrides it).
    pub fn migrate(
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

    pub fn migrate_ok(&self, from: &Host, to: &Host, id: &str, extra: &[&str]) -> Value {
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
