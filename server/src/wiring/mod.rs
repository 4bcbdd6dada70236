pub mod app;
pub mod db;
pub mod demo;
pub mod metrics;
pub mod reload;
pub mod state;
