"""DPO on top of a real SFT adapter (tiny profile): the refined adapter prefers chosen over
rejected more than its SFT parent on the pairs it trained on, and saves as safetensors."""
import json

import pytest

from tasks.domain.config import RefineConfig, TrainingConfig

pytestmark = pytest.mark.slow

SFT = TrainingConfig(max_steps=30, learning_rate=1.0e-2, batch_size=8, max_length=320, logging_steps=5,
                     save_steps=30, seed=5)


def test_dpo_raises_the_preference_margin_over_the_sft_parent(tiny_base, small_build, devops_framework, tmp_path):
    from tasks.adapters.model.inference import load_generator
    from tasks.adapters.model.measurement import preference_margins
    from tasks.adapters.model.preference_training import train_dpo
    from tasks.adapters.model.training import train_lora
    from tasks.domain.preferences import build_pairs, preference_accuracy

    train_lora(tiny_base, small_build.train, small_build.eval, SFT, tmp_path / "sft")
    pairs = build_pairs(small_build.train[:48], devops_framework, seed=3)

    def margins(adapter):
        generator = load_generator(tiny_base, adapter, devops_framework.system_prompt, device="cpu")
        return preference_margins(generator, pairs, 16)

    before = margins(tmp_path / "sft")
    logged = []
    summary = train_dpo(tiny_base, tmp_path / "sft", pairs, RefineConfig(max_steps=12, batch_size=8, learning_rate=5.0e-3),
                        SFT, tmp_path / "dpo", sink=lambda metrics, step: logged.append(metrics))
    after = margins(tmp_path / "dpo")
    assert sum(after) / len(after) > sum(before) / len(before) + 1.0, (sum(before), sum(after))
    assert preference_accuracy(pairs, after)["preference/accuracy"] >= preference_accuracy(pairs, before)["preference/accuracy"]
    assert summary["steps"] == 12 and "rewards/accuracies" in summary and "rewards/margins" in summary
    assert any("rewards/margins" in m for m in logged), "TRL's reward figures reached the sink"
    assert (tmp_path / "dpo" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "dpo" / "adapter_config.json").read_text())["r"] == 16
