"""Training mechanics: micro-batches bounded by tokens, length-grouped batches, the time budget."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import base_spec, write_jsonl, write_spec

from runner.cli import main
from runner.data.encode import Encoder, collate
from runner.data.examples import Example, TaskData
from runner.data.mixture import FineTuneData
from runner.model.forward import completion_token_losses
from runner.model.tiny import byte_tokenizer, random_tiny
from runner.training.module import micro_batches
from runner.training.objectives import count_targets


def ragged_batch(tokenizer, lengths: list[int]) -> dict:
    encoder = Encoder(tokenizer, max_length=256, chat_template=False)
    rows = [
        encoder.encode(Example("t", i, "x" * n, "yes" if i % 2 else "no"), add_eos=True) for i, n in enumerate(lengths)
    ]
    return collate(rows, tokenizer.pad_token_id)


def test_micro_batches_stay_within_max_tokens_and_keep_every_row():
    batch = ragged_batch(byte_tokenizer(), [10, 80, 20, 75, 5, 60])
    parts = micro_batches(batch, max_tokens=200)
    assert len(parts) > 1
    for part in parts:
        assert part["input_ids"].numel() <= 200
        assert part["attention_mask"][:, -1].all()  # still left-padded: every row ends in the last column
    assert sum(p["input_ids"].shape[0] for p in parts) == 6
    assert sum(count_targets(p) for p in parts) == count_targets(batch)
    assert micro_batches(batch, max_tokens=None) == [batch]


def test_micro_batch_gradients_add_up_to_the_whole_batch():
    """The step training_step takes on a split batch is the step on the whole batch."""
    model, tokenizer = random_tiny(seed=1)
    batch = ragged_batch(tokenizer, [10, 80, 20, 75, 5, 60])
    losses, _ = completion_token_losses(model, batch)
    losses.mean().backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    targets = count_targets(batch)
    for part in micro_batches(batch, max_tokens=150):
        part_losses, _ = completion_token_losses(model, part)
        (part_losses.sum() / targets).backward()
    for expected, param in zip(whole, model.parameters()):
        torch.testing.assert_close(param.grad, expected, atol=1e-5, rtol=1e-4)


def test_length_grouped_batches_pad_less_and_still_cover_every_row(workdir):
    tokenizer = byte_tokenizer()
    encoder = Encoder(tokenizer, max_length=256, chat_template=False)
    examples = [Example("t", i, "x" * ((i * 37) % 200 + 1), "yes", 0) for i in range(160)]
    from runner.spec.load import load_spec

    task = load_spec(workdir / "spec.yaml").tasks[0]
    data = TaskData(task, examples, examples[:8], examples[:8])

    def padding(grouped: bool) -> tuple[float, list[int]]:
        dm = FineTuneData([data], encoder, batch_size=8, num_workers=0, seed=0, group_by_length=grouped)
        batches = list(dm.train_dataloader())
        pad = sum(int((b["attention_mask"] == 0).sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)
        rows = sorted(int(n) for b in batches for n in b["attention_mask"].sum(-1))
        return pad, rows

    grouped_pad, grouped_rows = padding(True)
    random_pad, random_rows = padding(False)
    assert grouped_rows == random_rows  # the same rows, each once per epoch
    assert grouped_pad < random_pad / 2


def run_tiny(workdir: Path, **training) -> dict:
    spec = base_spec()
    spec["training"] = {**spec["training"], **training}
    write_spec(workdir / "spec.yaml", spec)
    assert main(["run", str(workdir / "spec.yaml")]) == 0
    (run_dir,) = [p for p in (workdir / "runs" / "tiny").iterdir() if p.is_dir()]
    return json.loads((run_dir / "report.json").read_text())


def test_a_run_with_small_micro_batches_trains_and_reports(workdir):
    report = run_tiny(workdir, max_batch_tokens=64)
    assert report["status"] == "complete"
    assert report["training"]["global_steps"] > 0
    assert report["training"]["stopped_by_time"] is False


def test_max_time_stops_training_and_still_reports(workdir):
    report = run_tiny(workdir, max_time="00:00:01", epochs=50)
    assert report["status"] == "complete"
    assert report["training"]["stopped_by_time"] is True
    assert report["training"]["epochs_run"] < 50
    assert "fine_tuned" in report["tasks"]["sentiment"]["test"]


@pytest.mark.parametrize("value,seconds", [(2, 120.0), (0.5, 30.0), ("01:30:00", 5400.0), ("1:00:00:05", 86405.0)])
def test_max_time_reads_minutes_or_clock_time(workdir, value, seconds):
    from runner.spec.load import load_spec

    spec = base_spec()
    spec["training"]["max_time"] = value
    write_spec(workdir / "spec.yaml", spec)
    assert load_spec(workdir / "spec.yaml").training.max_time == seconds


def test_fast_dropout_has_dropouts_distribution_and_gradient():
    from runner.model.dropout import FastDropout

    torch.manual_seed(0)
    dropout = FastDropout(0.1).train()
    x = torch.ones(400, 500, requires_grad=True)
    y = dropout(x)
    dropped = y == 0
    assert abs(float(dropped.float().mean()) - 0.1) < 0.005
    assert torch.allclose(y[~dropped], torch.tensor(1 / 0.9))
    assert float((dropped & (dropout(x) == 0)).float().mean()) == pytest.approx(0.01, abs=0.002)  # independent draws
    y.sum().backward()
    assert torch.equal(x.grad, (~dropped).float() / 0.9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert dropout(x).dtype == torch.bfloat16  # what the adapter's matmul reads under autocast
    assert torch.equal(dropout.eval()(x), x)


def lora_settings(**changes) -> dict:
    settings = {
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": "all-linear",
        "use_dora": False,
        "use_rslora": False,
    }
    return {**settings, **changes}


def test_lora_uses_fast_dropout_and_merged_adapters_score_the_same():
    from runner.evaluation.evaluator import Evaluator
    from runner.model.dropout import FastDropout
    from runner.model.load import merged_adapters
    from runner.model.methods import apply_method
    from runner.spec.types import MethodSpec

    model, tokenizer = random_tiny(seed=2)
    model = apply_method(model, MethodSpec("lora", lora_settings(dropout=0.1)))
    assert any(isinstance(m, FastDropout) for m in model.modules())
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)  # peft starts B at zero: make the adapters matter
    encoder = Encoder(tokenizer, max_length=64, chat_template=False)
    evaluator = Evaluator(model, encoder, batch_size=2, max_new_tokens=4, device=torch.device("cpu"))
    prompts = [encoder.prompt_ids("q" * (3 + 4 * i)) for i in range(3)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    unmerged = evaluator.label_scores(prompts, ("yes", "no"))
    with merged_adapters(model):
        merged = evaluator.label_scores(prompts, ("yes", "no"))
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, before[name], atol=1e-6, rtol=1e-6)


def lora_tiny(seed: int = 6):
    from runner.model.methods import apply_method
    from runner.spec.types import MethodSpec

    model, tokenizer = random_tiny(seed=seed)
    method = MethodSpec("lora", lora_settings(dropout=0.0))
    return apply_method(model, method), tokenizer


def lora_gradients(model, batch) -> dict[str, torch.Tensor]:
    model.train()
    losses, _ = completion_token_losses(model, batch)
    losses.mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return grads


def test_activation_checkpointing_gives_the_same_gradients():
    import copy

    from runner.training.memory import use_activation_checkpointing

    plain, tokenizer = lora_tiny()
    checkpointed = copy.deepcopy(plain)  # the same adapters (peft draws lora_A at random)
    batch = ragged_batch(tokenizer, [30, 12, 50])
    training = type("T", (), {"activation_checkpointing": True, "max_batch_tokens": 1024, "batch_size": 8})()
    assert use_activation_checkpointing(checkpointed, training, longest_row=64)
    assert any(getattr(m, "gradient_checkpointing", False) for m in checkpointed.modules())
    expected, got = lora_gradients(plain, batch), lora_gradients(checkpointed, batch)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_auto_turns_on_only_when_memory_is_short(monkeypatch):
    from runner.training import memory as training_module

    training = type("T", (), {"activation_checkpointing": "auto", "max_batch_tokens": 1024, "batch_size": 8})()
    model, _ = lora_tiny()
    monkeypatch.setattr(training_module, "available_memory", lambda: 16e9)
    assert not training_module.use_activation_checkpointing(model, training, longest_row=64)
    monkeypatch.setattr(training_module, "available_memory", lambda: 1e3)
    assert training_module.use_activation_checkpointing(model, training, longest_row=64)


def imbalanced_data(workdir, positives: int = 30, negatives: int = 6) -> tuple[TaskData, Encoder]:
    """A two-label task whose train split is 5:1 positive."""
    from runner.spec.load import load_spec

    task = load_spec(workdir / "spec.yaml").tasks[0]  # labels: positive, negative
    train = [Example("sentiment", i, f"row {i}", "positive", 0) for i in range(positives)]
    train += [Example("sentiment", 100 + i, f"row {100 + i}", "negative", 1) for i in range(negatives)]
    return TaskData(task, train, train[:4], train[:4]), Encoder(byte_tokenizer(), max_length=64, chat_template=False)


def test_class_balance_sample_draws_every_label_equally_each_epoch(workdir):
    data, encoder = imbalanced_data(workdir)
    dm = FineTuneData([data], encoder, batch_size=4, num_workers=0, seed=0, class_balance="sample")
    loader = dm.train_dataloader()
    seen_negatives = set()
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        indices = list(loader.sampler)
        labels = [dm.train_rows[i]["class_index"] for i in indices]
        assert len(indices) == 36  # an epoch keeps its length
        assert labels.count(0) == labels.count(1) == 18
        negatives = [i for i in indices if dm.train_rows[i]["class_index"] == 1]
        # The 6 negatives repeat three times per epoch, each as often as the others.
        assert sorted(set(negatives)) == list(range(30, 36)) and all(negatives.count(i) == 3 for i in set(negatives))
        seen_negatives.update(negatives)
    unbalanced = FineTuneData([data], encoder, batch_size=4, num_workers=0, seed=0)
    labels = [unbalanced.train_rows[i]["input_ids"] for i in unbalanced.train_dataloader().sampler]
    assert len(labels) == 36 and "class_index" not in unbalanced.train_rows[0]


def test_class_balance_loss_weights_each_label_the_same_in_total(workdir):
    from runner.training.objectives import target_weight

    data, encoder = imbalanced_data(workdir)
    dm = FineTuneData([data], encoder, batch_size=36, num_workers=0, seed=0, class_balance="loss")
    weights = {0: 0.0, 1: 0.0}
    for row in dm.train_rows:
        weights[row["class_index"]] += row["weight"]
    assert weights[0] == pytest.approx(18) and weights[1] == pytest.approx(18)  # n / k each
    batch = next(iter(dm.train_dataloader()))
    per_row_targets = (batch["labels"][:, 1:] != -100).sum(1).float()
    assert target_weight(batch) == pytest.approx(float((per_row_targets * batch["weight"]).sum()))
    # The weighted mean loss: a negative row's tokens count 5x a positive row's.
    assert sorted(set(batch["weight"].tolist())) == pytest.approx([0.6, 3.0])


def test_monitor_macro_f1_picks_the_best_epoch_on_the_primary_tasks_val_labels(workdir):
    raw = base_spec()
    raw["training"].update(epochs=3, monitor="macro_f1", early_stopping={"enabled": False})
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    (run_dir,) = (workdir / "runs" / "tiny").iterdir()
    training = json.loads((run_dir / "report.json").read_text())["training"]
    assert training["monitor"] == "val/sentiment/macro_f1"
    values = [e["monitor"] for e in training["epochs"]]
    assert len(values) == 3 and all(0 <= v <= 1 for v in values)
    best = values.index(max(values))
    assert training["best_epoch"] == best and training["best_monitor"] == max(values)
    assert f"best-epoch{best}-" in training["best_checkpoint"]
    assert "macro_f1" in (run_dir / "report.md").read_text()


def test_monitor_defaults_to_the_primary_tasks_own_loss_in_a_mixture(workdir):
    write_jsonl(workdir / "data" / "other.jsonl", [{"text": f"echo {i}", "sentiment": "positive"} for i in range(20)])
    raw = base_spec(primary_task="sentiment")
    raw["tasks"].append({"name": "echo", "data": "data/other.jsonl", "template": "sentiment.jinja", "weight": 0.5})
    raw["tasks"][0]["weight"] = 0.5
    raw["training"]["epochs"] = 1
    raw["evaluation"]["baselines"] = ["fine_tuned"]
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 0
    (run_dir,) = (workdir / "runs" / "tiny").iterdir()
    training = json.loads((run_dir / "report.json").read_text())["training"]
    assert training["monitor"] == "val/sentiment/loss"
    assert training["epochs"][0]["monitor"] != training["epochs"][0]["val_loss"]  # not the mixture's


def test_monitor_and_class_balance_need_a_classification_primary_task(workdir, capsys):
    raw = base_spec()
    raw["tasks"][0].pop("labels")
    raw["training"].update(monitor="accuracy", class_balance="sample")
    assert main(["run", str(write_spec(workdir / "spec.yaml", raw))]) == 2
    err = capsys.readouterr().err
    assert "$.training.monitor: 'accuracy' needs a classification primary task (labels)" in err
    assert "$.training.class_balance: 'sample' needs a classification primary task" in err


def test_every_objective_the_schema_names_is_in_the_table_and_sft_is_the_default() -> None:
    from runner.spec.types import schema
    from runner.training.objectives import OBJECTIVES

    objective = schema()["properties"]["training"]["properties"]["objective"]
    assert set(objective["enum"]) == set(OBJECTIVES) and objective["default"] == "sft"


TRIM_PROBE = """
from runner.training.memory import trim_allocator
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) / 1024
blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB in malloc's heap, below its mmap threshold
kept = blocks[::10]; del blocks                      # 90% freed, scattered between live blocks
before = rss(); trimmed = trim_allocator()
print(before, rss(), trimmed)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc (Linux)")
def test_trimming_the_allocator_returns_freed_pages_between_live_blocks():
    # A fresh process: a long test process's allocator state would decide what is trimmable.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", TRIM_PROBE], capture_output=True, text=True, check=True).stdout
    before, after, trimmed = out.split()
    assert trimmed == "True" and float(before) - float(after) > 150  # of the 270 MB freed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
