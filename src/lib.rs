//! alarm-verifier: video alarm verification for monitoring centres.
//!
//! The folders are the stages of the data flow (docs/architecture.md):
//! `ingest` (cameras into encoded ring buffers) and `intake` (alarms) feed `analysis` (decode the
//! clip, detect, apply the policy, make the verdict and its evidence), whose findings `delivery`
//! stores and sends. `ops` serves HTTP, `mqtt` is the one transport, `config` the site's settings,
//! `service` wires the stages together, and `tools` holds what technicians and tests run beside
//! the service.

pub mod analysis;
pub mod config;
pub mod delivery;
pub mod ingest;
pub mod intake;
pub mod mqtt;
pub mod ops;
pub mod service;
pub mod store;
pub mod support;
pub mod tools;
