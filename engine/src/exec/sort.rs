//! Sort and top-k as a pipeline breaker, within the query's memory budget.
//!
//! Each input partition buffers batches with their sort keys encoded as `arrow-row` bytes, under a
//! spillable reservation. When the reservation cannot grow, the partition sorts what it holds into a
//! run and spills it (so one partition reads while the other sorts). When every partition ended, the
//! runs are merged by a loser tree, in several passes if more runs are on disk than the budget can
//! read at once, and the merge is the source of the next pipeline: rows flow on as they are merged.
//! With `fetch` (top-k), a partition keeps only its best rows as it goes.

use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::{interleave_record_batch, SortOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};

use super::{BarrierRelay, Exchange, Notifier, OpMetrics, PartitionGather, Sink, Source};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::SortKey;
use crate::memory::{MemoryPool, MemoryReservation, SpillFile, SpillManager, SpillReader};
use crate::message::Message;

/// Bytes of the (prefix, batch, row) entry each buffered row needs while its run is sorted.
const ORDER_ENTRY: usize = 16;

/// What a sort knows about its keys and its budget, shared by its partitions and its merge.
pub struct SortShared {
    schema: SchemaRef,
    fetch: Option<usize>,
    encoder: Arc<KeyEncoder>,
    runs: PartitionGather<Run>,
    barriers: BarrierRelay,
    /// Barriers relayed to the merge source (nothing else goes through it).
    control: Arc<Exchange>,
    merge: Mutex<MergeState>,
    notifier: Notifier,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
    pool: Arc<MemoryPool>,
    spill: Arc<SpillManager>,
}

enum MergeState {
    Waiting,
    Ready(Box<Merger>),
    Done,
}

impl SortShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        schema: SchemaRef,
        keys: Vec<SortKey>,
        fetch: Option<usize>,
        partitions: usize,
        notifier: Notifier,
        batch_size: usize,
        metrics: Arc<OpMetrics>,
        pool: Arc<MemoryPool>,
        spill: Arc<SpillManager>,
    ) -> Result<SortShared> {
        Ok(SortShared {
            encoder: Arc::new(KeyEncoder::new(&schema, keys)?),
            control: Arc::new(Exchange::new(1, 1, usize::MAX, notifier.clone())),
            schema,
            fetch,
            runs: PartitionGather::new(partitions),
            barriers: BarrierRelay::new(partitions),
            merge: Mutex::new(MergeState::Waiting),
            notifier,
            batch_size,
            metrics,
            pool,
            spill,
        })
    }

    fn encode_keys(&self, batch: &RecordBatch) -> Result<Rows> {
        self.encoder.encode(batch)
    }

    /// The last partition to end merges every partition's runs.
    fn finish(&self, local: Vec<Run>) -> Result<()> {
        let Some(mut runs) = self.runs.arrive(local)? else { return Ok(()) };
        let started = std::time::Instant::now();
        // Reading a spilled run back costs a batch and its keys, twice over while the next loads,
        // plus the read buffer: merge as many at once as the budget allows, in several passes if needed.
        loop {
            let spilled: Vec<usize> = (0..runs.len()).filter(|i| matches!(runs[*i], Run::Spilled { .. })).collect();
            let cost = runs.iter().map(Run::cursor_cost).max().unwrap_or(0).max(1);
            let fan_in = (self.pool.limit().saturating_sub(self.pool.used()) / cost).max(2);
            if spilled.len() <= fan_in {
                break;
            }
            // Merge the first runs on disk, next to each other, so equal keys keep their order.
            let group: Vec<usize> = spilled.into_iter().take(fan_in).collect();
            let first = group[0];
            // Removed from the back so the other indices stay valid, then put back in order.
            let mut taken: Vec<Run> = Vec::with_capacity(group.len());
            for i in group.iter().rev() {
                taken.push(runs.remove(*i));
            }
            taken.reverse();
            let merged = self.merge_to_disk(taken)?;
            runs.insert(first, merged);
        }
        let merger = Merger::new(self, runs, self.fetch)?;
        self.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        *self.merge.lock().map_err(|_| RiffleError::exec("sort merge lock poisoned"))? = MergeState::Ready(Box::new(merger));
        self.notifier.bump();
        Ok(())
    }

    /// One intermediate merge pass: `runs` into one run on disk.
    fn merge_to_disk(&self, runs: Vec<Run>) -> Result<Run> {
        let mut merger = Merger::new(self, runs, None)?;
        let mut writer = self.spill.writer(&self.schema)?;
        let mut max_batch = 0;
        while let Some(batch) = merger.next_batch()? {
            max_batch = max_batch.max(batch.get_array_memory_size());
            writer.write(&batch)?;
        }
        Ok(Run::Spilled { file: writer.finish()?, max_batch })
    }

    /// Sorts a partition's buffered rows and writes them out as one run on disk (only the best
    /// `fetch` of them for a top-k: no others can be in the answer).
    fn spill_run(&self, buffer: &mut RunBuffer) -> Result<Run> {
        let order = buffer.sorted_order(self.fetch);
        let mut writer = self.spill.writer(&self.schema)?;
        let mut max_batch = 0;
        let batches: Vec<&RecordBatch> = buffer.batches.iter().collect();
        for chunk in order.chunks(self.batch_size) {
            let indices: Vec<(usize, usize)> = chunk.iter().map(|(_, b, r)| (*b as usize, *r as usize)).collect();
            let batch = interleave_record_batch(&batches, &indices)?;
            max_batch = max_batch.max(batch.get_array_memory_size());
            writer.write(&batch)?;
        }
        drop(batches);
        buffer.clear();
        Ok(Run::Spilled { file: writer.finish()?, max_batch })
    }
}

