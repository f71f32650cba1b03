//! Runs the nodes of a [`StepGraph`] on threads, each as soon as its predecessors are done,
//! with a bounded number running at once.
//!
//! `--jobs N` is a hard limit. Without it the limit adapts: as many steps as CPUs, and more
//! while the CPUs sit idle (steps blocked in `sleep`, network or disk), up to four per CPU:
//! every [`IDLE_SAMPLE`] the scheduler reads `/proc/stat`, and if at least one CPU's worth of
//! time went idle it starts one more ready step. CPU-bound steps therefore never
//! oversubscribe the machine, while waiting steps do not hold back others (BuildKit runs
//! everything at once; a fixed `-j` leaves CPUs idle).
//!
//! When several nodes are ready, the one with the longest path to the end of the build starts
//! first (critical path first). The first failure stops further starts; running nodes are
//! left to notice the [`CancelToken`] and the first error is returned once all have returned.

use std::collections::{BTreeMap, BinaryHeap};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::sandbox::CancelToken;
use super::ExecError;
use crate::graph::dag::{Node, StepGraph};

/// How often idle CPU time is sampled to decide whether one more step may start.
pub const IDLE_SAMPLE: Duration = Duration::from_millis(50);

/// How many steps may run at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Jobs {
    /// Always allowed.
    pub limit: usize,
    /// Allowed while CPUs are idle (equal to `limit` for a hard limit).
    pub burst: usize,
}

impl Jobs {
    /// `--jobs N`: exactly N.
    pub fn fixed(n: usize) -> Jobs {
        Jobs {
            limit: n.max(1),
            burst: n.max(1),
        }
    }

    /// The default: one per CPU, up to four per CPU while CPUs are idle.
    pub fn adaptive() -> Jobs {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Jobs {
            limit: cpus,
            burst: cpus * 4,
        }
    }
}

/// Idle time of the whole machine from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    idle: u64,
    total: u64,
}

fn sample_cpu() -> Option<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some(CpuSample {
        at: Instant::now(),
        idle,
        total: v.iter().take(8).sum(),
    })
}

/// Decides whether one more node may start.
struct Admission {
    jobs: Jobs,
    cpus: f64,
    /// Reads the machine's CPU times (`sample_cpu`; tests pass a stand-in).
    sample: fn() -> Option<CpuSample>,
    since: Option<CpuSample>,
}

impl Admission {
    fn new(jobs: Jobs, sample: fn() -> Option<CpuSample>) -> Admission {
        Admission {
            jobs,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            sample,
            since: sample(),
        }
    }

    fn may_start(&mut self, running: usize) -> bool {
        if running < self.jobs.limit {
            return true;
        }
        if running >= self.jobs.burst {
            return false;
        }
        let Some(since) = self.since else {
            self.since = (self.sample)();
            return false;
        };
        if since.at.elapsed() < IDLE_SAMPLE {
            return false;
        }
        let Some(now) = (self.sample)() else {
            return false;
        };
        let total = now.total.saturating_sub(since.total);
        let idle = now.idle.saturating_sub(since.idle);
        // A new measurement window starts either way: a step started now must show up in
        // the next decision.
        self.since = Some(now);
        total > 0 && (idle as f64 / total as f64) * self.cpus >= 1.0
    }
}

/// Runs every node of `graph` with `run`, respecting dependencies and `jobs`. Nodes for which
/// `light` is true (bookkeeping without real work) do not count against the limit.
pub fn run_graph(
    graph: &StepGraph,
    jobs: Jobs,
    cancel: &CancelToken,
    light: &(dyn Fn(Node) -> bool + Sync),
    run: &(dyn Fn(Node) -> Result<(), ExecError> + Sync),
) -> Result<(), ExecError> {
    run_graph_with(graph, Admission::new(jobs, sample_cpu), cancel, light, run)
}

