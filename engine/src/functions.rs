//! Scalar functions: their names, how their argument types are coerced, and their kernels.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, is_not_null};
use arrow::datatypes::{DataType, Float64Type, TimeUnit};
use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};

use crate::error::{Result, RiffleError};
use crate::types::{common_type, is_numeric, sql_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScalarFunc {
    Upper,
    Lower,
    Length,
    Substring,
    Trim,
    LTrim,
    RTrim,
    Concat,
    Replace,
    StartsWith,
    EndsWith,
    Contains,
    StrPos,
    Left,
    Right,
    Reverse,
    Lpad,
    Rpad,
    Repeat,
    Abs,
    Round,
    Floor,
    Ceil,
    Sqrt,
    Power,
    Ln,
    Exp,
    Coalesce,
    NullIf,
    Greatest,
    Least,
    /// `extract(part FROM x)`, `date_part('part', x)`: the part is the first argument.
    DatePart,
    DateTrunc,
    Random,
}

const NAMES: &[(&str, ScalarFunc)] = &[
    ("upper", ScalarFunc::Upper),
    ("ucase", ScalarFunc::Upper),
    ("lower", ScalarFunc::Lower),
    ("lcase", ScalarFunc::Lower),
    ("length", ScalarFunc::Length),
    ("char_length", ScalarFunc::Length),
    ("character_length", ScalarFunc::Length),
    ("len", ScalarFunc::Length),
    ("substring", ScalarFunc::Substring),
    ("substr", ScalarFunc::Substring),
    ("trim", ScalarFunc::Trim),
    ("btrim", ScalarFunc::Trim),
    ("ltrim", ScalarFunc::LTrim),
    ("rtrim", ScalarFunc::RTrim),
    ("concat", ScalarFunc::Concat),
    ("replace", ScalarFunc::Replace),
    ("starts_with", ScalarFunc::StartsWith),
    ("prefix", ScalarFunc::StartsWith),
    ("ends_with", ScalarFunc::EndsWith),
    ("suffix", ScalarFunc::EndsWith),
    ("contains", ScalarFunc::Contains),
    ("strpos", ScalarFunc::StrPos),
    ("instr", ScalarFunc::StrPos),
    ("position", ScalarFunc::StrPos),
    ("left", ScalarFunc::Left),
    ("right", ScalarFunc::Right),
    ("reverse", ScalarFunc::Reverse),
    ("lpad", ScalarFunc::Lpad),
    ("rpad", ScalarFunc::Rpad),
    ("repeat", ScalarFunc::Repeat),
    ("abs", ScalarFunc::Abs),
    ("round", ScalarFunc::Round),
    ("floor", ScalarFunc::Floor),
    ("ceil", ScalarFunc::Ceil),
    ("ceiling", ScalarFunc::Ceil),
    ("sqrt", ScalarFunc::Sqrt),
    ("power", ScalarFunc::Power),
    ("pow", ScalarFunc::Power),
    ("ln", ScalarFunc::Ln),
    ("exp", ScalarFunc::Exp),
    ("coalesce", ScalarFunc::Coalesce),
    ("ifnull", ScalarFunc::Coalesce),
    ("nullif", ScalarFunc::NullIf),
    ("greatest", ScalarFunc::Greatest),
    ("least", ScalarFunc::Least),
    ("date_part", ScalarFunc::DatePart),
    ("datepart", ScalarFunc::DatePart),
    ("date_trunc", ScalarFunc::DateTrunc),
    ("datetrunc", ScalarFunc::DateTrunc),
    ("random", ScalarFunc::Random),
];

/// Every scalar function name, for "did you mean" suggestions.
pub fn function_names() -> impl Iterator<Item = &'static str> {
    NAMES.iter().map(|(n, _)| *n)
}

impl ScalarFunc {
    pub fn from_name(name: &str) -> Option<ScalarFunc> {
        let lower = name.to_ascii_lowercase();
        NAMES.iter().find(|(n, _)| *n == lower).map(|(_, f)| *f)
    }

