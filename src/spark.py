"""The one place custops starts Spark: a SparkSession from settings and its Ibis backend.

Where the session runs, first match wins:
1. Spark Connect: `settings.spark.remote` or `SPARK_REMOTE` (e.g. `sc://spark-connect:15002`);
2. `settings.spark.master` (`--spark-master`, `CUSTOPS_SPARK__MASTER`), e.g. `spark://host:7077`, `yarn`;
3. the master `spark-submit` was given, when custops runs inside `spark-submit`;
4. `local[2]`.
A session that already exists in the process (a notebook's, a test fixture's) is reused.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from custops.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

    from custops.settings import SparkSettings

log = logging.getLogger(__name__)

DEFAULT_MASTER = "local[2]"

# Set on every session custops uses, including one it did not start: features are computed in
# UTC (a local session time zone would shift every timestamp), and Parquet timestamps are written
# as INT64 microseconds like DuckDB's, not legacy INT96.
RUNTIME_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def remote_url(ss: SparkSettings) -> str | None:
    """The Spark Connect URL, if custops should use one (settings first, then SPARK_REMOTE)."""
    return ss.remote or os.environ.get("SPARK_REMOTE") or None


def under_spark_submit() -> bool:
    """True inside `spark-submit`, which starts the JVM before Python and passes its gateway port."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def check_java() -> None:
    """A local or cluster driver needs a Java runtime; say how to get one instead of a JVM stack trace."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return
    if shutil.which("java"):
        return
    raise ConfigError(
        "the Spark engine needs Java 17 or newer and none was found (JAVA_HOME unset, no `java` on PATH): "
        "install it (Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`, see scripts/system-deps.sh), "
        "or point CUSTOPS_SPARK__REMOTE / SPARK_REMOTE at a Spark Connect server"
    )


def session_conf(ss: SparkSettings) -> dict[str, str]:
    """Configuration for a session custops starts (static settings included)."""
    conf = {
        "spark.app.name": ss.app_name,
        "spark.sql.shuffle.partitions": str(ss.shuffle_partitions),
        "spark.ui.enabled": str(ss.ui).lower(),
        "spark.driver.memory": ss.driver_memory,
        # Spark's per-query INFO/WARN progress bar is noise for a CLI and for test logs.
        "spark.ui.showConsoleProgress": "false",
        **RUNTIME_CONF,
    }
    return {**conf, **{str(k): str(v) for k, v in ss.conf.items()}}


def get_session(ss: SparkSettings) -> SparkSession:
    """The SparkSession for these settings (started once per process, then reused)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise ConfigError(
            "the Spark engine needs pyspark: pip install 'custops[spark]' (or 'pyspark>=4.0,<4.1')"
        ) from e

    url = remote_url(ss)
    active = SparkSession.getActiveSession()
    if active is not None and url is None:
        _apply_runtime_conf(active, ss)
        return active

    builder: Any = SparkSession.builder
    if url:
        try:
            import pyspark.sql.connect.session  # noqa: F401  (imports grpc: fails without the extra)
        except ImportError as e:
            raise ConfigError(
                f"Spark Connect ({url}) needs the connect client: pip install 'pyspark[connect]>=4.0,<4.1'"
            ) from e
        builder = builder.remote(url)
        target = f"Spark Connect server {url}"
        conf = {k: v for k, v in session_conf(ss).items() if k in RUNTIME_CONF or k in ss.conf}
    else:
        check_java()
        master = ss.master or (None if under_spark_submit() else DEFAULT_MASTER)
        if master:
            builder = builder.master(master)
        target = f"Spark master {master}" if master else "the spark-submit master"
        conf = session_conf(ss)
        if (master or "").startswith("local") and "PYSPARK_PYTHON" not in os.environ:
            # Local Python workers (pandas UDFs) must import custops: run them on this interpreter.
            # PySpark reads only this variable (default `python3`), not the spark.pyspark.python conf.
            os.environ["PYSPARK_PYTHON"] = sys.executable
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.info("starting a Spark session on %s", target)
    try:
        session = builder.getOrCreate()
    except Exception as e:  # JVM launch or connection failures: one line naming the setting
        raise ConfigError(f"could not start a Spark session on {target}: {e}".splitlines()[0]) from e
    _apply_runtime_conf(session, ss)
    return session


def _apply_runtime_conf(session: SparkSession, ss: SparkSettings) -> None:
    for key, value in {**RUNTIME_CONF, "spark.sql.shuffle.partitions": str(ss.shuffle_partitions)}.items():
        session.conf.set(key, value)
    if hasattr(session, "sparkContext") and remote_url(ss) is None:
        session.sparkContext.setLogLevel(ss.log_level)


def ibis_backend(session: SparkSession) -> Any:
    """An Ibis PySpark backend on `session` that computes what the DuckDB backend computes.

    ibis 12's PySpark backend differs from DuckDB in three places the feature definitions hit, so
    the same expression would give other numbers (or fail) on Spark; each is fixed here, at the
    backend, so the feature definitions stay engine-neutral:
    - float literals are emitted as `86400.0`, which Spark SQL reads as a DECIMAL: arithmetic then
      runs in decimal(28, 7) and rounds fractional days. They are emitted as DOUBLE, like DuckDB.
    - `epoch_seconds()` compiles to UNIX_TIMESTAMP, which drops the sub-second part DuckDB's EPOCH
      keeps: it compiles to UNIX_MICROS / 1e6 (the same double DuckDB computes).
    - `.cache()` compiles without registering the in-memory tables (ibis.memtable) it references,
      so Spark fails with TABLE_OR_VIEW_NOT_FOUND: register them first, as every other execution
      path does.
    """
    import ibis
    import sqlglot.expressions as sge
    from ibis.backends.pyspark import Backend
    from ibis.backends.sql.compilers.pyspark import PySparkCompiler

    ibis.pyspark  # noqa: B018  (loading the backend entry point registers its options, e.g. treat_nan_as_null)

    class _Compiler(PySparkCompiler):
        def visit_NonNullLiteral(self, op: Any, *, value: Any, dtype: Any) -> Any:
            result = super().visit_NonNullLiteral(op, value=value, dtype=dtype)
            if dtype.is_floating() and isinstance(result, sge.Literal):
                return self.cast(result, dtype)
            return result

        def visit_ExtractEpochSeconds(self, op: Any, *, arg: Any) -> Any:
            return sge.Div(
                this=self.f.unix_micros(self.cast(arg, op.arg.dtype.copy(timezone="UTC"))),
                expression=sge.Literal.number("1e6"),
            )

    class _Backend(Backend):
        compiler = _Compiler()

        def _create_cached_table(self, name: str, expr: Any) -> Any:
            self._run_pre_execute_hooks(expr)
            return super()._create_cached_table(name, expr)

    return _Backend().connect(session)


def spark_path(path: str | Path) -> str:
    """A path or URI as Spark reads it (local paths become absolute `file:` URIs)."""
    text = str(path)
    if "://" in text:
        return text
    return Path(text).resolve().as_uri()


def is_uri(path: str | Path) -> bool:
    """True for `scheme://...` locations (s3a://, hdfs://, abfss://, file://)."""
    return "://" in str(path)


def analysis_error(e: Exception, what: str) -> Exception:
    """Turn Spark's 'path does not exist' into a StoreError naming `what`; other errors pass through."""
    text = str(e)
    if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
        return StoreError(f"{what} not found: {text.splitlines()[0]}")
    return e
