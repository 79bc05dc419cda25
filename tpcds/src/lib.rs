//! Benchmark data and queries: TPC-H (by `tpchgen-arrow`, a Rust port of dbgen) and TPC-DS (by
//! `tpcdsgen-arrow`, a Rust port of dsdgen) generated as Parquet at any scale factor, files made in
//! parallel, with the 22 and 99 queries and their standard qualification parameters.
//!
//! Layout of a generated directory (what `riffle-bench tpch|tpcds` and `../shared/peers` read): a
//! table made in one part is `<table>.parquet`, a larger one the directory `<table>/` of
//! `part-<k>.parquet` files; `queries/q01.sql …`. Each file is written under a staging name and
//! renamed when complete, so an interrupted run leaves no truncated table behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

pub mod tpcds;
pub mod tpch;

pub use tpch::QUERIES as TPCH_QUERIES;
pub use tpcds::QUERIES as TPCDS_QUERIES;

/// `(name, sql)` of queries `dir/qNN.sql` in the crate's `queries/` folder.
#[macro_export]
#[doc(hidden)]
macro_rules! queries {
    ($dir:literal, $($q:ident),* $(,)?) => {
        [$((stringify!($q), include_str!(concat!("../queries/", $dir, "/", stringify!($q), ".sql")))),*]
    };
}

/// The benchmarks whose data and queries this crate makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    Tpch,
    Tpcds,
}

impl Benchmark {
    pub fn parse(name: &str) -> Option<Benchmark> {
        match name.to_ascii_lowercase().as_str() {
            "tpch" | "tpc-h" => Some(Benchmark::Tpch),
            "tpcds" | "tpc-ds" => Some(Benchmark::Tpcds),
            _ => None,
        }
    }

    pub fn queries(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Benchmark::Tpch => &tpch::QUERIES,
            Benchmark::Tpcds => &tpcds::QUERIES,
        }
    }

    /// The files the data at `sf` is made of under `out`.
    pub fn parts(self, sf: f64, out: &Path) -> Result<Vec<Part>> {
        if !(sf > 0.0 && sf.is_finite()) {
            return Err(GenError::BadScale(sf));
        }
        Ok(match self {
            Benchmark::Tpch => tpch::parts(sf, out),
            Benchmark::Tpcds => tpcds::parts(sf, out),
        })
    }

    /// Rows of every table at `sf` (about: a progress bar's total).
    pub fn rows(self, sf: f64) -> usize {
        match self {
            Benchmark::Tpch => tpch::rows(sf),
            Benchmark::Tpcds => tpcds::rows(sf),
        }
    }

    fn batches(self, sf: f64, p: &Part) -> Result<Batches> {
        match self {
            Benchmark::Tpch => tpch::batches(sf, p),
            Benchmark::Tpcds => tpcds::batches(sf, p),
        }
    }
}

type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> + Send>;

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("scale factor {0} is not a positive number")]
    BadScale(f64),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("the data generator failed: {0}")]
    Generator(String),
}

pub type Result<T> = std::result::Result<T, GenError>;

/// Rows per Parquet row group (as DuckDB writes them), the unit scans read in parallel.
const ROW_GROUP_ROWS: usize = 122_880;

/// One file to make: part `part` (1-based) of `parts` of a table.
#[derive(Debug, Clone)]
pub struct Part {
    pub table: &'static str,
    pub part: i32,
    pub parts: i32,
    pub path: PathBuf,
}

impl Part {
    /// Part `part` of `parts` of `table` under `out`: `<table>.parquet` when it is the only one.
    fn new(out: &Path, table: &'static str, part: i32, parts: i32) -> Part {
        let path = if parts == 1 { out.join(format!("{table}.parquet")) } else { out.join(table).join(format!("part-{part}.parquet")) };
        Part { table, part, parts, path }
    }
}

/// The generator's string views as plain UTF-8 (what other engines' files hold and scans read).
fn plain_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| if *f.data_type() == DataType::Utf8View { f.as_ref().clone().with_data_type(DataType::Utf8) } else { f.as_ref().clone() })
        .collect();
    Arc::new(Schema::new(fields))
}

