//! A workload for migration tests: holds MIB mebibytes of pseudo-random
//! memory and, every 50 ms, writes `count initial-crc current-crc` to FILE
//! (via a temp file and rename). After a migration the count must go on
//! and both checksums must still match.
//!
//! `memhog FILE MIB`
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(file), Some(mib)) = (args.next(), args.next()) else {
        eprintln!("usage: memhog FILE MIB");
        std::process::exit(2);
    };
    let mib: usize = mib.parse().expect("MIB is a number");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut mem = vec![0u64; mib << 17];
    for w in mem.iter_mut() {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        *w = seed;
    }
    let crc = |m: &[u64]| {
        let mut h = crc32fast::Hasher::new();
        for w in m {
            h.update(&w.to_le_bytes());
        }
        h.finalize()
    };
    let initial = crc(&mem);
    let tmp = format!("{file}.tmp");
    let mut count = 0u64;
    loop {
        count += 1;
        let now = crc(&mem);
        std::fs::write(&tmp, format!("{count} {initial:08x} {now:08x}\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
}
