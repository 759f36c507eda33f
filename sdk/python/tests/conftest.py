from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from server import Node, Tenant

_names = itertools.count(1)


@pytest.fixture(scope="session")
def node() -> Iterator[Node]:
    n = Node()
    yield n
    n.stop()


@pytest.fixture
def tenant(node: Node) -> Tenant:
    """A fresh tenant with a principal and a bearer credential."""
    return node.tenant(f"py{next(_names)}")
