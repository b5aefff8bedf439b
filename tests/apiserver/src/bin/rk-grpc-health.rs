//! Test support, not shipped: a grpc.health.v1 server for the gRPC probe tests
//! to run inside a pod. `rk-grpc-health <port> <serving-after-seconds>`
//! answers NOT_SERVING until the delay has passed, then SERVING.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(9555);
    let delay: u64 = args.next().and_then(|d| d.parse().ok()).unwrap_or(0);
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
        reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        println!("serving");
    });
    println!("listening on {port}");
    tonic::transport::Server::builder().add_service(service).serve(([0, 0, 0, 0], port).into()).await?;
    Ok(())
}
