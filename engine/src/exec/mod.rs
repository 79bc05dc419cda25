//! Runs a physical plan as pipelines of push-based operators on a fixed pool of worker threads.
//!
//! A pipeline is a source, a chain of streaming operators and a sink, instantiated once per partition.
//! Pipeline breakers (aggregate, sort, hash-join build) are sinks whose shared state, once every
//! partition has ended, becomes the source of the next pipeline. Pipelines are connected by bounded
//! exchanges, so a slow consumer stops its producers (backpressure), and control messages (watermarks,
//! barriers, end) travel in order with the data.

mod accumulators;
mod aggregate;
mod basic;
mod build;
pub mod checkpoint;
mod exchange;
pub mod file_sink;
mod gather;
mod coded_keys;
mod group_keys;
mod group_spill;
mod join;
mod key_index;
mod key_partition;
mod keyed_spill;
mod materialize;
mod prune;
mod rank_filter;
mod retract;
mod runtime_filter;
mod scan;
mod scheduler;
mod session_aggregate;
mod sort;
mod stream_join;
mod tee;
mod update_aggregate;
mod window;
mod window_aggregate;
mod window_tvf;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arrow::array::RecordBatch;

pub use exchange::Exchange;
pub use scheduler::Notifier;

use crate::error::Result;
use crate::message::Message;
use crate::physical::PhysicalPlan;

/// How a query runs.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Worker threads (and partitions of parallel pipelines).
    pub threads: usize,
    /// Rows per batch read from sources and emitted by breakers.
    pub batch_size: usize,
    /// Feed bounded sources as unbounded streams that end: interleave watermarks and checkpoint
    /// barriers with the data. The answer must not change.
    pub stream: bool,
    /// Run as a stream, plan every input as if it had no end (what Flink's streaming mode does): a
    /// GROUP BY emits a changelog of its groups' rows as they change, not one final row per group at
    /// the end, and an inner join stores both sides' rows instead of building a table of one first.
    /// Over tables without end this is what happens anyway; over bounded input by default the planner
    /// uses the batch strategies, since it knows the input ends.
    pub changelog: bool,
    /// Run as a stream without checkpoints, sources still inject a barrier every other batch, so that
    /// tests see barriers aligned through every operator. Off for real jobs: a barrier nobody
    /// checkpoints only makes the operators that align it wait (it cost Nexmark q5 at 100 K events/s
    /// 2.4 s of latency, its join waiting for the slower side's barrier).
    pub test_barriers: bool,
    /// The query's memory budget in bytes; sorts spill to stay within it.
    pub memory_limit: usize,
    /// Where spill files go (the system temp dir if `None`).
    pub spill_dir: Option<std::path::PathBuf>,
    /// How spill files are compressed.
    pub spill_compression: SpillCompression,
    /// Counters a front end may poll to show progress.
    pub progress: Option<Arc<Progress>>,
    /// A streaming job's checkpoints (sources inject barriers on its clock, state is saved and
    /// restored through it).
    pub checkpoint: Option<Arc<checkpoint::Coordinator>>,
    /// How long a regular stream join keeps a stored row (Flink's `table.exec.state.ttl`, processing
    /// time since the row was stored); `None` keeps every row.
    pub state_ttl: Option<std::time::Duration>,
    /// How long a table without end may send no rows before its scan says it is idle, so that the
    /// operators combining it with other inputs stop waiting for its watermark (Flink's
    /// `table.exec.source.idle-timeout`; a table's `'scan.watermark.idle-timeout'` wins). `None`:
    /// never idle.
    pub source_idle_timeout: Option<std::time::Duration>,
    /// Testing, as DuckDB's `debug_force_external`: operators that can spill get no memory, so they
    /// spill at every batch, while those that cannot take what they need (`memory_limit` is then
    /// ignored). For plans holding state that cannot spill, which a budget of one byte would fail.
    pub force_spill: bool,
}

/// Rows read by the query's scans and rows that reached its root, so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub rows_read: AtomicU64,
    pub rows_out: AtomicU64,
}

