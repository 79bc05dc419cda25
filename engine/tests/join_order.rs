//! The cost-based join order: inner joins run in the order their estimated sizes favour, whatever
//! order the query names the tables in, with the same answers.

mod common;

use common::{physical, rows, text, write_table};
use riffle_engine::{ExecConfig, Session};

/// A fact table with two dimensions, one of them filtered.
fn star() -> (tempfile::TempDir, Session) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let fact = write_table(dir.path(), "fact", 20_000, &[("f_id", &|i| i), ("f_a", &|i| i % 100), ("f_b", &|i| (i * 7) % 50)]);
    let dim_a = write_table(dir.path(), "dim_a", 100, &[("a_key", &|i| i), ("a_group", &|i| i % 10)]);
    let dim_b = write_table(dir.path(), "dim_b", 50, &[("b_key", &|i| i), ("b_size", &|i| i)]);
    for (name, path) in [("fact", fact), ("dim_a", dim_a), ("dim_b", dim_b)] {
        s.register_path(name, &path).expect("register");
    }
    (dir, s)
}

#[test]
fn dimensions_named_first_are_not_joined_by_a_cross_product() {
    let (_dir, mut s) = star();
    let written = "SELECT count(*), sum(f_id) FROM dim_a, dim_b, fact WHERE f_a = a_key AND f_b = b_key AND b_size < 5 AND a_group = 3";
    let plan = physical(&mut s, written);
    assert!(!plan.contains("NestedLoopJoin"), "no cross product of the two dimensions:\n{plan}");
    // The fact table probes; both dimensions are built.
    let first_scan = plan.lines().find(|l| l.contains("Scan:")).unwrap_or_default();
    assert!(first_scan.contains("fact"), "the fact table is the probe side of every join:\n{plan}");
    let reference = "SELECT count(*), sum(f_id) FROM fact JOIN dim_a ON f_a = a_key JOIN dim_b ON f_b = b_key WHERE b_size < 5 AND a_group = 3";
    let answer = |s: &mut Session, q: &str| {
        let r = s.sql(q).expect("runs");
        riffle_engine::format::format_value(r.batches[0].column(1), 0).expect("format")
    };
    let expected: i64 = (0..20_000i64).filter(|i| (i * 7) % 50 < 5 && (i % 100) % 10 == 3).sum();
    assert_eq!(answer(&mut s, written), Some(expected.to_string()));
    assert_eq!(answer(&mut s, reference), Some(expected.to_string()));
}

#[test]
fn the_smaller_input_is_the_build_side() {
    let (_dir, mut s) = star();
    // Written with the small table on the probe side. (Counting a column of the dimension keeps
    // the whole aggregate above the join: count(*) would count the facts before it.)
    let q = "SELECT count(b_size) FROM dim_b JOIN fact ON f_b = b_key";
    let plan = physical(&mut s, q);
    let join = plan.lines().position(|l| l.contains("HashJoin")).expect("a hash join");
    assert!(plan.lines().nth(join + 1).unwrap_or_default().contains("fact"), "fact probes:\n{plan}");
    assert_eq!(text(&mut s, q), "20000");
    // Columns keep the order the query gives them.
    let r = s.sql("SELECT * FROM dim_b JOIN fact ON f_b = b_key ORDER BY f_id LIMIT 1").expect("runs");
    let names: Vec<&str> = r.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["b_key", "b_size", "f_id", "f_a", "f_b"]);
    assert_eq!(riffle_engine::format::format_value(r.batches[0].column(2), 0).expect("format"), Some("0".into()));
}

#[test]
fn a_long_chain_of_joins_is_ordered_greedily_with_the_same_answer() {
    // Fourteen tables (beyond the dynamic-programming limit) joined in a chain t0 - t1 - … - t13.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    for t in 0..14 {
        let rows = 10 + 37 * ((t * 5) % 14);
        let path = write_table(dir.path(), &format!("t{t}"), rows, &[("k", &|i| i), ("next", &|i| (i * 3) % 10)]);
        s.register_path(&format!("t{t}"), &path).expect("register");
    }
    let tables: Vec<String> = (0..14).rev().map(|t| format!("t{t}")).collect();
    let conditions: Vec<String> = (0..13).map(|t| format!("t{t}.next = t{}.k", t + 1)).collect();
    let q = format!("SELECT count(*) FROM {} WHERE {}", tables.join(", "), conditions.join(" AND "));
    assert!(!physical(&mut s, &q).contains("NestedLoopJoin"));
    // Every row of t0 follows one path (next < 10 ≤ rows of every table).
    assert_eq!(text(&mut s, &q), "10");
}

