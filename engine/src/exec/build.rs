//! Cuts a physical plan into pipelines and instantiates one task per pipeline partition.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use riffle_formats::FileFormat;

use super::aggregate::{AggResultSource, AggShared, AggSpec, AggregateSink};
use super::basic::{FilterOp, LimitOp, ProjectOp};
use super::join::{BuildSink, JoinShared, JoinSpec, ProbeOp};
use super::key_partition::KeyedExchangeSink;
use super::runtime_filter::{RuntimeFilter, ScanFilter};
use crate::runtime_filter_plan::RuntimeFilterPlan;
use super::scan::{BatchesSource, ExchangeSink, ExchangeSource, ScanShared, ScanSource};
use super::sort::{SortShared, SortSink, SortSource};
use super::tee::TeeSink;
use super::window_aggregate::{WindowAggShared, WindowAggSink};
use super::window_tvf::WindowTvfOp;
use super::{ExecConfig, Exchange, Metered, Notifier, OpMetrics, Operator, PipelineTask, Sink, Source};
use crate::catalog::{TableData, TableSource};
use crate::error::Result;
use crate::eval::evaluate;
use crate::logical::{join_schema, Expr, JoinKind};
use crate::memory::{MemoryPool, SpillManager};
use crate::message::Message;
use crate::physical::PhysicalPlan;

/// Batches a gathering exchange holds per consumer before its producers wait.
const EXCHANGE_CAPACITY: usize = 4;

type OpFactory = Arc<dyn Fn() -> Box<dyn Operator> + Send + Sync>;

enum SourceSpec {
    Scan(Arc<ScanShared>),
    Exchange(Arc<Exchange>),
    Batches(Vec<RecordBatch>),
    Sort(Arc<SortShared>),
    Aggregate(Arc<AggShared>),
}

/// A query's memory budget and spill files.
pub struct QueryMemory {
    pub pool: Arc<MemoryPool>,
    pub spill: Arc<SpillManager>,
}

/// A pipeline whose sink is not chosen yet.
struct Open {
    source: SourceSpec,
    partitions: usize,
    ops: Vec<(OpFactory, Arc<OpMetrics>)>,
}

impl Open {
    fn push(&mut self, metrics: &Arc<OpMetrics>, f: impl Fn() -> Box<dyn Operator> + Send + Sync + 'static) {
        self.ops.push((Arc::new(f), metrics.clone()));
    }
}

/// Counts what passes, for EXPLAIN ANALYZE of nodes that are sources.
struct PassOp;

impl Operator for PassOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        out.push(Message::Batch(batch));
        Ok(())
    }
}

struct Builder<'a> {
    config: &'a ExecConfig,
    threads: usize,
    notifier: &'a Notifier,
    metrics: &'a [Arc<OpMetrics>],
    memory: &'a QueryMemory,
    next_id: usize,
    tasks: Vec<PipelineTask>,
    /// Per shared subplan, whether each use (in pre-order) is buffered.
    shared_uses: HashMap<usize, Vec<bool>>,
    /// Per shared subplan built so far, each use's queue and their partitions; and the uses opened.
    shared_queues: HashMap<usize, (Vec<Arc<Exchange>>, usize)>,
    uses_opened: HashMap<usize, usize>,
    /// Above zero while building a join's build side: it is not checkpointed (it ends before probing
    /// starts and runs again when a checkpointed job restarts).
    unsaved: usize,
    /// Which scans the joins' runtime filters go to, and the filters by (join node, key).
    filter_plan: RuntimeFilterPlan,
    filters: HashMap<(usize, usize), Arc<RuntimeFilter>>,
}

pub fn build_tasks(
    plan: &PhysicalPlan,
    config: &ExecConfig,
    threads: usize,
    notifier: &Notifier,
    metrics: &[Arc<OpMetrics>],
    memory: &QueryMemory,
    root_sink: &dyn Fn(usize) -> Result<Box<dyn Sink>>,
) -> Result<Vec<PipelineTask>> {
    let shared_uses = crate::share::shared_uses(plan);
    let mut b = Builder {
        config,
        threads,
        notifier,
        metrics,
        memory,
        next_id: 0,
        tasks: Vec::new(),
        shared_uses,
        shared_queues: HashMap::new(),
        uses_opened: HashMap::new(),
        unsaved: 0,
        filter_plan: RuntimeFilterPlan::of(plan, !config.stream),
        filters: HashMap::new(),
    };
    let root = b.open(plan)?;
    b.close(root, root_sink)?;
    Ok(b.tasks)
}