/// Compression of spill files. lz4 by default: on sort runs of gensort records it cut the bytes
/// written to a third at a small CPU cost (measurements in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpillCompression {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl SpillCompression {
    pub fn parse(name: &str) -> Option<SpillCompression> {
        match name.to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Some(SpillCompression::None),
            "lz4" => Some(SpillCompression::Lz4),
            "zstd" => Some(SpillCompression::Zstd),
            _ => None,
        }
    }

    fn ipc(self) -> Option<arrow::ipc::CompressionType> {
        match self {
            SpillCompression::None => None,
            SpillCompression::Lz4 => Some(arrow::ipc::CompressionType::LZ4_FRAME),
            SpillCompression::Zstd => Some(arrow::ipc::CompressionType::ZSTD),
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            batch_size: 8192,
            stream: false,
            changelog: false,
            test_barriers: false,
            memory_limit: crate::memory::default_memory_limit(),
            spill_dir: None,
            spill_compression: SpillCompression::default(),
            progress: None,
            checkpoint: None,
            state_ttl: None,
            source_idle_timeout: None,
            force_spill: false,
        }
    }
}

/// What an operator did with one message.
pub trait Operator: Send {
    /// Processes one data batch, appending whatever it emits to `out`.
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()>;

    /// Control messages are forwarded in order by default; operators holding state override this to
    /// flush on `End` (and, later, to snapshot on barriers).
    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        out.push(msg);
        Ok(())
    }

    /// False while the operator cannot run yet (a probe waiting for its hash table).
    fn ready(&self) -> bool {
        true
    }

    /// True once no further input can change the output (a satisfied LIMIT): the pipeline stops early.
    fn finished(&self) -> bool {
        false
    }

    /// True while the operator holds output it has not emitted yet (a join whose build side spilled
    /// joins its buckets after its input ended): the pipeline calls `drain` before reading on.
    fn has_pending(&self) -> bool {
        false
    }

    /// Emits some of the pending output: one step, so that backpressure applies between steps.
    fn drain(&mut self, _out: &mut Vec<Message>) -> Result<()> {
        Ok(())
    }
}

/// The end of a pipeline, one instance per partition.
pub trait Sink: Send {
    fn push(&mut self, msg: Message) -> Result<()>;

    /// False when the consumer downstream has no room: the pipeline waits (backpressure).
    fn has_capacity(&self) -> bool {
        true
    }

    /// True when nobody needs more rows (every consumer downstream finished early).
    fn closed(&self) -> bool {
        false
    }
}

/// Where a pipeline's messages come from, one instance per partition.
pub trait Source: Send {
    /// The next message, or `None` if none is available yet (the task yields and is woken later).
    fn next(&mut self) -> Result<Option<Message>>;
}

/// Per-operator counters for EXPLAIN ANALYZE.
#[derive(Debug, Default)]
pub struct OpMetrics {
    pub rows: AtomicU64,
    pub batches: AtomicU64,
    pub nanos: AtomicU64,
    pub peak_bytes: AtomicU64,
    /// Parquet row groups of a scan, and how many its filter's statistics ruled out.
    pub row_groups: AtomicU64,
    pub row_groups_pruned: AtomicU64,
    /// Rows inside kept row groups that were never read: their pages' statistics ruled them out.
    pub rows_skipped_by_pages: AtomicU64,
    /// Bytes and files the operator wrote to spill files.
    pub spilled_bytes: AtomicU64,
    pub spill_files: AtomicU64,
    /// Hash buckets a spilling join kept in memory (hybrid hash join), of `BUCKETS`.
    pub buckets_in_memory: AtomicU64,
    /// Rows that came after the watermark had passed their window's end, and were dropped.
    pub late_rows: AtomicU64,
    /// Rows a scan dropped by joins' runtime filters.
    pub rows_runtime_filtered: AtomicU64,
    /// Rows a hash aggregate passed to its merge unaggregated (its partitions' tables kept nearly a
    /// group per row).
    pub rows_passed: AtomicU64,
}

