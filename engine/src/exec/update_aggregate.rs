//! An updating GROUP BY: after each input batch it emits, for every group the batch changed, the
//! change as a changelog (`crate::changelog`): `+I` for a new group, `-U` old row and `+U` new row for
//! a group whose values changed, `-D` for a group whose last row was taken back. The rows it emitted,
//! applied in order, are at every moment the GROUP BY's answer over the input so far.
//!
//! One partition holds every group (the input is gathered into it), so a group's rows leave in the
//! order they changed.
//!
//! Checkpoints: at barrier `e` (aligned by the exchange in front) every live group is written — its
//! key, how many input rows it holds, whether its row stands emitted, its accumulators' states — and
//! read back into the empty table when a job restarts from that checkpoint. A restored group's row is
//! known downstream (the sink committed it with the checkpoint), so its next change is `-U`/`+U`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, Int8Array, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

use super::checkpoint::OperatorCheckpoint;
use super::retract::{self, RetractAccumulator};
use super::Operator;
use crate::changelog::{self, RowKind};
use crate::cse::ExprList;
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, Expr};
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::Message;

/// What to aggregate, fixed at planning.
pub struct UpdateAggSpec {
    pub group: Vec<Expr>,
    pub aggs: Vec<AggCall>,
    /// The input's last column is a row kind whose retractions are taken back.
    pub input_changelog: bool,
    pub input_schema: SchemaRef,
    /// The output: group keys, aggregates, `op`.
    pub schema: SchemaRef,
    /// How long a group is kept after its last change (Flink's `table.exec.state.ttl`, processing
    /// time); `None` keeps every group.
    pub state_ttl: Option<std::time::Duration>,
}

pub struct UpdateAggregateOp {
    spec: Arc<UpdateAggSpec>,
    args: ExprList,
    pool: Arc<MemoryPool>,
    checkpoint: Option<OperatorCheckpoint>,
    /// Made on first use (making it can fail).
    state: Option<Groups>,
}

/// Every live group: its key, its live input rows, whether a row of it stands emitted, its aggregates.
struct Groups {
    keys: Option<RowConverter>,
    slot_of: HashMap<Box<[u8]>, u32>,
    key_of: Vec<Box<[u8]>>,
    rows: Vec<i64>,
    emitted: Vec<bool>,
    free: Vec<u32>,
    accs: Vec<Box<dyn RetractAccumulator>>,
    /// Encodes aggregate values to tell whether an update changed them.
    values: Option<RowConverter>,
    touched: Vec<bool>,
    key_bytes: usize,
    reservation: MemoryReservation,
    /// With a state TTL: when each slot's group last changed, and the changes in order (a slot
    /// expires when its oldest entry here is still its last change).
    changed: Vec<Option<std::time::Instant>>,
    changes: std::collections::VecDeque<(std::time::Instant, u32)>,
}

impl UpdateAggregateOp {
    pub fn new(spec: Arc<UpdateAggSpec>, pool: Arc<MemoryPool>, checkpoint: Option<OperatorCheckpoint>) -> UpdateAggregateOp {
        let args: Vec<Expr> = spec.aggs.iter().flat_map(|a| a.args.iter().cloned()).collect();
        let args = ExprList::new(&args, spec.input_schema.fields().len());
        UpdateAggregateOp { spec, args, pool, checkpoint, state: None }
    }

    /// The groups, made on first use, with a restarted job's checkpointed ones read back.
    fn groups(&mut self) -> Result<&mut Groups> {
        if self.state.is_none() {
            let mut groups = Groups::new(&self.spec, &self.pool)?;
            if let Some(dir) = self.checkpoint.as_ref().and_then(|c| c.restore_dir()) {
                groups.restore(&dir.join("groups.arrow"), self.spec.state_ttl)?;
            }
            self.state = Some(groups);
        }
        self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))
    }
}

