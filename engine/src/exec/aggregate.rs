//! Hash aggregation as a pipeline breaker: each partition aggregates into its own table; when the
//! last partition ends, the partial states are merged and the result flows into the next pipeline.
//!
//! Within the memory budget: a partition whose table outgrows its reservation writes the table's
//! partial states to disk, split by key hash into buckets, and starts a new table. At the end each
//! bucket (from every partition, on disk and in memory) is merged on its own, so only one bucket's
//! groups are in memory at a time.
//!
//! Many groups (or a spill) are merged in parallel: each partition splits its table into the same
//! hash buckets as it ends, and the partitions of the next pipeline take the buckets one by one, merge
//! them and emit their groups (`AggResultSource`); few groups are merged at once by the last
//! partition to end.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use super::accumulators::{self, GroupsAccumulator};
use super::group_keys::GroupKeys;
use super::group_spill::{by_bucket, memory_buckets, BucketMerge};
use super::{emit_result, emit_slices, BarrierRelay, Exchange, OpMetrics, PartitionGather, Sink};
use crate::cse::ExprList;
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, AggFunc, Expr};
use crate::memory::{MemoryPool, MemoryReservation, SpillFile, SpillManager, SpillWriter};
use crate::message::Message;

/// Hash buckets a spilling aggregate splits its groups into; each is merged on its own at the end.
pub(super) const BUCKETS: usize = 16;

/// Groups from which a partition's table is split into buckets at its end, to be merged in parallel
/// (below, one table merging the others costs less than splitting them).
const PARALLEL_MERGE_GROUPS: usize = 1 << 15;

/// Input rows a partition's table aggregates before it is judged (as DataFusion probes whether
/// partial aggregation pays).
const PROBE_ROWS: usize = 100_000;

/// A table holding more groups than this fraction of the rows it aggregated hardly shrinks its input:
/// the partition's rows go to the merge as they are (`Passing`).
const POOR_REDUCTION: f64 = 0.8;

/// Times a bucket too big for the budget is split again into buckets, by other bits of the hash.
pub(super) const MAX_DEPTH: usize = 4;

/// The bucket of a group at split `depth`, from its row-encoded key (FNV-1a; 4 bits per depth).
pub(super) fn bucket_of(key: &[u8], depth: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> (60 - 4 * depth)) as usize % BUCKETS
}

/// What to aggregate, shared by every partition.
pub struct AggSpec {
    pub(super) group: Vec<Expr>,
    aggs: Vec<AggCall>,
    /// Every aggregate's arguments in order, repeated subexpressions computed once.
    args: ExprList,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    /// String keys arrive dictionary-encoded from a join's build side: they are coded
    /// (`super::coded_keys`) rather than encoded as rows.
    coded_keys: bool,
}

impl AggSpec {
    pub fn new(group: Vec<Expr>, aggs: Vec<AggCall>, input_schema: SchemaRef, output_schema: SchemaRef) -> AggSpec {
        let args: Vec<Expr> = aggs.iter().flat_map(|a| a.args.iter().cloned()).collect();
        let args = ExprList::new(&args, input_schema.fields().len());
        AggSpec { group, aggs, args, input_schema, output_schema, coded_keys: false }
    }

    /// Codes string keys, which the input hands out dictionary-encoded by build row. Coding plain
    /// strings costs a lookup per row and column (TPC-DS q67's ROLLUP levels, q23's 1.5 M item
    /// descriptions ran 6-12% slower than with their rows encoded).
    pub fn with_coded_keys(mut self, coded: bool) -> AggSpec {
        self.coded_keys = coded;
        self
    }
}

pub(super) struct GroupTable {
    keys: GroupKeys,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    num_groups: usize,
    /// When tracked (a checkpointed window's groups), the groups changed since the last snapshot.
    changed: Option<Changed>,
}

/// Groups changed since a point: a flag per group, and the flagged ones in the order they changed.
#[derive(Default)]
struct Changed {
    flags: Vec<bool>,
    groups: Vec<u32>,
}

impl Changed {
    fn mark(&mut self, groups: &[u32], num_groups: usize) {
        self.flags.resize(num_groups, false);
        let mut previous = u32::MAX;
        for &g in groups {
            // Runs of one group are common (clustered keys): one test for the run.
            if g != previous && !std::mem::replace(&mut self.flags[g as usize], true) {
                self.groups.push(g);
            }
            previous = g;
        }
    }

    fn take(&mut self) -> Vec<u32> {
        let groups = std::mem::take(&mut self.groups);
        for g in &groups {
            self.flags[*g as usize] = false;
        }
        groups
    }
}

