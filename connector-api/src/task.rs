//! Running blocking or CPU-heavy work inside a connector's async methods.

/// Runs `f` (blocking I/O, or CPU-heavy work such as decoding or encoding a batch)
/// from a source's or sink's async method without stalling the runtime's other tasks.
///
/// On the runtime's multi-thread scheduler the calling worker first hands its queued
/// tasks to another thread (`tokio::task::block_in_place`). Without that, a task woken
/// by this one (the sink waiting for the batch the source just sent) waits on this
/// worker until `f` returns, and the pipeline runs its stages one after another. Outside
/// a multi-thread runtime (a test's current-thread runtime, a plain thread) `f` just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::blocking;

    #[test]
    fn runs_outside_a_runtime() {
        assert_eq!(blocking(|| 1 + 1), 2);
    }

    #[tokio::test]
    async fn runs_on_a_current_thread_runtime() {
        assert_eq!(blocking(|| 2 + 2), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn lets_a_woken_task_run_while_it_blocks() {
        // on the one worker, the woken task can only run if blocking hands the worker on
        let on_worker = tokio::spawn(async {
            let (tx, rx) = std::sync::mpsc::channel();
            let (wake, woken) = tokio::sync::oneshot::channel::<()>();
            let other = tokio::spawn(async move {
                woken.await.unwrap();
                tx.send(()).unwrap();
            });
            wake.send(()).unwrap();
            let got = blocking(|| rx.recv_timeout(std::time::Duration::from_secs(10)));
            other.await.unwrap();
            got
        });
        let got = on_worker.await.unwrap();
        assert!(
            got.is_ok(),
            "the woken task did not run while the worker was blocked"
        );
    }
}
