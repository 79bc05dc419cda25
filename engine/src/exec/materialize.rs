//! Applies a changelog: counts each distinct row up for `+I`/`+U` and down for `-U`/`-D`, and at the
//! end of input emits the rows that remain, as many times as they remain. This is how an operator
//! that needs final rows (a sort, a join, the result of a query) reads an updating result of bounded
//! input. One partition sees every row.

use std::collections::HashMap;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};

use super::Operator;
use crate::changelog;
use crate::error::{Result, RiffleError};
use crate::memory::{MemoryPool, MemoryReservation};
use crate::message::Message;

pub struct MaterializeOp {
    /// The final rows (the input's without `op`).
    schema: SchemaRef,
    batch_size: usize,
    pool: std::sync::Arc<MemoryPool>,
    state: Option<Table>,
    /// After the end of input: rows still to emit, from this position of `Table::rows`.
    emitting: Option<usize>,
}

struct Table {
    converter: RowConverter,
    index: HashMap<Box<[u8]>, usize>,
    /// Distinct rows in the order they first came, with how many of each stand.
    rows: Vec<(Box<[u8]>, i64)>,
    bytes: usize,
    reservation: MemoryReservation,
}

impl MaterializeOp {
    pub fn new(schema: SchemaRef, batch_size: usize, pool: std::sync::Arc<MemoryPool>) -> MaterializeOp {
        MaterializeOp { schema, batch_size, pool, state: None, emitting: None }
    }

    fn table(&mut self) -> Result<&mut Table> {
        if self.state.is_none() {
            let fields = self.schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect();
            self.state = Some(Table {
                converter: RowConverter::new(fields)?,
                index: HashMap::new(),
                rows: vec![],
                bytes: 0,
                reservation: self.pool.reservation("Materialize", false),
            });
        }
        self.state.as_mut().ok_or_else(|| RiffleError::exec("materialized rows missing"))
    }
}

impl Operator for MaterializeOp {
    fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        let signs = changelog::signs(&batch)?;
        let data = &batch.columns()[..batch.num_columns() - 1];
        let table = self.table()?;
        let encoded = table.converter.convert_columns(data)?;
        for (row, sign) in encoded.iter().zip(signs) {
            match table.index.get(row.as_ref()) {
                Some(i) => table.rows[*i].1 += sign,
                None => {
                    let key: Box<[u8]> = row.as_ref().into();
                    table.bytes += key.len() * 2 + 48;
                    table.index.insert(key.clone(), table.rows.len());
                    table.rows.push((key, sign));
                }
            }
        }
        let size = table.bytes;
        table.reservation.resize(size)?;
        Ok(())
    }

    fn on_control(&mut self, msg: Message, out: &mut Vec<Message>) -> Result<()> {
        match msg {
            Message::Watermark(_) | Message::Idle => {}
            Message::End => {
                self.table()?;
                self.emitting = Some(0);
            }
            other => out.push(other),
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        self.emitting.is_some()
    }

    fn drain(&mut self, out: &mut Vec<Message>) -> Result<()> {
        let (Some(from), Some(table)) = (self.emitting, &self.state) else { return Ok(()) };
        let parser = table.converter.parser();
        let mut rows = Vec::new();
        let mut at = from;
        while at < table.rows.len() && rows.len() < self.batch_size {
            let (key, count) = &table.rows[at];
            for _ in 0..(*count).max(0) {
                rows.push(parser.parse(key));
            }
            at += 1;
        }
        if !rows.is_empty() {
            let columns = table.converter.convert_rows(rows.iter().copied())?;
            let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
            out.push(Message::Batch(RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?));
        }
        if at >= table.rows.len() {
            self.emitting = None;
            out.push(Message::End);
        } else {
            self.emitting = Some(at);
        }
        Ok(())
    }
}
