//! Fetching an image from its registry into containerd's content store, the
//! way containerd 1.6's Go client `Pull` does (client/pull.go with
//! `remotes.FetchHandler`, `images.SetChildrenMappedLabels` and
//! `docker.AppendDistributionSourceLabel`): resolve the reference, then store
//! the index, the platform manifest, the config and the layers, each parent
//! labelled with GC references to its children before they are fetched, and
//! every blob with its distribution source. Blobs already in the store are
//! not downloaded again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use tonic::Code;
use tracing::{debug, warn};

use super::hosts::{HostsError, RegistryHost};
use super::manifest::{self, Descriptor, HostPlatform, Index, Kind, Manifest};
use super::reference::{append_source_repo, distribution_source};
use super::store::{Containerd, Lease, WRITE_CHUNK};
use super::{refusal_status, BlobLocks, StepError};

/// Upper bound for manifests, indexes and configs held in memory.
pub(crate) const MAX_METADATA_SIZE: usize = 32 << 20;
/// Layers downloaded at once (containerd CRI's `max_concurrent_downloads`).
const MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// containerd's limit on one label (key plus value).
const MAX_LABEL_SIZE: usize = 4096;
/// Connection timeout towards a registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A download making no progress for this long fails (CRI's `image_pull_progress_timeout`).
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// User agent sent to registries.
const USER_AGENT: &str = concat!("rkubelet/", env!("CARGO_PKG_VERSION"));
/// Longest pause between attempts to open an ingest another writer holds.
const MAX_LOCK_BACKOFF: Duration = Duration::from_secs(2);

/// What was resolved and stored for one image.
pub(crate) struct Fetched {
    /// The reference's target: the index or the manifest it names.
    pub target: Descriptor,
    /// The platform manifest.
    pub manifest: Manifest,
    /// The raw image config.
    pub config: Vec<u8>,
}

/// Builds a registry client for `host`: plain HTTP or HTTPS, trusting its
/// extra CAs (PEM files) or, with `skip_verify`, any certificate.
pub(crate) async fn registry_client(registry: &str, host: &RegistryHost) -> Result<oci_client::Client, StepError> {
    let mut extra_root_certificates = Vec::new();
    for path in &host.ca {
        let data = tokio::fs::read(path).await.map_err(|source| StepError::Hosts {
            reference: registry.to_owned(),
            source: Box::new(HostsError::Read { path: path.clone(), source }),
        })?;
        extra_root_certificates.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    let config = ClientConfig {
        protocol: if host.plain_http { ClientProtocol::Http } else { ClientProtocol::Https },
        accept_invalid_certificates: host.skip_verify,
        extra_root_certificates,
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    };
    oci_client::Client::try_from(config).map_err(|source| StepError::RegistryClient {
        registry: registry.to_owned(),
        source,
    })
}

/// One pull of one reference under one lease.
pub(crate) struct Puller<'a> {
    /// Where blobs go.
    pub containerd: &'a Containerd,
    /// The lease every blob is written or found under.
    pub lease: &'a Lease,
    /// The agent's per-blob writer locks.
    pub blob_locks: &'a BlobLocks,
    /// Registry client for the reference's registry.
    pub client: oci_client::Client,
    /// Credentials for that registry.
    pub auth: RegistryAuth,
    /// The normalized reference being pulled.
    pub reference: Reference,
    /// The platform to choose from an index.
    pub platform: HostPlatform,
}

