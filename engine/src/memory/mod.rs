//! The memory budget of a query: one pool, and RAII reservations that every buffering operator takes
//! before it buffers.
//!
//! Consumers are spillable (sort runs, later aggregate and join partitions) or not. A spillable
//! consumer may hold at most its fair share of what the unspillable ones leave, so one sort partition
//! cannot starve the other. The share is among the consumers that hold memory (and the one
//! asking): operators of pipelines that have not started yet take none (TPC-DS q67's ROLLUP has
//! eight aggregates, one after another, each with a partition per thread; counted all along, each
//! aggregate spilled at a twentieth of the budget). When a reservation cannot grow, a spillable operator writes what it holds
//! through the [`SpillManager`] and frees it. An unspillable consumer that does not fit fails the
//! query with an error naming it and how to raise the limit.

#[cfg(feature = "mimalloc")]
mod allocator;
mod spill;

use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(feature = "mimalloc")]
pub use allocator::keep_freed_memory;
pub use spill::{remove_live_spill_dirs, SpillFile, SpillManager, SpillReader, SpillWriter};

use crate::error::{Result, RiffleError};
use crate::exec::human_bytes;

#[derive(Debug, Default)]
struct PoolState {
    used: usize,
    peak: usize,
    /// Bytes held by unspillable consumers.
    unspillable: usize,
    /// Live spillable consumers that have taken memory, among which the rest of the budget is shared.
    spillable_consumers: usize,
}

/// One query's memory budget.
#[derive(Debug)]
pub struct MemoryPool {
    /// What the operators' reservations may hold together.
    limit: usize,
    /// The query's whole budget (`--memory-limit`), of which `limit` is the operators' share.
    query_limit: usize,
    /// Testing (`ExecConfig::force_spill`): spillable consumers get nothing, the others what they ask.
    force_spill: bool,
    state: Mutex<PoolState>,
}

/// The operators' share of a query's memory limit, in fifths. As in Flink's memory model (managed
/// memory is a fraction of the process's), the rest is left for what no reservation tracks: the
/// allocator's freed-but-kept pages, file readers' and writers' buffers, thread stacks. Measured on a
/// 10 GB sort with a 2 GB limit: a pool of the whole 2 GB peaked at 2.44 GB RSS, one of 1.6 GB at 1.98 GB.
const OPERATOR_SHARE_FIFTHS: usize = 4;

/// What is left outside the operators at least (Flink's default minimum JVM overhead is the same 192
/// MB): part of the untracked memory does not shrink with the limit (the code, each thread's allocator
/// pages, the queues between pipelines, file readers' and writers' buffers). Sorting 1 GB of records,
/// 150-250 MB stayed outside the pool at limits of 150 MB to 1 GB; with a fifth outside, a 300 MB limit
/// peaked at 403 MB RSS. Up to half of a small limit goes to it (tests run with a few bytes).
const MIN_OUTSIDE_OPERATORS: usize = 192 << 20;

impl MemoryPool {
    /// A pool whose reservations may hold exactly `limit` bytes.
    pub fn new(limit: usize) -> Arc<MemoryPool> {
        Arc::new(MemoryPool { limit, query_limit: limit, force_spill: false, state: Mutex::new(PoolState::default()) })
    }

    /// A pool whose spillable consumers get no memory (they spill at every batch) and whose others
    /// get what they ask: for tests of spilling in plans that also hold state that cannot spill.
    pub fn forcing_spill() -> Arc<MemoryPool> {
        let limit = usize::MAX / 2;
        Arc::new(MemoryPool { limit, query_limit: limit, force_spill: true, state: Mutex::new(PoolState::default()) })
    }

