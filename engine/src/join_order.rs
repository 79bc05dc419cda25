//! Cost-based join order. A tree of inner joins is flattened into its relations (the region's leaves)
//! and its conditions; the cheapest tree is chosen by dynamic programming over sets of relations
//! (greedily for large regions), never joining two sets that no condition connects while another
//! choice exists; each join builds its hash table on the smaller side. The cost of a tree is the rows
//! every join outputs plus the rows every join builds, from `stats`' estimates.
//!
//! Joins of other kinds (outer, semi, anti, mark) are region boundaries: their inputs are ordered on
//! their own. A semi or anti join over a region whose condition reads one relation may move into the
//! region as a filter on that relation (`push_semi_join`). Regions reading a stream with event time keep the order written, as the stream
//! planner finds interval joins in it, except a join of two bounded inputs whose event time nothing
//! above reads (Nexmark q4's auctions and bids: the smaller side is hashed).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::Schema;

use crate::catalog::TableData;
use crate::logical::{join_on, join_schema, BinaryOp, Expr, JoinKind, LogicalPlan};
use crate::stats;

/// Regions of up to this many relations are ordered by dynamic programming (3^n steps), larger ones
/// greedily.
const MAX_DP_RELATIONS: usize = 12;

/// Reorders every region of inner joins in `plan`.
pub fn reorder_joins(plan: &mut LogicalPlan) {
    let mut counts = HashMap::new();
    count_aggregates(plan, &mut counts);
    let repeated: HashSet<String> = counts.into_iter().filter(|(_, n)| *n > 1).map(|(f, _)| f).collect();
    reorder(plan, false, &repeated)
}

/// What tells an aggregate apart whatever order the joins below it take: its keys, its aggregates
/// and the scans it reads. The uses of a CTE have the same.
fn aggregate_fingerprint(plan: &LogicalPlan) -> Option<String> {
    let LogicalPlan::Aggregate { group, aggs, .. } = plan else { return None };
    fn scans(plan: &LogicalPlan, out: &mut Vec<String>) {
        if let LogicalPlan::Scan { name, projection, filters, .. } = plan {
            out.push(format!("{name} {projection:?} {filters:?}"));
        }
        for input in plan.inputs() {
            scans(input, out);
        }
    }
    let mut read = vec![];
    scans(plan, &mut read);
    read.sort();
    Some(format!("{group:?} {aggs:?} {read:?}"))
}

/// How often each aggregate of `plan` occurs in it, by fingerprint.
fn count_aggregates(plan: &LogicalPlan, counts: &mut HashMap<String, usize>) {
    if let Some(f) = aggregate_fingerprint(plan) {
        *counts.entry(f).or_default() += 1;
    }
    for input in plan.inputs() {
        count_aggregates(input, counts);
    }
}

/// `reorder_joins`; `time_used` says whether an operator above reads the event time of `plan`'s
/// rows (a window, an interval join): in a stream, a join's rows keep the time and watermarks of its
/// left input (a hash join's probe side), so the order of their joins is the one written.
fn reorder(plan: &mut LogicalPlan, time_used: bool, repeated: &HashSet<String>) {
    if is_inner_join(plan) {
        // Two bounded inputs whose time nothing above reads may swap sides whatever they hold (the
        // join's own condition reads the same two sides either way); larger regions reading event
        // time keep the order written, as the stream planner finds interval joins in it, and so do
        // the inputs of such a pair.
        let leaves_time_used = if orderable(plan) {
            Some(time_used)
        } else {
            (!time_used && is_bounded_pair(plan)).then_some(true)
        };
        if let Some(leaves_time_used) = leaves_time_used {
            let region = std::mem::replace(plan, LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
            *plan = reorder_region(region, leaves_time_used, repeated);
            return;
        }
    }
    if let LogicalPlan::Join { left, kind: JoinKind::Semi | JoinKind::Anti, .. } = plan {
        if is_inner_join(left) && orderable(plan) {
            let join = std::mem::replace(plan, LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
            *plan = push_semi_join(join, time_used, repeated);
            return;
        }
    }
    let below = time_used || reads_event_time(plan);
    for input in plan.inputs_mut() {
        reorder(input, below, repeated);
    }
}

/// Whether `plan` reads its inputs' event time (their watermarks, or which column holds it): windows,
/// OVER windows, joins (interval joins bound the two sides' times).
fn reads_event_time(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::WindowTvf { .. } | LogicalPlan::SessionTvf { .. } | LogicalPlan::Window { .. } | LogicalPlan::Join { .. })
}

/// An inner join of two inputs that are not inner joins themselves, both ending.
fn is_bounded_pair(plan: &LogicalPlan) -> bool {
    let LogicalPlan::Join { left, right, .. } = plan else { return false };
    [left, right].iter().all(|side| !is_inner_join(side) && bounded(side))
}

/// Whether every table `plan` reads ends.
pub(crate) fn bounded(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Scan { source, .. } => !source.unbounded(),
        other => other.inputs().into_iter().all(bounded),
    }
}

fn is_inner_join(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Join { kind: JoinKind::Inner, null_aware: false, .. })
}

