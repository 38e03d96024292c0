"""Unit tests of the multi-node Kafka cluster's pure parts (no JVM is started)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.dev.kafka import (
    CLUSTER_MIN_INSYNC_REPLICAS,
    ClusterMembership,
    KafkaBroker,
    KafkaCluster,
    render_server_properties,
)
from streams.errors import InfraError

VOTERS = ((1, 29093), (2, 29095), (3, 29097))
CLUSTER_ID = "q1Sh-9_ISia_zwGINzRvyQ"
PORTS = ((29092, 29093), (29094, 29095), (29096, 29097))


def _parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _node_properties(node_id: int, tmp_path: Path) -> dict[str, str]:
    port, controller_port = PORTS[node_id - 1]
    membership = ClusterMembership(node_id, VOTERS, CLUSTER_ID)
    return _parse_properties(
        render_server_properties(port, controller_port, tmp_path / f"node-{node_id}", membership)
    )


# -- server.properties of a cluster node ------------------------------------------


def test_every_node_names_the_same_quorum_of_all_three(tmp_path: Path) -> None:
    nodes = [_node_properties(node_id, tmp_path) for node_id in (1, 2, 3)]

    voters = {properties["controller.quorum.voters"] for properties in nodes}
    assert voters == {"1@127.0.0.1:29093,2@127.0.0.1:29095,3@127.0.0.1:29097"}
    assert [properties["node.id"] for properties in nodes] == ["1", "2", "3"]
    assert all(p["process.roles"] == "broker,controller" for p in nodes)


def test_a_node_listens_on_its_own_ports_and_log_dir(tmp_path: Path) -> None:
    properties = _node_properties(2, tmp_path)

    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:29094,CONTROLLER://127.0.0.1:29095"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:29094"
    assert properties["log.dirs"] == str(tmp_path / "node-2")


def test_topics_are_replicated_to_every_node_with_min_isr_two(tmp_path: Path) -> None:
    properties = _node_properties(1, tmp_path)

    assert properties["default.replication.factor"] == "3"
    assert properties["min.insync.replicas"] == str(CLUSTER_MIN_INSYNC_REPLICAS) == "2"
    assert properties["unclean.leader.election.enable"] == "false"
    # Internal topics too: group offsets must survive the loss of a node.
    assert properties["offsets.topic.replication.factor"] == "3"
    assert properties["transaction.state.log.replication.factor"] == "3"
    assert properties["transaction.state.log.min.isr"] == "2"
    assert properties["share.coordinator.state.topic.replication.factor"] == "3"
    assert properties["share.coordinator.state.topic.min.isr"] == "2"
    assert properties["auto.create.topics.enable"] == "false"
    assert properties["group.initial.rebalance.delay.ms"] == "0"


def test_a_single_node_keeps_its_one_node_settings(tmp_path: Path) -> None:
    properties = _parse_properties(render_server_properties(19092, 19093, tmp_path))

    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["offsets.topic.replication.factor"] == "1"
    assert "min.insync.replicas" not in properties
    assert "default.replication.factor" not in properties


def test_min_isr_can_be_asked_for(tmp_path: Path) -> None:
    membership = ClusterMembership(1, VOTERS, CLUSTER_ID, min_insync_replicas=3)
    properties = _parse_properties(render_server_properties(29092, 29093, tmp_path, membership))

    assert properties["min.insync.replicas"] == "3"
    assert properties["transaction.state.log.min.isr"] == "3"


# -- membership checks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "voters", "min_isr", "fragment"),
    [
        (4, VOTERS, 2, "node 4 is not among the voters"),
        (1, ((1, 29093), (1, 29095)), 1, "repeat a node id or a port"),
        (1, ((1, 29093), (2, 29093)), 1, "repeat a node id or a port"),
        (1, VOTERS, 0, "min.insync.replicas 0 is not in 1..3"),
        (1, VOTERS, 4, "min.insync.replicas 4 is not in 1..3"),
    ],
)
def test_inconsistent_membership_is_named(
    node_id: int, voters: tuple[tuple[int, int], ...], min_isr: int, fragment: str
) -> None:
    with pytest.raises(InfraError, match=re.escape(fragment)):
        ClusterMembership(node_id, voters, CLUSTER_ID, min_isr)


def test_a_node_whose_controller_port_is_not_its_voter_entry_is_refused(tmp_path: Path) -> None:
    membership = ClusterMembership(1, VOTERS, CLUSTER_ID)

    with pytest.raises(InfraError, match="controller port 29999 is not its voter entry"):
        KafkaBroker(tmp_path, port=29092, controller_port=29999, membership=membership)
    with pytest.raises(InfraError, match="controller port 29999 is not its voter entry"):
        render_server_properties(29092, 29999, tmp_path, membership)


# -- the cluster object -------------------------------------------------------------------


def test_a_cluster_is_three_nodes_with_their_own_dirs_and_ports(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, ports=PORTS, heap_mb=512)

    assert [node.node_id for node in cluster.nodes] == [1, 2, 3]
    assert cluster.bootstrap == "127.0.0.1:29092,127.0.0.1:29094,127.0.0.1:29096"
    assert cluster.replication_factor == 3
    homes = {node.home for node in cluster.nodes}
    assert len(homes) == 3
    assert all(home.is_relative_to(tmp_path.resolve() / "kafka-cluster") for home in homes)
    memberships = [node.membership for node in cluster.nodes]
    assert all(m is not None and m.cluster_id == cluster.cluster_id for m in memberships)
    assert all(m is not None and m.voters == VOTERS for m in memberships)
    assert cluster.node(3).bootstrap == "127.0.0.1:29096"


def test_a_cluster_gets_free_ports_when_none_are_given(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path)

    ports = [port for node in cluster.nodes for port in (node.port, node.controller_port)]
    assert len(set(ports)) == 6


def test_a_formatted_cluster_keeps_its_id(tmp_path: Path) -> None:
    first = KafkaCluster(tmp_path, ports=PORTS)
    meta = first.node(2).log_dir / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text(f"node.id=2\nversion=1\ncluster.id={CLUSTER_ID}\n", encoding="utf-8")

    again = KafkaCluster(tmp_path, ports=PORTS)

    assert again.cluster_id == CLUSTER_ID
    assert all(node.membership and node.membership.cluster_id == CLUSTER_ID for node in again.nodes)


def test_fewer_than_three_nodes_cannot_lose_one(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="cannot lose one and keep a quorum"):
        KafkaCluster(tmp_path, ports=PORTS[:2])


def test_unknown_node_is_named(tmp_path: Path) -> None:
    with pytest.raises(InfraError, match=re.escape("no node 4 in this cluster: nodes are 1..3")):
        KafkaCluster(tmp_path, ports=PORTS).node(4)


def test_stopping_or_killing_a_cluster_that_does_not_run_is_a_no_op(tmp_path: Path) -> None:
    cluster = KafkaCluster(tmp_path, ports=PORTS)

    assert cluster.stop() == []
    assert cluster.kill(1) is None
    assert cluster.leftover_pids() == []
    assert [status.running for status in cluster.status()] == [False, False, False]
