//! Command line (and `--config` file) → one immutable [`Config`].
//!
//! Flag names follow the upstream kubelet (`--pod-manifest-path`, `--root-dir`,
//! `--container-runtime-endpoint`, …) so that unit files and habits carry over. A
//! KubeletConfiguration file ([`crate::kubelet_config`]) can set most of them; as
//! upstream, a flag given on the command line overrides the file, and upstream's
//! defaults apply when neither says anything. Every other flag upstream's kubelet 1.36
//! accepts is accepted too ([`UnimplementedFlags`], from [`crate::compat::SETTINGS`])
//! and, unless its value is what rkubelet does anyway, named in [`Config::compat`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use thiserror::Error;

/// The Kubernetes API level rkubelet implements, reported where kubeadm and the
/// API server expect a kubelet version.
pub const KUBERNETES_VERSION: &str = "v1.36.0";

/// `Kubernetes v1.36.0+rkubelet.0.1.0`: the one line `kubelet --version` prints,
/// in the form kubeadm's preflight parses.
pub fn version_line() -> String {
    format!("Kubernetes {}+rkubelet.{}", KUBERNETES_VERSION, env!("CARGO_PKG_VERSION"))
}

/// Errors in the command line or the values it names.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The container runtime endpoint is not a `unix://` socket.
    #[error("--container-runtime-endpoint must be unix:///path/to/socket, got {0:?}")]
    Endpoint(String),
    /// The node name could not be determined.
    #[error("could not determine the node name: {0}")]
    NodeName(#[source] std::io::Error),
    /// A `--node-labels` entry that is not key=value.
    #[error("invalid --node-labels entry {0:?}: want key=value")]
    NodeLabel(String),
    /// A `--register-with-taints` entry that is not key[=value]:Effect.
    #[error("invalid taint {0:?}: want key[=value]:NoSchedule|PreferNoSchedule|NoExecute")]
    Taint(String),
    /// A `--node-ip` that is not an IP, or a loopback one (upstream refuses those).
    #[error("invalid --node-ip {0:?}: must be a non-loopback IP address")]
    NodeIp(String),
    /// A node name that is not a valid DNS subdomain.
    #[error("invalid node name {0:?}: must be a lowercase RFC 1123 subdomain")]
    InvalidNodeName(String),
    /// The `--config` file could not be read or has a wrongly typed field.
    #[error(transparent)]
    File(#[from] crate::kubelet_config::KubeletConfigError),
    /// A flag or configuration field with a value that is not allowed.
    #[error("invalid {field} {value:?}: {message}")]
    Invalid {
        /// The flag (`--cgroup-driver`) or config field (`cgroupDriver`, `evictionHard[memory.available]`).
        field: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        message: String,
    },
    /// The credential provider plugins cannot be registered.
    #[error(transparent)]
    CredentialProvider(#[from] crate::runtime::image::ProviderError),
    /// `--bootstrap-kubeconfig` without `--kubeconfig` (where the bootstrap writes its result).
    #[error("--bootstrap-kubeconfig requires --kubeconfig: the path where the bootstrapped kubeconfig is written")]
    BootstrapWithoutKubeconfig,
    /// An `allowedUnsafeSysctls` entry that is not a namespaced sysctl (pattern).
    #[error(transparent)]
    Sysctl(#[from] crate::pod::sysctl::SysctlError),
}

#[derive(Debug, Parser)]
// Like Go's flag package, a flag given twice keeps its last value (kubeadm's drop-in
// concatenates KUBELET_KUBEADM_ARGS and KUBELET_EXTRA_ARGS); list flags accumulate.
#[command(name = "rkubelet", about = "A Kubernetes node agent on containerd's native API", version = None, disable_version_flag = true, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the pods this node runs (standalone mode), read from the agent's state.
    Pods(PodsArgs),
    /// Print full build information.
    Version,
    /// Check this node (containerd, runc, CNI, the agent, the API server, cgroups,
    /// disk...) and, with --pod, explain why a pod does not run. Read-only.
    /// Exit code: 0 all OK, 1 warnings, 2 failures.
    Doctor(DoctorArgs),
    /// Stop and remove every pod of this node (containers, network, volumes,
    /// mounts, cgroups), as `kubeadm reset` cannot: run it after `kubeadm reset`
    /// or `systemctl stop kubelet`. Exit code: 0 nothing left, 1 something left, 2 error.
    Reset(ResetArgs),
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do nothing (and succeed) if the agent is running: what the
    /// rkubelet-reset.path unit runs when /etc/kubernetes/kubelet.conf goes away.
    #[arg(long = "if-stopped")]
    pub if_stopped: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Output format: text (default) or json.
    #[arg(short = 'o', long = "output", default_value = "text")]
    pub output: String,
    /// Explain why this pod (NAMESPACE/NAME) is Pending, ContainerCreating,
    /// ImagePullBackOff or CrashLoopBackOff on this node.
    #[arg(long = "pod", value_name = "NAMESPACE/NAME")]
    pub pod: Option<String>,
}

#[derive(Debug, Args)]
pub struct PodsArgs {
    /// Output format: wide (default), json or yaml.
    #[arg(short = 'o', long = "output", default_value = "wide")]
    pub output: String,
    /// The agent's root directory (also accepted before the subcommand).
    #[arg(long = "root-dir")]
    pub root_dir: Option<PathBuf>,
}

/// The agent's flags. Flags that a KubeletConfiguration file (`--config`) can also set
/// are `Option`s: given on the command line they win over the file, otherwise the
/// file's value (or upstream's default) is used; see [`Config::from_args`].
#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Print the version (`Kubernetes vX.Y.Z+rkubelet...`) and exit; as upstream,
    /// also `--version=raw`, and `--version=vX.Y.Z` (not implemented: sets the reported version).
    #[arg(long = "version", global = true, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "true|raw|vX.Y.Z", value_parser = |s: &str| crate::compat::Kind::Version.parse(s))]
    pub version: Option<String>,
    /// A KubeletConfiguration file (kubelet.config.k8s.io/v1beta1); flags given explicitly override it.
    #[arg(long = "config")]
    pub config: Option<PathBuf>,
    /// Directory of static pod manifests (YAML or JSON Pods), watched for changes [config: staticPodPath].
    #[arg(long = "pod-manifest-path")]
    pub pod_manifest_path: Option<PathBuf>,
    /// Directory for the agent's state (pod directories, caches).
    #[arg(long = "root-dir", default_value = "/var/lib/rkubelet")]
    pub root_dir: PathBuf,
    /// containerd's gRPC endpoint [default: unix:///run/containerd/containerd.sock] [config: containerRuntimeEndpoint].
    #[arg(long = "container-runtime-endpoint")]
    pub container_runtime_endpoint: Option<String>,
    /// The image of the pause container that holds each pod's namespaces.
    #[arg(long = "pod-infra-container-image", default_value = "registry.k8s.io/pause:3.10")]
    pub pod_infra_container_image: String,
    /// Directories searched for CNI plugin binaries, comma separated, in order.
    #[arg(long = "cni-bin-dir", default_value = "/opt/cni/bin,/usr/lib/cni", value_delimiter = ',')]
    pub cni_bin_dir: Vec<PathBuf>,
    /// Directory of CNI network configurations; the first valid one (by name) is used.
    #[arg(long = "cni-conf-dir", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Directory where CNI results are cached (default: <root-dir>/cni-cache).
    #[arg(long = "cni-cache-dir")]
    pub cni_cache_dir: Option<PathBuf>,
    /// Use this name instead of the hostname as the node name.
    #[arg(long = "hostname-override")]
    pub hostname_override: Option<String>,
    /// containerd namespace for pods.
    #[arg(long = "runtime-namespace", default_value = "k8s.io", hide = true)]
    pub runtime_namespace: String,
    /// containerd snapshotter for container root filesystems.
    #[arg(long = "snapshotter", default_value = "overlayfs")]
    pub snapshotter: String,
    /// Directory under which container logs are written [default: /var/log/pods] [config: podLogsDir].
    #[arg(long = "pod-logs-dir", hide = true)]
    pub pod_logs_dir: Option<PathBuf>,
    /// How often the manifest directory is fully re-read (changes are also picked up by inotify) [default: 20s] [config: fileCheckFrequency].
    #[arg(long = "file-check-frequency", value_parser = parse_duration)]
    pub file_check_frequency: Option<Duration>,
    /// How often every pod is re-synced even without events [default: 1m] [config: syncFrequency].
    #[arg(long = "sync-frequency", value_parser = parse_duration)]
    pub sync_frequency: Option<Duration>,
    /// An exec, attach or port-forward connection with no traffic for this long is closed [default: 4h] [config: streamingConnectionIdleTimeout].
    #[arg(long = "streaming-connection-idle-timeout", value_parser = parse_duration)]
    pub streaming_connection_idle_timeout: Option<Duration>,
    /// kubeconfig for the API server; without it the agent runs standalone. With
    /// --bootstrap-kubeconfig, it is written by the TLS bootstrap when missing or expired.
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig (usually a bootstrap token) used to request a client certificate when
    /// --kubeconfig is missing or its certificate has expired.
    #[arg(long = "bootstrap-kubeconfig")]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// Where the client certificate and key are kept (default: <root-dir>/pki).
    #[arg(long = "cert-dir")]
    pub cert_dir: Option<PathBuf>,
    /// Rotate the client certificate at 70-90% of its lifetime [default: false] [config: rotateCertificates].
    #[arg(long = "rotate-certificates", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub rotate_certificates: Option<bool>,
    /// Request the serving certificate with a CSR [default: false] [config: serverTLSBootstrap].
    #[arg(long = "rotate-server-certificates", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub rotate_server_certificates: Option<bool>,
    /// The kubelet server's certificate (with --tls-private-key-file) [default: a self-signed <cert-dir>/kubelet.crt] [config: tlsCertFile].
    #[arg(long = "tls-cert-file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The kubelet server's private key [config: tlsPrivateKeyFile].
    #[arg(long = "tls-private-key-file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// TLS 1.2 cipher suites the kubelet server allows, by IANA name [default: rustls's] [config: tlsCipherSuites].
    #[arg(long = "tls-cipher-suites", value_delimiter = ',')]
    pub tls_cipher_suites: Option<Vec<String>>,
    /// VersionTLS12 or VersionTLS13 (10 and 11 are served as 12) [default: VersionTLS12] [config: tlsMinVersion].
    #[arg(long = "tls-min-version")]
    pub tls_min_version: Option<String>,
    /// How long the TLS bootstrap waits for its CertificateSigningRequest to be approved and signed (upstream: 1h).
    #[arg(long = "tls-bootstrap-timeout", default_value = "1h", value_parser = parse_duration)]
    pub tls_bootstrap_timeout: Duration,
    /// The node's IP address (InternalIP); default: the address of the default route's interface.
    #[arg(long = "node-ip")]
    pub node_ip: Option<String>,
    /// Labels to add when registering the node: key=value,key2=value2.
    #[arg(long = "node-labels", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with: key=value:Effect,key:Effect [config: registerWithTaints].
    #[arg(long = "register-with-taints", value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Maximum number of pods on this node [default: 110] [config: maxPods].
    #[arg(long = "max-pods", value_parser = go_u32)]
    pub max_pods: Option<u32>,
    /// Rotate a container's log file at this size [default: 10Mi] [config: containerLogMaxSize].
    #[arg(long = "container-log-max-size")]
    pub container_log_max_size: Option<String>,
    /// Log files kept per container, the current one included [default: 5] [config: containerLogMaxFiles].
    #[arg(long = "container-log-max-files", value_parser = go_u32)]
    pub container_log_max_files: Option<u32>,
    /// How often the node status is computed (and patched if it changed) [default: 10s] [config: nodeStatusUpdateFrequency].
    #[arg(long = "node-status-update-frequency", value_parser = parse_duration)]
    pub node_status_update_frequency: Option<Duration>,
    /// How often the node status is patched even if unchanged [default: 5m] [config: nodeStatusReportFrequency].
    #[arg(long = "node-status-report-frequency", value_parser = parse_duration)]
    pub node_status_report_frequency: Option<Duration>,
    /// Duration of the node Lease; it is renewed every quarter of it [default: 40] [config: nodeLeaseDurationSeconds].
    #[arg(long = "node-lease-duration-seconds", value_parser = go_i32)]
    pub node_lease_duration_seconds: Option<i32>,
    /// DNS server IPs for pods, comma separated [config: clusterDNS].
    #[arg(long = "cluster-dns", value_delimiter = ',')]
    pub cluster_dns: Vec<String>,
    /// The cluster's DNS domain, e.g. cluster.local [config: clusterDomain].
    #[arg(long = "cluster-domain")]
    pub cluster_domain: Option<String>,
    /// cgroupfs or systemd [default: cgroupfs] [config: cgroupDriver].
    #[arg(long = "cgroup-driver")]
    pub cgroup_driver: Option<String>,
    /// Allow anonymous requests to the kubelet server [default: false] [config: authentication.anonymous.enabled].
    #[arg(long = "anonymous-auth", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub anonymous_auth: Option<bool>,
    /// Check bearer tokens with TokenReviews [default: true] [config: authentication.webhook.enabled].
    #[arg(long = "authentication-token-webhook", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub authentication_token_webhook: Option<bool>,
    /// How long TokenReview answers are cached [default: 2m] [config: authentication.webhook.cacheTTL].
    #[arg(long = "authentication-token-webhook-cache-ttl", value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Option<Duration>,
    /// CA bundle for client certificates on the kubelet server [config: authentication.x509.clientCAFile].
    #[arg(long = "client-ca-file")]
    pub client_ca_file: Option<PathBuf>,
    /// AlwaysAllow or Webhook [default: Webhook] [config: authorization.mode].
    #[arg(long = "authorization-mode")]
    pub authorization_mode: Option<String>,
    /// How long allowed SubjectAccessReview answers are cached [default: 5m] [config: authorization.webhook.cacheAuthorizedTTL].
    #[arg(long = "authorization-webhook-cache-authorized-ttl", value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Option<Duration>,
    /// How long denied SubjectAccessReview answers are cached [default: 30s] [config: authorization.webhook.cacheUnauthorizedTTL].
    #[arg(long = "authorization-webhook-cache-unauthorized-ttl", value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<Duration>,
    /// Maximum number of processes per pod; -1 for no limit [default: -1] [config: podPidsLimit].
    #[arg(long = "pod-max-pids", allow_hyphen_values = true, value_parser = go_i64)]
    pub pod_max_pids: Option<i64>,
    /// Hard eviction thresholds: memory.available<100Mi,nodefs.available<10% [config: evictionHard].
    #[arg(long = "eviction-hard")]
    pub eviction_hard: Option<String>,
    /// Image filesystem use (%) at which image garbage collection starts [default: 85] [config: imageGCHighThresholdPercent].
    #[arg(long = "image-gc-high-threshold", allow_hyphen_values = true, value_parser = go_i32)]
    pub image_gc_high_threshold: Option<i32>,
    /// Image filesystem use (%) image garbage collection brings it down to [default: 80] [config: imageGCLowThresholdPercent].
    #[arg(long = "image-gc-low-threshold", allow_hyphen_values = true, value_parser = go_i32)]
    pub image_gc_low_threshold: Option<i32>,
    /// Minimum age of an unused image before garbage collection may remove it [default: 2m0s] [config: imageMinimumGCAge].
    #[arg(long = "minimum-image-ttl-duration", value_parser = parse_duration)]
    pub minimum_image_ttl_duration: Option<Duration>,
    /// See a memory threshold crossing at once (cgroup v1 eventfd; v2: a 1 s poll) instead of at the next 10 s pass [default: true, upstream's false] [config: kernelMemcgNotification].
    #[arg(long = "kernel-memcg-notification", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub kernel_memcg_notification: Option<bool>,
    /// Soft eviction thresholds: memory.available<1.5Gi [config: evictionSoft].
    #[arg(long = "eviction-soft", value_parser = |s: &str| crate::compat::Kind::MapLangle.parse(s))]
    pub eviction_soft: Option<String>,
    /// How long each soft threshold must hold before pods go: memory.available=1m30s [config: evictionSoftGracePeriod].
    #[arg(long = "eviction-soft-grace-period", value_parser = |s: &str| crate::compat::Kind::Map.parse(s))]
    pub eviction_soft_grace_period: Option<String>,
    /// How long a pressure condition stays after its threshold last held [default: 5m0s] [config: evictionPressureTransitionPeriod].
    #[arg(long = "eviction-pressure-transition-period", value_parser = parse_duration)]
    pub eviction_pressure_transition_period: Option<Duration>,
    /// Longest grace period (s) of a pod evicted for a soft threshold [default: 0] [config: evictionMaxPodGracePeriod].
    #[arg(long = "eviction-max-pod-grace-period", allow_hyphen_values = true, value_parser = go_i64)]
    pub eviction_max_pod_grace_period: Option<i64>,
    /// What an eviction must reclaim beyond the threshold: imagefs.available=2Gi [config: evictionMinimumReclaim].
    #[arg(long = "eviction-minimum-reclaim", value_parser = |s: &str| crate::compat::Kind::Map.parse(s))]
    pub eviction_minimum_reclaim: Option<String>,
    /// Resources reserved for Kubernetes daemons: cpu=100m,memory=100Mi [config: kubeReserved].
    #[arg(long = "kube-reserved")]
    pub kube_reserved: Option<String>,
    /// Resources reserved for the OS: cpu=100m,memory=100Mi [config: systemReserved].
    #[arg(long = "system-reserved")]
    pub system_reserved: Option<String>,
    /// Cancel an image pull that makes no progress for this long [default: 1m] [config: imagePullProgressDeadline].
    #[arg(long = "image-pull-progress-deadline", value_parser = parse_duration)]
    pub image_pull_progress_deadline: Option<Duration>,
    /// Pull one image at a time [default: true, false when maxParallelImagePulls > 1] [config: serializeImagePulls].
    #[arg(long = "serialize-image-pulls", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub serialize_image_pulls: Option<bool>,
    /// Image pulls at once when not serialized [default: no limit] [config: maxParallelImagePulls].
    #[arg(long = "max-parallel-image-pulls", allow_hyphen_values = true)]
    pub max_parallel_image_pulls: Option<i32>,
    /// Unsafe sysctls (or prefixes ending in *) pods may set besides the safe ones, comma separated [config: allowedUnsafeSysctls].
    #[arg(long = "allowed-unsafe-sysctls", value_delimiter = ',')]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Give containers without a seccompProfile the runtime's default profile [default: false] [config: seccompDefault].
    #[arg(long = "seccomp-default", num_args = 0..=1, require_equals = true, default_missing_value = "true", value_parser = parse_go_bool)]
    pub seccomp_default: Option<bool>,
    /// The CredentialProviderConfig file (or directory of them) of the image credential provider plugins.
    #[arg(long = "image-credential-provider-config")]
    pub image_credential_provider_config: Option<PathBuf>,
    /// Where the image credential provider plugins' executables are.
    #[arg(long = "image-credential-provider-bin-dir")]
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// containerd's registry config_path: <dir>/<host[:port]>/hosts.toml (mirrors, CAs); "" disables [default: containerd's config_path, else /etc/containerd/certs.d].
    #[arg(long = "registry-config-path")]
    pub registry_config_path: Option<String>,
    /// Port of the healthz endpoint, 0 disables it [default: 10248] [config: healthzPort].
    #[arg(long = "healthz-port", value_parser = go_i32)]
    pub healthz_port: Option<i32>,
    /// Address of the healthz endpoint [default: 127.0.0.1] [config: healthzBindAddress].
    #[arg(long = "healthz-bind-address")]
    pub healthz_bind_address: Option<String>,
    /// Port of the kubelet server [default: 10250] [config: port].
    #[arg(long = "port", value_parser = go_i32)]
    pub port: Option<i32>,
    /// Address of the kubelet server [default: 0.0.0.0] [config: address].
    #[arg(long = "address")]
    pub address: Option<String>,
    /// resolv.conf for pods with dnsPolicy Default; "" disables [default: /etc/resolv.conf] [config: resolvConf].
    #[arg(long = "resolv-conf")]
    pub resolv_conf: Option<String>,
    /// A RuntimeClass handler and the containerd runtime it runs (rkubelet's own
    /// flag; containerd's CRI keeps this map in its config), repeatable:
    /// NAME=RUNTIME_TYPE [default: runc=io.containerd.runc.v2].
    #[arg(long = "runtime-handler", value_parser = parse_runtime_handler)]
    pub runtime_handlers: Vec<(String, String)>,
    /// Log verbosity like upstream's -v: 0-1 info, 2-3 debug, 4+ trace. RUST_LOG overrides.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
    #[command(flatten)]
    pub unimplemented: UnimplementedFlags,
}

impl AgentArgs {
    /// `--version`, `--version=true` or `--version=raw`: print the version and exit.
    pub fn prints_version(&self) -> bool {
        matches!(self.version.as_deref(), Some("raw")) || self.version.as_deref().is_some_and(|v| parse_go_bool(v) == Ok(true))
    }
}

/// `NAME=RUNTIME_TYPE` of `--runtime-handler`.
fn parse_runtime_handler(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, t)) if !n.is_empty() && !t.is_empty() => Ok((n.to_string(), t.to_string())),
        _ => Err(format!("{s:?}: want NAME=RUNTIME_TYPE, e.g. runc=io.containerd.runc.v2")),
    }
}

