//! The inner join of two streams: each arriving row is stored on its side and joined with the other
//! side's rows stored so far, so every matching pair is emitted once, by whichever of its two rows
//! came second (insert and probe happen under one lock). Both inputs feed one output exchange, which
//! aligns their barriers and ends once both ended.
//!
//! An interval join (`l.ts BETWEEN r.ts - a AND r.ts + b`, see [`IntervalBounds`]) forgets a row once
//! the other side's watermark shows no future row can match it, so its state stays bounded; its
//! output watermark is held back by the interval so that joined rows are never late. A regular join
//! keeps every row (no time bounds its state) and its output carries no event time: watermarks stop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, SchemaRef, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};

use super::{Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::{evaluate, evaluate_predicate};
use crate::logical::Expr;
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::{Message, Timestamp};
use crate::physical::IntervalBounds;

pub struct StreamJoinSpec {
    pub left_keys: Vec<Expr>,
    pub right_keys: Vec<Expr>,
    /// Over left ++ right; includes the interval condition.
    pub filter: Option<Expr>,
    pub interval: Option<IntervalBounds>,
    pub left_schema: SchemaRef,
    /// left ++ right: the output.
    pub schema: SchemaRef,
}

/// One input's stored rows.
#[derive(Default)]
struct Side {
    /// Stored batches by id; a batch leaves whole once none of its rows can match any more.
    chunks: HashMap<u64, Chunk>,
    next_chunk: u64,
    /// Key → (chunk, row) of every stored row with that key; entries of dropped chunks are skipped
    /// and swept out once they are the majority.
    index: HashMap<Box<[u8]>, Vec<(u64, u32)>>,
    live_rows: usize,
    dead_rows: usize,
    /// Per partition of this input, its last watermark (`i64::MAX` once it ended).
    watermarks: Vec<Option<Timestamp>>,
    bytes: usize,
}

struct Chunk {
    batch: RecordBatch,
    /// The latest event time in the batch (interval joins).
    max_time: Timestamp,
    rows: usize,
}

impl Side {
    fn watermark(&self) -> Option<Timestamp> {
        self.watermarks.iter().copied().collect::<Option<Vec<_>>>().and_then(|w| w.into_iter().min())
    }

    /// Drops the chunks whose every row is older than `cutoff`.
    fn evict_before(&mut self, cutoff: Timestamp) {
        let old: Vec<u64> = self.chunks.iter().filter(|(_, c)| c.max_time < cutoff).map(|(id, _)| *id).collect();
        for id in old {
            if let Some(c) = self.chunks.remove(&id) {
                self.live_rows -= c.rows;
                self.dead_rows += c.rows;
                self.bytes -= batch_bytes(&c.batch) + c.rows * 16;
            }
        }
        if self.dead_rows > self.live_rows.max(1024) {
            let chunks = &self.chunks;
            self.index.retain(|_, rows| {
                rows.retain(|(c, _)| chunks.contains_key(c));
                !rows.is_empty()
            });
            self.dead_rows = 0;
        }
    }
}

struct State {
    sides: [Side; 2],
    reservation: MemoryReservation,
}

pub struct StreamJoinShared {
    spec: StreamJoinSpec,
    /// The left keys' types; right keys are cast to them.
    key_types: Vec<DataType>,
    converter: RowConverter,
    state: Mutex<State>,
    output: Arc<Exchange>,
    left_partitions: usize,
    metrics: Arc<OpMetrics>,
}

impl StreamJoinShared {
    pub fn new(
        spec: StreamJoinSpec,
        left_partitions: usize,
        right_partitions: usize,
        output: Arc<Exchange>,
        metrics: Arc<OpMetrics>,
        pool: &Arc<MemoryPool>,
    ) -> Result<StreamJoinShared> {
        let key_types: Vec<DataType> = spec.left_keys.iter().map(|k| k.data_type(&spec.left_schema)).collect();
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let mut sides: [Side; 2] = Default::default();
        sides[0].watermarks = vec![None; left_partitions];
        sides[1].watermarks = vec![None; right_partitions];
        let state = Mutex::new(State { sides, reservation: pool.reservation("StreamJoin", false) });
        Ok(StreamJoinShared { spec, key_types, converter, state, output, left_partitions, metrics })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| RiffleError::exec("stream join state lock poisoned"))
    }

    /// The event time of each row of a batch of `side`, for interval joins.
    fn times(&self, side: usize, batch: &RecordBatch) -> Option<Vec<Timestamp>> {
        let b = self.spec.interval?;
        let col = if side == 0 { b.left_time } else { b.right_time };
        let times = batch.column(col).as_primitive_opt::<TimestampMicrosecondType>()?;
        Some((0..times.len()).map(|i| if times.is_valid(i) { times.value(i) } else { Timestamp::MIN }).collect())
    }

    /// Stores `batch` on `side` and returns its rows joined with the other side's.
    fn insert_and_probe(&self, side: usize, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let keys = if side == 0 { &self.spec.left_keys } else { &self.spec.right_keys };
        let columns = keys
            .iter()
            .zip(&self.key_types)
            .map(|(k, t)| {
                let v = evaluate(k, &batch)?;
                Ok(if v.data_type() == t { v } else { arrow::compute::cast(&v, t)? })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        // A NULL key matches nothing: such rows are neither stored nor probed.
        let valid: Vec<bool> = (0..batch.num_rows()).map(|r| columns.iter().all(|c| c.is_valid(r))).collect();
        let encoded = self.converter.convert_columns(&columns)?;
        let max_time = self.times(side, &batch).and_then(|t| t.into_iter().max()).unwrap_or(Timestamp::MAX);

        let mut st = self.lock()?;
        let other = &st.sides[1 - side];
        // Pairs (this row, other chunk, other row).
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(u64, u32)> = Vec::new();
        for (row, key) in encoded.iter().enumerate() {
            if !valid[row] {
                continue;
            }
            if let Some(rows) = other.index.get(key.as_ref()) {
                for (chunk, r) in rows {
                    if other.chunks.contains_key(chunk) {
                        mine.push(row as u32);
                        theirs.push((*chunk, *r));
                    }
                }
            }
        }
        let joined = if mine.is_empty() { None } else { Some(self.pairs(side, &batch, &mine, other, &theirs)?) };

        let me = &mut st.sides[side];
        let id = me.next_chunk;
        me.next_chunk += 1;
        let mut stored = 0;
        for (row, key) in encoded.iter().enumerate() {
            if valid[row] {
                me.index.entry(key.as_ref().into()).or_default().push((id, row as u32));
                stored += 1;
            }
        }
        if stored > 0 {
            me.bytes += batch_bytes(&batch) + stored * 16;
            me.live_rows += stored;
            me.chunks.insert(id, Chunk { batch, max_time, rows: stored });
        }
        let size = st.sides.iter().map(|s| s.bytes).sum::<usize>();
        if !st.reservation.try_resize(size) {
            return Err(st.reservation.out_of_memory(size.saturating_sub(st.reservation.size())));
        }
        self.metrics.note_bytes(size);
        drop(st);

        let Some(pairs) = joined else { return Ok(None) };
        let kept = match &self.spec.filter {
            Some(f) => {
                let mask = evaluate_predicate(f, &pairs)?;
                filter_record_batch(&pairs, &mask)?
            }
            None => pairs,
        };
        Ok((kept.num_rows() > 0).then_some(kept))
    }

    /// The output rows of the pairs: this batch's rows `mine`, the other side's stored rows `theirs`.
    fn pairs(&self, side: usize, batch: &RecordBatch, mine: &[u32], other: &Side, theirs: &[(u64, u32)]) -> Result<RecordBatch> {
        let indices = UInt32Array::from(mine.to_vec());
        let mine_cols = batch.columns().iter().map(|c| Ok(take(c.as_ref(), &indices, None)?)).collect::<Result<Vec<ArrayRef>>>()?;
        // The other side's rows come from many chunks: number the chunks involved and interleave.
        let mut slot_of: HashMap<u64, usize> = HashMap::new();
        let mut chunks: Vec<&RecordBatch> = Vec::new();
        let picks: Vec<(usize, usize)> = theirs
            .iter()
            .map(|(c, r)| {
                let slot = *slot_of.entry(*c).or_insert_with(|| {
                    chunks.push(&other.chunks[c].batch);
                    chunks.len() - 1
                });
                (slot, *r as usize)
            })
            .collect();
        let width = chunks.first().map_or(0, |b| b.num_columns());
        let theirs_cols = (0..width)
            .map(|col| {
                let arrays: Vec<&dyn Array> = chunks.iter().map(|b| b.column(col).as_ref()).collect();
                Ok(interleave(&arrays, &picks)?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let columns = if side == 0 { [mine_cols, theirs_cols].concat() } else { [theirs_cols, mine_cols].concat() };
        Ok(RecordBatch::try_new(self.spec.schema.clone(), columns)?)
    }

    /// Partition `p` of `side` reached watermark `w`: forget what can no longer match, and return
    /// the output watermark, if it moved.
    fn watermark(&self, side: usize, p: usize, w: Timestamp) -> Result<Option<Timestamp>> {
        let Some(bounds) = self.spec.interval else { return Ok(None) };
        let mut st = self.lock()?;
        st.sides[side].watermarks[p] = Some(w);
        if let Some(wm) = st.sides[side].watermark() {
            // A future row of this side has time ≥ wm; a stored row of the other side can still
            // match it only within the interval (l - r ∈ [lo, hi]).
            if side == 0 {
                st.sides[1].evict_before(wm.saturating_sub(bounds.hi));
            } else {
                st.sides[0].evict_before(wm.saturating_add(bounds.lo));
            }
        }
        let size = st.sides.iter().map(|s| s.bytes).sum::<usize>();
        let _ = st.reservation.try_resize(size);
        // Joined rows have times ≥ (the watermark) − (the interval's reach): the exchange takes the
        // minimum over every input partition.
        Ok(Some(w.saturating_sub(bounds.reach())))
    }
}

/// The bytes of the rows of `batch` (a slice of a larger batch counts its share only).
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size())).sum()
}

/// One input partition of a stream join.
pub struct StreamJoinSink {
    shared: Arc<StreamJoinShared>,
    side: usize,
    partition: usize,
}

impl StreamJoinSink {
    pub fn new(shared: Arc<StreamJoinShared>, side: usize, partition: usize) -> StreamJoinSink {
        StreamJoinSink { shared, side, partition }
    }

    fn producer(&self) -> usize {
        if self.side == 0 { self.partition } else { self.shared.left_partitions + self.partition }
    }
}

impl Sink for StreamJoinSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        let producer = self.producer();
        match msg {
            Message::Batch(b) => {
                if let Some(out) = self.shared.insert_and_probe(self.side, b)? {
                    self.shared.metrics.rows.fetch_add(out.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
                    self.shared.metrics.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.shared.output.push(producer, Message::Batch(out));
                }
            }
            Message::Watermark(w) => {
                if let Some(out) = self.shared.watermark(self.side, self.partition, w)? {
                    self.shared.output.push(producer, Message::Watermark(out));
                }
            }
            Message::End => {
                // An ended input holds back nothing.
                self.shared.watermark(self.side, self.partition, Timestamp::MAX)?;
                self.shared.output.push(producer, Message::End);
            }
            barrier => self.shared.output.push(producer, barrier),
        }
        Ok(())
    }

    fn has_capacity(&self) -> bool {
        self.shared.output.has_capacity(self.producer())
    }

    fn closed(&self) -> bool {
        self.shared.output.closed()
    }
}