    /// The pool of a query run with `--memory-limit query_limit`: its operators get their share of it.
    pub fn for_query(query_limit: usize) -> Arc<MemoryPool> {
        let outside = (query_limit / 5 * (5 - OPERATOR_SHARE_FIFTHS)).max(MIN_OUTSIDE_OPERATORS.min(query_limit / 2));
        let limit = (query_limit - outside).max(1);
        Arc::new(MemoryPool { limit, query_limit, force_spill: false, state: Mutex::new(PoolState::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved now.
    pub fn used(&self) -> usize {
        self.lock().used
    }

    /// The most bytes ever reserved at once.
    pub fn peak(&self) -> usize {
        self.lock().peak
    }

    /// A new, empty reservation for the operator `name`.
    pub fn reservation(self: &Arc<Self>, name: impl Into<String>, spillable: bool) -> MemoryReservation {
        MemoryReservation { pool: self.clone(), name: name.into(), spillable, size: 0, counted: false }
    }

    /// What a spillable consumer may hold: an equal share of what unspillable consumers leave, among
    /// those that have taken memory and the asking one (`counted`: whether it is one of them).
    fn fair_share(&self, st: &PoolState, counted: bool) -> usize {
        if self.force_spill {
            return 0;
        }
        self.limit.saturating_sub(st.unspillable) / (st.spillable_consumers + usize::from(!counted)).max(1)
    }
}

/// Bytes an operator holds in the pool; given back when it shrinks or is dropped.
#[derive(Debug)]
pub struct MemoryReservation {
    pool: Arc<MemoryPool>,
    name: String,
    spillable: bool,
    size: usize,
    /// A spillable reservation that has taken memory: counted among those sharing the budget.
    counted: bool,
}

impl MemoryReservation {
    pub fn size(&self) -> usize {
        self.size
    }

    /// Grows by `bytes` if the budget allows; false (and no change) if not, so the operator can spill.
    pub fn try_grow(&mut self, bytes: usize) -> bool {
        self.grow_if(bytes, false)
    }

    /// Grows by `bytes` if the budget allows. `taking` (an unspillable consumer that fails without
    /// the memory): it may take what spillable consumers hold, whose fair share then shrinks; each
    /// spills down to it the next time it would grow, so the pool may be over its limit for that
    /// long. Otherwise a join's state, say, could not grow once window aggregates had taken the
    /// rest, though they could give it back.
    fn grow_if(&mut self, bytes: usize, taking: bool) -> bool {
        let mut st = self.pool.lock();
        let held = if taking && !self.spillable { st.unspillable } else { st.used };
        let fits_pool = held + bytes <= self.pool.limit;
        let fits_share = !self.spillable || self.size + bytes <= self.pool.fair_share(&st, self.counted);
        if !(fits_pool && fits_share) {
            return false;
        }
        count(self.spillable, &mut self.counted, &mut st);
        st.used += bytes;
        st.peak = st.peak.max(st.used);
        if !self.spillable {
            st.unspillable += bytes;
        }
        self.size += bytes;
        true
    }

    /// Grows by `bytes` or fails the query with an out-of-memory error that names this operator; an
    /// unspillable consumer may take memory spillable ones hold (`grow_if`).
    pub fn grow(&mut self, bytes: usize) -> Result<()> {
        if self.grow_if(bytes, true) {
            return Ok(());
        }
        Err(self.out_of_memory(bytes))
    }

    /// Sets the size to `bytes` (shrinks without condition) or fails as `grow` does.
    pub fn resize(&mut self, bytes: usize) -> Result<()> {
        if bytes <= self.size {
            self.shrink(self.size - bytes);
            return Ok(());
        }
        self.grow(bytes - self.size)
    }

    /// The error for an operator that needs `bytes` more than the budget gives it and cannot spill
    /// them (or has spilled all it could).
    pub fn out_of_memory(&self, bytes: usize) -> RiffleError {
        let used = self.pool.used();
        let share = if self.pool.query_limit == self.pool.limit {
            String::new()
        } else {
            format!(", {} of it for operators", human_bytes(self.pool.limit as u64))
        };
        // The query limit that gives operators what they need now.
        let needed = (used + bytes).saturating_mul(self.pool.query_limit) / self.pool.limit.max(1);
        RiffleError::OutOfMemory(format!(
            "{} needs {} more memory but the query's memory limit is {}{share} ({} in use, {} of it by {}); \
             raise the limit with --memory-limit (e.g. --memory-limit {})",
            self.name,
            human_bytes(bytes as u64),
            human_bytes(self.pool.query_limit as u64),
            human_bytes(used as u64),
            human_bytes(self.size as u64),
            self.name,
            suggested_limit(self.pool.query_limit.max(needed)),
        ))
    }

    /// Grows by `bytes` even beyond the budget: for memory an operator holds already and must keep
    /// (it is then counted, and others see less room).
    pub fn grow_anyway(&mut self, bytes: usize) {
        let mut st = self.pool.lock();
        count(self.spillable, &mut self.counted, &mut st);
        st.used += bytes;
        st.peak = st.peak.max(st.used);
        if !self.spillable {
            st.unspillable += bytes;
        }
        self.size += bytes;
    }

    /// Sets the size to `bytes`, beyond the budget if need be: for state an operator must keep and
    /// cannot spill (it is then counted, and others see less room).
    pub fn resize_anyway(&mut self, bytes: usize) {
        if bytes <= self.size {
            self.shrink(self.size - bytes);
        } else {
            self.grow_anyway(bytes - self.size);
        }
    }

    /// Hands what this reservation holds to a new one of the same operator (to travel with the data
    /// it covers), leaving this one empty.
    pub fn split_off(&mut self) -> MemoryReservation {
        let mut other = self.pool.reservation(self.name.clone(), self.spillable);
        // The bytes stay counted in the pool; only their owner changes.
        other.size = std::mem::take(&mut self.size);
        let mut st = self.pool.lock();
        if other.size > 0 {
            count(other.spillable, &mut other.counted, &mut st);
        }
        uncount_if_empty(self.size, &mut self.counted, &mut st);
        drop(st);
        other
    }

    /// Takes over what `other` holds (the bytes stay counted in the pool; only their owner changes).
    pub fn merge(&mut self, mut other: MemoryReservation) {
        let bytes = std::mem::take(&mut other.size);
        if self.spillable != other.spillable {
            let mut st = self.pool.lock();
            if self.spillable {
                st.unspillable -= bytes;
            } else {
                st.unspillable += bytes;
            }
        }
        self.size += bytes;
    }

    /// Gives back `bytes` (at most what is held).
    pub fn shrink(&mut self, bytes: usize) {
        let bytes = bytes.min(self.size);
        let mut st = self.pool.lock();
        st.used -= bytes;
        if !self.spillable {
            st.unspillable -= bytes;
        }
        self.size -= bytes;
        uncount_if_empty(self.size, &mut self.counted, &mut st);
    }

    /// Gives back everything held.
    pub fn free(&mut self) {
        self.shrink(self.size);
    }

    /// Sets the size to `bytes`: shrinks without condition, grows only if the budget allows.
    pub fn try_resize(&mut self, bytes: usize) -> bool {
        if bytes <= self.size {
            self.shrink(self.size - bytes);
            true
        } else {
            self.try_grow(bytes - self.size)
        }
    }
}

/// Counts a spillable reservation taking memory for the first time among those sharing the budget.
fn count(spillable: bool, counted: &mut bool, st: &mut PoolState) {
    if spillable && !*counted {
        *counted = true;
        st.spillable_consumers += 1;
    }
}

/// Holding nothing, a reservation no longer shares the budget: an operator that finished and freed
/// its state leaves its share to those still growing (TPC-DS q78's last joins spilled while a dozen
/// finished builds and aggregates were still counted). It is counted again when it grows.
fn uncount_if_empty(size: usize, counted: &mut bool, st: &mut PoolState) {
    if size == 0 && *counted {
        *counted = false;
        st.spillable_consumers = st.spillable_consumers.saturating_sub(1);
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        // Freed, it is no longer counted among the consumers sharing the budget.
        self.free();
    }
}

/// A round limit at least twice `bytes`, written as the CLI takes it.
fn suggested_limit(bytes: usize) -> String {
    let mb = (bytes as u64 * 2).div_ceil(1_000_000).max(1);
    if mb >= 1000 {
        format!("{}GB", mb.div_ceil(1000))
    } else {
        format!("{mb}MB")
    }
}

/// The bytes `batch` keeps allocated, each allocation counted once however many columns or slices
/// point into it: what an operator holding the batch holds. A batch read back from a spill file
/// counts its one frame buffer once (where `get_array_memory_size` counts it once per column), and a
/// slice counts the whole buffers it keeps alive.
pub fn retained_bytes(batch: &arrow::array::RecordBatch) -> usize {
    RetainedBuffers::default().add(batch)
}

/// The buffers held by the batches an operator keeps, each counted once: the batches an aggregate
/// hands out are slices of its groups' arrays, and `retained_bytes` of every slice would count the
/// whole arrays again (TPC-DS q78's join builds counted 3x what they held and spilled).
#[derive(Default)]
pub struct RetainedBuffers(std::collections::HashSet<usize>);

impl RetainedBuffers {
    /// The bytes of the buffers of `batch` not held already.
    pub fn add(&mut self, batch: &arrow::array::RecordBatch) -> usize {
        fn add(data: &arrow::array::ArrayData, seen: &mut std::collections::HashSet<usize>, total: &mut usize) {
            let nulls = data.nulls().map(|n| n.buffer());
            for buffer in data.buffers().iter().chain(nulls) {
                // A slice's pointer to its allocation is the whole buffer's.
                if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                    *total += buffer.capacity();
                }
            }
            for child in data.child_data() {
                add(child, seen, total);
            }
        }
        let mut total = 0;
        for c in batch.columns() {
            add(&c.to_data(), &mut self.0, &mut total);
        }
        total
    }
}

/// The bytes of the rows of `batch`: a slice of a larger batch counts its share only, and so do the
/// columns of a batch read back from a spill file, which all point into the one buffer its frame was
/// decompressed into (`get_array_memory_size` would count that whole buffer once per column).
pub fn batch_bytes(batch: &arrow::array::RecordBatch) -> usize {
    batch.columns().iter().map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size())).sum()
}

/// Parses a memory size such as `2GB`, `512MB`, `1.5GiB`, `100000` (bytes). As in DuckDB's
/// memory_limit, KB/MB/GB are powers of 1000 and KiB/MiB/GiB powers of 1024.
pub fn parse_memory_size(text: &str) -> std::result::Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a memory size: write a number and a unit, e.g. 2GB or 512MB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => return Err(format!("unknown unit '{other}' in memory size '{text}': use B, KB, MB, GB or TB")),
    };
    let bytes = number * scale as f64;
    if !(bytes >= 1.0 && bytes < usize::MAX as f64) {
        return Err(format!("memory size '{text}' must be at least one byte"));
    }
    Ok(bytes as usize)
}

