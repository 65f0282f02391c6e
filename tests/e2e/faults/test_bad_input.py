"""Bad input fails fast: exit 2 and one line naming the field and what is allowed, before
any trial starts — and before Ray starts wherever the config alone shows the fault.

What the config and the files show is checked in-process (``main``, with a tripwire on
connecting to Ray); what needs a Ray, and the exit path itself, run the real command."""

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from orchestrator.cli import main
from tests.support.raycluster import free_ports


def rightsweep(*args, timeout=60, env=None):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, timeout=timeout, env=env)


def assert_refused(proc, message, ray_started=False):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("rightsweep: config error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert ("started a local Ray" in proc.stderr) == ray_started, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "trial" not in proc.stdout.lower()


@pytest.fixture
def cli(monkeypatch, capsys):
    """``rightsweep ...`` in this process: its exit code and output, as the command's. It
    must refuse before it connects to Ray (or starts one): doing so trips the test."""
    import orchestrator.trial

    def tripwire(*args, **kwargs):
        raise AssertionError("the command went on to start Ray")

    monkeypatch.setattr(orchestrator.trial, "connect_and_prepare", tripwire)

    def run(*args):
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    return run


# What the config alone shows: refused in about a second, Ray never started.
CONFIG_FAULTS = {
    "lambda above 1": (["--set", "trial.train.lam=1.5"], "trial.train.lam: Input should be less than or equal to 1"),
    "lambda in the grid below 0": (["--set", "sweep.lams=[0.5, -0.1]"], "sweep.lams.1: Input should be greater than or equal to 0"),
    "unknown schedule": (["--set", "sweep.schedules=[alright, roundrobin]"],
                         "sweep.schedules.1: got 'roundrobin'; input should be 'sequential', 'mix', 'alright' or 'maxright'"),
    "k = 0": (["--set", "trial.train.maxright_eval_every=0"], "trial.train.maxright_eval_every: Input should be greater than 0"),
    "beta = 0": (["--set", "trial.train.beta=0"], "trial.train.beta: Input should be greater than 0"),
    "beta < 0": (["--set", "trial.train.beta=-0.1"], "trial.train.beta: Input should be greater than 0"),
    "no steps": (["--set", "trial.train.total_steps=0"], "trial.train.total_steps: Input should be greater than 0"),
    "a budget below the coarse grid": (["--set", "sweep.search=adaptive", "--set", "sweep.budget=2"],
                                       "sweep.budget: 2 cells cannot hold the coarse grid of 4 (4 schedules × 1 lams)"),
    "a budget for a grid": (["--set", "sweep.budget=8"], "sweep.budget: only the adaptive search has a budget"),
    "a grid with no lambda": (["--set", "sweep.lams=[]"], "sweep.lams: List should have at least 1 item"),
    "a grid with no seed": (["--set", "sweep.seeds=[]"], "sweep.seeds: List should have at least 1 item"),
    "a typo": (["--set", "trial.train.lr_rate=0.1"], "trial.train.lr_rate: unknown key (check the spelling"),
    "a typo in a section": (["--set", "sweep.lambdas=[0.5]"], "sweep.lambdas: unknown key"),
    "wrong type": (["--set", "trial.train.total_steps=many"], "trial.train.total_steps: Input should be a valid integer"),
    "a scalar for a list": (["--set", "sweep.lams=0.5"], "sweep.lams: Input should be a valid list"),
    "maxright without f* nor anchors": (["--set", "sweep.anchors=false"],
                                        "sweep.schedules has maxright, which needs f*: set trial.train.f_star_sft and f_star_dpo, or sweep.anchors: true"),
    "--set without =": (["--set", "trial.train.lam"], "--set 'trial.train.lam': expected key.path=value"),
    "--set with bad YAML": (["--set", "sweep.lams=[0.5,"], "--set 'sweep.lams=[0.5,': value: not valid YAML at line 1, column 6"),
    "--set with a key twice": (["--set", "sweep.per_schedule={mix: {lr: 1, lr: 2}}"], "duplicate key 'lr' (each key once)"),
    "--set into a value": (["--set", "trial.train.lr.x=1"], "--set 'trial.train.lr.x=1': 'lr' is not a section"),
    "unknown preset": (["--config", "smok"], "unknown preset 'smok'; presets: default, llama3-8b-lora, pythia-1b, smoke"),
    "switch past the end": (["--set", "trial.train.sequential_switch_step=41"],
                            "trial.train: sequential_switch_step 41 is past total_steps 40 (allowed: 0 to total_steps)"),
    "a per-schedule grid axis": (["--set", "sweep.per_schedule={mix: {lam: 0.2}}"],
                                 "sweep.per_schedule.mix: ['lam'] are set by the grid"),
    "a bad per-schedule value": (["--set", "sweep.per_schedule={mix: {lr: -1}}"], "sweep.per_schedule.mix.lr: Input should be greater than 0"),
    "a bad sweep name": (["--set", "name=my/sweep"], "name: 'my/sweep' is not a sweep name"),
    # '.' resolved to storage itself, which a second sweep would have moved aside; '..' to its parent.
    "the name '.'": (["--set", "name=."], "name: '.' is not a sweep name: letters, digits, '_', '.', '-', not starting with a dot"),
    "the name '..'": (["--set", "name=.."], "name: '..' is not a sweep name"),
    "AdamW betas above 1": (["--set", "trial.train.betas=[1.5, 0.9]"], "trial.train.betas.0: Input should be less than 1"),
    "a preset of the other kind": (["--set", "trial.data.sft.preset=hh"], "trial.data.sft.preset: 'hh' is not for sft data; allowed: alpaca, custom"),
    "an unknown column role": (["--set", "trial.data.pref.columns={answer: out}"], "trial.data.pref.columns: unknown roles ['answer']"),
    "a micro-batch larger than the batch": (["--set", "trial.train.micro_batch_size=9"],
                                            "trial.train: micro_batch_size 9 is larger than batch_size 8 (allowed: 1 to 8)"),
    "an unknown precision": (["--set", "trial.train.precision=fp16"],
                             "trial.train.precision: got 'fp16'; input should be '32-true', 'bf16-mixed', 'bf16-true' or '16-mixed'"),
    "the old trial.model.dtype": (["--set", "trial.model.dtype=bfloat16"],
                                  "trial.model: dtype is gone: the weights' dtype follows trial.train.precision (32-true, "
                                  "bf16-mixed, bf16-true, 16-mixed); for dtype 'bfloat16' use 'bf16-true'"),
    "warm-up past the end": (["--set", "trial.train.warmup_steps=41"],
                             "trial.train: warmup_steps 41 is past total_steps 40 (allowed: 0 to total_steps)"),
    "an unknown LR schedule": (["--set", "trial.train.lr_schedule=step"],
                               "trial.train.lr_schedule: got 'step'; input should be 'constant', 'linear' or 'cosine'"),
    "eval_split on a local file": (["--set", "trial.data.sft.source=/no/such.jsonl", "--set", "trial.data.sft.eval_split=test"],
                                   "trial.data.sft.eval_split: /no/such.jsonl is one file with no named splits"),
}


@pytest.mark.parametrize("fault", CONFIG_FAULTS)
def test_config_faults_exit_2_before_ray(fault, tmp_path, cli):
    args, message = CONFIG_FAULTS[fault]
    args = ["--config", "smoke", *args] if "--config" not in args else args
    assert_refused(cli("sweep", "--set", f"storage={tmp_path}", *args), message)


def test_train_flags_are_checked_like_the_config(tmp_path):
    assert_refused(rightsweep("train", "--config", "smoke", "--lam", "1.5", "--set", f"storage={tmp_path}"),
                   "trial.train.lam: Input should be less than or equal to 1")


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_missing_dataset_file(command, tmp_path, cli):
    proc = cli(command, "--config", "smoke", "--set", f"storage={tmp_path}",
                      "--set", f"trial.data.sft.source={tmp_path / 'nope.jsonl'}")
    assert_refused(proc, f"trial.data.sft.source: file {tmp_path / 'nope.jsonl'} does not exist")


def test_dataset_missing_a_mapped_column(tmp_path, cli):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"question": "q", "response_j": "a"}) + "\n")
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
                      "--set", f"trial.data.pref.source={path}", "--set", "trial.data.pref.preset=custom",
                      "--set", "trial.data.pref.columns={prompt: question, chosen: response_j, rejected: response_k}")
    assert_refused(proc, "trial.data.pref.columns:")
    assert "['response_k']" in proc.stderr


