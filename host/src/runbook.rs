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
    book.add(
        PRE,
        "A way back",
        State::Open,
        "`ferry rollback` is not built yet: the backups above are the way back (or, in a parallel run, `ferry cutback`)",
    );
    let parallel = settings.reverse.is_some();
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
    if parallel {
        let (back, _) = crate::cdc::reverse::endpoints(settings, |n| n.to_string(), None)?;
        let mut old = engines::open_row_target(&back).await?;
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
        Some(r) => book.add(
            MIGRATION,
            "Run the migration",
            State::Open,
            format!("run {} is {}: `ferry migrate` resumes it", r.run_id, r.status.as_str()),
        ),
        None => book.add(MIGRATION, "Run the migration", State::Open, "`ferry migrate` (or `ferry sync`)"),
    }
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
    let conflicts = match parallel {
        true => {
            let (back, _) = crate::cdc::reverse::endpoints(settings, |n| n.to_string(), None)?;
            let mut old = engines::open_row_target(&back).await?;
            target.conflicts(&settings.pipeline, true).await?.len() + old.conflicts(&back.pipeline, true).await?.len()
        }
        false => 0,
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
