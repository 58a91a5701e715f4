"""`make bench`: how fast each stage is, side by side with the plain way of doing the same job.

    training      our step (pre-tokenized, loss on answers, length-grouped) vs tests/bench/baseline_sft.py
                  on the `bench` profile, same data and optimizer steps; medians of --reps runs
    stages        expansion, GX validation, formatting+tokenization at 1k / 10k / 100k rows (rows/s)
    orchestration nightly_retrain wall time minus its tasks' own time; unchanged re-run / full run
    memory        peak RSS of each measured stage
    smollm2       the default profile's real model (SmolLM2-135M): tokens/s with and without CPU bf16 autocast,
                  MFU against this CPU's measured fp32 and bf16 matmul peaks
    smollm2_vs_trl  the `training` comparison on SmolLM2 as `make run` trains it (8 steps, --smollm2-reps runs)
    reward_model  the step-level reward model's step (SmolLM2, the profile's `reward` settings), each speed
                  switch off in turn, against a plain transformers.Trainer token classifier (baseline_prm.py)
    distributed   SmolLM2's training in 1 and 2 DDP ranks (torchrun) at the same global batch, and the time to
                  all-reduce the trainable weights once (tests/bench/allreduce_probe.py)
    large_model   on a CUDA GPU: our step on a random-init model with Mistral-7B's shapes, tokens/s and MFU

Writes results.json and results.md to --out (default $RSLM_HOME/bench). A benchmark, not a test:
nothing here asserts a speed."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))

# importable only after the sys.path lines above
from serve_load import bench_serving, serving_markdown  # noqa: E402

from large_model import bench_large_model, large_model_markdown, model_flops_utilisation  # noqa: E402


@contextmanager
def peak_rss(into: dict, key: str):
    """Sample this process's RSS every 20 ms while the block runs; store the peak's growth over
    the RSS at the start, in MiB (what the stage itself added, not what earlier stages left)."""
    import psutil

    process, done = psutil.Process(), threading.Event()
    start = process.memory_info().rss
    peak = [start]

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        into[key] = round((peak[0] - start) / 2**20, 1)


def median(values):
    return statistics.median(values) if values else float("nan")


# --- data --------------------------------------------------------------------------------------

def scaled_framework(factor: int):
    """The DevOps framework with each pattern's first plain-text slot widened `factor` times
    (distinct values), so expansion yields about factor x 3.5k distinct rows."""
    from tasks.adapters.ops.config_files import load_framework

    framework = load_framework(REPO / "configs/frameworks/devops.yaml")
    data = framework.model_dump(mode="json", exclude_none=True)
    for principle in data["principles"]:
        for explanatory in principle["explanatory"]:
            for core in explanatory["core_logic"]:
                for block in core["blocks"]:
                    for pattern in block["patterns"]:
                        for name, values in pattern["slots"].items():
                            if all(isinstance(v, str) for v in values):
                                pattern["slots"][name] = [f"{v} (site {i})" if i else v
                                                          for i in range(factor) for v in values]
                                break
    return type(framework).model_validate(data)


def blueprint_for(n: int):
    """An offline blueprint whose expansion yields at least about `n` distinct rows."""
    from tasks.domain.blueprint import OfflineBlueprintGenerator

    return OfflineBlueprintGenerator().generate(scaled_framework(max(1, -(-n // 3000))))


def rows_for(n: int, seed: int = 13):
    from tasks.domain.expansion import build_dataset

    blueprint = blueprint_for(n)
    return blueprint, build_dataset(blueprint, seed=seed, eval_fraction=0.1, max_samples=n)


# --- training ----------------------------------------------------------------------------------

# Our step with one improvement taken away at a time, so each one's effect has its own figure:
# variant -> (the change, the gain's key in the results, what the gain is worth in words)
VARIANTS = {
    "ours": ({}, None, None),  # the pipeline's step, as configured
    "ours_random_batches": ({"group_by_length": False}, "length_grouping", "length-grouped batches"),
    "ours_checkpointing": ({"gradient_checkpointing": True}, "no_checkpointing", "no gradient checkpointing"),
    "ours_fp32_frozen_weights": ({"cpu_bf16_frozen_weights": False}, "bf16_frozen_weights",
                                 "frozen base weights in bf16 under CPU autocast"),
    "ours_trl_loss": ({"head_on_answers_only": False}, "head_on_answers_only", "output layer only at answer positions"),
    "ours_torch_dropout": ({"cpu_fast_dropout": False}, "fast_dropout", "LoRA dropout masks from 64-bit draws"),
    "ours_sdpa_attention": ({"attention": "sdpa"}, "eager_attention", "eager attention"),
    "ours_unshared_prefix": ({"shared_prefix": False}, "shared_prefix", "the system prompt run once per batch"),
}


def run_ours(base: Path, rows, cfg, out_dir: Path, model=None) -> dict:
    from tasks.adapters.model.training import build_trainer

    trainer, _, info = build_trainer(base, rows, [], cfg, out_dir, model=model)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    counter = info["counter"]
    return {"wall_s": wall, "tokens": counter.tokens, "answer_tokens": counter.loss_tokens,
            "padded_tokens": counter.padded_tokens, "device": info["device"], "precision": info["precision"]}


def parameter_count(base: Path) -> int:
    """Every weight of the model in `base`, a tied output layer counted once."""
    from transformers import AutoModelForCausalLM

    return sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())


def summarise_runs(runs: list[dict], examples: int) -> dict:
    """Medians over repetitions. Tokens are counted exactly per run (each run samples its own batches)."""
    return {"wall_s": median([r["wall_s"] for r in runs]),
            "examples_per_s": median([examples / r["wall_s"] for r in runs]),
            "answer_tokens_per_s": median([r["answer_tokens"] / r["wall_s"] for r in runs]),
            "tokens_per_s": median([r["tokens"] / r["wall_s"] for r in runs]),
            "pad_share": 1 - median([r["tokens"] / r["padded_tokens"] for r in runs]),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "runs": runs}


def training_worker(conn, variant: str, base: str, rows: list, texts: list[str]) -> None:
    """One process per variant, kept for all its repetitions: its peak RSS is that variant's alone,
    and the imports are paid once. Receives training configs, answers with one run's figures."""
    from tasks.domain.config import TrainingConfig

    from baseline_sft import run_baseline

    while (job := conn.recv()) is not None:
        cfg, out_dir = TrainingConfig.model_validate(job["cfg"]), Path(job["out_dir"])
        try:
            if variant == "baseline":
                result = run_baseline(base, texts, cfg.max_steps, cfg.batch_size, cfg.learning_rate, cfg.max_length,
                                      out_dir, cfg.lora.model_dump(), seed=cfg.seed, device=job["device"],
                                      precision=job["precision"], chat_format=job["chat_format"])
            else:
                result = run_ours(Path(base), rows, cfg, out_dir)
        except Exception as error:  # reported by the parent, which stops the benchmark
            conn.send({"error": f"{variant}: {type(error).__name__}: {error}"})
            continue
        result["peak_rss_mib"] = process_peak_rss_mib()
        conn.send(result)
        release_memory()  # seven SmolLM2 workers each holding its last run's model would not fit in 24 GiB


