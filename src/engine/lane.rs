//! A lane: a helper thread that takes jobs in order from the loop on a channel (the
//! engine's writer and readers, design/cluster.md §5.7). Dropping the handle ends the
//! thread after its current job.

use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

pub struct Lane<J> {
    name: &'static str,
    jobs: Option<Sender<J>>,
    thread: Option<JoinHandle<()>>,
}

impl<J: Send + 'static> Lane<J> {
    /// Starts thread `name`: each job sent to it, in order, is handled, its answer goes
    /// to `answers`, and `wake()` tells the loop. It ends when the handle is dropped or
    /// nobody takes answers any more.
    pub fn start<A: Send + 'static>(
        name: &'static str,
        answers: Sender<A>,
        wake: Box<dyn Fn() + Send>,
        mut handle: impl FnMut(J) -> A + Send + 'static,
    ) -> Lane<J> {
        let (jobs, inbox) = channel::<J>();
        let serve = move || {
            for job in inbox {
                if answers.send(handle(job)).is_err() {
                    return;
                }
                wake();
            }
        };
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(serve)
            .unwrap_or_else(|e| panic!("cannot start the {name} thread: {e}"));
        Lane { name, jobs: Some(jobs), thread: Some(thread) }
    }

    /// Hands the lane a job.
    pub fn send(&self, job: J) -> Result<(), String> {
        match &self.jobs {
            Some(jobs) => jobs.send(job).map_err(|_| format!("the {} lane has stopped", self.name)),
            None => Err(format!("the {} lane is stopping", self.name)),
        }
    }
}

impl<J> Drop for Lane<J> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
