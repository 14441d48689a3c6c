//! Every parser of untrusted input, fed hostile input, allocates a bounded
//! amount of memory: huge length fields, size fields, files and
//! decompression bombs are refused without allocating what they declare.
//!
//! A counting global allocator records the peak of live heap bytes
//! allocated by this thread while each case runs. (Memory the zstd C
//! library takes with malloc is not seen here; its window is capped where
//! the decoder is made, see `migrate::wire`.)
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Cursor, Read, Write};
use std::path::Path;

/// Counts this thread's live bytes and their peak.
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(n: isize) {
    // try_with: the allocator may run while thread-locals are torn down.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + n;
        l.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const BUDGET: isize = 64 << 20;

/// Runs `f` and returns the peak of bytes it had allocated at once.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(|p| p.get()) - base)
}

/// Runs one hostile case: it must fail, within the budget.
fn check<T, E: std::fmt::Display>(name: &str, f: impl FnOnce() -> Result<T, E>) {
    check_within(name, BUDGET, f)
}

fn check_within<T, E: std::fmt::Display>(
    name: &str,
    budget: isize,
    f: impl FnOnce() -> Result<T, E>,
) {
    let (result, peak) = peak_of(f);
    match result {
        Ok(_) => panic!("{name}: hostile input was accepted"),
        Err(e) => {
            assert!(
                peak < budget,
                "{name}: peak allocation {peak} bytes (limit {budget}); error: {e}"
            );
            eprintln!("{name}: {} KiB peak: {e}", peak / 1024);
        }
    }
}

/// `n` bytes of `b`, produced as read (so the test holds none of them).
struct Repeat(u8, u64);

impl Read for Repeat {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.1) as usize;
        buf[..n].fill(self.0);
        self.1 -= n as u64;
        Ok(n)
    }
}

fn zstd_of(mut r: impl Read) -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
    std::io::copy(&mut r, &mut enc).unwrap();
    enc.finish().unwrap()
}

fn frame(kind: migrate::wire::FrameType, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    migrate::wire::write_frame(&mut v, kind, payload).unwrap();
    v
}

