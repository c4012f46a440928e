"""End-to-end speed of IDIP and CondInst with the project's kernels and with the reference ops.

Usage:
    python benchmarks/bench_model.py --device cuda --out benchmarks/results/model-h100.json
    python benchmarks/bench_model.py --device cpu --size 320 512 --out benchmarks/results/model-cpu.json

For each model (R50, random weights, the same for both implementations: weights change the work
only through what they detect or match, so inference rows report the detections per image) and
each ops implementation (``MODEL.USE_REFERENCE_OPS`` False/True), it measures:
- inference images/s at batch 1 and 8, fp32 and bf16 autocast (CondInst keeps every candidate:
  see ``make_cfg``);
- one training iteration (forward + backward + optimizer step) at batch 2: time and peak memory.
On a CPU the default image size is smaller (--size) and the JSON says so.

``--resume`` continues an earlier ``--out`` file of the same device and image size: rows it
already measured are kept and skipped (each row records the run that measured it; the JSON lists
every run), so a long CPU run can be finished in parts, e.g. ``--models CondInst --dtypes fp32
--resume``; ``--resume --remeasure`` measures the selected rows again and keeps the others.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from timing import device_name, time_fn  # noqa: E402

from idip.config import get_cfg  # noqa: E402
from idip.modeling import build_model  # noqa: E402

CONFIGS = {"IDIP": "configs/IDIP_R50.yaml", "CondInst": "configs/CondInst_R50_1x.yaml"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_cfg(arch: str, device: str, reference_ops: bool, num_classes: int = 80):
    cfg = get_cfg()
    cfg.merge_from_file(os.path.join(ROOT, CONFIGS[arch]))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.USE_REFERENCE_OPS = reference_ops
    if arch == "CondInst":
        # Randomly initialised, FCOS scores sit near its 0.01 prior, under the 0.05 threshold: no
        # detection would reach NMS or the mask head. Keeping every candidate gives a trained
        # model's busiest case (POST_NMS_TOPK_TEST detections per image), as IDIP always has.
        cfg.MODEL.FCOS.INFERENCE_TH_TEST = 0.0
    return cfg


def make_batch(n: int, h: int, w: int, device: str, with_targets: bool, gen: torch.Generator):
    batch = []
    for i in range(n):
        img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
        sample = {
            "image": img.to(device),
            "height": h,
            "width": w,
            "image_id": i,
            "file_name": f"{i}.png",
        }
        if with_targets:
            g = 8
            xy = torch.rand(g, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7])
            wh = torch.rand(g, 2, generator=gen) * torch.tensor([w * 0.3, h * 0.3]) + 8
            boxes = torch.cat([xy, xy + wh], 1)
            masks = torch.zeros(g, h, w, dtype=torch.bool)
            for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
                masks[k, y1:y2, x1:x2] = True
            sample["instances"] = {
                "boxes": boxes.to(device),
                "classes": torch.randint(0, 80, (g,), generator=gen).to(device),
                "masks": masks.to(device),
            }
        batch.append(sample)
    return batch


def peak_memory_mb(device: str) -> float | None:
    """Peak memory the caching allocator handed out (CUDA). On a CPU torch keeps no such count
    (the process RSS would include everything else), so it is not measured there."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def row_key(row: dict) -> tuple:
    return (row["model"], row["ops"], row["mode"], row["batch"], row["dtype"])


def planned_keys(
    models: list[str], batches: list[int], dtypes: list[str], train: bool
) -> list[tuple]:
    """Every row a run with these arguments measures, in order."""
    keys = []
    for arch in models:
        for label in ("idip kernels", "reference ops"):
            keys += [(arch, label, "inference", bs, dt) for bs in batches for dt in dtypes]
            if train:
                keys.append((arch, label, "train", 2, "fp32"))
    return keys


