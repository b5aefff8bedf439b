//! Pod sysctls at admission (pkg/kubelet/sysctl: allowlist.go, safe_sysctls.go,
//! namespace.go): a pod may only set the safe sysctls and those
//! `allowedUnsafeSysctls` names (a trailing `*` is a prefix), and only sysctls
//! the kernel namespaces: `net.*` needs the pod's own network namespace (not
//! hostNetwork), `kernel.shm*`, `kernel.msg*`, `kernel.sem` and `fs.mqueue.*` its
//! own IPC namespace (not hostIPC). Anything else rejects the pod with reason
//! `SysctlForbidden`. Names may use `/` as the separator, as sysctl.d(5) allows.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use thiserror::Error;

use crate::kernel::KernelVersion;

use super::admission::Rejection;

/// The admission reason of a pod with a sysctl it may not set (allowlist.go).
pub const FORBIDDEN_REASON: &str = "SysctlForbidden";

/// Longest sysctl name or pattern (pkg/apis/core/validation SysctlMaxLength).
const MAX_LENGTH: usize = 253;

/// The regex a pattern must match, as upstream's error names it
/// (pkg/apis/policy/validation SysctlContainSlashPatternFmt).
const PATTERN_REGEX: &str = "([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*([a-z0-9][-_a-z0-9]*)?[a-z0-9*]";

/// Safe sysctls on every kernel (safe_sysctls.go, legacySafeSysctls).
const LEGACY_SAFE: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// Safe sysctls from the kernel that namespaced them on (safe_sysctls.go,
/// newerSysctls; versions from pkg/util/kernel/constants.go).
const NEWER_SAFE: &[(&str, KernelVersion)] = &[
    ("net.ipv4.ip_local_reserved_ports", KernelVersion::new(3, 16)),
    ("net.ipv4.tcp_rmem", KernelVersion::new(4, 15)),
    ("net.ipv4.tcp_wmem", KernelVersion::new(4, 15)),
];

/// The safe sysctls on a kernel: the legacy ones always, the newer ones when
/// the kernel is known and new enough.
pub fn safe_sysctls(kernel: Option<KernelVersion>) -> Vec<&'static str> {
    let newer = NEWER_SAFE.iter().filter(|(_, min)| kernel.is_some_and(|k| k >= *min)).map(|(n, _)| *n);
    LEGACY_SAFE.iter().copied().chain(newer).collect()
}

/// The kernel namespace a sysctl belongs to (namespace.go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Namespace {
    Ipc,
    Net,
}

impl std::fmt::Display for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Namespace::Ipc => "ipc",
            Namespace::Net => "net",
        })
    }
}

/// The namespace of a sysctl (dotted form), or None when it is not known to
/// be namespaced.
pub fn namespaced_by(name: &str) -> Option<Namespace> {
    if name == "kernel.sem" {
        return Some(Namespace::Ipc);
    }
    const PREFIXES: &[(&str, Namespace)] =
        &[("kernel.shm", Namespace::Ipc), ("kernel.msg", Namespace::Ipc), ("fs.mqueue.", Namespace::Ipc), ("net.", Namespace::Net)];
    PREFIXES.iter().find(|(p, _)| name.starts_with(p)).map(|(_, ns)| *ns)
}

/// A sysctl name in the dotted form: when its first separator is `/`, every
/// `/` becomes `.` and every `.` becomes `/` (`net/ipv4/conf/eno2.100/rp_filter`
/// → `net.ipv4.conf.eno2/100.rp_filter`), as component-helpers' sysctl util.
pub fn to_dots(name: &str) -> String {
    match name.find(['.', '/']) {
        Some(i) if name.as_bytes()[i] == b'/' => name
            .chars()
            .map(|c| match c {
                '.' => '/',
                '/' => '.',
                c => c,
            })
            .collect(),
        _ => name.to_string(),
    }
}

