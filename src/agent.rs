//! Wiring: connect to containerd, build the shared [`Context`], start the event
//! stream and the pod source, and run the manager loop until shutdown. Shutdown
//! never stops pods: the next agent adopts them.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::events::Recorder;
use crate::network::cni::{Cni, CniConfig};
use crate::pod::manager::{Context, Manager, Router};
use crate::pod::source;
use crate::runtime::containers::Containers;
use crate::runtime::image::{ImageService, PullOptions};

/// Where the last manifest errors are written for `rkubelet pods` to show.
pub const MANIFEST_ERRORS_FILE: &str = "manifest-errors.json";
/// Where standalone events are appended.
pub const EVENTS_FILE: &str = "events.jsonl";

/// The first docker config with credentials, in upstream's search order.
fn docker_config(root: &std::path::Path) -> Option<PathBuf> {
    let mut c = vec![root.join("config.json")];
    if let Some(h) = std::env::var_os("HOME") {
        c.push(PathBuf::from(h).join(".docker/config.json"));
    }
    c.push(PathBuf::from("/.docker/config.json"));
    c.into_iter().find(|p| p.is_file())
}

/// The interface of the default IPv4 route (from /proc/net/route).
pub fn default_route_interface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())
}

/// The node's primary IPv4 address: the address of the default route's interface.
pub fn host_ip() -> Option<String> {
    let iface = default_route_interface()?;
    let addrs = nix::ifaddrs::getifaddrs().ok()?;
    for a in addrs {
        if a.interface_name != iface {
            continue;
        }
        if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
            return Some(sin.ip().to_string());
        }
    }
    None
}

