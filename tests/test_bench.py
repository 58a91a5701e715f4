"""`make bench` keeps working: its data scaling is valid and its stage section runs end to end.
(The benchmark's numbers are reported, never asserted: speed targets live in `make bench`.)"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))


def test_scaled_framework_multiplies_distinct_rows():
    from tasks.domain.blueprint import OfflineBlueprintGenerator
    from tasks.domain.expansion import expand_blueprint

    import bench

    one, three = (len(expand_blueprint(OfflineBlueprintGenerator().generate(bench.scaled_framework(k)))) for k in (1, 3))
    assert three >= 2.5 * one, (one, three)


@pytest.mark.slow
def test_stage_benchmark_runs_and_reports(tmp_path):
    import bench

    results = bench.bench_stages([300], tmp_path)
    stage = results["300"]
    assert stage["rows"] == 300 and stage["validation_passed"]
    assert min(stage["expansion_rows_per_s"], stage["validation_rows_per_s"], stage["tokenization_rows_per_s"]) > 0
    assert "| 300 |" in bench.markdown({"machine": "test", "stages": results})


def test_baseline_counts_answer_tokens_after_the_last_inst_close():
    import torch

    from baseline_sft import AnswerTokenCounter

    close, pad = 9, 0
    batch = {"input_ids": torch.tensor([[1, 9, 5, 9, 7, 7, 2], [1, 4, 9, 3, 2, pad, pad]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])}
    counter = AnswerTokenCounter(lambda features: batch, close)
    counter([])
    # row 1: after the second [/INST]: 7 7 </s>; row 2: 3 </s> (padding is not an answer token)
    assert (counter.answer_tokens, counter.tokens, counter.padded_tokens) == (5, 12, 14)

    # ChatML: the answer follows the last "<|im_start|>assistant\n", three ids here (8 6 4)
    chatml = {"input_ids": torch.tensor([[8, 6, 4, 5, 8, 6, 4, 7, 7, 3, pad]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0]])}
    counter = AnswerTokenCounter(lambda features: chatml, [8, 6, 4])
    counter([])
    assert counter.answer_tokens == 3, "7 7 <|im_end|> after the second header; padding excluded"


def test_mfu_uses_the_device_peak_and_four_flops_per_parameter_per_token():
    from large_model import model_flops_utilisation, peak_tflops_for

    assert peak_tflops_for("NVIDIA H100 PCIe") == 756.0 and peak_tflops_for("NVIDIA H100 80GB HBM3") == 989.4
    assert peak_tflops_for("Quadro P1000") is None
    assert model_flops_utilisation(7_000_000_000, 10_000, 989.4) == pytest.approx(4 * 7e9 * 1e4 / 989.4e12)
    assert model_flops_utilisation(7_000_000_000, 10_000, None) is None


@pytest.mark.slow
def test_large_model_section_runs_our_step_on_a_model_built_from_shapes(tmp_path):
    """The CUDA section's code path, on the CPU with small shapes: the same code runs the 7B shapes
    with `--device cuda`."""
    from tasks.adapters.model.base_models import ensure_tiny_base
    from tasks.adapters.ops.config_files import load_profile
    from tasks.domain.records import training_corpus

    import bench
    from large_model import bench_large_model, large_model_markdown

    _, build = bench.rows_for(300)
    base = ensure_tiny_base(load_profile("tiny").tiny, training_corpus(build.train), tmp_path / "models")
    h, inter, layers, heads, kv, head_dim, vocab = 64, 128, 2, 4, 2, 16, 1024
    shapes = {"hidden_size": h, "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "head_dim": head_dim, "vocab_size": vocab, "max_position_embeddings": 1024}
    result = bench_large_model(base, build.train, "cpu", tmp_path, shapes, steps=2, warmup_steps=1, batch_size=4,
                               peak_tflops=1.0)
    per_layer = h * heads * head_dim * 2 + h * kv * head_dim * 2 + 3 * h * inter + 2 * h  # q,o + k,v + mlp + norms
    assert result["parameters"] == layers * per_layer + h + vocab * h, "matmul parameters: all but the embedding"
    assert result["tokens_per_s"] > 0 and 0 < result["mfu"] < 1
    assert result["steps_timed"] == 2 and result["peak_memory_gib"] is None
    assert "| tokens/s |" in "\n".join(large_model_markdown(result))


@pytest.mark.slow
def test_orchestration_benchmark_separates_task_time_from_overhead(prefect_harness, rslm_home, tmp_path):
    import bench

    quick = {"profile": "tiny", "dataset.max_samples": 200, "training_overrides": {"max_steps": 4, "save_steps": 4},
             "evaluation.max_generations": 8, "evaluation.consistency_groups": 2}
    result = bench.bench_orchestration(tmp_path, overrides=quick)
    assert (result["full_status"], result["unchanged_status"]) == ("succeeded", "unchanged")
    assert result["task_runs"] >= 8, "every stage's task runs are attributed to the full run"
    assert 0 < result["tasks_own_s"] < result["full_wall_s"] and result["overhead_s"] > 0
    assert 0 < result["unchanged_fraction"] < 1
    assert result["unchanged_tasks_own_s"] < result["tasks_own_s"], "the re-run trains nothing"
    assert "unchanged re-run (unchanged)" in bench.markdown({"machine": "test", "orchestration": result})
