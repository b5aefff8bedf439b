//! Thin typed calls to the containerd services an image pull needs (images,
//! content, leases, snapshots, diff), each carrying the `containerd-namespace`
//! header and, where resources are created, the `containerd-lease` header.
//!
//! Calls return `tonic::Status` so callers can branch on `NotFound` /
//! `AlreadyExists` / `Unavailable` and add their own context.
//! [`ContentWriter`] speaks the content service's `Write` stream the way the Go
//! client's `remoteWriter` does: STAT to open (and lock) the ingest, WRITE
//! chunks at increasing offsets, COMMIT with the expected digest and size.

use std::collections::{BTreeMap, HashMap};

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteImageRequest, DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image, ListImagesRequest,
    Info as ContentInfo, InfoRequest, ReadContentRequest, Resource, UpdateImageRequest,
    UpdateRequest as UpdateContentRequest, WriteAction, WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::{Descriptor as ProtoDescriptor, Mount};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tracing::{debug, warn};

/// gRPC header naming the containerd namespace of a request.
const NAMESPACE_HEADER: &str = "containerd-namespace";
/// gRPC header naming the lease that new resources are added to.
const LEASE_HEADER: &str = "containerd-lease";
/// Lease label after which containerd's GC drops a lease nobody deleted.
const LEASE_EXPIRE_LABEL: &str = "containerd.io/gc.expire";
/// Lease lifetime when the agent dies mid-pull (the Go client's default).
const LEASE_TTL: chrono::Duration = chrono::Duration::hours(24);
/// Largest WRITE message; containerd accepts 16 MiB, the Go client sends 1 MiB.
pub(crate) const WRITE_CHUNK: usize = 1 << 20;

/// The containerd services of one namespace and snapshotter.
#[derive(Clone)]
pub(crate) struct Containerd {
    channel: Channel,
    namespace: String,
    /// The namespace as a header value; `None` when it is not valid ASCII
    /// metadata, which makes every call fail with `InvalidArgument`.
    namespace_header: Option<AsciiMetadataValue>,
    snapshotter: String,
}

impl Containerd {
    pub(crate) fn new(channel: Channel, namespace: String, snapshotter: String) -> Self {
        let namespace_header = AsciiMetadataValue::try_from(namespace.as_str()).ok();
        Self {
            channel,
            namespace,
            namespace_header,
            snapshotter,
        }
    }

    /// The snapshotter images are unpacked into.
    pub(crate) fn snapshotter(&self) -> &str {
        &self.snapshotter
    }

