//! Sources (table scans, literal rows, exchanges) and the simple sinks (exchange, result collector).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use riffle_formats::{BatchReader, FileFormat, Morsel};

use std::sync::atomic::Ordering;

use super::checkpoint::{EpochTracker, RangeSet};
use super::runtime_filter::ScanFilter;
use super::{Exchange, OpMetrics, Sink, Source};
use crate::logical::Expr;
use crate::catalog::{TableData, TableSource};
use crate::error::{Result, RiffleError};
use crate::message::Message;

/// Scan work shared by the partitions of a scan pipeline: each takes the next morsel when it needs one.
pub struct ScanShared {
    source: Arc<TableSource>,
    projection: Vec<usize>,
    dictionary: Vec<bool>,
    schema: SchemaRef,
    /// Work still to hand out, each with its number (its place in the whole table's work).
    morsels: Mutex<VecDeque<(u64, Work)>>,
    batch_size: usize,
    /// The table's watermark expression over the scanned columns, when it has one and they are read.
    watermark: Option<Expr>,
    /// A generated event table hands out event ranges as they are asked for.
    events: Mutex<Option<EventCursor>>,
    /// A rate-limited generator's clock.
    pace: Option<Pace>,
    /// A file table replayed in event time, when its event-time column is read.
    replay: Option<Arc<Replay>>,
    /// A directory read without end.
    monitor: Option<Monitor>,
    /// The highest watermark any partition emitted: a partition waiting for new files, or for a
    /// rate-limited generator's next event range to fall due, emits it, so that it does not hold
    /// event time back (the others' watermarks still bound their own rows; its next rows come from
    /// later work: files found later, or events later in time).
    high_watermark: std::sync::atomic::AtomicI64,
    checkpoint: Option<ScanCheckpoint>,
    /// A table without end that sent no rows for this long is idle (see `idle_now`).
    idle_timeout: Option<std::time::Duration>,
    /// When the scan started, and nanoseconds after it that any partition last read rows.
    started: std::time::Instant,
    last_rows: std::sync::atomic::AtomicU64,
    /// Join keys' values that rows must have, once the joins' build sides are complete.
    runtime: Vec<ScanFilter>,
    notifier: super::Notifier,
    metrics: Option<Arc<OpMetrics>>,
}

/// A directory (or glob) read without end (Flink's `'source.monitor-interval'`): listed again every
/// interval once the work found so far is handed out. A file's morsels are work numbered
/// `file << MORSEL_BITS | morsel`, files numbered in the order they were found; checkpoints name the
/// files, so a restarted job (which may find them in another order) skips what they cover.
struct Monitor {
    pattern: String,
    format: FileFormat,
    interval: std::time::Duration,
    notifier: super::Notifier,
    found: Mutex<Found>,
}

struct Found {
    known: std::collections::HashSet<std::path::PathBuf>,
    count: u64,
    next_list: std::time::Instant,
    /// Per file, the morsels the checkpoint the job restarted from covers.
    restored: std::collections::HashMap<String, RangeSet>,
}

const MORSEL_BITS: u32 = 24;

/// Below this share of rows passing its runtime filters so far, a scan reads Parquet row groups late
/// (`ScanShared::reads_late`).
const LATE_PASS_RATE: f64 = 0.1;

/// Hands generated events out on the wall clock: a range once its last event's time (`n / rate`
/// seconds after the first event was asked for) has come.
struct Pace {
    rate: f64,
    start: std::sync::OnceLock<std::time::Instant>,
    notifier: super::Notifier,
}

/// The clock of a file table replayed in event time (`TableSource::replayed`): the event-time
/// column's place in the scanned batches, when the clock started and the event time it started
/// from (the earliest time of the first batches read).
struct Replay {
    column: usize,
    clock: Mutex<Option<(std::time::Instant, i64)>>,
    notifier: super::Notifier,
}

impl Replay {
    /// The earliest and latest event time of a batch's rows, in microseconds.
    fn times(&self, batch: &RecordBatch) -> Result<Option<(i64, i64)>> {
        let column = batch.column(self.column);
        let micros = match column.data_type() {
            arrow::datatypes::DataType::Timestamp(_, tz) => {
                arrow::compute::cast(column, &arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, tz.clone()))?
            }
            _ => column.clone(),
        };
        let micros = arrow::compute::cast(&micros, &arrow::datatypes::DataType::Int64)?;
        let micros = micros.as_primitive::<arrow::datatypes::Int64Type>();
        Ok(arrow::compute::min(micros).zip(arrow::compute::max(micros)))
    }

    /// When a batch whose rows' times span `times` is due: the clock's start plus how far its latest
    /// row's time is past the clock's start time (rows earlier than that move the start time back:
    /// later rows wait longer). None: now (no row has a time).
    fn due(&self, times: Option<(i64, i64)>) -> Result<Option<std::time::Instant>> {
        let Some((first, last)) = times else { return Ok(None) };
        let mut clock = self.clock.lock().map_err(|_| RiffleError::exec("replay clock lock poisoned"))?;
        let (start, from) = clock.get_or_insert_with(|| (std::time::Instant::now(), first));
        *from = (*from).min(first);
        Ok(Some(*start + std::time::Duration::from_micros(last.saturating_sub(*from).max(0) as u64)))
    }
}

/// A batch of a replayed table read before its time (`ScanSource::next_replayed`), with what its
/// waits ask of it again and again: its rows' earliest and latest event time, and its watermark.
struct Held {
    batch: RecordBatch,
    times: Option<(i64, i64)>,
    watermark: Option<i64>,
}

/// A checkpointed scan's positions: which work each partition took (all of it completed whenever the
/// partition is between two pieces of work, where it injects barriers).
struct ScanCheckpoint {
    coordinator: Arc<super::checkpoint::Coordinator>,
    component: usize,
    file: String,
    state: Mutex<ScanPositions>,
}

struct ScanPositions {
    taken: Vec<RangeSet>,
    /// Per epoch not done yet: the work of the partitions that passed it.
    at: std::collections::BTreeMap<u64, RangeSet>,
    /// The work of partitions that ended, and of the checkpoint the job restarted from.
    settled: RangeSet,
    tracker: EpochTracker,
    /// A monitored directory's files, by number (checkpoints name them).
    files: Vec<String>,
}

