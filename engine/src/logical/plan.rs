//! The logical plan: what to compute, bound and typed, before any choice of algorithm.

use std::fmt::{self, Write};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::expr::Expr;
use crate::catalog::TableSource;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    /// Variance and standard deviation, of a sample (divided by n - 1) or of the population (by n).
    VarSamp,
    VarPop,
    StddevSamp,
    StddevPop,
    /// `any_value(x)`: one of a group's values, the first non-NULL one met (DuckDB's). The
    /// optimizer also carries keys that depend on other keys through it (`dependent_keys`).
    AnyValue,
    /// `grouping(key, …)`: per key a bit (the first key highest), set in the rows of a grouping set
    /// without that key. Never computed by an accumulator: planning turns it into a constant per
    /// grouping set (`sql::grouping_sets`).
    Grouping,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::CountStar | AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Avg => "avg",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::VarSamp => "var_samp",
            AggFunc::VarPop => "var_pop",
            AggFunc::StddevSamp => "stddev_samp",
            AggFunc::StddevPop => "stddev_pop",
            AggFunc::AnyValue => "any_value",
            AggFunc::Grouping => "grouping",
        }
    }
}

/// One aggregate of an `Aggregate` node.
#[derive(Debug, Clone, PartialEq)]
pub struct AggCall {
    pub func: AggFunc,
    pub args: Vec<Expr>,
    pub distinct: bool,
    /// The result type.
    pub ty: DataType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    Left,
    Right,
    Full,
    /// Left rows with at least one match.
    Semi,
    /// Left rows with no match.
    Anti,
    /// A left join where each left row may match at most one right row (a scalar subquery);
    /// a second match is an error.
    Single,
    /// Every left row plus a BOOLEAN `mark`: whether it has a match. With `null_aware` (from IN) the
    /// mark is NULL where SQL's IN is unknown: no match, a non-empty right side, and a NULL key on
    /// either side. EXISTS / IN that are not plain WHERE conjuncts (under OR, in SELECT) become these.
    Mark,
}

