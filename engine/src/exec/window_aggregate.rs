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
//! as each of its window rows would. A window's table starts with room for the groups the last
//! window closed with and keeps room for a slide's more, so that it does not grow (moving every
//! group) while its last slide is merged; its results go out in batches whose window bounds are
//! slices of one array per bound (Nexmark q5 at 5.3 M events/s: 1.6 M counts per partition per window).
//!
//! Keyed: when the input is partitioned by the group keys that are not window columns (Flink's
//! keyBy: `key_partition.rs`), each partition owns its keys' groups, so it emits its part of a
//! window itself when its watermark passes the window's end, into an output exchange it is one
//! producer of (which forwards the smallest watermark of all). Nothing is merged across partitions:
//! Nexmark q5's ~588,000 auctions per window were merged serially from every partition's part
//! before, the largest part of its latency.
//!
//! Memory: keyed, a partition whose groups outgrow its share of the budget writes them to disk by key
//! hash (`group_spill`: each open window's, or sliced each slide's, to their own files) and starts
//! afresh. A window some of whose groups are on disk is not merged ahead: at its close its parts on
//! disk and in memory are merged one bucket at a time. At a checkpoint such a window is written whole
//! (its spill files copied), not by its changes. Without keys besides the window columns a window
//! has one group: nothing to spill.
//!
//! Checkpoints: a partition that reaches barrier `e` writes its open windows' partial groups and waits
//! until every partition reached it (aligned barriers: nothing it does after the barrier can mix
//! into the checkpoint); then the windows handed over but not emitted yet and the watermarks are
//! written, barrier `e` goes downstream and the epoch is acked. The open windows are written
//! incrementally, into files shared by checkpoints (`checkpoint::SharedFiles`): a window's groups
//! the first time, then at each barrier those changed since the last one, a restore keeping each
//! group's last state; once a window's files would hold more than twice its groups (or
//! `MAX_CHAIN` files) its groups are written whole again. A long window (an hour, checkpoints every
//! ten seconds) writes what its last ten seconds changed, not the hour's groups every time. Restored, all saved partial groups
//! wait in the shared state for their windows to complete, and every partition starts from the
//! watermark all of them had passed; keyed, they are dealt to the partitions owning their keys (the
//! thread count may have changed) and merged into those windows when they close.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int64Type};

use arrow::array::{ArrayRef, TimestampMicrosecondArray};

