//! Seccomp profiles of containers, as the kubelet resolves them
//! (pkg/kubelet/kuberuntime/helpers.go getSeccompProfile/fieldSeccompProfile)
//! and containerd's CRI turns them into the OCI spec
//! (pkg/cri/server/container_create_linux.go generateSeccompSpecOpts):
//! the container's `seccompProfile` over the pod's, else RuntimeDefault with
//! `seccompDefault`, else Unconfined; Localhost profiles are JSON files under
//! `<root-dir>/seccomp`; privileged containers get none. The pause container
//! gets the pod-level profile (none when any container is privileged).
//!
//! RuntimeDefault is containerd's default profile, built here as its Go code
//! builds it (contrib/seccomp/seccomp_default.go at v1.6.20, the containerd
//! this agent targets): an allow list over an `SCMP_ACT_ERRNO` default (runc
//! answers EPERM), `personality` for a few arguments, per-architecture
//! syscalls, and syscalls allowed by capabilities in the bounding set.

use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SeccompProfile};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};
use thiserror::Error;

use crate::kernel::KernelVersion;

/// Why a container's seccomp profile cannot be applied: the container is not
/// created (`CreateContainerConfigError`).
#[derive(Debug, Error)]
pub enum SeccompError {
    /// `type: Localhost` without `localhostProfile` (helpers.go's message).
    #[error("localhostProfile must be set if seccompProfile type is Localhost.")]
    LocalhostNotSet,
    /// A `localhostProfile` that would leave the profile directory.
    #[error("localhostProfile {0:?} must be a relative path without '..'")]
    LocalhostPath(String),
    /// The profile file cannot be read (containerd's WithProfile message).
    #[error("cannot load seccomp profile {path:?}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The profile file is not an OCI `LinuxSeccomp` document.
    #[error("decoding seccomp profile failed {path:?}: {source}")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The oci-spec builders rejected a value.
    #[error("building the seccomp profile: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

pub type Result<T, E = SeccompError> = std::result::Result<T, E>;

/// The directory of Localhost profiles under the agent's root directory.
pub const PROFILE_DIR: &str = "seccomp";

/// The seccomp profile a container runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// The container runtime's default profile.
    RuntimeDefault,
    /// A profile file on the node.
    Localhost(PathBuf),
    /// No seccomp filter.
    Unconfined,
}

/// One `seccompProfile` field (fieldSeccompProfile): unset means RuntimeDefault
/// with `seccompDefault`, else Unconfined; unknown types are Unconfined.
fn field_profile(p: Option<&SeccompProfile>, root: &Path, seccomp_default: bool) -> Result<Profile> {
    let Some(p) = p else {
        return Ok(if seccomp_default { Profile::RuntimeDefault } else { Profile::Unconfined });
    };
    match p.type_.as_str() {
        "RuntimeDefault" => Ok(Profile::RuntimeDefault),
        "Localhost" => {
            let name = p.localhost_profile.as_deref().filter(|n| !n.is_empty()).ok_or(SeccompError::LocalhostNotSet)?;
            let rel = Path::new(name);
            if !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
                return Err(SeccompError::LocalhostPath(name.to_string()));
            }
            Ok(Profile::Localhost(root.join(rel)))
        }
        _ => Ok(Profile::Unconfined),
    }
}

fn pod_level(pod: &Pod) -> Option<&SeccompProfile> {
    pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.seccomp_profile.as_ref())
}

/// The container's profile (getSeccompProfile): its own `seccompProfile`, else
/// the pod's, else RuntimeDefault when `seccomp_default`, else Unconfined.
/// `root` is the Localhost profile directory (`<root-dir>/seccomp`).
pub fn resolve(pod: &Pod, c: &Container, root: &Path, seccomp_default: bool) -> Result<Profile> {
    let own = c.security_context.as_ref().and_then(|s| s.seccomp_profile.as_ref());
    field_profile(own.or(pod_level(pod)), root, seccomp_default)
}

/// The sandbox's (pause container's) profile: the pod's, as the kubelet's
/// generatePodSandboxLinuxConfig asks for it (no container context).
pub fn resolve_sandbox(pod: &Pod, root: &Path, seccomp_default: bool) -> Result<Profile> {
    field_profile(pod_level(pod), root, seccomp_default)
}

