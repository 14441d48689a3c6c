//! Real veth tests: they need root, `unshare`, `nsenter`, `ip` and `ping`.
//! Both ends of every pair live in network namespaces the test makes itself
//! (held by `unshare --net sleep 100` processes), so no address is ever
//! assigned in the host's namespace. Killing the holders tears everything
//! down even when an assertion fails.
use std::fs;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ferry::network::{self, VethConfig};

#[path = "common/skip.rs"]
mod skip;
use skip::skip;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            skip("veth tests need root (euid is not 0)");
            return;
        }
    };
}

/// A unique number per test case, used in names and the 10.250.n.0/30 net.
fn unique() -> (String, u8) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let tag = format!("{}x{n}", std::process::id() % 100_000);
    (tag, (n % 64) as u8 * 4)
}

/// A process holding a fresh network namespace.
struct Holder(Child);

impl Holder {
    fn new() -> Holder {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "100"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare --net");
        let h = Holder(child);
        let own = fs::read_link("/proc/self/ns/net").unwrap();
        let start = Instant::now();
        loop {
            let theirs = fs::read_link(format!("/proc/{}/ns/net", h.pid()));
            if matches!(&theirs, Ok(t) if *t != own) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "holder never entered a new netns"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        h
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
    fn run(&self, cmd: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg(format!("--net=/proc/{}/ns/net", self.pid()))
            .args(cmd)
            .output()
            .expect("nsenter")
    }
    fn ok(&self, cmd: &[&str]) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    fn has_link(&self, name: &str) -> bool {
        self.run(&["ip", "link", "show", "dev", name])
            .status
            .success()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the pair on drop (the holders' deaths would too).
struct VethGuard<'a> {
    cfg: VethConfig,
    host: &'a Holder,
}

impl Drop for VethGuard<'_> {
    fn drop(&mut self) {
        let _ = network::remove_in(&self.cfg, Some(self.host.pid()));
    }
}

fn config(tag: &str, net: u8, mac: Option<&str>) -> VethConfig {
    VethConfig {
        host_if: format!("fh{tag}"),
        container_if: format!("fc{tag}"),
        address: Some(format!("10.250.{net}.2/30")),
        host_address: Some(format!("10.250.{net}.1/30")),
        mac: mac.map(String::from),
    }
}

#[test]
fn pair_between_two_test_namespaces_pings_and_counts() {
    require_root!();
    let (tag, net) = unique();
    let host = Holder::new();
    let ct = Holder::new();
    let mac = "02:fe:00:00:12:34";
    let cfg = config(&tag, net, Some(mac));
    let _guard = VethGuard {
        cfg: cfg.clone(),
        host: &host,
    };
    network::create_in(&cfg, ct.pid(), Some(host.pid())).expect("create veth");

    // Container end: renamed, MAC, address, up; loopback up.
    let link = ct.ok(&["ip", "-o", "link", "show", "dev", &cfg.container_if]);
    assert!(link.contains(mac), "{link}");
    assert!(link.contains("state UP") || link.contains(",UP"), "{link}");
    let addr = ct.ok(&["ip", "-o", "addr", "show", "dev", &cfg.container_if]);
    assert!(addr.contains(&format!("10.250.{net}.2/30")), "{addr}");
    let lo = ct.ok(&["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains(",UP"), "{lo}");
    // Host end stays in the host namespace, addressed and up.
    assert!(!ct.has_link(&cfg.host_if));
    assert!(!host.has_link(&cfg.container_if));
    let haddr = host.ok(&["ip", "-o", "addr", "show", "dev", &cfg.host_if]);
    assert!(haddr.contains(&format!("10.250.{net}.1/30")), "{haddr}");

    let before = network::host_stats_in(&cfg, Some(host.pid())).unwrap();
    let ct_ip = format!("10.250.{net}.2");
    let host_ip = format!("10.250.{net}.1");
    host.ok(&["ping", "-c", "2", "-i", "0.2", "-W", "2", &ct_ip]);
    ct.ok(&["ping", "-c", "1", "-W", "2", &host_ip]);
    let after = network::host_stats_in(&cfg, Some(host.pid())).unwrap();
    assert!(
        after.tx_packets >= before.tx_packets + 2,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.rx_packets >= before.rx_packets + 2,
        "{before:?} -> {after:?}"
    );
    assert!(after.rx_bytes > before.rx_bytes && after.tx_bytes > before.tx_bytes);
    assert_eq!(after.name, cfg.host_if);

    // The ARP neighbour seen from the host end carries the configured MAC.
    let neigh = host.ok(&["ip", "neigh", "show", "dev", &cfg.host_if]);
    assert!(neigh.contains(mac), "{neigh}");

    network::remove_in(&cfg, Some(host.pid())).expect("remove");
    assert!(!host.has_link(&cfg.host_if));
    assert!(!ct.has_link(&cfg.container_if));
    // Removing again is fine.
    network::remove_in(&cfg, Some(host.pid())).expect("second remove");
}

#[test]
fn failure_after_the_pair_exists_removes_it() {
    require_root!();
    let (tag, _) = unique();
    let host = Holder::new();
    let ct = Holder::new();
    // IPv6 is off in the host-side namespace, so its address cannot be set
    // after the pair was made and the container end configured.
    host.ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
    host.ok(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    let cfg = VethConfig {
        host_if: format!("fh{tag}"),
        container_if: format!("fc{tag}"),
        address: Some("fd00:fe::2/64".into()),
        host_address: Some("fd00:fe::1/64".into()),
        mac: None,
    };
    let _guard = VethGuard {
        cfg: cfg.clone(),
        host: &host,
    };
    let err = network::create_in(&cfg, ct.pid(), Some(host.pid())).expect_err("must fail");
    let msg = err.to_string();
    eprintln!("post-create failure: {msg}");
    assert!(msg.contains("fd00:fe::1/64"), "{msg}");
    assert!(msg.contains(&cfg.host_if), "{msg}");
    assert!(!host.has_link(&cfg.host_if), "host end left behind");
    assert!(!ct.has_link(&cfg.container_if), "container end left behind");
}

#[test]
fn clashing_names_and_missing_process_fail_cleanly() {
    require_root!();
    let (tag, net) = unique();
    let host = Holder::new();
    let ct = Holder::new();
    // The container namespace already has "lo".
    let mut cfg = config(&tag, net, None);
    cfg.container_if = "lo".into();
    let err = network::create_in(&cfg, ct.pid(), Some(host.pid())).expect_err("clash");
    eprintln!("clash: {err}");
    assert!(err.to_string().contains("creating the veth pair"), "{err}");
    assert!(!host.has_link(&cfg.host_if));

    // The host end name already exists on the host side.
    let mut cfg = config(&tag, net, None);
    cfg.host_if = "lo".into();
    let err = network::create_in(&cfg, ct.pid(), Some(host.pid())).expect_err("clash");
    assert!(err.to_string().contains("already exists"), "{err}");

    // No such container process.
    let cfg = config(&tag, net, None);
    let err = network::create_in(&cfg, i32::MAX - 1, Some(host.pid())).expect_err("no pid");
    assert!(err.to_string().contains("network namespace"), "{err}");
    assert!(!host.has_link(&cfg.host_if));
}

#[test]
fn host_stats_reads_sysfs_counters() {
    // Reads the loopback's counters of the caller's namespace; changes nothing.
    let cfg = VethConfig {
        host_if: "lo".into(),
        container_if: "unused".into(),
        address: None,
        host_address: None,
        mac: None,
    };
    let s = network::host_stats(&cfg).expect("lo counters");
    assert_eq!(s.name, "lo");
    let rx: u64 = fs::read_to_string("/sys/class/net/lo/statistics/rx_packets")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(s.rx_packets <= rx);
    let missing = VethConfig {
        host_if: "fnoexist0".into(),
        ..cfg
    };
    let err = network::host_stats(&missing).expect_err("missing interface");
    assert!(err.to_string().contains("fnoexist0"), "{err}");
}

#[test]
fn host_side_lock_holds_traffic_until_unlocked() {
    require_root!();
    for method in [network::LockMethod::Nftables, network::LockMethod::Iptables] {
        let (tag, net) = unique();
        let host = Holder::new();
        let ct = Holder::new();
        let cfg = config(&tag, net, None);
        let _guard = VethGuard {
            cfg: cfg.clone(),
            host: &host,
        };
        network::create_in(&cfg, ct.pid(), Some(host.pid())).expect("create veth");
        let ct_ip = format!("10.250.{net}.2");
        let ping = || {
            host.run(&["ping", "-c", "1", "-W", "1", &ct_ip])
                .status
                .success()
        };
        assert!(ping(), "{method:?}: no traffic before the lock");
        network::lock_in(&cfg, method, Some(host.pid())).expect("lock");
        assert!(network::is_locked_in(&cfg, method, Some(host.pid())));
        assert!(!ping(), "{method:?}: traffic passed the lock");
        if method == network::LockMethod::Nftables {
            // What ferry makes over netlink reads as the table `nft` would make.
            let out = host.run(&["nft", "list", "ruleset"]);
            let rules = String::from_utf8_lossy(&out.stdout);
            let i = &cfg.host_if;
            for want in [
                format!("hook input priority raw; policy accept;\n\t\tiifname \"{i}\" drop"),
                format!("hook forward priority raw; policy accept;\n\t\tiifname \"{i}\" drop\n\t\toifname \"{i}\" drop"),
                format!("hook output priority raw; policy accept;\n\t\toifname \"{i}\" drop"),
            ] {
                assert!(rules.contains(&want), "{want:?} not in:\n{rules}");
            }
            // Locking twice is refused, the first lock left as it was.
            assert!(network::lock_in(&cfg, method, Some(host.pid())).is_err());
            assert!(network::is_locked_in(&cfg, method, Some(host.pid())));
        }
        network::unlock_in(&cfg, method, Some(host.pid())).expect("unlock");
        assert!(!network::is_locked_in(&cfg, method, Some(host.pid())));
        assert!(ping(), "{method:?}: traffic still held after unlock");
        // Unlocking twice is fine.
        network::unlock_in(&cfg, method, Some(host.pid())).expect("second unlock");
        if method == network::LockMethod::Iptables {
            // All four rules go in one `iptables-restore`; a lock taken
            // twice, or a rule of it left alone, is removed all the same.
            let drops = || {
                let out = host.run(&["iptables", "-S"]);
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(&cfg.host_if) && l.ends_with("-j DROP"))
                    .count()
            };
            network::lock_in(&cfg, method, Some(host.pid())).expect("lock");
            assert_eq!(drops(), 4);
            network::lock_in(&cfg, method, Some(host.pid())).expect("lock again");
            assert_eq!(drops(), 8);
            network::unlock_in(&cfg, method, Some(host.pid())).expect("unlock both");
            assert_eq!(drops(), 0);
            let out = host.run(&[
                "iptables",
                "-I",
                "FORWARD",
                "-o",
                &cfg.host_if,
                "-j",
                "DROP",
            ]);
            assert!(out.status.success());
            assert_eq!(drops(), 1);
            network::unlock_in(&cfg, method, Some(host.pid())).expect("unlock a part");
            assert_eq!(drops(), 0);
            assert!(ping(), "traffic held after the partial unlock");
        }
    }
}