    pub fn name(self) -> &'static str {
        NAMES.iter().find(|(_, f)| *f == self).map(|(n, _)| *n).unwrap_or("?")
    }

    pub fn is_volatile(self) -> bool {
        self == ScalarFunc::Random
    }

    /// Checks the argument count and types; returns the types the arguments must be cast to and the
    /// result type.
    pub fn signature(self, args: &[DataType]) -> Result<(Vec<DataType>, DataType)> {
        use DataType::*;
        use ScalarFunc::*;
        let name = self.name();
        let arity = |lo: usize, hi: usize| -> Result<()> {
            if args.len() < lo || args.len() > hi {
                let want = if lo == hi { format!("{lo}") } else { format!("{lo} to {hi}") };
                return Err(RiffleError::plan(format!("{name}() takes {want} arguments, got {}", args.len())));
            }
            Ok(())
        };
        let numeric = |t: &DataType| -> Result<DataType> {
            if is_numeric(t) || *t == Null {
                Ok(if *t == Null { Float64 } else { t.clone() })
            } else {
                Err(RiffleError::plan(format!("{name}() expects a number, got {}", sql_name(t))))
            }
        };
        let strings = |n: usize| vec![Utf8; n];
        Ok(match self {
            Upper | Lower | Trim | LTrim | RTrim | Reverse => {
                arity(1, if matches!(self, Trim | LTrim | RTrim) { 2 } else { 1 })?;
                (strings(args.len()), Utf8)
            }
            Length => {
                arity(1, 1)?;
                (strings(1), Int64)
            }
            Substring => {
                arity(2, 3)?;
                let mut t = vec![Utf8, Int64];
                if args.len() == 3 {
                    t.push(Int64);
                }
                (t, Utf8)
            }
            Concat => {
                if args.is_empty() {
                    return Err(RiffleError::plan("concat() needs at least one argument"));
                }
                (strings(args.len()), Utf8)
            }
            Replace => {
                arity(3, 3)?;
                (strings(3), Utf8)
            }
            StartsWith | EndsWith | Contains => {
                arity(2, 2)?;
                (strings(2), Boolean)
            }
            StrPos => {
                arity(2, 2)?;
                (strings(2), Int64)
            }
            Left | Right | Repeat => {
                arity(2, 2)?;
                (vec![Utf8, Int64], Utf8)
            }
            Lpad | Rpad => {
                arity(2, 3)?;
                let mut t = vec![Utf8, Int64];
                if args.len() == 3 {
                    t.push(Utf8);
                }
                (t, Utf8)
            }
            Abs => {
                arity(1, 1)?;
                let t = numeric(&args[0])?;
                (vec![t.clone()], t)
            }
            Round => {
                arity(1, 2)?;
                let t = numeric(&args[0])?;
                let mut v = vec![t.clone()];
                if args.len() == 2 {
                    v.push(Int64);
                }
                (v, t)
            }
            Floor | Ceil => {
                arity(1, 1)?;
                let t = numeric(&args[0])?;
                let out = match crate::types::decimal_parts(&t) {
                    Some((p, _)) => crate::types::decimal(p, 0),
                    None => t.clone(),
                };
                (vec![t], out)
            }
            Sqrt | Ln | Exp => {
                arity(1, 1)?;
                numeric(&args[0])?;
                (vec![Float64], Float64)
            }
            Power => {
                arity(2, 2)?;
                numeric(&args[0])?;
                numeric(&args[1])?;
                (vec![Float64, Float64], Float64)
            }
            Coalesce | Greatest | Least => {
                if args.is_empty() {
                    return Err(RiffleError::plan(format!("{name}() needs at least one argument")));
                }
                let t = unify(name, args)?;
                (vec![t.clone(); args.len()], t)
            }
            NullIf => {
                arity(2, 2)?;
                let t = unify(name, args)?;
                (vec![t.clone(), t.clone()], t)
            }
            DatePart => {
                arity(2, 2)?;
                if !matches!(args[1], Date32 | Timestamp(..)) {
                    return Err(RiffleError::plan(format!("{name}() expects a DATE or TIMESTAMP, got {}", sql_name(&args[1]))));
                }
                (vec![Utf8, args[1].clone()], Int64)
            }
            DateTrunc => {
                arity(2, 2)?;
                let ts = Timestamp(TimeUnit::Microsecond, None);
                match &args[1] {
                    Date32 | Timestamp(..) | Utf8 => (vec![Utf8, ts.clone()], ts),
                    t => return Err(RiffleError::plan(format!("{name}() expects a DATE or TIMESTAMP, got {}", sql_name(t)))),
                }
            }
            Random => {
                arity(0, 0)?;
                (vec![], Float64)
            }
        })
    }

    /// Applies the function to arguments already cast to the signature's types.
    pub fn invoke(self, args: &[ArrayRef], rows: usize, ty: &DataType) -> Result<ArrayRef> {
        use ScalarFunc::*;
        Ok(match self {
            Upper => map_str(&args[0], |s, b| b.append_value(simple_case(s, true))),
            Lower => map_str(&args[0], |s, b| b.append_value(simple_case(s, false))),
            Reverse => map_str(&args[0], |s, b| b.append_value(s.chars().rev().collect::<String>())),
            Trim | LTrim | RTrim => {
                let side = self;
                if args.len() == 2 {
                    let a = args[0].as_string::<i32>();
                    let c = args[1].as_string::<i32>();
                    let mut b = StringBuilder::with_capacity(a.len(), 0);
                    for i in 0..a.len() {
                        if a.is_null(i) || c.is_null(i) {
                            b.append_null();
                        } else {
                            let set: Vec<char> = c.value(i).chars().collect();
                            b.append_value(trim(a.value(i), side, |ch| set.contains(&ch)));
                        }
                    }
                    Arc::new(b.finish())
                } else {
                    map_str(&args[0], |s, b| b.append_value(trim(s, side, |ch| ch == ' ')))
                }
            }
            Length => {
                let a = args[0].as_string::<i32>();
                Arc::new(a.iter().map(|v| v.map(|s| s.chars().count() as i64)).collect::<Int64Array>())
            }
            Substring => {
                let a = args[0].as_string::<i32>();
                let start = args[1].as_primitive::<arrow::datatypes::Int64Type>();
                let len = args.get(2).map(|l| l.as_primitive::<arrow::datatypes::Int64Type>());
                let mut b = StringBuilder::with_capacity(a.len(), 0);
                for i in 0..a.len() {
                    if a.is_null(i) || start.is_null(i) || len.is_some_and(|l| l.is_null(i)) {
                        b.append_null();
                        continue;
                    }
                    b.append_value(substring(a.value(i), start.value(i), len.map(|l| l.value(i))));
                }
                Arc::new(b.finish())
            }
            Concat => {
                // Like DuckDB and PostgreSQL, concat() skips NULL arguments.
                let arrays: Vec<&StringArray> = args.iter().map(|a| a.as_string::<i32>()).collect();
                let mut b = StringBuilder::with_capacity(rows, 0);
                let mut s = String::new();
                for i in 0..rows {
                    s.clear();
                    for a in &arrays {
                        if a.is_valid(i) {
                            s.push_str(a.value(i));
                        }
                    }
                    b.append_value(&s);
                }
                Arc::new(b.finish())
            }
            Replace => {
                let (a, f, t) = (args[0].as_string::<i32>(), args[1].as_string::<i32>(), args[2].as_string::<i32>());
                let mut b = StringBuilder::with_capacity(a.len(), 0);
                for i in 0..a.len() {
                    if a.is_null(i) || f.is_null(i) || t.is_null(i) {
                        b.append_null();
                    } else if f.value(i).is_empty() {
                        b.append_value(a.value(i));
                    } else {
                        b.append_value(a.value(i).replace(f.value(i), t.value(i)));
                    }
                }
                Arc::new(b.finish())
            }
            StartsWith => str_pred(args, |a, b| a.starts_with(b)),
            EndsWith => str_pred(args, |a, b| a.ends_with(b)),
            Contains => str_pred(args, |a, b| a.contains(b)),
            StrPos => {
                let (a, n) = (args[0].as_string::<i32>(), args[1].as_string::<i32>());
                Arc::new(
                    (0..a.len())
                        .map(|i| {
                            (a.is_valid(i) && n.is_valid(i)).then(|| match a.value(i).find(n.value(i)) {
                                Some(byte) => a.value(i)[..byte].chars().count() as i64 + 1,
                                None => 0,
                            })
                        })
                        .collect::<Int64Array>(),
                )
            }
            Left | Right | Repeat => {
                let (a, n) = (args[0].as_string::<i32>(), args[1].as_primitive::<arrow::datatypes::Int64Type>());
                let mut b = StringBuilder::with_capacity(a.len(), 0);
                for i in 0..a.len() {
                    if a.is_null(i) || n.is_null(i) {
                        b.append_null();
                        continue;
                    }
                    let (s, k) = (a.value(i), n.value(i));
                    let count = s.chars().count() as i64;
                    let v: String = match self {
                        Left if k >= 0 => s.chars().take(k as usize).collect(),
                        Left => s.chars().take((count + k).max(0) as usize).collect(),
                        Right if k >= 0 => s.chars().skip((count - k).max(0) as usize).collect(),
                        Right => s.chars().skip((-k) as usize).collect(),
                        _ => s.repeat(k.clamp(0, 1 << 20) as usize),
                    };
                    b.append_value(v);
                }
                Arc::new(b.finish())
            }
            Lpad | Rpad => {
                let (a, n) = (args[0].as_string::<i32>(), args[1].as_primitive::<arrow::datatypes::Int64Type>());
                let fill = args.get(2).map(|f| f.as_string::<i32>());
                let mut b = StringBuilder::with_capacity(a.len(), 0);
                for i in 0..a.len() {
                    if a.is_null(i) || n.is_null(i) || fill.is_some_and(|f| f.is_null(i)) {
                        b.append_null();
                        continue;
                    }
                    let fill: Vec<char> = fill.map(|f| f.value(i)).unwrap_or(" ").chars().collect();
                    b.append_value(pad(a.value(i), n.value(i).max(0) as usize, &fill, self == Lpad));
                }
                Arc::new(b.finish())
            }
            Abs => {
                let neg = arrow::compute::kernels::numeric::neg_wrapping(&args[0])?;
                let zero = arrow::array::Scalar::new(zero_of(args[0].data_type())?);
                let negative = arrow::compute::kernels::cmp::lt(&args[0], &zero)?;
                zip(&negative, &neg, &args[0])?
            }
            Round => round(args, ty)?,
            Floor | Ceil => floor_ceil(&args[0], self == Floor, ty)?,
            Sqrt => unary_f64(&args[0], f64::sqrt),
            Ln => unary_f64(&args[0], f64::ln),
            Exp => unary_f64(&args[0], f64::exp),
            Power => {
                let (a, b) = (args[0].as_primitive::<Float64Type>(), args[1].as_primitive::<Float64Type>());
                Arc::new(arrow::compute::binary::<_, _, _, Float64Type>(a, b, f64::powf)?)
            }
            Coalesce => {
                let mut out = args[args.len() - 1].clone();
                for a in args.iter().rev().skip(1) {
                    out = zip(&is_not_null(a)?, a, &out)?;
                }
                out
            }
            NullIf => {
                let eq = arrow::compute::kernels::cmp::eq(&args[0], &args[1])?;
                // NULL where equal (a NULL comparison keeps the first argument).
                let keep = arrow::compute::not(&crate::eval::null_as_false(&eq))?;
                arrow::compute::nullif(&args[0], &arrow::compute::not(&keep)?)?
            }
            Greatest | Least => {
                let mut out = args[0].clone();
                for a in &args[1..] {
                    // Like DuckDB, NULL arguments are ignored.
                    let better = if self == Greatest {
                        arrow::compute::kernels::cmp::gt(a, &out)?
                    } else {
                        arrow::compute::kernels::cmp::lt(a, &out)?
                    };
                    let take_a = arrow::compute::or_kleene(
                        &crate::eval::null_as_false(&better),
                        &arrow::compute::and(&arrow::compute::is_null(&out)?, &is_not_null(a)?)?,
                    )?;
                    out = zip(&take_a, a, &out)?;
                }
                out
            }
            DatePart => date_part(&args[0], &args[1])?,
            DateTrunc => date_trunc(&args[0], &args[1])?,
            Random => Arc::new(Float64Array::from_iter_values((0..rows).map(|_| random_f64()))),
        })
    }
}

