//! Pod and container → OCI runtime spec, as a pure function of its inputs.
//!
//! Mirrors what containerd's CRI plugin builds for the kubelet
//! (pkg/cri/server/container_create_linux.go, sandbox_run_linux.go): default
//! mounts, capabilities and masked paths; namespaces joined from the pause
//! container; command/args against the image's entrypoint/cmd; env with
//! `$(VAR)` expansion; securityContext; cgroup path and resource limits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use thiserror::Error;

/// Why a spec could not be built. These surface as `CreateContainerConfigError`
/// or `CreateContainerError`, with the message upstream uses where there is one.
#[derive(Debug, Error)]
pub enum SpecError {
    /// Neither the pod nor the image says what to run.
    #[error("no command specified")]
    NoCommand,
    /// A quantity in resources could not be parsed.
    #[error("invalid resource quantity: {0}")]
    Quantity(#[from] crate::quantity::QuantityError),
    /// A capability name that does not exist.
    #[error("unknown capability {0:?}")]
    Capability(String),
    /// The oci-spec builders rejected a value.
    #[error("building OCI spec: {0}")]
    Build(#[from] oci_spec::OciSpecError),
}

pub type Result<T, E = SpecError> = std::result::Result<T, E>;

/// The capabilities containerd gives a container by default (oci/spec.go).
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
];

/// Capability names by number (linux/capability.h), for reading CapEff masks.
const CAPABILITY_NAMES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
];

/// The capabilities in a `CapEff`-style hex mask.
pub fn capabilities_from_mask(mask: u64) -> Vec<String> {
    CAPABILITY_NAMES.iter().enumerate().filter(|(i, _)| mask & (1u64 << i) != 0).map(|(_, n)| n.to_string()).collect()
}

/// The agent's own effective capabilities: what "all capabilities" means for a
/// privileged container (containerd's WithAllCurrentCapabilities), so that a node
/// without e.g. CAP_SYS_RESOURCE can still run privileged pods.
pub fn current_capabilities() -> Vec<String> {
    capabilities_from_mask(effective_capability_mask().unwrap_or(0))
}

/// The agent's `CapEff` mask from /proc/self/status.
pub fn effective_capability_mask() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok()))
}

const MASKED_PATHS: &[&str] = &[
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
    "/sys/devices/virtual/powercap",
];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The process identity a container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// A bind mount from the host into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// Mount propagation of a bind mount, as the CRI names it
/// (containerd: rprivate, rslave, rshared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// Everything the pause container's spec depends on.
pub struct SandboxInput<'a> {
    pub pod: &'a Pod,
    pub image: &'a ImageConfig,
    /// The pod's netns file, or None for hostNetwork.
    pub netns: Option<&'a Path>,
    pub hostname: &'a str,
    pub cgroups_path: String,
    pub oom_score_adj: i32,
    /// The pod-level seccomp filter (`runtime::seccomp`); None: unconfined.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
}

/// Everything an app or init container's spec depends on.
pub struct ContainerInput<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub image: &'a ImageConfig,
    /// The pause container's pid: its net, ipc and uts namespaces are joined.
    pub sandbox_pid: u32,
    pub host_network: bool,
    pub env: Vec<String>,
    pub args: Vec<String>,
    pub user: UserIds,
    pub mounts: Vec<BindMount>,
    pub cgroups_path: String,
    pub oom_score_adj: i32,
    /// What "all capabilities" means here (see [`current_capabilities`]).
    pub all_capabilities: &'a [String],
    /// The host's devices, given to a privileged container ([`host_devices`]).
    pub devices: Vec<LinuxDevice>,
    /// Another container's process, whose PID namespace this one joins (an
    /// ephemeral container's `targetContainerName`).
    pub target_pid: Option<u32>,
    /// cgroup v2 `memory.oom.group=1`: an OOM kill takes the whole container, as
    /// upstream sets it on v2 unless `singleProcessOOMKill`.
    pub oom_group: bool,
    /// The seccomp filter (`runtime::seccomp::linux_seccomp`); None: unconfined.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The AppArmor profile (`pod::apparmor::container_profile`); None: none set.
    pub apparmor_profile: Option<String>,
}

