"""Node names and Celery's %-abbreviations."""

from __future__ import annotations

import os
import socket

import pytest

from celeriac.utils.nodenames import (
    default_nodename,
    expand_hostname,
    gen_nodename,
    gethostname,
    node_format,
    nodename,
    nodesplit,
)


def test_default_nodename_follows_celery() -> None:
    host = socket.gethostname()
    assert gethostname() == host
    assert default_nodename() == f"celery@{host}"
    assert default_nodename("w1@example.com") == "w1@example.com"
    assert default_nodename("example.com") == "celery@example.com"
    assert default_nodename("w1@") == f"w1@{host}"


def test_gen_nodename_carries_this_pid() -> None:
    assert gen_nodename("box") == f"gen{os.getpid()}@box"
    assert gen_nodename().endswith("@" + socket.gethostname())


def test_nodename_and_nodesplit() -> None:
    assert nodename("w1", "host") == "w1@host"
    assert nodesplit("w1@host@x") == ("w1", "host@x")
    assert nodesplit("host") == (None, "host")


@pytest.mark.parametrize(
    ("template", "index", "expected"),
    [
        ("worker1@%h", None, "worker1@w1.example.com"),
        ("%n@%d", None, "w1@example.com"),
        ("%n-%i.log", None, "w1-0.log"),
        ("%n-%i.log", 3, "w1-3.log"),
        ("%n%I.log", None, "w1.log"),
        ("%n%I.log", 2, "w1-2.log"),
        ("100%% %h", None, "100% w1.example.com"),
        ("plain", None, "plain"),
    ],
)
def test_expand_hostname(template: str, index: int | None, expected: str) -> None:
    assert expand_hostname(template, index, host="w1.example.com") == expected


def test_expand_hostname_defaults_to_this_host() -> None:
    assert expand_hostname("x@%h") == f"x@{socket.gethostname()}"


@pytest.mark.parametrize(
    ("template", "message"), [("%q", "unknown format key %q"), ("a%", "dangling")]
)
def test_expand_hostname_rejects_unknown_keys(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expand_hostname(template, host="h")


def test_node_format_uses_the_worker_name() -> None:
    assert node_format("%n%I.log", "alpha@box.lan", 1) == "alpha-1.log"
    assert node_format("%p|%h|%d", "alpha@box.lan") == "alpha@box.lan|box.lan|lan"
