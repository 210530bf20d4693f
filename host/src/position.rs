//! Positions in a source's change stream: a small type with a total order,
//! never a bare integer or string.

use std::fmt;

/// Where a change sits in the stream.
///
/// For PostgreSQL (and Debezium's PostgreSQL connector) this is
/// `(commit, lsn, seq)`: `commit` is the commit LSN of the transaction before
/// the change's own (Debezium's `source.sequence[0]`), `lsn` the change's LSN
/// (`sequence[1]`, or `source.lsn`). Ordered lexicographically, it grows in
/// stream order even though the LSNs of interleaved transactions do not.
/// `seq` numbers the items of the input that carry no position of their own
/// (a malformed event) after the last positioned one, so they are
/// deduplicated too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub commit: u64,
    pub lsn: u64,
    pub seq: u32,
}

impl Position {
    pub const fn new(commit: u64, lsn: u64) -> Position {
        Position { commit, lsn, seq: 0 }
    }

    /// The position of the `n`th unpositioned item after this one.
    pub fn then(self, n: u32) -> Position {
        Position { seq: n, ..self }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", format_lsn(self.commit), format_lsn(self.lsn))?;
        if self.seq > 0 {
            write!(f, "+{}", self.seq)?;
        }
        Ok(())
    }
}

/// PostgreSQL's text form of an LSN: `16/B374D848`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses `16/B374D848` or a decimal integer.
pub fn parse_lsn(text: &str) -> Option<u64> {
    match text.split_once('/') {
        Some((hi, lo)) => Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_follows_commits_then_lsns() {
        // Transaction B (commit 250) is streamed before A's changes (lsn 100,
        // 300) that commit later: ordering by (commit, lsn) keeps stream order.
        let b = Position::new(50, 200);
        let a1 = Position::new(250, 100);
        let a2 = Position::new(250, 300);
        assert!(b < a1 && a1 < a2 && a2 < a2.then(1));
    }

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(parse_lsn("24023128"), Some(24_023_128));
    }
}
