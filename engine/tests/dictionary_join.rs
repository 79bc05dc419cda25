//! An inner join hands out the build-side strings an aggregate right above groups by dictionary-encoded
//! (keyed by build row); the aggregate interns each build side's strings once. The answers must be
//! those of plain strings, also when the join and the aggregate spill.

mod common;

use common::physical;
use riffle_engine::{ExecConfig, Session};

const TPCH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tpch-sf0.01");

fn session(config: ExecConfig) -> Session {
    let mut s = Session::new(config);
    for t in ["lineitem", "part", "supplier", "nation"] {
        s.register_path(t, &format!("{TPCH}/{t}.parquet")).expect("register");
    }
    s
}

/// Part brands and types (many parts share one) with the supplier's nation name (through a second
/// join on the probe side) and a probe-side string.
const BY_BRAND: &str = "SELECT p_brand, p_type, n_name, l_returnflag, count(*), sum(l_quantity) \
    FROM lineitem JOIN supplier ON l_suppkey = s_suppkey JOIN nation ON s_nationkey = n_nationkey JOIN part ON l_partkey = p_partkey \
    GROUP BY p_brand, p_type, n_name, l_returnflag";

/// The same groups, the keys made expressions: nothing is dictionary-encoded.
const BY_BRAND_PLAIN: &str = "SELECT p_brand || '', p_type || '', n_name || '', l_returnflag, count(*), sum(l_quantity) \
    FROM lineitem JOIN supplier ON l_suppkey = s_suppkey JOIN nation ON s_nationkey = n_nationkey JOIN part ON l_partkey = p_partkey \
    GROUP BY p_brand || '', p_type || '', n_name || '', l_returnflag";

/// The query's rows, sorted.
fn rows(s: &mut Session, q: &str) -> Vec<String> {
    let mut rows = common::rows(s, q);
    rows.sort();
    rows
}

#[test]
fn build_side_strings_grouped_right_above_the_join_arrive_dictionary_encoded_with_the_same_answer() {
    let mut s = session(ExecConfig { threads: 2, ..ExecConfig::default() });
    let plan = physical(&mut s, BY_BRAND);
    // The join right under the aggregate (whichever the join order put there).
    let join = plan.lines().find(|l| l.contains("HashJoin")).unwrap_or_else(|| panic!("{plan}"));
    assert!(join.contains(" dictionary=["), "{plan}");
    assert!(!physical(&mut s, BY_BRAND_PLAIN).contains("dictionary="));
    let expected = rows(&mut s, BY_BRAND_PLAIN);
    assert!(expected.len() > 1000, "{}", expected.len());
    assert_eq!(rows(&mut s, BY_BRAND), expected);
    // A brand also read by an aggregate stays a plain string; the type is still encoded.
    let mixed = "SELECT p_type, max(p_brand), count(*) FROM lineitem JOIN part ON l_partkey = p_partkey GROUP BY p_type";
    let plan = physical(&mut s, mixed);
    assert!(plan.contains("dictionary=[p_type]"), "{plan}");
    let plain = "SELECT p_type || '', max(p_brand), count(*) FROM lineitem JOIN part ON l_partkey = p_partkey GROUP BY p_type || ''";
    assert_eq!(rows(&mut s, mixed), rows(&mut s, plain));
    // Spilling, one row per batch, one thread: the same.
    for config in [
        ExecConfig { threads: 1, memory_limit: 256 * 1024, ..ExecConfig::default() },
        ExecConfig { threads: 2, batch_size: 1, ..ExecConfig::default() },
        ExecConfig { threads: 2, force_spill: true, ..ExecConfig::default() },
    ] {
        let mut s = session(config);
        assert_eq!(rows(&mut s, BY_BRAND), expected);
    }
}
