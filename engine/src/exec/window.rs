//! Window functions (`… OVER (PARTITION BY … ORDER BY … frame)`) over input sorted by the partition
//! and order keys, in one partition: rows are buffered until their PARTITION BY key changes, then the
//! values of the finished partitions are computed and emitted with them. The partitions an input
//! batch finishes are computed together (frames end at their partition's bounds), so that many small
//! partitions cost one pass, not one each.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, SortField};

use super::Operator;
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggFunc, FrameBound, WindowCall, WindowFunc};
use crate::memory::{batch_bytes, MemoryPool, MemoryReservation};
use crate::message::Message;

/// What a partition's rows get.
pub enum PartitionValues {
    /// Window functions sharing their PARTITION BY and ORDER BY.
    Calls(Vec<WindowCall>),
    /// SESSION windows of the time column `time` (rows sorted by it): sessions break where two rows
    /// are `gap` or more apart; each row gets its session's start, end (last time + gap) and time.
    Sessions { time: usize, gap: i64 },
}

pub struct WindowOp {
    values: PartitionValues,
    partition_by: Vec<crate::logical::Expr>,
    schema: SchemaRef,
    /// Row-encodes the PARTITION BY keys (made with the first batch), none without PARTITION BY.
    partition_rows: Option<RowConverter>,
    buffer: Vec<RecordBatch>,
    /// Finished partitions' rows with their window values, sent as one batch by `emit`.
    ready: Vec<RecordBatch>,
    last_key: Option<OwnedRow>,
    /// Holds the buffered partition's bytes in the pool. A partition cannot spill (yet): beyond the
    /// budget it is counted anyway, so that spilling operators see less room.
    reservation: MemoryReservation,
}

impl WindowOp {
    /// `calls` share their PARTITION BY and ORDER BY.
    pub fn new(calls: Vec<WindowCall>, schema: SchemaRef, pool: &Arc<MemoryPool>) -> WindowOp {
        let partition_by = calls.first().map(|c| c.partition_by.clone()).unwrap_or_default();
        WindowOp::of(PartitionValues::Calls(calls), partition_by, schema, pool.reservation("Window", false))
    }

    fn of(values: PartitionValues, partition_by: Vec<crate::logical::Expr>, schema: SchemaRef, reservation: MemoryReservation) -> WindowOp {
        WindowOp { values, partition_by, schema, partition_rows: None, buffer: vec![], ready: vec![], last_key: None, reservation }
    }

    /// Buffers rows of the current partition, counted in the pool.
    fn hold(&mut self, batch: RecordBatch) {
        self.reservation.grow_anyway(batch_bytes(&batch));
        self.buffer.push(batch);
    }

    /// SESSION windows per `keys`.
    pub fn sessions(keys: Vec<crate::logical::Expr>, time: usize, gap: i64, schema: SchemaRef, pool: &Arc<MemoryPool>) -> WindowOp {
        WindowOp::of(PartitionValues::Sessions { time, gap }, keys, schema, pool.reservation("SessionTvf", false))
    }

    /// Rows buffered.
    fn buffered(&self) -> usize {
        self.buffer.iter().map(|b| b.num_rows()).sum()
    }

