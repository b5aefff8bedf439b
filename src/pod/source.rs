//! The file pod source (upstream pkg/kubelet/config/file.go): the manifest
//! directory is re-read on inotify events (debounced) and every
//! `file-check-frequency`, and each read yields the full desired set of static
//! pods plus the files that could not be used.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::manifest::{self, ManifestError};

/// One read of the manifest directory.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<Pod>,
    pub errors: Vec<String>,
}

/// Reads every manifest in `dir`. A missing directory yields no pods (and a warning).
pub fn read_dir(dir: &Path, node_name: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.flatten().map(|e| e.path()).filter(|p| p.is_file() && manifest::is_manifest_file(p)).collect(),
        Err(e) => {
            snap.errors.push(format!("{}: {e}", dir.display()));
            return snap;
        }
    };
    files.sort();
    let mut seen = std::collections::HashSet::new();
    for f in files {
        match manifest::load_file(&f, node_name) {
            Ok(pods) => {
                for p in pods {
                    let key = super::pod_key(&p);
                    if !seen.insert(key.clone()) {
                        snap.errors.push(format!("{}: pod {key} is already defined by another manifest; ignored", f.display()));
                        continue;
                    }
                    snap.pods.push(p);
                }
            }
            Err(e) => {
                warn!(file = %e.path(), error = %e, "could not process manifest file");
                snap.errors.push(e.to_string());
            }
        }
    }
    snap
}

/// What an inotify wake-up means for the next read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// A write finished, or a file was renamed or deleted: read now.
    Complete,
    /// A file is being created or written: give the writer a moment.
    Partial,
    /// The watch is gone (directory removed or moved): re-create it.
    Lost,
}

/// `Inotify` with the raw fd `AsyncFd` needs.
struct Watcher(Inotify);

impl std::os::fd::AsRawFd for Watcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

fn inotify_for(dir: &Path) -> Option<AsyncFd<Watcher>> {
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    let flags = AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    ino.add_watch(dir, flags).ok()?;
    // SAFETY: the fd belongs to the `Inotify` the `AsyncFd` owns, so it stays open
    // for as long as it is registered.
    unsafe { AsyncFd::register(Watcher(ino)) }.ok()
}

/// Watches `dir` and sends a [`Snapshot`] whenever its content may have changed
/// (and once at start). Runs until `cancel`.
pub async fn watch(dir: PathBuf, node_name: String, period: Duration, tx: mpsc::Sender<Snapshot>, cancel: CancellationToken) {
    let mut ino = inotify_for(&dir);
    let mut last: Option<String> = None;
    loop {
        let snap = read_dir(&dir, &node_name);
        // Only send when something changed (seen timestamps differ, so compare UIDs + errors).
        let mut fp: Vec<String> = snap.pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
        fp.extend(snap.errors.iter().cloned());
        let fp = fp.join("\n");
        if last.as_deref() != Some(fp.as_str()) {
            last = Some(fp);
            if tx.send(snap).await.is_err() {
                return;
            }
        }
        if ino.is_none() {
            ino = inotify_for(&dir);
        }
        let wait_event = async {
            match ino.as_mut() {
                Some(fd) => loop {
                    let Ok(mut guard) = fd.readable_mut().await else { return Event::Lost };
                    match guard.try_io(|inner| inner.get_ref().0.read_events().map_err(std::io::Error::from)) {
                        Ok(Ok(events)) => {
                            let self_gone = events.iter().any(|e| e.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED));
                            // A finished write, rename or delete is read at once; a
                            // bare create/modify waits briefly for the writer to finish.
                            let complete = events.iter().any(|e| {
                                e.mask.intersects(AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_MOVED_FROM | AddWatchFlags::IN_DELETE)
                            });
                            return if self_gone { Event::Lost } else if complete { Event::Complete } else { Event::Partial };
                        }
                        Ok(Err(_)) => return Event::Lost,
                        Err(_would_block) => continue,
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            ev = wait_event => {
                match ev {
                    Event::Lost => ino = None,
                    Event::Partial => tokio::time::sleep(Duration::from_millis(100)).await,
                    Event::Complete => {}
                }
                debug!(?ev, "manifest directory changed");
            }
            _ = tokio::time::sleep(period) => {}
        }
    }
}

#[allow(dead_code)]
fn _assert_error_is_displayable(e: ManifestError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_manifest_does_not_hide_a_good_one() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("a.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: x:1}]}\n").unwrap();
        std::fs::write(t.path().join("b.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: b\n").unwrap();
        std::fs::write(t.path().join(".hidden.yaml"), "garbage").unwrap();
        let s = read_dir(t.path(), "n");
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.errors.len(), 1);
        assert!(s.errors[0].contains("b.yaml"));
    }

    #[tokio::test]
    async fn changes_are_picked_up_by_inotify() {
        let t = tempfile::tempdir().unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let h = tokio::spawn(watch(t.path().to_path_buf(), "n".into(), Duration::from_secs(3600), tx, cancel.clone()));
        let first = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!(first.pods.is_empty());
        std::fs::write(t.path().join("a.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, image: x:1}]}\n").unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert_eq!(next.pods.len(), 1);
        cancel.cancel();
        h.await.unwrap();
    }
}
