//! SESSION window aggregation over a stream: `GROUP BY window_start, window_end, <partition keys>`
//! over `SESSION(TABLE t PARTITION BY k, DESCRIPTOR(ts), gap)` on the table's event time emits each
//! session's row once the watermark passes the session's end, as Flink's merging session windows do,
//! instead of sorting the whole input first.
//!
//! Per key, the open sessions are time intervals. A row at time `t` makes the interval
//! `[t, t + gap)` and merges with every open session of its key that it overlaps (rows less than the
//! gap apart are one session). Rows are aggregated as they come, into a group table keyed by the
//! session they joined; merging is lazy: when the watermark closes sessions, the table's partial
//! states are split into the closed sessions (evaluated and emitted) and a new table of the open ones,
//! where the parts of a merged session become one group and the sessions are numbered afresh. A row
//! that merges with no open session and whose own interval ends at or before the watermark is late:
//! dropped and counted (`late_rows`). One partition holds every key (the input is gathered into it).
//!
//!
//! Checkpoints: at barrier `e` (aligned by the exchange in front) the merges are folded in as above
//! and the open sessions are written incrementally, into files shared by checkpoints
//! (`checkpoint::SharedFiles`): each session has an id that outlives renumbering and merges; the
//! first checkpoint writes every open session (id, key, start, end, partial states), each later one
//! the sessions that got rows, grew or absorbed others since, and the ids of the saved ones that
//! closed or were absorbed; once the files would hold more than twice the open sessions (or
//! `MAX_CHAIN` files) every open session is written whole again. A restored job applies the files in
//! order before its first row. (Checkpoints of earlier versions, the sessions whole in the epoch's
//! directory, are still read.) Long sessions of many keys (a user's activity over hours,
//! checkpointed every ten seconds) write what the last ten seconds changed.
//!
//! Spilling (`keyed_spill`): over its share of the memory limit, an aggregate with keys writes the
//! open sessions of the buckets of keys with the most sessions to disk, as a checkpoint saves them,
//! until half of what it held is left. Rows of keys on disk are held, each with the watermark it
//! came under, until their bucket is loaded again: when `keyed_spill` says so, and once the
//! watermark passed the end of a session on disk (or of one a held row may make) `MAX_HELD_AGE`
//! ago, not at every watermark (every bucket has sessions ending all the time). Held rows are
//! aggregated under the watermark they came under (late then, late now; not late then, not late
//! now), and until a bucket is back the output watermark stays below the time of its earliest such
//! session, so a session closing later than it would have in memory is not late downstream. A
//! checkpoint aggregates the held rows first and copies the buckets on disk not yet saved into one
//! more file of the chain; a restore reads the chain whole, then spills again as it must.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::row::{RowConverter, SortField};

use super::aggregate::{AggSpec, GroupTable, Partial};
use super::checkpoint::{OperatorCheckpoint, SharedFiles};
use super::keyed_spill::{batches_of, biggest_buckets, bucket_of, split_rows, write_biggest_held, SpilledBucket, BUCKETS, HELD_IN_MEMORY, MAX_HELD_AGE};
use super::{OpMetrics, Operator};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, Expr, WINDOW_TIME_BEFORE_END};
use crate::memory::{MemoryPool, MemoryReservation, SpillManager};
use crate::message::Message;
use crate::physical::SessionColumn;

/// What to aggregate, fixed at planning.
pub struct SessionAggSpec {
    /// The session's partition keys, over the input.
    pub keys: Vec<Expr>,
    /// The input's event-time column.
    pub time: usize,
    /// Microseconds.
    pub gap: i64,
    /// The output's group columns, in order; the aggregates follow.
    pub group: Vec<SessionColumn>,
    /// Over the input's columns.
    pub aggs: Vec<AggCall>,
    pub input_schema: SchemaRef,
    pub schema: SchemaRef,
}

pub struct SessionAggregateOp {
    spec: Arc<SessionAggSpec>,
    checkpoint: Option<OperatorCheckpoint>,
    /// Aggregates the input with the session number appended as the one group key.
    by_session: Arc<AggSpec>,
    /// The input's schema with the session number appended.
    numbered: SchemaRef,
    pool: Arc<MemoryPool>,
    spill: Arc<SpillManager>,
    metrics: Arc<OpMetrics>,
    /// Made on first use (making it can fail).
    state: Option<Sessions>,
    watermark: i64,
}

/// A bucket of keys whose open sessions are on disk (rows as a checkpoint saves them), and the input
/// rows of those keys held until it is loaded again (see `keyed_spill`), each with the watermark it
/// came under (a last column), under which it is aggregated when loaded.
struct SpilledSessions {
    bucket: SpilledBucket,
    /// The earliest end of a session on disk.
    first_end: i64,
    /// The earliest time of a held row plus the gap (`MAX`: none): the earliest end of a session a
    /// held row may make.
    held_end: i64,
    /// Since when the watermark passed one of those ends: the session waits to close, and the
    /// output watermark waits for it, until the bucket is loaded (at most `MAX_HELD_AGE` later).
    closing_since: Option<std::time::Instant>,
}

impl SpilledSessions {
    /// The earliest end of a session on disk or one a held row may make: the output watermark stays
    /// below its time (`end - WINDOW_TIME_BEFORE_END`), so the session's row is not late when it
    /// closes later than it would have in memory.
    fn earliest_end(&self) -> i64 {
        self.first_end.min(self.held_end)
    }
}

#[derive(Clone)]
struct Session {
    key: Box<[u8]>,
    start: i64,
    end: i64,
    /// Names the session in checkpoints: numbers change at every rebuild, this does not.
    uid: u64,
    /// Changed since the last checkpoint (rows, bounds, a session absorbed).
    dirty: bool,
    /// In a checkpoint's files: its closing or absorption is written too.
    saved: bool,
}

/// The open sessions and their partial aggregates.
struct Sessions {
    keys: Option<RowConverter>,
    /// Per key, the numbers of its open sessions.
    open: HashMap<Box<[u8]>, Vec<u32>>,
    sessions: Vec<Session>,
    /// The session each number's rows now belong to: itself, or the one it merged into.
    merged_into: Vec<u32>,
    /// Open sessions by end (a merged or extended session leaves a stale entry behind).
    ends: BinaryHeap<Reverse<(i64, u32)>>,
    table: GroupTable,
    /// Bytes of the keys: each open session's and each key of `open`.
    key_bytes: usize,
    reservation: MemoryReservation,
    /// The next session's `uid`.
    next_uid: u64,
    /// Incremental checkpoints: the saved sessions closed or absorbed since the last one, and the
    /// shared files the last one named, in the order a restore applies them, with their rows.
    removed: Vec<u64>,
    chain: Vec<(String, usize)>,
    shared: Option<Arc<SharedFiles>>,
    /// Per bucket of keys, its sessions on disk (empty until the aggregate spills).
    spilled: Vec<Option<SpilledSessions>>,
}

