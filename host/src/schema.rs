//! Table definitions of any shape: what the engines' catalogs say about a
//! table (columns with their types, key, indexes, foreign keys, checks) and
//! the DDL ferry writes from them on the target.
//!
//! A definition read from one engine can be rendered for the other: the
//! column's [`Kind`] carries the meaning across, the engine's own type name
//! is kept for a same-engine copy (so `numeric(12,2)`, `varchar(40)`, enums
//! and domains stay what they were).

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::db::{Engine, TableName, quote_ident, quote_literal};
use crate::value::Kind;

/// Source table name → target table name, for foreign keys that name
/// another table of the pipeline (a table outside it keeps its name).
#[derive(Debug, Clone, Default)]
pub struct NameMap(pub std::collections::HashMap<TableName, TableName>);

impl NameMap {
    pub fn target(&self, source: &TableName) -> TableName {
        self.0.get(source).cloned().unwrap_or_else(|| source.clone())
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnDef {
    pub name: String,
    /// The type as the source engine declares it (`numeric(12,2)`,
    /// `character varying(40)`, `mood`, `INTEGER`).
    pub sql_type: String,
    pub kind: Kind,
    pub nullable: bool,
    /// A PostgreSQL identity column (`GENERATED … AS IDENTITY`), kept as
    /// such in a PostgreSQL table ferry creates.
    pub identity: Option<Identity>,
    /// What an INSERT that leaves the column out stores (PostgreSQL).
    pub default: Option<ColumnDefault>,
}

impl ColumnDef {
    /// A column with no identity and no default.
    pub fn plain(name: impl Into<String>, sql_type: impl Into<String>, kind: Kind, nullable: bool) -> ColumnDef {
        ColumnDef { name: name.into(), sql_type: sql_type.into(), kind, nullable, identity: None, default: None }
    }

    /// The value the column's sequence (identity or `serial`) hands out
    /// next, when it has one.
    pub fn sequence_next(&self) -> Option<i64> {
        match (&self.identity, &self.default) {
            (Some(identity), _) => Some(identity.next),
            (None, Some(ColumnDefault::Serial { next } | ColumnDefault::Sequence { next })) => Some(*next),
            _ => None,
        }
    }
}

/// A column's default, as the source's catalog defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ColumnDefault {
    /// An expression as PostgreSQL prints it (`now()`, `'new'::text`,
    /// `gen_random_uuid()`): kept on a PostgreSQL target, left out on
    /// another engine (its functions are PostgreSQL's).
    Expression(String),
    /// `nextval` of a sequence the column owns (`serial`, `bigserial`): a
    /// PostgreSQL table ferry creates gets a sequence of its own, owned by
    /// the column, set after the data to where the source's stands.
    Serial { next: i64 },
    /// `nextval` of a sequence the column does not own (hand-written
    /// schemas and older dumps; several tables may share it): the schema
    /// copy recreates it with its default, and ferry moves it like a
    /// serial's; a table ferry makes from its columns goes without it.
    Sequence { next: i64 },
}

/// A stored generated column (`GENERATED ALWAYS AS (…) STORED`). It is no
/// part of the rows ferry moves — the engine computes it — so it lives
/// beside [`TableDef::columns`], only for the DDL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeneratedColumn {
    pub name: String,
    pub sql_type: String,
    /// The generation expression, as PostgreSQL prints it.
    pub expression: String,
    /// How many of [`TableDef::columns`] come before it (its place).
    pub position: usize,
}

/// How an identity column generates its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// `GENERATED ALWAYS` (else `BY DEFAULT`).
    pub always: bool,
    /// The value the source's sequence hands out next: where the target's
    /// starts, so that rows inserted into the target after the copy do not
    /// collide with the copied ones.
    pub next: i64,
}

/// A secondary index (the primary key's index is not listed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexDef {
    pub name: String,
    pub unique: bool,
    /// Plain column names, when the index is on columns only.
    pub columns: Vec<String>,
    /// PostgreSQL's own definition (`pg_get_indexdef`), for a PostgreSQL
    /// target: keeps expressions, predicates, opclasses and methods.
    pub pg_definition: Option<String>,
}

/// A foreign key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForeignKeyDef {
    pub name: String,
    pub columns: Vec<String>,
    pub references: TableName,
    pub referenced_columns: Vec<String>,
    /// `ON UPDATE … ON DELETE …` clause (empty for the defaults).
    pub actions: String,
}

