//! A subplan that occurs more than once runs once, each use reading all its rows (`share.rs`).

use riffle_engine::{ExecConfig, Session};

const TPCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tpch-sf0.01");

fn text(s: &mut Session, sql: &str) -> String {
    let r = s.sql(sql).expect("runs");
    riffle_engine::format::format_value(r.batches[0].column(0), 0).expect("format").unwrap_or_default()
}

fn rows(s: &mut Session, sql: &str) -> Vec<String> {
    let r = s.sql(sql).expect("runs");
    let mut out = vec![];
    for b in &r.batches {
        for i in 0..b.num_rows() {
            let row: Vec<String> = b
                .columns()
                .iter()
                .map(|c| riffle_engine::format::format_value(c, i).expect("format").unwrap_or_else(|| "NULL".into()))
                .collect();
            out.push(row.join("|"));
        }
    }
    out.sort();
    out
}

/// The `rows=` of EXPLAIN ANALYZE's lines that start (after indentation) with `node`.
fn counts(plan: &str, node: &str) -> Vec<u64> {
    plan.lines()
        .filter(|l| l.trim_start().starts_with(node))
        .filter_map(|l| l.split("rows=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn tpch_q15_aggregates_its_revenue_view_once_and_both_uses_read_it() {
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    for t in ["lineitem", "supplier"] {
        s.register_path(t, &format!("{TPCH}/{t}.parquet")).expect("register");
    }
    let q = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tpcds/queries/tpch/q15.sql")).expect("q15");
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    // One lineitem scan and one aggregate of it; the second use reads the first one's rows.
    assert_eq!(counts(&plan, "Scan: lineitem").len(), 1, "{plan}");
    assert!(plan.contains("Shared #0 (buffered: waits for another use)"), "{plan}");
    let uses = counts(&plan, "Shared #0");
    assert_eq!(uses.len(), 2, "{plan}");
    assert_eq!(uses[0], uses[1], "both uses read every row: {plan}");
    assert_eq!(uses[0], 100, "one row per supplier with revenue: {plan}");
    let answer = rows(&mut s, &q);
    assert_eq!(answer.len(), 1);
    assert!(answer[0].starts_with("21|Supplier#000000021|"), "{answer:?}");
}

#[test]
fn nexmark_q5_counts_each_windows_bids_once_as_a_stream() {
    let ddl = "CREATE TABLE bid (auction BIGINT, price BIGINT, date_time TIMESTAMP(3), \
               WATERMARK FOR date_time AS date_time - INTERVAL '1' SECOND) \
               WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '300000', 'first-event.rate' = '10000')";
    let q5 = "SELECT AuctionBids.auction, AuctionBids.num, AuctionBids.starttime FROM (
           SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
           FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
           GROUP BY auction, window_start, window_end) AS AuctionBids
         JOIN (
           SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
             SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
             FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
             GROUP BY auction, window_start, window_end) AS CountBids
           GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
         ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime AND AuctionBids.num >= MaxBids.maxn";
    let mut batch = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    batch.execute(ddl).expect("ddl");
    let expected = rows(&mut batch, q5);
    assert!(expected.len() > 10, "{expected:?}");
    // As a stream, and as Flink's streaming mode plans it (interval join, updating nothing here).
    for changelog in [false, true] {
        let mut stream = Session::new(ExecConfig { threads: 2, stream: true, changelog, ..ExecConfig::default() });
        stream.execute(ddl).expect("ddl");
        let plan = text(&mut stream, &format!("EXPLAIN ANALYZE {q5}"));
        assert_eq!(counts(&plan, "Scan: bid").len(), 1, "{plan}");
        assert_eq!(counts(&plan, "WindowAggregate: group=[auction, window_start, window_end]").len(), 1, "{plan}");
        let uses = counts(&plan, "Shared #0");
        assert_eq!(uses.len(), 2, "{plan}");
        assert_eq!(uses[0], uses[1], "{plan}");
        assert_eq!(rows(&mut stream, q5), expected, "changelog={changelog}");
    }
}

#[test]
fn a_windowed_view_read_three_times_one_on_a_probe_side_aggregates_once() {
    // TPC-DS q47's shape: the view's windows cannot be buffered for the probe side (as many rows as
    // their input), so the view runs once per use, but the aggregate under them runs once.
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("lineitem", &format!("{TPCH}/lineitem.parquet")).expect("register");
    let q = "WITH v AS (SELECT l_suppkey, l_linestatus, sum(l_quantity) AS q, \
               rank() OVER (PARTITION BY l_suppkey ORDER BY l_linestatus) AS rn \
             FROM lineitem GROUP BY l_suppkey, l_linestatus) \
             SELECT a.l_suppkey, a.q, b.q, c.q FROM v a JOIN v b ON a.l_suppkey = b.l_suppkey AND a.rn = b.rn + 1 \
             JOIN v c ON a.l_suppkey = c.l_suppkey AND a.rn = c.rn";
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(counts(&plan, "Scan: lineitem").len(), 1, "{plan}");
    assert_eq!(counts(&plan, "HashAggregate").len(), 1, "{plan}");
    let uses = counts(&plan, "Shared #0");
    assert_eq!(uses.len(), 3, "{plan}");
    assert!(uses.iter().all(|n| *n == uses[0]), "every use reads every row: {plan}");
    // The same answer as three views that differ (so nothing is shared), each aggregating on its own.
    let view = |k: usize| {
        format!(
            "v{k} AS (SELECT l_suppkey, l_linestatus, sum(l_quantity + {k} - {k}) AS q, \
             rank() OVER (PARTITION BY l_suppkey ORDER BY l_linestatus) AS rn FROM lineitem GROUP BY l_suppkey, l_linestatus)"
        )
    };
    let apart = format!(
        "WITH {}, {}, {} SELECT a.l_suppkey, a.q, b.q, c.q FROM v1 a JOIN v2 b ON a.l_suppkey = b.l_suppkey AND a.rn = b.rn + 1 \
         JOIN v3 c ON a.l_suppkey = c.l_suppkey AND a.rn = c.rn",
        view(1),
        view(2),
        view(3)
    );
    let apart_plan = text(&mut s, &format!("EXPLAIN ANALYZE {apart}"));
    assert_eq!(counts(&apart_plan, "HashAggregate").len(), 3, "{apart_plan}");
    let answer = rows(&mut s, q);
    assert_eq!(answer.len(), 100, "one row per supplier");
    assert_eq!(answer, rows(&mut s, &apart));
}

#[test]
fn a_view_read_twice_inside_a_shared_view_runs_once_too() {
    // TPC-DS q14's shape: its ROLLUP reads a union (shared) whose branches each read `cross_items`.
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("lineitem", &format!("{TPCH}/lineitem.parquet")).expect("register");
    // Rows of `w` twice, under two names and conditions that keep the same rows.
    let view = |w: [&str; 2], cond: [&str; 2], v: &str| {
        format!(
            "{w0} AS (SELECT l_suppkey, sum(l_quantity) AS q FROM lineitem WHERE {c0} GROUP BY l_suppkey), \
             {w1} AS (SELECT l_suppkey, sum(l_quantity) AS q FROM lineitem WHERE {c1} GROUP BY l_suppkey), \
             {v} AS (SELECT l_suppkey, sum(q) AS s, count(*) AS n FROM \
               (SELECT l_suppkey, q FROM {w0} UNION ALL SELECT l_suppkey, q * 2 FROM {w1}) GROUP BY l_suppkey)",
            w0 = w[0],
            w1 = w[1],
            c0 = cond[0],
            c1 = cond[1],
        )
    };
    let same = ["l_linenumber < 7", "l_linenumber < 7"];
    let q = format!("WITH {} SELECT 'a', l_suppkey, s, n FROM v UNION ALL SELECT 'b', l_suppkey, s + 1, n FROM v", view(["w", "w2"], same, "v"));
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(counts(&plan, "Scan: lineitem").len(), 1, "{plan}");
    assert_eq!(counts(&plan, "Shared #0").len(), 2, "{plan}");
    let inner = counts(&plan, "Shared #1");
    assert_eq!(inner.len(), 2, "{plan}");
    assert_eq!(inner[0], inner[1], "both uses read every row: {plan}");
    // The same answer with nothing shared: each use its own copy of the views.
    let apart = format!(
        "WITH {}, {} SELECT 'a', l_suppkey, s, n FROM v1 UNION ALL SELECT 'b', l_suppkey, s + 1, n FROM v2",
        view(["w1", "w2"], ["l_linenumber < 7", "l_linenumber <= 6"], "v1"),
        view(["w3", "w4"], ["l_linenumber - 1 < 6", "l_linenumber + 1 < 8"], "v2"),
    );
    let plan_apart = text(&mut s, &format!("EXPLAIN ANALYZE {apart}"));
    assert_eq!(counts(&plan_apart, "Scan: lineitem").len(), 4, "{plan_apart}");
    let answer = rows(&mut s, &q);
    assert!(answer.len() > 50, "{answer:?}");
    assert_eq!(answer, rows(&mut s, &apart));
}

/// TPC-DS q31's shape: a view read twice, each reader's condition pushed into its copy's scan.
const BY_STATUS: &str = "WITH y AS (SELECT o_orderpriority AS p, o_orderstatus AS s, count(*) AS n, sum(o_totalprice) AS t \
                         FROM orders GROUP BY o_orderpriority, o_orderstatus) \
                         SELECT a.p, a.n, b.n, a.t + b.t FROM y a JOIN y b ON a.p = b.p WHERE a.s = 'F' AND b.s = 'O'";

#[test]
fn copies_differing_in_their_scans_filters_read_the_table_once_each_filtering_on_top() {
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("orders", &format!("{TPCH}/orders.parquet")).expect("register");
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {BY_STATUS}"));
    let scans = counts(&plan, "Scan: orders");
    assert_eq!(scans.len(), 1, "{plan}");
    let either = ["filter=((o_orderstatus = 'F') OR (o_orderstatus = 'O'))", "filter=((o_orderstatus = 'O') OR (o_orderstatus = 'F'))"];
    assert!(either.iter().any(|f| plan.contains(f)), "{plan}");
    // Each use keeps its own status's groups of the shared aggregate.
    assert!(plan.contains("Filter: (o_orderstatus = 'F')") && plan.contains("Filter: (o_orderstatus = 'O')"), "{plan}");
    assert_eq!(counts(&plan, "Shared #0").len(), 2, "{plan}");
    assert_eq!(
        rows(&mut s, BY_STATUS),
        [
            "1-URGENT|1468|1488|415115255.99",
            "2-HIGH|1483|1506|421537072.86",
            "3-MEDIUM|1445|1421|401836969.83",
            "4-NOT SPECIFIED|1465|1482|414483637.55",
            "5-LOW|1443|1436|411084418.47"
        ]
    );
}

#[test]
fn scalar_aggregates_of_one_table_read_it_once() {
    // A GROUP BY without keys gives a row for no input, so the conditions cannot go on top of shared
    // copies; they go into one aggregate's aggregates instead (`scalar_aggregates`), over one scan.
    let sum = |status: &str| format!("(SELECT sum(o_totalprice) AS t FROM orders WHERE o_orderstatus = '{status}')");
    let q = format!("SELECT a.t, b.t FROM {} a, {} b", sum("F"), sum("O"));
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    s.register_path("orders", &format!("{TPCH}/orders.parquet")).expect("register");
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(counts(&plan, "Scan: orders").len(), 1, "{plan}");
    assert!(!plan.contains("Shared"), "{plan}");
    let alone: Vec<String> = ["F", "O"].iter().map(|st| rows(&mut s, &format!("SELECT t FROM {}", sum(st)))[0].clone()).collect();
    assert_eq!(rows(&mut s, &q), [alone.join("|")]);
}

#[test]
fn counts_over_one_join_with_their_own_dimension_filters_cross_joined_read_the_join_once() {
    // TPC-DS q88's shape: each count's use is read by the count's pipeline while the cross join
    // waits for its other side, so the merged join runs once without an unbounded queue.
    let count = |priority: &str| {
        format!("(SELECT count(*) AS n FROM lineitem JOIN orders ON l_orderkey = o_orderkey WHERE o_orderpriority = '{priority}')")
    };
    let q = format!("SELECT a.n, b.n, c.n FROM {} a, {} b, {} c", count("1-URGENT"), count("2-HIGH"), count("5-LOW"));
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    for t in ["lineitem", "orders"] {
        s.register_path(t, &format!("{TPCH}/{t}.parquet")).expect("register");
    }
    let plan = text(&mut s, &format!("EXPLAIN ANALYZE {q}"));
    assert_eq!(counts(&plan, "Scan: lineitem").len(), 1, "{plan}");
    assert_eq!(counts(&plan, "Shared #0").len(), 3, "{plan}");
    assert!(!plan.contains("buffered"), "{plan}");
    let alone: Vec<String> = ["1-URGENT", "2-HIGH", "5-LOW"].iter().map(|p| rows(&mut s, &format!("SELECT n FROM {}", count(p)))[0].clone()).collect();
    assert_eq!(rows(&mut s, &q), [alone.join("|")]);
}
