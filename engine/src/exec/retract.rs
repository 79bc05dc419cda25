//! Aggregate state that can take rows back: what an updating GROUP BY keeps per group, so that a
//! retraction from its input (`-U`, `-D`) undoes what the row once added. Sums and counts subtract;
//! min, max and count(DISTINCT) keep how often each value occurs, since the old extreme may leave.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, Float64Array, Int64Array, PrimitiveArray};
use arrow::datatypes::{ArrowNativeTypeOp, ArrowPrimitiveType, DataType, Decimal128Type, Float64Type, Int64Type};
use arrow::row::{RowConverter, SortField};

use super::accumulators::Variance;
use crate::error::{Result, RiffleError};
use crate::logical::{AggCall, AggFunc};
use crate::types::sql_name;

pub trait RetractAccumulator: Send {
    /// Adds the value of each row into group `groups[row]` `signs[row]` times: +1 adds, -1 takes back.
    /// `value` is the argument, cast to [`argument_type`]; `None` for count(*).
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()>;
    /// Makes room for groups `0..n`.
    fn resize(&mut self, n: usize);
    /// The current value of each of `groups`, in order.
    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef>;
    /// Forgets group `g`: its slot will hold another group.
    fn reset(&mut self, g: u32);
    /// Bytes held, roughly.
    fn size(&self) -> usize;
    /// The state of each of `groups` as columns with a row per group (for a checkpoint).
    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>>;
    /// How many columns `save` gives.
    fn width(&self) -> usize;
    /// Sets each of `groups` (empty slots) to the state `save` gave.
    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()>;
}

/// Column `i` of a saved state as `T`, or an error naming a damaged checkpoint.
fn saved<T: ArrowPrimitiveType>(state: &[ArrayRef], i: usize) -> Result<&PrimitiveArray<T>> {
    state
        .get(i)
        .and_then(|c| c.as_primitive_opt::<T>())
        .ok_or_else(|| RiffleError::exec("checkpoint: an updating aggregate's state does not match the query; remove the checkpoint directory to start afresh"))
}

/// The type the argument of `call` is cast to before `update`.
pub fn argument_type(call: &AggCall, arg: &DataType) -> DataType {
    match call.func {
        AggFunc::Sum | AggFunc::Min | AggFunc::Max | AggFunc::AnyValue => call.ty.clone(),
        AggFunc::Avg | AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop => DataType::Float64,
        AggFunc::Count | AggFunc::CountStar | AggFunc::Grouping => arg.clone(),
    }
}

