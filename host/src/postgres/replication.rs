//! PostgreSQL as a replication source: the catalog half
//! ([`crate::replication::ReplicationSource`] on a query connection) and the
//! replication connection (`pgwire-replication`) with the same TLS and
//! session settings as every other connection ferry opens.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, TlsConfig};
use sqlx::postgres::PgConnection;

use crate::db::{DbUrl, TableName, quote_ident};
use crate::error::Error;
use crate::replication::{ReplicationSource, SlotStatus};
use crate::tls::{FixParam, PgTls, SslMode};

/// A source's replication catalog over a query connection.
pub struct PgReplication {
    conn: PgConnection,
    url: DbUrl,
}

impl PgReplication {
    pub async fn connect(url: &DbUrl) -> anyhow::Result<PgReplication> {
        Ok(PgReplication { conn: super::connect(url, "source").await?, url: url.clone() })
    }

    fn err(&self, doing: String, e: &sqlx::Error) -> anyhow::Error {
        Error::driver(format!("{doing} in {}", self.url), e)
    }
}

/// The DDL capture: three event triggers and their functions in schema
/// `ferry` of the source. `table_rewrite` notes (transaction-locally) which
/// tables a statement rewrote; `ddl_command_end` writes one transactional
/// logical message with every ordinary or partitioned table the statement
/// touched and its columns after it (each with its `attnum`, which a rename
/// keeps), in the same shape as the catalog reading of
/// `PgTables::describe`, with its primary key, its oid and, for a
/// partition, its parent and bounds; `sql_drop` writes one with the tables
/// a statement dropped. A table a statement creates is first added to each
/// publication of `ferry.capture_publish` whose patterns match it (or an
/// ancestor of it): in the same transaction, so its first rows are in the
/// stream. SECURITY DEFINER: the application's role need not be allowed to
/// write logical messages nor alter publications; a failure to read the
/// catalog or to publish is a warning, never the application's error. The
/// message itself is written outside any subtransaction of the function:
/// logical decoding merges a subtransaction's changes with its parent's by
/// LSN, and a message written in one came after the next change of the
/// statement's transaction (`ALTER …; INSERT …` delivered the INSERT
/// first).
const DDL_CAPTURE: &str = r#"
CREATE SCHEMA IF NOT EXISTS ferry;
CREATE TABLE IF NOT EXISTS ferry.capture_publish (
    publication text PRIMARY KEY,
    include text[] NOT NULL,
    exclude text[] NOT NULL
);
CREATE OR REPLACE FUNCTION ferry.capture_rewrite() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $capture$
BEGIN
    PERFORM set_config('ferry.rewritten',
        coalesce(current_setting('ferry.rewritten', true), '') || ',' || pg_event_trigger_table_rewrite_oid() || ',', true);
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'ferry DDL capture: %', SQLERRM;
END
$capture$;
CREATE OR REPLACE FUNCTION ferry.capture_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $capture$
DECLARE
    changed jsonb;
    enums jsonb;
    created record;
    publication text;
