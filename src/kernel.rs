//! The running kernel's version, for what upstream gates on it: the safe
//! sysctls namespaced only in newer kernels (pkg/kubelet/sysctl) and the
//! syscalls containerd's default seccomp profile allows from a given kernel on.

/// A kernel version as `major.minor` (the patch level never matters here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KernelVersion {
    pub major: u32,
    pub minor: u32,
}

impl KernelVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        KernelVersion { major, minor }
    }

    /// Parses a `uname -r` release such as `6.1.0-18-amd64` or `4.15.0`; None
    /// when it does not start with `<major>.<minor>`.
    pub fn parse(release: &str) -> Option<Self> {
        let mut parts = release.split(|c: char| !c.is_ascii_digit());
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(KernelVersion { major, minor })
    }

    /// The running kernel's version (uname); None when it cannot be read.
    pub fn current() -> Option<Self> {
        let u = nix::sys::utsname::uname().ok()?;
        Self::parse(&u.release().to_string_lossy())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_to_major_and_minor() {
        assert_eq!(KernelVersion::parse("6.1.0-18-amd64"), Some(KernelVersion::new(6, 1)));
        assert_eq!(KernelVersion::parse("4.15.0"), Some(KernelVersion::new(4, 15)));
        assert_eq!(KernelVersion::parse("5.10"), Some(KernelVersion::new(5, 10)));
        assert_eq!(KernelVersion::parse("6"), None);
        assert_eq!(KernelVersion::parse("linux"), None);
        assert!(KernelVersion::new(4, 15) > KernelVersion::new(3, 16));
        assert!(KernelVersion::new(10, 0) > KernelVersion::new(4, 15));
        assert!(KernelVersion::current().is_some(), "this host's uname parses");
    }
}
