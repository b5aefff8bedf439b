//! Pod networking through CNI plugins, executed directly (no CRI in between).
//!
//! This is what containerd's CRI plugin does with go-cni/libcni for a pod
//! sandbox, on behalf of the kubelet:
//!
//! * choose the pod network from the conf dir ([`Cni::load_network`]: sorted
//!   `.conf`/`.conflist`/`.json` files, the first valid one wins);
//! * [`Cni::setup`]: `loopback` on `lo`, then ADD the network's plugin chain on
//!   the pod interface, each plugin receiving the previous one's result as
//!   `prevResult` and its declared capabilities (port mappings) in
//!   `runtimeConfig`; on failure the chain is DELeted again;
//! * record what was done in a cache keyed by sandbox id (libcni's result
//!   cache), so [`Cni::teardown`] DELs with the same config, arguments and
//!   result after an agent restart or a conf dir change, even when the
//!   network namespace is already gone.
//!
//! Submodules: `config` (conf files, per-plugin stdin), `exec` (running a
//! plugin), `result` (pod IPs from a result), `cache` (the on-disk record).
//! Nothing here blocks the tokio runtime: plugins run as
//! `tokio::process` children with a deadline, file work runs on the blocking pool.

pub(crate) mod cache;
pub(crate) mod config;
pub(crate) mod exec;
pub(crate) mod result;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tracing::{debug, info, instrument, warn};

pub use config::{ConfigError, NetworkConfigList, PluginConf, SkippedConfig};
pub use exec::CniCommand;
pub use result::ResultError;

use cache::{CacheEntry, CACHE_KIND};
use exec::{ExecError, Invocation};

/// Plugin directories searched when none are configured, in order.
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// The conventional CNI configuration directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";

/// Interface name used for teardown when no cache record says otherwise
/// (the kubelet's and containerd's default).
pub const DEFAULT_IFNAME: &str = "eth0";

/// Deadline for a single plugin invocation.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// The network name given to the loopback plugin (containerd CRI uses the same).
const LOOPBACK_NETWORK: &str = "cni-loopback";

/// Errors of CNI operations. The messages end up in pod events and status, so
/// each names the file, plugin or setting to look at.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No valid network configuration exists in the conf dir (the node's
    /// network is not ready). Invalid files that were skipped are listed.
    #[error("no networks found in {}{}", dir.display(), skipped_suffix(skipped))]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
        /// Files that were rejected, with the reason.
        skipped: Vec<SkippedConfig>,
    },
    /// The conf dir exists but cannot be listed.
    #[error("failed to read CNI config directory {}: {source}", dir.display())]
    ReadConfDir {
        /// The conf dir.
        dir: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A network configuration that must be used is invalid (e.g. the copy
    /// cached for a sandbox, which `path` then names).
    #[error("invalid CNI network config {}: {source}", path.display())]
    InvalidConfig {
        /// Where the configuration came from.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: ConfigError,
    },
    /// A plugin binary named by the configuration is in none of the bin dirs.
    #[error("failed to find plugin {plugin:?} in path {dirs:?}")]
    PluginNotFound {
        /// The plugin `type`.
        plugin: String,
        /// The directories searched.
        dirs: Vec<PathBuf>,
    },
    /// A pod parameter cannot be handed to plugins.
    #[error("invalid {field} {value:?} for CNI: {reason}")]
    InvalidPodNetwork {
        /// Which parameter (`sandbox id`, `ifname`, `netns`).
        field: &'static str,
        /// Its value.
        value: String,
        /// Why it is unusable.
        reason: &'static str,
    },
    /// A plugin ran and reported failure (its CNI error document, or its
    /// stderr if it printed none).
    #[error(
        "plugin {} failed ({command}): {msg}{}",
        describe(plugin, network),
        details_suffix(details)
    )]
    Plugin {
        /// The plugin `type`.
        plugin: String,
        /// The network name.
        network: String,
        /// The operation.
        command: CniCommand,
        /// The CNI error code (0 if none was given).
        code: u32,
        /// The plugin's message.
        msg: String,
        /// The plugin's details, possibly empty.
        details: String,
    },
    /// A plugin could not be started or talked to.
    #[error("plugin {} failed ({command}): cannot execute {}: {source}", describe(plugin, network), path.display())]
    Exec {
        /// The plugin `type`.
        plugin: String,
        /// The network name.
        network: String,
        /// The operation.
        command: CniCommand,
        /// The binary.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A plugin did not finish in time and was killed.
    #[error("plugin {} failed ({command}): timed out after {}s", describe(plugin, network), timeout.as_secs_f64())]
    Timeout {
        /// The plugin `type`.
        plugin: String,
        /// The network name.
        network: String,
        /// The operation.
        command: CniCommand,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// A plugin succeeded but its result is unusable (not JSON, or no pod IP).
    #[error(
        "plugin {} returned an unusable result ({command}): {source}",
        describe(plugin, network)
    )]
    ParseResult {
        /// The plugin `type` whose output was read.
        plugin: String,
        /// The network name.
        network: String,
        /// The operation.
        command: CniCommand,
        /// What is wrong.
        #[source]
        source: ResultError,
    },
    /// The attachment record could not be written or removed.
    #[error("failed to update CNI cache {}: {source}", path.display())]
    Cache {
        /// The record file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A blocking file task was cancelled or panicked.
    #[error("CNI background task failed: {source}")]
    Task {
        /// The join error.
        #[source]
        source: tokio::task::JoinError,
    },
}

/// Result alias for this module.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

fn describe(plugin: &str, network: &str) -> String {
    format!("type={plugin:?} name={network:?}")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

fn skipped_suffix(skipped: &[SkippedConfig]) -> String {
    if skipped.is_empty() {
        return String::new();
    }
    let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    format!(" (invalid files skipped: {})", list.join("; "))
}

/// Where plugins, configuration and the attachment cache live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// Plugin directories, searched in order for each plugin binary; also `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    /// The network configuration directory.
    pub conf_dir: PathBuf,
    /// Directory of per-sandbox attachment records (e.g. `<root-dir>/cni-cache`).
    pub cache_dir: PathBuf,
}

