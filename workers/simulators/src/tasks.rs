//! The simulator's own background tasks (one per call), aborted together on shutdown.

use std::future::Future;
use std::sync::Mutex;

use tokio::task::JoinSet;

use crate::sync::lock;

#[derive(Debug, Default)]
pub(crate) struct Tasks {
    set: Mutex<JoinSet<()>>,
}

impl Tasks {
    pub(crate) fn spawn<F>(&self, future: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut set = lock(&self.set);
        // Reap finished tasks so the set does not grow with every call.
        while set.try_join_next().is_some() {}
        set.spawn(future);
    }

    pub(crate) fn abort_all(&self) {
        lock(&self.set).abort_all();
    }
}
