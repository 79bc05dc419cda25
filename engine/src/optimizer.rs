//! Rule-based rewrites of the logical plan, applied in order:
//! 1. constant folding and predicate simplification;
//! 2. filter pushdown (through projections, joins, aggregates, unions, sorts) into scans, with
//!    equi-join key extraction from join conditions;
//!    then each region of inner joins is reordered by estimated cost (`join_order`);
//! 3. projection pushdown: every node keeps only the columns someone above reads, down to the scans;
//! 4. limit pushdown: ORDER BY … LIMIT becomes a top-k sort.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::{Field, Schema, SchemaRef};

use crate::error::Result;
use crate::eval::evaluate;
use crate::join_order::bounded;
use crate::logical::{join_on, join_schema, AggFunc, BinaryOp, Expr, JoinKind, LogicalPlan, Scalar, SortKey};

pub fn optimize(plan: LogicalPlan) -> Result<LogicalPlan> {
    let plan = fold_plan(plan)?;
    let plan = crate::scalar_aggregates::merge(plan);
    let plan = map_plan(plan, &mut |p| Ok(split_distinct(p)))?;
    let plan = push_filters(plan)?;
    // Pushed-down predicates meet the constants of the projections they passed through
    // (`sale_type = 's'` over a CTE branch that sets sale_type to 'w'): fold again.
    let plan = fold_plan(plan)?;
    let mut plan = map_plan(plan, &mut |p| Ok(lift_left_join(p)))?;
    crate::join_order::reorder_joins(&mut plan);
    let plan = crate::eager_aggregate::push_aggregates(plan)?;
    let plan = crate::dependent_keys::carry_dependent_keys(plan)?;
    let schema = plan.schema();
    let all: BTreeSet<usize> = (0..schema.fields().len()).collect();
    // Tables read more than once keep their filters' columns in their scans' output: copies of a
    // subplan that differ in those filters merge only if the filters can go on top of the copies
    // (`crate::filtered_copies`; TPC-DS q88's eight time ranges over one join).
    let mut reads: HashMap<String, usize> = HashMap::new();
    count_reads(&plan, &mut reads);
    let reread: HashSet<String> = reads.into_iter().filter(|(_, n)| *n > 1).map(|(t, _)| t).collect();
    let (plan, map) = prune(plan, &all, &reread)?;
    let plan = restore(plan, &map, &schema);
    push_limits(plan)
}

/// A bounded input's `count`, `sum` or `avg(DISTINCT x)` in two aggregates
/// (`partial_agg::distinct_in_two_steps`).
/// A stream's aggregate keeps its sets: it updates each group as rows come.
fn split_distinct(plan: LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Aggregate { input, group, aggs, schema } => {
            let split = bounded(&input).then(|| crate::partial_agg::distinct_in_two_steps(&input, &group, &aggs, &schema)).flatten();
            split.unwrap_or(LogicalPlan::Aggregate { input, group, aggs, schema })
        }
        other => other,
    }
}

/// `(A LEFT JOIN B) JOIN C` with a condition on A and C only is `(A JOIN C) LEFT JOIN B` (and so
/// with C on the left): each row of A meets the same rows of C, then the same rows of B. Lifted, the
/// inner joins of A are ordered together and may shrink A (TPC-DS q40's and q80's sales joined with
/// a few weeks of dates) before the outer join hashes one side: the smaller one, which is then often
/// A's. Bounded inputs only (a stream's outer join emits and retracts in its own order).
fn lift_left_join(plan: LogicalPlan) -> LogicalPlan {
    let LogicalPlan::Join { left, right, kind: JoinKind::Inner, on, filter, null_aware: false, schema } = plan else { return plan };
    // A join lifted below puts its columns back in order with a projection: the projection goes
    // above this join too, so that the outer join can keep rising.
    let left = match *left {
        LogicalPlan::Project { input, exprs, schema: project_schema } => {
            let columns: Option<Vec<usize>> = exprs.iter().map(|e| if let Expr::Column(c) = e { Some(*c) } else { None }).collect();
            match columns {
                Some(columns) if matches!(input.as_ref(), LogicalPlan::Join { kind: JoinKind::Left, .. }) => {
                    let (np, ni, nr) = (columns.len(), input.schema().fields().len(), right.schema().fields().len());
                    let through = |c: usize| if c < np { columns[c] } else { c - np + ni };
                    let on = on.into_iter().map(|(l, r)| (l.remap(&|c| columns[c]), r)).collect();
                    let joined = lift_left_join(join_on(*input, *right, JoinKind::Inner, on, filter.map(|f| f.remap(&through))));
                    let exprs: Vec<Expr> = (0..np + nr).map(|c| Expr::Column(through(c))).collect();
                    // One projection, not one per join the outer join rose through.
                    return match joined {
                        LogicalPlan::Project { input, exprs: inner, .. } if inner.iter().all(|e| matches!(e, Expr::Column(_))) => {
                            let exprs = exprs.iter().map(|e| e.clone().remap(&|c| if let Expr::Column(i) = &inner[c] { *i } else { c })).collect();
                            LogicalPlan::Project { input, exprs, schema }
                        }
                        joined => LogicalPlan::Project { input: Box::new(joined), exprs, schema },
                    };
                }
                _ => Box::new(LogicalPlan::Project { input, exprs, schema: project_schema }),
            }
        }
        other => Box::new(other),
    };
    let lifts = |outer: &LogicalPlan, other: &LogicalPlan, outer_first: bool| -> bool {
        let LogicalPlan::Join { left: a, kind: JoinKind::Left, null_aware: false, .. } = outer else { return false };
        let (na, nc) = (a.schema().fields().len(), other.schema().fields().len());
        // The columns of B in the inner join's output, which its condition must not read.
        let b_start = if outer_first { na } else { nc + na };
        let b_end = b_start + outer.schema().fields().len() - na;
        let outer_keys_in_a = on.iter().all(|(l, r)| {
            let key = if outer_first { l } else { r };
            key.column_set().iter().all(|c| *c < na)
        });
        let filter_avoids_b = filter.as_ref().is_none_or(|f| f.column_set().iter().all(|c| *c < b_start || *c >= b_end));
        outer_keys_in_a && filter_avoids_b && crate::join_order::bounded(outer) && crate::join_order::bounded(other)
    };
    if lifts(&left, &right, true) {
        let LogicalPlan::Join { left: a, right: b, on: on_ab, filter: filter_ab, .. } = *left else { unreachable!() };
        let (na, nb, nc) = (a.schema().fields().len(), b.schema().fields().len(), right.schema().fields().len());
        // [A, B, C] -> [A, C] for the inner join's filter, [A, B] -> [A, C, B] for the outer one's.
        let filter_ac = filter.map(|f| f.remap(&|c| if c < na { c } else { c - nb }));
        let ac = lift_left_join(join_on(*a, *right, JoinKind::Inner, on, filter_ac));
        let filter_acb = filter_ab.map(|f| f.remap(&|c| if c < na { c } else { c + nc }));
        let lifted = join_on(ac, *b, JoinKind::Left, on_ab, filter_acb);
        // Back to [A, B, C].
        let exprs = (0..na + nb + nc).map(|c| Expr::Column(if c < na { c } else if c < na + nb { c + nc } else { c - nb })).collect();
        return LogicalPlan::Project { input: Box::new(lifted), exprs, schema };
    }
    if lifts(&right, &left, false) {
        let LogicalPlan::Join { left: a, right: b, on: on_ab, filter: filter_ab, .. } = *right else { unreachable!() };
        let nc = left.schema().fields().len();
        // [C, A, B] keeps its order: C's and A's columns where they were.
        let ca = lift_left_join(join_on(*left, *a, JoinKind::Inner, on, filter));
        let on_cab = on_ab.into_iter().map(|(l, r)| (l.remap(&|c| c + nc), r)).collect();
        return join_on(ca, *b, JoinKind::Left, on_cab, filter_ab.map(|f| f.remap(&|c| c + nc)));
    }
    LogicalPlan::Join { left, right, kind: JoinKind::Inner, on, filter, null_aware: false, schema }
}

