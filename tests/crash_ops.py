"""The operations of the crash test, shared by the writer process and the checker.

`plan(seed, i, model)` picks operation `i` from the store's state as a dict of arrays; `apply`
gives the state after it. Both sides compute the same plan from the same state, so the checker
knows what the writer was doing when it was killed.
"""

from __future__ import annotations

import numpy as np

NAMES = ("a", "b", "c")  # "c" is kept compressed


def plan(seed: int, i: int, model: dict) -> tuple:
    rng = np.random.default_rng([seed, i])
    kinds = ["save", "save2", "append", "replace", "drop_rows", "compact", "drop"]
    kind = kinds[rng.integers(len(kinds))]
    name = NAMES[rng.integers(len(NAMES))]
    if name not in model or kind == "save":
        rows = int(rng.integers(0, 3000))
        return ("save", {name: rng.standard_normal((rows, 8)).astype("f4")})
    n = len(model[name])
    if kind == "save2" and name != "c":  # two raw arrays in one commit
        other = "b" if name == "a" else "a"
        return (
            "save",
            {
                name: rng.standard_normal((n + 1, 8)).astype("f4"),
                other: rng.integers(0, 9, (int(rng.integers(1, 500)), 8)).astype("f4"),
            },
        )
    if kind == "append":
        return ("append", name, rng.standard_normal((int(rng.integers(1, 2000)), 8)).astype("f4"))
    if kind == "replace" and n:
        idx = rng.integers(0, n, int(rng.integers(1, min(n, 500) + 1)))
        return ("replace", name, idx, rng.standard_normal((len(idx), 8)).astype("f4"))
    if kind == "drop_rows" and n:
        return ("drop_rows", name, np.unique(rng.integers(0, n, int(rng.integers(1, n + 1)))))
    if kind == "compact":
        return ("compact",)
    return ("drop", name)


def apply(op: tuple, model: dict) -> dict:
    model = dict(model)
    kind = op[0]
    if kind == "save":
        model.update({k: v.copy() for k, v in op[1].items()})
    elif kind == "append":
        model[op[1]] = np.concatenate([model[op[1]], op[2]])
    elif kind == "replace":
        arr = model[op[1]].copy()
        arr[op[2]] = op[3]
        model[op[1]] = arr
    elif kind == "drop_rows":
        model[op[1]] = np.delete(model[op[1]], op[2], axis=0)
    elif kind == "drop":
        del model[op[1]]
    return model


def run(npk, op: tuple) -> None:
    kind = op[0]
    if kind == "save":
        compress = "c" in op[1]  # then the only array: plan() never pairs "c"
        npk.save(op[1], compress=compress, block_rows=256 if compress else None)
    elif kind == "append":
        npk.append({op[1]: op[2]})
    elif kind == "replace":
        npk.replace({op[1]: op[3]}, op[2])
    elif kind == "drop_rows":
        npk.drop(op[1], op[2])
    elif kind == "compact":
        npk.compact()
    else:
        npk.drop(op[1])


def read(npk) -> dict:
    return {name: npk.load(name) for name in npk.get_member_list()}
