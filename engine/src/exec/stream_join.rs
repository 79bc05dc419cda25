//! The join of two streams: each arriving row is stored on its side and joined with the other
//! side's rows stored so far, so every matching pair is emitted once, by whichever of its two rows
//! came second (insert, probe and the join condition happen under one lock). Both inputs feed one
//! output exchange, which aligns their barriers and ends once both ended.
//!
//! Outer joins (left, right, full) also emit each row of a kept side that matches nothing, padded with
//! NULLs, as Flink does. An interval join emits it when the row is dropped (no future row can match
//! it), so its output stays append-only. A regular join cannot know that: it emits the padded row at
//! once and takes it back (`-D`) when the row's first match arrives, so its output is a changelog
//! (pushed under the lock, in the order decided, to one consumer). A stored row of a kept side knows
//! whether it matched; checkpoints save that too. Once one side ended, the other side's rows are
//! no longer stored (nothing can match them): an outer row of it without match leaves at once.
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
use std::time::Instant;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int8Array, RecordBatch, UInt32Array};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use arrow::row::{RowConverter, SortField};

use super::checkpoint::{Coordinator, EpochTracker, OperatorCheckpoint, SharedFiles};
use super::key_index::{KeyIndex, RowRef};
use super::keyed_spill::{batches_of, biggest_buckets, bucket_of, write_biggest_held, SpilledBucket, BUCKETS, HELD_IN_MEMORY, MAX_HELD_AGE, STATE_BATCH_ROWS};
use super::{Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::{evaluate, evaluate_predicate};
use crate::changelog::RowKind;
use crate::logical::{Expr, JoinKind};
use crate::memory::{batch_bytes, MemoryPool, MemoryReservation, SpillManager};
use crate::message::{Message, Timestamp};
use crate::physical::IntervalBounds;

pub struct StreamJoinSpec {
    /// Inner, left, right or full.
    pub kind: JoinKind,
    pub left_keys: Vec<Expr>,
    pub right_keys: Vec<Expr>,
    /// Over left ++ right; includes the interval condition.
    pub filter: Option<Expr>,
    pub interval: Option<IntervalBounds>,
    pub left_schema: SchemaRef,
    /// left ++ right: the output (without the `op` column of a changelog).
    pub schema: SchemaRef,
    /// How long a stored row may match (processing time); `None`: as long as the time bounds allow.
    pub state_ttl: Option<std::time::Duration>,
}

impl StreamJoinSpec {
    /// Whether `side`'s rows without match are kept (padded with NULLs).
    fn outer(&self, side: usize) -> bool {
        matches!((self.kind, side), (JoinKind::Left, 0) | (JoinKind::Right, 1) | (JoinKind::Full, _))
    }

    /// Whether the output is a changelog: an outer join without time bounds takes rows back.
    pub fn changelog(&self) -> bool {
        self.kind != JoinKind::Inner && self.interval.is_none()
    }
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
    /// Per partition of this input, whether it ended.
    ended: Vec<bool>,
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
    /// On a side whose rows without match are kept, per row: whether it matched (or, in an
    /// interval join, left already); empty on other sides.
    matched: Vec<bool>,
    /// In an outer interval join, the earliest time of a row not matched (`MAX`: none): the
    /// watermarks may let it leave before the chunk does.
    pending: Timestamp,
}

/// A checkpoint file to write: its name and its chunks.
type NewFile = (String, Vec<RecordBatch>);
/// A checkpoint file named by a checkpoint: its name and the positions of its live chunks in it.
type NamedFile = (String, Vec<u32>);

impl Side {
    /// The stored chunks as of barrier `e`, incrementally: those stored since the last checkpoint go
    /// into one new shared file (`<prefix>-<e>.arrow`), and so do the live chunks of a file that
    /// holds fewer live chunks than dropped ones (compaction: the files named hold at most about twice
    /// the stored rows). Returns the file to write, and the files the checkpoint names with the
    /// positions of their live chunks.
    fn snapshot(&mut self, prefix: &str, e: u64) -> (Option<NewFile>, Vec<NamedFile>) {
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

    /// Drops the chunks whose every row is older than `cutoff`, and returns them.
    fn evict_before(&mut self, cutoff: Timestamp) -> Vec<Chunk> {
        let mut old: Vec<u64> = self.chunks.iter().filter(|(_, c)| c.max_time < cutoff).map(|(id, _)| *id).collect();
        // In the order stored: rows without match leave in that order.
        old.sort_unstable();
        self.remove(old)
    }

    /// Drops the chunks stored `ttl` or longer before `now`, and returns them.
    fn expire(&mut self, now: std::time::Instant, ttl: std::time::Duration) -> Vec<Chunk> {
        let mut old = vec![];
        while let Some((at, id)) = self.stored.front().copied() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.stored.pop_front();
            old.push(id);
        }
        self.remove(old)
    }

    fn remove(&mut self, ids: Vec<u64>) -> Vec<Chunk> {
        let mut removed = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.chunks.remove(&id) {
                self.live_rows -= c.rows;
                self.dead_rows += c.rows;
                self.bytes -= chunk_bytes(&c);
                removed.push(c);
            }
        }
        if self.dead_rows > self.live_rows.max(256) {
            let chunks = &self.chunks;
            self.index.retain(|(c, _)| chunks.contains_key(&c));
            self.dead_rows = 0;
        }
        removed
    }

    /// Drops every chunk, and returns them in the order stored.
    fn clear(&mut self) -> Vec<Chunk> {
        let mut all: Vec<u64> = self.chunks.keys().copied().collect();
        all.sort_unstable();
        self.remove(all)
    }

    /// Whether every partition of this input ended: no row of it will come.
    fn ended(&self) -> bool {
        self.ended.iter().all(|e| *e)
    }

    /// The matched flags of the chunks the last snapshot named, in the order named.
    fn matched_flags(&self) -> BooleanArray {
        let flags = self.files.iter().flat_map(|f| f.chunks.iter()).flat_map(|(_, id)| self.chunks[id].matched.iter().copied());
        BooleanArray::from(flags.collect::<Vec<bool>>())
    }
}

/// Bytes of a stored chunk: its batch and its matched flags.
fn chunk_bytes(c: &Chunk) -> usize {
    batch_bytes(&c.batch) + c.matched.len()
}

struct State {
    sides: [Side; 2],
    reservation: MemoryReservation,
    /// Checkpoint barriers of every producer (left partitions, then right ones).
    epochs: EpochTracker,
    /// Per bucket of keys, its rows on disk and the input held for it (empty until the join spills).
    spilled: Vec<Option<SpilledRows>>,
}

/// A bucket of keys whose stored rows, both sides', are on disk, and the input rows of its keys held
/// until it is loaded again (see `keyed_spill`).
struct SpilledRows {
    sides: [SpilledBucket; 2],
    /// Per side, the checkpoint file holding its rows on disk, once a checkpoint saved them.
    saved: [Option<String>; 2],
    /// Interval joins: the earliest time of a held row (`MAX`: none).
    held_from: Timestamp,
    /// Interval joins, per side: the earliest time of a row on disk that never matched, on a side
    /// whose rows without match are kept (`MAX`: none), and the latest time of a row on disk (`MIN`:
    /// none).
    pending: [Timestamp; 2],
    latest: [Timestamp; 2],
}

impl SpilledRows {
    fn has_held(&self) -> bool {
        self.sides.iter().any(SpilledBucket::has_held)
    }

    fn held_in_memory(&self) -> usize {
        self.sides.iter().map(SpilledBucket::held_in_memory).sum()
    }

    /// Due as a bucket of `keyed_spill` is, both sides' rows counted together.
    fn due(&self, now: Instant) -> bool {
        let held: u64 = self.sides.iter().map(SpilledBucket::held_bytes).sum();
        let state: u64 = self.sides.iter().map(SpilledBucket::state_bytes).sum();
        self.has_held() && (held >= state || self.sides.iter().any(|s| s.waited(now) >= MAX_HELD_AGE))
    }

