//! The DDL capture's messages ([`crate::replication::DDL_MESSAGE_PREFIX`]):
//! what one statement that changed tables says, at its place in the stream
//! — each table it created or altered with its columns and key after it,
//! and the tables it dropped.

use serde::Deserialize;

use crate::db::{Engine, TableName};
use crate::schema::{ColumnDef, ColumnDefault, Identity, TableDef};
use crate::schema_edit::{TableVersion, VersionColumn};
use crate::value::Kind;

/// One captured statement.
#[derive(Debug, Clone, Deserialize)]
pub struct Captured {
    /// The command tag (`ALTER TABLE`, `CREATE TABLE`, …).
    pub tag: String,
    pub tables: Vec<CapturedTable>,
    /// The tables the statement dropped.
    #[serde(default)]
    pub dropped: Vec<NamedTable>,
    /// The indexes it dropped (their table is gone from the catalog).
    #[serde(default)]
    pub dropped_indexes: Vec<NamedTable>,
    /// The enum types it made or gave values.
    #[serde(default)]
    pub enums: Vec<EnumType>,
}

/// An enum type and its labels, in sort order.
#[derive(Debug, Clone, Deserialize)]
pub struct EnumType {
    pub schema: String,
    pub name: String,
    pub labels: Vec<String>,
}

impl EnumType {
    /// The statements that give a PostgreSQL database this type with these
    /// labels in this order, whatever of it it has (made if missing; each
    /// label it lacks added beside its neighbour). A label is never removed
    /// (PostgreSQL cannot), nor renamed.
    pub fn sql(&self) -> Vec<String> {
        use crate::db::{quote_ident, quote_literal};
        let name = format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name));
        let labels: Vec<String> = self.labels.iter().map(|l| quote_literal(l)).collect();
        let mut out = vec![format!(
            "DO $ferry$ BEGIN IF to_regtype({}) IS NULL THEN CREATE TYPE {name} AS ENUM ({}); END IF; END $ferry$",
            quote_literal(&name),
            labels.join(", ")
        )];
        for (i, label) in labels.iter().enumerate() {
            let place = match (i.checked_sub(1).map(|p| &labels[p]), labels.get(i + 1)) {
                (Some(before), _) => format!(" AFTER {before}"),
                (None, Some(after)) => format!(" BEFORE {after}"),
                (None, None) => String::new(),
            };
            out.push(format!("ALTER TYPE {name} ADD VALUE IF NOT EXISTS {label}{place}"));
        }
        out
    }
}

/// A table by its schema and name.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedTable {
    pub schema: String,
    pub name: String,
}

impl NamedTable {
    pub fn table_name(&self) -> TableName {
        TableName { schema: Some(self.schema.clone()), name: self.name.clone() }
    }
}

/// Where a partition sits: its parent and its bounds (`FOR VALUES …`).
#[derive(Debug, Clone, Deserialize)]
pub struct PartitionOf {
    pub schema: String,
    pub name: String,
    pub bound: String,
}

impl PartitionOf {
    /// The parent.
    pub fn table_name(&self) -> TableName {
        TableName { schema: Some(self.schema.clone()), name: self.name.clone() }
    }
}

/// A table the statement touched, as it is after it.
#[derive(Debug, Clone, Deserialize)]
pub struct CapturedTable {
    /// The relation's OID (a rename keeps it).
    #[serde(default)]
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// The statement rewrote the table's rows (a volatile default, a
    /// type change).
    pub rewritten: bool,
    /// A partitioned table (its rows are its partitions').
    #[serde(default)]
    pub partitioned: bool,
    pub columns: Vec<CapturedColumn>,
    /// The primary key's columns, in key order (empty: none).
    #[serde(default)]
    pub key: Vec<String>,
    #[serde(default)]
    pub partition_of: Option<PartitionOf>,
    /// Its secondary indexes and its CHECK/FOREIGN KEY constraints (absent
    /// from a capture an older ferry installed).
    #[serde(default)]
    pub indexes: Option<Vec<NamedDef>>,
    #[serde(default)]
    pub constraints: Option<Vec<NamedDef>>,
}

/// An index or a constraint: its name and PostgreSQL's definition.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedDef {
    pub name: String,
    pub def: String,
}

/// A column as the catalog holds it (the shape `PgTables::describe` reads).
#[derive(Debug, Clone, Deserialize)]
pub struct CapturedColumn {
    pub number: i16,
    #[serde(default)]
    pub type_oid: u32,
    pub name: String,
    pub sql_type: String,
    pub not_null: bool,
    pub base: String,
    pub category: String,
    pub elem: Option<String>,
    pub identity: String,
    pub generated: String,
    pub default: Option<String>,
}

impl Captured {
    /// Parses a message's content; `Err` names what is wrong.
    pub fn parse(content: &[u8]) -> Result<Captured, String> {
        serde_json::from_slice(content).map_err(|e| format!("a DDL capture message ferry cannot read: {e}"))
    }
}