#[test]
fn semi_and_anti_joins_hash_the_smaller_side_whose_rows_they_keep() {
    let (_dir, mut s) = star();
    // dim_b (50 rows) keeps its rows by whether fact (20,000 rows) has a match: dim_b is hashed.
    let cases = [
        ("EXISTS (SELECT 1 FROM fact WHERE f_b = b_key AND f_id > 19000)", "Semi"),
        ("NOT EXISTS (SELECT 1 FROM fact WHERE f_b = b_key AND f_id > 10000 AND f_a = 3)", "Anti"),
        // A condition over both sides (as TPC-H Q21's l2.l_suppkey <> l1.l_suppkey).
        ("EXISTS (SELECT 1 FROM fact WHERE f_b = b_key AND f_a < b_size)", "Semi"),
        ("NOT EXISTS (SELECT 1 FROM fact WHERE f_b = b_key AND f_a + 60 < b_size)", "Anti"),
    ];
    let fact: Vec<(i64, i64, i64)> = (0..20_000i64).map(|i| (i, i % 100, (i * 7) % 50)).collect();
    let expected = |k: usize, key: i64| -> bool {
        let size = key;
        match k {
            0 => fact.iter().any(|f| f.2 == key && f.0 > 19000),
            1 => !fact.iter().any(|f| f.2 == key && f.0 > 10000 && f.1 == 3),
            2 => fact.iter().any(|f| f.2 == key && f.1 < size),
            _ => !fact.iter().any(|f| f.2 == key && f.1 + 60 < size),
        }
    };
    for (k, (cond, kind)) in cases.iter().enumerate() {
        let q = format!("SELECT count(*), sum(b_key) FROM dim_b WHERE {cond}");
        let plan = physical(&mut s, &q);
        assert!(plan.contains(&format!("HashJoin: {kind} (build rows kept)")), "{cond}:\n{plan}");
        let keys: Vec<i64> = (0..50).filter(|key| expected(k, *key)).collect();
        let r = s.sql(&q).expect("runs");
        let got = |c: usize| riffle_engine::format::format_value(r.batches[0].column(c), 0).expect("format");
        assert_eq!(got(0), Some(keys.len().to_string()), "{cond}");
        if !keys.is_empty() {
            assert_eq!(got(1), Some(keys.iter().sum::<i64>().to_string()), "{cond}");
        }
    }
    // The larger side kept: its rows are the probe side, as usual.
    let plan = physical(&mut s, "SELECT count(*) FROM fact WHERE EXISTS (SELECT 1 FROM dim_b WHERE f_b = b_key)");
    assert!(plan.contains("HashJoin: Semi on="), "{plan}");
}

#[test]
fn a_semi_join_on_one_relation_of_a_join_filters_that_relation_first() {
    let (_dir, mut s) = star();
    // `a_key IN (…)` reads dim_a only: it filters dim_a's 100 rows before they meet fact's 20,000.
    let q = "SELECT count(*) FROM fact, dim_a WHERE f_a = a_key AND a_key IN (SELECT b_key FROM dim_b WHERE b_size < 3)";
    let plan = physical(&mut s, q);
    assert!(line_of(&plan, "HashJoin: Inner") < line_of(&plan, "HashJoin: Semi"), "the semi join runs below the inner join:\n{plan}");
    assert_eq!(text(&mut s, q), "600");
    // Not when the relation is larger than the join's result: fact's 20,000 rows against 2,000.
    // (A condition on a_key itself would filter fact too; counting a_group keeps the aggregate above.)
    let q = "SELECT count(a_group) FROM fact, dim_a WHERE f_a = a_key AND a_group = 7 AND f_id IN (SELECT b_key FROM dim_b)";
    let plan = physical(&mut s, q);
    assert!(line_of(&plan, "HashJoin: Semi") < line_of(&plan, "HashJoin: Inner"), "the semi join stays above:\n{plan}");
    assert_eq!(text(&mut s, q), "5");
}

fn line_of(plan: &str, needle: &str) -> usize {
    plan.lines().position(|l| l.contains(needle)).unwrap_or(usize::MAX)
}

