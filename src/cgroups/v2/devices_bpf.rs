//! Device rules on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup, with the
//! semantics runc gives `linux.resources.devices` (libcontainer's
//! devicefilter): rules in order, the last matching rule decides, no match
//! denies. The kernel calls the program for every open and mknod of a device
//! node by a process of the cgroup (and of its children).
//!
//! The program is assembled here (a few instructions per rule) rather than
//! through an eBPF toolchain crate: the instruction set needed is tiny and
//! fixed, and the whole of it is visible in this file.
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::super::devices::ACC_ALL;
pub use super::super::devices::{parse_access, Kind, Rule, ACC_MKNOD, ACC_READ, ACC_WRITE};

// struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }
// access_type = access << 16 | type (include/uapi/linux/bpf.h).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// One eBPF instruction (struct bpf_insn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: (src << 4) | (dst & 0x0f),
            off,
            imm,
        }
    }
}

// Opcodes: class | op | source (include/uapi/linux/bpf_common.h).
const LDX_MEM_W: u8 = 0x01 | 0x60; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x04 | 0x50;
const ALU32_RSH_K: u8 = 0x04 | 0x70;
const ALU32_MOV_K: u8 = 0x04 | 0xb0;
const ALU32_MOV_X: u8 = 0x04 | 0xb0 | 0x08;
const JMP_JNE_K: u8 = 0x05 | 0x50;
const JMP_JNE_X: u8 = 0x05 | 0x50 | 0x08;
const JMP_EXIT: u8 = 0x05 | 0x90;

// Registers: R1 holds the context; the prologue loads type, access, major
// and minor into R2..R5; R0 is the verdict (1 allow, 0 deny).
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// The program for `rules` (in config order, last match wins).
pub fn program(rules: &[Rule]) -> Vec<Insn> {
    let mut insns = vec![
        Insn::new(LDX_MEM_W, R2, R1, 0, 0),
        Insn::new(ALU32_AND_K, R2, 0, 0, 0xffff),
        Insn::new(LDX_MEM_W, R3, R1, 0, 0),
        Insn::new(ALU32_RSH_K, R3, 0, 0, 16),
        Insn::new(LDX_MEM_W, R4, R1, 4, 0),
        Insn::new(LDX_MEM_W, R5, R1, 8, 0),
    ];
    // Checked from the last rule back, the first match returns. A rule that
    // matches everything decides for every rule before it, so the walk stops
    // there and its verdict becomes the default.
    let mut default_allow = false;
    for rule in rules.iter().rev() {
        let checks = rule_checks(rule);
        if checks.is_empty() {
            default_allow = rule.allow;
            break;
        }
        // Each check jumps past the rule's block when it does not match;
        // the block ends with "R0 = verdict; exit".
        let block_len = checks.len() + 2;
        for (i, mut insn) in checks.into_iter().enumerate() {
            if insn.code == JMP_JNE_K || insn.code == JMP_JNE_X {
                // Offsets count from the next instruction.
                insn.off = (block_len - i - 1) as i16;
            }
            insns.push(insn);
        }
        insns.push(Insn::new(ALU32_MOV_K, R0, 0, 0, rule.allow as i32));
        insns.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    }
    insns.push(Insn::new(ALU32_MOV_K, R0, 0, 0, default_allow as i32));
    insns.push(Insn::new(JMP_EXIT, 0, 0, 0, 0));
    insns
}

/// The checks of one rule: jumps taken when the access does not match
/// (their offsets are filled in by the caller).
fn rule_checks(rule: &Rule) -> Vec<Insn> {
    let mut v = Vec::new();
    if let Some(kind) = rule.kind {
        let t = match kind {
            Kind::Block => DEV_BLOCK,
            Kind::Char => DEV_CHAR,
        };
        v.push(Insn::new(JMP_JNE_K, R2, 0, 0, t));
    }
    if rule.access & ACC_ALL != ACC_ALL {
        // Matches when every requested bit is granted: (R3 & access) == R3.
        v.push(Insn::new(ALU32_MOV_X, R1, R3, 0, 0));
        v.push(Insn::new(ALU32_AND_K, R1, 0, 0, rule.access as i32));
        v.push(Insn::new(JMP_JNE_X, R1, R3, 0, 0));
    }
    if let Some(major) = rule.major {
        v.push(Insn::new(JMP_JNE_K, R4, 0, 0, major as i32));
    }
    if let Some(minor) = rule.minor {
        v.push(Insn::new(JMP_JNE_K, R5, 0, 0, minor as i32));
    }
    v
}

