//! The API server side of the node: the client (from a kubeconfig), Node
//! registration and status, the node Lease, the pod source (a watch on pods bound
//! to this node), the pod status manager and the event sink. Mirrors
//! pkg/kubelet/{kubelet_node_status.go,nodelease,config/apiserver.go,status,events}.

pub mod bootstrap;
pub mod events;
pub mod lease;
pub mod mirror;
pub mod node;
pub mod objects;
pub mod pods;
pub mod runtime_classes;
pub mod services;
pub mod status;

use std::path::Path;

use thiserror::Error;

/// Errors setting up or talking to the API server.
#[derive(Debug, Error)]
pub enum ApiError {
    /// The kubeconfig could not be read or used.
    #[error("invalid kubeconfig {path}: {source}")]
    Kubeconfig { path: String, #[source] source: kube::config::KubeconfigError },
    /// A client could not be built from the kubeconfig.
    #[error("cannot build an API client from {path}: {source}")]
    Client { path: String, #[source] source: kube::Error },
    /// An API request failed.
    #[error("{op}: {source}")]
    Request { op: String, #[source] source: kube::Error },
}

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// The user agent upstream sends (`kubelet/v1.36.0 (linux/amd64) kubernetes/…`), with rkubelet's build.
pub fn user_agent() -> String {
    format!(
        "kubelet/{} ({}/{}) rkubelet/{}",
        crate::config::KUBERNETES_VERSION,
        std::env::consts::OS,
        node::go_arch(),
        env!("CARGO_PKG_VERSION")
    )
}

/// A client from a kubeconfig file (its current context).
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let p = path.display().to_string();
    let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| ApiError::Kubeconfig { path: p.clone(), source })?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|source| ApiError::Kubeconfig { path: p.clone(), source })?;
    cfg.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&user_agent()).unwrap_or(http::HeaderValue::from_static("kubelet")),
    ));
    kube::Client::try_from(cfg).map_err(|source| ApiError::Client { path: p, source })
}

/// True for a 404 from the API server.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// What a whole-resource list+watch saw: the full set (on each list and re-list),
/// then single changes.
pub enum Change<K> {
    Listed(Vec<K>),
    Applied(K),
    Deleted(K),
}

/// Lists and watches every object of `api` until `cancel` (kube-runtime's
/// watcher: resumes, re-lists on 410, backs off through outages), handing each
/// change to `on`; `what` names the resource in the warnings.
pub async fn reflect<K>(api: kube::Api<K>, what: &str, cancel: tokio_util::sync::CancellationToken, mut on: impl FnMut(Change<K>))
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{watcher, WatchStreamExt};
    let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
    let mut initial: Vec<K> = Vec::new();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => return,
            ev = stream.next() => ev,
        };
        match ev {
            None => return,
            Some(Ok(watcher::Event::Init)) => initial.clear(),
            Some(Ok(watcher::Event::InitApply(o))) => initial.push(o),
            Some(Ok(watcher::Event::InitDone)) => on(Change::Listed(std::mem::take(&mut initial))),
            Some(Ok(watcher::Event::Apply(o))) => on(Change::Applied(o)),
            Some(Ok(watcher::Event::Delete(o))) => on(Change::Deleted(o)),
            Some(Err(e)) => tracing::warn!(error = %e, "{what} watch failed; retrying with back-off"),
        }
    }
}

/// Sleeps until `at`; never returns without one (a retry that is not scheduled).
pub async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// True for a 409 from the API server.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
