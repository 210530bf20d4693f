//! The rules of split-orders (shared with its test-only second version,
//! `testing/split-orders-v2`, which differs in `UPPERCASE_SKUS` and
//! `STATUS_COLUMNS`).

use std::cell::RefCell;

use crate::exports::ferry::transform::transform_row::Guest;
use crate::ferry::transform::types::{
    Column, ColumnType, OutputKey, OutputRow, RowError, ScalarKind, TableSchema, Value,
};

/// Positions of the columns this plugin reads, learned in `describe`.
#[derive(Clone, Copy)]
struct Positions {
    id: usize,
    customer_id: usize,
    placed_at: usize,
    status: usize,
    items: usize,
}

thread_local! {
    static POSITIONS: RefCell<Option<Positions>> = const { RefCell::new(None) };
}

fn column(name: &str, kind: ScalarKind, nullable: bool) -> Column {
    Column { name: name.into(), type_: ColumnType::Scalar(kind), nullable }
}

fn outputs() -> Vec<TableSchema> {
    vec![
        TableSchema {
            name: "orders".into(),
            columns: vec![
                column("id", ScalarKind::Int64, false),
                column("customer_id", ScalarKind::Int64, false),
                column("placed_at", ScalarKind::Timestamptz, false),
                column("status", ScalarKind::Text, false),
                column("item_count", ScalarKind::Int32, false),
            ],
            primary_key: vec!["id".into()],
        },
        TableSchema {
            name: "order_items".into(),
            columns: vec![
                column("order_id", ScalarKind::Int64, false),
                column("line", ScalarKind::Int32, false),
                column("sku", ScalarKind::Text, false),
                column("qty", ScalarKind::Int32, false),
                column("price", ScalarKind::Numeric, false),
            ],
            primary_key: vec!["order_id".into(), "line".into()],
        },
    ]
}

fn int(value: &Value, what: &str) -> Result<i64, RowError> {
    match value {
        Value::Int16(n) => Ok(i64::from(*n)),
        Value::Int32(n) => Ok(i64::from(*n)),
        Value::Int64(n) => Ok(*n),
        _ => Err(RowError::Reject(format!("{what} is not an integer"))),
    }
}

fn text<'a>(value: &'a Value, what: &str) -> Result<&'a str, RowError> {
    match value {
        Value::Text(s) | Value::Json(s) => Ok(s),
        Value::Null => Err(RowError::Reject(format!("{what} is NULL"))),
        _ => Err(RowError::Reject(format!("{what} is not text"))),
    }
}

fn split(p: Positions, row: &[Value]) -> Result<Vec<OutputRow>, RowError> {
    let id = int(&row[p.id], "id")?;
    let status = text(&row[p.status], "status")?.trim().to_lowercase();
    if status == "test" {
        return Ok(Vec::new());
    }
    let placed_at = match &row[p.placed_at] {
        // A legacy timestamp without zone is UTC.
        Value::Timestamp(t) | Value::Timestamptz(t) => *t,
        _ => return Err(RowError::Reject("placed_at is not a timestamp".into())),
    };
    let items: serde_json::Value = serde_json::from_str(text(&row[p.items], "items")?)
        .map_err(|e| RowError::Reject(format!("items is not valid JSON: {e}")))?;
    let items = items.as_array().ok_or_else(|| RowError::Reject("items is not a JSON array".into()))?;
    let mut out = vec![OutputRow {
        table: "orders".into(),
        values: vec![
            Value::Int64(id),
            Value::Int64(int(&row[p.customer_id], "customer_id")?),
            Value::Timestamptz(placed_at),
            Value::Text(status),
            Value::Int32(items.len() as i32),
        ],
    }];
    for (line, item) in items.iter().enumerate() {
        let field = |name: &str| item.get(name).ok_or_else(|| RowError::Reject(format!("item {line} has no {name}")));
        let sku = field("sku")?.as_str().ok_or_else(|| RowError::Reject(format!("item {line}: sku is not text")))?;
        let qty = field("qty")?.as_i64().filter(|q| *q > 0 && *q <= i64::from(i32::MAX));
        let qty = qty.ok_or_else(|| RowError::Reject(format!("item {line}: qty is not a positive integer")))?;
        // Prices stay exact: a string, or a JSON number as written (its
        // exponent applied).
        let price = match field("price")? {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => plain_decimal(&n.to_string())
                .ok_or_else(|| RowError::Reject(format!("item {line}: price exponent out of range")))?,
            _ => return Err(RowError::Reject(format!("item {line}: price is not a number"))),
        };
        out.push(OutputRow {
            table: "order_items".into(),
            values: vec![
                Value::Int64(id),
                Value::Int32(line as i32 + 1),
                Value::Text(if crate::UPPERCASE_SKUS { sku.to_uppercase() } else { sku.to_string() }),
                Value::Int32(qty as i32),
                Value::Numeric(price),
            ],
        });
    }
    Ok(out)
}

