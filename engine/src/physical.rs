//! The physical plan: which algorithm runs each step, as plain data that can be printed. Runtime state
//! lives in `exec`, never here.

use std::fmt::Write;
use std::sync::Arc;

use arrow::array::Array;
use arrow::datatypes::{Schema, SchemaRef};

use crate::catalog::TableSource;
use crate::error::{Result, RiffleError};
use crate::logical::{join_schema, AggCall, AggFunc, BinaryOp, Expr, JoinKind, LogicalPlan, SortKey, WindowCall, WindowFunc, WindowSpec};

#[derive(Debug, Clone, PartialEq)]
pub enum PhysicalPlan {
    /// Morsel-parallel scan of `projection`; rows failing `filter` are dropped as they are read.
    /// `dictionary[i]` lets projected column `i` arrive dictionary-encoded, where its consumer takes it so.
    Scan {
        name: String,
        source: Arc<TableSource>,
        projection: Vec<usize>,
        filter: Option<Expr>,
        dictionary: Vec<bool>,
        schema: SchemaRef,
        /// The optimizer's estimate of the rows out (EXPLAIN shows it beside the actual count).
        estimated_rows: Option<u64>,
    },
    Values { rows: Vec<Vec<Expr>>, schema: SchemaRef },
    Filter { input: Box<PhysicalPlan>, predicate: Expr },
    Project { input: Box<PhysicalPlan>, exprs: Vec<Expr>, schema: SchemaRef },
    /// `window_end`: the group key that is an event-time window's end (GROUP BY window_start,
    /// window_end over a window table function). Run as a stream, such an aggregate emits each
    /// window's groups once the watermark passes its end, not at the end of input.
    HashAggregate {
        input: Box<PhysicalPlan>,
        group: Vec<Expr>,
        aggs: Vec<AggCall>,
        window_end: Option<usize>,
        schema: SchemaRef,
        estimated_rows: Option<u64>,
    },
    /// A GROUP BY of a stream that emits, after each batch, the rows of the groups the batch changed,
    /// as a changelog (`crate::changelog`): its schema is the aggregate's plus the `op` column.
    /// `input_changelog`: the input is a changelog too, whose retractions it takes back.
    UpdateAggregate { input: Box<PhysicalPlan>, group: Vec<Expr>, aggs: Vec<AggCall>, input_changelog: bool, schema: SchemaRef },
    /// Applies a changelog (the input's last column is `op`) and emits the rows that remain at the end
    /// of input, in one partition.
    Materialize { input: Box<PhysicalPlan>, schema: SchemaRef },
    /// Window functions over input sorted by their PARTITION BY and ORDER BY keys, in one partition:
    /// each row with the calls' values appended.
    Window { input: Box<PhysicalPlan>, calls: Vec<WindowCall>, schema: SchemaRef },
    /// `GROUP BY window_start, window_end, <keys>` over SESSION windows on `input`'s event time `time`
    /// (`keys` and `aggs` over `input`), run as a stream: each session's row leaves once the watermark
    /// passes its end (`exec/session_aggregate.rs`). `group` says what each group column is.
    SessionAggregate {
        input: Box<PhysicalPlan>,
        keys: Vec<Expr>,
        time: usize,
        gap: i64,
        group: Vec<SessionColumn>,
        aggs: Vec<AggCall>,
        schema: SchemaRef,
    },
    /// SESSION windows over input sorted by `keys` then `time`, in one partition.
    SessionTvf { input: Box<PhysicalPlan>, keys: Vec<Expr>, time: usize, gap: i64, schema: SchemaRef },
    /// A window table function: each row once per window it falls in, window bounds appended.
    WindowTvf { input: Box<PhysicalPlan>, window: WindowSpec, time: usize, schema: SchemaRef },
    /// Builds a hash table on `build` (the right input), streams `probe` (the left input) through it.
    HashJoin {
        probe: Box<PhysicalPlan>,
        build: Box<PhysicalPlan>,
        kind: JoinKind,
        probe_keys: Vec<Expr>,
        build_keys: Vec<Expr>,
        filter: Option<Expr>,
        null_aware: bool,
        /// Semi and anti joins only: the output is the build rows that have (semi) or lack (anti) a
        /// match, not the probe rows. Chosen when the input whose rows are kept is the smaller one,
        /// so that it is the one hashed.
        keep_build: bool,
        /// `dictionary[i]` lets build column `i` go out dictionary-encoded (keyed by build row),
        /// where the aggregate above takes it so (`dictionary_join_outputs`).
        dictionary: Vec<bool>,
        schema: SchemaRef,
        estimated_rows: Option<u64>,
    },
    /// The join of two inputs without end: each row is stored on its side and joined with the
    /// other side's rows so far. With `interval`, rows leave as the watermarks pass (interval join).
    /// Inner, left, right or full: an outer interval join emits a row without match when it leaves;
    /// an outer join without one emits it at once and takes it back (`-D`) at its first match, so its
    /// output is a changelog (`schema` ends with the `op` column).
    StreamJoin {
        left: Box<PhysicalPlan>,
        right: Box<PhysicalPlan>,
        kind: JoinKind,
        left_keys: Vec<Expr>,
        right_keys: Vec<Expr>,
        filter: Option<Expr>,
        interval: Option<IntervalBounds>,
        schema: SchemaRef,
    },
    /// Joins every probe row with every build row, keeping pairs where `filter` holds.
    NestedLoopJoin {
        probe: Box<PhysicalPlan>,
        build: Box<PhysicalPlan>,
        kind: JoinKind,
        filter: Option<Expr>,
        schema: SchemaRef,
        estimated_rows: Option<u64>,
    },
    /// Drops the rows that cannot rank within the first `limit` of their partition by `order_by`
    /// (`exec/rank_filter.rs`): a window's `rank() <= limit` filter, applied before the window's
    /// sort as well as after. `dense`: ranks count distinct `order_by` values (dense_rank).
    RankFilter { input: Box<PhysicalPlan>, partition_by: Vec<Expr>, order_by: Vec<SortKey>, limit: usize, dense: bool },
    /// Full sort, or top-k when `fetch` is set.
    Sort { input: Box<PhysicalPlan>, keys: Vec<SortKey>, fetch: Option<usize> },
    Limit { input: Box<PhysicalPlan>, skip: usize, fetch: Option<usize> },
    Union { inputs: Vec<PhysicalPlan>, schema: SchemaRef },
    /// One use of subplan `id`, which occurs more than once in the plan (Nexmark q5's per-auction
    /// window counts, TPC-H Q15's revenue view): it runs once, at its first use in pre-order, and
    /// every use reads all its rows (`crate::share`). Each use holds the whole subplan, so every use
    /// prints and knows its schema. `buffered`: this use may have to wait until another use has read
    /// every row (it is on a join's probe side, and the join's build side reads the subplan too), so
    /// its queue has no bound.
    Shared { input: Box<PhysicalPlan>, id: usize, buffered: bool },
}

/// Where a join key's runtime filter could go: a scan (and its column) the probe rows' key comes
/// from, and the GROUP BYs, shared subplans and unions between (`PhysicalPlan::filter_targets`).
#[derive(Debug)]
pub struct FilterTarget<'a> {
    pub key: usize,
    pub scan: &'a PhysicalPlan,
    pub column: usize,
    pub via: Vec<&'a PhysicalPlan>,
}

/// What a group column of a [`PhysicalPlan::SessionAggregate`] (or of a sliced HOP window aggregate) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionColumn {
    /// The session's partition key number `k` (of `SESSION(… PARTITION BY …)`).
    Key(usize),
    Start,
    End,
    /// `window_time`: the session's last millisecond.
    Time,
}

/// The time bounds of an interval join: `left.left_time - right.right_time` lies in `[lo, hi]`
/// microseconds for every joined pair (from conditions like `l.ts BETWEEN r.ts - a AND r.ts + b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IntervalBounds {
    pub left_time: usize,
    /// A column of the right input.
    pub right_time: usize,
    pub lo: i64,
    pub hi: i64,
}

impl IntervalBounds {
    /// How far before the watermark a joined row's time can lie.
    pub fn reach(&self) -> i64 {
        0i64.max(self.lo.saturating_neg()).max(self.hi)
    }
}

impl PhysicalPlan {
    pub fn schema(&self) -> SchemaRef {
        match self {
            PhysicalPlan::Scan { schema, .. }
            | PhysicalPlan::Values { schema, .. }
            | PhysicalPlan::Project { schema, .. }
            | PhysicalPlan::HashAggregate { schema, .. }
            | PhysicalPlan::UpdateAggregate { schema, .. }
            | PhysicalPlan::Materialize { schema, .. }
            | PhysicalPlan::HashJoin { schema, .. }
            | PhysicalPlan::StreamJoin { schema, .. }
            | PhysicalPlan::NestedLoopJoin { schema, .. }
            | PhysicalPlan::Union { schema, .. }
            | PhysicalPlan::WindowTvf { schema, .. }
            | PhysicalPlan::Window { schema, .. }
            | PhysicalPlan::SessionAggregate { schema, .. }
            | PhysicalPlan::SessionTvf { schema, .. } => schema.clone(),
            PhysicalPlan::Filter { input, .. }
            | PhysicalPlan::RankFilter { input, .. }
            | PhysicalPlan::Sort { input, .. }
            | PhysicalPlan::Limit { input, .. }
            | PhysicalPlan::Shared { input, .. } => input.schema(),
        }
    }