/// Rows a partition holds in memory: batches and their encoded keys.
struct RunBuffer {
    batches: Vec<RecordBatch>,
    keys: Vec<Rows>,
    rows: usize,
    reservation: MemoryReservation,
}

impl RunBuffer {
    fn clear(&mut self) {
        self.batches.clear();
        self.keys.clear();
        self.rows = 0;
        self.reservation.free();
    }

    /// (key prefix, batch, row) of every buffered row in key order, the first `limit` if given;
    /// ties keep input order.
    fn sorted_order(&self, limit: Option<usize>) -> Vec<(u64, u32, u32)> {
        let mut order = Vec::with_capacity(self.rows);
        for (b, keys) in self.keys.iter().enumerate() {
            for r in 0..keys.num_rows() {
                order.push((prefix(keys.row(r).as_ref()), b as u32, r as u32));
            }
        }
        let key = |e: &(u64, u32, u32)| self.keys[e.1 as usize].row(e.2 as usize);
        // Most comparisons end at the 8-byte prefix; the full key only breaks ties.
        let cmp = |a: &(u64, u32, u32), b: &(u64, u32, u32)| {
            a.0.cmp(&b.0).then_with(|| key(a).cmp(&key(b))).then_with(|| (a.1, a.2).cmp(&(b.1, b.2)))
        };
        let limit = limit.unwrap_or(order.len()).min(order.len());
        if limit < order.len() {
            if limit == 0 {
                return Vec::new();
            }
            order.select_nth_unstable_by(limit - 1, cmp);
            order.truncate(limit);
        }
        order.sort_unstable_by(cmp);
        order
    }

    /// Keeps only the best `k` rows (top-k), as one batch.
    fn keep_best(&mut self, shared: &SortShared, k: usize) -> Result<()> {
        let order = self.sorted_order(Some(k));
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        let indices: Vec<(usize, usize)> = order.iter().map(|(_, b, r)| (*b as usize, *r as usize)).collect();
        let best = interleave_record_batch(&batches, &indices)?;
        drop(batches);
        let keys = shared.encode_keys(&best)?;
        let bytes = best.get_array_memory_size() + keys.size() + best.num_rows() * ORDER_ENTRY;
        self.rows = best.num_rows();
        self.batches = vec![best];
        self.keys = vec![keys];
        if !self.reservation.try_resize(bytes) {
            return Err(self.reservation.out_of_memory(bytes - self.reservation.size()));
        }
        Ok(())
    }
}

/// The big-endian first 8 bytes of a key, zero padded: compares like the key's prefix.
fn prefix(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
}

/// A sorted run: still in memory (its rows and the order to read them in), or on disk.
enum Run {
    Memory { buffer: RunBuffer, order: Vec<(u64, u32, u32)> },
    Spilled { file: SpillFile, max_batch: usize },
}

