//! `riffle`: the command-line front end. Parses arguments, calls the engine, prints.

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use riffle_engine::format::{write_csv, write_json, write_table};
use riffle_engine::{ExecConfig, Session, StatementResult};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "riffle", version, about = "Riffle: a columnar batch-and-stream SQL engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OutputFormat {
    Table,
    Csv,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run SQL: from -c, from -f, from piped stdin, or in an interactive shell.
    Sql {
        /// Output format of query results.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
        /// Register a table: NAME=PATH (a file, a directory of files, or a glob; format from the extension).
        #[arg(long = "table", value_name = "NAME=PATH")]
        tables: Vec<String>,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Memory budget of each query, e.g. 2GB or 512MB (default: 3/4 of the machine's memory).
        /// Sorts spill to disk to stay within it.
        #[arg(long, value_name = "SIZE", value_parser = riffle_engine::memory::parse_memory_size)]
        memory_limit: Option<usize>,
        /// Directory for spill files (default: the system temp dir).
        #[arg(long, value_name = "DIR")]
        spill_dir: Option<std::path::PathBuf>,
        /// Read tables as streams: sources emit watermarks (tables with WATERMARK FOR), window
        /// aggregates emit each window as the watermark passes its end, a GROUP BY over a table
        /// without end prints its changelog. Over bounded tables the answer is the same as without.
        #[arg(long)]
        stream: bool,
        /// With --stream: every GROUP BY updates, as in Flink's streaming mode: it prints each
        /// group's row as it changes, a changelog with the row kind first (+I, -U, +U, -D), where
        /// by default a GROUP BY over bounded input prints its final rows once. (Over a table
        /// without end a GROUP BY always updates.)
        #[arg(long, requires = "stream")]
        changelog: bool,
        /// With --stream: the directory of the job's checkpoints. An `INSERT INTO` a directory table
        /// then writes its rows exactly once: killed and started again with the same directory, the
        /// job resumes from its last complete checkpoint.
        #[arg(long, value_name = "DIR", requires = "stream")]
        checkpoint_dir: Option<std::path::PathBuf>,
        /// How often to checkpoint, e.g. 500ms, 10s, 1m.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
        checkpoint_interval: std::time::Duration,
        /// SQL to run.
        #[arg(short = 'c', long = "command", conflicts_with = "file")]
        command: Option<String>,
        /// File of SQL statements to run.
        #[arg(short = 'f', long = "file")]
        file: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    riffle_engine::memory::keep_freed_memory();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) => {
            // The query failed because Ctrl-C removed its spill files under it: the handler is
            // finishing that and exits with 130; this error is no news.
            std::thread::sleep(std::time::Duration::from_secs(10));
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Set once Ctrl-C (or a termination signal) came.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Sql { format, tables, threads, memory_limit, spill_dir, stream, changelog, checkpoint_dir, checkpoint_interval, command, file } => {
            remove_spill_files_on_interrupt();
            let mut config = ExecConfig::default();
            if let Some(m) = memory_limit {
                config.memory_limit = m;
            }
            config.spill_dir = spill_dir;
            config.stream = stream;
            config.changelog = changelog;
            if let Some(t) = threads {
                if t == 0 {
                    bail!("--threads must be at least 1");
                }
                config.threads = t;
            }
            let mut session = Session::new(config);
            session.checkpoint = checkpoint_dir
                .map(|dir| riffle_engine::exec::checkpoint::CheckpointConfig { dir, interval: checkpoint_interval });
            for t in &tables {
                let (name, path) = t
                    .split_once('=')
                    .with_context(|| format!("--table expects NAME=PATH, got '{t}'"))?;
                session.register_path(name.trim(), path.trim()).with_context(|| format!("cannot register table '{name}'"))?;
            }
            if let Some(sql) = command {
                return if stream { run_stream(&mut session, &sql, format) } else { run_script(&mut session, &sql, format) };
            }
            if let Some(path) = file {
                let sql = std::fs::read_to_string(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
                return if stream { run_stream(&mut session, &sql, format) } else { run_script(&mut session, &sql, format) };
            }
            if std::io::stdin().is_terminal() {
                return shell(&mut session, format);
            }
            let mut sql = String::new();
            std::io::stdin().read_to_string(&mut sql).context("cannot read SQL from stdin")?;
            run_script(&mut session, &sql, format)
        }
    }
}

/// Ctrl-C (or a termination signal) during a query would end the process without running the
/// destructors that delete spill files: remove them first.
fn remove_spill_files_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        riffle_engine::memory::remove_live_spill_dirs();
        eprintln!("Interrupted");
        std::process::exit(130);
    });
}

