//! Event-time window aggregation over a stream: `GROUP BY window_start, window_end, …` over a window
//! table function emits each window's groups as soon as the watermark passes the window's end,
//! instead of at the end of input.
//!
//! Each partition aggregates its rows into one group table per open window. When its input's
//! watermark passes a window's end, the partition hands that window's partial groups to the shared
//! state and forgets them; rows for that window arriving later are late: dropped and counted
//! (`late_rows` in EXPLAIN ANALYZE). The shared state emits a window once every partition's
//! watermark has passed its end (every partition has handed its part over), then forwards the
//! smallest watermark, so operators downstream see event time advance. At the end of input every
//! open window is emitted.
//!
//! HOP windows whose size is a multiple of their slide are aggregated by slices (Flink's slice
//! sharing, `Slicing`): a row updates the groups of the one slide its time falls in, not those of each
//! of its `size / slide` windows (Nexmark q5: five), and a window's groups are the merge of its
//! slides'. A slide's groups are sealed once the watermark passes its end, and merged right away into
//! every open window that holds the slide, after the windows the watermark closed are emitted: closing
//! a window then merges only its last slide (Nexmark q5: a fifth of the work that stood between the
//! watermark and the window's result). A row late for some of its windows but not all still counts in the others,
//! as each of its window rows would.
//!
//! Keyed: when the input is partitioned by the group keys that are not window columns (Flink's
//! keyBy: `key_partition.rs`), each partition owns its keys' groups, so it emits its part of a
//! window itself when its watermark passes the window's end, into an output exchange it is one
//! producer of (which forwards the smallest watermark of all). Nothing is merged across partitions:
//! Nexmark q5's ~588,000 auctions per window were merged serially from every partition's part
//! before, the largest part of its latency.
//!
//! Checkpoints: a partition that reaches barrier `e` writes its open windows' partial groups and waits
//! until every partition reached it (aligned barriers: nothing it does after the barrier can mix
//! into the checkpoint); then the windows handed over but not emitted yet and the watermarks are
//! written, barrier `e` goes downstream and the epoch is acked. Restored, all saved partial groups
//! wait in the shared state for their windows to complete, and every partition starts from the
//! watermark all of them had passed; keyed, they are dealt to the partitions owning their keys (the
//! thread count may have changed) and merged into those windows when they close.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int64Type};

use arrow::array::{ArrayRef, TimestampMicrosecondArray};

use super::aggregate::{AggSpec, GroupTable, Partial};
use crate::logical::{WindowSpec, WINDOW_TIME_BEFORE_END};
use crate::physical::SessionColumn;
use super::checkpoint::{Coordinator, EpochTracker, OperatorCheckpoint};
use super::{emit_rows, Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::Message;

/// How a HOP window aggregate keeps its groups by slide (see the module's doc).
pub struct Slicing {
    /// The aggregate over the rows before the window table function, grouped by the keys that are
    /// not window columns.
    pub spec: AggSpec,
    /// The rows' event-time column.
    pub time: usize,
    pub window: WindowSpec,
    /// What each group key of the window aggregate is (`Key(k)`: `spec`'s key `k`).
    pub columns: Vec<SessionColumn>,
}

impl Slicing {
    /// Slides per window.
    fn slides(&self) -> i64 {
        self.window.size / self.window.step
    }

    /// The end of the last window of the slide ending at `end`.
    fn last_window(&self, end: i64) -> i64 {
        end.saturating_add((self.slides() - 1).saturating_mul(self.window.step))
    }

    /// The window aggregate's key columns for `n` groups of the window ending at `end`, from their
    /// keys that are not window columns.
    fn window_keys(&self, end: i64, keys: &[ArrayRef], n: usize) -> Vec<ArrayRef> {
        let constant = |t: i64| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from_value(t, n)) };
        self.columns
            .iter()
            .map(|c| match c {
                SessionColumn::Key(k) => keys[*k].clone(),
                SessionColumn::Start => constant(end.saturating_sub(self.window.size)),
                SessionColumn::End => constant(end),
                SessionColumn::Time => constant(end.saturating_sub(WINDOW_TIME_BEFORE_END)),
            })
            .collect()
    }

    /// The window aggregate's partial groups of the window ending at `end`, from those of its slides
    /// keyed by the other keys.
    fn window_partial(&self, end: i64, groups: Partial) -> Partial {
        let keys = self.window_keys(end, groups.keys(), groups.num_groups());
        groups.with_keys(keys)
    }

    /// A window's partial groups keyed as its slides' are (by the keys that are not window columns).
    fn slide_partial(&self, window: Partial) -> Partial {
        let mut keys = vec![None; self.spec.group.len()];
        for (column, c) in self.columns.iter().enumerate() {
            if let SessionColumn::Key(k) = c {
                keys[*k] = window.keys().get(column).cloned();
            }
        }
        let keys = keys.into_iter().flatten().collect();
        window.with_keys(keys)
    }
}

