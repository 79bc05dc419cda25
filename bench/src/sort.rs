//! The sort benchmark: gensort records (100 bytes: 10-byte key, 90-byte payload) sorted by key within a
//! memory limit, checked by valsort (order, record count, order-independent checksum), and the same
//! records sorted by DuckDB, DataFusion and Polars in the same command (`../shared/peers/sort_bench.py`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use riffle_engine::exec::{execute_into, QueryStats};
use riffle_engine::{ExecConfig, Message, Session};
use riffle_formats::gensort::{self, RecordGenerator, Validation};
use riffle_formats::{AtomicWriter, FileFormat};

/// Where records come from.
#[derive(Debug, Clone)]
pub enum Input {
    Generated { records: u64, seed: u64 },
    File(PathBuf),
}

impl Input {
    /// `gen:N` (N may end in K, M or G) or a path to a `.gensort` or `.parquet` file.
    pub fn parse(text: &str, seed: u64) -> anyhow::Result<Input> {
        match text.strip_prefix("gen:") {
            Some(n) => Ok(Input::Generated { records: parse_count(n)?, seed }),
            None => Ok(Input::File(PathBuf::from(text))),
        }
    }

    /// The SQL table expression reading these records.
    fn table_sql(&self) -> anyhow::Result<String> {
        Ok(match self {
            Input::Generated { records, seed } => format!("gensort({records}, seed = {seed})"),
            Input::File(p) => format!("{}({})", reader_function(p)?, sql_string(&p.to_string_lossy())),
        })
    }
}

fn reader_function(path: &Path) -> anyhow::Result<&'static str> {
    match FileFormat::from_path(path) {
        Some(FileFormat::Gensort) => Ok("read_gensort"),
        Some(FileFormat::Parquet) => Ok("read_parquet"),
        _ => bail!("'{}' is neither a .gensort nor a .parquet file of records", path.display()),
    }
}

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `1000`, `10K`, `2M`, `1G` (powers of ten, as the peers' scripts read them) or `1e8`.
pub fn parse_count(text: &str) -> anyhow::Result<u64> {
    let t = text.trim();
    let (num, scale) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1e3),
        Some('M') => (&t[..t.len() - 1], 1e6),
        Some('G') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    let n: f64 = num.parse().with_context(|| format!("'{text}' is not a record count (e.g. 1000000, 10M, 1e8)"))?;
    if n.is_nan() || n < 0.0 {
        bail!("record count must not be negative: '{text}'");
    }
    Ok((n * scale).round() as u64)
}

/// Writes `records` generated records to `out` (gensort or, by extension, Parquet), in record order.
pub fn gensort_file(records: u64, seed: u64, out: &Path) -> anyhow::Result<()> {
    let format = match FileFormat::from_path(out) {
        Some(f @ (FileFormat::Gensort | FileFormat::Parquet)) => f,
        _ => bail!("write records to a .gensort or .parquet file, not '{}'", out.display()),
    };
    let started = Instant::now();
    let generator = RecordGenerator { seed };
    let mut writer = AtomicWriter::create(&format, out, &gensort::schema())?;
    let mut done = 0;
    while done < records {
        let n = (records - done).min(1 << 16) as usize;
        writer.write(&generator.batch(done, n))?;
        done += n as u64;
    }
    writer.finish()?;
    let secs = started.elapsed().as_secs_f64();
    println!("wrote {}: {records} records ({:.3} GB) in {secs:.1} s", out.display(), records as f64 * 100.0 / 1e9);
    Ok(())
}

