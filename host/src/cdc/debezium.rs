//! Debezium change events (PostgreSQL connector, 2.x/3.x, JSON converter with
//! or without `schemas.enable`): envelopes, positions and dedup; their rows
//! are decoded by [`super::events`].
//!
//! Accepted per line: `{"key": …, "value": …}` or a bare value; a value is
//! `{"schema": …, "payload": envelope}` or the envelope itself; a null value
//! is a tombstone (skipped). The envelope has `op` (`r` snapshot read, `c`
//! create, `u` update, `d` delete, `t` truncate), `before`, `after` and
//! `source` (`lsn`, `sequence`, `txId`, `snapshot`).

use serde_json::Value;

use super::position::{Position, parse_lsn};

/// Debezium's stand-in for an unchanged TOASTed column it did not read.
pub const UNAVAILABLE: &str = "__debezium_unavailable_value";

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

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = r#"{"before":null,"after":{"id":7,"name":"Mary Ann"},"source":{"version":"2.7.0.Final","connector":"postgresql","snapshot":"false","db":"legacy","sequence":"[\"24023128\",\"24023456\"]","schema":"public","table":"users","txId":750,"lsn":24023456},"op":"c","ts_ms":1}"#;

    fn read(line: &str) -> Envelope {
        envelope(line).unwrap_or_else(|e| panic!("{e:?}")).expect("not a tombstone")
    }

    #[test]
    fn an_event_gives_its_position_transaction_table_and_op() {
        let e = read(CREATE);
        assert_eq!(e.position, Some(Position::new(24023128, 24023456)));
        assert_eq!(e.tx_id, Some(750));
        assert!(!e.snapshot);
        assert_eq!(e.op, "c");
        assert_eq!(e.table, Some((Some("public".into()), "users".into())));
        assert!(e.schema.is_none());
    }

    #[test]
    fn key_value_wrappers_and_schemas_are_unwrapped() {
        let line = r#"{"key":{"id":7},"value":{"schema":{"type":"struct"},"payload":{"before":null,"after":{"id":7},"source":{"lsn":100,"snapshot":"false"},"op":"u"}}}"#;
        let e = read(line);
        assert_eq!(e.position, Some(Position::new(100, 100)));
        assert_eq!(e.op, "u");
        assert!(e.schema.is_some());
        assert_eq!(e.envelope["after"]["id"], 7);
    }

    #[test]
    fn tombstones_snapshots_and_unpositioned_events() {
        assert!(envelope(r#"{"key":{"id":1},"value":null}"#).unwrap().is_none());
        assert!(envelope("null").unwrap().is_none());
        let r = read(r#"{"after":{"id":1},"source":{"lsn":4,"snapshot":"true"},"op":"r"}"#);
        assert!(r.snapshot);
        let mut positions = Positions::after(Some(Position::new(10, 10)));
        assert_eq!(positions.effective(r.position, r.snapshot), None, "snapshot reads share one position");
        let first = positions.effective(None, false).unwrap();
        let second = positions.effective(None, false).unwrap();
        assert!(Position::new(10, 10) < first && first < second, "each unpositioned event gets its own");
        assert!(replayed(Some(Position::new(9, 9)), Some(Position::new(10, 10)), true));
        assert!(replayed(None, Some(Position::new(10, 10)), true), "snapshot reads once streaming");
        assert!(!replayed(None, None, false));
    }

    #[test]
    fn bad_events_are_refused_with_reasons() {
        let reason = |line: &str| envelope(line).err().unwrap_or_else(|| panic!("{line} was accepted")).2;
        assert!(reason("{not json").starts_with("not JSON"));
        assert!(reason(r#"{"after":{"id":1},"source":{"lsn":1}}"#).contains("no `op`"));
        assert!(reason("[1, 2]").contains("not a JSON object"));
    }
}