impl Groups {
    fn new(spec: &UpdateAggSpec, pool: &Arc<MemoryPool>) -> Result<Groups> {
        let key_types: Vec<DataType> = spec.group.iter().map(|g| g.data_type(&spec.input_schema)).collect();
        let keys = if key_types.is_empty() { None } else { Some(RowConverter::new(key_types.into_iter().map(SortField::new).collect())?) };
        let accs = spec
            .aggs
            .iter()
            .map(|a| {
                let arg = a.args.first().map(|e| retract::argument_type(a, &e.data_type(&spec.input_schema)));
                retract::create(a, arg.as_ref())
            })
            .collect::<Result<Vec<_>>>()?;
        let value_types: Vec<SortField> = spec.aggs.iter().map(|a| SortField::new(a.ty.clone())).collect();
        let values = if value_types.is_empty() { None } else { Some(RowConverter::new(value_types)?) };
        let mut groups = Groups {
            keys,
            slot_of: HashMap::new(),
            key_of: vec![],
            rows: vec![],
            emitted: vec![],
            free: vec![],
            accs,
            values,
            touched: vec![],
            key_bytes: 0,
            reservation: pool.reservation("UpdateAggregate", false),
            changed: vec![],
            changes: Default::default(),
        };
        if groups.keys.is_none() {
            // Without GROUP BY there is one group, always there.
            groups.grow_to(1);
        }
        Ok(groups)
    }

    fn grow_to(&mut self, n: usize) {
        self.key_of.resize_with(n, Default::default);
        self.rows.resize(n, 0);
        self.emitted.resize(n, false);
        self.touched.resize(n, false);
        self.changed.resize(n, None);
        for a in &mut self.accs {
            a.resize(n);
        }
    }

    /// The slot of every row's group, making slots for new groups.
    fn slots(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        let Some(converter) = &self.keys else { return Ok(vec![0; rows]) };
        let encoded = converter.convert_columns(keys)?;
        let mut out = Vec::with_capacity(rows);
        for row in encoded.iter() {
            let slot = match self.slot_of.get(row.as_ref()) {
                Some(s) => *s,
                None => {
                    let s = match self.free.pop() {
                        Some(s) => s,
                        None => {
                            let s = self.key_of.len() as u32;
                            self.grow_to(s as usize + 1);
                            s
                        }
                    };
                    let key: Box<[u8]> = row.as_ref().into();
                    self.key_bytes += key.len() * 2 + 32;
                    self.slot_of.insert(key.clone(), s);
                    self.key_of[s as usize] = key;
                    s
                }
            };
            out.push(slot);
        }
        Ok(out)
    }

    /// Forgets, without a word downstream, every group unchanged for `ttl` (as Flink's state TTL
    /// clears state: a later row of the group starts it anew, with `+I`).
    fn expire(&mut self, now: std::time::Instant, ttl: std::time::Duration) {
        while let Some((at, slot)) = self.changes.front().copied() {
            if now.saturating_duration_since(at) < ttl {
                break;
            }
            self.changes.pop_front();
            if self.changed[slot as usize] == Some(at) {
                self.release(slot);
            }
        }
    }

    /// The slot holds no group any more.
    fn release(&mut self, slot: u32) {
        let s = slot as usize;
        self.changed[s] = None;
        self.emitted[s] = false;
        self.rows[s] = 0;
        for a in &mut self.accs {
            a.reset(slot);
        }
        if self.keys.is_some() {
            let key = std::mem::take(&mut self.key_of[s]);
            self.key_bytes -= key.len() * 2 + 32;
            self.slot_of.remove(&key);
            self.free.push(slot);
        }
    }

    fn evaluate(&self, slots: &[u32]) -> Result<Vec<ArrayRef>> {
        self.accs.iter().map(|a| a.evaluate(slots)).collect()
    }

    fn encode_values(&self, values: &[ArrayRef]) -> Result<Option<Rows>> {
        Ok(match &self.values {
            Some(c) => Some(c.convert_columns(values)?),
            None => None,
        })
    }

    /// Every live group's slot, in slot order.
    fn live(&self) -> Vec<u32> {
        if self.keys.is_none() {
            return vec![0];
        }
        let mut free = vec![false; self.key_of.len()];
        for s in &self.free {
            free[*s as usize] = true;
        }
        (0..self.key_of.len() as u32).filter(|s| !free[*s as usize]).collect()
    }

    /// Every live group (key, input rows, emitted, accumulator states), as one batch.
    fn save(&self) -> Result<RecordBatch> {
        let live = self.live();
        let mut columns: Vec<(String, ArrayRef)> = vec![
            ("key".into(), Arc::new(BinaryArray::from_iter_values(live.iter().map(|s| &self.key_of[*s as usize][..])))),
            ("rows".into(), Arc::new(Int64Array::from_iter_values(live.iter().map(|s| self.rows[*s as usize])))),
            ("emitted".into(), Arc::new(BooleanArray::from_iter(live.iter().map(|s| Some(self.emitted[*s as usize]))))),
        ];
        for (i, acc) in self.accs.iter().enumerate() {
            for (j, c) in acc.save(&live)?.into_iter().enumerate() {
                columns.push((format!("agg{i}_{j}"), c));
            }
        }
        Ok(RecordBatch::try_from_iter(columns)?)
    }

