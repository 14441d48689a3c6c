//! The session keyring of a container's processes.
//!
//! As runc does, each container gets a session keyring of its own, named
//! `_ses.<id>`, so that its processes do not share the keyring of the
//! shell or daemon that started ferry; exec'd processes join the same one
//! by name. Kernels without keyrings (ENOSYS) are left alone, as by runc.
use std::ffi::CString;

use super::{Failure, Result};

const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
/// Search permission for the possessor's user (0x80000) or, in a user
/// namespace, for others (0x8): runc's `getSessionRingParams`.
const USER_SEARCH: u32 = 0x0008_0000;
const OTHER_SEARCH: u32 = 0x0000_0008;

/// The keyring name of container `id`.
pub fn name(id: &str) -> String {
    format!("_ses.{id}")
}

/// Joins (creating it the first time) the session keyring `name` and
/// makes it searchable.
pub fn join(name: &str, in_userns: bool) -> Result<()> {
    let cname =
        CString::new(name).map_err(|_| Failure::new("keyring", format!("{name:?}: NUL")))?;
    // SAFETY: keyctl with a valid C string; returns a key serial or -1.
    let key = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            cname.as_ptr(),
        )
    };
    if key < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSYS) {
            return Ok(());
        }
        return Err(Failure::io(
            "keyring",
            format!("join session keyring {name}"),
            &e,
        ));
    }
    let perm = describe_perm(key).map_err(|e| {
        Failure::io(
            "keyring",
            format!("read the permissions of keyring {name}"),
            &e,
        )
    })?;
    let add = if in_userns { OTHER_SEARCH } else { USER_SEARCH };
    // SAFETY: keyctl on the key just joined.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_SETPERM, key, perm | add) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return Err(Failure::io(
            "keyring",
            format!("make keyring {name} searchable"),
            &e,
        ));
    }
    Ok(())
}

/// The permission word of a key (`type;uid;gid;perm;description`, hex).
fn describe_perm(key: libc::c_long) -> std::io::Result<u32> {
    let mut buf = vec![0u8; 512];
    // SAFETY: keyctl writes at most buf.len() bytes into buf.
    let n = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_DESCRIBE,
            key,
            buf.as_mut_ptr(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let text = String::from_utf8_lossy(&buf[..(n as usize).min(buf.len())]).into_owned();
    parse_perm(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected key description {text:?}"),
        )
    })
}

fn parse_perm(description: &str) -> Option<u32> {
    let perm = description.trim_end_matches('\0').split(';').nth(3)?;
    u32::from_str_radix(perm, 16).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_permission_word_is_the_fourth_field_in_hex() {
        assert_eq!(
            super::parse_perm("keyring;0;0;3f1f0000;_ses.x\0"),
            Some(0x3f1f_0000)
        );
        assert_eq!(super::parse_perm("keyring;0;0"), None);
    }
}
