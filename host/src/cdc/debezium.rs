//! Debezium change events (PostgreSQL connector, 2.x/3.x, JSON converter with
//! or without `schemas.enable`), decoded into ferry's change model.
//!
//! Accepted per line: `{"key": …, "value": …}` or a bare value; a value is
//! `{"schema": …, "payload": envelope}` or the envelope itself; a null value
//! is a tombstone (skipped). The envelope has `op` (`r` snapshot read, `c`
//! create, `u` update, `d` delete, `t` truncate), `before`, `after` and
//! `source` (`lsn`, `sequence`, `txId`, `snapshot`).

use serde_json::Value;

use super::position::{Position, parse_lsn};
use crate::model::LegacyUser;

/// Debezium's stand-in for an unchanged TOASTed column it did not read.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

/// What a change does to the source row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOp {
    /// Insert, update or snapshot read: the row as it now is.
    Upsert(LegacyUser),
    /// The row with this key is gone. `before` is the full old row when the
    /// source sent one (`REPLICA IDENTITY FULL`).
    Delete { id: i64, before: Option<LegacyUser> },
    /// The whole table was truncated.
    Truncate,
}

/// One change event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// Where it sits in the stream (`None` for snapshot reads, which all
    /// share the snapshot's LSN).
    pub position: Option<Position>,
    /// Part of the initial snapshot.
    pub snapshot: bool,
    pub tx_id: Option<i64>,
    pub op: ChangeOp,
}

/// What a line of input is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Event(ChangeEvent),
    /// A Kafka tombstone (null value): nothing to apply.
    Tombstone,
    /// An upsert whose `after` lacks an unchanged TOASTed value
    /// (`__debezium_unavailable_value` in `column`): completed from the
    /// source with `ferry apply --reread`, else dead-lettered.
    Unavailable {
        position: Option<Position>,
        snapshot: bool,
        tx_id: Option<i64>,
        key: i64,
        column: String,
    },
    /// An event ferry must not apply: dead-letter it with the reason.
    Rejected {
        position: Option<Position>,
        snapshot: bool,
        /// The source key, when it could be read.
        key: Option<i64>,
        reason: String,
    },
}

/// How integer timestamps are read when the event carries no schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IntegerTime {
    /// `io.debezium.time.MicroTimestamp` (Debezium's default for timestamp(6)).
    #[default]
    Micros,
    /// `io.debezium.time.Timestamp` / Kafka Connect `Timestamp`.
    Millis,
    /// `io.debezium.time.NanoTimestamp`.
    Nanos,
}

/// A Debezium envelope, unwrapped from its record and schema.
pub struct Envelope {
    /// The value's schema (`schemas.enable`), when the event carries one.
    pub schema: Option<Value>,
    pub envelope: serde_json::Map<String, Value>,
    pub position: Option<Position>,
    /// Part of the initial snapshot (`source.snapshot`).
    pub snapshot: bool,
    pub tx_id: Option<i64>,
    /// `r`, `c`, `u`, `d` or `t`.
    pub op: String,
    /// `source.schema` and `source.table`, when given.
    pub table: Option<(Option<String>, String)>,
}

/// Reads one line's envelope. `Ok(None)`: a tombstone; `Err`: an event
/// ferry cannot read (position and snapshot flag when known, the reason).
pub fn envelope(line: &str) -> Result<Option<Envelope>, (Option<Position>, bool, String)> {
    let value: Value = serde_json::from_str(line).map_err(|e| (None, false, format!("not JSON: {e}")))?;
    // {key, value} wrapper (a record as a consumer sees it).
    let value = match value {
        Value::Object(mut map)
            if map.contains_key("value") && !map.contains_key("op") && !map.contains_key("payload") =>
        {
            map.remove("value").unwrap_or(Value::Null)
        }
        other => other,
    };
    let (schema, envelope) = match value {
        Value::Null => return Ok(None),
        Value::Object(mut map) if map.contains_key("payload") => {
            let payload = map.remove("payload").unwrap_or(Value::Null);
            if payload.is_null() {
                return Ok(None);
            }
            (map.remove("schema"), payload)
        }
        other => (None, other),
    };
    let Value::Object(envelope) = envelope else {
        return Err((None, false, "the event is not a JSON object".into()));
    };
    let source = envelope.get("source").and_then(Value::as_object);
    let snapshot = source.and_then(|s| s.get("snapshot")).is_some_and(|s| match s {
        Value::String(s) => s != "false",
        Value::Bool(b) => *b,
        _ => false,
    });
    let position = source.and_then(position_of);
    let tx_id = source.and_then(|s| s.get("txId")).and_then(Value::as_i64);
    let table = source.and_then(|s| {
        let table = s.get("table")?.as_str()?.to_string();
        Some((s.get("schema").and_then(Value::as_str).map(str::to_string), table))
    });
    let Some(op) = envelope.get("op").and_then(Value::as_str).map(str::to_string) else {
        return Err((position, snapshot, "the event has no `op` (want r, c, u, d or t)".into()));
    };
    let snapshot = snapshot || op == "r";
    Ok(Some(Envelope { schema, envelope, position, snapshot, tx_id, op, table }))
}

