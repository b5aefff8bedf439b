//! Image garbage collection (pkg/kubelet/images/image_gc_manager.go): every
//! 5 minutes, and when disk pressure asks for it, unused images go, least
//! recently used first, until the image filesystem is back under
//! `imageGCLowThresholdPercent` (once it reached `imageGCHighThresholdPercent`);
//! images unused for `imageMaximumGCAge` go anyway. Never an image a container
//! (running or not) uses, never the pause image, never one first seen less than
//! `imageMinimumGCAge` ago. When each image was first seen and last used is
//! kept in `<root-dir>/image-gc.json`, so an agent restart forgets nothing.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::runtime::image::LocalImage;

/// How often the periodic collection runs (upstream's ImageGCPeriod).
pub const PERIOD: Duration = Duration::from_secs(300);
/// The file the image records are kept in, under the root dir.
pub const RECORDS_FILE: &str = "image-gc.json";
/// How often the records are refreshed and saved between collections.
pub const DETECT_PERIOD: Duration = Duration::from_secs(30);

/// When the pod workers last started a container of each image (by target
/// digest): last-used times between two listings.
#[derive(Debug, Default)]
pub struct Usage(Mutex<std::collections::HashMap<String, DateTime<Utc>>>);

impl Usage {
    /// A container of the image with target `digest` starts now.
    pub fn used(&self, digest: &str) {
        if let Ok(mut g) = self.0.lock() {
            g.insert(digest.to_string(), Utc::now());
        }
    }

    fn snapshot(&self) -> std::collections::HashMap<String, DateTime<Utc>> {
        self.0.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// `imageGC*` settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub high_percent: i32,
    pub low_percent: i32,
    pub min_age: Duration,
    /// Zero: no maximum age.
    pub max_age: Duration,
}

/// What is known of one image ID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub first_detected: DateTime<Utc>,
    /// When a container last used it (none: never seen in use).
    pub last_used: Option<DateTime<Utc>>,
    pub size: u64,
    /// Its target digests (what the workers report uses by).
    #[serde(default)]
    pub digests: Vec<String>,
}

/// The bytes to free: when the filesystem is at or over `high`% used, what
/// brings it to `low`% (upstream's amountToFree); `None` under `high`.
pub fn amount_to_free(capacity: i64, available: i64, policy: &Policy) -> Option<i64> {
    if capacity <= 0 || policy.high_percent >= 100 {
        return None;
    }
    let usage_percent = 100 - available * 100 / capacity;
    (usage_percent >= policy.high_percent as i64).then(|| capacity * (100 - policy.low_percent as i64) / 100 - available).filter(|a| *a > 0)
}

/// Updates `records` from a listing: new images are detected `now`, those in
/// use were used `now`, vanished ones are forgotten.
pub fn detect(records: &mut BTreeMap<String, Record>, images: &[LocalImage], in_use: &HashSet<String>, now: DateTime<Utc>) {
    detect_with(records, images, in_use, &Default::default(), now)
}

/// [`detect`], with the start times the workers reported (`usage`, by digest).
pub fn detect_with(records: &mut BTreeMap<String, Record>, images: &[LocalImage], in_use: &HashSet<String>, usage: &std::collections::HashMap<String, DateTime<Utc>>, now: DateTime<Utc>) {
    let ids: HashSet<&str> = images.iter().map(|i| i.id.as_str()).collect();
    records.retain(|id, _| ids.contains(id.as_str()));
    for i in images {
        let r = records.entry(i.id.clone()).or_insert(Record { first_detected: now, last_used: None, size: i.size, digests: Vec::new() });
        r.size = i.size;
        r.digests = i.digests.clone();
        if in_use.contains(&i.id) {
            r.last_used = Some(now);
        }
        for d in &i.digests {
            if let Some(t) = usage.get(d) {
                r.last_used = r.last_used.max(Some(*t));
            }
        }
    }
}

/// The images that may go, in the order they go: not in use, not pinned,
/// first seen at least `min_age` ago; least recently used first (never used
/// before used), then first detected.
pub fn eviction_order<'a>(records: &BTreeMap<String, Record>, images: &'a [LocalImage], in_use: &HashSet<String>, pinned: &HashSet<String>, min_age: Duration, now: DateTime<Utc>) -> Vec<&'a LocalImage> {
    let min_age = chrono::Duration::from_std(min_age).unwrap_or(chrono::Duration::MAX);
    let mut out: Vec<(&LocalImage, Record)> = images
        .iter()
        .filter(|i| !in_use.contains(&i.id) && !pinned.contains(&i.id) && !i.names.iter().any(|n| pinned.contains(n)))
        .filter_map(|i| records.get(&i.id).map(|r| (i, r.clone())))
        .filter(|(_, r)| now - r.first_detected >= min_age)
        .collect();
    out.sort_by(|(_, a), (_, b)| a.last_used.cmp(&b.last_used).then(a.first_detected.cmp(&b.first_detected)));
    out.into_iter().map(|(i, _)| i).collect()
}

