pub mod app;
pub mod fields;
pub mod log_capture;
pub mod process;
pub mod redis_server;
