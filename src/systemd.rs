//! The systemd notification protocol (`Type=notify` units): `READY=1` once the
//! agent is up, `STATUS=` lines for `systemctl status` ("Ready; 12 pods"), and
//! `WATCHDOG=1` pings when the unit sets `WatchdogSec=`. Without
//! `$NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Sends one notification (`KEY=value` lines) to `$NOTIFY_SOCKET`, never blocking:
/// a manager that stopped reading (a full socket queue) loses the message instead
/// of stalling the agent's runtime threads. (The sd-notify crate's send blocks.)
pub fn notify(lines: &[&str]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    notify_to(&path.to_string_lossy(), lines);
}

fn notify_to(path: &str, lines: &[&str]) {
    use std::os::linux::net::SocketAddrExt;
    let addr = match path.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()),
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    };
    let Ok(addr) = addr else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    if sock.set_nonblocking(true).is_err() {
        return;
    }
    let msg = lines.join("\n");
    if let Err(e) = sock.send_to_addr(msg.as_bytes(), &addr) {
        debug!(error = %e, "systemd notification not sent");
    }
}

/// Sends READY=1 once and STATUS= lines when they change.
#[derive(Default)]
pub struct Notifier {
    ready: Mutex<bool>,
    last_status: Mutex<String>,
}

impl Notifier {
    /// READY=1 with a first status (only the first call sends READY).
    pub fn ready(&self, status: &str) {
        let Ok(mut r) = self.ready.lock() else { return };
        if *r {
            drop(r);
            return self.status(status);
        }
        *r = true;
        if let Ok(mut s) = self.last_status.lock() {
            *s = status.to_string();
        }
        notify(&["READY=1", &format!("STATUS={status}")]);
        info!(status, "agent ready");
    }

    pub fn is_ready(&self) -> bool {
        self.ready.lock().map(|r| *r).unwrap_or(false)
    }

    /// STATUS=`status` when it differs from the last one sent.
    pub fn status(&self, status: &str) {
        let Ok(mut s) = self.last_status.lock() else { return };
        if *s == status {
            return;
        }
        *s = status.to_string();
        notify(&[&format!("STATUS={status}")]);
    }
}

/// WATCHDOG=1 every half of `WatchdogSec=` (systemd's `$WATCHDOG_USEC`) until
/// `cancel`; `None` when the unit has no watchdog.
pub fn spawn_watchdog(cancel: CancellationToken) -> Option<tokio::task::JoinHandle<()>> {
    let usec = watchdog_usec(std::env::var("WATCHDOG_USEC").ok().as_deref(), std::env::var("WATCHDOG_PID").ok().as_deref(), std::process::id())?;
    let every = Duration::from_micros(usec / 2).max(Duration::from_millis(10));
    debug!(?every, "systemd watchdog enabled");
    Some(tokio::spawn(async move {
        loop {
            notify(&["WATCHDOG=1"]);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }))
}

/// The watchdog interval as libsystemd's `sd_watchdog_enabled(3)` reads it:
/// `$WATCHDOG_USEC` (> 0), unless `$WATCHDOG_PID` is set to another process.
/// (The sd-notify crate also insists on `$WATCHDOG_PID` being set.)
fn watchdog_usec(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<u64> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    match pid.map(|p| p.trim().parse::<u32>()) {
        Some(Ok(p)) if p != me => None,
        Some(Err(_)) => None,
        _ => Some(usec),
    }
}

/// The STATUS= line: the node's readiness (joined mode) and the pod count.
pub fn status_line(api: Option<(&crate::api::node::Readiness, bool)>, pods: usize) -> String {
    let pods = format!("{pods} pod{}", if pods == 1 { "" } else { "s" });
    match api {
        None => format!("Running (standalone); {pods}"),
        Some((_, false)) => format!("Registering the node; {pods}"),
        Some((r, true)) if !r.runtime_ok => format!("NotReady: container runtime is down; {pods}"),
        Some((r, true)) => match &r.network_error {
            Some(e) => {
                let e: String = e.chars().take(120).collect();
                format!("NotReady: network not ready: {e}; {pods}")
            }
            None => format!("Ready; {pods}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::node::Readiness;

    #[test]
    fn a_manager_that_stops_reading_never_blocks_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let p = path.display().to_string();
        // Far more than the socket queue holds (net.unix.max_dgram_qlen, 10 by default).
        let sender = std::thread::spawn(move || {
            for _ in 0..1000 {
                notify_to(&p, &["WATCHDOG=1"]);
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !sender.is_finished() {
            assert!(std::time::Instant::now() < deadline, "notify blocked on a full socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn watchdog_follows_sd_watchdog_enabled() {
        assert_eq!(watchdog_usec(Some("400000"), None, 7), Some(400_000));
        assert_eq!(watchdog_usec(Some("400000"), Some("7"), 7), Some(400_000));
        assert_eq!(watchdog_usec(Some("400000"), Some("8"), 7), None);
        assert_eq!(watchdog_usec(Some("0"), None, 7), None);
        assert_eq!(watchdog_usec(None, Some("7"), 7), None);
    }

    #[test]
    fn status_lines_read_like_the_node() {
        assert_eq!(status_line(None, 1), "Running (standalone); 1 pod");
        let ok = Readiness { runtime_ok: true, network_error: None, shutting_down: false, pressure: vec![] };
        assert_eq!(status_line(Some((&ok, false)), 0), "Registering the node; 0 pods");
        assert_eq!(status_line(Some((&ok, true)), 12), "Ready; 12 pods");
        let down = Readiness { runtime_ok: false, network_error: None, shutting_down: false, pressure: vec![] };
        assert_eq!(status_line(Some((&down, true)), 2), "NotReady: container runtime is down; 2 pods");
        let net = Readiness { runtime_ok: true, network_error: Some("no CNI config".into()), shutting_down: false, pressure: vec![] };
        assert_eq!(status_line(Some((&net, true)), 2), "NotReady: network not ready: no CNI config; 2 pods");
    }
}