def process_peak_rss_mib() -> float:
    """This process's own peak RSS. On Linux, /proc's VmHWM: getrusage's ru_maxrss survives exec, so a
    spawned worker would report the parent's peak at the time it started (5.2 GiB for every variant
    once the `smollm2` section had run in the parent)."""
    import resource

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS: bytes; elsewhere KiB


def release_memory() -> None:
    """Free the last run's model and trainer (reference cycles) and hand the freed heap back to the OS."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    if sys.platform.startswith("linux"):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def interleaved_runs(target, args: tuple, names: list[str], reps: int, job, label: str = "") -> dict[str, list[dict]]:
    """One spawned worker process per variant, `target(conn, name, *args)` (a clean interpreter: no
    state shared with this one), sent `job(name, rep, ours_last_result)` for every repetition,
    interleaved so drift in machine speed touches every variant alike; their results by name."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = {}
    for name in names:
        parent, child = context.Pipe()
        process = context.Process(target=target, args=(child, name, *args), daemon=True)
        process.start()
        workers[name] = (parent, process)
    runs: dict[str, list[dict]] = {name: [] for name in names}
    try:
        for rep in range(reps):
            for name, (conn, _) in workers.items():
                conn.send(job(name, rep, runs["ours"][-1] if runs["ours"] else {}))
                result = conn.recv()
                if "error" in result:
                    raise RuntimeError(result["error"])
                runs[name].append(result)
                print(f"[bench] {label}{name} rep {rep + 1}/{reps}: {result['wall_s']:.1f} s", flush=True)
    finally:
        for conn, process in workers.values():
            conn.send(None)
            process.join(timeout=30)
    return runs


