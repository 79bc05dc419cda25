//! SQL → logical plan: the binder resolves names against the catalog, types every expression and
//! turns subqueries into joins.

pub(crate) mod expr;
pub mod flink;
mod scope;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sqlparser::ast::{self, SetExpr};

pub use expr::{cast_to, ExprContext};
pub use from::single_byte;
pub use scope::{Scope, ScopeColumn};

use crate::catalog::Catalog;
use crate::partial_agg::{self, Merge};
use crate::error::{sql_error, Result, RiffleError};
use crate::logical::{join, join_schema, AggCall, AggFunc, Expr, JoinKind, LogicalPlan, SortKey, WindowCall};
use crate::types::{common_type, sql_name};
use expr::{expr_pos, is_aggregate_name, AGG_BASE, WINDOW_BASE};

/// The aggregate calls found while binding one SELECT, without duplicates.
#[derive(Default)]
pub struct AggCollector {
    pub calls: Vec<AggCall>,
}

impl AggCollector {
    fn add(&mut self, call: AggCall) -> usize {
        if let Some(i) = self.calls.iter().position(|c| *c == call) {
            return i;
        }
        self.calls.push(call);
        self.calls.len() - 1
    }
}

pub struct Binder<'a> {
    catalog: &'a Catalog,
    /// Common table expressions in scope, innermost last.
    ctes: Vec<(String, LogicalPlan, Scope)>,
    /// Scalar subqueries met while binding the current expression.
    subquery_joins: SubqueryJoins,
    /// Window functions of the SELECT being bound.
    window_calls: Vec<WindowCall>,
    /// The tables of the table function calls bound so far (`read_csv('f')`), by call.
    table_functions: Vec<(String, Arc<crate::catalog::TableSource>)>,
}

/// Grouping sets at most (CUBE of 12 keys makes 4,096).
const MAX_GROUPING_SETS: usize = 4096;

/// The grouping sets one GROUP BY item stands for, each a list of keys.
fn grouping_sets_of(g: &ast::Expr) -> Result<Vec<Vec<ast::Expr>>> {
    Ok(match g {
        // ROLLUP (a, (b, c)): the prefixes, longest first.
        ast::Expr::Rollup(elements) => (0..=elements.len()).rev().map(|n| elements[..n].concat()).collect(),
        ast::Expr::Cube(elements) => {
            if elements.len() > 12 {
                return Err(RiffleError::NotSupported(format!("CUBE of {} keys (at most 12)", elements.len())));
            }
            let all = (1usize << elements.len()) - 1;
            (0..=all)
                .rev()
                .map(|mask| elements.iter().enumerate().filter(|(i, _)| mask >> (elements.len() - 1 - i) & 1 == 1).flat_map(|(_, e)| e.clone()).collect())
                .collect()
        }
        ast::Expr::GroupingSets(sets) => sets.clone(),
        other => vec![vec![other.clone()]],
    })
}

