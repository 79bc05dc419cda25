//! Cardinality estimates for the cost-based join order.
//!
//! Row counts come from Parquet footers and in-memory tables; a scan filter's selectivity is measured
//! by evaluating it on a sample of the table's rows; distinct counts of a table's columns come from
//! HyperLogLog sketches over the whole column. Measurements are made on first use and kept with the
//! table (`TableStats`), so a query planned again costs nothing. Tables whose rows are made as they are
//! read (generators, streams) and text files (which would have to be parsed whole) get guesses.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::buffer::NullBuffer;
use arrow::row::{RowConverter, SortField};
use riffle_formats::FileFormat;

use crate::catalog::{TableData, TableSource};
use crate::logical::{BinaryOp, Expr, JoinKind, LogicalPlan};

/// Measurements of one table, made on first use.
#[derive(Debug, Default)]
pub struct TableStats {
    /// A sketch of the distinct combinations of each list of table columns measured (in the
    /// order given: a combination's hash depends on it).
    sketches: Mutex<HashMap<Vec<usize>, Arc<HyperLogLog>>>,
    /// Fraction of rows passing each scan filter measured (keyed by the filter over table columns).
    selectivity: Mutex<HashMap<String, f64>>,
    /// Whether each table column measured is a key: no NULL, no value twice.
    keys: Mutex<HashMap<usize, bool>>,
}

/// Rows read at most to measure a filter's selectivity.
const SAMPLE_ROWS: usize = 200_000;
/// Tables with more rows get distinct counts guessed, not measured.
const MAX_SKETCH_ROWS: f64 = 200_000_000.0;
/// Tables with more rows are not read to find whether a column is a key.
const MAX_KEY_ROWS: f64 = 10_000_000.0;

/// Estimates over one plan while it is not changed: results are kept per plan node (by address), so
/// that nested joins are not estimated again at every level above them.
#[derive(Default)]
pub struct Estimator {
    rows: RefCell<HashMap<usize, f64>>,
    distinct: RefCell<HashMap<(usize, Vec<usize>), f64>>,
}

impl Estimator {
/// The estimated number of rows `plan` produces.
pub fn rows(&self, plan: &LogicalPlan) -> f64 {
        let key = plan as *const LogicalPlan as usize;
        if let Some(r) = self.rows.borrow().get(&key) {
            return *r;
        }
        let r = self.rows_uncached(plan);
        self.rows.borrow_mut().insert(key, r);
        r
    }