impl CniConfig {
    /// Default bin and conf dirs, with the cache in `<root_dir>/cni-cache`.
    pub fn with_root_dir(root_dir: &Path) -> Self {
        Self {
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            cache_dir: root_dir.join("cni-cache"),
        }
    }
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lowercase name the portmap plugin expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container port published on the node (a pod's `hostPort`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The node port; mappings with `0` are not passed to plugins (containerd CRI).
    pub host_port: u16,
    /// The port inside the pod.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The node address to bind, or all addresses.
    pub host_ip: Option<IpAddr>,
}

impl PortMapping {
    fn to_json(self) -> Value {
        let mut m = json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.as_str(),
        });
        if let (Some(ip), Some(obj)) = (self.host_ip, m.as_object_mut()) {
            obj.insert("hostIP".into(), Value::String(ip.to_string()));
        }
        m
    }
}

/// What the plugins need to know about a pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub namespace: String,
    /// The pod's name (`K8S_POD_NAME`).
    pub name: String,
    /// The pod's UID (`K8S_POD_UID`).
    pub uid: String,
    /// The pause container id: `CNI_CONTAINERID` and the cache key.
    pub sandbox_id: String,
    /// The sandbox's network namespace path (`CNI_NETNS`).
    pub netns: PathBuf,
    /// The pod interface (`CNI_IFNAME`), normally `eth0`.
    pub ifname: String,
    /// Host port mappings, passed as the `portMappings` capability.
    pub port_mappings: Vec<PortMapping>,
}

/// The outcome of attaching a pod to the network.
#[derive(Debug, Clone, PartialEq)]
pub struct AttachResult {
    /// The network's name.
    pub network_name: String,
    /// The pod's IPs on its interface, the primary (IPv4 if any) first.
    pub ips: Vec<IpAddr>,
    /// The chain's final result, as the last plugin printed it.
    pub result: Value,
}

/// The CNI driver. Cheap to clone; all clones share the configuration.
#[derive(Debug, Clone)]
pub struct Cni {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: CniConfig,
    /// `CNI_PATH`.
    cni_path: String,
    plugin_timeout: Duration,
}

/// Everything one chain run needs besides the plugin configs.
struct Run<'a> {
    list: &'a NetworkConfigList,
    /// Resolved binaries, parallel to `list.plugins`.
    binaries: &'a [PathBuf],
    container_id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    cni_args: &'a str,
    capability_args: &'a Map<String, Value>,
}