fn caps(names: &[String]) -> Result<std::collections::HashSet<Capability>> {
    names
        .iter()
        .map(|n| {
            serde_json::from_value::<Capability>(serde_json::Value::String(n.clone()))
                .map_err(|_| SpecError::Capability(n.clone()))
        })
        .collect()
}

/// Bounding, effective and permitted sets of `names`; inheritable and ambient
/// empty, like containerd since its inheritable-capabilities fix (the builder's
/// defaults would otherwise add ambient caps, which runc rejects).
fn linux_capabilities(names: &[String]) -> Result<oci_spec::runtime::LinuxCapabilities> {
    let set = caps(names)?;
    Ok(oci_spec::runtime::LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()?)
}

fn normalize_cap(c: &str) -> String {
    let up = c.to_ascii_uppercase();
    if up.starts_with("CAP_") { up } else { format!("CAP_{up}") }
}

/// The effective capability list: defaults (or `all` when privileged), minus drops
/// (`ALL` drops everything), plus adds (`ALL` adds `all`), as CRI computes it.
pub fn capability_list(c: &Container, all: &[String]) -> Vec<String> {
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged).unwrap_or(false) {
        return all.to_vec();
    }
    let add: Vec<String> = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|s| normalize_cap(s))
        .collect();
    let drop: Vec<String> = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.drop.clone())
        .unwrap_or_default()
        .iter()
        .map(|s| normalize_cap(s))
        .collect();
    let mut out: Vec<String> = if drop.iter().any(|d| d == "CAP_ALL") {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).filter(|c| !drop.contains(c)).collect()
    };
    if add.iter().any(|a| a == "CAP_ALL") {
        return all.to_vec();
    }
    for a in add {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn mount(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

fn default_mounts(privileged: bool) -> Result<Vec<Mount>> {
    let sys_ro = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"])?,
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"])?,
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"])?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", sys_ro])?,
        mount("/sys/fs/cgroup", "cgroup", "cgroup", &["nosuid", "noexec", "nodev", "relatime", sys_ro])?,
    ])
}

/// Parses `ENTRYPOINT`/`CMD` against the container's `command`/`args` the way the
/// kubelet documents it, with `$(VAR)` references expanded from `env`.
pub fn resolve_args(c: &Container, image: &ImageConfig, env: &[String]) -> Result<Vec<String>> {
    let vars = env_map(env);
    let ex = |v: &Vec<String>| v.iter().map(|s| expand(s, &vars)).collect::<Vec<_>>();
    let image_ep = image.entrypoint().clone().unwrap_or_default();
    let image_cmd = image.cmd().clone().unwrap_or_default();
    let args: Vec<String> = match (&c.command, &c.args) {
        (Some(cmd), args) if !cmd.is_empty() => {
            let mut v = ex(cmd);
            v.extend(args.as_ref().map(ex).unwrap_or_default());
            v
        }
        (_, Some(args)) if !args.is_empty() => {
            let mut v = image_ep;
            v.extend(ex(args));
            v
        }
        _ => {
            let mut v = image_ep;
            v.extend(image_cmd);
            v
        }
    };
    if args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    Ok(args)
}

/// `KEY=VALUE` list → map (last one wins).
pub fn env_map(env: &[String]) -> HashMap<String, String> {
    env.iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// Kubernetes `$(VAR)` expansion: `$(NAME)` is replaced when NAME is defined,
/// kept verbatim when not; `$$` escapes a `$`.
pub fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(end) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + end]),
                    }
                    i += 3 + end;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().unwrap_or('\u{FFFD}');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// Merges image env with the container's resolved env (container wins, order kept).
pub fn merge_env(image_env: &[String], container_env: &[(String, String)]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut vals: HashMap<String, String> = HashMap::new();
    for kv in image_env {
        let (k, v) = kv.split_once('=').unwrap_or((kv.as_str(), ""));
        if !vals.contains_key(k) {
            order.push(k.to_string());
        }
        vals.insert(k.to_string(), v.to_string());
    }
    for (k, v) in container_env {
        if !vals.contains_key(k) {
            order.push(k.clone());
        }
        vals.insert(k.clone(), v.clone());
    }
    order.into_iter().map(|k| format!("{k}={}", vals[&k])).collect()
}

