use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelectionPolicy};
use parquet::arrow::ProjectionMask;
use parquet::basic::Encoding;

use crate::{gensort, CsvOptions, FileFormat, FormatError, Result};

/// How many rows schema inference looks at in text formats.
const INFER_ROWS: usize = 10_000;

/// Records of a gensort file one morsel reads (100 MB).
const GENSORT_MORSEL_RECORDS: u64 = 1 << 20;

/// A unit of scan work one worker reads on its own: a whole file, or some row groups of a Parquet file.
#[derive(Debug, Clone)]
pub struct Morsel {
    pub file: PathBuf,
    /// Parquet row groups to read; `None` reads the whole file.
    pub row_groups: Option<Vec<usize>>,
    /// Row count when known up front (Parquet metadata).
    pub rows: Option<usize>,
    /// The file's Parquet footer, parsed once when the morsels were planned.
    pub parquet: Option<ArrowReaderMetadata>,
    /// Rows of the (single) row group to read, ascending and disjoint, when page statistics showed
    /// the others cannot pass the scan's filter; `None` reads them all. Pages holding none of these
    /// rows are not read at all (given `parquet` carries the file's page index).
    pub rows_to_read: Option<Vec<std::ops::Range<usize>>>,
    /// Bytes of a CSV file to read: whole lines, the first morsel of a file from byte 0 (its header).
    pub bytes: Option<std::ops::Range<u64>>,
    /// Records of a gensort file to read; `None` reads them all.
    pub records: Option<std::ops::Range<u64>>,
}

/// Whether every data page of top-level column `column` is dictionary-encoded in the first row group
/// of the first morsel's Parquet file: read as a dictionary, it then hands out the file's codes and
/// small dictionary as they are (a column that fell back to plain pages would be hashed into one).
pub fn dictionary_encoded(morsels: &[Morsel], column: &str) -> bool {
    let Some(meta) = morsels.first().and_then(|m| m.parquet.as_ref()) else { return false };
    let Some(group) = meta.metadata().row_groups().first() else { return false };
    group.columns().iter().any(|c| {
        c.column_path().parts() == [column]
            && c.dictionary_page_offset().is_some()
            && c.page_encoding_stats_mask().is_some_and(|mask| mask.is_only(Encoding::PLAIN_DICTIONARY) || mask.is_only(Encoding::RLE_DICTIONARY))
    })
}

/// An iterator of batches read from one morsel.
pub type BatchReader = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| FormatError::io(path, e))
}

/// The file's bytes, mapped into memory: the Parquet reader then slices its column chunks out of the
/// page cache instead of copying them with `read` (that copy was ~8% of TPC-H Q6's time).
fn map_file(path: &Path) -> Result<bytes::Bytes> {
    let file = open(path)?;
    // SAFETY: the mapping is only read. If another process truncates the file while it is mapped,
    // reading past the new end faults (as with polars' and arrow's mapped readers); files under a
    // running query are expected to stay as they are, as every engine here assumes.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
    Ok(bytes::Bytes::from_owner(map))
}

