"""COCOEvaluator across two real gloo processes: shards gathered on rank 0, others get {}."""

import json
import os

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from .test_coco_evaluation import CATEGORY_IDS, coco_json, ground_truth_predictions  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _worker(rank: int, world_size: int, init_file: str, json_file: str, out_dir: str) -> None:
    from idip.evaluation import COCOEvaluator

    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    try:
        inputs, outputs = ground_truth_predictions(json_file)
        evaluator = COCOEvaluator(
            "tiny", json_file=json_file, contiguous_to_category_id=CATEGORY_IDS, distributed=True
        )
        # rank 0: images 11, 22; rank 1: image 33 and a repeat of 11 (uneven shard padding)
        shard = [0, 1] if rank == 0 else [2, 0]
        evaluator.process([inputs[i] for i in shard], [outputs[i] for i in shard])
        metrics = evaluator.evaluate()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(metrics, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_process_gather(coco_json, tmp_path):  # noqa: F811
    mp.spawn(
        _worker, args=(2, str(tmp_path / "init"), coco_json, str(tmp_path)), nprocs=2, join=True
    )
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1 == {}
    assert rank0["bbox"]["AP"] == pytest.approx(100.0)
    assert rank0["segm"]["AP"] == pytest.approx(100.0)
    assert rank0["segm"]["APs"] == pytest.approx(100.0)
