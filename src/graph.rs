//! The dependency graph between relations: deterministic topological order, cycles with
//! their whole path, and transitive dependents.
//!
//! Edges point from a dependency to its dependent (`sales_summary → sales_by_seller`), so
//! the topological order is the order of creation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::name::QualifiedName;

/// Relations and "is read by" edges.
#[derive(Debug, Default, Clone)]
pub struct DependencyGraph {
    graph: DiGraph<QualifiedName, ()>,
    /// Looked up once per node and edge added: hashed with foldhash, not SipHash.
    nodes: HashMap<QualifiedName, NodeIndex, foldhash::fast::RandomState>,
}

/// The graph has a cycle, listed in dependency order starting from its smallest name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circular dependency: {}", render_cycle(.0))]
pub struct Cycle(pub Vec<QualifiedName>);

fn render_cycle(cycle: &[QualifiedName]) -> String {
    cycle
        .iter()
        .chain(cycle.first())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" -> ")
}

impl DependencyGraph {
    /// Adds a node if it is not there yet.
    pub fn add_node(&mut self, name: &QualifiedName) -> NodeIndex {
        if let Some(index) = self.nodes.get(name) {
            return *index;
        }
        let index = self.graph.add_node(name.clone());
        self.nodes.insert(name.clone(), index);
        index
    }

    /// Records that `dependent` reads `dependency` (both added if missing; duplicates ignored).
    pub fn add_edge(&mut self, dependency: &QualifiedName, dependent: &QualifiedName) {
        let from = self.add_node(dependency);
        let to = self.add_node(dependent);
        if !self.graph.contains_edge(from, to) {
            self.graph.add_edge(from, to, ());
        }
    }

    /// Records that `dependent` reads `dependency` when both are nodes already; true if so.
    pub fn add_edge_between_nodes(
        &mut self,
        dependency: &QualifiedName,
        dependent: &QualifiedName,
    ) -> bool {
        let (Some(&from), Some(&to)) = (self.nodes.get(dependency), self.nodes.get(dependent))
        else {
            return false;
        };
        if !self.graph.contains_edge(from, to) {
            self.graph.add_edge(from, to, ());
        }
        true
    }

    pub fn contains(&self, name: &QualifiedName) -> bool {
        self.nodes.contains_key(name)
    }

    /// Every node, dependencies before dependents, ties broken by name (Kahn's algorithm
    /// over a sorted set), so the same graph always gives the same order.
    pub fn topological_order(&self) -> Result<Vec<QualifiedName>, Cycle> {
        // Counted by node index, not looked up by name: names are compared only to order
        // the ready set.
        let mut in_degree: Vec<usize> = self
            .graph
            .node_indices()
            .map(|index| {
                self.graph
                    .neighbors_directed(index, Direction::Incoming)
                    .count()
            })
            .collect();
        let mut ready: BTreeSet<(&QualifiedName, NodeIndex)> = self
            .graph
            .node_indices()
            .filter(|index| in_degree[index.index()] == 0)
            .map(|index| (&self.graph[index], index))
            .collect();
        let mut order = Vec::with_capacity(self.nodes.len());
        while let Some((name, index)) = ready.pop_first() {
            order.push(name.clone());
            for dependent in self.graph.neighbors_directed(index, Direction::Outgoing) {
                let degree = &mut in_degree[dependent.index()];
                *degree -= 1;
                if *degree == 0 {
                    ready.insert((&self.graph[dependent], dependent));
                }
            }
        }
        if order.len() == self.nodes.len() {
            Ok(order)
        } else {
            Err(self
                .cycles()
                .into_iter()
                .next()
                .map_or_else(|| Cycle(Vec::new()), Cycle))
        }
    }

    /// Every cycle, each as a path that starts at its smallest name, each element depending
    /// on the next (`a -> b -> c` reads "a depends on b, which depends on c").
    pub fn cycles(&self) -> Vec<Vec<QualifiedName>> {
        let mut cycles: Vec<Vec<QualifiedName>> = tarjan_scc(&self.graph)
            .into_iter()
            .filter(|component| {
                component.len() > 1 || self.graph.contains_edge(component[0], component[0])
            })
            .map(|component| {
                // Edges run dependency → dependent; reverse to read as "depends on",
                // keeping the smallest name first.
                let mut path = self.cycle_path(&component);
                path[1..].reverse();
                path
            })
            .collect();
        cycles.sort();
        cycles
    }