#[test]
fn explain_analyze_shows_estimates_beside_actual_rows() {
    let (_dir, mut s) = star();
    let plan = text(&mut s, "EXPLAIN ANALYZE SELECT count(*) FROM fact JOIN dim_b ON f_b = b_key WHERE b_size < 5");
    let scan = plan.lines().find(|l| l.contains("Scan: fact")).unwrap_or_default();
    // The estimate is of the table's rows; the join's runtime filter drops 18000 of them as read.
    assert!(scan.contains("rows=2000 ") && scan.contains("runtime_filtered_rows=18000") && scan.ends_with("est_rows=20000"), "{plan}");
    // dim_b's filter keeps 5 of 50 rows: measured on the table, the estimate is exact.
    let dim = plan.lines().find(|l| l.contains("Scan: dim_b")).unwrap_or_default();
    assert!(dim.contains("rows=5 ") && dim.ends_with("est_rows=5"), "{plan}");
    let join = plan.lines().find(|l| l.contains("HashJoin")).unwrap_or_default();
    // Through dim_b's distinct keys, a sketch: within a few percent.
    let est: f64 = join.rsplit("est_rows=").next().and_then(|n| n.parse().ok()).unwrap_or(0.0);
    assert!(join.contains("rows=2000 ") && (est - 2000.0).abs() < 200.0, "{plan}");
}

#[test]
fn an_outer_join_hashes_its_smaller_side() {
    let (_dir, mut s) = star();
    // dim_b (50 rows) LEFT JOIN fact: dim_b is hashed, the join runs as a right join.
    let q = "SELECT b_key, count(f_id) FROM dim_b LEFT JOIN fact ON f_b = b_key AND f_id < 100 GROUP BY b_key ORDER BY b_key";
    let plan = physical(&mut s, q);
    assert!(plan.contains("HashJoin: Right"), "{plan}");
    let r = s.sql(q).expect("runs");
    let rows: usize = r.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 50, "every dim_b row, matched or not");
    let fact: Vec<i64> = (0..100i64).map(|i| (i * 7) % 50).collect();
    let col = |c: usize, i: usize| riffle_engine::format::format_value(r.batches[0].column(c), i).expect("format");
    for key in [0usize, 1, 7, 49] {
        let want = fact.iter().filter(|b| **b == key as i64).count();
        assert_eq!((col(0, key), col(1, key)), (Some(key.to_string()), Some(want.to_string())));
    }
    // Columns in the query's order, the unmatched side NULL.
    let q = "SELECT * FROM dim_b FULL JOIN fact ON f_b = b_key AND f_id < 0 ORDER BY b_key NULLS LAST, f_id LIMIT 1";
    assert!(physical(&mut s, q).contains("HashJoin: Full"));
    let r = s.sql(q).expect("runs");
    let names: Vec<&str> = r.schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["b_key", "b_size", "f_id", "f_a", "f_b"]);
    assert_eq!(riffle_engine::format::format_value(r.batches[0].column(2), 0).expect("format"), None);
    assert_eq!(text(&mut s, "SELECT count(*) FROM dim_b FULL JOIN fact ON f_b = b_key AND f_id < 0"), "20050");
}

#[test]
fn a_disjunction_over_both_sides_filters_each_side_first() {
    let (_dir, mut s) = star();
    // Each branch restricts both tables (as TPC-H Q19): each scan gets the OR of its own parts.
    let q = "SELECT count(*), sum(f_id) FROM fact JOIN dim_b ON f_b = b_key \
             WHERE (f_a < 10 AND b_size < 5 AND f_id + b_size > 3) OR (f_a > 90 AND b_size > 45)";
    let plan = physical(&mut s, q);
    let scan = |t: &str| plan.lines().find(|l| l.contains(&format!("Scan: {t}"))).unwrap_or_default().to_string();
    assert!(scan("fact").contains("(f_a < 10) OR (f_a > 90)"), "{plan}");
    assert!(scan("dim_b").contains("(b_size < 5) OR (b_size > 45)"), "{plan}");
    let want: Vec<i64> = (0..20_000i64)
        .filter(|i| {
            let (a, b) = (i % 100, (i * 7) % 50);
            (a < 10 && b < 5 && i + b > 3) || (a > 90 && b > 45)
        })
        .collect();
    let r = s.sql(q).expect("runs");
    let col = |c: usize| riffle_engine::format::format_value(r.batches[0].column(c), 0).expect("format");
    assert_eq!((col(0), col(1)), (Some(want.len().to_string()), Some(want.iter().sum::<i64>().to_string())));
}