    pub fn inputs(&self) -> Vec<&PhysicalPlan> {
        match self {
            PhysicalPlan::Scan { .. } | PhysicalPlan::Values { .. } => vec![],
            PhysicalPlan::Filter { input, .. }
            | PhysicalPlan::RankFilter { input, .. }
            | PhysicalPlan::Project { input, .. }
            | PhysicalPlan::HashAggregate { input, .. }
            | PhysicalPlan::UpdateAggregate { input, .. }
            | PhysicalPlan::Materialize { input, .. }
            | PhysicalPlan::Sort { input, .. }
            | PhysicalPlan::Limit { input, .. }
            | PhysicalPlan::WindowTvf { input, .. }
            | PhysicalPlan::Window { input, .. }
            | PhysicalPlan::SessionAggregate { input, .. }
            | PhysicalPlan::SessionTvf { input, .. }
            | PhysicalPlan::Shared { input, .. } => vec![input],
            PhysicalPlan::HashJoin { probe, build, .. } | PhysicalPlan::NestedLoopJoin { probe, build, .. } => {
                vec![probe, build]
            }
            PhysicalPlan::StreamJoin { left, right, .. } => vec![left, right],
            PhysicalPlan::Union { inputs, .. } => inputs.iter().collect(),
        }
    }

    /// Moves the node out, leaving an empty placeholder (to rebuild a tree in place).
    pub fn take(&mut self) -> PhysicalPlan {
        std::mem::replace(self, PhysicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) })
    }

    pub fn inputs_mut(&mut self) -> Vec<&mut PhysicalPlan> {
        match self {
            PhysicalPlan::Scan { .. } | PhysicalPlan::Values { .. } => vec![],
            PhysicalPlan::Filter { input, .. }
            | PhysicalPlan::RankFilter { input, .. }
            | PhysicalPlan::Project { input, .. }
            | PhysicalPlan::HashAggregate { input, .. }
            | PhysicalPlan::UpdateAggregate { input, .. }
            | PhysicalPlan::Materialize { input, .. }
            | PhysicalPlan::Sort { input, .. }
            | PhysicalPlan::Limit { input, .. }
            | PhysicalPlan::WindowTvf { input, .. }
            | PhysicalPlan::Window { input, .. }
            | PhysicalPlan::SessionAggregate { input, .. }
            | PhysicalPlan::SessionTvf { input, .. }
            | PhysicalPlan::Shared { input, .. } => vec![input],
            PhysicalPlan::HashJoin { probe, build, .. } | PhysicalPlan::NestedLoopJoin { probe, build, .. } => {
                vec![probe, build]
            }
            PhysicalPlan::StreamJoin { left, right, .. } => vec![left, right],
            PhysicalPlan::Union { inputs, .. } => inputs.iter_mut().collect(),
        }
    }

    /// The scans that column `column` of this plan's output comes from unchanged, with its position
    /// in each scan's output, appended to `out` with the breakers crossed (`via`, plus those crossed
    /// before): every row here carries the value a row of such a scan had, and a row of the scan
    /// whose value is not wanted here could have been dropped at the scan. Through filters,
    /// projections of the column, the probe side of joins that emit probe rows as they are (never
    /// build rows in their place, never probe columns padded with NULL), and inner joins' build keys
    /// (equal to their probe keys). With `across_breakers`, also into a GROUP BY keyed by the column
    /// (its groups of other values are not wanted either), a shared subplan and the inputs of a
    /// union: those go in `via`, as the scan is then in another pipeline (and other uses may read
    /// the subplan).
    pub fn filter_targets<'a>(&'a self, column: usize, across_breakers: bool, via: &[&'a PhysicalPlan], out: &mut Vec<(&'a PhysicalPlan, usize, Vec<&'a PhysicalPlan>)>) {
        let crossed = |node: &'a PhysicalPlan| -> Vec<&'a PhysicalPlan> { via.iter().copied().chain([node]).collect() };
        match self {
            PhysicalPlan::Scan { .. } => out.push((self, column, via.to_vec())),
            PhysicalPlan::Filter { input, .. } => input.filter_targets(column, across_breakers, via, out),
            PhysicalPlan::Project { input, exprs, .. } => {
                if let Some(Expr::Column(c)) = exprs.get(column) {
                    input.filter_targets(*c, across_breakers, via, out)
                }
            }
            PhysicalPlan::HashJoin { probe, kind, keep_build: false, .. } | PhysicalPlan::NestedLoopJoin { probe, kind, .. }
                if matches!(kind, JoinKind::Inner | JoinKind::Left | JoinKind::Semi | JoinKind::Anti | JoinKind::Mark | JoinKind::Single)
                    && column < probe.schema().fields().len() =>
            {
                probe.filter_targets(column, across_breakers, via, out)
            }
            // A build key of an inner join equals its probe key in every row (same type, so the same
            // value): the probe side's column carries it.
            PhysicalPlan::HashJoin { probe, build, kind: JoinKind::Inner, probe_keys, build_keys, keep_build: false, .. } => {
                let probe_schema = probe.schema();
                let Some(b) = column.checked_sub(probe_schema.fields().len()) else { return };
                let Some(key) = build_keys.iter().position(|k| *k == Expr::Column(b)) else { return };
                let Expr::Column(p) = probe_keys[key] else { return };
                if probe_schema.field(p).data_type() == build.schema().field(b).data_type() {
                    probe.filter_targets(p, across_breakers, via, out)
                }
            }
            PhysicalPlan::HashAggregate { input, group, window_end: None, .. } if across_breakers => {
                if let Some(Expr::Column(c)) = group.get(column) {
                    input.filter_targets(*c, across_breakers, &crossed(self), out)
                }
            }
            PhysicalPlan::Shared { input, .. } if across_breakers => input.filter_targets(column, across_breakers, &crossed(self), out),
            // Each input's rows go to this union only: any of them may be filtered.
            PhysicalPlan::Union { inputs, .. } if across_breakers => {
                for input in inputs {
                    input.filter_targets(column, across_breakers, &crossed(self), out);
                }
            }
            _ => {}
        }
    }

    /// Where a hash join's runtime filters could go (see `exec::runtime_filter`; which are used is
    /// `crate::runtime_filter_plan`'s choice): for each key whose probe side is a column of scans
    /// (`filter_targets`), of an integer type equal to the build key's, the key's index, each scan,
    /// the column's position in it and the breakers between. None unless probe rows without a match
    /// never reach the output (inner, right and semi joins, and those that keep build rows by their
    /// matches).
    pub fn runtime_filter_targets(&self, across_breakers: bool) -> Vec<FilterTarget<'_>> {
        let PhysicalPlan::HashJoin { probe, build, kind, probe_keys, build_keys, null_aware: false, keep_build, .. } = self else {
            return vec![];
        };
        if !(*keep_build || matches!(kind, JoinKind::Inner | JoinKind::Right | JoinKind::Semi)) {
            return vec![];
        }
        let (probe_schema, build_schema) = (probe.schema(), build.schema());
        let integer = |t: &arrow::datatypes::DataType| t.is_integer() && *t != arrow::datatypes::DataType::UInt64;
        let mut out = vec![];
        for (key, (p, b)) in probe_keys.iter().zip(build_keys).enumerate() {
            let Expr::Column(c) = p else { continue };
            let t = p.data_type(&probe_schema);
            if !integer(&t) || t != b.data_type(&build_schema) {
                continue;
            }
            let mut scans = vec![];
            probe.filter_targets(*c, across_breakers, &[], &mut scans);
            out.extend(scans.into_iter().map(|(scan, column, via)| FilterTarget { key, scan, column, via }));
        }
        out
    }

    /// Whether some string columns come out dictionary-encoded from joins' build sides
    /// (`dictionary_join_outputs`): this join's, or a join's below it through probe sides.
    pub fn joins_hand_out_dictionaries(&self) -> bool {
        match self {
            PhysicalPlan::HashJoin { probe, kind: JoinKind::Inner, filter: None, dictionary, .. } => {
                dictionary.contains(&true) || probe.joins_hand_out_dictionaries()
            }
            _ => false,
        }
    }

    /// Whether the output is a changelog (its last column the row kind), not rows that are final.
    pub fn changelog(&self) -> bool {
        match self {
            PhysicalPlan::UpdateAggregate { .. } => true,
            PhysicalPlan::StreamJoin { kind, interval: None, .. } => *kind != JoinKind::Inner,
            PhysicalPlan::Scan { source, .. } => source.changelog(),
            PhysicalPlan::Filter { input, .. } | PhysicalPlan::Project { input, .. } | PhysicalPlan::Shared { input, .. } => {
                input.changelog()
            }
            PhysicalPlan::Union { inputs, .. } => inputs.iter().any(|i| i.changelog()),
            _ => false,
        }
    }

    /// Whether the output never ends: the plan reads a table without end and nothing stops reading
    /// (a LIMIT does, once it has its rows).
    pub fn unbounded(&self) -> bool {
        match self {
            PhysicalPlan::Scan { source, .. } => source.unbounded(),
            PhysicalPlan::Limit { fetch: Some(_), .. } => false,
            PhysicalPlan::HashJoin { probe, .. } | PhysicalPlan::NestedLoopJoin { probe, .. } => probe.unbounded(),
            other => other.inputs().iter().any(|i| i.unbounded()),
        }
    }

    /// The first table without end that the plan reads.
    fn unbounded_table(&self) -> Option<&str> {
        match self {
            PhysicalPlan::Scan { name, source, .. } if source.unbounded() => Some(name),
            other => other.inputs().into_iter().find_map(|i| i.unbounded_table()),
        }
    }

    /// Refuses a plan whose answer would never come because it reads a table without end: a batch
    /// query whose output has no end, or any operator that emits only at the end of its input over
    /// such an input (a sort, a join's build side, a GROUP BY, except as a stream one by an event-time
    /// window, which emits as the watermark passes).
    pub fn check_runnable(&self, stream: bool) -> Result<()> {
        let Some(table) = self.unbounded_table() else { return Ok(()) };
        self.check_blocking(table, stream)?;
        if !stream && self.unbounded() {
            return Err(RiffleError::plan(format!(
                "table '{table}' has no end: run the query as a stream (riffle sql --stream) or bound the table (nexmark: 'events.num')"
            )));
        }
        Ok(())
    }

    /// Refuses to collect a result that never ends (the rows of a stream are shown as they come).
    pub fn check_ends(&self) -> Result<()> {
        match self.unbounded_table() {
            Some(table) if self.unbounded() => Err(RiffleError::plan(format!(
                "the result of this query over the unbounded table '{table}' never ends, so it cannot be collected: \
                 run it with riffle sql --stream, which prints its rows as they come, INSERT it INTO a table, \
                 or bound the table (nexmark: 'events.num')"
            ))),
            _ => Ok(()),
        }
    }

    fn check_blocking(&self, table: &str, stream: bool) -> Result<()> {
        let never = |what: &str| {
            let instead = if stream {
                "Group by a window instead (TUMBLE, HOP, CUMULATE on the table's event time)"
            } else {
                "Run it as a stream (riffle sql --stream): grouped by an event-time window it emits each window's rows once, \
                 otherwise each group's row again as it changes"
            };
            Err(RiffleError::NotSupported(format!(
                "{what} over the unbounded table '{table}': it emits only at the end of its input, which never comes. \
                 {instead}, or bound the table (nexmark: 'events.num')"
            )))
        };
        match self {
            PhysicalPlan::HashAggregate { input, window_end, .. } if input.unbounded() && (window_end.is_none() || !stream) => {
                return never("GROUP BY")
            }
            PhysicalPlan::Materialize { input, .. } if input.unbounded() => return never("the final rows of an updating result"),
            PhysicalPlan::Sort { input, .. } if input.unbounded() => return never("ORDER BY"),
            PhysicalPlan::Window { input, .. } if input.unbounded() => return never("a window function (OVER)"),
            PhysicalPlan::SessionTvf { input, .. } if input.unbounded() => return never("SESSION windows"),
            PhysicalPlan::HashJoin { build, kind, .. } | PhysicalPlan::NestedLoopJoin { build, kind, .. } if build.unbounded() => {
                return if stream && !matches!(kind, JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full) {
                    Err(RiffleError::NotSupported(format!(
                        "EXISTS, IN or a scalar subquery over an input without end (the table '{table}'): only inner and outer joins of two streams are supported yet"
                    )))
                } else if stream {
                    Err(RiffleError::NotSupported(format!(
                        "a join of two inputs without end (the table '{table}') without an equality condition: give it one (ON a.k = b.k)"
                    )))
                } else {
                    never("a join with an unbounded right side")
                }
            }
            _ => {}
        }
        self.inputs().into_iter().try_for_each(|i| i.check_blocking(table, stream))
    }

    /// Refuses what checkpoints cannot restore yet: only scans (not literal rows), filters,
    /// projections, window table functions, window, session and updating aggregates, stream joins,
    /// unions and joins whose build side ends (it is computed again on restore; the probe side streams
    /// through it) are checkpointed.
    pub fn check_checkpointable(&self) -> Result<()> {
        let what = match self {
            PhysicalPlan::Scan { .. }
            | PhysicalPlan::Filter { .. }
            | PhysicalPlan::Project { .. }
            | PhysicalPlan::WindowTvf { .. }
            | PhysicalPlan::Union { .. }
            | PhysicalPlan::Shared { .. }
            | PhysicalPlan::StreamJoin { .. }
            | PhysicalPlan::SessionAggregate { .. }
            | PhysicalPlan::UpdateAggregate { .. }
            | PhysicalPlan::HashAggregate { window_end: Some(_), .. } => None,
            PhysicalPlan::HashJoin { probe, build, kind, keep_build: false, .. } | PhysicalPlan::NestedLoopJoin { probe, build, kind, .. }
                if !build.unbounded() && !matches!(kind, JoinKind::Right | JoinKind::Full) =>
            {
                // Only the probe side is restored.
                return probe.check_checkpointable();
            }
            PhysicalPlan::HashAggregate { .. } => Some("a GROUP BY that is neither updating nor by an event-time window"),
            PhysicalPlan::Materialize { .. } => Some("the final rows of an updating GROUP BY"),
            PhysicalPlan::Window { .. } => Some("a window function (OVER)"),
            PhysicalPlan::SessionTvf { .. } => Some("SESSION windows other than a GROUP BY of their bounds and keys"),
            PhysicalPlan::HashJoin { .. } | PhysicalPlan::NestedLoopJoin { .. } => {
                Some("a right or full outer join, or a semi join keeping the right side's rows (they come out at its end)")
            }
            PhysicalPlan::Sort { .. } | PhysicalPlan::RankFilter { .. } => Some("ORDER BY"),
            PhysicalPlan::Limit { .. } => Some("LIMIT"),
            PhysicalPlan::Values { .. } => Some("literal rows (VALUES)"),
        };
        if let Some(what) = what {
            return Err(RiffleError::NotSupported(format!(
                "checkpoints of a job with {what} (checkpointed so far: scans, filters, projections, window table functions, window, session and updating aggregates, inner equi-joins of streams and joins whose right side ends); run it without --checkpoint-dir"
            )));
        }
        self.inputs().into_iter().try_for_each(|i| i.check_checkpointable())
    }

    /// For EXPLAIN of a stream, per node in pre-order: how it runs on a stream and what state it holds.
    pub fn stream_notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_notes(&mut out);
        out
    }

    fn collect_notes(&self, out: &mut Vec<String>) {
        let note = match self {
            PhysicalPlan::Scan { source, .. } => {
                let mut n = String::from("source");
                if source.event_time.is_some() {
                    n.push_str(", watermarks from WATERMARK FOR");
                }
                if let crate::catalog::TableData::Files { monitor: Some(interval), idle_timeout, .. } = &source.data {
                    let _ = write!(n, ", new files every {interval:?}");
                    if let Some(t) = idle_timeout {
                        let _ = write!(n, ", idle after {t:?} without rows");
                    }
                }
                if source.unbounded() {
                    n.push_str(", without end");
                }
                if source.changelog() {
                    n.push_str(", a changelog");
                }
                n
            }
            PhysicalPlan::Values { .. }
            | PhysicalPlan::Filter { .. }
            | PhysicalPlan::Project { .. }
            | PhysicalPlan::WindowTvf { .. }
            | PhysicalPlan::Union { .. }
            | PhysicalPlan::Limit { .. } => "streaming, no state".into(),
            PhysicalPlan::Shared { buffered: false, .. } => "streaming: the subplan runs once, each use reads its rows; no state".into(),
            PhysicalPlan::Shared { buffered: true, .. } => {
                "the subplan runs once; state: its rows, kept until this use reads them (it waits for another use)".into()
            }
            PhysicalPlan::HashAggregate { window_end: Some(_), input, group, aggs, .. } => {
                let state = if hop_slices(input, group, aggs).is_some() {
                    "the groups of each slide (a row updates its slide's, a window merges its slides' when it closes)"
                } else {
                    "the open windows' groups"
                };
                let keys = window_partition_keys(input, group);
                let partitioned = if keys.is_empty() {
                    String::new()
                } else {
                    let schema = input.schema();
                    let names: Vec<String> = keys.iter().map(|k| group[*k].display(&schema).to_string()).collect();
                    format!(", partitioned by {}", names.join(", "))
                };
                format!("streaming: emits each window once the watermark passes its end; state: {state}{partitioned}")
            }
            PhysicalPlan::HashAggregate { .. } => "blocking: emits at the end of its input; state: every group (spills)".into(),
            PhysicalPlan::SessionAggregate { .. } => {
                "streaming: emits each session once the watermark passes its end; state: the open sessions' groups".into()
            }
            PhysicalPlan::UpdateAggregate { input_changelog, .. } => format!(
                "streaming: emits a changelog (+I, -U, +U, -D) of the groups each batch changes{}; state: every group",
                if *input_changelog { ", taking back the input's retractions" } else { "" }
            ),
            PhysicalPlan::Materialize { .. } => "blocking: applies the changelog, emits the final rows at the end of its input; state: every row".into(),
            PhysicalPlan::Sort { .. } => "blocking: emits at the end of its input; state: every row (spills)".into(),
            PhysicalPlan::RankFilter { limit, .. } => format!("streaming; state: each partition's {limit} best keys"),
            PhysicalPlan::HashJoin { .. } | PhysicalPlan::NestedLoopJoin { .. } => {
                "streaming probe side; state: the build side, read to its end first".into()
            }
            PhysicalPlan::StreamJoin { interval: Some(_), kind, .. } => format!(
                "streaming: joins each row with the other side's rows so far{}; state: both sides' rows within the interval, dropped as the watermarks pass",
                if *kind == JoinKind::Inner { "" } else { ", a row without match leaves padded with NULLs as it is dropped" }
            ),
            PhysicalPlan::StreamJoin { kind, .. } => format!(
                "streaming: joins each row with the other side's rows so far{}; state: every row of both sides (no time bound); output without event time",
                if *kind == JoinKind::Inner {
                    ""
                } else {
                    ", emits a changelog: a row without match at once padded with NULLs (+I), taken back (-D) at its first match"
                }
            ),
            PhysicalPlan::Window { .. } | PhysicalPlan::SessionTvf { .. } => {
                "emits each partition once its key changes, over a sort (blocking); state: one partition's rows".into()
            }
        };
        out.push(note);
        for i in self.inputs() {
            i.collect_notes(out);
        }
    }

    /// The output column that is the rows' event time, the one the watermarks are about: a table's
    /// `WATERMARK FOR` column, kept through row-wise operators and joins (the left row's), and a
    /// window aggregate's `window_end` (its rows leave once the watermark passed it).
    pub fn event_time_column(&self) -> Option<usize> {
        match self {
            PhysicalPlan::Scan { source, projection, .. } => {
                let c = source.event_time.as_ref()?.column;
                projection.iter().position(|p| *p == c)
            }
            PhysicalPlan::Filter { input, .. } | PhysicalPlan::WindowTvf { input, .. } | PhysicalPlan::Shared { input, .. } => {
                input.event_time_column()
            }
            PhysicalPlan::Project { input, exprs, .. } => {
                let c = input.event_time_column()?;
                exprs.iter().position(|e| *e == Expr::Column(c))
            }
            PhysicalPlan::HashAggregate { window_end: Some(end), .. } => Some(*end),
            PhysicalPlan::SessionAggregate { group, .. } => group.iter().position(|g| *g == SessionColumn::End),
            // A regular stream join emits no watermarks: its rows have no event time downstream. An
            // interval join's rows keep the time of the side whose every row has one.
            PhysicalPlan::StreamJoin { left, interval: Some(_), kind: JoinKind::Inner | JoinKind::Left, .. } => left.event_time_column(),
            PhysicalPlan::StreamJoin { left, right, interval: Some(_), kind: JoinKind::Right, .. } => {
                Some(left.schema().fields().len() + right.event_time_column()?)
            }
            PhysicalPlan::HashJoin { probe, kind: JoinKind::Inner | JoinKind::Left, .. } => probe.event_time_column(),
            PhysicalPlan::Union { inputs, .. } => crate::logical::same_column(inputs.iter().map(|i| i.event_time_column())),
            _ => None,
        }
    }

    /// Node count; nodes are numbered in pre-order, which `exec` uses to attach metrics.
    pub fn node_count(&self) -> usize {
        1 + self.inputs().iter().map(|i| i.node_count()).sum::<usize>()
    }

    pub fn name(&self) -> &'static str {
        match self {
            PhysicalPlan::Scan { .. } => "Scan",
            PhysicalPlan::Values { .. } => "Values",
            PhysicalPlan::Filter { .. } => "Filter",
            PhysicalPlan::Project { .. } => "Project",
            PhysicalPlan::HashAggregate { window_end: Some(_), .. } => "WindowAggregate",
            PhysicalPlan::HashAggregate { .. } => "HashAggregate",
            PhysicalPlan::UpdateAggregate { .. } => "UpdateAggregate",
            PhysicalPlan::Materialize { .. } => "Materialize",
            PhysicalPlan::WindowTvf { .. } => "WindowTvf",
            PhysicalPlan::Window { .. } => "Window",
            PhysicalPlan::SessionTvf { .. } => "SessionTvf",
            PhysicalPlan::SessionAggregate { .. } => "SessionAggregate",
            PhysicalPlan::HashJoin { .. } => "HashJoin",
            PhysicalPlan::StreamJoin { interval: Some(_), .. } => "IntervalJoin",
            PhysicalPlan::StreamJoin { .. } => "StreamJoin",
            PhysicalPlan::NestedLoopJoin { .. } => "NestedLoopJoin",
            PhysicalPlan::RankFilter { .. } => "RankFilter",
            PhysicalPlan::Sort { fetch: Some(_), .. } => "TopK",
            PhysicalPlan::Sort { .. } => "Sort",
            PhysicalPlan::Limit { .. } => "Limit",
            PhysicalPlan::Union { .. } => "Union",
            PhysicalPlan::Shared { .. } => "Shared",
        }
    }

    /// One line per node, indented; `annotate(id)` may add text (EXPLAIN ANALYZE metrics).
    /// `stream`: run as a stream (which has fewer runtime filters).
    pub fn display_indent(&self, stream: bool, annotate: &dyn Fn(usize) -> String) -> String {
        let mut out = String::new();
        let mut id = 0;
        let filters = crate::runtime_filter_plan::RuntimeFilterPlan::of(self, !stream);
        self.fmt_node(&mut out, 0, &mut id, &mut vec![], &filters, annotate);
        out
    }

    /// `shown`: the shared subplans printed so far (a later use prints only that it reads them).
    fn fmt_node(
        &self,
        out: &mut String,
        depth: usize,
        id: &mut usize,
        shown: &mut Vec<usize>,
        filters: &crate::runtime_filter_plan::RuntimeFilterPlan,
        annotate: &dyn Fn(usize) -> String,
    ) {
        let my_id = *id;
        *id += 1;
        if let PhysicalPlan::Shared { input, id: shared, .. } = self {
            if shown.contains(shared) {
                let _ = writeln!(out, "{}{}{}: reads the rows of its first use{}", "  ".repeat(depth), self.name(), self.detail(), annotate(my_id));
                *id += input.node_count();
                return;
            }
            shown.push(*shared);
        }
        let mut detail = self.detail();
        if let Some(targets) = filters.joins.get(&my_id) {
            let labels: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
            let _ = write!(detail, " runtime_filter=[{}]", labels.join(", "));
        }
        let extra = annotate(my_id);
        let estimate = match self {
            PhysicalPlan::Scan { estimated_rows: Some(n), .. }
            | PhysicalPlan::HashAggregate { estimated_rows: Some(n), .. }
            | PhysicalPlan::HashJoin { estimated_rows: Some(n), .. }
            | PhysicalPlan::NestedLoopJoin { estimated_rows: Some(n), .. } => format!("  est_rows={n}"),
            _ => String::new(),
        };
        let _ = writeln!(out, "{}{}{}{}{}", "  ".repeat(depth), self.name(), detail, extra, estimate);
        for input in self.inputs() {
            input.fmt_node(out, depth + 1, id, shown, filters, annotate);
        }
    }

    fn detail(&self) -> String {
        let list = |exprs: &[Expr], schema: &Schema| exprs.iter().map(|e| e.display(schema).to_string()).collect::<Vec<_>>().join(", ");
        match self {
            PhysicalPlan::Scan { name, projection, filter, source, dictionary, .. } => {
                let cols: Vec<&str> = projection.iter().map(|i| source.schema.field(*i).name().as_str()).collect();
                let schema = source.schema.project(projection).unwrap_or_else(|_| Schema::empty());
                let mut out = format!(": {name} [{}]", cols.join(", "));
                if let Some(f) = filter {
                    let _ = write!(out, " filter={}", f.display(&schema));
                }
                let dict: Vec<&str> = cols.iter().zip(dictionary).filter(|(_, d)| **d).map(|(c, _)| *c).collect();
                if !dict.is_empty() {
                    let _ = write!(out, " dictionary=[{}]", dict.join(", "));
                }
                out
            }
            PhysicalPlan::Values { rows, .. } => format!(": {} rows", rows.len()),
            PhysicalPlan::Materialize { .. } => String::new(),
            PhysicalPlan::Filter { input, predicate } => format!(": {}", predicate.display(&input.schema())),
            PhysicalPlan::Project { input, exprs, .. } => format!(": {}", list(exprs, &input.schema())),
            PhysicalPlan::HashAggregate { input, group, aggs, .. } | PhysicalPlan::UpdateAggregate { input, group, aggs, .. } => {
                let schema = input.schema();
                format!(": group=[{}] aggs=[{}]", list(group, &schema), describe_aggs(aggs, &schema))
            }
            PhysicalPlan::HashJoin { probe, build, kind, probe_keys, build_keys, filter, null_aware, keep_build, dictionary, .. } => {
                let (ps, bs) = (probe.schema(), build.schema());
                let keys: Vec<String> = probe_keys
                    .iter()
                    .zip(build_keys)
                    .map(|(p, b)| format!("{} = {}", p.display(&ps), b.display(&bs)))
                    .collect();
                let side = if *keep_build { " (build rows kept)" } else { "" };
                let mut s = format!(": {kind:?}{side}{} on=[{}]", if *null_aware { " null-aware" } else { "" }, keys.join(", "));
                if let Some(f) = filter {
                    s.push_str(&format!(" filter={}", f.display(&join_schema(&ps, &bs, JoinKind::Inner))));
                }
                let encoded: Vec<&str> = bs.fields().iter().zip(dictionary).filter(|(_, d)| **d).map(|(f, _)| f.name().as_str()).collect();
                if !encoded.is_empty() {
                    s.push_str(&format!(" dictionary=[{}]", encoded.join(", ")));
                }
                s
            }
            PhysicalPlan::StreamJoin { left, right, kind, left_keys, right_keys, filter, interval, .. } => {
                let (ls, rs) = (left.schema(), right.schema());
                let keys: Vec<String> =
                    left_keys.iter().zip(right_keys).map(|(l, r)| format!("{} = {}", l.display(&ls), r.display(&rs))).collect();
                let kind = if *kind == JoinKind::Inner { String::new() } else { format!(" {kind:?}") };
                let mut s = format!(":{kind} on=[{}]", keys.join(", "));
                if let Some(b) = interval {
                    let secs = |us: i64| format!("{}s", us as f64 / 1e6);
                    let _ = write!(s, " interval={} - {} in [{}, {}]", ls.field(b.left_time).name(), rs.field(b.right_time).name(), secs(b.lo), secs(b.hi));
                }
                if let Some(f) = filter {
                    let _ = write!(s, " filter={}", f.display(&join_schema(&ls, &rs, JoinKind::Inner)));
                }
                s
            }
            PhysicalPlan::NestedLoopJoin { probe, build, kind, filter, .. } => match filter {
                Some(f) => format!(": {kind:?} filter={}", f.display(&join_schema(&probe.schema(), &build.schema(), JoinKind::Inner))),
                None => format!(": {kind:?}"),
            },
            PhysicalPlan::Sort { input, keys, fetch } => {
                let schema = input.schema();
                let keys: Vec<String> = keys
                    .iter()
                    .map(|k| format!("{} {}", k.expr.display(&schema), if k.descending { "DESC" } else { "ASC" }))
                    .collect();
                match fetch {
                    Some(n) => format!(": {} fetch={n}", keys.join(", ")),
                    None => format!(": {}", keys.join(", ")),
                }
            }
            PhysicalPlan::RankFilter { input, partition_by, order_by, limit, dense } => {
                let over = crate::logical::describe_over(partition_by, order_by, &input.schema());
                format!(": {}() OVER ({over}) <= {limit}", if *dense { "dense_rank" } else { "rank" })
            }
            PhysicalPlan::Limit { skip, fetch, .. } => format!(": skip={skip} fetch={}", fetch.map(|f| f.to_string()).unwrap_or("all".into())),
            PhysicalPlan::Union { inputs, .. } => format!(": {} inputs", inputs.len()),
            PhysicalPlan::Shared { id, buffered, .. } => format!(" #{id}{}", if *buffered { " (buffered: waits for another use)" } else { "" }),
            PhysicalPlan::WindowTvf { input, window, time, .. } => format!(": {}", window.describe(input.schema().field(*time).name())),
            PhysicalPlan::Window { input, calls, .. } => format!(": {}", crate::logical::describe_window_calls(calls, &input.schema())),
            PhysicalPlan::SessionTvf { input, keys, time, gap, .. } => {
                format!(": {}", crate::logical::describe_session(keys, *time, *gap, &input.schema()))
            }
            PhysicalPlan::SessionAggregate { input, keys, time, gap, group, aggs, schema } => {
                let input_schema = input.schema();
                let group: Vec<&str> = schema.fields().iter().take(group.len()).map(|f| f.name().as_str()).collect();
                format!(
                    ": {} group=[{}] aggs=[{}]",
                    crate::logical::describe_session(keys, *time, *gap, &input_schema),
                    group.join(", "),
                    describe_aggs(aggs, &input_schema)
                )
            }
        }
    }
}