enum Work {
    File(Morsel),
    Batch(RecordBatch),
    /// Records `start..start + n` of a generated table.
    Generate(u64, usize),
    /// Nexmark events `start..start + n`.
    Events(u64, u64),
}

/// The next Nexmark events to hand out, up to `end` (none: without end).
struct EventCursor {
    next: u64,
    end: Option<u64>,
    chunk: u64,
}

impl ScanShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source: Arc<TableSource>,
        projection: Vec<usize>,
        dictionary: Vec<bool>,
        schema: SchemaRef,
        batch_size: usize,
        filter: Option<&Expr>,
        metrics: &OpMetrics,
        checkpoint: Option<(Arc<super::checkpoint::Coordinator>, usize, usize)>,
        notifier: &super::Notifier,
        idle_timeout: Option<std::time::Duration>,
    ) -> Result<ScanShared> {
        let work: VecDeque<Work> = match &source.data {
            TableData::Files { morsels, format: FileFormat::Parquet, monitor: None, .. } => {
                let total = morsels.len();
                let pruned = match filter {
                    Some(f) => super::prune::prune(morsels.clone(), f, &source.schema, &projection)?,
                    None => super::prune::Pruned { morsels: morsels.clone(), row_groups_pruned: 0, rows_skipped: 0 },
                };
                metrics.row_groups.fetch_add(total as u64, Ordering::Relaxed);
                metrics.row_groups_pruned.fetch_add(pruned.row_groups_pruned as u64, Ordering::Relaxed);
                metrics.rows_skipped_by_pages.fetch_add(pruned.rows_skipped as u64, Ordering::Relaxed);
                pruned.morsels.into_iter().map(Work::File).collect()
            }
            // A monitored directory's files are found below, numbered its own way.
            TableData::Files { monitor: Some(_), .. } => VecDeque::new(),
            TableData::Files { morsels, .. } => morsels.iter().cloned().map(Work::File).collect(),
            TableData::Generated { records, .. } => {
                let mut v = VecDeque::new();
                let mut start = 0;
                while start < *records {
                    let n = (*records - start).min(batch_size as u64);
                    v.push_back(Work::Generate(start, n as usize));
                    start += n;
                }
                v
            }
            TableData::Nexmark { .. } | TableData::Blackhole => VecDeque::new(),
            TableData::Memory(batches) => {
                let mut v = VecDeque::new();
                for b in batches {
                    let b = b.project(&projection)?;
                    let mut offset = 0;
                    while offset < b.num_rows() {
                        let len = batch_size.min(b.num_rows() - offset);
                        v.push_back(Work::Batch(b.slice(offset, len)));
                        offset += len;
                    }
                }
                v
            }
        };
        let watermark = source.event_time.as_ref().and_then(|et| {
            let columns = et.watermark.column_set();
            let position = |c: usize| projection.iter().position(|p| *p == c);
            columns.iter().all(|c| position(*c).is_some()).then(|| et.watermark.clone().remap(&|c| position(c).unwrap_or(usize::MAX)))
        });
        let events = match &source.data {
            TableData::Nexmark { config, table, events, paced, .. } => {
                let mut chunk = config.events_for_rows(*table, batch_size);
                if *paced {
                    // A range waits for its last event's time: ranges of 5 ms keep that wait short.
                    chunk = chunk.min((config.events_per_second / 200).max(16));
                }
                Some(EventCursor { next: 0, end: *events, chunk })
            }
            _ => None,
        };
        let pace = match &source.data {
            TableData::Nexmark { config, paced: true, .. } => {
                Some(Pace { rate: config.events_per_second as f64, start: Default::default(), notifier: notifier.clone() })
            }
            _ => None,
        };
        let replay = match (&source.data, &source.event_time) {
            (TableData::Files { replay: true, .. }, Some(et)) => projection
                .iter()
                .position(|c| *c == et.column)
                .map(|column| Arc::new(Replay { column, clock: Mutex::new(None), notifier: notifier.clone() })),
            _ => None,
        };
        let chunk = events.as_ref().map_or(0, |c| c.chunk);
        // A file table's work is numbered `file << MORSEL_BITS | morsel` (a Parquet morsel by its row
        // group, others by their place in the file), and checkpoints name the files: a job restarted
        // after files were added (or removed) still skips exactly what it read.
        let mut file_names: Vec<String> = vec![];
        let mut numbered: VecDeque<(u64, Work)> = match &source.data {
            TableData::Files { .. } => {
                let mut number_of: std::collections::HashMap<std::path::PathBuf, (u64, u64)> = Default::default();
                work.into_iter()
                    .map(|w| {
                        let n = match &w {
                            Work::File(m) => {
                                let (file, next) = number_of.entry(m.file.clone()).or_insert_with(|| {
                                    file_names.push(m.file.to_string_lossy().into_owned());
                                    ((file_names.len() - 1) as u64, 0)
                                });
                                let i = m.row_groups.as_ref().and_then(|r| r.first()).map_or(*next, |rg| *rg as u64);
                                *next += 1;
                                (*file << MORSEL_BITS) | i
                            }
                            _ => 0,
                        };
                        (n, w)
                    })
                    .collect()
            }
            _ => work.into_iter().enumerate().map(|(i, w)| (i as u64, w)).collect(),
        };
        let mut restored_files: std::collections::HashMap<String, RangeSet> = std::collections::HashMap::new();
        let checkpoint = match checkpoint {
            None => None,
            Some((coordinator, node, partitions)) => {
                let file = format!("scan-{node}.json");
                let mut settled = RangeSet::default();
                if let Some(dir) = coordinator.restore_dir() {
                    let saved = super::checkpoint::read_json(&dir.join(&file))?
                        .ok_or_else(|| RiffleError::exec(format!("checkpoint {} has no {file}: it was taken by another query", dir.display())))?;
                    if saved.get("chunk").and_then(|c| c.as_u64()) != Some(chunk) {
                        return Err(RiffleError::plan("the checkpoint was taken with another batch size: run the job as it was started"));
                    }
                    settled = saved.get("work").and_then(RangeSet::from_json).unwrap_or_default();
                    if let Some(names) = saved.get("files").and_then(|f| f.as_array()) {
                        // Files are numbered anew (found in another order, or others beside them).
                        for n in std::mem::take(&mut settled).iter() {
                            if let Some(name) = names.get((n >> MORSEL_BITS) as usize).and_then(|v| v.as_str()) {
                                restored_files.entry(name.to_string()).or_default().insert(n & ((1 << MORSEL_BITS) - 1));
                            }
                        }
                        let done = |n: u64| {
                            let name = file_names.get((n >> MORSEL_BITS) as usize);
                            name.and_then(|f| restored_files.get(f)).is_some_and(|r| r.contains(n & ((1 << MORSEL_BITS) - 1)))
                        };
                        for (n, _) in &numbered {
                            if done(*n) {
                                settled.insert(*n);
                            }
                        }
                    }
                    // Work the checkpoint covers is not read again.
                    numbered.retain(|(n, _)| !settled.contains(*n));
                }
                let component = coordinator.register()?;
                let tracker = EpochTracker::new(partitions, coordinator.restored);
                let files = std::mem::take(&mut file_names);
                let state = ScanPositions { taken: vec![RangeSet::default(); partitions], at: Default::default(), settled, tracker, files };
                Some(ScanCheckpoint { coordinator, component, file, state: Mutex::new(state) })
            }
        };
        let monitor = match &source.data {
            TableData::Files { monitor: Some(interval), pattern, format, .. } => Some(Monitor {
                pattern: pattern.clone(),
                format: format.clone(),
                interval: *interval,
                notifier: notifier.clone(),
                found: Mutex::new(Found {
                    known: Default::default(),
                    count: 0,
                    next_list: std::time::Instant::now(),
                    restored: restored_files,
                }),
            }),
            _ => None,
        };
        let shared = ScanShared {
            source,
            projection,
            dictionary,
            schema,
            morsels: Mutex::new(numbered),
            batch_size,
            watermark,
            events: Mutex::new(events),
            pace,
            replay,
            monitor,
            high_watermark: std::sync::atomic::AtomicI64::new(i64::MIN),
            checkpoint,
            idle_timeout,
            started: std::time::Instant::now(),
            last_rows: std::sync::atomic::AtomicU64::new(0),
            runtime: Vec::new(),
            notifier: notifier.clone(),
            metrics: None,
        };
        // The files there are now are found before anything is read (or checkpointed).
        shared.discover()?;
        Ok(shared)
    }

    /// Filters the rows by joins' runtime filters on its columns (see `runtime_filter`). The scan
    /// reads nothing before they are set, unless every task of the query waits.
    pub fn with_runtime_filters(mut self, filters: Vec<ScanFilter>, metrics: Arc<OpMetrics>) -> ScanShared {
        self.runtime = filters;
        self.metrics = Some(metrics);
        self
    }

    /// Whether a join's build side this scan's runtime filters come from is not complete yet. A scan
    /// below a GROUP BY or in a shared subplan runs in a pipeline of its own, which the join does not
    /// hold back as it holds its probe. Should the join wait for this scan after all (through
    /// another filter's scan, say), the scheduler finds every task waiting and gives the waits up.
    fn awaiting_filters(&self) -> bool {
        !self.runtime.iter().all(|f| f.is_set()) && !self.notifier.waits_given_up()
    }

    /// Drops the work not handed out yet that runtime filters set since the last call rule out: all
    /// of it when a build side had no key, else the Parquet row groups and pages whose statistics
    /// lie outside the build sides' key ranges, or hold none of their keys between their min and
    /// max (a few ticket numbers spread over a table clustered by them: TPC-DS q25 reads 145 of
    /// store sales' 235 row groups by the range, 8 by the keys). All new filters at once: each
    /// file's footer is read once.
    fn prune_by_runtime_filters(&self) -> Result<()> {
        let (mut ranges, mut sets, mut nothing) = (Vec::new(), Vec::new(), false);
        for f in &self.runtime {
            let Some(bounds) = f.bounds(self.schema.field(f.column).data_type())? else { continue };
            if f.pruned.swap(true, Ordering::AcqRel) {
                continue;
            }
            match bounds {
                Some(range) => {
                    ranges.push(range);
                    if f.sparse() {
                        sets.push(f);
                    }
                }
                None => nothing = true,
            }
        }
        if ranges.is_empty() && !nothing {
            return Ok(());
        }
        let mut queue = self.morsels.lock().unwrap_or_else(|p| p.into_inner());
        let (pruned, skipped) = if nothing {
            let all = queue.len();
            queue.clear();
            (all, 0)
        } else {
            let parquet = matches!(&self.source.data, TableData::Files { format: FileFormat::Parquet, .. });
            let Some(bounds) = Expr::conjunction(ranges).filter(|_| parquet) else { return Ok(()) };
            let (mut numbers, mut morsels, mut others) = (Vec::new(), Vec::new(), Vec::new());
            for (n, w) in queue.drain(..) {
                match w {
                    Work::File(m) => {
                        numbers.push(n);
                        morsels.push(m);
                    }
                    w => others.push((n, w)),
                }
            }
            let meets: Vec<Box<dyn Fn(i64, i64) -> bool + Sync>> = sets.iter().map(|f| Box::new(move |lo, hi| f.meets(lo, hi)) as _).collect();
            let keys: Vec<(usize, super::prune::KeysMeet)> = sets.iter().zip(&meets).map(|(f, m)| (f.column, m.as_ref())).collect();
            let (kept, counts) = super::prune::prune_each(morsels, &bounds, &keys, &self.source.schema, &self.projection)?;
            queue.extend(numbers.into_iter().zip(kept).filter_map(|(n, m)| Some((n, Work::File(m?)))));
            queue.extend(others);
            (counts.row_groups_pruned, counts.rows_skipped)
        };
        if let Some(m) = &self.metrics {
            m.row_groups_pruned.fetch_add(pruned as u64, Ordering::Relaxed);
            m.rows_skipped_by_pages.fetch_add(skipped as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether to read Parquet morsel `m` late: its runtime filters' columns first, then only the
    /// rows that pass. So when they have kept few rows so far (a row group's other columns are then
    /// mostly never decoded: TPC-DS q54 keeps 550 of store sales' 28.8 M rows by their customers),
    /// and the scan reads other columns too.
    fn reads_late(&self, format: &FileFormat, m: &Morsel) -> bool {
        let filtered: Vec<usize> = self.runtime.iter().map(|f| f.column).collect();
        let pass: f64 = self.runtime.iter().map(|f| f.pass_rate()).product();
        matches!(format, FileFormat::Parquet)
            && pass < LATE_PASS_RATE
            && m.rows.is_some()
            && matches!(m.row_groups.as_deref(), Some([_]))
            && (0..self.projection.len()).any(|c| !filtered.contains(&c))
    }

    /// Morsel `m` narrowed to the rows that pass the runtime filters, read from their columns alone,
    /// with those columns' values for the rows that pass (the rest of the scan's columns are then
    /// read for those rows only: reading the filter columns again would decompress all their pages
    /// a second time); `None` when no row passes.
    fn rows_passing(&self, format: &FileFormat, m: Morsel) -> Result<Option<(Morsel, Option<PassedColumns>)>> {
        let mut columns: Vec<usize> = self.runtime.iter().map(|f| f.column).collect();
        columns.sort_unstable();
        columns.dedup();
        let table_columns: Vec<usize> = columns.iter().map(|c| self.projection[*c]).collect();
        let dictionary: Vec<bool> = columns.iter().map(|c| self.dictionary[*c]).collect();
        let reader = riffle_formats::read_morsel(format, &m, &self.source.schema, &table_columns, &dictionary, self.batch_size)?;
        // One bit per row read: whether it passes.
        let mut passes = arrow::array::BooleanBufferBuilder::new(m.rows.unwrap_or_default());
        let mut kept_values: Vec<Vec<arrow::array::ArrayRef>> = vec![Vec::new(); columns.len()];
        let mut fields = None;
        for batch in reader {
            let batch = batch?;
            fields.get_or_insert_with(|| batch.schema().fields().clone());
            match self.passing(&batch, |column| columns.iter().position(|c| *c == column).unwrap_or_default())? {
                Some(keep) => {
                    let mask = bits(&keep);
                    passes.append_buffer(&mask);
                    let mask = arrow::array::BooleanArray::new(mask, None);
                    for (kept, column) in kept_values.iter_mut().zip(batch.columns()) {
                        kept.push(arrow::compute::filter(column, &mask)?);
                    }
                }
                None => {
                    for (kept, column) in kept_values.iter_mut().zip(batch.columns()) {
                        kept.push(column.clone());
                    }
                    passes.append_n(batch.num_rows(), true);
                }
            }
        }
        let passes = passes.finish();
        // The positions read are the morsel's rows to read, in order.
        let total = m.rows.unwrap_or_default();
        let read: Vec<std::ops::Range<usize>> = m.rows_to_read.clone().unwrap_or_else(|| std::iter::once(0..total).collect());
        if read.iter().map(|r| r.len()).sum::<usize>() != passes.len() {
            return Ok(Some((m, None)));
        }
        let kept = rows_of_runs(&read, passes.set_slices());
        let passed = passes.count_set_bits();
        if let Some(metrics) = &self.metrics {
            metrics.rows_runtime_filtered.fetch_add((passes.len() - passed) as u64, Ordering::Relaxed);
        }
        if passed == 0 {
            return Ok(None);
        }
        let values = kept_values
            .iter()
            .map(|parts| arrow::compute::concat(&parts.iter().map(|a| a.as_ref()).collect::<Vec<_>>()))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let passed_columns = fields.map(|fields| PassedColumns { columns, fields: fields.iter().cloned().collect(), values, offset: 0 });
        Ok(Some((Morsel { rows_to_read: Some(kept), ..m }, passed_columns)))
    }

    /// The scan's columns other than `passed`'s, and whether each is read dictionary-encoded.
    fn columns_besides(&self, passed: &PassedColumns) -> (Vec<usize>, Vec<bool>) {
        (0..self.projection.len())
            .filter(|c| !passed.columns.contains(c))
            .map(|c| (self.projection[c], self.dictionary[c]))
            .unzip()
    }

    /// Which rows of `batch` pass the runtime filters set so far (`None`: all), the most selective
    /// applied first (each looks only at the rows the ones before kept); the scan's column `c` is
    /// `batch`'s column `at(c)`.
    fn passing(&self, batch: &RecordBatch, at: impl Fn(usize) -> usize) -> Result<Option<Vec<bool>>> {
        let mut order: Vec<&ScanFilter> = self.runtime.iter().collect();
        order.sort_by(|a, b| a.pass_rate().total_cmp(&b.pass_rate()));
        let mut keep = None;
        for f in order {
            f.narrow(batch.column(at(f.column)), &mut keep)?;
        }
        Ok(keep)
    }

    /// The rows of `batch` that pass the runtime filters set so far.
    fn runtime_filtered(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let Some(keep) = self.passing(&batch, |c| c)? else { return Ok(batch) };
        let mask = bits(&keep);
        let kept = mask.count_set_bits();
        if kept == batch.num_rows() {
            return Ok(batch);
        }
        if let Some(m) = &self.metrics {
            m.rows_runtime_filtered.fetch_add((batch.num_rows() - kept) as u64, Ordering::Relaxed);
        }
        Ok(arrow::compute::filter_record_batch(&batch, &arrow::array::BooleanArray::new(mask, None))?)
    }

    /// A monitored directory, once its interval has passed: lists it and queues the morsels of the
    /// files that appeared since (less those the restored checkpoint covers). Whether work was queued.
    fn discover(&self) -> Result<bool> {
        let Some(m) = &self.monitor else { return Ok(false) };
        let mut found = m.found.lock().map_err(|_| RiffleError::exec("scan lock poisoned"))?;
        let now = std::time::Instant::now();
        if now < found.next_list {
            return Ok(false);
        }
        found.next_list = now + m.interval;
        let files = match riffle_formats::list_files(&m.pattern) {
            Ok(files) => files,
            Err(riffle_formats::FormatError::NoFiles { .. }) => vec![],
            Err(e) => return Err(e.into()),
        };
        let mut work = Vec::new();
        let (mut names, mut settled) = (Vec::new(), Vec::new());
        for file in files {
            if found.known.contains(&file) {
                continue;
            }
            let morsels = riffle_formats::plan_morsels(&m.format, std::slice::from_ref(&file))?;
            let number = found.count;
            found.count += 1;
            let name = file.to_string_lossy().into_owned();
            let done = found.restored.remove(&name).unwrap_or_default();
            for (i, morsel) in morsels.into_iter().enumerate() {
                let n = (number << MORSEL_BITS) | i as u64;
                if done.contains(i as u64) {
                    settled.push(n);
                } else {
                    work.push((n, Work::File(morsel)));
                }
            }
            names.push(name);
            found.known.insert(file);
        }
        // Named (and what the restored checkpoint covers settled) before any of it can be taken, so
        // that every checkpoint can name the file of each piece of work it holds.
        if let Some(ck) = &self.checkpoint {
            let mut st = ck.state.lock().map_err(|_| RiffleError::exec("scan checkpoint lock poisoned"))?;
            st.files.extend(names);
            for n in settled {
                st.settled.insert(n);
            }
        }
        let queued = !work.is_empty();
        self.morsels.lock().map_err(|_| RiffleError::exec("scan lock poisoned"))?.extend(work);
        Ok(queued)
    }

    /// Whether a monitored directory has no work now: the partition waits (woken at the next listing).
    fn no_new_files(&self) -> Result<bool> {
        let Some(m) = &self.monitor else { return Ok(false) };
        if !self.morsels.lock().map_err(|_| RiffleError::exec("scan lock poisoned"))?.is_empty() || self.discover()? {
            return Ok(false);
        }
        let next = m.found.lock().map_err(|_| RiffleError::exec("scan lock poisoned"))?.next_list;
        m.notifier.wake_at(next);
        Ok(true)
    }

    /// Some partition read rows now.
    fn note_rows(&self) {
        if self.idle_timeout.is_some() {
            self.last_rows.fetch_max(self.started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }

    /// Whether the whole scan (not just one partition: the others' watermarks do not hold a partition
    /// waiting for files back, see `high_watermark`) read no rows for the idle timeout; if not yet,
    /// the waiting partition is woken when it would be.
    fn idle_now(&self) -> bool {
        let (Some(timeout), Some(m)) = (self.idle_timeout, &self.monitor) else { return false };
        let idle_at = self.started + std::time::Duration::from_nanos(self.last_rows.load(Ordering::Relaxed)) + timeout;
        if std::time::Instant::now() >= idle_at {
            return true;
        }
        m.notifier.wake_at(idle_at);
        false
    }

    /// For a rate-limited generator: whether the next event range's time has not come yet (the
    /// scheduler then wakes the partition when it has).
    fn not_yet(&self) -> bool {
        let Some(pace) = &self.pace else { return false };
        let last = {
            let cursor = self.events.lock().unwrap_or_else(|p| p.into_inner());
            match cursor.as_ref() {
                Some(c) if c.end.is_none_or(|e| c.next < e) => c.next + c.chunk,
                _ => return false,
            }
        };
        let start = *pace.start.get_or_init(std::time::Instant::now);
        let due = start + std::time::Duration::from_secs_f64(last as f64 / pace.rate);
        if std::time::Instant::now() >= due {
            return false;
        }
        pace.notifier.wake_at(due);
        true
    }

    /// Run as a stream, a table replayed in event time needs its event time: a WATERMARK FOR, and
    /// the query reading that column.
    pub fn check_replay(&self) -> Result<()> {
        if matches!(self.source.data, TableData::Files { replay: true, .. }) && self.replay.is_none() {
            return Err(RiffleError::plan(
                "a table replayed in event time ('source.replay' = 'event-time') needs a WATERMARK FOR, and a query \
                 reading its event-time column",
            ));
        }
        Ok(())
    }

    /// Partition `p` injected the barrier of epoch `e` (or ended, `u64::MAX`): saves the positions of
    /// every epoch all partitions have now passed.
    fn passed(&self, p: usize, e: u64) -> Result<()> {
        let Some(ck) = &self.checkpoint else { return Ok(()) };
        // Taken before the positions' lock: `next_work` takes the two in the other order.
        let chunk = self.events.lock().map_err(|_| RiffleError::exec("scan lock poisoned"))?.as_ref().map_or(0, |c| c.chunk);
        let mut st = ck.state.lock().map_err(|_| RiffleError::exec("scan checkpoint lock poisoned"))?;
        let taken = st.taken.get(p).cloned().unwrap_or_default();
        if e == u64::MAX {
            st.settled.union(&taken);
        } else {
            st.at.entry(e).or_default().union(&taken);
        }
        let named = matches!(self.source.data, TableData::Files { .. });
        for epoch in st.tracker.pass(p, e) {
            let mut work = st.at.remove(&epoch).unwrap_or_default();
            work.union(&st.settled);
            let mut doc = serde_json::json!({ "work": work.to_json(), "chunk": chunk });
            if named {
                doc["files"] = serde_json::json!(st.files);
            }
            super::checkpoint::write_synced(&ck.coordinator.epoch_dir(epoch)?.join(&ck.file), doc.to_string().as_bytes())?;
            ck.coordinator.ack(ck.component, epoch)?;
        }
        if st.tracker.all_ended() {
            let mut doc = serde_json::json!({ "work": st.settled.to_json(), "chunk": chunk });
            if named {
                doc["files"] = serde_json::json!(st.files);
            }
            ck.coordinator.retire_with(ck.component, Some((ck.file.clone(), doc.to_string().into_bytes())))?;
        }
        Ok(())
    }

    /// Whether the job checkpoints (barriers then come from its clock, between pieces of work).
    fn checkpointed(&self) -> Option<&Arc<super::checkpoint::Coordinator>> {
        self.checkpoint.as_ref().map(|c| &c.coordinator)
    }

    /// The largest watermark `batch` allows (NULL event times allow nothing).
    fn watermark_of(&self, batch: &RecordBatch) -> Result<Option<i64>> {
        let Some(expr) = &self.watermark else { return Ok(None) };
        let values = crate::eval::evaluate(expr, batch)?;
        let micros = arrow::compute::cast(&values, &arrow::datatypes::DataType::Int64)?;
        Ok(arrow::compute::max(micros.as_primitive::<arrow::datatypes::Int64Type>()))
    }

    /// The batch under the plan's column names; a column keeps its dictionary encoding if it has one.
    fn rename(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let fields: Vec<arrow::datatypes::Field> = self
            .schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, c)| match c.data_type() {
                d @ arrow::datatypes::DataType::Dictionary(..) => f.as_ref().clone().with_data_type(d.clone()),
                _ => f.as_ref().clone(),
            })
            .collect();
        Ok(RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), batch.columns().to_vec())?)
    }

    /// The next piece of work for partition `p`.
    fn take(&self, p: usize) -> Option<Work> {
        let (number, work) = self.next_work()?;
        if let Some(ck) = &self.checkpoint {
            if let Some(t) = ck.state.lock().unwrap_or_else(|e| e.into_inner()).taken.get_mut(p) {
                t.insert(number);
            }
        }
        Some(work)
    }

    fn next_work(&self) -> Option<(u64, Work)> {
        if let Some(w) = self.morsels.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            return Some(w);
        }
        let mut cursor = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let c = cursor.as_mut()?;
        loop {
            let n = match c.end {
                Some(end) => end.saturating_sub(c.next).min(c.chunk),
                None => c.chunk,
            };
            if n == 0 {
                return None;
            }
            let (start, number) = (c.next, c.next / c.chunk.max(1));
            c.next += n;
            // Event ranges a restored checkpoint covers are skipped.
            let done = self.checkpoint.as_ref().is_some_and(|ck| ck.state.lock().unwrap_or_else(|e| e.into_inner()).settled.contains(number));
            if !done {
                return Some((number, Work::Events(start, n)));
            }
        }
    }

    /// Nexmark events `start..start + n`: the rows of the table's event kind, its columns.
    fn events(&self, start: u64, n: u64) -> Result<RecordBatch> {
        let TableData::Nexmark { config, table, columns, .. } = &self.source.data else {
            return Err(RiffleError::exec("event range for a table that is not generated"));
        };
        let schema = &self.source.schema;
        let extra = table.schema().index_of("extra").ok();
        let all = config.batch_with(*table, start, n, self.projection.iter().any(|p| columns.get(*p).copied() == extra))?;
        let columns = columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                let col = all.column(*c);
                if col.data_type() == f.data_type() { Ok(col.clone()) } else { Ok(arrow::compute::cast(col, f.data_type())?) }
            })
            .collect::<Result<Vec<_>>>()?;
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(all.num_rows()));
        Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?.project(&self.projection)?)
    }
}

