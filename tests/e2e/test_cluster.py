"""The orchestrator on a real Ray cluster started with ``ray start --head``: an adaptive smoke
sweep submitted with ``ray job submit``, its MLflow store, the front rebuilt from that store,
a trial too large for the cluster, and the MLflow UI in a browser. (A driver killed
mid-sweep: ``tests/faults/test_driver_kill.py``.)"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.mlflowserver import store
from tests.support.raycluster import RAY

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


@pytest.fixture(scope="module")
def submitted(head, tmp_path_factory):
    """The smoke sweep under the adaptive search (the coarse grid, then one cell), submitted as
    a Ray job with the project as its working dir."""
    storage = tmp_path_factory.mktemp("storage")
    proc = head.run([RAY, "job", "submit", "--address", head.dashboard, "--working-dir", str(ROOT), "--",
                     PY, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={storage}",
                     "--set", "sweep.search=adaptive", "--set", "sweep.budget=5"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return storage, proc.stdout


def runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return exp, client.search_runs([exp.experiment_id], max_results=1000)


def test_job_submit_sweep_fills_the_mlflow_store(submitted):
    storage, stdout = submitted
    assert "front (*):" in stdout and "Pareto plot:" in stdout
    client = store(storage)
    exp, all_runs = runs(client, "smoke")
    parents = [r for r in all_runs if r.data.tags.get("rightsweep.role") == "sweep"]
    children = [r for r in all_runs if r.data.tags.get("rightsweep.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    # 2 anchors + 4 schedules at one λ + the cell the search proposed, each a finished child of the sweep run
    assert "adaptive search: 1 cell(s) after the coarse grid" in stdout
    (proposed,) = json.loads((storage / "smoke" / "search.json").read_text())["proposals"]
    assert len(children) == 7
    assert f"{proposed['schedule']}-lam{proposed['lam']:g}-seed0" in {r.info.run_name for r in children}
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert sorted(r.data.tags["stage"] for r in children) == ["anchor"] * 2 + ["main"] * 5
    assert {r.data.params["schedule"] for r in children if r.data.tags["stage"] == "main"} == {"sequential", "mix", "alright", "maxright"}
    for r in children:
        assert r.info.status == "FINISHED"
        assert {"schedule", "lam", "k", "seed", "model", "sft_data", "pref_data"} <= set(r.data.params)
        for key in ("eval/sft_loss", "eval/dpo_loss", "eval/pref_accuracy", "updates/sft"):
            assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [0, 20, 40], key
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.png", "pareto.csv", "pareto.json", "config.yaml"} <= artifacts
    png = Path(client.download_artifacts(parent.info.run_id, "pareto.png", str(storage / "dl")))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"f_star/sft", "f_star/dpo", "hypervolume_reference/sft"} <= set(parent.data.metrics)
    assert "hypervolume/all" in parent.data.metrics
    # Each main trial carries its final point (a chart of latest values) and whether its cell is on the front.
    report = json.loads((storage / "smoke" / "report" / "pareto.json").read_text())
    for r in children:
        if r.data.tags["stage"] != "main":
            assert "final/eval/sft_loss" not in r.data.metrics and "on_front" not in r.data.tags
            continue
        last = client.get_metric_history(r.info.run_id, "eval/sft_loss")[-1].value
        assert r.data.metrics["final/eval/sft_loss"] == last
        cell = f"{r.data.params['schedule']}@{float(r.data.params['lam']):g}"
        assert r.data.tags["on_front"] == str(cell in report["front"]).lower(), cell
    table = list(csv.DictReader((storage / "smoke" / "report" / "pareto.csv").open()))
    assert len(table) == 5 and all((Path(row["model"]) / "config.json").is_file() for row in table)
    assert {Path(row["model"]).parent.name for row in table} == {row["trial_id"] for row in table}


def test_pareto_from_the_store_reproduces_the_sweep(submitted, tmp_path):
    storage, _ = submitted
    proc = subprocess.run([PY, "-m", "orchestrator", "pareto", "--config", "smoke", "--set", f"storage={storage}",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = json.loads((storage / "smoke" / "report" / "pareto.json").read_text())
    rebuilt = json.loads((tmp_path / "pareto.json").read_text())
    assert rebuilt["front"] == sweep["front"] and len(sweep["front"]) >= 1
    assert rebuilt["rows"] == sweep["rows"]
    assert rebuilt["anchors"] == sweep["anchors"] and rebuilt["hypervolume"] == sweep["hypervolume"]


LOAD = """
import json, sys, mlflow, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
mlflow.set_tracking_uri(sys.argv[1])
out = {}
for uri, dst, on_storage in json.loads(sys.argv[2]):
    path = mlflow.artifacts.download_artifacts(uri, dst_path=dst)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    ids = tokenizer("### Instruction: add 2 and 3", return_tensors="pt").input_ids
    out[uri] = [ids.shape[1], float((model(ids).logits - AutoModelForCausalLM.from_pretrained(on_storage)(ids).logits).abs().max())]
