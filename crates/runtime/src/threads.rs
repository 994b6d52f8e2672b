//! The tokio runtime a binary runs its own tasks on, sized by its `runtime_threads` setting.

/// Threads a binary may ask for.
pub const RANGE: std::ops::RangeInclusive<usize> = 1..=64;

/// One thread: a current-thread runtime (no work stealing, no wake-ups of a second thread for
/// work that is smaller than the wake-up); more: [`multi_thread`].
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        multi_thread(threads)
    }
}

/// A multi-thread runtime with `threads` workers (at least one), for a binary that needs one
/// whatever its size: one that calls `block_in_place` (diesel's migrations do).
pub fn multi_thread(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_runs_on_the_calling_thread_and_more_spread_over_workers() {
        let caller = std::thread::current().id();
        let one = build(1).expect("runtime");
        let ran_on =
            one.block_on(async { tokio::spawn(async { std::thread::current().id() }).await });
        assert_eq!(ran_on.expect("task"), caller);
        assert_eq!(one.metrics().num_workers(), 1);
        let three = build(3).expect("runtime");
        assert_eq!(three.metrics().num_workers(), 3);
        let ran_on =
            three.block_on(async { tokio::spawn(async { std::thread::current().id() }).await });
        assert_ne!(ran_on.expect("task"), caller);
        // One worker of a multi-thread runtime still allows blocking in place.
        let one_worker = multi_thread(1).expect("runtime");
        assert_eq!(one_worker.metrics().num_workers(), 1);
        let answer = one_worker
            .block_on(async { tokio::spawn(async { tokio::task::block_in_place(|| 42) }).await });
        assert_eq!(answer.expect("task"), 42);
    }
}
