//! Container images: making the image a container needs present and unpacked
//! in containerd, over containerd's native gRPC API (the job the kubelet's
//! image manager and containerd's CRI image service share upstream).
//!
//! [`ImageService::ensure`] applies a pod's [`PullPolicy`]. A pull does what
//! containerd 1.6's Go client does (1.6 has no transfer service): resolve
//! the reference with `oci-client`, choose the host platform's manifest from
//! an index, write every blob through the content service under a lease with
//! containerd's GC labels, unpack the layers into the snapshotter through the
//! diff service, and create or update the image record
//! (`io.cri-containerd.image=managed`, like images the CRI plugin pulls).
//! Pulls and unpacks of one reference are serialized within an
//! [`ImageService`]; callers that waited on a pull of the same reference
//! reuse its result, so thirty pods of one image cost one pull.
//!
//! Credentials (the kubelet's keyring, pkg/kubelet/images/image_manager.go):
//! the pod's pull secrets ([`PullSecrets`]), then the node's docker config,
//! then credential provider plugins ([`CredentialProviders`]), each matching
//! credential tried in turn until a pull succeeds; none matching means an
//! anonymous pull. Hosts: containerd's `hosts.toml` for the registry (mirrors
//! first, then the server). Pulls from registries are limited node-wide by
//! `serializeImagePulls`/`maxParallelImagePulls`.
//!
//! Submodules: `reference` (names, policies), `keyring` (credential
//! matching, pull secrets), `auth` (the node's docker config), `provider`
//! (credential provider plugins), `hosts` (registry hosts), `manifest`
//! (index/manifest parsing, platforms, GC labels, chain IDs), `store`
//! (containerd calls), `pull` (registry to content store), `unpack` (content
//! store to snapshots).
//!
//! Errors carry their whole cause in their message, like the upstream
//! messages that end up in a container's waiting state, and
//! [`ImageError::reason`] gives the kubelet's waiting reason.

pub(crate) mod auth;
pub(crate) mod hosts;
pub(crate) mod keyring;
pub(crate) mod manifest;
pub(crate) mod provider;
mod pull;
pub(crate) mod reference;
mod store;
mod unpack;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageConfiguration;
use tonic::transport::Channel;
use tonic::Status;
use tracing::{debug, info, instrument, warn};

pub use hosts::{containerd_config_path, HostsError, DEFAULT_CONFIG_PATH as DEFAULT_HOSTS_DIR};
pub use keyring::{PullSecrets, SecretError};
pub use provider::{CredentialProviders, ProviderError};
pub use reference::{normalize_reference, PullPolicy};

use hosts::RegistryHost;
use keyring::Credential;
use manifest::{Descriptor, HostPlatform, Index, Kind, Manifest};
use pull::{Puller, MAX_METADATA_SIZE};
use store::Containerd;

/// Image record label the CRI plugin puts on the images it manages.
const CRI_MANAGED_LABEL: (&str, &str) = ("io.cri-containerd.image", "managed");

/// Result of this module's operations.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Why an image could not be made available. [`ImageError::reason`] maps each
/// case to the kubelet's container waiting reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image name is not a valid reference (`InvalidImageName`).
    // Upstream message: pkg/kubelet/images/image_manager.go applyDefaultImageTag.
    #[error("Failed to apply default image tag {image:?}: couldn't parse image name {image:?}: {source}")]
    InvalidName {
        /// The name as given.
        image: String,
        /// What the parser rejected.
        #[source]
        source: oci_client::ParseError,
    },
    /// The pull policy is `Never` and the image is not present (`ErrImageNeverPull`).
    #[error("Container image {image:?} is not present with pull policy of Never")]
    NotPresent {
        /// The name as given.
        image: String,
    },
    /// Looking at the local image failed (`ImageInspectError`).
    #[error("failed to inspect image {image:?}: {source}")]
    Inspect {
        /// The normalized name.
        image: String,
        /// The failed step.
        #[source]
        source: StepError,
    },
    /// Pulling or unpacking failed (`ErrImagePull`).
    #[error("failed to pull and unpack image {image:?}: {source}")]
    Pull {
        /// The normalized name.
        image: String,
        /// The failed step.
        #[source]
        source: StepError,
    },
    /// Every credential that matched the image failed (`ErrImagePull`); the
    /// message is Go's aggregate of the attempts' messages.
    #[error("{}", provider::aggregate(&errors.iter().map(ToString::to_string).collect::<Vec<_>>()))]
    PullAttempts {
        /// The normalized name.
        image: String,
        /// One error per credential tried, in order.
        errors: Vec<ImageError>,
    },
    /// Deleting the image record failed.
    #[error("failed to remove image {image:?}: {}", status_message(source))]
    Remove {
        /// The normalized name.
        image: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
}

