//! `ferry cutover` and `ferry cutback`: moving the application from one
//! database of a parallel run to the other, gated.
//!
//! A switch to a side happens only when three gates hold, all checked and
//! all reported with their numbers:
//!
//! 1. **lag** — the stream *into* that side has everything the other side
//!    held when the gate was checked, within `max_lag` (its slot confirms
//!    the other side's WAL position of that moment; the server's
//!    `pg_replication_slots` is the measure, not ferry's own counters);
//! 2. **validate** — `ferry validate` of the pipeline is clean (dead
//!    letters that explain a difference are fine);
//! 3. **conflicts** — no conflict of the parallel run is open on either
//!    side (`ferry conflicts --resolve` once they are handled).
//!
//! Then the user's switch hook runs (`[reverse] switch_command` and/or
//! `switch_webhook`:
//! the seed's feature flag `use-new-db`), told which side to use. After it,
//! writes still arriving on the side being left drain through their stream
//! (ferry waits until it has confirmed that side's WAL position as of after
//! the hook), and the owner of the writes changes in both databases: from
//! then on the stream into the new owner yields to its concurrent writes,
//! and the stream out of it applies as it comes. Both streams keep running;
//! they read the owner once a second.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cdc::reverse;
use crate::engines;
use crate::error::Error;
use crate::notify::Event;
use crate::settings::Settings;

/// Which database the application should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Old,
    New,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::New => "new",
        }
    }
}

/// How a switch runs.
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    pub to: Side,
    /// The forward and reverse streams' slots and publications.
    pub forward_slot: String,
    pub forward_publication: String,
    pub reverse_slot: String,
    /// Check the gates and say what would happen; switch nothing.
    pub dry_run: bool,
}

impl SwitchOptions {
    /// The switch to `to` of `settings`' parallel run, with its streams'
    /// slots and publication as configured (or their default names).
    pub fn of(settings: &Settings, to: Side, dry_run: bool) -> SwitchOptions {
        use crate::cdc::sync::default_slot_name;
        let reverse_name = reverse::pipeline(&settings.pipeline);
        let reverse = settings.reverse.clone().unwrap_or_default();
        SwitchOptions {
            to,
            forward_slot: default_slot_name(&settings.pipeline),
            forward_publication: default_slot_name(&settings.pipeline),
            reverse_slot: reverse.slot.unwrap_or_else(|| default_slot_name(&reverse_name)),
            dry_run,
        }
    }
}

/// One gate.
#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub name: &'static str,
    pub ok: bool,
    /// What was measured, and what to do when it failed.
    pub detail: String,
}

/// What `ferry cutover`/`ferry cutback` reports.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchReport {
    pub pipeline: String,
    pub to: Side,
    /// Every gate held and (unless a dry run) the switch happened.
    pub switched: bool,
    pub dry_run: bool,
    pub gates: Vec<Gate>,
    /// Seconds the side being left took to drain after the hook.
    pub drained_seconds: Option<f64>,
    /// Set when the side being left had not drained within the limit.
    pub drain_warning: Option<String>,
}

