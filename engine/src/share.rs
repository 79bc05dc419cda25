//! Shared subplans: a subplan that occurs more than once in a plan runs once, and each of its uses
//! reads all its rows (Flink's sub-plan reuse; DuckDB materializes CTEs for the same reason). Nexmark
//! q5 counts bids per auction and window twice, once to join and once to find each window's maximum;
//! TPC-H Q15 aggregates its revenue view twice. The uses are marked [`PhysicalPlan::Shared`]; the
//! executor runs the subplan at its first use and hands every message to each use's queue.
//!
//! A use that may wait for another use to read every row would stop the subplan, and with it the
//! other use, if its queue were bounded: on a join's probe side when the build side reads the
//! subplan too (the probe waits for the whole build). Such a use is `buffered` (its queue has no
//! bound), and is only allowed under an aggregate, whose rows are few next to its input's; other
//! subplans with such a use run once per use, and what they share inside is looked at in turn.

use std::collections::HashMap;

use crate::logical::JoinKind;
use crate::physical::PhysicalPlan;

/// `plan` with every subplan that occurs more than once (and is worth it) marked as shared. A
/// subplan that would need a buffered use but is no aggregate is left to run once per use, and the
/// subplans inside it are considered instead (TPC-DS q47 reads its windowed CTE three times, one of
/// them on a probe side: the aggregate under the windows runs once).
///
/// Copies differing only in their scans' filters are merged first (`crate::filtered_copies`), where
/// the merged subplan then runs once: where it would run per use, each use would read more rows
/// than its own copy did.
pub fn share_subplans(plan: PhysicalPlan) -> PhysicalPlan {
    let mut excluded = vec![];
    loop {
        let (merged_plan, merged) = crate::filtered_copies::merge(plan.clone(), &excluded);
        let shared = share_equal_subplans(merged_plan);
        let per_use: Vec<PhysicalPlan> =
            merged.iter().filter(|m| !crate::filtered_copies::runs_once(&shared, m)).map(crate::filtered_copies::skeleton).collect();
        if per_use.is_empty() {
            return shared;
        }
        excluded.extend(per_use);
    }
}

fn share_equal_subplans(plan: PhysicalPlan) -> PhysicalPlan {
    let mut rejected = vec![];
    loop {
        let mut chosen = vec![];
        choose(&plan, &plan, &rejected, &mut chosen);
        if chosen.is_empty() {
            return plan;
        }
        let mut marked = mark_uses(plan.clone(), &chosen);
        mark_buffered(&mut marked);
        let unsafe_ids: Vec<usize> = (0..chosen.len()).filter(|id| buffered_use(&marked, *id) && !is_aggregate(&chosen[*id])).collect();
        if unsafe_ids.is_empty() {
            return marked;
        }
        rejected.extend(unsafe_ids.into_iter().map(|id| chosen[id].clone()));
    }
}

/// The subplans to share, largest first: each occurs at least twice, counting inside a subplan
/// chosen before only once (it runs once), and is not `rejected`. Inside a chosen subplan, what
/// occurs twice there is shared too (TPC-DS q14 reads its `cross_items` CTE once per channel, all
/// three inside the shared union its ROLLUP reads).
fn choose(node: &PhysicalPlan, root: &PhysicalPlan, rejected: &[PhysicalPlan], chosen: &mut Vec<PhysicalPlan>) {
    if chosen.contains(node) {
        return;
    }
    if worth_sharing(node) && !rejected.contains(node) && occurrences(root, node, chosen, &mut vec![]) >= 2 {
        chosen.push(node.clone());
    }
    for input in node.inputs() {
        choose(input, root, rejected, chosen);
    }
}

