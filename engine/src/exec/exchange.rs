//! The queue between pipelines: N producer partitions, M consumer partitions, bounded.
//!
//! Data batches go round-robin to the consumers, or to the consumer a producer names (`push_to`: a
//! hash partitioning sends each key's rows to one consumer). Control messages are aligned across producers before
//! they are broadcast to every consumer: a watermark advances to the minimum over live producers; a
//! barrier is forwarded once every live producer delivered it, and a producer that delivered it waits
//! (no credit) until then, so no post-barrier row overtakes the barrier (aligned checkpoints); `End`
//! follows the last producer's end. A producer that said it is idle does not hold the watermark back
//! until it sends a batch or a watermark again; once every live producer is idle the consumers get
//! the highest watermark reached and are told so, and the first producer to wake tells them with
//! the last watermark (they wake too).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use super::scheduler::Notifier;
use crate::message::{Epoch, Message, Timestamp};

struct State {
    queues: Vec<VecDeque<Message>>,
    queued_batches: usize,
    next: usize,
    ended: Vec<bool>,
    watermarks: Vec<Option<Timestamp>>,
    /// Producers idle since their last batch or watermark.
    idle: Vec<bool>,
    /// The consumers were told every producer is idle.
    emitted_idle: bool,
    emitted_watermark: Option<Timestamp>,
    barriers: Vec<Option<Epoch>>,
    consumers_closed: Vec<bool>,
}

pub struct Exchange {
    state: Mutex<State>,
    /// Batches that may wait in the queue before producers are held back; `usize::MAX` = unbounded.
    capacity: usize,
    notifier: Notifier,
}

