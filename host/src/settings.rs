//! Runtime settings: the configuration file merged with command-line flags,
//! checked and resolved into the types the rest of ferry runs on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{ConfigError, FileConfig, Keyless, LoadMethod, OnConflict, OnReject};
use crate::db::{DbUrl, TableName};
use crate::plugin::{self, Limits};

/// Default rows per batch: one keyset page, one plugin call and one target
/// transaction. Measured on 1M seed rows PG→PG, 2 cores (bench/run.sh):
/// 2000 rows → 162k rows/s at 23 MB RSS, 5000 → 235k at 41 MB, 20000 → 277k
/// at 122 MB. Per-batch round trips dominate below 5000; above it memory
/// grows faster than throughput.
pub const DEFAULT_BATCH_SIZE: usize = 5000;

/// Flags that override the file (all optional).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Pipeline name (runs and checkpoints are recorded under it).
    #[arg(long, global = true)]
    pub name: Option<String>,
    /// Source database URL (postgres://… or sqlite://…).
    #[arg(long = "source", global = true, value_name = "URL")]
    pub source_url: Option<String>,
    /// Source table (`table` or `schema.table`).
    #[arg(long, global = true, value_name = "TABLE")]
    pub source_table: Option<String>,
    /// Target database URL.
    #[arg(long = "target", global = true, value_name = "URL")]
    pub target_url: Option<String>,
    /// Target table.
    #[arg(long, global = true, value_name = "TABLE")]
    pub target_table: Option<String>,
    /// Policy for rows whose key already exists in the target.
    #[arg(long, global = true, value_enum)]
    pub on_conflict: Option<OnConflict>,
    /// Plugin component (.wasm) of a one-table pipeline (`[plugin] path`).
    #[arg(long, global = true, value_name = "PATH")]
    pub plugin: Option<PathBuf>,
    /// Expected SHA-256 of the plugin.
    #[arg(long, global = true, value_name = "HEX")]
    pub plugin_sha256: Option<String>,
    /// Rows per batch.
    #[arg(long, global = true)]
    pub batch_size: Option<usize>,
    /// Parallel plugin instances.
    #[arg(long, global = true)]
    pub workers: Option<usize>,
}

/// Where rows come from or go to.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: DbUrl,
}

/// One table of a many-table pipeline.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub source: TableName,
    pub target: Option<TableName>,
    /// Key columns for a table without a primary key.
    pub key: Option<Vec<String>>,
    /// How to copy it if it has no key (`source.keyless` unless set here).
    pub keyless: Keyless,
    pub on_conflict: Option<OnConflict>,
    /// The table's plugin and how to load it (limits and cache from `[plugin]`).
    pub plugin: Option<PluginSettings>,
    /// The plugin's inverse (the reverse stream of a parallel run).
    pub inverse: Option<PluginSettings>,
}

/// Which source tables a many-table pipeline moves: the `[[tables]]`
/// entries, then every table `include` matches and `exclude` does not.
#[derive(Debug, Clone, Default)]
pub struct TableSelection {
    pub tables: Vec<TableSpec>,
    pub include: Vec<glob::Pattern>,
    pub exclude: Vec<glob::Pattern>,
    /// How tables `include` matches are copied when they have no key.
    pub keyless: Keyless,
}

impl TableSelection {
    /// The `[[tables]]` entry with a plugin that `only` names (`schema.table`
    /// or `table`), or the pipeline's one such entry when `only` is `None`;
    /// the error says which there are.
    pub fn plugin_table(&self, only: Option<&str>) -> Result<&TableSpec, String> {
        let with: Vec<&TableSpec> = self.tables.iter().filter(|s| s.plugin.is_some()).collect();
        let names = || with.iter().map(|s| s.source.to_string()).collect::<Vec<_>>().join(", ");
        match (only, with.as_slice()) {
            (_, []) => Err("no [[tables]] entry of the pipeline has a plugin".into()),
            (Some(t), _) => with
                .iter()
                .copied()
                .find(|s| s.source.to_string() == t || s.source.name == t)
                .ok_or_else(|| format!("--table {t}: the pipeline's tables with a plugin are {}", names())),
            (None, [one]) => Ok(one),
            (None, many) => Err(format!(
                "the pipeline has {} tables with a plugin ({}): name the one you mean with --table",
                many.len(),
                names()
            )),
        }
    }

