//! Scalar subqueries that aggregate one table under different conditions become one aggregate over
//! one read of the table. TPC-DS q09 asks for a count and two averages of `store_sales` in each of
//! five quantity ranges: fifteen subqueries, fifteen scans of 28.8 M rows at SF10. Each subquery's
//! condition moves into its aggregates (`agg(x)` over rows where `p` holds is `agg(CASE WHEN p THEN
//! x END)`, as `agg(x) FILTER (WHERE p)` is bound), and the one scan keeps the rows any condition
//! keeps.
//!
//! Only aggregates without GROUP BY (exactly one row each) joined side by side without keys: the
//! single joins of scalar subqueries in an expression, and cross joins of FROM items. Each must read
//! one bounded table through filters only; DISTINCT aggregates keep their own scan (their sets would
//! be kept per condition).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};

use crate::catalog::TableSource;
use crate::logical::{AggCall, AggFunc, BinaryOp, Expr, JoinKind, LogicalPlan, Scalar};

/// `plan` with the scalar aggregates of each chain of keyless joins merged by table.
pub fn merge(plan: LogicalPlan) -> LogicalPlan {
    let mut plan = merge_chain(plan);
    for input in plan.inputs_mut() {
        let taken = std::mem::replace(input, LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
        *input = merge(taken);
    }
    plan
}

/// A single or inner join without keys or condition.
fn keyless(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join { kind: JoinKind::Single | JoinKind::Inner, on, filter: None, null_aware: false, .. } if on.is_empty())
}

/// One scalar aggregate of a table read through filters.
struct Piece {
    /// Over the aggregate's output (an average as sum / count), with its schema.
    project: Option<(Vec<Expr>, SchemaRef)>,
    aggs: Vec<AggCall>,
    agg_fields: Vec<FieldRef>,
    name: String,
    source: Arc<TableSource>,
    projection: Vec<usize>,
    scan_schema: SchemaRef,
    /// The filters, over the scan's columns.
    conditions: Vec<Expr>,
}

fn piece(plan: &LogicalPlan) -> Option<Piece> {
    let (project, aggregate) = match plan {
        LogicalPlan::Project { input, exprs, schema } => (Some((exprs.clone(), schema.clone())), input.as_ref()),
        other => (None, other),
    };
    let LogicalPlan::Aggregate { input, group, aggs, schema } = aggregate else { return None };
    // A DISTINCT sum or average is planned in two aggregates only when it is the one DISTINCT
    // argument; count(DISTINCT …) keeps a set per aggregate, whatever its neighbours.
    if !group.is_empty() || aggs.is_empty() || aggs.iter().any(|a| (a.distinct && a.func != AggFunc::Count) || a.func == AggFunc::Grouping) {
        return None;
    }
    let mut conditions = vec![];
    let mut below = input.as_ref();
    loop {
        match below {
            LogicalPlan::Filter { input, predicate } => {
                conditions.extend(predicate.clone().conjuncts());
                below = input;
            }
            LogicalPlan::Scan { name, source, projection, filters, schema: scan_schema } => {
                if !crate::join_order::orderable(below) || !crate::join_order::bounded(below) {
                    return None;
                }
                conditions.extend(filters.iter().cloned());
                return Some(Piece {
                    project,
                    aggs: aggs.clone(),
                    agg_fields: schema.fields().iter().cloned().collect(),
                    name: name.clone(),
                    source: source.clone(),
                    projection: projection.clone(),
                    scan_schema: scan_schema.clone(),
                    conditions,
                });
            }
            _ => return None,
        }
    }
}

/// The members of a chain of keyless joins (the leftmost first) with the join kind each one after
/// the first is joined by.
fn members(plan: LogicalPlan, out: &mut Vec<(LogicalPlan, JoinKind)>) {
    if !keyless(&plan) {
        out.push((plan, JoinKind::Inner));
        return;
    }
    if let LogicalPlan::Join { left, right, kind, .. } = plan {
        members(*left, out);
        out.push((*right, kind));
    }
}

