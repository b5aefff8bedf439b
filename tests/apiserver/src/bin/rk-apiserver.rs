//! `rk-apiserver --port N --state-dir D [--cert-ttl SECONDS]`: run the test API server
//! until SIGINT/SIGTERM, writing `<D>/admin.conf` (an admin kubeconfig for kubectl) and
//! keeping the CA and the objects in D across runs.

use std::path::PathBuf;
use std::time::Duration;

use rkubelet_test_apiserver::{Options, TestApiServer, User};

fn usage() -> ! {
    eprintln!(
        "usage: rk-apiserver [--port N] [--state-dir DIR] [--cert-ttl SECONDS] [--no-auto-approve]"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => {
                opts.port = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--state-dir" => {
                opts.state_dir = Some(PathBuf::from(args.next().unwrap_or_else(|| usage())))
            }
            "--cert-ttl" => {
                opts.cert_ttl = Duration::from_secs(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--no-auto-approve" => opts.auto_approve_csrs = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let dir = opts
        .state_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("rk-apiserver"));
    opts.state_dir = Some(dir.clone());
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("rk-apiserver: {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut srv = match TestApiServer::start(opts).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rk-apiserver: {e}");
            std::process::exit(1);
        }
    };
    let kc = dir.join("admin.conf");
    if let Err(e) = srv.write_kubeconfig(&kc, &User::Admin) {
        eprintln!("rk-apiserver: writing {}: {e}", kc.display());
        std::process::exit(1);
    }
    std::fs::write(dir.join("ca.crt"), srv.ca_pem()).ok();
    println!(
        "rk-apiserver: serving {} (admin kubeconfig: {})",
        srv.url(),
        kc.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    srv.stop().await;
}