impl ImageError {
    /// The kubelet's waiting reason for this failure
    /// (pkg/kubelet/images/types.go): `InvalidImageName`, `ErrImageNeverPull`,
    /// `ImageInspectError` or `ErrImagePull`. `Remove` failures, which no
    /// container sees, report the image GC event reason `ImageGCFailed`.
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidName { .. } => "InvalidImageName",
            ImageError::NotPresent { .. } => "ErrImageNeverPull",
            ImageError::Inspect { .. } => "ImageInspectError",
            ImageError::Pull { .. } | ImageError::PullAttempts { .. } => "ErrImagePull",
            ImageError::Remove { .. } => "ImageGCFailed",
        }
    }
}

/// The step of a pull, unpack or inspection that failed, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The registry client could not be built (TLS setup).
    #[error(
        "failed to set up a client for registry {registry}: {}",
        registry_message(source)
    )]
    RegistryClient {
        /// The registry host.
        registry: String,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The registry did not resolve the reference to a manifest.
    #[error(
        "failed to resolve reference {reference:?}: {}",
        registry_message(source)
    )]
    ResolveReference {
        /// The normalized reference.
        reference: String,
        /// The registry's error.
        #[source]
        source: OciDistributionError,
    },
    /// A registry host answered the resolution with an error status
    /// (containerd 1.6's resolver wording).
    #[error("failed to resolve reference {reference:?}: pulling from host {host} failed with status code [manifests {object}]: {status}")]
    ResolveStatus {
        /// The normalized reference.
        reference: String,
        /// The host (`host[:port]`) that answered.
        host: String,
        /// The tag or digest asked for.
        object: String,
        /// The HTTP status (`401 Unauthorized`).
        status: String,
    },
    /// The registry's host configuration (`hosts.toml`) is unusable.
    #[error("failed to resolve reference {reference:?}: {source}")]
    Hosts {
        /// The normalized reference.
        reference: String,
        /// What is wrong with it.
        #[source]
        source: Box<HostsError>,
    },
    /// Fetching a platform manifest from the registry failed.
    #[error("failed to fetch manifest {digest}: {}", registry_message(source))]
    FetchManifest {
        /// Digest of the manifest.
        digest: String,
        /// The registry's error.
        #[source]
        source: OciDistributionError,
    },
    /// Fetching a blob (config or layer) from the registry failed.
    #[error("failed to fetch blob {digest}: {}", registry_message(source))]
    FetchBlob {
        /// Digest of the blob.
        digest: String,
        /// The registry's error.
        #[source]
        source: OciDistributionError,
    },
    /// An index or manifest is not valid JSON of the expected shape.
    #[error("failed to parse manifest {digest}: {source}")]
    ParseManifest {
        /// Digest of the document.
        digest: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The image config is not a valid OCI image configuration.
    #[error("failed to parse image config {digest}: {source}")]
    ParseConfig {
        /// Digest of the config.
        digest: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The reference names neither an image index nor an image manifest
    /// (e.g. a Docker schema 1 manifest or an artifact).
    #[error("unsupported media type {media_type:?} of {digest}")]
    UnsupportedMediaType {
        /// Digest of the document.
        digest: String,
        /// Its media type.
        media_type: String,
    },
    /// The index has no manifest for this node's platform.
    #[error("no match for platform {platform} in manifest {digest}: not found")]
    NoMatchingManifest {
        /// Digest of the index.
        digest: String,
        /// The host platform (`linux/amd64`).
        platform: String,
    },
    /// A descriptor in a manifest is unusable.
    #[error("invalid descriptor {digest:?}: {problem}")]
    InvalidDescriptor {
        /// The descriptor's digest as written.
        digest: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The config's diff IDs do not pair up with the manifest's layers.
    #[error(
        "mismatched image rootfs and manifest layers: {diff_ids} diff IDs for {layers} layers"
    )]
    LayerMismatch {
        /// Number of layers in the manifest.
        layers: usize,
        /// Number of diff IDs in the config.
        diff_ids: usize,
    },
    /// A manifest, index or config is larger than this module holds in memory.
    #[error("{digest} is larger than {limit} bytes")]
    TooLarge {
        /// Digest of the blob.
        digest: String,
        /// The limit.
        limit: usize,
    },
    /// The registry sent more bytes than the descriptor announced.
    #[error("blob {digest} is larger than its descriptor size {expected}")]
    SizeMismatch {
        /// Digest of the blob.
        digest: String,
        /// Size in the descriptor.
        expected: i64,
    },
    /// Creating the pull's lease failed.
    #[error("failed to create lease: {}", status_message(source))]
    CreateLease {
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Adding a blob to the pull's lease failed.
    #[error("failed to add {digest} to lease: {}", status_message(source))]
    LeaseContent {
        /// Digest of the blob.
        digest: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Looking a blob up in the content store failed.
    #[error("failed to get info of content {digest}: {}", status_message(source))]
    ContentInfo {
        /// Digest of the blob.
        digest: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Reading a blob from the content store failed.
    #[error("failed to read content {digest}: {}", status_message(source))]
    ReadContent {
        /// Digest of the blob.
        digest: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Writing or committing a blob to the content store failed.
    #[error("failed to write content {digest}: {}", status_message(source))]
    WriteContent {
        /// Digest of the blob.
        digest: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Setting labels on a blob failed.
    #[error("failed to label content {digest}: {}", status_message(source))]
    LabelContent {
        /// Digest of the blob.
        digest: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Looking a snapshot up failed.
    #[error("failed to stat snapshot {key}: {}", status_message(source))]
    StatSnapshot {
        /// The snapshot key.
        key: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Preparing an extraction snapshot failed.
    #[error(
        "failed to prepare extraction snapshot {key:?}: {}",
        status_message(source)
    )]
    PrepareSnapshot {
        /// The extraction key.
        key: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// The diff service could not apply a layer.
    #[error("failed to extract layer {diff_id}: {}", status_message(source))]
    ApplyLayer {
        /// Diff ID of the layer.
        diff_id: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// The applied layer's content does not match the config's diff ID.
    #[error("wrong diff id calculated on extraction {expected:?}: got {actual:?}")]
    DiffIdMismatch {
        /// Diff ID in the image config.
        expected: String,
        /// Digest of what was extracted.
        actual: String,
    },
    /// Committing an unpacked layer's snapshot failed.
    #[error("failed to commit snapshot {name}: {}", status_message(source))]
    CommitSnapshot {
        /// The chain ID.
        name: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Reading the image record failed.
    #[error("failed to get image record {name:?}: {}", status_message(source))]
    GetImage {
        /// The image name.
        name: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
    /// Creating or updating the image record failed.
    #[error("failed to create image record {name:?}: {}", status_message(source))]
    PutImage {
        /// The image name.
        name: String,
        /// containerd's answer.
        #[source]
        source: Status,
    },
}

/// containerd's message for a failed call (its code when it sent none).
fn status_message(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{:?}", status.code())
    } else {
        status.message().to_owned()
    }
}

impl StepError {
    /// Whether the registry does not have the reference (another host may).
    fn is_not_found(&self) -> bool {
        matches!(self, StepError::ResolveReference { source, .. } if is_not_found(source))
    }
}

/// Whether a registry error says the manifest, blob or repository is unknown.
fn is_not_found(error: &OciDistributionError) -> bool {
    use oci_client::errors::OciErrorCode;
    match error {
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
                    | OciErrorCode::NotFound
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        _ => false,
    }
}

/// The HTTP status of a registry's refusal (`401 Unauthorized`), when the
/// error is one; `None` for not found and for transport or protocol errors.
pub(crate) fn refusal_status(error: &OciDistributionError) -> Option<String> {
    use oci_client::errors::OciErrorCode;
    let code = match error {
        OciDistributionError::UnauthorizedError { .. } => 401,
        OciDistributionError::ServerError { code, .. } if *code >= 400 && *code != 404 => *code,
        OciDistributionError::RegistryError { envelope, .. } => match envelope.errors.first().map(|e| &e.code) {
            Some(OciErrorCode::Unauthorized) => 401,
            Some(OciErrorCode::Denied) => 403,
            Some(OciErrorCode::Toomanyrequests) => 429,
            _ => return None,
        },
        _ => return None,
    };
    let status = http::StatusCode::from_u16(code).ok()?;
    Some(format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or("")).trim_end().to_owned())
}

/// A registry error in upstream words: missing manifests and blobs are "not
/// found", anything else is the error with its causes.
fn registry_message(error: &OciDistributionError) -> String {
    if is_not_found(error) {
        return "not found".to_owned();
    }
    let mut message = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        let text = inner.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = inner.source();
    }
    message
}

/// A local image as image garbage collection sees it: one image ID (config
/// digest) with every name pointing at it and its size (the blobs of the
/// node's platform, as CRI's image size).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub id: String,
    pub names: Vec<String>,
    /// The records' target digests (what containers' image IDs name).
    pub digests: Vec<String>,
    pub size: u64,
}

/// A local image ready for containers: present, parsed and unpacked.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The normalized reference (`docker.io/library/busybox:latest`), the image record's name.
    pub name: String,
    /// The image ID: the config digest (`sha256:…`), as CRI reports it.
    pub id: String,
    /// What the reference resolved to: the image record's target, i.e. the
    /// index digest for a multi-platform image, else the manifest digest
    /// (the digest of `repo@sha256:…` repo digests).
    pub target_digest: String,
    /// The image configuration (entrypoint, cmd, env, user, working dir…).
    pub config: ImageConfiguration,
    /// Chain ID of the top layer: the committed snapshot to prepare a
    /// container's rootfs on. Empty for an image without layers.
    pub chain_id: String,
}

/// Registry access settings.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// A Docker `config.json` with registry credentials (`auths.<host>.auth`
    /// or `username`/`password`), read at each pull. Absent file: no node credentials.
    pub docker_config: Option<PathBuf>,
    /// Registries (`host[:port]`; a bare host covers every port) reached
    /// over plain HTTP. Loopback registries always are, like in containerd and Docker.
    pub insecure_registries: Vec<String>,
    /// containerd's registry `config_path` (`<dir>/<host>/hosts.toml`); `None`: no hosts configuration.
    pub hosts_dir: Option<PathBuf>,
    /// Credential provider plugins, tried after pull secrets and the docker config.
    pub credential_providers: Option<Arc<CredentialProviders>>,
    /// Registry pulls at once across the service: `Some(1)` is
    /// `serializeImagePulls`, `None` no limit.
    pub max_parallel_pulls: Option<usize>,
}

/// Pulls, unpacks and inspects images in one containerd namespace and
/// snapshotter. Cheap to clone; clones share the per-reference locks.
#[derive(Clone)]
pub struct ImageService {
    inner: Arc<Inner>,
}

struct Inner {
    containerd: Containerd,
    options: PullOptions,
    platform: HostPlatform,
    /// One lock per image reference.
    locks: KeyedLocks<RefSlot>,
    /// One lock per blob digest being written.
    blob_locks: BlobLocks,
    /// Permits for registry pulls (`max_parallel_pulls`); `None`: unlimited.
    pull_slots: Option<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("snapshotter", &self.inner.containerd.snapshotter())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl ImageService {
    /// A service over a containerd channel, for `namespace` (`k8s.io`) and
    /// `snapshotter` (`overlayfs`).
    pub fn new(
        channel: Channel,
        namespace: impl Into<String>,
        snapshotter: impl Into<String>,
        options: PullOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                containerd: Containerd::new(channel, namespace.into(), snapshotter.into()),
                platform: HostPlatform::current(),
                locks: KeyedLocks::default(),
                blob_locks: BlobLocks::default(),
                pull_slots: options.max_parallel_pulls.map(|n| tokio::sync::Semaphore::new(n.max(1))),
                options,
            }),
        }
    }

    /// Makes `image` available according to `policy`: `Never` uses the local
    /// image or fails with [`ImageError::NotPresent`]; `IfNotPresent` pulls
    /// when it is absent; `Always` resolves the reference again (blobs
    /// already stored are not downloaded again). A caller that waited for a
    /// pull of the same reference to finish gets that pull's result.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<ImageInfo> {
        self.ensure_with(image, policy, &PullSecrets::default()).await
    }

    /// [`ImageService::ensure`] with a pod's pull secrets, whose credentials
    /// are tried before the node's.
    #[instrument(skip(self, secrets), fields(image = %image))]
    pub async fn ensure_with(&self, image: &str, policy: PullPolicy, secrets: &PullSecrets) -> Result<ImageInfo> {
        let reference = reference::parse(image)?;
        let name = reference.whole();
        let slot = self.inner.locks.slot(&name);
        let pulls_seen = slot.pulls.load(Ordering::Acquire);
        let mut last_pull = slot.last_pull.lock().await;
        if slot.pulls.load(Ordering::Acquire) != pulls_seen {
            if let Some(info) = last_pull.as_ref() {
                debug!(image = %name, "reusing the pull that finished while waiting");
                return Ok(info.clone());
            }
        }

        if policy != PullPolicy::Always {
            match self.inspect(&name).await {
                Ok(Some(info)) => return Ok(info),
                Ok(None) if policy == PullPolicy::Never => {
                    return Err(ImageError::NotPresent {
                        image: image.to_owned(),
                    })
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(ImageError::Inspect {
                        image: name,
                        source,
                    })
                }
            }
        }
        let info = self.pull_locked(&name, reference, secrets).await?;
        *last_pull = Some(info.clone());
        slot.pulls.fetch_add(1, Ordering::AcqRel);
        Ok(info)
    }

    /// The local image, unpacked (unpacking it now if its snapshots are
    /// missing), or `None` when there is no record or its content is gone.
    #[instrument(skip(self), fields(image = %image))]
    pub async fn local(&self, image: &str) -> Result<Option<ImageInfo>> {
        let name = normalize_reference(image)?;
        let slot = self.inner.locks.slot(&name);
        let _guard = slot.last_pull.lock().await;
        self.inspect(&name)
            .await
            .map_err(|source| ImageError::Inspect {
                image: name,
                source,
            })
    }

    /// Pulls and unpacks `image` from its registry unconditionally.
    #[instrument(skip(self), fields(image = %image))]
    pub async fn pull(&self, image: &str) -> Result<ImageInfo> {
        let reference = reference::parse(image)?;
        let name = reference.whole();
        let slot = self.inner.locks.slot(&name);
        let mut last_pull = slot.last_pull.lock().await;
        let info = self.pull_locked(&name, reference, &PullSecrets::default()).await?;
        *last_pull = Some(info.clone());
        slot.pulls.fetch_add(1, Ordering::AcqRel);
        Ok(info)
    }

    /// Deletes the image record (content and snapshots go with containerd's
    /// garbage collection). Removing an absent image succeeds.
    #[instrument(skip(self), fields(image = %image))]
    pub async fn remove(&self, image: &str) -> Result<()> {
        let name = normalize_reference(image)?;
        let slot = self.inner.locks.slot(&name);
        let mut last_pull = slot.last_pull.lock().await;
        *last_pull = None;
        match self.inner.containerd.delete_image(&name).await {
            Ok(existed) => {
                info!(image = %name, existed, "image removed");
                Ok(())
            }
            Err(source) => Err(ImageError::Remove {
                image: name,
                source,
            }),
        }
    }

    /// Every local image, by ID. Records whose content is incomplete are left out.
    pub async fn list_local(&self) -> Result<Vec<LocalImage>> {
        let records = self.inner.containerd.list_images().await.map_err(|source| ImageError::Inspect { image: "*".into(), source: StepError::GetImage { name: "*".into(), source } })?;
        let mut out: Vec<LocalImage> = Vec::new();
        for r in records {
            let Some(target) = r.target else { continue };
            let Ok(Some((id, size))) = self.describe(&target.media_type, &target.digest, target.size as u64).await else { continue };
            match out.iter_mut().find(|i| i.id == id) {
                Some(i) => {
                    i.names.push(r.name);
                    if !i.digests.contains(&target.digest) {
                        i.digests.push(target.digest);
                    }
                }
                None => out.push(LocalImage { id, names: vec![r.name], digests: vec![target.digest], size }),
            }
        }
        Ok(out)
    }

    /// (image ID, size) of a record's target: the manifest (for an index, the
    /// one of this platform), its config and layers.
    async fn describe(&self, media_type: &str, digest: &str, size: u64) -> Result<Option<(String, u64)>, StepError> {
        let Some(top) = self.read_local(digest).await? else { return Ok(None) };
        let (body, mut total) = match manifest::kind_of(media_type) {
            Some(Kind::Manifest) => (top, size),
            Some(Kind::Index) => {
                let index: Index = serde_json::from_slice(&top).map_err(|source| StepError::ParseManifest { digest: digest.to_owned(), source })?;
                let Some(chosen) = manifest::select_manifest(&index, &self.inner.platform) else { return Ok(None) };
                let Some(body) = self.read_local(&chosen.digest).await? else { return Ok(None) };
                (body, size + chosen.size.max(0) as u64)
            }
            None => return Ok(None),
        };
        let m: Manifest = serde_json::from_slice(&body).map_err(|source| StepError::ParseManifest { digest: digest.to_owned(), source })?;
        total += m.config.size.max(0) as u64 + m.layers.iter().map(|l| l.size.max(0) as u64).sum::<u64>();
        Ok(Some((m.config.digest.clone(), total)))
    }

    /// Pulls `reference` (named `name`) with each matching credential in
    /// turn (pull secrets, node docker config, credential providers) until
    /// one succeeds, or anonymously when none matches; the caller holds the
    /// reference's lock. Takes a pull slot (`serializeImagePulls`) first.
    async fn pull_locked(&self, name: &str, reference: oci_client::Reference, secrets: &PullSecrets) -> Result<ImageInfo> {
        let _slot = match &self.inner.pull_slots {
            Some(slots) => Some(slots.acquire().await.expect("the pull semaphore is never closed")),
            None => None,
        };
        let started = Instant::now();
        let credentials = self.credentials(&reference, secrets).await;
        info!(image = %name, credentials = credentials.len(), "pulling image");
        let attempts: Vec<Option<&Credential>> = if credentials.is_empty() { vec![None] } else { credentials.iter().map(Some).collect() };
        let mut errors = Vec::new();
        for credential in attempts {
            let auth = credential.map_or(RegistryAuth::Anonymous, |c| c.auth.clone());
            let used = credential.map_or_else(|| "anonymous".to_owned(), |c| c.source.to_string());
            match self.fetch_from_hosts(name, &reference, &auth).await {
                Ok(info) => {
                    info!(
                        image = %name,
                        digest = %info.target_digest,
                        id = %info.id,
                        credential = %used,
                        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "image pulled"
                    );
                    return Ok(info);
                }
                Err(source) => {
                    warn!(image = %name, credential = %used, error = %source, "image pull failed");
                    errors.push(ImageError::Pull { image: name.to_owned(), source });
                }
            }
        }
        if errors.len() == 1 {
            Err(errors.pop().expect("one error"))
        } else {
            Err(ImageError::PullAttempts { image: name.to_owned(), errors })
        }
    }

    /// The credentials for `reference`, in the kubelet's order: pull secrets,
    /// then the node's docker config, then credential provider plugins.
    async fn credentials(&self, reference: &oci_client::Reference, secrets: &PullSecrets) -> Vec<Credential> {
        let repo = format!("{}/{}", reference.registry(), reference.repository());
        let mut out = secrets.lookup(&repo);
        if let Some(path) = &self.inner.options.docker_config {
            out.extend(auth::load(path).await.lookup(&repo));
        }
        if let Some(providers) = &self.inner.options.credential_providers {
            out.extend(providers.keyring(&repo).await.lookup(&repo));
        }
        out
    }

    /// One pull attempt with `auth`: the registry's hosts in order (mirrors,
    /// then the server), the first that serves the image wins. The error is
    /// the first one that is not "not found", as containerd's resolver reports.
    async fn fetch_from_hosts(&self, name: &str, reference: &oci_client::Reference, auth: &RegistryAuth) -> Result<ImageInfo, StepError> {
        let registry = reference.resolve_registry().to_owned();
        let insecure = &self.inner.options.insecure_registries;
        let default_plain_http =
            reference::is_loopback_registry(&registry) || reference::is_listed(&registry, insecure) || reference::is_listed(reference.registry(), insecure);
        let hosts = hosts::hosts_for(self.inner.options.hosts_dir.as_deref(), reference.registry(), default_plain_http)
            .await
            .map_err(|source| StepError::Hosts { reference: name.to_owned(), source: Box::new(source) })?;
        let mut first_error: Option<StepError> = None;
        let mut not_found: Option<StepError> = None;
        for host in hosts.iter().filter(|h| h.resolve || (h.pull && reference.digest().is_some())) {
            let mut target = reference.clone();
            if let Some(h) = host.host.as_ref().filter(|h| **h != registry) {
                target.set_mirror_registry(h.clone());
            }
            match self.fetch_and_unpack(name, target, host, auth.clone()).await {
                Ok(info) => return Ok(info),
                Err(e) if e.is_not_found() => {
                    debug!(image = %name, host = %host.name(&registry), "not found on host, trying the next one");
                    not_found = Some(e);
                }
                Err(e) => {
                    debug!(image = %name, host = %host.name(&registry), error = %e, "pull from host failed, trying the next one");
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.or(not_found).unwrap_or_else(|| StepError::Hosts {
            reference: name.to_owned(),
            source: Box::new(HostsError::NoResolveHost(reference.registry().to_owned())),
        }))
    }

    async fn fetch_and_unpack(&self, name: &str, reference: oci_client::Reference, host: &RegistryHost, auth: RegistryAuth) -> Result<ImageInfo, StepError> {
        let containerd = &self.inner.containerd;
        let client = pull::registry_client(reference.resolve_registry(), host).await?;

        let lease = containerd
            .create_lease()
            .await
            .map_err(|source| StepError::CreateLease { source })?;
        let result = async {
            let puller = Puller {
                containerd,
                lease: &lease,
                blob_locks: &self.inner.blob_locks,
                client,
                auth,
                reference,
                platform: self.inner.platform.clone(),
            };
            let fetched = puller.fetch().await?;
            let info = self
                .finish(
                    name,
                    &fetched.target,
                    &fetched.manifest,
                    &fetched.config,
                    &lease,
                )
                .await?;
            let mut labels = HashMap::new();
            labels.insert(
                CRI_MANAGED_LABEL.0.to_owned(),
                CRI_MANAGED_LABEL.1.to_owned(),
            );
            containerd
                .put_image(containerd_client::services::v1::Image {
                    name: name.to_owned(),
                    labels,
                    target: Some(fetched.target.to_proto()),
                    created_at: None,
                    updated_at: None,
                })
                .await
                .map_err(|source| StepError::PutImage {
                    name: name.to_owned(),
                    source,
                })?;
            Ok(info)
        }
        .await;
        lease.release().await;
        result
    }

    /// Parses the config, unpacks the layers if needed and builds the
    /// [`ImageInfo`]. Needs every layer blob in the content store.
    async fn finish(
        &self,
        name: &str,
        target: &Descriptor,
        manifest: &Manifest,
        config_bytes: &[u8],
        lease: &store::Lease,
    ) -> Result<ImageInfo, StepError> {
        let config_digest = &manifest.config.digest;
        let config: ImageConfiguration =
            serde_json::from_slice(config_bytes).map_err(|source| StepError::ParseConfig {
                digest: config_digest.clone(),
                source,
            })?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(StepError::LayerMismatch {
                layers: manifest.layers.len(),
                diff_ids: diff_ids.len(),
            });
        }
        if let Some(bad) = diff_ids.iter().find(|d| !manifest::is_valid_digest(d)) {
            return Err(StepError::InvalidDescriptor {
                digest: bad.clone(),
                problem: "invalid diff ID",
            });
        }
        let chain = manifest::chain_ids(diff_ids);
        unpack::unpack(
            &self.inner.containerd,
            lease,
            config_digest,
            &manifest.layers,
            diff_ids,
            &chain,
        )
        .await?;
        Ok(ImageInfo {
            name: name.to_owned(),
            id: config_digest.clone(),
            target_digest: target.digest.clone(),
            chain_id: chain.last().cloned().unwrap_or_default(),
            config,
        })
    }

    /// The local image `name` (normalized), unpacking it when its top
    /// snapshot is missing; `None` when the record or some of its content is
    /// absent (a pull repairs that). The caller holds the reference's lock.
    async fn inspect(&self, name: &str) -> Result<Option<ImageInfo>, StepError> {
        let containerd = &self.inner.containerd;
        let record = containerd
            .get_image(name)
            .await
            .map_err(|source| StepError::GetImage {
                name: name.to_owned(),
                source,
            })?;
        let Some(target) = record.and_then(|image| image.target) else {
            return Ok(None);
        };
        let target = Descriptor {
            media_type: target.media_type,
            digest: target.digest,
            size: target.size,
            annotations: None,
            platform: None,
        };
        let Some(top) = self.read_local(&target.digest).await? else {
            return Ok(None);
        };
        let (manifest_digest, manifest_body) = match manifest::kind_of(&target.media_type) {
            Some(Kind::Manifest) => (target.digest.clone(), top),
            Some(Kind::Index) => {
                let index: Index =
                    serde_json::from_slice(&top).map_err(|source| StepError::ParseManifest {
                        digest: target.digest.clone(),
                        source,
                    })?;
                let chosen =
                    manifest::select_manifest(&index, &self.inner.platform).ok_or_else(|| {
                        StepError::NoMatchingManifest {
                            digest: target.digest.clone(),
                            platform: self.inner.platform.name(),
                        }
                    })?;
                let Some(body) = self.read_local(&chosen.digest).await? else {
                    return Ok(None);
                };
                (chosen.digest.clone(), body)
            }
            None => {
                return Err(StepError::UnsupportedMediaType {
                    digest: target.digest,
                    media_type: target.media_type,
                })
            }
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_body).map_err(|source| StepError::ParseManifest {
                digest: manifest_digest,
                source,
            })?;
        let Some(config_bytes) = self.read_local(&manifest.config.digest).await? else {
            return Ok(None);
        };
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|source| StepError::ParseConfig {
                digest: manifest.config.digest.clone(),
                source,
            })?;
        let chain = manifest::chain_ids(config.rootfs().diff_ids());
        let top_chain = chain.last().cloned().unwrap_or_default();

        let unpacked = top_chain.is_empty()
            || containerd
                .snapshot_exists(&top_chain)
                .await
                .map_err(|source| StepError::StatSnapshot {
                    key: top_chain.clone(),
                    source,
                })?;
        if unpacked {
            return Ok(Some(ImageInfo {
                name: name.to_owned(),
                id: manifest.config.digest.clone(),
                target_digest: target.digest,
                config,
                chain_id: top_chain,
            }));
        }

        // Not unpacked: possible only with every layer blob at hand.
        for layer in &manifest.layers {
            let present = containerd
                .content_info(&layer.digest)
                .await
                .map_err(|source| StepError::ContentInfo {
                    digest: layer.digest.clone(),
                    source,
                })?;
            if present.is_none() {
                debug!(image = %name, layer = %layer.digest, "layer content missing, image needs a pull");
                return Ok(None);
            }
        }
        info!(image = %name, "unpacking local image");
        let lease = containerd
            .create_lease()
            .await
            .map_err(|source| StepError::CreateLease { source })?;
        let result = self
            .finish(name, &target, &manifest, &config_bytes, &lease)
            .await;
        lease.release().await;
        result.map(Some)
    }

    /// A metadata blob from the content store, or `None` (logged) when missing.
    async fn read_local(&self, digest: &str) -> Result<Option<Vec<u8>>, StepError> {
        let bytes = self
            .inner
            .containerd
            .read_content(digest, MAX_METADATA_SIZE)
            .await
            .map_err(|source| StepError::ReadContent {
                digest: digest.to_owned(),
                source,
            })?;
        if bytes.is_none() {
            debug!(%digest, "image content missing locally");
        }
        Ok(bytes)
    }
}

