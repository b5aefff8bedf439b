//! Upstream compatibility of the configuration: every command-line flag and every
//! `KubeletConfiguration` (kubelet.config.k8s.io/v1beta1) field the upstream kubelet
//! 1.36 accepts on Linux, and what rkubelet does with it — one table
//! ([`SETTINGS`]) that the flag parser, the config-file reader, the start-up
//! warning, `rkubelet doctor` and the tests all read.
//!
//! Sources: `cmd/kubelet/app/options/options.go` (with `container_runtime.go` and
//! the Linux `globalflags_linux.go`: cAdvisor's flags until 1.37), component-base's
//! `logs/api/v1` flags (JSON ones included: the kubelet registers the JSON format),
//! `staging/src/k8s.io/kubelet/config/v1beta1/types.go` at v1.36.0. Flags removed
//! before 1.36 (`--container-runtime`, `--network-plugin`, `--cloud-config`,
//! `--keep-terminated-pod-volumes`, `--register-schedulable`, klog's `--log-dir`…,
//! and `--pod-infra-container-image`, which rkubelet keeps as its own) are not here:
//! like upstream, rkubelet refuses them.
//!
//! A setting is [`Support::Implemented`] when [`crate::config::Config`] carries it;
//! otherwise it is accepted, and named in the one start-up warning and by doctor —
//! unless its value is what rkubelet does anyway ([`Same`]): the zero value that
//! upstream's defaulting reads as "unset" (kubeadm writes `0s` and `0` for everything
//! it leaves to the kubelet), `cpuManagerPolicy: none`, `cgroupsPerQOS: true`,
//! `failSwapOn` on a node without swap, log format options.

use serde_yaml::Value;

/// The fix shown with every setting rkubelet does not implement.
pub const FIX: &str = "not implemented by rkubelet yet; remove it or expect upstream behaviour to differ";

/// How a flag's value is written (pflag's value types) and how a value is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `--flag` or `--flag=true|false` (strconv.ParseBool); never `--flag false`.
    Bool,
    /// A 32-bit integer as strconv.ParseInt(s, 0, 32): `10`, `-1`, `0x10`.
    Int32,
    /// A 64-bit integer.
    Int64,
    /// A float (file only).
    Float,
    /// A Go duration: `10s`, `1m30s`, `-1s`, `0`.
    Duration,
    /// Any string.
    Str,
    /// A comma-separated list; repeated flags accumulate (StringSlice).
    List,
    /// `key=value[,key=value]`; repeated flags accumulate (MapStringString).
    Map,
    /// One `key=value` per flag, commas included in the value (MapStringStringNoSplit).
    MapNoSplit,
    /// `key<value[,key<value]` (eviction thresholds).
    MapLangle,
    /// `key=true|false[,…]` (feature gates).
    MapBool,
    /// `key:value[,key:value]` (HTTP headers).
    MapColon,
    /// A resource quantity: `512`, `2Ki`, `1M`.
    Quantity,
    /// `<NUMA node>:<type>=<quantity>[,<type>=<quantity>][;…]` (reserved memory).
    ReservedMemory,
    /// `pattern=N[,pattern=N]` (klog's vmodule).
    VModule,
    /// `key[=value]:Effect[,…]` (register-with-taints).
    Taints,
    /// `--version`, `--version=raw`, `--version=false` or `--version=vX.Y.Z`.
    Version,
    /// A structure or a list of structures (file only).
    Object,
}

/// When a setting rkubelet does not implement is a no-op, given what rkubelet does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Same {
    /// Only at the zero value (0, `0s`, "", false, an empty list or map), which
    /// upstream's defaulting reads as unset.
    Zero,
    /// At the zero value or one of these (booleans `true`/`false`, durations as Go
    /// prints them: `100ms`, `5m0s`).
    ZeroOr(&'static [&'static str]),
    /// Only at one of these: the zero value is a real setting here (`cgroupsPerQOS: false`).
    Only(&'static [&'static str]),
    /// At the zero value, or at any value on a node without swap.
    ZeroOrNoSwap,
    /// At the zero value, or at any value on a cgroup v2 node.
    ZeroOrCgroupV2,
}

/// What rkubelet does with a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read into [`crate::config::Config`] and acted on.
    Implemented,
    /// Changes nothing that rkubelet would do differently: log format, buffering
    /// and flushing, the API wire format, or a setting upstream itself ignores.
    NoEffect,
    /// Accepted and ignored; reported unless the value is what rkubelet does ([`Same`]).
    NotImplemented(Same),
}

/// One upstream setting: a flag, a config field, or both.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The flag without its dashes (`image-gc-high-threshold`).
    pub flag: Option<&'static str>,
    /// The field's path in the file (`imageGCHighThresholdPercent`, `logging.verbosity`).
    pub field: Option<&'static str>,
    pub kind: Kind,
    pub support: Support,
}

const fn both(flag: &'static str, field: &'static str, kind: Kind, support: Support) -> Setting {
    Setting { flag: Some(flag), field: Some(field), kind, support }
}
const fn flag(flag: &'static str, kind: Kind, support: Support) -> Setting {
    Setting { flag: Some(flag), field: None, kind, support }
}
const fn field(field: &'static str, kind: Kind, support: Support) -> Setting {
    Setting { flag: None, field: Some(field), kind, support }
}

