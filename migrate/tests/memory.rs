//! Shipping a large file streams: peak memory of this process (sender and
//! receiver both, over mutual TLS) stays far below the file's size. Alone
//! in its own test binary so the process's peak RSS is this test's.
mod common;

use std::net::TcpListener;
use std::thread;

use migrate::files::{send_tree, Limits, SendOptions, TreeReceiver};
use migrate::transport;

fn peak_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_quarter_gigabyte_file_ships_in_bounded_memory() {
    const SIZE: u64 = 256 << 20;
    let pki = common::Pki::new();
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Sparse: reads as zeros without using memory or disk on this side.
    std::fs::File::create(src.join("big.img"))
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let before = peak_rss_kib();

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let dst_sec = pki.dst_security();
    let dst = d.path().join("dst");
    let receiver = thread::spawn(move || {
        let (tcp, _) = l.accept().unwrap();
        let mut ch = transport::accept(tcp, &dst_sec).unwrap();
        let mut rx = TreeReceiver::new(&dst, Limits::default()).unwrap();
        let stats = rx.receive(&mut ch, &mut |_| {}).unwrap();
        rx.commit().unwrap();
        stats
    });
    let mut ch = transport::connect(addr, "127.0.0.1", &pki.src_security()).unwrap();
    let (_, sent) = send_tree(&mut ch, &src, None, &SendOptions::default(), &mut |_| {}).unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(sent.bytes, SIZE);
    assert_eq!(got.bytes, SIZE);
    assert_eq!(
        std::fs::metadata(d.path().join("dst/big.img"))
            .unwrap()
            .len(),
        SIZE
    );
    let grew = peak_rss_kib().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {grew} KiB while shipping {} MiB",
        SIZE >> 20
    );
    assert!(grew < 32 << 10, "peak RSS grew by {grew} KiB");
}
