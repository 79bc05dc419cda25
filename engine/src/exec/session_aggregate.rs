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
//! and the open sessions (key, start, end), their partial states and the watermark are written; a
//! restored job reads them back before its first row.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type};
use arrow::row::{RowConverter, SortField};

use super::aggregate::{AggSpec, GroupTable, Partial};
use super::checkpoint::OperatorCheckpoint;
use super::{OpMetrics, Operator};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, Expr, WINDOW_TIME_BEFORE_END};
use crate::memory::{MemoryPool, MemoryReservation};
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
    metrics: Arc<OpMetrics>,
    /// Made on first use (making it can fail).
    state: Option<Sessions>,
    watermark: i64,
}

#[derive(Clone)]
struct Session {
    key: Box<[u8]>,
    start: i64,
    end: i64,
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
}

impl SessionAggregateOp {
    pub fn new(
        spec: Arc<SessionAggSpec>,
        pool: Arc<MemoryPool>,
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
        SessionAggregateOp { spec, checkpoint, by_session, numbered, pool, metrics, state: None, watermark: i64::MIN }
    }

    fn sessions(&mut self) -> Result<&mut Sessions> {
        if self.state.is_none() {
            let key_types: Vec<SortField> =
                self.spec.keys.iter().map(|k| SortField::new(k.data_type(&self.spec.input_schema))).collect();
            let keys = if key_types.is_empty() { None } else { Some(RowConverter::new(key_types)?) };
            self.state = Some(Sessions {
                keys,
                open: HashMap::new(),
                sessions: vec![],
                merged_into: vec![],
                ends: BinaryHeap::new(),
                table: GroupTable::new(&self.by_session)?,
                key_bytes: 0,
                reservation: self.pool.reservation("SessionAggregate", false),
            });
            let restore = self.checkpoint.as_ref().and_then(|c| c.restore_dir());
            if let Some(dir) = restore {
                self.restore(&dir)?;
            }
        }
        self.state.as_mut().ok_or_else(|| RiffleError::exec("session state missing"))
    }

    /// Saves the open sessions, their partial states and the watermark as of barrier `e` (written
    /// asynchronously, then the epoch acked).
    fn snapshot(&mut self, ck: &OperatorCheckpoint, e: u64) -> Result<()> {
        let (spec, by_session, watermark) = (self.spec.clone(), self.by_session.clone(), self.watermark);
        let st = self.sessions()?;
        // Merged sessions folded in, so that each open session is one group.
        st.rebuild(&spec, &by_session, vec![])?;
        let partial = st.table.take_changes(true)?;
        let sessions = RecordBatch::try_from_iter([
            ("key", Arc::new(BinaryArray::from_iter_values(st.sessions.iter().map(|s| &s.key[..]))) as ArrayRef),
            ("start", Arc::new(Int64Array::from_iter_values(st.sessions.iter().map(|s| s.start))) as ArrayRef),
            ("end", Arc::new(Int64Array::from_iter_values(st.sessions.iter().map(|s| s.end))) as ArrayRef),
        ])?;
        let dir = ck.coordinator.state_dir(e, &ck.name)?;
        let groups = partial.map(|p| Ok::<_, RiffleError>(p.into_batch()?.0)).transpose()?;
        // Taken now, written while the next rows are aggregated.
        ck.coordinator.save_async(ck.component, e, move || {
            super::checkpoint::write_batches(&dir.join("sessions.arrow"), &[sessions])?;
            super::checkpoint::write_batches(&dir.join("groups.arrow"), groups.as_slice())?;
            super::checkpoint::write_synced(&dir.join("state.json"), serde_json::json!({ "watermark": watermark }).to_string().as_bytes())
        })
    }

    /// Reads a checkpoint's sessions back into the (new, empty) state.
    fn restore(&mut self, dir: &std::path::Path) -> Result<()> {
        let widths: Vec<usize> = GroupTable::new(&self.by_session)?.into_partial()?.states.iter().map(|s| s.len()).collect();
        if let Some(doc) = super::checkpoint::read_json(&dir.join("state.json"))? {
            self.watermark = doc.get("watermark").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
        }
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
                let id = st.sessions.len() as u32;
                let key: Box<[u8]> = keys.value(i).into();
                st.key_bytes += key.len();
                let list = st.open.entry(key.clone()).or_insert_with(|| {
                    st.key_bytes += key.len();
                    vec![]
                });
                list.push(id);
                st.sessions.push(Session { key, start: starts.value(i), end: ends.value(i) });
                st.merged_into.push(id);
                st.ends.push(Reverse((ends.value(i), id)));
            }
        }
        // Without open sessions there are no groups, and no file of them.
        if groups.exists() {
            for b in super::checkpoint::read_batches(&groups)? {
                st.table.merge(Partial::from_batch(&b, 1, &widths))?;
            }
        }
        st.account();
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
        if let Some(batch) = st.rebuild(&spec, &by_session, closed)? {
            out.push(Message::Batch(batch));
        }
        Ok(())
    }
}

