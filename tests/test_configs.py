"""Every YAML under configs/ loads into its typed model; unknown keys are errors naming the file."""
import pytest
from pydantic import ValidationError

from tasks.adapters.ops.config_files import load_framework, load_model, load_pipeline_config, load_profile
from tasks.domain.config import (
    HeldOutSet,
    ModelProfile,
    PipelineConfig,
    ProbeSet,
    StepProbeSet,
    apply_overrides,
    effective_training,
)
from tasks.domain.errors import ConfigError
from tasks.domain.framework import Framework

from conftest import REPO

YAMLS = sorted(p.relative_to(REPO) for p in (REPO / "configs").rglob("*.yaml"))


def model_for(path):
    if path.parts[1] == "frameworks":
        return Framework
    if path.parts[1] == "profiles":
        return ModelProfile
    if path.parts[1] == "probes":
        return (HeldOutSet if "heldout" in path.parts
                else StepProbeSet if {"steps", "steps-dev"} & set(path.parts) else ProbeSet)
    return PipelineConfig


@pytest.mark.parametrize("path", YAMLS, ids=str)
def test_every_shipped_yaml_loads(path):
    assert load_model(model_for(path), REPO / path)


def test_every_heldout_set_is_named_after_its_domain():
    for path in (REPO / "configs/probes/heldout").glob("*.yaml"):
        assert load_model(HeldOutSet, path).domain == path.stem


@pytest.mark.parametrize("path", YAMLS, ids=str)
def test_every_config_opens_with_a_comment(path):
    """House style asks for a comment on every key; this checks only that each file says what it is."""
    text = (REPO / path).read_text()
    assert text.lstrip().startswith("#"), "the file opens with a comment saying what it is"


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "pipeline.yaml"
    bad.write_text("profile: tiny\ndataset:\n  eval_fractoin: 0.2\n")
    with pytest.raises(ConfigError) as error:
        load_pipeline_config(bad)
    assert "pipeline.yaml" in str(error.value) and "eval_fractoin" in str(error.value)


def test_lora_defaults_are_the_mission_values():
    for name in ["tiny", "mistral-7b-instruct"]:
        lora = load_profile(name).training.lora
        assert (lora.r, lora.alpha, lora.dropout) == (16, 32, 0.05)


def test_overrides_reach_nested_training_settings():
    config = load_pipeline_config(overrides={"training_overrides": {"max_steps": 3, "lora.r": 8}})
    training = effective_training(load_profile("tiny"), config)
    assert training.max_steps == 3 and training.lora.r == 8 and training.lora.alpha == 32
    with pytest.raises(ValidationError, match="max_stpes"):
        effective_training(load_profile("tiny"), config.model_copy(update={"training_overrides": {"max_stpes": 1}}))


def test_a_profile_sets_its_recipe_per_domain_and_the_pipeline_overrides_still_win():
    """SmolLM2 trains the 61-pattern DevOps framework longer than the small ones (memorised at 72
    steps); a run's spec reads its own framework's domain; CLI overrides beat both."""
    from flows.resolution import resolve_pipeline

    profile, config = load_profile("smollm2-135m"), load_pipeline_config()
    assert effective_training(profile, config, "devops").max_steps == profile.training.max_steps == 72
    assert [effective_training(profile, config, d).max_steps for d in ("cs", "finance", "physics")] == [48, 48, 24]
    assert effective_training(profile, config, "custom").max_steps == 72, "a domain without a recipe: the profile's"
    forced = config.model_copy(update={"training_overrides": {"max_steps": 5}})
    assert effective_training(profile, forced, "cs").max_steps == 5
    spec = resolve_pipeline(load_pipeline_config(overrides={"framework": "configs/frameworks/cs.yaml"}))
    assert spec.framework.domain == "cs" and spec.training.max_steps == 48
    with pytest.raises(ValidationError, match="max_stpes"):
        effective_training(profile.model_copy(update={"domain_training": {"cs": {"max_stpes": 1}}}), config, "cs")


def test_apply_overrides_does_not_mutate_input():
    data = {"a": {"b": 1}}
    assert apply_overrides(data, {"a.b": 2}) == {"a": {"b": 2}}
    assert data == {"a": {"b": 1}}


def test_framework_yaml_error_is_one_clear_line(tmp_path):
    bad = tmp_path / "f.yaml"
    bad.write_text("domain: x\n  bad indent: [\n")
    with pytest.raises(ConfigError, match="f.yaml: invalid YAML"):
        load_framework(bad)


def test_refine_is_the_profiles_choice_and_a_run_can_switch_it_on():
    """`rslm pipeline --refine` sets refine_overrides.enabled over the profile's refine section;
    a bad override fails when the spec is resolved, before anything runs."""
    from tasks.adapters.ops.config_files import resolve_run

    profile = load_profile("smollm2-135m")
    assert profile.refine.enabled is False and profile.refine.on_policy_rows > 0
    spec = resolve_run(load_pipeline_config(overrides={"refine_overrides.enabled": True}))
    assert spec.refine.enabled and spec.refine.learning_rate == profile.refine.learning_rate
    with pytest.raises(ConfigError, match=r"refine \(smollm2-135m profile \+ refine_overrides\): loss_type"):
        resolve_run(load_pipeline_config(overrides={"refine_overrides": {"loss_type": "bogus"}}))


def test_reward_kinds_name_only_rule_based_corruptions():
    """`on_policy` steps come from a registered model, not a rule: listed as a kind, it would fail
    deep in the step builder, so the profile is refused with the setting that does ask for them."""
    from tasks.domain.config import RewardConfig

    with pytest.raises(ValueError, match=r"\['on_policy'\] are not rule-based corruptions.*reward.on_policy_rows"):
        RewardConfig(kinds=["false_effect", "on_policy"])
    assert RewardConfig(kinds=["false_effect"], on_policy_rows=8).on_policy_rows == 8
