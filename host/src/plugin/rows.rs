//! `transform-row` plugins (`ferry:transform@0.2.0`): one component, any
//! table. [`RowPlugin`] is compiled once; a [`RowTransformer`] is one
//! sandboxed instance that has been told each source table's schema
//! (`describe`) and transforms batches of typed rows. Traps are contained
//! as in [`super::Transformer`]: the batch is replayed row by row on fresh
//! instances (each told the schemas again) and only the trapping rows come
//! back as [`RowOutcome::Trapped`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::{Engine, Store};

use super::bindings::row::{self as wit, RowTransform, RowTransformPre};
use super::sandbox::State;
use super::{LoadOptions, PluginError, compile, export_names};
use crate::db::TableName;
use crate::keyset::Row;
use crate::schema::{ColumnDef, TableDef};
use crate::value::{Kind, Value};

/// What became of one source row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// Zero or more rows, each for an output table (by name).
    Rows(Vec<(String, Row)>),
    Rejected(String),
    Fatal(String),
    Trapped(String),
}

/// A compiled `transform-row` plugin.
pub struct RowPlugin {
    engine: Engine,
    pre: RowTransformPre<State>,
    path: PathBuf,
    sha256: String,
    limits: super::Limits,
    facts: super::Facts,
}

impl std::fmt::Debug for RowPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowPlugin").field("path", &self.path).field("sha256", &self.sha256).finish()
    }
}

impl RowPlugin {
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Arc<RowPlugin>, PluginError> {
        let super::Compiled { engine, component, instance_pre, sha256, facts } = compile(path, options)?;
        let pre = RowTransformPre::new(instance_pre).map_err(|_| PluginError::WrongRowWorld {
            path: path.into(),
            exports: export_names(&engine, &component),
        })?;
        Ok(Arc::new(RowPlugin { engine, pre, path: path.into(), sha256, limits: options.limits, facts }))
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh instance, told nothing yet.
    pub fn instantiate(self: &Arc<Self>) -> Result<RowTransformer, PluginError> {
        let (store, bindings) = self.fresh()?;
        Ok(RowTransformer { plugin: Arc::clone(self), store, bindings, described: HashMap::new(), traps: 0 })
    }

    fn fresh(&self) -> Result<(Store<State>, RowTransform), PluginError> {
        let instantiate =
            |e: wasmtime::Error| PluginError::Instantiate { path: self.path.clone(), message: format!("{e:#}") };
        let mut store = super::sandbox::store(&self.engine, &self.limits);
        let instance = self.pre.instance_pre().instantiate(&mut store).map_err(instantiate)?;
        let bindings = RowTransform::new(&mut store, &instance).map_err(instantiate)?;
        Ok((store, bindings))
    }
}

/// One sandboxed instance of a row plugin.
pub struct RowTransformer {
    plugin: Arc<RowPlugin>,
    store: Store<State>,
    bindings: RowTransform,
    /// The source schemas this instance was told, by table, with the
    /// output tables' definitions it answered (replayed on a new instance).
    described: HashMap<String, (wit::TableSchema, Vec<TableDef>)>,
    traps: u64,
}

impl RowTransformer {
    pub fn traps(&self) -> u64 {
        self.traps
    }

    /// Tells the plugin the schema of `source` and returns the definitions
    /// of the tables it writes for it (engine-neutral: PostgreSQL types
    /// from the kinds, to be re-targeted by the caller).
    pub fn describe(&mut self, source: &TableDef) -> Result<Vec<TableDef>, PluginError> {
        let schema = schema_to_wit(source);
        let outputs = self.call_describe(&schema)?;
        self.described.insert(source.name.to_string(), (schema, outputs.clone()));
        Ok(outputs)
    }

