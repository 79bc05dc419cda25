//! Joins: the build side (right input) is a pipeline breaker that collects every row and, for hash
//! joins, indexes them by key; the probe side (left input) streams through `ProbeOp`. Nested-loop joins
//! are the same with every build row a candidate for every probe row.
//!
//! Within the memory budget (grace hash join): a build partition whose rows outgrow its reservation
//! writes them to disk split into key-hash buckets, and then the whole build side goes to buckets.
//! The probe side is then written to buckets the same way; once every probe partition has ended,
//! each takes the next bucket from a shared list and joins it (a bucket too big for the budget is
//! split again by other hash bits, and joined beyond the budget when splitting no longer helps: one
//! huge key). Hybrid: the smallest buckets that fit a third of the memory still free when the build
//! side ends stay in memory, indexed, and the probe rows of those buckets join as they arrive; only
//! the other buckets' probe rows are written out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::aggregate::{bucket_of, split_by_bucket, write_by_bucket, Part, PartReader, BUCKETS, MAX_DEPTH};
use super::group_keys::{hash_int, hash_packed, int_like, KeyPacking};
use super::runtime_filter::{KeyValues, RuntimeFilter};
use super::{Notifier, OpMetrics, Operator, PartitionGather, Sink};
use crate::memory::{batch_bytes, retained_bytes, MemoryPool, MemoryReservation, RetainedBuffers, SpillFile, SpillManager, SpillWriter};
use crate::error::{Result, RiffleError};
use crate::eval::{evaluate, evaluate_predicate};
use crate::logical::{Expr, JoinKind};
use crate::message::Message;

/// Candidate pairs materialized at a time, bounding the memory of a many-to-many join.
const PAIRS_PER_CHUNK: usize = 64 * 1024;

pub struct JoinSpec {
    pub kind: JoinKind,
    /// Empty for a nested-loop join.
    pub probe_keys: Vec<Expr>,
    pub build_keys: Vec<Expr>,
    pub filter: Option<Expr>,
    pub null_aware: bool,
    /// Semi/anti: the build rows with (without) a match are the output, emitted once every probe
    /// partition has ended.
    pub keep_build: bool,
    pub probe_schema: SchemaRef,
    pub build_schema: SchemaRef,
    pub output_schema: SchemaRef,
    /// The schema `filter` is evaluated over: probe ++ build.
    pub pair_schema: SchemaRef,
    /// Build columns that go out dictionary-encoded: the build side's column as the values, each
    /// row's build row as its key (an inner join without filter whose aggregate above groups by
    /// them: `crate::physical::dictionary_join_outputs`).
    pub dictionary: Vec<bool>,
}

impl JoinSpec {
    /// Whether build rows are output at the end (by whether a probe row matched them).
    fn emits_build_rows(&self) -> bool {
        self.keep_build || matches!(self.kind, JoinKind::Right | JoinKind::Full)
    }

    /// The join keys of `batch`, a build-side batch or (`probe`) a probe-side one whose keys are
    /// cast to the build keys' types.
    fn key_arrays(&self, batch: &RecordBatch, probe: bool) -> Result<Vec<ArrayRef>> {
        self.build_keys
            .iter()
            .zip(&self.probe_keys)
            .map(|(b, p)| {
                if !probe {
                    return evaluate(b, batch);
                }
                let v = evaluate(p, batch)?;
                let want: DataType = b.data_type(&self.build_schema);
                Ok(if *v.data_type() == want { v } else { arrow::compute::cast(&v, &want)? })
            })
            .collect()
    }

    /// The join keys of `batch` as i64 (as `key_arrays` gives them), when the join has keys, all of
    /// integer-like types; None otherwise.
    fn int_keys(&self, batch: &RecordBatch, probe: bool) -> Result<Option<Vec<arrow::array::Int64Array>>> {
        if self.build_keys.is_empty() || !self.build_keys.iter().all(|b| int_like(&b.data_type(&self.build_schema))) {
            return Ok(None);
        }
        let keys = self.key_arrays(batch, probe)?;
        let wide = keys
            .iter()
            .map(|k| Ok(arrow::compute::cast(k, &DataType::Int64)?.as_primitive::<arrow::datatypes::Int64Type>().clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(wide))
    }

    /// The join keys of `batch` packed into one u128 per row (see `group_keys::KeyPacking`), when
    /// they are several integer-like keys that fit; and which rows have a NULL key.
    fn packed_keys(&self, batch: &RecordBatch, probe: bool) -> Result<Option<PackedKeyRows>> {
        let types: Vec<DataType> = self.build_keys.iter().map(|b| b.data_type(&self.build_schema)).collect();
        let Some(packing) = KeyPacking::new(&types) else { return Ok(None) };
        let keys = self.key_arrays(batch, probe)?;
        Ok(Some((packing.pack(&keys, batch.num_rows())?, null_mask(&keys))))
    }

    /// The row-encoded join keys of `batch` (see `key_arrays`), and which rows have a NULL key.
    fn key_rows(&self, conv: &RowConverter, batch: &RecordBatch, probe: bool) -> Result<(Rows, Option<Vec<bool>>)> {
        let keys = self.key_arrays(batch, probe)?;
        Ok((conv.convert_columns(&keys)?, null_mask(&keys)))
    }
}

/// Each row's join keys packed into a u128, and which rows have a NULL key.
type PackedKeyRows = (Vec<u128>, Option<Vec<bool>>);

struct JoinTable {
    batch: RecordBatch,
    converter: Option<RowConverter>,
    /// The build rows' encoded keys; `heads` holds, for each distinct key, its first build row (by
    /// row number: the key bytes live once, in `keys`), and `next` chains the others.
    keys: Option<Rows>,
    heads: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Instead of `keys` and `heads`, for one integer-like key (ints, dates, timestamps: most join
    /// keys): each distinct key beside its first build row in the map itself, so a probe reads one
    /// slot, not a slot and the stored key's bytes (see `group_keys.rs`).
    int_heads: Option<IntHeads>,
    /// Likewise for several integer-like keys packed into one u128 (TPC-DS's returns joined to their
    /// sales on item and ticket).
    packed_heads: Option<HashTable<(u128, u32)>>,
    /// With `int_heads`, for several keys: how they fold into the one integer looked up.
    ranges: Option<KeyRanges>,
    next: Vec<u32>,
    /// No key has two build rows (`next` chains nothing: a probe need not read it).
    unique: bool,
    /// Of the whole build side (also when this table holds one bucket of it): rows, and whether a
    /// key is NULL (for NOT IN and IN).
    build_rows: usize,
    has_null_key: bool,
    /// Build rows that found a partner (right and full joins).
    visited: Vec<AtomicBool>,
    /// The memory the table holds.
    _reservation: MemoryReservation,
}

const NONE: u32 = u32::MAX;

/// Several integer-like join keys folded into one i64 by the build side's value ranges: each key's
/// offset from its smallest build value, in as many bits as its build values span, above the keys
/// before it. Keys that fit 63 bits together (TPC-H q09's `(l_suppkey, l_partkey)`, 17 and 21 bits
/// at SF10, where packing whole values into 128 bits fails) are then looked up as one integer key,
/// densely when the folded values are (DuckDB compresses join keys by their ranges likewise). A
/// probe key outside its build range matches nothing: its folded key is NULL.
struct KeyRanges {
    /// Per key: its smallest and largest build value, and the bit its offset starts at.
    keys: Vec<(i64, i64, u32)>,
}

impl KeyRanges {
    /// The ranges of the build side's `keys`, when they fit 63 bits together; None otherwise (or
    /// when a key is NULL on every row).
    fn of(keys: &[arrow::array::Int64Array]) -> Option<KeyRanges> {
        let mut ranges = Vec::with_capacity(keys.len());
        let mut shift = 0u32;
        for k in keys {
            let (min, max) = (arrow::compute::min(k)?, arrow::compute::max(k)?);
            let span = (max as i128 - min as i128) as u128;
            ranges.push((min, max, shift));
            shift += 128 - span.leading_zeros();
            if shift > 63 {
                return None;
            }
        }
        Some(KeyRanges { keys: ranges })
    }