/// Checks the gates and, when they hold, switches the application to
/// `options.to`.
pub async fn switch(settings: &Settings, options: &SwitchOptions) -> anyhow::Result<SwitchReport> {
    let Some(cutover) = settings.reverse.as_ref() else {
        return Err(crate::config::ConfigError::Invalid {
            path: "ferry.toml".into(),
            message: "ferry cutover/cutback move the application between the two databases of a parallel run; add \
                      [reverse] and run `ferry sync` and `ferry sync --reverse` first"
                .into(),
        }
        .into());
    };
    // The stream into the side switched to, and the side it reads.
    let (into_source, into_slot, leaving) = match options.to {
        Side::New => (&settings.source.url, &options.forward_slot, "old"),
        Side::Old => (&settings.target.url, &options.reverse_slot, "new"),
    };
    let mut gates = Vec::new();
    gates.push(lag_gate(into_source, into_slot, leaving, cutover.max_lag).await?);
    gates.push(validate_gate(settings).await);
    let (back, mut old) = reverse::old_side(settings).await?;
    let mut new = engines::open_row_target(settings).await?;
    let open = new.conflicts(&settings.pipeline, true).await?.len() + old.conflicts(&back.pipeline, true).await?.len();
    gates.push(Gate {
        name: "conflicts",
        ok: open == 0,
        detail: if open == 0 {
            "no open conflict on either side".into()
        } else {
            format!(
                "{open} open conflicts (rows written on both sides at once): review them with `ferry conflicts`, \
                 fix what needs fixing, then `ferry conflicts --resolve`"
            )
        },
    });
    if cutover.detect_conflicts && options.to == Side::New {
        // Once the new side owns the writes, the forward stream's changes
        // yield to it: the new database must record commit times.
        let mut target = engines::open_replication_source(&settings.target.url).await?;
        let on = target.tracks_commit_timestamps().await?;
        gates.push(Gate {
            name: "commit timestamps",
            ok: on,
            detail: if on {
                "the new database records commit times (conflicts after the cutover are detected)".into()
            } else {
                format!(
                    "{} has track_commit_timestamp = off: after the cutover the forward stream could not tell a \
                     concurrent write; ALTER SYSTEM SET track_commit_timestamp = on and restart it",
                    settings.target.url
                )
            },
        });
    }
    let mut report = SwitchReport {
        pipeline: settings.pipeline.clone(),
        to: options.to,
        switched: false,
        dry_run: options.dry_run,
        gates,
        drained_seconds: None,
        drain_warning: None,
    };
    if options.dry_run || report.gates.iter().any(|g| !g.ok) {
        return Ok(report);
    }

    // The application moves.
    run_switch_hook(settings, options.to).await?;

    // What it wrote on the side it left before moving drains through its
    // stream; then the owner of the writes changes in both databases.
    let (left_url, left_slot) = match options.to {
        Side::New => (&settings.source.url, &options.forward_slot),
        Side::Old => (&settings.target.url, &options.reverse_slot),
    };
    let mut left = engines::open_replication_source(left_url).await?;
    let wal = left.wal_position().await?;
    let started = Instant::now();
    match crate::replication::drained(left.as_mut(), left_slot, wal, cutover.drain_timeout).await? {
        Ok(()) => report.drained_seconds = Some(started.elapsed().as_secs_f64()),
        Err(behind) => {
            let warning = format!(
                "the {} side had not drained within {:?} ({behind}); its remaining changes yield to the {} side's \
                 concurrent writes (recorded as conflicts)",
                if options.to == Side::New { "old" } else { "new" },
                cutover.drain_timeout,
                options.to.as_str()
            );
            tracing::warn!("{warning}");
            report.drain_warning = Some(warning);
        }
    }
    match options.to {
        Side::New => {
            // The forward stream now yields: it reads the reverse stream's
            // checkpoints, from where the reverse stream stands now.
            if cutover.detect_conflicts {
                let mut source = engines::open_replication_source(&settings.source.url).await?;
                source.publish(&options.forward_publication, &crate::cdc::tables::checkpoints_table()).await?;
            }
            let seen = old.stream_status(&back.pipeline).await?.and_then(|s| s.source_commit_micros);
            new.set_parallel_owner(&settings.pipeline, "new", seen).await?;
            old.set_parallel_owner(&back.pipeline, "new", None).await?;
        }
        Side::Old => {
            let seen = new.stream_status(&settings.pipeline).await?.and_then(|s| s.source_commit_micros);
            old.set_parallel_owner(&back.pipeline, "old", seen).await?;
            new.set_parallel_owner(&settings.pipeline, "old", None).await?;
        }
    }
    report.switched = true;
    Ok(report)
}

/// The lag gate: does the stream reading `source` through `slot` confirm
/// `source`'s current WAL position within `limit`?
async fn lag_gate(source: &crate::db::DbUrl, slot: &str, side: &str, limit: Duration) -> anyhow::Result<Gate> {
    let mut replication = engines::open_replication_source(source).await?;
    let active = replication.slots(Some(slot)).await?.first().map(|s| s.active);
    let Some(true) = active else {
        return Ok(Gate {
            name: "lag",
            ok: false,
            detail: match active {
                None => format!("the stream from the {side} side (slot {slot}) was never started"),
                _ => format!("the stream from the {side} side (slot {slot}) is not running: start it"),
            },
        });
    };
    let wal = replication.wal_position().await?;
    let started = Instant::now();
    // The stream acknowledges on a one-second tick: that long is allowed
    // on top of the limit.
    let waited = limit + crate::postgres::replication::FEEDBACK_INTERVAL * 2;
    Ok(match crate::replication::drained(replication.as_mut(), slot, wal, waited).await? {
        Ok(()) => Gate {
            name: "lag",
            ok: true,
            detail: format!(
                "the stream from the {side} side applied everything written there within {:.2} s",
                started.elapsed().as_secs_f64()
            ),
        },
        Err(behind) => Gate {
            name: "lag",
            ok: false,
            detail: format!(
                "the stream from the {side} side is behind by more than {limit:?} ({behind}); wait for it to catch \
                 up, or slow the writes"
            ),
        },
    })
}

