//! Times the seed's rules (`user-rules`) compiled natively on rows read from
//! stdin — one JSON array per line, `[id, name, email, created_at_micros,
//! metadata]` with nulls, as bench/plugins.sh exports them — and prints
//! `{"rows", "transform_seconds", "rows_per_second", "rejected"}` (the best
//! of `REPEAT` passes; reading and parsing the input are not timed).

use std::hint::black_box;
use std::io::BufRead;
use std::time::Instant;

/// Passes over the rows; the fastest counts (as `ferry plugin bench --repeat 3`).
const REPEAT: usize = 3;

type Row = (i64, Option<String>, Option<String>, Option<i64>, Option<String>);

fn main() {
    let rows: Vec<Row> = std::io::stdin()
        .lock()
        .lines()
        .map(|line| serde_json::from_str(&line.expect("read stdin")).expect("a row: [id, name, email, micros, metadata]"))
        .collect();
    let mut best = f64::INFINITY;
    let mut rejected = 0;
    for _ in 0..REPEAT {
        rejected = 0;
        let started = Instant::now();
        for (id, name, email, created_at, metadata) in &rows {
            let legacy = user_rules::Legacy {
                id: *id,
                name: name.as_deref(),
                email: email.as_deref(),
                created_at: *created_at,
                metadata: metadata.as_deref(),
            };
            if black_box(user_rules::transform(black_box(&legacy))).is_err() {
                rejected += 1;
            }
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    println!(
        "{{\"rows\": {}, \"transform_seconds\": {best:.6}, \"rows_per_second\": {:.0}, \"rejected\": {rejected}}}",
        rows.len(),
        rows.len() as f64 / best
    );
}