def bench_training(reps: int, device: str, workdir: Path, profile_name: str = "bench", steps: int | None = None) -> dict:
    """Our step and its variants against the plain TRL script, on `profile_name`'s model (the
    bench profile's random 18M model, or SmolLM2 as `make run` trains it) and training settings;
    `steps` shortens the profile's run."""

    from tasks.adapters.model.base_models import ensure_packaged_base, ensure_tiny_base
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.formatting import chat_format
    from tasks.domain.records import training_corpus

    profile = load_profile(profile_name)
    cfg = profile.training.model_copy(update={"device": device, **({"max_steps": steps, "save_steps": 10_000} if steps else {})})
    _, build = rows_for(3000)
    rows = build.train
    base = (ensure_tiny_base(profile.tiny, training_corpus(rows), workdir / "models") if profile.kind == "tiny"
            else ensure_packaged_base(profile.packaged, workdir / "models"))
    texts = [chat_format(profile.chat_format).row(r).text for r in rows]
    def job(name: str, rep: int, ran: dict) -> dict:
        return {"cfg": cfg.model_copy(update=VARIANTS.get(name, ({},))[0]).model_dump(),
                "out_dir": str(workdir / f"{name}-{rep}"), "device": ran.get("device"), "precision": ran.get("precision"),
                "chat_format": profile.chat_format}

    runs = interleaved_runs(training_worker, (str(base), rows, texts), [*VARIANTS, "baseline"], reps, job)
    params = parameter_count(base)
    examples = cfg.max_steps * cfg.batch_size
    summary = {name: summarise_runs(r, examples) for name, r in runs.items()}
    peaks = cpu_matmul_peaks() if runs["ours"][0]["device"] == "cpu" else {}
    peak = peaks.get(runs["ours"][0]["precision"])  # the baseline trains in the same precision as ours
    for result in summary.values():
        result["mfu"] = model_flops_utilisation(params, result["tokens_per_s"], peak / 1e3 if peak else None)
    ours, baseline = summary["ours"], summary["baseline"]
    return {
        "profile": profile_name, "model_parameters": params, "steps": cfg.max_steps, "batch_size": cfg.batch_size, "reps": reps,
        "device": runs["ours"][0]["device"], "precision": runs["ours"][0]["precision"], **summary,
        "cpu_peak_gflops": peaks,
        # the measure: answer (loss-bearing for ours) tokens per second, each side counted exactly
        "speedup": ours["answer_tokens_per_s"] / baseline["answer_tokens_per_s"],
        "speedup_tokens": ours["tokens_per_s"] / baseline["tokens_per_s"],  # every non-pad token alike
        "speedup_wall": baseline["wall_s"] / ours["wall_s"],
        # what each difference from the baseline is worth, in non-pad tokens/s
        "gains": {gain: ours["tokens_per_s"] / summary[name]["tokens_per_s"] for name, (_, gain, _) in VARIANTS.items() if gain},
    }


# --- reward model --------------------------------------------------------------------------------

# The reward model's step with one switch taken away at a time (issue 29), as VARIANTS for the chat step.
REWARD_VARIANTS = {
    "ours": ({}, None, None),
    "ours_random_batches": ({"group_by_length": False}, "length_grouping", "length-grouped batches"),
    "ours_fp32_frozen_weights": ({"cpu_bf16_frozen_weights": False}, "bf16_frozen_weights",
                                 "frozen base weights in bf16 under CPU autocast"),
    "ours_head_everywhere": ({"head_on_step_ends_only": False}, "head_on_step_ends_only",
                             "token head only at step ends"),
    "ours_torch_dropout": ({"cpu_fast_dropout": False}, "fast_dropout", "LoRA dropout masks from 64-bit draws"),
    "ours_sdpa_attention": ({"attention": "sdpa"}, "eager_attention", "eager attention"),
}


def reward_rows(count: int):
    """`count` step-labelled answers from the DevOps framework's rows, spread across kinds and
    patterns as the pipeline samples them."""
    from tasks.adapters.ops.config_files import load_framework, load_profile
    from tasks.domain.sampling import spread_sample
    from tasks.domain.steps import step_examples

    reward = load_profile("smollm2-135m").reward
    framework = load_framework(REPO / "configs/frameworks/devops.yaml")
    examples = step_examples(rows_for(3000)[1].train, framework, seed=13, kinds=reward.kinds, per_row=reward.per_row)
    return spread_sample(examples, count, kind=lambda e: e.kind, pattern=lambda e: e.pattern_id)


def reward_worker(conn, variant: str, base: str, examples: list[dict]) -> None:
    """One process per reward-model variant (see `training_worker`)."""
    from tasks.adapters.model.base_models import load_tokenizer
    from tasks.adapters.model.chat_codec import chat_codec
    from tasks.adapters.model.reward_model import build_reward_trainer, step_tokens
    from tasks.domain.config import RewardConfig, TrainingConfig
    from tasks.domain.steps import StepExample

    from baseline_prm import TokenCounter, run_baseline_prm

    steps = [StepExample.model_validate(e) for e in examples]
    while (job := conn.recv()) is not None:
        cfg, training = RewardConfig.model_validate(job["cfg"]), TrainingConfig.model_validate(job["training"])
        out_dir = Path(job["out_dir"])
        try:
            if variant == "baseline":
                codec = chat_codec(load_tokenizer(base), "chatml")
                rows = [{"input_ids": t.input_ids, "labels": t.labels}
                        for t in (step_tokens(codec, e.prompt, e.steps, e.labels, cfg.system_turn) for e in steps)]
                result = run_baseline_prm(base, rows, cfg.max_steps, cfg.batch_size, cfg.learning_rate, out_dir,
                                          cfg.lora.model_dump(), cfg.top_layers, seed=training.seed,
                                          device=job["device"], precision=job["precision"])
            else:
                trainer, _, info = build_reward_trainer(base, steps, cfg, training, out_dir, chat_format="chatml")
                counter = TokenCounter(trainer.data_collator)
                trainer.data_collator = counter
                started = time.perf_counter()
                trainer.train()
                result = {"wall_s": time.perf_counter() - started, "tokens": counter.tokens,
                          "answer_tokens": counter.labelled, "padded_tokens": counter.padded_tokens,
                          "device": info["device"], "precision": info["precision"]}
        except Exception as error:  # reported by the parent, which stops the benchmark
            conn.send({"error": f"{variant}: {type(error).__name__}: {error}"})
            continue
        result["peak_rss_mib"] = process_peak_rss_mib()
        conn.send(result)
        release_memory()