/// Streams with event time: a join of two bounded ones whose time nothing above reads hashes the
/// smaller (Nexmark q4's auctions, not its bids, with the same answer); under a window, the time of
/// the rows is the left input's, so the join keeps the order written.
#[test]
fn a_stream_join_hashes_the_smaller_side_unless_a_window_reads_its_time() {
    let tables = |s: &mut Session| {
        for (table, columns) in [("auction", "id BIGINT, category BIGINT, date_time TIMESTAMP(3), expires TIMESTAMP(3)"), ("bid", "auction BIGINT, price BIGINT, date_time TIMESTAMP(3)")] {
            s.execute(&format!(
                "CREATE TABLE {table} ({columns}, WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) \
                 WITH ('connector' = 'nexmark', 'table' = '{table}', 'events.num' = '100000')"
            ))
            .expect("create");
        }
    };
    let q4 = "SELECT Q.category, AVG(Q.final), count(*) FROM (SELECT MAX(B.price) AS final, A.category FROM auction A, bid B \
              WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires GROUP BY A.id, A.category) Q GROUP BY Q.category ORDER BY 1";
    let mut answers = Vec::new();
    for stream in [false, true] {
        let mut s = Session::new(ExecConfig { threads: 2, stream, ..ExecConfig::default() });
        tables(&mut s);
        let plan = physical(&mut s, q4);
        let join = line_of(&plan, "HashJoin");
        assert!(plan.lines().nth(join + 1).unwrap_or_default().contains("Scan: bid"), "bids probe (stream {stream}):\n{plan}");
        let r = s.sql(q4).expect("runs");
        let mut csv = Vec::new();
        riffle_engine::format::write_csv(&mut csv, &r.schema, &r.batches).expect("format");
        answers.push(String::from_utf8(csv).expect("utf-8"));
    }
    assert_eq!(answers[0], answers[1]);
    assert!(answers[0].lines().count() > 5, "{}", answers[0]);
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    tables(&mut s);
    // The window reads the auctions' time: they stay the probe side, whose watermarks the join passes on.
    let windowed = "WITH j AS (SELECT A.date_time, B.price FROM auction A, bid B WHERE A.id = B.auction) \
                    SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE j, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) GROUP BY window_start, window_end";
    let plan = physical(&mut s, windowed);
    let join = line_of(&plan, "HashJoin");
    assert!(plan.lines().nth(join + 1).unwrap_or_default().contains("Scan: auction"), "auctions probe:\n{plan}");
}

/// A union's key values are estimated from its inputs' (TPC-DS q05: a channel's sales and returns by
/// store, then the stores, then a few days): counting its rows as distinct keys made the join with
/// the stores look like it kept a handful of rows, and the union's 3 M rows were hashed.
#[test]
fn a_union_joined_with_a_dimension_keeps_its_size() {
    let (_dir, mut s) = star();
    let q = "SELECT count(b_size) FROM (SELECT f_id AS id, f_b AS k FROM fact UNION ALL SELECT f_id, f_b FROM fact) u, dim_b WHERE u.k = b_key";
    let plan = physical(&mut s, q);
    let join = plan.lines().find(|l| l.contains("HashJoin")).unwrap_or_default();
    let estimate: f64 = join.rsplit("est_rows=").next().and_then(|e| e.trim().parse().ok()).unwrap_or(0.0);
    assert!((20_000.0..=80_000.0).contains(&estimate), "40,000 rows join, estimated {estimate}:\n{plan}");
    assert_eq!(text(&mut s, q), "40000");
}

/// A filter on a union's constant column rules out whole branches (TPC-DS q04 reads its
/// `year_total` CTE six times, each for one sale type): those branches are not planned at all, so
/// their tables are not read and their joins not built.
#[test]
fn a_union_branch_a_filter_rules_out_is_not_read() {
    let (_dir, mut s) = star();
    let q = "WITH t AS (SELECT 'f' AS kind, f_a AS k FROM fact JOIN dim_a ON f_a = a_key UNION ALL SELECT 'b', b_key FROM dim_b) \
             SELECT count(*), sum(k) FROM t WHERE kind = 'b'";
    let plan = physical(&mut s, q);
    assert!(!plan.contains("Scan: fact") && !plan.contains("Scan: dim_a"), "the fact branch is dropped:\n{plan}");
    assert!(plan.contains("Scan: dim_b"), "{plan}");
    assert_eq!(rows(&mut s, q), [format!("50 {}", (0..50).sum::<i64>())]);
}