fn ns(typ: LinuxNamespaceType, path: Option<PathBuf>) -> Result<oci_spec::runtime::LinuxNamespace> {
    let mut b = LinuxNamespaceBuilder::default();
    b = b.typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    Ok(b.build()?)
}

/// The pause container's spec: owns the pod's ipc/uts/pid namespaces and joins the
/// pod's network namespace file (or the host's network).
pub fn sandbox_spec(i: &SandboxInput<'_>) -> Result<Spec> {
    let mut args = i.image.entrypoint().clone().unwrap_or_default();
    args.extend(i.image.cmd().clone().unwrap_or_default());
    if args.is_empty() {
        args = vec!["/pause".into()];
    }
    let host_net = i.netns.is_none();
    let pod_spec = i.pod.spec.as_ref();
    // hostPID/hostIPC: the host's namespace, i.e. no new one.
    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)?];
    if pod_spec.and_then(|s| s.host_pid) != Some(true) {
        namespaces.push(ns(LinuxNamespaceType::Pid, None)?);
    }
    if pod_spec.and_then(|s| s.host_ipc) != Some(true) {
        namespaces.push(ns(LinuxNamespaceType::Ipc, None)?);
    }
    if let Some(p) = i.netns {
        namespaces.push(ns(LinuxNamespaceType::Network, Some(p.to_path_buf()))?);
        namespaces.push(ns(LinuxNamespaceType::Uts, None)?);
    }
    let capset = linux_capabilities(&DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(args)
        .env(i.image.env().clone().unwrap_or_else(|| vec![PATH_ENV.to_string()]))
        .cwd("/")
        .capabilities(capset)
        .no_new_privileges(true)
        .oom_score_adj(i.oom_score_adj)
        .build()?;
    let mut mounts = default_mounts(false)?;
    mounts.push(mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"])?);
    let mut linux = LinuxBuilder::default();
    if let Some(seccomp) = &i.seccomp {
        linux = linux.seccomp(seccomp.clone());
    }
    let linux = linux
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&i.cgroups_path))
        .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build()?])
                .cpu(LinuxCpuBuilder::default().shares(2u64).build()?)
                .build()?,
        )
        .build()?;
    let b = SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(RootBuilder::default().path("rootfs").readonly(true).build()?)
        .mounts(mounts)
        .linux(linux);
    let _ = i.pod;
    let mut spec = b.build()?;
    // The builder defaults a hostname; only a private UTS namespace may have one.
    spec.set_hostname((!host_net).then(|| i.hostname.to_string()));
    Ok(spec)
}

