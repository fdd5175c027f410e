"""Hostile CLI overrides and recipe files (hypothesis, fixed example budget).

Every override of a recipe key with a value of any kind (wrong type, out of range, NaN/inf,
astronomically large, unicode, lists, unknown or misspelled keys) must end either in a
config that builds, or in a single-paragraph RecipeError/ValueError that names the culprit
(the key, or the recipe group whose object refused the value). Never another exception.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from toolkit.train.config import RecipeError, compose_recipe
from toolkit.train.trainer import build, instantiate

#: recipes whose model/task/sampler build without data or downloads in well under a second
RECIPES = ["toy2d_cfm", "class2img_cfm", "metaworld_flow_policy", "protein_backbone_se3fm",
           "rigid_trajectory_se3fm", "vae_train"]
GROUPS = ("trainer", "model", "task", "sampler")
EXAMPLES = 40  # per test (hypothesis' example budget; fixed, so CI time is bounded)


def _keys(recipe: str) -> list[str]:
    cfg = compose_recipe(recipe)
    out = []
    for g in GROUPS:
        if g not in cfg:
            continue
        for k, v in OmegaConf.to_container(cfg[g], resolve=True).items():
            if k != "_target_" and not isinstance(v, dict):
                out.append(f"{g}.{k}")
    return sorted(out)


KEYS = {r: _keys(r) for r in RECIPES}

ints = st.one_of(st.integers(-3, 3), st.integers(10**12, 10**30))
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                   st.sampled_from([0.0, -1.0, 1e300, -1e-300]))
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
values = st.one_of(
    ints.map(str), floats.map(repr), texts, st.sampled_from(
        ["true", "false", "null", "[]", "[1,2]", "{}", "nan", "inf", "-inf", "1e999", "'x'",
         "${oops}", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "ümlaut", "日本語", "a b", "=", "[[[", "'"]))


def _outcome(recipe: str, override: str, key: str) -> str:
    try:
        cfg = compose_recipe(recipe, [override])
        instantiate(cfg.trainer, _convert_="all")
        build(cfg, with_data=False)
    except (RecipeError, ValueError, TypeError) as e:
        msg = str(e)
        assert msg and "\n\n" not in msg.strip(), f"not one paragraph: {msg!r}"
        group, leaf = key.split(".")[0], key.rpartition(".")[2]
        assert leaf in msg or group in msg or override in msg, (
            f"{override!r} -> {type(e).__name__} that names neither {leaf!r} nor {group!r}: "
            f"{msg}")
        return "refused"
    return "built"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_for_a_known_key_builds_or_is_refused_clearly(data):
    recipe = data.draw(st.sampled_from(RECIPES))
    key = data.draw(st.sampled_from(KEYS[recipe]))
    value = data.draw(values)
    _outcome(recipe, f"{key}={value}", key)


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True)
@given(recipe=st.sampled_from(RECIPES), junk=st.text(
    st.characters(whitelist_categories=("Ll", "Lu", "Nd"), max_codepoint=0x2FF),
    min_size=1, max_size=10), value=values)
def test_unknown_keys_are_refused_with_the_key_named(recipe, junk, value):
    group = recipe and "trainer"
    key = f"{group}.{junk}x"
    with pytest.raises(RecipeError) as e:
        compose_recipe(recipe, [f"{key}={value}"])
    assert key in str(e.value) or "is not of the form" in str(e.value) or "override" in str(e.value)


@pytest.mark.parametrize("key,value", [
    ("trainer.lr", "nan"), ("trainer.lr", "inf"), ("trainer.ema_decay", "nan"),
    ("trainer.grad_clip", "nan"), ("trainer.min_lr_ratio", "nan"), ("trainer.lr", "1e999"),
])
def test_non_finite_trainer_numbers_are_refused(key, value):
    with pytest.raises((RecipeError, ValueError), match=key.split(".")[1]):
        cfg = compose_recipe("toy2d_cfm", [f"{key}={value}"])
        instantiate(cfg.trainer, _convert_="all")


def test_outcomes_are_mixed():
    """The generators reach both ends: valid values build, invalid ones are refused."""
    assert _outcome("toy2d_cfm", "trainer.max_steps=10", "trainer.max_steps") == "built"
    assert _outcome("toy2d_cfm", "trainer.max_steps=-1", "trainer.max_steps") == "refused"
    assert math.isfinite(1.0)