use super::aggregate::{AggSpec, GroupTable, Part, Partial};
use super::group_spill::{memory_buckets, BucketMerge, SpilledGroups};
use crate::logical::{WindowSpec, WINDOW_TIME_BEFORE_END};
use crate::physical::SessionColumn;
use super::checkpoint::{Coordinator, EpochTracker, OperatorCheckpoint, SharedFiles};
use super::{emit_rows, Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::memory::{MemoryPool, MemoryReservation, SpillFile, SpillManager};
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

    /// Arrays of at least `n` rows holding the bounds of the window ending at `end`.
    fn bounds(&self, end: i64, n: usize) -> WindowBounds {
        let constant = |t: i64| -> ArrayRef { Arc::new(TimestampMicrosecondArray::from_value(t, n)) };
        WindowBounds {
            start: constant(end.saturating_sub(self.window.size)),
            end: constant(end),
            time: constant(end.saturating_sub(WINDOW_TIME_BEFORE_END)),
        }
    }

    /// The window aggregate's key columns for `n` groups of a window, from their keys that are not
    /// window columns and the window's `bounds` (sliced: a window's batches share one array of each).
    fn window_keys(&self, bounds: &WindowBounds, keys: &[ArrayRef], n: usize) -> Vec<ArrayRef> {
        self.columns
            .iter()
            .map(|c| match c {
                SessionColumn::Key(k) => keys[*k].clone(),
                SessionColumn::Start => bounds.start.slice(0, n),
                SessionColumn::End => bounds.end.slice(0, n),
                SessionColumn::Time => bounds.time.slice(0, n),
            })
            .collect()
    }

    /// The window aggregate's partial groups of the window ending at `end`, from those of its slides
    /// keyed by the other keys.
    fn window_partial(&self, end: i64, groups: Partial) -> Partial {
        let n = groups.num_groups();
        let keys = self.window_keys(&self.bounds(end, n), groups.keys(), n);
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

/// A window's bounds as constant columns (`Slicing::bounds`).
struct WindowBounds {
    start: ArrayRef,
    end: ArrayRef,
    time: ArrayRef,
}

/// One slide's groups in a partition: `closed`, sealed once the watermark passed its end or a
/// checkpoint saved it (each of its windows merges them), and `open`, the groups of rows that arrived
/// since.
#[derive(Default)]
struct Slide {
    closed: Vec<Partial>,
    closed_bytes: usize,
    open: Option<GroupTable>,
    /// Groups written to disk when the partition outgrew its share of the budget.
    spilled: SpilledGroups,
}

/// Groups of a sealed slide a window merges at a time ahead of its end (see `WindowAggSink::prebuild`).
const PREBUILD_GROUPS: usize = 16 * 1024;

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
    spill: Arc<SpillManager>,
    /// State columns of each accumulator of the partitions' tables (`table_spec`), to read spilled
    /// groups back.
    table_widths: Vec<usize>,
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
    /// The files the partitions' open windows are written to.
    files: Arc<SharedFiles>,
}

/// A partition's open windows at a barrier: the shared files to write, and per window the files a
/// restore reads, in order (see `Chain`).
#[derive(Default)]
struct Snapshot {
    writes: Vec<(String, Vec<Piece>)>,
    chains: Vec<Vec<String>>,
}

/// Rows of a window written at a checkpoint: a batch of its partial groups, or a spill file of
/// them, read back as the file is written (of a slide's groups when sliced: keyed by the window
/// ending at `window`).
enum Piece {
    Batch(RecordBatch),
    Spilled { file: Arc<SpillFile>, window: Option<i64> },
}

/// The files that hold an open window's groups as of the last checkpoint: the first has them all,
/// each later one those changed since the file before, with their row counts.
#[derive(Default)]
struct Chain {
    files: Vec<(String, usize)>,
}

impl Chain {
    /// The groups of `table` to write into file `name`: all of them when the chain is new or has
    /// grown too long (`checkpoint::compact_now`), otherwise those changed since the last call;
    /// None when none changed.
    fn next(&mut self, table: &mut GroupTable, name: String) -> Result<Option<(String, Partial)>> {
        let named = self.files.iter().map(|(_, rows)| rows).sum();
        let whole = super::checkpoint::compact_now(self.files.len(), named, table.changes(), table.num_groups());
        let Some(partial) = table.take_changes(whole)? else { return Ok(None) };
        if whole {
            self.files.clear();
        }
        self.files.push((name.clone(), partial.num_groups()));
        Ok(Some((name, partial)))
    }

    /// A window some of whose groups are on disk is written whole, as the partial groups it has in
    /// memory and on disk (a group may be in several: a restore merges them), every time: a later
    /// file could not replace a group's state, only part of it.
    fn whole(&mut self, name: &str, pieces: &[Piece]) {
        let rows = pieces
            .iter()
            .map(|p| match p {
                Piece::Batch(b) => b.num_rows(),
                Piece::Spilled { file, .. } => file.rows(),
            })
            .sum();
        self.files = vec![(name.to_string(), rows)];
    }

    fn names(&self) -> Vec<String> {
        self.files.iter().map(|(f, _)| f.clone()).collect()
    }
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
        memory: (Arc<MemoryPool>, Arc<SpillManager>),
        checkpoint: Option<(Arc<Coordinator>, usize)>,
        slicing: Option<Slicing>,
        keyed: Option<Vec<usize>>,
    ) -> Result<WindowAggShared> {
        let (pool, spill) = memory;
        let table_widths = slicing.as_ref().map_or(&spec, |s| &s.spec).state_widths()?;
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
                let widths = spec.state_widths()?;
                let op = OperatorCheckpoint::register(&coordinator, format!("window-{node}"))?;
                let restore_dir = op.restore_dir();
                let chains = match &restore_dir {
                    Some(dir) => read_chains(dir)?,
                    None => vec![],
                };
                let files = SharedFiles::open(&coordinator, &op.name, &chains.concat())?;
                let ck = WindowCheckpoint { op, widths, files };
                if let Some(dir) = restore_dir {
                    restore(&spec, window_end, keyed.as_deref(), &ck, &dir, &chains, &mut state)?;
                }
                Some(ck)
            }
        };
        Ok(WindowAggShared {
            spec,
            slicing,
            window_end,
            state: Mutex::new(state),
            output,
            checkpoint,
            batch_size,
            metrics,
            pool,
            spill,
            table_widths,
            keyed,
        })
    }

    /// The aggregate the partitions' group tables hold: the slides' when sliced.
    fn table_spec(&self) -> &AggSpec {
        self.slicing.as_ref().map_or(&self.spec, |s| &s.spec)
    }

    /// A piece's batches as written to a checkpoint (a spill file's one at a time), a slide's
    /// spilled groups keyed by their window.
    fn piece_batches(&self, piece: Piece) -> Box<dyn Iterator<Item = Result<RecordBatch>> + '_> {
        let (file, window) = match piece {
            Piece::Batch(b) => return Box::new(std::iter::once(Ok(b))),
            Piece::Spilled { file, window } => (file, window),
        };
        let mut reader = match file.reader() {
            Ok(r) => r,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        // The closure owns the file: it stays while it is read (a window closing meanwhile drops its
        // slides' files).
        let next = move || {
            let _reading = &file;
            reader.next_batch().transpose()
        };
        Box::new(std::iter::from_fn(next).map(move |batch| match (window, &self.slicing) {
            (Some(end), Some(slicing)) => {
                let partial = Partial::from_batch(&batch?, slicing.spec.group.len(), &self.table_widths);
                Ok(slicing.window_partial(end, partial).into_batch()?.0)
            }
            _ => batch,
        }))
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

    /// Partition `p` reached barrier `e` (or ended: `u64::MAX`) with the snapshot of its open
    /// windows; forwards, after saving the shared state, every epoch all partitions have passed.
    fn barrier(self: &Arc<Self>, p: usize, e: u64, open: Option<Snapshot>) -> Result<()> {
        let mut st = self.lock()?;
        if let (Some(ck), Some(open)) = (&self.checkpoint, open) {
            // Named before they are written: a checkpoint completing meanwhile keeps them.
            ck.files.taken(e, open.chains.concat());
            let files = ck.files.clone();
            let path = ck.op.coordinator.state_dir(e, &ck.op.name)?.join(format!("partition-{p}.json"));
            let shared = self.clone();
            // Written while processing goes on, before the epoch's ack (one queue).
            ck.op.coordinator.write_async(move || {
                for (file, pieces) in open.writes {
                    let batches = pieces.into_iter().flat_map(|piece| shared.piece_batches(piece));
                    super::checkpoint::write_batches_from(&files.path(&file), batches)?;
                }
                super::checkpoint::write_synced(&path, serde_json::json!({ "chains": open.chains }).to_string().as_bytes())
            })?;
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
    /// Open windows' groups written to disk when the partition outgrew its share of the budget.
    spilled: BTreeMap<i64, SpilledGroups>,
    /// The partition spilled: windows are no longer given room ahead for the groups to come.
    spilled_once: bool,
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
    /// Checkpointed: the files holding each open window's groups, and the file each window's
    /// restored groups were written to once.
    saved: BTreeMap<i64, Chain>,
    restored_saved: BTreeMap<i64, String>,
    reservation: MemoryReservation,
    ended: bool,
    /// With slicing: the slides the watermark sealed are yet to be merged into the windows still open.
    /// That waits for the next messages, so that the windows just closed go on to the next operators
    /// first (merging a sealed slide into each open window takes longer than emitting one: Nexmark
    /// q5's 2-s slides into its four other 10-s windows, ~20 ms at 1.45 M events/s).
    prebuild_due: bool,
    /// The input said it is idle, and has sent no batch or watermark since.
    idle: bool,
    /// With slicing: the groups of the last window closed. A window's table starts with room for as
    /// many, and keeps room for the largest slide held (see `prebuild`).
    last_window_groups: usize,
}

impl WindowAggSink {
    pub fn new(shared: Arc<WindowAggShared>, partition: usize) -> WindowAggSink {
        // Keyed, a partition spills its groups when they outgrow its share. Otherwise the groups are
        // the windows' alone (one per window: no keys besides the window's), and are only counted.
        let reservation = shared.pool.reservation(format!("WindowAggregate (partition {partition})"), shared.keyed.is_some());
        let (watermark, restored) = shared.start(partition);
        WindowAggSink {
            shared,
            partition,
            windows: BTreeMap::new(),
            spilled: BTreeMap::new(),
            spilled_once: false,
            slides: BTreeMap::new(),
            building: BTreeMap::new(),
            emitted: watermark,
            watermark,
            restored,
            saved: BTreeMap::new(),
            restored_saved: BTreeMap::new(),
            reservation,
            ended: false,
            prebuild_due: false,
            idle: false,
            last_window_groups: 0,
        }
    }

    /// A new group table of an open window: a checkpointed one notes the groups that change.
    fn window_table(&self, spec: &AggSpec) -> Result<GroupTable> {
        let mut table = GroupTable::new(spec)?;
        if self.shared.checkpoint.is_some() {
            table.track_changes();
        }
        Ok(table)
    }

    /// The open windows at barrier `e`, incrementally (see the module's doc), the windows kept open.
    /// Keyed, the restored groups not emitted yet are part of it, each window's written once.
    fn snapshot(&mut self, e: u64) -> Result<Snapshot> {
        let shared = self.shared.clone();
        let p = self.partition;
        let mut snap = Snapshot::default();
        let mut open = std::collections::BTreeSet::new();
        if let Some(slicing) = &shared.slicing {
            for end in self.window_ends(self.watermark, i64::MAX) {
                self.seal(end.saturating_sub(slicing.window.size), end)?;
                let name = format!("p{p}-w{end}-e{e}.arrow");
                if self.window_spilled(end) {
                    // Its slides' groups, on disk and in memory, all of them (see `Chain::whole`).
                    let mut pieces = vec![];
                    for (_, slide) in self.slides_of(end) {
                        for partial in &slide.closed {
                            pieces.push(Piece::Batch(slicing.window_partial(end, partial.clone()).into_batch()?.0));
                        }
                        pieces.extend(slide.spilled.files().map(|f| Piece::Spilled { file: f.clone(), window: Some(end) }));
                    }
                    open.insert(end);
                    self.saved.entry(end).or_default().whole(&name, &pieces);
                    snap.writes.push((name, pieces));
                    continue;
                }
                self.catch_up(end, usize::MAX)?;
                let Some(b) = self.building.get_mut(&end) else { continue };
                open.insert(end);
                if let Some((file, partial)) = self.saved.entry(end).or_default().next(&mut b.table, name)? {
                    snap.writes.push((file, vec![Piece::Batch(slicing.window_partial(end, partial).into_batch()?.0)]));
                }
            }
        } else {
            for (end, table) in self.windows.iter_mut() {
                open.insert(*end);
                let name = format!("p{p}-w{end}-e{e}.arrow");
                if let Some(spilled) = self.spilled.get(end).filter(|s| !s.is_empty()) {
                    let mut pieces: Vec<Piece> = spilled.files().map(|f| Piece::Spilled { file: f.clone(), window: None }).collect();
                    if let Some(partial) = table.take_changes(true)? {
                        pieces.push(Piece::Batch(partial.into_batch()?.0));
                    }
                    self.saved.entry(*end).or_default().whole(&name, &pieces);
                    snap.writes.push((name, pieces));
                    continue;
                }
                if let Some((file, partial)) = self.saved.entry(*end).or_default().next(table, name)? {
                    snap.writes.push((file, vec![Piece::Batch(partial.into_batch()?.0)]));
                }
            }
        }
        self.saved.retain(|end, chain| open.contains(end) && !chain.files.is_empty());
        snap.chains = self.saved.values().map(Chain::names).collect();
        self.restored_saved.retain(|end, _| self.restored.contains_key(end));
        for (end, partials) in self.restored.iter().filter(|(_, parts)| !parts.is_empty()) {
            let file = match self.restored_saved.get(end) {
                Some(file) => file.clone(),
                None => {
                    let file = format!("p{p}-r{end}-e{e}.arrow");
                    let batches = partials.iter().map(|part| Ok(Piece::Batch(part.clone().into_batch()?.0))).collect::<Result<Vec<_>>>()?;
                    snap.writes.push((file.clone(), batches));
                    self.restored_saved.insert(*end, file.clone());
                    file
                }
            };
            snap.chains.push(vec![file]);
        }
        Ok(snap)
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.shared.slicing.is_some() {
            return self.add_to_slides(batch);
        }
        let spec = &self.shared.spec;
        let ends = evaluate(&spec.group[self.shared.window_end], batch)?;
        let ends = arrow::compute::cast(&ends, &DataType::Int64)?;
        let ends = ends.as_primitive::<Int64Type>();
        // Rows by window end; most batches hold one or two windows, a window's results one (its
        // rows are listed at once, without a map lookup per row).
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        if ends.null_count() == 0 && ends.values().first().is_some_and(|first| ends.values().iter().all(|e| e == first)) {
            by_end.insert(ends.value(0), (0..batch.num_rows() as u32).collect());
        } else {
            for (row, end) in ends.iter().enumerate() {
                if let Some(end) = end {
                    by_end.entry(end).or_default().push(row as u32);
                }
            }
        }
        let whole = by_end.len() == 1 && ends.null_count() == 0;
        let mut late = 0;
        for (end, rows) in by_end {
            if end <= self.watermark {
                late += rows.len() as u64;
                continue;
            }
            if !self.windows.contains_key(&end) {
                let table = self.window_table(spec)?;
                self.windows.insert(end, table);
            }
            let Some(table) = self.windows.get_mut(&end) else { continue };
            if whole {
                table.update(spec, batch)?;
            } else {
                table.update(spec, &arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?)?;
            }
        }
        if late > 0 {
            self.shared.metrics.late_rows.fetch_add(late, Ordering::Relaxed);
        }
        self.account()
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
        self.account()
    }

    /// Bytes of the groups in memory: the windows', or the slides' and the windows' merged ahead.
    fn size(&self) -> usize {
        let windows: usize = self.windows.values().map(GroupTable::size).sum();
        let slides: usize = self.slides.values().map(|s| s.closed_bytes + s.open.as_ref().map_or(0, |t| t.size())).sum();
        windows + slides + self.building.values().map(|b| b.table.size()).sum::<usize>()
    }

    /// Counts the groups in memory against the budget; keyed, a partition over its share writes
    /// them to disk (`spill`).
    fn account(&mut self) -> Result<()> {
        let size = self.size();
        self.shared.metrics.note_bytes(size);
        if self.shared.keyed.is_none() {
            self.reservation.resize_anyway(size);
            return Ok(());
        }
        if self.reservation.try_resize(size) {
            return Ok(());
        }
        self.spill()?;
        let size = self.size();
        self.reservation.resize_anyway(size);
        Ok(())
    }

    /// Writes the groups in memory to disk by key hash, each window's (or slide's) to its own files,
    /// and starts afresh: a window closing merges what it wrote with what it gathered since, bucket
    /// by bucket. Sliced, the windows merged ahead go (their slides' groups are on disk: each
    /// window merges them at its close).
    fn spill(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        self.spilled_once = true;
        let spec = shared.table_spec();
        if shared.slicing.is_some() {
            self.building.clear();
            for slide in self.slides.values_mut() {
                let open = slide.open.take().map(GroupTable::into_partial).transpose()?;
                let partials = std::mem::take(&mut slide.closed).into_iter().chain(open);
                slide.spilled.write(spec, partials, &shared.spill, &shared.metrics)?;
                slide.closed_bytes = 0;
            }
            return Ok(());
        }
        let ends: Vec<i64> = self.windows.iter().filter(|(_, t)| t.num_groups() > 0).map(|(end, _)| *end).collect();
        for end in ends {
            let fresh = self.window_table(spec)?;
            let Some(table) = self.windows.get_mut(&end) else { continue };
            let groups = std::mem::replace(table, fresh).into_partial()?;
            self.spilled.entry(end).or_default().write(spec, [groups], &shared.spill, &shared.metrics)?;
        }
        Ok(())
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
                // In pieces: the windows still open merge one at a time (see `prebuild`).
                slide.closed.extend(partial.split(PREBUILD_GROUPS));
            }
        }
        Ok(())
    }

    /// Merges into the window ending at `end` its slides' sealed partials it does not hold yet, at
    /// most `pieces` of them.
    fn catch_up(&mut self, end: i64, pieces: usize) -> Result<()> {
        let shared = self.shared.clone();
        let Some(slicing) = &shared.slicing else { return Ok(()) };
        if !self.building.contains_key(&end) {
            let mut table = self.window_table(&slicing.spec)?;
            if !self.spilled_once {
                table.reserve(self.last_window_groups);
            }
            self.building.insert(end, Building { table, merged: BTreeMap::new() });
        }
        let Some(building) = self.building.get_mut(&end) else { return Ok(()) };
        let first = end.saturating_sub(slicing.window.size);
        let mut left = pieces;
        for (slide_end, slide) in self.slides.range(first.saturating_add(1)..=end) {
            let held = building.merged.entry(*slide_end).or_default();
            for p in slide.closed.iter().skip(*held).take(left) {
                building.table.merge(p.clone())?;
                *held += 1;
                left -= 1;
            }
            if left == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Seals the slides the watermark passed and merges a piece of them into the earliest open window
    /// that lacks some, so that a window's close merges only what came after; true if more is left.
    /// A piece a message: the task yields in between, and other operators run (a 2-s slide of
    /// Nexmark q5 at 1.45 M events/s merges into a 10-s window in ~5 ms, a piece in ~1 ms).
    fn prebuild(&mut self) -> Result<bool> {
        self.seal(i64::MIN, self.watermark)?;
        let lagging: Vec<i64> = self.window_ends(self.emitted, i64::MAX).into_iter().filter(|end| self.lacks(*end)).collect();
        let Some(&end) = lagging.first() else { return Ok(false) };
        self.catch_up(end, 1)?;
        // Room for a slide's groups more, made now: a table that grows moves every group to a new
        // one, and its last slide is merged while the window's results wait.
        let slide_groups = self.slides.values().map(|s| s.closed.iter().map(Partial::num_groups).sum::<usize>()).max().unwrap_or(0);
        if let (Some(b), false) = (self.building.get_mut(&end), self.spilled_once) {
            b.table.reserve(slide_groups);
        }
        self.account()?;
        Ok(lagging.len() > 1 || self.lacks(end))
    }

    /// The slides of the window ending at `end`.
    fn slides_of(&self, end: i64) -> impl Iterator<Item = (&i64, &Slide)> {
        let first = self.shared.slicing.as_ref().map_or(end, |s| end.saturating_sub(s.window.size));
        self.slides.range(first.saturating_add(1)..=end)
    }

    /// Whether some of the groups of the window ending at `end` are on disk: it is merged at its
    /// close, bucket by bucket, not ahead.
    fn window_spilled(&self, end: i64) -> bool {
        match self.shared.slicing {
            Some(_) => self.slides_of(end).any(|(_, slide)| !slide.spilled.is_empty()),
            None => self.spilled.get(&end).is_some_and(|s| !s.is_empty()),
        }
    }

    /// Whether the window ending at `end` lacks sealed partials of its slides (and is merged ahead).
    fn lacks(&self, end: i64) -> bool {
        if self.shared.slicing.is_none() || self.window_spilled(end) {
            return false;
        }
        self.slides_of(end).any(|(slide_end, slide)| {
            let held = self.building.get(&end).and_then(|b| b.merged.get(slide_end)).copied().unwrap_or(0);
            slide.closed.len() > held
        })
    }

    /// Takes the windows ending at or before `watermark` out, each as a group table (of the slides'
    /// keys when sliced), or as the buckets of its groups when some are on disk.
    fn close(&mut self, watermark: i64) -> Result<Vec<(i64, Closed)>> {
        let shared = self.shared.clone();
        if let Some(slicing) = &shared.slicing {
            self.seal(i64::MIN, watermark)?;
            let mut closed = Vec::new();
            for end in self.window_ends(self.emitted, watermark) {
                if self.window_spilled(end) {
                    self.building.remove(&end);
                    closed.push((end, Closed::Buckets(self.slide_buckets(end)?)));
                    continue;
                }
                self.catch_up(end, usize::MAX)?;
                if let Some(b) = self.building.remove(&end) {
                    self.last_window_groups = b.table.num_groups();
                    closed.push((end, Closed::Table(Box::new(b.table))));
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
        let mut closed = Vec::new();
        for (end, table) in std::mem::replace(&mut self.windows, open) {
            match self.spilled.remove(&end) {
                Some(spilled) if !spilled.is_empty() => {
                    let mut buckets = memory_buckets(&shared.spec, [table.into_partial()?])?;
                    spilled.add_to(&mut buckets);
                    closed.push((end, Closed::Buckets(buckets)));
                }
                _ => closed.push((end, Closed::Table(Box::new(table)))),
            }
        }
        Ok(closed)
    }

    /// Per bucket, the groups of the window ending at `end` from its slides: those on disk and the
    /// sealed ones in memory.
    fn slide_buckets(&self, end: i64) -> Result<Vec<Vec<Part>>> {
        let spec = self.shared.table_spec();
        let mut buckets = memory_buckets(spec, self.slides_of(end).flat_map(|(_, s)| s.closed.iter().cloned()))?;
        for (_, slide) in self.slides_of(end) {
            slide.spilled.add_to(&mut buckets);
        }
        Ok(buckets)
    }

    /// Emits the groups of the window ending at `end` (its result rows: keyed sliced, with the
    /// window's bounds).
    fn emit_window(&self, end: i64, table: GroupTable) -> Result<()> {
        let shared = &self.shared;
        let batches = match &shared.slicing {
            Some(slicing) => {
                let bounds = slicing.bounds(end, table.num_groups().min(shared.batch_size));
                slicing.spec.result_in_batches(table, shared.batch_size, |keys, n| slicing.window_keys(&bounds, keys, n))?
            }
            None => vec![shared.spec.result(table)?],
        };
        for batch in batches {
            emit_rows(&shared.output, self.partition, &batch, shared.batch_size, &shared.metrics);
        }
        Ok(())
    }

    /// Closes the windows ending at or before `watermark` and passes them on: keyed, this partition
    /// emits them with its restored groups, then the watermark; otherwise the shared state gets them.
    fn pass(&mut self, watermark: i64, ended: bool) -> Result<()> {
        let shared = self.shared.clone();
        let closed = self.close(watermark)?;
        // The slides the watermark sealed go into the windows still open once these left.
        self.prebuild_due = !ended && shared.slicing.is_some();
        if shared.keyed.is_none() {
            let partials = closed
                .into_iter()
                .map(|(end, closed)| {
                    // Only keyed partitions spill (see `WindowAggSink::new`).
                    let Closed::Table(table) = closed else { return Err(RiffleError::exec("a window aggregate without keys spilled")) };
                    let partial = table.into_partial()?;
                    Ok((end, match &shared.slicing {
                        Some(slicing) => slicing.window_partial(end, partial),
                        None => partial,
                    }))
                })
                .collect::<Result<Vec<_>>>()?;
            return shared.advance(self.partition, watermark, partials, ended);
        }
        let mut windows: BTreeMap<i64, Option<Closed>> = closed.into_iter().map(|(end, c)| (end, Some(c))).collect();
        let still_open = match watermark.checked_add(1) {
            Some(next) => self.restored.split_off(&next),
            None => BTreeMap::new(),
        };
        let mut restored = std::mem::replace(&mut self.restored, still_open);
        windows.extend(restored.keys().filter(|end| !windows.contains_key(end)).map(|end| (*end, None)).collect::<Vec<_>>());
        let spec = shared.table_spec();
        for (end, closed) in windows {
            let restored = restored.remove(&end).unwrap_or_default().into_iter().map(|partial| match &shared.slicing {
                Some(slicing) => slicing.slide_partial(partial),
                None => partial,
            });
            match closed {
                Some(Closed::Buckets(mut buckets)) => {
                    for (b, parts) in memory_buckets(spec, restored)?.into_iter().enumerate() {
                        buckets[b].extend(parts);
                    }
                    let merge = BucketMerge { spec, widths: &shared.table_widths, spill: &shared.spill, metrics: &shared.metrics };
                    let mut merging = shared.pool.reservation(format!("WindowAggregate merge (partition {})", self.partition), false);
                    for parts in buckets {
                        merge.merge(parts, 0, &mut merging, &mut |table| self.emit_window(end, table))?;
                    }
                }
                closed => {
                    let mut table = match closed {
                        Some(Closed::Table(t)) => *t,
                        _ => GroupTable::new(spec)?,
                    };
                    for partial in restored {
                        table.merge(partial)?;
                    }
                    self.emit_window(end, table)?;
                }
            }
        }
        if !ended {
            shared.output.push(self.partition, Message::Watermark(watermark));
        }
        shared.advance(self.partition, watermark, vec![], ended)
    }
}

/// A closed window's groups: in one table, or, when some were written to disk, per bucket the
/// parts to merge (`group_spill`).
enum Closed {
    Table(Box<GroupTable>),
    Buckets(Vec<Vec<Part>>),
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
        if self.prebuild_due {
            self.prebuild_due = self.prebuild()?;
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
                let open = if self.shared.checkpoint.is_some() { Some(self.snapshot(epoch)?) } else { None };
                self.shared.barrier(self.partition, epoch, open)?;
            }
            Message::End => {
                self.ended = true;
                // Handed over first: a checkpoint the end completes must hold these windows.
                self.pass(i64::MAX, true)?;
                self.reservation.free();
                self.shared.barrier(self.partition, u64::MAX, None)?;
                if self.shared.keyed.is_some() {
                    self.shared.output.push(self.partition, Message::End);
                }
            }
        }
        Ok(())
    }
}

/// The chains of shared files the partitions' open windows were saved to at a checkpoint.
fn read_chains(dir: &std::path::Path) -> Result<Vec<Vec<String>>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(vec![]) };
    let mut chains = vec![];
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("partition-") && name.ends_with(".json")) {
            continue;
        }
        let Some(doc) = super::checkpoint::read_json(&entry.path())? else { continue };
        let damaged = || RiffleError::exec(format!("checkpoint file {} is damaged: delete the checkpoint directory to start afresh", entry.path().display()));
        for chain in doc.get("chains").and_then(|c| c.as_array()).ok_or_else(damaged)? {
            let files = chain.as_array().ok_or_else(damaged)?;
            chains.push(files.iter().map(|f| f.as_str().map(str::to_string).ok_or_else(damaged)).collect::<Result<Vec<_>>>()?);
        }
    }
    Ok(chains)
}

