//! The worker pool the matrix products run on: created once (with the model), reused by every
//! call, so no thread is spawned per token.
//!
//! A decoded token is ~40 short products; with rayon each one woke sleeping workers through
//! the OS (measured 21 us per call on 2 threads, 69 us on 1), which a small model's whole
//! token does not cost. Here the caller runs tasks itself, and the workers spin on an epoch
//! counter between products (parking only after `SPIN` without work), so a product starts in
//! nanoseconds. Tasks are claimed from a shared counter; a panicking task is caught and its
//! panic re-raised in the caller once every worker has left the job.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::denormals::FlushDenormals;
use crate::error::{Error, Result};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(500);

type Task<'a> = dyn Fn(usize) + Sync + 'a;

/// The job being run: a task pointer (valid while `run` waits) and its task count.
struct Job {
    task: Option<*const Task<'static>>,
    n_tasks: usize,
}

struct Shared {
    job: Mutex<Job>,
    /// Bumped for every job; workers run a job when they see it change.
    epoch: AtomicU64,
    next: AtomicUsize,
    /// Workers still inside the current job.
    busy: AtomicUsize,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    stop: AtomicBool,
    parked: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job.task` points to a `Sync` closure that outlives every use (see `run`).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

pub struct Pool {
    threads: usize,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time (a pool may be shared by several Python threads).
    running: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` workers (the caller counts as one); None means one per physical
    /// core.
    pub fn new(threads: Option<usize>) -> Result<Pool> {
        let threads = threads.unwrap_or_else(physical_cores);
        if threads == 0 || threads > 1024 {
            return Err(Error::invalid(format!(
                "thread count {threads} is outside 1..=1024"
            )));
        }
        let shared = Arc::new(Shared {
            job: Mutex::new(Job {
                task: None,
                n_tasks: 0,
            }),
            epoch: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            panic: Mutex::new(None),
            stop: AtomicBool::new(false),
            parked: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("ferrollm-{i}"))
                .spawn(move || worker(&shared))
                .map_err(|e| Error::invalid(format!("cannot start {threads} threads: {e}")))?;
            workers.push(handle);
        }
        Ok(Pool {
            threads,
            shared,
            workers,
            running: Mutex::new(()),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for i in 0..n_tasks on the caller and the pool's workers; returns when
    /// all are done.
    pub fn run(&self, n_tasks: usize, task: impl Fn(usize) + Sync + Send) {
        if n_tasks == 0 {
            return;
        }
        let _flush = FlushDenormals::on();
        if n_tasks == 1 || self.threads == 1 {
            (0..n_tasks).for_each(task);
            return;
        }
        let _one_job = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        let task: &Task = &task;
        {
            let mut job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the lifetime is erased only while this call waits for every worker to
            // leave the job (busy == 0 below), after which no worker reads the pointer.
            job.task =
                Some(unsafe { std::mem::transmute::<*const Task, *const Task<'static>>(task) });
            job.n_tasks = n_tasks;
            s.next.store(0, Ordering::Relaxed);
            s.busy.store(self.threads - 1, Ordering::Relaxed);
            s.epoch.fetch_add(1, Ordering::Release);
        }
        {
            let _parked = s.parked.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        run_tasks(s, task, n_tasks);
        while s.busy.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        let panic = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = panic {
            resume_unwind(payload);
        }
    }

    /// Runs `f(i, &mut items[i])` for every item on the pool (per-task scratch).
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: impl Fn(usize, &mut T) + Sync + Send) {
        let base = SendPtr(items.as_mut_ptr());
        self.run(items.len(), |i| {
            // SAFETY: each index is claimed by exactly one task, so the borrows are disjoint.
            let item = unsafe { &mut *base.at(i) };
            f(i, item)
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        {
            let _parked = self.shared.parked.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

struct SendPtr<T>(*mut T);
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn at(&self, i: usize) -> *mut T {
        self.0.wrapping_add(i)
    }
}

/// Claims and runs tasks until none are left; a panic is kept for the caller.
fn run_tasks(s: &Shared, task: &Task, n_tasks: usize) {
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n_tasks {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(i))) {
            // Stop handing out tasks; the caller re-raises the first panic.
            s.next.store(n_tasks, Ordering::Relaxed);
            let mut slot = s.panic.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert(payload);
            return;
        }
    }
}

fn worker(s: &Shared) {
    // For the thread's lifetime: it only ever runs ferrollm's tasks.
    let _flush = FlushDenormals::on();
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let guard = s.parked.lock().unwrap_or_else(|e| e.into_inner());
                if s.epoch.load(Ordering::Acquire) == seen {
                    let _ = s.wake.wait_timeout(guard, Duration::from_millis(100));
                }
            } else {
                std::hint::spin_loop();
            }
        }
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let (task, n_tasks) = {
            let job = s.job.lock().unwrap_or_else(|e| e.into_inner());
            (job.task, job.n_tasks)
        };
        if let Some(task) = task {
            // SAFETY: `run` keeps the closure alive until `busy` reaches 0 (decremented below).
            run_tasks(s, unsafe { &*task }, n_tasks);
        }
        s.busy.fetch_sub(1, Ordering::Release);
    }
}

/// Physical cores (hyper-threads of one core share its execution units, so they add nothing
/// to these memory- and SIMD-bound loops), read from sysfs; logical CPUs where that fails.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    physical_cores_sysfs().map_or(logical, |p| p.clamp(1, logical))
}

fn physical_cores_sysfs() -> Option<usize> {
    let mut cores = std::collections::HashSet::new();
    for entry in std::fs::read_dir("/sys/devices/system/cpu").ok()? {
        let path = entry.ok()?.path();
        let name = path.file_name()?.to_str()?.to_owned();
        if !name.starts_with("cpu") || !name[3..].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(path.join("topology").join(f)).ok();
        let (Some(package), Some(core)) = (read("physical_package_id"), read("core_id")) else {
            continue;
        };
        cores.insert((package.trim().to_owned(), core.trim().to_owned()));
    }
    (!cores.is_empty()).then_some(cores.len())
}
