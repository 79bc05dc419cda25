//! A session: a catalog plus settings; runs SQL statements (queries, EXPLAIN, DDL, COPY).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use riffle_formats::{CsvOptions, FileFormat};
use sqlparser::ast;
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::{Parser, ParserError};

use crate::catalog::{Catalog, CatalogEntry, EventTime, TableSource};
use crate::error::{sql_error, Result, RiffleError};
use crate::exec::{execute, ExecConfig, QueryStats};
use crate::logical::LogicalPlan;
use crate::optimizer::optimize;
use crate::physical::{plan_physical, PhysicalPlan};
use crate::sql::flink::WatermarkClause;
use crate::sql::Binder;
use crate::types::{parse_sql_type, sql_name};

/// What a statement returned: rows (possibly none) under a schema.
#[derive(Debug, Clone)]
pub struct StatementResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Whether the statement is a query (its rows are the answer) rather than a command.
    pub is_query: bool,
    /// Memory and spilling of the query the statement ran, if it ran one.
    pub stats: QueryStats,
}

impl StatementResult {
    fn command() -> StatementResult {
        StatementResult { schema: Arc::new(Schema::empty()), batches: vec![], is_query: false, stats: QueryStats::default() }
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// Takes each batch of a streamed query's rows, with their schema, as it is produced.
pub type RowSink = Arc<dyn Fn(&SchemaRef, &RecordBatch) -> Result<()> + Send + Sync>;

pub struct Session {
    pub catalog: Catalog,
    pub config: ExecConfig,
    /// Checkpoints of a streaming `INSERT INTO` (with `config.stream`): where and how often.
    pub checkpoint: Option<crate::exec::checkpoint::CheckpointConfig>,
}

impl Default for Session {
    fn default() -> Self {
        Session::new(ExecConfig::default())
    }
}

/// Parses SQL text into statements, turning parser errors into positioned errors.
pub fn parse_sql(sql: &str) -> Result<Vec<ast::Statement>> {
    Ok(parse_statements(sql)?.into_iter().map(|(s, _)| s).collect())
}

/// Parses SQL text, Flink's `WATERMARK FOR` clauses included: each statement with the watermark
/// clauses of its `CREATE TABLE`.
pub fn parse_statements(sql: &str) -> Result<Vec<(ast::Statement, Vec<WatermarkClause>)>> {
    let (text, mut watermarks) = crate::sql::flink::rewrite(sql).map_err(|e| e.with_sql(sql))?;
    let statements = parse_rewritten(&text).map_err(|e| e.with_sql(sql))?;
    Ok(statements
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let (mine, rest) = watermarks.drain(..).partition(|w| w.statement == i);
            watermarks = rest;
            (s, mine)
        })
        .collect())
}

fn parse_rewritten(sql: &str) -> Result<Vec<ast::Statement>> {
    Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| {
        let message = match &e {
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
            other => other.to_string(),
        };
        // sqlparser reports "… at Line: 1, Column: 10"; point there.
        let position = message.rfind("Line: ").and_then(|i| {
            let rest = &message[i + 6..];
            let (line, rest) = rest.split_once(", Column: ")?;
            let col: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            Some((line.trim().parse().ok()?, col.parse().ok()?))
        });
        let clean = match message.rfind(" at Line: ") {
            Some(i) => message[..i].to_string(),
            None => message,
        };
        sql_error(format!("syntax error: {clean}"), position)
    })
}

impl Session {
    pub fn new(config: ExecConfig) -> Session {
        Session { catalog: Catalog::default(), config, checkpoint: None }
    }

    /// Registers the files at `path` (a file, directory or glob) as table `name`.
    pub fn register_path(&mut self, name: &str, path: &str) -> Result<()> {
        let source = TableSource::files(path, None, None)?;
        self.catalog.register(name, CatalogEntry::Table(Arc::new(source)));
        Ok(())
    }

    /// Registers every `dir/<name>.parquet` file and every `dir/<name>/` directory of Parquet files
    /// (a table made in parts) as table `name`, as benchmark data directories hold them.
    pub fn register_parquet_dir(&mut self, dir: &std::path::Path) -> Result<()> {
        let cannot_list = |e: std::io::Error| RiffleError::exec(format!("cannot list {}: {e}", dir.display()));
        let is_parquet = |p: &std::path::Path| p.extension().is_some_and(|e| e == "parquet");
        for entry in std::fs::read_dir(dir).map_err(cannot_list)? {
            let path = entry.map_err(cannot_list)?.path();
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            let is_table = (path.is_file() && is_parquet(&path))
                || (path.is_dir() && std::fs::read_dir(&path).map_err(cannot_list)?.flatten().any(|f| is_parquet(&f.path())));
            if is_table {
                self.register_path(name, &path.to_string_lossy())?;
            }
        }
        Ok(())
    }

    /// Runs every statement of `sql`, returning each one's result.
    pub fn execute(&mut self, sql: &str) -> Result<Vec<StatementResult>> {
        let statements = parse_statements(sql)?;
        statements.iter().map(|(s, w)| self.run_with_watermarks(s, w).map_err(|e| e.with_sql(sql))).collect()
    }

