//! Which scans each hash join's runtime filters go to (the filters themselves: `exec::runtime_filter`).
//!
//! A join key's filter goes to the scans its probe rows' key comes from unchanged
//! (`PhysicalPlan::filter_targets`): in the probe's own pipeline, or, in batch mode, below a GROUP BY
//! keyed by it, inside a shared subplan or in a union's inputs, in a pipeline that may run before
//! the join's probe (TPC-DS q54's catalog and web sales of one month are read as such). A scan
//! waits for its filters before it reads anything, so such a GROUP BY only sees the rows the join can
//! use: TPC-DS q23 counts its frequent items' sales per day over the catalog and web sales' items
//! only, as DuckDB does with its materialized CTEs. A shared subplan runs once for all its uses, so a
//! scan inside it is filtered only when every use joins on the same column, and keeps a row when any
//! use's build side has its key.
//!
//! Plans are numbered as the executor numbers them: in pre-order, a shared subplan's nodes by its
//! first use (the one that runs it); a scan is named by its number.

use std::collections::{HashMap, HashSet};

use crate::physical::PhysicalPlan;

/// One filter of a scan, on its output column `column`, set by the joins `from` (node number, key
/// index): a row passes when any of them has its value.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanFilterSpec {
    pub column: usize,
    pub from: Vec<(usize, usize)>,
}

/// One filter a join sets: for its key `key`, on column `column` of scan `scan` (node numbers).
#[derive(Debug, Clone, PartialEq)]
pub struct JoinFilter {
    pub key: usize,
    pub scan: usize,
    pub column: usize,
    /// `table.column`, for EXPLAIN.
    pub label: String,
}

#[derive(Debug, Default)]
pub struct RuntimeFilterPlan {
    /// Per scan node, its filters.
    pub scans: HashMap<usize, Vec<ScanFilterSpec>>,
    /// Per hash join node, the filters it sets.
    pub joins: HashMap<usize, Vec<JoinFilter>>,
}

/// A filter a join could set, with what it crosses on the way to its scan.
struct Candidate {
    join: usize,
    key: usize,
    scan: usize,
    column: usize,
    label: String,
    /// The shared subplan uses crossed (node addresses) and their subplan numbers.
    shared: Vec<(usize, usize)>,
}

impl RuntimeFilterPlan {
    /// The runtime filters of `plan`; crossing GROUP BYs and shared subplans only when
    /// `across_breakers` (not run as a stream, where a scan waiting for a join's build side would hold
    /// its watermarks and barriers back).
    pub fn of(plan: &PhysicalPlan, across_breakers: bool) -> RuntimeFilterPlan {
        let mut numbers = Numbering::default();
        numbers.walk(plan);
        let mut candidates = Vec::new();
        for (join, node) in &numbers.opened {
            let PhysicalPlan::HashJoin { build, .. } = node else { continue };
            for t in node.runtime_filter_targets(across_breakers) {
                let Some(&scan) = numbers.ids.get(&address(t.scan)) else { continue };
                let label = match t.scan {
                    PhysicalPlan::Scan { name, schema, .. } => format!("{name}.{}", schema.field(t.column).name()),
                    _ => continue,
                };
                // A build side that reads the scan itself would wait for it forever.
                if !t.via.is_empty() && numbers.reads(build, scan) {
                    continue;
                }
                let shared = t
                    .via
                    .iter()
                    .filter_map(|v| match v {
                        PhysicalPlan::Shared { id, .. } => Some((address(v), *id)),
                        _ => None,
                    })
                    .collect();
                candidates.push(Candidate { join: *join, key: t.key, scan, column: t.column, label, shared });
            }
        }
        let mut out = RuntimeFilterPlan::default();
        // Inside one shared subplan: per (subplan, scan, column), one filter per use; all uses or none.
        let mut by_use: HashMap<(usize, usize, usize), HashMap<usize, Candidate>> = HashMap::new();
        for c in candidates {
            match c.shared[..] {
                [] => out.add(vec![c]),
                [(use_at, id)] => {
                    by_use.entry((id, c.scan, c.column)).or_default().entry(use_at).or_insert(c);
                }
                // Nested shared subplans: each outer use would have to cover every inner one.
                _ => {}
            }
        }
        let mut groups: Vec<_> = by_use.into_iter().collect();
        groups.sort_by_key(|(k, _)| *k);
        for ((id, _, _), uses) in groups {
            if uses.len() == numbers.uses.get(&id).copied().unwrap_or(0) {
                let mut uses: Vec<Candidate> = uses.into_values().collect();
                uses.sort_by_key(|c| (c.join, c.key));
                out.add(uses);
            }
        }
        out
    }

    /// Adds one scan filter, set by each of `from` (on the same scan column).
    fn add(&mut self, from: Vec<Candidate>) {
        let Some((scan, column)) = from.first().map(|c| (c.scan, c.column)) else { return };
        self.scans.entry(scan).or_default().push(ScanFilterSpec { column, from: from.iter().map(|c| (c.join, c.key)).collect() });
        for c in from {
            let filters = self.joins.entry(c.join).or_default();
            filters.push(JoinFilter { key: c.key, scan, column, label: c.label });
            filters.sort_by_key(|f| f.key);
        }
    }
}

fn address(plan: &PhysicalPlan) -> usize {
    plan as *const PhysicalPlan as usize
}

/// The executor's node numbers (`exec::build`): every node by address, the nodes of a shared
/// subplan's later uses by the number of the same node at its first use.
#[derive(Default)]
struct Numbering<'a> {
    next: usize,
    ids: HashMap<usize, usize>,
    /// The nodes the executor instantiates (not those of a shared subplan's later uses), numbered.
    opened: Vec<(usize, &'a PhysicalPlan)>,
    /// Per shared subplan, its first use's input and how many uses are instantiated.
    first: HashMap<usize, &'a PhysicalPlan>,
    uses: HashMap<usize, usize>,
}

impl<'a> Numbering<'a> {
    fn walk(&mut self, node: &'a PhysicalPlan) {
        let id = self.next;
        self.next += 1;
        self.ids.insert(address(node), id);
        self.opened.push((id, node));
        if let PhysicalPlan::Shared { input, id: shared, .. } = node {
            *self.uses.entry(*shared).or_default() += 1;
            if let Some(first) = self.first.get(shared).copied() {
                self.mirror(input, first);
                self.next += input.node_count();
                return;
            }
            self.first.insert(*shared, input);
        }
        for input in node.inputs() {
            self.walk(input);
        }
    }

    /// Numbers `copy`'s nodes as the same nodes of `original` (numbered already).
    fn mirror(&mut self, copy: &PhysicalPlan, original: &PhysicalPlan) {
        if let Some(id) = self.ids.get(&address(original)).copied() {
            self.ids.insert(address(copy), id);
        }
        for (c, o) in copy.inputs().into_iter().zip(original.inputs()) {
            self.mirror(c, o);
        }
    }

    /// Whether `plan` reads node `id`: contains it or a use of a shared subplan containing it.
    fn reads(&self, plan: &PhysicalPlan, id: usize) -> bool {
        let mut seen = HashSet::new();
        self.reads_from(plan, id, &mut seen)
    }

    fn reads_from(&self, plan: &PhysicalPlan, id: usize, seen: &mut HashSet<usize>) -> bool {
        if self.ids.get(&address(plan)) == Some(&id) {
            return true;
        }
        if let PhysicalPlan::Shared { id: shared, .. } = plan {
            if !seen.insert(*shared) {
                return false;
            }
        }
        plan.inputs().into_iter().any(|i| self.reads_from(i, id, seen))
    }
}