fn unify(name: &str, args: &[DataType]) -> Result<DataType> {
    let mut t = DataType::Null;
    for a in args {
        t = common_type(&t, a).ok_or_else(|| {
            RiffleError::plan(format!("{name}() arguments have incompatible types {} and {}", sql_name(&t), sql_name(a)))
        })?;
    }
    Ok(t)
}

fn map_str(a: &ArrayRef, f: impl Fn(&str, &mut StringBuilder)) -> ArrayRef {
    let a = a.as_string::<i32>();
    let mut b = StringBuilder::with_capacity(a.len(), a.value_data().len());
    for v in a.iter() {
        match v {
            Some(s) => f(s, &mut b),
            None => b.append_null(),
        }
    }
    Arc::new(b.finish())
}

fn str_pred(args: &[ArrayRef], f: impl Fn(&str, &str) -> bool) -> ArrayRef {
    let (a, b) = (args[0].as_string::<i32>(), args[1].as_string::<i32>());
    Arc::new(
        (0..a.len())
            .map(|i| (a.is_valid(i) && b.is_valid(i)).then(|| f(a.value(i), b.value(i))))
            .collect::<BooleanArray>(),
    )
}

fn trim(s: &str, side: ScalarFunc, is_trimmed: impl Fn(char) -> bool) -> &str {
    match side {
        ScalarFunc::LTrim => s.trim_start_matches(is_trimmed),
        ScalarFunc::RTrim => s.trim_end_matches(is_trimmed),
        _ => s.trim_matches(is_trimmed),
    }
}

