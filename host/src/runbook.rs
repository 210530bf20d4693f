//! `ferry plan`: the migration runbook of a pipeline — the seed's
//! checklist (pre-migration, migration, post-migration), with each item
//! ferry can verify ticked from evidence it finds now, and the rest left
//! for people. Nothing is ticked on faith: an item is `done` only when its
//! evidence exists (a passing `ferry check` run now, a backup file, a
//! completed run whose counts add up, a recorded clean `ferry validate`, no
//! dead letter left, the parallel run's owner), else it says what to do.

use serde::Serialize;

use crate::control::RunStatus;
use crate::engines;
use crate::settings::Settings;

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its evidence exists.
    Done,
    /// ferry can verify it, and it does not hold yet.
    Open,
    /// Only people can do and confirm it.
    People,
}

/// One item of the checklist.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub phase: &'static str,
    pub item: &'static str,
    pub state: State,
    /// The evidence, or what to do.
    pub detail: String,
}

/// What `ferry plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Runbook {
    pub pipeline: String,
    pub steps: Vec<Step>,
}

impl Runbook {
    fn add(&mut self, phase: &'static str, item: &'static str, state: State, detail: impl Into<String>) {
        self.steps.push(Step { phase, item, state, detail: detail.into() });
    }

    /// The runbook as Markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("# Migration runbook — pipeline `{}`\n", self.pipeline);
        let mut phase = "";
        for s in &self.steps {
            if s.phase != phase {
                phase = s.phase;
                out.push_str(&format!("\n## {phase}\n\n"));
            }
            let (mark, who) = match s.state {
                State::Done => ("x", ""),
                State::Open => (" ", ""),
                State::People => (" ", " *(people)*"),
            };
            out.push_str(&format!("- [{mark}] **{}**{who} — {}\n", s.item, s.detail));
        }
        let count = |state| self.steps.iter().filter(|s| s.state == state).count();
        out.push_str(&format!(
            "\n{} of {} items verified by ferry, {} open, {} for people.\n",
            count(State::Done),
            count(State::Done) + count(State::Open),
            count(State::Open),
            count(State::People)
        ));
        out
    }
}

const PRE: &str = "Pre-migration";
const MIGRATION: &str = "Migration";
const POST: &str = "Post-migration";