/// Whether a plan reads only bounded tables without event time (so no stream semantics depend on
/// the shape of its joins).
pub(crate) fn orderable(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Scan { source, .. } => {
            source.event_time.is_none() && !matches!(source.data, TableData::Nexmark { events: None, .. })
        }
        LogicalPlan::WindowTvf { .. } | LogicalPlan::SessionTvf { .. } => false,
        other => other.inputs().into_iter().all(orderable),
    }
}

/// A region's relations and conditions. Conditions are over the relations' columns side by side in
/// the order written (the original join tree's output).
struct Region<'a> {
    leaves: Vec<LogicalPlan>,
    /// Whether the leaves' own joins are ordered as if an operator above read their event time.
    leaves_time_used: bool,
    /// The first column of each leaf in the region's columns.
    starts: Vec<usize>,
    width: usize,
    conditions: Vec<Expr>,
    /// Fingerprints of the aggregates the plan computes more than once (a CTE's uses, shared at
    /// run time while they stay the same).
    repeated: &'a HashSet<String>,
}

impl Region<'_> {
    fn flatten(&mut self, plan: LogicalPlan) {
        match plan {
            LogicalPlan::Join { left, right, kind: JoinKind::Inner, on, filter, null_aware: false, .. } => {
                let base = self.width;
                let nl = left.schema().fields().len();
                self.flatten(*left);
                self.flatten(*right);
                for (l, r) in on {
                    self.conditions.push(Expr::binary(BinaryOp::Eq, l.remap(&|c| c + base), r.remap(&|c| c + base + nl)));
                }
                for c in filter.map(Expr::conjuncts).unwrap_or_default() {
                    self.conditions.push(c.remap(&|c| c + base));
                }
            }
            mut leaf => {
                reorder(&mut leaf, self.leaves_time_used, self.repeated);
                self.starts.push(self.width);
                self.width += leaf.schema().fields().len();
                self.leaves.push(leaf);
            }
        }
    }

    fn leaf_of(&self, column: usize) -> usize {
        self.starts.partition_point(|s| *s <= column) - 1
    }

    /// The set of leaves an expression reads (a bit per leaf).
    fn mask(&self, e: &Expr) -> u64 {
        e.column_set().iter().fold(0, |m, c| m | 1 << self.leaf_of(*c))
    }

    /// The conditions on leaf `leaf` alone.
    fn own_conditions(&self, leaf: usize) -> impl Iterator<Item = &Expr> {
        self.conditions.iter().filter(move |c| self.mask(c) == 1 << leaf)
    }
}

/// A condition's leaves and how selective it is.
struct Condition {
    mask: u64,
    selectivity: f64,
    /// The equality class this condition is one equality of (`ColumnClasses`): such conditions
    /// count only where they join leaves no other equality of their class has joined yet.
    class: Option<usize>,
    /// The classes a composite key's equalities belong to: they join their leaves in those classes.
    covers: Vec<usize>,
}

/// A join tree over leaves.
enum Tree {
    Leaf(usize),
    Join(Box<Tree>, Box<Tree>),
}

fn reorder_region(plan: LogicalPlan, leaves_time_used: bool, repeated: &HashSet<String>) -> LogicalPlan {
    let schema = plan.schema();
    let mut region = Region { leaves: vec![], leaves_time_used, starts: vec![], width: 0, conditions: vec![], repeated };
    region.flatten(plan);
    order(region, &schema)
}

/// Estimated rows of each leaf and selectivities of the conditions over several leaves.
struct Estimates {
    rows: Vec<f64>,
    /// Conditions that always count, then equalities of a class, the least selective first.
    conditions: Vec<Condition>,
    classes: usize,
}

impl Estimates {
    fn of(region: &Region, classes: &ColumnClasses) -> Estimates {
        let estimator = stats::Estimator::default();
        let mut rows: Vec<f64> = region.leaves.iter().map(|l| estimator.rows(l)).collect();
        let masks: Vec<u64> = region.conditions.iter().map(|c| region.mask(c)).collect();
        for (c, m) in region.conditions.iter().zip(&masks) {
            if m.count_ones() == 1 {
                rows[m.trailing_zeros() as usize] *= stats::guess_selectivity(c);
            }
        }
        let mut conditions = selectivities(&estimator, region, &masks, &classes.of_condition);
        // A spanning tree of each class's equalities, the least selective first: k relations equal
        // on one key keep 1 / (the product of all but the smallest of their distinct counts).
        conditions.sort_by(|a, b| a.class.is_some().cmp(&b.class.is_some()).then(b.selectivity.total_cmp(&a.selectivity)));
        Estimates { rows, conditions, classes: classes.count }
    }