/// `count(x), sum(DISTINCT y)` for EXPLAIN.
fn describe_aggs(aggs: &[AggCall], schema: &Schema) -> String {
    let call = |a: &AggCall| {
        let args: Vec<String> = a.args.iter().map(|e| e.display(schema).to_string()).collect();
        format!("{}({}{})", a.func.name(), if a.distinct { "DISTINCT " } else { "" }, args.join(", "))
    };
    aggs.iter().map(call).collect::<Vec<_>>().join(", ")
}

/// Lets a scan that feeds an aggregate directly (or through a projection of bare columns, one that
/// drops the columns only the scan's filter reads) hand out string group keys dictionary-encoded: the
/// aggregate then looks up each distinct code once per batch instead of hashing every row's string.
/// Only columns used as bare group keys and nowhere else (the scan's own filter, another projected
/// column) qualify, so no other operator ever sees a dictionary.
fn dictionary_group_keys(input: &mut PhysicalPlan, group: &[Expr], aggs: &[AggCall]) {
    let (scan, projection) = match input {
        PhysicalPlan::Project { input, exprs, .. } => (input.as_mut(), Some(&*exprs)),
        scan => (scan, None),
    };
    let PhysicalPlan::Scan { filter, dictionary, schema, source, .. } = scan else { return };
    // Only Parquet keeps strings dictionary-encoded; other sources would have to build dictionaries.
    if !matches!(&source.data, crate::catalog::TableData::Files { format: riffle_formats::FileFormat::Parquet, .. }) {
        return;
    }
    // The scan column each of the aggregate's input columns passes on unchanged, if it does.
    let bare: Vec<Option<usize>> = match projection {
        Some(exprs) => exprs.iter().map(|e| if let Expr::Column(c) = e { Some(*c) } else { None }).collect(),
        None => (0..dictionary.len()).map(Some).collect(),
    };
    let mut cols = vec![];
    for e in filter.iter().chain(projection.into_iter().flatten()) {
        e.columns(&mut cols);
    }
    let mut scan_uses = vec![0usize; dictionary.len()];
    for c in cols.drain(..) {
        scan_uses[c] += 1;
    }
    for e in group.iter().chain(aggs.iter().flat_map(|a| &a.args)) {
        e.columns(&mut cols);
    }
    let mut uses = vec![0usize; bare.len()];
    for c in cols {
        uses[c] += 1;
    }
    // A projected column is one use of its scan column; without a projection there is none.
    let passing_uses = usize::from(projection.is_some());
    for g in group {
        if let Expr::Column(c) = g {
            if let Some(s) = bare[*c] {
                dictionary[s] = uses[*c] == 1 && scan_uses[s] == passing_uses && schema.field(s).data_type() == &arrow::datatypes::DataType::Utf8;
            }
        }
    }
}

