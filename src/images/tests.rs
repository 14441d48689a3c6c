//! A synthetic image directory with every image type ferry decodes, and
//! truncation/corruption of each file at every offset.
use std::path::Path;

use super::memory::{PE_LAZY, PE_PRESENT};
use super::*;
use crate::criu::image;
use crate::proto::files::{
    Fd_types, Fdinfo_entry, File_entry, Inet_sk_entry, Pipe_entry, Reg_file_entry, Unix_sk_entry,
};
use crate::proto::memory::{Mm_entry, Pagemap_entry, Pagemap_head, Vma_entry};
use crate::proto::namespaces::{Mnt_entry, Utsns_entry};
use crate::proto::task::{core_entry::March, Core_entry, Fs_entry, Pstree_entry, Task_core_entry};

const BASE: u64 = 0x10000;

fn ids(files: u32) -> Task_kobj_ids_entry {
    let mut i = Task_kobj_ids_entry::new();
    i.set_vm_id(files);
    i.set_files_id(files);
    i.set_fs_id(files);
    i.set_sighand_id(files);
    i.set_pid_ns_id(8);
    i.set_net_ns_id(7);
    i.set_mnt_ns_id(5);
    i.set_uts_ns_id(6);
    i
}

fn write<M: protobuf::Message>(dir: &Path, name: &str, magic: u32, entries: &[&M]) {
    std::fs::write(dir.join(name), image::encode(magic, entries)).unwrap();
}

fn reg(id: u32, name: &str) -> File_entry {
    let mut r = Reg_file_entry::new();
    r.set_id(id);
    r.set_flags(0);
    r.set_pos(0);
    r.set_name(name.into());
    let mut f = File_entry::new();
    f.set_type(Fd_types::REG);
    f.set_id(id);
    f.reg = Some(r).into();
    f
}

fn fd(fd: u32, id: u32, t: Fd_types) -> Fdinfo_entry {
    let mut e = Fdinfo_entry::new();
    e.set_fd(fd);
    e.set_id(id);
    e.set_type(t);
    e.set_flags(0);
    e
}

/// An mm entry with every address it holds at `at`.
pub(super) fn mm_at(at: u64) -> Mm_entry {
    let mut mm = Mm_entry::new();
    for f in [
        Mm_entry::set_mm_start_code,
        Mm_entry::set_mm_end_code,
        Mm_entry::set_mm_start_data,
        Mm_entry::set_mm_end_data,
        Mm_entry::set_mm_start_stack,
        Mm_entry::set_mm_start_brk,
        Mm_entry::set_mm_brk,
        Mm_entry::set_mm_arg_start,
        Mm_entry::set_mm_arg_end,
        Mm_entry::set_mm_env_start,
        Mm_entry::set_mm_env_end,
    ] {
        f(&mut mm, at);
    }
    mm
}

/// A private anonymous read-write mapping of `start..end`.
pub(super) fn anon_vma(start: u64, end: u64, status: u32) -> Vma_entry {
    let mut v = Vma_entry::new();
    v.set_start(start);
    v.set_end(end);
    v.set_pgoff(0);
    v.set_shmid(0);
    v.set_prot(3);
    v.set_flags(0x22);
    v.set_status(status);
    v.set_fd(-1);
    v
}

/// One process's memory: argv on the first page, env on the second, and
/// three lazy pages that are not in the pages image.
fn process_memory(dir: &Path, pid: u32, argv: &[&str], env: &[&str]) {
    let page = page_size();
    let mut pages = vec![0u8; 2 * page as usize];
    let args: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    pages[8..8 + args.len()].copy_from_slice(&args);
    let envb: Vec<u8> = env.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let env_off = page as usize + 16;
    pages[env_off..env_off + envb.len()].copy_from_slice(&envb);
    std::fs::write(dir.join(format!("pages-{pid}.img")), &pages).unwrap();

    let mut mm = mm_at(BASE);
    mm.set_mm_arg_start(BASE + 8);
    mm.set_mm_arg_end(BASE + 8 + args.len() as u64);
    mm.set_mm_env_start(BASE + env_off as u64);
    mm.set_mm_env_end(BASE + (env_off + envb.len()) as u64);
    mm.set_exe_file_id(14);
    mm.vmas.push(anon_vma(BASE, BASE + 8 * page, 1));
    write(dir, &format!("mm-{pid}.img"), MM_MAGIC, &[&mm]);

    let mut head = Pagemap_head::new();
    head.set_pages_id(pid);
    let mut present = Pagemap_entry::new();
    present.set_vaddr(BASE);
    present.set_compat_nr_pages(2);
    present.set_nr_pages(2);
    present.set_flags(PE_PRESENT);
    let mut lazy = Pagemap_entry::new();
    lazy.set_vaddr(BASE + 4 * page);
    lazy.set_compat_nr_pages(3);
    lazy.set_nr_pages(3);
    lazy.set_flags(PE_LAZY);
    let path = dir.join(format!("pagemap-{pid}.img"));
    let mut bytes = image::encode(PAGEMAP_MAGIC, &[&head]);
    bytes.extend_from_slice(&image::encode(PAGEMAP_MAGIC, &[&present, &lazy])[8..]);
    std::fs::write(path, bytes).unwrap();
}