impl Puller<'_> {
    /// Resolves the reference and stores every blob of the host's image.
    pub(crate) async fn fetch(&self) -> Result<Fetched, StepError> {
        let name = self.reference.whole();
        let (body, digest) = self
            .client
            .pull_manifest_raw(
                &self.reference,
                &self.auth,
                &manifest::ACCEPTED_MANIFEST_TYPES,
            )
            .await
            .map_err(|source| match refusal_status(&source) {
                // containerd 1.6's resolver names the host and the object it asked for.
                Some(status) => StepError::ResolveStatus {
                    reference: name.clone(),
                    host: self.reference.resolve_registry().to_owned(),
                    object: self.reference.digest().or(self.reference.tag()).unwrap_or("latest").to_owned(),
                    status,
                },
                None => StepError::ResolveReference {
                    reference: name.clone(),
                    source,
                },
            })?;
        let media_type =
            manifest::sniff_media_type(&body).map_err(|source| StepError::ParseManifest {
                digest: digest.clone(),
                source,
            })?;
        let target = Descriptor {
            media_type,
            digest,
            size: i64::try_from(body.len()).unwrap_or(i64::MAX),
            annotations: None,
            platform: None,
        };
        debug!(image = %name, digest = %target.digest, media_type = %target.media_type, "resolved");

        let (manifest_desc, manifest_body) = match manifest::kind_of(&target.media_type) {
            Some(Kind::Manifest) => (target.clone(), body.to_vec()),
            Some(Kind::Index) => {
                let index: Index =
                    serde_json::from_slice(&body).map_err(|source| StepError::ParseManifest {
                        digest: target.digest.clone(),
                        source,
                    })?;
                self.store(
                    &target,
                    manifest::child_gc_labels(&index.manifests),
                    Body::Bytes(&body),
                )
                .await?;
                let chosen = manifest::select_manifest(&index, &self.platform)
                    .ok_or_else(|| StepError::NoMatchingManifest {
                        digest: target.digest.clone(),
                        platform: self.platform.name(),
                    })?
                    .clone();
                check_descriptor(&chosen)?;
                let body = self.small_blob(&chosen, Remote::Manifest).await?;
                (chosen, body)
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
                digest: manifest_desc.digest.clone(),
                source,
            })?;
        check_descriptor(&manifest.config)?;
        for layer in &manifest.layers {
            check_descriptor(layer)?;
        }
        let children = std::iter::once(&manifest.config).chain(&manifest.layers);
        self.store(
            &manifest_desc,
            manifest::child_gc_labels(children),
            Body::Bytes(&manifest_body),
        )
        .await?;

        let config = self.small_blob(&manifest.config, Remote::Blob).await?;
        self.store(&manifest.config, BTreeMap::new(), Body::Bytes(&config))
            .await?;

        // Built eagerly: a lazily mapping closure over borrowed descriptors
        // would make this future not `Send` (a rustc higher-ranked lifetime limitation).
        let downloads: Vec<_> = manifest
            .layers
            .iter()
            .map(|layer| self.store(layer, BTreeMap::new(), Body::Remote))
            .collect();
        futures::stream::iter(downloads)
            .buffer_unordered(MAX_CONCURRENT_DOWNLOADS)
            .try_collect::<()>()
            .await?;

        Ok(Fetched {
            target,
            manifest,
            config,
        })
    }

    /// The bytes of a small blob: from the content store when it is there
    /// (no download), else from the registry. Nothing is stored here.
    async fn small_blob(&self, desc: &Descriptor, remote: Remote) -> Result<Vec<u8>, StepError> {
        let size = usize::try_from(desc.size).unwrap_or(usize::MAX);
        if size > MAX_METADATA_SIZE {
            return Err(StepError::TooLarge {
                digest: desc.digest.clone(),
                limit: MAX_METADATA_SIZE,
            });
        }
        self.protect(&desc.digest).await?;
        let local = self
            .containerd
            .read_content(&desc.digest, MAX_METADATA_SIZE)
            .await
            .map_err(|source| StepError::ReadContent {
                digest: desc.digest.clone(),
                source,
            })?;
        if let Some(bytes) = local.filter(|b| manifest::sha256_digest(b) == desc.digest) {
            return Ok(bytes);
        }
        match remote {
            Remote::Manifest => {
                let reference = self.reference.clone_with_digest(desc.digest.clone());
                let (body, _) = self
                    .client
                    .pull_manifest_raw(&reference, &self.auth, &manifest::ACCEPTED_MANIFEST_TYPES)
                    .await
                    .map_err(|source| StepError::FetchManifest {
                        digest: desc.digest.clone(),
                        source,
                    })?;
                Ok(body.to_vec())
            }
            Remote::Blob => {
                let mut stream = self.download(&desc.digest).await?;
                let mut data = Vec::with_capacity(size);
                while let Some(chunk) = stream.try_next().await.map_err(|e| fetch_error(desc, e))? {
                    if data.len() + chunk.len() > size {
                        return Err(StepError::SizeMismatch {
                            digest: desc.digest.clone(),
                            expected: desc.size,
                        });
                    }
                    data.extend_from_slice(&chunk);
                }
                Ok(data)
            }
        }
    }

    /// Makes `desc` a committed blob of the content store carrying `labels`
    /// and its distribution source: labels an existing blob, else writes it.
    async fn store(
        &self,
        desc: &Descriptor,
        labels: BTreeMap<String, String>,
        body: Body<'_>,
    ) -> Result<(), StepError> {
        self.protect(&desc.digest).await?;
        let blob_lock = self.blob_locks.slot(&desc.digest);
        let _writing = blob_lock.lock().await;
        if let Some(info) = self.info(&desc.digest).await? {
            if info.size == desc.size {
                debug!(digest = %desc.digest, "blob already present");
                return self.label_existing(desc, labels, &info.labels).await;
            }
        }

        let mut backoff = Duration::from_millis(16);
        let writer = loop {
            let opened = self
                .containerd
                .open_writer(
                    &manifest::ingest_ref(desc),
                    &desc.digest,
                    desc.size,
                    self.lease,
                )
                .await;
            match opened {
                Ok(writer) => break writer,
                // Another pull is writing this blob: wait for it (content.OpenWriter).
                Err(status) if status.code() == Code::Unavailable => {
                    debug!(digest = %desc.digest, "ingest locked by another writer, waiting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_LOCK_BACKOFF);
                }
                Err(source) => {
                    return Err(StepError::WriteContent {
                        digest: desc.digest.clone(),
                        source,
                    })
                }
            }
        };
        let Some(mut writer) = writer else {
            return self.label_existing_fresh(desc, labels).await;
        };

        if !writer.is_complete() {
            if writer.offset() > 0 {
                debug!(digest = %desc.digest, offset = writer.offset(), "restarting partial ingest");
                writer.restart();
            }
            let write_error = |source| StepError::WriteContent {
                digest: desc.digest.clone(),
                source,
            };
            match body {
                Body::Bytes(bytes) => {
                    for chunk in bytes.chunks(WRITE_CHUNK) {
                        writer.write(chunk.to_vec()).await.map_err(write_error)?;
                    }
                }
                Body::Remote => {
                    let mut stream = self.download(&desc.digest).await?;
                    let mut buffer = Vec::with_capacity(WRITE_CHUNK);
                    while let Some(chunk) =
                        stream.try_next().await.map_err(|e| fetch_error(desc, e))?
                    {
                        buffer.extend_from_slice(&chunk);
                        if buffer.len() >= WRITE_CHUNK {
                            let full =
                                std::mem::replace(&mut buffer, Vec::with_capacity(WRITE_CHUNK));
                            writer.write(full).await.map_err(write_error)?;
                        }
                    }
                    if !buffer.is_empty() {
                        writer.write(buffer).await.map_err(write_error)?;
                    }
                }
            }
        }

        let (source_key, repo) = distribution_source(&self.reference);
        let mut commit_labels = labels.clone();
        commit_labels.insert(source_key, repo);
        match writer.commit(&commit_labels).await {
            Ok(()) => {
                debug!(digest = %desc.digest, size = desc.size, "blob committed");
                Ok(())
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                self.label_existing_fresh(desc, labels).await
            }
            Err(source) => Err(StepError::WriteContent {
                digest: desc.digest.clone(),
                source,
            }),
        }
    }

    /// Labels a blob that another writer committed (re-reading its labels).
    async fn label_existing_fresh(
        &self,
        desc: &Descriptor,
        labels: BTreeMap<String, String>,
    ) -> Result<(), StepError> {
        let existing = self
            .info(&desc.digest)
            .await?
            .map(|info| info.labels)
            .unwrap_or_default();
        self.label_existing(desc, labels, &existing).await
    }

    /// Adds `labels` and this repository to the distribution source of a blob
    /// already in the store; no call when nothing changes.
    async fn label_existing(
        &self,
        desc: &Descriptor,
        mut labels: BTreeMap<String, String>,
        existing: &std::collections::HashMap<String, String>,
    ) -> Result<(), StepError> {
        let (source_key, repo) = distribution_source(&self.reference);
        let sources = append_source_repo(existing.get(&source_key).map(String::as_str), &repo);
        if source_key.len() + sources.len() <= MAX_LABEL_SIZE {
            labels.insert(source_key, sources);
        } else {
            warn!(digest = %desc.digest, "distribution source label too long, not extended");
        }
        labels.retain(|key, value| existing.get(key) != Some(value));
        self.containerd
            .set_content_labels(&desc.digest, &labels)
            .await
            .map_err(|source| StepError::LabelContent {
                digest: desc.digest.clone(),
                source,
            })
    }

    /// Puts a blob under this pull's lease before it is looked at, so content
    /// found in the store cannot be collected before the image references it.
    async fn protect(&self, digest: &str) -> Result<(), StepError> {
        self.lease
            .add_content(digest)
            .await
            .map_err(|source| StepError::LeaseContent {
                digest: digest.to_owned(),
                source,
            })
    }

    async fn info(
        &self,
        digest: &str,
    ) -> Result<Option<containerd_client::services::v1::Info>, StepError> {
        self.containerd
            .content_info(digest)
            .await
            .map_err(|source| StepError::ContentInfo {
                digest: digest.to_owned(),
                source,
            })
    }

    /// Starts downloading a blob; the stream checks the digest at its end.
    async fn download(&self, digest: &str) -> Result<oci_client::client::SizedStream, StepError> {
        // Registers the credentials for this registry with the client.
        self.client
            .store_auth_if_needed(self.reference.resolve_registry(), &self.auth)
            .await;
        self.client
            .pull_blob_stream(&self.reference, digest)
            .await
            .map_err(|source| StepError::FetchBlob {
                digest: digest.to_owned(),
                source,
            })
    }
}

/// Where the bytes of a blob come from when it must be written.
#[derive(Clone, Copy)]
enum Body<'a> {
    /// Already in memory.
    Bytes(&'a [u8]),
    /// Streamed from the registry.
    Remote,
}

/// How to fetch a small blob from the registry.
#[derive(Clone, Copy)]
enum Remote {
    /// Through the manifests endpoint (by digest).
    Manifest,
    /// Through the blobs endpoint.
    Blob,
}

fn fetch_error(desc: &Descriptor, error: std::io::Error) -> StepError {
    StepError::FetchBlob {
        digest: desc.digest.clone(),
        source: OciDistributionError::from(error),
    }
}

fn check_descriptor(desc: &Descriptor) -> Result<(), StepError> {
    desc.check()
        .map_err(|problem| StepError::InvalidDescriptor {
            digest: desc.digest.clone(),
            problem,
        })
}