/// A table as a catalog describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TableDef {
    pub name: TableName,
    pub engine: Engine,
    pub columns: Vec<ColumnDef>,
    /// Stored generated columns (PostgreSQL), recreated by a PostgreSQL
    /// target; never read nor written.
    pub generated: Vec<GeneratedColumn>,
    /// Indexes into `columns` of the primary key, in key order (empty: none).
    pub primary_key: Vec<usize>,
    pub indexes: Vec<IndexDef>,
    pub foreign_keys: Vec<ForeignKeyDef>,
    /// `CHECK` constraints as PostgreSQL defines them (name, definition).
    pub checks: Vec<(String, String)>,
    /// The catalog's row estimate (0 if unknown).
    pub estimated_rows: u64,
    /// The catalog's estimate of a row's size, TOAST included (0 if unknown).
    pub row_bytes: u64,
    /// When the key is not a primary key but a unique index the user named
    /// (`key = [...]`): that index, built with the table, before the data.
    pub key_index: Option<String>,
    /// Build the key after the data (a copy into a table ferry created on
    /// PostgreSQL: loading in key order into a bare heap, then building
    /// the index by sorting, is several times faster than maintaining it).
    /// Safe because pages commit exactly once, in key order.
    #[serde(skip)]
    pub defer_key: bool,
    /// PostgreSQL inheritance: other tables inherit from this one, so every
    /// read and write of its own rows says `ONLY` (its plain name reaches
    /// the children's rows too). See [`TableDef::relation`].
    #[serde(skip)]
    pub inherited: bool,
    /// It inherits from another table (not as a partition): no key of the
    /// parent's makes its own rows unique.
    #[serde(skip)]
    pub inherits: bool,
}

impl TableDef {
    /// A table with columns and a key, and nothing else known.
    pub fn new(name: TableName, engine: Engine, columns: Vec<ColumnDef>, primary_key: Vec<usize>) -> TableDef {
        TableDef {
            name,
            engine,
            columns,
            generated: Vec::new(),
            primary_key,
            indexes: Vec::new(),
            foreign_keys: Vec::new(),
            checks: Vec::new(),
            estimated_rows: 0,
            row_bytes: 0,
            key_index: None,
            defer_key: false,
            inherited: false,
            inherits: false,
        }
    }

