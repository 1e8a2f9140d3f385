"""Values transcribed from Intel Neural Compressor 3.7.1 (tag v3.7.1 of
github.com/intel/neural-compressor): the example pruning configs of its docs and of its
PyTorch pruning tests, and the signature and defaults of ``WeightPruningConfig``. Values only
(no INC code); each entry names the file it comes from. tests/test_compat_inc.py checks that
every config loads (or is refused by name) and that the defaults are these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# neural_compressor/config.py: WeightPruningConfig.__init__, in order, with its defaults.
INC_SIGNATURE: list[tuple[str, Any]] = [
    ("pruning_configs", [{}]),
    ("target_sparsity", 0.9),
    ("pruning_type", "snip_momentum"),
    ("pattern", "4x1"),
    ("op_names", []),
    ("excluded_op_names", []),
    ("backend", None),
    ("start_step", 0),
    ("end_step", 0),
    ("pruning_scope", "global"),
    ("pruning_frequency", 1),
    ("min_sparsity_ratio_per_op", 0.0),
    ("max_sparsity_ratio_per_op", 0.98),
    ("sparsity_decay_type", "exp"),
    ("pruning_op_types", ["Conv", "Linear"]),
    ("low_memory_usage", False),
]

# neural_compressor/compression/pruner/utils.py: process_and_check_config's default_config
# (default_global_config, default_local_config and params_default_config together).
INC_PROCESS_DEFAULTS: dict[str, Any] = {
    "target_sparsity": 0.9,
    "pruning_type": "snip_momentum",
    "pattern": "4x1",
    "op_names": [],
    "excluded_op_names": [],
    "start_step": 0,
    "end_step": 0,
    "pruning_scope": "global",
    "pruning_frequency": 1,
    "min_sparsity_ratio_per_op": 0.0,
    "max_sparsity_ratio_per_op": 0.98,
    "sparsity_decay_type": "exp",
    "criterion_type": "snip_momentum",
    "pruning_op_types": ["Conv", "Linear"],
    "low_memory_usage": False,
    "resume_from_pruned_checkpoint": False,
    "reg_type": None,
    "criterion_reduce_type": "mean",
    "parameters": {"reg_coeff": 0.0},
    "reg_coeff": 0.0,
}


@dataclass(frozen=True)
class Example:
    """One INC example: ``WeightPruningConfig(pruning_configs, **kwargs)``, the test model
    it suits (``resnet``: layer1..layer4 with downsample convs; ``conv1d``/``hf_conv1d``: the
    two models of test_conv_pruning.py; ``bert``), the keys refused by name (one per refused
    entry) and the keys named in warnings."""

    name: str
    source: str
    pruning_configs: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    model: str = "resnet"
    refused: tuple[str, ...] = ()
    warned: tuple[str, ...] = ()


BERT_FFN2 = [f"bert.encoder.layer.{i}.output.dense" for i in range(2)]

EXAMPLES: list[Example] = [
    # docs/source/pruning.md, "Training-aware pruning API", step 1 (WeightPruningConfig(configs)).
    Example(
        "docs-training-aware",
        "docs/source/pruning.md",
        [
            {
                "op_names": ["layer1.*"],
                "start_step": 1,
                "end_step": 10000,
                "excluded_op_names": [".*embeddings*"],
                "target_sparsity": 0.9,
                "pruning_frequency": 250,
                "pattern": "4x1",
            },
            {
                "target_sparsity": 0.9,
                "pruning_type": "snip_momentum",
                "pattern": "4x1",
                "op_names": ["layer2.*"],
                "excluded_op_names": ["layer3.*"],
                "start_step": 1,
                "end_step": 10,
                "pruning_scope": "global",
                "pruning_frequency": 1,
                "min_sparsity_ratio_per_op": 0.0,
                "max_sparsity_ratio_per_op": 0.98,
                "sparsity_decay_type": "exp",
                "pruning_op_types": ["Conv", "Linear"],
            },
        ],
    ),
    # docs/source/pruning.md, "Retrain-free Pruning API".
    Example(
        "docs-retrain-free",
        "docs/source/pruning.md",
        [
            {
                "pruning_type": "retrain_free",
                "pruning_scope": "global",
                "op_names": [".fc", ".mlp"],
                "start_step": 1,
                "end_step": 300,
                "excluded_op_names": ["lm_head"],
                "target_sparsity": 0.2,
                "pruning_frequency": 50,
                "pattern": "channelx1",
            }
        ],
        refused=("pruning_type",),
    ),
    # docs/source/pruning.md, "SparseGPT Pruning API".
    Example(
        "docs-sparse-gpt",
        "docs/source/pruning.md",
        [
            {
                "pruning_type": "sparse_gpt",
                "op_names": [".*"],
                "excluded_op_names": ["lm_head", "embed_out"],
                "target_sparsity": 0.5,
                "pattern": "1x1",
            }
        ],
        refused=("pruning_type",),
    ),
    # neural_compressor/config.py, WeightPruningConfig's docstring example (steps from its
    # prune.update_config(start_step=1, end_step=10)).
    Example(
        "config-docstring",
        "neural_compressor/config.py",
        [
            {
                "pruning_scope": "local",
                "target_sparsity": 0.6,
                "op_names": ["query", "key", "value"],
                "pattern": "channelx1",
            },
            {
                "pruning_type": "snip_momentum_progressive",
                "target_sparsity": 0.5,
                "op_names": ["self.attention.dense"],
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        model="bert",
        warned=("pruning_type", "op_names"),
    ),
    # test/pruning_with_pt/pruning_2.x/test_auto_slim.py (parse_auto_slim_config's configs on
    # BERT: the second FFN linear of every layer, channelx1; and INC's head pruning).
    Example(
        "test-auto-slim",
        "test/pruning_with_pt/pruning_2.x/test_auto_slim.py",
        [
            {
                "op_names": BERT_FFN2,
                "pattern": "channelx1",
                "target_sparsity": 0.5,
                "pruning_scope": "local",
            },
            {"pattern": "mha", "target_sparsity": 0.5, "pruning_scope": "local"},
        ],
        {"start_step": 1, "end_step": 25},
        model="bert",
        refused=("pattern",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_conv_pruning.py, test_conv1_prunig.
    Example(
        "test-conv-pruning",
        "test/pruning_with_pt/pruning_2.x/test_conv_pruning.py",
        [
            {
                "op_names": ["conv1.*"],
                "target_sparsity": 0.6,
                "pattern": "channelx1",
                "pruning_type": "snip",
                "pruning_scope": "local",
            },
            {
                "op_names": ["conv2.*"],
                "target_sparsity": 0.5,
                "pattern": "2:4",
                "pruning_scope": "global",
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        model="conv1d",
    ),
    # test/pruning_with_pt/pruning_2.x/test_conv_pruning.py, test_hf_conv1_prunig (same
    # config, on Hugging Face Conv1D layers).
    Example(
        "test-hf-conv-pruning",
        "test/pruning_with_pt/pruning_2.x/test_conv_pruning.py",
        [
            {
                "op_names": ["conv1.*"],
                "target_sparsity": 0.6,
                "pattern": "channelx1",
                "pruning_type": "snip",
                "pruning_scope": "local",
            },
            {
                "op_names": ["conv2.*"],
                "target_sparsity": 0.5,
                "pattern": "2:4",
                "pruning_scope": "global",
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        model="hf_conv1d",
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning.py.
    Example(
        "test-pruning",
        "test/pruning_with_pt/pruning_2.x/test_pruning.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.5,
                "pattern": "8x2",
                "pruning_type": "magnitude_progressive",
                "false_key": "this is to test unsupported keys",
            },
            {"op_names": ["layer2.*"], "target_sparsity": 0.5, "pattern": "2:4"},
            {
                "op_names": ["layer3.*"],
                "target_sparsity": 0.7,
                "pattern": "5x1",
                "pruning_type": "snip_progressive",
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        warned=("pruning_type", "false_key"),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_block.py.
    Example(
        "test-pruning-block",
        "test/pruning_with_pt/pruning_2.x/test_pruning_block.py",
        [
            {
                "op_names": ["encoder_layer_1.mlp*"],
                "target_sparsity": 0.6,
                "pattern": "2xchannel",
                "pruning_type": "block_mask",
                "pruning_scope": "global",
                "criterion_type": "snip_momentum_block",
                "criterion_reduce_type": "mean",
                "pruning_op_types": "Linear",
            },
            {
                "op_names": ["encoder_layer_2.mlp*"],
                "target_sparsity": 0.9,
                "pattern": "32x32",
                "pruning_op_types": "Linear",
                "pruning_type": "block_mask",
                "pruning_scope": "local",
                "criterion_type": "snip_momentum_block",
                "criterion_reduce_type": "sum",
            },
            {
                "op_names": ["encoder_layer_3.mlp*"],
                "target_sparsity": 0.4,
                "pattern": "channelx1",
                "pruning_op_types": "Linear",
                "pruning_type": "retrain_free",
                "pruning_scope": "local",
                "pruning_frequency": 2,
            },
            {
                "op_names": ["encoder_layer_0.mlp*", "conv_proj"],
                "target_sparsity": 0.4,
                "pattern": "channelx2",
                "pruning_op_types": ["Linear", "Conv2d"],
                "pruning_type": "retrain_free",
                "pruning_scope": "global",
                "pruning_frequency": 3,
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        refused=("pruning_type", "pruning_type", "pruning_type", "pruning_type"),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_config.py.
    Example(
        "test-pruning-config",
        "test/pruning_with_pt/pruning_2.x/test_pruning_config.py",
        [
            {
                "op_names": ["layer1.*", "layer2.*"],
                "excluded_op_names": ["downsample.*"],
                "target_sparsity": 0.6,
                "pattern": "channelx1",
                "pruning_type": "snip_progressive",
                "pruning_scope": "local",
                "start_step": 0,
                "end_step": 10,
            },
            {"op_names": ["layer3.*"], "pruning_type": "pattern_lock"},
        ],
        {"pruning_frequency": 2, "target_sparsity": 0.8},
        warned=("pruning_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_criteria.py, test_pruning_criteria.
    Example(
        "test-pruning-criteria",
        "test/pruning_with_pt/pruning_2.x/test_pruning_criteria.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.4,
                "pattern": "8x2",
                "pruning_type": "magnitude_progressive",
                "pruning_scope": "local",
                "sparsity_decay_type": "cube",
            },
            {
                "op_names": ["layer2.*"],
                "target_sparsity": 0.45,
                "pattern": "2:4",
                "pruning_type": "snip",
                "start_step": 6,
                "end_step": 6,
            },
            {
                "op_names": ["layer3.*"],
                "excluded_op_names": ["downsample.*"],
                "target_sparsity": 0.7,
                "pattern": "4x1",
                "pruning_type": "snip_momentum_progressive",
                "pruning_frequency": 4,
                "min_sparsity_ratio_per_op": 0.5,
                "max_sparsity_ratio_per_op": 0.8,
            },
        ],
        {"target_sparsity": 0.8, "sparsity_decay_type": "cube", "start_step": 1, "end_step": 10},
        warned=("pruning_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_criteria.py, test_pruning_criteria_for_ut.
    Example(
        "test-pruning-criteria-for-ut",
        "test/pruning_with_pt/pruning_2.x/test_pruning_criteria.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.4,
                "pattern": "8x2",
                "pruning_type": "magnitude_progressive",
                "pruning_scope": "local",
                "sparsity_decay_type": "cube",
            },
            {
                "op_names": ["layer3.*"],
                "excluded_op_names": ["downsample.*"],
                "target_sparsity": 0.7,
                "pattern": "4x1",
                "pruning_type": "snip_momentum_progressive",
                "pruning_frequency": 4,
                "min_sparsity_ratio_per_op": 0.5,
                "max_sparsity_ratio_per_op": 0.8,
            },
        ],
        {"target_sparsity": 0.8, "sparsity_decay_type": "cube", "start_step": 1, "end_step": 10},
        warned=("pruning_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_patterns.py.
    Example(
        "test-pruning-patterns",
        "test/pruning_with_pt/pruning_2.x/test_pruning_patterns.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.5,
                "pattern": "5:8",
                "pruning_type": "magnitude",
            },
            {"op_names": ["layer2.*"], "pattern": "1xchannel", "pruning_scope": "global"},
            {
                "start_step": 2,
                "end_step": 20,
                "op_names": ["layer3.*"],
                "target_sparsity": 0.666666,
                "pattern": "4x2",
                "pruning_type": "snip_progressive",
                "pruning_frequency": 5,
            },
        ],
        {
            "target_sparsity": 0.8,
            "sparsity_decay_type": "cos",
            "excluded_op_names": ["downsample.*"],
            "pruning_scope": "local",
            "min_sparsity_ratio_per_op": 0.1,
            "start_step": 1,
            "end_step": 10,
        },
        warned=("pruning_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_progressive.py.
    Example(
        "test-pruning-progressive",
        "test/pruning_with_pt/pruning_2.x/test_pruning_progressive.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.75,
                "pattern": "6:8",
                "pruning_type": "magnitude_progressive",
            },
            {"op_names": ["layer2.*"], "pattern": "1xchannel", "pruning_scope": "global"},
            {
                "start_step": 2,
                "end_step": 20,
                "op_names": ["layer3.*"],
                "target_sparsity": 0.666666,
                "pattern": "4x2",
                "pruning_type": "snip_progressive",
                "pruning_frequency": 5,
            },
        ],
        {
            "target_sparsity": 0.8,
            "sparsity_decay_type": "cos",
            "excluded_op_names": ["downsample.*"],
            "pruning_scope": "local",
            "min_sparsity_ratio_per_op": 0.1,
            "start_step": 1,
            "end_step": 10,
        },
        warned=("pruning_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_regs.py.
    Example(
        "test-pruning-regs",
        "test/pruning_with_pt/pruning_2.x/test_pruning_regs.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.5,
                "pattern": "8x2",
                "pruning_type": "magnitude_progressive",
                "false_key": "this is to test unsupported keys",
            },
            {"op_names": ["layer2.*"], "target_sparsity": 0.5, "pattern": "2:4"},
            {
                "op_names": ["layer3.*"],
                "target_sparsity": 0.7,
                "pattern": "5x1",
                "pruning_type": "snip_progressive",
                "reg_type": "group_lasso",
                "reg_coeff": 0.1,
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        refused=("reg_type",),
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_schedulers.py.
    Example(
        "test-pruning-schedulers",
        "test/pruning_with_pt/pruning_2.x/test_pruning_schedulers.py",
        [
            {
                "start_step": 0,
                "end_step": 2,
                "pruning_type": "magnitude",
                "op_names": ["layer1.*"],
                "excluded_op_names": ["layer2.*"],
                "pruning_scope": "global",
                "target_sparsity": 0.5,
                "pattern": "4x1",
            },
            {
                "start_step": 1,
                "end_step": 10,
                "pruning_type": "snip_momentum",
                "pruning_frequency": 2,
                "op_names": ["layer2.*"],
                "pruning_scope": "local",
                "target_sparsity": 0.75,
                "pattern": "32x1",
                "sparsity_decay_type": "exp",
            },
        ],
        {
            "target_sparsity": 0.9,
            "start_step": 0,
            "end_step": 10,
            "pruning_frequency": 1,
            "sparsity_decay_type": "exp",
        },
    ),
    # test/pruning_with_pt/pruning_2.x/test_pruning_types.py (its one active entry).
    Example(
        "test-pruning-types",
        "test/pruning_with_pt/pruning_2.x/test_pruning_types.py",
        [
            {
                "start_step": 0,
                "end_step": 0,
                "pruning_type": "pattern_lock",
                "op_names": ["layer4.*"],
                "pattern": "2:4",
                "pruning_scope": "global",
            }
        ],
        {
            "target_sparsity": 0.9,
            "start_step": 0,
            "end_step": 10,
            "pruning_frequency": 3,
            "sparsity_decay_type": "exp",
        },
    ),
    # test/pruning_with_pt/pruning_2_plus.x/test_pruning.py (run with prepare_pruning).
    Example(
        "test-2plus-pruning",
        "test/pruning_with_pt/pruning_2_plus.x/test_pruning.py",
        [
            {
                "op_names": ["layer1.*"],
                "target_sparsity": 0.6,
                "pattern": "8x2",
                "pruning_type": "magnitude_progressive",
                "false_key": "this is to test unsupported keys",
            },
            {
                "op_names": ["layer2.*"],
                "pruning_type": "snip_momentum",
                "target_sparsity": 0.5,
                "pruning_scope": "local",
                "pattern": "2:4",
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 4},
        warned=("pruning_type", "false_key"),
    ),
    # test/pruning_with_pt/pruning_2_plus.x/test_pruning_block.py.
    Example(
        "test-2plus-pruning-block",
        "test/pruning_with_pt/pruning_2_plus.x/test_pruning_block.py",
        [
            {
                "op_names": ["encoder_layer_1.mlp*"],
                "target_sparsity": 0.95,
                "pattern": "channelx2",
                "pruning_type": "block_mask",
                "pruning_scope": "global",
                "criterion_type": "block_mask",
                "pruning_op_types": "Linear",
            },
            {
                "op_names": ["encoder_layer_2.mlp*"],
                "target_sparsity": 0.5,
                "pattern": "32x32",
                "pruning_op_types": "Linear",
                "pruning_type": "block_mask",
                "pruning_scope": "local",
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        refused=("pruning_type", "pruning_type"),
    ),
    # test/pruning_with_pt/pruning_2_plus.x/test_pruning_retrain_free.py.
    Example(
        "test-2plus-retrain-free",
        "test/pruning_with_pt/pruning_2_plus.x/test_pruning_retrain_free.py",
        [
            {
                "op_names": ["encoder_layer_3.mlp*"],
                "target_sparsity": 0.9,
                "pattern": "channelx1",
                "pruning_op_types": ["Linear"],
                "pruning_type": "retrain_free",
                "pruning_scope": "local",
                "pruning_frequency": 2,
            },
            {
                "op_names": ["encoder_layer_2.mlp*"],
                "target_sparsity": 0.4,
                "pattern": "channelx2",
                "pruning_op_types": ["Linear"],
                "pruning_type": "retrain_free",
                "pruning_scope": "global",
                "pruning_frequency": 3,
            },
            {
                "op_names": ["encoder_layer_0.mlp*", "conv_proj"],
                "target_sparsity": 0.4,
                "pattern": "channelx1",
                "pruning_op_types": ["Linear", "Conv2d"],
                "pruning_type": "retrain_free",
                "pruning_scope": "global",
                "pruning_frequency": 3,
            },
        ],
        {"target_sparsity": 0.8, "start_step": 1, "end_step": 10},
        refused=("pruning_type", "pruning_type", "pruning_type"),
    ),
    # test/pruning_with_pt/pruning_2_plus.x/test_pruning_sparsegpt.py.
    Example(
        "test-2plus-sparsegpt",
        "test/pruning_with_pt/pruning_2_plus.x/test_pruning_sparsegpt.py",
        [
            {
                "op_names": ["5.fc", "5.attn"],
                "target_sparsity": 0.65,
                "pattern": "1x1",
                "pruning_type": "sparse_gpt",
                "pruning_op_types": ["Linear"],
            },
            {
                "op_names": ["7.fc", "7.attn"],
                "target_sparsity": 0.5,
                "pattern": "2:4",
                "pruning_op_types": ["Linear"],
                "pruning_type": "sparse_gpt",
            },
        ],
        {"target_sparsity": 0.5, "start_step": 1, "end_step": 10},
        refused=("pruning_type", "pruning_type"),
    ),
]