def bench_arch(
    arch: str,
    device: str,
    size: tuple[int, int],
    reps: int,
    warmup: int,
    batches: list[int],
    dtypes: list[str],
    train: bool,
    rows: list[dict],
    save,
    run: dict | None = None,
    remeasure: bool = False,
) -> None:
    """Appends ``arch``'s rows to ``rows``, calling ``save()`` after each (a run cut short keeps
    what it measured). Rows already in ``rows`` without an error are not measured again unless
    ``remeasure``. Each row carries ``run`` (the commit, date, repetitions of the run that
    measured it)."""
    run = run or {}
    done = set() if remeasure else {row_key(r) for r in rows if "error" not in r}
    h, w = size
    for reference in (False, True):
        label = "reference ops" if reference else "idip kernels"
        todo = [
            k
            for k in planned_keys([arch], batches, dtypes, train)
            if k[1] == label and k not in done
        ]
        if not todo:
            continue
        rows[:] = [
            r for r in rows if row_key(r) not in todo
        ]  # errors and --remeasure rows: replaced
        torch.manual_seed(0)  # both implementations get the same weights, hence the same workload
        model = build_model(make_cfg(arch, device, reference))
        model.eval()
        for bs in batches:
            for dtype in dtypes:
                if (arch, label, "inference", bs, dtype) not in todo:
                    continue
                # the inputs depend on the row only, not on which rows ran before
                gen = torch.Generator().manual_seed(bs)
                batch = make_batch(bs, h, w, device, False, gen)

                detections = []

                def infer():
                    with (
                        torch.inference_mode(),
                        torch.autocast(
                            device_type="cuda" if device.startswith("cuda") else "cpu",
                            dtype=torch.bfloat16,
                            enabled=dtype == "bf16",
                        ),
                    ):
                        out = model(batch)
                    detections.append(sum(len(r["scores"]) for r in out) / len(out))

                try:
                    ms = time_fn(infer, device, reps=reps, warmup=warmup)
                    rows.append(
                        {
                            "model": arch,
                            "ops": label,
                            "mode": "inference",
                            "batch": bs,
                            "dtype": dtype,
                            "time_ms": ms,
                            "images_per_s": bs / (ms * 1e-3),
                            "detections_per_image": detections[-1],
                            **run,
                        }
                    )
                except Exception as err:  # reported, never estimated
                    rows.append(
                        {
                            "model": arch,
                            "ops": label,
                            "mode": "inference",
                            "batch": bs,
                            "dtype": dtype,
                            "error": f"{type(err).__name__}: {err}"[:300],
                        }
                    )
                print(f"[bench_model] {rows[-1]}", flush=True)
                save()
        if (arch, label, "train", 2, "fp32") not in todo:
            model = None  # frees it before the next model is built
            continue
        model.train()
        gen = torch.Generator().manual_seed(2)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
        batch = make_batch(2, h, w, device, True, gen)

        def step():
            losses = model(batch)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        try:
            ms = time_fn(step, device, reps=reps, warmup=warmup)
            rows.append(
                {
                    "model": arch,
                    "ops": label,
                    "mode": "train",
                    "batch": 2,
                    "dtype": "fp32",
                    "time_ms": ms,
                    "peak_memory_mb": peak_memory_mb(device),
                    **run,
                }
            )
        except Exception as err:
            rows.append(
                {
                    "model": arch,
                    "ops": label,
                    "mode": "train",
                    "batch": 2,
                    "dtype": "fp32",
                    "error": f"{type(err).__name__}: {err}"[:300],
                }
            )
        print(f"[bench_model] {rows[-1]}", flush=True)
        save()
        model = opt = None  # frees them before the next model is built


