//! Evaluates bound expressions over record batches with arrow's compute kernels.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, BooleanArray, Datum, RecordBatch};
use arrow::buffer::{BooleanBuffer, NullBuffer};
use arrow::compute::kernels::{boolean, cmp, numeric, zip::zip};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::DataType;

use crate::error::{Result, RiffleError};
use crate::logical::{BinaryOp, Expr};
use crate::types::{decimal_parts, is_decimal, sql_name};

/// An operand of a kernel: a column of the batch's length, or a constant.
enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Value {
    fn is_scalar(&self) -> bool {
        matches!(self, Value::Scalar(_))
    }

    fn into_array(self, rows: usize) -> Result<ArrayRef> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => repeat(&s, rows),
        }
    }
}

/// A column of `rows` copies of the one-element array `s`.
pub fn repeat(s: &ArrayRef, rows: usize) -> Result<ArrayRef> {
    if s.is_null(0) {
        return Ok(new_null_array(s.data_type(), rows));
    }
    let indices = arrow::array::UInt32Array::from(vec![0u32; rows]);
    Ok(arrow::compute::take(s.as_ref(), &indices, None)?)
}

/// Evaluates `expr` over `batch`, giving a column as long as the batch.
pub fn evaluate(expr: &Expr, batch: &RecordBatch) -> Result<ArrayRef> {
    eval(expr, batch)?.into_array(batch.num_rows())
}

/// Evaluates a predicate, treating NULL as false.
pub fn evaluate_predicate(expr: &Expr, batch: &RecordBatch) -> Result<BooleanArray> {
    let v = evaluate(expr, batch)?;
    let b = v
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| RiffleError::exec(format!("predicate is {} where BOOLEAN was expected", sql_name(v.data_type()))))?;
    Ok(null_as_false(b))
}

/// NULL becomes false (a WHERE condition that is unknown does not hold).
pub fn null_as_false(b: &BooleanArray) -> BooleanArray {
    if b.null_count() > 0 { arrow::compute::prep_null_mask_filter(b) } else { b.clone() }
}

fn eval(expr: &Expr, batch: &RecordBatch) -> Result<Value> {
    let rows = batch.num_rows();
    Ok(match expr {
        Expr::Column(i) => Value::Array(batch.column(*i).clone()),
        Expr::Literal(s) => Value::Scalar(s.0.clone()),
        Expr::Binary { op, left, right } => {
            let l = eval(left, batch)?;
            let r = eval(right, batch)?;
            let scalar = matches!((&l, &r), (Value::Scalar(_), Value::Scalar(_)));
            let out = binary(*op, &l, &r, rows)?;
            let ty = expr.data_type(&batch.schema());
            let out = if out.data_type() != &ty && ty != DataType::Null { arrow::compute::cast(&out, &ty)? } else { out };
            if scalar { Value::Scalar(out) } else { Value::Array(out) }
        }
        Expr::Not(e) => map(eval(e, batch)?, |a| Ok(Arc::new(boolean::not(as_bool(a)?)?)))?,
        Expr::Negate(e) => map(eval(e, batch)?, |a| Ok(numeric::neg(a)?))?,
        Expr::IsNull(e) => map(eval(e, batch)?, |a| Ok(Arc::new(arrow::compute::is_null(a)?)))?,
        Expr::IsNotNull(e) => map(eval(e, batch)?, |a| Ok(Arc::new(arrow::compute::is_not_null(a)?)))?,
        Expr::Cast { expr, to, safe } => {
            let options = CastOptions { safe: *safe, ..Default::default() };
            map(eval(expr, batch)?, |a| cast_value(a, to, &options))?
        }
        Expr::Case { branches, otherwise } => Value::Array(case(branches, otherwise.as_deref(), batch)?),
        Expr::Function { func, args, ty } => {
            let values: Vec<Value> = args.iter().map(|a| eval(a, batch)).collect::<Result<_>>()?;
            let all_scalar = !values.is_empty() && values.iter().all(|v| matches!(v, Value::Scalar(_))) && !func.is_volatile();
            let n = if all_scalar { 1 } else { rows };
            let arrays: Vec<ArrayRef> = values
                .into_iter()
                .map(|v| match v {
                    Value::Scalar(s) if !all_scalar => repeat(&s, rows),
                    Value::Scalar(s) | Value::Array(s) => Ok(s),
                })
                .collect::<Result<_>>()?;
            let out = func.invoke(&arrays, n, ty)?;
            let out = if out.data_type() != ty { arrow::compute::cast(&out, ty)? } else { out };
            if all_scalar { Value::Scalar(out) } else { Value::Array(out) }
        }
        Expr::InList { expr, list, negated } => {
            let v = eval(expr, batch)?;
            if let Value::Array(values) = &v {
                if let Some(found) = in_literal_set(values, list)? {
                    let out: ArrayRef = if *negated { Arc::new(boolean::not(&found)?) } else { Arc::new(found) };
                    return Ok(Value::Array(out));
                }
            }
            let mut acc: Option<ArrayRef> = None;
            for item in list {
                let item = eval(item, batch)?;
                let eq: ArrayRef = Arc::new(cmp::eq(&v, &item)?);
                acc = Some(match acc {
                    None => eq,
                    Some(a) => Arc::new(boolean::or_kleene(as_bool(&a)?, as_bool(&eq)?)?),
                });
            }
            let acc = acc.ok_or_else(|| RiffleError::exec("empty IN list"))?;
            let acc = if acc.len() == 1 && rows != 1 { repeat(&acc, rows)? } else { acc };
            let out: ArrayRef = if *negated { Arc::new(boolean::not(as_bool(&acc)?)?) } else { acc };
            Value::Array(out)
        }
        Expr::Like { expr, pattern, negated, case_insensitive } => {
            let v = eval(expr, batch)?;
            let p = eval(pattern, batch)?;
            let (l, r) = (&v, &p);
            if let (Value::Array(values), Value::Scalar(pattern), false) = (&v, &p, *case_insensitive) {
                if let Some(out) = like_segments(values, pattern, *negated) {
                    return Ok(Value::Array(Arc::new(out)));
                }
            }
            let out = match (*negated, *case_insensitive) {
                (false, false) => arrow::compute::kernels::comparison::like(l, r)?,
                (true, false) => arrow::compute::kernels::comparison::nlike(l, r)?,
                (false, true) => arrow::compute::kernels::comparison::ilike(l, r)?,
                (true, true) => arrow::compute::kernels::comparison::nilike(l, r)?,
            };
            let out: ArrayRef = Arc::new(out);
            if matches!((&v, &p), (Value::Scalar(_), Value::Scalar(_))) { Value::Scalar(out) } else { Value::Array(out) }
        }
    })
}

