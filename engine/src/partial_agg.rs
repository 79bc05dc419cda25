//! Aggregates computed in two steps: partial aggregates over finer groups, then those partials
//! merged into the groups asked for. Grouping sets merge the finest set's partials into every
//! coarser set (`sql::grouping_sets`); eager aggregation merges partials computed below a join
//! (`eager_aggregate`).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};

use crate::functions::ScalarFunc;
use crate::logical::{AggCall, AggFunc, BinaryOp, Expr, LogicalPlan};
use crate::sql::expr::lit_i64;

/// How one aggregate comes from partial aggregates (their places among the partial columns).
#[derive(Debug, Clone)]
pub enum Merge {
    /// sum, min or max of the partial ones (of this type).
    Same(AggFunc, usize, DataType),
    /// The sum of the counts (0 where there are no rows: the grand total of no input).
    Count(usize),
    /// avg of integers: the sum of the sums over the sum of the counts.
    Avg(usize, usize),
}

/// The partial aggregates that `aggs` (over `input_schema`) merge from, and how each merges; `None`
/// if one does not merge (DISTINCT, variances, avg of non-integers).
pub fn split(aggs: &[AggCall], input_schema: &Schema) -> Option<(Vec<AggCall>, Vec<Merge>)> {
    let mut calls: Vec<AggCall> = Vec::new();
    let mut add = |call: AggCall| {
        calls.push(call);
        calls.len() - 1
    };
    let mut merges = Vec::new();
    for a in aggs {
        if a.distinct {
            return None;
        }
        merges.push(match a.func {
            AggFunc::CountStar | AggFunc::Count => Merge::Count(add(a.clone())),
            AggFunc::Sum | AggFunc::Min | AggFunc::Max | AggFunc::AnyValue => Merge::Same(a.func, add(a.clone()), a.ty.clone()),
            AggFunc::Avg if a.args.first()?.data_type(input_schema).is_integer() => {
                let sum = add(AggCall { func: AggFunc::Sum, args: a.args.clone(), distinct: false, ty: DataType::Int64 });
                let count = add(AggCall { func: AggFunc::Count, args: a.args.clone(), distinct: false, ty: DataType::Int64 });
                Merge::Avg(sum, count)
            }
            _ => return None,
        });
    }
    Some((calls, merges))
}

/// Fields for partial aggregates, after their group keys' fields.
pub fn partial_fields(calls: &[AggCall]) -> impl Iterator<Item = Field> + '_ {
    calls.iter().enumerate().map(|(i, c)| Field::new(format!("partial{i}"), c.ty.clone(), true))
}

/// Groups `input` by `group` and merges its `partials` partial aggregates, columns from
/// `partials_at` on. The result has `fields`: one per group key, then one per merged aggregate.
pub fn merge(input: LogicalPlan, group: Vec<Expr>, partials_at: usize, partials: usize, merges: &[Merge], fields: Vec<Field>) -> LogicalPlan {
    let keys = group.len();
    let merged = merge_partials(input, group, partials_at, partials, merges, &fields[..keys]);
    finish(merged, keys, merges, fields)
}

/// Groups `input` by `group` (keys of `key_fields`) and merges its `partials` partial aggregates,
/// columns from `partials_at` on, into partial aggregates of the coarser groups: the keys, then the
/// partials, as a pre-aggregate's (so they can be merged again).
pub fn merge_partials(input: LogicalPlan, group: Vec<Expr>, partials_at: usize, partials: usize, merges: &[Merge], key_fields: &[Field]) -> LogicalPlan {
    // Each partial merges into one column, in the same order.
    let mut calls: Vec<AggCall> = (0..partials)
        .map(|i| AggCall { func: AggFunc::Sum, args: vec![Expr::Column(partials_at + i)], distinct: false, ty: DataType::Int64 })
        .collect();
    for m in merges {
        if let Merge::Same(func, i, ty) = m {
            calls[*i].func = *func;
            calls[*i].ty = ty.clone();
        }
    }
    let mut merged_fields: Vec<Field> = key_fields.to_vec();
    merged_fields.extend(partial_fields(&calls));
    LogicalPlan::Aggregate { input: Box::new(input), group, aggs: calls, schema: Arc::new(Schema::new(merged_fields)) }
}

