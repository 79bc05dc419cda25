//! Helpers shared by the engine's integration tests.

use std::sync::{Arc, Mutex};

use riffle_engine::format::format_value;
use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use riffle_engine::Session;

/// Every row a query emits, in order, as space-separated values (a changelog's row kind first).
#[allow(dead_code)]
pub fn emitted(s: &mut Session, sql: &str) -> Vec<String> {
    emitted_spilling(s, sql).0
}

/// `emitted`, and the bytes the query spilled.
#[allow(dead_code)]
pub fn emitted_spilling(s: &mut Session, sql: &str) -> (Vec<String>, u64) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let results = s
        .execute_streaming(
            sql,
            Arc::new(move |_, batch| {
                let mut lines = sink.lock().expect("lock");
                for row in 0..batch.num_rows() {
                    let cells: Vec<String> = batch
                        .columns()
                        .iter()
                        .map(|c| format_value(c, row).map(|v| v.unwrap_or_else(|| "NULL".into())))
                        .collect::<riffle_engine::Result<_>>()?;
                    lines.push(cells.join(" "));
                }
                Ok(())
            }),
        )
        .expect("runs");
    let spilled = results.iter().map(|r| r.stats.spilled_bytes).sum();
    let mut out = lines.lock().expect("lock").clone();
    // A batch query's rows come back as its result.
    for b in results.iter().flat_map(|r| &r.batches) {
        for row in 0..b.num_rows() {
            out.push(b.columns().iter().map(|c| format_value(c, row).expect("formats").unwrap_or_else(|| "NULL".into())).collect::<Vec<_>>().join(" "));
        }
    }
    (out, spilled)
}

/// A Parquet table of `rows` rows whose columns are given by name and value of row `i`.
#[allow(dead_code)]
pub fn write_table(dir: &std::path::Path, name: &str, rows: i64, columns: &[(&str, &dyn Fn(i64) -> i64)]) -> String {
    let schema = Arc::new(Schema::new(columns.iter().map(|(n, _)| Field::new(*n, DataType::Int64, false)).collect::<Vec<_>>()));
    let arrays = columns.iter().map(|(_, f)| Arc::new(Int64Array::from((0..rows).map(f).collect::<Vec<_>>())) as _).collect();
    let batch = RecordBatch::try_new(schema.clone(), arrays).expect("batch");
    let path = dir.join(format!("{name}.parquet"));
    let mut w = ArrowWriter::try_new(std::fs::File::create(&path).expect("create"), schema, None).expect("writer");
    w.write(&batch).expect("write");
    w.close().expect("close");
    path.display().to_string()
}

#[allow(dead_code)]
pub fn text(s: &mut Session, sql: &str) -> String {
    let r = s.sql(sql).expect("runs");
    riffle_engine::format::format_value(r.batches[0].column(0), 0).expect("format").unwrap_or_default()
}

/// The physical plan's part of EXPLAIN.
#[allow(dead_code)]
pub fn physical(s: &mut Session, q: &str) -> String {
    let plan = text(s, &format!("EXPLAIN {q}"));
    plan.split("Physical plan:").nth(1).unwrap_or_default().to_string()
}

/// Every row of a query's answer, its values space-separated (NULL as `NULL`).
#[allow(dead_code)]
pub fn rows(s: &mut Session, q: &str) -> Vec<String> {
    let r = s.sql(q).expect("runs");
    let mut out = Vec::new();
    for b in &r.batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> =
                b.columns().iter().map(|c| format_value(c, row).expect("format").unwrap_or_else(|| "NULL".into())).collect();
            out.push(cells.join(" "));
        }
    }
    out
}
