"""DPShardedEncoder on 2 real gloo processes equals a plain single-process encode."""
import torch

from dist_utils import run_distributed
from nemo_nvembed.eval.sharded_encode import DPShardedEncoder


class FakeModel:
    """Deterministic text -> vector, records what it was asked to encode."""

    def __init__(self):
        self.seen = []

    def encode(self, texts, instruction=None, batch_size=32, precision="fp32", progress=False):
        self.seen += texts
        rows = [[float(len(t)), float(sum(map(ord, t)) % 97), float(len(instruction or ""))] for t in texts]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(texts), 3)


TEXTS = [f"text {'x' * (i * 7 % 13)} {i}" for i in range(11)]


def _sharded(rank, world_size):
    model = FakeModel()
    out = DPShardedEncoder(model, rank, world_size).encode(TEXTS, instruction="find", batch_size=4)
    return out, len(model.seen)


def test_sharded_encode_matches_single_process():
    reference = FakeModel().encode(TEXTS, instruction="find")
    results = run_distributed(_sharded, 2)
    for out, n_seen in results:
        assert torch.equal(out, reference)
    assert sorted(n for _, n in results) == [5, 6]  # each rank encoded its share only
