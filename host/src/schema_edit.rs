//! A table's columns changing while a change stream runs: the versions of
//! a source table's columns a stream knows (each column with the number
//! its catalog gives it for life, so a rename is told from a drop and an
//! add), the edits that turn one version into the next, and each edit's
//! DDL on either engine.
//!
//! The stream applies a version's edits to a copied table in the target
//! transaction that holds the changes before it; what cannot be applied
//! safely (a narrowing type change, a column whose back-filled values the
//! target cannot compute) is refused with the reason, and the stream
//! pauses rather than lose or invent values.

use serde::{Deserialize, Serialize};

use crate::db::{Engine, TableName, quote_ident};
use crate::schema::{ColumnDef, ColumnDefault, TableDef};

/// A column of a version: its catalog number and definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionColumn {
    /// PostgreSQL's `attnum`: kept by a rename and a type change, never
    /// reused after a drop.
    pub number: i16,
    pub def: ColumnDef,
    /// The type's OID (as pgoutput's Relation messages name it; 0: unknown).
    #[serde(default)]
    pub type_oid: u32,
}

/// The columns of a source table from some position of the stream on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TableVersion {
    pub columns: Vec<VersionColumn>,
    /// The source relation's OID (0: unknown), which a rename keeps: a
    /// table renamed while the stream ran, or while ferry was stopped, is
    /// found again by it.
    #[serde(default)]
    pub relation: u32,
    /// The table's secondary indexes (unique constraints' included), by
    /// name, with PostgreSQL's definition (`None`: not known — a version an
    /// older ferry stored, or read without the DDL capture).
    #[serde(default)]
    pub indexes: Option<Vec<(String, String)>>,
    /// Its CHECK and FOREIGN KEY constraints, by name, with their
    /// definition (`pg_get_constraintdef`).
    #[serde(default)]
    pub constraints: Option<Vec<(String, String)>>,
}

impl TableVersion {
    /// The version of `def` whose columns have `numbers` (name, number,
    /// type OID); `None` if a column has no number.
    pub fn of(def: &TableDef, numbers: &[(String, i16, u32)]) -> Option<TableVersion> {
        let columns = def
            .columns
            .iter()
            .map(|c| {
                let (_, number, type_oid) = numbers.iter().find(|(n, _, _)| *n == c.name)?;
                Some(VersionColumn { number: *number, def: c.clone(), type_oid: *type_oid })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(TableVersion { columns, ..Default::default() })
    }

    /// No columns: the table is gone from the stream (dropped, or renamed
    /// out of the pipeline).
    pub fn gone(relation: u32) -> TableVersion {
        TableVersion { relation, ..Default::default() }
    }

    /// Whether a Relation message's columns (name, type OID) are this
    /// version's (an unknown OID matches any).
    pub fn matches<'a>(&self, columns: impl ExactSizeIterator<Item = (&'a str, u32)>) -> bool {
        self.columns.len() == columns.len()
            && self
                .columns
                .iter()
                .zip(columns)
                .all(|(c, (name, oid))| c.def.name == name && (c.type_oid == 0 || c.type_oid == oid))
    }

