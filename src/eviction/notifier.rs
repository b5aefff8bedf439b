//! Seeing a memory spike between two monitoring passes. cgroup v1: upstream's
//! memory threshold notifier, an eventfd on the root memory cgroup's
//! `memory.usage_in_bytes` armed (through `cgroup.event_control`) at the usage
//! where `memory.available` crosses the threshold: capacity − threshold +
//! inactive_file, re-armed every pass as inactive_file moves. cgroup v2 has no
//! usage notification: the node's working set is polled every second instead
//! (a read of /proc/meminfo).

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tracing::debug;

/// How often memory is polled where there is no notifier.
pub const POLL: Duration = Duration::from_secs(1);

/// The usage (bytes) at which `memory.available` = capacity − working set drops
/// under `threshold`: capacity − threshold + inactive_file (upstream's
/// memoryThresholdNotifier.UpdateThreshold).
pub fn usage_threshold(capacity: i64, threshold: i64, usage: i64, working_set: i64) -> i64 {
    (capacity - threshold + (usage - working_set)).max(0)
}

/// An armed eventfd on the root memory cgroup (cgroup v1).
pub struct Notifier {
    efd: AsyncFd<OwnedFd>,
    /// Kept open while armed: the kernel ties the event to this file.
    _usage: std::fs::File,
    pub armed_at: i64,
}

impl Notifier {
    /// Arms a notifier at `usage` bytes of the root memory cgroup.
    pub fn arm(usage: i64) -> std::io::Result<Notifier> {
        let root = crate::cgroups::v1_root("memory").ok_or_else(|| std::io::Error::other("memory cgroup mount point not found"))?;
        let file = std::fs::File::open(root.join("memory.usage_in_bytes"))?;
        let efd = nix::sys::eventfd::EventFd::from_value_and_flags(0, nix::sys::eventfd::EfdFlags::EFD_NONBLOCK | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)?;
        let efd: OwnedFd = efd.into();
        std::fs::write(root.join("cgroup.event_control"), format!("{} {} {}", efd.as_raw_fd(), file.as_raw_fd(), usage))?;
        debug!(usage, "memory threshold notifier armed");
        // SAFETY: the AsyncFd owns the eventfd, so it stays open while registered.
        let efd = unsafe { AsyncFd::register(efd) }?;
        Ok(Notifier { efd, _usage: file, armed_at: usage })
    }

    /// Waits until the usage crosses the armed value (either way).
    pub async fn crossed(&self) -> std::io::Result<()> {
        loop {
            let mut guard = self.efd.readable().await?;
            let mut buf = [0u8; 8];
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref(), &mut buf).map_err(std::io::Error::from)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_threshold_counts_inactive_file_back_in() {
        let gi = 1i64 << 30;
        // 16 GiB node, threshold 1 GiB, 6 GiB used of which 2 GiB inactive file.
        assert_eq!(usage_threshold(16 * gi, gi, 6 * gi, 4 * gi), 17 * gi);
        assert_eq!(usage_threshold(gi, 2 * gi, 0, 0), 0);
    }
}
