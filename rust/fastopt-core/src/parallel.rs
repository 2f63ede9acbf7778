//! The one place that decides threading.
//!
//! `FASTOPT_NUM_THREADS` (default: the available cores) threads, resizable with
//! [`set_num_threads`]: the calling thread plus a dedicated rayon pool of the others (never the
//! global pool, so that fastopt neither competes with nor depends on other rayon users in the
//! process). Work is a list of [`Split`] items (one per tensor); below [`SERIAL_BELOW`]
//! elements in total it runs on the calling thread alone. Otherwise the elements, counted
//! across all items, are cut into one contiguous range per thread, and thread `t` always gets
//! range `t`: an optimizer steps over the same buffers every iteration, so each core finds its
//! part still in its own L2 cache (with a shared queue, parts wandered between cores and two
//! threads were barely faster than one at 1e5 elements). The caller works on range 0 instead of
//! waiting. Each range is cut into [`PIECES`] pieces that its thread takes from the front; a
//! thread that is done takes pieces of the others from the back, so a pool thread that wakes
//! late (microseconds to tens of microseconds on a virtual machine) delays nothing.
//! Element-wise kernels give bit-identical results whatever the thread count, because every
//! element is computed by the same code whichever range or piece it falls in.
//!
//! A helper that has done its part of a call keeps its core for [`LINGER`], spinning until
//! the next call is announced, before it goes back to the pool (where it falls asleep): an
//! optimizer's calls come tens of microseconds apart (the Python of one step, or the two
//! passes of a two-pass rule), and a helper woken from sleep on a virtual machine arrived
//! after the caller had done most of the work alone. It lingers only when the pool has no
//! more threads than the process has cores, so that a spinning helper never takes a core
//! from the caller.

use rayon::ThreadPool;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

/// Below this many elements in one call, starting the pool costs more than it saves
/// (measured with `benches/`: a fork/join is about 1-3 us, a single-pass optimizer step moves
/// about 0.3 ns per element in cache).
pub const SERIAL_BELOW: usize = 1 << 15;

/// Pieces per thread's range (each at least [`MIN_PIECE`] elements).
pub const PIECES: usize = 4;
pub const MIN_PIECE: usize = 4096;

/// How long a helper spins after its part of a call, waiting for the next one (see the module
/// documentation). OpenMP runtimes spin for milliseconds by default; this is short enough
/// that a burst of steps leaves at most this much spinning behind it.
pub const LINGER: std::time::Duration = std::time::Duration::from_micros(100);

/// Calls that have asked the pool's helpers to join (a lingering helper watches it).
static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Pool {
    threads: usize,
    /// The `threads - 1` helpers; `None` when `threads == 1`.
    pool: Option<Arc<ThreadPool>>,
}

fn state() -> &'static RwLock<Pool> {
    static STATE: OnceLock<RwLock<Pool>> = OnceLock::new();
    STATE.get_or_init(|| {
        // A value that is not a whole number in 1..=max_threads() is ignored (see env_problem).
        let n = env_request().and_then(|(_, n)| n).unwrap_or_else(default_threads);
        RwLock::new(build(n).unwrap_or(Pool { threads: 1, pool: None }))
    })
}

/// A non-blank `FASTOPT_NUM_THREADS`: the text, and the thread count it gives if usable.
fn env_request() -> Option<(String, Option<usize>)> {
    let s = std::env::var("FASTOPT_NUM_THREADS").ok().filter(|s| !s.trim().is_empty())?;
    let n = s.trim().parse::<usize>().ok().filter(|n| (1..=max_threads()).contains(n));
    Some((s, n))
}

/// Why `FASTOPT_NUM_THREADS` is ignored, if it is set and is not a usable thread count.
pub fn env_problem() -> Option<String> {
    match env_request()? {
        (_, Some(_)) => None,
        (s, None) => Some(format!(
            "FASTOPT_NUM_THREADS='{s}' is not a whole number from 1 to {}; using {} threads",
            max_threads(),
            num_threads()
        )),
    }
}

/// The number of cores this process may use (found once: the standard library reads the
/// cgroup's files on every call).
pub fn default_threads() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
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