/// The state of `call`; with `retracts` false (the input only adds rows), min and max keep just
/// their extreme instead of every value's count. `any_value` is the smallest value here: one that
/// stays well defined as rows are retracted.
pub fn create(call: &AggCall, arg: Option<&DataType>, retracts: bool) -> Result<Box<dyn RetractAccumulator>> {
    Ok(match (call.func, call.distinct) {
        (AggFunc::Min | AggFunc::Max | AggFunc::AnyValue, _) if !retracts => {
            let (converter, null_row) = extreme_encoding(&call.ty)?;
            Box::new(Extreme { converter, values: vec![], min: call.func != AggFunc::Max, null_row, bytes: 0 })
        }
        (AggFunc::CountStar, _) => Box::new(Count { counts: vec![], star: true }),
        (AggFunc::Count, false) => Box::new(Count { counts: vec![], star: false }),
        (AggFunc::Count, true) => {
            let ty = arg.cloned().unwrap_or(DataType::Null);
            Box::new(Occurrences { converter: RowConverter::new(vec![SortField::new(ty)])?, groups: vec![], kind: Kind::Distinct, null_row: None, bytes: 0 })
        }
        (AggFunc::Sum | AggFunc::Avg, true) => {
            return Err(RiffleError::NotSupported(format!("{}(DISTINCT …) in an updating GROUP BY; only count(DISTINCT …) is supported there", call.func.name())))
        }
        (AggFunc::Sum, _) => match &call.ty {
            DataType::Int64 => Box::new(Sum::<Int64Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            DataType::Float64 => Box::new(Sum::<Float64Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            DataType::Decimal128(..) => Box::new(Sum::<Decimal128Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            other => return Err(RiffleError::NotSupported(format!("sum of {} in an updating GROUP BY", sql_name(other)))),
        },
        (AggFunc::Avg, _) => Box::new(Avg { sums: vec![], counts: vec![] }),
        (AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop, _) => Box::new(Variance::new(call.func)),
        (AggFunc::Grouping, _) => return Err(RiffleError::exec("grouping() reached an updating aggregate: it is planned as a constant per grouping set")),
        (AggFunc::Min | AggFunc::Max | AggFunc::AnyValue, _) => {
            let (converter, null_row) = extreme_encoding(&call.ty)?;
            let null_row = Some(null_row);
            let kind = if call.func == AggFunc::Max { Kind::Max } else { Kind::Min };
            Box::new(Occurrences { converter, groups: vec![], kind, null_row, bytes: 0 })
        }
    })
}

/// How min and max hold values of `ty`: row-encoded (which sorts as the values do), and NULL's
/// encoding, their value for a group without values.
fn extreme_encoding(ty: &DataType) -> Result<(RowConverter, Box<[u8]>)> {
    let converter = RowConverter::new(vec![SortField::new(ty.clone())])?;
    let nulls = converter.convert_columns(&[arrow::array::new_null_array(ty, 1)])?;
    let null_row = nulls.row(0).as_ref().into();
    Ok((converter, null_row))
}

/// Calls `f(row, group, sign)` for every row whose value is not NULL.
fn for_valid(groups: &[u32], signs: &[i64], value: Option<&ArrayRef>, mut f: impl FnMut(usize, usize, i64) -> Result<()>) -> Result<()> {
    let nulls = value.and_then(|v| v.logical_nulls());
    for (row, (g, s)) in groups.iter().zip(signs).enumerate() {
        if nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
            f(row, *g as usize, *s)?;
        }
    }
    Ok(())
}

struct Count {
    counts: Vec<i64>,
    star: bool,
}

impl RetractAccumulator for Count {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let value = if self.star { None } else { value };
        for_valid(groups, signs, value, |_, g, s| {
            self.counts[g] += s;
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.counts.resize(n, 0);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| self.counts[*g as usize]))))
    }

    fn reset(&mut self, g: u32) {
        self.counts[g as usize] = 0;
    }

    fn size(&self) -> usize {
        self.counts.capacity() * 8
    }

    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate(groups)?])
    }

    fn width(&self) -> usize {
        1
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        let counts = saved::<Int64Type>(state, 0)?;
        for (g, c) in groups.iter().zip(counts.values()) {
            self.counts[*g as usize] = *c;
        }
        Ok(())
    }
}

/// A sum and how many values it holds (NULL when none).
struct Sum<T: ArrowPrimitiveType> {
    sums: Vec<T::Native>,
    counts: Vec<i64>,
    ty: DataType,
}

impl<T: ArrowPrimitiveType> RetractAccumulator for Sum<T> {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let values = value.ok_or_else(|| RiffleError::exec("sum() without its argument"))?.as_primitive::<T>();
        let ty = &self.ty;
        for_valid(groups, signs, value, |row, g, s| {
            let v = values.value(row);
            let sum = if s > 0 { self.sums[g].add_checked(v) } else { self.sums[g].sub_checked(v) };
            self.sums[g] = sum.map_err(|_| {
                RiffleError::exec(format!("overflow in sum() of {}: cast the argument to a wider type (e.g. DOUBLE)", sql_name(ty)))
            })?;
            self.counts[g] += s;
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.sums.resize(n, T::Native::default());
        self.counts.resize(n, 0);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        let values = groups.iter().map(|g| (self.counts[*g as usize] > 0).then(|| self.sums[*g as usize]));
        Ok(Arc::new(PrimitiveArray::<T>::from_iter(values).with_data_type(self.ty.clone())))
    }

    fn reset(&mut self, g: u32) {
        self.sums[g as usize] = T::Native::default();
        self.counts[g as usize] = 0;
    }

    fn size(&self) -> usize {
        self.sums.capacity() * std::mem::size_of::<T::Native>() + self.counts.capacity() * 8
    }

    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(save_sums::<T>(&self.sums, &self.counts, groups, &self.ty))
    }