fn merge_chain(plan: LogicalPlan) -> LogicalPlan {
    if !keyless(&plan) {
        return plan;
    }
    let schema = plan.schema();
    let mut chain = vec![];
    members(plan.clone(), &mut chain);
    let pieces: Vec<Option<Piece>> = chain.iter().map(|(m, _)| piece(m)).collect();
    // Pieces of one table, by first member.
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, p) in pieces.iter().enumerate() {
        let Some(p) = p else { continue };
        let first = (0..i).find(|&j| pieces[j].as_ref().is_some_and(|q| q.name == p.name && Arc::ptr_eq(&q.source, &p.source)));
        groups.entry(first.unwrap_or(i)).or_default().push(i);
    }
    groups.retain(|_, g| g.len() > 1);
    if groups.is_empty() {
        return plan;
    }
    // Each member's first output column, before and after.
    let widths: Vec<usize> = chain.iter().map(|(m, _)| m.schema().fields().len()).collect();
    let starts: Vec<usize> = widths.iter().scan(0, |s, w| Some(std::mem::replace(s, *s + w))).collect();
    let mut place = vec![0; schema.fields().len()];
    let mut joined: Option<LogicalPlan> = None;
    let mut width = 0;
    let merged_away: Vec<usize> = groups.values().flat_map(|g| g[1..].to_vec()).collect();
    for (i, (member, kind)) in chain.into_iter().enumerate() {
        if merged_away.contains(&i) {
            continue;
        }
        let (member, order) = match groups.get(&i) {
            Some(group) => {
                let group_pieces: Vec<&Piece> = group.iter().filter_map(|&j| pieces[j].as_ref()).collect();
                (merged(&group_pieces), group.clone())
            }
            None => (member, vec![i]),
        };
        for j in order {
            for c in 0..widths[j] {
                place[starts[j] + c] = width + c;
            }
            width += widths[j];
        }
        joined = Some(match joined {
            None => member,
            Some(left) => crate::logical::join(left, member, kind, None),
        });
    }
    let Some(joined) = joined else { return plan };
    let exprs = place.into_iter().map(Expr::Column).collect();
    LogicalPlan::Project { input: Box::new(joined), exprs, schema }
}

/// One aggregate over one scan computing every piece's output, side by side.
fn merged(pieces: &[&Piece]) -> LogicalPlan {
    let mut columns: BTreeMap<usize, FieldRef> = BTreeMap::new();
    for p in pieces {
        for (i, c) in p.projection.iter().enumerate() {
            columns.entry(*c).or_insert_with(|| p.scan_schema.fields()[i].clone());
        }
    }
    let projection: Vec<usize> = columns.keys().copied().collect();
    let scan_schema = Arc::new(Schema::new(columns.values().cloned().collect::<Vec<_>>()));
    let first = pieces[0];
    let scan = LogicalPlan::Scan { name: first.name.clone(), source: first.source.clone(), projection: projection.clone(), filters: vec![], schema: scan_schema };
    let conditions: Vec<Option<Expr>> = pieces
        .iter()
        .map(|p| {
            let at = |c: usize| projection.iter().position(|x| *x == p.projection[c]).unwrap_or(c);
            Expr::conjunction(p.conditions.iter().map(|e| e.clone().remap(&at)).collect())
        })
        .collect();
    let mut input = scan;
    if conditions.iter().all(Option::is_some) {
        let mut any: Vec<Expr> = vec![];
        for c in conditions.iter().flatten() {
            if !any.contains(c) {
                any.push(c.clone());
            }
        }
        let predicate = any.into_iter().reduce(|a, b| Expr::binary(BinaryOp::Or, a, b));
        if let Some(predicate) = predicate {
            input = LogicalPlan::Filter { input: Box::new(input), predicate };
        }
    }
    let (mut aggs, mut agg_fields, mut outputs, mut output_fields) = (vec![], vec![], vec![], vec![]);
    for (p, condition) in pieces.iter().zip(&conditions) {
        let at = |c: usize| projection.iter().position(|x| *x == p.projection[c]).unwrap_or(c);
        let offset = aggs.len();
        for (call, field) in p.aggs.iter().zip(&p.agg_fields) {
            let mut call = AggCall { args: call.args.iter().map(|a| a.clone().remap(&at)).collect(), ..call.clone() };
            if let Some(condition) = condition {
                if call.func == AggFunc::CountStar {
                    call.func = AggFunc::Count;
                    call.args = vec![Expr::Literal(Scalar(Arc::new(Int64Array::from(vec![1]))))];
                }
                call.args = call.args.into_iter().map(|a| Expr::Case { branches: vec![(condition.clone(), a)], otherwise: None }).collect();
            }
            agg_fields.push(Field::new(format!("{}_{}", field.name(), aggs.len()), field.data_type().clone(), field.is_nullable()));
            aggs.push(call);
        }
        match &p.project {
            Some((exprs, schema)) => {
                outputs.extend(exprs.iter().map(|e| e.clone().remap(&|c| c + offset)));
                output_fields.extend(schema.fields().iter().cloned());
            }
            None => {
                outputs.extend((offset..aggs.len()).map(Expr::Column));
                output_fields.extend(p.agg_fields.iter().cloned());
            }
        }
    }
    let aggregate = LogicalPlan::Aggregate { input: Box::new(input), group: vec![], aggs, schema: Arc::new(Schema::new(agg_fields)) };
    LogicalPlan::Project { input: Box::new(aggregate), exprs: outputs, schema: Arc::new(Schema::new(output_fields)) }
}
