//! The parallel run: `ferry sync --reverse` streams the changes made in the
//! **new** database back into the old one while the application moves
//! over, through each plugin's inverse.
//!
//! The reverse stream is the forward pipeline turned around: its source is
//! the forward target, its target the forward source, its pipeline
//! `<name>.reverse` (its checkpoint and dead letters live in the old
//! database's `ferry` schema, beside the data they describe, like any
//! target's). Each forward table goes back as follows:
//!
//! - a copied table: as it is, from its target table into itself;
//! - a table with a plugin: from the plugin's one output table through the
//!   table's `inverse` (a `transform-row` component that writes the source
//!   table's rows);
//! - a plugin with several output tables, or without an inverse, cannot be
//!   streamed back: refused, naming the tables.
//!
//! The reverse stream never loads: the old side holds every row, and its
//! stream starts where its slot is created. It is refused until the
//! forward initial load has completed — started earlier, it would send the
//! load itself back.
//!
//! Loop prevention ([`super::sync::Origins`]): each direction's apply
//! connection marks its transactions with its own replication origin, and
//! each direction drops, from what it reads, the transactions of the other
//! direction's origin (pgoutput sends the origin after `Begin`). A change
//! therefore crosses once in each direction and is never echoed.

use super::sync::{Origins, SyncOptions, Watch};
use crate::control::RunStatus;
use crate::db::Engine;
use crate::engines;
use crate::error::Error;
use crate::settings::{Settings, TableSelection, TableSpec};

/// The reverse pipeline's name.
pub fn pipeline(forward: &str) -> String {
    format!("{forward}.reverse")
}

/// The forward stream's replication origins: none outside a parallel run.
pub fn forward_origins(settings: &Settings) -> Option<Origins> {
    settings.reverse.as_ref().map(|r| Origins {
        own: Origins::of(&settings.pipeline),
        skip: Origins::of(&pipeline(&settings.pipeline)),
        opposite: pipeline(&settings.pipeline),
        side: "new",
        detect: r.detect_conflicts,
    })
}

/// The old database's side of a parallel run, as the reverse stream sees
/// it (`<name>.reverse`, its target the old database), opened: where its
/// position, conflicts and owner record live.
pub async fn old_side(settings: &Settings) -> anyhow::Result<(Settings, Box<dyn engines::RowTarget>)> {
    let (back, _) = endpoints(settings, |n| n.to_string(), None)?;
    let old = engines::open_row_target(&back).await?;
    Ok((back, old))
}

/// The reverse stream's endpoints and options (tables not resolved yet:
/// enough to tear it down). `slot_name` makes a default slot name.
pub fn endpoints(
    settings: &Settings,
    slot_name: impl Fn(&str) -> String,
    idle_exit: Option<std::time::Duration>,
) -> anyhow::Result<(Settings, SyncOptions)> {
    let Some(reverse) = &settings.reverse else {
        return Err(crate::config::ConfigError::Invalid {
            path: "ferry.toml".into(),
            message: "ferry sync --reverse streams the new database back into the old one during a parallel run; \
                      add a [reverse] section (and an `inverse` to each table with a plugin), then run `ferry sync` \
                      and `ferry sync --reverse` side by side"
                .into(),
        }
        .into());
    };
    for (url, side) in [(&settings.source.url, "source (the old database)"), (&settings.target.url, "target")] {
        if url.engine() != Engine::Postgres {
            return Err(Error::contract(format!(
                "a parallel run streams both ways with PostgreSQL logical replication; the {side} {url} is not \
                 PostgreSQL"
            )));
        }
    }
    let name = pipeline(&settings.pipeline);
    let back = Settings {
        pipeline: name.clone(),
        source: settings.target.clone(),
        target: settings.source.clone(),
        tables: TableSelection::default(),
        ..settings.clone()
    };
    let options = SyncOptions {
        slot: reverse.slot.clone().unwrap_or_else(|| slot_name(&name)),
        publication: reverse.publication.clone().unwrap_or_else(|| slot_name(&name)),
        chunk_rows: None,
        idle_exit,
        initial_load: false,
        origins: Some(Origins {
            own: Origins::of(&name),
            skip: Origins::of(&settings.pipeline),
            opposite: settings.pipeline.clone(),
            side: "old",
            detect: reverse.detect_conflicts,
        }),
        // Set once the forward stream's progress is known (`tables`).
        watch: None,
    };
    Ok((back, options))
}

