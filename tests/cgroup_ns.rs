//! A container with a cgroup namespace of its own: its cgroup is `/` to
//! it, the cgroup mount shows its subtree, and on cgroup v2 (delegated
//! with nsdelegate) it manages that subtree itself: sub-cgroups, moving
//! its processes, enabling controllers. Runs in the v2 guest too
//! (scripts/test-guest.sh, group cgroup-v2).
mod common;

use common::*;

/// A bundle whose process prints what the test checks, with a cgroup
/// namespace and (unlike runc's default) a writable cgroup mount.
fn bundle(env: &Env, script: &str) -> std::path::PathBuf {
    env.bundle("b", &["sh", "-c", script], |v| {
        let ns = v["linux"]["namespaces"].as_array_mut().unwrap();
        ns.push(serde_json::json!({"type": "cgroup"}));
        for m in v["mounts"].as_array_mut().unwrap() {
            if m["type"] == "cgroup" {
                let opts = m["options"].as_array_mut().unwrap();
                opts.retain(|o| o != "ro");
                opts.push("rw".into());
            }
        }
    })
}

fn v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// One container (each costs much under emulation): its view of its
/// cgroup, then, on v2, what it does with the subtree delegated to it.
#[test]
fn own_cgroup_is_the_root_and_on_v2_its_subtree_is_delegated() {
    if !is_root() {
        return;
    }
    let env = Env::new("cgns");
    let id = env.id("c");
    // On v2 the init (the only process but for its children) moves itself
    // into a child, then, with the root empty, enables pids for the
    // children and limits one.
    let delegate = if v2() {
        "cd /sys/fs/cgroup; procs=$(cat cgroup.procs); echo $procs; mkdir child; \
         echo $$ > child/cgroup.procs; cat /proc/self/cgroup; \
         echo +pids > cgroup.subtree_control; cat child/cgroup.controllers; \
         echo 5 > child/pids.max; cat child/pids.max; echo ok"
    } else {
        "true"
    };
    let script = format!(
        "set -e; cat /proc/self/cgroup; echo ---; cat /proc/self/mountinfo; echo ---; {delegate}"
    );
    let b = bundle(&env, &script);
    let out = env.run(&["run", "--bundle", b.to_str().unwrap(), &id]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut parts = text.split("---\n");
    let (cgroup, mountinfo, delegated) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    // Every hierarchy (the one of v2, each of v1) says "/".
    assert!(!cgroup.trim().is_empty());
    for line in cgroup.lines() {
        assert!(line.ends_with(":/"), "{line} in\n{cgroup}");
    }
    // The cgroup mount is at /sys/fs/cgroup and, on v2, its root is the
    // namespace's root.
    let mount = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/sys/fs/cgroup"))
        .unwrap_or_else(|| panic!("no /sys/fs/cgroup in\n{mountinfo}"));
    if v2() {
        assert_eq!(mount.split_whitespace().nth(3), Some("/"), "{mount}");
        assert!(mount.contains(" - cgroup2 "), "{mount}");
        let lines: Vec<&str> = delegated.lines().collect();
        // Its cgroup listed itself (pid 1 in its pid namespace) and cat.
        assert_eq!(lines[0].split_whitespace().next(), Some("1"), "{text}");
        assert_eq!(lines[1], "0::/child", "{text}");
        assert!(lines[2].split_whitespace().any(|c| c == "pids"), "{text}");
        assert_eq!(lines[3], "5", "{text}");
        assert_eq!(lines[4], "ok", "{text}");
    } else {
        eprintln!("v1: no delegated subtree to try (the v2 part runs in the guest: scripts/test-guest.sh cgroup-v2)");
    }
    // The container and any sub-cgroup it made are gone.
    env.assert_gone(&id);
}

/// `ferry check` tries each cgroup feature where containers go and lists
/// the controllers a container's cgroup really gets; it leaves no cgroup.
#[test]
fn check_measures_what_a_containers_cgroup_can_do() {
    if !is_root() {
        return;
    }
    let out = std::process::Command::new(ferry_bin())
        .args(["check", "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let controllers: Vec<&str> = v["cgroup_controllers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    for c in ["memory", "pids", "cpu"] {
        assert!(controllers.contains(&c), "{c} missing: {controllers:?}");
    }
    let caps = v["capabilities"].as_array().unwrap();
    for name in ["cgroup-freezer", "cgroup-devices", "cgroup-namespace"] {
        let c = caps.iter().find(|c| c["name"] == name).unwrap();
        assert_eq!(c["status"], "works", "{c}");
    }
    let ns = caps
        .iter()
        .find(|c| c["name"] == "cgroup-namespace")
        .unwrap();
    // A new process is forked into its cgroup on v2 (clone3
    // CLONE_INTO_CGROUP), moved on v1.
    let join = v["cgroup_join"].as_str().unwrap_or_default();
    let expected = if v2() { "forked into it" } else { "moved" };
    assert!(join.starts_with(expected), "{join}");
    if v2() {
        // The guest mounts cgroup2 with nsdelegate, as systemd does.
        assert!(
            ns["detail"].as_str().unwrap().contains("nsdelegate"),
            "{ns}"
        );
    }
    // The probe's cgroup is gone.
    let left: Vec<_> = cgroup_dirs("ferry")
        .into_iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|rd| rd.flatten())
        .filter(|e| e.file_name().to_string_lossy().starts_with("check-"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // So is its throwaway process (post-copy's lazy dump, where it runs).
    let left = common::check_sleepers::check_sleepers();
    assert!(left.is_empty(), "left behind by `ferry check`: {left:?}");
}