/// Partial result of one partition: group keys and accumulator states.
#[derive(Clone)]
pub(super) struct Partial {
    keys: Vec<ArrayRef>,
    pub(super) states: Vec<Vec<ArrayRef>>,
    num_groups: usize,
}

impl Partial {
    /// Keys, then every accumulator's state columns, as one batch (to spill).
    pub(super) fn into_batch(self) -> Result<(RecordBatch, Vec<usize>)> {
        let widths = self.states.iter().map(|s| s.len()).collect();
        let columns: Vec<ArrayRef> = self.keys.into_iter().chain(self.states.into_iter().flatten()).collect();
        let fields: Vec<arrow::datatypes::Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| arrow::datatypes::Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(self.num_groups));
        Ok((RecordBatch::try_new_with_options(Arc::new(arrow::datatypes::Schema::new(fields)), columns, &options)?, widths))
    }

    pub(super) fn keys(&self) -> &[ArrayRef] {
        &self.keys
    }

    pub(super) fn num_groups(&self) -> usize {
        self.num_groups
    }

    /// The same groups under other keys (a row per group).
    pub(super) fn with_keys(self, keys: Vec<ArrayRef>) -> Partial {
        Partial { keys, ..self }
    }

    /// The groups in pieces of at most `n` (slices of its arrays: nothing is copied).
    pub(super) fn split(self, n: usize) -> Vec<Partial> {
        if self.num_groups <= n || n == 0 {
            return vec![self];
        }
        (0..self.num_groups)
            .step_by(n)
            .map(|at| {
                let len = n.min(self.num_groups - at);
                let keys = self.keys.iter().map(|k| k.slice(at, len)).collect();
                let states = self.states.iter().map(|s| s.iter().map(|a| a.slice(at, len)).collect()).collect();
                Partial { keys, states, num_groups: len }
            })
            .collect()
    }

    /// Bytes of its arrays.
    pub(super) fn size(&self) -> usize {
        self.keys.iter().chain(self.states.iter().flatten()).map(|a| a.get_array_memory_size()).sum()
    }

    /// The groups where `mask` holds, keyed by `keys` instead (a row per kept group): to move groups
    /// into other tables under other keys.
    pub(super) fn select(&self, mask: &arrow::array::BooleanArray, keys: Vec<ArrayRef>) -> Result<Partial> {
        let states = self
            .states
            .iter()
            .map(|s| s.iter().map(|a| Ok(arrow::compute::filter(a, mask)?)).collect::<Result<Vec<_>>>())
            .collect::<Result<Vec<_>>>()?;
        Ok(Partial { keys, states, num_groups: mask.true_count() })
    }

    /// The inverse of `into_batch`, given the key count and each accumulator's state width.
    pub(super) fn from_batch(batch: &RecordBatch, keys: usize, widths: &[usize]) -> Partial {
        let columns = batch.columns();
        let mut at = keys;
        let states = widths
            .iter()
            .map(|w| {
                let s = columns[at..at + w].to_vec();
                at += w;
                s
            })
            .collect();
        Partial { keys: columns[..keys].to_vec(), states, num_groups: batch.num_rows() }
    }
}

impl GroupTable {
    /// A table merging partial states (their keys plain arrays).
    pub(super) fn new(spec: &AggSpec) -> Result<GroupTable> {
        Self::with_keys(spec, false)
    }

    /// A table taking the input's rows, its string keys coded if they come dictionary-encoded.
    fn for_input(spec: &AggSpec) -> Result<GroupTable> {
        Self::with_keys(spec, spec.coded_keys)
    }

    fn with_keys(spec: &AggSpec, coded: bool) -> Result<GroupTable> {
        let key_types: Vec<DataType> = spec.group.iter().map(|g| g.data_type(&spec.input_schema)).collect();
        let keys = GroupKeys::new(key_types, coded)?;
        let accs = spec.accumulators()?;
        // Without GROUP BY there is exactly one group, even over no rows.
        let num_groups = usize::from(matches!(keys, GroupKeys::None));
        Ok(GroupTable { keys, accs, num_groups, changed: None })
    }

