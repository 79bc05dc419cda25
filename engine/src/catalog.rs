//! Tables and views a session knows by name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use riffle_formats::nexmark::{NexmarkConfig, NexmarkTable};
use riffle_formats::{FileFormat, Morsel};

use crate::error::{closest, Result, RiffleError};
use crate::logical::Expr;

/// Where a table's rows come from.
#[derive(Debug)]
pub enum TableData {
    /// `root`: the directory the table is (when it is one), where `INSERT INTO` adds files.
    /// `monitor`: the table has no end: every interval the scan lists `pattern` again and reads the
    /// files that appeared since (Flink's `'source.monitor-interval'`). `idle_timeout`: once no new
    /// rows came for that long, the scan says it is idle (Flink's `'scan.watermark.idle-timeout'`).
    Files {
        format: FileFormat,
        files: Vec<PathBuf>,
        morsels: Vec<Morsel>,
        root: Option<PathBuf>,
        pattern: String,
        monitor: Option<std::time::Duration>,
        idle_timeout: Option<std::time::Duration>,
        /// Read as a stream, rows are handed out as their event time comes round on the wall clock
        /// (`'source.replay' = 'event-time'`).
        replay: bool,
    },
    /// Rows held in memory (e.g. `CREATE TABLE t AS …`, `INSERT INTO`).
    Memory(Vec<RecordBatch>),
    /// Sort-benchmark records made as they are read: `records` of them.
    Generated { records: u64, generator: riffle_formats::gensort::RecordGenerator },
    /// Nexmark events of one table, made as they are read: events `0 .. events`, or without end.
    /// `columns[i]` is the generator's column that the table's column `i` is.
    /// `paced`: events are handed out on the wall clock, event `n` once `n / events_per_second`
    /// seconds have passed since the first (as a live source would), not as fast as they are read.
    Nexmark { config: NexmarkConfig, table: NexmarkTable, events: Option<u64>, columns: Vec<usize>, paced: bool },
    /// Flink's `blackhole` connector: rows inserted are counted and dropped; it reads as empty.
    Blackhole,
}

#[derive(Debug)]
pub struct TableSource {
    pub schema: SchemaRef,
    pub data: TableData,
    /// The event-time column and its watermark, when the table declares one (`WATERMARK FOR`).
    pub event_time: Option<EventTime>,
    /// Row-count, selectivity and distinct-count measurements, made when a plan first needs them.
    pub stats: crate::stats::TableStats,
}

/// A table's event time, from Flink's `WATERMARK FOR column AS expr`: read as a stream, the table's
/// sources emit, after each batch, the largest value of `watermark` seen so far: no row with an
/// event time below it is expected any more.
#[derive(Debug, Clone)]
pub struct EventTime {
    /// The event-time column (a TIMESTAMP).
    pub column: usize,
    /// Over the table's columns, e.g. `ts - INTERVAL '5' SECOND`.
    pub watermark: Expr,
    /// The expression as written, for EXPLAIN.
    pub text: String,
}

/// A table is equal only to itself: two scans are the same subplan when they read the same table
/// (`crate::share`), not another with the same definition.
impl PartialEq for TableSource {
    fn eq(&self, other: &TableSource) -> bool {
        std::ptr::eq(self, other)
    }
}

impl TableSource {
    /// A table over files: `path` is a file, a directory or a glob; the format comes from the option or
    /// the extension; the schema is given (DDL) or inferred.
    pub fn files(path: &str, format: Option<FileFormat>, schema: Option<SchemaRef>) -> Result<TableSource> {
        let as_dir = std::path::Path::new(path);
        let directory = !path.contains(['*', '?', '[']) && (as_dir.is_dir() || !as_dir.exists());
        let files = match riffle_formats::list_files(path) {
            Ok(files) => files,
            // A directory without files yet (a sink's): the declared columns and format say what it holds.
            Err(riffle_formats::FormatError::NoFiles { .. }) if directory && schema.is_some() && format.is_some() => vec![],
            Err(e) => return Err(e.into()),
        };
        let root = directory.then(|| PathBuf::from(path));
        let format = match format {
            Some(f) => f,
            None => FileFormat::from_path(&files[0]).ok_or_else(|| {
                RiffleError::plan(format!(
                    "cannot tell the format of '{}' from its extension: use .parquet, .csv, .json, .arrow or .gensort, or give the format",
                    files[0].display()
                ))
            })?,
        };
        let schema = match schema {
            Some(s) => s,
            None => riffle_formats::infer_schema(&format, &files)?,
        };
        let schema = crate::types::storage_schema(&schema);
        let morsels = riffle_formats::plan_morsels(&format, &files)?;
        let data = TableData::Files { format, files, morsels, root, pattern: path.to_string(), monitor: None, idle_timeout: None, replay: false };
        Ok(TableSource { schema, data, event_time: None, stats: Default::default() })
    }

