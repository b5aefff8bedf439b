//! The pieces of the OCI image format this module reads: descriptors, image
//! indexes (and Docker manifest lists), image manifests (OCI and Docker
//! schema 2), the platform choice within an index, the garbage-collection
//! labels containerd expects between blobs, and layer chain IDs.
//!
//! Manifests are parsed with small tolerant structs of our own rather than
//! `oci_spec`'s strict types, so Docker media types and unknown fields pass;
//! the raw bytes are kept elsewhere so digests always match what was fetched.

use std::collections::{BTreeMap, HashMap};

use serde::de::IgnoredAny;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// OCI image index.
pub(crate) const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub(crate) const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image config.
pub(crate) const MEDIA_TYPE_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest list.
pub(crate) const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 manifest.
pub(crate) const MEDIA_TYPE_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 2 image config.
pub(crate) const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The manifest media types a registry is asked for when resolving a reference.
pub(crate) const ACCEPTED_MANIFEST_TYPES: [&str; 4] = [
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_DOCKER_MANIFEST,
];

/// Docker layer media types (without `+suffix`), as listed by containerd's
/// `images.IsLayerType`; every `application/vnd.oci.image.layer.*` type is a layer too.
const DOCKER_LAYER_TYPES: [&str; 5] = [
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

/// Label prefix (or full key) under which a parent blob references a child blob.
const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content.";

/// A content descriptor as it appears in an index or manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    /// Media type of the referenced blob (may be empty in sloppy indexes).
    #[serde(default)]
    pub media_type: String,
    /// `algorithm:hex` digest of the blob.
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: i64,
    /// Descriptor annotations.
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
    /// Platform of a manifest within an index.
    #[serde(default)]
    pub platform: Option<Platform>,
}

impl Descriptor {
    /// Checks what later steps rely on: a well-formed digest and a size that is
    /// not negative. Returns the reason when the descriptor is unusable.
    pub(crate) fn check(&self) -> Result<(), &'static str> {
        if !is_valid_digest(&self.digest) {
            return Err("invalid digest");
        }
        if self.size < 0 {
            return Err("negative size");
        }
        Ok(())
    }

    /// The same descriptor in containerd's wire type.
    pub(crate) fn to_proto(&self) -> containerd_client::types::Descriptor {
        containerd_client::types::Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.size,
            annotations: self.annotations.clone().unwrap_or_default(),
        }
    }
}

/// The platform a manifest in an index is built for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct Platform {
    /// CPU architecture, GOARCH style (`amd64`, `arm64`).
    #[serde(default)]
    pub architecture: String,
    /// Operating system, GOOS style (`linux`).
    #[serde(default)]
    pub os: String,
    /// CPU variant (`v7`, `v8`).
    #[serde(default)]
    pub variant: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Index {
    /// The manifests, one per platform (or other index entries).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or Docker schema 2 manifest.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Manifest {
    /// The image config blob.
    pub config: Descriptor,
    /// The layer blobs, base layer first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// What a top-level blob (the target of a reference) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An image index / manifest list: a platform must be chosen.
    Index,
    /// A single-platform manifest.
    Manifest,
}

/// Classifies a media type. `None` for anything that is neither an index nor a manifest.
pub(crate) fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => Some(Kind::Index),
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Some(Kind::Manifest),
        _ => None,
    }
}

/// The media type of a manifest body fetched without a trustworthy
/// `Content-Type`: its `mediaType` field, or for OCI documents that omit it,
/// an index if it lists `manifests` and a manifest if it has a `config`.
/// `Err` carries the unsupported media type (e.g. Docker schema 1).
pub(crate) fn sniff_media_type(body: &[u8]) -> Result<String, serde_json::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<IgnoredAny>,
        config: Option<IgnoredAny>,
    }
    let probe: Probe = serde_json::from_slice(body)?;
    Ok(match probe.media_type {
        Some(media_type) if !media_type.is_empty() => media_type,
        _ if probe.manifests.is_some() => MEDIA_TYPE_OCI_INDEX.to_owned(),
        _ if probe.config.is_some() => MEDIA_TYPE_OCI_MANIFEST.to_owned(),
        _ => String::new(),
    })
}