use Kind::*;
const IMPL: Support = Support::Implemented;
const NOOP: Support = Support::NoEffect;
const ZERO: Support = Support::NotImplemented(Same::Zero);
const fn zero_or(v: &'static [&'static str]) -> Support {
    Support::NotImplemented(Same::ZeroOr(v))
}
const fn only(v: &'static [&'static str]) -> Support {
    Support::NotImplemented(Same::Only(v))
}

/// Every flag and config field of the upstream kubelet 1.36 (Linux).
pub const SETTINGS: &[Setting] = &[
    // Files, node identity, API server.
    flag("config", Str, IMPL),
    flag("config-dir", Str, ZERO),
    flag("kubeconfig", Str, IMPL),
    flag("bootstrap-kubeconfig", Str, IMPL),
    flag("cert-dir", Str, IMPL),
    flag("root-dir", Str, IMPL),
    flag("hostname-override", Str, IMPL),
    flag("node-ip", Str, IMPL),
    flag("node-labels", Map, IMPL),
    flag("cloud-provider", Str, ZERO),
    both("provider-id", "providerID", Str, ZERO),
    both("register-node", "registerNode", Bool, only(&["true"])),
    both("register-with-taints", "registerWithTaints", Taints, IMPL),
    flag("lock-file", Str, ZERO),
    flag("exit-on-lock-contention", Bool, ZERO),
    flag("version", Version, IMPL),
    flag("help", Bool, IMPL),
    // Pod sources.
    both("pod-manifest-path", "staticPodPath", Str, IMPL),
    field("podLogsDir", Str, IMPL),
    both("sync-frequency", "syncFrequency", Duration, IMPL),
    both("file-check-frequency", "fileCheckFrequency", Duration, IMPL),
    both("http-check-frequency", "httpCheckFrequency", Duration, ZERO),
    both("manifest-url", "staticPodURL", Str, ZERO),
    both("manifest-url-header", "staticPodURLHeader", MapColon, ZERO),
    both("runonce", "runOnce", Bool, ZERO),
    // The kubelet server.
    both("enable-server", "enableServer", Bool, only(&["true"])),
    both("address", "address", Str, IMPL),
    both("port", "port", Int32, IMPL),
    both("read-only-port", "readOnlyPort", Int32, ZERO),
    both("healthz-port", "healthzPort", Int32, IMPL),
    both("healthz-bind-address", "healthzBindAddress", Str, IMPL),
    both("tls-cert-file", "tlsCertFile", Str, IMPL),
    both("tls-private-key-file", "tlsPrivateKeyFile", Str, IMPL),
    both("tls-cipher-suites", "tlsCipherSuites", List, IMPL),
    field("tlsCurvePreferences", List, ZERO),
    both("tls-min-version", "tlsMinVersion", Str, IMPL),
    both("rotate-certificates", "rotateCertificates", Bool, IMPL),
    both("rotate-server-certificates", "serverTLSBootstrap", Bool, IMPL),
    both("anonymous-auth", "authentication.anonymous.enabled", Bool, IMPL),
    both("authentication-token-webhook", "authentication.webhook.enabled", Bool, IMPL),
    both("authentication-token-webhook-cache-ttl", "authentication.webhook.cacheTTL", Duration, IMPL),
    both("client-ca-file", "authentication.x509.clientCAFile", Str, IMPL),
    both("authorization-mode", "authorization.mode", Str, IMPL),
    both("authorization-webhook-cache-authorized-ttl", "authorization.webhook.cacheAuthorizedTTL", Duration, IMPL),
    both("authorization-webhook-cache-unauthorized-ttl", "authorization.webhook.cacheUnauthorizedTTL", Duration, IMPL),
    both("enable-debugging-handlers", "enableDebuggingHandlers", Bool, only(&["true"])),
    both("contention-profiling", "enableContentionProfiling", Bool, ZERO),
    field("enableSystemLogHandler", Bool, ZERO),
    field("enableSystemLogQuery", Bool, ZERO),
    field("enableProfilingHandler", Bool, ZERO),
    field("enableDebugFlagsHandler", Bool, ZERO),
    both("streaming-connection-idle-timeout", "streamingConnectionIdleTimeout", Duration, IMPL),
    // Rate limits.
    both("registry-qps", "registryPullQPS", Int32, ZERO),
    both("registry-burst", "registryBurst", Int32, ZERO),
    both("event-qps", "eventRecordQPS", Int32, ZERO),
    both("event-burst", "eventBurst", Int32, ZERO),
    both("kube-api-qps", "kubeAPIQPS", Int32, ZERO),
    both("kube-api-burst", "kubeAPIBurst", Int32, ZERO),
    both("kube-api-content-type", "contentType", Str, NOOP),
    // Node status and lease.
    both("node-status-update-frequency", "nodeStatusUpdateFrequency", Duration, IMPL),
    field("nodeStatusReportFrequency", Duration, IMPL),
    field("nodeLeaseDurationSeconds", Int32, IMPL),
    // rkubelet reports no images in the node status, as nodeStatusMaxImages 0 does.
    both("node-status-max-images", "nodeStatusMaxImages", Int32, only(&["0"])),
    // DNS and network.
    both("cluster-domain", "clusterDomain", Str, IMPL),
    both("cluster-dns", "clusterDNS", List, IMPL),
    both("resolv-conf", "resolvConf", Str, IMPL),
    both("hairpin-mode", "hairpinMode", Str, ZERO),
    both("pod-cidr", "podCIDR", Str, ZERO),
    both("make-iptables-util-chains", "makeIPTablesUtilChains", Bool, ZERO),
    // Upstream ignores them since 1.28 as well.
    field("iptablesMasqueradeBit", Int32, NOOP),
    field("iptablesDropBit", Int32, NOOP),
    // Runtime and images.
    both("container-runtime-endpoint", "containerRuntimeEndpoint", Str, IMPL),
    both("image-service-endpoint", "imageServiceEndpoint", Str, ZERO),
    both("runtime-request-timeout", "runtimeRequestTimeout", Duration, ZERO),
    flag("image-credential-provider-config", Str, IMPL),
    flag("image-credential-provider-bin-dir", Str, IMPL),
    both("serialize-image-pulls", "serializeImagePulls", Bool, IMPL),
    field("maxParallelImagePulls", Int32, IMPL),
    // rkubelet never re-verifies pull credentials of an image already present.
    field("imagePullCredentialsVerificationPolicy", Str, zero_or(&["NeverVerify"])),
    field("preloadedImagesVerificationAllowlist", List, ZERO),
    both("minimum-image-ttl-duration", "imageMinimumGCAge", Duration, IMPL),
    field("imageMaximumGCAge", Duration, IMPL),
    both("image-gc-high-threshold", "imageGCHighThresholdPercent", Int32, IMPL),
    both("image-gc-low-threshold", "imageGCLowThresholdPercent", Int32, IMPL),
    flag("minimum-container-ttl-duration", Duration, ZERO),
    flag("maximum-dead-containers-per-container", Int32, ZERO),
    flag("maximum-dead-containers", Int32, ZERO),
    both("volume-stats-agg-period", "volumeStatsAggPeriod", Duration, ZERO),
    both("volume-plugin-dir", "volumePluginDir", Str, zero_or(&["/usr/libexec/kubernetes/kubelet-plugins/volume/exec/"])),
    flag("experimental-mounter-path", Str, ZERO),
    both("enable-controller-attach-detach", "enableControllerAttachDetach", Bool, only(&["true"])),
    both("allowed-unsafe-sysctls", "allowedUnsafeSysctls", List, IMPL),
    both("seccomp-default", "seccompDefault", Bool, IMPL),
    field("userNamespaces.idsPerPod", Int64, ZERO),
    // Object references are watched, as the default Watch strategy does.
    field("configMapAndSecretChangeDetectionStrategy", Str, zero_or(&["Watch"])),
    // Container logs.
    both("container-log-max-size", "containerLogMaxSize", Str, IMPL),
    both("container-log-max-files", "containerLogMaxFiles", Int32, IMPL),
    field("containerLogMaxWorkers", Int32, ZERO),
    field("containerLogMonitorInterval", Duration, ZERO),
    // Resources, cgroups and managers.
    both("cgroup-driver", "cgroupDriver", Str, IMPL),
    both("cgroups-per-qos", "cgroupsPerQOS", Bool, only(&["true"])),
    both("cgroup-root", "cgroupRoot", Str, zero_or(&["/"])),
    both("kubelet-cgroups", "kubeletCgroups", Str, ZERO),
    both("system-cgroups", "systemCgroups", Str, ZERO),
    flag("runtime-cgroups", Str, ZERO),
    both("max-pods", "maxPods", Int32, IMPL),
    both("pods-per-core", "podsPerCore", Int32, ZERO),
    both("pod-max-pids", "podPidsLimit", Int64, IMPL),
    both("max-open-files", "maxOpenFiles", Int64, ZERO),
    both("oom-score-adj", "oomScoreAdj", Int32, ZERO),
    // rkubelet sets a CFS quota for CPU limits, over a 100ms period.
    both("cpu-cfs-quota", "cpuCFSQuota", Bool, only(&["true"])),
    both("cpu-cfs-quota-period", "cpuCFSQuotaPeriod", Duration, zero_or(&["100ms"])),
    both("cpu-manager-policy", "cpuManagerPolicy", Str, zero_or(&["none"])),
    both("cpu-manager-policy-options", "cpuManagerPolicyOptions", MapNoSplit, ZERO),
    both("cpu-manager-reconcile-period", "cpuManagerReconcilePeriod", Duration, ZERO),
    both("memory-manager-policy", "memoryManagerPolicy", Str, zero_or(&["None"])),
    both("reserved-memory", "reservedMemory", ReservedMemory, ZERO),
    both("topology-manager-policy", "topologyManagerPolicy", Str, zero_or(&["none"])),
    both("topology-manager-scope", "topologyManagerScope", Str, zero_or(&["container"])),
    both("topology-manager-policy-options", "topologyManagerPolicyOptions", MapNoSplit, ZERO),
    both("qos-reserved", "qosReserved", Map, ZERO),
    both("reserved-cpus", "reservedSystemCPUs", Str, ZERO),
    // rkubelet sets no memory.oom.group: one OOM kill takes one process.
    field("singleProcessOOMKill", Bool, IMPL),
    field("memoryThrottlingFactor", Float, ZERO),
    field("memoryReservationPolicy", Str, zero_or(&["None"])),
    both("fail-swap-on", "failSwapOn", Bool, Support::NotImplemented(Same::ZeroOrNoSwap)),
    field("memorySwap.swapBehavior", Str, Support::NotImplemented(Same::ZeroOrNoSwap)),
    both("fail-cgroupv1", "failCgroupV1", Bool, Support::NotImplemented(Same::ZeroOrCgroupV2)),
    both("protect-kernel-defaults", "protectKernelDefaults", Bool, ZERO),
    both("kernel-memcg-notification", "kernelMemcgNotification", Bool, IMPL),
    // rkubelet reports and admits ephemeral-storage against the root dir's filesystem.
    both("local-storage-capacity-isolation", "localStorageCapacityIsolation", Bool, only(&["true"])),
    // Node allocatable and eviction.
    both("kube-reserved", "kubeReserved", Map, IMPL),
    both("system-reserved", "systemReserved", Map, IMPL),
    both("kube-reserved-cgroup", "kubeReservedCgroup", Str, ZERO),
    both("system-reserved-cgroup", "systemReservedCgroup", Str, ZERO),
    // rkubelet enforces allocatable on the pods cgroup only.
    both("enforce-node-allocatable", "enforceNodeAllocatable", List, only(&["pods"])),
    both("eviction-hard", "evictionHard", MapLangle, IMPL),
    field("mergeDefaultEvictionSettings", Bool, IMPL),
    both("eviction-soft", "evictionSoft", MapLangle, IMPL),
    both("eviction-soft-grace-period", "evictionSoftGracePeriod", Map, IMPL),
    both("eviction-pressure-transition-period", "evictionPressureTransitionPeriod", Duration, IMPL),
    both("eviction-max-pod-grace-period", "evictionMaxPodGracePeriod", Int32, IMPL),
    both("eviction-minimum-reclaim", "evictionMinimumReclaim", Map, IMPL),
    flag("experimental-allocatable-ignore-eviction", Bool, ZERO),
    // Lifecycle.
    field("shutdownGracePeriod", Duration, IMPL),
    field("shutdownGracePeriodCriticalPods", Duration, IMPL),
    field("shutdownGracePeriodByPodPriority", Object, IMPL),
    // rkubelet's CrashLoopBackOff caps at 5m, upstream's default.
    field("crashLoopBackOff.maxContainerRestartPeriod", Duration, zero_or(&["5m0s"])),
    both("feature-gates", "featureGates", MapBool, ZERO),
    field("showHiddenMetricsForVersion", Str, ZERO),
    field("tracing", Object, ZERO),
    // Logging: -v is rkubelet's; the rest only changes how lines look.
    flag("v", Int32, IMPL),
    field("logging.verbosity", Int32, ZERO),
    both("vmodule", "logging.vmodule", VModule, ZERO),
    both("logging-format", "logging.format", Str, NOOP),
    both("log-flush-frequency", "logging.flushFrequency", Duration, NOOP),
    field("logging.options", Object, NOOP),
    flag("log-text-split-stream", Bool, NOOP),
    flag("log-text-info-buffer-size", Quantity, NOOP),
    flag("log-json-split-stream", Bool, NOOP),
    flag("log-json-info-buffer-size", Quantity, NOOP),
    // cAdvisor's flags (Linux), registered by the kubelet until 1.37. rkubelet's
    // stats housekeeping runs every 10s.
    flag("housekeeping-interval", Duration, zero_or(&["10s"])),
    flag("application-metrics-count-limit", Int32, ZERO),
    flag("boot-id-file", Str, ZERO),
    flag("container-hints", Str, ZERO),
    flag("containerd", Str, ZERO),
    flag("containerd-namespace", Str, ZERO),
    flag("enable-load-reader", Bool, ZERO),
    flag("event-storage-age-limit", Str, ZERO),
    flag("event-storage-event-limit", Str, ZERO),
    flag("global-housekeeping-interval", Duration, ZERO),
    flag("log-cadvisor-usage", Bool, ZERO),
    flag("machine-id-file", Str, ZERO),
    flag("storage-driver-buffer-duration", Duration, ZERO),
    flag("storage-driver-db", Str, ZERO),
    flag("storage-driver-host", Str, ZERO),
    flag("storage-driver-password", Str, ZERO),
    flag("storage-driver-secure", Bool, ZERO),
    flag("storage-driver-table", Str, ZERO),
    flag("storage-driver-user", Str, ZERO),
];

