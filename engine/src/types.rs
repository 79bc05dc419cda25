//! SQL types: names, coercion rules (following DuckDB's, our oracle) and arithmetic result types.

use arrow::datatypes::{DataType, IntervalUnit, TimeUnit};

use crate::error::{Result, RiffleError};
use crate::logical::BinaryOp;

pub const DECIMAL_MAX_PRECISION: u8 = 38;

/// Most digits a decimal stored in 64 bits holds.
pub const DECIMAL64_MAX_PRECISION: u8 = 18;

/// `DECIMAL(p, s)` as Riffle stores it: as DuckDB does, in 64-bit integers up to 18 digits (half the
/// memory traffic, and Parquet's INT64 decimals are read without widening) and in 128-bit beyond.
pub fn decimal(p: u8, s: i8) -> DataType {
    if p <= DECIMAL64_MAX_PRECISION { DataType::Decimal64(p, s) } else { DataType::Decimal128(p, s) }
}

/// `schema` with every column in its storage type (see `storage_type`).
pub fn storage_schema(schema: &arrow::datatypes::SchemaRef) -> arrow::datatypes::SchemaRef {
    if schema.fields().iter().all(|f| storage_type(f.data_type()) == *f.data_type()) {
        return schema.clone();
    }
    let fields: Vec<arrow::datatypes::Field> =
        schema.fields().iter().map(|f| f.as_ref().clone().with_data_type(storage_type(f.data_type()))).collect();
    std::sync::Arc::new(arrow::datatypes::Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Precision and scale of a decimal type of either width.
pub fn decimal_parts(ty: &DataType) -> Option<(u8, i8)> {
    match ty {
        DataType::Decimal32(p, s) | DataType::Decimal64(p, s) | DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            Some((*p, *s))
        }
        _ => None,
    }
}

pub fn is_decimal(ty: &DataType) -> bool {
    decimal_parts(ty).is_some()
}

/// The type Riffle stores values of `ty` in: decimals at the width their precision needs (a Parquet
/// or Arrow file may hold a narrow decimal in 128 bits), everything else as it is.
pub fn storage_type(ty: &DataType) -> DataType {
    match decimal_parts(ty) {
        Some((p, s)) if p <= DECIMAL_MAX_PRECISION => decimal(p, s),
        _ => ty.clone(),
    }
}

/// Parses a SQL type name such as `DECIMAL(15,2)`, `VARCHAR(25)`, `TIMESTAMP(3)`, `BIGINT`.
pub fn parse_sql_type(text: &str) -> Result<DataType> {
    let upper = text.trim().to_ascii_uppercase();
    let (base, params) = match upper.find('(') {
        Some(i) => (upper[..i].trim().to_string(), upper[i + 1..].trim_end_matches(')').to_string()),
        None => (upper.clone(), String::new()),
    };
    let nums: Vec<u64> = params.split(',').filter_map(|p| p.trim().parse().ok()).collect();
    let base = base.trim_end_matches(" UNSIGNED").trim();
    Ok(match base {
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" | "INT1" => DataType::Int8,
        "SMALLINT" | "INT2" => DataType::Int16,
        "INT" | "INTEGER" | "INT4" | "MEDIUMINT" => DataType::Int32,
        "BIGINT" | "INT8" | "LONG" => DataType::Int64,
        // As in DuckDB and Flink, FLOAT is single precision.
        "REAL" | "FLOAT4" | "FLOAT" => DataType::Float32,
        "DOUBLE" | "DOUBLE PRECISION" | "FLOAT8" | "FLOAT64" => DataType::Float64,
        "DECIMAL" | "NUMERIC" | "DEC" => {
            let p = nums.first().copied().unwrap_or(18).min(DECIMAL_MAX_PRECISION as u64) as u8;
            let s = nums.get(1).copied().unwrap_or(if nums.is_empty() { 3 } else { 0 }) as i8;
            if s as u8 > p {
                return Err(RiffleError::plan(format!("invalid type {text}: scale {s} exceeds precision {p}")));
            }
            decimal(p.max(1), s)
        }
        "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING" | "TEXT" | "STRING" | "BPCHAR" | "NVARCHAR" => {
            DataType::Utf8
        }
        "BLOB" | "BYTEA" | "BINARY" | "VARBINARY" | "BYTES" => DataType::Binary,
        "DATE" => DataType::Date32,
        // Flink's event-time types; Riffle's timestamps carry no zone.
        "TIMESTAMP" | "DATETIME" | "TIMESTAMP WITHOUT TIME ZONE" | "TIMESTAMP_LTZ" | "TIMESTAMP WITH LOCAL TIME ZONE" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "INTERVAL" => DataType::Interval(IntervalUnit::MonthDayNano),
        _ => return Err(RiffleError::NotSupported(format!("type {text}"))),
    })
}

/// The SQL name of a type, as DuckDB would print it.
pub fn sql_name(ty: &DataType) -> String {
    match ty {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Decimal64(p, s) | DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "VARCHAR".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            "BLOB".into()
        }
        DataType::Date32 => "DATE".into(),
        DataType::Timestamp(..) => "TIMESTAMP".into(),
        DataType::Interval(_) => "INTERVAL".into(),
        DataType::Null => "NULL".into(),
        other => format!("{other}"),
    }
}