impl CapturedTable {
    /// The table's columns as a version (stored generated columns are no
    /// part of the rows a stream carries).
    pub fn version(&self) -> TableVersion {
        let columns = self
            .columns
            .iter()
            .filter(|c| c.generated.is_empty())
            .map(|c| {
                let identity = match c.identity.as_str() {
                    "" => None,
                    kind => Some(Identity { always: kind == "a", next: 1 }),
                };
                let default = match &c.default {
                    _ if identity.is_some() => None,
                    Some(e) if e.contains("nextval(") => Some(ColumnDefault::Sequence { next: 1 }),
                    Some(e) => Some(ColumnDefault::Expression(e.clone())),
                    None => None,
                };
                let def = ColumnDef {
                    name: c.name.clone(),
                    sql_type: c.sql_type.clone(),
                    kind: Kind::from_pg_column(&c.base, &c.category, c.elem.as_deref()),
                    nullable: !c.not_null,
                    identity,
                    default,
                };
                VersionColumn { number: c.number, def, type_oid: c.type_oid }
            })
            .collect();
        let named = |list: &Option<Vec<NamedDef>>| {
            list.as_ref().map(|l| l.iter().map(|n| (n.name.clone(), n.def.clone())).collect())
        };
        TableVersion {
            columns,
            relation: self.oid,
            indexes: named(&self.indexes),
            constraints: named(&self.constraints),
        }
    }

    pub fn table_name(&self) -> TableName {
        TableName { schema: Some(self.schema.clone()), name: self.name.clone() }
    }

    /// The table as the stream reads it: its `version`'s columns and the
    /// primary key (`None`: it has none).
    pub fn def(&self, version: &TableVersion) -> Option<TableDef> {
        let columns: Vec<ColumnDef> = version.columns.iter().map(|c| c.def.clone()).collect();
        let key: Vec<usize> =
            self.key.iter().map(|k| columns.iter().position(|c| c.name == *k)).collect::<Option<_>>()?;
        (!key.is_empty()).then(|| TableDef::new(self.table_name(), Engine::Postgres, columns, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_captured_statement_becomes_a_version() {
        let message = br#"{"tag": "ALTER TABLE", "tables": [{"oid": 16390, "schema": "public", "name": "items",
            "rewritten": false, "columns": [
              {"number": 1, "name": "id", "sql_type": "integer", "not_null": true, "base": "int4", "category": "N",
               "elem": null, "identity": "a", "generated": "", "default": null},
              {"number": 3, "name": "tags", "sql_type": "text[]", "not_null": false, "base": "_text",
               "category": "A", "elem": "text", "identity": "", "generated": "", "default": "'{}'::text[]"},
              {"number": 4, "name": "total", "sql_type": "numeric", "not_null": false, "base": "numeric",
               "category": "N", "elem": null, "identity": "", "generated": "s", "default": "(id * 2)"}]}]}"#;
        let captured = Captured::parse(message).unwrap();
        assert_eq!(captured.tag, "ALTER TABLE");
        let version = captured.tables[0].version();
        assert_eq!(version.names(), ["id", "tags"]);
        assert_eq!(version.columns[1].number, 3);
        assert_eq!(version.columns[1].def.kind, Kind::Array(Box::new(Kind::Text)));
        assert_eq!(version.columns[1].def.default, Some(ColumnDefault::Expression("'{}'::text[]".into())));
        assert!(version.columns[0].def.identity.as_ref().is_some_and(|i| i.always));
        assert!(captured.tables[0].def(&version).is_none(), "no key captured");
        assert!(Captured::parse(b"{").is_err());
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn a_created_table_has_its_key_and_a_dropped_one_its_name() {
        let message = br#"{"tag": "CREATE TABLE", "tables": [{"oid": 1, "schema": "public", "name": "notes",
            "rewritten": false, "key": ["id"], "partition_of": null, "columns": [
              {"number": 1, "name": "body", "sql_type": "text", "not_null": false, "base": "text", "category": "S",
               "elem": null, "identity": "", "generated": "", "default": null},
              {"number": 2, "name": "id", "sql_type": "bigint", "not_null": true, "base": "int8", "category": "N",
               "elem": null, "identity": "", "generated": "", "default": null}]}]}"#;
        let table = &Captured::parse(message).unwrap().tables[0];
        let def = table.def(&table.version()).unwrap();
        assert_eq!(def.name.to_string(), "public.notes");
        assert_eq!(def.primary_key, [1]);
        let dropped = br#"{"tag": "DROP TABLE", "tables": [], "dropped": [{"schema": "public", "name": "old"}]}"#;
        assert_eq!(Captured::parse(dropped).unwrap().dropped[0].table_name().to_string(), "public.old");
    }
}
