"""DistributedDataParallel on CPU: 2 processes with gloo must train the same model as 1 process."""
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from cml.model.checkpoint import read_checkpoint
from cml.train.loop import train
from tests.helpers import TINY_TRAINING, make_tracks

CONFIG = {**TINY_TRAINING, "batch_size": 4, "epochs": 2, "kmeans_lambda": 0.3, "kmeans_k": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, csv: str, outs: list[str], results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    # each rank gets its own out_dir, so the test can see that rank 1 writes nothing
    results[rank] = train(CONFIG, csv, outs[rank], progress=False)["history"]


def test_two_gloo_processes_train_like_one(tmp_path):
    csv = make_tracks(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process: the same kernels, so the numbers can be compared
    try:
        single = train(CONFIG, csv, tmp_path / "single", progress=False)["history"]
    finally:
        torch.set_num_threads(threads)

    outs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), str(csv), outs, results), nprocs=2, join=True)
        histories = dict(results)

    assert not Path(outs[1]).exists()  # only rank 0 writes checkpoints, logs and metrics
    assert {p.name for p in Path(outs[0]).iterdir()} >= {"last.pt", "best.pt", "metrics.json", "live"}
    assert histories[0] == histories[1]  # every rank reports the same (gathered) metrics
    for a, b in zip(histories[0], single):
        assert a.keys() == b.keys() and a["step"] == b["step"]
        for key in ("train/ntxent", "train/kmeans", "val/ntxent", "lr"):
            assert abs(a[key] - b[key]) < 1e-4, (key, a[key], b[key])
    ddp, one = read_checkpoint(Path(outs[0]) / "last.pt"), read_checkpoint(tmp_path / "single" / "last.pt")
    for k, v in one["model"].items():
        assert torch.allclose(ddp["model"][k], v, atol=1e-4), k
    assert torch.allclose(ddp["kmeans"]["centroids"], one["kmeans"]["centroids"], atol=1e-4)
