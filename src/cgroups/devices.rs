//! `linux.resources.devices` as both versions see it: the config's rules,
//! checked and normalised, followed by the nodes every container may use.
//! v1 writes them to the devices controller, v2 compiles them to an eBPF
//! program ([`super::devices_bpf`]).
use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::common::Handle;
use super::Result;

/// One rule, already normalised: `None` is a wildcard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub allow: bool,
    /// `Some(Char|Block)`, or `None` for both (`a`).
    pub kind: Option<Kind>,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// Bits of [`ACC_MKNOD`], [`ACC_READ`], [`ACC_WRITE`].
    pub access: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    Char,
}

// The kernel's access bits (include/uapi/linux/bpf.h, BPF_DEVCG_ACC_*).
pub const ACC_MKNOD: u32 = 1;
pub const ACC_READ: u32 = 2;
pub const ACC_WRITE: u32 = 4;
pub(super) const ACC_ALL: u32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// Parses an OCI access string ("rwm" letters, empty meaning all).
pub fn parse_access(s: &str) -> Option<u32> {
    if s.is_empty() {
        return Some(ACC_ALL);
    }
    s.chars().try_fold(0, |acc, c| match c {
        'r' => Some(acc | ACC_READ),
        'w' => Some(acc | ACC_WRITE),
        'm' => Some(acc | ACC_MKNOD),
        _ => None,
    })
}

/// Device rules as runc applies them: the config's rules in order, then
/// the nodes every container gets (OCI "default devices", created by the
/// runtime), which stay usable whatever the rules deny (podman sends a
/// bare "deny all" and relies on this).
pub(super) fn with_defaults(h: &Handle, rules: &[LinuxDeviceCgroup]) -> Result<Vec<Rule>> {
    let mut all = rules
        .iter()
        .map(|r| checked(h, r))
        .collect::<Result<Vec<_>>>()?;
    all.extend(
        DEFAULT_ALLOWED_DEVICES
            .iter()
            .map(|&(kind, major, minor, access)| Rule {
                allow: true,
                kind: Some(kind),
                major,
                minor,
                access,
            }),
    );
    Ok(all)
}

/// One `linux.resources.devices` entry, checked.
fn checked(h: &Handle, rule: &LinuxDeviceCgroup) -> Result<Rule> {
    let kind = match rule.typ() {
        None | Some(LinuxDeviceType::A) => None,
        Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => Some(Kind::Char),
        Some(LinuxDeviceType::B) => Some(Kind::Block),
        Some(LinuxDeviceType::P) => {
            return Err(h.invalid(
                "device rule of type 'p' (fifo) cannot be expressed in the devices cgroup; use a, b or c".into(),
            ))
        }
    };
    let access = rule.access().clone().unwrap_or_default();
    let bits = parse_access(&access).ok_or_else(|| {
        h.invalid(format!(
            "device rule access {access:?} is invalid; use letters from \"rwm\""
        ))
    })?;
    let number = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
        match v {
            None | Some(-1) => Ok(None),
            Some(n) => u32::try_from(n).map(Some).map_err(|_| {
                h.invalid(format!(
                    "device rule {what} {n} is out of range; use 0..4294967295 or -1 for any"
                ))
            }),
        }
    };
    Ok(Rule {
        allow: rule.allow(),
        kind,
        major: number(rule.major(), "major")?,
        minor: number(rule.minor(), "minor")?,
        access: bits,
    })
}

/// runc's always-allowed devices: mknod of any node, the default nodes
/// (null, zero, full, random, urandom, tty, console, ptmx), pty slaves and tun.
const DEFAULT_ALLOWED_DEVICES: &[(Kind, Option<u32>, Option<u32>, u32)] = {
    use Kind::{Block, Char};
    const M: u32 = ACC_MKNOD;
    const RWM: u32 = ACC_READ | ACC_WRITE | ACC_MKNOD;
    &[
        (Char, None, None, M),
        (Block, None, None, M),
        (Char, Some(1), Some(3), RWM),
        (Char, Some(1), Some(5), RWM),
        (Char, Some(1), Some(7), RWM),
        (Char, Some(1), Some(8), RWM),
        (Char, Some(1), Some(9), RWM),
        (Char, Some(5), Some(0), RWM),
        (Char, Some(5), Some(1), RWM),
        (Char, Some(5), Some(2), RWM),
        (Char, Some(136), None, RWM),
        (Char, Some(10), Some(200), RWM),
    ]
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_strings() {
        assert_eq!(parse_access("rwm"), Some(ACC_ALL));
        assert_eq!(parse_access(""), Some(ACC_ALL));
        assert_eq!(parse_access("r"), Some(ACC_READ));
        assert_eq!(parse_access("rx"), None);
    }
}
