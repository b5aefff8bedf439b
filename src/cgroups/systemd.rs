//! The systemd cgroup driver's side of D-Bus: slices as transient units on the
//! system manager (`org.freedesktop.systemd1`), as upstream's libcontainer
//! systemd manager creates them: `StartTransientUnit` with the resource
//! properties, `SetUnitProperties` when the unit is already there, `StopUnit` when
//! the pod is gone. Containers are scopes runc creates itself (runc's systemd
//! driver, `slice:prefix:name` cgroupsPath).

use zbus::zvariant::{OwnedObjectPath, Value};

const DEST: &str = "org.freedesktop.systemd1";
const PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";

/// A unit property: its name and value (`MemoryMax` → u64, …).
pub type Property = (&'static str, Value<'static>);

/// A connection to the system manager, shared by every pod.
#[derive(Clone)]
pub struct Systemd {
    conn: zbus::Connection,
}

impl Systemd {
    /// Connects to the system bus.
    pub async fn connect() -> zbus::Result<Systemd> {
        Ok(Systemd { conn: zbus::Connection::system().await? })
    }

    /// The system manager over an existing system bus connection.
    pub fn on(conn: &zbus::Connection) -> Systemd {
        Systemd { conn: conn.clone() }
    }

    /// Sends `signal` to the processes of `unit` (`who`: `main`, `control` or `all`).
    pub async fn kill(&self, unit: &str, who: &str, signal: i32) -> zbus::Result<()> {
        self.manager().await?.call::<_, _, ()>("KillUnit", &(unit, who, signal)).await
    }

    async fn manager(&self) -> zbus::Result<zbus::Proxy<'static>> {
        zbus::Proxy::new(&self.conn, DEST, PATH, MANAGER).await
    }

    /// Creates slice `name` with `props`, or sets them when it exists already.
    pub async fn ensure_slice(&self, name: &str, description: &str, props: Vec<Property>) -> zbus::Result<()> {
        let m = self.manager().await?;
        let mut all: Vec<Property> = vec![("Description", Value::from(description.to_string()))];
        all.extend(props.iter().map(|(k, v)| (*k, v.try_clone().unwrap_or_else(|_| Value::from(false)))));
        let aux: Vec<(&str, Vec<Property>)> = Vec::new();
        match m.call::<_, _, OwnedObjectPath>("StartTransientUnit", &(name, "replace", all, aux)).await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(n, _, _)) if n.as_str() == "org.freedesktop.systemd1.UnitExists" => {
                m.call::<_, _, ()>("SetUnitProperties", &(name, true, props)).await
            }
            Err(e) => Err(e),
        }
    }

    /// Sets properties of an existing unit (runtime only).
    pub async fn set_properties(&self, name: &str, props: Vec<Property>) -> zbus::Result<()> {
        self.manager().await?.call::<_, _, ()>("SetUnitProperties", &(name, true, props)).await
    }

    /// Stops (and so removes) a transient unit; one that is not loaded is fine.
    pub async fn stop(&self, name: &str) -> zbus::Result<()> {
        match self.manager().await?.call::<_, _, OwnedObjectPath>("StopUnit", &(name, "replace")).await {
            Ok(_) => Ok(()),
            Err(zbus::Error::MethodError(n, _, _)) if n.as_str() == "org.freedesktop.systemd1.NoSuchUnit" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// `CPUQuotaPerSecUSec` for a CFS quota over a period, rounded up to 10 ms as
/// libcontainer does (systemd's granularity).
pub fn quota_per_sec_usec(quota: i64, period: u64) -> u64 {
    if quota <= 0 || period == 0 {
        return u64::MAX;
    }
    let per_sec = (quota as u64) * 1_000_000 / period;
    per_sec.div_ceil(10_000) * 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_rounded_up_to_10ms_per_second() {
        assert_eq!(quota_per_sec_usec(50_000, 100_000), 500_000);
        assert_eq!(quota_per_sec_usec(1_000, 100_000), 10_000);
        assert_eq!(quota_per_sec_usec(10_500, 100_000), 110_000);
        assert_eq!(quota_per_sec_usec(-1, 100_000), u64::MAX);
    }
}
