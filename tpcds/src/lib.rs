//! Benchmark data and queries: TPC-H data generated as Parquet at any scale factor (by
//! `tpchgen-arrow`, a Rust port of dbgen), in parallel parts, and the 22 TPC-H queries with their
//! standard qualification parameters.
//!
//! Layout of a generated directory (what `riffle-bench tpch` and `../shared/peers` read): a table
//! made in one part is `<table>.parquet`, a larger one the directory `<table>/` of
//! `part-<k>.parquet` files; `queries/q01.sql … q22.sql`. Each file is written under a staging name
//! and renamed when complete, so an interrupted run leaves no truncated table behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator, RegionGenerator,
    SupplierGenerator,
};
use tpchgen_arrow::{CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow};

#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("scale factor {0} is not a positive number")]
    BadScale(f64),
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {message}")]
    Write { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, GenError>;

/// The 22 TPC-H queries (qualification parameters), as `(name, sql)`.
pub const TPCH_QUERIES: [(&str, &str); 22] = [
    ("q01", include_str!("../queries/tpch/q01.sql")),
    ("q02", include_str!("../queries/tpch/q02.sql")),
    ("q03", include_str!("../queries/tpch/q03.sql")),
    ("q04", include_str!("../queries/tpch/q04.sql")),
    ("q05", include_str!("../queries/tpch/q05.sql")),
    ("q06", include_str!("../queries/tpch/q06.sql")),
    ("q07", include_str!("../queries/tpch/q07.sql")),
    ("q08", include_str!("../queries/tpch/q08.sql")),
    ("q09", include_str!("../queries/tpch/q09.sql")),
    ("q10", include_str!("../queries/tpch/q10.sql")),
    ("q11", include_str!("../queries/tpch/q11.sql")),
    ("q12", include_str!("../queries/tpch/q12.sql")),
    ("q13", include_str!("../queries/tpch/q13.sql")),
    ("q14", include_str!("../queries/tpch/q14.sql")),
    ("q15", include_str!("../queries/tpch/q15.sql")),
    ("q16", include_str!("../queries/tpch/q16.sql")),
    ("q17", include_str!("../queries/tpch/q17.sql")),
    ("q18", include_str!("../queries/tpch/q18.sql")),
    ("q19", include_str!("../queries/tpch/q19.sql")),
    ("q20", include_str!("../queries/tpch/q20.sql")),
    ("q21", include_str!("../queries/tpch/q21.sql")),
    ("q22", include_str!("../queries/tpch/q22.sql")),
];

/// The TPC-H tables and their rows at scale factor 1 (lineitem about four per order).
const TPCH_TABLES: [(&str, f64); 8] = [
    ("lineitem", 6_001_215.0),
    ("orders", 1_500_000.0),
    ("partsupp", 800_000.0),
    ("part", 200_000.0),
    ("customer", 150_000.0),
    ("supplier", 10_000.0),
    ("nation", 25.0),
    ("region", 5.0),
];

/// Rows per part: parts are generated (and their files written) in parallel.
const ROWS_PER_PART: f64 = 2_000_000.0;
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

/// The files TPC-H data at `sf` is made of under `out`.
pub fn tpch_parts(sf: f64, out: &Path) -> Result<Vec<Part>> {
    if !(sf > 0.0 && sf.is_finite()) {
        return Err(GenError::BadScale(sf));
    }
    let mut parts = Vec::new();
    for (table, rows) in TPCH_TABLES {
        // Nation and region do not grow with the scale factor.
        let rows = if matches!(table, "nation" | "region") { rows } else { rows * sf };
        let n = (rows / ROWS_PER_PART).ceil().max(1.0) as i32;
        for part in 1..=n {
            let path = if n == 1 { out.join(format!("{table}.parquet")) } else { out.join(table).join(format!("part-{part}.parquet")) };
            parts.push(Part { table, part, parts: n, path });
        }
    }
    Ok(parts)
}

/// The batches of one part of a table.
fn batches(sf: f64, p: &Part) -> Box<dyn Iterator<Item = std::result::Result<RecordBatch, arrow::error::ArrowError>> + Send> {
    let (part, n) = (p.part, p.parts);
    match p.table {
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(sf, part, n))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(sf, part, n))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(sf, part, n))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(sf, part, n))),
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(sf, part, n))),
        "supplier" => Box::new(SupplierArrow::new(SupplierGenerator::new(sf, part, n))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(sf, part, n))),
        _ => Box::new(RegionArrow::new(RegionGenerator::new(sf, part, n))),
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

fn write_part(sf: f64, p: &Part, rows_done: &AtomicUsize) -> Result<usize> {
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
    for batch in batches(sf, p) {
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

/// Rows of every table at `sf`, for a progress bar's total.
pub fn tpch_rows(sf: f64) -> usize {
    TPCH_TABLES.iter().map(|(t, rows)| if matches!(*t, "nation" | "region") { *rows } else { rows * sf }).sum::<f64>() as usize
}

/// Generates TPC-H at `sf` into `out` on `threads` threads, the queries beside it; `progress` is
/// called with the rows written so far now and then. Returns the rows written per table.
pub fn generate_tpch(sf: f64, out: &Path, threads: usize, progress: &(dyn Fn(usize) + Sync)) -> Result<Vec<(String, usize)>> {
    let parts = tpch_parts(sf, out)?;
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
                    match write_part(sf, &p, &rows_done) {
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
    for (name, sql) in TPCH_QUERIES {
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
        let parts = tpch_parts(1.0, out).expect("parts");
        let of = |t: &str| parts.iter().filter(|p| p.table == t).collect::<Vec<_>>();
        assert_eq!(of("lineitem").len(), 4);
        assert_eq!(of("lineitem")[3].path, out.join("lineitem/part-4.parquet"));
        assert_eq!(of("nation").len(), 1);
        assert_eq!(of("nation")[0].path, out.join("nation.parquet"));
        assert_eq!(of("orders")[0].path, out.join("orders.parquet"));
        assert_eq!(tpch_parts(10.0, out).expect("parts").iter().filter(|p| p.table == "lineitem").count(), 31);
    }

    #[test]
    fn a_scale_factor_must_be_positive() {
        for sf in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(tpch_parts(sf, Path::new("/x")), Err(GenError::BadScale(_))), "{sf}");
        }
    }
}
