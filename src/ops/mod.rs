//! Operations: the service's HTTP server (and, as it grows, the API, console, metrics).

pub mod http;
