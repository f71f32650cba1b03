//! The build DAG: every step of every planned stage as a node of a petgraph graph, with an
//! edge from each step to the steps that need its result. The executor's scheduler walks it
//! (a step runs once all its predecessors are done), so work is ordered by real data
//! dependencies, not by stage: in `FROM a AS b; RUN x; COPY --from=c …`, `RUN x` runs while
//! stage `c` is still building, as in BuildKit's solver.
//!
//! Nodes per stage: [`Node::Start`] (the base is ready: scratch, an image's snapshots, or the
//! base stage's result), one [`Node::Op`] per instruction, and [`Node::End`] (the stage's
//! result is published for later stages). Edges:
//! - `End(base stage) → Start(stage)`;
//! - `Start → Op 0 → Op 1 → … → End` (a stage's steps run in order);
//! - `End(source stage) → Op` for `COPY --from=STAGE` and `RUN --mount from=STAGE`.
//!
//! Only stages in the plan appear (the dispatcher already dropped the ones the target does not
//! need), so an unused stage is never built.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;

use super::dispatch::{Base, CopyFrom, OpKind, Plan};

/// One node of the build graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    /// The stage's base is resolved (plan stage index).
    Start(usize),
    /// Instruction `op` of stage `stage` (position in `StagePlan::ops`).
    Op { stage: usize, op: usize },
    /// The stage is complete and its result visible to other stages.
    End(usize),
}

impl Node {
    /// The stage this node belongs to.
    pub fn stage(self) -> usize {
        match self {
            Node::Start(s) | Node::End(s) | Node::Op { stage: s, .. } => s,
        }
    }
}

/// Why the graph could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DagError {
    #[error("stage {stage} depends on stage {missing}, which is not part of the build")]
    MissingStage { stage: usize, missing: usize },
    #[error("the stages depend on each other in a cycle (through stage {0})")]
    Cycle(usize),
}

/// The step graph of a plan.
#[derive(Debug)]
pub struct StepGraph {
    graph: DiGraph<Node, ()>,
    index: BTreeMap<Node, NodeIndex>,
}

impl StepGraph {
    /// Builds the graph of `plan` and checks it has no cycle.
    pub fn new(plan: &Plan) -> Result<StepGraph, DagError> {
        let mut graph = DiGraph::new();
        let mut index = BTreeMap::new();
        for stage in &plan.stages {
            let s = stage.index;
            let mut prev = graph.add_node(Node::Start(s));
            index.insert(Node::Start(s), prev);
            for op in 0..stage.ops.len() {
                let node = Node::Op { stage: s, op };
                let n = graph.add_node(node);
                index.insert(node, n);
                graph.add_edge(prev, n, ());
                prev = n;
            }
            let end = graph.add_node(Node::End(s));
            index.insert(Node::End(s), end);
            graph.add_edge(prev, end, ());
        }
        let end_of = |stage: usize, of: usize| {
            index
                .get(&Node::End(of))
                .copied()
                .ok_or(DagError::MissingStage { stage, missing: of })
        };
        let mut edges = Vec::new();
        for stage in &plan.stages {
            let s = stage.index;
            if let Base::Stage(b) = stage.base {
                edges.push((end_of(s, b)?, index[&Node::Start(s)]));
            }
            for (i, op) in stage.ops.iter().enumerate() {
                let sources: Vec<usize> = match &op.kind {
                    OpKind::Copy(c) => match c.from {
                        CopyFrom::Stage(from) => vec![from],
                        _ => Vec::new(),
                    },
                    OpKind::Run { parsed_mounts, .. } => parsed_mounts
                        .iter()
                        .filter_map(|m| m.from.as_deref())
                        .filter_map(|name| plan.stage_named(name).map(|st| st.index))
                        .collect(),
                    _ => Vec::new(),
                };
                for from in sources {
                    edges.push((end_of(s, from)?, index[&Node::Op { stage: s, op: i }]));
                }
            }
        }
        for (a, b) in edges {
            graph.update_edge(a, b, ());
        }
        petgraph::algo::toposort(&graph, None)
            .map_err(|c| DagError::Cycle(graph[c.node_id()].stage()))?;
        Ok(StepGraph { graph, index })
    }