/// Reads records in file order and validates them (order, count, checksum).
pub fn valsort_file(path: &Path, check_order: bool) -> anyhow::Result<Validation> {
    let format = FileFormat::from_path(path).with_context(|| format!("cannot tell the format of '{}'", path.display()))?;
    let files = vec![path.to_path_buf()];
    let schema = riffle_formats::infer_schema(&format, &files)?;
    let morsels = riffle_formats::plan_morsels(&format, &files)?;
    let projection: Vec<usize> = (0..schema.fields().len()).collect();
    let mut v = Validation::default();
    for m in &morsels {
        for batch in riffle_formats::read_morsel(&format, m, &schema, &projection, &[], 1 << 16)? {
            v.add(&batch?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
    }
    if !check_order {
        v.first_unsorted = None;
    }
    Ok(v)
}

/// The checksum the input's records must keep through the sort.
fn input_validation(input: &Input) -> anyhow::Result<Validation> {
    match input {
        Input::Generated { records, seed } => {
            let g = RecordGenerator { seed: *seed };
            let mut v = Validation::default();
            let mut done = 0;
            while done < *records {
                let n = (*records - done).min(1 << 16) as usize;
                v.add(&g.batch(done, n)).map_err(|e| anyhow::anyhow!(e))?;
                done += n as u64;
            }
            v.first_unsorted = None;
            Ok(v)
        }
        Input::File(p) => valsort_file(p, false),
    }
}

pub fn print_validation(what: &str, v: &Validation) {
    println!("{what}: records {}  checksum {:016x}  duplicate keys {}  sorted {}", v.records, v.checksum, v.duplicate_keys, v.sorted());
}

/// One Riffle sort run.
pub struct SortRun {
    pub seconds: f64,
    pub stats: QueryStats,
    /// The records as they came out, when validated in-process.
    pub validation: Option<Validation>,
}

/// Sorts `input` by key into `output` (a file, or `None` to validate the sorted stream in-process).
pub fn riffle_sort(input: &Input, output: Option<&Path>, config: &ExecConfig) -> anyhow::Result<SortRun> {
    let session = Session::new(config.clone());
    let query = format!("SELECT * FROM {} ORDER BY key", input.table_sql()?);
    let started = Instant::now();
    match output {
        Some(out) => {
            let format = match FileFormat::from_path(out) {
                Some(f @ (FileFormat::Gensort | FileFormat::Parquet)) => f,
                _ => bail!("sort output must be a .gensort or .parquet file, or 'validate'"),
            };
            let (_, stats) = session.copy_sql(&query, &format, out)?;
            Ok(SortRun { seconds: started.elapsed().as_secs_f64(), stats, validation: None })
        }
        None => {
            let (_, physical) = session.plan_sql(&query)?;
            let v = Arc::new(Mutex::new((Validation::default(), None::<String>)));
            let sink = v.clone();
            let stats = execute_into(
                &physical,
                config,
                Arc::new(move |_, msg| {
                    if let Message::Batch(b) = msg {
                        let mut st = sink.lock().map_err(|_| riffle_engine::RiffleError::exec("validation lock poisoned"))?;
                        if let Err(e) = st.0.add(&b) {
                            st.1.get_or_insert(e);
                        }
                    }
                    Ok(())
                }),
            )?;
            let seconds = started.elapsed().as_secs_f64();
            let (v, err) = std::mem::take(&mut *v.lock().map_err(|_| anyhow::anyhow!("validation lock poisoned"))?);
            if let Some(e) = err {
                bail!("sorted output is not gensort records: {e}");
            }
            Ok(SortRun { seconds, stats, validation: Some(v) })
        }
    }
}

/// The high-water mark of this process's resident memory, in bytes.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// Resets the resident-memory high-water mark (Linux), so a run's peak is its own.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

pub struct SortArgs {
    pub input: Input,
    pub output: Option<PathBuf>,
    pub config: ExecConfig,
    pub repeat: usize,
    pub peers: Vec<String>,
    pub peers_kit: PathBuf,
    pub memory_limit_text: String,
    pub work_dir: PathBuf,
}

pub fn sort_command(args: &SortArgs) -> anyhow::Result<()> {
    if !args.peers.is_empty() {
        // Found missing before the input is generated and sorted, not after.
        peers_script(args)?;
    }
    let expected = input_validation(&args.input)?;
    print_validation("input", &expected);
    let data_gb = expected.records as f64 * gensort::RECORD_LEN as f64 / 1e9;
    // With peers, every engine sorts the same Parquet file into Parquet.
    let parquet_input = if args.peers.is_empty() {
        None
    } else {
        match &args.input {
            Input::File(p) if FileFormat::from_path(p) == Some(FileFormat::Parquet) => Some(p.clone()),
            Input::Generated { records, seed } => {
                let p = args.work_dir.join(format!("sort-input-{records}-{seed}.parquet"));
                if !p.exists() {
                    gensort_file(*records, *seed, &p)?;
                }
                Some(p)
            }
            Input::File(p) => {
                let out = args.work_dir.join(format!("{}.parquet", p.file_stem().and_then(|s| s.to_str()).unwrap_or("input")));
                let mut s = Session::new(args.config.clone());
                s.execute(&format!("COPY (SELECT * FROM read_gensort({})) TO {} (FORMAT parquet)", sql_string(&p.to_string_lossy()), sql_string(&out.to_string_lossy())))?;
                Some(out)
            }
        }
    };
    let (input, output) = match &parquet_input {
        Some(p) => (Input::File(p.clone()), Some(args.work_dir.join("sorted.riffle.parquet"))),
        None => (args.input.clone(), args.output.clone()),
    };
    let mut best: Option<(SortRun, Option<u64>)> = None;
    for run in 0..args.repeat.max(1) {
        reset_peak_rss();
        let progress = Arc::new(riffle_engine::exec::Progress::default());
        let config = ExecConfig { progress: Some(progress.clone()), ..args.config.clone() };
        let bar = ProgressBar::start(progress, expected.records);
        let r = riffle_sort(&input, output.as_deref(), &config);
        bar.finish();
        let r = r?;
        let rss = peak_rss();
        let merge_at = r.stats.first_row_after.map_or(0.0, |d| d.as_secs_f64());
        eprintln!(
            "  riffle      run {}: {:7.3} s (read + runs {:.3} s, merge + write {:.3} s)  {:6.3} GB/s  rss {:6.0} MB  pool peak {:6.0} MB  spilled {:.3} GB in {} files",
            run + 1,
            r.seconds,
            merge_at,
            r.seconds - merge_at,
            data_gb / r.seconds,
            rss.unwrap_or(0) as f64 / 1e6,
            r.stats.peak_memory as f64 / 1e6,
            r.stats.spilled_bytes as f64 / 1e9,
            r.stats.spill_files,
        );
        if best.as_ref().is_none_or(|(b, _)| r.seconds < b.seconds) {
            best = Some((r, rss));
        }
    }
    let Some((run, rss)) = best else { bail!("no run") };
    let got = match (&run.validation, &output) {
        (Some(v), _) => v.clone(),
        (None, Some(out)) => valsort_file(out, true)?,
        (None, None) => bail!("nothing to validate"),
    };
    print_validation("output", &got);
    let verified = got.sorted() && got.records == expected.records && got.checksum == expected.checksum;
    println!(
        "riffle: {:.3} s, {:.3} GB/s ({:.1} MB/s), peak RSS {:.0} MB, memory pool peak {:.0} MB (limit {}), spilled {:.3} GB in {} files, verified {}",
        run.seconds,
        data_gb / run.seconds,
        data_gb * 1e3 / run.seconds,
        rss.unwrap_or(0) as f64 / 1e6,
        run.stats.peak_memory as f64 / 1e6,
        args.memory_limit_text,
        run.stats.spilled_bytes as f64 / 1e9,
        run.stats.spill_files,
        if verified { "ok" } else { "FAILED" }
    );
    if let Some(p) = &parquet_input {
        run_peers(args, p, data_gb, run.seconds)?;
    }
    if !verified {
        bail!("the sorted output does not hold exactly the input's records in key order");
    }
    Ok(())
}

/// The peers' sort benchmark script, which must exist.
fn peers_script(args: &SortArgs) -> anyhow::Result<PathBuf> {
    let script = args.peers_kit.join("sort_bench.py");
    if !script.exists() {
        bail!("{} not found: run from the project directory (beside ../shared) or pass --peers-kit DIR", script.display());
    }
    Ok(script)
}

fn run_peers(args: &SortArgs, input: &Path, data_gb: f64, riffle_seconds: f64) -> anyhow::Result<()> {
    let script = peers_script(args)?;
    let csv = args.work_dir.join("peers.csv");
    let _ = std::fs::remove_file(&csv);
    let status = std::process::Command::new(&script)
        .args(["--engine", &args.peers.join(",")])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(args.work_dir.join("sorted.parquet"))
        .args(["--memory-limit", &args.memory_limit_text, "--threads", &args.config.threads.to_string()])
        .args(["--repeat", &args.repeat.max(1).to_string(), "--verify", "--csv"])
        .arg(&csv)
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let text = std::fs::read_to_string(&csv).with_context(|| format!("sort_bench.py wrote no results ({status})"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |row: &[&str], name: &str| header.iter().position(|h| *h == name).and_then(|i| row.get(i).map(|s| s.to_string()));
    println!();
    println!("{:<11} {:>8} {:>8} {:>9} {:>9} {:>22}", "engine", "wall_s", "GB/s", "rss_MB", "spill_GB", "Riffle GB/s ÷ theirs");
    println!("{:<11} {:>8.3} {:>8.3} {:>9} {:>9} {:>22}", "riffle", riffle_seconds, data_gb / riffle_seconds, "-", "-", "1.00");
    for line in lines {
        let row: Vec<&str> = line.split(',').collect();
        let num = |name: &str| col(&row, name).and_then(|w| w.parse::<f64>().ok());
        let show = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<11} {:>8} {:>8} {:>9} {:>9} {:>22}  {}",
            col(&row, "engine").unwrap_or_default(),
            show(num("wall_s"), 3),
            show(num("gb_s"), 3),
            show(num("rss_mb"), 0),
            show(num("spill_gb"), 3),
            show(num("wall_s").map(|w| w / riffle_seconds), 2),
            col(&row, "status").unwrap_or_default() + " " + &col(&row, "verified").unwrap_or_default(),
        );
    }
    Ok(())
}

/// A progress bar on a terminal (stderr) while a sort runs: records read, then records merged out.
struct ProgressBar {
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressBar {
    fn start(progress: Arc<riffle_engine::exec::Progress>, records: u64) -> ProgressBar {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return ProgressBar { done, thread: None };
        }
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let bar = indicatif::ProgressBar::new(records.max(1) * 2);
            let style = indicatif::ProgressStyle::with_template("{spinner} {msg:24} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style.progress_chars("=> "));
            while !stop.load(Ordering::Relaxed) {
                let (read, out) = (progress.rows_read.load(Ordering::Relaxed), progress.rows_out.load(Ordering::Relaxed));
                bar.set_message(if out == 0 { "reading, forming runs" } else { "merging, writing" });
                bar.set_position(read.min(records) + out.min(records));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            bar.finish_and_clear();
        });
        ProgressBar { done, thread: Some(thread) }
    }

    fn finish(mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