    /// Reads the groups `save` wrote into the (new, empty) table.
    fn restore(&mut self, path: &std::path::Path, ttl: Option<std::time::Duration>) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let damaged = || {
            RiffleError::exec(format!(
                "checkpoint: {} is not this updating aggregate's state; remove the checkpoint directory to start afresh",
                path.display()
            ))
        };
        let now = std::time::Instant::now();
        for b in super::checkpoint::read_batches(path)? {
            let keys = b.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(damaged)?;
            let rows = b.column_by_name("rows").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(damaged)?;
            let emitted = b.column_by_name("emitted").and_then(|c| c.as_boolean_opt()).ok_or_else(damaged)?;
            let slots: Vec<u32> = match self.keys {
                None if b.num_rows() == 1 => vec![0],
                None => return Err(damaged()),
                Some(_) => {
                    let start = self.key_of.len();
                    self.grow_to(start + b.num_rows());
                    for i in 0..b.num_rows() {
                        let key: Box<[u8]> = keys.value(i).into();
                        self.key_bytes += key.len() * 2 + 32;
                        self.slot_of.insert(key.clone(), (start + i) as u32);
                        self.key_of[start + i] = key;
                    }
                    (start as u32..(start + b.num_rows()) as u32).collect()
                }
            };
            for (i, s) in slots.iter().enumerate() {
                self.rows[*s as usize] = rows.value(i);
                self.emitted[*s as usize] = emitted.value(i);
                if ttl.is_some() {
                    // Processing time does not survive a restart: a restored group's clock starts anew.
                    self.changed[*s as usize] = Some(now);
                    self.changes.push_back((now, *s));
                }
            }
            let mut column = 3;
            for acc in &mut self.accs {
                let width = acc.width();
                let state = b.columns().get(column..column + width).ok_or_else(damaged)?;
                acc.load(&slots, state)?;
                column += width;
            }
        }
        let size = self.size();
        if !self.reservation.try_resize(size) {
            return Err(self.reservation.out_of_memory(size.saturating_sub(self.reservation.size())));
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.key_bytes
            + self.key_of.capacity() * 40
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
            + (self.changed.capacity() + self.changes.capacity()) * 24
    }
}

/// Where an output row's aggregate values come from.
#[derive(Clone, Copy)]
enum From {
    Old(usize),
    New(usize),
}

impl UpdateAggregateOp {
    /// The rows of `changes` (slot, values, kind) as one output batch.
    fn output(&self, groups: &Groups, changes: &[(u32, From, RowKind)], old: &[ArrayRef], new: &[ArrayRef]) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.spec.schema.fields().len());
        if let Some(converter) = &groups.keys {
            let parser = converter.parser();
            let rows = changes.iter().map(|(slot, _, _)| parser.parse(&groups.key_of[*slot as usize]));
            columns.extend(converter.convert_rows(rows)?);
        }
        let old_len = old.first().map_or(0, |a| a.len());
        let indices = UInt32Array::from_iter_values(changes.iter().map(|(_, from, _)| match from {
            From::Old(i) => *i as u32,
            From::New(j) => (old_len + j) as u32,
        }));
        for (o, n) in old.iter().zip(new) {
            let both = arrow::compute::concat(&[o.as_ref(), n.as_ref()])?;
            columns.push(arrow::compute::take(&both, &indices, None)?);
        }
        columns.push(Arc::new(Int8Array::from_iter_values(changes.iter().map(|(_, _, k)| k.code()))));
        let columns = columns
            .into_iter()
            .zip(self.spec.schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(changes.len()));
        Ok(RecordBatch::try_new_with_options(self.spec.schema.clone(), columns, &options)?)
    }
}

