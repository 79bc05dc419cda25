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

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Int64Type};

use super::aggregate::{AggSpec, GroupTable, Partial};
use super::{emit_rows, BarrierRelay, Exchange, OpMetrics, Sink};
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::Message;

pub struct WindowAggShared {
    spec: AggSpec,
    /// Which group key is the window's end.
    window_end: usize,
    state: Mutex<WindowState>,
    barriers: BarrierRelay,
    output: Arc<Exchange>,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
    pool: Arc<MemoryPool>,
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
}

impl WindowAggShared {
    pub fn new(
        spec: AggSpec,
        window_end: usize,
        partitions: usize,
        output: Arc<Exchange>,
        batch_size: usize,
        metrics: Arc<OpMetrics>,
        pool: Arc<MemoryPool>,
    ) -> WindowAggShared {
        let state = WindowState { watermarks: vec![i64::MIN; partitions], pending: BTreeMap::new(), forwarded: i64::MIN, ended: 0 };
        WindowAggShared {
            spec,
            window_end,
            state: Mutex::new(state),
            barriers: BarrierRelay::new(partitions),
            output,
            batch_size,
            metrics,
            pool,
        }
    }

    /// Partition `partition` reached `watermark` and hands over the windows it closed; emits every
    /// window all partitions have closed, then the watermark they all passed, and the end once every
    /// partition ended.
    fn advance(&self, partition: usize, watermark: i64, closed: Vec<(i64, Partial)>, ended: bool) -> Result<()> {
        let mut st = self.state.lock().map_err(|_| RiffleError::exec("window aggregate lock poisoned"))?;
        st.ended += usize::from(ended);
        for (end, partial) in closed {
            st.pending.entry(end).or_default().push(partial);
        }
        let slot = st.watermarks.get_mut(partition).ok_or_else(|| RiffleError::exec("watermark from an unknown partition"))?;
        *slot = (*slot).max(watermark);
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
            emit_rows(&self.output, &batch, self.batch_size, &self.metrics);
        }
        if st.ended == st.watermarks.len() {
            self.output.push(0, Message::End);
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
    /// The watermark this partition's input has passed: windows ending at or before it are closed.
    watermark: i64,
    reservation: MemoryReservation,
    ended: bool,
}

impl WindowAggSink {
    pub fn new(shared: Arc<WindowAggShared>, partition: usize) -> WindowAggSink {
        let reservation = shared.pool.reservation(format!("WindowAggregate (partition {partition})"), false);
        WindowAggSink { shared, partition, windows: BTreeMap::new(), watermark: i64::MIN, reservation, ended: false }
    }

    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
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
        if !self.reservation.try_resize(size) {
            self.reservation.grow_anyway(size.saturating_sub(self.reservation.size()));
        }
        Ok(())
    }

    /// Takes the windows ending at or before `watermark` out as partial groups.
    fn close(&mut self, watermark: i64) -> Result<Vec<(i64, Partial)>> {
        let open = match watermark.checked_add(1) {
            Some(next) => self.windows.split_off(&next),
            None => BTreeMap::new(),
        };
        let closed = std::mem::replace(&mut self.windows, open);
        closed.into_iter().map(|(end, table)| Ok((end, table.into_partial()?))).collect()
    }
}

impl Sink for WindowAggSink {
    /// Emitted windows wait in a bounded queue; while it is full the partitions stop reading.
    fn has_capacity(&self) -> bool {
        self.shared.output.has_capacity(0)
    }

    fn push(&mut self, msg: Message) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        match msg {
            Message::Batch(b) => {
                let started = std::time::Instant::now();
                self.add(&b)?;
                self.shared.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            Message::Watermark(w) if w > self.watermark => {
                self.watermark = w;
                let closed = self.close(w)?;
                self.shared.advance(self.partition, w, closed, false)?;
            }
            Message::Watermark(_) => {}
            Message::Barrier(epoch) => self.shared.barriers.barrier(self.partition, epoch, &self.shared.output)?,
            Message::End => {
                self.ended = true;
                let closed = self.close(i64::MAX)?;
                self.reservation.free();
                self.shared.barriers.end(self.partition, &self.shared.output)?;
                self.shared.advance(self.partition, i64::MAX, closed, true)?;
            }
        }
        Ok(())
    }
}
