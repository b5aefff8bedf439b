//! `rk-apiserver --port N --state-dir D [--cert-ttl SECONDS] [--node-kubeconfig NAME:PATH]...`:
//! run the test API server until SIGINT/SIGTERM, writing `<D>/admin.conf` (an admin
//! kubeconfig for kubectl) and keeping the CA and the objects in D across runs.
//! `--node-kubeconfig` also writes a kubeconfig for `system:node:NAME` (group
//! `system:nodes`) to PATH. On SIGUSR1 and at exit the request log so far is written to
//! `<D>/requests.json` and the violations to `<D>/violations.json` (JSON arrays).

use std::path::PathBuf;
use std::time::Duration;

use rkubelet_test_apiserver::{Options, TestApiServer, User};

/// Writes `<dir>/requests.json` and `<dir>/violations.json` (each via a temp file + rename).
fn dump_log(srv: &TestApiServer, dir: &std::path::Path) {
    let files = [
        ("requests.json", serde_json::to_vec(&srv.requests())),
        ("violations.json", serde_json::to_vec(&srv.violations())),
    ];
    for (name, body) in files {
        let tmp = dir.join(format!("{name}.tmp"));
        let res = body
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
        if let Err(e) = res {
            eprintln!("rk-apiserver: writing {}: {e}", dir.join(name).display());
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: rk-apiserver [--port N] [--state-dir DIR] [--cert-ttl SECONDS] [--no-auto-approve] [--node-kubeconfig NAME:PATH]..."
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
    let mut node_kubeconfigs: Vec<(String, PathBuf)> = Vec::new();
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
            "--node-kubeconfig" => {
                let v = args.next().unwrap_or_else(|| usage());
                match v.split_once(':') {
                    Some((n, p)) if !n.is_empty() && !p.is_empty() => {
                        node_kubeconfigs.push((n.to_string(), PathBuf::from(p)))
                    }
                    _ => usage(),
                }
            }
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
    for (name, path) in &node_kubeconfigs {
        if let Err(e) = srv.write_kubeconfig(path, &User::Node(name.clone())) {
            eprintln!("rk-apiserver: writing {}: {e}", path.display());
            std::process::exit(1);
        }
    }
    std::fs::write(dir.join("ca.crt"), srv.ca_pem()).ok();
    println!(
        "rk-apiserver: serving {} (admin kubeconfig: {})",
        srv.url(),
        kc.display()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    let mut usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .expect("SIGUSR1 handler");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => dump_log(&srv, &dir),
        }
    }
    srv.stop().await;
    dump_log(&srv, &dir);
}