impl Operator for UpdateAggregateOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let n = batch.num_rows();
        let signs = if self.spec.input_changelog { changelog::signs(&batch)? } else { vec![1; n] };
        let keys = self
            .spec
            .group
            .iter()
            .map(|g| {
                // Keys a scan hands out dictionary-encoded are grouped by value here.
                let key = evaluate(g, &batch)?;
                let want = g.data_type(&self.spec.input_schema);
                Ok(if key.data_type() == &want { key } else { arrow::compute::cast(&key, &want)? })
            })
            .collect::<Result<Vec<_>>>()?;
        let values = self.args.evaluate(&batch)?;
        let spec = self.spec.clone();
        let groups = self.groups()?;
        let now = std::time::Instant::now();
        let ttl = spec.state_ttl.filter(|_| groups.keys.is_some());
        if let Some(ttl) = ttl {
            groups.expire(now, ttl);
        }
        let slots = groups.slots(&keys, n)?;

        let mut touched = Vec::new();
        for s in &slots {
            if !std::mem::replace(&mut groups.touched[*s as usize], true) {
                touched.push(*s);
            }
        }
        for s in &touched {
            groups.touched[*s as usize] = false;
        }
        if ttl.is_some() {
            for s in &touched {
                groups.changed[*s as usize] = Some(now);
                groups.changes.push_back((now, *s));
            }
        }
        let was_emitted: Vec<u32> = touched.iter().copied().filter(|s| groups.emitted[*s as usize]).collect();
        let old = groups.evaluate(&was_emitted)?;

        for (s, sign) in slots.iter().zip(&signs) {
            groups.rows[*s as usize] += sign;
        }
        let mut values = values.into_iter();
        for (acc, call) in groups.accs.iter_mut().zip(&spec.aggs) {
            let arg = match call.args.len() {
                0 => None,
                _ => {
                    let v = values.next().ok_or_else(|| RiffleError::exec("aggregate argument count mismatch"))?;
                    let want = retract::argument_type(call, v.data_type());
                    Some(if v.data_type() == &want { v } else { arrow::compute::cast(&v, &want)? })
                }
            };
            acc.update(&slots, &signs, arg.as_ref())?;
        }

        let live: Vec<u32> = touched.iter().copied().filter(|s| groups.rows[*s as usize] > 0).collect();
        let new = groups.evaluate(&live)?;
        let (old_rows, new_rows) = (groups.encode_values(&old)?, groups.encode_values(&new)?);
        let mut changes = Vec::new();
        let mut released = Vec::new();
        let (mut i, mut j) = (0, 0);
        for s in touched {
            let had = groups.emitted[s as usize];
            let has = groups.rows[s as usize] > 0;
            match (had, has) {
                (true, true) => {
                    let same = match (&old_rows, &new_rows) {
                        (Some(o), Some(nw)) => o.row(i) == nw.row(j),
                        _ => true,
                    };
                    if !same {
                        changes.push((s, From::Old(i), RowKind::UpdateBefore));
                        changes.push((s, From::New(j), RowKind::UpdateAfter));
                    }
                }
                (true, false) => changes.push((s, From::Old(i), RowKind::Delete)),
                (false, true) => changes.push((s, From::New(j), RowKind::Insert)),
                (false, false) => {}
            }
            i += usize::from(had);
            j += usize::from(has);
            if has {
                groups.emitted[s as usize] = true;
            } else {
                released.push(s);
            }
        }
        let groups = self.state.as_ref().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
        if !changes.is_empty() {
            out.push(Message::Batch(self.output(groups, &changes, &old, &new)?));
        }
        let groups = self.groups()?;
        for s in released {
            groups.release(s);
        }
        let size = groups.size();
        if !groups.reservation.try_resize(size) {
            return Err(groups.reservation.out_of_memory(size.saturating_sub(groups.reservation.size())));
        }
        Ok(())
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        match msg {
            // Updates carry no event time: what follows cannot wait on it.
            Message::Watermark(_) => {}
            Message::Barrier(e) => {
                if let Some(ck) = self.checkpoint.clone() {
                    let path = ck.coordinator.state_dir(e, &ck.name)?.join("groups.arrow");
                    // Taken now, written while the next rows are aggregated.
                    let groups = self.groups()?.save()?;
                    ck.coordinator.save_async(ck.component, e, move || super::checkpoint::write_batches(&path, &[groups]))?;
                }
                out.push(Message::Barrier(e));
            }
            Message::End => {
                // Over a bounded input, a GROUP BY without keys has its one row even when no row came.
                let groups = self.groups()?;
                if groups.keys.is_none() && !groups.emitted[0] {
                    let (none, initial) = (groups.evaluate(&[])?, groups.evaluate(&[0])?);
                    let groups = self.state.as_ref().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
                    out.push(Message::Batch(self.output(groups, &[(0, From::New(0), RowKind::Insert)], &none, &initial)?));
                }
                if let Some(ck) = &self.checkpoint {
                    ck.coordinator.retire(ck.component)?;
                }
                out.push(Message::End);
            }
            other => out.push(other),
        }
        Ok(())
    }
}