    /// A simple loop through a strongly connected component, found by walking from its
    /// smallest member along the smallest next member until the walk closes.
    fn cycle_path(&self, component: &[NodeIndex]) -> Vec<QualifiedName> {
        let members: BTreeSet<NodeIndex> = component.iter().copied().collect();
        let Some(start) = component
            .iter()
            .copied()
            .min_by(|a, b| self.graph[*a].cmp(&self.graph[*b]))
        else {
            return Vec::new();
        };
        // Breadth-first search back to `start` gives the shortest loop through it.
        let mut previous: BTreeMap<NodeIndex, NodeIndex> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = self
                .graph
                .neighbors_directed(node, Direction::Outgoing)
                .filter(|n| members.contains(n))
                .collect();
            next.sort_by(|a, b| self.graph[*a].cmp(&self.graph[*b]));
            for neighbour in next {
                if neighbour == start {
                    let mut path = vec![self.graph[node].clone()];
                    let mut cursor = node;
                    while let Some(before) = previous.get(&cursor) {
                        path.push(self.graph[*before].clone());
                        cursor = *before;
                    }
                    path.reverse();
                    return path;
                }
                if neighbour != start && !previous.contains_key(&neighbour) {
                    previous.insert(neighbour, node);
                    queue.push_back(neighbour);
                }
            }
        }
        vec![self.graph[start].clone()]
    }

    /// `roots` and everything that depends on them, transitively.
    pub fn with_dependents<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a QualifiedName>,
    ) -> BTreeSet<QualifiedName> {
        self.closure(roots, Direction::Outgoing)
    }

    /// `roots` and everything they depend on, transitively.
    pub fn with_dependencies<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a QualifiedName>,
    ) -> BTreeSet<QualifiedName> {
        self.closure(roots, Direction::Incoming)
    }

    fn closure<'a>(
        &self,
        roots: impl IntoIterator<Item = &'a QualifiedName>,
        direction: Direction,
    ) -> BTreeSet<QualifiedName> {
        let mut seen = BTreeSet::new();
        let mut pending: Vec<NodeIndex> = roots
            .into_iter()
            .filter_map(|name| self.nodes.get(name).copied())
            .collect();
        while let Some(index) = pending.pop() {
            if seen.insert(self.graph[index].clone()) {
                pending.extend(self.graph.neighbors_directed(index, direction));
            }
        }
        seen
    }

    /// The direct dependencies of `name`, sorted.
    pub fn dependencies(&self, name: &QualifiedName) -> Vec<QualifiedName> {
        self.neighbours(name, Direction::Incoming)
    }

    /// The direct dependents of `name`, sorted.
    pub fn dependents(&self, name: &QualifiedName) -> Vec<QualifiedName> {
        self.neighbours(name, Direction::Outgoing)
    }

    fn neighbours(&self, name: &QualifiedName, direction: Direction) -> Vec<QualifiedName> {
        let Some(index) = self.nodes.get(name) else {
            return Vec::new();
        };
        let mut names: Vec<QualifiedName> = self
            .graph
            .neighbors_directed(*index, direction)
            .map(|n| self.graph[n].clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(name: &str) -> QualifiedName {
        QualifiedName::new("public", name)
    }

    #[test]
    fn orders_dependencies_first_and_breaks_ties_by_name() {
        let mut graph = DependencyGraph::default();
        for name in ["d", "c", "b", "a"] {
            graph.add_node(&n(name));
        }
        graph.add_edge(&n("c"), &n("a"));
        let order = graph.topological_order().expect("acyclic");
        assert_eq!(order, vec![n("b"), n("c"), n("a"), n("d")]);
    }

    #[test]
    fn reports_the_whole_cycle() {
        let mut graph = DependencyGraph::default();
        graph.add_edge(&n("a"), &n("b"));
        graph.add_edge(&n("b"), &n("c"));
        graph.add_edge(&n("c"), &n("a"));
        graph.add_edge(&n("x"), &n("x"));
        // b reads a, c reads b, a reads c: a depends on c, which depends on b.
        assert_eq!(
            graph.cycles(),
            vec![vec![n("a"), n("c"), n("b")], vec![n("x")]]
        );
        let error = graph.topological_order().expect_err("cyclic");
        assert_eq!(
            error.to_string(),
            "circular dependency: public.a -> public.c -> public.b -> public.a"
        );
    }

    #[test]
    fn finds_transitive_dependents() {
        let mut graph = DependencyGraph::default();
        graph.add_edge(&n("a"), &n("b"));
        graph.add_edge(&n("b"), &n("c"));
        graph.add_edge(&n("x"), &n("y"));
        let closure: Vec<_> = graph.with_dependents([&n("a")]).into_iter().collect();
        assert_eq!(closure, vec![n("a"), n("b"), n("c")]);
    }
}