/// The images of `order` unused for longer than `max_age` (never used:
/// counted from their first sighting).
pub fn past_max_age<'a>(order: Vec<&'a LocalImage>, records: &BTreeMap<String, Record>, max_age: Duration, now: DateTime<Utc>) -> Vec<&'a LocalImage> {
    let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    order.into_iter().filter(|i| records.get(&i.id).is_some_and(|r| now - r.last_used.unwrap_or(r.first_detected) > max_age)).collect()
}

/// Upstream's FreeDiskSpaceFailed / ImageGCFailed message.
pub fn shortfall_message(wanted: i64, found: u64) -> String {
    format!("Failed to garbage collect required amount of images. Attempted to free {wanted} bytes, but only found {found} bytes eligible to free.")
}

/// Why a collection fell short.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("failed to list images: {0}")]
    List(String),
    #[error("failed to list containers: {0}")]
    Containers(String),
    #[error("{}", shortfall_message(*.wanted, *.found))]
    Shortfall { wanted: i64, found: u64 },
}

/// The image garbage collector of the node.
pub struct ImageGc {
    pub policy: Policy,
    images: crate::runtime::image::ImageService,
    containers: crate::runtime::containers::Containers,
    /// The pause image (never removed).
    pinned: Vec<String>,
    /// The image filesystem (containerd's snapshotter root).
    image_fs: PathBuf,
    file: PathBuf,
    records: Mutex<BTreeMap<String, Record>>,
    usage: std::sync::Arc<Usage>,
    /// Serializes collections (periodic and disk pressure).
    busy: tokio::sync::Mutex<()>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl ImageGc {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Policy,
        images: crate::runtime::image::ImageService,
        containers: crate::runtime::containers::Containers,
        pinned: Vec<String>,
        image_fs: PathBuf,
        root_dir: &Path,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        usage: std::sync::Arc<Usage>,
    ) -> ImageGc {
        let file = root_dir.join(RECORDS_FILE);
        let records = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        ImageGc { policy, images, containers, pinned, image_fs, file, records: Mutex::new(records), usage, busy: Default::default(), metrics }
    }

    /// The image IDs the node's containers (running or exited) use: their
    /// image IDs (`repo@digest`) name a record's target digest.
    async fn in_use(&self, images: &[LocalImage]) -> Result<HashSet<String>, GcError> {
        let records = self.containers.list(None).await.map_err(|e| GcError::Containers(e.to_string()))?;
        let digests: HashSet<&str> = records.iter().filter_map(|r| r.label(crate::runtime::containers::labels::IMAGE_ID)).filter_map(|i| i.rsplit('@').next()).collect();
        Ok(images.iter().filter(|i| i.digests.iter().any(|d| digests.contains(d.as_str()))).map(|i| i.id.clone()).collect())
    }

    /// Lists the images, updates and saves the records; returns the listing,
    /// the IDs in use and the pinned IDs and names.
    async fn refresh(&self) -> Result<(Vec<LocalImage>, HashSet<String>, HashSet<String>), GcError> {
        let images = self.images.list_local().await.map_err(|e| GcError::List(e.to_string()))?;
        let in_use = self.in_use(&images).await?;
        let mut pinned: HashSet<String> = HashSet::new();
        for p in &self.pinned {
            let name = crate::runtime::image::normalize_reference(p).unwrap_or_else(|_| p.clone());
            if let Some(i) = images.iter().find(|i| i.names.contains(&name)) {
                pinned.insert(i.id.clone());
            }
            pinned.insert(name);
        }
        let snapshot = {
            let mut g = self.records.lock().unwrap_or_else(|e| e.into_inner());
            detect_with(&mut g, &images, &in_use, &self.usage.snapshot(), Utc::now());
            g.clone()
        };
        if let Ok(b) = serde_json::to_vec_pretty(&snapshot) {
            if let Err(e) = crate::pod::store::write_atomic(&self.file, &b) {
                warn!(error = %e, file = %self.file.display(), "cannot save the image records");
            }
        }
        Ok((images, in_use, pinned))
    }

    /// Removes images in eviction order until `bytes` are freed; returns the bytes freed.
    async fn free(&self, bytes: i64, reason: &str) -> Result<u64, GcError> {
        let (images, in_use, pinned) = self.refresh().await?;
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut freed = 0u64;
        for img in eviction_order(&records, &images, &in_use, &pinned, self.policy.min_age, Utc::now()) {
            if freed as i64 >= bytes {
                break;
            }
            if self.remove(img, reason).await {
                freed += img.size;
            }
        }
        Ok(freed)
    }