/// Effective positions of a Debezium stream: an event without a position of
/// its own sits after the last positioned one (`then(n)`), so it is
/// deduplicated too; snapshot reads have none (they share the snapshot's).
#[derive(Debug, Default)]
pub struct Positions {
    last: Option<Position>,
    unpositioned: u32,
}

impl Positions {
    /// Starting after the stored position.
    pub fn after(stored: Option<Position>) -> Positions {
        Positions { last: stored, unpositioned: 0 }
    }

    pub fn effective(&mut self, position: Option<Position>, snapshot: bool) -> Option<Position> {
        match (position, snapshot) {
            (_, true) => None,
            (Some(p), false) => {
                self.last = Some(p);
                self.unpositioned = 0;
                Some(p)
            }
            (None, false) => {
                let last = self.last?;
                self.unpositioned += 1;
                Some(last.then(self.unpositioned))
            }
        }
    }
}

/// Whether an event at `position` was applied before: positioned ones at
/// or before the stored position; snapshot reads once the stream started.
pub fn replayed(position: Option<Position>, stored: Option<Position>, streaming: bool) -> bool {
    match position {
        Some(p) => stored.is_some_and(|c| p <= c),
        None => streaming,
    }
}

/// Decodes one line (the seed's `users` table).
pub fn decode(line: &str, default_time: IntegerTime) -> Decoded {
    let Envelope { schema, envelope, position, snapshot, tx_id, op, .. } = match self::envelope(line) {
        Ok(Some(e)) => e,
        Ok(None) => return Decoded::Tombstone,
        Err((position, snapshot, reason)) => return reject(position, snapshot, None, reason),
    };
    let op = op.as_str();
    let time_unit = schema.as_ref().and_then(created_at_unit).unwrap_or(default_time);
    let row = |field: &str| -> Result<Option<LegacyUser>, String> {
        match envelope.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(map)) => legacy_user(map, time_unit).map(Some).map_err(|e| format!("`{field}`: {e}")),
            Some(_) => Err(format!("`{field}` is not an object")),
        }
    };
    let op = match op {
        "r" | "c" | "u" => match row("after") {
            Ok(Some(after)) => match unavailable_column(&envelope, "after") {
                Some(column) => {
                    return Decoded::Unavailable { position, snapshot, tx_id, key: after.id, column };
                }
                None => ChangeOp::Upsert(after),
            },
            Ok(None) => return reject(position, snapshot, None, format!("op `{op}` without `after`")),
            Err(e) => return reject(position, snapshot, key_of(&envelope), e),
        },
        "d" => match row("before") {
            Ok(Some(before)) => {
                let complete = unavailable_column(&envelope, "before").is_none()
                    && before.name.is_some()
                    && before.email.is_some();
                ChangeOp::Delete { id: before.id, before: complete.then_some(before) }
            }
            Ok(None) => match key_of(&envelope) {
                Some(id) => ChangeOp::Delete { id, before: None },
                None => return reject(position, snapshot, None, "delete without `before`".into()),
            },
            Err(e) => return reject(position, snapshot, key_of(&envelope), e),
        },
        "t" => ChangeOp::Truncate,
        other => {
            return reject(
                position,
                snapshot,
                key_of(&envelope),
                format!("unknown op `{other}` (want r, c, u, d or t)"),
            );
        }
    };
    Decoded::Event(ChangeEvent { position: if snapshot { None } else { position }, snapshot, tx_id, op })
}

