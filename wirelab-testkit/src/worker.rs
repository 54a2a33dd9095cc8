//! A worker thread inside a lab namespace: it opens its sockets there, then polls them until
//! its owner drops it (test servers and receivers that count what arrives).
use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// A thread in a network namespace, stopped and joined on drop.
pub struct NsWorker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Move the calling thread into network namespace `ns` (`/run/netns/NS`).
pub fn enter_ns(ns: &str) -> std::io::Result<()> {
    let f = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on an open namespace file descriptor; it only affects this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl NsWorker {
    /// Start a thread in network namespace `ns`. `open` runs there first (binding sockets);
    /// `start` returns once it has. Then `poll` runs until the worker is dropped; after a
    /// `poll` that found nothing to do (returned false) the thread naps for 1 ms.
    /// Panics (failing the test) when the namespace or `open` fails or takes over 10 s.
    pub fn start<S: 'static>(
        ns: &str,
        open: impl FnOnce() -> S + Send + 'static,
        mut poll: impl FnMut(&mut S) -> bool + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (name, st) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            if let Err(e) = enter_ns(&name) {
                let _ = ready_tx.send(Err(format!("entering {name}: {e}")));
                return;
            }
            let mut state = open();
            let _ = ready_tx.send(Ok(()));
            while !st.load(Ordering::Relaxed) {
                if !poll(&mut state) {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("worker: {e}"),
            Err(e) => panic!("worker in {ns:?} not ready: {e}"),
        }
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for NsWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
