//! ferry's end-to-end suite: real PostgreSQL, real SQLite, real plugin
//! components built from source, and the real `ferry` binary. One test
//! binary, so it links once.

mod support;

mod checks;
mod cluster;
mod config_errors;
mod conformance;
mod containment;
mod debezium;
mod hot_swap;
mod migrate;
mod notify;
mod parallel;
mod plugin_tools;
mod replay;
mod resume;
mod resync;
mod rollback;
mod schema_changes;
mod schema_copy;
mod sync;
mod tables;
mod tables_sync;
mod tls;
mod transform_rules;
mod validate;