    /// The estimated rows of the join of a set of leaves.
    fn card(&self, set: u64) -> f64 {
        let n = self.rows.len();
        let mut c: f64 = (0..n).filter(|i| set & (1 << i) != 0).map(|i| self.rows[i]).product();
        // Per class, which leaves its equalities so far made one (a union-find forest per class).
        let mut joined: Vec<usize> = (0..self.classes * n).map(|i| i % n).collect();
        let mut union = |class: usize, mask: u64| -> bool {
            let part = &mut joined[class * n..(class + 1) * n];
            let (a, b) = (mask.trailing_zeros() as usize, 63 - mask.leading_zeros() as usize);
            let (ra, rb) = (union_find_root(part, a), union_find_root(part, b));
            part[ra] = rb;
            ra != rb
        };
        for cond in self.conditions.iter().filter(|cond| cond.mask & set == cond.mask) {
            match cond.class {
                None => {
                    c *= cond.selectivity;
                    for class in &cond.covers {
                        union(*class, cond.mask);
                    }
                }
                Some(class) => {
                    if union(class, cond.mask) {
                        c *= cond.selectivity;
                    }
                }
            }
        }
        c.max(1.0)
    }
}

/// The root of `c`'s tree in a union-find forest.
fn union_find_root(parent: &mut [usize], mut c: usize) -> usize {
    while parent[c] != c {
        parent[c] = parent[parent[c]];
        c = parent[c];
    }
    c
}

/// Columns of different leaves the region's equalities make equal, in classes (TPC-H Q9's
/// `p_partkey = l_partkey AND ps_partkey = l_partkey`: part, partsupp and lineitem's part keys).
/// Any two leaves of a class may then be joined first, by the equality the class implies.
struct ColumnClasses {
    /// The class of each condition that is an equality of one.
    of_condition: Vec<Option<usize>>,
    count: usize,
}

impl ColumnClasses {
    /// The classes of `region`'s column equalities; the equalities they imply between leaves
    /// that no condition equates on that class are added to the region's conditions.
    fn add_implied(region: &mut Region) -> ColumnClasses {
        let mut parent = column_equalities(region);
        let conditions = region.conditions.len();
        // Each class's column per leaf; a class with two columns of one leaf is left alone (its
        // leaves are not known equal on one column).
        let mut members: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        for k in 0..conditions {
            let Some((a, b)) = column_equality(&region.conditions[k]) else { continue };
            let root = union_find_root(&mut parent, a);
            if region.leaf_of(a) == region.leaf_of(b) || root != union_find_root(&mut parent, b) {
                continue;
            }
            let class = members.entry(root).or_default();
            for col in [a, b] {
                if !class.iter().any(|(_, c)| *c == col) {
                    class.push((region.leaf_of(col), col));
                }
            }
        }
        let mut ids: HashMap<usize, usize> = HashMap::new();
        let mut roots: Vec<usize> = members.keys().copied().collect();
        roots.sort_unstable();
        for root in roots {
            let class = &members[&root];
            let one_per_leaf = class.iter().all(|(leaf, col)| class.iter().all(|(l, c)| l != leaf || c == col));
            if one_per_leaf {
                ids.insert(root, ids.len());
            }
        }
        // An equality of columns of two types joined no class: neither column's class is its.
        let mut class_of = |(a, b): (usize, usize)| {
            let root = union_find_root(&mut parent, a);
            (root == union_find_root(&mut parent, b)).then(|| ids.get(&root).copied()).flatten()
        };
        let mut of_condition: Vec<Option<usize>> = region.conditions.iter().map(|c| column_equality(c).and_then(&mut class_of)).collect();
        let mut classes: Vec<(usize, usize)> = ids.iter().map(|(root, id)| (*id, *root)).collect();
        classes.sort_unstable();
        for (id, root) in classes {
            let class = &members[&root];
            for (i, &(la, ca)) in class.iter().enumerate() {
                for &(lb, cb) in &class[i + 1..] {
                    let pair = 1u64 << la | 1u64 << lb;
                    let stated = (0..of_condition.len()).any(|k| of_condition[k] == Some(id) && region.mask(&region.conditions[k]) == pair);
                    if !stated {
                        region.conditions.push(Expr::binary(BinaryOp::Eq, Expr::Column(ca), Expr::Column(cb)));
                        of_condition.push(Some(id));
                    }
                }
            }
        }
        ColumnClasses { of_condition, count: ids.len() }
    }
}

/// The two columns `c` equates, if it is an equality of two columns.
fn column_equality(c: &Expr) -> Option<(usize, usize)> {
    match c {
        Expr::Binary { op: BinaryOp::Eq, left, right } => match (left.as_ref(), right.as_ref()) {
            (Expr::Column(a), Expr::Column(b)) => Some((*a, *b)),
            _ => None,
        },
        _ => None,
    }
}

/// The region's columns as a union-find forest of the equalities between columns of one type.
fn column_equalities(region: &Region) -> Vec<usize> {
    let mut parent: Vec<usize> = (0..region.width).collect();
    let types: Vec<arrow::datatypes::DataType> =
        region.leaves.iter().flat_map(|l| l.schema().fields().iter().map(|f| f.data_type().clone()).collect::<Vec<_>>()).collect();
    for (a, b) in region.conditions.iter().filter_map(column_equality) {
        if types[a] == types[b] {
            let (ra, rb) = (union_find_root(&mut parent, a), union_find_root(&mut parent, b));
            parent[ra] = rb;
        }
    }
    parent
}