/// A condition on the left side's join key of a left join also filters the right side (TPC-DS q78:
/// the year of the store sales thins the web and catalog sales left-joined with them); on a
/// NOT IN's keys it does not (a NULL there makes the answer unknown).
#[test]
fn a_condition_on_join_keys_filters_both_sides() {
    let (_dir, mut s) = star();
    let q = "SELECT count(*), count(b_size) FROM fact LEFT JOIN dim_b ON f_b = b_key WHERE f_b < 5";
    let plan = physical(&mut s, q);
    let dim = plan.lines().find(|l| l.contains("Scan: dim_b")).unwrap_or_default();
    assert!(dim.contains("filter=(b_key < 5)"), "the dimension is filtered by the fact's key range:\n{plan}");
    let expected = (0..20_000i64).filter(|i| (i * 7) % 50 < 5).count();
    assert_eq!(rows(&mut s, q), [format!("{expected} {expected}")]);
    let not_in = physical(&mut s, "SELECT count(*) FROM dim_b WHERE b_key < 5 AND b_key NOT IN (SELECT f_b FROM fact)");
    let fact = not_in.lines().find(|l| l.contains("Scan: fact")).unwrap_or_default();
    assert!(!fact.contains("filter"), "{not_in}");
}

/// The depth (leading spaces) of the first plan line containing `what`.
fn depth_of(plan: &str, what: &str) -> usize {
    let line = plan.lines().find(|l| l.contains(what)).unwrap_or_else(|| panic!("no {what} in:\n{plan}"));
    line.len() - line.trim_start().len()
}

#[test]
fn a_scalar_subquery_compared_with_a_dimension_joins_that_dimension_first() {
    let (_dir, mut s) = star();
    // Written as a filter over the whole join; planned as a hash join of dim_a with the subquery's
    // one row, on a_group, below the join with the facts (whose scan its runtime filter thins).
    let q = "SELECT count(*), sum(f_id) FROM fact, dim_a WHERE f_a = a_key AND a_group = (SELECT max(a_group) - 6 FROM dim_a WHERE a_key < 50)";
    let plan = physical(&mut s, q);
    assert!(!plan.lines().take_while(|l| !l.contains("Join")).any(|l| l.contains("Filter:")), "no filter above the joins:\n{plan}");
    let subquery_join = plan.lines().find(|l| l.contains("HashJoin") && l.contains("a_group")).unwrap_or_else(|| panic!("a_group is a join key:\n{plan}"));
    assert!(depth_of(&plan, subquery_join) > depth_of(&plan, "f_a"), "dim_a meets the subquery before the facts:\n{plan}");
    let expected: i64 = (0..20_000i64).filter(|i| (i % 100) % 10 == 3).sum();
    assert_eq!(rows(&mut s, q), [format!("2000 {expected}")]);
}

#[test]
fn a_correlated_scalar_subquery_joins_the_table_it_reads_first() {
    let (_dir, mut s) = star();
    // Each dimension row's a_key against its group's average key: a keyed single join, run as an
    // inner join with dim_a (every group has an average) before the facts.
    let q = "SELECT count(*) FROM fact, dim_a d WHERE f_a = d.a_key AND d.a_key > (SELECT avg(a_key) + 40 FROM dim_a x WHERE x.a_group = d.a_group)";
    let plan = physical(&mut s, q);
    assert!(!plan.contains("Single"), "an inner join:\n{plan}");
    assert!(depth_of(&plan, "on=[a_group = a_group]") > depth_of(&plan, "f_a"), "dim_a meets its averages before the facts:\n{plan}");
    // Group g holds keys g, g + 10, …, g + 90 (average g + 45): keys above g + 85 are g + 90 only.
    assert_eq!(rows(&mut s, q), ["2000"]);
}

#[test]
fn a_left_join_whose_right_side_an_inner_join_keys_on_is_an_inner_join() {
    let (_dir, mut s) = star();
    // Facts without a dim_a row have a NULL a_group, which joins no dim_b row: an inner join, so
    // dim_a (filtered through dim_b) can meet the facts first.
    let q = "SELECT count(*), sum(f_id) FROM fact LEFT JOIN dim_a ON f_a = a_key JOIN dim_b ON a_group = b_key WHERE b_size = 3";
    let plan = physical(&mut s, q);
    assert!(!plan.contains("Left"), "{plan}");
    let expected: i64 = (0..20_000i64).filter(|i| (i % 100) % 10 == 3).sum();
    assert_eq!(rows(&mut s, q), [format!("2000 {expected}")]);
}

