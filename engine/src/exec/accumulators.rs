//! Vectorized aggregate state, one slot per group. Partial states are plain arrays (`state`), merged
//! with `merge`: how per-thread tables combine at finalize, and, later, how spilled partitions return.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, Decimal128Array, Float64Array, Int64Array, ListBuilder,
    PrimitiveArray, StringArray,
};
use arrow::datatypes::{
    ArrowNativeTypeOp, ArrowPrimitiveType, DataType, Date32Type, Decimal128Type, Decimal64Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, TimeUnit, TimestampMicrosecondType,
};
use arrow::row::{RowConverter, SortField};

use crate::error::{Result, RiffleError};
use crate::logical::{AggCall, AggFunc};
use crate::types::sql_name;

pub trait GroupsAccumulator: Send {
    /// Adds `values` (the aggregate's arguments) row by row into `groups[row]`.
    fn update(&mut self, groups: &[u32], num_groups: usize, values: &[ArrayRef]) -> Result<()>;
    /// Adds partial states produced by `state` of another accumulator of the same kind.
    fn merge(&mut self, groups: &[u32], num_groups: usize, states: &[ArrayRef]) -> Result<()>;
    /// The partial state of every group, as arrays.
    fn state(&mut self) -> Result<Vec<ArrayRef>>;
    /// The partial state of `groups` (each below the group count last passed), as `state` gives
    /// it, the groups kept: for a checkpoint of the groups changed since the last one.
    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>>;
    /// The final value of every group.
    fn evaluate(&mut self) -> Result<ArrayRef>;
    fn size(&self) -> usize;
    /// Makes room for exactly `n` groups: adds groups that saw no rows (e.g. the one group of an empty
    /// input), or drops the last ones.
    fn resize(&mut self, n: usize);
    /// For `count`: adds `rows[g]` to each group, in place of `update` when no argument value is NULL
    /// (the aggregate counts a batch's rows per group once for all its counts). False if this is not
    /// a count.
    fn add_rows(&mut self, _rows: &[i64]) -> bool {
        false
    }
}

/// The values of `groups` (a group past the end has the default: it saw no row yet).
fn gathered<'a, V: Copy + Default>(values: &'a [V], groups: &'a [u32]) -> impl Iterator<Item = V> + 'a {
    groups.iter().map(|g| values.get(*g as usize).copied().unwrap_or_default())
}

/// How many of `groups` fall in each of `n` groups.
pub fn rows_per_group(groups: &[u32], n: usize) -> Vec<i64> {
    let mut counts = vec![0i64; n];
    scatter_add(groups, None, &mut counts, |_| 1, |a, b| Some(a + b));
    counts
}

/// An accumulator whose partial state is its value (sum, min, max): merging adds states like values.
trait ValueAccumulator: Send {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()>;
    fn take(&mut self) -> Result<ArrayRef>;
    /// The values of `groups`, as `take` gives them, the groups kept.
    fn gather(&self, groups: &[u32]) -> Result<ArrayRef>;
    fn grow(&mut self, n: usize);
    fn bytes(&self) -> usize;
}

impl<A: ValueAccumulator> GroupsAccumulator for A {
    fn update(&mut self, groups: &[u32], n: usize, values: &[ArrayRef]) -> Result<()> {
        self.add(groups, n, &values[0])
    }

    fn merge(&mut self, groups: &[u32], n: usize, states: &[ArrayRef]) -> Result<()> {
        self.add(groups, n, &states[0])
    }

    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.take()?])
    }

    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.gather(groups)?])
    }

    fn evaluate(&mut self) -> Result<ArrayRef> {
        self.take()
    }

    fn size(&self) -> usize {
        self.bytes()
    }

    fn resize(&mut self, n: usize) {
        self.grow(n)
    }
}

