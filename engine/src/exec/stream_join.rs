//! The inner join of two streams: each arriving row is stored on its side and joined with the other
//! side's rows stored so far, so every matching pair is emitted once, by whichever of its two rows
//! came second (insert and probe happen under one lock). Both inputs feed one output exchange, which
//! aligns their barriers and ends once both ended.
//!
//! An interval join (`l.ts BETWEEN r.ts - a AND r.ts + b`, see [`IntervalBounds`]) forgets a row once
//! the other side's watermark shows no future row can match it, so its state stays bounded; its
//! output watermark is held back by the interval so that joined rows are never late. A regular join
//! keeps every row (no time bounds its state), unless a state TTL is set (Flink's
//! `table.exec.state.ttl`): then a row is forgotten that long after it was stored (processing time),
//! as Flink's state TTL does. Its output carries no event time: watermarks stop.
//!
//! Checkpoints: a producer that delivered barrier `e` gets no credit from the output exchange until
//! every producer of both inputs delivered it (aligned barriers), so when the last one arrives the
//! stored rows are exactly those before the barrier: they are taken then (incrementally: the chunks
//! stored since the last checkpoint go into one new shared file, and a checkpoint names the files
//! holding live chunks with their positions; a file with fewer live chunks than dropped ones has its
//! live ones written again and is dropped), written while the join goes on, and the epoch acked
//! once they are. Restored, the rows are
//! stored again (not probed: their pairs were emitted before the checkpoint) and the rows replayed
//! after it probe them, so every pair comes out once. Watermarks are not saved: the sources send
//! theirs again, and until then nothing is dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{filter_record_batch, interleave, take};
use arrow::datatypes::{DataType, SchemaRef, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};

use super::checkpoint::{Coordinator, EpochTracker, OperatorCheckpoint, SharedFiles};
use super::key_index::KeyIndex;
use super::{Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::{evaluate, evaluate_predicate};
use crate::logical::Expr;
use crate::memory::{batch_bytes, MemoryPool, MemoryReservation};
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
    /// How long a stored row may match (processing time); `None`: as long as the time bounds allow.
    pub state_ttl: Option<std::time::Duration>,
}

/// One input's stored rows.
#[derive(Default)]
struct Side {
    /// Stored batches by id; a batch leaves whole once none of its rows can match any more.
    chunks: HashMap<u64, Chunk>,
    next_chunk: u64,
    /// Key → (chunk, row) of every stored row with that key; entries of dropped chunks are skipped
    /// and swept out once they are the majority.
    index: KeyIndex,
    live_rows: usize,
    dead_rows: usize,
    /// Per partition of this input, its last watermark (`i64::MAX` once it ended).
    watermarks: Vec<Option<Timestamp>>,
    /// Bytes of the stored batches.
    bytes: usize,
    /// With a state TTL, when each chunk was stored, oldest first.
    stored: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// Incremental checkpoints: the shared files holding stored chunks.
    files: Vec<SavedFile>,
}

/// A shared checkpoint file of stored chunks: how many it holds, and those it holds that were stored
/// (position in the file, chunk id).
struct SavedFile {
    name: String,
    total: usize,
    chunks: Vec<(u32, u64)>,
}

struct Chunk {
    batch: RecordBatch,
    /// The latest event time in the batch (interval joins).
    max_time: Timestamp,
    rows: usize,
}

impl Side {
    /// The stored chunks as of barrier `e`, incrementally: those stored since the last checkpoint go
    /// into one new shared file (`<prefix>-<e>.arrow`), and so do the live chunks of a file that
    /// holds fewer live chunks than dropped ones (compaction: the files named hold at most about twice
    /// the stored rows). Returns the file to write, and the files the checkpoint names with the
    /// positions of their live chunks.
    fn snapshot(&mut self, prefix: &str, e: u64) -> (Option<(String, Vec<RecordBatch>)>, Vec<(String, Vec<u32>)>) {
        let chunks = &self.chunks;
        self.files.retain_mut(|f| {
            f.chunks.retain(|(_, id)| chunks.contains_key(id));
            // Compacted: its live chunks are written again below.
            f.chunks.len() * 2 >= f.total
        });
        let saved: std::collections::HashSet<u64> = self.files.iter().flat_map(|f| f.chunks.iter().map(|(_, id)| *id)).collect();
        let mut new: Vec<u64> = self.chunks.keys().copied().filter(|id| !saved.contains(id)).collect();
        new.sort_unstable();
        let write = (!new.is_empty()).then(|| {
            let name = format!("{prefix}-{e}.arrow");
            let batches = new.iter().map(|id| self.chunks[id].batch.clone()).collect();
            self.files.push(SavedFile { name: name.clone(), total: new.len(), chunks: new.iter().enumerate().map(|(i, id)| (i as u32, *id)).collect() });
            (name, batches)
        });
        let named = self.files.iter().map(|f| (f.name.clone(), f.chunks.iter().map(|(p, _)| *p).collect())).collect();
        (write, named)
    }