impl OpMetrics {
    fn record(&self, out: &[Message], started: Instant) {
        for m in out {
            if let Message::Batch(b) = m {
                self.rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                self.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The operator wrote `file` (its bytes count once it is complete).
    pub fn note_spill(&self, file: &crate::memory::SpillFile) {
        self.spilled_bytes.fetch_add(file.bytes(), Ordering::Relaxed);
        self.spill_files.fetch_add(1, Ordering::Relaxed);
    }

    pub fn note_bytes(&self, bytes: usize) {
        self.peak_bytes.fetch_max(bytes as u64, Ordering::Relaxed);
    }

    pub fn summary(&self) -> String {
        let peak = self.peak_bytes.load(Ordering::Relaxed);
        let mut s = format!(
            "  [rows={} batches={} time={:.3}ms",
            self.rows.load(Ordering::Relaxed),
            self.batches.load(Ordering::Relaxed),
            self.nanos.load(Ordering::Relaxed) as f64 / 1e6
        );
        if peak > 0 {
            s.push_str(&format!(" peak_mem={}", human_bytes(peak)));
        }
        let spilled = self.spilled_bytes.load(Ordering::Relaxed);
        if spilled > 0 {
            s.push_str(&format!(" spilled={} in {} files", human_bytes(spilled), self.spill_files.load(Ordering::Relaxed)));
        }
        let kept = self.buckets_in_memory.load(Ordering::Relaxed);
        if kept > 0 {
            s.push_str(&format!(" buckets_in_memory={kept}/{}", aggregate::BUCKETS));
        }
        let late = self.late_rows.load(Ordering::Relaxed);
        if late > 0 {
            s.push_str(&format!(" late_rows={late}"));
        }
        let groups = self.row_groups.load(Ordering::Relaxed);
        if groups > 0 {
            let pruned = self.row_groups_pruned.load(Ordering::Relaxed);
            s.push_str(&format!(" row_groups={}/{groups} (pruned {pruned})", groups - pruned));
            let skipped = self.rows_skipped_by_pages.load(Ordering::Relaxed);
            if skipped > 0 {
                s.push_str(&format!(" page_index_skipped_rows={skipped}"));
            }
        }
        let filtered = self.rows_runtime_filtered.load(Ordering::Relaxed);
        if filtered > 0 {
            s.push_str(&format!(" runtime_filtered_rows={filtered}"));
        }
        let passed = self.rows_passed.load(Ordering::Relaxed);
        if passed > 0 {
            s.push_str(&format!(" passed_rows={passed}"));
        }
        s.push(']');
        s
    }
}

pub fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// The meeting point of a breaker's partitions: each hands over its local result when it ends; the
/// last one gets them all, to merge and emit.
pub struct PartitionGather<T> {
    state: Mutex<(usize, Vec<T>)>,
}

impl<T> PartitionGather<T> {
    pub fn new(partitions: usize) -> Self {
        PartitionGather { state: Mutex::new((partitions, Vec::new())) }
    }

    /// Adds one partition's items; returns every partition's items if this was the last one.
    pub fn arrive(&self, items: impl IntoIterator<Item = T>) -> Result<Option<Vec<T>>> {
        let mut st = self.state.lock().map_err(|_| crate::RiffleError::exec("partition state lock poisoned"))?;
        st.1.extend(items);
        st.0 -= 1;
        Ok((st.0 == 0).then(|| std::mem::take(&mut st.1)))
    }
}

/// Forwards checkpoint barriers through a pipeline breaker: epoch `e` goes into the breaker's output
/// once every input partition has delivered it (or ended), so a checkpoint still reaches the operators
/// after the breaker, in epoch order. Watermarks are not forwarded: a batch breaker emits its rows at
/// the end of its input, so event time downstream cannot advance before them.
pub struct BarrierRelay {
    state: Mutex<RelayState>,
}

struct RelayState {
    /// Per input partition, the last epoch it delivered; `u64::MAX` once it ended.
    delivered: Vec<u64>,
    /// Epochs seen but not yet forwarded.
    pending: std::collections::BTreeSet<u64>,
}

impl BarrierRelay {
    pub fn new(partitions: usize) -> BarrierRelay {
        BarrierRelay { state: Mutex::new(RelayState { delivered: vec![0; partitions], pending: Default::default() }) }
    }

    /// Partition `p` delivered barrier `epoch`.
    pub fn barrier(&self, p: usize, epoch: u64, output: &Exchange) -> Result<()> {
        self.advance(p, epoch, Some(epoch), output)
    }

    /// Partition `p` ended: it holds back no epoch any more.
    pub fn end(&self, p: usize, output: &Exchange) -> Result<()> {
        self.advance(p, u64::MAX, None, output)
    }

    fn advance(&self, p: usize, to: u64, seen: Option<u64>, output: &Exchange) -> Result<()> {
        let mut st = self.state.lock().map_err(|_| crate::RiffleError::exec("barrier relay lock poisoned"))?;
        let slot = st.delivered.get_mut(p).ok_or_else(|| crate::RiffleError::exec("barrier from an unknown partition"))?;
        *slot = (*slot).max(to);
        st.pending.extend(seen);
        let complete = st.delivered.iter().copied().min().unwrap_or(u64::MAX);
        // Pushed under the lock, so two partitions completing epochs at once keep their order.
        while let Some(e) = st.pending.first().copied().filter(|e| *e <= complete) {
            st.pending.remove(&e);
            output.push(0, Message::Barrier(e));
        }
        Ok(())
    }
}

/// Emits a breaker's result into `output` in slices of `batch_size` rows, then the end.
fn emit_result(output: &Exchange, batch: &RecordBatch, batch_size: usize, metrics: &OpMetrics) {
    emit_rows(output, 0, batch, batch_size, metrics);
    output.push(0, Message::End);
}

/// Emits rows of a breaker's result into `output` in slices of `batch_size` rows.
fn emit_rows(output: &Exchange, producer: usize, batch: &RecordBatch, batch_size: usize, metrics: &OpMetrics) {
    emit_slices(batch, batch_size, metrics, |slice| output.push(producer, Message::Batch(slice)));
}

/// Hands `batch` to `emit` in slices of `batch_size` rows, counted in `metrics`.
fn emit_slices(batch: &RecordBatch, batch_size: usize, metrics: &OpMetrics, mut emit: impl FnMut(RecordBatch)) {
    let rows = batch.num_rows();
    metrics.rows.fetch_add(rows as u64, Ordering::Relaxed);
    let mut offset = 0;
    while offset < rows {
        let len = batch_size.min(rows - offset);
        emit(batch.slice(offset, len));
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        offset += len;
    }
}

/// An operator wrapped with its metrics.
struct Metered {
    op: Box<dyn Operator>,
    metrics: Arc<OpMetrics>,
}

/// One partition of one pipeline: the unit the scheduler runs.
pub struct PipelineTask {
    source: Box<dyn Source>,
    ops: Vec<Metered>,
    sink: Box<dyn Sink>,
    /// The source is no longer read: an operator finished early.
    ending: bool,
    done: bool,
}

/// What a task's step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Progress,
    Blocked,
    Done,
}

impl PipelineTask {
    /// Moves one message from the source through the operators into the sink.
    pub fn step(&mut self) -> Result<Step> {
        if self.done {
            return Ok(Step::Done);
        }
        if !self.ending && (self.sink.closed() || self.ops.iter().any(|m| m.op.finished())) {
            // Nothing downstream needs more: end the pipeline without reading the rest (an operator
            // after a satisfied LIMIT may still hold output to drain).
            self.ending = true;
            if self.push_through(Message::End)? || !self.ops.iter().any(|m| m.op.has_pending()) {
                self.done = true;
                return Ok(Step::Done);
            }
            return Ok(Step::Progress);
        }
        if !self.sink.has_capacity() || self.ops.iter().any(|m| !m.op.ready()) {
            return Ok(Step::Blocked);
        }
        if self.ending && !self.ops.iter().any(|m| m.op.has_pending()) {
            self.done = true;
            return Ok(Step::Done);
        }
        // Output an operator still holds goes first; the end of input it held comes out last.
        let reached_end = if let Some(i) = self.ops.iter().position(|m| m.op.has_pending()) {
            let mut out = Vec::new();
            let started = Instant::now();
            self.ops[i].op.drain(&mut out)?;
            self.ops[i].metrics.record(&out, started);
            self.push_from(i + 1, out)?
        } else {
            let Some(msg) = self.source.next()? else { return Ok(Step::Blocked) };
            let end = matches!(msg, Message::End);
            let reached = self.push_through(msg)?;
            // Unless an operator now holds output (and the end with it), the source's end is the task's.
            reached || (end && !self.ops.iter().any(|m| m.op.has_pending()))
        };
        if reached_end {
            self.done = true;
            return Ok(Step::Done);
        }
        Ok(Step::Progress)
    }

    /// Pushes `msg` through every operator into the sink; true if the end of input reached the sink.
    fn push_through(&mut self, msg: Message) -> Result<bool> {
        self.push_from(0, vec![msg])
    }

    fn push_from(&mut self, first: usize, msgs: Vec<Message>) -> Result<bool> {
        let mut current = msgs;
        for m in &mut self.ops[first..] {
            let mut next = Vec::with_capacity(current.len());
            let started = Instant::now();
            for msg in current {
                match msg {
                    Message::Batch(b) => {
                        if b.num_rows() > 0 {
                            m.op.on_batch(b, &mut next)?
                        }
                    }
                    control => m.op.on_control(control, &mut next)?,
                }
            }
            m.metrics.record(&next, started);
            current = next;
        }
        let mut end = false;
        for msg in current {
            end |= matches!(msg, Message::End);
            self.sink.push(msg)?;
        }
        Ok(end)
    }
}

/// What a query used, beside its rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryStats {
    /// The most memory reserved at once, in bytes.
    pub peak_memory: usize,
    /// Compressed bytes written to spill files, and how many files.
    pub spilled_bytes: u64,
    pub spill_files: u64,
    /// From the start of execution to the first row reaching the root (for a sort: when its input
    /// was read and its runs formed, and the merge began).
    pub first_row_after: Option<std::time::Duration>,
}

/// The result of running a plan.
pub struct QueryOutput {
    pub batches: Vec<RecordBatch>,
    /// Metrics per physical node, in pre-order.
    pub metrics: Vec<Arc<OpMetrics>>,
    pub stats: QueryStats,
}

/// Runs `plan`, handing every message that reaches the root (data and control, in order) to `each`
/// with the number of the root partition it came through.
pub fn execute_into(
    plan: &PhysicalPlan,
    config: &ExecConfig,
    each: Arc<dyn Fn(usize, Message) -> Result<()> + Send + Sync>,
) -> Result<QueryStats> {
    struct FnSink(usize, Arc<dyn Fn(usize, Message) -> Result<()> + Send + Sync>);
    impl Sink for FnSink {
        fn push(&mut self, msg: Message) -> Result<()> {
            (self.1)(self.0, msg)
        }
    }
    run_into(plan, config, &move |p| Ok(Box::new(FnSink(p, each.clone())) as Box<dyn Sink>)).map(|(_, stats)| stats)
}

/// Runs `plan` into the sinks `root(p)` makes for each root partition `p`.
pub fn execute_with_sinks(plan: &PhysicalPlan, config: &ExecConfig, root: &dyn Fn(usize) -> Result<Box<dyn Sink>>) -> Result<QueryStats> {
    run_into(plan, config, root).map(|(_, stats)| stats)
}

/// Builds the pipelines of `plan` with `root` as the sink of the last one and runs them; returns the
/// metrics of every node. The query's spill files are gone when this returns, whatever the outcome.
fn run_into(
    plan: &PhysicalPlan,
    config: &ExecConfig,
    root: &dyn Fn(usize) -> Result<Box<dyn Sink>>,
) -> Result<(Vec<Arc<OpMetrics>>, QueryStats)> {
    plan.check_runnable(config.stream)?;
    let threads = config.threads.max(1);
    let notifier = Notifier::new();
    let metrics: Vec<Arc<OpMetrics>> = (0..plan.node_count()).map(|_| Arc::new(OpMetrics::default())).collect();
    let memory = build::QueryMemory {
        pool: if config.force_spill {
            crate::memory::MemoryPool::forcing_spill()
        } else {
            crate::memory::MemoryPool::for_query(config.memory_limit.max(1))
        },
        spill: Arc::new(crate::memory::SpillManager::new(config.spill_dir.clone(), config.spill_compression.ipc())),
    };
    let started = Instant::now();
    let first_row = Arc::new(std::sync::OnceLock::new());
    let timed_root = |p: usize| -> Result<Box<dyn Sink>> {
        Ok(Box::new(FirstRowSink { inner: root(p)?, started, first_row: first_row.clone(), progress: config.progress.clone() }))
    };
    let tasks = build::build_tasks(plan, config, threads, &notifier, &metrics, &memory, &timed_root)?;
    scheduler::run(tasks, threads, &notifier)?;
    let stats = QueryStats {
        peak_memory: memory.pool.peak(),
        spilled_bytes: memory.spill.bytes_spilled(),
        spill_files: memory.spill.files_spilled(),
        first_row_after: first_row.get().copied(),
    };
    Ok((metrics, stats))
}

/// Notes when the first row reaches the root, and counts the rows that do.
struct FirstRowSink {
    inner: Box<dyn Sink>,
    started: Instant,
    first_row: Arc<std::sync::OnceLock<std::time::Duration>>,
    progress: Option<Arc<Progress>>,
}

impl Sink for FirstRowSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        if let Message::Batch(b) = &msg {
            if b.num_rows() > 0 && self.first_row.get().is_none() {
                let _ = self.first_row.set(self.started.elapsed());
            }
            if let Some(p) = &self.progress {
                p.rows_out.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
            }
        }
        self.inner.push(msg)
    }

    fn has_capacity(&self) -> bool {
        self.inner.has_capacity()
    }

    fn closed(&self) -> bool {
        self.inner.closed()
    }
}

