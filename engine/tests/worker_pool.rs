//! Queries share one pool of worker threads: running many queries starts no thread per query, and
//! queries running at the same time from several threads each get their own right answer.

use riffle_engine::{ExecConfig, Session};

/// Thread ids of the pool's workers (threads named `riffle-worker-…`).
fn worker_threads() -> std::collections::BTreeSet<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return Default::default() };
    dir.flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("riffle-worker")))
        .map(|t| t.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The workers once the pool's `n` have started: a new thread takes its name only when it first runs,
/// so one that a query did not need may not be named yet.
fn started_workers(n: usize) -> std::collections::BTreeSet<String> {
    let started = std::time::Instant::now();
    loop {
        let workers = worker_threads();
        if workers.len() >= n || started.elapsed() > std::time::Duration::from_secs(5) {
            return workers;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn session() -> Session {
    let mut s = Session::new(ExecConfig { threads: 2, batch_size: 3, stream: false, ..ExecConfig::default() });
    s.sql("CREATE TABLE t AS SELECT * FROM (VALUES (1, 'a'), (2, 'b'), (3, 'a'), (4, 'c'), (5, 'a'), (6, 'b')) v(n, s)").expect("create");
    s
}

fn answer(s: &mut Session, k: i64) -> String {
    let r = s
        .sql(&format!("SELECT s, sum(n * {k}) FROM t x JOIN t y USING (n, s) GROUP BY s ORDER BY s"))
        .expect("query runs");
    let b = &r.batches[0];
    (0..b.num_rows())
        .map(|i| {
            let cell = |c: usize| riffle_engine::format::format_value(b.column(c), i).expect("format").unwrap_or_default();
            format!("{}={}", cell(0), cell(1))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn queries_share_the_pool_and_run_side_by_side() {
    let mut s = session();
    assert_eq!(answer(&mut s, 1), "a=9,b=8,c=4");
    // Two threads per query here, one query at a time: the pool has two workers.
    let workers = started_workers(2);
    assert_eq!(workers.len(), 2, "the pool's workers outlive the query");
    for k in 1..=40 {
        assert_eq!(answer(&mut s, k), format!("a={},b={},c={}", 9 * k, 8 * k, 4 * k));
    }
    assert_eq!(worker_threads(), workers, "40 more queries ran on the same workers");

    let handles: Vec<_> = (1..=4i64)
        .map(|t| {
            std::thread::spawn(move || {
                let mut s = session();
                for k in 1..=15 {
                    let k = k * t;
                    assert_eq!(answer(&mut s, k), format!("a={},b={},c={}", 9 * k, 8 * k, 4 * k));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a querying thread failed");
    }
    a_failing_query_leaves_the_pool_working();
}

/// Called from the one test: queries run side by side get workers of their own, so a second test
/// running queries at the same time would change the pool's size under the first.
fn a_failing_query_leaves_the_pool_working() {
    let mut s = session();
    for _ in 0..5 {
        let Err(err) = s.sql("SELECT n // (n - n) FROM t x JOIN t y USING (n)") else { panic!("division by zero must fail") };
        assert!(err.to_string().contains("division by zero"), "{err}");
        assert_eq!(answer(&mut s, 2), "a=18,b=16,c=8");
    }
}
