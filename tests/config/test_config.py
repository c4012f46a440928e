"""Config: defaults, _BASE_ inheritance, typed overrides, and one-line errors naming the key."""

import os
import textwrap

import pytest
import yaml

from idip.config import ConfigError, get_cfg, setup_cfg


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_are_attribute_accessible():
    cfg = get_cfg()
    assert cfg.MODEL.META_ARCHITECTURE == "IDIP"
    assert cfg.SOLVER.STEPS == (60000, 80000)
    assert cfg["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]


def test_get_cfg_returns_independent_copies():
    a, b = get_cfg(), get_cfg()
    a.SOLVER.BASE_LR = 1.0
    assert b.SOLVER.BASE_LR != 1.0


def test_base_inheritance_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path / "Base.yaml",
        """
        SOLVER:
          BASE_LR: 0.5
          MAX_ITER: 10
        MODEL:
          RESNETS:
            DEPTH: 18
    """,
    )
    _write(
        tmp_path / "sub" / "Mid.yaml",
        """
        _BASE_: ../Base.yaml
        SOLVER:
          MAX_ITER: 20
    """,
    )
    child = _write(
        tmp_path / "sub" / "Child.yaml",
        """
        _BASE_: "./Mid.yaml"
        SOLVER:
          STEPS: [5, 8]
    """,
    )
    cfg = get_cfg()
    cfg.merge_from_file(child)
    assert cfg.SOLVER.BASE_LR == 0.5  # from the grandparent
    assert cfg.SOLVER.MAX_ITER == 20  # the parent overrides the grandparent
    assert cfg.SOLVER.STEPS == (5, 8)  # list in YAML -> declared tuple
    assert cfg.MODEL.RESNETS.DEPTH == 18
    assert cfg.MODEL.RESNETS.NORM == "FrozenBN"  # untouched default


def test_base_cycle_is_an_error(tmp_path):
    a = _write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    _write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        get_cfg().merge_from_file(a)


def test_missing_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' not found"):
        get_cfg().merge_from_file(str(tmp_path / "nope.yaml"))
    bad = _write(tmp_path / "bad.yaml", "SOLVER: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        get_cfg().merge_from_file(bad)
    missing_base = _write(tmp_path / "mb.yaml", "_BASE_: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml"):
        get_cfg().merge_from_file(missing_base)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(
    "given,suggested",
    [
        ("configs/shapes/CondInst_R81.yaml", "configs/shapes/CondInst_R18.yaml"),  # a typo
        ("configs/CondInst_R18.yaml", "configs/shapes/CondInst_R18.yaml"),  # the wrong folder
        ("configs/IDIP_R5.yaml", "configs/IDIP_R50.yaml"),
    ],
)
def test_misspelt_config_file_suggests_the_nearest(monkeypatch, capsys, given, suggested):
    """As train.py reports it, from the repository root: one line naming the path as typed."""
    from idip.engine.cli import run_cli

    monkeypatch.chdir(REPO)
    assert run_cli(lambda argv: setup_cfg(given) and 0) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: config file '{given}' not found; did you mean {suggested}?"
    ]


def test_missing_config_file_without_a_close_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "Other.yaml", "SOLVER: {MAX_ITER: 3}\n")
    with pytest.raises(ConfigError) as err:
        setup_cfg("zzz.yaml")
    assert str(err.value) == "config file 'zzz.yaml' not found"
    (tmp_path / "Othr.yaml").mkdir()  # a folder is no file, and a file in the folder is close
    with pytest.raises(ConfigError) as err:
        setup_cfg("Othr.yaml")
    assert (
        str(err.value)
        == "config file 'Othr.yaml' is a folder, not a file; did you mean Other.yaml?"
    )


def test_missing_base_names_the_referring_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs" / "shapes").mkdir(parents=True)
    _write(tmp_path / "configs" / "Base-Shapes.yaml", "SOLVER: {MAX_ITER: 3}\n")
    _write(tmp_path / "configs" / "shapes" / "X.yaml", "_BASE_: ../Base-Shpes.yaml\n")
    with pytest.raises(ConfigError) as err:
        setup_cfg("configs/shapes/X.yaml")
    resolved = os.path.join(str(tmp_path), "configs", "Base-Shpes.yaml")
    assert str(err.value) == (
        "config file 'configs/shapes/X.yaml' has _BASE_ '../Base-Shpes.yaml', which does not exist "
        f"(resolved to {resolved}); did you mean '../Base-Shapes.yaml'?"
    )
    # two levels down the chain: the message names the middle file, not the one given
    _write(tmp_path / "configs" / "shapes" / "Y.yaml", "_BASE_: [X.yaml]\n")
    with pytest.raises(ConfigError, match="^config file 'configs/shapes/X.yaml' has _BASE_"):
        setup_cfg("configs/shapes/Y.yaml")
    _write(tmp_path / "configs" / "shapes" / "Z.yaml", "_BASE_: ../Nothing-Like-It.yaml\n")
    with pytest.raises(ConfigError) as err:
        setup_cfg("configs/shapes/Z.yaml")
    assert str(err.value).endswith("Nothing-Like-It.yaml)")  # no suggestion when none is close
    _write(tmp_path / "configs" / "shapes" / "W.yaml", "_BASE_: 3\n")
    with pytest.raises(ConfigError, match="has _BASE_ 3; expected a file name or a list"):
        setup_cfg("configs/shapes/W.yaml")


