"""The training loop end to end on a tiny model: outputs, exact accumulation, non-finite losses, resume after
SIGKILL, and a 2-process torchrun run against a 1-process run with the same global batch."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import probclip
from probclip import losses as losses_module
from probclip.train import TrainConfig, TrainingStopped, train
from probclip.train.step import StepInputs, forward_backward
from test_data_readers import make_csv_dataset

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = {"name": "ProLIP-Tiny-Word", "overrides": {"vision": {"layers": 1}, "text": {"layers": 1}}}


def tiny_config(tmp_path: Path, table: Path, **sections) -> dict:
    """A config dict for a fast CPU run on ``table`` (override any section key through ``sections``)."""
    config = {
        "model": dict(TINY),
        "data": {"source": "csv", "paths": [str(table)], "batch_size": 8, "caption_separator": "||"},
        "loss": {"name": "prolip"},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "run": {"steps": 4, "output_dir": str(tmp_path / "run"), "log_every": 1, "save_every": 2,
                "tensorboard": False, "progress": "plain", "cpu_threads": 1, "precision": "fp32"},
    }
    for section, values in sections.items():
        config.setdefault(section, {}).update(values)
    return config


def read_log(path: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [r for r in records if "event" not in r], [r for r in records if "event" in r]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_csv_dataset(tmp_path_factory.mktemp("pairs"), 24, corrupt=(5,))


def test_run_writes_loadable_checkpoint_resolved_config_and_log(tmp_path, table):
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"tensorboard": True}))
    result = train(config)
    run_dir = tmp_path / "run"
    assert result.steps == 4 and result.samples == 32 and result.stop_reason == "completed"
    assert TrainConfig.from_dict(yaml.safe_load((run_dir / "train_config.yaml").read_text())) == config
    loaded, _ = probclip.create_model_from_pretrained(result.checkpoint)
    for (name, a), (_, b) in zip(result.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.cpu(), b), name
    steps, events = read_log(result.log_path)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "ppcl", "inclusion", "img_inclusion", "txt_inclusion", "vib", "lr", "samples_per_s"} <= set(
        steps[0]
    )
    assert steps[-1]["loss"] < steps[0]["loss"]
    # the corrupt image (row 5) is met within 32 samples of a 24-row table: counted and reported by name
    assert sum(r["skipped_samples"] for r in steps) == result.skipped_samples >= 1
    assert any(e["event"] == "bad_samples" and "5.png" in e["errors"][0] for e in events)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    assert any((run_dir / "tensorboard").iterdir())
    assert 0.0 <= result.model.logit_scale.item() <= 4.6052


def _tiny_inputs(seed: int = 0, batch: int = 8):
    model = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1})
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 32, 32, generator=generator)
    tokens = torch.randint(3, 70, (batch, 16), generator=generator)
    tokens[:, 10:] = 0
    inputs = StepInputs(images, tokens, masked_index=torch.tensor([0, 5]),
                        keep_patches=torch.tensor([[0, 3, 7, 9], [1, 2, 3, 15]]),
                        masked_tokens=torch.where(torch.rand(2, 16, generator=generator) < 0.75,
                                                  torch.tensor(2), tokens[[0, 5]]))
    return model, inputs


@pytest.mark.parametrize("loss_name", ["prolip", "pcmepp"])
def test_gradient_accumulation_is_exact(loss_name):
    model, inputs = _tiny_inputs()
    model, inputs.images = model.double(), inputs.images.double()  # float64: only the algorithm can differ
    loss_fn = losses_module.build_loss(loss_name)
    if loss_name == "pcmepp":
        inputs.masked_index = None
        inputs.match_labels = losses_module.soft_match_labels(torch.tensor([0.3, 1, 1, 1, 1, 1, 1, 1]),
                                                             torch.tensor([7, 1, 2, 3, 4, 5, 6, 0]))
    grads = {}
    for accum in (1, 3):
        model.zero_grad(set_to_none=True)
        terms = forward_backward(model, loss_fn, inputs, accum_freq=accum)
        grads[accum] = ({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, terms)
    (g1, t1), (g3, t3) = grads[1], grads[3]
    assert t1["loss"] == pytest.approx(t3["loss"], rel=1e-12)
    assert set(g1) == set(g3)
    for name in g1:
        assert torch.allclose(g1[name], g3[name], rtol=1e-10, atol=1e-12), name
    assert g1["logit_scale"].abs() > 0


class _FlakyLoss(losses_module.SigLIPLoss):
    """SigLIP whose calls listed in ``bad_calls`` report a non-finite 'ppcl' term."""

    bad_calls: set = set()
    calls = 0

    def forward(self, *args, **kwargs):
        type(self).calls += 1
        if type(self).calls in self.bad_calls:
            raise losses_module.NonFiniteLossError(["ppcl"], {"loss": float("nan"), "ppcl": float("nan")})
        return super().forward(*args, **kwargs)


def test_nonfinite_loss_skips_the_step_then_stops(tmp_path, table, monkeypatch):
    monkeypatch.setitem(losses_module.LOSSES, "siglip", _FlakyLoss)
    monkeypatch.setattr(_FlakyLoss, "calls", 0)
    monkeypatch.setattr(_FlakyLoss, "bad_calls", {2})
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, loss={"name": "siglip"},
                                               run={"steps": 3, "save_every": 0}))
    result = train(config)
    steps, events = read_log(result.log_path)
    nonfinite = [e for e in events if e["event"] == "nonfinite"]
    assert [(e["step"], e["component"]) for e in nonfinite] == [(2, "ppcl")]
    assert result.nonfinite_steps == 1 and result.steps == 3
    monkeypatch.setattr(_FlakyLoss, "calls", 0)
    monkeypatch.setattr(_FlakyLoss, "bad_calls", {2, 3, 4})
    stopping = TrainConfig.from_dict(tiny_config(tmp_path / "b", table, loss={"name": "siglip"},
                                                 run={"steps": 6, "max_nonfinite_steps": 3}))
    with pytest.raises(TrainingStopped, match="3 consecutive steps.*'ppcl'"):
        train(stopping)


def test_a_real_nonfinite_loss_names_its_component_and_stops_the_run(tmp_path, table):
    seen = []

    def break_the_bias(info):
        seen.append((info.step, info.skipped, info.model.text.head.mean.weight.detach().clone()))
        if info.step == 1:
            with torch.no_grad():
                info.model.logit_bias.fill_(float("inf"))  # every negative pair's PPCL term becomes infinite

    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 6, "max_nonfinite_steps": 2,
                                                                      "save_every": 0}))
    with pytest.raises(TrainingStopped, match="2 consecutive steps.*'ppcl'.*step 3"):
        train(config, callbacks=[break_the_bias])
    _, events = read_log(tmp_path / "run" / "log.jsonl")
    nonfinite = [e for e in events if e["event"] == "nonfinite"]
    assert [(e["step"], e["component"], e["consecutive"]) for e in nonfinite] == [(2, "ppcl", 1), (3, "ppcl", 2)]
    assert nonfinite[0]["values"]["ppcl"] == "inf" and nonfinite[0]["values"]["vib"] not in ("nan", "inf")
    assert [(step, skipped) for step, skipped, _ in seen] == [(1, False), (2, True)]  # stops inside step 3
    assert torch.equal(seen[1][2], seen[0][2])  # the skipped step did not update the weights


def _final_weights(checkpoint: Path) -> dict:
    model, _ = probclip.create_model_from_pretrained(checkpoint)
    return model.state_dict()


_SLOW_RUN = """
import sys, time, yaml
from probclip.train import TrainConfig, train
config = TrainConfig.from_dict(yaml.safe_load(open(sys.argv[1])))
def slow(info):
    if info.step >= 4:
        time.sleep(1.0)  # leaves time to kill the run after the step-4 checkpoint
