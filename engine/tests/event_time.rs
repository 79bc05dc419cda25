//! Event time run as a stream: sources emit watermarks from `WATERMARK FOR`, window aggregates emit
//! each window once the watermark passes its end (before the input ends), and rows that come after
//! their window was emitted are dropped and counted.

use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
use riffle_engine::exec::execute_into;
use riffle_engine::message::Message;
use riffle_engine::{ExecConfig, Session};

fn session(threads: usize, batch_size: usize, stream: bool, delay: &str, seconds: &[u32]) -> Session {
    let mut s = Session::new(ExecConfig { threads, batch_size, stream, ..ExecConfig::default() });
    s.sql(&format!("CREATE TABLE ev (k INT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '{delay}' SECOND)")).expect("create");
    let rows: Vec<String> =
        seconds.iter().enumerate().map(|(i, t)| format!("({i}, TIMESTAMP '2026-01-01 00:00:00' + INTERVAL '{t}' SECOND)")).collect();
    s.sql(&format!("INSERT INTO ev VALUES {}", rows.join(", "))).expect("insert");
    s
}

/// Every message reaching the root, by root partition.
fn messages(s: &Session, sql: &str) -> Vec<(usize, Message)> {
    let (_, physical) = s.plan_sql(sql).expect("plan");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    execute_into(&physical, &s.config, Arc::new(move |p, m| {
        sink.lock().expect("lock").push((p, m));
        Ok(())
    }))
    .expect("runs");
    let out = seen.lock().expect("lock").clone();
    out
}

const SECOND: i64 = 1_000_000;
const EPOCH_2026: i64 = 1_767_225_600 * SECOND;

fn window_ends(b: &RecordBatch) -> Vec<i64> {
    b.column(0).as_primitive::<TimestampMicrosecondType>().values().iter().map(|v| (v - EPOCH_2026) / SECOND).collect()
}

#[test]
fn window_aggregate_emits_each_window_once_the_watermark_passes_its_end() {
    let seconds: Vec<u32> = (0..30).collect();
    for threads in [1, 2] {
        let s = session(threads, 2, true, "2", &seconds);
        let msgs = messages(
            &s,
            "SELECT window_end, count(*) FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '5' SECOND)) GROUP BY window_start, window_end",
        );
        let mut counts = std::collections::BTreeMap::new();
        let mut early = 0;
        let roots: std::collections::BTreeSet<usize> = msgs.iter().map(|(p, _)| *p).collect();
        for root in roots {
            let mine: Vec<&Message> = msgs.iter().filter(|(p, _)| *p == root).map(|(_, m)| m).collect();
            let mut last_watermark = i64::MIN;
            for (i, m) in mine.iter().enumerate() {
                match m {
                    Message::Batch(b) => {
                        let ends = window_ends(b);
                        for (end, n) in ends.iter().zip(b.column(1).as_primitive::<Int64Type>().values()) {
                            *counts.entry(*end).or_insert(0) += *n;
                        }
                        // Emitted after the watermark that came before it could close it ...
                        assert!(ends.iter().all(|e| (*e * SECOND + EPOCH_2026) > last_watermark), "window emitted twice or late");
                        // ... and before the input ended, if a watermark closed it.
                        let next = mine[i..].iter().find_map(|m| match m {
                            Message::Watermark(w) => Some(*w),
                            _ => None,
                        });
                        if let Some(w) = next {
                            assert!(ends.iter().all(|e| e * SECOND + EPOCH_2026 <= w), "a window came out before the watermark passed its end");
                            early += 1;
                        }
                    }
                    Message::Watermark(w) => last_watermark = *w,
                    _ => {}
                }
            }
        }
        let want: std::collections::BTreeMap<i64, i64> = (1..=6).map(|w| (w * 5, 5)).collect();
        assert_eq!(counts, want, "{threads} threads: every window once, with all its rows");
        // The last watermark is 27 s: windows ending at 5 … 25 s close before the end of input. With
        // two partitions that holds only if the second has read before the first finished (a
        // partition that has not reported a watermark yet holds event time back).
        if threads == 1 {
            assert!(early >= 5, "{early} windows came out before the end of input");
        }
    }
}