/// How often `node` occurs in `plan`, counting inside each subplan chosen already once (`seen`: the
/// chosen subplans met so far).
fn occurrences<'a>(plan: &'a PhysicalPlan, node: &PhysicalPlan, chosen: &[PhysicalPlan], seen: &mut Vec<&'a PhysicalPlan>) -> usize {
    if plan == node {
        return 1;
    }
    if chosen.contains(plan) {
        if seen.contains(&plan) {
            return 0;
        }
        seen.push(plan);
    }
    plan.inputs().into_iter().map(|i| occurrences(i, node, chosen, seen)).sum()
}

/// A subplan worth running once: it reads a table and does work beyond reading it (rows read twice
/// in parallel cost little, and the scans' morsels spread over the threads without a queue between).
pub(crate) fn worth_sharing(plan: &PhysicalPlan) -> bool {
    fn reads_table(p: &PhysicalPlan) -> bool {
        matches!(p, PhysicalPlan::Scan { .. }) || p.inputs().into_iter().any(reads_table)
    }
    fn works(p: &PhysicalPlan) -> bool {
        matches!(
            p,
            PhysicalPlan::HashAggregate { .. }
                | PhysicalPlan::UpdateAggregate { .. }
                | PhysicalPlan::SessionAggregate { .. }
                | PhysicalPlan::HashJoin { .. }
                | PhysicalPlan::StreamJoin { .. }
                | PhysicalPlan::NestedLoopJoin { .. }
                | PhysicalPlan::Window { .. }
                | PhysicalPlan::Sort { .. }
        ) || p.inputs().into_iter().any(works)
    }
    reads_table(plan) && works(plan)
}

/// An aggregate's rows, maybe projected, filtered, sorted or limited.
fn is_aggregate(plan: &PhysicalPlan) -> bool {
    match plan {
        PhysicalPlan::HashAggregate { .. } | PhysicalPlan::SessionAggregate { .. } => true,
        PhysicalPlan::Project { input, .. }
        | PhysicalPlan::Filter { input, .. }
        | PhysicalPlan::Sort { input, .. }
        | PhysicalPlan::Limit { input, .. } => is_aggregate(input),
        _ => false,
    }
}

/// Wraps each occurrence of a chosen subplan in its `Shared` node (numbered by place in `chosen`),
/// and the chosen subplans inside it in theirs.
fn mark_uses(mut plan: PhysicalPlan, chosen: &[PhysicalPlan]) -> PhysicalPlan {
    let id = chosen.iter().position(|c| *c == plan);
    for input in plan.inputs_mut() {
        *input = mark_uses(input.take(), chosen);
    }
    match id {
        Some(id) => PhysicalPlan::Shared { input: Box::new(plan), id, buffered: false },
        None => plan,
    }
}

/// Marks the uses on a join's probe side whose subplan its build side reads too.
fn mark_buffered(plan: &mut PhysicalPlan) {
    if let PhysicalPlan::HashJoin { probe, build, .. } | PhysicalPlan::NestedLoopJoin { probe, build, .. } = plan {
        let mut built = vec![];
        shared_ids(build, &mut built);
        set_buffered(probe, &built);
    }
    for input in plan.inputs_mut() {
        mark_buffered(input);
    }
}

/// The shared subplans `plan` reads, also through the shared subplans it reads.
fn shared_ids(plan: &PhysicalPlan, out: &mut Vec<usize>) {
    if let PhysicalPlan::Shared { id, .. } = plan {
        out.push(*id);
    }
    plan.inputs().into_iter().for_each(|i| shared_ids(i, out));
}

/// Marks the uses of `ids` in the pipeline that waits for a join's build side. Below an operator
/// that takes all its input before it gives any (a GROUP BY, a sort, a nested join's build side),
/// a use is read by another pipeline, which runs while the join waits (TPC-DS q88's eight counts,
/// cross joined, each read the one merged store_sales join).
fn set_buffered(plan: &mut PhysicalPlan, ids: &[usize]) {
    match plan {
        PhysicalPlan::Shared { id, buffered, .. } => *buffered |= ids.contains(id),
        PhysicalPlan::HashAggregate { window_end: None, .. } | PhysicalPlan::Sort { .. } => {}
        PhysicalPlan::HashJoin { probe, .. } | PhysicalPlan::NestedLoopJoin { probe, .. } => set_buffered(probe, ids),
        other => other.inputs_mut().into_iter().for_each(|i| set_buffered(i, ids)),
    }
}