fn run_graph_with(
    graph: &StepGraph,
    mut admission: Admission,
    cancel: &CancelToken,
    light: &(dyn Fn(Node) -> bool + Sync),
    run: &(dyn Fn(Node) -> Result<(), ExecError> + Sync),
) -> Result<(), ExecError> {
    let depths = graph.depths();
    let mut waiting: BTreeMap<Node, usize> =
        graph.nodes().map(|n| (n, graph.in_degree(n))).collect();
    // Max-heap on (depth, reverse node order): critical path first, then plan order.
    let mut ready: BinaryHeap<(usize, std::cmp::Reverse<Node>)> = BinaryHeap::new();
    for (&n, &d) in &waiting {
        if d == 0 {
            ready.push((depths.get(&n).copied().unwrap_or(0), std::cmp::Reverse(n)));
        }
    }
    waiting.retain(|_, d| *d > 0);
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel::<(Node, Result<(), ExecError>)>();
        let mut running_heavy = 0usize;
        let mut running = 0usize;
        let mut failure: Option<ExecError> = None;
        loop {
            while failure.is_none() {
                let Some(&(_, std::cmp::Reverse(node))) = ready.peek() else {
                    break;
                };
                let heavy = !light(node);
                if heavy && !admission.may_start(running_heavy) {
                    break;
                }
                ready.pop();
                running += 1;
                if heavy {
                    running_heavy += 1;
                }
                let tx = tx.clone();
                scope.spawn(move || {
                    let _ = tx.send((node, run(node)));
                });
            }
            if running == 0 {
                break;
            }
            // While steps wait for a free slot, wake up to re-check idle CPUs.
            let timeout = if ready.is_empty() || failure.is_some() {
                Duration::from_secs(3600)
            } else {
                IDLE_SAMPLE
            };
            let (node, result) = match rx.recv_timeout(timeout) {
                Ok(done) => done,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            running -= 1;
            if !light(node) {
                running_heavy -= 1;
            }
            match result {
                Ok(()) => {
                    for next in graph.successors(node) {
                        if let Some(d) = waiting.get_mut(&next) {
                            *d -= 1;
                            if *d == 0 {
                                waiting.remove(&next);
                                ready.push((
                                    depths.get(&next).copied().unwrap_or(0),
                                    std::cmp::Reverse(next),
                                ));
                            }
                        }
                    }
                }
                Err(e) => {
                    cancel.cancel();
                    failure.get_or_insert(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None if !waiting.is_empty() || !ready.is_empty() => Err(ExecError::Store(
                "some steps could not be scheduled (dependency cycle)".into(),
            )),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine whose CPUs are always idle: 100 ticks per millisecond, all idle.
    fn all_idle() -> Option<CpuSample> {
        let at = Instant::now();
        let ticks = START.with(|s| at.duration_since(*s).as_millis() as u64 * 100);
        Some(CpuSample {
            at,
            idle: ticks,
            total: ticks,
        })
    }

    thread_local! {
        static START: Instant = Instant::now();
    }

    /// Two independent stages and a final one that copies from both.
    const THREE_STAGES: &str = "FROM scratch AS a\nCOPY a /a\nFROM scratch AS b\nCOPY b /b\nFROM scratch\nCOPY c /c\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n";

    #[test]
    fn fixed_jobs_never_burst() {
        let mut a = Admission::new(Jobs::fixed(2), all_idle);
        assert!(a.may_start(0));
        assert!(a.may_start(1));
        assert!(!a.may_start(2));
        std::thread::sleep(IDLE_SAMPLE * 2);
        assert!(!a.may_start(2));
    }

    #[test]
    fn adaptive_jobs_burst_only_after_a_sample_of_idle_time() {
        let mut a = Admission::new(Jobs { limit: 1, burst: 3 }, all_idle);
        assert!(a.may_start(0));
        // Right away there is no measurement yet.
        assert!(!a.may_start(1));
        std::thread::sleep(IDLE_SAMPLE + Duration::from_millis(10));
        assert!(a.may_start(1));
        // A new window starts with each decision.
        assert!(!a.may_start(2));
        std::thread::sleep(IDLE_SAMPLE + Duration::from_millis(10));
        assert!(!a.may_start(3), "never beyond the burst limit");
        assert!(a.may_start(2));
    }

    /// Three independent stages that each wait until all three are running: only possible
    /// if the scheduler starts more than `limit` steps while the CPUs are idle (here a
    /// stand-in machine that is always idle).
    #[test]
    fn idle_cpus_let_more_steps_start() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let plan = crate::graph::dag::tests::plan(THREE_STAGES);
        let graph = StepGraph::new(&plan).expect("graph");
        let arrived = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        let first_ops = |n: Node| matches!(n, Node::Op { op: 0, .. });
        let run = |n: Node| -> Result<(), ExecError> {
            if first_ops(n) {
                let now = arrived.fetch_add(1, Ordering::SeqCst) + 1;
                max_seen.fetch_max(now, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(20);
                while arrived.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            Ok(())
        };
        let light = |n: Node| !first_ops(n);
        let jobs = Jobs { limit: 1, burst: 3 };
        let admission = Admission::new(jobs, all_idle);
        run_graph_with(&graph, admission, &CancelToken::new(), &light, &run).expect("runs");
        assert_eq!(max_seen.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn a_fixed_limit_is_never_exceeded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let plan = crate::graph::dag::tests::plan(THREE_STAGES);
        let graph = StepGraph::new(&plan).expect("graph");
        let running = AtomicUsize::new(0);
        let max_seen = AtomicUsize::new(0);
        let run = |_: Node| -> Result<(), ExecError> {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            max_seen.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        };
        run_graph(
            &graph,
            Jobs::fixed(2),
            &CancelToken::new(),
            &|_| false,
            &run,
        )
        .expect("runs");
        assert_eq!(max_seen.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_first_failure_is_returned_and_cancels() {
        let plan = crate::graph::dag::tests::plan(
            "FROM scratch AS a\nCOPY a /a\nFROM scratch\nCOPY --from=a /a /a\n",
        );
        let graph = StepGraph::new(&plan).expect("graph");
        let cancel = CancelToken::new();
        let ran_after = std::sync::atomic::AtomicBool::new(false);
        let run = |n: Node| -> Result<(), ExecError> {
            match n {
                Node::Op { stage: 0, .. } => Err(ExecError::Failed("boom".into())),
                Node::Op { stage: 1, .. } => {
                    ran_after.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                }
                _ => Ok(()),
            }
        };
        let err = run_graph(&graph, Jobs::fixed(2), &cancel, &|_| false, &run).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(cancel.is_cancelled());
        assert!(!ran_after.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn proc_stat_is_readable() {
        let s = sample_cpu().expect("/proc/stat");
        assert!(s.total >= s.idle);
    }
}
