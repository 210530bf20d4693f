//! `ferry.toml`: what the user writes. These types only deserialise and
//! check; [`crate::settings`] turns them into the runtime settings the rest of
//! ferry uses (nothing past that point sees raw configuration).
//!
//! `${NAME}` in the file is replaced by the environment variable `NAME`
//! (`${NAME:-default}` gives a default, `$$` is a literal `$`) before parsing;
//! unknown keys and wrong types are errors naming the file, line and key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The pipeline's name: runs, checkpoints and dead letters are recorded
    /// under it. Default: "default".
    pub name: Option<String>,
    #[serde(default)]
    pub source: EndpointConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub plugin: PluginConfig,
    #[serde(default)]
    pub migrate: MigrateConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    /// `[reverse]`: the pipeline runs in parallel — `ferry sync --reverse`
    /// streams the new database's changes back into the old one, and both
    /// directions mark what they apply so neither sends it back.
    pub reverse: Option<ReverseConfig>,
    /// `[plan]`: evidence `ferry plan` looks for beyond the databases.
    #[serde(default)]
    pub plan: PlanConfig,
    /// `[schema]`: what of the source's schema comes along, between
    /// PostgreSQL databases.
    #[serde(default)]
    pub schema: SchemaConfig,
    /// `[[tables]]`: the source tables to move, by name, each with its own
    /// settings. With `source.include`, a pipeline of many tables.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

/// One `[[tables]]` entry. A table without a plugin is copied as it is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// The source table (`table` or `schema.table`).
    pub name: String,
    /// The target table (default: the same name; on SQLite without schema).
    pub target: Option<String>,
    /// For a table without a primary key: the columns of a unique index
    /// whose columns are NOT NULL, used as the key (pages, checkpoints,
    /// validation). On a table ferry creates, that unique index is built
    /// with the table, before the data.
    pub key: Option<Vec<String>>,
    /// For a table without a primary key (and no `key`): how to copy it
    /// anyway. Overrides `source.keyless`.
    pub keyless: Option<Keyless>,
    /// Overrides `target.on_conflict` for this table.
    pub on_conflict: Option<OnConflict>,
    /// The table's transform: a `transform-row` component (or a
    /// `transform-user` one for the seed's users). Without it the table is
    /// copied as it is. Relative paths are relative to the file.
    pub plugin: Option<PathBuf>,
    /// Pinned SHA-256 of this table's plugin.
    pub plugin_sha256: Option<String>,
    /// The plugin's inverse for the reverse stream of a parallel run: a
    /// `transform-row` component from the plugin's output table back to
    /// this table. A table without a plugin goes back as it is.
    pub inverse: Option<PathBuf>,
    /// Pinned SHA-256 of the inverse.
    pub inverse_sha256: Option<String>,
}

/// `[schema]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaConfig {
    /// What of the source's schema is created in the target with the tables
    /// copied as they are (default `tables`).
    pub copy: Option<SchemaCopy>,
    /// Keep owners and privileges (`ALTER … OWNER TO`, `GRANT`) as the
    /// source has them (default true): every role they name must exist in
    /// the target. `false`: the target's objects belong to ferry's role.
    pub owners: Option<bool>,
    /// The directory holding `pg_dump` and `pg_restore` (default: `PATH`),
    /// of the source server's major version or newer.
    pub bin_dir: Option<PathBuf>,
}

/// What of a PostgreSQL source's schema comes along.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemaCopy {
    /// The pipeline's tables with everything they need (extensions,
    /// schemas, types, sequences, functions) and own (defaults, keys,
    /// indexes, constraints, triggers, comments), their partitions, and
    /// the other objects of their schemas built only on them (views,
    /// functions…).
    #[default]
    Tables,
    /// Every object of the database, but the tables the pipeline leaves
    /// out and what is built on them.
    Database,
    /// None: ferry creates each missing table from its columns and key
    /// (types, views, functions, triggers are the user's to create).
    None,
}

/// `[plan]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// Where the source's backup is (a `pg_dump` file, a copy of the SQLite
    /// file…), relative to this file: ticked when it exists.
    pub source_backup: Option<PathBuf>,
    /// The same for the target's backup (when it held data before).
    pub target_backup: Option<PathBuf>,
}

