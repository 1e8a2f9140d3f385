"""Criteria: exact formulas on hand-made tensors, purity, seeded randomness, running state,
gradient errors, registration with metadata, and a docs section per built-in criterion."""

from __future__ import annotations

import inspect
import re
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

import prunekit as pk
from prunekit.plugins import PluginHost, default_host
from prunekit.training import criteria
from prunekit.training.calibrated import CALIBRATION_CRITERIA
from prunekit.training.criteria import BUILTIN_CRITERIA, Criterion, criterion

ROOT = Path(__file__).resolve().parents[1]

# name -> (needs_grad, stateful)
METADATA = {
    "magnitude": (False, False),
    "l2": (False, False),
    "random": (False, False),
    "gradient": (True, False),
    "snip": (True, False),
    "snip_momentum": (True, True),
    "taylor": (True, False),
    "movement": (True, True),
}
GRADIENT_CRITERIA = [name for name, (needs_grad, _) in METADATA.items() if needs_grad]
STATEFUL_CRITERIA = [name for name, (_, stateful) in METADATA.items() if stateful]

# A hand-made weight and gradient; w*g = [[0.5, -2.0], [-1.0, 0.75]].
W = [[1.0, -2.0], [0.5, 3.0]]
G = [[0.5, 1.0], [-2.0, 0.25]]
S = [[1.0, 0.0], [2.0, -1.0]]  # a previous state

EXPECTED = {
    "magnitude": [[1.0, 2.0], [0.5, 3.0]],
    "l2": [[1.0, 4.0], [0.25, 9.0]],
    "gradient": [[0.5, 1.0], [2.0, 0.25]],
    "snip": [[0.5, 2.0], [1.0, 0.75]],
    "snip_momentum": [[0.5, 2.0], [1.0, 0.75]],  # from zero state
    "taylor": [[0.25, 4.0], [1.0, 0.5625]],
    "movement": [[-0.5, 2.0], [1.0, -0.75]],  # from zero state
}
EXPECTED_FROM_STATE = {
    "snip_momentum": [[0.9 + 0.5, 2.0], [1.8 + 1.0, -0.9 + 0.75]],
    "movement": [[1.0 - 0.5, 2.0], [2.0 + 1.0, -1.0 - 0.75]],
}


def call(
    name: str,
    weight: Tensor,
    grad: Tensor | None = None,
    state: Tensor | None = None,
    seed: int = 0,
) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return BUILTIN_CRITERIA[name](weight, grad=grad, state=state, generator=generator)