    /// Whether `name` is matched by one of `patterns`: a pattern with a dot
    /// is matched against `schema.table`, one without against the table name.
    pub fn matches(patterns: &[glob::Pattern], name: &TableName) -> bool {
        let qualified = name.to_string();
        patterns.iter().any(|p| if p.as_str().contains('.') { p.matches(&qualified) } else { p.matches(&name.name) })
    }

    /// Whether `name` is one of the tables `include` brings in by itself
    /// (matched, not excluded, with no `[[tables]]` entry): a table a
    /// change stream follows from its creation.
    pub fn includes(&self, name: &TableName) -> bool {
        TableSelection::matches(&self.include, name)
            && !TableSelection::matches(&self.exclude, name)
            && self.spec(name).is_none()
    }

    /// `patterns` as POSIX regular expressions on `schema.table` that match
    /// what [`TableSelection::matches`] matches (for the source's own
    /// catalog to select new tables with).
    pub fn regexes(patterns: &[glob::Pattern]) -> Vec<String> {
        patterns
            .iter()
            .map(|p| {
                let glob = p.as_str();
                let mut re = String::from(if glob.contains('.') { "^" } else { "^[^.]*\\." });
                let mut chars = glob.chars().peekable();
                while let Some(c) = chars.next() {
                    match c {
                        '*' => re.push_str(".*"),
                        '?' => re.push('.'),
                        '[' => {
                            re.push('[');
                            if chars.peek() == Some(&'!') {
                                chars.next();
                                re.push('^');
                            }
                            for c in chars.by_ref() {
                                if c == '\\' {
                                    re.push_str("\\\\");
                                    continue;
                                }
                                re.push(c);
                                if c == ']' {
                                    break;
                                }
                            }
                        }
                        c if "\\.+()|{}^$]".contains(c) => {
                            re.push('\\');
                            re.push(c);
                        }
                        c => re.push(c),
                    }
                }
                re.push('$');
                re
            })
            .collect()
    }

    /// The explicit entry for a source table, if any.
    pub fn spec(&self, name: &TableName) -> Option<&TableSpec> {
        self.tables.iter().find(|t| &t.source == name || (t.source.schema.is_none() && t.source.name == name.name))
    }
}

/// Where notifications go (`[notify]`).
#[derive(Debug, Clone, Default)]
pub struct NotifySettings {
    pub webhook: Option<String>,
    pub command: Option<String>,
    pub dead_letters_above: Option<u64>,
}

/// Plugin settings.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub path: PathBuf,
    pub options: plugin::LoadOptions,
}

/// Everything a command needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pipeline: String,
    pub source: Endpoint,
    pub target: Endpoint,
    pub on_conflict: OnConflict,
    /// Change streams: keep or delete the rows of a source row whose newer
    /// version is dead-lettered.
    pub on_reject: OnReject,
    /// `[target] undo_journal`: runs journal what they change (rollback).
    pub undo_journal: bool,
    /// `[source] capture_ddl`: `ferry sync` installs the DDL capture.
    pub capture_ddl: bool,
    pub load_method: LoadMethod,
    /// The pipeline's tables: `[[tables]]` and `source.include`, or the
    /// one table `[source] table` + `[plugin]` name (one `[[tables]]` entry
    /// written the short way).
    pub tables: TableSelection,
    pub batch_size: usize,
    pub workers: usize,
    pub notify: NotifySettings,
    /// `[reverse]`: a parallel run (`None`: one direction only).
    pub reverse: Option<ReverseSettings>,
    /// `[plan]`'s backup paths (resolved against the file's directory).
    pub source_backup: Option<PathBuf>,
    pub target_backup: Option<PathBuf>,
    /// `[schema]`: what of the schema comes along (PostgreSQL to PostgreSQL).
    pub schema: SchemaSettings,
}

