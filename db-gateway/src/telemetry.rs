//! Structured logging: one JSON object per line on stderr (stdout is reserved for the
//! `db-gateway listening …` line that scripts parse).
//!
//! Lines are formatted on the thread that logs them and appended to an in-memory buffer; a
//! background thread writes the buffer to stderr at most every [`FLUSH_INTERVAL`] (sooner when
//! it grows past [`FLUSH_THRESHOLD`]). A request therefore never waits on a `write` to stderr
//! (a pipe to journald), and a busy gateway pays one `write` per interval instead of one per
//! access-log line. Handing each line to a writer thread through a channel would move the
//! `write` off the request path too, but costs a thread wake-up (two context switches) per
//! line, which on a two-core machine shared with Postgres is dearer than the write itself.
//!
//! No line is dropped: if stderr cannot keep up and the buffer reaches [`BUFFER_LIMIT`],
//! logging threads wait for the writer. Lines can be up to [`FLUSH_INTERVAL`] late, and are
//! lost only if the process is killed outright; hold the returned [`LogGuard`] until the
//! process ends, since dropping it writes out everything still buffered.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Longest a line waits in the buffer.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Buffered bytes that trigger a write before the interval is over.
const FLUSH_THRESHOLD: usize = 256 * 1024;
/// Buffered bytes beyond which logging threads wait for the writer (backpressure).
const BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// The writer behind the subscriber [`init_tracing`] installed, for the access log's direct
/// path (see `http::observe`); unset when some other subscriber is in charge.
static INSTALLED_WRITER: OnceLock<BatchedWriter> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("GATEWAY_LOG is not a valid tracing filter: {0}")]
    Filter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
    #[error("cannot start the log writer thread: {0}")]
    WriterThread(std::io::Error),
}

/// Installs the global JSON subscriber with `filter` (e.g. `info,db_gateway=debug`), writing
/// to stderr through a [`BatchedWriter`].
pub fn init_tracing(filter: &str) -> Result<LogGuard, TelemetryError> {
    let filter =
        EnvFilter::try_new(filter).map_err(|error| TelemetryError::Filter(error.to_string()))?;
    let (writer, guard) =
        BatchedWriter::spawn(std::io::stderr()).map_err(TelemetryError::WriterThread)?;
    json_subscriber_builder()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    // Only the first successful install gets here, so the cell is empty.
    let _ = INSTALLED_WRITER.set(writer);
    Ok(guard)
}

/// The line format: one flat JSON object per event, with the current span's fields under
/// `span`. `http::observe` writes access-log lines in exactly this format itself (and tests
/// hold it to this builder).
pub(crate) fn json_subscriber_builder() -> tracing_subscriber::fmt::SubscriberBuilder<
    tracing_subscriber::fmt::format::JsonFields,
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
> {
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
}

/// The writer of the subscriber installed by [`init_tracing`], if that is the one in charge.
pub(crate) fn installed_writer() -> Option<&'static BatchedWriter> {
    INSTALLED_WRITER.get()
}

/// Appends whole lines to a shared buffer that a background thread writes out; see the module
/// docs. Cloning shares the buffer.
#[derive(Debug, Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread running; dropping it writes out what is buffered and stops the
/// thread.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<Buffer>,
    /// Signalled when the buffer gains its first bytes, passes the threshold, or closes.
    has_work: Condvar,
    /// Signalled after each write, for threads waiting on a full buffer.
    drained: Condvar,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    closing: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl BatchedWriter {
    /// Starts the writer thread over `output`.
    pub fn spawn(output: impl Write + Send + 'static) -> std::io::Result<(Self, LogGuard)> {
        let shared = Arc::new(Shared::default());
        let thread = std::thread::Builder::new()
            .name("db-gateway-log".to_owned())
            .spawn({
                let shared = shared.clone();
                move || write_until_closed(&shared, output)
            })?;
        Ok((
            Self {
                shared: shared.clone(),
            },
            LogGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }
}

impl BatchedWriter {
    /// Appends `line` (which should end with a newline) to the buffer.
    pub fn append(&self, line: &[u8]) {
        let mut buffer = self.shared.lock();
        while buffer.bytes.len() >= BUFFER_LIMIT && !buffer.closing {
            buffer = self
                .shared
                .drained
                .wait(buffer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let was_empty = buffer.bytes.is_empty();
        let before = buffer.bytes.len();
        buffer.bytes.extend_from_slice(line);
        // Wake the writer only when its state changes: the first bytes start its interval,
        // crossing the threshold cuts the interval short.
        if was_empty || (before < FLUSH_THRESHOLD && buffer.bytes.len() >= FLUSH_THRESHOLD) {
            self.shared.has_work.notify_one();
        }
    }
}

impl Write for BatchedWriter {
    /// tracing-subscriber writes each formatted line with one `write_all`, so lines stay whole.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Lines reach the output within the flush interval; `LogGuard` flushes at exit.
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = BatchedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.has_work.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_until_closed(shared: &Shared, mut output: impl Write) {
    let mut spare = Vec::new();
    loop {
        let mut buffer = shared.lock();
        while buffer.bytes.is_empty() && !buffer.closing {
            buffer = shared
                .has_work
                .wait(buffer)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        // Let a burst gather, unless it is already large or the process is stopping.
        if buffer.bytes.len() < FLUSH_THRESHOLD && !buffer.closing {
            buffer = shared
                .has_work
                .wait_timeout_while(buffer, FLUSH_INTERVAL, |buffer| {
                    buffer.bytes.len() < FLUSH_THRESHOLD && !buffer.closing
                })
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        std::mem::swap(&mut buffer.bytes, &mut spare);
        let closing = buffer.closing;
        drop(buffer);
        shared.drained.notify_all();

        // Nowhere to report a failed log write; the next batch tries again.
        let _ = output.write_all(&spare).and_then(|()| output.flush());
        spare.clear();
        if closing && shared.lock().bytes.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output the test can read back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_by_the_time_the_guard_is_dropped() {
        let output = Captured::default();
        let (writer, guard) = BatchedWriter::spawn(output.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|thread| {
                let mut writer = writer.clone();
                std::thread::spawn(move || {
                    for line in 0..2_000 {
                        writer
                            .write_all(format!("{thread}-{line}\n").as_bytes())
                            .unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);

        let text = String::from_utf8(output.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 8_000);
        for thread in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|line| line.strip_prefix(&format!("{thread}-")))
                .map(|n| n.parse().unwrap())
                .collect();
            assert_eq!(
                mine,
                (0..2_000).collect::<Vec<_>>(),
                "thread {thread} in order"
            );
        }
    }

    #[test]
    fn lines_arrive_without_dropping_the_guard() {
        let output = Captured::default();
        let (mut writer, _guard) = BatchedWriter::spawn(output.clone()).unwrap();
        writer.write_all(b"one line\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while output.0.lock().unwrap().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(output.0.lock().unwrap().as_slice(), b"one line\n");
    }
}
