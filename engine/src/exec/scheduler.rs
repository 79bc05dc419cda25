//! A fixed pool of worker threads, shared by all queries of the process, running pipeline tasks
//! cooperatively: a task runs a few steps, then yields; a blocked task sleeps until something it may
//! wait for changes (any exchange or shared state bumps the notifier), so no thread spins and none is
//! tied to an operator.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::{PipelineTask, Step};
use crate::error::{Result, RiffleError};

/// Steps a task takes before it yields its thread to others, unless `SLICE` passed first.
const QUANTUM: usize = 16;

/// Time a task runs before it yields: steps can be long (a window closing, a batch of a join's
/// build), and a task after it in the pipeline waits meanwhile (the latency of a stream).
const SLICE: Duration = Duration::from_millis(1);

struct State {
    runnable: VecDeque<usize>,
    /// Blocked tasks with the notifier version they last saw.
    blocked: Vec<(usize, u64)>,
    remaining: usize,
    running: usize,
    version: u64,
    /// The earliest time a blocked task asked to be woken at (a source pacing itself on the clock).
    timer: Option<Instant>,
    /// Every task waited once: scans no longer wait for runtime filters (`Notifier::waits_given_up`).
    waits_given_up: bool,
    error: Option<RiffleError>,
}

/// Wakes blocked tasks when shared state changes.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<(Mutex<State>, Condvar)>,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            inner: Arc::new((
                Mutex::new(State {
                    runnable: VecDeque::new(),
                    blocked: Vec::new(),
                    remaining: 0,
                    running: 0,
                    version: 0,
                    timer: None,
                    waits_given_up: false,
                    error: None,
                }),
                Condvar::new(),
            )),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a worker panicked; the panic is reported as an error elsewhere.
        self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes blocked tasks at `when` (or earlier, if something else changes first).
    pub fn wake_at(&self, when: Instant) {
        let mut st = self.lock();
        st.timer = Some(st.timer.map_or(when, |t| t.min(when)));
        drop(st);
        self.inner.1.notify_all();
    }

    /// Whether the query's tasks all waited at once: a scan waiting for a join's runtime filter then
    /// reads without it (the join may wait for the scan's rows through another path).
    pub fn waits_given_up(&self) -> bool {
        self.lock().waits_given_up
    }

    /// Something a blocked task may wait for has changed.
    pub fn bump(&self) {
        let mut st = self.lock();
        st.version += 1;
        drop(st);
        self.inner.1.notify_all();
    }
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier::new()
    }
}

/// One query's tasks, handed to pool workers.
struct Job {
    slots: Vec<Mutex<Option<PipelineTask>>>,
    notifier: Notifier,
    /// Workers that finished with this job.
    finished: (Mutex<usize>, Condvar),
}

/// Worker threads kept for the life of the process: a query hands them its job instead of starting
/// threads of its own, so their allocator caches stay warm from one query to the next. Queries that
/// run at the same time (a job without end beside a batch query, in the Python package or a server)
/// get workers of their own: the pool grows rather than queue a query behind one that never ends.
struct Pool {
    sender: Mutex<mpsc::Sender<Arc<Job>>>,
    receiver: Arc<Mutex<mpsc::Receiver<Arc<Job>>>>,
    workers: Mutex<Workers>,
}

struct Workers {
    started: usize,
    /// Workers handed a job that have not finished with it yet.
    busy: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let (sender, receiver) = mpsc::channel();
        Pool { sender: Mutex::new(sender), receiver: Arc::new(Mutex::new(receiver)), workers: Mutex::new(Workers { started: 0, busy: 0 }) }
    })
}

impl Pool {
    fn workers(&self) -> MutexGuard<'_, Workers> {
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `job` to `n` workers that are not busy with another, starting workers where too few are free.
    fn hand_over(&'static self, job: &Arc<Job>, n: usize) -> Result<()> {
        let mut workers = self.workers();
        while workers.started < workers.busy + n {
            let receiver = self.receiver.clone();
            std::thread::Builder::new()
                .name(format!("riffle-worker-{}", workers.started))
                .spawn(move || loop {
                    let job = receiver.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(job) = job else { return };
                    worker(&job.slots, &job.notifier);
                    self.workers().busy -= 1;
                    let (count, done) = &job.finished;
                    *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    done.notify_all();
                })
                .map_err(|e| RiffleError::exec(format!("cannot start a worker thread: {e} (lower --threads)")))?;
            workers.started += 1;
        }
        workers.busy += n;
        drop(workers);
        let sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..n {
            if sender.send(job.clone()).is_err() {
                // Never happens: the receiver lives as long as the pool.
                return Err(RiffleError::exec("the worker pool has stopped"));
            }
        }
        Ok(())
    }
}