/// `[schema]`.
#[derive(Debug, Clone, Default)]
pub struct SchemaSettings {
    pub copy: crate::config::SchemaCopy,
    pub owners: bool,
    pub bin_dir: Option<PathBuf>,
}

/// `[reverse]`: the reverse stream's slot and publication in the new database.
#[derive(Debug, Clone, Default)]
pub struct ReverseSettings {
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub detect_conflicts: bool,
    pub switch_command: Option<String>,
    pub switch_webhook: Option<String>,
    pub max_lag: Duration,
    pub drain_timeout: Duration,
}

impl Settings {
    /// Loads `path` (if it exists, or if it was named explicitly) and applies
    /// the overrides.
    pub fn resolve(path: &Path, explicit: bool, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let file = if path.exists() || explicit { FileConfig::load(path)? } else { FileConfig::default() };
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).map(Path::to_path_buf);
        Self::from_parts(file, path, base.as_deref(), overrides)
    }

    fn from_parts(file: FileConfig, path: &Path, base: Option<&Path>, o: &Overrides) -> Result<Settings, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        let url = |flag: &Option<String>, value: &Option<String>, key: &str| -> Result<DbUrl, ConfigError> {
            let raw = flag.as_ref().or(value.as_ref()).ok_or_else(|| {
                invalid(format!("{key} is required: set it in the file or pass --{}", key.replace(".url", "")))
            })?;
            let url = DbUrl::parse(raw).map_err(|e| invalid(format!("{key}: {e}")))?;
            // TLS settings are checked now, so a wrong sslmode or a missing
            // CA file is a configuration error before anything connects.
            if url.engine() == crate::db::Engine::Postgres {
                crate::tls::PgTls::from_url(url.expose()).map_err(|e| invalid(format!("{key} {url}: {e}")))?;
            }
            Ok(url)
        };
        let source = Endpoint { url: url(&o.source_url, &file.source.url, "source.url")? };
        let target = Endpoint { url: url(&o.target_url, &file.target.url, "target.url")? };
        let memory_mb = file.plugin.memory_limit_mb.unwrap_or(plugin::DEFAULT_MEMORY_LIMIT >> 20);
        if memory_mb == 0 || memory_mb > 4096 {
            return Err(invalid(format!("plugin.memory_limit_mb = {memory_mb}: must be between 1 and 4096")));
        }
        let timeout_ms = file.plugin.call_timeout_ms.unwrap_or(plugin::DEFAULT_CALL_TIMEOUT.as_millis() as u64);
        if timeout_ms == 0 {
            return Err(invalid("plugin.call_timeout_ms must be positive".into()));
        }
        plugin::Grants::parse(file.plugin.grants.as_deref().unwrap_or_default()).map_err(invalid)?;
        let sha = o.plugin_sha256.clone().or(file.plugin.sha256.clone());
        if let Some(sha) = sha.as_ref().filter(|s| s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(invalid(format!("plugin.sha256 `{sha}` is not a SHA-256 (64 hex digits)")));
        }
        let tables = Self::tables(&file, base, o, sha, &invalid)?;
        if let Some(hook) = &file.notify.webhook {
            match url::Url::parse(hook) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => {
                    return Err(invalid(format!("notify.webhook `{}` is not an http(s) URL", crate::db::redact(hook))));
                }
            }
        }
        let notify = NotifySettings {
            webhook: file.notify.webhook.clone(),
            command: file.notify.command.clone().filter(|c| !c.trim().is_empty()),
            dead_letters_above: file.notify.dead_letters_above,
        };
        let reverse = match file.reverse {
            None => None,
            Some(r) => {
                let seconds = |value: Option<f64>, default: f64, key: &str| match value.unwrap_or(default) {
                    s if s.is_finite() && s > 0.0 && s < 86_400.0 => Ok(Duration::from_secs_f64(s)),
                    s => Err(invalid(format!("reverse.{key} = {s}: must be a number of seconds above 0"))),
                };
                if let Some(hook) =
                    r.switch_webhook.as_deref().filter(|h| !h.starts_with("http://") && !h.starts_with("https://"))
                {
                    return Err(invalid(format!(
                        "reverse.switch_webhook `{}` is not an http(s) URL",
                        crate::db::redact(hook)
                    )));
                }
                Some(ReverseSettings {
                    slot: r.slot,
                    publication: r.publication,
                    detect_conflicts: r.detect_conflicts.unwrap_or(true),
                    switch_command: r.switch_command.filter(|c| !c.trim().is_empty()),
                    switch_webhook: r.switch_webhook,
                    max_lag: seconds(r.max_lag_seconds, 1.0, "max_lag_seconds")?,
                    drain_timeout: seconds(r.drain_timeout_seconds, 60.0, "drain_timeout_seconds")?,
                })
            }
        };
        let batch_size = o.batch_size.or(file.migrate.batch_size).unwrap_or(DEFAULT_BATCH_SIZE);
        if !(1..=100_000).contains(&batch_size) {
            return Err(invalid(format!("migrate.batch_size = {batch_size}: must be between 1 and 100000")));
        }
        let workers = o.workers.or(file.migrate.workers).unwrap_or(1);
        if !(1..=64).contains(&workers) {
            return Err(invalid(format!("migrate.workers = {workers}: must be between 1 and 64")));
        }
        Ok(Settings {
            pipeline: o.name.clone().or(file.name).unwrap_or_else(|| "default".into()),
            source,
            target,
            on_conflict: o.on_conflict.or(file.target.on_conflict).unwrap_or_default(),
            on_reject: file.target.on_reject.unwrap_or_default(),
            undo_journal: file.target.undo_journal.unwrap_or(true),
            capture_ddl: file.source.capture_ddl.unwrap_or(false),
            load_method: file.target.load_method.unwrap_or_default(),
            tables,
            batch_size,
            workers,
            notify,
            reverse,
            source_backup: file.plan.source_backup.as_deref().map(|p| relative_to(base, p)),
            target_backup: file.plan.target_backup.as_deref().map(|p| relative_to(base, p)),
            schema: SchemaSettings {
                copy: file.schema.copy.unwrap_or_default(),
                owners: file.schema.owners.unwrap_or(true),
                bin_dir: file.schema.bin_dir.as_deref().map(|p| relative_to(base, p)),
            },
        })
    }
}