#[test]
fn rows_behind_the_watermark_are_dropped_and_counted() {
    // With no delay, the row at 4 s comes after the watermark reached 10 s: [0 s, 5 s) was emitted.
    let seconds = [1, 2, 3, 10, 11, 4, 12];
    let query = "SELECT window_start, count(*) AS n FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '5' SECOND)) \
                 GROUP BY window_start, window_end ORDER BY window_start";
    let counts = |stream: bool| -> Vec<i64> {
        let mut s = session(1, 1, stream, "0", &seconds);
        let r = s.sql(query).expect("runs");
        r.batches.iter().flat_map(|b| b.column(1).as_primitive::<Int64Type>().values().to_vec()).collect()
    };
    assert_eq!(counts(false), vec![4, 3], "a batch query has no late rows");
    assert_eq!(counts(true), vec![3, 3], "the stream drops the late row");
    let mut s = session(1, 1, true, "0", &seconds);
    let plan = s.sql(&format!("EXPLAIN ANALYZE {query}")).expect("explain");
    let text = plan.batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(text.contains("WindowAggregate") && text.contains("late_rows=1"), "{text}");
}

/// HOP windows aggregated by slide (a row updates its slide's groups; a window merges its slides')
/// give what aggregating each window's rows gives, late rows included: a row late for some of its
/// windows still counts in the others. `count(window_start)` (a window column as an argument) keeps
/// the second plan.
#[test]
fn hop_windows_by_slide_match_hop_windows_row_by_row_late_rows_included() {
    // Out of order with a 2 s delay: 3 s comes after the watermark reached 7 s (late for the windows
    // ending at 4 and 6 s, not those ending at 8 and 10 s); 1 s after 13 s is late for all.
    let seconds = [1, 2, 5, 8, 9, 3, 6, 7, 12, 15, 1, 11, 16, 20, 13, 22, 30, 31, 25];
    let sliced = "SELECT window_start, window_end, k % 3 AS g, count(*) AS n, sum(k) AS s, min(k) AS lo, max(ts) AS hi \
                  FROM TABLE(HOP(TABLE ev, DESCRIPTOR(ts), INTERVAL '2' SECOND, INTERVAL '8' SECOND)) \
                  GROUP BY window_start, window_end, k % 3";
    let by_row = sliced.replace("count(*) AS n", "count(window_start) AS n");
    let answer = |s: &mut Session, q: &str| -> (Vec<String>, String) {
        let r = s.sql(q).expect("runs");
        let mut rows = vec![];
        for b in &r.batches {
            for i in 0..b.num_rows() {
                let row: Vec<String> =
                    b.columns().iter().map(|c| riffle_engine::format::format_value(c, i).expect("format").unwrap_or_default()).collect();
                rows.push(row.join("|"));
            }
        }
        rows.sort();
        let plan = s.sql(&format!("EXPLAIN ANALYZE {q}")).expect("explain");
        let text = plan.batches[0].column(0).as_string::<i32>().value(0).to_string();
        let late = text.split("late_rows=").nth(1).and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()).unwrap_or("0").to_string();
        (rows, late)
    };
    // Which rows are late depends on how two partitions interleave: with two, none is (a 30 s delay).
    for (threads, batch_size, delay) in [(1, 1, "2"), (1, 3, "2"), (1, 1024, "2"), (2, 1, "30"), (2, 2, "30")] {
        let mut s = session(threads, batch_size, true, delay, &seconds);
        let (want, want_late) = answer(&mut s, &by_row);
        let (got, got_late) = answer(&mut s, sliced);
        assert!(want.len() > 20, "{want:?}");
        assert_eq!(got, want, "{threads} threads, batches of {batch_size}");
        assert_eq!(got_late, want_late, "{threads} threads, batches of {batch_size}: late window rows");
        if threads == 1 && batch_size == 1 {
            assert_ne!(want_late, "0", "the data has late rows");
        }
    }
    let mut s = session(1, 2, true, "2", &seconds);
    let notes = s.sql(&format!("EXPLAIN {sliced}")).expect("explain");
    let text = notes.batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(text.contains("a window merges its slides'"), "{text}");
    let notes = s.sql(&format!("EXPLAIN {by_row}")).expect("explain");
    let text = notes.batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(!text.contains("slides"), "{text}");
}