/// The accumulator for `call`; its argument arrays arrive already cast to `input_type(call)`.
pub fn create(call: &AggCall, arg_type: Option<&DataType>) -> Result<Box<dyn GroupsAccumulator>> {
    Ok(match (call.func, call.distinct) {
        (AggFunc::CountStar, _) => Box::new(Count { counts: vec![], star: true }),
        (AggFunc::Count, false) => Box::new(Count { counts: vec![], star: false }),
        (AggFunc::Count, true) => {
            let t = arg_type.cloned().unwrap_or(DataType::Null);
            Box::new(CountDistinct { sets: vec![], converter: RowConverter::new(vec![SortField::new(t)])?, bytes: 0 })
        }
        // Planned as two aggregates (`partial_agg::distinct_in_two_steps`) when it is the only
        // DISTINCT argument over bounded input; no set of values per group for these yet.
        (AggFunc::Sum | AggFunc::Avg, true) => {
            return Err(RiffleError::NotSupported(format!(
                "{}(DISTINCT …) beside a DISTINCT aggregate of another argument, or over a stream; only count(DISTINCT …) is supported there",
                call.func.name()
            )))
        }
        (AggFunc::Sum, _) => match &call.ty {
            DataType::Int64 => Box::new(Sum::<Int64Type>::new(call.ty.clone())),
            DataType::Float64 => Box::new(Sum::<Float64Type>::new(call.ty.clone())),
            DataType::Decimal128(..) => Box::new(Sum::<Decimal128Type>::new(call.ty.clone())),
            other => return Err(RiffleError::NotSupported(format!("sum of {}", sql_name(other)))),
        },
        // avg of decimals and doubles is planned as sum / count; what is left averages as doubles.
        (AggFunc::Avg, _) => Box::new(Avg { sums: vec![], counts: vec![] }),
        (AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop, _) => Box::new(Variance::new(call.func)),
        (AggFunc::Grouping, _) => return Err(RiffleError::exec("grouping() reached an aggregate: it is planned as a constant per grouping set")),
        (AggFunc::AnyValue, _) => Box::new(AnyValue { ty: call.ty.clone(), at: vec![], chunks: vec![], bytes: 0 }),
        (AggFunc::Min | AggFunc::Max, _) => {
            let is_min = call.func == AggFunc::Min;
            macro_rules! prim {
                ($t:ty) => {
                    Box::new(MinMax::<$t> { values: vec![], is_min, ty: call.ty.clone() }) as Box<dyn GroupsAccumulator>
                };
            }
            match &call.ty {
                DataType::Int8 => prim!(Int8Type),
                DataType::Int16 => prim!(Int16Type),
                DataType::Int32 => prim!(Int32Type),
                DataType::Int64 => prim!(Int64Type),
                DataType::Float32 => prim!(Float32Type),
                DataType::Float64 => prim!(Float64Type),
                DataType::Date32 => prim!(Date32Type),
                DataType::Timestamp(TimeUnit::Microsecond, _) => prim!(TimestampMicrosecondType),
                DataType::Decimal64(..) => prim!(Decimal64Type),
                DataType::Decimal128(..) => prim!(Decimal128Type),
                DataType::Utf8 => Box::new(StrMinMax { values: vec![], is_min }),
                DataType::Boolean => Box::new(BoolMinMax { values: vec![], is_min }),
                DataType::Null => Box::new(Count { counts: vec![], star: false }),
                other => return Err(RiffleError::NotSupported(format!("{}() of {}", call.func.name(), sql_name(other)))),
            }
        }
    })
}

/// The type an aggregate's argument is cast to before `update`.
pub fn input_type(call: &AggCall, arg: &DataType) -> DataType {
    match call.func {
        // A sum reads decimals of either width at its own scale.
        AggFunc::Sum if crate::types::is_decimal(arg) => arg.clone(),
        AggFunc::Sum => call.ty.clone(),
        AggFunc::Avg | AggFunc::VarSamp | AggFunc::VarPop | AggFunc::StddevSamp | AggFunc::StddevPop => DataType::Float64,
        AggFunc::Min | AggFunc::Max => call.ty.clone(),
        _ => arg.clone(),
    }
}

struct Count {
    counts: Vec<i64>,
    star: bool,
}

impl GroupsAccumulator for Count {
    fn resize(&mut self, n: usize) {
        self.counts.resize(n, 0);
    }

    fn update(&mut self, groups: &[u32], n: usize, values: &[ArrayRef]) -> Result<()> {
        self.counts.resize(n, 0);
        let nulls = values.first().filter(|_| !self.star).and_then(|v| v.logical_nulls());
        // A count cannot reach 2^63 rows: no overflow check.
        scatter_add(groups, nulls.as_ref(), &mut self.counts, |_| 1, |a, b| Some(a + b));
        Ok(())
    }

