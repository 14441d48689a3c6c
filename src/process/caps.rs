//! process.capabilities: the bounding set, the capset sets and the ambient
//! set, through the system calls themselves so a refusal keeps its errno.
use std::str::FromStr;

use caps::{Capability, CapsHashSet};
use nix::errno::Errno;
use oci_spec::runtime::{Capabilities, Process};

use super::{Failure, Result};

/// The configured sets; a process without `capabilities` gets none.
pub struct Sets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl Sets {
    pub fn of(process: &Process) -> Result<Sets> {
        let Some(c) = process.capabilities() else {
            return Ok(Sets {
                bounding: CapsHashSet::new(),
                effective: CapsHashSet::new(),
                permitted: CapsHashSet::new(),
                inheritable: CapsHashSet::new(),
                ambient: CapsHashSet::new(),
            });
        };
        Ok(Sets {
            bounding: parse(c.bounding())?,
            effective: parse(c.effective())?,
            permitted: parse(c.permitted())?,
            inheritable: parse(c.inheritable())?,
            ambient: parse(c.ambient())?,
        })
    }

    /// Drops from the bounding set every capability not configured (while
    /// CAP_SETPCAP is still held).
    pub fn limit_bounding(&self) -> Result<()> {
        let known = caps::runtime::procfs_all_supported(None).unwrap_or_else(|_| caps::all());
        for c in known.difference(&self.bounding) {
            // SAFETY: PR_CAPBSET_DROP takes a capability number.
            let r =
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, c.index() as libc::c_ulong, 0, 0, 0) };
            Errno::result(r)
                .map_err(|e| Failure::sys("capabilities", format!("drop bounding {c}"), e))?;
        }
        Ok(())
    }

    /// Sets effective, permitted and inheritable in one capset, then raises
    /// the ambient ones. The kernel raises an ambient capability only if it
    /// is permitted and inheritable; one it refuses is left out with a
    /// warning naming it, as runc does (its default config lists ambient
    /// capabilities without inheritable ones). Returns those warnings.
    pub fn apply(&self) -> Result<Vec<String>> {
        capset(&self.effective, &self.permitted, &self.inheritable)
            .map_err(|e| Failure::sys("capabilities", "capset", e))?;
        // EINVAL: a kernel without ambient capabilities (before 4.3).
        match prctl_ambient(libc::PR_CAP_AMBIENT_CLEAR_ALL, 0) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(Failure::sys("capabilities", "clear ambient", e)),
        }
        let mut ambient: Vec<Capability> = self.ambient.iter().copied().collect();
        ambient.sort_by_key(|c| c.index());
        Ok(ambient
            .into_iter()
            .filter_map(|c| {
                let e = prctl_ambient(libc::PR_CAP_AMBIENT_RAISE, c.index()).err()?;
                Some(format!("can't raise ambient capability {c}: {e}"))
            })
            .collect())
    }
}

fn parse(set: &Option<Capabilities>) -> Result<CapsHashSet> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = serde_json::to_value(c)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let cap = Capability::from_str(&name)
            .map_err(|_| Failure::new("capabilities", format!("unknown capability {name}")))?;
        out.insert(cap);
    }
    Ok(out)
}

fn prctl_ambient(op: libc::c_int, cap: u8) -> nix::Result<()> {
    // SAFETY: PR_CAP_AMBIENT with an operation and a capability number.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            op as libc::c_ulong,
            cap as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    Errno::result(r).map(drop)
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capset(
    effective: &CapsHashSet,
    permitted: &CapsHashSet,
    inheritable: &CapsHashSet,
) -> nix::Result<()> {
    let mask = |s: &CapsHashSet| s.iter().fold(0u64, |m, c| m | c.bitmask());
    let (e, p, i) = (mask(effective), mask(permitted), mask(inheritable));
    // Version 3 splits each 64-bit set into two 32-bit words, low first.
    let data = [0, 32].map(|shift| CapData {
        effective: (e >> shift) as u32,
        permitted: (p >> shift) as u32,
        inheritable: (i >> shift) as u32,
    });
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a v3 header and the two data words it expects.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    Errno::result(r).map(drop)
}