/// SQL substring: 1-based `start`, counted in characters; a start before 1 eats into the length.
/// A slice of `s` (no copy: TPC-DS q23 groups 1.6 M rows by a substring).
pub fn substring(s: &str, start: i64, len: Option<i64>) -> &str {
    let (from, to) = match len {
        Some(l) if l < 0 => return "",
        Some(l) => (start, start.saturating_add(l)),
        None => (start, i64::MAX),
    };
    let from = from.max(1);
    if to <= from {
        return "";
    }
    // The byte offset of character `n` (0-based), or the end.
    let offset = |n: i64| s.char_indices().nth(usize::try_from(n).unwrap_or(usize::MAX)).map_or(s.len(), |(i, _)| i);
    let begin = offset(from - 1);
    let rest = &s[begin..];
    let end = usize::try_from(to - from).ok().and_then(|n| rest.char_indices().nth(n)).map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

fn pad(s: &str, width: usize, fill: &[char], left: bool) -> String {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() >= width || fill.is_empty() {
        return chars.into_iter().take(width).collect();
    }
    let padding: String = fill.iter().cycle().take(width - chars.len()).collect();
    if left { padding + s } else { s.to_string() + &padding }
}

fn zero_of(ty: &DataType) -> Result<ArrayRef> {
    Ok(cast(&(Arc::new(Int64Array::from(vec![0])) as ArrayRef), ty)?)
}

fn unary_f64(a: &ArrayRef, f: fn(f64) -> f64) -> ArrayRef {
    Arc::new(a.as_primitive::<Float64Type>().unary::<_, Float64Type>(f))
}

fn round(args: &[ArrayRef], ty: &DataType) -> Result<ArrayRef> {
    let digits = args.get(1).map(|d| d.as_primitive::<arrow::datatypes::Int64Type>());
    match crate::types::decimal_parts(ty) {
        Some(_) => {
            let wide = widen_decimal(&args[0])?;
            let a = wide.as_primitive::<arrow::datatypes::Decimal128Type>();
            let s = crate::types::decimal_parts(a.data_type()).map_or(0, |(_, s)| s) as i64;
            let out: arrow::array::Decimal128Array = (0..a.len())
                .map(|i| {
                    if a.is_null(i) || digits.is_some_and(|d| d.is_null(i)) {
                        return None;
                    }
                    let d = digits.map(|d| d.value(i)).unwrap_or(0);
                    let drop = s - d;
                    if drop <= 0 {
                        return Some(a.value(i));
                    }
                    let unit = 10i128.checked_pow(drop as u32)?;
                    let v = a.value(i);
                    let half = unit / 2;
                    let r = if v >= 0 { (v + half) / unit } else { (v - half) / unit };
                    Some(r * unit)
                })
                .collect();
            // Still at the input's scale; the caller casts to the (possibly smaller) result scale.
            Ok(cast(&(Arc::new(out.with_data_type(wide.data_type().clone())) as ArrayRef), args[0].data_type())?)
        }
        None if matches!(ty, DataType::Float64 | DataType::Float32) => {
            let a = cast(&args[0], &DataType::Float64)?;
            let a = a.as_primitive::<Float64Type>();
            let out: Float64Array = (0..a.len())
                .map(|i| {
                    if a.is_null(i) || digits.is_some_and(|d| d.is_null(i)) {
                        return None;
                    }
                    Some(round_float(a.value(i), digits.map(|d| d.value(i)).unwrap_or(0)))
                })
                .collect();
            Ok(cast(&(Arc::new(out) as ArrayRef), ty)?)
        }
        _ => Ok(args[0].clone()),
    }
}

/// `x` rounded to `digits` decimal places, halves away from zero, as the exact binary value of `x`
/// rounds (as DuckDB's): 0.975 is 0.97499999999999997… and rounds to 0.97, though `x * 100` lands
/// on 97.5; 0.125 is exact and rounds to 0.13.
fn round_float(x: f64, digits: i64) -> f64 {
    let d = digits.clamp(-308, 308) as i32;
    let m = 10f64.powi(d);
    let y = x * m;
    if !y.is_finite() || d < 0 || (y - y.trunc()).abs() != 0.5 {
        return y.round() / m;
    }
    // `y` is a tie: the digits of `x` past the kept ones decide (enough of them to tell a value of
    // 17 significant digits from the halfway point).
    let text = format!("{:.*}", d as usize + 40, x.abs());
    let past = text.split_once('.').map_or("", |(_, f)| &f[(d as usize).min(f.len())..]);
    let halfway = format!("5{}", "0".repeat(past.len().saturating_sub(1)));
    if past < halfway.as_str() {
        y.trunc() / m
    } else {
        y.round() / m
    }
}

/// A decimal column in 128-bit storage (the width the decimal functions compute in).
pub(crate) fn widen_decimal(a: &ArrayRef) -> Result<ArrayRef> {
    let (p, s) = crate::types::decimal_parts(a.data_type()).ok_or_else(|| RiffleError::exec("decimal expected"))?;
    Ok(cast(a, &DataType::Decimal128(p, s))?)
}

fn floor_ceil(a: &ArrayRef, floor: bool, ty: &DataType) -> Result<ArrayRef> {
    match a.data_type() {
        d if crate::types::is_decimal(d) => {
            let wide = widen_decimal(a)?;
            let arr = wide.as_primitive::<arrow::datatypes::Decimal128Type>();
            let unit = 10i128.pow(crate::types::decimal_parts(d).map_or(0, |(_, s)| s) as u32);
            let out: arrow::array::Decimal128Array = arr.unary(|v| {
                let q = v.div_euclid(unit);
                if floor || v.rem_euclid(unit) == 0 { q } else { q + 1 }
            });
            let (p, s) = crate::types::decimal_parts(ty).unwrap_or((38, 0));
            Ok(cast(&(Arc::new(out.with_precision_and_scale(p, s)?) as ArrayRef), ty)?)
        }
        DataType::Float64 | DataType::Float32 => {
            let f = cast(a, &DataType::Float64)?;
            let out = unary_f64(&f, if floor { f64::floor } else { f64::ceil });
            Ok(cast(&out, ty)?)
        }
        _ => Ok(a.clone()),
    }
}

fn random_f64() -> f64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(0x9E37_79B9_7F4A_7C15 ^ std::process::id() as u64));
    STATE.with(|s| {
        // xorshift64*: good enough for random(), not for cryptography.
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    })
}

