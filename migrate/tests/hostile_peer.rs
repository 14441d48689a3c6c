//! Property test: whatever a peer sends in a tree transfer (weird paths,
//! links pointing out, files through links, wrong sizes, junk frames), the
//! receiver writes nothing outside its staging directory and leaves
//! nothing behind when it fails.
use std::fs;
use std::io::{self, Cursor, Read, Write};
use std::path::Path;

use migrate::files::{EntryHeader, Kind, Limits, Name, TreeMsg, TreeReceiver};
use migrate::transport::Channel;
use migrate::wire::{encode_control, write_frame, FrameType};
use proptest::prelude::*;

/// A peer that has already sent everything: reads come from the script,
/// writes go nowhere.
struct Script(Cursor<Vec<u8>>);

impl Read for Script {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Script {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the peer sends after an entry header.
#[derive(Debug, Clone)]
enum Step {
    Msg(TreeMsg),
    /// A data frame (content of the file entry before it).
    Data(Vec<u8>),
    End,
    Junk(Vec<u8>),
}

fn name(victim: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seg = prop_oneof![
        Just(b"..".to_vec()),
        Just(b".".to_vec()),
        Just(Vec::new()),
        Just(b"a".to_vec()),
        Just(b"l".to_vec()),
        Just(b"a\0b".to_vec()),
        Just(vec![b'n'; 300]),
        "[a-c]{1,2}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        3 => proptest::collection::vec(seg, 1..4).prop_map(|s| s.join(&b'/')),
        1 => Just(victim.as_bytes().to_vec()),
        1 => Just(format!("{victim}/keep").into_bytes()),
        1 => Just(b"../../victim".to_vec()),
        1 => Just(b"l/keep".to_vec()),
        1 => Just(b".".to_vec()),
    ]
}

fn header(path: Vec<u8>, kind: Kind, size: u64, target: Option<Vec<u8>>) -> EntryHeader {
    EntryHeader {
        path: Name::from_bytes(&path),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        size,
        target: target.map(|t| Name::from_bytes(&t)),
        rdev: 0,
    }
}

fn step(victim: &'static str) -> impl Strategy<Value = Step> {
    let kind = prop_oneof![
        Just(Kind::Dir),
        Just(Kind::File),
        Just(Kind::Symlink),
        Just(Kind::Hardlink),
        Just(Kind::Fifo),
    ];
    prop_oneof![
        6 => (name(victim), kind, 0u64..8, proptest::option::of(name(victim)))
            .prop_map(|(p, k, size, t)| Step::Msg(TreeMsg::Entry(header(p, k, size, t)))),
        1 => name(victim).prop_map(|p| Step::Msg(TreeMsg::Delete { path: Name::from_bytes(&p) })),
        2 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Step::Data),
        2 => Just(Step::End),
        1 => proptest::collection::vec(any::<u8>(), 0..24).prop_map(Step::Junk),
    ]
}

fn script(steps: &[Step]) -> Vec<u8> {
    let mut v = Vec::new();
    let control = |v: &mut Vec<u8>, m: &TreeMsg| {
        write_frame(v, FrameType::Control, &encode_control(m)).unwrap()
    };
    control(&mut v, &TreeMsg::Begin { pass: 1 });
    for s in steps {
        match s {
            Step::Msg(m) => control(&mut v, m),
            Step::Data(d) => write_frame(&mut v, FrameType::Data, d).unwrap(),
            Step::End => write_frame(&mut v, FrameType::End, b"").unwrap(),
            Step::Junk(j) => v.extend_from_slice(j),
        }
    }
    control(
        &mut v,
        &TreeMsg::Finish {
            entries: 0,
            bytes: 0,
        },
    );
    v
}

fn list(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn hostile_transfers_stay_in_staging(
        steps in proptest::collection::vec(step("/victim"), 0..12),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let outer = tmp.path().join("outer");
        let victim = tmp.path().join("victim");
        fs::create_dir_all(outer.join("inner")).unwrap();
        fs::create_dir(&victim).unwrap();
        fs::write(victim.join("keep"), b"mine").unwrap();
        let mut steps = steps;
        // Symlinks without a target point at the victim, so later entries
        // through them (`l/keep`) test that links are never followed.
        for s in steps.iter_mut() {
            if let Step::Msg(TreeMsg::Entry(h)) = s {
                if h.kind == Kind::Symlink && h.target.is_none() {
                    h.target = Some(Name::from_bytes(victim.as_os_str().as_encoded_bytes()));
                }
            }
        }
        let dest = outer.join("inner/recv");
        let mut ch = Channel::from_stream(Box::new(Script(Cursor::new(script(&steps)))));
        let mut r = TreeReceiver::new(&dest, Limits::default()).unwrap();
        let result = r.receive(&mut ch, &mut |_| {});
        let committed = match result {
            Ok(_) => r.commit().is_ok(),
            Err(_) => {
                drop(r);
                false
            }
        };
        prop_assert_eq!(list(&victim), ["keep"]);
        prop_assert_eq!(fs::read(victim.join("keep")).unwrap(), b"mine");
        prop_assert_eq!(list(tmp.path()), ["outer", "victim"]);
        prop_assert_eq!(list(&outer), ["inner"]);
        let inner = list(&outer.join("inner"));
        if committed {
            prop_assert_eq!(inner, ["recv"]);
        } else {
            prop_assert!(inner.is_empty(), "left behind: {:?}", inner);
        }
    }
}
