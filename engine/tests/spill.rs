//! Sorting within a memory budget: answers identical to the in-memory sort, the pool's peak within
//! the limit, spill files gone after success and after an error, output checked by valsort.

use std::path::Path;
use std::sync::{Arc, Mutex};

use riffle_engine::exec::execute_into;
use riffle_engine::{ExecConfig, Message, Session};
use riffle_formats::gensort::{RecordGenerator, Validation};

fn config(memory_limit: usize, threads: usize, spill_dir: &Path) -> ExecConfig {
    ExecConfig { threads, batch_size: 1000, memory_limit, spill_dir: Some(spill_dir.to_path_buf()), ..ExecConfig::default() }
}

/// valsort over the rows `sql` returns, in the order they come out.
fn validate(session: &Session, sql: &str) -> (Validation, riffle_engine::exec::QueryStats) {
    let (_, physical) = session.plan_sql(sql).expect("plans");
    let v = Arc::new(Mutex::new(Validation::default()));
    let sink = v.clone();
    let stats = execute_into(
        &physical,
        &session.config,
        Arc::new(move |_, m| {
            if let Message::Batch(b) = m {
                sink.lock().expect("lock").add(&b).expect("records");
            }
            Ok(())
        }),
    )
    .expect("runs");
    let v = v.lock().expect("lock").clone();
    (v, stats)
}

fn expected(records: u64, seed: u64) -> Validation {
    let mut v = Validation::default();
    v.add(&RecordGenerator { seed }.batch(0, records as usize)).expect("records");
    v
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("spill dir").count()
}

#[test]
fn external_sort_keeps_every_record_within_the_limit() {
    let want = expected(60_000, 3);
    for threads in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let limit = 1 << 20;
        let session = Session::new(config(limit, threads, dir.path()));
        let (got, stats) = validate(&session, "SELECT * FROM gensort(60000, seed = 3) ORDER BY key");
        assert!(got.sorted(), "threads {threads}: out of order at record {:?}", got.first_unsorted);
        assert_eq!((got.records, got.checksum), (want.records, want.checksum), "threads {threads}");
        assert!(stats.spill_files >= 6, "6 MB of records in a 1 MB budget must spill: {stats:?}");
        assert!(stats.peak_memory <= limit, "pool peak {} over the limit {limit}", stats.peak_memory);
        assert_eq!(entries(dir.path()), 0, "spill files left behind");
    }
}

#[test]
fn merge_in_several_passes_when_runs_exceed_the_budget() {
    // A budget far below one batch: every batch is a run, and the merge can read two at a time.
    let dir = tempfile::tempdir().expect("tempdir");
    let session = Session::new(ExecConfig { batch_size: 100, ..config(1, 2, dir.path()) });
    let (got, stats) = validate(&session, "SELECT * FROM gensort(5000, seed = 9) ORDER BY key");
    let want = expected(5000, 9);
    assert!(got.sorted());
    assert_eq!((got.records, got.checksum), (want.records, want.checksum));
    // 50 runs merged two at a time: more files than runs.
    assert!(stats.spill_files > 50, "{stats:?}");
    assert_eq!(entries(dir.path()), 0);
}

/// A gensort file whose keys come from `distinct` values only (1: all keys equal).
fn records_with_few_keys(path: &Path, records: usize, distinct: u8) {
    use arrow::array::{Array, FixedSizeBinaryArray};
    let batch = RecordGenerator { seed: 11 }.batch(0, records);
    let keys: Vec<u8> = (0..records).flat_map(|i| [(i * 7 % distinct as usize) as u8; 10]).collect();
    let keys = FixedSizeBinaryArray::new(10, arrow::buffer::Buffer::from_vec(keys), None);
    let payload = batch.column(1).clone();
    assert_eq!(payload.len(), records);
    let batch = arrow::array::RecordBatch::try_new(batch.schema(), vec![Arc::new(keys), payload]).expect("batch");
    riffle_formats::write_atomic(&riffle_formats::FileFormat::Gensort, path, &batch.schema(), &[batch]).expect("write");
}

#[test]
fn duplicate_and_all_equal_keys_keep_every_record_through_spills() {
    let data = tempfile::tempdir().expect("tempdir");
    for distinct in [5u8, 1] {
        let file = data.path().join(format!("dup{distinct}.gensort"));
        records_with_few_keys(&file, 20_000, distinct);
        let input = format!("read_gensort('{}')", file.display());
        for threads in [1, 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let session = Session::new(config(256 << 10, threads, dir.path()));
            let (unsorted, _) = validate(&Session::new(ExecConfig { threads: 1, ..ExecConfig::default() }), &format!("SELECT * FROM {input}"));
            let (got, stats) = validate(&session, &format!("SELECT * FROM {input} ORDER BY key"));
            assert!(got.sorted(), "{distinct} keys, threads {threads}");
            assert_eq!((got.records, got.checksum), (unsorted.records, unsorted.checksum), "{distinct} keys, threads {threads}");
            assert_eq!(got.duplicate_keys, 20_000 - distinct as u64);
            assert!(stats.spill_files > 0, "{stats:?}");
            assert_eq!(entries(dir.path()), 0);
        }
    }
}