    /// The table's own rows in a query (`FROM`, `DELETE FROM`, `UPDATE`):
    /// its quoted name, with `ONLY` when other tables inherit from it.
    pub fn relation(&self) -> String {
        match self.inherited && self.engine == Engine::Postgres {
            true => format!("ONLY {}", self.quoted()),
            false => self.quoted(),
        }
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_columns(&self) -> impl Iterator<Item = &ColumnDef> {
        self.primary_key.iter().map(|&i| &self.columns[i])
    }

    /// The same table under another name on `engine`: same columns and key;
    /// types keep their declared name only on the same engine.
    pub fn for_target(&self, name: TableName, engine: Engine) -> TableDef {
        let mut def = self.clone();
        def.name = name;
        if engine != self.engine {
            for column in &mut def.columns {
                column.sql_type = carried_type(&column.kind, &column.sql_type, engine);
            }
            // Check constraints, index expressions, default and generation
            // expressions are PostgreSQL's.
            def.checks.clear();
            for generated in def.generated.drain(..) {
                tracing::warn!(
                    "generated column {} of {} is computed by a PostgreSQL expression: not recreated on {engine}",
                    generated.name,
                    self.name
                );
            }
            for column in &mut def.columns {
                if let Some(ColumnDefault::Expression(expression)) = &column.default {
                    tracing::warn!(
                        "the default of {}.{} ({expression}) is a PostgreSQL expression: not recreated on {engine}",
                        self.name,
                        column.name
                    );
                    column.default = None;
                }
            }
            for index in &mut def.indexes {
                index.pg_definition = None;
            }
            def.indexes.retain(|index| {
                if index.columns.is_empty() {
                    tracing::warn!(
                        "index {} of {} is on expressions or partial: not recreated on {engine}",
                        index.name,
                        self.name
                    );
                }
                !index.columns.is_empty()
            });
        }
        def.engine = engine;
        def
    }

    /// `CREATE TABLE` with the columns and the primary key only: the rest
    /// (indexes, foreign keys, checks) comes after the data, except on
    /// SQLite, which cannot add foreign keys later (and does not enforce
    /// them unless a connection turns `foreign_keys` on). `sequences` names
    /// the sequence (quoted, qualified) of each `serial` column; the caller
    /// creates them first (see [`TableDef::serial_columns`]).
    pub fn create_sql(&self, names: &NameMap, sequences: &HashMap<String, String>) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let not_null = if c.nullable { "" } else { " NOT NULL" };
                let extra = match (&c.identity, &c.default, self.engine) {
                    (Some(id), _, Engine::Postgres) => format!(
                        " GENERATED {} AS IDENTITY (START WITH {})",
                        if id.always { "ALWAYS" } else { "BY DEFAULT" },
                        id.next
                    ),
                    (None, Some(ColumnDefault::Expression(e)), Engine::Postgres) => format!(" DEFAULT {e}"),
                    (None, Some(ColumnDefault::Serial { .. }), Engine::Postgres) => match sequences.get(&c.name) {
                        Some(seq) => format!(" DEFAULT nextval({}::regclass)", quote_literal(seq)),
                        None => String::new(),
                    },
                    _ => String::new(),
                };
                format!("{} {}{not_null}{extra}", quote_ident(&c.name), c.sql_type)
            })
            .collect();
        if self.engine == Engine::Postgres {
            // Last first, so each position still counts the plain columns.
            for generated in self.generated.iter().rev() {
                parts.insert(
                    generated.position.min(self.columns.len()),
                    format!(
                        "{} {} GENERATED ALWAYS AS ({}) STORED",
                        quote_ident(&generated.name),
                        generated.sql_type,
                        generated.expression
                    ),
                );
            }
        }
        if !self.primary_key.is_empty() && self.key_index.is_none() && !self.defer_key {
            parts.push(format!("PRIMARY KEY ({})", self.key_list()));
        }
        if self.engine == Engine::Sqlite {
            for fk in &self.foreign_keys {
                parts.push(format!(
                    "CONSTRAINT {} {}",
                    quote_ident(&fk.name),
                    fk.clause(&names.target(&fk.references), self.engine)
                ));
            }
        }
        format!("CREATE TABLE IF NOT EXISTS {} ({})", self.quoted(), parts.join(", "))
    }

    /// The `serial` columns, each with the name PostgreSQL itself would
    /// give its sequence (`<table>_<column>_seq`, cut to 63 bytes).
    pub fn serial_columns(&self) -> Vec<(&ColumnDef, String)> {
        self.columns
            .iter()
            .filter(|c| c.identity.is_none() && matches!(c.default, Some(ColumnDefault::Serial { .. })))
            .map(|c| {
                let mut name = format!("{}_{}_seq", self.name.name, c.name);
                while name.len() > 63 {
                    name.pop();
                }
                (c, name)
            })
            .collect()
    }

    /// Columns fed by a sequence (identity or `serial`), with where the
    /// sequence stands.
    pub fn sequence_columns(&self) -> impl Iterator<Item = (&ColumnDef, i64)> {
        self.columns.iter().filter_map(|c| c.sequence_next().map(|next| (c, next)))
    }

    /// The unique index that is the key (see [`TableDef::key_index`]),
    /// built right after the table.
    pub fn key_index_sql(&self) -> Option<String> {
        let name = self.key_index.as_ref()?;
        let at = self.indexes.iter().position(|i| &i.name == name)?;
        self.index_sql().into_iter().nth(at)
    }

    /// Secondary indexes, built after the data is in; idempotent.
    pub fn index_sql(&self) -> Vec<String> {
        self.indexes
            .iter()
            .map(|index| match (&index.pg_definition, self.engine) {
                (Some(def), Engine::Postgres) => retarget_index(def, &self.quoted()),
                _ => format!(
                    "CREATE {}INDEX IF NOT EXISTS {} ON {} ({})",
                    if index.unique { "UNIQUE " } else { "" },
                    quote_ident(&index.name),
                    self.quoted(),
                    index.columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
                ),
            })
            .collect()
    }

    /// `(name, ALTER TABLE … ADD CONSTRAINT …)` for checks and foreign keys
    /// (PostgreSQL targets); the caller skips names that already exist.
    pub fn constraint_sql(&self, names: &NameMap) -> Vec<(String, String)> {
        if self.engine != Engine::Postgres {
            return Vec::new();
        }
        let mut out: Vec<(String, String)> = self
            .checks
            .iter()
            .map(|(name, def)| {
                (name.clone(), format!("ALTER TABLE {} ADD CONSTRAINT {} {def}", self.quoted(), quote_ident(name)))
            })
            .collect();
        for fk in &self.foreign_keys {
            out.push((
                fk.name.clone(),
                format!(
                    "ALTER TABLE {} ADD CONSTRAINT {} {}",
                    self.quoted(),
                    quote_ident(&fk.name),
                    fk.clause(&names.target(&fk.references), self.engine)
                ),
            ));
        }
        out
    }

    pub fn quoted(&self) -> String {
        self.name.quoted()
    }

    /// The key columns, quoted, comma-separated.
    /// The first `n` key columns, quoted, comma-separated (a key prefix).
    pub fn key_prefix_list(&self, n: usize) -> String {
        self.key_columns().take(n).map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    pub fn key_list(&self) -> String {
        self.key_columns().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    }

    /// All columns, quoted, comma-separated.
    pub fn column_list(&self) -> String {
        self.columns.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
    }
}