    fn merge(&mut self, groups: &[u32], n: usize, states: &[ArrayRef]) -> Result<()> {
        self.counts.resize(n, 0);
        let c = states[0].as_primitive::<Int64Type>();
        for (i, g) in groups.iter().enumerate() {
            self.counts[*g as usize] += c.value(i);
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.evaluate()?])
    }

    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![Arc::new(Int64Array::from_iter_values(gathered(&self.counts, groups)))])
    }

    fn evaluate(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(Int64Array::from(std::mem::take(&mut self.counts))))
    }

    fn size(&self) -> usize {
        self.counts.capacity() * 8
    }

    fn add_rows(&mut self, rows: &[i64]) -> bool {
        self.counts.resize(rows.len().max(self.counts.len()), 0);
        self.counts.iter_mut().zip(rows).for_each(|(c, r)| *c += r);
        true
    }
}

/// Addition that reports overflow instead of wrapping.
trait CheckedSum: ArrowPrimitiveType {
    fn add_checked(a: Self::Native, b: Self::Native) -> Option<Self::Native>;

    /// A 64-bit integer (or a 64-bit decimal's unscaled value) as a summand.
    fn from_i64(v: i64) -> Self::Native;
}

impl CheckedSum for Int64Type {
    fn add_checked(a: i64, b: i64) -> Option<i64> {
        a.checked_add(b)
    }

    fn from_i64(v: i64) -> i64 {
        v
    }
}

impl CheckedSum for Float64Type {
    fn add_checked(a: f64, b: f64) -> Option<f64> {
        Some(a + b)
    }

    fn from_i64(v: i64) -> f64 {
        v as f64
    }
}

impl CheckedSum for Decimal128Type {
    fn add_checked(a: i128, b: i128) -> Option<i128> {
        // i128 holds more than 38 digits; the precision is checked once, when the sum is produced.
        a.checked_add(b)
    }

    fn from_i64(v: i64) -> i128 {
        v as i128
    }
}

struct Sum<T: CheckedSum> {
    sums: Vec<T::Native>,
    /// Which groups have had a value (the others sum to NULL); `None` while every group has, which
    /// spares the hot loop a store per row as long as the input holds no NULLs.
    seen: Option<Vec<bool>>,
    ty: DataType,
}

impl<T: CheckedSum> Sum<T> {
    fn new(ty: DataType) -> Self {
        Sum { sums: vec![], seen: None, ty }
    }

    fn seen_mut(&mut self) -> &mut Vec<bool> {
        let had = self.sums.len();
        self.seen.get_or_insert_with(|| vec![true; had])
    }

    fn accumulate(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        match values.data_type() {
            // Few groups, no NULLs, and the batch's sums fit 64 bits: add them there, then once into the
            // 128-bit totals (a group the batch lacks adds 0; every group made by it got a value).
            DataType::Decimal64(p, _)
                if self.seen.is_none()
                    && values.null_count() == 0
                    && !groups.is_empty()
                    && n <= LANED_GROUPS
                    && fits_i64(groups.len(), *p) =>
            {
                let xs = values.as_primitive::<Decimal64Type>().values();
                let mut batch = vec![0i64; n];
                scatter_add(groups, None, &mut batch, |i| xs[i], |a, b| Some(a.wrapping_add(b)));
                self.sums.resize(n, T::Native::default());
                for (s, b) in self.sums.iter_mut().zip(&batch) {
                    *s = s.add_wrapping(T::from_i64(*b));
                }
                Ok(())
            }
            // Decimals of up to 18 digits cannot overflow 128 bits below 2^63 rows (< 10^37).
            DataType::Decimal64(..) => self.accumulate_from::<Decimal64Type>(groups, n, values, T::from_i64, true),
            _ => self.accumulate_from::<T>(groups, n, values, |v| v, false),
        }
    }