/// The aggregates from `input`'s rows when each already is one group: its `keys` group keys, then
/// one partial aggregate per column. The result has `fields`, as `merge`'s.
pub fn finish(input: LogicalPlan, keys: usize, merges: &[Merge], fields: Vec<Field>) -> LogicalPlan {
    let mut exprs: Vec<Expr> = (0..keys).map(Expr::Column).collect();
    exprs.extend(merges.iter().map(|m| merged(m, keys)));
    LogicalPlan::Project { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) }
}

/// The aggregate `m` makes of merged partials from column `partials_at` on.
fn merged(m: &Merge, partials_at: usize) -> Expr {
    let partial = |i: &usize| Expr::Column(partials_at + i);
    let double = |e: Expr| Expr::Cast { expr: Box::new(e), to: DataType::Float64, safe: false };
    match m {
        Merge::Same(_, i, _) => partial(i),
        Merge::Count(i) => Expr::Function { func: ScalarFunc::Coalesce, args: vec![partial(i), lit_i64(0)], ty: DataType::Int64 },
        Merge::Avg(s, c) => Expr::binary(BinaryOp::Div, double(partial(s)), double(partial(c))),
    }
}

/// `count`, `sum` and `avg(DISTINCT x)` (the same x in every DISTINCT aggregate, the others merging
/// from partial ones) in two steps, as DuckDB and DataFusion do with a single distinct argument: `input` grouped
/// by `group` and x, with the others' partials, then by `group`, aggregating x (each value now once)
/// and merging the partials. The de-duplication is then the hash aggregate's (vectorized, spilling)
/// instead of a set of values per group. `None` if the aggregates are not of that form.
pub fn distinct_in_two_steps(input: &LogicalPlan, group: &[Expr], aggs: &[AggCall], schema: &Schema) -> Option<LogicalPlan> {
    let distinct: Vec<&AggCall> = aggs.iter().filter(|a| a.distinct).collect();
    let x = distinct.first()?.args.first()?.clone();
    if !distinct.iter().all(|a| matches!(a.func, AggFunc::Count | AggFunc::Sum | AggFunc::Avg) && a.args == [x.clone()]) {
        return None;
    }
    let others: Vec<AggCall> = aggs.iter().filter(|a| !a.distinct).cloned().collect();
    let input_schema = input.schema();
    let (calls, merges) = split(&others, &input_schema)?;
    let keys = group.len();
    let key_fields: Vec<Field> = schema.fields()[..keys].iter().map(|f| f.as_ref().clone()).collect();
    let mut inner_fields = key_fields.clone();
    inner_fields.push(Field::new("distinct_value", x.data_type(&input_schema), true));
    inner_fields.extend(partial_fields(&calls));
    let mut inner_group = group.to_vec();
    inner_group.push(x);
    let inner = LogicalPlan::Aggregate { input: Box::new(input.clone()), group: inner_group, aggs: calls.clone(), schema: Arc::new(Schema::new(inner_fields)) };
    let outer = merge_partials(inner, (0..keys).map(Expr::Column).collect(), keys + 1, calls.len(), &merges, &key_fields);
    let LogicalPlan::Aggregate { input: inner, group: outer_group, aggs: mut outer_aggs, schema: outer_schema } = outer else { return None };
    let mut outer_fields: Vec<Field> = outer_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    // Each DISTINCT aggregate over x, now one row per value.
    for (i, a) in distinct.iter().enumerate() {
        outer_aggs.push(AggCall { func: a.func, args: vec![Expr::Column(keys)], distinct: false, ty: a.ty.clone() });
        outer_fields.push(Field::new(format!("distinct{i}"), a.ty.clone(), true));
    }
    let outer = LogicalPlan::Aggregate { input: inner, group: outer_group, aggs: outer_aggs, schema: Arc::new(Schema::new(outer_fields)) };
    let mut exprs: Vec<Expr> = (0..keys).map(Expr::Column).collect();
    let (mut merges, mut next_distinct) = (merges.iter(), keys + calls.len());
    for a in aggs {
        exprs.push(if a.distinct {
            next_distinct += 1;
            Expr::Column(next_distinct - 1)
        } else {
            merged(merges.next()?, keys)
        });
    }
    Some(LogicalPlan::Project { input: Box::new(outer), exprs, schema: Arc::new(schema.clone()) })
}
