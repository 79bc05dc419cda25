//! A GROUP BY with many groups is merged in parallel, bucket by bucket, by the partitions reading
//! its output (`exec/aggregate.rs`): every group comes out once, whole.

mod common;

use common::rows;
use riffle_engine::{ExecConfig, Session};

#[test]
fn many_groups_merged_by_bucket_come_out_once_each() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 100 000 keys, each in two rows far apart (so both partitions see most keys).
    let t = common::write_table(dir.path(), "t", 200_000, &[("k", &|i| i % 100_000), ("v", &|i| i)]);
    for (threads, batch_size) in [(2, 8192), (2, 1000), (1, 8192)] {
        let mut s = Session::new(ExecConfig { threads, batch_size, ..ExecConfig::default() });
        s.register_path("t", &t).expect("register");
        let got = rows(&mut s, "SELECT k, count(*), sum(v), min(v) FROM t GROUP BY k");
        assert_eq!(got.len(), 100_000, "threads={threads}");
        let mut got: Vec<(i64, String)> = got.into_iter().map(|r| (r.split(' ').next().and_then(|k| k.parse().ok()).unwrap_or(-1), r)).collect();
        got.sort();
        for (k, row) in got {
            assert_eq!(row, format!("{k} 2 {} {k}", 2 * k + 100_000), "threads={threads}");
        }
        // Over the merged groups, a second aggregate sees each once.
        let q = "SELECT count(*), sum(n), count(DISTINCT k) FROM (SELECT k, count(*) AS n FROM t GROUP BY k) g";
        assert_eq!(rows(&mut s, q), ["100000 200000 100000"], "threads={threads}");
    }
}

/// A partition whose table keeps nearly a group per row stops aggregating: its rows pass to the merge
/// as groups of their own (`passed_rows` in EXPLAIN ANALYZE), in memory or, over the budget, on disk,
/// and the answer is the same.
#[test]
fn rows_sharing_no_group_pass_to_the_merge_with_the_same_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Keys 0..150 000, then the same keys backwards: each key's two rows are far apart.
    let key = |i: i64| if i < 150_000 { i } else { 299_999 - i };
    let t = common::write_table(dir.path(), "t", 300_000, &[("k", &key), ("v", &|i| i), ("g", &|i| i % 10)]);
    let by_key = "SELECT k, count(*), sum(v), min(v), max(v), avg(v) FROM t GROUP BY k";
    for (threads, batch_size, memory_limit) in [(2, 8192, 0), (1, 8192, 0), (2, 1000, 8 << 20)] {
        let spill = tempfile::tempdir().expect("spill dir");
        let mut config = ExecConfig { threads, batch_size, spill_dir: Some(spill.path().to_path_buf()), ..ExecConfig::default() };
        if memory_limit > 0 {
            config.memory_limit = memory_limit;
        }
        let mut s = Session::new(config);
        s.register_path("t", &t).expect("register");
        let mode = format!("threads={threads} batch_size={batch_size} memory_limit={memory_limit}");
        let got = rows(&mut s, by_key);
        assert_eq!(got.len(), 150_000, "{mode}");
        let mut got: Vec<(i64, String)> = got.into_iter().map(|r| (r.split(' ').next().and_then(|k| k.parse().ok()).unwrap_or(-1), r)).collect();
        got.sort();
        for (k, row) in got {
            let (a, b) = (k, 299_999 - k);
            assert_eq!(row, format!("{k} 2 {} {a} {b} {}", a + b, (a + b) as f64 / 2.0), "{mode}");
        }
        let analyzed = common::text(&mut s, &format!("EXPLAIN ANALYZE {by_key}"));
        assert!(analyzed.contains("passed_rows="), "{mode}: {analyzed}");
        let spilled = s.sql(by_key).expect("runs").stats.spill_files;
        assert_eq!(spilled > 0, memory_limit > 0, "{mode}");
        // Ten groups: the tables shrink their rows and keep aggregating.
        let few = "SELECT g, count(*), sum(v) FROM t GROUP BY g";
        let analyzed = common::text(&mut s, &format!("EXPLAIN ANALYZE {few}"));
        assert!(!analyzed.contains("passed_rows="), "{mode}: {analyzed}");
        let mut got = rows(&mut s, few);
        got.sort();
        let want: Vec<String> = (0..10).map(|g| format!("{g} 30000 {}", (0..30_000).map(|j| g + 10 * j).sum::<i64>())).collect();
        assert_eq!(got, want, "{mode}");
    }
}

#[test]
fn count_distinct_of_one_argument_runs_as_two_aggregates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = common::write_table(dir.path(), "t", 50_000, &[("g", &|i| i % 7), ("x", &|i| i % 1_000), ("v", &|i| i)]);
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("t", &t).expect("register");
    let q = "SELECT g, count(DISTINCT x), sum(v), count(*) FROM t GROUP BY g ORDER BY g";
    let plan = common::physical(&mut s, q);
    assert!(!plan.contains("DISTINCT") && plan.contains("group=[g, x]"), "grouped by g and x, then by g:\n{plan}");
    let expected: Vec<String> = (0..7i64)
        .map(|g| {
            let rows: Vec<i64> = (0..50_000i64).filter(|i| i % 7 == g).collect();
            let xs: std::collections::HashSet<i64> = rows.iter().map(|i| i % 1_000).collect();
            format!("{g} {} {} {}", xs.len(), rows.iter().sum::<i64>(), rows.len())
        })
        .collect();
    assert_eq!(rows(&mut s, q), expected);
    // Two arguments: sets of values per group.
    let plan = common::physical(&mut s, "SELECT g, count(DISTINCT x), count(DISTINCT v) FROM t GROUP BY g");
    assert!(plan.contains("count(DISTINCT x)"), "{plan}");
}

/// A UNION over a UNION (TPC-DS q75's three channels) removes duplicates in one aggregate, not one per
/// UNION; a UNION ALL above keeps the inner one.
#[test]
fn a_union_of_unions_removes_duplicates_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let t = common::write_table(dir.path(), "t", 1000, &[("k", &|i| i % 300), ("v", &|i| i % 7)]);
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("t", &t).expect("register");
    let aggregates = |s: &mut Session, q: &str| common::physical(s, q).matches("HashAggregate").count();
    let q = "SELECT k FROM t WHERE v = 1 UNION SELECT k FROM t WHERE v = 2 UNION SELECT DISTINCT k FROM t WHERE v = 3";
    assert_eq!(aggregates(&mut s, q), 1, "{}", common::physical(&mut s, q));
    let want = (0..300).filter(|k| (0..1000).any(|i| i % 300 == *k && (1..=3).contains(&(i % 7)))).count();
    assert_eq!(rows(&mut s, &format!("SELECT count(*) FROM ({q}) u")), [want.to_string()]);
    let q = "SELECT k FROM t WHERE v = 3 UNION ALL (SELECT k FROM t WHERE v = 1 UNION SELECT k FROM t WHERE v = 2)";
    assert_eq!(aggregates(&mut s, q), 1, "{}", common::physical(&mut s, q));
}