    fn accumulate_from<I: ArrowPrimitiveType>(
        &mut self,
        groups: &[u32],
        n: usize,
        values: &ArrayRef,
        widen: impl Fn(I::Native) -> T::Native,
        unchecked: bool,
    ) -> Result<()> {
        let v = values.as_primitive_opt::<I>().ok_or_else(|| {
            RiffleError::exec(format!("sum() of {} got {}", sql_name(&self.ty), sql_name(values.data_type())))
        })?;
        // New groups come from rows of this batch, so without NULLs they all get a value; only the
        // single group of an aggregate without GROUP BY exists before any row.
        if v.null_count() > 0 || (groups.is_empty() && n > self.sums.len()) {
            self.seen_mut();
        }
        self.sums.resize(n, T::Native::default());
        let xs = v.values();
        if unchecked {
            scatter_add(groups, v.nulls(), &mut self.sums, |i| widen(xs[i]), |a, b| Some(a.add_wrapping(b)));
        } else if !scatter_add(groups, v.nulls(), &mut self.sums, |i| widen(xs[i]), T::add_checked) {
            return Err(RiffleError::exec(format!(
                "overflow in sum() of {}: cast the argument to a wider type (e.g. DOUBLE)",
                sql_name(&self.ty)
            )));
        }
        if let Some(seen) = &mut self.seen {
            seen.resize(n, false);
            for_valid(groups, v.nulls(), |g, _| seen[g] = true);
        }
        Ok(())
    }
}

/// Up to this many groups, `scatter_add` spreads rows over lanes.
const LANED_GROUPS: usize = 64;

/// Whether `rows` values of at most `precision` digits sum within 64 bits.
fn fits_i64(rows: usize, precision: u8) -> bool {
    (rows as i128).saturating_mul(10i128.pow(precision as u32)) < i64::MAX as i128
}

/// Adds `value(row)` of every row not masked by `nulls` into its group's slot; false when `add`
/// overflows. This is the aggregate's hot loop. With few groups nearly every row updates a slot the
/// row before just updated, and each addition waits for the previous one; spreading consecutive rows
/// over separate lanes lets the additions overlap.
fn scatter_add<N: Copy + Default>(
    groups: &[u32],
    nulls: Option<&arrow::buffer::NullBuffer>,
    slots: &mut [N],
    value: impl Fn(usize) -> N,
    add: impl Fn(N, N) -> Option<N>,
) -> bool {
    const LANES: usize = 4;
    let mut ok = true;
    let mut add_into = |slot: &mut N, x: N| match add(*slot, x) {
        Some(s) => *slot = s,
        None => ok = false,
    };
    match nulls.filter(|n| n.null_count() > 0) {
        None if slots.len() <= LANED_GROUPS => {
            let mut lanes = vec![[N::default(); LANES]; slots.len()];
            let full = groups.len() / LANES * LANES;
            for (c, g) in groups[..full].chunks_exact(LANES).enumerate() {
                for l in 0..LANES {
                    add_into(&mut lanes[g[l] as usize][l], value(c * LANES + l));
                }
            }
            for (i, g) in groups.iter().enumerate().skip(full) {
                add_into(&mut lanes[*g as usize][0], value(i));
            }
            for (slot, lane) in slots.iter_mut().zip(&lanes) {
                for x in lane {
                    add_into(slot, *x);
                }
            }
        }
        None => groups.iter().enumerate().for_each(|(i, g)| add_into(&mut slots[*g as usize], value(i))),
        Some(nulls) => nulls.valid_indices().for_each(|i| add_into(&mut slots[groups[i] as usize], value(i))),
    }
    ok
}

/// Calls `f(group, row)` for every row whose value is not null.
fn for_valid(groups: &[u32], nulls: Option<&arrow::buffer::NullBuffer>, mut f: impl FnMut(usize, usize)) {
    match nulls.filter(|n| n.null_count() > 0) {
        None => groups.iter().enumerate().for_each(|(i, g)| f(*g as usize, i)),
        Some(nulls) => nulls.valid_indices().for_each(|i| f(groups[i] as usize, i)),
    }
}

impl<T: CheckedSum> ValueAccumulator for Sum<T> {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        self.accumulate(groups, n, values)
    }

    fn grow(&mut self, n: usize) {
        if n > self.sums.len() {
            self.seen_mut().resize(n, false);
        } else if let Some(seen) = &mut self.seen {
            seen.truncate(n);
        }
        self.sums.resize(n, T::Native::default());
    }

    fn take(&mut self) -> Result<ArrayRef> {
        let (sums, seen) = (std::mem::take(&mut self.sums), self.seen.take());
        self.array(sums, seen)
    }

    fn gather(&self, groups: &[u32]) -> Result<ArrayRef> {
        let seen = self.seen.as_ref().map(|seen| gathered(seen, groups).collect());
        self.array(gathered(&self.sums, groups).collect(), seen)
    }

    fn bytes(&self) -> usize {
        self.sums.capacity() * std::mem::size_of::<T::Native>() + self.seen.as_ref().map_or(0, |s| s.capacity())
    }
}