#[test]
fn an_aggregate_joined_on_its_group_key_with_few_rows_reads_only_their_groups() {
    let (_dir, mut s) = star();
    // TPC-H Q17's shape: the average per f_a is needed for the ten dim_a rows of one group only. The
    // aggregate's input keeps their rows (a semi join with dim_a's filtered rows) instead of
    // aggregating all hundred groups.
    let q = "SELECT count(*), sum(f_id) FROM fact, dim_a WHERE f_a = a_key AND a_group = 3 \
             AND f_id < (SELECT avg(f_id) FROM fact x WHERE x.f_a = a_key)";
    let plan = physical(&mut s, q);
    let aggregate = plan.lines().position(|l| l.contains("HashAggregate") && l.contains("avg")).unwrap_or_else(|| panic!("{plan}"));
    let semi = plan.lines().nth(aggregate + 1).unwrap_or_default();
    assert!(semi.contains("Semi") && semi.contains("f_a = a_key"), "the aggregate reads the facts of dim_a's filtered keys:\n{plan}");
    // Key a holds ids a, a + 100, …, a + 19,900 (average a + 9,950).
    let kept: Vec<i64> = (0..20_000i64).filter(|i| (i % 100) % 10 == 3 && *i < i % 100 + 9_950).collect();
    assert_eq!(rows(&mut s, q), [format!("{} {}", kept.len(), kept.iter().sum::<i64>())]);
}

#[test]
fn an_aggregate_used_twice_stays_whole_and_shared() {
    let (_dir, mut s) = star();
    // The CTE's two uses run once: reducing the one joined with dim_a's few keys would make them
    // differ, and the aggregate would run twice.
    let q = "WITH t AS (SELECT f_a, sum(f_id) AS total FROM fact GROUP BY f_a) \
             SELECT count(*), sum(t.total) FROM t, dim_a WHERE t.f_a = a_key AND a_group = 3 \
             AND t.total > (SELECT avg(total) FROM t)";
    let plan = physical(&mut s, q);
    assert!(plan.contains("Shared #0") && !plan.contains("Semi"), "{plan}");
    // Key a's total is 200 a + 1,990,000, above the average (a = 49.5) for a ≥ 50: 53, 63, …, 93.
    let kept: Vec<i64> = (50..100).filter(|a| a % 10 == 3).map(|a| 200 * a + 1_990_000).collect();
    assert_eq!(rows(&mut s, q), [format!("{} {}", kept.len(), kept.iter().sum::<i64>())]);
}

#[test]
fn an_aggregate_probes_when_the_runtime_filter_from_the_other_side_spares_most_of_its_input() {
    let (_dir, mut s) = star();
    // The HAVING leaves the aggregate estimated smaller than dim_a's 50 rows, but hashing dim_a lets
    // its keys filter the facts below the aggregate: half of its 20,000 input rows are never read.
    let q = "SELECT count(*), sum(t.total) FROM (SELECT f_a, sum(f_id) AS total FROM fact GROUP BY f_a HAVING sum(f_id) > 0) t \
             JOIN dim_a ON t.f_a = a_key WHERE a_group < 5";
    let plan = physical(&mut s, q);
    let join = plan.lines().position(|l| l.contains("HashJoin")).unwrap_or_else(|| panic!("{plan}"));
    assert!(plan.lines().nth(join).unwrap_or_default().contains("runtime_filter=[fact.f_a]"), "{plan}");
    assert!(plan.lines().skip(join + 1).take_while(|l| !l.contains("dim_a")).any(|l| l.contains("HashAggregate")), "the aggregate probes:\n{plan}");
    // Key a (a % 10 < 5) totals 200 a + 1,990,000.
    let totals: Vec<i64> = (0..100).filter(|a| a % 10 < 5).map(|a| 200 * a + 1_990_000).collect();
    assert_eq!(rows(&mut s, q), [format!("{} {}", totals.len(), totals.iter().sum::<i64>())]);
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert!(analyzed.contains("runtime_filtered_rows=10000"), "{analyzed}");
}