@pytest.mark.parametrize("content", ["", "[]"])
def test_empty_dataset(content, tmp_path, cli):
    path = tmp_path / ("sft.jsonl" if not content else "sft.json")
    path.write_text(content)
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.data.sft.source={path}")
    assert_refused(proc, f"trial.data.sft.source: {path} holds no rows")


def test_storage_not_writable(tmp_path, cli):
    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={blocked / 'sub'}")
    assert_refused(proc, f"storage: {blocked / 'sub'} is not writable")


@pytest.mark.parametrize("command", ["sweep", "train"])
def test_a_trial_that_does_not_fit_its_gpu(command, tmp_path, cli):
    """Refused by its memory estimate before Ray starts, naming the micro-batch that fits
    (on a 1.011 GB GPU: the embedded model's few MB plus the 1 GB CUDA overhead)."""
    from orchestrator.config import load_config
    from workers.estimate import GB, estimate, largest_micro_batch

    sets = [f"storage={tmp_path}", "resources.use_gpu=true", "resources.gpu_memory_gb=1.011"]
    cfg = load_config("smoke", sets)
    fits = largest_micro_batch(cfg.trial, 1.011 * GB)
    assert 0 < fits < cfg.trial.train.batch_size
    proc = cli(command, "--config", "smoke", *[a for s in sets for a in ("--set", s)])
    assert_refused(proc, f"trial.train.micro_batch_size: {cfg.trial.train.micro_batch} does not fit: a training process's "
                         f"memory estimate is {estimate(cfg.trial).total / GB:.2f} GB")
    assert f"resources.gpu_memory_gb is 1.011 GB; the largest micro_batch_size that fits is {fits}" in proc.stderr