    /// Whether the watermarks passed a row on disk that never matched and must leave now (`cutoffs`:
    /// per side, the time before which its rows can match nothing more).
    fn passed(&self, cutoffs: [Option<Timestamp>; 2]) -> bool {
        (0..2).any(|s| cutoffs[s].is_some_and(|c| self.pending[s] < c))
    }

    /// Forgets, unread, a side's rows on disk that the watermarks passed, none of which must leave
    /// padded and none of which a held row of the other side (which came before those watermarks)
    /// may match. True if nothing is left on disk or held.
    fn forget_passed(&mut self, cutoffs: [Option<Timestamp>; 2]) -> bool {
        for (s, cutoff) in cutoffs.into_iter().enumerate() {
            let passed = cutoff.is_some_and(|c| self.latest[s] != Timestamp::MIN && self.latest[s] < c);
            if passed && self.pending[s] == Timestamp::MAX && !self.sides[1 - s].has_held() {
                self.sides[s].drop_state();
                self.saved[s] = None;
                self.latest[s] = Timestamp::MIN;
            }
        }
        !self.has_held() && self.sides.iter().all(|s| s.state_rows() == 0)
    }

    /// The earliest time of a row on disk that may yet come out (held rows and their pairs are
    /// within the interval's reach of it; rows without match leave with their own time).
    fn earliest(&self) -> Timestamp {
        self.held_from.min(self.pending[0]).min(self.pending[1])
    }
}

struct JoinCheckpoint {
    op: OperatorCheckpoint,
    files: Arc<SharedFiles>,
    /// What the checkpoint the job restarts from names: per side, files and live positions.
    restored: Vec<Vec<(String, Vec<u32>)>>,
    /// Per side, the files of rows that were on disk at that checkpoint.
    restored_spilled: Vec<Vec<String>>,
}

pub struct StreamJoinShared {
    spec: StreamJoinSpec,
    /// The left keys' types; right keys are cast to them.
    key_types: Vec<DataType>,
    converter: RowConverter,
    state: Mutex<State>,
    output: Arc<Exchange>,
    /// The output's schema: `spec.schema`, with the `op` column of a changelog.
    output_schema: SchemaRef,
    left_partitions: usize,
    metrics: Arc<OpMetrics>,
    spill: Arc<SpillManager>,
    checkpoint: Option<JoinCheckpoint>,
}

/// The name of a checkpoint's file of matched flags (outer joins), beside its `state.json`.
const MATCHED_FILE: &str = "matched.arrow";