/// Lets an inner join without a condition on its pairs hand out build-side strings dictionary-encoded
/// (the build side's column as the values, each row's build row as its key) where an aggregate above
/// groups by them: the join copies no string, and the aggregate interns the build side's strings once
/// instead of hashing every row's (`exec::coded_keys`; TPC-DS q47 groups 6.6 M store sales by their
/// item's category and brand and their store's name). The join is the aggregate's input or one below
/// it through the probe sides of such joins, whose pairs take a probe column's dictionary as it is
/// (q47's store join sits below its item join). Only columns used as bare group keys (or bare
/// `any_value` arguments) and nowhere else (not as a join key on the way) qualify, so no other
/// operator sees a dictionary; a probe side that spills is written with its dictionaries expanded.
/// Run last: the aggregate reads the joins' batches as they are made.
pub fn dictionary_join_outputs(mut plan: PhysicalPlan) -> PhysicalPlan {
    if let PhysicalPlan::HashAggregate { input, group, aggs, window_end: None, .. } = &mut plan {
        let width = input.schema().fields().len();
        let mut uses = vec![0usize; width];
        let mut cols = vec![];
        for e in group.iter().chain(aggs.iter().flat_map(|a| &a.args)) {
            e.columns(&mut cols);
        }
        for c in cols {
            uses[c] += 1;
        }
        // `any_value` takes a dictionary as it is too (it expands the rows it keeps only): the
        // columns carried beside a key (`dependent_keys`).
        let carried = aggs.iter().filter(|a| a.func == AggFunc::AnyValue).filter_map(|a| a.args.first());
        let mut wanted = vec![false; width];
        for g in group.iter().chain(carried) {
            if let Expr::Column(c) = g {
                wanted[*c] = uses[*c] == 1;
            }
        }
        encode_join_outputs(input, wanted);
    }
    for input in plan.inputs_mut() {
        *input = dictionary_join_outputs(input.take());
    }
    plan
}