/// The most threads a pool may have: 4 per core. More only adds waiting (2000 threads made a
/// 1e6-element step take seconds) and starting 100,000 did not return.
pub fn max_threads() -> usize {
    4 * default_threads()
}

/// Resizes the pool. `n` must be in `1..=max_threads()`. On error the old pool stays. The old
/// pool's threads end once calls in flight on it are done.
pub fn set_num_threads(n: usize) -> Result<(), String> {
    if n == 0 {
        return Err("the number of threads must be at least 1".into());
    }
    if n > max_threads() {
        return Err(format!(
            "{n} threads is more than 4 per core ({} cores here: at most {})",
            default_threads(),
            max_threads()
        ));
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
    /// The first `mid` elements and the rest. An implementation may cut later than `mid`
    /// (a reduction keeps whole blocks), never earlier unless `mid` is 0.
    fn split_at(self, mid: usize) -> (Self, Self);
}

/// Splits an optional buffer like the required ones (a kernel's buffer that only some options
/// use, e.g. amsgrad's maximum).
pub fn split_opt<T>(x: Option<&mut [T]>, mid: usize) -> (Option<&mut [T]>, Option<&mut [T]>) {
    match x {
        Some(x) => {
            let (a, b) = x.split_at_mut(mid);
            (Some(a), Some(b))
        }
        None => (None, None),
    }
}

/// Runs `f` over all of `items`, each element exactly once, on the pool when the work is
/// large enough.
pub fn for_each<W: Split>(items: Vec<W>, f: impl Fn(W) + Sync + Send) {
    let total: usize = items.iter().map(Split::len).sum();
    for_each_of(total, items, f)
}

/// [`for_each`] over items made as they are needed, `total` elements in all: a call below
/// [`SERIAL_BELOW`] runs each item as it is made, without collecting them (many tiny
/// tensors).
///
/// Only the cutting into pieces and the taking of a piece depend on the item type; the
/// hand-out of pieces ([`Runs`]) and the pool's part ([`broadcast`]) are compiled once for
/// every kernel.
pub fn for_each_of<W: Split>(total: usize, items: impl IntoIterator<Item = W>, f: impl Fn(W) + Sync + Send) {
    let pool = if total >= SERIAL_BELOW { current_pool() } else { None };
    let Some(pool) = pool else {
        items.into_iter().filter(|w| !w.is_empty()).for_each(f);
        return;
    };
    let threads = pool.current_num_threads() + 1;
    let (pieces, ends) = partition(items, total, threads);
    let runs = Runs::new(&ends);
    let run = |t: usize| {
        // `Runs` hands out each piece's index exactly once, so each `take` finds it there.
        while let Some(k) = runs.next(t) {
            if let Some(w) = pieces[k].lock().unwrap_or_else(|e| e.into_inner()).take() {
                f(w);
            }
        }
    };
    broadcast(&pool, threads, &run);
}

/// Which pieces each thread has left: thread `t`'s run is the pieces `front..back` of its
/// range. A thread takes its own pieces from the front, then the others' from the back. The
/// locks are held only to move an index.
struct Runs(Vec<Mutex<(usize, usize)>>);

impl Runs {
    /// The runs of ranges that end (exclusively) at `ends`, in order from piece 0.
    fn new(ends: &[usize]) -> Runs {
        let mut start = 0;
        Runs(
            ends.iter()
                .map(|&end| {
                    let run = Mutex::new((start, end));
                    start = end;
                    run
                })
                .collect(),
        )
    }

    /// The next piece thread `t` works on, or None when every piece has been handed out.
    fn next(&self, t: usize) -> Option<usize> {
        let threads = self.0.len();
        for k in (0..threads).map(|d| (t + d) % threads) {
            let mut run = self.0[k].lock().unwrap_or_else(|e| e.into_inner());
            let (front, back) = &mut *run;
            if front < back {
                return Some(if k == t {
                    *front += 1;
                    *front - 1
                } else {
                    *back -= 1;
                    *back
                });
            }
        }
        None
    }
}

/// Runs `run(t)` for `t` in `0..threads`: `run(0)` on the calling thread, the others on the
/// pool's helpers as they arrive, and returns when every started one has finished.
fn broadcast(pool: &ThreadPool, threads: usize, run: &(dyn Fn(usize) + Sync)) {
    // The helpers are asked to join, but never waited for unless they have started: a pool
    // thread asleep when the call begins takes tens of microseconds to wake on a virtual
    // machine, and a call that waited for it (as a scope join does) ran slower with two
    // threads than with one. A helper that starts after the caller has closed the gate
    // returns without touching anything of this call.
    let gate = Arc::new(Gate::default());
    // SAFETY: the 'static lifetime is a lie the gate makes true: a helper dereferences this
    // pointer only between a successful `enter` and its `exit`, and this function does not
    // return (or unwind past `_closer`) until `close_and_wait` has seen every entered helper
    // exit, so `run` and everything it borrows outlive every use.
    let job = JobPtr(unsafe {
        std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const (dyn Fn(usize) + Sync + 'static)>(run)
    });
    let _closer = CloseOnDrop(&gate);
    let helper_gate = Arc::clone(&gate);
    let linger = threads <= default_threads();
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    pool.spawn_broadcast(move |ctx| {
        let job = &job;
        if helper_gate.enter() {
            // SAFETY: entered and not yet exited: the caller is still inside `broadcast` (see
            // above), so the closure behind the pointer is alive.
            let run = unsafe { &*job.0 };
            // A panic must neither escape into rayon (which aborts the process) nor skip
            // `exit` (the caller would wait forever): it is handed to the caller instead.
            if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ctx.index() + 1))) {
                helper_gate.record_panic(payload);
            }
            helper_gate.exit();
        }
        if linger {
            wait_for_next_call(call);
        }
    });
    run(0);
    // Close the gate and wait for entered helpers (on unwinding too, through `_closer`), then
    // re-raise a helper's panic on the calling thread, where the caller can catch it.
    drop(_closer);
    if let Some(payload) = gate.take_panic() {
        std::panic::resume_unwind(payload);
    }
}