fn to_datetime(values: &ArrayRef, i: usize) -> Option<NaiveDateTime> {
    match values.data_type() {
        DataType::Date32 => {
            let d = values.as_any().downcast_ref::<Date32Array>()?;
            d.value_as_datetime(i)
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            values.as_any().downcast_ref::<TimestampMicrosecondArray>()?.value_as_datetime(i)
        }
        _ => None,
    }
}

fn date_part(part: &ArrayRef, values: &ArrayRef) -> Result<ArrayRef> {
    let parts = part.as_string::<i32>();
    let mut out = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        if values.is_null(i) || parts.is_null(i) {
            out.push(None);
            continue;
        }
        let Some(dt) = to_datetime(values, i) else {
            out.push(None);
            continue;
        };
        let p = parts.value(i).to_ascii_lowercase();
        let v: i64 = match p.as_str() {
            "year" | "years" | "y" => dt.year() as i64,
            "month" | "months" | "mon" => dt.month() as i64,
            "day" | "days" | "d" | "dayofmonth" => dt.day() as i64,
            "hour" | "hours" | "h" => dt.hour() as i64,
            "minute" | "minutes" | "m" => dt.minute() as i64,
            "second" | "seconds" | "s" => dt.second() as i64,
            "millisecond" | "milliseconds" => (dt.second() * 1000 + dt.nanosecond() / 1_000_000) as i64,
            "microsecond" | "microseconds" => (dt.second() as i64) * 1_000_000 + (dt.nanosecond() / 1000) as i64,
            "quarter" => ((dt.month() - 1) / 3 + 1) as i64,
            "dow" | "dayofweek" => dt.weekday().num_days_from_sunday() as i64,
            "isodow" => dt.weekday().number_from_monday() as i64,
            "doy" | "dayofyear" => dt.ordinal() as i64,
            "week" | "weeks" | "w" => dt.iso_week().week() as i64,
            "isoyear" => dt.iso_week().year() as i64,
            "epoch" => dt.and_utc().timestamp(),
            "decade" => dt.year() as i64 / 10,
            "century" => (dt.year() as i64 - 1) / 100 + 1,
            other => return Err(RiffleError::plan(format!("unknown date part '{other}' (use year, quarter, month, week, day, dow, doy, hour, minute, second, epoch)"))),
        };
        out.push(Some(v));
    }
    Ok(Arc::new(Int64Array::from(out)))
}

