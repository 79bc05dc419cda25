//! Property test: the hash join (every kind) gives what a nested-loop reference gives.

use std::sync::Arc;

use arrow::array::{Array, Int32Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use proptest::prelude::*;
use riffle_engine::catalog::{CatalogEntry, TableSource};
use riffle_engine::{ExecConfig, Session};

type Row = (Option<i32>, i32);

fn table(rows: &[Row]) -> Arc<TableSource> {
    let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int32, true), Field::new("v", DataType::Int32, false)]));
    let k = Int32Array::from(rows.iter().map(|r| r.0).collect::<Vec<_>>());
    let v = Int32Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>());
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(k), Arc::new(v)]).expect("batch");
    Arc::new(TableSource::memory(schema, vec![batch]).expect("table"))
}

fn fmt(v: Option<i32>) -> String {
    v.map_or("NULL".into(), |x| x.to_string())
}

fn run(session: &mut Session, sql: &str) -> Vec<String> {
    let r = session.sql(sql).expect("query runs");
    let mut rows = Vec::new();
    for b in &r.batches {
        for i in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .map(|c| {
                    let c = c.as_any().downcast_ref::<Int32Array>().expect("int column");
                    fmt(c.is_valid(i).then(|| c.value(i)))
                })
                .collect();
            rows.push(cells.join(","));
        }
    }
    rows.sort();
    rows
}

/// The nested-loop answer for `kind` with condition l.k = r.k (NULL never matches).
fn reference(kind: &str, l: &[Row], r: &[Row]) -> Vec<String> {
    let eq = |a: &Row, b: &Row| a.0.is_some() && a.0 == b.0;
    let mut out = Vec::new();
    for a in l {
        let matches: Vec<&Row> = r.iter().filter(|b| eq(a, b)).collect();
        match kind {
            "SEMI" => {
                if !matches.is_empty() {
                    out.push(format!("{},{}", fmt(a.0), a.1));
                }
            }
            "ANTI" => {
                if matches.is_empty() {
                    out.push(format!("{},{}", fmt(a.0), a.1));
                }
            }
            _ => {
                for b in &matches {
                    out.push(format!("{},{},{},{}", fmt(a.0), a.1, fmt(b.0), b.1));
                }
                if matches.is_empty() && (kind == "LEFT" || kind == "FULL") {
                    out.push(format!("{},{},NULL,NULL", fmt(a.0), a.1));
                }
            }
        }
    }
    if kind == "RIGHT" || kind == "FULL" {
        for b in r {
            if !l.iter().any(|a| eq(a, b)) {
                out.push(format!("NULL,NULL,{},{}", fmt(b.0), b.1));
            }
        }
    }
    out.sort();
    out
}

/// `l.k IN (SELECT k FROM r)` per row: 1, 0, or NULL where SQL says unknown.
fn reference_in(l: &[Row], r: &[Row]) -> Vec<String> {
    let r_has_null = r.iter().any(|b| b.0.is_none());
    let mut out: Vec<String> = l
        .iter()
        .map(|a| {
            let found = a.0.is_some() && r.iter().any(|b| b.0 == a.0);
            let mark = if found {
                Some(1)
            } else if !r.is_empty() && (a.0.is_none() || r_has_null) {
                None
            } else {
                Some(0)
            };
            format!("{},{},{}", fmt(a.0), a.1, fmt(mark))
        })
        .collect();
    out.sort();
    out
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    prop::collection::vec((prop::option::weighted(0.8, 0..6i32), -50..50i32), 0..25)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn hash_join_matches_nested_loop(l in rows(), r in rows(), threads in 1usize..3, batch_size in prop::sample::select(vec![1usize, 3, 8192])) {
        let mut s = Session::new(ExecConfig { threads, batch_size, stream: false, ..ExecConfig::default() });
        s.catalog.register("l", CatalogEntry::Table(table(&l)));
        s.catalog.register("r", CatalogEntry::Table(table(&r)));
        for kind in ["INNER", "LEFT", "RIGHT", "FULL"] {
            let got = run(&mut s, &format!("SELECT l.k, l.v, r.k, r.v FROM l {kind} JOIN r ON l.k = r.k"));
            prop_assert_eq!(got, reference(kind, &l, &r), "{} join", kind);
        }
        let semi = run(&mut s, "SELECT k, v FROM l WHERE EXISTS (SELECT 1 FROM r WHERE r.k = l.k)");
        prop_assert_eq!(semi, reference("SEMI", &l, &r));
        let anti = run(&mut s, "SELECT k, v FROM l WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.k = l.k)");
        prop_assert_eq!(anti, reference("ANTI", &l, &r));
        // Mark joins: IN as a value (three-valued), EXISTS under OR.
        let mark = run(&mut s, "SELECT k, v, CAST(CASE WHEN k IN (SELECT k FROM r) THEN 1 WHEN NOT (k IN (SELECT k FROM r)) THEN 0 END AS INTEGER) FROM l");
        prop_assert_eq!(mark, reference_in(&l, &r));
        let or = run(&mut s, "SELECT k, v FROM l WHERE v > 40 OR EXISTS (SELECT 1 FROM r WHERE r.k = l.k)");
        let mut want: Vec<String> = l.iter().filter(|a| a.1 > 40 || r.iter().any(|b| a.0.is_some() && a.0 == b.0)).map(|a| format!("{},{}", fmt(a.0), a.1)).collect();
        want.sort();
        prop_assert_eq!(or, want);
        // A non-equi condition takes the nested-loop path; it must agree with the hash join.
        let nlj = run(&mut s, "SELECT l.k, l.v, r.k, r.v FROM l JOIN r ON l.k <= r.k AND l.k >= r.k");
        prop_assert_eq!(nlj, reference("INNER", &l, &r));
    }
}
