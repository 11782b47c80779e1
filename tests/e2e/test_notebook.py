"""Executes the demo notebook headless (nbclient) on real pipeline results; every cell must run, every plot appear."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.e2e

NOTEBOOK = PROJECT_ROOT / "notebooks" / "Section_A_Log_Analytics_Demo.ipynb"
ARTIFACTS = PROJECT_ROOT / "artifacts"


def _outputs(nb: nbformat.NotebookNode, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == kind]


def test_notebook_runs_top_to_bottom_on_pipeline_results(demo_results, monkeypatch: pytest.MonkeyPatch) -> None:
    s = demo_results.settings
    # the notebook takes its run from the environment, like in docker compose
    monkeypatch.setenv("LOGPIPE_HDFS_ROOT", s.hdfs_root)
    monkeypatch.setenv("LOGPIPE_WEBHDFS_URL", s.webhdfs_address)
    monkeypatch.setenv("LOGPIPE_COMPOSE_LOG_FILE", str(demo_results.log))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    ARTIFACTS.mkdir(exist_ok=True)
    executed = ARTIFACTS / f"{NOTEBOOK.stem}.executed.ipynb"
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"a notebook cell failed (executed copy: {executed}):\n{exc}")
    finally:
        nbformat.write(nb, executed)

    assert _outputs(nb, "error") == []
    figures = sum("image/png" in o.get("data", {}) for o in _outputs(nb, "display_data"))
    plotting_cells = sum("plt.show()" in c.source for c in nb.cells if c.cell_type == "code")
    assert plotting_cells >= 6 and figures == plotting_cells, f"{figures} figures from {plotting_cells} plotting cells"

    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert f"results under {s.hdfs_root}" in text  # it looked at this run, not the default /logpipe
    # the notebook's own accounting agrees with the log: verify's count of its lines that parse (its own parse of
    # the raw file, not of the tables), less the late rows and repeats the job set apart (logpipe.results, which
    # the notebook reads the tables with, would agree with itself)
    tables = " ".join(o["data"].get("text/plain", "") for o in _outputs(nb, "display_data") + _outputs(nb, "execute_result"))
    acc = demo_results.verified["accounting"]
    events = acc["parsed"] - acc["late"] - acc["duplicates_dropped"]
    assert events > 50_000 and re.search(rf"events\s+{events}\b", tables), tables[:2000]
    # the job's accounting table names each quarantine reason with its count, as verify's recount of the log has them
    reasons = acc["quarantined_by_reason"]
    assert len(reasons) >= 3 and sum(reasons.values()) == acc["quarantined"], reasons
    for reason, n in reasons.items():
        assert re.search(rf"quarantined: {reason}\s+{n}\b", tables), (reason, n, tables[:3000])
    truth = demo_results.log.with_name(demo_results.log.name + ".truth.json")
    raised = re.search(r"(\d+) of (\d+) expected alerts were raised", text)
    # every planted incident was alerted (verify found recall 1.0 for this run), and the notebook sees that
    assert truth.is_file() and raised and raised[1] == raised[2] and int(raised[2]) > 0, text[-2000:]