impl SessionAggregateOp {
    pub fn new(
        spec: Arc<SessionAggSpec>,
        (pool, spill): (Arc<MemoryPool>, Arc<SpillManager>),
        metrics: Arc<OpMetrics>,
        checkpoint: Option<OperatorCheckpoint>,
    ) -> SessionAggregateOp {
        let width = spec.input_schema.fields().len();
        let mut fields: Vec<Field> = spec.input_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("session", DataType::UInt32, false));
        let numbered = Arc::new(Schema::new(fields));
        // Output of the per-session table: the session number, then the aggregates' final types.
        let aggs = spec.schema.fields().iter().skip(spec.group.len()).map(|f| f.as_ref().clone());
        let out = Arc::new(Schema::new(std::iter::once(Field::new("session", DataType::UInt32, false)).chain(aggs).collect::<Vec<_>>()));
        let by_session = Arc::new(AggSpec::new(vec![Expr::Column(width)], spec.aggs.clone(), numbered.clone(), out));
        SessionAggregateOp { spec, checkpoint, by_session, numbered, pool, spill, metrics, state: None, watermark: i64::MIN }
    }

    fn sessions(&mut self) -> Result<&mut Sessions> {
        if self.state.is_none() {
            let key_types: Vec<SortField> =
                self.spec.keys.iter().map(|k| SortField::new(k.data_type(&self.spec.input_schema))).collect();
            let key_types_empty = key_types.is_empty();
            let keys = if key_types_empty { None } else { Some(RowConverter::new(key_types)?) };
            self.state = Some(Sessions {
                keys,
                open: HashMap::new(),
                sessions: vec![],
                merged_into: vec![],
                ends: BinaryHeap::new(),
                table: GroupTable::new(&self.by_session)?,
                key_bytes: 0,
                // Sessions of keys spill a bucket of keys at a time; without keys they cannot.
                reservation: self.pool.reservation("SessionAggregate", !key_types_empty),
                next_uid: 0,
                removed: vec![],
                chain: vec![],
                shared: None,
                spilled: vec![],
            });
            if let Some(ck) = self.checkpoint.clone() {
                let restore = ck.restore_dir();
                let state = match &restore {
                    Some(dir) => super::checkpoint::read_json(&dir.join("state.json"))?,
                    None => None,
                };
                let files = state.as_ref().and_then(|doc| doc.get("files")).and_then(|f| f.as_array());
                let chain: Vec<String> = files.map(|f| f.iter().filter_map(|n| n.as_str().map(str::to_string)).collect()).unwrap_or_default();
                if let Some(doc) = &state {
                    self.watermark = doc.get("watermark").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
                }
                let shared = SharedFiles::open(&ck.coordinator, &ck.name, &chain)?;
                let st = self.state.as_mut().ok_or_else(|| RiffleError::exec("session state missing"))?;
                st.shared = Some(shared);
                match (restore, files.is_some()) {
                    (Some(_), true) => self.restore(&chain)?,
                    (Some(dir), false) => self.restore_whole(&dir)?,
                    (None, _) => {}
                }
                // Ids of sessions removed since are not given out again.
                let saved_next = state.as_ref().and_then(|doc| doc.get("next_uid")).and_then(|n| n.as_u64()).unwrap_or(0);
                if let Some(st) = self.state.as_mut() {
                    st.next_uid = st.next_uid.max(saved_next);
                }
            }
            self.account()?;
        }
        self.state.as_mut().ok_or_else(|| RiffleError::exec("session state missing"))
    }

    /// Counts the state (and held rows) in the pool. Over its share, a keyed aggregate writes the
    /// buckets of keys with the most open sessions to disk until half of what it held is left, and
    /// held rows beyond `HELD_IN_MEMORY` (or once no session is left in memory) to files; what it
    /// must keep is counted anyway (sessions without keys, which cannot spill).
    fn account(&mut self) -> Result<()> {
        let (spec, by_session) = (self.spec.clone(), self.by_session.clone());
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        loop {
            let held: usize = st.spilled.iter().flatten().map(|b| b.bucket.held_in_memory()).sum();
            let size = st.size() + held;
            self.metrics.note_bytes(size);
            if st.keys.is_none() {
                st.reservation.resize_anyway(size);
                return Ok(());
            }
            if held <= HELD_IN_MEMORY && st.reservation.try_resize(size) {
                return Ok(());
            }
            if held > HELD_IN_MEMORY || st.sessions.is_empty() {
                if !write_biggest_held(st.spilled.iter_mut().flatten().map(|b| &mut b.bucket), &self.spill, &self.metrics)? {
                    st.reservation.resize_anyway(size);
                    return Ok(());
                }
            } else if !st.evict(&spec, &by_session, size / 2, &self.spill, &self.metrics)? {
                st.reservation.resize_anyway(size);
                return Ok(());
            }
        }
    }

    /// Loads the buckets on disk that are due, one at a time, each counted before the next, and
    /// closes the sessions the watermark passed: with `all`, every bucket with held rows (a
    /// checkpoint saves no held rows); else those whose held rows are due (`keyed_spill`) and those
    /// with a session the watermark passed `MAX_HELD_AGE` ago (a bucket comes back for its sessions
    /// that close once a second at most, not at every watermark).
    fn load_due(&mut self, all: bool, out: &mut Vec<Message>) -> Result<()> {
        let (now, watermark) = (std::time::Instant::now(), self.watermark);
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        let mut due = Vec::new();
        for (b, spilled) in st.spilled.iter_mut().enumerate() {
            let Some(s) = spilled else { continue };
            if s.earliest_end() <= watermark {
                s.closing_since.get_or_insert(now);
            }
            let closing = s.closing_since.is_some_and(|t| now.saturating_duration_since(t) >= MAX_HELD_AGE);
            if if all { s.bucket.has_held() } else { s.bucket.due(now) || closing } {
                due.push(b);
            }
        }
        for b in due {
            self.load(b)?;
            self.close(watermark, out)?;
            self.account()?;
        }
        Ok(())
    }

    /// The watermark to send on: `w`, held below the time of the sessions on disk that may close
    /// later than they would have in memory.
    fn output_watermark(&self, w: i64) -> i64 {
        let spilled = self.state.iter().flat_map(|st| st.spilled.iter().flatten());
        spilled.map(|s| s.earliest_end().saturating_sub(WINDOW_TIME_BEFORE_END)).fold(w, i64::min)
    }

    /// Loads bucket `b` from disk: its sessions back into the table, then its held rows aggregated.
    fn load(&mut self, b: usize) -> Result<()> {
        let widths = self.by_session.state_widths()?;
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        let Some(spilled) = st.spilled.get_mut(b).and_then(Option::take) else { return Ok(()) };
        let in_checkpoint = spilled.bucket.in_checkpoint;
        let (state, held_files, held) = spilled.bucket.load();
        for batch in batches_of(&state) {
            st.load_saved(&batch?, &widths, !in_checkpoint)?;
        }
        drop(state);
        for rows in batches_of(&held_files).chain(held.into_iter().map(Ok)) {
            let mut rows = rows?;
            let last = rows.num_columns().saturating_sub(1);
            let arrived = rows.columns().get(last).and_then(|c| c.as_primitive_opt::<Int64Type>()).cloned();
            let arrived = arrived.ok_or_else(|| RiffleError::exec("session aggregate: held rows lack their watermarks"))?;
            rows.remove_column(last);
            self.aggregate(rows, Some(arrived.values()))?;
        }
        Ok(())
    }

    /// Closes every session: those in memory, then a bucket on disk at a time (loaded with its held
    /// rows, then closed).
    fn close_all(&mut self, out: &mut Vec<Message>) -> Result<()> {
        self.close(i64::MAX, out)?;
        let buckets = self.state.as_ref().map_or(0, |st| st.spilled.len());
        for b in 0..buckets {
            if self.state.as_ref().is_some_and(|st| st.spilled[b].is_some()) {
                self.load(b)?;
                self.close(i64::MAX, out)?;
            }
        }
        Ok(())
    }

    /// Saves the open sessions as of barrier `e`, incrementally (see the module's doc), and the
    /// watermark: the files are taken now and written while the next rows are aggregated.
    fn snapshot(&mut self, ck: &OperatorCheckpoint, e: u64) -> Result<()> {
        // Held rows are aggregated first: a checkpoint saves sessions only.
        let (spec, by_session, watermark) = (self.spec.clone(), self.by_session.clone(), self.watermark);
        let st = self.sessions()?;
        // Merged sessions folded in, so that each open session is one group (without merges since
        // the last rebuild, each already is: the table is not rebuilt for nothing).
        if st.merged_into.iter().enumerate().any(|(i, m)| *m != i as u32) {
            st.rebuild(&spec, &by_session, vec![], vec![])?;
        }
        let removed = std::mem::take(&mut st.removed);
        let dirty = st.sessions.iter().filter(|s| s.dirty).count();
        let named: usize = st.chain.iter().map(|(_, rows)| rows).sum();
        let on_disk: usize = st.spilled.iter().flatten().map(|b| b.bucket.state_rows()).sum();
        let mut write = Vec::new();
        let whole = super::checkpoint::compact_now(st.chain.len(), named, dirty + removed.len(), st.sessions.len() + on_disk);
        if whole {
            st.chain.clear();
            for b in st.spilled.iter_mut().flatten() {
                b.bucket.in_checkpoint = false;
            }
        } else if !removed.is_empty() {
            let file = format!("removed-{e}.arrow");
            st.chain.push((file.clone(), removed.len()));
            write.push((file, RecordBatch::try_from_iter([("uid", Arc::new(arrow::array::UInt64Array::from(removed)) as ArrayRef)])?));
        }
        if whole || dirty > 0 {
            let batch = st.save(whole)?;
            let file = format!("sessions-{e}.arrow");
            st.chain.push((file.clone(), batch.num_rows()));
            write.push((file, batch));
        }
        // The sessions written to disk since, copied from their spill files into one more file.
        let mut from_disk = Vec::new();
        for b in st.spilled.iter_mut().flatten() {
            if !b.bucket.in_checkpoint {
                from_disk.extend(b.bucket.state_files().iter().cloned());
                b.bucket.in_checkpoint = true;
            }
        }
        let rows: usize = from_disk.iter().map(|f| f.rows()).sum();
        let spilled_file = (rows > 0).then(|| format!("spilled-{e}.arrow"));
        if let Some(file) = &spilled_file {
            st.chain.push((file.clone(), rows));
        }
        let named: Vec<String> = st.chain.iter().map(|(f, _)| f.clone()).collect();
        let shared = st.shared.clone().ok_or_else(|| RiffleError::exec("checkpoint files missing"))?;
        shared.taken(e, named.clone());
        let state = ck.coordinator.state_dir(e, &ck.name)?.join("state.json");
        let doc = serde_json::json!({ "watermark": watermark, "files": named, "next_uid": st.next_uid });
        ck.coordinator.save_async(ck.component, e, move || {
            for (file, batch) in &write {
                super::checkpoint::write_batches(&shared.path(file), std::slice::from_ref(batch))?;
            }
            if let Some(file) = &spilled_file {
                super::checkpoint::write_batches_from(&shared.path(file), batches_of(&from_disk))?;
            }
            super::checkpoint::write_synced(&state, doc.to_string().as_bytes())
        })
    }

    /// Applies the shared files a checkpoint names, in order, to the (new, empty) state: each
    /// session's last saved row, less those removed after it.
    fn restore(&mut self, chain: &[String]) -> Result<()> {
        let widths = self.by_session.state_widths()?;
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        let Some(shared) = st.shared.clone() else { return Ok(()) };
        // Per session id, the file (an index into `batches`) and row of its last saved state.
        let mut last: std::collections::BTreeMap<u64, (usize, usize)> = std::collections::BTreeMap::new();
        let mut batches = vec![];
        for file in chain {
            let path = shared.path(file);
            let corrupt = || RiffleError::exec(format!("checkpoint: {} is not a session aggregate's state", path.display()));
            let mut rows = 0;
            for b in super::checkpoint::read_batches(&path)? {
                let uids = b.column_by_name("uid").and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>()).ok_or_else(corrupt)?;
                rows += b.num_rows();
                if file.starts_with("removed-") {
                    for uid in uids.values() {
                        last.remove(uid);
                    }
                    continue;
                }
                for (row, uid) in uids.values().iter().enumerate() {
                    last.insert(*uid, (batches.len(), row));
                }
                batches.push(b);
            }
            st.chain.push((file.clone(), rows));
        }
        // The sessions in order of id, numbered from 0; each file's surviving rows merged as a partial.
        let mut number: Vec<Vec<Option<u32>>> = batches.iter().map(|b| vec![None; b.num_rows()]).collect();
        for (n, (uid, (b, row))) in last.iter().enumerate() {
            let batch = &batches[*b];
            let corrupt = || RiffleError::exec("checkpoint: a session aggregate's file lacks a column");
            let key = batch.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(corrupt)?.value(*row);
            let start = batch.column_by_name("start").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?.value(*row);
            let end = batch.column_by_name("end").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?.value(*row);
            st.push_restored(Session { key: key.into(), start, end, uid: *uid, dirty: false, saved: true });
            number[*b][*row] = Some(n as u32);
        }
        let width = SAVED_COLUMNS + widths.iter().sum::<usize>();
        for (batch, numbers) in batches.iter().zip(number) {
            // A checkpoint with no open session wrote a file of no rows (and no state columns).
            if batch.num_rows() == 0 {
                continue;
            }
            if batch.num_columns() != width {
                return Err(RiffleError::exec("checkpoint: a session aggregate's file has other columns than its aggregates' states"));
            }
            let keep = BooleanArray::from(numbers.iter().map(|n| Some(n.is_some())).collect::<Vec<_>>());
            let sessions: UInt32Array = numbers.into_iter().flatten().collect();
            // Keyed by uid, key, start and end as saved; by the new session numbers once selected.
            let partial = Partial::from_batch(batch, SAVED_COLUMNS, &widths);
            st.table.merge(partial.select(&keep, vec![Arc::new(sessions)])?)?;
        }
        st.next_uid = last.keys().next_back().map_or(0, |u| u + 1);
        Ok(())
    }

    /// Reads the sessions of a checkpoint written whole into its epoch's directory (by earlier
    /// versions) back into the (new, empty) state.
    fn restore_whole(&mut self, dir: &std::path::Path) -> Result<()> {
        let widths = self.by_session.state_widths()?;
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        let (sessions, groups) = (dir.join("sessions.arrow"), dir.join("groups.arrow"));
        if !sessions.exists() {
            return Ok(());
        }
        for b in super::checkpoint::read_batches(&sessions)? {
            let corrupt = || RiffleError::exec(format!("checkpoint: {} is not a session aggregate's state", dir.display()));
            let keys = b.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(corrupt)?;
            let starts = b.column_by_name("start").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?;
            let ends = b.column_by_name("end").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?;
            for i in 0..b.num_rows() {
                let uid = st.next_uid;
                st.next_uid += 1;
                // Dirty: the first checkpoint of this run writes them into its shared files.
                st.push_restored(Session { key: keys.value(i).into(), start: starts.value(i), end: ends.value(i), uid, dirty: true, saved: false });
            }
        }
        // Without open sessions there are no groups, and no file of them.
        if groups.exists() {
            for b in super::checkpoint::read_batches(&groups)? {
                st.table.merge(Partial::from_batch(&b, 1, &widths))?;
            }
        }
        Ok(())
    }

    /// Emits every session that ends at or before `watermark`.
    fn close(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        let (spec, by_session) = (self.spec.clone(), self.by_session.clone());
        let Some(st) = self.state.as_mut() else { return Ok(()) };
        let mut closed: Vec<u32> = vec![];
        while let Some(Reverse((end, id))) = st.ends.peek().copied() {
            if end > watermark {
                break;
            }
            st.ends.pop();
            let live = st.merged_into[id as usize] == id && st.sessions[id as usize].end == end;
            if live {
                closed.push(id);
            }
        }
        if closed.is_empty() {
            return Ok(());
        }
        if let Some(batch) = st.rebuild(&spec, &by_session, closed, vec![])?.0 {
            out.push(Message::Batch(batch));
        }
        Ok(())
    }
}

