//! CPU work that must not compete with deliveries: rebuilding a whole index
//! (a file reload, a config-log batch) runs on its own thread at a lower
//! scheduling priority, so on a machine with few cores the send path keeps
//! the CPU and the rebuild takes the rest.
//!
//! In: a closure. Out: its result, or `None` if it panicked (logged).

/// `nice` of the background thread: low enough that runnable delivery
/// threads go first, not so low that a rebuild starves on an idle machine.
const NICENESS: i32 = 10;

/// Runs `work` on a fresh low-priority thread and awaits its result.
pub async fn run<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("hookd-{name}"))
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, name, "cannot start a background thread");
        return None;
    }
    match rx.await {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::error!(name, "background work panicked");
            None
        }
    }
}

/// Drops `value` on a low-priority thread (a large index takes a while to
/// free), without waiting.
pub fn drop_later<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new()
        .name("hookd-drop".into())
        .spawn(move || {
            lower_priority();
            drop(value);
        });
    if let Err(e) = spawned {
        // The value was moved into the closure that failed to start and is
        // dropped with it, here.
        tracing::warn!(error = %e, "cannot start a background thread; dropped in place");
    }
}

#[cfg(target_os = "linux")]
fn lower_priority() {
    // On Linux a thread id names one thread to setpriority, so only this
    // thread is lowered, not the process.
    // SAFETY: plain syscalls on the calling thread's own id; no memory is
    // shared with the kernel.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, NICENESS);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn returns_the_result_and_survives_a_panic() {
        assert_eq!(super::run("t", || 6 * 7).await, Some(42));
        assert_eq!(super::run("t", || -> u8 { panic!("boom") }).await, None);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_thread_runs_at_lower_priority() {
        let nice = super::run("t", || unsafe {
            libc::getpriority(
                libc::PRIO_PROCESS,
                libc::syscall(libc::SYS_gettid) as libc::id_t,
            )
        })
        .await
        .unwrap();
        let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(nice, (ours + super::NICENESS).min(19));
    }
}