    /// Wraps a message with the namespace (and lease) headers.
    fn request<T>(&self, message: T, lease: Option<&Lease>) -> Result<Request<T>, Status> {
        let mut request = Request::new(message);
        let namespace = self.namespace_header.clone().ok_or_else(|| {
            Status::invalid_argument(format!("invalid containerd namespace {:?}", self.namespace))
        })?;
        request.metadata_mut().insert(NAMESPACE_HEADER, namespace);
        if let Some(lease) = lease {
            request
                .metadata_mut()
                .insert(LEASE_HEADER, lease.header.clone());
        }
        Ok(request)
    }

    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }

    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }

    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    // ---- images -------------------------------------------------------------

    /// The image record `name`, or `None`.
    pub(crate) async fn get_image(&self, name: &str) -> Result<Option<Image>, Status> {
        let request = self.request(
            GetImageRequest {
                name: name.to_owned(),
            },
            None,
        )?;
        match self.images().get(request).await {
            Ok(response) => Ok(response.into_inner().image),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Creates the image record, or points an existing one at the new target
    /// and sets the given labels (the CRI plugin's `createImageReference`).
    pub(crate) async fn put_image(&self, image: Image) -> Result<(), Status> {
        let request = self.request(
            CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            },
            None,
        )?;
        match self.images().create(request).await {
            Ok(_) => return Ok(()),
            Err(status) if status.code() == Code::AlreadyExists => {}
            Err(status) => return Err(status),
        }
        let mut paths = vec!["target".to_owned()];
        paths.extend(image.labels.keys().map(|key| format!("labels.{key}")));
        let request = self.request(
            UpdateImageRequest {
                image: Some(image),
                update_mask: Some(prost_types::FieldMask { paths }),
                source_date_epoch: None,
            },
            None,
        )?;
        self.images().update(request).await.map(drop)
    }

    /// Every image record of the namespace.
    pub(crate) async fn list_images(&self) -> Result<Vec<Image>, Status> {
        let request = self.request(ListImagesRequest { filters: Vec::new() }, None)?;
        Ok(self.images().list(request).await?.into_inner().images)
    }

    /// Deletes an image record; `false` when there was none.
    pub(crate) async fn delete_image(&self, name: &str) -> Result<bool, Status> {
        let request = self.request(
            DeleteImageRequest {
                name: name.to_owned(),
                sync: false,
                target: None,
            },
            None,
        )?;
        match self.images().delete(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    // ---- content ------------------------------------------------------------

    /// Metadata of a blob, or `None` when this namespace does not have it.
    pub(crate) async fn content_info(&self, digest: &str) -> Result<Option<ContentInfo>, Status> {
        let request = self.request(
            InfoRequest {
                digest: digest.to_owned(),
            },
            None,
        )?;
        match self.content().info(request).await {
            Ok(response) => Ok(response.into_inner().info),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(status),
        }
    }

    /// Reads a whole blob of at most `limit` bytes; `None` when it is absent.
    pub(crate) async fn read_content(
        &self,
        digest: &str,
        limit: usize,
    ) -> Result<Option<Vec<u8>>, Status> {
        let request = self.request(
            ReadContentRequest {
                digest: digest.to_owned(),
                offset: 0,
                size: 0,
            },
            None,
        )?;
        let mut stream = match self.content().read(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(status),
        };
        let mut data = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    if data.len() + chunk.data.len() > limit {
                        return Err(Status::resource_exhausted(format!(
                            "content {digest} is larger than {limit} bytes"
                        )));
                    }
                    data.extend_from_slice(&chunk.data);
                }
                Ok(None) => return Ok(Some(data)),
                Err(status) if status.code() == Code::NotFound && data.is_empty() => {
                    return Ok(None)
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// Sets labels on a blob, leaving its other labels alone.
    pub(crate) async fn set_content_labels(
        &self,
        digest: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), Status> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|key| format!("labels.{key}")).collect();
        let info = ContentInfo {
            digest: digest.to_owned(),
            labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Default::default()
        };
        let request = self.request(
            UpdateContentRequest {
                info: Some(info),
                update_mask: Some(prost_types::FieldMask { paths }),
            },
            None,
        )?;
        self.content().update(request).await.map(drop)
    }

    /// Opens the ingest `reference` for a blob of `size` bytes with digest
    /// `digest`. `Ok(None)` when the blob is already committed. A concurrent
    /// writer of the same ingest makes containerd answer `Unavailable`.
    pub(crate) async fn open_writer(
        &self,
        reference: &str,
        digest: &str,
        size: i64,
        lease: &Lease,
    ) -> Result<Option<ContentWriter>, Status> {
        let (tx, rx) = mpsc::channel(1);
        let stat = WriteContentRequest {
            action: WriteAction::Stat.into(),
            r#ref: reference.to_owned(),
            total: size,
            expected: digest.to_owned(),
            ..Default::default()
        };
        // Queue the first message before the call: the server answers nothing
        // (not even headers) until it has read it.
        tx.send(stat)
            .await
            .map_err(|_| Status::internal("content write channel closed"))?;
        let request = self.request(ReceiverStream::new(rx), Some(lease))?;
        let responses = match self.content().write(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::AlreadyExists => return Ok(None),
            Err(status) => return Err(status),
        };
        let mut writer = ContentWriter {
            tx: Some(tx),
            responses,
            digest: digest.to_owned(),
            total: size,
            offset: 0,
        };
        match writer.receive().await {
            Ok(status) => {
                writer.offset = status.offset;
                Ok(Some(writer))
            }
            Err(status) if status.code() == Code::AlreadyExists => Ok(None),
            Err(status) => Err(status),
        }
    }

    // ---- leases -------------------------------------------------------------

    /// Creates a lease that expires in a day unless [`Lease::release`]d first.
    pub(crate) async fn create_lease(&self) -> Result<Lease, Status> {
        let id = format!("rkubelet-pull-{}", uuid::Uuid::new_v4().simple());
        let header = AsciiMetadataValue::try_from(id.as_str())
            .map_err(|_| Status::internal("lease id is not a valid header"))?;
        let expire =
            (chrono::Utc::now() + LEASE_TTL).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let labels = HashMap::from([(LEASE_EXPIRE_LABEL.to_owned(), expire)]);
        let request = self.request(
            CreateLeaseRequest {
                id: id.clone(),
                labels,
            },
            None,
        )?;
        LeasesClient::new(self.channel.clone())
            .create(request)
            .await?;
        debug!(lease = %id, "lease created");
        Ok(Lease {
            id,
            header,
            containerd: self.clone(),
            released: false,
        })
    }

    // ---- snapshots ----------------------------------------------------------

    /// Whether snapshot `key` exists.
    pub(crate) async fn snapshot_exists(&self, key: &str) -> Result<bool, Status> {
        let request = self.request(
            StatSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            },
            None,
        )?;
        match self.snapshots().stat(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(status),
        }
    }

    /// Prepares an active snapshot `key` on top of `parent` ("" for none).
    pub(crate) async fn prepare_snapshot(
        &self,
        key: &str,
        parent: &str,
        labels: &HashMap<String, String>,
        lease: &Lease,
    ) -> Result<Vec<Mount>, Status> {
        let request = self.request(
            PrepareSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
                parent: parent.to_owned(),
                labels: labels.clone(),
            },
            Some(lease),
        )?;
        Ok(self.snapshots().prepare(request).await?.into_inner().mounts)
    }

    /// Commits active snapshot `key` as `name`.
    pub(crate) async fn commit_snapshot(
        &self,
        name: &str,
        key: &str,
        labels: &HashMap<String, String>,
        lease: &Lease,
    ) -> Result<(), Status> {
        let request = self.request(
            CommitSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                name: name.to_owned(),
                key: key.to_owned(),
                labels: labels.clone(),
            },
            Some(lease),
        )?;
        self.snapshots().commit(request).await.map(drop)
    }

    /// Removes snapshot `key`.
    pub(crate) async fn remove_snapshot(&self, key: &str) -> Result<(), Status> {
        let request = self.request(
            RemoveSnapshotRequest {
                snapshotter: self.snapshotter.clone(),
                key: key.to_owned(),
            },
            None,
        )?;
        self.snapshots().remove(request).await.map(drop)
    }

    // ---- diff ---------------------------------------------------------------

    /// Applies a layer blob onto `mounts`; returns the descriptor of the
    /// uncompressed diff (its digest is the layer's diff ID).
    pub(crate) async fn apply_layer(
        &self,
        layer: ProtoDescriptor,
        mounts: Vec<Mount>,
        lease: &Lease,
    ) -> Result<ProtoDescriptor, Status> {
        let request = self.request(
            ApplyRequest {
                diff: Some(layer),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            },
            Some(lease),
        )?;
        let applied = DiffClient::new(self.channel.clone())
            .apply(request)
            .await?
            .into_inner();
        applied
            .applied
            .ok_or_else(|| Status::internal("diff service returned no descriptor"))
    }
}

