//! Paths inside a rootfs are the container's, never the host's: hostile
//! symlinks (a link at P to the absolute P, loops, chains longer than the
//! kernel's 40, `..` escapes) used as every kind of path ferry acts on, and
//! mount options that are applied or refused, never ignored. Real containers,
//! as root; each attack fails with one line (or lands inside the rootfs) and
//! the host is checked unchanged.
mod common;

use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A host directory no one has made: the target of the attacks. It must
/// not exist before or after; it is removed on drop in case it does.
struct HostTarget(PathBuf);

impl HostTarget {
    fn new(tag: &str) -> HostTarget {
        let p = PathBuf::from(format!("/tmp/ferry-attack-{}-{tag}", std::process::id()));
        assert!(
            p.symlink_metadata().is_err(),
            "{} exists before the test",
            p.display()
        );
        HostTarget(p)
    }

    fn x(&self) -> PathBuf {
        self.0.join("x")
    }

    fn assert_untouched(&self) {
        assert!(
            self.0.symlink_metadata().is_err(),
            "{} appeared on the host",
            self.0.display()
        );
    }
}

impl Drop for HostTarget {
    fn drop(&mut self) {
        // Only if an attack got through (the assertion fails first).
        if self.0.symlink_metadata().is_ok() {
            let _ = Command::new("umount").arg("-R").arg(&self.0).status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The host path `p` inside `rootfs`.
fn inside(rootfs: &Path, p: &Path) -> PathBuf {
    rootfs.join(p.strip_prefix("/").unwrap())
}

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// A link at P whose target is the absolute P: a loop in the rootfs,
    /// the host's P outside it.
    SelfLink,
    /// a -> b, b -> a.
    Loop,
    /// 41 links, the last pointing at the host's P.
    Chain,
    /// `..` past the root, in the path and in a relative link.
    DotDot,
}

const ATTACKS: [Attack; 4] = [
    Attack::SelfLink,
    Attack::Loop,
    Attack::Chain,
    Attack::DotDot,
];

impl Attack {
    /// Plants the attack in `rootfs`; returns the container path to use.
    fn plant(self, rootfs: &Path, target: &HostTarget) -> String {
        let p = target.x();
        match self {
            Attack::SelfLink => {
                std::fs::create_dir_all(inside(rootfs, &target.0)).unwrap();
                symlink(&p, inside(rootfs, &p)).unwrap();
                s(&p).to_string()
            }
            Attack::Loop => {
                symlink("/loop-b", rootfs.join("loop-a")).unwrap();
                symlink("/loop-a", rootfs.join("loop-b")).unwrap();
                "/loop-a".into()
            }
            Attack::Chain => {
                for i in 0..40 {
                    symlink(format!("/chain{}", i + 1), rootfs.join(format!("chain{i}"))).unwrap();
                }
                symlink(&p, rootfs.join("chain40")).unwrap();
                "/chain0".into()
            }
            Attack::DotDot => {
                // Resolves inside the rootfs, to its copy of P.
                std::fs::create_dir_all(inside(rootfs, &p)).unwrap();
                let up = "../".repeat(12);
                symlink(format!("{up}{}", s(&target.0)), rootfs.join("esc")).unwrap();
                "/../../../esc/../../esc/x".into()
            }
        }
    }

    fn fails(self) -> bool {
        !matches!(self, Attack::DotDot)
    }
}

#[derive(Clone, Copy, Debug)]
enum Use {
    Bind,
    Tmpfs,
    Device,
    Masked,
    Readonly,
    Cwd,
}

const USES: [Use; 6] = [
    Use::Bind,
    Use::Tmpfs,
    Use::Device,
    Use::Masked,
    Use::Readonly,
    Use::Cwd,
];

impl Use {
    fn apply(self, v: &mut Value, path: &str, bind_src: &Path) {
        match self {
            Use::Bind => add_bind(v, bind_src, path),
            Use::Tmpfs => v["mounts"].as_array_mut().unwrap().push(json!({
                "destination": path, "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "size=64k"],
            })),
            Use::Device => {
                v["linux"]["devices"] = json!([{
                    "path": format!("{path}/dev0"), "type": "c", "major": 1, "minor": 3,
                    "fileMode": 438, "uid": 0, "gid": 0,
                }])
            }
            Use::Masked => v["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!(path)),
            Use::Readonly => v["linux"]["readonlyPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!(path)),
            Use::Cwd => v["process"]["cwd"] = json!(path),
        }
    }
}

#[test]
fn hostile_links_never_reach_the_host() {
    if !is_root() {
        return;
    }
    let env = Env::new("links");
    let bind_src = env.work.path().join("bind-src");
    std::fs::create_dir_all(&bind_src).unwrap();
    for attack in ATTACKS {
        for usage in USES {
            let tag = format!("{attack:?}-{usage:?}").to_lowercase();
            let target = HostTarget::new(&tag);
            let id = env.id(&tag);
            let mut path = String::new();
            let bundle = env.bundle(&tag, &["true"], |v| {
                let rootfs = env.work.path().join(&tag).join("rootfs");
                path = attack.plant(&rootfs, &target);
                usage.apply(v, &path, &bind_src);
            });
            let out = env.run(&["run", "--bundle", s(&bundle), &id]);
            let err = String::from_utf8_lossy(&out.stderr);
            if attack.fails() {
                assert!(!out.status.success(), "{tag}: the container ran");
                assert_eq!(err.trim_end().lines().count(), 1, "{tag}: {err}");
                assert!(
                    err.contains("too many levels of symbolic links"),
                    "{tag}: {err}"
                );
                assert!(err.contains(&path), "{tag}: the path is not named: {err}");
            } else {
                assert!(out.status.success(), "{tag}: {err}");
                // What was made, was made in the rootfs's copy of P.
                let rootfs = bundle.join("rootfs");
                let made = inside(&rootfs, &target.x());
                assert!(made.is_dir(), "{tag}");
                if let Use::Device = usage {
                    let m = made.join("dev0").symlink_metadata().unwrap();
                    assert_eq!(m.mode() & libc::S_IFMT, libc::S_IFCHR, "{tag}");
                }
            }
            env.assert_gone(&id);
            target.assert_untouched();
        }
    }
}

/// The attack as it worked before kernel resolution: the rootfs's P links
/// to the absolute P, which on the host is an existing directory holding a
/// file. A device node or a bind destination below P must not touch it.
#[test]
fn host_files_behind_a_self_link_are_left_alone() {
    if !is_root() {
        return;
    }
    let env = Env::new("victim");
    let target = HostTarget::new("victim");
    std::fs::create_dir_all(&target.0).unwrap();
    let victim = target.0.join("file");
    std::fs::write(&victim, "victim\n").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let bind_src = env.work.path().join("bind-src");
    std::fs::create_dir_all(&bind_src).unwrap();
    type Edit<'a> = Box<dyn Fn(&mut Value) + 'a>;
    let cases: [(&str, Edit); 2] = [
        (
            "device",
            Box::new(|v: &mut Value| {
                v["linux"]["devices"] = json!([{
                    "path": victim, "type": "c", "major": 1, "minor": 3,
                    "fileMode": 438, "uid": 0, "gid": 0,
                }])
            }),
        ),
        (
            "bind",
            Box::new(|v: &mut Value| add_bind(v, &bind_src, s(&target.0.join("sub")))),
        ),
    ];
    for (name, edit) in cases {
        let id = env.id(name);
        let bundle = env.bundle(name, &["true"], |v| edit(v));
        let rootfs = bundle.join("rootfs");
        symlink(&target.0, inside(&rootfs, &target.0)).unwrap();
        let err = env.fail(&["run", "--bundle", s(&bundle), &id]);
        assert!(
            err.contains("too many levels of symbolic links"),
            "{name}: {err}"
        );
        env.assert_gone(&id);
        let m = victim.symlink_metadata().unwrap();
        assert!(m.is_file(), "{name}: the host file was replaced");
        assert_eq!(m.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "victim\n");
        let entries: Vec<_> = std::fs::read_dir(&target.0)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("file")], "{name}");
    }
}

#[test]
fn proc_on_a_symlink_is_refused() {
    if !is_root() {
        return;
    }
    let env = Env::new("proclink");
    let id = env.id("c");
    let bundle = env.bundle("b", &["true"], |_| {});
    let rootfs = bundle.join("rootfs");
    std::fs::remove_dir(rootfs.join("proc")).unwrap();
    std::fs::create_dir(rootfs.join("realproc")).unwrap();
    symlink("realproc", rootfs.join("proc")).unwrap();
    let err = env.fail(&["run", "--bundle", s(&bundle), &id]);
    assert!(err.contains("/proc") && err.contains("symlink"), "{err}");
    env.assert_gone(&id);
    assert!(std::fs::read_dir(rootfs.join("realproc"))
        .unwrap()
        .next()
        .is_none());
}

/// A host directory with a tmpfs mounted inside it, unmounted on drop.
struct WithSubmount(PathBuf);

impl WithSubmount {
    fn new(dir: PathBuf) -> WithSubmount {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.join("sub"))
            .status()
            .unwrap();
        assert!(st.success());
        WithSubmount(dir)
    }
}

impl Drop for WithSubmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.join("sub")).status();
    }
}