fn reject(position: Option<Position>, snapshot: bool, key: Option<i64>, reason: String) -> Decoded {
    Decoded::Rejected { position, snapshot, key, reason }
}

/// `source.sequence` (`["<last commit lsn>","<lsn>"]`, a JSON string) or
/// `source.lsn`.
fn position_of(source: &serde_json::Map<String, Value>) -> Option<Position> {
    let lsn_value = |v: &Value| match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => parse_lsn(s),
        _ => None,
    };
    let sequence = match source.get("sequence") {
        Some(Value::String(seq)) => serde_json::from_str::<Vec<Value>>(seq).ok(),
        _ => None,
    };
    if let Some(parts) = sequence {
        let commit = parts.first().and_then(lsn_value).unwrap_or(0);
        if let Some(lsn) = parts.get(1).and_then(lsn_value) {
            return Some(Position::new(commit, lsn));
        }
    }
    source.get("lsn").and_then(lsn_value).map(|lsn| Position::new(lsn, lsn))
}

/// The `id` of `before` or `after`, for dead letters of bad events.
fn key_of(envelope: &serde_json::Map<String, Value>) -> Option<i64> {
    ["before", "after"].iter().find_map(|f| envelope.get(*f)?.get("id")?.as_i64())
}

fn unavailable_column(envelope: &serde_json::Map<String, Value>, field: &str) -> Option<String> {
    envelope.get(field)?.as_object()?.iter().find(|(_, v)| v.as_str() == Some(UNAVAILABLE)).map(|(k, _)| k.clone())
}

/// The semantic type of `after.created_at` in the event's schema.
fn created_at_unit(schema: &Value) -> Option<IntegerTime> {
    let fields = schema.get("fields")?.as_array()?;
    let row = fields.iter().find(|f| f.get("field").and_then(Value::as_str) == Some("after"))?;
    let column =
        row.get("fields")?.as_array()?.iter().find(|f| f.get("field").and_then(Value::as_str) == Some("created_at"))?;
    match column.get("name").and_then(Value::as_str)? {
        "io.debezium.time.MicroTimestamp" => Some(IntegerTime::Micros),
        "io.debezium.time.NanoTimestamp" => Some(IntegerTime::Nanos),
        "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => Some(IntegerTime::Millis),
        _ => None,
    }
}

