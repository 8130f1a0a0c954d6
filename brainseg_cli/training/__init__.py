"""Training: the fit loop, validation, checkpoints, optimisers and schedules, data-parallel runs.

Modules: :mod:`.checkpoint` (the one checkpoint reader and writer), :mod:`.config` (``TrainConfig``),
:mod:`.splits` (validation cases and K-fold splits), :mod:`.optim` (optimiser presets and learning-rate
schedules), :mod:`.validation` (sliding-window validation and the post-processing decision),
:mod:`.logging` (``metrics.csv`` and TensorBoard), :mod:`.fit` (the loop), :mod:`.distributed`
(DDP), :mod:`.pretrain` (dataset -> trained checkpoint) and :mod:`.transfer` (fine-tuning helpers).
"""