fn write_both(env: &Env, name: &str, options: &[&str], src: &Path) -> String {
    let id = env.id(name);
    let script = "for f in /m/a /m/sub/b; do touch $f 2>&1 || true; done";
    let bundle = env.bundle(name, &["sh", "-c", script], |v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/m", "type": "bind", "source": src, "options": options,
        }));
    });
    env.ok(&["run", "--bundle", s(&bundle), &id])
}

#[test]
fn rro_makes_the_whole_tree_read_only_and_unknown_options_are_refused() {
    if !is_root() {
        return;
    }
    let env = Env::new("rro");
    let src = WithSubmount::new(env.work.path().join("src"));
    // ro covers the mount only: its submount stays writable.
    let out = write_both(&env, "ro", &["rbind", "ro"], &src.0);
    assert!(out.contains("/m/a: Read-only file system"), "{out}");
    assert!(!out.contains("/m/sub/b"), "{out}");
    assert!(src.0.join("sub/b").exists());
    std::fs::remove_file(src.0.join("sub/b")).unwrap();
    // rro covers the submount too.
    let out = write_both(&env, "rro", &["rbind", "rro"], &src.0);
    assert!(out.contains("/m/a: Read-only file system"), "{out}");
    assert!(out.contains("/m/sub/b: Read-only file system"), "{out}");
    assert!(!src.0.join("a").exists() && !src.0.join("sub/b").exists());
    // The host's mounts are not changed by the container's attributes.
    std::fs::write(src.0.join("sub/host"), "w").unwrap();

    let id = env.id("rfoo");
    let bundle = env.bundle("rfoo", &["true"], |v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/m", "type": "bind", "source": src.0, "options": ["rbind", "rfoo"],
        }));
    });
    let err = env.fail(&["create", "--bundle", s(&bundle), &id]);
    assert!(err.contains("\"rfoo\""), "{err}");
    env.assert_gone(&id);
    // On a new filesystem an unknown option is a parameter the kernel refuses.
    let id = env.id("tmpfs-rfoo");
    let bundle = env.bundle("tmpfs-rfoo", &["true"], |v| {
        v["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/m", "type": "tmpfs", "source": "tmpfs", "options": ["rfoo"],
        }));
    });
    let err = env.fail(&["run", "--bundle", s(&bundle), &id]);
    assert!(err.contains("rfoo"), "{err}");
    env.assert_gone(&id);
}

