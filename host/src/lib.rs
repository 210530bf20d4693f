//! ferry: moves data from an old database to a new one with zero data loss,
//! transforming every row in a sandboxed WebAssembly component.
//!
//! Data flows one way — source → batch → plugin → sink — with the control
//! state (runs, checkpoints, dead letters) kept in the target beside the
//! data. See ARCHITECTURE.md for the map.

pub mod cdc;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod cutover;
pub mod daemon;
pub mod db;
pub mod deployments;
pub mod engines;
pub mod error;
pub mod exit;
pub mod keyset;
pub mod migrate;
pub mod model;
pub mod notify;
pub mod plugin;
pub mod position;
pub mod postgres;
pub mod replication;
pub mod report;
pub mod retry;
pub mod runbook;
pub mod scaffold;
pub mod schema;
pub mod schema_copy;
pub mod schema_edit;
pub mod settings;
pub mod sink;
pub mod source;
pub mod sqlite;
pub mod status;
pub mod swap;
pub mod tables;
pub mod time;
pub mod tls;
pub mod undo;
pub mod undo_journal;
pub mod value;
