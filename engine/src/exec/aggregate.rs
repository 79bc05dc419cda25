//! Hash aggregation as a pipeline breaker: each partition aggregates into its own table; when the
//! last partition ends, the partial states are merged and the result flows into the next pipeline.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, SchemaRef};
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::HashMap;

use super::accumulators::{self, GroupsAccumulator};
use super::{emit_result, BarrierRelay, Exchange, OpMetrics, PartitionGather, Sink};
use crate::cse::ExprList;
use crate::error::{Result, RiffleError};
use crate::eval::evaluate;
use crate::logical::{AggCall, Expr};
use crate::message::Message;

/// What to aggregate, shared by every partition.
pub struct AggSpec {
    group: Vec<Expr>,
    aggs: Vec<AggCall>,
    /// Every aggregate's arguments in order, repeated subexpressions computed once.
    args: ExprList,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
}

impl AggSpec {
    pub fn new(group: Vec<Expr>, aggs: Vec<AggCall>, input_schema: SchemaRef, output_schema: SchemaRef) -> AggSpec {
        let args: Vec<Expr> = aggs.iter().flat_map(|a| a.args.iter().cloned()).collect();
        let args = ExprList::new(&args, input_schema.fields().len());
        AggSpec { group, aggs, args, input_schema, output_schema }
    }
}

struct GroupTable {
    converter: Option<RowConverter>,
    map: HashMap<Box<[u8]>, u32>,
    keys: Option<Rows>,
    accs: Vec<Box<dyn GroupsAccumulator>>,
    num_groups: usize,
}

/// Partial result of one partition: group keys and accumulator states.
struct Partial {
    keys: Vec<ArrayRef>,
    states: Vec<Vec<ArrayRef>>,
    num_groups: usize,
}

impl GroupTable {
    fn new(spec: &AggSpec) -> Result<GroupTable> {
        let key_types: Vec<DataType> = spec.group.iter().map(|g| g.data_type(&spec.input_schema)).collect();
        let converter = if key_types.is_empty() {
            None
        } else {
            Some(RowConverter::new(key_types.into_iter().map(SortField::new).collect())?)
        };
        let keys = converter.as_ref().map(|c| c.empty_rows(0, 0));
        let accs = spec
            .aggs
            .iter()
            .map(|a| {
                let arg = a.args.first().map(|e| accumulators::input_type(a, &e.data_type(&spec.input_schema)));
                accumulators::create(a, arg.as_ref())
            })
            .collect::<Result<_>>()?;
        // Without GROUP BY there is exactly one group, even over no rows.
        let num_groups = usize::from(converter.is_none());
        Ok(GroupTable { converter, map: HashMap::new(), keys, accs, num_groups })
    }

    /// The group index of every row of `keys`.
    fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        let (Some(converter), Some(stored)) = (&self.converter, &mut self.keys) else {
            return Ok(vec![0; rows]);
        };
        if let Some(codes) = DictionaryCodes::of(keys, rows) {
            return self.groups_by_code(&codes, keys);
        }
        let keys = keys.iter().map(plain).collect::<Result<Vec<_>>>()?;
        let encoded = converter.convert_columns(&keys)?;
        let mut groups = Vec::with_capacity(rows);
        let mut previous: Option<(arrow::row::Row<'_>, u32)> = None;
        for row in encoded.iter() {
            // Runs of equal keys are common (sorted or clustered input): skip the hash lookup.
            if let Some((p, g)) = previous {
                if p == row {
                    groups.push(g);
                    continue;
                }
            }
            let next = self.num_groups as u32;
            let g = *self.map.entry_ref(row.as_ref()).or_insert_with(|| {
                stored.push(row);
                next
            });
            if g == next {
                self.num_groups += 1;
            }
            groups.push(g);
            previous = Some((row, g));
        }
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
        Ok(codes.codes.iter().map(|c| group_of_slot[slot[*c as usize] as usize]).collect())
    }

    fn update(&mut self, spec: &AggSpec, batch: &RecordBatch) -> Result<()> {
        let keys = spec.group.iter().map(|g| evaluate(g, batch)).collect::<Result<Vec<_>>>()?;
        let groups = self.groups(&keys, batch.num_rows())?;
        let mut values = spec.args.evaluate(batch)?.into_iter();
        for (acc, call) in self.accs.iter_mut().zip(&spec.aggs) {
            let args = call
                .args
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
                .collect::<Result<Vec<_>>>()?;
            acc.update(&groups, self.num_groups, &args)?;
        }
        Ok(())
    }