impl Cni {
    /// A driver for `cfg`. Does no I/O.
    pub fn new(cfg: CniConfig) -> Self {
        let cni_path = cfg
            .bin_dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":");
        Self {
            inner: Arc::new(Inner {
                cfg,
                cni_path,
                plugin_timeout: DEFAULT_PLUGIN_TIMEOUT,
            }),
        }
    }

    /// Overrides the per-plugin deadline ([`DEFAULT_PLUGIN_TIMEOUT`]).
    pub fn with_plugin_timeout(self, timeout: Duration) -> Self {
        let inner = Inner {
            cfg: self.inner.cfg.clone(),
            cni_path: self.inner.cni_path.clone(),
            plugin_timeout: timeout,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The configuration this driver was built with.
    pub fn config(&self) -> &CniConfig {
        &self.inner.cfg
    }

    /// Chooses the pod network: the first valid `.conf`/`.conflist`/`.json`
    /// file of the conf dir in name order (a `.conf` is wrapped into a
    /// one-plugin list). Invalid files are skipped with a warning and listed in
    /// [`CniError::NoConfig`] if nothing valid remains. Blocking (reads the
    /// conf dir); async code calls it from the blocking pool, as
    /// [`Cni::setup`] does.
    pub fn load_network(&self) -> Result<NetworkConfigList> {
        let dir = &self.inner.cfg.conf_dir;
        let scan = config::load_from_dir(dir).map_err(|source| CniError::ReadConfDir {
            dir: dir.clone(),
            source,
        })?;
        scan.network.ok_or_else(|| CniError::NoConfig {
            dir: dir.clone(),
            skipped: scan.skipped,
        })
    }

    /// Network readiness, for the node's `NetworkReady` condition: a network
    /// config loads and every plugin it names, plus `loopback`, is installed.
    /// Blocking (conf dir read + `stat`s).
    pub fn status(&self) -> Result<()> {
        let list = self.load_network()?;
        let dirs = &self.inner.cfg.bin_dirs;
        for plugin in std::iter::once("loopback").chain(list.plugin_types()) {
            if exec::find_plugin_blocking(plugin, dirs).is_none() {
                return Err(CniError::PluginNotFound {
                    plugin: plugin.to_owned(),
                    dirs: dirs.clone(),
                });
            }
        }
        Ok(())
    }

    /// Attaches a pod sandbox: `loopback` on `lo`, then ADD of the network's
    /// chain on `pod.ifname`. The configuration, arguments and result are
    /// cached under the sandbox id before returning. If any step fails, the
    /// chain is DELeted again (best effort) and the first error is returned.
    ///
    /// Convergent: if the sandbox is already attached (a complete record for
    /// the same netns and interface), the cached result is returned without
    /// running plugins; a stale or unfinished record is torn down first.
    #[instrument(skip_all, fields(pod = %format_args!("{}/{}", pod.namespace, pod.name), sandbox = %pod.sandbox_id))]
    pub async fn setup(&self, pod: &PodNetwork) -> Result<AttachResult> {
        let netns = validate_pod(pod).await?;
        let cache_path = cache::entry_path(&self.inner.cfg.cache_dir, &pod.sandbox_id);
        if let Some(attached) = self.reuse_or_reset(pod, netns, &cache_path).await? {
            debug!("sandbox already attached, returning the cached result");
            return Ok(attached);
        }

        let this = self.clone();
        let list = self.blocking(move || this.load_network()).await??;
        // Every binary is found before anything runs, so a missing one changes nothing.
        let loopback = self.resolve("loopback").await?;
        let mut binaries = Vec::with_capacity(list.plugins.len());
        for p in &list.plugins {
            binaries.push(self.resolve(p.plugin_type()).await?);
        }

        let args = pod_cni_args(pod);
        let cni_args = exec::format_cni_args(&args);
        let capability_args = capability_args(&pod.port_mappings);
        let mut entry = CacheEntry {
            kind: CACHE_KIND.to_owned(),
            container_id: pod.sandbox_id.clone(),
            network_name: list.name.clone(),
            if_name: pod.ifname.clone(),
            netns: netns.to_owned(),
            cni_args: args,
            capability_args: capability_args.clone(),
            config: list.to_json().clone(),
            result: None,
            ips: Vec::new(),
        };
        // Recorded before anything is attached, so a crash mid-ADD can still be torn down.
        self.write_cache(&cache_path, &entry).await?;

        let lo = Invocation {
            command: CniCommand::Add,
            container_id: &pod.sandbox_id,
            netns,
            ifname: "lo",
            cni_args: &cni_args,
            cni_path: &self.inner.cni_path,
        };
        let lo_conf = loopback_conf(&list);
        if let Err(e) = self
            .call(&loopback, "loopback", LOOPBACK_NETWORK, &lo_conf, &lo)
            .await
        {
            self.remove_cache_logged(&cache_path).await;
            return Err(e);
        }

        let run = Run {
            list: &list,
            binaries: &binaries,
            container_id: &pod.sandbox_id,
            netns,
            ifname: &pod.ifname,
            cni_args: &cni_args,
            capability_args: &capability_args,
        };
        let (outcome, last_good) = self.add_chain(&run).await;
        let attached = match outcome.and_then(|result| attachment(&list, &pod.ifname, result)) {
            Ok(a) => {
                entry.result = Some(a.result.clone());
                entry.ips = a.ips.clone();
                self.write_cache(&cache_path, &entry).await.map(|()| a)
            }
            Err(e) => Err(e),
        };
        match attached {
            Ok(a) => {
                info!(network = %a.network_name, ips = ?a.ips, "pod network attached");
                Ok(a)
            }
            Err(e) => {
                warn!(error = %e, "pod network setup failed, deleting the attachment");
                match self.del_chain(&run, last_good.as_ref()).await {
                    Ok(()) => self.remove_cache_logged(&cache_path).await,
                    // The record stays, so a later teardown retries the DEL.
                    Err(del) => warn!(error = %del, "rollback of failed pod network setup failed"),
                }
                Err(e)
            }
        }
    }

    /// Detaches a pod sandbox: DEL of the chain in reverse order with the
    /// cached configuration, arguments and result (or, with no record, the
    /// current configuration), then `loopback` DEL if `netns` is given and
    /// still exists. A namespace that is gone is passed as an empty
    /// `CNI_NETNS`, as containerd's CRI does, so IPAM and host-side state are
    /// still released. Idempotent: nothing cached and no network configured
    /// is success. The record is removed once every DEL succeeded.
    #[instrument(skip_all, fields(sandbox = %sandbox_id))]
    pub async fn teardown(&self, sandbox_id: &str, netns: Option<&Path>) -> Result<()> {
        validate_container_id(sandbox_id)?;
        let cache_path = cache::entry_path(&self.inner.cfg.cache_dir, sandbox_id);
        let cached = self.read_cache(&cache_path).await?;

        let Some(list) = self.teardown_config(&cache_path, cached.as_ref()).await? else {
            debug!("no cached attachment and no network configured, nothing to tear down");
            return self.remove_cache(&cache_path).await;
        };

        let ns = match netns {
            Some(p) if crate::network::netns::exists_async(p).await => {
                p.to_str().unwrap_or_default().to_owned()
            }
            Some(p) => {
                debug!(netns = %p.display(), "network namespace is gone, deleting without it");
                String::new()
            }
            None => String::new(),
        };
        let (ifname, args, caps, prev) = match &cached {
            Some(c) => (
                c.if_name.clone(),
                c.cni_args.clone(),
                c.capability_args.clone(),
                c.result.clone(),
            ),
            None => (
                DEFAULT_IFNAME.to_owned(),
                vec![
                    ("IgnoreUnknown".to_owned(), "1".to_owned()),
                    (
                        "K8S_POD_INFRA_CONTAINER_ID".to_owned(),
                        sandbox_id.to_owned(),
                    ),
                ],
                Map::new(),
                None,
            ),
        };
        let cni_args = exec::format_cni_args(&args);
        // libcni passes the cached result on DEL only from spec 0.4.0 on.
        let prev = prev
            .filter(|_| config::parse_version(&list.cni_version).is_some_and(|v| v >= (0, 4, 0)));

        let mut binaries = Vec::with_capacity(list.plugins.len());
        for p in &list.plugins {
            binaries.push(self.resolve(p.plugin_type()).await?);
        }
        let run = Run {
            list: &list,
            binaries: &binaries,
            container_id: sandbox_id,
            netns: &ns,
            ifname: &ifname,
            cni_args: &cni_args,
            capability_args: &caps,
        };
        self.del_chain(&run, prev.as_ref()).await?;

        if !ns.is_empty() {
            self.loopback_del(&list, sandbox_id, &ns, &cni_args).await;
        }

        self.remove_cache(&cache_path).await?;
        info!(network = %list.name, "pod network detached");
        Ok(())
    }

    /// The cached attachment of a sandbox (after a completed [`Cni::setup`]),
    /// e.g. to report pod IPs after an agent restart. `None` if there is no
    /// complete record. Blocking (one small file read).
    pub fn cached(&self, sandbox_id: &str) -> Option<AttachResult> {
        validate_container_id(sandbox_id).ok()?;
        let path = cache::entry_path(&self.inner.cfg.cache_dir, sandbox_id);
        let entry = match cache::read(&path) {
            Ok(e) => e?,
            Err(e) => {
                warn!(error = %e, "unreadable CNI cache record");
                return None;
            }
        };
        attach_result_of(entry)
    }

    /// Sandbox ids with an attachment record (complete or not), for garbage
    /// collection of networks whose sandbox no longer exists. Blocking.
    pub fn cached_sandboxes(&self) -> Result<Vec<String>> {
        let dir = &self.inner.cfg.cache_dir;
        cache::list(dir).map_err(|source| CniError::Cache {
            path: dir.clone(),
            source,
        })
    }

    /// Looks at an existing record for the sandbox: a complete one for the
    /// same netns and interface is the answer; anything else is torn down.
    async fn reuse_or_reset(
        &self,
        pod: &PodNetwork,
        netns: &str,
        cache_path: &Path,
    ) -> Result<Option<AttachResult>> {
        let Some(entry) = self.read_cache(cache_path).await? else {
            return Ok(None);
        };
        if entry.netns == netns && entry.if_name == pod.ifname {
            if let Some(attached) = attach_result_of(entry) {
                return Ok(Some(attached));
            }
        }
        debug!("stale or unfinished CNI cache record for this sandbox, tearing it down first");
        self.teardown(&pod.sandbox_id, Some(&pod.netns)).await?;
        Ok(None)
    }

    /// The list to DEL with: the cached one, else the current one. `None`
    /// if there is neither (nothing was ever attached with a known config).
    async fn teardown_config(
        &self,
        cache_path: &Path,
        cached: Option<&CacheEntry>,
    ) -> Result<Option<NetworkConfigList>> {
        let cached_error = match cached
            .map(|c| NetworkConfigList::from_list_value(c.config.clone()))
        {
            Some(Ok(list)) => return Ok(Some(list)),
            Some(Err(e)) => {
                warn!(path = %cache_path.display(), error = %e, "cached network config is invalid, trying the current one");
                Some(e)
            }
            None => None,
        };
        let this = self.clone();
        match self.blocking(move || this.load_network()).await? {
            Ok(list) => Ok(Some(list)),
            Err(CniError::NoConfig { .. }) => match cached_error {
                // A record exists but nothing usable to DEL it with: keep it and report.
                Some(source) => Err(CniError::InvalidConfig {
                    path: cache_path.to_path_buf(),
                    source,
                }),
                None => Ok(None),
            },
            Err(e) => Err(e),
        }
    }

    /// Best-effort loopback DEL: `lo` dies with the namespace anyway, so a
    /// failure is logged, not returned.
    async fn loopback_del(
        &self,
        list: &NetworkConfigList,
        sandbox_id: &str,
        netns: &str,
        cni_args: &str,
    ) {
        let lo = match self.resolve("loopback").await {
            Ok(lo) => lo,
            Err(e) => {
                warn!(error = %e, "skipping loopback teardown");
                return;
            }
        };
        let inv = Invocation {
            command: CniCommand::Del,
            container_id: sandbox_id,
            netns,
            ifname: "lo",
            cni_args,
            cni_path: &self.inner.cni_path,
        };
        if let Err(e) = self
            .call(
                &lo,
                "loopback",
                LOOPBACK_NETWORK,
                &loopback_conf(list),
                &inv,
            )
            .await
        {
            warn!(error = %e, "loopback teardown failed");
        }
    }

    /// ADD of every plugin in order, each getting the previous result
    /// (libcni `AddNetworkList`). Returns the final result or the first error,
    /// and the last result obtained (for the rollback DEL).
    async fn add_chain(&self, run: &Run<'_>) -> (Result<Value>, Option<Value>) {
        let mut prev: Option<Value> = None;
        for (plugin, binary) in run.list.plugins.iter().zip(run.binaries) {
            match self.add_one(run, plugin, binary, prev.as_ref()).await {
                Ok(result) => prev = Some(result),
                Err(e) => return (Err(e), prev),
            }
        }
        // A list always has at least one plugin, so `prev` is set here.
        (Ok(prev.clone().unwrap_or_else(|| json!({}))), prev)
    }

    async fn add_one(
        &self,
        run: &Run<'_>,
        plugin: &PluginConf,
        binary: &Path,
        prev: Option<&Value>,
    ) -> Result<Value> {
        let conf = config::build_plugin_conf(run.list, plugin, prev, run.capability_args);
        let inv = run.invocation(CniCommand::Add, &self.inner.cni_path);
        let stdout = self
            .call(binary, plugin.plugin_type(), &run.list.name, &conf, &inv)
            .await?;
        result::parse_output(&stdout).map_err(|source| CniError::ParseResult {
            plugin: plugin.plugin_type().to_owned(),
            network: run.list.name.clone(),
            command: CniCommand::Add,
            source,
        })
    }

    /// DEL of every plugin in reverse order; stops at the first failure (libcni `DelNetworkList`).
    async fn del_chain(&self, run: &Run<'_>, prev: Option<&Value>) -> Result<()> {
        let inv = run.invocation(CniCommand::Del, &self.inner.cni_path);
        for (plugin, binary) in run.list.plugins.iter().zip(run.binaries).rev() {
            let conf = config::build_plugin_conf(run.list, plugin, prev, run.capability_args);
            self.call(binary, plugin.plugin_type(), &run.list.name, &conf, &inv)
                .await?;
        }
        Ok(())
    }

    /// Runs one plugin and maps its failure to a [`CniError`].
    async fn call(
        &self,
        binary: &Path,
        plugin: &str,
        network: &str,
        conf: &Value,
        inv: &Invocation<'_>,
    ) -> Result<Vec<u8>> {
        let stdin = conf.to_string();
        debug!(
            plugin,
            network,
            command = inv.command.as_env(),
            ifname = inv.ifname,
            netns = inv.netns,
            "invoking CNI plugin"
        );
        let started = std::time::Instant::now();
        let out = exec::exec_plugin(binary, stdin.as_bytes(), inv, self.inner.plugin_timeout).await;
        debug!(
            plugin,
            command = inv.command.as_env(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            ok = out.is_ok(),
            "CNI plugin returned"
        );
        out.map_err(|e| match e {
            ExecError::Io(source) => CniError::Exec {
                plugin: plugin.to_owned(),
                network: network.to_owned(),
                command: inv.command,
                path: binary.to_path_buf(),
                source,
            },
            ExecError::Timeout => CniError::Timeout {
                plugin: plugin.to_owned(),
                network: network.to_owned(),
                command: inv.command,
                timeout: self.inner.plugin_timeout,
            },
            ExecError::Failed(f) => CniError::Plugin {
                plugin: plugin.to_owned(),
                network: network.to_owned(),
                command: inv.command,
                code: f.code,
                msg: f.msg,
                details: f.details,
            },
        })
    }

    async fn resolve(&self, plugin: &str) -> Result<PathBuf> {
        let dirs = &self.inner.cfg.bin_dirs;
        exec::find_plugin(plugin, dirs)
            .await
            .ok_or_else(|| CniError::PluginNotFound {
                plugin: plugin.to_owned(),
                dirs: dirs.clone(),
            })
    }

    /// Reads a sandbox's record; an unreadable or foreign one is logged and treated as absent.
    async fn read_cache(&self, path: &Path) -> Result<Option<CacheEntry>> {
        let p = path.to_path_buf();
        Ok(match self.blocking(move || cache::read(&p)).await? {
            Ok(entry) => entry,
            Err(e) => {
                warn!(error = %e, "ignoring unreadable CNI cache record");
                None
            }
        })
    }

    async fn write_cache(&self, path: &Path, entry: &CacheEntry) -> Result<()> {
        let (p, e) = (path.to_path_buf(), entry.clone());
        self.blocking(move || cache::write_atomic(&p, &e))
            .await?
            .map_err(|source| CniError::Cache {
                path: path.to_path_buf(),
                source,
            })
    }

    async fn remove_cache(&self, path: &Path) -> Result<()> {
        let p = path.to_path_buf();
        self.blocking(move || cache::remove(&p))
            .await?
            .map_err(|source| CniError::Cache {
                path: path.to_path_buf(),
                source,
            })
    }

    async fn remove_cache_logged(&self, path: &Path) {
        if let Err(e) = self.remove_cache(path).await {
            warn!(error = %e, "failed to remove CNI cache record");
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|source| CniError::Task { source })
    }
}

impl Run<'_> {
    fn invocation<'s>(&'s self, command: CniCommand, cni_path: &'s str) -> Invocation<'s> {
        Invocation {
            command,
            container_id: self.container_id,
            netns: self.netns,
            ifname: self.ifname,
            cni_args: self.cni_args,
            cni_path,
        }
    }
}

/// Checks what plugins will be given and returns the netns path as a string.
async fn validate_pod(pod: &PodNetwork) -> Result<&str> {
    validate_container_id(&pod.sandbox_id)?;
    validate_ifname(&pod.ifname)?;
    let netns = pod
        .netns
        .to_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| CniError::InvalidPodNetwork {
            field: "netns",
            value: pod.netns.display().to_string(),
            reason: "not a non-empty UTF-8 path",
        })?;
    if !crate::network::netns::exists_async(&pod.netns).await {
        return Err(CniError::InvalidPodNetwork {
            field: "netns",
            value: netns.to_owned(),
            reason: "not a network namespace",
        });
    }
    Ok(netns)
}