    fn call_describe(&mut self, schema: &wit::TableSchema) -> Result<Vec<TableDef>, PluginError> {
        super::sandbox::arm(&mut self.store, &self.plugin.limits);
        let refused = |reason: String| PluginError::Refused {
            path: self.plugin.path.clone(),
            table: schema.name.clone(),
            reason,
        };
        match self.bindings.ferry_transform_transform_row().call_describe(&mut self.store, schema) {
            Ok(Ok(outputs)) => outputs.into_iter().map(schema_from_wit).collect::<Result<_, _>>().map_err(refused),
            Ok(Err(reason)) => Err(refused(reason)),
            Err(e) => Err(refused(super::describe_trap(&e, &self.plugin.limits, &self.store.data().stderr()))),
        }
    }

    /// Transforms rows of `table` (described before): one outcome per row.
    pub fn transform_batch(&mut self, table: &str, rows: &[Row]) -> Result<Vec<RowOutcome>, PluginError> {
        let wit_rows: Vec<Vec<wit::Value>> = rows.iter().map(|r| r.iter().map(value_to_wit).collect()).collect();
        super::sandbox::arm(&mut self.store, &self.plugin.limits);
        let result =
            self.bindings.ferry_transform_transform_row().call_transform_batch(&mut self.store, table, &wit_rows);
        match result {
            Ok(results) if results.len() == rows.len() => Ok(results.into_iter().map(outcome).collect()),
            Ok(results) => {
                let message = format!(
                    "plugin returned {} results for a batch of {} rows (transform-batch must return one per row)",
                    results.len(),
                    rows.len()
                );
                Ok(rows.iter().map(|_| RowOutcome::Fatal(message.clone())).collect())
            }
            Err(_) => {
                self.replace()?;
                let mut outcomes = Vec::with_capacity(rows.len());
                for row in wit_rows {
                    super::sandbox::arm(&mut self.store, &self.plugin.limits);
                    let one = self.bindings.ferry_transform_transform_row().call_transform_batch(
                        &mut self.store,
                        table,
                        std::slice::from_ref(&row),
                    );
                    match one {
                        Ok(mut r) if r.len() == 1 => outcomes.push(outcome(r.remove(0))),
                        Ok(_) => {
                            outcomes.push(RowOutcome::Fatal("transform-batch must return one result per row".into()))
                        }
                        Err(e) => {
                            outcomes.push(RowOutcome::Trapped(super::describe_trap(
                                &e,
                                &self.plugin.limits,
                                &self.store.data().stderr(),
                            )));
                            self.replace()?;
                        }
                    }
                }
                Ok(outcomes)
            }
        }
    }

    /// The output keys of the row of `table` whose source key is `key`
    /// (`target-keys`), as [`RowOutcome::Rows`] of (table, key values). A
    /// key with fewer values than its table's key names every row whose key
    /// starts with them.
    pub fn target_keys(&mut self, table: &str, key: &[Value]) -> Result<RowOutcome, PluginError> {
        let wit_key: Vec<wit::Value> = key.iter().map(value_to_wit).collect();
        super::sandbox::arm(&mut self.store, &self.plugin.limits);
        match self.bindings.ferry_transform_transform_row().call_target_keys(&mut self.store, table, &wit_key) {
            Ok(Ok(keys)) => Ok(RowOutcome::Rows(
                keys.into_iter().map(|k| (k.table, k.key.into_iter().map(value_from_wit).collect())).collect(),
            )),
            Ok(Err(wit::RowError::Reject(reason))) => Ok(RowOutcome::Rejected(reason)),
            Ok(Err(wit::RowError::Fatal(reason))) => Ok(RowOutcome::Fatal(reason)),
            Err(e) => {
                let message = super::describe_trap(&e, &self.plugin.limits, &self.store.data().stderr());
                self.replace()?;
                Ok(RowOutcome::Trapped(message))
            }
        }
    }

