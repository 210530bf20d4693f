//! Applying a change stream through the plugin, exactly once.
//!
//! Input items are decoded ([`super::debezium`]), given an effective
//! position, skipped if the target's checkpoint is already past them,
//! transformed (upserts through `transform-batch`, deletes through
//! `user-key`), and applied with the new checkpoint in one target
//! transaction per source transaction (or group of them).
//!
//! Dedup rules: a positioned item is applied only if its position is after
//! the stored one. Snapshot reads carry no usable position (they share the
//! snapshot's LSN); they are applied while the checkpoint says the stream
//! has not started (replaying them is idempotent: they are upserts of one
//! consistent snapshot) and skipped once any streamed change was applied.

use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::debezium::{self, ChangeOp, Decoded, IntegerTime};
use super::input::{EventInput, Next};
use super::position::Position;
pub use crate::changes::{
    ChangeBatch, ChangeCheckpoint, ChangeDeadLetter, ChangeSink, ChangeStatus, OpOrigin, Refused, StaleMark, StaleRow,
    TargetOp, dedup_key_of,
};
use crate::config::OnReject;
use crate::engines;
use crate::model::{DeadLetterKind, LegacyUser, Outcome};
use crate::plugin::{KeyOutcome, Plugin, Transformer};
use crate::settings::Settings;

/// What `ferry apply` reports.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub pipeline: String,
    pub lines: u64,
    pub tombstones: u64,
    /// Items already applied before (positions at or before the checkpoint).
    pub skipped_replayed: u64,
    pub upserts: u64,
    pub deletes: u64,
    pub truncates: u64,
    pub dead_lettered: u64,
    pub transactions: u64,
    /// Upserts completed by reading the row from the source (`--reread`).
    pub toast_rereads: u64,
    pub checkpoint: ChangeCheckpoint,
    /// Set when the plugin returned `fatal`: nothing after the last commit
    /// was applied.
    pub fatal: Option<String>,
    /// Plugin versions (SHA-256) this run switched to, in order
    /// (`ferry plugin deploy`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub plugin_switches: Vec<String>,
}

/// How to apply.
#[derive(Debug, Clone, Copy)]
pub struct ApplyOptions {
    /// Changes grouped into one target transaction, at most (whole source
    /// transactions are never split).
    pub group_size: usize,
    /// Unit of integer timestamps in events without a schema.
    pub integer_time: IntegerTime,
    /// Complete events lacking unchanged TOASTed values from the source.
    pub reread: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { group_size: 2000, integer_time: IntegerTime::Micros, reread: false }
    }
}

/// One decoded input item on its way to the target.
pub(crate) struct Pending {
    /// The item as received (kept in its dead letter).
    pub raw: String,
    /// Effective position (`None`: snapshot item).
    pub position: Option<Position>,
    pub item: Item,
}

pub(crate) enum Item {
    Op(ChangeOp),
    Reject { key: Option<i64>, reason: String },
}