/// One partition of a scan. In stream mode it interleaves checkpoint barriers and watermarks with its
/// batches, as an unbounded source would.
pub struct ScanSource {
    shared: Arc<ScanShared>,
    reader: Option<BatchReader>,
    stream: bool,
    batches: u64,
    ended: bool,
    pending: VecDeque<Message>,
    progress: Option<Arc<super::Progress>>,
    /// The last watermark emitted (stream mode, tables with an event time).
    watermark: i64,
    partition: usize,
    /// The last checkpoint epoch whose barrier this partition injected.
    epoch: u64,
    /// The next work's time has not come (a rate-limited source).
    waiting: bool,
    /// Replayed in event time: batches read whose time has not come yet, in order.
    held: VecDeque<Held>,
    /// Without checkpoints, a barrier every other batch anyway (`ExecConfig::test_barriers`).
    test_barriers: bool,
    /// This partition said it is idle and sent nothing since.
    idle: bool,
    /// The reader reads only rows that passed the runtime filters (`ScanShared::rows_passing`).
    prefiltered: bool,
    /// The filter columns' values of those rows, when the reader reads the other columns only.
    passed: Option<PassedColumns>,
}

/// The runtime filters' columns of a morsel's rows that pass them, read ahead of its other columns:
/// each batch of those is completed with the next rows of these.
struct PassedColumns {
    /// The scan's columns these are, ascending.
    columns: Vec<usize>,
    fields: Vec<arrow::datatypes::FieldRef>,
    values: Vec<arrow::array::ArrayRef>,
    /// Rows handed out so far.
    offset: usize,
}