#[test]
fn relations_equal_on_one_key_through_a_third_join_by_the_equality_implied() {
    // TPC-H Q9's shape: the facts meet a filtered dimension and a bridge table on the same key, and
    // the bridge on a second one. Joining the dimension with the bridge first (by `ps_p = p_key`,
    // which no condition states) builds 40 rows for the facts instead of the 200 facts that meet
    // the dimension.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let facts = write_table(dir.path(), "facts", 20_000, &[("f_p", &|i| i % 1000), ("f_s", &|i| (i * 7) % 4)]);
    let parts = write_table(dir.path(), "parts", 1000, &[("p_key", &|i| i), ("p_kind", &|i| i % 100)]);
    let bridge = write_table(dir.path(), "bridge", 4000, &[("ps_p", &|i| i / 4), ("ps_s", &|i| i % 4), ("ps_cost", &|i| i)]);
    for (name, path) in [("facts", facts), ("parts", parts), ("bridge", bridge)] {
        s.register_path(name, &path).expect("register");
    }
    let q = "SELECT count(*), sum(ps_cost) FROM facts, parts, bridge WHERE p_key = f_p AND ps_p = f_p AND ps_s = f_s AND p_kind = 7";
    let plan = physical(&mut s, q);
    let implied = plan.lines().find(|l| l.contains("HashJoin") && (l.contains("ps_p = p_key") || l.contains("p_key = ps_p")));
    let implied = implied.unwrap_or_else(|| panic!("the dimension and the bridge join on the implied equality:\n{plan}"));
    assert!(depth_of(&plan, implied) > depth_of(&plan, "HashJoin"), "below the facts' join:\n{plan}");
    let first_scan = plan.lines().find(|l| l.contains("Scan:")).unwrap_or_default();
    assert!(first_scan.contains("facts"), "the facts probe:\n{plan}");
    // The facts meet both on one part key: the class's other equality is not checked again.
    let top = plan.lines().find(|l| l.contains("HashJoin")).unwrap_or_default();
    assert_eq!(top.matches(" = ").count(), 2, "one part key and the supplier key:\n{plan}");
    let (count, sum) = (0..20_000i64).filter(|i| i % 100 == 7).fold((0, 0), |(c, s), i| (c + 1, s + 4 * (i % 1000) + (i * 7) % 4));
    assert_eq!(rows(&mut s, q), [format!("{count} {sum}")]);
}

#[test]
fn a_disjunction_over_two_dimensions_is_estimated_given_what_it_implies_for_each() {
    // TPC-H Q7's shape: `(n1 = 3 AND n2 = 4) OR (n1 = 4 AND n2 = 3)` first filters each copy of
    // the dimension to two rows; of their four pairs it then keeps two, not the 2% a guess at the
    // whole disjunction gives. Guessed so small, the facts' side looked smaller than the suppliers,
    // which then probed a hash table of all the facts.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let tables = [
        ("facts", write_table(dir.path(), "facts", 50_000, &[("f_s", &|i| i % 1000), ("f_c", &|i| (i * 7) % 3000)])),
        ("supp", write_table(dir.path(), "supp", 1000, &[("s_key", &|i| i), ("s_nat", &|i| i % 25)])),
        ("cust", write_table(dir.path(), "cust", 3000, &[("c_key", &|i| i), ("c_nat", &|i| (i / 7) % 25)])),
        ("nat", write_table(dir.path(), "nat", 25, &[("n_key", &|i| i), ("n_name", &|i| (i * 3) % 25)])),
    ];
    for (name, path) in tables {
        s.register_path(name, &path).expect("register");
    }
    let q = "SELECT count(*) FROM facts, supp, cust, nat n1, nat n2 \
             WHERE f_s = s_key AND f_c = c_key AND s_nat = n1.n_key AND c_nat = n2.n_key \
             AND ((n1.n_name = 3 AND n2.n_name = 4) OR (n1.n_name = 4 AND n2.n_name = 3))";
    let plan = physical(&mut s, q);
    let first_scan = plan.lines().find(|l| l.contains("Scan:")).unwrap_or_default();
    assert!(first_scan.contains("facts"), "the facts probe every join:\n{plan}");
    let name = |key: i64| (key * 3) % 25;
    let expected = (0..50_000i64)
        .filter(|i| {
            let (sn, cn) = (name((i % 1000) % 25), name((((i * 7) % 3000) / 7) % 25));
            (sn == 3 && cn == 4) || (sn == 4 && cn == 3)
        })
        .count();
    assert_eq!(text(&mut s, q), expected.to_string());
}