impl Builder<'_> {
    fn close(&mut self, open: Open, sink: &dyn Fn(usize) -> Result<Box<dyn Sink>>) -> Result<()> {
        for p in 0..open.partitions {
            let source: Box<dyn Source> = match &open.source {
                SourceSpec::Scan(shared) => Box::new(ScanSource::new(shared.clone(), p, self.config.stream, self.config.test_barriers, self.config.progress.clone())),
                SourceSpec::Exchange(x) => Box::new(ExchangeSource::new(x.clone(), p)),
                SourceSpec::Batches(b) => Box::new(BatchesSource::new(if p == 0 { b.clone() } else { vec![] })),
                SourceSpec::Sort(shared) => Box::new(SortSource::new(shared.clone())),
                SourceSpec::Aggregate(shared) => Box::new(AggResultSource::new(shared.clone(), p)),
            };
            let ops = open.ops.iter().map(|(f, m)| Metered { op: f(), metrics: m.clone() }).collect();
            self.tasks.push(PipelineTask { source, ops, sink: sink(p)?, ending: false, done: false });
        }
        Ok(())
    }

    /// The job's checkpoints, if it has them and the operators being built are in them.
    fn checkpoint(&self) -> Option<Arc<super::checkpoint::Coordinator>> {
        if self.unsaved > 0 {
            None
        } else {
            self.config.checkpoint.clone()
        }
    }

    /// A one-partition operator's place in the job's checkpoints, if it has them.
    fn operator_checkpoint(&self, name: String) -> Result<Option<super::checkpoint::OperatorCheckpoint>> {
        self.checkpoint().map(|c| super::checkpoint::OperatorCheckpoint::register(&c, name)).transpose()
    }

    /// Ends `open` in an exchange read by `partitions` consumers.
    fn repartition(&mut self, open: Open, partitions: usize) -> Result<Open> {
        if open.partitions == partitions {
            return Ok(open);
        }
        let x = Arc::new(Exchange::new(open.partitions, partitions, EXCHANGE_CAPACITY, self.notifier.clone()));
        let xs = x.clone();
        self.close(open, &move |p| Ok(Box::new(ExchangeSink::new(xs.clone(), p))))?;
        Ok(Open { source: SourceSpec::Exchange(x), partitions, ops: vec![] })
    }

    /// Ends `open` in an exchange that sends each row to the one of `self.threads` consumers owning
    /// its `keys`' values.
    fn partition_by_key(&mut self, open: Open, keys: Arc<Vec<crate::logical::Expr>>) -> Result<Open> {
        let partitions = self.threads;
        let x = Arc::new(Exchange::new(open.partitions, partitions, EXCHANGE_CAPACITY, self.notifier.clone()));
        let xs = x.clone();
        self.close(open, &move |p| Ok(Box::new(KeyedExchangeSink::new(xs.clone(), p, keys.clone(), partitions))))?;
        Ok(Open { source: SourceSpec::Exchange(x), partitions, ops: vec![] })
    }

    /// Ends single-partition `open` in an exchange read by one consumer: the same rows in the same
    /// order, in a task of their own.
    fn handoff(&mut self, open: Open) -> Result<Open> {
        let x = Arc::new(Exchange::new(1, 1, EXCHANGE_CAPACITY, self.notifier.clone()));
        let xs = x.clone();
        self.close(open, &move |p| Ok(Box::new(ExchangeSink::new(xs.clone(), p))))?;
        Ok(Open { source: SourceSpec::Exchange(x), partitions: 1, ops: vec![] })
    }

    /// An exchange that a breaker fills once, at its end, for `consumers` partitions.
    fn breaker_output(&self, consumers: usize) -> Arc<Exchange> {
        Arc::new(Exchange::new(1, consumers, usize::MAX, self.notifier.clone()))
    }

    fn open(&mut self, plan: &PhysicalPlan) -> Result<Open> {
        let id = self.next_id;
        self.next_id += 1;
        let metrics = self.metrics[id].clone();
        let batch_size = self.config.batch_size.max(1);
        Ok(match plan {
            PhysicalPlan::Scan { source, projection, filter, dictionary, schema, .. } => {
                let for_filter = if self.config.stream { vec![] } else { filter_dictionaries(source, projection, filter.as_ref(), dictionary, schema) };
                let mut read_dictionary = dictionary.clone();
                for c in &for_filter {
                    read_dictionary[*c] = true;
                }
                let shared = ScanShared::new(
                    source.clone(),
                    projection.clone(),
                    read_dictionary,
                    schema.clone(),
                    batch_size,
                    filter.as_ref(),
                    &metrics,
                    self.checkpoint().map(|c| (c, id, self.threads)),
                    self.notifier,
                    source.idle_timeout(self.config.source_idle_timeout),
                )?;
                // Not on a stream with event time: rows dropped at the scan would take the
                // watermarks they bring with them, and windows downstream would wait for later rows.
                let filters = self.scan_filters(id).filter(|_| !(self.config.stream && source.event_time.is_some()));
                let shared = Arc::new(match filters {
                    Some(filters) => shared.with_runtime_filters(filters, metrics.clone()),
                    None => shared,
                });
                if self.config.stream {
                    shared.check_replay()?;
                }
                let mut open = Open { source: SourceSpec::Scan(shared), partitions: self.threads, ops: vec![] };
                match filter.clone() {
                    Some(predicate) => open.push(&metrics, move || Box::new(FilterOp::over_dictionaries(predicate.clone(), for_filter.clone()))),
                    None => open.push(&metrics, || Box::new(PassOp)),
                }
                open
            }
            PhysicalPlan::Values { rows, schema } => {
                let batch = values_batch(rows, schema)?;
                let mut batches = Vec::new();
                let mut offset = 0;
                while offset < batch.num_rows() {
                    let len = batch_size.min(batch.num_rows() - offset);
                    batches.push(batch.slice(offset, len));
                    offset += len;
                }
                let mut open = Open { source: SourceSpec::Batches(batches), partitions: 1, ops: vec![] };
                open.push(&metrics, || Box::new(PassOp));
                open
            }
            PhysicalPlan::Filter { input, predicate } => {
                let mut open = self.open(input)?;
                let predicate = predicate.clone();
                open.push(&metrics, move || Box::new(FilterOp::new(predicate.clone())));
                open
            }
            PhysicalPlan::RankFilter { input, partition_by, order_by, limit, dense } => {
                let mut open = self.open(input)?;
                let (partition_by, order_by, limit, dense, pool) = (partition_by.clone(), order_by.clone(), *limit, *dense, self.memory.pool.clone());
                open.push(&metrics, move || {
                    Box::new(super::rank_filter::RankFilterOp::new(partition_by.clone(), order_by.clone(), limit, dense, &pool))
                });
                open
            }
            PhysicalPlan::Project { input, exprs, schema } => {
                let mut open = self.open(input)?;
                let (exprs, schema) = (crate::cse::ExprList::new(exprs, input.schema().fields().len()), schema.clone());
                open.push(&metrics, move || Box::new(ProjectOp { exprs: exprs.clone(), schema: schema.clone() }));
                open
            }
            PhysicalPlan::Window { input, calls, schema } => {
                let open = self.open(input)?;
                let mut open = self.repartition(open, 1)?;
                let (calls, schema, pool) = (calls.clone(), schema.clone(), self.memory.pool.clone());
                open.push(&metrics, move || Box::new(super::window::WindowOp::new(calls.clone(), schema.clone(), &pool)));
                open
            }
            PhysicalPlan::SessionTvf { input, keys, time, gap, schema } => {
                let open = self.open(input)?;
                let mut open = self.repartition(open, 1)?;
                let (keys, time, gap, schema, pool) = (keys.clone(), *time, *gap, schema.clone(), self.memory.pool.clone());
                open.push(&metrics, move || Box::new(super::window::WindowOp::sessions(keys.clone(), time, gap, schema.clone(), &pool)));
                open
            }
            PhysicalPlan::SessionAggregate { input, keys, time, gap, group, aggs, schema } => {
                let spec = Arc::new(super::session_aggregate::SessionAggSpec {
                    keys: keys.clone(),
                    time: *time,
                    gap: *gap,
                    group: group.clone(),
                    aggs: aggs.clone(),
                    input_schema: input.schema(),
                    schema: schema.clone(),
                });
                let open = self.open(input)?;
                // Every key's sessions in one partition, which sees the smallest watermark of all.
                let mut open = self.repartition(open, 1)?;
                let checkpoint = self.operator_checkpoint(format!("session-{id}"))?;
                let (memory, op_metrics) = ((self.memory.pool.clone(), self.memory.spill.clone()), metrics.clone());
                open.push(&metrics, move || {
                    let (spec, memory, metrics) = (spec.clone(), memory.clone(), op_metrics.clone());
                    Box::new(super::session_aggregate::SessionAggregateOp::new(spec, memory, metrics, checkpoint.clone()))
                });
                open
            }
            PhysicalPlan::WindowTvf { input, window, time, schema } => {
                let mut open = self.open(input)?;
                let (window, time, schema) = (*window, *time, schema.clone());
                open.push(&metrics, move || Box::new(WindowTvfOp { window, time, schema: schema.clone() }));
                open
            }
            PhysicalPlan::Limit { input, skip, fetch } => {
                let mut open = self.open(input)?;
                let (skip, fetch) = (*skip, *fetch);
                if open.partitions > 1 {
                    if let Some(f) = fetch {
                        // Each partition can stop after skip + fetch rows; the global limit picks from those.
                        open.push(&metrics, move || Box::new(LimitOp { skip: 0, fetch: Some(skip + f) }));
                    }
                    open = self.repartition(open, 1)?;
                }
                open.push(&metrics, move || Box::new(LimitOp { skip, fetch }));
                open
            }
            PhysicalPlan::HashAggregate { input, group, aggs, window_end: Some(end), schema, .. } if self.config.stream => {
                let input_schema = input.schema();
                let (open, slicing) = match (crate::physical::hop_slices(input, group, aggs), input.as_ref()) {
                    (Some((rows, keys, columns)), PhysicalPlan::WindowTvf { window, time, .. }) => {
                        // HOP by slides: the rows go in as they are; the window table function's
                        // node counts them (each once, not once per window).
                        let tvf_metrics = self.metrics[self.next_id].clone();
                        self.next_id += 1;
                        let mut open = self.open(rows)?;
                        open.push(&tvf_metrics, || Box::new(PassOp));
                        let spec = AggSpec::new(keys, aggs.clone(), rows.schema(), schema.clone());
                        (open, Some(super::window_aggregate::Slicing { spec, time: *time, window: *window, columns }))
                    }
                    _ => (self.open(input)?, None),
                };
                // Each key's rows to one partition, which emits its groups of a window itself.
                let keys = crate::physical::window_partition_keys(input, group);
                let keyed = !keys.is_empty();
                let open = if keyed && self.threads > 1 {
                    let exprs = Arc::new(keys.iter().map(|k| group[*k].clone()).collect::<Vec<_>>());
                    self.partition_by_key(open, exprs)?
                } else {
                    open
                };
                // Keyed, each partition emits its groups of a window, to as many consumers: the
                // rows of a window closing go on in parallel (Nexmark q5's 870 K counts a window at
                // 1.45 M events/s). Otherwise windows leave in one partition. A bounded queue: a slow
                // consumer holds the partitions back (backpressure), as the stream never ends.
                let producers = if keyed { open.partitions } else { 1 };
                let output = Arc::new(Exchange::new(producers, producers, EXCHANGE_CAPACITY, self.notifier.clone()));
                let spec = AggSpec::new(group.clone(), aggs.clone(), input_schema, schema.clone());
                let memory = (self.memory.pool.clone(), self.memory.spill.clone());
                let checkpoint = self.checkpoint().map(|c| (c, id));
                let keyed = keyed.then_some(keys);
                let shared = Arc::new(WindowAggShared::new(
                    spec,
                    *end,
                    open.partitions,
                    output.clone(),
                    batch_size,
                    metrics,
                    memory,
                    checkpoint,
                    slicing,
                    keyed,
                )?);
                self.close(open, &|p| Ok(Box::new(WindowAggSink::new(shared.clone(), p))))?;
                Open { source: SourceSpec::Exchange(output), partitions: producers, ops: vec![] }
            }
            PhysicalPlan::HashAggregate { input, group, aggs, schema, .. } => {
                let input_schema = input.schema();
                let open = self.open(input)?;
                let output = self.breaker_output(self.threads);
                let coded = input.joins_hand_out_dictionaries();
                let spec = AggSpec::new(group.clone(), aggs.clone(), input_schema, schema.clone()).with_coded_keys(coded);
                let (pool, spill) = (self.memory.pool.clone(), self.memory.spill.clone());
                let shared = Arc::new(AggShared::new(spec, open.partitions, output, batch_size, metrics, pool, spill));
                self.close(open, &|p| Ok(Box::new(AggregateSink::new(shared.clone(), p)?)))?;
                Open { source: SourceSpec::Aggregate(shared), partitions: self.threads, ops: vec![] }
            }
            PhysicalPlan::UpdateAggregate { input, group, aggs, input_changelog, schema } => {
                let input_schema = input.schema();
                let open = self.open(input)?;
                let mut open = self.repartition(open, 1)?;
                let spec = Arc::new(super::update_aggregate::UpdateAggSpec {
                    group: group.clone(),
                    aggs: aggs.clone(),
                    input_changelog: *input_changelog,
                    input_schema,
                    schema: schema.clone(),
                    state_ttl: self.config.state_ttl,
                });
                let memory = (self.memory.pool.clone(), self.memory.spill.clone());
                let checkpoint = self.operator_checkpoint(format!("update-{id}"))?;
                let op_metrics = metrics.clone();
                open.push(&metrics, move || {
                    let (spec, memory, metrics) = (spec.clone(), memory.clone(), op_metrics.clone());
                    Box::new(super::update_aggregate::UpdateAggregateOp::new(spec, memory, metrics, checkpoint.clone()))
                });
                open
            }
            PhysicalPlan::Materialize { input, schema } => {
                let open = self.open(input)?;
                let mut open = self.repartition(open, 1)?;
                let (schema, pool) = (schema.clone(), self.memory.pool.clone());
                open.push(&metrics, move || Box::new(super::materialize::MaterializeOp::new(schema.clone(), batch_size, pool.clone())));
                open
            }
            PhysicalPlan::Sort { input, keys, fetch } => {
                let schema = input.schema();
                let open = self.open(input)?;
                let shared = Arc::new(SortShared::new(
                    schema,
                    keys.clone(),
                    *fetch,
                    open.partitions,
                    self.notifier.clone(),
                    batch_size,
                    metrics,
                    self.memory.pool.clone(),
                    self.memory.spill.clone(),
                )?);
                self.close(open, &|p| Ok(Box::new(SortSink::new(shared.clone(), p))))?;
                let merged = Open { source: SourceSpec::Sort(shared), partitions: 1, ops: vec![] };
                // The merge and what consumes its rows (a file writer, say) run as two tasks, so on
                // two workers, with the exchange between them keeping the order.
                self.handoff(merged)?
            }
            PhysicalPlan::HashJoin { probe, build, kind, probe_keys, build_keys, filter, null_aware, keep_build, dictionary, schema, .. } => {
                let sides = (*null_aware, *keep_build);
                let runtime = self.join_filters(id);
                let keys = (probe_keys.clone(), build_keys.clone());
                // Only an inner join without a condition on the pairs hands out dictionaries.
                let dictionary = if *kind == JoinKind::Inner && filter.is_none() { dictionary.clone() } else { vec![] };
                self.join(probe, build, *kind, keys, filter.clone(), sides, runtime, (schema, dictionary), metrics)?
            }
            PhysicalPlan::StreamJoin { left, right, kind, left_keys, right_keys, filter, interval, schema } => {
                let spec = super::stream_join::StreamJoinSpec {
                    kind: *kind,
                    left_keys: left_keys.clone(),
                    right_keys: right_keys.clone(),
                    filter: filter.clone(),
                    interval: *interval,
                    left_schema: left.schema(),
                    schema: if plan.changelog() { crate::changelog::without_op(schema) } else { schema.clone() },
                    state_ttl: self.config.state_ttl,
                };
                let left_open = self.open(left)?;
                let right_open = self.open(right)?;
                let (lp, rp) = (left_open.partitions, right_open.partitions);
                // A bounded queue: a slow consumer holds both inputs back. A changelog goes to one
                // consumer, in the order the join decided it.
                let consumers = if spec.changelog() { 1 } else { self.threads };
                let output = Arc::new(Exchange::new(lp + rp, consumers, EXCHANGE_CAPACITY, self.notifier.clone()));
                let checkpoint = self.checkpoint().map(|c| (c, id));
                let shared =
                    Arc::new(super::stream_join::StreamJoinShared::new(spec, lp, rp, output.clone(), metrics, (&self.memory.pool, self.memory.spill.clone()), checkpoint)?);
                let ls = shared.clone();
                self.close(left_open, &move |p| Ok(Box::new(super::stream_join::StreamJoinSink::new(ls.clone(), 0, p))))?;
                self.close(right_open, &move |p| Ok(Box::new(super::stream_join::StreamJoinSink::new(shared.clone(), 1, p))))?;
                Open { source: SourceSpec::Exchange(output), partitions: consumers, ops: vec![] }
            }
            PhysicalPlan::NestedLoopJoin { probe, build, kind, filter, schema, .. } => {
                self.join(probe, build, *kind, (vec![], vec![]), filter.clone(), (false, false), vec![], (schema, vec![]), metrics)?
            }
            PhysicalPlan::Shared { input, id: shared, .. } => {
                let opened = self.uses_opened.entry(*shared).or_default();
                let this_use = *opened;
                *opened += 1;
                if this_use == 0 {
                    // The first use runs the subplan into one queue per use.
                    let open = self.open(input)?;
                    let partitions = open.partitions;
                    let queues: Vec<Arc<Exchange>> = self.shared_uses.get(shared).map_or(&[][..], |u| &u[..])
                        .iter()
                        .map(|buffered| {
                            let capacity = if *buffered { usize::MAX } else { EXCHANGE_CAPACITY };
                            Arc::new(Exchange::new(partitions, partitions, capacity, self.notifier.clone()))
                        })
                        .collect();
                    let tee = queues.clone();
                    self.close(open, &move |p| Ok(Box::new(TeeSink::new(tee.clone(), p))))?;
                    self.shared_queues.insert(*shared, (queues, partitions));
                } else {
                    // Its nodes were numbered at the first use.
                    self.next_id += input.node_count();
                }
                let (queue, partitions) = self
                    .shared_queues
                    .get(shared)
                    .and_then(|(queues, partitions)| Some((queues.get(this_use)?.clone(), *partitions)))
                    .ok_or_else(|| crate::error::RiffleError::exec(format!("shared subplan #{shared} has no queue for use {this_use}")))?;
                let mut open = Open { source: SourceSpec::Exchange(queue), partitions, ops: vec![] };
                open.push(&metrics, || Box::new(PassOp));
                open
            }
            PhysicalPlan::Union { inputs, .. } => {
                let opens = inputs.iter().map(|i| self.open(i)).collect::<Result<Vec<_>>>()?;
                let producers: usize = opens.iter().map(|o| o.partitions).sum();
                let x = Arc::new(Exchange::new(producers, self.threads, EXCHANGE_CAPACITY, self.notifier.clone()));
                let mut first = 0;
                for open in opens {
                    let n = open.partitions;
                    let xs = x.clone();
                    self.close(open, &move |p| Ok(Box::new(ExchangeSink::new(xs.clone(), first + p))))?;
                    first += n;
                }
                let mut open = Open { source: SourceSpec::Exchange(x), partitions: self.threads, ops: vec![] };
                open.push(&metrics, || Box::new(PassOp));
                open
            }
        })
    }

    /// The runtime filter a join sets for one of its keys.
    fn filter(&mut self, join: usize, key: usize) -> Arc<RuntimeFilter> {
        self.filters.entry((join, key)).or_default().clone()
    }

    /// The runtime filters join node `id` sets, by key.
    fn join_filters(&mut self, id: usize) -> Vec<(usize, Arc<RuntimeFilter>)> {
        let mut keys: Vec<usize> = self.filter_plan.joins.get(&id).map_or(vec![], |f| f.iter().map(|f| f.key).collect());
        // A key filters each input of a union below: its filter is set once.
        keys.dedup();
        keys.into_iter().map(|key| (key, self.filter(id, key))).collect()
    }

    /// The runtime filters of scan node `id`, if it has any.
    fn scan_filters(&mut self, id: usize) -> Option<Vec<ScanFilter>> {
        let specs = self.filter_plan.scans.remove(&id)?;
        Some(specs.into_iter().map(|s| ScanFilter::new(s.column, s.from.iter().map(|(join, key)| self.filter(*join, *key)).collect())).collect())
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &mut self,
        probe: &PhysicalPlan,
        build: &PhysicalPlan,
        kind: JoinKind,
        (probe_keys, build_keys): (Vec<Expr>, Vec<Expr>),
        filter: Option<Expr>,
        (null_aware, keep_build): (bool, bool),
        runtime_filters: Vec<(usize, Arc<RuntimeFilter>)>,
        (schema, dictionary): (&arrow::datatypes::SchemaRef, Vec<bool>),
        metrics: Arc<OpMetrics>,
    ) -> Result<Open> {
        let (probe_schema, build_schema) = (probe.schema(), build.schema());
        let mut probe_open = self.open(probe)?;
        // A checkpointed job computes the build side again when it restarts (`crate::share::checkpointable_joins`).
        self.unsaved += 1;
        let build_open = self.open(build);
        self.unsaved -= 1;
        let build_open = build_open?;
        let spec = JoinSpec {
            kind,
            probe_keys,
            build_keys,
            filter,
            null_aware,
            keep_build,
            pair_schema: join_schema(&probe_schema, &build_schema, JoinKind::Inner),
            probe_schema,
            build_schema,
            output_schema: schema.clone(),
            dictionary,
        };
        let shared = Arc::new(JoinShared::new(
            spec,
            build_open.partitions,
            probe_open.partitions,
            !self.config.stream,
            self.checkpoint().is_none(),
            self.notifier.clone(),
            metrics.clone(),
            self.memory.pool.clone(),
            self.memory.spill.clone(),
        )
        .with_runtime_filters(runtime_filters));
        let build_shared = shared.clone();
        self.close(build_open, &move |p| Ok(Box::new(BuildSink::new(build_shared.clone(), p)?)))?;
        probe_open.push(&metrics, move || Box::new(ProbeOp::new(shared.clone())));
        Ok(probe_open)
    }
}