impl PassedColumns {
    /// `batch` (the scan's other columns, in order) with these columns' next rows in their places.
    fn splice(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        if self.values.first().is_some_and(|v| self.offset + rows > v.len()) {
            return Err(RiffleError::exec("a Parquet row group read late has more rows than passed its runtime filters"));
        }
        let width = batch.num_columns() + self.columns.len();
        let (mut fields, mut columns) = (Vec::with_capacity(width), Vec::with_capacity(width));
        let read = batch.schema();
        let mut others = read.fields().iter().cloned().zip(batch.columns().iter().cloned());
        for c in 0..width {
            match self.columns.iter().position(|p| *p == c) {
                Some(i) => {
                    fields.push(self.fields[i].clone());
                    columns.push(self.values[i].slice(self.offset, rows));
                }
                None => {
                    let (field, column) = others.next().ok_or_else(|| RiffleError::exec("a late read returned too few columns"))?;
                    fields.push(field);
                    columns.push(column);
                }
            }
        }
        self.offset += rows;
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        Ok(RecordBatch::try_new_with_options(schema, columns, &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)))?)
    }
}

impl ScanSource {
    pub fn new(
        shared: Arc<ScanShared>,
        partition: usize,
        stream: bool,
        test_barriers: bool,
        progress: Option<Arc<super::Progress>>,
    ) -> ScanSource {
        let epoch = shared.checkpointed().map_or(0, |c| c.restored);
        ScanSource {
            shared,
            partition,
            reader: None,
            stream,
            batches: 0,
            ended: false,
            pending: VecDeque::new(),
            progress,
            watermark: i64::MIN,
            epoch,
            waiting: false,
            held: VecDeque::new(),
            test_barriers,
            idle: false,
            prefiltered: false,
            passed: None,
        }
    }