/// An int32 flag value as upstream's flag set parses it (strconv.ParseInt(s, 0, 32): `8080`, `0x1f90`).
fn go_i32(s: &str) -> Result<i32, String> {
    crate::compat::parse_go_int(s, 32).map(|n| n as i32)
}

/// An int64 flag value (strconv.ParseInt(s, 0, 64)).
fn go_i64(s: &str) -> Result<i64, String> {
    crate::compat::parse_go_int(s, 64)
}

/// An int32 flag value that must not be negative.
fn go_u32(s: &str) -> Result<u32, String> {
    go_i32(s).and_then(|n| u32::try_from(n).map_err(|_| format!("{s:?} must not be negative")))
}

/// Parses a Go boolean flag value (`strconv.ParseBool`): 1, t, T, TRUE, true, True, 0, f, F, FALSE, false, False.
pub fn parse_go_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("invalid boolean {s:?}")),
    }
}

/// The upstream kubelet flags rkubelet accepts without reading them into
/// [`Config`]: every [`crate::compat::SETTINGS`] flag that is not implemented (or
/// has no effect), with upstream's value syntax (booleans only as `--flag` or
/// `--flag=false`, lists and maps accumulating over repeats). Hidden from `--help`.
#[derive(Debug, Clone, Default)]
pub struct UnimplementedFlags {
    given: Vec<(&'static str, String)>,
}

impl UnimplementedFlags {
    /// The flags given on the command line, as `(name, value)`; a repeated list or
    /// map flag's values are joined by commas.
    pub fn given(&self) -> &[(&'static str, String)] {
        &self.given
    }
}

impl clap::FromArgMatches for UnimplementedFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let given = crate::compat::accepted_only()
            .filter_map(|s| s.flag)
            .filter(|name| m.value_source(name) == Some(clap::parser::ValueSource::CommandLine))
            .filter_map(|name| Some((name, m.get_many::<String>(name)?.cloned().collect::<Vec<_>>().join(","))))
            .collect();
        Ok(UnimplementedFlags { given })
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for UnimplementedFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        use clap::{Arg, ArgAction};
        crate::compat::accepted_only().fold(cmd, |cmd, s| {
            let Some(name) = s.flag else { return cmd };
            let kind = s.kind;
            let arg = Arg::new(name).long(name).hide(true).value_parser(move |v: &str| kind.parse(v));
            let arg = match kind {
                crate::compat::Kind::Bool => arg.num_args(0..=1).require_equals(true).default_missing_value("true"),
                k => arg.num_args(1).allow_hyphen_values(true).action(if k.accumulates() { ArgAction::Append } else { ArgAction::Set }),
            };
            cmd.arg(arg)
        })
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// Normalizes flag names as upstream's `WordSepNormalizeFunc`: `--cluster_dns=…`
/// is `--cluster-dns=…`. Values, subcommands and anything after `--` are kept.
pub fn normalize_flag_names(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut done = false;
    args.into_iter()
        .map(|a| {
            if done || !a.starts_with("--") || a.len() == 2 {
                done |= a == "--";
                return a;
            }
            match a.split_once('=') {
                Some((name, value)) => format!("{}={value}", name.replace('_', "-")),
                None => a.replace('_', "-"),
            }
        })
        .collect()
}

/// The longest duration Go's time.Duration holds (i64 nanoseconds, about 292 years).
const MAX_GO_DURATION: Duration = Duration::new(9_223_372_036, 854_775_807);

/// Parses Go-style durations as the kubelet accepts them: `20s`, `1m`, `1m30s`, `500ms`.
/// Beyond what a Go duration holds is an error, as time.ParseDuration's "invalid duration".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    if rest == "0" {
        return Ok(total);
    }
    while !rest.is_empty() {
        let n_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(format!("missing unit in duration {s:?}"))?;
        let (num, tail) = rest.split_at(n_end);
        let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
        let u_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, next) = tail.split_at(u_end);
        let secs = match unit {
            "ns" => n / 1e9,
            "us" | "µs" => n / 1e6,
            "ms" => n / 1e3,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("unknown unit {unit:?} in duration {s:?}")),
        };
        total = Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| total.checked_add(d))
            .filter(|t| *t <= MAX_GO_DURATION)
            .ok_or_else(|| format!("invalid duration {s:?}"))?;
        rest = next;
    }
    Ok(total)
}

