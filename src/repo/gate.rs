//! How many threads compress at once, whatever the number of transfers in flight.
//!
//! On a store where a request takes tens of milliseconds, a backup wants many objects in
//! flight (`backup.transfers`) to keep the network busy, but no more threads compressing than
//! there are cores (`backup.concurrency`): more would only take turns on them, each holding
//! its codec state and buffers. Every encoder thread holds a permit of the repository's gate
//! while it reads and compresses, and gives it back while it waits for the network to take
//! its output, so a thread blocked on a slow upload lets another one compress.

use std::sync::{Arc, Condvar, Mutex};

/// A counting semaphore for blocking threads.
#[derive(Debug)]
pub(crate) struct Gate {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Gate {
    pub(crate) fn new(permits: usize) -> Arc<Gate> {
        Arc::new(Gate {
            free: Mutex::new(permits.max(1)),
            freed: Condvar::new(),
        })
    }

    /// Waits for a permit (blocking the thread).
    pub(crate) fn acquire(&self) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
    }

    pub(crate) fn release(&self) {
        *self.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.freed.notify_one();
    }
}

/// A permit of a gate (or of none: no limit), given back while the holder waits.
#[derive(Debug, Default)]
pub(crate) struct Permit {
    gate: Option<Arc<Gate>>,
    held: bool,
}

impl Permit {
    /// Takes a permit of `gate` (blocking), or none when there is no gate.
    pub(crate) fn take(gate: Option<Arc<Gate>>) -> Permit {
        if let Some(gate) = &gate {
            gate.acquire();
        }
        Permit {
            held: gate.is_some(),
            gate,
        }
    }

    /// Runs `wait` (something that blocks on others, not on the CPU) without the permit.
    pub(crate) fn released_while<T>(&mut self, wait: impl FnOnce() -> T) -> T {
        let Some(gate) = self.gate.as_ref().filter(|_| self.held) else {
            return wait();
        };
        gate.release();
        let out = wait();
        gate.acquire();
        out
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let (Some(gate), true) = (&self.gate, self.held) {
            gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn at_most_the_permits_work_at_once_and_waiting_gives_the_permit_back() {
        let gate = Gate::new(2);
        let (busy, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (gate, busy, most) = (gate.clone(), busy.clone(), most.clone());
                std::thread::spawn(move || {
                    let mut permit = Permit::take(Some(gate));
                    for _ in 0..5 {
                        let now = busy.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        busy.fetch_sub(1, Ordering::SeqCst);
                        permit.released_while(|| {
                            std::thread::sleep(std::time::Duration::from_millis(2))
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(
            *gate.free.lock().expect("lock"),
            2,
            "every permit came back"
        );
    }
}