    /// The group index of every row of `keys`.
    fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        if matches!(self.keys, GroupKeys::None) {
            return Ok(vec![0; rows]);
        }
        // Keys the same on every row (a window aggregate's input grouped by the windows only, as
        // Nexmark q5's maximum count per window): one lookup.
        if rows > 1 && keys.iter().all(super::constant) {
            let first: Vec<ArrayRef> = keys.iter().map(|k| k.slice(0, 1)).collect();
            let g = self.groups(&first, 1)?.first().copied().unwrap_or_default();
            return Ok(vec![g; rows]);
        }
        if let Some(codes) = DictionaryCodes::of(keys, rows) {
            return self.groups_by_code(&codes, keys);
        }
        let groups = if self.keys.takes_dictionaries() {
            self.keys.groups(keys, rows)?
        } else {
            self.keys.groups(&keys.iter().map(plain).collect::<Result<Vec<_>>>()?, rows)?
        };
        self.num_groups = self.keys.len();
        Ok(groups)
    }

    /// Group ids of dictionary-encoded keys: each distinct code combination is looked up once.
    fn groups_by_code(&mut self, codes: &DictionaryCodes, keys: &[ArrayRef]) -> Result<Vec<u32>> {
        const UNSEEN: u32 = u32::MAX;
        let mut slot = vec![UNSEEN; codes.combinations];
        let mut first_rows: Vec<u32> = vec![];
        for (row, code) in codes.codes.iter().enumerate() {
            let s = &mut slot[*code as usize];
            if *s == UNSEEN {
                *s = first_rows.len() as u32;
                first_rows.push(row as u32);
            }
        }
        let indices = arrow::array::UInt32Array::from(first_rows);
        let distinct = keys.iter().map(|k| plain(&arrow::compute::take(k, &indices, None)?)).collect::<Result<Vec<_>>>()?;
        let group_of_slot = self.groups(&distinct, indices.len())?;
        // Reuse `slot` as code → group, so the last pass reads one table.
        for s in slot.iter_mut().filter(|s| **s != UNSEEN) {
            *s = group_of_slot[*s as usize];
        }
        Ok(codes.codes.iter().map(|c| slot[*c as usize]).collect())
    }

    pub(super) fn update(&mut self, spec: &AggSpec, batch: &RecordBatch) -> Result<()> {
        let keys = spec.group.iter().map(|g| evaluate(g, batch)).collect::<Result<Vec<_>>>()?;
        let groups = self.groups(&keys, batch.num_rows())?;
        if let Some(changed) = &mut self.changed {
            changed.mark(&groups, self.num_groups);
        }
        // Rows per group, counted once for every count(…) whose argument has no NULL in this batch.
        let mut rows_per_group: Option<Vec<i64>> = None;
        for ((acc, call), args) in self.accs.iter_mut().zip(&spec.aggs).zip(spec.arg_values(batch)?) {
            // Counting rows per group costs a pass over all groups: worth it while they are fewer than
            // the batch's rows.
            if matches!(call.func, AggFunc::Count | AggFunc::CountStar)
                && !call.distinct
                && self.num_groups <= batch.num_rows()
                && args.iter().all(|a| a.logical_null_count() == 0)
            {
                let rows = rows_per_group.get_or_insert_with(|| accumulators::rows_per_group(&groups, self.num_groups));
                if acc.add_rows(rows) {
                    continue;
                }
            }
            acc.update(&groups, self.num_groups, &args)?;
        }
        Ok(())
    }

    pub(super) fn merge(&mut self, p: Partial) -> Result<()> {
        self.reserve(p.num_groups);
        let groups = self.groups(&p.keys, p.num_groups)?;
        if let Some(changed) = &mut self.changed {
            changed.mark(&groups, self.num_groups);
        }
        for (acc, states) in self.accs.iter_mut().zip(p.states) {
            acc.merge(&groups, self.num_groups, &states)?;
        }
        Ok(())
    }

    /// Room for `n` more groups, so that adding them does not grow the table step by step.
    pub(super) fn reserve(&mut self, n: usize) {
        self.keys.reserve(n);
    }

    fn key_arrays(&mut self) -> Result<Vec<ArrayRef>> {
        self.keys.take_arrays()
    }

    pub(super) fn into_partial(mut self) -> Result<Partial> {
        for a in self.accs.iter_mut() {
            a.resize(self.num_groups);
        }
        let keys = self.key_arrays()?;
        let states = self.accs.iter_mut().map(|a| a.state()).collect::<Result<_>>()?;
        Ok(Partial { keys, states, num_groups: self.num_groups })
    }

    /// From now on, notes the groups that change (see `take_changes`).
    pub(super) fn track_changes(&mut self) {
        self.changed.get_or_insert_with(Changed::default);
    }

    /// The groups changed since the last call (all of them, `all`, tracked or not), as a partial,
    /// the table kept; None when there are none.
    pub(super) fn take_changes(&mut self, all: bool) -> Result<Option<Partial>> {
        let changed = self.changed.as_mut().map(Changed::take).unwrap_or_default();
        let groups = if all { (0..self.num_groups as u32).collect() } else { changed };
        if groups.is_empty() {
            return Ok(None);
        }
        for a in self.accs.iter_mut() {
            a.resize(self.num_groups);
        }
        let keys = self.keys.arrays_of(&groups)?;
        let states = self.accs.iter().map(|a| a.state_of(&groups)).collect::<Result<_>>()?;
        Ok(Some(Partial { keys, states, num_groups: groups.len() }))
    }

    /// Groups changed since the last `take_changes` (0 untracked).
    pub(super) fn changes(&self) -> usize {
        self.changed.as_ref().map_or(0, |c| c.groups.len())
    }

    /// Groups in the table.
    pub(super) fn num_groups(&self) -> usize {
        self.num_groups
    }

    pub(super) fn size(&self) -> usize {
        let changed = self.changed.as_ref().map_or(0, |c| c.flags.capacity() + c.groups.capacity() * 4);
        self.keys.size() + changed + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }

    /// The bucket of every group at split `depth`, in group order.
    pub(super) fn group_buckets(&self, depth: usize) -> Result<Vec<usize>> {
        self.keys.buckets(depth)
    }

    /// The bucket at split `depth` of every row of a partial's keys.
    pub(super) fn buckets_of(&self, keys: &[ArrayRef], rows: usize, depth: usize) -> Result<Vec<usize>> {
        self.keys.buckets_of(keys, rows, depth)
    }
}

