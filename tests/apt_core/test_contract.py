"""The robot contract: what the simulated robot's file says, round trips, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from apt_core.contract import ContractError, contract_from_dict, load_contract


def test_the_sim_contract_names_both_ground_truth_topics_and_round_trips() -> None:
    c = load_contract()
    assert c.success_topic == "/apt_sim/success" and c.subtasks_done_topic == "/apt_sim/subtasks_done"
    again = contract_from_dict(c.to_dict(), where="round trip")
    assert again == c and again.subtasks_done_topic == c.subtasks_done_topic


@pytest.mark.parametrize("key", ["success_topic", "subtasks_done_topic"])
def test_a_relative_ground_truth_topic_is_refused_by_name(tmp_path: Path, key: str) -> None:
    d = load_contract().to_dict()
    d[key] = "apt_sim/done"
    p = tmp_path / "robot.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ContractError, match=rf"robot.yaml: {key} 'apt_sim/done' must be absolute"):
        load_contract(p)
    d[key] = ""  # optional: empty means not wired
    p.write_text(yaml.safe_dump(d))
    assert getattr(load_contract(p), key) == ""