@pytest.mark.parametrize("bounded", [False, True])
def test_bounded_allocator_returns_freed_activations_to_the_system(bounded):
    """Tensors freed while a later one is alive stay in glibc's heap by default (the process
    keeps their memory); inside training_allocator each large tensor is its own mapping, unmapped
    when freed. Run in a fresh interpreter: the setting is per process."""
    code = f"""
import torch
import contextlib
from runner.training.memory import training_allocator
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
warm = torch.ones(1 << 19); del warm  # default glibc: the first free raises its mmap threshold
with training_allocator() if {bounded} else contextlib.nullcontext():
    start = rss()
    tensors = [torch.ones(3 << 17) for _ in range(200)]  # 200 x 1.5 MB
    pinned = torch.ones(3 << 17)  # allocated last: on the heap it pins every block below it
    del tensors
    print(round(rss() - start))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kept_mb = int(done.stdout.split()[-1])
    assert (kept_mb < 50) if bounded else (kept_mb > 200), kept_mb


ADAPTER_METHODS = {
    "lora": lora_settings(dropout=0.0),
    "ia3": {"target_modules": "all-linear", "feedforward_modules": ["up_proj", "down_proj"]},
    "prompt_tuning": {"num_virtual_tokens": 4, "init": "random", "init_text": None},
}


@pytest.mark.parametrize("kind", sorted(ADAPTER_METHODS))
def test_frozen_weights_held_in_bf16_train_the_same_numbers_under_autocast(kind):
    """Autocast casts every linear weight to bf16 for its matmul: holding the frozen ones in bf16
    changes no loss and no adapter gradient, and the exact weights come back afterwards."""
    import copy

    from runner.model.methods import apply_method
    from runner.model.precision import frozen_linears, hold_frozen_weights, restore_frozen_weights
    from runner.spec.types import MethodSpec

    model, tokenizer = random_tiny(seed=3)
    original = copy.deepcopy(model)
    plain = apply_method(model, MethodSpec(kind, ADAPTER_METHODS[kind]), tokenizer)
    for param in plain.parameters():
        if param.requires_grad:
            torch.nn.init.normal_(param, mean=1.0 if kind == "ia3" else 0.0, std=0.2)  # adapters that matter
    held = copy.deepcopy(plain)
    layers = hold_frozen_weights(held, torch.bfloat16)
    # Every frozen linear layer but the output head, whose weight is the input embedding's.
    linears = [n for n, m in original.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(layers) == sorted(n for n in linears if n != "lm_head") and "lm_head" in linears
    assert all(layer.weight.dtype == torch.bfloat16 for layer in layers.values())
    batch = ragged_batch(tokenizer, [30, 12, 50])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = lora_gradients(plain, batch), lora_gradients(held, batch)
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=0, rtol=0)
    restore_frozen_weights(layers, original)
    assert frozen_linears(held).keys() == layers.keys()
    for name, layer in layers.items():
        assert torch.equal(layer.weight, original.get_submodule(name).weight)


def test_a_bf16_lora_run_trains_on_held_weights_and_gets_the_exact_ones_back(workdir, monkeypatch):
    from runner.flows import run as run_flow
    from runner.model.load import load_model
    from runner.training import setup

    seen = {}
    fit = run_flow.fit

    def watching_fit(module, *args, **kwargs):
        seen["held"] = {n: layer.weight.dtype for n, layer in module.held_frozen.items()}
        seen["layers"] = dict(module.held_frozen)
        return fit(module, *args, **kwargs)

    restore = setup.restore_weights

    def watching_restore(module, spec):
        restore(module, spec)
        seen["after"] = {p.dtype for p in module.model.parameters()}
        untrained, _ = load_model("random-tiny", 7)
        layers = seen["layers"].items()
        seen["exact"] = [torch.equal(layer.weight, untrained.get_submodule(n).weight) for n, layer in layers]

    monkeypatch.setattr(run_flow, "fit", watching_fit)
    monkeypatch.setattr(run_flow, "restore_weights", watching_restore)
    spec = base_spec(
        method={"kind": "lora", "lora": {"r": 4, "alpha": 8}},
        training={"epochs": 1, "batch_size": 8, "learning_rate": 1e-3},
    )
    spec["trainer"]["precision"] = "bf16-mixed"
    write_spec(workdir / "spec.yaml", spec)
    assert main(["run", str(workdir / "spec.yaml")]) == 0
    assert seen["held"] and set(seen["held"].values()) == {torch.bfloat16}
    assert seen["after"] == {torch.float32} and all(seen["exact"])  # before the adapters are merged to score


def test_packed_dropout_masks_unpack_to_the_same_mask():
    from runner.model.lora_layer import pack_bits, unpack_bits

    for shape in [(3, 5, 7), (2, 8), (1,)]:
        mask = torch.rand(shape) > 0.3
        packed = pack_bits(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == -(-mask.numel() // 8)
        assert torch.equal(unpack_bits(packed, mask.shape), mask)


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_fused_lora_layers_train_with_peft_s_numbers(autocast, dropout):
    """The fused LoRA step (one autograd function, a packed mask) gives peft's loss and
    gradients, with the same dropout draws, in fp32 and under bf16 autocast; scoring (no
    gradients) runs peft's own forward."""
    import copy

    from runner.model.lora_layer import LoraLinear
    from runner.model.methods import apply_method
    from runner.spec.types import MethodSpec

    model, tokenizer = random_tiny(seed=4)
    fused = apply_method(model, MethodSpec("lora", lora_settings(dropout=dropout)))
    layers = [m for m in fused.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is LoraLinear for m in layers)
    for name, param in fused.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.2)  # peft starts B at zero: make the adapters matter
    plain = copy.deepcopy(fused)
    for module in plain.modules():
        if isinstance(module, LoraLinear):
            module.__class__ = LoraLinear.__mro__[1]  # peft's class back
    batch = ragged_batch(tokenizer, [30, 12, 50])
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    results = []
    for net in (plain, fused):
        torch.manual_seed(11)  # the same dropout draws
        with context:
            net.train()
            losses, _ = completion_token_losses(net, batch)
            losses.mean().backward()
        results.append((losses.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}))
    (expected_loss, expected), (loss, got) = results
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if autocast else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(loss, expected_loss, **tolerance)
    assert expected.keys() == got.keys() and len(expected) == 2 * len(layers)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **tolerance)
    with torch.no_grad(), context:
        fused.eval()
        plain.eval()
        assert torch.equal(completion_token_losses(fused, batch)[0], completion_token_losses(plain, batch)[0])
