//! Subqueries become joins: EXISTS / IN as semi joins, NOT EXISTS / NOT IN as anti joins (null-aware
//! for NOT IN), scalar subqueries as left joins against one row, or, when correlated through equalities,
//! against the subquery grouped by its correlation keys. Nothing is re-executed per row.

use sqlparser::ast::{self, SetExpr};

use super::expr::expr_pos;
use super::{and_all, conjuncts, factored_conjuncts, contains_aggregate, join, resolves_in, Binder, ExprContext, Scope, ScopeColumn, SubqueryJoin};
use crate::error::{sql_error, Result, RiffleError};
use crate::functions::ScalarFunc;
use crate::logical::{BinaryOp, Expr, JoinKind, LogicalPlan};
use crate::types::{common_type, sql_name};

/// A subquery whose WHERE refers to the enclosing query.
struct Correlated {
    select: ast::Select,
    /// WHERE conjuncts over the subquery's own FROM.
    local: Vec<ast::Expr>,
    /// WHERE conjuncts that name outer columns.
    correlated: Vec<ast::Expr>,
    from_scope: Scope,
}

impl Binder<'_> {
    pub(super) fn bind_where(&mut self, plan: LogicalPlan, scope: Scope, w: &ast::Expr) -> Result<(LogicalPlan, Scope)> {
        let mut plan = plan;
        let mut scope = scope;
        let mut preds = Vec::new();
        for c in conjuncts(w) {
            match c {
                ast::Expr::Exists { subquery, negated } => {
                    plan = self.semi_join(plan, &scope, subquery, None, *negated)?;
                }
                ast::Expr::In { expr, target: ast::InTarget::Subquery(q), negated, .. } => {
                    plan = self.semi_join(plan, &scope, q, Some(expr), *negated)?;
                }
                ast::Expr::UnaryOp { op: ast::UnaryOperator::Not, expr } if matches!(expr.as_ref(), ast::Expr::Exists { .. }) => {
                    if let ast::Expr::Exists { subquery, negated } = expr.as_ref() {
                        plan = self.semi_join(plan, &scope, subquery, None, !*negated)?;
                    }
                }
                other => {
                    let b = self.bind_expr_with_subqueries(other, &mut plan, &mut scope, None)?;
                    let b = self
                        .coerce(b, &arrow::datatypes::DataType::Boolean, &scope)
                        .map_err(|e| sql_error(e.to_string(), expr_pos(other)))?;
                    preds.push(b);
                }
            }
        }
        if let Some(p) = Expr::conjunction(preds) {
            plan = LogicalPlan::Filter { input: Box::new(plan), predicate: p };
        }
        Ok((plan, scope))
    }

    /// Binds `q` on its own; if that fails because it names columns of `outer`, splits it for
    /// decorrelation.
    fn classify(&mut self, q: &ast::Query, outer: &Scope) -> Result<std::result::Result<(LogicalPlan, Scope), Correlated>> {
        let err = match self.bind_query(q) {
            Ok(bound) => return Ok(Ok(bound)),
            Err(e) => e,
        };
        let SetExpr::Select(select) = q.body.as_ref() else { return Err(err) };
        let Some(selection) = &select.selection else { return Err(err) };
        if q.with.is_some() || q.limit_clause.is_some() {
            return Err(err);
        }
        let (_, from_scope) = self.bind_from(&select.from)?;
        let both = outer.join(&from_scope);
        let (mut local, mut correlated) = (Vec::new(), Vec::new());
        for c in factored_conjuncts(selection) {
            if resolves_in(&c, &from_scope) {
                local.push(c);
            } else if resolves_in(&c, &both) {
                correlated.push(c);
            } else {
                return Err(err);
            }
        }
        if correlated.is_empty() {
            return Err(err);
        }
        Ok(Err(Correlated { select: select.as_ref().clone(), local, correlated, from_scope }))
    }

    /// The subquery's FROM filtered by its own conditions, and its correlated conditions bound over
    /// the outer columns followed by the subquery's.
    fn bind_correlated(&mut self, c: &Correlated, outer: &Scope) -> Result<(LogicalPlan, Scope, Vec<Expr>)> {
        let (fplan, fscope) = self.bind_from(&c.select.from)?;
        let (right, rscope) = match and_all(c.local.clone()) {
            Some(w) => self.bind_where(fplan, fscope, &w)?,
            None => (fplan, fscope),
        };
        let both = outer.join(&rscope);
        let mut conds = Vec::new();
        for corr in &c.correlated {
            let b = self.bind_expr(corr, &mut ExprContext { scope: &both, aggs: None })?;
            conds.push(self.coerce(b, &arrow::datatypes::DataType::Boolean, &both)?);
        }
        Ok((right, rscope, conds))
    }

    fn semi_join(
        &mut self,
        plan: LogicalPlan,
        scope: &Scope,
        q: &ast::Query,
        in_expr: Option<&ast::Expr>,
        negated: bool,
    ) -> Result<LogicalPlan> {
        let kind = if negated { JoinKind::Anti } else { JoinKind::Semi };
        match self.classify(q, scope)? {
            Ok((sub, sub_scope)) => {
                let Some(x) = in_expr else {
                    return Ok(join(plan, sub, kind, None));
                };
                if sub_scope.len() != 1 {
                    return Err(sql_error(
                        format!("IN subquery must return one column, it returns {}", sub_scope.len()),
                        expr_pos(x),
                    ));
                }
                let xb = self.bind_expr(x, &mut ExprContext { scope, aggs: None })?;
                let (xb, yb) = self.compare_pair(xb, scope, Expr::Column(0), &sub_scope)?;
                let schema = crate::logical::join_schema(&plan.schema(), &sub.schema(), kind);
                Ok(LogicalPlan::Join {
                    left: Box::new(plan),
                    right: Box::new(sub),
                    kind,
                    on: vec![(xb, yb)],
                    filter: None,
                    null_aware: negated,
                    schema,
                })
            }
            Err(c) => {
                if !matches!(c.select.group_by, ast::GroupByExpr::Expressions(ref g, _) if g.is_empty())
                    || c.select.having.is_some()
                    || c.select.projection.iter().any(|i| match i {
                        ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. } => contains_aggregate(e),
                        _ => false,
                    })
                {
                    return Err(RiffleError::NotSupported(
                        "a correlated EXISTS/IN subquery with aggregates".into(),
                    ));
                }
                if negated && in_expr.is_some() {
                    return Err(RiffleError::NotSupported("a correlated NOT IN subquery".into()));
                }
                let (right, rscope, mut conds) = self.bind_correlated(&c, scope)?;
                if let Some(x) = in_expr {
                    let item = match c.select.projection.first() {
                        Some(ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. })
                            if c.select.projection.len() == 1 =>
                        {
                            e.clone()
                        }
                        _ => return Err(sql_error("IN subquery must return one column", expr_pos(x))),
                    };
                    let yb = self.bind_expr(&item, &mut ExprContext { scope: &rscope, aggs: None })?;
                    let xb = self.bind_expr(x, &mut ExprContext { scope, aggs: None })?;
                    let (xb, yb) = self.compare_pair(xb, scope, yb, &rscope)?;
                    let width = scope.len();
                    conds.push(Expr::binary(BinaryOp::Eq, xb, yb.remap(&|i| i + width)));
                }
                Ok(join(plan, right, kind, Expr::conjunction(conds)))
            }
        }
    }

    /// EXISTS / IN (subquery) inside an expression (under OR, in SELECT): registers a mark join and
    /// returns the column that will hold the mark. `NOT` around it keeps SQL's answer, NULL included.
    pub(super) fn mark_subquery(&mut self, q: &ast::Query, in_expr: Option<&ast::Expr>, cx: &mut ExprContext) -> Result<Expr> {
        let outer = cx.scope;
        let index = outer.len() + self.subquery_joins.width();
        let mark_scope = Scope {
            columns: vec![ScopeColumn {
                qualifier: None,
                name: String::new(),
                ty: arrow::datatypes::DataType::Boolean,
                nullable: true,
                using_duplicate: false,
            }],
        };
        let join = match self.classify(q, outer)? {
            Ok((sub, sub_scope)) => {
                let mut on = vec![];
                if let Some(x) = in_expr {
                    if sub_scope.len() != 1 {
                        return Err(sql_error(
                            format!("IN subquery must return one column, it returns {}", sub_scope.len()),
                            expr_pos(x),
                        ));
                    }
                    let xb = self.bind_expr(x, &mut ExprContext { scope: outer, aggs: None })?;
                    on.push(self.compare_pair(xb, outer, Expr::Column(0), &sub_scope)?);
                }
                SubqueryJoin {
                    plan: sub,
                    scope: mark_scope,
                    kind: JoinKind::Mark,
                    on,
                    filter: None,
                    outer_width: outer.len(),
                    null_aware: in_expr.is_some(),
                }
            }
            Err(c) => {
                if in_expr.is_some() {
                    return Err(RiffleError::NotSupported(
                        "a correlated IN subquery outside a WHERE condition joined by AND (write it as EXISTS)".into(),
                    ));
                }
                if !matches!(c.select.group_by, ast::GroupByExpr::Expressions(ref g, _) if g.is_empty())
                    || c.select.having.is_some()
                {
                    return Err(RiffleError::NotSupported("a correlated EXISTS subquery with GROUP BY or HAVING".into()));
                }
                let (right, _, conds) = self.bind_correlated(&c, outer)?;
                SubqueryJoin {
                    plan: right,
                    scope: mark_scope,
                    kind: JoinKind::Mark,
                    on: vec![],
                    filter: Expr::conjunction(conds),
                    outer_width: outer.len(),
                    null_aware: false,
                }
            }
        };
        self.subquery_joins.joins.push(join);
        Ok(placeholder(index, arrow::datatypes::DataType::Boolean))
    }

    /// Casts a left and a right expression (over different scopes) to their common type.
    fn compare_pair(&self, l: Expr, ls: &Scope, r: Expr, rs: &Scope) -> Result<(Expr, Expr)> {
        let (lt, rt) = (l.data_type(&ls.schema()), r.data_type(&rs.schema()));
        let t = common_type(&lt, &rt)
            .ok_or_else(|| RiffleError::plan(format!("cannot compare {} with {}", sql_name(&lt), sql_name(&rt))))?;
        Ok((super::cast_to(l, &lt, &t)?, super::cast_to(r, &rt, &t)?))
    }

    /// A scalar subquery in an expression: registers the join that brings its value in and returns the
    /// column that will hold it.
    pub(super) fn scalar_subquery(&mut self, q: &ast::Query, cx: &mut ExprContext) -> Result<Expr> {
        let outer = cx.scope;
        let index = outer.len() + self.subquery_joins.width();
        match self.classify(q, outer)? {
            Ok((sub, sub_scope)) => {
                if sub_scope.len() != 1 {
                    return Err(RiffleError::plan(format!(
                        "a scalar subquery must return one column, this one returns {}",
                        sub_scope.len()
                    )));
                }
                let ty = sub_scope.columns[0].ty.clone();
                self.subquery_joins.joins.push(SubqueryJoin::single(sub, sub_scope, vec![], outer.len()));
                Ok(placeholder(index, ty))
            }
            Err(c) => {
                let item = match c.select.projection.as_slice() {
                    [ast::SelectItem::UnnamedExpr(e) | ast::SelectItem::ExprWithAlias { expr: e, .. }] => e.clone(),
                    _ => return Err(RiffleError::plan("a scalar subquery must return one column")),
                };
                let grouped = matches!(&c.select.group_by, ast::GroupByExpr::Expressions(g, _) if !g.is_empty());
                if !contains_aggregate(&item) || grouped {
                    return Err(RiffleError::NotSupported(
                        "a correlated scalar subquery must compute one aggregate without GROUP BY".into(),
                    ));
                }
                // Each correlated conjunct must be `inner = outer`.
                let mut inner_keys = Vec::new();
                let mut outer_keys = Vec::new();
                for corr in &c.correlated {
                    let ast::Expr::BinaryOp { left, op: ast::BinaryOperator::Eq, right } = corr else {
                        return Err(RiffleError::NotSupported(format!("correlated condition {corr} (only equalities)")));
                    };
                    let (inner, outer_side) = if resolves_in(left, &c.from_scope) && resolves_in(right, outer) {
                        (left, right)
                    } else if resolves_in(right, &c.from_scope) && resolves_in(left, outer) {
                        (right, left)
                    } else {
                        return Err(RiffleError::NotSupported(format!("correlated condition {corr}")));
                    };
                    inner_keys.push(inner.as_ref().clone());
                    outer_keys.push(outer_side.as_ref().clone());
                }
                let mut select = c.select.clone();
                select.selection = and_all(c.local.clone());
                select.group_by = ast::GroupByExpr::Expressions(inner_keys.clone(), vec![]);
                select.projection = std::iter::once(ast::SelectItem::UnnamedExpr(item.clone()))
                    .chain(inner_keys.iter().cloned().map(ast::SelectItem::UnnamedExpr))
                    .collect();
                let (sub, sub_scope) = self.bind_select(&select, &[])?;
                let mut pairs = Vec::new();
                for (k, o) in outer_keys.iter().enumerate() {
                    let ob = self.bind_expr(o, &mut ExprContext { scope: outer, aggs: None })?;
                    pairs.push(self.compare_pair(ob, outer, Expr::Column(k + 1), &sub_scope)?);
                }
                let ty = sub_scope.columns[0].ty.clone();
                self.subquery_joins.joins.push(SubqueryJoin::single(sub, sub_scope, pairs, outer.len()));
                let value = placeholder(index, ty);
                // COUNT over no rows is 0, but the left join gives NULL for a group that has no rows.
                let is_count = matches!(&item, ast::Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("count"));
                if is_count {
                    let zero = super::expr::lit_i64(0);
                    return Ok(Expr::Function {
                        func: ScalarFunc::Coalesce,
                        args: vec![value, zero],
                        ty: arrow::datatypes::DataType::Int64,
                    });
                }
                Ok(value)
            }
        }
    }
}

/// The subquery's value: a column the join will append past the current scope, typed so that
/// expressions around it can be bound before the join exists.
fn placeholder(index: usize, ty: arrow::datatypes::DataType) -> Expr {
    Expr::Cast { expr: Box::new(Expr::Column(index)), to: ty, safe: true }
}