/// Marks the `wanted` string columns of `plan`'s output that an inner join (`plan`, or one below it
/// through probe sides) takes from its build side to go out dictionary-encoded.
fn encode_join_outputs(plan: &mut PhysicalPlan, mut wanted: Vec<bool>) {
    let PhysicalPlan::HashJoin { probe, probe_keys, kind: JoinKind::Inner, filter: None, keep_build: false, dictionary, schema, .. } = plan else {
        return;
    };
    let width = probe.schema().fields().len();
    let utf8 = |c: usize| schema.field(c).data_type() == &arrow::datatypes::DataType::Utf8;
    let flags: Vec<bool> = (width..schema.fields().len()).map(|c| wanted[c] && utf8(c)).collect();
    if flags.contains(&true) {
        *dictionary = flags;
    }
    let mut keys = vec![];
    for k in probe_keys.iter() {
        k.columns(&mut keys);
    }
    for c in keys {
        wanted[c] = false;
    }
    wanted.truncate(width);
    encode_join_outputs(probe, wanted);
}

/// Whether column `c` of `plan` is the `window_end` of an event-time window table function, through
/// filters and projections.
fn is_window_end(plan: &LogicalPlan, c: usize) -> bool {
    match plan {
        LogicalPlan::WindowTvf { input, event_time, .. } => *event_time && c == input.schema().fields().len() + 1,
        LogicalPlan::Filter { input, .. } => is_window_end(input, c),
        LogicalPlan::Project { input, exprs, .. } => matches!(exprs.get(c), Some(Expr::Column(i)) if is_window_end(input, *i)),
        // A window aggregate's window_end stays one (cascading window aggregates, as in Flink): its
        // windows leave before the watermark that closed them.
        LogicalPlan::Aggregate { input, group, .. } => matches!(group.get(c), Some(Expr::Column(i)) if is_window_end(input, *i)),
        _ => false,
    }
}

