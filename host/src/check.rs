//! `ferry check`: the seed's pre-migration checklist, each item answered
//! `ok`, `warn` or `fail` with a reason.

use serde::Serialize;

use crate::engines;
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckItem {
    pub name: String,
    pub level: Level,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub ok: bool,
    pub items: Vec<CheckItem>,
}

struct Items(Vec<CheckItem>);

impl Items {
    fn push(&mut self, name: impl Into<String>, level: Level, detail: impl Into<String>) {
        self.0.push(CheckItem { name: name.into(), level, detail: detail.into() });
    }
}

/// What the plugins are granted: nothing (deny-all, so `validate` can re-run
/// them), or what makes their output vary between runs.
fn grants_item(items: &mut Items, grants: crate::plugin::Grants) {
    let granted = grants.names();
    if granted.is_empty() {
        items.push(
            "plugin grants",
            Level::Ok,
            "none: no files, sockets or environment, clocks at the epoch, randomness seeded alike for every call",
        );
    } else {
        items.push(
            "plugin grants",
            Level::Warn,
            format!(
                "plugin.grants = [{}]: the plugins see the host's {}, so the same row may transform differently in \
                 another run and `ferry validate` may report differences it cannot explain (files, sockets and the \
                 environment stay denied)",
                granted.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", "),
                granted.join(" and ")
            ),
        );
    }
}

