//! rkubelet: thin entry point. Parse flags, set up logging, resolve the config
//! (exit 64 on a bad one), then run the agent until SIGTERM/SIGINT.

use clap::Parser;
use rkubelet::config::{Cli, Command, Config};

fn init_tracing(verbosity: u8) {
    let level = match verbosity {
        0 | 1 => "info",
        2 | 3 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("rkubelet={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    // Started by the containerd shim as a container's logger (binary:// task IO).
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(rkubelet::logs::driver::ARG) {
        return rkubelet::logs::driver::run(&args.collect::<Vec<_>>());
    }
    let cli = Cli::parse_from(rkubelet::config::normalize_flag_names(std::env::args()));
    if cli.agent.prints_version() {
        println!("{}", rkubelet::config::version_line());
        return std::process::ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Version) => {
            println!("{}", rkubelet::config::version_line());
            println!("rkubelet {} ({} {})", env!("CARGO_PKG_VERSION"), std::env::consts::OS, std::env::consts::ARCH);
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Doctor(args)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            // Agent flags before `doctor` say which agent to check; without them,
            // doctor reads the running agent's command line.
            let explicit = std::env::args().skip(1).take_while(|a| a != "doctor").next().is_some();
            return rkubelet::doctor::main(&cli.agent, explicit, &args);
        }
        Some(Command::Reset(args)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            init_tracing(cli.agent.verbosity);
            return rkubelet::reset::main(&cli.agent, &args);
        }
        Some(Command::Pods(mut args)) => {
            args.root_dir.get_or_insert(cli.agent.root_dir.clone());
            return rkubelet::cli::pods(&args);
        }
        None => {}
    }
    rkubelet::memory::limit_arenas();
    // Two TLS stacks are linked (kube-rs: ring, oci-client: aws-lc); pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_tracing(cli.agent.verbosity);
    let cfg = match Config::from_args(&cli.agent) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rkubelet: invalid configuration: {e}");
            return std::process::ExitCode::from(64);
        }
    };
    // Two workers and a quickly shrinking blocking pool keep RSS low.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rkubelet: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let shutdown = async {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        rkubelet::agent::run(cfg, shutdown).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rkubelet: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