/// GROUP BY with grouping sets as the union of one aggregate per set, each with the keys it leaves
/// out (`left_out`, places in `group`) as NULLs. `grouping(key)` is a constant per set: 1 where the
/// set leaves `key` out. The same input under each aggregate runs once when it is worth it (shared
/// subplans).
fn grouping_sets(input: LogicalPlan, group: &[Expr], left_out: &[Vec<usize>], aggs: Vec<AggCall>, schema: &SchemaRef) -> Result<LogicalPlan> {
    let computed: Vec<AggCall> = aggs.iter().filter(|a| a.func != AggFunc::Grouping).cloned().collect();
    // Several sets: each aggregates the groups of every key once computed (far fewer rows than the
    // input, which then runs once), when every aggregate merges.
    let pre = if left_out.len() > 1 { pre_aggregate(&input, group, &computed, schema) } else { None };
    let sets: Vec<Vec<usize>> = left_out.iter().map(|dropped| (0..group.len()).filter(|g| !dropped.contains(g)).collect()).collect();
    let set_fields: Vec<Vec<Field>> = sets
        .iter()
        .map(|keys| {
            let mut fields: Vec<Field> = keys.iter().map(|k| schema.field(*k).clone()).collect();
            let agg_fields = schema.fields()[group.len()..].iter().zip(&aggs).filter(|(_, a)| a.func != AggFunc::Grouping);
            fields.extend(agg_fields.map(|(f, _)| f.as_ref().clone()));
            fields
        })
        .collect();
    let aggregates = match &pre {
        Some((pre, merges)) => merged_sets(pre, group.len(), merges, &sets, &set_fields)?,
        None => sets
            .iter()
            .zip(&set_fields)
            .map(|(keys, fields)| LogicalPlan::Aggregate {
                input: Box::new(input.clone()),
                group: keys.iter().map(|k| group[*k].clone()).collect(),
                aggs: computed.clone(),
                schema: Arc::new(Schema::new(fields.clone())),
            })
            .collect(),
    };
    let mut branches = left_out
        .iter()
        .zip(&sets)
        .zip(aggregates)
        .map(|((dropped, keys), aggregate)| {
            let mut exprs: Vec<Expr> = (0..group.len())
                .map(|g| match keys.iter().position(|k| *k == g) {
                    Some(at) => Expr::Column(at),
                    None => Expr::Literal(crate::logical::Scalar(arrow::array::new_null_array(schema.field(g).data_type(), 1))),
                })
                .collect();
            let mut next = keys.len();
            for a in &aggs {
                if a.func != AggFunc::Grouping {
                    exprs.push(Expr::Column(next));
                    next += 1;
                    continue;
                }
                // As in PostgreSQL and DuckDB, grouping(a, b, …) is a bit mask, its first argument the
                // highest bit.
                let mut value = 0i64;
                for arg in &a.args {
                    let key = group.iter().position(|g| g == arg).ok_or_else(|| {
                        RiffleError::plan("grouping() takes GROUP BY keys, e.g. grouping(k) in GROUP BY ROLLUP (k)")
                    })?;
                    value = value << 1 | i64::from(dropped.contains(&key));
                }
                exprs.push(expr::lit_i64(value));
            }
            let names = schema.fields().iter().map(|f| f.name().clone()).collect();
            Ok(project(aggregate, exprs, names))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(match branches.len() {
        1 => branches.remove(0),
        _ => LogicalPlan::Union { inputs: branches, schema: schema.clone() },
    })
}

/// The aggregate of `input` grouped by every key in `group` (the finest grouping set), with the
/// partial aggregates each set merges, if every aggregate merges.
fn pre_aggregate(input: &LogicalPlan, group: &[Expr], computed: &[AggCall], schema: &SchemaRef) -> Option<(LogicalPlan, Vec<Merge>)> {
    let (calls, merges) = partial_agg::split(computed, &input.schema())?;
    let mut fields: Vec<Field> = schema.fields()[..group.len()].iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(partial_agg::partial_fields(&calls));
    let pre = LogicalPlan::Aggregate { input: Box::new(input.clone()), group: group.to_vec(), aggs: calls, schema: Arc::new(Schema::new(fields)) };
    Some((pre, merges))
}

/// Each grouping set's keys (`sets`, places in the GROUP BY) and aggregates (`fields`), from `pre` (its
/// `width` GROUP BY keys, then the partial aggregates). A set merges the partials of the set with the
/// fewest keys, among those merged before and holding all of its keys: each level of a ROLLUP reads
/// the groups of the level above, not all the finest groups again (TPC-DS q67's eight levels).
fn merged_sets(pre: &LogicalPlan, width: usize, merges: &[Merge], sets: &[Vec<usize>], fields: &[Vec<Field>]) -> Result<Vec<LogicalPlan>> {
    let partials = pre.schema().fields().len() - width;
    // Sets with more keys first, so that a set's finer sets are merged before it.
    let mut order: Vec<usize> = (0..sets.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(sets[*i].len()));
    let mut merged: Vec<(Vec<usize>, LogicalPlan)> = vec![((0..width).collect(), pre.clone())];
    let mut out: Vec<Option<LogicalPlan>> = vec![None; sets.len()];
    for i in order {
        let keys = &sets[i];
        let (from_keys, from) = merged
            .iter()
            .filter(|(k, _)| keys.iter().all(|key| k.contains(key)))
            .min_by_key(|(k, _)| k.len())
            .ok_or_else(|| RiffleError::plan("a grouping set has a key outside the GROUP BY"))?;
        if from_keys.len() == keys.len() {
            // Its groups are those of the set merged already (the finest set: the pre-aggregate's).
            out[i] = Some(partial_agg::finish(from.clone(), keys.len(), merges, fields[i].clone()));
            continue;
        }
        let group = keys.iter().map(|k| Expr::Column(from_keys.iter().position(|f| f == k).unwrap_or_default())).collect();
        let set = partial_agg::merge_partials(from.clone(), group, from_keys.len(), partials, merges, &fields[i][..keys.len()]);
        out[i] = Some(partial_agg::finish(set.clone(), keys.len(), merges, fields[i].clone()));
        merged.push((keys.clone(), set));
    }
    out.into_iter().map(|p| p.ok_or_else(|| RiffleError::plan("a grouping set has no aggregate"))).collect()
}

fn project(input: LogicalPlan, exprs: Vec<Expr>, names: Vec<String>) -> LogicalPlan {
    let in_schema = input.schema();
    let fields: Vec<Field> = exprs
        .iter()
        .zip(&names)
        .map(|(e, n)| {
            let nullable = match e {
                Expr::Column(i) => in_schema.field(*i).is_nullable(),
                _ => true,
            };
            Field::new(n, e.data_type(&in_schema), nullable)
        })
        .collect();
    LogicalPlan::Project { input: Box::new(input), exprs, schema: Arc::new(Schema::new(fields)) }
}

fn name_of(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Identifier(id) => id.value.clone(),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()).unwrap_or_default(),
        ast::Expr::Nested(inner) => name_of(inner),
        other => other.to_string(),
    }
}

/// Replaces aggregate placeholders and group expressions by the Aggregate node's output columns; any
/// other column reference is an error (it is neither grouped nor aggregated).
fn rewrite_post_agg(e: Expr, group: &[Expr], input: &Scope) -> Result<Expr> {
    if let Some(k) = group.iter().position(|g| *g == e) {
        return Ok(Expr::Column(k));
    }
    match e {
        Expr::Cast { expr, safe: true, to } => match *expr {
            // A window function's placeholder stays: the Window node comes after the aggregate.
            Expr::Column(i) if i >= WINDOW_BASE => Ok(Expr::Cast { expr: Box::new(Expr::Column(i)), safe: true, to }),
            Expr::Column(i) if i >= AGG_BASE => Ok(Expr::Column(group.len() + i - AGG_BASE)),
            inner => Ok(Expr::Cast { expr: Box::new(rewrite_post_agg(inner, group, input)?), safe: true, to }),
        },
        Expr::Column(i) => {
            let name = input.columns.get(i).map(|c| c.name.as_str()).unwrap_or("?");
            Err(RiffleError::plan(format!(
                "column '{name}' must appear in the GROUP BY clause or be used in an aggregate function"
            )))
        }
        other => other.map_children(&mut |c| rewrite_post_agg(c, group, input)),
    }
}

/// Does every column `e` names (outside nested subqueries) resolve in `scope`?
fn resolves_in(e: &ast::Expr, scope: &Scope) -> bool {
    use scope::Lookup;
    let mut ok = true;
    let e = &without_subqueries(e);
    let _ = ast::visit_expressions(e, |x: &ast::Expr| {
        let found = match x {
            ast::Expr::Identifier(id) => !matches!(scope.lookup(None, &id.value), Lookup::NotFound),
            ast::Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                !matches!(scope.lookup(Some(&p[p.len() - 2].value), &p[p.len() - 1].value), Lookup::NotFound)
            }
            _ => true,
        };
        ok &= found;
        std::ops::ControlFlow::<()>::Continue(())
    });
    ok
}

