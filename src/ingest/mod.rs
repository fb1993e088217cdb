//! Ingest: every camera's RTSP stream, kept as encoded video in a ring buffer, with its health.
//!
//! Knows nothing of alarms or analysis; analysis takes slices of the rings.

pub mod camera;
pub mod health;
pub mod locate;
pub mod pipeline;
pub mod ring;
pub mod rtsp;
pub mod transport;
