//! Lock helper: a panic in one simulator task must not wedge every other reader of the records.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, taking over the data if a panicking thread poisoned it (records stay readable).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Resolves once `flag` is true (or its sender is gone). Returns no borrow of the channel, so
/// it can sit in a `select!` whose handlers await.
pub(crate) async fn until_true(flag: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = flag.wait_for(|value| *value).await.map(|_| ());
}