impl ForeignKeyDef {
    fn clause(&self, references: &TableName, engine: Engine) -> String {
        let list = |cols: &[String]| cols.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        // SQLite resolves the parent by name in the same database.
        let parent = if engine == Engine::Sqlite { quote_ident(&references.name) } else { references.quoted() };
        format!(
            "FOREIGN KEY ({}) REFERENCES {parent} ({}){}",
            list(&self.columns),
            list(&self.referenced_columns),
            if self.actions.is_empty() { String::new() } else { format!(" {}", self.actions) }
        )
    }
}

/// `pg_get_indexdef` output aimed at another table name, made idempotent.
pub(crate) fn retarget_index(def: &str, table: &str) -> String {
    let def = def.replacen("INDEX ", "INDEX IF NOT EXISTS ", 1);
    match (def.find(" ON "), def.find(" USING ")) {
        (Some(on), Some(using)) if on < using => {
            let only = if def[on..].starts_with(" ON ONLY ") { "ONLY " } else { "" };
            format!("{} ON {only}{table}{}", &def[..on], &def[using..])
        }
        _ => def,
    }
}

/// The declared type ferry gives a kind in SQLite. The names are chosen so
/// SQLite's affinity keeps the value as written (a decimal, a JSON document
/// or an interval stays TEXT; "INTERVAL" alone would get INTEGER affinity)
/// and so [`sqlite_kind`] reads the same kind back.
pub fn sqlite_type(kind: &Kind) -> String {
    match kind {
        // A JSON array in TEXT; the element kind stays in the type name.
        Kind::Array(element) => format!("{} ARRAY", sqlite_type(element)),
        scalar => sqlite_scalar_type(scalar).to_string(),
    }
}

fn sqlite_scalar_type(kind: &Kind) -> &'static str {
    match kind {
        Kind::Bool => "BOOLEAN",
        Kind::Int16 | Kind::Int32 | Kind::Int64 => "INTEGER",
        Kind::Float32 | Kind::Float64 => "REAL",
        Kind::Numeric => "NUMERIC TEXT",
        Kind::Text | Kind::Other => "TEXT",
        Kind::Bytes => "BLOB",
        Kind::Json | Kind::Array(_) => "JSON TEXT",
        Kind::Uuid => "UUID TEXT",
        Kind::Date => "DATE",
        Kind::Time => "TIME",
        Kind::Timestamp => "TIMESTAMP",
        Kind::TimestampTz => "TIMESTAMPTZ",
        Kind::Interval => "INTERVAL TEXT",
    }
}

/// A column's type on `engine`, from its kind and its declared type on the
/// other engine: lengths and precisions survive where both engines can
/// name them (`varchar(40)`, `character(5)`, `numeric(10,2)`,
/// `timestamp(3)`), every other type by its kind. SQLite keeps them as
/// declared (it enforces none); its type names keep their affinity (text
/// for decimals, which it would otherwise round into floats).
pub fn carried_type(kind: &Kind, declared: &str, engine: Engine) -> String {
    let modifier = declared.find('(').and_then(|at| {
        let inner = &declared[at + 1..at + declared[at..].find(')')?];
        inner.split(',').all(|n| n.trim().parse::<u32>().is_ok()).then(|| inner.replace(' ', ""))
    });
    let lower = declared.to_ascii_lowercase();
    let varying = lower.contains("var");
    match (engine, kind, modifier) {
        (Engine::Postgres, Kind::Text, Some(n)) if lower.contains("char") && !n.contains(',') => {
            format!("{}({n})", if varying { "character varying" } else { "character" })
        }
        (Engine::Postgres, Kind::Numeric, Some(p)) => format!("numeric({p})"),
        (Engine::Postgres, Kind::Timestamp, Some(p)) if !p.contains(',') => format!("timestamp({p})"),
        (Engine::Postgres, Kind::TimestampTz, Some(p)) if !p.contains(',') => format!("timestamptz({p})"),
        (Engine::Postgres, kind, _) => kind.pg_type(),
        (Engine::Sqlite, Kind::Text, Some(n)) if lower.starts_with("char") && !n.contains(',') => {
            format!("{}({n})", if varying { "VARCHAR" } else { "CHARACTER" })
        }
        (Engine::Sqlite, Kind::Numeric, Some(p)) => format!("{}({p})", sqlite_type(kind)),
        (Engine::Sqlite, Kind::Timestamp | Kind::TimestampTz, Some(p)) if !p.contains(',') => {
            format!("{}({p})", sqlite_type(kind))
        }
        (Engine::Sqlite, kind, _) => sqlite_type(kind),
    }
}

