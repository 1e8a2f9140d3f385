"""Global masks over torch.distributed ranks (gloo, CPU) equal a single process's masks.

Each test spawns real processes (2 and 4) that initialise a gloo process group, build the
same model from a seed, take their share of it (whole layers, or row shards of every
weight), compute masks with prunekit.distributed.global_masks, and compare them with the
masks one process computes on the whole model.
"""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import prunekit as pk
from prunekit.distributed import global_masks


def build_model() -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    shapes = [(64, 32), (128, 64), (32, 128), (64, 64), (16, 64)]
    return {f"fc{i}": nn.Linear(inp, out, bias=False) for i, (out, inp) in enumerate(shapes)}


def scores_of(modules: dict[str, nn.Module], ties: bool) -> dict[str, torch.Tensor]:
    scores = {n: m.weight.detach().abs() for n, m in modules.items()}
    if ties:  # few distinct values: the tie rule decides many blocks
        scores = {n: (s * 40).round() for n, s in scores.items()}
    return scores


CASES = [
    {"pattern": "1x1", "target_sparsity": 0.7},
    {"pattern": "4x1", "target_sparsity": 0.6, "max_sparsity_ratio_per_op": 0.75},
    {"pattern": "channelx1", "target_sparsity": 0.5},
    {"pattern": "1x1", "target_sparsity": 0.8, "min_sparsity_ratio_per_op": 0.3},
    # N:M at its default target, N/M: every op at its (group-scaled) upper cap. The caps are
    # the pattern's own, the same as get_masks's (a copy of the cap rule once made this fail).
    {"pattern": "2:4"},
]


def worker(rank: int, world: int, init_file: str, layout: str, result_dir: str) -> None:
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
        )
        full = build_model()
        order = list(full)
        for case_index, config in enumerate(CASES):
            for ties in (False, True):
                config = {**config, "pruning_scope": "global"}
                full_scores = scores_of(full, ties)
                target = pk.load_config(config).target_sparsity
                expected = pk.get_pattern(config, full).get_masks(full_scores, target)
                if layout == "layers":
                    mine = {n: m for i, (n, m) in enumerate(full.items()) if i % world == rank}
                    shards = None
                    local_scores = {n: full_scores[n] for n in mine}
                else:
                    mine, shards, local_scores = {}, {}, {}
                    for name, module in full.items():
                        rows = module.weight.shape[0]
                        step = rows // world
                        first = rank * step
                        shard = nn.Linear(module.in_features, step, bias=False)
                        with torch.no_grad():
                            shard.weight.copy_(module.weight[first : first + step])
                        mine[name] = shard
                        shards[name] = (first, rows)
                        local_scores[name] = full_scores[name][first : first + step]
                pattern = pk.get_pattern(config, mine)
                refusal = {"channelx1": "span every row", "2:4": "supported for NxM"}
                if shards and config["pattern"] in refusal:
                    try:
                        global_masks(pattern, local_scores, target, op_order=order, shards=shards)
                    except pk.PrunekitError as error:
                        assert refusal[config["pattern"]] in str(error)
                        continue
                    raise AssertionError("a pattern without row-aligned blocks must fail")
                got = global_masks(pattern, local_scores, target, op_order=order, shards=shards)
                for name, mask in got.items():
                    if shards:
                        first, _ = shards[name]
                        want = expected[name][first : first + mask.shape[0]]
                    else:
                        want = expected[name]
                    assert torch.equal(mask, want), (case_index, ties, name, rank)
        Path(result_dir, f"ok-{rank}").write_text("ok")
    except Exception:
        Path(result_dir, f"error-{rank}").write_text(traceback.format_exc())
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("layout", ["layers", "shards"])
def test_distributed_masks_equal_single_process(world: int, layout: str, tmp_path: Path) -> None:
    init_file = tempfile.mktemp(dir=tmp_path)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.spawn(worker, args=(world, init_file, layout, str(tmp_path)), nprocs=world, join=True)
    except mp.ProcessRaisedException:
        errors = "\n".join(p.read_text() for p in tmp_path.glob("error-*"))
        pytest.fail(f"a rank failed:\n{errors}")
    assert sorted(p.name for p in tmp_path.glob("ok-*")) == [f"ok-{r}" for r in range(world)]


def test_refuses_local_scope_and_unaligned_shards() -> None:
    pattern = pk.get_pattern({"pattern": "1x1", "pruning_scope": "local"}, build_model())
    with pytest.raises(pk.PrunekitError, match="pruning_scope 'global'"):
        global_masks(pattern, {}, 0.5, op_order=[])
