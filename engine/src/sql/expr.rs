//! Binding SQL expressions: names to column positions, literals to typed constants, operators to typed
//! calls with every needed cast made explicit.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use sqlparser::ast::{self, BinaryOperator, UnaryOperator, Value};

use super::scope::{Lookup, Scope};
use super::{AggCollector, Binder};
use crate::error::{closest, sql_error, Result, RiffleError};
use crate::eval::interval_literal;
use crate::functions::{function_names, ScalarFunc};
use crate::logical::{AggCall, AggFunc, BinaryOp, Expr, Frame, FrameBound, Scalar, WindowCall, WindowFunc};
use crate::types::{
    arithmetic_operand_types, common_type, decimal, decimal_parts, is_decimal, is_numeric, is_string, parse_sql_type, sql_name,
};

/// Aggregates are bound as placeholders `TRY_CAST(Column(AGG_BASE + i) AS type)` until the Aggregate
/// node exists.
pub const AGG_BASE: usize = 1 << 40;
/// Window functions likewise: `TRY_CAST(Column(WINDOW_BASE + i) AS type)` until the Window node
/// exists (above any aggregate's placeholders, so an aggregate's rewrite can tell them apart).
pub const WINDOW_BASE: usize = 1 << 41;

pub fn span_pos(span: &sqlparser::tokenizer::Span) -> Option<(u64, u64)> {
    (span.start.line > 0).then_some((span.start.line, span.start.column))
}

pub fn expr_pos(e: &ast::Expr) -> Option<(u64, u64)> {
    use sqlparser::ast::Spanned;
    span_pos(&e.span())
}

pub fn lit_i64(v: i64) -> Expr {
    Expr::Literal(Scalar(Arc::new(Int64Array::from(vec![v]))))
}

pub fn lit_str(v: &str) -> Expr {
    Expr::Literal(Scalar(Arc::new(StringArray::from(vec![v]))))
}

/// A constant compared with a decimal of a narrower type than both share (`price BETWEEN 8 AND 18`:
/// DECIMAL(7,2) against integers, compared as DECIMAL(12,2)), converted to that decimal's type if
/// its value fits there exactly: the comparison then casts one constant, not every row.
fn constant_in_decimal_type(constant: &Expr, constant_type: &DataType, other: &DataType, common: &DataType) -> Option<Expr> {
    let (Some((_, scale)), Some((_, common_scale))) = (decimal_parts(other), decimal_parts(common)) else { return None };
    if other == common || scale != common_scale || !constant.column_set().is_empty() || constant.is_volatile() {
        return None;
    }
    let Ok(Expr::Literal(value)) = crate::optimizer::fold(cast_to(constant.clone(), constant_type, common).ok()?) else { return None };
    let strict = arrow::compute::CastOptions { safe: false, ..Default::default() };
    let narrowed = crate::eval::cast_value(&value.0, other, &strict).ok()?;
    (narrowed.len() == 1 && narrowed.is_valid(0)).then(|| Expr::Literal(Scalar(narrowed)))
}

/// Wraps `e` in a cast to `to` unless it already has that type; constants are converted right away.
pub fn cast_to(e: Expr, from: &DataType, to: &DataType) -> Result<Expr> {
    if from == to {
        return Ok(e);
    }
    if let Expr::Literal(s) = &e {
        let options = arrow::compute::CastOptions { safe: false, ..Default::default() };
        let converted = crate::eval::cast_value(&s.0, to, &options)?;
        return Ok(Expr::Literal(Scalar(converted)));
    }
    Ok(Expr::Cast { expr: Box::new(e), to: to.clone(), safe: false })
}

fn parse_number(text: &str) -> Result<Scalar> {
    let arr: ArrayRef = if let Ok(v) = text.parse::<i32>() {
        Arc::new(Int32Array::from(vec![v]))
    } else if let Ok(v) = text.parse::<i64>() {
        Arc::new(Int64Array::from(vec![v]))
    } else if !text.contains(['e', 'E']) && text.chars().filter(|c| c.is_ascii_digit()).count() <= 38 {
        // Exact decimal literal, as DuckDB: DECIMAL(digits, digits after the point).
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let int = int.trim_start_matches('0');
        let digits = format!("{int}{frac}");
        let value: i128 = if digits.is_empty() { 0 } else {
            digits.parse().map_err(|_| RiffleError::plan(format!("invalid number {text}")))?
        };
        let scale = frac.len() as u8;
        let precision = (int.len() as u8 + scale).max(1);
        crate::eval::decimal_scalar(value, precision, scale as i8)?
    } else {
        let v: f64 = text.parse().map_err(|_| RiffleError::plan(format!("invalid number {text}")))?;
        Arc::new(Float64Array::from(vec![v]))
    };
    Ok(Scalar(arr))
}

fn date_literal(text: &str) -> Result<Scalar> {
    let d = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| RiffleError::plan(format!("invalid DATE '{text}': expected YYYY-MM-DD")))?;
    let days = (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()).num_days() as i32;
    Ok(Scalar(Arc::new(Date32Array::from(vec![days]))))
}

const AGGREGATES: &[&str] =
    &["count", "sum", "avg", "min", "max", "mean", "stddev", "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop", "any_value", "grouping"];

pub fn is_aggregate_name(name: &str) -> bool {
    AGGREGATES.contains(&name.to_ascii_lowercase().as_str())
}