    /// A new instance, told again every schema the old one knew.
    fn replace(&mut self) -> Result<(), PluginError> {
        self.traps += 1;
        let (store, bindings) = self.plugin.fresh()?;
        self.store = store;
        self.bindings = bindings;
        let schemas: Vec<wit::TableSchema> = self.described.values().map(|(s, _)| s.clone()).collect();
        for schema in schemas {
            self.call_describe(&schema)?;
        }
        Ok(())
    }
}

fn outcome(result: Result<Vec<wit::OutputRow>, wit::RowError>) -> RowOutcome {
    match result {
        Ok(rows) => RowOutcome::Rows(
            rows.into_iter().map(|r| (r.table, r.values.into_iter().map(value_from_wit).collect())).collect(),
        ),
        Err(wit::RowError::Reject(reason)) => RowOutcome::Rejected(reason),
        Err(wit::RowError::Fatal(reason)) => RowOutcome::Fatal(reason),
    }
}

fn scalar_to_wit(kind: &Kind) -> Option<wit::ScalarKind> {
    use wit::ScalarKind as S;
    Some(match kind {
        Kind::Bool => S::Boolean,
        Kind::Int16 => S::Int16,
        Kind::Int32 => S::Int32,
        Kind::Int64 => S::Int64,
        Kind::Float32 => S::Float32,
        Kind::Float64 => S::Float64,
        Kind::Numeric => S::Numeric,
        Kind::Text => S::Text,
        Kind::Bytes => S::Bytes,
        Kind::Json => S::Json,
        Kind::Uuid => S::Uuid,
        Kind::Date => S::Date,
        Kind::Time => S::Time,
        Kind::Timestamp => S::Timestamp,
        Kind::TimestampTz => S::Timestamptz,
        Kind::Interval => S::Interval,
        Kind::Array(_) | Kind::Other => return None,
    })
}

fn scalar_from_wit(kind: wit::ScalarKind) -> Kind {
    use wit::ScalarKind as S;
    match kind {
        S::Boolean => Kind::Bool,
        S::Int16 => Kind::Int16,
        S::Int32 => Kind::Int32,
        S::Int64 => Kind::Int64,
        S::Float32 => Kind::Float32,
        S::Float64 => Kind::Float64,
        S::Numeric => Kind::Numeric,
        S::Text => Kind::Text,
        S::Bytes => Kind::Bytes,
        S::Json => Kind::Json,
        S::Uuid => Kind::Uuid,
        S::Date => Kind::Date,
        S::Time => Kind::Time,
        S::Timestamp => Kind::Timestamp,
        S::Timestamptz => Kind::TimestampTz,
        S::Interval => Kind::Interval,
    }
}

fn schema_to_wit(def: &TableDef) -> wit::TableSchema {
    wit::TableSchema {
        name: def.name.to_string(),
        columns: def
            .columns
            .iter()
            .map(|c| wit::Column {
                name: c.name.clone(),
                type_: match &c.kind {
                    Kind::Array(element) => match scalar_to_wit(element) {
                        Some(k) => wit::ColumnType::Array(k),
                        None => wit::ColumnType::Other(c.sql_type.clone()),
                    },
                    kind => match scalar_to_wit(kind) {
                        Some(k) => wit::ColumnType::Scalar(k),
                        None => wit::ColumnType::Other(c.sql_type.clone()),
                    },
                },
                nullable: c.nullable,
            })
            .collect(),
        primary_key: def.key_columns().map(|c| c.name.clone()).collect(),
    }
}

/// A declared output table as a definition (PostgreSQL types; the caller
/// re-targets it to its engine).
fn schema_from_wit(schema: wit::TableSchema) -> Result<TableDef, String> {
    let name = TableName::parse(&schema.name).map_err(|e| format!("output table: {e}"))?;
    let columns: Vec<ColumnDef> = schema
        .columns
        .into_iter()
        .map(|c| {
            let kind = match c.type_ {
                wit::ColumnType::Scalar(k) => scalar_from_wit(k),
                wit::ColumnType::Array(k) => Kind::Array(Box::new(scalar_from_wit(k))),
                wit::ColumnType::Other(_) => Kind::Other,
            };
            let sql_type = kind.pg_type();
            ColumnDef::plain(c.name, sql_type, kind, c.nullable)
        })
        .collect();
    let mut primary_key = Vec::new();
    for key in &schema.primary_key {
        let i = columns
            .iter()
            .position(|c| &c.name == key)
            .ok_or_else(|| format!("output table {name}: primary-key column {key} is not one of its columns"))?;
        primary_key.push(i);
    }
    if primary_key.is_empty() {
        return Err(format!("output table {name} declares no primary key (ferry needs one to load and validate it)"));
    }
    Ok(TableDef::new(name, crate::db::Engine::Postgres, columns, primary_key))
}

fn interval_to_wit(months: i32, days: i32, micros: i64) -> wit::Interval {
    wit::Interval { months, days, micros }
}

pub(crate) fn value_to_wit(value: &Value) -> wit::Value {
    use wit::Value as W;
    fn list<T>(items: &[Value], f: impl Fn(&Value) -> Option<T>) -> Vec<Option<T>> {
        items.iter().map(|v| if matches!(v, Value::Null) { None } else { f(v) }).collect()
    }
    match value {
        Value::Null => W::Null,
        Value::Bool(b) => W::Boolean(*b),
        Value::Int16(n) => W::Int16(*n),
        Value::Int32(n) => W::Int32(*n),
        Value::Int64(n) => W::Int64(*n),
        Value::Float32(f) => W::Float32(*f),
        Value::Float64(f) => W::Float64(*f),
        Value::Numeric(s) => W::Numeric(s.clone()),
        Value::Text(s) => W::Text(s.clone()),
        Value::Bytes(b) => W::Bytes(b.clone()),
        Value::Json(s) => W::Json(s.clone()),
        Value::Uuid(u) => W::Uuid(u.hyphenated().to_string()),
        Value::Date(d) => W::Date(*d),
        Value::Time(t) => W::Time(*t),
        Value::Timestamp(t) => W::Timestamp(*t),
        Value::TimestampTz(t) => W::Timestamptz(*t),
        Value::Interval { months, days, micros } => W::Interval(interval_to_wit(*months, *days, *micros)),
        Value::Unsupported { type_name, text } => {
            W::Unsupported(wit::Unsupported { type_name: type_name.clone(), text: text.clone() })
        }
        Value::Array { element, items } => match element {
            Kind::Bool => W::ArrayBoolean(list(items, |v| if let Value::Bool(b) = v { Some(*b) } else { None })),
            Kind::Int16 => W::ArrayInt16(list(items, |v| if let Value::Int16(n) = v { Some(*n) } else { None })),
            Kind::Int32 => W::ArrayInt32(list(items, |v| if let Value::Int32(n) = v { Some(*n) } else { None })),
            Kind::Int64 => W::ArrayInt64(list(items, |v| match v {
                Value::Int64(n) => Some(*n),
                _ => None,
            })),
            Kind::Float32 => W::ArrayFloat32(list(items, |v| if let Value::Float32(f) = v { Some(*f) } else { None })),
            Kind::Float64 => W::ArrayFloat64(list(items, |v| if let Value::Float64(f) = v { Some(*f) } else { None })),
            Kind::Numeric => {
                W::ArrayNumeric(list(items, |v| if let Value::Numeric(s) = v { Some(s.clone()) } else { None }))
            }
            Kind::Text => W::ArrayText(list(items, |v| if let Value::Text(s) = v { Some(s.clone()) } else { None })),
            Kind::Bytes => W::ArrayBytes(list(items, |v| if let Value::Bytes(b) = v { Some(b.clone()) } else { None })),
            Kind::Json => W::ArrayJson(list(items, |v| if let Value::Json(s) = v { Some(s.clone()) } else { None })),
            Kind::Uuid => {
                W::ArrayUuid(list(
                    items,
                    |v| if let Value::Uuid(u) = v { Some(u.hyphenated().to_string()) } else { None },
                ))
            }
            Kind::Date => W::ArrayDate(list(items, |v| if let Value::Date(d) = v { Some(*d) } else { None })),
            Kind::Time => W::ArrayTime(list(items, |v| if let Value::Time(t) = v { Some(*t) } else { None })),
            Kind::Timestamp => {
                W::ArrayTimestamp(list(items, |v| if let Value::Timestamp(t) = v { Some(*t) } else { None }))
            }
            Kind::TimestampTz => {
                W::ArrayTimestamptz(list(items, |v| if let Value::TimestampTz(t) = v { Some(*t) } else { None }))
            }
            Kind::Interval => W::ArrayInterval(list(items, |v| match v {
                Value::Interval { months, days, micros } => Some(interval_to_wit(*months, *days, *micros)),
                _ => None,
            })),
            Kind::Array(_) | Kind::Other => W::Unsupported(wit::Unsupported {
                type_name: format!("{element}[]"),
                text: crate::value::encode_pg_text(value).unwrap_or_default(),
            }),
        },
    }
}

pub(crate) fn value_from_wit(value: wit::Value) -> Value {
    use wit::Value as W;
    fn array<T>(element: Kind, items: Vec<Option<T>>, f: impl Fn(T) -> Value) -> Value {
        Value::Array { element, items: items.into_iter().map(|i| i.map_or(Value::Null, &f)).collect() }
    }
    match value {
        W::Null => Value::Null,
        W::Boolean(b) => Value::Bool(b),
        W::Int16(n) => Value::Int16(n),
        W::Int32(n) => Value::Int32(n),
        W::Int64(n) => Value::Int64(n),
        W::Float32(f) => Value::Float32(f),
        W::Float64(f) => Value::Float64(f),
        W::Numeric(s) => Value::Numeric(s),
        W::Text(s) => Value::Text(s),
        W::Bytes(b) => Value::Bytes(b),
        W::Json(s) => Value::Json(s),
        // An invalid UUID is kept as text so the target refuses it with its
        // own message (a `load` dead letter), never silently changed.
        W::Uuid(s) => match s.parse() {
            Ok(u) => Value::Uuid(u),
            Err(_) => Value::Unsupported { type_name: "uuid".into(), text: s },
        },
        W::Date(d) => Value::Date(d),
        W::Time(t) => Value::Time(t),
        W::Timestamp(t) => Value::Timestamp(t),
        W::Timestamptz(t) => Value::TimestampTz(t),
        W::Interval(i) => Value::Interval { months: i.months, days: i.days, micros: i.micros },
        W::ArrayBoolean(v) => array(Kind::Bool, v, Value::Bool),
        W::ArrayInt16(v) => array(Kind::Int16, v, Value::Int16),
        W::ArrayInt32(v) => array(Kind::Int32, v, Value::Int32),
        W::ArrayInt64(v) => array(Kind::Int64, v, Value::Int64),
        W::ArrayFloat32(v) => array(Kind::Float32, v, Value::Float32),
        W::ArrayFloat64(v) => array(Kind::Float64, v, Value::Float64),
        W::ArrayNumeric(v) => array(Kind::Numeric, v, Value::Numeric),
        W::ArrayText(v) => array(Kind::Text, v, Value::Text),
        W::ArrayBytes(v) => array(Kind::Bytes, v, Value::Bytes),
        W::ArrayJson(v) => array(Kind::Json, v, Value::Json),
        W::ArrayUuid(v) => array(Kind::Uuid, v, |s: String| match s.parse() {
            Ok(u) => Value::Uuid(u),
            Err(_) => Value::Unsupported { type_name: "uuid".into(), text: s },
        }),
        W::ArrayDate(v) => array(Kind::Date, v, Value::Date),
        W::ArrayTime(v) => array(Kind::Time, v, Value::Time),
        W::ArrayTimestamp(v) => array(Kind::Timestamp, v, Value::Timestamp),
        W::ArrayTimestamptz(v) => array(Kind::TimestampTz, v, Value::TimestampTz),
        W::ArrayInterval(v) => array(Kind::Interval, v, |i: wit::Interval| Value::Interval {
            months: i.months,
            days: i.days,
            micros: i.micros,
        }),
        W::Unsupported(u) => Value::Unsupported { type_name: u.type_name, text: u.text },
    }
}

/// A table's plugin: a `transform-row` component, or a `transform-user`
/// (0.1.0) one, which the host adapts to the same calls (the seed's plugin
/// keeps working in a many-table pipeline).
#[derive(Debug, Clone)]
pub enum TablePlugin {
    Row(Arc<RowPlugin>),
    /// With the table its rows go to (`LoadOptions::output_table`).
    User(Arc<super::Plugin>, Option<String>),
}

impl TablePlugin {
    /// Loads a component of either contract (0.2.0 first).
    pub fn load(path: &Path, options: &LoadOptions) -> Result<TablePlugin, PluginError> {
        match RowPlugin::load(path, options) {
            Ok(p) => Ok(TablePlugin::Row(p)),
            Err(PluginError::WrongRowWorld { exports, .. }) => match super::Plugin::load(path, options) {
                Ok(p) => Ok(TablePlugin::User(p, options.output_table.clone())),
                Err(PluginError::WrongWorld { .. }) => Err(PluginError::WrongRowWorld { path: path.into(), exports }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    pub fn sha256(&self) -> &str {
        match self {
            TablePlugin::Row(p) => p.sha256(),
            TablePlugin::User(p, _) => p.sha256(),
        }
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        match self {
            TablePlugin::Row(p) => p.path(),
            TablePlugin::User(p, _) => p.path(),
        }
    }

    pub fn facts(&self) -> &super::Facts {
        match self {
            TablePlugin::Row(p) => &p.facts,
            TablePlugin::User(p, _) => p.facts(),
        }
    }

    /// The contract's interface the component exports.
    pub fn interface(&self) -> &'static str {
        match self {
            TablePlugin::Row(_) => wit::INTERFACE,
            TablePlugin::User(..) => super::INTERFACE,
        }
    }

    /// An instance of this version, told `source`'s schema, to take the
    /// place of `old` on that table: refused (with the reason) if it
    /// declares other output tables than `old` does — a new version
    /// changes rules, not the target's schema.
    pub fn replacing(&self, old: &TablePlugin, source: &TableDef) -> Result<TableTransformer, String> {
        self.replacing_as(old, source, source)
    }

    /// [`TablePlugin::replacing`] where the table has a new shape `source`
    /// that `old` (told `old_source`) may refuse: the outputs must still be
    /// the old version's.
    pub fn replacing_as(
        &self,
        old: &TablePlugin,
        source: &TableDef,
        old_source: &TableDef,
    ) -> Result<TableTransformer, String> {
        let mut instance = self.instantiate().map_err(|e| e.to_string())?;
        let declared = instance.describe(source).map_err(|e| e.to_string())?;
        let live = old.instantiate().and_then(|mut i| i.describe(old_source)).map_err(|e| e.to_string())?;
        if declared != live {
            let names = |defs: &[TableDef]| defs.iter().map(describe_table).collect::<Vec<_>>().join("; ");
            return Err(format!(
                "for table {}, it declares the output tables {} but the version it replaces declares {}: a new \
                 version changes the rules, not the target's schema (migrate into the new schema instead)",
                source.name,
                names(&declared),
                names(&live)
            ));
        }
        Ok(instance)
    }

    pub fn instantiate(&self) -> Result<TableTransformer, PluginError> {
        Ok(match self {
            TablePlugin::Row(p) => TableTransformer::Row(p.instantiate()?),
            TablePlugin::User(p, output) => TableTransformer::User {
                inner: p.instantiate()?,
                positions: None,
                output: output.clone().unwrap_or_default(),
            },
        })
    }
}

/// One instance of a [`TablePlugin`].
pub enum TableTransformer {
    Row(RowTransformer),
    /// A `transform-user` instance: the source's columns `id`, `name`,
    /// `email`, `created_at`, `metadata` (by name) become a `legacy-user`,
    /// its `new-user` a row of the output table named like the source.
    User {
        inner: super::Transformer,
        positions: Option<[usize; 5]>,
        output: String,
    },
}

/// The seed's new `users` table, as a transform-user plugin writes it.
fn new_user_table(name: TableName) -> TableDef {
    let column = |name: &str, kind: Kind| ColumnDef::plain(name, kind.pg_type(), kind, false);
    TableDef::new(
        name,
        crate::db::Engine::Postgres,
        vec![
            column("id", Kind::Text),
            column("first_name", Kind::Text),
            column("last_name", Kind::Text),
            column("email", Kind::Text),
            column("created_at", Kind::TimestampTz),
            column("settings", Kind::Json),
        ],
        vec![0],
    )
}

impl TableTransformer {
    pub fn traps(&self) -> u64 {
        match self {
            TableTransformer::Row(t) => t.traps(),
            TableTransformer::User { inner, .. } => inner.traps(),
        }
    }

    /// See [`RowTransformer::describe`].
    pub fn describe(&mut self, source: &TableDef) -> Result<Vec<TableDef>, PluginError> {
        match self {
            TableTransformer::Row(t) => t.describe(source),
            TableTransformer::User { inner, positions, output } => {
                let mut found = [0; 5];
                for (slot, name) in found.iter_mut().zip(["id", "name", "email", "created_at", "metadata"]) {
                    *slot = source.column_index(name).ok_or_else(|| PluginError::Refused {
                        path: inner.plugin().path().into(),
                        table: source.name.to_string(),
                        reason: format!(
                            "a transform-user plugin reads the seed's columns id, name, email, created_at, metadata; {} has no `{name}`",
                            source.name
                        ),
                    })?;
                }
                *positions = Some(found);
                if output.is_empty() {
                    *output = source.name.name.clone();
                }
                Ok(vec![new_user_table(TableName { schema: None, name: output.clone() })])
            }
        }
    }

    pub fn transform_batch(&mut self, table: &str, rows: &[Row]) -> Result<Vec<RowOutcome>, PluginError> {
        match self {
            TableTransformer::Row(t) => t.transform_batch(table, rows),
            TableTransformer::User { inner, positions, output } => {
                let p = positions.expect("described before transforming");
                let mut legacy = Vec::with_capacity(rows.len());
                let mut outcomes: Vec<Option<RowOutcome>> = Vec::with_capacity(rows.len());
                for row in rows {
                    match legacy_user(row, p) {
                        Ok(user) => {
                            legacy.push(user);
                            outcomes.push(None);
                        }
                        Err(reason) => outcomes.push(Some(RowOutcome::Rejected(reason))),
                    }
                }
                let (_, results) = inner.transform_batch(legacy)?;
                let mut results = results.into_iter();
                Ok(outcomes
                    .into_iter()
                    .map(|o| {
                        o.unwrap_or_else(|| match results.next().expect("one outcome per row") {
                            crate::model::Outcome::Row(u) => RowOutcome::Rows(vec![(
                                output.clone(),
                                vec![
                                    Value::Text(u.id),
                                    Value::Text(u.first_name),
                                    Value::Text(u.last_name),
                                    Value::Text(u.email),
                                    Value::TimestampTz(u.created_at),
                                    Value::Json(u.settings),
                                ],
                            )]),
                            crate::model::Outcome::Rejected(r) => RowOutcome::Rejected(r),
                            crate::model::Outcome::Fatal(r) => RowOutcome::Fatal(r),
                            crate::model::Outcome::Trapped(r) => RowOutcome::Trapped(r),
                        })
                    })
                    .collect())
            }
        }
    }
}

impl TableTransformer {
    /// See [`RowTransformer::target_keys`]; a `transform-user` plugin
    /// answers through `user-key` (its `new-user` id), and without that
    /// export the key cannot be known (rejected with the fix).
    pub fn target_keys(&mut self, table: &str, key: &[Value]) -> Result<RowOutcome, PluginError> {
        match self {
            TableTransformer::Row(t) => t.target_keys(table, key),
            TableTransformer::User { inner, output, .. } => {
                let id = match key {
                    [Value::Int16(n)] => i64::from(*n),
                    [Value::Int32(n)] => i64::from(*n),
                    [Value::Int64(n)] => *n,
                    other => return Ok(RowOutcome::Rejected(format!("key {other:?} is not one integer id"))),
                };
                Ok(match inner.target_key(id)? {
                    Some(super::KeyOutcome::Key(k)) => RowOutcome::Rows(vec![(output.clone(), vec![Value::Text(k)])]),
                    Some(super::KeyOutcome::Rejected(r)) => RowOutcome::Rejected(r),
                    Some(super::KeyOutcome::Fatal(r)) => RowOutcome::Fatal(r),
                    Some(super::KeyOutcome::Trapped(r)) => RowOutcome::Trapped(r),
                    None => RowOutcome::Rejected(
                        "the change carries only the key and the transform-user plugin does not export user-key; \
                         export it, or set REPLICA IDENTITY FULL on the source table"
                            .into(),
                    ),
                })
            }
        }
    }
}

/// A typed row as the seed's `legacy-user`, or why it does not fit.
fn legacy_user(row: &Row, p: [usize; 5]) -> Result<crate::model::LegacyUser, String> {
    let id = match &row[p[0]] {
        Value::Int16(n) => i64::from(*n),
        Value::Int32(n) => i64::from(*n),
        Value::Int64(n) => *n,
        other => return Err(format!("id {other:?} is not an integer (transform-user takes an s64 id)")),
    };
    let text = |i: usize, what: &str| match &row[i] {
        Value::Null => Ok(None),
        Value::Text(s) | Value::Json(s) => Ok(Some(s.clone())),
        other => Err(format!("{what} {other:?} is not text")),
    };
    let created_at = match &row[p[3]] {
        Value::Null => None,
        Value::Timestamp(t) | Value::TimestampTz(t) => Some(*t),
        // SQLite has no timestamp type: most databases keep them in TEXT
        // columns, in the forms its date functions read.
        Value::Text(text) => Some(crate::time::parse_text(text).ok_or_else(|| {
            format!(
                "created_at {text:?} is not a timestamp (expected YYYY-MM-DD[ HH:MM:SS[.ffffff]][Z|±HH:MM], as \
                 SQLite's date functions read them)"
            )
        })?),
        other => return Err(format!("created_at {other:?} is not a timestamp")),
    };
    Ok(crate::model::LegacyUser {
        id,
        name: text(p[1], "name")?,
        email: text(p[2], "email")?,
        created_at,
        metadata: text(p[4], "metadata")?,
    })
}

/// `name (column kind[?], …) key (…)`, for a refusal's reason.
fn describe_table(def: &TableDef) -> String {
    let columns: Vec<String> =
        def.columns.iter().map(|c| format!("{} {:?}{}", c.name, c.kind, if c.nullable { "?" } else { "" })).collect();
    let key: Vec<&str> = def.primary_key.iter().map(|&i| def.columns[i].name.as_str()).collect();
    format!("{} ({}) key ({})", def.name, columns.join(", "), key.join(", "))
}
