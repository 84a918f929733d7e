//! The service map the web page draws: containers as nodes grouped by network, the host and the
//! world as nodes of their own, and one edge per flow (port, protocol, allowed or dropped), built
//! from the endpoints and the flow table (no I/O).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::event::Peer;
use super::flows::Flow;
use crate::identity::Identity;

/// The group of nodes that are not endpoints.
pub const OUTSIDE: &str = "outside the networks";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// The container's name, or what the identity stands for (`host`, `world`).
    pub name: String,
    pub network: String,
    pub identity: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub source: String,
    pub target: String,
    /// `80/tcp`, or the protocol alone.
    pub label: String,
    /// "allowed" or "dropped".
    pub verdict: String,
    pub packets: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceMap {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// An endpoint as the map shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEndpoint {
    /// Short endpoint id.
    pub id: String,
    pub name: String,
    pub network: String,
    pub identity: Identity,
}

fn outside_node(peer: &Peer) -> Node {
    let identity = peer.identity.unwrap_or(Identity::WORLD.0);
    let name = match Identity(identity) {
        Identity::HOST => "host".to_owned(),
        Identity::WORLD => "world".to_owned(),
        other => format!("cidr identity {}", other.0),
    };
    Node { id: format!("identity:{identity}"), name, network: OUTSIDE.to_owned(), identity: Some(identity) }
}

/// The map of `endpoints` and the `flows` between them and the rest.
pub fn build(endpoints: &[MapEndpoint], flows: &[Flow]) -> ServiceMap {
    let mut nodes: BTreeMap<String, Node> = endpoints
        .iter()
        .map(|e| {
            let node = Node {
                id: e.id.clone(),
                name: e.name.clone(),
                network: e.network.clone(),
                identity: Some(e.identity.0),
            };
            (e.id.clone(), node)
        })
        .collect();
    let mut node_of = |peer: &Peer| -> String {
        match peer.endpoint.as_ref().filter(|id| nodes.contains_key(*id)) {
            Some(id) => id.clone(),
            None => {
                let node = outside_node(peer);
                let id = node.id.clone();
                nodes.entry(id.clone()).or_insert(node);
                id
            }
        }
    };
    let mut edges: BTreeMap<(String, String, String, String), u64> = BTreeMap::new();
    for flow in flows {
        let (source, target) = (node_of(&flow.source), node_of(&flow.destination));
        let label = match flow.port {
            Some(port) => format!("{port}/{}", flow.protocol),
            None => flow.protocol.clone(),
        };
        *edges.entry((source, target, label, flow.verdict.clone())).or_default() += flow.packets;
    }
    ServiceMap {
        nodes: nodes.into_values().collect(),
        edges: edges
            .into_iter()
            .map(|((source, target, label, verdict), packets)| Edge { source, target, label, verdict, packets })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(from: Peer, to: Peer, port: u16, verdict: &str, packets: u64) -> Flow {
        Flow {
            source: from,
            destination: to,
            port: Some(port),
            protocol: "tcp".into(),
            verdict: verdict.into(),
            reason: None,
            packets,
            bytes: 0,
            first_seen: String::new(),
            last_seen: String::new(),
        }
    }

    fn endpoint(id: &str) -> Peer {
        Peer { endpoint: Some(id.into()), ..Peer::default() }
    }

    #[test]
    fn endpoints_and_outside_peers_are_nodes_and_flows_are_edges_per_port_and_verdict() {
        let endpoints = [
            MapEndpoint { id: "aaaa".into(), name: "api".into(), network: "net1".into(), identity: Identity(257) },
            MapEndpoint { id: "bbbb".into(), name: "web".into(), network: "net1".into(), identity: Identity(256) },
            MapEndpoint { id: "cccc".into(), name: "idle".into(), network: "net2".into(), identity: Identity(258) },
        ];
        let world = Peer { address: Some("198.51.100.2".parse().expect("ip")), identity: Some(2), ..Peer::default() };
        let flows = [
            flow(endpoint("aaaa"), endpoint("bbbb"), 80, "allowed", 3),
            flow(endpoint("aaaa"), endpoint("bbbb"), 80, "allowed", 2),
            flow(world.clone(), endpoint("bbbb"), 80, "dropped", 7),
            flow(endpoint("gone"), endpoint("bbbb"), 81, "dropped", 1),
        ];
        let map = build(&endpoints, &flows);
        let names: Vec<&str> = map.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["api", "web", "idle", "world"], "every endpoint, and world once");
        assert_eq!(map.nodes[3].network, OUTSIDE);
        let edge = |s: &str, verdict: &str| map.edges.iter().find(|e| e.source == s && e.verdict == verdict);
        assert_eq!(edge("aaaa", "allowed").map(|e| (e.packets, e.label.as_str())), Some((5, "80/tcp")));
        assert_eq!(edge("identity:2", "dropped").map(|e| e.target.as_str()), Some("bbbb"));
        assert_eq!(map.edges.len(), 3, "a gone endpoint's flow comes from world: {:?}", map.edges);
    }
}
