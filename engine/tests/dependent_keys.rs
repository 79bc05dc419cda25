//! Group keys that depend on a key of their table (and on keys joined to it) are carried as
//! `any_value`, not grouped by; a column that only looks like a key (a value twice, a NULL) is not
//! taken for one, and the answers are those of grouping by every key.

mod common;

use common::{physical, rows, write_table};
use riffle_engine::{ExecConfig, Session};

/// `customer` keyed by `c_key` (its other columns repeat), `nation` keyed by `n_key`, 5,000 orders
/// of the customers; `twin` has `t_key` with one value twice, `gap` has `g_key` with a NULL.
fn tables() -> (tempfile::TempDir, Session) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    let orders = write_table(dir.path(), "orders", 5_000, &[("o_key", &|i| i), ("o_customer", &|i| (i * 7) % 300), ("o_price", &|i| i % 97)]);
    let customer = write_table(dir.path(), "customer", 300, &[("c_key", &|i| i), ("c_nation", &|i| i % 25), ("c_segment", &|i| i % 5), ("c_balance", &|i| (i * 13) % 50)]);
    let nation = write_table(dir.path(), "nation", 25, &[("n_key", &|i| i), ("n_region", &|i| i % 5)]);
    for (name, path) in [("orders", orders), ("customer", customer), ("nation", nation)] {
        s.register_path(name, &path).expect("register");
    }
    s.sql("CREATE TABLE twin AS SELECT c_key % 299 AS t_key, c_segment AS t_segment FROM customer").expect("twin");
    s.sql("CREATE TABLE gap AS SELECT CASE WHEN c_key = 5 THEN NULL ELSE c_key END AS g_key, c_key AS g_value FROM customer").expect("gap");
    (dir, s)
}

/// The group keys of the plan's (first) hash aggregate.
fn grouped_by(plan: &str) -> String {
    let line = plan.lines().find(|l| l.contains("HashAggregate")).unwrap_or_default();
    line.split("group=[").nth(1).and_then(|g| g.split(']').next()).unwrap_or_default().to_string()
}

#[test]
fn columns_of_a_keyed_row_and_of_the_rows_joined_by_key_are_carried() {
    let (_dir, mut s) = tables();
    let q = "SELECT c_key, c_segment, n_region, c_balance, sum(o_price), count(*) FROM orders, customer, nation \
             WHERE o_customer = c_key AND c_nation = n_key GROUP BY c_key, c_segment, n_region, c_balance ORDER BY c_key";
    let plan = physical(&mut s, q);
    assert_eq!(grouped_by(&plan), "c_key", "{plan}");
    assert!(plan.contains("any_value(c_segment)") && plan.contains("any_value(n_region)"), "{plan}");
    let expected: Vec<String> = (0..300i64)
        .map(|c| {
            let prices: Vec<i64> = (0..5_000i64).filter(|o| (o * 7) % 300 == c).map(|o| o % 97).collect();
            format!("{c} {} {} {} {} {}", c % 5, (c % 25) % 5, (c * 13) % 50, prices.iter().sum::<i64>(), prices.len())
        })
        .collect();
    assert_eq!(rows(&mut s, q), expected);
}

#[test]
fn a_column_with_a_value_twice_or_a_null_is_no_key() {
    let (_dir, mut s) = tables();
    let twin = "SELECT t_key, t_segment, count(*) FROM twin GROUP BY t_key, t_segment ORDER BY t_key, t_segment";
    assert_eq!(grouped_by(&physical(&mut s, twin)), "t_key, t_segment");
    // c_key 0 and 299 both became t_key 0, with segments 0 and 4: two groups.
    assert_eq!(rows(&mut s, twin)[..2], ["0 0 1".to_string(), "0 4 1".to_string()]);
    let gap = "SELECT g_key, g_value, count(*) FROM gap GROUP BY g_key, g_value ORDER BY g_key NULLS FIRST LIMIT 2";
    assert_eq!(grouped_by(&physical(&mut s, gap)), "g_key, g_value");
    assert_eq!(rows(&mut s, gap), ["NULL 5 1".to_string(), "0 0 1".to_string()]);
}

#[test]
fn keys_that_depend_on_no_kept_key_stay() {
    let (_dir, mut s) = tables();
    // c_segment repeats and is no key: the nation's region is not taken to follow from it (here it
    // happens to: segment and region are both the customer key modulo 5).
    let q = "SELECT c_segment, n_region, count(*) FROM customer, nation WHERE c_nation = n_key GROUP BY c_segment, n_region ORDER BY 1, 2";
    assert_eq!(grouped_by(&physical(&mut s, q)), "c_segment, n_region");
    assert_eq!(rows(&mut s, q), (0..5).map(|k| format!("{k} {k} 60")).collect::<Vec<_>>());
}
