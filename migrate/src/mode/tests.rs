use std::path::Path;
use std::time::Duration;

use super::*;
use crate::tls::TlsPaths;

const NONE: Features = Features {
    mem_track: false,
    lazy_pages: false,
};
const ALL: Features = Features {
    mem_track: true,
    lazy_pages: true,
};
/// What this project's test machines report: no soft-dirty, and a
/// lazy_pages flag that CRIU sets although lazy dumps fail.
const HERE: Features = Features {
    mem_track: false,
    lazy_pages: true,
};

/// A source host that implements pre-dump, and one that does not.
const PRE: &[Mode] = &[Mode::StopCopy, Mode::PreCopy];
const STOP: &[Mode] = &[Mode::StopCopy];

#[test]
fn auto_falls_back_to_stop_copy_and_says_why() {
    let c = choose_mode(ModeRequest::Auto, &HERE, &HERE, PRE).unwrap();
    assert_eq!(c.mode, Mode::StopCopy);
    assert_eq!(c.not_used.len(), 2);
    assert_eq!(c.not_used[0].mode, Mode::PreCopy);
    assert!(c.not_used[0].reason.contains("soft-dirty"), "{c:?}");
    assert_eq!(c.not_used[1].mode, Mode::PostCopy);
    assert!(
        c.not_used[1].reason.contains("does not drive post-copy"),
        "{c:?}"
    );
    let c = choose_mode(ModeRequest::Auto, &NONE, &NONE, PRE).unwrap();
    assert!(c.not_used[1].reason.contains("neither host"), "{c:?}");
}

/// A source host that drives post-copy too.
const ALL_MODES: &[Mode] = &[Mode::StopCopy, Mode::PreCopy, Mode::PostCopy];

#[test]
fn auto_never_picks_post_copy_even_where_it_works() {
    for f in [ALL, HERE] {
        let c = choose_mode(ModeRequest::Auto, &f, &f, ALL_MODES).unwrap();
        assert_ne!(c.mode, Mode::PostCopy);
        let post = c
            .not_used
            .iter()
            .find(|n| n.mode == Mode::PostCopy)
            .unwrap();
        assert!(post.reason.contains("never chosen by auto"), "{c:?}");
        assert!(post.reason.contains("--accept-postcopy-risk"), "{c:?}");
    }
}

#[test]
fn post_copy_runs_only_where_both_hosts_serve_lazy_pages_and_the_source_drives_it() {
    let c = choose_mode(ModeRequest::PostCopy, &HERE, &HERE, ALL_MODES).unwrap();
    assert_eq!((c.mode, c.reason.as_str()), (Mode::PostCopy, "requested"));
    let e = choose_mode(ModeRequest::PostCopy, &HERE, &HERE, PRE).unwrap_err();
    assert!(e.contains("does not drive post-copy"), "{e}");
    let e = choose_mode(ModeRequest::PostCopy, &NONE, &ALL, ALL_MODES).unwrap_err();
    assert!(e.contains("the source cannot serve lazy pages"), "{e}");
    assert!(e.contains("ferry check"), "{e}");
}

#[test]
fn auto_prefers_pre_copy_when_memory_can_be_tracked() {
    let c = choose_mode(ModeRequest::Auto, &ALL, &ALL, PRE).unwrap();
    assert_eq!(c.mode, Mode::PreCopy);
    assert!(c.not_used.iter().any(|n| n.mode == Mode::StopCopy));
}

#[test]
fn auto_never_picks_a_mode_the_source_does_not_implement() {
    // A stock kernel tracks dirty memory; a source without pre-dump
    // must still get stop-copy, and the report says why.
    let c = choose_mode(ModeRequest::Auto, &ALL, &ALL, STOP).unwrap();
    assert_eq!(c.mode, Mode::StopCopy);
    assert_eq!(c.not_used[0].mode, Mode::PreCopy);
    assert!(
        c.not_used[0].reason.contains("does not implement pre-dump"),
        "{c:?}"
    );
    let e = choose_mode(ModeRequest::PreCopy, &ALL, &ALL, STOP).unwrap_err();
    assert!(e.contains("does not implement pre-dump"), "{e}");
}

#[test]
fn explicit_unavailable_modes_are_refused_not_replaced() {
    let e = choose_mode(ModeRequest::PreCopy, &HERE, &HERE, PRE).unwrap_err();
    assert!(e.starts_with("pre-copy migration is not possible"), "{e}");
    let e = choose_mode(ModeRequest::PostCopy, &ALL, &NONE, PRE).unwrap_err();
    assert!(e.contains("the destination cannot serve lazy pages"), "{e}");
    assert_eq!(
        choose_mode(ModeRequest::StopCopy, &NONE, &NONE, STOP)
            .unwrap()
            .mode,
        Mode::StopCopy
    );
    assert_eq!(
        choose_mode(ModeRequest::PreCopy, &ALL, &NONE, PRE)
            .unwrap()
            .mode,
        Mode::PreCopy
    );
}

