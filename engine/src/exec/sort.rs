//! Sort and top-k as a pipeline breaker. Keys are compared as `arrow-row` byte strings. With `fetch`,
//! each partition keeps only its best rows as it goes, so memory stays proportional to k.

use std::sync::Arc;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take_record_batch, SortOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};

use super::{emit_result, BarrierRelay, Exchange, OpMetrics, PartitionGather, Sink};
use crate::error::Result;
use crate::eval::evaluate;
use crate::logical::SortKey;
use crate::message::Message;

/// Sorts `batches` by `keys`, keeping the first `fetch` rows if given. Stable: equal keys keep input order.
pub fn sort_batches(schema: &SchemaRef, batches: &[RecordBatch], keys: &[SortKey], fetch: Option<usize>) -> Result<RecordBatch> {
    let all = concat_batches(schema, batches)?;
    let columns = keys.iter().map(|k| evaluate(&k.expr, &all)).collect::<Result<Vec<_>>>()?;
    let fields = keys
        .iter()
        .zip(&columns)
        .map(|(k, c)| {
            SortField::new_with_options(
                c.data_type().clone(),
                SortOptions { descending: k.descending, nulls_first: k.nulls_first },
            )
        })
        .collect();
    let converter = RowConverter::new(fields)?;
    let rows = converter.convert_columns(&columns)?;
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    let limit = fetch.unwrap_or(order.len()).min(order.len());
    if limit < order.len() && limit > 0 {
        order.select_nth_unstable_by(limit - 1, |a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)).then(a.cmp(b)));
        order.truncate(limit);
    }
    order.sort_by(|a, b| rows.row(*a as usize).cmp(&rows.row(*b as usize)).then(a.cmp(b)));
    order.truncate(limit);
    Ok(take_record_batch(&all, &UInt32Array::from(order))?)
}

pub struct SortShared {
    schema: SchemaRef,
    keys: Vec<SortKey>,
    fetch: Option<usize>,
    runs: PartitionGather<RecordBatch>,
    barriers: BarrierRelay,
    output: Arc<Exchange>,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
}

impl SortShared {
    pub fn new(
        schema: SchemaRef,
        keys: Vec<SortKey>,
        fetch: Option<usize>,
        partitions: usize,
        output: Arc<Exchange>,
        batch_size: usize,
        metrics: Arc<OpMetrics>,
    ) -> SortShared {
        let (runs, barriers) = (PartitionGather::new(partitions), BarrierRelay::new(partitions));
        SortShared { schema, keys, fetch, runs, barriers, output, batch_size, metrics }
    }

    fn finish(&self, local: Vec<RecordBatch>) -> Result<()> {
        let Some(batches) = self.runs.arrive(local)? else { return Ok(()) };
        let started = std::time::Instant::now();
        let sorted = sort_batches(&self.schema, &batches, &self.keys, self.fetch)?;
        drop(batches);
        self.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        emit_result(&self.output, &sorted, self.batch_size, &self.metrics);
        Ok(())
    }
}

pub struct SortSink {
    shared: Arc<SortShared>,
    partition: usize,
    buffered: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
}

impl SortSink {
    pub fn new(shared: Arc<SortShared>, partition: usize) -> SortSink {
        SortSink { shared, partition, buffered: Vec::new(), rows: 0, bytes: 0 }
    }
}

impl Sink for SortSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => {
                self.rows += b.num_rows();
                self.bytes += b.get_array_memory_size();
                self.buffered.push(b);
                self.shared.metrics.note_bytes(self.bytes);
                if let Some(k) = self.shared.fetch {
                    // Top-k: once twice k rows are buffered, keep only the best k.
                    if self.rows > 2 * k.max(1024) {
                        let best = sort_batches(&self.shared.schema, &self.buffered, &self.shared.keys, Some(k))?;
                        self.rows = best.num_rows();
                        self.bytes = best.get_array_memory_size();
                        self.buffered = vec![best];
                    }
                }
            }
            Message::End => {
                self.shared.barriers.end(self.partition, &self.shared.output)?;
                let local = std::mem::take(&mut self.buffered);
                self.shared.finish(local)?;
            }
            Message::Barrier(epoch) => self.shared.barriers.barrier(self.partition, epoch, &self.shared.output)?,
            Message::Watermark(_) => {}
        }
        Ok(())
    }
}
