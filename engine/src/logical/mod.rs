//! Logical plans and the bound expressions inside them.

mod expr;
mod plan;

pub use expr::{BinaryOp, Expr, Scalar};
pub use plan::{join_schema, window_schema, AggCall, AggFunc, JoinKind, LogicalPlan, SortKey, WindowKind, WindowSpec, WINDOW_TIME_BEFORE_END};
