//! An updating GROUP BY: after each input batch it emits, for every group the batch changed, the
//! change as a changelog (`crate::changelog`): `+I` for a new group, `-U` old row and `+U` new row for
//! a group whose values changed, `-D` for a group whose last row was taken back. The rows it emitted,
//! applied in order, are at every moment the GROUP BY's answer over the input so far.
//!
//! One partition holds every group (the input is gathered into it), so a group's rows leave in the
//! order they changed.
//!
//! Checkpoints: at barrier `e` (aligned by the exchange in front) groups are saved — each one's key,
//! how many input rows it holds, whether its row stands emitted, its accumulators' states —
//! incrementally: the groups changed and the keys released since the last checkpoint go into new
//! shared files, which a checkpoint names after the earlier ones it still needs; a full snapshot
//! replaces the chain when it would hold more than twice the live groups or `checkpoint::MAX_CHAIN` files. A
//! restart applies the chain in order to the empty table. A restored group's row is known downstream
//! (the sink committed it with the checkpoint), so its next change is `-U`/`+U`.

use hashbrown::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int64Array, Int8Array, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};

use super::checkpoint::{OperatorCheckpoint, SharedFiles};
use super::keyed_spill::{batches_of, bucket_of, split_rows, write_biggest_held, SpilledBucket, BUCKETS, HELD_IN_MEMORY, STATE_BATCH_ROWS};
use super::retract::{self, RetractAccumulator};
use super::{OpMetrics, Operator};
use crate::changelog::{self, RowKind};
use crate::cse::ExprList;
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, Expr};
use crate::memory::{MemoryPool, MemoryReservation, SpillFile, SpillManager, SpillWriter};
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
    spill: Arc<SpillManager>,
    metrics: Arc<OpMetrics>,
    checkpoint: Option<OperatorCheckpoint>,
    /// Made on first use (making it can fail).
    state: Option<Groups>,
    /// The buckets of keys whose groups are on disk (`keyed_spill`), by bucket; empty until one is.
    spilled: Vec<Option<SpilledBucket>>,
    /// A restored job's held input rows (files of its checkpoint), applied before anything else.
    replay: Vec<std::path::PathBuf>,
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
    /// Each slot's bucket of keys (`keyed_spill`; `NO_GROUP` for a free slot) and each bucket's groups.
    bucket: Vec<u8>,
    bucket_groups: [usize; BUCKETS],
    key_bytes: usize,
    reservation: MemoryReservation,
    /// With a state TTL: when each slot's group last changed, and the changes in order (a slot
    /// expires when its oldest entry here is still its last change).
    changed: Vec<Option<std::time::Instant>>,
    changes: std::collections::VecDeque<(std::time::Instant, u32)>,
    /// Incremental checkpoints: the slots changed and the keys released since the last one, and
    /// the shared files the last one named, in the order a restore applies them, with their rows.
    dirty: Vec<bool>,
    dirty_slots: Vec<u32>,
    released: Vec<Box<[u8]>>,
    chain: Vec<(String, usize)>,
    shared: Option<Arc<SharedFiles>>,
}

impl UpdateAggregateOp {
    pub fn new(
        spec: Arc<UpdateAggSpec>,
        memory: (Arc<MemoryPool>, Arc<SpillManager>),
        metrics: Arc<OpMetrics>,
        checkpoint: Option<OperatorCheckpoint>,
    ) -> UpdateAggregateOp {
        let args: Vec<Expr> = spec.aggs.iter().flat_map(|a| a.args.iter().cloned()).collect();
        let args = ExprList::new(&args, spec.input_schema.fields().len());
        let (pool, spill) = memory;
        UpdateAggregateOp { spec, args, pool, spill, metrics, checkpoint, state: None, spilled: vec![], replay: vec![] }
    }