fn core(comm: &str, files: u32) -> Core_entry {
    let mut tc = Task_core_entry::new();
    tc.set_task_state(1);
    tc.set_exit_code(0);
    tc.set_personality(0);
    tc.set_flags(0);
    tc.set_blk_sigset(0);
    tc.set_comm(comm.into());
    let mut c = Core_entry::new();
    c.set_mtype(March::X86_64);
    c.tc = Some(tc).into();
    c.ids = Some(ids(files)).into();
    c
}

pub(crate) fn make_images(dir: &Path) {
    let mut inv = Inventory_entry::new();
    inv.set_img_version(2);
    inv.set_network_lock_method(1);
    // CRIU's own namespaces (the host's), not the tree's.
    let mut host = ids(1);
    host.set_mnt_ns_id(99);
    host.set_uts_ns_id(98);
    inv.root_ids = Some(host).into();
    write(dir, "inventory.img", INVENTORY_MAGIC, &[&inv]);

    let mut p1 = Pstree_entry::new();
    p1.set_pid(1);
    p1.set_ppid(0);
    p1.set_pgid(1);
    p1.set_sid(1);
    p1.threads = vec![1];
    let mut p2 = p1.clone();
    p2.set_pid(2);
    p2.set_ppid(1);
    p2.threads = vec![2, 3];
    write(dir, "pstree.img", PSTREE_MAGIC, &[&p1, &p2]);
    write(dir, "core-1.img", CORE_MAGIC, &[&core("sh", 1)]);
    write(dir, "core-2.img", CORE_MAGIC, &[&core("sleep", 2)]);
    process_memory(
        dir,
        1,
        &["sh", "-c", "sleep 100"],
        &["HOME=/root", "FERRY=1"],
    );
    process_memory(dir, 2, &["sleep", "100"], &["A=b"]);

    write(
        dir,
        "fdinfo-1.img",
        FDINFO_MAGIC,
        &[
            &fd(0, 10, Fd_types::REG),
            &fd(3, 11, Fd_types::INETSK),
            &fd(4, 12, Fd_types::UNIXSK),
            &fd(5, 13, Fd_types::PIPE),
        ],
    );
    write(
        dir,
        "fdinfo-2.img",
        FDINFO_MAGIC,
        &[&fd(1, 13, Fd_types::PIPE)],
    );
    let mut isk = Inet_sk_entry::new();
    for f in [
        Inet_sk_entry::set_id,
        Inet_sk_entry::set_ino,
        Inet_sk_entry::set_flags,
        Inet_sk_entry::set_backlog,
        Inet_sk_entry::set_dst_port,
        Inet_sk_entry::set_type,
    ] {
        f(&mut isk, 1);
    }
    isk.set_family(libc::AF_INET as u32);
    isk.set_proto(libc::IPPROTO_TCP as u32);
    isk.set_state(10);
    isk.set_dst_port(0);
    isk.set_src_port(8080);
    isk.src_addr = vec![0];
    let mut fi = File_entry::new();
    fi.set_type(Fd_types::INETSK);
    fi.set_id(11);
    fi.isk = Some(isk).into();
    let mut usk = Unix_sk_entry::new();
    for f in [
        Unix_sk_entry::set_id,
        Unix_sk_entry::set_ino,
        Unix_sk_entry::set_flags,
        Unix_sk_entry::set_uflags,
        Unix_sk_entry::set_backlog,
        Unix_sk_entry::set_peer,
        Unix_sk_entry::set_type,
    ] {
        f(&mut usk, 1);
    }
    usk.set_state(1);
    usk.set_name(b"/run/app.sock".to_vec());
    let mut fu = File_entry::new();
    fu.set_type(Fd_types::UNIXSK);
    fu.set_id(12);
    fu.usk = Some(usk).into();
    let mut pipe = Pipe_entry::new();
    pipe.set_id(13);
    pipe.set_pipe_id(4242);
    pipe.set_flags(0);
    let mut fp = File_entry::new();
    fp.set_type(Fd_types::PIPE);
    fp.set_id(13);
    fp.pipe = Some(pipe).into();
    write(
        dir,
        "files.img",
        FILES_MAGIC,
        &[
            &reg(10, "/dev/null"),
            &fi,
            &fu,
            &fp,
            &reg(14, "/bin/busybox"),
            &reg(15, "/"),
        ],
    );
    let mut fs = Fs_entry::new();
    fs.set_cwd_id(15);
    fs.set_root_id(15);
    write(dir, "fs-1.img", FS_MAGIC, &[&fs]);

    let mnt = |id: u32, parent: u32, at: &str, fstype: u32| {
        let mut m = Mnt_entry::new();
        m.set_fstype(fstype);
        m.set_mnt_id(id);
        m.set_root_dev(0);
        m.set_parent_mnt_id(parent);
        m.set_flags(0);
        m.set_root("/".into());
        m.set_mountpoint(at.into());
        m.set_source("none".into());
        m.set_options("rw".into());
        m
    };
    write(
        dir,
        "mountpoints-5.img",
        MNTS_MAGIC,
        &[&mnt(100, 1, "/", 17), &mnt(101, 100, "/proc", 1)],
    );
    let mut uts = Utsns_entry::new();
    uts.set_nodename("box".into());
    uts.set_domainname("(none)".into());
    write(dir, "utsns-6.img", UTSNS_MAGIC, &[&uts]);

    let mut d = crate::proto::stats::Dump_stats_entry::new();
    d.set_freezing_time(1);
    d.set_frozen_time(2);
    d.set_memdump_time(3);
    d.set_memwrite_time(4);
    d.set_pages_scanned(10);
    d.set_pages_skipped_parent(0);
    d.set_pages_written(4);
    d.set_pages_lazy(6);
    let mut st = crate::proto::stats::Stats_entry::new();
    st.dump = Some(d).into();
    write(dir, "stats-dump", STATS_MAGIC, &[&st]);
}

