//! The kubelet's configuration file (`--config`): a `kubelet.config.k8s.io/v1beta1`
//! `KubeletConfiguration`, as `kubeadm` writes it to `/var/lib/kubelet/config.yaml`.
//!
//! This module only reads the file. Every field is optional here: [`crate::config`]
//! merges it with the command line (a flag given explicitly wins, like upstream's
//! `kubeletConfigFlagPrecedence`) and applies upstream's defaults
//! (`pkg/kubelet/apis/config/v1beta1/defaults.go`) where neither says anything. As in
//! upstream's defaulting, a zero duration or count in the file (`syncFrequency: 0s`,
//! `maxPods: 0`, which kubeadm writes for everything it leaves to the kubelet) means
//! "use the default".
//!
//! Every v1beta1 field is known ([`crate::compat::SETTINGS`]): those rkubelet reads
//! are typed here, and a wrong type is an error naming the field's path
//! (`authentication.webhook.enabled`); the others are accepted with any value and
//! kept in the [`KubeletConfiguration::document`], from which [`crate::compat`]
//! tells which are set. Fields v1beta1 does not have are listed by
//! [`KubeletConfiguration::unknown_fields`] and otherwise ignored, as upstream's
//! lenient decoding does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use thiserror::Error;

/// The only `apiVersion` accepted (upstream's kubelet 1.36 reads only v1beta1 from a file).
pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
/// The only `kind` accepted.
pub const KIND: &str = "KubeletConfiguration";

/// Errors reading a KubeletConfiguration file.
#[derive(Debug, Error)]
pub enum KubeletConfigError {
    /// The file could not be read.
    #[error("cannot read the kubelet config file {}: {source}", path.display())]
    Read {
        /// The `--config` path.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a YAML (or JSON) mapping.
    #[error("invalid kubelet config file {}: {message}", path.display())]
    Syntax {
        /// The `--config` path.
        path: PathBuf,
        /// What the YAML parser said.
        message: String,
    },
    /// A field has the wrong type or an invalid value.
    #[error("invalid kubelet config file {}: field {field}: {message}", path.display())]
    Field {
        /// The `--config` path.
        path: PathBuf,
        /// The field's path in the document, e.g. `authentication.webhook.enabled`.
        field: String,
        /// Why its value was refused.
        message: String,
    },
    /// `apiVersion`/`kind` are missing or not `kubelet.config.k8s.io/v1beta1` `KubeletConfiguration`.
    #[error(
        "kubelet config file {} has apiVersion {api_version:?} and kind {kind:?}; want apiVersion {API_VERSION:?} and kind {KIND:?}",
        path.display()
    )]
    Kind {
        /// The `--config` path.
        path: PathBuf,
        /// The file's `apiVersion` ("" when missing).
        api_version: String,
        /// The file's `kind` ("" when missing).
        kind: String,
    },
}

/// A Go `time.Duration` as `metav1.Duration` serializes it: a string like `10s`, `1m0s`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// The duration, or `None` for zero (upstream's defaulting treats zero as unset).
    pub fn non_zero(self) -> Option<Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = GoDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration string such as \"10s\", \"1m30s\" or \"500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                crate::config::parse_duration(v).map(GoDuration).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// `authentication.x509`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct X509Authentication {
    /// `clientCAFile`: the CA bundle that verifies client certificates on the kubelet's server.
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<String>,
}

/// `authentication.webhook`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct WebhookAuthentication {
    /// `enabled`: bearer tokens are checked with TokenReviews.
    pub enabled: Option<bool>,
    /// `cacheTTL`: how long TokenReview answers are cached.
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<GoDuration>,
}

/// `authentication.anonymous`.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct AnonymousAuthentication {
    /// `enabled`: unauthenticated requests are user `system:anonymous`.
    pub enabled: Option<bool>,
}

/// `authentication`: how the kubelet's own server authenticates its clients.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Authentication {
    pub x509: Option<X509Authentication>,
    pub webhook: Option<WebhookAuthentication>,
    pub anonymous: Option<AnonymousAuthentication>,
}

/// `authorization.webhook`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAuthorization {
    /// `cacheAuthorizedTTL`.
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<GoDuration>,
    /// `cacheUnauthorizedTTL`.
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<GoDuration>,
}

/// `authorization`: how the kubelet's own server authorizes requests.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct Authorization {
    /// `mode`: `AlwaysAllow` or `Webhook` (SubjectAccessReviews).
    pub mode: Option<String>,
    pub webhook: Option<WebhookAuthorization>,
}

/// One entry of `shutdownGracePeriodByPodPriority`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownGracePeriodByPodPriority {
    /// The lowest pod priority of the group.
    pub priority: i32,
    pub shutdown_grace_period_seconds: i64,
}

