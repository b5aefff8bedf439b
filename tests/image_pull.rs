//! Integration tests of `runtime::image` against a real containerd and registry.
//!
//! Requirements (`scripts/test.sh` provides them; without them these tests
//! fail, they never skip):
//! - containerd 1.6 at `/run/containerd/containerd.sock` with the `overlayfs` snapshotter;
//! - a registry on `127.0.0.1:5000` (plain HTTP) serving `test/busybox:1.0`,
//!   as pushed by `scripts/test-images.sh`, and not serving `test/nope:1`;
//!   one test pushes a freshly generated image to `test/rkubelet-image-test:fresh`
//!   there (and pulls it by digest), so its layers really travel through
//!   the content service instead of being found in containerd already.
//!
//! The first test pulls into namespace `k8s.io`, where `127.0.0.1:5000/test/busybox:1.0`
//! is a shared fixture and stays. Every other test works in a namespace of its
//! own (`rkubelet-test-…`): pulls there download and unpack for real, and a
//! guard deletes the namespace's images, leases and then the namespace.

use std::collections::HashMap;
use std::time::Duration;

use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    Kind, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    content_client::ContentClient, CreateImageRequest, DeleteImageRequest, DeleteNamespaceRequest,
    DeleteRequest, GetImageRequest, Image, InfoRequest, ListImagesRequest, ListRequest,
};
use rand::RngCore;
use rkubelet::runtime::image::{
    CredentialProviders, ImageError, ImageService, PullOptions, PullPolicy, PullSecrets,
};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::Request;

#[path = "common/registry.rs"]
mod registry;

const SOCKET: &str = "/run/containerd/containerd.sock";
const SNAPSHOTTER: &str = "overlayfs";
const IMAGE: &str = "127.0.0.1:5000/test/busybox:1.0";
const MISSING: &str = "127.0.0.1:5000/test/nope:1";
/// No registry serves `localhost` (port 80): pulling such a name must fail.
const LOCAL_ONLY: &str = "localhost/test/busybox:1.0";
/// Where the generated image is pushed.
const FRESH_REPO: &str = "127.0.0.1:5000/test/rkubelet-image-test:fresh";

async fn connect() -> Channel {
    containerd_client::connect(SOCKET)
        .await
        .unwrap_or_else(|e| panic!("containerd must be running at {SOCKET}: {e}"))
}

fn service(channel: &Channel, namespace: &str) -> ImageService {
    ImageService::new(
        channel.clone(),
        namespace,
        SNAPSHOTTER,
        PullOptions::default(),
    )
}

fn request<T>(message: T, namespace: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "containerd-namespace",
        namespace.parse().expect("ascii namespace"),
    );
    request
}

async fn image_record(channel: &Channel, namespace: &str, name: &str) -> Option<Image> {
    let req = request(
        GetImageRequest {
            name: name.to_owned(),
        },
        namespace,
    );
    match ImagesClient::new(channel.clone()).get(req).await {
        Ok(response) => response.into_inner().image,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("images.Get({name}): {status}"),
    }
}

async fn content_labels(
    channel: &Channel,
    namespace: &str,
    digest: &str,
) -> HashMap<String, String> {
    let req = request(
        InfoRequest {
            digest: digest.to_owned(),
        },
        namespace,
    );
    let info = ContentClient::new(channel.clone())
        .info(req)
        .await
        .unwrap_or_else(|s| panic!("content.Info({digest}): {s}"))
        .into_inner()
        .info
        .expect("content info");
    info.labels
}

async fn snapshot_kind(channel: &Channel, namespace: &str, key: &str) -> Option<Kind> {
    let req = request(
        StatSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: key.to_owned(),
        },
        namespace,
    );
    match SnapshotsClient::new(channel.clone()).stat(req).await {
        Ok(response) => response.into_inner().info.map(|info| info.kind()),
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("snapshots.Stat({key}): {status}"),
    }
}

async fn lease_ids(channel: &Channel, namespace: &str) -> Vec<String> {
    let req = request(ListRequest { filters: vec![] }, namespace);
    let leases = LeasesClient::new(channel.clone())
        .list(req)
        .await
        .expect("leases.List");
    leases
        .into_inner()
        .leases
        .into_iter()
        .map(|lease| lease.id)
        .collect()
}

