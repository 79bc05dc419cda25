//! Runtime filters: a hash join's build-side key values filter the probe side's scan (rows, and
//! Parquet row groups outside the keys' range), only where the join drops probe rows without match.

mod common;

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::{physical, rows, text};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use riffle_engine::{ExecConfig, Session};

/// `facts`: 10 000 rows in 10 row groups, `u` = i % 5, `k` = `key(i)`, `v` = i % 7 (`k` NULL where
/// `key` says).
fn write_facts(path: &std::path::Path, key: &dyn Fn(i64) -> Option<i64>) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("u", DataType::Int64, false),
        Field::new("k", DataType::Int64, true),
        Field::new("v", DataType::Int64, false),
    ]));
    let props = WriterProperties::builder().set_max_row_group_row_count(Some(1000)).build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema.clone(), Some(props)).expect("writer");
    let ks: Vec<Option<i64>> = (0..10_000).map(key).collect();
    let vs: Vec<i64> = (0..10_000).map(|i| i % 7).collect();
    let us: Vec<i64> = (0..10_000).map(|i| i % 5).collect();
    let columns = vec![Arc::new(Int64Array::from(us)) as _, Arc::new(Int64Array::from(ks)) as _, Arc::new(Int64Array::from(vs)) as _];
    let batch = RecordBatch::try_new(schema, columns).expect("batch");
    w.write(&batch).expect("write");
    w.close().expect("close");
}

/// A session with `facts` (keys from `key`) and `dim`: 1000 rows, `d` = 2000 + 2j, `flag` = j % 2.
fn session(key: &dyn Fn(i64) -> Option<i64>) -> (Session, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let facts = dir.path().join("facts.parquet");
    write_facts(&facts, key);
    let dim = common::write_table(dir.path(), "dim", 500, &[("d", &|j| 2000 + 2 * j), ("flag", &|j| j % 2)]);
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("facts", &facts.display().to_string()).expect("register");
    s.register_path("dim", &dim).expect("register");
    (s, dir)
}

/// The answer of `q` with `facts` read as it is, with no join to filter it: what the join computes.
fn expected(s: &mut Session, q: &str) -> Vec<String> {
    let unfiltered = q.replace("FROM facts", "FROM (SELECT * FROM facts LIMIT 1000000) AS facts");
    assert!(!physical(s, &unfiltered).contains("runtime_filter"), "{unfiltered}: {}", physical(s, &unfiltered));
    rows(s, &unfiltered)
}

#[test]
fn a_join_reads_only_the_probe_rows_its_build_keys_can_match() {
    let (mut s, _dir) = session(&|i| Some(i));
    let q = "SELECT count(*), sum(v) FROM facts JOIN dim ON k = d";
    assert!(physical(&mut s, q).contains("runtime_filter=[facts.k]"), "{}", physical(&mut s, q));
    // Keys 2000..2998, every other one: one row group of ten is read, half its rows pass.
    let want: i64 = (0..500).map(|j| (2000 + 2 * j) % 7).sum();
    assert_eq!(rows(&mut s, q), [format!("500 {want}")]);
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains("row_groups=1/10 (pruned 9)") && analyzed.contains("runtime_filtered_rows=500"), "{analyzed}");
    // The build side's own filter narrows it further, at run time.
    let q = "SELECT count(*), sum(v) FROM facts JOIN dim ON k = d WHERE flag = 1 AND d < 2100";
    assert_eq!(rows(&mut s, q), expected(&mut s, q));
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains("row_groups=1/10 (pruned 9)") && analyzed.contains("runtime_filtered_rows=975"), "{analyzed}");
}

#[test]
fn keys_out_of_order_are_filtered_row_by_row_and_null_keys_dropped() {
    // Keys scattered over every row group, every tenth NULL.
    let (mut s, _dir) = session(&|i| (i % 10 != 3).then_some((i * 7919) % 10_000));
    for q in [
        "SELECT count(*), sum(v), min(k), max(k) FROM facts JOIN dim ON k = d WHERE flag = 0",
        "SELECT v, count(*) FROM facts WHERE k IN (SELECT d FROM dim WHERE flag = 1) GROUP BY v ORDER BY v",
        "SELECT count(*), count(k), sum(v) FROM facts RIGHT JOIN dim ON k = d",
    ] {
        assert!(physical(&mut s, q).contains("runtime_filter=[facts.k]"), "{q}: {}", physical(&mut s, q));
        assert_eq!(rows(&mut s, q), expected(&mut s, q), "{q}");
        let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
        assert!(analyzed.contains("row_groups=10/10 (pruned 0)") && analyzed.contains("runtime_filtered_rows="), "{q}: {analyzed}");
    }
}