/// The pod's attachment from the chain's final result.
fn attachment(list: &NetworkConfigList, ifname: &str, result: Value) -> Result<AttachResult> {
    let ips = result::pod_ips(&result, ifname).map_err(|source| CniError::ParseResult {
        plugin: list
            .plugins
            .last()
            .map(|p| p.plugin_type().to_owned())
            .unwrap_or_default(),
        network: list.name.clone(),
        command: CniCommand::Add,
        source,
    })?;
    Ok(AttachResult {
        network_name: list.name.clone(),
        ips,
        result,
    })
}

/// The attachment a complete cache record describes; `None` while ADD is unfinished.
fn attach_result_of(entry: CacheEntry) -> Option<AttachResult> {
    let result = entry.result?;
    let ips = if entry.ips.is_empty() {
        result::pod_ips(&result, &entry.if_name).ok()?
    } else {
        entry.ips
    };
    Some(AttachResult {
        network_name: entry.network_name,
        ips,
        result,
    })
}

/// `CNI_ARGS` for a pod, in the order the kubelet's dockershim CNI driver used
/// (pkg/kubelet/dockershim/network/cni/cni.go `buildCNIRuntimeConf`), with
/// `K8S_POD_UID` appended as CRI-O/ocicni and newer containerd send it.
pub fn pod_cni_args(pod: &PodNetwork) -> Vec<(String, String)> {
    vec![
        ("IgnoreUnknown".to_owned(), "1".to_owned()),
        ("K8S_POD_NAMESPACE".to_owned(), pod.namespace.clone()),
        ("K8S_POD_NAME".to_owned(), pod.name.clone()),
        (
            "K8S_POD_INFRA_CONTAINER_ID".to_owned(),
            pod.sandbox_id.clone(),
        ),
        ("K8S_POD_UID".to_owned(), pod.uid.clone()),
    ]
}