# -- formulas ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_formula_on_a_hand_made_tensor(name: str) -> None:
    scores = call(name, torch.tensor(W), torch.tensor(G))
    torch.testing.assert_close(scores, torch.tensor(EXPECTED[name]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", STATEFUL_CRITERIA)
def test_formula_from_a_previous_state(name: str) -> None:
    scores = call(name, torch.tensor(W), torch.tensor(G), torch.tensor(S))
    torch.testing.assert_close(scores, torch.tensor(EXPECTED_FROM_STATE[name]))


def test_snip_momentum_uses_incs_coefficients() -> None:
    assert (criteria.SNIP_MOMENTUM_ALPHA, criteria.SNIP_MOMENTUM_BETA) == (0.9, 1.0)


@pytest.mark.parametrize("name", STATEFUL_CRITERIA)
def test_no_state_is_a_zero_state(name: str) -> None:
    w, g = torch.tensor(W), torch.tensor(G)
    assert torch.equal(call(name, w, g), call(name, w, g, torch.zeros(2, 2)))


def test_integer_weights_score_as_float() -> None:
    scores = criteria.magnitude(torch.tensor([[-2, 1]]))
    assert scores.dtype == torch.float32 and scores.tolist() == [[2.0, 1.0]]


def test_movement_scores_no_negative_zero() -> None:
    scores = criteria.movement(torch.tensor([0.0, 1.0, -0.0]), grad=torch.tensor([1.0, 0.0, 1.0]))
    assert not torch.signbit(scores).any()


# -- running state over steps -----------------------------------------------------------------
def steps() -> list[tuple[Tensor, Tensor]]:
    """Three steps of (weight, grad), as training would produce them."""
    return [
        (torch.tensor([[1.0, -2.0], [0.5, 3.0]]), torch.tensor([[0.5, 1.0], [-2.0, 0.25]])),
        (torch.tensor([[0.9, -2.1], [0.7, 2.9]]), torch.tensor([[-1.0, 0.5], [1.5, 0.0]])),
        (torch.tensor([[1.1, -2.2], [0.6, 2.8]]), torch.tensor([[0.25, -0.5], [2.0, -1.0]])),
    ]


@pytest.mark.parametrize(
    ("name", "closed_form"),
    [
        # INC: s_t = 0.9 s_{t-1} + 1.0 |w_t g_t|, s_0 = 0
        (
            "snip_momentum",
            lambda p: 0.9**2 * p[0].abs() + 0.9 * p[1].abs() + p[2].abs(),
        ),
        # Sanh et al.: S = -sum_t w_t g_t
        ("movement", lambda p: -(p[0] + p[1] + p[2])),
    ],
)
def test_three_steps_equal_the_closed_form(
    name: str, closed_form: Callable[[list[Tensor]], Tensor]
) -> None:
    state = None
    for weight, grad in steps():
        state = call(name, weight, grad, state)
    products = [w * g for w, g in steps()]
    assert state is not None
    torch.testing.assert_close(state, closed_form(products))


# -- purity: inputs unchanged, outputs new and detached --------------------------------------
@pytest.mark.parametrize("name", list(METADATA))
def test_pure_detached_new_tensor_shaped_like_weight(name: str) -> None:
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    grad = torch.randn(4, 3, 3, 3, requires_grad=True)  # as with backward(create_graph=True)
    state = torch.randn(4, 3, 3, 3)
    before = [t.detach().clone() for t in (weight, grad, state)]
    scores = call(name, weight, grad, state)
    assert scores.shape == weight.shape and scores.is_floating_point()
    assert not scores.requires_grad and scores.grad_fn is None
    for given, saved in zip((weight, grad, state), before, strict=True):
        assert torch.equal(given.detach(), saved)
        assert scores.untyped_storage().data_ptr() != given.untyped_storage().data_ptr()
    assert weight.grad is None  # nothing was back-propagated either


# -- random -----------------------------------------------------------------------------------
def test_random_is_uniform_and_reproducible_per_seed() -> None:
    weight = torch.randn(8, 16)
    first, again = call("random", weight, seed=3), call("random", weight, seed=3)
    assert torch.equal(first, again)
    assert not torch.equal(first, call("random", weight, seed=4))
    assert first.shape == weight.shape and first.dtype == torch.float32
    assert bool((first >= 0).all() and (first < 1).all())


def test_random_ignores_the_weight_values_and_advances_the_generator() -> None:
    generator = torch.Generator().manual_seed(7)
    one = criteria.random(torch.zeros(5, 5), generator=generator)
    two = criteria.random(torch.zeros(5, 5), generator=generator)
    assert not torch.equal(one, two)  # a shared generator moves on
    assert torch.equal(one, call("random", torch.randn(5, 5), seed=7))


def test_random_without_a_generator_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"'random'.*generator=None"):
        criteria.random(torch.ones(2, 2))


# -- gradient errors --------------------------------------------------------------------------
@pytest.mark.parametrize("name", GRADIENT_CRITERIA)
def test_missing_gradient_names_the_criterion_and_the_pruner(name: str) -> None:
    with pytest.raises(ValueError, match=rf"'{name}'.*grad=None.*Pruner.*after backward\(\)"):
        BUILTIN_CRITERIA[name](torch.ones(2, 3))


@pytest.mark.parametrize("name", GRADIENT_CRITERIA)
def test_misshaped_gradient_names_both_shapes(name: str) -> None:
    message = rf"'{name}'.*grad shape \(3, 2\).*weight shape \(2, 3\)"
    with pytest.raises(ValueError, match=message):
        BUILTIN_CRITERIA[name](torch.ones(2, 3), grad=torch.ones(3, 2))


@pytest.mark.parametrize("name", STATEFUL_CRITERIA)
def test_misshaped_state_names_both_shapes(name: str) -> None:
    message = rf"'{name}'.*state shape \(6,\).*weight shape \(2, 3\)"
    with pytest.raises(ValueError, match=message):
        BUILTIN_CRITERIA[name](torch.ones(2, 3), grad=torch.ones(2, 3), state=torch.ones(6))


# -- registration and metadata ----------------------------------------------------------------
def test_every_builtin_is_registered_by_prunekit_with_its_metadata() -> None:
    builtins = {e.name for e in default_host().criteria.entries() if e.builtin}
    assert builtins - set(CALIBRATION_CRITERIA) == set(METADATA) == set(BUILTIN_CRITERIA)
    assert set(CALIBRATION_CRITERIA) <= builtins  # wanda, sparsegpt: tests/test_calibration.py
    for name, (needs_grad, stateful) in METADATA.items():
        fn = pk.CRITERIA[name]
        assert fn is getattr(criteria, name) is BUILTIN_CRITERIA[name]
        entry = pk.CRITERIA.entry(name)
        assert entry.owner == "prunekit" and entry.builtin
        assert isinstance(fn, Criterion)
        assert (fn.needs_grad, fn.stateful) == (needs_grad, stateful), name


@pytest.mark.parametrize("name", list(METADATA))
def test_uniform_signature_and_a_formula_first_docstring_line(name: str) -> None:
    fn = BUILTIN_CRITERIA[name]
    params = inspect.signature(fn).parameters
    assert list(params) == ["weight", "grad", "state", "generator"]
    assert all(params[p].kind is inspect.Parameter.KEYWORD_ONLY for p in list(params)[1:])
    assert all(params[p].default is None for p in list(params)[1:])
    doc = inspect.getdoc(fn) or ""
    description = pk.CRITERIA.entry(name).description
    assert description == doc.splitlines()[0]
    assert ": " in description  # "<formula>: <meaning>"
    assert "Source:" in doc


def test_the_decorator_works_bare_and_with_arguments() -> None:
    @criterion
    def plain(weight: Tensor, **context: object) -> Tensor:
        return weight.detach().abs()

    @criterion(needs_grad=True, stateful=True)
    def fancy(weight: Tensor, **context: object) -> Tensor:
        return weight.detach().abs()

    assert (plain.needs_grad, plain.stateful) == (False, False)
    assert (fancy.needs_grad, fancy.stateful) == (True, True)
    assert isinstance(plain, Criterion) and not isinstance(lambda w: w, Criterion)


# -- docs -------------------------------------------------------------------------------------
def doc_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "criteria.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_builtin_criterion_has_a_docs_section_with_its_formula() -> None:
    sections = doc_sections()
    for entry in default_host().criteria.entries():
        if not entry.builtin:
            continue
        assert entry.name in sections, f"docs/criteria.md has no '## {entry.name}' section"
        formula = entry.description.split(": ", 1)[0]
        assert formula in sections[entry.name], (entry.name, formula)


def test_the_docs_plugin_example_registers_through_the_hook(tmp_path: Path) -> None:
    code = doc_sections()["Writing a criterion plugin"].split("```python")[1].split("```")[0]
    plugin = types.ModuleType("criterion_doc_plugin")
    exec(compile(code, "docs/criteria.md", "exec"), plugin.__dict__)
    host = PluginHost(metadata_path=[str(tmp_path)])
    record = host.add_plugin(plugin, name="criterion-doc-plugin")
    assert record.registered["criteria"] == ["grad_weighted"]
    fn = host.criteria.resolve("grad_weighted").obj
    assert isinstance(fn, Criterion) and fn.needs_grad and not fn.stateful
    scores = fn(torch.tensor([4.0, -1.0]), grad=torch.tensor([1.0, 4.0]))
    assert scores.tolist() == [4.0, 2.0]