    /// Each row's keys folded into one value; NULL where a key is NULL or outside its range.
    fn fold(&self, keys: &[arrow::array::Int64Array]) -> arrow::array::Int64Array {
        let n = keys.first().map_or(0, |k| k.len());
        let mut folded = vec![0i64; n];
        let mut valid = vec![true; n];
        for (k, &(min, max, shift)) in keys.iter().zip(&self.keys) {
            for (i, &v) in k.values().iter().enumerate() {
                if v < min || v > max || k.is_null(i) {
                    valid[i] = false;
                } else {
                    folded[i] |= ((v as i128 - min as i128) as i64) << shift;
                }
            }
        }
        let nulls = valid.contains(&false).then(|| arrow::buffer::NullBuffer::from(valid));
        arrow::array::Int64Array::new(folded.into(), nulls)
    }
}

/// Build keys' first rows, for one integer-like key.
enum IntHeads {
    /// Keys in a range not much wider than the build side (surrogate keys: TPC-DS's dimensions,
    /// TPC-H's parts and customers): key k's first row at `heads[k - min]` (`NONE`: no row), so a
    /// probe reads one word and hashes nothing (DuckDB's perfect hash join).
    Dense { min: i64, heads: Vec<u32> },
    Hashed(HashTable<(i64, u32)>),
}

/// A dense table may take this many slots per build row (beside a few to start with): at 4 bytes a
/// slot, no more than the hash table's (i64, u32) entries at its load factor.
const DENSE_SLOTS_PER_ROW: usize = 3;

impl IntHeads {
    /// Chains the rows of `n` by key (see `chain_by_key`): the heads, the chains, and whether a key
    /// is NULL.
    fn build(n: usize, key: impl Fn(usize) -> Option<i64>) -> (IntHeads, Vec<u32>, bool) {
        let (mut min, mut max) = (i64::MAX, i64::MIN);
        for k in (0..n).filter_map(&key) {
            (min, max) = (min.min(k), max.max(k));
        }
        let span = (max as i128 - min as i128 + 1).max(0);
        if span > (n * DENSE_SLOTS_PER_ROW + 1024) as i128 {
            let (map, next, has_null) = chain_by_key(n, key, hash_int);
            return (IntHeads::Hashed(map), next, has_null);
        }
        let mut heads = vec![NONE; span as usize];
        let (next, has_null) = chain_rows(n, key, |k, i| std::mem::replace(&mut heads[(k - min) as usize], i));
        (IntHeads::Dense { min, heads }, next, has_null)
    }

    fn head(&self, key: i64) -> Option<u32> {
        match self {
            IntHeads::Dense { min, heads } => {
                let j = *heads.get(usize::try_from(key.checked_sub(*min)?).ok()?)?;
                (j != NONE).then_some(j)
            }
            IntHeads::Hashed(map) => map.find(hash_int(key), |(k, _)| *k == key).map(|(_, j)| *j),
        }
    }

    fn size(&self) -> usize {
        match self {
            IntHeads::Dense { heads, .. } => heads.capacity() * 4,
            IntHeads::Hashed(map) => map.capacity() * 17,
        }
    }
}

impl JoinTable {
    /// The first build row whose key is the integer `key`.
    fn int_head(&self, key: i64) -> Option<u32> {
        self.int_heads.as_ref()?.head(key)
    }

    /// The first build row whose packed keys are `key`.
    fn packed_head(&self, key: u128) -> Option<u32> {
        self.packed_heads.as_ref()?.find(hash_packed(key), |(k, _)| *k == key).map(|(_, j)| *j)
    }

    /// The first build row whose key is `key`.
    fn head(&self, key: &[u8]) -> Option<u32> {
        let keys = self.keys.as_ref()?;
        self.heads.find(self.hasher.hash_one(key), |&j| super::same_key(keys.row(j as usize).as_ref(), key)).copied()
    }
}

/// What the build side became.
enum Built {
    Table(JoinTable),
    /// Buckets on disk, joined one by one after the probe side (see the module comment).
    Spilled(SpilledBuild),
}

/// A bucket to join: its split depth, build files and probe files.
type BucketWork = (usize, Vec<SpillFile>, Vec<SpillFile>);

struct SpilledBuild {
    /// The buckets kept in memory (hybrid hash join): their build rows, indexed, which probe rows of
    /// those buckets join as they arrive instead of going to disk. Dropped once the probe side has
    /// ended, so that the buckets on disk get its memory.
    resident: RwLock<Option<JoinTable>>,
    is_resident: [bool; BUCKETS],
    /// The buckets to join, (split depth, build files, probe files), bucket `b` at index `b` until the
    /// probe side has ended and added its files (`work_ready`); then every probe partition takes the
    /// next one until none is left.
    work: Mutex<Vec<BucketWork>>,
    work_ready: AtomicBool,
    build_rows: usize,
    has_null_key: bool,
}

/// One build partition's rows at its end.
enum LocalBuild {
    Memory(Vec<RecordBatch>, MemoryReservation),
    /// Bucket files, with the partition's row count and whether it met a NULL key.
    Spilled(Vec<SpillFile>, usize, bool),
}

pub struct JoinShared {
    spec: JoinSpec,
    pending: PartitionGather<LocalBuild>,
    table: OnceLock<Built>,
    /// Probe partitions that ended, with their bucket files once the build side spilled.
    probes: PartitionGather<(usize, SpillFile)>,
    /// Whether a probe partition that ended holds its end back to join spilled buckets beside the
    /// others once all ended. Not in a stream: exchanges downstream align barriers over the producers
    /// that have not ended, and a partition holding its end passes none of the barriers its siblings
    /// still pass, which would wait for it while it waits for them. There a partition ends at once
    /// and the last one joins every bucket.
    hold_end: bool,
    /// Whether the build side may spill. Not in a checkpointed job: the probe rows of spilled
    /// buckets would wait in files, in no checkpoint, until the probe side ends.
    may_spill: bool,
    notifier: Notifier,
    metrics: Arc<OpMetrics>,
    pool: Arc<MemoryPool>,
    spill: Arc<SpillManager>,
    /// Filters on the probe side's scans, by the index of the key whose build values they hold.
    runtime_filters: Vec<(usize, Arc<RuntimeFilter>)>,
}

impl JoinShared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        spec: JoinSpec,
        build_partitions: usize,
        probe_partitions: usize,
        hold_end: bool,
        may_spill: bool,
        notifier: Notifier,
        metrics: Arc<OpMetrics>,
        pool: Arc<MemoryPool>,
        spill: Arc<SpillManager>,
    ) -> JoinShared {
        JoinShared {
            spec,
            pending: PartitionGather::new(build_partitions),
            table: OnceLock::new(),
            probes: PartitionGather::new(probe_partitions),
            hold_end,
            may_spill,
            notifier,
            metrics,
            pool,
            spill,
            runtime_filters: Vec::new(),
        }
    }

