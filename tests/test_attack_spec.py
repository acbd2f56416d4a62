"""`AttackSpec`: parsed once at the edge, a round trip through its record, and what derives from the table."""

from __future__ import annotations

import typing

import pytest

from miniplaces.attacks import ATTACK_KINDS, ATTACK_MODES, ATTACKS, TARGET_MODES, TARGETS, AttackSpec, AttackSpecError
from miniplaces.cli import build_parser
from miniplaces.config import ConfigError, TrainConfig, adversarial_spec, load_config
from miniplaces.errors import MiniPlacesError


@pytest.mark.parametrize("spec", [
    AttackSpec(),
    AttackSpec(kind="pgd", target="untargeted", eps=4 / 255, steps=3, step_size=1 / 255, random_start=True),
    AttackSpec.from_mode("fgsm", eps="8/255"),
    AttackSpec.parse(target="untargeted", eps="0.03", step_size="2/255"),
])
def test_to_dict_and_from_dict_round_trip(spec: AttackSpec) -> None:
    record = spec.to_dict()
    assert AttackSpec.from_dict(record) == spec
    assert record["mode"] == spec.mode and record["step_size"] == spec.step and record["eps"] == spec.eps


def test_the_spec_says_what_runs() -> None:
    fgsm = AttackSpec(kind="fgsm", target="untargeted", eps=0.02, steps=7, step_size=0.5, random_start=True)
    assert (fgsm.steps, fgsm.step, fgsm.random_start, fgsm.mode) == (1, 0.02, False, "fgsm")
    pgd = AttackSpec(eps=0.01)
    assert pgd.step == pytest.approx(0.001) and pgd.with_eps(0.02).step == pytest.approx(0.002)
    assert AttackSpec(eps=0.01, step_size=0.003).with_eps(0.02).step == 0.003
    assert AttackSpec.from_mode("untargeted", eps="4/255", steps=2).describe() == \
        "untargeted PGD, ε = 4/255, 2 steps of 0.4/255"
    assert fgsm.describe() == "fgsm, ε = 0.02"


def test_a_record_written_before_kind_existed_is_read_by_its_mode() -> None:
    old = {"mode": "least-likely", "eps": 6 / 255, "eps_text": "6/255", "steps": 10, "step_size": 0.6 / 255,
           "random_start": False}
    spec = AttackSpec.from_dict(old)
    assert (spec.kind, spec.target, spec.steps, spec.step) == ("pgd", "least-likely", 10, pytest.approx(0.6 / 255))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: AttackSpec.parse(eps="6/0"), "divides by zero"),
    (lambda: AttackSpec.parse(eps="lots"), "cannot read ε 'lots'"),
    (lambda: AttackSpec.parse(eps="8"), "did you mean 8/255"),
    (lambda: AttackSpec.parse(step_size="-1/255"), "step size: ε '-1/255' must be a finite number ≥ 0"),
    (lambda: AttackSpec(kind="bim"), "unknown attack 'bim'; choose one of pgd, fgsm"),
    (lambda: AttackSpec.from_mode("sideways"), "unknown attack mode 'sideways'; choose one of least-likely"),
    (lambda: AttackSpec(kind="fgsm", target="least-likely"), "unknown target mode of fgsm 'least-likely'"),
    (lambda: AttackSpec(norm="l7"), "unknown norm of pgd 'l7'; choose one of linf"),
    (lambda: AttackSpec(steps=0), "steps must be an integer ≥ 1"),
    (lambda: AttackSpec(eps=float("nan")), "eps must be a finite number"),
    (lambda: AttackSpec.from_dict({"mode": "pgd"}), "unknown attack mode 'pgd'"),
])
def test_bad_settings_are_clean_errors(make: typing.Callable[[], AttackSpec], message: str) -> None:
    with pytest.raises(MiniPlacesError, match=message):
        make()


def test_the_choices_derive_from_the_table() -> None:
    assert ATTACK_KINDS == tuple(ATTACKS) and TARGET_MODES == tuple(TARGETS)
    assert set(ATTACK_MODES) == {mode for attack in ATTACKS.values() for mode in attack.modes}
    hints = typing.get_type_hints(TrainConfig)
    assert typing.get_args(hints["adv_train"]) == ("none", *ATTACK_KINDS)
    assert typing.get_args(hints["adv_mode"]) == TARGET_MODES
    parser = build_parser()
    for mode in ATTACK_MODES:
        assert parser.parse_args(["attack", "--checkpoint", "c", "--root", "r", "--mode", mode]).mode == mode
    with pytest.raises(SystemExit):
        parser.parse_args(["attack", "--checkpoint", "c", "--root", "r", "--mode", "pgd"])


def test_the_config_keys_make_one_spec() -> None:
    assert adversarial_spec(load_config(None, ["root=x"])) is None
    spec = adversarial_spec(load_config(None, ["adv_train=pgd", "adv_eps=4/255", "adv_steps=3",
                                               "adv_mode=least-likely", "adv_step_size=0.005"]))
    assert spec == AttackSpec(kind="pgd", target="least-likely", eps=4 / 255, steps=3, step_size=0.005)
    with pytest.raises(ConfigError, match="keys adv_train/adv_mode/adv_steps: unknown target mode of fgsm"):
        adversarial_spec(load_config(None, ["adv_train=fgsm", "adv_mode=least-likely"]))


def test_spec_errors_are_miniplaces_errors() -> None:
    assert issubclass(AttackSpecError, MiniPlacesError)