impl Sessions {
    /// Takes the `closed` sessions out and returns their rows (none when there are none), and folds
    /// merged sessions' groups together, numbering the open sessions afresh.
    fn rebuild(&mut self, spec: &SessionAggSpec, by_session: &AggSpec, closed: Vec<u32>) -> Result<Option<RecordBatch>> {
        let st = self;
        // Each session number's new place: its closed session's row, or its open session's new number.
        const NONE: u32 = u32::MAX;
        let mut closed_row = vec![NONE; st.sessions.len()];
        for (i, id) in closed.iter().enumerate() {
            closed_row[*id as usize] = i as u32;
        }
        let mut renumbered = vec![NONE; st.sessions.len()];
        let mut sessions = Vec::new();
        let mut key_bytes = 0;
        for list in st.open.values_mut() {
            list.retain(|id| closed_row[*id as usize] == NONE);
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
        let (mut to_closed, mut to_open) = (vec![], vec![]);
        let mut closing = Vec::with_capacity(ids.len());
        for id in ids.values() {
            let root = find(&st.merged_into, *id);
            let c = closed_row[root as usize];
            closing.push(c != NONE);
            if c != NONE {
                to_closed.push(c);
            } else {
                to_open.push(renumbered[root as usize]);
            }
        }
        let mask = BooleanArray::from(closing);
        let open_mask = arrow::compute::not(&mask)?;
        let mut open_table = GroupTable::new(by_session)?;
        open_table.merge(partial.select(&open_mask, vec![Arc::new(UInt32Array::from(to_open))])?)?;
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
        st.account();
        Ok(batch)
    }
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
            self.sessions.push(Session { key: key.into(), start: lo, end: hi });
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
        }
        if let Some(l) = list {
            l.retain(|id| *id == target || !overlapping.contains(id));
        }
        let s = &mut self.sessions[target as usize];
        s.start = start;
        if end != s.end {
            s.end = end;
            self.ends.push(Reverse((end, target)));
        }
        Some(target)
    }

    /// Holds the memory the state takes in the pool. The open sessions cannot spill (yet) and must be
    /// kept, so beyond the budget they are counted anyway, as a window aggregate's open windows are:
    /// other operators then see less room.
    /// Counts the state in the pool; its size, for EXPLAIN ANALYZE's peak_mem.
    fn account(&mut self) -> usize {
        let bytes = self.table.size()
            + self.key_bytes
            + self.sessions.capacity() * std::mem::size_of::<Session>()
            + self.merged_into.capacity() * 4
            + self.ends.capacity() * 16;
        self.reservation.resize_anyway(bytes);
        bytes
    }
}

impl Operator for SessionAggregateOp {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
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
        for i in 0..batch.num_rows() {
            // A row without a time is in no session.
            if micros.is_null(i) {
                continue;
            }
            let key: &[u8] = rows.as_ref().map_or(&[], |r| r.row(i).data());
            match st.assign(key, micros.value(i), spec.gap, watermark) {
                Some(id) => {
                    take.push(i as u32);
                    ids.push(id);
                }
                None => late += 1,
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
        let st = self.sessions()?;
        st.table.update(&by_session, &numbered)?;
        let bytes = st.account();
        self.metrics.note_bytes(bytes);
        Ok(())
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        // A restored job's state and watermark are back before anything else happens.
        self.sessions()?;
        match msg {
            Message::Watermark(w) if w > self.watermark => {
                self.watermark = w;
                self.close(w, out)?;
                out.push(Message::Watermark(w));
            }
            Message::Watermark(_) => {}
            Message::Barrier(e) => {
                if let Some(ck) = self.checkpoint.clone() {
                    self.snapshot(&ck, e)?;
                }
                out.push(Message::Barrier(e));
            }
            Message::End => {
                self.close(i64::MAX, out)?;
                if let Some(ck) = &self.checkpoint {
                    ck.coordinator.retire(ck.component)?;
                }
                out.push(Message::End);
            }
            other => out.push(other),
        }
        Ok(())
    }
}