impl<T: CheckedSum> Sum<T> {
    /// The sums as an array of the result type (NULL where no value was seen).
    fn array(&self, sums: Vec<T::Native>, seen: Option<Vec<bool>>) -> Result<ArrayRef> {
        let arr: PrimitiveArray<T> = match seen {
            None => PrimitiveArray::new(sums.into(), None),
            Some(seen) => sums.into_iter().zip(seen).map(|(s, ok)| ok.then_some(s)).collect(),
        };
        let arr = arr.with_data_type(self.ty.clone());
        if let DataType::Decimal128(p, _) = &self.ty {
            arr.as_any()
                .downcast_ref::<Decimal128Array>()
                .map(|d| d.validate_decimal_precision(*p))
                .transpose()
                .map_err(|_| RiffleError::exec(format!("overflow in sum(): the result does not fit {}", sql_name(&self.ty))))?;
        }
        Ok(Arc::new(arr))
    }
}

/// Average of doubles: a float sum and a count (decimal averages are planned as sum / count).
struct Avg {
    sums: Vec<f64>,
    counts: Vec<i64>,
}

impl Avg {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef, counts: Option<&Int64Array>) -> Result<()> {
        self.resize(n);
        let xs = values.as_primitive::<Float64Type>().values();
        scatter_add(groups, values.nulls(), &mut self.sums, |i| xs[i], |a, b| Some(a + b));
        match counts {
            None => scatter_add(groups, values.nulls(), &mut self.counts, |_| 1, i64::checked_add),
            Some(c) => scatter_add(groups, values.nulls(), &mut self.counts, |i| c.value(i), i64::checked_add),
        };
        Ok(())
    }
}

impl GroupsAccumulator for Avg {
    fn resize(&mut self, n: usize) {
        self.counts.resize(n, 0);
        self.sums.resize(n, 0.0);
    }

    fn update(&mut self, groups: &[u32], n: usize, values: &[ArrayRef]) -> Result<()> {
        self.add(groups, n, &values[0], None)
    }

    fn merge(&mut self, groups: &[u32], n: usize, states: &[ArrayRef]) -> Result<()> {
        let counts = states[1].as_primitive::<Int64Type>().clone();
        self.add(groups, n, &states[0], Some(&counts))
    }

    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        let counts: ArrayRef = Arc::new(Int64Array::from(std::mem::take(&mut self.counts)));
        let sums: ArrayRef = Arc::new(Float64Array::from(std::mem::take(&mut self.sums)));
        Ok(vec![sums, counts])
    }

    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let counts: ArrayRef = Arc::new(Int64Array::from_iter_values(gathered(&self.counts, groups)));
        let sums: ArrayRef = Arc::new(Float64Array::from_iter_values(gathered(&self.sums, groups)));
        Ok(vec![sums, counts])
    }

    fn evaluate(&mut self) -> Result<ArrayRef> {
        let counts = std::mem::take(&mut self.counts);
        let sums = std::mem::take(&mut self.sums);
        let out: Float64Array = sums.into_iter().zip(counts).map(|(v, c)| (c > 0).then(|| v / c as f64)).collect();
        Ok(Arc::new(out))
    }

    fn size(&self) -> usize {
        self.sums.capacity() * 8 + self.counts.capacity() * 8
    }
}

/// Variance (or its square root) by Welford's running mean and sum of squared deviations per
/// group; partial states merge by Chan's formula, so parallel partitions give the same answer
/// without the cancellation of a sum-of-squares formula. (An updating aggregate runs Welford's
/// update backwards to take a row back: `retract.rs`.)
pub(super) struct Variance {
    pub(super) counts: Vec<i64>,
    pub(super) means: Vec<f64>,
    pub(super) m2s: Vec<f64>,
    /// Of a sample (n - 1; NULL below two rows) or of the population (n; NULL without rows).
    pub(super) sample: bool,
    pub(super) root: bool,
}

impl Variance {
    /// The state of `func`, one of the variance and standard deviation functions.
    pub(super) fn new(func: AggFunc) -> Variance {
        Variance {
            counts: vec![],
            means: vec![],
            m2s: vec![],
            sample: matches!(func, AggFunc::VarSamp | AggFunc::StddevSamp),
            root: matches!(func, AggFunc::StddevSamp | AggFunc::StddevPop),
        }
    }

