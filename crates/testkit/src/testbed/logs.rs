//! Log capture for tests: a buffer a `tracing` fmt subscriber writes into, so a test can search what was
//! logged (for secrets, or for the lines an event must produce). It owns the buffer and the subscriber set-up,
//! not what the tests look for.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::subscriber::DefaultGuard;

/// Everything logged into it, shared by its clones (the subscriber holds one, the test another).
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    /// A new capture behind a DEBUG-level, colourless fmt subscriber installed for the current thread until the
    /// guard drops. With `#[tokio::test]` (a current-thread runtime) every task logs into it.
    pub fn thread_debug() -> (LogCapture, DefaultGuard) {
        let logs = LogCapture::default();
        let guard = tracing::subscriber::set_default(logs.subscriber(tracing::Level::DEBUG));
        (logs, guard)
    }

    /// A colourless fmt subscriber at `level` writing into this capture (for `set_global_default`).
    pub fn subscriber(&self, level: tracing::Level) -> impl tracing::Subscriber + Send + Sync {
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(self.clone())
            .with_ansi(false)
            .finish()
    }

    /// What has been logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock()).into_owned()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