    pub fn names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.def.name.as_str()).collect()
    }

    /// `def` with this version's columns (its key found again by name).
    /// `None`: a key column is gone.
    pub fn apply_to(&self, def: &TableDef) -> Option<TableDef> {
        let mut out = def.clone();
        let key: Vec<&str> = def.key_columns().map(|c| c.name.as_str()).collect();
        out.columns = self.columns.iter().map(|c| c.def.clone()).collect();
        out.primary_key = key.iter().map(|k| out.column_index(k)).collect::<Option<Vec<_>>>()?;
        out.generated.retain(|g| !out.columns.iter().any(|c| c.name == g.name));
        for generated in &mut out.generated {
            generated.position = generated.position.min(out.columns.len());
        }
        Some(out)
    }

    /// The edits from this version to `next`, in the order they apply:
    /// drops, renames, type changes, constraint changes, additions.
    pub fn edits(&self, next: &TableVersion) -> Vec<TableEdit> {
        let mut edits = Vec::new();
        let find = |v: &'_ TableVersion, n: i16| v.columns.iter().find(|c| c.number == n).map(|c| c.def.clone());
        for old in &self.columns {
            if find(next, old.number).is_none() {
                edits.push(TableEdit::Drop { name: old.def.name.clone() });
            }
        }
        let mut rest = Vec::new();
        for new in &next.columns {
            let Some(old) = find(self, new.number) else {
                rest.push(TableEdit::Add { column: new.def.clone() });
                continue;
            };
            let old_oid = self.columns.iter().find(|c| c.number == new.number).map_or(0, |c| c.type_oid);
            if old.name != new.def.name {
                edits.push(TableEdit::Rename { from: old.name.clone(), to: new.def.name.clone() });
            }
            if !same_type(&old.sql_type, old_oid, &new.def.sql_type, new.type_oid) {
                edits.push(TableEdit::Retype { from: old.clone(), column: new.def.clone() });
            }
            if old.nullable != new.def.nullable {
                edits.push(TableEdit::Nullable { name: new.def.name.clone(), nullable: new.def.nullable });
            }
            let expression = |d: &Option<ColumnDefault>| matches!(d, Some(ColumnDefault::Expression(_)));
            if old.default != new.def.default
                && old.identity == new.def.identity
                && (expression(&old.default) || expression(&new.def.default))
            {
                edits.push(TableEdit::Default { name: new.def.name.clone(), default: new.def.default.clone() });
            }
        }
        // Additions last, in number order: the target's columns keep the
        // source's order.
        edits.extend(rest);
        edits.extend(self.index_edits(next));
        edits
    }

    /// The indexes and constraints `next` adds or drops, by name (none
    /// where either version does not know them): drops first, then what is
    /// added (an index before the constraints that may rely on it).
    pub fn index_edits(&self, next: &TableVersion) -> Vec<TableEdit> {
        let mut edits = Vec::new();
        // A unique constraint is an index of its name too: one read as an
        // index (from a catalog) and later as a constraint is the same.
        let named = |list: &Option<Vec<(String, String)>>, name: &str| {
            list.as_ref().is_some_and(|l| l.iter().any(|(n, _)| n == name))
        };
        let pairs = [
            (&self.indexes, &next.indexes, true, &self.constraints, &next.constraints),
            (&self.constraints, &next.constraints, false, &self.indexes, &next.indexes),
        ];
        let (mut drops, mut adds) = (Vec::new(), Vec::new());
        for (before, after, index, before_other, after_other) in pairs {
            let (Some(before), Some(after)) = (before, after) else { continue };
            let after_all = |n: &str| after.iter().any(|(a, _)| a == n) || named(after_other, n);
            let before_all = |n: &str| before.iter().any(|(b, _)| b == n) || named(before_other, n);
            for (name, _) in before.iter().filter(|(n, _)| !after_all(n)) {
                drops.push(match index {
                    true => TableEdit::DropIndex { name: name.clone() },
                    false => TableEdit::DropConstraint { name: name.clone() },
                });
            }
            for (name, def) in after.iter().filter(|(n, _)| !before_all(n)) {
                adds.push(match index {
                    true => TableEdit::AddIndex { name: name.clone(), def: def.clone() },
                    false => TableEdit::AddConstraint { name: name.clone(), def: def.clone() },
                });
            }
        }
        edits.extend(drops);
        edits.extend(adds);
        edits
    }
}

/// One change to a table: to its columns, or the table made or dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TableEdit {
    /// The table is new: created with its columns and key (on PostgreSQL,
    /// a partition is created as one of `partition_of`: its parent's quoted
    /// name and its bounds).
    Create {
        partition_of: Option<(String, String)>,
    },
    DropTable,
    /// The table is renamed (or moved to another schema; SQLite has none).
    RenameTable {
        schema: Option<String>,
        name: String,
    },
    Add {
        column: ColumnDef,
    },
    Drop {
        name: String,
    },
    Rename {
        from: String,
        to: String,
    },
    /// An index made on the source (`def`: PostgreSQL's definition).
    AddIndex {
        name: String,
        def: String,
    },
    DropIndex {
        name: String,
    },
    /// A CHECK or FOREIGN KEY constraint (`def`: `pg_get_constraintdef`).
    AddConstraint {
        name: String,
        def: String,
    },
    DropConstraint {
        name: String,
    },
    /// A new type (`from` is the column before, under the column's new name
    /// if it was renamed too).
    Retype {
        from: ColumnDef,
        column: ColumnDef,
    },
    Nullable {
        name: String,
        nullable: bool,
    },
    Default {
        name: String,
        default: Option<ColumnDefault>,
    },
}