/// Partial states of one bucket: still in memory, or in a file (its own, or one shared with
/// other readers).
pub(super) enum Part {
    Memory(RecordBatch),
    File(SpillFile),
    Shared(Arc<SpillFile>),
}

impl Part {
    /// Bytes it holds in memory.
    fn size(&self) -> usize {
        match self {
            Part::Memory(b) => b.get_array_memory_size(),
            Part::File(_) | Part::Shared(_) => 0,
        }
    }
}

/// Reads the batches of a bucket's parts in turn.
pub(super) struct PartReader {
    pub(super) parts: std::collections::VecDeque<Part>,
    pub(super) current: Option<crate::memory::SpillReader>,
}

impl PartReader {
    pub(super) fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if let Some(r) = &mut self.current {
                match r.next_batch()? {
                    Some(b) => return Ok(Some(b)),
                    None => self.current = None,
                }
            }
            match self.parts.pop_front() {
                None => return Ok(None),
                Some(Part::Memory(b)) => return Ok(Some(b)),
                Some(Part::File(f)) => self.current = Some(f.reader()?),
                Some(Part::Shared(f)) => self.current = Some(f.reader()?),
            }
        }
    }
}

/// Appends each bucket's rows of `batch` to that bucket's file.
pub(super) fn write_by_bucket(writers: &mut [SpillWriter], batch: &RecordBatch, buckets: &[usize]) -> Result<()> {
    for (b, part) in split_by_bucket(batch, buckets)? {
        writers[b].write(&part)?;
    }
    Ok(())
}

/// The rows of `batch` in each bucket that has some, as separate batches.
pub(super) fn split_by_bucket(batch: &RecordBatch, buckets: &[usize]) -> Result<Vec<(usize, RecordBatch)>> {
    super::key_partition::split_by_owner(batch, buckets, BUCKETS)
}

/// Per-row codes of keys that are all dictionary-encoded with small dictionaries: the code combines
/// the dictionary keys of every column (null is one more code), so equal codes mean equal keys.
struct DictionaryCodes {
    codes: Vec<u32>,
    combinations: usize,
}

impl DictionaryCodes {
    /// Beyond this many combinations a hash lookup per row is as cheap as the code table.
    const MAX_COMBINATIONS: usize = 1 << 16;

    fn of(keys: &[ArrayRef], rows: usize) -> Option<DictionaryCodes> {
        let mut codes = vec![0u32; rows];
        let mut combinations = 1usize;
        for key in keys {
            let dict = key.as_dictionary_opt::<Int32Type>()?;
            let width = dict.values().len() + 1;
            combinations = combinations.checked_mul(width).filter(|c| *c <= Self::MAX_COMBINATIONS)?;
            let null_code = dict.values().len() as u32;
            let width = width as u32;
            match dict.keys().nulls() {
                None => {
                    for (c, k) in codes.iter_mut().zip(dict.keys().values()) {
                        *c = *c * width + (*k as u32).min(null_code);
                    }
                }
                Some(nulls) => {
                    for (i, (c, k)) in codes.iter_mut().zip(dict.keys().values()).enumerate() {
                        let k = if nulls.is_valid(i) { (*k as u32).min(null_code) } else { null_code };
                        *c = *c * width + k;
                    }
                }
            }
        }
        Some(DictionaryCodes { codes, combinations })
    }
}

/// A dictionary-encoded column expanded to its value type; other columns as they are.
fn plain(array: &ArrayRef) -> Result<ArrayRef> {
    match array.data_type() {
        DataType::Dictionary(_, value) => Ok(arrow::compute::cast(array, value)?),
        _ => Ok(array.clone()),
    }
}