    /// Bytes held: the stored batches and their index.
    fn size(&self) -> usize {
        self.bytes + self.index.size()
    }

    fn watermark(&self) -> Option<Timestamp> {
        self.watermarks.iter().copied().collect::<Option<Vec<_>>>().and_then(|w| w.into_iter().min())
    }

    /// Drops the chunks whose every row is older than `cutoff`.
    fn evict_before(&mut self, cutoff: Timestamp) {
        let old: Vec<u64> = self.chunks.iter().filter(|(_, c)| c.max_time < cutoff).map(|(id, _)| *id).collect();
        self.remove(old);
    }

    /// Drops the chunks stored `ttl` or longer before `now`.
    fn expire(&mut self, now: std::time::Instant, ttl: std::time::Duration) {
        let mut old = vec![];
        while let Some((at, id)) = self.stored.front().copied() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.stored.pop_front();
            old.push(id);
        }
        self.remove(old);
    }

    fn remove(&mut self, ids: Vec<u64>) {
        for id in ids {
            if let Some(c) = self.chunks.remove(&id) {
                self.live_rows -= c.rows;
                self.dead_rows += c.rows;
                self.bytes -= batch_bytes(&c.batch);
            }
        }
        if self.dead_rows > self.live_rows.max(256) {
            let chunks = &self.chunks;
            self.index.retain(|(c, _)| chunks.contains_key(&c));
            self.dead_rows = 0;
        }
    }
}

struct State {
    sides: [Side; 2],
    reservation: MemoryReservation,
    /// Checkpoint barriers of every producer (left partitions, then right ones).
    epochs: EpochTracker,
}

struct JoinCheckpoint {
    op: OperatorCheckpoint,
    files: Arc<SharedFiles>,
    /// What the checkpoint the job restarts from names: per side, files and live positions.
    restored: Vec<Vec<(String, Vec<u32>)>>,
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
    checkpoint: Option<JoinCheckpoint>,
}