    /// Sets `filters` (key index, filter) once the build side is complete.
    pub fn with_runtime_filters(mut self, filters: Vec<(usize, Arc<RuntimeFilter>)>) -> JoinShared {
        self.runtime_filters = filters;
        self
    }

    /// Sets the runtime filters to the key values of `batch`, the whole build side; or, without it
    /// (a build side that spilled), to none.
    fn set_runtime_filters(&self, batch: Option<&RecordBatch>) -> Result<()> {
        for (key, filter) in &self.runtime_filters {
            let values = match (batch, self.spec.build_keys.get(*key)) {
                (Some(batch), Some(expr)) => Some(KeyValues::of(&evaluate(expr, batch)?)?),
                _ => None,
            };
            filter.set(values);
        }
        Ok(())
    }

    /// The bucket at split `depth` of every row of `batch`.
    fn buckets(&self, conv: &RowConverter, batch: &RecordBatch, probe: bool, depth: usize) -> Result<Vec<usize>> {
        let (rows, _) = self.spec.key_rows(conv, batch, probe)?;
        Ok(rows.iter().map(|r| bucket_of(r.as_ref(), depth)).collect())
    }

    /// The bucket (split depth 0) of every build row of `batch`, and whether one of their keys is NULL.
    fn build_buckets(&self, conv: &RowConverter, batch: &RecordBatch) -> Result<(Vec<usize>, bool)> {
        let (rows, nulls) = self.spec.key_rows(conv, batch, false)?;
        Ok((rows.iter().map(|r| bucket_of(r.as_ref(), 0)).collect(), nulls.is_some_and(|n| n.contains(&true))))
    }

    /// Writes build rows to their buckets (split depth 0); true if one of their keys is NULL.
    fn spill_build_batch(&self, conv: &RowConverter, writers: &mut [SpillWriter], batch: &RecordBatch) -> Result<bool> {
        let (of, null_key) = self.build_buckets(conv, batch)?;
        write_by_bucket(writers, batch, &of)?;
        Ok(null_key)
    }

    fn bucket_writers(&self, schema: &SchemaRef) -> Result<Vec<SpillWriter>> {
        (0..BUCKETS).map(|_| self.spill.writer(schema)).collect()
    }

    fn finish_writers(&self, writers: Vec<SpillWriter>) -> Result<Vec<SpillFile>> {
        let files = writers.into_iter().map(|w| w.finish()).collect::<Result<Vec<_>>>()?;
        files.iter().for_each(|f| self.metrics.note_spill(f));
        Ok(files)
    }

    fn key_converter(&self) -> Result<Option<RowConverter>> {
        if self.spec.build_keys.is_empty() {
            return Ok(None);
        }
        let fields = self.spec.build_keys.iter().map(|k| SortField::new(k.data_type(&self.spec.build_schema))).collect();
        Ok(Some(RowConverter::new(fields)?))
    }

    fn finish_build(&self, local: LocalBuild) -> Result<()> {
        let Some(locals) = self.pending.arrive([local])? else { return Ok(()) };
        let spilled = locals.iter().any(|l| matches!(l, LocalBuild::Spilled(..)));
        let built = match self.key_converter()? {
            Some(conv) if spilled => {
                self.set_runtime_filters(None)?;
                self.spill_build(&conv, locals)?
            }
            _ => {
                let mut batches = Vec::new();
                let mut reservation = self.pool.reservation("HashJoin build", true);
                for local in locals {
                    if let LocalBuild::Memory(b, r) = local {
                        batches.extend(b);
                        reservation.merge(r);
                    }
                }
                let batch = concat_batches(&self.spec.build_schema, &batches)?;
                drop(batches);
                self.set_runtime_filters(Some(&batch))?;
                Built::Table(self.build_table(batch, None, reservation)?)
            }
        };
        if self.table.set(built).is_err() {
            return Err(RiffleError::exec("join table built twice"));
        }
        self.notifier.bump();
        Ok(())
    }