/// The default PATH containerd puts in a container's env when the image sets none.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An app or init container's spec: joins the pause container's net, ipc and uts
/// namespaces, gets its own pid and mount namespaces.
pub fn container_spec(i: &ContainerInput<'_>) -> Result<Spec> {
    let c = i.container;
    let sc = c.security_context.as_ref();
    let privileged = sc.and_then(|s| s.privileged).unwrap_or(false);
    let pod_spec = i.pod.spec.as_ref();
    let share_pid = pod_spec.and_then(|s| s.share_process_namespace).unwrap_or(false);
    let (host_pid, host_ipc) = (pod_spec.and_then(|s| s.host_pid) == Some(true), pod_spec.and_then(|s| s.host_ipc) == Some(true));
    let sandbox_ns = |n: &str| Some(PathBuf::from(format!("/proc/{}/ns/{n}", i.sandbox_pid)));
    let mut namespaces = vec![ns(LinuxNamespaceType::Mount, None)?];
    // hostIPC/hostPID: the host's namespaces (no entry); else the pod's IPC, and
    // its PID namespace when shared.
    if !host_ipc {
        namespaces.push(ns(LinuxNamespaceType::Ipc, sandbox_ns("ipc"))?);
    }
    if !host_pid {
        let pid_ns = match i.target_pid {
            Some(t) => Some(PathBuf::from(format!("/proc/{t}/ns/pid"))),
            None if share_pid => sandbox_ns("pid"),
            None => None,
        };
        namespaces.push(ns(LinuxNamespaceType::Pid, pid_ns)?);
    }
    if !i.host_network {
        namespaces.push(ns(LinuxNamespaceType::Network, sandbox_ns("net"))?);
        namespaces.push(ns(LinuxNamespaceType::Uts, sandbox_ns("uts"))?);
    }
    let capset = linux_capabilities(&capability_list(c, i.all_capabilities))?;
    let allow_escalation = sc.and_then(|s| s.allow_privilege_escalation);
    let no_new_privs = match allow_escalation {
        Some(allow) => !allow,
        None => false,
    } && !privileged;
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| i.image.working_dir().clone().filter(|w| !w.is_empty()))
        .unwrap_or_else(|| "/".into());
    let mut user = UserBuilder::default().uid(i.user.uid).gid(i.user.gid);
    if !i.user.additional_gids.is_empty() {
        user = user.additional_gids(i.user.additional_gids.clone());
    }
    // A terminal, as containerd's WithTTY sets it (with TERM=xterm).
    let tty = c.tty == Some(true);
    let mut env = i.env.clone();
    if tty {
        env.push("TERM=xterm".into());
    }
    let process = ProcessBuilder::default()
        .terminal(tty)
        .user(user.build()?)
        .args(i.args.clone())
        .env(env)
        .cwd(cwd)
        .capabilities(capset)
        .no_new_privileges(no_new_privs)
        .oom_score_adj(i.oom_score_adj)
        .build()?;
    let mut process = process;
    process.set_apparmor_profile(i.apparmor_profile.clone());

    let mut mounts = default_mounts(privileged)?;
    for m in &i.mounts {
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        let mut opts = vec!["rbind".to_string(), prop.to_string()];
        opts.push(if m.read_only { "ro".into() } else { "rw".into() });
        mounts.push(
            MountBuilder::default()
                .destination(&m.container_path)
                .typ("bind")
                .source(&m.host_path)
                .options(opts)
                .build()?,
        );
    }

    // Resources: limits → CFS quota and memory limit; requests → shares.
    let res = c.resources.as_ref();
    let get = |m: Option<&std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>, k: &str| {
        m.and_then(|m| m.get(k)).map(|q| q.0.clone())
    };
    let cpu_limit = get(res.and_then(|r| r.limits.as_ref()), "cpu").map(|q| crate::quantity::to_milli(&q)).transpose()?;
    let cpu_request = get(res.and_then(|r| r.requests.as_ref()), "cpu")
        .map(|q| crate::quantity::to_milli(&q))
        .transpose()?
        .or(cpu_limit);
    let mem_limit = get(res.and_then(|r| r.limits.as_ref()), "memory").map(|q| crate::quantity::to_value(&q)).transpose()?;
    let mut cpu = LinuxCpuBuilder::default().shares(milli_cpu_to_shares(cpu_request));
    if let Some(l) = cpu_limit {
        cpu = cpu.quota(milli_cpu_to_quota(l)).period(CPU_PERIOD);
    }
    let mut resources = LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .devices(vec![LinuxDeviceCgroupBuilder::default().allow(privileged).access("rwm").build()?]);
    if let Some(m) = mem_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(m).build()?);
    }
    let huge = crate::cgroups::pods::hugepage_limits(c);
    if !huge.is_empty() {
        let limits = huge
            .into_iter()
            .map(|(size, limit)| oci_spec::runtime::LinuxHugepageLimitBuilder::default().page_size(size).limit(limit).build())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        resources = resources.hugepage_limits(limits);
    }
    if i.oom_group {
        resources = resources.unified(std::collections::HashMap::from([("memory.oom.group".to_string(), "1".to_string())]));
    }
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&i.cgroups_path))
        .resources(resources.build()?);
    if privileged {
        linux = linux.devices(i.devices.clone());
    }
    // procMount: Unmasked leaves /proc as it is (no masked or read-only paths).
    let unmasked = sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    if !privileged && !unmasked {
        linux = linux
            .masked_paths(MASKED_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .readonly_paths(READONLY_PATHS.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    } else {
        // Not the builder's defaults: nothing masked.
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    }
    // containerd's CRI: the root becomes rshared for Bidirectional mounts, rslave for
    // HostToContainer ones, so propagation reaches the container.
    if i.mounts.iter().any(|m| m.propagation == Propagation::Bidirectional) {
        linux = linux.rootfs_propagation("rshared");
    } else if i.mounts.iter().any(|m| m.propagation == Propagation::HostToContainer) {
        linux = linux.rootfs_propagation("rslave");
    }
    // Admission let only allowed sysctls through (`pod::sysctl`); names in the dotted form.
    if let Some(sysctls) = pod_spec.and_then(|s| s.security_context.as_ref()).and_then(|s| s.sysctls.as_ref()) {
        let sysctls = sysctls.iter().map(|s| (crate::pod::sysctl::to_dots(&s.name), s.value.clone()));
        linux = linux.sysctl(sysctls.collect::<HashMap<_, _>>());
    }
    if let Some(seccomp) = &i.seccomp {
        linux = linux.seccomp(seccomp.clone());
    }
    let read_only_root = sc.and_then(|s| s.read_only_root_filesystem).unwrap_or(false);
    let mut spec = SpecBuilder::default()
        .version("1.0.2-dev")
        .process(process)
        .root(RootBuilder::default().path("rootfs").readonly(read_only_root).build()?)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?;
    // The UTS namespace is the sandbox's (which set the pod's hostname) or the host's.
    spec.set_hostname(None);
    Ok(spec)
}

/// The host's devices as containerd's `HostDevices` lists them for a
/// privileged container: every character and block device under /dev, except
/// in pts, shm, fd, mqueue and the .lxc/.lxd-mounts/.udev directories, and
/// except /dev/console.
pub fn host_devices() -> Vec<LinuxDevice> {
    fn walk(dir: &Path, out: &mut Vec<LinuxDevice>) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(md) = std::fs::symlink_metadata(e.path()) else { continue };
            let ft = md.file_type();
            if ft.is_dir() {
                if !matches!(name.as_str(), "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev") {
                    walk(&e.path(), out);
                }
                continue;
            }
            if name == "console" {
                continue;
            }
            let typ = if ft.is_char_device() {
                LinuxDeviceType::C
            } else if ft.is_block_device() {
                LinuxDeviceType::B
            } else {
                continue;
            };
            let rdev = md.rdev();
            let dev = LinuxDeviceBuilder::default()
                .path(e.path())
                .typ(typ)
                .major(nix::sys::stat::major(rdev) as i64)
                .minor(nix::sys::stat::minor(rdev) as i64)
                .file_mode(md.permissions().mode() & 0o777)
                .uid(md.uid())
                .gid(md.gid())
                .build();
            if let Ok(d) = dev {
                out.push(d);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/dev"), &mut out);
    out
}

/// CFS period the kubelet uses (100ms).
pub const CPU_PERIOD: u64 = 100_000;

/// Millicores → cpu.shares, as pkg/kubelet/cm MilliCPUToShares (minimum 2).
pub fn milli_cpu_to_shares(milli: Option<i64>) -> u64 {
    match milli {
        None | Some(0) => 2,
        Some(m) => ((m as u64) * 1024 / 1000).max(2),
    }
}

/// Millicores → CFS quota over [`CPU_PERIOD`], as MilliCPUToQuota (minimum 1ms).
pub fn milli_cpu_to_quota(milli: i64) -> i64 {
    ((milli * CPU_PERIOD as i64) / 1000).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, SecurityContext};

    fn image(ep: &[&str], cmd: &[&str]) -> ImageConfig {
        let mut c = ImageConfig::default();
        c.set_entrypoint(Some(ep.iter().map(|s| s.to_string()).collect()));
        c.set_cmd(Some(cmd.iter().map(|s| s.to_string()).collect()));
        c
    }

    fn ctr(cmd: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            name: "c".into(),
            command: cmd.map(|v| v.iter().map(|s| s.to_string()).collect()),
            args: args.map(|v| v.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_image_cmd() {
        let img = image(&["/ep"], &["cmd1"]);
        assert_eq!(resolve_args(&ctr(Some(&["/bin/x"]), None), &img, &[]).unwrap(), vec!["/bin/x"]);
        assert_eq!(resolve_args(&ctr(Some(&["/bin/x"]), Some(&["a"])), &img, &[]).unwrap(), vec!["/bin/x", "a"]);
    }

    #[test]
    fn args_alone_go_after_the_image_entrypoint() {
        let img = image(&["/ep"], &["cmd1"]);
        assert_eq!(resolve_args(&ctr(None, Some(&["a", "b"])), &img, &[]).unwrap(), vec!["/ep", "a", "b"]);
        assert_eq!(resolve_args(&ctr(None, None), &img, &[]).unwrap(), vec!["/ep", "cmd1"]);
    }

    #[test]
    fn nothing_to_run_is_an_error() {
        let img = image(&[], &[]);
        assert!(matches!(resolve_args(&ctr(None, None), &img, &[]), Err(SpecError::NoCommand)));
    }

    #[test]
    fn dollar_paren_references_expand_like_kubernetes() {
        let vars: HashMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("cost $5", &vars), "cost $5");
        assert_eq!(expand("é$(A", &vars), "é$(A");
    }

    #[test]
    fn container_env_overrides_image_env_in_order() {
        let env = merge_env(&["PATH=/bin".into(), "A=img".into()], &[("A".into(), "pod".into()), ("B".into(), "2".into())]);
        assert_eq!(env, vec!["PATH=/bin", "A=pod", "B=2"]);
    }

    #[test]
    fn capabilities_add_and_drop() {
        let mut c = ctr(None, None);
        c.security_context = Some(SecurityContext {
            capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into()]), drop: Some(vec!["ALL".into()]) }),
            ..Default::default()
        });
        let all = capabilities_from_mask(u64::MAX);
        assert_eq!(capability_list(&c, &all), vec!["CAP_NET_ADMIN"]);
        c.security_context = Some(SecurityContext {
            capabilities: Some(Capabilities { add: None, drop: Some(vec!["CHOWN".into()]) }),
            ..Default::default()
        });
        let l = capability_list(&c, &all);
        assert!(!l.contains(&"CAP_CHOWN".to_string()) && l.contains(&"CAP_KILL".to_string()));
        assert!(caps(&l).is_ok());
        c.security_context = Some(SecurityContext { privileged: Some(true), ..Default::default() });
        let limited = capabilities_from_mask(0b1_0000_0001);
        assert_eq!(capability_list(&c, &limited), vec!["CAP_CHOWN", "CAP_SETPCAP"]);
        assert!(caps(&all).is_ok(), "every known capability name parses");
    }

    #[test]
    fn cpu_conversions_match_the_kubelet() {
        assert_eq!(milli_cpu_to_shares(None), 2);
        assert_eq!(milli_cpu_to_shares(Some(100)), 102);
        assert_eq!(milli_cpu_to_shares(Some(1000)), 1024);
        assert_eq!(milli_cpu_to_quota(500), 50_000);
        assert_eq!(milli_cpu_to_quota(1), 1000);
    }

    #[test]
    fn container_spec_joins_sandbox_namespaces_and_sets_limits() {
        let pod = Pod::default();
        let mut c = ctr(Some(&["/bin/sh"]), None);
        c.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
            limits: Some([
                ("cpu".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("250m".into())),
                ("memory".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("64Mi".into())),
                ("hugepages-2Mi".to_string(), k8s_openapi::apimachinery::pkg::api::resource::Quantity("4Mi".into())),
            ]
            .into()),
            ..Default::default()
        });
        c.security_context = Some(SecurityContext { read_only_root_filesystem: Some(true), allow_privilege_escalation: Some(false), ..Default::default() });
        let img = image(&[], &[]);
        let spec = container_spec(&ContainerInput {
            pod: &pod,
            container: &c,
            image: &img,
            sandbox_pid: 42,
            host_network: false,
            env: vec!["A=1".into()],
            args: vec!["/bin/sh".into()],
            user: UserIds { uid: 1000, gid: 1000, additional_gids: vec![] },
            mounts: vec![
                BindMount { host_path: "/h".into(), container_path: "/data".into(), read_only: true, propagation: Propagation::Private },
                BindMount { host_path: "/k".into(), container_path: "/kubelet".into(), read_only: false, propagation: Propagation::HostToContainer },
            ],
            cgroups_path: "/kubepods/podx/abc".into(),
            oom_score_adj: 1000,
            all_capabilities: &[],
            devices: vec![],
            target_pid: None,
            oom_group: true,
            seccomp: None,
            apparmor_profile: None,
        })
        .unwrap();
        let v = serde_json::to_value(&spec).unwrap();
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss.iter().any(|n| n["type"] == "network" && n["path"] == "/proc/42/ns/net"));
        assert!(nss.iter().any(|n| n["type"] == "pid" && n.get("path").is_none()));
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 64 * 1024 * 1024);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 25_000);
        assert_eq!(v["linux"]["resources"]["cpu"]["shares"], 256);
        assert_eq!(v["linux"]["resources"]["unified"]["memory.oom.group"], "1", "cgroup v2: the whole container goes on OOM");
        assert_eq!(v["linux"]["resources"]["hugepageLimits"], serde_json::json!([{"pageSize": "2MB", "limit": 4 << 20}]));
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert!(v.get("hostname").is_none(), "containers keep the sandbox's hostname");
        let caps = &v["process"]["capabilities"];
        assert!(caps["ambient"].as_array().map(|a| a.is_empty()).unwrap_or(true), "no ambient caps: {caps}");
        assert!(caps["inheritable"].as_array().map(|a| a.is_empty()).unwrap_or(true), "no inheritable caps: {caps}");
        let data = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/data").unwrap();
        assert!(data["options"].as_array().unwrap().iter().any(|o| o == "ro"));
        assert!(data["options"].as_array().unwrap().iter().any(|o| o == "rprivate"));
        let k = v["mounts"].as_array().unwrap().iter().find(|m| m["destination"] == "/kubelet").unwrap();
        assert!(k["options"].as_array().unwrap().iter().any(|o| o == "rslave"), "HostToContainer is rslave: {k}");
        assert_eq!(v["linux"]["rootfsPropagation"], "rslave");
    }

    #[test]
    fn sysctls_in_the_dotted_form_and_the_seccomp_filter_reach_the_spec() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"containers": [], "securityContext": {"sysctls": [
            {"name": "kernel.msgmax", "value": "65536"}, {"name": "net/ipv4/ip_local_port_range", "value": "20000 30000"},
        ]}}}))
        .unwrap();
        let c = ctr(Some(&["/bin/sh"]), None);
        let img = image(&[], &[]);
        let caps: Vec<String> = DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect();
        let filter = crate::runtime::seccomp::default_profile(&caps, "amd64", None).unwrap();
        let spec = container_spec(&ContainerInput {
            pod: &pod,
            container: &c,
            image: &img,
            sandbox_pid: 42,
            host_network: false,
            env: vec![],
            args: vec!["/bin/sh".into()],
            user: UserIds { uid: 0, gid: 0, additional_gids: vec![] },
            mounts: vec![],
            cgroups_path: "/kubepods/podx/abc".into(),
            oom_score_adj: 1000,
            all_capabilities: &[],
            devices: vec![],
            target_pid: None,
            oom_group: false,
            seccomp: Some(filter.clone()),
            apparmor_profile: Some("k8s-x".into()),
        })
        .unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let sysctl = linux.sysctl().as_ref().unwrap();
        assert_eq!(sysctl.get("kernel.msgmax").map(String::as_str), Some("65536"));
        assert_eq!(sysctl.get("net.ipv4.ip_local_port_range").map(String::as_str), Some("20000 30000"));
        assert_eq!(linux.seccomp().as_ref(), Some(&filter));
        assert_eq!(spec.process().as_ref().unwrap().apparmor_profile().as_deref(), Some("k8s-x"), "the AppArmor profile");
        let sandbox = SandboxInput {
            pod: &pod,
            image: &img,
            netns: None,
            hostname: "h",
            cgroups_path: "/x".into(),
            oom_score_adj: -998,
            seccomp: Some(filter.clone()),
        };
        assert_eq!(sandbox_spec(&sandbox).unwrap().linux().as_ref().unwrap().seccomp().as_ref(), Some(&filter), "the pause container's");
    }

    #[test]
    fn host_namespaces_privileged_devices_and_unmasked_proc() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {"hostPID": true, "hostIPC": true, "containers": []}})).unwrap();
        let img = image(&[], &[]);
        fn input<'a>(pod: &'a Pod, c: &'a Container, img: &'a ImageConfig, devices: Vec<LinuxDevice>) -> ContainerInput<'a> {
            ContainerInput {
            pod,
            container: c,
            image: img,
            sandbox_pid: 42,
            host_network: false,
            env: vec![],
            args: vec!["/bin/sh".into()],
            user: UserIds { uid: 0, gid: 0, additional_gids: vec![] },
            mounts: vec![],
            cgroups_path: "/kubepods/podx/abc".into(),
            oom_score_adj: 1000,
            all_capabilities: &[],
            devices,
            target_pid: None,
            oom_group: false,
            seccomp: None,
            apparmor_profile: None,
            }
        }
        let types = |v: &serde_json::Value| v["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        let plain = ctr(Some(&["/bin/sh"]), None);
        let v = serde_json::to_value(container_spec(&input(&pod, &plain, &img, vec![])).unwrap()).unwrap();
        assert!(!types(&v).contains(&"pid".to_string()) && !types(&v).contains(&"ipc".to_string()), "hostPID/hostIPC: {:?}", types(&v));
        assert!(v["linux"]["resources"].get("unified").is_none(), "cgroup v1: no unified resources");
        assert!(v["linux"]["maskedPaths"].as_array().is_some_and(|m| !m.is_empty()));
        let pause = SandboxInput { pod: &pod, image: &img, netns: None, hostname: "h", cgroups_path: "/x".into(), oom_score_adj: -998, seccomp: None };
        let sandbox = sandbox_spec(&pause).unwrap();
        assert!(sandbox.linux().as_ref().unwrap().seccomp().is_none());
        assert_eq!(types(&serde_json::to_value(&sandbox).unwrap()), ["mount"], "the pause container in the host's pid, ipc and network namespaces");
        let mut unmasked = plain.clone();
        unmasked.security_context = Some(SecurityContext { proc_mount: Some("Unmasked".into()), ..Default::default() });
        let v = serde_json::to_value(container_spec(&input(&pod, &unmasked, &img, vec![])).unwrap()).unwrap();
        let none = |x: &serde_json::Value| x.as_array().is_none_or(|a| a.is_empty());
        assert!(none(&v["linux"]["maskedPaths"]) && none(&v["linux"]["readonlyPaths"]), "procMount Unmasked: {}", v["linux"]);
        let mut privileged = plain.clone();
        privileged.security_context = Some(SecurityContext { privileged: Some(true), ..Default::default() });
        let devices = host_devices();
        assert!(devices.iter().any(|d| d.path() == Path::new("/dev/null")), "the host's /dev/null is a device");
        assert!(!devices.iter().any(|d| d.path().starts_with("/dev/pts") || d.path() == Path::new("/dev/console")));
        let v = serde_json::to_value(container_spec(&input(&pod, &privileged, &img, devices.clone())).unwrap()).unwrap();
        assert_eq!(v["linux"]["devices"].as_array().unwrap().len(), devices.len());
        assert!(none(&v["linux"]["maskedPaths"]), "privileged: nothing masked");
        assert!(container_spec(&input(&pod, &plain, &img, devices)).unwrap().linux().as_ref().unwrap().devices().is_none(), "only privileged containers get them");
    }
}