impl std::fmt::Display for TableEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableEdit::Create { partition_of: None } => write!(f, "CREATE TABLE"),
            TableEdit::Create { partition_of: Some((parent, bound)) } => {
                write!(f, "CREATE TABLE … PARTITION OF {parent} {bound}")
            }
            TableEdit::DropTable => write!(f, "DROP TABLE"),
            TableEdit::RenameTable { schema: Some(schema), name } => write!(f, "RENAME TO {schema}.{name}"),
            TableEdit::RenameTable { schema: None, name } => write!(f, "RENAME TO {name}"),
            TableEdit::AddIndex { def, .. } => write!(f, "{def}"),
            TableEdit::DropIndex { name } => write!(f, "DROP INDEX {name}"),
            TableEdit::AddConstraint { name, def } => write!(f, "ADD CONSTRAINT {name} {def}"),
            TableEdit::DropConstraint { name } => write!(f, "DROP CONSTRAINT {name}"),
            TableEdit::Add { column } => write!(f, "ADD COLUMN {} {}", column.name, column.sql_type),
            TableEdit::Drop { name } => write!(f, "DROP COLUMN {name}"),
            TableEdit::Rename { from, to } => write!(f, "RENAME COLUMN {from} TO {to}"),
            TableEdit::Retype { from, column } => {
                write!(f, "ALTER COLUMN {} TYPE {} (was {})", column.name, column.sql_type, from.sql_type)
            }
            TableEdit::Nullable { name, nullable: true } => write!(f, "ALTER COLUMN {name} DROP NOT NULL"),
            TableEdit::Nullable { name, nullable: false } => write!(f, "ALTER COLUMN {name} SET NOT NULL"),
            TableEdit::Default { name, default: None } => write!(f, "ALTER COLUMN {name} DROP DEFAULT"),
            TableEdit::Default { name, .. } => write!(f, "ALTER COLUMN {name} SET DEFAULT …"),
        }
    }
}

impl TableEdit {
    /// Whether the edit changes the table's columns (not its indexes or
    /// constraints).
    pub fn of_columns(&self) -> bool {
        !matches!(
            self,
            TableEdit::AddIndex { .. }
                | TableEdit::DropIndex { .. }
                | TableEdit::AddConstraint { .. }
                | TableEdit::DropConstraint { .. }
        )
    }

    /// Why the edit cannot be carried to a target as it is (`None`: it can).
    /// `rewritten`: the source rewrote the table's rows in the same
    /// statement (a default computed per row, a type change).
    pub fn unsafe_reason(&self, rewritten: bool) -> Option<String> {
        match self {
            TableEdit::Retype { from, column } if !widens(&from.sql_type, &column.sql_type) => Some(format!(
                "column {} changed type from {} to {}, which is not a widening ferry applies as it is (values \
                 could be rounded or refused on the target)",
                column.name, from.sql_type, column.sql_type
            )),
            TableEdit::Add { column } if column.identity.is_some() || column.sequence_next().is_some() => {
                Some(format!(
                    "column {} was added with values from a sequence: the source numbered its existing rows, and \
                     the target would number them in another order",
                    column.name
                ))
            }
            TableEdit::Add { column } if rewritten && column.default.is_some() => Some(format!(
                "column {} was added with a volatile default: the source computed a value for each existing row, \
                 which the target cannot compute again",
                column.name
            )),
            _ => None,
        }
    }