/// The checklist of a pipeline of many tables: both ends reachable (and
/// how securely), then one line per table — its key, its size, whether
/// ferry creates the target table and what it builds after the data, and
/// what cannot cross between engines as it is.
pub async fn check_tables(settings: &Settings, selection: &crate::settings::TableSelection) -> CheckReport {
    use crate::value::Kind;
    let mut items = Items(Vec::new());
    if let Some(spec) = selection.tables.iter().find_map(|s| s.plugin.as_ref()) {
        grants_item(&mut items, spec.options.limits.grants);
    }
    let source = match engines::open_row_source(&settings.source.url, "source").await {
        Err(e) => {
            items.push("source connectivity", Level::Fail, format!("{e:#}"));
            None
        }
        Ok(s) => {
            items.push("source connectivity", Level::Ok, format!("connected to {}", settings.source.url));
            check_transport("source TLS", &settings.source.url, "source", &mut items).await;
            Some(s)
        }
    };
    let target = match engines::open_row_target(settings).await {
        Err(e) => {
            items.push("target connectivity", Level::Fail, format!("{e:#}"));
            None
        }
        Ok(t) => {
            items.push("target connectivity", Level::Ok, format!("connected to {}", settings.target.url));
            check_transport("target TLS", &settings.target.url, "target", &mut items).await;
            Some(t)
        }
    };
    if let (Some(mut source), Some(mut target)) = (source, target) {
        match crate::tables::plan(settings, selection, source.as_mut(), target.as_mut()).await {
            Err(e) => items.push("tables", Level::Fail, format!("{e:#}")),
            Ok(mut plan) => {
                // The same schema planning `ferry migrate` refuses on.
                match crate::tables::pre_data::plan(settings, &mut plan).await {
                    Err(e) => items.push("schema", Level::Fail, format!("{e:#}")),
                    Ok(findings) => schema_items(&plan, findings, &mut items),
                }
                let cross = settings.source.url.engine() != settings.target.url.engine();
                for table in &plan.tables {
                    let def = &table.source;
                    let key: Vec<&str> = def.key_columns().map(|c| c.name.as_str()).collect();
                    let mut detail = match table.keyless() {
                        true => format!(
                            "→ {}: ~{} rows, no key: copied in storage order into a table holding nothing else, \
                             started over if interrupted, validated as a multiset",
                            table.target_names(),
                            def.estimated_rows
                        ),
                        false => format!(
                            "→ {}: ~{} rows, key ({}){}",
                            table.target_names(),
                            def.estimated_rows,
                            key.join(", "),
                            if def.key_index.is_some() { " (a unique index)" } else { "" }
                        ),
                    };
                    if let Some(plugin) = &table.plugin {
                        detail.push_str(&format!("; through plugin sha256 {}", plugin.sha256()));
                    }
                    let creates = table.creates();
                    if creates && table.schema_made {
                        detail.push_str(
                            "; created by the schema copy as the source defines it, keys and indexes built after \
                             its rows, foreign keys and triggers after every table's",
                        );
                    } else if table.schema_made {
                        detail.push_str(&format!(
                            "; target table exists: loaded as it is, with its triggers and foreign-key checks off \
                             where ferry may (on_conflict = {:?})",
                            table.on_conflict
                        ));
                    } else if creates {
                        detail.push_str(&format!(
                            "; ferry creates it, then builds {} index(es) and {} foreign key(s) after the data",
                            table.target().indexes.len(),
                            table.target().foreign_keys.len()
                        ));
                    } else {
                        detail.push_str(&format!("; target table exists (on_conflict = {:?})", table.on_conflict));
                    }
                    let mut level = Level::Ok;
                    let as_text: Vec<String> = def
                        .columns
                        .iter()
                        .filter(|c| cross && table.plugin.is_none() && c.kind == Kind::Other)
                        .map(|c| format!("{} ({})", c.name, c.sql_type))
                        .collect();
                    if !as_text.is_empty() {
                        level = Level::Warn;
                        detail.push_str(&format!("; copied as text: {}", as_text.join(", ")));
                    }
                    // Lengths and precisions the other engine cannot name.
                    let uncarried: Vec<String> = def
                        .columns
                        .iter()
                        .zip(&table.target().columns)
                        .filter(|(s, t)| {
                            cross && table.plugin.is_none() && s.sql_type.contains('(') && !t.sql_type.contains('(')
                        })
                        .map(|(s, t)| format!("{} ({} → {})", s.name, s.sql_type, t.sql_type))
                        .collect();
                    if !uncarried.is_empty() {
                        level = Level::Warn;
                        detail
                            .push_str(&format!("; declared length or precision not carried: {}", uncarried.join(", ")));
                    }
                    if creates && table.plugin.is_none() && cross && !def.generated.is_empty() {
                        level = Level::Warn;
                        let names: Vec<&str> = def.generated.iter().map(|g| g.name.as_str()).collect();
                        detail.push_str(&format!(
                            "; generated column(s) {} not recreated on SQLite (PostgreSQL expressions)",
                            names.join(", ")
                        ));
                    }
                    let dropped = def.indexes.len().saturating_sub(table.target().indexes.len());
                    if creates && table.plugin.is_none() && dropped > 0 {
                        level = Level::Warn;
                        detail.push_str(&format!("; {dropped} expression/partial index(es) not recreated on SQLite"));
                    }
                    items.push(format!("table {}", def.name), level, detail);
                    if let Some(plugin) = &table.plugin {
                        plugin_items(selection, table, plugin, source.as_mut(), &mut items).await;
                    }
                }
                if settings.reverse.is_some() {
                    parallel_items(settings, selection, &plan, &mut items).await;
                }
            }
        }
        previous_run(settings, target.as_mut(), &mut items).await;
    }
    // Logical slots hold WAL on the source until they are consumed.
    if let Ok(slots) = crate::status::source_slots(settings, None).await {
        for slot in slots.iter().filter(|s| !s.active && s.lag_bytes > 0) {
            items.push(
                "source slots",
                Level::Warn,
                format!(
                    "replication slot {} is inactive and retains {} of WAL; resume its consumer or drop it (ferry sync --teardown)",
                    slot.name,
                    human(slot.lag_bytes as u64)
                ),
            );
        }
    }
    ddl_capture_item(settings, &mut items).await;
    let ok = items.0.iter().all(|i| i.level != Level::Fail);
    CheckReport { ok, items: items.0 }
}

/// The DDL capture (`[source] capture_ddl`), where it is configured or
/// installed: whether `ferry sync` carries the source's schema changes.
async fn ddl_capture_item(settings: &Settings, items: &mut Items) {
    if settings.source.url.engine() != crate::db::Engine::Postgres {
        return;
    }
    let facts = async {
        let mut source = crate::engines::open_replication_source(&settings.source.url).await?;
        Ok::<_, anyhow::Error>((source.ddl_capture().await?, source.may_install_ddl_capture().await?))
    };
    let (level, detail) = match (facts.await, settings.capture_ddl) {
        (Ok((true, _)), _) => (
            Level::Ok,
            "installed: ferry sync carries added, dropped and renamed columns and type changes as they come"
                .to_string(),
        ),
        (Ok((false, true)), true) => (Level::Ok, "ferry sync installs it when it starts".to_string()),
        (Ok((false, false)), true) => (
            Level::Fail,
            format!(
                "[source] capture_ddl is on, but the source's role may not create event triggers in {}: run the \
                 first `ferry sync` as a superuser, or turn capture_ddl off (a new column then pauses the stream \
                 until the target has it)",
                settings.source.url
            ),
        ),
        (Ok((false, _)), false) => return,
        (Err(e), _) => (Level::Warn, format!("{e:#}")),
    };
    items.push("DDL capture", level, detail);
}