/// Whether any init, app or ephemeral container is privileged: the sandbox is
/// then privileged too (kubecontainer.HasPrivilegedContainer) and unfiltered.
pub fn has_privileged_container(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else { return false };
    let privileged = |sc: Option<&k8s_openapi::api::core::v1::SecurityContext>| sc.and_then(|s| s.privileged) == Some(true);
    spec.init_containers.iter().flatten().chain(&spec.containers).any(|c| privileged(c.security_context.as_ref()))
        || spec.ephemeral_containers.iter().flatten().any(|c| privileged(c.security_context.as_ref()))
}

/// The spec's `linux.seccomp` for a resolved profile (generateSeccompSpecOpts):
/// none when privileged or Unconfined, containerd's default profile for the
/// final capability list, or the Localhost file as an OCI `LinuxSeccomp`.
pub fn linux_seccomp(
    profile: &Profile,
    privileged: bool,
    capabilities: &[String],
    kernel: Option<KernelVersion>,
) -> Result<Option<LinuxSeccomp>> {
    if privileged {
        return Ok(None);
    }
    match profile {
        Profile::Unconfined => Ok(None),
        Profile::RuntimeDefault => Ok(Some(default_profile(capabilities, go_arch(), kernel)?)),
        Profile::Localhost(path) => load(path).map(Some),
    }
}

/// Reads a Localhost profile (containerd's seccomp.WithProfile).
pub fn load(path: &Path) -> Result<LinuxSeccomp> {
    let data = std::fs::read(path).map_err(|source| SeccompError::Read { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&data).map_err(|source| SeccompError::Decode { path: path.to_path_buf(), source })
}

/// This build's architecture as Go's GOARCH names it (what the profile keys on).
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "mips64" if cfg!(target_endian = "little") => "mips64le",
        other => other,
    }
}

/// The seccomp architectures of a GOARCH (seccomp_default.go arches()).
fn arches(go_arch: &str) -> Vec<Arch> {
    match go_arch {
        "amd64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "arm64" => vec![Arch::ScmpArchArm, Arch::ScmpArchAarch64],
        "mips64" | "mips64n32" => vec![Arch::ScmpArchMips, Arch::ScmpArchMips64, Arch::ScmpArchMips64n32],
        "mipsel64" | "mipsel64n32" => vec![Arch::ScmpArchMipsel, Arch::ScmpArchMipsel64, Arch::ScmpArchMipsel64n32],
        "s390x" => vec![Arch::ScmpArchS390, Arch::ScmpArchS390x],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        _ => Vec::new(),
    }
}

/// Syscalls the default profile allows unconditionally (seccomp_default.go, v1.6.20).
const ALLOWED: &[&str] = &[
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "capget", "capset", "chdir",
    "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64", "clock_getres",
    "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchown", "fchown32", "fchownat", "fcntl",
    "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_time64", "futex_waitv", "futimesat", "getcpu", "getcwd",
    "getdents", "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid", "getresuid32",
    "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname", "getsockopt",
    "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32", "getxattr",
    "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl",
    "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
    "ioprio_set", "io_setup", "io_submit", "io_uring_enter", "io_uring_register", "io_uring_setup",
    "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise", "membarrier",
    "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock",
    "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open",
    "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
    "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock",
    "munlockall", "munmap", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
    "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
    "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
    "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr",
    "sched_getparam", "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler",
    "sched_rr_get_interval", "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr",
    "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget",
    "semop", "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg",
    "sendmsg", "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32",
    "setgroups", "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack",
    "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socket", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
    "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
];

/// `personality(2)` arguments allowed: PER_LINUX, PER_LINUX32, UNAME26,
/// UNAME26|PER_LINUX32 and the query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffffffff];