impl Run {
    /// Memory a merge needs to read this run: nothing more for a run in memory.
    fn cursor_cost(&self) -> usize {
        match self {
            Run::Memory { .. } => 0,
            Run::Spilled { max_batch, .. } => 2 * max_batch + (1 << 20),
        }
    }
}

pub struct SortSink {
    shared: Arc<SortShared>,
    partition: usize,
    buffer: RunBuffer,
    runs: Vec<Run>,
}

impl SortSink {
    pub fn new(shared: Arc<SortShared>, partition: usize) -> SortSink {
        let reservation = shared.pool.reservation(format!("Sort (partition {partition})"), true);
        let buffer = RunBuffer { batches: Vec::new(), keys: Vec::new(), rows: 0, reservation };
        SortSink { shared, partition, buffer, runs: Vec::new() }
    }

    fn buffer_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let keys = self.shared.encode_keys(&batch)?;
        let bytes = batch.get_array_memory_size() + keys.size() + batch.num_rows() * ORDER_ENTRY;
        if !self.buffer.reservation.try_grow(bytes) {
            if let Some(k) = self.shared.fetch {
                // Top-k: first try keeping only the best k rows in memory.
                if self.buffer.rows > k {
                    self.buffer.keep_best(&self.shared, k)?;
                }
            }
            if !self.buffer.reservation.try_grow(bytes) {
                if self.buffer.batches.is_empty() {
                    // A lone batch cannot be made smaller.
                    return Err(self.buffer.reservation.out_of_memory(bytes));
                }
                let run = self.shared.spill_run(&mut self.buffer)?;
                self.runs.push(run);
                self.note_spill();
                if !self.buffer.reservation.try_grow(bytes) {
                    return Err(self.buffer.reservation.out_of_memory(bytes));
                }
            }
        }
        self.buffer.rows += batch.num_rows();
        self.buffer.batches.push(batch);
        self.buffer.keys.push(keys);
        self.shared.metrics.note_bytes(self.buffer.reservation.size());
        if let Some(k) = self.shared.fetch {
            // Top-k: once a few times k rows are buffered, keep only the best k.
            if self.buffer.rows > 2 * k.max(1024) {
                self.buffer.keep_best(&self.shared, k)?;
            }
        }
        Ok(())
    }

    fn note_spill(&self) {
        let m = &self.shared.metrics;
        m.spilled_bytes.store(self.shared.spill.bytes_spilled(), std::sync::atomic::Ordering::Relaxed);
        m.spill_files.store(self.shared.spill.files_spilled(), std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&mut self) -> Result<()> {
        let reservation = self.shared.pool.reservation(format!("Sort (partition {})", self.partition), true);
        let empty = RunBuffer { batches: Vec::new(), keys: Vec::new(), rows: 0, reservation };
        let mut buffer = std::mem::replace(&mut self.buffer, empty);
        if buffer.rows > 0 {
            if self.runs.is_empty() {
                // Never spilled: the run stays in memory and is read straight from its buffers.
                let order = buffer.sorted_order(self.shared.fetch);
                self.runs.push(Run::Memory { buffer, order });
            } else {
                // Once spilling, spill the rest too: the merge then has the budget to itself.
                let run = self.shared.spill_run(&mut buffer)?;
                self.runs.push(run);
                self.note_spill();
            }
        }
        self.shared.finish(std::mem::take(&mut self.runs))
    }
}

impl Sink for SortSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => self.buffer_batch(b)?,
            Message::End => {
                self.shared.barriers.end(self.partition, &self.shared.control)?;
                self.end()?;
            }
            Message::Barrier(epoch) => self.shared.barriers.barrier(self.partition, epoch, &self.shared.control)?,
            Message::Watermark(_) => {}
        }
        Ok(())
    }
}

/// The source of the pipeline after a sort: relayed barriers, then the merged rows, then the end.
pub struct SortSource {
    shared: Arc<SortShared>,
}

impl SortSource {
    pub fn new(shared: Arc<SortShared>) -> SortSource {
        SortSource { shared }
    }
}