#[test]
fn scans_emit_the_declared_watermark_as_event_time_advances() {
    let s = session(1, 2, true, "5", &[10, 8, 12, 20, 19, 30]);
    let msgs = messages(&s, "SELECT k, ts FROM ev");
    let watermarks: Vec<i64> = msgs
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Watermark(w) => Some((w - EPOCH_2026) / SECOND),
            _ => None,
        })
        .collect();
    // Batches of two rows: max event times 10, 20, 30 s, less the 5 s delay.
    assert_eq!(watermarks, vec![5, 15, 25]);
}

#[test]
fn a_slow_consumer_holds_an_endless_source_back() {
    let progress = Arc::new(riffle_engine::exec::Progress::default());
    let config = ExecConfig { threads: 2, stream: true, progress: Some(progress.clone()), ..ExecConfig::default() };
    let mut s = Session::new(config);
    s.sql(
        "CREATE TABLE bid (price BIGINT, dateTime TIMESTAMP(3), WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND) \
         WITH ('connector' = 'nexmark', 'table' = 'bid', 'first-event.rate' = '1000')",
    )
    .expect("create");
    let (_, physical) = s
        .plan_sql("SELECT window_start, count(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '10' SECOND)) GROUP BY window_start, window_end")
        .expect("plan");
    let windows = Arc::new(Mutex::new(0usize));
    let seen = windows.clone();
    // Takes 30 ms per window and stops the query after ten.
    let result = execute_into(&physical, &s.config, Arc::new(move |_, m| {
        if let Message::Batch(b) = m {
            std::thread::sleep(std::time::Duration::from_millis(30));
            let mut n = seen.lock().expect("lock");
            *n += b.num_rows();
            if *n >= 10 {
                return Err(riffle_engine::RiffleError::exec("enough"));
            }
        }
        Ok(())
    }));
    assert!(result.is_err(), "the consumer stopped the endless query");
    let read = progress.rows_read.load(std::sync::atomic::Ordering::Relaxed);
    // 9,200 bids per window: ten consumed, a few queued (the window output holds 4 batches) and the
    // open ones. Without backpressure the generator makes millions of rows in those 300 ms.
    assert!(read < 40 * 9_200, "the source ran ahead of its consumer: {read} rows read for 10 windows consumed");
}