def test_a_hub_model_that_is_not_here_needs_network_or_a_local_path(tmp_path, cli):
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}",
                      "--set", "trial.model.name=EleutherAI/pythia-1b", "--set", "trial.model.revision=step143000")
    assert_refused(proc, "trial.model.name: 'EleutherAI/pythia-1b' is neither a local path nor in the Hugging Face cache")
    assert "needs network access to the hub, or a local path" in proc.stderr


# What only reading the inputs shows: refused by the shared preparation, before any trial.
INPUT_FAULTS = {
    "every row longer than max_len": (["--set", "trial.data.max_len=4"], "trial.data.max_len: no sft train row of"),
    "LoRA targets that match nothing": (["--set", "trial.model.lora={targets: [q_proj, v_proj]}"],
                                        "trial.model.lora.targets: ['q_proj', 'v_proj'] match no module of 'embedded'; "
                                        "its linear layers: ['dense', 'dense_4h_to_h', 'dense_h_to_4h'"),
    "a batch larger than the data": (["--set", "trial.train.batch_size=100000"], "trial.train.batch_size: "),
    "more workers than CPUs": (["--set", "resources.num_workers=64"],
                               "resources.num_workers: 64 workers of {'CPU': 1.0} each do not fit; this cluster has room for "),
    "a GPU on a machine without one": (["--set", "resources.use_gpu=true"],
                                       "resources.use_gpu: a training process needs 1 GPU and no node has that many (the largest has 0)"),
    "a worker larger than any node": (["--set", "resources.cpus_per_worker=64"],
                                      "resources.cpus_per_worker: a training process needs 64 CPU and no node has that many"),
}