/// Spins until a call after `call` is announced or [`LINGER`] has passed. Returning lets the
/// helper take the new call's job from the pool at once, without having slept.
fn wait_for_next_call(call: usize) {
    let start = std::time::Instant::now();
    let mut spins = 0u32;
    while CALLS.load(std::sync::atomic::Ordering::Relaxed) == call {
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins % 256 == 0 && start.elapsed() >= LINGER {
            return;
        }
    }
}

/// A `'static` pointer to the caller's work closure (see the safety argument in `for_each`).
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the closure is `Sync`, so calling it from another thread through a shared pointer is
// sound for as long as it lives, which the gate guarantees.
unsafe impl Send for JobPtr {}
unsafe impl Sync for JobPtr {}

/// Helpers entering one call's work: a count of those inside, and a closed bit the caller
/// sets when it has run out of work.
#[derive(Default)]
struct Gate {
    state: std::sync::atomic::AtomicUsize,
    /// The first panic a helper caught while running this call's work.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

const CLOSED: usize = 1 << (usize::BITS - 1);

impl Gate {
    /// Enters unless closed.
    fn enter(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let mut s = self.state.load(Acquire);
        loop {
            if s & CLOSED != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(s, s + 1, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now) => s = now,
            }
        }
    }

    fn record_panic(&self, payload: Box<dyn std::any::Any + Send>) {
        let mut slot = self.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(payload);
    }

    fn take_panic(&self) -> Option<Box<dyn std::any::Any + Send>> {
        self.panic.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn exit(&self) {
        // Release: the helper's writes are visible to the caller that sees the count drop.
        self.state.fetch_sub(1, std::sync::atomic::Ordering::Release);
    }

    /// Closes, then waits for the helpers inside to leave. They are at most finishing the
    /// piece they hold (the queues are empty when the caller gets here), so this is short.
    fn close_and_wait(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.state.fetch_or(CLOSED, AcqRel);
        let mut spins = 0u32;
        while self.state.load(Acquire) & !CLOSED != 0 {
            if spins < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
            spins += 1;
        }
    }
}

struct CloseOnDrop<'a>(&'a Gate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close_and_wait();
    }
}