impl Settings {
    /// Limits and cache from `[plugin]` (validated in `from_parts`).
    fn load_options(file: &FileConfig, base: Option<&Path>) -> plugin::LoadOptions {
        let memory_mb = file.plugin.memory_limit_mb.unwrap_or(plugin::DEFAULT_MEMORY_LIMIT >> 20);
        let timeout_ms = file.plugin.call_timeout_ms.unwrap_or(plugin::DEFAULT_CALL_TIMEOUT.as_millis() as u64);
        let cache_dir = match &file.plugin.cache_dir {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) => Some(relative_to(base, dir)),
            None => default_cache_dir(),
        };
        // Validated in `from_parts`.
        let grants = plugin::Grants::parse(file.plugin.grants.as_deref().unwrap_or_default()).unwrap_or_default();
        plugin::LoadOptions {
            limits: Limits { memory_bytes: memory_mb << 20, call_timeout: Duration::from_millis(timeout_ms), grants },
            pinned_sha256: None,
            output_table: None,
            cache_dir,
        }
    }

    /// The pipeline's tables. Without `[[tables]]` and `source.include`,
    /// the pipeline is the one table `[source] table` (default `users`)
    /// through the `[plugin]` (or `--plugin`) into `[target] table` (default
    /// the source's name): the same as one `[[tables]]` entry.
    fn tables(
        file: &FileConfig,
        base: Option<&Path>,
        o: &Overrides,
        pinned: Option<String>,
        invalid: &dyn Fn(String) -> ConfigError,
    ) -> Result<TableSelection, ConfigError> {
        let patterns = |list: &Option<Vec<String>>, key: &str| -> Result<Vec<glob::Pattern>, ConfigError> {
            list.iter()
                .flatten()
                .map(|p| glob::Pattern::new(p).map_err(|e| invalid(format!("{key}: `{p}` is not a pattern: {e}"))))
                .collect()
        };
        let include = patterns(&file.source.include, "source.include")?;
        let exclude = patterns(&file.source.exclude, "source.exclude")?;
        let table =
            |flag: &Option<String>, value: &Option<String>, key: &str| -> Result<Option<TableName>, ConfigError> {
                flag.as_deref()
                    .or(value.as_deref())
                    .map(|raw| TableName::parse(raw).map_err(|e| invalid(format!("{key}: {e}"))))
                    .transpose()
            };
        let plugin_path = o.plugin.clone().or_else(|| file.plugin.path.as_ref().map(|p| relative_to(base, p)));
        if file.tables.is_empty() && include.is_empty() {
            if !exclude.is_empty() {
                return Err(invalid("source.exclude needs source.include (or [[tables]]) to exclude from".into()));
            }
            let Some(path) = plugin_path else {
                return Err(invalid(
                    "plugin.path is required: set it in the file or pass --plugin (or name tables to copy with \
                     [[tables]] or source.include)"
                        .into(),
                ));
            };
            let source = table(&o.source_table, &file.source.table, "source.table")?
                .unwrap_or_else(|| TableName { schema: None, name: "users".into() });
            let target = table(&o.target_table, &file.target.table, "target.table")?;
            let options = plugin::LoadOptions {
                pinned_sha256: pinned,
                output_table: target.as_ref().map(|t| t.name.clone()),
                ..Self::load_options(file, base)
            };
            let inverse = Self::inverse(
                file.plugin.inverse.as_deref(),
                file.plugin.inverse_sha256.as_ref(),
                Some(&source),
                "plugin",
                file,
                base,
                invalid,
            )?;
            let spec = TableSpec {
                source,
                target,
                key: None,
                keyless: Keyless::Refuse,
                on_conflict: None,
                plugin: Some(PluginSettings { path, options }),
                inverse,
            };
            return Ok(TableSelection { tables: vec![spec], include, exclude, keyless: Keyless::Refuse });
        }
        if pinned.is_some() {
            return Err(invalid(
                "plugin.sha256 pins the plugin of a one-table pipeline; with [[tables]], pin each table's plugin \
                 there (plugin_sha256 = \"…\")"
                    .into(),
            ));
        }
        // (`--plugin` on the command line is the one of `dlq replay` and
        // `reprocess` here: clap hands it to both.)
        if file.plugin.path.is_some() || file.plugin.inverse.is_some() {
            return Err(invalid(
                "plugin.path names the plugin of a one-table pipeline; with [[tables]] or source.include, give each \
                 table its plugin in [[tables]] (plugin = \"…\"); [plugin] keeps the limits and grants of them all"
                    .into(),
            ));
        }
        if o.source_table.is_some() || o.target_table.is_some() {
            return Err(invalid(
                "--source-table/--target-table name the one table of a one-table pipeline; this pipeline names its \
                 tables in [[tables]] or source.include"
                    .into(),
            ));
        }
        if file.source.table.is_some() || file.target.table.is_some() {
            return Err(invalid(
                "source.table/target.table name the one table of a `users` pipeline; with [[tables]] or source.include, \
                 name tables in [[tables]] (name = \"…\", target = \"…\")"
                    .into(),
            ));
        }
        let mut tables = Vec::new();
        for (i, t) in file.tables.iter().enumerate() {
            let at = format!("tables[{i}]");
            let source = TableName::parse(&t.name).map_err(|e| invalid(format!("{at}.name: {e}")))?;
            if tables.iter().any(|s: &TableSpec| s.source == source) {
                return Err(invalid(format!("{at}: table {source} is listed twice")));
            }
            let target = t
                .target
                .as_deref()
                .map(TableName::parse)
                .transpose()
                .map_err(|e| invalid(format!("{at}.target: {e}")))?;
            if t.key.as_ref().is_some_and(|k| k.is_empty()) {
                return Err(invalid(format!("{at}.key: name at least one column")));
            }
            if let Some(sha) =
                t.plugin_sha256.as_ref().filter(|s| s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(invalid(format!("{at}.plugin_sha256 `{sha}` is not a SHA-256 (64 hex digits)")));
            }
            let plugin = t.plugin.as_ref().map(|path| PluginSettings {
                path: relative_to(base, path),
                options: plugin::LoadOptions {
                    pinned_sha256: t.plugin_sha256.clone(),
                    output_table: target.as_ref().map(|t| t.name.clone()),
                    ..Self::load_options(file, base)
                },
            });
            let inverse = Self::inverse(
                t.inverse.as_deref(),
                t.inverse_sha256.as_ref(),
                Some(&source),
                &at,
                file,
                base,
                invalid,
            )?;
            if inverse.is_some() && plugin.is_none() {
                return Err(invalid(format!(
                    "{at}.inverse: table {source} has no plugin, so nothing to invert (a copied table goes back as \
                     it is); remove inverse or give the table its plugin"
                )));
            }
            let keyless = t.keyless.or(file.source.keyless).unwrap_or_default();
            tables.push(TableSpec {
                source,
                target,
                key: t.key.clone(),
                keyless,
                on_conflict: t.on_conflict,
                plugin,
                inverse,
            });
        }
        let keyless = file.source.keyless.unwrap_or_default();
        Ok(TableSelection { tables, include, exclude, keyless })
    }
}