/// `values [NOT] LIKE pattern` for a pattern of literal pieces between `%`s with one in the middle
/// (TPC-H Q13's `'%special%requests%'`), each piece found after the one before: arrow runs such a
/// pattern as a regex. `None` for other patterns (no `%` inside, or `_` or `\`) and other arrays.
fn like_segments(values: &ArrayRef, pattern: &ArrayRef, negated: bool) -> Option<BooleanArray> {
    let pattern = pattern.as_string_opt::<i32>()?;
    let values = values.as_string_opt::<i32>()?;
    if pattern.len() != 1 || pattern.is_null(0) {
        return None;
    }
    let pattern = pattern.value(0);
    if pattern.contains(['_', '\\']) {
        return None;
    }
    let pieces: Vec<&str> = pattern.split('%').collect();
    // Only a first and a last piece (`a%b`, `%a%`, `a%`): arrow's prefix, suffix and substring tests.
    if pieces.len() < 3 || pieces[1..pieces.len() - 1].iter().all(|p| p.is_empty()) {
        return None;
    }
    let (first, last) = (pieces[0].as_bytes(), pieces[pieces.len() - 1].as_bytes());
    let inner: Vec<memchr::memmem::Finder> = pieces[1..pieces.len() - 1].iter().filter(|p| !p.is_empty()).map(|p| memchr::memmem::Finder::new(p.as_bytes())).collect();
    let matches = |s: &[u8]| -> bool {
        if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for finder in &inner {
            match finder.find(rest) {
                Some(at) => rest = &rest[at + finder.needle().len()..],
                None => return false,
            }
        }
        true
    };
    let bits = BooleanBuffer::collect_bool(values.len(), |i| matches(values.value(i).as_bytes()) != negated);
    Some(BooleanArray::new(bits, values.nulls().cloned()))
}

fn map(v: Value, f: impl Fn(&ArrayRef) -> Result<ArrayRef>) -> Result<Value> {
    Ok(match v {
        Value::Array(a) => Value::Array(f(&a)?),
        Value::Scalar(s) => Value::Scalar(f(&s)?),
    })
}

/// `values IN (literals…)` by a hash set of the literals' row encodings, one pass over the values,
/// where the list is long enough that comparing with each item in turn costs more (TPC-DS q08's 400
/// zip codes over 250 K addresses: 400 passes took 0.25 s). `None` for short lists, items that are
/// not literals of the values' own type, and floats (kept to the comparison kernels' equality).
fn in_literal_set(values: &ArrayRef, list: &[Expr]) -> Result<Option<BooleanArray>> {
    const MIN_ITEMS: usize = 8;
    let ty = values.data_type();
    if list.len() < MIN_ITEMS || ty.is_floating() {
        return Ok(None);
    }
    let mut items = Vec::with_capacity(list.len());
    for e in list {
        match e {
            Expr::Literal(s) if s.data_type() == ty || s.is_null() => items.push(s),
            _ => return Ok(None),
        }
    }
    let converter = arrow::row::RowConverter::new(vec![arrow::row::SortField::new(ty.clone())])?;
    // SQL's IN: true on a match; unknown for a NULL value, or for no match when the list holds NULL.
    let mut list_null = false;
    let mut set = std::collections::HashSet::with_capacity(items.len());
    for item in items {
        if item.is_null() {
            list_null = true;
            continue;
        }
        let rows = converter.convert_columns(std::slice::from_ref(&item.0))?;
        set.insert(rows.row(0).as_ref().to_vec());
    }
    let rows = converter.convert_columns(std::slice::from_ref(values))?;
    let miss = if list_null { None } else { Some(false) };
    Ok(Some(
        (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    None
                } else if set.contains(rows.row(i).as_ref()) {
                    Some(true)
                } else {
                    miss
                }
            })
            .collect(),
    ))
}

