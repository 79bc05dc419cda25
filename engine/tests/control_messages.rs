//! Watermarks, barriers and end-of-input travel in order through every operator and exchange.

use std::sync::{Arc, Mutex};

use riffle_engine::exec::execute_into;
use riffle_engine::message::Message;
use riffle_engine::{ExecConfig, Session};

fn messages(sql: &str, threads: usize) -> Vec<(usize, Message)> {
    let mut session = Session::new(ExecConfig { threads, batch_size: 2, stream: true, test_barriers: true, ..ExecConfig::default() });
    session
        .sql("CREATE TABLE t (a INT, s VARCHAR, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)")
        .expect("create");
    let rows: Vec<String> =
        (1..=10).map(|i| format!("({i}, '{}', TIMESTAMP '2026-01-01 00:00:{i:02}')", (b'a' + i as u8 - 1) as char)).collect();
    session.sql(&format!("INSERT INTO t VALUES {}", rows.join(", "))).expect("insert");
    let stmt = riffle_engine::session::parse_sql(sql).expect("parse").remove(0);
    let sqlparser::ast::Statement::Query(q) = stmt else { panic!("a query") };
    let (_, physical) = session.plan_query(&q).expect("plan");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    execute_into(&physical, &session.config, Arc::new(move |p, m| { sink.lock().expect("lock").push((p, m)); Ok(()) })).expect("runs");
    let out = seen.lock().expect("lock").clone();
    out
}

/// Per root partition: watermarks never go back, barrier epochs increase, End comes once and last.
fn check_order(msgs: &[(usize, Message)]) -> (usize, usize, usize) {
    let partitions: Vec<usize> = {
        let mut p: Vec<usize> = msgs.iter().map(|(p, _)| *p).collect();
        p.sort();
        p.dedup();
        p
    };
    let (mut rows, mut watermarks, mut barriers) = (0, 0, 0);
    for p in partitions {
        let mine: Vec<&Message> = msgs.iter().filter(|(q, _)| *q == p).map(|(_, m)| m).collect();
        let (mut wm, mut epoch) = (i64::MIN, 0u64);
        for (i, m) in mine.iter().enumerate() {
            match m {
                Message::Batch(b) => rows += b.num_rows(),
                Message::Watermark(t) => {
                    assert!(*t >= wm, "watermark went back: {t} after {wm}");
                    wm = *t;
                    watermarks += 1;
                }
                Message::Barrier(e) => {
                    assert!(*e > epoch, "barrier {e} after {epoch}");
                    epoch = *e;
                    barriers += 1;
                }
                Message::Idle => {}
                Message::End => assert_eq!(i, mine.len() - 1, "End must be last"),
            }
        }
        assert!(matches!(mine.last(), Some(Message::End)), "partition {p} ends with End");
    }
    (rows, watermarks, barriers)
}

#[test]
fn control_messages_pass_through_stateless_operators() {
    for threads in [1, 2] {
        let msgs = messages("SELECT a + 1, upper(s), ts FROM t WHERE a > 2", threads);
        let (rows, watermarks, barriers) = check_order(&msgs);
        assert_eq!(rows, 8);
        assert!(watermarks >= 1, "watermarks reach the sink");
        assert!(barriers >= 1, "barriers reach the sink");
    }
}

#[test]
fn control_messages_pass_through_a_join_probe_and_an_exchange() {
    // LIMIT gathers two partitions into one through an exchange that aligns barriers and watermarks.
    // The filter on the right keeps it the smaller side, hashed: x, with the time, is the probe side.
    let msgs = messages("SELECT x.a, y.s, x.ts FROM t x JOIN t y ON x.a = y.a WHERE y.a <= 9 LIMIT 100", 2);
    let (rows, watermarks, barriers) = check_order(&msgs);
    assert_eq!(rows, 9);
    assert!(watermarks >= 1 && barriers >= 1);
    assert!(msgs.iter().all(|(p, _)| *p == 0), "one root partition after the gather");
}

#[test]
fn barriers_pass_through_aggregates_and_sorts_once_every_input_partition_delivered_them() {
    for threads in [1, 2] {
        let msgs = messages("SELECT s, count(*) AS n FROM t WHERE a > 1 GROUP BY s ORDER BY s", threads);
        let (rows, _, barriers) = check_order(&msgs);
        assert_eq!(rows, 9);
        assert!(barriers >= 1, "barriers reach the sink through the aggregate and the sort ({threads} threads)");
        // The scan of 10 rows in batches of 2 injects epochs 1 and 2 in every partition that reads
        // two batches or more; each epoch comes out once per root partition, whatever the threads.
        let roots: std::collections::BTreeSet<usize> = msgs.iter().map(|(p, _)| *p).collect();
        for p in roots {
            let epochs: Vec<u64> = msgs.iter().filter(|(q, m)| *q == p && matches!(m, Message::Barrier(_))).map(|(_, m)| match m {
                Message::Barrier(e) => *e,
                _ => 0,
            }).collect();
            let mut dedup = epochs.clone();
            dedup.dedup();
            assert_eq!(epochs, dedup, "partition {p}: each epoch once");
        }
    }
}