def reward_flops_per_token(base: Path, top_layers: int) -> int:
    """Matmul FLOPs per token of a reward-model step: a forward pass through every block (2 per
    weight) and a backward pass for the input gradients through the adapted top blocks only (2 per
    weight; the frozen blocks below get no backward pass, and LoRA's own weights are left out as in
    the chat step's 4·N). The classifier has no output layer over the vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with_meta = AutoModelForCausalLM.from_config(config)
    per_block = sum(p.numel() for n, p in with_meta.named_parameters() if ".layers.0." in n and p.dim() == 2)
    layers = config.num_hidden_layers
    return 2 * per_block * layers + 2 * per_block * (min(top_layers, layers) if top_layers else layers)


def bench_reward_model(reps: int, device: str, workdir: Path, steps: int = 12) -> dict:
    """The reward model's step as `make run` trains it (SmolLM2 profile's `reward` settings) and
    each variant without one switch, against tests/bench/baseline_prm.py, on the same answers."""

    from tasks.adapters.model.base_models import ensure_packaged_base
    from tasks.adapters.ops.config_files import load_profile

    profile = load_profile("smollm2-135m")
    cfg = profile.reward.model_copy(update={"max_steps": steps, "save_steps": 10_000})
    training = profile.training.model_copy(update={"device": device})
    base = ensure_packaged_base(profile.packaged, workdir / "models")
    examples = [e.model_dump(mode="json") for e in reward_rows(steps * cfg.batch_size)]
    def job(name: str, rep: int, ran: dict) -> dict:
        return {"cfg": cfg.model_copy(update=REWARD_VARIANTS.get(name, ({},))[0]).model_dump(),
                "training": training.model_dump(), "out_dir": str(workdir / f"prm-{name}-{rep}"),
                "device": ran.get("device"), "precision": ran.get("precision")}

    runs = interleaved_runs(reward_worker, (str(base), examples), [*REWARD_VARIANTS, "baseline"], reps, job, "reward ")
    summary = {name: summarise_runs(r, steps * cfg.batch_size) for name, r in runs.items()}
    flops = reward_flops_per_token(base, cfg.top_layers)
    peaks = cpu_matmul_peaks() if runs["ours"][0]["device"] == "cpu" else {}
    peak = peaks.get(runs["ours"][0]["precision"])
    for result in summary.values():
        result["mfu"] = flops * result["tokens_per_s"] / (peak * 1e9) if peak else None
    ours, baseline = summary["ours"], summary["baseline"]
    return {"profile": "smollm2-135m", "steps": steps, "batch_size": cfg.batch_size, "reps": reps,
            "top_layers": cfg.top_layers, "flops_per_token": flops,
            "device": runs["ours"][0]["device"], "precision": runs["ours"][0]["precision"], **summary,
            "cpu_peak_gflops": peaks,
            "speedup_tokens": ours["tokens_per_s"] / baseline["tokens_per_s"],
            "speedup_wall": baseline["wall_s"] / ours["wall_s"],
            "gains": {gain: ours["tokens_per_s"] / summary[name]["tokens_per_s"]
                      for name, (_, gain, _) in REWARD_VARIANTS.items() if gain}}


def reward_markdown(t: dict) -> list[str]:
    peak = (t.get("cpu_peak_gflops") or {}).get(t["precision"])
    lines = ["## Reward model step (smollm2-135m profile's `reward` settings, against a plain Trainer)", "",
             f"SmolLM2-135M token classifier, LoRA on the top {t['top_layers']} blocks, {t['steps']} steps x batch "
             f"{t['batch_size']}, median of {t['reps']} on {t['device']} ({t['precision']}); examples are answers", ""]
    table, gains = variant_lines(t, REWARD_VARIANTS, answer_tokens=False)
    return lines + table + ["", f"**speedup: {t['speedup_tokens']:.2f}x in non-pad tokens/s** over the plain Trainer "
                        f"({t['speedup_wall']:.2f}x in wall time, same answers and steps). MFU: "
                        f"{t['flops_per_token'] / 1e6:.0f} MFLOPs per non-pad token (forward through every block, "
                        f"input-gradient backward through the adapted ones) over this CPU's {t['precision']} matmul "
                        f"peak measured in the same run ({f'{peak:.0f} GFLOP/s' if peak else 'not measured'}). "
                        f"Each switch alone (ours over ours without it): {gains}", ""]


# --- stages ------------------------------------------------------------------------------------

def bench_stages(sizes: list[int], workdir: Path) -> dict:
    from expectations.reasoning_dataset import flatten_rows
    from tasks.adapters.data.gx_runner import validate_frame
    from tasks.adapters.model.base_models import ensure_tiny_base, load_tokenizer
    from tasks.adapters.model.chat_codec import chat_codec
    from tasks.adapters.model.training import tokenize_rows
    from tasks.adapters.ops.config_files import load_framework, load_profile
    from tasks.domain.config import ValidationConfig
    from tasks.domain.expansion import build_dataset
    from tasks.domain.records import training_corpus
    from tasks.stages.build_dataset import suite_spec

    results = {}
    framework = load_framework(REPO / "configs/frameworks/devops.yaml")
    spec = suite_spec(framework, ValidationConfig())
    # one tokenizer for every size, so the sizes' tokenization rates compare like with like
    codec = chat_codec(load_tokenizer(ensure_tiny_base(load_profile("tiny").tiny, training_corpus(rows_for(3000)[1].train),
                                                workdir / "models")))
    for n in sizes:
        memory: dict = {}
        blueprint = blueprint_for(n)
        with peak_rss(memory, "expansion"):
            started = time.perf_counter()
            build = build_dataset(blueprint, seed=13, eval_fraction=0.1, max_samples=n)
            expansion = time.perf_counter() - started
        rows = build.train + build.eval
        frame = flatten_rows([("bench.jsonl", i + 1, r) for i, r in enumerate(rows)])
        with peak_rss(memory, "validation"):
            started = time.perf_counter()
            report = validate_frame(frame, spec, workdir / f"gx-{n}")
            validation = time.perf_counter() - started
        with peak_rss(memory, "tokenization"):
            started = time.perf_counter()
            tokenize_rows(rows, codec, 512)
            tokenization = time.perf_counter() - started
        results[str(n)] = {"rows": len(rows), "validation_passed": report.success,
                           "expansion_rows_per_s": len(rows) / expansion, "expansion_s": expansion,
                           "validation_rows_per_s": len(rows) / validation, "validation_s": validation,
                           "tokenization_rows_per_s": len(rows) / tokenization, "tokenization_s": tokenization,
                           "expansion_plus_validation_s": expansion + validation, "peak_rss_mib": memory}
    return results


# --- orchestration -----------------------------------------------------------------------------

def tasks_own_seconds(client, since, until) -> tuple[float, int]:
    """Sum of the run time of every task run that started and ended inside [since, until]: the
    work itself, sub-flows' tasks included, excluding the engine's bookkeeping around it."""
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime, TaskRunFilterSubFlowRuns

    # A sub-flow call is also a task run in its parent, spanning the sub-flow: left out, or its
    # tasks' time would count twice.
    only_tasks = TaskRunFilter(start_time=TaskRunFilterStartTime(after_=since),
                               subflow_runs=TaskRunFilterSubFlowRuns(exists_=False))
    tasks = client.read_task_runs(task_run_filter=only_tasks, limit=200)  # the server's maximum; a nightly has ~30
    inside = [t for t in tasks if t.end_time and t.end_time <= until]
    return sum(t.total_run_time.total_seconds() for t in inside), len(inside)


QUICK_RUN = {"profile": "tiny", "dataset.max_samples": 600, "training_overrides": {"max_steps": 20, "save_steps": 20}}


def cpu_matmul_peak_gflops(dtype: str, size: int = 1024, reps: int = 10) -> float:
    """What this CPU's matmul reaches in `dtype` (fp32 | bf16), in GFLOP/s: the best of `reps`
    square products after one warm-up, on as many threads as training uses. The MFU below is
    measured against this, not a data-sheet figure."""
    import torch

    kind = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def cpu_matmul_peaks() -> dict[str, float]:
    return {"fp32": cpu_matmul_peak_gflops("fp32"), "bf16": cpu_matmul_peak_gflops("bf16")}


def bench_smollm2(device: str, workdir: Path, steps: int = 8) -> dict:
    """The default profile's training step on its real model, as `make run` trains it, and the same
    step without bf16 autocast: what the autocast buys on this CPU (the same batches, in order).
    MFU counts 4·N FLOPs per non-pad token (N: every matmul weight, the tied output layer once,
    the input embedding being a lookup) against the CPU's measured matmul peak in the run's precision."""
    from tasks.adapters.model.base_models import ensure_packaged_base
    from tasks.adapters.ops.config_files import load_profile

    profile = load_profile("smollm2-135m")
    base = ensure_packaged_base(profile.packaged, workdir / "models")
    rows = rows_for(3000)[1].train[:steps * profile.training.batch_size]
    matmul_params = parameter_count(base)
    peaks = cpu_matmul_peaks()
    results = {}
    for name, update in {"as_configured": {}, "without_bf16_autocast": {"cpu_bf16_autocast": False}}.items():
        cfg = profile.training.model_copy(update={"max_steps": steps, "save_steps": 10_000, "device": device, **update})
        run = run_ours(base, rows, cfg, workdir / f"smollm2-{name}")
        tokens_per_s = run["tokens"] / run["wall_s"]
        peak = peaks.get(run["precision"]) if run["device"] == "cpu" else None  # a CPU peak says nothing of a GPU run
        mfu = model_flops_utilisation(matmul_params, tokens_per_s, peak / 1e3 if peak else None)  # takes TFLOP/s
        results[name] = {**run, "tokens_per_s": tokens_per_s, "answer_tokens_per_s": run["answer_tokens"] / run["wall_s"],
                         "peak_gflops": peak, "mfu": mfu}
    results["autocast_gain"] = results["as_configured"]["tokens_per_s"] / results["without_bf16_autocast"]["tokens_per_s"]
    results["steps"], results["batch_size"], results["matmul_params"] = steps, profile.training.batch_size, matmul_params
    results["cpu_peak_gflops"] = peaks
    return results


def bench_distributed(device: str, workdir: Path, steps: int = 8, processes: int = 2) -> dict:
    """SmolLM2's training as `make run` configures it, in one process and in `processes` DDP ranks
    (torchrun; gloo on a CPU) at the same global batch: tokens/s over the training itself (rank 0's
    train time, every rank's tokens), the launch's whole wall time, and the time to all-reduce a
    buffer the size of the trainable weights (what DDP adds per step), measured apart. On a
    2-core machine two ranks share the same two cores: the figure is reported as it is."""
    import re
    import subprocess

    from tasks.adapters.model.base_models import ensure_packaged_base
    from tasks.adapters.model.training import train_lora
    from tasks.adapters.ops.config_files import load_profile

    profile = load_profile("smollm2-135m")
    base = ensure_packaged_base(profile.packaged, workdir / "models")
    batch = profile.training.batch_size
    rows = rows_for(3000)[1].train[:steps * batch]
    results: dict = {"steps": steps, "global_batch": batch}
    for ranks in (1, processes):
        cfg = profile.training.model_copy(update={
            "max_steps": steps, "save_steps": 10_000, "device": device, "batch_size": batch // ranks,
            "distributed": profile.training.distributed.model_copy(update={"nproc_per_node": ranks})})
        started = time.perf_counter()
        summary = train_lora(base, rows, [], cfg, workdir / f"ddp-{ranks}")
        results[f"ranks_{ranks}"] = {"launch_wall_s": time.perf_counter() - started, "train_s": summary.duration_s,
                                     "tokens": summary.tokens_seen, "tokens_per_s": summary.tokens_per_second,
                                     "world_size": summary.world_size}
        trainable = summary.trainable_params
    probe = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                            str(processes), str(Path(__file__).with_name("allreduce_probe.py")), str(trainable), "10"],
                           capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))})
    found = re.search(r"ALLREDUCE_MS ([\d.]+)", probe.stdout)
    results["allreduce_ms"] = float(found.group(1)) if found else None
    results["trainable_params"] = trainable
    results["scaling"] = results[f"ranks_{processes}"]["tokens_per_s"] / results["ranks_1"]["tokens_per_s"]
    return results


def distributed_markdown(t: dict) -> list[str]:
    lines = ["## Training in several processes (smollm2-135m, DDP through torchrun, same global batch)", "",
             "| ranks | tokens/s (training) | training s | launch wall s |", "|---|---|---|---|"]
    for key in sorted(k for k in t if k.startswith("ranks_")):
        r = t[key]
        lines.append(f"| {r['world_size']} | {r['tokens_per_s']:.0f} | {r['train_s']:.1f} | {r['launch_wall_s']:.1f} |")
    comm = f"{t['allreduce_ms']:.1f} ms" if t.get("allreduce_ms") is not None else "not measured"
    return lines + ["", f"{t['scaling']:.2f}x one process's tokens/s; all-reduce of the "
                        f"{t['trainable_params'] / 1e6:.1f}M trainable weights (fp32), once per step: {comm}.", ""]


def bench_serve(workdir: Path) -> dict:
    """`rslm serve` on SmolLM2 under 1, 8 and 64 concurrent clients (tests/bench/serve_load.py)."""
    from tasks.adapters.model.base_models import ensure_packaged_base
    from tasks.adapters.ops.config_files import load_profile

    return bench_serving(workdir, ensure_packaged_base(load_profile("smollm2-135m").packaged, workdir / "models"))


def bench_orchestration(workdir: Path, overrides: dict = QUICK_RUN) -> dict:
    os.environ["RSLM_HOME"] = str(workdir / "home")
    from flows.environment import quiet_offline_defaults

    quiet_offline_defaults(use_stack=False)
    from datetime import UTC, datetime

    from prefect import flow
    from prefect.client.orchestration import get_client

    from flows.nightly_retrain import nightly_retrain

    @flow(name="bench-noop")
    def noop() -> None:
        return None

    started = time.perf_counter()
    noop()  # starts Prefect's temporary server, which `make run` pays once and a running stack never
    server_start = time.perf_counter() - started
    runs = {}
    for label in ("full", "unchanged"):
        since, started = datetime.now(UTC), time.perf_counter()
        record = nightly_retrain(overrides=overrides)
        runs[label] = {"wall_s": time.perf_counter() - started, "status": record["status"],
                       "since": since, "until": datetime.now(UTC)}
    with get_client(sync_client=True) as client:
        for run in runs.values():
            run["tasks_own_s"], run["task_runs"] = tasks_own_seconds(client, run.pop("since"), run.pop("until"))
    full, unchanged = runs["full"], runs["unchanged"]
    return {"server_start_s": server_start, "full_wall_s": full["wall_s"], "full_status": full["status"],
            "tasks_own_s": full["tasks_own_s"], "task_runs": full["task_runs"],
            # flow and sub-flow engines, state round-trips to the server, result persistence, imports
            "overhead_s": full["wall_s"] - full["tasks_own_s"],
            "overhead_fraction": (full["wall_s"] - full["tasks_own_s"]) / full["wall_s"],
            "unchanged_wall_s": unchanged["wall_s"], "unchanged_status": unchanged["status"],
            "unchanged_tasks_own_s": unchanged["tasks_own_s"],
            "unchanged_fraction": unchanged["wall_s"] / full["wall_s"]}


def large_model_section(args, workdir: Path) -> dict:
    from tasks.adapters.model.base_models import ensure_tiny_base
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.records import training_corpus

    _, build = rows_for(3000)
    base = ensure_tiny_base(load_profile("bench").tiny, training_corpus(build.train), workdir / "models")
    return bench_large_model(base, build.train, "cuda" if args.device == "auto" else args.device, workdir,
                             steps=args.large_steps, batch_size=args.large_batch, peak_tflops=args.peak_tflops)


def variant_lines(t: dict, variants: dict, answer_tokens: bool) -> tuple[list[str], str]:
    """The per-variant table of a training section (ours, each variant, the baseline) and each
    change's gain in words."""
    extra = " answer tokens/s |" if answer_tokens else ""
    lines = [f"| | wall s | examples/s |{extra} tokens/s (non-pad) | MFU | pad share | peak RSS MiB |",
             "|---|---|---|" + ("---|" if answer_tokens else "") + "---|---|---|---|"]
    for name in (*variants, "baseline"):
        r = t[name]
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "n/a"
        answers = f" {r['answer_tokens_per_s']:.0f} |" if answer_tokens else ""
        lines.append(f"| {name} | {r['wall_s']:.1f} | {r['examples_per_s']:.2f} |{answers} "
                     f"{r['tokens_per_s']:.0f} | {mfu} | {r['pad_share']:.0%} | {r['peak_rss_mib']:.0f} |")
    labels = {gain: label for _, gain, label in variants.values() if gain}
    return lines, "; ".join(f"{labels.get(k, k)} {v:.2f}x" for k, v in t["gains"].items())


def training_markdown(t: dict, title: str) -> list[str]:
    peaks = t.get("cpu_peak_gflops") or {}
    peak = peaks.get(t["precision"])
    lines = [f"## Training step ({title})", "",
             f"{t['model_parameters'] / 1e6:.1f}M parameters ({t.get('profile', 'bench')}), {t['steps']} steps x batch "
             f"{t['batch_size']}, median of {t['reps']} on {t['device']} ({t['precision']})", ""]
    table, gains = variant_lines(t, VARIANTS, answer_tokens=True)
    return lines + table + ["", f"**speedup: {t['speedup_tokens']:.2f}x in non-pad tokens/s** over the baseline "
                        f"({t['speedup']:.2f}x in answer tokens/s, {t['speedup_wall']:.2f}x in wall time for the "
                        f"same number of examples and steps). MFU: 4 x {t['model_parameters'] / 1e6:.0f}M FLOPs per "
                        f"non-pad token over this CPU's {t['precision']} matmul peak measured in the same run "
                        f"({f'{peak:.0f} GFLOP/s' if peak else 'not measured'}). Each change alone, in non-pad tokens/s "
                        f"(ours over ours without it; 1.00x where the profile does not use it): {gains}", ""]


def markdown(results: dict) -> str:
    lines = ["# make bench", "", f"machine: {results['machine']}", ""]
    for section, title in (("training", "bench profile"), ("smollm2_vs_trl", "smollm2-135m profile against plain TRL")):
        if t := results.get(section):
            lines += training_markdown(t, title)
    if results.get("reward_model"):
        lines += reward_markdown(results["reward_model"])
    if results.get("distributed"):
        lines += distributed_markdown(results["distributed"])
    if results.get("smollm2"):
        m = results["smollm2"]
        lines += ["## Training step (smollm2-135m profile, the default)", "",
                  f"SmolLM2-135M-Instruct, LoRA r16 all-linear, {m['steps']} steps x batch {m['batch_size']}, one run each", "",
                  "| | precision | wall s | tokens/s (non-pad) | answer tokens/s | MFU vs measured peak |",
                  "|---|---|---|---|---|---|"]
        for name in ("as_configured", "without_bf16_autocast"):
            r = m[name]
            mfu = f"{r['mfu']:.1%} of {r['peak_gflops']:.0f} GFLOP/s" if r.get("mfu") else "n/a"
            lines.append(f"| {name} | {r['precision']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.0f} | "
                         f"{r['answer_tokens_per_s']:.0f} | {mfu} |")
        peaks = ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in m.get("cpu_peak_gflops", {}).items())
        lines += ["", f"bf16 autocast: **{m['autocast_gain']:.2f}x** tokens/s; CPU matmul peak (1024², best of 10): "
                      f"{peaks or 'not measured'}; {m.get('matmul_params', 0) / 1e6:.0f}M matmul parameters", ""]
    if results.get("large_model"):
        lines += large_model_markdown(results["large_model"])
    if results.get("stages"):
        lines += ["## Stages", "",
                  "| rows | expansion rows/s | GX rows/s | tokenization rows/s | expansion+GX s | peak RSS growth MiB |",
                  "|---|---|---|---|---|---|"]
        for r in results["stages"].values():
            lines.append(f"| {r['rows']} | {r['expansion_rows_per_s']:.0f} | {r['validation_rows_per_s']:.0f} | "
                         f"{r['tokenization_rows_per_s']:.0f} | {r['expansion_plus_validation_s']:.1f} | "
                         f"{max(r['peak_rss_mib'].values())} |")
        lines.append("")
    if results.get("serving"):
        lines += serving_markdown(results["serving"])
    if results.get("orchestration"):
        o = results["orchestration"]
        lines += ["## Orchestration (nightly_retrain, 600 rows, 20 steps, Prefect server already up)", "",
                  "- Prefect temporary server start (paid once per `make run`, never with `make up`): "
                  f"{o['server_start_s']:.1f} s",
                  f"- full run: {o['full_wall_s']:.1f} s wall; "
                  f"its {o['task_runs']} task runs' own time {o['tasks_own_s']:.1f} s; "
                  f"**overhead {o['overhead_s']:.1f} s ({o['overhead_fraction']:.0%})**",
                  f"- unchanged re-run ({o['unchanged_status']}): {o['unchanged_wall_s']:.1f} s, "
                  f"**{o['unchanged_fraction']:.0%} of the full run**", ""]
    return "\n".join(lines)