impl StreamJoinShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: StreamJoinSpec,
        left_partitions: usize,
        right_partitions: usize,
        output: Arc<Exchange>,
        metrics: Arc<OpMetrics>,
        pool: &Arc<MemoryPool>,
        checkpoint: Option<(Arc<Coordinator>, usize)>,
    ) -> Result<StreamJoinShared> {
        let key_types: Vec<DataType> = spec.left_keys.iter().map(|k| k.data_type(&spec.left_schema)).collect();
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let mut sides: [Side; 2] = Default::default();
        sides[0].watermarks = vec![None; left_partitions];
        sides[1].watermarks = vec![None; right_partitions];
        let restored = checkpoint.as_ref().map_or(0, |(c, _)| c.restored);
        let epochs = EpochTracker::new(left_partitions + right_partitions, restored);
        let state = Mutex::new(State { sides, reservation: pool.reservation("StreamJoin", false), epochs });
        let checkpoint = match checkpoint {
            None => None,
            Some((coordinator, node)) => {
                let name = format!("join-{node}");
                let restored = match coordinator.restore_dir() {
                    Some(dir) => read_named(&dir.join(&name).join("state.json"))?,
                    None => vec![vec![], vec![]],
                };
                let names: Vec<String> = restored.iter().flatten().map(|(f, _)| f.clone()).collect();
                let files = SharedFiles::open(&coordinator, &name, &names)?;
                Some(JoinCheckpoint { op: OperatorCheckpoint::register(&coordinator, name)?, files, restored })
            }
        };
        let shared = StreamJoinShared { spec, key_types, converter, state, output, left_partitions, metrics, checkpoint };
        shared.restore()?;
        Ok(shared)
    }

    /// Stores the rows of the checkpoint the job restarts from, if any: the live chunks of the files
    /// it names, which later checkpoints name again instead of writing them anew.
    fn restore(&self) -> Result<()> {
        let Some(ck) = &self.checkpoint else { return Ok(()) };
        for (side, files) in ck.restored.iter().enumerate() {
            for (name, live) in files {
                let batches = super::checkpoint::read_batches(&ck.files.path(name))?;
                let mut saved = SavedFile { name: name.clone(), total: batches.len(), chunks: vec![] };
                for p in live {
                    let batch = batches.get(*p as usize).cloned().ok_or_else(|| damaged(&ck.files.path(name)))?;
                    let (encoded, valid, max_time) = self.keys(side, &batch)?;
                    let mut st = self.lock()?;
                    let now = self.spec.state_ttl.map(|_| std::time::Instant::now());
                    if let Some(id) = store(&mut st.sides[side], batch, &encoded, &valid, max_time, now) {
                        saved.chunks.push((*p, id));
                    }
                    self.account(&mut st)?;
                }
                self.lock()?.sides[side].files.push(saved);
            }
        }
        Ok(())
    }

    /// Producer `producer` passed barrier `e` (or ended: `u64::MAX`): once every producer has, the
    /// stored rows are those before the barrier; they are written and the epoch acked.
    fn barrier(&self, producer: usize, e: u64) -> Result<()> {
        let Some(ck) = &self.checkpoint else { return Ok(()) };
        let mut st = self.lock()?;
        for epoch in st.epochs.pass(producer, e) {
            let state = ck.op.coordinator.state_dir(epoch, &ck.op.name)?.join("state.json");
            // The stored batches are shared, not copied: they are written while the join goes on.
            let mut writes = Vec::new();
            let mut named = Vec::new();
            for (side, prefix) in st.sides.iter_mut().zip(["left", "right"]) {
                let (write, files) = side.snapshot(prefix, epoch);
                writes.extend(write.map(|(name, batches)| (ck.files.path(&name), batches)));
                named.push(files);
            }
            ck.files.taken(epoch, named.iter().flatten().map(|(f, _)| f.clone()).collect());
            let doc = serde_json::json!({ "sides": named.iter().map(|files| files.iter().map(|(f, live)| serde_json::json!({ "file": f, "live": live })).collect::<Vec<_>>()).collect::<Vec<_>>() });
            ck.op.coordinator.save_async(ck.op.component, epoch, move || {
                for (path, batches) in &writes {
                    super::checkpoint::write_batches(path, batches)?;
                }
                super::checkpoint::write_synced(&state, doc.to_string().as_bytes())
            })?;
        }
        if st.epochs.all_ended() {
            ck.op.coordinator.retire(ck.op.component)?;
        }
        Ok(())
    }

    /// The budget covers both sides' stored rows.
    fn account(&self, st: &mut State) -> Result<()> {
        let size = st.sides.iter().map(Side::size).sum::<usize>();
        if !st.reservation.try_resize(size) {
            return Err(st.reservation.out_of_memory(size.saturating_sub(st.reservation.size())));
        }
        self.metrics.note_bytes(size);
        Ok(())
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

    /// A batch of `side`'s join keys (encoded), which rows have no NULL key, and its latest event time.
    fn keys(&self, side: usize, batch: &RecordBatch) -> Result<(arrow::row::Rows, Vec<bool>, Timestamp)> {
        let keys = if side == 0 { &self.spec.left_keys } else { &self.spec.right_keys };
        let columns = keys
            .iter()
            .zip(&self.key_types)
            .map(|(k, t)| {
                let v = evaluate(k, batch)?;
                Ok(if v.data_type() == t { v } else { arrow::compute::cast(&v, t)? })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        // A NULL key matches nothing: such rows are neither stored nor probed.
        let valid: Vec<bool> = (0..batch.num_rows()).map(|r| columns.iter().all(|c| c.is_valid(r))).collect();
        let encoded = self.converter.convert_columns(&columns)?;
        let max_time = self.times(side, batch).and_then(|t| t.into_iter().max()).unwrap_or(Timestamp::MAX);
        Ok((encoded, valid, max_time))
    }

    /// Stores `batch` on `side` and returns its rows joined with the other side's.
    fn insert_and_probe(&self, side: usize, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let (encoded, valid, max_time) = self.keys(side, &batch)?;
        let mut st = self.lock()?;
        let now = self.spec.state_ttl.map(|ttl| {
            // Expired rows never match (as Flink's state TTL never returns expired state).
            let now = std::time::Instant::now();
            st.sides.iter_mut().for_each(|s| s.expire(now, ttl));
            now
        });
        let other = &st.sides[1 - side];
        // Pairs (this row, other chunk, other row).
        let mut mine: Vec<u32> = Vec::new();
        let mut theirs: Vec<(u64, u32)> = Vec::new();
        for (row, key) in encoded.iter().enumerate() {
            if !valid[row] {
                continue;
            }
            for (chunk, r) in other.index.get(key.as_ref()) {
                if other.chunks.contains_key(&chunk) {
                    mine.push(row as u32);
                    theirs.push((chunk, r));
                }
            }
        }
        let joined = if mine.is_empty() { None } else { Some(self.pairs(side, &batch, &mine, other, &theirs)?) };

        store(&mut st.sides[side], batch, &encoded, &valid, max_time, now);
        self.account(&mut st)?;
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
        let size = st.sides.iter().map(Side::size).sum::<usize>();
        let _ = st.reservation.try_resize(size);
        // Joined rows have times ≥ (the watermark) − (the interval's reach): the exchange takes the
        // minimum over every input partition.
        Ok(Some(w.saturating_sub(bounds.reach())))
    }
}

/// Per side, the shared files a checkpoint's `state.json` names and the positions of their live chunks.
fn read_named(path: &std::path::Path) -> Result<Vec<Vec<(String, Vec<u32>)>>> {
    let Some(doc) = super::checkpoint::read_json(path)? else { return Ok(vec![vec![], vec![]]) };
    let sides = doc.get("sides").and_then(|s| s.as_array()).filter(|s| s.len() == 2).ok_or_else(|| damaged(path))?;
    sides
        .iter()
        .map(|files| {
            files
                .as_array()
                .ok_or_else(|| damaged(path))?
                .iter()
                .map(|f| {
                    let name = f.get("file").and_then(|n| n.as_str()).ok_or_else(|| damaged(path))?;
                    let live = f.get("live").and_then(|l| l.as_array()).ok_or_else(|| damaged(path))?;
                    let live = live.iter().map(|p| p.as_u64().map(|p| p as u32).ok_or_else(|| damaged(path))).collect::<Result<Vec<u32>>>()?;
                    Ok((name.to_string(), live))
                })
                .collect()
        })
        .collect()
}

fn damaged(path: &std::path::Path) -> RiffleError {
    RiffleError::exec(format!("checkpoint: {} is not this join's state; remove the checkpoint directory to start afresh", path.display()))
}

/// Stores the rows of `batch` with a key (`valid`) on `side`, indexed by their `encoded` keys.
/// `now`: when it is stored, with a state TTL (without one, the time is not kept).
/// The chunk's id, if a row was stored.
fn store(side: &mut Side, batch: RecordBatch, encoded: &arrow::row::Rows, valid: &[bool], max_time: Timestamp, now: Option<std::time::Instant>) -> Option<u64> {
    let id = side.next_chunk;
    side.next_chunk += 1;
    let mut stored = 0;
    for (row, key) in encoded.iter().enumerate() {
        if valid[row] {
            side.index.insert(key.as_ref(), (id, row as u32));
            stored += 1;
        }
    }
    if stored == 0 {
        return None;
    }
    side.bytes += batch_bytes(&batch);
    side.live_rows += stored;
    side.chunks.insert(id, Chunk { batch, max_time, rows: stored });
    side.stored.extend(now.map(|at| (at, id)));
    Some(id)
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
                // An ended input holds back nothing (and no checkpoint waits for it).
                self.shared.watermark(self.side, self.partition, Timestamp::MAX)?;
                self.shared.barrier(producer, u64::MAX)?;
                self.shared.output.push(producer, Message::End);
            }
            Message::Barrier(epoch) => {
                // Saved before this barrier reaches the exchange: until the last one does, the
                // producers past it are held back (no credit), so no later row is stored yet.
                self.shared.barrier(producer, epoch)?;
                self.shared.output.push(producer, Message::Barrier(epoch));
            }
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