/// Window functions: for each distinct (PARTITION BY, ORDER BY) of the calls, a sort by those keys
/// and a Window node appending those calls; then the columns in the order the SELECT bound them.
fn window_plan(mut input: PhysicalPlan, calls: &[WindowCall], schema: &SchemaRef) -> Result<PhysicalPlan> {
    let width = input.schema().fields().len();
    let mut specs: Vec<(Vec<Expr>, Vec<SortKey>)> = Vec::new();
    for c in calls {
        if !specs.iter().any(|(p, o)| *p == c.partition_by && *o == c.order_by) {
            specs.push((c.partition_by.clone(), c.order_by.clone()));
        }
    }
    // Where each call's column lands.
    let mut position = vec![0; calls.len()];
    let mut next = width;
    for (partition_by, order_by) in specs {
        let mut keys: Vec<SortKey> =
            partition_by.iter().map(|e| SortKey { expr: e.clone(), descending: false, nulls_first: false }).collect();
        keys.extend(order_by.iter().cloned());
        let sorted = if keys.is_empty() {
            // One partition of everything: gathered, in any order.
            PhysicalPlan::Limit { input: Box::new(input), skip: 0, fetch: None }
        } else {
            PhysicalPlan::Sort { input: Box::new(input), keys, fetch: None }
        };
        let mine: Vec<(usize, &WindowCall)> =
            calls.iter().enumerate().filter(|(_, c)| c.partition_by == partition_by && c.order_by == order_by).collect();
        let mut fields: Vec<arrow::datatypes::Field> = sorted.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, c) in &mine {
            position[*i] = next;
            next += 1;
            fields.push(schema.field(width + i).clone().with_data_type(c.ty.clone()));
        }
        let group_calls = mine.iter().map(|(_, c)| (*c).clone()).collect();
        input = PhysicalPlan::Window { input: Box::new(sorted), calls: group_calls, schema: Arc::new(Schema::new(fields)) };
    }
    let in_order = position.iter().enumerate().all(|(i, p)| *p == width + i);
    if in_order {
        return Ok(input);
    }
    let exprs = (0..width).map(Expr::Column).chain(position.iter().map(|p| Expr::Column(*p))).collect();
    Ok(PhysicalPlan::Project { input: Box::new(input), exprs, schema: schema.clone() })
}

/// `plan`, a filter's input, with a [`PhysicalPlan::RankFilter`] before its sort where it is a window
/// of ranking functions and `predicate` bounds one of them (`rk <= 100`, `rk < 4`, `rk = 1`): rows
/// that rank further down need not be sorted, and are many where a window ranks a whole rollup to keep
/// its top few (TPC-DS q67). Only when every call of the window is a ranking function: they alone
/// give the rows they keep the values they would have had among all (other functions, a count of
/// the partition's rows say, would see the dropped rows missing).
fn with_rank_filter(plan: PhysicalPlan, predicate: &Expr) -> PhysicalPlan {
    let PhysicalPlan::Window { input, calls, schema } = plan else { return plan };
    let ranking = |f: WindowFunc| matches!(f, WindowFunc::RowNumber | WindowFunc::Rank | WindowFunc::DenseRank);
    let width = input.schema().fields().len();
    let bound = predicate.clone().conjuncts().iter().filter_map(|c| rank_bound(c, width, calls.len())).min_by_key(|(_, limit)| *limit);
    match (*input, bound) {
        (PhysicalPlan::Sort { input: sorted, keys, fetch: None }, Some((call, limit)))
            if calls.iter().all(|c| ranking(c.func)) && !calls[call].order_by.is_empty() =>
        {
            let c = &calls[call];
            let filter = PhysicalPlan::RankFilter {
                input: sorted,
                partition_by: c.partition_by.clone(),
                order_by: c.order_by.clone(),
                limit,
                // row_number's rows within `limit` are among rank's (ties broken any way).
                dense: c.func == WindowFunc::DenseRank,
            };
            let input = Box::new(PhysicalPlan::Sort { input: Box::new(filter), keys, fetch: None });
            PhysicalPlan::Window { input, calls, schema }
        }
        (input, _) => PhysicalPlan::Window { input: Box::new(input), calls, schema },
    }
}

/// The window call (of `calls` appended at column `width`) and the rank it keeps rows within, if
/// `conjunct` bounds one from above by a constant.
fn rank_bound(conjunct: &Expr, width: usize, calls: usize) -> Option<(usize, usize)> {
    let Expr::Binary { op, left, right } = conjunct else { return None };
    let (column, op, value) = match (left.as_ref(), right.as_ref()) {
        (Expr::Column(c), Expr::Literal(v)) => (*c, *op, v),
        (Expr::Literal(v), Expr::Column(c)) => (*c, op.swap(), v),
        _ => return None,
    };
    let call = column.checked_sub(width).filter(|i| *i < calls)?;
    let value = arrow::compute::cast(&value.0, &arrow::datatypes::DataType::Int64).ok()?;
    let value = value.as_any().downcast_ref::<arrow::array::Int64Array>().filter(|a| a.is_valid(0))?.value(0);
    let limit = match op {
        BinaryOp::LtEq | BinaryOp::Eq => value,
        BinaryOp::Lt => value - 1,
        _ => return None,
    };
    Some((call, usize::try_from(limit).ok()?.max(1)))
}