    /// Like [`Session::execute`], but the rows of a query that never ends (it reads a table without
    /// end) go to `rows` batch by batch as they are produced, and its result holds none: a stream's
    /// answer, shown while the query runs.
    pub fn execute_streaming(&mut self, sql: &str, rows: RowSink) -> Result<Vec<StatementResult>> {
        let mut results = Vec::new();
        self.execute_streaming_each(sql, rows, &mut |r| {
            results.push(r);
            Ok(())
        })?;
        Ok(results)
    }

    /// Like `execute_streaming`, handing each statement's result to `each` as soon as the statement
    /// is done (so that what a script prints comes in the order of its statements).
    pub fn execute_streaming_each(&mut self, sql: &str, rows: RowSink, each: &mut dyn FnMut(StatementResult) -> Result<()>) -> Result<()> {
        let statements = parse_statements(sql)?;
        for (stmt, watermarks) in &statements {
            let result = match stmt {
                ast::Statement::Query(q) if watermarks.is_empty() => self.stream_query(q, &rows),
                other => self.run_with_watermarks(other, watermarks),
            };
            each(result.map_err(|e| e.with_sql(sql))?)?;
        }
        Ok(())
    }

    fn stream_query(&self, q: &ast::Query, rows: &RowSink) -> Result<StatementResult> {
        let (_, physical) = self.plan_updates(q)?;
        let changelog = physical.changelog();
        if !physical.unbounded() && !changelog {
            let out = execute(&physical, &self.config)?;
            return Ok(StatementResult { schema: physical.schema(), batches: out.batches, is_query: true, stats: out.stats });
        }
        // A changelog shows each row's kind first, as Flink's SQL client does.
        let sink = rows.clone();
        let stats = crate::exec::execute_into(
            &physical,
            &self.config,
            Arc::new(move |_, msg| match msg {
                crate::Message::Batch(b) if changelog => {
                    let shown = crate::changelog::for_display(&b)?;
                    sink(&shown.schema(), &shown)
                }
                crate::Message::Batch(b) => sink(&b.schema(), &b),
                _ => Ok(()),
            }),
        )?;
        // The rows went to `rows`; nothing is left to show.
        Ok(StatementResult { schema: Arc::new(Schema::empty()), batches: vec![], is_query: false, stats })
    }

    /// Runs `sql`, which must hold one statement, and returns its result.
    pub fn sql(&mut self, sql: &str) -> Result<StatementResult> {
        let mut results = self.execute(sql)?;
        match results.len() {
            1 => Ok(results.remove(0)),
            n => Err(RiffleError::plan(format!("expected one statement, got {n}"))),
        }
    }

    /// The query's plans; its result are final rows, unless they never end (a changelog then).
    pub fn plan_query(&self, q: &ast::Query) -> Result<(LogicalPlan, PhysicalPlan)> {
        let (plan, physical) = self.plan_updates(q)?;
        let physical = if physical.unbounded() { physical } else { crate::changelog::final_rows(physical, "a query's result")? };
        Ok((plan, physical))
    }

    /// The query's plans; run as a stream, its result may be a changelog (`crate::changelog`).
    fn plan_updates(&self, q: &ast::Query) -> Result<(LogicalPlan, PhysicalPlan)> {
        let mut binder = Binder::new(&self.catalog);
        let (plan, _) = binder.bind_query(q)?;
        let plan = optimize(plan)?;
        let mut physical = plan_physical(&plan)?;
        let checkpointed = self.config.stream && self.checkpoint.is_some();
        if self.config.stream {
            // Flink's streaming mode joins every input as a stream. A checkpointed job keeps a hash
            // join whose build side ends: that side is not in its checkpoints but computed again when
            // the job restarts (exec::build), and the probe side streams through it.
            physical = crate::physical::plan_stream_joins(physical, self.config.changelog);
            physical = crate::physical::plan_session_aggregates(physical);
            // A checkpointed job's GROUP BYs update, as in Flink (a hash aggregate's table would not
            // be restored).
            physical = crate::changelog::plan(physical, self.config.changelog || checkpointed)?;
        }
        let physical = crate::share::share_subplans(physical);
        let physical = if checkpointed { crate::share::checkpointable_joins(physical) } else { physical };
        Ok((plan, crate::physical::dictionary_join_outputs(physical)))
    }

    fn run_query(&self, q: &ast::Query) -> Result<StatementResult> {
        let (_, physical) = self.plan_query(q)?;
        let out = execute(&physical, &self.config)?;
        Ok(StatementResult { schema: physical.schema(), batches: out.batches, is_query: true, stats: out.stats })
    }

    pub fn run_statement(&mut self, stmt: &ast::Statement) -> Result<StatementResult> {
        self.run_with_watermarks(stmt, &[])
    }