    /// Between two pieces of work: the next epoch's barrier, if the checkpoint clock has started it.
    /// One per piece of work at most: a checkpoint slower than the interval then delays the next one
    /// instead of piling barriers up (epochs never skip, so every component sees each one).
    fn barriers_due(&mut self) -> Result<bool> {
        let Some(due) = self.shared.checkpointed().map(|c| c.due_epoch()) else { return Ok(false) };
        if due <= self.epoch {
            return Ok(false);
        }
        self.epoch += 1;
        self.shared.passed(self.partition, self.epoch)?;
        self.pending.push_back(Message::Barrier(self.epoch));
        Ok(true)
    }

    /// Replayed in event time (as a stream): the next batch once its time has come. Until then the
    /// partition reads ahead in its piece of work, a batch a step (`READ_AHEAD` at most), then
    /// sleeps until the batch is due: one partition alone could not parse rows as fast as they fall
    /// due, so each reads its next piece while the other's rows go out. Barriers wait until the
    /// piece's batches are all out (they go between pieces of work).
    fn next_replayed(&mut self, replay: &Replay) -> Result<Option<RecordBatch>> {
        const READ_AHEAD: usize = 32;
        let shared = self.shared.clone();
        let held = |batch: RecordBatch| -> Result<Held> {
            Ok(Held { times: replay.times(&batch)?, watermark: shared.watermark_of(&batch)?, batch })
        };
        loop {
            let Some(front) = self.held.front() else {
                match self.next_read()? {
                    Some(batch) => self.held.push_back(held(batch)?),
                    None => return Ok(None),
                }
                continue;
            };
            let Some(due) = replay.due(front.times)?.filter(|due| *due > std::time::Instant::now()) else {
                return Ok(self.held.pop_front().map(|h| h.batch));
            };
            self.waiting = true;
            if self.held.len() < READ_AHEAD {
                if let Some(reader) = &mut self.reader {
                    match reader.next() {
                        Some(batch) => {
                            self.held.push_back(held(batch?)?);
                            replay.notifier.bump();
                            return Ok(None);
                        }
                        None => self.reader = None,
                    }
                }
            }
            replay.notifier.wake_at(due);
            return Ok(None);
        }
    }