/// rkubelet's own flags, which upstream's kubelet 1.36 does not have.
pub const RKUBELET_FLAGS: &[&str] = &[
    // Upstream removed it in 1.35 (containerd's CRI config names the sandbox image);
    // rkubelet runs its pause container itself.
    "pod-infra-container-image",
    "cni-bin-dir",
    "cni-conf-dir",
    "cni-cache-dir",
    "runtime-namespace",
    "snapshotter",
    "runtime-handler",
    // containerd's hosts.toml directory (containerd's config_path).
    "registry-config-path",
    // maxParallelImagePulls has no flag upstream; rkubelet has one as well.
    "max-parallel-image-pulls",
    "pod-logs-dir",
    "node-status-report-frequency",
    "node-lease-duration-seconds",
    "image-pull-progress-deadline",
    "tls-bootstrap-timeout",
];

/// rkubelet's own config-file fields: removed from upstream's file, read by rkubelet.
pub const RKUBELET_FIELDS: &[&str] = &["imagePullProgressDeadline"];

/// The setting of a flag.
pub fn by_flag(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.flag == Some(name))
}

/// The settings rkubelet does not read into its `Config` but accepts (not
/// implemented, or without effect): the flags [`crate::config::UnimplementedFlags`] declares.
pub fn accepted_only() -> impl Iterator<Item = &'static Setting> {
    SETTINGS.iter().filter(|s| s.support != Support::Implemented)
}