impl Settings {
    /// An inverse plugin's settings (`at`: where it is configured), its
    /// output going into the source table `into`.
    fn inverse(
        path: Option<&Path>,
        sha: Option<&String>,
        into: Option<&TableName>,
        at: &str,
        file: &FileConfig,
        base: Option<&Path>,
        invalid: &dyn Fn(String) -> ConfigError,
    ) -> Result<Option<PluginSettings>, ConfigError> {
        if let Some(sha) = sha.filter(|s| s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit())) {
            return Err(invalid(format!("{at}.inverse_sha256 `{sha}` is not a SHA-256 (64 hex digits)")));
        }
        let Some(path) = path else {
            if sha.is_some() {
                return Err(invalid(format!("{at}.inverse_sha256 pins an inverse; set {at}.inverse too")));
            }
            return Ok(None);
        };
        Ok(Some(PluginSettings {
            path: relative_to(base, path),
            options: plugin::LoadOptions {
                pinned_sha256: sha.cloned(),
                output_table: into.map(|t| t.name.clone()),
                ..Self::load_options(file, base)
            },
        }))
    }
}

fn relative_to(base: Option<&Path>, path: &Path) -> PathBuf {
    match base {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    }
}

/// `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRY_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ferry"))
}

#[cfg(test)]
mod tests {
    use super::TableSelection;

    #[test]
    fn include_patterns_become_the_regexes_the_source_matches_new_tables_with() {
        let patterns: Vec<glob::Pattern> =
            ["public.*", "order?", "sales.a[!b]c", "x+y"].iter().map(|p| glob::Pattern::new(p).unwrap()).collect();
        assert_eq!(
            TableSelection::regexes(&patterns),
            ["^public\\..*$", "^[^.]*\\.order.$", "^sales\\.a[^b]c$", "^[^.]*\\.x\\+y$"]
        );
    }
}