/// Whether `media_type` is an image layer (containerd `images.IsLayerType`).
pub(crate) fn is_layer_type(media_type: &str) -> bool {
    if media_type.starts_with("application/vnd.oci.image.layer.") {
        return true;
    }
    let base = media_type.split('+').next().unwrap_or(media_type);
    DOCKER_LAYER_TYPES.contains(&base)
}

/// Whether `media_type` is an image config (containerd `images.IsKnownConfig`).
pub(crate) fn is_config_type(media_type: &str) -> bool {
    matches!(media_type, MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG)
}

/// The content-store ingest reference for a blob, as containerd's
/// `remotes.MakeRefKey` names it (`manifest-sha256:…`, `layer-sha256:…`).
/// Concurrent writers of one blob share it, so containerd serializes them.
pub(crate) fn ingest_ref(desc: &Descriptor) -> String {
    let prefix = match kind_of(&desc.media_type) {
        Some(Kind::Manifest) => "manifest",
        Some(Kind::Index) => "index",
        None if is_layer_type(&desc.media_type) => "layer",
        None if is_config_type(&desc.media_type) => "config",
        None => "unknown",
    };
    format!("{prefix}-{}", desc.digest)
}

/// The GC reference labels a parent blob carries for its children, exactly as
/// containerd's `images.SetChildrenMappedLabels` with `ChildGCLabels` writes
/// them: `…content.config` for the config, `…content.m.<i>` for manifests,
/// `…content.l.<i>` for layers and `…content.<i>` for anything else.
pub(crate) fn child_gc_labels<'a>(
    children: impl IntoIterator<Item = &'a Descriptor>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut counters: HashMap<String, usize> = HashMap::new();
    for child in children {
        let key = if is_config_type(&child.media_type) {
            format!("{GC_REF_CONTENT}config")
        } else if kind_of(&child.media_type) == Some(Kind::Manifest) {
            format!("{GC_REF_CONTENT}m.")
        } else if is_layer_type(&child.media_type) {
            format!("{GC_REF_CONTENT}l.")
        } else {
            GC_REF_CONTENT.to_owned()
        };
        let counter = counters.entry(key.clone()).or_default();
        let index = *counter;
        *counter += 1;
        let key = if index > 0 || key.ends_with('.') {
            format!("{key}{index}")
        } else {
            key
        };
        labels.insert(key, child.digest.clone());
    }
    labels
}

/// The platform this node runs images for: `linux` and the host CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HostPlatform {
    /// Always `linux`.
    pub os: &'static str,
    /// GOARCH name of the host CPU.
    pub architecture: &'static str,
}

impl HostPlatform {
    /// The platform of the running binary (what containerd's `platforms.Default()` gives).
    pub(crate) fn current() -> Self {
        Self {
            os: "linux",
            architecture: goarch(std::env::consts::ARCH),
        }
    }

    /// `linux/amd64` style, for messages.
    pub(crate) fn name(&self) -> String {
        format!("{}/{}", self.os, self.architecture)
    }
}

/// Maps a Rust target architecture (or a GOARCH alias) to the GOARCH name images use.
fn goarch(arch: &'static str) -> &'static str {
    match arch {
        "x86_64" => "amd64",
        "x86" | "i386" | "i686" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// Picks the manifest for `host` from an index, like containerd's
/// `images.FilterPlatforms` + `LimitManifests(…, 1)`: an entry whose platform
/// matches the host wins over an entry without a platform; the first of equals wins.
/// Entries that are not image manifests (nested indexes, attestations) are skipped.
pub(crate) fn select_manifest<'a>(index: &'a Index, host: &HostPlatform) -> Option<&'a Descriptor> {
    let score = |desc: &Descriptor| -> Option<u8> {
        if kind_of(&desc.media_type) != Some(Kind::Manifest) {
            return None;
        }
        match &desc.platform {
            None => Some(1),
            Some(p) if p.os == host.os && goarch_alias(&p.architecture) == host.architecture => {
                Some(2)
            }
            Some(_) => None,
        }
    };
    let mut best: Option<(u8, &Descriptor)> = None;
    for desc in &index.manifests {
        if let Some(s) = score(desc) {
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, desc));
            }
        }
    }
    best.map(|(_, desc)| desc)
}