/// What the node is like, for settings that are no-ops on some nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Host {
    /// Swap is on (`/proc/swaps` lists a device or file).
    pub swap_on: bool,
    /// The node uses cgroup v1.
    pub cgroup_v1: bool,
}

impl Host {
    /// This node.
    pub fn detect() -> Host {
        Host { swap_on: !active_swaps().is_empty(), cgroup_v1: crate::cgroups::uses_v1() }
    }
}

/// The active swap devices and files (`/proc/swaps`).
pub fn active_swaps() -> Vec<String> {
    let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(String::from).collect()
}

/// A value in the form [`Same`] compares: whether it is the zero value, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Normal {
    zero: bool,
    text: String,
}

impl Kind {
    /// Checks a flag value as upstream's flag parser does; the value as given.
    pub fn parse(self, s: &str) -> Result<String, String> {
        let pairs = |sep: char, check: &dyn Fn(&str, &str) -> Result<(), String>| -> Result<(), String> {
            for pair in s.split(',').filter(|p| !p.trim().is_empty()) {
                let (k, v) = pair.split_once(sep).ok_or_else(|| format!("malformed pair {pair:?}, expect key{sep}value"))?;
                check(k.trim(), v.trim())?;
            }
            Ok(())
        };
        let any = |_: &str, _: &str| Ok::<(), String>(());
        match self {
            Bool => crate::config::parse_go_bool(s).map(|_| ()),
            Int32 => parse_go_int(s, 32).map(|_| ()),
            Int64 => parse_go_int(s, 64).map(|_| ()),
            Float => s.trim().parse::<f64>().map(|_| ()).map_err(|_| format!("invalid number {s:?}")),
            Duration => parse_go_duration(s).map(|_| ()),
            Str | List | Taints | Object => Ok(()),
            Map => pairs('=', &any),
            MapNoSplit if s.trim().is_empty() || s.contains('=') => Ok(()),
            MapNoSplit => Err(format!("malformed pair {s:?}, expect key=value")),
            MapLangle => pairs('<', &any),
            MapColon => pairs(':', &any),
            MapBool => pairs('=', &|_, v| crate::config::parse_go_bool(v).map(|_| ())),
            VModule => pairs('=', &|_, v| v.parse::<u32>().map(|_| ()).map_err(|_| format!("invalid verbosity {v:?}"))),
            Quantity => crate::quantity::to_value(s).map(|_| ()).map_err(|e| e.to_string()),
            ReservedMemory => parse_reserved_memory(s),
            Version if s == "raw" || s.starts_with('v') => Ok(()),
            Version => crate::config::parse_go_bool(s).map(|_| ()),
        }
        .map(|()| s.to_string())
    }