/// A containerd lease: content and snapshots created under it survive garbage
/// collection until it is released. Dropping it unreleased (a cancelled pull)
/// releases it in the background.
pub(crate) struct Lease {
    id: String,
    header: AsciiMetadataValue,
    containerd: Containerd,
    released: bool,
}

impl Lease {
    /// Adds a blob to the lease, protecting content found in the store (and
    /// so not written under the lease) until the references to it are in place.
    pub(crate) async fn add_content(&self, digest: &str) -> Result<(), Status> {
        let request = self.containerd.request(
            AddResourceRequest {
                id: self.id.clone(),
                resource: Some(Resource {
                    id: digest.to_owned(),
                    r#type: "content".to_owned(),
                }),
            },
            None,
        )?;
        LeasesClient::new(self.containerd.channel.clone())
            .add_resource(request)
            .await
            .map(drop)
    }

    /// Deletes the lease; what nothing else references becomes collectable.
    pub(crate) async fn release(mut self) {
        self.released = true;
        delete_lease(&self.containerd, &self.id).await;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let containerd = self.containerd.clone();
            let id = std::mem::take(&mut self.id);
            runtime.spawn(async move { delete_lease(&containerd, &id).await });
        }
    }
}

async fn delete_lease(containerd: &Containerd, id: &str) {
    let result = match containerd.request(
        DeleteLeaseRequest {
            id: id.to_owned(),
            sync: false,
        },
        None,
    ) {
        Ok(request) => LeasesClient::new(containerd.channel.clone())
            .delete(request)
            .await
            .map(drop),
        Err(status) => Err(status),
    };
    match result {
        Ok(()) => debug!(lease = %id, "lease released"),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => warn!(lease = %id, error = %status.message(), "failed to release lease"),
    }
}

