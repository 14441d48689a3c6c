//! The calls to systemd's manager over the system bus (blocking zbus).
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

use super::props::Property;
use super::Error;

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const UNIT: &str = "org.freedesktop.systemd1.Unit";
const SCOPE: &str = "org.freedesktop.systemd1.Scope";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";

/// Where the system bus listens unless DBUS_SYSTEM_BUS_ADDRESS says otherwise.
pub const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";
/// How long a unit's start or stop may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

/// Fails, without connecting, where no system bus can be there.
pub fn check_bus() -> Result<(), Error> {
    if std::env::var_os("DBUS_SYSTEM_BUS_ADDRESS").is_none()
        && !Path::new(SYSTEM_BUS_SOCKET).exists()
    {
        return Err(Error::NoBus {
            detail: format!("no system bus at {SYSTEM_BUS_SOCKET}"),
        });
    }
    Ok(())
}

/// A unit's state as systemd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitState {
    pub active: String,
    pub sub: String,
}

/// systemd's manager on the system bus.
pub struct Manager {
    conn: Connection,
}

impl Manager {
    pub fn connect() -> Result<Manager, Error> {
        check_bus()?;
        let conn = Connection::system().map_err(|e| Error::NoBus {
            detail: format!("cannot connect to the system bus: {e}"),
        })?;
        Ok(Manager { conn })
    }

    fn call<B>(&self, unit: &str, method: &'static str, body: &B) -> Result<zbus::Message, Error>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.conn
            .call_method(Some(DEST), PATH, Some(MANAGER), method, body)
            .map_err(|e| bus_error(unit, method, e))
    }

    /// StartTransientUnit in "fail" mode (an existing unit is an error).
    pub fn start_transient(&self, unit: &str, props: &[Property]) -> Result<(), Error> {
        let props: Vec<(&str, &Value)> = props.iter().map(|(k, v)| (*k, v)).collect();
        let aux: Vec<(&str, Vec<(&str, Value)>)> = Vec::new();
        self.call(unit, "StartTransientUnit", &(unit, "fail", props, aux))?;
        Ok(())
    }

    /// SetUnitProperties, at runtime only (nothing written under /etc).
    pub fn set_properties(&self, unit: &str, props: &[Property]) -> Result<(), Error> {
        if props.is_empty() {
            return Ok(());
        }
        let props: Vec<(&str, &Value)> = props.iter().map(|(k, v)| (*k, v)).collect();
        self.call(unit, "SetUnitProperties", &(unit, true, props))?;
        Ok(())
    }

    /// StopUnit; false if systemd has no such unit.
    pub fn stop(&self, unit: &str) -> Result<bool, Error> {
        no_such_unit_is_none(self.call(unit, "StopUnit", &(unit, "replace"))).map(|r| r.is_some())
    }

    /// ResetFailedUnit, so a failed unit's name can be used again.
    pub fn reset_failed(&self, unit: &str) -> Result<(), Error> {
        no_such_unit_is_none(self.call(unit, "ResetFailedUnit", &(unit,)))?;
        Ok(())
    }

    fn unit_path(&self, unit: &str) -> Result<Option<OwnedObjectPath>, Error> {
        let Some(reply) = no_such_unit_is_none(self.call(unit, "GetUnit", &(unit,)))? else {
            return Ok(None);
        };
        let path: OwnedObjectPath = reply
            .body()
            .deserialize()
            .map_err(|e| bus_error(unit, "GetUnit", e))?;
        Ok(Some(path))
    }

    fn property(
        &self,
        unit: &str,
        path: &OwnedObjectPath,
        iface: &str,
        name: &str,
    ) -> Result<String, Error> {
        let reply = self
            .conn
            .call_method(Some(DEST), path, Some(PROPERTIES), "Get", &(iface, name))
            .map_err(|e| bus_error(unit, "Get", e))?;
        let v: OwnedValue = reply
            .body()
            .deserialize()
            .map_err(|e| bus_error(unit, "Get", e))?;
        String::try_from(v).map_err(|e| bus_error(unit, "Get", e.into()))
    }

    /// The unit's ActiveState and SubState; None if systemd has no such unit.
    pub fn state(&self, unit: &str) -> Result<Option<UnitState>, Error> {
        let Some(path) = self.unit_path(unit)? else {
            return Ok(None);
        };
        Ok(Some(UnitState {
            active: self.property(unit, &path, UNIT, "ActiveState")?,
            sub: self.property(unit, &path, UNIT, "SubState")?,
        }))
    }

    /// The scope's cgroup, relative to the cgroup root ("/system.slice/x.scope").
    pub fn control_group(&self, unit: &str) -> Result<String, Error> {
        let path = self.unit_path(unit)?.ok_or_else(|| Error::Vanished {
            unit: unit.to_string(),
        })?;
        self.property(unit, &path, SCOPE, "ControlGroup")
    }

    /// Waits until the unit is active (its start job done).
    pub fn wait_active(&self, unit: &str) -> Result<(), Error> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let state = self.state(unit)?;
            match state.as_ref().map(|s| s.active.as_str()) {
                Some("active") => return Ok(()),
                Some("failed") | None => {
                    return Err(Error::StartFailed {
                        unit: unit.to_string(),
                        state: state.map_or("gone".into(), |s| format!("{}/{}", s.active, s.sub)),
                    })
                }
                _ if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        unit: unit.to_string(),
                        op: "start",
                        state: state.map_or("gone".into(), |s| format!("{}/{}", s.active, s.sub)),
                    })
                }
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Waits until the unit is gone or inactive/failed (its stop job done).
    pub fn wait_stopped(&self, unit: &str) -> Result<(), Error> {
        let deadline = Instant::now() + JOB_TIMEOUT;
        loop {
            let state = self.state(unit)?;
            match state.as_ref().map(|s| s.active.as_str()) {
                None | Some("inactive" | "failed") => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(Error::Timeout {
                        unit: unit.to_string(),
                        op: "stop",
                        state: state.map_or("gone".into(), |s| format!("{}/{}", s.active, s.sub)),
                    })
                }
                _ => thread::sleep(Duration::from_millis(5)),
            }
        }
    }
}

/// The D-Bus error name of a failed call, if it is one.
pub fn error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        _ => None,
    }
}

fn no_such_unit_is_none(r: Result<zbus::Message, Error>) -> Result<Option<zbus::Message>, Error> {
    match r {
        Ok(m) => Ok(Some(m)),
        Err(Error::Bus { source, .. })
            if error_name(&source) == Some("org.freedesktop.systemd1.NoSuchUnit") =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn bus_error(unit: &str, op: &'static str, source: zbus::Error) -> Error {
    match error_name(&source) {
        Some(
            "org.freedesktop.DBus.Error.ServiceUnknown"
            | "org.freedesktop.DBus.Error.NameHasNoOwner",
        ) => Error::NoBus {
            detail: "org.freedesktop.systemd1 is not on the system bus".into(),
        },
        Some("org.freedesktop.systemd1.UnitExists") => Error::UnitExists {
            unit: unit.to_string(),
        },
        _ => Error::Bus {
            unit: unit.to_string(),
            op,
            source: Box::new(source),
        },
    }
}
