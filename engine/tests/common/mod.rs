//! Helpers shared by the engine's integration tests.

use std::sync::{Arc, Mutex};

use riffle_engine::format::format_value;
use riffle_engine::Session;

/// Every row a query emits, in order, as space-separated values (a changelog's row kind first).
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