/// Builds the runbook of `settings`' pipeline from what the databases and
/// the files hold now.
pub async fn plan(settings: &Settings) -> anyhow::Result<Runbook> {
    let mut book = Runbook { pipeline: settings.pipeline.clone(), steps: Vec::new() };
    let check = crate::check::check_tables(settings, &settings.tables).await;
    let failing: Vec<&str> =
        check.items.iter().filter(|i| i.level == crate::check::Level::Fail).map(|i| i.name.as_str()).collect();
    match failing.is_empty() {
        true => book.add(
            PRE,
            "Pre-flight check passes",
            State::Done,
            format!("ferry check, now: {} items, none failing", check.items.len()),
        ),
        false => book.add(
            PRE,
            "Pre-flight check passes",
            State::Open,
            format!("ferry check fails on: {}", failing.join(", ")),
        ),
    }
    for (item, path, key) in [
        ("Back up the source", &settings.source_backup, "source_backup"),
        ("Back up the target", &settings.target_backup, "target_backup"),
    ] {
        match path {
            None => book.add(
                PRE,
                item,
                State::Open,
                format!("take it (pg_dump -Fc, or a copy of the file), then name it in [plan] {key}"),
            ),
            Some(path) => match std::fs::metadata(path) {
                Ok(meta) if meta.len() > 0 => {
                    let modified = meta
                        .modified()
                        .ok()
                        .map(|t| chrono::DateTime::<chrono::Utc>::from(t).format("%Y-%m-%dT%H:%M:%SZ").to_string())
                        .unwrap_or_default();
                    book.add(
                        PRE,
                        item,
                        State::Done,
                        format!("{} ({} bytes, written {modified})", path.display(), meta.len()),
                    )
                }
                Ok(_) => book.add(PRE, item, State::Open, format!("{} is empty", path.display())),
                Err(e) => book.add(PRE, item, State::Open, format!("{} ({e})", path.display())),
            },
        }
    }
    book.add(
        PRE,
        "Rehearse on a staging copy",
        State::People,
        "run this pipeline against copies first; `ferry plugin diff` compares plugin versions on real rows",
    );
    let parallel = settings.reverse.is_some();
    // The way back: the undo journal (checked once the target is open).
    let way_back_at = book.steps.len();
    book.add(PRE, "A way back", State::Open, "");
    book.add(
        PRE,
        "Plan the maintenance window",
        State::People,
        if parallel {
            "a parallel run keeps both databases live: the window shrinks to the cutover's drain"
        } else {
            "writes stop on the source while `ferry migrate` runs (or use `ferry sync` to shorten it)"
        },
    );
    let told = if settings.notify.webhook.is_some() || settings.notify.command.is_some() {
        "tell the users when and for how long; [notify] will report the run's end and validation"
    } else {
        "tell the users when and for how long ([notify] can report the run's end, validation, cutover)"
    };
    book.add(PRE, "Tell the users", State::People, told);

    // What the target records.
    let mut target = engines::open_row_target(settings).await?;
    let run = target.latest_run(&settings.pipeline).await?;
    let stream = target.stream_status(&settings.pipeline).await?;
    // The old database's side of a parallel run (the reverse stream's).
    let mut old = match parallel {
        true => Some(crate::cdc::reverse::old_side(settings).await?),
        false => None,
    };
    if let Some((back, old)) = &mut old {
        let reverse = old.stream_status(&back.pipeline).await?;
        let both = stream.as_ref().is_some_and(|s| s.position.is_some()) && reverse.is_some();
        book.add(
            MIGRATION,
            "Keep both databases in step (or stop writes on the source)",
            if both { State::Done } else { State::Open },
            if both {
                "the forward and reverse streams have both applied changes (`ferry status`)".to_string()
            } else {
                "start `ferry sync` and `ferry sync --reverse`".to_string()
            },
        );
    } else {
        book.add(
            MIGRATION,
            "Stop writes on the source",
            State::People,
            "the application's side; `ferry sync` avoids it",
        );
    }
    match &run {
        Some(r) if r.status == RunStatus::Completed => {
            book.add(MIGRATION, "Run the migration", State::Done, format!("run {} completed", r.run_id))
        }
        Some(r) if r.status.resumable() => book.add(
            MIGRATION,
            "Run the migration",
            State::Open,
            format!("run {} is {}: `ferry migrate` resumes it", r.run_id, r.status.as_str()),
        ),
        Some(r) => book.add(
            MIGRATION,
            "Run the migration",
            State::Open,
            format!("run {} was {}: `ferry migrate` starts a new one", r.run_id, r.status.as_str().replace('_', " ")),
        ),
        None => book.add(MIGRATION, "Run the migration", State::Open, "`ferry migrate` (or `ferry sync`)"),
    }
    book.steps[way_back_at] = way_back(settings, target.as_mut(), run.as_ref(), parallel).await?;
    let tables = match &run {
        Some(r) => target.table_progress(&r.run_id).await?,
        None => Vec::new(),
    };
    let off: Vec<String> = tables
        .iter()
        .filter(|t| t.stats.extracted != t.stats.loaded + t.stats.skipped + t.filtered + t.stats.dead_lettered)
        .map(|t| t.table.clone())
        .collect();
    let completed = run.as_ref().is_some_and(|r| r.status == RunStatus::Completed);
    match (completed, off.is_empty()) {
        (true, true) => {
            let extracted: u64 = tables.iter().map(|t| t.stats.extracted).sum();
            book.add(
                MIGRATION,
                "Counts add up",
                State::Done,
                format!(
                    "{} tables, {extracted} source rows = loaded + skipped + filtered + dead letters, each",
                    tables.len()
                ),
            )
        }
        (true, false) => {
            book.add(MIGRATION, "Counts add up", State::Open, format!("they do not for {}", off.join(", ")))
        }
        (false, _) => book.add(MIGRATION, "Counts add up", State::Open, "once the migration has completed"),
    }
    match target.latest_validation(&settings.pipeline).await? {
        Some(v) if v.ok => book.add(
            MIGRATION,
            "Every row validated (samples and checksums)",
            State::Done,
            format!("ferry validate at {}: {}", v.at, v.summary),
        ),
        Some(v) => book.add(
            MIGRATION,
            "Every row validated (samples and checksums)",
            State::Open,
            format!("ferry validate at {} found differences: {}", v.at, v.summary),
        ),
        None => book.add(
            MIGRATION,
            "Every row validated (samples and checksums)",
            State::Open,
            "run `ferry validate` (it compares every row)",
        ),
    }
    let dead = run.as_ref().map_or(0, |r| r.stats.dead_lettered) + stream.as_ref().map_or(0, |s| s.dead_lettered);
    match (run.is_some(), dead) {
        (false, _) => book.add(MIGRATION, "Dead letters reviewed", State::Open, "once the migration has run"),
        (true, 0) => book.add(MIGRATION, "Dead letters reviewed", State::Done, "no dead letter left"),
        (true, n) => book.add(
            MIGRATION,
            "Dead letters reviewed",
            State::Open,
            format!("{n} dead letters: `ferry dlq list`, fix the cause, `ferry dlq replay`"),
        ),
    }

    if parallel {
        let owner = target.parallel_owner(&settings.pipeline).await?.map(|(o, _)| o);
        match owner.as_deref() {
            Some("new") => book.add(
                POST,
                "Switch the application to the new database",
                State::Done,
                "`ferry cutover` done: the new database owns the writes",
            ),
            _ => book.add(
                POST,
                "Switch the application to the new database",
                State::Open,
                "`ferry cutover` (gated: lag, validate, conflicts)",
            ),
        }
    } else {
        book.add(POST, "Switch the application to the new database", State::People, "the application's configuration");
    }
    let conflicts = match &mut old {
        Some((back, old)) => {
            target.conflicts(&settings.pipeline, true).await?.len() + old.conflicts(&back.pipeline, true).await?.len()
        }
        None => 0,
    };
    let stream_dead = stream.as_ref().map_or(0, |s| s.dead_lettered);
    match (run.is_some() || stream.is_some(), stream_dead, conflicts) {
        (false, _, _) => {
            book.add(POST, "Monitor errors", State::Open, "once data moves: change-stream dead letters, conflicts")
        }
        (true, 0, 0) => book.add(
            POST,
            "Monitor errors",
            State::Done,
            "no change-stream dead letter, no open conflict (`ferry status`, /metrics)",
        ),
        (true, d, c) => {
            book.add(POST, "Monitor errors", State::Open, format!("{d} change-stream dead letters, {c} open conflicts"))
        }
    }
    book.add(POST, "Confirm with the users", State::People, "their key journeys on the new database");
    book.add(
        POST,
        "Archive the migration's logs",
        State::People,
        "ferry's reports (`--json`) and the control schema (`ferry.*`) are the record",
    );
    book.add(POST, "Write down the problems met", State::People, "dead letters and conflicts carry their reasons");
    Ok(book)
}