BEGIN
  BEGIN
    FOR created IN
        SELECT DISTINCT c.oid, n.nspname, c.relname FROM pg_event_trigger_ddl_commands() e
        JOIN pg_class c ON c.oid = e.objid AND e.classid = 'pg_class'::regclass
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE e.command_tag IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO') AND c.relkind = 'r'
          AND n.nspname <> 'ferry'
    LOOP
        FOR publication IN
            SELECT p.publication FROM ferry.capture_publish p
            WHERE EXISTS (
                SELECT 1 FROM (SELECT created.oid AS relid UNION SELECT relid FROM pg_partition_ancestors(created.oid)) a
                JOIN pg_class ac ON ac.oid = a.relid JOIN pg_namespace an ON an.oid = ac.relnamespace
                WHERE an.nspname || '.' || ac.relname ~ ANY (p.include)
                  AND NOT (an.nspname || '.' || ac.relname ~ ANY (p.exclude)))
        LOOP
            BEGIN
                EXECUTE format('ALTER PUBLICATION %I ADD TABLE %I.%I', publication, created.nspname, created.relname);
            EXCEPTION WHEN OTHERS THEN
                RAISE WARNING 'ferry DDL capture: publishing %.%: %', created.nspname, created.relname, SQLERRM;
            END;
        END LOOP;
    END LOOP;
    SELECT coalesce(jsonb_agg(t ORDER BY t.oid), '[]'::jsonb) INTO changed FROM (
        SELECT DISTINCT c.oid::int8 AS oid, n.nspname::text AS schema, c.relname::text AS name,
            strpos(coalesce(current_setting('ferry.rewritten', true), ''), ',' || c.oid || ',') > 0 AS rewritten,
            c.relkind = 'p' AS partitioned,
            (SELECT coalesce(jsonb_agg(jsonb_build_object(
                    'number', a.attnum, 'name', a.attname::text, 'type_oid', a.atttypid::int8,
                    'sql_type', format_type(a.atttypid, a.atttypmod), 'not_null', a.attnotnull,
                    'base', bt.typname::text, 'category', bt.typcategory::text, 'elem', et.typname::text,
                    'identity', a.attidentity::text, 'generated', a.attgenerated::text,
                    'default', pg_get_expr(d.adbin, d.adrelid)) ORDER BY a.attnum), '[]'::jsonb)
             FROM pg_attribute a
             JOIN pg_type ty ON ty.oid = a.atttypid
             JOIN pg_type bt ON bt.oid = CASE WHEN ty.typtype = 'd' THEN ty.typbasetype ELSE ty.oid END
             LEFT JOIN pg_type et ON et.oid = bt.typelem AND bt.typcategory = 'A'
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS columns,
            (SELECT coalesce(jsonb_agg(a.attname::text ORDER BY k.ord), '[]'::jsonb)
             FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = c.oid AND i.indisprimary) AS key,
            (SELECT jsonb_build_object('schema', pn.nspname::text, 'name', pc.relname::text,
                    'bound', pg_get_expr(c.relpartbound, c.oid))
             FROM pg_inherits h JOIN pg_class pc ON pc.oid = h.inhparent
             JOIN pg_namespace pn ON pn.oid = pc.relnamespace
             WHERE h.inhrelid = c.oid AND c.relispartition) AS partition_of,
            (SELECT coalesce(jsonb_agg(jsonb_build_object('name', ic.relname::text,
                    'def', pg_get_indexdef(i.indexrelid)) ORDER BY ic.relname), '[]'::jsonb)
             FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
             WHERE i.indrelid = c.oid AND NOT i.indisprimary AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                 WHERE k.conrelid = c.oid AND k.conindid = i.indexrelid AND k.contype IN ('u', 'x'))) AS indexes,
            (SELECT coalesce(jsonb_agg(jsonb_build_object('name', k.conname::text,
                    'def', pg_get_constraintdef(k.oid)) ORDER BY k.conname), '[]'::jsonb)
             FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype IN ('c', 'f', 'u', 'x')) AS constraints
        FROM pg_event_trigger_ddl_commands() e
        -- An index's statement (CREATE INDEX) is its table's.
        JOIN pg_class c ON e.classid = 'pg_class'::regclass
            AND c.oid = coalesce((SELECT x.indrelid FROM pg_index x WHERE x.indexrelid = e.objid), e.objid)
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname <> 'ferry') t;
    -- Enum types made or given values: their labels, in sort order.
    SELECT coalesce(jsonb_agg(jsonb_build_object('schema', tn.nspname::text, 'name', ty.typname::text,
            'labels', (SELECT jsonb_agg(en.enumlabel::text ORDER BY en.enumsortorder)
                       FROM pg_enum en WHERE en.enumtypid = ty.oid))), '[]'::jsonb)
    INTO enums FROM (SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
                     WHERE classid = 'pg_type'::regclass) e
    JOIN pg_type ty ON ty.oid = e.objid AND ty.typtype = 'e'
    JOIN pg_namespace tn ON tn.oid = ty.typnamespace;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'ferry DDL capture: %', SQLERRM;
    changed := NULL;
    enums := NULL;
  END;
    PERFORM set_config('ferry.rewritten', '', true);
    -- Outside the block above (a subtransaction): a message of another
    -- subtransaction is merged with the statement's later changes by LSN,
    -- and can come after the first of them.
    IF jsonb_array_length(changed) > 0 OR jsonb_array_length(enums) > 0 THEN
        PERFORM pg_logical_emit_message(true, 'ferry.ddl',
            jsonb_build_object('tag', tg_tag, 'tables', coalesce(changed, '[]'::jsonb),
                               'enums', coalesce(enums, '[]'::jsonb))::text);
    END IF;