    /// Whether the values are appended when the flag is repeated (lists and maps).
    pub fn accumulates(self) -> bool {
        matches!(self, List | Map | MapNoSplit | MapLangle | MapBool | MapColon | ReservedMemory | Taints)
    }

    /// A flag value, for comparing.
    fn normal_flag(self, s: &str) -> Normal {
        let text = match self {
            Bool => crate::config::parse_go_bool(s).map(|b| b.to_string()).unwrap_or_else(|_| s.to_string()),
            Int32 | Int64 => parse_go_int(s, 64).map(|n| n.to_string()).unwrap_or_else(|_| s.to_string()),
            Duration => parse_go_duration(s).map(go_signed_duration).unwrap_or_else(|_| s.to_string()),
            _ => s.trim().to_string(),
        };
        let zero = matches!(text.as_str(), "" | "false" | "0" | "0s");
        Normal { zero, text }
    }

    /// A file value, for comparing; `None` for null (unset).
    fn normal_field(self, v: &Value) -> Option<Normal> {
        let scalar = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
        };
        match v {
            Value::Null => None,
            Value::Sequence(items) => {
                Some(Normal { zero: items.is_empty(), text: items.iter().map(scalar).collect::<Vec<_>>().join(",") })
            }
            // An object is unset when everything in it is; a map only when empty.
            Value::Mapping(m) => Some(Normal {
                zero: if self == Object { m.values().all(|v| self.normal_field(v).is_none_or(|n| n.zero)) } else { m.is_empty() },
                text: m.iter().map(|(k, v)| format!("{}={}", scalar(k), scalar(v))).collect::<Vec<_>>().join(","),
            }),
            Value::Number(n) if self == Float => Some(Normal { zero: n.as_f64() == Some(0.0), text: n.to_string() }),
            v => Some(self.normal_flag(&scalar(v))),
        }
    }
}

/// strconv.ParseInt(s, 0, bits): an optional sign, then decimal, `0x` hex, `0o`
/// or leading-`0` octal, or `0b` binary; underscores between digits.
pub fn parse_go_int(s: &str, bits: u32) -> Result<i64, String> {
    let err = || format!("invalid integer {s:?}");
    let (neg, rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let lower = rest.to_ascii_lowercase();
    let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    let digits = digits.replace('_', "");
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return Err(err());
    }
    let n = i128::from_str_radix(&digits, radix).map_err(|_| err())?;
    let n = if neg { -n } else { n };
    let (min, max) = (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1);
    if n < min || n > max {
        return Err(format!("integer {s:?} out of range"));
    }
    Ok(n as i64)
}

/// time.ParseDuration: like [`crate::config::parse_duration`], with an optional sign.
pub fn parse_go_duration(s: &str) -> Result<(bool, std::time::Duration), String> {
    match s.strip_prefix('-') {
        Some(rest) => crate::config::parse_duration(rest).map(|d| (true, d)),
        None => crate::config::parse_duration(s.strip_prefix('+').unwrap_or(s)).map(|d| (false, d)),
    }
}

fn go_signed_duration((neg, d): (bool, std::time::Duration)) -> String {
    let s = crate::config::go_duration_string(d);
    if neg && !d.is_zero() {
        format!("-{s}")
    } else {
        s
    }
}

