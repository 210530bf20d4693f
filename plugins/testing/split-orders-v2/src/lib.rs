//! Test fixture: the next version of `split-orders`. The same rules, the
//! same output tables, but SKUs written in upper case: a version whose rows
//! show which version made them, for the hot-swap tests; and it reads the
//! status from `state` where a migration renamed the column (the version
//! deployed to follow a schema change, `tests/e2e/schema_changes.rs`).

ferry_plugin::transform_row!(Plugin);

/// What sets this version apart.
const UPPERCASE_SKUS: bool = true;
const STATUS_COLUMNS: &[&str] = &["status", "state"];

#[path = "../../../split-orders/src/split.rs"]
mod split;
use split::Plugin;
