//! Logical plans and the bound expressions inside them.

mod expr;
mod plan;

pub use expr::{BinaryOp, Expr, Scalar};
pub use plan::{
    describe_over, describe_session, describe_window_calls, join, join_on, join_schema, same_column, window_schema, AggCall, AggFunc, Frame, FrameBound, JoinKind, LogicalPlan, SortKey, WindowCall,
    WindowFunc, WindowKind, WindowSpec, WINDOW_TIME_BEFORE_END,
};
