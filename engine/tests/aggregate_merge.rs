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