/// Connects to containerd, retrying until it answers or `cancel` fires.
async fn connect_containerd(cfg: &Config, cancel: &CancellationToken) -> Option<tonic::transport::Channel> {
    let mut delay = Duration::from_millis(200);
    loop {
        match crate::runtime::connect(&cfg.containerd_socket).await {
            Ok(ch) => match crate::runtime::version(&ch).await {
                Ok(v) => {
                    info!(version = %v, socket = %cfg.containerd_socket.display(), "connected to containerd");
                    return Some(ch);
                }
                Err(e) => warn!(error = %e.message(), "containerd is not answering; retrying"),
            },
            Err(e) => error!(error = %e, "containerd is unreachable; retrying (is containerd running?)"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The context every pod worker shares, the node's options, and the task that
/// posts events.
fn new_context(cfg: &Arc<Config>, channel: &tonic::transport::Channel, cni: Cni, client: Option<kube::Client>) -> (Arc<Context>, crate::api::node::NodeOptions, tokio::task::JoinHandle<()>) {
    let (recorder, events_task) = Recorder::new(cfg.root_dir.join(EVENTS_FILE), client.clone().map(|c| (c, cfg.node_name.clone())));
    let images = ImageService::new(
        channel.clone(),
        cfg.namespace.clone(),
        cfg.snapshotter.clone(),
        PullOptions {
            docker_config: docker_config(&cfg.root_dir),
            insecure_registries: vec![],
            hosts_dir: cfg.registry_config_path.clone(),
            credential_providers: cfg.credential_providers.clone(),
            max_parallel_pulls: if cfg.serialize_image_pulls { Some(1) } else { cfg.max_parallel_image_pulls.map(|n| n as usize) },
        },
    );
    let memory_capacity = crate::cgroups::memory_capacity();
    let cpu_capacity_milli = std::thread::available_parallelism().map(|n| n.get() as i64 * 1000).unwrap_or(1000);
    let node_opts = node_options(cfg, memory_capacity);
    let storage = crate::api::node::ephemeral_storage_capacity(&cfg.root_dir);
    // The same allocatable the Node reports (huge page pools are not pod memory).
    let pools = crate::api::node::read_hugepages(std::path::Path::new("/sys/kernel/mm/hugepages"));
    let hugepages: i64 = pools.iter().map(|(_, b)| b).sum();
    let allocatable = crate::pod::resources::Allocatable {
        cpu_milli: (cpu_capacity_milli - node_opts.reserved_cpu_milli).max(0),
        memory: (memory_capacity - node_opts.reserved_memory_bytes - node_opts.eviction_memory_bytes - hugepages).max(0),
        ephemeral_storage: ((storage as f64 * (1.0 - cfg.eviction_nodefs_fraction(storage))) as i64 - node_opts.reserved_storage_bytes).max(0),
    };
    crate::cgroups::set_driver(cfg.cgroup_driver);
    let ctx = Arc::new(Context {
        cgroups: Arc::new(crate::cgroups::pods::PodCgroups::new(cfg.cgroup_driver, cfg.pod_pids_limit)),
        shutdown: Arc::default(),
        eviction: Arc::default(),
        image_usage: Arc::default(),
        containers: Containers::new(channel.clone(), cfg.namespace.clone(), cfg.snapshotter.clone()),
        images,
        cni,
        recorder,
        router: Router::default(),
        oom: crate::cgroups::own_oom_restriction(),
        memory_capacity,
        capabilities: crate::runtime::spec::current_capabilities(),
        cpu_capacity_milli,
        host_ip: cfg.node_ip.clone().or_else(host_ip),
        dns: crate::pod::dns::Configurer {
            cluster_dns: cfg.cluster_dns.clone(),
            cluster_domain: cfg.cluster_domain.clone(),
            resolv_conf: cfg.resolv_conf.clone(),
            node_ips: cfg.node_ip.iter().chain(host_ip().as_ref()).filter_map(|i| i.parse().ok()).collect(),
        },
        allocatable,
        image_users: Default::default(),
        node: crate::pod::admission::NodeResources {
            name: cfg.node_name.clone(),
            cpu_milli: allocatable.cpu_milli,
            memory_bytes: allocatable.memory,
            pods: cfg.max_pods as i64,
            labels: crate::api::node::node_labels(&node_opts),
            hugepages: pools.iter().map(|(page, bytes)| (crate::api::node::hugepage_resource(*page), *bytes)).collect(),
        },
        sysctls: sysctl_allowlist(&cfg.allowed_unsafe_sysctls),
        apparmor_host: crate::pod::apparmor::host_support(std::path::Path::new("/sys")),
        status: crate::api::status::StatusManager::new(client.clone()),
        objects: client.clone().map(crate::api::objects::ObjectCache::new),
        services: client.as_ref().map(|_| crate::api::services::Services::default()),
        runtime_classes: client.as_ref().map(|_| crate::api::runtime_classes::RuntimeClasses::default()),
        metrics: Arc::new(crate::metrics::Metrics::new(&cfg.node_name)),
        allocated: Default::default(),
        client: client.clone(),
        config: cfg.clone(),
    });
    (ctx, node_opts, events_task)
}

/// The kernel's safe sysctls and `allowedUnsafeSysctls` (checked when the
/// config was read); should that fail anyway, no sysctl is allowed.
fn sysctl_allowlist(unsafe_patterns: &[String]) -> crate::pod::sysctl::Allowlist {
    crate::pod::sysctl::Allowlist::new(crate::kernel::KernelVersion::current(), unsafe_patterns).unwrap_or_else(|e| {
        warn!(error = %e, "cannot build the sysctl allowlist; pods with sysctls will be rejected");
        Default::default()
    })
}

/// `rkubelet reset`: stops and removes every pod of this node (of every node
/// with `all_nodes`) that containerd or the root dir still has (the start-up
/// orphan cleanup with no pod source, killing at once), and waits until they
/// are gone. Returns how many pods it removed and the ids of the containers
/// still there.
pub async fn remove_all_pods(mut cfg: Config, all_nodes: bool, timeout: Duration) -> anyhow::Result<(usize, Vec<String>)> {
    cfg.kill_at_once = true;
    let cfg = Arc::new(cfg);
    let cancel = CancellationToken::new();
    let channel = tokio::time::timeout(Duration::from_secs(30), connect_containerd(&cfg, &cancel))
        .await
        .ok()
        .flatten()
        .ok_or_else(|| anyhow::anyhow!("containerd is not reachable at {}", cfg.containerd_socket.display()))?;
    let cni = Cni::new(CniConfig { bin_dirs: cfg.cni_bin_dirs.clone(), conf_dir: cfg.cni_conf_dir.clone(), cache_dir: cfg.cni_cache_dir.clone() });
    let (ctx, _, events_task) = new_context(&cfg, &channel, cni, None);
    let mut manager = Manager::new(ctx.clone(), cancel.clone());
    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    let ev_task = tokio::spawn(crate::runtime::events::run(channel.clone(), cfg.namespace.clone(), ev_tx, cancel.clone()));
    let node = (!all_nodes).then_some(cfg.node_name.as_str());
    manager.clean_orphans_of(node).await;
    let mut removed = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while manager.busy() {
        tokio::select! {
            Some(ev) = ev_rx.recv() => manager.on_task_event(&ev),
            r = manager.reap() => removed += usize::from(r.is_some()),
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    cancel.cancel();
    manager.drain().await;
    let left = manager.containers_of(node).await?;
    let _ = ev_task.await;
    drop(manager);
    drop(ctx);
    events_task.abort();
    Ok((removed, left))
}

/// At start: upstream's lenient-decoding line for the config file's unknown fields
/// (`pkg/kubelet/kubeletconfig/util/codec`), and one warning naming every flag and
/// field given that rkubelet does not implement.
fn log_compat(cfg: &Config) {
    if let (Some(err), Some(file)) = (cfg.compat.strict_decoding_error(), &cfg.config_file) {
        info!(file = %file.display(), err, "Using lenient decoding as strict decoding failed");
    }
    if !cfg.compat.not_implemented.is_empty() {
        warn!(settings = ?cfg.compat.not_implemented, "upstream kubelet flags and config fields rkubelet does not implement yet are ignored; remove them or expect upstream behaviour to differ");
    }
}

/// The eviction manager's settings from the configuration.
fn eviction_settings(cfg: &Config, image_fs: std::path::PathBuf, reclaim: Option<crate::eviction::Reclaim>, metrics: Option<Arc<crate::metrics::Metrics>>) -> crate::eviction::Settings {
    crate::eviction::Settings {
        thresholds: crate::eviction::threshold::resolve(&cfg.eviction_hard, &cfg.eviction_soft, &cfg.eviction_soft_grace_period, &cfg.eviction_minimum_reclaim),
        transition: cfg.eviction_pressure_transition_period,
        max_pod_grace_seconds: cfg.eviction_max_pod_grace_period,
        paths: crate::eviction::observe::Paths { root_dir: cfg.root_dir.clone(), image_fs },
        period: crate::eviction::MONITORING_PERIOD,
        reclaim,
        metrics,
        notify: cfg.kernel_memcg_notification,
    }
}

/// Runs the agent until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let cancel = CancellationToken::new();
    // WATCHDOG=1 from the start: waiting for containerd or the API server is not a hang.
    let watchdog = crate::systemd::spawn_watchdog(cancel.clone());
    tokio::fs::create_dir_all(cfg.root_dir.join("pods")).await?;
    // For `rkubelet reset`, after kubeadm reset has removed the flags that named the node.
    tokio::fs::write(cfg.root_dir.join(crate::reset::NODE_NAME_FILE), &cfg.node_name).await?;
    info!(node = %cfg.node_name, root_dir = %cfg.root_dir.display(), version = %crate::config::version_line(), "rkubelet starting");
    log_compat(&cfg);
    // A cgroup driver that cannot work here stops the agent, as upstream's does.
    if let Some((problem, fix)) = crate::cgroups::check_driver(cfg.cgroup_driver) {
        anyhow::bail!("failed to run Kubelet: {problem}; {fix}");
    }

    tokio::pin!(shutdown);
    let channel = tokio::select! {
        c = connect_containerd(&cfg, &cancel) => c,
        _ = &mut shutdown => None,
    };
    let Some(channel) = channel else { return Ok(()) };

    let cni = Cni::new(CniConfig { bin_dirs: cfg.cni_bin_dirs.clone(), conf_dir: cfg.cni_conf_dir.clone(), cache_dir: cfg.cni_cache_dir.clone() });
    match cni.status() {
        Ok(()) => info!(conf_dir = %cfg.cni_conf_dir.display(), "CNI network ready"),
        Err(e) => warn!(error = %e, "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady"),
    }
    // The API server, when a kubeconfig is given (after the TLS bootstrap, if needed).
    let client = match &cfg.kubeconfig {
        Some(_) => tokio::select! {
            c = crate::api::bootstrap::client(&cfg, &cancel) => Some(c?),
            _ = &mut shutdown => return Ok(()),
        },
        None => None,
    };
    let runtime_version = crate::runtime::version(&channel).await.unwrap_or_default();
    let (ctx, node_opts, events_task) = new_context(&cfg, &channel, cni, client.clone());
    let (cpu_capacity_milli, memory_capacity) = (ctx.cpu_capacity_milli, ctx.memory_capacity);
    node_startup(&ctx, &node_opts, cpu_capacity_milli, memory_capacity).await;
    // The image filesystem: containerd's snapshotter store (CRI's ImageFsInfo).
    let image_fs = crate::runtime::snapshotter_root(&channel, &cfg.snapshotter).await.unwrap_or_else(|| std::path::PathBuf::from("/var/lib/containerd"));
    let server_tasks = start_server(&cfg, client.clone(), ctx.host_ip.clone(), ctx.containers.clone(), ctx.metrics.clone(), image_fs.clone(), &cancel);
    let mut manager = Manager::new(ctx.clone(), cancel.clone());

    let (ev_tx, mut ev_rx) = mpsc::channel(256);
    let ev_task = tokio::spawn(crate::runtime::events::run(channel.clone(), cfg.namespace.clone(), ev_tx, cancel.clone()));

    let (src_tx, mut src_rx) = mpsc::channel(4);
    let src_task = match &cfg.pod_manifest_path {
        Some(dir) => Some(tokio::spawn(source::watch(dir.clone(), cfg.node_name.clone(), cfg.file_check_frequency, src_tx, cancel.clone()))),
        None => {
            drop(src_tx);
            None
        }
    };
    // The API server side: node registration and status, lease, pod watch, status.
    let (api_tx, mut api_rx) = tokio::sync::watch::channel::<crate::api::pods::PodSet>(None);
    let mut api_tasks = Vec::new();
    let mut node_state = None;
    if let Some(client) = &client {
        let (tasks, readiness, node_uid) = start_api(client, &cfg, &ctx, &channel, &runtime_version, api_tx, &cancel);
        api_tasks.extend(tasks);
        node_state = Some((readiness, node_uid));
    }
    // systemd: READY=1 once the pods are adopted and (joined) the node registered;
    // STATUS= lines as readiness and the pod count change; watchdog pings.
    let notifier = crate::systemd::Notifier::default();
    let status_line = |manager: &Manager| match &node_state {
        Some((r, uid)) => crate::systemd::status_line(Some((&r.borrow(), uid.borrow().is_some())), manager.pod_count()),
        None => crate::systemd::status_line(None, manager.pod_count()),
    };
    let registered = || node_state.as_ref().map(|(_, uid)| uid.borrow().is_some()).unwrap_or(true);
    let mut file_pods: Option<Vec<k8s_openapi::api::core::v1::Pod>> = if src_task.is_some() { None } else { Some(Vec::new()) };
    if src_task.is_none() {
        // No static pods at all: mirror pods left from an earlier configuration go.
        ctx.status.mirrors().set_static(&[]);
    }
    let mut ready = false;
    if file_pods.is_some() && client.is_none() {
        // Neither a manifest dir nor an API server: nothing will ever be desired.
        manager.adopt_or_clean_orphans().await;
        ready = true;
        notifier.ready(&status_line(&manager));
    }
    let mut status_tick = tokio::time::interval(Duration::from_secs(2));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Graceful node shutdown: logind's inhibitor lock, and the active pods when it fires.
    let (shutdown_tx, mut shutdown_rx) = mpsc::channel::<crate::shutdown::PodsRequest>(1);
    // Garbage collection: images (at start, then every 5 min) and exited containers (every minute).
    let image_gc = Arc::new(crate::gc::images::ImageGc::new(
        crate::gc::images::Policy {
            high_percent: cfg.image_gc_high_threshold_percent,
            low_percent: cfg.image_gc_low_threshold_percent,
            min_age: cfg.image_minimum_gc_age,
            max_age: cfg.image_maximum_gc_age,
        },
        ctx.images.clone(),
        ctx.containers.clone(),
        vec![cfg.pause_image.clone()],
        image_fs.clone(),
        &cfg.root_dir,
        ctx.metrics.clone(),
        ctx.image_usage.clone(),
    ));
    let gc_tasks = [
        tokio::spawn(crate::gc::images::run(image_gc.clone(), ctx.recorder.clone(), cfg.node_name.clone(), cancel.clone())),
        tokio::spawn(crate::gc::containers::run(ctx.containers.clone(), cfg.root_dir.clone(), cfg.node_name.clone(), cancel.clone())),
    ];
    let reclaim = crate::eviction::Reclaim { image_gc, containers: ctx.containers.clone(), root_dir: cfg.root_dir.clone(), pod_logs_dir: cfg.pod_logs_dir.clone(), node: cfg.node_name.clone() };
    // The eviction manager asks the same way for the pods it may evict.
    let eviction_task = tokio::spawn(crate::eviction::run(
        ctx.eviction.clone(),
        eviction_settings(&cfg, image_fs, Some(reclaim), Some(ctx.metrics.clone())),
        shutdown_tx.clone(),
        cfg.root_dir.clone(),
        ctx.recorder.clone(),
        cfg.node_name.clone(),
        cancel.clone(),
    ));
    let shutdown_task = (!cfg.shutdown_groups.is_empty()).then(|| {
        let args = (ctx.shutdown.clone(), cfg.shutdown_groups.clone(), ctx.recorder.clone(), cfg.node_name.clone());
        tokio::spawn(crate::shutdown::run(args.0, args.1, args.2, args.3, shutdown_tx, cancel.clone()))
    });

    loop {
        let mut changed = false;
        tokio::select! {
            _ = status_tick.tick() => {
                if ready && registered() {
                    notifier.ready(&status_line(&manager));
                }
                // A burst of pod starts leaves freed heap pages that glibc keeps;
                // hand them back every tick (a trim of this small heap is well under 1 ms).
                crate::memory::release_free_memory();
            }
            _ = &mut shutdown => {
                info!("shutting down; pods keep running");
                break;
            }
            Some(snap) = src_rx.recv() => {
                let errors = snap.errors.clone();
                let _ = crate::pod::store::write_atomic(
                    &cfg.root_dir.join(MANIFEST_ERRORS_FILE),
                    serde_json::to_vec_pretty(&errors).unwrap_or_default().as_slice(),
                );
                ctx.status.mirrors().set_static(&snap.pods);
                file_pods = Some(snap.pods);
                changed = true;
            }
            r = api_rx.changed(), if client.is_some() => {
                if r.is_ok() { changed = true; }
            }
            Some(ev) = ev_rx.recv() => manager.on_task_event(&ev),
            Some(reply) = shutdown_rx.recv() => {
                let _ = reply.send(manager.active_pods());
            }
            _ = manager.reap() => {}
        }
        if changed {
            let api_pods = api_rx.borrow().clone();
            let mut desired = file_pods.clone().unwrap_or_default();
            if let Some(api) = &api_pods {
                desired.extend(api.pods.iter().cloned());
                ctx.status.mirrors().observe(&api.mirrors);
            }
            manager.set_desired(desired);
            // Orphans are only known once every source has listed its pods.
            let sources_ready = file_pods.is_some() && (client.is_none() || api_pods.is_some());
            if sources_ready && !ready {
                manager.adopt_or_clean_orphans().await;
                ready = true;
            }
            if ready && registered() {
                notifier.ready(&status_line(&manager));
            }
        }
    }
    crate::systemd::notify(&["STOPPING=1", "STATUS=Stopping; pods keep running"]);
    cancel.cancel();
    for t in api_tasks.into_iter().chain(server_tasks).chain(watchdog).chain(shutdown_task).chain([eviction_task]).chain(gc_tasks) {
        let _ = t.await;
    }
    manager.drain().await;
    let _ = ev_task.await;
    if let Some(t) = src_task {
        let _ = t.await;
    }
    drop(manager);
    drop(ctx);
    events_task.abort();
    Ok(())
}

/// Starts `/healthz` on healthzBindAddress:healthzPort and the authenticated
/// kubelet API on address:port. The API needs the API server for webhook
/// authentication/authorization, so standalone it runs only with AlwaysAllow.
fn start_server(
    cfg: &Config,
    client: Option<kube::Client>,
    host_ip: Option<String>,
    containers: Containers,
    metrics: Arc<crate::metrics::Metrics>,
    image_fs: std::path::PathBuf,
    cancel: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::config::AuthorizationMode;
    let mut tasks = Vec::new();
    let addr = |host: &str, port: i32| format!("{}:{port}", if host.contains(':') { format!("[{host}]") } else { host.to_string() }).parse::<std::net::SocketAddr>();
    if cfg.healthz_port > 0 {
        match addr(&cfg.healthz_bind_address, cfg.healthz_port) {
            Ok(a) => tasks.push(tokio::spawn(crate::server::serve_healthz(a, cancel.clone()))),
            Err(e) => warn!(error = %e, "invalid healthz address; /healthz is off"),
        }
    }
    let webhook = cfg.authorization.mode == AuthorizationMode::Webhook || cfg.authentication.webhook_enabled;
    if cfg.port <= 0 || (client.is_none() && cfg.authorization.mode == AuthorizationMode::Webhook) {
        if cfg.port > 0 {
            info!("kubelet API (port {}) needs an API server for webhook authorization; not serving it", cfg.port);
        }
        return tasks;
    }
    let ips: Vec<String> = cfg.node_ip.iter().cloned().chain(host_ip).collect();
    let resolver = Arc::new(crate::server::tls::Resolver::default());
    let certificate = match (&client, cfg.server_tls_bootstrap) {
        // The cluster signs the serving certificate (serverTLSBootstrap).
        (Some(c), true) => {
            let ip_addrs = ips.iter().filter_map(|i| i.parse().ok()).collect();
            tasks.push(tokio::spawn(crate::server::serving::run(
                resolver.clone(),
                crate::api::bootstrap::CertStore::serving(&cfg.cert_dir),
                c.clone(),
                cfg.node_name.clone(),
                vec![cfg.node_name.clone()],
                ip_addrs,
                cancel.clone(),
            )));
            Ok(())
        }
        _ => crate::server::tls::serving_files(cfg.tls_files.clone(), &cfg.cert_dir, &cfg.node_name, &ips).and_then(|f| resolver.set_files(&f)),
    };
    for what in &cfg.tls.ignored {
        warn!(setting = %what, "kubelet API TLS: accepted but not served");
    }
    let tls = certificate.and_then(|_| crate::server::tls::server_config(resolver, cfg.authentication.client_ca_file.as_deref(), &cfg.tls));
    let (tls, a) = match (tls, addr(&cfg.address, cfg.port)) {
        (Ok(t), Ok(a)) => (t, a),
        (Err(e), _) => {
            error!(error = %e, "kubelet API TLS setup failed; not serving it");
            return tasks;
        }
        (_, Err(e)) => {
            error!(error = %e, "invalid kubelet API address; not serving it");
            return tasks;
        }
    };
    let sar = (cfg.authorization.mode == AuthorizationMode::Webhook).then_some((cfg.authorization.webhook_cache_authorized_ttl, cfg.authorization.webhook_cache_unauthorized_ttl));
    let auth = crate::server::auth::Auth::new(
        cfg.node_name.clone(),
        client.filter(|_| webhook),
        cfg.authentication.anonymous_enabled,
        cfg.authentication.webhook_enabled,
        cfg.authentication.webhook_cache_ttl,
        sar,
    );
    // FIFOs of exec sessions an earlier run left behind (their processes were the shim's to end).
    let _ = std::fs::remove_dir_all(cfg.root_dir.join("streaming-exec"));
    let configz = serde_json::json!({ "kubeletconfig": cfg.to_kubelet_configuration() });
    // CPU samples for /stats/summary, on cadvisor's housekeeping interval.
    let sampler = Arc::new(crate::server::stats::Sampler::default());
    tasks.push(tokio::spawn(crate::server::stats::run_housekeeping(sampler.clone(), cfg.root_dir.clone(), cancel.clone())));
    let state = Arc::new(crate::server::State {
        auth,
        configz,
        node: cfg.node_name.clone(),
        sampler,
        root_dir: cfg.root_dir.clone(),
        pod_logs_dir: cfg.pod_logs_dir.clone(),
        image_fs,
        containers: Some(containers),
        streaming_idle_timeout: cfg.streaming_connection_idle_timeout,
        metrics,
    });
    tasks.push(tokio::spawn(crate::server::serve(a, tls, state, cancel.clone())));
    tasks
}

/// Upstream's CgroupV1 warning text.
const CGROUP_V1_MESSAGE: &str = "cgroup v1 detected. cgroup v1 support is deprecated and will be removed in a future release. Please migrate to cgroup v2. More information at https://git.k8s.io/enhancements/keps/sig-node/5573-remove-cgroup-v1";

/// What the kubelet does once at start: the `Starting` event, the cgroup v1
/// warning, and node allocatable enforced on the `kubepods` cgroup.
async fn node_startup(ctx: &Context, o: &crate::api::node::NodeOptions, cpu_milli: i64, memory: i64) {
    use crate::events::reason;
    let node = &ctx.config.node_name;
    ctx.recorder.node(node, "Normal", reason::STARTING, "Starting kubelet.");
    if crate::cgroups::uses_v1() {
        ctx.recorder.node(node, "Warning", reason::CGROUP_V1, CGROUP_V1_MESSAGE);
    }
    if let Some(problem) = ctx.dns.resolv_conf.as_deref().and_then(|p| crate::pod::dns::check_resolv_conf(p, ctx.dns.cluster_domain.as_deref())) {
        warn!("{problem}");
        ctx.recorder.node(node, "Warning", "CheckLimitsForResolvConf", problem);
    }
    // Enforced against capacity minus reservations (eviction thresholds stay usable).
    match ctx.cgroups.enforce_node_allocatable(memory - o.reserved_memory_bytes, cpu_milli - o.reserved_cpu_milli).await {
        Ok(dir) => {
            info!(cgroup = %dir, driver = ?ctx.cgroups.driver, "node allocatable enforced on the pods cgroup");
            ctx.recorder.node(node, "Normal", reason::NODE_ALLOCATABLE_ENFORCED, "Updated Node Allocatable limit across pods");
        }
        Err(e) => {
            warn!(error = %e, "cannot enforce node allocatable on the pods cgroup");
            ctx.recorder.node(node, "Warning", reason::FAILED_NODE_ALLOCATABLE_ENFORCEMENT, format!("Failed to update Node Allocatable Limits [\"kubepods\"]: {e}"));
        }
    }
}

/// How the node registers and what it keeps back from pods, from the configuration.
fn node_options(cfg: &Config, memory_capacity: i64) -> crate::api::node::NodeOptions {
    crate::api::node::NodeOptions {
        name: cfg.node_name.clone(),
        node_ip: cfg.node_ip.clone(),
        labels: cfg.node_labels.clone(),
        taints: cfg.taints.clone(),
        max_pods: cfg.max_pods,
        eviction_memory_bytes: cfg.eviction_memory_bytes(memory_capacity),
        eviction_nodefs_fraction: 0.0,
        reserved_cpu_milli: cfg.reserved("cpu"),
        reserved_memory_bytes: cfg.reserved("memory"),
        reserved_storage_bytes: cfg.reserved("ephemeral-storage"),
        kubelet_port: cfg.port,
        runtime_handlers: cfg.runtime_handlers.keys().cloned().collect(),
    }
}

/// Starts the node, lease, pod-watch and status tasks.
fn start_api(
    client: &kube::Client,
    cfg: &Arc<Config>,
    ctx: &Arc<Context>,
    channel: &tonic::transport::Channel,
    runtime_version: &str,
    pods_tx: tokio::sync::watch::Sender<crate::api::pods::PodSet>,
    cancel: &CancellationToken,
) -> (Vec<tokio::task::JoinHandle<()>>, tokio::sync::watch::Receiver<crate::api::node::Readiness>, tokio::sync::watch::Receiver<Option<String>>) {
    use crate::api::node::{MachineInfo, Readiness};
    let machine = MachineInfo::read(&cfg.root_dir, runtime_version);
    let mut opts = node_options(cfg, machine.memory_bytes);
    opts.eviction_nodefs_fraction = cfg.eviction_nodefs_fraction(machine.ephemeral_storage_bytes);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(Readiness { runtime_ok: true, network_error: Some(crate::api::node::NOT_CHECKED.into()), shutting_down: false, pressure: vec![] });
    let (uid_tx, uid_rx) = tokio::sync::watch::channel(None);
    let (readiness, node_uid) = (ready_rx.clone(), uid_rx.clone());
    let mut tasks = Vec::new();
    // Runtime and network readiness, re-checked every few seconds (upstream: 5 s).
    {
        let (cni, channel, cancel, shutdown, eviction) = (ctx.cni.clone(), channel.clone(), cancel.clone(), ctx.shutdown.clone(), ctx.eviction.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let runtime_ok = crate::runtime::version(&channel).await.is_ok();
                let network_error = cni.status().err().map(|e| e.to_string());
                let shutting_down = shutdown.shutting_down();
                let pressure = eviction.conditions();
                ready_tx.send_if_modified(|r| {
                    let new = Readiness { runtime_ok, network_error, shutting_down, pressure };
                    let changed = *r != new;
                    *r = new;
                    changed
                });
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }));
    }
    tasks.push(tokio::spawn(crate::api::node::run(
        client.clone(),
        opts,
        machine,
        ctx.host_ip.clone(),
        ready_rx,
        uid_tx,
        cfg.node_status_update_frequency,
        cfg.node_status_report_frequency,
        ctx.recorder.clone(),
        cancel.clone(),
    )));
    tasks.push(tokio::spawn(crate::api::lease::run(client.clone(), cfg.node_name.clone(), cfg.node_lease_duration_seconds, uid_rx, cancel.clone())));
    tasks.push(tokio::spawn(crate::api::pods::run(client.clone(), cfg.node_name.clone(), pods_tx, cancel.clone())));
    if let Some(services) = &ctx.services {
        tasks.push(tokio::spawn(crate::api::services::run(client.clone(), services.clone(), cancel.clone())));
    }
    if let Some(classes) = &ctx.runtime_classes {
        tasks.push(tokio::spawn(crate::api::runtime_classes::run(client.clone(), classes.clone(), cancel.clone())));
    }
    tasks.push(tokio::spawn(ctx.status.clone().run(cancel.clone())));
    tasks.push(tokio::spawn(ctx.status.mirrors().clone().run(client.clone(), cfg.node_name.clone(), node_uid.clone(), cancel.clone())));
    (tasks, readiness, node_uid)
}