/// The schema of the files of a table, read from the first file (Parquet, Arrow) or inferred from its
/// first rows (CSV, JSON). Inferred text columns become Int64, Float64, Boolean, Date32, Timestamp or Utf8.
pub fn infer_schema(format: &FileFormat, files: &[PathBuf]) -> Result<SchemaRef> {
    let Some(path) = files.first() else {
        return Err(FormatError::NoFiles { pattern: String::new() });
    };
    let schema = match format {
        FileFormat::Parquet => {
            let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
                .map_err(|e| FormatError::corrupt(path, format!("not a valid Parquet file ({e})")))?;
            builder.schema().clone()
        }
        FileFormat::Csv(opts) => {
            let format = csv_format(opts);
            let (schema, _) = format
                .infer_schema(BufReader::new(open(path)?), Some(INFER_ROWS))
                .map_err(|e| FormatError::corrupt(path, e))?;
            Arc::new(schema)
        }
        FileFormat::Json => {
            let mut reader = BufReader::new(open(path)?);
            let (schema, _) =
                arrow::json::reader::infer_json_schema_from_seekable(&mut reader, Some(INFER_ROWS))
                    .map_err(|e| FormatError::corrupt(path, e))?;
            Arc::new(schema)
        }
        FileFormat::Arrow => {
            let reader = arrow::ipc::reader::FileReader::try_new(open(path)?, None)
                .map_err(|e| FormatError::corrupt(path, format!("not a valid Arrow IPC file ({e})")))?;
            reader.schema()
        }
        FileFormat::Gensort => return Ok(gensort::schema()),
        FileFormat::DebeziumJson => {
            return Err(FormatError::corrupt(path, "a debezium-json table's columns cannot be inferred: declare them (CREATE TABLE t (…) WITH ('format' = 'debezium-json', …))"))
        }
    };
    // Columns are nullable: one file of a table may hold nulls where another holds none.
    let fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn csv_format(opts: &CsvOptions) -> arrow::csv::reader::Format {
    arrow::csv::reader::Format::default()
        .with_header(opts.header)
        .with_delimiter(opts.delimiter)
        .with_quote(opts.quote)
}

/// Splits files into morsels: one per Parquet row group, one per file otherwise.
pub fn plan_morsels(format: &FileFormat, files: &[PathBuf]) -> Result<Vec<Morsel>> {
    let mut morsels = Vec::new();
    for file in files {
        match format {
            FileFormat::Parquet => {
                let meta = ArrowReaderMetadata::load(&open(file)?, Default::default())
                    .map_err(|e| FormatError::corrupt(file, format!("not a valid Parquet file ({e})")))?;
                for (i, rg) in meta.metadata().row_groups().iter().enumerate() {
                    morsels.push(Morsel {
                        file: file.clone(),
                        row_groups: Some(vec![i]),
                        rows: Some(rg.num_rows() as usize),
                        parquet: Some(meta.clone()),
                        rows_to_read: None,
                        records: None,
                        bytes: None,
                    });
                }
            }
            FileFormat::Gensort => {
                let len = std::fs::metadata(file).map_err(|e| FormatError::io(file, e))?.len();
                if len % gensort::RECORD_LEN as u64 != 0 {
                    return Err(FormatError::corrupt(
                        file,
                        format!("not a gensort file: its size, {len} bytes, is not a whole number of 100-byte records"),
                    ));
                }
                let records = len / gensort::RECORD_LEN as u64;
                let mut start = 0;
                while start < records {
                    let end = (start + GENSORT_MORSEL_RECORDS).min(records);
                    morsels.push(Morsel {
                        file: file.clone(),
                        row_groups: None,
                        rows: Some((end - start) as usize),
                        parquet: None,
                        rows_to_read: None,
                        records: Some(start..end),
                        bytes: None,
                    });
                    start = end;
                }
            }
            // JSON lines escape line breaks inside strings: every line end is a record end.
            FileFormat::Json | FileFormat::DebeziumJson => {
                for bytes in line_splits(file, None)? {
                    morsels.push(Morsel { file: file.clone(), row_groups: None, rows: None, parquet: None, rows_to_read: None, records: None, bytes });
                }
            }
            FileFormat::Csv(opts) => {
                for bytes in line_splits(file, Some(opts.quote))? {
                    morsels.push(Morsel { file: file.clone(), row_groups: None, rows: None, parquet: None, rows_to_read: None, records: None, bytes });
                }
            }
            _ => morsels.push(Morsel {
                file: file.clone(),
                row_groups: None,
                rows: None,
                parquet: None,
                rows_to_read: None,
                records: None,
                bytes: None,
            }),
        }
    }
    Ok(morsels)
}

/// A CSV or JSON lines file of at least this many bytes is read in pieces of about this size, in parallel.
const CSV_MORSEL_BYTES: u64 = 32 << 20;

/// The byte ranges a text file of records is read in: whole lines, for CSV (`quote`) cut only at line
/// ends outside quoted fields (a quoted field may hold a line break), so each piece parses on its own.
/// One range (`None`: the whole file) for small files.
fn line_splits(path: &Path, quote: Option<u8>) -> Result<Vec<Option<std::ops::Range<u64>>>> {
    let len = std::fs::metadata(path).map_err(|e| FormatError::io(path, e))?.len();
    if len < 2 * CSV_MORSEL_BYTES {
        return Ok(vec![None]);
    }
    let data = map_file(path)?;
    let mut cuts = vec![0u64];
    let mut target = CSV_MORSEL_BYTES as usize;
    let quote = quote.filter(|q| memchr::memchr(*q, &data).is_some());
    if let Some(quote) = quote {
        // Quotes toggle whether a line end ends a record ("" inside a field toggles twice).
        let mut quoted = false;
        for i in memchr::memchr2_iter(quote, b'\n', &data) {
            if data[i] == quote {
                quoted = !quoted;
            } else if !quoted && i >= target && i + 1 < data.len() {
                cuts.push((i + 1) as u64);
                target = i + 1 + CSV_MORSEL_BYTES as usize;
            }
        }
    } else {
        // No quotes at all: every line end is a record end.
        while target < data.len() {
            match memchr::memchr(b'\n', &data[target..]) {
                Some(i) if target + i + 1 < data.len() => cuts.push((target + i + 1) as u64),
                _ => break,
            }
            target = *cuts.last().unwrap_or(&0) as usize + CSV_MORSEL_BYTES as usize;
        }
    }
    cuts.push(len);
    Ok(cuts.windows(2).map(|w| Some(w[0]..w[1])).collect())
}

/// Line breaks before byte `offset` of a file: where a piece read from there starts, for errors.
fn lines_before(path: &Path, offset: u64) -> usize {
    match map_file(path) {
        Ok(data) => memchr::memchr_iter(b'\n', &data[..(offset as usize).min(data.len())]).count(),
        Err(_) => 0,
    }
}

/// Reads one morsel as batches of `table_schema` projected to `projection` (indices into
/// `table_schema`). Columns are matched by name in self-describing formats and cast to the table's type,
/// so a table declared by DDL may widen a file's types.
///
/// `dictionary[i]` says the caller accepts projected column `i` dictionary-encoded
/// (`Dictionary(Int32, Utf8)` in place of `Utf8`): Parquet string columns are then handed out as the
/// file stores them, codes plus a small dictionary, instead of being expanded row by row.
pub fn read_morsel(
    format: &FileFormat,
    morsel: &Morsel,
    table_schema: &SchemaRef,
    projection: &[usize],
    dictionary: &[bool],
    batch_size: usize,
) -> Result<BatchReader> {
    let path = morsel.file.clone();
    let mut out_schema: SchemaRef = Arc::new(table_schema.project(projection).map_err(|e| FormatError::corrupt(&path, e))?);
    match format {
        FileFormat::Parquet => {
            let not_parquet = |e| FormatError::corrupt(&path, format!("not a valid Parquet file ({e})"));
            let mut meta = match &morsel.parquet {
                Some(meta) => meta.clone(),
                None => ArrowReaderMetadata::load(&open(&path)?, Default::default()).map_err(not_parquet)?,
            };
            let file_cols = columns_by_name(&path, meta.schema(), &out_schema)?;
            if let Some((file_schema, schema)) = read_types(meta.schema(), &out_schema, &file_cols, dictionary) {
                let options = ArrowReaderOptions::new().with_schema(file_schema);
                meta = ArrowReaderMetadata::try_new(meta.metadata().clone(), options).map_err(not_parquet)?;
                out_schema = schema;
            }
            let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(map_file(&path)?, meta);
            let mut roots: Vec<usize> = file_cols.iter().flatten().copied().collect();
            roots.sort_unstable();
            roots.dedup();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
            let mut builder = builder.with_projection(mask).with_batch_size(batch_size.max(1));
            if let Some(rgs) = &morsel.row_groups {
                builder = builder.with_row_groups(rgs.clone());
            }
            if let (Some(ranges), Some(rows)) = (&morsel.rows_to_read, morsel.rows) {
                // Skipped rows are skipped, not decoded and dropped (the reader's choice for short
                // runs, which costs more than reading every row when they are many).
                builder = builder
                    .with_row_selection(RowSelection::from_consecutive_ranges(ranges.iter().cloned(), rows))
                    .with_row_selection_policy(RowSelectionPolicy::Selectors);
            }
            let reader = builder.build().map_err(|e| FormatError::corrupt(&path, e))?;
            // Position of each projected file column inside the batches the reader yields.
            let positions: Vec<Option<usize>> = file_cols
                .iter()
                .map(|c| c.and_then(|c| roots.iter().position(|r| *r == c)))
                .collect();
            Ok(Box::new(reader.map(move |batch| {
                let batch = batch.map_err(|e| FormatError::corrupt(&path, e))?;
                conform(&path, &batch, &positions, &out_schema)
            })))
        }
        FileFormat::Arrow => {
            let reader = arrow::ipc::reader::FileReader::try_new(open(&path)?, None)
                .map_err(|e| FormatError::corrupt(&path, format!("not a valid Arrow IPC file ({e})")))?;
            let file_cols = columns_by_name(&path, &reader.schema(), &out_schema)?;
            Ok(Box::new(reader.map(move |batch| {
                let batch = batch.map_err(|e| FormatError::corrupt(&path, e))?;
                conform(&path, &batch, &file_cols, &out_schema)
            })))
        }
        FileFormat::Csv(opts) => {
            // Text formats are parsed with the table's types; only projected columns are parsed.
            let mut file = open(&path)?;
            let range = morsel.bytes.clone().unwrap_or(0..u64::MAX);
            file.seek(SeekFrom::Start(range.start)).map_err(|e| FormatError::io(&path, e))?;
            // Only the piece at the start of the file has the header line.
            let header = opts.header && range.start == 0;
            let reader = arrow::csv::ReaderBuilder::new(table_schema.clone())
                .with_header(header)
                .with_delimiter(opts.delimiter)
                .with_quote(opts.quote)
                .with_batch_size(batch_size.max(1))
                .with_projection(projection.to_vec())
                .build(BufReader::with_capacity(1 << 20, file.take(range.end - range.start)))
                .map_err(|e| FormatError::corrupt(&path, e))?;
            let start = range.start;
            Ok(Box::new(reader.map(move |batch| {
                batch.map_err(|e| {
                    let before = if start == 0 { usize::from(header) } else { lines_before(&path, start) };
                    FormatError::corrupt(&path, csv_error(&e.to_string(), before))
                })
            })))
        }
        FileFormat::Gensort => {
            let records = morsel.records.clone().unwrap_or(0..0);
            let mut reader = gensort::GensortReader::new(BufReader::with_capacity(1 << 20, open(&path)?), records.start, records.end, batch_size)
                .map_err(|e| FormatError::io(&path, e))?;
            let projection = projection.to_vec();
            Ok(Box::new(std::iter::from_fn(move || match reader.next_batch() {
                Ok(None) => None,
                Ok(Some(b)) => Some(b.project(&projection).map_err(|e| FormatError::corrupt(&path, e))),
                Err(e) => Some(Err(FormatError::corrupt(&path, format!("cannot read gensort records ({e})")))),
            })))
        }
        FileFormat::DebeziumJson => {
            let mut file = open(&path)?;
            let range = morsel.bytes.clone().unwrap_or(0..u64::MAX);
            file.seek(SeekFrom::Start(range.start)).map_err(|e| FormatError::io(&path, e))?;
            let reader = arrow::json::ReaderBuilder::new(crate::debezium::envelope_schema(table_schema))
                .with_batch_size(batch_size.max(1))
                .build(BufReader::with_capacity(1 << 20, file.take(range.end - range.start)))
                .map_err(|e| FormatError::corrupt(&path, e))?;
            let mut fields: Vec<Field> = out_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
            fields.push(Field::new("op", DataType::Int8, false));
            let out_schema: SchemaRef = Arc::new(Schema::new(fields));
            let projection = projection.to_vec();
            Ok(Box::new(reader.map(move |batch| {
                let batch = batch.map_err(|e| FormatError::corrupt(&path, e))?;
                crate::debezium::decode(&batch, &projection, &out_schema).map_err(|e| FormatError::corrupt(&path, e))
            })))
        }
        FileFormat::Json => {
            let mut file = open(&path)?;
            let range = morsel.bytes.clone().unwrap_or(0..u64::MAX);
            file.seek(SeekFrom::Start(range.start)).map_err(|e| FormatError::io(&path, e))?;
            let reader = arrow::json::ReaderBuilder::new(table_schema.clone())
                .with_batch_size(batch_size.max(1))
                .build(BufReader::with_capacity(1 << 20, file.take(range.end - range.start)))
                .map_err(|e| FormatError::corrupt(&path, e))?;
            let identity: Vec<Option<usize>> = projection.iter().map(|i| Some(*i)).collect();
            Ok(Box::new(reader.map(move |batch| {
                let batch = batch.map_err(|e| FormatError::corrupt(&path, e))?;
                conform(&path, &batch, &identity, &out_schema)
            })))
        }
    }
}

/// The types the Parquet reader is asked for, where they differ from the file's own: strings wanted as
/// dictionaries stay dictionary-encoded, and a decimal the table stores in 64 bits is read as one
/// (INT64 decimals then need no widening). `None` if the file's types serve as they are.
fn read_types(
    file_schema: &SchemaRef,
    out_schema: &SchemaRef,
    file_cols: &[Option<usize>],
    dictionary: &[bool],
) -> Option<(SchemaRef, SchemaRef)> {
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let mut file_fields: Vec<Field> = file_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut out_fields: Vec<Field> = out_schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut changed = false;
    for (i, c) in file_cols.iter().enumerate() {
        let Some(c) = c else { continue };
        let (have, want) = (file_fields[*c].data_type().clone(), out_fields[i].data_type().clone());
        if dictionary.get(i) == Some(&true) && have == DataType::Utf8 && want == DataType::Utf8 {
            file_fields[*c] = file_fields[*c].clone().with_data_type(dict.clone());
            out_fields[i] = out_fields[i].clone().with_data_type(dict.clone());
            changed = true;
        } else if let (DataType::Decimal128(p, s), DataType::Decimal64(q, t)) = (&have, &want) {
            if (p, s) == (q, t) {
                file_fields[*c] = file_fields[*c].clone().with_data_type(want);
                changed = true;
            }
        }
    }
    changed.then(|| (Arc::new(Schema::new(file_fields)), Arc::new(Schema::new(out_fields))))
}

/// Arrow counts CSV data lines from 0; say which line of the file it is (1-based, header included).
fn csv_error(message: &str, header_lines: usize) -> String {
    let fixed = match message.find(" at line ") {
        Some(i) => {
            let rest = &message[i + 9..];
            let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            match digits.parse::<usize>() {
                Ok(n) => format!("{} at line {}{}", &message[..i], n + 1 + header_lines, &rest[digits.len()..]),
                Err(_) => message.to_string(),
            }
        }
        None => message.to_string(),
    };
    format!("{fixed} (fix the value, or declare the column with a type that holds it, such as VARCHAR)")
}

/// For each wanted column, its index in the file's schema (by name, case-insensitively as a fallback).
fn columns_by_name(path: &Path, file: &Schema, wanted: &Schema) -> Result<Vec<Option<usize>>> {
    wanted
        .fields()
        .iter()
        .map(|f| {
            let exact = file.fields().iter().position(|g| g.name() == f.name());
            let found = exact.or_else(|| file.fields().iter().position(|g| g.name().eq_ignore_ascii_case(f.name())));
            match found {
                Some(i) => Ok(Some(i)),
                None => Err(FormatError::corrupt(
                    path,
                    format!(
                        "column '{}' is missing (the file has: {})",
                        f.name(),
                        file.fields().iter().map(|g| g.name().as_str()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        })
        .collect()
}

/// Picks columns `positions` out of `batch` and casts them to `schema`'s types.
fn conform(path: &Path, batch: &RecordBatch, positions: &[Option<usize>], schema: &SchemaRef) -> Result<RecordBatch> {
    let options = CastOptions { safe: false, ..Default::default() };
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(positions.len());
    for (pos, field) in positions.iter().zip(schema.fields()) {
        let col = match pos {
            Some(p) => batch.column(*p).clone(),
            None => new_null_array(field.data_type(), batch.num_rows()),
        };
        let col = if col.data_type() == field.data_type() {
            col
        } else {
            cast_with_options(&col, field.data_type(), &options).map_err(|e| {
                FormatError::corrupt(
                    path,
                    format!("column '{}' holds {} where {} was expected: {e}", field.name(), col.data_type(), field.data_type()),
                )
            })?
        };
        columns.push(col);
    }
    RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| FormatError::corrupt(path, e))
}

/// Min, max and null count of one column in each row group of a Parquet file, as Arrow arrays with the
/// column's own type (entries are NULL where the file has no statistics).
pub struct ColumnStats {
    pub mins: ArrayRef,
    pub maxes: ArrayRef,
    pub null_counts: arrow::array::UInt64Array,
}

/// Statistics of each data page of one column in one row group, from the file's page index.
pub struct PageStats {
    pub mins: ArrayRef,
    pub maxes: ArrayRef,
    /// Rows in each page, in order: page `i` holds the rows after those of pages `0..i`.
    pub row_counts: Vec<usize>,
}

/// A Parquet file's footer together with its page index (column and offset indexes), if it has one.
pub fn parquet_metadata_with_page_index(path: &Path) -> Result<ArrowReaderMetadata> {
    ArrowReaderMetadata::load(&open(path)?, ArrowReaderOptions::new().with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional))
        .map_err(|e| FormatError::corrupt(path, format!("not a valid Parquet file ({e})")))
}

/// Page statistics of column `name` in row group `row_group`; `None` when the file has no page index
/// for it.
pub fn parquet_page_stats(meta: &ArrowReaderMetadata, name: &str, row_group: usize) -> Option<PageStats> {
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    let pq = meta.metadata();
    let (column_index, offset_index) = (pq.column_index()?, pq.offset_index()?);
    let conv = StatisticsConverter::try_new(name, meta.schema(), pq.file_metadata().schema_descr()).ok()?;
    let groups = [row_group];
    let mins = conv.data_page_mins(column_index, offset_index, &groups).ok()?;
    let maxes = conv.data_page_maxes(column_index, offset_index, &groups).ok()?;
    let counts = conv.data_page_row_counts(offset_index, pq.row_groups(), &groups).ok()??;
    let row_counts: Vec<usize> = counts.iter().map(|c| c.map(|c| c as usize)).collect::<Option<_>>()?;
    (mins.len() == row_counts.len() && maxes.len() == row_counts.len()).then_some(PageStats { mins, maxes, row_counts })
}

/// Row-group statistics of the named columns of a Parquet file, from its footer `meta`; `None` for a
/// column without usable statistics.
pub fn parquet_stats(meta: &ArrowReaderMetadata, columns: &[&str]) -> Vec<Option<ColumnStats>> {
    use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
    let pq = meta.metadata();
    let row_groups = pq.row_groups();
    columns
        .iter()
        .map(|name| {
            let conv = StatisticsConverter::try_new(name, meta.schema(), pq.file_metadata().schema_descr()).ok()?;
            Some(ColumnStats {
                mins: conv.row_group_mins(row_groups.iter()).ok()?,
                maxes: conv.row_group_maxes(row_groups.iter()).ok()?,
                null_counts: conv.row_group_null_counts(row_groups.iter()).ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod csv_split_tests {
    use super::*;
    use arrow::array::AsArray;

    fn read_all(path: &Path, opts: &CsvOptions) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("text", arrow::datatypes::DataType::Utf8, true),
        ]));
        let format = FileFormat::Csv(opts.clone());
        let morsels = plan_morsels(&format, &[path.to_path_buf()]).expect("morsels");
        assert!(morsels.len() > 2, "a big file is read in pieces ({} morsels)", morsels.len());
        morsels
            .iter()
            .flat_map(|m| read_morsel(&format, m, &schema, &[0, 1], &[false, false], 8192).expect("reader").map(|b| b.expect("batch")))
            .collect()
    }

    #[test]
    fn big_json_lines_files_are_read_in_pieces() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("big.jsonl");
        let mut text = String::new();
        let mut n = 0i64;
        while text.len() < (5 * CSV_MORSEL_BYTES) as usize {
            text.push_str(&format!("{{\"id\": {n}, \"text\": \"line\\nbreak, \\\"quoted\\\" {n}\"}}\n"));
            n += 1;
        }
        std::fs::write(&path, &text).expect("write");
        let schema = Arc::new(Schema::new(vec![
            arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
            arrow::datatypes::Field::new("text", arrow::datatypes::DataType::Utf8, true),
        ]));
        let morsels = plan_morsels(&FileFormat::Json, std::slice::from_ref(&path)).expect("morsels");
        assert!(morsels.len() > 2, "{} morsels", morsels.len());
        let ids: Vec<i64> = morsels
            .iter()
            .flat_map(|m| read_morsel(&FileFormat::Json, m, &schema, &[0, 1], &[false, false], 8192).expect("reader").map(|b| b.expect("batch")))
            .flat_map(|b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec())
            .collect();
        assert_eq!(ids, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn big_csv_files_are_cut_at_record_ends_even_inside_quoted_line_breaks() {
        let dir = tempfile::tempdir().expect("dir");
        for quoted in [false, true] {
            let path = dir.path().join(format!("big-{quoted}.csv"));
            let mut text = String::from("id,text\n");
            let mut n = 0i64;
            while text.len() < (5 * CSV_MORSEL_BYTES) as usize {
                if quoted && n % 3 == 0 {
                    text.push_str(&format!("{n},\"two\nlines, \"\"quoted\"\"\"\n"));
                } else {
                    text.push_str(&format!("{n},plain text of row {n}\n"));
                }
                n += 1;
            }
            std::fs::write(&path, &text).expect("write");
            let batches = read_all(&path, &CsvOptions::default());
            let ids: Vec<i64> = batches.iter().flat_map(|b| b.column(0).as_primitive::<arrow::datatypes::Int64Type>().values().to_vec()).collect();
            assert_eq!(ids, (0..n).collect::<Vec<_>>(), "every row once, in order (quoted: {quoted})");
            if quoted {
                let first = batches[0].column(1).as_string::<i32>().value(0).to_string();
                assert_eq!(first, "two\nlines, \"quoted\"");
            }
        }
    }
}
