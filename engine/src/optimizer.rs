//! Rule-based rewrites of the logical plan.

use crate::error::Result;
use crate::logical::LogicalPlan;

pub fn optimize(plan: LogicalPlan) -> Result<LogicalPlan> {
    Ok(plan)
}