fn binary_op(op: &BinaryOperator) -> Option<BinaryOp> {
    Some(match op {
        BinaryOperator::Plus => BinaryOp::Add,
        BinaryOperator::Minus => BinaryOp::Sub,
        BinaryOperator::Multiply => BinaryOp::Mul,
        BinaryOperator::Divide => BinaryOp::Div,
        BinaryOperator::DuckIntegerDivide | BinaryOperator::MyIntegerDivide => BinaryOp::IntDiv,
        BinaryOperator::Modulo => BinaryOp::Mod,
        BinaryOperator::Eq => BinaryOp::Eq,
        BinaryOperator::NotEq => BinaryOp::NotEq,
        BinaryOperator::Lt => BinaryOp::Lt,
        BinaryOperator::LtEq => BinaryOp::LtEq,
        BinaryOperator::Gt => BinaryOp::Gt,
        BinaryOperator::GtEq => BinaryOp::GtEq,
        BinaryOperator::And => BinaryOp::And,
        BinaryOperator::Or => BinaryOp::Or,
        BinaryOperator::StringConcat => BinaryOp::Concat,
        _ => return None,
    })
}

/// What an expression is bound against.
pub struct ExprContext<'s> {
    pub scope: &'s Scope,
    /// Collects aggregate calls (SELECT list, HAVING, ORDER BY of an aggregate query).
    pub aggs: Option<&'s mut AggCollector>,
}