// ---------------------------------------------------------------------------------------------
// 1. Constant folding

/// Folds every expression, and replaces relations that can have no rows by empty `Values`, bottom
/// up, so that a branch of a bounded query that keeps nothing is never read.
fn fold_plan(plan: LogicalPlan) -> Result<LogicalPlan> {
    map_plan(plan, &mut |p| {
        if let Some(schema) = empty_result(&p) {
            return Ok(LogicalPlan::Values { rows: vec![], schema });
        }
        Ok(match p {
            LogicalPlan::Scan { name, source, projection, filters, schema } => {
                let filters: Vec<Expr> = filters.into_iter().map(fold).collect::<Result<Vec<_>>>()?;
                // An unbounded table keeps being read even if nothing passes (the job runs until
                // cancelled, as Flink's does).
                if filters.iter().any(never_true) && !source.unbounded() {
                    return Ok(LogicalPlan::Values { rows: vec![], schema });
                }
                let filters = filters.into_iter().filter(|f| !is_true(f)).collect();
                LogicalPlan::Scan { name, source, projection, filters, schema }
            }
            LogicalPlan::Union { inputs, schema } => {
                LogicalPlan::Union { inputs: inputs.into_iter().filter(|i| !is_empty(i)).collect(), schema }
            }
            LogicalPlan::Filter { input, predicate } => {
                let predicate = fold(predicate)?;
                match predicate.clone() {
                    Expr::Literal(s) if s.as_bool() == Some(true) => *input,
                    _ => LogicalPlan::Filter { input, predicate },
                }
            }
            LogicalPlan::Project { input, exprs, schema } => LogicalPlan::Project {
                input,
                exprs: exprs.into_iter().map(fold).collect::<Result<_>>()?,
                schema,
            },
            LogicalPlan::Join { left, right, kind, on, filter, null_aware, schema } => LogicalPlan::Join {
                left,
                right,
                kind,
                on,
                filter: filter.map(fold).transpose()?.filter(|f| !is_true(f)),
                null_aware,
                schema,
            },
            other => other,
        })
    })
}

fn is_true(e: &Expr) -> bool {
    matches!(e, Expr::Literal(s) if s.as_bool() == Some(true))
}

/// A condition no row meets: FALSE or NULL.
fn never_true(e: &Expr) -> bool {
    matches!(e, Expr::Literal(s) if s.as_bool() != Some(true) && (s.0.is_null(0) || s.as_bool() == Some(false)))
}

fn is_empty(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Values { rows, .. } if rows.is_empty())
}

/// The schema of `plan` if its inputs (already simplified) show it has no rows. A union keeps its
/// non-empty inputs; a global aggregate always has a row.
fn empty_result(plan: &LogicalPlan) -> Option<SchemaRef> {
    let empty = match plan {
        LogicalPlan::Filter { input, predicate } => is_empty(input) || (never_true(predicate) && bounded(input)),
        LogicalPlan::Limit { fetch: Some(0), input, .. } => is_empty(input) || bounded(input),
        LogicalPlan::Project { input, .. }
        | LogicalPlan::Sort { input, .. }
        | LogicalPlan::Limit { input, .. }
        | LogicalPlan::Window { input, .. }
        | LogicalPlan::WindowTvf { input, .. }
        | LogicalPlan::SessionTvf { input, .. } => is_empty(input),
        LogicalPlan::Aggregate { input, group, .. } => !group.is_empty() && is_empty(input),
        LogicalPlan::Union { inputs, .. } => inputs.iter().all(is_empty),
        LogicalPlan::Join { left, right, kind, .. } => match kind {
            JoinKind::Inner | JoinKind::Semi => is_empty(left) || is_empty(right),
            JoinKind::Left | JoinKind::Anti | JoinKind::Single | JoinKind::Mark => is_empty(left),
            JoinKind::Right => is_empty(right),
            JoinKind::Full => is_empty(left) && is_empty(right),
        },
        LogicalPlan::Scan { .. } | LogicalPlan::Values { .. } => false,
    };
    empty.then(|| plan.schema())
}

