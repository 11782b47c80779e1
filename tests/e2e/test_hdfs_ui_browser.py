"""Opens the NameNode web UI's file browser in a real headless Chromium and finds the results folders listed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from logpipe.config import PROJECT_ROOT

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# Chromium is started headless (Playwright adds --headless) with these flags and a new empty profile
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = PROJECT_ROOT / "artifacts"


def test_hdfs_file_browser_lists_windows_and_alerts(demo_results, hdfs_client, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (`make test-deps`, which `make test` runs, "
                    "or `apt-get install -y chromium`)")
    s = demo_results.settings
    on_hdfs = {name for name, st in hdfs_client.list(s.hdfs_root, status=True) if st["type"] == "DIRECTORY"}
    assert {"windows", "alerts"} <= on_hdfs
    ARTIFACTS.mkdir(exist_ok=True)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    url = f"{s.webhdfs_address}/explorer.html#{s.hdfs_root}"
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 800})
        try:
            page = browser.new_page()
            page.goto(url)
            folders = page.locator("#table-explorer a.explorer-browse-links[inode-type=DIRECTORY]")
            folders.first.wait_for(timeout=30_000)
            page.locator("#table-explorer").get_by_text("windows", exact=True).wait_for(timeout=10_000)
            listed = set(folders.all_inner_texts())
            page.screenshot(path=str(ARTIFACTS / "hdfs-ui-results-folder.png"), full_page=True)
            # the page lists exactly what WebHDFS says is there
            assert {"windows", "alerts"} <= listed
            assert listed == on_hdfs
            assert page.locator("#directory").input_value() == s.hdfs_root

            # as a person would: click into windows/ and see the two count tables
            page.locator("#table-explorer").get_by_text("windows", exact=True).click()
            page.wait_for_function("document.querySelector('#directory').value.endsWith('/windows')")
            page.locator("#table-explorer").get_by_text("by_host", exact=True).wait_for(timeout=10_000)
            inside = set(page.locator("#table-explorer a.explorer-browse-links").all_inner_texts())
            page.screenshot(path=str(ARTIFACTS / "hdfs-ui-windows-folder.png"), full_page=True)
            assert {"by_host", "by_status"} <= inside
        finally:
            browser.close()
    assert (ARTIFACTS / "hdfs-ui-results-folder.png").stat().st_size > 10_000