@pytest.mark.parametrize(
    "key,raw,expected",
    [
        ("SOLVER.BASE_LR", "0.01", 0.01),
        ("SOLVER.BASE_LR", "1", 1.0),  # int accepted for a float key
        ("SOLVER.MAX_ITER", "100", 100),
        ("SOLVER.STEPS", "(10, 20)", (10, 20)),
        ("SOLVER.STEPS", "[10,20]", (10, 20)),
        ("SOLVER.STEPS", "()", ()),
        ("MODEL.PIXEL_MEAN", "[1, 2, 3]", [1.0, 2.0, 3.0]),
        ("SOLVER.AMP.ENABLED", "True", True),
        ("SOLVER.AMP.ENABLED", "false", False),
        ("SOLVER.WEIGHT_DECAY_BIAS", "None", None),
        ("SOLVER.WEIGHT_DECAY_BIAS", "0.0", 0.0),
        ("OUTPUT_DIR", "2024", "2024"),  # a string key keeps the user's text
        ("OUTPUT_DIR", "/tmp/run a", "/tmp/run a"),
        ("DATASETS.TRAIN", "shapes_train", ("shapes_train",)),
        ("DATASETS.TRAIN", "('a','b')", ("a", "b")),
        ("MODEL.DEVICE", "cpu", "cpu"),
    ],
)
def test_overrides_are_parsed_to_declared_type(key, raw, expected):
    cfg = get_cfg()
    cfg.merge_from_list([key, raw])
    node = cfg
    for part in key.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_unknown_key_names_key_and_suggestions():
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    msg = str(err.value)
    assert "unknown config key 'SOLVER.BASE_LRR'" in msg
    assert "did you mean: SOLVER.BASE_LR" in msg
    assert "\n" not in msg


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = _write(tmp_path / "c.yaml", "MODEL:\n  RESNET:\n    DEPTH: 18\n")
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_file(path)
    msg = str(err.value)
    assert "unknown config key 'MODEL.RESNET'" in msg and "c.yaml" in msg
    assert "MODEL.RESNETS" in msg


@pytest.mark.parametrize(
    "key,raw",
    [
        ("SOLVER.MAX_ITER", "ten"),
        ("SOLVER.MAX_ITER", "1.5"),
        ("SOLVER.BASE_LR", "fast"),
        ("SOLVER.AMP.ENABLED", "maybe"),
        ("SOLVER.STEPS", "5"),
        ("SOLVER.STEPS", "[5, 'x']"),
        ("MODEL.PIXEL_MEAN", "[1, 'a', 3]"),
    ],
)
def test_wrong_type_names_key_value_and_expected_type(key, raw):
    with pytest.raises(ConfigError) as err:
        get_cfg().merge_from_list([key, raw])
    msg = str(err.value)
    assert f"'{key}'" in msg and repr(raw) in msg and "expects" in msg
    assert "\n" not in msg


def test_wrong_type_in_file(tmp_path):
    path = _write(tmp_path / "c.yaml", "SOLVER:\n  MAX_ITER: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"'SOLVER.MAX_ITER' \(from .*c.yaml\) expects int"):
        get_cfg().merge_from_file(path)


def test_section_cannot_be_set_as_value():
    with pytest.raises(ConfigError, match="'SOLVER' .* is a section"):
        get_cfg().merge_from_list(["SOLVER", "1"])


def test_odd_override_list():
    with pytest.raises(ConfigError, match="KEY VALUE pairs; 'SOLVER.MAX_ITER' has no value"):
        get_cfg().merge_from_list(["SOLVER.MAX_ITER"])


def test_frozen_after_setup_and_dump(tmp_path):
    out = tmp_path / "run"
    cfg = setup_cfg(None, ["OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "7"], dump=True)
    assert cfg.is_frozen()
    with pytest.raises(ConfigError, match="frozen"):
        cfg.SOLVER.MAX_ITER = 8
    with pytest.raises(ConfigError, match="frozen"):
        cfg.merge_from_list(["SOLVER.MAX_ITER", "9"])
    dumped = out / "config.yaml"
    assert dumped.is_file()
    # The dump loads back into an equal config.
    again = get_cfg()
    again.merge_from_file(str(dumped))
    assert again.to_dict() == cfg.to_dict()
    assert yaml.safe_load(dumped.read_text())["SOLVER"]["MAX_ITER"] == 7


def test_unknown_attribute_suggests():
    cfg = get_cfg()
    with pytest.raises(AttributeError, match="SOLVER.BASE_LR"):
        _ = cfg.SOLVER.BASE_LRR


def test_repo_configs_load():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    files = []
    for dirpath, _, names in os.walk(root):
        files += [
            os.path.join(dirpath, n)
            for n in names
            if n.endswith(".yaml") and not n.startswith("Base")
        ]
    for path in files:
        get_cfg().merge_from_file(path)