impl StreamJoinShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: StreamJoinSpec,
        left_partitions: usize,
        right_partitions: usize,
        output: Arc<Exchange>,
        metrics: Arc<OpMetrics>,
        (pool, spill): (&Arc<MemoryPool>, Arc<SpillManager>),
        checkpoint: Option<(Arc<Coordinator>, usize)>,
    ) -> Result<StreamJoinShared> {
        let key_types: Vec<DataType> = spec.left_keys.iter().map(|k| k.data_type(&spec.left_schema)).collect();
        let converter = RowConverter::new(key_types.iter().cloned().map(SortField::new).collect())?;
        let mut sides: [Side; 2] = Default::default();
        for (side, partitions) in sides.iter_mut().zip([left_partitions, right_partitions]) {
            side.watermarks = vec![None; partitions];
            side.ended = vec![false; partitions];
        }
        let restored = checkpoint.as_ref().map_or(0, |(c, _)| c.restored);
        let epochs = EpochTracker::new(left_partitions + right_partitions, restored);
        let state = Mutex::new(State { sides, reservation: pool.reservation("StreamJoin", true), epochs, spilled: vec![] });
        let checkpoint = match checkpoint {
            None => None,
            Some((coordinator, node)) => {
                let name = format!("join-{node}");
                let (restored, restored_spilled) = match coordinator.restore_dir() {
                    Some(dir) => read_named(&dir.join(&name).join("state.json"))?,
                    None => (vec![vec![], vec![]], vec![vec![], vec![]]),
                };
                let mut names: Vec<String> = restored.iter().flatten().map(|(f, _)| f.clone()).collect();
                names.extend(restored_spilled.iter().flatten().cloned());
                let files = SharedFiles::open(&coordinator, &name, &names)?;
                Some(JoinCheckpoint { op: OperatorCheckpoint::register(&coordinator, name)?, files, restored, restored_spilled })
            }
        };
        let output_schema = if spec.changelog() { crate::changelog::with_op(&spec.schema) } else { spec.schema.clone() };
        let shared = StreamJoinShared { spec, key_types, converter, state, output, output_schema, left_partitions, metrics, spill, checkpoint };
        shared.restore()?;
        Ok(shared)
    }

    /// Stores the rows of the checkpoint the job restarts from, if any: the live chunks of the files
    /// it names, which later checkpoints name again instead of writing them anew, with their rows'
    /// matched flags (outer joins), then the rows that were on disk (spilling again as it goes).
    fn restore(&self) -> Result<()> {
        let Some(ck) = &self.checkpoint else { return Ok(()) };
        let flags = match ck.op.restore_dir().map(|d| d.join(MATCHED_FILE)) {
            Some(path) if path.exists() => {
                let batches = super::checkpoint::read_batches(&path)?;
                let flags = |b: &RecordBatch| b.column(0).as_boolean_opt().map(|f| f.values().iter().collect::<Vec<bool>>());
                batches.iter().map(flags).collect::<Option<Vec<_>>>().filter(|f| f.len() == 2).ok_or_else(|| damaged(&path))?
            }
            _ => vec![vec![], vec![]],
        };
        let now = self.spec.state_ttl.map(|_| Instant::now());
        for (side, files) in ck.restored.iter().enumerate() {
            let mut flags = flags[side].iter().copied();
            for (name, live) in files {
                let batches = super::checkpoint::read_batches(&ck.files.path(name))?;
                // Named before its chunks are stored: a chunk that spilling changes leaves it.
                self.lock()?.sides[side].files.push(SavedFile { name: name.clone(), total: batches.len(), chunks: vec![] });
                for p in live {
                    let batch = batches.get(*p as usize).cloned().ok_or_else(|| damaged(&ck.files.path(name)))?;
                    let want = if self.spec.outer(side) { batch.num_rows() } else { 0 };
                    let matched: Vec<bool> = flags.by_ref().take(want).collect();
                    if matched.len() != want {
                        return Err(damaged(&ck.files.path(name)));
                    }
                    let mut st = self.lock()?;
                    let flags = if matched.is_empty() { vec![false; batch.num_rows()] } else { matched };
                    if let Some(id) = self.restore_rows(&mut st, side, with_flags(&batch, flags)?, now)? {
                        if let Some(saved) = st.sides[side].files.last_mut() {
                            saved.chunks.push((*p, id));
                        }
                    }
                    self.account(&mut st)?;
                }
            }
        }
        for (side, files) in ck.restored_spilled.iter().enumerate() {
            for name in files {
                for batch in super::checkpoint::batches_in(&ck.files.path(name))? {
                    let mut st = self.lock()?;
                    self.restore_rows(&mut st, side, batch?, now)?;
                    self.account(&mut st)?;
                }
            }
        }
        Ok(())
    }

    /// Stores restored rows of `side` (with their matched flags as the last column): those of buckets
    /// on disk (spilled while restoring) are added to the bucket's rows there, the others stored as a
    /// chunk. The chunk's id if all were.
    fn restore_rows(&self, st: &mut State, side: usize, saved: RecordBatch, now: Option<Instant>) -> Result<Option<u64>> {
        if st.spilled.iter().all(Option::is_none) {
            return self.store_saved(st, side, saved, now);
        }
        let Some(buckets) = on_disk(st, &self.keys(side, &saved)?, saved.num_rows()) else {
            return self.store_saved(st, side, saved, now);
        };
        for (b, rows) in super::key_partition::split_by_owner(&saved, &buckets, BUCKETS + 1)? {
            if b == IN_MEMORY {
                self.store_saved(st, side, rows, now)?;
            } else if let Some(bucket) = &mut st.spilled[b] {
                let (pending, latest) = self.bounds(side, std::slice::from_ref(&rows));
                bucket.pending[side] = bucket.pending[side].min(pending);
                bucket.latest[side] = bucket.latest[side].max(latest);
                bucket.sides[side].add_state(vec![rows], &self.spill, &self.metrics)?;
            }
        }
        Ok(None)
    }

    /// Stores rows of `side` saved with their matched flags (the last column) as a chunk.
    fn store_saved(&self, st: &mut State, side: usize, mut saved: RecordBatch, now: Option<Instant>) -> Result<Option<u64>> {
        let last = saved.num_columns().saturating_sub(1);
        let flags = saved.columns().get(last).and_then(|c| c.as_boolean_opt()).ok_or_else(|| RiffleError::exec("stream join: saved rows lack their matched flags"))?;
        let matched = if self.spec.outer(side) { flags.values().iter().collect() } else { vec![] };
        saved.remove_column(last);
        self.store_rows(st, side, saved, matched, now)
    }

    /// Stores `batch` on `side` (not probed), as a chunk with its rows' `matched` flags; its id.
    fn store_rows(&self, st: &mut State, side: usize, batch: RecordBatch, matched: Vec<bool>, now: Option<Instant>) -> Result<Option<u64>> {
        let keys = self.keys(side, &batch)?;
        let max_time = self.max_time(side, &batch);
        let pending = self.pending(side, &batch, &matched);
        Ok(store(&mut st.sides[side], Chunk { batch, max_time, rows: 0, matched, pending }, &keys, now))
    }

    /// Producer `producer` passed barrier `e` (or ended: `u64::MAX`): once every producer has, the
    /// stored rows are those before the barrier; they are written and the epoch acked. Rows held for
    /// buckets on disk are joined first (a checkpoint saves stored rows only), their output pushed
    /// ahead of the barrier.
    fn barrier(&self, producer: usize, e: u64) -> Result<()> {
        let Some(ck) = &self.checkpoint else { return Ok(()) };
        let mut out = Vec::new();
        let mut st = self.lock()?;
        for epoch in st.epochs.pass(producer, e) {
            self.load_due(&mut st, true, &mut out)?;
            let dir = ck.op.coordinator.state_dir(epoch, &ck.op.name)?;
            // The stored batches are shared, not copied: they are written while the join goes on.
            let mut writes = Vec::new();
            let mut named = Vec::new();
            for (side, prefix) in st.sides.iter_mut().zip(["left", "right"]) {
                let (write, files) = side.snapshot(prefix, epoch);
                writes.extend(write.map(|(name, batches)| (ck.files.path(&name), batches)));
                named.push(files);
            }
            if self.spec.kind != JoinKind::Inner {
                // The flags change as rows match: copied whole at every checkpoint (a bit per row).
                let schema = Arc::new(Schema::new(vec![Field::new("matched", DataType::Boolean, false)]));
                let flags = st
                    .sides
                    .iter()
                    .map(|s| Ok(RecordBatch::try_new(schema.clone(), vec![Arc::new(s.matched_flags()) as ArrayRef])?))
                    .collect::<Result<Vec<_>>>()?;
                writes.push((dir.join(MATCHED_FILE), flags));
            }
            // Rows on disk, a file per bucket and side, written once: later checkpoints name it
            // again until the bucket is loaded.
            let mut from_disk = Vec::new();
            let mut spilled: [Vec<String>; 2] = Default::default();
            for (b, bucket) in st.spilled.iter_mut().enumerate() {
                let Some(bucket) = bucket else { continue };
                for (side, prefix) in ["left", "right"].iter().enumerate() {
                    if bucket.sides[side].state_rows() == 0 {
                        continue;
                    }
                    let name = bucket.saved[side].get_or_insert_with(|| {
                        let name = format!("{prefix}-b{b}-{epoch}.arrow");
                        from_disk.push((ck.files.path(&name), bucket.sides[side].state_files().to_vec()));
                        name
                    });
                    spilled[side].push(name.clone());
                }
            }
            let mut names: Vec<String> = named.iter().flatten().map(|(f, _)| f.clone()).collect();
            names.extend(spilled.iter().flatten().cloned());
            ck.files.taken(epoch, names);
            let doc = serde_json::json!({
                "sides": named.iter().map(|files| files.iter().map(|(f, live)| serde_json::json!({ "file": f, "live": live })).collect::<Vec<_>>()).collect::<Vec<_>>(),
                "spilled": spilled,
            });
            let state = dir.join("state.json");
            ck.op.coordinator.save_async(ck.op.component, epoch, move || {
                for (path, batches) in &writes {
                    super::checkpoint::write_batches(path, batches)?;
                }
                for (path, files) in &from_disk {
                    super::checkpoint::write_batches_from(path, batches_of(files))?;
                }
                super::checkpoint::write_synced(&state, doc.to_string().as_bytes())
            })?;
        }
        if st.epochs.all_ended() {
            ck.op.coordinator.retire(ck.op.component)?;
        }
        self.push_all(producer, st, out);
        Ok(())
    }

    /// Pushes `out`. A changelog's order matters (a row is taken back after it was emitted): it is
    /// pushed under the lock, in the order decided. Other output leaves after it is released.
    fn push_all(&self, producer: usize, st: std::sync::MutexGuard<'_, State>, out: Vec<RecordBatch>) {
        let guard = if self.spec.changelog() {
            Some(st)
        } else {
            drop(st);
            None
        };
        for b in out {
            self.push(producer, b);
        }
        drop(guard);
    }

    /// Counts the stored rows (and held ones) in the pool. Over its share, the join writes its
    /// biggest buckets of keys to disk until half of what it held is left; held rows beyond
    /// `HELD_IN_MEMORY` (or once nothing is stored) go to files; what it must keep is counted anyway.
    fn account(&self, st: &mut State) -> Result<()> {
        loop {
            let held: usize = st.spilled.iter().flatten().map(SpilledRows::held_in_memory).sum();
            let size = st.sides.iter().map(Side::size).sum::<usize>() + held;
            self.metrics.note_bytes(size);
            if held <= HELD_IN_MEMORY && st.reservation.try_resize(size) {
                return Ok(());
            }
            let stored: usize = st.sides.iter().map(|s| s.live_rows).sum();
            if held > HELD_IN_MEMORY || stored == 0 {
                if !write_biggest_held(st.spilled.iter_mut().flatten().flat_map(|b| b.sides.iter_mut()), &self.spill, &self.metrics)? {
                    st.reservation.resize_anyway(size);
                    return Ok(());
                }
            } else if !self.evict(st, size / 2)? {
                st.reservation.resize_anyway(size);
                return Ok(());
            }
        }
    }

    /// Writes the buckets of keys holding the most stored rows (both sides' rows of those keys) to
    /// disk until about `keep` bytes are left in memory; false if nothing was stored. The chunks
    /// keep their other rows (copied), and the index is built again: a pass over the state, paid for
    /// by the half of it that leaves.
    fn evict(&self, st: &mut State, keep: usize) -> Result<bool> {
        // Each side's stored rows per bucket, from the index's keys (each key's bucket kept for below).
        let mut rows = [[0usize; BUCKETS]; 2];
        let mut key_buckets: [Vec<usize>; 2] = Default::default();
        for (s, side) in st.sides.iter().enumerate() {
            for (key, runs) in side.index.keys() {
                let b = bucket_of(key);
                key_buckets[s].push(b);
                rows[s][b] += runs.filter(|(c, _)| side.chunks.contains_key(c)).map(|(_, r)| r.len()).sum::<usize>();
            }
        }
        let per_row: Vec<usize> = (0..2).map(|s| st.sides[s].size() / rows[s].iter().sum::<usize>().max(1)).collect();
        let mut bytes = [0usize; BUCKETS];
        for (b, bytes) in bytes.iter_mut().enumerate() {
            // A bucket on disk has no rows in memory (its rows are held, or added to it on disk).
            if st.spilled.get(b).is_none_or(Option::is_none) {
                *bytes = rows[0][b] * per_row[0] + rows[1][b] * per_row[1];
            }
        }
        let chosen = biggest_buckets(&bytes, st.sides.iter().map(Side::size).sum::<usize>(), keep);
        if !chosen.contains(&true) {
            return Ok(false);
        }
        let mut parts: Vec<[Vec<RecordBatch>; 2]> = (0..BUCKETS).map(|_| Default::default()).collect();
        for s in [0, 1] {
            let side = &st.sides[s];
            let mut by_bucket: Vec<Vec<RowRef>> = vec![Vec::new(); BUCKETS];
            for ((_, runs), &b) in side.index.keys().zip(&key_buckets[s]) {
                if chosen[b] {
                    for (c, r) in runs.filter(|(c, _)| side.chunks.contains_key(c)) {
                        by_bucket[b].extend(r.map(|r| (c, r)));
                    }
                }
            }
            let mut gone: HashMap<u64, Vec<u32>> = HashMap::new();
            for (b, mut rows) in by_bucket.into_iter().enumerate().filter(|(_, r)| !r.is_empty()) {
                // In the order stored (chunk ids grow): loaded back, they are stored so again.
                rows.sort_unstable();
                for (c, r) in &rows {
                    gone.entry(*c).or_default().push(*r);
                }
                parts[b][s] = self.saved_rows(side, &rows)?;
            }
            self.drop_rows(s, &mut st.sides[s], gone)?;
        }
        st.spilled.resize_with(BUCKETS, || None);
        for (b, [left, right]) in parts.into_iter().enumerate().filter(|(b, _)| chosen[*b]) {
            let (l, r) = (self.bounds(0, &left), self.bounds(1, &right));
            let sides = [SpilledBucket::write(left, false, &self.spill, &self.metrics)?, SpilledBucket::write(right, false, &self.spill, &self.metrics)?];
            st.spilled[b] = Some(SpilledRows { sides, saved: [None, None], held_from: Timestamp::MAX, pending: [l.0, r.0], latest: [l.1, r.1] });
        }
        Ok(true)
    }

    /// Stored rows of `side` (chunk, row), with their matched flags as a last column, in batches.
    fn saved_rows(&self, side: &Side, rows: &[RowRef]) -> Result<Vec<RecordBatch>> {
        rows.chunks(STATE_BATCH_ROWS)
            .map(|part| {
                let (chunks, picks) = slots(side, part);
                let schema = chunks.first().map(|c| c.schema()).ok_or_else(|| RiffleError::exec("stream join: spilled rows missing"))?;
                let rows = RecordBatch::try_new(schema, gather(&chunks, &picks)?)?;
                let flag = |(c, r): &RowRef| side.chunks.get(c).and_then(|c| c.matched.get(*r as usize)).copied().unwrap_or(false);
                with_flags(&rows, part.iter().map(flag).collect())
            })
            .collect()
    }

    /// Interval joins: the earliest time of a row that never matched (on a side whose such rows are
    /// kept) and the latest time, over saved rows of `side`.
    fn bounds(&self, side: usize, saved: &[RecordBatch]) -> (Timestamp, Timestamp) {
        let (mut pending, mut latest) = (Timestamp::MAX, Timestamp::MIN);
        for batch in saved {
            let Some(times) = self.times(side, batch) else { continue };
            let flags = batch.columns().last().and_then(|c| c.as_boolean_opt());
            for (r, t) in times.into_iter().enumerate() {
                latest = latest.max(t);
                if self.spec.outer(side) && !flags.is_some_and(|f| f.value(r)) {
                    pending = pending.min(t);
                }
            }
        }
        (pending, latest)
    }

    /// Takes rows `gone` (per chunk) out of `side`'s chunks; the index keeps the other rows, under
    /// their new row numbers.
    fn drop_rows(&self, s: usize, side: &mut Side, gone: HashMap<u64, Vec<u32>>) -> Result<()> {
        const GONE: u32 = u32::MAX;
        let mut places: HashMap<u64, Vec<u32>> = HashMap::new();
        for (id, rows) in gone {
            let Some(chunk) = side.chunks.get_mut(&id) else { continue };
            let mut place = vec![0u32; chunk.batch.num_rows()];
            for r in &rows {
                place[*r as usize] = GONE;
            }
            let kept: Vec<u32> = (0..place.len() as u32).filter(|r| place[*r as usize] != GONE).collect();
            for (i, r) in kept.iter().enumerate() {
                place[*r as usize] = i as u32;
            }
            side.bytes -= chunk_bytes(chunk);
            side.live_rows -= rows.len();
            chunk.rows -= rows.len();
            if chunk.rows == 0 {
                side.chunks.remove(&id);
            } else {
                chunk.batch = arrow::compute::take_record_batch(&chunk.batch, &UInt32Array::from(kept.clone()))?;
                if !chunk.matched.is_empty() {
                    chunk.matched = kept.iter().map(|r| chunk.matched[*r as usize]).collect();
                }
                chunk.max_time = self.max_time(s, &chunk.batch);
                chunk.pending = self.pending(s, &chunk.batch, &chunk.matched);
                side.bytes += chunk_bytes(chunk);
            }
            places.insert(id, place);
        }
        // A changed chunk is no longer what its checkpoint file holds: the next one saves it anew.
        for f in &mut side.files {
            f.chunks.retain(|(_, id)| !places.contains_key(id));
        }
        let chunks = &side.chunks;
        side.index.retain_map(|(c, r)| match places.get(&c) {
            Some(place) => place.get(r as usize).copied().filter(|p| *p != GONE && chunks.contains_key(&c)),
            None => chunks.contains_key(&c).then_some(r),
        });
        side.dead_rows = 0;
        Ok(())
    }

    /// Joins the rows of keys in memory, and holds those of keys on disk for their bucket.
    fn route(&self, st: &mut State, side: usize, batch: RecordBatch, keys: BatchKeys, now: Option<Instant>, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Some(buckets) = on_disk(st, &keys, batch.num_rows()) else {
            return self.join_rows(st, side, batch, &keys, now, false, out);
        };
        for (b, rows) in super::key_partition::split_by_owner(&batch, &buckets, BUCKETS + 1)? {
            if b == IN_MEMORY {
                let keys = self.keys(side, &rows)?;
                self.join_rows(st, side, rows, &keys, now, false, out)?;
            } else if let Some(bucket) = &mut st.spilled[b] {
                if let Some(t) = self.times(side, &rows).and_then(|t| t.into_iter().min()) {
                    bucket.held_from = bucket.held_from.min(t);
                }
                bucket.sides[side].hold(rows);
            }
        }
        Ok(())
    }

    /// Loads bucket `b` from disk: stores its rows again, then joins the rows held for it a few
    /// thousand at a time, the left side's first. Each key's rows of a side join in the order they
    /// came; only later than they would have in memory.
    fn load(&self, st: &mut State, b: usize, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Some(bucket) = st.spilled.get_mut(b).and_then(Option::take) else { return Ok(()) };
        let now = self.spec.state_ttl.map(|_| Instant::now());
        let loads = bucket.sides.map(SpilledBucket::load);
        for (side, (state, _, _)) in loads.iter().enumerate() {
            for batch in batches_of(state) {
                self.store_saved(st, side, batch?, now)?;
            }
        }
        // The left side's held rows are stored even if the right side ended: its held rows came
        // before it did and join them next.
        let right_held = !loads[1].1.is_empty() || !loads[1].2.is_empty();
        for (side, (_, files, held)) in loads.into_iter().enumerate() {
            let mut gathered: Vec<RecordBatch> = Vec::new();
            let mut join = |st: &mut State, gathered: &mut Vec<RecordBatch>| -> Result<()> {
                let Some(first) = gathered.first() else { return Ok(()) };
                let rows = arrow::compute::concat_batches(&first.schema(), gathered.iter())?;
                gathered.clear();
                let keys = self.keys(side, &rows)?;
                self.join_rows(st, side, rows, &keys, now, side == 0 && right_held, out)
            };
            for rows in batches_of(&files).chain(held.into_iter().map(Ok)) {
                let rows = rows?;
                let count: usize = gathered.iter().map(|g| g.num_rows()).sum();
                if gathered.first().is_some_and(|g| g.schema() != rows.schema()) || count >= STATE_BATCH_ROWS {
                    join(st, &mut gathered)?;
                }
                gathered.push(rows);
            }
            join(st, &mut gathered)?;
        }
        // What the watermarks passed while the rows were on disk goes now.
        for side in 0..2 {
            self.pass_watermark(st, side, out)?;
        }
        Ok(())
    }

    /// Loads the buckets on disk that are due (with `all`, every one with held rows), one at a time,
    /// each counted (and spilled again if need be) before the next; forgets rows on disk that the
    /// watermarks passed, unread.
    fn load_due(&self, st: &mut State, all: bool, out: &mut Vec<RecordBatch>) -> Result<()> {
        let now = Instant::now();
        for b in 0..st.spilled.len() {
            let cutoffs = [self.cutoff(st, 0), self.cutoff(st, 1)];
            let Some(bucket) = &mut st.spilled[b] else { continue };
            if bucket.forget_passed(cutoffs) {
                st.spilled[b] = None;
                continue;
            }
            if if all { bucket.has_held() } else { bucket.due(now) || bucket.passed(cutoffs) } {
                self.load(st, b, out)?;
                self.account(st)?;
            }
        }
        Ok(())
    }

    /// Both inputs ended: whatever is stored leaves (rows without match of an outer interval join,
    /// padded), and so do the rows on disk, once the rows held for them joined.
    fn finish(&self, st: &mut State, out: &mut Vec<RecordBatch>) -> Result<()> {
        let clear = |st: &mut State, out: &mut Vec<RecordBatch>| -> Result<()> {
            for s in 0..2 {
                let rest = st.sides[s].clear();
                self.unmatched(s, &rest, out)?;
            }
            Ok(())
        };
        clear(st, out)?;
        let padded = self.spec.interval.is_some() && self.spec.kind != JoinKind::Inner;
        for b in 0..st.spilled.len() {
            if st.spilled[b].as_ref().is_some_and(|s| s.has_held() || padded) {
                self.load(st, b, out)?;
                clear(st, out)?;
            }
            st.spilled[b] = None;
        }
        Ok(())
    }

    /// Interval joins: the time before which `side`'s rows can match no future row of the other side
    /// (its watermark minus the interval's reach that way).
    fn cutoff(&self, st: &State, side: usize) -> Option<Timestamp> {
        let bounds = self.spec.interval?;
        let wm = st.sides[1 - side].watermark()?;
        Some(if side == 1 { wm.saturating_sub(bounds.hi) } else { wm.saturating_add(bounds.lo) })
    }

    /// Forgets `side`'s stored rows that can match nothing more and appends those that leave padded.
    fn pass_watermark(&self, st: &mut State, side: usize, out: &mut Vec<RecordBatch>) -> Result<()> {
        let Some(cutoff) = self.cutoff(st, side) else { return Ok(()) };
        let dropped = st.sides[side].evict_before(cutoff);
        self.unmatched(side, &dropped, out)?;
        self.leave_before(side, st, cutoff, out)
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

    /// The latest event time of a batch of `side` (interval joins; `MAX` otherwise).
    fn max_time(&self, side: usize, batch: &RecordBatch) -> Timestamp {
        self.times(side, batch).and_then(|t| t.into_iter().max()).unwrap_or(Timestamp::MAX)
    }

    /// A batch of `side`'s join keys (encoded), and which rows have no NULL key.
    fn keys(&self, side: usize, batch: &RecordBatch) -> Result<BatchKeys> {
        let keys = if side == 0 { &self.spec.left_keys } else { &self.spec.right_keys };
        let columns = keys
            .iter()
            .zip(&self.key_types)
            .map(|(k, t)| {
                let v = evaluate(k, batch)?;
                Ok(if v.data_type() == t { v } else { arrow::compute::cast(&v, t)? })
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let rows = batch.num_rows();
        let same = rows > 1 && columns.iter().all(|c| c.is_valid(0)) && columns.iter().all(super::constant);
        Ok(if same {
            let first: Vec<ArrayRef> = columns.iter().map(|c| c.slice(0, 1)).collect();
            BatchKeys { encoded: self.converter.convert_columns(&first)?, same, valid: vec![true; rows] }
        } else {
            // A NULL key matches nothing: such rows are neither stored nor probed.
            let valid: Vec<bool> = (0..rows).map(|r| columns.iter().all(|c| c.is_valid(r))).collect();
            BatchKeys { encoded: self.converter.convert_columns(&columns)?, same, valid }
        })
    }

    /// Joins `batch` of `side` with the other side's stored rows (or holds its rows of keys on disk)
    /// and pushes the output; buckets on disk that are due are loaded.
    fn insert_and_probe(&self, side: usize, producer: usize, batch: RecordBatch) -> Result<()> {
        let keys = self.keys(side, &batch)?;
        let mut out = Vec::new();
        let mut st = self.lock()?;
        let now = match self.spec.state_ttl {
            // Expired rows never match (as Flink's state TTL never returns expired state).
            Some(ttl) => {
                let now = Instant::now();
                for s in 0..2 {
                    let expired = st.sides[s].expire(now, ttl);
                    self.unmatched(s, &expired, &mut out)?;
                }
                Some(now)
            }
            None => None,
        };
        self.route(&mut st, side, batch, keys, now, &mut out)?;
        self.load_due_and_push(producer, st, out)
    }

    /// Loads the buckets on disk that are due and pushes `out` with what they add.
    fn load_due_and_push(&self, producer: usize, mut st: std::sync::MutexGuard<'_, State>, mut out: Vec<RecordBatch>) -> Result<()> {
        self.load_due(&mut st, false, &mut out)?;
        self.account(&mut st)?;
        self.push_all(producer, st, out);
        Ok(())
    }

    /// Stores `batch` on `side` (unless the other side ended, and `held` rows of it, which came
    /// before it ended, are not to be joined yet) and joins its rows with the other side's stored
    /// rows, appending the output to `out`.
    #[allow(clippy::too_many_arguments)]
    fn join_rows(
        &self,
        st: &mut State,
        side: usize,
        batch: RecordBatch,
        keys: &BatchKeys,
        now: Option<Instant>,
        held: bool,
        out: &mut Vec<RecordBatch>,
    ) -> Result<()> {
        let valid = &keys.valid;
        let max_time = self.max_time(side, &batch);
        let other = &st.sides[1 - side];
        // Candidates: this row and a run of the other side's stored rows under its key.
        let mut runs: Runs = Vec::new();
        // Whether the previous candidate's chunk is live: a key's runs are often of one chunk.
        let mut last: Option<(u64, bool)> = None;
        let mut candidates = |row: usize, found: &mut dyn Iterator<Item = (u64, std::ops::Range<u32>)>| {
            for (chunk, rows) in found {
                let live = match last {
                    Some((c, live)) if c == chunk => live,
                    _ => {
                        let live = other.chunks.contains_key(&chunk);
                        last = Some((chunk, live));
                        live
                    }
                };
                if live {
                    runs.push((row as u32, chunk, rows));
                }
            }
        };
        if keys.same {
            // One key for every row: looked up once.
            let found: Vec<(u64, std::ops::Range<u32>)> = other.index.runs(keys.key(0)).collect();
            for row in 0..batch.num_rows() {
                candidates(row, &mut found.iter().cloned());
            }
        } else {
            for row in (0..batch.num_rows()).filter(|r| valid[*r]) {
                candidates(row, &mut other.index.runs(keys.key(row)));
            }
        }
        let candidates: usize = runs.iter().map(|(_, _, rows)| rows.len()).sum();
        // Pairs (this row, other chunk, other row); long runs are tested against the condition at once.
        let (mut mine, mut theirs, tested) = match &self.spec.filter {
            Some(filter) if candidates >= LONG_RUN * runs.len() => {
                let (mine, theirs) = self.condition_by_run(filter, side, &batch, other, &runs)?;
                (mine, theirs, true)
            }
            _ => {
                let mut mine: Vec<u32> = Vec::with_capacity(candidates);
                let mut theirs: Vec<(u64, u32)> = Vec::with_capacity(candidates);
                for (row, chunk, rows) in runs {
                    for r in rows {
                        mine.push(row);
                        theirs.push((chunk, r));
                    }
                }
                (mine, theirs, false)
            }
        };
        // The condition is evaluated under the lock: a stored row of an outer side must know it
        // matched before another thread could drop it as unmatched.
        let mut matched = vec![false; if self.spec.outer(side) { batch.num_rows() } else { 0 }];
        if !mine.is_empty() {
            // The stored rows' chunks are numbered once, for the condition and the pairs.
            let (chunks, mut picks) = slots(other, &theirs);
            if !tested {
                let kept = self.condition(side, &batch, &mine, &chunks, &picks)?;
                if kept.len() < mine.len() {
                    mine = kept.iter().map(|i| mine[*i]).collect();
                    theirs = kept.iter().map(|i| theirs[*i]).collect();
                    picks = kept.iter().map(|i| picks[*i]).collect();
                }
            }
            let pairs = if mine.is_empty() { None } else { Some(self.pairs(side, &batch, &mine, &chunks, &picks)?) };
            if self.spec.kind != JoinKind::Inner {
                let other_outer = self.spec.outer(1 - side);
                let other = &mut st.sides[1 - side];
                let mut first: Vec<(u64, u32)> = Vec::new();
                for (m, (c, r)) in mine.iter().zip(&theirs) {
                    if let Some(m) = matched.get_mut(*m as usize) {
                        *m = true;
                    }
                    if let Some(flag) = other.chunks.get_mut(c).and_then(|c| c.matched.get_mut(*r as usize)).filter(|_| other_outer) {
                        if !*flag {
                            *flag = true;
                            first.push((*c, *r));
                        }
                    }
                }
                // A changelog takes back the padded rows it emitted for rows matched the first time.
                if self.spec.changelog() && !first.is_empty() {
                    let (chunks, picks) = slots(other, &first);
                    out.push(self.output(self.padded(1 - side, &chunks, &picks)?, RowKind::Delete)?);
                }
            }
            if let Some(pairs) = pairs {
                out.push(self.output(pairs, RowKind::Insert)?);
            }
        }
        let other_ended = st.sides[1 - side].ended() && !held;
        if self.spec.outer(side) {
            // Rows without match that leave now: all of them in a changelog (a match takes them
            // back); in an interval join those that nothing can match any more.
            let interval = self.spec.interval.is_some();
            let leaving: Vec<(usize, usize)> =
                (0..batch.num_rows()).filter(|r| !matched[*r] && (!interval || !valid[*r] || other_ended)).map(|r| (0, r)).collect();
            if !leaving.is_empty() {
                out.push(self.output(self.padded(side, &[&batch], &leaving)?, RowKind::Insert)?);
                if interval {
                    leaving.iter().for_each(|(_, r)| matched[*r] = true);
                }
            }
        }
        // Once the other side ended, nothing can match this batch's rows: they are not kept.
        if !other_ended {
            let pending = self.pending(side, &batch, &matched);
            store(&mut st.sides[side], Chunk { batch, max_time, rows: 0, matched, pending }, keys, now);
        }
        Ok(())
    }

    fn push(&self, producer: usize, batch: RecordBatch) {
        self.metrics.rows.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
        self.metrics.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.output.push(producer, Message::Batch(batch));
    }

    /// `batch` as output rows of `kind`: with the `op` column in a changelog.
    fn output(&self, batch: RecordBatch, kind: RowKind) -> Result<RecordBatch> {
        if !self.spec.changelog() {
            return Ok(batch);
        }
        let mut columns = batch.columns().to_vec();
        columns.push(Arc::new(Int8Array::from(vec![kind.code(); batch.num_rows()])));
        Ok(RecordBatch::try_new(self.output_schema.clone(), columns)?)
    }

    /// Which candidate pairs (this batch's rows `mine`, the other side's stored rows `theirs`) meet
    /// the join condition, by position. It is evaluated over the columns it reads only, so pairs
    /// it rejects are never built whole (Nexmark q5 joins each window's counts with its maximum:
    /// every count is a candidate, a few are kept).
    fn condition(&self, side: usize, batch: &RecordBatch, mine: &[u32], chunks: &[&RecordBatch], theirs: &[(usize, usize)]) -> Result<Vec<usize>> {
        let Some(filter) = &self.spec.filter else { return Ok((0..mine.len()).collect()) };
        let (used, filter, schema) = narrow_condition(filter, &self.spec.schema);
        let narrow = self.pair_columns(side, batch, mine, chunks, theirs, &used)?;
        let narrow = RecordBatch::try_new_with_options(schema, narrow, &arrow::array::RecordBatchOptions::new().with_row_count(Some(mine.len())))?;
        let mask = evaluate_predicate(&filter, &narrow)?;
        Ok(mask.values().set_indices().collect())
    }

    /// The pairs of candidate `runs` (this batch's row, consecutive stored rows of a chunk of the
    /// other side) that meet the condition `filter`, tested a run at a time: the stored rows' columns
    /// as they are, this row's repeated. When one row matches many stored rows of its key (each of
    /// Nexmark q5's window maxima matches all the window's counts, a few meet `num >= maxn`), no
    /// candidate pair is built.
    fn condition_by_run(
        &self,
        filter: &Expr,
        side: usize,
        batch: &RecordBatch,
        other: &Side,
        runs: &Runs,
    ) -> Result<Pairs> {
        let (used, filter, schema) = narrow_condition(filter, &self.spec.schema);
        let (mut mine, mut theirs) = (Vec::new(), Vec::new());
        for (row, chunk, rows) in runs {
            let Some(stored) = other.chunks.get(chunk) else { continue };
            let n = rows.len();
            let columns = used
                .iter()
                .map(|&c| match self.column_of(side, c) {
                    (true, col) => crate::eval::repeat(&batch.column(col).slice(*row as usize, 1), n),
                    (false, col) => Ok(stored.batch.column(col).slice(rows.start as usize, n)),
                })
                .collect::<Result<Vec<_>>>()?;
            let narrow = RecordBatch::try_new_with_options(schema.clone(), columns, &arrow::array::RecordBatchOptions::new().with_row_count(Some(n)))?;
            for i in evaluate_predicate(&filter, &narrow)?.values().set_indices() {
                mine.push(*row);
                theirs.push((*chunk, rows.start + i as u32));
            }
        }
        Ok((mine, theirs))
    }

    /// Whether column `c` of the output (left ++ right) is of `side`'s batch, and its column there.
    fn column_of(&self, side: usize, c: usize) -> (bool, usize) {
        let width = self.spec.left_schema.fields().len();
        match (side, c < width) {
            (0, true) => (true, c),
            (0, false) => (false, c - width),
            (_, true) => (false, c),
            (_, false) => (true, c - width),
        }
    }

    /// The output rows of the pairs: this batch's rows `mine`, the other side's stored rows `theirs`
    /// (numbered `chunks`, see [`slots`]).
    fn pairs(&self, side: usize, batch: &RecordBatch, mine: &[u32], chunks: &[&RecordBatch], theirs: &[(usize, usize)]) -> Result<RecordBatch> {
        let all: Vec<usize> = (0..self.spec.schema.fields().len()).collect();
        let columns = self.pair_columns(side, batch, mine, chunks, theirs, &all)?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(mine.len()));
        Ok(RecordBatch::try_new_with_options(self.spec.schema.clone(), columns, &options)?)
    }

    /// Columns `which` (of left ++ right) of the pairs.
    #[allow(clippy::too_many_arguments)]
    fn pair_columns(
        &self,
        side: usize,
        batch: &RecordBatch,
        mine: &[u32],
        chunks: &[&RecordBatch],
        theirs: &[(usize, usize)],
        which: &[usize],
    ) -> Result<Vec<ArrayRef>> {
        let mine_picks: Vec<(usize, usize)> = mine.iter().map(|r| (0, *r as usize)).collect();
        which
            .iter()
            .map(|&c| match self.column_of(side, c) {
                (true, col) => gather_column(&[batch], &mine_picks, col),
                (false, col) => gather_column(chunks, theirs, col),
            })
            .collect()
    }

    /// Rows of `side` (`picks` of `batches`) padded with NULLs for the other side's columns.
    fn padded(&self, side: usize, batches: &[&RecordBatch], picks: &[(usize, usize)]) -> Result<RecordBatch> {
        let width = self.spec.left_schema.fields().len();
        let fields = self.spec.schema.fields();
        let others = if side == 0 { width..fields.len() } else { 0..width };
        let nulls: Vec<ArrayRef> = fields[others].iter().map(|f| new_null_array(f.data_type(), picks.len())).collect();
        let mine = gather(batches, picks)?;
        let columns = if side == 0 { [mine, nulls].concat() } else { [nulls, mine].concat() };
        Ok(RecordBatch::try_new(self.spec.schema.clone(), columns)?)
    }

    /// The earliest time of the rows of `side` not `matched`, in an outer interval join.
    fn pending(&self, side: usize, batch: &RecordBatch, matched: &[bool]) -> Timestamp {
        let Some(times) = self.times(side, batch).filter(|_| self.spec.outer(side)) else { return Timestamp::MAX };
        times.iter().zip(matched).filter(|(_, m)| !**m).map(|(t, _)| *t).min().unwrap_or(Timestamp::MAX)
    }

    /// Appends the rows of `side`'s stored chunks that never matched and are older than `cutoff`
    /// (no future row can match them), padded with NULLs, and marks them gone: in an outer interval
    /// join a row leaves as soon as the watermark passes it, not when its whole chunk does (later,
    /// the watermark below it would have moved past it).
    fn leave_before(&self, side: usize, st: &mut State, cutoff: Timestamp, out: &mut Vec<RecordBatch>) -> Result<()> {
        if !self.spec.outer(side) || self.spec.changelog() {
            return Ok(());
        }
        let mut ids: Vec<u64> = st.sides[side].chunks.iter().filter(|(_, c)| c.pending < cutoff).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        let mut picks: Vec<(usize, usize)> = Vec::new();
        for (slot, id) in ids.iter().enumerate() {
            let Some(chunk) = st.sides[side].chunks.get_mut(id) else { continue };
            let times = self.times(side, &chunk.batch).unwrap_or_default();
            let mut pending = Timestamp::MAX;
            for (r, (m, t)) in chunk.matched.iter_mut().zip(times).enumerate() {
                if *m {
                    continue;
                }
                if t < cutoff {
                    *m = true;
                    picks.push((slot, r));
                } else {
                    pending = pending.min(t);
                }
            }
            chunk.pending = pending;
        }
        if !picks.is_empty() {
            let batches: Vec<&RecordBatch> = ids.iter().filter_map(|id| st.sides[side].chunks.get(id).map(|c| &c.batch)).collect();
            out.push(self.padded(side, &batches, &picks)?);
        }
        Ok(())
    }

    /// Appends the rows of dropped `chunks` of `side` that never matched (an outer interval join's
    /// rows without match leave so), padded with NULLs.
    fn unmatched(&self, side: usize, chunks: &[Chunk], out: &mut Vec<RecordBatch>) -> Result<()> {
        if !self.spec.outer(side) || self.spec.changelog() {
            return Ok(());
        }
        let batches: Vec<&RecordBatch> = chunks.iter().map(|c| &c.batch).collect();
        let picks: Vec<(usize, usize)> =
            chunks.iter().enumerate().flat_map(|(i, c)| c.matched.iter().enumerate().filter(|(_, m)| !**m).map(move |(r, _)| (i, r))).collect();
        if !picks.is_empty() {
            out.push(self.padded(side, &batches, &picks)?);
        }
        Ok(())
    }

    /// Partition `p` of `side` reached watermark `w` (`None`: ended): forgets what can no longer
    /// match and pushes the rows without match that leave with it, then the output watermark; loads
    /// the buckets on disk that are due.
    fn watermark(&self, side: usize, p: usize, producer: usize, w: Option<Timestamp>) -> Result<()> {
        let mut out = Vec::new();
        let mut st = self.lock()?;
        st.sides[side].ended[p] |= w.is_none();
        let (pushed, w) = (w.is_some(), w.unwrap_or(Timestamp::MAX));
        if self.spec.interval.is_some() {
            st.sides[side].watermarks[p] = Some(w);
            // A future row of this side has time ≥ its watermark: a stored row of the other side can
            // still match it only within the interval.
            self.pass_watermark(&mut st, 1 - side, &mut out)?;
        }
        self.load_due(&mut st, false, &mut out)?;
        if st.sides.iter().all(Side::ended) {
            self.finish(&mut st, &mut out)?;
        }
        self.account(&mut st)?;
        // Rows on disk that may yet come out (held ones, ones without match) hold it back.
        let earliest = st.spilled.iter().flatten().map(SpilledRows::earliest).min().unwrap_or(Timestamp::MAX);
        // Before the watermark: rows left now are not late for it.
        self.push_all(producer, st, out);
        // Joined rows have times ≥ (the watermark) − (the interval's reach): the exchange takes the
        // minimum over every input partition.
        if let Some(bounds) = self.spec.interval.filter(|_| pushed) {
            self.output.push(producer, Message::Watermark(w.min(earliest).saturating_sub(bounds.reach())));
        }
        Ok(())
    }
}

/// Candidates per run, on average, from which a probe tests the condition run by run.
const LONG_RUN: usize = 64;

/// Candidate runs of a probe: this batch's row, a chunk of the other side and consecutive rows of it.
type Runs = Vec<(u32, u64, std::ops::Range<u32>)>;

/// Pairs of a probe: this batch's rows, and the other side's stored rows (chunk, row) they pair with.
type Pairs = (Vec<u32>, Vec<(u64, u32)>);

/// The columns a join condition reads (of left ++ right, whose schema is `schema`), the condition
/// over just those, and their schema.
fn narrow_condition(filter: &Expr, schema: &Schema) -> (Vec<usize>, Expr, SchemaRef) {
    let mut used = Vec::new();
    filter.columns(&mut used);
    used.sort_unstable();
    used.dedup();
    let fields: Vec<Field> = used.iter().map(|c| schema.field(*c).clone()).collect();
    let at = |c: usize| used.iter().position(|u| *u == c).unwrap_or(0);
    let filter = filter.clone().remap(&at);
    (used, filter, Arc::new(Schema::new(fields)))
}

/// The columns of rows `picks` (batch, row) of `batches`, which share a schema.
fn gather(batches: &[&RecordBatch], picks: &[(usize, usize)]) -> Result<Vec<ArrayRef>> {
    let width = batches.first().map_or(0, |b| b.num_columns());
    (0..width).map(|col| gather_column(batches, picks, col)).collect()
}

/// Column `col` of rows `picks` (batch, row) of `batches`.
fn gather_column(batches: &[&RecordBatch], picks: &[(usize, usize)], col: usize) -> Result<ArrayRef> {
    if let [only] = batches {
        // One batch: a take, without interleave's per-row batch lookups.
        let indices = arrow::array::UInt32Array::from_iter_values(picks.iter().map(|(_, r)| *r as u32));
        return Ok(arrow::compute::take(only.column(col).as_ref(), &indices, None)?);
    }
    // Runs of rows of one batch (a key's stored rows, chunk by chunk): a take per run, concatenated.
    let runs = 1 + picks.windows(2).filter(|w| w[0].0 != w[1].0).count();
    if runs * 64 <= picks.len() {
        let mut parts: Vec<ArrayRef> = Vec::with_capacity(runs);
        for run in picks.chunk_by(|a, b| a.0 == b.0) {
            let column = batches[run[0].0].column(col);
            let (first, last) = (run[0].1, run[run.len() - 1].1);
            if last + 1 == first + run.len() && run.windows(2).all(|w| w[0].1 + 1 == w[1].1) {
                // Consecutive rows (a run of the key index): a slice, nothing copied.
                parts.push(column.slice(first, run.len()));
            } else {
                let indices = arrow::array::UInt32Array::from_iter_values(run.iter().map(|(_, r)| *r as u32));
                parts.push(arrow::compute::take(column.as_ref(), &indices, None)?);
            }
        }
        let parts: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        return Ok(arrow::compute::concat(&parts)?);
    }
    let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(col).as_ref()).collect();
    Ok(interleave(&arrays, picks)?)
}