/// One slide's groups in a partition: `closed`, sealed once the watermark passed its end or a
/// checkpoint saved it (each of its windows merges them), and `open`, the groups of rows that arrived
/// since.
#[derive(Default)]
struct Slide {
    closed: Vec<Partial>,
    closed_bytes: usize,
    open: Option<GroupTable>,
}

/// A window's groups merged ahead of its end from its slides' sealed partials, and per slide how many
/// of them it holds.
struct Building {
    table: GroupTable,
    merged: BTreeMap<i64, usize>,
}

pub struct WindowAggShared {
    spec: AggSpec,
    /// Set when the windows are aggregated by slide.
    slicing: Option<Slicing>,
    /// Which group key is the window's end.
    window_end: usize,
    state: Mutex<WindowState>,
    output: Arc<Exchange>,
    checkpoint: Option<WindowCheckpoint>,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
    pool: Arc<MemoryPool>,
    /// Set when each partition owns its keys' groups: the positions of the group keys the input is
    /// partitioned by. Each partition then emits its windows itself, as producer of `output`.
    keyed: Option<Vec<usize>>,
}

struct WindowState {
    /// Per input partition, the watermark it has passed (`i64::MAX` once it ended).
    watermarks: Vec<i64>,
    /// Partial groups of the windows not emitted yet, by window end.
    pending: BTreeMap<i64, Vec<Partial>>,
    /// The last watermark forwarded downstream.
    forwarded: i64,
    /// Partitions whose input ended.
    ended: usize,
    /// Partitions whose input is idle (not keyed: once all are, the output is told).
    idle: Vec<bool>,
    /// Checkpoint barriers: each is forwarded once every partition passed it.
    epochs: EpochTracker,
    /// Keyed: per partition, the restored partial groups of its keys by window end, until it takes them.
    restored: Vec<BTreeMap<i64, Vec<Partial>>>,
}

struct WindowCheckpoint {
    op: OperatorCheckpoint,
    /// State columns of each accumulator, to read partial groups back.
    widths: Vec<usize>,
}