impl JoinKind {
    /// Whether the output has the right side's columns.
    pub fn keeps_right(self) -> bool {
        !matches!(self, JoinKind::Semi | JoinKind::Anti | JoinKind::Mark)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A window function (`… OVER (PARTITION BY … ORDER BY … frame)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowFunc {
    RowNumber,
    Rank,
    DenseRank,
    PercentRank,
    CumeDist,
    Ntile,
    Lag,
    Lead,
    FirstValue,
    LastValue,
    Aggregate(AggFunc),
}

impl WindowFunc {
    pub fn name(self) -> &'static str {
        match self {
            WindowFunc::RowNumber => "row_number",
            WindowFunc::Rank => "rank",
            WindowFunc::DenseRank => "dense_rank",
            WindowFunc::PercentRank => "percent_rank",
            WindowFunc::CumeDist => "cume_dist",
            WindowFunc::Ntile => "ntile",
            WindowFunc::Lag => "lag",
            WindowFunc::Lead => "lead",
            WindowFunc::FirstValue => "first_value",
            WindowFunc::LastValue => "last_value",
            WindowFunc::Aggregate(a) => a.name(),
        }
    }
}

/// One end of a window frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameBound {
    UnboundedPreceding,
    Preceding(u64),
    CurrentRow,
    Following(u64),
    UnboundedFollowing,
}

/// Which rows of its partition a window aggregate of a row covers. `rows`: the bounds count rows;
/// otherwise (RANGE) `CurrentRow` means the row's peers (equal ORDER BY keys) too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub rows: bool,
    pub start: FrameBound,
    pub end: FrameBound,
}

impl Frame {
    /// Whether this is a RANGE frame with an offset bound (`k PRECEDING` / `k FOLLOWING`).
    pub fn range_offsets(&self) -> bool {
        let offset = |b: FrameBound| matches!(b, FrameBound::Preceding(_) | FrameBound::Following(_));
        !self.rows && (offset(self.start) || offset(self.end))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowCall {
    pub func: WindowFunc,
    pub args: Vec<Expr>,
    pub partition_by: Vec<Expr>,
    pub order_by: Vec<SortKey>,
    pub frame: Frame,
    /// The result type.
    pub ty: DataType,
}

/// Which of Flink's window table functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble,
    Hop,
    Cumulate,
}

/// A window table function's windows; times in microseconds. Windows are aligned to `offset`
/// (0: the epoch), as in Flink: a TUMBLE window starts at `ts - (ts - offset) mod size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    pub size: i64,
    /// HOP's slide, CUMULATE's step; TUMBLE's size.
    pub step: i64,
    pub offset: i64,
}

/// `window_time` is the window's last millisecond, as Flink's (whose event times are TIMESTAMP(3)).
pub const WINDOW_TIME_BEFORE_END: i64 = 1_000;

impl WindowSpec {
    /// The most windows one row can fall in.
    pub fn max_windows(&self) -> usize {
        match self.kind {
            WindowKind::Tumble => 1,
            WindowKind::Hop | WindowKind::Cumulate => ((self.size + self.step - 1) / self.step).max(1) as usize,
        }
    }

    /// Calls `each(start, end)` for every window holding event time `ts`.
    pub fn windows(&self, ts: i64, each: &mut impl FnMut(i64, i64)) {
        // Start of the `unit`-aligned period holding `ts`.
        let align = |unit: i64| ts.saturating_sub(ts.saturating_sub(self.offset).rem_euclid(unit));
        match self.kind {
            WindowKind::Tumble => {
                let start = align(self.size);
                each(start, start.saturating_add(self.size));
            }
            WindowKind::Hop => {
                let mut start = align(self.step);
                while start.saturating_add(self.size) > ts {
                    each(start, start.saturating_add(self.size));
                    start = start.saturating_sub(self.step);
                }
            }
            WindowKind::Cumulate => {
                let start = align(self.size);
                let last = start.saturating_add(self.size);
                let mut end = start.saturating_add(self.step);
                while end <= last {
                    if end > ts {
                        each(start, end);
                    }
                    end = end.saturating_add(self.step);
                }
            }
        }
    }

    /// `TUMBLE(size=…)` for EXPLAIN.
    pub fn describe(&self, time_column: &str) -> String {
        let d = |us: i64| crate::format::duration(us);
        let offset = if self.offset != 0 { format!(", offset={}", d(self.offset)) } else { String::new() };
        match self.kind {
            WindowKind::Tumble => format!("TUMBLE({time_column}, size={}{offset})", d(self.size)),
            WindowKind::Hop => format!("HOP({time_column}, slide={}, size={}{offset})", d(self.step), d(self.size)),
            WindowKind::Cumulate => format!("CUMULATE({time_column}, step={}, size={}{offset})", d(self.step), d(self.size)),
        }
    }
}

/// A window table function's output: its input's columns, then `window_start`, `window_end`,
/// `window_time`.
pub fn window_schema(input: &Schema) -> SchemaRef {
    let ts = DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None);
    let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
    for name in ["window_start", "window_end", "window_time"] {
        fields.push(Field::new(name, ts.clone(), false));
    }
    Arc::new(Schema::new(fields))
}

#[derive(Debug, Clone)]
pub enum LogicalPlan {
    /// Reads columns `projection` of a table, keeping rows where every filter holds. Filters use
    /// positions in the projected schema.
    Scan { name: String, source: Arc<TableSource>, projection: Vec<usize>, filters: Vec<Expr>, schema: SchemaRef },
    /// Literal rows.
    Values { rows: Vec<Vec<Expr>>, schema: SchemaRef },
    Filter { input: Box<LogicalPlan>, predicate: Expr },
    Project { input: Box<LogicalPlan>, exprs: Vec<Expr>, schema: SchemaRef },
    /// Output: the group keys, then the aggregates.
    Aggregate { input: Box<LogicalPlan>, group: Vec<Expr>, aggs: Vec<AggCall>, schema: SchemaRef },
    /// `on`: pairs (left expr, right expr) that must be equal (NULLs never match). `filter` is over the
    /// concatenated schema left ++ right. `null_aware` (anti joins from NOT IN): a NULL on either side
    /// makes the membership test unknown, so the row is not returned.
    Join {
        left: Box<LogicalPlan>,
        right: Box<LogicalPlan>,
        kind: JoinKind,
        on: Vec<(Expr, Expr)>,
        filter: Option<Expr>,
        null_aware: bool,
        schema: SchemaRef,
    },
    /// `fetch`: only the first rows are wanted (top-k).
    Sort { input: Box<LogicalPlan>, keys: Vec<SortKey>, fetch: Option<usize> },
    Limit { input: Box<LogicalPlan>, skip: usize, fetch: Option<usize> },
    /// UNION ALL.
    Union { inputs: Vec<LogicalPlan>, schema: SchemaRef },
    /// Every input row once per window of `window` its column `time` falls in, with the window's
    /// bounds appended (`window_schema`). Rows whose time is NULL fall in no window. `event_time`:
    /// `time` is its input's event time, so watermarks tell when a window is complete.
    WindowTvf { input: Box<LogicalPlan>, window: WindowSpec, time: usize, event_time: bool, schema: SchemaRef },
    /// The input's columns, then each window function's value for the row.
    Window { input: Box<LogicalPlan>, calls: Vec<WindowCall>, schema: SchemaRef },
    /// Flink's SESSION window table function: per `keys`, rows whose times are less than `gap`
    /// (microseconds) apart form a session; each row gets its session's bounds (`window_schema`).
    SessionTvf { input: Box<LogicalPlan>, keys: Vec<Expr>, time: usize, gap: i64, schema: SchemaRef },
}

/// `rank() OVER (PARTITION BY a ORDER BY b DESC), …` for EXPLAIN.
pub fn describe_window_calls(calls: &[WindowCall], schema: &Schema) -> String {
    let list = |exprs: &[Expr]| exprs.iter().map(|e| e.display(schema).to_string()).collect::<Vec<_>>().join(", ");
    calls
        .iter()
        .map(|c| format!("{}({}) OVER ({})", c.func.name(), list(&c.args), describe_over(&c.partition_by, &c.order_by, schema)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `PARTITION BY … ORDER BY …` of a window, for EXPLAIN.
pub fn describe_over(partition_by: &[Expr], order_by: &[SortKey], schema: &Schema) -> String {
    let mut over = Vec::new();
    if !partition_by.is_empty() {
        let keys: Vec<String> = partition_by.iter().map(|e| e.display(schema).to_string()).collect();
        over.push(format!("PARTITION BY {}", keys.join(", ")));
    }
    if !order_by.is_empty() {
        let keys: Vec<String> = order_by.iter().map(|k| format!("{}{}", k.expr.display(schema), if k.descending { " DESC" } else { "" })).collect();
        over.push(format!("ORDER BY {}", keys.join(", ")));
    }
    over.join(" ")
}

/// `SESSION(ts, gap=5min, keys=[item])` for EXPLAIN.
pub fn describe_session(keys: &[Expr], time: usize, gap: i64, schema: &Schema) -> String {
    let keys: Vec<String> = keys.iter().map(|k| k.display(schema).to_string()).collect();
    format!("SESSION({}, gap={}, keys=[{}])", schema.field(time).name(), crate::format::duration(gap), keys.join(", "))
}

/// A join without equi-join keys (its condition, if any, in `filter`), with its schema.
pub fn join(left: LogicalPlan, right: LogicalPlan, kind: JoinKind, filter: Option<Expr>) -> LogicalPlan {
    join_on(left, right, kind, vec![], filter)
}

/// A join on equi-join keys `on` (each over its side's columns) and `filter`, with its schema.
pub fn join_on(left: LogicalPlan, right: LogicalPlan, kind: JoinKind, on: Vec<(Expr, Expr)>, filter: Option<Expr>) -> LogicalPlan {
    let schema = join_schema(&left.schema(), &right.schema(), kind);
    LogicalPlan::Join { left: Box::new(left), right: Box::new(right), kind, on, filter, null_aware: false, schema }
}

/// The schema of a join's output.
pub fn join_schema(left: &Schema, right: &Schema, kind: JoinKind) -> SchemaRef {
    let nullable_left = matches!(kind, JoinKind::Right | JoinKind::Full);
    let nullable_right = matches!(kind, JoinKind::Left | JoinKind::Full | JoinKind::Single);
    let mut fields: Vec<Field> =
        left.fields().iter().map(|f| f.as_ref().clone().with_nullable(f.is_nullable() || nullable_left)).collect();
    if kind.keeps_right() {
        fields.extend(right.fields().iter().map(|f| f.as_ref().clone().with_nullable(f.is_nullable() || nullable_right)));
    }
    if kind == JoinKind::Mark {
        fields.push(Field::new("mark", DataType::Boolean, true));
    }
    Arc::new(Schema::new(fields))
}

impl LogicalPlan {
    pub fn schema(&self) -> SchemaRef {
        match self {
            LogicalPlan::Scan { schema, .. }
            | LogicalPlan::Values { schema, .. }
            | LogicalPlan::Project { schema, .. }
            | LogicalPlan::Aggregate { schema, .. }
            | LogicalPlan::Join { schema, .. }
            | LogicalPlan::Union { schema, .. }
            | LogicalPlan::WindowTvf { schema, .. }
            | LogicalPlan::Window { schema, .. }
            | LogicalPlan::SessionTvf { schema, .. } => schema.clone(),
            LogicalPlan::Filter { input, .. } | LogicalPlan::Sort { input, .. } | LogicalPlan::Limit { input, .. } => {
                input.schema()
            }
        }
    }

    pub fn inputs(&self) -> Vec<&LogicalPlan> {
        match self {
            LogicalPlan::Scan { .. } | LogicalPlan::Values { .. } => vec![],
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Project { input, .. }
            | LogicalPlan::Aggregate { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::WindowTvf { input, .. }
            | LogicalPlan::Window { input, .. }
            | LogicalPlan::SessionTvf { input, .. } => vec![input],
            LogicalPlan::Join { left, right, .. } => vec![left, right],
            LogicalPlan::Union { inputs, .. } => inputs.iter().collect(),
        }
    }

    pub fn inputs_mut(&mut self) -> Vec<&mut LogicalPlan> {
        match self {
            LogicalPlan::Scan { .. } | LogicalPlan::Values { .. } => vec![],
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Project { input, .. }
            | LogicalPlan::Aggregate { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::WindowTvf { input, .. }
            | LogicalPlan::Window { input, .. }
            | LogicalPlan::SessionTvf { input, .. } => vec![input],
            LogicalPlan::Join { left, right, .. } => vec![left, right],
            LogicalPlan::Union { inputs, .. } => inputs.iter_mut().collect(),
        }
    }

    /// An indented, one-node-per-line rendering for EXPLAIN.
    pub fn display_indent(&self) -> String {
        let mut out = String::new();
        self.fmt_indent(&mut out, 0);
        out
    }

    fn fmt_indent(&self, out: &mut String, depth: usize) {
        let pad = "  ".repeat(depth);
        let _ = writeln!(out, "{pad}{}", self.describe());
        for input in self.inputs() {
            input.fmt_indent(out, depth + 1);
        }
    }

    /// One line describing this node (not its inputs).
    pub fn describe(&self) -> String {
        let list = |exprs: &[Expr], schema: &Schema| {
            exprs.iter().map(|e| e.display(schema).to_string()).collect::<Vec<_>>().join(", ")
        };
        match self {
            LogicalPlan::Scan { name, projection, filters, schema, source } => {
                let cols: Vec<&str> = projection.iter().map(|i| source.schema.field(*i).name().as_str()).collect();
                let mut s = format!("Scan: {name} [{}]", cols.join(", "));
                if !filters.is_empty() {
                    s.push_str(&format!(" filters=[{}]", list(filters, schema)));
                }
                s
            }
            LogicalPlan::Values { rows, .. } => format!("Values: {} rows", rows.len()),
            LogicalPlan::Filter { input, predicate } => format!("Filter: {}", predicate.display(&input.schema())),
            LogicalPlan::Project { input, exprs, schema } => {
                let items: Vec<String> = exprs
                    .iter()
                    .zip(schema.fields())
                    .map(|(e, f)| {
                        let text = e.display(&input.schema()).to_string();
                        if &text == f.name() { text } else { format!("{text} AS {}", f.name()) }
                    })
                    .collect();
                format!("Project: {}", items.join(", "))
            }
            LogicalPlan::Aggregate { input, group, aggs, .. } => {
                let schema = input.schema();
                let aggs: Vec<String> = aggs
                    .iter()
                    .map(|a| {
                        let args = if a.func == AggFunc::CountStar { "*".to_string() } else { list(&a.args, &schema) };
                        format!("{}({}{args})", a.func.name(), if a.distinct { "DISTINCT " } else { "" })
                    })
                    .collect();
                format!("Aggregate: group=[{}] aggs=[{}]", list(group, &schema), aggs.join(", "))
            }
            LogicalPlan::Join { left, right, kind, on, filter, null_aware, .. } => {
                let (ls, rs) = (left.schema(), right.schema());
                let keys: Vec<String> =
                    on.iter().map(|(l, r)| format!("{} = {}", l.display(&ls), r.display(&rs))).collect();
                let mut s = format!("Join: {kind:?}{}", if *null_aware { " (null-aware)" } else { "" });
                if !keys.is_empty() {
                    s.push_str(&format!(" on=[{}]", keys.join(", ")));
                }
                if let Some(f) = filter {
                    let both = join_schema(&ls, &rs, JoinKind::Inner);
                    s.push_str(&format!(" filter={}", f.display(&both)));
                }
                s
            }
            LogicalPlan::Sort { input, keys, fetch } => {
                let schema = input.schema();
                let keys: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{} {} NULLS {}",
                            k.expr.display(&schema),
                            if k.descending { "DESC" } else { "ASC" },
                            if k.nulls_first { "FIRST" } else { "LAST" }
                        )
                    })
                    .collect();
                match fetch {
                    Some(n) => format!("TopK: {} fetch={n}", keys.join(", ")),
                    None => format!("Sort: {}", keys.join(", ")),
                }
            }
            LogicalPlan::Limit { skip, fetch, .. } => match fetch {
                Some(n) => format!("Limit: skip={skip} fetch={n}"),
                None => format!("Limit: skip={skip}"),
            },
            LogicalPlan::Union { inputs, .. } => format!("Union: {} inputs", inputs.len()),
            LogicalPlan::WindowTvf { input, window, time, event_time, .. } => {
                let s = format!("WindowTvf: {}", window.describe(input.schema().field(*time).name()));
                if *event_time { s + " event_time" } else { s }
            }
            LogicalPlan::Window { input, calls, .. } => format!("Window: {}", describe_window_calls(calls, &input.schema())),
            LogicalPlan::SessionTvf { input, keys, time, gap, .. } => {
                format!("SessionTvf: {}", describe_session(keys, *time, *gap, &input.schema()))
            }
        }
    }

    /// The position of the event-time column among the output columns, if the plan keeps one: a
    /// table's `WATERMARK FOR` column, through filters, projections of it and window functions.
    pub fn event_time_column(&self) -> Option<usize> {
        match self {
            LogicalPlan::Scan { source, projection, .. } => {
                let column = source.event_time.as_ref()?.column;
                projection.iter().position(|p| *p == column)
            }
            LogicalPlan::Filter { input, .. }
            | LogicalPlan::Sort { input, .. }
            | LogicalPlan::Limit { input, .. }
            | LogicalPlan::WindowTvf { input, .. } => input.event_time_column(),
            LogicalPlan::Project { input, exprs, .. } => {
                let c = input.event_time_column()?;
                exprs.iter().position(|e| *e == Expr::Column(c))
            }
            // Joined rows keep the left row's time (an interval join holds its watermark back so they
            // are not late; a hash join's probe side streams in order); so do a left join's.
            LogicalPlan::Join { left, kind: JoinKind::Inner | JoinKind::Left, .. } => left.event_time_column(),
            LogicalPlan::Union { inputs, .. } => same_column(inputs.iter().map(|i| i.event_time_column())),
            _ => None,
        }
    }
}

/// The column every input of a union has its event time in (the union's watermark is the minimum
/// of theirs, so its rows keep that time), if they agree.
pub fn same_column(mut columns: impl Iterator<Item = Option<usize>>) -> Option<usize> {
    let first = columns.next()??;
    columns.all(|c| c == Some(first)).then_some(first)
}

impl fmt::Display for LogicalPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_indent())
    }
}
