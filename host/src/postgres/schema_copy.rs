//! [`SchemaCopy`] between PostgreSQL databases, from pg_dump's archive
//! ([`super::dump`]): the plan reads both catalogs once; each phase opens
//! its own connections, so loaded tables build their indexes in the copy
//! workers while others still load.

use std::collections::{HashMap, HashSet};

use super::dump::{self, Dump, Entry, Scope, Section, Tools};
use crate::db::{DbUrl, TableName, quote_literal};
use crate::error::Error;
use crate::schema_copy::{SchemaCopy, SchemaObject, SchemaPlan};
use async_trait::async_trait;

/// Entry kinds a loaded table builds on its own, right after its rows.
const TABLE_BUILDS: [&str; 3] = ["INDEX", "CONSTRAINT", "CHECK CONSTRAINT"];

pub struct PgSchemaCopy {
    source: DbUrl,
    target: DbUrl,
    /// Target connections the builds have used, kept for the next ones
    /// (connecting with TLS costs ~0.1 s, once per table otherwise).
    idle: std::sync::Mutex<Vec<sqlx::PgConnection>>,
    dump: Dump,
    /// The selected entries the target lacks, in restore order.
    entries: Vec<usize>,
    /// Per table (schema, name) of the pipeline outside any partition tree:
    /// its own post-data entries.
    by_table: HashMap<(String, String), Vec<usize>>,
    /// Every selected sequence, also those the target had (moved forward).
    sequences: Vec<usize>,
    /// Every selected entry, also those the target had.
    selected: Vec<usize>,
    /// The table each post-data entry belongs to (none: a comment on a view…).
    post_owner: HashMap<usize, (String, String)>,
    /// The source catalog's dependencies and names.
    deps: dump::Dependencies,
    /// The pipeline's leaves under each partitioned table.
    leaves: HashMap<(String, String), Vec<(String, String)>>,
    /// Foreign keys between tables outside any partition tree, each with
    /// the tables it needs: built as soon as the run has built those, while
    /// other tables still copy.
    early: Vec<(usize, Vec<(String, String)>)>,
    /// The tables [`SchemaCopy::build_table`] built, and the early foreign
    /// keys taken by a build.
    built: std::sync::Mutex<Built>,
    plan: SchemaPlan,
}

