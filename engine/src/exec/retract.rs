//! Aggregate state that can take rows back: what an updating GROUP BY keeps per group, so that a
//! retraction from its input (`-U`, `-D`) undoes what the row once added. Sums and counts subtract;
//! min, max and count(DISTINCT) keep how often each value occurs, since the old extreme may leave.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, PrimitiveArray};
use arrow::datatypes::{ArrowNativeTypeOp, ArrowPrimitiveType, DataType, Decimal128Type, Float64Type, Int64Type};
use arrow::row::{RowConverter, SortField};

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
}

/// The type the argument of `call` is cast to before `update`.
pub fn argument_type(call: &AggCall, arg: &DataType) -> DataType {
    match call.func {
        AggFunc::Sum | AggFunc::Min | AggFunc::Max => call.ty.clone(),
        AggFunc::Avg => DataType::Float64,
        AggFunc::Count | AggFunc::CountStar => arg.clone(),
    }
}

pub fn create(call: &AggCall, arg: Option<&DataType>) -> Result<Box<dyn RetractAccumulator>> {
    Ok(match (call.func, call.distinct) {
        (AggFunc::CountStar, _) => Box::new(Count { counts: vec![], star: true }),
        (AggFunc::Count, false) => Box::new(Count { counts: vec![], star: false }),
        (AggFunc::Count, true) => {
            let ty = arg.cloned().unwrap_or(DataType::Null);
            Box::new(Occurrences { converter: RowConverter::new(vec![SortField::new(ty)])?, groups: vec![], kind: Kind::Distinct, null_row: None, bytes: 0 })
        }
        (AggFunc::Sum, _) => match &call.ty {
            DataType::Int64 => Box::new(Sum::<Int64Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            DataType::Float64 => Box::new(Sum::<Float64Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            DataType::Decimal128(..) => Box::new(Sum::<Decimal128Type> { sums: vec![], counts: vec![], ty: call.ty.clone() }),
            other => return Err(RiffleError::NotSupported(format!("sum of {} in an updating GROUP BY", sql_name(other)))),
        },
        (AggFunc::Avg, _) => Box::new(Avg { sums: vec![], counts: vec![] }),
        (AggFunc::Min | AggFunc::Max, _) => {
            let converter = RowConverter::new(vec![SortField::new(call.ty.clone())])?;
            let nulls = converter.convert_columns(&[arrow::array::new_null_array(&call.ty, 1)])?;
            let null_row = Some(nulls.row(0).as_ref().into());
            let kind = if call.func == AggFunc::Min { Kind::Min } else { Kind::Max };
            Box::new(Occurrences { converter, groups: vec![], kind, null_row, bytes: 0 })
        }
    })
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
}
