//! All 99 TPC-DS queries at SF 0.01 on data `riffle-tpcds` generates (tpcdsgen, dsdgen's C mode),
//! in several execution modes, compared with DuckDB's answers on that same data
//! (`../shared/peers/answers.sh`, kept in `tpcds/answers/tpcds-sf0.01`).

use std::path::Path;

use riffle_engine::ExecConfig;
use riffle_tests::answers::{check_answers, generate_checked};

#[test]
fn tpcds_sf001_generated_by_riffle_tpcds_gives_duckdbs_answers_in_every_mode() {
    let out = tempfile::tempdir().expect("tempdir");
    let rows = generate_checked(riffle_tpcds::Benchmark::Tpcds, 0.01, out.path());
    assert_eq!(rows("store_sales"), Some(120_527));
    assert_eq!(rows("date_dim"), Some(73_049));
    assert_eq!(rows("customer_demographics"), Some(1_920_800));
    let answers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpcds/answers/tpcds-sf0.01");
    for config in [
        ExecConfig { threads: 2, ..ExecConfig::default() },
        ExecConfig { threads: 1, batch_size: 1000, stream: true, test_barriers: true, ..ExecConfig::default() },
        // 1 MB: sorts, aggregates and joins over more than a few thousand rows spill.
        ExecConfig { threads: 2, batch_size: 1000, memory_limit: 1 << 20, ..ExecConfig::default() },
    ] {
        check_answers(config, out.path(), &riffle_tpcds::TPCDS_QUERIES, &answers);
    }
}