def default_sections(device: str) -> list[str]:
    """Everything that runs here; the 7B-shaped step only where a CUDA GPU will run it."""
    import torch

    wants_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return ["training", "smollm2", "smollm2_vs_trl", "reward_model", "distributed", "stages", "serving",
            "orchestration", *(["large_model"] if wants_gpu else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("RSLM_HOME", ".rslm")) / "bench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--only", help="comma-separated sections: training, smollm2, smollm2_vs_trl, reward_model, "
                                       "distributed, stages, "
                                       "orchestration, "
                                       "large_model "
                                       "(default: all but large_model, plus large_model on a CUDA machine)")
    parser.add_argument("--smollm2-reps", type=int, default=1, help="repetitions of the SmolLM2-against-TRL section")
    parser.add_argument("--reward-reps", type=int, default=1, help="repetitions of the reward-model section")
    parser.add_argument("--reward-steps", type=int, default=12, help="steps per reward-model run")
    parser.add_argument("--large-steps", type=int, default=10, help="timed steps of the 7B-shaped model")
    parser.add_argument("--large-batch", type=int, default=16, help="batch size of the 7B-shaped model")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU, if not in the table")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import platform

    import torch

    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                          f"threads {torch.get_num_threads()}"}
    sections = args.only.split(",") if args.only else default_sections(args.device)
    runners = {"training": lambda work: bench_training(args.reps, args.device, work),
               "smollm2": lambda work: bench_smollm2(args.device, work),
               "smollm2_vs_trl": lambda work: bench_training(args.smollm2_reps, args.device, work, "smollm2-135m", steps=8),
               "reward_model": lambda work: bench_reward_model(args.reward_reps, args.device, work, args.reward_steps),
               "distributed": lambda work: bench_distributed(args.device, work),
               "large_model": lambda work: large_model_section(args, work),
               "stages": lambda work: bench_stages([int(s) for s in args.sizes.split(",")], work),
               "serving": bench_serve,
               "orchestration": bench_orchestration}
    if unknown := set(sections) - set(runners):
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(runners)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rslm-bench-") as tmp:
        for section in (name for name in runners if name in sections):
            results[section] = runners[section](Path(tmp))
            write_results(results, args.out)  # a later section's failure loses nothing measured so far
    print(markdown(results))
    print(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


def write_results(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "results.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
