//! Joins of two streams: an interval join forgets rows the watermarks passed (its state stays a
//! small part of its input), and its output watermark lets a window aggregate over the joined rows
//! emit windows before the input ends, with the batch answer.

use std::sync::{Arc, Mutex};

use riffle_engine::exec::{execute, execute_into};
use riffle_engine::format::format_value;
use riffle_engine::message::Message;
use riffle_engine::{ExecConfig, Session};

/// Tables `a` and `b` of `n` rows each, 10 ms apart in event time, keys 0..10.
fn session(n: usize, stream: bool) -> Session {
    // Barriers every other batch keep the two inputs abreast (the join's output aligns them): state is
    // bounded by the interval only while neither input runs ahead of the other; an input that does is
    // held in state until the other's watermark catches up (no watermark alignment of sources yet).
    let config = ExecConfig { threads: 2, batch_size: 100, stream, changelog: stream, test_barriers: stream, ..ExecConfig::default() };
    let mut s = Session::new(config);
    for t in ["a", "b"] {
        s.sql(&format!("CREATE TABLE {t} (k INT, v INT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")).expect("create");
        let rows: Vec<String> = (0..n)
            .map(|i| format!("({}, {i}, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{}' MILLISECOND)", i % 10, i * 10))
            .collect();
        s.sql(&format!("INSERT INTO {t} VALUES {}", rows.join(", "))).expect("insert");
    }
    s
}

const INTERVAL_JOIN: &str = "SELECT a.k, a.ts, b.v FROM a JOIN b ON a.k = b.k AND a.ts BETWEEN b.ts - INTERVAL '1' SECOND AND b.ts + INTERVAL '1' SECOND";

fn rows(s: &mut Session, sql: &str) -> Vec<String> {
    let r = s.sql(sql).expect("runs");
    let mut out = Vec::new();
    for b in &r.batches {
        for row in 0..b.num_rows() {
            out.push(b.columns().iter().map(|c| format_value(c, row).expect("formats").unwrap_or_default()).collect::<Vec<_>>().join(" "));
        }
    }
    out
}

#[test]
fn an_interval_join_keeps_only_rows_that_can_still_match() {
    let n = 20_000;
    let s = session(n, true);
    let (_, plan) = s.plan_sql(&format!("SELECT count(*) FROM ({INTERVAL_JOIN})")).expect("plans");
    let text = plan.display_indent(&|_| String::new());
    let join = text.lines().position(|l| l.trim_start().starts_with("IntervalJoin")).unwrap_or_else(|| panic!("no interval join:\n{text}"));
    let out = execute(&plan, &s.config).expect("runs");
    let peak = out.metrics[join].peak_bytes.load(std::sync::atomic::Ordering::Relaxed);
    // Each side's rows: 12 bytes (k, v, ts) plus index entries, some 30 bytes a row; all of both
    // sides would be 2 × 20 000 × 30 = 1.2 MB. Within the interval (1 s = 100 rows a side, plus the
    // watermark delay and a batch or two) far fewer stay: under an eighth. (The index is counted by
    // its capacity, with the entries of dropped rows until it sweeps them: ~116 KB; when it was
    // estimated at 16 bytes a live row, ~96 KB.)
    assert!(peak > 0 && peak < 150_000, "peak state {peak} bytes");
    // Each row pairs with the other side's rows of its key within ±1 s: 21 of them away from the ends.
    let count = out.batches[0].column(0).as_any().downcast_ref::<arrow::array::Int64Array>().map(|c| c.value(0));
    let mut batch = session(n, false);
    let expected = rows(&mut batch, &format!("SELECT count(*) FROM ({INTERVAL_JOIN})"));
    assert_eq!(count.map(|c| c.to_string()), expected.first().cloned());
}

#[test]
fn windows_over_an_interval_join_close_before_the_input_ends() {
    let n = 3_000;
    let s = session(n, true);
    let sql = format!(
        "SELECT window_end, count(*), sum(v) FROM TABLE(TUMBLE(TABLE j, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end"
    );
    let mut s = s;
    s.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
    let (_, plan) = s.plan_sql(&sql).expect("plans");
    assert!(plan.display_indent(&|_| String::new()).contains("WindowAggregate"), "{}", plan.display_indent(&|_| String::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    execute_into(&plan, &s.config, Arc::new(move |_, m| {
        sink.lock().expect("lock").push(m);
        Ok(())
    }))
    .expect("runs");
    let msgs = seen.lock().expect("lock").clone();
    // Windows leave as the join's watermark passes them: some before the last watermark.
    let last_watermark = msgs.iter().rposition(|m| matches!(m, Message::Watermark(_))).expect("watermarks reach the root");
    let first_rows = msgs.iter().position(|m| matches!(m, Message::Batch(b) if b.num_rows() > 0)).expect("rows");
    assert!(first_rows < last_watermark, "every window came at the end");
    let mut got: Vec<String> = msgs
        .iter()
        .filter_map(|m| if let Message::Batch(b) = m { Some(b.clone()) } else { None })
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|r| b.columns().iter().map(|c| format_value(c, r).expect("formats").unwrap_or_default()).collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
        })
        .collect();
    got.sort();
    let mut batch = session(n, false);
    batch.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
    let mut expected = rows(&mut batch, &sql);
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 6);
}

#[test]
fn a_state_ttl_forgets_the_rows_a_regular_stream_join_stored_that_long_ago() {
    // Bids made on the wall clock, 2,000 a second for half a second, joined with themselves by auction:
    // with a 1 ms TTL a bid meets only the bids stored in the millisecond before it (and itself).
    let pairs = |ttl: Option<&str>| -> usize {
        let config = ExecConfig { threads: 2, stream: true, changelog: true, ..ExecConfig::default() };
        let mut s = Session::new(config);
        s.sql(
            "CREATE TABLE bid (auction BIGINT, price BIGINT) WITH ('connector' = 'nexmark', 'table' = 'bid', \
             'events.num' = '1000', 'first-event.rate' = '2000', 'rate-limited' = 'true')",
        )
        .expect("create");
        if let Some(ttl) = ttl {
            s.sql(&format!("SET 'table.exec.state.ttl' = '{ttl}'")).expect("set");
        }
        let r = s.sql("SELECT a.auction FROM bid a JOIN bid b ON a.auction = b.auction").expect("join");
        r.batches.iter().map(|b| b.num_rows()).sum()
    };
    let all = pairs(None);
    assert!(all > 2_000, "{all} pairs without a TTL");
    assert_eq!(pairs(Some("1 h")), all, "a TTL longer than the job forgets nothing");
    assert_eq!(pairs(Some("0")), all, "a TTL of 0 is none (as in Flink)");
    let short = pairs(Some("1 ms"));
    assert!(short < all / 2, "with a 1 ms TTL {short} of {all} pairs");
}
