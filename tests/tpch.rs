//! All 22 TPC-H queries at SF 0.01 (data and DuckDB's answers in `data/tpch-sf0.01`, made by
//! `../shared/peers/gen_tpch.sh 0.01`), in several execution modes, compared with the answers; and
//! the same queries on data `riffle-tpcds` generates.

use std::path::Path;

use riffle_engine::ExecConfig;
use riffle_tests::answers::{check_answers, generate_checked};

fn check(config: ExecConfig) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tpch-sf0.01");
    check_answers(config, &dir, &riffle_tpcds::TPCH_QUERIES, &dir.join("answers"));
}

#[test]
fn tpch_sf001_two_threads() {
    check(ExecConfig { threads: 2, batch_size: 8192, stream: false, ..ExecConfig::default() });
}

#[test]
fn tpch_sf001_one_thread_small_batches_as_stream() {
    check(ExecConfig { threads: 1, batch_size: 1000, stream: true, test_barriers: true, ..ExecConfig::default() });
}

#[test]
fn tpch_sf001_two_threads_sorts_spilling() {
    // 256 KB: every sort over more than a few thousand rows spills and merges from disk.
    check(ExecConfig { threads: 2, batch_size: 1000, memory_limit: 256 << 10, ..ExecConfig::default() });
}

#[test]
fn tpch_sf001_generated_by_riffle_tpcds_gives_duckdbs_answers() {
    // Our data's text columns (comments, addresses) differ from DuckDB's dbgen, so its answers are
    // DuckDB's on our data (`../shared/peers/answers.sh`), kept in `tpcds/answers/tpch-sf0.01`.
    let out = tempfile::tempdir().expect("tempdir");
    let rows = generate_checked(riffle_tpcds::Benchmark::Tpch, 0.01, out.path());
    assert_eq!(rows("lineitem"), Some(60_175));
    assert_eq!(rows("orders"), Some(15_000));
    let answers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpcds/answers/tpch-sf0.01");
    check_answers(ExecConfig { threads: 2, ..ExecConfig::default() }, out.path(), &riffle_tpcds::TPCH_QUERIES, &answers);
}
