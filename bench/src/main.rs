//! `riffle-bench`: runs SQL benchmarks on Riffle, alone or beside DuckDB, DataFusion and Polars
//! (through `../shared/peers/sql_bench.py`), so that ratios come from one run on one machine.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use riffle_engine::{ExecConfig, Session};

mod nexmark;
mod sort;

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
        /// The memory budget, e.g. 4GB (default: the engine's).
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// TPC-H queries on Parquet data (made by `gen tpch` or `../shared/peers/gen_tpch.sh SF DIR`), with
    /// peers measured in the same command.
    Tpch(SuiteArgs),
    /// TPC-DS queries on Parquet data (made by `gen tpcds` or `../shared/peers/gen_tpcds.sh SF DIR`),
    /// with peers measured in the same command.
    Tpcds(SuiteArgs),
    /// Nexmark queries (q0, q1, q2, q5, q7 as Flink's Nexmark suite writes them) run as streams into a
    /// blackhole sink, on a bid file (from ../shared/peers/flink/gen_bids.py) or on the generator; with
    /// --peers flink, Flink runs the same file in the same command. q3, q4 and q8 (persons or auctions)
    /// run on the generator only.
    Nexmark {
        #[arg(long)]
        input: Option<PathBuf>,
        /// Events the generator makes when there is no --input.
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        #[arg(long, default_value = "q0,q1,q2,q5,q7")]
        queries: String,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// `flink` to run Flink on the same file.
        #[arg(long, default_value = "")]
        peers: String,
        #[arg(long, default_value = "../shared/peers")]
        peers_kit: PathBuf,
        /// Checkpoint every this many milliseconds (Riffle and Flink).
        #[arg(long)]
        checkpoint_ms: Option<u64>,
        /// Measure latency instead: the generator hands out this many events per second on the wall
        /// clock (--events of them), or with --input the bid file is played back in event time (make
        /// it with gen_bids.py --rate N), and each result row's latency is the time from its last
        /// input event's due time to the row reaching the sink; prints p50, p99 and max per query.
        #[arg(long)]
        rate: Option<u64>,
        /// Memory budget of each query (Riffle), e.g. 64MB: window aggregates spill beyond it.
        #[arg(long)]
        memory_limit: Option<String>,
    },
    /// Generates benchmark data as Parquet: `gen tpch --sf 1 --out DIR` writes the 8 TPC-H tables
    /// (a table of more than 2 M rows as a directory of parts made in parallel) and the 22 queries
    /// in DIR/queries; `gen tpcds` the 24 TPC-DS tables (one file each, made in parallel) and the
    /// 99 queries.
    Gen {
        /// The benchmark: tpch or tpcds.
        benchmark: String,
        /// Scale factor (1 is about 1 GB of text, 8.7 M rows).
        #[arg(long)]
        sf: f64,
        #[arg(long)]
        out: PathBuf,
        /// Threads generating parts (default: the machine's cores).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Writes N sort-benchmark records (100 bytes: 10-byte key, 90-byte payload) to a .gensort file,
    /// or to a .parquet file (key FixedSizeBinary(10), payload FixedSizeBinary(90)).
    Gensort {
        /// Record count, e.g. 1000000, 10M, 1e8.
        #[arg(long)]
        records: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Checks that a file of records is sorted by key; prints the record count and an
    /// order-independent checksum (the same as the peers' valsort_parquet.py).
    Valsort {
        file: PathBuf,
        /// Fail unless the checksum is this (hex, as printed).
        #[arg(long)]
        expect_checksum: Option<String>,
    },
    /// Sorts records by key within a memory budget and checks the output; with --peers, DuckDB,
    /// DataFusion and Polars sort the same records (as Parquet) in the same command.
    Sort {
        /// A .gensort or .parquet file, or gen:N to generate N records on the fly.
        #[arg(long)]
        input: String,
        /// A .gensort or .parquet file, or `validate` to check the sorted stream without writing it.
        #[arg(long, default_value = "validate")]
        output: String,
        /// Memory budget, e.g. 2GB (as DuckDB reads it: GB = 10^9 bytes, GiB = 2^30); the peers get the same.
        #[arg(long, default_value = "2GB")]
        memory_limit: String,
        #[arg(long)]
        spill_dir: Option<PathBuf>,
        /// Spill file compression: lz4, zstd or none.
        #[arg(long, default_value = "lz4")]
        spill_compression: String,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// Seed of generated input.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Peer engines to run on the same records (e.g. duckdb,datafusion,polars); empty for none.
        #[arg(long, default_value = "")]
        peers: String,
        #[arg(long, default_value = "../shared/peers")]
        peers_kit: PathBuf,
        /// Where the Parquet variant of the input and the outputs go when peers run.
        #[arg(long)]
        work_dir: Option<PathBuf>,
    },
}

/// What this binary was compiled for: benchmark numbers depend on it, so every comparison says it.
fn build_target() -> &'static str {
    if cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "bmi2", target_feature = "fma")) {
        "x86-64-v3 (AVX2)"
    } else if cfg!(target_arch = "x86_64") {
        "baseline x86-64 (build with RUSTFLAGS=\"-C target-cpu=x86-64-v3\" for the README's numbers)"
    } else {
        std::env::consts::ARCH
    }
}