fn write_part(benchmark: Benchmark, sf: f64, p: &Part, rows_done: &AtomicUsize) -> Result<usize> {
    let fail = |message: String| GenError::Write { path: p.path.clone(), message };
    if let Some(dir) = p.path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| GenError::Io { path: dir.to_path_buf(), source })?;
    }
    let staging = p.path.with_extension("parquet.partial");
    let file = std::fs::File::create(&staging).map_err(|source| GenError::Io { path: staging.clone(), source })?;
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_row_count(Some(ROW_GROUP_ROWS)).build();
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut file = Some(file);
    let mut rows = 0;
    for batch in benchmark.batches(sf, p)? {
        let batch = batch.map_err(|e| fail(e.to_string()))?;
        let schema = plain_schema(&batch.schema());
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
            .collect::<std::result::Result<Vec<ArrayRef>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(|e| fail(e.to_string()))?;
        if writer.is_none() {
            let f = file.take().ok_or_else(|| fail("writer lost its file".into()))?;
            writer = Some(ArrowWriter::try_new(f, schema, Some(props.clone())).map_err(|e| fail(e.to_string()))?);
        }
        if let Some(w) = writer.as_mut() {
            w.write(&batch).map_err(|e| fail(e.to_string()))?;
        }
        rows += batch.num_rows();
        rows_done.fetch_add(batch.num_rows(), Ordering::Relaxed);
    }
    let writer = writer.ok_or_else(|| fail("the generator made no rows".into()))?;
    let f = writer.into_inner().map_err(|e| fail(e.to_string()))?;
    f.sync_all().map_err(|source| GenError::Io { path: staging.clone(), source })?;
    std::fs::rename(&staging, &p.path).map_err(|source| GenError::Io { path: p.path.clone(), source })?;
    Ok(rows)
}

/// Generates `benchmark`'s data at `sf` into `out` on `threads` threads, the queries beside it;
/// `progress` is called with the rows written so far now and then. Returns the rows written per
/// table.
pub fn generate(
    benchmark: Benchmark,
    sf: f64,
    out: &Path,
    threads: usize,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<Vec<(String, usize)>> {
    let parts = benchmark.parts(sf, out)?;
    std::fs::create_dir_all(out).map_err(|source| GenError::Io { path: out.to_path_buf(), source })?;
    // Taken from the end: the biggest tables' parts first, so the last ones to finish are short.
    let queue = Mutex::new(parts.into_iter().rev().collect::<Vec<Part>>());
    let rows_done = AtomicUsize::new(0);
    let written: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
    let first_error: Mutex<Option<GenError>> = Mutex::new(None);
    let workers = threads.max(1);
    let running = AtomicUsize::new(workers);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop());
                    let Some(p) = next else { break };
                    match write_part(benchmark, sf, &p, &rows_done) {
                        Ok(rows) => {
                            if let Ok(mut w) = written.lock() {
                                w.push((p.table.to_string(), rows));
                            }
                        }
                        Err(e) => {
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(e);
                            }
                            // The others stop after their current part.
                            if let Ok(mut q) = queue.lock() {
                                q.clear();
                            }
                            break;
                        }
                    }
                }
                running.fetch_sub(1, Ordering::Release);
            });
        }
        while running.load(Ordering::Acquire) > 0 {
            progress(rows_done.load(Ordering::Relaxed));
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    progress(rows_done.load(Ordering::Relaxed));
    let queries = out.join("queries");
    std::fs::create_dir_all(&queries).map_err(|source| GenError::Io { path: queries.clone(), source })?;
    for (name, sql) in benchmark.queries() {
        let path = queries.join(format!("{name}.sql"));
        std::fs::write(&path, sql).map_err(|source| GenError::Io { path, source })?;
    }
    let mut per_table: Vec<(String, usize)> = Vec::new();
    for (table, rows) in written.into_inner().unwrap_or_default() {
        match per_table.iter_mut().find(|(t, _)| *t == table) {
            Some(entry) => entry.1 += rows,
            None => per_table.push((table, rows)),
        }
    }
    per_table.sort();
    Ok(per_table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_tables_are_made_in_parts_in_a_directory() {
        let out = Path::new("/data");
        let parts = Benchmark::Tpch.parts(1.0, out).expect("parts");
        let of = |t: &str| parts.iter().filter(|p| p.table == t).collect::<Vec<_>>();
        assert_eq!(of("lineitem").len(), 4);
        assert_eq!(of("lineitem")[3].path, out.join("lineitem/part-4.parquet"));
        assert_eq!(of("nation").len(), 1);
        assert_eq!(of("nation")[0].path, out.join("nation.parquet"));
        assert_eq!(of("orders")[0].path, out.join("orders.parquet"));
        assert_eq!(Benchmark::Tpch.parts(10.0, out).expect("parts").iter().filter(|p| p.table == "lineitem").count(), 31);
    }

    #[test]
    fn tpcds_tables_are_one_file_each_biggest_first() {
        let out = Path::new("/data");
        let parts = Benchmark::Tpcds.parts(1.0, out).expect("parts");
        assert_eq!(parts.len(), 24);
        assert_eq!(parts[0].path, out.join("inventory.parquet"));
        assert!(parts.iter().all(|p| p.parts == 1 && p.path == out.join(format!("{}.parquet", p.table))));
        assert!(!parts.iter().any(|p| p.table == "dbgen_version"));
        assert_eq!(Benchmark::Tpcds.queries().len(), 99);
        assert_eq!(Benchmark::parse("TPC-DS"), Some(Benchmark::Tpcds));
    }

    #[test]
    fn a_scale_factor_must_be_positive() {
        for sf in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            for b in [Benchmark::Tpch, Benchmark::Tpcds] {
                assert!(matches!(b.parts(sf, Path::new("/x")), Err(GenError::BadScale(_))), "{sf}");
            }
        }
    }
}
