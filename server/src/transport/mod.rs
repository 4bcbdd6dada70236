pub mod http;
pub mod ssh;