    /// Writes the build side to bucket files, except for the buckets that fit a share of the memory
    /// still free: those stay in memory, indexed (hybrid hash join), so their probe rows never touch
    /// the disk. Smallest buckets first, so that as many as possible stay.
    fn spill_build(&self, conv: &RowConverter, locals: Vec<LocalBuild>) -> Result<Built> {
        let mut files: Vec<Vec<SpillFile>> = (0..BUCKETS).map(|_| Vec::new()).collect();
        let mut memory: Vec<Vec<RecordBatch>> = (0..BUCKETS).map(|_| Vec::new()).collect();
        let (mut build_rows, mut has_null_key) = (0, false);
        // Held until the rows they cover are written out or kept.
        let mut held = Vec::new();
        for local in locals {
            match local {
                LocalBuild::Spilled(parts, rows, nulls) => {
                    for (b, f) in parts.into_iter().enumerate() {
                        files[b].push(f);
                    }
                    build_rows += rows;
                    has_null_key |= nulls;
                }
                LocalBuild::Memory(batches, reservation) => {
                    for batch in batches {
                        build_rows += batch.num_rows();
                        let (of, null_key) = self.build_buckets(conv, &batch)?;
                        has_null_key |= null_key;
                        for (b, part) in split_by_bucket(&batch, &of)? {
                            memory[b].push(part);
                        }
                    }
                    held.push(reservation);
                }
            }
        }
        let rows_of = |b: usize| files[b].iter().map(|f| f.rows()).sum::<usize>() + memory[b].iter().map(|m| m.num_rows()).sum::<usize>();
        let mut order: Vec<usize> = (0..BUCKETS).collect();
        order.sort_by_key(|&b| rows_of(b));
        // A third of what is free: the index comes on top of the rows, and the probe side's own
        // operators need memory too.
        let budget = self.pool.limit().saturating_sub(self.pool.used()) / 3;
        let mut reservation = self.pool.reservation("HashJoin build (resident buckets)", true);
        let mut is_resident = [false; BUCKETS];
        let mut resident = Vec::new();
        for b in order {
            let mem_size: usize = memory[b].iter().map(retained_bytes).sum();
            let mut loaded = Vec::new();
            let mut fits = reservation.size() + mem_size <= budget && reservation.try_grow(mem_size);
            let mut grant = if fits { mem_size } else { 0 };
            for file in &files[b] {
                if !fits {
                    break;
                }
                let mut reader = file.reader()?;
                while fits {
                    let Some(batch) = reader.next_batch()? else { break };
                    let size = batch_bytes(&batch);
                    fits = reservation.size() + size <= budget && reservation.try_grow(size);
                    grant += if fits { size } else { 0 };
                    loaded.push(batch);
                }
            }
            if !fits {
                // Over the budget: this bucket and the bigger ones go to disk (its files, read back in
                // part, stay as they are).
                reservation.shrink(grant);
                break;
            }
            is_resident[b] = true;
            self.metrics.buckets_in_memory.fetch_add(1, Ordering::Relaxed);
            files[b].clear();
            resident.extend(loaded);
            resident.append(&mut memory[b]);
        }
        // Every bucket not kept: its rows still in memory go to a file of their own.
        let mut writers = self.bucket_writers(&self.spec.build_schema)?;
        for (b, parts) in memory.iter().enumerate() {
            for part in parts {
                writers[b].write(part)?;
            }
        }
        for (b, f) in self.finish_writers(writers)?.into_iter().enumerate() {
            if !is_resident[b] {
                files[b].push(f);
            }
        }
        drop(memory);
        drop(held);
        let resident = if !is_resident.contains(&true) {
            None
        } else {
            let batch = concat_batches(&self.spec.build_schema, &resident)?;
            drop(resident);
            Some(self.build_table(batch, Some((build_rows, has_null_key)), reservation)?)
        };
        Ok(Built::Spilled(SpilledBuild {
            resident: RwLock::new(resident),
            is_resident,
            work: Mutex::new(files.into_iter().map(|b| (0, b, Vec::new())).collect()),
            work_ready: AtomicBool::new(false),
            build_rows,
            has_null_key,
        }))
    }

    /// Indexes `batch` by key. `whole` gives the build side's row count and NULL-key flag when the
    /// batch is one bucket of it.
    fn build_table(&self, batch: RecordBatch, whole: Option<(usize, bool)>, mut reservation: MemoryReservation) -> Result<JoinTable> {
        let converter = self.key_converter()?;
        let hasher = DefaultHashBuilder::default();
        let mut heads: HashTable<u32> = HashTable::new();
        let mut keys = None;
        let mut next = Vec::new();
        let mut has_null_key = false;
        let (mut int_heads, mut packed_heads, mut ranges) = (None, None, None);
        // One integer-like key as it is; several folded into one by their ranges, when they fit.
        let int_key = match self.spec.int_keys(&batch, false)? {
            Some(mut keys) if keys.len() == 1 => keys.pop(),
            Some(keys) => KeyRanges::of(&keys).map(|r| {
                let folded = r.fold(&keys);
                ranges = Some(r);
                folded
            }),
            None => None,
        };
        if let Some(build) = int_key {
            let (map, chains, nulls) = IntHeads::build(batch.num_rows(), |i| build.is_valid(i).then(|| build.value(i)));
            (next, has_null_key) = (chains, nulls);
            int_heads = Some(map);
        } else if let Some((build, null_rows)) = self.spec.packed_keys(&batch, false)? {
            let valid = |i: usize| !null_rows.as_ref().is_some_and(|n| n[i]);
            let (map, chains, nulls) = chain_by_key(batch.num_rows(), |i| valid(i).then(|| build[i]), hash_packed);
            (next, has_null_key) = (chains, nulls);
            packed_heads = Some(map);
        } else if let Some(conv) = &converter {
            let (rows, null_rows) = self.spec.key_rows(conv, &batch, false)?;
            next = vec![NONE; batch.num_rows()];
            heads.reserve(batch.num_rows(), |&j| hasher.hash_one(rows.row(j as usize).as_ref()));
            // Inserted back to front so each chain lists rows in input order.
            for i in (0..batch.num_rows()).rev() {
                if null_rows.as_ref().is_some_and(|n| n[i]) {
                    has_null_key = true;
                    continue;
                }
                let key = rows.row(i);
                let hash = hasher.hash_one(key.as_ref());
                match heads.find_mut(hash, |&j| super::same_key(rows.row(j as usize).as_ref(), key.as_ref())) {
                    Some(head) => {
                        next[i] = *head;
                        *head = i as u32;
                    }
                    None => {
                        heads.insert_unique(hash, i as u32, |&j| hasher.hash_one(rows.row(j as usize).as_ref()));
                    }
                }
            }
            keys = Some(rows);
        }
        if self.spec.kind == JoinKind::Single {
            let duplicate = if converter.is_some() {
                next.iter().any(|n| *n != NONE)
            } else {
                batch.num_rows() > 1
            };
            if duplicate {
                return Err(RiffleError::exec(
                    "more than one row returned by a subquery used as an expression (add LIMIT 1 or an aggregate such as max())",
                ));
            }
        }
        let visited = if self.spec.emits_build_rows() {
            (0..batch.num_rows()).map(|_| AtomicBool::new(false)).collect()
        } else {
            Vec::new()
        };
        let int_bytes = int_heads.as_ref().map_or(0, IntHeads::size)
            + packed_heads.as_ref().map_or(0, |m: &HashTable<(u128, u32)>| m.capacity() * 33);
        let bytes = retained_bytes(&batch) + keys.as_ref().map_or(0, |k: &Rows| k.size()) + heads.capacity() * 5 + int_bytes + next.len() * 4;
        self.metrics.note_bytes(bytes);
        // The rows were reserved as they arrived; the index comes on top. A nested-loop join cannot
        // spill, nor can a bucket that splitting no longer makes smaller: they are held beyond the budget.
        let extra = bytes.saturating_sub(reservation.size());
        if !reservation.try_grow(extra) {
            reservation.grow_anyway(extra);
        }
        let (build_rows, has_null_key) = whole.unwrap_or((batch.num_rows(), has_null_key));
        let unique = next.iter().all(|j| *j == NONE);
        Ok(JoinTable { batch, converter, keys, heads, hasher, int_heads, packed_heads, ranges, next, unique, build_rows, has_null_key, visited, _reservation: reservation })
    }
}

