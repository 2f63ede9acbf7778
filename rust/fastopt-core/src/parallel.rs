//! The one place that decides threading.
//!
//! `FASTOPT_NUM_THREADS` (default: the available cores) threads, resizable with
//! [`set_num_threads`]: the calling thread plus a dedicated rayon pool of the others (never the
//! global pool, so that fastopt neither competes with nor depends on other rayon users in the
//! process). Work is a list of [`Split`] items (one per tensor); below [`SERIAL_BELOW`]
//! elements in total it runs on the calling thread alone, otherwise it is cut into chunks
//! (see [`chunk_size`]) that the caller and the pool's threads take from one queue until it
//! is empty. The caller works instead of waiting, so no core sits idle while a pool thread
//! wakes up. Element-wise kernels give bit-identical results whatever the thread count,
//! because every element is computed by the same code whichever chunk it falls in.

use rayon::ThreadPool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Below this many elements in one call, starting the pool costs more than it saves
/// (measured with `benches/`: a fork/join is about 1-3 us, a single-pass optimizer step moves
/// about 0.3 ns per element in cache).
pub const SERIAL_BELOW: usize = 1 << 15;

/// Bounds of the elements per chunk handed to one thread at a time. Within them a call is cut
/// into about [`CHUNKS_PER_THREAD`] chunks per thread, so that two threads share 1e5 elements
/// evenly while a chunk stays large enough (>= 4096 elements, a few microseconds) that the
/// per-chunk cost is noise, and small enough (<= 65536, about 2 MiB of Adam traffic) to stay
/// cache-sized. Multiples of 64, so chunks keep the buffer's vector alignment.
pub const MIN_CHUNK: usize = 1 << 12;
pub const MAX_CHUNK: usize = 1 << 16;
pub const CHUNKS_PER_THREAD: usize = 4;

/// The chunk size for `total` elements on `threads` threads.
pub fn chunk_size(total: usize, threads: usize) -> usize {
    let per = total.div_ceil(threads.max(1) * CHUNKS_PER_THREAD);
    per.next_multiple_of(64).clamp(MIN_CHUNK, MAX_CHUNK)
}

struct Pool {
    threads: usize,
    /// The `threads - 1` helpers; `None` when `threads == 1`.
    pool: Option<Arc<ThreadPool>>,
}

fn state() -> &'static RwLock<Pool> {
    static STATE: OnceLock<RwLock<Pool>> = OnceLock::new();
    STATE.get_or_init(|| {
        let n = std::env::var("FASTOPT_NUM_THREADS")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .filter(|&n| n >= 1)
            .unwrap_or_else(default_threads);
        RwLock::new(build(n).unwrap_or(Pool { threads: 1, pool: None }))
    })
}

/// The number of cores this process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn build(threads: usize) -> Result<Pool, String> {
    if threads <= 1 {
        return Ok(Pool { threads: 1, pool: None });
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads - 1)
        .thread_name(|i| format!("fastopt-{i}"))
        .build()
        .map_err(|e| format!("could not start {threads} threads: {e}"))?;
    Ok(Pool { threads, pool: Some(Arc::new(pool)) })
}

/// Threads kernels use now.
pub fn num_threads() -> usize {
    state().read().unwrap_or_else(|e| e.into_inner()).threads
}

/// Resizes the pool. `n` must be at least 1. On error the old pool stays.
pub fn set_num_threads(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("the number of threads must be at least 1".into());
    }
    let mut guard = state().write().unwrap_or_else(|e| e.into_inner());
    if guard.threads != n {
        // Calls in flight keep their Arc to the old pool until they finish.
        *guard = build(n)?;
    }
    Ok(())
}

fn current_pool() -> Option<Arc<ThreadPool>> {
    state().read().unwrap_or_else(|e| e.into_inner()).pool.clone()
}

/// A piece of element-wise work over several equally long slices that can be cut in two.
pub trait Split: Sized + Send {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The first `mid` elements and the rest.
    fn split_at(self, mid: usize) -> (Self, Self);
}

/// Runs `f` over all of `items`, each element exactly once, on the pool when the work is
/// large enough.
pub fn for_each<W: Split>(items: Vec<W>, f: impl Fn(W) + Sync + Send) {
    let total: usize = items.iter().map(Split::len).sum();
    let pool = if total >= SERIAL_BELOW { current_pool() } else { None };
    let Some(pool) = pool else {
        items.into_iter().filter(|w| !w.is_empty()).for_each(f);
        return;
    };
    let threads = pool.current_num_threads() + 1;
    let chunk = chunk_size(total, threads);
    let mut chunks = Vec::with_capacity(total / chunk + items.len());
    for w in items {
        let mut rest = w;
        while rest.len() > chunk {
            let (head, tail) = rest.split_at(chunk);
            chunks.push(head);
            rest = tail;
        }
        if !rest.is_empty() {
            chunks.push(rest);
        }
    }
    let helpers = (threads - 1).min(chunks.len().saturating_sub(1));
    let queue = Mutex::new(chunks.into_iter());
    let work = || loop {
        // Take the lock only to pop; a poisoned queue still hands out what it holds.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
        match next {
            Some(c) => f(c),
            None => break,
        }
    };
    pool.in_place_scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cells<'a>(&'a mut [u32]);
    impl Split for Cells<'_> {
        fn len(&self) -> usize {
            self.0.len()
        }
        fn split_at(self, mid: usize) -> (Self, Self) {
            let (a, b) = self.0.split_at_mut(mid);
            (Cells(a), Cells(b))
        }
    }

    #[test]
    fn every_element_once_at_any_thread_count() {
        for threads in [1, 2, 3] {
            set_num_threads(threads).unwrap();
            assert_eq!(num_threads(), threads);
            for sizes in [vec![0usize, 1, 5], vec![SERIAL_BELOW + 7, 3, MAX_CHUNK * 3 + 1]] {
                let mut bufs: Vec<Vec<u32>> = sizes.iter().map(|&n| vec![0; n]).collect();
                let items = bufs.iter_mut().map(|b| Cells(b)).collect();
                for_each(items, |c: Cells| c.0.iter_mut().for_each(|x| *x += 1));
                assert!(bufs.iter().flatten().all(|&x| x == 1));
            }
        }
        assert!(set_num_threads(0).is_err());
        assert_eq!(chunk_size(100_000, 2), 12_544);
        assert_eq!(chunk_size(10, 2), MIN_CHUNK);
        assert_eq!(chunk_size(1 << 30, 2), MAX_CHUNK);
        set_num_threads(default_threads()).unwrap();
    }
}