    /// Every node, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = Node> + '_ {
        self.graph.node_weights().copied()
    }

    /// How many nodes must finish before `node` may run.
    pub fn in_degree(&self, node: Node) -> usize {
        self.index.get(&node).map_or(0, |&n| {
            self.graph
                .neighbors_directed(n, Direction::Incoming)
                .count()
        })
    }

    /// The nodes that wait for `node`.
    pub fn successors(&self, node: Node) -> Vec<Node> {
        self.index.get(&node).map_or_else(Vec::new, |&n| {
            self.graph
                .neighbors_directed(n, Direction::Outgoing)
                .map(|m| self.graph[m])
                .collect()
        })
    }

    /// Length (in nodes) of the longest path from `node` to the end of the build: nodes on
    /// the critical path are started first when several are ready.
    pub fn depths(&self) -> BTreeMap<Node, usize> {
        let order = petgraph::algo::toposort(&self.graph, None).unwrap_or_default();
        let mut depth: BTreeMap<Node, usize> = BTreeMap::new();
        for &n in order.iter().rev() {
            let d = self
                .graph
                .neighbors_directed(n, Direction::Outgoing)
                .map(|m| depth.get(&self.graph[m]).copied().unwrap_or(0))
                .max()
                .unwrap_or(0)
                + 1;
            depth.insert(self.graph[n], d);
        }
        depth
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::dispatch::{dispatch, DispatchOptions, ImageSource, ResolvedImage};

    struct NoImages;
    impl ImageSource for NoImages {
        fn resolve(&self, reference: &str) -> Result<ResolvedImage, String> {
            Err(format!("no image {reference}"))
        }
    }

    /// The plan of a Dockerfile that uses no images.
    pub(crate) fn plan(dockerfile: &str) -> Plan {
        let df = crate::parser::parse(dockerfile).expect("parses");
        let mut opts = DispatchOptions::default();
        opts.build.target_platform =
            crate::graph::Platform::parse("linux/amd64").expect("platform");
        dispatch(&df, &opts, &NoImages).expect("dispatches")
    }

    #[test]
    fn copy_from_waits_only_for_the_step_that_needs_it() {
        let p = plan(
            "FROM scratch AS a\nCOPY x /x\nFROM scratch AS b\nCOPY y /y\nCOPY --from=a /x /x\n",
        );
        let g = StepGraph::new(&p).expect("acyclic");
        // b's first COPY waits only for b's start; the second also for a's end.
        assert_eq!(g.in_degree(Node::Op { stage: 1, op: 0 }), 1);
        assert_eq!(g.in_degree(Node::Op { stage: 1, op: 1 }), 2);
        assert_eq!(
            g.successors(Node::End(0)),
            vec![Node::Op { stage: 1, op: 1 }]
        );
        assert_eq!(g.in_degree(Node::Start(0)), 0);
        assert_eq!(g.in_degree(Node::Start(1)), 0);
    }

    #[test]
    fn base_stage_precedes_start_and_depths_follow_the_critical_path() {
        let p = plan("FROM scratch AS a\nCOPY x /x\nCOPY y /y\nFROM a\nCOPY z /z\n");
        let g = StepGraph::new(&p).expect("acyclic");
        assert_eq!(g.successors(Node::End(0)), vec![Node::Start(1)]);
        let depths = g.depths();
        assert!(depths[&Node::Start(0)] > depths[&Node::Start(1)]);
        assert_eq!(depths[&Node::End(1)], 1);
    }

    #[test]
    fn unused_stages_are_not_in_the_graph() {
        let p = plan("FROM scratch AS unused\nCOPY a /a\nFROM scratch\nCOPY b /b\n");
        let g = StepGraph::new(&p).expect("acyclic");
        assert!(g.nodes().all(|n| n.stage() == 1));
    }
}