/// `[reverse]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReverseConfig {
    /// Replication slot of the reverse stream, in the new database
    /// (default `ferry_<name>_reverse`).
    pub slot: Option<String>,
    /// Its publication (default `ferry_<name>_reverse`).
    pub publication: Option<String>,
    /// Detect rows written on both sides at once (default true; needs
    /// `track_commit_timestamp = on`). Off, the version applied last wins.
    pub detect_conflicts: Option<bool>,
    /// `ferry cutover`/`cutback`'s switch hook: a shell command run with
    /// `FERRY_SWITCH_TO` = `new` or `old` (and a JSON document on stdin).
    pub switch_command: Option<String>,
    /// The same as a JSON POST (`{"event": "switch", "to": …}`).
    pub switch_webhook: Option<String>,
    /// The lag gate: how far behind (seconds) the stream into the side
    /// switched to may be. Default 1.
    pub max_lag_seconds: Option<f64>,
    /// How long a switch waits for the side left to drain. Default 60.
    pub drain_timeout_seconds: Option<f64>,
}

/// `[source]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `postgres://user:password@host:port/db` or `sqlite://path/to/file.db`.
    pub url: Option<String>,
    /// Table name, optionally schema-qualified (`public.users`). Default `users`.
    pub table: Option<String>,
    /// Source tables to move, by pattern (`public.*`, `sales.order*`; a
    /// pattern without a dot matches the table name in any schema). Makes
    /// the pipeline one of many tables, copied as they are unless a
    /// `[[tables]]` entry says otherwise.
    pub include: Option<Vec<String>>,
    /// Patterns of tables to leave out of `include`.
    pub exclude: Option<Vec<String>>,
    /// What to do with a table without a primary key (default `refuse`).
    pub keyless: Option<Keyless>,
    /// `ferry sync`: install event triggers in the source (a superuser's
    /// consent) that put every statement changing a table's columns into
    /// the stream, so renames, type changes and added columns' defaults
    /// flow to the target exactly. Off: a column change pauses the stream
    /// until the target table is altered to match. Default false; removed
    /// by `ferry sync --teardown`.
    pub capture_ddl: Option<bool>,
}

/// How a table without a primary key (nor a `key`) is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Keyless {
    /// Refuse the table, saying how to give it a key (default: ferry pages,
    /// checkpoints, upserts and validates by key).
    #[default]
    Refuse,
    /// Copy it in storage order — PostgreSQL ctid ranges (SQLite: rowid
    /// ranges) in one snapshot — into a target table that holds nothing
    /// else: an interrupted copy empties it and starts the table over, and
    /// `ferry validate` compares the two sides as multisets of rows.
    Ctid,
}

/// `[target]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub url: Option<String>,
    pub table: Option<String>,
    /// What to do with a row whose key already exists in the target.
    pub on_conflict: Option<OnConflict>,
    /// How rows are written into PostgreSQL.
    pub load_method: Option<LoadMethod>,
    /// Change streams: what becomes of the target row when the plugin
    /// rejects a newer version of it.
    pub on_reject: Option<OnReject>,
    /// Journal what each run changes so `ferry rollback` can undo it
    /// (default true).
    pub undo_journal: Option<bool>,
}

/// What a change stream does with the target rows of a source row when the
/// plugin rejects a newer version of it. The change is dead-lettered either
/// way (and a version the target refuses always leaves the last good one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnReject {
    /// Keep the last good version, explained by the change's dead letter
    /// (default: a transform failing on a new version never deletes data
    /// the application may be reading).
    #[default]
    Keep,
    /// Remove the rows the plugin made of it (its `target-keys`), as a
    /// migration would never have loaded them.
    Delete,
}

/// Conflict policy for pre-existing target rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Stop the run with an error naming the key (default: never silent).
    #[default]
    Error,
    /// Keep the existing row; count the source row as skipped.
    Skip,
    /// Replace the existing row with the transformed one.
    Overwrite,
}

/// PostgreSQL load path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMethod {
    /// `COPY ... FROM STDIN (FORMAT binary)`.
    #[default]
    CopyBinary,
    /// `COPY ... FROM STDIN` in text format.
    CopyText,
}

/// `[plugin]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the `.wasm` component (relative paths are relative to the file).
    pub path: Option<PathBuf>,
    /// Pinned SHA-256 of the `.wasm` (hex).
    pub sha256: Option<String>,
    /// The inverse of a one-table pipeline's plugin, for `ferry sync
    /// --reverse` (see `[[tables]] inverse`).
    pub inverse: Option<PathBuf>,
    /// Pinned SHA-256 of the inverse.
    pub inverse_sha256: Option<String>,
    /// Memory cap per instance, MiB. Default 64.
    pub memory_limit_mb: Option<u64>,
    /// CPU deadline per call, milliseconds. Default 2000.
    pub call_timeout_ms: Option<u64>,
    /// Directory for compiled-plugin cache; `""` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Capabilities beyond deny-all: `"clocks"`, `"random"`. Default none.
    pub grants: Option<Vec<String>>,
}