    /// The next batch; `Ok(None)` at the end, or when barriers were queued between pieces of work.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match self.shared.replay.clone().filter(|_| self.stream) {
            Some(replay) => self.next_replayed(&replay),
            None => self.next_read(),
        }
    }

    /// The next batch as read, less the rows runtime filters drop; `Ok(None)` at the end, or when
    /// barriers were queued between pieces of work.
    fn next_read(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Some(batch) = self.next_unfiltered()? else { return Ok(None) };
            if self.shared.runtime.is_empty() || self.prefiltered {
                return Ok(Some(batch));
            }
            let batch = self.shared.runtime_filtered(batch)?;
            if batch.num_rows() > 0 {
                return Ok(Some(batch));
            }
        }
    }

    fn next_unfiltered(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(reader) = &mut self.reader {
                match reader.next() {
                    Some(batch) => match &mut self.passed {
                        Some(passed) => return Ok(Some(passed.splice(batch?)?)),
                        None => return Ok(Some(batch?)),
                    },
                    None => self.reader = None,
                }
            }
            if self.barriers_due()? {
                return Ok(None);
            }
            if self.shared.not_yet() || self.shared.no_new_files()? {
                self.waiting = true;
                return Ok(None);
            }
            if !self.shared.runtime.is_empty() {
                if self.shared.awaiting_filters() {
                    self.waiting = true;
                    return Ok(None);
                }
                self.shared.prune_by_runtime_filters()?;
            }
            match self.shared.take(self.partition) {
                None => return Ok(None),
                Some(Work::Batch(b)) => return Ok(Some(b)),
                Some(Work::Generate(start, n)) => {
                    let TableData::Generated { generator, .. } = &self.shared.source.data else {
                        return Err(RiffleError::exec("generated morsel for a table that is not generated"));
                    };
                    return Ok(Some(generator.batch(start, n).project(&self.shared.projection)?));
                }
                Some(Work::Events(start, n)) => return Ok(Some(self.shared.events(start, n)?)),
                Some(Work::File(m)) => {
                    let TableData::Files { format, .. } = &self.shared.source.data else {
                        return Err(RiffleError::exec("file morsel for an in-memory table"));
                    };
                    let format: &FileFormat = format;
                    self.prefiltered = self.shared.reads_late(format, &m);
                    self.passed = None;
                    let m = if self.prefiltered {
                        match self.shared.rows_passing(format, m)? {
                            Some((m, passed)) => {
                                self.passed = passed;
                                m
                            }
                            None => continue,
                        }
                    } else {
                        m
                    };
                    let (projection, dictionary) = match &self.passed {
                        Some(passed) => self.shared.columns_besides(passed),
                        None => (self.shared.projection.clone(), self.shared.dictionary.clone()),
                    };
                    self.reader = Some(riffle_formats::read_morsel(
                        format,
                        &m,
                        &self.shared.source.schema,
                        &projection,
                        &dictionary,
                        self.shared.batch_size,
                    )?);
                }
            }
        }
    }
}