/// Runs `plan` to completion and returns its rows.
pub fn execute(plan: &PhysicalPlan, config: &ExecConfig) -> Result<QueryOutput> {
    plan.check_runnable(config.stream)?;
    plan.check_ends()?;
    let results = Arc::new(Mutex::new(Vec::new()));
    let sink_results = results.clone();
    let (metrics, stats) =
        run_into(plan, config, &move |_| Ok(Box::new(scan::CollectSink::new(sink_results.clone())) as Box<dyn Sink>))?;
    let batches = std::mem::take(&mut *results.lock().map_err(|_| crate::RiffleError::exec("result lock poisoned"))?);
    Ok(QueryOutput { batches, metrics, stats })
}

/// Whether every value of `a` equals its first (NULLs equal each other). Keys that are the same on
/// every row of a batch (a window's results keyed by its bounds) are then encoded and looked up once.
pub(crate) fn constant(a: &arrow::array::ArrayRef) -> bool {
    use arrow::array::{Array, AsArray};
    // A dictionary whose keys are all one is constant. Comparing it would compare its values, all of
    // them: a join's whole build-side column for a batch of a few rows.
    if let Some(dict) = a.as_dictionary_opt::<arrow::datatypes::Int32Type>() {
        let keys: arrow::array::ArrayRef = std::sync::Arc::new(dict.keys().clone());
        return constant(&keys);
    }
    let Ok(cmp) = arrow::array::make_comparator(a.as_ref(), a.as_ref(), arrow::compute::SortOptions::default()) else { return false };
    let n = a.len();
    // Most keys that vary do so at once: two comparisons tell.
    if n < 2 || !cmp(0, 1).is_eq() || !cmp(0, n - 1).is_eq() {
        return n < 2;
    }
    // The rest at once by the comparison kernel (a comparator call per row costs ten times as much).
    if a.null_count() == 0 {
        if let Ok(eq) = arrow::compute::kernels::cmp::eq(a, &arrow::array::Scalar::new(a.slice(0, 1))) {
            return eq.true_count() == n;
        }
    }
    (1..n).all(|i| cmp(0, i).is_eq())
}

/// Whether two row-encoded keys are equal. Short keys (most are one or two numbers) are compared
/// byte by byte in line: a call to `memcmp` per hash-table probe costs more than the comparison.
#[inline]
pub(crate) fn same_key(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 24 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    a == b
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array, StringArray};

    #[test]
    fn an_array_is_constant_when_every_value_equals_the_first_nulls_included() {
        let cases: Vec<(ArrayRef, bool)> = vec![
            (Arc::new(Int64Array::from(vec![7; 100])), true),
            (Arc::new(Int64Array::from((0..100).map(|i| if i == 50 { 8 } else { 7 }).collect::<Vec<_>>())), false),
            (Arc::new(Int64Array::from(vec![None, None, None])), true),
            (Arc::new(Int64Array::from(vec![Some(1), None, Some(1)])), false),
            (Arc::new(StringArray::from(vec!["a", "a", "b", "a"])), false),
            (Arc::new(StringArray::from(vec!["a"; 9])), true),
            (Arc::new(Int64Array::from(vec![3])), true),
            (Arc::new(Int64Array::from(Vec::<i64>::new())), true),
        ];
        for (array, want) in cases {
            assert_eq!(super::constant(&array), want, "{array:?}");
        }
    }
}