/// Columns before the partial states in a checkpoint's sessions file: uid, key, start, end.
const SAVED_COLUMNS: usize = 4;

impl Sessions {
    /// Adds a restored open session, numbered next.
    fn push_restored(&mut self, s: Session) {
        let id = self.sessions.len() as u32;
        self.key_bytes += s.key.len();
        match self.open.get_mut(&s.key) {
            Some(list) => list.push(id),
            None => {
                self.key_bytes += s.key.len();
                self.open.insert(s.key.clone(), vec![id]);
            }
        }
        self.merged_into.push(id);
        self.ends.push(Reverse((s.end, id)));
        self.sessions.push(s);
    }

    /// The open sessions (all, or the dirty ones) as a checkpoint's rows: uid, key, start, end,
    /// then their partial states; they are clean and saved from now on. Merges must be folded in
    /// (`rebuild`): each open session is one group.
    fn save(&mut self, all: bool) -> Result<RecordBatch> {
        let partial = self.table.take_changes(true)?;
        let picked: Vec<u32> = (0..self.sessions.len() as u32).filter(|i| all || self.sessions[*i as usize].dirty).collect();
        // The table's groups are keyed by session number, in no particular order: the group of each.
        let mut group_of = vec![u32::MAX; self.sessions.len()];
        if let Some(p) = &partial {
            let numbers = p.keys().first().ok_or_else(|| RiffleError::exec("session numbers missing"))?.as_primitive::<UInt32Type>();
            for (g, n) in numbers.values().iter().enumerate() {
                group_of[*n as usize] = g as u32;
            }
        }
        if picked.iter().any(|i| group_of[*i as usize] == u32::MAX) {
            return Err(RiffleError::exec("an open session has no partial state"));
        }
        let take = UInt32Array::from(picked.iter().map(|i| group_of[*i as usize]).collect::<Vec<_>>());
        let states = partial
            .iter()
            .flat_map(|p| p.states.iter())
            .map(|states| states.iter().map(|c| Ok(arrow::compute::take(c, &take, None)?)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        let batch = saved_rows(picked.iter().map(|i| &self.sessions[*i as usize]), &states)?;
        for i in &picked {
            let s = &mut self.sessions[*i as usize];
            (s.dirty, s.saved) = (false, true);
        }
        Ok(batch)
    }

    /// Reads saved sessions (as `saved_rows` writes them) back in as open sessions, `dirty` if the
    /// last checkpoint does not hold them as they are. They count as saved: closing them is written.
    fn load_saved(&mut self, batch: &RecordBatch, widths: &[usize], dirty: bool) -> Result<()> {
        let corrupt = || RiffleError::exec("session aggregate: saved sessions lack a column");
        let uids = batch.column_by_name("uid").and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt64Type>()).ok_or_else(corrupt)?;
        let keys = batch.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(corrupt)?;
        let starts = batch.column_by_name("start").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?;
        let ends = batch.column_by_name("end").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(corrupt)?;
        let first = self.sessions.len() as u32;
        for i in 0..batch.num_rows() {
            let session = Session { key: keys.value(i).into(), start: starts.value(i), end: ends.value(i), uid: uids.value(i), dirty, saved: true };
            self.push_restored(session);
        }
        let numbers = UInt32Array::from_iter_values(first..self.sessions.len() as u32);
        let all = BooleanArray::from(vec![true; batch.num_rows()]);
        self.table.merge(Partial::from_batch(batch, SAVED_COLUMNS, widths).select(&all, vec![Arc::new(numbers)])?)
    }

    /// Writes the buckets of keys with the most open sessions to disk (as a checkpoint saves them)
    /// until about `keep` bytes are left; false if no session was in memory. A rebuild of the table,
    /// paid for by the half of it that leaves.
    fn evict(&mut self, spec: &SessionAggSpec, by_session: &AggSpec, keep: usize, spill: &Arc<SpillManager>, metrics: &OpMetrics) -> Result<bool> {
        let live: Vec<(u32, usize)> =
            (0..self.sessions.len() as u32).filter(|i| self.merged_into[*i as usize] == *i).map(|i| (i, bucket_of(&self.sessions[i as usize].key))).collect();
        let size = self.size();
        let per_session = size / live.len().max(1);
        let mut bytes = [0usize; BUCKETS];
        for (_, b) in &live {
            bytes[*b] += per_session;
        }
        let chosen = biggest_buckets(&bytes, size, keep);
        // The sessions leaving; per bucket, whether the last checkpoint holds its sessions as they
        // are, and the first end.
        let (mut evicted, mut in_checkpoint, mut first_end) = (vec![], [true; BUCKETS], [i64::MAX; BUCKETS]);
        for (i, b) in live.into_iter().filter(|(_, b)| chosen[*b]) {
            let s = &self.sessions[i as usize];
            in_checkpoint[b] &= s.saved && !s.dirty;
            first_end[b] = first_end[b].min(s.end);
            evicted.push(i);
        }
        if evicted.is_empty() {
            return Ok(false);
        }
        let checkpointed = self.shared.is_some();
        let (_, saved) = self.rebuild(spec, by_session, vec![], evicted)?;
        let Some(saved) = saved else { return Ok(true) };
        let keys = saved.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| RiffleError::exec("saved sessions lack their keys"))?;
        let buckets: Vec<usize> = keys.iter().map(|k| bucket_of(k.unwrap_or_default())).collect();
        self.spilled.resize_with(BUCKETS, || None);
        for (b, rows) in split_rows(&saved, &buckets)? {
            let bucket = SpilledBucket::write(vec![rows], checkpointed && in_checkpoint[b], spill, metrics)?;
            self.spilled[b] = Some(SpilledSessions { bucket, first_end: first_end[b], held_end: i64::MAX, closing_since: None });
        }
        Ok(true)
    }

