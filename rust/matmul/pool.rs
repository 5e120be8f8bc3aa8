//! The worker pool the matrix products run on: created once (with the model), reused by every
//! call, so no thread is spawned per token.

use crate::error::{Error, Result};

pub struct Pool {
    inner: rayon::ThreadPool,
    threads: usize,
}

impl Pool {
    /// A pool of `threads` workers; None means one per physical core.
    pub fn new(threads: Option<usize>) -> Result<Pool> {
        let threads = threads.unwrap_or_else(physical_cores);
        if threads == 0 || threads > 1024 {
            return Err(Error::invalid(format!(
                "thread count {threads} is outside 1..=1024"
            )));
        }
        let inner = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("ferrollm-{i}"))
            .build()
            .map_err(|e| Error::invalid(format!("cannot start {threads} threads: {e}")))?;
        Ok(Pool { inner, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for i in 0..n_tasks on the pool's workers.
    pub fn run(&self, n_tasks: usize, task: impl Fn(usize) + Sync + Send) {
        if n_tasks == 1 || self.threads == 1 {
            // Still on the pool (so thread-local state is the pool's), without splitting.
            self.inner.install(|| (0..n_tasks).for_each(&task));
            return;
        }
        use rayon::prelude::*;
        self.inner
            .install(|| (0..n_tasks).into_par_iter().for_each(&task));
    }

    /// Runs `f(i, &mut items[i])` for every item on the pool's workers (per-task scratch).
    pub fn for_each_mut<T: Send>(&self, items: &mut [T], f: impl Fn(usize, &mut T) + Sync + Send) {
        use rayon::prelude::*;
        if self.threads == 1 {
            self.inner
                .install(|| items.iter_mut().enumerate().for_each(|(i, t)| f(i, t)));
            return;
        }
        self.inner
            .install(|| items.par_iter_mut().enumerate().for_each(|(i, t)| f(i, t)));
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
