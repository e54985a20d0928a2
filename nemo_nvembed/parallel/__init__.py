"""Process groups, megatron parallel state, TP layouts and CPU stand-ins for CUDA-only pieces."""

DEFAULT_SEED = 1234  # the one default seed: model.seed, train.data.seed and distributed.initialize take it
