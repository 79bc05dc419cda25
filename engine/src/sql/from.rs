//! Binding the FROM clause: tables, views, CTEs, derived tables, table functions and joins.

use std::sync::Arc;

use arrow::datatypes::Schema;
use riffle_formats::{CsvOptions, FileFormat};
use sqlparser::ast::{self, TableFactor};

use super::expr::{expr_pos, span_pos};
use super::{alias_columns, join, ExprContext, Scope};
use crate::catalog::{CatalogEntry, TableSource};
use crate::error::{sql_error, Result, RiffleError};
use crate::logical::{BinaryOp, Expr, JoinKind, LogicalPlan, WindowKind, WindowSpec};

use super::Binder;

/// A scan of every column of `source`.
pub fn scan(name: &str, source: Arc<TableSource>) -> LogicalPlan {
    let schema = source.schema.clone();
    let projection = (0..schema.fields().len()).collect();
    LogicalPlan::Scan { name: name.to_string(), source, projection, filters: vec![], schema }
}

impl Binder<'_> {
    pub(super) fn bind_from(&mut self, from: &[ast::TableWithJoins]) -> Result<(LogicalPlan, Scope)> {
        let mut acc: Option<(LogicalPlan, Scope)> = None;
        for twj in from {
            let item = self.bind_table_with_joins(twj)?;
            acc = Some(match acc {
                None => item,
                Some((lp, ls)) => {
                    let scope = ls.join(&item.1);
                    (join(lp, item.0, JoinKind::Inner, None), scope)
                }
            });
        }
        Ok(acc.unwrap_or_else(|| {
            // SELECT without FROM reads one row of no columns.
            let schema = Arc::new(Schema::empty());
            (LogicalPlan::Values { rows: vec![vec![]], schema }, Scope::default())
        }))
    }

    fn bind_table_with_joins(&mut self, twj: &ast::TableWithJoins) -> Result<(LogicalPlan, Scope)> {
        let (mut plan, mut scope) = self.bind_table_factor(&twj.relation)?;
        for j in &twj.joins {
            let (rp, rs) = self.bind_table_factor(&j.relation)?;
            use ast::JoinOperator as J;
            let (kind, constraint) = match &j.join_operator {
                J::Join(c) | J::Inner(c) => (JoinKind::Inner, Some(c)),
                J::Left(c) | J::LeftOuter(c) => (JoinKind::Left, Some(c)),
                J::Right(c) | J::RightOuter(c) => (JoinKind::Right, Some(c)),
                J::FullOuter(c) => (JoinKind::Full, Some(c)),
                J::CrossJoin(_) => (JoinKind::Inner, None),
                J::Semi(c) | J::LeftSemi(c) => (JoinKind::Semi, Some(c)),
                J::Anti(c) | J::LeftAnti(c) => (JoinKind::Anti, Some(c)),
                other => return Err(RiffleError::NotSupported(format!("join {other:?}"))),
            };
            let both = scope.join(&rs);
            let filter = match constraint {
                None | Some(ast::JoinConstraint::None) => None,
                Some(ast::JoinConstraint::On(e)) => {
                    let b = self.bind_expr(e, &mut ExprContext { scope: &both, aggs: None })?;
                    Some(self.coerce(b, &arrow::datatypes::DataType::Boolean, &both).map_err(|err| sql_error(err.to_string(), expr_pos(e)))?)
                }
                Some(ast::JoinConstraint::Using(cols)) => {
                    let names: Vec<String> = cols.iter().map(|c| c.to_string()).collect();
                    Some(self.using(&scope, &rs, &names)?)
                }
                Some(ast::JoinConstraint::Natural) => {
                    let names: Vec<String> = scope
                        .columns
                        .iter()
                        .filter(|c| !c.name.is_empty() && rs.columns.iter().any(|r| r.name.eq_ignore_ascii_case(&c.name)))
                        .map(|c| c.name.clone())
                        .collect();
                    if names.is_empty() { None } else { Some(self.using(&scope, &rs, &names)?) }
                }
                Some(other) => return Err(RiffleError::NotSupported(format!("join constraint {other:?}"))),
            };
            let hide_right_using = matches!(constraint, Some(ast::JoinConstraint::Using(_) | ast::JoinConstraint::Natural));
            let new_scope = if kind.keeps_right() {
                let mut right = rs.clone();
                if hide_right_using && kind != JoinKind::Full {
                    // USING columns appear once; the right copy stays reachable by its qualifier only.
                    for c in &mut right.columns {
                        if scope.columns.iter().any(|l| l.name.eq_ignore_ascii_case(&c.name)) {
                            c.using_duplicate = true;
                        }
                    }
                }
                scope.join(&right)
            } else {
                scope.clone()
            };
            plan = join(plan, rp, kind, filter);
            scope = new_scope;
        }
        Ok((plan, scope))
    }

    fn using(&mut self, left: &Scope, right: &Scope, names: &[String]) -> Result<Expr> {
        let both = left.join(right);
        let mut parts = Vec::new();
        for n in names {
            let l = match left.lookup(None, n) {
                super::scope::Lookup::Found(i) => i,
                _ => return Err(RiffleError::plan(format!("USING column '{n}' is not in the left side of the join"))),
            };
            let r = match right.lookup(None, n) {
                super::scope::Lookup::Found(i) => i + left.len(),
                _ => return Err(RiffleError::plan(format!("USING column '{n}' is not in the right side of the join"))),
            };
            parts.push(self.binary(BinaryOp::Eq, Expr::Column(l), Expr::Column(r), &both)?);
        }
        Ok(Expr::conjunction(parts).unwrap_or(Expr::Literal(crate::logical::Scalar::boolean(true))))
    }

    fn bind_table_factor(&mut self, f: &TableFactor) -> Result<(LogicalPlan, Scope)> {
        match f {
            TableFactor::Table { name, alias, args: None, .. } => {
                let (plan, scope, key) = self.named_relation(name)?;
                let qualifier = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or(key);
                renamed(plan, scope.with_qualifier(&qualifier), alias.as_ref(), &qualifier)
            }
            TableFactor::TableFunction { expr: ast::Expr::Function(f), alias } => {
                let name = f.name.to_string().to_ascii_lowercase();
                let (plan, scope) = self.window_function(&name, f)?;
                match alias {
                    Some(a) => renamed(plan, scope, Some(a), &a.name.value),
                    None => Ok((plan, scope)),
                }
            }
            TableFactor::Table { name, alias, args: Some(args), .. } => {
                let fname = name.to_string().to_ascii_lowercase();
                // The same call twice in a statement (a view used twice) reads one table: the same
                // files, and a subplan over it can be shared (`crate::share`).
                let call = format!("{fname}({})", args.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
                let source = match self.table_functions.iter().find(|(c, _)| *c == call) {
                    Some((_, source)) => source.clone(),
                    None => {
                        let source = Arc::new(self.table_function(&fname, &args.args)?);
                        self.table_functions.push((call, source.clone()));
                        source
                    }
                };
                let qualifier = alias.as_ref().map(|a| a.name.value.clone()).unwrap_or_else(|| fname.clone());
                let plan = scan(&fname, source);
                let scope = Scope::from_schema(&plan.schema(), Some(&qualifier));
                renamed(plan, scope, alias.as_ref(), &qualifier)
            }
            TableFactor::Derived { subquery, alias, lateral, .. } => {
                if *lateral {
                    return Err(RiffleError::NotSupported("LATERAL".into()));
                }
                let (plan, scope) = self.bind_query(subquery)?;
                match alias {
                    Some(a) => renamed(plan, scope, Some(a), &a.name.value),
                    None => Ok((plan, scope)),
                }
            }
            TableFactor::NestedJoin { table_with_joins, alias } => {
                let (plan, scope) = self.bind_table_with_joins(table_with_joins)?;
                match alias {
                    Some(a) => renamed(plan, scope, Some(a), &a.name.value),
                    None => Ok((plan, scope)),
                }
            }
            other => Err(RiffleError::NotSupported(format!("FROM item {other}"))),
        }
    }

    /// A table, view or CTE by name: its plan, its columns (unqualified) and the lower-cased name.
    fn named_relation(&mut self, name: &ast::ObjectName) -> Result<(LogicalPlan, Scope, String)> {
        let ident = name.0.last().and_then(|p| p.as_ident()).cloned();
        let table = name.to_string();
        let key = ident.as_ref().map(|i| i.value.to_ascii_lowercase()).unwrap_or_else(|| table.to_ascii_lowercase());
        if let Some((_, p, s)) = self.ctes.iter().rev().find(|(n, _, _)| *n == key) {
            return Ok((p.clone(), s.clone(), key));
        }
        match self.catalog.get(&key) {
            Some(CatalogEntry::Table(source)) => {
                let plan = scan(&key, source.clone());
                let scope = Scope::from_schema(&source.schema, None);
                Ok((plan, scope, key))
            }
            Some(CatalogEntry::View(q)) => {
                let q = q.clone();
                let (plan, scope) = self.bind_query(&q)?;
                Ok((plan, scope, key))
            }
            None => {
                let pos = ident.as_ref().and_then(|i| span_pos(&i.span));
                Err(sql_error(self.catalog.unknown(&table), pos))
            }
        }
    }

    /// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), size [, offset]))`, `HOP(…, slide, size [, offset])`,
    /// `CUMULATE(…, step, size [, offset])`, with positional or Flink's named arguments (`DATA`,
    /// `TIMECOL`, `SIZE`, `SLIDE`, `STEP`, `OFFSET`). The data is a table, view or CTE by name, or a
    /// subquery.
    fn window_function(&mut self, name: &str, f: &ast::Function) -> Result<(LogicalPlan, Scope)> {
        // SESSION's kind is set apart below; it takes a gap, not a size.
        let (kind, params): (WindowKind, &[&str]) = match name {
            "tumble" => (WindowKind::Tumble, &["data", "timecol", "size", "offset"]),
            "hop" => (WindowKind::Hop, &["data", "timecol", "slide", "size", "offset"]),
            "cumulate" => (WindowKind::Cumulate, &["data", "timecol", "step", "size", "offset"]),
            "session" => (WindowKind::Tumble, &["data", "timecol", "gap"]),
            other => {
                let hint = crate::error::closest(other, ["tumble", "hop", "cumulate"]).map(|c| format!("; did you mean '{c}'?")).unwrap_or_default();
                return Err(RiffleError::plan(format!("table function '{other}' does not exist{hint}")));
            }
        };
        let session = name == "session";
        let usage = match kind {
            _ if session => "SESSION(TABLE t [PARTITION BY k | PARTITION BY (k1, k2)], DESCRIPTOR(ts), gap)",
            WindowKind::Tumble => "TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL '10' MINUTES [, offset])",
            WindowKind::Hop => "HOP(TABLE t, DESCRIPTOR(ts), slide, size [, offset])",
            WindowKind::Cumulate => "CUMULATE(TABLE t, DESCRIPTOR(ts), step, size [, offset])",
        };
        let ast::FunctionArguments::List(list) = &f.args else {
            return Err(RiffleError::plan(format!("{} needs arguments: {usage}", name.to_uppercase())));
        };
        let mut args: Vec<Option<&ast::Expr>> = vec![None; params.len()];
        // SESSION's `PARTITION BY` arrives as a `SESSION_KEYS(…)` argument (see sql/flink.rs).
        let is_keys = |a: &ast::FunctionArg| {
            matches!(a, ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Function(k))) if k.name.to_string().eq_ignore_ascii_case("session_keys"))
        };
        let session_keys: Vec<ast::Expr> = list
            .args
            .iter()
            .filter(|a| is_keys(a))
            .flat_map(|a| match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Function(k))) => match &k.args {
                    ast::FunctionArguments::List(l) => l
                        .args
                        .iter()
                        .flat_map(|x| match x {
                            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Tuple(items))) => items.clone(),
                            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Nested(e))) => vec![(**e).clone()],
                            ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => vec![e.clone()],
                            _ => vec![],
                        })
                        .collect::<Vec<_>>(),
                    _ => vec![],
                },
                _ => vec![],
            })
            .collect();
        let plain_args: Vec<&ast::FunctionArg> = list.args.iter().filter(|a| !is_keys(a)).collect();
        for (i, a) in plain_args.into_iter().enumerate() {
            let (slot, e) = match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) => (i, e),
                ast::FunctionArg::Named { name: n, arg: ast::FunctionArgExpr::Expr(e), .. } => (param_slot(params, &n.value, usage)?, e),
                ast::FunctionArg::ExprNamed { name: ast::Expr::Identifier(n), arg: ast::FunctionArgExpr::Expr(e), .. } => {
                    (param_slot(params, &n.value, usage)?, e)
                }
                other => return Err(RiffleError::plan(format!("unexpected argument {other}: {usage}"))),
            };
            let Some(place) = args.get_mut(slot) else {
                return Err(RiffleError::plan(format!("too many arguments: {usage}")));
            };
            *place = Some(e);
        }
        let required = |k: usize| args[k].ok_or_else(|| RiffleError::plan(format!("missing argument {}: {usage}", params[k].to_uppercase())));
        let (plan, scope) = match required(0)? {
            ast::Expr::Identifier(id) => {
                let (plan, scope, _) = self.named_relation(&ast::ObjectName::from(vec![id.clone()]))?;
                (plan, scope)
            }
            ast::Expr::CompoundIdentifier(ids) => {
                let (plan, scope, _) = self.named_relation(&ast::ObjectName::from(ids.clone()))?;
                (plan, scope)
            }
            ast::Expr::Subquery(q) => self.bind_query(q)?,
            other => return Err(sql_error(format!("the data of a window function is TABLE name or a subquery: {usage}"), expr_pos(other))),
        };
        let time = match required(1)? {
            ast::Expr::Function(d) if d.name.to_string().eq_ignore_ascii_case("descriptor") => match &d.args {
                ast::FunctionArguments::List(l) if l.args.len() == 1 => match &l.args[0] {
                    ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::Identifier(id))) => {
                        match self.bind_expr(&ast::Expr::Identifier(id.clone()), &mut ExprContext { scope: &scope, aggs: None })? {
                            Expr::Column(c) => c,
                            _ => return Err(RiffleError::plan(format!("DESCRIPTOR names a column: {usage}"))),
                        }
                    }
                    _ => return Err(RiffleError::plan(format!("DESCRIPTOR names one column: {usage}"))),
                },
                _ => return Err(RiffleError::plan(format!("DESCRIPTOR names one column: {usage}"))),
            },
            other => return Err(sql_error(format!("the time column is given as DESCRIPTOR(column): {usage}"), expr_pos(other))),
        };
        let time_type = plan.schema().field(time).data_type().clone();
        if !matches!(time_type, arrow::datatypes::DataType::Timestamp(..)) {
            return Err(RiffleError::plan(format!(
                "the time column '{}' of {} must be a TIMESTAMP, not {}",
                plan.schema().field(time).name(),
                name.to_uppercase(),
                crate::types::sql_name(&time_type)
            )));
        }
        let duration = |k: usize| -> Result<i64> {
            let e = required(k)?;
            let micros = self.interval_micros(e)?;
            if micros <= 0 && params[k] != "offset" {
                return Err(sql_error(format!("the window {} must be positive, got {e}", params[k].to_uppercase()), expr_pos(e)));
            }
            Ok(micros)
        };
        if session {
            let gap = duration(2)?;
            let keys = session_keys
                .iter()
                .map(|k| self.bind_expr(k, &mut ExprContext { scope: &scope, aggs: None }))
                .collect::<Result<Vec<_>>>()?;
            let schema = crate::logical::window_schema(&plan.schema());
            let plan = LogicalPlan::SessionTvf { input: Box::new(plan), keys, time, gap, schema: schema.clone() };
            let mut columns = scope.columns.clone();
            columns.extend(Scope::from_schema(&schema, None).columns.into_iter().skip(scope.columns.len()));
            return Ok((plan, Scope { columns }));
        }
        let (size, step) = match kind {
            WindowKind::Tumble => {
                let size = duration(2)?;
                (size, size)
            }
            WindowKind::Hop | WindowKind::Cumulate => (duration(3)?, duration(2)?),
        };
        let offset = if args[params.len() - 1].is_some() { duration(params.len() - 1)? } else { 0 };
        if kind == WindowKind::Cumulate && size % step != 0 {
            return Err(RiffleError::plan(format!(
                "CUMULATE's size ({}) must be a whole multiple of its step ({})",
                crate::format::duration(size),
                crate::format::duration(step)
            )));
        }
        let event_time = plan.event_time_column() == Some(time);
        let schema = crate::logical::window_schema(&plan.schema());
        let window = WindowSpec { kind, size, step, offset };
        let plan = LogicalPlan::WindowTvf { input: Box::new(plan), window, time, event_time, schema: schema.clone() };
        let mut columns = scope.columns.clone();
        columns.extend(Scope::from_schema(&schema, None).columns.into_iter().skip(scope.columns.len()));
        Ok((plan, Scope { columns }))
    }

    /// `read_parquet('glob')`, `read_csv('glob', header=true, delim='|')`, `read_json(…)`, `read_arrow(…)`.
    fn table_function(&mut self, name: &str, args: &[ast::FunctionArg]) -> Result<TableSource> {
        let mut path: Option<String> = None;
        let mut options: Vec<(String, String)> = Vec::new();
        for a in args {
            match a {
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(e)) if path.is_none() => {
                    path = Some(string_literal(e)?);
                }
                ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(ast::Expr::BinaryOp {
                    left,
                    op: ast::BinaryOperator::Eq,
                    right,
                })) if matches!(left.as_ref(), ast::Expr::Identifier(_)) => {
                    // `read_csv('f', header = false)` parses as a comparison.
                    options.push((left.to_string().to_ascii_lowercase(), string_literal(right)?));
                }
                ast::FunctionArg::Named { name, arg: ast::FunctionArgExpr::Expr(e), .. } => {
                    options.push((name.value.to_ascii_lowercase(), string_literal(e)?));
                }
                ast::FunctionArg::ExprNamed { name: ast::Expr::Identifier(id), arg: ast::FunctionArgExpr::Expr(e), .. } => {
                    options.push((id.value.to_ascii_lowercase(), string_literal(e)?));
                }
                other => return Err(RiffleError::plan(format!("unexpected argument {other} to {name}()"))),
            }
        }
        if name == "gensort" {
            return gensort_table(path.as_deref(), &options);
        }
        let path = path.ok_or_else(|| RiffleError::plan(format!("{name}() needs a path, e.g. {name}('data/*.parquet')")))?;
        let format = match name {
            "read_parquet" | "parquet_scan" => FileFormat::Parquet,
            "read_csv" | "read_csv_auto" => {
                let mut o = CsvOptions::default();
                for (k, v) in &options {
                    match k.as_str() {
                        "header" => o.header = parse_bool(v)?,
                        "delim" | "sep" | "delimiter" => o.delimiter = single_byte(v, k)?,
                        "quote" => o.quote = single_byte(v, k)?,
                        other => return Err(RiffleError::plan(format!("unknown read_csv option '{other}' (known: header, delim, quote)"))),
                    }
                }
                FileFormat::Csv(o)
            }
            "read_json" | "read_json_auto" | "read_ndjson" => FileFormat::Json,
            "read_arrow" | "read_ipc" => FileFormat::Arrow,
            "read_gensort" => FileFormat::Gensort,
            other => {
                let hint = crate::error::closest(other, ["read_parquet", "read_csv", "read_json", "read_arrow", "read_gensort", "gensort"])
                    .map(|c| format!("; did you mean '{c}'?"))
                    .unwrap_or_default();
                return Err(RiffleError::plan(format!("table function '{other}' does not exist{hint}")));
            }
        };
        if name != "read_csv" && name != "read_csv_auto" {
            if let Some((k, _)) = options.first() {
                return Err(RiffleError::plan(format!("{name}() has no option '{k}'")));
            }
        }
        TableSource::files(&path, Some(format), None)
    }
}