#[test]
fn equal_keys_keep_input_order_through_spills_in_one_thread() {
    let data = tempfile::tempdir().expect("tempdir");
    let csv = data.path().join("kv.csv");
    let rows: String = (0..20_000).map(|i| format!("{},{i}\n", i % 7)).collect();
    std::fs::write(&csv, format!("k,v\n{rows}")).expect("write csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spilling = Session::new(ExecConfig { batch_size: 256, ..config(32 << 10, 1, dir.path()) });
    let mut in_memory = Session::new(ExecConfig { threads: 1, batch_size: 256, ..ExecConfig::default() });
    for s in [&mut spilling, &mut in_memory] {
        s.register_path("kv", &csv.to_string_lossy()).expect("register");
    }
    for sql in ["SELECT k, v FROM kv ORDER BY k", "SELECT k, v FROM kv ORDER BY k DESC LIMIT 5000", "SELECT 1 AS one, v FROM kv ORDER BY one"] {
        let spilled = spilling.sql(sql).expect("spilling sort");
        let direct = in_memory.sql(sql).expect("in-memory sort");
        assert_eq!(concat(&spilled), concat(&direct), "{sql}");
        assert!(spilled.stats.spill_files > 0, "{sql}: {:?}", spilled.stats);
    }
    assert_eq!(entries(dir.path()), 0);
}

fn concat(r: &riffle_engine::StatementResult) -> arrow::array::RecordBatch {
    arrow::compute::concat_batches(&r.schema, &r.batches).expect("concat")
}

#[test]
fn spill_files_are_removed_when_the_query_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = tempfile::tempdir().expect("tempdir");
    let csv = data.path().join("n.csv");
    let rows: String = (0..50_000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&csv, format!("n\n{rows}")).expect("write csv");
    let mut s = Session::new(ExecConfig { batch_size: 500, ..config(64 << 10, 2, dir.path()) });
    s.register_path("n", &csv.to_string_lossy()).expect("register");
    // Division by zero at n = 45000: after the sort has spilled most of its input.
    let err = s.sql("SELECT n, 1 // (n - 45000) AS x FROM n ORDER BY n DESC").expect_err("must fail");
    assert!(err.to_string().contains("zero"), "{err}");
    assert_eq!(entries(dir.path()), 0, "spill files left behind after an error");
    // The same sort without the failing row completes and spills.
    let ok = s.sql("SELECT n FROM n ORDER BY n DESC LIMIT 3").expect("runs");
    assert_eq!(ok.num_rows(), 3);
}

#[test]
fn an_unwritable_spill_dir_is_a_clear_error() {
    // A spill dir that does not exist is made, so this one is below a file (not even root can).
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let dir = file.path().join("riffle-spill");
    let s = Session::new(config(1, 1, &dir));
    let (_, physical) = s.plan_sql("SELECT * FROM gensort(10000) ORDER BY key").expect("plans");
    let err = riffle_engine::exec::execute(&physical, &s.config).err().expect("must fail").to_string();
    assert!(err.contains(&format!("cannot create a spill directory in '{}'", dir.display())), "{err}");
    assert!(err.contains("--spill-dir"), "{err}");
}

#[test]
fn spilling_aggregate_gives_the_in_memory_answer() {
    let data = tempfile::tempdir().expect("tempdir");
    let csv = data.path().join("g.csv");
    let rows: String = (0..60_000)
        .map(|i| format!("{},{},{}{}\n", i % 7919, i, if i % 5 == 0 { "" } else { "s" }, (i * 31) % 1000))
        .collect();
    std::fs::write(&csv, format!("k,v,s\n{rows}")).expect("write csv");
    let sql = "SELECT k, count(*) AS n, sum(v) AS total, avg(v) AS mean, min(s) AS lo, max(s) AS hi, \
               count(DISTINCT s) AS kinds FROM g GROUP BY k ORDER BY k";
    let mut reference = Session::new(ExecConfig { threads: 1, ..ExecConfig::default() });
    reference.register_path("g", &csv.to_string_lossy()).expect("register");
    let want = concat(&reference.sql(sql).expect("in memory"));
    assert_eq!(want.num_rows(), 7919);
    for threads in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Session::new(ExecConfig { batch_size: 500, ..config(256 << 10, threads, dir.path()) });
        s.register_path("g", &csv.to_string_lossy()).expect("register");
        let got = s.sql(sql).expect("spilling aggregate");
        assert!(got.stats.spill_files > 0, "threads {threads}: {:?}", got.stats);
        assert!(got.stats.peak_memory <= 256 << 10, "threads {threads}: pool peak over the limit: {:?}", got.stats);
        assert_eq!(concat(&got), want, "threads {threads}");
        assert_eq!(entries(dir.path()), 0);
    }
}

