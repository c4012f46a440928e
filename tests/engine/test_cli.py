"""demo.py and eval.py on a tiny trained model; a config error through a real subprocess; the
shared argument parsing of train.py, eval.py and demo.py (--opts and bare KEY VALUE pairs)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import demo
import eval as eval_cli
import train
from idip.config import setup_cfg
from idip.engine.cli import run_cli
from tests.engine.conftest import preserved_process_state
from tests.engine.tiny_model import TinyTrainer, make_sample, tiny_cfg_opts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_run")
    with preserved_process_state():
        TinyTrainer(setup_cfg(None, tiny_cfg_opts(str(out), 2))).train()
    return out


def _write_image(path, seed):
    image = make_sample(seed)["image"].permute(1, 2, 0).numpy()
    Image.fromarray(image).save(path)
    return image


def test_demo_single_image_and_folder(trained, tmp_path):
    image = _write_image(tmp_path / "a.png", 1)
    weights = str(trained / "model_final.pth")
    cfg_file = str(trained / "config.yaml")
    code = run_cli(
        demo.main,
        [
            "--config-file",
            cfg_file,
            "--input",
            str(tmp_path / "a.png"),
            "--output",
            str(tmp_path / "vis.png"),
            "--confidence-threshold",
            "0",
            "--opts",
            "MODEL.WEIGHTS",
            weights,
            "INPUT.MIN_SIZE_TEST",
            "48",
        ],
    )
    assert code == 0
    drawn = np.asarray(Image.open(tmp_path / "vis.png"))
    assert drawn.shape == image.shape  # predictions come back at the original size
    assert (drawn != image).any()  # the detection (mask, box, label) was drawn

    folder = tmp_path / "imgs"
    folder.mkdir()
    _write_image(folder / "x.png", 2)
    _write_image(folder / "y.jpg", 3)
    code = run_cli(
        demo.main,
        [
            "--config-file",
            cfg_file,
            "--input",
            str(folder),
            "--output",
            str(tmp_path / "out"),
            "--confidence-threshold",
            "1.0",
            "--opts",
            "MODEL.WEIGHTS",
            weights,
        ],
    )
    assert code == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["x.png", "y.png"]
    # nothing scores above 1.0: the output is the input image unchanged
    assert (
        np.asarray(Image.open(tmp_path / "out" / "x.png"))
        == np.asarray(Image.open(folder / "x.png"))
    ).all()


def test_demo_errors(trained, tmp_path, capsys):
    cfg_file = str(trained / "config.yaml")
    code = run_cli(
        demo.main,
        [
            "--config-file",
            cfg_file,
            "--input",
            str(tmp_path / "*.png"),
            "--output",
            str(tmp_path),
            "--opts",
            "MODEL.WEIGHTS",
            "x.pth",
        ],
    )
    assert code == 2 and "matches no file" in capsys.readouterr().err
    _write_image(tmp_path / "a.png", 1)
    code = run_cli(
        demo.main,
        ["--config-file", cfg_file, "--input", str(tmp_path / "a.png"), "--output", str(tmp_path)],
    )
    assert code == 2 and "MODEL.WEIGHTS" in capsys.readouterr().err


def test_eval_requires_weights(trained, capsys):
    code = run_cli(
        eval_cli.main, ["--config-file", str(trained / "config.yaml"), "DATASETS.TEST", "('x',)"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        "error: config key 'MODEL.WEIGHTS' is empty; give the checkpoint to evaluate (MODEL.WEIGHTS path)"
    ]


def test_train_config_error_in_a_subprocess_is_one_line_exit_2(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "SOLVER.MAX_ITER",
            "ten",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: config key 'SOLVER.MAX_ITER' (from the command line) expects int (default 90000), got 'ten'"
    )
    assert "Traceback" not in proc.stdout + proc.stderr


def test_demo_reads_images_as_training_does(trained, tmp_path):
    """#21 item 13: EXIF orientation applied (drawn upright) and a 16-bit PNG rescaled, not
    turned white."""
    weights, cfg_file = str(trained / "model_final.pth"), str(trained / "config.yaml")
    stored = _write_image(tmp_path / "plain.png", 4)[:20]  # stored 20 high, W wide
    exif = Image.Exif()
    exif[0x0112] = 6  # to be rotated 90 degrees clockwise: upright it is W high, 20 wide
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    wide = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "deep.png")  # mode I;16
    for name in ("rotated.jpg", "deep.png"):
        out = tmp_path / f"vis_{name}.png"
        code = run_cli(
            demo.main,
            [
                "--config-file",
                cfg_file,
                "--input",
                str(tmp_path / name),
                "--output",
                str(out),
                "--confidence-threshold",
                "1.0",
                "--opts",
                "MODEL.WEIGHTS",
                weights,
            ],
        )
        assert code == 0
        drawn = np.asarray(Image.open(out))
        if name == "rotated.jpg":
            assert drawn.shape == (stored.shape[1], 20, 3)
        else:
            assert drawn.shape == (48, 64, 3) and (drawn < 250).mean() > 0.5  # not all white


def test_demo_output_naming_an_existing_file_is_one_line(trained, tmp_path, capsys):
    weights, cfg_file = str(trained / "model_final.pth"), str(trained / "config.yaml")
    _write_image(tmp_path / "a.png", 1)
    _write_image(tmp_path / "b.png", 2)
    (tmp_path / "taken").write_text("not a folder")
    code = run_cli(
        demo.main,
        [
            "--config-file",
            cfg_file,
            "--input",
            str(tmp_path / "[ab].png"),
            "--output",
            str(tmp_path / "taken"),
            "--opts",
            "MODEL.WEIGHTS",
            weights,
        ],
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is an existing file" in err[0]


@pytest.mark.parametrize(
    "argv,opts",
    [
        (["--config-file", "X", "--opts", "A", "1", "B", "2"], ["A", "1", "B", "2"]),
        (["--config-file", "X", "A", "1", "B", "2"], ["A", "1", "B", "2"]),
        # mixed: merged in command-line order, flags anywhere
        (
            ["A", "1", "--config-file", "X", "--opts", "B", "2", "C", "3"],
            ["A", "1", "B", "2", "C", "3"],
        ),
        (["--opts", "A", "1", "--config-file", "X", "B", "-1"], ["A", "1", "B", "-1"]),
        (["--config-file", "X"], []),
    ],
)
def test_train_and_eval_take_opts_and_bare_pairs(argv, opts):
    for parse in (train.parse_args, eval_cli.parse_args):
        args = parse(argv)
        assert args.config_file == "X" and args.opts == opts


def test_train_flags_after_the_overrides():
    args = train.parse_args(["--opts", "SOLVER.MAX_ITER", "3", "--resume", "SEED", "1"])
    assert (
        args.resume and not args.start_over and args.opts == ["SOLVER.MAX_ITER", "3", "SEED", "1"]
    )
    args = train.parse_args(["SEED", "1", "--allow-config-change", "--start-over"])
    assert args.allow_config_change and args.start_over and args.opts == ["SEED", "1"]


def test_a_misspelt_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.parse_args(["SEED", "1", "--resme"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --resme" in capsys.readouterr().err


def test_demo_takes_opts_and_bare_pairs():
    base = ["--config-file", "X", "--output", "o"]
    forms = [
        [*base, "--input", "a.png", "--opts", "MODEL.WEIGHTS", "w.pth"],
        [*base, "--input", "a.png", "MODEL.WEIGHTS", "w.pth"],  # a key ends the --input list
        ["--input", "a.png", "MODEL.WEIGHTS", "w.pth", *base],
        ["MODEL.WEIGHTS", "w.pth", *base, "--input", "a.png"],
    ]
    for argv in forms:
        args = demo.parse_args(argv)
        assert (args.input, args.output, args.opts) == (["a.png"], "o", ["MODEL.WEIGHTS", "w.pth"])
    args = demo.parse_args(
        [*base, "--input", "a.png", "b/*.png", "SEED", "1", "--opts", "MODEL.WEIGHTS", "w.pth"]
    )
    assert args.input == ["a.png", "b/*.png"] and args.opts == [
        "SEED",
        "1",
        "MODEL.WEIGHTS",
        "w.pth",
    ]


def test_opts_reach_the_config_in_train_and_eval(tmp_path, capsys):
    code = train.cli(["--opts", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", "ten"])
    assert code == 2 and "'SOLVER.MAX_ITER' (from the command line) expects int" in (
        capsys.readouterr().err
    )
    # OUTPUT_DIR: eval.py starts its log there before it checks the weights
    argv = ["DATASETS.TEST", "('x',)", "--opts", "MODEL.WEIGHTS", "", "OUTPUT_DIR", str(tmp_path)]
    code = run_cli(eval_cli.main, argv)
    assert code == 2 and "'MODEL.WEIGHTS' is empty" in capsys.readouterr().err


def test_misspelt_config_file_from_train_suggests_the_nearest(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert train.cli(["--config-file", "configs/shapes/CondInst_R81.yaml"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: config file 'configs/shapes/CondInst_R81.yaml' not found; "
        "did you mean configs/shapes/CondInst_R18.yaml?"
    ]


def test_demo_with_bare_overrides(trained, tmp_path):
    """The trailing form a user types: KEY VALUE after the other arguments, no --opts."""
    image = _write_image(tmp_path / "a.png", 1)
    argv = ["--config-file", str(trained / "config.yaml"), "--input", str(tmp_path / "a.png")]
    argv += ["MODEL.WEIGHTS", str(trained / "model_final.pth"), "--output", str(tmp_path / "v.png")]
    argv += ["--confidence-threshold", "0", "INPUT.MIN_SIZE_TEST", "48"]
    assert run_cli(demo.main, argv) == 0
    drawn = np.asarray(Image.open(tmp_path / "v.png"))
    assert drawn.shape == image.shape and (drawn != image).any()
