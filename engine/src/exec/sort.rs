//! Sort and top-k as a pipeline breaker, within the query's memory budget.
//!
//! Each input partition buffers batches with their sort keys encoded as `arrow-row` bytes, under a
//! spillable reservation, and sorts every 64 MB into a run of sorted batches kept in memory (small
//! runs sort fast and leave the merge sequential reads). When the reservation cannot grow, the
//! partition writes its runs to disk and frees them; meanwhile the other partitions go on reading.
//! When every partition ended, the runs are merged by a loser tree, in several passes if more runs
//! are on disk than the budget can read at once, and the merge is the source of the next pipeline:
//! rows flow on as they are merged. With `fetch` (top-k), a partition keeps only its best rows.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::SortOptions;
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, Rows, SortField};

use super::gather::gather;
use super::{BarrierRelay, Exchange, Notifier, OpMetrics, PartitionGather, Sink, Source};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::SortKey;
use crate::memory::{retained_bytes, MemoryPool, MemoryReservation, SpillFile, SpillManager, SpillReader};
use crate::message::Message;

/// Bytes of the (prefix, batch, row) entry each buffered row needs while its run is sorted.
const ORDER_ENTRY: usize = 16;

/// The most spilled runs merged at once: each holds an open file, and processes commonly may open
/// 1024 (a sort spilling at every small batch makes thousands of runs; more passes merge them).
const MAX_FAN_IN: usize = 128;

/// What a sort knows about its keys and its budget, shared by its partitions and its merge.
pub struct SortShared {
    schema: SchemaRef,
    fetch: Option<usize>,
    encoder: Arc<KeyEncoder>,
    runs: PartitionGather<(Vec<Run>, MemoryReservation)>,
    barriers: BarrierRelay,
    /// Barriers relayed to the merge source (nothing else goes through it).
    control: Arc<Exchange>,
    merge: Mutex<MergeState>,
    notifier: Notifier,
    batch_size: usize,
    /// Unsorted bytes per run (`RUN_BYTES` or less).
    run_bytes: usize,
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
            run_bytes: RUN_BYTES.min(pool.limit() / 16),
            metrics,
            pool,
            spill,
        })
    }

    /// The last partition to end merges every partition's runs.
    fn finish(&self, local: Vec<Run>, reservation: MemoryReservation) -> Result<()> {
        let Some(arrived) = self.runs.arrive([(local, reservation)])? else { return Ok(()) };
        let started = std::time::Instant::now();
        let mut runs: Vec<Run> = Vec::new();
        let mut reservations: Vec<MemoryReservation> = Vec::new();
        for (r, m) in arrived {
            runs.extend(r);
            reservations.push(m);
        }
        // Reading a spilled run back costs a batch and its keys, twice over while the next loads,
        // plus the read buffer: merge as many at once as the budget allows, in several passes if needed.
        let cost = runs.iter().filter(|r| matches!(r, Run::Spilled { .. })).map(Run::cursor_cost).max().unwrap_or(1);
        loop {
            // The runs still in memory take room the merge needs to read the runs on disk at once:
            // write out the biggest until it fits (one pass over those runs, not another pass over all).
            let spilled = runs.iter().filter(|r| matches!(r, Run::Spilled { .. })).count();
            let biggest = (0..runs.len())
                .filter_map(|i| match &runs[i] {
                    Run::Memory { bytes, .. } => Some((*bytes, i)),
                    _ => None,
                })
                .max();
            let Some((bytes, i)) = biggest else { break };
            if spilled * cost <= self.room() {
                break;
            }
            if let Run::Memory { chunks, .. } = &mut runs[i] {
                let taken = std::mem::take(chunks);
                runs[i] = self.write_run(taken.into_iter().map(|(b, _)| Ok(b)))?;
            }
            // The partitions' reservations cover the runs in memory; give back this one's bytes.
            let mut left = bytes;
            for r in reservations.iter_mut() {
                let take = left.min(r.size());
                r.shrink(take);
                left -= take;
            }
        }
        loop {
            let spilled: Vec<usize> = (0..runs.len()).filter(|i| matches!(runs[*i], Run::Spilled { .. })).collect();
            let cost = runs.iter().map(Run::cursor_cost).max().unwrap_or(0).max(1);
            let fan_in = (self.room() / cost).clamp(2, MAX_FAN_IN);
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
        let merger = Merger::new(self, runs, self.fetch, reservations)?;
        self.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        *self.merge.lock().map_err(|_| RiffleError::exec("sort merge lock poisoned"))? = MergeState::Ready(Box::new(merger));
        self.notifier.bump();
        Ok(())
    }

    /// What the budget has left.
    fn room(&self) -> usize {
        self.pool.limit().saturating_sub(self.pool.used())
    }

    /// One intermediate merge pass: `runs` into one run on disk.
    fn merge_to_disk(&self, runs: Vec<Run>) -> Result<Run> {
        let mut merger = Merger::new(self, runs, None, vec![])?;
        self.write_run(std::iter::from_fn(|| merger.next_batch().transpose()))
    }

    /// Writes the chunks of a run to disk, in order.
    fn write_run(&self, chunks: impl Iterator<Item = Result<RecordBatch>>) -> Result<Run> {
        let mut writer = self.spill.writer(&self.schema)?;
        let mut max_batch = 0;
        for chunk in chunks {
            let chunk = chunk?;
            max_batch = max_batch.max(retained_bytes(&chunk));
            writer.write(&chunk)?;
        }
        let file = writer.finish()?;
        self.metrics.note_spill(&file);
        Ok(Run::Spilled { file, max_batch })
    }
}