pub fn run(tasks: Vec<PipelineTask>, threads: usize, notifier: &Notifier) -> Result<()> {
    if tasks.is_empty() {
        return Ok(());
    }
    {
        let mut st = notifier.lock();
        st.runnable = (0..tasks.len()).collect();
        st.remaining = tasks.len();
    }
    let workers = threads.min(tasks.len()).max(1);
    let slots = tasks.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let job = Arc::new(Job { slots, notifier: notifier.clone(), finished: (Mutex::new(0), Condvar::new()) });
    pool().hand_over(&job, workers)?;
    // A worker that picks the job up after the others finished it finds nothing to do and returns.
    let (count, done) = &job.finished;
    let mut finished = count.lock().unwrap_or_else(|p| p.into_inner());
    while *finished < workers {
        finished = done.wait(finished).unwrap_or_else(|p| p.into_inner());
    }
    drop(finished);
    // Tasks left unfinished by an error are dropped here, before the query returns, so whatever
    // they hold (spill files, memory) is released by then, not later on a worker thread.
    for slot in &job.slots {
        drop(slot.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
    let mut st = notifier.lock();
    match st.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn worker(slots: &[Mutex<Option<PipelineTask>>], notifier: &Notifier) {
    loop {
        let (id, version) = {
            let mut st = notifier.lock();
            loop {
                if st.error.is_some() || st.remaining == 0 {
                    return;
                }
                // Tasks whose wait may be over queue up behind the runnable ones first: with sources
                // that never block (an endless generator), waking them only when nothing else can run
                // would starve their consumers.
                if st.timer.is_some_and(|t| t <= Instant::now()) {
                    st.timer = None;
                    st.version += 1;
                }
                let v = st.version;
                if st.blocked.iter().any(|(_, seen)| *seen < v) {
                    let (wake, keep): (Vec<_>, Vec<_>) = st.blocked.iter().partition(|(_, seen)| *seen < v);
                    st.blocked = keep;
                    st.runnable.extend(wake.into_iter().map(|(id, _)| id));
                }
                if let Some(id) = st.runnable.pop_front() {
                    st.running += 1;
                    break (id, v);
                }
                if st.running == 0 && st.blocked.len() == st.remaining && st.timer.is_none() {
                    if !st.waits_given_up {
                        // Every task waits: scans waiting for runtime filters read without them.
                        st.waits_given_up = true;
                        st.version += 1;
                        continue;
                    }
                    // Every task waits and nothing runs that could wake one: a bug, not a slow query.
                    st.error = Some(RiffleError::exec("internal error (a bug in Riffle, please report it): pipelines deadlocked"));
                    drop(st);
                    notifier.inner.1.notify_all();
                    return;
                }
                let wait = st.timer.map_or(Duration::from_millis(50), |t| t.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
                let (guard, _) = notifier
                    .inner
                    .1
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|p| p.into_inner());
                st = guard;
            }
        };
        let mut slot = slots[id].lock().unwrap_or_else(|p| p.into_inner());
        let Some(task) = slot.as_mut() else {
            notifier.lock().running -= 1;
            continue;
        };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut step = Step::Progress;
            for _ in 0..QUANTUM {
                step = task.step()?;
                if step != Step::Progress || started.elapsed() >= SLICE {
                    break;
                }
            }
            Ok::<Step, RiffleError>(step)
        }));
        let outcome = match outcome {
            Ok(r) => r,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(RiffleError::exec(format!("internal error (a bug in Riffle, please report it): {what}")))
            }
        };
        if matches!(outcome, Ok(Step::Done) | Err(_)) {
            *slot = None;
        }
        drop(slot);
        let mut st = notifier.lock();
        st.running -= 1;
        match outcome {
            Ok(Step::Progress) => st.runnable.push_back(id),
            Ok(Step::Blocked) => st.blocked.push((id, version)),
            Ok(Step::Done) => {
                st.remaining -= 1;
                st.version += 1;
            }
            Err(e) => {
                if st.error.is_none() {
                    st.error = Some(e);
                }
            }
        }
        drop(st);
        notifier.inner.1.notify_all();
    }
}
