//! `riffle-bench nexmark`: Nexmark queries run as streams into a blackhole sink, on a bid file made by
//! `../shared/peers/flink/gen_bids.py` (or on Riffle's generator), with Flink on the same file in the
//! same command (`../shared/peers/flink/flink_nexmark.py`), so the ratios come from one run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use riffle_engine::exec::checkpoint::CheckpointConfig;
use riffle_engine::{ExecConfig, Session};

/// The Nexmark queries as Flink's Nexmark suite writes them (sink columns, query).
const QUERIES: [(&str, &str, &str); 8] = [
    ("q0", "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3), extra VARCHAR", "SELECT auction, bidder, price, date_time, extra FROM bid"),
    (
        "q1",
        "auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time TIMESTAMP(3), extra VARCHAR",
        "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid",
    ),
    ("q2", "auction BIGINT, price BIGINT", "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    (
        "q3",
        "name VARCHAR, city VARCHAR, state VARCHAR, id BIGINT",
        "SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
         WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')",
    ),
    (
        "q4",
        "category BIGINT, avg_final DOUBLE",
        "SELECT Q.category, AVG(Q.final) FROM (
           SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
           WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
           GROUP BY A.id, A.category
         ) Q
         GROUP BY Q.category",
    ),
    (
        "q5",
        "auction BIGINT, num BIGINT, starttime TIMESTAMP(3), endtime TIMESTAMP(3)",
        "SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime, AuctionBids.endtime FROM (
           SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
           FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
           GROUP BY auction, window_start, window_end
         ) AS AuctionBids
         JOIN (
           SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
             SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
             FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
             GROUP BY auction, window_start, window_end
           ) AS CountBids
           GROUP BY CountBids.starttime, CountBids.endtime
         ) AS MaxBids
         ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime AND AuctionBids.num >= MaxBids.maxn",
    ),
    (
        "q7",
        "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3), extra VARCHAR",
        "SELECT B.auction, B.bidder, B.price, B.date_time, B.extra FROM bid B
         JOIN (
           SELECT MAX(price) AS maxprice, window_end AS date_time
           FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
           GROUP BY window_start, window_end
         ) B1
         ON B.price = B1.maxprice
         WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time",
    ),
    (
        "q8",
        "id BIGINT, name VARCHAR, starttime TIMESTAMP(3)",
        "SELECT P.id, P.name, P.starttime FROM (
           SELECT id, name, window_start AS starttime, window_end AS endtime
           FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
           GROUP BY id, name, window_start, window_end
         ) P
         JOIN (
           SELECT seller, window_start AS starttime, window_end AS endtime
           FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
           GROUP BY seller, window_start, window_end
         ) A
         ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime",
    ),
];

/// Queries over persons or auctions: run on the generator only (a bid file has bids).
fn reads_people(q: &str) -> bool {
    matches!(q, "q3" | "q4" | "q8")
}

/// The person and auction tables of the generator's events, as `source` (the bid table's) makes them.
const PEOPLE: [(&str, &str); 2] = [
    ("person", "id BIGINT, name VARCHAR, city VARCHAR, state VARCHAR, date_time TIMESTAMP(3)"),
    ("auction", "id BIGINT, seller BIGINT, category BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3)"),
];

const BID_COLUMNS: &str = "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP(3), extra VARCHAR, \
                           WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND";

pub struct NexmarkArgs {
    pub input: Option<PathBuf>,
    pub events: u64,
    pub queries: String,
    pub threads: usize,
    pub repeat: usize,
    pub peers: String,
    pub peers_kit: PathBuf,
    pub checkpoint_interval: Option<std::time::Duration>,
    pub rate: Option<u64>,
    /// The queries' memory budget (the default: ExecConfig's).
    pub memory_limit: Option<usize>,
}

impl NexmarkArgs {
    /// How a query of the benchmark runs: as a stream, `--changelog` as Flink's streaming mode plans it.
    fn config(&self, changelog: bool) -> ExecConfig {
        let base = ExecConfig::default();
        let memory_limit = self.memory_limit.unwrap_or(base.memory_limit);
        ExecConfig { threads: self.threads.max(1), stream: true, changelog, memory_limit, ..base }
    }
}

struct Measured {
    query: String,
    seconds: f64,
    events: u64,
    rows: i64,
    stats: riffle_engine::exec::QueryStats,
}

