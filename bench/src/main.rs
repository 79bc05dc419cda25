//! `riffle-bench`: runs SQL benchmarks on Riffle, alone or beside DuckDB, DataFusion and Polars
//! (through `../shared/peers/sql_bench.py`), so that ratios come from one run on one machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use riffle_engine::{ExecConfig, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "riffle-bench", about = "Riffle benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one query file `runs` times in-process (the sql_bench.py `--cmd` protocol): prints
    /// `ELAPSED_S=<seconds>` per run and writes the first run's results to OUT/<k>.csv.
    Run {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        sql: PathBuf,
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        runs: usize,
        #[arg(long)]
        threads: Option<usize>,
    },
    /// TPC-H queries on Parquet data (made by `../shared/peers/gen_tpch.sh SF DIR`), with peers measured
    /// in the same command.
    Tpch {
        /// Data directory holding <table>.parquet and queries/qNN.sql.
        #[arg(long)]
        data: PathBuf,
        /// Queries to run, e.g. q01,q06.
        #[arg(long, default_value = "q01,q06")]
        queries: String,
        /// Peer engines to run beside Riffle (empty for none).
        #[arg(long, default_value = "duckdb,datafusion")]
        peers: String,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Where the peers kit lives.
        #[arg(long, default_value = "../shared/peers")]
        peers_kit: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run { data, sql, out, runs, threads } => run(&data, &sql, out.as_deref(), runs, threads),
        Command::Tpch { data, queries, peers, threads, repeat, peers_kit } => {
            tpch(&data, &queries, &peers, threads, repeat, &peers_kit)
        }
    }
}

/// Registers every `DIR/<name>.parquet` and every `DIR/<name>/` of parquet files as table `name`.
fn register_tables(session: &mut Session, data: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(data).with_context(|| format!("cannot list {}", data.display()))? {
        let path = entry?.path();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let is_table = (path.is_file() && path.extension().is_some_and(|e| e == "parquet"))
            || (path.is_dir() && std::fs::read_dir(&path)?.flatten().any(|f| f.path().extension().is_some_and(|e| e == "parquet")));
        if is_table {
            session.register_path(&name, &path.to_string_lossy())?;
        }
    }
    Ok(())
}

fn run(data: &Path, sql: &Path, out: Option<&Path>, runs: usize, threads: Option<usize>) -> anyhow::Result<()> {
    let mut config = ExecConfig::default();
    if let Some(t) = threads {
        config.threads = t.max(1);
    }
    let mut session = Session::new(config);
    register_tables(&mut session, data)?;
    let text = std::fs::read_to_string(sql).with_context(|| format!("cannot read {}", sql.display()))?;
    for run in 0..runs.max(1) {
        let started = Instant::now();
        let results = session.execute(&text)?;
        println!("ELAPSED_S={:.6}", started.elapsed().as_secs_f64());
        if run == 0 {
            if let Some(dir) = out {
                let queries = results.iter().filter(|r| r.is_query);
                for (k, r) in queries.enumerate() {
                    let mut buf = Vec::new();
                    riffle_engine::format::write_csv(&mut buf, &r.schema, &r.batches)?;
                    std::fs::write(dir.join(format!("{}.csv", k + 1)), buf)?;
                }
            }
        }
    }
    Ok(())
}

fn tpch(data: &Path, queries: &str, peers: &str, threads: usize, repeat: usize, kit: &Path) -> anyhow::Result<()> {
    let script = kit.join("sql_bench.py");
    if !script.exists() {
        bail!("{} not found: pass --peers-kit", script.display());
    }
    let me = std::env::current_exe()?;
    let engines: Vec<&str> = std::iter::once("riffle").chain(peers.split(',').filter(|p| !p.is_empty())).collect();
    let cmd = format!(
        "riffle={} run --data {{data}} --sql {{sql}} --out {{out}} --runs {{runs}} --threads {{threads}}",
        me.display()
    );
    let status = std::process::Command::new(&script)
        .args(["--engine", &engines.join(",")])
        .args(["--cmd", &cmd])
        .arg("--data")
        .arg(data)
        .arg("--queries")
        .arg(data.join("queries"))
        .arg("--answers")
        .arg(data.join("answers"))
        .args(["--only", queries, "--threads", &threads.to_string(), "--repeat", &repeat.to_string()])
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("sql_bench.py failed");
    }
    Ok(())
}