/// Row flags as a bitmap, packed 64 at a time (`BooleanArray::from(Vec<bool>)` sets bit by bit).
fn bits(keep: &[bool]) -> arrow::buffer::BooleanBuffer {
    arrow::buffer::BooleanBuffer::collect_bool(keep.len(), |i| keep[i])
}

/// The rows of runs of positions (`runs`: ascending, as `BooleanBuffer::set_slices` gives them)
/// among the rows `read` in order, as ascending ranges of rows, adjacent ones joined.
fn rows_of_runs(read: &[std::ops::Range<usize>], runs: impl Iterator<Item = (usize, usize)>) -> Vec<std::ops::Range<usize>> {
    let mut kept: Vec<std::ops::Range<usize>> = Vec::new();
    // `read[r]` holds positions `at..at + read[r].len()`.
    let (mut r, mut at) = (0, 0);
    for (mut start, end) in runs {
        while start < end && r < read.len() {
            let len = read[r].len();
            if start >= at + len {
                at += len;
                r += 1;
                continue;
            }
            let upto = end.min(at + len);
            let rows = read[r].start + (start - at)..read[r].start + (upto - at);
            match kept.last_mut() {
                Some(last) if last.end == rows.start => last.end = rows.end,
                _ => kept.push(rows),
            }
            start = upto;
        }
    }
    kept
}

