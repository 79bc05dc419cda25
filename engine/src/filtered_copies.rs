//! Copies of a subplan that differ only in what their scans keep become one subplan, shared. A CTE
//! read several times gets each reader's conditions pushed into its own copy: TPC-DS q31 reads its
//! per-quarter sales for quarters 1, 2 and 3, q75 its yearly sales for two years, q04 each channel's
//! for two years; each copy read the fact table again. The merged subplan's scans keep what any copy
//! keeps (the copies' filters OR'ed) and each reader filters its own rows back out on top; the
//! copies being equal now, `crate::share` runs the subplan once (as DuckDB materializes such a CTE).
//!
//! A copy's filter can go on top only where its columns reach the subplan's output unchanged
//! through operators that keep or drop each row on its own values: projections, filters, GROUP BY
//! keys, the row-preserving side of a join, unions whose inputs all filter alike (`lift`).

use crate::logical::{BinaryOp, Expr, JoinKind};
use crate::physical::PhysicalPlan;

/// `plan` with groups of filtered copies merged, none of those in `excluded` (compared without scan
/// filters or estimates), and the merged subplans.
pub fn merge(mut plan: PhysicalPlan, excluded: &[PhysicalPlan]) -> (PhysicalPlan, Vec<PhysicalPlan>) {
    let mut merged = vec![];
    let mut tried: Vec<PhysicalPlan> = excluded.to_vec();
    loop {
        let mut nodes = vec![];
        skeletons(&plan, &mut vec![], &mut nodes);
        let mut found = None;
        for (i, (skeleton, _, node)) in nodes.iter().enumerate() {
            if tried.contains(skeleton) || !crate::share::worth_sharing(node) {
                continue;
            }
            let copies: Vec<usize> = (i..nodes.len()).filter(|j| nodes[*j].0 == *skeleton).collect();
            if copies.len() < 2 || copies.iter().all(|j| nodes[*j].2 == *node) {
                continue;
            }
            tried.push(skeleton.clone());
            let group: Vec<&PhysicalPlan> = copies.iter().map(|j| nodes[*j].2).collect();
            if let Some(replacements) = merged_copies(&group) {
                let paths = copies.iter().map(|j| nodes[*j].1.clone()).collect::<Vec<_>>();
                found = Some((paths, replacements));
                break;
            }
        }
        let Some((paths, (shared, uses))) = found else { return (plan, merged) };
        for (path, replacement) in paths.iter().zip(uses) {
            if let Some(node) = at(&mut plan, path) {
                *node = replacement;
            }
        }
        merged.push(shared);
    }
}

/// Every node of `plan` in pre-order: its skeleton (no scan filters, no estimates), where it is
/// (input numbers from the root) and itself.
fn skeletons<'a>(plan: &'a PhysicalPlan, path: &mut Vec<usize>, out: &mut Vec<(PhysicalPlan, Vec<usize>, &'a PhysicalPlan)>) {
    out.push((skeleton(plan), path.clone(), plan));
    for (i, input) in plan.inputs().into_iter().enumerate() {
        path.push(i);
        skeletons(input, path, out);
        path.pop();
    }
}

/// `plan` without its scans' filters and its estimates: what copies differing only there share.
pub fn skeleton(plan: &PhysicalPlan) -> PhysicalPlan {
    let mut skeleton = plan.clone();
    strip(&mut skeleton);
    skeleton
}

fn strip(plan: &mut PhysicalPlan) {
    match plan {
        PhysicalPlan::Scan { filter, estimated_rows, .. } => {
            *filter = None;
            *estimated_rows = None;
        }
        PhysicalPlan::HashAggregate { estimated_rows, .. }
        | PhysicalPlan::HashJoin { estimated_rows, .. }
        | PhysicalPlan::NestedLoopJoin { estimated_rows, .. } => *estimated_rows = None,
        _ => {}
    }
    plan.inputs_mut().into_iter().for_each(strip);
}

fn at<'a>(plan: &'a mut PhysicalPlan, path: &[usize]) -> Option<&'a mut PhysicalPlan> {
    match path.split_first() {
        None => Some(plan),
        Some((i, rest)) => at(plan.inputs_mut().into_iter().nth(*i)?, rest),
    }
}

/// The scans' filters of `plan`, in pre-order.
fn scan_filters(plan: &PhysicalPlan, out: &mut Vec<Option<Expr>>) {
    if let PhysicalPlan::Scan { filter, .. } = plan {
        out.push(filter.clone());
    }
    plan.inputs().into_iter().for_each(|i| scan_filters(i, out));
}

fn set_scan_filters(plan: &mut PhysicalPlan, filters: &mut impl Iterator<Item = Option<Expr>>) {
    if let PhysicalPlan::Scan { filter, .. } = plan {
        *filter = filters.next().flatten();
    }
    plan.inputs_mut().into_iter().for_each(|i| set_scan_filters(i, filters));
}