fn buffered_use(plan: &PhysicalPlan, shared: usize) -> bool {
    match plan {
        PhysicalPlan::Shared { id, buffered, .. } => *id == shared && *buffered,
        other => other.inputs().into_iter().any(|i| buffered_use(i, shared)),
    }
}

/// Runs subplans `ids` once per use again.
fn unmark(mut plan: PhysicalPlan, ids: &[usize]) -> PhysicalPlan {
    match plan {
        PhysicalPlan::Shared { input, id, .. } if ids.contains(&id) => *input,
        PhysicalPlan::Shared { .. } => plan,
        _ => {
            for input in plan.inputs_mut() {
                *input = unmark(input.take(), ids);
            }
            plan
        }
    }
}

/// A checkpointed job computes a hash join's build side again when it restarts (that side is not in
/// its checkpoints: it ends before probing starts; `exec::build`), while a shared subplan's state is
/// restored: a join whose build side reads a subplan that is also read outside it becomes a stream
/// join (both sides restored) if it is inner; otherwise the subplan runs once per use.
pub fn checkpointable_joins(plan: PhysicalPlan) -> PhysicalPlan {
    let uses = shared_uses(&plan);
    if uses.is_empty() {
        return plan;
    }
    let mut unshare = vec![];
    let mut plan = split_builds(plan, &uses, &mut unshare);
    if !unshare.is_empty() {
        plan = unmark(plan, &unshare);
    }
    // Uses that waited for a build side that is now a stream join's input no longer wait.
    clear_buffered(&mut plan);
    mark_buffered(&mut plan);
    plan
}

/// Each shared subplan's uses in `plan`, in pre-order (the order the executor opens them), whether
/// each is buffered; inside a shared subplan, the uses in its first use only (the one that runs it).
pub fn shared_uses(plan: &PhysicalPlan) -> HashMap<usize, Vec<bool>> {
    fn collect(plan: &PhysicalPlan, out: &mut HashMap<usize, Vec<bool>>) {
        match plan {
            PhysicalPlan::Shared { id, buffered, input } => {
                let uses = out.entry(*id).or_default();
                uses.push(*buffered);
                if uses.len() == 1 {
                    collect(input, out);
                }
            }
            other => other.inputs().into_iter().for_each(|i| collect(i, out)),
        }
    }
    let mut out = HashMap::new();
    collect(plan, &mut out);
    out
}

fn split_builds(mut plan: PhysicalPlan, uses: &HashMap<usize, Vec<bool>>, unshare: &mut Vec<usize>) -> PhysicalPlan {
    if let PhysicalPlan::HashJoin { build, .. } | PhysicalPlan::NestedLoopJoin { build, .. } = &plan {
        let inside = shared_uses(build);
        let crossing: Vec<usize> =
            inside.iter().filter(|(id, n)| uses.get(*id).is_some_and(|all| all.len() > n.len())).map(|(id, _)| *id).collect();
        if !crossing.is_empty() {
            if matches!(plan, PhysicalPlan::HashJoin { kind: JoinKind::Inner, .. }) {
                plan = crate::physical::into_stream_join(plan);
            } else {
                unshare.extend(crossing);
            }
        }
    }
    for input in plan.inputs_mut() {
        *input = split_builds(input.take(), uses, unshare);
    }
    plan
}

fn clear_buffered(plan: &mut PhysicalPlan) {
    if let PhysicalPlan::Shared { buffered, .. } = plan {
        *buffered = false;
    }
    plan.inputs_mut().into_iter().for_each(clear_buffered);
}