/// `--reserved-memory`: `0:memory=1Gi,hugepages-1M=2Gi;1:memory=2Gi`, as ReservedMemoryVar.
fn parse_reserved_memory(s: &str) -> Result<(), String> {
    for reservation in s.split(';').filter(|r| !r.is_empty()) {
        let (node, types) =
            reservation.split_once(':').ok_or_else(|| format!("the reserved memory has incorrect format, expected numaNodeID:type=quantity[,type=quantity...], got {reservation}"))?;
        node.trim().parse::<u32>().map_err(|_| format!("invalid NUMA node ID {node:?}"))?;
        for t in types.split(',') {
            let (name, q) = t.split_once('=').ok_or_else(|| format!("the reserved memory has incorrect format, expected type=quantity, got {t}"))?;
            if name.trim().is_empty() {
                return Err(format!("empty memory type in {t:?}"));
            }
            crate::quantity::to_value(q.trim()).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

impl Same {
    fn holds(self, v: &Normal, host: &Host) -> bool {
        match self {
            Same::Zero => v.zero,
            Same::ZeroOr(values) => v.zero || values.contains(&v.text.as_str()),
            Same::Only(values) => values.contains(&v.text.as_str()),
            Same::ZeroOrNoSwap => v.zero || !host.swap_on,
            Same::ZeroOrCgroupV2 => v.zero || !host.cgroup_v1,
        }
    }
}

impl Setting {
    /// Whether `value` of this setting makes rkubelet behave unlike upstream.
    fn differs(&self, value: &Normal, host: &Host) -> bool {
        match self.support {
            Support::NotImplemented(same) => !same.holds(value, host),
            Support::Implemented | Support::NoEffect => false,
        }
    }
}

/// The settings given that rkubelet does not implement, and the file's unknown fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Flags (`--image-gc-high-threshold`) and fields (`evictionSoft`), in that order.
    pub not_implemented: Vec<String>,
    /// Fields of the file upstream's v1beta1 does not have (`authentication.webhook.extra`).
    pub unknown_fields: Vec<String>,
}

impl Report {
    /// What upstream's lenient decoding logs for the unknown fields (its `err`).
    pub fn strict_decoding_error(&self) -> Option<String> {
        (!self.unknown_fields.is_empty()).then(|| {
            let fields: Vec<String> = self.unknown_fields.iter().map(|f| format!("unknown field {f:?}")).collect();
            format!("strict decoding error: {}", fields.join(", "))
        })
    }
}

/// Evaluates the flags given (name without dashes, value as given; a repeated
/// list or map flag's values joined by commas) and the config file (its document).
pub fn report(flags: &[(&'static str, String)], file: Option<&Value>, host: &Host) -> Report {
    let mut not_implemented: Vec<String> = Vec::new();
    for (name, value) in flags {
        let Some(s) = by_flag(name) else { continue };
        let label = format!("--{name}");
        if s.differs(&s.kind.normal_flag(value), host) && !not_implemented.contains(&label) {
            not_implemented.push(label);
        }
    }
    let Some(doc) = file else { return Report { not_implemented, unknown_fields: Vec::new() } };
    for s in SETTINGS {
        let Some(path) = s.field else { continue };
        let Some(v) = lookup(doc, path).and_then(|v| s.kind.normal_field(v)) else { continue };
        if s.differs(&v, host) {
            not_implemented.push(path.to_string());
        }
    }
    Report { not_implemented, unknown_fields: unknown_fields(doc) }
}

/// The value at a dotted path of the document.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, k| v.as_mapping()?.get(k))
}

/// The paths of the document's fields upstream's v1beta1 does not have, sorted.
pub fn unknown_fields(doc: &Value) -> Vec<String> {
    fn known(path: &str) -> bool {
        matches!(path, "apiVersion" | "kind") || RKUBELET_FIELDS.contains(&path) || SETTINGS.iter().any(|s| s.field == Some(path))
    }
    fn parent(path: &str) -> bool {
        SETTINGS.iter().filter_map(|s| s.field).any(|f| f.len() > path.len() && f.starts_with(path) && f.as_bytes()[path.len()] == b'.')
    }
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        let Some(m) = v.as_mapping() else { return };
        for (k, v) in m {
            let key = match k {
                Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap_or_default().trim().to_string(),
            };
            let path = format!("{prefix}{key}");
            if known(&path) {
                continue;
            }
            if parent(&path) {
                walk(v, &format!("{path}."), out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, "", &mut out);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The v1beta1 KubeletConfiguration fields of kubelet 1.36 (types.go at v1.36.0).
    const UPSTREAM_FIELDS: &[&str] = &[
        "enableServer", "staticPodPath", "podLogsDir", "syncFrequency", "fileCheckFrequency", "httpCheckFrequency", "staticPodURL",
        "staticPodURLHeader", "address", "port", "readOnlyPort", "tlsCertFile", "tlsPrivateKeyFile", "tlsCipherSuites", "tlsCurvePreferences",
        "tlsMinVersion", "rotateCertificates", "serverTLSBootstrap", "authentication", "authorization", "registryPullQPS", "registryBurst",
        "imagePullCredentialsVerificationPolicy", "preloadedImagesVerificationAllowlist", "eventRecordQPS", "eventBurst",
        "enableDebuggingHandlers", "enableContentionProfiling", "healthzPort", "healthzBindAddress", "oomScoreAdj", "clusterDomain",
        "clusterDNS", "streamingConnectionIdleTimeout", "nodeStatusUpdateFrequency", "nodeStatusReportFrequency", "nodeLeaseDurationSeconds",
        "imageMinimumGCAge", "imageMaximumGCAge", "imageGCHighThresholdPercent", "imageGCLowThresholdPercent", "volumeStatsAggPeriod",
        "kubeletCgroups", "systemCgroups", "cgroupRoot", "cgroupsPerQOS", "cgroupDriver", "cpuManagerPolicy", "singleProcessOOMKill",
        "cpuManagerPolicyOptions", "cpuManagerReconcilePeriod", "memoryManagerPolicy", "topologyManagerPolicy", "topologyManagerScope",
        "topologyManagerPolicyOptions", "qosReserved", "runtimeRequestTimeout", "hairpinMode", "maxPods", "podCIDR", "podPidsLimit",
        "resolvConf", "runOnce", "cpuCFSQuota", "cpuCFSQuotaPeriod", "nodeStatusMaxImages", "maxOpenFiles", "contentType", "kubeAPIQPS",
        "kubeAPIBurst", "serializeImagePulls", "maxParallelImagePulls", "evictionHard", "evictionSoft", "evictionSoftGracePeriod",
        "evictionPressureTransitionPeriod", "evictionMaxPodGracePeriod", "evictionMinimumReclaim", "mergeDefaultEvictionSettings",
        "podsPerCore", "enableControllerAttachDetach", "protectKernelDefaults", "makeIPTablesUtilChains", "iptablesMasqueradeBit",
        "iptablesDropBit", "featureGates", "failSwapOn", "memorySwap", "containerLogMaxSize", "containerLogMaxFiles",
        "containerLogMaxWorkers", "containerLogMonitorInterval", "configMapAndSecretChangeDetectionStrategy", "systemReserved",
        "kubeReserved", "reservedSystemCPUs", "showHiddenMetricsForVersion", "systemReservedCgroup", "kubeReservedCgroup",
        "enforceNodeAllocatable", "allowedUnsafeSysctls", "volumePluginDir", "providerID", "kernelMemcgNotification", "logging",
        "enableSystemLogHandler", "enableSystemLogQuery", "shutdownGracePeriod", "shutdownGracePeriodCriticalPods",
        "shutdownGracePeriodByPodPriority", "crashLoopBackOff", "reservedMemory", "enableProfilingHandler", "enableDebugFlagsHandler",
        "seccompDefault", "memoryThrottlingFactor", "memoryReservationPolicy", "registerWithTaints", "registerNode", "tracing",
        "localStorageCapacityIsolation", "containerRuntimeEndpoint", "imageServiceEndpoint", "failCgroupV1", "userNamespaces",
    ];

    fn doc(yaml: &str) -> Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_table_covers_every_upstream_field_once_and_nothing_else() {
        let fields: Vec<&str> = SETTINGS.iter().filter_map(|s| s.field).collect();
        let mut tops: Vec<&str> = fields.iter().map(|f| f.split('.').next().unwrap()).collect();
        tops.sort();
        tops.dedup();
        let mut want = UPSTREAM_FIELDS.to_vec();
        want.sort();
        assert_eq!(tops, want);
        let mut sorted = fields.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), fields.len(), "a field twice in the table");
        let mut flags: Vec<&str> = SETTINGS.iter().filter_map(|s| s.flag).collect();
        let n = flags.len();
        flags.sort();
        flags.dedup();
        assert_eq!(flags.len(), n, "a flag twice in the table");
        assert!(flags.iter().all(|f| !RKUBELET_FLAGS.contains(f)));
        for gone in ["container-runtime", "network-plugin", "cloud-config", "keep-terminated-pod-volumes", "register-schedulable", "log-dir", "logtostderr", "pod-infra-container-image"] {
            assert!(by_flag(gone).is_none(), "{gone} is not an upstream 1.36 flag");
        }
    }

    #[test]
    fn flag_values_are_checked_as_upstream_parses_them() {
        assert_eq!(parse_go_int("0x10", 32), Ok(16));
        assert_eq!(parse_go_int("-010", 32), Ok(-8));
        assert_eq!(parse_go_int("1_000", 32), Ok(1000));
        assert!(parse_go_int("2147483648", 32).is_err() && parse_go_int("2147483648", 64).is_ok());
        assert!(parse_go_int("ten", 32).is_err() && parse_go_int("", 32).is_err() && parse_go_int("--1", 32).is_err());
        assert_eq!(parse_go_duration("-1m30s"), Ok((true, std::time::Duration::from_secs(90))));
        assert!(Kind::Duration.parse("10").is_err());
        assert!(Kind::Bool.parse("yes").is_err() && Kind::Bool.parse("F").is_ok());
        assert!(Kind::Map.parse("a=1,b=2").is_ok() && Kind::Map.parse("a").is_err() && Kind::Map.parse("").is_ok());
        assert!(Kind::MapNoSplit.parse("full-pcpus-only=true").is_ok() && Kind::MapNoSplit.parse("x").is_err());
        assert!(Kind::MapLangle.parse("memory.available<1.5Gi").is_ok() && Kind::MapLangle.parse("memory.available=1Gi").is_err());
        assert!(Kind::MapBool.parse("A=true,B=0").is_ok() && Kind::MapBool.parse("A=maybe").is_err());
        assert!(Kind::MapColon.parse("a:b,c:d").is_ok() && Kind::MapColon.parse("a=b").is_err());
        assert!(Kind::ReservedMemory.parse("0:memory=1Gi,hugepages-1Mi=2Gi;1:memory=2Gi").is_ok());
        assert!(Kind::ReservedMemory.parse("memory=1Gi").is_err() && Kind::ReservedMemory.parse("0:memory=lots").is_err());
        assert!(Kind::VModule.parse("foo*=3,bar=1").is_ok() && Kind::VModule.parse("foo=x").is_err());
        assert!(Kind::Quantity.parse("2Ki").is_ok() && Kind::Quantity.parse("two").is_err());
        assert!(Kind::Version.parse("raw").is_ok() && Kind::Version.parse("v1.36.1").is_ok() && Kind::Version.parse("maybe").is_err());
    }

    #[test]
    fn given_flags_are_reported_unless_their_value_is_what_rkubelet_does() {
        let h = Host::default();
        let given = |flags: &[(&'static str, &str)]| {
            let flags: Vec<(&'static str, String)> = flags.iter().map(|(n, v)| (*n, v.to_string())).collect();
            report(&flags, None, &h).not_implemented
        };
        assert_eq!(given(&[("node-status-max-images", "50"), ("cpu-manager-policy", "none")]), vec!["--node-status-max-images"]);
        assert!(given(&[("node-status-max-images", "0"), ("cgroups-per-qos", "true"), ("topology-manager-policy", "none")]).is_empty());
        assert!(given(&[("memory-manager-policy", "None"), ("fail-swap-on", "true"), ("fail-swap-on", "false"), ("logging-format", "json")]).is_empty());
        assert!(given(&[("eviction-soft", ""), ("cpu-manager-reconcile-period", "0s"), ("cpu-cfs-quota-period", "0.1s"), ("housekeeping-interval", "10s")]).is_empty());
        assert_eq!(given(&[("cgroups-per-qos", "false"), ("cpu-manager-policy", "static"), ("cpu-manager-policy", "static")]), vec!["--cgroups-per-qos", "--cpu-manager-policy"]);
        assert_eq!(given(&[("cpu-cfs-quota-period", "50ms"), ("enforce-node-allocatable", "pods,kube-reserved")]), vec!["--cpu-cfs-quota-period", "--enforce-node-allocatable"]);
        // Implemented flags are never reported.
        assert!(given(&[("max-pods", "10"), ("eviction-hard", "memory.available<1Gi")]).is_empty());
        // Swap and cgroup v1: failSwapOn and failCgroupV1 matter only there.
        let swapping = Host { swap_on: true, cgroup_v1: true };
        let f = vec![("fail-swap-on", "true".to_string()), ("fail-cgroupv1", "true".to_string())];
        assert_eq!(report(&f, None, &swapping).not_implemented, vec!["--fail-swap-on", "--fail-cgroupv1"]);
        assert!(report(&f, None, &h).not_implemented.is_empty());
    }

    #[test]
    fn kubeadm_zero_values_are_not_reported_and_set_fields_are() {
        let h = Host::default();
        let kubeadm = doc(include_str!("../tests/data/kubeadm-1.36/config.yaml"));
        let r = report(&[], Some(&kubeadm), &h);
        assert!(r.not_implemented.is_empty() && r.unknown_fields.is_empty(), "{r:?}");
        let r = report(
            &[],
            Some(&doc(
                "qosReserved: {memory: 50%}\ncpuManagerPolicy: none\ncgroupsPerQOS: true\nmemoryManagerPolicy: None\nfailSwapOn: true\n\
                 nodeStatusMaxImages: 90\nfeatureGates: {Foo: true}\nlogging: {format: json, verbosity: 4}\ncrashLoopBackOff: {maxContainerRestartPeriod: 5m}\n\
                 enforceNodeAllocatable: [pods]\nsingleProcessOOMKill: true\nmemorySwap: {swapBehavior: LimitedSwap}\nmaxPods: 10\n",
            )),
            &h,
        );
        assert_eq!(r.not_implemented, vec!["nodeStatusMaxImages", "qosReserved", "featureGates", "logging.verbosity"]);
        let r = report(&[], Some(&doc("enforceNodeAllocatable: []\ncgroupsPerQOS: false\nevictionSoft: {}\n")), &h);
        assert_eq!(r.not_implemented, vec!["cgroupsPerQOS", "enforceNodeAllocatable"]);
    }

    #[test]
    fn only_fields_upstream_does_not_have_are_unknown() {
        let d = doc(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nsomethingNew: 1\nmaxPod: 3\nimagePullProgressDeadline: 1m\n\
             authentication: {webhook: {enabled: true, extra: 1}, x509: {clientCAFile: /ca}}\nlogging: {options: {json: {infoBufferSize: '0'}}, colour: true}\n\
             crashLoopBackOff: {maxContainerRestartPeriod: 1m, minimum: 1s}\ntracing: {endpoint: x}\nuserNamespaces: {idsPerPod: 65536}\n",
        );
        assert_eq!(unknown_fields(&d), vec!["authentication.webhook.extra", "crashLoopBackOff.minimum", "logging.colour", "maxPod", "somethingNew"]);
        let r = report(&[], Some(&d), &Host::default());
        assert_eq!(r.strict_decoding_error().unwrap(), "strict decoding error: unknown field \"authentication.webhook.extra\", unknown field \"crashLoopBackOff.minimum\", unknown field \"logging.colour\", unknown field \"maxPod\", unknown field \"somethingNew\"");
        assert_eq!(r.not_implemented, vec!["userNamespaces.idsPerPod", "crashLoopBackOff.maxContainerRestartPeriod", "tracing"]);
    }
}