/// Normalizes architecture aliases found in the wild (containerd `platforms.Normalize`).
fn goarch_alias(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "i386" | "i686" => "386",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether `digest` is `algorithm:hex` with a supported algorithm and the
/// right number of lowercase hex digits (what go-digest's `Validate` accepts).
pub(crate) fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The `sha256:` digest of `data`.
pub(crate) fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Chain IDs of a layer stack from its diff IDs (OCI image-spec `identity.ChainID`):
/// `chain[0] = diff[0]`, `chain[n] = sha256(chain[n-1] + " " + diff[n])`.
/// The snapshot holding layers `0..=n` is committed under `chain[n]`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(media_type: &str, digest_seed: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(digest_seed.as_bytes()),
            size: 1,
            annotations: None,
            platform: None,
        }
    }

    #[test]
    fn chain_id_of_a_single_layer_is_its_diff_id() {
        let diff = sha256_digest(b"layer0");
        assert_eq!(chain_ids(std::slice::from_ref(&diff)), vec![diff]);
    }

    #[test]
    fn chain_ids_hash_parent_space_diff_id() {
        let d0 = sha256_digest(b"layer0");
        let d1 = sha256_digest(b"layer1");
        let d2 = sha256_digest(b"layer2");
        let chain = chain_ids(&[d0.clone(), d1.clone(), d2.clone()]);
        let c1 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{d0} {d1}")))
        );
        let c2 = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(format!("{c1} {d2}")))
        );
        assert_eq!(chain, vec![d0, c1, c2]);
    }

    #[test]
    fn chain_ids_match_an_independent_computation() {
        // Diff IDs sha256("a"), sha256("b"), sha256("c"); chain IDs computed with Python's hashlib.
        let diff_ids = [
            "sha256:ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb".to_owned(),
            "sha256:3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d".to_owned(),
            "sha256:2e7d2c03a9507ae265ecf5b5356885a53393a2029d241394997265a1a25aefc6".to_owned(),
        ];
        assert_eq!(
            chain_ids(&diff_ids),
            vec![
                diff_ids[0].clone(),
                "sha256:51c0c8ace48498d6f5fee6b0592cc06f2da0f3cbe09c5a34a97dce85c3889676"
                    .to_owned(),
                "sha256:2fce7f8ce91bcf0a1428b36e1024639fdbd9469eea762dba98aa749631885106"
                    .to_owned(),
            ]
        );
    }

    #[test]
    fn chain_ids_of_no_layers_are_empty() {
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn child_labels_follow_containerd_naming() {
        let config = desc(MEDIA_TYPE_OCI_CONFIG, "config");
        let l0 = desc("application/vnd.oci.image.layer.v1.tar+gzip", "l0");
        let l1 = desc("application/vnd.docker.image.rootfs.diff.tar.gzip", "l1");
        let labels = child_gc_labels([&config, &l0, &l1]);
        assert_eq!(labels["containerd.io/gc.ref.content.config"], config.digest);
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], l0.digest);
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], l1.digest);
        assert_eq!(labels.len(), 3);

        let m0 = desc(MEDIA_TYPE_OCI_MANIFEST, "m0");
        let m1 = desc(MEDIA_TYPE_DOCKER_MANIFEST, "m1");
        let other = desc("application/vnd.in-toto+json", "att");
        let labels = child_gc_labels([&m0, &m1, &other]);
        assert_eq!(labels["containerd.io/gc.ref.content.m.0"], m0.digest);
        assert_eq!(labels["containerd.io/gc.ref.content.m.1"], m1.digest);
        assert_eq!(labels["containerd.io/gc.ref.content.0"], other.digest);
    }

    #[test]
    fn layer_and_config_types_are_recognized() {
        assert!(is_layer_type("application/vnd.oci.image.layer.v1.tar"));
        assert!(is_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"));
        assert!(is_layer_type(
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        ));
        assert!(!is_layer_type(MEDIA_TYPE_OCI_MANIFEST));
        assert!(is_config_type(MEDIA_TYPE_DOCKER_CONFIG));
        assert!(!is_config_type("application/json"));
    }

    #[test]
    fn ingest_refs_are_prefixed_by_kind() {
        let m = desc(MEDIA_TYPE_DOCKER_MANIFEST, "m");
        assert_eq!(ingest_ref(&m), format!("manifest-{}", m.digest));
        let l = desc("application/vnd.oci.image.layer.v1.tar+gzip", "l");
        assert_eq!(ingest_ref(&l), format!("layer-{}", l.digest));
        let i = desc(MEDIA_TYPE_OCI_INDEX, "i");
        assert_eq!(ingest_ref(&i), format!("index-{}", i.digest));
    }

    #[test]
    fn media_type_is_sniffed_from_the_body() {
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(sniff_media_type(index).unwrap(), MEDIA_TYPE_OCI_INDEX);
        let manifest = br#"{"schemaVersion":2,"config":{"digest":"x","size":1},"layers":[]}"#;
        assert_eq!(sniff_media_type(manifest).unwrap(), MEDIA_TYPE_OCI_MANIFEST);
        let docker = format!(r#"{{"schemaVersion":2,"mediaType":"{MEDIA_TYPE_DOCKER_MANIFEST}"}}"#);
        assert_eq!(
            sniff_media_type(docker.as_bytes()).unwrap(),
            MEDIA_TYPE_DOCKER_MANIFEST
        );
        assert!(sniff_media_type(b"not json").is_err());
    }

    #[test]
    fn platform_selection_prefers_the_host() {
        let host = HostPlatform {
            os: "linux",
            architecture: "amd64",
        };
        let index: Index = serde_json::from_value(serde_json::json!({
            "manifests": [
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": sha256_digest(b"arm"), "size": 1,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
                {"mediaType": MEDIA_TYPE_OCI_INDEX, "digest": sha256_digest(b"nested"), "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": sha256_digest(b"any"), "size": 1},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": sha256_digest(b"amd"), "size": 1,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": sha256_digest(b"win"), "size": 1,
                 "platform": {"architecture": "amd64", "os": "windows"}},
            ]
        }))
        .unwrap();
        let chosen = select_manifest(&index, &host).unwrap();
        assert_eq!(chosen.digest, sha256_digest(b"amd"));

        let arm = HostPlatform {
            os: "linux",
            architecture: "arm64",
        };
        assert_eq!(
            select_manifest(&index, &arm).unwrap().digest,
            sha256_digest(b"arm")
        );

        let s390 = HostPlatform {
            os: "linux",
            architecture: "s390x",
        };
        assert_eq!(
            select_manifest(&index, &s390).unwrap().digest,
            sha256_digest(b"any")
        );

        let only_windows = Index {
            manifests: vec![index.manifests[4].clone()],
        };
        assert!(select_manifest(&only_windows, &host).is_none());
    }

    #[test]
    fn digests_are_validated() {
        assert!(is_valid_digest(&sha256_digest(b"x")));
        assert!(!is_valid_digest("sha256:abc"));
        assert!(!is_valid_digest("md5:d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!is_valid_digest(&sha256_digest(b"x").to_uppercase()));
        assert!(!is_valid_digest("no-colon"));
    }

    #[test]
    fn host_platform_is_linux() {
        let host = HostPlatform::current();
        assert_eq!(host.os, "linux");
        assert!(!host.architecture.is_empty());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(host.name(), "linux/amd64");
    }
}