/// "A way back": done when `ferry rollback` can take the latest run back
/// (its undo journal exists), or will be able to (no run yet, the journal
/// on).
async fn way_back(
    settings: &Settings,
    target: &mut dyn engines::RowTarget,
    run: Option<&crate::control::RunRecord>,
    parallel: bool,
) -> anyhow::Result<Step> {
    let also = if parallel { "; in the parallel run, `ferry cutback` moves the application back" } else { "" };
    let (state, detail) = if !settings.undo_journal {
        (State::Open, "the undo journal is off ([target] undo_journal = false): only the backups are a way back".into())
    } else {
        match run {
            None => (State::Done, format!("the undo journal is on: `ferry rollback RUN` will take the run back{also}")),
            Some(r) if r.status == RunStatus::RolledBack => (State::Done, format!("run {} was rolled back", r.run_id)),
            Some(r) => match target.journaled_tables(&r.run_id).await?.len() {
                0 => (
                    State::Open,
                    format!("run {} has no undo journal (it ran without one): the backups are the way back", r.run_id),
                ),
                n => {
                    (State::Done, format!("`ferry rollback {}` takes it back (journal of {n} tables){also}", r.run_id))
                }
            },
        }
    };
    Ok(Step { phase: PRE, item: "A way back", state, detail })
}

