//! `ferry validate`: the seed's three post-migration checks, done properly.
//!
//! 1. **Counts with accounting**: `source rows = loaded + skipped + dead
//!    letters`, and the target holds `source rows − dead letters` rows.
//! 2. **Sample**: N random source rows re-transformed with the plugin version
//!    that loaded them, deep-diffed field by field against the target.
//! 3. **Checksums**: the target is cut into key-range segments of
//!    `segment_rows` rows (keys in byte order); each source row is
//!    re-transformed and hashed into the segment its target key falls in; the
//!    per-segment hashes are compared, and each mismatching segment is then
//!    read row by row on both sides to list exactly which keys are missing,
//!    extra or different.
//!
//! Segment hashes are order-independent (a sum of per-row SHA-256 prefixes,
//! plus a count), so the source can be read in its own key order while the
//! target is read in its own.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::control::RunRecord;
use crate::engines::{self, Target};
use crate::model::{DeadLetterKind, NewUser, Outcome};
use crate::plugin::{Plugin, Transformer};
use crate::settings::Settings;
use crate::sink::{RowView, TARGET_FIELDS, TargetRow};
use crate::source::SnapshotSource;

/// Mismatching segments read row by row in one validation. Past this the
/// report says how many more mismatch; fix the first ones and re-run.
const MAX_DRILLED_SEGMENTS: usize = 32;
/// Differences listed per category in the report.
const MAX_LISTED: usize = 1000;

