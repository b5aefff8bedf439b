//! Command line → one immutable [`Config`].
//!
//! Flag names follow the upstream kubelet (`--pod-manifest-path`, `--root-dir`,
//! `--container-runtime-endpoint`, …) so that unit files and habits carry over.

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
}

#[derive(Debug, Parser)]
#[command(name = "rkubelet", about = "A Kubernetes node agent on containerd's native API", version = None, disable_version_flag = true)]
pub struct Cli {
    /// Print the version (`Kubernetes vX.Y.Z+rkubelet...`) and exit.
    #[arg(long = "version", global = true)]
    pub version: bool,

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

#[derive(Debug, Args, Clone)]
pub struct AgentArgs {
    /// Directory of static pod manifests (YAML or JSON Pods), watched for changes.
    #[arg(long = "pod-manifest-path")]
    pub pod_manifest_path: Option<PathBuf>,
    /// Directory for the agent's state (pod directories, caches).
    #[arg(long = "root-dir", default_value = "/var/lib/rkubelet")]
    pub root_dir: PathBuf,
    /// containerd's gRPC endpoint.
    #[arg(long = "container-runtime-endpoint", default_value = "unix:///run/containerd/containerd.sock")]
    pub container_runtime_endpoint: String,
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
    /// Directory under which container logs are written.
    #[arg(long = "pod-logs-dir", default_value = "/var/log/pods", hide = true)]
    pub pod_logs_dir: PathBuf,
    /// How often the manifest directory is fully re-read (changes are also picked up by inotify).
    #[arg(long = "file-check-frequency", default_value = "20s", value_parser = parse_duration)]
    pub file_check_frequency: Duration,
    /// How often every pod is re-synced even without events.
    #[arg(long = "sync-frequency", default_value = "1m", value_parser = parse_duration)]
    pub sync_frequency: Duration,
    /// kubeconfig for the API server; without it the agent runs standalone.
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The node's IP address (InternalIP); default: the address of the default route's interface.
    #[arg(long = "node-ip")]
    pub node_ip: Option<String>,
    /// Labels to add when registering the node: key=value,key2=value2.
    #[arg(long = "node-labels", value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints to register the node with: key=value:Effect,key:Effect.
    #[arg(long = "register-with-taints", value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// Maximum number of pods on this node.
    #[arg(long = "max-pods", default_value_t = 110)]
    pub max_pods: u32,
    /// How often the node status is computed (and patched if it changed).
    #[arg(long = "node-status-update-frequency", default_value = "10s", value_parser = parse_duration)]
    pub node_status_update_frequency: Duration,
    /// How often the node status is patched even if unchanged.
    #[arg(long = "node-status-report-frequency", default_value = "5m", value_parser = parse_duration)]
    pub node_status_report_frequency: Duration,
    /// Duration of the node Lease; it is renewed every quarter of it.
    #[arg(long = "node-lease-duration-seconds", default_value_t = 40)]
    pub node_lease_duration_seconds: i32,
    /// Log verbosity like upstream's -v: 0-1 info, 2-3 debug, 4+ trace. RUST_LOG overrides.
    #[arg(short = 'v', long = "v", default_value_t = 0)]
    pub verbosity: u8,
}

/// Parses Go-style durations as the kubelet accepts them: `20s`, `1m`, `1m30s`, `500ms`.
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
        total += Duration::from_secs_f64(secs);
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
    pub kubeconfig: Option<PathBuf>,
    pub node_ip: Option<String>,
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub max_pods: u32,
    pub node_status_update_frequency: Duration,
    pub node_status_report_frequency: Duration,
    pub node_lease_duration_seconds: i32,
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

impl Config {
    /// Resolves flags into a config: node name from `--hostname-override` or the
    /// hostname (lowercased, like upstream), socket path from the endpoint URL.
    pub fn from_args(a: &AgentArgs) -> Result<Self, ConfigError> {
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
        let ep = &a.container_runtime_endpoint;
        let socket = ep
            .strip_prefix("unix://")
            .or_else(|| ep.starts_with('/').then_some(ep.as_str()))
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| ConfigError::Endpoint(ep.clone()))?;
        Ok(Config {
            node_name,
            pod_manifest_path: a.pod_manifest_path.clone(),
            root_dir: a.root_dir.clone(),
            containerd_socket: PathBuf::from(socket),
            pause_image: a.pod_infra_container_image.clone(),
            cni_bin_dirs: a.cni_bin_dir.clone(),
            cni_conf_dir: a.cni_conf_dir.clone(),
            cni_cache_dir: a.cni_cache_dir.clone().unwrap_or_else(|| a.root_dir.join("cni-cache")),
            namespace: a.runtime_namespace.clone(),
            snapshotter: a.snapshotter.clone(),
            pod_logs_dir: a.pod_logs_dir.clone(),
            file_check_frequency: a.file_check_frequency,
            sync_frequency: a.sync_frequency,
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
            taints: a.register_with_taints.iter().filter(|t| !t.is_empty()).map(|t| parse_taint(t)).collect::<Result<_, _>>()?,
            max_pods: a.max_pods,
            node_status_update_frequency: a.node_status_update_frequency,
            node_status_report_frequency: a.node_status_report_frequency,
            node_lease_duration_seconds: a.node_lease_duration_seconds,
        })
    }
}

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
    fn go_durations_parse() {
        assert_eq!(parse_duration("20s").unwrap(), Duration::from_secs(20));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3y").is_err());
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
        a.container_runtime_endpoint = "tcp://1.2.3.4:1".into();
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
}