/// The fields of a v1beta1 KubeletConfiguration that rkubelet reads, and the whole document.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    /// Directory of static pod manifests (`--pod-manifest-path`).
    pub static_pod_path: Option<String>,
    pub sync_frequency: Option<GoDuration>,
    pub file_check_frequency: Option<GoDuration>,
    pub streaming_connection_idle_timeout: Option<GoDuration>,
    /// The kubelet server's bind address.
    pub address: Option<String>,
    /// The kubelet server's port (10250).
    pub port: Option<i32>,
    /// The healthz endpoint's port (10248; 0 disables it).
    pub healthz_port: Option<i32>,
    pub healthz_bind_address: Option<String>,
    pub authentication: Option<Authentication>,
    pub authorization: Option<Authorization>,
    /// DNS server IPs for pods with `dnsPolicy: ClusterFirst`.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: Option<String>,
    /// Rotate the client certificate before it expires.
    pub rotate_certificates: Option<bool>,
    /// Request the serving certificate through a CSR.
    #[serde(rename = "serverTLSBootstrap")]
    pub server_tls_bootstrap: Option<bool>,
    /// The serving certificate file.
    pub tls_cert_file: Option<String>,
    /// The serving key file.
    pub tls_private_key_file: Option<String>,
    /// TLS 1.2 cipher suites allowed on the kubelet server (IANA names).
    pub tls_cipher_suites: Option<Vec<String>>,
    /// `VersionTLS10`..`VersionTLS13`.
    pub tls_min_version: Option<String>,
    pub node_status_update_frequency: Option<GoDuration>,
    pub node_status_report_frequency: Option<GoDuration>,
    pub node_lease_duration_seconds: Option<i32>,
    pub max_pods: Option<i32>,
    pub container_log_max_size: Option<String>,
    pub container_log_max_files: Option<i32>,
    pub pod_pids_limit: Option<i64>,
    /// cgroup v2: kill only the process the OOM killer picks, not the container.
    #[serde(rename = "singleProcessOOMKill")]
    pub single_process_oom_kill: Option<bool>,
    /// Graceful node shutdown: how long the node delays its shutdown for its pods.
    pub shutdown_grace_period: Option<GoDuration>,
    /// The part of `shutdownGracePeriod` kept for critical pods.
    pub shutdown_grace_period_critical_pods: Option<GoDuration>,
    /// Per-priority shutdown grace periods (replaces the two above when set).
    pub shutdown_grace_period_by_pod_priority: Option<Vec<ShutdownGracePeriodByPodPriority>>,
    /// Hard eviction thresholds: signal → quantity or percentage (`memory.available: 100Mi`).
    pub eviction_hard: Option<BTreeMap<String, String>>,
    pub kernel_memcg_notification: Option<bool>,
    #[serde(rename = "imageGCHighThresholdPercent")]
    pub image_gc_high_threshold_percent: Option<i32>,
    #[serde(rename = "imageGCLowThresholdPercent")]
    pub image_gc_low_threshold_percent: Option<i32>,
    #[serde(rename = "imageMinimumGCAge")]
    pub image_minimum_gc_age: Option<GoDuration>,
    #[serde(rename = "imageMaximumGCAge")]
    pub image_maximum_gc_age: Option<GoDuration>,
    /// Soft eviction thresholds (each needs a grace period).
    pub eviction_soft: Option<BTreeMap<String, String>>,
    pub eviction_soft_grace_period: Option<BTreeMap<String, String>>,
    pub eviction_pressure_transition_period: Option<GoDuration>,
    pub eviction_max_pod_grace_period: Option<i32>,
    pub eviction_minimum_reclaim: Option<BTreeMap<String, String>>,
    /// Merge upstream's default eviction thresholds under `evictionHard`.
    pub merge_default_eviction_settings: Option<bool>,
    pub kube_reserved: Option<BTreeMap<String, String>>,
    pub system_reserved: Option<BTreeMap<String, String>>,
    pub container_runtime_endpoint: Option<String>,
    /// Kept from older kubelets (dockershim); rkubelet stores it for image pulls.
    pub image_pull_progress_deadline: Option<GoDuration>,
    /// The resolv.conf pods with `dnsPolicy: Default` get ("" disables).
    pub resolv_conf: Option<String>,
    pub register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
    pub pod_logs_dir: Option<String>,
    /// Pull one image at a time (default: true unless `maxParallelImagePulls` > 1).
    pub serialize_image_pulls: Option<bool>,
    /// Image pulls at once when they are not serialized (unset: no limit).
    pub max_parallel_image_pulls: Option<i32>,
    /// Unsafe sysctls and `prefix*` patterns pods may set besides the safe ones.
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    /// RuntimeDefault seccomp for containers without a profile.
    pub seccomp_default: Option<bool>,
    /// The document as read: every field, those rkubelet does not type included.
    #[serde(skip)]
    pub document: serde_yaml::Value,
}

