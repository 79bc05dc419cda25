//! Eager aggregation: an aggregate over an inner join whose aggregates read one side only is
//! computed in part on that side, grouped by its join keys and its own group keys, before the join.
//! TPC-DS q04 groups half a million sales by eight customer columns after joining the customers;
//! grouped by the customer key first, the join and the final grouping see a fourteenth of the rows.
//!
//! Valid whatever the other side holds: a side row matching m rows of the other side is counted m
//! times either way, as its partial group is too. Only bounded inputs without event time are
//! rewritten (a stream's aggregate emits updates as rows come), and only where the estimates say
//! the partial aggregate shrinks its side without the join having done so anyway.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};

use crate::error::Result;
use crate::join_order::orderable;
use crate::optimizer::{map_plan, substitute};
use crate::logical::{join_schema, Expr, JoinKind, LogicalPlan};
use crate::partial_agg;
use crate::stats::Estimator;

/// A partial aggregate must keep at most this fraction of its side's rows to be worth computing.
const MAX_PARTIAL_FRACTION: f64 = 0.5;

/// Rewrites every aggregate in `plan` that gains from eager aggregation.
pub fn push_aggregates(plan: LogicalPlan) -> Result<LogicalPlan> {
    map_plan(plan, &mut |p| {
        Ok(match p {
            LogicalPlan::Aggregate { input, group, aggs, schema } => {
                // The join order puts a projection above a reordered join to keep its columns' order.
                let (input, group, aggs) = match *input {
                    LogicalPlan::Project { input: inner, exprs, .. }
                        if matches!(inner.as_ref(), LogicalPlan::Join { .. }) && !exprs.iter().any(Expr::is_volatile) =>
                    {
                        let group = group.into_iter().map(|g| substitute(g, &exprs)).collect();
                        let aggs = aggs
                            .into_iter()
                            .map(|mut a| {
                                a.args = a.args.into_iter().map(|x| substitute(x, &exprs)).collect();
                                a
                            })
                            .collect();
                        (*inner, group, aggs)
                    }
                    other => (other, group, aggs),
                };
                let rewritten = match &input {
                    LogicalPlan::Join { left, right, kind: JoinKind::Inner, on, filter: None, null_aware: false, schema: join }
                        if !on.is_empty() =>
                    {
                        eager(&JoinParts { left, right, on, schema: join }, &group, &aggs, &schema)
                    }
                    _ => None,
                };
                rewritten.unwrap_or(LogicalPlan::Aggregate { input: Box::new(input), group, aggs, schema })
            }
            other => other,
        })
    })
}

/// The parts of an inner equi-join that eager aggregation reads.
struct JoinParts<'a> {
    left: &'a LogicalPlan,
    right: &'a LogicalPlan,
    on: &'a [(Expr, Expr)],
    schema: &'a arrow::datatypes::SchemaRef,
}

/// Which columns of the join an expression reads: none, one side's only, or both sides'.
fn side_of(e: &Expr, left_width: usize) -> Option<Option<bool>> {
    let cols = e.column_set();
    let right = cols.iter().filter(|c| **c >= left_width).count();
    match (cols.len(), right) {
        (0, _) => Some(None),
        (n, r) if r == n => Some(Some(true)),
        (_, 0) => Some(Some(false)),
        _ => None,
    }
}

/// Moves an expression's columns from positions starting at `from` to positions starting at `to`
/// (from one schema's places to another's).
fn shifted(e: &Expr, from: usize, to: usize) -> Expr {
    e.clone().transform(&mut |x| match x {
        Expr::Column(c) => Expr::Column(c - from + to),
        other => other,
    })
}

