//! Unpacking an image's layers into snapshots, as containerd 1.6's Go client
//! does (unpacker.go / rootfs.ApplyLayers): for each layer whose chain snapshot
//! is missing, prepare an active snapshot on the parent chain under a unique
//! key, apply the layer through the diff service, check the diff ID and commit
//! the snapshot under the chain ID. A concurrent unpack committing first is
//! success. Finally the config blob gets the snapshot GC label, so the
//! snapshots live as long as the image does.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use tonic::Code;
use tracing::{debug, warn};

use super::manifest::Descriptor;
use super::store::{Containerd, Lease};
use super::StepError;

/// Snapshot label naming the chain ID an extraction is for (remote snapshotters read it).
const SNAPSHOT_REF_LABEL: &str = "containerd.io/snapshot.ref";
/// Content label recording a layer's verified diff ID.
const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";
/// Attempts at preparing an extraction snapshot under a fresh key.
const PREPARE_ATTEMPTS: usize = 3;

/// Unpacks `layers` (with their `chain` IDs, same length) and labels the config.
pub(crate) async fn unpack(
    containerd: &Containerd,
    lease: &Lease,
    config_digest: &str,
    layers: &[Descriptor],
    diff_ids: &[String],
    chain: &[String],
) -> Result<(), StepError> {
    'layers: for (index, ((layer, diff_id), chain_id)) in
        layers.iter().zip(diff_ids).zip(chain).enumerate()
    {
        if snapshot_exists(containerd, chain_id).await? {
            continue;
        }
        let parent = index.checked_sub(1).and_then(|i| chain.get(i)).map_or("", String::as_str);
        let labels = HashMap::from([(SNAPSHOT_REF_LABEL.to_owned(), chain_id.clone())]);

        let mut prepared = None;
        for _ in 0..PREPARE_ATTEMPTS {
            let key = format!("extract-{} {chain_id}", unique_part());
            match containerd
                .prepare_snapshot(&key, parent, &labels, lease)
                .await
            {
                Ok(mounts) => {
                    prepared = Some((key, mounts));
                    break;
                }
                Err(status) if status.code() == Code::AlreadyExists => {
                    if snapshot_exists(containerd, chain_id).await? {
                        continue 'layers;
                    }
                    debug!(%key, chain_id = %chain_id, "extraction key taken, retrying");
                }
                Err(source) => return Err(StepError::PrepareSnapshot { key, source }),
            }
        }
        let Some((key, mounts)) = prepared else {
            return Err(StepError::PrepareSnapshot {
                key: chain_id.clone(),
                source: tonic::Status::already_exists("no free extraction snapshot key"),
            });
        };

        let applied = match containerd
            .apply_layer(layer.to_proto(), mounts, lease)
            .await
        {
            Ok(applied) => applied,
            Err(source) => {
                abort(containerd, &key).await;
                return Err(StepError::ApplyLayer {
                    diff_id: diff_id.clone(),
                    source,
                });
            }
        };
        if applied.digest != *diff_id {
            abort(containerd, &key).await;
            return Err(StepError::DiffIdMismatch {
                expected: diff_id.clone(),
                actual: applied.digest,
            });
        }
        match containerd
            .commit_snapshot(chain_id, &key, &labels, lease)
            .await
        {
            Ok(()) => {}
            Err(status) if status.code() == Code::AlreadyExists => {
                // A concurrent unpack committed the same chain first.
                abort(containerd, &key).await;
                continue;
            }
            Err(source) => {
                abort(containerd, &key).await;
                return Err(StepError::CommitSnapshot {
                    name: chain_id.clone(),
                    source,
                });
            }
        }
        debug!(layer = %layer.digest, chain_id = %chain_id, "layer unpacked");

        let uncompressed = BTreeMap::from([(UNCOMPRESSED_LABEL.to_owned(), diff_id.clone())]);
        containerd
            .set_content_labels(&layer.digest, &uncompressed)
            .await
            .map_err(|source| StepError::LabelContent {
                digest: layer.digest.clone(),
                source,
            })?;
    }

    if let Some(top) = chain.last() {
        let key = format!("containerd.io/gc.ref.snapshot.{}", containerd.snapshotter());
        let label = BTreeMap::from([(key, top.clone())]);
        containerd
            .set_content_labels(config_digest, &label)
            .await
            .map_err(|source| StepError::LabelContent {
                digest: config_digest.to_owned(),
                source,
            })?;
    }
    Ok(())
}

async fn snapshot_exists(containerd: &Containerd, key: &str) -> Result<bool, StepError> {
    containerd
        .snapshot_exists(key)
        .await
        .map_err(|source| StepError::StatSnapshot {
            key: key.to_owned(),
            source,
        })
}

/// Removes an extraction snapshot that will not be committed.
async fn abort(containerd: &Containerd, key: &str) {
    if let Err(status) = containerd.remove_snapshot(key).await {
        warn!(%key, error = %status.message(), "failed to remove extraction snapshot");
    }
}

/// The random part of an extraction key (`<nanos>-<base64 of 3 random bytes>`
/// like containerd's `uniquePart`).
fn unique_part() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let random: [u8; 3] = rand::random();
    format!(
        "{nanos}-{}",
        base64::engine::general_purpose::URL_SAFE.encode(random)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_parts_differ() {
        let a = unique_part();
        let b = unique_part();
        assert_ne!(a, b);
        assert!(!a.contains(' '));
    }
}