impl Binder<'_> {
    pub fn bind_expr(&mut self, e: &ast::Expr, cx: &mut ExprContext) -> Result<Expr> {
        let scope = cx.scope;
        let ty = |x: &Expr| x.data_type(&scope.schema());
        Ok(match e {
            ast::Expr::Identifier(id) => self.column(cx.scope, None, id)?,
            ast::Expr::CompoundIdentifier(parts) => {
                let n = parts.len();
                if n < 2 {
                    return Err(RiffleError::plan("empty identifier"));
                }
                self.column(cx.scope, Some(&parts[n - 2].value), &parts[n - 1])?
            }
            ast::Expr::Nested(inner) => self.bind_expr(inner, cx)?,
            ast::Expr::Value(v) => Expr::Literal(self.value(&v.value)?),
            ast::Expr::TypedString(ts) => {
                let text = match &ts.value.value {
                    Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                    other => other.to_string(),
                };
                let to = parse_sql_type(&ts.data_type.to_string())?;
                match to {
                    DataType::Date32 => Expr::Literal(date_literal(&text)?),
                    _ => cast_to(lit_str(&text), &DataType::Utf8, &to)?,
                }
            }
            ast::Expr::Interval(iv) => Expr::Literal(Scalar(self.interval(iv)?)),
            ast::Expr::BinaryOp { left, op, right } => {
                let l = self.bind_expr(left, cx)?;
                let r = self.bind_expr(right, cx)?;
                let op = binary_op(op).ok_or_else(|| {
                    sql_error(format!("operator {op} is not supported"), expr_pos(e))
                })?;
                self.binary(op, l, r, cx.scope).map_err(|err| match err {
                    RiffleError::Plan(m) => sql_error(m, expr_pos(e)),
                    other => other,
                })?
            }
            ast::Expr::UnaryOp { op, expr } => {
                let inner = self.bind_expr(expr, cx)?;
                match op {
                    UnaryOperator::Not => Expr::Not(Box::new(self.coerce(inner, &DataType::Boolean, cx.scope)?)),
                    UnaryOperator::Minus => match inner {
                        Expr::Literal(s) => Expr::Literal(Scalar(arrow::compute::kernels::numeric::neg(&s.0)?)),
                        other => Expr::Negate(Box::new(other)),
                    },
                    UnaryOperator::Plus => inner,
                    other => return Err(RiffleError::NotSupported(format!("unary operator {other}"))),
                }
            }
            ast::Expr::IsNull(x) => Expr::IsNull(Box::new(self.bind_expr(x, cx)?)),
            ast::Expr::IsNotNull(x) => Expr::IsNotNull(Box::new(self.bind_expr(x, cx)?)),
            ast::Expr::IsTrue(x) | ast::Expr::IsNotTrue(x) | ast::Expr::IsFalse(x) | ast::Expr::IsNotFalse(x) => {
                let b = self.bind_expr(x, cx)?;
                let b = self.coerce(b, &DataType::Boolean, cx.scope)?;
                let want = matches!(e, ast::Expr::IsTrue(_) | ast::Expr::IsNotTrue(_));
                let test = Expr::binary(BinaryOp::IsNotDistinctFrom, b, Expr::Literal(Scalar::boolean(want)));
                if matches!(e, ast::Expr::IsNotTrue(_) | ast::Expr::IsNotFalse(_)) { Expr::Not(Box::new(test)) } else { test }
            }
            ast::Expr::IsDistinctFrom(a, b) | ast::Expr::IsNotDistinctFrom(a, b) => {
                let (l, r) = (self.bind_expr(a, cx)?, self.bind_expr(b, cx)?);
                let op = if matches!(e, ast::Expr::IsDistinctFrom(..)) { BinaryOp::IsDistinctFrom } else { BinaryOp::IsNotDistinctFrom };
                self.binary(op, l, r, cx.scope)?
            }
            ast::Expr::Between { expr, negated, low, high } => {
                let v = self.bind_expr(expr, cx)?;
                let lo = self.bind_expr(low, cx)?;
                let hi = self.bind_expr(high, cx)?;
                let ge = self.binary(BinaryOp::GtEq, v.clone(), lo, cx.scope)?;
                let le = self.binary(BinaryOp::LtEq, v, hi, cx.scope)?;
                let both = ge.and(le);
                if *negated { Expr::Not(Box::new(both)) } else { both }
            }
            ast::Expr::In { expr, target: ast::InTarget::List(list), negated, .. } => {
                let v = self.bind_expr(expr, cx)?;
                let items: Vec<Expr> = list.iter().map(|i| self.bind_expr(i, cx)).collect::<Result<_>>()?;
                let mut t = ty(&v);
                for i in &items {
                    t = common_type(&t, &ty(i)).ok_or_else(|| {
                        sql_error(format!("IN list mixes {} and {}", sql_name(&t), sql_name(&ty(i))), expr_pos(e))
                    })?;
                }
                let vt = ty(&v);
                let v = cast_to(v, &vt, &t)?;
                let list = items
                    .into_iter()
                    .map(|i| {
                        let it = ty(&i);
                        cast_to(i, &it, &t)
                    })
                    .collect::<Result<_>>()?;
                Expr::InList { expr: Box::new(v), list, negated: *negated }
            }
            ast::Expr::Exists { subquery, negated } => {
                let mark = self.mark_subquery(subquery, None, cx)?;
                if *negated { Expr::Not(Box::new(mark)) } else { mark }
            }
            ast::Expr::In { expr, target: ast::InTarget::Subquery(q), negated, .. } => {
                let mark = self.mark_subquery(q, Some(expr), cx)?;
                if *negated { Expr::Not(Box::new(mark)) } else { mark }
            }
            ast::Expr::In { .. } => return Err(sql_error("this form of IN is not supported", expr_pos(e))),
            ast::Expr::Subquery(q) => self.scalar_subquery(q, cx)?,
            ast::Expr::Like { negated, expr, pattern, escape_char, any: false }
            | ast::Expr::ILike { negated, expr, pattern, escape_char, any: false } => {
                if escape_char.is_some() {
                    return Err(RiffleError::NotSupported("LIKE … ESCAPE".into()));
                }
                let v = self.bind_expr(expr, cx)?;
                let p = self.bind_expr(pattern, cx)?;
                let v = self.coerce(v, &DataType::Utf8, cx.scope)?;
                let p = self.coerce(p, &DataType::Utf8, cx.scope)?;
                Expr::Like {
                    expr: Box::new(v),
                    pattern: Box::new(p),
                    negated: *negated,
                    case_insensitive: matches!(e, ast::Expr::ILike { .. }),
                }
            }
            ast::Expr::Cast { kind, expr, data_type, .. } => {
                let v = self.bind_expr(expr, cx)?;
                let to = parse_sql_type(&data_type.to_string())?;
                let safe = matches!(kind, ast::CastKind::TryCast | ast::CastKind::SafeCast);
                let from = ty(&v);
                if safe {
                    Expr::Cast { expr: Box::new(v), to, safe: true }
                } else {
                    cast_to(v, &from, &to).map_err(|err| sql_error(err.to_string(), expr_pos(e)))?
                }
            }
            ast::Expr::Case { operand, conditions, else_result, .. } => {
                let operand = operand.as_ref().map(|o| self.bind_expr(o, cx)).transpose()?;
                let mut branches = Vec::new();
                for cw in conditions {
                    let c = self.bind_expr(&cw.condition, cx)?;
                    let c = match &operand {
                        Some(o) => self.binary(BinaryOp::Eq, o.clone(), c, cx.scope)?,
                        None => self.coerce(c, &DataType::Boolean, cx.scope)?,
                    };
                    branches.push((c, self.bind_expr(&cw.result, cx)?));
                }
                let otherwise = else_result.as_ref().map(|x| self.bind_expr(x, cx)).transpose()?;
                let mut t = DataType::Null;
                for v in branches.iter().map(|(_, v)| v).chain(otherwise.iter()) {
                    t = common_type(&t, &ty(v)).ok_or_else(|| {
                        sql_error(format!("CASE branches mix {} and {}", sql_name(&t), sql_name(&ty(v))), expr_pos(e))
                    })?;
                }
                let branches = branches
                    .into_iter()
                    .map(|(c, v)| {
                        let vt = ty(&v);
                        Ok((c, cast_to(v, &vt, &t)?))
                    })
                    .collect::<Result<_>>()?;
                let otherwise = otherwise
                    .map(|o| {
                        let ot = ty(&o);
                        cast_to(o, &ot, &t)
                    })
                    .transpose()?
                    .map(Box::new);
                Expr::Case { branches, otherwise }
            }
            ast::Expr::Extract { field, expr, .. } => {
                let v = self.bind_expr(expr, cx)?;
                let part = lit_str(&field.to_string().to_ascii_lowercase());
                self.call(ScalarFunc::DatePart, vec![part, v], cx.scope)?
            }
            ast::Expr::Substring { expr, substring_from, substring_for, .. } => {
                let mut args = vec![self.bind_expr(expr, cx)?];
                args.push(match substring_from {
                    Some(f) => self.bind_expr(f, cx)?,
                    None => lit_i64(1),
                });
                if let Some(f) = substring_for {
                    args.push(self.bind_expr(f, cx)?);
                }
                self.call(ScalarFunc::Substring, args, cx.scope)?
            }
            ast::Expr::Trim { expr, trim_where, trim_what, .. } => {
                let func = match trim_where {
                    Some(ast::TrimWhereField::Leading) => ScalarFunc::LTrim,
                    Some(ast::TrimWhereField::Trailing) => ScalarFunc::RTrim,
                    _ => ScalarFunc::Trim,
                };
                let mut args = vec![self.bind_expr(expr, cx)?];
                if let Some(w) = trim_what {
                    args.push(self.bind_expr(w, cx)?);
                }
                self.call(func, args, cx.scope)?
            }
            ast::Expr::Position { expr, r#in } => {
                let args = vec![self.bind_expr(r#in, cx)?, self.bind_expr(expr, cx)?];
                self.call(ScalarFunc::StrPos, args, cx.scope)?
            }
            ast::Expr::Ceil { expr, .. } => {
                let a = self.bind_expr(expr, cx)?;
                self.call(ScalarFunc::Ceil, vec![a], cx.scope)?
            }
            ast::Expr::Floor { expr, .. } => {
                let a = self.bind_expr(expr, cx)?;
                self.call(ScalarFunc::Floor, vec![a], cx.scope)?
            }
            ast::Expr::Function(f) => self.function(f, e, cx)?,
            other => {
                return Err(sql_error(format!("expression not supported: {other}"), expr_pos(e)));
            }
        })
    }

    fn column(&self, scope: &Scope, qualifier: Option<&str>, id: &ast::Ident) -> Result<Expr> {
        match scope.lookup(qualifier, &id.value) {
            Lookup::Found(i) => Ok(Expr::Column(i)),
            Lookup::Ambiguous => Err(sql_error(
                format!("column reference '{}' is ambiguous: qualify it with a table name", id.value),
                span_pos(&id.span),
            )),
            Lookup::NotFound => {
                let full = match qualifier {
                    Some(q) => format!("{q}.{}", id.value),
                    None => id.value.clone(),
                };
                let hint = match scope.suggest(&id.value) {
                    Some(s) => format!("; did you mean '{s}'?"),
                    None => String::new(),
                };
                Err(sql_error(format!("column '{full}' does not exist{hint}"), span_pos(&id.span)))
            }
        }
    }

    fn value(&self, v: &Value) -> Result<Scalar> {
        Ok(match v {
            Value::Number(n, _) => parse_number(n)?,
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) | Value::NationalStringLiteral(s) => {
                Scalar(Arc::new(StringArray::from(vec![s.as_str()])))
            }
            Value::DoubleQuotedString(s) => Scalar(Arc::new(StringArray::from(vec![s.as_str()]))),
            Value::Boolean(b) => Scalar(Arc::new(BooleanArray::from(vec![*b]))),
            Value::Null => Scalar::null(&DataType::Null),
            Value::HexStringLiteral(h) => {
                let bytes: Vec<u8> = (0..h.len() / 2).filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()).collect();
                Scalar(Arc::new(arrow::array::BinaryArray::from(vec![bytes.as_slice()])))
            }
            other => return Err(RiffleError::NotSupported(format!("literal {other}"))),
        })
    }

    /// A fixed-length `INTERVAL` in microseconds (a window's size: no months or years).
    pub(super) fn interval_micros(&self, e: &ast::Expr) -> Result<i64> {
        let ast::Expr::Interval(iv) = e else {
            return Err(sql_error(format!("expected an INTERVAL such as INTERVAL '10' MINUTES, got {e}"), expr_pos(e)));
        };
        let value = self.interval(iv)?;
        let v = arrow::array::AsArray::as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>(&value).value(0);
        if v.months != 0 {
            return Err(sql_error(format!("{e} has no fixed length: use days, hours, minutes or seconds"), expr_pos(e)));
        }
        Ok(v.days as i64 * 86_400_000_000 + v.nanoseconds / 1_000)
    }

    fn interval(&self, iv: &ast::Interval) -> Result<ArrayRef> {
        let text = match iv.value.as_ref() {
            ast::Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) => s.clone(),
                Value::Number(n, _) => n.clone(),
                other => other.to_string(),
            },
            other => return Err(RiffleError::NotSupported(format!("INTERVAL {other}"))),
        };
        let unit = iv.leading_field.as_ref().map(|f| f.to_string());
        // `INTERVAL '90' DAY` or `INTERVAL '3 months'`.
        let (num, unit) = match unit {
            Some(u) => (text.trim().to_string(), u),
            None => {
                let mut parts = text.split_whitespace();
                let n = parts.next().unwrap_or("").to_string();
                (n, parts.next().unwrap_or("second").to_string())
            }
        };
        let n: f64 = num.parse().map_err(|_| RiffleError::plan(format!("invalid interval '{text}'")))?;
        interval_literal(n, &unit)
    }

    /// Casts `e` to `to` when the types differ and the conversion is implicit.
    pub fn coerce(&self, e: Expr, to: &DataType, scope: &Scope) -> Result<Expr> {
        let from = e.data_type(&scope.schema());
        if &from == to || from == DataType::Null {
            return if from == DataType::Null { cast_to(e, &from, to) } else { Ok(e) };
        }
        if to == &DataType::Boolean && !is_string(&from) {
            return Err(RiffleError::plan(format!("expected a BOOLEAN condition, got {}", sql_name(&from))));
        }
        cast_to(e, &from, to)
    }

    pub fn binary(&self, op: BinaryOp, l: Expr, r: Expr, scope: &Scope) -> Result<Expr> {
        let schema = scope.schema();
        let (lt, rt) = (l.data_type(&schema), r.data_type(&schema));
        let (l, r) = match op {
            BinaryOp::And | BinaryOp::Or => (self.coerce(l, &DataType::Boolean, scope)?, self.coerce(r, &DataType::Boolean, scope)?),
            _ if op.is_comparison() => {
                let t = common_type(&lt, &rt).ok_or_else(|| {
                    RiffleError::plan(format!(
                        "cannot compare {} with {}: add an explicit CAST",
                        sql_name(&lt),
                        sql_name(&rt)
                    ))
                })?;
                let t = if t == DataType::Null { DataType::Boolean } else { t };
                if let Some(r) = constant_in_decimal_type(&r, &rt, &lt, &t) {
                    return Ok(Expr::binary(op, l, r));
                }
                if let Some(l) = constant_in_decimal_type(&l, &lt, &rt, &t) {
                    return Ok(Expr::binary(op, l, r));
                }
                (cast_to(l, &lt, &t)?, cast_to(r, &rt, &t)?)
            }
            _ => {
                let (a, b) = arithmetic_operand_types(op, &lt, &rt)?;
                (cast_to(l, &lt, &a)?, cast_to(r, &rt, &b)?)
            }
        };
        Ok(Expr::binary(op, l, r))
    }

    /// A call of `func` with its arguments cast to its signature.
    pub fn call(&self, func: ScalarFunc, args: Vec<Expr>, scope: &Scope) -> Result<Expr> {
        let schema = scope.schema();
        let types: Vec<DataType> = args.iter().map(|a| a.data_type(&schema)).collect();
        let (want, mut ty) = func.signature(&types)?;
        if let (ScalarFunc::Round, Some((p, s))) = (func, decimal_parts(&ty)) {
            // As DuckDB: rounding a decimal to n places gives scale n.
            let digits = match args.get(1) {
                None => Some(0),
                Some(Expr::Literal(l)) => crate::eval::cast_value(&l.0, &DataType::Int64, &Default::default())
                    .ok()
                    .and_then(|a| a.as_any().downcast_ref::<Int64Array>().filter(|a| a.is_valid(0)).map(|a| a.value(0))),
                _ => None,
            };
            if let Some(d) = digits {
                ty = decimal(p, d.clamp(0, s as i64) as i8);
            }
        }
        let args = args
            .into_iter()
            .zip(types.iter().zip(&want))
            .map(|(a, (from, to))| cast_to(a, from, to))
            .collect::<Result<_>>()?;
        Ok(Expr::Function { func, args, ty })
    }

    fn function(&mut self, f: &ast::Function, e: &ast::Expr, cx: &mut ExprContext) -> Result<Expr> {
        let name = f.name.to_string().to_ascii_lowercase();
        let (args, distinct, star) = match &f.args {
            ast::FunctionArguments::None => (vec![], false, false),
            ast::FunctionArguments::Subquery(_) => return Err(RiffleError::NotSupported(format!("{name}(subquery)"))),
            ast::FunctionArguments::List(list) => {
                let distinct = matches!(list.duplicate_treatment, Some(ast::DuplicateTreatment::Distinct));
                let mut args = Vec::new();
                let mut star = false;
                for a in &list.args {
                    match a {
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(x)) => args.push(x.clone()),
                        ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Wildcard) => star = true,
                        other => return Err(RiffleError::NotSupported(format!("argument {other} of {name}()"))),
                    }
                }
                (args, distinct, star)
            }
        };
        if !f.within_group.is_empty() {
            return Err(RiffleError::NotSupported(format!("{name}() WITHIN GROUP (ORDER BY …)")));
        }
        if f.filter.is_some() && (f.over.is_some() || !is_aggregate_name(&name)) {
            let why = if f.over.is_some() { "a window function (OVER)" } else { "a function that is not an aggregate" };
            return Err(RiffleError::NotSupported(format!("FILTER (WHERE …) on {name}(), {why}; only aggregates take FILTER")));
        }
        if let Some(over) = &f.over {
            return self.over_function(&name, &args, distinct, star, over, e, cx);
        }
        if is_aggregate_name(&name) {
            return self.aggregate(&name, &args, distinct, star, f.filter.as_deref(), e, cx);
        }
        if name == "mod" {
            // Flink's and DuckDB's mod(a, b) is a % b.
            let [a, b] = args.as_slice() else {
                return Err(sql_error("mod() takes two arguments: mod(a, b)", expr_pos(e)));
            };
            let (a, b) = (self.bind_expr(a, cx)?, self.bind_expr(b, cx)?);
            return self.binary(BinaryOp::Mod, a, b, cx.scope).map_err(|err| match err {
                RiffleError::Plan(m) => sql_error(m, expr_pos(e)),
                other => other,
            });
        }
        let (func, bound) = match (date_part_function(&name), args.as_slice()) {
            // DuckDB's year(d), month(d), …: date_part('year', d).
            (Some(part), [value]) => {
                let part = Expr::lit(Scalar(Arc::new(StringArray::from(vec![part]))));
                (ScalarFunc::DatePart, vec![part, self.bind_expr(value, cx)?])
            }
            _ => {
                let Some(func) = ScalarFunc::from_name(&name) else {
                    let known = function_names().chain(AGGREGATES.iter().copied());
                    let hint = closest(&name, known).map(|c| format!("; did you mean '{c}'?")).unwrap_or_default();
                    return Err(sql_error(format!("function '{name}' does not exist{hint}"), expr_pos(e)));
                };
                (func, args.iter().map(|a| self.bind_expr(a, cx)).collect::<Result<Vec<Expr>>>()?)
            }
        };
        self.call(func, bound, cx.scope).map_err(|err| match err {
            RiffleError::Plan(m) => sql_error(m, expr_pos(e)),
            other => other,
        })
    }

    /// `f(args) OVER (PARTITION BY … ORDER BY … [ROWS|RANGE frame])`, bound as a placeholder of the
    /// Window node the SELECT gets (its arguments and keys may hold aggregates of the SELECT's GROUP BY).
    #[allow(clippy::too_many_arguments)]
    fn over_function(
        &mut self,
        name: &str,
        args: &[ast::Expr],
        distinct: bool,
        star: bool,
        over: &ast::WindowType,
        e: &ast::Expr,
        cx: &mut ExprContext,
    ) -> Result<Expr> {
        let at = expr_pos(e);
        let ast::WindowType::WindowSpec(spec) = over else {
            return Err(RiffleError::NotSupported("named windows (OVER w … WINDOW w AS (…))".into()));
        };
        if distinct {
            return Err(RiffleError::NotSupported(format!("{name}(DISTINCT …) OVER (…)")));
        }
        let bound: Vec<Expr> = args.iter().map(|a| self.bind_expr(a, cx)).collect::<Result<_>>()?;
        let partition_by = spec.partition_by.iter().map(|p| self.bind_expr(p, cx)).collect::<Result<Vec<_>>>()?;
        let mut order_by = Vec::new();
        for o in &spec.order_by {
            let k = self.bind_expr(&o.expr, cx)?;
            order_by.push(super::sort_key(k, o));
        }
        let schema = cx.scope.schema();
        let arg_ty = bound.first().map(|a| a.data_type(&schema));
        let n_args = bound.len();
        let (func, ty) = match (name, n_args) {
            ("row_number", 0) => (WindowFunc::RowNumber, DataType::Int64),
            ("rank", 0) => (WindowFunc::Rank, DataType::Int64),
            ("dense_rank", 0) => (WindowFunc::DenseRank, DataType::Int64),
            ("percent_rank", 0) => (WindowFunc::PercentRank, DataType::Float64),
            ("cume_dist", 0) => (WindowFunc::CumeDist, DataType::Float64),
            ("ntile", 1) => (WindowFunc::Ntile, DataType::Int64),
            ("lag", 1..=3) => (WindowFunc::Lag, arg_ty.clone().unwrap_or(DataType::Null)),
            ("lead", 1..=3) => (WindowFunc::Lead, arg_ty.clone().unwrap_or(DataType::Null)),
            ("first_value", 1) => (WindowFunc::FirstValue, arg_ty.clone().unwrap_or(DataType::Null)),
            ("last_value", 1) => (WindowFunc::LastValue, arg_ty.clone().unwrap_or(DataType::Null)),
            ("count", 0) if star || args.is_empty() => (WindowFunc::Aggregate(AggFunc::CountStar), DataType::Int64),
            (agg, 1) if is_aggregate_name(agg) => {
                let func = match agg {
                    "count" => AggFunc::Count,
                    "sum" => AggFunc::Sum,
                    "avg" | "mean" => AggFunc::Avg,
                    "min" => AggFunc::Min,
                    "max" => AggFunc::Max,
                    other => return Err(sql_error(format!("{other}() is not supported as a window function"), at)),
                };
                let t = arg_ty.clone().unwrap_or(DataType::Null);
                let numeric = is_numeric(&t) || t == DataType::Null;
                let ty = match func {
                    AggFunc::Count | AggFunc::CountStar => DataType::Int64,
                    AggFunc::Sum | AggFunc::Avg if !numeric => {
                        return Err(sql_error(format!("{agg}() expects a number, got {}", sql_name(&t)), at))
                    }
                    AggFunc::Sum => match &t {
                        d if is_decimal(d) => decimal(38, decimal_parts(d).map_or(0, |(_, s)| s)),
                        t if t.is_integer() || *t == DataType::Null => DataType::Int64,
                        _ => DataType::Float64,
                    },
                    AggFunc::Min | AggFunc::Max => t,
                    _ => DataType::Float64,
                };
                (WindowFunc::Aggregate(func), ty)
            }
            (other, _) => {
                return Err(sql_error(
                    format!("{other}() with {n_args} argument(s) is not a window function (row_number, rank, dense_rank, percent_rank, cume_dist, ntile, lag, lead, first_value, last_value, count, sum, avg, min, max)"),
                    at,
                ))
            }
        };
        let constant = match func {
            WindowFunc::Ntile => bound.first(),
            WindowFunc::Lag | WindowFunc::Lead => bound.get(1),
            _ => None,
        };
        if constant.is_some_and(|c| !matches!(c, Expr::Literal(_))) {
            return Err(sql_error(format!("the offset or bucket count of {name}() must be a constant"), at));
        }
        // RANGE offsets are in the units of the one ORDER BY key.
        let key_type = match order_by.as_slice() {
            [k] => Some(k.expr.data_type(&schema)),
            _ => None,
        };
        let frame = self.window_frame(spec.window_frame.as_ref(), !order_by.is_empty(), key_type.as_ref())?;
        let call = WindowCall { func, args: bound, partition_by, order_by, frame, ty: ty.clone() };
        let k = self.window_calls.iter().position(|c| *c == call).unwrap_or_else(|| {
            self.window_calls.push(call);
            self.window_calls.len() - 1
        });
        Ok(Expr::Cast { expr: Box::new(Expr::Column(WINDOW_BASE + k)), to: ty, safe: true })
    }

    /// The frame as written, or SQL's default: with ORDER BY the rows up to the current row's last
    /// peer, without it the whole partition.
    fn window_frame(&self, frame: Option<&ast::WindowFrame>, ordered: bool, key_type: Option<&DataType>) -> Result<Frame> {
        let Some(f) = frame else {
            let end = if ordered { FrameBound::CurrentRow } else { FrameBound::UnboundedFollowing };
            return Ok(Frame { rows: false, start: FrameBound::UnboundedPreceding, end });
        };
        let rows = match f.units {
            ast::WindowFrameUnits::Rows => true,
            ast::WindowFrameUnits::Range => false,
            ast::WindowFrameUnits::Groups => return Err(RiffleError::NotSupported("GROUPS frames".into())),
        };
        let offset = |e: &Option<Box<ast::Expr>>| -> Result<u64> {
            match e.as_deref() {
                Some(ast::Expr::Value(v)) => match &v.value {
                    Value::Number(n, _) => n.parse().map_err(|_| RiffleError::plan(format!("a frame offset must be a whole number, got {n}"))),
                    other => Err(RiffleError::plan(format!("a frame offset must be a whole number, got {other}"))),
                },
                Some(other) => Err(RiffleError::plan(format!("a frame offset must be a constant, got {other}"))),
                None => Ok(0),
            }
        };
        // A RANGE offset in the key's units: a number for an integer key, an INTERVAL of whole days
        // for a DATE key, any fixed INTERVAL (in microseconds) for a TIMESTAMP key.
        let range_offset = |e: &Option<Box<ast::Expr>>| -> Result<u64> {
            let unsupported = |t: &str| {
                RiffleError::NotSupported(format!(
                    "RANGE frames with an offset over {t} (supported: one ORDER BY key, an integer with a number, a DATE or TIMESTAMP with an INTERVAL; or use ROWS)"
                ))
            };
            let Some(t) = key_type else { return Err(unsupported("several ORDER BY keys")) };
            let day = 86_400_000_000i64;
            match (t, e.as_deref()) {
                (t, Some(ast::Expr::Value(_))) if t.is_integer() => offset(e),
                (DataType::Date32, Some(iv @ ast::Expr::Interval(_))) => match self.interval_micros(iv)? {
                    us if us >= 0 && us % day == 0 => Ok((us / day) as u64),
                    _ => Err(RiffleError::plan(format!("a RANGE offset over a DATE must be whole days, not negative; got {iv}"))),
                },
                (DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, _), Some(iv @ ast::Expr::Interval(_))) => {
                    u64::try_from(self.interval_micros(iv)?).map_err(|_| RiffleError::plan(format!("a RANGE offset must not be negative, got {iv}")))
                }
                (t, _) => Err(unsupported(&format!("{} with this offset", sql_name(t)))),
            }
        };
        let bound = |b: &ast::WindowFrameBound| -> Result<FrameBound> {
            Ok(match b {
                ast::WindowFrameBound::CurrentRow => FrameBound::CurrentRow,
                ast::WindowFrameBound::Preceding(None) => FrameBound::UnboundedPreceding,
                ast::WindowFrameBound::Following(None) => FrameBound::UnboundedFollowing,
                ast::WindowFrameBound::Preceding(e) if rows => FrameBound::Preceding(offset(e)?),
                ast::WindowFrameBound::Following(e) if rows => FrameBound::Following(offset(e)?),
                ast::WindowFrameBound::Preceding(e) => FrameBound::Preceding(range_offset(e)?),
                ast::WindowFrameBound::Following(e) => FrameBound::Following(range_offset(e)?),
            })
        };
        let start = bound(&f.start_bound)?;
        let end = match &f.end_bound {
            Some(b) => bound(b)?,
            None => FrameBound::CurrentRow,
        };
        Ok(Frame { rows, start, end })
    }

    /// `agg([DISTINCT] args | *) [FILTER (WHERE filter)]`, bound as a column of the aggregate the
    /// SELECT gets.
    #[allow(clippy::too_many_arguments)]
    fn aggregate(
        &mut self,
        name: &str,
        args: &[ast::Expr],
        distinct: bool,
        star: bool,
        filter: Option<&ast::Expr>,
        e: &ast::Expr,
        cx: &mut ExprContext,
    ) -> Result<Expr> {
        if cx.aggs.is_none() {
            return Err(sql_error(format!("aggregate {name}() is not allowed here"), expr_pos(e)));
        }
        // Arguments are bound over the aggregate's input, where aggregates may not nest.
        let mut inner = ExprContext { scope: cx.scope, aggs: None };
        let mut bound: Vec<Expr> = args.iter().map(|a| self.bind_expr(a, &mut inner)).collect::<Result<_>>()?;
        let mut star = star;
        if let Some(filter) = filter {
            // agg(x) FILTER (WHERE p) is agg(CASE WHEN p THEN x END): every aggregate taking FILTER
            // skips NULL arguments, and a row p does not keep gives one. count(*) counts the rows p
            // keeps: count(CASE WHEN p THEN 1 END).
            if name == "grouping" {
                return Err(sql_error("grouping() takes no FILTER", expr_pos(e)));
            }
            let p = self.bind_expr(filter, &mut inner)?;
            let p = self.coerce(p, &DataType::Boolean, cx.scope).map_err(|err| sql_error(format!("FILTER (WHERE …): {err}"), expr_pos(filter)))?;
            if bound.is_empty() && name == "count" {
                bound.push(lit_i64(1));
                star = false;
            }
            bound = bound.into_iter().map(|x| Expr::Case { branches: vec![(p.clone(), x)], otherwise: None }).collect();
        }
        let schema = cx.scope.schema();
        let arg_ty = bound.first().map(|a| a.data_type(&schema));
        let func = match (name, star, bound.len()) {
            ("count", true, 0) | ("count", false, 0) => AggFunc::CountStar,
            ("count", false, 1) => AggFunc::Count,
            ("sum", false, 1) => AggFunc::Sum,
            ("avg" | "mean", false, 1) => AggFunc::Avg,
            ("min", false, 1) => AggFunc::Min,
            ("max", false, 1) => AggFunc::Max,
            // As in DuckDB and PostgreSQL, stddev and variance are of a sample.
            ("stddev" | "stddev_samp", false, 1) => AggFunc::StddevSamp,
            ("stddev_pop", false, 1) => AggFunc::StddevPop,
            ("variance" | "var_samp", false, 1) => AggFunc::VarSamp,
            ("var_pop", false, 1) => AggFunc::VarPop,
            ("any_value", false, 1) => AggFunc::AnyValue,
            ("grouping", false, n) if n > 0 => AggFunc::Grouping,
            _ => return Err(sql_error(format!("wrong arguments for aggregate {name}()"), expr_pos(e))),
        };
        let numeric_arg = |t: &DataType| -> Result<()> {
            if is_numeric(t) || *t == DataType::Null {
                Ok(())
            } else {
                Err(sql_error(format!("{name}() expects a number, got {}", sql_name(t)), expr_pos(e)))
            }
        };
        let ty = match func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::Grouping => DataType::Int64,
            AggFunc::Sum => {
                let t = arg_ty.clone().unwrap_or(DataType::Null);
                numeric_arg(&t)?;
                match t {
                    d if is_decimal(&d) => decimal(38, decimal_parts(&d).map_or(0, |(_, s)| s)),
                    t if t.is_integer() => DataType::Int64,
                    DataType::Null => DataType::Int64,
                    _ => DataType::Float64,
                }
            }
            AggFunc::Avg | AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop => {
                numeric_arg(arg_ty.as_ref().unwrap_or(&DataType::Null))?;
                DataType::Float64
            }
            AggFunc::Min | AggFunc::Max | AggFunc::AnyValue => arg_ty.clone().unwrap_or(DataType::Null),
        };
        // min, max and any value of the distinct values are those of all values.
        let distinct = distinct && !matches!(func, AggFunc::Min | AggFunc::Max | AggFunc::AnyValue);
        if distinct && !matches!(func, AggFunc::Count | AggFunc::Sum | AggFunc::Avg) {
            return Err(RiffleError::NotSupported(format!("{name}(DISTINCT …); count, sum, avg, min and max take DISTINCT")));
        }
        let collector = cx.aggs.as_deref_mut().ok_or_else(|| RiffleError::plan("aggregate not allowed here"))?;
        // A typed placeholder: parents can ask its type before the Aggregate node exists.
        let mut add = |call: AggCall| {
            let ty = call.ty.clone();
            Expr::Cast { expr: Box::new(Expr::Column(AGG_BASE + collector.add(call))), to: ty, safe: true }
        };
        // avg(x) of decimals and doubles is sum(x) / count(x), so that a sum(x) beside it (TPC-H Q1 has
        // two) is computed once. The sum is NULL exactly when the count is 0.
        if let (AggFunc::Avg, Some(arg)) = (func, arg_ty.as_ref().filter(|t| is_decimal(t) || **t == DataType::Float64)) {
            let sum_ty = match decimal_parts(arg) {
                Some((_, s)) => decimal(38, s),
                None => DataType::Float64,
            };
            let sum = add(AggCall { func: AggFunc::Sum, args: bound.clone(), distinct, ty: sum_ty });
            let count = add(AggCall { func: AggFunc::Count, args: bound, distinct, ty: DataType::Int64 });
            let double = |e: Expr| Expr::Cast { expr: Box::new(e), to: DataType::Float64, safe: false };
            return Ok(Expr::binary(BinaryOp::Div, double(sum), double(count)));
        }
        Ok(add(AggCall { func, args: bound, distinct, ty }))
    }
}

/// The date part a one-argument function of DuckDB's (`year(d)`, `dayofweek(d)`, …) extracts.
fn date_part_function(name: &str) -> Option<&'static str> {
    Some(match name {
        "year" => "year",
        "quarter" => "quarter",
        "month" => "month",
        "week" | "weekofyear" => "week",
        "day" | "dayofmonth" => "day",
        "dayofweek" => "dayofweek",
        "isodow" => "isodow",
        "dayofyear" => "dayofyear",
        "hour" => "hour",
        "minute" => "minute",
        "second" => "second",
        "millisecond" => "millisecond",
        "microsecond" => "microsecond",
        "isoyear" => "isoyear",
        "decade" => "decade",
        "century" => "century",
        _ => return None,
    })
}