impl Source for SortSource {
    fn next(&mut self) -> Result<Option<Message>> {
        if let Some(control) = self.shared.control.pop(0) {
            return Ok(Some(control));
        }
        let mut state = self.shared.merge.lock().map_err(|_| RiffleError::exec("sort merge lock poisoned"))?;
        let MergeState::Ready(merger) = &mut *state else {
            return Ok(match *state {
                MergeState::Done => Some(Message::End),
                _ => None,
            });
        };
        let started = std::time::Instant::now();
        let next = merger.next_batch()?;
        let m = &self.shared.metrics;
        m.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(match next {
            Some(batch) => {
                m.rows.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
                m.batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Message::Batch(batch)
            }
            None => {
                // Frees the runs (and their memory and files) as soon as the last row is out.
                *state = MergeState::Done;
                Message::End
            }
        }))
    }
}

/// Where one run's next row is.
enum Cursor {
    Memory { buffer: Box<RunBuffer>, order: Vec<(u64, u32, u32)>, pos: usize },
    Spilled {
        reader: SpillReader,
        _file: SpillFile,
        /// The loaded batch's place in the merger's batch list, its keys, the next row.
        slot: usize,
        keys: Rows,
        pos: usize,
        done: bool,
    },
}

impl Cursor {
    fn key(&self) -> Option<&[u8]> {
        match self {
            Cursor::Memory { buffer, order, pos } => {
                order.get(*pos).map(|(_, b, r)| buffer.keys[*b as usize].row(*r as usize).data())
            }
            Cursor::Spilled { keys, pos, done, .. } => (!*done).then(|| keys.row(*pos).data()),
        }
    }
}

/// A k-way merge of sorted runs by a loser tree: `losers[0]` is the cursor holding the smallest key,
/// `losers[n]` for n > 0 the loser of the match at inner node n (leaves are k..2k).
struct Merger {
    cursors: Vec<Cursor>,
    losers: Vec<usize>,
    /// The batches rows are taken from: every in-memory run's, then each spilled run's current one.
    batches: Vec<RecordBatch>,
    /// How many of `batches` belong to in-memory runs (they stay for the whole merge).
    fixed: usize,
    /// In-memory runs' first batch in `batches`.
    memory_base: Vec<usize>,
    remaining: Option<usize>,
    batch_size: usize,
    schema: SchemaRef,
    /// Held while the merge reads (its size is what the spilled runs' cursors hold).
    _reservation: MemoryReservation,
    encoder: Arc<KeyEncoder>,
}

impl Merger {
    fn new(shared: &SortShared, runs: Vec<Run>, fetch: Option<usize>) -> Result<Merger> {
        let mut batches = Vec::new();
        let mut memory_base = Vec::new();
        let mut cursors = Vec::new();
        for run in &runs {
            if let Run::Memory { buffer, .. } = run {
                memory_base.push(batches.len());
                batches.extend(buffer.batches.iter().cloned());
            } else {
                memory_base.push(usize::MAX);
            }
        }
        let fixed = batches.len();
        let mut reservation = shared.pool.reservation("Sort merge", false);
        // Budget the spilled runs' read buffers and batches; the merge must go on, so this only
        // records what it holds (the pass count was chosen to fit).
        let _ = reservation.try_grow(runs.iter().map(Run::cursor_cost).sum());
        let encoder = shared.encoder.clone();
        for run in runs {
            cursors.push(match run {
                Run::Memory { buffer, order } => Cursor::Memory { buffer: Box::new(buffer), order, pos: 0 },
                Run::Spilled { file, .. } => {
                    let mut reader = file.reader()?;
                    match reader.next_batch()? {
                        Some(b) => {
                            let keys = encoder.encode(&b)?;
                            batches.push(b);
                            Cursor::Spilled { reader, _file: file, slot: batches.len() - 1, keys, pos: 0, done: false }
                        }
                        None => {
                            let keys = encoder.converter.empty_rows(0, 0);
                            Cursor::Spilled { reader, _file: file, slot: usize::MAX, keys, pos: 0, done: true }
                        }
                    }
                }
            });
        }
        let k = cursors.len();
        let mut merger = Merger {
            cursors,
            losers: vec![usize::MAX; k.max(1)],
            batches,
            fixed,
            memory_base,
            remaining: fetch,
            batch_size: shared.batch_size,
            schema: shared.schema.clone(),
            _reservation: reservation,
            encoder,
        };
        for leaf in 0..k {
            merger.insert(leaf);
        }
        Ok(merger)
    }