/// A containerd namespace used by one test, emptied and deleted on drop.
struct TestNamespace {
    name: String,
}

impl TestNamespace {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            name: format!("rkubelet-test-{}", &id[..12]),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let namespace = self.name.clone();
        // Drop cannot await: clean up on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("cleanup runtime");
            runtime.block_on(delete_namespace(&namespace));
        });
        if cleanup.join().is_err() {
            eprintln!("cleanup of namespace {} panicked", self.name);
        }
    }
}

async fn delete_namespace(namespace: &str) {
    let channel = connect().await;
    for lease in lease_ids(&channel, namespace).await {
        let req = request(
            DeleteRequest {
                id: lease,
                sync: false,
            },
            namespace,
        );
        let _ = LeasesClient::new(channel.clone()).delete(req).await;
    }
    let req = request(ListImagesRequest { filters: vec![] }, namespace);
    let images = ImagesClient::new(channel.clone())
        .list(req)
        .await
        .expect("images.List");
    for image in images.into_inner().images {
        // sync: garbage-collect the content and snapshots now, so the namespace empties.
        let req = request(
            DeleteImageRequest {
                name: image.name,
                sync: true,
                target: None,
            },
            namespace,
        );
        let _ = ImagesClient::new(channel.clone()).delete(req).await;
    }
    let req = Request::new(DeleteNamespaceRequest {
        name: namespace.to_owned(),
    });
    if let Err(status) = NamespacesClient::new(channel).delete(req).await {
        eprintln!("namespace {namespace} not deleted: {}", status.message());
    }
}

#[tokio::test]
async fn pull_unpacks_into_the_snapshotter_and_records_the_image() {
    let channel = connect().await;
    let images = service(&channel, "k8s.io");

    let info = images
        .pull(IMAGE)
        .await
        .unwrap_or_else(|e| panic!("pull {IMAGE}: {e}"));

    assert_eq!(info.name, IMAGE);
    assert!(info.id.starts_with("sha256:"), "image id {}", info.id);
    assert!(
        info.chain_id.starts_with("sha256:"),
        "chain id {:?}",
        info.chain_id
    );
    assert!(!info.config.rootfs().diff_ids().is_empty());
    assert_eq!(
        snapshot_kind(&channel, "k8s.io", &info.chain_id).await,
        Some(Kind::Committed)
    );

    let record = image_record(&channel, "k8s.io", IMAGE)
        .await
        .expect("image record");
    let target = record.target.expect("record target");
    assert_eq!(target.digest, info.target_digest);
    assert_eq!(
        record
            .labels
            .get("io.cri-containerd.image")
            .map(String::as_str),
        Some("managed")
    );

    // The GC references containerd's own pull would have set.
    let manifest_labels = content_labels(&channel, "k8s.io", &info.target_digest).await;
    assert_eq!(
        manifest_labels.get("containerd.io/gc.ref.content.config"),
        Some(&info.id)
    );
    assert!(
        manifest_labels.contains_key("containerd.io/gc.ref.content.l.0"),
        "{manifest_labels:?}"
    );
    let sources = manifest_labels
        .get("containerd.io/distribution.source.127.0.0.1")
        .expect("distribution source label");
    assert!(
        sources.split(',').any(|repo| repo == "test/busybox"),
        "{sources}"
    );
    let config_labels = content_labels(&channel, "k8s.io", &info.id).await;
    assert_eq!(
        config_labels.get("containerd.io/gc.ref.snapshot.overlayfs"),
        Some(&info.chain_id)
    );
    let layer = &manifest_labels["containerd.io/gc.ref.content.l.0"];
    assert!(content_labels(&channel, "k8s.io", layer)
        .await
        .contains_key("containerd.io/distribution.source.127.0.0.1"));

    // Pulling again re-resolves and finds everything in place.
    let again = images.pull(IMAGE).await.expect("second pull");
    assert_eq!(again.id, info.id);
    assert_eq!(again.chain_id, info.chain_id);
}