#[test]
fn hostile_inputs_allocate_within_budget() {
    use migrate::wire::{read_frame, FrameType, MAX_PAYLOAD};

    // Migration frames: a header promising 4 GiB, and a zstd bomb.
    let mut v = frame(FrameType::Data, b"");
    v[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    check("frame of 4 GiB", || read_frame(&mut Cursor::new(&v)));
    let bomb = zstd_of(Repeat(0, 256 << 20));
    let v = frame(FrameType::DataZstd, &bomb);
    check("zstd frame inflating to 256 MiB", || {
        read_frame(&mut Cursor::new(&v))
    });

    // Control messages at the payload limit: deep nesting, and a path
    // sent as an array of byte values. serde buffers a tagged enum's
    // content before decoding it (about 32 bytes per JSON value, at most
    // one value per two bytes): a control message may take up to 16 times
    // its size while it is decoded, 64 MiB at the 4 MiB limit.
    let nested = "[".repeat(MAX_PAYLOAD as usize);
    let f = migrate::wire::Frame {
        kind: FrameType::Control,
        payload: nested.into_bytes(),
    };
    check("control message nested 4 Mi deep", || {
        migrate::wire::decode_control::<migrate::files::TreeMsg>(&f)
    });
    let mut path = br#"{"tree":"delete","path":["#.to_vec();
    while path.len() < MAX_PAYLOAD as usize - 8 {
        path.extend_from_slice(b"0,");
    }
    path.extend_from_slice(b"x]}");
    let f = migrate::wire::Frame {
        kind: FrameType::Control,
        payload: path,
    };
    let control_budget = 16 * MAX_PAYLOAD as isize + (1 << 20);
    check_within(
        "control message with a 2 Mi-element path",
        control_budget,
        || migrate::wire::decode_control::<migrate::files::TreeMsg>(&f),
    );

    // CRIU images: length words of 4 GiB and just over the entry limit.
    use ferry::criu::image::{EntryReader, IMG_COMMON_MAGIC, MAX_ENTRY_BYTES, PSTREE_MAGIC};
    for len in [u32::MAX, MAX_ENTRY_BYTES + 1, MAX_ENTRY_BYTES] {
        let mut img = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        img.extend_from_slice(&PSTREE_MAGIC.to_le_bytes());
        img.extend_from_slice(&len.to_le_bytes());
        img.extend_from_slice(b"short");
        check(&format!("image entry of {len} bytes"), || {
            let n = img.len() as u64;
            EntryReader::new(Path::new("pstree.img"), Cursor::new(&img), n, PSTREE_MAGIC)?
                .next_raw()
        });
    }
    let tmp = tempfile::tempdir().unwrap();
    // An mm entry of 16 MiB listing a million mappings (18 bytes each on
    // the wire, with every required field 0): it decoded into 160 MiB.
    let mm = tmp.path().join("mm-1.img");
    let mut img = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    img.extend_from_slice(&ferry::criu::image::MM_MAGIC.to_le_bytes());
    let vma = [
        0x72u8, 16, 0x08, 0, 0x10, 0, 0x18, 0, 0x20, 0, 0x28, 0, 0x30, 0, 0x38, 0, 0x40, 0,
    ];
    let body: Vec<u8> = vma.repeat((16 << 20) / vma.len());
    img.extend_from_slice(&(body.len() as u32).to_le_bytes());
    img.extend_from_slice(&body);
    std::fs::write(&mm, &img).unwrap();
    check("mm entry with a million mappings", || {
        ferry::criu::image::read_one::<ferry::proto::memory::Mm_entry>(
            &mm,
            ferry::criu::image::MM_MAGIC,
            "mm entry",
        )
    });
    // Just under the decode limit: decoded, within the budget.
    let n = ferry::criu::image::MAX_DECODED_BYTES as usize / 312 - 64;
    let mut img = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    img.extend_from_slice(&ferry::criu::image::MM_MAGIC.to_le_bytes());
    let mut body: Vec<u8> = (1u8..=11).flat_map(|f| [f << 3, 0]).collect();
    body.extend_from_slice(&[12 << 3, 0]);
    body.extend_from_slice(&vma.repeat(n));
    img.extend_from_slice(&(body.len() as u32).to_le_bytes());
    img.extend_from_slice(&body);
    std::fs::write(&mm, &img).unwrap();
    let (mm_entry, peak) = peak_of(|| {
        ferry::criu::image::read_one::<ferry::proto::memory::Mm_entry>(
            &mm,
            ferry::criu::image::MM_MAGIC,
            "mm entry",
        )
    });
    assert_eq!(mm_entry.unwrap().vmas.len(), n);
    assert!(peak < BUDGET, "mm entry of {n} mappings: {peak} bytes");
    eprintln!("mm entry of {n} mappings: {} KiB peak", peak / 1024);
    // Distinct unknown fields, each a map entry of its own, just under the
    // decode limit (which counts 512 bytes for each).
    let n = ferry::criu::image::MAX_DECODED_BYTES as usize / 512 - 64;
    let mut body = vec![0x08, 2];
    for f in 100u64..100 + n as u64 {
        let mut tag = f << 3;
        while tag >= 0x80 {
            body.push(tag as u8 | 0x80);
            tag >>= 7;
        }
        body.extend_from_slice(&[tag as u8, 0]);
    }
    let mut img = ferry::criu::image::INVENTORY_MAGIC.to_le_bytes().to_vec();
    img.extend_from_slice(&(body.len() as u32).to_le_bytes());
    img.extend_from_slice(&body);
    let inv = tmp.path().join("inventory.img");
    std::fs::write(&inv, &img).unwrap();
    let (inventory, peak) = peak_of(|| {
        ferry::criu::image::read_one::<ferry::proto::inventory::Inventory_entry>(
            &inv,
            ferry::criu::image::INVENTORY_MAGIC,
            "inventory entry",
        )
    });
    inventory.unwrap();
    eprintln!(
        "inventory entry of {n} unknown fields: {} KiB peak",
        peak / 1024
    );
    assert!(
        peak < BUDGET,
        "inventory entry of {n} unknown fields: {peak} bytes"
    );
    // A pstree image of many small entries (no limit per entry helps):
    // refused once their estimate passes the per-file limit, which bounds
    // what they take (about half the estimate).
    use ferry::criu::image::MAX_FILE_DECODED_BYTES;
    let entry = [0x08u8, 1, 0x10, 0, 0x18, 1, 0x20, 1];
    let mut img = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    img.extend_from_slice(&PSTREE_MAGIC.to_le_bytes());
    for _ in 0..(2 << 20) {
        img.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        img.extend_from_slice(&entry);
    }
    let pstree = tmp.path().join("pstree.img");
    std::fs::write(&pstree, &img).unwrap();
    check_within(
        "pstree of two million entries",
        MAX_FILE_DECODED_BYTES as isize,
        || {
            ferry::criu::image::read_all::<ferry::proto::task::Pstree_entry>(
                &pstree,
                PSTREE_MAGIC,
                "pstree entry",
            )
        },
    );
    let big = tmp.path().join("stats-dump");
    // Sparse files: no disk used.
    std::fs::File::create(&big)
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    check("stats-dump of 8 GiB", || {
        ferry::criu::stats::read_dump_stats(tmp.path())
    });

    // config.json: 8 GiB, and nested a million deep.
    let bundle = tmp.path().join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
    std::fs::File::create(bundle.join("config.json"))
        .unwrap()
        .set_len(8 << 30)
        .unwrap();
    check("config.json of 8 GiB", || ferry::spec::load(&bundle));
    std::fs::write(
        bundle.join("config.json"),
        format!(r#"{{"ociVersion":"1.0.2","x":{}"#, "[".repeat(1 << 20)),
    )
    .unwrap();
    check("config.json nested a million deep", || {
        ferry::spec::load(&bundle)
    });

    // Checkpoint archives: a GNU long name and a PAX header of 256 MiB in a
    // zstd stream of a few hundred kilobytes.
    for kind in [tar::EntryType::GNULongName, tar::EntryType::XHeader] {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_size(256 << 20);
        h.set_mode(0o644);
        h.set_cksum();
        let archive = zstd_of(Cursor::new(h.as_bytes().to_vec()).chain(Repeat(b'a', 256 << 20)));
        let dest = tmp.path().join(format!("inspect-{kind:?}"));
        check(&format!("archive with a 256 MiB {kind:?} entry"), || {
            ferry::archive::unpack_for_inspect(&archive[..], &dest, &Default::default())
        });
    }

    // And a gzip bomb of a tar whose first entry declares 8 GiB.
    let mut h = tar::Header::new_gnu();
    h.set_path("ferry.json").unwrap();
    h.set_size(8 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(h.as_bytes()).unwrap();
    std::io::copy(&mut Repeat(b' ', 64 << 20), &mut gz).unwrap();
    let archive = gz.finish().unwrap();
    check("archive whose ferry.json declares 8 GiB", || {
        ferry::archive::unpack_for_inspect(
            &archive[..],
            &tmp.path().join("gz"),
            &Default::default(),
        )
    });
}