    /// Takes the `closed` sessions out and returns their rows (none when there are none), takes the
    /// `evicted` ones out and returns them as saved rows (`saved_rows`), and folds merged sessions'
    /// groups together, numbering the open sessions afresh.
    fn rebuild(&mut self, spec: &SessionAggSpec, by_session: &AggSpec, closed: Vec<u32>, evicted: Vec<u32>) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
        let st = self;
        // Each session number's new place: its closed session's row, or its open session's new number.
        const NONE: u32 = u32::MAX;
        let mut closed_row = vec![NONE; st.sessions.len()];
        for (i, id) in closed.iter().enumerate() {
            closed_row[*id as usize] = i as u32;
            let s = &st.sessions[*id as usize];
            if s.saved {
                st.removed.push(s.uid);
            }
        }
        let mut evicted_row = vec![NONE; st.sessions.len()];
        for (i, id) in evicted.iter().enumerate() {
            evicted_row[*id as usize] = i as u32;
        }
        let mut renumbered = vec![NONE; st.sessions.len()];
        let mut sessions = Vec::new();
        let mut key_bytes = 0;
        for list in st.open.values_mut() {
            list.retain(|id| closed_row[*id as usize] == NONE && evicted_row[*id as usize] == NONE);
            for id in list.iter_mut() {
                let s = &st.sessions[*id as usize];
                renumbered[*id as usize] = sessions.len() as u32;
                key_bytes += s.key.len();
                sessions.push(s.clone());
                *id = renumbered[*id as usize];
            }
        }
        st.open.retain(|_, list| !list.is_empty());
        key_bytes += st.open.keys().map(|k| k.len()).sum::<usize>();
        // Split the partial states by where each part's session went.
        let table = std::mem::replace(&mut st.table, GroupTable::new(by_session)?);
        let partial = table.into_partial()?;
        let ids = partial.keys().first().ok_or_else(|| RiffleError::exec("session numbers missing"))?.as_primitive::<UInt32Type>().clone();
        let (mut to_closed, mut to_open, mut to_evicted) = (vec![], vec![], vec![]);
        let (mut closing, mut staying, mut leaving) = (Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()), Vec::with_capacity(ids.len()));
        for id in ids.values() {
            let root = find(&st.merged_into, *id) as usize;
            let (c, e) = (closed_row[root], evicted_row[root]);
            closing.push(c != NONE);
            leaving.push(e != NONE);
            staying.push(c == NONE && e == NONE);
            if c != NONE {
                to_closed.push(c);
            } else if e != NONE {
                to_evicted.push(e);
            } else {
                to_open.push(renumbered[root]);
            }
        }
        let mask = BooleanArray::from(closing);
        let mut open_table = GroupTable::new(by_session)?;
        open_table.merge(partial.select(&BooleanArray::from(staying), vec![Arc::new(UInt32Array::from(to_open))])?)?;
        let saved = if evicted.is_empty() {
            None
        } else {
            // One group per evicted session (its merged parts folded in), in the order of `evicted`.
            let mut evicted_table = GroupTable::new(by_session)?;
            evicted_table.merge(partial.select(&BooleanArray::from(leaving), vec![Arc::new(UInt32Array::from(to_evicted))])?)?;
            let parts = evicted_table.into_partial()?;
            let rows = parts.keys().first().ok_or_else(|| RiffleError::exec("session numbers missing"))?.as_primitive::<UInt32Type>().clone();
            let sessions: Vec<&Session> = rows.values().iter().map(|r| &st.sessions[evicted[*r as usize] as usize]).collect();
            Some(saved_rows(sessions.into_iter(), &parts.states)?)
        };
        let batch = if closed.is_empty() {
            None
        } else {
            let mut closed_table = GroupTable::new(by_session)?;
            closed_table.merge(partial.select(&mask, vec![Arc::new(UInt32Array::from(to_closed))])?)?;
            let result = by_session.result(closed_table)?;
            Some(output(spec, st.keys.as_ref(), &st.sessions, &closed, &result)?).filter(|b| b.num_rows() > 0)
        };
        st.table = open_table;
        st.ends = sessions.iter().enumerate().map(|(i, s)| Reverse((s.end, i as u32))).collect();
        st.merged_into = (0..sessions.len() as u32).collect();
        st.sessions = sessions;
        st.key_bytes = key_bytes;
        Ok((batch, saved))
    }
}