/// Stored rows of several chunks, numbered for `interleave`: the chunks involved, and each row as
/// (chunk number, row).
fn slots<'a>(side: &'a Side, rows: &[(u64, u32)]) -> (Vec<&'a RecordBatch>, Vec<(usize, usize)>) {
    let mut slot_of: hashbrown::HashMap<u64, usize> = hashbrown::HashMap::new();
    let mut chunks: Vec<&RecordBatch> = Vec::new();
    let mut last: Option<(u64, usize)> = None;
    let picks = rows
        .iter()
        .filter_map(|(c, r)| {
            // Consecutive rows are often of one chunk: no lookup then.
            let slot = match last {
                Some((id, slot)) if id == *c => slot,
                _ => {
                    let chunk = side.chunks.get(c)?;
                    let slot = *slot_of.entry(*c).or_insert_with(|| {
                        chunks.push(&chunk.batch);
                        chunks.len() - 1
                    });
                    last = Some((*c, slot));
                    slot
                }
            };
            Some((slot, *r as usize))
        })
        .collect();
    (chunks, picks)
}

/// The "bucket" of rows whose key is in memory (or NULL) in `on_disk`'s answer.
const IN_MEMORY: usize = BUCKETS;

/// Per row of `keys` (`rows` of them), the bucket on disk holding its key, or `IN_MEMORY` (a NULL
/// key joins nothing: such a row goes on at once, with those of keys in memory); `None` if every row
/// is `IN_MEMORY`.
fn on_disk(st: &State, keys: &BatchKeys, rows: usize) -> Option<Vec<usize>> {
    if st.spilled.iter().all(Option::is_none) {
        return None;
    }
    let bucket = |r: usize| {
        let b = bucket_of(keys.key(r));
        if keys.valid[r] && st.spilled[b].is_some() { b } else { IN_MEMORY }
    };
    let buckets: Vec<usize> = if keys.same { vec![bucket(0); rows] } else { (0..rows).map(bucket).collect() };
    buckets.iter().any(|b| *b != IN_MEMORY).then_some(buckets)
}