/// Chooses an algorithm for each logical node.
pub fn plan_physical(plan: &LogicalPlan) -> Result<PhysicalPlan> {
    Ok(match plan {
        LogicalPlan::Scan { name, source, projection, filters, schema } => {
            let scan = |schema: SchemaRef| PhysicalPlan::Scan {
                name: name.clone(),
                source: source.clone(),
                projection: projection.clone(),
                filter: Expr::conjunction(filters.clone()),
                dictionary: vec![false; projection.len()],
                schema,
                estimated_rows: estimate(plan),
            };
            if source.changelog() {
                // A changelog table's rows are the changelog applied (a stream takes the changes
                // themselves: `changelog::plan`).
                PhysicalPlan::Materialize { input: Box::new(scan(crate::changelog::with_op(schema))), schema: schema.clone() }
            } else {
                scan(schema.clone())
            }
        }
        LogicalPlan::Values { rows, schema } => PhysicalPlan::Values { rows: rows.clone(), schema: schema.clone() },
        LogicalPlan::Filter { input, predicate } => {
            PhysicalPlan::Filter { input: Box::new(with_rank_filter(plan_physical(input)?, predicate)), predicate: predicate.clone() }
        }
        LogicalPlan::Project { input, exprs, schema } => {
            PhysicalPlan::Project { input: Box::new(plan_physical(input)?), exprs: exprs.clone(), schema: schema.clone() }
        }
        LogicalPlan::Aggregate { input: logical_input, group, aggs, schema } => {
            let mut input = plan_physical(logical_input)?;
            dictionary_group_keys(&mut input, group, aggs);
            let window_end = group.iter().position(|g| matches!(g, Expr::Column(c) if is_window_end(logical_input, *c)));
            PhysicalPlan::HashAggregate {
                input: Box::new(input),
                group: group.clone(),
                aggs: aggs.clone(),
                window_end,
                schema: schema.clone(),
                estimated_rows: estimate(plan),
            }
        }
        LogicalPlan::Window { input, calls, schema } => window_plan(plan_physical(input)?, calls, schema)?,
        LogicalPlan::SessionTvf { input, keys, time, gap, schema } => {
            let mut order: Vec<SortKey> = keys.iter().map(|k| SortKey { expr: k.clone(), descending: false, nulls_first: false }).collect();
            order.push(SortKey { expr: Expr::Column(*time), descending: false, nulls_first: false });
            let sorted = PhysicalPlan::Sort { input: Box::new(plan_physical(input)?), keys: order, fetch: None };
            PhysicalPlan::SessionTvf { input: Box::new(sorted), keys: keys.clone(), time: *time, gap: *gap, schema: schema.clone() }
        }
        LogicalPlan::WindowTvf { input, window, time, schema, .. } => {
            PhysicalPlan::WindowTvf { input: Box::new(plan_physical(input)?), window: *window, time: *time, schema: schema.clone() }
        }
        LogicalPlan::Join { left, right, kind, on, filter, null_aware, schema } => {
            let probe = Box::new(plan_physical(left)?);
            let build = Box::new(plan_physical(right)?);
            if on.is_empty() {
                PhysicalPlan::NestedLoopJoin { probe, build, kind: *kind, filter: filter.clone(), schema: schema.clone(), estimated_rows: estimate(plan) }
            } else if outer_swaps(left, right, *kind) && !probe.unbounded() && !build.unbounded() {
                // Hash the smaller left input: the join the other way round, then a projection putting
                // the columns back in the query's order.
                let (nl, nr) = (left.schema().fields().len(), right.schema().fields().len());
                let swap = |c: usize| if c < nl { c + nr } else { c - nl };
                let flipped = match kind {
                    JoinKind::Left => JoinKind::Right,
                    JoinKind::Right => JoinKind::Left,
                    _ => JoinKind::Full,
                };
                let (ls, rs) = (left.schema(), right.schema());
                let join = PhysicalPlan::HashJoin {
                    probe: build,
                    build: probe,
                    kind: flipped,
                    probe_keys: on.iter().map(|(_, r)| r.clone()).collect(),
                    build_keys: on.iter().map(|(l, _)| l.clone()).collect(),
                    filter: filter.clone().map(|f| f.remap(&swap)),
                    null_aware: false,
                    keep_build: false,
                    dictionary: vec![],
                    schema: join_schema(&rs, &ls, flipped),
                    estimated_rows: estimate(plan),
                };
                let exprs = (0..nl + nr).map(|c| Expr::Column(swap(c))).collect();
                PhysicalPlan::Project { input: Box::new(join), exprs, schema: schema.clone() }
            } else if keeps_smaller_build(left, right, *kind, *null_aware) && !probe.unbounded() && !build.unbounded() {
                // Hash the rows to keep (the smaller input) and mark those the other side matches.
                let (nl, nr) = (left.schema().fields().len(), right.schema().fields().len());
                let swap = |c: usize| if c < nl { c + nr } else { c - nl };
                PhysicalPlan::HashJoin {
                    probe: build,
                    build: probe,
                    kind: *kind,
                    probe_keys: on.iter().map(|(_, r)| r.clone()).collect(),
                    build_keys: on.iter().map(|(l, _)| l.clone()).collect(),
                    filter: filter.clone().map(|f| f.remap(&swap)),
                    null_aware: false,
                    keep_build: true,
                    dictionary: vec![],
                    schema: schema.clone(),
                    estimated_rows: estimate(plan),
                }
            } else {
                PhysicalPlan::HashJoin {
                    probe,
                    build,
                    kind: *kind,
                    probe_keys: on.iter().map(|(l, _)| l.clone()).collect(),
                    build_keys: on.iter().map(|(_, r)| r.clone()).collect(),
                    filter: filter.clone(),
                    null_aware: *null_aware,
                    keep_build: false,
                    dictionary: vec![],
                    schema: schema.clone(),
                    estimated_rows: estimate(plan),
                }
            }
        }
        LogicalPlan::Sort { input, keys, fetch } => {
            PhysicalPlan::Sort { input: Box::new(plan_physical(input)?), keys: keys.clone(), fetch: *fetch }
        }
        LogicalPlan::Limit { input, skip, fetch } => {
            PhysicalPlan::Limit { input: Box::new(plan_physical(input)?), skip: *skip, fetch: *fetch }
        }
        LogicalPlan::Union { inputs, schema } => PhysicalPlan::Union {
            inputs: inputs.iter().map(plan_physical).collect::<Result<_>>()?,
            schema: schema.clone(),
        },
    })
}

thread_local! {
    /// Set while EXPLAIN plans a query: only then are estimates of every scan and aggregate worth
    /// their measurements (an aggregate's estimate may sketch a whole key column).
    static EXPLAINING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (planning a query) with row estimates recorded on the physical plan, for EXPLAIN.
pub fn with_estimates<T>(f: impl FnOnce() -> T) -> T {
    EXPLAINING.with(|e| e.set(true));
    let out = f();
    EXPLAINING.with(|e| e.set(false));
    out
}

/// The optimizer's row estimate of a node, when EXPLAIN asks; none for streams without end.
fn estimate(plan: &LogicalPlan) -> Option<u64> {
    let wanted = EXPLAINING.with(|e| e.get()) && crate::join_order::orderable(plan);
    wanted.then(|| crate::stats::Estimator::default().rows(plan).round() as u64)
}

/// Whether an outer join should hash its left input rather than its right: when the left is
/// estimated smaller (a left join then runs as a right join the other way round, a right join as a
/// left join, a full join as a full join).
fn outer_swaps(left: &LogicalPlan, right: &LogicalPlan, kind: JoinKind) -> bool {
    if !matches!(kind, JoinKind::Left | JoinKind::Right | JoinKind::Full) {
        return false;
    }
    let estimator = crate::stats::Estimator::default();
    estimator.rows(left) < estimator.rows(right)
}

/// Whether a semi or anti join should hash its left input (the rows it keeps) rather than its right:
/// when the left is estimated smaller. NOT IN (null-aware) keeps the usual sides.
fn keeps_smaller_build(left: &LogicalPlan, right: &LogicalPlan, kind: JoinKind, null_aware: bool) -> bool {
    if !matches!(kind, JoinKind::Semi | JoinKind::Anti) || null_aware {
        return false;
    }
    let estimator = crate::stats::Estimator::default();
    estimator.rows(left) < estimator.rows(right)
}

/// Run as a stream, an inner join whose right input never ends cannot build a table of it first:
/// it becomes a stream join, an interval join when its condition bounds the two sides' times. With
/// `every_join`, inner joins of bounded inputs do too (as in Flink's streaming mode).
/// Run as a stream, a GROUP BY of SESSION windows on an input's event time, grouped by
/// `window_start`, `window_end` and every partition key of the sessions (as Flink requires), becomes a
/// `SessionAggregate`, which emits each session as the watermark passes its end, instead of sorting
/// the whole input and aggregating at its end.
pub fn plan_session_aggregates(plan: PhysicalPlan) -> PhysicalPlan {
    let mut plan = match plan {
        PhysicalPlan::HashAggregate { input, group, aggs, window_end, schema, estimated_rows } => {
            let aggregate = |input: PhysicalPlan, group, aggs, schema| PhysicalPlan::HashAggregate {
                input: Box::new(input),
                group,
                aggs,
                window_end,
                schema,
                estimated_rows,
            };
            match (session_columns(&input, &group, &aggs), *input) {
                (Some(columns), PhysicalPlan::SessionTvf { input: sorted, keys, time, gap, schema: tvf_schema }) => match *sorted {
                    PhysicalPlan::Sort { input: rows, .. } => {
                        PhysicalPlan::SessionAggregate { input: rows, keys, time, gap, group: columns, aggs, schema }
                    }
                    other => {
                        aggregate(PhysicalPlan::SessionTvf { input: Box::new(other), keys, time, gap, schema: tvf_schema }, group, aggs, schema)
                    }
                },
                (_, input) => aggregate(input, group, aggs, schema),
            }
        }
        other => other,
    };
    for input in plan.inputs_mut() {
        *input = plan_session_aggregates(input.take());
    }
    plan
}

/// What each group key over a window table function's output is: the window columns it appends to
/// rows `width` wide, or the key number `key` gives any other expression.
fn window_group_columns(group: &[Expr], width: usize, mut key: impl FnMut(&Expr) -> Option<usize>) -> Option<Vec<SessionColumn>> {
    group
        .iter()
        .map(|g| match g {
            Expr::Column(c) if *c == width => Some(SessionColumn::Start),
            Expr::Column(c) if *c == width + 1 => Some(SessionColumn::End),
            Expr::Column(c) if *c == width + 2 => Some(SessionColumn::Time),
            other => key(other).map(SessionColumn::Key),
        })
        .collect()
}

/// The group keys (positions in `group`) a window aggregate over `input` partitions its rows by: those
/// that are not window columns, when `input` is a window table function (none otherwise: its groups
/// are then merged across partitions when a window closes).
pub fn window_partition_keys(input: &PhysicalPlan, group: &[Expr]) -> Vec<usize> {
    let PhysicalPlan::WindowTvf { input: rows, .. } = input else { return vec![] };
    let width = rows.schema().fields().len();
    let columns = window_group_columns(group, width, |_| Some(0)).unwrap_or_default();
    columns.iter().enumerate().filter(|(_, c)| matches!(c, SessionColumn::Key(_))).map(|(k, _)| k).collect()
}

/// What each group key is, when `group` and `aggs` over `input` make a session window aggregate.
fn session_columns(input: &PhysicalPlan, group: &[Expr], aggs: &[AggCall]) -> Option<Vec<SessionColumn>> {
    let PhysicalPlan::SessionTvf { input: sorted, keys, time, .. } = input else { return None };
    let PhysicalPlan::Sort { input: rows, .. } = sorted.as_ref() else { return None };
    if rows.event_time_column() != Some(*time) || rows.changelog() {
        return None;
    }
    let width = rows.schema().fields().len();
    let columns = window_group_columns(group, width, |other| keys.iter().position(|k| k == other))?;
    let has = |c: SessionColumn| columns.contains(&c);
    let all_keys = (0..keys.len()).all(|k| has(SessionColumn::Key(k)));
    let mut used = vec![];
    for a in aggs {
        a.args.iter().for_each(|e| e.columns(&mut used));
    }
    (has(SessionColumn::Start) && has(SessionColumn::End) && all_keys && used.iter().all(|c| *c < width)).then_some(columns)
}

/// HOP windows a stream's window aggregate can aggregate by slices (`exec/window_aggregate.rs`):
/// `input` is HOP over `rows` with a size that is a multiple of the slide, and neither the keys nor
/// the aggregates read the window's columns other than as group keys. Returns `rows`, the group keys
/// that are not window columns (over `rows`), and what each group column is.
pub fn hop_slices<'a>(input: &'a PhysicalPlan, group: &[Expr], aggs: &[AggCall]) -> Option<(&'a PhysicalPlan, Vec<Expr>, Vec<SessionColumn>)> {
    let PhysicalPlan::WindowTvf { input: rows, window, .. } = input else { return None };
    if window.kind != crate::logical::WindowKind::Hop || window.step <= 0 || window.size <= window.step || window.size % window.step != 0 {
        return None;
    }
    let width = rows.schema().fields().len();
    let of_rows = |e: &Expr| {
        let mut used = vec![];
        e.columns(&mut used);
        used.iter().all(|c| *c < width)
    };
    let mut keys = vec![];
    let columns = window_group_columns(group, width, |key| {
        of_rows(key).then(|| {
            keys.push(key.clone());
            keys.len() - 1
        })
    })?;
    (aggs.iter().all(|a| a.args.iter().all(of_rows)) && columns.contains(&SessionColumn::End)).then_some((rows.as_ref(), keys, columns))
}

