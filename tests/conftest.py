"""Session fixtures shared by test modules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

#: The small rendered dataset of the end-to-end localization tests: overcast queries of the
#: reference condition, PINHOLE 320x240, on which the default localizer (dense SIFT) puts every
#: query within (0.25 m, 2 deg).
LOCALIZE_SYNTH = dict(
    references=24,
    queries=6,
    conditions=("overcast-reference",),
    width=320,
    height=240,
    camera_model="PINHOLE",
    seed=0,
)


@pytest.fixture(scope="session")
def localize_dataset(tmp_path_factory) -> Path:
    """A ``dgeo synth`` folder (images/, sfm/, queries_with_intrinsics.txt, queries_gt.txt),
    rendered once per session (about 5 s on one thread)."""
    import torch

    from dgeo.data.synthetic.dataset import SynthConfig, write_dataset

    out = tmp_path_factory.mktemp("localize_data") / "data"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast as two on a 2-core machine, far faster when it is busy
    try:
        t = time.perf_counter()
        write_dataset(out, SynthConfig(**LOCALIZE_SYNTH))
        print(f"rendered the localization dataset in {time.perf_counter() - t:.1f} s")
    finally:
        torch.set_num_threads(threads)
    return out


#: The tiny room of the scene-coordinate tests: sequences/overcast-reference and sequences/night
#: of 24 frames at 128x96 with 1/8 labels (16x12 cells), PINHOLE.
SEQ_SYNTH = dict(
    scene="room", seed=3, references=4, queries=1, conditions=("night",), sequence_length=24,
    width=128, height=96, label_stride=8, max_keypoints=64, camera_model="PINHOLE",
)  # fmt: skip


def render_synth(out: Path, **config) -> Path:
    """``dgeo synth`` into ``out`` on one thread (as fast as two on a 2-core machine, far faster
    when it is busy); returns ``out``."""
    import torch

    from dgeo.data.synthetic.dataset import SynthConfig, write_dataset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = time.perf_counter()
        write_dataset(out, SynthConfig(**config))
        print(f"rendered {out.name} in {time.perf_counter() - t:.1f} s")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def seq_synth(tmp_path_factory) -> Path:
    """A ``dgeo synth`` root of :data:`SEQ_SYNTH`, rendered once per session (about 5 s).
    Tests must not write into it."""
    return render_synth(tmp_path_factory.mktemp("seq_synth") / "room", **SEQ_SYNTH)