/// Which rows of `keys` have a NULL in some key column (they never match).
fn null_mask(keys: &[ArrayRef]) -> Option<Vec<bool>> {
    if keys.iter().all(|k| k.null_count() == 0) {
        return None;
    }
    let n = keys.first().map_or(0, |k| k.len());
    Some((0..n).map(|i| keys.iter().any(|k| k.is_null(i))).collect())
}

/// Collects the build side of one partition, within its memory reservation; past it, into bucket files.
pub struct BuildSink {
    shared: Arc<JoinShared>,
    batches: Vec<RecordBatch>,
    /// The buffers `batches` hold, as `reservation` counts them.
    buffers: RetainedBuffers,
    reservation: MemoryReservation,
    /// Encodes the join keys; `None` for a nested-loop join.
    converter: Option<RowConverter>,
    /// Bucket files once this partition spilled, with the rows written and whether a key was NULL.
    spilled: Option<(Vec<SpillWriter>, usize, bool)>,
}

impl BuildSink {
    pub fn new(shared: Arc<JoinShared>, partition: usize) -> Result<BuildSink> {
        let reservation = shared.pool.reservation(format!("HashJoin build (partition {partition})"), true);
        let converter = shared.key_converter()?;
        Ok(BuildSink { shared, batches: Vec::new(), buffers: RetainedBuffers::default(), reservation, converter, spilled: None })
    }

    fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let shared = self.shared.clone();
        let conv = match &self.converter {
            // Without keys (nested loop) the rows cannot be split: they stay in memory, counted.
            None => {
                self.reservation.grow_anyway(self.buffers.add(&batch));
                self.batches.push(batch);
                return Ok(());
            }
            Some(conv) => conv,
        };
        if self.spilled.is_none() {
            if !shared.may_spill {
                self.reservation.grow_anyway(self.buffers.add(&batch));
                self.batches.push(batch);
                return Ok(());
            }
            if self.reservation.try_grow(self.buffers.add(&batch)) {
                self.batches.push(batch);
                return Ok(());
            }
            self.spilled = Some((shared.bucket_writers(&shared.spec.build_schema)?, 0, false));
            self.reservation.free();
            // The batches go to disk: no buffer is held from here on.
            self.buffers = RetainedBuffers::default();
        }
        let Some((writers, rows, nulls)) = self.spilled.as_mut() else { return Err(RiffleError::exec("join spill files missing")) };
        for batch in std::mem::take(&mut self.batches).into_iter().chain([batch]) {
            *rows += batch.num_rows();
            *nulls |= shared.spill_build_batch(conv, writers, &batch)?;
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        let local = match self.spilled.take() {
            Some((writers, rows, nulls)) => LocalBuild::Spilled(self.shared.finish_writers(writers)?, rows, nulls),
            None => LocalBuild::Memory(std::mem::take(&mut self.batches), self.reservation.split_off()),
        };
        self.shared.finish_build(local)
    }
}

impl Sink for BuildSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => self.add(b)?,
            Message::End => self.end()?,
            // The build side of a batch join is complete before probing starts; its control messages
            // are not forwarded (the probe side carries the stream's).
            Message::Watermark(_) | Message::Barrier(_) | Message::Idle => {}
        }
        Ok(())
    }
}

pub struct ProbeOp {
    shared: Arc<JoinShared>,
    /// This partition's probe rows by bucket (and their key encoder), when the build side spilled.
    spilled: Option<(Vec<SpillWriter>, RowConverter)>,
    /// The bucket this partition is joining once the probe side ended, and the end it holds back.
    grace: Option<GraceJoin>,
    held_end: Option<Message>,
}

impl ProbeOp {
    pub fn new(shared: Arc<JoinShared>) -> ProbeOp {
        ProbeOp { shared, spilled: None, grace: None, held_end: None }
    }
}

/// One probe partition joining spilled buckets, one at a time, taken from the shared work list.
struct GraceJoin {
    current: Option<(JoinTable, PartReader)>,
}

impl GraceJoin {
    /// Joins one probe batch of the current bucket (or loads the next bucket); false when none is left.
    fn step(&mut self, shared: &JoinShared, spilled: &SpilledBuild, out: &mut Vec<Message>) -> Result<bool> {
        loop {
            if let Some((table, probe)) = &mut self.current {
                match probe.next_batch()? {
                    Some(batch) => {
                        if batch.num_rows() > 0 {
                            probe_batch(&shared.spec, table, batch, out)?;
                        }
                    }
                    None => {
                        emit_unmatched_build(&shared.spec, table, out)?;
                        self.current = None;
                    }
                }
                if !out.is_empty() {
                    return Ok(true);
                }
                continue;
            }
            let Some((depth, build, probe)) = spilled.work.lock().map_err(poisoned)?.pop() else { return Ok(false) };
            let mut reservation = shared.pool.reservation("HashJoin build (spilled bucket)", true);
            let mut reader = PartReader { parts: build.into_iter().map(Part::File).collect(), current: None };
            let mut batches = Vec::new();
            let mut fits = true;
            while let Some(b) = reader.next_batch()? {
                fits &= reservation.try_grow(batch_bytes(&b));
                batches.push(b);
            }
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let conv = shared.key_converter()?.ok_or_else(|| RiffleError::exec("spilled join without keys"))?;
            if !fits && depth + 1 < MAX_DEPTH && rows > 1 {
                // Too big for the budget: split this bucket's build and probe rows again, by other hash bits.
                reservation.free();
                let split = |parts: Vec<Part>, probe_side: bool, schema: &SchemaRef| -> Result<Vec<SpillFile>> {
                    let mut writers = shared.bucket_writers(schema)?;
                    let mut reader = PartReader { parts: parts.into(), current: None };
                    while let Some(b) = reader.next_batch()? {
                        let of = shared.buckets(&conv, &b, probe_side, depth + 1)?;
                        write_by_bucket(&mut writers, &b, &of)?;
                    }
                    shared.finish_writers(writers)
                };
                let build = split(batches.into_iter().map(Part::Memory).collect(), false, &shared.spec.build_schema)?;
                let probe = split(probe.into_iter().map(Part::File).collect(), true, &shared.spec.probe_schema)?;
                let mut work = spilled.work.lock().map_err(poisoned)?;
                for (b, p) in build.into_iter().zip(probe) {
                    work.push((depth + 1, vec![b], vec![p]));
                }
                continue;
            }
            if !fits {
                // One huge key: splitting cannot make it smaller, so it is joined beyond the budget.
                let size = batches.iter().map(batch_bytes).sum::<usize>();
                reservation.grow_anyway(size.saturating_sub(reservation.size()));
            }
            let batch = concat_batches(&shared.spec.build_schema, &batches)?;
            drop(batches);
            let table = shared.build_table(batch, Some((spilled.build_rows, spilled.has_null_key)), reservation)?;
            let probe = PartReader { parts: probe.into_iter().map(Part::File).collect(), current: None };
            self.current = Some((table, probe));
        }
    }
}