/// A query suite run on Riffle and its peers by `../shared/peers/sql_bench.py`, answers checked.
#[derive(clap::Args)]
struct SuiteArgs {
    /// Data directory holding <table>.parquet (or <table>/ of parts), queries/qNN.sql and the
    /// answers/ to check against (`../shared/peers/answers.sh DIR DIR/queries DIR/answers`).
    #[arg(long)]
    data: PathBuf,
    /// Queries to run, e.g. q01,q06 (default: all in DIR/queries).
    #[arg(long)]
    queries: Option<String>,
    /// Peer engines to run beside Riffle (empty for none).
    #[arg(long, default_value = "duckdb,datafusion")]
    peers: String,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// The memory budget of every engine, e.g. 4GB (Riffle spills past it; default: each engine's own).
    #[arg(long)]
    memory_limit: Option<String>,
    /// Where the peers kit lives.
    #[arg(long, default_value = "../shared/peers")]
    peers_kit: PathBuf,
}

fn main() -> anyhow::Result<()> {
    riffle_engine::memory::keep_freed_memory();
    let command = Cli::parse().command;
    if matches!(command, Command::Tpch(_) | Command::Tpcds(_) | Command::Nexmark { .. } | Command::Sort { .. }) {
        eprintln!("riffle-bench compiled for {}", build_target());
    }
    match command {
        Command::Run { data, sql, out, runs, threads, memory_limit } => run(&data, &sql, out.as_deref(), runs, threads, memory_limit.as_deref()),
        Command::Tpch(args) | Command::Tpcds(args) => suite(&args),
        Command::Nexmark { input, events, queries, threads, repeat, peers, peers_kit, checkpoint_ms, rate, memory_limit } => {
            let memory_limit = memory_limit.map(|m| riffle_engine::memory::parse_memory_size(&m).map_err(|e| anyhow::anyhow!(e))).transpose()?;
            nexmark::nexmark_command(&nexmark::NexmarkArgs {
                input,
                events,
                queries,
                threads,
                repeat,
                peers,
                peers_kit,
                checkpoint_interval: checkpoint_ms.map(std::time::Duration::from_millis),
                rate,
                memory_limit,
            })
        }
        Command::Gen { benchmark, sf, out, threads } => generate(&benchmark, sf, &out, threads),
        Command::Gensort { records, out, seed } => sort::gensort_file(sort::parse_count(&records)?, seed, &out),
        Command::Valsort { file, expect_checksum } => {
            let v = sort::valsort_file(&file, true)?;
            sort::print_validation(&file.display().to_string(), &v);
            if let Some(want) = expect_checksum {
                let want = u64::from_str_radix(want.trim_start_matches("0x"), 16).context("--expect-checksum takes hex digits")?;
                if want != v.checksum {
                    bail!("checksum {:016x} differs from the expected {want:016x}", v.checksum);
                }
            }
            if !v.sorted() {
                bail!("not sorted: record {} has a smaller key than the one before it", v.first_unsorted.unwrap_or_default());
            }
            Ok(())
        }
        Command::Sort { input, output, memory_limit, spill_dir, spill_compression, threads, repeat, seed, peers, peers_kit, work_dir } => {
            let limit = riffle_engine::memory::parse_memory_size(&memory_limit).map_err(|e| anyhow::anyhow!(e))?;
            let spill_compression = riffle_engine::SpillCompression::parse(&spill_compression)
                .with_context(|| format!("unknown --spill-compression '{spill_compression}' (lz4, zstd or none)"))?;
            let config = ExecConfig { threads: threads.max(1), memory_limit: limit, spill_dir, spill_compression, ..ExecConfig::default() };
            let work_dir = work_dir.unwrap_or_else(|| std::env::temp_dir().join("riffle-sort-bench"));
            std::fs::create_dir_all(&work_dir).with_context(|| format!("cannot create {}", work_dir.display()))?;
            let args = sort::SortArgs {
                input: sort::Input::parse(&input, seed)?,
                output: (output != "validate").then(|| PathBuf::from(&output)),
                config,
                repeat,
                peers: peers.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect(),
                peers_kit,
                memory_limit_text: memory_limit,
                work_dir,
            };
            sort::sort_command(&args)
        }
    }
}

