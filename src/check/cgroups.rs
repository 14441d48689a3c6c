//! What works in the cgroup ferry puts containers in, measured in a
//! throwaway cgroup made where a container's would go (`ferry/<name>`
//! below the caller's cgroup): the controllers it really gets, a freeze
//! of a process in it, a device rule the kernel enforces (v1 devices
//! controller, v2 eBPF program), and a cgroup namespace whose root is it.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use oci_spec::runtime::LinuxResources;

use super::{cap, Capability};
use crate::cgroups::{Cgroup, FreezerState};

pub const CGROUP_FREEZER: &str = "cgroup-freezer";
pub const CGROUP_DEVICES: &str = "cgroup-devices";
pub const CGROUP_NAMESPACE: &str = "cgroup-namespace";

/// The controllers a container's cgroup gets here, how a new process
/// joins it ([`join`]), and the capabilities.
pub fn probe() -> (Vec<String>, Option<String>, Vec<Capability>) {
    let fail = |why: String| {
        [CGROUP_FREEZER, CGROUP_DEVICES, CGROUP_NAMESPACE]
            .map(|n| cap(n, false, why.clone()))
            .to_vec()
    };
    let path = format!("ferry/check-{}", std::process::id());
    let cg = match Cgroup::create(&path, None) {
        Ok(cg) => cg,
        Err(e) => return (Vec::new(), None, fail(format!("cannot make a cgroup: {e}"))),
    };
    let dirs: Vec<PathBuf> = {
        let mut d: Vec<PathBuf> = cg.descriptor().dirs.values().cloned().collect();
        d.sort();
        d.dedup();
        d
    };
    let controllers = controllers(&cg);
    let join = join(&cg);
    let caps = vec![freezer(&cg), devices(&cg, &dirs), namespace(&dirs)];
    let _ = cg.remove();
    (controllers, Some(join), caps)
}

/// How a container's init, an exec'd process or a restore's CRIU gets into
/// `cg`: forked into it (cgroup v2, tried here with a child that exits at
/// once), or moved with a `cgroup.procs` write, which after a quiet spell
/// waits for an RCU grace period unless a cgroup hierarchy is mounted with
/// `favordynmods` (measured in the stock-kernel guest: 14-29 ms without,
/// about 1 ms with).
fn join(cg: &Cgroup) -> String {
    use crate::cgroups::clone_into::{fork_into, Forked};
    use std::os::fd::AsFd;
    let moved = match favordynmods() {
        true => "moved (cgroup.procs write), without waiting: a cgroup hierarchy is mounted with favordynmods",
        false => "moved (cgroup.procs write), which waits for an RCU grace period (no cgroup hierarchy is mounted with favordynmods)",
    };
    let Some(dir) = cg.clone_target() else {
        return moved.into();
    };
    // SAFETY: the child only exits.
    match unsafe { fork_into(dir.as_fd(), 0) } {
        Ok(Forked::Child) => unsafe { libc::_exit(0) },
        Ok(Forked::Parent(pid)) => {
            let _ = nix::sys::wait::waitpid(pid, None);
            "forked into it (clone3 CLONE_INTO_CGROUP), no move".into()
        }
        Err(e) => format!("{moved}; forking into it failed: {e}"),
    }
}

/// Whether a cgroup hierarchy is mounted with `favordynmods`, which keeps
/// the kernel's global `cgroup_threadgroup_rwsem` ready for writers.
fn favordynmods() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3
                && matches!(f[2], "cgroup" | "cgroup2")
                && f[3].split(',').any(|o| o == "favordynmods")
        })
    })
}