    fn width(&self) -> usize {
        2
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        load_sums::<T>(&mut self.sums, &mut self.counts, groups, state)
    }
}

/// A sum-and-count state (sum, avg) of `groups` as two columns: the sums as `ty`, the counts.
fn save_sums<T: ArrowPrimitiveType>(sums: &[T::Native], counts: &[i64], groups: &[u32], ty: &DataType) -> Vec<ArrayRef> {
    let sums = PrimitiveArray::<T>::from_iter_values(groups.iter().map(|g| sums[*g as usize])).with_data_type(ty.clone());
    let counts = Int64Array::from_iter_values(groups.iter().map(|g| counts[*g as usize]));
    vec![Arc::new(sums), Arc::new(counts)]
}

/// Sets `groups` to the sum-and-count state `save_sums` gave.
fn load_sums<T: ArrowPrimitiveType>(sums: &mut [T::Native], counts: &mut [i64], groups: &[u32], state: &[ArrayRef]) -> Result<()> {
    let (saved_sums, saved_counts) = (saved::<T>(state, 0)?, saved::<Int64Type>(state, 1)?);
    for (i, g) in groups.iter().enumerate() {
        sums[*g as usize] = saved_sums.value(i);
        counts[*g as usize] = saved_counts.value(i);
    }
    Ok(())
}

/// avg() of integers, as a double: a sum and a count.
struct Avg {
    sums: Vec<f64>,
    counts: Vec<i64>,
}

impl RetractAccumulator for Avg {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let values = value.ok_or_else(|| RiffleError::exec("avg() without its argument"))?.as_primitive::<Float64Type>();
        for_valid(groups, signs, value, |row, g, s| {
            self.sums[g] += s as f64 * values.value(row);
            self.counts[g] += s;
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.sums.resize(n, 0.0);
        self.counts.resize(n, 0);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        let values = groups.iter().map(|g| {
            let (sum, count) = (self.sums[*g as usize], self.counts[*g as usize]);
            (count > 0).then(|| sum / count as f64)
        });
        Ok(Arc::new(Float64Array::from_iter(values)))
    }

    fn reset(&mut self, g: u32) {
        self.sums[g as usize] = 0.0;
        self.counts[g as usize] = 0;
    }

    fn size(&self) -> usize {
        self.sums.capacity() * 16
    }

    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(save_sums::<Float64Type>(&self.sums, &self.counts, groups, &DataType::Float64))
    }

    fn width(&self) -> usize {
        2
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        load_sums::<Float64Type>(&mut self.sums, &mut self.counts, groups, state)
    }
}

/// Variance and standard deviation: each group's count, mean and sum of squared deviations, kept by
/// Welford's update, which a retraction runs backwards.
impl RetractAccumulator for Variance {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let values = value.ok_or_else(|| RiffleError::exec("variance without its argument"))?.as_primitive::<Float64Type>();
        for_valid(groups, signs, value, |row, g, s| {
            let x = values.value(row);
            for _ in 0..s.unsigned_abs() {
                let (n, mean) = (self.counts[g], self.means[g]);
                if s > 0 {
                    let mean2 = mean + (x - mean) / (n + 1) as f64;
                    self.m2s[g] += (x - mean) * (x - mean2);
                    (self.counts[g], self.means[g]) = (n + 1, mean2);
                } else if n <= 1 {
                    (self.counts[g], self.means[g], self.m2s[g]) = (0, 0.0, 0.0);
                } else {
                    let mean2 = (mean * n as f64 - x) / (n - 1) as f64;
                    self.m2s[g] = (self.m2s[g] - (x - mean) * (x - mean2)).max(0.0);
                    (self.counts[g], self.means[g]) = (n - 1, mean2);
                }
            }
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.groups(n);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        let values = groups.iter().map(|g| {
            let g = *g as usize;
            super::accumulators::variance_value(self.counts[g], self.m2s[g], self.sample, self.root)
        });
        Ok(Arc::new(Float64Array::from_iter(values)))
    }

    fn reset(&mut self, g: u32) {
        let g = g as usize;
        (self.counts[g], self.means[g], self.m2s[g]) = (0, 0.0, 0.0);
    }

    fn size(&self) -> usize {
        self.counts.capacity() * 24
    }

    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let column = |v: &[f64]| -> ArrayRef { Arc::new(Float64Array::from_iter_values(groups.iter().map(|g| v[*g as usize]))) };
        let counts: ArrayRef = Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| self.counts[*g as usize])));
        Ok(vec![counts, column(&self.means), column(&self.m2s)])
    }

    fn width(&self) -> usize {
        3
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        let (counts, means, m2s) = (saved::<Int64Type>(state, 0)?, saved::<Float64Type>(state, 1)?, saved::<Float64Type>(state, 2)?);
        for (i, g) in groups.iter().enumerate() {
            let g = *g as usize;
            (self.counts[g], self.means[g], self.m2s[g]) = (counts.value(i), means.value(i), m2s.value(i));
        }
        Ok(())
    }
}

