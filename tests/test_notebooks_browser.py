"""JupyterLab as a new user meets it, driven in a real browser (Playwright + the system Chromium).

``make lab`` (as root too) registers the ``nxmlab`` kernel and starts JupyterLab on
127.0.0.1 with a token; Chromium opens ``glue_table.ipynb`` (a copy whose parameters point
the ``smoke`` preset at a temporary folder, as papermill injects them), runs all cells from
the Run menu, and saves.  The test asserts the nxmlab kernel ran it, no cell failed, and
at least one image was drawn; a screenshot and the executed notebook are kept in
``$NXMLAB_TEST_ARTIFACTS`` (default ``runs/test-artifacts/``).

The smoke runs come from conftest's ``smoke_store``: after ``test_notebooks.py`` (which
trains them) the notebook only re-draws; run alone (``make test-lab``), it trains them
in the browser first.  Skipped, with the reason, when make, JupyterLab, Playwright or
Chromium is missing (``.ci/run`` installs Chromium with apt).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from nxmlab.study.cli.reproduce import notebook_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("NXMLAB_TEST_ARTIFACTS") or REPO / "runs" / "test-artifacts")
RUN_TIMEOUT_S = 600  # run-all; with the store trained by test_notebooks.py it takes well under a minute


def _chromium() -> str | None:
    return os.environ.get("NXMLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    """Why the browser test cannot run here, or ``None``."""
    if shutil.which("make") is None:
        return "make is not installed"
    if importlib.util.find_spec("jupyterlab") is None or not (Path(sys.prefix) / "bin" / "jupyter").exists():
        return "JupyterLab is not installed in this environment (pip install -e '.[lab]')"
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if _chromium() is None:
        return "Chromium is not installed (apt-get install chromium; .ci/run does it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment of ``make lab``: Jupyter's config, data, settings and runtime dirs under
    ``home`` (so ``ipykernel install --user`` writes there), and this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
    env.update({
        "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "IPYTHONDIR": str(home / "ipython"),
        "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
    })
    # no "get Jupyter news?" toast over the screenshot, and no request for it
    settings = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return env


@pytest.fixture
def lab(tmp_path, smoke_store):
    """``make lab`` on a folder holding glue_table.ipynb with smoke parameters: ``(url, token, folder, params)``."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    _, params = smoke_store
    params = {**params, "figures_dir": str(tmp_path / "figures")}
    folder = tmp_path / "lab"
    folder.mkdir()
    nb = load_notebook_node(str(notebook_dir() / "glue_table.ipynb"))
    nbformat.write(parameterize_notebook(nb, params), folder / "glue_table.ipynb")

    port, token = _free_port(), os.urandom(16).hex()
    venv = Path(sys.prefix)
    cmd = ["make", "-C", str(REPO), "-o", f"{venv}/.installed", "lab", f"VENV={venv}", f"LAB_DIR={folder}",
           f"LAB_ARGS=--no-browser --ip=127.0.0.1 --port={port} --IdentityProvider.token={token}"]
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(cmd, env=_isolated_env(tmp_path / "home"), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                _get(f"{url}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("make lab did not start JupyterLab:\n" + (tmp_path / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield url, token, folder, params
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and the server it started
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_glue_table_runs_all_cells_in_jupyterlab(lab):
    from playwright.sync_api import expect, sync_playwright

    url, token, folder, params = lab
    path = folder / "glue_table.ipynb"
    tic = time.perf_counter()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=_chromium(), args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/lab/tree/glue_table.ipynb?token={token}")
            # the notebook's own kernelspec starts, with no kernel-selection dialog
            expect(page.locator(".jp-NotebookPanel-toolbar")).to_contain_text("nxmlab (.venv)", timeout=60_000)
            expect(page.locator(".jp-Notebook-ExecutionIndicator")).to_have_attribute("data-status", "idle",
                                                                                       timeout=60_000)
            assert page.locator(".jp-Dialog").count() == 0
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.locator('li[data-command="runmenu:run-all"]').click()
            prompts = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
            page.wait_for_function(f"() => {prompts}.some(p => /\\d/.test(p))", timeout=RUN_TIMEOUT_S * 1000)
            page.wait_for_function(f"() => !{prompts}.includes('[*]:')", timeout=RUN_TIMEOUT_S * 1000)
            page.get_by_role("menuitem", name="File", exact=True).click()
            page.locator('li[data-command="docmanager:save"]').click()
            expect(page.locator(".jp-mod-dirty")).to_have_count(0, timeout=30_000)
            images = page.locator(".jp-OutputArea-output img")
            rendered = images.count()  # asserted below, after the error outputs
            if rendered:
                images.first.scroll_into_view_if_needed()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / "lab_glue_table.png")
        finally:
            browser.close()
    seconds = time.perf_counter() - tic
    shutil.copyfile(path, ARTIFACTS / "lab_glue_table.ipynb")
    print(f"browser run {seconds:.0f} s; screenshot {ARTIFACTS / 'lab_glue_table.png'}")

    sessions = _get(f"{url}/api/sessions?token={token}")
    assert [s["kernel"]["name"] for s in sessions if s["path"] == "glue_table.ipynb"] == ["nxmlab"]
    nb = nbformat.read(path, as_version=4)
    outputs = _outputs(nb)
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, "\n".join(f"{o.ename}: {o.evalue}" for o in errors)
    assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code"), "not every cell ran"
    text = "\n".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Traceback" not in text and "IProgress not found" not in text
    assert f"kernel: {sys.executable}" in text and f"results: {params['results_dir']}" in text
    assert "train=True" in text
    assert rendered >= 1 and any("image/png" in o.get("data", {}) for o in outputs)
    assert (Path(params["figures_dir"]) / "glue_table.png").stat().st_size > 0
