//! A `transform-row` plugin: the legacy `orders` table keeps its line items
//! in a JSON column (`[{"sku": "P1", "qty": 2, "price": "12.50"}, …]`); the
//! new schema has `orders` and `order_items`. One source row becomes one
//! order and one row per item; test orders (`status = 'test'`) are filtered
//! out; an order whose items are not a JSON array of items is rejected.

ferry_plugin::transform_row!(Plugin);

/// SKUs are written as the legacy items spell them.
const UPPERCASE_SKUS: bool = false;

/// The column the order's status is read from.
const STATUS_COLUMNS: &[&str] = &["status"];

mod split;
use split::Plugin;
