//! alarm-verifier: video alarm verification for monitoring centres.
//!
//! Modules follow the data flow in DESIGN.md, from ingest to publish:
//! `config` → `camera` (encoded ring buffers) → `alarm` (intake) → `clip` (decode on demand)
//! → `detect` (ONNX) → `policy` → `verdict` + `evidence` → `store` (outbox) → `publish` (over `mqtt`).
//! `verify` runs one alarm through clip → detect → policy → verdict; `service` wires it all up.

pub mod alarm;
pub mod bench;
pub mod camera;
pub mod clip;
pub mod config;
pub mod demo;
pub mod detect;
pub mod devset;
pub mod eval;
pub mod evidence;
pub mod mqtt;
pub mod policy;
pub mod publish;
pub mod service;
pub mod store;
pub mod verdict;
pub mod verify;