#[tokio::test]
async fn if_not_present_uses_the_local_image_without_contacting_a_registry() {
    let channel = connect().await;
    let ns = TestNamespace::new();
    let pulled = service(&channel, &ns.name).pull(IMAGE).await.expect("pull");

    // Tag the image under a name no registry serves.
    let record = image_record(&channel, &ns.name, IMAGE)
        .await
        .expect("record");
    let tagged = Image {
        name: LOCAL_ONLY.to_owned(),
        ..record
    };
    let req = request(
        CreateImageRequest {
            image: Some(tagged),
            source_date_epoch: None,
        },
        &ns.name,
    );
    ImagesClient::new(channel.clone())
        .create(req)
        .await
        .expect("tag image");

    // A fresh service: no pull result cached in memory.
    let images = service(&channel, &ns.name);
    let info = images
        .ensure(LOCAL_ONLY, PullPolicy::IfNotPresent)
        .await
        .expect("IfNotPresent");
    assert_eq!(info.name, LOCAL_ONLY);
    assert_eq!(info.id, pulled.id);
    assert_eq!(info.chain_id, pulled.chain_id);
    let never = images
        .ensure(LOCAL_ONLY, PullPolicy::Never)
        .await
        .expect("Never");
    assert_eq!(never.id, pulled.id);

    // The same name with Always must go to the (absent) registry and fail.
    let err = images
        .ensure(LOCAL_ONLY, PullPolicy::Always)
        .await
        .expect_err("no registry on localhost");
    assert_eq!(err.reason(), "ErrImagePull", "{err}");
}

#[tokio::test]
async fn always_pulls_again_after_the_record_is_removed() {
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);

    let first = images
        .ensure(IMAGE, PullPolicy::Always)
        .await
        .expect("first pull");
    images.remove(IMAGE).await.expect("remove");
    assert!(image_record(&channel, &ns.name, IMAGE).await.is_none());
    assert!(images.local(IMAGE).await.expect("local").is_none());
    images
        .remove(IMAGE)
        .await
        .expect("removing an absent image succeeds");

    let never = images
        .ensure(IMAGE, PullPolicy::Never)
        .await
        .expect_err("absent with Never");
    assert_eq!(never.reason(), "ErrImageNeverPull");
    assert!(matches!(never, ImageError::NotPresent { .. }));

    let second = images
        .ensure(IMAGE, PullPolicy::Always)
        .await
        .expect("pull after remove");
    assert_eq!(second.id, first.id);
    assert!(image_record(&channel, &ns.name, IMAGE).await.is_some());
    let local = images
        .local(IMAGE)
        .await
        .expect("local")
        .expect("present again");
    assert_eq!(local.chain_id, first.chain_id);
}

