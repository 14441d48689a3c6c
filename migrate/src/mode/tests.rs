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

fn it(pages: u64, ms: u64) -> Iteration {
    Iteration {
        pages_written: pages,
        duration: Duration::from_millis(ms),
    }
}

#[test]
fn pre_copy_stops_when_the_downtime_fits_or_progress_stalls() {
    let p = PreCopyPolicy {
        max_iterations: 5,
        max_downtime: Duration::from_millis(100),
        min_shrink: 0.8,
    };
    assert!(precopy_next(&[], &p).is_ok());
    // 65536 pages in 2 s: the same again would take 2 s.
    assert!(precopy_next(&[it(65536, 2000)], &p).is_ok());
    // 2000 pages at that rate: ~61 ms, fits.
    let e = precopy_next(&[it(65536, 2000), it(2000, 61)], &p).unwrap_err();
    assert!(e.contains("fits the downtime target of 100 ms"), "{e}");
    // Barely shrinking.
    let e = precopy_next(&[it(65536, 2000), it(60000, 1800)], &p).unwrap_err();
    assert!(e.contains("stopped converging"), "{e}");
    // Shrinking well but slowly: goes on until the cap.
    let h: Vec<_> = (0..5).map(|i| it(65536 >> i, 2000 >> i)).collect();
    assert!(precopy_next(&h[..4], &p).is_ok());
    let e = precopy_next(&h, &p).unwrap_err();
    assert!(e.contains("maximum of 5"), "{e}");
}