/// The default budget: 3/4 of the machine's memory (what /proc/meminfo reports), or 4 GiB if unknown.
pub fn default_memory_limit() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        let line = s.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    });
    total.map_or(4 << 30, |t| t / 4 * 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_free_on_drop() {
        let pool = MemoryPool::new(1000);
        let mut a = pool.reservation("Sort", true);
        let mut b = pool.reservation("Sort", true);
        let mut later = pool.reservation("Sort", true);
        assert!(b.try_grow(1));
        assert!(a.try_grow(500));
        assert!(!a.try_grow(1), "a spillable consumer gets at most its fair share");
        assert!(b.try_grow(499));
        assert_eq!(pool.used(), 1000);
        drop(a);
        assert_eq!(pool.used(), 500);
        // With one spillable consumer left, its share is the whole budget: the one that has taken
        // nothing yet does not count until it asks.
        assert!(b.try_grow(500));
        assert!(!b.try_grow(1));
        assert_eq!(pool.peak(), 1000);
        b.shrink(500);
        assert!(!later.try_grow(501), "asking, it counts: half each");
        assert!(later.try_grow(500));
        assert!(!b.try_grow(1));
    }

    #[test]
    fn a_consumer_that_freed_everything_leaves_its_share_to_the_others() {
        let pool = MemoryPool::new(1000);
        let mut finished = pool.reservation("HashAggregate", true);
        let mut split = pool.reservation("HashJoin build", true);
        let mut growing = pool.reservation("HashJoin build", true);
        assert!(finished.try_grow(300));
        assert!(split.try_grow(100));
        assert!(growing.try_grow(300));
        assert!(!growing.try_grow(100), "three share the budget");
        // Still alive, but holding nothing: an operator whose state went out (split off) or was freed.
        finished.free();
        let moved = split.split_off();
        assert!(growing.try_grow(100), "two share it now");
        drop(moved);
        assert!(growing.try_grow(600), "alone, it may take it all");
        assert!(!growing.try_grow(1));
        // Growing again, a freed one is counted again.
        assert!(!finished.try_grow(1));
        growing.shrink(500);
        assert!(finished.try_grow(500));
        assert!(!finished.try_grow(1));
    }

    #[test]
    fn an_unspillable_consumer_takes_memory_spillable_ones_hold_and_they_give_it_back() {
        let pool = MemoryPool::new(1000);
        let mut window = pool.reservation("WindowAggregate", true);
        let mut join = pool.reservation("StreamJoin", false);
        assert!(window.try_grow(1000));
        assert!(!join.try_grow(300), "trying, it does not take what others hold");
        join.grow(300).expect("the spillable consumer's memory can be given back");
        assert_eq!(pool.used(), 1300);
        // Its next growth finds it over its share (what the join leaves): it spills down to that.
        assert!(!window.try_grow(1));
        window.shrink(300);
        assert!(!window.try_grow(1));
        assert_eq!(pool.used(), 1000);
        // What unspillable consumers hold together is still bounded by the limit.
        join.resize(1000).expect("the unspillable ones may hold the limit");
        assert!(join.grow(1).is_err());
        assert!(!window.try_grow(1), "nothing is left for the spillable consumer");
        window.free();
        assert_eq!(pool.used(), 1000);
    }

    #[test]
    fn unspillable_consumers_fail_with_a_clear_error() {
        let pool = MemoryPool::new(1 << 20);
        let mut r = pool.reservation("HashJoin build", false);
        r.grow(1 << 19).unwrap();
        let e = r.grow(1 << 20).unwrap_err().to_string();
        assert!(e.contains("HashJoin build needs 1.0MiB more memory"), "{e}");
        assert!(e.contains("--memory-limit 4MB"), "{e}");
        assert_eq!(r.size(), 1 << 19);
    }

    #[test]
    fn a_query_pool_keeps_a_fifth_of_the_limit_outside_the_operators() {
        assert_eq!(MemoryPool::for_query(2_000_000_000).limit(), 1_600_000_000);
        // At least 192 MiB stays outside, or half a small limit.
        assert_eq!(MemoryPool::for_query(600_000_000).limit(), 600_000_000 - (192 << 20));
        assert_eq!(MemoryPool::for_query(300_000_000).limit(), 150_000_000);
        assert_eq!(MemoryPool::for_query(1).limit(), 1);
        let pool = MemoryPool::for_query(10_000_000);
        assert_eq!(pool.limit(), 5_000_000);
        let mut r = pool.reservation("HashJoin build", false);
        r.grow(3_000_000).unwrap();
        let e = r.grow(2_500_000).unwrap_err().to_string();
        assert!(e.contains("the query's memory limit is 9.5MiB, 4.8MiB of it for operators"), "{e}");
        // Operators need 5.5 MB, which they get from an 11 MB limit: twice that is suggested.
        assert!(e.contains("--memory-limit 22MB"), "{e}");
    }

    #[test]
    fn memory_sizes_parse() {
        assert_eq!(parse_memory_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_memory_size("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_size("1.5gib"), Ok(3 << 29));
        assert_eq!(parse_memory_size("4096"), Ok(4096));
        assert!(parse_memory_size("lots").is_err());
        assert!(parse_memory_size("3 parsecs").is_err());
    }
}