/// Cuts `items` into `threads` runs of about `total / threads` elements each, in order, each
/// run in up to [`PIECES`] pieces (cuts fall on multiples of 64 elements, keeping the buffers'
/// vector alignment). Returns the pieces in order, each to be taken once, and where each
/// thread's run ends (run `t` is the pieces `ends[t - 1]..ends[t]`).
fn partition<W: Split>(items: impl IntoIterator<Item = W>, total: usize, threads: usize) -> (Vec<Mutex<Option<W>>>, Vec<usize>) {
    let mut plan = Plan::new(total, threads);
    let mut pieces: Vec<Mutex<Option<W>>> = Vec::with_capacity(threads * PIECES);
    for w in items {
        let mut rest = w;
        while !rest.is_empty() {
            let take = plan.next(rest.len());
            if take == rest.len() {
                plan.took(take, pieces.len() + 1);
                pieces.push(Mutex::new(Some(rest)));
                break;
            }
            let (head, tail) = rest.split_at(take);
            plan.took(head.len(), pieces.len() + 1);
            pieces.push(Mutex::new(Some(head)));
            rest = tail;
        }
    }
    (pieces, plan.ends())
}

/// [`partition`]'s arithmetic, apart from the item type: which thread's range the next piece
/// falls in, how long it may be, and where each thread's run of pieces ends.
struct Plan {
    share: usize,
    piece: usize,
    /// The thread whose range is being filled, and how many elements it has.
    t: usize,
    used: usize,
    ends: Vec<usize>,
}

impl Plan {
    fn new(total: usize, threads: usize) -> Plan {
        let share = total.div_ceil(threads).next_multiple_of(64);
        let piece = share.div_ceil(PIECES).next_multiple_of(64).max(MIN_PIECE);
        Plan { share, piece, t: 0, used: 0, ends: vec![0; threads] }
    }

    /// The length of the next piece of an item with `len` elements left (all of them when
    /// they fit).
    fn next(&mut self, len: usize) -> usize {
        let threads = self.ends.len();
        if self.used >= self.share && self.t + 1 < threads {
            self.t += 1;
            self.used = 0;
        }
        let last = self.t + 1 == threads;
        // Room left in this thread's range, and in its current piece.
        let room = if last { usize::MAX } else { self.share - self.used };
        let in_piece = self.piece - self.used % self.piece;
        len.min(room).min(in_piece)
    }

    /// A piece of `len` elements was cut (maybe longer than [`Plan::next`] asked: a split
    /// may cut later); `count` pieces so far.
    fn took(&mut self, len: usize, count: usize) {
        self.used += len;
        self.ends[self.t] = count;
    }