/// `/linkdir -> /realdir` in the rootfs; the bind at /linkdir writes a counter.
fn linked_bundle(env: &Env, name: &str, data: &Path) -> PathBuf {
    let script = "i=0; while :; do i=$((i+1)); echo $i > /linkdir/n.tmp; mv /linkdir/n.tmp /linkdir/n; sleep 0.05; done";
    let bundle = env.bundle(name, &["sh", "-c", script], |v| {
        add_bind(v, data, "/linkdir")
    });
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir(rootfs.join("realdir")).unwrap();
    symlink("/realdir", rootfs.join("linkdir")).unwrap();
    bundle
}

#[test]
fn bind_through_a_symlink_checkpoints_and_restores() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("linkcr");
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let count = data.join("n");
    let id = env.id("c");
    let bundle = linked_bundle(&env, "b", &data);
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    assert!(wait_until(Duration::from_secs(5), || read_num(&count)
        .unwrap_or(0)
        >= 3));
    // Mounted where the link leads.
    let pid = env.state(&id)["pid"].as_i64().unwrap();
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    assert!(mountinfo.contains(" /realdir "), "{mountinfo}");

    let images = env.work.path().join("img");
    env.ok(&["checkpoint", "--image-path", s(&images), &id]);
    let at_dump = read_num(&count).unwrap();
    // Restored from another copy of the bundle.
    let id2 = env.id("c2");
    let bundle2 = linked_bundle(&env, "b2", &data);
    env.ok(&[
        "restore",
        "-d",
        "--bundle",
        s(&bundle2),
        "--image-path",
        s(&images),
        &id2,
    ]);
    assert!(
        wait_until(Duration::from_secs(5), || read_num(&count).unwrap_or(0)
            > at_dump + 3),
        "counter stuck at {:?} after restore",
        read_num(&count)
    );
    let out = env.ok(&["exec", &id2, "cat", "/realdir/n"]);
    assert!(out.trim().parse::<u64>().unwrap() > at_dump, "{out}");
    env.ok(&["delete", "--force", &id2]);
    env.assert_gone(&id2);
}

