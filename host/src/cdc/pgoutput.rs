//! Decoding PostgreSQL's `pgoutput` logical replication messages (protocol
//! version 1, text tuple format) into a plain model; [`super::tables`]
//! decodes the tuples' values by each table's column types.
//!
//! The transport (replication connection, keepalives, standby status) is a
//! separate concern; this module only parses the `XLogData` payloads.

use std::collections::HashMap;

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum {
    Null,
    /// An unchanged TOASTed value the message does not carry.
    Unchanged,
    Text(String),
    Binary(Vec<u8>),
}

/// A relation (table) as the stream describes it before using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    /// Part of the replica identity (the key).
    pub key: bool,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: i64,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Datum>,
    },
    /// `old` is the key (`K`) or the full old row (`O`) when the server sent
    /// one (key changes, REPLICA IDENTITY FULL).
    Update {
        relation: u32,
        old: Option<(bool, Vec<Datum>)>,
        new: Vec<Datum>,
    },
    /// `key_only` is true for `K` (REPLICA IDENTITY DEFAULT/INDEX).
    Delete {
        relation: u32,
        key_only: bool,
        old: Vec<Datum>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// The transaction was replayed here from elsewhere: the replication
    /// origin its writer set (`pg_replication_origin_session_setup`) and the
    /// commit position it gave (`pg_replication_origin_xact_setup`). Sent
    /// after `Begin`, before the transaction's changes.
    Origin {
        lsn: u64,
        name: String,
    },
    /// A transactional logical message of the DDL capture
    /// ([`crate::replication::DDL_MESSAGE_PREFIX`]), at its place in its
    /// transaction. (The replication client decodes `M` messages itself.)
    Ddl(Vec<u8>),
    /// Type, …: not needed to apply rows.
    Other(u8),
}

/// A malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed pgoutput message: {0}")]
pub struct DecodeError(String);

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError(format!("needed {n} more bytes, {} left", self.buf.len())));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self.buf.iter().position(|&b| b == 0).ok_or_else(|| DecodeError("unterminated string".into()))?;
        let s = String::from_utf8(self.buf[..end].to_vec()).map_err(|e| DecodeError(format!("string: {e}")))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Datum>, DecodeError> {
        let n = self.i16()?;
        (0..n)
            .map(|_| match self.u8()? {
                b'n' => Ok(Datum::Null),
                b'u' => Ok(Datum::Unchanged),
                kind @ (b't' | b'b') => {
                    let len = self.i32()?;
                    let bytes = self.take(usize::try_from(len).map_err(|_| DecodeError(format!("length {len}")))?)?;
                    Ok(if kind == b't' {
                        Datum::Text(String::from_utf8(bytes.to_vec()).map_err(|e| DecodeError(format!("text: {e}")))?)
                    } else {
                        Datum::Binary(bytes.to_vec())
                    })
                }
                other => Err(DecodeError(format!("unknown tuple datum kind {:?}", other as char))),
            })
            .collect()
    }
}

/// Decodes one `pgoutput` message.
pub fn decode(data: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: data };
    let tag = r.u8()?;
    Ok(match tag {
        b'B' => Message::Begin { final_lsn: r.i64()? as u64, commit_time: r.i64()?, xid: r.u32()? },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit { commit_lsn: r.i64()? as u64, end_lsn: r.i64()? as u64, commit_time: r.i64()? }
        }
        b'R' => {
            let oid = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let replica_identity = r.u8()?;
            let n = r.i16()?;
            let columns = (0..n)
                .map(|_| {
                    let flags = r.u8()?;
                    let name = r.string()?;
                    let type_oid = r.u32()?;
                    let _typmod = r.i32()?;
                    Ok(RelationColumn { name, type_oid, key: flags & 1 == 1 })
                })
                .collect::<Result<_, DecodeError>>()?;
            Message::Relation(Relation { oid, namespace, name, replica_identity, columns })
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert { relation, new: r.tuple()? },
                other => return Err(DecodeError(format!("insert: expected N, got {:?}", other as char))),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut kind = r.u8()?;
            if kind == b'K' || kind == b'O' {
                old = Some((kind == b'K', r.tuple()?));
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(DecodeError(format!("update: expected N, got {:?}", kind as char)));
            }
            Message::Update { relation, old, new: r.tuple()? }
        }
        b'D' => {
            let relation = r.u32()?;
            let kind = r.u8()?;
            if kind != b'K' && kind != b'O' {
                return Err(DecodeError(format!("delete: expected K or O, got {:?}", kind as char)));
            }
            Message::Delete { relation, key_only: kind == b'K', old: r.tuple()? }
        }
        b'T' => {
            let n = r.i32()?;
            let options = r.u8()?;
            let relations = (0..n).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations, cascade: options & 1 == 1, restart_identity: options & 2 == 2 }
        }
        b'O' => Message::Origin { lsn: r.i64()? as u64, name: r.string()? },
        other => Message::Other(other),
    })
}