/// The reverse pipeline's tables, from the forward plan: each forward
/// target table back into its source table; and, unless turned off, its
/// conflict detection (the old database owns the writes until cutover, so
/// the reverse stream's changes yield to the old application's concurrent
/// ones). Refused while the forward initial load has not completed, if a
/// table cannot go back, or if the old database cannot tell when its rows
/// were written (`track_commit_timestamp`).
pub async fn tables(forward: &Settings) -> anyhow::Result<(TableSelection, Option<Watch>)> {
    let detect = forward.reverse.as_ref().is_none_or(|r| r.detect_conflicts);
    if detect {
        let mut old = engines::open_replication_source(&forward.source.url).await?;
        if !old.tracks_commit_timestamps().await? {
            return Err(Error::contract(format!(
                "{} does not record when its rows were written (track_commit_timestamp = off), so the reverse \
                 stream cannot tell a concurrent write from an old one: ALTER SYSTEM SET track_commit_timestamp = on \
                 and restart it (on both databases, for after the cutover), or set [reverse] detect_conflicts = false \
                 to let the new side's changes overwrite concurrent ones on the old side",
                forward.source.url
            )));
        }
    } else {
        tracing::warn!(
            "[reverse] detect_conflicts = false: a row written on both sides at once takes the version applied last"
        );
    }
    let mut source = engines::open_row_source(&forward.source.url, "source").await?;
    let mut target = engines::open_row_target(forward).await?;
    let loaded = target.latest_run(&forward.pipeline).await?.is_some_and(|r| r.status == RunStatus::Completed);
    if !loaded {
        return Err(Error::contract(format!(
            "the forward stream of pipeline {} has not completed its initial load into {}: start `ferry sync` and \
             let it load first (a reverse stream started earlier would send the load itself back)",
            forward.pipeline, forward.target.url
        )));
    }
    let plan = crate::tables::plan(forward, &forward.tables, source.as_mut(), target.as_mut()).await?;
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for table in &plan.tables {
        let spec = forward.tables.spec(&table.source.name);
        let inverse = spec.and_then(|s| s.inverse.clone());
        let from = match (&table.plugin, table.outputs.as_slice(), &inverse) {
            (None, [out], _) => out.def.name.clone(),
            (Some(_), [out], Some(_)) => out.def.name.clone(),
            (Some(_), [_], None) => {
                problems.push(format!(
                    "table {} has a plugin and no inverse: give it one ([[tables]] inverse = \"….wasm\", or [plugin] \
                     inverse), or leave the table out of the parallel run",
                    table.source.name
                ));
                continue;
            }
            (_, outputs, _) => {
                problems.push(format!(
                    "table {} becomes {} tables ({}); an inverse reads one table, so it cannot stream back: leave \
                     it out of the parallel run",
                    table.source.name,
                    outputs.len(),
                    table.target_names()
                ));
                continue;
            }
        };
        specs.push(TableSpec {
            source: from,
            target: Some(table.source.name.clone()),
            key: None,
            keyless: crate::config::Keyless::Refuse,
            on_conflict: None,
            plugin: inverse,
            inverse: None,
        });
    }
    if !problems.is_empty() {
        return Err(Error::contract(format!(
            "the pipeline cannot stream back into {}:\n  - {}",
            forward.source.url,
            problems.join("\n  - ")
        )));
    }
    // What the forward stream had applied of the old database: changes
    // made on the new side from here on had seen that much. Before its
    // first change, everything the old side holds is in its initial load.
    let watch = match detect {
        false => None,
        true => {
            let status = target.stream_status(&forward.pipeline).await?;
            let seen_until =
                status.and_then(|s| s.source_commit_micros).unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
            Some(Watch { pipeline: forward.pipeline.clone(), seen_until })
        }
    };
    Ok((TableSelection { tables: specs, ..Default::default() }, watch))
}
