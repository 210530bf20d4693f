//! `ferry check`: the seed's pre-migration checklist, each item answered
//! `ok`, `warn` or `fail` with a reason.

use serde::Serialize;

use crate::config::OnConflict;
use crate::engines::{self, Target};
use crate::plugin::Plugin;
use crate::settings::Settings;
use crate::shape;
use crate::source::SnapshotSource;

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

/// Runs every check it can: a failing connection skips the checks that need
/// it, and says so.
pub async fn check(settings: &Settings) -> CheckReport {
    let mut items = Items(Vec::new());

    let Some(plugin_settings) = settings.plugin.as_ref() else {
        items.push("plugin", Level::Fail, "plugin.path is required: set it in the file or pass --plugin");
        return CheckReport { ok: false, items: items.0 };
    };
    let path = plugin_settings.path.clone();
    let options = plugin_settings.options.clone();
    match tokio::task::spawn_blocking(move || Plugin::load(&path, &options)).await {
        Ok(Ok(plugin)) => {
            let pinned = plugin_settings.options.pinned_sha256.is_some();
            items.push(
                "plugin",
                if pinned { Level::Ok } else { Level::Warn },
                if pinned {
                    format!("{} loads and matches its pin sha256 {}", plugin.path().display(), plugin.sha256())
                } else {
                    format!(
                        "{} loads; not pinned: set plugin.sha256 = \"{}\"",
                        plugin.path().display(),
                        plugin.sha256()
                    )
                },
            );
        }
        Ok(Err(e)) => items.push("plugin", Level::Fail, e.to_string()),
        Err(e) => items.push("plugin", Level::Fail, e.to_string()),
    }
    grants_item(&mut items, plugin_settings.options.limits.grants);

    let mut source_size = None;
    match engines::open_source(&settings.source).await {
        Err(e) => items.push("source connectivity", Level::Fail, format!("{e:#}")),
        Ok(mut source) => {
            items.push("source connectivity", Level::Ok, format!("connected to {}", settings.source.url));
            check_transport("source TLS", &settings.source.url, "source", &mut items).await;
            source_size = check_source(settings, source.as_mut(), &mut items).await;
        }
    }

    match engines::open_target(settings).await {
        Err(e) => items.push("target connectivity", Level::Fail, format!("{e:#}")),
        Ok(mut target) => {
            items.push("target connectivity", Level::Ok, format!("connected to {}", settings.target.url));
            check_transport("target TLS", &settings.target.url, "target", &mut items).await;
            check_target(settings, target.as_mut(), source_size, &mut items).await;
        }
    }

    let ok = items.0.iter().all(|i| i.level != Level::Fail);
    CheckReport { ok, items: items.0 }
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
    let target = match engines::open_row_target(&settings.target.url).await {
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
            Ok(plan) => {
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
                    if creates {
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
                }
            }
        }
    }
    let ok = items.0.iter().all(|i| i.level != Level::Fail);
    CheckReport { ok, items: items.0 }
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