/// Unsorted rows a partition holds: batches and their encoded keys.
#[derive(Default)]
struct RunBuffer {
    batches: Vec<RecordBatch>,
    keys: Vec<Rows>,
    rows: usize,
    /// What the batches, keys and the sort's order entries take, as reserved.
    bytes: usize,
}

impl RunBuffer {
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

    /// The buffered rows in key order (the first `limit`), `batch_size` rows per batch, gathered as
    /// they are asked for.
    fn into_sorted_chunks(self, limit: Option<usize>, batch_size: usize) -> SortedChunks {
        let order = self.sorted_order(limit);
        let chunks: VecDeque<Vec<(usize, usize)>> =
            order.chunks(batch_size.max(1)).map(|c| c.iter().map(|(_, b, r)| (*b as usize, *r as usize)).collect()).collect();
        SortedChunks { batches: self.batches, chunks }
    }

    fn take(&mut self) -> RunBuffer {
        std::mem::take(self)
    }
}

/// A sorted buffer's batches and, per chunk still to come, the (batch, row) of its rows.
struct SortedChunks {
    batches: Vec<RecordBatch>,
    chunks: VecDeque<Vec<(usize, usize)>>,
}

impl Iterator for SortedChunks {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Result<RecordBatch>> {
        let idx = self.chunks.pop_front()?;
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        Some(gather(&batches, &idx))
    }
}

/// The big-endian first 8 bytes of a key, zero padded: compares like the key's prefix.
fn prefix(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
}

/// A sorted run: batches in key order (with their keys) in memory, or on disk; or, only on its way
/// into a spill, a sorted buffer whose batches are gathered as the merge reads them.
enum Run {
    Memory { chunks: VecDeque<(RecordBatch, Rows)>, bytes: usize },
    Spilled { file: SpillFile, max_batch: usize },
    Sorted(SortedChunks),
}

impl Run {
    /// Memory a merge needs to read this run, beyond what the run holds already: its current and
    /// its next batch, and the frame being read.
    fn cursor_cost(&self) -> usize {
        match self {
            Run::Memory { .. } | Run::Sorted(_) => 0,
            Run::Spilled { max_batch, file } => 2 * max_batch + file.read_buffer(),
        }
    }
}

/// Unsorted bytes a partition gathers before sorting them into a run: runs this size sort fast
/// (their rows stay close in memory) and merge in few enough ways. A small budget makes runs
/// smaller (a sixteenth of it), so that a partition's share still holds several runs, which a
/// spill merges into one file.
const RUN_BYTES: usize = 64 << 20;

pub struct SortSink {
    shared: Arc<SortShared>,
    partition: usize,
    buffer: RunBuffer,
    /// Runs so far, in input order; the memory ones are covered by `reservation` too.
    runs: Vec<Run>,
    reservation: MemoryReservation,
}

impl SortSink {
    pub fn new(shared: Arc<SortShared>, partition: usize) -> SortSink {
        let reservation = shared.pool.reservation(format!("Sort (partition {partition})"), true);
        SortSink { shared, partition, buffer: RunBuffer::default(), runs: Vec::new(), reservation }
    }