train(config, callbacks=[slow])
"""


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, table):
    settings = dict(run={"steps": 8, "save_every": 2, "keep_last": 10}, data={"num_workers": 0})
    reference = train(TrainConfig.from_dict(tiny_config(tmp_path / "ref", table, **settings)))

    config_path = tmp_path / "killed.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "killed", table, **settings)))
    script = tmp_path / "slow_run.py"
    script.write_text(_SLOW_RUN)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    process = subprocess.Popen([PYTHON, str(script), str(config_path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    latest = tmp_path / "killed" / "run" / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and not (latest.is_file() and "step_00000004" in latest.read_text()):
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "run" / "checkpoints" / "step_00000008").exists()

    resumed = subprocess.run([PYTHON, "-m", "probclip.train", "--config", str(config_path), "--resume", "latest"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = tmp_path / "killed" / "run" / "checkpoints" / "step_00000008"
    expected = reference.model.state_dict()
    for name, value in _final_weights(final).items():
        assert torch.allclose(value, expected[name].cpu(), rtol=0, atol=1e-6), name
    steps, events = read_log(tmp_path / "killed" / "run" / "log.jsonl")
    assert any(e["event"] == "resume" and e["step"] == 4 for e in events)


def test_two_process_torchrun_matches_one_process(tmp_path, table):
    settings = dict(run={"steps": 3, "save_every": 0})
    single = train(TrainConfig.from_dict(tiny_config(tmp_path / "one", table, **settings)))
    config_path = tmp_path / "two.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "two", table, **settings)))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    torchrun = Path(PYTHON).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "probclip.train",
                           "--config", str(config_path)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    one, one_events = read_log(single.log_path)
    two, two_events = read_log(tmp_path / "two" / "run" / "log.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3]
    # the corrupt image (row 5) is read once per epoch by whichever process holds it: counted and named alike
    assert [r["skipped_samples"] for r in two] == [r["skipped_samples"] for r in one] and sum(
        r["skipped_samples"] for r in one) >= 1
    for events in (one_events, two_events):
        assert any(e["event"] == "bad_samples" and "5.png" in e["errors"][0] for e in events), events
    for a, b in zip(one, two):
        for key in ("loss", "ppcl", "img_inclusion", "txt_inclusion", "vib"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    weights = _final_weights(tmp_path / "two" / "run" / "checkpoints" / "step_00000003")
    for name, value in single.model.state_dict().items():
        assert torch.allclose(weights[name], value, rtol=1e-4, atol=1e-5), name


def test_periodic_zeroshot_and_retrieval_evaluation_is_logged(tmp_path):
    from test_data_readers import image_bytes

    table = make_csv_dataset(tmp_path / "data", 8)
    eval_table = tmp_path / "data" / "eval.csv"
    eval_table.write_text("filepath,caption\n" + "".join(f"img/{i}.png,a square number {i}\n" for i in range(4)))
    classes = tmp_path / "classes"
    for i, name in enumerate(["red", "green", "blue"]):
        (classes / name).mkdir(parents=True)
        (classes / name / f"{i}.png").write_bytes(image_bytes(i))
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 3, "eval_every": 2, "save_every": 0},
                                               eval={"retrieval": [str(eval_table)], "zeroshot": [str(classes)]}))
    result = train(config)
    _, events = read_log(result.log_path)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 3]  # every eval_every steps and at the end
    keys = set(evals[0]["metrics"])
    assert any(k.startswith("retrieval/eval.csv/") and k.endswith("r1") for k in keys), keys
    assert any(k.startswith("zeroshot/classes/") and k.endswith("acc1") for k in keys), keys


def test_synthetic_source_trains(tmp_path):
    config = TrainConfig.from_dict({
        "model": dict(TINY),
        "data": {"source": "synthetic", "synthetic": {"size": 64}, "batch_size": 8},
        "run": {"steps": 2, "output_dir": str(tmp_path / "run"), "save_every": 0, "tensorboard": False,
                "progress": "none", "cpu_threads": 1},
    })
    result = train(config)
    assert result.steps == 2 and math.isfinite(result.final_loss)


@pytest.mark.parametrize("loss_name", ["pcmepp", "clip"])
def test_other_objectives_train_through_the_loop(tmp_path, table, loss_name):
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, loss={"name": loss_name},
                                               run={"steps": 2, "save_every": 0}, optim={"accum_freq": 2}))
    result = train(config)
    steps, _ = read_log(result.log_path)
    expected = {"pcmepp": {"match", "pseudo", "vib"}, "clip": {"i2t", "t2i"}}[loss_name]
    assert expected <= set(steps[-1]) and all(math.isfinite(r["loss"]) for r in steps)
    if loss_name == "clip":
        assert not result.model.logit_bias.requires_grad


def test_max_seconds_stops_with_a_checkpoint(tmp_path, table):
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 50, "max_seconds": 1e-3,
                                                                      "save_every": 0}))
    result = train(config)
    assert result.stop_reason == "max_seconds" and result.steps == 1
    assert result.checkpoint is not None and result.checkpoint.name == "step_00000001"


def test_gradient_checkpointing_gives_the_same_gradients():
    model, inputs = _tiny_inputs()
    model, inputs.images = model.double(), inputs.images.double()
    loss_fn = losses_module.build_loss("prolip")
    grads = []
    for enabled in (False, True):
        model.zero_grad(set_to_none=True)
        model.set_grad_checkpointing(enabled)
        forward_backward(model, loss_fn, inputs)
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-10, atol=1e-12), name


def test_frozen_vision_tower_does_not_move(tmp_path, table):
    config = TrainConfig.from_dict(tiny_config(tmp_path, table, run={"steps": 2, "save_every": 0, "seed": 7},
                                               model={"freeze_vision": True}))
    torch.manual_seed(7)
    initial = probclip.create_model("ProLIP-Tiny-Word", vision={"layers": 1}, text={"layers": 1}).state_dict()
    trained = train(config).model.state_dict()
    assert torch.equal(
        trained["visual.trunk.blocks.0.attn.qkv.weight"], initial["visual.trunk.blocks.0.attn.qkv.weight"]
    )
    assert torch.equal(trained["visual.head.mean.weight"], initial["visual.head.mean.weight"])
    assert not torch.equal(trained["visual.head.logvar.weight"], initial["visual.head.logvar.weight"])
    assert not torch.equal(trained["text.blocks.0.attn.qkv.weight"], initial["text.blocks.0.attn.qkv.weight"])


def test_compiled_towers_train_like_plain_ones(tmp_path, table):
    """``run.compile`` compiles both towers with torch.compile (here its ``aot_eager`` backend: the same graph
    capture and autograd tracing as inductor, without the C++ compilation that takes minutes on a small CPU)."""
    settings = dict(run={"steps": 2, "save_every": 0, "seed": 5})
    plain = train(TrainConfig.from_dict(tiny_config(tmp_path / "plain", table, **settings)))
    compiled_config = tiny_config(tmp_path / "compiled", table, **settings)
    compiled_config["run"]["compile"] = "aot_eager"
    compiled = train(TrainConfig.from_dict(compiled_config))
    for tower in (compiled.model.visual, compiled.model.text):
        assert tower._compiled_call_impl is not None  # nn.Module.compile() swaps the call in place
    assert list(compiled.model.state_dict()) == list(plain.model.state_dict())  # names unchanged
    for name, value in plain.model.state_dict().items():
        assert torch.allclose(compiled.model.state_dict()[name], value, rtol=1e-4, atol=1e-6), name
    with pytest.raises(ValueError, match="run.compile"):
        TrainConfig.from_dict(tiny_config(tmp_path, table, run={"compile": 1})).validate()