    /// The statement that makes the edit on `def` (the table before it), on
    /// `def`'s engine; `Ok(None)`: nothing to do there; `Err`: the engine
    /// cannot.
    pub fn sql(&self, def: &TableDef) -> Result<Option<String>, String> {
        let table = def.relation();
        let alter = |what: String| Ok(Some(format!("ALTER TABLE {table} {what}")));
        let pg = def.engine == Engine::Postgres;
        match self {
            TableEdit::Create { partition_of: Some((parent, bound)) } if pg => {
                Ok(Some(format!("CREATE TABLE {} PARTITION OF {parent} {bound}", def.quoted())))
            }
            TableEdit::Create { .. } => Ok(Some(def.create_sql(&Default::default(), &Default::default()))),
            TableEdit::DropTable => Ok(Some(format!("DROP TABLE {}", def.quoted()))),
            // Two statements where the schema changes too (one simple query).
            TableEdit::RenameTable { schema: Some(schema), name } if pg && def.name.schema.as_ref() != Some(schema) => {
                let moved = TableName { schema: Some(schema.clone()), name: def.name.name.clone() };
                let mut sql = format!("ALTER TABLE {table} SET SCHEMA {}", quote_ident(schema));
                if *name != def.name.name {
                    sql.push_str(&format!("; ALTER TABLE {} RENAME TO {}", moved.quoted(), quote_ident(name)));
                }
                Ok(Some(sql))
            }
            TableEdit::RenameTable { name, .. } if *name == def.name.name => Ok(None),
            TableEdit::RenameTable { name, .. } => alter(format!("RENAME TO {}", quote_ident(name))),
            TableEdit::AddIndex { def: index, .. } if pg => {
                Ok(Some(crate::schema::retarget_index(index, &def.quoted())))
            }
            TableEdit::DropIndex { name } => Ok(Some(match &def.name.schema {
                Some(schema) if pg => format!("DROP INDEX IF EXISTS {}.{}", quote_ident(schema), quote_ident(name)),
                _ => format!("DROP INDEX IF EXISTS {}", quote_ident(name)),
            })),
            TableEdit::AddConstraint { name, def: clause } if pg => {
                alter(format!("ADD CONSTRAINT {} {clause}", quote_ident(name)))
            }
            TableEdit::DropConstraint { name } if pg => {
                alter(format!("DROP CONSTRAINT IF EXISTS {}", quote_ident(name)))
            }
            // SQLite: an index's definition is PostgreSQL's; a constraint
            // cannot be added to a table there.
            TableEdit::AddIndex { .. } | TableEdit::AddConstraint { .. } | TableEdit::DropConstraint { .. } => Ok(None),
            TableEdit::Add { column } => {
                // A stream's source is PostgreSQL: its declared type as it is
                // (an enum, a domain, a modifier), as a copy of its schema has.
                let sql_type = match pg {
                    true => column.sql_type.clone(),
                    false => crate::schema::carried_type(&column.kind, &column.sql_type, def.engine),
                };
                let default = match (&column.default, pg) {
                    (Some(ColumnDefault::Expression(e)), true) => format!(" DEFAULT {e}"),
                    _ => String::new(),
                };
                let not_null = if column.nullable { "" } else { " NOT NULL" };
                alter(format!("ADD COLUMN {} {sql_type}{not_null}{default}", quote_ident(&column.name)))
            }
            TableEdit::Drop { name } => alter(format!("DROP COLUMN {}", quote_ident(name))),
            TableEdit::Rename { from, to } => {
                alter(format!("RENAME COLUMN {} TO {}", quote_ident(from), quote_ident(to)))
            }
            TableEdit::Retype { column, .. } if pg => {
                let name = quote_ident(&column.name);
                alter(format!("ALTER COLUMN {name} TYPE {0} USING {name}::{0}", column.sql_type))
            }
            TableEdit::Retype { column, .. } => Err(format!(
                "SQLite cannot change the type of column {} of {} (the table would have to be rebuilt)",
                column.name, def.name
            )),
            TableEdit::Nullable { name, nullable } if pg => {
                alter(format!("ALTER COLUMN {} {} NOT NULL", quote_ident(name), if *nullable { "DROP" } else { "SET" }))
            }
            TableEdit::Default { name, default: Some(ColumnDefault::Expression(e)) } if pg => {
                alter(format!("ALTER COLUMN {} SET DEFAULT {e}", quote_ident(name)))
            }
            TableEdit::Default { name, default: None } if pg => {
                alter(format!("ALTER COLUMN {} DROP DEFAULT", quote_ident(name)))
            }
            // SQLite cannot alter a column's constraints; a sequence's
            // default is the schema copy's.
            TableEdit::Nullable { .. } | TableEdit::Default { .. } => Ok(None),
        }
    }
}

