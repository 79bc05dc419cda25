//! The end of a shared subplan's pipeline (`crate::share`): every message goes to each use's queue.

use std::sync::Arc;

use super::{Exchange, Sink};
use crate::error::Result;
use crate::message::Message;

pub struct TeeSink {
    uses: Vec<Arc<Exchange>>,
    producer: usize,
}

impl TeeSink {
    pub fn new(uses: Vec<Arc<Exchange>>, producer: usize) -> TeeSink {
        TeeSink { uses, producer }
    }
}

impl Sink for TeeSink {
    fn push(&mut self, msg: Message) -> Result<()> {
        for x in &self.uses {
            x.push(self.producer, msg.clone());
        }
        Ok(())
    }

    /// The slowest use holds the subplan back (a buffered use's queue is never full).
    fn has_capacity(&self) -> bool {
        self.uses.iter().all(|x| x.has_capacity(self.producer))
    }

    fn closed(&self) -> bool {
        self.uses.iter().all(|x| x.closed())
    }
}