/// The schema copy's items: what it creates before and after the data,
/// what it leaves out, and every problem that would stop `migrate`.
fn schema_items(plan: &crate::tables::Plan, findings: crate::tables::pre_data::Findings, items: &mut Items) {
    if let Some(schema) = &plan.schema {
        let p = schema.0.plan();
        items.push(
            "schema",
            Level::Ok,
            format!(
                "copied from the source (pg_dump): before the data {}; after it {}; {} object(s) the target holds \
                 already are left as they are",
                crate::schema_copy::SchemaPlan::summary(&p.before),
                crate::schema_copy::SchemaPlan::summary(&p.after),
                p.present
            ),
        );
        if !p.left_out.is_empty() {
            items.push("schema left out", Level::Warn, p.left_out.join("; "));
        }
    }
    for warning in findings.warnings {
        items.push("triggers on load", Level::Warn, warning);
    }
    for problem in findings.problems {
        items.push("schema", Level::Fail, problem);
    }
}

/// A parallel run (`[reverse]`): what the reverse stream and the cutover
/// will need, before either is started.
async fn parallel_items(
    settings: &Settings,
    selection: &crate::settings::TableSelection,
    plan: &crate::tables::Plan,
    items: &mut Items,
) {
    let mut cannot = Vec::new();
    for table in &plan.tables {
        let inverse = selection.spec(&table.source.name).is_some_and(|s| s.inverse.is_some());
        match (&table.plugin, table.outputs.len()) {
            (Some(_), 1) if !inverse => cannot.push(format!("{} has a plugin and no inverse", table.source.name)),
            (Some(_), n) if n > 1 => cannot.push(format!("{} becomes {n} tables", table.source.name)),
            _ => {}
        }
    }
    match cannot.is_empty() {
        true => items.push(
            "reverse tables",
            Level::Ok,
            "every table can stream back (copies as they are, plugins through their inverse)",
        ),
        false => items.push(
            "reverse tables",
            Level::Fail,
            format!("{}: give each plugin an inverse, or leave those tables out", cannot.join("; ")),
        ),
    }
    let detect = settings.reverse.as_ref().is_some_and(|r| r.detect_conflicts);
    for (name, url, needed) in
        [("old database", &settings.source.url, Level::Fail), ("new database", &settings.target.url, Level::Warn)]
    {
        let facts = async {
            let mut db = crate::engines::open_replication_source(url).await?;
            db.check_logical().await?;
            db.tracks_commit_timestamps().await
        };
        match facts.await {
            Err(e) => items.push(format!("parallel run: {name}"), Level::Fail, format!("{e:#}")),
            Ok(false) if detect => items.push(
                format!("parallel run: {name}"),
                needed,
                format!(
                    "{url} has track_commit_timestamp = off: conflicts cannot be detected {} (ALTER SYSTEM SET \
                     track_commit_timestamp = on, then restart)",
                    if needed == Level::Fail { "by the reverse stream" } else { "after the cutover" }
                ),
            ),
            Ok(_) => items.push(format!("parallel run: {name}"), Level::Ok, format!("{url} streams logical changes")),
        }
    }
}

/// Rows of each plugin table run through the plugin before anything is
/// written: what the run would dead-letter, with the plugin's own reasons.
const SAMPLE_ROWS: usize = 1000;