impl KubeletConfiguration {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<KubeletConfiguration, KubeletConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| KubeletConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text, path)
    }

    /// Parses a configuration document; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<KubeletConfiguration, KubeletConfigError> {
        let document: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| KubeletConfigError::Syntax { path: path.to_path_buf(), message: e.to_string() })?;
        let mut cfg: KubeletConfiguration = serde_path_to_error::deserialize(document.clone()).map_err(|e| {
            let field = e.path().to_string();
            let message = e.inner().to_string();
            if field == "." || field.is_empty() {
                KubeletConfigError::Syntax { path: path.to_path_buf(), message }
            } else {
                KubeletConfigError::Field { path: path.to_path_buf(), field, message }
            }
        })?;
        let (av, kind) = (cfg.api_version.clone().unwrap_or_default(), cfg.kind.clone().unwrap_or_default());
        if av != API_VERSION || kind != KIND {
            return Err(KubeletConfigError::Kind { path: path.to_path_buf(), api_version: av, kind });
        }
        cfg.document = document;
        Ok(cfg)
    }

    /// Paths of the fields upstream's v1beta1 does not have (`somethingNew`,
    /// `authentication.webhook.foo`), sorted.
    pub fn unknown_fields(&self) -> Vec<String> {
        crate::compat::unknown_fields(&self.document)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<KubeletConfiguration, KubeletConfigError> {
        KubeletConfiguration::parse(s, Path::new("/etc/kubelet.yaml"))
    }

    const HEAD: &str = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";

    #[test]
    fn known_fields_are_read_and_unknown_ones_listed() {
        let c = parse(&format!(
            "{HEAD}maxPods: 42\nsyncFrequency: 1m30s\nfailCgroupV1: false\nlogging: {{verbosity: 0}}\nauthentication:\n  webhook: {{enabled: true, cacheTTL: 0s, extra: 1}}\n  x509: {{clientCAFile: /ca.crt}}\nsomethingNew: [1]\nnodeStatusMaxImages: {{not: a number}}\n"
        ))
        .unwrap();
        assert_eq!(c.max_pods, Some(42));
        assert_eq!(c.sync_frequency, Some(GoDuration(Duration::from_secs(90))));
        let a = c.authentication.as_ref().unwrap();
        assert_eq!(a.webhook.as_ref().unwrap().enabled, Some(true));
        assert_eq!(a.webhook.as_ref().unwrap().cache_ttl.unwrap().non_zero(), None);
        assert_eq!(a.x509.as_ref().unwrap().client_ca_file.as_deref(), Some("/ca.crt"));
        // Upstream fields rkubelet does not read take any value; only fields v1beta1 lacks are unknown.
        assert_eq!(c.unknown_fields(), vec!["authentication.webhook.extra", "somethingNew"]);
        assert_eq!(c.document["failCgroupV1"], serde_yaml::Value::Bool(false));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse(&format!("{HEAD}maxPods: lots\n")).unwrap_err().to_string();
        assert!(e.contains("field maxPods:") && e.contains("invalid type"), "{e}");
        let e = parse(&format!("{HEAD}authentication:\n  anonymous:\n    enabled: maybe\n")).unwrap_err().to_string();
        assert!(e.contains("field authentication.anonymous.enabled:"), "{e}");
        let e = parse(&format!("{HEAD}nodeStatusUpdateFrequency: 10\n")).unwrap_err().to_string();
        assert!(e.contains("field nodeStatusUpdateFrequency:") && e.contains("duration"), "{e}");
        let e = parse(&format!("{HEAD}syncFrequency: 3 fortnights\n")).unwrap_err().to_string();
        assert!(e.contains("field syncFrequency:"), "{e}");
        let e = parse(&format!("{HEAD}clusterDNS: 10.96.0.10\n")).unwrap_err().to_string();
        assert!(e.contains("field clusterDNS:"), "{e}");
    }

    #[test]
    fn kind_and_api_version_are_checked() {
        assert!(matches!(parse("kind: KubeletConfiguration\nmaxPods: 1\n"), Err(KubeletConfigError::Kind { .. })));
        assert!(matches!(parse("apiVersion: kubelet.config.k8s.io/v1\nkind: KubeletConfiguration\n"), Err(KubeletConfigError::Kind { .. })));
        assert!(matches!(parse("- a\n- b\n"), Err(KubeletConfigError::Syntax { .. })));
        let e = parse("maxPods: [1, 2\n").unwrap_err();
        assert!(matches!(e, KubeletConfigError::Syntax { .. } | KubeletConfigError::Field { .. }), "{e:?}");
    }
}
