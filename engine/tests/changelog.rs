//! Updating GROUP BYs run as a stream: the exact changelog each input row causes (+I, -U/+U, -D),
//! retractions taken back by an aggregate over another, filters over a changelog, and refusals of
//! what needs final rows over a table without end.

use riffle_engine::format::format_value;
use riffle_engine::{ExecConfig, Session};

mod common;
use common::emitted;

/// A session whose GROUP BYs update, one row per batch, with table `t(k, v)` holding `rows`.
fn session(rows: &[(&str, i64)]) -> Session {
    let mut s = Session::new(ExecConfig { threads: 1, batch_size: 1, stream: true, changelog: true, ..ExecConfig::default() });
    s.sql("CREATE TABLE t (k VARCHAR, v BIGINT)").expect("create");
    if !rows.is_empty() {
        let values: Vec<String> = rows.iter().map(|(k, v)| format!("('{k}', {v})")).collect();
        s.sql(&format!("INSERT INTO t VALUES {}", values.join(", "))).expect("insert");
    }
    s
}

#[test]
fn each_row_updates_its_group() {
    let mut s = session(&[("a", 1), ("b", 2), ("a", 3), ("b", -2)]);
    assert_eq!(
        emitted(&mut s, "SELECT k, count(*), sum(v) FROM t GROUP BY k"),
        ["+I a 1 1", "+I b 1 2", "-U a 1 1", "+U a 2 4", "-U b 1 2", "+U b 2 0"]
    );
}

#[test]
fn an_aggregate_over_an_updating_one_takes_its_retractions_back() {
    let mut s = session(&[("a", 0), ("b", 0), ("a", 0)]);
    // The inner update of a (1 → 2) is one batch of -U and +U: the outer groups change together.
    assert_eq!(
        emitted(&mut s, "SELECT c, count(*) FROM (SELECT k, count(*) AS c FROM t GROUP BY k) GROUP BY c"),
        ["+I 1 1", "-U 1 1", "+U 1 2", "-U 1 2", "+U 1 1", "+I 2 1"]
    );
    let mut s = session(&[("a", 0), ("a", 0)]);
    // Group c = 1 loses its only row: it is deleted.
    assert_eq!(
        emitted(&mut s, "SELECT c, count(*) FROM (SELECT k, count(*) AS c FROM t GROUP BY k) GROUP BY c"),
        ["+I 1 1", "-D 1 1", "+I 2 1"]
    );
}

#[test]
fn min_and_max_recover_when_their_extreme_is_taken_back() {
    // Counts per key go a:1, b:1, b:2, b:3, a:2; the min and max over them move both ways. The second
    // row changes no value (b:1 beside a:1), so it emits nothing.
    let mut s = session(&[("a", 0), ("b", 0), ("b", 0), ("b", 0), ("a", 0)]);
    assert_eq!(
        emitted(&mut s, "SELECT min(c), max(c), count(DISTINCT c) FROM (SELECT k, count(*) AS c FROM t GROUP BY k)"),
        ["+I 1 1 1", "-U 1 1 1", "+U 1 2 2", "-U 1 2 2", "+U 1 3 2", "-U 1 3 2", "+U 2 3 2"]
    );
}

#[test]
fn having_filters_each_changelog_row() {
    let mut s = session(&[("a", 0), ("a", 0), ("a", 0)]);
    assert_eq!(
        emitted(&mut s, "SELECT k, count(*) FROM t GROUP BY k HAVING count(*) > 1"),
        ["+U a 2", "-U a 2", "+U a 3"]
    );
}

#[test]
fn a_global_aggregate_over_no_rows_has_its_row_at_the_end() {
    let mut s = session(&[]);
    assert_eq!(emitted(&mut s, "SELECT count(*), sum(v) FROM t"), ["+I 0 NULL"]);
    let mut s = session(&[("a", 5)]);
    assert_eq!(emitted(&mut s, "SELECT count(*), sum(v) FROM t"), ["+I 1 5"]);
}

#[test]
fn final_answers_apply_the_changelog() {
    // Run to its end as a query, the changelog is applied: the batch answer.
    let mut s = session(&[("a", 1), ("b", 2), ("a", 3), ("b", -2)]);
    let r = s.sql("SELECT k, count(*), sum(v) FROM t GROUP BY k ORDER BY k").expect("runs");
    let mut rows = Vec::new();
    for b in &r.batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b.columns().iter().map(|c| format_value(c, row).expect("formats").unwrap_or_default()).collect();
            rows.push(cells.join(" "));
        }
    }
    assert_eq!(rows, ["a 2 4", "b 2 0"]);
}

/// The rows of `sql`'s result, as space-separated values.
fn rows(s: &mut Session, sql: &str) -> Vec<String> {
    let r = s.sql(sql).expect("runs");
    let mut rows = Vec::new();
    for b in &r.batches {
        for row in 0..b.num_rows() {
            let cells: Vec<String> = b.columns().iter().map(|c| format_value(c, row).expect("formats").unwrap_or_else(|| "NULL".into())).collect();
            rows.push(cells.join(" "));
        }
    }
    rows
}

