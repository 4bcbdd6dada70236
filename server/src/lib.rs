//! The armfleet server. See ARCHITECTURE.md for the map.

pub mod analysis;
pub mod app;
pub mod audit;
pub mod bisect;
pub mod boards;
pub mod builds;
pub mod config;
pub mod db;
pub mod demo;
pub mod deploy;
pub mod dispatch;
pub mod export;
pub mod families;
pub mod findings;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod leases;
pub mod lifecycle;
pub mod lkml;
pub mod logs;
pub mod metrics;
pub mod mirror;
pub mod power;
pub mod regressions;
pub mod reload;
pub mod repro;
pub mod results;
pub mod runs;
pub mod scheduler;
pub mod ssh;
pub mod state;
pub mod verdicts;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