/// What to validate.
#[derive(Debug, Clone, Copy)]
pub struct ValidateOptions {
    pub sample_size: usize,
    pub segment_rows: usize,
    pub checksum: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CountCheck {
    pub ok: bool,
    pub source_rows: u64,
    pub target_rows: u64,
    pub loaded: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub run_id: String,
    pub run_status: String,
    /// A change-stream pipeline: the changes dead-lettered on the way
    /// (`ferry.change_dead_letters`), whose rows the target may lack or hold
    /// in an older version.
    pub change_dead_letters: Option<u64>,
    /// A change-stream pipeline: target rows marked stale (kept or removed)
    /// because their newest version was dead-lettered.
    pub stale_rows: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FieldDiff {
    pub key: String,
    pub field: String,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SampleCheck {
    pub ok: bool,
    pub sampled: usize,
    pub matched: usize,
    /// Sampled rows the plugin rejects (they belong in the dead letters).
    pub rejected: usize,
    /// Sampled rows that differ because their newest version was
    /// dead-lettered (stale rows of a change stream).
    pub explained: usize,
    pub differences: Vec<FieldDiff>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChecksumCheck {
    pub ok: bool,
    pub segments: usize,
    pub mismatched_segments: usize,
    pub source_rows_hashed: u64,
    /// Source rows read (hashed, or rejected by the plugin).
    pub source_rows_read: u64,
    pub target_rows_hashed: u64,
    /// Target keys the source says should exist but do not.
    pub missing: Vec<String>,
    /// Target keys no source row produces.
    pub extra: Vec<String>,
    /// Keys present on both sides whose rows differ, with the fields.
    pub different: Vec<FieldDiff>,
    /// Mismatching segments not drilled into (over the per-run limit).
    pub undrilled_segments: usize,
    /// Differences explained by a dead letter (a stale or removed row of a
    /// change stream, `ferry.stale_rows`): keys, and how many were missing,
    /// extra and different among them.
    pub explained: Vec<String>,
    pub explained_missing: usize,
    pub explained_extra: usize,
    pub explained_different: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub ok: bool,
    pub pipeline: String,
    pub plugin_sha256: String,
    pub counts: CountCheck,
    pub sample: SampleCheck,
    pub checksum: Option<ChecksumCheck>,
    pub elapsed_seconds: f64,
}

pub use crate::value::canonical_json;

/// A transformed row in canonical target form (see [`TargetRow`]).
pub fn canonical_row(row: NewUser) -> TargetRow {
    let settings = canonical_json(&row.settings);
    [
        Some(row.id),
        Some(row.first_name),
        Some(row.last_name),
        Some(row.email),
        Some(row.created_at.to_string()),
        Some(settings),
    ]
}

/// A canonical field as a person reads it (timestamps in RFC 3339).
pub fn display_field(field: &str, value: &str) -> String {
    match (field, value.parse::<i64>()) {
        ("created_at", Ok(micros)) => crate::time::format_rfc3339_micros(micros),
        _ => value.to_string(),
    }
}

/// A row's hash: SHA-256 over its fields in canonical form, each with its
/// length (so that field boundaries cannot shift), truncated to 128 bits for
/// the segment sums.
pub fn row_hash(row: &RowView<'_>) -> u128 {
    fn text(h: &mut Sha256, field: Option<&str>) {
        match field {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                h.update((s.len() as u64).to_le_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    let mut h = Sha256::new();
    text(&mut h, row.id);
    text(&mut h, row.first_name);
    text(&mut h, row.last_name);
    text(&mut h, row.email);
    match row.created_at {
        None => h.update([0u8]),
        Some(micros) => {
            h.update([2u8]);
            h.update(micros.to_le_bytes());
        }
    }
    text(&mut h, row.settings.map(canonical_json).as_deref());
    let digest = h.finalize();
    u128::from_le_bytes(digest[..16].try_into().expect("16 bytes"))
}

/// A transformed row seen as a target row, for hashing.
fn view(row: &NewUser) -> RowView<'_> {
    RowView {
        id: Some(&row.id),
        first_name: Some(&row.first_name),
        last_name: Some(&row.last_name),
        email: Some(&row.email),
        created_at: Some(row.created_at),
        settings: Some(&row.settings),
    }
}

/// Field-by-field differences between the expected and the actual row.
pub fn diff_fields(key: &str, expected: &TargetRow, actual: &TargetRow) -> Vec<FieldDiff> {
    TARGET_FIELDS
        .iter()
        .zip(expected.iter().zip(actual.iter()))
        .filter(|(_, (e, a))| e != a)
        .map(|(field, (e, a))| FieldDiff {
            key: key.to_string(),
            field: field.to_string(),
            expected: e.as_deref().map(|v| display_field(field, v)),
            actual: a.as_deref().map(|v| display_field(field, v)),
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Segment {
    rows: u64,
    sum: u128,
}

impl Segment {
    fn add(&mut self, hash: u128) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(hash);
    }
}

/// What dead letters explain: source keys the target refused (absent from
/// it on purpose) and target keys of stale rows (kept or removed because
/// their newest version was dead-lettered).
struct Explained {
    refused: HashSet<i64>,
    stale: HashSet<String>,
}

/// Runs the three checks.
pub async fn validate(settings: &Settings, options: ValidateOptions) -> anyhow::Result<ValidationReport> {
    let started = std::time::Instant::now();
    let mut target = engines::open_target(settings).await?;
    let run = target.latest_run(&settings.pipeline).await?;
    // A pipeline fed by `ferry sync`/`ferry apply` has a change stream
    // instead of (or after) a migration run.
    let (stream, stale) = match (&run, settings.target.url.engine()) {
        (None, crate::db::Engine::Postgres) => {
            let mut changes = engines::open_change_target(settings).await?;
            (changes.change_status(&settings.pipeline).await?, changes.stale_rows(&settings.pipeline).await?)
        }
        _ => (None, Vec::new()),
    };
    // Target keys whose difference a dead letter explains.
    let explained: HashSet<String> = stale.iter().filter_map(|s| s.target_key.clone()).collect();
    if run.is_none() && stream.is_none() {
        return Err(crate::error::Error::contract(format!(
            "no run of pipeline {} is recorded in {}; run `ferry migrate` (or `ferry sync`) first, or check `name` in the configuration",
            settings.pipeline, settings.target.url
        )));
    }
    let path = settings.plugin()?.path.clone();
    let load = settings.plugin()?.options.clone();
    let plugin: std::sync::Arc<Plugin> = tokio::task::spawn_blocking(move || Plugin::load(&path, &load)).await??;
    let versions = match (&run, &stream) {
        (Some(run), _) => target.plugin_versions(&run.run_id).await?,
        (None, Some(stream)) => stream.plugin_sha256.iter().cloned().collect(),
        (None, None) => Vec::new(),
    };
    if !versions.is_empty() && !versions.iter().any(|v| v == plugin.sha256()) {
        return Err(crate::error::Error::contract(format!(
            "pipeline {} was loaded by plugin sha256 {} but the configured plugin is {}; validate with the version that loaded the data",
            settings.pipeline,
            versions.join(", "),
            plugin.sha256()
        )));
    }
    let mut transformer = plugin.instantiate()?;
    let mut source = engines::open_source(&settings.source).await?;

    let source_rows = source.count().await?;
    let target_rows = target.count_rows().await?;
    // Rows the target refused (dead letters of kind `load`) are explained:
    // the plugin transforms them, but they are meant to be absent.
    let refused: HashSet<i64> = match &run {
        Some(run) => target
            .dead_letter_keys(&run.run_id, DeadLetterKind::Load.as_str())
            .await?
            .into_iter()
            .filter_map(|k| k.parse().ok())
            .collect(),
        None => HashSet::new(),
    };
    let dead = Explained { refused, stale: explained };
    let sample = check_sample(
        source.as_mut(),
        target.as_mut(),
        &mut transformer,
        options.sample_size,
        &dead.refused,
        &dead.stale,
    )
    .await?;
    let checksum = if options.checksum {
        Some(
            check_checksums(settings, source, target, &mut transformer, options.segment_rows, target_rows, &dead)
                .await?,
        )
    } else {
        None
    };
    let counts = match &run {
        Some(run) => counts_with_ledger(source_rows, target_rows, run),
        None => counts_of_stream(
            source_rows,
            target_rows,
            checksum.as_ref(),
            stream.as_ref().map(|s| s.dead_lettered),
            stale.len() as u64,
        ),
    };
    let ok = counts.ok && sample.ok && checksum.as_ref().is_none_or(|c| c.ok);
    Ok(ValidationReport {
        ok,
        pipeline: settings.pipeline.clone(),
        plugin_sha256: plugin.sha256().to_string(),
        counts,
        sample,
        checksum,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Counts of a migrated pipeline: the run's ledger accounts for every
/// source row, and the target holds the source less the dead letters.
fn counts_with_ledger(source_rows: u64, target_rows: u64, run: &RunRecord) -> CountCheck {
    let s = run.stats;
    let ok = source_rows == s.loaded + s.skipped + s.dead_lettered && target_rows + s.dead_lettered == source_rows;
    CountCheck {
        ok,
        source_rows,
        target_rows,
        loaded: s.loaded,
        skipped: s.skipped,
        dead_lettered: s.dead_lettered,
        run_id: run.run_id.clone(),
        run_status: run.status.as_str().to_string(),
        change_dead_letters: None,
        stale_rows: None,
    }
}

/// Counts of a change-stream pipeline: the target holds exactly the source
/// rows the plugin transforms now (the rest are rejected, so absent). Needs
/// the checksum pass, which re-transforms every source row.
fn counts_of_stream(
    source_rows: u64,
    target_rows: u64,
    checksum: Option<&ChecksumCheck>,
    change_dead_letters: Option<u64>,
    stale_rows: u64,
) -> CountCheck {
    let (transformed, rejected) = match checksum {
        Some(k) => (k.source_rows_hashed, k.source_rows_read.saturating_sub(k.source_rows_hashed)),
        None => (target_rows, source_rows.saturating_sub(target_rows)),
    };
    // Stale rows kept for a rejected version are extra, removed ones missing.
    let expected = checksum
        .map_or(transformed, |k| (transformed + k.explained_extra as u64).saturating_sub(k.explained_missing as u64));
    CountCheck {
        ok: target_rows == expected && checksum.is_some_and(|k| k.source_rows_read == source_rows),
        stale_rows: Some(stale_rows),
        source_rows,
        target_rows,
        loaded: transformed,
        skipped: 0,
        dead_lettered: rejected,
        run_id: "change stream".into(),
        change_dead_letters,
        run_status: if checksum.is_some() {
            "streamed".into()
        } else {
            "streamed (counts need the checksum pass)".into()
        },
    }
}

/// Runs the plugin on a batch from async code (the call is CPU-bound).
fn transform(
    transformer: &mut Transformer,
    rows: Vec<crate::model::LegacyUser>,
) -> anyhow::Result<Vec<(i64, Outcome)>> {
    let (rows, outcomes) = tokio::task::block_in_place(|| transformer.transform_batch(rows))?;
    Ok(rows.into_iter().map(|r| r.id).zip(outcomes).collect())
}

async fn check_sample(
    source: &mut dyn SnapshotSource,
    target: &mut dyn Target,
    transformer: &mut Transformer,
    size: usize,
    refused: &HashSet<i64>,
    explained: &HashSet<String>,
) -> anyhow::Result<SampleCheck> {
    let keys = source.sample_keys(size).await?;
    let batch = source.read_keys(&keys).await?;
    let sampled = batch.len();
    let mut expected = Vec::new();
    let mut rejected = batch.unreadable.len();
    for (key, outcome) in transform(transformer, batch.rows)? {
        match outcome {
            Outcome::Row(_) if refused.contains(&key) => rejected += 1,
            Outcome::Row(row) => expected.push(canonical_row(row)),
            _ => rejected += 1,
        }
    }
    let target_keys: Vec<String> = expected.iter().filter_map(|r| r[0].clone()).collect();
    let actual: BTreeMap<String, TargetRow> =
        target.read_keys(&target_keys).await?.into_iter().filter_map(|r| r[0].clone().map(|k| (k, r))).collect();
    let mut differences = Vec::new();
    let mut matched = 0;
    let mut explained_rows = 0;
    for row in &expected {
        let key = row[0].clone().unwrap_or_default();
        match actual.get(&key) {
            Some(found) if found == row => matched += 1,
            _ if explained.contains(&key) => explained_rows += 1,
            Some(found) => differences.extend(diff_fields(&key, row, found)),
            None => differences.push(FieldDiff {
                key,
                field: "(row)".into(),
                expected: Some("present".into()),
                actual: None,
            }),
        }
    }
    Ok(SampleCheck { ok: differences.is_empty(), sampled, matched, rejected, explained: explained_rows, differences })
}

async fn check_checksums(
    settings: &Settings,
    source: Box<dyn SnapshotSource>,
    target: Box<dyn Target>,
    transformer: &mut Transformer,
    segment_rows: usize,
    target_rows: u64,
    dead: &Explained,
) -> anyhow::Result<ChecksumCheck> {
    let (refused, explained) = (&dead.refused, &dead.stale);
    // Segments are cut on the target's keys, in byte order: boundaries[i] is
    // the first key of segment i + 1; segment 0 starts at the beginning of
    // the key space and the last one runs to its end.
    let started = std::time::Instant::now();
    let mut target = target;
    let boundaries = Arc::new(target.segment_boundaries(segment_rows, target_rows).await?);
    tracing::info!(elapsed = ?started.elapsed(), segments = boundaries.len() + 1, "segments cut");
    let segments = boundaries.len() + 1;
    let segment_of = |boundaries: &[String], key: &str| boundaries.partition_point(|b| b.as_str() <= key);

    // The target and the source are hashed at the same time: the target
    // pass on its own task, the source pass (read ahead, transform) here.
    let cut = Arc::clone(&boundaries);
    let target_pass = tokio::spawn(async move {
        let mut sums = vec![Segment::default(); segments];
        let mut rows = 0u64;
        let result = target
            .scan(&mut |row| {
                sums[segment_of(&cut, row.id.unwrap_or_default())].add(row_hash(row));
                rows += 1;
            })
            .await;
        (target, result.map(|()| (sums, rows)))
    });
    let mut source_sums = vec![Segment::default(); segments];
    let mut source_rows_hashed = 0u64;
    let source = scan_source(settings, source, transformer, refused, |row| {
        source_sums[segment_of(&boundaries, &row.id)].add(row_hash(&view(&row)));
        source_rows_hashed += 1;
    })
    .await;
    let (source, source_rows_read) = match source {
        Ok((source, read)) => (Ok(source), read),
        Err(e) => (Err(e), 0),
    };
    tracing::info!(elapsed = ?started.elapsed(), rows = source_rows_hashed, "source pass done");
    let (mut target, target_result) = target_pass.await.context("the target checksum task panicked")?;
    tracing::info!(elapsed = ?started.elapsed(), "target pass done");
    let source = source?;
    let (target_sums, target_rows_hashed) = target_result?;

    let mismatched: Vec<usize> = (0..segments).filter(|&i| source_sums[i] != target_sums[i]).collect();
    let drilled: BTreeSet<usize> = mismatched.iter().copied().take(MAX_DRILLED_SEGMENTS).collect();
    let mut missing = Vec::new();
    let mut extra = Vec::new();
    let mut different = Vec::new();
    let (mut explained_missing, mut explained_extra, mut explained_different) = (0, 0, 0);
    let mut explained_keys = Vec::new();
    if !drilled.is_empty() {
        // The mismatching segments, row by row, on both sides.
        let mut expected: BTreeMap<String, TargetRow> = BTreeMap::new();
        scan_source(settings, source, transformer, refused, |row| {
            if drilled.contains(&segment_of(&boundaries, &row.id)) {
                expected.insert(row.id.clone(), canonical_row(row));
            }
        })
        .await?;
        let mut actual: BTreeMap<String, TargetRow> = BTreeMap::new();
        for &segment in &drilled {
            let lower = segment.checked_sub(1).map(|i| boundaries[i].clone());
            let upper = boundaries.get(segment).cloned();
            let mut from = lower.map(|k| (k, true));
            loop {
                let page = target
                    .read_range(from.as_ref().map(|(k, inc)| (k.as_str(), *inc)), upper.as_deref(), segment_rows)
                    .await?;
                let Some(last) = page.last() else { break };
                from = last[0].clone().map(|k| (k, false));
                for row in page {
                    if let Some(key) = row[0].clone() {
                        actual.insert(key, row);
                    }
                }
            }
        }
        for (key, row) in &expected {
            match actual.get(key) {
                None => missing.push(key.clone()),
                Some(found) if found != row => different.extend(diff_fields(key, row, found)),
                Some(_) => {}
            }
        }
        extra.extend(actual.keys().filter(|k| !expected.contains_key(*k)).cloned());
        // Differences a dead letter explains are listed apart.
        let before = (missing.len(), extra.len());
        missing.retain(|k| !explained.contains(k));
        extra.retain(|k| !explained.contains(k));
        explained_missing = before.0 - missing.len();
        explained_extra = before.1 - extra.len();
        different.retain(|d| !explained.contains(&d.key));
        explained_keys.extend(drilled_explained(&expected, &actual, explained));
        explained_different =
            explained_keys.iter().filter(|k| expected.contains_key(*k) && actual.contains_key(*k)).count();
        explained_keys.truncate(MAX_LISTED);
        missing.truncate(MAX_LISTED);
        extra.truncate(MAX_LISTED);
        different.truncate(MAX_LISTED);
    }
    let undrilled = mismatched.len() - drilled.len();
    let unexplained = !missing.is_empty() || !extra.is_empty() || !different.is_empty() || undrilled > 0;
    Ok(ChecksumCheck {
        ok: mismatched.is_empty() || !unexplained,
        explained: explained_keys,
        explained_missing,
        explained_extra,
        explained_different,
        segments,
        mismatched_segments: mismatched.len(),
        source_rows_hashed,
        source_rows_read,
        target_rows_hashed,
        missing,
        extra,
        different,
        undrilled_segments: undrilled,
    })
}

/// The keys of drilled segments that differ and whose difference a dead
/// letter explains.
fn drilled_explained(
    expected: &BTreeMap<String, TargetRow>,
    actual: &BTreeMap<String, TargetRow>,
    explained: &HashSet<String>,
) -> Vec<String> {
    let mut keys: BTreeSet<&String> = BTreeSet::new();
    for (key, row) in expected {
        if explained.contains(key) && actual.get(key) != Some(row) {
            keys.insert(key);
        }
    }
    keys.extend(actual.keys().filter(|k| explained.contains(*k) && !expected.contains_key(*k)));
    keys.into_iter().cloned().collect()
}

/// Reads the whole source in key order (a reader task keeps one batch
/// ahead), transforms it, and hands each transformed row to `each`. Rejected rows are skipped: the counts check accounts for them.
/// Gives the source back.
async fn scan_source(
    settings: &Settings,
    source: Box<dyn SnapshotSource>,
    transformer: &mut Transformer,
    refused: &HashSet<i64>,
    mut each: impl FnMut(NewUser),
) -> anyhow::Result<(Box<dyn SnapshotSource>, u64)> {
    let batch_size = settings.batch_size;
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let reader = tokio::spawn(async move {
        let mut source = source;
        let mut after = None;
        loop {
            match source.read_after(after, batch_size).await {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => {
                    after = batch.last_key;
                    if tx.send(Ok(batch)).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        source
    });
    let mut read = 0u64;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        read += batch.len() as u64;
        for (key, outcome) in transform(transformer, batch.rows)? {
            if let Outcome::Row(row) = outcome
                && !refused.contains(&key)
            {
                each(row);
            }
        }
    }
    Ok((reader.await.context("the source reader task panicked")?, read))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_normalises_like_jsonb() {
        assert_eq!(canonical_json(r#"{"theme": "dark", "a": 1.0, "n": 1e2}"#), r#"{"a":1,"n":100,"theme":"dark"}"#);
        assert_eq!(canonical_json("{\"x\": [1, {\"b\":2,\"a\":1}]}"), r#"{"x":[1,{"a":1,"b":2}]}"#);
    }

    #[test]
    fn row_hash_sees_field_boundaries_and_canonical_json() {
        let a = RowView {
            id: Some("ab"),
            first_name: Some("c"),
            last_name: None,
            email: None,
            created_at: None,
            settings: None,
        };
        let b = RowView { id: Some("a"), first_name: Some("bc"), ..a };
        assert_ne!(row_hash(&a), row_hash(&b));
        let c = RowView { settings: Some(r#"{"b": 1, "a": 2.0}"#), ..a };
        let d = RowView { settings: Some(r#"{"a":2,"b":1}"#), ..a };
        assert_eq!(row_hash(&c), row_hash(&d), "settings compare as canonical JSON");
    }
}