fn conjuncts(e: &ast::Expr) -> Vec<&ast::Expr> {
    split_by(e, &ast::BinaryOperator::And)
}

fn disjuncts(e: &ast::Expr) -> Vec<&ast::Expr> {
    split_by(e, &ast::BinaryOperator::Or)
}

/// The operands of a chain of `op` (AND or OR), through parentheses.
fn split_by<'e>(e: &'e ast::Expr, op: &ast::BinaryOperator) -> Vec<&'e ast::Expr> {
    match e {
        ast::Expr::BinaryOp { left, op: o, right } if o == op => {
            let mut v = split_by(left, op);
            v.extend(split_by(right, op));
            v
        }
        ast::Expr::Nested(inner) if matches!(inner.as_ref(), ast::Expr::BinaryOp { op: o, .. } if o == op) => split_by(inner, op),
        other => vec![other],
    }
}

/// The conjuncts of `e`, with what every branch of an OR repeats pulled out of it: `(a AND b) OR
/// (a AND c)` is `a AND (b OR c)` (true in SQL's three-valued logic too), so that a correlated `a`
/// of a subquery (TPC-DS q41) stands alone. The optimizer does the same for filters it pushes down.
fn factored_conjuncts(e: &ast::Expr) -> Vec<ast::Expr> {
    let mut out = Vec::new();
    for c in conjuncts(e) {
        let branches: Vec<Vec<&ast::Expr>> = disjuncts(c).into_iter().map(conjuncts).collect();
        let common: Vec<&ast::Expr> = match branches.as_slice() {
            [first, rest @ ..] if !rest.is_empty() => first.iter().filter(|x| rest.iter().all(|b| b.contains(x))).copied().collect(),
            _ => vec![],
        };
        if common.is_empty() {
            out.push(c.clone());
            continue;
        }
        out.extend(common.iter().map(|x| (*x).clone()));
        // A branch of nothing but common conjuncts is true, and so is the OR of the rest.
        let rest: Option<Vec<ast::Expr>> = branches
            .iter()
            .map(|b| and_all(b.iter().filter(|x| !common.contains(x)).map(|x| (*x).clone()).collect()))
            .collect();
        if let Some(or) = rest.and_then(|r| r.into_iter().reduce(|a, b| ast::Expr::BinaryOp { left: Box::new(a), op: ast::BinaryOperator::Or, right: Box::new(b) })) {
            out.push(ast::Expr::Nested(Box::new(or)));
        }
    }
    out
}

fn and_all(parts: Vec<ast::Expr>) -> Option<ast::Expr> {
    parts.into_iter().reduce(|a, b| ast::Expr::BinaryOp { left: Box::new(a), op: ast::BinaryOperator::And, right: Box::new(b) })
}

