//! The page stream of `ferry migrate` when the link between the hosts
//! silently drops every packet in the middle of the memory transfer (an
//! nftables drop rule inside host B's network namespace, no reset, no
//! link-down): the source must notice within seconds from the stream's
//! own timeout (not TCP's retransmission limit, left at its default
//! here), resume the container with its memory intact, and the
//! destination must clean up by itself. Needs root and a working CRIU.
mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::hosts::*;
use common::*;

/// The page stream's dead-peer timeout, with room for a busy machine.
const NOTICED_WITHIN: Duration = Duration::from_secs(20);

fn read_text(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
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

/// Bytes of `id`'s pages B has received so far.
fn pages_on_b(w: &World, id: &str) -> u64 {
    walk(&w.b.bundles().join(".incoming"))
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("pages-"))
                && p.to_string_lossy().contains(&format!("{id}-"))
        })
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn ns_ok(h: &Host, cmd: &[&str]) {
    let out = h.ns.exec(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn silently_dropped_link_mid_memory_resumes_the_source_within_seconds() {
    let Some(_g) = serial() else { return };
    let mut w = World::new("d", 20);
    let (id, data) = memhog_container(&mut w, "hog", 256);
    let sum = read_text(&data.join("sum-before"));
    // A slow link (about 8 s for the memory), so the cut lands mid-memory.
    let la = format!("mg{}da", std::process::id() % 100000);
    ns_ok(
        &w.a,
        &[
            "tc", "qdisc", "add", "dev", &la, "root", "tbf", "rate", "256mbit", "burst", "256kb",
            "latency", "50ms",
        ],
    );
    let child =
        w.a.ferry(&[
            "migrate",
            &id,
            "--to",
            &w.b.to(),
            "--ca",
            s(&w.pki.join("ca.pem")),
            "--cert",
            s(&w.pki.join("a.pem")),
            "--key",
            s(&w.pki.join("a-key.pem")),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || pages_on_b(&w, &id) >= 16 << 20),
        "no pages arrived on B"
    );
    // From now on B neither receives nor sends anything: no reset, no
    // unreachable, just silence.
    ns_ok(&w.b, &["nft", "add", "table", "inet", "cut"]);
    for hook in ["input", "output"] {
        ns_ok(
            &w.b,
            &[
                "nft",
                &format!("add chain inet cut {hook} {{ type filter hook {hook} priority -300 ; policy drop ; }}"),
            ],
        );
    }
    let cut = Instant::now();
    let at_cut = pages_on_b(&w, &id);
    let out = child.wait_with_output().unwrap();
    let took = cut.elapsed();
    assert!(
        at_cut < 256 << 20,
        "the whole memory had arrived before the cut"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "migrate succeeded across a cut link");
    let line = err
        .lines()
        .find(|l| l.starts_with("ferry: "))
        .unwrap_or_else(|| panic!("no `ferry:` line in {err}"));
    eprintln!("after {took:?}: {line}");
    assert!(line.contains("resumed on this host"), "{line}");
    assert!(line.contains("page stream"), "{line}");
    assert!(
        took < NOTICED_WITHIN,
        "the source stayed frozen {took:?} after the cut"
    );
    // Running, thawed, memory as it was.
    assert_eq!(w.a.status(&id).as_deref(), Some("running"));
    w.a.ok(&["kill", &id, "USR1"]);
    assert!(wait_until(Duration::from_secs(10), || data
        .join("sum-after")
        .exists()));
    assert_eq!(read_text(&data.join("sum-after")), sum);
    // B, still cut off, gives up on its own: page server gone, images
    // removed, nothing of the container left.
    assert!(
        wait_until(Duration::from_secs(60), || {
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
