//! Window table functions (TUMBLE, HOP, CUMULATE) as a streaming operator: each row comes out once
//! per window its time falls in, with the window's start, end and time appended.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};

use super::Operator;
use crate::error::Result;
use crate::logical::{WindowSpec, WINDOW_TIME_BEFORE_END};
use crate::message::Message;

pub struct WindowTvfOp {
    pub window: WindowSpec,
    /// The time column.
    pub time: usize,
    pub schema: SchemaRef,
}

impl Operator for WindowTvfOp {
    fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let micros = arrow::compute::cast(batch.column(self.time), &DataType::Int64)?;
        let micros = micros.as_primitive::<Int64Type>();
        let capacity = batch.num_rows() * self.window.max_windows();
        let (mut rows, mut starts, mut ends) = (Vec::with_capacity(capacity), Vec::with_capacity(capacity), Vec::with_capacity(capacity));
        for (row, ts) in micros.iter().enumerate() {
            // A row without a time is in no window.
            let Some(ts) = ts else { continue };
            self.window.windows(ts, &mut |start, end| {
                rows.push(row as u32);
                starts.push(start);
                ends.push(end);
            });
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, r)| *r as usize == i) {
            batch.columns().to_vec()
        } else {
            arrow::compute::take_record_batch(&batch, &UInt32Array::from(rows))?.columns().to_vec()
        };
        let times: Vec<i64> = ends.iter().map(|e| e.saturating_sub(WINDOW_TIME_BEFORE_END)).collect();
        for values in [starts, ends, times] {
            columns.push(Arc::new(TimestampMicrosecondArray::from(values)));
        }
        out.push(Message::Batch(RecordBatch::try_new(self.schema.clone(), columns)?));
        Ok(())
    }
}