fn as_bool(a: &ArrayRef) -> Result<&BooleanArray> {
    a.as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| RiffleError::exec(format!("expected BOOLEAN, got {}", sql_name(a.data_type()))))
}

pub fn cast_value(a: &ArrayRef, to: &DataType, options: &CastOptions) -> Result<ArrayRef> {
    if a.data_type() == to {
        return Ok(a.clone());
    }
    if is_decimal(a.data_type()) && *to == DataType::Float64 {
        return decimal_to_f64(a);
    }
    // SQL rounds a fraction to the nearest integer (half away from zero); arrow truncates.
    let a = &match (a.data_type(), to.is_integer()) {
        (d, true) if decimal_parts(d).is_some_and(|(_, s)| s > 0) => {
            let rounded_type = crate::types::decimal(decimal_parts(d).map_or(38, |(p, _)| p), 0);
            let rounded = crate::functions::ScalarFunc::Round.invoke(std::slice::from_ref(a), a.len(), &rounded_type)?;
            cast_with_options(&rounded, &rounded_type, options)?
        }
        (DataType::Float64 | DataType::Float32, true) => {
            let f = arrow::compute::cast(a, &DataType::Float64)?;
            let f = f.as_any().downcast_ref::<arrow::array::Float64Array>().ok_or_else(|| RiffleError::exec("cast"))?;
            Arc::new(f.unary::<_, arrow::datatypes::Float64Type>(f64::round)) as ArrayRef
        }
        _ => a.clone(),
    };
    cast_with_options(a, to, options).map_err(|e| {
        RiffleError::exec(format!("conversion from {} to {} failed: {e}", sql_name(a.data_type()), sql_name(to)))
    })
}

/// Decimals as the nearest double. Arrow converts the unscaled integer to a double and then divides,
/// rounding twice (10000000000000004.97 became …006); here a value of up to 2^53 is divided exactly
/// once, and a larger one goes through its decimal text, which `parse` rounds correctly.
fn decimal_to_f64(a: &ArrayRef) -> Result<ArrayRef> {
    let s = decimal_parts(a.data_type()).map_or(0, |(_, s)| s);
    let wide = crate::functions::widen_decimal(a)?;
    let wide = wide.as_any().downcast_ref::<arrow::array::Decimal128Array>().ok_or_else(|| RiffleError::exec("decimal expected"))?;
    let exact_divisor = (0..=22).contains(&s).then(|| 10f64.powi(s as i32));
    let out: arrow::array::Float64Array = wide.unary(|v| match exact_divisor {
        Some(d) if v.unsigned_abs() <= 1 << 53 => v as f64 / d,
        _ => format!("{v}e{}", -(s as i32)).parse().unwrap_or(f64::NAN),
    });
    Ok(Arc::new(out))
}

