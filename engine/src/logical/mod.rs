//! Logical plans and the bound expressions inside them.

mod expr;
mod plan;

pub use expr::{BinaryOp, Expr, Scalar};
pub use plan::{join_schema, AggCall, AggFunc, JoinKind, LogicalPlan, SortKey};
