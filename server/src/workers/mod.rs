pub mod analysis;
pub mod bisect;
pub mod boots;
pub mod builds;
pub mod dispatch;
pub mod mirror;
pub mod power;
pub mod scheduler;