fn eager(join: &JoinParts, group: &[Expr], aggs: &[crate::logical::AggCall], schema: &arrow::datatypes::SchemaRef) -> Option<LogicalPlan> {
    let nl = join.left.schema().fields().len();
    // The side the aggregates read (with only count(*), the larger side).
    let mut reads: Option<bool> = None;
    for a in aggs {
        for arg in &a.args {
            match side_of(arg, nl)? {
                None => {}
                Some(r) if reads.is_none_or(|s| s == r) => reads = Some(r),
                Some(_) => return None,
            }
        }
    }
    let estimator = Estimator::default();
    let on_right = match reads {
        Some(r) => r,
        None => estimator.rows(join.right) > estimator.rows(join.left),
    };
    let (side, other) = if on_right { (join.right, join.left) } else { (join.left, join.right) };
    if !orderable(side) || !orderable(other) {
        return None;
    }
    let side_at = if on_right { nl } else { 0 };
    let (split_calls, merges) = partial_agg::split(aggs, join.schema)?;

    // The partial aggregate's keys: the side's group keys, then its join keys.
    let mut keys: Vec<Expr> = Vec::new();
    let mut key_of = |e: Expr| match keys.iter().position(|k| *k == e) {
        Some(i) => i,
        None => {
            keys.push(e);
            keys.len() - 1
        }
    };
    let mut group_places: Vec<Option<usize>> = Vec::new();
    for g in group {
        group_places.push(match side_of(g, nl)? {
            Some(r) if r == on_right => Some(key_of(shifted(g, side_at, 0))),
            _ => None,
        });
    }
    let join_keys: Vec<usize> =
        join.on.iter().map(|(l, r)| key_of(if on_right { r.clone() } else { l.clone() })).collect();

    let side_rows = estimator.rows(side);
    // Keys computed from columns have at most as many values as those columns together.
    let mut cols: Vec<usize> = keys.iter().flat_map(Expr::column_set).collect();
    cols.sort_unstable();
    cols.dedup();
    let partial_groups = estimator.distinct(side, &cols);
    let joined = estimator.rows(join.left) * estimator.rows(join.right) * estimator.join_selectivity(join.left, join.right, join.on);
    if partial_groups > MAX_PARTIAL_FRACTION * side_rows || joined < MAX_PARTIAL_FRACTION * side_rows {
        return None;
    }

    let side_schema = side.schema();
    let calls: Vec<_> = split_calls
        .into_iter()
        .map(|mut c| {
            c.args = c.args.iter().map(|a| shifted(a, side_at, 0)).collect();
            c
        })
        .collect();
    let name = |i: usize, k: &Expr| match k {
        Expr::Column(c) => side_schema.field(*c).name().clone(),
        _ => format!("key{i}"),
    };
    let mut fields: Vec<Field> =
        keys.iter().enumerate().map(|(i, k)| Field::new(name(i, k), k.data_type(&side_schema), true)).collect();
    fields.extend(partial_agg::partial_fields(&calls));
    let nk = keys.len();
    let partial = LogicalPlan::Aggregate { input: Box::new(side.clone()), group: keys, aggs: calls, schema: Arc::new(Schema::new(fields)) };
    let partial_width = partial.schema().fields().len();

    let (left, right, on, partial_at, other_from, other_to) = if on_right {
        let on = join.on.iter().zip(&join_keys).map(|((l, _), k)| (l.clone(), Expr::Column(*k))).collect();
        (join.left.clone(), partial, on, nl, 0, 0)
    } else {
        let on = join.on.iter().zip(&join_keys).map(|((_, r), k)| (Expr::Column(*k), r.clone())).collect();
        (partial, join.right.clone(), on, 0, nl, partial_width)
    };
    let join_schema = join_schema(&left.schema(), &right.schema(), JoinKind::Inner);
    let joined = LogicalPlan::Join {
        left: Box::new(left),
        right: Box::new(right),
        kind: JoinKind::Inner,
        on,
        filter: None,
        null_aware: false,
        schema: join_schema,
    };
    let final_group = group
        .iter()
        .zip(&group_places)
        .map(|(g, place)| match place {
            Some(k) => Expr::Column(partial_at + k),
            None => shifted(g, other_from, other_to),
        })
        .collect();
    let fields = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    Some(partial_agg::merge(joined, final_group, partial_at + nk, partial_width - nk, &merges, fields))
}
