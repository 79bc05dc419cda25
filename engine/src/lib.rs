//! Riffle's engine: SQL → logical plan → optimizer → physical plan → pipelines of push-based operators
//! that process Arrow record batches, bounded or not.

pub mod catalog;
pub mod changelog;
pub mod cse;
pub mod dependent_keys;
pub mod eager_aggregate;
pub mod error;
pub mod eval;
pub mod exec;
pub mod filtered_copies;
pub mod format;
pub mod functions;
pub mod join_order;
pub mod logical;
pub mod memory;
pub mod message;
pub mod optimizer;
pub mod partial_agg;
pub mod physical;
pub mod runtime_filter_plan;
pub mod scalar_aggregates;
pub mod session;
pub mod share;
pub mod sql;
pub mod stats;
pub mod types;

pub use error::{Result, RiffleError};
pub use exec::{ExecConfig, SpillCompression};
pub use message::Message;
pub use session::{Session, StatementResult};