/// Whether two columns' types are the same: by OID where both are known
/// (a type's name is qualified or not depending on the reader's
/// `search_path`: `mood` and `public.mood` are one type), else by name.
pub fn same_type(a: &str, a_oid: u32, b: &str, b_oid: u32) -> bool {
    match (a_oid, b_oid) {
        (0, _) | (_, 0) => a == b,
        _ => a_oid == b_oid,
    }
}

/// Whether every value of PostgreSQL type `from` is a value of `to`, as
/// it is (a widening: `integer` → `bigint`, `varchar(20)` → `varchar(80)`
/// or `text`, `numeric(10,2)` → `numeric(14,4)`, `real` → `double precision`).
pub fn widens(from: &str, to: &str) -> bool {
    let integers = ["smallint", "integer", "bigint"];
    let rank = |t: &str| integers.iter().position(|i| *i == t);
    let (from, to) = (from.trim(), to.trim());
    if from == to {
        return true;
    }
    if let (Some(a), Some(b)) = (rank(from), rank(to)) {
        return a <= b;
    }
    if rank(from).is_some() && to == "numeric" {
        return true;
    }
    let args = |t: &str, base: &str| -> Option<Vec<i64>> {
        let rest = t.strip_prefix(base)?;
        if rest.is_empty() {
            return Some(Vec::new());
        }
        let inner = rest.strip_prefix('(')?.strip_suffix(')')?;
        inner.split(',').map(|n| n.trim().parse::<i64>().ok()).collect()
    };
    let text = |t: &str| t == "text" || t == "character varying";
    if let Some(a) = args(from, "character varying") {
        return text(to) || args(to, "character varying").is_some_and(|b| !a.is_empty() && b[0] >= a[0]);
    }
    if let Some(a) = args(from, "numeric") {
        return match args(to, "numeric") {
            Some(b) if b.is_empty() => true,
            Some(b) if a.len() == 2 && b.len() == 2 => b[1] >= a[1] && b[0] - b[1] >= a[0] - a[1],
            Some(b) if a.len() == 1 && !b.is_empty() => b[0] - b.get(1).copied().unwrap_or(0) >= a[0],
            _ => false,
        };
    }
    matches!((from, to), ("real", "double precision") | ("character", "text"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Kind;

    fn column(name: &str, sql_type: &str) -> ColumnDef {
        ColumnDef::plain(name, sql_type, Kind::Text, true)
    }

    fn version(columns: &[(i16, &str, &str)]) -> TableVersion {
        TableVersion {
            columns: columns
                .iter()
                .map(|&(n, name, t)| VersionColumn { number: n, def: column(name, t), type_oid: 0 })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn numbers_tell_a_rename_from_a_drop_and_an_add() {
        let before = version(&[(1, "id", "integer"), (2, "qty", "integer"), (3, "note", "text")]);
        // The last column renamed: same number.
        let renamed = version(&[(1, "id", "integer"), (2, "qty", "integer"), (3, "remark", "text")]);
        assert_eq!(before.edits(&renamed), vec![TableEdit::Rename { from: "note".into(), to: "remark".into() }]);
        // Dropped and added under the same name: a new number.
        let again = version(&[(1, "id", "integer"), (2, "qty", "integer"), (4, "note", "text")]);
        assert_eq!(
            before.edits(&again),
            vec![TableEdit::Drop { name: "note".into() }, TableEdit::Add { column: column("note", "text") }]
        );
        let widened = version(&[(1, "id", "integer"), (2, "qty", "bigint"), (3, "note", "text")]);
        let edits = before.edits(&widened);
        assert!(matches!(&edits[..], [TableEdit::Retype { column, .. }] if column.sql_type == "bigint"));
        assert_eq!(edits[0].unsafe_reason(true), None);
    }

    #[test]
    fn indexes_and_constraints_are_told_apart_by_name_once_known() {
        let named = |list: &[&str]| Some(list.iter().map(|n| (n.to_string(), format!("def of {n}"))).collect());
        let before =
            TableVersion { indexes: named(&["a_idx", "b_key"]), constraints: named(&["qty_ck"]), ..version(&[]) };
        let after = TableVersion { indexes: named(&["b_key", "c_idx"]), constraints: named(&["fk"]), ..version(&[]) };
        assert_eq!(
            before.edits(&after),
            vec![
                TableEdit::DropIndex { name: "a_idx".into() },
                TableEdit::DropConstraint { name: "qty_ck".into() },
                TableEdit::AddIndex { name: "c_idx".into(), def: "def of c_idx".into() },
                TableEdit::AddConstraint { name: "fk".into(), def: "def of fk".into() },
            ]
        );
        // Not known before (an older ferry's version): nothing to tell.
        assert!(version(&[]).edits(&after).is_empty());
        assert!(after.edits(&after).iter().all(|e| !e.of_columns()));
    }

    #[test]
    fn a_type_named_with_its_schema_is_the_same_type() {
        let mut before = version(&[(1, "mood", "mood")]);
        before.columns[0].type_oid = 16400;
        let mut after = version(&[(1, "mood", "public.mood")]);
        after.columns[0].type_oid = 16400;
        assert!(before.edits(&after).is_empty());
        after.columns[0].type_oid = 16500;
        assert_eq!(before.edits(&after).len(), 1, "another type under a like name");
    }

    #[test]
    fn only_widenings_apply_as_they_are() {
        for (from, to) in [
            ("integer", "bigint"),
            ("smallint", "integer"),
            ("integer", "numeric"),
            ("character varying(20)", "character varying(80)"),
            ("character varying(20)", "text"),
            ("numeric(10,2)", "numeric(14,4)"),
            ("numeric(10,2)", "numeric"),
            ("real", "double precision"),
        ] {
            assert!(widens(from, to), "{from} -> {to}");
        }
        for (from, to) in [
            ("bigint", "integer"),
            ("character varying(80)", "character varying(20)"),
            ("text", "character varying(20)"),
            ("numeric(14,4)", "numeric(10,2)"),
            ("numeric(10,2)", "numeric(10,4)"),
            ("double precision", "real"),
            ("text", "integer"),
            ("timestamp without time zone", "timestamp with time zone"),
        ] {
            assert!(!widens(from, to), "{from} -> {to}");
        }
    }

    #[test]
    fn each_engine_gets_its_own_statement() {
        let pg = TableDef::new(
            crate::db::TableName { schema: Some("public".into()), name: "items".into() },
            Engine::Postgres,
            vec![column("id", "integer")],
            vec![0],
        );
        let mut note = column("note", "text");
        note.default = Some(ColumnDefault::Expression("'none'::text".into()));
        let add = TableEdit::Add { column: note };
        assert_eq!(
            add.sql(&pg).unwrap().unwrap(),
            r#"ALTER TABLE "public"."items" ADD COLUMN "note" text DEFAULT 'none'::text"#
        );
        let lite = pg.for_target(crate::db::TableName { schema: None, name: "items".into() }, Engine::Sqlite);
        assert_eq!(add.sql(&lite).unwrap().unwrap(), r#"ALTER TABLE "items" ADD COLUMN "note" TEXT"#);
        let retype = TableEdit::Retype { from: column("id", "integer"), column: column("id", "bigint") };
        assert!(retype.sql(&lite).is_err());
        assert_eq!(
            retype.sql(&pg).unwrap().unwrap(),
            r#"ALTER TABLE "public"."items" ALTER COLUMN "id" TYPE bigint USING "id"::bigint"#
        );
        let rename = |schema: Option<&str>, name: &str| TableEdit::RenameTable {
            schema: schema.map(str::to_string),
            name: name.to_string(),
        };
        let sql = |edit: TableEdit, def: &TableDef| edit.sql(def).unwrap().unwrap_or_default();
        assert_eq!(
            sql(rename(Some("public"), "items_old"), &pg),
            r#"ALTER TABLE "public"."items" RENAME TO "items_old""#
        );
        assert_eq!(sql(rename(Some("archive"), "items"), &pg), r#"ALTER TABLE "public"."items" SET SCHEMA "archive""#);
        assert_eq!(
            sql(rename(Some("archive"), "old"), &pg),
            r#"ALTER TABLE "public"."items" SET SCHEMA "archive"; ALTER TABLE "archive"."items" RENAME TO "old""#
        );
        assert_eq!(sql(rename(None, "items_old"), &lite), r#"ALTER TABLE "items" RENAME TO "items_old""#);
        assert_eq!(sql(rename(None, "items"), &lite), "");
    }
}