@pytest.mark.parametrize("fault", INPUT_FAULTS)
def test_input_faults_exit_2_before_any_trial(fault, head, cache_dir, tmp_path):
    """On a running cluster (one for the module: a Ray start per case is most of its time)."""
    args, message = INPUT_FAULTS[fault]
    proc = rightsweep("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.cache_dir={cache_dir}",
                      *args, timeout=300, env={**head.env, "RAY_ADDRESS": head.address})
    assert_refused(proc, message)
    assert not (tmp_path / "smoke" / "tune").exists(), "no trial started"


def test_storage_full(tmp_path):
    """Storage on a 16 KiB tmpfs (a private mount namespace: nothing outside sees it)."""
    full = tmp_path / "full"
    full.mkdir()
    script = f'mount -t tmpfs -o size=16k tmpfs "{full}" && exec "$0" "$@"'
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c", script, sys.executable, "-m", "orchestrator",
                           "sweep", "--config", "smoke", "--set", f"storage={full}"], capture_output=True, text=True, timeout=60)
    assert_refused(proc, f"storage: {full} is full (No space left on device)")


def test_a_tracking_server_that_does_not_answer(cache_dir, tmp_path):
    uri = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    proc = rightsweep("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.cache_dir={cache_dir}",
                      "--set", f"tracking.tracking_uri={uri}", timeout=300)
    assert_refused(proc, f"tracking.tracking_uri: MLflow at {uri} cannot be used", ray_started=True)
    assert not (tmp_path / "smoke" / "tune").exists(), "no trial started"


@pytest.mark.parametrize("text,message", [
    ("name: a\ntrial:\n\tmodel: {}\n", "not valid YAML at line 3, column 1: found character '\\t' that cannot start any token"),
    ("name: a\nname: b\n", "not valid YAML at line 2, column 1: duplicate key 'name' (each key once)"),
])
def test_a_config_file_with_a_tab_or_a_key_twice(text, message, tmp_path, cli):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert_refused(cli("sweep", "--config", str(path), "--set", f"storage={tmp_path}"), message)


def test_a_folder_named_like_a_config_file(tmp_path, cli):
    (tmp_path / "x.yaml").mkdir()
    assert_refused(cli("sweep", "--config", str(tmp_path / "x.yaml")), f"config file {tmp_path / 'x.yaml'} is a folder, not a YAML file")


def test_a_folder_that_is_not_a_model(tmp_path, cli):
    """It gave a misleading 'sentencepiece or tiktoken' traceback after Ray started."""
    (tmp_path / "notes").mkdir()
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.model.name={tmp_path / 'notes'}")
    assert_refused(proc, f"trial.model.name: {tmp_path / 'notes'} is not a saved model (no config.json in it)")


def test_a_jsonl_file_broken_past_its_first_line(tmp_path, cli):
    """The pre-check read the first line only; the third line's error came as a traceback after Ray started."""
    path = tmp_path / "sft.jsonl"
    good = json.dumps({"instruction": "a", "input": "", "output": "b"})
    path.write_text(f"{good}\n{good}\n{{\"instruction\": broken\n")
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.data.sft.source={path}")
    assert_refused(proc, f"trial.data.sft.source: cannot read {path}: line 3 is not JSON")


def test_a_hub_dataset_that_is_not_here_needs_network_or_a_local_file(tmp_path, cli):
    proc = cli("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", "trial.data.pref.source=Dahoas/rm-hh-rlhf")
    assert_refused(proc, "trial.data.pref.source: hub dataset 'Dahoas/rm-hh-rlhf' is not in the Hugging Face cache and the hub cannot be reached")


def test_a_tracking_uri_with_a_bogus_scheme(cache_dir, tmp_path):
    proc = rightsweep("sweep", "--config", "smoke", "--set", f"storage={tmp_path}", "--set", f"trial.cache_dir={cache_dir}",
                      "--set", "tracking.tracking_uri=bogus://nowhere", timeout=300)
    assert_refused(proc, "tracking.tracking_uri: MLflow at bogus://nowhere cannot be used", ray_started=True)