/// `e` with the select aliases it names replaced by their expressions, as DuckDB reads an ORDER BY
/// expression (`ORDER BY CASE WHEN total = 0 THEN …`); an expression holding a subquery is left as it
/// is (its names may be the subquery's own).
fn with_select_aliases(e: &ast::Expr, items: &[(ast::Expr, String)], scope: &Scope) -> ast::Expr {
    let mut copy = e.clone();
    if without_subqueries(e) != *e {
        return copy;
    }
    let _ = ast::visit_expressions_mut(&mut copy, |x: &mut ast::Expr| {
        if let ast::Expr::Identifier(id) = x {
            if let Some(aliased) = select_alias(&id.value, items, scope) {
                *x = ast::Expr::Nested(Box::new(aliased.clone()));
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    copy
}

/// The select item that `name` names as its alias, unless an input column has that name (an input
/// column wins, as in PostgreSQL).
fn select_alias<'i>(name: &str, items: &'i [(ast::Expr, String)], scope: &Scope) -> Option<&'i ast::Expr> {
    if !matches!(scope.lookup(None, name), scope::Lookup::NotFound) {
        return None;
    }
    items.iter().find(|(_, n)| n.eq_ignore_ascii_case(name)).map(|(e, _)| e)
}

/// A copy of `e` with nested subqueries replaced by NULL, so that walks see only `e`'s own level.
fn without_subqueries(e: &ast::Expr) -> ast::Expr {
    let mut copy = e.clone();
    let _ = ast::visit_expressions_mut(&mut copy, |x: &mut ast::Expr| {
        if matches!(
            x,
            ast::Expr::Subquery(_) | ast::Expr::Exists { .. } | ast::Expr::In { target: ast::InTarget::Subquery(_), .. }
        ) {
            *x = ast::Expr::Value(ast::Value::Null.into());
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    copy
}

fn contains_aggregate(e: &ast::Expr) -> bool {
    let mut found = false;
    let e = &without_subqueries(e);
    let _ = ast::visit_expressions(e, |x: &ast::Expr| {
        if let ast::Expr::Function(f) = x {
            if f.over.is_none() && is_aggregate_name(&f.name.to_string()) {
                found = true;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    found
}

impl<'a> Binder<'a> {
    pub fn new(catalog: &'a Catalog) -> Self {
        Binder { catalog, ctes: Vec::new(), subquery_joins: SubqueryJoins::default(), window_calls: Vec::new(), table_functions: Vec::new() }
    }

    pub fn bind_query(&mut self, q: &ast::Query) -> Result<(LogicalPlan, Scope)> {
        let mark = self.ctes.len();
        let result = self.bind_query_inner(q);
        self.ctes.truncate(mark);
        result
    }

    fn bind_query_inner(&mut self, q: &ast::Query) -> Result<(LogicalPlan, Scope)> {
        if let Some(with) = &q.with {
            if with.recursive {
                return Err(RiffleError::NotSupported("WITH RECURSIVE".into()));
            }
            for cte in &with.cte_tables {
                let (plan, scope) = self.bind_query(&cte.query)?;
                let (plan, scope) = alias_columns(plan, scope, &cte.alias)?;
                let name = cte.alias.name.value.to_ascii_lowercase();
                self.ctes.push((name.clone(), plan, scope.with_qualifier(&name)));
            }
        }
        let order_by: Vec<&ast::OrderByExpr> = match &q.order_by {
            Some(ast::OrderBy { kind: ast::OrderByKind::Expressions(list), .. }) => list.iter().collect(),
            Some(_) => return Err(RiffleError::NotSupported("ORDER BY ALL".into())),
            None => vec![],
        };
        let (plan, scope) = match q.body.as_ref() {
            SetExpr::Select(s) => self.bind_select(s, &order_by)?,
            other => {
                let (plan, scope) = self.bind_set_expr(other)?;
                if order_by.is_empty() {
                    (plan, scope)
                } else {
                    let keys = order_by
                        .iter()
                        .map(|o| {
                            let e = self.output_ref(&o.expr, &scope).map(Ok).unwrap_or_else(|| {
                                self.bind_expr(&o.expr, &mut ExprContext { scope: &scope, aggs: None })
                            })?;
                            Ok(sort_key(e, o))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    (LogicalPlan::Sort { input: Box::new(plan), keys, fetch: None }, scope)
                }
            }
        };
        let plan = self.limit(plan, q)?;
        Ok((plan, scope))
    }

    fn limit(&mut self, plan: LogicalPlan, q: &ast::Query) -> Result<LogicalPlan> {
        let (limit, offset) = match &q.limit_clause {
            None => (None, None),
            Some(ast::LimitClause::LimitOffset { limit, offset, .. }) => (limit.clone(), offset.as_ref().map(|o| o.value.clone())),
            Some(ast::LimitClause::OffsetCommaLimit { offset, limit }) => (Some(limit.clone()), Some(offset.clone())),
        };
        if limit.is_none() && offset.is_none() {
            return Ok(plan);
        }
        let count = |e: &ast::Expr, what: &str| -> Result<usize> {
            match e {
                ast::Expr::Value(v) => match &v.value {
                    ast::Value::Number(n, _) => n.parse::<usize>().map_err(|_| {
                        sql_error(format!("{what} must be a non-negative integer, got {n}"), expr_pos(e))
                    }),
                    _ => Err(sql_error(format!("{what} must be a non-negative integer"), expr_pos(e))),
                },
                _ => Err(sql_error(format!("{what} must be a constant"), expr_pos(e))),
            }
        };
        let fetch = match &limit {
            Some(ast::Expr::Value(v)) if matches!(v.value, ast::Value::Null) => None,
            Some(l) => Some(count(l, "LIMIT")?),
            None => None,
        };
        let skip = offset.as_ref().map(|o| count(o, "OFFSET")).transpose()?.unwrap_or(0);
        Ok(LogicalPlan::Limit { input: Box::new(plan), skip, fetch })
    }

    /// ORDER BY / GROUP BY items that name an output column or give its 1-based position.
    fn output_ref(&self, e: &ast::Expr, output: &Scope) -> Option<Expr> {
        match e {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::Number(n, _) => {
                    let k: usize = n.parse().ok()?;
                    (k >= 1 && k <= output.len()).then(|| Expr::Column(k - 1))
                }
                _ => None,
            },
            ast::Expr::Identifier(id) => match output.lookup(None, &id.value) {
                scope::Lookup::Found(i) => Some(Expr::Column(i)),
                _ => None,
            },
            _ => None,
        }
    }

    fn bind_set_expr(&mut self, body: &SetExpr) -> Result<(LogicalPlan, Scope)> {
        match body {
            SetExpr::Select(s) => self.bind_select(s, &[]),
            SetExpr::Query(q) => self.bind_query(q),
            SetExpr::Values(v) => self.bind_values(v),
            SetExpr::SetOperation { left, op, set_quantifier, right } => {
                let (lp, ls) = self.bind_set_expr(left)?;
                let (rp, rs) = self.bind_set_expr(right)?;
                if ls.len() != rs.len() {
                    return Err(RiffleError::plan(format!(
                        "each side of {op} must have the same number of columns ({} vs {})",
                        ls.len(),
                        rs.len()
                    )));
                }
                let all = matches!(set_quantifier, ast::SetQuantifier::All | ast::SetQuantifier::AllByName);
                let mut types = Vec::new();
                for (l, r) in ls.columns.iter().zip(&rs.columns) {
                    types.push(common_type(&l.ty, &r.ty).ok_or_else(|| {
                        RiffleError::plan(format!(
                            "UNION column '{}' mixes {} and {}",
                            l.name,
                            sql_name(&l.ty),
                            sql_name(&r.ty)
                        ))
                    })?);
                }
                let names: Vec<String> = ls.columns.iter().map(|c| c.name.clone()).collect();
                let conform = |p: LogicalPlan, s: &Scope| -> Result<LogicalPlan> {
                    let exprs = s
                        .columns
                        .iter()
                        .enumerate()
                        .zip(&types)
                        .map(|((i, c), t)| cast_to(Expr::Column(i), &c.ty, t))
                        .collect::<Result<Vec<_>>>()?;
                    Ok(project(p, exprs, names.clone()))
                };
                // UNION keeps each distinct row once: a branch's own DISTINCT (a UNION's inside it,
                // TPC-DS q75's) would hash every row a second time.
                let (lp, rp) = match op {
                    ast::SetOperator::Union if !all => (without_distinct(lp), without_distinct(rp)),
                    _ => (lp, rp),
                };
                let lp = conform(lp, &ls)?;
                let rp = conform(rp, &rs)?;
                let fields: Vec<Field> = lp
                    .schema()
                    .fields()
                    .iter()
                    .zip(rp.schema().fields())
                    .map(|(l, r)| l.as_ref().clone().with_nullable(l.is_nullable() || r.is_nullable()))
                    .collect();
                let schema: SchemaRef = Arc::new(Schema::new(fields));
                let scope = Scope::from_schema(&schema, None);
                if !matches!(op, ast::SetOperator::Union) {
                    let intersect = matches!(op, ast::SetOperator::Intersect);
                    return Ok((intersect_or_except(lp, rp, &schema, intersect, all), scope));
                }
                let union = LogicalPlan::Union { inputs: vec![lp, rp], schema };
                Ok((if all { union } else { distinct_plan(union) }, scope))
            }
            other => Err(RiffleError::NotSupported(format!("{other}"))),
        }
    }

    fn bind_values(&mut self, v: &ast::Values) -> Result<(LogicalPlan, Scope)> {
        let empty = Scope::default();
        let mut rows: Vec<Vec<Expr>> = Vec::new();
        for row in &v.rows {
            let bound = row
                .content
                .iter()
                .map(|e| self.bind_expr(e, &mut ExprContext { scope: &empty, aggs: None }))
                .collect::<Result<Vec<_>>>()?;
            if let Some(first) = rows.first() {
                if first.len() != bound.len() {
                    return Err(RiffleError::plan("VALUES rows must all have the same number of columns"));
                }
            }
            rows.push(bound);
        }
        let width = rows.first().map(|r| r.len()).unwrap_or(0);
        let empty_schema = Schema::empty();
        let mut types = vec![DataType::Null; width];
        for row in &rows {
            for (t, e) in types.iter_mut().zip(row) {
                let et = e.data_type(&empty_schema);
                *t = common_type(t, &et)
                    .ok_or_else(|| RiffleError::plan(format!("VALUES column mixes {} and {}", sql_name(t), sql_name(&et))))?;
            }
        }
        let types: Vec<DataType> = types.into_iter().map(|t| if t == DataType::Null { DataType::Int32 } else { t }).collect();
        let rows = rows
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .zip(&types)
                    .map(|(e, t)| {
                        let et = e.data_type(&empty_schema);
                        cast_to(e, &et, t)
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let fields: Vec<Field> =
            types.iter().enumerate().map(|(i, t)| Field::new(format!("col{i}"), t.clone(), true)).collect();
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let scope = Scope::from_schema(&schema, None);
        Ok((LogicalPlan::Values { rows, schema }, scope))
    }

    fn bind_select(&mut self, s: &ast::Select, order_by: &[&ast::OrderByExpr]) -> Result<(LogicalPlan, Scope)> {
        let outer_windows = std::mem::take(&mut self.window_calls);
        let result = self.bind_select_inner(s, order_by);
        self.window_calls = outer_windows;
        result
    }

    fn bind_select_inner(&mut self, s: &ast::Select, order_by: &[&ast::OrderByExpr]) -> Result<(LogicalPlan, Scope)> {
        let (plan, scope) = self.bind_from(&s.from)?;
        let (mut plan, mut scope) = match &s.selection {
            Some(w) => self.bind_where(plan, scope, w)?,
            None => (plan, scope),
        };
        let width_before_select = scope.len();

        // Select list, with wildcards expanded.
        let mut items: Vec<(ast::Expr, String)> = Vec::new();
        let mut expanded: Vec<(Expr, String)> = Vec::new();
        enum Item {
            Ast(usize),
            Bound(usize),
        }
        let mut order: Vec<Item> = Vec::new();
        for item in &s.projection {
            match item {
                ast::SelectItem::UnnamedExpr(e) => {
                    order.push(Item::Ast(items.len()));
                    items.push((e.clone(), name_of(e)));
                }
                ast::SelectItem::ExprWithAlias { expr, alias } => {
                    order.push(Item::Ast(items.len()));
                    items.push((expr.clone(), alias.value.clone()));
                }
                ast::SelectItem::Wildcard(_) => {
                    for (i, c) in scope.columns.iter().enumerate().filter(|(_, c)| !c.name.is_empty() && !c.using_duplicate) {
                        order.push(Item::Bound(expanded.len()));
                        expanded.push((Expr::Column(i), c.name.clone()));
                    }
                }
                ast::SelectItem::QualifiedWildcard(kind, _) => {
                    let q = kind.to_string().to_ascii_lowercase();
                    let q = q.trim_end_matches(".*").to_string();
                    let before = expanded.len();
                    for (i, c) in scope.columns.iter().enumerate() {
                        if c.qualifier.as_deref() == Some(q.as_str()) && !c.name.is_empty() {
                            order.push(Item::Bound(expanded.len()));
                            expanded.push((Expr::Column(i), c.name.clone()));
                        }
                    }
                    if expanded.len() == before {
                        return Err(RiffleError::plan(format!("table '{q}' is not in the FROM clause")));
                    }
                }
                other => return Err(RiffleError::NotSupported(format!("select item {other}"))),
            }
        }

        // GROUP BY items may name select aliases or positions. Each item is a list of grouping sets (a
        // plain key the one set of itself; ROLLUP (b, c) the sets (b, c), (b), (); CUBE every subset;
        // GROUPING SETS those listed); the query's grouping sets are their cross product.
        let mut sets: Vec<Vec<ast::Expr>> = vec![vec![]];
        let mut plain = true;
        match &s.group_by {
            ast::GroupByExpr::Expressions(list, mods) => {
                if !mods.is_empty() {
                    return Err(RiffleError::NotSupported("GROUP BY modifiers".into()));
                }
                for g in list {
                    let item_sets = grouping_sets_of(g)?;
                    plain &= item_sets.len() == 1;
                    let mut product = Vec::new();
                    for set in &sets {
                        for more in &item_sets {
                            let mut combined = set.clone();
                            for key in more {
                                combined.push(self.group_item(key, &items, &scope)?);
                            }
                            product.push(combined);
                        }
                    }
                    if product.len() > MAX_GROUPING_SETS {
                        return Err(RiffleError::NotSupported(format!("more than {MAX_GROUPING_SETS} grouping sets")));
                    }
                    sets = product;
                }
            }
            ast::GroupByExpr::All(_) => {
                sets = vec![items.iter().filter(|(e, _)| !contains_aggregate(e)).map(|(e, _)| e.clone()).collect()];
            }
        }
        let has_group_by = match &s.group_by {
            ast::GroupByExpr::Expressions(list, _) => !list.is_empty(),
            ast::GroupByExpr::All(_) => true,
        };
        let is_aggregate = has_group_by
            || s.having.is_some()
            || items.iter().any(|(e, _)| contains_aggregate(e))
            || order_by.iter().any(|o| contains_aggregate(&o.expr));

        let mut collector = AggCollector::default();
        // Every key of any grouping set, bound once (a key in many sets may hold a subquery, which
        // binding joins in); per set, the keys it leaves out (places in `group`).
        let mut key_asts: Vec<&ast::Expr> = Vec::new();
        let mut group: Vec<Expr> = Vec::new();
        let mut key_places: Vec<usize> = Vec::new();
        for g in sets.iter().flatten() {
            if key_asts.contains(&g) {
                continue;
            }
            key_asts.push(g);
            let e = self.bind_expr_with_subqueries(g, &mut plan, &mut scope, None)?;
            key_places.push(group.iter().position(|x| *x == e).unwrap_or_else(|| {
                group.push(e);
                group.len() - 1
            }));
        }
        let place = |g: &ast::Expr| key_asts.iter().position(|k| *k == g).map(|i| key_places[i]);
        let left_out: Vec<Vec<usize>> =
            sets.iter().map(|set| (0..group.len()).filter(|k| !set.iter().any(|g| place(g) == Some(*k))).collect()).collect();
        let aggs = if is_aggregate { Some(&mut collector) } else { None };
        let mut agg_slot = aggs;
        let mut select_exprs: Vec<(Expr, String)> = Vec::new();
        for o in &order {
            match o {
                Item::Ast(k) => {
                    let (e, name) = &items[*k];
                    let b = self.bind_expr_with_subqueries(e, &mut plan, &mut scope, agg_slot.as_deref_mut())?;
                    select_exprs.push((b, name.clone()));
                }
                Item::Bound(k) => select_exprs.push(expanded[*k].clone()),
            }
        }
        let having = s
            .having
            .as_ref()
            .map(|h| self.bind_expr_with_subqueries(h, &mut plan, &mut scope, agg_slot.as_deref_mut()))
            .transpose()?;
        // ORDER BY: an output column (alias or position), else an expression over the input.
        let output_scope = Scope {
            columns: select_exprs
                .iter()
                .map(|(_, n)| ScopeColumn { qualifier: None, name: n.clone(), ty: DataType::Null, nullable: true, using_duplicate: false })
                .collect(),
        };
        let mut sort_exprs: Vec<(Expr, &ast::OrderByExpr, bool)> = Vec::new();
        for o in order_by {
            if let Some(Expr::Column(k)) = self.output_ref(&o.expr, &output_scope) {
                sort_exprs.push((Expr::Column(k), o, true));
            } else {
                let e = with_select_aliases(&o.expr, &items, &scope);
                let b = self.bind_expr_with_subqueries(&e, &mut plan, &mut scope, agg_slot.as_deref_mut())?;
                sort_exprs.push((b, o, false));
            }
        }

        // Aggregate, then HAVING, over the grouped rows.
        if is_aggregate {
            // Scalar subqueries of an aggregate's select list are constant per group: group by them.
            for c in width_before_select..scope.len() {
                if !group.contains(&Expr::Column(c)) {
                    group.push(Expr::Column(c));
                }
            }
            let in_schema = plan.schema();
            let mut fields: Vec<Field> = group
                .iter()
                .enumerate()
                .map(|(i, g)| {
                    let name = match g {
                        Expr::Column(c) => scope.columns[*c].name.clone(),
                        _ => format!("group{i}"),
                    };
                    Field::new(name, g.data_type(&in_schema), true)
                })
                .collect();
            for (i, a) in collector.calls.iter().enumerate() {
                fields.push(Field::new(format!("{}{i}", a.func.name()), a.ty.clone(), true));
            }
            let rewrite = |e: Expr| rewrite_post_agg(e, &group, &scope);
            select_exprs = select_exprs.into_iter().map(|(e, n)| Ok((rewrite(e)?, n))).collect::<Result<_>>()?;
            let having = having.map(rewrite).transpose()?;
            sort_exprs = sort_exprs
                .into_iter()
                .map(|(e, o, out)| Ok((if out { e } else { rewrite(e)? }, o, out)))
                .collect::<Result<_>>()?;
            let calls = std::mem::take(&mut self.window_calls);
            self.window_calls = calls
                .into_iter()
                .map(|c| {
                    Ok(WindowCall {
                        args: c.args.into_iter().map(rewrite).collect::<Result<_>>()?,
                        partition_by: c.partition_by.into_iter().map(rewrite).collect::<Result<_>>()?,
                        order_by: c.order_by.into_iter().map(|k| Ok(SortKey { expr: rewrite(k.expr)?, ..k })).collect::<Result<_>>()?,
                        ..c
                    })
                })
                .collect::<Result<_>>()?;
            let agg_schema: SchemaRef = Arc::new(Schema::new(fields));
            let post_scope = Scope::from_schema(&agg_schema, None);
            let grouping = collector.calls.iter().any(|c| c.func == AggFunc::Grouping);
            plan = if !plain || grouping {
                grouping_sets(plan, &group, &left_out, collector.calls, &agg_schema)?
            } else {
                LogicalPlan::Aggregate { input: Box::new(plan), group, aggs: collector.calls, schema: agg_schema }
            };
            if let Some(h) = having {
                let h = self.coerce(h, &DataType::Boolean, &post_scope)?;
                plan = LogicalPlan::Filter { input: Box::new(plan), predicate: h };
            }
        }

        // Window functions, over the rows the WHERE, GROUP BY and HAVING left.
        if !self.window_calls.is_empty() {
            let calls = std::mem::take(&mut self.window_calls);
            let width = plan.schema().fields().len();
            let mut fields: Vec<Field> = plan.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
            for (i, c) in calls.iter().enumerate() {
                fields.push(Field::new(format!("window{i}"), c.ty.clone(), true));
            }
            plan = LogicalPlan::Window { input: Box::new(plan), calls, schema: Arc::new(Schema::new(fields)) };
            let place = |e: Expr| {
                e.transform(&mut |x| match x {
                    Expr::Cast { expr, safe: true, to } => match *expr {
                        Expr::Column(i) if i >= WINDOW_BASE => Expr::Column(width + i - WINDOW_BASE),
                        inner => Expr::Cast { expr: Box::new(inner), safe: true, to },
                    },
                    other => other,
                })
            };
            select_exprs = select_exprs.into_iter().map(|(e, n)| (place(e), n)).collect();
            sort_exprs = sort_exprs.into_iter().map(|(e, o, out)| (if out { e } else { place(e) }, o, out)).collect();
        }

        // Projection: the select list, then hidden ORDER BY keys.
        let visible = select_exprs.len();
        let mut exprs: Vec<Expr> = select_exprs.iter().map(|(e, _)| e.clone()).collect();
        let mut names: Vec<String> = select_exprs.iter().map(|(_, n)| n.clone()).collect();
        let mut keys = Vec::new();
        for (e, o, is_output) in sort_exprs {
            let col = if is_output {
                e
            } else if let Some(k) = exprs.iter().position(|x| *x == e) {
                Expr::Column(k)
            } else {
                if s.distinct.is_some() {
                    return Err(sql_error(
                        "for SELECT DISTINCT, ORDER BY expressions must appear in the select list",
                        expr_pos(&o.expr),
                    ));
                }
                exprs.push(e);
                names.push(String::new());
                Expr::Column(exprs.len() - 1)
            };
            keys.push(sort_key(col, o));
        }
        plan = project(plan, exprs, names.clone());
        let out_schema = plan.schema();
        match &s.distinct {
            Some(ast::Distinct::Distinct) => plan = distinct_plan(plan),
            Some(ast::Distinct::On(_)) => return Err(RiffleError::NotSupported("DISTINCT ON".into())),
            _ => {}
        }
        if !keys.is_empty() {
            plan = LogicalPlan::Sort { input: Box::new(plan), keys, fetch: None };
        }
        if names.len() > visible {
            // Hidden sort keys are dropped after the sort; a LIMIT above still sees sorted rows.
            let exprs = (0..visible).map(Expr::Column).collect();
            plan = project(plan, exprs, names[..visible].to_vec());
        }
        let scope = Scope::from_schema(&Schema::new(out_schema.fields()[..visible].to_vec()), None);
        Ok((plan, scope))
    }

    fn group_item(&self, g: &ast::Expr, items: &[(ast::Expr, String)], scope: &Scope) -> Result<ast::Expr> {
        if let ast::Expr::Value(v) = g {
            if let ast::Value::Number(n, _) = &v.value {
                let k: usize = n.parse().map_err(|_| sql_error("GROUP BY position must be an integer", expr_pos(g)))?;
                return items
                    .get(k.wrapping_sub(1))
                    .map(|(e, _)| e.clone())
                    .ok_or_else(|| sql_error(format!("GROUP BY position {k} is not in the select list"), expr_pos(g)));
            }
        }
        if let ast::Expr::Identifier(id) = g {
            if let Some(e) = select_alias(&id.value, items, scope) {
                return Ok(e.clone());
            }
        }
        Ok(g.clone())
    }

    /// Binds an expression that may hold scalar subqueries; those become joins added to `plan`.
    fn bind_expr_with_subqueries(
        &mut self,
        e: &ast::Expr,
        plan: &mut LogicalPlan,
        scope: &mut Scope,
        aggs: Option<&mut AggCollector>,
    ) -> Result<Expr> {
        let snapshot = scope.clone();
        let mut cx = ExprContext { scope: &snapshot, aggs };
        let outer_joins = std::mem::take(&mut self.subquery_joins);
        let result = self.bind_expr(e, &mut cx);
        let joined = std::mem::replace(&mut self.subquery_joins, outer_joins);
        let bound = result?;
        // Each subquery was bound as columns past the end of the scope; join them in order.
        for j in joined.joins {
            let left_width = scope.len();
            let shift = left_width - j.outer_width;
            let mut conds: Vec<Expr> = Vec::new();
            let mut on = Vec::new();
            for (l, r) in j.on {
                if j.kind == JoinKind::Mark {
                    // Kept as hash keys: a null-aware mark needs to know which keys are NULL.
                    on.push((l, r));
                } else {
                    conds.push(Expr::binary(crate::logical::BinaryOp::Eq, l, r.remap(&|i| i + left_width)));
                }
            }
            if let Some(f) = j.filter {
                conds.push(f.remap(&|i| if i >= j.outer_width { i + shift } else { i }));
            }
            let schema = join_schema(&plan.schema(), &j.plan.schema(), j.kind);
            *plan = LogicalPlan::Join {
                left: Box::new(std::mem::replace(plan, LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) })),
                right: Box::new(j.plan),
                kind: j.kind,
                on,
                filter: Expr::conjunction(conds),
                null_aware: j.null_aware,
                schema,
            };
            *scope = scope.join(&j.scope);
        }
        Ok(bound)
    }
}

/// A subquery met while binding an expression, joined to the plan once the expression is bound. The
/// expression reads what the join appends (`scope`): the subquery's value (a single-row join) or a
/// match mark (EXISTS / IN as a mark join).
pub(super) struct SubqueryJoin {
    pub plan: LogicalPlan,
    pub scope: Scope,
    pub kind: JoinKind,
    /// Equalities (outer expression, subquery column).
    pub on: Vec<(Expr, Expr)>,
    /// A condition over the outer columns followed by the subquery's (correlated EXISTS).
    pub filter: Option<Expr>,
    /// How many outer columns `filter` was bound with; later joins shift the subquery's columns.
    pub outer_width: usize,
    pub null_aware: bool,
}

/// Subqueries found while binding one expression, to be joined to the plan afterwards.
#[derive(Default)]
pub struct SubqueryJoins {
    joins: Vec<SubqueryJoin>,
}

impl SubqueryJoin {
    /// A scalar subquery: at most one row per outer row.
    pub fn single(plan: LogicalPlan, scope: Scope, on: Vec<(Expr, Expr)>, outer_width: usize) -> SubqueryJoin {
        SubqueryJoin { plan, scope, kind: JoinKind::Single, on, filter: None, outer_width, null_aware: false }
    }
}

impl SubqueryJoins {
    /// Columns the pending joins will append.
    pub(super) fn width(&self) -> usize {
        self.joins.iter().map(|j| j.scope.len()).sum()
    }
}

fn sort_key(expr: Expr, o: &ast::OrderByExpr) -> SortKey {
    let descending = matches!(o.options.sort, Some(ast::OrderBySort::Desc));
    // DuckDB's default (our oracle): NULLs last in both directions.
    let nulls_first = o.options.nulls_first.unwrap_or(false);
    SortKey { expr, descending, nulls_first }
}

/// `l INTERSECT r` or `l EXCEPT r` (NULLs equal, as in GROUP BY): each row tagged with its side (1 or
/// 2), both sides in one aggregate grouped by every column, and a group kept when both sides
/// (INTERSECT) or only the left side (EXCEPT) have it. One hash aggregate instead of a join: NULLs
/// group together and no key is needed. With ALL, each row is numbered among its equals on its side
/// first and the number joins the group: the k-th copy of a row survives INTERSECT ALL when both
/// sides have k copies, EXCEPT ALL when only the left has.
fn intersect_or_except(lp: LogicalPlan, rp: LogicalPlan, schema: &SchemaRef, intersect: bool, all: bool) -> LogicalPlan {
    use crate::logical::{AggFunc, BinaryOp, Frame, FrameBound, Scalar, WindowFunc};
    let n = schema.fields().len();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let side = |v: i32| Expr::lit(Scalar(Arc::new(arrow::array::Int32Array::from(vec![v]))));
    let tag = |p: LogicalPlan, v: i32| {
        let exprs = (0..n).map(Expr::Column).chain([side(v)]).collect();
        project(p, exprs, names.iter().cloned().chain(["side".to_string()]).collect())
    };
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("side", DataType::Int32, false));
    let mut tagged = LogicalPlan::Union { inputs: vec![tag(lp, 1), tag(rp, 2)], schema: Arc::new(Schema::new(fields.clone())) };
    // Grouped by the columns, and with ALL by the copy number too (after the side tag).
    let mut group: Vec<Expr> = (0..n).map(Expr::Column).collect();
    fields.pop();
    if all {
        let number = WindowCall {
            func: WindowFunc::RowNumber,
            args: vec![],
            partition_by: (0..=n).map(Expr::Column).collect(),
            order_by: vec![],
            frame: Frame { rows: true, start: FrameBound::UnboundedPreceding, end: FrameBound::CurrentRow },
            ty: DataType::Int64,
        };
        let mut window_fields: Vec<Field> = tagged.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
        window_fields.push(Field::new("copy", DataType::Int64, true));
        tagged = LogicalPlan::Window { input: Box::new(tagged), calls: vec![number], schema: Arc::new(Schema::new(window_fields)) };
        group.push(Expr::Column(n + 1));
        fields.push(Field::new("copy", DataType::Int64, true));
    }
    let call = |func| AggCall { func, args: vec![Expr::Column(n)], distinct: false, ty: DataType::Int32 };
    let k = fields.len();
    fields.push(Field::new("min_side", DataType::Int32, true));
    fields.push(Field::new("max_side", DataType::Int32, true));
    let aggregate = LogicalPlan::Aggregate {
        input: Box::new(tagged),
        group,
        aggs: vec![call(AggFunc::Min), call(AggFunc::Max)],
        schema: Arc::new(Schema::new(fields)),
    };
    let is = |col: usize, v: i32| Expr::binary(BinaryOp::Eq, Expr::Column(col), side(v));
    let predicate = if intersect { is(k, 1).and(is(k + 1, 2)) } else { is(k + 1, 1) };
    let kept = LogicalPlan::Filter { input: Box::new(aggregate), predicate };
    project(kept, (0..n).map(Expr::Column).collect(), names)
}

/// SELECT DISTINCT: group by every column.
pub fn distinct_plan(plan: LogicalPlan) -> LogicalPlan {
    let schema = plan.schema();
    let group = (0..schema.fields().len()).map(Expr::Column).collect();
    LogicalPlan::Aggregate { input: Box::new(plan), group, aggs: vec![], schema }
}

/// `plan` less a DISTINCT on top (`distinct_plan`'s aggregate), for a consumer that removes
/// duplicates itself.
fn without_distinct(plan: LogicalPlan) -> LogicalPlan {
    match plan {
        LogicalPlan::Aggregate { input, group, aggs, .. }
            if aggs.is_empty()
                && group.len() == input.schema().fields().len()
                && group.iter().enumerate().all(|(i, g)| matches!(g, Expr::Column(c) if *c == i)) =>
        {
            *input
        }
        other => other,
    }
}

fn alias_columns(plan: LogicalPlan, scope: Scope, alias: &ast::TableAlias) -> Result<(LogicalPlan, Scope)> {
    if alias.columns.is_empty() {
        return Ok((plan, scope));
    }
    if alias.columns.len() > scope.len() {
        return Err(RiffleError::plan(format!(
            "'{}' has {} columns but {} names were given",
            alias.name.value,
            scope.len(),
            alias.columns.len()
        )));
    }
    let mut names: Vec<String> = scope.columns.iter().map(|c| c.name.clone()).collect();
    for (n, c) in names.iter_mut().zip(&alias.columns) {
        *n = c.name.value.clone();
    }
    let exprs = (0..scope.len()).map(Expr::Column).collect();
    let plan = project(plan, exprs, names);
    let scope = Scope::from_schema(&plan.schema(), None);
    Ok((plan, scope))
}

mod from;
mod subquery;