/// The agent's resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub pod_manifest_path: Option<PathBuf>,
    pub root_dir: PathBuf,
    pub containerd_socket: PathBuf,
    pub pause_image: String,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub cni_cache_dir: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
    pub pod_logs_dir: PathBuf,
    pub file_check_frequency: Duration,
    pub sync_frequency: Duration,
    /// `streamingConnectionIdleTimeout`: exec/attach/port-forward connections idle this long are closed.
    pub streaming_connection_idle_timeout: Duration,
    /// Set by `rkubelet reset`, never by flags: pods are killed at once, whatever
    /// their grace period (as kubeadm reset's StopPodSandbox through CRI does).
    pub kill_at_once: bool,
    pub kubeconfig: Option<PathBuf>,
    pub node_ip: Option<String>,
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub max_pods: u32,
    /// `containerLogMaxSize` in bytes.
    pub container_log_max_size: u64,
    /// `containerLogMaxFiles` (at least 2, as upstream validates).
    pub container_log_max_files: u32,
    pub node_status_update_frequency: Duration,
    pub node_status_report_frequency: Duration,
    pub node_lease_duration_seconds: i32,
    /// The `--config` KubeletConfiguration file, if any.
    pub config_file: Option<PathBuf>,
    /// `--bootstrap-kubeconfig`: credentials for the TLS bootstrap.
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// `--cert-dir`: the client certificate store (`<root-dir>/pki` by default).
    pub cert_dir: PathBuf,
    /// `rotateCertificates`: renew the client certificate before it expires.
    pub rotate_certificates: bool,
    /// `serverTLSBootstrap`: the serving certificate comes from a `kubernetes.io/kubelet-serving` CSR.
    pub server_tls_bootstrap: bool,
    /// `tlsCertFile` and `tlsPrivateKeyFile`: the serving pair, when not self-signed.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// `tlsCipherSuites` and `tlsMinVersion`, checked.
    pub tls: crate::server::tls::Settings,
    /// How long the TLS bootstrap waits for its CSR to be signed.
    pub tls_bootstrap_timeout: Duration,
    /// `clusterDNS`: nameservers for ClusterFirst pods.
    pub cluster_dns: Vec<IpAddr>,
    /// `clusterDomain`, e.g. `cluster.local`.
    pub cluster_domain: Option<String>,
    /// `cgroupDriver`.
    pub cgroup_driver: CgroupDriver,
    /// `authentication` of the kubelet server.
    pub authentication: AuthenticationConfig,
    /// `authorization` of the kubelet server.
    pub authorization: AuthorizationConfig,
    /// `podPidsLimit` (-1: unlimited).
    pub pod_pids_limit: i64,
    /// `singleProcessOOMKill` (default: true on cgroup v1, false on v2).
    pub single_process_oom_kill: bool,
    /// Graceful node shutdown's groups (`shutdownGracePeriodByPodPriority`, or
    /// the two periods migrated as upstream does); empty: shutdown is immediate.
    pub shutdown_groups: Vec<crate::kubelet_config::ShutdownGracePeriodByPodPriority>,
    /// `evictionHard`: signal → threshold.
    pub eviction_hard: BTreeMap<String, Threshold>,
    /// `imageGCHighThresholdPercent` / `imageGCLowThresholdPercent` (85 / 80).
    pub image_gc_high_threshold_percent: i32,
    pub image_gc_low_threshold_percent: i32,
    /// `imageMinimumGCAge` (2m) and `imageMaximumGCAge` (0: none).
    pub image_minimum_gc_age: Duration,
    pub image_maximum_gc_age: Duration,
    /// `kernelMemcgNotification` (rkubelet's default: true).
    pub kernel_memcg_notification: bool,
    /// `evictionSoft`: signal → threshold, each with its grace period below.
    pub eviction_soft: BTreeMap<String, Threshold>,
    /// `evictionSoftGracePeriod`.
    pub eviction_soft_grace_period: BTreeMap<String, Duration>,
    /// `evictionPressureTransitionPeriod` (default 5m).
    pub eviction_pressure_transition_period: Duration,
    /// `evictionMaxPodGracePeriod` (seconds).
    pub eviction_max_pod_grace_period: i64,
    /// `evictionMinimumReclaim`: signal → quantity or percentage.
    pub eviction_minimum_reclaim: BTreeMap<String, Threshold>,
    /// `kubeReserved`: resource → quantity.
    pub kube_reserved: BTreeMap<String, String>,
    /// `systemReserved`: resource → quantity.
    pub system_reserved: BTreeMap<String, String>,
    /// `imagePullProgressDeadline`.
    pub image_pull_progress_deadline: Duration,
    /// `healthzPort` (0 disables the endpoint).
    pub healthz_port: i32,
    /// `healthzBindAddress`.
    pub healthz_bind_address: String,
    /// `port` of the kubelet server (the node's daemonEndpoints.kubeletEndpoint).
    pub port: i32,
    /// `address` the kubelet server binds.
    pub address: String,
    /// `resolvConf` for dnsPolicy Default pods; `None` when set to "" (disabled).
    pub resolv_conf: Option<PathBuf>,
    /// RuntimeClass handler → containerd runtime type; "" is the default runtime.
    pub runtime_handlers: std::collections::BTreeMap<String, String>,
    /// `serializeImagePulls`.
    pub serialize_image_pulls: bool,
    /// `maxParallelImagePulls` (`None`: no limit).
    pub max_parallel_image_pulls: Option<u32>,
    /// `allowedUnsafeSysctls`: names and `prefix*` patterns, checked at load
    /// (each must be namespaced); admission adds the safe set (`pod::sysctl`).
    pub allowed_unsafe_sysctls: Vec<String>,
    /// `seccompDefault`: RuntimeDefault for containers without a seccompProfile.
    pub seccomp_default: bool,
    /// The plugins of `--image-credential-provider-config`, loaded and checked.
    pub credential_providers: Option<std::sync::Arc<crate::runtime::image::CredentialProviders>>,
    /// containerd's registry hosts directory (`hosts.toml`s); `None`: disabled.
    pub registry_config_path: Option<PathBuf>,
    /// The upstream flags and file fields given that rkubelet does not implement,
    /// and the file's unknown fields: logged at start, listed by doctor.
    pub compat: crate::compat::Report,
}

/// The cgroup driver (`cgroupDriver`, `--cgroup-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    /// cgroups managed through the cgroup filesystem (upstream's default).
    Cgroupfs,
    /// cgroups managed through systemd slices and scopes.
    Systemd,
}

/// The kubelet server's authentication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticationConfig {
    /// `x509.clientCAFile`.
    pub client_ca_file: Option<PathBuf>,
    /// `webhook.enabled` (default true).
    pub webhook_enabled: bool,
    /// `webhook.cacheTTL` (default 2m).
    pub webhook_cache_ttl: Duration,
    /// `anonymous.enabled` (default false).
    pub anonymous_enabled: bool,
}

/// The kubelet server's authorization settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationConfig {
    /// `mode`: AlwaysAllow or Webhook (default).
    pub mode: AuthorizationMode,
    /// `webhook.cacheAuthorizedTTL` (default 5m).
    pub webhook_cache_authorized_ttl: Duration,
    /// `webhook.cacheUnauthorizedTTL` (default 30s).
    pub webhook_cache_unauthorized_ttl: Duration,
}

/// `authorization.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Every authenticated request is allowed.
    AlwaysAllow,
    /// SubjectAccessReviews decide.
    Webhook,
}

/// A hard eviction threshold: an absolute quantity or a share of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// Bytes (or inodes, or PIDs, depending on the signal).
    Quantity(i64),
    /// A fraction of capacity in [0, 1] (`10%` → 0.10).
    Fraction(f64),
}

impl Threshold {
    /// Parses `100Mi` or `10%`.
    pub fn parse(s: &str) -> Result<Threshold, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| format!("invalid percentage {s:?}"))?;
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("percentage {s:?} is not between 0% and 100%"));
            }
            return Ok(Threshold::Fraction(v / 100.0));
        }
        let q = crate::quantity::to_value(s).map_err(|e| e.to_string())?;
        if q < 0 {
            return Err(format!("threshold {s:?} is negative"));
        }
        Ok(Threshold::Quantity(q))
    }

    /// As written in a configuration: `100Mi` (canonical) or `10%`.
    pub fn text(&self) -> String {
        match *self {
            Threshold::Quantity(q) => crate::quantity::format_binary(q),
            Threshold::Fraction(f) => format!("{}%", (f * 100.0 * 1000.0).round() / 1000.0),
        }
    }

    /// The threshold in absolute units, against `capacity`.
    pub fn amount(&self, capacity: i64) -> i64 {
        match *self {
            Threshold::Quantity(q) => q,
            Threshold::Fraction(f) => (capacity.max(0) as f64 * f) as i64,
        }
    }

    /// The threshold as a fraction of `capacity` (capped to 1).
    pub fn fraction(&self, capacity: i64) -> f64 {
        match *self {
            Threshold::Fraction(f) => f,
            Threshold::Quantity(_) if capacity <= 0 => 0.0,
            Threshold::Quantity(q) => (q as f64 / capacity as f64).min(1.0),
        }
    }
}

/// Upstream's eviction signals (`pkg/kubelet/eviction/api`).
const EVICTION_SIGNALS: &[&str] = &[
    "memory.available",
    "allocatableMemory.available",
    "nodefs.available",
    "nodefs.inodesFree",
    "imagefs.available",
    "imagefs.inodesFree",
    "containerfs.available",
    "containerfs.inodesFree",
    "pid.available",
];

/// Upstream's default `evictionHard` (Linux).
pub const DEFAULT_EVICTION_HARD: &[(&str, &str)] =
    &[("memory.available", "100Mi"), ("nodefs.available", "10%"), ("nodefs.inodesFree", "5%"), ("imagefs.available", "15%"), ("imagefs.inodesFree", "5%")];

impl Config {
    /// The `memory.available` hard eviction threshold in bytes for a node with
    /// `memory_capacity` bytes (0 when there is none); allocatable memory excludes it.
    pub fn eviction_memory_bytes(&self, memory_capacity: i64) -> i64 {
        self.eviction_hard.get("memory.available").map(|t| t.amount(memory_capacity)).unwrap_or(0)
    }

    /// `kubeReserved` + `systemReserved` of one resource: millicores for `cpu`,
    /// plain units (bytes, PIDs) otherwise; 0 when neither reserves it.
    pub fn reserved(&self, resource: &str) -> i64 {
        [&self.kube_reserved, &self.system_reserved]
            .iter()
            .filter_map(|m| m.get(resource))
            .filter_map(|q| if resource == "cpu" { crate::quantity::to_milli(q).ok() } else { crate::quantity::to_value(q).ok() })
            .sum()
    }

    /// The `nodefs.available` hard eviction threshold as a fraction of the node's
    /// filesystem (`nodefs_capacity` bytes); allocatable ephemeral storage excludes it.
    pub fn eviction_nodefs_fraction(&self, nodefs_capacity: i64) -> f64 {
        self.eviction_hard.get("nodefs.available").map(|t| t.fraction(nodefs_capacity)).unwrap_or(0.0)
    }
}