/// Source checks; returns the table's size for the disk check.
async fn check_source(settings: &Settings, source: &mut dyn SnapshotSource, items: &mut Items) -> Option<u64> {
    let table = &settings.source.table;
    match source.shape().await {
        Err(e) => {
            items.push("source table", Level::Fail, format!("{e:#}"));
            return None;
        }
        Ok(None) => {
            items.push("source table", Level::Fail, format!("table {table} does not exist; check source.table"));
            return None;
        }
        Ok(Some(shape)) => {
            let problems = shape::mismatches(&shape, &shape::SOURCE_COLUMNS, "id");
            if problems.is_empty() {
                items.push(
                    "source table",
                    Level::Ok,
                    format!("{table} has the columns transform-user reads and PRIMARY KEY (id)"),
                );
            } else {
                items.push("source table", Level::Fail, format!("{table}: {}", problems.join("; ")));
            }
        }
    }
    match source.can_read().await {
        Ok(true) => items.push("source privileges", Level::Ok, format!("may SELECT from {table}")),
        Ok(false) => items.push(
            "source privileges",
            Level::Fail,
            format!("the source role may not SELECT from {table}; GRANT SELECT"),
        ),
        Err(e) => items.push("source privileges", Level::Warn, format!("cannot tell: {e:#}")),
    }
    match source.count().await {
        Ok(n) => items.push("source rows", Level::Ok, format!("{n} rows in {table}")),
        Err(e) => items.push("source rows", Level::Fail, format!("{e:#}")),
    }
    match source.integrity().await {
        Err(e) => items.push("source integrity", Level::Warn, format!("cannot check: {e:#}")),
        Ok(i) => {
            if i.duplicate_keys > 0 {
                items.push(
                    "source keys",
                    Level::Fail,
                    format!("{} duplicate id values: keyset extraction needs a unique key", i.duplicate_keys),
                );
            } else {
                items.push("source keys", Level::Ok, "id is unique");
            }
            let nulls = i.null_names + i.null_emails + i.null_created_at;
            if nulls > 0 {
                items.push(
                    "source NULLs",
                    Level::Warn,
                    format!(
                        "{} NULL name, {} NULL email, {} NULL created_at: the plugin rejects these rows (they go to the dead letters)",
                        i.null_names, i.null_emails, i.null_created_at
                    ),
                );
            } else {
                items.push("source NULLs", Level::Ok, "no NULL name, email or created_at");
            }
            if i.duplicate_emails > 0 {
                items.push(
                    "source duplicates",
                    Level::Warn,
                    format!(
                        "{} emails repeat case-insensitively: a UNIQUE index on the target's email would reject them",
                        i.duplicate_emails
                    ),
                );
            } else {
                items.push("source duplicates", Level::Ok, "emails are unique case-insensitively");
            }
        }
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
    source.size_bytes().await.ok().flatten()
}

async fn check_target(settings: &Settings, target: &mut dyn Target, source_size: Option<u64>, items: &mut Items) {
    let table = &settings.target.table;
    let mut exists = false;
    match target.shape().await {
        Err(e) => items.push("target table", Level::Fail, format!("{e:#}")),
        Ok(None) if settings.create_table => {
            items.push("target table", Level::Ok, format!("{table} does not exist; it will be created"))
        }
        Ok(None) => items.push(
            "target table",
            Level::Fail,
            format!("{table} does not exist; create it or set target.create_table = true"),
        ),
        Ok(Some(shape)) => {
            exists = true;
            let problems = shape::mismatches(&shape, &shape::TARGET_COLUMNS, "id");
            if problems.is_empty() {
                items.push("target table", Level::Ok, format!("{table} matches the plugin's output (new-user)"));
            } else {
                items.push(
                    "target table",
                    Level::Fail,
                    format!("{table} does not match the plugin's output: {}", problems.join("; ")),
                );
            }
        }
    }
    match target.privileges().await {
        Ok(Ok(())) => {
            items.push("target privileges", Level::Ok, "may write the target table and the ferry control tables")
        }
        Ok(Err(missing)) => items.push("target privileges", Level::Fail, missing),
        Err(e) => items.push("target privileges", Level::Warn, format!("cannot tell: {e:#}")),
    }
    match (target.free_bytes().await.ok().flatten(), source_size) {
        (Some(free), Some(size)) if free < size => items.push(
            "target disk",
            Level::Fail,
            format!("{} free on the target, the source table takes {}: not enough room", human(free), human(size)),
        ),
        (Some(free), Some(size)) if free < size.saturating_mul(2) => items.push(
            "target disk",
            Level::Warn,
            format!("{} free on the target, less than twice the source's {}", human(free), human(size)),
        ),
        (Some(free), Some(size)) => items.push(
            "target disk",
            Level::Ok,
            format!("{} free on the target for a {} source table", human(free), human(size)),
        ),
        _ => items.push(
            "target disk",
            Level::Warn,
            "cannot measure free disk on the target (remote server or no permission)",
        ),
    }
    if exists {
        match target.count_rows().await {
            Ok(0) => items.push("target rows", Level::Ok, format!("{table} is empty")),
            Ok(n) if settings.on_conflict == OnConflict::Error => items.push(
                "target rows",
                Level::Warn,
                format!(
                    "{table} already has {n} rows; a conflicting key will stop the run (target.on_conflict = \"error\")"
                ),
            ),
            Ok(n) => items.push(
                "target rows",
                Level::Ok,
                format!("{table} already has {n} rows; conflicts: {:?}", settings.on_conflict).to_lowercase(),
            ),
            Err(e) => items.push("target rows", Level::Warn, format!("{e:#}")),
        }
    }
    match target.latest_run(&settings.pipeline).await {
        Ok(Some(run)) if run.status.resumable() => items.push(
            "previous run",
            Level::Warn,
            format!(
                "run {} is {} at key {:?}: `ferry migrate` resumes it",
                run.run_id,
                run.status.as_str(),
                run.last_key
            ),
        ),
        Ok(Some(run)) => {
            items.push("previous run", Level::Ok, format!("last run {} is {}", run.run_id, run.status.as_str()))
        }
        Ok(None) => items.push("previous run", Level::Ok, format!("no run of pipeline {} yet", settings.pipeline)),
        Err(e) => items.push("previous run", Level::Warn, format!("{e:#}")),
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
