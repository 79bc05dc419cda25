//! All 22 TPC-H queries at SF 0.01 (data and DuckDB's answers in `data/tpch-sf0.01`, made by
//! `../shared/peers/gen_tpch.sh 0.01`), in several execution modes, compared with the answers; and
//! the same queries on data `riffle-tpcds` generates.

use std::path::Path;

use riffle_engine::format::write_csv;
use riffle_engine::{ExecConfig, Session};

fn parse_csv(text: &str) -> Vec<Vec<String>> {
    // Answers and our output are simple CSV: quoted fields only where needed, no embedded newlines.
    text.lines()
        .skip(1)
        .map(|line| {
            let mut fields = Vec::new();
            let mut cur = String::new();
            let mut quoted = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '"' if quoted && chars.peek() == Some(&'"') => {
                        cur.push('"');
                        chars.next();
                    }
                    '"' => quoted = !quoted,
                    ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                    c => cur.push(c),
                }
            }
            fields.push(cur);
            fields
        })
        .collect()
}

/// Numbers agree to 1e-9 relative (sums may be added in another order); text must be equal.
fn same_cell(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a.trim_end() == b.trim_end(),
    }
}

fn check(config: ExecConfig) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/tpch-sf0.01");
    check_data(config, &dir, &dir.join("answers"));
}

/// Runs the 22 queries on the tables in `data` (`<table>.parquet` files or `<table>/` directories)
/// and compares the results with DuckDB's answers in `answers`.
fn check_data(config: ExecConfig, data: &Path, answers: &Path) {
    let mut session = Session::new(config.clone());
    for t in ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"] {
        let table_dir = data.join(t);
        let path = if table_dir.is_dir() { table_dir } else { data.join(format!("{t}.parquet")) };
        session.register_path(t, &path.to_string_lossy()).expect("register");
    }
    let mut failures = Vec::new();
    for (name, sql) in riffle_tpcds::TPCH_QUERIES {
        let result = match session.sql(sql) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let mut out = Vec::new();
        write_csv(&mut out, &result.schema, &result.batches).expect("csv");
        let mut got = parse_csv(&String::from_utf8_lossy(&out));
        let mut want = parse_csv(&std::fs::read_to_string(answers.join(format!("{name}.csv"))).expect("answer"));
        got.sort();
        want.sort();
        let same = got.len() == want.len()
            && got.iter().zip(&want).all(|(g, w)| g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same_cell(a, b)));
        if !same {
            failures.push(format!("{name}: got {} rows, want {}; first got {:?}, first want {:?}", got.len(), want.len(), got.first(), want.first()));
        }
    }
    assert!(failures.is_empty(), "{config:?}:\n{}", failures.join("\n"));
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
    let tables = riffle_tpcds::generate_tpch(0.01, out.path(), 2, &|_| {}).expect("generate");
    let rows = |t: &str| tables.iter().find(|(name, _)| name == t).map(|(_, r)| *r);
    assert_eq!(rows("lineitem"), Some(60_175));
    assert_eq!(rows("orders"), Some(15_000));
    assert!(out.path().join("queries/q22.sql").is_file());
    // No staging files left behind.
    let partial = std::fs::read_dir(out.path()).expect("list").flatten().any(|e| e.path().to_string_lossy().ends_with(".partial"));
    assert!(!partial);
    let answers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tpcds/answers/tpch-sf0.01");
    check_data(ExecConfig { threads: 2, ..ExecConfig::default() }, out.path(), &answers);
}