/// Go's `time.Duration.String()`: `1h0m0s`, `5m0s`, `10s`, `500ms`, `0s`.
pub fn go_duration_string(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (h, m) = (ms / 3_600_000, (ms / 60_000) % 60);
    let secs = (ms % 60_000) as f64 / 1000.0;
    let s = if ms.is_multiple_of(1000) { format!("{}s", secs as u64) } else { format!("{secs}s") };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

impl Config {
    /// The effective configuration as a `KubeletConfiguration` (what `/configz` serves
    /// under `kubeletconfig`, as upstream does).
    #[allow(clippy::indexing_slicing)] // serde_json::Value indexing: writes go into an object built here, reads of a missing key give Null.
    pub fn to_kubelet_configuration(&self) -> serde_json::Value {
        use serde_json::json;
        let d = |d: Duration| go_duration_string(d);
        let threshold = |t: &Threshold| match t {
            Threshold::Quantity(q) => q.to_string(),
            Threshold::Fraction(f) => format!("{}%", (f * 100.0 * 1000.0).round() / 1000.0),
        };
        let mut v = json!({
            "kind": "KubeletConfiguration",
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "staticPodPath": self.pod_manifest_path,
            "syncFrequency": d(self.sync_frequency),
            "fileCheckFrequency": d(self.file_check_frequency),
            "streamingConnectionIdleTimeout": d(self.streaming_connection_idle_timeout),
            "address": self.address,
            "port": self.port,
            "healthzPort": self.healthz_port,
            "healthzBindAddress": self.healthz_bind_address,
            "rotateCertificates": self.rotate_certificates,
            "serverTLSBootstrap": self.server_tls_bootstrap,
            "tlsCertFile": self.tls_files.as_ref().map(|f| &f.0),
            "tlsPrivateKeyFile": self.tls_files.as_ref().map(|f| &f.1),
            "authentication": {
                "x509": {"clientCAFile": self.authentication.client_ca_file},
                "webhook": {"enabled": self.authentication.webhook_enabled, "cacheTTL": d(self.authentication.webhook_cache_ttl)},
                "anonymous": {"enabled": self.authentication.anonymous_enabled},
            },
            "authorization": {
                "mode": match self.authorization.mode { AuthorizationMode::Webhook => "Webhook", AuthorizationMode::AlwaysAllow => "AlwaysAllow" },
                "webhook": {"cacheAuthorizedTTL": d(self.authorization.webhook_cache_authorized_ttl), "cacheUnauthorizedTTL": d(self.authorization.webhook_cache_unauthorized_ttl)},
            },
            "clusterDomain": self.cluster_domain,
            "clusterDNS": self.cluster_dns,
            "nodeStatusUpdateFrequency": d(self.node_status_update_frequency),
            "nodeStatusReportFrequency": d(self.node_status_report_frequency),
            "nodeLeaseDurationSeconds": self.node_lease_duration_seconds,
            "imagePullProgressDeadline": d(self.image_pull_progress_deadline),
            "cgroupDriver": match self.cgroup_driver { CgroupDriver::Cgroupfs => "cgroupfs", CgroupDriver::Systemd => "systemd" },
            "maxPods": self.max_pods,
            "podPidsLimit": self.pod_pids_limit,
            "singleProcessOOMKill": self.single_process_oom_kill,
            "shutdownGracePeriodByPodPriority": self.shutdown_groups,
            "resolvConf": self.resolv_conf.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            "evictionHard": self.eviction_hard.iter().map(|(k, v)| (k.clone(), threshold(v))).collect::<std::collections::BTreeMap<_, _>>(),
            "kubeReserved": self.kube_reserved,
            "systemReserved": self.system_reserved,
            "containerLogMaxSize": self.container_log_max_size.to_string(),
            "containerLogMaxFiles": self.container_log_max_files,
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket.display()),
            "enforceNodeAllocatable": ["pods"],
            "serializeImagePulls": self.serialize_image_pulls,
            "maxParallelImagePulls": self.max_parallel_image_pulls,
        });
        v["allowedUnsafeSysctls"] = json!(self.allowed_unsafe_sysctls);
        v["seccompDefault"] = json!(self.seccomp_default);
        // Past json!'s recursion limit in one literal: the garbage collection and eviction settings.
        v["imageGCHighThresholdPercent"] = json!(self.image_gc_high_threshold_percent);
        v["imageGCLowThresholdPercent"] = json!(self.image_gc_low_threshold_percent);
        v["imageMinimumGCAge"] = json!(d(self.image_minimum_gc_age));
        v["imageMaximumGCAge"] = json!(d(self.image_maximum_gc_age));
        v["evictionSoft"] = json!(self.eviction_soft.iter().map(|(k, t)| (k.clone(), threshold(t))).collect::<std::collections::BTreeMap<_, _>>());
        v["evictionSoftGracePeriod"] = json!(self.eviction_soft_grace_period.iter().map(|(k, t)| (k.clone(), d(*t))).collect::<std::collections::BTreeMap<_, _>>());
        v["evictionPressureTransitionPeriod"] = json!(d(self.eviction_pressure_transition_period));
        v["evictionMaxPodGracePeriod"] = json!(self.eviction_max_pod_grace_period);
        v["kernelMemcgNotification"] = json!(self.kernel_memcg_notification);
        v["evictionMinimumReclaim"] = json!(self.eviction_minimum_reclaim.iter().map(|(k, t)| (k.clone(), threshold(t))).collect::<std::collections::BTreeMap<_, _>>());
        v
    }
}

/// `key=value:Effect` / `key:Effect` → Taint.
pub fn parse_taint(s: &str) -> Result<k8s_openapi::api::core::v1::Taint, ConfigError> {
    let err = || ConfigError::Taint(s.to_string());
    let (kv, effect) = s.rsplit_once(':').ok_or_else(err)?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(err());
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(err());
    }
    Ok(k8s_openapi::api::core::v1::Taint { key: key.into(), value, effect: effect.into(), time_added: None })
}

/// `k=v,k2=v2` (or `k<v,…` for eviction thresholds) → map, for the map-valued flags.
fn parse_map_flag(flag: &str, s: &str, sep: char) -> Result<BTreeMap<String, String>, ConfigError> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once(sep)
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| ConfigError::Invalid { field: flag.to_string(), value: kv.to_string(), message: format!("want key{sep}value") })
        })
        .collect()
}

/// Where a value came from, to name it in errors: the flag or the file's field.
fn source_name(flag_given: bool, flag: &str, field: &str) -> String {
    if flag_given {
        format!("--{flag}")
    } else {
        field.to_string()
    }
}

impl Config {
    /// Resolves flags (and the `--config` file, if any) into a config: node name from
    /// `--hostname-override` or the hostname (lowercased, like upstream), socket path
    /// from the endpoint URL. For settings both can give, an explicit flag wins over
    /// the file, and the file over upstream's default.
    pub fn from_args(a: &AgentArgs) -> Result<Self, ConfigError> {
        use crate::kubelet_config::{GoDuration, KubeletConfiguration};
        let file = match &a.config {
            Some(p) => KubeletConfiguration::load(p)?,
            None => KubeletConfiguration::default(),
        };
        let mut compat = crate::compat::report(a.unimplemented.given(), a.config.as_ref().map(|_| &file.document), &crate::compat::Host::detect());
        if a.version.as_deref().is_some_and(|v| v.starts_with('v')) {
            // Upstream runs and reports that version; rkubelet reports its own.
            compat.not_implemented.insert(0, "--version".into());
        }
        let dur = |d: Option<GoDuration>| d.and_then(GoDuration::non_zero);
        let non_zero = |n: Option<i32>| n.filter(|n| *n != 0);

        let node_name = match &a.hostname_override {
            Some(h) if !h.trim().is_empty() => h.trim().to_lowercase(),
            _ => nix::unistd::gethostname()
                .map_err(|e| ConfigError::NodeName(e.into()))?
                .to_string_lossy()
                .trim()
                .to_lowercase(),
        };
        if !is_dns_subdomain(&node_name) {
            return Err(ConfigError::InvalidNodeName(node_name));
        }
        let ep = a
            .container_runtime_endpoint
            .clone()
            .or_else(|| file.container_runtime_endpoint.clone().filter(|e| !e.is_empty()))
            .unwrap_or_else(|| DEFAULT_RUNTIME_ENDPOINT.to_string());
        let socket = ep
            .strip_prefix("unix://")
            .or_else(|| ep.starts_with('/').then_some(ep.as_str()))
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| ConfigError::Endpoint(ep.clone()))?;

