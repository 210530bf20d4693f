//! Human output: summary tables on stdout (JSON with `--json`).

use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};

use crate::check::{CheckReport, Level};
use crate::control::DeadLetterRecord;
use crate::migrate::Ending;

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(Cell::new));
    t
}

pub fn check(r: &CheckReport) -> String {
    let mut t = table(&["check", "result", "detail"]);
    for item in &r.items {
        let level = match item.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        t.add_row(vec![Cell::new(&item.name), Cell::new(level), Cell::new(&item.detail)]);
    }
    format!("{t}\n{}", if r.ok { "ready to migrate" } else { "not ready: fix the failing checks" })
}

pub fn apply(r: &crate::cdc::apply::ApplyReport) -> String {
    let mut t = table(&["apply", ""]);
    let position = r.checkpoint.position.map_or("none (snapshot only)".to_string(), |p| p.to_string());
    for (k, v) in [
        ("pipeline", r.pipeline.clone()),
        ("lines read", r.lines.to_string()),
        ("already applied (skipped)", r.skipped_replayed.to_string()),
        ("of excluded tables (skipped)", r.skipped_excluded.to_string()),
        ("tombstones", r.tombstones.to_string()),
        ("upserts", r.upserts.to_string()),
        ("deletes", r.deletes.to_string()),
        ("truncates", r.truncates.to_string()),
        ("dead letters", r.dead_lettered.to_string()),
        ("rows read back (unchanged TOAST)", r.toast_rereads.to_string()),
        ("target transactions", r.transactions.to_string()),
        ("checkpoint", position),
    ] {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    match (&r.fatal, &r.paused) {
        (Some(reason), _) => format!("{t}\nstopped: {reason}"),
        (None, Some(reason)) => format!("{t}\npaused: {reason}"),
        (None, None) => t.to_string(),
    }
}

pub fn status(r: &crate::status::StatusReport) -> String {
    let mut t = table(&["status", ""]);
    t.add_row(vec![Cell::new("pipeline"), Cell::new(&r.pipeline)]);
    t.add_row(vec![Cell::new("phase"), Cell::new(&r.phase)]);
    if let Some(run) = &r.migrate {
        let s = run.stats;
        t.add_row(vec![
            Cell::new("last migrate run"),
            Cell::new(format!(
                "{} {}: {} extracted, {} loaded, {} dead letters, checkpoint key {:?}",
                run.run_id,
                run.status.as_str(),
                s.extracted,
                s.loaded,
                s.dead_lettered,
                run.last_key
            )),
        ]);
    }
    for p in &r.tables {
        t.add_row(vec![
            Cell::new(format!("table {}", p.table)),
            Cell::new(format!(
                "{}: {} extracted, {} loaded, {} skipped, {} dead letters{}",
                p.phase.as_str(),
                p.stats.extracted,
                p.stats.loaded,
                p.stats.skipped,
                p.stats.dead_lettered,
                p.last_key.as_ref().map_or(String::new(), |k| format!(", checkpoint key {k}"))
            )),
        ]);
    }
    for v in &r.versions {
        let keys = match (&v.replay, &v.after_key) {
            (true, _) => format!("keys {} (replay or reprocess)", v.last_key),
            (false, None) => format!("keys up to {}", v.last_key),
            (false, Some(after)) => format!("keys after {after} up to {}", v.last_key),
        };
        t.add_row(vec![
            Cell::new(format!("version of {}", v.table)),
            Cell::new(format!(
                "plugin {}: {keys} ({} batches, {} rows)",
                v.plugin_sha256.chars().take(12).collect::<String>(),
                v.batches,
                v.rows
            )),
        ]);
    }
    if let Some(p) = &r.parallel {
        t.add_row(vec![Cell::new("parallel run"), Cell::new(format!("the {} database owns the writes", p.owner))]);
        let reverse = match &p.reverse {
            Some(s) => format!(
                "position {}, {} changes applied, {} dead letters, last commit {:.1} s ago",
                s.checkpoint.position.map_or("none".to_string(), |p| p.to_string()),
                s.applied,
                s.dead_lettered,
                s.seconds_since_update
            ),
            None => "not started (ferry sync --reverse)".to_string(),
        };
        t.add_row(vec![Cell::new("reverse stream"), Cell::new(reverse)]);
        t.add_row(vec![Cell::new("open conflicts"), Cell::new(p.open_conflicts.to_string())]);
    }
    if let Some(s) = &r.stream {
        let position = s.checkpoint.position.map_or("none".to_string(), |p| p.to_string());
        t.add_row(vec![Cell::new("stream position"), Cell::new(position)]);
        t.add_row(vec![
            Cell::new("changes applied"),
            Cell::new(format!("{} ({:.0}/s)", s.applied, s.changes_per_second)),
        ]);
        t.add_row(vec![Cell::new("dead letters"), Cell::new(s.dead_lettered.to_string())]);
        t.add_row(vec![Cell::new("last target commit"), Cell::new(format!("{:.1} s ago", s.seconds_since_update))]);
        t.add_row(vec![Cell::new("plugin sha256"), Cell::new(s.plugin_sha256.clone().unwrap_or_default())]);
        if let Some(paused) = &s.paused {
            t.add_row(vec![Cell::new("PAUSED"), Cell::new(paused)]);
        }
        if let Some(capture) = s.ddl_capture {
            let said = if capture { "installed" } else { "off (a column change pauses the stream)" };
            t.add_row(vec![Cell::new("DDL capture"), Cell::new(said)]);
        }
        for (table, columns) in &s.table_columns {
            t.add_row(vec![Cell::new(format!("columns of {table}")), Cell::new(columns.join(", "))]);
        }
        for r in &s.resyncs {
            let said = match (r.done, r.truncated) {
                _ if r.held.is_some() => format!("HELD: {}", r.held.as_deref().unwrap_or_default()),
                (true, _) => format!("done ({} rows)", r.rows),
                (false, true) => format!("copying: {} rows so far", r.rows),
                (false, false) => "asked (the running stream begins it)".to_string(),
            };
            t.add_row(vec![Cell::new(format!("resync of {}", r.table)), Cell::new(said)]);
        }
    }
    for d in &r.deployments {
        let what = match d.state {
            crate::deployments::DeployState::Live => {
                format!("live from stream position {}", d.position.as_deref().unwrap_or("start"))
            }
            crate::deployments::DeployState::Refused => {
                format!("refused: {}", d.reason.as_deref().unwrap_or_default())
            }
            crate::deployments::DeployState::Pending => "pending (no running stream decided it yet)".to_string(),
            state => state.as_str().to_string(),
        };
        let shadow = d.shadow_report.as_ref().map_or_else(String::new, shadow_summary);
        t.add_row(vec![
            Cell::new(format!("deployment {}", d.id)),
            Cell::new(format!(
                "{} for {}: {what} ({}, requested {}){shadow}",
                d.sha256,
                d.table.as_deref().unwrap_or("every plugin table"),
                d.path,
                d.requested_at
            )),
        ]);
    }
    for slot in &r.slots {
        t.add_row(vec![
            Cell::new(format!("slot {}", slot.name)),
            Cell::new(format!("{}; lag {} bytes", if slot.active { "active" } else { "inactive" }, slot.lag_bytes)),
        ]);
    }
    if let Some(lag) = r.lag_seconds {
        t.add_row(vec![Cell::new("lag"), Cell::new(format!("{lag:.1} s"))]);
    }
    t.to_string()
}

pub fn dead_letters(records: &[DeadLetterRecord]) -> String {
    let mut t = table(&["table", "source key", "kind", "plugin", "reason", "source row"]);
    for d in records {
        t.add_row(vec![
            Cell::new(&d.source_table),
            Cell::new(&d.source_key),
            Cell::new(&d.kind),
            // The version that refused the row (`identity` for a copy).
            Cell::new(d.plugin_sha256.chars().take(12).collect::<String>()),
            Cell::new(truncate(&d.reason, 120)),
            Cell::new(truncate(&d.source_row, 120)),
        ]);
    }
    t.to_string()
}

/// A many-table migration: one line per table and a total.
pub fn tables(r: &crate::tables::TablesReport, dead_letters: &[DeadLetterRecord]) -> String {
    let ending = r.ending.describe();
    let mut t =
        table(&["table", "→ target", "source rows", "loaded", "skipped", "filtered", "dead letters", "accounted"]);
    let ok = |accounted: bool| {
        if accounted {
            "ok"
        } else if r.ending == Ending::Completed {
            "MISMATCH"
        } else {
            "incomplete"
        }
    };
    for line in &r.tables {
        t.add_row(vec![
            Cell::new(&line.table),
            Cell::new(&line.target),
            Cell::new(line.source_rows),
            Cell::new(line.loaded),
            Cell::new(line.skipped),
            Cell::new(line.filtered),
            Cell::new(line.dead_lettered),
            Cell::new(ok(line.accounted)),
        ]);
    }
    t.add_row(vec![
        Cell::new(format!("total ({} tables)", r.tables.len())),
        Cell::new(""),
        Cell::new(r.source_rows),
        Cell::new(r.stats.loaded),
        Cell::new(r.stats.skipped),
        Cell::new(r.filtered),
        Cell::new(r.stats.dead_lettered),
        Cell::new(ok(r.accounted)),
    ]);
    let mut out = format!(
        "run {}{}: {ending}, {:.2} s, {:.0} rows/s\n{t}",
        r.run_id,
        if r.resumed { " (resumed)" } else { "" },
        r.elapsed_seconds,
        r.rows_per_second
    );
    if let Some(m) = &r.message {
        out.push_str(&format!("\n{m}"));
    }
    if !dead_letters.is_empty() {
        let mut d = table(&["dead letter: table", "key", "kind", "reason"]);
        for dl in dead_letters {
            d.add_row(vec![
                Cell::new(&dl.source_table),
                Cell::new(&dl.source_key),
                Cell::new(&dl.kind),
                Cell::new(truncate(&dl.reason, 140)),
            ]);
        }
        out.push_str(&format!("\n{d}\n(`ferry dlq list` shows them all)"));
    }
    out
}

/// A many-table validation: one line per table, then the differing keys.
pub fn tables_validation(r: &crate::tables::validate::TablesValidation) -> String {
    let mut t =
        table(&["table", "source rows", "target rows", "matched", "explained", "missing", "extra", "different", ""]);
    for line in &r.tables {
        t.add_row(vec![
            Cell::new(&line.table),
            Cell::new(line.source_rows),
            Cell::new(line.target_rows),
            Cell::new(line.matched),
            Cell::new(line.explained),
            Cell::new(line.missing),
            Cell::new(line.extra),
            Cell::new(line.different),
            Cell::new(if line.ok { "ok" } else { "DIFFERS" }),
        ]);
    }
    let sum = |f: fn(&crate::tables::validate::TableValidation) -> u64| r.tables.iter().map(f).sum::<u64>();
    t.add_row(vec![
        Cell::new(format!("total ({} tables)", r.tables.len())),
        Cell::new(sum(|l| l.source_rows)),
        Cell::new(sum(|l| l.target_rows)),
        Cell::new(sum(|l| l.matched)),
        Cell::new(sum(|l| l.explained)),
        Cell::new(sum(|l| l.missing)),
        Cell::new(sum(|l| l.extra)),
        Cell::new(sum(|l| l.different)),
        Cell::new(if r.ok { "ok" } else { "DIFFERS" }),
    ]);
    let mut out =
        format!("validate {}: {}\n{t}", r.pipeline, if r.ok { "every row matches" } else { "differences found" });
    let differing: Vec<_> = r.tables.iter().flat_map(|l| l.differences.iter().map(move |d| (l, d))).collect();
    if !differing.is_empty() {
        let mut d = table(&["table", "key", "difference", "columns"]);
        let null = |v: &Option<String>| v.as_deref().map_or_else(|| "NULL".to_string(), |v| format!("{v:?}"));
        for (line, diff) in differing {
            let columns = match diff.values.is_empty() {
                true => diff.columns.join(", "),
                false => diff
                    .values
                    .iter()
                    .map(|v| format!("{}: expected {}, found {}", v.column, null(&v.expected), null(&v.actual)))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            d.add_row(vec![
                Cell::new(&line.table),
                Cell::new(truncate(&diff.key, 60)),
                Cell::new(diff.kind),
                Cell::new(truncate(&columns, 200)),
            ]);
        }
        out.push_str(&format!("\n{d}"));
    }
    out.push_str(&format!("\n{:.2} s", r.elapsed_seconds));
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max { s.to_string() } else { format!("{}…", s.chars().take(max).collect::<String>()) }
}

/// `ferry plugin deploy`: what became of the deployment.
pub fn deployment(d: &crate::deployments::Deployment) -> String {
    use crate::deployments::DeployState;
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    let table = d.table.as_deref().map_or_else(|| "the pipeline's plugin table".to_string(), |t| format!("table {t}"));
    match d.state {
        DeployState::Shadow => format!(
            "deployment {}: plugin {} runs in shadow beside the live version {} for {table}: it writes nothing; \
             `ferry status` shows how its output differs, `ferry plugin promote` makes it live",
            d.id,
            short(&d.sha256),
            d.previous_sha256.as_deref().map_or_else(|| "?".to_string(), short),
        ),
        DeployState::Promoted | DeployState::Retired => {
            format!("deployment {} of plugin {}: {}", d.id, short(&d.sha256), d.state.as_str())
        }
        DeployState::Live => format!(
            "deployment {}: plugin {} is live for {table} from stream position {} on (it replaced {})",
            d.id,
            short(&d.sha256),
            d.position.as_deref().unwrap_or("start"),
            d.previous_sha256.as_deref().map_or_else(|| "nothing".to_string(), short),
        ),
        DeployState::Refused => format!(
            "deployment {} of plugin {} refused: {}\nthe running version stays",
            d.id,
            short(&d.sha256),
            d.reason.as_deref().unwrap_or("no reason recorded")
        ),
        DeployState::Pending => format!(
            "deployment {} of plugin {} is pending: no running stream of pipeline {} decided it yet; \
             `ferry sync` or `ferry apply` takes it when it runs (see `ferry status`)",
            d.id,
            short(&d.sha256),
            d.pipeline
        ),
    }
}

/// A shadow's differences in a few lines: rows compared and differing, then
/// per field the count and one example.
fn shadow_summary(r: &crate::deployments::ShadowReport) -> String {
    let mut out = format!("\nshadow: {} rows compared, {} differ", r.rows, r.differing);
    for (field, diff) in &r.fields {
        out.push_str(&format!("\n  {field}: {} rows", diff.count));
        if let Some(e) = diff.examples.first() {
            out.push_str(&format!(" (key {}: live {:?}, shadow {:?})", e.key, e.live, e.shadow));
        }
    }
    out
}

/// `ferry dlq replay`: one line per table and what became of its dead letters.
pub fn reprocess(r: &crate::tables::reprocess::ReprocessReport) -> String {
    let range = match (&r.after_key, &r.last_key) {
        (None, None) => "every row".to_string(),
        (Some(a), None) => format!("keys after {a}"),
        (None, Some(b)) => format!("keys up to {b}"),
        (Some(a), Some(b)) => format!("keys after {a} up to {b}"),
    };
    let short = |s: &str| s.chars().take(12).collect::<String>();
    let mut out = format!(
        "reprocessed {} rows of {} ({range}) of run {} with plugin {} (replacing {}): {} loaded, {} filtered, {} dead letters",
        r.rows,
        r.table,
        r.run_id,
        short(&r.plugin_sha256),
        short(&r.replaced_sha256),
        r.loaded,
        r.filtered,
        r.dead_lettered
    );
    if r.interrupted {
        out.push_str("\ninterrupted: every page shown is committed; run it again for the rest (it is idempotent)");
    }
    out
}

pub fn replay(r: &crate::tables::replay::ReplayReport) -> String {
    let mut t = table(&["table", "retried", "loaded", "filtered", "still dead", "gone from source", "plugin"]);
    for line in &r.tables {
        t.add_row(vec![
            Cell::new(&line.table),
            Cell::new(line.retried),
            Cell::new(line.loaded),
            Cell::new(line.filtered),
            Cell::new(line.dead_lettered),
            Cell::new(line.gone),
            Cell::new(line.plugin_sha256.chars().take(12).collect::<String>()),
        ]);
    }
    let mut out = format!("replay of run {}\n{t}", r.run_id);
    if r.keyless > 0 {
        out.push_str(&format!(
            "\n{} dead letters of tables without a key were left alone (no key to read them by)",
            r.keyless
        ));
    }
    if let Some(stream) = &r.stream {
        out.push_str(&format!(
            "\nchange stream: {} dead letters asked, {} replayed, {} dead letters again",
            stream.asked, stream.replayed, stream.dead_lettered
        ));
        if stream.pending > 0 {
            out.push_str(&format!(
                "; {} wait for the stream, which replays them while `ferry sync` runs",
                stream.pending
            ));
        }
    }
    if r.interrupted {
        out.push_str("\ninterrupted: every batch shown is committed; run it again for the rest");
    }
    out
}

/// `ferry resync`.
pub fn resync(r: &crate::cdc::resync::ResyncReport) -> String {
    match r.done {
        true => format!("{}: copied again ({} rows); the stream goes on", r.table, r.rows),
        false => format!(
            "{}: {} rows copied so far; the stream copies the rest while `ferry sync` runs (`ferry status`)",
            r.table, r.rows
        ),
    }
}

/// `ferry plugin diff`: per table, rows compared and differing, then each
/// differing field with its count and examples.
pub fn plugin_diff(r: &crate::tables::diff::DiffReport) -> String {
    let short = |sha: &str| sha.chars().take(12).collect::<String>();
    let mut out = format!("old {} → new {}", short(&r.old_sha256), short(&r.new_sha256));
    for t in &r.tables {
        out.push_str(&format!("\ntable {}: {} rows compared, {} differ", t.table, t.report.rows, t.report.differing));
        for (field, diff) in &t.report.fields {
            out.push_str(&format!("\n  {field}: {} rows", diff.count));
            for e in &diff.examples {
                out.push_str(&format!("\n    key {}: old {:?} → new {:?}", e.key, e.live, e.shadow));
            }
        }
    }
    out
}

/// `ferry plugin test`: one line per golden case, then the failures in full.
pub fn plugin_test(r: &crate::scaffold::TestReport) -> String {
    let mut out = format!("{} ({}):", r.plugin.display(), r.sha256.chars().take(12).collect::<String>());
    for c in &r.cases {
        out.push_str(&format!("\n  {} {}", if c.passed { "ok  " } else { "FAIL" }, c.note));
        if !c.passed {
            out.push_str(&format!("\n       expected {}\n       got      {}", c.expected, c.got));
        }
    }
    out.push_str(&format!("\n{} passed, {} failed", r.passed, r.failed));
    out
}

/// `ferry cutover`/`ferry cutback`.
pub fn switch(r: &crate::cutover::SwitchReport) -> String {
    let mut out = String::new();
    for g in &r.gates {
        out.push_str(&format!("[{}] {:<18} {}\n", if g.ok { " ok " } else { "FAIL" }, g.name, g.detail));
    }
    let to = r.to.as_str();
    out.push_str(&match (r.switched, r.dry_run, r.gates.iter().all(|g| g.ok)) {
        (true, _, _) => format!(
            "switched: the application uses the {to} database{}",
            r.drained_seconds.map(|s| format!(" (the other side drained in {s:.2} s)")).unwrap_or_default()
        ),
        (false, true, true) => format!("dry run: every gate holds; the switch to the {to} database would happen"),
        _ => "not switched: the application stays where it is (gates above)".to_string(),
    });
    if let Some(warning) = &r.drain_warning {
        out.push_str(&format!("\nwarning: {warning}"));
    }
    out
}

/// `ferry conflicts`.
pub fn conflicts(r: &crate::cutover::ConflictsReport) -> String {
    let mut out = String::new();
    if r.resolved > 0 {
        out.push_str(&format!("{} conflicts marked resolved\n", r.resolved));
    }
    if r.conflicts.is_empty() {
        out.push_str("no open conflict");
        return out;
    }
    for c in &r.conflicts {
        out.push_str(&format!(
            "#{} {} {} {} (detected {}{})\n  kept:     {}\n  not applied: {}\n",
            c.id,
            c.pipeline,
            c.target_table,
            c.target_key,
            c.detected_at,
            c.resolved_at.as_ref().map(|r| format!(", resolved {r}")).unwrap_or_default(),
            c.kept,
            c.incoming
        ));
    }
    out.trim_end().to_string()
}

pub fn rollback(r: &crate::undo::RollbackReport) -> String {
    let mut out = format!(
        "{} run {} of {} in {}{}\n",
        if r.dry_run { "would roll back" } else { "rolled back" },
        r.run_id,
        r.pipeline,
        r.database,
        if r.forced { " (--force)" } else { "" }
    );
    for t in &r.tables {
        let mode = match t.mode {
            crate::undo::UndoMode::EmptyAtStart => "empty before the run",
            crate::undo::UndoMode::BeforeImages => "held rows before the run",
        };
        out.push_str(&format!(
            "  {} ({mode}): {} rows deleted, {} restored, checksum {} ({} before)\n",
            t.table,
            t.deleted,
            t.restored,
            if t.exact { "as before the run" } else { "DIFFERS" },
            t.checksum_before
        ));
        if t.changed_by_others > 0 {
            out.push_str(&format!(
                "    {} rows changed by someone else since the run wrote them {}: {}{}\n",
                t.changed_by_others,
                if r.forced { "(overwritten)" } else { "(kept; --force overwrites them)" },
                t.changed_keys.join(" "),
                if t.changed_by_others > t.changed_keys.len() as u64 { " …" } else { "" }
            ));
        }
    }
    if !r.dropped_objects.is_empty() {
        out.push_str(&format!("  dropped what the run created: {}\n", r.dropped_objects.join(", ")));
    }
    for kept in &r.kept_objects {
        out.push_str(&format!("  kept {kept}\n"));
    }
    out.push_str(if r.exact {
        "every table is exactly as it was before the run"
    } else {
        "some table is not as it was before the run (see above)"
    });
    out
}