/// The last row of every key (the first `keys` columns, the window's end among them) of the
/// batches, in order: a window's groups from its chain of files, each later file holding the groups
/// changed since.
fn latest_by_key(batches: &[RecordBatch], keys: usize) -> Result<Option<RecordBatch>> {
    let Some(first) = batches.first() else { return Ok(None) };
    let all = arrow::compute::concat_batches(&first.schema(), batches)?;
    let fields = all.columns()[..keys].iter().map(|c| arrow::row::SortField::new(c.data_type().clone())).collect();
    let rows = arrow::row::RowConverter::new(fields)?.convert_columns(&all.columns()[..keys])?;
    let mut seen = std::collections::HashSet::new();
    let mut last: Vec<u32> = (0..all.num_rows()).rev().filter(|i| seen.insert(rows.row(*i).data())).map(|i| i as u32).collect();
    last.reverse();
    Ok(Some(arrow::compute::take_record_batch(&all, &UInt32Array::from(last))?))
}

/// Reads a checkpoint's partial groups into the shared state: they wait for their windows to
/// complete like groups handed over by a partition.
fn restore(
    spec: &AggSpec,
    window_end: usize,
    keyed: Option<&[usize]>,
    ck: &WindowCheckpoint,
    dir: &std::path::Path,
    chains: &[Vec<String>],
    st: &mut WindowState,
) -> Result<()> {
    let keys = spec.group.len();
    let mut place = |batch: &RecordBatch| -> Result<()> {
        let ends = arrow::compute::cast(batch.column(window_end), &DataType::Int64)?;
        let ends = ends.as_primitive::<Int64Type>();
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (row, end) in ends.iter().enumerate() {
            by_end.entry(end.unwrap_or(i64::MIN)).or_default().push(row as u32);
        }
        for (end, rows) in by_end {
            let part = arrow::compute::take_record_batch(batch, &UInt32Array::from(rows))?;
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
        Ok(())
    };
    // The windows handed over but not emitted (and, from checkpoints before the shared files, the
    // partitions' open windows).
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "arrow") {
                for batch in super::checkpoint::read_batches(&path)? {
                    place(&batch)?;
                }
            }
        }
    }
    for chain in chains {
        let mut batches = vec![];
        for file in chain {
            batches.extend(super::checkpoint::read_batches(&ck.files.path(file))?);
        }
        if chain.len() == 1 {
            // Whole groups (or a window's restored partials, written as they were): nothing replaced.
            for batch in &batches {
                place(batch)?;
            }
        } else if let Some(groups) = latest_by_key(&batches, keys)? {
            place(&groups)?;
        }
    }
    if let Some(doc) = super::checkpoint::read_json(&dir.join("state.json"))? {
        let watermark = doc.get("watermark").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
        st.watermarks.iter_mut().for_each(|w| *w = watermark);
        st.forwarded = doc.get("forwarded").and_then(|w| w.as_i64()).unwrap_or(i64::MIN);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::{AggCall, AggFunc, Expr};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    /// `GROUP BY window_end, k` with count(*), sum(v), min(k), avg(v) and count(DISTINCT v).
    fn input() -> arrow::datatypes::SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            Field::new("window_end", DataType::Int64, true),
        ]))
    }

    fn spec() -> AggSpec {
        let input = input();
        let call = |func, args: Vec<Expr>, distinct, ty| AggCall { func, args, distinct, ty };
        let aggs = vec![
            call(AggFunc::CountStar, vec![], false, DataType::Int64),
            call(AggFunc::Sum, vec![Expr::Column(1)], false, DataType::Int64),
            call(AggFunc::Min, vec![Expr::Column(0)], false, DataType::Utf8),
            call(AggFunc::Avg, vec![Expr::Column(1)], false, DataType::Float64),
            call(AggFunc::Count, vec![Expr::Column(1)], true, DataType::Int64),
        ];
        let output = Arc::new(Schema::new(vec![
            Field::new("window_end", DataType::Int64, true),
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
            Field::new("least", DataType::Utf8, true),
            Field::new("mean", DataType::Float64, true),
            Field::new("distinct", DataType::Int64, false),
        ]));
        AggSpec::new(vec![Expr::Column(2), Expr::Column(0)], aggs, input, output)
    }

    fn rows(rows: &[(&str, i64)]) -> RecordBatch {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Int64Array::from_value(10, rows.len())),
        ];
        RecordBatch::try_new(input(), columns).expect("batch")
    }

    /// A partial's groups as the aggregate's result rows, sorted.
    fn result(spec: &AggSpec, batch: &RecordBatch) -> Vec<String> {
        let widths: Vec<usize> = GroupTable::new(spec).and_then(|t| t.into_partial()).expect("table").states.iter().map(|s| s.len()).collect();
        let mut table = GroupTable::new(spec).expect("table");
        table.merge(Partial::from_batch(batch, 2, &widths)).expect("merge");
        let out = spec.result(table).expect("result");
        let mut lines: Vec<String> = (0..out.num_rows())
            .map(|r| out.columns().iter().map(|c| crate::format::format_value(c, r).expect("format").unwrap_or_default()).collect::<Vec<_>>().join(" "))
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn a_window_is_saved_by_the_groups_changed_and_read_back_whole() {
        let spec = spec();
        let mut table = GroupTable::new(&spec).expect("table");
        table.track_changes();
        let mut chain = Chain::default();
        let mut files = vec![];
        fn save(table: &mut GroupTable, chain: &mut Chain, name: &str, files: &mut Vec<(String, RecordBatch)>) -> Option<usize> {
            let (file, partial) = chain.next(table, name.to_string()).expect("snapshot")?;
            assert_eq!(file, name);
            let n = partial.num_groups();
            files.push((file, partial.into_batch().expect("batch").0));
            Some(n)
        }
        table.update(&spec, &rows(&[("a", 1), ("b", 2), ("c", 3), ("a", 4)])).expect("update");
        // The first time, the window's groups whole.
        assert_eq!(save(&mut table, &mut chain, "f1", &mut files), Some(3));
        // Then those changed only, and nothing when nothing changed.
        table.update(&spec, &rows(&[("b", 5), ("b", 2)])).expect("update");
        assert_eq!(save(&mut table, &mut chain, "f2", &mut files), Some(1));
        assert_eq!(save(&mut table, &mut chain, "f3", &mut files), None);
        assert_eq!(chain.names(), ["f1", "f2"]);
        // Each group's last state, from the chain, is the window's.
        let read = |names: &[String], files: &[(String, RecordBatch)]| -> Vec<String> {
            let batches: Vec<RecordBatch> = names.iter().filter_map(|n| files.iter().find(|(f, _)| f == n).map(|(_, b)| b.clone())).collect();
            result(&spec, &latest_by_key(&batches, 2).expect("latest").expect("groups"))
        };
        let now = |table: &mut GroupTable| -> Vec<String> {
            let whole = table.take_changes(true).expect("all").expect("groups");
            result(&spec, &whole.into_batch().expect("batch").0)
        };
        let expected = ["10 a 2 5 a 2.5 2", "10 b 3 9 b 3 2", "10 c 1 3 c 3 1"];
        assert_eq!(read(&chain.names(), &files), expected);
        assert_eq!(now(&mut table), expected);
        // A new group and two changed: four rows named (3 + 1) and three changed would hold more
        // than twice the four groups: the window is written whole again, alone in its chain.
        table.update(&spec, &rows(&[("d", 7), ("a", 1)])).expect("update");
        assert_eq!(save(&mut table, &mut chain, "f4", &mut files), Some(2));
        table.update(&spec, &rows(&[("a", 9), ("b", 9), ("c", 9)])).expect("update");
        assert_eq!(save(&mut table, &mut chain, "f5", &mut files), Some(4));
        assert_eq!(chain.names(), ["f5"]);
        let expected = ["10 a 4 15 a 3.75 3", "10 b 4 18 b 4.5 3", "10 c 2 12 c 6 2", "10 d 1 7 d 7 1"];
        assert_eq!(read(&chain.names(), &files), expected);
        // The states saved without draining the table are those it hands over at the end.
        let partial = table.into_partial().expect("partial");
        assert_eq!(result(&spec, &partial.into_batch().expect("batch").0), expected);
    }

    #[test]
    fn a_batch_of_one_key_and_a_partial_in_pieces_aggregate_as_row_by_row() {
        let spec = spec();
        let all = |table: GroupTable| -> Vec<String> { result(&spec, &table.into_partial().expect("partial").into_batch().expect("batch").0) };
        // Keys the same on every row are looked up once; the groups are those of rows one by one.
        let input = [("a", 1), ("a", 2), ("a", 2), ("b", 4), ("a", 5), ("c", 6), ("c", 6)];
        let mut whole = GroupTable::new(&spec).expect("table");
        whole.update(&spec, &rows(&input[..3])).expect("update");
        whole.update(&spec, &rows(&input[3..])).expect("update");
        let mut one_by_one = GroupTable::new(&spec).expect("table");
        for row in &input {
            one_by_one.update(&spec, &rows(&[*row])).expect("update");
        }
        let expected = ["10 a 4 10 a 2.5 3", "10 b 1 4 b 4 1", "10 c 2 12 c 6 1"];
        assert_eq!(all(whole), expected);
        // A sealed slide is merged in pieces (slices of its arrays) into its open windows.
        let pieces = one_by_one.into_partial().expect("partial").split(2);
        assert_eq!(pieces.iter().map(|p| p.num_groups()).collect::<Vec<_>>(), [2, 1]);
        let mut merged = GroupTable::new(&spec).expect("table");
        for p in pieces {
            merged.merge(p).expect("merge");
        }
        assert_eq!(all(merged), expected);
    }
}