    /// Makes room for `n` groups (new ones empty).
    pub(super) fn groups(&mut self, n: usize) {
        self.counts.resize(n, 0);
        self.means.resize(n, 0.0);
        self.m2s.resize(n, 0.0);
    }

    /// Folds a part of `n` rows with mean `mean` and squared deviations `m2` into group `g`.
    fn fold(&mut self, g: usize, n: i64, mean: f64, m2: f64) {
        let (count, own_mean) = (self.counts[g], self.means[g]);
        let total = count + n;
        if total == 0 {
            return;
        }
        let delta = mean - own_mean;
        self.means[g] = own_mean + delta * n as f64 / total as f64;
        self.m2s[g] += m2 + delta * delta * count as f64 * n as f64 / total as f64;
        self.counts[g] = total;
    }
}

impl GroupsAccumulator for Variance {
    fn resize(&mut self, n: usize) {
        self.groups(n);
    }

    fn update(&mut self, groups: &[u32], n: usize, values: &[ArrayRef]) -> Result<()> {
        self.resize(n);
        let values = values[0].as_primitive::<Float64Type>();
        for (i, g) in groups.iter().enumerate() {
            if values.is_valid(i) {
                self.fold(*g as usize, 1, values.value(i), 0.0);
            }
        }
        Ok(())
    }

    fn merge(&mut self, groups: &[u32], n: usize, states: &[ArrayRef]) -> Result<()> {
        self.resize(n);
        let (counts, means, m2s) =
            (states[0].as_primitive::<Int64Type>(), states[1].as_primitive::<Float64Type>(), states[2].as_primitive::<Float64Type>());
        for (i, g) in groups.iter().enumerate() {
            self.fold(*g as usize, counts.value(i), means.value(i), m2s.value(i));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Int64Array::from(std::mem::take(&mut self.counts))),
            Arc::new(Float64Array::from(std::mem::take(&mut self.means))),
            Arc::new(Float64Array::from(std::mem::take(&mut self.m2s))),
        ])
    }

    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        Ok(vec![
            Arc::new(Int64Array::from_iter_values(gathered(&self.counts, groups))),
            Arc::new(Float64Array::from_iter_values(gathered(&self.means, groups))),
            Arc::new(Float64Array::from_iter_values(gathered(&self.m2s, groups))),
        ])
    }

    fn evaluate(&mut self) -> Result<ArrayRef> {
        let (counts, m2s) = (std::mem::take(&mut self.counts), std::mem::take(&mut self.m2s));
        self.means.clear();
        let (sample, root) = (self.sample, self.root);
        let out: Float64Array = counts.into_iter().zip(m2s).map(|(n, m2)| variance_value(n, m2, sample, root)).collect();
        Ok(Arc::new(out))
    }

    fn size(&self) -> usize {
        (self.counts.capacity() + self.means.capacity() + self.m2s.capacity()) * 8
    }
}

/// The variance (or standard deviation, `root`) of `n` values whose squared deviations from their
/// mean sum to `m2`: of a sample (NULL below two values) or of the population (NULL without any).
pub(super) fn variance_value(n: i64, m2: f64, sample: bool, root: bool) -> Option<f64> {
    let divisor = if sample { n - 1 } else { n };
    (divisor > 0).then(|| {
        let v = (m2 / divisor as f64).max(0.0);
        if root {
            v.sqrt()
        } else {
            v
        }
    })
}

struct MinMax<T: ArrowPrimitiveType> {
    values: Vec<Option<T::Native>>,
    is_min: bool,
    ty: DataType,
}

impl<T: ArrowPrimitiveType> MinMax<T>
where
    T::Native: PartialOrd,
{
    fn accumulate(&mut self, groups: &[u32], n: usize, values: &ArrayRef) {
        self.values.resize(n, None);
        let v = values.as_primitive::<T>();
        for (i, g) in groups.iter().enumerate() {
            if v.is_valid(i) {
                let x = v.value(i);
                let slot = &mut self.values[*g as usize];
                let better = match slot {
                    None => true,
                    Some(cur) => {
                        if self.is_min { x < *cur } else { x > *cur }
                    }
                };
                if better {
                    *slot = Some(x);
                }
            }
        }
    }
}

