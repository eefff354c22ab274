"""Grammar, splits and success detectors of the tabletop tasks (pure Python, no physics)."""

from __future__ import annotations

import numpy as np
import pytest

from apt_core.sim import tasks as T

SEEDS = range(40)


def _words(table: dict[str, tuple[str, ...]]) -> set[str]:
    return {w for v in table.values() for w in v}


def test_training_and_heldout_vocabulary_are_disjoint() -> None:
    assert not _words(T.TRAIN_TEMPLATES) & _words(T.HELDOUT_TEMPLATES)
    assert not _words(T.TRAIN_NOUNS) & _words(T.HELDOUT_NOUNS)
    for fam in T.FAMILIES:
        assert not set(T.train_combinations(fam)) & set(T.HELDOUT_COMBINATIONS[fam])


@pytest.mark.parametrize("split", T.SPLITS)
def test_splits_are_deterministic_and_parse_back(split: str) -> None:
    for seed in SEEDS:
        task, layout = T.make_task(seed, split)
        task2, layout2 = T.make_task(seed, split)
        assert task == task2 and layout.poses == layout2.poses
        assert T.parse_instruction(task.instruction) == task.subtasks
        assert (task.family == "chain") == (split == "chain")


def test_training_splits_never_use_heldout_phrasing_or_combinations() -> None:
    heldout_nouns = {n for v in T.HELDOUT_NOUNS.values() for n in v}
    for split in ("in_distribution", "position_perturbation", "task_perturbation", "chain"):
        for seed in SEEDS:
            task, _ = T.make_task(seed, split)
            assert not set(task.instruction.replace(",", "").split()) & heldout_nouns, task.instruction
            if split in ("in_distribution", "chain"):
                for s in task.subtasks:
                    assert (s.obj, s.target) not in T.HELDOUT_COMBINATIONS[s.family]


def test_paraphrase_uses_heldout_phrasing_for_the_same_task() -> None:
    train_rx = [T._template_regex(t) for v in T.TRAIN_TEMPLATES.values() for t in v]
    for seed in SEEDS:
        base, lay = T.make_task(seed, "in_distribution")
        para, lay2 = T.make_task(seed, "paraphrase")
        assert para.subtasks == base.subtasks and lay.poses == lay2.poses
        assert not any(rx.match(para.instruction) for rx in train_rx), para.instruction


def test_unseen_combination_draws_only_heldout_pairs() -> None:
    for seed in SEEDS:
        task, _ = T.make_task(seed, "unseen_combination")
        (s,) = task.subtasks
        assert (s.obj, s.target) in T.HELDOUT_COMBINATIONS[s.family]


def test_position_perturbation_swaps_the_task_object() -> None:
    for seed in SEEDS:
        base, lay = T.make_task(seed, "in_distribution")
        pert, lay2 = T.make_task(seed, "position_perturbation")
        assert pert.subtasks == base.subtasks
        obj = base.subtasks[0].obj
        moved_to = lay2.xy(obj)
        # The object now stands where another object stood, and positions are a permutation.
        others = [n for n in T.OBJECTS if n != obj]
        assert any(np.allclose(moved_to, lay.xy(o)) for o in others)
        assert sorted(map(tuple, (lay.xy(n) for n in T.ENTITIES))) == sorted(
            map(tuple, (lay2.xy(n) for n in T.ENTITIES))
        )


def test_task_perturbation_keeps_scene_changes_task() -> None:
    for seed in SEEDS:
        base, lay = T.make_task(seed, "in_distribution")
        pert, lay2 = T.make_task(seed, "task_perturbation")
        assert lay.poses == lay2.poses
        assert pert.subtasks != base.subtasks and pert.family == base.family


def test_chain_subtasks_share_no_entity() -> None:
    for seed in SEEDS:
        task, _ = T.make_task(seed, "chain")
        a, b = task.subtasks
        assert T.CHAIN_JOINER in task.instruction
        assert not {a.obj, a.target} & {b.obj, b.target}


def test_layouts_do_not_overlap_and_stay_in_workspace() -> None:
    for seed in SEEDS:
        _, lay = T.make_task(seed)
        names = list(lay.poses)
        for i, a in enumerate(names):
            x, y = lay.xy(a)
            assert T.WORKSPACE_X[0] <= x <= T.WORKSPACE_X[1] and T.WORKSPACE_Y[0] <= y <= T.WORKSPACE_Y[1]
            for b in names[i + 1 :]:
                gap = np.linalg.norm(lay.xy(a) - lay.xy(b))
                assert gap > T.ENTITIES[a].radius + T.ENTITIES[b].radius, (a, b)


@pytest.mark.parametrize(
    "text,match",
    [
        ("", "empty"),
        ("make me a sandwich", "cannot parse"),
        ("put the purple cube in the blue bowl", "cannot parse"),
        ("put the red cube in the blue bowl, then dance", "dance"),
        ("push the yellow cylinder to the orange zone", "cannot act"),
    ],
)
def test_bad_instructions_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(T.TaskError, match=match):
        T.parse_instruction(text)


def test_unknown_split_is_rejected() -> None:
    with pytest.raises(T.TaskError, match="unknown split 'nope'"):
        T.make_task(0, "nope")


def _state(**pos: tuple[float, float, float]) -> T.SceneState:
    return T.SceneState({k: np.array(v) for k, v in pos.items()})


def test_success_detectors() -> None:
    pp = T.Subtask("pick_place", "red_cube", "blue_bowl")
    assert T.subtask_success(pp, _state(red_cube=(0.41, 0.0, 0.026), blue_bowl=(0.4, 0.0, 0.0)))
    assert not T.subtask_success(pp, _state(red_cube=(0.46, 0.0, 0.026), blue_bowl=(0.4, 0.0, 0.0)))
    assert not T.subtask_success(pp, _state(red_cube=(0.40, 0.0, 0.09), blue_bowl=(0.4, 0.0, 0.0)))
    held = T.SceneState(
        {"red_cube": np.array([0.4, 0, 0.026]), "blue_bowl": np.zeros(3) + [0.4, 0, 0]},
        frozenset({"red_cube"}),
    )
    assert not T.subtask_success(pp, held)
    push = T.Subtask("push", "red_cube", "orange_zone")
    assert T.subtask_success(push, _state(red_cube=(0.3, 0.2, 0.02), orange_zone=(0.32, 0.17, 0.0)))
    assert not T.subtask_success(push, _state(red_cube=(0.3, 0.1, 0.02), orange_zone=(0.32, 0.17, 0.0)))
    st = T.Subtask("stack", "red_cube", "green_cube")
    assert T.subtask_success(st, _state(red_cube=(0.3, 0.1, 0.06), green_cube=(0.305, 0.1, 0.02)))
    assert not T.subtask_success(st, _state(red_cube=(0.3, 0.1, 0.02), green_cube=(0.35, 0.1, 0.02)))


def test_task_validates_its_fields() -> None:
    sub = T.Subtask("push", "red_cube", "orange_zone")
    with pytest.raises(T.TaskError, match="no subtasks"):
        T.Task("x", "push", ())
    with pytest.raises(T.TaskError, match="does not match"):
        T.Task("x", "stack", (sub,))
    with pytest.raises(T.TaskError, match="unknown split"):
        T.Task("x", "push", (sub,), "weird")
    assert T.task_from_instruction("push the red cube to the orange zone").subtasks == (sub,)