/// The region's leaves joined in the cheapest order found, giving `schema`'s columns.
fn order(region: Region, schema: &arrow::datatypes::SchemaRef) -> LogicalPlan {
    let n = region.leaves.len();
    if n > 64 {
        // Not expected from SQL; join them as written.
        return rebuild(region, &left_deep(n), schema, &|_| 1.0, &[]);
    }
    let mut region = region;
    reduce_aggregates(&mut region);
    let classes = ColumnClasses::add_implied(&mut region);
    let estimates = Estimates::of(&region, &classes);
    let conditions = &estimates.conditions;
    let connected = |a: u64, b: u64| conditions.iter().any(|c| c.mask & a != 0 && c.mask & b != 0 && c.mask & !(a | b) == 0);
    if n <= MAX_DP_RELATIONS {
        // Dynamic programming asks for every set's rows many times.
        let rows: Vec<f64> = (0..1u64 << n).map(|set| estimates.card(set)).collect();
        let card = |set: u64| rows[set as usize];
        let tree = dynamic_programming(n, &card, &connected);
        rebuild(region, &tree, schema, &card, &classes.of_condition)
    } else {
        let card = |set: u64| estimates.card(set);
        let tree = greedy(n, &card, &connected);
        rebuild(region, &tree, schema, &card, &classes.of_condition)
    }
}

/// An aggregate must be estimated to have this many times more groups than the relation that
/// reduces it has rows.
const MIN_GROUP_REDUCTION: f64 = 8.0;

/// Semi-join reduction of aggregates: a relation of the region that is an aggregate joined by one
/// of its group keys, directly or through the region's other equalities, with a column of a small
/// relation that only scans and filters a table: only the groups whose key that relation holds can
/// meet a row, so the aggregate's input keeps only their rows, by a semi join with a copy of the
/// small relation (whose runtime filter then reaches the aggregate's scan). TPC-H Q17's decorrelated
/// `avg(l_quantity)` per part aggregated all 60 M lineitem rows at SF10 for the 2 K parts of one
/// brand and container (DuckDB computes a correlated subquery for the outer side's distinct keys).
/// Valid as any row of a group has the group's key, and the join keeps no group with a NULL key.
fn reduce_aggregates(region: &mut Region) {
    let n = region.leaves.len();
    if !(2..=64).contains(&n) {
        return;
    }
    // Columns made equal by the region's conditions.
    let mut parent = column_equalities(region);
    let root = union_find_root;
    // Each leaf's conditions on itself alone, which a copy of it must apply too.
    let own = |region: &Region, leaf: usize| -> LogicalPlan {
        let start = region.starts[leaf];
        let preds = region.own_conditions(leaf).map(|c| c.clone().remap(&|g| g - start));
        match Expr::conjunction(preds.collect()) {
            Some(predicate) => LogicalPlan::Filter { input: Box::new(region.leaves[leaf].clone()), predicate },
            None => region.leaves[leaf].clone(),
        }
    };
    let estimator = stats::Estimator::default();
    // (aggregate leaf, its column, reducing relation, its key column)
    let mut reductions: Vec<(usize, usize, LogicalPlan, usize)> = vec![];
    for leaf in 0..n {
        let start = region.starts[leaf];
        let width = region.leaves[leaf].schema().fields().len();
        let mut best: Option<(f64, usize, usize, usize)> = None;
        for col in 0..width {
            if group_input(&mut region.leaves[leaf], col).is_none() {
                continue;
            }
            let class = root(&mut parent, start + col);
            for other in 0..region.width {
                let o = region.leaf_of(other);
                if o == leaf || root(&mut parent, other) != class || !scans_only(&region.leaves[o]) {
                    continue;
                }
                let rows = estimator.rows(&region.leaves[o]) * single_selectivity(region, o);
                if best.is_none_or(|b| rows < b.0) {
                    best = Some((rows, col, o, other - region.starts[o]));
                }
            }
        }
        let Some((rows, col, o, key)) = best else { continue };
        // Reduced, a use of an aggregate computed elsewhere too would no longer be the same as the
        // others, and would not be shared.
        if rows * MIN_GROUP_REDUCTION <= estimator.rows(&region.leaves[leaf]) && !reads_repeated(&region.leaves[leaf], region.repeated) {
            reductions.push((leaf, col, own(region, o), key));
        }
    }
    for (leaf, col, keys, key) in reductions {
        if let Some((input, group_key)) = group_input(&mut region.leaves[leaf], col) {
            let rows = std::mem::replace(input.as_mut(), LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
            **input = join_on(rows, keys, JoinKind::Semi, vec![(group_key, Expr::Column(key))], None);
        }
    }
}

/// Whether `plan` computes an aggregate that the plan computes elsewhere too.
fn reads_repeated(plan: &LogicalPlan, repeated: &HashSet<String>) -> bool {
    aggregate_fingerprint(plan).is_some_and(|f| repeated.contains(&f)) || plan.inputs().into_iter().any(|i| reads_repeated(i, repeated))
}

/// The fraction of a leaf's rows its conditions on itself alone keep (guessed, as `Estimates`).
fn single_selectivity(region: &Region, leaf: usize) -> f64 {
    region.own_conditions(leaf).map(stats::guess_selectivity).product()
}

/// Where output column `col` of `plan` is a group key of an aggregate under projections of the
/// column and filters: the input of the innermost such aggregate (through aggregates grouping by
/// a column of another's keys) and the key's expression over that input.
fn group_input(plan: &mut LogicalPlan, col: usize) -> Option<(&mut Box<LogicalPlan>, Expr)> {
    match plan {
        LogicalPlan::Project { input, exprs, .. } => match exprs.get(col) {
            Some(Expr::Column(c)) => group_input(input, *c),
            _ => None,
        },
        LogicalPlan::Filter { input, .. } => group_input(input, col),
        LogicalPlan::Aggregate { input, group, .. } => {
            let key = group.get(col)?.clone();
            if let Expr::Column(c) = key {
                if group_input(input, c).is_some() {
                    return group_input(input, c);
                }
            }
            Some((input, key))
        }
        _ => None,
    }
}

/// Whether `plan` only reads a table (or rows given) and filters and projects them: cheap to run twice.
fn scans_only(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Scan { .. } | LogicalPlan::Values { .. } => true,
        LogicalPlan::Filter { input, .. } | LogicalPlan::Project { input, .. } => scans_only(input),
        _ => false,
    }
}