/// A JSON number's text as a plain decimal: as written when it has no
/// exponent, else with the exponent applied the way PostgreSQL stores it
/// (`1.5e-3` → `0.0015`, `1.50e1` → `15.0`, `1e2` → `100`); `None` for an
/// exponent past ±[`MAX_EXPONENT`]. The Python and JavaScript versions of
/// this plugin do exactly the same (the conformance test holds them to it).
fn plain_decimal(text: &str) -> Option<String> {
    let Some(e) = text.find(['e', 'E']) else { return Some(text.to_string()) };
    let exponent: i64 = text[e + 1..].parse().ok().filter(|x: &i64| x.abs() <= MAX_EXPONENT)?;
    let (sign, mantissa) = match text[..e].strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", &text[..e]),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat(point.unsigned_abs() as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    let (whole, fraction) = body.split_once('.').map_or((body.as_str(), None), |(w, f)| (w, Some(f)));
    let whole = match whole.trim_start_matches('0') {
        "" => "0",
        w => w,
    };
    Some(match fraction {
        Some(f) => format!("{sign}{whole}.{f}"),
        None => format!("{sign}{whole}"),
    })
}

/// The largest exponent a price may have: enough for any real amount,
/// small enough that applying it cannot blow up.
const MAX_EXPONENT: i64 = 1000;

/// The export: `describe` learns the columns, `transform-batch` splits.
pub struct Plugin;

impl Guest for Plugin {
    fn describe(source: TableSchema) -> Result<Vec<TableSchema>, String> {
        let find = |name: &str| {
            source
                .columns
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| format!("split-orders needs a column `{name}` in {}", source.name))
        };
        let positions = Positions {
            id: find("id")?,
            customer_id: find("customer_id")?,
            placed_at: find("placed_at")?,
            status: crate::STATUS_COLUMNS
                .iter()
                .find_map(|name| find(name).ok())
                .ok_or_else(|| format!("split-orders needs a column `status` in {}", source.name))?,
            items: find("items")?,
        };
        POSITIONS.with(|p| *p.borrow_mut() = Some(positions));
        Ok(outputs())
    }

    fn transform_batch(_table: String, rows: Vec<Vec<Value>>) -> Vec<Result<Vec<OutputRow>, RowError>> {
        let Some(p) = POSITIONS.with(|p| *p.borrow()) else {
            let fatal = RowError::Fatal("transform-batch called before describe".into());
            return rows.iter().map(|_| Err(fatal.clone())).collect();
        };
        rows.iter().map(|row| split(p, row)).collect()
    }

    fn target_keys(_table: String, key: Vec<Value>) -> Result<Vec<OutputKey>, RowError> {
        // Items first (they reference the order); a key shorter than
        // order_items' (order_id, line) names every line of the order.
        Ok(vec![OutputKey { table: "order_items".into(), key: key.clone() }, OutputKey { table: "orders".into(), key }])
    }
}
