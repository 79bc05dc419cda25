//! Joins: the build side (right input) is a pipeline breaker that collects every row and, for hash
//! joins, indexes them by key; the probe side (left input) streams through `ProbeOp`. Nested-loop joins
//! are the same with every build row a candidate for every probe row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use arrow::array::{new_null_array, ArrayRef, BooleanArray, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow::compute::{concat_batches, filter_record_batch, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashMap;

use super::{Notifier, OpMetrics, Operator, PartitionGather, Sink};
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
    pub probe_schema: SchemaRef,
    pub build_schema: SchemaRef,
    pub output_schema: SchemaRef,
    /// The schema `filter` is evaluated over: probe ++ build.
    pub pair_schema: SchemaRef,
}

struct JoinTable {
    batch: RecordBatch,
    converter: Option<RowConverter>,
    /// Key bytes → first build row with that key; `next` chains the others.
    heads: HashMap<Box<[u8]>, u32>,
    next: Vec<u32>,
    has_null_key: bool,
    /// Build rows that found a partner (right and full joins).
    visited: Vec<AtomicBool>,
}

const NONE: u32 = u32::MAX;

pub struct JoinShared {
    spec: JoinSpec,
    pending: PartitionGather<RecordBatch>,
    table: OnceLock<JoinTable>,
    probes: PartitionGather<()>,
    notifier: Notifier,
    metrics: Arc<OpMetrics>,
}

impl JoinShared {
    pub fn new(spec: JoinSpec, build_partitions: usize, probe_partitions: usize, notifier: Notifier, metrics: Arc<OpMetrics>) -> JoinShared {
        JoinShared {
            spec,
            pending: PartitionGather::new(build_partitions),
            table: OnceLock::new(),
            probes: PartitionGather::new(probe_partitions),
            notifier,
            metrics,
        }
    }

    fn key_converter(&self) -> Result<Option<RowConverter>> {
        if self.spec.build_keys.is_empty() {
            return Ok(None);
        }
        let fields = self.spec.build_keys.iter().map(|k| SortField::new(k.data_type(&self.spec.build_schema))).collect();
        Ok(Some(RowConverter::new(fields)?))
    }

    fn finish_build(&self, local: Vec<RecordBatch>) -> Result<()> {
        let Some(batches) = self.pending.arrive(local)? else { return Ok(()) };
        let batch = concat_batches(&self.spec.build_schema, &batches)?;
        drop(batches);
        let converter = self.key_converter()?;
        let mut heads: HashMap<Box<[u8]>, u32> = HashMap::new();
        let mut next = Vec::new();
        let mut has_null_key = false;
        if let Some(conv) = &converter {
            let keys = self.spec.build_keys.iter().map(|k| evaluate(k, &batch)).collect::<Result<Vec<_>>>()?;
            let null_rows = null_mask(&keys);
            let rows = conv.convert_columns(&keys)?;
            next = vec![NONE; batch.num_rows()];
            heads.reserve(batch.num_rows());
            // Inserted back to front so each chain lists rows in input order.
            for i in (0..batch.num_rows()).rev() {
                if null_rows.as_ref().is_some_and(|n| n[i]) {
                    has_null_key = true;
                    continue;
                }
                let slot = heads.entry_ref(rows.row(i).as_ref()).or_insert(NONE);
                next[i] = *slot;
                *slot = i as u32;
            }
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
        let visited = if matches!(self.spec.kind, JoinKind::Right | JoinKind::Full) {
            (0..batch.num_rows()).map(|_| AtomicBool::new(false)).collect()
        } else {
            Vec::new()
        };
        self.metrics.note_bytes(batch.get_array_memory_size() + heads.len() * 48 + next.len() * 4);
        let table = JoinTable { batch, converter, heads, next, has_null_key, visited };
        if self.table.set(table).is_err() {
            return Err(RiffleError::exec("join table built twice"));
        }
        self.notifier.bump();
        Ok(())
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

/// Collects the build side of one partition.
pub struct BuildSink {
    shared: Arc<JoinShared>,
    batches: Vec<RecordBatch>,
}

impl BuildSink {
    pub fn new(shared: Arc<JoinShared>) -> BuildSink {
        BuildSink { shared, batches: Vec::new() }
    }
}

impl Sink for BuildSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => self.batches.push(b),
            Message::End => self.shared.finish_build(std::mem::take(&mut self.batches))?,
            // The build side of a batch join is complete before probing starts; its control messages
            // are not forwarded (the probe side carries the stream's).
            Message::Watermark(_) | Message::Barrier(_) => {}
        }
        Ok(())
    }
}