/// Whether `s` is a valid sysctl pattern: segments of `[a-z0-9]`, `-` and `_`
/// (not at their ends) separated by `.` or `/`; the last may end in `*`
/// (pkg/apis/policy/validation IsValidSysctlPattern).
pub fn is_valid_pattern(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let inner = |c: u8| alnum(c) || c == b'-' || c == b'_';
    if s.is_empty() || s.len() > MAX_LENGTH {
        return false;
    }
    let segments: Vec<&[u8]> = s.as_bytes().split(|c| *c == b'.' || *c == b'/').collect();
    let Some((last, init)) = segments.split_last() else { return false };
    let segment_ok = |seg: &[u8]| match seg {
        [] => false,
        [c] => alnum(*c),
        [first, mid @ .., end] => alnum(*first) && alnum(*end) && mid.iter().all(|c| inner(*c)),
    };
    let last_ok = match *last {
        [] => false,
        [c] => alnum(*c) || *c == b'*',
        [first, mid @ .., end] => alnum(*first) && (alnum(*end) || *end == b'*') && mid.iter().all(|c| inner(*c)),
    };
    last_ok && init.iter().all(|seg| segment_ok(seg))
}

/// Why the allowlist could not be built (the kubelet refuses to start).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SysctlError {
    /// A pattern that is not a sysctl name, with or without a trailing `*`.
    #[error("sysctl {pattern:?} must have at most {MAX_LENGTH} characters and match regex {PATTERN_REGEX}")]
    InvalidPattern { pattern: String },
    /// A prefix pattern (`kernel.sched_*`) outside the namespaced sysctls.
    #[error("the sysctls {pattern:?} are not known to be namespaced")]
    PrefixNotNamespaced { pattern: String },
    /// A sysctl name outside the namespaced sysctls.
    #[error("the sysctl {pattern:?} are not known to be namespaced")]
    NotNamespaced { pattern: String },
}

/// The sysctls pods may set: the safe ones and `allowedUnsafeSysctls`, by name
/// and by prefix, each with its namespace (allowlist.go patternAllowlist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    sysctls: BTreeMap<String, Namespace>,
    prefixes: BTreeMap<String, Namespace>,
}

impl Allowlist {
    /// The kubelet's allowlist: the kernel's safe sysctls plus `unsafe_patterns`.
    pub fn new(kernel: Option<KernelVersion>, unsafe_patterns: &[String]) -> Result<Self, SysctlError> {
        let safe = safe_sysctls(kernel).into_iter().map(String::from);
        Self::from_patterns(safe.chain(unsafe_patterns.iter().cloned()))
    }

    /// An allowlist of exactly these names and `prefix*` patterns (NewAllowlist).
    pub fn from_patterns(patterns: impl IntoIterator<Item = String>) -> Result<Self, SysctlError> {
        let mut w = Allowlist::default();
        for p in patterns {
            if !is_valid_pattern(&p) {
                return Err(SysctlError::InvalidPattern { pattern: p });
            }
            let s = to_dots(&p);
            match s.strip_suffix('*') {
                Some(prefix) => {
                    let ns = namespaced_by(prefix).ok_or(SysctlError::PrefixNotNamespaced { pattern: s.clone() })?;
                    w.prefixes.insert(prefix.to_string(), ns);
                }
                None => {
                    let ns = namespaced_by(&s).ok_or(SysctlError::NotNamespaced { pattern: s.clone() })?;
                    w.sysctls.insert(s, ns);
                }
            }
        }
        Ok(w)
    }

    /// Why `name` may not be set in a pod with these host namespaces, in
    /// upstream's words (validateSysctl); None when it may.
    pub fn forbidden(&self, name: &str, host_net: bool, host_ipc: bool) -> Option<String> {
        let name = to_dots(name);
        let ns = self
            .sysctls
            .get(&name)
            .or_else(|| self.prefixes.iter().find(|(p, _)| name.starts_with(p.as_str())).map(|(_, ns)| ns));
        match ns {
            None => Some(format!("{name:?} not allowlisted")),
            Some(ns @ Namespace::Ipc) if host_ipc => Some(format!("{name:?} not allowed with host {ns} enabled")),
            Some(ns @ Namespace::Net) if host_net => Some(format!("{name:?} not allowed with host {ns} enabled")),
            Some(_) => None,
        }
    }