/// The kind of a SQLite column from its declared type: SQLite's affinity
/// rules, refined by the common type names (`BOOLEAN`, `DATETIME`, `JSON`…).
pub fn sqlite_kind(declared: &str) -> Kind {
    let t = declared.to_ascii_uppercase();
    if let Some(element) = t.strip_suffix(" ARRAY") {
        return match sqlite_kind(element) {
            k if k.is_scalar() => Kind::Array(Box::new(k)),
            _ => Kind::Json,
        };
    }
    let has = |s: &str| t.contains(s);
    if has("BOOL") {
        Kind::Bool
    } else if has("NUMERIC") || has("DECIMAL") {
        Kind::Numeric
    } else if has("INTERVAL") {
        Kind::Interval
    } else if has("TIMESTAMPTZ") || (has("TIMESTAMP") && has("TIME ZONE")) {
        Kind::TimestampTz
    } else if has("TIMESTAMP") || has("DATETIME") {
        Kind::Timestamp
    } else if has("INT") {
        Kind::Int64
    } else if has("JSON") {
        Kind::Json
    } else if has("UUID") {
        Kind::Uuid
    } else if t == "DATE" {
        Kind::Date
    } else if t == "TIME" {
        Kind::Time
    } else if has("CHAR") || has("CLOB") || has("TEXT") || t.is_empty() {
        Kind::Text
    } else if has("BLOB") {
        Kind::Bytes
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        Kind::Float64
    } else {
        Kind::Numeric
    }
}

