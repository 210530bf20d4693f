//! Test fixture: the next version of `split-orders`. The same rules, the
//! same output tables, but SKUs written in upper case: a version whose rows
//! show which version made them, for the hot-swap tests.

ferry_plugin::transform_row!(Plugin);

/// What sets this version apart.
const UPPERCASE_SKUS: bool = true;

#[path = "../../../split-orders/src/split.rs"]
mod split;
use split::Plugin;
