//! process.user: groups, gid, uid and umask.
use nix::sys::prctl::set_keepcaps;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::User;

use super::{Failure, Result};

/// Switches to the configured user. The permitted capabilities survive
/// the switch (keepcaps) so they can then be set as configured.
pub fn switch(user: &User) -> Result<()> {
    let fail = |what: String| move |e| Failure::sys("user", what, e);
    set_keepcaps(true).map_err(fail("keepcaps".into()))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    setgroups(&groups).map_err(fail("setgroups".into()))?;
    let gid = Gid::from_raw(user.gid());
    setresgid(gid, gid, gid).map_err(fail(format!("setgid {gid}")))?;
    let uid = Uid::from_raw(user.uid());
    setresuid(uid, uid, uid).map_err(fail(format!("setuid {uid}")))?;
    set_keepcaps(false).map_err(fail("keepcaps".into()))?;
    if let Some(mask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask));
    }
    Ok(())
}