/// `batch` with its rows' matched flags as a last column: stored rows as spill files and
/// checkpoints keep them.
fn with_flags(batch: &RecordBatch, flags: Vec<bool>) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("matched", DataType::Boolean, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from(flags)));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
}

/// Per side, the shared files a checkpoint's `state.json` names and the positions of their live
/// chunks; and per side, its files of rows that were on disk.
type Named = (Vec<Vec<(String, Vec<u32>)>>, Vec<Vec<String>>);

fn read_named(path: &std::path::Path) -> Result<Named> {
    let Some(doc) = super::checkpoint::read_json(path)? else { return Ok((vec![vec![], vec![]], vec![vec![], vec![]])) };
    let spilled = match doc.get("spilled") {
        None => vec![vec![], vec![]],
        Some(s) => {
            let names = |side: &serde_json::Value| side.as_array().and_then(|f| f.iter().map(|n| n.as_str().map(String::from)).collect::<Option<Vec<_>>>());
            let sides = s.as_array().filter(|s| s.len() == 2).ok_or_else(|| damaged(path))?;
            sides.iter().map(names).collect::<Option<Vec<_>>>().ok_or_else(|| damaged(path))?
        }
    };
    let sides = doc.get("sides").and_then(|s| s.as_array()).filter(|s| s.len() == 2).ok_or_else(|| damaged(path))?;
    let named = sides
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
        .collect::<Result<_>>()?;
    Ok((named, spilled))
}