pub fn nexmark_command(a: &NexmarkArgs) -> anyhow::Result<()> {
    let wanted: Vec<&str> = a.queries.split(',').map(str::trim).filter(|q| !q.is_empty()).collect();
    for q in &wanted {
        if !QUERIES.iter().any(|(name, _, _)| name == q) {
            bail!("unknown query {q} (known: q0, q1, q2, q3, q4, q5, q7, q8; q6 is not valid SQL: it selects B.dateTime without grouping by it, and Flink's suite does not run it either)");
        }
        if reads_people(q) && a.input.is_some() {
            bail!("{q} reads persons or auctions: it runs on the generator only, without --input");
        }
    }
    if let Some(rate) = a.rate {
        return latency_command(&wanted, rate, a);
    }
    let source = match &a.input {
        Some(path) => file_source(path)?,
        // Events of all kinds; 46 in 50 are bids.
        None => format!("'connector' = 'nexmark', 'table' = 'bid', 'events.num' = '{}', 'first-event.rate' = '10000'", a.events),
    };
    // Events are the bids the source holds (a self-join reads them twice, they count once).
    let events = {
        let mut s = Session::new(ExecConfig { threads: a.threads.max(1), ..ExecConfig::default() });
        s.execute(&format!("CREATE TABLE bid ({BID_COLUMNS}) WITH ({source})"))?;
        let r = s.sql("SELECT count(*) FROM bid")?;
        r.batches.first().and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|c| c.value(0) as u64)).unwrap_or(0)
    };
    let mut results = Vec::new();
    for q in &wanted {
        let (_, sink_columns, query) = QUERIES.iter().find(|(name, _, _)| name == q).context("query")?;
        let mut best: Option<Measured> = None;
        // A query over persons and auctions counts every event the generator made.
        let events = if reads_people(q) { a.events } else { events };
        for _ in 0..a.repeat.max(1) {
            let m = run_query(q, sink_columns, query, &source, events, a)?;
            eprintln!(
                "riffle {q}: {:.3} s, {} events, {:.0} events/s, {} rows, pool peak {:.1} MB, spilled {:.1} MB in {} files",
                m.seconds,
                m.events,
                m.events as f64 / m.seconds,
                m.rows,
                m.stats.peak_memory as f64 / 1e6,
                m.stats.spilled_bytes as f64 / 1e6,
                m.stats.spill_files
            );
            if best.as_ref().is_none_or(|b| m.seconds < b.seconds) {
                best = Some(m);
            }
        }
        results.extend(best);
    }
    let flink = match (a.peers.as_str(), &a.input) {
        ("", _) => vec![],
        ("flink", Some(input)) => run_flink(input, &wanted, a)?,
        ("flink", None) => bail!("--peers flink needs --input: a bid file from {}/flink/gen_bids.py", a.peers_kit.display()),
        (other, _) => bail!("unknown peer '{other}' (the Nexmark peer is flink)"),
    };
    println!(
        "{:<5} {:>10} {:>13} {:>15} {:>10} | {:>10} {:>15} {:>12}",
        "query", "riffle s", "events/s", "events/s/core", "rows", "flink s", "events/s/core", "riffle/flink"
    );
    for m in &results {
        let rate = m.events as f64 / m.seconds;
        let per_core = rate / a.threads as f64;
        let peer = flink.iter().find(|(q, _, _)| *q == m.query);
        let (fs, fcore, ratio) = match peer {
            Some((_, secs, core)) => (format!("{secs:.2}"), format!("{core:.0}"), format!("{:.1}×", per_core / core)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!("{:<5} {:>10.3} {:>13.0} {:>15.0} {:>10} | {fs:>10} {fcore:>15} {ratio:>12}", m.query, m.seconds, rate, per_core, m.rows);
    }
    Ok(())
}

/// The connector options of a bid file (CSV, as gen_bids.py writes it).
fn file_source(path: &Path) -> anyhow::Result<String> {
    let path = std::fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    Ok(format!("'connector' = 'filesystem', 'path' = '{}', 'format' = 'csv'", path.display()))
}

fn run_query(q: &str, sink_columns: &str, query: &str, source: &str, events: u64, a: &NexmarkArgs) -> anyhow::Result<Measured> {
    let mut session = Session::new(a.config(false));
    let checkpoints = a.checkpoint_interval.map(|_| std::env::temp_dir().join(format!("riffle-nexmark-ck-{}-{q}", std::process::id())));
    if let (Some(dir), Some(interval)) = (&checkpoints, a.checkpoint_interval) {
        let _ = std::fs::remove_dir_all(dir);
        session.checkpoint = Some(CheckpointConfig { dir: dir.clone(), interval });
    }
    create_tables(&mut session, q, source)?;
    session.execute(&format!("CREATE TABLE sink ({sink_columns}) WITH ('connector' = 'blackhole')"))?;
    let started = Instant::now();
    let result = session.sql(&format!("INSERT INTO sink {query}"))?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(dir) = &checkpoints {
        let _ = std::fs::remove_dir_all(dir);
    }
    let rows = result
        .batches
        .first()
        .and_then(|b| b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|c| c.value(0)))
        .unwrap_or(0);
    Ok(Measured { query: q.to_string(), seconds, events, rows, stats: result.stats })
}