/// What one partition hands over at its end.
enum Local {
    Memory(Partial),
    /// Its groups split by bucket (many groups).
    Buckets(Vec<Vec<Part>>),
    /// Everything it aggregated, on disk, one file per bucket.
    Spilled(Vec<SpillFile>),
}

pub struct AggShared {
    spec: AggSpec,
    partials: PartitionGather<(Local, MemoryReservation)>,
    barriers: BarrierRelay,
    output: Arc<Exchange>,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
    pool: Arc<MemoryPool>,
    spill: Arc<SpillManager>,
    /// How many state columns each accumulator has, known once a partition spilled.
    state_widths: std::sync::OnceLock<Vec<usize>>,
    /// The buckets left to merge, once every partition ended, when they are merged in parallel.
    merging: std::sync::Mutex<Option<MergeQueue>>,
}

/// Buckets of partial groups that the output's consumers merge, one bucket at a time each.
struct MergeQueue {
    buckets: std::collections::VecDeque<Vec<Part>>,
    /// State columns of each accumulator, to read partials back.
    widths: Arc<Vec<usize>>,
    /// Buckets taken or not whose merge has not finished: the last one to finish ends the output.
    unfinished: usize,
    /// The partitions' memory, held until every bucket is merged.
    held: Vec<MemoryReservation>,
}

impl AggShared {
    pub fn new(
        spec: AggSpec,
        partitions: usize,
        output: Arc<Exchange>,
        batch_size: usize,
        metrics: Arc<OpMetrics>,
        pool: Arc<MemoryPool>,
        spill: Arc<SpillManager>,
    ) -> AggShared {
        let (partials, barriers) = (PartitionGather::new(partitions), BarrierRelay::new(partitions));
        AggShared { spec, partials, barriers, output, batch_size, metrics, pool, spill, state_widths: Default::default(), merging: Default::default() }
    }

    fn finish(&self, local: Local, reservation: MemoryReservation) -> Result<()> {
        let Some(arrived) = self.partials.arrive([(local, reservation)])? else { return Ok(()) };
        let (mut memory, mut split, mut files) = (Vec::new(), Vec::new(), Vec::new());
        // The partitions' reservations stay held until the partials they cover are merged.
        let mut held = Vec::new();
        for (local, reservation) in arrived {
            held.push(reservation);
            match local {
                Local::Memory(p) => memory.push(p),
                Local::Buckets(b) => split.push(b),
                Local::Spilled(f) => files.push(f),
            }
        }
        if files.is_empty() && split.is_empty() {
            let mut table = GroupTable::new(&self.spec)?;
            for p in memory {
                table.merge(p)?;
            }
            self.metrics.note_bytes(table.size());
            let batch = self.result(table)?;
            emit_result(&self.output, &batch, self.batch_size, &self.metrics);
            return Ok(());
        }
        let widths = match self.state_widths.get() {
            Some(w) => w.clone(),
            None => self.spec.state_widths()?,
        };
        // The partials not split yet are split by bucket too, and merged with their bucket.
        let mut buckets = memory_buckets(&self.spec, memory)?;
        for partition_buckets in split {
            for (b, parts) in partition_buckets.into_iter().enumerate() {
                buckets[b].extend(parts);
            }
        }
        for partition_files in files {
            for (b, f) in partition_files.into_iter().enumerate() {
                buckets[b].push(Part::File(f));
            }
        }
        let buckets: std::collections::VecDeque<Vec<Part>> = buckets.into_iter().filter(|b| !b.is_empty()).collect();
        if buckets.is_empty() {
            self.output.push(0, Message::End);
            return Ok(());
        }
        let unfinished = buckets.len();
        *self.merging.lock().map_err(|_| RiffleError::exec("aggregate merge lock poisoned"))? =
            Some(MergeQueue { buckets, widths: Arc::new(widths), unfinished, held });
        // The consumers waiting for rows take the buckets.
        self.output.notify();
        Ok(())
    }