    /// The groups, made on first use, with a restarted job's checkpointed ones read back.
    fn groups(&mut self) -> Result<&mut Groups> {
        if self.state.is_none() {
            let mut groups = Groups::new(&self.spec, &self.pool)?;
            if let Some(ck) = &self.checkpoint {
                let (mut chain, mut held) = (vec![], vec![]);
                if let Some(dir) = ck.restore_dir() {
                    if let Some(doc) = super::checkpoint::read_json(&dir.join("state.json"))? {
                        let names = |field: &str| -> Option<Vec<String>> {
                            Some(doc.get(field)?.as_array()?.iter().filter_map(|n| n.as_str().map(str::to_string)).collect())
                        };
                        chain = names("files").ok_or_else(|| damaged(&dir))?;
                        // Checkpoints of earlier versions held no rows.
                        held = names("held").unwrap_or_default();
                    }
                }
                let shared = SharedFiles::open(&ck.coordinator, &ck.name, &[chain.clone(), held.clone()].concat())?;
                self.replay = held.iter().map(|f| shared.path(f)).collect();
                groups.shared = Some(shared);
                self.state = Some(groups);
                self.restore_by_bucket(&chain)?;
            } else {
                self.state = Some(groups);
            }
        }
        self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))
    }

    /// Applies the files a checkpoint names, in order, to the (new, empty) groups one bucket of keys
    /// at a time, within the memory budget: each file's rows are first split by bucket into spill files, then
    /// each bucket's rows are applied in the files' order and the state counted, writing buckets
    /// already restored to disk while it is over its share. A restore needs no more memory than the
    /// job that wrote the checkpoint.
    fn restore_by_bucket(&mut self, chain: &[String]) -> Result<()> {
        let groups = self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
        let shared = groups.shared.clone().ok_or_else(|| RiffleError::exec("checkpoint files missing"))?;
        // Per bucket, its rows of each file in order: (the file, its rows of the bucket).
        let mut parts: Vec<Vec<(&String, Arc<SpillFile>)>> = (0..BUCKETS).map(|_| vec![]).collect();
        for file in chain {
            let path = shared.path(file);
            let mut writers: Vec<Option<SpillWriter>> = (0..BUCKETS).map(|_| None).collect();
            let mut rows = 0;
            for batch in super::checkpoint::batches_in(&path)? {
                let batch = batch?;
                rows += batch.num_rows();
                let keys = batch.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| damaged(&path))?;
                let buckets: Vec<usize> = keys.iter().map(|k| bucket_of(k.unwrap_or_default())).collect();
                for (b, part) in split_rows(&batch, &buckets)? {
                    let writer = match &mut writers[b] {
                        Some(w) => w,
                        None => writers[b].insert(self.spill.writer(&part.schema())?),
                    };
                    writer.write(&part)?;
                }
            }
            for (b, writer) in writers.into_iter().enumerate() {
                if let Some(w) = writer {
                    parts[b].push((file, Arc::new(w.finish()?)));
                }
            }
            groups.chain.push((file.clone(), rows));
        }
        let ttl = self.spec.state_ttl;
        for bucket in parts {
            let groups = self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
            for (file, rows) in &bucket {
                for batch in batches_of(std::slice::from_ref(rows)) {
                    let batch = batch?;
                    let applied = if file.starts_with("released-") { groups.release_keys(&batch) } else { groups.load_batch(&batch, ttl).map(drop) };
                    applied.map_err(|_| damaged(&shared.path(file)))?;
                }
            }
            drop(bucket);
            self.account()?;
        }
        // Replaced and released keys of the restore are no changes of this run.
        if let Some(groups) = self.state.as_mut() {
            groups.released.clear();
        }
        Ok(())
    }

    /// Makes the state (restoring a restarted job's), then applies the input rows its checkpoint held.
    fn ready(&mut self, out: &mut Vec<Message>) -> Result<()> {
        if self.state.is_none() {
            self.groups()?;
            self.account()?;
        }
        for path in std::mem::take(&mut self.replay) {
            for rows in super::checkpoint::batches_in(&path)? {
                self.route(rows?, out)?;
            }
            self.account()?;
        }
        Ok(())
    }

    /// The group keys of `batch`'s rows, as the spec types them.
    fn keys(&self, batch: &RecordBatch) -> Result<Vec<ArrayRef>> {
        self.spec
            .group
            .iter()
            .map(|g| {
                // Keys a scan hands out dictionary-encoded are grouped by value here.
                let key = evaluate(g, batch)?;
                let want = g.data_type(&self.spec.input_schema);
                Ok(if key.data_type() == &want { key } else { arrow::compute::cast(&key, &want)? })
            })
            .collect()
    }

    /// Applies the rows of groups in memory and holds those of groups on disk.
    fn route(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if self.spilled.iter().all(Option::is_none) {
            return self.apply(batch, out);
        }
        let keys = self.keys(&batch)?;
        let converter = self.groups()?.keys.as_ref().ok_or_else(|| RiffleError::exec("only grouped aggregates spill"))?;
        let encoded = converter.convert_columns(&keys)?;
        let buckets: Vec<usize> = encoded.iter().map(|k| bucket_of(k.as_ref())).collect();
        let in_memory = BooleanArray::from_iter(buckets.iter().map(|b| Some(self.spilled[*b].is_none())));
        let on_disk = arrow::compute::not(&in_memory)?;
        if in_memory.true_count() > 0 {
            self.apply(arrow::compute::filter_record_batch(&batch, &in_memory)?, out)?;
        }
        if on_disk.true_count() > 0 {
            let held = arrow::compute::filter_record_batch(&batch, &on_disk)?;
            let held_buckets: Vec<usize> = buckets.iter().copied().filter(|b| self.spilled[*b].is_some()).collect();
            for (b, rows) in split_rows(&held, &held_buckets)? {
                if let Some(bucket) = &mut self.spilled[b] {
                    bucket.hold(rows);
                }
            }
        }
        Ok(())
    }

    /// Counts the state in the pool. A grouped aggregate over its share writes its biggest bucket of
    /// groups to disk, one bucket at a time until it fits, and held rows beyond `HELD_IN_MEMORY` (or
    /// once no group is left in memory); what it must keep is counted anyway.
    fn account(&mut self) -> Result<()> {
        loop {
            let held: usize = self.spilled.iter().flatten().map(|b| b.held_in_memory()).sum();
            let groups = self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
            let size = groups.size() + held;
            self.metrics.note_bytes(size);
            if groups.keys.is_none() {
                // One group, which cannot spill.
                return groups.reservation.resize(size);
            }
            if held <= HELD_IN_MEMORY && groups.reservation.try_resize(size) {
                return Ok(());
            }
            let live = groups.live_count();
            if held > HELD_IN_MEMORY || live == 0 {
                if !write_biggest_held(self.spilled.iter_mut().flatten(), &self.spill, &self.metrics)? {
                    groups.reservation.resize_anyway(size);
                    return Ok(());
                }
            } else if groups.free.len() > live {
                // Slots freed by buckets written out are reused, not given back: more free than
                // live ones, the groups move into fresh slots.
                groups.compact(&self.spec, &self.pool)?;
            } else {
                self.evict()?;
            }
        }
    }

    /// Writes the bucket with the most groups in memory to disk.
    fn evict(&mut self) -> Result<()> {
        let groups = self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
        let Some(b) = (0..BUCKETS).max_by_key(|b| groups.bucket_groups[*b]) else { return Ok(()) };
        let slots = &groups.bucket_slots(b);
        let state = slots.chunks(STATE_BATCH_ROWS).map(|c| groups.save(c)).collect::<Result<Vec<_>>>()?;
        // Unchanged since the last checkpoint, the groups are in its files as they are.
        let in_checkpoint = groups.shared.is_some() && slots.iter().all(|s| !groups.dirty[*s as usize]);
        self.spilled.resize_with(BUCKETS, || None);
        self.spilled[b] = Some(SpilledBucket::write(state, in_checkpoint, &self.spill, &self.metrics)?);
        for s in slots {
            groups.forget(*s);
        }
        Ok(())
    }

    /// Loads the buckets on disk whose held rows are due (all of them at the end of input), applying
    /// those rows; one bucket at a time, each counted (and spilled again if need be) before the next.
    fn load_due(&mut self, all: bool, out: &mut Vec<Message>) -> Result<()> {
        let now = std::time::Instant::now();
        for b in 0..self.spilled.len() {
            let due = self.spilled[b].as_ref().is_some_and(|s| if all { s.has_held() } else { s.due(now) });
            if !due {
                continue;
            }
            let Some(bucket) = self.spilled[b].take() else { continue };
            let in_checkpoint = bucket.in_checkpoint;
            let (state, held_files, held) = bucket.load();
            let ttl = self.spec.state_ttl;
            let groups = self.groups()?;
            for batch in batches_of(&state) {
                let slots = groups.load_batch(&batch?, ttl)?;
                if !in_checkpoint {
                    for s in slots {
                        groups.touch(s);
                    }
                }
            }
            drop(state);
            // Applied a few thousand rows at a time, not in the slivers they were held in (each
            // apply emits one change per group it touched).
            let (mut gathered, mut gathered_rows): (Vec<RecordBatch>, usize) = (vec![], 0);
            for rows in batches_of(&held_files).chain(held.into_iter().map(Ok)) {
                let rows = rows?;
                if gathered.first().is_some_and(|g| g.schema() != rows.schema()) || gathered_rows >= APPLY_ROWS {
                    self.apply(arrow::compute::concat_batches(&gathered[0].schema(), &std::mem::take(&mut gathered))?, out)?;
                    gathered_rows = 0;
                }
                gathered_rows += rows.num_rows();
                gathered.push(rows);
            }
            if let Some(first) = gathered.first() {
                self.apply(arrow::compute::concat_batches(&first.schema(), &gathered)?, out)?;
            }
            self.account()?;
        }
        Ok(())
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
                retract::create(a, arg.as_ref(), spec.input_changelog)
            })
            .collect::<Result<Vec<_>>>()?;
        let value_types: Vec<SortField> = spec.aggs.iter().map(|a| SortField::new(a.ty.clone())).collect();
        let values = if value_types.is_empty() { None } else { Some(RowConverter::new(value_types)?) };
        let spillable = keys.is_some();
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
            bucket: vec![],
            bucket_groups: [0; BUCKETS],
            key_bytes: 0,
            // Grouped, the groups can spill by bucket (`UpdateAggregateOp::evict`).
            reservation: pool.reservation("UpdateAggregate", spillable),
            changed: vec![],
            changes: Default::default(),
            dirty: vec![],
            dirty_slots: vec![],
            released: vec![],
            chain: vec![],
            shared: None,
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
        self.bucket.resize(n, NO_GROUP);
        self.changed.resize(n, None);
        self.dirty.resize(n, false);
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
                None => self.new_slot(row.as_ref().into()),
            };
            out.push(slot);
        }
        Ok(out)
    }

    /// A slot (a free one, or a new one) for the group of `key`, which has none.
    fn new_slot(&mut self, key: Box<[u8]>) -> u32 {
        let s = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.key_of.len() as u32;
                self.grow_to(s as usize + 1);
                s
            }
        };
        self.key_bytes += key.len() * 2 + 32;
        let b = bucket_of(&key);
        self.bucket[s as usize] = b as u8;
        self.bucket_groups[b] += 1;
        self.slot_of.insert(key.clone(), s);
        self.key_of[s as usize] = key;
        s
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

    /// The slot holds no group any more (the group is gone: a checkpoint records its key's release).
    fn release(&mut self, slot: u32) {
        if let Some(key) = self.forget(slot) {
            if self.shared.is_some() {
                self.released.push(key);
            }
        }
    }

    /// Empties the slot (its group is gone, or was written to disk); its key, if it had one.
    fn forget(&mut self, slot: u32) -> Option<Box<[u8]>> {
        let s = slot as usize;
        self.changed[s] = None;
        self.emitted[s] = false;
        self.rows[s] = 0;
        for a in &mut self.accs {
            a.reset(slot);
        }
        self.dirty[s] = false;
        self.keys.as_ref()?;
        self.bucket_groups[self.bucket[s] as usize] -= 1;
        self.bucket[s] = NO_GROUP;
        let key = std::mem::take(&mut self.key_of[s]);
        self.key_bytes -= key.len() * 2 + 32;
        self.slot_of.remove(&key);
        self.free.push(slot);
        Some(key)
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
        (0..self.bucket.len() as u32).filter(|s| self.bucket[*s as usize] != NO_GROUP).collect()
    }

    /// The slots of bucket `b`'s groups.
    fn bucket_slots(&self, b: usize) -> Vec<u32> {
        (0..self.bucket.len() as u32).filter(|s| self.bucket[*s as usize] as usize == b).collect()
    }

    /// Marks `slot` changed since the last checkpoint.
    fn touch(&mut self, slot: u32) {
        if self.shared.is_some() && !std::mem::replace(&mut self.dirty[slot as usize], true) {
            self.dirty_slots.push(slot);
        }
    }

    /// The state as of barrier `e`, incrementally: the groups changed and the keys released since the
    /// last checkpoint go into new shared files (released keys first: a key released and then made
    /// again is the later group), named after those of the last checkpoint, and so does the state of
    /// each bucket written to disk since (`spilled`); once the files named would hold more than twice
    /// the live groups, or there are `checkpoint::MAX_CHAIN` of them, all live groups go into new
    /// files instead (compaction). Input rows held for buckets on disk go into files of their own,
    /// applied after a restore. Returns the files to write (each from spill files, then batches), the
    /// names the checkpoint lists in order, and the held rows' files.
    fn snapshot(&mut self, e: u64, spilled: &mut [Option<SpilledBucket>]) -> Result<(Vec<ToWrite>, Vec<String>, Vec<String>)> {
        let on_disk = spilled.iter().flatten();
        let live_groups = self.live_count() + on_disk.clone().map(|b| b.state_rows()).sum::<usize>();
        let unsaved = on_disk.filter(|b| !b.in_checkpoint).map(|b| b.state_rows()).sum::<usize>();
        let dirty: Vec<u32> = std::mem::take(&mut self.dirty_slots).into_iter().filter(|s| std::mem::take(&mut self.dirty[*s as usize])).collect();
        let released = std::mem::take(&mut self.released);
        let named: usize = self.chain.iter().map(|(_, rows)| rows).sum();
        let mut write: Vec<ToWrite> = Vec::new();
        if super::checkpoint::compact_now(self.chain.len(), named, dirty.len() + released.len() + unsaved, live_groups) {
            let live = self.live();
            self.chain.clear();
            let file = format!("groups-{e}.arrow");
            self.chain.push((file.clone(), live.len()));
            write.push((file, vec![], vec![self.save(&live)?]));
            for b in spilled.iter_mut().flatten() {
                b.in_checkpoint = false;
            }
        } else {
            if !released.is_empty() {
                let file = format!("released-{e}.arrow");
                let keys = RecordBatch::try_from_iter([("key", Arc::new(BinaryArray::from_iter_values(released.iter())) as ArrayRef)])?;
                self.chain.push((file.clone(), released.len()));
                write.push((file, vec![], vec![keys]));
            }
            if !dirty.is_empty() {
                let file = format!("groups-{e}.arrow");
                self.chain.push((file.clone(), dirty.len()));
                write.push((file, vec![], vec![self.save(&dirty)?]));
            }
        }
        // The buckets written to disk since, into one file (the chain grows by a few files a checkpoint).
        let unsaved: Vec<&mut SpilledBucket> = spilled.iter_mut().flatten().filter(|b| !b.in_checkpoint).collect();
        let rows: usize = unsaved.iter().map(|b| b.state_rows()).sum();
        if rows > 0 {
            let file = format!("spilled-{e}.arrow");
            self.chain.push((file.clone(), rows));
            write.push((file, unsaved.iter().flat_map(|b| b.state_files().iter().cloned()).collect(), vec![]));
        }
        let mut held = vec![];
        for (i, bucket) in spilled.iter_mut().enumerate() {
            let Some(bucket) = bucket else { continue };
            bucket.in_checkpoint = true;
            if bucket.has_held() {
                let file = format!("held-{e}-{i}.arrow");
                let (files, batches) = bucket.held();
                held.push(file.clone());
                write.push((file, files, batches));
            }
        }
        Ok((write, self.chain.iter().map(|(f, _)| f.clone()).collect(), held))
    }

    /// The groups of `slots` (key, input rows, emitted, accumulator states), as one batch.
    fn save(&self, live: &[u32]) -> Result<RecordBatch> {
        let mut columns: Vec<(String, ArrayRef)> = vec![
            ("key".into(), Arc::new(BinaryArray::from_iter_values(live.iter().map(|s| &self.key_of[*s as usize][..])))),
            ("rows".into(), Arc::new(Int64Array::from_iter_values(live.iter().map(|s| self.rows[*s as usize])))),
            ("emitted".into(), Arc::new(BooleanArray::from_iter(live.iter().map(|s| Some(self.emitted[*s as usize]))))),
        ];
        for (i, acc) in self.accs.iter().enumerate() {
            for (j, c) in acc.save(live)?.into_iter().enumerate() {
                columns.push((format!("agg{i}_{j}"), c));
            }
        }
        Ok(RecordBatch::try_from_iter(columns)?)
    }

    /// Forgets the groups whose keys the batch's `key` column lists.
    fn release_keys(&mut self, b: &RecordBatch) -> Result<()> {
        let keys = b.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| RiffleError::exec("released keys missing"))?;
        for key in keys.iter().flatten() {
            if let Some(slot) = self.slot_of.get(key).copied() {
                self.release(slot);
            }
        }
        Ok(())
    }

    /// Reads saved groups (as `save` writes them) into the table, replacing those of the same keys;
    /// their slots.
    fn load_batch(&mut self, b: &RecordBatch, ttl: Option<std::time::Duration>) -> Result<Vec<u32>> {
        let damaged = || RiffleError::exec("saved groups lack a column");
        let keys = b.column_by_name("key").and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(damaged)?;
        let rows = b.column_by_name("rows").and_then(|c| c.as_primitive_opt::<Int64Type>()).ok_or_else(damaged)?;
        let emitted = b.column_by_name("emitted").and_then(|c| c.as_boolean_opt()).ok_or_else(damaged)?;
        let slots: Vec<u32> = match self.keys {
            None if b.num_rows() == 1 => {
                self.release(0);
                vec![0]
            }
            None => return Err(damaged()),
            Some(_) => {
                let mut slots = Vec::with_capacity(b.num_rows());
                for key in keys.iter() {
                    let key = key.ok_or_else(damaged)?;
                    // A later file's group replaces an earlier one's.
                    if let Some(old) = self.slot_of.get(key).copied() {
                        self.release(old);
                    }
                    slots.push(self.new_slot(key.into()));
                }
                slots
            }
        };
        let now = std::time::Instant::now();
        for (i, s) in slots.iter().enumerate() {
            self.rows[*s as usize] = rows.value(i);
            self.emitted[*s as usize] = emitted.value(i);
            if ttl.is_some() {
                // Processing time does not survive a restart or a spill: the group's clock starts anew.
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
        Ok(slots)
    }

    /// How many groups are live.
    fn live_count(&self) -> usize {
        if self.keys.is_some() {
            self.key_of.len() - self.free.len()
        } else {
            1
        }
    }

    /// Moves the live groups into fresh slots, numbered from 0, so that what freed slots held is
    /// given back (slots are reused, never shrunk, otherwise). Changed-since-checkpoint marks and
    /// last-change times go along.
    fn compact(&mut self, spec: &UpdateAggSpec, pool: &Arc<MemoryPool>) -> Result<()> {
        let live = self.live();
        let mut fresh = Groups::new(spec, pool)?;
        std::mem::swap(&mut fresh.reservation, &mut self.reservation);
        fresh.shared = self.shared.take();
        fresh.chain = std::mem::take(&mut self.chain);
        fresh.released = std::mem::take(&mut self.released);
        let mut new_slot = vec![u32::MAX; self.key_of.len()];
        for chunk in live.chunks(super::keyed_spill::STATE_BATCH_ROWS) {
            let slots = fresh.load_batch(&self.save(chunk)?, None)?;
            for (old, new) in chunk.iter().zip(slots) {
                new_slot[*old as usize] = new;
                fresh.changed[new as usize] = self.changed[*old as usize];
                if self.dirty[*old as usize] {
                    fresh.touch(new);
                }
            }
        }
        fresh.changes = self
            .changes
            .iter()
            .filter(|(at, slot)| self.changed[*slot as usize] == Some(*at))
            .map(|(at, slot)| (*at, new_slot[*slot as usize]))
            .collect();
        *self = fresh;
        Ok(())
    }

    fn size(&self) -> usize {
        self.key_bytes
            + self.key_of.capacity() * 40
            + self.accs.iter().map(|a| a.size()).sum::<usize>()
            + (self.changed.capacity() + self.changes.capacity()) * 24
    }
}

/// A free slot's bucket.
const NO_GROUP: u8 = u8::MAX;

/// Held rows are applied in batches of about this many rows.
const APPLY_ROWS: usize = 8192;

/// A checkpoint file to write: its name, and its batches (those of spill files, then these).
type ToWrite = (String, Vec<Arc<SpillFile>>, Vec<RecordBatch>);

fn damaged(path: &std::path::Path) -> RiffleError {
    RiffleError::exec(format!("checkpoint: {} is not this updating aggregate's state; remove the checkpoint directory to start afresh", path.display()))
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

impl UpdateAggregateOp {
    /// Aggregates `batch` into the groups in memory and emits what it changed.
    fn apply(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let n = batch.num_rows();
        let signs = if self.spec.input_changelog { changelog::signs(&batch)? } else { vec![1; n] };
        let keys = self.keys(&batch)?;
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
            groups.touch(*s);
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
        Ok(())
    }
}

impl Operator for UpdateAggregateOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        self.ready(out)?;
        self.route(batch, out)?;
        self.account()?;
        self.load_due(false, out)
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        self.ready(out)?;
        if matches!(msg, Message::Watermark(_) | Message::Idle) {
            // Held rows wait at most `MAX_HELD_AGE` when no row comes either.
            self.load_due(false, out)?;
        }
        match msg {
            // Updates carry no event time: what follows cannot wait on it.
            Message::Watermark(_) | Message::Idle => {}
            Message::Barrier(e) => {
                if let Some(ck) = self.checkpoint.clone() {
                    let state = ck.coordinator.state_dir(e, &ck.name)?.join("state.json");
                    // Taken now, written while the next rows are aggregated.
                    let groups = self.state.as_mut().ok_or_else(|| RiffleError::exec("aggregate state missing"))?;
                    let (write, named, held) = groups.snapshot(e, &mut self.spilled)?;
                    let shared = groups.shared.clone().ok_or_else(|| RiffleError::exec("checkpoint files missing"))?;
                    shared.taken(e, [named.clone(), held.clone()].concat());
                    ck.coordinator.save_async(ck.component, e, move || {
                        for (file, spilled, batches) in &write {
                            let from_disk = batches_of(spilled);
                            super::checkpoint::write_batches_from(&shared.path(file), from_disk.chain(batches.iter().cloned().map(Ok)))?;
                        }
                        super::checkpoint::write_synced(&state, serde_json::json!({ "files": named, "held": held }).to_string().as_bytes())
                    })?;
                }
                out.push(Message::Barrier(e));
            }
            Message::End => {
                self.load_due(true, out)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::checkpoint::{CheckpointConfig, Coordinator};
    use crate::logical::AggFunc;
    use arrow::array::StringArray;
    use arrow::datatypes::{Field, Schema};

    fn spec() -> Arc<UpdateAggSpec> {
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("v", DataType::Int64, true),
            crate::changelog::op_field(),
        ]));
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
            Field::new("total", DataType::Int64, true),
            crate::changelog::op_field(),
        ]));
        Arc::new(UpdateAggSpec {
            group: vec![Expr::Column(0)],
            aggs: vec![
                AggCall { func: AggFunc::CountStar, args: vec![], distinct: false, ty: DataType::Int64 },
                AggCall { func: AggFunc::Sum, args: vec![Expr::Column(1)], distinct: false, ty: DataType::Int64 },
            ],
            input_changelog: true,
            input_schema: input,
            schema: output,
            state_ttl: None,
        })
    }

    /// Changes `(kind, key, value)` as an input batch.
    fn changes(rows: &[(RowKind, &str, i64)]) -> RecordBatch {
        let spec = spec();
        RecordBatch::try_new(
            spec.input_schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int8Array::from_iter_values(rows.iter().map(|r| r.0.code()))),
            ],
        )
        .expect("batch")
    }

    /// What the operator emits for `batch`, one `kind key n total` line per row.
    fn emit(op: &mut UpdateAggregateOp, batch: RecordBatch) -> Vec<String> {
        let mut out = vec![];
        op.on_batch(batch, &mut out).expect("batch");
        lines_of(out)
    }

    /// One `kind key n total` line per row of the batches in `out`.
    fn lines_of(out: Vec<Message>) -> Vec<String> {
        let mut lines = vec![];
        for m in out {
            let Message::Batch(b) = m else { continue };
            let shown = crate::changelog::for_display(&b).expect("display");
            for row in 0..shown.num_rows() {
                let cells: Vec<String> =
                    shown.columns().iter().map(|c| crate::format::format_value(c, row).expect("format").unwrap_or_default()).collect();
                lines.push(cells.join(" "));
            }
        }
        lines
    }

    fn memory(limit: usize) -> (Arc<MemoryPool>, Arc<SpillManager>) {
        (MemoryPool::new(limit), Arc::new(SpillManager::new(None, None)))
    }

    fn checkpointed(dir: &std::path::Path) -> (Arc<Coordinator>, UpdateAggregateOp) {
        let coordinator = Coordinator::open(&CheckpointConfig { dir: dir.to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open");
        let ck = OperatorCheckpoint::register(&coordinator, "update-0".into()).expect("register");
        (coordinator, UpdateAggregateOp::new(spec(), memory(1 << 30), Arc::new(OpMetrics::default()), Some(ck)))
    }

    fn barrier(c: &Coordinator, op: &mut UpdateAggregateOp, e: u64) {
        op.on_control(Message::Barrier(e), &mut vec![]).expect("barrier");
        c.drain().expect("written");
    }

    /// A restored aggregate carries on exactly as one that never stopped, across a full snapshot, a
    /// delta and a released group that comes back (and across the compaction that the chain's growth
    /// forces).
    #[test]
    fn a_restored_update_aggregate_carries_on_as_if_it_never_stopped() {
        use RowKind::*;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut never_stopped = UpdateAggregateOp::new(spec(), memory(1 << 30), Arc::new(OpMetrics::default()), None);
        let (c, mut op) = checkpointed(dir.path());
        let first = changes(&[(Insert, "a", 1), (Insert, "b", 2)]);
        // Then a's only row is taken back (a is released) and c arrives.
        let second = changes(&[(Delete, "a", 1), (Insert, "c", 3)]);
        for batch in [first, second] {
            assert_eq!(emit(&mut op, batch.clone()), emit(&mut never_stopped, batch));
        }
        barrier(&c, &mut op, 1);
        let third = changes(&[(Insert, "d", 4)]);
        assert_eq!(emit(&mut op, third.clone()), emit(&mut never_stopped, third));
        barrier(&c, &mut op, 2);
        let files = |d: &std::path::Path| -> Vec<String> {
            let mut f: Vec<String> = std::fs::read_dir(d.join("shared/update-0")).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
            f.sort();
            f
        };
        assert_eq!(files(dir.path()), ["groups-1.arrow", "groups-2.arrow"], "a full snapshot, then a delta");
        // Released and changed again before a crash: the restart must apply the release, then the group.
        let fourth = changes(&[(Delete, "b", 2), (Insert, "e", 5)]);
        assert_eq!(emit(&mut op, fourth.clone()), emit(&mut never_stopped, fourth));
        barrier(&c, &mut op, 3);
        assert_eq!(files(dir.path()), ["groups-1.arrow", "groups-2.arrow", "groups-3.arrow", "released-3.arrow"]);
        drop((c, op));
        let (c, mut op) = checkpointed(dir.path());
        assert_eq!(c.restored, 3);
        // a and b come back (+I, as they were released), c changes (-U/+U), d and e stay.
        let fifth = changes(&[(Insert, "a", 10), (Insert, "b", 20), (Insert, "c", 30)]);
        let want = emit(&mut never_stopped, fifth.clone());
        assert_eq!(want, ["+I a 1 10", "+I b 1 20", "-U c 1 3", "+U c 2 33"]);
        assert_eq!(emit(&mut op, fifth), want);
        // More checkpoints than the chain may hold: compacted into one full snapshot on the way.
        for e in 4..40 {
            let batch = changes(&[(Insert, "d", e as i64)]);
            assert_eq!(emit(&mut op, batch.clone()), emit(&mut never_stopped, batch));
            barrier(&c, &mut op, e);
        }
        assert!(files(dir.path()).len() <= crate::exec::checkpoint::MAX_CHAIN, "{:?}", files(dir.path()));
        drop((c, op));
        let (_c, mut op) = checkpointed(dir.path());
        let last = changes(&[(Insert, "d", 1), (Delete, "e", 5)]);
        assert_eq!(emit(&mut op, last.clone()), emit(&mut never_stopped, last));
    }

    /// A changelog of many keys: inserts, and now and then a delete of an earlier inserted row.
    fn many_keys(seed: u64, batches: usize, rows_per_batch: usize, keys: u64) -> Vec<RecordBatch> {
        use RowKind::*;
        let mut x = seed;
        let mut next = move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            x >> 33
        };
        let mut live: Vec<(String, i64)> = vec![];
        let mut out = vec![];
        for _ in 0..batches {
            let mut rows: Vec<(RowKind, String, i64)> = vec![];
            for _ in 0..rows_per_batch {
                if !live.is_empty() && next() % 4 == 0 {
                    let (k, v) = live.swap_remove(next() as usize % live.len());
                    rows.push((Delete, k, v));
                } else {
                    let (k, v) = (format!("key{}", next() % keys), (next() % 1000) as i64);
                    live.push((k.clone(), v));
                    rows.push((Insert, k, v));
                }
            }
            let borrowed: Vec<(RowKind, &str, i64)> = rows.iter().map(|(k, s, v)| (*k, s.as_str(), *v)).collect();
            out.push(changes(&borrowed));
        }
        out
    }

    /// Applies changelog lines (`kind key values…`) to a keyed result, checking that each `-U`/`-D`
    /// takes back the row that stands.
    fn apply(result: &mut std::collections::BTreeMap<String, String>, lines: &[String]) {
        for line in lines {
            let mut parts = line.splitn(3, ' ');
            let (kind, key, values) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
            match kind {
                "+I" | "+U" => assert!(result.insert(key, values).is_none(), "{line}: the key's row stands already"),
                "-U" | "-D" => assert_eq!(result.remove(&key), Some(values), "{line}: not the row that stands"),
                other => panic!("unknown kind {other}"),
            }
        }
    }

    fn end(op: &mut UpdateAggregateOp) -> Vec<String> {
        let mut out = vec![];
        op.on_control(Message::End, &mut out).expect("end");
        lines_of(out)
    }

    /// Within a budget far smaller than its groups, the aggregate writes buckets of them to disk and
    /// holds their rows; its changelog, applied, is the in-memory aggregate's answer, with every
    /// retraction taking back the row that stood.
    #[test]
    fn a_spilling_update_aggregate_gives_the_in_memory_answer() {
        let metrics = Arc::new(OpMetrics::default());
        let mut in_memory = UpdateAggregateOp::new(spec(), memory(1 << 30), Arc::new(OpMetrics::default()), None);
        let mut spilling = UpdateAggregateOp::new(spec(), memory(64 << 10), metrics.clone(), None);
        let (mut want, mut got) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
        for batch in many_keys(7, 60, 200, 3000) {
            apply(&mut want, &emit(&mut in_memory, batch.clone()));
            apply(&mut got, &emit(&mut spilling, batch));
        }
        apply(&mut want, &end(&mut in_memory));
        apply(&mut got, &end(&mut spilling));
        assert!(metrics.spill_files.load(std::sync::atomic::Ordering::Relaxed) > 0, "it spilled");
        assert!(want.len() > 1000, "{} groups", want.len());
        assert_eq!(got, want);
    }

    /// Checkpointed while buckets are on disk with rows held for them, killed, restored: what the
    /// sink committed up to the checkpoint and what the restored job emits after it are, applied,
    /// the answer of an aggregate that never stopped.
    #[test]
    fn a_spilling_update_aggregate_restores_its_buckets_and_held_rows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let coordinator = |dir: &std::path::Path| {
            Coordinator::open(&CheckpointConfig { dir: dir.to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open")
        };
        let spilling = |c: &Arc<Coordinator>, pool: &Arc<MemoryPool>| {
            let ck = OperatorCheckpoint::register(c, "update-0".into()).expect("register");
            let memory = (pool.clone(), Arc::new(SpillManager::new(None, None)));
            UpdateAggregateOp::new(spec(), memory, Arc::new(OpMetrics::default()), Some(ck))
        };
        // Many more keys than a checkpoint's changes: checkpoints after the first are incremental;
        // rows enough for every bucket on disk to be loaded (and written out again) between them.
        let input = many_keys(11, 80, 1000, 50_000);
        let mut never_stopped = UpdateAggregateOp::new(spec(), memory(1 << 30), Arc::new(OpMetrics::default()), None);
        let mut want = std::collections::BTreeMap::new();
        for batch in &input {
            apply(&mut want, &emit(&mut never_stopped, batch.clone()));
        }
        apply(&mut want, &end(&mut never_stopped));

        let mut committed = std::collections::BTreeMap::new();
        let c = coordinator(dir.path());
        let mut op = spilling(&c, &MemoryPool::new(64 << 10));
        // Checkpoints every 7 batches: the first whole, then by turns incremental (the last one too).
        for (i, batch) in input[..42].iter().enumerate() {
            apply(&mut committed, &emit(&mut op, batch.clone()));
            if i % 7 == 6 {
                barrier(&c, &mut op, i as u64);
            }
        }
        assert!(op.spilled.iter().flatten().any(|b| b.has_held()), "rows held at the checkpoint");
        // Rows after the checkpoint are lost with the crash (the source replays them).
        emit(&mut op, input[42].clone());
        drop((c, op));
        let c = coordinator(dir.path());
        let pool = MemoryPool::new(64 << 10);
        let mut op = spilling(&c, &pool);
        assert_eq!(c.restored, 41);
        let mut first = true;
        for batch in &input[42..] {
            apply(&mut committed, &emit(&mut op, batch.clone()));
            if std::mem::take(&mut first) {
                // The restore went bucket by bucket: the state it read was many times the budget.
                let whole = op.state.as_ref().map_or(0, |g| g.size()) + op.spilled.iter().flatten().map(|b| b.state_rows() * 60).sum::<usize>();
                assert!(pool.peak() * 4 < whole, "restoring peaked at {} bytes of a {whole}-byte state", pool.peak());
            }
        }
        apply(&mut committed, &end(&mut op));
        assert_eq!(committed, want);
    }

    /// Groups changed, written to disk and loaded back between two checkpoints are saved by the
    /// second from memory, even those no held row touched.
    #[test]
    fn groups_loaded_back_before_a_checkpoint_are_saved_by_it() {
        use RowKind::*;
        let dir = tempfile::tempdir().expect("temp dir");
        let (c, mut op) = checkpointed(dir.path());
        let mut never_stopped = UpdateAggregateOp::new(spec(), memory(1 << 30), Arc::new(OpMetrics::default()), None);
        let keys: Vec<String> = (0..500).map(|k| format!("k{k}")).collect();
        let all = |v: i64| changes(&keys.iter().map(|k| (Insert, k.as_str(), v)).collect::<Vec<_>>());
        let (mut committed, mut want) = (std::collections::BTreeMap::new(), std::collections::BTreeMap::new());
        apply(&mut committed, &emit(&mut op, all(1)));
        apply(&mut want, &emit(&mut never_stopped, all(1)));
        barrier(&c, &mut op, 1);
        apply(&mut committed, &emit(&mut op, all(2)));
        apply(&mut want, &emit(&mut never_stopped, all(2)));
        // Every group to disk, changed since the checkpoint; then one row held for k0's bucket,
        // which is loaded back with it.
        while op.state.as_ref().is_some_and(|g| g.live_count() > 0) {
            op.evict().expect("evict");
        }
        let one = changes(&[(Insert, "k0", 3)]);
        apply(&mut committed, &emit(&mut op, one.clone()));
        apply(&mut want, &emit(&mut never_stopped, one));
        let mut out = vec![];
        op.load_due(true, &mut out).expect("load");
        apply(&mut committed, &lines_of(out));
        assert!(op.state.as_ref().is_some_and(|g| g.live_count() > 1), "k0's bucket is back in memory");
        barrier(&c, &mut op, 2);
        drop((c, op));
        let (_c, mut op) = checkpointed(dir.path());
        let last = all(4);
        apply(&mut committed, &emit(&mut op, last.clone()));
        apply(&mut want, &emit(&mut never_stopped, last));
        assert_eq!(committed, want);
    }

    /// A GROUP BY without keys (one group, never spilled) is restored through the same path.
    #[test]
    fn a_restored_update_aggregate_without_keys_carries_on() {
        use RowKind::*;
        let keyless = |spec: Arc<UpdateAggSpec>| {
            let schema = Arc::new(arrow::datatypes::Schema::new(spec.schema.fields().iter().skip(1).cloned().collect::<Vec<_>>()));
            Arc::new(UpdateAggSpec { group: vec![], aggs: spec.aggs.clone(), input_changelog: true, input_schema: spec.input_schema.clone(), schema, state_ttl: None })
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let coordinator = Coordinator::open(&CheckpointConfig { dir: dir.path().to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open");
        let ck = OperatorCheckpoint::register(&coordinator, "update-0".into()).expect("register");
        let mut op = UpdateAggregateOp::new(keyless(spec()), memory(1 << 30), Arc::new(OpMetrics::default()), Some(ck));
        let mut out = vec![];
        op.on_batch(changes(&[(Insert, "a", 1), (Insert, "b", 2)]), &mut out).expect("batch");
        barrier(&coordinator, &mut op, 1);
        drop((coordinator, op));
        let coordinator = Coordinator::open(&CheckpointConfig { dir: dir.path().to_path_buf(), interval: std::time::Duration::from_secs(60) }).expect("open");
        let ck = OperatorCheckpoint::register(&coordinator, "update-0".into()).expect("register");
        let mut op = UpdateAggregateOp::new(keyless(spec()), memory(1 << 30), Arc::new(OpMetrics::default()), Some(ck));
        let mut out = vec![];
        op.on_batch(changes(&[(Insert, "c", 4)]), &mut out).expect("batch");
        let shown = crate::changelog::for_display(match &out[0] {
            Message::Batch(b) => b,
            _ => panic!("a batch"),
        })
        .expect("display");
        let cells: Vec<String> = (0..shown.num_rows())
            .map(|r| shown.columns().iter().map(|c| crate::format::format_value(c, r).expect("format").unwrap_or_default()).collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(cells, ["-U 2 3", "+U 3 7"]);
    }
}