/// Rows read (and transformed) per table to time a dry run.
const SAMPLE_ROWS: usize = 2000;

/// What `ferry migrate` would do with one source table.
#[derive(Debug, Clone, Serialize)]
pub struct TableEstimate {
    pub table: String,
    pub targets: String,
    /// `create` (ferry creates the target), or `write into existing (on_conflict = …)`.
    pub action: String,
    /// The plugin's file, or none: copied as it is.
    pub plugin: Option<String>,
    /// Source rows: the engine's estimate, else counted.
    pub rows: u64,
    /// Source size on disk (table, indexes, TOAST), when the engine says.
    pub bytes: Option<u64>,
    /// Rows sampled and the seconds reading and transforming them took.
    pub sample_rows: usize,
    pub sample_seconds: f64,
    /// `rows` at the sample's pace.
    pub estimated_seconds: f64,
    /// How rollback will journal it: `empty_at_start` (one row per batch)
    /// or `before_images` (one per row the run touches); none when off.
    pub journal: Option<crate::undo::UndoMode>,
}

/// `ferry plan --dry-run`: what `ferry migrate` (and, in a parallel run,
/// `ferry cutover`) would do, found without writing anything but the
/// record of the validation the cutover's gate runs.
#[derive(Debug, Clone, Serialize)]
pub struct DryRun {
    pub pipeline: String,
    pub tables: Vec<TableEstimate>,
    pub rows: u64,
    /// Disk the target needs: the sources' size (copies take about as
    /// much), plus as much again for the journal of tables that hold rows.
    pub disk_bytes: u64,
    /// Reading and transforming every row at the sample's pace (writing is
    /// not measured: a dry run writes nothing).
    pub estimated_seconds: f64,
    /// A parallel run: the cutover's gates now (`ferry cutover --dry-run`),
    /// or why they cannot be checked yet.
    pub cutover: Option<crate::cutover::SwitchReport>,
    pub cutover_error: Option<String>,
}