/// The tables query `q` reads, from `source` (the bid table's connector options).
fn create_tables(session: &mut Session, q: &str, source: &str) -> anyhow::Result<()> {
    session.execute(&format!("CREATE TABLE bid ({BID_COLUMNS}) WITH ({source})"))?;
    if reads_people(q) {
        for (table, columns) in PEOPLE {
            let source = source.replace("'table' = 'bid'", &format!("'table' = '{table}'"));
            session.execute(&format!(
                "CREATE TABLE {table} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) WITH ({source})"
            ))?;
        }
    }
    Ok(())
}

/// Runs Flink on the same file; returns (query, wall seconds, events/s per core) of its JIT-warm runs.
fn run_flink(input: &Path, queries: &[&str], a: &NexmarkArgs) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let script = a.peers_kit.join("flink/flink_nexmark.py");
    if !script.exists() {
        bail!("{} not found: pass --peers-kit", script.display());
    }
    let python = "/tmp/flink-venv/bin/python";
    if !Path::new(python).exists() {
        bail!("Flink is not set up: run {}/flink/setup.sh", a.peers_kit.display());
    }
    let mut cmd = std::process::Command::new(python);
    cmd.arg(&script).arg("--input").arg(input);
    cmd.args(["--queries", &queries.join(","), "--parallelism", &a.threads.to_string(), "--repeat", "2"]);
    if let Some(i) = a.checkpoint_interval {
        cmd.args(["--checkpoint-interval", &format!("{}ms", i.as_millis())]);
    }
    let out = cmd.output().with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!("flink_nexmark.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(q), Some(wall), Some(core), Some(label)) = (col("query"), col("wall_s"), col("ev_s_core"), col("label")) else {
        bail!("unexpected flink_nexmark.py output: {text}");
    };
    let mut rows = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        // The second (warm) run of each query, as a long-running job runs.
        if f.get(label).is_some_and(|l| l.ends_with("rep2")) {
            let parse = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
            rows.push((f.get(q).unwrap_or(&"").to_string(), parse(wall), parse(core)));
        }
    }
    Ok(rows)
}

/// For latency: each query with a column that tells when its rows could first exist, and how long
/// after that column's time: a bid's own time, or a window's end plus the watermark delay (a window
/// closes once the watermark passed its end). q2, q3, q7 and q8 also return that column here (q3's
/// pair exists once its later row came; q8's rows are windows). q4 has none: its rows are updates of
/// running averages, each coming from many bids.
const LATENCY: [(&str, Option<SelectEdit>, usize, i64); 7] = [
    ("q0", None, 3, 0),
    ("q1", None, 3, 0),
    ("q2", Some(("SELECT auction, price FROM", "SELECT auction, price, date_time FROM")), 2, 0),
    ("q3", Some(("P.state, A.id FROM", "P.state, A.id, GREATEST(P.date_time, A.date_time) FROM")), 4, 0),
    ("q8", Some(("P.name, P.starttime FROM", "P.name, P.endtime FROM")), 2, WATERMARK_DELAY_US),
    ("q5", None, 3, WATERMARK_DELAY_US),
    ("q7", Some(("B.date_time, B.extra FROM", "B.date_time, B1.date_time FROM")), 4, WATERMARK_DELAY_US),
];

/// A select list edited: (`from`, `to`).
type SelectEdit = (&'static str, &'static str);

const BUCKET_US: i64 = 100;
const BUCKETS: usize = 600_000;

/// `BID_COLUMNS`' watermark delay.
const WATERMARK_DELAY_US: i64 = 1_000_000;

