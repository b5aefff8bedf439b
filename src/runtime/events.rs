//! containerd's event stream, filtered to task exits and OOMs: the agent reacts to
//! these instead of polling task states.

use std::time::Duration;

use containerd_client::events::{TaskExit, TaskOom};
use containerd_client::services::v1::events_client::EventsClient;
use containerd_client::services::v1::SubscribeRequest;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::Request;
use tracing::{debug, warn};

/// A task event the pod workers care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// The init process of a container's task exited.
    Exit { container_id: String, exit_code: u32 },
    /// The kernel OOM killer hit the container's cgroup.
    Oom { container_id: String },
    /// The stream broke and was re-established: events may have been missed, resync all.
    Resync,
}

/// Streams task events from containerd into `tx` until `cancel` fires, reconnecting
/// with a bounded backoff when the stream breaks (for example when containerd restarts).
pub async fn run(channel: Channel, namespace: String, tx: mpsc::Sender<TaskEvent>, cancel: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    let mut first = true;
    loop {
        let mut client = EventsClient::new(channel.clone());
        let req = SubscribeRequest {
            filters: vec![
                format!("topic==\"/tasks/exit\",namespace==\"{namespace}\""),
                format!("topic==\"/tasks/oom\",namespace==\"{namespace}\""),
            ],
        };
        let sub = tokio::select! {
            _ = cancel.cancelled() => return,
            r = client.subscribe(Request::new(req)) => r,
        };
        match sub {
            Ok(stream) => {
                delay = Duration::from_millis(200);
                if !first && tx.send(TaskEvent::Resync).await.is_err() {
                    return;
                }
                first = false;
                let mut stream = stream.into_inner();
                loop {
                    let msg = tokio::select! {
                        _ = cancel.cancelled() => return,
                        m = stream.message() => m,
                    };
                    match msg {
                        Ok(Some(env)) => {
                            let Some(any) = env.event else { continue };
                            let ev = match env.topic.as_str() {
                                "/tasks/exit" => match TaskExit::decode(any.value.as_slice()) {
                                    // Only the init process (id == container id) ends a container.
                                    Ok(e) if e.id == e.container_id => {
                                        Some(TaskEvent::Exit { container_id: e.container_id, exit_code: e.exit_status })
                                    }
                                    Ok(_) => None,
                                    Err(e) => {
                                        warn!(error = %e, "undecodable task exit event");
                                        None
                                    }
                                },
                                "/tasks/oom" => TaskOom::decode(any.value.as_slice())
                                    .ok()
                                    .map(|e| TaskEvent::Oom { container_id: e.container_id }),
                                _ => None,
                            };
                            if let Some(ev) = ev {
                                debug!(?ev, "task event");
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            warn!(error = %e.message(), "containerd event stream broke; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => warn!(error = %e.message(), "cannot subscribe to containerd events; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}