    /// Merges the next bucket left, if any, emitting its groups to `consumer`; false when none is left.
    /// The last bucket merged ends the output.
    fn merge_next(&self, consumer: usize) -> Result<bool> {
        let lock = || self.merging.lock().map_err(|_| RiffleError::exec("aggregate merge lock poisoned"));
        let (parts, widths) = {
            let mut queue = lock()?;
            let Some(q) = queue.as_mut() else { return Ok(false) };
            let Some(parts) = q.buckets.pop_front() else { return Ok(false) };
            (parts, q.widths.clone())
        };
        let mut merging = self.pool.reservation("HashAggregate merge", false);
        let merge = BucketMerge { spec: &self.spec, widths: &widths, spill: &self.spill, metrics: &self.metrics };
        merge.merge(parts, 0, &mut merging, &mut |table| {
            self.metrics.note_bytes(table.size());
            let result = self.result(table)?;
            emit_slices(&result, self.batch_size, &self.metrics, |slice| self.output.push_to(consumer, slice));
            Ok(())
        })?;
        drop(merging);
        let last = {
            let mut queue = lock()?;
            let q = queue.as_mut().ok_or_else(|| RiffleError::exec("aggregate merge queue missing"))?;
            q.unfinished -= 1;
            (q.unfinished == 0).then(|| std::mem::take(&mut q.held))
        };
        if let Some(held) = last {
            drop(held);
            self.output.push(0, Message::End);
        }
        Ok(true)
    }

    fn result(&self, table: GroupTable) -> Result<RecordBatch> {
        self.spec.result(table)
    }
}