    pub fn generated(records: u64, generator: riffle_formats::gensort::RecordGenerator) -> TableSource {
        TableSource { schema: riffle_formats::gensort::schema(), data: TableData::Generated { records, generator }, event_time: None, stats: Default::default() }
    }

    /// Rows held in memory; columns not in Riffle's storage types (a narrow decimal in 128 bits) are
    /// converted once here.
    pub fn memory(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<TableSource> {
        let stored = crate::types::storage_schema(&schema);
        let batches = if stored == schema {
            batches
        } else {
            batches
                .iter()
                .map(|b| {
                    let columns = b
                        .columns()
                        .iter()
                        .zip(stored.fields())
                        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    Ok(RecordBatch::try_new(stored.clone(), columns)?)
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(TableSource { schema: stored, data: TableData::Memory(batches), event_time: None, stats: Default::default() })
    }
}

impl TableSource {
    /// Nexmark's `table`; with `declared` columns, those of its columns (by name, in that order).
    pub fn nexmark(
        config: NexmarkConfig,
        table: NexmarkTable,
        events: Option<u64>,
        paced: bool,
        declared: Option<SchemaRef>,
    ) -> Result<TableSource> {
        let all = table.schema();
        let (schema, columns) = match declared {
            None => (all.clone(), (0..all.fields().len()).collect()),
            Some(d) => {
                let columns = d
                    .fields()
                    .iter()
                    .map(|f| {
                        // `date_time` (the Nexmark repo's name) is `dateTime` (Beam's), and so on.
                        let plain = |n: &str| n.replace('_', "").to_ascii_lowercase();
                        all.fields().iter().position(|a| plain(a.name()) == plain(f.name())).ok_or_else(|| {
                            let names: Vec<&str> = all.fields().iter().map(|a| a.name().as_str()).collect();
                            RiffleError::plan(format!("the nexmark {table:?} table has no column '{}' (it has {})", f.name(), names.join(", ")))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                (crate::types::storage_schema(&d), columns)
            }
        };
        Ok(TableSource { schema, data: TableData::Nexmark { config, table, events, columns, paced }, event_time: None, stats: Default::default() })
    }

    /// Whether reading the table never ends.
    pub fn unbounded(&self) -> bool {
        matches!(self.data, TableData::Nexmark { events: None, .. } | TableData::Files { monitor: Some(_), .. })
    }

    /// A file table read without end: its files, and every `interval` those that appeared since.
    pub fn monitored(mut self, interval: std::time::Duration) -> TableSource {
        if let TableData::Files { monitor, .. } = &mut self.data {
            *monitor = Some(interval);
        }
        self
    }

    /// A file table replayed in event time: read as a stream, a batch is handed out once the wall
    /// clock has run from the start as far as event time runs from the earliest row to the batch's
    /// last (a recorded stream played back as it happened, e.g. to measure latency on a bid file).
    pub fn replayed(mut self) -> TableSource {
        if let TableData::Files { replay, .. } = &mut self.data {
            *replay = true;
        }
        self
    }

    /// A monitored file table that says it is idle once no new rows came for `timeout`.
    pub fn idle_after(mut self, timeout: Option<std::time::Duration>) -> TableSource {
        if let TableData::Files { idle_timeout, .. } = &mut self.data {
            *idle_timeout = timeout;
        }
        self
    }

    /// How long a table without end may send nothing before its scan says it is idle: its own
    /// option, else the session's (`default`).
    pub fn idle_timeout(&self, default: Option<std::time::Duration>) -> Option<std::time::Duration> {
        match &self.data {
            TableData::Files { monitor: Some(_), idle_timeout, .. } => idle_timeout.or(default),
            _ => None,
        }
    }

    /// Whether its rows are a changelog (a `debezium-json` table): read, they carry their row kinds in
    /// a last `op` column.
    pub fn changelog(&self) -> bool {
        matches!(&self.data, TableData::Files { format, .. } if format.is_changelog())
    }

    pub fn with_event_time(self, event_time: Option<EventTime>) -> TableSource {
        TableSource { event_time, ..self }
    }
}

#[derive(Debug, Clone)]
pub enum CatalogEntry {
    Table(Arc<TableSource>),
    /// A view is kept as SQL and bound where it is used.
    View(Box<sqlparser::ast::Query>),
}

#[derive(Debug, Default, Clone)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    pub fn register(&mut self, name: &str, entry: CatalogEntry) {
        self.entries.insert(name.to_ascii_lowercase(), entry);
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(&name.to_ascii_lowercase())
    }

    pub fn remove(&mut self, name: &str) -> Option<CatalogEntry> {
        self.entries.remove(&name.to_ascii_lowercase())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(&name.to_ascii_lowercase())
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    /// The error for an unknown table, with the closest known name.
    pub fn unknown(&self, name: &str) -> String {
        match closest(name, self.names()) {
            Some(c) => format!("table '{name}' does not exist; did you mean '{c}'?"),
            None => format!("table '{name}' does not exist"),
        }
    }
}
