//! The command line: parses flags, resolves settings, runs a command, prints
//! its report and maps the outcome to an exit code (see [`crate::exit`]).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::{Parser, Subcommand};

use crate::cdc::sync::default_slot_name;
use crate::error::ErrorKind;
use crate::migrate::{Ending, MigrateOptions};
use crate::notify::Event;
use crate::settings::{Overrides, Settings};
use crate::{exit, report};

/// Move data from an old database to a new one with zero data loss, every row
/// transformed by a sandboxed WebAssembly plugin.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, long_about = None)]
pub struct Cli {
    /// Pipeline configuration file.
    #[arg(long, short, global = true, default_value = "ferry.toml", env = "FERRY_CONFIG")]
    config: PathBuf,
    /// Print the report as JSON on stdout (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pre-migration checklist: connectivity, privileges, disk, shapes, data.
    Check,
    /// Big-bang migration: extract → transform (plugin) → load, resumable.
    Migrate {
        /// Only resume an unfinished run (fail if there is none).
        #[arg(long, conflicts_with = "restart")]
        resume: bool,
        /// Abandon any unfinished run and start a new one.
        #[arg(long)]
        restart: bool,
        /// Never draw a progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Post-migration validation: counts, re-transformed sample, checksums.
    Validate {
        /// Validate only this table (source or target name).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
    },
    /// Apply Debezium change events (JSON lines) through the plugin, exactly once.
    Apply {
        /// JSONL file of events, or `-` for stdin.
        #[arg(long, default_value = "-")]
        input: PathBuf,
        /// Consume from NATS JetStream at this address instead (e.g. nats://127.0.0.1:4222;
        /// tls://host:4222 requires TLS, verified with the system's CAs or --nats-ca).
        #[arg(long, value_name = "URL")]
        nats: Option<String>,
        /// With --nats: CA certificates (PEM) that signed the server's certificate; TLS is then required.
        #[arg(long, value_name = "FILE")]
        nats_ca: Option<PathBuf>,
        /// With --nats: a client certificate (PEM), with --nats-key, for servers that verify clients.
        #[arg(long, value_name = "FILE", requires = "nats_key")]
        nats_cert: Option<PathBuf>,
        /// With --nats: the client certificate's private key (PEM).
        #[arg(long, value_name = "FILE", requires = "nats_cert")]
        nats_key: Option<PathBuf>,
        /// The JetStream stream (with --nats).
        #[arg(long)]
        stream: Option<String>,
        /// Only this subject of the stream (with --nats).
        #[arg(long)]
        subject: Option<String>,
        /// Durable consumer name (default ferry-<pipeline>).
        #[arg(long)]
        durable: Option<String>,
        /// With --nats: exit after this many seconds without a message (default: run until signalled).
        #[arg(long, value_name = "SECONDS")]
        idle_exit: Option<f64>,
        /// Serve /metrics and /health here (HOST:PORT, or :PORT for 127.0.0.1).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Changes per target transaction, at most (source transactions are never split).
        #[arg(long, default_value_t = 2000)]
        group_size: usize,
        /// Unit of integer timestamps in events without a schema.
        #[arg(long, value_enum, default_value = "micros")]
        integer_time: IntegerTimeArg,
        /// Complete events whose unchanged TOASTed values Debezium did not send
        /// (`__debezium_unavailable_value`) by reading the row from source.url.
        #[arg(long)]
        reread: bool,
    },
    /// Follow the PostgreSQL source by logical replication: initial load, then changes.
    Sync {
        /// Replication slot (default ferry_<pipeline>).
        #[arg(long)]
        slot: Option<String>,
        /// Publication (default ferry_<pipeline>).
        #[arg(long)]
        publication: Option<String>,
        /// Rows per page of the initial load (default: migrate.batch_size).
        #[arg(long)]
        chunk_rows: Option<usize>,
        /// Exit after this many seconds without a change (default: run until signalled).
        #[arg(long, value_name = "SECONDS")]
        idle_exit: Option<f64>,
        /// Drop the slot and the publication (teardown) instead of syncing.
        #[arg(long)]
        teardown: bool,
        /// The parallel run's other direction (needs `[reverse]`): stream
        /// the new database's changes back into the old one through each
        /// plugin's inverse, never sending back what `ferry sync` applied.
        #[arg(long)]
        reverse: bool,
        /// Serve /metrics and /health here (HOST:PORT, or :PORT for 127.0.0.1).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Parallel run: move the application to the new database, once the
    /// gates hold (forward lag, a clean validate, no open conflict); runs
    /// the switch hook, drains the old side, gives the new side the writes.
    Cutover {
        /// Check the gates only; switch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Parallel run: the same back to the old database.
    Cutback {
        /// Check the gates only; switch nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// The migration runbook: the seed's checklist, each item ferry can
    /// verify ticked from evidence found now, the rest left for people
    /// (Markdown, or --json).
    Plan {
        /// Say what `ferry migrate` (and, in a parallel run, `ferry
        /// cutover`) would do: tables, row estimates, disk needed, a time
        /// estimate from a sample; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Take a run back: the target tables as they were before it (rows it
    /// inserted deleted, rows it changed or deleted restored from the undo
    /// journal), verified by checksum; rows someone else changed since are
    /// reported and kept unless --force.
    Rollback {
        /// The run (`ferry status` shows it; a stream's is its load's).
        run: String,
        /// A run of the reverse stream (rolls back the old database).
        #[arg(long)]
        reverse: bool,
        /// Also overwrite rows changed by someone else since the run.
        #[arg(long)]
        force: bool,
        /// Report what would happen; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The run is accepted: delete its undo journal (it can no longer be
        /// rolled back; a stream still running it stops journaling).
        #[arg(long, conflicts_with_all = ["force", "dry_run"])]
        forget: bool,
    },
    /// Parallel run: rows written on both sides at once (both versions).
    Conflicts {
        /// Mark every open conflict resolved (once handled).
        #[arg(long)]
        resolve: bool,
        /// Resolved ones too.
        #[arg(long)]
        all: bool,
    },
    /// Where the pipeline stands: migration run, stream phase and position, slot lag.
    Status {
        /// Replication slot to report on (default ferry_<pipeline>).
        #[arg(long)]
        slot: Option<String>,
    },
    /// Apply a plugin version again to rows an earlier one loaded (a
    /// pipeline of tables): per page, in one target transaction, the old
    /// version's rows replaced by the new one's and the ledger moved.
    Reprocess {
        /// The version to apply (same output tables as the running one).
        #[arg(long, value_name = "PATH")]
        plugin: PathBuf,
        /// The plugin table (needed when several tables have a plugin).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Keys after A up to and including B (`A..B`, `A..`, `..B`), as
        /// `ferry status` prints a version's range; all rows when left out.
        #[arg(long, value_name = "A..B")]
        range: Option<String>,
    },
    /// Copy one table of the pipeline's change stream again from the source,
    /// inside the running stream (`ferry sync`), the other tables going on.
    Resync {
        /// The source table (`schema.table` or `table`).
        #[arg(long, value_name = "TABLE")]
        table: String,
        /// How long to wait for the running stream to finish the copy.
        #[arg(long, value_name = "SECONDS", default_value_t = 600.0)]
        wait: f64,
    },
    /// Dead letters of the latest run.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IntegerTimeArg {
    Micros,
    Millis,
    Nanos,
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List the dead letters of the pipeline's latest run.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only the dead letters of this source table (`schema.table` or `table`).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
    },
    /// Try the latest run's dead letters again (after fixing the source, or with
    /// a fixed plugin): those that pass are loaded exactly once, the rest keep
    /// their new reason. The change stream's dead letters are replayed by the
    /// running stream (with its live plugin versions).
    Replay {
        /// A fixed version of the tables' plugin to run them through (same output tables).
        #[arg(long, value_name = "PATH")]
        plugin: Option<PathBuf>,
        /// Only the dead letters of this source table (`schema.table` or `table`).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// How long to wait for the running stream to replay its dead letters.
        #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
        wait: f64,
    },
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Load a plugin in the sandbox and print its identity.
    Info { path: PathBuf },
    /// Make a plugin project that builds and passes its own test out of the box.
    New {
        /// The project's name (its directory, and the component's file name).
        name: String,
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        #[arg(long, value_enum, default_value = "transform-row")]
        contract: crate::scaffold::Contract,
        /// Where to make it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin project in DIR into DIR/<name>.wasm.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build the project in DIR (or take --wasm) and run its golden test
    /// (tests/golden.json: rows and what each must become) in ferry's sandbox.
    Test {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// A component to test instead of building DIR.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// The golden file (default DIR/tests/golden.json).
        #[arg(long)]
        golden: Option<PathBuf>,
    },
    /// Hand a new plugin version to the running stream (`sync`/`apply`) of the
    /// pipeline: it is checked off the hot path and switched to between two
    /// target transactions, or refused with the reason (the running version stays).
    Deploy {
        /// The new component (.wasm).
        path: PathBuf,
        /// The table whose plugin it replaces (needed when several tables have one).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Run it beside the live version on the same rows, writing nothing, and
        /// report the differences (`ferry status`); `ferry plugin promote` makes it live.
        #[arg(long)]
        shadow: bool,
        /// Seconds to wait for the stream's decision (0: do not wait).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        wait: f64,
    },
    /// Run two versions of a table's plugin on the same source rows and report
    /// where their outputs differ, per field, with counts and examples.
    Diff {
        /// The version running now.
        old: PathBuf,
        /// The candidate.
        new: PathBuf,
        /// Only this table (default: every table of the pipeline with a plugin).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Source rows per table (the first ones in key order).
        #[arg(long, value_name = "N", default_value_t = 1000)]
        sample: usize,
    },
    /// Time a plugin inside ferry on real source rows held in memory: load
    /// (compile or cache), instantiate, and rows/s of its transform.
    Bench {
        path: PathBuf,
        /// The source table (default: the pipeline's one table with a plugin).
        #[arg(long, value_name = "TABLE")]
        table: Option<String>,
        /// Source rows to read (the first ones in key order).
        #[arg(long, value_name = "N", default_value_t = 100_000)]
        rows: usize,
        /// Passes over the rows; the fastest is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
    /// Make the running shadow version live (a deployment of the same file).
    Promote {
        /// Seconds to wait for the stream's decision (0: do not wait).
        #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
        wait: f64,
    },
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, never in a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    crate::tls::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return exit::ERROR;
        }
    };
    runtime.block_on(run(cli))
}

/// Reports the error that stopped a command and returns its exit code, the
/// one its kind maps to. With `--json` the error is also printed on stdout as
/// `{"error": {"kind": …, "message": …, "exit_code": …}}`.
fn fail(e: &anyhow::Error) -> i32 {
    let kind = ErrorKind::of(e);
    eprintln!("error: {e:#}");
    if JSON.load(Ordering::Relaxed) {
        print_json(&serde_json::json!({
            "error": {"kind": kind, "message": format!("{e:#}"), "exit_code": kind.exit_code()}
        }));
    }
    kind.exit_code()
}

/// `--json` was given (read by [`fail`]).
static JSON: AtomicBool = AtomicBool::new(false);

fn print_json<T: serde::Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("reports serialise"));
}

/// Prints a report: as JSON with `--json`, else as the human table.
fn show<T: serde::Serialize>(json: bool, value: &T, text: impl FnOnce() -> String) {
    if json { print_json(value) } else { println!("{}", text()) }
}

/// The exit code of a change-stream run (`apply`, `sync`).
/// `run_ended`, and `dead_letters` past the pipeline's threshold.
async fn notify_run<T: serde::Serialize>(settings: &Settings, summary: String, dead_letters: u64, report: &T) {
    let details = serde_json::to_value(report).unwrap_or_default();
    if settings.notify.dead_letters_above.is_some_and(|limit| dead_letters > limit) {
        let limit = settings.notify.dead_letters_above.unwrap_or_default();
        let said = format!("{dead_letters} dead letters (more than {limit}): `ferry dlq list`; {summary}");
        crate::notify::send(&settings.notify, &settings.pipeline, Event::DeadLetters, said, details.clone()).await;
    }
    crate::notify::send(&settings.notify, &settings.pipeline, Event::RunEnded, summary, details).await;
}

/// One line on a stream that stopped.
fn stream_summary(command: &str, r: &crate::cdc::apply::ApplyReport) -> String {
    let why = match (&r.fatal, &r.paused) {
        (Some(fatal), _) => format!("stopped by the plugin: {fatal}"),
        (None, Some(paused)) => format!("stopped while paused: {paused}"),
        (None, None) => "stopped".to_string(),
    };
    format!(
        "{command} {why}: {} upserts, {} deletes, {} truncates in {} transactions, {} dead letters",
        r.upserts, r.deletes, r.truncates, r.transactions, r.dead_lettered
    )
}

fn stream_exit(r: &crate::cdc::apply::ApplyReport, signalled: bool) -> i32 {
    if r.fatal.is_some() {
        exit::FATAL
    } else if r.paused.is_some() || !r.held.is_empty() {
        exit::PAUSED
    } else if signalled {
        // SIGTERM/SIGINT: the current transaction was committed and
        // acknowledged; a clean stop.
        exit::OK
    } else if r.dead_lettered > 0 {
        exit::DEAD_LETTERS
    } else {
        exit::OK
    }
}

async fn run(cli: Cli) -> i32 {
    JSON.store(cli.json, Ordering::Relaxed);
    match &cli.command {
        Command::Plugin { action: PluginAction::Info { path } } => return plugin_info(path, cli.json),
        Command::Plugin {
            action: action @ (PluginAction::New { .. } | PluginAction::Build { .. } | PluginAction::Test { .. }),
        } => {
            return plugin_project(action, cli.json);
        }
        _ => {}
    }
    let explicit = std::env::args().any(|a| a == "--config" || a == "-c" || a.starts_with("--config="))
        || std::env::var_os("FERRY_CONFIG").is_some();
    let settings = match Settings::resolve(&cli.config, explicit, &cli.overrides) {
        Ok(s) => s,
        Err(e) => return fail(&e.into()),
    };
    let read_only = matches!(
        cli.command,
        Command::Check
            | Command::Plan { .. }
            | Command::Validate { .. }
            | Command::Status { .. }
            | Command::Dlq { action: DlqAction::List { .. } }
    );
    if read_only {
        spawn_read_only_signal_handler();
    }
    match cli.command {
        Command::Check => {
            let r = crate::check::check_tables(&settings, &settings.tables).await;
            show(cli.json, &r, || report::check(&r));
            if r.ok { exit::OK } else { exit::VERIFY_FAILED }
        }
        Command::Migrate { resume, restart, no_progress } => {
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let options = MigrateOptions {
                resume_only: resume,
                restart,
                progress: !no_progress && !cli.json && std::io::stderr().is_terminal(),
            };
            let attempt = |o| crate::tables::migrate(&settings, &settings.tables, o, Arc::clone(&stop));
            match crate::migrate::resuming(options, &stop, attempt).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    let dead = recent_dead_letters(&settings, &r.run_id).await;
                    show(cli.json, &r, || report::tables(&r, &dead));
                    let summary = format!(
                        "migrate run {} {}: {} source rows, {} loaded, {} skipped, {} filtered, {} dead letters, {:.1} s",
                        r.run_id,
                        r.ending.describe(),
                        r.source_rows,
                        r.stats.loaded,
                        r.stats.skipped,
                        r.filtered,
                        r.stats.dead_lettered,
                        r.elapsed_seconds
                    );
                    notify_run(&settings, summary, r.stats.dead_lettered, &r).await;
                    match r.ending {
                        Ending::Fatal => exit::FATAL,
                        Ending::Interrupted => exit::INTERRUPTED,
                        _ if r.stats.dead_lettered > 0 => exit::DEAD_LETTERS,
                        _ => exit::OK,
                    }
                }
            }
        }
        Command::Validate { table } => {
            match crate::tables::validate::validate(&settings, &settings.tables, table.as_deref()).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::tables_validation(&r));
                    if !r.ok {
                        let differing: Vec<String> = r
                            .tables
                            .iter()
                            .filter(|t| !t.ok)
                            .map(|t| {
                                format!(
                                    "{} ({} missing, {} extra, {} different)",
                                    t.table, t.missing, t.extra, t.different
                                )
                            })
                            .collect();
                        let summary = format!("validate found differences: {}", differing.join("; "));
                        let details = serde_json::to_value(&r).unwrap_or_default();
                        crate::notify::send(
                            &settings.notify,
                            &settings.pipeline,
                            Event::ValidationFailed,
                            summary,
                            details,
                        )
                        .await;
                    }
                    if r.ok { exit::OK } else { exit::VERIFY_FAILED }
                }
            }
        }
        Command::Apply {
            input,
            nats,
            nats_ca,
            nats_cert,
            nats_key,
            stream,
            subject,
            durable,
            idle_exit,
            listen,
            group_size,
            integer_time,
            reread,
        } => {
            if let Err(e) = serve_metrics(listen.as_deref()).await {
                return fail(&e);
            }
            use crate::cdc::debezium::IntegerTime;
            use crate::cdc::input::{EventInput, JetStreamInput, JetStreamOptions, LineInput};
            let options = crate::cdc::apply::ApplyOptions {
                group_size: group_size.max(1),
                integer_time: match integer_time {
                    IntegerTimeArg::Micros => IntegerTime::Micros,
                    IntegerTimeArg::Millis => IntegerTime::Millis,
                    IntegerTimeArg::Nanos => IntegerTime::Nanos,
                },
                reread,
            };
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let opened: anyhow::Result<Box<dyn EventInput>> = match (nats, stream) {
                (Some(url), Some(stream)) => {
                    let js = JetStreamOptions {
                        url,
                        ca: nats_ca,
                        client_cert: nats_cert.zip(nats_key),
                        durable: durable.unwrap_or_else(|| format!("ferry-{}", settings.pipeline)),
                        stream,
                        subject: subject.unwrap_or_default(),
                        idle_flush: std::time::Duration::from_millis(100),
                        idle_exit: idle_exit.map(std::time::Duration::from_secs_f64),
                        max_ack_pending: (options.group_size as i64 * 10).max(10_000),
                    };
                    JetStreamInput::connect(&js).await.map(|i| Box::new(i) as Box<dyn EventInput>)
                }
                (Some(_), None) => Err(crate::error::Error::raise(
                    ErrorKind::Config,
                    "--nats needs --stream (the JetStream stream to consume)",
                )),
                _ if input.as_os_str() == "-" => {
                    Ok(Box::new(LineInput::new(tokio::io::BufReader::new(tokio::io::stdin()))) as Box<dyn EventInput>)
                }
                _ => match tokio::fs::File::open(&input).await {
                    Ok(file) => Ok(Box::new(LineInput::new(tokio::io::BufReader::new(file))) as Box<dyn EventInput>),
                    Err(e) => Err(crate::error::Error::raise(
                        ErrorKind::Config,
                        format!("cannot read {}: {e}", input.display()),
                    )),
                },
            };
            let result = match opened {
                Ok(mut events) => {
                    crate::cdc::tables::apply(&settings, &settings.tables, events.as_mut(), options, stop).await
                }
                Err(e) => Err(e),
            };
            match result {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::apply(&r));
                    notify_run(&settings, stream_summary("apply", &r), r.dead_lettered, &r).await;
                    stream_exit(&r, false)
                }
            }
        }
        Command::Sync { slot, publication, chunk_rows, idle_exit, teardown, reverse, listen } => {
            if let Err(e) = serve_metrics(listen.as_deref()).await {
                return fail(&e);
            }
            let idle_exit = idle_exit.map(std::time::Duration::from_secs_f64);
            let forward = settings;
            let (settings, options) = if reverse {
                if slot.is_some() || publication.is_some() || chunk_rows.is_some() {
                    return fail(&crate::error::Error::raise(
                        ErrorKind::Config,
                        "--slot/--publication/--chunk-rows are the forward stream's; the reverse stream's slot and \
                         publication are set in [reverse] (slot = \"…\", publication = \"…\") and it loads nothing",
                    ));
                }
                match crate::cdc::reverse::endpoints(&forward, default_slot_name, idle_exit) {
                    Ok(reversed) => reversed,
                    Err(e) => return fail(&e),
                }
            } else {
                let name = |given: Option<String>| given.unwrap_or_else(|| default_slot_name(&forward.pipeline));
                let options = crate::cdc::sync::SyncOptions {
                    slot: name(slot),
                    publication: name(publication),
                    chunk_rows: chunk_rows.map(|n| n.max(1)),
                    idle_exit,
                    initial_load: true,
                    origins: crate::cdc::reverse::forward_origins(&forward),
                    watch: None,
                };
                (forward.clone(), options)
            };
            if teardown {
                return match crate::cdc::sync::teardown(&settings, &options).await {
                    Ok(()) => {
                        println!("dropped replication slot {} and publication {}", options.slot, options.publication);
                        exit::OK
                    }
                    Err(e) => fail(&e),
                };
            }
            let (settings, options) = if reverse {
                match crate::cdc::reverse::tables(&forward).await {
                    Ok((tables, watch)) => {
                        (Settings { tables, ..settings }, crate::cdc::sync::SyncOptions { watch, ..options })
                    }
                    Err(e) => return fail(&e),
                }
            } else {
                (settings, options)
            };
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let signalled = Arc::clone(&stop);
            match crate::cdc::sync::sync(&settings, &options, stop).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || {
                        format!(
                            "initial load: {} rows in {} chunks\n{}",
                            r.snapshot_rows,
                            r.snapshot_chunks,
                            report::apply(&r.stream)
                        )
                    });
                    notify_run(&settings, stream_summary("sync", &r.stream), r.stream.dead_lettered, &r).await;
                    stream_exit(&r.stream, signalled.load(Ordering::Relaxed))
                }
            }
        }
        Command::Cutover { dry_run } | Command::Cutback { dry_run } => {
            let to = if matches!(cli.command, Command::Cutover { .. }) {
                crate::cutover::Side::New
            } else {
                crate::cutover::Side::Old
            };
            let options = crate::cutover::SwitchOptions::of(&settings, to, dry_run);
            match crate::cutover::switch(&settings, &options).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::switch(&r));
                    if r.switched {
                        let (event, what) = match to {
                            crate::cutover::Side::New => (Event::Cutover, "cutover"),
                            crate::cutover::Side::Old => (Event::Cutback, "cutback"),
                        };
                        let summary = format!("{what}: the application uses the {} database", to.as_str());
                        let details = serde_json::to_value(&r).unwrap_or_default();
                        crate::notify::send(&settings.notify, &settings.pipeline, event, summary, details).await;
                    }
                    if r.gates.iter().all(|g| g.ok) { exit::OK } else { exit::VERIFY_FAILED }
                }
            }
        }
        Command::Plan { dry_run: false } => match crate::runbook::plan(&settings).await {
            Err(e) => fail(&e),
            Ok(r) => {
                show(cli.json, &r, || r.markdown());
                exit::OK
            }
        },
        Command::Plan { dry_run: true } => match crate::runbook::dry_run(&settings).await {
            Err(e) => fail(&e),
            Ok(r) => {
                show(cli.json, &r, || r.markdown());
                exit::OK
            }
        },
        Command::Rollback { ref run, reverse, forget: true, .. } => {
            match crate::undo::forget(&settings, run, reverse).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || {
                        format!(
                            "run {}: its undo journal is forgotten ({} rows deleted); it can no longer be rolled back",
                            r.run_id, r.deleted
                        )
                    });
                    exit::OK
                }
            }
        }
        Command::Rollback { ref run, reverse, force, dry_run, .. } => {
            let options = crate::undo::RollbackOptions { force, dry_run };
            match crate::undo::rollback(&settings, run, reverse, options).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::rollback(&r));
                    if r.exact { exit::OK } else { exit::VERIFY_FAILED }
                }
            }
        }
        Command::Conflicts { resolve, all } => match crate::cutover::conflicts(&settings, resolve, all).await {
            Err(e) => fail(&e),
            Ok(r) => {
                show(cli.json, &r, || report::conflicts(&r));
                exit::OK
            }
        },
        Command::Status { slot } => {
            let slot = slot.unwrap_or_else(|| default_slot_name(&settings.pipeline));
            match crate::status::status(&settings, &slot).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::status(&r));
                    exit::OK
                }
            }
        }
        Command::Dlq { action: DlqAction::Replay { plugin, table, wait } } => {
            let selection = settings.tables.clone();
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let wait = std::time::Duration::from_secs_f64(wait.max(0.0));
            let (plugin, table) = (plugin.as_deref(), table.as_deref());
            match crate::tables::replay::replay(&settings, &selection, plugin, table, wait, stop).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::replay(&r));
                    match r {
                        _ if r.interrupted => exit::INTERRUPTED,
                        _ if r.remaining() > 0 => exit::DEAD_LETTERS,
                        _ => exit::OK,
                    }
                }
            }
        }
        Command::Resync { table, wait } => {
            let selection = settings.tables.clone();
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let wait = std::time::Duration::from_secs_f64(wait.max(0.0));
            match crate::cdc::resync::resync(&settings, &selection, &table, wait, &stop).await {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::resync(&r));
                    exit::OK
                }
            }
        }
        Command::Reprocess { plugin, table, range } => {
            let selection = settings.tables.clone();
            let stop = Arc::new(AtomicBool::new(false));
            spawn_signal_handler(Arc::clone(&stop));
            let r = crate::tables::reprocess::reprocess(
                &settings,
                &selection,
                &plugin,
                table.as_deref(),
                range.as_deref(),
                stop,
            )
            .await;
            match r {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(cli.json, &r, || report::reprocess(&r));
                    match r {
                        _ if r.interrupted => exit::INTERRUPTED,
                        _ if r.dead_lettered > 0 => exit::DEAD_LETTERS,
                        _ => exit::OK,
                    }
                }
            }
        }
        Command::Dlq { action: DlqAction::List { limit, table } } => {
            match dlq_list(&settings, limit, table.as_deref()).await {
                Err(e) => fail(&e),
                Ok(records) => {
                    show(cli.json, &records, || report::dead_letters(&records));
                    exit::OK
                }
            }
        }
        Command::Plugin { action } => {
            let result = match action {
                PluginAction::Deploy { path, table, shadow, wait } => {
                    let wait = std::time::Duration::from_secs_f64(wait.max(0.0));
                    crate::swap::deploy(&settings, &path, table.as_deref(), shadow, wait).await
                }
                PluginAction::Promote { wait } => {
                    crate::swap::promote(&settings, std::time::Duration::from_secs_f64(wait.max(0.0))).await
                }
                PluginAction::Diff { old, new, table, sample } => {
                    let selection = settings.tables.clone();
                    return match crate::tables::diff::diff(&settings, &selection, &old, &new, table.as_deref(), sample)
                        .await
                    {
                        Err(e) => fail(&e),
                        Ok(r) => {
                            show(cli.json, &r, || report::plugin_diff(&r));
                            if r.differing() > 0 { exit::VERIFY_FAILED } else { exit::OK }
                        }
                    };
                }
                PluginAction::Bench { path, table, rows, repeat } => {
                    let selection = settings.tables.clone();
                    return match crate::tables::bench::bench(
                        &settings,
                        &selection,
                        &path,
                        table.as_deref(),
                        rows,
                        repeat,
                    )
                    .await
                    {
                        Err(e) => fail(&e),
                        Ok(r) => {
                            show(cli.json, &r, || {
                                format!(
                                    "{} on {} ({}): load {:.3} s, instantiate {:.3} s, {} rows in {:.3} s = {:.0} rows/s \
                                 ({} rejected, {} filtered, {} trapped; batches of {})",
                                    r.sha256.chars().take(12).collect::<String>(),
                                    r.table,
                                    r.contract,
                                    r.load_seconds,
                                    r.instantiate_seconds,
                                    r.rows,
                                    r.transform_seconds,
                                    r.rows_per_second,
                                    r.rejected,
                                    r.filtered,
                                    r.trapped,
                                    r.batch_rows
                                )
                            });
                            exit::OK
                        }
                    };
                }
                PluginAction::Info { .. }
                | PluginAction::New { .. }
                | PluginAction::Build { .. }
                | PluginAction::Test { .. } => unreachable!("handled above"),
            };
            match result {
                Err(e) => fail(&e),
                Ok(d) => {
                    show(cli.json, &d, || report::deployment(&d));
                    match d.state {
                        crate::deployments::DeployState::Refused => exit::PLUGIN,
                        _ => exit::OK,
                    }
                }
            }
        }
    }
}