/// Evaluates literal rows into one batch.
fn values_batch(rows: &[Vec<Expr>], schema: &arrow::datatypes::SchemaRef) -> Result<RecordBatch> {
    let one = RecordBatch::try_new_with_options(Arc::new(Schema::empty()), vec![], &RecordBatchOptions::new().with_row_count(Some(1)))?;
    let width = schema.fields().len();
    let mut columns: Vec<Vec<ArrayRef>> = vec![Vec::with_capacity(rows.len()); width];
    for row in rows {
        for (c, e) in row.iter().enumerate() {
            columns[c].push(evaluate(e, &one)?);
        }
    }
    let columns = columns
        .into_iter()
        .zip(schema.fields())
        .map(|(parts, f)| {
            if parts.is_empty() {
                return Ok(arrow::array::new_empty_array(f.data_type()));
            }
            let refs: Vec<&dyn arrow::array::Array> = parts.iter().map(|a| a.as_ref()).collect();
            let col = arrow::compute::concat(&refs)?;
            Ok(if col.data_type() == f.data_type() { col } else { arrow::compute::cast(&col, f.data_type())? })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(schema.clone(), columns, &RecordBatchOptions::new().with_row_count(Some(rows.len())))?)
}

/// The string columns of a Parquet scan that its filter reads and that every page of the file stores
/// dictionary-encoded (and that the scan does not hand out as dictionaries anyway): read as such, the
/// filter's conditions on one of them run once per distinct value (`FilterOp::over_dictionaries`).
fn filter_dictionaries(source: &TableSource, projection: &[usize], filter: Option<&Expr>, dictionary: &[bool], schema: &SchemaRef) -> Vec<usize> {
    let (Some(filter), TableData::Files { morsels, format: FileFormat::Parquet, .. }) = (filter, &source.data) else { return vec![] };
    filter
        .column_set()
        .into_iter()
        .filter(|c| !dictionary[*c] && schema.field(*c).data_type() == &DataType::Utf8)
        .filter(|c| riffle_formats::dictionary_encoded(morsels, source.schema.field(projection[*c]).name()))
        .collect()
}