/// Syscalls allowed on one architecture only.
fn arch_syscalls(go_arch: &str) -> &'static [&'static str] {
    match go_arch {
        "ppc64le" => &["sync_file_range2", "swapcontext"],
        "arm" | "arm64" => &["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
        "amd64" => &["arch_prctl", "modify_ldt"],
        "386" => &["modify_ldt"],
        "s390" | "s390x" => &["s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"],
        "riscv64" => &["riscv_flush_icache"],
        _ => &[],
    }
}

/// Syscalls a capability in the bounding set allows.
fn capability_syscalls(cap: &str) -> &'static [&'static str] {
    match cap {
        "CAP_DAC_READ_SEARCH" => &["open_by_handle_at"],
        "CAP_SYS_ADMIN" => &[
            "bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick", "lookup_dcookie",
            "mount", "mount_setattr", "move_mount", "name_to_handle_at", "open_tree", "perf_event_open", "quotactl",
            "quotactl_fd", "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare",
        ],
        "CAP_SYS_BOOT" => &["reboot"],
        "CAP_SYS_CHROOT" => &["chroot"],
        "CAP_SYS_MODULE" => &["delete_module", "init_module", "finit_module"],
        "CAP_SYS_PACCT" => &["acct"],
        "CAP_SYS_PTRACE" => &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"],
        "CAP_SYS_RAWIO" => &["iopl", "ioperm"],
        "CAP_SYS_TIME" => &["settimeofday", "stime", "clock_settime", "clock_settime64"],
        "CAP_SYS_TTY_CONFIG" => &["vhangup"],
        "CAP_SYS_NICE" => &["get_mempolicy", "mbind", "set_mempolicy"],
        "CAP_SYSLOG" => &["syslog"],
        "CAP_BPF" => &["bpf"],
        "CAP_PERFMON" => &["perf_event_open"],
        _ => &[],
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn allow(list: &[&str], args: Option<Vec<LinuxSeccompArg>>) -> Result<LinuxSyscall> {
    let mut b = LinuxSyscallBuilder::default().names(names(list)).action(LinuxSeccompAction::ScmpActAllow);
    if let Some(a) = args {
        b = b.args(a);
    }
    Ok(b.build()?)
}

/// containerd's default profile (DefaultProfile) for a container whose bounding
/// set is `capabilities`, on `go_arch`, on `kernel` (`ptrace` from 4.8 on).
pub fn default_profile(capabilities: &[String], go_arch: &str, kernel: Option<KernelVersion>) -> Result<LinuxSeccomp> {
    let mut syscalls = vec![allow(ALLOWED, None)?];
    for p in PERSONALITIES {
        let arg = LinuxSeccompArgBuilder::default().index(0usize).value(*p).op(LinuxSeccompOperator::ScmpCmpEq).build()?;
        syscalls.push(allow(&["personality"], Some(vec![arg]))?);
    }
    if kernel.is_some_and(|k| k >= KernelVersion::new(4, 8)) {
        syscalls.push(allow(&["ptrace"], None)?);
    }
    let per_arch = arch_syscalls(go_arch);
    if !per_arch.is_empty() {
        syscalls.push(allow(per_arch, None)?);
    }
    let mut admin = false;
    for cap in capabilities {
        admin |= cap == "CAP_SYS_ADMIN";
        let extra = capability_syscalls(cap);
        if !extra.is_empty() {
            syscalls.push(allow(extra, None)?);
        }
    }
    if !admin {
        // clone without any CLONE_NEW* flag; the flags are the 2nd argument on s390.
        let namespaces = (libc::CLONE_NEWNS
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUSER
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWCGROUP) as u64;
        let index = if matches!(go_arch, "s390" | "s390x") { 1usize } else { 0 };
        let arg = LinuxSeccompArgBuilder::default().index(index).value(namespaces).op(LinuxSeccompOperator::ScmpCmpMaskedEq).build()?;
        syscalls.push(allow(&["clone"], Some(vec![arg]))?);
        // clone3 answers ENOSYS so that libcs fall back to clone (moby/moby#42681).
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(names(&["clone3"]))
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(libc::ENOSYS as u32)
                .build()?,
        );
    }
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .architectures(arches(go_arch))
        .syscalls(syscalls)
        .build()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};

    fn allowed(p: &LinuxSeccomp, name: &str) -> bool {
        p.syscalls().iter().flatten().any(|s| {
            let unconditional = s.args().as_ref().is_none_or(|a| a.is_empty());
            s.action() == LinuxSeccompAction::ScmpActAllow && unconditional && s.names().iter().any(|n| n == name)
        })
    }

    fn caps(list: &[&str]) -> Vec<String> {
        names(list)
    }

    #[test]
    fn runtime_default_allows_the_common_syscalls_and_denies_the_rest_with_errno() {
        let p = default_profile(&caps(crate::runtime::spec::DEFAULT_CAPABILITIES), "amd64", Some(KernelVersion::new(6, 1))).unwrap();
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(p.default_errno_ret(), None, "runc's default errno: EPERM");
        for s in ["read", "write", "execve", "mkdir", "openat", "socket", "arch_prctl", "ptrace", "chroot"] {
            assert!(allowed(&p, s), "{s} allowed");
        }
        for s in ["unshare", "mount", "setns", "reboot", "bpf", "kexec_load", "open_by_handle_at", "init_module", "clock_settime"] {
            assert!(!allowed(&p, s), "{s} denied");
        }
        assert_eq!(ALLOWED.len(), 349);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(v["architectures"], serde_json::json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]));
        let clone = v["syscalls"].as_array().unwrap().iter().find(|s| s["names"] == serde_json::json!(["clone"])).unwrap();
        assert_eq!(clone["args"], serde_json::json!([{"index": 0, "value": 2114060288u64, "op": "SCMP_CMP_MASKED_EQ"}]));
        let clone3 = v["syscalls"].as_array().unwrap().iter().find(|s| s["names"] == serde_json::json!(["clone3"])).unwrap();
        assert_eq!((clone3["action"].as_str(), clone3["errnoRet"].as_u64()), (Some("SCMP_ACT_ERRNO"), Some(38)));
        let personalities = v["syscalls"].as_array().unwrap().iter().filter(|s| s["names"] == serde_json::json!(["personality"])).count();
        assert_eq!(personalities, 5);
    }

    #[test]
    fn capabilities_add_their_syscalls() {
        let k = Some(KernelVersion::new(6, 1));
        let admin = default_profile(&caps(&["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"]), "amd64", k).unwrap();
        for s in ["unshare", "mount", "setns", "clone", "clone3", "kcmp", "process_vm_readv"] {
            assert!(allowed(&admin, s), "{s} with CAP_SYS_ADMIN/CAP_SYS_PTRACE");
        }
        let v = serde_json::to_value(&admin).unwrap();
        assert!(!v["syscalls"].as_array().unwrap().iter().any(|s| s["action"] == "SCMP_ACT_ERRNO"), "no clone3 ENOSYS with CAP_SYS_ADMIN");
        let none = default_profile(&[], "amd64", k).unwrap();
        assert!(!allowed(&none, "chroot") && !allowed(&none, "clone"), "chroot needs CAP_SYS_CHROOT; clone is only allowed without namespace flags");
        let time = default_profile(&caps(&["CAP_SYS_TIME", "CAP_SYS_BOOT", "CAP_BPF"]), "amd64", k).unwrap();
        assert!(allowed(&time, "clock_settime") && allowed(&time, "reboot") && allowed(&time, "bpf"));
    }

    #[test]
    fn architecture_and_kernel_shape_the_profile() {
        let arm = default_profile(&[], "arm64", Some(KernelVersion::new(6, 1))).unwrap();
        assert_eq!(arm.architectures().as_deref(), Some(&[Arch::ScmpArchArm, Arch::ScmpArchAarch64][..]));
        assert!(allowed(&arm, "set_tls") && !allowed(&arm, "arch_prctl"));
        let s390 = serde_json::to_value(default_profile(&[], "s390x", None).unwrap()).unwrap();
        let clone = s390["syscalls"].as_array().unwrap().iter().find(|s| s["names"] == serde_json::json!(["clone"])).unwrap();
        assert_eq!(clone["args"][0]["index"], 1, "s390's clone takes the flags second");
        let old = default_profile(&[], "amd64", Some(KernelVersion::new(4, 4))).unwrap();
        assert!(!allowed(&old, "ptrace"), "ptrace only from 4.8 on");
        assert!(!allowed(&default_profile(&[], "amd64", None).unwrap(), "ptrace"), "unknown kernel: no ptrace");
        assert!(default_profile(&[], "sparc64", None).unwrap().architectures().as_ref().is_none_or(|a| a.is_empty()));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(go_arch(), "amd64");
        }
    }

    fn profile(t: &str, local: Option<&str>) -> SeccompProfile {
        SeccompProfile { type_: t.into(), localhost_profile: local.map(String::from) }
    }

    fn pod_with(p: Option<SeccompProfile>) -> Pod {
        Pod {
            spec: Some(PodSpec { security_context: Some(PodSecurityContext { seccomp_profile: p, ..Default::default() }), ..Default::default() }),
            ..Default::default()
        }
    }

    fn ctr_with(p: Option<SeccompProfile>, privileged: bool) -> Container {
        Container {
            name: "c".into(),
            security_context: Some(SecurityContext { seccomp_profile: p, privileged: Some(privileged), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn the_container_overrides_the_pod_which_overrides_seccomp_default() {
        let root = Path::new("/var/lib/kubelet/seccomp");
        let r = |pod: Option<SeccompProfile>, c: Option<SeccompProfile>, default: bool| {
            resolve(&pod_with(pod), &ctr_with(c, false), root, default).unwrap()
        };
        assert_eq!(r(None, None, false), Profile::Unconfined);
        assert_eq!(r(None, None, true), Profile::RuntimeDefault, "seccompDefault");
        assert_eq!(r(Some(profile("RuntimeDefault", None)), None, false), Profile::RuntimeDefault, "the pod's");
        assert_eq!(r(Some(profile("RuntimeDefault", None)), Some(profile("Unconfined", None)), true), Profile::Unconfined, "the container's wins");
        assert_eq!(r(Some(profile("Unconfined", None)), None, true), Profile::Unconfined, "an explicit pod Unconfined beats seccompDefault");
        assert_eq!(
            r(Some(profile("Unconfined", None)), Some(profile("Localhost", Some("profiles/a.json"))), false),
            Profile::Localhost(root.join("profiles/a.json"))
        );
        assert_eq!(r(None, Some(profile("Bogus", None)), true), Profile::Unconfined, "unknown types are Unconfined, as upstream");
    }

    #[test]
    fn the_sandbox_follows_the_pod_level_profile_unless_a_container_is_privileged() {
        let root = Path::new("/r/seccomp");
        let rd = pod_with(Some(profile("RuntimeDefault", None)));
        assert_eq!(resolve_sandbox(&rd, root, false).unwrap(), Profile::RuntimeDefault);
        assert_eq!(resolve_sandbox(&pod_with(None), root, true).unwrap(), Profile::RuntimeDefault, "seccompDefault");
        assert_eq!(resolve_sandbox(&pod_with(None), root, false).unwrap(), Profile::Unconfined);
        let local = pod_with(Some(profile("Localhost", Some("a.json"))));
        assert_eq!(resolve_sandbox(&local, root, false).unwrap(), Profile::Localhost(root.join("a.json")));
        let mut p = rd.clone();
        assert!(!has_privileged_container(&p));
        p.spec.as_mut().unwrap().init_containers = Some(vec![ctr_with(None, true)]);
        assert!(has_privileged_container(&p), "a privileged init container");
        p.spec.as_mut().unwrap().containers = vec![ctr_with(None, false)];
        p.spec.as_mut().unwrap().init_containers = None;
        assert!(!has_privileged_container(&p));
    }

    #[test]
    fn privileged_and_unconfined_containers_get_no_filter() {
        let k = Some(KernelVersion::new(6, 1));
        assert!(linux_seccomp(&Profile::RuntimeDefault, true, &[], k).unwrap().is_none(), "privileged");
        assert!(linux_seccomp(&Profile::Localhost("/nonexistent".into()), true, &[], k).unwrap().is_none(), "privileged: the file is not even read");
        assert!(linux_seccomp(&Profile::Unconfined, false, &[], k).unwrap().is_none());
        assert!(linux_seccomp(&Profile::RuntimeDefault, false, &[], k).unwrap().is_some());
    }

    #[test]
    fn localhost_profiles_are_read_from_the_profile_dir_with_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join(PROFILE_DIR);
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        let good = r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO"}]}"#;
        std::fs::write(root.join("profiles/block-mkdir.json"), good).unwrap();
        std::fs::write(root.join("bad.json"), "{not json").unwrap();
        let pod = pod_with(None);
        let c = ctr_with(Some(profile("Localhost", Some("profiles/block-mkdir.json"))), false);
        let p = resolve(&pod, &c, &root, false).unwrap();
        assert_eq!(p, Profile::Localhost(root.join("profiles/block-mkdir.json")));
        let s = linux_seccomp(&p, false, &[], None).unwrap().unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(s.syscalls().as_ref().unwrap()[0].names(), &["mkdir", "mkdirat"]);

        let missing = root.join("missing.json");
        let e = linux_seccomp(&Profile::Localhost(missing.clone()), false, &[], None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("cannot load seccomp profile {missing:?}: ")), "{e}");
        let e = linux_seccomp(&Profile::Localhost(root.join("bad.json")), false, &[], None).unwrap_err().to_string();
        assert!(e.starts_with(&format!("decoding seccomp profile failed {:?}: ", root.join("bad.json"))), "{e}");

        let unset = ctr_with(Some(profile("Localhost", None)), false);
        assert_eq!(resolve(&pod, &unset, &root, false).unwrap_err().to_string(), "localhostProfile must be set if seccompProfile type is Localhost.");
        for escape in ["../etc/x.json", "/etc/x.json", "a/../../b"] {
            let c = ctr_with(Some(profile("Localhost", Some(escape))), false);
            assert!(matches!(resolve(&pod, &c, &root, false), Err(SeccompError::LocalhostPath(_))), "{escape}");
        }
    }
}
