//! Query answers compared with DuckDB's: the queries of a benchmark run on Parquet tables and
//! their results checked against answer files (CSV, as `../shared/peers/answers.sh` writes them).

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

/// Numbers agree to 1e-9 relative (sums may be added in another order), NaN equals NaN whatever its
/// sign (DuckDB prints `-nan`); text must be equal.
fn same_cell(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_nan() || y.is_nan() => x.is_nan() && y.is_nan(),
        (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        _ => a.trim_end() == b.trim_end(),
    }
}

/// Runs `queries` on the tables in `data` (`<table>.parquet` files or `<table>/` directories of parts)
/// and compares the results with DuckDB's answers in `answers` (`<query>.csv`), rows in any order.
/// Panics listing every query that failed or differed.
pub fn check_answers(config: ExecConfig, data: &Path, queries: &[(&str, &str)], answers: &Path) {
    let mut session = Session::new(config.clone());
    session.register_parquet_dir(data).expect("register the tables");
    let mut failures = Vec::new();
    for (name, sql) in queries {
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
        let same_row = |g: &Vec<String>, w: &Vec<String>| g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same_cell(a, b));
        if got.len() != want.len() {
            failures.push(format!("{name}: got {} rows, want {}", got.len(), want.len()));
        } else if let Some((g, w)) = got.iter().zip(&want).find(|(g, w)| !same_row(g, w)) {
            failures.push(format!("{name}: got row {g:?}, want {w:?}"));
        }
    }
    assert!(failures.is_empty(), "{config:?}:\n{}", failures.join("\n"));
}

/// Generates `benchmark` at `sf` into `out`, checks that every file was renamed into place (no
/// staging file left) and the queries written beside, and returns the rows per table.
pub fn generate_checked(benchmark: riffle_tpcds::Benchmark, sf: f64, out: &Path) -> impl Fn(&str) -> Option<usize> {
    let tables = riffle_tpcds::generate(benchmark, sf, out, 2, &|_| {}).expect("generate");
    let partial = std::fs::read_dir(out).expect("list").flatten().any(|e| e.path().to_string_lossy().ends_with(".partial"));
    assert!(!partial, "a staging file was left in {}", out.display());
    for (name, _) in benchmark.queries() {
        assert!(out.join(format!("queries/{name}.sql")).is_file(), "{name}.sql not written");
    }
    move |t: &str| tables.iter().find(|(name, _)| name == t).map(|(_, r)| *r)
}