    /// Computes the window values of the buffered rows, whole partitions starting at rows `starts`
    /// (the first at 0); their rows wait in `ready`.
    fn flush(&mut self, starts: &[usize]) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.buffer);
        let chunk = arrow::compute::concat_batches(&batches[0].schema(), &batches)?;
        drop(batches);
        // The concatenated copy replaces the buffered batches (slices of the input's batches).
        self.reservation.free();
        let n = chunk.num_rows();
        if n == 0 {
            return Ok(());
        }
        let ends = starts.iter().skip(1).copied().chain([n]);
        match &self.values {
            // RANGE offsets search their partition's keys: one partition at a time.
            PartitionValues::Calls(calls) if calls.iter().any(|c| c.frame.range_offsets()) => {
                for (start, end) in starts.iter().zip(ends) {
                    let batch = with_window_values(calls, &chunk.slice(*start, end - start), &[0], &self.schema)?;
                    self.ready.push(batch);
                }
            }
            PartitionValues::Calls(calls) => {
                let batch = with_window_values(calls, &chunk, starts, &self.schema)?;
                self.ready.push(batch);
            }
            PartitionValues::Sessions { time, gap } => {
                for (start, end) in starts.iter().zip(ends) {
                    let batch = sessions(&chunk.slice(*start, end - start), *time, *gap, &self.schema)?;
                    if batch.num_rows() > 0 {
                        self.ready.push(batch);
                    }
                }
            }
        }
        Ok(())
    }

    /// Sends the finished partitions' rows as one batch. One batch per partition would be small
    /// when partitions are, and a partition within one input batch is a slice holding that whole
    /// batch's buffers (a sort downstream counting each slice as the whole spilled every few rows);
    /// the copy is one compact batch per input batch.
    fn emit(&mut self, out: &mut Vec<Message>) -> Result<()> {
        if self.ready.is_empty() {
            return Ok(());
        }
        let batch = arrow::compute::concat_batches(&self.schema, &self.ready)?;
        self.ready.clear();
        out.push(Message::Batch(batch));
        Ok(())
    }
}

impl Operator for WindowOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if self.partition_by.is_empty() {
            self.hold(batch);
            return Ok(());
        }
        let keys = self.partition_by.iter().map(|k| evaluate(k, &batch)).collect::<Result<Vec<_>>>()?;
        if self.partition_rows.is_none() {
            self.partition_rows = Some(RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?);
        }
        let Some(converter) = &self.partition_rows else { return Ok(()) };
        let rows = converter.convert_columns(&keys)?;
        // Rows where a new partition starts.
        let mut starts = Vec::new();
        for i in 0..rows.num_rows() {
            let new = match (i, &self.last_key) {
                (0, Some(last)) => rows.row(0) != last.row(),
                (0, None) => false,
                _ => rows.row(i) != rows.row(i - 1),
            };
            if new {
                starts.push(i);
            }
        }
        self.last_key = Some(rows.row(rows.num_rows() - 1).owned());
        if let Some(&last) = starts.last() {
            // The buffered rows and this batch's up to its last partition's start are whole
            // partitions.
            let buffered = self.buffered();
            let mut chunk_starts = vec![0];
            chunk_starts.extend(starts.iter().map(|s| buffered + s).filter(|s| *s > 0 && *s < buffered + last));
            self.hold(batch.slice(0, last));
            self.flush(&chunk_starts)?;
            self.hold(batch.slice(last, batch.num_rows() - last));
        } else {
            self.hold(batch);
        }
        self.emit(out)
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        if matches!(msg, Message::End) {
            self.flush(&[0])?;
            self.emit(out)?;
        }
        out.push(msg);
        Ok(())
    }
}