#[tokio::test]
async fn missing_images_fail_with_upstream_reasons() {
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);

    let err = images
        .ensure(MISSING, PullPolicy::IfNotPresent)
        .await
        .expect_err("no such image");
    assert_eq!(err.reason(), "ErrImagePull");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(r#"failed to pull and unpack image "{MISSING}": failed to resolve reference "{MISSING}""#)),
        "{message}"
    );
    assert!(message.ends_with("not found"), "{message}");

    let err = images
        .ensure(MISSING, PullPolicy::Never)
        .await
        .expect_err("Never and absent");
    assert_eq!(err.reason(), "ErrImageNeverPull");
    assert_eq!(
        err.to_string(),
        format!(r#"Container image "{MISSING}" is not present with pull policy of Never"#)
    );

    let err = images
        .ensure("Not/A Valid:Name", PullPolicy::IfNotPresent)
        .await
        .expect_err("invalid");
    assert_eq!(err.reason(), "InvalidImageName");

    assert!(
        lease_ids(&channel, &ns.name).await.is_empty(),
        "failed pulls leave no lease"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_ensures_of_one_image_all_succeed() {
    let channel = connect().await;

    // One service: the second caller waits for the first one's pull.
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);
    let clone = images.clone();
    let (a, b) = tokio::join!(
        images.ensure(IMAGE, PullPolicy::IfNotPresent),
        clone.ensure(IMAGE, PullPolicy::Always),
    );
    let (a, b) = (a.expect("first ensure"), b.expect("second ensure"));
    assert_eq!(a.id, b.id);
    assert_eq!(a.chain_id, b.chain_id);
    assert_eq!(
        snapshot_kind(&channel, &ns.name, &a.chain_id).await,
        Some(Kind::Committed)
    );
    assert!(
        lease_ids(&channel, &ns.name).await.is_empty(),
        "pull leases are released"
    );

    // Two services (two agents' worth of locks): containerd arbitrates the
    // concurrent writes of each blob and commits of each snapshot.
    let ns2 = TestNamespace::new();
    let (one, two) = (service(&channel, &ns2.name), service(&channel, &ns2.name));
    let results = tokio::join!(
        one.ensure(IMAGE, PullPolicy::Always),
        two.ensure(IMAGE, PullPolicy::Always),
        one.ensure(IMAGE, PullPolicy::IfNotPresent),
    );
    let (x, y, z) = (
        results.0.expect("one"),
        results.1.expect("two"),
        results.2.expect("three"),
    );
    assert_eq!(x.chain_id, y.chain_id);
    assert_eq!(y.chain_id, z.chain_id);
    assert_eq!(
        snapshot_kind(&channel, &ns2.name, &x.chain_id).await,
        Some(Kind::Committed)
    );
    assert!(
        lease_ids(&channel, &ns2.name).await.is_empty(),
        "pull leases are released"
    );
}

#[tokio::test]
async fn local_unpacks_again_when_the_snapshot_is_gone() {
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);
    let info = images.pull(IMAGE).await.expect("pull");

    // Removing the top snapshot (it has no children) leaves the image not unpacked.
    let req = request(
        RemoveSnapshotRequest {
            snapshotter: SNAPSHOTTER.to_owned(),
            key: info.chain_id.clone(),
        },
        &ns.name,
    );
    SnapshotsClient::new(channel.clone())
        .remove(req)
        .await
        .expect("remove snapshot");
    assert_eq!(
        snapshot_kind(&channel, &ns.name, &info.chain_id).await,
        None
    );

    let local = tokio::time::timeout(Duration::from_secs(60), images.local(IMAGE))
        .await
        .expect("local() in time")
        .expect("local")
        .expect("image present");
    assert_eq!(local.chain_id, info.chain_id);
    assert_eq!(
        snapshot_kind(&channel, &ns.name, &info.chain_id).await,
        Some(Kind::Committed)
    );
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// An uncompressed tar archive of regular files (ustar headers).
fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        header[100..108].copy_from_slice(b"0000644\0");
        header[108..116].copy_from_slice(b"0000000\0");
        header[116..124].copy_from_slice(b"0000000\0");
        header[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        header[136..148].copy_from_slice(b"00000000000\0");
        header[148..156].copy_from_slice(b"        ");
        header[156] = b'0';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        let checksum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Pushes a two-layer image whose blobs nobody has seen; returns the pinned
/// reference and the layers' diff IDs.
async fn push_fresh_image() -> (String, [String; 2]) {
    let mut big = vec![0u8; 3 * 1024 * 1024 + 4321];
    rand::rng().fill_bytes(&mut big);
    let note = format!("fresh {}", uuid::Uuid::new_v4());
    let layers = [
        tar(&[("big.bin", &big)]),
        tar(&[("note.txt", note.as_bytes())]),
    ];
    let diff_ids = [sha256(&layers[0]), sha256(&layers[1])];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });

    let client = oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    });
    let reference: oci_client::Reference = FRESH_REPO.parse().expect("reference");
    let auth = oci_client::secrets::RegistryAuth::Anonymous;
    let layers: Vec<_> = layers
        .into_iter()
        .map(|data| oci_client::client::ImageLayer::oci_v1(data, None))
        .collect();
    let config = oci_client::client::Config::oci_v1(config.to_string().into_bytes(), None);
    client
        .push(&reference, &layers, config, &auth, None)
        .await
        .expect("push the generated image to 127.0.0.1:5000");
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .expect("digest of the pushed manifest");
    let pinned = format!("127.0.0.1:5000/test/rkubelet-image-test@{digest}");
    (pinned, diff_ids)
}

