//! Exactly-once checkpoints by aligned barriers, as in Flink.
//!
//! Every `interval`, sources inject the next epoch's barrier at their next work boundary (between
//! morsels or event ranges) and record which work they have completed. Each stateful component
//! writes its state as of the barrier into `dir/chk-<epoch>/` and acks the epoch once all its
//! partitions passed it: a source the work it completed, a window aggregate its open windows, a file
//! sink its files of the epoch (written and synced, not yet visible). When every component acked an
//! epoch, the coordinator writes `dir/MANIFEST` (atomically) naming it: the checkpoint is complete, and
//! the sinks make the epoch's files visible (rename). After a crash, the same job with the same `dir`
//! starts from the manifest's epoch: sources skip the work it covers, state is read back, sinks
//! finish the renames of epochs up to it and delete the files of later ones. Output therefore holds
//! every result exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{Result, RiffleError};

/// Where and how often a streaming job checkpoints.
#[derive(Debug, Clone)]
pub struct CheckpointConfig {
    pub dir: PathBuf,
    pub interval: Duration,
}

/// Work items a source completed, as sorted disjoint ranges `[a, b)` of work numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    pub fn insert(&mut self, w: u64) {
        // The first range that does not end before `w`.
        let i = self.0.partition_point(|(_, b)| *b < w);
        match self.0.get(i).copied() {
            Some((a, b)) if a <= w && w < b => {}
            Some((_, b)) if b == w => {
                self.0[i].1 = w + 1;
                if self.0.get(i + 1).is_some_and(|(a, _)| *a == w + 1) {
                    self.0[i].1 = self.0[i + 1].1;
                    self.0.remove(i + 1);
                }
            }
            Some((a, _)) if a == w + 1 => self.0[i].0 = w,
            _ => self.0.insert(i, (w, w + 1)),
        }
    }

    pub fn contains(&self, w: u64) -> bool {
        let i = self.0.partition_point(|(_, b)| *b <= w);
        self.0.get(i).is_some_and(|(a, _)| *a <= w)
    }

    /// Every number in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().flat_map(|(a, b)| *a..*b)
    }

    pub fn union(&mut self, other: &RangeSet) {
        for (a, b) in &other.0 {
            for w in *a..*b {
                self.insert(w);
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.0.iter().map(|(a, b)| serde_json::json!([a, b])).collect())
    }

    pub fn from_json(v: &serde_json::Value) -> Option<RangeSet> {
        let ranges = v
            .as_array()?
            .iter()
            .map(|r| Some((r.get(0)?.as_u64()?, r.get(1)?.as_u64()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(RangeSet(ranges))
    }
}

/// Called with an epoch once its checkpoint is complete (a sink making that epoch's files visible).
type Committer = Box<dyn Fn(u64) -> Result<()> + Send + Sync>;

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Coordinator({}, every {:?}, from epoch {})", self.dir.display(), self.interval, self.restored)
    }
}

pub struct Coordinator {
    dir: PathBuf,
    interval: Duration,
    /// The last complete checkpoint when the job started (0: none).
    pub restored: u64,
    /// Whether the manifest says the job already ran to its end.
    pub finished: bool,
    state: Mutex<State>,
    /// The snapshot writer's queue: state taken at a barrier is written (and acked) there while the
    /// operators go on; a component's retirement queues behind its writes.
    writer: Mutex<std::sync::mpsc::Sender<WriteJob>>,
    /// The first write that failed: the job fails with it.
    failed: Mutex<Option<String>>,
}

type WriteJob = Box<dyn FnOnce(&Coordinator) -> Result<()> + Send>;

struct State {
    /// Per component: the last epoch it acked, `u64::MAX` once it ended.
    acked: Vec<u64>,
    /// The highest epoch any component acked.
    highest: u64,
    completed: u64,
    /// The last epoch sources were told to start.
    triggered: u64,
    /// When the next epoch may start.
    next_trigger: Instant,
    committers: Vec<Committer>,
    /// The last state of components that ended, written into every checkpoint after the last one
    /// they acked themselves: (after epoch, file, bytes).
    ended_state: Vec<(u64, String, Vec<u8>)>,
}

fn io(path: &Path, e: std::io::Error) -> RiffleError {
    RiffleError::exec(format!("checkpoint: {}: {e}", path.display()))
}

impl Coordinator {
    /// Opens (or creates) a job's checkpoint directory and reads its manifest, if any.
    pub fn open(config: &CheckpointConfig) -> Result<Arc<Coordinator>> {
        std::fs::create_dir_all(&config.dir).map_err(|e| io(&config.dir, e))?;
        let manifest = config.dir.join("MANIFEST");
        let (restored, finished) = match std::fs::read_to_string(&manifest) {
            Ok(text) => {
                let v: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| RiffleError::exec(format!("checkpoint: {} is damaged ({e}); remove the directory to start afresh", manifest.display())))?;
                let epoch = v.get("epoch").and_then(|e| e.as_u64()).unwrap_or(0);
                (epoch, v.get("finished").and_then(|f| f.as_bool()).unwrap_or(false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, false),
            Err(e) => return Err(io(&manifest, e)),
        };
        // A crashed run may have left checkpoints it never completed: their numbers are taken again
        // from the restored one on, and a stale file among new ones would restore state twice.
        for entry in std::fs::read_dir(&config.dir).map_err(|e| io(&config.dir, e))?.flatten() {
            let name = entry.file_name();
            let epoch = name.to_str().and_then(|n| n.strip_prefix("chk-")).and_then(|n| n.parse::<u64>().ok());
            if epoch.is_some_and(|e| e != restored) {
                std::fs::remove_dir_all(entry.path()).map_err(|e| io(&entry.path(), e))?;
            }
        }
        let (sender, jobs) = std::sync::mpsc::channel::<WriteJob>();
        let coordinator = Arc::new(Coordinator {
            dir: config.dir.clone(),
            interval: config.interval.max(Duration::from_millis(1)),
            restored,
            finished,
            state: Mutex::new(State {
                acked: vec![],
                highest: restored,
                completed: restored,
                triggered: restored,
                next_trigger: Instant::now() + config.interval,
                committers: vec![],
                ended_state: vec![],
            }),
            writer: Mutex::new(sender),
            failed: Mutex::new(None),
        });
        // The writer holds the coordinator weakly: it ends once the job let go of it.
        let weak = Arc::downgrade(&coordinator);
        std::thread::Builder::new()
            .name("riffle-snapshots".into())
            .spawn(move || {
                for job in jobs {
                    let Some(c) = weak.upgrade() else { return };
                    if c.failure().is_none() {
                        if let Err(e) = job(&c) {
                            *c.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                    }
                }
            })
            .map_err(|e| RiffleError::exec(format!("cannot start the checkpoint writer: {e}")))?;
        Ok(coordinator)
    }

    fn failure(&self) -> Option<String> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Queues `job` behind the snapshots already queued; fails if a write already failed.
    fn enqueue(&self, job: WriteJob) -> Result<()> {
        if let Some(e) = self.failure() {
            return Err(RiffleError::exec(e));
        }
        let sender = self.writer.lock().map_err(|_| RiffleError::exec("checkpoint writer lock poisoned"))?;
        sender.send(job).map_err(|_| RiffleError::exec("the checkpoint writer stopped"))
    }

    /// Component `c`'s state as of barrier `e`, taken: `write` puts it into the checkpoint on the
    /// writer thread (processing goes on meanwhile), then the epoch is acked for `c`.
    pub fn save_async(&self, c: usize, e: u64, write: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        self.enqueue(Box::new(move |coordinator| {
            write()?;
            coordinator.ack(c, e)
        }))
    }

    /// Queues a write of state that a later `save_async` of the same epoch acks.
    pub fn write_async(&self, write: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        self.enqueue(Box::new(move |_| write()))
    }

    /// Waits until every queued write is done; the first failure, if any.
    pub fn drain(&self) -> Result<()> {
        let (done, wait) = std::sync::mpsc::channel();
        self.enqueue(Box::new(move |_| {
            let _ = done.send(());
            Ok(())
        }))?;
        // A failed write skips the jobs behind it: the sender is dropped unsent.
        let _ = wait.recv();
        match self.failure() {
            Some(e) => Err(RiffleError::exec(e)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>> {
        self.state.lock().map_err(|_| RiffleError::exec("checkpoint coordinator lock poisoned"))
    }

    /// A component whose acks every checkpoint needs; its number.
    pub fn register(&self) -> Result<usize> {
        let mut st = self.lock()?;
        let restored = self.restored;
        st.acked.push(restored);
        Ok(st.acked.len() - 1)
    }

    /// Calls `commit(target, epoch)` once each epoch is complete, for as long as `target` lives (the
    /// coordinator does not keep it alive).
    pub fn commit_to<T: Send + Sync + 'static>(&self, target: &Arc<T>, commit: fn(&T, u64) -> Result<()>) -> Result<()> {
        let target = Arc::downgrade(target);
        let committer: Committer = Box::new(move |epoch| match target.upgrade() {
            Some(t) => commit(&t, epoch),
            None => Ok(()),
        });
        self.lock()?.committers.push(committer);
        Ok(())
    }

    /// The epoch sources should have started by now: one more every interval, but only one
    /// checkpoint at a time, and after one that took longer than the interval, half an interval of
    /// processing before the next (as Flink's minimum pause): otherwise a job whose checkpoints are
    /// slower than its interval would do little but checkpoint.
    pub fn due_epoch(&self) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.triggered > st.completed {
            return st.triggered;
        }
        let now = Instant::now();
        if now >= st.next_trigger {
            st.triggered += 1;
            st.next_trigger = now + self.interval;
        }
        st.triggered
    }

    /// The directory of epoch `e`'s state (created).
    pub fn epoch_dir(&self, e: u64) -> Result<PathBuf> {
        let d = self.dir.join(format!("chk-{e}"));
        std::fs::create_dir_all(&d).map_err(|err| io(&d, err))?;
        Ok(d)
    }

    /// The directory of operator `name`'s state in epoch `e` (created).
    pub fn state_dir(&self, e: u64, name: &str) -> Result<PathBuf> {
        let d = self.epoch_dir(e)?.join(name);
        std::fs::create_dir_all(&d).map_err(|err| io(&d, err))?;
        Ok(d)
    }

    /// The state of the checkpoint the job restarts from.
    pub fn restore_dir(&self) -> Option<PathBuf> {
        (self.restored > 0).then(|| self.dir.join(format!("chk-{}", self.restored)))
    }

    /// Component `c` wrote its state for epoch `e`.
    pub fn ack(&self, c: usize, e: u64) -> Result<()> {
        let mut st = self.lock()?;
        if let Some(a) = st.acked.get_mut(c) {
            *a = (*a).max(e);
        }
        st.highest = st.highest.max(e);
        self.complete(&mut st)
    }

    /// Component `c` ended: it holds nothing any later checkpoint needs.
    pub fn retire(&self, c: usize) -> Result<()> {
        self.retire_with(c, None)
    }

    /// Component `c` ended, its last state `(file, bytes)`: every later checkpoint holds that file,
    /// so a job restored from one knows the component ran to its end (a source that ended while
    /// another goes on reads nothing again).
    ///
    /// Queued behind the component's snapshot writes: an epoch it saved asynchronously must not
    /// complete without its state.
    pub fn retire_with(&self, c: usize, last: Option<(String, Vec<u8>)>) -> Result<()> {
        self.enqueue(Box::new(move |coordinator| coordinator.retire_now(c, last)))
    }

    fn retire_now(&self, c: usize, last: Option<(String, Vec<u8>)>) -> Result<()> {
        let mut st = self.lock()?;
        let own = st.acked.get(c).copied().unwrap_or(0);
        st.ended_state.extend(last.map(|(file, bytes)| (own, file, bytes)));
        if let Some(a) = st.acked.get_mut(c) {
            *a = u64::MAX;
        }
        self.complete(&mut st)
    }

    fn complete(&self, st: &mut State) -> Result<()> {
        let all = st.acked.iter().copied().min().unwrap_or(u64::MAX).min(st.highest);
        if all <= st.completed {
            return Ok(());
        }
        self.commit_epoch(st, all, false)
    }

    /// The job ran to its end: a last checkpoint, marked finished, commits everything.
    pub fn finish(&self) -> Result<()> {
        self.drain()?;
        let mut st = self.lock()?;
        let last = st.highest.max(st.completed) + 1;
        self.commit_epoch(&mut st, last, true)
    }

    /// Epoch `epoch` is complete: the manifest names it, sinks commit up to it, and the checkpoints
    /// since the last complete one (which it supersedes) are deleted.
    fn commit_epoch(&self, st: &mut State, epoch: u64, finished: bool) -> Result<()> {
        if !finished {
            for (after, file, bytes) in &st.ended_state {
                if epoch > *after {
                    write_synced(&self.epoch_dir(epoch)?.join(file), bytes)?;
                }
            }
        }
        self.write_manifest(epoch, finished)?;
        let previous = std::mem::replace(&mut st.completed, epoch);
        st.triggered = st.triggered.max(epoch);
        st.next_trigger = st.next_trigger.max(Instant::now() + self.interval / 2);
        for c in &st.committers {
            c(epoch)?;
        }
        for old in previous.max(1)..epoch {
            let _ = std::fs::remove_dir_all(self.dir.join(format!("chk-{old}")));
        }
        if finished {
            // A finished job is not restored: the state its checkpoints shared is needed no more.
            let _ = std::fs::remove_dir_all(self.dir.join("shared"));
        }
        Ok(())
    }

    fn write_manifest(&self, epoch: u64, finished: bool) -> Result<()> {
        let path = self.dir.join("MANIFEST");
        let staging = self.dir.join(".MANIFEST.staging");
        let text = serde_json::json!({ "epoch": epoch, "finished": finished }).to_string();
        write_synced(&staging, text.as_bytes())?;
        riffle_formats::commit_staged(&staging, &path)?;
        Ok(())
    }
}

/// Writes a file and syncs it to disk.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(|e| io(path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io(path, e))
}

/// What a component writes for an epoch: a JSON document beside its Arrow files.
pub fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| RiffleError::exec(format!("checkpoint: {} is damaged ({e}); remove the checkpoint directory to start afresh", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path, e)),
    }
}

/// Arrow IPC files of checkpointed batches.
pub fn write_batches(path: &Path, batches: &[arrow::array::RecordBatch]) -> Result<()> {
    write_batches_from(path, batches.iter().cloned().map(Ok))
}

/// Writes batches made one at a time (read back from spill files, say) into one file, synced;
/// nothing is written when there are none.
pub fn write_batches_from(path: &Path, batches: impl IntoIterator<Item = Result<arrow::array::RecordBatch>>) -> Result<()> {
    let mut batches = batches.into_iter();
    let Some(first) = batches.next().transpose()? else { return Ok(()) };
    let file = std::fs::File::create(path).map_err(|e| io(path, e))?;
    let mut w = arrow::ipc::writer::FileWriter::try_new(std::io::BufWriter::new(file), &first.schema())?;
    w.write(&first)?;
    for b in batches {
        w.write(&b?)?;
    }
    w.finish()?;
    let file = w.into_inner()?.into_inner().map_err(|e| RiffleError::exec(format!("checkpoint: {}: {e}", path.display())))?;
    file.sync_all().map_err(|e| io(path, e))
}

pub fn read_batches(path: &Path) -> Result<Vec<arrow::array::RecordBatch>> {
    batches_in(path)?.collect()
}

/// The batches of a file `write_batches` wrote, read one at a time.
pub fn batches_in(path: &Path) -> Result<impl Iterator<Item = Result<arrow::array::RecordBatch>>> {
    let file = std::fs::File::open(path).map_err(|e| io(path, e))?;
    let reader = arrow::ipc::reader::FileReader::try_new(std::io::BufReader::new(file), None)?;
    Ok(reader.map(|b| Ok(b?)))
}

/// The files of an operator's incremental checkpoints, in `DIR/shared/<name>/`: each is written
/// once, by the epoch that made it, named by every later checkpoint that still needs its rows, and
/// deleted once the last complete checkpoint no longer names it (as Flink's incremental RocksDB
/// checkpoints share SST files).
pub struct SharedFiles {
    dir: PathBuf,
    /// Per epoch taken but not complete yet, the files it names.
    pending: Mutex<BTreeMap<u64, Vec<String>>>,
}

impl SharedFiles {
    /// Opens the operator's shared directory; of the files there, those the checkpoint the job
    /// restarts from does not name (`restored`) are left by checkpoints that never completed, and go.
    pub fn open(coordinator: &Arc<Coordinator>, name: &str, restored: &[String]) -> Result<Arc<SharedFiles>> {
        let dir = coordinator.dir.join("shared").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        remove_other_files(&dir, restored)?;
        let files = Arc::new(SharedFiles { dir, pending: Mutex::new(BTreeMap::new()) });
        coordinator.commit_to(&files, SharedFiles::completed)?;
        Ok(files)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Epoch `e`'s snapshot names `files` (more of them, from each partition that passed its barrier).
    pub fn taken(&self, e: u64, files: Vec<String>) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).entry(e).or_default().extend(files);
    }

    /// Epoch `e` is complete: what it does not name is needed no more.
    fn completed(&self, e: u64) -> Result<()> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let Some(named) = pending.remove(&e) else { return Ok(()) };
        pending.retain(|epoch, _| *epoch > e);
        let later: Vec<String> = pending.values().flatten().cloned().collect();
        drop(pending);
        remove_other_files(&self.dir, &[named, later].concat())
    }
}