/// min or max of rows that are only added: each group's extreme so far, row-encoded (empty: none).
struct Extreme {
    converter: RowConverter,
    values: Vec<Vec<u8>>,
    min: bool,
    null_row: Box<[u8]>,
    bytes: usize,
}

impl RetractAccumulator for Extreme {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let value = value.ok_or_else(|| RiffleError::exec("min/max without its argument"))?;
        let rows = self.converter.convert_columns(std::slice::from_ref(value))?;
        let (values, min, bytes) = (&mut self.values, self.min, &mut self.bytes);
        for_valid(groups, signs, Some(value), |row, g, s| {
            if s < 0 {
                return Err(RiffleError::exec("min/max of rows that are only added was asked to take one back"));
            }
            let v = rows.row(row);
            let current = &mut values[g];
            let better = current.is_empty() || if min { v.as_ref() < current.as_slice() } else { v.as_ref() > current.as_slice() };
            if better {
                *bytes = *bytes + v.as_ref().len() - current.len();
                current.clear();
                current.extend_from_slice(v.as_ref());
            }
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.values.resize_with(n, Vec::new);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        let parser = self.converter.parser();
        let rows = groups.iter().map(|g| {
            let v = &self.values[*g as usize];
            parser.parse(if v.is_empty() { &self.null_row } else { v })
        });
        let mut arrays = self.converter.convert_rows(rows)?;
        arrays.pop().ok_or_else(|| RiffleError::exec("min/max decoded no column"))
    }

    fn reset(&mut self, g: u32) {
        let v = std::mem::take(&mut self.values[g as usize]);
        self.bytes -= v.len();
    }

    fn size(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<Vec<u8>>() + self.bytes
    }

    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let values = groups.iter().map(|g| Some(self.values[*g as usize].as_slice()).filter(|v| !v.is_empty()));
        Ok(vec![Arc::new(arrow::array::BinaryArray::from_iter(values))])
    }

