"""scripts/compare_evals.py: pairing by (split, seed), discordant counts, the exact McNemar p-value
and the errors for files it cannot use. The episodes.csv files are written by the real
`write_results` of apt_core.sim.evaluate, so a change of its format breaks these tests."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

from apt_core.sim.evaluate import EpisodeResult, EvalResults, summarize, write_results

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("compare_evals", ROOT / "scripts" / "compare_evals.py")
ce = importlib.util.module_from_spec(spec)
sys.modules["compare_evals"] = ce  # dataclasses look their module up while the file runs
spec.loader.exec_module(ce)


def _write(
    out: Path, outcomes: dict[tuple[str, int], bool], families: dict[tuple[str, int], str] | None = None
) -> Path:
    eps = [
        EpisodeResult(
            split=split,
            seed=seed,
            instruction="pick up the red cube",
            family=(families or {}).get((split, seed), "pick_place"),
            success=ok,
            steps=10,
            subtasks_done=int(ok),
            min_distance=0.01,
            moved=True,
            grasp_offset=0.01,
            wrong_object=False,
            lifted=ok,
        )
        for (split, seed), ok in outcomes.items()
    ]
    write_results(EvalResults(episodes=eps, summary=summarize(eps), seconds=0.0), out)
    return out


def test_pairs_scenes_and_counts_discordant_ones(tmp_path: Path, capsys) -> None:
    a = {("in_distribution", 1000): True, ("in_distribution", 1001): True, ("chain", 1000): False}
    b = {("in_distribution", 1000): True, ("in_distribution", 1001): False, ("chain", 1000): True}
    # A's runs split across two folders (two processes of three splits each, as in the docs)
    _write(tmp_path / "a" / "x", {k: v for k, v in a.items() if k[0] == "in_distribution"})
    _write(tmp_path / "a" / "y", {("chain", 1000): False, ("chain", 1001): True})  # 1001: A only
    _write(tmp_path / "b", b)
    rows = ce.compare(ce.read_episodes([tmp_path / "a"]), ce.read_episodes([tmp_path / "b"]))
    by = {r.group: r for r in rows}
    assert [r.group for r in rows] == ["in_distribution", "chain", "all"]
    assert (by["in_distribution"].n, by["in_distribution"].a, by["in_distribution"].b) == (2, 2, 1)
    assert (by["chain"].n, by["chain"].only_a, by["chain"].only_b) == (1, 0, 1)
    assert (by["all"].n, by["all"].a, by["all"].b, by["all"].only_a, by["all"].only_b) == (3, 2, 2, 1, 1)
    out = tmp_path / "table.md"
    rc = ce.main(
        ["--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--labels", "zero", "one", "--out", str(out)]
    )
    printed = capsys.readouterr().out
    assert rc == 0
    assert "| **all** | 3 | 2 | 2 | 1 | 1 | 1.000 |" in printed
    assert "1 scene(s) run by zero only, 0 by one only" in printed
    assert out.read_text() == printed


def test_exact_mcnemar_matches_the_binomial_tail() -> None:
    # 23 against 14 discordant scenes: the p = 0.19 of docs/experiments.md item 22
    assert ce.mcnemar_exact(23, 14) == pytest.approx(0.188, abs=5e-4)
    assert ce.mcnemar_exact(14, 23) == ce.mcnemar_exact(23, 14)
    # 10 against 0: 2 / 2**10
    assert ce.mcnemar_exact(10, 0) == pytest.approx(2 / 1024)
    assert ce.mcnemar_exact(5, 5) == 1.0 and ce.mcnemar_exact(0, 0) == 1.0
    # against a direct sum of the binomial pmf
    n, k = 89, 35
    direct = 2 * sum(math.comb(n, i) * 0.5**n for i in range(k + 1))
    assert ce.mcnemar_exact(54, 35) == pytest.approx(direct)


def test_unusable_inputs_are_named(tmp_path: Path, capsys) -> None:
    good = _write(tmp_path / "good", {("chain", 1): True})
    # the same scene in two folders of one side
    dup = _write(tmp_path / "dup", {("chain", 1): False})
    with pytest.raises(ValueError, match=r"scene \('chain', 1\) is also in"):
        ce.read_episodes([good, dup])
    # a file without the success column
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "episodes.csv").write_text("split,seed,family\nchain,1,chain\n")
    with pytest.raises(ValueError, match=r"bad/episodes.csv: missing column\(s\) \['success'\]"):
        ce.read_episodes([bad])
    # an unreadable value, with its line
    (bad / "episodes.csv").write_text(
        "split,seed,success,family\nchain,1,True,chain\nchain,two,False,chain\n"
    )
    with pytest.raises(ValueError, match=r"episodes.csv:3: seed 'two'"):
        ce.read_episodes([bad])
    # a folder with nothing in it
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no episodes.csv under it"):
        ce.read_episodes([tmp_path / "empty"])
    # no scene in common: the CLI says so and fails
    other = _write(tmp_path / "other", {("chain", 2): True})
    assert ce.main(["--a", str(good), "--b", str(other)]) == 2
    assert "no scene was run by both" in capsys.readouterr().err
    # one scene seed, two different tasks (results of different code): named, not paired
    push = _write(tmp_path / "push", {("chain", 1): True}, {("chain", 1): "push"})
    assert ce.main(["--a", str(good), "--b", str(push)]) == 2
    assert "scene ('chain', 1): task family 'pick_place' in A, 'push' in B" in capsys.readouterr().err


def test_rows_by_task_family(tmp_path: Path, capsys) -> None:
    """`--by family`: the rows are the task families of the paired scenes, the pairing is unchanged."""
    keys = [("in_distribution", 1), ("in_distribution", 2), ("paraphrase", 1), ("chain", 1)]
    fam = dict(zip(keys, ["push", "stack", "push", "chain"], strict=True))
    a = _write(tmp_path / "a", dict(zip(keys, [True, True, False, False], strict=True)), fam)
    b = _write(tmp_path / "b", dict(zip(keys, [False, True, False, True], strict=True)), fam)
    rows = ce.compare(ce.read_episodes([a]), ce.read_episodes([b]), by="family")
    by = {r.group: (r.n, r.a, r.b, r.only_a, r.only_b) for r in rows}
    assert [r.group for r in rows] == ["push", "stack", "chain", "all"]
    assert by == {
        "push": (2, 1, 0, 1, 0),
        "stack": (1, 1, 1, 0, 0),
        "chain": (1, 0, 1, 0, 1),
        "all": (4, 2, 2, 1, 1),
    }
    assert ce.main(["--a", str(a), "--b", str(b), "--by", "family"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("| family | scenes |") and "| push | 2 | 1 | 0 | 1 | 0 | 1.000 |" in printed
    with pytest.raises(ValueError, match="by='task'"):
        ce.compare(ce.read_episodes([a]), ce.read_episodes([b]), by="task")