END
$capture$;
CREATE OR REPLACE FUNCTION ferry.capture_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $capture$
DECLARE
    dropped jsonb;
    indexes jsonb;
BEGIN
  BEGIN
    SELECT coalesce(jsonb_agg(jsonb_build_object('schema', o.schema_name, 'name', o.object_name))
                        FILTER (WHERE o.object_type = 'table'), '[]'::jsonb),
           coalesce(jsonb_agg(jsonb_build_object('schema', o.schema_name, 'name', o.object_name))
                        FILTER (WHERE o.object_type = 'index'), '[]'::jsonb)
    INTO dropped, indexes FROM pg_event_trigger_dropped_objects() o
    WHERE o.object_type IN ('table', 'index') AND NOT o.is_temporary AND o.schema_name <> 'ferry';
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'ferry DDL capture: %', SQLERRM;
    dropped := NULL;
    indexes := NULL;
  END;
    IF jsonb_array_length(dropped) > 0 OR jsonb_array_length(indexes) > 0 THEN
        PERFORM pg_logical_emit_message(true, 'ferry.ddl', jsonb_build_object('tag', tg_tag,
            'tables', '[]'::jsonb, 'dropped', dropped, 'dropped_indexes', indexes)::text);
    END IF;
END
$capture$;
DROP EVENT TRIGGER IF EXISTS ferry_capture_rewrite;
CREATE EVENT TRIGGER ferry_capture_rewrite ON table_rewrite EXECUTE FUNCTION ferry.capture_rewrite();
DROP EVENT TRIGGER IF EXISTS ferry_capture_ddl;
CREATE EVENT TRIGGER ferry_capture_ddl ON ddl_command_end EXECUTE FUNCTION ferry.capture_ddl();
DROP EVENT TRIGGER IF EXISTS ferry_capture_drop;
CREATE EVENT TRIGGER ferry_capture_drop ON sql_drop EXECUTE FUNCTION ferry.capture_drop();
"#;

