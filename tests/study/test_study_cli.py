"""The study's command line (kern_d2.study.cli, for tools/run_study.py): --variant and the checks of the arguments."""
import os

import pytest

from kern_d2.study import parse_study_args, parse_variant

from tests.helpers import REPO_ROOT



def test_parse_variant_takes_a_name_its_modes_and_key_value_pairs():
    assert parse_variant(["kern_t1=NUM_STEPS", "1", "SOLVER.BASE_LR", "0.01"]) == (
        "kern_t1", {"NUM_STEPS": "1", "SOLVER.BASE_LR": "0.01"}, ())
    assert parse_variant(["vrfc_x@predcls,sgcls=NAME", "VRFC"]) == ("vrfc_x", {"NAME": "VRFC"}, ("predcls", "sgcls"))
    for tokens in (["kern_t1"], ["=NUM_STEPS", "1"], ["kern_t1=NUM_STEPS"], ["kern_t1=", "1"]):
        with pytest.raises(ValueError, match=r"expected NAME\[@MODE,\.\.\.\]=KEY VALUE"):
            parse_variant(tokens)


def test_parse_study_args_resolves_defaults_and_variants(capsys):
    args = parse_study_args(["--dataset", "toy", "--quick", "--variant", "k1@sgcls=NUM_STEPS", "1",
                             "--variant", "k2=USE_PRIORS", "False"], root=REPO_ROOT)
    assert args.kern_config == os.path.join(REPO_ROOT, "configs", "toy", "Base-Toy-KERN.yaml") and args.seeds == [0]
    assert args.variants == {"k1": {"NUM_STEPS": "1"}, "k2": {"USE_PRIORS": "False"}}
    assert args.variant_modes == {"k1": ("sgcls",)}
    for argv, message in [(["--variant", "k1@nope=NUM_STEPS", "1"], "variant k1: unknown modes"),
                          (["--variant", "vrfc=NUM_STEPS", "1"], "are study models already"),
                          (["--jobs", "0"], "--jobs must be >= 1"),
                          (["--dataset", "mine"], "has no default configs"),
                          (["--models"], "nothing to study")]:
        with pytest.raises(SystemExit):
            parse_study_args(argv, root=REPO_ROOT)
        assert message in capsys.readouterr().err