/// The validate gate: a clean `ferry validate`.
async fn validate_gate(settings: &Settings) -> Gate {
    match crate::tables::validate::validate(settings, &settings.tables, None).await {
        Ok(v) if v.ok => Gate {
            name: "validate",
            ok: true,
            detail: format!("every row matches ({} tables, {:.1} s)", v.tables.len(), v.elapsed_seconds),
        },
        Ok(v) => {
            let off: Vec<String> = v
                .tables
                .iter()
                .filter(|t| !t.ok)
                .map(|t| format!("{}: {} missing, {} extra, {} different", t.table, t.missing, t.extra, t.different))
                .collect();
            Gate {
                name: "validate",
                ok: false,
                detail: format!("the databases differ ({}); `ferry validate` shows the rows", off.join("; ")),
            }
        }
        Err(e) => Gate { name: "validate", ok: false, detail: format!("validate failed: {e:#}") },
    }
}

/// Runs `[reverse] switch_command` and/or `switch_webhook`, telling the
/// application to use `to`; a failure stops the switch there.
async fn run_switch_hook(settings: &Settings, to: Side) -> anyhow::Result<()> {
    let cutover = settings.reverse.as_ref().expect("checked by the caller");
    let body = serde_json::json!({
        "event": "switch",
        "pipeline": settings.pipeline,
        "to": to.as_str(),
        "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
    .to_string();
    if let Some(command) = &cutover.switch_command {
        crate::notify::hook(
            command,
            Event::Switch,
            &settings.pipeline,
            &[("FERRY_SWITCH_TO", to.as_str())],
            body.as_bytes(),
        )
        .await
        .map_err(|e| {
            Error::raise(crate::error::ErrorKind::Fatal, format!("the switch hook failed: {e}; nothing was switched"))
        })?;
    }
    if let Some(url) = &cutover.switch_webhook {
        let ran = if cutover.switch_command.is_some() { " (the switch command ran)" } else { "" };
        crate::notify::webhook(url, body.as_bytes()).await.map_err(|e| {
            Error::raise(
                crate::error::ErrorKind::Fatal,
                format!("the switch webhook failed: {e}; the owner of the writes did not change{ran}"),
            )
        })?;
    }
    Ok(())
}

/// What `ferry conflicts` reports: the parallel run's conflicts on both
/// sides (in the new database: the forward stream's; in the old one: the
/// reverse stream's).
#[derive(Debug, Clone, Serialize)]
pub struct ConflictsReport {
    pub pipeline: String,
    pub conflicts: Vec<crate::sink::ConflictRecord>,
    /// How many `--resolve` marked resolved.
    pub resolved: u64,
}

/// Lists the parallel run's conflicts (open ones unless `all`), after
/// marking them resolved when asked.
pub async fn conflicts(settings: &Settings, resolve: bool, all: bool) -> anyhow::Result<ConflictsReport> {
    // The old side first: without [reverse] that is the configuration error.
    let (back, mut old) = reverse::old_side(settings).await?;
    let mut new = engines::open_row_target(settings).await?;
    let mut report = ConflictsReport { pipeline: settings.pipeline.clone(), conflicts: Vec::new(), resolved: 0 };
    if resolve {
        report.resolved =
            new.resolve_conflicts(&settings.pipeline).await? + old.resolve_conflicts(&back.pipeline).await?;
    }
    report.conflicts.extend(new.conflicts(&settings.pipeline, !all).await?);
    report.conflicts.extend(old.conflicts(&back.pipeline, !all).await?);
    Ok(report)
}
