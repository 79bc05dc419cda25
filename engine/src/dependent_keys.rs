//! Group keys that depend on other group keys are carried, not grouped by. TPC-H q10 groups by
//! `c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment`: `c_custkey` is a key of
//! customer, so the customer's other columns have one value per `c_custkey`, and so does the
//! nation's name, joined by the nation's key. Grouping by `c_custkey` alone, with the other columns
//! as `any_value`, hashes one integer per row instead of six strings more.
//!
//! A column of a scanned table depends on a key of that table (`stats::is_key`: measured, no NULL and
//! no value twice) wherever the scan's rows go: joins repeat a row or null-extend it (all its
//! columns NULL, the key too), filters drop rows. Columns an inner join (or a filter) makes equal
//! depend on each other. Only bounded inputs are rewritten: a stream's aggregate emits updates.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{Field, Schema};

use crate::catalog::TableSource;
use crate::logical::{AggCall, AggFunc, BinaryOp, Expr, JoinKind, LogicalPlan};
use crate::optimizer::map_plan;
use crate::error::Result;

/// A column of one scan in the plan: (the scan's place in `Lineage::scans`, table column).
type Origin = (usize, usize);

/// Where the columns of a plan come from.
#[derive(Default)]
struct Lineage<'a> {
    scans: Vec<&'a TableSource>,
    /// Pairs of columns equal on every row.
    equal: Vec<(Origin, Origin)>,
}

impl<'a> Lineage<'a> {
    /// The origin of each of `plan`'s columns, where it is a scanned table's column as it is.
    fn origins(&mut self, plan: &'a LogicalPlan) -> Vec<Option<Origin>> {
        match plan {
            LogicalPlan::Scan { source, projection, .. } => {
                let scan = self.scans.len();
                self.scans.push(source);
                projection.iter().map(|c| Some((scan, *c))).collect()
            }
            LogicalPlan::Filter { input, predicate } => {
                let origins = self.origins(input);
                let schema = input.schema();
                for p in predicate.clone().conjuncts() {
                    if let Expr::Binary { op: BinaryOp::Eq, left, right } = &p {
                        if exact(left, &schema) {
                            self.note_equal(origins.get(column(left)).copied().flatten(), origins.get(column(right)).copied().flatten());
                        }
                    }
                }
                origins
            }
            LogicalPlan::Project { input, exprs, .. } => {
                let below = self.origins(input);
                exprs.iter().map(|e| below.get(column(e)).copied().flatten()).collect()
            }
            LogicalPlan::Sort { input, .. } | LogicalPlan::Limit { input, .. } => self.origins(input),
            LogicalPlan::Join { left, right, kind, on, .. } => {
                let mut origins = self.origins(left);
                let right_origins = self.origins(right);
                if *kind == JoinKind::Inner {
                    let schema = left.schema();
                    for (l, r) in on.iter().filter(|(l, _)| exact(l, &schema)) {
                        self.note_equal(origins.get(column(l)).copied().flatten(), right_origins.get(column(r)).copied().flatten());
                    }
                }
                if kind.keeps_right() {
                    origins.extend(right_origins);
                }
                origins.resize(plan.schema().fields().len(), None);
                origins
            }
            other => vec![None; other.schema().fields().len()],
        }
    }

    fn note_equal(&mut self, a: Option<Origin>, b: Option<Origin>) {
        if let (Some(a), Some(b)) = (a, b) {
            self.equal.push((a, b));
        }
    }
}

/// Whether values equal to `e`'s are the same value: not floats (0.0 = -0.0).
fn exact(e: &Expr, schema: &Schema) -> bool {
    !e.data_type(schema).is_floating()
}

/// The column an expression is, or a position no plan has.
fn column(e: &Expr) -> usize {
    if let Expr::Column(c) = e { *c } else { usize::MAX }
}

/// What the keys chosen so far determine.
struct Determined<'l, 'a> {
    lineage: &'l Lineage<'a>,
    /// Scans whose every column is determined (a key of theirs is).
    scans: HashSet<usize>,
    columns: HashSet<Origin>,
}

impl Determined<'_, '_> {
    fn holds(&self, o: Origin) -> bool {
        self.scans.contains(&o.0) || self.columns.contains(&o)
    }