/// `chunk`'s rows (partitions starting at rows `starts`) with the values of `calls` appended.
fn with_window_values(calls: &[WindowCall], chunk: &RecordBatch, starts: &[usize], schema: &SchemaRef) -> Result<RecordBatch> {
    let mut columns = chunk.columns().to_vec();
    let shape = Shape::of(&calls[0], chunk, starts, calls.iter().any(|c| c.frame.range_offsets()))?;
    for call in calls {
        let values = compute(call, chunk, &shape)?;
        columns.push(if values.data_type() == &call.ty { values } else { arrow::compute::cast(&values, &call.ty)? });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// One key's rows, sorted by time, with their sessions' bounds; rows without a time are in none.
fn sessions(p: &RecordBatch, time: usize, gap: i64, schema: &SchemaRef) -> Result<RecordBatch> {
    let micros = arrow::compute::cast(p.column(time), &DataType::Int64)?;
    let micros = micros.as_primitive::<Int64Type>();
    let rows: Vec<u32> = (0..p.num_rows()).filter(|i| micros.is_valid(*i)).map(|i| i as u32).collect();
    let times: Vec<i64> = rows.iter().map(|i| micros.value(*i as usize)).collect();
    let (mut starts, mut ends) = (vec![0i64; times.len()], vec![0i64; times.len()]);
    let mut first = 0;
    while first < times.len() {
        let mut last = first;
        while last + 1 < times.len() && times[last + 1] - times[last] < gap {
            last += 1;
        }
        for i in first..=last {
            starts[i] = times[first];
            ends[i] = times[last].saturating_add(gap);
        }
        first = last + 1;
    }
    let kept = if rows.len() == p.num_rows() { p.clone() } else { arrow::compute::take_record_batch(p, &UInt32Array::from(rows))? };
    let mut columns = kept.columns().to_vec();
    let window_time: Vec<i64> = ends.iter().map(|e| e - crate::logical::WINDOW_TIME_BEFORE_END).collect();
    for values in [starts, ends, window_time] {
        columns.push(Arc::new(arrow::array::TimestampMicrosecondArray::from(values)));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// Partitions' peer groups (rows with equal ORDER BY keys): for each row, where its partition and
/// its group start and end, and the group's number in its partition.
struct Shape {
    part_start: Vec<usize>,
    part_end: Vec<usize>,
    peer_start: Vec<usize>,
    peer_end: Vec<usize>,
    peer_group: Vec<usize>,
    /// For RANGE frames with offsets: the one ORDER BY key as integers (days, microseconds).
    range: Option<RangeKeys>,
}

/// A partition's ORDER BY key as integers, sorted (descending when `descending`), for RANGE
/// offsets: the rows `[lo, hi)` are those whose key is not NULL.
struct RangeKeys {
    keys: Vec<i64>,
    valid: Vec<bool>,
    lo: usize,
    hi: usize,
    descending: bool,
}

impl RangeKeys {
    fn of(call: &WindowCall, p: &RecordBatch) -> Result<Option<RangeKeys>> {
        let [key] = call.order_by.as_slice() else { return Ok(None) };
        let values = evaluate(&key.expr, p)?;
        let t = values.data_type();
        if !(t.is_integer() || matches!(t, DataType::Date32 | DataType::Timestamp(_, _))) {
            return Ok(None);
        }
        let as_int = arrow::compute::cast(&values, &DataType::Int64)?;
        let ints = as_int.as_primitive::<Int64Type>();
        let valid: Vec<bool> = (0..ints.len()).map(|i| ints.is_valid(i)).collect();
        let lo = valid.iter().position(|v| *v).unwrap_or(valid.len());
        let hi = valid.iter().rposition(|v| *v).map_or(lo, |i| i + 1);
        Ok(Some(RangeKeys { keys: ints.values().to_vec(), valid, lo, hi, descending: key.descending }))
    }

    /// The first row of the non-NULL rows whose key lies past `bound` in the key's order (`after`:
    /// strictly past it; otherwise at or past it).
    fn first_past(&self, bound: i128, after: bool) -> usize {
        let keys = &self.keys[self.lo..self.hi];
        let before = |k: &i64| {
            let k = *k as i128;
            match (self.descending, after) {
                (false, false) => k < bound,
                (false, true) => k <= bound,
                (true, false) => k > bound,
                (true, true) => k >= bound,
            }
        };
        self.lo + keys.partition_point(before)
    }

    /// `k` units before (`-1`) or after (`1`) row `i`'s key, in the key's order.
    fn shifted(&self, i: usize, k: u64, direction: i128) -> i128 {
        let sign = if self.descending { -direction } else { direction };
        self.keys[i] as i128 + sign * k as i128
    }
}

impl Shape {
    /// Partitions start at rows `starts` of `p` (the first at 0). `range`: whether a call has a
    /// RANGE frame with offsets (the calls share their ORDER BY; `p` is then one partition).
    fn of(call: &WindowCall, p: &RecordBatch, starts: &[usize], range: bool) -> Result<Shape> {
        let n = p.num_rows();
        let (mut part_start, mut part_end) = (vec![0; n], vec![n; n]);
        for (k, &start) in starts.iter().enumerate() {
            let end = starts.get(k + 1).copied().unwrap_or(n);
            part_start[start..end].fill(start);
            part_end[start..end].fill(end);
        }
        // Without ORDER BY every row of a partition is a peer of every other.
        let mut peer_start = part_start.clone();
        let mut peer_group = vec![0; n];
        let mut peer_end = part_end.clone();
        if !call.order_by.is_empty() {
            let keys = call.order_by.iter().map(|k| evaluate(&k.expr, p)).collect::<Result<Vec<_>>>()?;
            let converter = RowConverter::new(keys.iter().map(|k| SortField::new(k.data_type().clone())).collect())?;
            let rows = converter.convert_columns(&keys)?;
            for i in 1..n {
                if part_start[i] == i {
                    continue;
                }
                if rows.row(i) == rows.row(i - 1) {
                    peer_start[i] = peer_start[i - 1];
                    peer_group[i] = peer_group[i - 1];
                } else {
                    peer_start[i] = i;
                    peer_group[i] = peer_group[i - 1] + 1;
                }
            }
            for i in (0..n).rev() {
                peer_end[i] = if i + 1 < part_end[i] && peer_start[i + 1] == peer_start[i] { peer_end[i + 1] } else { i + 1 };
            }
        }
        let range = if range { RangeKeys::of(call, p)? } else { None };
        Ok(Shape { part_start, part_end, peer_start, peer_end, peer_group, range })
    }

    /// The rows `[lo, hi)` of row `i`'s frame.
    fn frame(&self, call: &WindowCall, i: usize) -> (usize, usize) {
        let f = call.frame;
        if let (false, Some(r)) = (f.rows, &self.range) {
            return self.range_frame(f, r, i);
        }
        let (first, end) = (self.part_start[i], self.part_end[i]);
        let lo = match f.start {
            FrameBound::UnboundedPreceding => first,
            FrameBound::Preceding(k) => i.saturating_sub(k as usize).max(first),
            FrameBound::CurrentRow if f.rows => i,
            FrameBound::CurrentRow => self.peer_start[i],
            FrameBound::Following(k) => i.saturating_add(k as usize).min(end),
            FrameBound::UnboundedFollowing => end,
        };
        let hi = match f.end {
            FrameBound::UnboundedFollowing => end,
            FrameBound::Following(k) => i.saturating_add(k as usize + 1).min(end),
            FrameBound::CurrentRow if f.rows => i + 1,
            FrameBound::CurrentRow => self.peer_end[i],
            FrameBound::Preceding(k) => (i + 1).saturating_sub(k as usize).max(first),
            FrameBound::UnboundedPreceding => first,
        };
        (lo, hi.max(lo))
    }
}

impl Shape {
    /// Row `i`'s RANGE frame: offsets move along the key's values (a row whose key is NULL has its
    /// NULL peers for an offset bound, as in PostgreSQL and DuckDB).
    /// (Its partition is the whole chunk.)
    fn range_frame(&self, f: crate::logical::Frame, r: &RangeKeys, i: usize) -> (usize, usize) {
        let null = !r.valid[i];
        let n = self.part_end[i];
        let lo = match f.start {
            FrameBound::UnboundedPreceding => 0,
            FrameBound::CurrentRow => self.peer_start[i],
            FrameBound::UnboundedFollowing => n,
            FrameBound::Preceding(_) | FrameBound::Following(_) if null => self.peer_start[i],
            FrameBound::Preceding(k) => r.first_past(r.shifted(i, k, -1), false),
            FrameBound::Following(k) => r.first_past(r.shifted(i, k, 1), false),
        };
        let hi = match f.end {
            FrameBound::UnboundedFollowing => n,
            FrameBound::CurrentRow => self.peer_end[i],
            FrameBound::UnboundedPreceding => 0,
            FrameBound::Preceding(_) | FrameBound::Following(_) if null => self.peer_end[i],
            FrameBound::Preceding(k) => r.first_past(r.shifted(i, k, -1), true),
            FrameBound::Following(k) => r.first_past(r.shifted(i, k, 1), true),
        };
        (lo, hi.max(lo))
    }
}

fn int_arg(call: &WindowCall, k: usize, p: &RecordBatch, default: i64) -> Result<i64> {
    let Some(e) = call.args.get(k) else { return Ok(default) };
    let v = arrow::compute::cast(&evaluate(e, &p.slice(0, 1))?, &DataType::Int64)?;
    let v = v.as_primitive::<Int64Type>();
    if v.is_null(0) {
        return Err(RiffleError::exec(format!("{}(): the offset or bucket count is NULL", call.func.name())));
    }
    Ok(v.value(0))
}

/// Rows `index[i]` of `values` (NULL where `None`).
fn pick(values: &ArrayRef, index: impl Iterator<Item = Option<usize>>) -> Result<ArrayRef> {
    let idx: UInt32Array = index.map(|i| i.map(|i| i as u32)).collect();
    Ok(arrow::compute::take(values, &idx, None)?)
}

fn compute(call: &WindowCall, p: &RecordBatch, shape: &Shape) -> Result<ArrayRef> {
    let n = p.num_rows();
    let ints = |f: &dyn Fn(usize) -> i64| -> ArrayRef { Arc::new(Int64Array::from_iter_values((0..n).map(f))) };
    // Row i's position in its partition, and its partition's size.
    let (at, size) = (|i: usize| i - shape.part_start[i], |i: usize| shape.part_end[i] - shape.part_start[i]);
    Ok(match call.func {
        WindowFunc::RowNumber => ints(&|i| at(i) as i64 + 1),
        WindowFunc::Rank => ints(&|i| at(shape.peer_start[i]) as i64 + 1),
        WindowFunc::DenseRank => ints(&|i| shape.peer_group[i] as i64 + 1),
        WindowFunc::PercentRank => Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| if size(i) <= 1 { 0.0 } else { (shape.peer_start[i] - shape.part_start[i]) as f64 / (size(i) - 1) as f64 }),
        )),
        WindowFunc::CumeDist => Arc::new(Float64Array::from_iter_values(
            (0..n).map(|i| (shape.peer_end[i] - shape.part_start[i]) as f64 / size(i) as f64),
        )),
        WindowFunc::Ntile => {
            let k = int_arg(call, 0, p, 1)?;
            if k <= 0 {
                return Err(RiffleError::exec("ntile(): the number of buckets must be positive"));
            }
            let k = k as usize;
            ints(&|i| {
                let (base, extra) = (size(i) / k, size(i) % k);
                let i = at(i);
                if base == 0 {
                    return i as i64 + 1;
                }
                let big = extra * (base + 1);
                (if i < big { i / (base + 1) } else { extra + (i - big) / base }) as i64 + 1
            })
        }
        WindowFunc::Lag | WindowFunc::Lead => {
            let values = evaluate(&call.args[0], p)?;
            let offset = int_arg(call, 1, p, 1)?;
            let offset = if call.func == WindowFunc::Lag { -offset } else { offset };
            let target = |i: usize| {
                let inside = shape.part_start[i] as i64..shape.part_end[i] as i64;
                Some(i as i64 + offset).filter(|j| inside.contains(j)).map(|j| j as usize)
            };
            let taken = pick(&values, (0..n).map(target))?;
            match call.args.get(2) {
                None => taken,
                Some(d) => {
                    let default = evaluate(d, p)?;
                    let default = if default.len() == n { default } else { pick(&default, (0..n).map(|_| Some(0)))? };
                    let default = arrow::compute::cast(&default, values.data_type())?;
                    let inside = BooleanArray::from_iter((0..n).map(|i| Some(target(i).is_some())));
                    arrow::compute::kernels::zip::zip(&inside, &taken, &default)?
                }
            }
        }
        WindowFunc::FirstValue | WindowFunc::LastValue => {
            let values = evaluate(&call.args[0], p)?;
            let first = call.func == WindowFunc::FirstValue;
            pick(
                &values,
                (0..n).map(|i| {
                    let (lo, hi) = shape.frame(call, i);
                    (lo < hi).then_some(if first { lo } else { hi - 1 })
                }),
            )?
        }
        WindowFunc::Aggregate(f) => aggregate(call, f, p, shape)?,
    })
}

/// An aggregate over each row's frame: sums and counts by prefix sums, min and max by extending the
/// previous row's answer when the frame only grew (running and whole-partition frames).
fn aggregate(call: &WindowCall, f: AggFunc, p: &RecordBatch, shape: &Shape) -> Result<ArrayRef> {
    let n = p.num_rows();
    let frames: Vec<(usize, usize)> = (0..n).map(|i| shape.frame(call, i)).collect();
    if f == AggFunc::CountStar {
        return Ok(Arc::new(Int64Array::from_iter_values(frames.iter().map(|(lo, hi)| (hi - lo) as i64))));
    }
    let values = evaluate(&call.args[0], p)?;
    let mut valid = vec![0i64; n + 1];
    for i in 0..n {
        valid[i + 1] = valid[i] + i64::from(values.is_valid(i));
    }
    let count = |lo: usize, hi: usize| valid[hi] - valid[lo];
    match f {
        AggFunc::Count | AggFunc::CountStar => Ok(Arc::new(Int64Array::from_iter_values(frames.iter().map(|(lo, hi)| count(*lo, *hi))))),
        AggFunc::Sum | AggFunc::Avg => {
            let avg = f == AggFunc::Avg;
            match values.data_type() {
                DataType::Float32 | DataType::Float64 => {
                    let v = arrow::compute::cast(&values, &DataType::Float64)?;
                    let v = v.as_primitive::<Float64Type>();
                    let mut sum = vec![0f64; n + 1];
                    for i in 0..n {
                        sum[i + 1] = sum[i] + if v.is_valid(i) { v.value(i) } else { 0.0 };
                    }
                    Ok(Arc::new(Float64Array::from_iter(frames.iter().map(|(lo, hi)| {
                        let c = count(*lo, *hi);
                        let s = sum[*hi] - sum[*lo];
                        (c > 0).then_some(if avg { s / c as f64 } else { s })
                    }))))
                }
                t => {
                    // Integers and decimals, exactly, as unscaled 128-bit values.
                    let scale = crate::types::decimal_parts(t).map_or(0, |(_, s)| s);
                    let as_i128 = arrow::compute::cast(&values, &DataType::Decimal128(38, scale))?;
                    let v = as_i128.as_primitive::<Decimal128Type>();
                    let mut sum = vec![0i128; n + 1];
                    for i in 0..n {
                        let x = if v.is_valid(i) { v.value(i) } else { 0 };
                        sum[i + 1] = sum[i].checked_add(x).ok_or_else(|| RiffleError::exec("sum() OVER (…) overflowed 38 digits"))?;
                    }
                    let sums = frames.iter().map(|(lo, hi)| (count(*lo, *hi) > 0).then(|| sum[*hi] - sum[*lo]));
                    if avg {
                        let unit = 10f64.powi(scale as i32);
                        return Ok(Arc::new(Float64Array::from_iter(
                            sums.zip(&frames).map(|(s, (lo, hi))| s.map(|s| s as f64 / unit / count(*lo, *hi) as f64)),
                        )));
                    }
                    let d: Decimal128Array = sums.collect();
                    Ok(Arc::new(d.with_precision_and_scale(38, scale)?))
                }
            }
        }
        // The binder lets only count, sum, avg, min and max be window functions.
        AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop | AggFunc::Grouping | AggFunc::AnyValue => {
            Err(RiffleError::NotSupported(format!("{}() as a window function", f.name())))
        }
        AggFunc::Min | AggFunc::Max => {
            let converter = RowConverter::new(vec![SortField::new(values.data_type().clone())])?;
            let rows = converter.convert_columns(std::slice::from_ref(&values))?;
            let better = |a: usize, b: usize| if f == AggFunc::Min { rows.row(a) < rows.row(b) } else { rows.row(a) > rows.row(b) };
            let best_of = |lo: usize, hi: usize, start: Option<usize>| {
                let mut best = start;
                for j in lo..hi {
                    if values.is_valid(j) && best.is_none_or(|b| better(j, b)) {
                        best = Some(j);
                    }
                }
                best
            };
            let mut out = Vec::with_capacity(n);
            let mut previous: Option<(usize, usize, Option<usize>)> = None;
            for (lo, hi) in &frames {
                let best = match previous {
                    // The frame only grew at its end: extend the last answer.
                    Some((plo, phi, pbest)) if plo == *lo && phi <= *hi => best_of(phi, *hi, pbest),
                    _ => best_of(*lo, *hi, None),
                };
                out.push(best);
                previous = Some((*lo, *hi, best));
            }
            pick(&values, out.into_iter())
        }
    }
}