    fn rows_uncached(&self, plan: &LogicalPlan) -> f64 {
    match plan {
        LogicalPlan::Scan { source, projection, filters, .. } => {
            let base = table_rows(source);
            if filters.is_empty() {
                return base;
            }
            let measured = measured_selectivity(source, projection, filters);
            base * measured.unwrap_or_else(|| filters.iter().map(guess_selectivity).product())
        }
        LogicalPlan::Values { rows, .. } => rows.len() as f64,
        LogicalPlan::Filter { input, predicate } => self.rows(input) * guess_selectivity(predicate),
        LogicalPlan::Project { input, .. } | LogicalPlan::Window { input, .. } | LogicalPlan::SessionTvf { input, .. } => self.rows(input),
        LogicalPlan::WindowTvf { input, window, .. } => self.rows(input) * window.max_windows() as f64,
        LogicalPlan::Sort { input, fetch, .. } => fetch.map_or(self.rows(input), |f| self.rows(input).min(f as f64)),
        LogicalPlan::Limit { input, skip, fetch } => {
            let n = (self.rows(input) - *skip as f64).max(0.0);
            fetch.map_or(n, |f| n.min(f as f64))
        }
        LogicalPlan::Aggregate { input, group, .. } => {
            if group.is_empty() {
                return 1.0;
            }
            let n = self.rows(input);
            match columns_of(group) {
                Some(cols) => self.distinct(input, &cols).min(n),
                None => n,
            }
        }
        LogicalPlan::Join { left, right, kind, on, filter, .. } => {
            let (l, r) = (self.rows(left), self.rows(right));
            let matched = l * r * self.join_selectivity(left, right, on) * filter.as_ref().map_or(1.0, guess_selectivity);
            match kind {
                JoinKind::Inner => matched,
                JoinKind::Left => matched.max(l),
                JoinKind::Right => matched.max(r),
                JoinKind::Full => matched.max(l).max(r),
                JoinKind::Semi => matched.min(l),
                JoinKind::Anti => (l - matched).max(l * 0.1),
                JoinKind::Single | JoinKind::Mark => l,
            }
        }
        LogicalPlan::Union { inputs, .. } => inputs.iter().map(|i| self.rows(i)).sum(),
    }
    .max(1.0)
}

/// The selectivity of equi-join keys `on` between `left` and `right`: one over the larger of the two
/// sides' distinct counts of the key columns (taken together).
pub fn join_selectivity(&self, left: &LogicalPlan, right: &LogicalPlan, on: &[(Expr, Expr)]) -> f64 {
    if on.is_empty() {
        return 1.0;
    }
    let side = |plan: &LogicalPlan, keys: Vec<&Expr>| -> f64 {
        let keys: Vec<Expr> = keys.into_iter().cloned().collect();
        match columns_of(&keys) {
            Some(cols) => self.distinct(plan, &cols),
            None => self.rows(plan),
        }
    };
    let dl = side(left, on.iter().map(|(l, _)| l).collect());
    let dr = side(right, on.iter().map(|(_, r)| r).collect());
    1.0 / dl.max(dr).max(1.0)
}

/// The estimated number of distinct combinations of output columns `cols` of `plan`.
pub fn distinct(&self, plan: &LogicalPlan, cols: &[usize]) -> f64 {
        let key = (plan as *const LogicalPlan as usize, cols.to_vec());
        if let Some(d) = self.distinct.borrow().get(&key) {
            return *d;
        }
        let d = self.distinct_uncached(plan, cols);
        self.distinct.borrow_mut().insert(key, d);
        d
    }

    fn distinct_uncached(&self, plan: &LogicalPlan, cols: &[usize]) -> f64 {
    let n = self.rows(plan);
    let d = match plan {
        LogicalPlan::Scan { source, projection, filters, .. } => {
            let table_cols: Vec<usize> = cols.iter().map(|c| projection[*c]).collect();
            let whole = table_distinct(source, &table_cols);
            // Filters on the counted columns only keep or drop a value with all its rows
            // (`d_year = 2001` leaves one year): they scale the count. Other filters keep a value
            // when any of its rows passes.
            let own: Vec<Expr> = filters.iter().filter(|f| f.column_set().iter().all(|c| cols.contains(c))).cloned().collect();
            let base = table_rows(source);
            if filters.is_empty() {
                whole
            } else if own.is_empty() {
                thinned(whole, base, n)
            } else {
                let kept = measured_selectivity(source, projection, &own).unwrap_or_else(|| own.iter().map(guess_selectivity).product());
                thinned(whole * kept, base * kept, n)
            }
        }
        LogicalPlan::Project { input, exprs, .. } => {
            let inner: Option<Vec<usize>> = cols.iter().map(|c| columns_of(std::slice::from_ref(&exprs[*c])).map(|v| v[0])).collect();
            match inner {
                Some(inner) => self.distinct(input, &inner),
                None => n,
            }
        }
        LogicalPlan::Filter { input, .. } => thinned(self.distinct(input, cols), self.rows(input), n),
        LogicalPlan::Sort { input, .. } | LogicalPlan::Limit { input, .. } => self.distinct(input, cols),
        LogicalPlan::Aggregate { input, group, .. } => {
            let keys: Option<Vec<usize>> = cols.iter().map(|c| group.get(*c).and_then(|g| columns_of(std::slice::from_ref(g))).map(|v| v[0])).collect();
            match keys {
                Some(keys) if keys.len() < group.len() => self.distinct(input, &keys),
                _ => n,
            }
        }
        // A semi join keeps the rows whose keys the right side holds: at most its distinct keys.
        LogicalPlan::Join { left, right, kind: JoinKind::Semi, on, .. }
            if columns_of(&on.iter().map(|(l, _)| l.clone()).collect::<Vec<_>>()).is_some_and(|keys| keys == cols) =>
        {
            let right_keys = columns_of(&on.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>());
            let kept = right_keys.map_or(f64::INFINITY, |keys| self.distinct(right, &keys));
            self.distinct(left, cols).min(kept)
        }
        LogicalPlan::Join { left, right, kind, .. } => {
            let nl = left.schema().fields().len();
            let (lc, rc): (Vec<usize>, Vec<usize>) = cols.iter().partition(|c| **c < nl);
            let rc: Vec<usize> = rc.into_iter().map(|c| c - nl).collect();
            let mut d = 1.0;
            if !lc.is_empty() {
                d *= self.distinct(left, &lc);
            }
            if !rc.is_empty() && kind.keeps_right() && rc.iter().all(|c| *c < right.schema().fields().len()) {
                d *= self.distinct(right, &rc);
            } else if !rc.is_empty() {
                d *= 2.0; // a mark column
            }
            d
        }
        // The inputs' values taken as disjoint: an upper bound (a union of a channel's sales and
        // returns has each store's key in both; counting its rows instead made a join with the
        // stores look like it kept 12 of TPC-DS q05's 3 M rows).
        LogicalPlan::Union { inputs, .. } => inputs.iter().map(|i| self.distinct(i, cols)).sum(),
        _ => n,
    };
    d.min(n).max(1.0)
}

}