pub struct ProbeOp {
    shared: Arc<JoinShared>,
}

impl ProbeOp {
    pub fn new(shared: Arc<JoinShared>) -> ProbeOp {
        ProbeOp { shared }
    }

    fn table(&self) -> Result<&JoinTable> {
        self.shared.table.get().ok_or_else(|| RiffleError::exec("probe before the join table was built"))
    }
}

/// The probe rows followed by the build rows of each pair.
fn pair_batch(spec: &JoinSpec, probe: &RecordBatch, build: &RecordBatch, pi: &UInt32Array, bi: &UInt32Array) -> Result<RecordBatch> {
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(probe.num_columns() + build.num_columns());
    for c in probe.columns() {
        cols.push(take(c.as_ref(), pi, None)?);
    }
    for c in build.columns() {
        cols.push(take(c.as_ref(), bi, None)?);
    }
    Ok(RecordBatch::try_new_with_options(
        spec.pair_schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(pi.len())),
    )?)
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

impl ProbeOp {
    /// Which probe rows have a NULL in some key column; `None` when none has.
    fn probe_key_nulls(&self, probe: &RecordBatch) -> Result<Option<Vec<bool>>> {
        let keys = self.shared.spec.probe_keys.iter().map(|k| evaluate(k, probe)).collect::<Result<Vec<_>>>()?;
        Ok(null_mask(&keys))
    }

    /// Calls `f` with chunks of candidate pairs (probe row, build row): key matches for a hash join,
    /// every pair for a nested-loop join.
    fn candidates(&self, probe: &RecordBatch, table: &JoinTable, f: &mut dyn FnMut(Vec<u32>, Vec<u32>) -> Result<()>) -> Result<()> {
        let spec = &self.shared.spec;
        let (mut pi, mut bi) = (Vec::new(), Vec::new());
        match &table.converter {
            Some(conv) => {
                let keys = spec
                    .probe_keys
                    .iter()
                    .zip(&spec.build_keys)
                    .map(|(p, b)| {
                        let v = evaluate(p, probe)?;
                        let want: DataType = b.data_type(&spec.build_schema);
                        Ok(if *v.data_type() == want { v } else { arrow::compute::cast(&v, &want)? })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let nulls = null_mask(&keys);
                let rows: Rows = conv.convert_columns(&keys)?;
                for i in 0..probe.num_rows() {
                    if nulls.as_ref().is_some_and(|n| n[i]) {
                        continue;
                    }
                    let Some(&head) = table.heads.get(rows.row(i).as_ref()) else { continue };
                    let mut j = head;
                    while j != NONE {
                        pi.push(i as u32);
                        bi.push(j);
                        j = table.next[j as usize];
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
}

impl Operator for ProbeOp {
    fn on_batch(&mut self, probe: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let table = self.table()?;
        let spec = &self.shared.spec;
        let n = probe.num_rows();
        let build_rows = table.batch.num_rows();
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
            self.candidates(&probe, table, &mut |pi, bi| {
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
                            spec.output_schema.clone(),
                            p.columns().to_vec(),
                            &RecordBatchOptions::new().with_row_count(Some(p.num_rows())),
                        )?;
                        out.push(Message::Batch(p));
                    }
                }
                Ok(())
            })?;
        }
        if spec.kind == JoinKind::Mark {
            // IN over a non-empty right side is unknown for an unmatched row when a key on either side
            // is NULL.
            let in_unknown = spec.null_aware && build_rows > 0;
            let probe_nulls = if in_unknown && !table.has_null_key { self.probe_key_nulls(&probe)? } else { None };
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
                let nulls = self.probe_key_nulls(&probe)?;
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

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        let outer_build = matches!(self.shared.spec.kind, JoinKind::Right | JoinKind::Full);
        if matches!(msg, Message::End) && outer_build && self.shared.probes.arrive([])?.is_some() {
            {
                // Every probe partition is done: the build rows nobody matched come out once.
                let table = self.table()?;
                let keep: BooleanArray = table.visited.iter().map(|v| !v.load(Ordering::Relaxed)).collect();
                if keep.true_count() > 0 {
                    let rows = filter_record_batch(&table.batch, &keep)?;
                    out.push(Message::Batch(padded(&self.shared.spec, &rows, false)?));
                }
            }
        }
        out.push(msg);
        Ok(())
    }

    fn ready(&self) -> bool {
        self.shared.table.get().is_some()
    }
}

fn downcast_u32(a: &ArrayRef) -> Result<UInt32Array> {
    a.as_any().downcast_ref::<UInt32Array>().cloned().ok_or_else(|| RiffleError::exec("join index type"))
}