    /// Where each thread's run ends; threads without a piece end where the one before does.
    fn ends(mut self) -> Vec<usize> {
        for k in 1..self.ends.len() {
            self.ends[k] = self.ends[k].max(self.ends[k - 1]);
        }
        self.ends
    }
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
        let _g = crate::test_util::global();
        for threads in [1, 2, 3] {
            set_num_threads(threads).unwrap();
            assert_eq!(num_threads(), threads);
            for sizes in [vec![0usize, 1, 5], vec![SERIAL_BELOW + 7, 3, SERIAL_BELOW * 3 + 1], vec![1; SERIAL_BELOW + 1]] {
                let mut bufs: Vec<Vec<u32>> = sizes.iter().map(|&n| vec![0; n]).collect();
                let items = bufs.iter_mut().map(|b| Cells(b)).collect();
                for_each(items, |c: Cells| c.0.iter_mut().for_each(|x| *x += 1));
                assert!(bufs.iter().flatten().all(|&x| x == 1));
            }
        }
        assert!(set_num_threads(0).is_err());
        set_num_threads(default_threads()).unwrap();
    }

    #[test]
    fn a_panic_in_a_pool_thread_comes_back_to_the_caller() {
        let _g = crate::test_util::global();
        set_num_threads(2).unwrap();
        let mut buf = vec![0u32; SERIAL_BELOW * 4];
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for_each(vec![Cells(&mut buf)], |c: Cells| {
                let helper = std::thread::current().name().is_some_and(|n| n.starts_with("fastopt-"));
                if helper {
                    panic!("a helper's piece failed");
                }
                // The caller is slow, so the helper surely starts and takes pieces.
                std::thread::sleep(std::time::Duration::from_millis(20));
                c.0.iter_mut().for_each(|x| *x += 1);
            })
        }));
        let payload = result.expect_err("the helper's panic must reach the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"a helper's piece failed"));
        // The pool still works afterwards.
        let mut ok = vec![0u32; SERIAL_BELOW * 2];
        for_each(vec![Cells(&mut ok)], |c: Cells| c.0.iter_mut().for_each(|x| *x += 1));
        assert!(ok.iter().all(|&x| x == 1));
        set_num_threads(default_threads()).unwrap();
    }

    #[test]
    fn a_lingering_helper_leaves_on_the_next_call_or_by_itself() {
        use std::sync::atomic::Ordering::Relaxed;
        let _g = crate::test_util::global();
        // Alone, it gives up after LINGER; it leaves as soon as a call is announced.
        let alone = std::thread::spawn(|| wait_for_next_call(CALLS.load(Relaxed)));
        alone.join().unwrap();
        let waiting = std::thread::spawn(|| wait_for_next_call(CALLS.load(Relaxed)));
        CALLS.fetch_add(1, Relaxed);
        waiting.join().unwrap();
        // Calls back to back, across resizes: the old pool's helpers may still be lingering
        // when a new pool takes the next call, and every element is still done once.
        let mut buf = vec![0u32; SERIAL_BELOW * 3 + 5];
        for round in 0..60u32 {
            set_num_threads(1 + (round as usize / 3) % 3).unwrap();
            for_each(vec![Cells(&mut buf)], |c: Cells| c.0.iter_mut().for_each(|x| *x += 1));
            assert!(buf.iter().all(|&x| x == round + 1));
        }
        set_num_threads(default_threads()).unwrap();
    }

    #[test]
    fn runs_hand_out_every_piece_once_own_from_the_front_others_from_the_back() {
        let runs = Runs::new(&[2, 2, 5]);
        // Thread 1 has no piece: it takes thread 2's from the back, then thread 0's.
        assert_eq!(runs.next(1), Some(4));
        assert_eq!(runs.next(0), Some(0));
        assert_eq!(runs.next(2), Some(2));
        assert_eq!(runs.next(2), Some(3));
        assert_eq!(runs.next(2), Some(1));
        assert_eq!((0..3).map(|t| runs.next(t)).collect::<Vec<_>>(), [None, None, None]);
    }

    #[test]
    fn partition_is_contiguous_and_balanced() {
        for (sizes, threads) in [(vec![100_000usize], 2), (vec![10, 70_000, 5, 30_000], 3), (vec![64; 10], 4), (vec![1000], 8)] {
            let total: usize = sizes.iter().sum();
            let mut bufs: Vec<Vec<u32>> = sizes.iter().map(|&n| vec![0; n]).collect();
            let items: Vec<Cells> = bufs.iter_mut().map(|b| Cells(b)).collect();
            let (pieces, ends) = partition(items, total, threads);
            assert_eq!(ends.len(), threads);
            assert!(ends.windows(2).all(|w| w[0] <= w[1]) && ends[threads - 1] == pieces.len());
            let run = |t: usize| (if t == 0 { 0 } else { ends[t - 1] })..ends[t];
            let share = total.div_ceil(threads).next_multiple_of(64);
            let mut pieces: Vec<Option<Cells>> = pieces.into_iter().map(|m| m.into_inner().unwrap()).collect();
            let lens: Vec<usize> = (0..threads).map(|t| pieces[run(t)].iter().map(|c| c.as_ref().unwrap().0.len()).sum()).collect();
            assert_eq!(lens.iter().sum::<usize>(), total);
            assert!(lens.iter().all(|&l| l <= share), "{lens:?} share {share}");
            let piece = share.div_ceil(PIECES).next_multiple_of(64).max(MIN_PIECE);
            assert!(pieces.iter().all(|c| c.as_ref().unwrap().0.len() <= piece));
            for t in 0..threads {
                for k in run(t) {
                    pieces[k].take().unwrap().0.iter_mut().for_each(|x| *x = t as u32 + 1);
                }
            }
            // Every element was assigned, and thread numbers never decrease along the buffers.
            let flat: Vec<u32> = bufs.concat();
            assert!(flat.iter().all(|&x| x > 0));
            assert!(flat.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