impl WindowAggShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: AggSpec,
        window_end: usize,
        partitions: usize,
        output: Arc<Exchange>,
        batch_size: usize,
        metrics: Arc<OpMetrics>,
        pool: Arc<MemoryPool>,
        checkpoint: Option<(Arc<Coordinator>, usize)>,
        slicing: Option<Slicing>,
        keyed: Option<Vec<usize>>,
    ) -> Result<WindowAggShared> {
        let restored = checkpoint.as_ref().map_or(0, |(c, _)| c.restored);
        let mut state = WindowState {
            watermarks: vec![i64::MIN; partitions],
            pending: BTreeMap::new(),
            forwarded: i64::MIN,
            ended: 0,
            idle: vec![false; partitions],
            epochs: EpochTracker::new(partitions, restored),
            restored: (0..partitions).map(|_| BTreeMap::new()).collect(),
        };
        let checkpoint = match checkpoint {
            None => None,
            Some((coordinator, node)) => {
                let widths = GroupTable::new(&spec)?.into_partial()?.states.iter().map(|s| s.len()).collect();
                let ck = WindowCheckpoint { op: OperatorCheckpoint::register(&coordinator, format!("window-{node}"))?, widths };
                if let Some(dir) = ck.op.restore_dir() {
                    restore(&spec, window_end, keyed.as_deref(), &ck, &dir, &mut state)?;
                }
                Some(ck)
            }
        };
        Ok(WindowAggShared { spec, slicing, window_end, state: Mutex::new(state), output, checkpoint, batch_size, metrics, pool, keyed })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, WindowState>> {
        self.state.lock().map_err(|_| RiffleError::exec("window aggregate lock poisoned"))
    }

    /// The watermark partition `p` starts from (restored from a checkpoint, or none), and keyed, the
    /// restored groups of its keys.
    fn start(&self, p: usize) -> (i64, BTreeMap<i64, Vec<Partial>>) {
        match self.lock() {
            Ok(mut st) => {
                let restored = st.restored.get_mut(p).map(std::mem::take).unwrap_or_default();
                (st.watermarks.get(p).copied().unwrap_or(i64::MIN), restored)
            }
            Err(_) => (i64::MIN, BTreeMap::new()),
        }
    }

    /// Partition `p` reached barrier `e` (or ended: `u64::MAX`) with the partial groups of its open
    /// windows; forwards, after saving the shared state, every epoch all partitions have passed.
    fn barrier(&self, p: usize, e: u64, open: Vec<RecordBatch>) -> Result<()> {
        let mut st = self.lock()?;
        if let (Some(ck), false) = (&self.checkpoint, open.is_empty()) {
            // Written while processing goes on, before the epoch's ack (one queue).
            let path = ck.op.coordinator.state_dir(e, &ck.op.name)?.join(format!("partition-{p}.arrow"));
            ck.op.coordinator.write_async(move || super::checkpoint::write_batches(&path, &open))?;
        }
        if self.keyed.is_some() && e != u64::MAX {
            // Each partition forwards its barrier; the output exchange aligns them.
            self.output.push(p, Message::Barrier(e));
        }
        for epoch in st.epochs.pass(p, e) {
            if let Some(ck) = &self.checkpoint {
                self.save_shared(ck, epoch, &st)?;
            }
            if self.keyed.is_none() {
                self.output.push(0, Message::Barrier(epoch));
            }
        }
        if st.epochs.all_ended() {
            if let Some(ck) = &self.checkpoint {
                ck.op.coordinator.retire(ck.op.component)?;
            }
            if self.keyed.is_none() {
                self.output.push(0, Message::End);
            }
        }
        Ok(())
    }

    /// The windows handed over but not emitted yet, and the watermarks, as of epoch `e` (written
    /// asynchronously, then the epoch acked).
    fn save_shared(&self, ck: &WindowCheckpoint, e: u64, st: &WindowState) -> Result<()> {
        let dir = ck.op.coordinator.state_dir(e, &ck.op.name)?;
        let batches =
            st.pending.values().flatten().map(|p| Ok(p.clone().into_batch()?.0)).collect::<Result<Vec<RecordBatch>>>()?;
        let live: Vec<i64> = st.watermarks.iter().copied().filter(|w| *w != i64::MAX).collect();
        let doc = serde_json::json!({ "watermark": live.iter().min().copied().unwrap_or(st.forwarded), "forwarded": st.forwarded });
        ck.op.coordinator.save_async(ck.op.component, e, move || {
            super::checkpoint::write_batches(&dir.join("pending.arrow"), &batches)?;
            super::checkpoint::write_synced(&dir.join("state.json"), doc.to_string().as_bytes())
        })
    }

    /// Partition `p`'s input went idle (or woke). Keyed, the partition tells the output exchange
    /// itself; otherwise the output is told once every partition is idle (an idle partition's
    /// watermark still bounds the windows: it may hold groups of them). The output wakes with the
    /// next window or watermark.
    fn idle(&self, p: usize, idle: bool) -> Result<()> {
        if self.keyed.is_some() {
            if idle {
                self.output.push(p, Message::Idle);
            }
            return Ok(());
        }
        let mut st = self.lock()?;
        st.idle[p] = idle;
        if idle && st.idle.iter().all(|i| *i) {
            self.output.push(0, Message::Idle);
        }
        Ok(())
    }

    /// Whether partition `p` must wait: it passed a barrier the others have not all reached.
    fn aligning(&self, p: usize) -> bool {
        self.checkpoint.is_some() && self.lock().is_ok_and(|st| st.epochs.ahead(p))
    }

    /// Partition `partition` reached `watermark` and hands over the windows it closed; emits every
    /// window all partitions have closed, then the watermark they all passed, and the end once every
    /// partition ended.
    /// Keyed, a partition emitted its windows itself: only its watermark is noted (for checkpoints).
    fn advance(&self, partition: usize, watermark: i64, closed: Vec<(i64, Partial)>, ended: bool) -> Result<()> {
        let mut st = self.lock()?;
        st.ended += usize::from(ended);
        for (end, partial) in closed {
            st.pending.entry(end).or_default().push(partial);
        }
        let slot = st.watermarks.get_mut(partition).ok_or_else(|| RiffleError::exec("watermark from an unknown partition"))?;
        *slot = (*slot).max(watermark);
        if self.keyed.is_some() {
            return Ok(());
        }
        let passed = st.watermarks.iter().copied().min().unwrap_or(i64::MAX);
        let still_open = match passed.checked_add(1) {
            Some(next) => st.pending.split_off(&next),
            None => BTreeMap::new(),
        };
        let complete = std::mem::replace(&mut st.pending, still_open);
        // Emitted under the lock, so windows and watermarks leave in order.
        for (_, parts) in complete {
            let mut table = GroupTable::new(&self.spec)?;
            for p in parts {
                table.merge(p)?;
            }
            let batch = self.spec.result(table)?;
            emit_rows(&self.output, 0, &batch, self.batch_size, &self.metrics);
        }
        if st.ended == st.watermarks.len() {
            // The end leaves after the last barriers (see `barrier`).
        } else if passed > st.forwarded && passed < i64::MAX {
            st.forwarded = passed;
            self.output.push(0, Message::Watermark(passed));
        }
        Ok(())
    }
}

