//! Joins of two streams: an interval join forgets rows the watermarks passed (its state stays a
//! small part of its input), and its output watermark lets a window aggregate over the joined rows
//! emit windows before the input ends, with the batch answer.

use std::sync::{Arc, Mutex};

use riffle_engine::exec::{execute, execute_into};
use riffle_engine::format::format_value;
use riffle_engine::message::Message;
use riffle_engine::{ExecConfig, Session};

mod common;
use common::{emitted, emitted_spilling};

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
    let text = plan.display_indent(true, &|_| String::new());
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
    let sql = "SELECT window_end, count(*), sum(v) FROM TABLE(TUMBLE(TABLE j, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end";
    let mut s = s;
    s.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
    let (_, plan) = s.plan_sql(sql).expect("plans");
    assert!(plan.display_indent(true, &|_| String::new()).contains("WindowAggregate"), "{}", plan.display_indent(true, &|_| String::new()));
    let got = windows_as_they_close(&plan, &s.config);
    let mut batch = session(n, false);
    batch.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
    let mut expected = rows(&mut batch, sql);
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(got.len(), 6);
}

/// The rows of `plan` (window aggregates over a join) in order, each as space-separated values;
/// asserts some came before the last watermark (windows closed as the input went).
fn windows_as_they_close(plan: &riffle_engine::physical::PhysicalPlan, config: &ExecConfig) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    execute_into(plan, config, Arc::new(move |_, m| {
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
    got
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

/// Applies a changelog (lines `+I …`/`-D …`) in order: each `-D` must take back a row emitted before.
fn apply(changes: &[String]) -> Vec<String> {
    let mut rows: Vec<String> = Vec::new();
    for c in changes {
        let (op, row) = c.split_once(' ').unwrap_or((c, ""));
        match op {
            "+I" | "+U" => rows.push(row.to_string()),
            _ => {
                let at = rows.iter().position(|r| r == row).unwrap_or_else(|| panic!("{c} takes back a row not emitted: {changes:?}"));
                rows.swap_remove(at);
            }
        }
    }
    rows.sort();
    rows
}

#[test]
fn a_regular_outer_join_of_streams_takes_back_a_padded_row_at_its_first_match() {
    // Keys unique on each side: whichever row of a matching pair comes first is emitted padded with
    // NULLs and taken back when the other comes, in any order the two inputs interleave.
    for threads in [1, 2] {
        let config = ExecConfig { threads, batch_size: 1, stream: true, changelog: true, ..ExecConfig::default() };
        let mut s = Session::new(config);
        s.sql("CREATE TABLE l (k INT, v VARCHAR)").expect("create");
        s.sql("INSERT INTO l VALUES (1, 'a'), (2, 'b'), (3, 'c'), (NULL, 'd')").expect("insert");
        s.sql("CREATE TABLE r (k INT, w VARCHAR)").expect("create");
        s.sql("INSERT INTO r VALUES (3, 'x'), (1, 'y'), (4, 'z'), (NULL, 'n')").expect("insert");
        let sql = "SELECT l.k, v, r.k, w FROM l FULL JOIN r ON l.k = r.k";
        let changes = emitted(&mut s, sql);
        let mut sorted = changes.clone();
        sorted.sort();
        let padded_then_taken_back = |k: &str, v: &str, w: &str| -> [String; 2] {
            // One of the pair's rows came first: its padded row, emitted and then taken back.
            let left = format!("{k} {v} NULL NULL");
            let right = format!("NULL NULL {k} {w}");
            if changes.contains(&format!("+I {left}")) { [format!("+I {left}"), format!("-D {left}")] } else { [format!("+I {right}"), format!("-D {right}")] }
        };
        let mut expected: Vec<String> = ["+I 1 a 1 y", "+I 3 c 3 x", "+I 2 b NULL NULL", "+I NULL d NULL NULL", "+I NULL NULL 4 z", "+I NULL NULL NULL n"]
            .map(String::from)
            .to_vec();
        expected.extend(padded_then_taken_back("1", "a", "y"));
        expected.extend(padded_then_taken_back("3", "c", "x"));
        expected.sort();
        assert_eq!(sorted, expected, "{threads} threads: {changes:?}");
        // Applied in order, the changelog is the batch answer.
        let mut batch = Session::new(ExecConfig { threads, ..ExecConfig::default() });
        batch.sql("CREATE TABLE l (k INT, v VARCHAR)").expect("create");
        batch.sql("INSERT INTO l VALUES (1, 'a'), (2, 'b'), (3, 'c'), (NULL, 'd')").expect("insert");
        batch.sql("CREATE TABLE r (k INT, w VARCHAR)").expect("create");
        batch.sql("INSERT INTO r VALUES (3, 'x'), (1, 'y'), (4, 'z'), (NULL, 'n')").expect("insert");
        let mut want = emitted(&mut batch, sql);
        want.sort();
        assert_eq!(apply(&changes), want);
    }
}

#[test]
fn rows_matching_long_runs_of_stored_rows_meet_the_condition_as_in_batch() {
    // Each key's stored rows come in runs of a whole batch (as Nexmark q5 stores each window's counts
    // under the window's bounds): a row of the other side matching them is tested against the
    // condition run by run. Every answer is the batch one, with NULLs on both sides of the condition
    // and keys without match, inner and outer, whichever side arrives first.
    let setup = |s: &mut Session| {
        s.sql("CREATE TABLE counts (k INT, num INT)").expect("create");
        let counts: Vec<String> =
            (0..3000).map(|i| if i % 97 == 0 { format!("({}, NULL)", i / 500) } else { format!("({}, {})", i / 500, i % 500) }).collect();
        s.sql(&format!("INSERT INTO counts VALUES {}", counts.join(", "))).expect("insert");
        s.sql("CREATE TABLE maxima (k INT, maxn INT)").expect("create");
        s.sql("INSERT INTO maxima VALUES (0, 495), (1, 250), (2, NULL), (3, 499), (3, 0), (9, 1), (NULL, 5)").expect("insert");
    };
    for sql in [
        "SELECT c.k, num, maxn FROM counts c JOIN maxima m ON c.k = m.k AND num >= maxn",
        "SELECT c.k, num, maxn FROM maxima m JOIN counts c ON c.k = m.k AND num >= maxn",
        "SELECT m.k, num, maxn FROM maxima m LEFT JOIN counts c ON c.k = m.k AND num >= maxn + 490",
    ] {
        let mut batch = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
        setup(&mut batch);
        let mut want = emitted(&mut batch, sql);
        want.sort();
        assert!(want.len() > 10, "{sql}: {} rows", want.len());
        for threads in [1, 2] {
            let config = ExecConfig { threads, batch_size: 500, stream: true, changelog: true, ..ExecConfig::default() };
            let mut s = Session::new(config);
            setup(&mut s);
            let (_, plan) = s.plan_sql(sql).expect("plans");
            assert!(plan.display_indent(true, &|_| String::new()).contains("StreamJoin"), "{sql}: not a stream join");
            let changes = emitted(&mut s, sql);
            // The outer join's output is a changelog (rows padded, then taken back at a match).
            let got = if sql.contains("LEFT") {
                apply(&changes)
            } else {
                let mut rows = changes;
                rows.sort();
                rows
            };
            assert_eq!(got, want, "{sql}, {threads} threads");
        }
    }
}

/// Tables `l` and `r` of `n` rows each with a string payload, keys `0..keys` (and a NULL key now and
/// then), for joins of two streams that outgrow a small budget.
fn wide_tables(s: &mut Session, n: usize, keys: usize) {
    for (t, col) in [("l", "v"), ("r", "w")] {
        s.sql(&format!("CREATE TABLE {t} (k INT, {col} VARCHAR)")).expect("create");
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let k = if i % 101 == 0 { "NULL".to_string() } else { ((i * 7 + t.len()) % keys).to_string() };
                format!("({k}, '{t}-{i}-{}')", "x".repeat(40))
            })
            .collect();
        s.sql(&format!("INSERT INTO {t} VALUES {}", rows.join(", "))).expect("insert");
    }
}

#[test]
fn regular_stream_joins_over_their_memory_share_spill_buckets_of_keys_and_answer_as_in_batch() {
    // 4,000 rows a side of ~60 bytes, each key's rows joined with the other side's: a few hundred KB
    // stored, in a budget of 64 KB for operators (a fifth of it left outside): the join writes
    // buckets of keys to disk, holds the rows of their keys as they come and joins them when the
    // bucket is loaded again; applied, its changes are the batch answer. Forced (no memory at all
    // for spillable state), every batch spills.
    let sqls = [
        "SELECT l.k, v, w FROM l JOIN r ON l.k = r.k AND v < w",
        "SELECT l.k, v, r.k, w FROM l FULL JOIN r ON l.k = r.k AND substr(v, 3, 1) = substr(w, 3, 1)",
        "SELECT l.k, v, w FROM l LEFT JOIN r ON l.k = r.k",
    ];
    for sql in sqls {
        let mut batch = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
        wide_tables(&mut batch, 4_000, 500);
        let mut want = emitted(&mut batch, sql);
        want.sort();
        assert!(want.len() > 4_000, "{sql}: {} rows", want.len());
        for (threads, memory_limit, force_spill) in [(2, 80_000, false), (1, 80_000, false), (2, usize::MAX, true)] {
            let config = ExecConfig { threads, batch_size: 300, stream: true, changelog: true, memory_limit, force_spill, ..ExecConfig::default() };
            let mut s = Session::new(config);
            wide_tables(&mut s, 4_000, 500);
            let (_, plan) = s.plan_sql(sql).expect("plans");
            assert!(plan.display_indent(true, &|_| String::new()).contains("StreamJoin"), "{sql}: not a stream join");
            // The only operator here that spills.
            let (changes, spilled) = emitted_spilling(&mut s, sql);
            assert!(spilled > 0, "{sql}, {threads} threads, forced {force_spill}: nothing spilled");
            let got = if sql.contains("JOIN r ON l.k = r.k AND v") {
                let mut rows = changes;
                rows.sort();
                rows
            } else {
                apply(&changes)
            };
            assert_eq!(got.len(), want.len(), "{sql}, {threads} threads, forced {force_spill}");
            assert!(got == want, "{sql}, {threads} threads, forced {force_spill}: answers differ");
        }
    }
}

#[test]
fn an_interval_join_that_spills_still_closes_windows_before_the_input_ends() {
    // The join of `windows_over_an_interval_join_close_before_the_input_ends`, every stored row
    // written to disk as it comes (forced): rows held for buckets on disk hold the join's output
    // watermark back (its pairs are not late), rows the watermarks passed leave the disk unread, and
    // windows still close as the input goes.
    let n = 3_000;
    // Rounds: how rows interleave varies, and a lost or late pair shows in some.
    for round in 0..4 {
        let config = ExecConfig { threads: 1 + round % 2, batch_size: 100, stream: true, changelog: true, test_barriers: true, force_spill: true, ..ExecConfig::default() };
        let mut s = session(n, true);
        s.config = config;
        // Short windows: a pair joined late would be late for its window.
        let sql = "SELECT window_end, count(*), sum(v) FROM TABLE(TUMBLE(TABLE j, DESCRIPTOR(ts), INTERVAL '200' MILLISECOND)) GROUP BY window_start, window_end";
        s.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
        let (_, plan) = s.plan_sql(sql).expect("plans");
        let text = plan.display_indent(true, &|_| String::new());
        let join = text.lines().position(|l| l.trim_start().starts_with("IntervalJoin")).unwrap_or_else(|| panic!("no interval join:\n{text}"));
        let out = execute(&plan, &s.config).expect("runs");
        assert!(out.metrics[join].spilled_bytes.load(std::sync::atomic::Ordering::Relaxed) > 0, "nothing spilled");
            let got = windows_as_they_close(&plan, &s.config);
        let mut batch = session(n, false);
        batch.sql(&format!("CREATE VIEW j AS {INTERVAL_JOIN}")).expect("view");
        let mut expected = rows(&mut batch, sql);
        expected.sort();
        assert_eq!(got, expected, "round {round}: a window lost pairs (or a late one was dropped)");
    }
}