pub fn is_integer(ty: &DataType) -> bool {
    ty.is_integer()
}

pub fn is_numeric(ty: &DataType) -> bool {
    ty.is_integer() || ty.is_floating() || is_decimal(ty)
}

pub fn is_string(ty: &DataType) -> bool {
    matches!(ty, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

pub fn is_temporal(ty: &DataType) -> bool {
    matches!(ty, DataType::Date32 | DataType::Timestamp(..))
}

/// Digits before the decimal point an integer type needs.
fn integer_digits(ty: &DataType) -> u8 {
    match ty {
        DataType::Int8 | DataType::UInt8 => 3,
        DataType::Int16 | DataType::UInt16 => 5,
        DataType::Int32 | DataType::UInt32 => 10,
        DataType::UInt64 => 20,
        _ => 19,
    }
}

fn integer_rank(ty: &DataType) -> u8 {
    match ty {
        DataType::Int8 => 1,
        DataType::Int16 | DataType::UInt8 => 2,
        DataType::Int32 | DataType::UInt16 => 3,
        _ => 4,
    }
}

/// The type both sides of a comparison, a CASE, a UNION or an IN list are converted to.
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    use DataType::*;
    if a == b {
        return Some(a.clone());
    }
    match (a, b) {
        (Null, t) | (t, Null) => Some(t.clone()),
        (x, y) if x.is_integer() && y.is_integer() => {
            Some(if integer_rank(x) >= integer_rank(y) { widen_int(x) } else { widen_int(y) })
        }
        (x, y) if is_decimal(x) && is_decimal(y) => {
            let ((p1, s1), (p2, s2)) = (decimal_parts(x)?, decimal_parts(y)?);
            let s = s1.max(s2);
            let int_digits = (p1 as i16 - s1 as i16).max(p2 as i16 - s2 as i16);
            Some(decimal(((int_digits + s as i16) as u8).min(DECIMAL_MAX_PRECISION), s))
        }
        (d, i) | (i, d) if is_decimal(d) && i.is_integer() => common_type(d, &as_decimal(i)),
        (x, y) if is_numeric(x) && is_numeric(y) => Some(Float64),
        (Date32, Timestamp(u, tz)) | (Timestamp(u, tz), Date32) => Some(Timestamp(*u, tz.clone())),
        // A string literal compared with a typed value takes the other type (`d < '1998-01-01'`).
        (s, t) | (t, s) if is_string(s) && !is_string(t) => Some(t.clone()),
        (x, y) if is_string(x) && is_string(y) => Some(Utf8),
        (Binary, _) | (_, Binary) => Some(Binary),
        _ => None,
    }
}

fn widen_int(ty: &DataType) -> DataType {
    match ty {
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        other => other.clone(),
    }
}

/// The type `left op right` has once both operands have been coerced by `arithmetic_operand_types`.
pub fn arithmetic_result(op: BinaryOp, left: &DataType, right: &DataType) -> Result<DataType> {
    use DataType::*;
    Ok(match (op, left, right) {
        (BinaryOp::Concat, _, _) => Utf8,
        (BinaryOp::Div, _, _) => Float64,
        (_, l, r) if is_decimal(l) && is_decimal(r) => {
            let ((p1, s1), (p2, s2)) = (decimal_parts(l).unwrap_or((38, 0)), decimal_parts(r).unwrap_or((38, 0)));
            match op {
                BinaryOp::Add | BinaryOp::Sub => {
                    let s = s1.max(s2);
                    let p = s as i16 + (p1 as i16 - s1 as i16).max(p2 as i16 - s2 as i16) + 1;
                    decimal((p as u8).min(DECIMAL_MAX_PRECISION), s)
                }
                BinaryOp::Mul => decimal((p1 + p2 + 1).min(DECIMAL_MAX_PRECISION), s1 + s2),
                BinaryOp::Mod => decimal(p1.max(p2), s1.max(s2)),
                _ => Int64,
            }
        }
        (BinaryOp::Sub, Date32, Date32) => Int64,
        (BinaryOp::Sub, Timestamp(..), Timestamp(..)) => Interval(IntervalUnit::MonthDayNano),
        (_, Date32, t) | (_, t, Date32) if t.is_integer() => Date32,
        (_, Timestamp(u, tz), _) | (_, _, Timestamp(u, tz)) => Timestamp(*u, tz.clone()),
        (BinaryOp::IntDiv, l, _) => l.clone(),
        (_, l, _) => l.clone(),
    })
}

/// The types `left` and `right` must be cast to before `op` is applied.
pub fn arithmetic_operand_types(op: BinaryOp, left: &DataType, right: &DataType) -> Result<(DataType, DataType)> {
    use DataType::*;
    let err = || {
        RiffleError::plan(format!(
            "cannot apply '{}' to {} and {}: add an explicit CAST",
            op.symbol(),
            sql_name(left),
            sql_name(right)
        ))
    };
    if op == BinaryOp::Concat {
        return Ok((Utf8, Utf8));
    }
    match (left, right) {
        // As DuckDB: a date plus an interval is a timestamp.
        (Date32 | Timestamp(..), Interval(_)) if matches!(op, BinaryOp::Add | BinaryOp::Sub) => {
            Ok((Timestamp(TimeUnit::Microsecond, None), right.clone()))
        }
        (Interval(_), Date32 | Timestamp(..)) if op == BinaryOp::Add => {
            Ok((left.clone(), Timestamp(TimeUnit::Microsecond, None)))
        }
        (Date32, Date32) | (Timestamp(..), Timestamp(..)) if op == BinaryOp::Sub => Ok((left.clone(), right.clone())),
        (Date32, i) if i.is_integer() && matches!(op, BinaryOp::Add | BinaryOp::Sub) => Ok((Date32, Int32)),
        (i, Date32) if i.is_integer() && op == BinaryOp::Add => Ok((Int32, Date32)),
        (Null, Null) => Ok((Int32, Int32)),
        (Null, t) | (t, Null) if is_numeric(t) => Ok((t.clone(), t.clone())),
        _ if is_numeric(left) && is_numeric(right) => {
            if op == BinaryOp::Div {
                return Ok((Float64, Float64));
            }
            let common = common_type(left, right).ok_or_else(err)?;
            match (op, left, right, &common) {
                // Decimals keep their own scales; arrow's decimal kernels align them.
                (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul, l, r, c)
                    if is_decimal(c) && (is_decimal(l) || is_decimal(r)) =>
                {
                    Ok((as_decimal(left), as_decimal(right)))
                }
                _ => Ok((common.clone(), common)),
            }
        }
        _ if is_string(left) && is_numeric(right) => Ok((right.clone(), right.clone())),
        _ if is_numeric(left) && is_string(right) => Ok((left.clone(), left.clone())),
        _ => Err(err()),
    }
}

fn as_decimal(ty: &DataType) -> DataType {
    match ty {
        d if is_decimal(d) => d.clone(),
        i => decimal(integer_digits(i), 0),
    }
}