/// The probe rows followed by the build rows of each pair.
fn pair_batch(spec: &JoinSpec, probe: &RecordBatch, build: &RecordBatch, pi: &UInt32Array, bi: &UInt32Array) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(probe.num_columns() + build.num_columns());
    for c in probe.columns() {
        cols.push(take(c.as_ref(), pi, None)?);
    }
    let mut build_rows: Option<arrow::array::Int32Array> = None;
    for (c, encoded) in build.columns().iter().zip(spec.dictionary.iter().chain(std::iter::repeat(&false))) {
        if *encoded {
            // The build row is the key: nothing of the string is copied.
            // Build rows are fewer than 2^31 (a batch's rows are counted in i32 offsets).
            let keys = build_rows.get_or_insert_with(|| bi.unary(|b| b as i32)).clone();
            cols.push(Arc::new(arrow::array::DictionaryArray::try_new(keys, c.clone())?));
        } else {
            cols.push(take(c.as_ref(), bi, None)?);
        }
    }
    Ok(RecordBatch::try_new_with_options(
        with_column_types(&spec.pair_schema, &cols),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(pi.len())),
    )?)
}

/// `batch` with its columns of `schema`'s types: dictionary-encoded ones expanded.
fn declared_types(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c.clone()) } else { arrow::compute::cast(c, f.data_type()) })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())))?)
}