fn target() -> PageServerTarget {
    PageServerTarget {
        address: "10.0.0.2".into(),
        port: 4000,
    }
}

fn tls(host: &str) -> TlsPaths {
    TlsPaths {
        ca: "/c/ca.pem".into(),
        cert: format!("/c/{host}.pem").into(),
        key: format!("/c/{host}-key.pem").into(),
    }
}

/// From `/s` to a page server at `target()` writing `/d`.
fn route<'a>(listen: &'a str, tls: Option<&'a TlsPaths>) -> Route<'a> {
    Route {
        src_root: Path::new("/s"),
        dst_root: Path::new("/d"),
        target: target(),
        listen,
        tls,
        peer_cert: None,
    }
}

#[test]
fn pre_dump_iterations_chain_their_parents() {
    let tls = tls("a");
    let (d1, p1) = predump_plans(1, route("10.0.0.2", Some(&tls)));
    assert_eq!(d1.kind, DumpKind::PreDump);
    assert_eq!(d1.images_dir, Path::new("/s/pre-1"));
    assert_eq!(d1.parent_img, None);
    assert!(d1.track_mem && !d1.leave_stopped && !d1.lazy_pages);
    assert_eq!(d1.page_server, Some(target()));
    assert_eq!(d1.tls.as_ref(), Some(&tls));
    assert_eq!(p1.images_dir, Path::new("/d/pre-1"));
    assert_eq!(p1.parent_img, None);
    assert!(p1.tls_no_cn_verify);

    let (d3, p3) = predump_plans(3, route("x", None));
    assert_eq!(d3.images_dir, Path::new("/s/pre-3"));
    assert_eq!(d3.parent_img.as_deref(), Some("../pre-2"));
    assert_eq!(p3.parent_img.as_deref(), Some("../pre-2"));
    assert!(!p3.tls_no_cn_verify && p3.tls.is_none());

    let (f, pf) = final_dump_plans(3, route("x", None));
    assert_eq!(f.kind, DumpKind::Dump);
    assert_eq!(f.images_dir, Path::new("/s/dump"));
    assert_eq!(f.parent_img.as_deref(), Some("../pre-3"));
    assert!(f.track_mem && f.leave_stopped);
    assert_eq!(pf.images_dir, Path::new("/d/dump"));
    assert_eq!(pf.parent_img.as_deref(), Some("../pre-3"));

    let (s, ps) = final_dump_plans(0, route("x", None));
    assert_eq!(s.parent_img, None);
    assert!(!s.track_mem && s.leave_stopped);
    assert_eq!(ps.parent_img, None);
}

#[test]
fn post_copy_requests() {
    let tls = tls("b");
    let (d, l) = postcopy_plans(
        Path::new("/s"),
        Path::new("/d"),
        "10.0.0.1",
        27027,
        Some(&tls),
    );
    assert!(d.lazy_pages && d.leave_stopped && !d.track_mem);
    assert_eq!(
        d.page_server,
        Some(PageServerTarget {
            address: "10.0.0.1".into(),
            port: 27027
        })
    );
    assert_eq!(
        l.args().join(" "),
        "lazy-pages --images-dir /d/dump --page-server --address 10.0.0.1 --port 27027 \
         --tls --tls-cacert /c/ca.pem --tls-cert /c/b.pem --tls-key /c/b-key.pem"
    );
}

/// A round of `pages` that started at `at` ms and took `ms`, all of it
/// transferring.
fn it(pages: u64, at: u64, ms: u64) -> Iteration {
    let d = Duration::from_millis(ms);
    Iteration::measured(
        pages,
        Duration::from_millis(at),
        d,
        Some(d),
        Duration::from_millis(5),
    )
}

/// Rounds of a workload dirtying `dirty` pages/s over a link of `link`
/// pages/s with `total` pages, run until the rule stops; returns the rounds
/// and why they stopped.
fn simulate(total: u64, dirty: f64, link: f64, p: &PreCopyPolicy) -> (Vec<Iteration>, String) {
    let mut h: Vec<Iteration> = Vec::new();
    let mut at = 0.0;
    let mut pages = total;
    loop {
        if let Err(why) = precopy_next(&mut h, p) {
            return (h, why);
        }
        let secs = pages as f64 / link + 0.01;
        h.push(it(pages, (at * 1e3) as u64, (secs * 1e3) as u64));
        at += secs;
        pages = ((dirty * secs) as u64).min(total);
    }
}