/// Sessions as a checkpoint (and a spill file) keeps them: uid, key, start, end, then their partial
/// states (`states`: per aggregate, its state columns, a row per session in order).
fn saved_rows<'a>(sessions: impl Iterator<Item = &'a Session> + Clone, states: &[Vec<ArrayRef>]) -> Result<RecordBatch> {
    let mut columns: Vec<(String, ArrayRef)> = vec![
        ("uid".into(), Arc::new(arrow::array::UInt64Array::from_iter_values(sessions.clone().map(|s| s.uid)))),
        ("key".into(), Arc::new(BinaryArray::from_iter_values(sessions.clone().map(|s| &s.key[..])))),
        ("start".into(), Arc::new(Int64Array::from_iter_values(sessions.clone().map(|s| s.start)))),
        ("end".into(), Arc::new(Int64Array::from_iter_values(sessions.map(|s| s.end)))),
    ];
    for (a, states) in states.iter().enumerate() {
        for (j, c) in states.iter().enumerate() {
            columns.push((format!("agg{a}_{j}"), c.clone()));
        }
    }
    Ok(RecordBatch::try_from_iter(columns)?)
}

/// The session `id`'s rows now belong to.
fn find(merged_into: &[u32], mut id: u32) -> u32 {
    while merged_into[id as usize] != id {
        id = merged_into[id as usize];
    }
    id
}

/// The rows of the closed sessions: `result` holds each one's row number in `closed` and its
/// aggregates.
fn output(spec: &SessionAggSpec, keys: Option<&RowConverter>, sessions: &[Session], closed: &[u32], result: &RecordBatch) -> Result<RecordBatch> {
    let rows = result.column(0).as_primitive::<UInt32Type>();
    let of_row: Vec<&Session> = rows.values().iter().map(|r| &sessions[closed[*r as usize] as usize]).collect();
    let key_columns = match keys {
        Some(c) => {
            let parser = c.parser();
            c.convert_rows(of_row.iter().map(|s| parser.parse(&s.key)))?
        }
        None => vec![],
    };
    let times = |f: &dyn Fn(&Session) -> i64| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from(of_row.iter().map(|s| f(s)).collect::<Vec<_>>())) };
    let mut columns = Vec::with_capacity(spec.schema.fields().len());
    for (g, field) in spec.group.iter().zip(spec.schema.fields()) {
        let c = match g {
            SessionColumn::Key(k) => key_columns.get(*k).cloned().ok_or_else(|| RiffleError::exec("session key missing"))?,
            SessionColumn::Start => times(&|s| s.start),
            SessionColumn::End => times(&|s| s.end),
            SessionColumn::Time => times(&|s| s.end - WINDOW_TIME_BEFORE_END),
        };
        columns.push(if c.data_type() == field.data_type() { c } else { arrow::compute::cast(&c, field.data_type())? });
    }
    columns.extend(result.columns()[1..].iter().cloned());
    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(result.num_rows()));
    Ok(RecordBatch::try_new_with_options(spec.schema.clone(), columns, &options)?)
}

