"""The demo notebook is stored clean: valid nbformat, no outputs, a tagged settings cell, plots in matplotlib."""

from __future__ import annotations

import nbformat
import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.unit

NOTEBOOK = PROJECT_ROOT / "notebooks" / "Section_A_Log_Analytics_Demo.ipynb"


def test_notebook_is_stored_without_outputs_and_has_a_settings_cell() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    assert [c for c in code if c.outputs or c.execution_count is not None] == []
    settings_cell = code[0]
    assert "parameters" in settings_cell.metadata.get("tags", [])
    for name in ("HDFS_ROOT", "WEBHDFS_URL", "LOG_PATH"):
        assert f"{name} = " in settings_cell.source
    source = "\n".join(c.source for c in code)
    # addresses come from logpipe's settings, never hard-coded
    assert "load_settings(" in source and "127.0.0.1:9870\"" not in source.replace("e.g. \"http://127.0.0.1:9870\"", "")
    for table in ("events", "windows/by_host", "windows/by_status", "alerts", "quarantine", "late"):
        assert f'"{table}"' in source, table
