//! The containerd layer: images, containers, tasks, the event stream and OCI specs.
//! Talks containerd's native gRPC API (not CRI); what containerd's Go client does
//! above the raw services (pull, unpack, snapshots) is done here.

pub mod containers;
pub mod events;
pub mod exec;
pub mod image;
pub mod seccomp;
pub mod spec;
pub mod user;
pub mod stdio;

use std::path::Path;
use std::time::Duration;

use thiserror::Error;
use tonic::transport::Channel;

/// containerd could not be reached.
#[derive(Debug, Error)]
#[error("cannot connect to containerd at {path}: {source}")]
pub struct ConnectError {
    pub path: String,
    #[source]
    pub source: tonic::transport::Error,
}

/// Opens a gRPC channel to containerd's unix socket.
pub async fn connect(socket: &Path) -> Result<Channel, ConnectError> {
    containerd_client::connect(socket)
        .await
        .map_err(|source| ConnectError { path: socket.display().to_string(), source })
}

/// containerd's version string, e.g. `1.6.20~ds1`, with a deadline.
/// The directory of `snapshotter`'s store, from containerd's introspection
/// (the plugin's `root` export): where images are unpacked and containers'
/// writable layers live, i.e. the image filesystem (CRI's ImageFsInfo).
pub async fn snapshotter_root(channel: &Channel, snapshotter: &str) -> Option<std::path::PathBuf> {
    let mut c = containerd_client::services::v1::introspection_client::IntrospectionClient::new(channel.clone());
    let req = containerd_client::services::v1::PluginsRequest { filters: vec![format!("type==io.containerd.snapshotter.v1,id=={snapshotter}")] };
    let r = tokio::time::timeout(Duration::from_secs(5), c.plugins(req)).await.ok()?.ok()?.into_inner();
    r.plugins.into_iter().find_map(|p| p.exports.get("root").map(std::path::PathBuf::from))
}

pub async fn version(channel: &Channel) -> Result<String, tonic::Status> {
    let mut c = containerd_client::services::v1::version_client::VersionClient::new(channel.clone());
    match tokio::time::timeout(Duration::from_secs(5), c.version(())).await {
        Ok(r) => Ok(r?.into_inner().version),
        Err(_) => Err(tonic::Status::deadline_exceeded("containerd version call timed out")),
    }
}