/// `[notify]`: where notifications go (nowhere unless set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `http://` or `https://` URL that receives each notification as a
    /// JSON POST (public CAs are trusted).
    pub webhook: Option<String>,
    /// Shell command run with each notification on stdin (`sh -c`, with
    /// `FERRY_EVENT` and `FERRY_PIPELINE` set).
    pub command: Option<String>,
    /// Notify `dead_letters` when a run or stream dead-letters more rows
    /// than this (unset: never).
    pub dead_letters_above: Option<u64>,
}

/// `[migrate]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateConfig {
    /// Rows per batch (one keyset page, one plugin call, one target
    /// transaction with its checkpoint). Default 2000.
    pub batch_size: Option<usize>,
    /// Plugin instances transforming in parallel. Default 1.
    pub workers: Option<usize>,
}

/// A configuration error: what, where, how to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The I/O error is part of the message, not a `source`: printed with
    /// its chain, it would say the cause twice.
    #[error("cannot read configuration {path}: {cause}{hint}")]
    Read { path: PathBuf, cause: std::io::Error, hint: &'static str },
    #[error(
        "{path}:{line}: environment variable {name} is not set (referenced as ${{{name}}}); export it or write ${{{name}:-default}}"
    )]
    MissingEnv { path: PathBuf, line: usize, name: String },
    #[error("{path}:{line}: unterminated ${{...}} reference")]
    Unterminated { path: PathBuf, line: usize },
    #[error("{path}:{line}:{column}: {message}")]
    Parse { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl FileConfig {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| {
            let hint = if cause.kind() == std::io::ErrorKind::NotFound {
                "; pass --config PATH (or set FERRY_CONFIG) to the pipeline file"
            } else {
                ""
            };
            ConfigError::Read { path: path.into(), cause, hint }
        })?;
        Self::parse(&text, path, |name| std::env::var(name).ok())
    }

    /// Parses configuration text; `env` resolves `${NAME}` references.
    pub fn parse(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<FileConfig, ConfigError> {
        let text = interpolate(text, path, env)?;
        toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map(|span| line_col(&text, span.start)).unwrap_or((1, 1));
            let mut message = e.message().trim().to_string();
            // Name the key when the message does not (wrong types do not).
            if let Some(key) = key_on_line(&text, line).filter(|k| !message.contains(k.as_str())) {
                message = format!("key `{key}`: {message}");
            }
            ConfigError::Parse { path: path.into(), line, column, message }
        })
    }
}

/// The key assigned on a line (`key = value`), if any.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let (key, _) = text.lines().nth(line.checked_sub(1)?)?.split_once('=')?;
    let key = key.trim();
    (!key.is_empty() && !key.starts_with('[') && !key.starts_with('#')).then(|| key.to_string())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |i| before[i + 1..].chars().count()) + 1;
    (line, column)
}

/// Replaces `${NAME}`, `${NAME:-default}` and `$$` line by line, so that line
/// numbers in later errors still point into the user's file.
fn interpolate(text: &str, path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        // Comments are left alone: a commented-out ${VAR} is not required.
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or(ConfigError::Unterminated { path: path.into(), line: line_no })?;
                let reference = &inner[..end];
                let (name, default) = match reference.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (reference, None),
                };
                match env(name).or_else(|| default.map(str::to_string)) {
                    Some(value) => out.push_str(&value),
                    None => {
                        return Err(ConfigError::MissingEnv { path: path.into(), line: line_no, name: name.into() });
                    }
                }
                rest = &inner[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text, Path::new("ferry.toml"), |name| (name == "PGPASS").then(|| "s3cret".to_string()))
    }

    #[test]
    fn interpolates_env_with_defaults() {
        let cfg = parse("[source]\nurl = \"postgres://u:${PGPASS}@h/${DB:-legacy}\"\n").unwrap();
        assert_eq!(cfg.source.url.as_deref(), Some("postgres://u:s3cret@h/legacy"));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let err = parse("name = \"x\"\n[target]\ntabel = \"users\"\n").unwrap_err().to_string();
        assert!(err.starts_with("ferry.toml:3:"), "{err}");
        assert!(err.contains("tabel"), "{err}");
    }

    #[test]
    fn wrong_type_names_line() {
        let err = parse("[migrate]\n\nbatch_size = \"big\"\n").unwrap_err().to_string();
        assert!(err.starts_with("ferry.toml:3:"), "{err}");
        assert!(err.contains("key `batch_size`"), "{err}");
    }

    #[test]
    fn missing_env_names_variable_and_line() {
        let err = parse("\n[source]\nurl = \"${NOPE}\"\n").unwrap_err().to_string();
        assert!(err.contains("ferry.toml:3") && err.contains("NOPE"), "{err}");
    }
}