/// Evaluates constant subexpressions and simplifies boolean logic.
pub fn fold(e: Expr) -> Result<Expr> {
    let e = e.map_children(&mut fold)?;
    let constant = !matches!(e, Expr::Literal(_) | Expr::Column(_))
        && e.children().iter().all(|c| matches!(c, Expr::Literal(_)))
        && !e.is_volatile();
    if constant {
        let one = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        // An error (e.g. a bad cast) is left for run time, where it is reported if the row is reached.
        if let Ok(v) = evaluate(&e, &one) {
            return Ok(Expr::Literal(Scalar(v)));
        }
    }
    Ok(match e {
        Expr::Binary { op: BinaryOp::And, left, right } => {
            if is_true(&left) {
                *right
            } else if is_true(&right) {
                *left
            } else if matches!(left.as_ref(), Expr::Literal(s) if s.as_bool() == Some(false))
                || matches!(right.as_ref(), Expr::Literal(s) if s.as_bool() == Some(false))
            {
                Expr::Literal(Scalar::boolean(false))
            } else {
                Expr::Binary { op: BinaryOp::And, left, right }
            }
        }
        Expr::Binary { op: BinaryOp::Or, left, right } => {
            if is_true(&left) || is_true(&right) {
                Expr::Literal(Scalar::boolean(true))
            } else if matches!(left.as_ref(), Expr::Literal(s) if s.as_bool() == Some(false)) {
                *right
            } else if matches!(right.as_ref(), Expr::Literal(s) if s.as_bool() == Some(false)) {
                *left
            } else {
                Expr::Binary { op: BinaryOp::Or, left, right }
            }
        }
        Expr::Not(inner) => match *inner {
            Expr::Not(x) if matches!(x.as_ref(), Expr::Binary { op, .. } if op.is_comparison()) => *x,
            other => Expr::Not(Box::new(other)),
        },
        other => other,
    })
}

/// Rebuilds a plan bottom-up with `f` applied to every node.
pub(crate) fn map_plan(plan: LogicalPlan, f: &mut dyn FnMut(LogicalPlan) -> Result<LogicalPlan>) -> Result<LogicalPlan> {
    let plan = match plan {
        LogicalPlan::Filter { input, predicate } => LogicalPlan::Filter { input: Box::new(map_plan(*input, f)?), predicate },
        LogicalPlan::Project { input, exprs, schema } => {
            LogicalPlan::Project { input: Box::new(map_plan(*input, f)?), exprs, schema }
        }
        LogicalPlan::Aggregate { input, group, aggs, schema } => {
            LogicalPlan::Aggregate { input: Box::new(map_plan(*input, f)?), group, aggs, schema }
        }
        LogicalPlan::Join { left, right, kind, on, filter, null_aware, schema } => LogicalPlan::Join {
            left: Box::new(map_plan(*left, f)?),
            right: Box::new(map_plan(*right, f)?),
            kind,
            on,
            filter,
            null_aware,
            schema,
        },
        LogicalPlan::Sort { input, keys, fetch } => LogicalPlan::Sort { input: Box::new(map_plan(*input, f)?), keys, fetch },
        LogicalPlan::Limit { input, skip, fetch } => LogicalPlan::Limit { input: Box::new(map_plan(*input, f)?), skip, fetch },
        LogicalPlan::Union { inputs, schema } => {
            LogicalPlan::Union { inputs: inputs.into_iter().map(|i| map_plan(i, f)).collect::<Result<_>>()?, schema }
        }
        LogicalPlan::WindowTvf { input, window, time, event_time, schema } => {
            LogicalPlan::WindowTvf { input: Box::new(map_plan(*input, f)?), window, time, event_time, schema }
        }
        LogicalPlan::Window { input, calls, schema } => LogicalPlan::Window { input: Box::new(map_plan(*input, f)?), calls, schema },
        LogicalPlan::SessionTvf { input, keys, time, gap, schema } => {
            LogicalPlan::SessionTvf { input: Box::new(map_plan(*input, f)?), keys, time, gap, schema }
        }
        leaf @ (LogicalPlan::Scan { .. } | LogicalPlan::Values { .. }) => leaf,
    };
    f(plan)
}

// ---------------------------------------------------------------------------------------------
// 2. Filter pushdown and join keys

fn push_filters(plan: LogicalPlan) -> Result<LogicalPlan> {
    push_down(plan, vec![])
}