/// Session rows (window_start, window_end as seconds, count) of a result, sorted.
fn sessions_of(batches: &[RecordBatch]) -> Vec<(i64, i64, i64)> {
    let mut out: Vec<(i64, i64, i64)> = batches
        .iter()
        .flat_map(|b| {
            let at = |c: usize| b.column(c).as_primitive::<TimestampMicrosecondType>().values().iter().map(|v| (v - EPOCH_2026) / SECOND).collect::<Vec<_>>();
            let counts = b.column(2).as_primitive::<Int64Type>().values().to_vec();
            at(0).into_iter().zip(at(1)).zip(counts).map(|((s, e), n)| (s, e, n)).collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

const SESSIONS: &str = "SELECT window_start, window_end, count(*) FROM TABLE(SESSION(TABLE ev, DESCRIPTOR(ts), INTERVAL '3' SECOND)) \
                        GROUP BY window_start, window_end";

#[test]
fn session_aggregate_emits_each_session_once_the_watermark_passes_its_end() {
    // Sessions with a 3 s gap: [0, 5) of three rows, [10, 14), [20, 25), [40, 43).
    let seconds = [0, 1, 2, 10, 11, 20, 21, 22, 40];
    for threads in [1, 2] {
        let s = session(threads, 1, true, "0", &seconds);
        let msgs = messages(&s, SESSIONS);
        let mut seen = vec![];
        let mut before_end = 0;
        let mut last_watermark = i64::MIN;
        for (i, (_, m)) in msgs.iter().enumerate() {
            match m {
                Message::Batch(b) => {
                    let rows = sessions_of(std::slice::from_ref(b));
                    for (_, end, _) in &rows {
                        assert!(end * SECOND + EPOCH_2026 > last_watermark, "a session came out after a watermark past its end");
                        // Emitted once a watermark at or past its end arrived, before that watermark goes on.
                        let next = msgs[i..].iter().find_map(|(_, m)| match m {
                            Message::Watermark(w) => Some(*w),
                            _ => None,
                        });
                        if let Some(w) = next {
                            assert!(end * SECOND + EPOCH_2026 <= w, "a session came out before the watermark passed its end");
                            before_end += 1;
                        }
                    }
                    seen.extend(rows);
                }
                Message::Watermark(w) => last_watermark = *w,
                _ => {}
            }
        }
        seen.sort();
        assert_eq!(seen, vec![(0, 5, 3), (10, 14, 2), (20, 25, 3), (40, 43, 1)], "{threads} threads");
        if threads == 1 {
            assert_eq!(before_end, 3, "the sessions before the last close before the end of input");
        }
        let explain = s.plan_sql(SESSIONS).expect("plan").1.display_indent(true, &|_| String::new());
        assert!(explain.contains("SessionAggregate") && !explain.contains("Sort"), "{explain}");
    }
}

#[test]
fn a_row_that_bridges_two_open_sessions_merges_them() {
    // 0 s and 4 s start two sessions (gap 3 s); 2 s, within the 5 s watermark delay, joins them.
    for seconds in [[0, 4, 2, 30], [4, 0, 2, 30], [2, 0, 4, 30]] {
        let mut batch = session(1, 1, false, "5", &seconds);
        let mut stream = session(1, 1, true, "5", &seconds);
        let want = sessions_of(&batch.sql(SESSIONS).expect("batch").batches);
        assert_eq!(want, vec![(0, 7, 3), (30, 33, 1)]);
        assert_eq!(sessions_of(&stream.sql(SESSIONS).expect("stream").batches), want, "{seconds:?}");
    }
}

#[test]
fn a_row_whose_session_ended_behind_the_watermark_is_dropped_and_counted() {
    // No delay: when 2 s arrives the watermark is at 10 s, and [1 s, 4 s) was emitted.
    let seconds = [1, 10, 2];
    let mut batch = session(1, 1, false, "0", &seconds);
    assert_eq!(sessions_of(&batch.sql(SESSIONS).expect("batch").batches), vec![(1, 5, 2), (10, 13, 1)]);
    let mut stream = session(1, 1, true, "0", &seconds);
    assert_eq!(sessions_of(&stream.sql(SESSIONS).expect("stream").batches), vec![(1, 4, 1), (10, 13, 1)]);
    let plan = stream.sql(&format!("EXPLAIN ANALYZE {SESSIONS}")).expect("explain");
    let text = plan.batches[0].column(0).as_string::<i32>().value(0).to_string();
    assert!(text.contains("SessionAggregate") && text.contains("late_rows=1"), "{text}");
}

#[test]
fn sessions_over_a_stream_without_end_come_out_as_they_close() {
    let table = |bound: &str| {
        format!(
            "CREATE TABLE bid (bidder BIGINT, dateTime TIMESTAMP(3), WATERMARK FOR dateTime AS dateTime - INTERVAL '4' SECOND) \
             WITH ('connector' = 'nexmark', 'table' = 'bid', 'first-event.rate' = '1000'{bound})"
        )
    };
    let query = "SELECT bidder, window_start, window_end, count(*) FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(dateTime), \
                 INTERVAL '2' SECOND)) GROUP BY bidder, window_start, window_end";
    let rows = |batches: &[RecordBatch]| -> Vec<(i64, i64, i64, i64)> {
        batches
            .iter()
            .flat_map(|b| {
                let ts = |c: usize| b.column(c).as_primitive::<TimestampMicrosecondType>().values().to_vec();
                let (bidders, starts, ends) = (b.column(0).as_primitive::<Int64Type>().values().to_vec(), ts(1), ts(2));
                let counts = b.column(3).as_primitive::<Int64Type>().values().to_vec();
                (0..b.num_rows()).map(move |i| (bidders[i], starts[i], ends[i], counts[i])).collect::<Vec<_>>()
            })
            .collect()
    };
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    s.sql(&table("")).expect("create");
    let (_, physical) = s.plan_sql(query).expect("plan");
    let seen = Arc::new(Mutex::new(Vec::<RecordBatch>::new()));
    let sink = seen.clone();
    let result = execute_into(&physical, &s.config, Arc::new(move |_, m| {
        if let Message::Batch(b) = m {
            let mut got = sink.lock().expect("lock");
            got.push(b);
            if got.iter().map(|b| b.num_rows()).sum::<usize>() >= 200 {
                return Err(riffle_engine::RiffleError::exec("enough"));
            }
        }
        Ok(())
    }));
    assert!(result.is_err(), "the consumer stopped the endless query");
    let streamed = rows(&seen.lock().expect("lock"));
    assert!(streamed.len() >= 200);
    // The same events, bounded (the first 300 s of them): every session that closed in the stream
    // within those 300 s is one of the batch answer's (one ending later may hold later events).
    let mut b = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
    b.sql(&table(", 'events.num' = '300000'")).expect("create");
    let batch: std::collections::HashSet<_> = rows(&b.sql(query).expect("batch").batches).into_iter().collect();
    let bound = EPOCH_2026 + 300 * SECOND;
    let within: Vec<_> = streamed.iter().filter(|r| r.2 <= bound).collect();
    assert!(within.len() >= 100, "{} of the streamed sessions end within 300 s", within.len());
    for r in within {
        assert!(batch.contains(r), "session {r:?} of the stream is not in the batch answer");
    }
}

/// Writes `rows` (Flink csv: no header) as `dir/name`, whole: staged under a hidden name, then renamed
/// in, as a producer of files for a monitored directory must.
fn drop_file(dir: &std::path::Path, name: &str, rows: &[String]) {
    let staged = dir.join(format!(".{name}.staging"));
    std::fs::write(&staged, rows.join("\n") + "\n").expect("write");
    std::fs::rename(&staged, dir.join(name)).expect("rename");
}

/// A query without end run on its own thread, its rows collected (cells joined by spaces) until
/// `enough` came: then the sink stops the job.
struct Job {
    rows: Arc<Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<Option<String>>,
}

impl Job {
    fn start(mut s: Session, sql: &str, enough: usize) -> Job {
        let rows = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = rows.clone();
        let sink: riffle_engine::session::RowSink = Arc::new(move |_, b| {
            let mut seen = seen.lock().expect("lock");
            for row in 0..b.num_rows() {
                let cells: Vec<String> =
                    b.columns().iter().map(|c| riffle_engine::format::format_value(c, row).ok().flatten().unwrap_or_default()).collect();
                seen.push(cells.join(" "));
            }
            if seen.len() >= enough { Err(riffle_engine::RiffleError::exec("seen enough")) } else { Ok(()) }
        });
        let sql = sql.to_string();
        let thread = std::thread::spawn(move || s.execute_streaming(&sql, sink).err().map(|e| e.to_string()));
        Job { rows, thread }
    }

    fn rows(&self) -> Vec<String> {
        self.rows.lock().expect("lock").clone()
    }

    /// Waits (30 s at most) until `n` rows came.
    fn wait_for(&self, n: usize) {
        let start = std::time::Instant::now();
        while self.rows().len() < n {
            assert!(!self.thread.is_finished(), "the job ended before row {n}: {:?}", self.rows());
            assert!(start.elapsed() < std::time::Duration::from_secs(30), "no row {n} after 30 s: {:?}", self.rows());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The rows, once `n` came and the job stopped itself.
    fn finish(self, n: usize) -> Vec<String> {
        self.wait_for(n);
        let err = self.thread.join().expect("job thread");
        assert!(err.as_deref().is_some_and(|e| e.contains("seen enough")), "{err:?}");
        self.rows.lock().expect("lock").clone()
    }
}

/// `item, price, ts` rows of Flink csv, one per second of `seconds`.
fn csv_rows(item: i32, seconds: std::ops::Range<i32>) -> Vec<String> {
    seconds.map(|t| format!("{item},{t},2026-01-01 00:00:{t:02}")).collect()
}

/// A monitored directory as table `name`, with a 1 s watermark delay and more `options`.
fn create_monitored(s: &mut Session, name: &str, dir: &std::path::Path, options: &str) {
    s.sql(&format!(
        "CREATE TABLE {name} (item INT, price INT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv', 'source.monitor-interval' = '20 ms'{options})",
        dir.display()
    ))
    .expect("create");
}

const TUMBLE_10S: &str = "SELECT window_start, count(*), sum(price) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
                          GROUP BY window_start, window_end";

#[test]
fn a_monitored_directory_is_read_without_end_as_files_appear() {
    let dir = tempfile::tempdir().expect("temp dir");
    drop_file(dir.path(), "a.csv", &csv_rows(1, 0..13));
    // Two partitions and one file: the partition that finds nothing must not hold event time back.
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    create_monitored(&mut s, "bids", dir.path(), "");
    // The query has no end: the job stops once the second file's window came.
    let job = Job::start(s, TUMBLE_10S, 2);
    // The first file closes the window [0 s, 10 s) (its watermark reaches 11 s) ...
    job.wait_for(1);
    assert_eq!(job.rows(), ["2026-01-01 00:00:00 10 45"]);
    // ... and a file that appears later is read too, and closes the next one.
    drop_file(dir.path(), "b.csv", &csv_rows(2, 13..25));
    assert_eq!(job.finish(2), ["2026-01-01 00:00:00 10 45", "2026-01-01 00:00:10 10 145"]);
}

/// Runs `sql` to its end: each result batch with when it came, and when the run ended (from its start).
fn timed_run(s: &Session, sql: &str) -> (Vec<(std::time::Duration, RecordBatch)>, std::time::Duration) {
    let (_, physical) = s.plan_sql(sql).expect("plan");
    let started = std::time::Instant::now();
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = arrivals.clone();
    let result = execute_into(&physical, &s.config, Arc::new(move |_, m| {
        if let Message::Batch(b) = m {
            seen.lock().expect("lock").push((started.elapsed(), b));
        }
        Ok(())
    }));
    let ended = started.elapsed();
    result.expect("the query runs");
    let arrivals = arrivals.lock().expect("lock").clone();
    (arrivals, ended)
}

#[test]
fn a_rate_limited_generator_closes_windows_as_it_goes() {
    // Two partitions take the generator's event ranges as they fall due; one may win every race.
    // The other, waiting with nothing in flight, must not hold event time back: the first 1 s window
    // closes at about 2 s (its end and the watermark delay), long before the 4 s of input end.
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    s.sql(
        "CREATE TABLE bid (auction BIGINT, dateTime TIMESTAMP(3), WATERMARK FOR dateTime AS dateTime - INTERVAL '1' SECOND) \
         WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '400000', 'first-event.rate' = '100000', 'rate-limited' = 'true')",
    )
    .expect("create");
    let sql = "SELECT window_start, auction, count(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '1' SECOND)) \
               GROUP BY window_start, window_end, auction";
    let (arrivals, ended) = timed_run(&s, sql);
    let sizes: Vec<(std::time::Duration, usize)> = arrivals.iter().map(|(t, b)| (*t, b.num_rows())).collect();
    assert!(arrivals.len() >= 4, "{sizes:?}");
    let first = arrivals.first().map(|(t, _)| *t).unwrap_or(ended);
    assert!(ended >= std::time::Duration::from_secs(3), "the generator paced 4 s of events in {ended:?}");
    assert!(first + std::time::Duration::from_millis(800) < ended, "the first window came at {first:?}, the input ended at {ended:?}");
}

#[test]
fn a_query_runs_beside_a_job_without_end() {
    // The job holds its workers while it waits for files; a query started meanwhile, in the same
    // process, gets workers of its own instead of queueing behind it.
    let dir = tempfile::tempdir().expect("temp dir");
    drop_file(dir.path(), "a.csv", &csv_rows(1, 0..5));
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    create_monitored(&mut s, "bids", dir.path(), "");
    let job = Job::start(s, TUMBLE_10S, 1);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut batch = Session::new(ExecConfig { threads: 2, ..ExecConfig::default() });
        let _ = done.send(batch.sql("SELECT sum(x) FROM (VALUES (1), (2), (3)) AS t(x)").map(|r| r.batches));
    });
    let batches = answer.recv_timeout(std::time::Duration::from_secs(30)).expect("the query finished beside the job").expect("query");
    let sum = riffle_engine::format::format_value(batches[0].column(0), 0).expect("format");
    assert_eq!(sum.as_deref(), Some("6"));
    drop_file(dir.path(), "b.csv", &csv_rows(1, 5..13));
    assert_eq!(job.finish(1), ["2026-01-01 00:00:00 10 45"]);
}

/// Two monitored directories, `a` and `b`, feed one window aggregate through `sql` (a union, or an
/// interval join); `b` gets a few early rows only. Idle after 200 ms (`how`: the session's option,
/// or both tables' option), `b` no longer holds the first window back; never idle (`never`), it does
/// until `b` gets more rows. Returns the job, stopping after `enough` rows, once `first` came.
fn two_directories_one_goes_quiet(how: &str, sql: &str, first: &str, enough: usize) -> (Job, [tempfile::TempDir; 2]) {
    let (a, b) = (tempfile::tempdir().expect("temp dir"), tempfile::tempdir().expect("temp dir"));
    drop_file(a.path(), "a1.csv", &csv_rows(1, 0..13));
    drop_file(b.path(), "b1.csv", &csv_rows(1, 0..5));
    let mut s = Session::new(ExecConfig { threads: 2, stream: true, ..ExecConfig::default() });
    let options = if how == "table" { ", 'scan.watermark.idle-timeout' = '200 ms'" } else { "" };
    create_monitored(&mut s, "a", a.path(), options);
    create_monitored(&mut s, "b", b.path(), options);
    if how == "session" {
        s.sql("SET 'table.exec.source.idle-timeout' = '200 ms'").expect("set");
    }
    let job = Job::start(s, sql, enough);
    if how == "never" {
        // b's watermark (3 s) holds the first window back while a waits for files.
        std::thread::sleep(std::time::Duration::from_millis(800));
        assert_eq!(job.rows(), Vec::<String>::new(), "a window closed while b's watermark was at 3 s");
        drop_file(b.path(), "b2.csv", &csv_rows(1, 5..13));
    }
    job.wait_for(1);
    assert_eq!(job.rows(), [first]);
    (job, [a, b])
}

#[test]
fn an_idle_input_of_a_union_holds_its_windows_back_no_longer() {
    let union = "CREATE VIEW bids AS SELECT * FROM a UNION ALL SELECT * FROM b; \
                 SELECT window_start, count(*), sum(price) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
                 GROUP BY window_start, window_end";
    for how in ["session", "table"] {
        // [0, 10): a's 0..9 (sum 45) and b's 0..4 (10).
        let (job, [_a, b]) = two_directories_one_goes_quiet(how, union, "2026-01-01 00:00:00 15 55", 2);
        // b wakes with rows after the watermark (11 s) while a is idle: b alone closes [10, 20),
        // with a's 10..12 (33) and b's 15..19 (85).
        drop_file(b.path(), "b3.csv", &csv_rows(2, 15..25));
        assert_eq!(job.finish(2), ["2026-01-01 00:00:00 15 55", "2026-01-01 00:00:10 8 118"]);
    }
    // Never idle: b's second file (5..12) came before the first window closed, and a holds the
    // second back until it gets rows too: [10, 20) holds a's 10..19 (145), b's 10..12 (33) and
    // 15..19 (85).
    let (job, [a, b]) = two_directories_one_goes_quiet("never", union, "2026-01-01 00:00:00 20 90", 2);
    drop_file(b.path(), "b3.csv", &csv_rows(2, 15..25));
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(job.rows().len(), 1, "a window closed while a's watermark was at 11 s");
    drop_file(a.path(), "a2.csv", &csv_rows(2, 13..25));
    assert_eq!(job.finish(2), ["2026-01-01 00:00:00 20 90", "2026-01-01 00:00:10 18 263"]);
}

#[test]
fn an_idle_side_of_an_interval_join_holds_its_windows_back_no_longer() {
    // a's rows joined with b's of the same second: [0, 10) has b's 0..4, or, never idle, 0..9.
    let join = "CREATE VIEW bids AS SELECT a.item, a.price, a.ts FROM a JOIN b ON a.price = b.price AND a.ts BETWEEN b.ts AND b.ts + INTERVAL '0' SECOND; \
                SELECT window_start, count(*), sum(price) FROM TABLE(TUMBLE(TABLE bids, DESCRIPTOR(ts), INTERVAL '10' SECOND)) \
                GROUP BY window_start, window_end";
    let (job, _dirs) = two_directories_one_goes_quiet("session", join, "2026-01-01 00:00:00 5 10", 1);
    job.finish(1);
    let (job, _dirs) = two_directories_one_goes_quiet("never", join, "2026-01-01 00:00:00 10 45", 1);
    job.finish(1);
}

#[test]
fn explain_analyze_shows_the_state_a_session_aggregate_held() {
    let mut s = session(1, 2, true, "1", &[0, 1, 5, 6, 30]);
    let r = s
        .sql("EXPLAIN ANALYZE SELECT k, window_start, count(*) FROM TABLE(SESSION(TABLE ev PARTITION BY k, DESCRIPTOR(ts), INTERVAL '2' SECOND)) \
              GROUP BY k, window_start, window_end")
        .expect("explain");
    let mut lines = vec![];
    for b in &r.batches {
        for row in 0..b.num_rows() {
            lines.push(riffle_engine::format::format_value(b.column(0), row).expect("format").unwrap_or_default());
        }
    }
    let line = lines.iter().find(|l| l.contains("SessionAggregate")).unwrap_or_else(|| panic!("no SessionAggregate in {lines:?}"));
    assert!(line.contains("peak_mem="), "{line}");
}

#[test]
fn a_file_replayed_in_event_time_hands_its_rows_out_as_their_time_comes() {
    // 3,000 rows 1 ms apart (3 s of event time), read in batches of 100: played back, the query takes
    // the 3 s, and the first 1 s window closes at about 2 s (its end and the watermark delay).
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ev.csv");
    let lines: Vec<String> = (0..3000).map(|ms| format!("{ms},2026-01-01 00:00:{:02}.{:03}", ms / 1000, ms % 1000)).collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
    let create = format!(
        "CREATE TABLE ev (k BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) \
         WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'csv', 'source.replay' = 'event-time')",
        path.display()
    );
    let sql = "SELECT window_start, count(*), sum(k) FROM TABLE(TUMBLE(TABLE ev, DESCRIPTOR(ts), INTERVAL '1' SECOND)) \
               GROUP BY window_start, window_end";
    let mut batch = Session::new(ExecConfig { threads: 2, batch_size: 100, ..ExecConfig::default() });
    batch.sql(&create).expect("create");
    let want = lines_of(&batch.sql(sql).expect("batch").batches);

    let mut s = Session::new(ExecConfig { threads: 2, batch_size: 100, stream: true, ..ExecConfig::default() });
    s.sql(&create).expect("create");
    let (arrivals, ended) = timed_run(&s, sql);
    let first = arrivals.first().map(|(t, _)| *t).unwrap_or(ended);
    assert!(ended >= std::time::Duration::from_millis(2900), "3 s of event time played back in {ended:?}");
    assert!(first + std::time::Duration::from_millis(600) < ended, "the first window came at {first:?}, the input ended at {ended:?}");
    let batches: Vec<RecordBatch> = arrivals.into_iter().map(|(_, b)| b).collect();
    assert_eq!(lines_of(&batches), want, "played back, the windows are the batch answer");
    assert_eq!(want.len(), 3, "{want:?}");

    // Without its event-time column read, a replay has no clock: a clear error.
    let err = s.plan_sql("SELECT count(*) FROM ev").and_then(|(_, p)| execute_into(&p, &s.config, Arc::new(|_, _| Ok(()))).map(|_| ()));
    let err = err.expect_err("a replay without its event time");
    assert!(err.to_string().contains("'source.replay'"), "{err}");
}

/// The batches' rows as text, sorted.
fn lines_of(batches: &[RecordBatch]) -> Vec<String> {
    let mut lines: Vec<String> = batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows()).map(move |row| {
                b.columns().iter().map(|c| riffle_engine::format::format_value(c, row).ok().flatten().unwrap_or_default()).collect::<Vec<_>>().join(" ")
            })
        })
        .collect();
    lines.sort();
    lines
}