#[test]
fn hostile_restore_mount_points_are_refused() {
    let Some(_g) = criu_lock() else { return };
    let env = Env::new("rstlink");
    let target = HostTarget::new("restore");
    let p = target.x();
    let data = env.work.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let id = env.id("c");
    let bundle = env.bundle("b", &["sleep", "600"], |v| add_bind(v, &data, s(&p)));
    env.ok(&["run", "-d", "--bundle", s(&bundle), &id]);
    let images = env.work.path().join("img");
    env.ok(&["checkpoint", "--image-path", s(&images), &id]);
    env.assert_gone(&id);
    for attack in ATTACKS {
        let tag = format!("{attack:?}").to_lowercase();
        let rid = env.id(&tag);
        let fresh = env.bundle(&tag, &["true"], |v| add_bind(v, &data, s(&p)));
        let rootfs = fresh.join("rootfs");
        std::fs::create_dir_all(inside(&rootfs, &target.0)).unwrap();
        // The mount point itself is the hostile link.
        match attack {
            Attack::SelfLink => symlink(&p, inside(&rootfs, &p)).unwrap(),
            Attack::Loop => {
                symlink("/loop-b", inside(&rootfs, &p)).unwrap();
                symlink(&p, rootfs.join("loop-b")).unwrap();
            }
            Attack::Chain => {
                symlink("/chain1", inside(&rootfs, &p)).unwrap();
                for i in 1..40 {
                    symlink(format!("/chain{}", i + 1), rootfs.join(format!("chain{i}"))).unwrap();
                }
                symlink(target.0.join("y"), rootfs.join("chain40")).unwrap();
            }
            Attack::DotDot => {
                // Leads to a directory inside the rootfs: still not the
                // mount point the checkpoint had, and CRIU would follow it.
                std::fs::create_dir_all(inside(&rootfs, &target.0.join("y"))).unwrap();
                symlink(
                    format!("{}{}/y", "../".repeat(12), s(&target.0)),
                    inside(&rootfs, &p),
                )
                .unwrap()
            }
        }
        let err = env.fail(&restore_args(&fresh, &images, &[], &rid));
        assert!(err.contains(s(&p)), "{tag}: the path is not named: {err}");
        assert!(
            err.contains("symbolic links") || err.contains("symlink"),
            "{tag}: {err}"
        );
        env.assert_gone(&rid);
        target.assert_untouched();
    }
    // A mount point that is not a bind (the /dev tmpfs) made a link to P.
    let rid = env.id("devlink");
    let fresh = env.bundle("devlink", &["true"], |v| add_bind(v, &data, s(&p)));
    let rootfs = fresh.join("rootfs");
    std::fs::create_dir_all(inside(&rootfs, &p)).unwrap();
    std::fs::remove_dir_all(rootfs.join("dev")).unwrap();
    symlink(&target.0, rootfs.join("dev")).unwrap();
    let err = env.fail(&restore_args(&fresh, &images, &[], &rid));
    assert!(
        err.contains("/dev: is or passes through a symlink"),
        "{err}"
    );
    env.assert_gone(&rid);
    target.assert_untouched();
    // The same image restores into a rootfs where P is a directory.
    let rid = env.id("good");
    let good = env.bundle("good", &["true"], |v| add_bind(v, &data, s(&p)));
    std::fs::create_dir_all(inside(&good.join("rootfs"), &p)).unwrap();
    env.ok(&[
        "restore",
        "-d",
        "--bundle",
        s(&good),
        "--image-path",
        s(&images),
        &rid,
    ]);
    assert_eq!(env.status(&rid), "running");
    env.ok(&["delete", "--force", &rid]);
    target.assert_untouched();
}