def resume_result(path: str, device: str, size: tuple[int, int], run: dict) -> dict:
    """The result dict of an earlier run, checked to be comparable, with ``run`` (this run's
    commit, date, repetitions) recorded in its ``runs``."""
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--resume: cannot read {path}: {err}")
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise SystemExit(f"--resume: {path} is not a bench_model.py result (no 'rows' list)")
    if result.get("device_kind") != device or list(result.get("image_size", [])) != list(size):
        raise SystemExit(
            f"--resume: {path} was measured on {result.get('device_kind')!r} at "
            f"{result.get('image_size')}; this run is {device!r} at {list(size)}"
        )
    if result.get("torch", torch.__version__) != torch.__version__:
        raise SystemExit(
            f"--resume: {path} was measured with torch {result.get('torch')}; this is "
            f"torch {torch.__version__} (start a new file)"
        )
    first = {k: result.get(k) for k in ("commit", "date", "reps", "warmup")}
    result.setdefault("runs", [first]).append(run)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="*", default=list(CONFIGS))
    parser.add_argument(
        "--size", nargs=2, type=int, default=None, help="H W (default 800 1333; CPU 320 512)"
    )
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions (default 20 cuda, 3 cpu)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed runs first (default 5 cuda, 1 cpu)"
    )
    parser.add_argument(
        "--dtypes",
        nargs="*",
        default=["fp32", "bf16"],
        choices=["fp32", "bf16"],
        help="inference dtypes (bf16: autocast)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training-iteration rows")
    parser.add_argument("--out")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows --out already has and measure only the missing ones",
    )
    parser.add_argument(
        "--remeasure",
        action="store_true",
        help="with --resume: measure this run's rows again even where --out has "
        "them (e.g. after the workload changed); the file's other rows stay",
    )
    args = parser.parse_args(argv)
    on_cpu = not args.device.startswith("cuda")
    size = tuple(args.size) if args.size else ((320, 512) if on_cpu else (800, 1333))
    reps = args.reps or (3 if on_cpu else 20)
    warmup = args.warmup if args.warmup is not None else (1 if on_cpu else 5)
    commit = (
        subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or "unknown"
    )
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    run = {"commit": commit, "date": date, "reps": reps, "warmup": warmup}
    rows: list[dict] = []
    result = {
        "model": True,
        "device": device_name(args.device),
        "device_kind": args.device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit,
        "date": date,
        "image_size": list(size),
        "reps": reps,
        "warmup": warmup,
        "complete": False,
        "note": (
            f"CPU run at a reduced image size ({size[0]}x{size[1]}); peak memory is not "
            "measured on a CPU"
        )
        if on_cpu
        else f"{size[0]}x{size[1]} input",
        "rows": rows,
        "runs": [run],
    }
    if args.resume and args.out and os.path.exists(args.out):
        result = resume_result(args.out, args.device, size, run)
        rows = result["rows"]

    def save() -> None:
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, args.out)

    for arch in args.models:
        bench_arch(
            arch,
            args.device,
            size,
            reps,
            warmup,
            args.batches,
            args.dtypes,
            not args.no_train,
            rows,
            save,
            run,
            args.remeasure,
        )
    # complete: every row of the default plan (both dtypes, batches 1 and 8, training) is there
    have = {row_key(r) for r in rows if "error" not in r}
    result["complete"] = all(
        k in have for k in planned_keys(list(CONFIGS), [1, 8], ["fp32", "bf16"], True)
    )
    save()
    print(f"\n{result['device']} | {size[0]}x{size[1]} | commit {commit}")
    print(
        f"{'model':9s} {'ops':14s} {'mode':9s} {'batch':>5s} {'dtype':5s} {'ms':>10s} {'img/s':>8s} {'mem MB':>8s}"
    )
    for r in rows:
        if "error" in r:
            print(
                f"{r['model']:9s} {r['ops']:14s} {r['mode']:9s} {r['batch']:5d} {r['dtype']:5s} error: {r['error']}"
            )
            continue
        ips = f"{r['images_per_s']:.2f}" if "images_per_s" in r else ""
        mem = f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") else ""
        print(
            f"{r['model']:9s} {r['ops']:14s} {r['mode']:9s} {r['batch']:5d} {r['dtype']:5s} {r['time_ms']:10.1f} {ips:>8s} {mem:>8s}"
        )
    if args.out:
        print(f"written {args.out}")


if __name__ == "__main__":
    main()