    fn width(&self) -> usize {
        1
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        let saved = state.first().and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(|| RiffleError::exec("checkpoint: an updating aggregate's min/max state is damaged; remove the checkpoint directory to start afresh"))?;
        for (i, g) in groups.iter().enumerate() {
            let v = if saved.is_valid(i) { saved.value(i).to_vec() } else { vec![] };
            self.bytes += v.len();
            self.bytes -= self.values[*g as usize].len();
            self.values[*g as usize] = v;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Min,
    Max,
    Distinct,
}

/// How often each value occurs per group, values in their row encoding (which sorts as they do):
/// min and max read the first and last, count(DISTINCT) how many there are.
struct Occurrences {
    converter: RowConverter,
    groups: Vec<BTreeMap<Box<[u8]>, i64>>,
    kind: Kind,
    /// The encoding of NULL: min/max of a group without values.
    null_row: Option<Box<[u8]>>,
    /// Bytes of the stored values.
    bytes: usize,
}

/// What one stored value costs beyond its bytes (the tree's node share and the count).
const ENTRY_OVERHEAD: usize = 48;

impl RetractAccumulator for Occurrences {
    fn update(&mut self, groups: &[u32], signs: &[i64], value: Option<&ArrayRef>) -> Result<()> {
        let value = value.ok_or_else(|| RiffleError::exec("an aggregate without its argument"))?;
        let rows = self.converter.convert_columns(std::slice::from_ref(value))?;
        let (states, bytes) = (&mut self.groups, &mut self.bytes);
        for_valid(groups, signs, Some(value), |row, g, s| {
            let key = rows.row(row);
            let map = &mut states[g];
            match map.get_mut(key.as_ref()) {
                Some(n) => {
                    *n += s;
                    if *n == 0 {
                        map.remove(key.as_ref());
                        *bytes -= key.as_ref().len() + ENTRY_OVERHEAD;
                    }
                }
                None => {
                    map.insert(key.as_ref().into(), s);
                    *bytes += key.as_ref().len() + ENTRY_OVERHEAD;
                }
            }
            Ok(())
        })
    }

    fn resize(&mut self, n: usize) {
        self.groups.resize_with(n, BTreeMap::new);
    }

    fn evaluate(&self, groups: &[u32]) -> Result<ArrayRef> {
        if self.kind == Kind::Distinct {
            let counts = groups.iter().map(|g| self.groups[*g as usize].values().filter(|n| **n > 0).count() as i64);
            return Ok(Arc::new(Int64Array::from_iter_values(counts)));
        }
        let null = self.null_row.as_deref().unwrap_or_default();
        let parser = self.converter.parser();
        let rows = groups.iter().map(|g| {
            // A value taken back more often than added (never, from a consistent changelog) does not count.
            let mut present = self.groups[*g as usize].iter().filter(|(_, n)| **n > 0).map(|(k, _)| k);
            let extreme = if self.kind == Kind::Min { present.next() } else { present.next_back() };
            parser.parse(extreme.map_or(null, |k| k.as_ref()))
        });
        let mut arrays = self.converter.convert_rows(rows)?;
        arrays.pop().ok_or_else(|| RiffleError::exec("min/max decoded no column"))
    }

    fn reset(&mut self, g: u32) {
        let map = std::mem::take(&mut self.groups[g as usize]);
        self.bytes -= map.keys().map(|k| k.len() + ENTRY_OVERHEAD).sum::<usize>();
    }

    fn size(&self) -> usize {
        self.groups.capacity() * std::mem::size_of::<BTreeMap<Box<[u8]>, i64>>() + self.bytes
    }

    /// Per group, its values and their counts packed into one binary value: for each, the length
    /// of its row encoding (u32), the encoding, the count (i64), little-endian.
    fn save(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let mut packed = BinaryBuilder::new();
        let mut buf = Vec::new();
        for g in groups {
            buf.clear();
            for (value, n) in &self.groups[*g as usize] {
                buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
                buf.extend_from_slice(value);
                buf.extend_from_slice(&n.to_le_bytes());
            }
            packed.append_value(&buf);
        }
        Ok(vec![Arc::new(packed.finish())])
    }

    fn width(&self) -> usize {
        1
    }

    fn load(&mut self, groups: &[u32], state: &[ArrayRef]) -> Result<()> {
        let damaged = || RiffleError::exec("checkpoint: an updating aggregate's min/max/count(DISTINCT) state is damaged; remove the checkpoint directory to start afresh");
        let packed = state.first().and_then(|c| c.as_binary_opt::<i32>()).ok_or_else(damaged)?;
        for (i, g) in groups.iter().enumerate() {
            let mut rest = packed.value(i);
            let map = &mut self.groups[*g as usize];
            while !rest.is_empty() {
                let len = rest.get(..4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes).ok_or_else(damaged)? as usize;
                let value = rest.get(4..4 + len).ok_or_else(damaged)?;
                let n = rest.get(4 + len..12 + len).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes).ok_or_else(damaged)?;
                self.bytes += value.len() + ENTRY_OVERHEAD;
                map.insert(value.into(), n);
                rest = &rest[12 + len..];
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Decimal128Array, StringArray};

    /// Every kind of state, saved for some groups and loaded into other slots of a fresh
    /// accumulator, evaluates as before there, and takes rows back as before.
    #[test]
    fn saved_state_loads_back_into_other_slots() {
        let cases: Vec<(AggFunc, bool, DataType, ArrayRef)> = vec![
            (AggFunc::CountStar, false, DataType::Int64, Arc::new(Int64Array::from(vec![1, 2, 3, 4]))),
            (AggFunc::Count, true, DataType::Int64, Arc::new(StringArray::from(vec![Some("x"), None, Some("y"), Some("x")]))),
            (AggFunc::Sum, false, DataType::Decimal128(20, 2), Arc::new(Decimal128Array::from(vec![150, 250, -75, 5]).with_precision_and_scale(20, 2).expect("decimal"))),
            (AggFunc::Sum, false, DataType::Float64, Arc::new(Float64Array::from(vec![0.5, 1.25, 2.0, -1.0]))),
            (AggFunc::Avg, false, DataType::Float64, Arc::new(Int64Array::from(vec![1, 2, 4, 8]))),
            (AggFunc::Min, false, DataType::Utf8, Arc::new(StringArray::from(vec!["m", "b", "z", "a"]))),
            (AggFunc::Max, false, DataType::Int64, Arc::new(Int64Array::from(vec![Some(3), None, Some(9), Some(7)]))),
        ];
        let extremes = cases.iter().filter(|c| matches!(c.0, AggFunc::Min | AggFunc::Max)).map(|c| (c.clone(), false));
        let cases: Vec<_> = cases.iter().map(|c| (c.clone(), true)).chain(extremes.collect::<Vec<_>>()).collect();
        for ((func, distinct, ty, values), retracts) in cases {
            let call = AggCall { func, args: vec![], distinct, ty: ty.clone() };
            let arg_type = argument_type(&call, values.data_type());
            let values = arrow::compute::cast(&values, &arg_type).expect("cast");
            let mut acc = create(&call, Some(&arg_type), retracts).expect("accumulator");
            acc.resize(2);
            acc.update(&[0, 1, 0, 0], &[1, 1, 1, 1], Some(&values)).expect("update");
            let saved = acc.save(&[0, 1]).expect("save");
            assert_eq!(saved.len(), acc.width());
            let mut back = create(&call, Some(&arg_type), retracts).expect("accumulator");
            back.resize(5);
            back.load(&[4, 2], &saved).expect("load");
            let want = acc.evaluate(&[0, 1]).expect("evaluate");
            assert_eq!(back.evaluate(&[4, 2]).expect("evaluate").as_ref(), want.as_ref(), "{func:?}");
            if !retracts {
                // Only added rows: a later value updates both alike; none can be taken back.
                let more = values.slice(0, 1);
                acc.update(&[0], &[1], Some(&more)).expect("update");
                back.update(&[4], &[1], Some(&more)).expect("update");
                assert_eq!(back.evaluate(&[4]).expect("evaluate").as_ref(), acc.evaluate(&[0]).expect("evaluate").as_ref(), "{func:?}");
                assert!(back.update(&[4], &[-1], Some(&more)).is_err(), "a retraction is refused");
                continue;
            }
            // Taking the last row of group 0 back works on the loaded state as on the original.
            let last = values.slice(3, 1);
            acc.update(&[0], &[-1], Some(&last)).expect("retract");
            back.update(&[4], &[-1], Some(&last)).expect("retract");
            assert_eq!(back.evaluate(&[4]).expect("evaluate").as_ref(), acc.evaluate(&[0]).expect("evaluate").as_ref(), "{func:?}");
            assert_eq!(back.size() > 0, acc.size() > 0);
        }
        // A state of other columns than the query's is a clear error, not a panic.
        let call = AggCall { func: AggFunc::Sum, args: vec![], distinct: false, ty: DataType::Int64 };
        let mut acc = create(&call, Some(&DataType::Int64), true).expect("accumulator");
        acc.resize(1);
        let wrong: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vec!["x"]))];
        assert!(acc.load(&[0], &wrong).is_err());
    }
}
