//! The one message type that flows between operators: data and in-band control.

use arrow::array::RecordBatch;

/// Event time in microseconds since the epoch.
pub type Timestamp = i64;
/// Checkpoint epoch number.
pub type Epoch = u64;

/// What an operator receives and emits. Bounded (batch) queries only ever see `Batch` and `End`;
/// streaming queries interleave watermarks and checkpoint barriers with the data, in order.
#[derive(Debug, Clone)]
pub enum Message {
    Batch(RecordBatch),
    /// No row with an event time below this will follow.
    Watermark(Timestamp),
    /// Everything before this belongs to checkpoint `Epoch`; everything after to the next.
    Barrier(Epoch),
    /// The input sends nothing for a while (an idle source, Flink's `WatermarkStatus.IDLE`): until
    /// its next batch or watermark, operators combining inputs do not wait for its watermark. Rows it
    /// sends later behind the others' watermark are late.
    Idle,
    /// The input ended: a bounded stream is complete.
    End,
}

impl Message {
    pub fn is_control(&self) -> bool {
        !matches!(self, Message::Batch(_))
    }
}
