"""Unit tests of the Kafka dev broker's pure parts and its error paths (no JVM is started)."""

from __future__ import annotations

import re
import socket
import stat
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

from streams.dev import free_loopback_ports, kafka
from streams.dev.kafka import (
    KafkaBroker,
    check_java,
    ensure_jars,
    new_cluster_id,
    parse_java_major_version,
    render_pom,
    render_server_properties,
)
from streams.errors import InfraError

FAKE_VERSION = "9.9.9"
FAKE_JARS = (f"kafka_2.13-{FAKE_VERSION}.jar", "kafka-clients-9.9.9.jar", "slf4j-api-1.7.36.jar")


def _parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _write_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# -- server.properties --------------------------------------------------------


def test_server_properties_make_a_single_node_kraft_cluster(tmp_path: Path) -> None:
    properties = _parse_properties(render_server_properties(19092, 19093, tmp_path / "data"))

    assert properties["process.roles"] == "broker,controller"
    assert properties["node.id"] == "1"
    assert properties["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert properties["controller.listener.names"] == "CONTROLLER"
    assert properties["inter.broker.listener.name"] == "PLAINTEXT"
    assert properties["log.dirs"] == str(tmp_path / "data")
    # Internal topics must fit on one node, or groups and transactions never work.
    assert properties["offsets.topic.replication.factor"] == "1"
    assert properties["transaction.state.log.replication.factor"] == "1"
    assert properties["transaction.state.log.min.isr"] == "1"
    assert properties["group.initial.rebalance.delay.ms"] == "0"
    assert properties["auto.create.topics.enable"] == "false"


def test_server_properties_listen_on_loopback_only(tmp_path: Path) -> None:
    properties = _parse_properties(render_server_properties(19092, 19093, tmp_path))

    assert properties["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert properties["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert set(properties["listener.security.protocol.map"].split(",")) == {
        "CONTROLLER:PLAINTEXT",
        "PLAINTEXT:PLAINTEXT",
    }


def test_pom_names_the_broker_and_a_logging_binding() -> None:
    pom = render_pom("4.1.1")

    root = ElementTree.fromstring(pom)
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    dependencies = {
        (dep.findtext("m:artifactId", "", namespace), dep.findtext("m:version", "", namespace))
        for dep in root.iterfind("m:dependencies/m:dependency", namespace)
    }
    assert ("kafka_2.13", "4.1.1") in dependencies
    assert ("log4j-slf4j-impl", kafka.LOG4J_VERSION) in dependencies
    assert ("log4j-core", kafka.LOG4J_VERSION) in dependencies
    assert "@" not in pom


def test_cluster_ids_look_like_kafka_uuids() -> None:
    ids = {new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    for cluster_id in ids:
        assert len(cluster_id) == 22
        assert not cluster_id.startswith("-")
        assert set(cluster_id) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


# -- Java detection -------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_292"\nJava(TM) SE Runtime Environment', 8),
        ('openjdk version "11.0.2-ea" 2019-01-15', 11),
        ('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\nopenjdk version "25-ea" 2025-09-16', 25),
        ("bash: java: command not found", None),
        ("", None),
    ],
)
def test_java_major_version_is_parsed(output: str, major: int | None) -> None:
    assert parse_java_major_version(output) == major


def test_missing_java_is_one_line_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(InfraError) as caught:
        check_java()

    message = str(caught.value)
    assert "\n" not in message
    assert "Java 17+" in message
    assert "java not found" in message
    assert "openjdk-17-jdk-headless" in message
    assert "docker compose up" in message


def test_old_java_is_reported_with_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_script(tmp_path / "java", "echo 'openjdk version \"11.0.22\" 2024-01-16' >&2\nexit 0\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(InfraError, match=r"Kafka needs Java 17\+ \(found 11\): install"):
        check_java()


def test_java_home_wins_over_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    _write_script(java_home / "bin" / "java", "echo 'openjdk version \"17.0.1\"' >&2\n")
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    assert check_java() == java_home / "bin" / "java"


def test_start_without_java_fails_before_writing_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    port, controller_port = free_loopback_ports(2)

    with pytest.raises(InfraError, match="Java 17"):
        KafkaBroker(tmp_path / "state", port=port, controller_port=controller_port).start()

    assert not (tmp_path / "state" / "kafka" / "data").exists()


# -- the jar cache ----------------------------------------------------------------


@pytest.fixture
def fake_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH holding only a fake ``mvn`` that records each call and writes FAKE_JARS.

    Set FAKE_MVN_FAIL=1 to make it fail. Returns the file listing its invocations.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "mvn-calls"
    script = bin_dir / "mvn"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, sys\n"
        f"with open({str(calls)!r}, 'a') as log:\n"
        "    log.write(' '.join(sys.argv[1:]) + '\\n')\n"
        "if os.environ.get('FAKE_MVN_FAIL'):\n"
        "    print('[ERROR] Could not resolve dependencies')\n"
        "    sys.exit(1)\n"
        "(out,) = [a.split('=', 1)[1] for a in sys.argv if a.startswith('-DoutputDirectory=')]\n"
        "pathlib.Path(out).mkdir(parents=True)\n"
        f"for name in {FAKE_JARS!r}:\n"
        "    (pathlib.Path(out) / name).touch()\n",
        encoding="utf-8",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FAKE_MVN_FAIL", raising=False)
    monkeypatch.setattr(kafka, "check_java", lambda: Path("/usr/bin/java"))
    return calls


def _calls(calls: Path) -> list[str]:
    return calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []


def test_first_ensure_jars_runs_maven_and_marks_the_cache_complete(fake_maven: Path) -> None:
    cache = ensure_jars(FAKE_VERSION)

    assert cache.fetched
    assert cache.jars == tuple(sorted(FAKE_JARS))
    assert sorted(path.name for path in cache.directory.iterdir()) == sorted(FAKE_JARS)
    assert (cache.directory.parent / "jars.complete").is_file()
    (call,) = _calls(fake_maven)
    assert "dependency:copy-dependencies" in call
    assert "-DincludeScope=runtime" in call


def test_complete_cache_needs_no_maven(fake_maven: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_jars(FAKE_VERSION)
    monkeypatch.setenv("PATH", str(fake_maven.parent / "empty"))  # No mvn at all now.

    cache = ensure_jars(FAKE_VERSION)

    assert not cache.fetched
    assert len(_calls(fake_maven)) == 1


def test_half_download_is_redone(fake_maven: Path) -> None:
    first = ensure_jars(FAKE_VERSION)
    (first.directory.parent / "jars.complete").unlink()  # As if killed before the marker.
    (first.directory / FAKE_JARS[1]).unlink()

    second = ensure_jars(FAKE_VERSION)

    assert second.fetched
    assert len(_calls(fake_maven)) == 2
    assert (second.directory / FAKE_JARS[1]).is_file()


def test_cache_missing_a_listed_jar_is_redone(fake_maven: Path) -> None:
    first = ensure_jars(FAKE_VERSION)
    (first.directory / FAKE_JARS[0]).unlink()

    assert ensure_jars(FAKE_VERSION).fetched


def test_failed_maven_leaves_no_marker_and_quotes_maven(
    fake_maven: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MVN_FAIL", "1")

    with pytest.raises(InfraError, match="Could not resolve dependencies") as caught:
        ensure_jars(FAKE_VERSION)

    assert f"Kafka {FAKE_VERSION}" in str(caught.value)
    assert not (kafka.kafka_cache_dir(FAKE_VERSION) / "jars.complete").exists()


def test_missing_maven_says_what_to_install(
    fake_maven: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(fake_maven.parent / "empty"))

    with pytest.raises(InfraError, match=r"needs Maven \(mvn not found\): install"):
        ensure_jars(FAKE_VERSION)


# -- broker arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        ({"version": "4.1.1; rm -rf /"}, "'4.1.1; rm -rf /' is not a release number"),
        ({"port": 9092, "controller_port": 9092}, "both 9092"),
        ({"port": 70000}, "70000 is not a TCP port"),
        ({"heap_mb": 64}, "heap 64 MB is below"),
    ],
)
def test_bad_broker_arguments_are_named(
    tmp_path: Path, arguments: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InfraError, match=re.escape(fragment)):
        KafkaBroker(tmp_path, **arguments)  # type: ignore[arg-type]


def test_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (controller_port,) = free_loopback_ports(1)
        broker = KafkaBroker(tmp_path, port=port, controller_port=controller_port)

        with pytest.raises(InfraError, match=f"kafka port {port} on 127.0.0.1 is taken"):
            broker.start()


def test_status_of_a_never_started_broker(tmp_path: Path) -> None:
    status = KafkaBroker(tmp_path, port=19092, controller_port=19093).status()

    assert not status.running
    assert not status.healthy
    assert status.pid is None
    assert status.bootstrap == "127.0.0.1:19092"


def test_stop_when_nothing_runs_is_a_no_op(tmp_path: Path) -> None:
    assert KafkaBroker(tmp_path).stop() == []
