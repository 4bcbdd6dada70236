//! The armfleet server. See ARCHITECTURE.md for the map.

pub mod cli;
pub mod domain;
pub mod transport;
pub mod wiring;
pub mod workers;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