fn policy(ms: u64) -> PreCopyPolicy {
    PreCopyPolicy {
        max_downtime: Duration::from_millis(ms),
        ..PreCopyPolicy::default()
    }
}

#[test]
fn defaults_are_at_least_p_hauls_bounds() {
    let p = PreCopyPolicy::default();
    assert_eq!(p.max_iterations, 8);
    assert_eq!(p.min_pages, 64);
    assert!(p.min_shrink <= 1.1);
}

#[test]
fn the_first_round_predicts_that_everything_changes() {
    let mut h = vec![it(65536, 0, 2000)];
    assert!(precopy_next(&mut h, &policy(100)).is_ok());
    assert_eq!(h[0].predicted_pages, 65536);
    assert_eq!(h[0].predicted_downtime, Some(Duration::from_millis(2000)));
    // A small container fits at once.
    let mut h = vec![it(500, 0, 20)];
    let e = precopy_next(&mut h, &policy(100)).unwrap_err();
    assert!(e.contains("within the downtime target of 100 ms"), "{e}");
}

#[test]
fn the_prediction_is_the_dirty_rate_times_the_last_round() {
    // Round 2 found 2000 pages changed in the 2 s since round 1 started
    // (1000 pages/s); it took 500 ms, so ~500 pages are dirty again.
    let mut h = vec![it(65536, 0, 2000), it(2000, 2000, 500)];
    // 18.5 ms misses a 10 ms target: another round.
    assert!(precopy_next(&mut h, &policy(10)).is_ok());
    assert_eq!(h[1].predicted_pages, 500);
    // 67536 pages in 2.5 s: 27014 pages/s, so 500 pages take ~18.5 ms.
    let t = h[1].predicted_downtime.unwrap().as_secs_f64() * 1e3;
    assert!((18.0..19.0).contains(&t), "{t}");
    let e = precopy_next(&mut h, &policy(20)).unwrap_err();
    assert!(e.contains("500 pages in 19 ms"), "{e}");
}

#[test]
fn the_gap_between_rounds_counts_towards_the_final_dump() {
    // Round 2 started 3 s after round 1, which took 2 s: 1 s between
    // rounds. 3000 pages in 3 s, so 1000 pages/s dirty; round 2 took 500
    // ms, plus the 1 s gap before the freeze: 1500 pages.
    let mut h = vec![it(65536, 0, 2000), it(3000, 3000, 500)];
    assert!(precopy_next(&mut h, &policy(10)).is_ok());
    assert_eq!(h[1].predicted_pages, 1500);
}

#[test]
fn a_rate_1_mib_workload_converges_in_few_rounds_to_a_small_freeze() {
    // 256 MiB, 1 MiB/s dirtied (256 pages/s), a 100 MiB/s link.
    let (h, why) = simulate(65536, 256.0, 25600.0, &policy(30));
    assert!(h.len() >= 2 && h.len() <= 3, "{h:?}");
    assert!(why.contains("within the downtime target of 30 ms"), "{why}");
    assert!(h
        .windows(2)
        .all(|w| w[1].pages_written < w[0].pages_written));
    let last = h.last().unwrap();
    assert!(last.predicted_downtime.unwrap() <= Duration::from_millis(30));
}

#[test]
fn a_workload_dirtying_faster_than_the_link_stops_at_once() {
    // Dirties 2x what the link carries: round 2 sends all of it again.
    let (h, why) = simulate(65536, 51200.0, 25600.0, &policy(30));
    assert_eq!(h.len(), 2, "{h:?}");
    assert!(why.contains("not converging: round 2"), "{why}");
    // The freeze that follows is bounded by the memory size.
    assert!(h[1].predicted_pages <= 2 * 65536, "{h:?}");
}

#[test]
fn few_pages_left_stop_even_over_a_slow_link() {
    // 10 pages/s dirty, 1000 pages/s link, a 1 ms target that never fits.
    let (h, why) = simulate(4096, 10.0, 1000.0, &policy(1));
    assert!(
        why.contains("predicted for the final dump (at most 64)"),
        "{why}"
    );
    assert!(h.last().unwrap().predicted_pages <= 64, "{h:?}");
}

#[test]
fn slow_steady_shrinking_stops_at_the_round_limit() {
    // Each round halves (dirty rate half the link): never fits 1 ms and
    // never stalls, so the cap ends it.
    let p = PreCopyPolicy {
        max_iterations: 5,
        min_pages: 0,
        ..policy(0)
    };
    let (h, why) = simulate(1 << 30, 500.0, 1000.0, &p);
    assert_eq!(h.len(), 5, "{h:?}");
    assert!(why.contains("maximum of 5 pre-copy rounds"), "{why}");
}