#[async_trait]
impl ReplicationSource for PgReplication {
    async fn may_install_ddl_capture(&mut self) -> anyhow::Result<bool> {
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("reading the connecting role".into(), &e))
    }

    async fn install_ddl_capture(&mut self) -> anyhow::Result<()> {
        if !self.may_install_ddl_capture().await? {
            return Err(Error::contract(format!(
                "[source] capture_ddl installs event triggers in {}, which only a superuser may create: connect \
                 as one for the first `ferry sync` (it installs them once), or turn capture_ddl off (a column \
                 change then pauses the stream until the target is altered by hand)",
                self.url
            )));
        }
        // One simple query: one implicit transaction, all or nothing.
        sqlx::raw_sql(DDL_CAPTURE)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err("installing the DDL capture".into(), &e))?;
        Ok(())
    }

    async fn ddl_capture(&mut self) -> anyhow::Result<bool> {
        let enabled: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_event_trigger WHERE evtname IN ('ferry_capture_ddl', 'ferry_capture_rewrite', \
             'ferry_capture_drop') AND evtenabled <> 'D'",
        )
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err("reading event triggers".into(), &e))?;
        Ok(enabled == 3)
    }

    async fn publish_new_tables(
        &mut self,
        publication: &str,
        include: &[String],
        exclude: &[String],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO ferry.capture_publish (publication, include, exclude) VALUES ($1, $2, $3) \
             ON CONFLICT (publication) DO UPDATE SET include = excluded.include, exclude = excluded.exclude",
        )
        .bind(publication)
        .bind(include)
        .bind(exclude)
        .execute(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("setting which new tables publication {publication} gets"), &e))?;
        Ok(())
    }

    async fn drop_ddl_capture(&mut self, slot: &str) -> anyhow::Result<()> {
        let others: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND slot_name <> $1",
        )
        .bind(slot)
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err("reading replication slots".into(), &e))?;
        if others > 0 {
            tracing::info!("the DDL capture stays: other replication slots of this database may rely on it");
            return Ok(());
        }
        for statement in [
            "DROP EVENT TRIGGER IF EXISTS ferry_capture_ddl",
            "DROP EVENT TRIGGER IF EXISTS ferry_capture_rewrite",
            "DROP EVENT TRIGGER IF EXISTS ferry_capture_drop",
            "DROP FUNCTION IF EXISTS ferry.capture_ddl()",
            "DROP FUNCTION IF EXISTS ferry.capture_rewrite()",
            "DROP FUNCTION IF EXISTS ferry.capture_drop()",
            "DROP TABLE IF EXISTS ferry.capture_publish",
        ] {
            sqlx::query(statement)
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err("removing the DDL capture".into(), &e))?;
        }
        Ok(())
    }

    async fn column_numbers(&mut self, table: &TableName) -> anyhow::Result<Vec<(String, i16, u32)>> {
        let rows: Vec<(String, i16, i64)> = sqlx::query_as(
            "SELECT attname::text, attnum, atttypid::int8 FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 \
             AND NOT attisdropped ORDER BY attnum",
        )
        .bind(table.quoted())
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("reading the columns of {table}"), &e))?;
        Ok(rows.into_iter().map(|(name, number, oid)| (name, number, oid as u32)).collect())
    }

    async fn relation_oid(&mut self, table: &TableName) -> anyhow::Result<Option<u32>> {
        let oid: Option<i64> = sqlx::query_scalar("SELECT to_regclass($1)::oid::int8")
            .bind(table.quoted())
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("looking up table {table}"), &e))?;
        Ok(oid.map(|o| o as u32))
    }

    async fn unpublish(&mut self, publication: &str, table: &TableName) -> anyhow::Result<()> {
        let there: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_rel r JOIN pg_publication p ON p.oid = r.prpubid \
             WHERE p.pubname = $1 AND r.prrelid = to_regclass($2))",
        )
        .bind(publication)
        .bind(table.quoted())
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("reading publication {publication}"), &e))?;
        if there {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER PUBLICATION {} DROP TABLE {}",
                quote_ident(publication),
                table.quoted()
            )))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("taking {table} out of publication {publication}"), &e))?;
        }
        Ok(())
    }

    async fn wal_position(&mut self) -> anyhow::Result<u64> {
        let at: i64 = sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::int8")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("reading the WAL position".into(), &e))?;
        Ok(at as u64)
    }

    async fn publish(&mut self, publication: &str, table: &TableName) -> anyhow::Result<()> {
        let there: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
        )
        .bind(publication)
        .bind(table.schema.as_deref().unwrap_or("public"))
        .bind(&table.name)
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| self.err(format!("reading publication {publication}"), &e))?;
        if !there {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                table.quoted()
            )))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("adding {table} to publication {publication}"), &e))?;
        }
        Ok(())
    }

    async fn tracks_commit_timestamps(&mut self) -> anyhow::Result<bool> {
        let on: String = sqlx::query_scalar("SHOW track_commit_timestamp")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("reading track_commit_timestamp".into(), &e))?;
        Ok(on == "on")
    }

    async fn check_logical(&mut self) -> anyhow::Result<()> {
        let wal_level: String = sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("reading wal_level".into(), &e))?;
        if wal_level != "logical" {
            return Err(Error::contract(format!(
                "the source's wal_level is {wal_level}; logical replication needs wal_level = logical \
                 (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
            )));
        }
        Ok(())
    }

    async fn ensure_publication(&mut self, publication: &str, tables: &[TableName]) -> anyhow::Result<()> {
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(publication)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("looking for publication {publication}"), &e))?;
        if !exists {
            let list: Vec<String> = tables.iter().map(TableName::quoted).collect();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                quote_ident(publication),
                list.join(", ")
            )))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("creating publication {publication}"), &e))?;
        }
        Ok(())
    }

    async fn publication_tables(&mut self, publication: &str) -> anyhow::Result<Vec<TableName>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1")
                .bind(publication)
                .fetch_all(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("reading publication {publication}"), &e))?;
        Ok(rows.into_iter().map(|(schema, name)| TableName { schema: Some(schema), name }).collect())
    }

    async fn slot_exists(&mut self, slot: &str) -> anyhow::Result<bool> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
            .bind(slot)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("looking for replication slot {slot}"), &e))
    }

    async fn slots(&mut self, only: Option<&str>) -> anyhow::Result<Vec<SlotStatus>> {
        let rows: Vec<(String, bool, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT slot_name::text, active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8, \
             pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 \
             FROM pg_replication_slots WHERE slot_type = 'logical' AND ($1::text IS NULL OR slot_name = $1) ORDER BY 1",
        )
        .bind(only)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| self.err("reading replication slots".into(), &e))?;
        Ok(rows
            .into_iter()
            .map(|(name, active, lag, confirmed)| SlotStatus {
                name,
                active,
                lag_bytes: lag.unwrap_or(0),
                confirmed: confirmed.map(|c| c as u64),
            })
            .collect())
    }

    async fn drop_stream(&mut self, slot: &str, publication: &str) -> anyhow::Result<()> {
        sqlx::query("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1")
            .bind(slot)
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("dropping replication slot {slot} (is a ferry sync still running?)"), &e))?;
        // The DDL capture (if any) no longer adds new tables to it.
        let captures: bool = sqlx::query_scalar("SELECT to_regclass('ferry.capture_publish') IS NOT NULL")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| self.err("looking for the DDL capture".into(), &e))?;
        if captures {
            sqlx::query("DELETE FROM ferry.capture_publish WHERE publication = $1")
                .bind(publication)
                .execute(&mut self.conn)
                .await
                .map_err(|e| self.err(format!("forgetting publication {publication} in the DDL capture"), &e))?;
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication))))
            .execute(&mut self.conn)
            .await
            .map_err(|e| self.err(format!("dropping publication {publication}"), &e))?;
        Ok(())
    }
}