fn damaged(path: &std::path::Path) -> RiffleError {
    RiffleError::exec(format!("checkpoint: {} is not this join's state; remove the checkpoint directory to start afresh", path.display()))
}

/// A batch's join keys, encoded, and which rows have one (no NULL in it).
struct BatchKeys {
    /// A key per row; or, when every row has the same (a window's results joined by the window's
    /// bounds), that key alone: encoded, looked up and indexed once.
    encoded: arrow::row::Rows,
    same: bool,
    valid: Vec<bool>,
}

impl BatchKeys {
    fn key(&self, row: usize) -> &[u8] {
        self.encoded.row(if self.same { 0 } else { row }).data()
    }
}

/// Stores the rows of `chunk` with a key (`keys.valid`) on `side`, indexed by their keys.
/// `now`: when it is stored, with a state TTL (without one, the time is not kept).
/// The chunk's id, if a row was stored.
fn store(side: &mut Side, mut chunk: Chunk, keys: &BatchKeys, now: Option<std::time::Instant>) -> Option<u64> {
    let id = side.next_chunk;
    side.next_chunk += 1;
    let mut stored = 0;
    if keys.same {
        // Every row under one key: one run.
        let rows = chunk.batch.num_rows() as u32;
        side.index.insert_run(keys.key(0), id, 0..rows);
        stored = rows as usize;
    } else {
        for row in (0..keys.valid.len()).filter(|r| keys.valid[*r]) {
            side.index.insert(keys.key(row), (id, row as u32));
            stored += 1;
        }
    }
    if stored == 0 {
        return None;
    }
    chunk.rows = stored;
    side.bytes += chunk_bytes(&chunk);
    side.live_rows += stored;
    side.chunks.insert(id, chunk);
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
            Message::Batch(b) => self.shared.insert_and_probe(self.side, producer, b)?,
            Message::Watermark(w) => self.shared.watermark(self.side, self.partition, producer, Some(w))?,
            Message::End => {
                // An ended input holds back nothing (and no checkpoint waits for it).
                self.shared.watermark(self.side, self.partition, producer, None)?;
                self.shared.barrier(producer, u64::MAX)?;
                self.shared.output.push(producer, Message::End);
            }
            Message::Barrier(epoch) => {
                // Saved before this barrier reaches the exchange: until the last one does, the
                // producers past it are held back (no credit), so no later row is stored yet.
                self.shared.barrier(producer, epoch)?;
                self.shared.output.push(producer, Message::Barrier(epoch));
            }
            // The output exchange stops waiting for this input's watermark until it wakes. Its
            // stored rows of the other side wait for its watermark still (they may yet match).
            Message::Idle => {
                // Rows held for buckets on disk wait no longer than they would with input flowing.
                self.shared.load_due_and_push(producer, self.shared.lock()?, Vec::new())?;
                self.shared.output.push(producer, Message::Idle);
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