impl PgSchemaCopy {
    /// Plans the copy of the schema around `tables` (source names, the
    /// same in the target) from `source` into `target`.
    pub async fn plan(
        source: &DbUrl,
        target: &DbUrl,
        tables: &[TableName],
        scope: Scope,
        tools: &Tools,
    ) -> anyhow::Result<PgSchemaCopy> {
        // pg_dump runs while the source's catalog is read.
        let (dump, catalog) = tokio::join!(dump::take(source, tools), read_catalog(source, tables));
        let (dump, catalog) = (dump?, catalog?);
        let Catalog { server, pipeline, partitioned, leaves, deps, mut problems } = catalog;
        if (dump.version as i32) < server {
            problems.push(format!(
                "pg_dump {} cannot read a PostgreSQL {server} server: install the PostgreSQL {server} client (or newer) \
                 and point [schema] bin_dir at it",
                dump.version
            ));
        }
        let mut tgt = super::connect(target, "target").await?;
        let mut existing = HashSet::new();
        for entry in dump.entries.iter().filter(|e| e.kind == "TABLE" && pipeline.contains(&e.oid)) {
            let name = TableName { schema: entry.schema.clone(), name: entry.tag.clone() };
            if super::exists(&mut tgt, &name.quoted())
                .await
                .map_err(|e| Error::driver("looking for the pipeline's tables in the target", &e))?
            {
                existing.insert(entry.oid);
            }
        }
        let selection = dump::select(&dump, &deps, &pipeline, &existing, scope);
        let present = dump::present(&mut tgt, &dump, &deps, &selection).await?;
        // What the target holds before the data stays; what comes after the
        // data is decided per table when it is built (a table the run did
        // not make keeps what it has).
        let entries: Vec<usize> = selection
            .entries
            .iter()
            .copied()
            .filter(|i| dump.entries[*i].section == Section::Post || !present.contains(i))
            .collect();

        // What the target must allow.
        let chosen = || entries.iter().map(|&i| &dump.entries[i]);
        for extension in chosen().filter(|e| e.kind == "EXTENSION") {
            let available: Option<(bool, bool)> = sqlx::query_as(
                "SELECT v.trusted, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) \
                 FROM pg_available_extensions a JOIN pg_available_extension_versions v \
                   ON v.name = a.name AND v.version = a.default_version WHERE a.name = $1",
            )
            .bind(&extension.tag)
            .fetch_optional(&mut tgt)
            .await
            .map_err(|e| Error::driver("reading the target's available extensions", &e))?;
            match available {
                None => problems.push(format!(
                    "extension {} is used by the pipeline's tables but is not available on the target server: \
                     install its package there (for contrib extensions, postgresql-contrib), or leave out the \
                     tables that use it",
                    extension.tag
                )),
                Some((false, false)) => problems.push(format!(
                    "extension {} can only be created by a superuser on the target: create it there first \
                     (CREATE EXTENSION {}) or run ferry as a superuser",
                    extension.tag, extension.tag
                )),
                Some(_) => {}
            }
        }
        if tools.owners {
            let mut roles: Vec<String> =
                chosen().map(|e| e.owner.clone()).filter(|o| !o.is_empty() && o != "-").collect();
            roles.sort();
            roles.dedup();
            let missing: Vec<String> = sqlx::query_scalar(
                "SELECT r FROM unnest($1::text[]) r WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r)",
            )
            .bind(&roles)
            .fetch_all(&mut tgt)
            .await
            .map_err(|e| Error::driver("reading the target's roles", &e))?;
            if !missing.is_empty() {
                problems.push(format!(
                    "role(s) {} own objects of the source but do not exist in the target: create them there \
                     (pg_dumpall --roles-only shows them), or let ferry's role own everything: [schema] owners = false",
                    missing.join(", ")
                ));
            }
        }
        let mut schemas: Vec<&str> =
            chosen().filter(|e| e.kind != "SCHEMA").filter_map(|e| e.schema.as_deref()).collect();
        schemas.sort_unstable();
        schemas.dedup();
        let new_schemas: HashSet<&str> = chosen().filter(|e| e.kind == "SCHEMA").map(|e| e.tag.as_str()).collect();
        if !new_schemas.is_empty() {
            let may: bool = sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'CREATE')")
                .fetch_one(&mut tgt)
                .await
                .map_err(|e| Error::driver("reading the target's privileges", &e))?;
            if !may {
                problems.push(format!(
                    "the target role may not create schemas ({}): GRANT CREATE ON DATABASE to it, or create them first",
                    new_schemas.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        for schema in schemas.iter().filter(|s| !new_schemas.contains(*s)) {
            let may: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT has_schema_privilege(to_regnamespace({})::oid, 'CREATE')",
                quote_literal(&crate::db::quote_ident(schema))
            )))
            .fetch_one(&mut tgt)
            .await
            .map_err(|e| Error::driver("reading the target's privileges", &e))?;
            if may == Some(false) {
                problems.push(format!(
                    "the target role may not create objects in schema {schema}: GRANT CREATE ON SCHEMA {schema} to it"
                ));
            }
        }

        // Each post-data entry's table: a table outside any partition tree
        // builds its keys and indexes as soon as its rows are in; the rest
        // waits for every table.
        let owners = deps.owners();
        let table_names: HashMap<u32, (String, String)> = dump
            .entries
            .iter()
            .filter(|e| e.kind == "TABLE" && e.catalog != 0)
            .map(|e| (e.oid, (e.schema.clone().unwrap_or_default(), e.tag.clone())))
            .collect();
        let mut by_table: HashMap<(String, String), Vec<usize>> = HashMap::new();
        let mut post_owner: HashMap<usize, (String, String)> = HashMap::new();
        for &i in &entries {
            let entry = &dump.entries[i];
            if entry.section != Section::Post {
                continue;
            }
            let of = match entry.catalog {
                0 => dump::about(&dump, entry).map(|j| &dump.entries[j]),
                _ => Some(entry),
            };
            let Some(table) = of.and_then(|o| owners.get(&(o.catalog, o.oid))) else { continue };
            let Some(name) = table_names.get(table) else { continue };
            post_owner.insert(i, name.clone());
            if TABLE_BUILDS.contains(&entry.kind.as_str()) && !partitioned.contains(table) {
                by_table.entry(name.clone()).or_default().push(i);
            }
        }
        let single: HashSet<&(String, String)> =
            pipeline.iter().filter(|oid| !partitioned.contains(oid)).filter_map(|oid| table_names.get(oid)).collect();
        let early = entries
            .iter()
            .map(|&i| (i, &dump.entries[i]))
            .filter(|(_, e)| e.section == Section::Post && e.kind == "FK CONSTRAINT" && e.catalog != 0)
            .filter_map(|(i, e)| {
                let needs: Option<Vec<(String, String)>> = deps
                    .tables_of((e.catalog, e.oid))
                    .iter()
                    .map(|t| table_names.get(t).filter(|n| single.contains(n)).cloned())
                    .collect();
                needs.filter(|n| !n.is_empty()).map(|n| (i, n))
            })
            .collect();
        let label = |i: &usize| dump.entries[*i].label();
        let object = |i: &usize| {
            let e = &dump.entries[*i];
            let name = match &e.schema {
                Some(schema) => format!("{schema}.{}", e.tag),
                None => e.tag.clone(),
            };
            SchemaObject { kind: e.kind.clone(), name }
        };
        tracing::debug!(
            pipeline = pipeline.len(),
            selected = selection.entries.len(),
            present = present.len(),
            chosen = entries.len(),
            "schema copy planned: {:?}",
            entries.iter().map(label).collect::<Vec<_>>()
        );
        let plan = SchemaPlan {
            creates: chosen()
                .filter(|e| e.kind == "TABLE" && pipeline.contains(&e.oid))
                .map(|e| TableName { schema: e.schema.clone(), name: e.tag.clone() })
                .collect(),
            before: entries.iter().filter(|&&i| dump.entries[i].section == Section::Pre).map(object).collect(),
            after: entries.iter().filter(|&&i| dump.entries[i].section == Section::Post).map(object).collect(),
            present: present.len(),
            left_out: selection.left_out.clone(),
            problems,
        };
        let sequences = selection.entries.iter().copied().filter(|&i| dump.entries[i].kind == "SEQUENCE").collect();
        let selected = selection.entries.clone();
        Ok(PgSchemaCopy {
            source: source.clone(),
            target: target.clone(),
            idle: std::sync::Mutex::new(Vec::new()),
            dump,
            entries,
            by_table,
            sequences,
            selected,
            post_owner,
            leaves,
            early,
            built: std::sync::Mutex::new(Default::default()),
            deps,
            plan,
        })
    }