#[test]
fn decodes_every_image_type() {
    let tmp = tempfile::tempdir().unwrap();
    make_images(tmp.path());
    let d = ImageDir::open(tmp.path()).unwrap();
    let s = d.summary(true).unwrap();
    assert_eq!(s.image_version, 2);
    assert_eq!(s.network_lock_method, Some("nftables"));
    let names: Vec<&str> = s
        .processes
        .iter()
        .map(|p| p.process.comm.as_str())
        .collect();
    assert_eq!(names, ["sh", "sleep"]);
    let sh = &s.processes[0];
    assert_eq!(sh.cmdline.as_deref().unwrap(), ["sh", "-c", "sleep 100"]);
    assert_eq!(sh.env.as_deref().unwrap(), ["HOME=/root", "FERRY=1"]);
    assert_eq!(sh.paths.exe.as_deref(), Some("/bin/busybox"));
    assert_eq!(sh.paths.cwd.as_deref(), Some("/"));
    let m = sh.memory.unwrap();
    assert_eq!((m.dumped_pages, m.lazy_pages, m.vmas), (2, 3, 1));
    assert_eq!(m.dumped_bytes, 2 * page_size());
    let files: Vec<(u32, &str)> = sh
        .files
        .iter()
        .map(|f| (f.fd, f.description.as_str()))
        .collect();
    assert_eq!(
        files,
        [
            (0, "/dev/null"),
            (3, "tcp 0.0.0.0:8080 (LISTEN)"),
            (
                4,
                "unix stream /run/app.sock (ESTABLISHED) ino:[1] peer:[1]"
            ),
            (5, "pipe:[4242]"),
        ]
    );
    assert_eq!(sh.files[1].kind, FileKind::Tcp);
    let sleep = &s.processes[1];
    assert_eq!(sleep.process.threads, [2, 3]);
    assert_eq!(sleep.cmdline.as_deref().unwrap(), ["sleep", "100"]);
    assert_eq!(sleep.files.len(), 1);
    assert_eq!(
        s.mounts
            .iter()
            .map(|m| (m.mountpoint.as_str(), m.fstype.as_str()))
            .collect::<Vec<_>>(),
        [("/", "overlay"), ("/proc", "proc")]
    );
    assert_eq!(s.namespaces.hostname.as_deref(), Some("box"));
    let dumped: Vec<&str> = s
        .namespaces
        .namespaces
        .iter()
        .filter(|n| n.dumped)
        .map(|n| n.kind)
        .collect();
    assert_eq!(dumped, ["uts", "mnt"]);
    assert_eq!(s.dump_stats.unwrap().pages_lazy, 6);
    assert_eq!(d.lazy_ranges(1).unwrap(), [(BASE + 4 * page_size(), 3)]);
    // Without --env the environment is not read.
    assert!(d.summary(false).unwrap().processes[0].env.is_none());
}