/// One partition of a window aggregate.
pub struct WindowAggSink {
    shared: Arc<WindowAggShared>,
    partition: usize,
    /// Open windows by end, each with its groups.
    windows: BTreeMap<i64, GroupTable>,
    /// With slicing: the slides by end, each with its groups, and the watermark up to which their
    /// windows were emitted.
    slides: BTreeMap<i64, Slide>,
    /// With slicing: the open windows' groups merged so far, by end.
    building: BTreeMap<i64, Building>,
    emitted: i64,
    /// The watermark this partition's input has passed: windows ending at or before it are closed.
    watermark: i64,
    /// Keyed: restored partial groups of this partition's keys by window end, merged into their
    /// windows when they close.
    restored: BTreeMap<i64, Vec<Partial>>,
    reservation: MemoryReservation,
    ended: bool,
    /// The input said it is idle, and has sent no batch or watermark since.
    idle: bool,
}

impl WindowAggSink {
    pub fn new(shared: Arc<WindowAggShared>, partition: usize) -> WindowAggSink {
        let reservation = shared.pool.reservation(format!("WindowAggregate (partition {partition})"), false);
        let (watermark, restored) = shared.start(partition);
        WindowAggSink {
            shared,
            partition,
            windows: BTreeMap::new(),
            slides: BTreeMap::new(),
            building: BTreeMap::new(),
            emitted: watermark,
            watermark,
            restored,
            reservation,
            ended: false,
            idle: false,
        }
    }