    /// A target connection: one a build left, or a new one.
    async fn connection(&self) -> anyhow::Result<sqlx::PgConnection> {
        let idle = self.idle.lock().expect("idle connections").pop();
        // One left idle while long copies ran may have been closed since.
        if let Some(mut conn) = idle
            && sqlx::Connection::ping(&mut conn).await.is_ok()
        {
            return Ok(conn);
        }
        super::connect(&self.target, "target").await
    }

    fn chosen(&self, section: Section) -> Vec<&Entry> {
        self.entries.iter().map(|&i| &self.dump.entries[i]).filter(|e| e.section == section).collect()
    }
}

/// What the builds after each table have done: the tables built, the
/// early foreign keys taken (by entry).
type Built = (HashSet<(String, String)>, HashSet<usize>);

/// What the plan reads of the source's catalog beside pg_dump's archive.
struct Catalog {
    server: i32,
    /// The pipeline's tables, their partitions and ancestors (OIDs).
    pipeline: HashSet<u32>,
    /// Those in a partition tree.
    partitioned: HashSet<u32>,
    /// The pipeline's leaves under each partitioned table.
    leaves: HashMap<(String, String), Vec<(String, String)>>,
    deps: dump::Dependencies,
    problems: Vec<String>,
}

async fn read_catalog(source: &DbUrl, tables: &[TableName]) -> anyhow::Result<Catalog> {
    let mut problems = Vec::new();
    let mut src = super::connect(source, "source").await?;
    let server: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int / 10000")
        .fetch_one(&mut src)
        .await
        .map_err(|e| Error::driver("reading the source's version", &e))?;
    // The pipeline's tables, each partition with its ancestors (a
    // partitioned table's leaves are copied as tables of their own).
    let names: Vec<String> = tables.iter().map(TableName::quoted).collect();
    let trees: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT x.relid::oid::int8, (SELECT count(*) > 1 FROM pg_partition_tree(pg_partition_root(x.relid))) \
         FROM (SELECT to_regclass(n) AS relid FROM unnest($1::text[]) n \
               UNION SELECT t.relid FROM unnest($1::text[]) n, pg_partition_tree(to_regclass(n)) t \
               UNION SELECT a.relid FROM unnest($1::text[]) n, pg_partition_ancestors(to_regclass(n)) a) x",
    )
    .bind(&names)
    .fetch_all(&mut src)
    .await
    .map_err(|e| Error::driver("reading the pipeline's partitions", &e))?;
    let pipeline: HashSet<u32> = trees.iter().map(|t| t.0 as u32).collect();
    let partitioned: HashSet<u32> = trees.iter().filter(|t| t.1).map(|t| t.0 as u32).collect();
    // A partitioned table is made by a run that makes one of its leaves.
    let ancestry: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT an.nspname::text, ac.relname::text, ln.nspname::text, lc.relname::text \
         FROM pg_class lc JOIN pg_namespace ln ON ln.oid = lc.relnamespace, \
              pg_partition_ancestors(lc.oid) a JOIN pg_class ac ON ac.oid = a.relid \
              JOIN pg_namespace an ON an.oid = ac.relnamespace \
         WHERE lc.oid::int8 = ANY($1) AND lc.relispartition AND a.relid <> lc.oid",
    )
    .bind(pipeline.iter().map(|&o| o as i64).collect::<Vec<_>>())
    .fetch_all(&mut src)
    .await
    .map_err(|e| Error::driver("reading the pipeline's partitions", &e))?;
    let mut leaves: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (schema, parent, leaf_schema, leaf) in ancestry {
        leaves.entry((schema, parent)).or_default().push((leaf_schema, leaf));
    }
    let orphans: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.oid::regclass::text, p.oid::regclass::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
         WHERE NOT c.relispartition AND c.oid::int8 = ANY($1) AND NOT p.oid::int8 = ANY($1)",
    )
    .bind(pipeline.iter().map(|&o| o as i64).collect::<Vec<_>>())
    .fetch_all(&mut src)
    .await
    .map_err(|e| Error::driver("reading the pipeline's inheritance", &e))?;
    for (child, parent) in orphans {
        problems
            .push(format!("table {child} inherits from {parent}, which the pipeline leaves out: include {parent} too"));
    }
    let deps = dump::dependencies(&mut src).await?;
    Ok(Catalog { server, pipeline, partitioned, leaves, deps, problems })
}