fn legacy_user(map: &serde_json::Map<String, Value>, unit: IntegerTime) -> Result<LegacyUser, String> {
    let id = match map.get("id") {
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| format!("id {n} is not a 64-bit integer"))?,
        Some(other) => return Err(format!("id is {other}, not an integer")),
        None => return Err("no `id`".into()),
    };
    let text = |column: &str| -> Result<Option<String>, String> {
        match map.get(column) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            // json/jsonb columns may arrive as objects with some converters.
            Some(v @ (Value::Object(_) | Value::Array(_))) if column == "metadata" => Ok(Some(v.to_string())),
            Some(other) => Err(format!("{column} is {other}, not a string")),
        }
    };
    let created_at = match map.get("created_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s == UNAVAILABLE => None,
        Some(Value::String(s)) => {
            Some(crate::time::parse_text(s).ok_or_else(|| format!("created_at {s:?} is not an ISO-8601 timestamp"))?)
        }
        Some(Value::Number(n)) => {
            let v = n.as_i64().ok_or_else(|| format!("created_at {n} is not an integer timestamp"))?;
            Some(match unit {
                IntegerTime::Micros => v,
                IntegerTime::Millis => v.saturating_mul(1000),
                IntegerTime::Nanos => v.div_euclid(1000),
            })
        }
        Some(other) => return Err(format!("created_at is {other}, not a timestamp")),
    };
    Ok(LegacyUser { id, name: text("name")?, email: text("email")?, created_at, metadata: text("metadata")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(d: Decoded) -> ChangeEvent {
        match d {
            Decoded::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    const CREATE: &str = r#"{"before":null,"after":{"id":7,"name":"Mary Ann","email":"M@X.ORG","created_at":1700000000123456,"metadata":"{\"theme\":\"dark\"}"},"source":{"version":"2.7.0.Final","connector":"postgresql","snapshot":"false","db":"legacy","sequence":"[\"24023128\",\"24023456\"]","schema":"public","table":"users","txId":750,"lsn":24023456},"op":"c","ts_ms":1}"#;

    #[test]
    fn create_without_schema() {
        let e = event(decode(CREATE, IntegerTime::Micros));
        assert_eq!(e.position, Some(Position::new(24023128, 24023456)));
        assert_eq!(e.tx_id, Some(750));
        assert!(!e.snapshot);
        match e.op {
            ChangeOp::Upsert(u) => {
                assert_eq!((u.id, u.created_at), (7, Some(1_700_000_000_123_456)));
                assert_eq!(u.metadata.as_deref(), Some(r#"{"theme":"dark"}"#));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_value_wrapper_schema_and_zoned_timestamps() {
        let line = r#"{"key":{"id":7},"value":{"schema":{"type":"struct","fields":[{"field":"after","fields":[{"field":"created_at","name":"io.debezium.time.ZonedTimestamp","type":"string"}]}]},"payload":{"before":null,"after":{"id":7,"name":"a","email":"b","created_at":"2024-01-15T09:30:00.123456Z","metadata":null},"source":{"lsn":100,"snapshot":"false"},"op":"u"}}}"#;
        let e = event(decode(line, IntegerTime::Millis));
        match e.op {
            ChangeOp::Upsert(u) => assert_eq!(u.created_at, crate::time::parse_text("2024-01-15 09:30:00.123456")),
            other => panic!("{other:?}"),
        }
        assert_eq!(e.position, Some(Position::new(100, 100)));
    }

    #[test]
    fn schema_decides_integer_units() {
        let line = r#"{"schema":{"fields":[{"field":"after","fields":[{"field":"created_at","name":"io.debezium.time.Timestamp"}]}]},"payload":{"after":{"id":1,"name":"a","email":"b","created_at":1700000000123},"source":{"lsn":5},"op":"c"}}"#;
        match event(decode(line, IntegerTime::Micros)).op {
            ChangeOp::Upsert(u) => assert_eq!(u.created_at, Some(1_700_000_000_123_000)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tombstones_deletes_truncates_and_snapshots() {
        assert_eq!(decode(r#"{"key":{"id":1},"value":null}"#, IntegerTime::Micros), Decoded::Tombstone);
        assert_eq!(decode("null", IntegerTime::Micros), Decoded::Tombstone);
        let d = event(decode(
            r#"{"before":{"id":3,"name":null,"email":null,"created_at":null,"metadata":null},"after":null,"source":{"lsn":9},"op":"d"}"#,
            IntegerTime::Micros,
        ));
        assert_eq!(d.op, ChangeOp::Delete { id: 3, before: None });
        let t = event(decode(r#"{"source":{"lsn":10},"op":"t"}"#, IntegerTime::Micros));
        assert_eq!(t.op, ChangeOp::Truncate);
        let r = event(decode(
            r#"{"after":{"id":1,"name":"a","email":"b"},"source":{"lsn":4,"snapshot":"true"},"op":"r"}"#,
            IntegerTime::Micros,
        ));
        assert!(r.snapshot && r.position.is_none());
    }

    #[test]
    fn bad_events_are_rejected_with_reasons() {
        let reason = |line: &str| match decode(line, IntegerTime::Micros) {
            Decoded::Rejected { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason("{not json").starts_with("not JSON"));
        assert!(reason(r#"{"after":{"id":1},"source":{"lsn":1}}"#).contains("no `op`"));
        assert!(reason(r#"{"after":{"id":"x"},"op":"c"}"#).contains("not an integer"));
        assert!(reason(r#"{"after":{"id":1,"name":5},"op":"c"}"#).contains("not a string"));
        assert!(reason(r#"{"op":"x","after":{"id":1}}"#).contains("unknown op"));
        let toast = decode(
            r#"{"after":{"id":1,"name":"a","email":"b","metadata":"__debezium_unavailable_value"},"source":{"lsn":3},"op":"u"}"#,
            IntegerTime::Micros,
        );
        assert!(matches!(toast, Decoded::Unavailable { key: 1, ref column, .. } if column == "metadata"), "{toast:?}");
    }
}