fn binary(op: BinaryOp, l: &Value, r: &Value, rows: usize) -> Result<ArrayRef> {
    // A `Value` is a kernel operand itself (a scalar is a one-element array flagged as such).
    let (ld, rd): (&dyn Datum, &dyn Datum) = (l, r);
    let (lt, rt) = (ld.get().0.data_type().clone(), rd.get().0.data_type().clone());
    let out: ArrayRef = match op {
        // Dates plus or minus whole days, and the days between two dates, as integer arithmetic.
        BinaryOp::Add | BinaryOp::Sub if lt == DataType::Date32 || rt == DataType::Date32 => {
            let days = |v: &Value| -> Result<Value> {
                Ok(datum_like(&arrow::compute::cast(v.get().0, &DataType::Int64)?, v))
            };
            let (a, b) = (days(l)?, days(r)?);
            let n = if op == BinaryOp::Add { numeric::add(&a, &b)? } else { numeric::sub(&a, &b)? };
            if lt == DataType::Date32 && rt == DataType::Date32 {
                n
            } else {
                arrow::compute::cast(&arrow::compute::cast(&n, &DataType::Int32)?, &DataType::Date32)?
            }
        }
        // A timestamp without time zone plus or minus a fixed interval (no months), as integer
        // arithmetic: arrow goes through a calendar date per row (a watermark `ts - INTERVAL '1'
        // SECOND` over every row of a stream was a tenth of Nexmark's time).
        BinaryOp::Add | BinaryOp::Sub if matches!((l, &lt), (Value::Array(_), DataType::Timestamp(_, None))) => {
            match fixed_interval(r, &lt) {
                Some(delta) => shift_timestamps(l, if op == BinaryOp::Add { Some(delta) } else { delta.checked_neg() }, &lt)?,
                None if op == BinaryOp::Add => numeric::add(ld, rd)?,
                None => numeric::sub(ld, rd)?,
            }
        }
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul if is_decimal(&lt) && is_decimal(&rt) => decimal_arith(op, l, r)?,
        BinaryOp::Add => numeric::add(ld, rd)?,
        BinaryOp::Sub => numeric::sub(ld, rd)?,
        BinaryOp::Mul => numeric::mul(ld, rd).map_err(|e| match e {
            arrow::error::ArrowError::ArithmeticOverflow(_) => RiffleError::exec(format!(
                "overflow in multiplication of {} and {}: cast an operand to a wider type (e.g. DOUBLE)",
                sql_name(&lt),
                sql_name(&rt)
            )),
            other => other.into(),
        })?,
        // As DuckDB: `/` is float division (x/0 is infinite); `//` and `%` by zero are errors.
        BinaryOp::Div => numeric::div(ld, rd)?,
        BinaryOp::IntDiv => match lt {
            DataType::Float64 | DataType::Float32 => int_div(&repeat_if_scalar(l, rows)?, &repeat_if_scalar(r, rows)?)?,
            _ => numeric::div(ld, rd).map_err(division_error)?,
        },
        BinaryOp::Mod => numeric::rem(ld, rd).map_err(division_error)?,
        BinaryOp::Eq => Arc::new(cmp::eq(ld, rd)?),
        BinaryOp::NotEq => Arc::new(cmp::neq(ld, rd)?),
        BinaryOp::Lt => Arc::new(cmp::lt(ld, rd)?),
        BinaryOp::LtEq => Arc::new(cmp::lt_eq(ld, rd)?),
        BinaryOp::Gt => Arc::new(cmp::gt(ld, rd)?),
        BinaryOp::GtEq => Arc::new(cmp::gt_eq(ld, rd)?),
        BinaryOp::IsDistinctFrom => Arc::new(cmp::distinct(ld, rd)?),
        BinaryOp::IsNotDistinctFrom => Arc::new(cmp::not_distinct(ld, rd)?),
        BinaryOp::And | BinaryOp::Or => {
            let (a, b) = (repeat_if_scalar(l, rows)?, repeat_if_scalar(r, rows)?);
            let (a, b) = (as_bool(&a)?, as_bool(&b)?);
            Arc::new(if op == BinaryOp::And { boolean::and_kleene(a, b)? } else { boolean::or_kleene(a, b)? })
        }
        BinaryOp::Concat => {
            let (a, b) = (repeat_if_scalar(l, rows)?, repeat_if_scalar(r, rows)?);
            let a = arrow::compute::cast(&a, &DataType::Utf8)?;
            let b = arrow::compute::cast(&b, &DataType::Utf8)?;
            Arc::new(arrow::compute::kernels::concat_elements::concat_elements_utf8::<i32>(
                a.as_any().downcast_ref().ok_or_else(|| RiffleError::exec("concat: not a string"))?,
                b.as_any().downcast_ref().ok_or_else(|| RiffleError::exec("concat: not a string"))?,
            )?)
        }
    };
    Ok(out)
}

/// `l op r` (+, -, *) on decimals of either width, computed in i128 and stored at the result's width.
/// Results that provably fit (see `decimal_fits`) need no checks; the others are checked against 38
/// digits, a product first tried as one 64×64-bit multiply. Each operand is read at its own width.
fn decimal_arith(op: BinaryOp, l: &Value, r: &Value) -> Result<ArrayRef> {
    use arrow::datatypes::{Decimal128Type, Decimal64Type};
    let (la, ra) = (l.get().0, r.get().0);
    let (Some((_, s1)), Some((_, s2))) = (decimal_parts(la.data_type()), decimal_parts(ra.data_type())) else {
        return Err(RiffleError::exec("decimal arithmetic on non-decimals"));
    };
    let result = crate::types::arithmetic_result(op, la.data_type(), ra.data_type())?;
    let Some((precision, scale)) = decimal_parts(&result) else { return Err(RiffleError::exec("decimal result type")) };
    let fits = decimal_fits(op, la.data_type(), ra.data_type());
    let (lm, rm) = if op == BinaryOp::Mul { (1, 1) } else { (10i128.pow((scale - s1) as u32), 10i128.pow((scale - s2) as u32)) };
    let k = DecimalKernel { op, fits, lm, rm, rows: if l.is_scalar() { ra.len() } else { la.len() } };
    let overflow = || {
        RiffleError::exec(format!(
            "overflow in {} of {} and {}: cast an operand to a wider type (e.g. DOUBLE)",
            if op == BinaryOp::Mul { "multiplication" } else { "addition" },
            sql_name(la.data_type()),
            sql_name(ra.data_type())
        ))
    };
    macro_rules! run {
        ($l:ty, $r:ty, $o:ty) => {
            Arc::new(k.run::<$l, $r, $o>(l, r)?.ok_or_else(overflow)?.with_precision_and_scale(precision, scale)?)
        };
    }
    use DataType::{Decimal128 as D128, Decimal64 as D64};
    let out: ArrayRef = match (la.data_type(), ra.data_type(), &result) {
        (D64(..), D64(..), D64(..)) => run!(Decimal64Type, Decimal64Type, Decimal64Type),
        (D64(..), D64(..), _) => run!(Decimal64Type, Decimal64Type, Decimal128Type),
        (D128(..), D64(..), _) => run!(Decimal128Type, Decimal64Type, Decimal128Type),
        (D64(..), D128(..), _) => run!(Decimal64Type, Decimal128Type, Decimal128Type),
        (D128(..), D128(..), _) => run!(Decimal128Type, Decimal128Type, Decimal128Type),
        (l, r, _) => return Err(RiffleError::exec(format!("decimal arithmetic on {} and {}", sql_name(l), sql_name(r)))),
    };
    Ok(out)
}