/// Files an incremental chain holds at most before it is written whole again: a restore reads them
/// all, and state that only grows would otherwise add one every checkpoint forever.
pub const MAX_CHAIN: usize = 32;

/// Whether an incremental snapshot writes its state whole instead of what changed: the first time,
/// and when the chain of files (`chain` of them, holding `named` rows) would otherwise hold more than
/// twice the `live` rows, or grow past `MAX_CHAIN` (compaction, bounding what a restore reads).
pub fn compact_now(chain: usize, named: usize, changed: usize, live: usize) -> bool {
    chain == 0 || chain >= MAX_CHAIN || named + changed > 2 * live
}

/// Deletes the files of `dir` not in `keep`.
fn remove_other_files(dir: &Path, keep: &[String]) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Where an operator puts its state in each checkpoint: its component (whose acks complete an
/// epoch) and its directory.
#[derive(Clone)]
pub struct OperatorCheckpoint {
    pub coordinator: Arc<Coordinator>,
    pub component: usize,
    /// The directory of the operator's state inside each checkpoint.
    pub name: String,
}

impl OperatorCheckpoint {
    pub fn register(coordinator: &Arc<Coordinator>, name: String) -> Result<OperatorCheckpoint> {
        Ok(OperatorCheckpoint { coordinator: coordinator.clone(), component: coordinator.register()?, name })
    }

    /// Its state in the checkpoint the job restarts from, if any.
    pub fn restore_dir(&self) -> Option<PathBuf> {
        Some(self.coordinator.restore_dir()?.join(&self.name))
    }
}

/// Per-epoch bookkeeping of a component with several partitions: an epoch is done once every
/// partition passed it or ended.
#[derive(Debug)]
pub struct EpochTracker {
    /// Per partition, the last epoch it passed (`u64::MAX` once ended).
    passed: Vec<u64>,
    done: u64,
}

impl EpochTracker {
    pub fn new(partitions: usize, restored: u64) -> EpochTracker {
        EpochTracker { passed: vec![restored; partitions], done: restored }
    }

    /// Partition `p` passed epoch `e` (or ended, with `u64::MAX`); the epochs now done by all.
    pub fn pass(&mut self, p: usize, e: u64) -> std::ops::Range<u64> {
        if let Some(slot) = self.passed.get_mut(p) {
            *slot = (*slot).max(e);
        }
        let all = self.passed.iter().copied().min().unwrap_or(u64::MAX);
        let highest = self.passed.iter().copied().filter(|x| *x != u64::MAX).max().unwrap_or(self.done);
        let to = all.min(highest.max(self.done));
        let range = self.done + 1..to + 1;
        self.done = self.done.max(to);
        range
    }

    pub fn all_ended(&self) -> bool {
        self.passed.iter().all(|p| *p == u64::MAX)
    }

    /// Whether partition `p` is past an epoch the others have not all passed yet.
    pub fn ahead(&self, p: usize) -> bool {
        self.passed.get(p).is_some_and(|x| *x != u64::MAX && *x > self.done)
    }
}

/// Checkpointed state a component keeps per epoch until all its partitions passed it.
pub type PerEpoch<T> = BTreeMap<u64, T>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sets_merge_neighbours() {
        let mut r = RangeSet::default();
        for w in [3, 1, 2, 7, 5, 6, 0] {
            r.insert(w);
        }
        assert_eq!(r.0, vec![(0, 4), (5, 8)]);
        assert!(r.contains(3) && !r.contains(4) && r.contains(7) && !r.contains(8));
        r.insert(4);
        assert_eq!(r.0, vec![(0, 8)]);
        assert_eq!(RangeSet::from_json(&r.to_json()), Some(r));
    }

    #[test]
    fn snapshots_are_written_behind_the_operators_and_acked_when_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = CheckpointConfig { dir: dir.path().to_path_buf(), interval: Duration::from_secs(1) };
        let c = Coordinator::open(&config).expect("open");
        let component = c.register().expect("register");
        let state = c.state_dir(1, "op").expect("dir").join("state");
        let (go, wait) = std::sync::mpsc::channel::<()>();
        c.save_async(component, 1, move || {
            // The operator went on before this write (held back here) was done.
            let _ = wait.recv();
            write_synced(&state, b"saved")
        })
        .expect("queued");
        assert!(!dir.path().join("MANIFEST").exists(), "epoch 1 complete before its state was written");
        go.send(()).expect("send");
        c.drain().expect("written");
        assert_eq!(std::fs::read_to_string(dir.path().join("MANIFEST")).expect("manifest"), r#"{"epoch":1,"finished":false}"#);
        assert_eq!(std::fs::read(dir.path().join("chk-1/op/state")).expect("state"), b"saved");
        // A failed write fails the job: the next save and the end say why; the epoch never completes.
        c.save_async(component, 2, || Err(RiffleError::exec("disk full"))).expect("queued");
        assert!(c.drain().is_err_and(|e| e.to_string().contains("disk full")));
        assert!(c.save_async(component, 3, || Ok(())).is_err());
        assert!(c.finish().is_err());
        assert_eq!(std::fs::read_to_string(dir.path().join("MANIFEST")).expect("manifest"), r#"{"epoch":1,"finished":false}"#);
    }

    #[test]
    fn an_epoch_is_done_when_every_partition_passed_it_or_ended() {
        let mut t = EpochTracker::new(2, 0);
        assert_eq!(t.pass(0, 1), 1..1);
        assert!(t.ahead(0) && !t.ahead(1));
        assert_eq!(t.pass(1, 2), 1..2);
        assert_eq!(t.pass(0, u64::MAX), 2..3);
        assert!(!t.all_ended());
        assert_eq!(t.pass(1, u64::MAX), 3..3);
        assert!(t.all_ended());
    }
}