impl Sessions {
    /// The session a row of `key` at time `t` joins, merging the open sessions it bridges; `None`
    /// when it is late (it would start a session that ended at or before the watermark).
    fn assign(&mut self, key: &[u8], t: i64, gap: i64, watermark: i64) -> Option<u32> {
        let (lo, hi) = (t, t.saturating_add(gap));
        let list = self.open.get_mut(key);
        let overlapping: Vec<u32> = list
            .as_ref()
            .map(|l| l.iter().copied().filter(|id| self.sessions[*id as usize].start < hi && lo < self.sessions[*id as usize].end).collect())
            .unwrap_or_default();
        let Some(&target) = overlapping.first() else {
            if hi <= watermark {
                return None;
            }
            let id = self.sessions.len() as u32;
            self.sessions.push(Session { key: key.into(), start: lo, end: hi, uid: self.next_uid, dirty: true, saved: false });
            self.next_uid += 1;
            self.merged_into.push(id);
            self.ends.push(Reverse((hi, id)));
            self.key_bytes += key.len();
            match list {
                Some(l) => l.push(id),
                None => {
                    self.key_bytes += key.len();
                    self.open.insert(key.into(), vec![id]);
                }
            }
            return Some(id);
        };
        let (mut start, mut end) = (lo, hi);
        for id in &overlapping {
            let s = &self.sessions[*id as usize];
            (start, end) = (start.min(s.start), end.max(s.end));
        }
        for id in &overlapping[1..] {
            self.merged_into[*id as usize] = target;
            let absorbed = &self.sessions[*id as usize];
            if absorbed.saved {
                self.removed.push(absorbed.uid);
            }
        }
        if let Some(l) = list {
            l.retain(|id| *id == target || !overlapping.contains(id));
        }
        let s = &mut self.sessions[target as usize];
        s.dirty = true;
        s.start = start;
        if end != s.end {
            s.end = end;
            self.ends.push(Reverse((end, target)));
        }
        Some(target)
    }

    /// Bytes the sessions in memory take.
    fn size(&self) -> usize {
        self.table.size()
            + self.key_bytes
            + self.sessions.capacity() * std::mem::size_of::<Session>()
            + self.merged_into.capacity() * 4
            + self.ends.capacity() * 16
    }
}

impl SessionAggregateOp {
    /// Aggregates `batch`'s rows into their keys' sessions; rows of keys on disk are held for their
    /// bucket. A row is late if it would start a session the watermark passed: the watermark it came
    /// under (`arrived`, held rows), else the current one.
    fn aggregate(&mut self, batch: RecordBatch, arrived: Option<&[i64]>) -> Result<()> {
        let (spec, watermark) = (self.spec.clone(), self.watermark);
        let st = self.sessions()?;
        let keys = spec.keys.iter().map(|k| evaluate(k, &batch)).collect::<Result<Vec<_>>>()?;
        let rows = match &st.keys {
            Some(c) => Some(c.convert_columns(&keys)?),
            None => None,
        };
        let micros = arrow::compute::cast(batch.column(spec.time), &DataType::Int64)?;
        let micros = micros.as_primitive::<Int64Type>();
        let (mut take, mut ids, mut late) = (Vec::with_capacity(batch.num_rows()), Vec::with_capacity(batch.num_rows()), 0u64);
        let mut held: Vec<Vec<u32>> = if st.spilled.iter().any(Option::is_some) { vec![Vec::new(); BUCKETS] } else { vec![] };
        for i in 0..batch.num_rows() {
            // A row without a time is in no session.
            if micros.is_null(i) {
                continue;
            }
            let key: &[u8] = rows.as_ref().map_or(&[], |r| r.row(i).data());
            if !held.is_empty() {
                let b = bucket_of(key);
                if st.spilled[b].is_some() {
                    held[b].push(i as u32);
                    continue;
                }
            }
            match st.assign(key, micros.value(i), spec.gap, arrived.map_or(watermark, |a| a[i])) {
                Some(id) => {
                    take.push(i as u32);
                    ids.push(id);
                }
                None => late += 1,
            }
        }
        for (b, rows) in held.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let came: Vec<i64> = rows.iter().map(|r| arrived.map_or(watermark, |a| a[*r as usize])).collect();
            // A row whose own session the watermark passed can only join a session on disk (else it
            // is late): only the others may make a session of their own.
            let ends = rows.iter().map(|r| micros.value(*r as usize).saturating_add(spec.gap)).zip(&came);
            let held_end = ends.filter(|(end, w)| end > *w).map(|(end, _)| end).min().unwrap_or(i64::MAX);
            let part = arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
            let mut fields: Vec<Field> = part.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("watermark", DataType::Int64, false));
            let mut columns = part.columns().to_vec();
            columns.push(Arc::new(Int64Array::from(came)));
            let part = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
            if let Some(spilled) = &mut st.spilled[b] {
                spilled.held_end = spilled.held_end.min(held_end);
                spilled.bucket.hold(part);
            }
        }
        if late > 0 {
            self.metrics.late_rows.fetch_add(late, Ordering::Relaxed);
        }
        if take.is_empty() {
            return Ok(());
        }
        let kept = if take.len() == batch.num_rows() { batch } else { arrow::compute::take_record_batch(&batch, &UInt32Array::from(take))? };
        let mut columns = kept.columns().to_vec();
        columns.push(Arc::new(UInt32Array::from(ids)));
        let numbered = RecordBatch::try_new(self.numbered.clone(), columns)?;
        let by_session = self.by_session.clone();
        self.sessions()?.table.update(&by_session, &numbered)
    }
}