pub fn plan_stream_joins(plan: PhysicalPlan, every_join: bool) -> PhysicalPlan {
    let mut plan = match plan {
        // An outer join keeping the build side's rows emits those without match at its end: over a
        // probe side without end, only a stream join can.
        PhysicalPlan::HashJoin { ref probe, ref build, kind, keep_build: false, null_aware: false, .. }
            if stream_joinable(kind)
                && (build.unbounded() || every_join || (probe.unbounded() && matches!(kind, JoinKind::Right | JoinKind::Full))) =>
        {
            into_stream_join(plan)
        }
        other => other,
    };
    for input in plan.inputs_mut() {
        *input = plan_stream_joins(input.take(), every_join);
    }
    plan
}

/// The joins a stream join runs: inner and outer ones.
fn stream_joinable(kind: JoinKind) -> bool {
    matches!(kind, JoinKind::Inner | JoinKind::Left | JoinKind::Right | JoinKind::Full)
}

/// An inner or outer hash join as a stream join of the same inputs (anything else as it is).
pub fn into_stream_join(plan: PhysicalPlan) -> PhysicalPlan {
    let (probe, build, kind, probe_keys, build_keys, filter, schema) = match plan {
        PhysicalPlan::HashJoin { probe, build, kind, probe_keys, build_keys, filter, schema, keep_build: false, null_aware: false, .. }
            if stream_joinable(kind) =>
        {
            (probe, build, kind, probe_keys, build_keys, filter, schema)
        }
        other => return other,
    };
    // Only the inputs' event times bound what can still match: a future row's is at least
    // the watermark (a window_start is not: later windows may start before it).
    let interval = match (probe.event_time_column(), build.event_time_column()) {
        (Some(lt), Some(rt)) => {
            let width = probe.schema().fields().len();
            // Equal event times as a join key (windows joined by their ends) bound them too.
            let equal_times = probe_keys
                .iter()
                .zip(&build_keys)
                .any(|(l, r)| *l == Expr::Column(lt) && *r == Expr::Column(rt))
                .then_some(IntervalBounds { left_time: lt, right_time: rt, lo: 0, hi: 0 });
            filter.as_ref().and_then(|f| interval_bounds(f, width, lt, rt)).or(equal_times)
        }
        _ => None,
    };
    // Without a time bound, an outer join's rows without match leave at once and are taken back at
    // their first match: a changelog.
    let schema = if kind != JoinKind::Inner && interval.is_none() { crate::changelog::with_op(&schema) } else { schema };
    PhysicalPlan::StreamJoin { left: probe, right: build, kind, left_keys: probe_keys, right_keys: build_keys, filter, interval, schema }
}

/// The bounds on `l.left_time - r.right_time` that the conjuncts of `filter` (over left ++ right, the
/// left input `width` columns wide) set, if they set both a lower and an upper one.
fn interval_bounds(filter: &Expr, width: usize, left_time: usize, right_time: usize) -> Option<IntervalBounds> {
    use crate::logical::BinaryOp;
    // `column ± constant` as (column, offset in µs).
    let term = |e: &Expr| -> Option<(usize, i64)> {
        match e {
            Expr::Column(c) => Some((*c, 0)),
            Expr::Binary { op: BinaryOp::Add, left, right } => match (left.as_ref(), right.as_ref()) {
                (Expr::Column(c), k) | (k, Expr::Column(c)) => Some((*c, interval_micros(k)?)),
                _ => None,
            },
            Expr::Binary { op: BinaryOp::Sub, left, right } => match left.as_ref() {
                Expr::Column(c) => Some((*c, interval_micros(right)?.checked_neg()?)),
                _ => None,
            },
            _ => None,
        }
    };
    let (mut lo, mut hi) = (None::<i64>, None::<i64>);
    for c in filter.clone().conjuncts() {
        let Expr::Binary { op, left: a, right: b } = &c else { continue };
        let (Some((ca, oa)), Some((cb, ob))) = (term(a), term(b)) else { continue };
        // a.col + oa  op  b.col + ob  ⇔  a.col - b.col  op  ob - oa
        let (l, r, d, op) = match (ca < width, cb < width) {
            (true, false) => (ca, cb - width, ob.checked_sub(oa)?, *op),
            (false, true) => {
                let flipped = match op {
                    BinaryOp::Lt => BinaryOp::Gt,
                    BinaryOp::LtEq => BinaryOp::GtEq,
                    BinaryOp::Gt => BinaryOp::Lt,
                    BinaryOp::GtEq => BinaryOp::LtEq,
                    other => *other,
                };
                (cb, ca - width, oa.checked_sub(ob)?, flipped)
            }
            _ => continue,
        };
        if (l, r) != (left_time, right_time) {
            continue;
        }
        match op {
            BinaryOp::Gt | BinaryOp::GtEq => lo = Some(lo.map_or(d, |x| x.max(d))),
            BinaryOp::Lt | BinaryOp::LtEq => hi = Some(hi.map_or(d, |x| x.min(d))),
            BinaryOp::Eq => {
                lo = Some(d);
                hi = Some(d);
            }
            _ => continue,
        }
    }
    Some(IntervalBounds { left_time, right_time, lo: lo?, hi: hi? })
}

/// A constant interval of days and smaller units, in microseconds.
fn interval_micros(e: &Expr) -> Option<i64> {
    let Expr::Literal(s) = e else { return None };
    let v = s.0.as_any().downcast_ref::<arrow::array::IntervalMonthDayNanoArray>()?;
    if v.is_null(0) {
        return None;
    }
    let i = v.value(0);
    if i.months != 0 {
        return None;
    }
    (i.days as i64).checked_mul(86_400_000_000)?.checked_add(i.nanoseconds / 1000)
}
