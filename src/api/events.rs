//! Posting events to the API server like client-go's event recorder with the
//! kubelet's correlator: a new (object, type, reason, message) creates an Event
//! named `<object>.<hex>`; a repeat patches `count` and `lastTimestamp`.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::debug;

use crate::events::{InvolvedKind, PodEvent};

/// Aggregation key → (event name, namespace, count).
#[derive(Default)]
pub struct EventSink {
    seen: HashMap<String, (String, String, i32)>,
}

fn key(e: &PodEvent) -> String {
    format!("{:?}/{}/{}/{}/{}/{}/{}/{}", e.kind, e.namespace, e.pod, e.uid, e.field_path.as_deref().unwrap_or(""), e.type_, e.reason, e.message)
}

/// The namespace the Event lives in: the pod's, or `default` for node events.
fn event_namespace(e: &PodEvent) -> &str {
    match e.kind {
        InvolvedKind::Node => "default",
        InvolvedKind::Pod => &e.namespace,
    }
}

/// The core/v1 Event upstream's recorder creates for a pod event.
pub fn to_event(e: &PodEvent, node: &str, name: &str) -> Event {
    let t = chrono::DateTime::parse_from_rfc3339(&e.time).map(|t| t.with_timezone(&chrono::Utc)).unwrap_or_else(|_| chrono::Utc::now());
    let time = crate::pod::k8s_time(t);
    let involved_object = match e.kind {
        // Upstream's node reference: kind and name only (as a 1.36 kubelet sends it).
        InvolvedKind::Node => ObjectReference { api_version: Some("v1".into()), kind: Some("Node".into()), name: Some(e.pod.clone()), ..Default::default() },
        InvolvedKind::Pod => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(e.pod.clone()),
            namespace: Some(e.namespace.clone()),
            uid: Some(e.uid.clone()),
            field_path: e.field_path.clone(),
            ..Default::default()
        },
    };
    Event {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(event_namespace(e).into()), ..Default::default() },
        involved_object,
        reason: Some(e.reason.clone()),
        message: Some(e.message.clone()),
        type_: Some(e.type_.clone()),
        source: Some(EventSource { component: Some("kubelet".into()), host: Some(node.into()) }),
        first_timestamp: Some(time.clone()),
        last_timestamp: Some(time),
        count: Some(1),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(node.into()),
        ..Default::default()
    }
}

impl EventSink {
    /// Records one event on the API server (create, or patch the count of a repeat).
    pub async fn post(&mut self, client: &kube::Client, node: &str, e: &PodEvent) {
        let ns = event_namespace(e);
        if ns.is_empty() {
            return;
        }
        let api: Api<Event> = Api::namespaced(client.clone(), ns);
        let k = key(e);
        if let Some((name, _ns, count)) = self.seen.get_mut(&k) {
            *count += 1;
            let patch = json!({"count": *count, "lastTimestamp": e.time.split('.').next().map(|s| format!("{s}Z")).unwrap_or_default(), "message": e.message});
            match api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch)).await {
                Ok(_) => return,
                Err(err) => debug!(error = %err, "event patch failed; creating it again"),
            }
        }
        let name = format!("{}.{:x}", e.pod, chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
        match api.create(&PostParams::default(), &to_event(e, node, &name)).await {
            Ok(_) => {
                if self.seen.len() > 4096 {
                    self.seen.clear();
                }
                self.seen.insert(k, (name, ns.to_string(), 1));
            }
            Err(err) => debug!(error = %err, reason = %e.reason, "event not recorded on the API server"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: InvolvedKind) -> PodEvent {
        PodEvent {
            kind,
            time: "2026-11-26T07:13:34.123456Z".into(),
            namespace: if kind == InvolvedKind::Pod { "ns".into() } else { String::new() },
            pod: "n1".into(),
            uid: String::new(),
            field_path: None,
            type_: "Normal".into(),
            reason: "Starting".into(),
            message: "Starting kubelet.".into(),
        }
    }

    #[test]
    fn node_events_go_to_default_with_a_kind_and_name_reference() {
        let e = to_event(&ev(InvolvedKind::Node), "n1", "n1.abc");
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
        let o = &e.involved_object;
        assert_eq!((o.kind.as_deref(), o.name.as_deref(), o.api_version.as_deref()), (Some("Node"), Some("n1"), Some("v1")));
        assert!(o.namespace.is_none() && o.uid.is_none(), "upstream's node reference has no namespace or uid");
        assert_eq!(e.source.as_ref().and_then(|s| s.host.as_deref()), Some("n1"));
        assert_ne!(key(&ev(InvolvedKind::Node)), key(&ev(InvolvedKind::Pod)));
    }
}