fn date_trunc(unit: &ArrayRef, values: &ArrayRef) -> Result<ArrayRef> {
    let units = unit.as_string::<i32>();
    let mut out = Vec::with_capacity(values.len());
    for i in 0..values.len() {
        if values.is_null(i) || units.is_null(i) {
            out.push(None);
            continue;
        }
        let Some(dt) = to_datetime(values, i) else {
            out.push(None);
            continue;
        };
        let d = dt.date();
        let day = |y: i32, m: u32, dd: u32| NaiveDate::from_ymd_opt(y, m, dd).and_then(|x| x.and_hms_opt(0, 0, 0));
        let t = match units.value(i).to_ascii_lowercase().as_str() {
            "year" | "years" => day(d.year(), 1, 1),
            "quarter" => day(d.year(), (d.month() - 1) / 3 * 3 + 1, 1),
            "month" | "months" => day(d.year(), d.month(), 1),
            "week" | "weeks" => {
                day(d.year(), d.month(), d.day()).map(|x| x - chrono::Duration::days(d.weekday().num_days_from_monday() as i64))
            }
            "day" | "days" => day(d.year(), d.month(), d.day()),
            "hour" | "hours" => d.and_hms_opt(dt.hour(), 0, 0),
            "minute" | "minutes" => d.and_hms_opt(dt.hour(), dt.minute(), 0),
            "second" | "seconds" => d.and_hms_opt(dt.hour(), dt.minute(), dt.second()),
            other => return Err(RiffleError::plan(format!("unknown date_trunc unit '{other}' (use year, quarter, month, week, day, hour, minute, second)"))),
        };
        out.push(t.map(|t| t.and_utc().timestamp_micros()));
    }
    Ok(Arc::new(TimestampMicrosecondArray::from(out)))
}

/// Character-by-character case mapping (as DuckDB): a character whose full mapping has several
/// characters (German ß → SS) keeps one, so the length never changes.
fn simple_case(s: &str, upper: bool) -> String {
    s.chars()
        .map(|c| {
            let mut m: Vec<char> = if upper { c.to_uppercase().collect() } else { c.to_lowercase().collect() };
            match (m.len(), c) {
                (1, _) => m.remove(0),
                (_, 'ß') if upper => 'ẞ',
                _ => c,
            }
        })
        .collect()
}