/// Two CSV tables for join tests: `a` (probe side) and `b` (build side), with duplicate and NULL keys.
fn join_tables(dir: &Path, s: &mut Session) {
    let a = dir.join("a.csv");
    let b = dir.join("b.csv");
    let rows: String = (0..30_000).map(|i| format!("{},{}\n", if i % 97 == 0 { String::new() } else { (i % 12_007).to_string() }, i)).collect();
    std::fs::write(&a, format!("k,v\n{rows}")).expect("write csv");
    let rows: String = (0..40_000).map(|i| format!("{},{}\n", if i % 89 == 0 { String::new() } else { ((i * 7) % 9_973).to_string() }, i * 3)).collect();
    std::fs::write(&b, format!("k,w\n{rows}")).expect("write csv");
    s.register_path("a", &a.to_string_lossy()).expect("register");
    s.register_path("b", &b.to_string_lossy()).expect("register");
}

#[test]
fn spilling_hash_join_gives_the_in_memory_answer() {
    let data = tempfile::tempdir().expect("tempdir");
    let queries = [
        "SELECT a.k, a.v, b.w FROM a JOIN b ON a.k = b.k ORDER BY a.v, b.w",
        "SELECT count(*), sum(a.v), sum(b.w), count(b.w) FROM a LEFT JOIN b ON a.k = b.k",
        "SELECT count(*), sum(a.v), sum(b.w), count(a.v) FROM a RIGHT JOIN b ON a.k = b.k AND b.w % 2 = 0",
        "SELECT count(*), sum(a.v), sum(b.w), count(a.v), count(b.w) FROM a FULL JOIN b ON a.k = b.k",
        "SELECT count(*), sum(v) FROM a WHERE k IN (SELECT k FROM b)",
        "SELECT count(*), sum(v) FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k)",
        "SELECT count(*), sum(v) FROM a WHERE k NOT IN (SELECT k FROM b WHERE k IS NOT NULL)",
        "SELECT k IN (SELECT k FROM b WHERE w > 60000) AS m, count(*) FROM a GROUP BY m ORDER BY m",
        "SELECT count(*), sum(v) FROM a WHERE k NOT IN (SELECT k FROM b)",
    ];
    let mut reference = Session::new(ExecConfig { threads: 1, ..ExecConfig::default() });
    join_tables(data.path(), &mut reference);
    for sql in queries {
        let want = concat(&reference.sql(sql).expect("in memory"));
        assert!(want.num_rows() > 0, "{sql}");
        // 256 KB spills each build side into buckets; 24 KB also splits buckets again.
        for (limit, threads) in [(256 << 10, 1), (256 << 10, 2), (24 << 10, 2)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut s = Session::new(ExecConfig { batch_size: 500, ..config(limit, threads, dir.path()) });
            join_tables(data.path(), &mut s);
            let got = s.sql(sql).unwrap_or_else(|e| panic!("{sql} with {limit} bytes: {e}"));
            assert!(got.stats.spill_files >= 32, "{sql}, {limit} bytes, {threads} threads: {:?}", got.stats);
            assert_eq!(concat(&got), want, "{sql}, {limit} bytes, {threads} threads");
            assert_eq!(entries(dir.path()), 0);
        }
    }
}

#[test]
fn a_spilling_join_keeps_the_buckets_that_fit_in_memory() {
    // Hybrid hash join: the build side outgrows 256 KB and spills, but its smallest buckets fit a
    // share of the memory then free and stay; their probe rows join without touching the disk.
    let data = tempfile::tempdir().expect("tempdir");
    let sql = "SELECT count(*), sum(a.v + b.w) FROM a JOIN b ON a.k = b.k";
    let mut reference = Session::new(ExecConfig { threads: 1, ..ExecConfig::default() });
    join_tables(data.path(), &mut reference);
    let want = concat(&reference.sql(sql).expect("in memory"));
    for threads in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = Session::new(ExecConfig { batch_size: 500, ..config(256 << 10, threads, dir.path()) });
        join_tables(data.path(), &mut s);
        assert_eq!(concat(&s.sql(sql).expect("spilling join")), want);
        let plan = concat(&s.sql(&format!("EXPLAIN ANALYZE {sql}")).expect("explain analyze"));
        let text = arrow::util::pretty::pretty_format_batches(&[plan]).expect("format").to_string();
        let kept: Vec<u32> = text
            .split("buckets_in_memory=")
            .skip(1)
            .filter_map(|rest| rest.split('/').next()?.parse().ok())
            .collect();
        assert!(text.contains("spilled="), "{text}");
        assert!(kept.len() == 1 && kept[0] > 0 && kept[0] < 16, "{threads} threads: {text}");
    }
}

