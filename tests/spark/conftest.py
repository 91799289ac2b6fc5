"""One local Spark session for the whole test run (JVM start-up is the expensive part)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from custops.settings import SparkSettings

# Small and quiet: two local cores, few shuffle partitions, no UI, modest driver memory.
TEST_SPARK = SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="1g", log_level="ERROR")


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    """The session every Spark test shares; custops' own `get_session` calls reuse it."""
    from custops.spark import get_session

    session = get_session(TEST_SPARK)
    yield session
    session.stop()