/// The `CNI_ARGS` string for a pod: `IgnoreUnknown=1;K8S_POD_NAMESPACE=…;…`.
pub fn pod_cni_args_string(pod: &PodNetwork) -> String {
    exec::format_cni_args(&pod_cni_args(pod))
}

/// Capability arguments offered to plugins (containerd CRI `cniNamespaceOpts`):
/// `portMappings`, always present, holding the mappings with a host port.
fn capability_args(mappings: &[PortMapping]) -> Map<String, Value> {
    let ports: Vec<Value> = mappings
        .iter()
        .filter(|m| m.host_port != 0)
        .map(|m| m.to_json())
        .collect();
    let mut caps = Map::new();
    caps.insert("portMappings".into(), Value::Array(ports));
    caps
}

fn loopback_conf(list: &NetworkConfigList) -> Value {
    json!({
        "cniVersion": list.cni_version,
        "name": LOOPBACK_NETWORK,
        "type": "loopback",
    })
}

/// libcni `utils.ValidateContainerID`; also keeps the id safe as a cache file name.
fn validate_container_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidPodNetwork {
            field: "sandbox id",
            value: id.to_owned(),
            reason: "must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
        })
    }
}

/// libcni `utils.ValidateInterfaceName`.
fn validate_ifname(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 15 {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved name")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(CniError::InvalidPodNetwork {
            field: "ifname",
            value: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> PodNetwork {
        PodNetwork {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "6f1d0c3e-0000-4000-8000-000000000001".into(),
            sandbox_id: "0123abcd".into(),
            netns: PathBuf::from("/var/run/netns/cni-x"),
            ifname: "eth0".into(),
            port_mappings: vec![],
        }
    }

    #[test]
    fn cni_args_follow_the_kubelet_order() {
        assert_eq!(
            pod_cni_args_string(&pod()),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
             K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=6f1d0c3e-0000-4000-8000-000000000001"
        );
    }

    #[test]
    fn port_mappings_capability_matches_containerd() {
        let caps = capability_args(&[
            PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: None,
            },
            PortMapping {
                host_port: 0,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: None,
            },
            PortMapping {
                host_port: 5353,
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: Some("127.0.0.1".parse().expect("ip")),
            },
        ]);
        assert_eq!(
            Value::Object(caps),
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"}
            ]})
        );
        assert_eq!(
            Value::Object(capability_args(&[])),
            json!({"portMappings": []})
        );
    }

    #[test]
    fn plugin_error_message_reads_like_libcni() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            network: "rkubelet".into(),
            command: CniCommand::Add,
            code: 11,
            msg: "failed to allocate for range 0".into(),
            details: "no IP addresses available in range set".into(),
        };
        assert_eq!(
            e.to_string(),
            "plugin type=\"bridge\" name=\"rkubelet\" failed (add): failed to allocate for range 0: \
             no IP addresses available in range set"
        );
        let e = CniError::Timeout {
            plugin: "portmap".into(),
            network: "rk".into(),
            command: CniCommand::Del,
            timeout: Duration::from_secs(120),
        };
        assert_eq!(
            e.to_string(),
            "plugin type=\"portmap\" name=\"rk\" failed (delete): timed out after 120s"
        );
    }

    #[test]
    fn no_config_names_the_skipped_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("10-bad.conflist"), "{").expect("write");
        let cni = Cni::new(CniConfig {
            bin_dirs: vec![],
            conf_dir: dir.path().to_path_buf(),
            cache_dir: dir.path().join("cache"),
        });
        let err = cni.load_network().expect_err("no valid config");
        let msg = err.to_string();
        assert!(matches!(err, CniError::NoConfig { .. }));
        assert!(
            msg.starts_with(&format!("no networks found in {}", dir.path().display())),
            "{msg}"
        );
        assert!(msg.contains("10-bad.conflist: invalid JSON"), "{msg}");
    }

    #[test]
    fn status_requires_every_plugin_and_loopback() {
        let conf = tempfile::tempdir().expect("tempdir");
        let bin = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            conf.path().join("10-net.conflist"),
            r#"{"cniVersion":"1.0.0","name":"rk","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .expect("write");
        let cni = Cni::new(CniConfig {
            bin_dirs: vec![bin.path().to_path_buf()],
            conf_dir: conf.path().to_path_buf(),
            cache_dir: conf.path().join("cache"),
        });
        for (present, missing) in [
            (vec![], "loopback"),
            (vec!["loopback", "bridge"], "portmap"),
        ] {
            for p in present {
                std::fs::write(bin.path().join(p), b"").expect("write");
            }
            match cni.status() {
                Err(CniError::PluginNotFound { plugin, .. }) => assert_eq!(plugin, missing),
                other => panic!("unexpected {other:?}"),
            }
        }
        std::fs::write(bin.path().join("portmap"), b"").expect("write");
        cni.status().expect("ready");
    }

    #[test]
    fn ids_and_ifnames_are_validated() {
        for bad in ["", "../x", "a/b", "-x", "a b"] {
            assert!(validate_container_id(bad).is_err(), "{bad:?}");
        }
        validate_container_id("f00dfeed_1.2-3").expect("valid id");
        for bad in ["", ".", "..", "eth0:1", "a/b", "sixteen-chars-xx", "e th"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
        validate_ifname("eth0").expect("valid ifname");
    }

    #[test]
    fn cached_reads_back_a_complete_record_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cni = Cni::new(CniConfig::with_root_dir(dir.path()));
        assert_eq!(cni.config().cache_dir, dir.path().join("cni-cache"));
        let path = cache::entry_path(&cni.config().cache_dir, "sb1");
        let mut entry = CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: "sb1".into(),
            network_name: "rk".into(),
            if_name: "eth0".into(),
            netns: String::new(),
            cni_args: vec![],
            capability_args: Map::new(),
            config: json!({}),
            result: None,
            ips: vec![],
        };
        cache::write_atomic(&path, &entry).expect("write");
        assert!(
            cni.cached("sb1").is_none(),
            "in-progress record is not an attachment"
        );
        entry.result = Some(
            json!({"interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.9.0.3/24","interface":0}]}),
        );
        cache::write_atomic(&path, &entry).expect("write");
        let got = cni.cached("sb1").expect("cached");
        assert_eq!(got.network_name, "rk");
        assert_eq!(got.ips, vec!["10.9.0.3".parse::<IpAddr>().expect("ip")]);
        assert!(cni.cached("../sb1").is_none());
        assert_eq!(
            cni.cached_sandboxes().expect("list"),
            vec!["sb1".to_owned()]
        );
    }

    /// Fake plugins (shell scripts) that record every call, for chain logic
    /// without touching the kernel. `/proc/self/ns/net` stands in for the netns.
    mod chain {
        use super::*;

        const RESULT: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/proc/self/ns/net"}],"ips":[{"address":"10.9.0.5/24","interface":0}]}"#;
        const LIST: &str = r#"{"cniVersion":"1.0.0","name":"fake","plugins":[{"type":"first"},{"type":"second","capabilities":{"portMappings":true}}]}"#;

        struct Env {
            dir: tempfile::TempDir,
        }

        impl Env {
            fn new(list: &str) -> Self {
                let dir = tempfile::tempdir().expect("tempdir");
                for d in ["bin", "conf", "log"] {
                    std::fs::create_dir(dir.path().join(d)).expect("mkdir");
                }
                let env = Self { dir };
                env.set_conf(list);
                for name in ["loopback", "first", "second"] {
                    env.plugin(name, false);
                }
                env
            }

            fn set_conf(&self, list: &str) {
                std::fs::write(self.dir.path().join("conf/10-fake.conflist"), list)
                    .expect("write conf");
            }

            fn plugin(&self, name: &str, fail_add: bool) {
                let log = self.dir.path().join("log");
                let fail = if fail_add {
                    r#"printf '{"cniVersion":"1.0.0","code":11,"msg":"failed to allocate","details":"range full"}'; exit 1"#
                } else {
                    ":"
                };
                let script = format!(
                    "#!/bin/sh\nd='{log}'\nn=$(cat \"$d/seq\" 2>/dev/null || echo 0); n=$((n+1)); echo $n > \"$d/seq\"\n\
                     cat > \"$d/$n.json\"\n\
                     echo \"$CNI_COMMAND {name} $CNI_IFNAME netns=$CNI_NETNS args=$CNI_ARGS\" >> \"$d/calls\"\n\
                     if [ \"$CNI_COMMAND\" = ADD ]; then {fail}; printf '%s' '{RESULT}'; fi\n",
                    log = log.display(),
                );
                let path = self.dir.path().join("bin").join(name);
                std::fs::write(&path, script).expect("write plugin");
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .expect("chmod");
            }

            fn cni(&self) -> Cni {
                Cni::new(CniConfig {
                    bin_dirs: vec![self.dir.path().join("bin")],
                    conf_dir: self.dir.path().join("conf"),
                    cache_dir: self.dir.path().join("cache"),
                })
            }

            fn calls(&self) -> Vec<String> {
                std::fs::read_to_string(self.dir.path().join("log/calls"))
                    .unwrap_or_default()
                    .lines()
                    .map(|l| l.split(" args=").next().unwrap_or_default().to_owned())
                    .collect()
            }

            fn stdin(&self, n: usize) -> Value {
                let raw = std::fs::read(self.dir.path().join(format!("log/{n}.json")))
                    .expect("recorded stdin");
                serde_json::from_slice(&raw).expect("stdin is JSON")
            }

            fn cache_file(&self, id: &str) -> PathBuf {
                cache::entry_path(&self.dir.path().join("cache"), id)
            }
        }

        fn pod() -> PodNetwork {
            PodNetwork {
                netns: PathBuf::from("/proc/self/ns/net"),
                port_mappings: vec![PortMapping {
                    host_port: 18080,
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: None,
                }],
                ..super::pod()
            }
        }

        #[tokio::test]
        async fn setup_chains_results_and_teardown_uses_the_cached_config() {
            let env = Env::new(LIST);
            let attached = env.cni().setup(&pod()).await.expect("setup");
            assert_eq!(attached.network_name, "fake");
            assert_eq!(
                attached.ips,
                vec!["10.9.0.5".parse::<IpAddr>().expect("ip")]
            );
            assert_eq!(
                env.calls(),
                vec![
                    "ADD loopback lo netns=/proc/self/ns/net",
                    "ADD first eth0 netns=/proc/self/ns/net",
                    "ADD second eth0 netns=/proc/self/ns/net",
                ]
            );
            let lo = env.stdin(1);
            assert_eq!(
                lo,
                json!({"cniVersion":"1.0.0","name":"cni-loopback","type":"loopback"})
            );
            let first = env.stdin(2);
            assert!(first.get("prevResult").is_none() && first.get("runtimeConfig").is_none());
            let second = env.stdin(3);
            assert_eq!(
                second["prevResult"],
                serde_json::from_str::<Value>(RESULT).expect("json")
            );
            assert_eq!(second["name"], json!("fake"));
            assert_eq!(
                second["runtimeConfig"]["portMappings"][0]["hostPort"],
                json!(18080)
            );

            // "Restart" with a different network configured: DEL must use the cached one.
            env.set_conf(r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"third"}]}"#);
            let cni = env.cni();
            assert_eq!(
                cni.cached(&pod().sandbox_id).expect("cached").ips,
                attached.ips
            );
            cni.teardown(&pod().sandbox_id, Some(Path::new("/nonexistent/netns")))
                .await
                .expect("teardown");
            assert_eq!(
                &env.calls()[3..],
                &["DEL second eth0 netns=", "DEL first eth0 netns="],
                "reverse order, empty netns, no loopback for a vanished namespace"
            );
            assert_eq!(env.stdin(4)["prevResult"], attached.result);
            assert_eq!(
                env.stdin(4)["runtimeConfig"]["portMappings"][0]["containerPort"],
                json!(80)
            );
            assert!(!env.cache_file(&pod().sandbox_id).exists());
            assert!(cni.cached(&pod().sandbox_id).is_none());

            // Second teardown: no record, the current network (plugin "third") is missing.
            match cni.teardown(&pod().sandbox_id, None).await {
                Err(CniError::PluginNotFound { plugin, .. }) => assert_eq!(plugin, "third"),
                other => panic!("unexpected {other:?}"),
            }
            env.plugin("third", false);
            cni.teardown(&pod().sandbox_id, None)
                .await
                .expect("idempotent teardown");
            let calls = env.calls();
            assert_eq!(
                calls.last().map(String::as_str),
                Some("DEL third eth0 netns=")
            );
        }

        #[tokio::test]
        async fn failed_add_deletes_the_whole_chain_and_reports_the_plugin_error() {
            let env = Env::new(LIST);
            env.plugin("second", true);
            let err = env.cni().setup(&pod()).await.expect_err("setup must fail");
            match &err {
                CniError::Plugin {
                    plugin,
                    network,
                    command,
                    code,
                    msg,
                    details,
                } => {
                    assert_eq!(
                        (
                            plugin.as_str(),
                            network.as_str(),
                            *command,
                            *code,
                            msg.as_str(),
                            details.as_str()
                        ),
                        (
                            "second",
                            "fake",
                            CniCommand::Add,
                            11,
                            "failed to allocate",
                            "range full"
                        )
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
            assert_eq!(
                err.to_string(),
                "plugin type=\"second\" name=\"fake\" failed (add): failed to allocate: range full"
            );
            assert_eq!(
                &env.calls()[3..],
                &[
                    "DEL second eth0 netns=/proc/self/ns/net",
                    "DEL first eth0 netns=/proc/self/ns/net"
                ]
            );
            assert!(
                !env.cache_file(&pod().sandbox_id).exists(),
                "rolled back: no record left"
            );
        }

        #[tokio::test]
        async fn setup_again_returns_the_cached_attachment_without_plugins() {
            let env = Env::new(LIST);
            let first = env.cni().setup(&pod()).await.expect("setup");
            let calls = env.calls().len();
            let again = env.cni().setup(&pod()).await.expect("setup again");
            assert_eq!(first, again);
            assert_eq!(
                env.calls().len(),
                calls,
                "no plugin may run for an attached sandbox"
            );
        }

        #[tokio::test]
        async fn an_unfinished_record_is_torn_down_before_a_new_setup() {
            let env = Env::new(LIST);
            let p = pod();
            let list = NetworkConfigList::from_list_bytes(LIST.as_bytes()).expect("list");
            let pending = CacheEntry {
                kind: CACHE_KIND.into(),
                container_id: p.sandbox_id.clone(),
                network_name: list.name.clone(),
                if_name: "eth0".into(),
                netns: "/proc/self/ns/net".into(),
                cni_args: pod_cni_args(&p),
                capability_args: Map::new(),
                config: list.to_json().clone(),
                result: None,
                ips: vec![],
            };
            cache::write_atomic(&env.cache_file(&p.sandbox_id), &pending).expect("write");
            env.cni().setup(&p).await.expect("setup");
            assert_eq!(
                env.calls(),
                vec![
                    "DEL second eth0 netns=/proc/self/ns/net",
                    "DEL first eth0 netns=/proc/self/ns/net",
                    "DEL loopback lo netns=/proc/self/ns/net",
                    "ADD loopback lo netns=/proc/self/ns/net",
                    "ADD first eth0 netns=/proc/self/ns/net",
                    "ADD second eth0 netns=/proc/self/ns/net",
                ]
            );
            assert!(env.cni().cached(&p.sandbox_id).is_some());
        }

        #[tokio::test]
        async fn a_record_with_an_invalid_config_and_no_network_is_kept_and_reported() {
            let env = Env::new(LIST);
            let p = pod();
            let broken = CacheEntry {
                kind: CACHE_KIND.into(),
                container_id: p.sandbox_id.clone(),
                network_name: "fake".into(),
                if_name: "eth0".into(),
                netns: String::new(),
                cni_args: vec![],
                capability_args: Map::new(),
                config: json!({"name": "fake", "plugins": []}),
                result: None,
                ips: vec![],
            };
            let file = env.cache_file(&p.sandbox_id);
            cache::write_atomic(&file, &broken).expect("write");
            std::fs::remove_file(env.dir.path().join("conf/10-fake.conflist")).expect("rm");
            let err = env
                .cni()
                .teardown(&p.sandbox_id, None)
                .await
                .expect_err("cannot DEL");
            assert!(
                matches!(
                    err,
                    CniError::InvalidConfig {
                        source: ConfigError::NoPlugins,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert!(
                err.to_string().contains(&file.display().to_string()),
                "{err}"
            );
            assert!(file.exists(), "the record must survive for a later retry");
        }

        #[tokio::test]
        async fn teardown_with_nothing_cached_or_configured_is_ok() {
            let env = Env::new(LIST);
            std::fs::remove_file(env.dir.path().join("conf/10-fake.conflist")).expect("rm");
            env.cni()
                .teardown("never-set-up", None)
                .await
                .expect("no-op teardown");
            assert!(env.calls().is_empty());
        }

        #[tokio::test]
        async fn setup_refuses_a_missing_netns_and_missing_plugins_before_running_anything() {
            let env = Env::new(LIST);
            let mut p = pod();
            p.netns = env.dir.path().join("no-such-netns");
            assert!(matches!(
                env.cni().setup(&p).await,
                Err(CniError::InvalidPodNetwork { field: "netns", .. })
            ));
            std::fs::remove_file(env.dir.path().join("bin/second")).expect("rm");
            assert!(matches!(
                env.cni().setup(&pod()).await,
                Err(CniError::PluginNotFound { plugin, .. }) if plugin == "second"
            ));
            assert!(env.calls().is_empty());
            assert!(!env.cache_file(&pod().sandbox_id).exists());
        }
    }
}