/// How decimals of one width are read into and written from the i128 the arithmetic is done in.
trait DecimalStore: arrow::datatypes::ArrowPrimitiveType {
    fn widen(v: Self::Native) -> i128;
    /// Only called on values known to fit the width.
    fn narrow(v: i128) -> Self::Native;
}

impl DecimalStore for arrow::datatypes::Decimal64Type {
    fn widen(v: i64) -> i128 {
        v as i128
    }
    fn narrow(v: i128) -> i64 {
        v as i64
    }
}

impl DecimalStore for arrow::datatypes::Decimal128Type {
    fn widen(v: i128) -> i128 {
        v
    }
    fn narrow(v: i128) -> i128 {
        v
    }
}

/// One decimal operation: the operator, whether its result provably fits, and the factors that bring
/// each operand to the result's scale.
struct DecimalKernel {
    op: BinaryOp,
    fits: bool,
    lm: i128,
    rm: i128,
    rows: usize,
}

impl DecimalKernel {
    /// The result, `None` if a row that is not NULL overflowed.
    fn run<L: DecimalStore, R: DecimalStore, O: DecimalStore>(
        &self,
        l: &Value,
        r: &Value,
    ) -> Result<Option<arrow::array::PrimitiveArray<O>>> {
        let (left, lm) = decimal_side::<L>(l, self.lm)?;
        let (right, rm) = decimal_side::<R>(r, self.rm)?;
        // Each case is its own closure so that the hot loop has no branch on `op` (and no multiply by 1).
        Ok(match (self.op, self.fits) {
            // Operands below 2^63 multiply into less than 2^126 < 10^38: one 64×64-bit multiply, no
            // check. Wide operands usually hold small values (a product of columns typed DECIMAL(31,4)),
            // so this is tried per batch.
            (BinaryOp::Mul, _) if left.fits_i64() && right.fits_i64() => {
                map_decimal(&left, &right, self.rows, |a, b| ((a as i64 as i128) * (b as i64 as i128), false))
            }
            (BinaryOp::Mul, false) => map_decimal(&left, &right, self.rows, |a, b| {
                let p = mul_64(a, b).or_else(|| a.checked_mul(b).filter(|p| p.unsigned_abs() < 10u128.pow(38)));
                p.map_or((0, true), |p| (p, false))
            }),
            (BinaryOp::Mul, true) => map_decimal(&left, &right, self.rows, |a, b| (mul_64(a, b).unwrap_or_else(|| a * b), false)),
            (BinaryOp::Add | BinaryOp::Sub, false) => {
                let add = self.op == BinaryOp::Add;
                map_decimal(&left, &right, self.rows, |a, b| {
                    let v = a
                        .checked_mul(lm)
                        .zip(b.checked_mul(rm))
                        .and_then(|(a, b)| if add { a.checked_add(b) } else { a.checked_sub(b) });
                    v.filter(|v| v.unsigned_abs() < 10u128.pow(38)).map_or((0, true), |v| (v, false))
                })
            }
            (BinaryOp::Add, true) if lm == 1 && rm == 1 => map_decimal(&left, &right, self.rows, |a, b| (a + b, false)),
            (BinaryOp::Sub, true) if lm == 1 && rm == 1 => map_decimal(&left, &right, self.rows, |a, b| (a - b, false)),
            (BinaryOp::Add, true) => map_decimal(&left, &right, self.rows, |a, b| (a * lm + b * rm, false)),
            (BinaryOp::Sub, true) => map_decimal(&left, &right, self.rows, |a, b| (a * lm - b * rm, false)),
            (op, _) => return Err(RiffleError::exec(format!("decimal {} is not plain arithmetic", op.symbol()))),
        })
    }
}

/// A decimal operand: a column, or one constant already in i128 (`None` for NULL).
enum DecimalSide<'a, T: DecimalStore> {
    Column(&'a arrow::array::PrimitiveArray<T>),
    Scalar(Option<i128>),
}

impl<T: DecimalStore> DecimalSide<'_, T> {
    /// Whether every value lies within i64 (NULL slots included: they are computed too).
    fn fits_i64(&self) -> bool {
        let fits = |v: i128| i64::try_from(v).is_ok();
        match self {
            DecimalSide::Column(_) if std::mem::size_of::<T::Native>() <= 8 => true,
            DecimalSide::Column(a) => a.values().iter().all(|v| fits(T::widen(*v))),
            DecimalSide::Scalar(v) => v.is_none_or(fits),
        }
    }
}

