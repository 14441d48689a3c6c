use std::path::Path;

use super::session::{check_shared_rootfs, rewrite_root};
use super::*;

#[test]
fn a_panicking_holder_does_not_lock_out_later_connections() {
    let ids = Arc::new(Mutex::new(HashSet::new()));
    let held = ids.clone();
    let r = std::thread::spawn(move || {
        let mut g = held.lock().unwrap();
        g.insert("c1".to_string());
        panic!("a connection thread fails while holding the lock");
    })
    .join();
    assert!(r.is_err());
    assert!(ids.is_poisoned());
    assert!(lock(&ids).insert("c2".to_string()));
    assert_eq!(lock(&ids).len(), 2);
}

#[test]
fn config_root_points_at_this_hosts_rootfs() {
    let c = r#"{"ociVersion":"1.0.2","root":{"path":"/var/lib/a/rootfs","readonly":true}}"#;
    let v: serde_json::Value =
        serde_json::from_str(&rewrite_root(c, RootfsMode::Ship, Path::new("/b/x/rootfs")).unwrap())
            .unwrap();
    assert_eq!(v["root"]["path"], "rootfs");
    assert_eq!(v["root"]["readonly"], true);
    let v: serde_json::Value = serde_json::from_str(
        &rewrite_root(c, RootfsMode::Shared, Path::new("/shared/rootfs")).unwrap(),
    )
    .unwrap();
    assert_eq!(v["root"]["path"], "/shared/rootfs");
    assert!(rewrite_root("[1]", RootfsMode::Ship, Path::new("/x")).is_err());
}

#[test]
fn ids_from_peers_are_checked() {
    for ok in ["counter", "a-b_c.1", "X", "a+b", &"x".repeat(255)] {
        assert!(valid_id(ok), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        ".hidden",
        "a/b",
        "../x",
        "a b",
        "\u{e9}",
        &"x".repeat(256),
    ] {
        assert!(!valid_id(bad), "{bad:?}");
    }
}

#[test]
fn shared_rootfs_must_be_under_an_allowed_directory() {
    let d = tempfile::tempdir().unwrap();
    let allowed = d.path().join("shared");
    std::fs::create_dir_all(allowed.join("c1/rootfs")).unwrap();
    std::fs::create_dir_all(d.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere"), allowed.join("sneaky")).unwrap();
    let ok = check_shared_rootfs(&allowed.join("c1/rootfs"), std::slice::from_ref(&allowed));
    assert!(ok.is_ok(), "{ok:?}");
    for bad in [
        d.path().join("elsewhere"),
        allowed.join("sneaky"),
        allowed.join("c1/../.."),
        allowed.clone(),
        PathBuf::from("/"),
    ] {
        let e = check_shared_rootfs(&bad, std::slice::from_ref(&allowed)).unwrap_err();
        assert!(
            e.to_string().contains("not under a directory"),
            "{bad:?}: {e}"
        );
    }
    let e = check_shared_rootfs(&allowed.join("c1/rootfs"), &[]).unwrap_err();
    assert!(e.to_string().contains("none configured"), "{e}");
    let e = check_shared_rootfs(&allowed.join("missing"), &[allowed]).unwrap_err();
    assert!(e.to_string().contains("is not a directory"), "{e}");
}