#[tokio::test]
async fn a_new_multi_layer_image_is_downloaded_and_unpacked() {
    let (image, diff_ids) = push_fresh_image().await;
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);

    let info = images
        .ensure(&image, PullPolicy::IfNotPresent)
        .await
        .expect("pull");

    let top = sha256(format!("{} {}", diff_ids[0], diff_ids[1]).as_bytes());
    assert_eq!(info.chain_id, top);
    assert_eq!(info.config.rootfs().diff_ids(), &diff_ids.to_vec());
    assert_eq!(
        image.rsplit_once('@').map(|(_, d)| d),
        Some(info.target_digest.as_str())
    );
    for chain_id in [&diff_ids[0], &top] {
        assert_eq!(
            snapshot_kind(&channel, &ns.name, chain_id).await,
            Some(Kind::Committed)
        );
    }
    let manifest_labels = content_labels(&channel, &ns.name, &info.target_digest).await;
    for (i, diff_id) in diff_ids.iter().enumerate() {
        let layer = &manifest_labels[&format!("containerd.io/gc.ref.content.l.{i}")];
        let labels = content_labels(&channel, &ns.name, layer).await;
        assert_eq!(labels.get("containerd.io/uncompressed"), Some(diff_id));
    }
    assert!(
        lease_ids(&channel, &ns.name).await.is_empty(),
        "pull lease released"
    );
}

// ---- private registries (issue 12) ---------------------------------------------

fn docker_secret(name: &str, location: &str, user: &str, password: &str) -> k8s_openapi::api::core::v1::Secret {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = format!(r#"{{"auths":{{"{location}":{{"auth":"{auth}"}}}}}}"#);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64::engine::general_purpose::STANDARD.encode(config)},
    }))
    .unwrap()
}

fn service_with(channel: &Channel, namespace: &str, options: PullOptions) -> ImageService {
    ImageService::new(channel.clone(), namespace, SNAPSHOTTER, options)
}