/// Runs every statement; prints all results only once all succeeded, so an error never leaves half
/// an answer on stdout.
fn run_script(session: &mut Session, sql: &str, format: OutputFormat) -> anyhow::Result<()> {
    let results = session.execute(sql)?;
    let mut buf = Vec::new();
    for r in &results {
        print_result(&mut buf, r, format)?;
    }
    let mut out = std::io::stdout().lock();
    out.write_all(&buf).context("cannot write to stdout")?;
    out.flush().context("cannot write to stdout")?;
    Ok(())
}

/// Runs every statement as a stream: a query that never ends prints its rows as they come (a table
/// per batch, or CSV / JSON lines), until it is interrupted; other results print when done.
fn run_stream(session: &mut Session, sql: &str, format: OutputFormat) -> anyhow::Result<()> {
    let header_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let next_statement = header_done.clone();
    let printer: riffle_engine::session::RowSink = Arc::new(move |schema, batch| {
        let mut buf = Vec::new();
        let batches = std::slice::from_ref(batch);
        let written = match format {
            OutputFormat::Csv => {
                let mut text = Vec::new();
                let result = write_csv(&mut text, schema, batches);
                // The header once, at the top.
                let skip = if header_done.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    text.iter().position(|c| *c == b'\n').map_or(0, |p| p + 1)
                } else {
                    0
                };
                buf.extend_from_slice(&text[skip..]);
                result
            }
            OutputFormat::Json => write_json(&mut buf, batches),
            OutputFormat::Table => write_table(&mut buf, schema, batches),
        };
        written?;
        let mut out = std::io::stdout().lock();
        match out.write_all(&buf).and_then(|_| out.flush()) {
            // The reader went away (`| head`): stop quietly, as a pipeline's writer does.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            other => other.map_err(|e| riffle_engine::RiffleError::exec(format!("cannot write to stdout: {e}"))),
        }
    });
    session.execute_streaming_each(sql, printer, &mut |r| {
        // The next query's rows get a header of their own.
        next_statement.store(false, std::sync::atomic::Ordering::Relaxed);
        let mut buf = Vec::new();
        let printed = print_result(&mut buf, &r, format).map_err(|e| riffle_engine::RiffleError::exec(e.to_string()));
        let mut out = std::io::stdout().lock();
        printed?;
        out.write_all(&buf).and_then(|_| out.flush()).map_err(|e| riffle_engine::RiffleError::exec(format!("cannot write to stdout: {e}")))
    })?;
    Ok(())
}

fn print_result(out: &mut Vec<u8>, r: &StatementResult, format: OutputFormat) -> anyhow::Result<()> {
    if !r.is_query && r.schema.fields().is_empty() {
        return Ok(());
    }
    if r.schema.fields().len() == 1 && r.schema.field(0).name() == "plan" && format != OutputFormat::Json {
        // EXPLAIN output reads best as plain text.
        for b in &r.batches {
            let col = b.column(0);
            for i in 0..b.num_rows() {
                if let Some(v) = riffle_engine::format::format_value(col, i)? {
                    writeln!(out, "{v}")?;
                }
            }
        }
        return Ok(());
    }
    match format {
        OutputFormat::Csv => write_csv(out, &r.schema, &r.batches)?,
        OutputFormat::Json => write_json(out, &r.batches)?,
        OutputFormat::Table => write_table(out, &r.schema, &r.batches)?,
    }
    Ok(())
}

/// An interactive shell: statements end with `;` and may span lines; history is kept in
/// `~/.riffle_history`.
fn shell(session: &mut Session, format: OutputFormat) -> anyhow::Result<()> {
    let mut rl = rustyline::DefaultEditor::new().context("cannot start the line editor")?;
    let history = std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".riffle_history"));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    println!("Riffle {} — end statements with ';', exit with Ctrl-D.", env!("CARGO_PKG_VERSION"));
    let mut pending = String::new();
    loop {
        let prompt = if pending.is_empty() { "riffle> " } else { "   ...> " };
        match rl.readline(prompt) {
            Ok(line) => {
                pending.push_str(&line);
                pending.push('\n');
                if !line.trim_end().ends_with(';') {
                    continue;
                }
                let sql = std::mem::take(&mut pending);
                let _ = rl.add_history_entry(sql.trim());
                match session.execute(&sql) {
                    Ok(results) => {
                        let mut buf = Vec::new();
                        for r in &results {
                            if let Err(e) = print_result(&mut buf, r, format) {
                                eprintln!("Error: {e:#}");
                            }
                        }
                        std::io::stdout().write_all(&buf)?;
                    }
                    Err(e) => eprintln!("Error: {e}"),
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => pending.clear(),
            Err(rustyline::error::ReadlineError::Eof) => break,
            Err(e) => bail!("cannot read input: {e}"),
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    Ok(())
}

/// `500ms`, `10s`, `2m`, `1h`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("expected a duration such as 500ms, 10s or 1m, got '{text}'"))?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("unknown unit '{other}' in '{text}' (use ms, s, m or h)")),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}