async fn analyze(conn: &mut sqlx::PgConnection, table: &TableName) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ANALYZE {}", table.quoted())))
        .execute(&mut *conn)
        .await
        .map_err(|e| Error::driver(format!("analyzing {table}"), &e))?;
    Ok(())
}

#[async_trait]
impl SchemaCopy for PgSchemaCopy {
    fn plan(&self) -> &SchemaPlan {
        &self.plan
    }

    async fn create_before_data(&self, run_id: &str) -> anyhow::Result<()> {
        let mut conn = self.connection().await?;
        dump::apply_pre_data(&mut conn, &self.chosen(Section::Pre), run_id).await?;
        self.idle.lock().expect("idle connections").push(conn);
        Ok(())
    }

    async fn build_table(&self, table: &TableName) -> anyhow::Result<()> {
        let key = (table.schema.clone().unwrap_or_else(|| "public".into()), table.name.clone());
        let mut conn = self.connection().await?;
        if let Some(entries) = self.by_table.get(&key) {
            let entries: Vec<&Entry> = entries.iter().map(|&i| &self.dump.entries[i]).collect();
            dump::apply_post_data(&mut conn, &entries, &self.deps).await?;
            // Statistics now: the foreign keys validated after are planned
            // with them (without, a join over millions of rows may be
            // planned as nested loops).
            analyze(&mut conn, table).await?;
        }
        // The foreign keys whose tables are all built now: validated while
        // other tables still copy, rather than after the last one.
        let ready: Vec<&Entry> = {
            let mut built = self.built.lock().expect("built tables");
            built.0.insert(key);
            let ready: Vec<usize> = self
                .early
                .iter()
                .filter(|(i, needs)| !built.1.contains(i) && needs.iter().all(|t| built.0.contains(t)))
                .map(|(i, _)| *i)
                .collect();
            built.1.extend(&ready);
            ready.iter().map(|&i| &self.dump.entries[i]).collect()
        };
        if !ready.is_empty() {
            dump::apply_post_data(&mut conn, &ready, &self.deps).await?;
        }
        self.idle.lock().expect("idle connections").push(conn);
        Ok(())
    }

    async fn build_after_data(&self, made: &[TableName]) -> anyhow::Result<()> {
        self.idle.lock().expect("idle connections").clear();
        let made: HashSet<(String, String)> =
            made.iter().map(|t| (t.schema.clone().unwrap_or_else(|| "public".into()), t.name.clone())).collect();
        let mut target = super::connect(&self.target, "target").await?;
        let mut source = super::connect(&self.source, "source").await?;
        // The tables no build_table analyzed (partitions), before their
        // foreign keys are validated.
        for (schema, name) in made.iter().filter(|t| !self.by_table.contains_key(*t)) {
            analyze(&mut target, &TableName { schema: Some(schema.clone()), name: name.clone() }).await?;
        }
        let sequences: Vec<&Entry> = self.sequences.iter().map(|&i| &self.dump.entries[i]).collect();
        dump::copy_sequences(&mut source, &mut target, &sequences).await?;
        let post: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|&&i| self.dump.entries[i].section == Section::Post)
            .filter(|i| {
                self.post_owner.get(i).is_none_or(|table| {
                    made.contains(table) || self.leaves.get(table).is_some_and(|l| l.iter().any(|l| made.contains(l)))
                })
            })
            .map(|&i| &self.dump.entries[i])
            .collect();
        dump::apply_post_data(&mut target, &post, &self.deps).await?;
        // Every selected one (one the target held may never have been
        // populated): its rows are the source's rows' consequence.
        let views: Vec<&Entry> =
            self.selected.iter().map(|&i| &self.dump.entries[i]).filter(|e| e.kind == "MATERIALIZED VIEW").collect();
        dump::refresh_materialized_views(&mut target, &views).await
    }
}