/// The operand `v` and the factor still to apply to it per row: a constant is brought to the result's
/// scale here, once (`1 - l_discount`), unless that overflows.
fn decimal_side<T: DecimalStore>(v: &Value, m: i128) -> Result<(DecimalSide<'_, T>, i128)> {
    let (a, scalar) = v.get();
    let a = a.as_any().downcast_ref::<arrow::array::PrimitiveArray<T>>().ok_or_else(|| RiffleError::exec("decimal operand"))?;
    Ok(match scalar {
        false => (DecimalSide::Column(a), m),
        true if a.is_null(0) => (DecimalSide::Scalar(None), 1),
        true => {
            let v = T::widen(a.value(0));
            match v.checked_mul(m) {
                Some(scaled) => (DecimalSide::Scalar(Some(scaled)), 1),
                None => (DecimalSide::Scalar(Some(v)), m),
            }
        }
    })
}

/// `f(a, b)` → (value, overflowed) for every row; `None` if it overflowed on a row that is not NULL.
/// Every slot is computed, also under NULLs, so the loop has no branch; only an overflow looks at the
/// validity.
fn map_decimal<L: DecimalStore, R: DecimalStore, O: DecimalStore>(
    left: &DecimalSide<L>,
    right: &DecimalSide<R>,
    rows: usize,
    f: impl Fn(i128, i128) -> (i128, bool),
) -> Option<arrow::array::PrimitiveArray<O>> {
    use arrow::array::PrimitiveArray;
    use arrow::buffer::NullBuffer;
    use DecimalSide::{Column, Scalar};
    let mut overflow = false;
    let mut check = |(v, o): (i128, bool)| {
        overflow |= o;
        O::narrow(v)
    };
    let (values, nulls): (Vec<O::Native>, Option<NullBuffer>) = match (left, right) {
        (Scalar(None), _) | (_, Scalar(None)) => return Some(PrimitiveArray::new_null(rows)),
        (Column(l), Column(r)) => (
            l.values().iter().zip(r.values().iter()).map(|(&a, &b)| check(f(L::widen(a), R::widen(b)))).collect(),
            NullBuffer::union(l.nulls(), r.nulls()),
        ),
        (Column(l), Scalar(Some(b))) => (l.values().iter().map(|&a| check(f(L::widen(a), *b))).collect(), l.nulls().cloned()),
        (Scalar(Some(a)), Column(r)) => (r.values().iter().map(|&b| check(f(*a, R::widen(b)))).collect(), r.nulls().cloned()),
        (Scalar(Some(a)), Scalar(Some(b))) => (vec![check(f(*a, *b))], None),
    };
    if overflow {
        let lv = |i: usize| match left {
            Column(l) => L::widen(l.value(i)),
            Scalar(v) => v.unwrap_or(0),
        };
        let rv = |i: usize| match right {
            Column(r) => R::widen(r.value(i)),
            Scalar(v) => v.unwrap_or(0),
        };
        let valid = |i: usize| nulls.as_ref().is_none_or(|n| n.is_valid(i));
        if (0..values.len()).any(|i| valid(i) && f(lv(i), rv(i)).1) {
            return None;
        }
    }
    Some(PrimitiveArray::new(values.into(), nulls))
}

/// `a * b` as one 64×64-bit multiply when both fit 64 bits (the product then has fewer than 38 digits).
fn mul_64(a: i128, b: i128) -> Option<i128> {
    Some(i64::try_from(a).ok()? as i128 * i64::try_from(b).ok()? as i128)
}

/// Whether `l op r` on decimals cannot exceed 38 digits, whatever the values.
fn decimal_fits(op: BinaryOp, l: &DataType, r: &DataType) -> bool {
    let (Some((p1, s1)), Some((p2, s2))) = (decimal_parts(l), decimal_parts(r)) else { return false };
    let (p1, s1, p2, s2) = (p1 as i32, s1 as i32, p2 as i32, s2 as i32);
    let digits = match op {
        BinaryOp::Add | BinaryOp::Sub => s1.max(s2) + (p1 - s1).max(p2 - s2) + 1,
        BinaryOp::Mul => p1 + p2,
        _ => return false,
    };
    digits <= 38
}

/// A one-row decimal constant stored at the width its precision needs.
pub fn decimal_scalar(value: i128, precision: u8, scale: i8) -> Result<ArrayRef> {
    Ok(match crate::types::decimal(precision, scale) {
        DataType::Decimal64(..) => Arc::new(
            arrow::array::Decimal64Array::from(vec![value as i64]).with_precision_and_scale(precision, scale)?,
        ),
        _ => Arc::new(arrow::array::Decimal128Array::from(vec![value]).with_precision_and_scale(precision, scale)?),
    })
}

fn division_error(e: arrow::error::ArrowError) -> RiffleError {
    match e {
        arrow::error::ArrowError::DivideByZero => {
            RiffleError::exec("division by zero (use NULLIF(divisor, 0) to get NULL instead)")
        }
        other => other.into(),
    }
}