impl<T: ArrowPrimitiveType> ValueAccumulator for MinMax<T>
where
    T::Native: PartialOrd,
{
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        self.accumulate(groups, n, values);
        Ok(())
    }

    fn grow(&mut self, n: usize) {
        self.values.resize(n, None);
    }

    fn take(&mut self) -> Result<ArrayRef> {
        let arr: PrimitiveArray<T> = std::mem::take(&mut self.values).into_iter().collect();
        Ok(Arc::new(arr.with_data_type(self.ty.clone())))
    }

    fn gather(&self, groups: &[u32]) -> Result<ArrayRef> {
        let arr: PrimitiveArray<T> = gathered(&self.values, groups).collect();
        Ok(Arc::new(arr.with_data_type(self.ty.clone())))
    }

    fn bytes(&self) -> usize {
        self.values.capacity() * std::mem::size_of::<Option<T::Native>>()
    }
}

struct StrMinMax {
    values: Vec<Option<String>>,
    is_min: bool,
}

impl StrMinMax {
    fn accumulate(&mut self, groups: &[u32], n: usize, values: &ArrayRef) {
        self.values.resize(n, None);
        let v = values.as_string::<i32>();
        for (i, g) in groups.iter().enumerate() {
            if v.is_valid(i) {
                let x = v.value(i);
                let slot = &mut self.values[*g as usize];
                let better = match slot {
                    None => true,
                    Some(cur) => {
                        if self.is_min { x < cur.as_str() } else { x > cur.as_str() }
                    }
                };
                if better {
                    *slot = Some(x.to_string());
                }
            }
        }
    }
}

impl ValueAccumulator for StrMinMax {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        self.accumulate(groups, n, values);
        Ok(())
    }

    fn grow(&mut self, n: usize) {
        self.values.resize(n, None);
    }

    fn take(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(StringArray::from(std::mem::take(&mut self.values))))
    }

    fn gather(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(groups.iter().map(|g| self.values.get(*g as usize).and_then(|v| v.as_deref())).collect::<StringArray>()))
    }

    fn bytes(&self) -> usize {
        self.values.iter().map(|v| v.as_ref().map_or(0, |s| s.capacity()) + 24).sum()
    }
}

/// `any_value`: a group's first non-NULL value. The rows that give a group its value are taken
/// from their batch (a few per batch once most groups have one) and put together at the end, so
/// values of any type are kept as they came, never row by row. A dictionary-encoded argument (a
/// join's build-side strings) is expanded for those rows only.
struct AnyValue {
    ty: DataType,
    /// Per group, where its value is: (chunk, row in it); `None` while it has none.
    at: Vec<Option<(u32, u32)>>,
    chunks: Vec<ArrayRef>,
    bytes: usize,
}

impl AnyValue {
    /// The values of `groups` (`None`: NULL), as one array.
    fn assemble(&self, groups: impl Iterator<Item = Option<(u32, u32)>>) -> Result<ArrayRef> {
        let null = arrow::array::new_null_array(&self.ty, 1);
        let mut arrays: Vec<&dyn Array> = self.chunks.iter().map(|c| c.as_ref()).collect();
        arrays.push(null.as_ref());
        let null_at = (self.chunks.len(), 0);
        let indices: Vec<(usize, usize)> = groups.map(|a| a.map_or(null_at, |(c, r)| (c as usize, r as usize))).collect();
        Ok(arrow::compute::interleave(&arrays, &indices)?)
    }
}

impl ValueAccumulator for AnyValue {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        self.at.resize(n, None);
        let chunk = self.chunks.len() as u32;
        let mut rows: Vec<u32> = Vec::new();
        let nulls = values.logical_nulls();
        for (row, g) in groups.iter().enumerate() {
            let slot = &mut self.at[*g as usize];
            if slot.is_none() && nulls.as_ref().is_none_or(|n| n.is_valid(row)) {
                *slot = Some((chunk, rows.len() as u32));
                rows.push(row as u32);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        let taken = arrow::compute::take(values, &arrow::array::UInt32Array::from(rows), None)?;
        let taken = if taken.data_type() == &self.ty { taken } else { arrow::compute::cast(&taken, &self.ty)? };
        self.bytes += taken.get_array_memory_size();
        self.chunks.push(taken);
        Ok(())
    }

    fn grow(&mut self, n: usize) {
        self.at.resize(n, None);
    }

    fn take(&mut self) -> Result<ArrayRef> {
        let values = self.assemble(self.at.iter().copied())?;
        (self.at, self.chunks, self.bytes) = (vec![], vec![], 0);
        Ok(values)
    }

    fn gather(&self, groups: &[u32]) -> Result<ArrayRef> {
        self.assemble(groups.iter().map(|g| self.at.get(*g as usize).copied().flatten()))
    }

    fn bytes(&self) -> usize {
        self.at.capacity() * std::mem::size_of::<Option<(u32, u32)>>() + self.bytes
    }
}

struct BoolMinMax {
    values: Vec<Option<bool>>,
    is_min: bool,
}

impl ValueAccumulator for BoolMinMax {
    fn add(&mut self, groups: &[u32], n: usize, values: &ArrayRef) -> Result<()> {
        self.values.resize(n, None);
        let v = values.as_boolean();
        for (i, g) in groups.iter().enumerate() {
            if v.is_valid(i) {
                let x = v.value(i);
                let slot = &mut self.values[*g as usize];
                *slot = Some(match slot {
                    None => x,
                    Some(cur) => {
                        if self.is_min { *cur && x } else { *cur || x }
                    }
                });
            }
        }
        Ok(())
    }