fn generate(benchmark: &str, sf: f64, out: &Path, threads: Option<usize>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let Some(which) = riffle_tpcds::Benchmark::parse(benchmark) else {
        bail!("unknown benchmark '{benchmark}': `gen tpch` or `gen tpcds`");
    };
    let title = match which {
        riffle_tpcds::Benchmark::Tpch => "TPC-H",
        riffle_tpcds::Benchmark::Tpcds => "TPC-DS",
    };
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let total = which.rows(sf);
    let bar = if std::io::stderr().is_terminal() { indicatif::ProgressBar::new(total as u64) } else { indicatif::ProgressBar::hidden() };
    let template = format!("{{spinner}} {title} SF{{msg}} [{{bar:40}}] {{human_pos}}/{{human_len}} rows {{elapsed_precise}} eta {{eta}}");
    let style = indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(sf.to_string());
    let started = Instant::now();
    let tables = riffle_tpcds::generate(which, sf, out, threads, &|rows| bar.set_position(rows as u64))
        .with_context(|| format!("generating {title} SF{sf} into {}", out.display()))?;
    bar.finish_and_clear();
    for (table, rows) in &tables {
        println!("{table:<22} {rows:>12} rows");
    }
    println!("{title} SF{sf} in {} ({:.1} s, {threads} threads); queries in {}", out.display(), started.elapsed().as_secs_f64(), out.join("queries").display());
    Ok(())
}

fn run(data: &Path, sql: &Path, out: Option<&Path>, runs: usize, threads: Option<usize>, memory_limit: Option<&str>) -> anyhow::Result<()> {
    let mut config = ExecConfig::default();
    if let Some(t) = threads {
        config.threads = t.max(1);
    }
    if let Some(m) = memory_limit {
        config.memory_limit = riffle_engine::memory::parse_memory_size(m).map_err(|e| anyhow::anyhow!(e))?;
    }
    let mut session = Session::new(config);
    session.register_parquet_dir(data)?;
    let text = std::fs::read_to_string(sql).with_context(|| format!("cannot read {}", sql.display()))?;
    for run in 0..runs.max(1) {
        let started = Instant::now();
        let results = session.execute(&text)?;
        println!("ELAPSED_S={:.6}", started.elapsed().as_secs_f64());
        if run == 0 {
            if let Some(dir) = out {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
                let queries = results.iter().filter(|r| r.is_query);
                for (k, r) in queries.enumerate() {
                    let mut buf = Vec::new();
                    riffle_engine::format::write_csv(&mut buf, &r.schema, &r.batches)?;
                    let file = dir.join(format!("{}.csv", k + 1));
                    std::fs::write(&file, buf).with_context(|| format!("cannot write {}", file.display()))?;
                }
            }
        }
    }
    Ok(())
}

fn suite(args: &SuiteArgs) -> anyhow::Result<()> {
    let script = args.peers_kit.join("sql_bench.py");
    if !script.exists() {
        bail!("{} not found: pass --peers-kit", script.display());
    }
    let me = std::env::current_exe()?;
    let engines: Vec<&str> = std::iter::once("riffle").chain(args.peers.split(',').filter(|p| !p.is_empty())).collect();
    let mut cmd = format!("riffle={} run --data {{data}} --sql {{sql}} --out {{out}} --runs {{runs}} --threads {{threads}}", me.display());
    if args.memory_limit.is_some() {
        cmd.push_str(" --memory-limit {memory_limit}");
    }
    let mut bench = std::process::Command::new(&script);
    bench
        .args(["--engine", &engines.join(",")])
        .args(["--cmd", &cmd])
        .arg("--data")
        .arg(&args.data)
        .arg("--queries")
        .arg(args.data.join("queries"))
        .arg("--answers")
        .arg(args.data.join("answers"))
        .args(["--threads", &args.threads.to_string(), "--repeat", &args.repeat.to_string()]);
    if let Some(only) = &args.queries {
        bench.args(["--only", only]);
    }
    if let Some(limit) = &args.memory_limit {
        bench.args(["--memory-limit", limit]);
    }
    let status = bench
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("sql_bench.py failed");
    }
    Ok(())
}