/// Latency at a given event rate: the generator paces itself on the wall clock (event time runs as
/// wall time does, from the start), the plans are Flink streaming mode's (every join a stream join),
/// and each row's latency is its arrival at the root minus the wall time its input was complete.
fn latency_command(wanted: &[&str], rate: u64, a: &NexmarkArgs) -> anyhow::Result<()> {
    use arrow::array::AsArray;
    use std::sync::{Arc, Mutex};
    if let Some(q) = wanted.iter().find(|q| !LATENCY.iter().any(|(name, ..)| name == *q)) {
        bail!("{q} has no latency measure: its rows are updates of running averages, each from many bids (run it without --rate)");
    }
    // The source, the event time its first event has (the wall clock's start), the event time its
    // input ends at (after that start), and its events.
    let (source, base, input_end, events) = match &a.input {
        Some(path) => {
            // A bid file played back in event time (made by gen_bids.py with `--rate`: its events are
            // that many per second of event time).
            let file = file_source(path)?;
            let mut s = Session::new(ExecConfig { threads: a.threads.max(1), ..ExecConfig::default() });
            s.execute(&format!("CREATE TABLE bid ({BID_COLUMNS}) WITH ({file})"))?;
            let r = s.sql("SELECT count(*), min(date_time), max(date_time) FROM bid")?;
            let b = r.batches.first().context("no answer")?;
            let micros = |i: usize| b.column(i).as_primitive_opt::<arrow::datatypes::TimestampMicrosecondType>().map(|c| c.value(0));
            let (Some(first), Some(last)) = (micros(1), micros(2)) else { bail!("{} has no bids", path.display()) };
            let rows = b.column(0).as_primitive::<arrow::datatypes::Int64Type>().value(0) as u64;
            (format!("{file}, 'source.replay' = 'event-time'"), first, last - first, rows)
        }
        None => {
            let source = format!(
                "'connector' = 'nexmark', 'table' = 'bid', 'events.num' = '{}', 'first-event.rate' = '{rate}', 'rate-limited' = 'true'",
                a.events
            );
            let base = riffle_formats::nexmark::NexmarkConfig::default().base_time;
            (source, base, (a.events as f64 / rate as f64 * 1e6) as i64, a.events)
        }
    };
    println!("{:<5} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10}", "query", "events/s", "rows", "p50 ms", "p99 ms", "max ms", "seconds");
    for q in wanted {
        let (_, _, query) = QUERIES.iter().find(|(name, _, _)| name == q).context("query")?;
        let (_, variant, column, delay) = LATENCY.iter().find(|(name, ..)| name == q).context("latency column")?;
        let mut session = Session::new(a.config(true));
        create_tables(&mut session, q, &source)?;
        // The query with its time column: a select list edited (`from` → `to`).
        let sql = variant.map_or(query.to_string(), |(from, to)| query.replacen(from, to, 1));
        let (_, plan) = session.plan_sql(&sql)?;
        // A histogram of 100 µs buckets up to 60 s: recording never stalls the stream it measures.
        let histogram = Arc::new(Mutex::new(vec![0u64; BUCKETS]));
        let sink = histogram.clone();
        let (column, delay) = (*column, *delay);
        let started = Instant::now();
        riffle_engine::exec::execute_into(
            &plan,
            &session.config,
            Arc::new(move |_, msg| {
                let riffle_engine::Message::Batch(b) = msg else { return Ok(()) };
                let now = started.elapsed().as_micros() as i64;
                let times = arrow::compute::cast(b.column(column), &arrow::datatypes::DataType::Int64)?;
                let times = times.as_primitive::<arrow::datatypes::Int64Type>();
                let mut h = sink.lock().map_err(|_| riffle_engine::RiffleError::exec("latency lock poisoned"))?;
                // Windows still open when the input ended are flushed then, early: not a latency.
                for due in times.iter().flatten().map(|t| t - base + delay).filter(|due| *due <= input_end) {
                    h[((now - due).max(0) / BUCKET_US) .min(BUCKETS as i64 - 1) as usize] += 1;
                }
                Ok(())
            }),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let h = histogram.lock().map_err(|_| anyhow::anyhow!("latency lock poisoned"))?.clone();
        let total: u64 = h.iter().sum();
        let at = |p: f64| {
            let want = ((total as f64 * p).ceil() as u64).max(1);
            let mut seen = 0;
            h.iter().position(|n| {
                seen += n;
                seen >= want
            })
            .map_or(f64::NAN, |b| (b as i64 + 1) as f64 * BUCKET_US as f64 / 1e3)
        };
        println!(
            "{q:<5} {:>12.0} {:>12} {:>10.1} {:>10.1} {:>10.1} {seconds:>10.2}",
            events as f64 / seconds,
            total,
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    Ok(())
}