    async fn remove(&self, img: &LocalImage, reason: &str) -> bool {
        let mut ok = true;
        for n in &img.names {
            if let Err(e) = self.images.remove(n).await {
                warn!(image = %n, error = %e, "image garbage collection could not remove an image");
                ok = false;
            }
        }
        if ok {
            info!(image_id = %img.id, names = ?img.names, size = img.size, reason, "image garbage collected");
            self.metrics.image_garbage_collected(reason);
            self.records.lock().unwrap_or_else(|e| e.into_inner()).remove(&img.id);
        }
        ok
    }

    /// The periodic collection (upstream's GarbageCollect): images past the
    /// maximum age, then, over the high threshold, down to the low one.
    pub async fn collect(&self) -> Result<u64, GcError> {
        let _busy = self.busy.lock().await;
        let mut freed = 0;
        if !self.policy.max_age.is_zero() {
            let (images, in_use, pinned) = self.refresh().await?;
            let records = self.records.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let now = Utc::now();
            let order = eviction_order(&records, &images, &in_use, &pinned, self.policy.min_age, now);
            for img in past_max_age(order, &records, self.policy.max_age, now) {
                if self.remove(img, "age").await {
                    freed += img.size;
                }
            }
        }
        let Some((available, capacity, _, _)) = crate::eviction::observe::statfs(&self.image_fs) else { return Ok(freed) };
        let Some(want) = amount_to_free(capacity, available, &self.policy) else {
            self.refresh().await?;
            return Ok(freed);
        };
        info!(usage_percent = 100 - available * 100 / capacity, high = self.policy.high_percent, bytes_to_free = want, "image filesystem over the high threshold; collecting images");
        let got = self.free(want, "space").await?;
        if (got as i64) < want {
            return Err(GcError::Shortfall { wanted: want, found: got });
        }
        Ok(freed + got)
    }

    /// Every unused image that may go (disk pressure's reclaim; upstream's DeleteUnusedImages).
    pub async fn delete_unused(&self) -> Result<u64, GcError> {
        let _busy = self.busy.lock().await;
        self.free(i64::MAX, "space").await
    }

    /// Saves the records with the uses the workers reported since the last
    /// listing (at the agent's stop: no containerd call).
    pub fn flush(&self) {
        let usage = self.usage.snapshot();
        let snapshot = {
            let mut g = self.records.lock().unwrap_or_else(|e| e.into_inner());
            for r in g.values_mut() {
                for d in &r.digests {
                    if let Some(t) = usage.get(d) {
                        r.last_used = r.last_used.max(Some(*t));
                    }
                }
            }
            g.clone()
        };
        if let Ok(b) = serde_json::to_vec_pretty(&snapshot) {
            let _ = crate::pod::store::write_atomic(&self.file, &b);
        }
    }

    /// Refreshes and saves the records (between collections).
    pub async fn detect(&self) -> Result<(), GcError> {
        let _busy = self.busy.lock().await;
        self.refresh().await.map(|_| ())
    }