#[test]
fn a_debezium_json_table_holds_the_changes_and_reads_back_as_their_result() {
    let dir = tempfile::tempdir().expect("temp dir");
    let table = format!(
        "CREATE TABLE out (k VARCHAR, n BIGINT, total BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'debezium-json')",
        dir.path().display()
    );
    let mut s = session(&[("a", 1), ("b", 2), ("a", 3), ("b", -2)]);
    s.sql(&table).expect("create");
    s.sql("INSERT INTO out SELECT k, count(*), sum(v) FROM t GROUP BY k").expect("insert");
    // As Flink writes them: an update's old row is a delete ("d"), its new row an insert ("c").
    let file = std::fs::read_dir(dir.path()).expect("dir").flatten().next().expect("a file").path();
    let text = std::fs::read_to_string(file).expect("read");
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [
            r#"{"before":null,"after":{"k":"a","n":1,"total":1},"op":"c"}"#,
            r#"{"before":null,"after":{"k":"b","n":1,"total":2},"op":"c"}"#,
            r#"{"before":{"k":"a","n":1,"total":1},"after":null,"op":"d"}"#,
            r#"{"before":null,"after":{"k":"a","n":2,"total":4},"op":"c"}"#,
            r#"{"before":{"k":"b","n":1,"total":2},"after":null,"op":"d"}"#,
            r#"{"before":null,"after":{"k":"b","n":2,"total":0},"op":"c"}"#,
        ]
    );
    // Read as a table, the changes are applied (a batch query, or a stream's final answer)...
    let mut batch = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    batch.sql(&table).expect("create");
    assert_eq!(rows(&mut batch, "SELECT * FROM out ORDER BY k"), ["a 2 4", "b 2 0"]);
    assert_eq!(rows(&mut batch, "SELECT sum(n) FROM out WHERE total > 0"), ["2"]);
    // ... and read as a stream they are a changelog, which an aggregate takes back as it goes (the
    // last change, b's new row with total 0, leaves the sum as it was: nothing).
    assert_eq!(emitted(&mut s, "SELECT k, n FROM out WHERE k = 'a'"), ["+I a 1", "-D a 1", "+I a 2"]);
    assert_eq!(emitted(&mut s, "SELECT sum(total) FROM out"), ["+I 1", "-U 1", "+U 3", "-U 3", "+U 2", "-U 2", "+U 6", "-U 6", "+U 4"]);
    // Appended rows (a batch INSERT, a COPY) are inserts.
    batch.sql("INSERT INTO out VALUES ('c', 1, 9)").expect("insert");
    assert_eq!(rows(&mut batch, "SELECT k, total FROM out ORDER BY k"), ["a 4", "b 0", "c 9"]);
    let copy = tempfile::tempdir().expect("temp dir");
    let path = copy.path().join("changes.json");
    batch.sql(&format!("COPY (SELECT k, n FROM out WHERE k = 'c') TO '{}' (FORMAT 'debezium-json')", path.display())).expect("copy");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "{\"before\":null,\"after\":{\"k\":\"c\",\"n\":1},\"op\":\"c\"}\n");
}

#[test]
fn what_needs_final_rows_of_an_endless_update_is_refused() {
    let mut s = Session::new(ExecConfig { threads: 1, stream: true, ..ExecConfig::default() });
    s.sql("CREATE TABLE bid (auction BIGINT, price BIGINT) WITH ('connector' = 'nexmark', 'table' = 'bid')").expect("create");
    for (sql, what) in [
        ("SELECT auction, count(*) FROM bid GROUP BY auction ORDER BY auction", "ORDER BY"),
        ("SELECT * FROM (SELECT auction, count(*) FROM bid GROUP BY auction) LIMIT 3", "LIMIT"),
    ] {
        let err = s.sql(sql).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("{what} over an updating result")), "{sql}: {err}");
        assert!(err.contains("event-time window"), "{err}");
    }
}

#[test]
fn a_state_ttl_forgets_groups_unchanged_that_long() {
    // Bids made on the wall clock over half a second, counted per auction: with a 1 ms TTL an
    // auction's group is forgotten between its bids and its next bid inserts it anew (+I), as Flink's
    // state TTL does; without one (or with one longer than the job) each auction is inserted once.
    let inserts = |ttl: Option<&str>| -> (usize, usize) {
        let mut s = Session::new(ExecConfig { threads: 1, stream: true, changelog: true, ..ExecConfig::default() });
        s.sql(
            "CREATE TABLE bid (auction BIGINT) WITH ('connector' = 'nexmark', 'table' = 'bid', \
             'events.num' = '1000', 'first-event.rate' = '2000', 'rate-limited' = 'true')",
        )
        .expect("create");
        if let Some(ttl) = ttl {
            s.sql(&format!("SET 'table.exec.state.ttl' = '{ttl}'")).expect("set");
        }
        let log = emitted(&mut s, "SELECT auction, count(*) FROM bid GROUP BY auction");
        let inserts: Vec<&String> = log.iter().filter(|l| l.starts_with("+I ")).collect();
        let auctions: std::collections::HashSet<&str> = inserts.iter().filter_map(|l| l.split(' ').nth(1)).collect();
        (inserts.len(), auctions.len())
    };
    let (all, auctions) = inserts(None);
    assert_eq!(all, auctions, "one +I per auction without a TTL");
    assert_eq!(inserts(Some("1 h")), (all, auctions));
    let (again, _) = inserts(Some("1 ms"));
    assert!(again > auctions, "with a 1 ms TTL, {again} inserts for {auctions} auctions");
}
