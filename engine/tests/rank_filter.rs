//! A filter on a window's rank (`rk <= N`) also runs before the window's sort (`RankFilter`), dropping
//! the rows that cannot rank within N of their partition, so that the sort sees few rows.

mod common;

use common::{physical, rows, text};
use riffle_engine::{ExecConfig, Session};

const TPCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tpch-sf0.01");

fn session() -> Session {
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("lineitem", &format!("{TPCH}/lineitem.parquet")).expect("register");
    s
}

/// The `rows=` of EXPLAIN ANALYZE's first line that starts (after indentation) with `node`.
fn count(plan: &str, node: &str) -> u64 {
    plan.lines()
        .find(|l| l.trim_start().starts_with(node))
        .and_then(|l| l.split("rows=").nth(1)?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {node} in {plan}"))
}

const TOP3: &str = "SELECT l_suppkey, l_extendedprice, rk FROM (SELECT l_suppkey, l_extendedprice, \
                    rank() OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice DESC) AS rk FROM lineitem) t WHERE rk <= 3";

#[test]
fn the_sort_of_a_ranked_window_sees_only_rows_that_may_rank_within_the_bound() {
    let mut s = session();
    let plan = physical(&mut s, TOP3);
    assert!(plan.contains("RankFilter: rank() OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice DESC) <= 3"), "{plan}");
    let analyzed = text(&mut s, &format!("EXPLAIN ANALYZE {TOP3}"));
    let (read, sorted) = (count(&analyzed, "Scan: lineitem"), count(&analyzed, "Sort:"));
    // 100 suppliers, ~600 rows each in random order: a few dozen may still rank within 3 when seen.
    assert_eq!(read, 60175, "{analyzed}");
    assert!(sorted < read / 10, "sorted {sorted} of {read}: {analyzed}");
    assert_eq!(rows(&mut s, &format!("SELECT count(*), count(DISTINCT l_suppkey) FROM ({TOP3}) x")), ["306 100"]);
}

#[test]
fn no_rank_filter_where_another_window_function_needs_every_row() {
    let mut s = session();
    let q = "SELECT * FROM (SELECT l_suppkey, rank() OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice) AS rk, \
             count(*) OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice) AS n FROM lineitem) t WHERE rk <= 3";
    assert!(!physical(&mut s, q).contains("RankFilter"));
    let q = "SELECT * FROM (SELECT l_suppkey, rank() OVER (PARTITION BY l_suppkey ORDER BY l_extendedprice) AS rk FROM lineitem) t WHERE rk > 3";
    assert!(!physical(&mut s, q).contains("RankFilter"));
}

#[test]
fn past_its_memory_a_rank_filter_lets_new_partitions_pass() {
    // Every order is a partition of its own; under a small budget the filter stops tracking new ones
    // and the answer stays the window's.
    let mut s = Session::new(ExecConfig { threads: 1, memory_limit: 256 * 1024, ..ExecConfig::default() });
    s.register_path("lineitem", &format!("{TPCH}/lineitem.parquet")).expect("register");
    let q = "SELECT count(*), sum(l_linenumber) FROM (SELECT l_linenumber, row_number() OVER (PARTITION BY l_orderkey ORDER BY l_linenumber DESC) AS rn FROM lineitem) t WHERE rn = 1";
    assert_eq!(rows(&mut s, q), ["15000 60175"]);
}