/// Offsets where a protobuf image file can end and still be well formed.
fn boundaries(bytes: &[u8], has_head: bool) -> Vec<usize> {
    let mut off = if has_head { 8 } else { 4 };
    let mut out = vec![off];
    while off + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 4 + len;
        out.push(off);
    }
    out
}

#[test]
fn every_truncation_of_every_file_is_an_error_naming_file_and_offset() {
    let src = tempfile::tempdir().unwrap();
    make_images(src.path());
    let mut names: Vec<String> = std::fs::read_dir(src.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut checked = 0;
    let dir = tempfile::tempdir().unwrap();
    make_images(dir.path());
    for name in &names {
        let original = std::fs::read(src.path().join(name)).unwrap();
        let raw = name.starts_with("pages-");
        let ok_cuts = if raw {
            Vec::new()
        } else {
            boundaries(&original, name != "inventory.img")
        };
        for cut in 0..original.len() {
            std::fs::write(dir.path().join(name), &original[..cut]).unwrap();
            let result = ImageDir::open(dir.path()).and_then(|d| d.summary(true));
            if ok_cuts.contains(&cut) {
                continue;
            }
            let err = match result {
                Err(e) => e,
                Ok(_) => panic!("{name} cut at {cut} of {} decoded", original.len()),
            };
            let msg = err.to_string();
            assert!(msg.contains(name.as_str()), "{name} cut at {cut}: {msg}");
            assert!(msg.contains(" at offset "), "{name} cut at {cut}: {msg}");
            if !raw {
                assert!(err.offset <= cut as u64, "{name} cut at {cut}: {msg}");
            }
            checked += 1;
        }
        std::fs::write(dir.path().join(name), &original).unwrap();
    }
    assert!(checked > 500, "{checked}");
}

#[test]
fn corrupt_bytes_never_panic_and_errors_name_the_file() {
    let src = tempfile::tempdir().unwrap();
    make_images(src.path());
    let names: Vec<String> = std::fs::read_dir(src.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("pages-"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    make_images(dir.path());
    for name in &names {
        let original = std::fs::read(src.path().join(name)).unwrap();
        for at in 0..original.len() {
            for value in [0x00u8, 0xff, 0x80, original[at].wrapping_add(1)] {
                let mut bad = original.clone();
                bad[at] = value;
                std::fs::write(dir.path().join(name), &bad).unwrap();
                if let Err(e) = ImageDir::open(dir.path()).and_then(|d| d.summary(true)) {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(" at offset "),
                        "{name}[{at}]={value:#x}: {msg}"
                    );
                }
            }
        }
        std::fs::write(dir.path().join(name), &original).unwrap();
    }
}

#[test]
fn magic_errors_are_precise() {
    let dir = tempfile::tempdir().unwrap();
    make_images(dir.path());
    let p = dir.path().join("core-2.img");
    let mut b = std::fs::read(&p).unwrap();
    b[4..8].copy_from_slice(&MM_MAGIC.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let err = ImageDir::open(dir.path())
        .unwrap()
        .process_tree()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "CRIU image {}: magic 0x57492820 is not 0x55053847 (core) at offset 4",
            p.display()
        )
    );
    let err = ImageDir::open(dir.path().join("nope")).unwrap_err();
    assert!(err.is_missing(), "{err}");
    assert!(err.to_string().contains("inventory.img"), "{err}");
}