/// A constant interval without months in units of timestamp type `ts` (none if not exact).
fn fixed_interval(v: &Value, ts: &DataType) -> Option<i64> {
    let Value::Scalar(s) = v else { return None };
    let DataType::Timestamp(unit, _) = ts else { return None };
    let i = s.as_any().downcast_ref::<arrow::array::IntervalMonthDayNanoArray>()?;
    if i.len() != 1 || i.is_null(0) {
        return None;
    }
    let iv = i.value(0);
    let per_unit: i64 = match unit {
        arrow::datatypes::TimeUnit::Second => 1_000_000_000,
        arrow::datatypes::TimeUnit::Millisecond => 1_000_000,
        arrow::datatypes::TimeUnit::Microsecond => 1_000,
        arrow::datatypes::TimeUnit::Nanosecond => 1,
    };
    if iv.months != 0 || iv.nanoseconds % per_unit != 0 {
        return None;
    }
    let day = 86_400_000_000_000 / per_unit;
    (iv.days as i64).checked_mul(day)?.checked_add(iv.nanoseconds / per_unit)
}

/// Timestamps `l` (of type `ts`) moved by `delta` of their units; an overflow is an error.
fn shift_timestamps(l: &Value, delta: Option<i64>, ts: &DataType) -> Result<ArrayRef> {
    let overflow = || RiffleError::exec(format!("overflow in {} arithmetic: the result is out of range", sql_name(ts)));
    let delta = delta.ok_or_else(overflow)?;
    let ints = arrow::compute::cast(l.get().0, &DataType::Int64)?;
    let ints = arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&ints);
    let moved: arrow::array::Int64Array = ints.try_unary(|v| v.checked_add(delta).ok_or_else(overflow))?;
    Ok(arrow::compute::cast(&moved, ts)?)
}

fn datum_like(a: &ArrayRef, like: &Value) -> Value {
    match like {
        Value::Array(_) => Value::Array(a.clone()),
        Value::Scalar(_) => Value::Scalar(a.clone()),
    }
}

impl Datum for Value {
    fn get(&self) -> (&dyn Array, bool) {
        match self {
            Value::Array(a) => (a.as_ref(), false),
            Value::Scalar(s) => (s.as_ref(), true),
        }
    }
}

fn repeat_if_scalar(v: &Value, rows: usize) -> Result<ArrayRef> {
    match v {
        Value::Array(a) => Ok(a.clone()),
        Value::Scalar(s) if rows == 1 => Ok(s.clone()),
        Value::Scalar(s) => repeat(s, rows),
    }
}

/// Integer division rounding toward zero, as DuckDB's `//`.
fn int_div(l: &ArrayRef, r: &ArrayRef) -> Result<ArrayRef> {
    match l.data_type() {
        DataType::Float64 | DataType::Float32 => {
            let q = numeric::div(l, r)?;
            let q = arrow::compute::cast(&q, &DataType::Float64)?;
            let q: ArrayRef = Arc::new(q.as_any().downcast_ref::<arrow::array::Float64Array>().map(|a| a.unary::<_, arrow::datatypes::Float64Type>(f64::trunc)).ok_or_else(|| RiffleError::exec("int_div"))?);
            Ok(arrow::compute::cast(&q, l.data_type())?)
        }
        _ => Ok(numeric::div(l, r)?),
    }
}

/// The interval literal for `n` units of `unit` (`day`, `month`, …).
pub fn interval_literal(n: f64, unit: &str) -> Result<ArrayRef> {
    use arrow::datatypes::IntervalMonthDayNano;
    let unit = unit.to_ascii_lowercase();
    let unit = unit.trim_end_matches('s');
    let (months, days, nanos): (i32, i32, i64) = match unit {
        "year" => ((n * 12.0) as i32, 0, 0),
        "quarter" => ((n * 3.0) as i32, 0, 0),
        "month" => (n as i32, 0, 0),
        "week" => (0, (n * 7.0) as i32, 0),
        "day" => (0, n as i32, ((n - n.trunc()) * 86_400e9) as i64),
        "hour" => (0, 0, (n * 3_600e9) as i64),
        "minute" => (0, 0, (n * 60e9) as i64),
        "second" => (0, 0, (n * 1e9) as i64),
        "millisecond" => (0, 0, (n * 1e6) as i64),
        "microsecond" => (0, 0, (n * 1e3) as i64),
        other => return Err(RiffleError::plan(format!("unknown interval unit '{other}'"))),
    };
    Ok(Arc::new(arrow::array::IntervalMonthDayNanoArray::from(vec![IntervalMonthDayNano::new(months, days, nanos)])))
}