impl DryRun {
    pub fn markdown(&self) -> String {
        let mut out = format!("# Dry run — pipeline `{}`\n\n`ferry migrate` would copy:\n\n", self.pipeline);
        out.push_str("| table | into | action | plugin | rows | size | sample | estimate | journal |\n");
        out.push_str("|---|---|---|---|---:|---:|---:|---:|---|\n");
        for t in &self.tables {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} rows in {:.3} s | {:.1} s | {} |\n",
                t.table,
                t.targets,
                t.action,
                t.plugin.as_deref().unwrap_or("—"),
                t.rows,
                t.bytes.map(megabytes).unwrap_or_else(|| "?".into()),
                t.sample_rows,
                t.sample_seconds,
                t.estimated_seconds,
                match t.journal {
                    Some(crate::undo::UndoMode::EmptyAtStart) => "empty at start",
                    Some(crate::undo::UndoMode::BeforeImages) => "before-images",
                    None => "off",
                }
            ));
        }
        out.push_str(&format!(
            "\n{} rows; the target needs about {} of disk; reading and transforming them takes about {:.0} s at \
             the sample's pace (loading is not measured: a dry run writes nothing).\n",
            self.rows,
            megabytes(self.disk_bytes),
            self.estimated_seconds
        ));
        if let Some(r) = &self.cutover {
            out.push_str("\n`ferry cutover` now:\n\n");
            for g in &r.gates {
                out.push_str(&format!("- [{}] {}: {}\n", if g.ok { "x" } else { " " }, g.name, g.detail));
            }
        }
        if let Some(e) = &self.cutover_error {
            out.push_str(&format!("\n`ferry cutover` cannot be checked yet: {e}\n"));
        }
        out
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// `ferry plan --dry-run` (see [`DryRun`]).
pub async fn dry_run(settings: &Settings) -> anyhow::Result<DryRun> {
    let mut source = engines::open_row_source(&settings.source.url, "source").await?;
    let mut target = engines::open_row_target(settings).await?;
    let plan = crate::tables::plan(settings, &settings.tables, source.as_mut(), target.as_mut()).await?;
    let mut tables = Vec::with_capacity(plan.tables.len());
    for table in &plan.tables {
        let (rows, bytes) = match source.size_estimate(&table.source).await? {
            Some((rows, bytes)) => (rows, Some(bytes)),
            None => (source.count_rows(&table.source).await?, None),
        };
        let started = std::time::Instant::now();
        let page = source.read_page(&table.source, None, SAMPLE_ROWS).await?;
        let sample_rows = page.rows.len();
        if let Some(plugin) = &table.plugin {
            let (plugin, def, rows) = (plugin.clone(), table.source.clone(), page.rows);
            tokio::task::spawn_blocking(move || {
                let mut instance = plugin.instantiate()?;
                instance.describe(&def)?;
                instance.transform_batch(&def.name.to_string(), &rows).map(|_| ())
            })
            .await??;
        }
        let sample_seconds = started.elapsed().as_secs_f64();
        // Whether the journal will need before-images: a target that
        // exists and holds rows now.
        let mut holds_rows = false;
        for output in table.outputs.iter().filter(|o| !o.create) {
            let page = target.read_page(&output.def, None, 1).await?;
            holds_rows |= page.rows.len() + page.unreadable.len() > 0;
        }
        let journal = settings.undo_journal.then_some(if holds_rows {
            crate::undo::UndoMode::BeforeImages
        } else {
            crate::undo::UndoMode::EmptyAtStart
        });
        tables.push(TableEstimate {
            table: table.source.name.to_string(),
            targets: table.target_names(),
            action: if table.creates() {
                "create".to_string()
            } else {
                format!("write into existing (on_conflict = {})", format!("{:?}", table.on_conflict).to_lowercase())
            },
            plugin: table.plugin.as_ref().map(|p| p.path().display().to_string()),
            rows,
            bytes,
            sample_rows,
            sample_seconds,
            estimated_seconds: if sample_rows == 0 { 0.0 } else { rows as f64 * sample_seconds / sample_rows as f64 },
            journal,
        });
    }
    let disk_bytes = tables
        .iter()
        .map(|t| {
            let size = t.bytes.unwrap_or(0);
            if t.journal == Some(crate::undo::UndoMode::BeforeImages) { 2 * size } else { size }
        })
        .sum();
    let (cutover, cutover_error) = match settings.reverse.is_some() {
        false => (None, None),
        true => {
            let options = crate::cutover::SwitchOptions::of(settings, crate::cutover::Side::New, true);
            match crate::cutover::switch(settings, &options).await {
                Ok(report) => (Some(report), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            }
        }
    };
    Ok(DryRun {
        pipeline: settings.pipeline.clone(),
        rows: tables.iter().map(|t| t.rows).sum(),
        estimated_seconds: tables.iter().map(|t| t.estimated_seconds).sum(),
        disk_bytes,
        tables,
        cutover,
        cutover_error,
    })
}