/// `schema` with the types of `columns` where they are dictionary-encoded.
fn with_column_types(schema: &SchemaRef, columns: &[ArrayRef]) -> SchemaRef {
    if !columns.iter().any(|c| matches!(c.data_type(), DataType::Dictionary(..))) {
        return schema.clone();
    }
    let fields: Vec<arrow::datatypes::Field> = schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(f, c)| match c.data_type() {
            d @ DataType::Dictionary(..) => f.as_ref().clone().with_data_type(d.clone()),
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(arrow::datatypes::Schema::new(fields))
}

/// Rows of `side` padded with NULLs for the other side's columns, in output order.
fn padded(spec: &JoinSpec, side: &RecordBatch, side_is_probe: bool) -> Result<RecordBatch> {
    let n = side.num_rows();
    let nulls = |schema: &SchemaRef| -> Vec<ArrayRef> {
        schema.fields().iter().map(|f| new_null_array(f.data_type(), n)).collect()
    };
    let cols: Vec<ArrayRef> = if side_is_probe {
        side.columns().iter().cloned().chain(nulls(&spec.build_schema)).collect()
    } else {
        nulls(&spec.probe_schema).into_iter().chain(side.columns().iter().cloned()).collect()
    };
    Ok(RecordBatch::try_new_with_options(spec.output_schema.clone(), cols, &RecordBatchOptions::new().with_row_count(Some(n)))?)
}

/// Which probe rows have a NULL in some key column; `None` when none has.
fn probe_key_nulls(spec: &JoinSpec, probe: &RecordBatch) -> Result<Option<Vec<bool>>> {
    let keys = spec.probe_keys.iter().map(|k| evaluate(k, probe)).collect::<Result<Vec<_>>>()?;
    Ok(null_mask(&keys))
}

/// Rows `0..n` indexed by key (`key(i)`, None for a NULL key): each distinct key beside its first row
/// in the map, `next` chaining each row to the next with its key, in input order; and whether a key
/// was NULL.
fn chain_by_key<K: Copy + PartialEq>(n: usize, key: impl Fn(usize) -> Option<K>, hash: fn(K) -> u64) -> (HashTable<(K, u32)>, Vec<u32>, bool) {
    let mut map: HashTable<(K, u32)> = HashTable::with_capacity(n);
    let (next, has_null) = chain_rows(n, key, |k, i| {
        let h = hash(k);
        match map.find_mut(h, |(stored, _)| *stored == k) {
            Some((_, head)) => std::mem::replace(head, i),
            None => {
                map.insert_unique(h, (k, i), |(stored, _)| hash(*stored));
                NONE
            }
        }
    });
    (map, next, has_null)
}

/// Chains rows `0..n` by key (`key(i)`, None for a NULL key), back to front so that each chain lists
/// rows in input order: `make_head(k, i)` makes row `i` the first row of key `k` and returns the row
/// that was (`NONE`: none). The chains, and whether a key was NULL.
fn chain_rows<K>(n: usize, key: impl Fn(usize) -> Option<K>, mut make_head: impl FnMut(K, u32) -> u32) -> (Vec<u32>, bool) {
    let mut next = vec![NONE; n];
    let mut has_null = false;
    for i in (0..n).rev() {
        match key(i) {
            Some(k) => next[i] = make_head(k, i as u32),
            None => has_null = true,
        }
    }
    (next, has_null)
}

/// Calls `f` with chunks of candidate pairs (probe row, build row): key matches for a hash join,
/// every pair for a nested-loop join.
fn candidates(spec: &JoinSpec, probe: &RecordBatch, table: &JoinTable, f: &mut dyn FnMut(Vec<u32>, Vec<u32>) -> Result<()>) -> Result<()> {
    let (mut pi, mut bi) = (Vec::new(), Vec::new());
    match &table.converter {
        Some(conv) => {
            // One integer-like key: looked up as i64; any other keys: by their encoded rows.
            let int_keys = match (&table.int_heads, &table.ranges) {
                (None, _) => None,
                (Some(_), None) => spec.int_keys(probe, true)?.and_then(|mut keys| keys.pop()),
                (Some(_), Some(ranges)) => spec.int_keys(probe, true)?.map(|keys| ranges.fold(&keys)),
            };
            let packed = if table.packed_heads.is_some() { spec.packed_keys(probe, true)? } else { None };
            let rows = if int_keys.is_none() && packed.is_none() { Some(spec.key_rows(conv, probe, true)?) } else { None };
            for i in 0..probe.num_rows() {
                let head = match (&int_keys, &packed, &rows) {
                    (Some(keys), _, _) => keys.is_valid(i).then(|| table.int_head(keys.value(i))).flatten(),
                    (None, Some((keys, nulls)), _) => (!nulls.as_ref().is_some_and(|n| n[i])).then(|| table.packed_head(keys[i])).flatten(),
                    (None, None, Some((rows, nulls))) => (!nulls.as_ref().is_some_and(|n| n[i])).then(|| table.head(rows.row(i).as_ref())).flatten(),
                    (None, None, None) => None,
                };
                let Some(head) = head else { continue };
                pi.push(i as u32);
                bi.push(head);
                if !table.unique {
                    let mut j = table.next[head as usize];
                    while j != NONE {
                        pi.push(i as u32);
                        bi.push(j);
                        j = table.next[j as usize];
                    }
                }
                if pi.len() >= PAIRS_PER_CHUNK {
                    f(std::mem::take(&mut pi), std::mem::take(&mut bi))?;
                }
            }
        }
        None => {
            let b = table.batch.num_rows() as u32;
            for i in 0..probe.num_rows() as u32 {
                for j in 0..b {
                    pi.push(i);
                    bi.push(j);
                }
                if pi.len() >= PAIRS_PER_CHUNK {
                    f(std::mem::take(&mut pi), std::mem::take(&mut bi))?;
                }
            }
        }
    }
    if !pi.is_empty() {
        f(pi, bi)?;
    }
    Ok(())
}

/// Joins one probe batch against `table`, appending the output to `out`.
fn probe_batch(spec: &JoinSpec, table: &JoinTable, probe: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
    let n = probe.num_rows();
    let build_rows = table.build_rows;
    if spec.null_aware && spec.kind == JoinKind::Anti && build_rows > 0 && table.has_null_key {
        // x NOT IN (… NULL …) is never true.
        return Ok(());
    }
    let emits_pairs = spec.kind.keeps_right();
    // Without keys or a condition a row matches when the build side has any row (EXISTS over an
    // uncorrelated subquery): no need to list the pairs.
    let trivial = table.converter.is_none() && spec.filter.is_none() && !emits_pairs;
    let mut matched = vec![trivial && build_rows > 0; n];
    if !trivial {
        candidates(spec, &probe, table, &mut |pi, bi| {
            let (pi, bi) = (UInt32Array::from(pi), UInt32Array::from(bi));
            let (pi, bi, pairs) = match &spec.filter {
                Some(filter) => {
                    let pairs = pair_batch(spec, &probe, &table.batch, &pi, &bi)?;
                    let mask: BooleanArray = evaluate_predicate(filter, &pairs)?;
                    let pi = arrow::compute::filter(&pi, &mask)?;
                    let bi = arrow::compute::filter(&bi, &mask)?;
                    let pairs = if emits_pairs { Some(filter_record_batch(&pairs, &mask)?) } else { None };
                    (downcast_u32(&pi)?, downcast_u32(&bi)?, pairs)
                }
                None => {
                    let pairs = if emits_pairs { Some(pair_batch(spec, &probe, &table.batch, &pi, &bi)?) } else { None };
                    (pi, bi, pairs)
                }
            };
            for i in pi.values() {
                matched[*i as usize] = true;
            }
            if !table.visited.is_empty() {
                for j in bi.values() {
                    table.visited[*j as usize].store(true, Ordering::Relaxed);
                }
            }
            if let Some(p) = pairs {
                if p.num_rows() > 0 {
                    let p = RecordBatch::try_new_with_options(
                        with_column_types(&spec.output_schema, p.columns()),
                        p.columns().to_vec(),
                        &RecordBatchOptions::new().with_row_count(Some(p.num_rows())),
                    )?;
                    out.push(Message::Batch(p));
                }
            }
            Ok(())
        })?;
    }
    if spec.keep_build {
        // The build rows are the output, once every probe row was seen.
        return Ok(());
    }
    if spec.kind == JoinKind::Mark {
        // IN over a non-empty right side is unknown for an unmatched row when a key on either side
        // is NULL.
        let in_unknown = spec.null_aware && build_rows > 0;
        let probe_nulls = if in_unknown && !table.has_null_key { probe_key_nulls(spec, &probe)? } else { None };
        let mark: BooleanArray = (0..n)
            .map(|i| {
                if matched[i] {
                    Some(true)
                } else if in_unknown && (table.has_null_key || probe_nulls.as_ref().is_some_and(|m| m[i])) {
                    None
                } else {
                    Some(false)
                }
            })
            .collect();
        let mut cols = probe.columns().to_vec();
        cols.push(std::sync::Arc::new(mark));
        out.push(Message::Batch(RecordBatch::try_new_with_options(
            spec.output_schema.clone(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(n)),
        )?));
        return Ok(());
    }
    let keep: Option<BooleanArray> = match spec.kind {
        JoinKind::Left | JoinKind::Full | JoinKind::Single => Some(matched.iter().map(|m| !m).collect()),
        JoinKind::Semi => Some(matched.iter().copied().collect()),
        JoinKind::Anti if spec.null_aware && build_rows > 0 => {
            // A NULL probe key makes `x NOT IN (non-empty set)` unknown: not returned.
            let nulls = probe_key_nulls(spec, &probe)?;
            Some((0..n).map(|i| !matched[i] && !nulls.as_ref().is_some_and(|m| m[i])).collect())
        }
        JoinKind::Anti => Some(matched.iter().map(|m| !m).collect()),
        JoinKind::Inner | JoinKind::Right | JoinKind::Mark => None,
    };
    if let Some(keep) = keep {
        if keep.true_count() > 0 {
            let rows = filter_record_batch(&probe, &keep)?;
            let rows = if matches!(spec.kind, JoinKind::Left | JoinKind::Full | JoinKind::Single) {
                padded(spec, &rows, true)?
            } else {
                RecordBatch::try_new(spec.output_schema.clone(), rows.columns().to_vec())?
            };
            out.push(Message::Batch(rows));
        }
    }
    Ok(())
}

/// The build rows output at the end: for right and full joins those no probe row matched, padded
/// with NULLs; for semi (anti) joins keeping build rows, those some (no) probe row matched.
fn emit_unmatched_build(spec: &JoinSpec, table: &JoinTable, out: &mut Vec<Message>) -> Result<()> {
    if !spec.emits_build_rows() {
        return Ok(());
    }
    let wanted = spec.keep_build && spec.kind == JoinKind::Semi;
    let keep: BooleanArray = table.visited.iter().map(|v| v.load(Ordering::Relaxed) == wanted).collect();
    if keep.true_count() > 0 {
        let rows = filter_record_batch(&table.batch, &keep)?;
        let rows = if spec.keep_build {
            RecordBatch::try_new_with_options(spec.output_schema.clone(), rows.columns().to_vec(), &RecordBatchOptions::new().with_row_count(Some(rows.num_rows())))?
        } else {
            padded(spec, &rows, false)?
        };
        out.push(Message::Batch(rows));
    }
    Ok(())
}

impl Operator for ProbeOp {
    fn on_batch(&mut self, probe: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let shared = self.shared.clone();
        match shared.table.get() {
            Some(Built::Table(table)) => probe_batch(&shared.spec, table, probe, out),
            Some(Built::Spilled(spilled)) => {
                // Spill files hold the declared probe schema: strings a join below handed out
                // dictionary-encoded are written out plain.
                let probe = declared_types(probe, &shared.spec.probe_schema)?;
                if self.spilled.is_none() {
                    let conv = shared.key_converter()?.ok_or_else(|| RiffleError::exec("spilled join without keys"))?;
                    self.spilled = Some((shared.bucket_writers(&shared.spec.probe_schema)?, conv));
                }
                let (writers, conv) = self.spilled.as_mut().ok_or_else(|| RiffleError::exec("join spill files missing"))?;
                let of = shared.buckets(conv, &probe, true, 0)?;
                let resident = spilled.resident.read().map_err(poisoned)?;
                let Some(table) = resident.as_ref() else { return write_by_bucket(writers, &probe, &of) };
                // Rows of buckets kept in memory join now; the others wait on disk for their bucket.
                for (b, part) in split_by_bucket(&probe, &of)? {
                    if spilled.is_resident[b] {
                        probe_batch(&shared.spec, table, part, out)?;
                    } else {
                        writers[b].write(&part)?;
                    }
                }
                Ok(())
            }
            None => Err(RiffleError::exec("probe before the join table was built")),
        }
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        // Once the build side spilled, probe rows of spilled buckets join at the end: a watermark
        // passed on now would make them late (a window aggregate above would drop them).
        let deferring = matches!(self.shared.table.get(), Some(Built::Spilled(_)));
        match msg {
            Message::End => {}
            Message::Watermark(_) | Message::Idle if deferring => return Ok(()),
            other => {
                out.push(other);
                return Ok(());
            }
        }
        let shared = self.shared.clone();
        let built = shared.table.get().ok_or_else(|| RiffleError::exec("probe before the join table was built"))?;
        match built {
            Built::Table(table) => {
                let outer_build = shared.spec.emits_build_rows();
                // Every probe partition is done: the build rows nobody matched come out once.
                if outer_build && shared.probes.arrive([])?.is_some() {
                    emit_unmatched_build(&shared.spec, table, out)?;
                }
                out.push(msg);
            }
            Built::Spilled(build) => {
                let files = match self.spilled.take() {
                    Some((writers, _)) => shared.finish_writers(writers)?.into_iter().enumerate().collect(),
                    None => Vec::new(),
                };
                // Every probe partition joins buckets once the last one has ended, then ends itself.
                let Some(probe_files) = shared.probes.arrive(files)? else {
                    if shared.hold_end {
                        self.grace = Some(GraceJoin { current: None });
                        self.held_end = Some(msg);
                    } else {
                        out.push(msg);
                    }
                    return Ok(());
                };
                self.grace = Some(GraceJoin { current: None });
                self.held_end = Some(msg);
                {
                    let resident = build.resident.write().map_err(poisoned)?.take();
                    if let Some(table) = resident {
                        // Every probe row of the buckets kept in memory has been seen.
                        emit_unmatched_build(&shared.spec, &table, out)?;
                    }
                    let mut work = build.work.lock().map_err(poisoned)?;
                    for (b, f) in probe_files {
                        work.get_mut(b).ok_or_else(|| RiffleError::exec("probe bucket without a build bucket"))?.2.push(f);
                    }
                    // Buckets kept in memory are done; they leave the list (indexed by bucket until now).
                    let mut b = 0;
                    work.retain(|_| {
                        b += 1;
                        !build.is_resident[b - 1]
                    });
                    drop(work);
                    build.work_ready.store(true, Ordering::Release);
                    shared.notifier.bump();
                }
            }
        }
        Ok(())
    }

    fn ready(&self) -> bool {
        match self.shared.table.get() {
            None => false,
            // A partition that ended waits for the others before joining buckets.
            Some(Built::Spilled(b)) if self.held_end.is_some() => b.work_ready.load(Ordering::Acquire),
            Some(_) => true,
        }
    }

    fn has_pending(&self) -> bool {
        self.held_end.is_some()
    }

    fn drain(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let shared = self.shared.clone();
        if let (Some(grace), Some(Built::Spilled(spilled))) = (&mut self.grace, shared.table.get()) {
            if grace.step(&shared, spilled, out)? {
                return Ok(());
            }
        }
        self.grace = None;
        out.extend(self.held_end.take());
        Ok(())
    }
}

fn poisoned<T>(_: T) -> RiffleError {
    RiffleError::exec("join buckets lock poisoned")
}

fn downcast_u32(a: &ArrayRef) -> Result<UInt32Array> {
    a.as_any().downcast_ref::<UInt32Array>().cloned().ok_or_else(|| RiffleError::exec("join index type"))
}

#[cfg(test)]
mod tests {
    use super::KeyRanges;
    use arrow::array::Int64Array;

    #[test]
    fn keys_fold_by_their_build_ranges_and_out_of_range_keys_are_null() {
        let build = [Int64Array::from(vec![Some(100), Some(103), None, Some(101)]), Int64Array::from(vec![Some(-2), Some(5), Some(1), Some(-2)])];
        let ranges = KeyRanges::of(&build).expect("3 + 3 bits fit");
        assert_eq!(ranges.keys, [(100, 103, 0), (-2, 5, 2)]);
        let folded = ranges.fold(&build);
        assert_eq!(folded.iter().collect::<Vec<_>>(), [Some(0), Some(3 | 7 << 2), None, Some(1)]);
        let probe = [Int64Array::from(vec![103, 104, 99, 100, 102]), Int64Array::from(vec![5, 5, -2, 6, 0])];
        assert_eq!(ranges.fold(&probe).iter().collect::<Vec<_>>(), [Some(3 | 7 << 2), None, None, None, Some(2 | 2 << 2)]);
        // One value in a key: no bits.
        let single = [Int64Array::from(vec![7, 7]), Int64Array::from(vec![1, 2])];
        assert_eq!(KeyRanges::of(&single).expect("fits").fold(&single).values().to_vec(), [0, 1]);
        // The whole i64 range takes 64 bits: too many; so do an all-NULL key's none.
        assert!(KeyRanges::of(&[Int64Array::from(vec![i64::MIN, i64::MAX]), Int64Array::from(vec![0, 0])]).is_none());
        assert!(KeyRanges::of(&[Int64Array::from(vec![None::<i64>]), Int64Array::from(vec![0])]).is_none());
        let (wide, narrow) = ((1i64 << 32) - 1, (1i64 << 31) - 1);
        assert!(KeyRanges::of(&[Int64Array::from(vec![0, wide]), Int64Array::from(vec![0, narrow])]).is_some_and(|r| r.keys[1].2 == 32));
        assert!(KeyRanges::of(&[Int64Array::from(vec![0, wide + 1]), Int64Array::from(vec![0, narrow])]).is_none());
    }
}