    fn grow(&mut self, n: usize) {
        self.values.resize(n, None);
    }

    fn take(&mut self) -> Result<ArrayRef> {
        Ok(Arc::new(BooleanArray::from(std::mem::take(&mut self.values))))
    }

    fn gather(&self, groups: &[u32]) -> Result<ArrayRef> {
        Ok(Arc::new(gathered(&self.values, groups).collect::<BooleanArray>()))
    }

    fn bytes(&self) -> usize {
        self.values.capacity() * 2
    }
}

/// count(DISTINCT x): the set of distinct values (row-encoded) per group; the state is a list of them.
/// A set of encoded values, hashed fast (SipHash was a tenth of TPC-DS q28).
type ValueSet = hashbrown::HashSet<Box<[u8]>, hashbrown::DefaultHashBuilder>;

struct CountDistinct {
    sets: Vec<ValueSet>,
    converter: RowConverter,
    /// The values' bytes held, kept as they come (summing the sets at every batch made the
    /// aggregate quadratic in its groups).
    bytes: usize,
}

impl CountDistinct {
    fn insert(&mut self, group: u32, value: &[u8]) {
        // Looked up before boxing: most values were seen before.
        let set = &mut self.sets[group as usize];
        if !set.contains(value) {
            set.insert(value.into());
            self.bytes += value.len() + 16;
        }
    }
}

impl GroupsAccumulator for CountDistinct {
    fn resize(&mut self, n: usize) {
        self.sets.resize_with(n, ValueSet::default);
    }

    fn update(&mut self, groups: &[u32], n: usize, values: &[ArrayRef]) -> Result<()> {
        self.sets.resize_with(n, ValueSet::default);
        let rows = self.converter.convert_columns(&values[..1])?;
        for (i, g) in groups.iter().enumerate() {
            if values[0].is_valid(i) {
                self.insert(*g, rows.row(i).as_ref());
            }
        }
        Ok(())
    }

    fn merge(&mut self, groups: &[u32], n: usize, states: &[ArrayRef]) -> Result<()> {
        self.sets.resize_with(n, ValueSet::default);
        let lists = states[0].as_list::<i32>();
        for (i, g) in groups.iter().enumerate() {
            let items = lists.value(i);
            let items = items.as_binary::<i32>();
            for v in items.iter().flatten() {
                self.insert(*g, v);
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ArrayRef>> {
        let mut b = ListBuilder::new(BinaryBuilder::new());
        self.bytes = 0;
        for set in std::mem::take(&mut self.sets) {
            for v in set {
                b.values().append_value(v);
            }
            b.append(true);
        }
        Ok(vec![Arc::new(b.finish())])
    }

    fn state_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let mut b = ListBuilder::new(BinaryBuilder::new());
        for g in groups {
            for v in self.sets.get(*g as usize).into_iter().flatten() {
                b.values().append_value(v);
            }
            b.append(true);
        }
        Ok(vec![Arc::new(b.finish())])
    }

    fn evaluate(&mut self) -> Result<ArrayRef> {
        self.bytes = 0;
        Ok(Arc::new(Int64Array::from_iter_values(std::mem::take(&mut self.sets).iter().map(|s| s.len() as i64))))
    }

    fn size(&self) -> usize {
        self.bytes + self.sets.len() * 48
    }
}