/// Orders tables so that every table comes after the tables it references
/// (self-references ignored); tables in a reference cycle keep their order
/// at the end. Returns indexes into `tables`.
pub fn dependency_order(tables: &[TableDef]) -> Vec<usize> {
    let mut done = vec![false; tables.len()];
    let mut order = Vec::with_capacity(tables.len());
    let position = |name: &TableName| tables.iter().position(|t| &t.name == name);
    loop {
        let before = order.len();
        for (i, table) in tables.iter().enumerate() {
            if done[i] {
                continue;
            }
            let ready = table
                .foreign_keys
                .iter()
                .filter_map(|fk| position(&fk.references))
                .all(|parent| parent == i || done[parent]);
            if ready {
                done[i] = true;
                order.push(i);
            }
        }
        if order.len() == tables.len() {
            return order;
        }
        if order.len() == before {
            order.extend((0..tables.len()).filter(|&i| !done[i]));
            return order;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, refs: &[&str]) -> TableDef {
        TableDef {
            name: TableName::parse(name).unwrap(),
            engine: Engine::Postgres,
            columns: vec![],
            generated: vec![],
            primary_key: vec![],
            indexes: vec![],
            foreign_keys: refs
                .iter()
                .map(|r| ForeignKeyDef {
                    name: format!("{name}_{r}"),
                    columns: vec![],
                    references: TableName::parse(r).unwrap(),
                    referenced_columns: vec![],
                    actions: String::new(),
                })
                .collect(),
            checks: vec![],
            estimated_rows: 0,
            row_bytes: 0,
            key_index: None,
            defer_key: false,
            inherited: false,
            inherits: false,
        }
    }

    #[test]
    fn parents_come_first() {
        let tables = [table("items", &["orders", "items"]), table("orders", &["users"]), table("users", &[])];
        assert_eq!(dependency_order(&tables), vec![2, 1, 0]);
    }

    #[test]
    fn lengths_and_precisions_cross_between_engines() {
        let cases = [
            (Kind::Text, "character varying(40)", "VARCHAR(40)", "character varying(40)"),
            (Kind::Text, "character(5)", "CHARACTER(5)", "character(5)"),
            (Kind::Text, "text", "TEXT", "text"),
            (Kind::Numeric, "numeric(10,2)", "NUMERIC TEXT(10,2)", "numeric(10,2)"),
            (Kind::Numeric, "numeric", "NUMERIC TEXT", "numeric"),
            (Kind::Timestamp, "timestamp(3) without time zone", "TIMESTAMP(3)", "timestamp(3)"),
            (Kind::TimestampTz, "timestamp(0) with time zone", "TIMESTAMPTZ(0)", "timestamptz(0)"),
            (Kind::Int32, "integer", "INTEGER", "bigint"),
        ];
        for (kind, pg, sqlite, back) in cases {
            let there = carried_type(&kind, pg, Engine::Sqlite);
            assert_eq!(there, sqlite, "{pg}");
            assert_eq!(sqlite_kind(&there), if kind == Kind::Int32 { Kind::Int64 } else { kind.clone() }, "{there}");
            assert_eq!(carried_type(&sqlite_kind(&there), &there, Engine::Postgres), back, "{there}");
        }
        // A SQLite database's own spellings.
        assert_eq!(carried_type(&Kind::Text, "NVARCHAR(100)", Engine::Postgres), "character varying(100)");
        assert_eq!(carried_type(&Kind::Numeric, "DECIMAL(12, 4)", Engine::Postgres), "numeric(12,4)");
    }

    #[test]
    fn sqlite_types_read_back_as_their_kind() {
        for kind in [
            Kind::Bool,
            Kind::Int64,
            Kind::Float64,
            Kind::Numeric,
            Kind::Text,
            Kind::Bytes,
            Kind::Json,
            Kind::Uuid,
            Kind::Date,
            Kind::Time,
            Kind::Timestamp,
            Kind::TimestampTz,
            Kind::Interval,
            Kind::Array(Box::new(Kind::Numeric)),
        ] {
            assert_eq!(sqlite_kind(&sqlite_type(&kind)), kind);
        }
        assert_eq!(sqlite_kind("VARCHAR(20)"), Kind::Text);
        assert_eq!(sqlite_kind("DATETIME"), Kind::Timestamp);
    }

    #[test]
    fn serials_defaults_and_generated_columns_are_rendered_in_place() {
        let mut def = TableDef::new(
            TableName::parse("public.t").unwrap(),
            Engine::Postgres,
            vec![
                ColumnDef {
                    default: Some(ColumnDefault::Serial { next: 7 }),
                    ..ColumnDef::plain("id", "integer", Kind::Int32, false)
                },
                ColumnDef {
                    default: Some(ColumnDefault::Expression("'it''s'::text".into())),
                    ..ColumnDef::plain("note", "text", Kind::Text, true)
                },
            ],
            vec![0],
        );
        def.generated.push(GeneratedColumn {
            name: "twice".into(),
            sql_type: "integer".into(),
            expression: "(id * 2)".into(),
            position: 1,
        });
        let (_, sequence) = def.serial_columns().pop().unwrap();
        assert_eq!(sequence, "t_id_seq");
        let sequences = HashMap::from([("id".to_string(), "\"public\".\"t_id_seq\"".to_string())]);
        assert_eq!(
            def.create_sql(&NameMap::default(), &sequences),
            "CREATE TABLE IF NOT EXISTS \"public\".\"t\" (\"id\" integer NOT NULL DEFAULT nextval('\"public\".\"t_id_seq\"'::regclass), \
             \"twice\" integer GENERATED ALWAYS AS ((id * 2)) STORED, \"note\" text DEFAULT 'it''s'::text, PRIMARY KEY (\"id\"))"
        );
        // Another engine gets the values, not PostgreSQL's expressions.
        let sqlite = def.for_target(TableName::parse("t").unwrap(), Engine::Sqlite);
        assert!(sqlite.generated.is_empty() && sqlite.columns[1].default.is_none());
        assert_eq!(
            sqlite.create_sql(&NameMap::default(), &HashMap::new()),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"id\" INTEGER NOT NULL, \"note\" TEXT, PRIMARY KEY (\"id\"))"
        );
    }

    #[test]
    fn index_definitions_follow_the_table() {
        let def = "CREATE UNIQUE INDEX orders_ref ON public.orders USING btree (ref)";
        assert_eq!(
            retarget_index(def, "\"new\".\"orders\""),
            "CREATE UNIQUE INDEX IF NOT EXISTS orders_ref ON \"new\".\"orders\" USING btree (ref)"
        );
    }
}
