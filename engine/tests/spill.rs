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
    let s = Session::new(config(1, 1, Path::new("/nonexistent/riffle-spill")));
    let (_, physical) = s.plan_sql("SELECT * FROM gensort(10000) ORDER BY key").expect("plans");
    let err = riffle_engine::exec::execute(&physical, &s.config).err().expect("must fail").to_string();
    assert!(err.contains("cannot create a spill directory in '/nonexistent/riffle-spill'"), "{err}");
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