/// Starts the /metrics and /health server when asked to.
async fn serve_metrics(listen: Option<&str>) -> anyhow::Result<()> {
    let Some(listen) = listen else { return Ok(()) };
    let addr = crate::daemon::parse_listen(listen)?;
    let bound = crate::daemon::serve(addr).await?;
    eprintln!("serving /metrics and /health on http://{bound}");
    Ok(())
}

/// SIGINT/SIGTERM in a command that writes nothing (`check`, `validate`,
/// `status`, `dlq`): stop at once with the same exit code as an interrupted
/// migration, saying so.
fn spawn_read_only_signal_handler() {
    tokio::spawn(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        eprintln!("interrupted by signal; this command writes nothing, so nothing is left half done");
        std::process::exit(exit::INTERRUPTED);
    });
}

/// SIGINT/SIGTERM: stop extracting, commit what is in flight, exit cleanly.
/// A second signal exits at once (the checkpoint is still consistent).
fn spawn_signal_handler(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return,
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("second signal: exiting now; the last committed checkpoint is intact");
                std::process::exit(exit::INTERRUPTED);
            }
            eprintln!("stopping after the batches in flight are committed (signal again to exit now)");
        }
    });
}

async fn recent_dead_letters(settings: &Settings, run_id: &str) -> Vec<crate::control::DeadLetterRecord> {
    match crate::engines::open_control(settings).await {
        Ok(mut t) => t.dead_letters(run_id, Some(10)).await.unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

async fn dlq_list(
    settings: &Settings,
    limit: usize,
    table: Option<&str>,
) -> anyhow::Result<Vec<crate::control::DeadLetterRecord>> {
    let mut target = crate::engines::open_row_target(settings).await?;
    let run = target.latest_run(&settings.pipeline).await?;
    // The last migration run's, then the change stream's.
    let mut all = match &run {
        Some(run) => target.dead_letters(&run.run_id, None).await?,
        None => Vec::new(),
    };
    let stream = target.stream_dead_letters(&settings.pipeline, None).await?;
    if run.is_none() && stream.is_empty() {
        return Err(crate::error::Error::contract(format!(
            "no run or stream of pipeline {} is recorded in {}",
            settings.pipeline, settings.target.url
        )));
    }
    all.extend(stream);
    Ok(all
        .into_iter()
        .filter(|d| table.is_none_or(|t| d.source_table == t || d.source_table.rsplit('.').next() == Some(t)))
        .take(limit)
        .collect())
}

/// `ferry plugin new | build | test`: project tooling, no pipeline needed.
fn plugin_project(action: &PluginAction, json: bool) -> i32 {
    use crate::scaffold;
    match action {
        PluginAction::New { name, lang, contract, dir } => match scaffold::new(dir, name, *lang, *contract) {
            Err(e) => fail(&e),
            Ok(made) => {
                show(json, &serde_json::json!({ "project": made }), || {
                    format!(
                        "made {}: `cd {} && ferry plugin test` builds it and runs its golden test",
                        made.display(),
                        made.display()
                    )
                });
                exit::OK
            }
        },
        PluginAction::Build { dir } => match scaffold::build(dir) {
            Err(e) => fail(&e),
            Ok(wasm) => {
                show(json, &serde_json::json!({ "wasm": wasm }), || format!("built {}", wasm.display()));
                exit::OK
            }
        },
        PluginAction::Test { dir, wasm, golden } => {
            let wasm = match wasm {
                Some(w) => w.clone(),
                None => match scaffold::build(dir) {
                    Ok(w) => w,
                    Err(e) => return fail(&e),
                },
            };
            let golden = golden.clone().unwrap_or_else(|| dir.join("tests/golden.json"));
            match scaffold::test(&wasm, &golden) {
                Err(e) => fail(&e),
                Ok(r) => {
                    show(json, &r, || report::plugin_test(&r));
                    if r.failed > 0 { exit::VERIFY_FAILED } else { exit::OK }
                }
            }
        }
        PluginAction::Info { .. }
        | PluginAction::Deploy { .. }
        | PluginAction::Diff { .. }
        | PluginAction::Bench { .. }
        | PluginAction::Promote { .. } => unreachable!("pipeline commands"),
    }
}

fn plugin_info(path: &std::path::Path, json: bool) -> i32 {
    // The same compiled-code cache as the pipelines' (FERRY_CACHE_DIR or
    // ~/.cache/ferry): the compile time shown is what a pipeline's start pays.
    let options = crate::plugin::LoadOptions { cache_dir: crate::settings::default_cache_dir(), ..Default::default() };
    match crate::plugin::TablePlugin::load(path, &options) {
        Err(e) => fail(&e.into()),
        Ok(p) => {
            let (exports, facts) = (p.interface(), p.facts());
            if json {
                print_json(&serde_json::json!({
                    "path": path,
                    "sha256": p.sha256(),
                    "exports": exports,
                    "contract": facts.exports,
                    "imports": facts.imports,
                    "bytes": facts.bytes,
                    "compile_seconds": facts.compile_seconds,
                }));
            } else {
                let list = |items: &[String]| if items.is_empty() { "nothing".to_string() } else { items.join(", ") };
                println!(
                    "{}\n  sha256   {}\n  contract {exports} (exports: {})\n  imports  {} (linked deny-all)\n  size     {} bytes\n  compile  {:.2} s",
                    path.display(),
                    p.sha256(),
                    list(&facts.exports),
                    list(&facts.imports),
                    facts.bytes,
                    facts.compile_seconds
                );
            }
            exit::OK
        }
    }
}
