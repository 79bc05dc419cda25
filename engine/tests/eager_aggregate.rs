//! Eager aggregation: an aggregate over a join whose aggregates read one side is computed in part
//! on that side before the join, with the same answers, including where the other side repeats a
//! join key (each partial group then counts once per match, as its rows did).

mod common;

use common::{physical, rows, write_table};
use riffle_engine::format::format_value;
use riffle_engine::{ExecConfig, Session};

/// 20,000 sales of 100 products; products belong to 10 groups; `offer` repeats each product key
/// 3 times (a join that multiplies rows).
fn sales() -> (tempfile::TempDir, Session) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let sale = write_table(dir.path(), "sale", 20_000, &[("id", &|i| i), ("product", &|i| i % 100), ("qty", &|i| (i * 7) % 13)]);
    let product = write_table(dir.path(), "product", 100, &[("p_key", &|i| i), ("p_group", &|i| i % 10)]);
    let offer = write_table(dir.path(), "offer", 300, &[("o_product", &|i| i % 100), ("o_rank", &|i| i / 100)]);
    for (name, path) in [("sale", sale), ("product", product), ("offer", offer)] {
        s.register_path(name, &path).expect("register");
    }
    (dir, s)
}

/// The aggregate line below the join line, if any (EXPLAIN lists inputs after their consumer).
fn aggregates_below_join(plan: &str) -> bool {
    let join = plan.lines().position(|l| l.contains("HashJoin")).unwrap_or(usize::MAX);
    plan.lines().skip(join).any(|l| l.contains("HashAggregate"))
}

#[test]
fn sales_are_grouped_by_product_before_joining_the_products() {
    let (_dir, mut s) = sales();
    let q = "SELECT p_group, count(*), count(qty), sum(qty), min(qty), max(id), avg(qty) \
             FROM sale JOIN product ON product = p_key GROUP BY p_group ORDER BY p_group";
    let plan = physical(&mut s, q);
    assert!(aggregates_below_join(&plan), "a partial aggregate of the sales runs before the join:\n{plan}");
    let expected: Vec<String> = (0..10i64)
        .map(|g| {
            let ids: Vec<i64> = (0..20_000).filter(|i| i % 100 % 10 == g).collect();
            let qty: Vec<i64> = ids.iter().map(|i| (i * 7) % 13).collect();
            let sum: i64 = qty.iter().sum();
            let avg = sum as f64 / qty.len() as f64;
            format!(
                "{g} {} {} {sum} {} {} {}",
                ids.len(),
                qty.len(),
                qty.iter().min().unwrap_or(&0),
                ids.iter().max().unwrap_or(&0),
                format_value(&(std::sync::Arc::new(arrow::array::Float64Array::from(vec![avg])) as _), 0).expect("f").unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(rows(&mut s, q), expected);
}

#[test]
fn a_repeated_join_key_counts_each_partial_group_once_per_match() {
    let (_dir, mut s) = sales();
    // Keys from both sides: the offer's rank and the sale's product.
    let q = "SELECT o_rank, product % 2 AS parity, count(*), sum(qty) FROM sale JOIN offer ON product = o_product \
             GROUP BY o_rank, product % 2 ORDER BY o_rank, parity";
    let plan = physical(&mut s, q);
    assert!(aggregates_below_join(&plan), "{plan}");
    let mut expected = Vec::new();
    for rank in 0..3i64 {
        for parity in 0..2i64 {
            // Each sale matches one offer row of each rank.
            let qty: Vec<i64> = (0..20_000i64).filter(|i| i % 100 % 2 == parity).map(|i| (i * 7) % 13).collect();
            expected.push(format!("{rank} {parity} {} {}", qty.len(), qty.iter().sum::<i64>()));
        }
    }
    assert_eq!(rows(&mut s, q), expected);
}

#[test]
fn an_aggregate_the_join_shrinks_is_left_after_it() {
    let (_dir, mut s) = sales();
    // Ten products of 100 join: grouping all sales first would do more work than the join leaves.
    let q = "SELECT p_group, sum(qty) FROM sale JOIN product ON product = p_key WHERE p_group = 7 GROUP BY p_group";
    let plan = physical(&mut s, q);
    assert!(!aggregates_below_join(&plan), "{plan}");
    let sum: i64 = (0..20_000i64).filter(|i| i % 100 % 10 == 7).map(|i| (i * 7) % 13).sum();
    assert_eq!(rows(&mut s, q), vec![format!("7 {sum}")]);
}