#[test]
fn spilled_join_buckets_are_split_again_and_the_pool_stays_within_the_limit() {
    let data = tempfile::tempdir().expect("tempdir");
    let sql = "SELECT count(*), sum(a.v + b.w) FROM a JOIN b ON a.k = b.k";
    let mut reference = Session::new(ExecConfig { threads: 1, ..ExecConfig::default() });
    join_tables(data.path(), &mut reference);
    let want = concat(&reference.sql(sql).expect("in memory"));
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { batch_size: 500, ..config(64 << 10, 1, dir.path()) });
    join_tables(data.path(), &mut s);
    let got = s.sql(sql).expect("spilling join");
    // 16 build and 16 probe buckets, then each bucket too big for 64 KB split into 16 + 16 more.
    assert!(got.stats.spill_files > 64, "{:?}", got.stats);
    assert!(got.stats.peak_memory <= 64 << 10, "pool peak over the limit: {:?}", got.stats);
    assert_eq!(concat(&got), want);
}

#[test]
fn a_single_huge_join_key_is_joined_beyond_the_budget() {
    let data = tempfile::tempdir().expect("tempdir");
    let (a, b) = (data.path().join("a.csv"), data.path().join("b.csv"));
    // `a` also holds many rows that match nothing, so that it is the larger input (the probe side)
    // and `b`, with its one huge key, is built.
    let unmatched: String = (0..60_000).map(|_| "1,0\n").collect();
    std::fs::write(&a, format!("k,v\n7,1\n7,2\n8,3\n7,4\n{unmatched}")).expect("write csv");
    let rows: String = (0..20_000).map(|i| format!("7,{i}\n")).collect();
    std::fs::write(&b, format!("k,w\n{rows}9,5\n")).expect("write csv");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { batch_size: 500, ..config(16 << 10, 2, dir.path()) });
    s.register_path("a", &a.to_string_lossy()).expect("register");
    s.register_path("b", &b.to_string_lossy()).expect("register");
    let got = s.sql("SELECT count(*), sum(b.w), count(DISTINCT a.v) FROM a JOIN b ON a.k = b.k").expect("huge key");
    assert!(got.stats.spill_files > 0, "{:?}", got.stats);
    let row = concat(&got);
    let col = |i: usize| arrow::util::display::array_value_to_string(row.column(i), 0).expect("value");
    assert_eq!((col(0), col(1), col(2)), ("60000".to_string(), (3 * (19_999 * 20_000 / 2)).to_string(), "3".to_string()));
    assert_eq!(entries(dir.path()), 0);
}

#[test]
fn a_spill_merges_the_runs_held_in_memory_into_one_file() {
    // A 1 MB budget makes runs of about 50 KB (a sixteenth of the operators' share of it): some 150
    // runs of 100-row batches here, several of which fit in memory at once. A spill merges those
    // into one file, so the files are far fewer than the runs.
    let dir = tempfile::tempdir().expect("tempdir");
    let session = Session::new(ExecConfig { batch_size: 100, ..config(1 << 20, 1, dir.path()) });
    let (got, stats) = validate(&session, "SELECT * FROM gensort(60000, seed = 5) ORDER BY key");
    let want = expected(60_000, 5);
    assert!(got.sorted(), "out of order at record {:?}", got.first_unsorted);
    assert_eq!((got.records, got.checksum), (want.records, want.checksum));
    assert!((3..=40).contains(&stats.spill_files), "{stats:?}");
    assert_eq!(entries(dir.path()), 0, "spill files left behind");
}

#[test]
fn a_window_partition_is_counted_in_the_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session = Session::new(config(1 << 30, 2, dir.path()));
    // OVER () is one partition of every row: 100,000 keys of 10 bytes buffered at once.
    let sql = "SELECT max(n), count(k) FROM (SELECT key AS k, row_number() OVER () AS n FROM gensort(100000))";
    let (_, physical) = session.plan_sql(sql).expect("plan");
    let out = riffle_engine::exec::execute(&physical, &session.config).expect("runs");
    assert!(out.stats.peak_memory >= 1_000_000, "the buffered partition is not counted: {:?}", out.stats);
}