/// How often the slot is told what the target has committed, also while a
/// backlog drains (pgwire-replication's default is 10 s, pg_recvlogical's
/// too): the source recycles WAL at most this long after ferry applied it.
pub const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);

/// What a replication connection streams: the slot, the publication, and
/// the position the target already holds (acknowledged to the slot at
/// once, so a restart never re-decodes what the target holds without
/// confirming it).
#[derive(Debug, Clone)]
pub struct Stream<'a> {
    pub slot: &'a str,
    pub publication: &'a str,
    pub applied: u64,
}

/// Opens a replication connection; gated: nothing streams until `start`,
/// so a slot can be created on it first ([`create_slot`]).
pub async fn open_gated(url: &DbUrl, stream: &Stream<'_>) -> anyhow::Result<ReplicationClient> {
    ReplicationClient::connect_gated(config(url, stream)?)
        .await
        .map_err(|e| connection_error(url, "opening a replication connection", e))
}

/// Opens a replication connection that streams at once (a reconnection).
pub async fn open_streaming(url: &DbUrl, stream: &Stream<'_>) -> anyhow::Result<ReplicationClient> {
    ReplicationClient::connect(config(url, stream)?).await.map_err(|e| connection_error(url, "reconnecting", e))
}

/// Creates `slot` on a gated replication connection: the name of its
/// exported snapshot, valid while `client` stays open and unstarted.
pub async fn create_slot(client: &mut ReplicationClient, slot: &str) -> anyhow::Result<String> {
    let rows = client
        .simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'export')", quote_ident(slot)))
        .await
        .map_err(|e| anyhow::anyhow!("creating replication slot {slot}: {e}"))?;
    rows.first()
        .and_then(|r| r.get(2).cloned().flatten())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .context("CREATE_REPLICATION_SLOT returned no snapshot name")
}