#[tokio::test]
async fn an_authenticating_registry_needs_a_matching_credential_and_each_is_tried_in_turn() {
    let reg = registry::Registry::start("auth", 5141, Some(("alice", "secret")));
    reg.push("test/private:1.0");
    let image = format!("{}/test/private:1.0", reg.addr);
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service(&channel, &ns.name);

    // No credential: containerd 1.6's wording for the 401 of its resolver.
    let err = images.ensure(&image, PullPolicy::Always).await.expect_err("anonymous pull");
    assert_eq!(err.reason(), "ErrImagePull");
    let unauthorized = format!(
        r#"failed to pull and unpack image "{image}": failed to resolve reference "{image}": pulling from host {} failed with status code [manifests 1.0]: 401 Unauthorized"#,
        reg.addr
    );
    assert_eq!(err.to_string(), unauthorized);

    // A credential for another registry does not match: the same anonymous failure.
    let other = PullSecrets::from_secrets(&[docker_secret("other", "127.0.0.1:5000", "alice", "secret")]).unwrap();
    let err = images.ensure_with(&image, PullPolicy::Always, &other).await.unwrap_err();
    assert_eq!(err.to_string(), unauthorized);

    // Two wrong credentials: both tried, Go's aggregate of the (equal) messages.
    let wrong = PullSecrets::from_secrets(&[
        docker_secret("w1", &format!("https://{}", reg.addr), "x", "y"),
        docker_secret("w2", &format!("{}/test", reg.addr), "alice", "wrong"),
    ])
    .unwrap();
    let err = images.ensure_with(&image, PullPolicy::Always, &wrong).await.unwrap_err();
    assert!(matches!(err, ImageError::PullAttempts { ref errors, .. } if errors.len() == 2), "{err:?}");
    assert_eq!(err.reason(), "ErrImagePull");
    assert_eq!(err.to_string(), unauthorized);

    // A wrong one first (more specific path), then the right one: the pull succeeds.
    let secrets = PullSecrets::from_secrets(&[
        docker_secret("right", &reg.addr, "alice", "secret"),
        docker_secret("wrong", &format!("{}/test/private", reg.addr), "alice", "nope"),
    ])
    .unwrap();
    let info = images.ensure_with(&image, PullPolicy::Always, &secrets).await.expect("pull with the secret");
    assert_eq!(info.name, image);
    assert!(reg.log().contains("alice"), "the registry saw the user");

    // The node's docker config (a fresh service: no pull in memory).
    let dir = tempfile::tempdir_in("/var/lib/rkubelet-test").unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, format!(r#"{{"auths":{{"http://{}":{{"username":"alice","password":"secret"}}}}}}"#, reg.addr)).unwrap();
    let node = service_with(&channel, &ns.name, PullOptions { docker_config: Some(config), ..PullOptions::default() });
    node.ensure(&image, PullPolicy::Always).await.expect("pull with the node's docker config");
}

/// A registry (user `u`, password `pw`) holding `repos`, and a credential
/// provider plugin `name` answering for it with `cache` (key type, duration)
/// after `sleep` seconds; the plugin's directory lives as long as the `TempDir`.
fn registry_with_plugin(
    port: u16,
    repos: &[&str],
    name: &str,
    cache: (&str, &str),
    sleep: &str,
) -> (registry::Registry, tempfile::TempDir, std::path::PathBuf, std::sync::Arc<CredentialProviders>) {
    let reg = registry::Registry::start(name, port, Some(("u", "pw")));
    for repo in repos {
        reg.push(repo);
    }
    let dir = tempfile::tempdir_in("/var/lib/rkubelet-test").unwrap();
    let bin = dir.path().join("bin");
    registry::credential_plugin(&bin, name, &reg.addr, ("u", "pw"), cache, sleep);
    let config = dir.path().join("providers.yaml");
    registry::provider_config(&config, name, &[&reg.addr]);
    let providers = std::sync::Arc::new(CredentialProviders::load(&config, &bin).expect("valid provider config"));
    (reg, dir, bin, providers)
}

#[tokio::test]
async fn a_credential_provider_plugin_answers_once_for_two_pulls() {
    let (reg, _dir, bin, providers) = registry_with_plugin(5142, &["test/private:1.0", "test/private:2.0"], "test-provider", ("Registry", "5m"), "0");
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service_with(&channel, &ns.name, PullOptions { credential_providers: Some(providers), ..PullOptions::default() });

    for tag in ["1.0", "2.0"] {
        images.ensure(&format!("{}/test/private:{tag}", reg.addr), PullPolicy::Always).await.unwrap_or_else(|e| panic!("{tag}: {e}"));
    }
    let runs = registry::plugin_runs(&bin, "test-provider");
    assert_eq!(runs.len(), 1, "the Registry-keyed answer is cached: {runs:?}");
    let request: serde_json::Value = serde_json::from_str(&runs[0].2).unwrap();
    assert_eq!(request["image"], format!("{}/test/private", reg.addr));
    assert_eq!(request["kind"], "CredentialProviderRequest");

    // An image the plugin does not match: not run, anonymous, refused.
    let err = images.ensure("127.0.0.1:5000/test/nope:1", PullPolicy::Always).await.unwrap_err();
    assert!(err.to_string().ends_with("not found"), "{err}");
    assert_eq!(registry::plugin_runs(&bin, "test-provider").len(), 1);
}

#[tokio::test]
async fn a_hosts_toml_mirror_serves_an_image_its_server_does_not_have() {
    let mirror = registry::Registry::start("mirror", 5143, None);
    mirror.push("test/mirrored:1.0");
    // Nothing listens on 5144: the server is unreachable, only the mirror has the image.
    let image = "127.0.0.1:5144/test/mirrored:1.0";
    let dir = tempfile::tempdir_in("/var/lib/rkubelet-test").unwrap();
    let host_dir = dir.path().join("127.0.0.1:5144");
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"http://127.0.0.1:5144\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", mirror.addr),
    )
    .unwrap();
    let channel = connect().await;
    let ns = TestNamespace::new();

    let without = service(&channel, &ns.name);
    assert_eq!(without.ensure(image, PullPolicy::Always).await.unwrap_err().reason(), "ErrImagePull");

    let images = service_with(&channel, &ns.name, PullOptions { hosts_dir: Some(dir.path().to_owned()), ..PullOptions::default() });
    let info = images.ensure(image, PullPolicy::Always).await.expect("pull through the mirror");
    assert_eq!(info.name, image);
    let record = image_record(&channel, &ns.name, image).await.expect("image record under the server's name");
    assert_eq!(record.target.unwrap().digest, info.target_digest);
    // Blobs are labelled with the image's own registry, as containerd does.
    let labels = content_labels(&channel, &ns.name, &info.target_digest).await;
    assert!(labels.contains_key("containerd.io/distribution.source.127.0.0.1"), "{labels:?}");
    assert!(mirror.log().contains("/v2/test/mirrored/manifests/1.0"), "the mirror served the manifest");

    // A broken hosts.toml fails the pull with a message naming the file.
    std::fs::write(host_dir.join("hosts.toml"), "server = [").unwrap();
    let fresh = service_with(&channel, &ns.name, PullOptions { hosts_dir: Some(dir.path().to_owned()), ..PullOptions::default() });
    let err = fresh.ensure(image, PullPolicy::Always).await.unwrap_err().to_string();
    assert!(err.contains(&format!("failed to decode hosts.toml {}", host_dir.join("hosts.toml").display())), "{err}");
}

