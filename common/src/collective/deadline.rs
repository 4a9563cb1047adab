//! Waiting on work that may never finish (a collective whose peer died) with a way out: an
//! abort flag another thread sets, and a deadline. The NCCL backend waits this way, because
//! NCCL itself waits for a dead peer forever; the logic is here, free of CUDA, so the CPU
//! tests check it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::CollectiveError;

/// Polls `done` until it says the work is complete. Fails as soon as `check` fails (e.g. an
/// error the library reports asynchronously), `abort` is set, or `timeout` has passed.
pub(crate) fn poll_until(
    during: &'static str,
    timeout: Duration,
    abort: &AtomicBool,
    mut done: impl FnMut() -> Result<bool, CollectiveError>,
    mut check: impl FnMut() -> Result<(), CollectiveError>,
) -> Result<(), CollectiveError> {
    let deadline = Instant::now() + timeout;
    let mut polls = 0u32;
    loop {
        if done()? {
            return Ok(());
        }
        check()?;
        if abort.load(Ordering::SeqCst) {
            return Err(CollectiveError::Aborted);
        }
        if Instant::now() >= deadline {
            return Err(timed_out(during, timeout));
        }
        // A step's collective on one node takes well under a millisecond: yield at first,
        // then sleep so that a long wait does not hold a core.
        polls += 1;
        if polls < 1000 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Runs `work` on a helper thread and waits for its result, failing when `abort` is set or
/// `timeout` has passed (the helper may be blocked for good). A result that arrives after the
/// caller gave up is dropped on the helper thread, so its `Drop` releases what it holds.
pub(crate) fn on_helper_thread<T: Send + 'static>(
    during: &'static str,
    timeout: Duration,
    abort: &AtomicBool,
    work: impl FnOnce() -> Result<T, CollectiveError> + Send + 'static,
) -> Result<T, CollectiveError> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("collective-helper".into())
        .spawn(move || {
            // When the caller has given up, the result comes back here and is dropped.
            let _ = tx.send(work());
        })
        .map_err(|e| {
            CollectiveError::Backend(format!("starting a helper thread for {during}: {e}"))
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(result) => return result,
            Err(RecvTimeoutError::Disconnected) => {
                return Err(CollectiveError::Backend(format!(
                    "the helper thread died while {during}"
                )))
            }
            Err(RecvTimeoutError::Timeout) if abort.load(Ordering::SeqCst) => {
                return Err(CollectiveError::Aborted)
            }
            Err(RecvTimeoutError::Timeout) if Instant::now() >= deadline => {
                return Err(timed_out(during, timeout))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn timed_out(during: &str, timeout: Duration) -> CollectiveError {
    CollectiveError::Backend(format!(
        "timed out after {timeout:?} while {during}: a rank is dead or hung"
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    fn abort_after(flag: &Arc<AtomicBool>, after: Duration) {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(after);
            flag.store(true, Ordering::SeqCst);
        });
    }

    #[test]
    fn polling_returns_when_the_work_completes() {
        let mut polls = 0;
        let flag = AtomicBool::new(false);
        let done = || {
            polls += 1;
            Ok(polls == 5)
        };
        poll_until("all-reducing", LONG, &flag, done, || Ok(())).unwrap();
        assert_eq!(polls, 5);
    }

    #[test]
    fn an_abort_from_another_thread_ends_a_wait_that_would_never_end() {
        let flag = Arc::new(AtomicBool::new(false));
        abort_after(&flag, Duration::from_millis(50));
        let started = Instant::now();
        let e = poll_until("all-reducing", LONG, &flag, || Ok(false), || Ok(())).unwrap_err();
        assert!(matches!(e, CollectiveError::Aborted), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_wait_past_its_deadline_fails_and_says_so() {
        let flag = AtomicBool::new(false);
        let started = Instant::now();
        let e = poll_until(
            "all-gathering",
            Duration::from_millis(100),
            &flag,
            || Ok(false),
            || Ok(()),
        )
        .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(e.to_string().contains("all-gathering"), "{e}");
    }

    #[test]
    fn an_asynchronous_error_ends_the_wait_with_that_error() {
        let flag = AtomicBool::new(false);
        let mut checks = 0;
        let check = || {
            checks += 1;
            match checks {
                3 => Err(CollectiveError::Backend("remote error".into())),
                _ => Ok(()),
            }
        };
        let e = poll_until("all-reducing", LONG, &flag, || Ok(false), check).unwrap_err();
        assert_eq!(e.to_string(), "remote error");
    }

    /// Counts its drops, standing in for a communicator that is aborted when dropped.
    struct Held(Arc<AtomicUsize>);

    impl Drop for Held {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_helper_threads_result_is_returned() {
        let flag = AtomicBool::new(false);
        let v = on_helper_thread("forming", LONG, &flag, || Ok(7)).unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn a_result_that_comes_after_the_deadline_is_released_by_the_helper() {
        let flag = AtomicBool::new(false);
        let drops = Arc::new(AtomicUsize::new(0));
        let held = drops.clone();
        let started = Instant::now();
        let e = on_helper_thread("forming", Duration::from_millis(50), &flag, move || {
            std::thread::sleep(Duration::from_millis(300));
            Ok(Held(held))
        })
        .map(|_| ())
        .unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_millis(300));
        let deadline = Instant::now() + Duration::from_secs(10);
        while drops.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_abort_ends_the_wait_for_a_helper_that_never_returns() {
        let flag = Arc::new(AtomicBool::new(false));
        abort_after(&flag, Duration::from_millis(50));
        let (_keep, blocked) = mpsc::channel::<()>();
        let e = on_helper_thread("forming", LONG, &flag, move || {
            // Blocks until the test ends (its sender is dropped then).
            let _ = blocked.recv();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(e, CollectiveError::Aborted), "{e}");
    }
}
