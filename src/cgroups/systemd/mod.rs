//! The systemd cgroup driver (`--systemd-cgroup`): the container's cgroup is
//! a transient scope that systemd makes over the system bus, as runc's
//! systemd driver does on cgroup v2.
//!
//! `linux.cgroupsPath` is `slice:prefix:name` ([`Scope`]). The scope can only
//! be started with a process in it, so it is started when the first process
//! joins the cgroup (the init on create, CRIU on restore), with
//! `Delegate=yes` and the limits systemd knows as unit properties; every
//! setting is then written through the cgroupfs as with the cgroupfs driver.
//! Stopping the unit removes it; what is left of its directory is removed
//! through the cgroupfs.
mod bus;
mod path;
mod props;

use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;
use zbus::zvariant::Value;

pub use bus::SYSTEM_BUS_SOCKET;
pub use path::{default_path, Scope};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--systemd-cgroup needs a running systemd ({detail}); start systemd, or drop the flag to use ferry's cgroupfs driver")]
    NoBus { detail: String },
    #[error("--systemd-cgroup: cgroupsPath {path:?} is not of the form slice:prefix:name ({why})")]
    BadPath { path: String, why: String },
    #[error("--systemd-cgroup needs a pure cgroup v2 host (this one mounts cgroup v1 hierarchies); drop the flag to use ferry's cgroupfs driver")]
    NotV2,
    #[error("systemd unit {unit}: {op}: {source}")]
    Bus {
        unit: String,
        op: &'static str,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd unit {unit} already exists and is active: another container uses this cgroupsPath; pick another name or delete that container")]
    UnitExists { unit: String },
    #[error("systemd unit {unit} did not start (state {state}); see `journalctl -u {unit}`")]
    StartFailed { unit: String, state: String },
    #[error("systemd unit {unit}: {op} job not done after 10 s (state {state})")]
    Timeout {
        unit: String,
        op: &'static str,
        state: String,
    },
    #[error("systemd unit {unit} vanished while being set up")]
    Vanished { unit: String },
    #[error("systemd put unit {unit} at cgroup {got}, not {want}; is systemd running in another cgroup namespace?")]
    WrongCgroup {
        unit: String,
        got: String,
        want: String,
    },
}

/// Fails, without connecting, where no system bus can be there.
pub fn check_bus() -> Result<(), Error> {
    bus::check_bus()
}

/// The scope's directory under the cgroup2 mount `root`.
pub fn scope_dir(root: &Path, scope: &Scope) -> PathBuf {
    root.join(scope.relative_dir())
}

/// Starts the scope with `pid` in it and the limits of `r` as unit
/// properties, and waits until systemd reports it active. A unit of that
/// name left inactive or failed (by a container that died) is reset first.
pub fn start(scope: &Scope, pid: i32, r: Option<&LinuxResources>) -> Result<(), Error> {
    let _span = tracing::debug_span!("systemd_start", unit = %scope.unit, pid).entered();
    let m = bus::Manager::connect()?;
    let mut p: Vec<props::Property> = vec![
        (
            "Description",
            Value::from(format!("ferry container {}", scope.unit)),
        ),
        ("Slice", Value::from(scope.slice.clone())),
        ("Delegate", Value::Bool(true)),
        ("PIDs", Value::from(vec![pid as u32])),
        ("DefaultDependencies", Value::Bool(false)),
        ("MemoryAccounting", Value::Bool(true)),
        ("CPUAccounting", Value::Bool(true)),
        ("TasksAccounting", Value::Bool(true)),
    ];
    // No IOAccounting: systemd would rewrite io.weight on every reload
    // unless IOWeight is set (blockIO.weight); Delegate=yes gives the scope
    // the io controller in any case.
    p.extend(r.map(props::from_resources).unwrap_or_default());
    match m.start_transient(&scope.unit, &p) {
        Err(Error::UnitExists { unit }) => {
            let state = m.state(&unit)?;
            if state
                .as_ref()
                .is_some_and(|s| s.active != "inactive" && s.active != "failed")
            {
                return Err(Error::UnitExists { unit });
            }
            tracing::info!(%unit, ?state, "resetting a stale unit of the same name");
            m.reset_failed(&unit)?;
            m.start_transient(&unit, &p)?;
        }
        other => other?,
    }
    let result = m.wait_active(&scope.unit).and_then(|()| {
        let want = format!("/{}", scope.relative_dir().display());
        let got = m.control_group(&scope.unit)?;
        if got != want {
            return Err(Error::WrongCgroup {
                unit: scope.unit.clone(),
                got,
                want,
            });
        }
        Ok(())
    });
    if result.is_err() {
        if let Err(e) = stop_with(&m, scope) {
            tracing::warn!(error = %e, unit = %scope.unit, "cannot stop the unit again");
        }
    }
    result
}

/// Sets the limits of `r` that systemd knows on the running scope.
pub fn set(scope: &Scope, r: &LinuxResources) -> Result<(), Error> {
    let p = props::from_resources(r);
    if p.is_empty() {
        return Ok(());
    }
    bus::Manager::connect()?.set_properties(&scope.unit, &p)
}

/// Stops the scope (killing what is still in it) and forgets it; a unit
/// systemd does not know is fine.
pub fn stop(scope: &Scope) -> Result<(), Error> {
    stop_with(&bus::Manager::connect()?, scope)
}

fn stop_with(m: &bus::Manager, scope: &Scope) -> Result<(), Error> {
    let _span = tracing::debug_span!("systemd_stop", unit = %scope.unit).entered();
    if m.stop(&scope.unit)? {
        m.wait_stopped(&scope.unit)?;
    }
    m.reset_failed(&scope.unit)
}
