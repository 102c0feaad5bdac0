"""The LightGBM text model check the operator runs instead of `import lightgbm`, held against
LightGBM's own loader on real models and on broken ones."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import lightgbm
import pytest

from devstack.demo_model import DemoModel
from model_store.layout import MODEL_NATIVE
from model_store.native_model import MalformedModel, check_model_text


def _text(demo: DemoModel) -> str:
    return demo.files[MODEL_NATIVE].decode()


# Each text is loaded in a forked child: LightGBM aborts the whole process on some broken models.
_LOADS = """
import json, os, sys
import lightgbm
answers = []
for text in json.load(sys.stdin):
    pid = os.fork()
    if pid == 0:
        quiet = os.open(os.devnull, os.O_WRONLY)
        os.dup2(quiet, 1)  # LightGBM prints its complaints (and bits of the broken model)
        os.dup2(quiet, 2)
        try:
            lightgbm.Booster(model_str=text)
        except lightgbm.basic.LightGBMError:
            os._exit(1)
        os._exit(0)
    answers.append(os.waitpid(pid, 0)[1] == 0)
print(json.dumps(answers))
"""


def _lightgbm_loads(texts: list[str]) -> list[bool]:
    """Whether LightGBM loads each text (one process for them all: importing LightGBM is slow)."""
    done = subprocess.run(
        [sys.executable, "-c", _LOADS],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
    )
    return [bool(answer) for answer in json.loads(done.stdout)]


def test_a_trained_model_passes_with_its_feature_count(demo_v1: DemoModel) -> None:
    text = _text(demo_v1)
    booster = lightgbm.Booster(model_str=text)
    model = check_model_text(text, booster.num_feature())
    assert len(model.trees) == booster.num_trees()
    with pytest.raises(MalformedModel, match=f"takes {booster.num_feature()} features, not 3"):
        check_model_text(text, 3)


def _first_tree_line(key: str, new: Callable[[str], str]) -> Callable[[str], str]:
    """Replace the value of `key` in the first tree."""

    def change(text: str) -> str:
        head, tree = text.split("\nTree=0\n", 1)
        lines = tree.split("\n")
        at = next(i for i, line in enumerate(lines) if line.startswith(key + "="))
        lines[at] = f"{key}={new(lines[at].split('=', 1)[1])}"
        return head + "\nTree=0\n" + "\n".join(lines)

    return change


def _header_line(key: str, new: str | None) -> Callable[[str], str]:
    def change(text: str) -> str:
        head, rest = text.split("\nTree=", 1)
        lines = [
            line if not line.startswith(key + "=") else (f"{key}={new}" if new is not None else "")
            for line in head.split("\n")
        ]
        return "\n".join(lines) + "\nTree=" + rest

    return change


BROKEN = {
    "no trees": (lambda t: t.split("\nTree=", 1)[0], "no trees"),
    "not a model": (lambda t: "tree\nversion=v4\nnot a model at all\n", "no trees"),
    "no num_class": (_header_line("num_class", None), "lacks num_class"),
    "no feature_names": (_header_line("feature_names", None), "lacks feature_names"),
    "max_feature_idx not a number": (_header_line("max_feature_idx", "many"), "not a whole number"),
    "a leaf value short": (_first_tree_line("leaf_value", lambda v: v.rsplit(" ", 1)[0]), "leaf_value has"),
    "a split on a feature it lacks": (_first_tree_line("split_feature", lambda v: "999 " + v.split(" ", 1)[1]),
                                      "feature 999"),
    "a child outside the tree": (_first_tree_line("left_child", lambda v: "77 " + v.split(" ", 1)[1]),
                                 "neither a node nor a leaf"),
    "a threshold that is no number": (_first_tree_line("threshold", lambda v: "x " + v.split(" ", 1)[1]),
                                      "not a number"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_model_is_refused(demo_v1: DemoModel, case: str) -> None:
    change, message = BROKEN[case]
    with pytest.raises(MalformedModel, match=message):
        check_model_text(change(_text(demo_v1)))


def test_lightgbm_refuses_or_dies_of_every_model_the_check_refuses(demo_v1: DemoModel) -> None:
    texts = [_text(demo_v1)] + [BROKEN[case][0](_text(demo_v1)) for case in sorted(BROKEN)]
    loads = _lightgbm_loads(texts)
    assert loads[0], "LightGBM does not load the trained model"
    assert [case for case, loaded in zip(sorted(BROKEN), loads[1:], strict=True) if loaded] == []


def test_the_operator_process_never_imports_lightgbm() -> None:
    """`import lightgbm` (with scikit-learn and SciPy) is about 100 MB the operator does not need."""
    code = (
        "import sys; import trading_operator.handlers, trading_operator.cli, model_store.promotion; "
        "print(sorted(m for m in ('lightgbm', 'sklearn', 'scipy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