/// Splits a predicate into conjuncts, pulling out conjuncts that every branch of an OR repeats:
/// `(a AND b) OR (a AND c)` is `a AND (b OR c)`, so that `a` (often a join key) can be pushed down.
fn split_conjuncts(p: Expr) -> Vec<Expr> {
    let mut out = Vec::new();
    for c in p.conjuncts() {
        match c {
            Expr::Binary { op: BinaryOp::Or, .. } => {
                let branches: Vec<Vec<Expr>> = disjuncts(c).into_iter().map(Expr::conjuncts).collect();
                let common: Vec<Expr> =
                    branches[0].iter().filter(|x| branches[1..].iter().all(|b| b.contains(x))).cloned().collect();
                let rest: Vec<Expr> = branches
                    .into_iter()
                    .map(|b| {
                        let left: Vec<Expr> = b.into_iter().filter(|x| !common.contains(x)).collect();
                        Expr::conjunction(left).unwrap_or(Expr::Literal(Scalar::boolean(true)))
                    })
                    .collect();
                out.extend(common);
                let any_true = rest.iter().any(is_true);
                if !any_true {
                    if let Some(or) = rest.into_iter().reduce(|a, b| Expr::binary(BinaryOp::Or, a, b)) {
                        out.push(or);
                    }
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// What a disjunction, as its branches' conjuncts, implies for the part of the row `own` accepts
/// conjuncts of: the OR of each branch's own conjuncts, when every branch has some.
pub(crate) fn implied_part(branches: &[Vec<Expr>], own: impl Fn(&Expr) -> bool) -> Option<Expr> {
    let parts: Option<Vec<Expr>> = branches.iter().map(|b| Expr::conjunction(b.iter().filter(|c| own(c)).cloned().collect())).collect();
    parts.and_then(|ps| ps.into_iter().reduce(|a, b| Expr::binary(BinaryOp::Or, a, b)))
}

pub(crate) fn disjuncts(e: Expr) -> Vec<Expr> {
    match e {
        Expr::Binary { op: BinaryOp::Or, left, right } => {
            let mut v = disjuncts(*left);
            v.extend(disjuncts(*right));
            v
        }
        other => vec![other],
    }
}

fn filter_over(plan: LogicalPlan, preds: Vec<Expr>) -> LogicalPlan {
    match Expr::conjunction(preds) {
        Some(p) => LogicalPlan::Filter { input: Box::new(plan), predicate: p },
        None => plan,
    }
}

/// Replaces each column of `e` by the expression that computes it below a projection.
pub(crate) fn substitute(e: Expr, exprs: &[Expr]) -> Expr {
    e.transform(&mut |x| match x {
        Expr::Column(i) => exprs[i].clone(),
        other => other,
    })
}

/// Pushes `preds` (conjuncts over `plan`'s output) as far down as they go.
fn push_down(plan: LogicalPlan, preds: Vec<Expr>) -> Result<LogicalPlan> {
    Ok(match plan {
        LogicalPlan::Filter { input, predicate } => {
            let mut all = preds;
            all.extend(split_conjuncts(predicate));
            push_down(*input, all)?
        }
        LogicalPlan::Scan { name, source, projection, mut filters, schema } => {
            filters.extend(preds.into_iter().filter(|p| !is_true(p)));
            LogicalPlan::Scan { name, source, projection, filters, schema }
        }
        LogicalPlan::Project { input, exprs, schema } => {
            let (down, keep): (Vec<_>, Vec<_>) = preds.into_iter().partition(|p| !p.is_volatile());
            let down = down.into_iter().map(|p| substitute(p, &exprs)).collect();
            filter_over(LogicalPlan::Project { input: Box::new(push_down(*input, down)?), exprs, schema }, keep)
        }
        LogicalPlan::Sort { input, keys, fetch: None } => {
            LogicalPlan::Sort { input: Box::new(push_down(*input, preds)?), keys, fetch: None }
        }
        LogicalPlan::Aggregate { input, group, aggs, schema } => {
            let ng = group.len();
            let (down, keep): (Vec<_>, Vec<_>) =
                preds.into_iter().partition(|p| p.column_set().iter().all(|c| *c < ng) && !p.is_volatile());
            let down = down.into_iter().map(|p| substitute(p, &group)).collect();
            filter_over(LogicalPlan::Aggregate { input: Box::new(push_down(*input, down)?), group, aggs, schema }, keep)
        }
        LogicalPlan::Union { inputs, schema } => {
            let inputs = inputs.into_iter().map(|i| push_down(i, preds.clone())).collect::<Result<_>>()?;
            LogicalPlan::Union { inputs, schema }
        }
        LogicalPlan::Join { left, right, kind, on, filter, null_aware, schema } => {
            push_join(*left, *right, kind, on, filter, null_aware, schema, preds)?
        }
        LogicalPlan::WindowTvf { input, window, time, event_time, schema } => {
            // Conditions on the input's columns hold for a row whatever its windows.
            let width = input.schema().fields().len();
            let (down, keep): (Vec<_>, Vec<_>) =
                preds.into_iter().partition(|p| p.column_set().iter().all(|c| *c < width) && !p.is_volatile());
            let plan = LogicalPlan::WindowTvf { input: Box::new(push_down(*input, down)?), window, time, event_time, schema };
            filter_over(plan, keep)
        }
        LogicalPlan::Window { input, calls, schema } => {
            // A filter changes the partitions a window function sees: it stays above.
            filter_over(LogicalPlan::Window { input: Box::new(push_down(*input, vec![])?), calls, schema }, preds)
        }
        LogicalPlan::SessionTvf { input, keys, time, gap, schema } => {
            // Likewise the sessions: a row taken out could have joined two.
            filter_over(LogicalPlan::SessionTvf { input: Box::new(push_down(*input, vec![])?), keys, time, gap, schema }, preds)
        }
        other => {
            // Limits, top-k, values: filters stay above; their inputs are optimized on their own.
            let other = match other {
                LogicalPlan::Limit { input, skip, fetch } => LogicalPlan::Limit { input: Box::new(push_down(*input, vec![])?), skip, fetch },
                LogicalPlan::Sort { input, keys, fetch } => LogicalPlan::Sort { input: Box::new(push_down(*input, vec![])?), keys, fetch },
                o => o,
            };
            filter_over(other, preds)
        }
    })
}

/// How many columns a join outputs, given its inputs' widths.
fn join_width(kind: JoinKind, nl: usize, nr: usize) -> usize {
    match kind {
        JoinKind::Mark => nl + 1,
        _ if kind.keeps_right() => nl + nr,
        _ => nl,
    }
}

#[allow(clippy::too_many_arguments)]
fn push_join(
    left: LogicalPlan,
    right: LogicalPlan,
    kind: JoinKind,
    mut on: Vec<(Expr, Expr)>,
    filter: Option<Expr>,
    null_aware: bool,
    schema: SchemaRef,
    preds: Vec<Expr>,
) -> Result<LogicalPlan> {
    let nl = left.schema().fields().len();
    let (right, kind) = as_inner_join(&left, right, kind, &on, filter.as_ref(), null_aware, &preds);
    let side = |e: &Expr| -> (bool, bool) {
        let cols = e.column_set();
        (cols.iter().any(|c| *c < nl), cols.iter().any(|c| *c >= nl))
    };
    let shift_down = |e: Expr| e.remap(&|i| i - nl);
    let (mut to_left, mut to_right, mut cond, mut above) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());

    // WHERE conjuncts above the join (over its output).
    for p in preds {
        if p.is_volatile() {
            above.push(p);
            continue;
        }
        let (l, r) = side(&p);
        match kind {
            JoinKind::Inner => match (l, r) {
                (_, false) => to_left.push(p),
                (false, true) => to_right.push(shift_down(p)),
                (true, true) => cond.push(p),
            },
            JoinKind::Semi | JoinKind::Anti | JoinKind::Left | JoinKind::Single | JoinKind::Mark if !r => to_left.push(p),
            JoinKind::Right if !l && r => to_right.push(shift_down(p)),
            _ => above.push(p),
        }
    }
    // ON conjuncts.
    for p in filter.map(split_conjuncts).unwrap_or_default() {
        let (l, r) = side(&p);
        let pushable_left = matches!(kind, JoinKind::Inner | JoinKind::Semi | JoinKind::Right);
        let pushable_right =
            matches!(kind, JoinKind::Inner | JoinKind::Semi | JoinKind::Anti | JoinKind::Left | JoinKind::Single | JoinKind::Mark);
        match (l, r) {
            (true, false) if pushable_left => to_left.push(p),
            (false, true) if pushable_right => to_right.push(shift_down(p)),
            (false, false) if kind == JoinKind::Inner => to_left.push(p),
            _ => cond.push(p),
        }
    }
    // A disjunction over both sides whose every branch also restricts one side alone implies, for
    // that side, the disjunction of those restrictions (TPC-H Q19: each branch's brand and size on
    // part, its quantity range on lineitem): the side is filtered before the join, the whole
    // condition still applies to the pairs.
    if kind == JoinKind::Inner {
        for p in &cond {
            if !matches!(p, Expr::Binary { op: BinaryOp::Or, .. }) {
                continue;
            }
            let branches: Vec<Vec<Expr>> = disjuncts(p.clone()).into_iter().map(Expr::conjuncts).collect();
            for left_side in [true, false] {
                let Some(implied) = implied_part(&branches, |c| side(c) == (left_side, !left_side)) else { continue };
                if left_side {
                    to_left.push(implied);
                } else {
                    to_right.push(shift_down(implied));
                }
            }
        }
    }
    // Equalities between the two sides become hash keys.
    let mut residual = Vec::new();
    for p in cond {
        match p {
            Expr::Binary { op: BinaryOp::Eq, left: a, right: b } => {
                let (al, ar) = side(&a);
                let (bl, br) = side(&b);
                if al && !ar && br && !bl {
                    on.push((*a, shift_down(*b)));
                } else if bl && !br && ar && !al {
                    on.push((*b, shift_down(*a)));
                } else {
                    residual.push(Expr::Binary { op: BinaryOp::Eq, left: a, right: b });
                }
            }
            other => residual.push(other),
        }
    }
    // A condition on one side's join keys holds for the other side's keys of every matching row:
    // it filters the other side too (TPC-DS q78's `ss_sold_year = 2000` thins the web and catalog
    // sales it is left-joined with by year), where dropping that side's rows that match nothing
    // kept leaves the answer as it is.
    // (Not where NULL keys count, as NOT IN's: a side left empty would change the answer.)
    let left_to_right =
        !null_aware && matches!(kind, JoinKind::Inner | JoinKind::Left | JoinKind::Semi | JoinKind::Anti | JoinKind::Single | JoinKind::Mark);
    let right_to_left = !null_aware && matches!(kind, JoinKind::Inner | JoinKind::Right | JoinKind::Semi);
    let (left_schema, right_schema) = (left.schema(), right.schema());
    let pairs: Vec<(usize, usize)> = on
        .iter()
        .filter_map(|pair| match pair {
            (Expr::Column(l), Expr::Column(r)) if same_values(left_schema.field(*l).data_type(), right_schema.field(*r).data_type()) => Some((*l, *r)),
            _ => None,
        })
        .collect();
    // An inner join's keys are never NULL in its output: a left join below whose right side gives a
    // key can run as an inner join (`as_inner_join`), told so by the key's `IS NOT NULL`.
    if kind == JoinKind::Inner {
        to_left.extend(not_null_keys(&left, on.iter().map(|(l, _)| l)));
        to_right.extend(not_null_keys(&right, on.iter().map(|(_, r)| r)));
    }
    let to_right_more = if left_to_right { transferred(&to_left, &pairs, false) } else { vec![] };
    let to_left_more = if right_to_left { transferred(&to_right, &pairs, true) } else { vec![] };
    to_right.extend(to_right_more);
    to_left.extend(to_left_more);
    let left = push_down(left, to_left)?;
    let right = push_down(right, to_right)?;
    let join = LogicalPlan::Join {
        left: Box::new(left),
        right: Box::new(right),
        kind,
        on,
        filter: Expr::conjunction(residual),
        null_aware,
        schema,
    };
    Ok(filter_over(join, above))
}

/// An outer join whose right side a condition above needs can run as an inner join, which then
/// belongs to the region of inner joins below it: the join orderer places it beside the relation the
/// condition reads, and the condition becomes a join key there (TPC-DS q06's
/// `d_month_seq = (SELECT DISTINCT d_month_seq …)` thins date_dim before it meets store_sales,
/// rather than filtering the joined rows at the top).
/// - A left join under a condition that is never true when the right side is NULL: its unmatched
///   rows would be dropped anyway.
/// - A keyless single join (an uncorrelated scalar subquery): a cross join with a single join of one
///   row with the subquery, which gives its one value (NULL if it has none; an error if several).
/// - A keyed single join (a correlated scalar subquery) under such a condition, whose right side has
///   one row per key at most (it is grouped by them): a row matches at most once, and a row matching
///   none would be dropped.
///
/// Only over bounded tables without event time, where joins may be placed as the orderer likes.
fn as_inner_join(
    left: &LogicalPlan,
    right: LogicalPlan,
    kind: JoinKind,
    on: &[(Expr, Expr)],
    filter: Option<&Expr>,
    null_aware: bool,
    preds: &[Expr],
) -> (LogicalPlan, JoinKind) {
    let outer = matches!(kind, JoinKind::Left | JoinKind::Single) && !null_aware;
    if !outer || !crate::join_order::orderable(left) || !crate::join_order::orderable(&right) {
        return (right, kind);
    }
    let nl = left.schema().fields().len();
    let is_right = |c: usize| c >= nl;
    let rejecting = preds.iter().any(|p| !p.is_volatile() && rejects_nulls(p, &is_right));
    match kind {
        JoinKind::Left if rejecting => (right, JoinKind::Inner),
        // (Not when the left side has no columns: the single join of one row made here.)
        JoinKind::Single if on.is_empty() && filter.is_none() && nl > 0 => {
            if !preds.iter().any(|p| p.column_set().iter().any(|c| is_right(*c))) {
                return (right, kind);
            }
            let one_row = LogicalPlan::Values { rows: vec![vec![]], schema: Arc::new(Schema::empty()) };
            (crate::logical::join(one_row, right, JoinKind::Single, None), JoinKind::Inner)
        }
        JoinKind::Single if rejecting => {
            // The right side's key columns, from the keys and the equalities of the condition.
            let from_on = on.iter().map(|(_, r)| if let Expr::Column(c) = r { Some(*c) } else { None });
            let from_filter = filter.cloned().map(Expr::conjuncts).unwrap_or_default().into_iter().map(|c| match c {
                Expr::Binary { op: BinaryOp::Eq, left: a, right: b } => match (*a, *b) {
                    (Expr::Column(r), l) | (l, Expr::Column(r)) if is_right(r) && l.column_set().iter().all(|c| !is_right(*c)) => Some(r - nl),
                    _ => None,
                },
                _ => None,
            });
            let keys: Option<Vec<usize>> = from_on.chain(from_filter).collect();
            if keys.is_some_and(|k| unique_on(&right, &k)) {
                (right, JoinKind::Inner)
            } else {
                (right, kind)
            }
        }
        _ => (right, kind),
    }
}

/// `key IS NOT NULL` for each join key over the right side of `side`, a left or single join (over
/// tables whose joins may be reordered).
fn not_null_keys<'a>(side: &LogicalPlan, keys: impl Iterator<Item = &'a Expr>) -> Vec<Expr> {
    let LogicalPlan::Join { left, kind: JoinKind::Left | JoinKind::Single, null_aware: false, .. } = side else { return vec![] };
    if !crate::join_order::orderable(side) {
        return vec![];
    }
    let nl = left.schema().fields().len();
    keys.filter(|k| null_when(k, &|c| c >= nl)).map(|k| Expr::IsNotNull(Box::new(k.clone()))).collect()
}

/// Whether a condition is never true when every column `is_null` says is NULL.
fn rejects_nulls(e: &Expr, is_null: &dyn Fn(usize) -> bool) -> bool {
    match e {
        Expr::Binary { op: BinaryOp::And, left, right } => rejects_nulls(left, is_null) || rejects_nulls(right, is_null),
        Expr::Binary { op: BinaryOp::Or, left, right } => rejects_nulls(left, is_null) && rejects_nulls(right, is_null),
        Expr::IsNotNull(e) => null_when(e, is_null),
        other => null_when(other, is_null),
    }
}

/// Whether an expression is NULL when every column `is_null` says is NULL.
fn null_when(e: &Expr, is_null: &dyn Fn(usize) -> bool) -> bool {
    match e {
        Expr::Column(c) => is_null(*c),
        Expr::Cast { expr, .. } | Expr::Negate(expr) | Expr::Not(expr) | Expr::InList { expr, .. } => null_when(expr, is_null),
        Expr::Binary { op, left, right } if op.is_arithmetic() || matches!(op, BinaryOp::Concat) || (op.is_comparison() && !matches!(op, BinaryOp::IsDistinctFrom | BinaryOp::IsNotDistinctFrom)) => {
            null_when(left, is_null) || null_when(right, is_null)
        }
        Expr::Like { expr, pattern, .. } => null_when(expr, is_null) || null_when(pattern, is_null),
        _ => false,
    }
}

/// Whether `plan` has at most one row per combination of its columns `cols` (a grouping by them).
fn unique_on(plan: &LogicalPlan, cols: &[usize]) -> bool {
    match plan {
        LogicalPlan::Aggregate { group, .. } => (0..group.len()).all(|g| cols.contains(&g)),
        LogicalPlan::Project { input, exprs, .. } => {
            let below: Vec<usize> = cols.iter().filter_map(|c| if let Expr::Column(i) = &exprs[*c] { Some(*i) } else { None }).collect();
            unique_on(input, &below)
        }
        LogicalPlan::Filter { input, .. } | LogicalPlan::Sort { input, .. } | LogicalPlan::Limit { input, .. } => unique_on(input, cols),
        _ => false,
    }
}

/// Whether equal keys of these types are the same value to every function (floats are not:
/// 0.0 = -0.0).
fn same_values(a: &arrow::datatypes::DataType, b: &arrow::datatypes::DataType) -> bool {
    a == b && !a.is_floating()
}

/// The predicates of `preds` that read only join keys, over the other side's keys (`pairs`: left
/// key, right key; `from_right`: the predicates are over the right side).
fn transferred(preds: &[Expr], pairs: &[(usize, usize)], from_right: bool) -> Vec<Expr> {
    let other = |c: usize| pairs.iter().find(|(l, r)| if from_right { *r == c } else { *l == c }).map(|(l, r)| if from_right { *l } else { *r });
    preds
        .iter()
        .filter(|p| !p.is_volatile() && !p.column_set().is_empty() && p.column_set().into_iter().all(|c| other(c).is_some()))
        .map(|p| p.clone().remap(&|c| other(c).unwrap_or(usize::MAX)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 3. Projection pushdown

/// Old output position → new output position, for the columns that survived.
type ColumnMap = Vec<Option<usize>>;

fn remap_with(e: Expr, map: &ColumnMap) -> Expr {
    e.remap(&|i| map[i].unwrap_or(usize::MAX))
}

fn identity(n: usize) -> ColumnMap {
    (0..n).map(Some).collect()
}

fn project(input: LogicalPlan, exprs: Vec<Expr>, fields: Vec<Field>) -> LogicalPlan {
    LogicalPlan::Project { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) }
}

/// A projection giving exactly `schema`'s columns from a pruned plan.
fn restore(plan: LogicalPlan, map: &ColumnMap, schema: &SchemaRef) -> LogicalPlan {
    let identical = map.iter().enumerate().all(|(i, m)| *m == Some(i)) && plan.schema().fields().len() == map.len();
    if identical {
        return plan;
    }
    let exprs = map.iter().map(|m| Expr::Column(m.unwrap_or(usize::MAX))).collect();
    project(plan, exprs, schema.fields().iter().map(|f| f.as_ref().clone()).collect())
}

/// How many scans read each table.
fn count_reads(plan: &LogicalPlan, reads: &mut HashMap<String, usize>) {
    if let LogicalPlan::Scan { name, .. } = plan {
        *reads.entry(name.clone()).or_default() += 1;
    }
    plan.inputs().into_iter().for_each(|i| count_reads(i, reads));
}

/// Rewrites `plan` to produce (at least) the `required` columns, dropping the rest where it can.
fn prune(plan: LogicalPlan, required: &BTreeSet<usize>, reread: &HashSet<String>) -> Result<(LogicalPlan, ColumnMap)> {
    Ok(match plan {
        LogicalPlan::Scan { name, source, projection, filters, schema } => {
            let mut keep: BTreeSet<usize> = required.clone();
            for f in &filters {
                keep.extend(f.column_set());
            }
            let kept: Vec<usize> = keep.into_iter().collect();
            let mut map = vec![None; projection.len()];
            for (new, old) in kept.iter().enumerate() {
                map[*old] = Some(new);
            }
            let new_projection: Vec<usize> = kept.iter().map(|i| projection[*i]).collect();
            let new_schema = Arc::new(Schema::new(kept.iter().map(|i| schema.field(*i).clone()).collect::<Vec<_>>()));
            let filters = filters.into_iter().map(|f| remap_with(f, &map)).collect();
            let read_again = reread.contains(&name);
            let scan = LogicalPlan::Scan { name, source, projection: new_projection, filters, schema: new_schema.clone() };
            if kept.len() == required.len() || read_again {
                return Ok((scan, map));
            }
            // Columns only the filters read stay in the scan, not in its output: TPC-H Q13's
            // `o_comment NOT LIKE …` went through the join with every order's comment.
            let outputs: Vec<usize> = kept.iter().enumerate().filter(|(_, old)| required.contains(old)).map(|(new, _)| new).collect();
            let mut out_map = vec![None; projection.len()];
            for (position, new) in outputs.iter().enumerate() {
                out_map[kept[*new]] = Some(position);
            }
            let exprs = outputs.iter().map(|c| Expr::Column(*c)).collect();
            let schema = Arc::new(Schema::new(outputs.iter().map(|c| new_schema.field(*c).clone()).collect::<Vec<_>>()));
            (LogicalPlan::Project { input: Box::new(scan), exprs, schema }, out_map)
        }
        LogicalPlan::Values { rows, schema } => {
            let n = schema.fields().len();
            (LogicalPlan::Values { rows, schema }, identity(n))
        }
        LogicalPlan::Filter { input, predicate } => {
            let mut need = required.clone();
            need.extend(predicate.column_set());
            let (input, map) = prune(*input, &need, reread)?;
            let predicate = remap_with(predicate, &map);
            (LogicalPlan::Filter { input: Box::new(input), predicate }, map)
        }
        LogicalPlan::Project { input, exprs, schema } => {
            let kept: Vec<usize> = required.iter().copied().filter(|i| *i < exprs.len()).collect();
            let mut need = BTreeSet::new();
            for i in &kept {
                need.extend(exprs[*i].column_set());
            }
            let (input, in_map) = prune(*input, &need, reread)?;
            let mut map = vec![None; exprs.len()];
            let mut new_exprs = Vec::with_capacity(kept.len());
            let mut fields = Vec::with_capacity(kept.len());
            for (new, old) in kept.iter().enumerate() {
                map[*old] = Some(new);
                new_exprs.push(remap_with(exprs[*old].clone(), &in_map));
                fields.push(schema.field(*old).clone());
            }
            (project(input, new_exprs, fields), map)
        }
        LogicalPlan::Aggregate { input, group, aggs, schema } => {
            let ng = group.len();
            // Carried keys (`any_value`, `dependent_keys`) stay, as the keys they were would: copies
            // of a CTE whose readers use different columns stay equal, and so shared (TPC-DS q64).
            let kept_aggs: Vec<usize> =
                (0..aggs.len()).filter(|a| required.contains(&(ng + a)) || aggs[*a].func == AggFunc::AnyValue).collect();
            let mut need = BTreeSet::new();
            for g in &group {
                need.extend(g.column_set());
            }
            for a in &kept_aggs {
                for arg in &aggs[*a].args {
                    need.extend(arg.column_set());
                }
            }
            let (input, in_map) = prune(*input, &need, reread)?;
            let group: Vec<Expr> = group.into_iter().map(|g| remap_with(g, &in_map)).collect();
            let mut map: ColumnMap = (0..ng).map(Some).collect();
            map.resize(ng + aggs.len(), None);
            let mut new_aggs = Vec::new();
            let mut fields: Vec<Field> = (0..ng).map(|i| schema.field(i).clone()).collect();
            for a in kept_aggs {
                map[ng + a] = Some(ng + new_aggs.len());
                let mut call = aggs[a].clone();
                call.args = call.args.into_iter().map(|e| remap_with(e, &in_map)).collect();
                new_aggs.push(call);
                fields.push(schema.field(ng + a).clone());
            }
            let schema = Arc::new(Schema::new(fields));
            (LogicalPlan::Aggregate { input: Box::new(input), group, aggs: new_aggs, schema }, map)
        }
        LogicalPlan::Join { left, right, kind, on, filter, null_aware, .. } => {
            let nl = left.schema().fields().len();
            let nr = right.schema().fields().len();
            let mut need_l: BTreeSet<usize> = required.iter().copied().filter(|i| *i < nl).collect();
            let mut need_r: BTreeSet<usize> =
                if kind.keeps_right() { required.iter().filter(|i| **i >= nl).map(|i| i - nl).collect() } else { BTreeSet::new() };
            for (l, r) in &on {
                need_l.extend(l.column_set());
                need_r.extend(r.column_set());
            }
            if let Some(f) = &filter {
                for c in f.column_set() {
                    if c < nl {
                        need_l.insert(c);
                    } else {
                        need_r.insert(c - nl);
                    }
                }
            }
            let (left, lmap) = prune(*left, &need_l, reread)?;
            let (right, rmap) = prune(*right, &need_r, reread)?;
            let new_nl = left.schema().fields().len();
            let on = on.into_iter().map(|(l, r)| (remap_with(l, &lmap), remap_with(r, &rmap))).collect();
            let both: ColumnMap = lmap.iter().copied().chain(rmap.iter().map(|m| m.map(|j| j + new_nl))).collect();
            let filter = filter.map(|f| remap_with(f, &both));
            let schema = join_schema(&left.schema(), &right.schema(), kind);
            let map = match kind {
                JoinKind::Mark => lmap.iter().copied().chain([Some(new_nl)]).collect(),
                _ if kind.keeps_right() => both,
                _ => lmap,
            };
            debug_assert_eq!(map.len(), join_width(kind, nl, nr));
            (LogicalPlan::Join { left: Box::new(left), right: Box::new(right), kind, on, filter, null_aware, schema }, map)
        }
        LogicalPlan::Sort { input, keys, fetch } => {
            let mut need = required.clone();
            for k in &keys {
                need.extend(k.expr.column_set());
            }
            let (input, map) = prune(*input, &need, reread)?;
            let keys = keys
                .into_iter()
                .map(|k| SortKey { expr: remap_with(k.expr, &map), ..k })
                .collect();
            (LogicalPlan::Sort { input: Box::new(input), keys, fetch }, map)
        }
        LogicalPlan::Limit { input, skip, fetch } => {
            let (input, map) = prune(*input, required, reread)?;
            (LogicalPlan::Limit { input: Box::new(input), skip, fetch }, map)
        }
        LogicalPlan::WindowTvf { input, window, time, event_time, .. } => {
            let width = input.schema().fields().len();
            let mut need: BTreeSet<usize> = required.iter().copied().filter(|c| *c < width).collect();
            need.insert(time);
            let (input, in_map) = prune(*input, &need, reread)?;
            let new_width = input.schema().fields().len();
            let time = in_map[time].unwrap_or(usize::MAX);
            let schema = crate::logical::window_schema(&input.schema());
            let mut map = in_map;
            map.extend((0..3).map(|k| Some(new_width + k)));
            (LogicalPlan::WindowTvf { input: Box::new(input), window, time, event_time, schema }, map)
        }
        LogicalPlan::Window { input, calls, .. } => {
            let width = input.schema().fields().len();
            let mut need: BTreeSet<usize> = required.iter().copied().filter(|c| *c < width).collect();
            // Only the window functions someone reads are computed; none, no window.
            let n_calls = calls.len();
            let kept: Vec<usize> = (0..n_calls).filter(|k| required.contains(&(width + k))).collect();
            let calls: Vec<crate::logical::WindowCall> =
                calls.into_iter().enumerate().filter(|(k, _)| kept.contains(k)).map(|(_, c)| c).collect();
            if calls.is_empty() {
                let (input, mut map) = prune(*input, &need, reread)?;
                map.extend((0..n_calls).map(|_| None));
                return Ok((input, map));
            }
            for c in &calls {
                for e in c.args.iter().chain(&c.partition_by).chain(c.order_by.iter().map(|k| &k.expr)) {
                    need.extend(e.column_set());
                }
            }
            let (input, in_map) = prune(*input, &need, reread)?;
            let calls: Vec<crate::logical::WindowCall> = calls
                .into_iter()
                .map(|c| crate::logical::WindowCall {
                    args: c.args.into_iter().map(|e| remap_with(e, &in_map)).collect(),
                    partition_by: c.partition_by.into_iter().map(|e| remap_with(e, &in_map)).collect(),
                    order_by: c.order_by.into_iter().map(|k| SortKey { expr: remap_with(k.expr, &in_map), ..k }).collect(),
                    ..c
                })
                .collect();
            let new_width = input.schema().fields().len();
            let mut fields: Vec<Field> = input.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            for (i, c) in calls.iter().enumerate() {
                fields.push(Field::new(format!("window{i}"), c.ty.clone(), true));
            }
            let mut map = in_map;
            map.extend((0..n_calls).map(|k| kept.iter().position(|c| *c == k).map(|i| new_width + i)));
            (LogicalPlan::Window { input: Box::new(input), calls, schema: Arc::new(Schema::new(fields)) }, map)
        }
        LogicalPlan::SessionTvf { input, keys, time, gap, .. } => {
            let width = input.schema().fields().len();
            let mut need: BTreeSet<usize> = required.iter().copied().filter(|c| *c < width).collect();
            need.insert(time);
            for k in &keys {
                need.extend(k.column_set());
            }
            let (input, in_map) = prune(*input, &need, reread)?;
            let new_width = input.schema().fields().len();
            let keys = keys.into_iter().map(|k| remap_with(k, &in_map)).collect();
            let time = in_map[time].unwrap_or(usize::MAX);
            let schema = crate::logical::window_schema(&input.schema());
            let mut map = in_map;
            map.extend((0..3).map(|k| Some(new_width + k)));
            (LogicalPlan::SessionTvf { input: Box::new(input), keys, time, gap, schema }, map)
        }
        LogicalPlan::Union { inputs, schema } => {
            // Every input must produce exactly the kept columns, in the same order.
            let kept: Vec<usize> = required.iter().copied().collect();
            let fields: Vec<Field> = kept.iter().map(|i| schema.field(*i).clone()).collect();
            let mut new_inputs = Vec::new();
            for input in inputs {
                let (p, m) = prune(input, required, reread)?;
                let in_schema = p.schema();
                let exact = kept.iter().enumerate().all(|(n, o)| m[*o] == Some(n)) && in_schema.fields().len() == kept.len();
                new_inputs.push(if exact {
                    p
                } else {
                    let exprs = kept.iter().map(|o| Expr::Column(m[*o].unwrap_or(usize::MAX))).collect();
                    let fs = kept.iter().map(|o| in_schema.field(m[*o].unwrap_or(0)).clone()).collect();
                    project(p, exprs, fs)
                });
            }
            let mut map = vec![None; schema.fields().len()];
            for (n, o) in kept.iter().enumerate() {
                map[*o] = Some(n);
            }
            (LogicalPlan::Union { inputs: new_inputs, schema: Arc::new(Schema::new(fields)) }, map)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 4. Limits

fn push_limits(plan: LogicalPlan) -> Result<LogicalPlan> {
    map_plan(plan, &mut |p| {
        Ok(match p {
            LogicalPlan::Limit { input, skip, fetch: Some(n) } => {
                let top_k = |input: Box<LogicalPlan>, keys| LogicalPlan::Sort { input, keys, fetch: Some(skip + n) };
                let input = match *input {
                    LogicalPlan::Sort { input, keys, fetch: None } => top_k(input, keys),
                    LogicalPlan::Project { input: inner, exprs, schema } => match *inner {
                        LogicalPlan::Sort { input, keys, fetch: None } => {
                            LogicalPlan::Project { input: Box::new(top_k(input, keys)), exprs, schema }
                        }
                        other => LogicalPlan::Project { input: Box::new(other), exprs, schema },
                    },
                    other => other,
                };
                LogicalPlan::Limit { input: Box::new(input), skip, fetch: Some(n) }
            }
            other => other,
        })
    })
}
