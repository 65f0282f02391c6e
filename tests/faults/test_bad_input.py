"""Bad input fails fast: exit 2 and one line naming the field, before Ray starts."""

import json
import subprocess
import sys

import pytest


def rightsweep(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=timeout)


def assert_refused(proc, message):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rightsweep: config error:")]
    assert errors and message in errors[0], proc.stderr[-2000:]
    assert "Started a local Ray" not in proc.stderr and "started a local Ray" not in proc.stderr


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_missing_dataset_file(command, tmp_path):
    proc = rightsweep(command, "--config", "smoke", "--set", f"storage={tmp_path}",
                      "--set", f"trial.data.sft.source={tmp_path / 'nope.jsonl'}")
    assert_refused(proc, f"trial.data.sft.source: file {tmp_path / 'nope.jsonl'} does not exist")


def test_dataset_missing_a_mapped_column(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "q", "response_j": "a"}) + "\n")
    proc = rightsweep("sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
                      "--set", f"trial.data.pref.source={path}", "--set", "trial.data.pref.preset=custom",
                      "--set", "trial.data.pref.columns={prompt: question, chosen: response_j, rejected: response_k}")
    assert_refused(proc, "trial.data.pref.columns:")
    assert "['response_k']" in proc.stderr


def test_storage_not_writable(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    proc = rightsweep("sweep", "--config", "smoke", "--set", f"storage={blocked / 'sub'}")
    assert_refused(proc, f"storage: {blocked / 'sub'} is not writable")