impl Operator for SessionAggregateOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.aggregate(batch, None)?;
        self.load_due(false, out)?;
        self.account()
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        // A restored job's state and watermark are back before anything else happens.
        self.sessions()?;
        match msg {
            Message::Watermark(w) if w > self.watermark => {
                self.watermark = w;
                self.close(w, out)?;
                self.load_due(false, out)?;
                self.account()?;
                out.push(Message::Watermark(self.output_watermark(w)));
            }
            Message::Watermark(_) => {}
            Message::Barrier(e) => {
                if let Some(ck) = self.checkpoint.clone() {
                    // Held rows are aggregated first (and sessions they close emitted before the
                    // barrier): a checkpoint saves sessions only.
                    self.load_due(true, out)?;
                    self.snapshot(&ck, e)?;
                }
                out.push(Message::Barrier(e));
            }
            Message::End => {
                self.close_all(out)?;
                if let Some(ck) = &self.checkpoint {
                    ck.coordinator.retire(ck.component)?;
                }
                out.push(Message::End);
            }
            Message::Idle => {
                // Held rows wait no longer than they would with input flowing.
                self.load_due(false, out)?;
                self.account()?;
                out.push(Message::Idle);
            }
            other => out.push(other),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::checkpoint::{CheckpointConfig, Coordinator};
    use crate::logical::AggFunc;
    use arrow::array::StringArray;
    use arrow::datatypes::TimeUnit;

    const GAP: i64 = 10;

    fn spec() -> Arc<SessionAggSpec> {
        let ts = DataType::Timestamp(TimeUnit::Microsecond, None);
        let input = Arc::new(Schema::new(vec![Field::new("k", DataType::Utf8, true), Field::new("ts", ts.clone(), true), Field::new("v", DataType::Int64, true)]));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("window_start", ts.clone(), false),
            Field::new("window_end", ts, false),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
        ]));
        Arc::new(SessionAggSpec {
            keys: vec![Expr::Column(0)],
            time: 1,
            gap: GAP,
            group: vec![SessionColumn::Key(0), SessionColumn::Start, SessionColumn::End],
            aggs: vec![
                AggCall { func: AggFunc::CountStar, args: vec![], distinct: false, ty: DataType::Int64 },
                AggCall { func: AggFunc::Sum, args: vec![Expr::Column(2)], distinct: false, ty: DataType::Int64 },
            ],
            input_schema: input,
            schema,
        })
    }

    /// Rows `(key, time µs, value)` as an input batch.
    fn rows(rows: &[(&str, i64, i64)]) -> Message {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        Message::Batch(RecordBatch::try_new(spec().input_schema.clone(), columns).expect("batch"))
    }

    /// The sessions `msg` closes, one `key start end n total` line each, sorted.
    fn emit(op: &mut SessionAggregateOp, msg: Message) -> Vec<String> {
        let mut out = vec![];
        match msg {
            Message::Batch(b) => op.on_batch(b, &mut out).expect("batch"),
            other => op.on_control(other, &mut out).expect("control"),
        }
        let mut lines = vec![];
        for m in out {
            let Message::Batch(b) = m else { continue };
            for row in 0..b.num_rows() {
                let cells: Vec<String> =
                    b.columns().iter().map(|c| crate::format::format_value(c, row).expect("format").unwrap_or_default()).collect();
                lines.push(cells.join(" "));
            }
        }
        lines.sort();
        lines
    }

    fn memory(pool: Arc<MemoryPool>) -> (Arc<MemoryPool>, Arc<SpillManager>) {
        (pool, Arc::new(SpillManager::new(None, None)))
    }

    /// Runs `msg` through `op`: the sessions it emits (`key start end n total`, unsorted) and their
    /// ends, and the output watermarks.
    fn run(op: &mut SessionAggregateOp, msg: Message) -> (Vec<(String, i64)>, Vec<i64>) {
        let mut out = vec![];
        match msg {
            Message::Batch(b) => op.on_batch(b, &mut out).expect("batch"),
            other => op.on_control(other, &mut out).expect("control"),
        }
        let (mut rows, mut watermarks) = (vec![], vec![]);
        for m in out {
            match m {
                Message::Batch(b) => {
                    let ends = arrow::compute::cast(b.column(2), &DataType::Int64).expect("cast");
                    for row in 0..b.num_rows() {
                        let cells: Vec<String> =
                            b.columns().iter().map(|c| crate::format::format_value(c, row).expect("format").unwrap_or_default()).collect();
                        rows.push((cells.join(" "), ends.as_primitive::<Int64Type>().value(row)));
                    }
                }
                Message::Watermark(w) => watermarks.push(w),
                _ => {}
            }
        }
        (rows, watermarks)
    }

    /// Sessions written to disk a bucket of keys at a time (every batch: no memory for them) are the
    /// sessions of the same rows in memory, late rows are dropped alike, a job restored from a
    /// checkpoint taken while buckets were on disk carries on the same, and a session that closes
    /// later than it would have in memory (its bucket was on disk) is not late for the watermarks
    /// sent on before it: they were held below it.
    #[test]
    fn spilled_sessions_are_those_in_memory_and_never_late() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut in_memory = SessionAggregateOp::new(spec(), memory(MemoryPool::new(1 << 30)), Arc::new(OpMetrics::default()), None);
        let coordinator = Coordinator::open(&CheckpointConfig { dir: dir.path().to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open");
        let spilling = |c: &Arc<Coordinator>, metrics: &Arc<OpMetrics>| {
            let ck = OperatorCheckpoint::register(c, "session-0".into()).expect("register");
            SessionAggregateOp::new(spec(), memory(MemoryPool::forcing_spill()), metrics.clone(), Some(ck))
        };
        let metrics = Arc::new(OpMetrics::default());
        let mut op = spilling(&coordinator, &metrics);
        // 300 keys, rows a few µs apart with gaps now and then longer than GAP, slightly out of order.
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let keys: Vec<String> = (0..300).map(|k| format!("key{k}")).collect();
        let (mut t, mut watermark, mut sent) = (0i64, i64::MIN, i64::MIN);
        let (mut want, mut got, mut on_the_way) = (vec![], vec![], 0);
        for step in 0..120 {
            let batch: Vec<(&str, i64, i64)> = (0..40)
                .map(|_| {
                    t += (next() % 3) as i64;
                    (keys[(next() % 300) as usize].as_str(), t - (next() % 4) as i64, (next() % 100) as i64)
                })
                .collect();
            for msg in [rows(&batch), Message::Watermark(t - 6), Message::Idle] {
                let copy = match &msg {
                    Message::Batch(b) => Message::Batch(b.clone()),
                    Message::Watermark(w) => Message::Watermark(*w),
                    _ => Message::Idle,
                };
                let before = watermark;
                if let Message::Watermark(w) = msg {
                    watermark = watermark.max(w);
                }
                want.extend(run(&mut in_memory, copy).0.into_iter().map(|(r, _)| r));
                let (rows, watermarks) = run(&mut op, msg);
                for (row, end) in rows {
                    // Closed after the watermark passed its end (its bucket was on disk): the
                    // watermarks sent on stayed below its time.
                    if end <= before {
                        assert!(end - WINDOW_TIME_BEFORE_END >= sent, "step {step}: {row} late for {sent}");
                    }
                    got.push(row);
                    on_the_way += 1;
                }
                sent = watermarks.into_iter().fold(sent, i64::max);
            }
            if step == 60 {
                // A checkpoint, then the job stops and starts again from it.
                // (Sessions the held rows close come out ahead of the barrier.)
                got.extend(run(&mut op, Message::Barrier(1)).0.into_iter().map(|(r, _)| r));
                coordinator.drain().expect("written");
                assert!(metrics.spilled_bytes.load(Ordering::Relaxed) > 0, "nothing spilled");
                drop(op);
                let c = Coordinator::open(&CheckpointConfig { dir: dir.path().to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("reopen");
                op = spilling(&c, &metrics);
            }
        }
        want.extend(run(&mut in_memory, Message::End).0.into_iter().map(|(r, _)| r));
        got.extend(run(&mut op, Message::End).0.into_iter().map(|(r, _)| r));
        assert!(on_the_way > 100, "{on_the_way} sessions closed before the end");
        want.sort();
        got.sort();
        let missing: Vec<&String> = want.iter().filter(|r| !got.contains(r)).take(5).collect();
        let extra: Vec<&String> = got.iter().filter(|r| !want.contains(r)).take(5).collect();
        assert!(got == want, "{} sessions, {} in memory; missing {missing:?}, extra {extra:?}", got.len(), want.len());
        let late = |op: &SessionAggregateOp| op.metrics.late_rows.load(Ordering::Relaxed);
        assert_eq!(late(&op), late(&in_memory));
    }

    /// A row held for a bucket on disk, whose own session the watermark passes before the bucket
    /// comes back: aggregated under the watermark it came under, it is not late, and its session
    /// comes out (later) as in memory.
    #[test]
    fn a_held_row_is_not_late_when_its_bucket_comes_back() {
        let converter = RowConverter::new(vec![SortField::new(DataType::Utf8)]).expect("converter");
        let bucket = |k: &str| {
            let rows = converter.convert_columns(&[Arc::new(StringArray::from(vec![k])) as ArrayRef]).expect("encode");
            bucket_of(rows.row(0).data())
        };
        let other = (0..).map(|i| format!("k{i}")).find(|k| bucket(k) == bucket("a")).expect("a key in a's bucket");
        let mut in_memory = SessionAggregateOp::new(spec(), memory(MemoryPool::new(1 << 30)), Arc::new(OpMetrics::default()), None);
        let mut op = SessionAggregateOp::new(spec(), memory(MemoryPool::forcing_spill()), Arc::new(OpMetrics::default()), None);
        // a's session runs to 105 (on disk); then a row of the other key at 20 is held.
        let long: Vec<(&str, i64, i64)> = (0..20).map(|i| ("a", i * 5, 1)).collect();
        let (mut want, mut got) = (vec![], vec![]);
        for msg in [rows(&long), Message::Watermark(-100), rows(&[(other.as_str(), 20, 2)]), Message::Watermark(50), Message::End] {
            let copy = match &msg {
                Message::Batch(b) => Message::Batch(b.clone()),
                Message::Watermark(w) => Message::Watermark(*w),
                _ => Message::End,
            };
            want.extend(emit(&mut in_memory, copy));
            got.extend(emit(&mut op, msg));
        }
        want.sort();
        got.sort();
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got, want);
    }

    fn checkpointed(dir: &std::path::Path) -> (Arc<Coordinator>, SessionAggregateOp) {
        let coordinator = Coordinator::open(&CheckpointConfig { dir: dir.to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open");
        let ck = OperatorCheckpoint::register(&coordinator, "session-0".into()).expect("register");
        (coordinator, SessionAggregateOp::new(spec(), memory(MemoryPool::new(1 << 30)), Arc::new(OpMetrics::default()), Some(ck)))
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut f: Vec<String> =
            std::fs::read_dir(dir.join("shared/session-0")).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        f.sort();
        f
    }

    /// A restored session aggregate carries on exactly as one that never stopped: across a whole
    /// snapshot, deltas of changed sessions, a saved session closed and one absorbed by a merge, and
    /// the compaction the chain's growth forces.
    #[test]
    fn a_restored_session_aggregate_carries_on_as_if_it_never_stopped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut never_stopped = SessionAggregateOp::new(spec(), memory(MemoryPool::new(1 << 30)), Arc::new(OpMetrics::default()), None);
        let (c, mut op) = checkpointed(dir.path());
        let step = |op: &mut SessionAggregateOp, never: &mut SessionAggregateOp, msg: Message| {
            let clone = match &msg {
                Message::Batch(b) => Message::Batch(b.clone()),
                Message::Watermark(w) => Message::Watermark(*w),
                _ => unreachable!("rows and watermarks only"),
            };
            let got = emit(op, msg);
            assert_eq!(got, emit(never, clone));
            got
        };
        let barrier = |c: &Coordinator, op: &mut SessionAggregateOp, e: u64| {
            emit(op, Message::Barrier(e));
            c.drain().expect("written");
        };
        // Sessions that stay open and unchanged keep the chain short of compaction.
        let quiet: Vec<(&str, i64, i64)> = ["f", "g", "h", "i", "j"].iter().map(|k| (*k, 500, 1)).collect();
        step(&mut op, &mut never_stopped, rows(&[&[("a", 0, 1), ("b", 0, 2), ("c", 100, 3)], &quiet[..]].concat()));
        barrier(&c, &mut op, 1);
        assert_eq!(files(dir.path()), ["sessions-1.arrow"]);
        // a grows, d opens, then the watermark closes b (saved: its removal is written).
        step(&mut op, &mut never_stopped, rows(&[("a", 5, 10), ("d", 200, 4)]));
        assert_eq!(step(&mut op, &mut never_stopped, Message::Watermark(12)).len(), 1);
        barrier(&c, &mut op, 2);
        assert_eq!(files(dir.path()), ["removed-2.arrow", "sessions-1.arrow", "sessions-2.arrow"]);
        // A second session of c, saved, then a row bridging it with the first: it is absorbed.
        step(&mut op, &mut never_stopped, rows(&[("c", 115, 5)]));
        barrier(&c, &mut op, 3);
        step(&mut op, &mut never_stopped, rows(&[("c", 108, 6)]));
        barrier(&c, &mut op, 4);
        let chain = ["removed-2.arrow", "removed-4.arrow", "sessions-1.arrow", "sessions-2.arrow", "sessions-3.arrow", "sessions-4.arrow"];
        assert_eq!(files(dir.path()), chain);
        // Rows after the last checkpoint are lost with the crash (the source replays them).
        emit(&mut op, rows(&[("e", 300, 7)]));
        drop((c, op));
        let (c, mut op) = checkpointed(dir.path());
        assert_eq!(c.restored, 4);
        step(&mut op, &mut never_stopped, rows(&[("a", 9, 100)]));
        // More checkpoints than the chain may hold: compacted into one whole snapshot on the way.
        for e in 5..45 {
            step(&mut op, &mut never_stopped, rows(&[("d", 200 + e, e)]));
            barrier(&c, &mut op, e as u64);
        }
        assert!(files(dir.path()).len() <= crate::exec::checkpoint::MAX_CHAIN, "{:?}", files(dir.path()));
        drop((c, op));
        let (_c, mut op) = checkpointed(dir.path());
        step(&mut op, &mut never_stopped, rows(&[("e", 300, 7)]));
        let last = step(&mut op, &mut never_stopped, Message::Watermark(10_000));
        // a (three rows), c (one session of three), d (one of 41), e, and the five quiet ones.
        assert_eq!(last.len(), 9, "{last:?}");
        assert!(last.iter().any(|l| l.ends_with(" 3 111")), "{last:?}");
        assert!(last.iter().any(|l| l.ends_with(" 3 14")), "{last:?}");
    }
}