/// A plugin table's pin and a dry run of its plugin on the first rows.
async fn plugin_items(
    selection: &crate::settings::TableSelection,
    table: &crate::tables::PlannedTable,
    plugin: &crate::plugin::TablePlugin,
    source: &mut dyn crate::source::RowSource,
    items: &mut Items,
) {
    let name = &table.source.name;
    let pinned =
        selection.spec(name).and_then(|s| s.plugin.as_ref()).is_some_and(|p| p.options.pinned_sha256.is_some());
    items.push(
        format!("plugin {name}"),
        if pinned { Level::Ok } else { Level::Warn },
        if pinned {
            format!("{} matches its pin sha256 {}", plugin.path().display(), plugin.sha256())
        } else {
            format!(
                "{} loads; not pinned: set plugin_sha256 = \"{}\" (plugin.sha256 for a one-table pipeline)",
                plugin.path().display(),
                plugin.sha256()
            )
        },
    );
    let crate::keyset::RowPage { rows, unreadable, .. } = match source.read_page(&table.source, None, SAMPLE_ROWS).await
    {
        Ok(page) => page,
        Err(e) => return items.push(format!("sample {name}"), Level::Warn, format!("cannot read a sample: {e:#}")),
    };
    let (p, def, n) = (plugin.clone(), table.source.clone(), rows.len());
    let outcomes = tokio::task::spawn_blocking(move || {
        let mut instance = p.instantiate()?;
        instance.describe(&def)?;
        instance.transform_batch(&def.name.to_string(), &rows)
    })
    .await;
    let outcomes = match outcomes {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return items.push(format!("sample {name}"), Level::Fail, e.to_string()),
        Err(e) => return items.push(format!("sample {name}"), Level::Fail, e.to_string()),
    };
    let mut reasons: Vec<String> = unreadable.iter().map(|u| format!("unreadable: {}", u.reason)).collect();
    let mut fatal = None;
    for o in outcomes {
        match o {
            crate::plugin::RowOutcome::Rows(_) => {}
            crate::plugin::RowOutcome::Rejected(r) => reasons.push(r),
            crate::plugin::RowOutcome::Trapped(r) => reasons.push(format!("trapped: {r}")),
            crate::plugin::RowOutcome::Fatal(r) => fatal = Some(r),
        }
    }
    let total = n + unreadable.len();
    if let Some(reason) = fatal {
        return items.push(
            format!("sample {name}"),
            Level::Fail,
            format!("the plugin stops the run (fatal) within the first {total} rows: {reason}"),
        );
    }
    if reasons.is_empty() {
        return items.push(format!("sample {name}"), Level::Ok, format!("the first {total} rows all pass the plugin"));
    }
    let mut counted: Vec<(String, usize)> = Vec::new();
    for r in &reasons {
        match counted.iter_mut().find(|(seen, _)| seen == r) {
            Some((_, n)) => *n += 1,
            None => counted.push((r.clone(), 1)),
        }
    }
    let shown: Vec<String> = counted.iter().take(3).map(|(r, n)| format!("{n} × {r}")).collect();
    items.push(
        format!("sample {name}"),
        Level::Warn,
        format!(
            "{} of the first {total} rows would be dead letters ({}{}); `ferry dlq list` shows them after the run",
            reasons.len(),
            shown.join("; "),
            if counted.len() > 3 { "; …" } else { "" }
        ),
    );
}

/// The pipeline's last run, if one is left to resume.
async fn previous_run(settings: &Settings, target: &mut dyn crate::engines::RowTarget, items: &mut Items) {
    match target.latest_run(&settings.pipeline).await {
        Ok(Some(run)) if run.status.resumable() => items.push(
            "previous run",
            Level::Warn,
            format!("run {} is {}: `ferry migrate` resumes it", run.run_id, run.status.as_str()),
        ),
        Ok(Some(run)) => {
            items.push("previous run", Level::Ok, format!("last run {} is {}", run.run_id, run.status.as_str()))
        }
        Ok(None) => items.push("previous run", Level::Ok, format!("no run of pipeline {} yet", settings.pipeline)),
        Err(e) => items.push("previous run", Level::Warn, format!("{e:#}")),
    }
}

/// Whether a PostgreSQL connection is encrypted and the server verified (as
/// the server's `pg_stat_ssl` reports it); a warning when a connection over
/// the network is not both.
async fn check_transport(name: &'static str, url: &crate::db::DbUrl, role: &str, items: &mut Items) {
    match engines::transport(url, role).await {
        Ok(None) => {}
        Ok(Some(transport)) => {
            let (warn, mut detail) = transport.assess();
            if role == "source" {
                detail.push_str(" (ferry sync's replication connection uses the same settings)");
            }
            items.push(name, if warn { Level::Warn } else { Level::Ok }, detail);
        }
        Err(e) => items.push(name, Level::Fail, format!("{e:#}")),
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