    /// Admission of a pod's sysctls: the first forbidden one rejects it (Admit).
    pub fn admit(&self, pod: &Pod) -> Result<(), Rejection> {
        let Some(spec) = pod.spec.as_ref() else { return Ok(()) };
        let sysctls = spec.security_context.as_ref().and_then(|s| s.sysctls.as_ref());
        let (host_net, host_ipc) = (spec.host_network == Some(true), spec.host_ipc == Some(true));
        for s in sysctls.into_iter().flatten() {
            if let Some(why) = self.forbidden(&s.name, host_net, host_ipc) {
                return Err(Rejection { reason: FORBIDDEN_REASON.into(), message: format!("forbidden sysctl: {why}") });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(sysctls: &[(&str, &str)], host_net: bool, host_ipc: bool) -> Pod {
        serde_json::from_value(serde_json::json!({"spec": {
            "hostNetwork": host_net, "hostIPC": host_ipc, "containers": [],
            "securityContext": {"sysctls": sysctls.iter().map(|(n, v)| serde_json::json!({"name": n, "value": v})).collect::<Vec<_>>()},
        }}))
        .unwrap()
    }

    fn list(unsafe_patterns: &[&str]) -> Allowlist {
        let p: Vec<String> = unsafe_patterns.iter().map(|s| s.to_string()).collect();
        Allowlist::new(Some(KernelVersion::new(6, 1)), &p).unwrap()
    }

    #[test]
    fn the_safe_set_follows_the_kernel_version() {
        let new = safe_sysctls(Some(KernelVersion::new(6, 1)));
        let expected = [
            "kernel.shm_rmid_forced",
            "net.ipv4.tcp_keepalive_probes",
            "net.ipv4.tcp_fin_timeout",
            "net.ipv4.tcp_rmem",
            "net.ipv4.tcp_wmem",
            "net.ipv4.ip_local_reserved_ports",
        ];
        for s in expected {
            assert!(new.contains(&s), "{s} is safe on 6.1");
        }
        assert_eq!(new.len(), 12);
        let old = safe_sysctls(Some(KernelVersion::new(4, 14)));
        assert!(old.contains(&"net.ipv4.ip_local_reserved_ports") && !old.contains(&"net.ipv4.tcp_rmem"), "{old:?}");
        assert_eq!(safe_sysctls(None), LEGACY_SAFE, "an unknown kernel keeps the legacy list only");
    }

    #[test]
    fn safe_sysctls_are_admitted_and_others_rejected_with_upstreams_message() {
        let w = list(&[]);
        assert_eq!(w.admit(&pod(&[("net.ipv4.ip_local_port_range", "1024 65000"), ("kernel.shm_rmid_forced", "1")], false, false)), Ok(()));
        let r = w.admit(&pod(&[("kernel.shm_rmid_forced", "1"), ("kernel.sched_child_runs_first", "1")], false, false)).unwrap_err();
        assert_eq!(r.reason, "SysctlForbidden");
        assert_eq!(r.message, r#"forbidden sysctl: "kernel.sched_child_runs_first" not allowlisted"#);
        assert!(w.admit(&pod(&[("kernel.msgmax", "65536")], false, false)).is_err(), "kernel.msgmax is not safe");
        assert_eq!(w.admit(&pod(&[], true, true)), Ok(()));
        assert_eq!(w.admit(&Pod::default()), Ok(()));
    }

    #[test]
    fn unsafe_sysctls_are_allowed_by_name_or_trailing_star() {
        let w = list(&["kernel.msg*", "net.core.somaxconn", "fs/mqueue/msg_max"]);
        assert_eq!(w.admit(&pod(&[("kernel.msgmax", "65536"), ("kernel.msgmnb", "65536")], false, false)), Ok(()));
        assert_eq!(w.admit(&pod(&[("net.core.somaxconn", "1024")], false, false)), Ok(()));
        assert!(w.admit(&pod(&[("net.core.rmem_max", "1")], false, false)).is_err(), "a name is not a prefix");
        assert_eq!(w.admit(&pod(&[("fs.mqueue.msg_max", "20")], false, false)), Ok(()), "slash patterns are normalised");
        assert!(w.admit(&pod(&[("kernel.sem", "1 2 3 4")], false, false)).is_err());
    }

    #[test]
    fn namespaced_sysctls_need_the_pods_own_namespace() {
        let w = list(&["kernel.msg*", "kernel.sem"]);
        let r = w.admit(&pod(&[("net.ipv4.ip_local_port_range", "1024 65000")], true, false)).unwrap_err();
        assert_eq!(r.message, r#"forbidden sysctl: "net.ipv4.ip_local_port_range" not allowed with host net enabled"#);
        let r = w.admit(&pod(&[("kernel.msgmax", "65536")], false, true)).unwrap_err();
        assert_eq!(r.message, r#"forbidden sysctl: "kernel.msgmax" not allowed with host ipc enabled"#);
        let r = w.admit(&pod(&[("kernel.shm_rmid_forced", "1")], false, true)).unwrap_err();
        assert_eq!(r.message, r#"forbidden sysctl: "kernel.shm_rmid_forced" not allowed with host ipc enabled"#);
        assert_eq!(w.admit(&pod(&[("kernel.sem", "1 2 3 4")], true, false)), Ok(()), "IPC sysctls with hostNetwork");
        assert_eq!(w.admit(&pod(&[("net.ipv4.tcp_syncookies", "1")], false, true)), Ok(()), "net sysctls with hostIPC");
    }

    #[test]
    fn slash_names_are_read_in_the_dotted_form() {
        assert_eq!(to_dots("net/ipv4/conf/eno2.100/rp_filter"), "net.ipv4.conf.eno2/100.rp_filter");
        assert_eq!(to_dots("net.ipv4.conf.eno2/100.rp_filter"), "net.ipv4.conf.eno2/100.rp_filter");
        assert_eq!(to_dots("kernel"), "kernel");
        let w = list(&[]);
        assert_eq!(w.admit(&pod(&[("net/ipv4/ip_local_port_range", "1024 65000")], false, false)), Ok(()));
        let r = w.admit(&pod(&[("kernel/sched_child_runs_first", "1")], false, false)).unwrap_err();
        assert_eq!(r.message, r#"forbidden sysctl: "kernel.sched_child_runs_first" not allowlisted"#);
    }

    #[test]
    fn patterns_must_be_valid_and_namespaced() {
        for ok in ["kernel.msg*", "net.*", "net.ipv4.tcp_rmem", "net/ipv4/conf/*", "fs.mqueue.*", "a", "*"] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in ["", "Kernel.msg", "kernel.*.x", "kernel..msg", "kernel.msg-", "net.ipv4.", "-net", "a*b", &"a".repeat(254)] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
        let err = |p: &str| Allowlist::from_patterns([p.to_string()]).unwrap_err().to_string();
        assert_eq!(err("kernel.sched_*"), r#"the sysctls "kernel.sched_*" are not known to be namespaced"#);
        assert_eq!(err("kernel.sched_child_runs_first"), r#"the sysctl "kernel.sched_child_runs_first" are not known to be namespaced"#);
        assert!(err("*").contains("are not known to be namespaced"), "a bare * is everything, not namespaced");
        assert!(err("Kernel.msgmax").starts_with(r#"sysctl "Kernel.msgmax" must have at most 253 characters and match regex "#));
        assert!(Allowlist::new(None, &[]).is_ok(), "the safe set is namespaced");
    }
}
