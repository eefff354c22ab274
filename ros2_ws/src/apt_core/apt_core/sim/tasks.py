"""Tasks, the instruction grammar, evaluation splits and success detectors of the tabletop sim.

Three task families act on the scene's entities (see `assets/tabletop_arm.xml`):

- ``pick_place``: put an object in a bowl ("put the red cube in the blue bowl");
- ``push``: push a cube onto a flat zone ("push the green cube to the orange zone");
- ``stack``: put one cube on another ("stack the red cube on the blue cube");
- ``chain``: two of the above in order ("put the red cube in the blue bowl, then push ...").

Language is generated from a small grammar: per-family templates and per-shape noun synonyms. The
training vocabulary (`TRAIN_TEMPLATES`, `TRAIN_NOUNS`) and the held-out vocabulary used only by the
"paraphrase" split (`HELDOUT_TEMPLATES`, `HELDOUT_NOUNS`) are separate tables, and
`HELDOUT_COMBINATIONS` lists object-target pairs that never occur in training data.

Splits (modelled on the APT paper and LIBERO-PRO), all drawn deterministically from a seed:

| split | scene | task | phrasing |
| --- | --- | --- | --- |
| in_distribution | random layout | a training combination | training |
| paraphrase | as in_distribution | as in_distribution | held-out templates and synonyms |
| unseen_combination | random layout | a held-out combination | training |
| position_perturbation | in_distribution layout, task object swapped with another (and bowls/zones) | same task | training |
| task_perturbation | the in_distribution layout of the seed | another training task | training |
| chain | random layout | two training tasks, "A, then B" | training |

Nothing here imports MuJoCo: layouts and success checks work on plain positions, so they are
unit-testable and reusable by the ROS node.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

FAMILIES = ("pick_place", "push", "stack")
SPLITS = (
    "in_distribution",
    "paraphrase",
    "unseen_combination",
    "position_perturbation",
    "task_perturbation",
    "chain",
)


class TaskError(ValueError):
    """An instruction, split or task that the simulator cannot set up; the message says why."""


@dataclass(frozen=True)
class Entity:
    name: str  # MuJoCo body name, e.g. "red_cube"
    colour: str  # colour word used in instructions
    kind: str  # "cube" | "cylinder" | "bowl" | "zone"
    radius: float  # footprint radius used for collision-free layouts [m]
    half_height: float = 0.0  # half height of a free object (its resting centre height) [m]


OBJECTS: dict[str, Entity] = {
    e.name: e
    for e in (
        Entity("red_cube", "red", "cube", 0.03, 0.02),
        Entity("green_cube", "green", "cube", 0.03, 0.02),
        Entity("blue_cube", "blue", "cube", 0.03, 0.02),
        Entity("yellow_cylinder", "yellow", "cylinder", 0.03, 0.025),
    )
}
BOWLS: dict[str, Entity] = {
    e.name: e
    for e in (Entity("blue_bowl", "blue", "bowl", 0.078), Entity("white_bowl", "white", "bowl", 0.078))
}
ZONES: dict[str, Entity] = {
    e.name: e
    for e in (Entity("orange_zone", "orange", "zone", 0.07), Entity("purple_zone", "purple", "zone", 0.07))
}
ENTITIES: dict[str, Entity] = {**OBJECTS, **BOWLS, **ZONES}
CUBES = tuple(n for n, e in OBJECTS.items() if e.kind == "cube")

# Geometry shared with the MJCF (keep in sync with assets/tabletop_arm.xml).
BOWL_INNER_HALF = 0.047  # inner half width of a bowl [m]
BOWL_RIM_HEIGHT = 0.045  # wall height [m]
ZONE_HALF = 0.05  # half width of a zone pad [m]
CUBE_HALF = 0.02  # half size of a cube [m]

# Reachable, camera-visible part of the table where layouts are drawn [m] (arm base at the origin).
WORKSPACE_X = (0.26, 0.55)
WORKSPACE_Y = (-0.27, 0.27)
MIN_BASE_DISTANCE = 0.28  # keep things out of the arm's base [m]
LAYOUT_MARGIN = 0.025  # free space between footprints [m]

# ----- the grammar ---------------------------------------------------------------------------------
# Training phrasings. {obj} and {target} are noun phrases such as "red cube" / "blue bowl".
TRAIN_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick_place": (
        "put the {obj} in the {target}",
        "place the {obj} into the {target}",
        "pick up the {obj} and put it in the {target}",
    ),
    "push": ("push the {obj} to the {target}", "slide the {obj} onto the {target}"),
    "stack": ("stack the {obj} on the {target}", "put the {obj} on top of the {target}"),
}
# Held-out phrasings: only the "paraphrase" split uses them; never in training data.
HELDOUT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "pick_place": ("drop the {obj} inside the {target}", "could you move the {obj} into the {target}"),
    "push": ("nudge the {obj} over to the {target}", "shove the {obj} onto the {target}"),
    "stack": ("set the {obj} atop the {target}", "pile the {obj} onto the {target}"),
}
TRAIN_NOUNS: dict[str, tuple[str, ...]] = {
    "cube": ("cube", "block"),
    "cylinder": ("cylinder", "can"),
    "bowl": ("bowl",),
    "zone": ("zone", "square"),
}
HELDOUT_NOUNS: dict[str, tuple[str, ...]] = {
    "cube": ("brick",),
    "cylinder": ("tube",),
    "bowl": ("basin", "dish"),
    "zone": ("pad", "area"),
}
CHAIN_JOINER = ", then "

# Object-target pairs that never appear in training splits (the "unseen_combination" split).
HELDOUT_COMBINATIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "pick_place": (("red_cube", "white_bowl"), ("yellow_cylinder", "blue_bowl")),
    "push": (("green_cube", "orange_zone"), ("red_cube", "purple_zone")),
    "stack": (("blue_cube", "red_cube"), ("green_cube", "blue_cube")),
}


def _all_combinations(family: str) -> list[tuple[str, str]]:
    if family == "pick_place":
        return [(o, b) for o in OBJECTS for b in BOWLS]
    if family == "push":
        return [(o, z) for o in CUBES for z in ZONES]
    if family == "stack":
        return [(a, b) for a in CUBES for b in CUBES if a != b]
    raise TaskError(f"unknown task family {family!r}; expected one of {FAMILIES}")


def train_combinations(family: str) -> list[tuple[str, str]]:
    """Object-target pairs allowed in training splits (all pairs minus the held-out ones)."""
    held = set(HELDOUT_COMBINATIONS[family])
    return [c for c in _all_combinations(family) if c not in held]


@dataclass(frozen=True)
class Subtask:
    family: str  # "pick_place" | "push" | "stack"
    obj: str  # body name of the object that moves
    target: str  # body name of the bowl, zone or bottom cube

    def __post_init__(self) -> None:
        if (self.obj, self.target) not in _all_combinations(self.family):
            raise TaskError(f"{self.family} cannot act on object {self.obj!r} and target {self.target!r}")


@dataclass(frozen=True)
class Task:
    instruction: str  # the natural-language instruction shown to the policy
    family: str  # "pick_place" | "push" | "stack" | "chain"
    subtasks: tuple[Subtask, ...]  # what must be done, in order
    split: str = "in_distribution"  # the split it was drawn from ("custom" for parsed instructions)

    def __post_init__(self) -> None:
        if not self.subtasks:
            raise TaskError(f"task {self.instruction!r} has no subtasks")
        expected = self.subtasks[0].family if len(self.subtasks) == 1 else "chain"
        if self.family != expected:
            raise TaskError(
                f"task family {self.family!r} does not match its subtasks (expected {expected!r})"
            )
        if self.split not in (*SPLITS, "custom"):
            raise TaskError(f"unknown split {self.split!r}; expected one of {SPLITS} or 'custom'")


@dataclass
class Layout:
    """Planar poses of every entity: name -> (x, y, yaw) [m, m, rad]."""

    poses: dict[str, tuple[float, float, float]] = field(default_factory=dict)

    def xy(self, name: str) -> np.ndarray:
        return np.array(self.poses[name][:2])

    def swapped(self, a: str, b: str) -> Layout:
        poses = dict(self.poses)
        (ax, ay, ayaw), (bx, by, byaw) = poses[a], poses[b]
        poses[a], poses[b] = (bx, by, ayaw), (ax, ay, byaw)
        return Layout(poses)


def sample_layout(rng: np.random.Generator, max_tries: int = 2000) -> Layout:
    """Collision-free random layout of all entities in the workspace (rejection sampling)."""
    # Large footprints first: they are the hardest to fit.
    order = sorted(ENTITIES.values(), key=lambda e: -e.radius)
    for _ in range(50):
        placed: dict[str, tuple[float, float, float]] = {}
        ok = True
        for ent in order:
            for _ in range(max_tries // 10):
                x = rng.uniform(WORKSPACE_X[0] + ent.radius * 0.5, WORKSPACE_X[1] - ent.radius * 0.3)
                y = rng.uniform(WORKSPACE_Y[0] + ent.radius * 0.5, WORKSPACE_Y[1] - ent.radius * 0.5)
                if math.hypot(x, y) < MIN_BASE_DISTANCE:
                    continue
                if all(
                    math.hypot(x - px, y - py) > ent.radius + ENTITIES[n].radius + LAYOUT_MARGIN
                    for n, (px, py, _) in placed.items()
                ):
                    # Objects get a random yaw; bowls and zones stay axis aligned (cleaner images).
                    yaw = float(rng.uniform(-math.pi, math.pi)) if ent.name in OBJECTS else 0.0
                    placed[ent.name] = (float(x), float(y), yaw)
                    break
            else:
                ok = False
                break
        if ok:
            return Layout(placed)
    raise TaskError("could not place all entities without overlap; workspace too small")


# ----- language --------------------------------------------------------------------------------------
def noun_phrase(name: str, rng: np.random.Generator, heldout: bool = False) -> str:
    ent = ENTITIES[name]
    nouns = (HELDOUT_NOUNS if heldout else TRAIN_NOUNS)[ent.kind]
    return f"{ent.colour} {nouns[int(rng.integers(len(nouns)))]}"


def phrase_subtask(sub: Subtask, rng: np.random.Generator, heldout: bool = False) -> str:
    """Render one subtask as an instruction with training (or held-out) templates and nouns."""
    templates = (HELDOUT_TEMPLATES if heldout else TRAIN_TEMPLATES)[sub.family]
    tpl = templates[int(rng.integers(len(templates)))]
    return tpl.format(obj=noun_phrase(sub.obj, rng, heldout), target=noun_phrase(sub.target, rng, heldout))


def _noun_lookup() -> dict[str, str]:
    """'red cube' / 'red brick' / ... -> entity name, over training and held-out nouns."""
    table = {}
    for name, ent in ENTITIES.items():
        for nouns in (TRAIN_NOUNS, HELDOUT_NOUNS):
            for noun in nouns[ent.kind]:
                table[f"{ent.colour} {noun}"] = name
    return table


_NOUNS = _noun_lookup()


def _template_regex(tpl: str) -> re.Pattern[str]:
    pat = re.escape(tpl).replace(r"\{obj\}", r"(?P<obj>[a-z]+ [a-z]+)")
    pat = pat.replace(r"\{target\}", r"(?P<target>[a-z]+ [a-z]+)")
    return re.compile(f"^{pat}$")


_PARSERS: list[tuple[str, re.Pattern[str]]] = [
    (fam, _template_regex(t))
    for table in (TRAIN_TEMPLATES, HELDOUT_TEMPLATES)
    for fam, tpls in table.items()
    for t in tpls
]


def parse_instruction(text: str) -> tuple[Subtask, ...]:
    """Parse an instruction of the grammar (any template, any synonym, chains) into subtasks.

    Raises TaskError naming the part that could not be understood.
    """
    clean = " ".join(text.strip().lower().rstrip(".!").split())
    if not clean:
        raise TaskError("instruction is empty")
    subs = []
    for part in clean.split(CHAIN_JOINER):
        part = part.strip()
        for fam, rx in _PARSERS:
            m = rx.match(part)
            if m and m["obj"] in _NOUNS and m["target"] in _NOUNS:
                subs.append(Subtask(fam, _NOUNS[m["obj"]], _NOUNS[m["target"]]))
                break
        else:
            raise TaskError(f"cannot parse instruction part {part!r} of {text!r} with the task grammar")
    return tuple(subs)


# ----- splits ----------------------------------------------------------------------------------------
def _pick(rng: np.random.Generator, items: list) -> object:
    return items[int(rng.integers(len(items)))]


def push_path_clear(layout: Layout, obj: str, zone: str) -> bool:
    """True when nothing stands in the corridor from behind `obj` to `zone` (zones are flat)."""
    a, b = layout.xy(obj), layout.xy(zone)
    u = (b - a) / max(float(np.linalg.norm(b - a)), 1e-9)
    a = a - 0.06 * u  # the pusher starts behind the object
    for name, ent in ENTITIES.items():
        if name in (obj, zone) or ent.kind == "zone":
            continue
        p = layout.xy(name)
        s = float(np.clip(np.dot(p - a, b - a) / max(float(np.dot(b - a, b - a)), 1e-9), 0.0, 1.0))
        if float(np.linalg.norm(p - (a + s * (b - a)))) < ent.radius + 0.035:
            return False
    return True


def _draw_subtask(
    rng: np.random.Generator, layout: Layout, heldout_combination: bool = False, family: str | None = None
) -> Subtask:
    """A random subtask; pushes are only drawn when their path is clear (the expert pushes straight)."""
    for _ in range(100):
        fam = family or str(_pick(rng, list(FAMILIES)))
        pool = list(HELDOUT_COMBINATIONS[fam]) if heldout_combination else train_combinations(fam)
        if fam == "push":
            pool = [c for c in pool if push_path_clear(layout, *c)]
            if not pool:
                continue
        obj, target = _pick(rng, pool)
        return Subtask(fam, obj, target)
    raise TaskError("no feasible subtask in this layout")


def _involved(sub: Subtask) -> set[str]:
    return {sub.obj, sub.target}


def make_task(seed: int, split: str = "in_distribution") -> tuple[Task, Layout]:
    """Draw the (task, layout) of a split deterministically from a seed."""
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; expected one of {SPLITS}")
    # The in-distribution draw of a seed is shared by paraphrase / perturbation splits, so those
    # differ from in_distribution in exactly one factor (phrasing, positions, or task).
    base_rng = np.random.default_rng([int(seed), 0])
    layout = sample_layout(base_rng)
    sub = _draw_subtask(base_rng, layout)
    phr_rng = np.random.default_rng([int(seed), 1 + SPLITS.index(split)])
    if split == "in_distribution":
        return Task(phrase_subtask(sub, phr_rng), sub.family, (sub,), split), layout
    if split == "paraphrase":
        return Task(phrase_subtask(sub, phr_rng, heldout=True), sub.family, (sub,), split), layout
    if split == "unseen_combination":
        sub = _draw_subtask(phr_rng, layout, heldout_combination=True)
        return Task(phrase_subtask(sub, phr_rng), sub.family, (sub,), split), layout
    if split == "position_perturbation":
        # Swap the task's object with another object (pick_place: the bowls too; push: the zones too
        # unless that blocks the straight push path; the first clear candidate wins).
        others = [o for o in OBJECTS if o not in _involved(sub)]
        phr_rng.shuffle(others)
        cands = []
        for other in others:
            cand = layout.swapped(sub.obj, other)
            if sub.family == "pick_place":
                cands.append(cand.swapped(*BOWLS))
            elif sub.family == "push":  # zones swapped too where that keeps the push path clear
                cands += [cand.swapped(*ZONES), cand]
            else:
                cands.append(cand)
        clear = [c for c in cands if sub.family != "push" or push_path_clear(c, sub.obj, sub.target)]
        cand = (clear or cands)[0]
        layout = cand
        return Task(phrase_subtask(sub, phr_rng), sub.family, (sub,), split), layout
    if split == "task_perturbation":
        # Same scene, another training task of the same family (other object and/or target).
        pool = [c for c in train_combinations(sub.family) if c != (sub.obj, sub.target)]
        if sub.family == "push":
            pool = [c for c in pool if push_path_clear(layout, *c)] or pool
        obj, target = _pick(phr_rng, pool)
        new = Subtask(sub.family, obj, target)
        return Task(phrase_subtask(new, phr_rng), new.family, (new,), split), layout
    # chain: two training subtasks that share no entity, so the first stays done while doing the second.
    first = _draw_subtask(phr_rng, layout)
    for _ in range(200):
        second = _draw_subtask(phr_rng, layout)
        if not (_involved(first) & _involved(second)):
            break
    else:  # pragma: no cover - the pools always contain disjoint pairs
        raise TaskError("could not draw two disjoint subtasks")
    text = phrase_subtask(first, phr_rng) + CHAIN_JOINER + phrase_subtask(second, phr_rng)
    return Task(text, "chain", (first, second), split), layout


def task_from_instruction(text: str) -> Task:
    """A Task for an explicit instruction (any grammar phrasing); raises TaskError if unparseable."""
    subs = parse_instruction(text)
    fam = subs[0].family if len(subs) == 1 else "chain"
    return Task(" ".join(text.strip().split()), fam, subs, "custom")


# ----- success detectors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneState:
    """What the success detectors need, read from the physics state."""

    positions: dict[str, np.ndarray]  # entity name -> (3,) world position of the body [m]
    held: frozenset[str] = frozenset()  # objects touched by a finger pad right now


def subtask_success(sub: Subtask, s: SceneState) -> bool:
    """Ground-truth success of one subtask from positions (and whether the gripper still holds it)."""
    p = s.positions[sub.obj]
    t = s.positions[sub.target]
    if sub.family == "pick_place":
        inside = bool(np.all(np.abs(p[:2] - t[:2]) < BOWL_INNER_HALF))
        resting = p[2] < t[2] + BOWL_RIM_HEIGHT  # below the rim: really in, not hovering above
        return inside and resting and sub.obj not in s.held
    if sub.family == "push":
        on_zone = bool(np.all(np.abs(p[:2] - t[:2]) < ZONE_HALF))
        return on_zone and p[2] < 0.5 * CUBE_HALF + CUBE_HALF  # still on the table, not lifted
    if sub.family == "stack":
        aligned = float(np.linalg.norm(p[:2] - t[:2])) < 0.6 * CUBE_HALF * 2
        dz = p[2] - t[2]
        on_top = 1.6 * CUBE_HALF < dz < 2.5 * CUBE_HALF
        return aligned and on_top and sub.obj not in s.held
    raise TaskError(f"unknown family {sub.family!r}")