/// `gensort(records, seed = 0)`: sort-benchmark records made on the fly (key, payload).
fn gensort_table(records: Option<&str>, options: &[(String, String)]) -> Result<TableSource> {
    let usage = "gensort(records [, seed = S]), e.g. gensort(1000000)";
    let records: u64 = records
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| RiffleError::plan(format!("gensort() needs a record count: {usage}")))?;
    let mut seed = 0;
    for (k, v) in options {
        match k.as_str() {
            "seed" => seed = v.parse().map_err(|_| RiffleError::plan(format!("gensort() seed must be a whole number, got '{v}'")))?,
            other => return Err(RiffleError::plan(format!("gensort() has no option '{other}': {usage}"))),
        }
    }
    Ok(TableSource::generated(records, riffle_formats::gensort::RecordGenerator { seed }))
}

/// The position of a named argument among a window function's parameters.
fn param_slot(params: &[&str], name: &str, usage: &str) -> Result<usize> {
    params.iter().position(|p| p.eq_ignore_ascii_case(name)).ok_or_else(|| RiffleError::plan(format!("unknown argument '{name}': {usage}")))
}

/// Applies a FROM item's alias: column names from `alias`, every column qualified by `qualifier`.
fn renamed(plan: LogicalPlan, scope: Scope, alias: Option<&ast::TableAlias>, qualifier: &str) -> Result<(LogicalPlan, Scope)> {
    match alias {
        Some(a) => alias_columns(plan, scope, a).map(|(p, s)| (p, s.with_qualifier(qualifier))),
        None => Ok((plan, scope)),
    }
}

pub fn parse_bool(v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(RiffleError::plan(format!("expected true or false, got '{other}'"))),
    }
}

pub fn single_byte(v: &str, what: &str) -> Result<u8> {
    let v = if v == "\\t" { "\t" } else { v };
    match v.as_bytes() {
        [b] => Ok(*b),
        _ => Err(RiffleError::plan(format!("option '{what}' must be one character, got '{v}'"))),
    }
}

fn string_literal(e: &ast::Expr) -> Result<String> {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => Ok(s.clone()),
            ast::Value::Number(n, _) => Ok(n.clone()),
            ast::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(sql_error(format!("expected a string, got {other}"), expr_pos(e))),
        },
        ast::Expr::Identifier(id) => Ok(id.value.clone()),
        other => Err(sql_error(format!("expected a constant, got {other}"), expr_pos(e))),
    }
}
