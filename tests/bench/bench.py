"""`make bench`: how fast each stage is, side by side with the plain way of doing the same job.

    training      our step (pre-tokenized, loss on answers, length-grouped) vs tests/bench/baseline_sft.py
                  on the `bench` profile, same data and optimizer steps; medians of --reps runs
    stages        expansion, GX validation, formatting+tokenization at 1k / 10k / 100k rows (rows/s)
    orchestration nightly_retrain wall time minus its tasks' own time; unchanged re-run / full run
    memory        peak RSS of each measured stage

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
    from tasks.adapters.configs import load_framework

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


def rows_for(n: int, seed: int = 13):
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import build_dataset

    factor = max(1, -(-n // 3000))
    blueprint = OfflineBlueprintGenerator().generate(scaled_framework(factor))
    build = build_dataset(blueprint, seed=seed, eval_fraction=0.1, max_samples=n)
    return blueprint, build


# --- training ----------------------------------------------------------------------------------

def bench_training(reps: int, device: str, workdir: Path) -> dict:
    from baseline_sft import run_baseline

    from tasks.adapters.configs import load_profile
    from tasks.adapters.models import ensure_tiny_base
    from tasks.adapters.stages import training_corpus
    from tasks.adapters.training import build_trainer
    from tasks.domain.formatting import format_row

    profile = load_profile("bench")
    cfg = profile.training.model_copy(update={"device": device})
    _, build = rows_for(3000)
    rows = build.train
    base = ensure_tiny_base(profile.tiny, training_corpus(rows), workdir / "models")
    ours, baseline, memory = [], [], {}
    for rep in range(reps):
        with peak_rss(memory, f"ours_{rep}"):
            trainer, _, info = build_trainer(base, rows, [], cfg, workdir / f"ours-{rep}")
            started = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - started
        counter = info["counter"]
        ours.append({"wall_s": wall, "tokens": counter.tokens, "loss_tokens": counter.loss_tokens})
        with peak_rss(memory, f"baseline_{rep}"):
            baseline.append(run_baseline(str(base), [format_row(r).text for r in rows], cfg.max_steps, cfg.batch_size,
                                         cfg.learning_rate, cfg.max_length, workdir / f"base-{rep}",
                                         cfg.lora.model_dump(), seed=cfg.seed))
    from transformers import AutoModelForCausalLM

    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())
    ours_wall, base_wall = median([r["wall_s"] for r in ours]), median([r["wall_s"] for r in baseline])
    examples = cfg.max_steps * cfg.batch_size
    answer_tokens_per_example = median([r["loss_tokens"] / examples for r in ours])
    return {
        "model_parameters": params, "steps": cfg.max_steps, "batch_size": cfg.batch_size, "reps": reps,
        "device": info["device"],
        "ours": {"wall_s": ours_wall, "examples_per_s": examples / ours_wall,
                 "answer_tokens_per_s": answer_tokens_per_example * examples / ours_wall,
                 "tokens_per_s": median([r["tokens"] for r in ours]) / ours_wall, "runs": ours},
        "baseline": {"wall_s": base_wall, "examples_per_s": examples / base_wall,
                     "answer_tokens_per_s": answer_tokens_per_example * examples / base_wall,
                     "tokens_per_s": median([r["tokens"] for r in baseline]) / base_wall,
                     "pad_share": 1 - median([r["tokens"] / r["padded_tokens"] for r in baseline]), "runs": baseline},
        "speedup": base_wall / ours_wall,
        "peak_rss_mib": {"ours": max(v for k, v in memory.items() if k.startswith("ours")),
                         "baseline": max(v for k, v in memory.items() if k.startswith("baseline"))},
    }


# --- stages ------------------------------------------------------------------------------------

def bench_stages(sizes: list[int], workdir: Path) -> dict:
    from expectations.reasoning_dataset import flatten_rows
    from tasks.adapters.configs import load_framework, load_profile
    from tasks.adapters.gx_runner import validate_frame
    from tasks.adapters.models import ensure_tiny_base, load_tokenizer
    from tasks.adapters.stages import suite_spec, training_corpus
    from tasks.adapters.training import tokenize_rows
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.config import ValidationConfig
    from tasks.domain.expansion import build_dataset

    results = {}
    framework = load_framework(REPO / "configs/frameworks/devops.yaml")
    spec = suite_spec(framework, ValidationConfig())
    for n in sizes:
        memory: dict = {}
        big = scaled_framework(max(1, -(-n // 3000)))
        blueprint = OfflineBlueprintGenerator().generate(big)
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
        tokenizer = load_tokenizer(ensure_tiny_base(load_profile("tiny").tiny, training_corpus(rows[:3000]),
                                                    workdir / "models"))
        with peak_rss(memory, "tokenization"):
            started = time.perf_counter()
            tokenize_rows(rows, tokenizer, 512)
            tokenization = time.perf_counter() - started
        results[str(n)] = {"rows": len(rows), "validation_passed": report.success,
                           "expansion_rows_per_s": len(rows) / expansion, "expansion_s": expansion,
                           "validation_rows_per_s": len(rows) / validation, "validation_s": validation,
                           "tokenization_rows_per_s": len(rows) / tokenization, "tokenization_s": tokenization,
                           "expansion_plus_validation_s": expansion + validation, "peak_rss_mib": memory}
    return results


# --- orchestration -----------------------------------------------------------------------------

def bench_orchestration(workdir: Path) -> dict:
    os.environ["RSLM_HOME"] = str(workdir / "home")
    from tasks.adapters.settings import quiet_offline_defaults

    quiet_offline_defaults(use_stack=False)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.nightly_retrain import nightly_retrain

    quick = {"dataset.max_samples": 600, "training_overrides": {"max_steps": 20, "save_steps": 20}}
    timings = {}
    for label in ("full", "unchanged"):
        started = time.perf_counter()
        record = nightly_retrain(overrides=quick)
        timings[label] = {"wall_s": time.perf_counter() - started, "status": record["status"],
                          "flow_run_id": record["prefect_flow_run_id"]}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[timings["full"]["flow_run_id"]])))
        flow_time = (runs[0].end_time - runs[0].start_time).total_seconds()  # wall, sub-flows included
        tasks = client.read_task_runs(limit=200)
        own = sum(t.total_run_time.total_seconds() for t in tasks if t.state_name == "Completed" and t.start_time
                  and t.end_time and runs[0].start_time <= t.start_time and t.end_time <= runs[0].end_time)
    return {"full_wall_s": timings["full"]["wall_s"], "unchanged_wall_s": timings["unchanged"]["wall_s"],
            "unchanged_status": timings["unchanged"]["status"],
            "unchanged_fraction": timings["unchanged"]["wall_s"] / timings["full"]["wall_s"],
            "flow_run_s": flow_time, "tasks_own_s": own,
            # everything outside the tasks: Prefect's temporary server start, flow/sub-flow engine, state calls
            "overhead_s": timings["full"]["wall_s"] - own}


def markdown(results: dict) -> str:
    t = results.get("training")
    lines = ["# make bench", "", f"machine: {results['machine']}", ""]
    if t:
        lines += ["## Training step (bench profile)", "",
                  f"{t['model_parameters'] / 1e6:.1f}M-parameter Mistral, {t['steps']} steps x batch {t['batch_size']}, "
                  f"median of {t['reps']} on {t['device']}", "",
                  "| | wall s | examples/s | answer tokens/s | tokens/s (non-pad) | RSS growth MiB |", "|---|---|---|---|---|---|"]
        for name in ("ours", "baseline"):
            r = t[name]
            lines.append(f"| {name} | {r['wall_s']:.1f} | {r['examples_per_s']:.2f} | {r['answer_tokens_per_s']:.0f} | "
                         f"{r['tokens_per_s']:.0f} | {t['peak_rss_mib'][name]} |")
        lines += ["", f"**speedup: {t['speedup']:.2f}x** (baseline wall / ours; same examples and steps)", ""]
    if results.get("stages"):
        lines += ["## Stages", "", "| rows | expansion rows/s | GX rows/s | tokenization rows/s | expansion+GX s | peak RSS growth MiB |",
                  "|---|---|---|---|---|---|"]
        for n, r in results["stages"].items():
            lines.append(f"| {r['rows']} | {r['expansion_rows_per_s']:.0f} | {r['validation_rows_per_s']:.0f} | "
                         f"{r['tokenization_rows_per_s']:.0f} | {r['expansion_plus_validation_s']:.1f} | "
                         f"{max(r['peak_rss_mib'].values())} |")
        lines.append("")
    if results.get("orchestration"):
        o = results["orchestration"]
        lines += ["## Orchestration", "", f"- full nightly_retrain: {o['full_wall_s']:.1f} s wall; tasks' own time {o['tasks_own_s']:.1f} s; "
                  f"outside the tasks (server start, engine) {o['overhead_s']:.1f} s",
                  f"- unchanged re-run: {o['unchanged_wall_s']:.1f} s ({o['unchanged_fraction']:.0%} of the full run)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("RSLM_HOME", ".rslm")) / "bench")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--only", default="training,stages,orchestration")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import platform

    import torch

    results = {"machine": f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
                          f"threads {torch.get_num_threads()}"}
    with tempfile.TemporaryDirectory(prefix="rslm-bench-") as tmp:
        work = Path(tmp)
        sections = args.only.split(",")
        if "training" in sections:
            results["training"] = bench_training(args.reps, args.device, work)
        if "stages" in sections:
            results["stages"] = bench_stages([int(s) for s in args.sizes.split(",")], work)
        if "orchestration" in sections:
            results["orchestration"] = bench_orchestration(work)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