    /// The partial groups of the open windows, as batches, the windows kept open.
    /// Keyed, the restored groups not emitted yet are part of it.
    fn snapshot(&mut self) -> Result<Vec<RecordBatch>> {
        let shared = self.shared.clone();
        let mut out = Vec::new();
        if let Some(slicing) = &shared.slicing {
            for end in self.window_ends(self.watermark, i64::MAX) {
                self.seal(end.saturating_sub(slicing.window.size), end)?;
                self.catch_up(end)?;
                if let Some(b) = self.building.get_mut(&end) {
                    let partial = std::mem::replace(&mut b.table, GroupTable::new(&slicing.spec)?).into_partial()?;
                    out.push(slicing.window_partial(end, partial.clone()).into_batch()?.0);
                    b.table.merge(partial)?;
                }
            }
        } else {
            for table in self.windows.values_mut() {
                let partial = std::mem::replace(table, GroupTable::new(&shared.spec)?).into_partial()?;
                out.push(partial.clone().into_batch()?.0);
                table.merge(partial)?;
            }
        }
        for p in self.restored.values().flatten() {
            out.push(p.clone().into_batch()?.0);
        }
        Ok(out)
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.shared.slicing.is_some() {
            return self.add_to_slides(batch);
        }
        let spec = &self.shared.spec;
        let ends = evaluate(&spec.group[self.shared.window_end], batch)?;
        let ends = arrow::compute::cast(&ends, &DataType::Int64)?;
        let ends = ends.as_primitive::<Int64Type>();
        // Rows by window end; most batches hold one or two windows.
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, end) in ends.iter().enumerate() {
            if let Some(end) = end {
                by_end.entry(end).or_default().push(row as u32);
            }
        }
        let whole = by_end.len() == 1 && ends.null_count() == 0;
        let mut late = 0;
        for (end, rows) in by_end {
            if end <= self.watermark {
                late += rows.len() as u64;
                continue;
            }
            let table = match self.windows.entry(end) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(GroupTable::new(spec)?),
            };
            if whole {
                table.update(spec, batch)?;
            } else {
                table.update(spec, &arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?)?;
            }
        }
        if late > 0 {
            self.shared.metrics.late_rows.fetch_add(late, Ordering::Relaxed);
        }
        // Window state cannot spill yet: it is counted against the budget all the same.
        let size: usize = self.windows.values().map(|t| t.size()).sum();
        self.shared.metrics.note_bytes(size);
        self.reservation.resize_anyway(size);
        Ok(())
    }

    /// Adds each row to the groups of its slide (rows are in the window table function's input).
    fn add_to_slides(&mut self, batch: &RecordBatch) -> Result<()> {
        let shared = self.shared.clone();
        let Some(slicing) = &shared.slicing else { return Ok(()) };
        let (step, offset) = (slicing.window.step, slicing.window.offset);
        let times = arrow::compute::cast(batch.column(slicing.time), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, t) in times.iter().enumerate() {
            // A row without a time is in no window.
            if let Some(t) = t {
                let start = t.saturating_sub(t.saturating_sub(offset).rem_euclid(step));
                by_end.entry(start.saturating_add(step)).or_default().push(row as u32);
            }
        }
        let whole = by_end.len() == 1 && times.null_count() == 0;
        let mut late = 0;
        for (end, rows) in by_end {
            // Its windows end at `end`, `end + step`, …; those at or before the watermark were emitted.
            if end <= self.watermark {
                let emitted = ((self.watermark - end) / step).saturating_add(1).min(slicing.slides());
                late += rows.len() as u64 * emitted as u64;
                if slicing.last_window(end) <= self.watermark {
                    continue;
                }
            }
            let slide = self.slides.entry(end).or_default();
            let table = match &mut slide.open {
                Some(t) => t,
                None => slide.open.insert(GroupTable::new(&slicing.spec)?),
            };
            if whole {
                table.update(&slicing.spec, batch)?;
            } else {
                table.update(&slicing.spec, &arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?)?;
            }
        }
        if late > 0 {
            self.shared.metrics.late_rows.fetch_add(late, Ordering::Relaxed);
        }
        self.account_slides();
        Ok(())
    }

    /// Counts the slides' and the windows' groups against the memory budget (they cannot spill yet).
    fn account_slides(&mut self) {
        let slides: usize = self.slides.values().map(|s| s.closed_bytes + s.open.as_ref().map_or(0, |t| t.size())).sum();
        let size = slides + self.building.values().map(|b| b.table.size()).sum::<usize>();
        self.shared.metrics.note_bytes(size);
        self.reservation.resize_anyway(size);
    }

    /// The ends of the windows ending after `after` and at or before `upto` that hold a slide with rows.
    fn window_ends(&self, after: i64, upto: i64) -> std::collections::BTreeSet<i64> {
        let mut ends = std::collections::BTreeSet::new();
        let Some(slicing) = &self.shared.slicing else { return ends };
        for &end in self.slides.keys() {
            let mut e = end;
            while e <= slicing.last_window(end) {
                if e > after && e <= upto {
                    ends.insert(e);
                }
                match e.checked_add(slicing.window.step) {
                    Some(next) => e = next,
                    None => break,
                }
            }
        }
        ends
    }

    /// Seals the groups of the slides ending after `after` and at or before `upto`: their rows so
    /// far become a partial each of their windows merges.
    fn seal(&mut self, after: i64, upto: i64) -> Result<()> {
        for (_, slide) in self.slides.range_mut(after.saturating_add(1)..=upto) {
            if let Some(open) = slide.open.take() {
                let partial = open.into_partial()?;
                slide.closed_bytes += partial.size();
                slide.closed.push(partial);
            }
        }
        Ok(())
    }

    /// Merges into the window ending at `end` its slides' sealed partials it does not hold yet.
    fn catch_up(&mut self, end: i64) -> Result<()> {
        let shared = self.shared.clone();
        let Some(slicing) = &shared.slicing else { return Ok(()) };
        let building = match self.building.entry(end) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(Building { table: GroupTable::new(&slicing.spec)?, merged: BTreeMap::new() })
            }
        };
        let first = end.saturating_sub(slicing.window.size);
        for (slide_end, slide) in self.slides.range(first.saturating_add(1)..=end) {
            let held = building.merged.entry(*slide_end).or_default();
            for p in slide.closed.iter().skip(*held) {
                building.table.merge(p.clone())?;
            }
            *held = slide.closed.len();
        }
        Ok(())
    }

    /// Seals the slides the watermark passed and merges them into every open window that holds
    /// them, so that a window's close merges only what came after.
    fn prebuild(&mut self) -> Result<()> {
        self.seal(i64::MIN, self.watermark)?;
        for end in self.window_ends(self.emitted, i64::MAX) {
            self.catch_up(end)?;
        }
        self.account_slides();
        Ok(())
    }

    /// Takes the windows ending at or before `watermark` out, each as a group table (of the slides'
    /// keys when sliced).
    fn close(&mut self, watermark: i64) -> Result<Vec<(i64, GroupTable)>> {
        let shared = self.shared.clone();
        if let Some(slicing) = &shared.slicing {
            self.seal(i64::MIN, watermark)?;
            let mut closed = Vec::new();
            for end in self.window_ends(self.emitted, watermark) {
                self.catch_up(end)?;
                if let Some(b) = self.building.remove(&end) {
                    closed.push((end, b.table));
                }
            }
            let last_window = |end: i64| slicing.last_window(end);
            self.slides.retain(|end, _| last_window(*end) > watermark);
            self.emitted = watermark;
            return Ok(closed);
        }
        let open = match watermark.checked_add(1) {
            Some(next) => self.windows.split_off(&next),
            None => BTreeMap::new(),
        };
        Ok(std::mem::replace(&mut self.windows, open).into_iter().collect())
    }

    /// Closes the windows ending at or before `watermark` and passes them on: keyed, this partition
    /// emits them with its restored groups, then the watermark; otherwise the shared state gets them.
    fn pass(&mut self, watermark: i64, ended: bool) -> Result<()> {
        let shared = self.shared.clone();
        let closed = self.close(watermark)?;
        if shared.keyed.is_none() {
            let partials = closed
                .into_iter()
                .map(|(end, table)| {
                    let partial = table.into_partial()?;
                    Ok((end, match &shared.slicing {
                        Some(slicing) => slicing.window_partial(end, partial),
                        None => partial,
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            shared.advance(self.partition, watermark, partials, ended)?;
            return self.prebuild_after(ended);
        }
        let mut windows: BTreeMap<i64, Option<GroupTable>> = closed.into_iter().map(|(end, t)| (end, Some(t))).collect();
        let still_open = match watermark.checked_add(1) {
            Some(next) => self.restored.split_off(&next),
            None => BTreeMap::new(),
        };
        let mut restored = std::mem::replace(&mut self.restored, still_open);
        windows.extend(restored.keys().filter(|end| !windows.contains_key(end)).map(|end| (*end, None)).collect::<Vec<_>>());
        for (end, table) in windows {
            let spec = shared.slicing.as_ref().map_or(&shared.spec, |s| &s.spec);
            let mut table = match table {
                Some(t) => t,
                None => GroupTable::new(spec)?,
            };
            for partial in restored.remove(&end).unwrap_or_default() {
                table.merge(match &shared.slicing {
                    Some(slicing) => slicing.slide_partial(partial),
                    None => partial,
                })?;
            }
            let batch = match &shared.slicing {
                Some(slicing) => slicing.spec.result_rekeyed(table, |keys, n| slicing.window_keys(end, &keys, n))?,
                None => shared.spec.result(table)?,
            };
            emit_rows(&shared.output, self.partition, &batch, shared.batch_size, &shared.metrics);
        }
        if !ended {
            shared.output.push(self.partition, Message::Watermark(watermark));
        }
        shared.advance(self.partition, watermark, vec![], ended)?;
        self.prebuild_after(ended)
    }

    /// With slicing, once the closed windows left: merges the slides the watermark sealed into the
    /// windows still open.
    fn prebuild_after(&mut self, ended: bool) -> Result<()> {
        if ended || self.shared.slicing.is_none() {
            return Ok(());
        }
        self.prebuild()
    }
}

impl Sink for WindowAggSink {
    /// Emitted windows wait in a bounded queue; while it is full the partitions stop reading. While
    /// a checkpoint's barriers align, a partition past the barrier waits for the others.
    fn has_capacity(&self) -> bool {
        let producer = if self.shared.keyed.is_some() { self.partition } else { 0 };
        self.shared.output.has_capacity(producer) && !self.shared.aligning(self.partition)
    }

    fn push(&mut self, msg: Message) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        if self.idle && matches!(msg, Message::Batch(_) | Message::Watermark(_)) {
            self.idle = false;
            self.shared.idle(self.partition, false)?;
        }
        match msg {
            Message::Idle if !self.idle => {
                self.idle = true;
                self.shared.idle(self.partition, true)?;
            }
            Message::Idle => {}
            Message::Batch(b) => {
                let started = std::time::Instant::now();
                self.add(&b)?;
                self.shared.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            Message::Watermark(w) if w > self.watermark => {
                self.watermark = w;
                self.pass(w, false)?;
            }
            Message::Watermark(_) => {}
            Message::Barrier(epoch) => {
                let open = if self.shared.checkpoint.is_some() { self.snapshot()? } else { vec![] };
                self.shared.barrier(self.partition, epoch, open)?;
            }
            Message::End => {
                self.ended = true;
                // Handed over first: a checkpoint the end completes must hold these windows.
                self.pass(i64::MAX, true)?;
                self.reservation.free();
                self.shared.barrier(self.partition, u64::MAX, vec![])?;
                if self.shared.keyed.is_some() {
                    self.shared.output.push(self.partition, Message::End);
                }
            }
        }
        Ok(())
    }
}

/// Reads a checkpoint's partial groups into the shared state: they wait for their windows to
/// complete like groups handed over by a partition.
fn restore(spec: &AggSpec, window_end: usize, keyed: Option<&[usize]>, ck: &WindowCheckpoint, dir: &std::path::Path, st: &mut WindowState) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let keys = spec.group.len();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|x| x != "arrow") {
            continue;
        }
        for batch in super::checkpoint::read_batches(&path)? {
            let ends = arrow::compute::cast(batch.column(window_end), &DataType::Int64)?;
            let ends = ends.as_primitive::<Int64Type>();
            let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
            for (row, end) in ends.iter().enumerate() {
                by_end.entry(end.unwrap_or(i64::MIN)).or_default().push(row as u32);
            }
            for (end, rows) in by_end {
                let part = arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?;
                let Some(routing) = keyed else {
                    st.pending.entry(end).or_default().push(Partial::from_batch(&part, keys, &ck.widths));
                    continue;
                };
                // Dealt to the partitions owning the keys now.
                let partitions = st.restored.len();
                let columns: Vec<ArrayRef> = routing.iter().map(|k| part.column(*k).clone()).collect();
                let owner = super::key_partition::owners(&columns, partitions)?;
                for (p, mine) in super::key_partition::split_by_owner(&part, &owner, partitions)? {
                    st.restored[p].entry(end).or_default().push(Partial::from_batch(&mine, keys, &ck.widths));
                }
            }
        }
    }
    if let Some(doc) = super::checkpoint::read_json(&dir.join("state.json"))? {
        let watermark = doc.get("watermark").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
        st.watermarks.iter_mut().for_each(|w| *w = watermark);
        st.forwarded = doc.get("forwarded").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
    }
    Ok(())
}
