"""The order a training reads its rows in: each epoch's a function of the data seed and the epoch
alone, so a training resumed from a checkpoint reads the rows an uninterrupted one would.

transformers' `LengthGroupedSampler` for training has no generator: it shuffles from the global
torch RNG when its epoch begins. An uninterrupted run draws epoch 1's order from the RNG as epoch 0
left it (dropout included). A run resumed inside epoch 1 draws it before the Trainer restores the
checkpoint's RNG, from the freshly seeded state, and so reads epoch 0's order again while skipping
epoch 1's first batches: measured, the resumed adapter was 1.4e-3 off. The plain random sampler is
already seeded per epoch (accelerate's `SeedableRandomSampler`); this gives the length-grouped one
the same rule. Epoch 0's order changed with it: something draws from the global RNG between the
Trainer's `set_seed(seed)` and the first shuffle, so a generator seeded with `data_seed` does not
reproduce the old order (measured: different first batches; the default model's figures moved)."""
from __future__ import annotations


def epoch_seeded(trainer_class):
    """`trainer_class` (a transformers Trainer or a TRL trainer) with its length-grouped training
    sampler seeded by `data_seed + epoch`."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            super().__init__(batch_size, lengths=lengths, generator=torch.Generator().manual_seed(seed))
            self.seed = seed

        def set_epoch(self, epoch: int) -> None:
            # the Trainer calls this at the start of every epoch, on a resumed run too (through
            # accelerate's skip-batches wrapper), before the epoch's order is drawn
            self.generator.manual_seed(self.seed + epoch)

    class EpochSeeded(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            sampler = super()._get_train_sampler(train_dataset)
            if type(sampler) is not LengthGroupedSampler or sampler.generator is not None:
                return sampler
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return EpochSeededLengthGroupedSampler(sampler.batch_size, sampler.lengths, seed)

    EpochSeeded.__name__ = EpochSeeded.__qualname__ = f"EpochSeeded{trainer_class.__name__}"
    return EpochSeeded