impl Exchange {
    pub fn new(producers: usize, consumers: usize, capacity: usize, notifier: Notifier) -> Exchange {
        Exchange {
            state: Mutex::new(State {
                queues: (0..consumers).map(|_| VecDeque::new()).collect(),
                queued_batches: 0,
                next: 0,
                ended: vec![false; producers],
                watermarks: vec![None; producers],
                idle: vec![false; producers],
                emitted_idle: false,
                emitted_watermark: None,
                barriers: vec![None; producers],
                consumers_closed: vec![false; consumers],
            }),
            capacity,
            notifier,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `producer` may push now.
    pub fn has_capacity(&self, producer: usize) -> bool {
        let st = self.lock();
        st.barriers[producer].is_none() && st.queued_batches < self.capacity.saturating_mul(st.queues.len())
    }

    /// Whether every consumer has stopped reading.
    pub fn closed(&self) -> bool {
        self.lock().consumers_closed.iter().all(|c| *c)
    }

    /// Wakes the consumers waiting: work for them appeared elsewhere.
    pub fn notify(&self) {
        self.notifier.bump();
    }

    pub fn push(&self, producer: usize, msg: Message) {
        let mut st = self.lock();
        if matches!(msg, Message::Batch(_) | Message::Watermark(_)) && st.idle[producer] {
            st.idle[producer] = false;
            Self::wake(&mut st);
        }
        match msg {
            Message::Batch(b) => {
                let n = st.queues.len();
                let mut target = st.next;
                // Skip consumers that stopped reading.
                for _ in 0..n {
                    if !st.consumers_closed[target] {
                        break;
                    }
                    target = (target + 1) % n;
                }
                st.next = (target + 1) % n;
                if !st.consumers_closed[target] {
                    st.queues[target].push_back(Message::Batch(b));
                    st.queued_batches += 1;
                }
            }
            Message::Watermark(t) => {
                st.watermarks[producer] = Some(t);
                Self::advance_watermark(&mut st);
            }
            Message::Barrier(e) => {
                st.barriers[producer] = Some(e);
                Self::align_barrier(&mut st);
            }
            Message::Idle => {
                st.idle[producer] = true;
                Self::advance_watermark(&mut st);
                Self::tell_idle(&mut st);
            }
            Message::End => {
                st.ended[producer] = true;
                st.barriers[producer] = None;
                // The rest may now be aligned without this producer.
                Self::align_barrier(&mut st);
                Self::advance_watermark(&mut st);
                if st.ended.iter().all(|e| *e) {
                    broadcast(&mut st, Message::End);
                } else {
                    Self::tell_idle(&mut st);
                }
            }
        }
        drop(st);
        self.notifier.bump();
    }

    /// A batch for `consumer` (dropped if it stopped reading).
    pub fn push_to(&self, consumer: usize, batch: arrow::array::RecordBatch) {
        let mut st = self.lock();
        // The producer is not named: a keyed sink tells its idleness and wakes through `push`.
        if !st.consumers_closed[consumer] {
            st.queues[consumer].push_back(Message::Batch(batch));
            st.queued_batches += 1;
        }
        drop(st);
        self.notifier.bump();
    }

    fn advance_watermark(st: &mut State) {
        let live = (0..st.ended.len()).filter(|p| !st.ended[*p] && !st.idle[*p]).map(|p| st.watermarks[p]);
        let mut min: Option<Timestamp> = None;
        for w in live {
            match w {
                None => return, // a live producer has not reported yet
                Some(w) => min = Some(min.map_or(w, |m: Timestamp| m.min(w))),
            }
        }
        if let Some(m) = min {
            if st.emitted_watermark.is_none_or(|e| m > e) {
                st.emitted_watermark = Some(m);
                broadcast(st, Message::Watermark(m));
            }
        }
    }

    /// Once every live producer is idle, the consumers are told (once), after the highest watermark
    /// any producer reached (as Flink's valve does: nothing is coming, so nothing can be late).
    fn tell_idle(st: &mut State) {
        let live = || (0..st.ended.len()).filter(|p| !st.ended[*p]);
        if st.emitted_idle || !live().all(|p| st.idle[p]) {
            return;
        }
        let highest = live().filter_map(|p| st.watermarks[p]).max();
        if let Some(w) = highest.filter(|w| st.emitted_watermark.is_none_or(|e| *w > e)) {
            st.emitted_watermark = Some(w);
            broadcast(st, Message::Watermark(w));
        }
        st.emitted_idle = true;
        broadcast(st, Message::Idle);
    }

    /// A producer woke: consumers told every producer was idle wake too, by the last watermark
    /// again (a batch reaches one consumer only; the watermark holds nothing back that it did not).
    fn wake(st: &mut State) {
        if std::mem::take(&mut st.emitted_idle) {
            if let Some(w) = st.emitted_watermark {
                broadcast(st, Message::Watermark(w));
            }
        }
    }

    fn align_barrier(st: &mut State) {
        let live: Vec<Option<Epoch>> =
            st.ended.iter().zip(&st.barriers).filter(|(e, _)| !**e).map(|(_, b)| *b).collect();
        if live.is_empty() || live.iter().any(|b| b.is_none()) {
            return;
        }
        if let Some(epoch) = live.iter().flatten().min().copied() {
            for b in st.barriers.iter_mut() {
                *b = None;
            }
            broadcast(st, Message::Barrier(epoch));
        }
    }

    /// The next message for `consumer`, if one is waiting.
    pub fn pop(&self, consumer: usize) -> Option<Message> {
        let mut st = self.lock();
        let msg = st.queues[consumer].pop_front();
        if matches!(msg, Some(Message::Batch(_))) {
            st.queued_batches -= 1;
            drop(st);
            self.notifier.bump();
        }
        msg
    }

    /// `consumer` reads no more; its queue is dropped.
    pub fn close_consumer(&self, consumer: usize) {
        let mut st = self.lock();
        st.consumers_closed[consumer] = true;
        let dropped = st.queues[consumer].iter().filter(|m| matches!(m, Message::Batch(_))).count();
        st.queued_batches -= dropped;
        st.queues[consumer].clear();
        drop(st);
        self.notifier.bump();
    }
}

fn broadcast(st: &mut State, msg: Message) {
    for q in st.queues.iter_mut() {
        q.push_back(msg.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, RecordBatch};
    use std::sync::Arc;

    fn batch() -> Message {
        let a = Arc::new(Int32Array::from(vec![1])) as arrow::array::ArrayRef;
        Message::Batch(RecordBatch::try_from_iter([("a", a)]).unwrap())
    }

    fn drain(x: &Exchange, c: usize) -> Vec<String> {
        std::iter::from_fn(|| x.pop(c))
            .map(|m| match m {
                Message::Batch(_) => "B".to_string(),
                Message::Watermark(t) => format!("W{t}"),
                Message::Barrier(e) => format!("C{e}"),
                Message::Idle => "I".to_string(),
                Message::End => "E".to_string(),
            })
            .collect()
    }

    #[test]
    fn barrier_waits_for_every_producer_and_blocks_the_early_one() {
        let x = Exchange::new(2, 1, 100, Notifier::new());
        x.push(0, batch());
        x.push(0, Message::Barrier(1));
        assert!(!x.has_capacity(0), "a producer past the barrier must wait for alignment");
        assert!(x.has_capacity(1));
        x.push(1, batch());
        assert_eq!(drain(&x, 0), ["B", "B"]);
        x.push(1, Message::Barrier(1));
        assert!(x.has_capacity(0));
        x.push(0, batch());
        assert_eq!(drain(&x, 0), ["C1", "B"]);
    }

    #[test]
    fn watermark_is_minimum_over_live_producers() {
        let x = Exchange::new(2, 2, 100, Notifier::new());
        x.push(0, Message::Watermark(10));
        assert!(drain(&x, 0).is_empty());
        x.push(1, Message::Watermark(5));
        assert_eq!(drain(&x, 0), ["W5"]);
        assert_eq!(drain(&x, 1), ["W5"]);
        x.push(1, Message::End);
        // The ended producer no longer holds the watermark back.
        assert_eq!(drain(&x, 1), ["W10"]);
        x.push(0, Message::End);
        assert_eq!(drain(&x, 0), ["W10", "E"]);
    }

    #[test]
    fn an_idle_producer_holds_no_watermark_back_until_it_wakes() {
        let x = Exchange::new(3, 2, 100, Notifier::new());
        x.push(0, Message::Watermark(10));
        x.push(1, Message::Watermark(3));
        // Producer 2 never reported a watermark: nothing moves until it is idle.
        assert!(drain(&x, 0).is_empty());
        x.push(2, Message::Idle);
        assert_eq!(drain(&x, 0), ["W3"]);
        // Producer 1 still holds the watermark at 3 ...
        x.push(0, Message::Idle);
        assert!(drain(&x, 0).is_empty());
        // ... until every producer is idle: then the highest watermark, and the consumers are told.
        x.push(1, Message::Idle);
        assert_eq!(drain(&x, 0), ["W10", "I"]);
        // A producer that wakes wakes the consumers (the last watermark again); the watermark
        // follows the producers awake.
        x.push(1, Message::Watermark(15));
        assert_eq!(drain(&x, 0), ["W10", "W15"]);
        // One that wakes behind holds it where its own is until it catches up.
        x.push(0, Message::Watermark(12));
        x.push(0, Message::Watermark(30));
        assert!(drain(&x, 0).is_empty());
        x.push(1, Message::Watermark(40));
        assert_eq!(drain(&x, 1), ["W3", "W10", "I", "W10", "W15", "W30"]);
        // Ended producers count neither as idle nor as awake; the last one's end ends the stream.
        x.push(0, Message::End);
        x.push(2, Message::End);
        x.push(1, Message::Idle);
        x.push(1, Message::End);
        assert_eq!(drain(&x, 0), ["W30", "W40", "I", "E"]);
    }

    #[test]
    fn bounded_queue_applies_backpressure() {
        let x = Exchange::new(1, 1, 2, Notifier::new());
        x.push(0, batch());
        x.push(0, batch());
        assert!(!x.has_capacity(0));
        x.pop(0);
        assert!(x.has_capacity(0));
    }
}
