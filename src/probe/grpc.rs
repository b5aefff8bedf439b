//! The grpc probe (pkg/probe/grpc): grpc.health.v1 `Health/Check` over plain
//! HTTP/2 (no TLS), with the optional service name; SERVING is success, any other
//! status or error a failure with upstream's texts.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::{join_host_port, user_agent, Outcome};

/// Asks `host:port` whether `service` ("" for the server) is serving.
pub async fn probe(host: &str, port: u16, service: &str, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e,
        Err(e) => return Outcome::failure(format!("error: failed to connect service at {addr:?}: {e}")),
    };
    let endpoint = match endpoint.user_agent(user_agent("kube-probe")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return Outcome::failure(format!("error: failed to connect service at {addr:?}: {e}")),
    };
    let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Outcome::failure(format!("error: failed to connect service at {addr:?}: {}", error_chain(&e))),
        Err(_) => return Outcome::failure(format!("timeout: failed to connect service {addr:?} within {}s: context deadline exceeded", timeout.as_secs())),
    };
    let mut client = HealthClient::new(channel);
    let req = HealthCheckRequest { service: service.to_string() };
    match tokio::time::timeout(timeout, client.check(req)).await {
        Err(_) => Outcome::failure(format!("timeout: health rpc did not complete within {}s", timeout.as_secs())),
        Ok(Err(s)) => Outcome::failure(classify_status(&s, timeout)),
        Ok(Ok(r)) => classify_serving(r.into_inner().status),
    }
}

/// SERVING is success; anything else is a failure naming the status as upstream.
pub fn classify_serving(status: i32) -> Outcome {
    let s = ServingStatus::try_from(status).unwrap_or(ServingStatus::Unknown);
    if s == ServingStatus::Serving {
        Outcome::success("service healthy")
    } else {
        Outcome::failure(format!("service unhealthy (responded with {:?})", s.as_str_name()))
    }
}

fn classify_status(s: &tonic::Status, timeout: Duration) -> String {
    match s.code() {
        Code::Unimplemented => format!("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {}", s.message()),
        Code::DeadlineExceeded => format!("timeout: health rpc did not complete within {}s", timeout.as_secs()),
        _ => format!("error: health rpc probe failed: rpc error: code = {:?} desc = {}", s.code(), s.message()),
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_serving_is_healthy() {
        assert_eq!(classify_serving(ServingStatus::Serving as i32), Outcome::success("service healthy"));
        assert_eq!(classify_serving(ServingStatus::NotServing as i32), Outcome::failure("service unhealthy (responded with \"NOT_SERVING\")"));
        assert_eq!(classify_serving(99), Outcome::failure("service unhealthy (responded with \"UNKNOWN\")"));
    }

    #[test]
    fn unimplemented_health_service_is_named() {
        let s = tonic::Status::unimplemented("unknown service grpc.health.v1.Health");
        assert_eq!(
            classify_status(&s, Duration::from_secs(1)),
            "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): unknown service grpc.health.v1.Health"
        );
    }
}