        let (log_size_raw, log_size_name) = match (&a.container_log_max_size, &file.container_log_max_size) {
            (Some(v), _) => (v.clone(), "--container-log-max-size"),
            (None, Some(v)) => (v.clone(), "containerLogMaxSize"),
            (None, None) => ("10Mi".to_string(), "containerLogMaxSize"),
        };
        let container_log_max_size = crate::quantity::to_value(&log_size_raw)
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| ConfigError::Invalid { field: log_size_name.into(), value: log_size_raw.clone(), message: "want a positive quantity such as 10Mi".into() })? as u64;
        let container_log_max_files = a.container_log_max_files.or(file.container_log_max_files.map(|v| v.max(0) as u32)).unwrap_or(5);
        if container_log_max_files < 2 {
            return Err(ConfigError::Invalid { field: "containerLogMaxFiles".into(), value: container_log_max_files.to_string(), message: "must be at least 2".into() });
        }
        // Upstream's validation: only cgroup v2 can kill a whole container on OOM.
        if file.single_process_oom_kill == Some(false) && crate::cgroups::uses_v1() {
            return Err(ConfigError::Invalid { field: "singleProcessOOMKill".into(), value: "false".into(), message: "must not be explicitly set to false when using cgroup v1".into() });
        }
        let max_pods = match (a.max_pods, non_zero(file.max_pods)) {
            (Some(n), _) => n,
            (None, Some(n)) => u32::try_from(n).map_err(|_| ConfigError::Invalid { field: "maxPods".into(), value: n.to_string(), message: "must not be negative".into() })?,
            (None, None) => 110,
        };
        let lease = a.node_lease_duration_seconds.or(non_zero(file.node_lease_duration_seconds)).unwrap_or(40);
        if lease <= 0 {
            let field = source_name(a.node_lease_duration_seconds.is_some(), "node-lease-duration-seconds", "nodeLeaseDurationSeconds");
            return Err(ConfigError::Invalid { field, value: lease.to_string(), message: "must be greater than 0".into() });
        }
        // Upstream: the report frequency defaults to the update frequency when the file sets
        // only the latter, and to 5m otherwise.
        let file_update = dur(file.node_status_update_frequency);
        let node_status_update_frequency = a.node_status_update_frequency.or(file_update).unwrap_or(Duration::from_secs(10));
        let node_status_report_frequency = a
            .node_status_report_frequency
            .or(dur(file.node_status_report_frequency))
            .or(file_update)
            .unwrap_or(Duration::from_secs(300));

        let taints = if !a.register_with_taints.is_empty() {
            a.register_with_taints.iter().filter(|t| !t.is_empty()).map(|t| parse_taint(t)).collect::<Result<_, _>>()?
        } else {
            file.register_with_taints.clone().unwrap_or_default()
        };

        // Upstream refuses to start with a pattern that is invalid or not namespaced (NewAllowlist).
        let allowed_unsafe_sysctls: Vec<String> = if a.allowed_unsafe_sysctls.is_empty() {
            file.allowed_unsafe_sysctls.clone().unwrap_or_default()
        } else {
            a.allowed_unsafe_sysctls.clone()
        };
        crate::pod::sysctl::Allowlist::from_patterns(allowed_unsafe_sysctls.iter().cloned())?;

        let cluster_dns_given = !a.cluster_dns.is_empty();
        let cluster_dns = if cluster_dns_given { a.cluster_dns.clone() } else { file.cluster_dns.clone().unwrap_or_default() }
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim().parse::<IpAddr>().map_err(|_| ConfigError::Invalid {
                    field: source_name(cluster_dns_given, "cluster-dns", "clusterDNS"),
                    value: s.clone(),
                    message: "not an IP address".into(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;

        let driver = a.cgroup_driver.clone().or_else(|| file.cgroup_driver.clone().filter(|d| !d.is_empty())).unwrap_or_else(|| "cgroupfs".into());
        let cgroup_driver = match driver.as_str() {
            "cgroupfs" => CgroupDriver::Cgroupfs,
            "systemd" => CgroupDriver::Systemd,
            _ => {
                let field = source_name(a.cgroup_driver.is_some(), "cgroup-driver", "cgroupDriver");
                return Err(ConfigError::Invalid { field, value: driver, message: "want cgroupfs or systemd".into() });
            }
        };

        let fauth = file.authentication.clone().unwrap_or_default();
        let authentication = AuthenticationConfig {
            client_ca_file: a
                .client_ca_file
                .clone()
                .or_else(|| fauth.x509.as_ref().and_then(|x| x.client_ca_file.clone()).filter(|f| !f.is_empty()).map(PathBuf::from)),
            webhook_enabled: a.authentication_token_webhook.or(fauth.webhook.as_ref().and_then(|w| w.enabled)).unwrap_or(true),
            webhook_cache_ttl: a.authentication_token_webhook_cache_ttl.or(dur(fauth.webhook.as_ref().and_then(|w| w.cache_ttl))).unwrap_or(Duration::from_secs(120)),
            anonymous_enabled: a.anonymous_auth.or(fauth.anonymous.as_ref().and_then(|an| an.enabled)).unwrap_or(false),
        };
        let fauthz = file.authorization.clone().unwrap_or_default();
        let mode = a.authorization_mode.clone().or_else(|| fauthz.mode.clone().filter(|m| !m.is_empty())).unwrap_or_else(|| "Webhook".into());
        let authorization = AuthorizationConfig {
            mode: match mode.as_str() {
                "Webhook" => AuthorizationMode::Webhook,
                "AlwaysAllow" => AuthorizationMode::AlwaysAllow,
                _ => {
                    let field = source_name(a.authorization_mode.is_some(), "authorization-mode", "authorization.mode");
                    return Err(ConfigError::Invalid { field, value: mode, message: "want AlwaysAllow or Webhook".into() });
                }
            },
            webhook_cache_authorized_ttl: a
                .authorization_webhook_cache_authorized_ttl
                .or(dur(fauthz.webhook.as_ref().and_then(|w| w.cache_authorized_ttl)))
                .unwrap_or(Duration::from_secs(300)),
            webhook_cache_unauthorized_ttl: a
                .authorization_webhook_cache_unauthorized_ttl
                .or(dur(fauthz.webhook.as_ref().and_then(|w| w.cache_unauthorized_ttl)))
                .unwrap_or(Duration::from_secs(30)),
        };

        let tls_cipher_suites = a.tls_cipher_suites.clone().or_else(|| file.tls_cipher_suites.clone()).unwrap_or_default();
        let tls_min_version = a.tls_min_version.clone().or_else(|| file.tls_min_version.clone()).filter(|v| !v.is_empty());
        let tls = crate::server::tls::settings(&tls_cipher_suites, tls_min_version.as_deref()).map_err(|e| match e {
            crate::server::tls::TlsError::Version(ref v) => {
                ConfigError::Invalid { field: source_name(a.tls_min_version.is_some(), "tls-min-version", "tlsMinVersion"), value: v.clone(), message: e.to_string() }
            }
            _ => ConfigError::Invalid { field: source_name(a.tls_cipher_suites.is_some(), "tls-cipher-suites", "tlsCipherSuites"), value: tls_cipher_suites.join(","), message: e.to_string() },
        })?;
        let path_of = |flag: &Option<PathBuf>, field: &Option<String>| flag.clone().or_else(|| field.clone().filter(|f| !f.is_empty()).map(PathBuf::from));
        let tls_files = match (path_of(&a.tls_cert_file, &file.tls_cert_file), path_of(&a.tls_private_key_file, &file.tls_private_key_file)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (c, k) => {
                let given = c.or(k).unwrap_or_default();
                return Err(ConfigError::Invalid {
                    field: "tlsCertFile/tlsPrivateKeyFile".into(),
                    value: given.display().to_string(),
                    message: "the certificate and the private key must be given together".into(),
                });
            }
        };

        // evictionHard: the flag replaces the file's map; either replaces the defaults
        // unless mergeDefaultEvictionSettings is set.
        let (eviction_raw, eviction_field) = match (&a.eviction_hard, &file.eviction_hard) {
            (Some(f), _) => (Some(parse_map_flag("--eviction-hard", f, '<')?), "--eviction-hard"),
            (None, Some(m)) => (Some(m.clone()), "evictionHard"),
            (None, None) => (None, "evictionHard"),
        };
        let mut eviction_src: BTreeMap<String, String> = BTreeMap::new();
        if eviction_raw.is_none() || file.merge_default_eviction_settings == Some(true) {
            eviction_src.extend(DEFAULT_EVICTION_HARD.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        }
        eviction_src.extend(eviction_raw.unwrap_or_default());
        let mut eviction_hard = BTreeMap::new();
        for (signal, v) in eviction_src {
            let field = format!("{eviction_field}[{signal}]");
            if !EVICTION_SIGNALS.contains(&signal.as_str()) {
                return Err(ConfigError::Invalid { field, value: v, message: format!("unsupported eviction signal; want one of {}", EVICTION_SIGNALS.join(", ")) });
            }
            let t = Threshold::parse(&v).map_err(|message| ConfigError::Invalid { field, value: v.clone(), message })?;
            eviction_hard.insert(signal, t);
        }
        // evictionSoft, its grace periods and the minimum reclaims (upstream's
        // ParseThresholdConfig): known signals, a grace period for every soft one.
        let eviction_map = |flag: &Option<String>, flag_name: &str, sep: char, file_map: &Option<BTreeMap<String, String>>, field: &str| -> Result<(BTreeMap<String, String>, String), ConfigError> {
            let (m, name) = match flag {
                Some(f) => (parse_map_flag(flag_name, f, sep)?, flag_name.to_string()),
                None => (file_map.clone().unwrap_or_default(), field.to_string()),
            };
            for (k, v) in &m {
                if !EVICTION_SIGNALS.contains(&k.as_str()) {
                    return Err(ConfigError::Invalid { field: format!("{name}[{k}]"), value: v.clone(), message: format!("unsupported eviction signal; want one of {}", EVICTION_SIGNALS.join(", ")) });
                }
            }
            Ok((m, name))
        };
        let (soft_raw, soft_name) = eviction_map(&a.eviction_soft, "--eviction-soft", '<', &file.eviction_soft, "evictionSoft")?;
        let (grace_raw, grace_name) = eviction_map(&a.eviction_soft_grace_period, "--eviction-soft-grace-period", '=', &file.eviction_soft_grace_period, "evictionSoftGracePeriod")?;
        let (reclaim_raw, reclaim_name) = eviction_map(&a.eviction_minimum_reclaim, "--eviction-minimum-reclaim", '=', &file.eviction_minimum_reclaim, "evictionMinimumReclaim")?;
        let mut eviction_soft = BTreeMap::new();
        for (k, v) in soft_raw {
            let field = format!("{soft_name}[{k}]");
            let t = Threshold::parse(&v).map_err(|message| ConfigError::Invalid { field: field.clone(), value: v.clone(), message })?;
            if !grace_raw.contains_key(&k) {
                return Err(ConfigError::Invalid { field, value: v, message: format!("grace period must be specified for the soft eviction threshold {k}") });
            }
            eviction_soft.insert(k, t);
        }
        let mut eviction_soft_grace_period = BTreeMap::new();
        for (k, v) in grace_raw {
            let (neg, d) = crate::compat::parse_go_duration(&v).map_err(|message| ConfigError::Invalid { field: format!("{grace_name}[{k}]"), value: v.clone(), message })?;
            if neg {
                return Err(ConfigError::Invalid { field: format!("{grace_name}[{k}]"), value: v, message: format!("invalid eviction grace period specified: {k}, must be a positive value") });
            }
            eviction_soft_grace_period.insert(k, d);
        }
        let mut eviction_minimum_reclaim = BTreeMap::new();
        for (k, v) in reclaim_raw {
            let t = Threshold::parse(&v).map_err(|message| ConfigError::Invalid { field: format!("{reclaim_name}[{k}]"), value: v.clone(), message })?;
            if t == Threshold::Fraction(0.0) {
                return Err(ConfigError::Invalid { field: format!("{reclaim_name}[{k}]"), value: v, message: format!("eviction percentage minimum reclaim {k} must be positive") });
            }
            eviction_minimum_reclaim.insert(k, t);
        }
        // Image garbage collection, checked as upstream's ValidateKubeletConfiguration.
        let image_gc_high = a.image_gc_high_threshold.or(file.image_gc_high_threshold_percent).unwrap_or(85);
        let image_gc_low = a.image_gc_low_threshold.or(file.image_gc_low_threshold_percent).unwrap_or(80);
        for (field, v) in [("imageGCHighThresholdPercent", image_gc_high), ("imageGCLowThresholdPercent", image_gc_low)] {
            if !(0..=100).contains(&v) {
                return Err(ConfigError::Invalid { field: field.into(), value: v.to_string(), message: format!("{field} ({v}) must be between 0 and 100, inclusive") });
            }
        }
        if image_gc_low > image_gc_high {
            return Err(ConfigError::Invalid {
                field: "imageGCLowThresholdPercent".into(),
                value: image_gc_low.to_string(),
                message: format!("imageGCLowThresholdPercent ({image_gc_low}) must be less than imageGCHighThresholdPercent ({image_gc_high})"),
            });
        }
        let image_minimum_gc_age = a.minimum_image_ttl_duration.or(dur(file.image_minimum_gc_age)).unwrap_or(Duration::from_secs(120));
        let image_maximum_gc_age = file.image_maximum_gc_age.map(|d| d.0).unwrap_or_default();
        if !image_maximum_gc_age.is_zero() && image_maximum_gc_age <= image_minimum_gc_age {
            return Err(ConfigError::Invalid {
                field: "imageMaximumGCAge".into(),
                value: go_duration_string(image_maximum_gc_age),
                message: format!("imageMaximumGCAge {} must be greater than imageMinimumGCAge {}", go_duration_string(image_maximum_gc_age), go_duration_string(image_minimum_gc_age)),
            });
        }
        let reserved = |flag: &Option<String>, flag_name: &str, file_map: &Option<BTreeMap<String, String>>, field: &str| -> Result<BTreeMap<String, String>, ConfigError> {
            let (m, name) = match flag {
                Some(f) => (parse_map_flag(flag_name, f, '=')?, flag_name.to_string()),
                None => (file_map.clone().unwrap_or_default(), field.to_string()),
            };
            for (k, v) in &m {
                crate::quantity::to_value(v).map_err(|e| ConfigError::Invalid { field: format!("{name}[{k}]"), value: v.clone(), message: e.to_string() })?;
            }
            Ok(m)
        };
        let kube_reserved = reserved(&a.kube_reserved, "--kube-reserved", &file.kube_reserved, "kubeReserved")?;
        let system_reserved = reserved(&a.system_reserved, "--system-reserved", &file.system_reserved, "systemReserved")?;

        if a.bootstrap_kubeconfig.is_some() && a.kubeconfig.is_none() {
            return Err(ConfigError::BootstrapWithoutKubeconfig);
        }
        // Upstream: v1beta1 defaults (serializeImagePulls follows maxParallelImagePulls) and validation.
        let max_parallel = a.max_parallel_image_pulls.or(file.max_parallel_image_pulls);
        let serialize_image_pulls = a.serialize_image_pulls.or(file.serialize_image_pulls).unwrap_or(max_parallel.is_none_or(|n| n < 2));
        let max_parallel_image_pulls = match max_parallel {
            Some(n) if n < 1 => {
                return Err(ConfigError::Invalid { field: "maxParallelImagePulls".into(), value: n.to_string(), message: "must be a positive number".into() })
            }
            Some(n) if n > 1 && serialize_image_pulls => {
                return Err(ConfigError::Invalid {
                    field: "maxParallelImagePulls".into(),
                    value: n.to_string(),
                    message: "cannot be larger than 1 unless SerializeImagePulls (--serialize-image-pulls) is set to false".into(),
                })
            }
            n => n.map(|n| n as u32),
        };
        // Upstream registers the plugins when either flag is given (and fails when the other is missing).
        let credential_providers = match (&a.image_credential_provider_config, &a.image_credential_provider_bin_dir) {
            (None, None) => None,
            (config, bin_dir) => Some(std::sync::Arc::new(crate::runtime::image::CredentialProviders::load(
                config.as_deref().unwrap_or(std::path::Path::new("")),
                bin_dir.as_deref().unwrap_or(std::path::Path::new("")),
            )?)),
        };
        let registry_config_path = match &a.registry_config_path {
            Some(p) if p.is_empty() => None,
            Some(p) => Some(PathBuf::from(p)),
            None => Some(
                std::fs::read_to_string("/etc/containerd/config.toml")
                    .ok()
                    .and_then(|t| crate::runtime::image::containerd_config_path(&t))
                    .unwrap_or_else(|| PathBuf::from(crate::runtime::image::DEFAULT_HOSTS_DIR)),
            ),
        };
        let pod_manifest_path = a.pod_manifest_path.clone().or_else(|| file.static_pod_path.clone().filter(|p| !p.is_empty()).map(PathBuf::from));
        Ok(Config {
            kill_at_once: false,
            node_name,
            pod_manifest_path,
            root_dir: a.root_dir.clone(),
            containerd_socket: PathBuf::from(socket),
            pause_image: a.pod_infra_container_image.clone(),
            cni_bin_dirs: a.cni_bin_dir.clone(),
            cni_conf_dir: a.cni_conf_dir.clone(),
            cni_cache_dir: a.cni_cache_dir.clone().unwrap_or_else(|| a.root_dir.join("cni-cache")),
            namespace: a.runtime_namespace.clone(),
            snapshotter: a.snapshotter.clone(),
            pod_logs_dir: a
                .pod_logs_dir
                .clone()
                .or_else(|| file.pod_logs_dir.clone().filter(|p| !p.is_empty()).map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
            file_check_frequency: a.file_check_frequency.or(dur(file.file_check_frequency)).unwrap_or(Duration::from_secs(20)),
            sync_frequency: a.sync_frequency.or(dur(file.sync_frequency)).unwrap_or(Duration::from_secs(60)),
            streaming_connection_idle_timeout: a.streaming_connection_idle_timeout.or(dur(file.streaming_connection_idle_timeout)).unwrap_or(Duration::from_secs(4 * 3600)),
            kubeconfig: a.kubeconfig.clone(),
            node_ip: match &a.node_ip {
                Some(ip) => match ip.parse::<std::net::IpAddr>() {
                    Ok(addr) if !addr.is_loopback() && !addr.is_unspecified() => Some(ip.clone()),
                    _ => return Err(ConfigError::NodeIp(ip.clone())),
                },
                None => None,
            },
            node_labels: a
                .node_labels
                .iter()
                .filter(|l| !l.is_empty())
                .map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| ConfigError::NodeLabel(l.clone())))
                .collect::<Result<_, _>>()?,
            taints,
            max_pods,
            container_log_max_size,
            container_log_max_files,
            node_status_update_frequency,
            node_status_report_frequency,
            node_lease_duration_seconds: lease,
            config_file: a.config.clone(),
            bootstrap_kubeconfig: a.bootstrap_kubeconfig.clone(),
            cert_dir: a.cert_dir.clone().unwrap_or_else(|| a.root_dir.join("pki")),
            rotate_certificates: a.rotate_certificates.or(file.rotate_certificates).unwrap_or(false),
            server_tls_bootstrap: a.rotate_server_certificates.or(file.server_tls_bootstrap).unwrap_or(false),
            tls_files,
            tls,
            tls_bootstrap_timeout: a.tls_bootstrap_timeout,
            cluster_dns,
            cluster_domain: a.cluster_domain.clone().or_else(|| file.cluster_domain.clone()).filter(|d| !d.is_empty()),
            cgroup_driver,
            authentication,
            authorization,
            pod_pids_limit: a.pod_max_pids.or(file.pod_pids_limit).filter(|n| *n >= 0).unwrap_or(-1),
            single_process_oom_kill: file.single_process_oom_kill.unwrap_or_else(crate::cgroups::uses_v1),
            shutdown_groups: crate::shutdown::groups(
                file.shutdown_grace_period.map(|d| d.0).unwrap_or_default(),
                file.shutdown_grace_period_critical_pods.map(|d| d.0).unwrap_or_default(),
                file.shutdown_grace_period_by_pod_priority.clone().unwrap_or_default(),
            ),
            eviction_hard,
            image_gc_high_threshold_percent: image_gc_high,
            image_gc_low_threshold_percent: image_gc_low,
            image_minimum_gc_age,
            image_maximum_gc_age,
            kernel_memcg_notification: a.kernel_memcg_notification.or(file.kernel_memcg_notification).unwrap_or(true),
            eviction_soft,
            eviction_soft_grace_period,
            eviction_pressure_transition_period: a.eviction_pressure_transition_period.or(dur(file.eviction_pressure_transition_period)).unwrap_or(Duration::from_secs(300)),
            eviction_max_pod_grace_period: a.eviction_max_pod_grace_period.or(file.eviction_max_pod_grace_period.map(i64::from)).unwrap_or(0),
            eviction_minimum_reclaim,
            kube_reserved,
            system_reserved,
            image_pull_progress_deadline: a.image_pull_progress_deadline.or(dur(file.image_pull_progress_deadline)).unwrap_or(Duration::from_secs(60)),
            healthz_port: a.healthz_port.or(file.healthz_port).unwrap_or(10248),
            healthz_bind_address: a.healthz_bind_address.clone().or_else(|| file.healthz_bind_address.clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "127.0.0.1".into()),
            port: a.port.or(non_zero(file.port)).unwrap_or(10250),
            address: a.address.clone().or_else(|| file.address.clone()).filter(|s| !s.is_empty()).unwrap_or_else(|| "0.0.0.0".into()),
            runtime_handlers: {
                let mut m: std::collections::BTreeMap<String, String> = [(String::new(), DEFAULT_RUNTIME_TYPE.to_string()), ("runc".to_string(), DEFAULT_RUNTIME_TYPE.to_string())].into();
                m.extend(a.runtime_handlers.iter().cloned());
                m
            },
            compat,
            resolv_conf: match a.resolv_conf.clone().or_else(|| file.resolv_conf.clone()) {
                None => Some(crate::pod::dns::default_resolv_conf(std::path::Path::new("/etc/resolv.conf"), std::path::Path::new(crate::pod::dns::RESOLVED_UPSTREAM))),
                Some(s) if s.is_empty() => None,
                Some(s) => Some(PathBuf::from(s)),
            },
            serialize_image_pulls,
            max_parallel_image_pulls,
            allowed_unsafe_sysctls,
            seccomp_default: a.seccomp_default.or(file.seccomp_default).unwrap_or(false),
            credential_providers,
            registry_config_path,
        })
    }
}

/// The containerd runtime of the default handler (and of `runc`).
pub const DEFAULT_RUNTIME_TYPE: &str = "io.containerd.runc.v2";

/// containerd's default socket, upstream's default `containerRuntimeEndpoint`.
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";

/// RFC 1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253 characters,
/// each label starting and ending alphanumeric.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// RFC 1123 label: lowercase alphanumerics and '-', at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_print_like_go() {
        assert_eq!(go_duration_string(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration_string(Duration::from_secs(300)), "5m0s");
        assert_eq!(go_duration_string(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration_string(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration_string(Duration::from_millis(200)), "200ms");
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3y").is_err());
        assert_eq!(parse_duration("2562047h47m16.854775807s").unwrap(), MAX_GO_DURATION);
    }

    /// Found by the kubelet_config fuzz target: a huge value in a config file
    /// (`shutdownGracePeriodCriticalPods: 1777…70s`) panicked in
    /// Duration::from_secs_f64, and a sum past Duration's range in `+=`.
    #[test]
    fn durations_beyond_gos_range_are_errors_not_panics() {
        assert!(parse_duration(&format!("{}0s", "7".repeat(120))).is_err());
        assert!(parse_duration("2562048h").is_err());
        assert!(parse_duration("2562047h47m17s").is_err(), "one second past Go's maximum");
        assert!(parse_duration(&"9999999999h".repeat(3)).is_err());
        let doc = format!("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nshutdownGracePeriodCriticalPods: {}0s\n", "7".repeat(120));
        let e = crate::kubelet_config::KubeletConfiguration::parse(&doc, std::path::Path::new("/etc/kubelet.yaml")).unwrap_err().to_string();
        assert!(e.contains("shutdownGracePeriodCriticalPods") && e.contains("invalid duration"), "{e}");
    }

    #[test]
    fn version_line_matches_kubeadm_preflight_pattern() {
        let v = version_line();
        assert!(v.starts_with("Kubernetes v1."), "{v}");
        assert!(!v.contains(' ') || v.split(' ').count() == 2);
    }

    #[test]
    fn endpoint_must_be_a_unix_socket() {
        let mut a = Cli::parse_from(["rkubelet", "--hostname-override", "n1"]).agent;
        assert_eq!(Config::from_args(&a).unwrap().containerd_socket, PathBuf::from("/run/containerd/containerd.sock"));
        a.container_runtime_endpoint = Some("tcp://1.2.3.4:1".into());
        assert!(matches!(Config::from_args(&a), Err(ConfigError::Endpoint(_))));
    }

    #[test]
    fn node_flags_parse_like_upstream() {
        let a = Cli::parse_from([
            "rkubelet", "--hostname-override", "n1", "--node-labels", "a=1,b=2", "--register-with-taints", "dedicated=edge:NoSchedule,gpu:NoExecute", "--node-ip", "192.0.2.10",
        ])
        .agent;
        let c = Config::from_args(&a).unwrap();
        assert_eq!(c.node_labels.get("b").map(String::as_str), Some("2"));
        assert_eq!(c.taints[0].value.as_deref(), Some("edge"));
        assert_eq!(c.taints[1].effect, "NoExecute");
        assert!(matches!(Config::from_args(&Cli::parse_from(["rkubelet", "--hostname-override", "n", "--node-ip", "127.0.0.1"]).agent), Err(ConfigError::NodeIp(_))));
        assert!(matches!(Config::from_args(&Cli::parse_from(["rkubelet", "--hostname-override", "n", "--register-with-taints", "x:Bad"]).agent), Err(ConfigError::Taint(_))));
    }

    #[test]
    fn node_names_are_lowercased_and_validated() {
        let a = Cli::parse_from(["rkubelet", "--hostname-override", "Node-A"]).agent;
        assert_eq!(Config::from_args(&a).unwrap().node_name, "node-a");
        let a = Cli::parse_from(["rkubelet", "--hostname-override", "bad_name"]).agent;
        assert!(matches!(Config::from_args(&a), Err(ConfigError::InvalidNodeName(_))));
    }

    fn write_config(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rkubelet-config-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("config.yaml");
        std::fs::write(&p, body).unwrap();
        p
    }

    fn with_file(name: &str, body: &str, extra: &[&str]) -> Result<Config, ConfigError> {
        let p = write_config(name, body);
        let mut args = vec!["rkubelet", "--hostname-override", "n1", "--config", p.to_str().unwrap()];
        args.extend_from_slice(extra);
        Config::from_args(&Cli::parse_from(args).agent)
    }

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    #[test]
    fn seccomp_default_and_allowed_unsafe_sysctls_are_read_and_checked() {
        let d = with_file("sec0", HEAD, &[]).unwrap();
        assert!(!d.seccomp_default && d.allowed_unsafe_sysctls.is_empty());
        let c = with_file("sec1", &format!("{HEAD}seccompDefault: true\nallowedUnsafeSysctls: [kernel.msg*, net.core.somaxconn]\n"), &[]).unwrap();
        assert!(c.seccomp_default);
        assert_eq!(c.allowed_unsafe_sysctls, ["kernel.msg*", "net.core.somaxconn"]);
        assert!(c.compat.not_implemented.is_empty(), "{:?}", c.compat);
        let f = with_file("sec2", &format!("{HEAD}seccompDefault: true\nallowedUnsafeSysctls: [kernel.msg*]\n"), &["--seccomp-default=false", "--allowed-unsafe-sysctls=fs.mqueue.*,kernel.sem"]).unwrap();
        assert!(!f.seccomp_default, "the flag wins");
        assert_eq!(f.allowed_unsafe_sysctls, ["fs.mqueue.*", "kernel.sem"]);
        assert!(with_file("sec3", HEAD, &["--seccomp-default"]).unwrap().seccomp_default);
        let e = with_file("sec4", &format!("{HEAD}allowedUnsafeSysctls: [kernel.sched_*]\n"), &[]).unwrap_err().to_string();
        assert_eq!(e, r#"the sysctls "kernel.sched_*" are not known to be namespaced"#);
        let e = with_file("sec5", HEAD, &["--allowed-unsafe-sysctls=*"]).unwrap_err().to_string();
        assert_eq!(e, r#"the sysctls "*" are not known to be namespaced"#, "upstream refuses a bare *");
        let v = c.to_kubelet_configuration();
        assert_eq!((v["seccompDefault"].as_bool(), v["allowedUnsafeSysctls"][0].as_str()), (Some(true), Some("kernel.msg*")));
    }

    #[test]
    fn upstream_defaults_apply_without_file_or_flags() {
        let c = Config::from_args(&Cli::parse_from(["rkubelet", "--hostname-override", "n1", "--root-dir", "/r"]).agent).unwrap();
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (Duration::from_secs(10), Duration::from_secs(300)));
        assert_eq!(c.node_lease_duration_seconds, 40);
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(c.cert_dir, PathBuf::from("/r/pki"));
        assert!(!c.rotate_certificates && !c.server_tls_bootstrap);
        assert_eq!(c.tls_bootstrap_timeout, Duration::from_secs(3600));
        assert!(c.authentication.webhook_enabled && !c.authentication.anonymous_enabled);
        assert_eq!(c.authorization.mode, AuthorizationMode::Webhook);
        assert_eq!((c.port, c.healthz_port, c.healthz_bind_address.as_str(), c.address.as_str()), (10250, 10248, "127.0.0.1", "0.0.0.0"));
        assert_eq!(c.pod_pids_limit, -1);
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/etc/resolv.conf")));
        assert_eq!(c.eviction_hard.len(), 5);
        assert_eq!(c.eviction_memory_bytes(1 << 30), 100 << 20);
        assert!((c.eviction_nodefs_fraction(1000) - 0.10).abs() < 1e-9);
        assert_eq!(c.pod_logs_dir, PathBuf::from("/var/log/pods"));
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let body = format!(
            "{HEAD}maxPods: 50\nsyncFrequency: 30s\nnodeStatusUpdateFrequency: 4s\nnodeLeaseDurationSeconds: 12\nstaticPodPath: /file/manifests\ncontainerRuntimeEndpoint: unix:///file.sock\nclusterDNS: [10.0.0.10]\nrotateCertificates: true\ncgroupDriver: systemd\nevictionHard: {{memory.available: 200Mi}}\n"
        );
        // File only: its values, and the report frequency follows the update frequency.
        let c = with_file("prec1", &body, &[]).unwrap();
        assert_eq!(c.max_pods, 50);
        assert_eq!(c.sync_frequency, Duration::from_secs(30));
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (Duration::from_secs(4), Duration::from_secs(4)));
        assert_eq!(c.node_lease_duration_seconds, 12);
        assert_eq!(c.pod_manifest_path, Some(PathBuf::from("/file/manifests")));
        assert_eq!(c.containerd_socket, PathBuf::from("/file.sock"));
        assert_eq!(c.cluster_dns, vec!["10.0.0.10".parse::<IpAddr>().unwrap()]);
        assert!(c.rotate_certificates);
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        // evictionHard replaces the defaults: only memory.available is left.
        assert_eq!(c.eviction_memory_bytes(1 << 30), 200 << 20);
        assert_eq!(c.eviction_nodefs_fraction(1000), 0.0);
        // Flags given explicitly win.
        let c = with_file(
            "prec2",
            &body,
            &[
                "--max-pods", "7", "--sync-frequency", "5s", "--node-lease-duration-seconds", "9", "--pod-manifest-path", "/flag/m",
                "--container-runtime-endpoint", "unix:///flag.sock", "--cluster-dns", "10.1.0.10,10.1.0.11", "--rotate-certificates=false",
                "--cgroup-driver", "cgroupfs", "--eviction-hard", "memory.available<1Gi,nodefs.available<20%",
            ],
        )
        .unwrap();
        assert_eq!(c.max_pods, 7);
        assert_eq!(c.sync_frequency, Duration::from_secs(5));
        assert_eq!(c.node_status_update_frequency, Duration::from_secs(4), "not given as a flag: the file's");
        assert_eq!(c.node_lease_duration_seconds, 9);
        assert_eq!(c.pod_manifest_path, Some(PathBuf::from("/flag/m")));
        assert_eq!(c.containerd_socket, PathBuf::from("/flag.sock"));
        assert_eq!(c.cluster_dns.len(), 2);
        assert!(!c.rotate_certificates);
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(c.eviction_memory_bytes(4 << 30), 1 << 30);
        assert!((c.eviction_nodefs_fraction(1000) - 0.20).abs() < 1e-9);
        // A bare boolean flag means true.
        let c = with_file("prec3", HEAD, &["--rotate-certificates"]).unwrap();
        assert!(c.rotate_certificates);
    }

    #[test]
    fn zero_values_in_the_file_mean_default_and_unknown_fields_are_ignored() {
        let c = with_file(
            "zero",
            &format!("{HEAD}maxPods: 0\nsyncFrequency: 0s\nnodeStatusUpdateFrequency: 0s\nnodeStatusReportFrequency: 0s\nfailCgroupV1: false\nsomethingNew: {{a: [1, 2]}}\nlogging: {{verbosity: 0}}\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (Duration::from_secs(10), Duration::from_secs(300)));
    }

    #[test]
    fn shutdown_periods_and_the_oom_kill_scope_come_from_the_file() {
        let c = with_file("shutdown", &format!("{HEAD}shutdownGracePeriod: 30s\nshutdownGracePeriodCriticalPods: 10s\nsingleProcessOOMKill: true\n"), &[]).unwrap();
        let secs: Vec<(i32, i64)> = c.shutdown_groups.iter().map(|g| (g.priority, g.shutdown_grace_period_seconds)).collect();
        assert_eq!(secs, vec![(0, 20), (crate::shutdown::SYSTEM_CRITICAL_PRIORITY, 10)]);
        assert!(c.single_process_oom_kill);
        let c = with_file("noshutdown", HEAD, &[]).unwrap();
        assert!(c.shutdown_groups.is_empty(), "no period: shutdown is immediate");
        assert_eq!(c.single_process_oom_kill, crate::cgroups::uses_v1(), "upstream's default: group kills on v2");
        let r = with_file("oomv1", &format!("{HEAD}singleProcessOOMKill: false\n"), &[]);
        if crate::cgroups::uses_v1() {
            assert!(r.unwrap_err().to_string().contains("must not be explicitly set to false when using cgroup v1"));
        } else {
            assert!(!r.unwrap().single_process_oom_kill);
        }
    }

    #[test]
    fn wrong_types_and_values_are_errors_naming_the_field() {
        let e = with_file("bad1", &format!("{HEAD}maxPods: many\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("maxPods"), "{e}");
        let e = with_file("bad2", &format!("{HEAD}rotateCertificates: sometimes\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("rotateCertificates"), "{e}");
        let e = with_file("bad3", &format!("{HEAD}evictionHard:\n  memory.available: lots\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("evictionHard[memory.available]"), "{e}");
        let e = with_file("bad4", &format!("{HEAD}clusterDNS: [dns.example]\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("clusterDNS") && e.contains("dns.example"), "{e}");
        let e = with_file("bad5", &format!("{HEAD}cgroupDriver: cgroupv3\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("cgroupDriver"), "{e}");
        let e = with_file("bad6", &format!("{HEAD}kubeReserved: {{memory: huge}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("kubeReserved[memory]"), "{e}");
        let e = with_file("bad7", &format!("{HEAD}authorization: {{mode: Maybe}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("authorization.mode"), "{e}");
        let e = with_file("bad8", &format!("{HEAD}evictionHard: {{disk.available: 1Gi}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("evictionHard[disk.available]") && e.contains("unsupported eviction signal"), "{e}");
        let e = Config::from_args(&Cli::parse_from(["rkubelet", "--hostname-override", "n", "--config", "/nonexistent/config.yaml"]).agent).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/config.yaml"), "{e}");
        assert!(matches!(
            Config::from_args(&Cli::parse_from(["rkubelet", "--hostname-override", "n", "--bootstrap-kubeconfig", "/b"]).agent),
            Err(ConfigError::BootstrapWithoutKubeconfig)
        ));
    }

    #[test]
    fn the_kubeadm_1_36_config_parses_with_its_values() {
        let body = include_str!("../tests/data/kubeadm-1.36/config.yaml");
        // Repeated flags keep the last value, as with Go's flag package.
        let c = with_file("kubeadm", body, &["--hostname-override=n2"]).unwrap();
        assert_eq!(c.node_name, "n2");
        assert_eq!(c.cgroup_driver, CgroupDriver::Cgroupfs);
        assert_eq!(c.cluster_dns, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.cluster_domain.as_deref(), Some("cluster.local"));
        assert_eq!(c.pod_manifest_path, Some(PathBuf::from("/etc/kubernetes/manifests")));
        assert_eq!(c.containerd_socket, PathBuf::from("/var/run/containerd/containerd.sock"));
        assert!(c.rotate_certificates);
        assert!(!c.server_tls_bootstrap);
        assert_eq!(c.authentication.client_ca_file, Some(PathBuf::from("/etc/kubernetes/pki/ca.crt")));
        assert!(c.authentication.webhook_enabled && !c.authentication.anonymous_enabled);
        assert_eq!(c.authentication.webhook_cache_ttl, Duration::from_secs(120), "0s means the default");
        assert_eq!(c.authorization.mode, AuthorizationMode::Webhook);
        assert_eq!((c.healthz_port, c.healthz_bind_address.as_str()), (10248, "127.0.0.1"));
        // kubeadm leaves the frequencies at 0s: upstream's defaults.
        assert_eq!(c.sync_frequency, Duration::from_secs(60));
        assert_eq!(c.file_check_frequency, Duration::from_secs(20));
        assert_eq!((c.node_status_update_frequency, c.node_status_report_frequency), (Duration::from_secs(10), Duration::from_secs(300)));
        assert_eq!(c.node_lease_duration_seconds, 40);
        assert_eq!(c.max_pods, 110);
        assert_eq!(c.eviction_memory_bytes(1 << 30), 100 << 20);
        // Every field kubeadm writes is an upstream v1beta1 field, and its zero values
        // (failCgroupV1: false, logging, crashLoopBackOff: {}, ...) are what rkubelet does.
        let kc = crate::kubelet_config::KubeletConfiguration::parse(body, std::path::Path::new("config.yaml")).unwrap();
        assert!(kc.unknown_fields().is_empty(), "{:?}", kc.unknown_fields());
        assert_eq!(c.compat, crate::compat::Report::default());
    }

    #[test]
    fn kubeadm_style_flags_are_accepted() {
        let env = include_str!("../tests/data/kubeadm-1.36/kubeadm-flags.env");
        let args = env.trim().strip_prefix("KUBELET_KUBEADM_ARGS=").unwrap().trim_matches('"').replace("<node>", "node-1");
        let mut argv = vec!["rkubelet".to_string()];
        argv.extend(args.split_whitespace().map(String::from));
        let c = Config::from_args(&Cli::parse_from(&argv).agent).unwrap();
        assert_eq!(c.node_name, "node-1");
        // Upstream flags that distributions pass, rkubelet's values or not.
        let a = Cli::parse_from([
            "rkubelet", "--hostname-override=n1", "--fail-swap-on=false", "--cgroups-per-qos", "--feature-gates=A=true,B=false", "--read-only-port", "0",
            "--pod-infra-container-image=registry.k8s.io/pause:3.10", "--node-ip=192.0.2.7", "--register-with-taints=node-role.kubernetes.io/control-plane:NoSchedule",
            "--resolv-conf=/run/systemd/resolve/resolv.conf", "--cgroup-driver=systemd",
        ])
        .agent;
        let given = a.unimplemented.given();
        for (flag, value) in [("fail-swap-on", "false"), ("cgroups-per-qos", "true"), ("read-only-port", "0"), ("feature-gates", "A=true,B=false")] {
            assert!(given.iter().any(|(f, v)| *f == flag && v == value), "{flag}={value} in {given:?}");
        }
        let c = Config::from_args(&a).unwrap();
        assert_eq!(c.taints[0].key, "node-role.kubernetes.io/control-plane");
        assert_eq!(c.resolv_conf, Some(PathBuf::from("/run/systemd/resolve/resolv.conf")));
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
        assert_eq!(c.compat.not_implemented, vec!["--feature-gates"], "the others are at what rkubelet does");
    }

    /// A valid value of each kind of flag, and of the implemented flags rkubelet checks further.
    fn sample(flag: &str, kind: crate::compat::Kind) -> &'static str {
        use crate::compat::Kind::*;
        match flag {
            "hostname-override" => "n2",
            "node-ip" => "192.0.2.1",
            "address" | "healthz-bind-address" => "127.0.0.1",
            "container-runtime-endpoint" => "unix:///run/containerd/containerd.sock",
            "cgroup-driver" => "systemd",
            "authorization-mode" => "AlwaysAllow",
            "container-log-max-size" => "10Mi",
            "cluster-dns" => "10.96.0.10,10.96.0.11",
            "kube-reserved" | "system-reserved" => "cpu=100m,memory=100Mi",
            "eviction-hard" => "memory.available<100Mi,nodefs.available<10%",
            "eviction-soft-grace-period" => "memory.available=1m30s",
            "image-gc-high-threshold" => "90",
            "image-gc-low-threshold" => "70",
            "eviction-minimum-reclaim" => "memory.available=0Mi,nodefs.available=500Mi",
            "allowed-unsafe-sysctls" => "kernel.msg*,net.core.somaxconn",
            "version" => "false",
            "tls-cipher-suites" => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_AES_128_GCM_SHA256",
            "tls-min-version" => "VersionTLS13",
            _ => match kind {
                Bool => "true",
                Int32 => "3",
                Int64 => "-1",
                Float => "0.5",
                Duration => "90s",
                Str | Object => "/some/value",
                List => "a,b",
                Map => "a=b,c=d",
                MapNoSplit => "full-pcpus-only=true",
                MapLangle => "memory.available<1Gi",
                MapBool => "Foo=true,Bar=false",
                MapColon => "a:b,c:d",
                Quantity => "2Ki",
                ReservedMemory => "0:memory=1Gi,hugepages-1Gi=2Gi;1:memory=2Gi",
                VModule => "foo=2,bar*=4",
                Taints => "k=v:NoSchedule,gpu:NoExecute",
                Version => "raw",
            },
        }
    }

    #[test]
    fn every_upstream_1_36_flag_is_accepted_with_its_value_syntax() {
        let file = write_config("every-flag", HEAD);
        for s in crate::compat::SETTINGS {
            let Some(flag) = s.flag else { continue };
            if flag == "help" {
                continue;
            }
            let mut base = vec!["rkubelet".to_string(), "--hostname-override=n1".to_string()];
            match flag {
                "bootstrap-kubeconfig" => base.push("--kubeconfig=/k".into()),
                "config" => {}
                _ => base.push(format!("--config={}", file.display())),
            }
            let value = if flag == "config" { file.display().to_string() } else { sample(flag, s.kind).to_string() };
            let mut forms = vec![vec![format!("--{flag}={value}")], vec![format!("--{flag}={value}"), format!("--{flag}={value}")]];
            match s.kind {
                // Booleans (and --version): bare, or with `=`; never as a separate word.
                crate::compat::Kind::Bool | crate::compat::Kind::Version => forms.extend([vec![format!("--{flag}")], vec![format!("--{flag}=false")]]),
                _ => forms.push(vec![format!("--{flag}"), value.clone()]),
            }
            // Underscores in names are normalized, as upstream's flag set does.
            forms.push(vec![format!("--{}={value}", flag.replace('-', "_"))]);
            for form in forms {
                let argv = normalize_flag_names(base.iter().cloned().chain(form.iter().cloned()));
                let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
                // The provider flags load their files (tested with real ones in runtime::image).
                if flag.starts_with("image-credential-provider") {
                    continue;
                }
                // The serving certificate and key go together.
                if flag.starts_with("tls-") && flag.ends_with("-file") {
                    let e = Config::from_args(&cli.agent).unwrap_err().to_string();
                    assert!(e.contains("the certificate and the private key must be given together"), "{e}");
                    continue;
                }
                // A soft threshold alone is upstream's error too.
                if flag == "eviction-soft" {
                    let e = Config::from_args(&cli.agent).unwrap_err().to_string();
                    assert!(e.contains("grace period must be specified for the soft eviction threshold memory.available"), "{e}");
                    continue;
                }
                if let Err(e) = Config::from_args(&cli.agent) {
                    panic!("{argv:?}: {e}");
                }
            }
            if matches!(s.kind, crate::compat::Kind::Bool | crate::compat::Kind::Version) {
                let argv = [base.clone(), vec![format!("--{flag}"), "false".into()]].concat();
                assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}: a boolean takes its value only with =");
            }
        }
    }

    #[test]
    fn flags_are_upstream_s_or_rkubelet_s_own_and_others_are_refused() {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            assert!(
                crate::compat::by_flag(long).is_some() || crate::compat::RKUBELET_FLAGS.contains(&long),
                "--{long} is neither an upstream 1.36 flag in compat::SETTINGS nor listed in compat::RKUBELET_FLAGS"
            );
        }
        for s in crate::compat::SETTINGS.iter().filter_map(|s| s.flag) {
            assert!(cmd.get_arguments().any(|a| a.get_long() == Some(s)), "--{s} is not declared");
        }
        // Flags upstream removed before 1.36, and made-up ones, are errors as upstream.
        for bad in ["--container-runtime=remote", "--network-plugin=cni", "--logtostderr", "--cloud-config=/c", "--no-such-flag"] {
            assert!(Cli::try_parse_from(["rkubelet", bad]).is_err(), "{bad} must be refused");
        }
        // Wrong values are errors naming the flag.
        for bad in ["--image-gc-high-threshold=high", "--eviction-soft=memory.available", "--feature-gates=A=perhaps", "--housekeeping-interval=10"] {
            let e = Cli::try_parse_from(["rkubelet", bad]).unwrap_err().to_string();
            assert!(e.contains(bad.split('=').next().unwrap()), "{bad}: {e}");
        }
    }

    #[test]
    fn repeated_flags_keep_the_last_value_or_accumulate_like_upstream() {
        let a = Cli::parse_from(["rkubelet", "--cpu-manager-policy=static", "--cpu-manager-policy=none", "--qos-reserved=memory=50%", "--qos-reserved", "cpu=10%"]).agent;
        let given = a.unimplemented.given();
        assert!(given.contains(&("cpu-manager-policy", "none".to_string())), "{given:?}");
        assert!(given.contains(&("qos-reserved", "memory=50%,cpu=10%".to_string())), "{given:?}");
        let a = Cli::parse_from(["rkubelet", "-v=3", "--max-pods=0x10", "--pod-max-pids", "-1"]).agent;
        assert_eq!((a.verbosity, a.max_pods, a.pod_max_pids), (3, Some(16), Some(-1)));
        assert!(Cli::parse_from(["rkubelet", "--version"]).agent.prints_version());
        assert!(Cli::parse_from(["rkubelet", "--version=raw"]).agent.prints_version());
        assert!(!Cli::parse_from(["rkubelet", "--version=false"]).agent.prints_version());
        assert_eq!(normalize_flag_names(["rkubelet", "--cluster_dns=10.0.0.1", "--", "--a_b"].map(String::from)), ["rkubelet", "--cluster-dns=10.0.0.1", "--", "--a_b"]);
    }

    #[test]
    fn eviction_settings_as_upstream_parses_them() {
        let c = with_file(
            "evsoft",
            &format!("{HEAD}evictionSoft: {{memory.available: 1.5Gi, nodefs.available: 15%}}\nevictionSoftGracePeriod: {{memory.available: 1m30s, nodefs.available: 2m}}\nevictionMinimumReclaim: {{memory.available: 100Mi}}\nevictionPressureTransitionPeriod: 30s\nevictionMaxPodGracePeriod: 20\n"),
            &[],
        )
        .unwrap();
        assert_eq!(c.eviction_soft.get("memory.available"), Some(&Threshold::Quantity(1536 << 20)));
        assert_eq!(c.eviction_soft_grace_period.get("nodefs.available"), Some(&Duration::from_secs(120)));
        assert_eq!(c.eviction_minimum_reclaim.get("memory.available"), Some(&Threshold::Quantity(100 << 20)));
        assert_eq!((c.eviction_pressure_transition_period, c.eviction_max_pod_grace_period), (Duration::from_secs(30), 20));
        let d = with_file("evdefault", HEAD, &[]).unwrap();
        assert_eq!((d.eviction_pressure_transition_period, d.eviction_max_pod_grace_period), (Duration::from_secs(300), 0), "upstream's defaults");
        assert!(d.kernel_memcg_notification, "rkubelet sees memory crossings at once unless told not to");
        assert!(!with_file("evnonotify", &format!("{HEAD}kernelMemcgNotification: false\n"), &[]).unwrap().kernel_memcg_notification);
        let e = with_file("evnograce", &format!("{HEAD}evictionSoft: {{memory.available: 1Gi}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("grace period must be specified for the soft eviction threshold memory.available"), "{e}");
        let e = with_file("evbadsig", &format!("{HEAD}evictionSoftGracePeriod: {{swap.available: 1m}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("evictionSoftGracePeriod[swap.available]") && e.contains("unsupported eviction signal"), "{e}");
        let e = with_file("evneg", &format!("{HEAD}evictionSoft: {{memory.available: 1Gi}}\nevictionSoftGracePeriod: {{memory.available: -1m}}\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("must be a positive value"), "{e}");
        let f = with_file("evflags", HEAD, &["--eviction-soft=memory.available<2Gi", "--eviction-soft-grace-period=memory.available=10s", "--eviction-pressure-transition-period=1m"]).unwrap();
        assert_eq!((f.eviction_soft.len(), f.eviction_soft_grace_period["memory.available"], f.eviction_pressure_transition_period), (1, Duration::from_secs(10), Duration::from_secs(60)));
    }

    #[test]
    fn image_gc_settings_default_and_are_checked_as_upstream() {
        let d = with_file("gcdefault", &format!("{HEAD}imageMinimumGCAge: 0s\n"), &[]).unwrap();
        assert_eq!((d.image_gc_high_threshold_percent, d.image_gc_low_threshold_percent, d.image_minimum_gc_age, d.image_maximum_gc_age), (85, 80, Duration::from_secs(120), Duration::ZERO), "kubeadm's 0s is the default");
        let c = with_file("gcset", &format!("{HEAD}imageGCHighThresholdPercent: 70\nimageGCLowThresholdPercent: 60\nimageMaximumGCAge: 1h\n"), &["--minimum-image-ttl-duration=5m"]).unwrap();
        assert_eq!((c.image_gc_high_threshold_percent, c.image_gc_low_threshold_percent, c.image_minimum_gc_age, c.image_maximum_gc_age), (70, 60, Duration::from_secs(300), Duration::from_secs(3600)));
        let e = with_file("gclow", &format!("{HEAD}imageGCHighThresholdPercent: 50\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("imageGCLowThresholdPercent (80) must be less than imageGCHighThresholdPercent (50)"), "{e}");
        let e = with_file("gcrange", HEAD, &["--image-gc-high-threshold=101"]).unwrap_err().to_string();
        assert!(e.contains("must be between 0 and 100"), "{e}");
        let e = with_file("gcage", &format!("{HEAD}imageMaximumGCAge: 1m\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("imageMaximumGCAge 1m0s must be greater than imageMinimumGCAge 2m0s"), "{e}");
    }

    #[test]
    fn unimplemented_flags_and_fields_are_named_in_the_config() {
        let body = format!("{HEAD}qosReserved:\n  memory: 50%\ncpuManagerPolicy: none\nmaxPod: 3\n");
        let c = with_file("compat", &body, &["--node-status-max-images=90", "--cpu-manager-policy=none", "--version=v1.36.9"]).unwrap();
        assert_eq!(c.compat.not_implemented, vec!["--version", "--node-status-max-images", "qosReserved"]);
        assert_eq!(c.compat.unknown_fields, vec!["maxPod"]);
        let c = with_file("compat-none", HEAD, &["--cpu-manager-policy=none", "--cgroups-per-qos=true", "--authentication-token-webhook-cache-ttl=10s"]).unwrap();
        assert!(c.compat.not_implemented.is_empty(), "{:?}", c.compat);
        assert_eq!(c.authentication.webhook_cache_ttl, Duration::from_secs(10));
    }

    #[test]
    fn image_pulls_are_serialized_unless_parallel_pulls_are_asked_for() {
        let c = with_file("pulls0", HEAD, &[]).unwrap();
        assert!(c.serialize_image_pulls);
        assert_eq!(c.max_parallel_image_pulls, None);
        // maxParallelImagePulls > 1 alone turns serialization off (v1beta1 defaulting).
        let c = with_file("pulls1", &format!("{HEAD}maxParallelImagePulls: 4\n"), &[]).unwrap();
        assert!(!c.serialize_image_pulls);
        assert_eq!(c.max_parallel_image_pulls, Some(4));
        let c = with_file("pulls2", &format!("{HEAD}serializeImagePulls: false\n"), &["--max-parallel-image-pulls", "2"]).unwrap();
        assert_eq!((c.serialize_image_pulls, c.max_parallel_image_pulls), (false, Some(2)));
        let c = with_file("pulls3", &format!("{HEAD}serializeImagePulls: false\n"), &["--serialize-image-pulls=true"]).unwrap();
        assert!(c.serialize_image_pulls, "the flag wins");
        let e = with_file("pulls4", &format!("{HEAD}serializeImagePulls: true\nmaxParallelImagePulls: 3\n"), &[]).unwrap_err().to_string();
        assert_eq!(e, "invalid maxParallelImagePulls \"3\": cannot be larger than 1 unless SerializeImagePulls (--serialize-image-pulls) is set to false");
        let e = with_file("pulls5", &format!("{HEAD}maxParallelImagePulls: 0\n"), &[]).unwrap_err().to_string();
        assert_eq!(e, "invalid maxParallelImagePulls \"0\": must be a positive number");
        let c = with_file("pulls6", &format!("{HEAD}serializeImagePulls: true\nmaxParallelImagePulls: 1\n"), &[]).unwrap();
        assert!(c.serialize_image_pulls);
    }

    #[test]
    fn registry_hosts_and_credential_providers_come_from_flags() {
        let c = with_file("hosts0", HEAD, &["--registry-config-path", "/etc/x/certs.d"]).unwrap();
        assert_eq!(c.registry_config_path, Some(PathBuf::from("/etc/x/certs.d")));
        assert_eq!(with_file("hosts1", HEAD, &["--registry-config-path", ""]).unwrap().registry_config_path, None);
        assert!(with_file("hosts2", HEAD, &[]).unwrap().credential_providers.is_none());
        // One of the two provider flags alone fails as upstream's registration does.
        let e = with_file("prov0", HEAD, &["--image-credential-provider-config", "/nonexistent/p.yaml"]).unwrap_err().to_string();
        assert_eq!(e, "plugin binary directory  did not exist");
        let e = with_file("prov1", HEAD, &["--image-credential-provider-bin-dir", "/"]).unwrap_err().to_string();
        assert_eq!(e, "credential provider config path is empty");
    }
}
