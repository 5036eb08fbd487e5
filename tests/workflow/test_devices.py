"""GPU placement: the lock-file pool gives concurrent jobs different GPUs (fake device lists, no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from aaclip_xattn import devices
from aaclip_xattn.devices import acquire_gpu, gpu_slot, resolve_device, visible_gpus


@pytest.fixture
def no_cuda_env(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_two_concurrent_slots_get_different_gpus_and_release_frees(tmp_path, no_cuda_env):
    with gpu_slot("cuda", lock_dir=tmp_path, gpus=["0", "1"]) as first:
        assert first == "0"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
        # A second job while the first still runs (separate open file description: a separate lock).
        gpu, fd = acquire_gpu(["0", "1"], tmp_path)
        try:
            assert gpu == "1"
        finally:
            os.close(fd)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    # Both released: the first GPU is free again.
    gpu, fd = acquire_gpu(["0", "1"], tmp_path)
    os.close(fd)
    assert gpu == "0"


def test_slot_held_by_another_process_is_skipped(tmp_path, no_cuda_env):
    holder = textwrap.dedent(
        f"""
        import sys, time
        from aaclip_xattn.devices import acquire_gpu
        gpu, fd = acquire_gpu(["0", "1", "2"], {str(tmp_path)!r})
        print(gpu, flush=True)
        sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "0"
        with gpu_slot("auto", lock_dir=tmp_path, gpus=["0", "1", "2"]) as mine:
            assert mine == "1"
            assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=30)
    # The holder has exited: the kernel dropped its lock.
    gpu, fd = acquire_gpu(["0", "1", "2"], tmp_path)
    os.close(fd)
    assert gpu == "0"


def test_all_gpus_taken_times_out_naming_the_lock_dir(tmp_path):
    gpu, fd = acquire_gpu(["7"], tmp_path)
    try:
        with pytest.raises(TimeoutError, match=r"every GPU \(7\) stayed locked .*--resources gpu="):
            acquire_gpu(["7"], tmp_path, timeout_s=0.3, poll_s=0.05)
    finally:
        os.close(fd)


def test_slot_restores_previous_cuda_visible_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    with gpu_slot("cuda", lock_dir=tmp_path) as gpu:
        assert gpu == "2"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"


@pytest.mark.parametrize(
    ("device", "gpus"),
    [("cpu", ["0", "1"]), ("cuda", ["0"]), ("auto", [])],
    ids=["cpu", "single-gpu", "no-gpu"],
)
def test_slot_is_a_noop_without_a_choice_to_make(tmp_path, no_cuda_env, device, gpus):
    with gpu_slot(device, lock_dir=tmp_path / "locks", gpus=gpus) as gpu:
        assert gpu is None
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not (tmp_path / "locks").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0,1", ["0", "1"]),
        (" 3 , 5 ", ["3", "5"]),
        ("GPU-abc,GPU-def", ["GPU-abc", "GPU-def"]),
        ("", []),
        ("-1", []),
    ],
)
def test_visible_gpus_reads_cuda_visible_devices(monkeypatch, value, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpus() == expected


def test_visible_gpus_counts_devices_when_unset(monkeypatch, no_cuda_env):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_gpus() == ["0", "1", "2"]


def test_lock_files_are_per_host(tmp_path, monkeypatch):
    monkeypatch.setattr(devices.socket, "gethostname", lambda: "node-a")
    gpu_a, fd_a = acquire_gpu(["0"], tmp_path)
    monkeypatch.setattr(devices.socket, "gethostname", lambda: "node-b")
    # Another node's GPU 0 is a different device: not blocked by node-a's lock.
    gpu_b, fd_b = acquire_gpu(["0"], tmp_path, timeout_s=0.5)
    os.close(fd_a)
    os.close(fd_b)
    assert (gpu_a, gpu_b) == ("0", "0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-a-gpu0.lock", "node-b-gpu0.lock"]


def test_acquire_rejects_an_empty_pool(tmp_path):
    with pytest.raises(ValueError, match="no GPUs to choose from"):
        acquire_gpu([], tmp_path)


def test_resolve_device_maps_auto_to_what_torch_sees(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("cuda:1") == "cuda:1"