    /// The records as saved (for tests and `rkubelet doctor`).
    pub fn records(&self) -> BTreeMap<String, Record> {
        self.records.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The node events a collection's result gives (upstream's
/// realImageGCManager.GarbageCollect and its caller in kubelet.go): a shortfall
/// is `FreeDiskSpaceFailed`; the second failure in a row (of any kind) is also
/// `ImageGCFailed`. `failed_before` carries the last run's outcome.
fn failure_events<T>(result: &Result<T, GcError>, failed_before: &mut bool) -> Vec<(&'static str, String)> {
    let Err(e) = result else {
        *failed_before = false;
        return Vec::new();
    };
    let mut events = Vec::new();
    if let GcError::Shortfall { .. } = e {
        events.push(("FreeDiskSpaceFailed", e.to_string()));
    }
    if *failed_before {
        events.push(("ImageGCFailed", e.to_string()));
    }
    *failed_before = true;
    events
}

/// Runs the periodic collection until `cancel`: at start, then every
/// [`PERIOD`]. A shortfall is a `FreeDiskSpaceFailed` node event; two failed
/// runs in a row an `ImageGCFailed` one, as upstream.
pub async fn run(gc: std::sync::Arc<ImageGc>, recorder: crate::events::Recorder, node: String, cancel: tokio_util::sync::CancellationToken) {
    if gc.policy.high_percent >= 100 && gc.policy.max_age.is_zero() {
        info!("image garbage collection is off (imageGCHighThresholdPercent 100)");
    }
    let mut failed_before = false;
    let mut last_collect: Option<tokio::time::Instant> = None;
    loop {
        // Between collections the records are only refreshed (and saved).
        if last_collect.is_some_and(|t| t.elapsed() < PERIOD) {
            if let Err(e) = gc.detect().await {
                warn!(error = %e, "image detection failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return gc.flush(),
                _ = tokio::time::sleep(DETECT_PERIOD) => {}
            }
            continue;
        }
        last_collect = Some(tokio::time::Instant::now());
        let result = gc.collect().await;
        if let Err(e) = &result {
            if failed_before {
                warn!(error = %e, "Image garbage collection failed multiple times in a row");
            } else {
                warn!(error = %e, "Image garbage collection failed once. Stats initialization may not have completed yet");
            }
        }
        for (reason, message) in failure_events(&result, &mut failed_before) {
            recorder.node(&node, "Warning", reason, message);
        }
        tokio::select! {
            _ = cancel.cancelled() => return gc.flush(),
            _ = tokio::time::sleep(DETECT_PERIOD) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, size: u64) -> LocalImage {
        LocalImage { id: id.into(), names: vec![format!("docker.io/library/{id}:1")], digests: vec![format!("sha256:{id}")], size }
    }

    #[test]
    fn a_shortfall_is_free_disk_space_failed_and_a_second_failure_in_a_row_image_gc_failed() {
        let mut failed_before = false;
        let short = || Err::<(), _>(GcError::Shortfall { wanted: 100, found: 20 });
        let list = || Err::<(), _>(GcError::List("containerd unavailable".into()));
        let reasons = |events: Vec<(&'static str, String)>| events.into_iter().map(|(r, _)| r).collect::<Vec<_>>();
        let first = failure_events(&short(), &mut failed_before);
        assert_eq!(first, vec![("FreeDiskSpaceFailed", shortfall_message(100, 20))]);
        assert_eq!(reasons(failure_events(&list(), &mut failed_before)), vec!["ImageGCFailed"], "second failure in a row");
        assert_eq!(reasons(failure_events(&short(), &mut failed_before)), vec!["FreeDiskSpaceFailed", "ImageGCFailed"]);
        assert!(failure_events(&Ok::<_, GcError>(()), &mut failed_before).is_empty());
        assert!(!failed_before, "a success resets the count");
        assert_eq!(reasons(failure_events(&list(), &mut failed_before)), Vec::<&str>::new(), "one failure alone is only logged");
    }

    #[test]
    fn amount_to_free_is_upstreams() {
        let p = Policy { high_percent: 85, low_percent: 80, min_age: Duration::ZERO, max_age: Duration::ZERO };
        assert_eq!(amount_to_free(1000, 200, &p), None, "80% used: under high");
        assert_eq!(amount_to_free(1000, 150, &p), Some(50), "85% used: down to 80%");
        assert_eq!(amount_to_free(1000, 100, &Policy { high_percent: 100, ..p }), None, "100 turns it off");
    }

    #[test]
    fn least_recently_used_unused_images_go_first_and_pinned_or_young_never() {
        let t = |s: i64| DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap();
        let images = vec![img("a", 10), img("b", 10), img("c", 10), img("pause", 1), img("busy", 5), img("young", 3)];
        let mut records = BTreeMap::new();
        let none = HashSet::new();
        detect(&mut records, &images[..5], &none, t(0));
        // b used at 100, a at 200; c never; busy in use now; young only seen at 290.
        detect(&mut records, &images[..5], &["b".to_string()].into(), t(100));
        detect(&mut records, &images[..5], &["a".to_string()].into(), t(200));
        let in_use: HashSet<String> = ["busy".to_string()].into();
        detect(&mut records, &images, &in_use, t(290));
        let pinned: HashSet<String> = ["docker.io/library/pause:1".to_string()].into();
        let order: Vec<&str> = eviction_order(&records, &images, &in_use, &pinned, Duration::from_secs(60), t(300)).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(order, vec!["c", "b", "a"], "never used, then oldest use; pause pinned, busy in use, young too young");
        assert_eq!(records["busy"].last_used, Some(t(290)));
        // A start the workers reported counts as a use.
        detect_with(&mut records, &images, &in_use, &[("sha256:c".to_string(), t(350))].into(), t(360));
        assert_eq!(records["c"].last_used, Some(t(350)));
        detect(&mut records, &images[1..], &in_use, t(400));
        assert!(!records.contains_key("a"), "a vanished image is forgotten");
        let order = eviction_order(&records, &images, &in_use, &pinned, Duration::ZERO, t(400));
        let old: Vec<&str> = past_max_age(order, &records, Duration::from_secs(250), t(400)).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(old, vec!["b"], "past 250 s: b (last used at 100); not c (used at 350) nor young (first seen at 290)");
        assert_eq!(shortfall_message(100, 20), "Failed to garbage collect required amount of images. Attempted to free 100 bytes, but only found 20 bytes eligible to free.");
    }
}