/// Locks by key (an image name, a blob digest). An entry lives while
/// someone holds or awaits it.
struct KeyedLocks<T> {
    slots: Mutex<HashMap<String, Arc<T>>>,
}

impl<T> Default for KeyedLocks<T> {
    fn default() -> Self {
        Self {
            slots: Mutex::default(),
        }
    }
}

/// The lock of one image reference and the last pull done under it.
#[derive(Default)]
struct RefSlot {
    /// Successful pulls so far; a waiter seeing it change reuses `last_pull`.
    pulls: AtomicU64,
    /// The lock itself, holding the result of the last successful pull.
    last_pull: tokio::sync::Mutex<Option<ImageInfo>>,
}

/// Serializes writers of one blob within the agent: the pulls of two images
/// sharing a layer take turns instead of contending for containerd's ingest
/// lock (which containerd resolves by sleeping inside its metadata transaction).
type BlobLocks = KeyedLocks<tokio::sync::Mutex<()>>;

impl<T: Default> KeyedLocks<T> {
    fn slot(&self, key: &str) -> SlotHandle<'_, T> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.entry(key.to_owned()).or_default().clone();
        SlotHandle {
            locks: self,
            key: key.to_owned(),
            slot,
        }
    }
}

/// A reference to a slot of [`KeyedLocks`] that removes the entry when it was the last one.
struct SlotHandle<'a, T> {
    locks: &'a KeyedLocks<T>,
    key: String,
    slot: Arc<T>,
}

impl<T> std::ops::Deref for SlotHandle<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.slot
    }
}

impl<T> Drop for SlotHandle<'_, T> {
    fn drop(&mut self) {
        let mut slots = self
            .locks
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Handles are only created under this lock: two references (the map's
        // and ours) mean nobody else holds or waits for the slot.
        if slots
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) == 2)
        {
            slots.remove(&self.key);
        }
    }
}