/// An open ingest in containerd's content store.
pub(crate) struct ContentWriter {
    /// Request side of the stream; `None` once closed.
    tx: Option<mpsc::Sender<WriteContentRequest>>,
    responses: Streaming<WriteContentResponse>,
    digest: String,
    total: i64,
    /// Bytes containerd holds for this ingest.
    offset: i64,
}

impl ContentWriter {
    /// Bytes already in the ingest (a previous attempt may have left some).
    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Whether the ingest already holds every byte.
    pub(crate) fn is_complete(&self) -> bool {
        self.offset == self.total
    }

    /// Forgets partial data: the next write at offset 0 truncates the ingest.
    pub(crate) fn restart(&mut self) {
        self.offset = 0;
    }

    /// Appends `data` at the current offset.
    pub(crate) async fn write(&mut self, data: Vec<u8>) -> Result<(), Status> {
        let expected = self.offset + i64::try_from(data.len()).unwrap_or(i64::MAX);
        if expected > self.total {
            return Err(Status::out_of_range(format!(
                "content {} is larger than its descriptor size {}",
                self.digest, self.total
            )));
        }
        let response = self
            .exchange(WriteContentRequest {
                action: WriteAction::Write.into(),
                offset: self.offset,
                data,
                ..Default::default()
            })
            .await?;
        if response.offset != expected {
            return Err(Status::data_loss(format!(
                "content write of {} ended at offset {} instead of {expected}",
                self.digest, response.offset
            )));
        }
        self.offset = expected;
        Ok(())
    }

    /// Commits the ingest; containerd checks size and digest. `AlreadyExists`
    /// (another writer won) is reported as such for the caller to accept.
    pub(crate) async fn commit(mut self, labels: &BTreeMap<String, String>) -> Result<(), Status> {
        let response = self
            .exchange(WriteContentRequest {
                action: WriteAction::Commit.into(),
                total: self.total,
                offset: self.offset,
                expected: self.digest.clone(),
                labels: labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ..Default::default()
            })
            .await?;
        if !response.digest.is_empty() && response.digest != self.digest {
            return Err(Status::data_loss(format!(
                "committed content has digest {} instead of {}",
                response.digest, self.digest
            )));
        }
        // Close our side and let the server finish the call cleanly.
        self.tx = None;
        while let Ok(Some(_)) = self.responses.message().await {}
        Ok(())
    }

    /// Sends one request and waits for its response.
    async fn exchange(
        &mut self,
        request: WriteContentRequest,
    ) -> Result<WriteContentResponse, Status> {
        let sent = match &self.tx {
            Some(tx) => tx.send(request).await.is_ok(),
            None => false,
        };
        if !sent {
            // The call is over; its status says why.
            return match self.responses.message().await {
                Err(status) => Err(status),
                Ok(_) => Err(Status::aborted("content write stream closed")),
            };
        }
        self.receive().await
    }

    async fn receive(&mut self) -> Result<WriteContentResponse, Status> {
        self.responses
            .message()
            .await?
            .ok_or_else(|| Status::aborted("content write stream ended early"))
    }
}