fn controllers(cg: &Cgroup) -> Vec<String> {
    let desc = cg.descriptor();
    match desc.dirs.get(crate::cgroups::UNIFIED_KEY) {
        Some(dir) => std::fs::read_to_string(dir.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect(),
        None => desc.dirs.keys().cloned().collect(),
    }
}

/// A shell that first joins every directory of the cgroup, then runs
/// `then` (so what it runs is in the cgroup from its first instruction).
fn in_cgroup(dirs: &[PathBuf], then: &str) -> Command {
    let mut script = String::from("set -e; ");
    for d in dirs {
        script += &format!("echo $$ > '{}/cgroup.procs'; ", d.display());
    }
    script += then;
    let mut c = Command::new("/bin/sh");
    c.args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn freezer(cg: &Cgroup) -> Capability {
    let child = match Command::new("sleep").arg("30").stdin(Stdio::null()).spawn() {
        Ok(c) => Reaped(c),
        Err(e) => return cap(CGROUP_FREEZER, false, format!("cannot start sleep: {e}")),
    };
    let tried = cg
        .add_task(child.0.id() as i32)
        .and_then(|()| cg.freeze())
        .and_then(|()| cg.freezer_state());
    let thawed = cg.thaw();
    match (tried, thawed) {
        (Ok(FreezerState::Frozen), Ok(())) => {
            cap(CGROUP_FREEZER, true, "a process was frozen and thawed")
        }
        (Ok(FreezerState::Frozen), Err(e)) => cap(
            CGROUP_FREEZER,
            false,
            format!("frozen, but thawing failed: {e}"),
        ),
        (Ok(s), _) => cap(
            CGROUP_FREEZER,
            false,
            format!("asked to freeze, the kernel says {s:?}"),
        ),
        (Err(e), _) => cap(CGROUP_FREEZER, false, e.to_string()),
    }
}

/// Denies everything but runc's default nodes, then opens another device
/// from inside: the kernel must refuse it.
fn devices(cg: &Cgroup, dirs: &[PathBuf]) -> Capability {
    let deny: LinuxResources = match serde_json::from_value(serde_json::json!({
        "devices": [{"allow": false, "access": "rwm"}]
    })) {
        Ok(r) => r,
        Err(e) => return cap(CGROUP_DEVICES, false, e.to_string()),
    };
    if let Err(e) = cg.apply(&deny) {
        return cap(CGROUP_DEVICES, false, format!("device rules refused: {e}"));
    }
    // Devices none of runc's default rules allow, opened for reading.
    let Some(dev) = ["/dev/kmsg", "/dev/mem", "/dev/loop-control"]
        .into_iter()
        .find(|d| std::path::Path::new(d).exists())
    else {
        return cap(
            CGROUP_DEVICES,
            true,
            "device rules applied (no device here to try them on)",
        );
    };
    match in_cgroup(dirs, &format!("exec 3<{dev}")).output() {
        Ok(o) if !o.status.success() => cap(
            CGROUP_DEVICES,
            true,
            format!("a denied device ({dev}) could not be opened from inside"),
        ),
        Ok(_) => cap(
            CGROUP_DEVICES,
            false,
            format!("device rules applied, yet {dev} opened from inside"),
        ),
        Err(e) => cap(CGROUP_DEVICES, false, format!("cannot start sh: {e}")),
    }
}

/// A process in the cgroup unshares its cgroup namespace: every
/// hierarchy must then show it at `/`.
fn namespace(dirs: &[PathBuf]) -> Capability {
    let out = match in_cgroup(dirs, "exec unshare --cgroup cat /proc/self/cgroup").output() {
        Ok(o) => o,
        Err(e) => return cap(CGROUP_NAMESPACE, false, format!("cannot start sh: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return cap(
            CGROUP_NAMESPACE,
            false,
            format!("unshare --cgroup failed: {}", err.trim()),
        );
    }
    let rooted = !text.trim().is_empty() && text.lines().all(|l| l.ends_with(":/"));
    let delegate = nsdelegate();
    let detail = if rooted {
        format!(
            "the container's cgroup is / inside{}",
            if delegate {
                "; cgroup2 is mounted with nsdelegate (a container may manage its subtree)"
            } else {
                ""
            }
        )
    } else {
        format!("inside the namespace the cgroups read {:?}", text.trim())
    };
    cap(CGROUP_NAMESPACE, rooted, detail)
}

/// Whether a cgroup2 mount carries nsdelegate (the kernel applies it to
/// every cgroup2 mount once the first one has it).
fn nsdelegate() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" - cgroup2 "))
        .any(|l| l.contains("nsdelegate"))
}