fn config(source: &DbUrl, stream: &Stream<'_>) -> anyhow::Result<ReplicationConfig> {
    let url = url::Url::parse(source.expose()).context("parsing source.url")?;
    let database = url.path().trim_start_matches('/');
    let password = url.password().map(urlencoding_decode).unwrap_or_default();
    let host = url.host_str().unwrap_or("127.0.0.1");
    Ok(ReplicationConfig::new(
        host,
        if url.username().is_empty() { "postgres" } else { url.username() },
        password,
        if database.is_empty() { "postgres" } else { database },
        stream.slot.to_string(),
        stream.publication.to_string(),
    )
    .with_port(url.port().unwrap_or(5432))
    .with_tls(tls(source, host)?)
    .with_start_lsn(Lsn::ZERO)
    .with_ack_lsn(Lsn::from_u64(stream.applied))
    .with_status_interval(FEEDBACK_INTERVAL)
    // The session settings ferry reads values under (see value::PG_SESSION).
    .with_options(crate::value::PG_SESSION.iter().map(|(k, v)| format!("-c {k}={v}")).collect::<Vec<_>>().join(" "))
    .with_application_name("ferry"))
}

/// The replication connection's TLS: the same `sslmode`, CA and client
/// certificate as the source's query connections. `allow` is treated as
/// `prefer` here (TLS when offered; never weaker than asked).
fn tls(source: &DbUrl, host: &str) -> anyhow::Result<TlsConfig> {
    let tls = PgTls::from_url(source.expose()).map_err(|e| anyhow::anyhow!("source.url {source}: {e}"))?;
    let mode = match tls.mode {
        SslMode::Disable => pgwire_replication::SslMode::Disable,
        SslMode::Allow | SslMode::Prefer => pgwire_replication::SslMode::Prefer,
        SslMode::Require => pgwire_replication::SslMode::Require,
        SslMode::VerifyCa => pgwire_replication::SslMode::VerifyCa,
        SslMode::VerifyFull => pgwire_replication::SslMode::VerifyFull,
    };
    let (client_cert_pem_path, client_key_pem_path) = tls.client.clone().unzip();
    Ok(TlsConfig {
        mode,
        ca_pem_path: tls.root_cert_file().map_err(|e| anyhow::anyhow!("source.url {source}: {e}"))?,
        // The name the certificate is checked against: the host itself, also
        // when it is an IP address (rustls then checks the certificate's IP
        // addresses, as libpq does).
        sni_hostname: Some(host.to_string()),
        client_cert_pem_path,
        client_key_pem_path,
    })
}

/// A replication connection that could not be opened, with the cause
/// explained when it is about TLS.
fn connection_error(source: &DbUrl, doing: &str, e: pgwire_replication::PgWireError) -> anyhow::Error {
    let host = crate::tls::url_host(source.expose());
    match crate::tls::explain(&e.to_string(), &host, FixParam::Postgres) {
        Some(cause) => anyhow::Error::new(e).context(format!("{doing} to {source}: {cause}")),
        None => anyhow::Error::new(e).context(format!("{doing} to {source}")),
    }
}

fn urlencoding_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}