    fn buffer_batch(&mut self, batch: RecordBatch) -> Result<()> {
        let keys = self.shared.encoder.encode(&batch)?;
        let bytes = retained_bytes(&batch) + keys.size() + batch.num_rows() * ORDER_ENTRY;
        if self.buffer.bytes + bytes > self.shared.run_bytes && self.shared.fetch.is_none() {
            self.close_run(false)?;
        }
        if !self.reservation.try_grow(bytes) {
            if let Some(k) = self.shared.fetch {
                // Top-k: first try keeping only the best k rows in memory.
                if self.buffer.rows > k {
                    self.keep_best(k)?;
                }
            }
            if !self.reservation.try_grow(bytes) {
                self.spill_all()?;
                if !self.reservation.try_grow(bytes) {
                    // Not even this one batch fits: it becomes a run of its own, on disk at once.
                    self.buffer = RunBuffer { rows: batch.num_rows(), batches: vec![batch], keys: vec![keys], bytes: 0 };
                    return self.write_buffer();
                }
            }
        }
        self.buffer.rows += batch.num_rows();
        self.buffer.bytes += bytes;
        self.buffer.batches.push(batch);
        self.buffer.keys.push(keys);
        self.shared.metrics.note_bytes(self.reservation.size());
        if let Some(k) = self.shared.fetch {
            // Top-k: once a few times k rows are buffered, keep only the best k.
            if self.buffer.rows > 2 * k.max(1024) {
                self.keep_best(k)?;
            }
        }
        Ok(())
    }

    /// Sorts the buffer into a run kept in memory if the sorted copy fits the budget beside it; if
    /// not, the buffer and the runs in memory go to disk as one run, or, for the `last` run, only
    /// the buffer (the runs in memory save the merge a read).
    fn close_run(&mut self, last: bool) -> Result<()> {
        if self.buffer.rows == 0 {
            return Ok(());
        }
        let copy = self.buffer.bytes.saturating_sub(self.buffer.rows * ORDER_ENTRY);
        if !self.reservation.try_grow(copy) {
            return if last { self.write_buffer() } else { self.spill_all() };
        }
        let buffer = self.buffer.take();
        let held = buffer.bytes;
        let mut chunks = VecDeque::new();
        let mut bytes = 0;
        for chunk in buffer.into_sorted_chunks(self.shared.fetch, self.shared.batch_size) {
            let chunk = chunk?;
            let keys = self.shared.encoder.encode(&chunk)?;
            bytes += retained_bytes(&chunk) + keys.size();
            chunks.push_back((chunk, keys));
        }
        // The run's own size replaces the estimate; the unsorted buffer goes.
        self.reservation.shrink(copy + held);
        if !self.reservation.try_grow(bytes) {
            self.reservation.grow_anyway(bytes);
        }
        self.runs.push(Run::Memory { chunks, bytes });
        Ok(())
    }

    /// Merges the runs held in memory and the buffer into one run on disk: frees this partition's
    /// memory. One file per spill rather than one per 64 MB run leaves the final merge, which runs
    /// on one thread, a few big runs instead of hundreds: fewer comparisons per row there, more here,
    /// while every partition reads and sorts in parallel.
    fn spill_all(&mut self) -> Result<()> {
        // From the first run in memory on (a lone batch written at once may lie among them: it is
        // read back and merged too, so runs stay in input order and equal keys keep their order).
        let Some(first) = self.runs.iter().position(|r| matches!(r, Run::Memory { .. })) else { return self.write_buffer() };
        let mut merging: Vec<Run> = self.runs.drain(first..).collect();
        let mut held: usize = merging.iter().map(|r| if let Run::Memory { bytes, .. } = r { *bytes } else { 0 }).sum();
        if self.buffer.rows > 0 {
            let buffer = self.buffer.take();
            held += buffer.bytes;
            merging.push(Run::Sorted(buffer.into_sorted_chunks(self.shared.fetch, self.shared.batch_size)));
        }
        let run = self.shared.merge_to_disk(merging)?;
        self.reservation.shrink(held);
        self.runs.push(run);
        Ok(())
    }