impl AggSpec {
    /// Each aggregate's argument values over `batch`, of the types its accumulator takes.
    fn arg_values(&self, batch: &RecordBatch) -> Result<Vec<Vec<ArrayRef>>> {
        let mut values = self.args.evaluate(batch)?.into_iter();
        self.aggs
            .iter()
            .map(|call| {
                call.args
                    .iter()
                    .map(|_| {
                        let v = values.next().ok_or_else(|| RiffleError::exec("aggregate argument count mismatch"))?;
                        let want = accumulators::input_type(call, v.data_type());
                        Ok(match (v.data_type(), &want) {
                            // Same scale: the i128 values are already right; a cast would only re-validate them.
                            (DataType::Decimal128(_, a), DataType::Decimal128(_, b)) if a == b => v,
                            (have, want) if have == want => v,
                            (_, want) => arrow::compute::cast(&v, want)?,
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Fresh accumulators, one per aggregate.
    fn accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggs
            .iter()
            .map(|a| {
                let arg = a.args.first().map(|e| accumulators::input_type(a, &e.data_type(&self.input_schema)));
                accumulators::create(a, arg.as_ref())
            })
            .collect()
    }

    /// Every row of `batch` as a group of its own, as partial states: what a table hands over had no
    /// two rows shared a key, without the table.
    fn row_states(&self, batch: &RecordBatch) -> Result<Partial> {
        let n = batch.num_rows();
        let keys = self.group.iter().map(|g| plain(&evaluate(g, batch)?)).collect::<Result<Vec<_>>>()?;
        let groups: Vec<u32> = (0..n as u32).collect();
        let mut accs = self.accumulators()?;
        let mut states = Vec::with_capacity(accs.len());
        for (acc, args) in accs.iter_mut().zip(self.arg_values(batch)?) {
            acc.update(&groups, n, &args)?;
            acc.resize(n);
            states.push(acc.state()?);
        }
        Ok(Partial { keys, states, num_groups: n })
    }

    /// Whether every aggregate's partial state can stand for a single row (a DISTINCT aggregate's
    /// holds a set of values).
    fn rows_can_pass(&self) -> bool {
        !self.group.is_empty() && self.aggs.iter().all(|a| !a.distinct)
    }

    /// How many state columns each aggregate's partial state has (to read partials back).
    pub(super) fn state_widths(&self) -> Result<Vec<usize>> {
        Ok(GroupTable::new(self)?.into_partial()?.states.iter().map(|s| s.len()).collect())
    }

    /// The finished groups as a batch of the output schema.
    pub(super) fn result(&self, table: GroupTable) -> Result<RecordBatch> {
        let n = table.num_groups;
        let mut batches = self.result_in_batches(table, n.max(1), |keys, _| keys.to_vec())?;
        batches.pop().ok_or_else(|| RiffleError::exec("an aggregate's result has no batch"))
    }

    /// The finished groups as batches of the output schema of at most `batch_size` rows (at least one
    /// batch), their key columns made by `rekey` from a slice of the table's keys and its length.
    pub(super) fn result_in_batches(
        &self,
        mut table: GroupTable,
        batch_size: usize,
        rekey: impl Fn(&[ArrayRef], usize) -> Vec<ArrayRef>,
    ) -> Result<Vec<RecordBatch>> {
        let n = table.num_groups;
        let keys = table.key_arrays()?;
        let mut values = Vec::with_capacity(table.accs.len());
        for acc in table.accs.iter_mut() {
            acc.resize(n);
            values.push(acc.evaluate()?);
        }
        let schema = self.output_schema.clone();
        let size = batch_size.max(1);
        let mut batches = Vec::with_capacity(n.div_ceil(size).max(1));
        let mut offset = 0;
        loop {
            let len = size.min(n - offset);
            let slice = |arrays: &[ArrayRef]| -> Vec<ArrayRef> {
                if offset == 0 && len == n { arrays.to_vec() } else { arrays.iter().map(|a| a.slice(offset, len)).collect() }
            };
            let columns = rekey(&slice(&keys), len)
                .into_iter()
                .chain(slice(&values))
                .zip(schema.fields())
                .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
                .collect::<Result<Vec<_>>>()?;
            let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(len));
            batches.push(RecordBatch::try_new_with_options(schema.clone(), columns, &options)?);
            offset += len;
            if offset >= n {
                return Ok(batches);
            }
        }
    }
}

/// One partition of an aggregate's output: the rows in the exchange, and, while none are there, the
/// next bucket to merge.
pub struct AggResultSource {
    rows: super::scan::ExchangeSource,
    shared: Arc<AggShared>,
    partition: usize,
}

impl AggResultSource {
    pub fn new(shared: Arc<AggShared>, partition: usize) -> AggResultSource {
        AggResultSource { rows: super::scan::ExchangeSource::new(shared.output.clone(), partition), shared, partition }
    }
}

impl super::Source for AggResultSource {
    fn next(&mut self) -> Result<Option<Message>> {
        loop {
            if let Some(m) = self.rows.next()? {
                return Ok(Some(m));
            }
            // A bucket may merge into no rows (its files empty): then the next one.
            if !self.shared.merge_next(self.partition)? {
                return Ok(None);
            }
        }
    }
}

/// One partition's aggregation.
pub struct AggregateSink {
    shared: Arc<AggShared>,
    partition: usize,
    table: Option<GroupTable>,
    reservation: MemoryReservation,
    /// Once the partition spilled: one open spill file per bucket.
    spilled: Option<Vec<SpillWriter>>,
    /// Input rows the tables have aggregated, and the groups they held (those spilled too), until
    /// they are judged.
    rows_seen: usize,
    groups_spilled: usize,
    /// Once the table proved to keep nearly a group per row (TPC-DS q23's items by day): a table
    /// only adds a second hash insert of every row before the merge, and its cache misses. Each
    /// row then goes to its bucket as a group of its own, to be merged once.
    passing: Option<Passing>,
}

/// Rows of a partition that aggregates no more, as partial states by bucket.
struct Passing {
    /// Splits rows into buckets as groups are split.
    splitter: GroupTable,
    /// Each bucket's rows still in memory (none once the partition spilled).
    buckets: Vec<Vec<Part>>,
    bytes: usize,
}

impl AggregateSink {
    pub fn new(shared: Arc<AggShared>, partition: usize) -> Result<AggregateSink> {
        let table = GroupTable::for_input(&shared.spec)?;
        let reservation = shared.pool.reservation(format!("HashAggregate (partition {partition})"), true);
        Ok(AggregateSink { shared, partition, table: Some(table), reservation, spilled: None, rows_seen: 0, groups_spilled: 0, passing: None })
    }

    /// Whether the table, judged once after `PROBE_ROWS` rows, keeps too many groups to pay.
    fn poor_reduction(&mut self, rows: usize) -> bool {
        if self.rows_seen >= PROBE_ROWS || !self.shared.spec.rows_can_pass() {
            return false;
        }
        self.rows_seen += rows;
        let groups = self.groups_spilled + self.table.as_ref().map_or(0, GroupTable::num_groups);
        self.rows_seen >= PROBE_ROWS && groups as f64 > POOR_REDUCTION * self.rows_seen as f64
    }

    /// Hands the table's groups to the buckets and lets the rows pass from now on.
    fn start_passing(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        let buckets = if self.spilled.is_some() {
            self.spill()?;
            (0..BUCKETS).map(|_| Vec::new()).collect()
        } else {
            let table = self.table.replace(GroupTable::for_input(spec)?);
            let partial = table.ok_or_else(|| RiffleError::exec("aggregate input after its end"))?.into_partial()?;
            memory_buckets(spec, [partial])?
        };
        let bytes = buckets.iter().flatten().map(Part::size).sum();
        self.passing = Some(Passing { splitter: GroupTable::new(spec)?, buckets, bytes });
        self.hold_passing()
    }

    /// Each row of `batch` to its bucket, as a group of its own.
    fn pass(&mut self, batch: &RecordBatch) -> Result<()> {
        let partial = self.shared.spec.row_states(batch)?;
        self.shared.metrics.rows_passed.fetch_add(batch.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
        let passing = self.passing.as_mut().ok_or_else(|| RiffleError::exec("aggregate rows passing without buckets"))?;
        for (b, part) in by_bucket(&passing.splitter, partial)? {
            match &mut self.spilled {
                Some(writers) => writers[b].write(&part)?,
                None => {
                    passing.bytes += part.get_array_memory_size();
                    passing.buckets[b].push(Part::Memory(part));
                }
            }
        }
        self.hold_passing()
    }

    /// Reserves the passed rows held in memory, or writes them to the bucket files.
    fn hold_passing(&mut self) -> Result<()> {
        let Some(passing) = self.passing.as_mut() else { return Ok(()) };
        self.shared.metrics.note_bytes(passing.bytes);
        if self.reservation.try_resize(passing.bytes) {
            return Ok(());
        }
        passing.bytes = 0;
        let buckets = std::mem::replace(&mut passing.buckets, (0..BUCKETS).map(|_| Vec::new()).collect());
        for (b, parts) in buckets.into_iter().enumerate() {
            for part in parts {
                let Part::Memory(batch) = part else { continue };
                self.spill_writers(&batch.schema())?[b].write(&batch)?;
            }
        }
        self.reservation.free();
        Ok(())
    }

    /// Aggregates `batch` into the table (spilling it past the reservation), or passes its rows.
    fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.passing.is_some() {
            return self.pass(batch);
        }
        let table = self.table.as_mut().ok_or_else(|| RiffleError::exec("aggregate input after its end"))?;
        table.update(&self.shared.spec, batch)?;
        let size = table.size();
        if self.poor_reduction(batch.num_rows()) {
            return self.start_passing();
        }
        self.shared.metrics.note_bytes(size);
        if !self.reservation.try_resize(size) {
            if self.shared.spec.group.is_empty() {
                // One group, a few bytes: nothing to spill; it is counted all the same.
                self.reservation.grow_anyway(size - self.reservation.size());
            } else {
                self.spill()?;
            }
        }
        Ok(())
    }

    /// Writes the table's groups to the bucket files and starts an empty table.
    fn spill(&mut self) -> Result<()> {
        let Some(table) = self.table.take() else { return Ok(()) };
        self.table = Some(GroupTable::for_input(&self.shared.spec)?);
        if table.num_groups == 0 {
            return Ok(());
        }
        self.groups_spilled += table.num_groups;
        let buckets = table.group_buckets(0)?;
        let (batch, widths) = table.into_partial()?.into_batch()?;
        let _ = self.shared.state_widths.set(widths);
        write_by_bucket(self.spill_writers(&batch.schema())?, &batch, &buckets)?;
        self.reservation.free();
        Ok(())
    }

    /// The partition's bucket spill files, opened for batches of `schema` at its first spill.
    fn spill_writers(&mut self, schema: &SchemaRef) -> Result<&mut Vec<SpillWriter>> {
        if self.spilled.is_none() {
            let writers = (0..BUCKETS).map(|_| self.shared.spill.writer(schema)).collect::<Result<Vec<_>>>()?;
            self.spilled = Some(writers);
        }
        self.spilled.as_mut().ok_or_else(|| RiffleError::exec("aggregate spill files missing"))
    }

    fn end(&mut self) -> Result<()> {
        let local = if let Some(passing) = self.passing.take().filter(|_| self.spilled.is_none()) {
            Local::Buckets(passing.buckets)
        } else if self.spilled.is_some() {
            self.spill()?;
            let writers = self.spilled.take().unwrap_or_default();
            let files = writers.into_iter().map(|w| w.finish()).collect::<Result<Vec<_>>>()?;
            files.iter().for_each(|f| self.shared.metrics.note_spill(f));
            Local::Spilled(files)
        } else {
            let table = self.table.take().ok_or_else(|| RiffleError::exec("aggregate ended twice"))?;
            let many = !self.shared.spec.group.is_empty() && table.num_groups >= PARALLEL_MERGE_GROUPS;
            let partial = table.into_partial()?;
            if many {
                Local::Buckets(memory_buckets(&self.shared.spec, [partial])?)
            } else {
                Local::Memory(partial)
            }
        };
        self.table = None;
        let held = self.reservation.split_off();
        self.shared.finish(local, held)
    }
}

impl Sink for AggregateSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => {
                let started = std::time::Instant::now();
                self.add(&b)?;
                self.shared.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Message::End => {
                if self.table.is_some() {
                    self.shared.barriers.end(self.partition, &self.shared.output)?;
                    self.end()?;
                }
            }
            Message::Barrier(epoch) => self.shared.barriers.barrier(self.partition, epoch, &self.shared.output)?,
            // A batch aggregate emits only at the end: event time cannot advance past its rows before.
            Message::Watermark(_) | Message::Idle => {}
        }
        Ok(())
    }
}