    fn run_with_watermarks(&mut self, stmt: &ast::Statement, watermarks: &[WatermarkClause]) -> Result<StatementResult> {
        if !watermarks.is_empty() && !matches!(stmt, ast::Statement::CreateTable(_)) {
            return Err(sql_error("WATERMARK FOR belongs in the column list of CREATE TABLE", Some(watermarks[0].position)));
        }
        match stmt {
            ast::Statement::Query(q) => self.run_query(q),
            ast::Statement::Explain { statement, analyze, .. } => {
                let ast::Statement::Query(q) = statement.as_ref() else {
                    return Err(RiffleError::NotSupported("EXPLAIN of a statement other than a query".into()));
                };
                self.explain(q, *analyze)
            }
            ast::Statement::CreateTable(ct) => self.create_table(ct, watermarks),
            ast::Statement::CreateView(cv) => {
                let name = cv.name.to_string();
                if self.catalog.contains(&name) && !cv.or_replace && !cv.if_not_exists {
                    return Err(RiffleError::plan(format!("'{name}' already exists; use CREATE OR REPLACE VIEW")));
                }
                // Bind now so that a broken view fails at creation, not at first use.
                self.plan_query(&cv.query)?;
                if !(cv.if_not_exists && self.catalog.contains(&name)) {
                    self.catalog.register(&name, CatalogEntry::View(cv.query.clone()));
                }
                Ok(StatementResult::command())
            }
            ast::Statement::Drop { names, if_exists, .. } => {
                for n in names {
                    let n = n.to_string();
                    if self.catalog.remove(&n).is_none() && !*if_exists {
                        return Err(RiffleError::plan(self.catalog.unknown(&n)));
                    }
                }
                Ok(StatementResult::command())
            }
            ast::Statement::Copy { source, to: true, target, options, legacy_options, .. } => {
                self.copy(source, target, options, legacy_options)
            }
            ast::Statement::Insert(ins) => self.insert(ins),
            ast::Statement::Set(ast::Set::SingleAssignment { variable, values, .. }) => {
                let key = variable.to_string().trim_matches(|c| c == '\'' || c == '"' || c == '`').to_string();
                let value = match values.as_slice() {
                    [ast::Expr::Value(v)] => match &v.value {
                        ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    [other] => other.to_string(),
                    _ => return Err(RiffleError::plan(format!("SET '{key}' takes one value: SET '{key}' = '…'"))),
                };
                self.set_option(&key, &value)?;
                Ok(StatementResult::command())
            }
            other => Err(RiffleError::NotSupported(format!("statement {}", first_words(&other.to_string())))),
        }
    }

    /// Flink's `SET 'key' = 'value'` for the options Riffle has: `table.exec.state.ttl` (how long a
    /// regular stream join keeps a row; `0` keeps them all), `table.exec.source.idle-timeout` (how long
    /// a table without end may send no rows before the operators combining it with others stop
    /// waiting for its watermark; `0`: never), `execution.runtime-mode` (`streaming` or
    /// `batch`, as `--stream`); Flink SQL client display options (`sql-client.*`) are accepted and
    /// have no effect.
    fn set_option(&mut self, key: &str, value: &str) -> Result<()> {
        match key {
            "table.exec.state.ttl" => {
                self.config.state_ttl = optional_flink_duration(value).map_err(|e| RiffleError::plan(format!("SET '{key}': {e}")))?;
            }
            "table.exec.source.idle-timeout" => {
                self.config.source_idle_timeout = optional_flink_duration(value).map_err(|e| RiffleError::plan(format!("SET '{key}': {e}")))?;
            }
            "execution.runtime-mode" => {
                self.config.stream = match value.to_ascii_lowercase().as_str() {
                    "streaming" => true,
                    "batch" => false,
                    other => return Err(RiffleError::plan(format!("SET '{key}': '{other}' is neither 'streaming' nor 'batch'"))),
                }
            }
            k if k.starts_with("sql-client.") => {}
            other => {
                return Err(RiffleError::NotSupported(format!(
                    "SET '{other}': the options Riffle has are 'table.exec.state.ttl', 'table.exec.source.idle-timeout' and 'execution.runtime-mode' \
                     (and Flink SQL client display options, 'sql-client.*', which change nothing here)"
                )))
            }
        }
        Ok(())
    }

    fn explain(&self, q: &ast::Query, analyze: bool) -> Result<StatementResult> {
        let (logical, physical) = crate::physical::with_estimates(|| self.plan_query(q))?;
        let text = if analyze {
            let started = Instant::now();
            let out = execute(&physical, &self.config)?;
            let elapsed = started.elapsed();
            let rows: usize = out.batches.iter().map(|b| b.num_rows()).sum();
            let metrics = out.metrics;
            format!(
                "{}\nTotal: {rows} rows in {:.3} ms ({} threads)",
                physical.display_indent(self.config.stream, &|id| metrics.get(id).map(|m| m.summary()).unwrap_or_default()).trim_end(),
                elapsed.as_secs_f64() * 1e3,
                self.config.threads
            )
        } else {
            // Run as a stream, each operator says how it streams and what state it holds.
            let notes = if self.config.stream { physical.stream_notes() } else { vec![] };
            format!(
                "Logical plan:\n{}\nPhysical plan:\n{}",
                logical.display_indent().trim_end(),
                physical.display_indent(self.config.stream, &|id| notes.get(id).map(|n| format!("  [{n}]")).unwrap_or_default()).trim_end()
            )
        };
        let schema = Arc::new(Schema::new(vec![Field::new("plan", DataType::Utf8, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(StringArray::from(vec![text]))])?;
        Ok(StatementResult { schema, batches: vec![batch], is_query: true, stats: QueryStats::default() })
    }

    fn create_table(&mut self, ct: &ast::CreateTable, watermarks: &[WatermarkClause]) -> Result<StatementResult> {
        let name = ct.name.to_string();
        if self.catalog.contains(&name) {
            if ct.if_not_exists {
                return Ok(StatementResult::command());
            }
            if !ct.or_replace {
                return Err(RiffleError::plan(format!("table '{name}' already exists; use CREATE OR REPLACE TABLE")));
            }
        }
        let declared: Option<SchemaRef> = if ct.columns.is_empty() {
            None
        } else {
            let fields = ct
                .columns
                .iter()
                .map(|c| {
                    let not_null = c.options.iter().any(|o| matches!(o.option, ast::ColumnOption::NotNull));
                    Ok(Field::new(&c.name.value, parse_sql_type(&c.data_type.to_string())?, !not_null))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(Arc::new(Schema::new(fields)))
        };
        let options = table_options(&ct.table_options)?;
        let source = if let Some(q) = &ct.query {
            let result = self.run_query(q)?;
            TableSource::memory(result.schema, result.batches)?
        } else if options.is_empty() {
            let schema = declared.ok_or_else(|| RiffleError::plan("CREATE TABLE needs columns, AS query, or WITH options"))?;
            TableSource::memory(schema, vec![])?
        } else {
            connector_table(&options, declared)?
        };
        let event_time = match watermarks {
            [] => None,
            [w] => Some(self.event_time(&source.schema, w)?),
            [_, second, ..] => return Err(sql_error("a table has at most one WATERMARK FOR clause", Some(second.position))),
        };
        let source = source.with_event_time(event_time);
        self.catalog.register(&name, CatalogEntry::Table(Arc::new(source)));
        Ok(StatementResult::command())
    }

    /// Binds `WATERMARK FOR column AS expr` against the table's columns.
    fn event_time(&self, schema: &SchemaRef, w: &WatermarkClause) -> Result<EventTime> {
        let at = Some(w.position);
        let column = schema.fields().iter().position(|f| f.name().eq_ignore_ascii_case(&w.column)).ok_or_else(|| {
            sql_error(format!("WATERMARK FOR '{}': the table has no such column", w.column), at)
        })?;
        if !matches!(schema.field(column).data_type(), DataType::Timestamp(..)) {
            return Err(sql_error(
                format!("WATERMARK FOR '{}': the event-time column must be a TIMESTAMP, not {}", w.column, sql_name(schema.field(column).data_type())),
                at,
            ));
        }
        let parsed = Parser::new(&GenericDialect {})
            .try_with_sql(&w.expr)
            .and_then(|mut p| p.parse_expr())
            .map_err(|e| sql_error(format!("WATERMARK FOR '{}': cannot parse '{}': {e}", w.column, w.expr), at))?;
        let scope = crate::sql::Scope::from_schema(schema, None);
        let watermark = Binder::new(&self.catalog).bind_expr(&parsed, &mut crate::sql::ExprContext { scope: &scope, aggs: None })?;
        let ty = watermark.data_type(schema);
        if !matches!(ty, DataType::Timestamp(..)) {
            return Err(sql_error(format!("WATERMARK FOR '{}': the watermark '{}' must be a TIMESTAMP, not {}", w.column, w.expr, sql_name(&ty)), at));
        }
        Ok(EventTime { column, watermark, text: w.expr.clone() })
    }

    fn insert(&mut self, ins: &ast::Insert) -> Result<StatementResult> {
        let name = ins.table.to_string();
        let Some(CatalogEntry::Table(table)) = self.catalog.get(&name).cloned() else {
            return Err(RiffleError::plan(self.catalog.unknown(&name)));
        };
        let q = ins.source.as_ref().ok_or_else(|| RiffleError::plan("INSERT needs VALUES or a query"))?;
        let existing = match &table.data {
            crate::catalog::TableData::Memory(existing) => existing,
            crate::catalog::TableData::Files { format, root: Some(dir), .. } => {
                let (format, dir) = (format.clone(), dir.clone());
                return self.insert_files(&name, &table, &format, &dir, q, !ins.columns.is_empty());
            }
            crate::catalog::TableData::Blackhole => return self.insert_blackhole(&name, &table, q),
            _ => return Err(RiffleError::NotSupported(format!("INSERT into '{name}': only tables in memory and directory tables take rows"))),
        };
        let result = self.run_query(q)?;
        let target = table.schema.clone();
        if result.schema.fields().len() != target.fields().len() || !ins.columns.is_empty() {
            return Err(RiffleError::plan(format!(
                "INSERT into '{name}' must give all {} columns in order",
                target.fields().len()
            )));
        }
        let mut batches = existing.clone();
        for b in result.batches {
            let cols = b
                .columns()
                .iter()
                .zip(target.fields())
                .map(|(c, f)| crate::eval::cast_value(c, f.data_type(), &Default::default()))
                .collect::<Result<Vec<_>>>()?;
            batches.push(RecordBatch::try_new_with_options(
                target.clone(),
                cols,
                &arrow::array::RecordBatchOptions::new().with_row_count(Some(b.num_rows())),
            )?);
        }
        let source = TableSource::memory(target, batches)?.with_event_time(table.event_time.clone());
        self.catalog.register(&name, CatalogEntry::Table(Arc::new(source)));
        Ok(StatementResult::command())
    }

    /// `INSERT INTO` a blackhole table: the query runs (checkpointed if configured) and its rows are
    /// counted.
    fn insert_blackhole(&mut self, name: &str, table: &Arc<TableSource>, q: &ast::Query) -> Result<StatementResult> {
        let (_, physical) = self.plan_updates(q)?;
        // A blackhole takes a changelog's rows as they come; their row kind is not a column.
        let width = physical.schema().fields().len() - usize::from(physical.changelog());
        if width != table.schema.fields().len() {
            return Err(RiffleError::plan(format!("INSERT into '{name}' must give all {} columns in order", table.schema.fields().len())));
        }
        let coordinator = match (&self.checkpoint, self.config.stream) {
            (Some(c), true) => {
                physical.check_checkpointable()?;
                Some(crate::exec::checkpoint::Coordinator::open(c)?)
            }
            _ => None,
        };
        let rows = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = rows.clone();
        let config = ExecConfig { checkpoint: coordinator.clone(), ..self.config.clone() };
        let stats = crate::exec::execute_into(
            &physical,
            &config,
            Arc::new(move |_, msg| {
                if let crate::Message::Batch(b) = msg {
                    counted.fetch_add(b.num_rows() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }),
        )?;
        if let Some(c) = coordinator {
            c.finish()?;
        }
        let schema = Arc::new(Schema::new(vec![Field::new("rows", DataType::Int64, false)]));
        let n = rows.load(std::sync::atomic::Ordering::Relaxed) as i64;
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::Int64Array::from(vec![n]))])?;
        Ok(StatementResult { schema, batches: vec![batch], is_query: false, stats })
    }

    /// `INSERT INTO` a directory table: the query's rows go to new files in the directory, made
    /// visible only when the query succeeded, or, run as a stream with checkpoints, each checkpoint's
    /// rows once the checkpoint is complete (exactly once across crashes and restarts).
    fn insert_files(
        &mut self,
        name: &str,
        table: &Arc<TableSource>,
        format: &FileFormat,
        dir: &Path,
        q: &ast::Query,
        named_columns: bool,
    ) -> Result<StatementResult> {
        // Files of changes take a changelog as it comes; others the final rows, which a changelog
        // has only at its end (and a checkpointed job's cannot be restored).
        let (_, mut physical) = self.plan_updates(q)?;
        let checkpointed = self.checkpoint.is_some() && self.config.stream;
        if physical.changelog() && !format.is_changelog() && !physical.unbounded() && !checkpointed {
            physical = crate::changelog::final_rows(physical, "a query's result")?;
        }
        let changelog = physical.changelog();
        if changelog && !format.is_changelog() {
            return Err(RiffleError::NotSupported(format!(
                "INSERT into the filesystem table '{name}' of an updating result: {} files take appended rows only, \
                 and this query's GROUP BY emits each group's row again as it changes. Declare the table with \
                 'format' = 'debezium-json' (files of changes, as Flink writes them), or group by an event-time window \
                 (TUMBLE, HOP, CUMULATE): its rows are final once emitted",
                format.name()
            )));
        }
        let target = table.schema.clone();
        let have = physical.schema();
        let width = have.fields().len() - usize::from(changelog);
        if width != target.fields().len() || named_columns {
            return Err(RiffleError::plan(format!("INSERT into '{name}' must give all {} columns in order", target.fields().len())));
        }
        // The rows in the table's own types (and a changelog table's row kinds: appended rows are inserts).
        let mut exprs = have
            .fields()
            .iter()
            .zip(target.fields())
            .enumerate()
            .map(|(i, (h, t))| crate::sql::cast_to(crate::logical::Expr::Column(i), h.data_type(), t.data_type()))
            .collect::<Result<Vec<_>>>()?;
        let mut written = target.clone();
        if format.is_changelog() {
            written = crate::changelog::with_op(&target);
            exprs.push(crate::logical::Expr::Column(width));
        }
        let input = if format.is_changelog() && !changelog { crate::changelog::inserts(physical) } else { physical };
        let physical = PhysicalPlan::Project { input: Box::new(input), exprs, schema: written.clone() };
        let coordinator = match (&self.checkpoint, self.config.stream) {
            (Some(c), true) => {
                physical.check_checkpointable()?;
                Some(crate::exec::checkpoint::Coordinator::open(c)?)
            }
            _ => None,
        };
        // The writers get an eighth of the memory limit, as COPY's does (`copy_query`).
        let writer_buffer = self.config.memory_limit / 8 / self.config.threads.max(1);
        let sink = crate::exec::file_sink::FileSinkShared::new(dir, format.clone(), written, coordinator.clone(), writer_buffer)?;
        let finished = coordinator.as_ref().is_some_and(|c| c.finished);
        let stats = if finished {
            // An earlier run completed the job; its files are all committed now.
            QueryStats::default()
        } else {
            let config = ExecConfig { checkpoint: coordinator.clone(), ..self.config.clone() };
            match crate::exec::execute_with_sinks(&physical, &config, &|p| sink.partition(p)) {
                Ok(stats) => stats,
                Err(e) => {
                    // Checkpointed files stay for the restart to commit or delete.
                    if coordinator.is_none() {
                        sink.abort();
                    }
                    return Err(e);
                }
            }
        };
        match &coordinator {
            Some(c) if !finished => c.finish()?,
            Some(_) => {}
            None => sink.commit(u64::MAX)?,
        }
        let path = dir.to_string_lossy();
        let mut source = TableSource::files(&path, Some(format.clone()), Some(target))?.with_event_time(table.event_time.clone());
        if let crate::catalog::TableData::Files { monitor, idle_timeout, .. } = &table.data {
            if let Some(interval) = monitor {
                source = source.monitored(*interval);
            }
            source = source.idle_after(*idle_timeout);
        }
        self.catalog.register(name, CatalogEntry::Table(Arc::new(source)));
        let schema = Arc::new(Schema::new(vec![Field::new("rows", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::Int64Array::from(vec![sink.rows() as i64]))])?;
        Ok(StatementResult { schema, batches: vec![batch], is_query: false, stats })
    }

    fn copy(
        &mut self,
        source: &ast::CopySource,
        target: &ast::CopyTarget,
        options: &[ast::CopyOption],
        legacy: &[ast::CopyLegacyOption],
    ) -> Result<StatementResult> {
        let ast::CopyTarget::File { filename } = target else {
            return Err(RiffleError::NotSupported("COPY to anything but a file".into()));
        };
        let path = Path::new(filename);
        let mut format = FileFormat::from_path(path);
        let mut csv = CsvOptions::default();
        for o in options {
            match o {
                ast::CopyOption::Format(f) => {
                    format = Some(FileFormat::from_name(&f.value).ok_or_else(|| {
                        RiffleError::plan(format!("unknown COPY format '{}' (use parquet, csv, json, arrow, gensort or debezium-json)", f.value))
                    })?)
                }
                ast::CopyOption::Header(h) => csv.header = *h,
                ast::CopyOption::Delimiter(d) => csv.delimiter = *d as u8,
                ast::CopyOption::Quote(q) => csv.quote = *q as u8,
                other => return Err(RiffleError::NotSupported(format!("COPY option {other}"))),
            }
        }
        for o in legacy {
            match o {
                ast::CopyLegacyOption::Header => csv.header = true,
                ast::CopyLegacyOption::Delimiter(d) => csv.delimiter = *d as u8,
                ast::CopyLegacyOption::Csv(_) => format = Some(FileFormat::Csv(csv.clone())),
                other => return Err(RiffleError::NotSupported(format!("COPY option {other}"))),
            }
        }
        let format = match format {
            Some(FileFormat::Csv(_)) => FileFormat::Csv(csv),
            Some(f) => f,
            None => return Err(RiffleError::plan(format!("cannot tell the format of '{filename}': add (FORMAT parquet|csv|json|arrow)"))),
        };
        let query = match source {
            ast::CopySource::Query(q) => q.clone(),
            ast::CopySource::Table { table_name, .. } => match parse_sql(&format!("SELECT * FROM {table_name}"))?.pop() {
                Some(ast::Statement::Query(q)) => q,
                _ => return Err(RiffleError::plan(format!("cannot copy from '{table_name}'"))),
            },
        };
        let (rows, stats) = self.copy_query(&query, &format, path)?;
        let schema = Arc::new(Schema::new(vec![Field::new("rows", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(arrow::array::Int64Array::from(vec![rows as i64]))])?;
        Ok(StatementResult { schema, batches: vec![batch], is_query: false, stats })
    }
}

impl Session {
    /// Binds, optimizes and plans `sql`, which must be one query.
    pub fn plan_sql(&self, sql: &str) -> Result<(LogicalPlan, PhysicalPlan)> {
        self.plan_query(&*single_query(sql)?).map_err(|e| e.with_sql(sql))
    }

    /// [`Session::copy_query`] of the query `sql`.
    pub fn copy_sql(&self, sql: &str, format: &FileFormat, path: &Path) -> Result<(usize, QueryStats)> {
        self.copy_query(&*single_query(sql)?, format, path).map_err(|e| e.with_sql(sql))
    }

    /// Runs `query`, streaming its rows into `path` as they come (staged, then renamed); returns the
    /// row count. On error nothing is left at `path`.
    pub fn copy_query(&self, query: &ast::Query, format: &FileFormat, path: &Path) -> Result<(usize, QueryStats)> {
        let (_, mut physical) = self.plan_query(query)?;
        if format.is_changelog() {
            // A file of changes: the query's final rows, each an insert.
            physical = crate::changelog::inserts(physical);
        }
        let writer = riffle_formats::AtomicWriter::create(format, path, &physical.schema())?.with_buffer_limit(self.config.memory_limit / 8);
        let state = Arc::new(std::sync::Mutex::new((Some(writer), 0usize)));
        let sink_state = state.clone();
        let stats = crate::exec::execute_into(
            &physical,
            &self.config,
            Arc::new(move |_, msg| {
                if let crate::Message::Batch(b) = msg {
                    let mut st = sink_state.lock().map_err(|_| RiffleError::exec("COPY writer lock poisoned"))?;
                    st.1 += b.num_rows();
                    if let Some(w) = st.0.as_mut() {
                        w.write(&b)?;
                    }
                }
                Ok(())
            }),
        )?;
        let mut st = state.lock().map_err(|_| RiffleError::exec("COPY writer lock poisoned"))?;
        let rows = st.1;
        if let Some(w) = st.0.take() {
            w.finish()?;
        }
        Ok((rows, stats))
    }
}

fn single_query(sql: &str) -> Result<Box<ast::Query>> {
    let mut statements = parse_sql(sql)?;
    match (statements.pop(), statements.is_empty()) {
        (Some(ast::Statement::Query(q)), true) => Ok(q),
        _ => Err(RiffleError::plan("expected exactly one query (SELECT …)")),
    }
}

/// A duration as Flink writes its options: a number and a unit (`ms` when none): `500 ms`, `30 s`,
/// `5 min`, `1 h`, `1 d` (and the units' long names).
fn parse_flink_duration(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let n: u64 = number.parse().map_err(|_| format!("'{text}' is not a duration (e.g. '1 h', '30 min', '500 ms')"))?;
    let millis_per = match unit {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        other => return Err(format!("'{other}' in '{text}' is not a unit of time (ms, s, min, h, d)")),
    };
    n.checked_mul(millis_per).map(std::time::Duration::from_millis).ok_or_else(|| format!("'{text}' is too long"))
}

/// A Flink duration option where `0` turns the feature off (`None`).
fn optional_flink_duration(text: &str) -> std::result::Result<Option<std::time::Duration>, String> {
    parse_flink_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// `WITH ('key' = 'value', …)` as lower-cased keys and raw values.
fn table_options(opts: &ast::CreateTableOptions) -> Result<Vec<(String, String)>> {
    let list = match opts {
        ast::CreateTableOptions::None => return Ok(vec![]),
        ast::CreateTableOptions::With(l)
        | ast::CreateTableOptions::Options(l)
        | ast::CreateTableOptions::Plain(l)
        | ast::CreateTableOptions::TableProperties(l) => l,
    };
    list.iter()
        .map(|o| match o {
            ast::SqlOption::KeyValue { key, value } => {
                let key = key.to_string().trim_matches(['\'', '"', '`']).to_ascii_lowercase();
                let value = match value {
                    ast::Expr::Value(v) => match &v.value {
                        ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
                        other => other.to_string(),
                    },
                    other => other.to_string(),
                };
                Ok((key, value))
            }
            other => Err(RiffleError::NotSupported(format!("table option {other}"))),
        })
        .collect()
}

/// A table from Flink-style connector options.
fn connector_table(options: &[(String, String)], declared: Option<SchemaRef>) -> Result<TableSource> {
    let get = |k: &str| options.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let connector = get("connector").ok_or_else(|| RiffleError::plan("WITH options need 'connector' (e.g. 'filesystem')"))?;
    match connector {
        "filesystem" => {
            let path = get("path").ok_or_else(|| RiffleError::plan("the filesystem connector needs 'path'"))?;
            let format = match get("format") {
                Some("csv") => {
                    // Flink's csv format has no header line.
                    let mut o = CsvOptions { header: false, ..CsvOptions::default() };
                    if let Some(d) = get("csv.field-delimiter") {
                        o.delimiter = crate::sql::single_byte(d, "csv.field-delimiter")?;
                    }
                    if let Some(q) = get("csv.quote-character") {
                        o.quote = crate::sql::single_byte(q, "csv.quote-character")?;
                    }
                    Some(FileFormat::Csv(o))
                }
                Some(f) => Some(FileFormat::from_name(f).ok_or_else(|| {
                    RiffleError::plan(format!("unknown format '{f}' (use parquet, csv, json, debezium-json or arrow)"))
                })?),
                None => None,
            };
            if matches!(format, Some(FileFormat::Csv(_) | FileFormat::Json | FileFormat::DebeziumJson)) && declared.is_none() {
                return Err(RiffleError::plan("a csv, json or debezium-json filesystem table needs its columns declared"));
            }
            let duration = |key: &str| {
                get(key).map(optional_flink_duration).transpose().map(Option::flatten).map_err(|e| RiffleError::plan(format!("'{key}': {e}")))
            };
            let mut table = TableSource::files(path, format, declared)?;
            // Flink's option: a directory read without end, its new files picked up every interval.
            if let Some(interval) = duration("source.monitor-interval")? {
                table = table.monitored(interval);
            }
            // Ours: a recorded stream played back as its event time runs (`TableSource::replayed`).
            match get("source.replay") {
                None | Some("none") => {}
                Some("event-time") => table = table.replayed(),
                Some(other) => return Err(RiffleError::plan(format!("'source.replay' must be 'event-time' or 'none', got '{other}'"))),
            }
            Ok(table.idle_after(duration("scan.watermark.idle-timeout")?))
        }
        "nexmark" => nexmark_table(options, declared),
        "blackhole" => {
            let schema = declared.ok_or_else(|| RiffleError::plan("a blackhole table needs its columns declared"))?;
            Ok(TableSource { schema: crate::types::storage_schema(&schema), data: crate::catalog::TableData::Blackhole, event_time: None, stats: Default::default() })
        }
        other => Err(RiffleError::NotSupported(format!("connector '{other}' (supported: filesystem, nexmark, blackhole)"))),
    }
}

/// `WITH ('connector' = 'nexmark', 'table' = 'bid', 'events.num' = '1000000', …)`: Nexmark's generator
/// (options named as in Flink's Nexmark suite); without 'events.num' the table never ends.
fn nexmark_table(options: &[(String, String)], declared: Option<SchemaRef>) -> Result<TableSource> {
    use riffle_formats::nexmark::{NexmarkConfig, NexmarkTable};
    let mut config = NexmarkConfig::default();
    let mut table = None;
    let mut events = None;
    let mut paced = false;
    let number = |k: &str, v: &str| -> Result<u64> {
        v.trim().parse().map_err(|_| RiffleError::plan(format!("nexmark option '{k}' must be a whole number, got '{v}'")))
    };
    for (k, v) in options {
        match k.as_str() {
            "connector" => {}
            "table" | "nexmark.table" => {
                table = Some(NexmarkTable::parse(v).ok_or_else(|| {
                    RiffleError::plan(format!("unknown nexmark table '{v}' (use person, auction or bid)"))
                })?)
            }
            "events.num" => events = Some(number(k, v)?),
            "rate-limited" => {
                paced = match v.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(RiffleError::plan(format!("nexmark option 'rate-limited' must be 'true' or 'false', got '{v}'"))),
                }
            }
            "first-event.rate" | "next-event.rate" | "events-per-second" => config.events_per_second = number(k, v)?.max(1),
            "person.proportion" => config.person_proportion = number(k, v)?,
            "auction.proportion" => config.auction_proportion = number(k, v)?,
            "bid.proportion" => config.bid_proportion = number(k, v)?,
            "seed" => config.seed = number(k, v)?,
            "base-time" => {
                let parsed = arrow::compute::cast(
                    &arrow::array::StringArray::from(vec![v.as_str()]),
                    &DataType::Timestamp(arrow::datatypes::TimeUnit::Microsecond, None),
                )
                .ok()
                .and_then(|a| a.as_any().downcast_ref::<arrow::array::TimestampMicrosecondArray>().filter(|t| arrow::array::Array::is_valid(*t, 0)).map(|t| t.value(0)));
                config.base_time = parsed
                    .ok_or_else(|| RiffleError::plan(format!("nexmark option 'base-time' must be a timestamp such as '2026-01-01 00:00:00', got '{v}'")))?;
            }
            other => {
                return Err(RiffleError::plan(format!(
                    "unknown nexmark option '{other}' (known: table, events.num, first-event.rate, rate-limited, person.proportion, auction.proportion, bid.proportion, seed, base-time)"
                )))
            }
        }
    }
    let table = table.ok_or_else(|| RiffleError::plan("the nexmark connector needs 'table' = 'person', 'auction' or 'bid'"))?;
    let share = match table {
        NexmarkTable::Person => config.person_proportion,
        NexmarkTable::Auction => config.auction_proportion,
        NexmarkTable::Bid => config.bid_proportion,
    };
    if share == 0 {
        return Err(RiffleError::plan(format!("the nexmark {table:?} table would be empty: its proportion is 0")));
    }
    TableSource::nexmark(config, table, events, paced, declared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flink_durations_parse() {
        let ms = |t: &str| parse_flink_duration(t).map(|d| d.as_millis());
        assert_eq!(ms("1 h"), Ok(3_600_000));
        assert_eq!(ms("30min"), Ok(1_800_000));
        assert_eq!(ms("500"), Ok(500));
        assert_eq!(ms("2 days"), Ok(172_800_000));
        assert_eq!(ms("0"), Ok(0));
        assert!(ms("1 week").unwrap_err().contains("not a unit of time"));
        assert!(ms("soon").unwrap_err().contains("is not a duration"));
    }

    #[test]
    fn set_takes_flinks_options_and_refuses_others() {
        let mut s = Session::new(ExecConfig::default());
        s.sql("SET 'table.exec.state.ttl' = '90 s'").expect("ttl");
        assert_eq!(s.config.state_ttl, Some(std::time::Duration::from_secs(90)));
        s.sql("SET 'execution.runtime-mode' = 'streaming'").expect("mode");
        assert!(s.config.stream);
        s.sql("SET 'sql-client.execution.result-mode' = 'tableau'").expect("client option");
        let e = s.sql("SET 'table.exec.mini-batch.enabled' = 'true'").unwrap_err().to_string();
        assert!(e.contains("the options Riffle has are 'table.exec.state.ttl'"), "{e}");
        let e = s.sql("SET 'table.exec.state.ttl' = '1 fortnight'").unwrap_err().to_string();
        assert!(e.contains("'fortnight' in '1 fortnight' is not a unit of time"), "{e}");
    }
}