#[test]
fn joins_that_keep_probe_rows_without_match_get_no_filter() {
    let (mut s, _dir) = session(&|i| (i % 10 != 3).then_some(i));
    for q in [
        "SELECT count(*), count(d), sum(v) FROM facts LEFT JOIN dim ON k = d",
        "SELECT count(*), sum(v) FROM facts WHERE k NOT IN (SELECT d FROM dim WHERE flag = 1)",
        "SELECT count(*), sum(v) FROM facts WHERE NOT EXISTS (SELECT 1 FROM dim WHERE d = k)",
        "SELECT count(*), count(k), count(d) FROM facts FULL JOIN dim ON k = d",
    ] {
        assert!(!physical(&mut s, q).contains("runtime_filter"), "{q}: {}", physical(&mut s, q));
        assert_eq!(rows(&mut s, q), expected(&mut s, q), "{q}");
    }
}

#[test]
fn a_build_side_without_rows_leaves_the_probe_scan_unread() {
    let (mut s, _dir) = session(&|i| Some(i));
    let q = "SELECT count(*) FROM facts JOIN dim ON k = d WHERE flag = 7";
    assert_eq!(rows(&mut s, q), ["0"]);
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains("row_groups=0/10 (pruned 10)"), "{analyzed}");
}

#[test]
fn a_build_key_of_an_inner_join_below_filters_the_scan_its_probe_key_comes_from() {
    // As TPC-DS q95's `ws_order_number IN (SELECT wr_order_number FROM web_returns, ws_wh WHERE …)`:
    // the semi join's key is the inner join's build key, equal to its probe key from `facts`.
    let (mut s, dir) = session(&|i| Some((i * 7919) % 10_000));
    let wide = common::write_table(dir.path(), "wide", 10_000, &[("w_k", &|i| i), ("w", &|i| i % 3)]);
    s.register_path("wide", &wide).expect("register");
    let q = "SELECT count(*), sum(flag) FROM dim WHERE d IN (SELECT w_k FROM facts JOIN wide ON k = w_k WHERE w = 0)";
    let plan = physical(&mut s, q);
    let semi = plan.lines().find(|l| l.contains("Semi")).unwrap_or_default();
    assert!(semi.contains("runtime_filter=[facts.k]"), "{plan}");
    assert_eq!(rows(&mut s, q), expected(&mut s, q));
    // dim's keys 2000, 2002, …, 2998 that are multiples of 3 (w = 0): 166 of the facts' 10 000 rows.
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains("runtime_filtered_rows=9834"), "{analyzed}");
}

/// Rows of a union, in an order that does not depend on which branch ran first.
fn sorted(mut rows: Vec<String>) -> Vec<String> {
    rows.sort();
    rows
}

/// Asserts what EXPLAIN ANALYZE of `q` shows of the scan of `facts`: the row groups it read, and the
/// rows its runtime filters dropped.
fn assert_facts_read(s: &mut Session, q: &str, row_groups: &str, filtered: u64) {
    let analyzed = text(s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains(row_groups), "{analyzed}");
    assert_eq!(facts_filtered(&analyzed), Some(filtered), "{analyzed}");
}

