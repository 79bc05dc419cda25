//! Sources (table scans, literal rows, exchanges) and the simple sinks (exchange, result collector).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use riffle_formats::{BatchReader, FileFormat, Morsel};

use std::sync::atomic::Ordering;

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
    morsels: Mutex<VecDeque<Work>>,
    batch_size: usize,
    /// The table's watermark expression over the scanned columns, when it has one and they are read.
    watermark: Option<Expr>,
    /// A generated event table hands out event ranges as they are asked for.
    events: Mutex<Option<EventCursor>>,
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
    pub fn new(
        source: Arc<TableSource>,
        projection: Vec<usize>,
        dictionary: Vec<bool>,
        schema: SchemaRef,
        batch_size: usize,
        filter: Option<&Expr>,
        metrics: &OpMetrics,
    ) -> Result<ScanShared> {
        let work: VecDeque<Work> = match &source.data {
            TableData::Files { morsels, format: FileFormat::Parquet, .. } => {
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
            TableData::Nexmark { .. } => VecDeque::new(),
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
            TableData::Nexmark { config, table, events, .. } => {
                Some(EventCursor { next: 0, end: *events, chunk: config.events_for_rows(*table, batch_size) })
            }
            _ => None,
        };
        Ok(ScanShared {
            source,
            projection,
            dictionary,
            schema,
            morsels: Mutex::new(work),
            batch_size,
            watermark,
            events: Mutex::new(events),
        })
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

    fn take(&self) -> Option<Work> {
        if let Some(w) = self.morsels.lock().unwrap_or_else(|p| p.into_inner()).pop_front() {
            return Some(w);
        }
        let mut cursor = self.events.lock().unwrap_or_else(|p| p.into_inner());
        let c = cursor.as_mut()?;
        let n = match c.end {
            Some(end) => end.saturating_sub(c.next).min(c.chunk),
            None => c.chunk,
        };
        let start = c.next;
        c.next += n;
        (n > 0).then_some(Work::Events(start, n))
    }

    /// Nexmark events `start..start + n`: the rows of the table's event kind, its columns.
    fn events(&self, start: u64, n: u64) -> Result<RecordBatch> {
        let TableData::Nexmark { config, table, columns, .. } = &self.source.data else {
            return Err(RiffleError::exec("event range for a table that is not generated"));
        };
        let all = config.batch(*table, start, n)?;
        let schema = &self.source.schema;
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
}

impl ScanSource {
    pub fn new(shared: Arc<ScanShared>, stream: bool, progress: Option<Arc<super::Progress>>) -> ScanSource {
        ScanSource { shared, reader: None, stream, batches: 0, ended: false, pending: VecDeque::new(), progress, watermark: i64::MIN }
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(reader) = &mut self.reader {
                match reader.next() {
                    Some(batch) => return Ok(Some(batch?)),
                    None => self.reader = None,
                }
            }
            match self.shared.take() {
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
                    self.reader = Some(riffle_formats::read_morsel(
                        format,
                        &m,
                        &self.shared.source.schema,
                        &self.shared.projection,
                        &self.shared.dictionary,
                        self.shared.batch_size,
                    )?);
                }
            }
        }
    }
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
                if let Some(p) = &self.progress {
                    p.rows_read.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                }
                if self.stream {
                    // Control messages ride along with the data as they would from a live source: a
                    // watermark when the batch moved event time on, a checkpoint barrier every other batch.
                    if let Some(w) = self.shared.watermark_of(&batch)?.filter(|w| *w > self.watermark) {
                        self.watermark = w;
                        self.pending.push_back(Message::Watermark(w));
                    }
                    if self.batches.is_multiple_of(2) {
                        self.pending.push_back(Message::Barrier(self.batches / 2));
                    }
                }
                Ok(Some(Message::Batch(batch)))
            }
            None => {
                self.ended = true;
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