#[tokio::test]
async fn a_hosts_toml_ca_or_skip_verify_reaches_an_https_registry() {
    let dir = tempfile::tempdir_in("/var/lib/rkubelet-test").unwrap();
    let (ca, cert, key) = registry::tls_files(&dir.path().join("tls"));
    let reg = registry::Registry::start_with("tls", 5148, None, Some((&cert, &key)));
    reg.push("test/tls:1.0");
    let image = format!("{}/test/tls:1.0", reg.addr);
    let hosts = dir.path().join("certs.d");
    let host_dir = hosts.join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    let channel = connect().await;
    let ns = TestNamespace::new();
    let with_hosts = |toml: String| {
        std::fs::write(host_dir.join("hosts.toml"), toml).unwrap();
        service_with(&channel, &ns.name, PullOptions { hosts_dir: Some(hosts.clone()), ..PullOptions::default() })
    };

    // HTTPS without the CA: the certificate is refused.
    let err = with_hosts(format!("server = \"https://{}\"\n", reg.addr)).ensure(&image, PullPolicy::Always).await.unwrap_err();
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // The CA from hosts.toml (relative to the host's directory): trusted.
    std::fs::copy(&ca, host_dir.join("registry-ca.pem")).unwrap();
    let info = with_hosts(format!("server = \"https://{}\"\nca = \"registry-ca.pem\"\n", reg.addr)).ensure(&image, PullPolicy::Always).await.expect("pull with the CA");
    assert_eq!(info.name, image);
    // skip_verify: any certificate.
    with_hosts(format!("server = \"https://{}\"\nskip_verify = true\n", reg.addr)).ensure(&image, PullPolicy::Always).await.expect("pull with skip_verify");
}

/// Pulls two images at once; returns the plugin's run intervals.
async fn two_pulls_at_once(max_parallel_pulls: Option<usize>, port: u16) -> Vec<(u64, u64, String)> {
    // Not cached, one second per run: every pull runs it inside its pull slot.
    let (reg, _dir, bin, providers) = registry_with_plugin(port, &["test/private-a:1.0", "test/private-b:1.0"], "slow", ("Image", "0s"), "1");
    let channel = connect().await;
    let ns = TestNamespace::new();
    let images = service_with(&channel, &ns.name, PullOptions { credential_providers: Some(providers), max_parallel_pulls, ..PullOptions::default() });
    // Two repositories: one plugin run each (runs for one repository at once are shared).
    let (a, b) = (format!("{}/test/private-a:1.0", reg.addr), format!("{}/test/private-b:1.0", reg.addr));
    let (x, y) = tokio::join!(images.ensure(&a, PullPolicy::Always), images.ensure(&b, PullPolicy::Always));
    x.expect("first pull");
    y.expect("second pull");
    let mut runs = registry::plugin_runs(&bin, "slow");
    runs.sort();
    assert_eq!(runs.len(), 2, "{runs:?}");
    runs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serialized_pulls_take_turns_and_parallel_ones_overlap() {
    let serial = two_pulls_at_once(Some(1), 5146).await;
    assert!(serial[1].0 >= serial[0].1, "serializeImagePulls: the second pull starts after the first: {serial:?}");
    let parallel = two_pulls_at_once(Some(2), 5147).await;
    assert!(parallel[1].0 < parallel[0].1, "maxParallelImagePulls 2: both pulls at once: {parallel:?}");
}