    fn merge(&mut self, p: Partial) -> Result<()> {
        let groups = self.groups(&p.keys, p.num_groups)?;
        for (acc, states) in self.accs.iter_mut().zip(p.states) {
            acc.merge(&groups, self.num_groups, &states)?;
        }
        Ok(())
    }

    fn key_arrays(&mut self) -> Result<Vec<ArrayRef>> {
        match (&self.converter, self.keys.take()) {
            (Some(c), Some(rows)) => Ok(c.convert_rows(&rows)?),
            _ => Ok(vec![]),
        }
    }

    fn into_partial(mut self) -> Result<Partial> {
        for a in self.accs.iter_mut() {
            a.resize(self.num_groups);
        }
        let keys = self.key_arrays()?;
        let states = self.accs.iter_mut().map(|a| a.state()).collect::<Result<_>>()?;
        Ok(Partial { keys, states, num_groups: self.num_groups })
    }

    fn size(&self) -> usize {
        self.keys.as_ref().map_or(0, |k| k.size()) * 2 + self.accs.iter().map(|a| a.size()).sum::<usize>()
    }
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

pub struct AggShared {
    spec: AggSpec,
    partials: PartitionGather<Partial>,
    barriers: BarrierRelay,
    output: Arc<Exchange>,
    batch_size: usize,
    metrics: Arc<OpMetrics>,
}

impl AggShared {
    pub fn new(spec: AggSpec, partitions: usize, output: Arc<Exchange>, batch_size: usize, metrics: Arc<OpMetrics>) -> AggShared {
        let (partials, barriers) = (PartitionGather::new(partitions), BarrierRelay::new(partitions));
        AggShared { spec, partials, barriers, output, batch_size, metrics }
    }

    fn finish(&self, partial: Partial) -> Result<()> {
        let Some(partials) = self.partials.arrive([partial])? else { return Ok(()) };
        let mut table = GroupTable::new(&self.spec)?;
        for p in partials {
            table.merge(p)?;
        }
        self.metrics.note_bytes(table.size());
        let mut columns = table.key_arrays()?;
        for acc in table.accs.iter_mut() {
            acc.resize(table.num_groups);
            columns.push(acc.evaluate()?);
        }
        let schema = self.spec.output_schema.clone();
        let columns = columns
            .into_iter()
            .zip(schema.fields())
            .map(|(c, f)| if c.data_type() == f.data_type() { Ok(c) } else { Ok(arrow::compute::cast(&c, f.data_type())?) })
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new_with_options(
            schema,
            columns,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(table.num_groups)),
        )?;
        emit_result(&self.output, &batch, self.batch_size, &self.metrics);
        Ok(())
    }
}

/// One partition's aggregation.
pub struct AggregateSink {
    shared: Arc<AggShared>,
    partition: usize,
    table: Option<GroupTable>,
}

impl AggregateSink {
    pub fn new(shared: Arc<AggShared>, partition: usize) -> Result<AggregateSink> {
        let table = GroupTable::new(&shared.spec)?;
        Ok(AggregateSink { shared, partition, table: Some(table) })
    }
}

impl Sink for AggregateSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        match msg {
            Message::Batch(b) => {
                let started = std::time::Instant::now();
                let table = self.table.as_mut().ok_or_else(|| RiffleError::exec("aggregate input after its end"))?;
                table.update(&self.shared.spec, &b)?;
                self.shared.metrics.note_bytes(table.size());
                self.shared.metrics.nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Message::End => {
                if let Some(table) = self.table.take() {
                    self.shared.barriers.end(self.partition, &self.shared.output)?;
                    self.shared.finish(table.into_partial()?)?;
                }
            }
            Message::Barrier(epoch) => self.shared.barriers.barrier(self.partition, epoch, &self.shared.output)?,
            // A batch aggregate emits only at the end: event time cannot advance past its rows before.
            Message::Watermark(_) => {}
        }
        Ok(())
    }
}