/// The `runtime_filtered_rows` of the scan of `facts` in an EXPLAIN ANALYZE.
fn facts_filtered(analyzed: &str) -> Option<u64> {
    let line = analyzed.lines().find(|l| l.contains("Scan: facts"))?;
    line.split("runtime_filtered_rows=").nth(1)?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[test]
fn a_filter_passes_a_group_by_keyed_by_the_join_key_and_waits_for_the_build_side() {
    // The build side is itself a GROUP BY, so no semi join goes below the probe side's GROUP BY at
    // planning: the runtime filter alone narrows what it reads, from a pipeline of its own.
    let (mut s, _dir) = session(&|i| Some(i));
    let q = "SELECT count(*), sum(n), sum(s) FROM (SELECT k, count(*) AS n, sum(v) AS s FROM facts GROUP BY k) g \
             JOIN (SELECT d FROM dim WHERE flag = 1 AND d < 2100 GROUP BY d) a ON g.k = a.d";
    let plan = physical(&mut s, q);
    let join = plan.lines().find(|l| l.contains("HashJoin")).unwrap_or_default();
    assert!(join.contains("runtime_filter=[facts.k]"), "{plan}");
    assert_eq!(rows(&mut s, q), expected(&mut s, q));
    // dim's 25 odd j below 50: keys 2002, 2006, …, 2098, all in row group 2000..2999.
    assert_facts_read(&mut s, q, "row_groups=1/10 (pruned 9)", 975);
}

#[test]
fn a_shared_subplan_keeps_the_rows_any_use_joins() {
    let (mut s, _dir) = session(&|i| Some(i));
    let q = "WITH g AS (SELECT k, count(*) AS n, sum(v) AS s FROM facts GROUP BY k) \
             SELECT count(*), sum(n), sum(s) FROM g JOIN (SELECT d FROM dim WHERE flag = 1 AND d < 2100 GROUP BY d) a ON k = a.d \
             UNION ALL SELECT count(*), sum(n), sum(s) FROM g JOIN (SELECT d FROM dim WHERE flag = 0 AND d > 2900 GROUP BY d) b ON k = b.d";
    let plan = physical(&mut s, q);
    assert!(plan.contains("Shared #0"), "{plan}");
    assert_eq!(plan.matches("runtime_filter=[facts.k]").count(), 2, "{plan}");
    assert_eq!(sorted(rows(&mut s, q)), sorted(expected(&mut s, q)));
    // 25 keys of the first use and 24 of the second (even j above 450), one row group.
    assert_facts_read(&mut s, q, "row_groups=1/10 (pruned 9)", 1000 - 49);
    // A use that reads every group leaves the shared scan unfiltered.
    let q = "WITH g AS (SELECT k, count(*) AS n, sum(v) AS s FROM facts GROUP BY k) \
             SELECT count(*), sum(n), sum(s) FROM g JOIN (SELECT d FROM dim WHERE flag = 1 AND d < 2100 GROUP BY d) a ON k = a.d \
             UNION ALL SELECT count(*), sum(n), sum(s) FROM g";
    let plan = physical(&mut s, q);
    assert!(plan.contains("Shared #0") && !plan.contains("runtime_filter"), "{plan}");
    assert_eq!(sorted(rows(&mut s, q)), sorted(expected(&mut s, q)));
}

#[test]
fn row_groups_between_a_few_scattered_keys_are_skipped() {
    // Two build keys at both ends of the facts: their range spans every row group, but only the
    // first and the last hold one (TPC-DS q25's thirteen ticket numbers: 8 of 235 row groups).
    let (mut s, dir) = session(&|i| Some(i));
    let ends = common::write_table(dir.path(), "ends", 10_000, &[("e_k", &|i| i), ("e", &|i| i64::from(i == 5 || i == 9_995))]);
    s.register_path("ends", &ends).expect("register");
    let q = "SELECT count(*), sum(v) FROM facts JOIN ends ON k = e_k WHERE e = 1";
    assert!(physical(&mut s, q).contains("runtime_filter=[facts.k]"), "{}", physical(&mut s, q));
    // v = i % 7: 5 and 9,995 % 7 = 6.
    assert_eq!(rows(&mut s, q), ["2 11"]);
    assert_facts_read(&mut s, q, "row_groups=2/10 (pruned 8)", 1998);
}

#[test]
fn a_filter_reaches_the_scans_of_every_input_of_a_union() {
    // As TPC-DS q54's catalog and web sales of one month: each input's scan reads only the row
    // group with the keys.
    let (mut s, dir) = session(&|i| Some(i));
    s.register_path("facts2", &dir.path().join("facts.parquet").display().to_string()).expect("register");
    let q = "SELECT count(*), sum(u.v) FROM (SELECT k, v FROM facts UNION ALL SELECT k, v * 2 AS v FROM facts2) u JOIN dim ON u.k = d WHERE flag = 1";
    let plan = physical(&mut s, q);
    assert!(plan.contains("runtime_filter=[facts.k, facts2.k]"), "{plan}");
    assert_eq!(rows(&mut s, q), expected(&mut s, q));
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(analyzed.matches("row_groups=1/10 (pruned 9)").count(), 2, "{analyzed}");
}

#[test]
fn a_scan_passing_few_rows_reads_only_their_other_columns_with_the_same_answer() {
    // 500 build keys scattered over all 10 row groups keep 5% of the facts: once the first row
    // groups showed it, the scan reads k alone, then v for the rows that pass (small batches, so
    // that a row group comes in many).
    let dir = tempfile::tempdir().expect("tempdir");
    let facts = dir.path().join("facts.parquet");
    write_facts(&facts, &|i| (i % 10 != 3).then_some((i * 7919) % 10_000));
    let dim = common::write_table(dir.path(), "dim", 500, &[("d", &|j| 2000 + 2 * j), ("flag", &|j| j % 2)]);
    let mut s = Session::new(ExecConfig { threads: 2, batch_size: 64, ..ExecConfig::default() });
    s.register_path("facts", &facts.display().to_string()).expect("register");
    s.register_path("dim", &dim).expect("register");
    // The filter column read first sits between the others in the batches the scan hands out.
    let q = "SELECT count(*), sum(v), min(k), max(k), sum(k * v), sum(u * k), sum(u * v) FROM facts JOIN dim ON k = d";
    let want = expected(&mut s, q);
    assert_eq!(rows(&mut s, q), want);
    let q_grouped = "SELECT u, v, count(*), sum(k) FROM facts JOIN dim ON k = d GROUP BY u, v ORDER BY u, v";
    assert_eq!(rows(&mut s, q_grouped), expected(&mut s, q_grouped));
    let kept: Vec<i64> = (0..10_000).filter(|i| i % 10 != 3).map(|i| (i * 7919) % 10_000).filter(|k| (2000..3000).contains(k) && k % 2 == 0).collect();
    assert_eq!(want[0].split(' ').next(), Some(kept.len().to_string().as_str()));
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(facts_filtered(&analyzed), Some(10_000 - kept.len() as u64), "{analyzed}");
}
