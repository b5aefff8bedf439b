//! The tcpSocket probe (pkg/probe/tcp): success when a TCP connection opens
//! within the timeout; failure with Go's dial error text otherwise.

use std::time::Duration;

use tokio::net::TcpStream;

use super::{join_host_port, Outcome};

/// Connects to `host:port` and closes the connection at once.
pub async fn probe(host: &str, port: u16, timeout: Duration) -> Outcome {
    let addr = join_host_port(host, port);
    match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => Outcome::success(""),
        Ok(Err(e)) => Outcome::failure(format!("dial tcp {addr}: {}", dial_error(&e))),
        Err(_) => Outcome::failure(format!("dial tcp {addr}: i/o timeout")),
    }
}

/// Go's wording for the common connect errors.
pub fn dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn open_port_succeeds_and_closed_port_fails_with_go_text() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(probe("127.0.0.1", port, Duration::from_secs(5)).await, Outcome::success(""));
        drop(l);
        let o = probe("127.0.0.1", port, Duration::from_secs(5)).await;
        assert_eq!(o, Outcome::failure(format!("dial tcp 127.0.0.1:{port}: connect: connection refused")));
    }
}