/// Runs `prog` on one access the way the kernel would (used by the tests to
/// check the assembled program against the rule semantics).
#[cfg(test)]
fn evaluate(prog: &[Insn], kind: Kind, major: u32, minor: u32, access: u32) -> Option<bool> {
    let t = match kind {
        Kind::Block => DEV_BLOCK as u32,
        Kind::Char => DEV_CHAR as u32,
    };
    let ctx = [(access << 16) | t, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..4096 {
        let i = prog.get(pc)?;
        let (dst, src) = ((i.regs & 0x0f) as usize, (i.regs >> 4) as usize);
        pc += 1;
        match i.code {
            LDX_MEM_W => r[dst] = ctx[(i.off / 4) as usize] as u64,
            ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
            ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
            ALU32_MOV_K => r[dst] = i.imm as u32 as u64,
            ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
            JMP_JNE_K if r[dst] != i.imm as i64 as u64 => {
                pc = pc.checked_add_signed(i.off as isize)?
            }
            JMP_JNE_X if r[dst] != r[src] => pc = pc.checked_add_signed(i.off as isize)?,
            JMP_JNE_K | JMP_JNE_X => {}
            JMP_EXIT => return Some(r[0] == 1),
            _ => return None,
        }
    }
    None
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading the device program into the kernel: {source}{}", verifier(.log))]
    Load { source: std::io::Error, log: String },
    #[error("opening cgroup {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{op} on cgroup {}: {source}", path.display())]
    Bpf {
        op: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

fn verifier(log: &str) -> String {
    let log = log.trim_end_matches('\0').trim();
    if log.is_empty() {
        String::new()
    } else {
        format!(" (verifier: {})", log.lines().last().unwrap_or(log))
    }
}

// bpf(2) commands and constants (include/uapi/linux/bpf.h).
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_DETACH: libc::c_int = 9;
const BPF_PROG_GET_FD_BY_ID: libc::c_int = 13;
const BPF_PROG_QUERY: libc::c_int = 16;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// union bpf_attr, as 8-byte words; each command uses its own prefix.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn get_u32(&self, off: usize) -> u32 {
        u32::from_ne_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
}

fn bpf(cmd: libc::c_int, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the size passed; the
    // pointers stored in it (instructions, license, buffers) outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn load(prog: &[Insn]) -> Result<OwnedFd, Error> {
    let license = c"Apache-2.0";
    let try_load = |log: &mut Vec<u8>| {
        let mut a = Attr::new();
        a.u32(0, BPF_PROG_TYPE_CGROUP_DEVICE)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64);
        if !log.is_empty() {
            a.u32(24, 1)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        a.u32(68, BPF_CGROUP_DEVICE);
        bpf(BPF_PROG_LOAD, &mut a)
    };
    match try_load(&mut Vec::new()) {
        // SAFETY: a successful BPF_PROG_LOAD returns a new fd we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(source) => {
            // Load again with the verifier's log, to say why.
            let mut log = vec![0u8; 64 * 1024];
            let _ = try_load(&mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(Error::Load {
                source,
                log: String::from_utf8_lossy(&log[..end]).into_owned(),
            })
        }
    }
}

/// Programs of type cgroup-device attached directly to the cgroup `fd`.
fn attached(fd: &OwnedFd, dir: &Path) -> Result<Vec<u32>, Error> {
    let mut ids = vec![0u32; 64];
    let mut a = Attr::new();
    a.u32(0, fd.as_raw_fd() as u32)
        .u32(4, BPF_CGROUP_DEVICE)
        .u64(16, ids.as_mut_ptr() as u64)
        .u32(24, ids.len() as u32);
    bpf(BPF_PROG_QUERY, &mut a).map_err(|source| Error::Bpf {
        op: "listing device programs",
        path: dir.to_path_buf(),
        source,
    })?;
    ids.truncate(a.get_u32(24) as usize);
    Ok(ids)
}

/// Attaches `prog` to (or detaches it from) the cgroup `cg` of `dir`.
fn cgroup_cmd(
    (cmd, op): (libc::c_int, &'static str),
    cg: &OwnedFd,
    prog: &OwnedFd,
    flags: u32,
    dir: &Path,
) -> Result<(), Error> {
    let mut a = Attr::new();
    a.u32(0, cg.as_raw_fd() as u32)
        .u32(4, prog.as_raw_fd() as u32)
        .u32(8, BPF_CGROUP_DEVICE)
        .u32(12, flags);
    bpf(cmd, &mut a).map(drop).map_err(|source| Error::Bpf {
        op,
        path: dir.to_path_buf(),
        source,
    })
}

/// Loads the program for `rules` and makes it the only device program of
/// the cgroup directory `dir` (programs attached earlier, by a previous
/// create or update, are detached after the new one is in place, so there
/// is no moment without rules).
pub fn apply(dir: &Path, rules: &[Rule]) -> Result<(), Error> {
    let prog = load(&program(rules))?;
    let cg: OwnedFd = std::fs::File::open(dir)
        .map_err(|source| Error::Open {
            path: dir.to_path_buf(),
            source,
        })?
        .into();
    let old = attached(&cg, dir)?;
    let attach = (BPF_PROG_ATTACH, "attaching the device program");
    cgroup_cmd(attach, &cg, &prog, BPF_F_ALLOW_MULTI, dir)?;
    for id in old {
        let mut g = Attr::new();
        g.u32(0, id);
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut g) else {
            continue; // already gone
        };
        // SAFETY: BPF_PROG_GET_FD_BY_ID returned a new fd we own.
        let old_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let detach = (BPF_PROG_DETACH, "detaching the previous device program");
        cgroup_cmd(detach, &cg, &old_fd, 0, dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: Option<Kind>,
        major: Option<u32>,
        minor: Option<u32>,
        access: &str,
    ) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor,
            access: parse_access(access).unwrap(),
        }
    }

    const RW: u32 = ACC_READ | ACC_WRITE;

    /// Asserts the verdict of `prog` on accesses written as for v1's
    /// devices.allow (`c 1:3 rw`).
    fn verdicts(prog: &[Insn], allowed: &[&str], denied: &[&str]) {
        for (list, want) in [(allowed, true), (denied, false)] {
            for access in list {
                let f: Vec<&str> = access.split([' ', ':']).collect();
                let kind = if f[0] == "b" { Kind::Block } else { Kind::Char };
                let (major, minor) = (f[1].parse().unwrap(), f[2].parse().unwrap());
                let bits = parse_access(f[3]).unwrap();
                let got = evaluate(prog, kind, major, minor, bits);
                assert_eq!(got, Some(want), "{access}");
            }
        }
    }

    #[test]
    fn last_match_wins_and_default_denies() {
        let rules = [
            rule(false, None, None, None, "rwm"),
            rule(true, Some(Kind::Char), Some(1), Some(3), "rwm"),
            rule(false, Some(Kind::Char), Some(1), Some(3), "w"),
        ];
        // /dev/null read: the allow rule; write: the later deny. A rule
        // matches an access only if it grants every bit asked for (runc's
        // and crun's programs agree): "w" does not match a read-write open,
        // so the earlier "rwm" allow decides it. Anything else: the leading
        // deny-all is the default.
        verdicts(
            &program(&rules),
            &["c 1:3 r", "c 1:3 rw"],
            &["c 1:3 w", "c 1:5 r", "b 8:0 r"],
        );
        // Without a catch-all rule, no match denies.
        verdicts(&program(&rules[1..]), &[], &["c 1:5 r"]);
    }

    #[test]
    fn wildcards_and_access_subsets() {
        let rules = [
            rule(true, Some(Kind::Char), None, None, "m"),
            rule(true, Some(Kind::Char), Some(136), None, "rw"),
            rule(true, None, Some(7), Some(0), "r"),
        ];
        verdicts(
            &program(&rules),
            &["c 99:99 m", "c 136:4 rw", "c 136:4 r", "b 7:0 r", "c 7:0 r"],
            &["c 99:99 r", "b 99:99 m", "c 136:4 rwm", "b 7:0 w"],
        );
    }

    #[test]
    fn allow_all_after_rules_allows_everything() {
        let rules = [
            rule(false, Some(Kind::Char), Some(1), Some(3), "rwm"),
            rule(true, None, None, None, "rwm"),
        ];
        let p = program(&rules);
        assert_eq!(evaluate(&p, Kind::Char, 1, 3, RW), Some(true));
        // The catch-all ends the program: no rule before it is compiled.
        assert_eq!(p.len(), 8);
    }
}