    /// Adds `o` and everything it determines: through equal columns, and a whole scan where a
    /// column determined is a key of its table.
    fn add(&mut self, o: Origin) {
        let mut pending = vec![o];
        while let Some(o) = pending.pop() {
            if self.holds(o) {
                continue;
            }
            self.columns.insert(o);
            // Each origin is measured once: `holds` turns it away from then on (and the table keeps
            // the measurement for later queries).
            let key = crate::stats::is_key(self.lineage.scans[o.0], o.1);
            if key {
                self.scans.insert(o.0);
            }
            // What is now determined: `o`, or its whole scan when `o` is a key; columns equal to
            // those follow.
            let determined = |x: Origin| if key { x.0 == o.0 } else { x == o };
            for (a, b) in &self.lineage.equal {
                if determined(*a) {
                    pending.push(*b);
                }
                if determined(*b) {
                    pending.push(*a);
                }
            }
        }
    }
}

/// Rewrites every aggregate over bounded input some of whose group keys depend on the others.
pub fn carry_dependent_keys(plan: LogicalPlan) -> Result<LogicalPlan> {
    map_plan(plan, &mut |p| {
        Ok(match p {
            LogicalPlan::Aggregate { input, group, aggs, schema }
                if !group.is_empty() && !aggs.iter().any(|a| a.distinct) && crate::join_order::orderable(&input) && crate::join_order::bounded(&input) =>
            {
                match dependent_keys(&input, &group) {
                    Some(dependent) => carry(*input, group, aggs, &schema, &dependent),
                    None => LogicalPlan::Aggregate { input, group, aggs, schema },
                }
            }
            other => other,
        })
    })
}

/// Which group keys (positions in `group`) depend on the others; `None` if none does.
fn dependent_keys(input: &LogicalPlan, group: &[Expr]) -> Option<Vec<usize>> {
    let mut lineage = Lineage::default();
    let origins = lineage.origins(input);
    let key_origin = |g: &Expr| origins.get(column(g)).copied().flatten();
    if group.iter().filter(|g| key_origin(g).is_some()).count() < 2 {
        return None;
    }
    let mut determined = Determined { lineage: &lineage, scans: HashSet::new(), columns: HashSet::new() };
    // Integer keys first: a table's key is mostly an integer, and once it is kept the strings of
    // its row are carried.
    let schema = input.schema();
    let mut order: Vec<usize> = (0..group.len()).collect();
    order.sort_by_key(|g| !group[*g].data_type(&schema).is_integer());
    let mut dependent = Vec::new();
    for g in order {
        match key_origin(&group[g]) {
            Some(o) if determined.holds(o) => dependent.push(g),
            Some(o) => determined.add(o),
            None => {}
        }
    }
    dependent.sort_unstable();
    (!dependent.is_empty()).then_some(dependent)
}

/// The aggregate grouped by the keys not in `dependent`, those carried as `any_value`, under a
/// projection giving back the original columns in order.
fn carry(input: LogicalPlan, group: Vec<Expr>, aggs: Vec<AggCall>, schema: &arrow::datatypes::SchemaRef, dependent: &[usize]) -> LogicalPlan {
    let kept: Vec<usize> = (0..group.len()).filter(|g| !dependent.contains(g)).collect();
    let field = |i: usize| schema.field(i).as_ref().clone();
    let mut fields: Vec<Field> = kept.iter().map(|g| field(*g)).collect();
    fields.extend((0..aggs.len()).map(|a| field(group.len() + a)));
    fields.extend(dependent.iter().map(|g| field(*g)));
    let (n_kept, n_aggs) = (kept.len(), aggs.len());
    let carried: Vec<AggCall> = dependent
        .iter()
        .map(|g| AggCall { func: AggFunc::AnyValue, args: vec![group[*g].clone()], distinct: false, ty: schema.field(*g).data_type().clone() })
        .collect();
    let new_group: Vec<Expr> = kept.iter().map(|g| group[*g].clone()).collect();
    let aggregate = LogicalPlan::Aggregate {
        input: Box::new(input),
        group: new_group,
        aggs: aggs.into_iter().chain(carried).collect(),
        schema: Arc::new(Schema::new(fields)),
    };
    let exprs: Vec<Expr> = (0..schema.fields().len())
        .map(|c| {
            Expr::Column(if c >= group.len() {
                n_kept + (c - group.len())
            } else if let Some(k) = kept.iter().position(|g| *g == c) {
                k
            } else {
                n_kept + n_aggs + dependent.iter().position(|g| *g == c).unwrap_or_default()
            })
        })
        .collect();
    LogicalPlan::Project { input: Box::new(aggregate), exprs, schema: schema.clone() }
}