/// The merged subplan of `copies` (equal but for their scans' filters) and what replaces each copy,
/// if every copy's own filters can be put on top.
fn merged_copies(copies: &[&PhysicalPlan]) -> Option<(PhysicalPlan, Vec<PhysicalPlan>)> {
    let filters: Vec<Vec<Option<Expr>>> = copies
        .iter()
        .map(|c| {
            let mut f = vec![];
            scan_filters(c, &mut f);
            f
        })
        .collect();
    let scans = filters[0].len();
    let differs: Vec<bool> = (0..scans).map(|i| filters.iter().any(|f| f[i] != filters[0][i])).collect();
    let mut merged_filters = vec![];
    for i in 0..scans {
        let mut alternatives: Vec<&Expr> = vec![];
        for f in &filters {
            match &f[i] {
                // A copy reading every row: so must the merged one.
                None => {
                    alternatives.clear();
                    break;
                }
                Some(e) if e.is_volatile() => return None,
                Some(e) if !alternatives.contains(&e) => alternatives.push(e),
                Some(_) => {}
            }
        }
        merged_filters.push(alternatives.into_iter().cloned().reduce(|a, b| Expr::binary(BinaryOp::Or, a, b)));
    }
    let on_top = filters.iter().map(|own| lift(copies[0], &mut 0, own, &differs)).collect::<Option<Vec<_>>>()?;
    let mut merged = copies[0].clone();
    set_scan_filters(&mut merged, &mut merged_filters.into_iter());
    let uses = on_top
        .into_iter()
        .map(|conjuncts| match Expr::conjunction(conjuncts) {
            Some(predicate) => PhysicalPlan::Filter { input: Box::new(merged.clone()), predicate },
            None => merged.clone(),
        })
        .collect();
    Some((merged, uses))
}

/// The conditions on `plan`'s output that keep exactly the rows it has with its scans' filters
/// `own` (numbered from `next` in pre-order) where they differ between copies, and lets through
/// what any other filters there would: `None` where a condition cannot be lifted that high.
fn lift(plan: &PhysicalPlan, next: &mut usize, own: &[Option<Expr>], differs: &[bool]) -> Option<Vec<Expr>> {
    // The output column each of a condition's columns is, or none.
    let remap = |conjuncts: Vec<Expr>, to: &dyn Fn(usize) -> Option<usize>| -> Option<Vec<Expr>> {
        // A condition on no column (a constant) is not one on rows: above a GROUP BY without keys
        // it would drop the row an empty input gives.
        let reachable = conjuncts.iter().all(|c| {
            let columns = c.column_set();
            !columns.is_empty() && columns.into_iter().all(|col| to(col).is_some())
        });
        reachable.then(|| conjuncts.into_iter().map(|c| c.remap(&|col| to(col).unwrap_or(col))).collect())
    };
    match plan {
        PhysicalPlan::Scan { .. } => {
            let i = *next;
            *next += 1;
            Some(match &own[i] {
                Some(f) if differs[i] => f.clone().conjuncts(),
                _ => vec![],
            })
        }
        PhysicalPlan::Filter { input, .. } | PhysicalPlan::Sort { input, fetch: None, .. } => lift(input, next, own, differs),
        PhysicalPlan::Project { input, exprs, .. } => {
            let below = lift(input, next, own, differs)?;
            remap(below, &|c| exprs.iter().position(|e| *e == Expr::Column(c)))
        }
        PhysicalPlan::HashAggregate { input, group, window_end: None, .. } => {
            let below = lift(input, next, own, differs)?;
            remap(below, &|c| group.iter().position(|g| *g == Expr::Column(c)))
        }
        PhysicalPlan::HashJoin { probe, build, kind, keep_build, .. } => join(probe, build, *kind, *keep_build, next, own, differs),
        PhysicalPlan::NestedLoopJoin { probe, build, kind, .. } => join(probe, build, *kind, false, next, own, differs),
        PhysicalPlan::Union { inputs, .. } => {
            let lifted = inputs.iter().map(|i| lift(i, next, own, differs)).collect::<Option<Vec<_>>>()?;
            // A condition after the union holds for every input's rows: all must filter alike.
            lifted.iter().all(|l| *l == lifted[0]).then(|| lifted[0].clone())
        }
        other => {
            let lifted = other.inputs().into_iter().map(|i| lift(i, next, own, differs)).collect::<Option<Vec<_>>>()?;
            lifted.iter().all(|l| l.is_empty()).then(Vec::new)
        }
    }
}

/// `lift` through a join: a condition on a side whose rows the join keeps or drops one by one for
/// what they match (not a side padded with NULLs, not a semi join's other side).
fn join(
    probe: &PhysicalPlan,
    build: &PhysicalPlan,
    kind: JoinKind,
    keep_build: bool,
    next: &mut usize,
    own: &[Option<Expr>],
    differs: &[bool],
) -> Option<Vec<Expr>> {
    let on_probe = lift(probe, next, own, differs)?;
    let on_build = lift(build, next, own, differs)?;
    let width = probe.schema().fields().len();
    let shifted = || on_build.iter().map(|c| c.clone().remap(&|col| col + width)).collect::<Vec<_>>();
    let (probe_kept, build_kept) = match (kind, keep_build) {
        (JoinKind::Inner, _) => (true, true),
        (JoinKind::Left | JoinKind::Single, _) => (true, false),
        (JoinKind::Right, _) => (false, true),
        (JoinKind::Semi | JoinKind::Anti, true) => return on_probe.is_empty().then(|| on_build.clone()),
        (JoinKind::Semi | JoinKind::Anti | JoinKind::Mark, false) => (true, false),
        (JoinKind::Full | JoinKind::Mark, _) => (false, false),
    };
    if (!probe_kept && !on_probe.is_empty()) || (!build_kept && !on_build.is_empty()) {
        return None;
    }
    Some(on_probe.iter().cloned().chain(shifted()).collect())
}

/// Whether `node` runs at most once in `plan`: it occurs once, or its uses are one shared subplan's.
pub fn runs_once(plan: &PhysicalPlan, node: &PhysicalPlan) -> bool {
    fn runs(plan: &PhysicalPlan, node: &PhysicalPlan, seen: &mut Vec<usize>) -> usize {
        if plan == node {
            return 1;
        }
        if let PhysicalPlan::Shared { id, .. } = plan {
            if seen.contains(id) {
                return 0;
            }
            seen.push(*id);
        }
        plan.inputs().into_iter().map(|i| runs(i, node, seen)).sum()
    }
    runs(plan, node, &mut vec![]) <= 1
}