    /// Whether cursor `a`'s row comes before cursor `b`'s; an exhausted cursor comes after all.
    fn before(&self, a: usize, b: usize) -> bool {
        match (self.cursors[a].key(), self.cursors[b].key()) {
            (Some(x), Some(y)) => x < y || (x == y && a < b),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => a < b,
        }
    }

    /// Plays `leaf` up the tree while building it: it waits at the first empty node.
    fn insert(&mut self, leaf: usize) {
        let k = self.cursors.len();
        let mut winner = leaf;
        let mut node = (leaf + k) / 2;
        while node > 0 {
            if self.losers[node] == usize::MAX {
                self.losers[node] = winner;
                return;
            }
            if self.before(self.losers[node], winner) {
                std::mem::swap(&mut self.losers[node], &mut winner);
            }
            node /= 2;
        }
        self.losers[0] = winner;
    }

    /// Replays the path of `leaf` after its cursor moved.
    fn replay(&mut self, leaf: usize) {
        let k = self.cursors.len();
        let mut winner = leaf;
        let mut node = (leaf + k) / 2;
        while node > 0 {
            if self.before(self.losers[node], winner) {
                std::mem::swap(&mut self.losers[node], &mut winner);
            }
            node /= 2;
        }
        self.losers[0] = winner;
    }

    /// The next `batch_size` rows in key order, or `None` when every run is exhausted.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.cursors.is_empty() {
            return Ok(None);
        }
        let want = self.remaining.map_or(self.batch_size, |r| r.min(self.batch_size));
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(want);
        while indices.len() < want {
            let w = self.losers[0];
            if self.cursors[w].key().is_none() {
                break;
            }
            indices.push(self.take_row(w)?);
            self.replay(w);
        }
        if indices.is_empty() {
            return Ok(None);
        }
        if let Some(r) = &mut self.remaining {
            *r -= indices.len();
        }
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        let out = interleave_record_batch(&refs, &indices)?;
        drop(refs);
        self.compact();
        Ok(Some(if out.schema() == self.schema { out } else { RecordBatch::try_new(self.schema.clone(), out.columns().to_vec())? }))
    }

    /// The (batch, row) of cursor `c`'s current row; moves the cursor on, loading its next batch.
    fn take_row(&mut self, c: usize) -> Result<(usize, usize)> {
        match &mut self.cursors[c] {
            Cursor::Memory { order, pos, .. } => {
                let (_, b, r) = order[*pos];
                *pos += 1;
                Ok((self.memory_base[c] + b as usize, r as usize))
            }
            Cursor::Spilled { reader, slot, keys, pos, done, .. } => {
                let at = (*slot, *pos);
                *pos += 1;
                if *pos >= keys.num_rows() {
                    match reader.next_batch()? {
                        Some(b) => {
                            *keys = self.encoder.encode(&b)?;
                            *pos = 0;
                            self.batches.push(b);
                            *slot = self.batches.len() - 1;
                        }
                        None => *done = true,
                    }
                }
                Ok(at)
            }
        }
    }

    /// Drops the batches no cursor reads any more.
    fn compact(&mut self) {
        let mut kept: Vec<RecordBatch> = self.batches.drain(..self.fixed).collect();
        let old = std::mem::take(&mut self.batches);
        for cursor in &mut self.cursors {
            if let Cursor::Spilled { slot, done: false, .. } = cursor {
                kept.push(old[*slot - self.fixed].clone());
                *slot = kept.len() - 1;
            }
        }
        self.batches = kept;
    }
}

/// Encodes a batch's sort keys as `arrow-row` bytes, which compare like the keys.
pub struct KeyEncoder {
    keys: Vec<SortKey>,
    converter: RowConverter,
}

impl KeyEncoder {
    fn new(schema: &SchemaRef, keys: Vec<SortKey>) -> Result<KeyEncoder> {
        let fields = keys
            .iter()
            .map(|k| {
                let t = k.expr.data_type(schema);
                Ok(SortField::new_with_options(t, SortOptions { descending: k.descending, nulls_first: k.nulls_first }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyEncoder { keys, converter: RowConverter::new(fields)? })
    }

    fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns = self.keys.iter().map(|k| evaluate(&k.expr, batch)).collect::<Result<Vec<ArrayRef>>>()?;
        Ok(self.converter.convert_columns(&columns)?)
    }
}