/// `truthy` where `mask` is set, `falsy` elsewhere. The common shapes without arrow's general `zip`
/// (which copies run by run, slow where the mask changes every few rows): a NULL `falsy` (`CASE WHEN
/// d_day_name = 'Sunday' THEN ss_sales_price END`: the values stay, the mask joins their validity)
/// and two primitive columns (a select per row).
fn select(mask: &BooleanBuffer, truthy: &ArrayRef, falsy: &ArrayRef) -> Result<ArrayRef> {
    let valid_bits = |a: &ArrayRef| a.logical_nulls().map(|n| n.into_inner());
    if falsy.logical_null_count() == falsy.len() && truthy.data_type() == falsy.data_type() {
        return Ok(arrow::compute::nullif(truthy, &BooleanArray::new(!mask, None))?);
    }
    macro_rules! primitive {
        ($t:ty) => {{
            let (a, b) = (truthy.as_primitive::<$t>(), falsy.as_primitive::<$t>());
            let (av, bv) = (a.values(), b.values());
            let values: arrow::buffer::ScalarBuffer<_> = (0..mask.len()).map(|i| if mask.value(i) { av[i] } else { bv[i] }).collect();
            let valid = match (valid_bits(truthy), valid_bits(falsy)) {
                (None, None) => None,
                (a, b) => {
                    let all = || BooleanBuffer::new_set(mask.len());
                    let (a, b) = (a.unwrap_or_else(all), b.unwrap_or_else(all));
                    Some(NullBuffer::new(&(&a & mask) | &(&b & &!mask)))
                }
            };
            Ok(Arc::new(arrow::array::PrimitiveArray::<$t>::new(values, valid).with_data_type(truthy.data_type().clone())) as ArrayRef)
        }};
    }
    use arrow::datatypes::{Date32Type, Decimal128Type, Float64Type, Int32Type, Int64Type};
    match (truthy.data_type(), falsy.data_type()) {
        (a, b) if a != b => {}
        (DataType::Int64, _) => return primitive!(Int64Type),
        (DataType::Int32, _) => return primitive!(Int32Type),
        (DataType::Float64, _) => return primitive!(Float64Type),
        (DataType::Decimal128(..), _) => return primitive!(Decimal128Type),
        (DataType::Date32, _) => return primitive!(Date32Type),
        _ => {}
    }
    Ok(zip(&BooleanArray::new(mask.clone(), None), truthy, falsy)?)
}

fn case(branches: &[(Expr, Expr)], otherwise: Option<&Expr>, batch: &RecordBatch) -> Result<ArrayRef> {
    let rows = batch.num_rows();
    let ty = branches
        .first()
        .map(|(_, v)| v.data_type(&batch.schema()))
        .or_else(|| otherwise.map(|o| o.data_type(&batch.schema())))
        .unwrap_or(DataType::Null);
    // Later branches are applied first so that earlier ones win; each value (the ELSE's too) counts
    // only on the rows taking its branch (`value_where`).
    let mut taken: Option<BooleanBuffer> = None;
    let mut conds = Vec::with_capacity(branches.len());
    for (cond, _) in branches {
        // A NULL condition is not met.
        let c = evaluate_predicate(cond, batch)?;
        let c = match c.nulls() {
            Some(valid) => c.values() & valid.inner(),
            None => c.values().clone(),
        };
        let fresh = match &taken {
            Some(t) => &c & &!t,
            None => c.clone(),
        };
        taken = Some(match taken {
            Some(t) => &t | &c,
            None => c,
        });
        conds.push(fresh);
    }
    let mut result = match (otherwise, &taken) {
        (Some(o), Some(taken)) => value_where(o, batch, || !taken)?,
        (Some(o), None) => evaluate(o, batch)?,
        (None, _) => new_null_array(&ty, rows),
    };
    for ((_, value), cond) in branches.iter().zip(conds).rev() {
        if cond.count_set_bits() == 0 {
            continue;
        }
        let v = value_where(value, batch, || cond.clone())?;
        result = select(&cond, &v, &result)?;
    }
    Ok(result)
}

/// `value` over `batch`, of which only the rows `taken` sets count. Evaluated on all rows, and only
/// where that fails (`taken_rows_only`) on those rows.
fn value_where(value: &Expr, batch: &RecordBatch, taken: impl FnOnce() -> BooleanBuffer) -> Result<ArrayRef> {
    match evaluate(value, batch) {
        Ok(v) => Ok(v),
        Err(err) => {
            let taken = taken();
            if taken.count_set_bits() < batch.num_rows() {
                taken_rows_only(value, batch, &taken)
            } else {
                Err(err)
            }
        }
    }
}

/// `value` over the rows of `batch` where `taken` is set, placed at those rows (NULL elsewhere). A
/// CASE branch's value may fail on rows its condition rules out (`CASE WHEN s <> 'a' THEN CAST(s AS
/// INT) END`, `agg(1 / x) FILTER (WHERE x <> 0)`): as in SQL, only the rows taking it count.
fn taken_rows_only(value: &Expr, batch: &RecordBatch, taken: &BooleanBuffer) -> Result<ArrayRef> {
    let rows = arrow::compute::filter_record_batch(batch, &BooleanArray::new(taken.clone(), None))?;
    let values = evaluate(value, &rows)?;
    let mut next = 0u32;
    let places: arrow::array::UInt32Array = taken
        .iter()
        .map(|t| {
            t.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect();
    Ok(arrow::compute::take(&values, &places, None)?)
}