impl Source for ScanSource {
    fn next(&mut self) -> Result<Option<Message>> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(Some(m));
        }
        if self.ended {
            return Ok(Some(Message::End));
        }
        match self.next_batch()? {
            Some(batch) => {
                let batch = if batch.schema() != self.shared.schema { self.shared.rename(batch)? } else { batch };
                self.batches += 1;
                self.idle = false;
                self.shared.note_rows();
                if let Some(p) = &self.progress {
                    p.rows_read.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                }
                if self.stream {
                    // Control messages ride along with the data as they would from a live source: a
                    // watermark when the batch moved event time on, a checkpoint barrier every other batch.
                    if let Some(w) = self.shared.watermark_of(&batch)?.filter(|w| *w > self.watermark) {
                        self.watermark = w;
                        self.shared.high_watermark.fetch_max(w, Ordering::Relaxed);
                        self.pending.push_back(Message::Watermark(w));
                    }
                    if self.test_barriers && self.shared.checkpoint.is_none() && self.batches.is_multiple_of(2) {
                        self.pending.push_back(Message::Barrier(self.batches / 2));
                    }
                }
                Ok(Some(Message::Batch(batch)))
            }
            None if !self.pending.is_empty() => Ok(self.pending.pop_front()),
            None if std::mem::take(&mut self.waiting) => {
                // Waiting for new files or events, nothing of this partition in flight: it need not
                // hold event time back behind the others. (A rate-limited generator's partition that
                // lost the race for ranges held every window back until the input's end: Nexmark q5
                // at 0.1 M events/s had p50 latencies of 4-7 s.)
                let mut high = self.shared.high_watermark.load(Ordering::Relaxed);
                let mut follows = self.shared.monitor.is_some() || self.shared.pace.is_some();
                if let Some(held) = self.held.front() {
                    // Replayed: not past the rows held (nor the watermark they bring: rows after
                    // them may be that much earlier, as the table's watermark allows).
                    if let (Some((first, _)), Some(w)) = (held.times, held.watermark) {
                        high = high.min(first).min(w);
                        follows = true;
                    }
                }
                if follows && high > self.watermark {
                    self.watermark = high;
                    self.idle = false;
                    return Ok(Some(Message::Watermark(high)));
                }
                if !self.idle && self.stream && self.shared.idle_now() {
                    self.idle = true;
                    return Ok(Some(Message::Idle));
                }
                Ok(None)
            }
            None => {
                self.ended = true;
                self.shared.passed(self.partition, u64::MAX)?;
                Ok(Some(Message::End))
            }
        }
    }
}

/// Fixed batches, then the end.
pub struct BatchesSource {
    batches: VecDeque<RecordBatch>,
}

impl BatchesSource {
    pub fn new(batches: Vec<RecordBatch>) -> BatchesSource {
        BatchesSource { batches: batches.into() }
    }
}

impl Source for BatchesSource {
    fn next(&mut self) -> Result<Option<Message>> {
        Ok(Some(self.batches.pop_front().map(Message::Batch).unwrap_or(Message::End)))
    }
}

/// Reads one consumer's queue of an exchange.
pub struct ExchangeSource {
    exchange: Arc<Exchange>,
    consumer: usize,
}

impl ExchangeSource {
    pub fn new(exchange: Arc<Exchange>, consumer: usize) -> ExchangeSource {
        ExchangeSource { exchange, consumer }
    }
}

impl Source for ExchangeSource {
    fn next(&mut self) -> Result<Option<Message>> {
        Ok(self.exchange.pop(self.consumer))
    }
}

impl Drop for ExchangeSource {
    fn drop(&mut self) {
        // A consumer that stops early (LIMIT) releases its producers.
        self.exchange.close_consumer(self.consumer);
    }
}

/// Writes into an exchange as one of its producers.
pub struct ExchangeSink {
    exchange: Arc<Exchange>,
    producer: usize,
}

impl ExchangeSink {
    pub fn new(exchange: Arc<Exchange>, producer: usize) -> ExchangeSink {
        ExchangeSink { exchange, producer }
    }
}

impl Sink for ExchangeSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        self.exchange.push(self.producer, msg);
        Ok(())
    }

    fn has_capacity(&self) -> bool {
        self.exchange.has_capacity(self.producer)
    }

    fn closed(&self) -> bool {
        self.exchange.closed()
    }
}

/// Collects the query's result rows.
pub struct CollectSink {
    out: Arc<Mutex<Vec<RecordBatch>>>,
}

impl CollectSink {
    pub fn new(out: Arc<Mutex<Vec<RecordBatch>>>) -> CollectSink {
        CollectSink { out }
    }
}

impl Sink for CollectSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        if let Message::Batch(b) = msg {
            self.out.lock().map_err(|_| RiffleError::exec("result lock poisoned"))?.push(b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_of_positions_become_the_rows_read_there() {
        let whole: Vec<std::ops::Range<usize>> = std::iter::once(0..10).collect();
        assert_eq!(rows_of_runs(&whole, [(0, 3), (5, 6)].into_iter()), vec![0..3, 5..6]);
        // Positions 0..3 are rows 2..5, 3..7 rows 10..14, 7..13 rows 14..20.
        let read = [2..5, 10..14, 14..20];
        assert_eq!(rows_of_runs(&read, [(1, 5), (6, 9)].into_iter()), vec![3..5, 10..12, 13..16]);
        assert_eq!(rows_of_runs(&read, [(0, 13)].into_iter()), vec![2..5, 10..20]);
        assert_eq!(rows_of_runs(&read, std::iter::empty()), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(bits(&[true, false, true]).set_slices().collect::<Vec<_>>(), vec![(0, 1), (2, 3)]);
    }
}