print(json.dumps(out))
"""


def test_the_fronts_models_are_registered_and_load_from_their_uris(submitted, tmp_path):
    """After the sweep and the rebuild from the store (which registers again: no twin), a
    version per front trial; each loads with from_pretrained from its models:/ URI and is the
    model on storage."""
    from orchestrator.resume import model_dir
    from orchestrator.tracking import TRIAL_TAG, registered_model

    storage, stdout = submitted
    client = store(storage)
    exp, all_runs = runs(client, "smoke")
    (parent,) = [r for r in all_runs if r.data.tags.get("rightsweep.role") == "sweep"]
    report = json.loads((storage / "smoke" / "report" / "pareto.json").read_text())
    front = [row for row in report["rows"] if f"{row['schedule']}@{row['lam']:g}" in report["front"]]
    name = registered_model("smoke", parent.info.run_id)
    assert f"registered model {name!r}" in stdout
    versions = client.search_model_versions(f"name = '{name}'")
    assert sorted(v.tags[TRIAL_TAG] for v in versions) == sorted(row["trial_id"] for row in front) and front
    loads = []
    for v in versions:
        row = next(r for r in front if r["trial_id"] == v.tags[TRIAL_TAG])
        assert (v.tags["schedule"], float(v.tags["lam"])) == (row["schedule"], row["lam"])
        loads.append([f"models:/{name}/{v.version}", str(tmp_path / str(v.version)), str(model_dir(storage / "smoke", row["trial_id"]))])
    # One process loads them all: each Python start with torch and transformers is seconds.
    proc = subprocess.run([PY, "-c", LOAD, f"sqlite:///{storage}/mlflow.db", json.dumps(loads)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(loaded) == sorted(uri for uri, _, _ in loads)
    assert all(tokens > 1 and diff == 0.0 for tokens, diff in loaded.values())


def test_a_trial_too_large_for_a_fixed_cluster_is_refused_not_left_pending(head, tmp_path):
    """No autoscaler on this cluster: 64 workers a trial can never be placed, so the driver
    says so (exit 2) instead of leaving the trials in PENDING."""
    started = time.time()
    proc = head.run([PY, "-m", "orchestrator", "sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
                     "--set", "resources.num_workers=64"], timeout=300, env={"RAY_ADDRESS": head.address})
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rightsweep: config error: resources.num_workers: 64 workers of {'CPU': 1.0} each do not fit; this cluster has room for 2" in proc.stderr
    assert time.time() - started < 120 and not (tmp_path / "smoke" / "tune").exists()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def wait_http(url: str, timeout: float = 90) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise TimeoutError(url)
        time.sleep(0.5)


def test_mlflow_ui_shows_trials_and_pareto_plot_in_chromium(submitted):
    """A real browser (Debian's chromium, installed by `make test`) on the UI bound to 127.0.0.1."""
    import shutil

    from playwright.sync_api import sync_playwright

    from tests.support.raycluster import free_ports

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "chromium is not installed: `make test` installs Debian's chromium package"
    storage, _ = submitted
    client = store(storage)
    exp, all_runs = runs(client, "smoke")
    parent = next(r for r in all_runs if r.data.tags.get("rightsweep.role") == "sweep")
    labels = sorted(r.info.run_name for r in all_runs if r.data.tags.get("rightsweep.role") == "trial")
    port = free_ports(1)[0]
    shots = ROOT / "results" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    ui = subprocess.Popen([PY, "-m", "orchestrator", "ui", "--config", "smoke", "--set", f"storage={storage}", "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        printed = ui.stdout.readline()
        assert f"sweep 'smoke': {base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning" in printed, printed
        landing = printed.split("sweep 'smoke': ", 1)[1].strip()
        wait_http(base + "/health")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            # The address `rightsweep ui` prints opens on the trial runs (not the GenAI overview),
            # every trial listed and the loss-space scatter drawn, without a click.
            page.goto(landing)
            page.get_by_text("You're viewing a shared view").wait_for(timeout=60_000)
            for label in labels:
                page.get_by_text(label, exact=True).first.wait_for(timeout=30_000)
            page.get_by_text("Pareto", exact=True).first.wait_for(timeout=30_000)  # the view's chart section
            page.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
            for axis in ("final/eval/dpo_loss", "final/gen/pref_win_rate"):  # the y axes of its two scatters
                page.locator(f"text={axis}").first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "mlflow-landing.png"))

            # A fresh browser (the view's filter stays in the first one's local storage): the plain
            # runs page, the trials nested under the sweep run.
            page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
            page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
            page.get_by_text(f"{len(all_runs)} matching runs").wait_for(timeout=60_000)
            # Trials are nested under the sweep run: expand it.
            row = page.locator("[role=row]", has_text=parent.info.run_name).first
            row.locator("button[data-component-id*=runnamecellrenderer]").click()
            for label in labels:
                page.get_by_text(label, exact=True).first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "mlflow-runs.png"))

            page.goto(f"{base}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}/artifacts/pareto.png")
            page.get_by_text("pareto.csv").first.wait_for(timeout=60_000)
            page.locator("img").first.wait_for(timeout=30_000)
            page.screenshot(path=str(shots / "mlflow-pareto-artifact.png"))
            png = page.request.get(f"{base}/get-artifact?path=pareto.png&run_uuid={parent.info.run_id}")
            assert png.status == 200 and png.body()[:8] == b"\x89PNG\r\n\x1a\n"
            browser.close()
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
    assert (shots / "mlflow-runs.png").stat().st_size > 10_000 and (shots / "mlflow-landing.png").stat().st_size > 10_000