/// Reads Debezium events from `input` and applies them until the input
/// ends, the plugin returns `fatal`, or `stop` is set (SIGINT/SIGTERM): what
/// is pending is then committed and acknowledged first.
pub async fn apply_debezium(
    settings: &Settings,
    input: &mut dyn EventInput,
    options: ApplyOptions,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ApplyReport> {
    let path = settings.plugin()?.path.clone();
    let load = settings.plugin()?.options.clone();
    let plugin: std::sync::Arc<Plugin> = tokio::task::spawn_blocking(move || Plugin::load(&path, &load)).await??;
    let mut transformer = plugin.instantiate()?;
    let mut target = engines::open_change_target(settings).await?;
    crate::migrate::prepare_target(settings, target.as_mut()).await?;
    target.ensure_change_tables().await?;
    let mut checkpoint = target.change_checkpoint(&settings.pipeline).await?;
    let mut report = ApplyReport { pipeline: settings.pipeline.clone(), ..Default::default() };

    let mut pending: Vec<Pending> = Vec::new();
    let mut current_tx: Option<i64> = None;
    // Tokens: of the last item in `pending`, and of the last item seen.
    let mut group_last: Option<u64> = None;
    let mut last_seen: Option<u64> = None;
    // Carry-forward for items without a position of their own.
    let mut positions = debezium::Positions::after(checkpoint.position);
    let mut reread = super::reread::Reread::default();
    macro_rules! flush_and_ack {
        () => {
            if !flush(settings, &mut transformer, target.as_mut(), &mut pending, &mut checkpoint, &mut report, None)
                .await?
            {
                return Ok(report);
            }
            if let Some(token) = group_last.take() {
                input.commit(token).await?;
            }
        };
    }
    while !stop.load(Ordering::Relaxed) {
        let (line, token) = match input.next().await? {
            Next::End => break,
            Next::Idle => {
                flush_and_ack!();
                continue;
            }
            Next::Item(line, token) => (line, token),
        };
        report.lines += 1;
        last_seen = Some(token);
        let decoded =
            if line.trim().is_empty() { Decoded::Tombstone } else { debezium::decode(&line, options.integer_time) };
        // `Err(key)`: an upsert to complete from the source (after the replay check).
        let (position, snapshot, tx, item) = match decoded {
            Decoded::Tombstone => {
                report.tombstones += 1;
                if pending.is_empty() {
                    input.commit(token).await?;
                }
                continue;
            }
            Decoded::Event(e) => (e.position, e.snapshot, e.tx_id, Ok(Item::Op(e.op))),
            Decoded::Unavailable { position, snapshot, tx_id, key, .. } if options.reread => {
                (position, snapshot, tx_id, Err(key))
            }
            Decoded::Unavailable { position, snapshot, key, column, .. } => {
                let reason = format!(
                    "column `{column}` is {} (an unchanged TOASTed value the event does not carry); \
                     pass --reread to read such rows from source.url, or set REPLICA IDENTITY FULL on the \
                     source table, then replay",
                    debezium::UNAVAILABLE
                );
                (position, snapshot, None, Ok(Item::Reject { key: Some(key), reason }))
            }
            Decoded::Rejected { position, snapshot, key, reason } => {
                (position, snapshot, None, Ok(Item::Reject { key, reason }))
            }
        };
        let position = positions.effective(position, snapshot);
        let replayed = debezium::replayed(position, checkpoint.position, checkpoint.streaming);
        if replayed {
            report.skipped_replayed += 1;
            if pending.is_empty() {
                input.commit(token).await?;
            }
            continue;
        }
        // Flush at source-transaction boundaries once the group is full.
        if pending.len() >= options.group_size && (tx.is_none() || tx != current_tx) {
            flush_and_ack!();
        }
        current_tx = tx;
        let item = match item {
            Ok(item) => item,
            Err(key) => match reread.current(settings, key, tx.map(|x| x as u32)).await? {
                Some(item) => {
                    report.toast_rereads += 1;
                    item
                }
                // Deleted since: its delete follows in the stream.
                None => continue,
            },
        };
        pending.push(Pending { raw: line, position, item });
        group_last = Some(token);
    }
    flush_and_ack!();
    if let Some(token) = last_seen {
        input.commit(token).await?;
    }
    report.checkpoint = checkpoint;
    Ok(report)
}

/// Transforms and applies the pending items. Returns `false` when the plugin
/// asked to stop (nothing of this group is applied).
pub(crate) async fn flush(
    settings: &Settings,
    transformer: &mut Transformer,
    target: &mut dyn engines::ChangeTarget,
    pending: &mut Vec<Pending>,
    checkpoint: &mut ChangeCheckpoint,
    report: &mut ApplyReport,
    source_commit_micros: Option<i64>,
) -> anyhow::Result<bool> {
    if pending.is_empty() {
        return Ok(true);
    }
    let items = std::mem::take(pending);
    // Upserts go through the plugin in one batch call.
    let rows: Vec<LegacyUser> = items
        .iter()
        .filter_map(|p| match &p.item {
            Item::Op(ChangeOp::Upsert(row)) => Some(row.clone()),
            _ => None,
        })
        .collect();
    let (_, outcomes) = tokio::task::block_in_place(|| transformer.transform_batch(rows))?;
    let mut outcomes = outcomes.into_iter();
    let mut batch = ChangeBatch {
        pipeline: settings.pipeline.clone(),
        previous: *checkpoint,
        next: *checkpoint,
        plugin_sha256: transformer.plugin().sha256().to_string(),
        source_commit_micros,
        ..Default::default()
    };
    let mut counts = (0u64, 0u64, 0u64);
    // The newest state of each source key in this group: stale or fresh.
    let mut marks: HashMap<i64, Option<StaleMark>> = HashMap::new();
    for p in items {
        let dead = |key: Option<i64>, kind: DeadLetterKind, reason: String| ChangeDeadLetter {
            dedup_key: dedup_key(&p),
            source_key: key,
            event: p.raw.clone(),
            kind,
            reason,
        };
        let outcome = match &p.item {
            Item::Reject { key, reason } => Planned::Dead(dead(*key, DeadLetterKind::Extract, reason.clone())),
            Item::Op(ChangeOp::Upsert(row)) => match outcomes.next().expect("one outcome per upsert") {
                Outcome::Row(new) => {
                    marks.insert(row.id, None);
                    Planned::Op(TargetOp::Upsert(new))
                }
                Outcome::Rejected(reason) => {
                    let mark = stale_mark(transformer, settings.on_reject, row.id, dedup_key(&p))?;
                    let delete = mark.target_key.clone().filter(|_| mark.action == "deleted");
                    marks.insert(row.id, Some(mark));
                    batch.dead.push(dead(
                        Some(row.id),
                        DeadLetterKind::Reject,
                        format!("plugin rejected the row: {reason}"),
                    ));
                    match delete {
                        Some(key) => Planned::Op(TargetOp::Delete(key)),
                        None => Planned::Nothing,
                    }
                }
                Outcome::Trapped(reason) => {
                    let mark = stale_mark(transformer, settings.on_reject, row.id, dedup_key(&p))?;
                    let delete = mark.target_key.clone().filter(|_| mark.action == "deleted");
                    marks.insert(row.id, Some(mark));
                    batch.dead.push(dead(Some(row.id), DeadLetterKind::Trap, reason));
                    match delete {
                        Some(key) => Planned::Op(TargetOp::Delete(key)),
                        None => Planned::Nothing,
                    }
                }
                Outcome::Fatal(reason) => Planned::Fatal(format!("plugin fatal on source row {}: {reason}", row.id)),
            },
            Item::Op(ChangeOp::Delete { id, before }) => match delete_key(transformer, *id, before.as_ref())? {
                Ok(key) => {
                    marks.insert(*id, None);
                    Planned::Op(TargetOp::Delete(key))
                }
                Err(Stop::Dead(reason)) => Planned::Dead(dead(Some(*id), DeadLetterKind::Reject, reason)),
                Err(Stop::Fatal(reason)) => Planned::Fatal(reason),
            },
            Item::Op(ChangeOp::Truncate) => {
                marks.clear();
                batch.clear_stale = true;
                Planned::Op(TargetOp::Truncate)
            }
        };
        match outcome {
            Planned::Op(op) => {
                let source_key = match &p.item {
                    Item::Op(ChangeOp::Upsert(row)) => Some(row.id),
                    Item::Op(ChangeOp::Delete { id, .. }) => Some(*id),
                    _ => None,
                };
                match &op {
                    TargetOp::Upsert(_) => counts.0 += 1,
                    TargetOp::Delete(_) => counts.1 += 1,
                    TargetOp::Truncate => counts.2 += 1,
                }
                batch.ops.push(op);
                batch.origins.push(OpOrigin { position: p.position, source_key, event: p.raw });
            }
            Planned::Dead(d) => batch.dead.push(d),
            Planned::Nothing => {}
            Planned::Fatal(reason) => {
                report.fatal = Some(reason);
                report.checkpoint = *checkpoint;
                return Ok(false);
            }
        }
        if let Some(pos) = p.position {
            batch.next.position = Some(batch.next.position.map_or(pos, |c| c.max(pos)));
            batch.next.streaming = true;
        }
    }
    for (source_key, mark) in marks {
        match mark {
            Some(mark) => batch.stale.push(mark),
            None => batch.fresh.push(source_key),
        }
    }
    let refused = target.apply_changes(&batch).await?;
    *checkpoint = batch.next;
    counts.0 -= refused.upserts;
    counts.1 -= refused.deletes;
    let refused = refused.upserts + refused.deletes;
    use crate::daemon::names;
    metrics::counter!(names::CHANGES_APPLIED, "op" => "upsert").increment(counts.0);
    metrics::counter!(names::CHANGES_APPLIED, "op" => "delete").increment(counts.1);
    metrics::counter!(names::CHANGES_APPLIED, "op" => "truncate").increment(counts.2);
    metrics::counter!(names::DEAD_LETTERS).increment(batch.dead.len() as u64 + refused);
    metrics::counter!(names::TRANSACTIONS).increment(1);
    crate::daemon::health().beat("streaming");
    report.upserts += counts.0;
    report.deletes += counts.1;
    report.truncates += counts.2;
    report.dead_lettered += batch.dead.len() as u64 + refused;
    report.transactions += 1;
    Ok(true)
}

/// What one input item becomes.
enum Planned {
    /// Nothing to write (a rejected version whose row is kept).
    Nothing,
    Op(TargetOp),
    Dead(ChangeDeadLetter),
    Fatal(String),
}

enum Stop {
    Dead(String),
    Fatal(String),
}

/// The target key of a deleted row: `user-key` when the plugin has it, else
/// the transform of the full before-image when the event carries one.
fn delete_key(
    transformer: &mut Transformer,
    id: i64,
    before: Option<&LegacyUser>,
) -> anyhow::Result<Result<String, Stop>> {
    if let Some(outcome) = tokio::task::block_in_place(|| transformer.target_key(id))? {
        return Ok(match outcome {
            KeyOutcome::Key(key) => Ok(key),
            KeyOutcome::Rejected(reason) | KeyOutcome::Trapped(reason) => Err(Stop::Dead(reason)),
            KeyOutcome::Fatal(reason) => {
                Err(Stop::Fatal(format!("plugin fatal on the key of source row {id}: {reason}")))
            }
        });
    }
    let Some(before) = before else {
        return Ok(Err(Stop::Dead(
            "delete carries only the key and the plugin does not export user-key (target-key); \
             export it, or set REPLICA IDENTITY FULL on the source table"
                .into(),
        )));
    };
    Ok(match tokio::task::block_in_place(|| transformer.transform_one(before))? {
        Outcome::Row(row) => Ok(row.id),
        Outcome::Rejected(reason) | Outcome::Trapped(reason) => Err(Stop::Dead(reason)),
        Outcome::Fatal(reason) => Err(Stop::Fatal(reason)),
    })
}

/// The stale mark of a source row whose newest version the plugin rejected,
/// under the pipeline's `on_reject` policy: `deleted` needs the target key
/// (the plugin's `user-key`), else the row can only be kept.
fn stale_mark(
    transformer: &mut Transformer,
    policy: OnReject,
    id: i64,
    dead_letter: String,
) -> anyhow::Result<StaleMark> {
    let target_key = delete_key(transformer, id, None)?.ok();
    let action = match (policy, &target_key) {
        (OnReject::Delete, Some(_)) => "deleted",
        _ => "kept",
    };
    Ok(StaleMark { source_key: id, target_key, dead_letter, action })
}

fn dedup_key(p: &Pending) -> String {
    dedup_key_of(p.position, &p.raw)
}