/// Relations seen so far in a stream (the server sends each before its
/// first use, and again after a change).
#[derive(Debug, Default)]
pub struct Relations {
    by_oid: HashMap<u32, Relation>,
}

impl Relations {
    pub fn insert(&mut self, relation: Relation) {
        self.by_oid.insert(relation.oid, relation);
    }

    pub fn get(&self, oid: u32) -> Option<&Relation> {
        self.by_oid.get(&oid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    fn tuple(out: &mut Vec<u8>, values: &[Option<&str>]) {
        out.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            match v {
                None => out.push(b'n'),
                Some("\u{0}unchanged") => out.push(b'u'),
                Some(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    fn relation() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&16384u32.to_be_bytes());
        cstr(&mut m, "public");
        cstr(&mut m, "users");
        m.push(b'd');
        let cols =
            [("id", 20u32, 1u8), ("name", 25, 0), ("email", 25, 0), ("created_at", 1114, 0), ("metadata", 25, 0)];
        m.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (name, oid, flags) in cols {
            m.push(flags);
            cstr(&mut m, name);
            m.extend_from_slice(&oid.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    #[test]
    fn decodes_a_transaction_of_every_kind() {
        let mut rels = Relations::default();
        let Message::Relation(rel) = decode(&relation()).unwrap() else { panic!() };
        assert_eq!(rel.columns[0], RelationColumn { name: "id".into(), type_oid: 20, key: true });
        rels.insert(rel);

        let mut begin = vec![b'B'];
        begin.extend_from_slice(&0x16_0000_0100u64.to_be_bytes());
        begin.extend_from_slice(&42i64.to_be_bytes());
        begin.extend_from_slice(&7u32.to_be_bytes());
        assert_eq!(decode(&begin).unwrap(), Message::Begin { final_lsn: 0x16_0000_0100, commit_time: 42, xid: 7 });

        let mut origin = vec![b'O'];
        origin.extend_from_slice(&0x2_0000_0040u64.to_be_bytes());
        cstr(&mut origin, "ferry:shop.reverse");
        assert_eq!(decode(&origin).unwrap(), Message::Origin { lsn: 0x2_0000_0040, name: "ferry:shop.reverse".into() });

        let mut insert = vec![b'I'];
        insert.extend_from_slice(&16384u32.to_be_bytes());
        insert.push(b'N');
        tuple(&mut insert, &[Some("5"), Some("Mary Ann"), Some("M@X"), Some("2024-01-15 09:30:00.123456"), None]);
        let Message::Insert { relation, new } = decode(&insert).unwrap() else { panic!() };
        assert_eq!(rels.get(relation).map(|r| r.name.as_str()), Some("users"));
        assert_eq!(new[0], Datum::Text("5".into()));
        assert_eq!(new[4], Datum::Null);

        let mut update = vec![b'U'];
        update.extend_from_slice(&16384u32.to_be_bytes());
        update.push(b'N');
        tuple(
            &mut update,
            &[Some("5"), Some("Mary"), Some("M@X"), Some("2024-01-15 09:30:00"), Some("\u{0}unchanged")],
        );
        let Message::Update { relation, old: None, new } = decode(&update).unwrap() else { panic!() };
        assert_eq!(relation, 16384);
        assert_eq!(new[4], Datum::Unchanged);

        let mut delete = vec![b'D'];
        delete.extend_from_slice(&16384u32.to_be_bytes());
        delete.push(b'K');
        tuple(&mut delete, &[Some("5"), None, None, None, None]);
        let Message::Delete { relation, key_only: true, old } = decode(&delete).unwrap() else { panic!() };
        assert_eq!((relation, &old[0]), (16384, &Datum::Text("5".into())));

        let mut truncate = vec![b'T'];
        truncate.extend_from_slice(&1i32.to_be_bytes());
        truncate.push(0);
        truncate.extend_from_slice(&16384u32.to_be_bytes());
        assert_eq!(
            decode(&truncate).unwrap(),
            Message::Truncate { relations: vec![16384], cascade: false, restart_identity: false }
        );

        let mut commit = vec![b'C', 0];
        commit.extend_from_slice(&0x16_0000_0100u64.to_be_bytes());
        commit.extend_from_slice(&0x16_0000_0180u64.to_be_bytes());
        commit.extend_from_slice(&43i64.to_be_bytes());
        assert!(matches!(decode(&commit).unwrap(), Message::Commit { commit_lsn: 0x16_0000_0100, .. }));
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let full = relation();
        for cut in 0..full.len() {
            let _ = decode(&full[..cut]);
        }
        assert!(decode(&full[..10]).is_err());
        assert!(decode(b"Ixxxx").is_err());
    }
}
