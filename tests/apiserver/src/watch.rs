//! Watches: newline-delimited JSON events (`ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK`,
//! `ERROR`) over a chunked response, like the watch cache serves them:
//! * no resourceVersion or `0`: synthetic ADDED events for the current objects first;
//! * `resourceVersion=N`: replay of the changes after N from the bounded history, or an
//!   `ERROR` event carrying a 410 `Expired` Status when N is older than the history;
//! * `sendInitialEvents=true` (streaming list): ADDED for all current objects, then a
//!   BOOKMARK annotated `k8s.io/initial-events-end: "true"`;
//! * `allowWatchBookmarks=true`: periodic BOOKMARKs carrying only the resourceVersion;
//! * field/label selectors: an object that stops matching is sent as DELETED (its previous
//!   state with the new resourceVersion), one that starts matching as ADDED;
//! * `timeoutSeconds` ends the stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::resources::ResourceDef;
use crate::selectors::Filter;
use crate::state::Shared;
use crate::store::{Change, ChangeType};
use crate::tables::{self, IncludeObject};

/// A parsed watch request.
pub struct WatchParams {
    pub def: &'static ResourceDef,
    pub filter: Filter,
    pub resource_version: Option<String>,
    pub send_initial_events: bool,
    pub allow_bookmarks: bool,
    pub timeout: Duration,
    /// Table output (kubectl get -w).
    pub table: Option<IncludeObject>,
}

struct Encoder {
    def: &'static ResourceDef,
    table: Option<IncludeObject>,
    sent_columns: bool,
}

impl Encoder {
    fn line(&mut self, typ: &str, obj: &Value) -> Bytes {
        let object = match (self.table, typ) {
            (Some(inc), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = crate::meta::resource_version(obj).to_string();
                let t = tables::table(self.def, &[obj], &rv, inc, !self.sent_columns);
                self.sent_columns = true;
                t
            }
            _ => obj.clone(),
        };
        let mut s =
            serde_json::to_vec(&json!({"type": typ, "object": object})).expect("serializable");
        s.push(b'\n');
        Bytes::from(s)
    }
}

fn bookmark(def: &ResourceDef, rv: u64, initial_end: bool) -> Value {
    let mut m = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        m["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": m})
}

fn with_rv(obj: &Value, rv: u64) -> Value {
    let mut o = obj.clone();
    crate::meta::meta_mut(&mut o).insert("resourceVersion".into(), json!(rv.to_string()));
    o
}

/// The watch event a change produces for this watcher, if any.
fn event_for(def: &ResourceDef, filter: &Filter, c: &Change) -> Option<(&'static str, Value)> {
    if c.resource != def.qualified() {
        return None;
    }
    let new_match = filter.matches(&c.object);
    let old_match = c.prev.as_ref().is_some_and(|p| filter.matches(p));
    match c.kind {
        ChangeType::Added => new_match.then(|| ("ADDED", (*c.object).clone())),
        ChangeType::Modified => match (old_match, new_match) {
            (true, true) => Some(("MODIFIED", (*c.object).clone())),
            (false, true) => Some(("ADDED", (*c.object).clone())),
            (true, false) => Some(("DELETED", with_rv(c.prev.as_ref().expect("prev"), c.rv))),
            (false, false) => None,
        },
        ChangeType::Deleted => new_match.then(|| ("DELETED", (*c.object).clone())),
    }
}

/// Validate the parameters and start streaming. The returned receiver yields the body's chunks.
pub fn start(
    shared: Arc<Shared>,
    p: WatchParams,
    cancel: CancellationToken,
) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let from: Option<u64> = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(s) => Some(
            s.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {s:?}")))?,
        ),
    };
    let mut enc = Encoder {
        def: p.def,
        table: p.table,
        sent_columns: false,
    };
    let mut first: Vec<Bytes> = Vec::new();
    let (sub, initial_objects) = {
        let store = shared.store();
        let want_current = p.send_initial_events || from.is_none();
        let current: Vec<Value> = if want_current {
            store
                .list(&p.def.qualified(), p.filter.namespace.as_deref())
                .into_iter()
                .filter(|o| p.filter.matches(o))
                .map(|o| (*o).clone())
                .collect()
        } else {
            Vec::new()
        };
        let sub = if want_current {
            store.subscribe(None)
        } else {
            store.subscribe(from)
        };
        (sub, current)
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut sub = match sub {
        Ok(s) => s,
        Err(floor) => {
            let status = ApiError::gone(format!(
                "too old resource version: {} ({floor})",
                from.unwrap_or(0)
            ))
            .to_status();
            let _ = tx.try_send(enc.line("ERROR", &status));
            return Ok(rx);
        }
    };
    for o in &initial_objects {
        first.push(enc.line("ADDED", o));
    }
    let mut last_rv = sub.current_rv;
    if p.send_initial_events {
        first.push(enc.line("BOOKMARK", &bookmark(p.def, last_rv, true)));
    }
    let replay = std::mem::take(&mut sub.replay);
    for c in &replay {
        if let Some((t, o)) = event_for(p.def, &p.filter, c) {
            first.push(enc.line(t, &o));
        }
        last_rv = last_rv.max(c.rv);
    }
    let bookmark_every = shared.opts.bookmark_interval;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + p.timeout;
        for b in first {
            if tx.send(b).await.is_err() {
                return;
            }
        }
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        let mut rx = sub.rx;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                r = rx.recv() => match r {
                    Ok(c) => {
                        if c.rv <= last_rv { continue; }
                        last_rv = c.rv;
                        if let Some((t, o)) = event_for(p.def, &p.filter, &c) {
                            if tx.send(enc.line(t, &o)).await.is_err() { return; }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if p.allow_bookmarks => {
                    // Deliver everything already queued so the bookmark's RV is accurate.
                    loop {
                        match rx.try_recv() {
                            Ok(c) => {
                                if c.rv <= last_rv { continue; }
                                last_rv = c.rv;
                                if let Some((t, o)) = event_for(p.def, &p.filter, &c) {
                                    if tx.send(enc.line(t, &o)).await.is_err() { return; }
                                }
                            }
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Err(_) => return,
                        }
                    }
                    if tx.send(enc.line("BOOKMARK", &bookmark(p.def, last_rv, false))).await.is_err() { return; }
                }
            }
        }
    });
    Ok(rx)
}