/// The columns a list of expressions reads, when each is a column (possibly cast).
fn columns_of(exprs: &[Expr]) -> Option<Vec<usize>> {
    exprs
        .iter()
        .map(|e| match e {
            Expr::Column(c) => Some(*c),
            Expr::Cast { expr, .. } => match expr.as_ref() {
                Expr::Column(c) => Some(*c),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Distinct values left of `d` (over `before` rows) once only `after` rows remain, rows taken at
/// random: each value stays unless all its rows went.
fn thinned(d: f64, before: f64, after: f64) -> f64 {
    if before <= 0.0 || after >= before {
        return d;
    }
    let kept = (after / before).clamp(0.0, 1.0);
    let per_value = (before / d.max(1.0)).max(1.0);
    (d * (1.0 - (1.0 - kept).powf(per_value))).max(1.0)
}

/// A table's row count: exact for Parquet files and rows in memory, guessed from the size otherwise.
pub fn table_rows(source: &TableSource) -> f64 {
    match &source.data {
        TableData::Files { format, files, morsels, .. } => match format {
            FileFormat::Parquet => morsels.iter().map(|m| m.rows.unwrap_or(0) as f64).sum(),
            _ => {
                // About 100 bytes a row in text and IPC files.
                let bytes: u64 = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
                (bytes as f64 / 100.0).max(1.0)
            }
        },
        TableData::Memory(batches) => batches.iter().map(|b| b.num_rows() as f64).sum(),
        TableData::Generated { records, .. } => *records as f64,
        TableData::Nexmark { config, table, events, .. } => config.rows_in(*table, events.map_or(1e9, |e| e as f64)),
        TableData::Blackhole => 0.0,
    }
}

/// Whether the table's rows can be read cheaply for measurements.
fn measurable(source: &TableSource) -> bool {
    matches!(&source.data, TableData::Memory(_) | TableData::Files { format: FileFormat::Parquet, .. })
}

/// Reads table columns `cols` (positions in the table) batch by batch, the morsels picked by `pick`.
fn read_columns(
    source: &TableSource,
    cols: &[usize],
    pick: &dyn Fn(usize) -> Vec<usize>,
    each: &mut dyn FnMut(&RecordBatch) -> crate::error::Result<bool>,
) -> crate::error::Result<()> {
    match &source.data {
        TableData::Memory(batches) => {
            for i in pick(batches.len()) {
                let b = batches[i].project(cols)?;
                if !each(&b)? {
                    break;
                }
            }
        }
        TableData::Files { format, morsels, .. } => {
            let dictionary = vec![false; cols.len()];
            'morsels: for i in pick(morsels.len()) {
                let reader = riffle_formats::read_morsel(format, &morsels[i], &source.schema, cols, &dictionary, 65_536)?;
                for b in reader {
                    if !each(&b?)? {
                        break 'morsels;
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// The fraction of the table's rows passing every filter (over the scan's columns `projection`),
/// measured on a sample spread over the table; `None` where the table cannot be read cheaply.
fn measured_selectivity(source: &TableSource, projection: &[usize], filters: &[Expr]) -> Option<f64> {
    if !measurable(source) {
        return None;
    }
    let mut used: Vec<usize> = filters.iter().flat_map(|f| f.column_set()).collect();
    used.sort_unstable();
    used.dedup();
    let table_cols: Vec<usize> = used.iter().map(|c| projection[*c]).collect();
    // The filters over the sample's columns (the used ones, in order).
    let local: Vec<Expr> =
        filters.iter().map(|f| f.clone().remap(&|c| used.iter().position(|u| *u == c).unwrap_or(usize::MAX))).collect();
    let predicate = Expr::conjunction(local)?;
    let key = format!("{table_cols:?} {predicate:?}");
    if let Some(s) = source.stats.selectivity.lock().ok()?.get(&key) {
        return Some(*s);
    }
    let total = table_rows(source);
    let (mut seen, mut passed) = (0usize, 0usize);
    // Morsels spread evenly over the table, enough of them for the sample.
    let pick = |n: usize| -> Vec<usize> {
        let per = (total / n.max(1) as f64).max(1.0);
        let wanted = ((SAMPLE_ROWS as f64 / per).ceil() as usize).clamp(1, n.max(1));
        let mut picked: Vec<usize> = (0..wanted).map(|k| k * n / wanted).collect();
        picked.dedup();
        picked
    };
    let measured = read_columns(source, &table_cols, &pick, &mut |b| {
        let mask = crate::eval::evaluate(&predicate, b)?;
        let mask = mask.as_boolean_opt().ok_or_else(|| crate::error::RiffleError::plan("a filter that is not boolean"))?;
        seen += b.num_rows();
        passed += mask.true_count();
        Ok(seen < SAMPLE_ROWS)
    });
    // A filter that fails on the sample (e.g. a bad cast) is left to fail, or not, when the query runs.
    if measured.is_err() || seen == 0 {
        return None;
    }
    // Nothing passing in the sample means rare, not never.
    let s = (passed as f64).max(0.5) / seen as f64;
    source.stats.selectivity.lock().ok()?.insert(key, s);
    Some(s)
}

/// Distinct combinations of table columns `cols`: a HyperLogLog sketch over the whole table where it
/// can be read cheaply, else the row count (every value distinct).
fn table_distinct(source: &TableSource, cols: &[usize]) -> f64 {
    let total = table_rows(source);
    let mut key = cols.to_vec();
    key.sort_unstable();
    key.dedup();
    table_sketch(source, &key).map_or(total, |sketch| sketch.estimate().min(total).max(1.0))
}

/// The sketch of table columns `cols` (in that order), made on first use and kept with the table;
/// `None` where the table cannot be read cheaply.
fn table_sketch(source: &TableSource, cols: &[usize]) -> Option<Arc<HyperLogLog>> {
    if !measurable(source) || table_rows(source) > MAX_SKETCH_ROWS || cols.is_empty() {
        return None;
    }
    if let Some(sketch) = source.stats.sketches.lock().ok()?.get(cols) {
        return Some(sketch.clone());
    }
    let sketch = Arc::new(sketch_columns(source, cols).ok()?);
    source.stats.sketches.lock().ok()?.insert(cols.to_vec(), sketch.clone());
    Some(sketch)
}

/// Whether table column `col` is a key of the table: no NULL and no value twice, found by reading
/// the column whole on first use (exact: the hashes of its values, sorted, are all different; equal
/// hashes count as a repeat). False where the table cannot be read cheaply or is too large. The
/// answer is kept with the table: its files are taken as they were when it was registered.
pub fn is_key(source: &TableSource, col: usize) -> bool {
    if !measurable(source) || table_rows(source) > MAX_KEY_ROWS || col >= source.schema.fields().len() {
        return false;
    }
    if let Some(known) = source.stats.keys.lock().ok().and_then(|k| k.get(&col).copied()) {
        return known;
    }
    let key = measure_key(source, col).unwrap_or(false);
    if let Ok(mut keys) = source.stats.keys.lock() {
        keys.insert(col, key);
    }
    key
}

fn measure_key(source: &TableSource, col: usize) -> crate::error::Result<bool> {
    let converter = RowConverter::new(vec![SortField::new(source.schema.field(col).data_type().clone())])?;
    let mut hashes: Vec<u64> = Vec::with_capacity(table_rows(source) as usize);
    let mut nulls = false;
    read_columns(source, &[col], &|n| (0..n).collect(), &mut |b| {
        nulls = b.column(0).logical_null_count() > 0;
        let rows = converter.convert_columns(b.columns())?;
        hashes.extend(rows.iter().map(|r| hash(r.as_ref())));
        Ok(!nulls)
    })?;
    if nulls {
        return Ok(false);
    }
    hashes.sort_unstable();
    Ok(hashes.windows(2).all(|w| w[0] != w[1]))
}

/// The selectivity of an equi-join of two tables' scans on several columns (`left_cols` of `left`
/// equal to `right_cols` of `right`): the key combinations both tables have, over the product of
/// each table's distinct combinations, from the sketches of each and of their union. `None` unless
/// both are scans of tables measured whole whose filters do not read the keys, with keys of the
/// same types.
///
/// Taking the smaller side's combinations as contained in the larger's (as a single key, which
/// both sides draw from one dimension, mostly is) holds for a foreign key (store returns and the
/// sales they return) but not for keys that only happen to meet: TPC-DS q25's catalog sales and
/// store returns of a customer and item estimated 259 K rows where 13 came out, and store sales were
/// joined with returns first instead of last.
pub fn overlap_selectivity(left: &LogicalPlan, left_cols: &[usize], right: &LogicalPlan, right_cols: &[usize]) -> Option<f64> {
    let (LogicalPlan::Scan { source: ls, projection: lp, filters: lf, .. }, LogicalPlan::Scan { source: rs, projection: rp, filters: rf, .. }) = (left, right) else {
        return None;
    };
    let reads_keys = |filters: &[Expr], keys: &[usize]| filters.iter().any(|f| f.column_set().iter().any(|c| keys.contains(c)));
    if reads_keys(lf, left_cols) || reads_keys(rf, right_cols) || left_cols.len() != right_cols.len() {
        return None;
    }
    let mut pairs: Vec<(usize, usize)> = left_cols.iter().zip(right_cols).map(|(l, r)| Some((*lp.get(*l)?, *rp.get(*r)?))).collect::<Option<_>>()?;
    if pairs.iter().any(|(l, r)| ls.schema.field(*l).data_type() != rs.schema.field(*r).data_type()) {
        return None;
    }
    // In the order of the larger table's columns: its sketch is the one its distinct count uses.
    let swapped = table_rows(rs) > table_rows(ls);
    pairs.sort_unstable_by_key(|(l, r)| if swapped { *r } else { *l });
    pairs.dedup();
    let (lk, rk): (Vec<usize>, Vec<usize>) = pairs.into_iter().unzip();
    let (a, b) = (table_sketch(ls, &lk)?, table_sketch(rs, &rk)?);
    let mut union = HyperLogLog::clone(&a);
    union.merge(&b);
    let (da, db) = (a.estimate().max(1.0), b.estimate().max(1.0));
    let shared = (da + db - union.estimate()).clamp(1.0, da.min(db));
    Some(shared / (da * db))
}

/// A sketch of table columns `cols` over every row. This is the cost of a table's first join in a
/// process, so the morsels are read on as many threads as the machine has, one sketch each, merged
/// (the same sketch as one thread's: a register keeps the largest rank added, in any order).
fn sketch_columns(source: &TableSource, cols: &[usize]) -> crate::error::Result<HyperLogLog> {
    let morsels = match &source.data {
        TableData::Memory(batches) => batches.len(),
        TableData::Files { morsels, .. } => morsels.len(),
        _ => 0,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, morsels.max(1));
    let fields: Vec<SortField> = cols.iter().map(|c| SortField::new(source.schema.field(*c).data_type().clone())).collect();
    let sketch_share = |share: usize| -> crate::error::Result<HyperLogLog> {
        let converter = RowConverter::new(fields.clone())?;
        let mut sketch = HyperLogLog::new();
        let pick = |n: usize| (share..n).step_by(threads).collect::<Vec<usize>>();
        read_columns(source, cols, &pick, &mut |b| {
            let rows = converter.convert_columns(b.columns())?;
            // NULLs never join: they are not values.
            let nulls = b.columns().iter().fold(None, |acc: Option<NullBuffer>, c| NullBuffer::union(acc.as_ref(), c.logical_nulls().as_ref()));
            match nulls {
                None => rows.iter().for_each(|r| sketch.add(r.as_ref())),
                Some(n) => n.valid_indices().for_each(|i| sketch.add(rows.row(i).as_ref())),
            }
            Ok(true)
        })?;
        Ok(sketch)
    };
    let shares: Vec<crate::error::Result<HyperLogLog>> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|share| s.spawn(move || sketch_share(share))).collect();
        let mut shares = vec![sketch_share(0)];
        for h in handles {
            shares.push(h.join().unwrap_or_else(|_| Err(crate::error::RiffleError::plan("a statistics thread failed"))));
        }
        shares
    });
    let mut merged = HyperLogLog::new();
    for share in shares {
        merged.merge(&share?);
    }
    Ok(merged)
}

/// A guess at the fraction of rows passing `p`, for filters that cannot be measured.
pub fn guess_selectivity(p: &Expr) -> f64 {
    match p {
        Expr::Binary { op: BinaryOp::And, left, right } => guess_selectivity(left) * guess_selectivity(right),
        Expr::Binary { op: BinaryOp::Or, left, right } => {
            let (a, b) = (guess_selectivity(left), guess_selectivity(right));
            a + b - a * b
        }
        Expr::Binary { op: BinaryOp::Eq, .. } => 0.1,
        Expr::Binary { op: BinaryOp::NotEq, .. } => 0.9,
        Expr::Binary { op, .. } if op.is_comparison() => 0.33,
        Expr::Not(inner) => 1.0 - guess_selectivity(inner),
        Expr::IsNull(_) => 0.05,
        Expr::IsNotNull(_) => 0.95,
        Expr::InList { list, negated, .. } => {
            let s = (0.1 * list.len() as f64).min(0.5);
            if *negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::Like { negated, .. } => {
            if *negated {
                0.9
            } else {
                0.1
            }
        }
        Expr::Literal(s) => match s.as_bool() {
            Some(true) => 1.0,
            _ => 0.0,
        },
        _ => 0.5,
    }
}

/// A HyperLogLog sketch with 2^12 registers (about 1.6% standard error).
#[derive(Debug, Clone)]
struct HyperLogLog {
    registers: Vec<u8>,
}

const HLL_BITS: u32 = 12;

impl HyperLogLog {
    fn new() -> HyperLogLog {
        HyperLogLog { registers: vec![0; 1 << HLL_BITS] }
    }

    fn add(&mut self, value: &[u8]) {
        let h = hash(value);
        let register = (h >> (64 - HLL_BITS)) as usize;
        // The rank of the first set bit among the remaining bits (a guard bit bounds it).
        let rest = (h << HLL_BITS) | (1 << (HLL_BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        if rank > self.registers[register] {
            self.registers[register] = rank;
        }
    }

    fn merge(&mut self, other: &HyperLogLog) {
        for (r, o) in self.registers.iter_mut().zip(&other.registers) {
            *r = (*r).max(*o);
        }
    }

    fn estimate(&self) -> f64 {
        let m = self.registers.len() as f64;
        let sum: f64 = self.registers.iter().map(|r| 2f64.powi(-(*r as i32))).sum();
        let raw = 0.7213 / (1.0 + 1.079 / m) * m * m / sum;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        if raw <= 2.5 * m && zeros > 0 {
            // Small counts: linear counting is more accurate.
            m * (m / zeros as f64).ln()
        } else {
            raw
        }
    }
}

/// A fixed-seed 64-bit hash (so that estimates, and the plans chosen from them, are the same in every
/// run, and a key belongs to the same partition after a restart): 8-byte words mixed in by
/// multiplication, finished with splitmix64's avalanche.
pub(crate) fn hash(bytes: &[u8]) -> u64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    mix(h ^ u64::from_le_bytes(last))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyperloglog_counts_within_a_few_percent() {
        for n in [1usize, 10, 1_000, 100_000, 1_000_000] {
            let mut s = HyperLogLog::new();
            for i in 0..n {
                s.add(&(i as u64).to_le_bytes());
                s.add(&(i as u64).to_le_bytes()); // duplicates do not count
            }
            let e = s.estimate();
            let err = (e - n as f64).abs() / n as f64;
            assert!(err < 0.05, "{n} distinct values estimated as {e}");
        }
    }

    /// A scan of an in-memory table of Int64 columns `names`, row `i` holding `f(i)`.
    fn scan_of(rows: i64, names: &[&str], f: &dyn Fn(i64) -> Vec<i64>) -> LogicalPlan {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Int64, false)).collect::<Vec<_>>()));
        let values: Vec<Vec<i64>> = (0..rows).map(f).collect();
        let columns = (0..names.len()).map(|c| Arc::new(Int64Array::from(values.iter().map(|v| v[c]).collect::<Vec<_>>())) as _).collect();
        let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
        let source = Arc::new(TableSource::memory(schema.clone(), vec![batch]).unwrap());
        LogicalPlan::Scan { name: "t".into(), source, projection: (0..names.len()).collect(), filters: vec![], schema }
    }

    #[test]
    fn composite_keys_that_only_happen_to_meet_join_few_rows() {
        // Sales of (customer, item, ticket); returns of every tenth sale (a foreign key); orders of
        // customers and items drawn on their own.
        let sale = |i: i64| vec![(i * 37) % 5_000, (i * 101) % 2_000, i];
        let sales = scan_of(100_000, &["c", "i", "t"], &sale);
        let returns = scan_of(10_000, &["c", "i", "t"], &|i| sale(i * 10));
        let orders = scan_of(50_000, &["c", "i"], &|i| vec![(i * 53 + 7) % 5_000, (i * 13 + 3) % 2_000]);
        let joined = |a: &LogicalPlan, b: &LogicalPlan, cols: &[usize]| {
            let e = Estimator::default();
            overlap_selectivity(a, cols, b, cols).unwrap() * e.rows(a) * e.rows(b)
        };
        // Every return meets its sale.
        let fk = joined(&returns, &sales, &[0, 1, 2]);
        assert!((8_000.0..12_500.0).contains(&fk), "{fk}");
        // Orders and returns share few customer-item pairs: about 50 (10 K x 50 K pairs over 10 M
        // possible), far below the 10 K that taking one side's pairs as the other's would give.
        let chance = joined(&orders, &returns, &[0, 1]);
        assert!(chance < 1_000.0, "{chance}");
    }

    #[test]
    fn sketches_of_shares_merge_into_the_sketch_of_all() {
        let (mut all, mut even, mut odd) = (HyperLogLog::new(), HyperLogLog::new(), HyperLogLog::new());
        for i in 0..50_000u64 {
            all.add(&i.to_le_bytes());
            let half = if i % 2 == 0 { &mut even } else { &mut odd };
            half.add(&i.to_le_bytes());
        }
        even.merge(&odd);
        assert_eq!(even.registers, all.registers);
    }

    #[test]
    fn thinning_keeps_rare_keys_and_common_values() {
        // A key column (one row per value) loses values as rows go; a 5-value column keeps them all.
        assert!((thinned(1_000_000.0, 1_000_000.0, 10_000.0) - 10_000.0).abs() < 100.0);
        assert!((thinned(5.0, 1_000_000.0, 10_000.0) - 5.0).abs() < 0.01);
    }
}
