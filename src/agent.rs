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

/// The node's primary IPv4 address: the address of the default route's interface.
pub fn host_ip() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let iface = routes
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[1] == "00000000")
        .map(|f| f[0].to_string())?;
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

/// Runs the agent until `shutdown` resolves.
pub async fn run(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let cancel = CancellationToken::new();
    tokio::fs::create_dir_all(cfg.root_dir.join("pods")).await?;
    info!(node = %cfg.node_name, root_dir = %cfg.root_dir.display(), version = %crate::config::version_line(), "rkubelet starting");

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
    let (recorder, events_task) = Recorder::to_file(cfg.root_dir.join(EVENTS_FILE));
    let images = ImageService::new(
        channel.clone(),
        cfg.namespace.clone(),
        cfg.snapshotter.clone(),
        PullOptions { docker_config: docker_config(&cfg.root_dir), insecure_registries: vec![] },
    );
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let ctx = Arc::new(Context {
        containers: Containers::new(channel.clone(), cfg.namespace.clone(), cfg.snapshotter.clone()),
        images,
        cni,
        recorder,
        router: Router::default(),
        oom: crate::cgroups::own_oom_restriction(),
        memory_capacity: crate::cgroups::memory_capacity(),
        capabilities: crate::runtime::spec::current_capabilities(),
        cpu_capacity_milli: std::thread::available_parallelism().map(|n| n.get() as i64 * 1000).unwrap_or(1000),
        host_ip: host_ip(),
        host_resolv,
        config: cfg.clone(),
    });
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
    let mut ready = false;
    if src_task.is_none() {
        manager.adopt_or_clean_orphans().await;
        ready = true;
        notify_ready(&manager);
    }

    loop {
        tokio::select! {
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
                manager.set_desired(snap.pods);
                if !ready {
                    manager.adopt_or_clean_orphans().await;
                    ready = true;
                    notify_ready(&manager);
                }
            }
            Some(ev) = ev_rx.recv() => manager.on_task_event(&ev),
            _ = manager.reap() => {}
        }
    }
    cancel.cancel();
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

fn notify_ready(manager: &Manager) {
    let status = format!("STATUS=Running; {} pods", manager.pod_count());
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Custom(&status)]);
    info!("agent ready");
}