    /// Sorts the buffer straight into a run on disk, of its own.
    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.rows == 0 {
            return Ok(());
        }
        let buffer = self.buffer.take();
        let held = buffer.bytes;
        let run = self.shared.write_run(buffer.into_sorted_chunks(self.shared.fetch, self.shared.batch_size))?;
        self.reservation.shrink(held);
        self.runs.push(run);
        Ok(())
    }

    /// Keeps only the best `k` buffered rows (top-k), as one batch.
    fn keep_best(&mut self, k: usize) -> Result<()> {
        let buffer = self.buffer.take();
        let held = buffer.bytes;
        let best: Vec<RecordBatch> = buffer.into_sorted_chunks(Some(k), usize::MAX).collect::<Result<_>>()?;
        self.reservation.shrink(held);
        for b in best {
            let keys = self.shared.encoder.encode(&b)?;
            let bytes = retained_bytes(&b) + keys.size() + b.num_rows() * ORDER_ENTRY;
            self.reservation.grow_anyway(bytes);
            self.buffer.rows += b.num_rows();
            self.buffer.bytes += bytes;
            self.buffer.batches.push(b);
            self.buffer.keys.push(keys);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        self.close_run(true)?;
        let held = self.reservation.split_off();
        self.shared.finish(std::mem::take(&mut self.runs), held)
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
            Message::Watermark(_) | Message::Idle => {}
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

/// One run being merged: its current batch (at `slot` in the merger's batch list), that batch's
/// keys, the next row, and that row's key prefix.
struct Cursor {
    source: RunSource,
    slot: usize,
    keys: Option<Rows>,
    pos: usize,
    /// `prefix` of the next row's key: most of the merge's comparisons end here.
    head: u64,
}

enum RunSource {
    Memory(VecDeque<(RecordBatch, Rows)>),
    Spilled { reader: Box<SpillReader>, _file: SpillFile },
    Sorted(SortedChunks),
}

impl Cursor {
    fn key(&self) -> Option<&[u8]> {
        self.keys.as_ref().map(|k| k.row(self.pos).data())
    }

    fn set_head(&mut self) {
        self.head = self.key().map_or(u64::MAX, prefix);
    }

    fn next_chunk(&mut self, encoder: &KeyEncoder) -> Result<Option<(RecordBatch, Rows)>> {
        let with_keys = |b: Option<RecordBatch>| b.map(|b| encoder.encode(&b).map(|keys| (b, keys))).transpose();
        loop {
            let next = match &mut self.source {
                RunSource::Memory(chunks) => chunks.pop_front(),
                RunSource::Spilled { reader, .. } => with_keys(reader.next_batch()?)?,
                RunSource::Sorted(chunks) => with_keys(chunks.next().transpose()?)?,
            };
            match next {
                Some((b, _)) if b.num_rows() == 0 => continue,
                other => return Ok(other),
            }
        }
    }
}

/// A k-way merge of sorted runs by a loser tree: `losers[0]` is the cursor holding the smallest key,
/// `losers[n]` for n > 0 the loser of the match at inner node n (leaves are k..2k).
struct Merger {
    cursors: Vec<Cursor>,
    losers: Vec<usize>,
    /// Each live cursor's current batch (and, until the next output is built, batches just left).
    batches: Vec<RecordBatch>,
    remaining: Option<usize>,
    batch_size: usize,
    schema: SchemaRef,
    /// Held while the merge reads: the runs kept in memory and the spilled runs' read buffers.
    _reservations: Vec<MemoryReservation>,
    encoder: Arc<KeyEncoder>,
}

impl Merger {
    fn new(shared: &SortShared, runs: Vec<Run>, fetch: Option<usize>, mut reservations: Vec<MemoryReservation>) -> Result<Merger> {
        // Budget the spilled runs' batches and read buffers; the merge must go on, so this only
        // records what it holds (the pass count was chosen to fit).
        let mut reading = shared.pool.reservation("Sort merge", false);
        reading.grow_anyway(runs.iter().map(Run::cursor_cost).sum());
        reservations.push(reading);
        let encoder = shared.encoder.clone();
        let mut merger = Merger {
            cursors: Vec::with_capacity(runs.len()),
            losers: vec![usize::MAX; runs.len().max(1)],
            batches: Vec::new(),
            remaining: fetch,
            batch_size: shared.batch_size,
            schema: shared.schema.clone(),
            _reservations: reservations,
            encoder,
        };
        for run in runs {
            let source = match run {
                Run::Memory { chunks, .. } => RunSource::Memory(chunks),
                Run::Spilled { file, .. } => RunSource::Spilled { reader: Box::new(file.reader()?), _file: file },
                Run::Sorted(chunks) => RunSource::Sorted(chunks),
            };
            let mut cursor = Cursor { source, slot: usize::MAX, keys: None, pos: 0, head: u64::MAX };
            if let Some((b, keys)) = cursor.next_chunk(&merger.encoder)? {
                merger.batches.push(b);
                cursor.slot = merger.batches.len() - 1;
                cursor.keys = Some(keys);
            }
            cursor.set_head();
            merger.cursors.push(cursor);
        }
        for leaf in 0..merger.cursors.len() {
            merger.play(leaf, true);
        }
        Ok(merger)
    }

    /// Whether cursor `a`'s row comes before cursor `b`'s; an exhausted cursor comes after all.
    fn before(&self, a: usize, b: usize) -> bool {
        let (x, y) = (&self.cursors[a], &self.cursors[b]);
        if x.head != y.head {
            // Different prefixes order the keys, an exhausted cursor's (u64::MAX) included: a
            // live key with an all-0xFF prefix has the same head and is compared in full below.
            return x.head < y.head;
        }
        match (x.key(), y.key()) {
            (Some(x), Some(y)) => x < y || (x == y && a < b),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => a < b,
        }
    }

    /// Plays `leaf` up the tree: the winner of each match goes on, the loser stays at the node.
    /// While the tree is being built (`building`), a leaf waits at the first empty node instead.
    fn play(&mut self, leaf: usize, building: bool) {
        let k = self.cursors.len();
        let mut winner = leaf;
        let mut node = (leaf + k) / 2;
        while node > 0 {
            if building && self.losers[node] == usize::MAX {
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

    /// The next `batch_size` rows in key order, or `None` when every run is exhausted.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.cursors.is_empty() {
            return Ok(None);
        }
        let want = self.remaining.map_or(self.batch_size, |r| r.min(self.batch_size));
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(want);
        while indices.len() < want {
            let w = self.losers[0];
            if self.cursors[w].keys.is_none() {
                break;
            }
            indices.push(self.take_row(w)?);
            self.play(w, false);
        }
        if indices.is_empty() {
            return Ok(None);
        }
        if let Some(r) = &mut self.remaining {
            *r -= indices.len();
        }
        let refs: Vec<&RecordBatch> = self.batches.iter().collect();
        let out = gather(&refs, &indices)?;
        drop(refs);
        self.compact();
        Ok(Some(if out.schema() == self.schema { out } else { RecordBatch::try_new(self.schema.clone(), out.columns().to_vec())? }))
    }

    /// The (batch, row) of cursor `c`'s current row; moves the cursor on, loading its next batch.
    fn take_row(&mut self, c: usize) -> Result<(usize, usize)> {
        let cursor = &mut self.cursors[c];
        let at = (cursor.slot, cursor.pos);
        cursor.pos += 1;
        if cursor.pos >= cursor.keys.as_ref().map_or(0, |k| k.num_rows()) {
            cursor.pos = 0;
            cursor.keys = None;
            if let Some((b, keys)) = cursor.next_chunk(&self.encoder)? {
                self.batches.push(b);
                cursor.slot = self.batches.len() - 1;
                cursor.keys = Some(keys);
            }
        }
        cursor.set_head();
        Ok(at)
    }

    /// Drops the batches no cursor reads any more.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.batches);
        for cursor in &mut self.cursors {
            if cursor.keys.is_some() {
                self.batches.push(old[cursor.slot].clone());
                cursor.slot = self.batches.len() - 1;
            }
        }
    }
}

/// Encodes a batch's sort keys as `arrow-row` bytes, which compare like the keys.
pub struct KeyEncoder {
    keys: Vec<SortKey>,
    converter: RowConverter,
}

impl KeyEncoder {
    pub(super) fn new(schema: &SchemaRef, keys: Vec<SortKey>) -> Result<KeyEncoder> {
        let fields = keys
            .iter()
            .map(|k| {
                let t = k.expr.data_type(schema);
                Ok(SortField::new_with_options(t, SortOptions { descending: k.descending, nulls_first: k.nulls_first }))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KeyEncoder { keys, converter: RowConverter::new(fields)? })
    }

    pub(super) fn encode(&self, batch: &RecordBatch) -> Result<Rows> {
        let columns = self.keys.iter().map(|k| evaluate(&k.expr, batch)).collect::<Result<Vec<ArrayRef>>>()?;
        Ok(self.converter.convert_columns(&columns)?)
    }
}