/// A semi or anti join over a region of inner joins whose condition reads one of the region's
/// relations only: it is a filter on that relation's rows, so it runs there, before the inner
/// joins, when that relation is estimated no larger than the region's result (the rows it would
/// otherwise probe). TPC-H Q18's `o_orderkey IN (…)` thus filters orders before orders meet lineitem.
fn push_semi_join(plan: LogicalPlan, time_used: bool, repeated: &HashSet<String>) -> LogicalPlan {
    let LogicalPlan::Join { left, mut right, kind, on, filter, null_aware, schema } = plan else { return plan };
    reorder(&mut right, time_used, repeated);
    let region_schema = left.schema();
    let mut region = Region { leaves: vec![], leaves_time_used: time_used, starts: vec![], width: 0, conditions: vec![], repeated };
    region.flatten(*left);
    let width = region.width;
    let mut reads: Vec<usize> = on.iter().flat_map(|(l, _)| l.column_set()).collect();
    reads.extend(filter.iter().flat_map(|f| f.column_set()).filter(|c| *c < width));
    let leaves = reads.iter().fold(0u64, |m, c| m | 1 << region.leaf_of(*c));
    let pushed = region.leaves.len() <= 64 && leaves.count_ones() == 1 && {
        let classes = ColumnClasses::add_implied(&mut region);
        let estimates = Estimates::of(&region, &classes);
        let leaf = leaves.trailing_zeros() as usize;
        estimates.rows[leaf] <= estimates.card((1u64 << region.leaves.len()) - 1)
    };
    if !pushed {
        let left = order(region, &region_schema);
        return LogicalPlan::Join { left: Box::new(left), right, kind, on, filter, null_aware, schema };
    }
    let leaf = leaves.trailing_zeros() as usize;
    let (start, leaf_width) = (region.starts[leaf], region.leaves[leaf].schema().fields().len());
    let local = move |c: usize| if c >= width { c - width + leaf_width } else { c - start };
    let target = std::mem::replace(&mut region.leaves[leaf], LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
    let leaf_schema = join_schema(&target.schema(), &right.schema(), kind);
    region.leaves[leaf] = LogicalPlan::Join {
        left: Box::new(target),
        right,
        kind,
        on: on.into_iter().map(|(l, r)| (l.remap(&local), r)).collect(),
        filter: filter.map(|f| f.remap(&local)),
        null_aware,
        schema: leaf_schema,
    };
    order(region, &region_schema)
}

/// Selectivities of the region's conditions over two or more leaves. Equalities between columns of
/// the same two leaves count together, as one key over both leaves' column sets (a composite key is
/// as selective as its distinct combinations, not as the product of its parts), from the
/// combinations both tables have where they are measured (`stats::overlap_selectivity`).
fn selectivities(estimator: &stats::Estimator, region: &Region, masks: &[u64], classes: &[Option<usize>]) -> Vec<Condition> {
    let mut out: Vec<Condition> = Vec::new();
    // (leaf a, leaf b) with a < b, a's columns, b's columns, the equalities' classes.
    type KeyPair = ((usize, usize), Vec<usize>, Vec<usize>, Vec<Option<usize>>);
    let mut pairs: Vec<KeyPair> = Vec::new();
    for (k, (c, m)) in region.conditions.iter().zip(masks).enumerate() {
        if m.count_ones() < 2 {
            continue;
        }
        let column = |e: &Expr| match e {
            Expr::Column(c) => Some(*c),
            Expr::Cast { expr, .. } => match expr.as_ref() {
                Expr::Column(c) => Some(*c),
                _ => None,
            },
            _ => None,
        };
        if let Expr::Binary { op: BinaryOp::Eq, left, right } = c {
            if let (Some(x), Some(y)) = (column(left), column(right)) {
                let (lx, ly) = (region.leaf_of(x), region.leaf_of(y));
                let ((a, ca), (b, cb)) = if lx < ly { ((lx, x), (ly, y)) } else { ((ly, y), (lx, x)) };
                let local_a = ca - region.starts[a];
                let local_b = cb - region.starts[b];
                let class = classes.get(k).copied().flatten();
                match pairs.iter_mut().find(|p| p.0 == (a, b)) {
                    Some(p) => {
                        p.1.push(local_a);
                        p.2.push(local_b);
                        p.3.push(class);
                    }
                    None => pairs.push(((a, b), vec![local_a], vec![local_b], vec![class])),
                }
                continue;
            }
        }
        out.push(Condition { mask: *m, selectivity: given_own_parts(region, c, *m), class: None, covers: vec![] });
    }
    for ((a, b), ca, cb, of_class) in pairs {
        let (la, lb) = (&region.leaves[a], &region.leaves[b]);
        let overlap = if ca.len() > 1 { stats::overlap_selectivity(la, &ca, lb, &cb) } else { None };
        let selectivity = overlap.unwrap_or_else(|| 1.0 / estimator.distinct(la, &ca).max(estimator.distinct(lb, &cb)).max(1.0));
        let (class, covers) = match of_class[..] {
            [one] => (one, vec![]),
            _ => (None, of_class.into_iter().flatten().collect()),
        };
        out.push(Condition { mask: 1 << a | 1 << b, selectivity, class, covers });
    }
    out
}

/// The guessed selectivity of condition `c` over the leaves of `mask`, given the restrictions it
/// implies on each leaf alone (each of its OR's branches restricts the leaf), which the optimizer
/// has already pushed into the leaves and their estimates: TPC-H Q7's `(n1 = 'FRANCE' AND n2 =
/// 'GERMANY') OR (n1 = 'GERMANY' AND n2 = 'FRANCE')` keeps half of the pairs of two nations, not 2%.
fn given_own_parts(region: &Region, c: &Expr, mask: u64) -> f64 {
    let guess = stats::guess_selectivity(c);
    if !matches!(c, Expr::Binary { op: BinaryOp::Or, .. }) {
        return guess;
    }
    let branches: Vec<Vec<Expr>> = crate::optimizer::disjuncts(c.clone()).into_iter().map(Expr::conjuncts).collect();
    let mut implied = 1.0;
    for leaf in (0..region.leaves.len()).filter(|l| mask & 1 << l != 0) {
        if let Some(own) = crate::optimizer::implied_part(&branches, |e| region.mask(e) == 1 << leaf) {
            implied *= stats::guess_selectivity(&own);
        }
    }
    (guess / implied).min(1.0)
}

/// The cost of joining two sets: the rows the join outputs and the rows it builds (the smaller side).
fn join_cost(card: &dyn Fn(u64) -> f64, a: u64, b: u64) -> f64 {
    card(a | b) + card(a).min(card(b))
}

/// The cheapest tree over all `n` leaves, considering every split of every set.
fn dynamic_programming(n: usize, card: &dyn Fn(u64) -> f64, connected: &dyn Fn(u64, u64) -> bool) -> Tree {
    let full: usize = (1 << n) - 1;
    let mut cost = vec![f64::INFINITY; 1 << n];
    let mut split = vec![0usize; 1 << n];
    // Whether the conditions connect the set's leaves: a connected set is only made of connected
    // halves, so no cross product hides inside it.
    let mut linked = vec![false; 1 << n];
    for i in 0..n {
        cost[1 << i] = 0.0;
        linked[1 << i] = true;
    }
    for set in 1..=full {
        if set.count_ones() < 2 {
            continue;
        }
        let low = set & set.wrapping_neg();
        // Splits joining connected halves first; cross products only where the set has no other.
        for allow_cross in [false, true] {
            let mut sub = (set - 1) & set;
            while sub > 0 {
                let rest = set ^ sub;
                // Each split once: the half holding the lowest leaf is `sub`.
                if sub & low != 0
                    && cost[sub].is_finite()
                    && cost[rest].is_finite()
                    && (allow_cross || (linked[sub] && linked[rest] && connected(sub as u64, rest as u64)))
                {
                    let c = cost[sub] + cost[rest] + join_cost(card, sub as u64, rest as u64);
                    if c < cost[set] {
                        cost[set] = c;
                        split[set] = sub;
                    }
                }
                sub = (sub - 1) & set;
            }
            if cost[set].is_finite() {
                linked[set] = !allow_cross;
                break;
            }
        }
    }
    fn tree(set: usize, split: &[usize]) -> Tree {
        if set.count_ones() == 1 {
            return Tree::Leaf(set.trailing_zeros() as usize);
        }
        let a = split[set];
        Tree::Join(Box::new(tree(a, split)), Box::new(tree(set ^ a, split)))
    }
    tree(full, &split)
}

/// Joins, step by step, the two connected sets whose join costs least (any two when none connect).
fn greedy(n: usize, card: &dyn Fn(u64) -> f64, connected: &dyn Fn(u64, u64) -> bool) -> Tree {
    let mut sets: Vec<(u64, Tree)> = (0..n).map(|i| (1u64 << i, Tree::Leaf(i))).collect();
    while sets.len() > 1 {
        let mut best: Option<(bool, f64, usize, usize)> = None;
        for i in 0..sets.len() {
            for j in i + 1..sets.len() {
                let (a, b) = (sets[i].0, sets[j].0);
                let cand = (connected(a, b), join_cost(card, a, b), i, j);
                let better = match best {
                    None => true,
                    Some((bc, bcost, ..)) => (cand.0 && !bc) || (cand.0 == bc && cand.1 < bcost),
                };
                if better {
                    best = Some(cand);
                }
            }
        }
        let Some((_, _, i, j)) = best else { break };
        let (b_mask, b_tree) = sets.remove(j);
        let (a_mask, a_tree) = sets.remove(i);
        sets.push((a_mask | b_mask, Tree::Join(Box::new(a_tree), Box::new(b_tree))));
    }
    match sets.pop() {
        Some((_, t)) => t,
        None => Tree::Leaf(0),
    }
}

fn left_deep(n: usize) -> Tree {
    (1..n).fold(Tree::Leaf(0), |t, i| Tree::Join(Box::new(t), Box::new(Tree::Leaf(i))))
}

/// A subtree built: its plan, which region columns it outputs in which order, and its leaves.
struct Built {
    plan: LogicalPlan,
    columns: Vec<usize>,
    mask: u64,
}

/// What building a hash table costs per row, in rows read and aggregated.
const BUILD_ROW_COST: f64 = 4.0;

/// The input rows of the aggregate relation `side` that a runtime filter from `other`'s keys would
/// spare, were `side` a join's probe side: the filter passes the aggregate, to its input's scan
/// (`crate::runtime_filter_plan`), where only the groups whose key `other` has (at most its rows of
/// the aggregate's groups) keep their rows. Zero unless `side` is one relation that is an aggregate
/// under projections and filters, joined with `other` on one of its group keys (an integer column).
fn filter_spares(side: &Built, other: &Built, pending: &[Option<Expr>], masks: &[u64], starts: &[usize], card: &dyn Fn(u64) -> f64) -> f64 {
    if side.mask.count_ones() != 1 {
        return 0.0;
    }
    let start = starts[side.mask.trailing_zeros() as usize];
    let keys = pending.iter().zip(masks).filter(|(_, m)| **m & side.mask != 0 && **m & other.mask != 0 && **m & !(side.mask | other.mask) == 0);
    let estimator = stats::Estimator::default();
    let mut spared: f64 = 0.0;
    for (c, _) in keys {
        let Some(Expr::Binary { op: BinaryOp::Eq, left, right }) = c else { continue };
        let (Expr::Column(x), Expr::Column(y)) = (left.as_ref(), right.as_ref()) else { continue };
        let mine = if side.columns.contains(x) { *x } else if side.columns.contains(y) { *y } else { continue };
        // Runtime filters hold integer keys.
        if !side.plan.schema().field(mine - start).data_type().is_integer() {
            continue;
        }
        let Some(aggregate) = keyed_aggregate(&side.plan, mine - start) else { continue };
        let LogicalPlan::Aggregate { input, .. } = aggregate else { continue };
        let kept = (card(other.mask) / estimator.rows(aggregate)).min(1.0);
        spared = spared.max(estimator.rows(input) * (1.0 - kept));
    }
    spared
}

/// The aggregate whose group key output column `col` of `plan` is, under projections of the
/// column and filters, when that key is a column of its input.
fn keyed_aggregate(plan: &LogicalPlan, col: usize) -> Option<&LogicalPlan> {
    match plan {
        LogicalPlan::Project { input, exprs, .. } => match exprs.get(col) {
            Some(Expr::Column(c)) => keyed_aggregate(input, *c),
            _ => None,
        },
        LogicalPlan::Filter { input, .. } => keyed_aggregate(input, col),
        LogicalPlan::Aggregate { group, .. } => matches!(group.get(col), Some(Expr::Column(_))).then_some(plan),
        _ => None,
    }
}

/// The plan of `tree`, each condition at the lowest join that has its columns, and a projection
/// giving the region's columns in the order written.
fn rebuild(region: Region, tree: &Tree, schema: &arrow::datatypes::SchemaRef, card: &dyn Fn(u64) -> f64, classes: &[Option<usize>]) -> LogicalPlan {
    let masks: Vec<u64> = region.conditions.iter().map(|c| region.mask(c)).collect();
    let widths: Vec<usize> = region.leaves.iter().map(|l| l.schema().fields().len()).collect();
    let starts = region.starts.clone();
    let mut pending: Vec<Option<Expr>> = region.conditions.into_iter().map(Some).collect();
    let mut leaves: Vec<Option<LogicalPlan>> = region.leaves.into_iter().map(Some).collect();

    #[allow(clippy::too_many_arguments)]
    fn build(
        tree: &Tree,
        leaves: &mut [Option<LogicalPlan>],
        pending: &mut [Option<Expr>],
        masks: &[u64],
        starts: &[usize],
        widths: &[usize],
        card: &dyn Fn(u64) -> f64,
        classes: &[Option<usize>],
    ) -> Built {
        match tree {
            Tree::Leaf(i) => {
                let columns: Vec<usize> = (starts[*i]..starts[*i] + widths[*i]).collect();
                let mut plan = leaves[*i].take().unwrap_or(LogicalPlan::Values { rows: vec![], schema: Arc::new(Schema::empty()) });
                let own: Vec<Expr> = (0..pending.len())
                    .filter(|k| masks[*k] == 1 << i)
                    .filter_map(|k| pending[k].take())
                    .map(|c| c.remap(&|g| g - starts[*i]))
                    .collect();
                if let Some(p) = Expr::conjunction(own) {
                    plan = LogicalPlan::Filter { input: Box::new(plan), predicate: p };
                }
                Built { plan, columns, mask: 1 << i }
            }
            Tree::Join(a, b) => {
                let a = build(a, leaves, pending, masks, starts, widths, card, classes);
                let b = build(b, leaves, pending, masks, starts, widths, card, classes);
                // The larger side probes, the smaller builds; unless the smaller one's runtime filter
                // on the larger would spare many more rows below an aggregate than it adds to the build.
                let probes_first = |x: &Built, y: &Built| {
                    let spared = filter_spares(x, y, pending, masks, starts, card);
                    spared > 0.0 && spared > BUILD_ROW_COST * (card(y.mask) - card(x.mask)).max(0.0)
                };
                let (probe, build_side) = if probes_first(&a, &b) {
                    (a, b)
                } else if probes_first(&b, &a) || card(b.mask) > card(a.mask) {
                    (b, a)
                } else {
                    (a, b)
                };
                let mask = probe.mask | build_side.mask;
                let position = |cols: &[usize], g: usize| cols.iter().position(|c| *c == g).unwrap_or(usize::MAX);
                let mut columns = probe.columns.clone();
                columns.extend(&build_side.columns);
                let (mut on, mut residual) = (Vec::new(), Vec::new());
                // Each side's columns of a class are equal already (every two leaves of a class
                // have an equality of it): one equality of the class joins the two sides.
                let mut classes_joined: Vec<usize> = Vec::new();
                for k in 0..pending.len() {
                    if masks[k] & !mask != 0 || masks[k] & probe.mask == masks[k] || masks[k] & build_side.mask == masks[k] {
                        continue;
                    }
                    let Some(c) = pending[k].take() else { continue };
                    if let Some(class) = classes.get(k).copied().flatten() {
                        if classes_joined.contains(&class) {
                            continue;
                        }
                        classes_joined.push(class);
                    }
                    let side_mask = |e: &Expr| e.column_set().iter().fold(0u64, |m, g| m | 1 << starts.partition_point(|s| s <= g).saturating_sub(1));
                    match c {
                        Expr::Binary { op: BinaryOp::Eq, left, right } => {
                            let (lm, rm) = (side_mask(&left), side_mask(&right));
                            let within = |m: u64, side: u64| m != 0 && m & side == m;
                            if within(lm, probe.mask) && within(rm, build_side.mask) {
                                on.push((left.remap(&|g| position(&probe.columns, g)), right.remap(&|g| position(&build_side.columns, g))));
                            } else if within(rm, probe.mask) && within(lm, build_side.mask) {
                                on.push((right.remap(&|g| position(&probe.columns, g)), left.remap(&|g| position(&build_side.columns, g))));
                            } else {
                                residual.push(Expr::Binary { op: BinaryOp::Eq, left, right }.remap(&|g| position(&columns, g)));
                            }
                        }
                        other => residual.push(other.remap(&|g| position(&columns, g))),
                    }
                }
                let schema = join_schema(&probe.plan.schema(), &build_side.plan.schema(), JoinKind::Inner);
                let plan = LogicalPlan::Join {
                    left: Box::new(probe.plan),
                    right: Box::new(build_side.plan),
                    kind: JoinKind::Inner,
                    on,
                    filter: Expr::conjunction(residual),
                    null_aware: false,
                    schema,
                };
                Built { plan, columns, mask }
            }
        }
    }

    let built = build(tree, &mut leaves, &mut pending, &masks, &starts, &widths, card, classes);
    let mut plan = built.plan;
    // Conditions over no leaf (constants) hold or not for every row.
    let constant: Vec<Expr> = pending.iter_mut().filter_map(Option::take).collect();
    if let Some(p) = Expr::conjunction(constant) {
        plan = LogicalPlan::Filter { input: Box::new(plan), predicate: p };
    }
    let in_order = built.columns.iter().enumerate().all(|(i, c)| i == *c);
    if in_order {
        return plan;
    }
    let exprs = (0..region.width).map(|g| Expr::Column(built.columns.iter().position(|c| *c == g).unwrap_or(usize::MAX))).collect();
    LogicalPlan::Project { input: Box::new(plan), exprs, schema: schema.clone() }
}
