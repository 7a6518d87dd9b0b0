"""dgeo.io.colmap against pycolmap itself: conversions, ReferenceMap round trips, errors."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pycolmap
import pytest
import torch

from dgeo.errors import (
    CameraModelError,
    DataFileNotFoundError,
    InputError,
    ParseError,
    ShapeError,
)
from dgeo.geometry import Camera, Pose
from dgeo.io import colmap_binary
from dgeo.io.colmap import (
    ReferenceMap,
    camera_from_colmap,
    camera_to_colmap,
    load_reference_map,
    pose_from_colmap,
    pose_to_colmap,
    poses_from_colmap,
    synthesize_reference_map,
    write_reconstruction,
)

# model -> COLMAP parameters (COLMAP pixel convention) for 1024 x 768 synthetic images
MODELS = {
    "SIMPLE_PINHOLE": [1280.0, 512.3, 384.7],
    "PINHOLE": [1280.0, 1250.0, 512.3, 384.7],
    "SIMPLE_RADIAL": [1280.0, 512.3, 384.7, 0.05],
    "RADIAL": [1280.0, 512.3, 384.7, 0.05, -0.02],
    "OPENCV": [1280.0, 1270.0, 510.5, 380.2, 0.05, -0.02, 0.001, -0.0005],
    "FULL_OPENCV": [
        *[1280.0, 1270.0, 510.5, 380.2],
        *[0.05, -0.02, 0.001, -0.0005, 0.01, 0.002, 0.001, 0.0005],
    ],
}


def synthesize(model: str, num_points: int = 80, **kwargs) -> pycolmap.Reconstruction:
    pycolmap.set_random_seed(0)
    opts = pycolmap.SyntheticDatasetOptions(
        num_rigs=2,
        num_frames_per_rig=3,
        num_points3D=num_points,
        num_points2D_without_point3D=5,
        camera_model_id=getattr(pycolmap.CameraModelId, model),
        camera_params=MODELS[model],
        **kwargs,
    )
    return pycolmap.synthesize_dataset(opts)


@pytest.fixture(scope="module", params=list(MODELS))
def model_rec(request) -> tuple[str, pycolmap.Reconstruction]:
    return request.param, synthesize(request.param)


# ---------------------------------------------------------------------------------- oracles
def assert_matches_pycolmap(m: ReferenceMap, rec: pycolmap.Reconstruction, tol: float = 1e-12):
    """Check every array of ``m`` against pycolmap's own accessors of ``rec``."""
    reg = sorted(rec.reg_image_ids())
    assert sorted(m.image_ids.tolist()) == reg
    assert m.cam_from_world.dtype == torch.float64 and m.xyz.dtype == torch.float64
    point_index = {pid: k for k, pid in enumerate(m.point_ids.tolist())}
    assert sorted(point_index) == sorted(rec.point3D_ids())
    for i, image_id in enumerate(m.image_ids.tolist()):
        im = rec.image(image_id)
        assert m.names[i] == im.name
        assert int(m.camera_ids[i]) == im.camera_id
        # pose: pycolmap's composed cam_from_world
        ref = np.asarray(im.cam_from_world().matrix())
        np.testing.assert_allclose(m.cam_from_world[i].numpy()[:3], ref, rtol=0, atol=tol)
        # camera: original model restored, principal point shifted by -0.5
        cam = rec.camera(im.camera_id)
        assert m.camera_models[i] == cam.model.name
        mine = m.cameras[i].to_model(m.camera_models[i])
        expect = np.array(cam.params)
        names = Camera.PARAM_NAMES[cam.model.name]
        expect[[names.index("cx"), names.index("cy")]] -= 0.5
        np.testing.assert_allclose(mine.params.numpy(), expect, rtol=0, atol=1e-12)
        assert (float(mine.width), float(mine.height)) == (cam.width, cam.height)
        # keypoints: COLMAP xy - 0.5, and the 3D point each one observes
        xy = np.array([p.xy for p in im.points2D]).reshape(-1, 2)
        np.testing.assert_allclose(m.keypoints[i].numpy() + 0.5, xy, rtol=0, atol=1e-9)
        pid = np.array([p.point3D_id if p.has_point3D() else -1 for p in im.points2D])
        kpi = m.keypoint_point_index[i].numpy()
        assert np.array_equal(kpi < 0, pid < 0)
        assert np.array_equal(m.point_ids.numpy()[kpi[kpi >= 0]], pid[pid >= 0])
    ids = m.image_ids.numpy()
    for pid, p in rec.points3D.items():
        k = point_index[pid]
        np.testing.assert_allclose(m.xyz[k].numpy(), p.xyz, rtol=0, atol=1e-12)
        assert m.rgb[k].tolist() == p.color.tolist()
        assert float(m.point_errors[k]) == pytest.approx(p.error, abs=1e-12)
        img, kp = m.track(k)
        mine = sorted(zip(ids[img.numpy()].tolist(), kp.tolist(), strict=True))
        theirs = sorted((e.image_id, e.point2D_idx) for e in p.track.elements)
        assert mine == theirs


def assert_maps_equal(a: ReferenceMap, b: ReferenceMap, tol: float = 1e-12):
    assert a.names == b.names and a.camera_models == b.camera_models
    for f in ("image_ids", "camera_ids", "rgb", "point_ids", "track_offsets"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    assert a.cameras.model == b.cameras.model
    torch.testing.assert_close(a.cameras.params, b.cameras.params, rtol=0, atol=tol)
    torch.testing.assert_close(a.cameras.size, b.cameras.size, rtol=0, atol=0)
    torch.testing.assert_close(a.cam_from_world.data, b.cam_from_world.data, rtol=0, atol=tol)
    torch.testing.assert_close(a.xyz, b.xyz, rtol=0, atol=tol)
    torch.testing.assert_close(a.point_errors, b.point_errors, rtol=0, atol=tol)
    for ka, kb, ia, ib in zip(
        a.keypoints, b.keypoints, a.keypoint_point_index, b.keypoint_point_index, strict=True
    ):
        torch.testing.assert_close(ka, kb, rtol=0, atol=1e-9)
        assert torch.equal(ia, ib)
    # track element order within a track is not part of the model: compare as sets
    for p in range(a.num_points):
        ta = sorted(zip(*(x.tolist() for x in a.track(p)), strict=True))
        tb = sorted(zip(*(x.tolist() for x in b.track(p)), strict=True))
        assert ta == tb


# ---------------------------------------------------------------------------------- conversions
def test_pose_round_trip_agrees_with_pycolmap():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        t = rng.normal(size=3) * 5
        rigid = pycolmap.Rigid3d(pycolmap.Rotation3d(q), t)  # xyzw
        pose = pose_from_colmap(rigid)
        assert pose.dtype == torch.float64 and pose.shape == ()
        np.testing.assert_allclose(pose.R.numpy(), rigid.rotation.matrix(), rtol=0, atol=1e-15)
        np.testing.assert_allclose(pose.t.numpy(), rigid.translation, rtol=0, atol=0)
        # dgeo's w-first quaternion is pycolmap's xyzw reordered (sign fixed by w >= 0)
        wxyz = np.asarray(rigid.rotation.quat)[[3, 0, 1, 2]]
        wxyz = wxyz if wxyz[0] >= 0 else -wxyz
        np.testing.assert_allclose(pose.quat().numpy(), wxyz, rtol=0, atol=1e-12)
        back = pose_to_colmap(pose)
        np.testing.assert_allclose(back.matrix(), rigid.matrix(), rtol=0, atol=1e-12)
        # transforming a point agrees with pycolmap's own operator
        x = rng.normal(size=(1, 3))
        np.testing.assert_allclose(
            pose.transform(torch.from_numpy(x))[0].numpy(), rigid * x[0], rtol=0, atol=1e-12
        )


def test_poses_from_colmap_batched():
    rigids = [pycolmap.Rigid3d(pycolmap.Rotation3d(np.array([0.1, 0.2, 0.3]) * k), [k, 0, 1])
              for k in range(4)]  # fmt: skip
    poses = poses_from_colmap(rigids)
    assert poses.shape == (4,)
    for k, r in enumerate(rigids):
        torch.testing.assert_close(poses[k].data, pose_from_colmap(r).data, rtol=0, atol=0)


def test_pose_to_colmap_rejects_batches():
    with pytest.raises(ShapeError, match="batch shape"):
        pose_to_colmap(Pose.identity((2,), torch.float64))


@pytest.mark.parametrize("model", list(MODELS))
def test_camera_round_trip_shifts_principal_point(model):
    cam = pycolmap.Camera(model=model, width=1024, height=768, params=MODELS[model], camera_id=3)
    mine = camera_from_colmap(cam)
    assert mine.model == model and mine.shape == () and mine.dtype == torch.float64
    c = mine.c.numpy()
    np.testing.assert_allclose(c, [cam.principal_point_x - 0.5, cam.principal_point_y - 0.5])
    np.testing.assert_allclose(mine.f.numpy(), [cam.focal_length_x, cam.focal_length_y])
    back = camera_to_colmap(mine, camera_id=3)
    assert back.model == cam.model and (back.width, back.height) == (1024, 768)
    np.testing.assert_allclose(back.params, cam.params, rtol=0, atol=1e-12)
    assert back.camera_id == 3


def test_camera_from_colmap_rejects_unsupported_model():
    cam = pycolmap.Camera(
        model="OPENCV_FISHEYE", width=640, height=480, params=[300, 300, 320, 240, 0, 0, 0, 0]
    )
    with pytest.raises(CameraModelError) as e:
        camera_from_colmap(cam)
    assert "OPENCV_FISHEYE" in str(e.value) and "SIMPLE_RADIAL" in str(e.value)


def test_camera_from_colmap_rejects_wrong_param_count():
    # pycolmap accepts a SIMPLE_PINHOLE with 4 parameters without complaint
    cam = pycolmap.Camera(model="SIMPLE_PINHOLE", width=64, height=48, params=[50, 32, 24, 1])
    with pytest.raises(CameraModelError, match="3 parameters"):
        camera_from_colmap(cam)


def test_camera_to_colmap_rejects_batches_and_fractional_sizes():
    cams = Camera("PINHOLE", 640, 480, torch.tensor([[500.0, 500, 319.5, 239.5]] * 2))
    with pytest.raises(ShapeError):
        camera_to_colmap(cams)
    with pytest.raises(InputError, match="integer"):
        camera_to_colmap(Camera("PINHOLE", 640.5, 480, torch.tensor([500.0, 500, 319.5, 239.5])))


# ---------------------------------------------------------------------------------- maps
def test_from_colmap_matches_pycolmap(model_rec):
    model, rec = model_rec
    m = ReferenceMap.from_colmap(rec)
    assert m.image_ids.tolist() == sorted(rec.reg_image_ids())
    assert m.point_ids.tolist() == sorted(rec.point3D_ids())
    assert m.num_images == 6 and m.num_points == 80 and m.cameras.model == model
    assert m.num_observations == rec.compute_num_observations()
    assert_matches_pycolmap(m, rec)


def test_projection_reproduces_keypoints(model_rec):
    """The real test of the 0.5 convention: dgeo Camera + Pose reproduce dgeo keypoints."""
    model, rec = model_rec
    m = ReferenceMap.from_colmap(rec)
    for i in range(m.num_images):
        kp, xyz, _ = m.observations(i)
        assert len(kp) == 80
        p_cam = m.cam_from_world[i].transform(xyz)
        uv, valid = m.cameras[i].project(p_cam)
        assert bool(valid.all())
        assert float((uv - kp).abs().max()) < 1e-6
        # pycolmap's own projection is the same, 0.5 px apart
        cam = rec.camera(int(m.camera_ids[i]))
        ref = cam.img_from_cam(p_cam.numpy()) - 0.5
        np.testing.assert_allclose(uv.numpy(), ref, rtol=0, atol=1e-6)
        # control: the same camera without the shift misses by half a pixel, so this can fail
        raw = Camera(model, cam.width, cam.height, torch.tensor(cam.params))
        err = (raw.project(p_cam)[0] - kp).abs()
        assert float(err.min()) > 0.49


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_round_trip_through_colmap_and_disk(model_rec, tmp_path, text):
    _, rec = model_rec
    m = ReferenceMap.from_colmap(rec)
    # in memory: what we build is what pycolmap would have
    assert_matches_pycolmap(m, m.to_colmap())
    # on disk: a real COLMAP model that pycolmap reads back
    out = m.write(tmp_path / "model", text=text)
    ext = "txt" if text else "bin"
    assert {p.name for p in out.iterdir()} == {
        f"{n}.{ext}" for n in ("cameras", "images", "points3D", "rigs", "frames")
    }
    assert_matches_pycolmap(m, pycolmap.Reconstruction(str(out)))
    assert_maps_equal(load_reference_map(out), m)


def test_binary_and_text_load_identically(tmp_path):
    rec = synthesize("OPENCV")
    rec.write_binary(str(_mkdir(tmp_path / "bin")))
    rec.write_text(str(_mkdir(tmp_path / "txt")))
    a, b = load_reference_map(tmp_path / "bin"), load_reference_map(tmp_path / "txt")
    # the text format prints 17 significant digits: equal to float64 precision
    assert_maps_equal(a, b, tol=1e-9)
    assert_matches_pycolmap(a, rec)


def test_multi_camera_rig_poses_are_composed(tmp_path):
    rec = synthesize("PINHOLE", num_cameras_per_rig=2)
    assert any(len(r.non_ref_sensors) for r in rec.rigs.values())
    m = ReferenceMap.from_colmap(rec)
    assert m.num_images == 12
    assert_matches_pycolmap(m, rec)  # cam_from_world = sensor_from_rig * rig_from_world
    # written back with trivial rigs, every image keeps its cam_from_world
    m2 = load_reference_map(m.write(tmp_path / "m"))
    assert_maps_equal(m2, m)
    for i in range(m.num_images):
        kp, xyz, _ = m2.observations(i)
        uv, _ = m2.cameras[i].project(m2.cam_from_world[i].transform(xyz))
        assert float((uv - kp).abs().max()) < 1e-6


def test_unregistered_images_are_left_out():
    rec = synthesize("SIMPLE_RADIAL")
    dropped = rec.image(2)
    rec.deregister_frame(dropped.frame_id)
    m = ReferenceMap.from_colmap(rec)
    assert dropped.name not in m.names and m.num_images == 5
    assert_matches_pycolmap(m, rec)


def _mixed_scene():
    """Three images, three camera models, keypoints projected by pycolmap itself."""
    rng = np.random.default_rng(1)
    xyz = rng.uniform(-1, 1, size=(50, 3))
    cams_colmap = [
        pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480, params=[500, 320, 240]),
        pycolmap.Camera(model="SIMPLE_RADIAL", width=800, height=600, params=[600, 400, 300, -0.1]),
        pycolmap.Camera(model="PINHOLE", width=640, height=480, params=[510, 505, 321, 239]),
        pycolmap.Camera(model="SIMPLE_PINHOLE", width=640, height=480, params=[500, 320, 240]),
    ]
    poses = Pose.from_axis_angle(
        torch.tensor(
            [[0.0, 0, 0], [0, 0.2, 0], [0.1, -0.2, 0.05], [0, -0.1, 0]], dtype=torch.float64
        ),
        torch.tensor([[0.0, 0, 5], [-1, 0, 5], [1, 0.5, 5.5], [0.5, 0, 5]], dtype=torch.float64),
    )
    keypoints, tii, tki = [], [[] for _ in xyz], [[] for _ in xyz]
    for i, cam in enumerate(cams_colmap):
        p_cam = poses[i].transform(torch.from_numpy(xyz)).numpy()
        uv = cam.img_from_cam(p_cam) - 0.5  # to dgeo's convention
        order = rng.permutation(len(xyz))  # keypoints in another order than the points
        extra = rng.uniform(0, 400, size=(3, 2))  # keypoints without a 3D point
        keypoints.append(np.concatenate([uv[order], extra]))
        for k, p in enumerate(order):
            tii[p].append(i)
            tki[p].append(k)
    offsets = np.concatenate([[0], np.cumsum([len(t) for t in tii])])
    cams = [camera_from_colmap(c) for c in cams_colmap]
    names = [f"db/{i:03d}.jpg" for i in range(4)]
    return names, cams, poses, keypoints, xyz, np.concatenate(tii), np.concatenate(tki), offsets


def test_mixed_models_write_a_real_colmap_model(tmp_path):
    names, cams, poses, keypoints, xyz, tii, tki, offsets = _mixed_scene()
    rgb = np.random.default_rng(2).integers(0, 256, size=(len(xyz), 3), dtype=np.uint8)
    m = write_reconstruction(
        tmp_path / "sparse", names, cams, poses, keypoints, xyz, tii, tki, offsets, rgb=rgb
    )
    assert m.cameras.model == "OPENCV"  # PINHOLE needs two focals, SIMPLE_RADIAL a k1
    assert m.camera_models == ["SIMPLE_PINHOLE", "SIMPLE_RADIAL", "PINHOLE", "SIMPLE_PINHOLE"]
    assert m.camera_ids.tolist() == [1, 2, 3, 1]  # identical cameras share an id
    rec = pycolmap.Reconstruction(str(tmp_path / "sparse"))
    assert rec.num_cameras() == 3 and rec.num_reg_images() == 4
    assert {c.model.name for c in rec.cameras.values()} == {
        "SIMPLE_PINHOLE",
        "SIMPLE_RADIAL",
        "PINHOLE",
    }
    assert_matches_pycolmap(m, rec)
    # pycolmap's reprojection of the written model matches its keypoints exactly
    assert rec.compute_mean_reprojection_error() < 1e-9
    for image in rec.images.values():
        for p2d in image.get_observation_points2D():
            uv = image.project_point(rec.point3D(p2d.point3D_id).xyz)
            np.testing.assert_allclose(uv, p2d.xy, rtol=0, atol=1e-9)
    loaded = load_reference_map(tmp_path / "sparse")
    assert_maps_equal(loaded, m)
    for i in range(loaded.num_images):
        kp, pts, _ = loaded.observations(i)
        uv, valid = loaded.cameras[i].project(loaded.cam_from_world[i].transform(pts))
        assert bool(valid.all()) and float((uv - kp).abs().max()) < 1e-6


def test_explicit_ids_are_kept_and_images_sorted_by_id(tmp_path):
    names, cams, poses, keypoints, xyz, tii, tki, offsets = _mixed_scene()
    point_ids = 5 + 3 * np.arange(len(xyz))
    m = write_reconstruction(
        tmp_path / "m", names, cams, poses, keypoints, xyz, tii, tki, offsets,
        image_ids=[30, 7, 12, 1], camera_ids=[4, 9, 2, 4], point_ids=point_ids,
    )  # fmt: skip
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    assert sorted(rec.reg_image_ids()) == [1, 7, 12, 30] and sorted(rec.cameras) == [2, 4, 9]
    assert_matches_pycolmap(m, rec)  # the oracle looks images and points up by COLMAP id
    loaded = load_reference_map(tmp_path / "m")
    assert loaded.image_ids.tolist() == [1, 7, 12, 30]  # sorted by COLMAP id
    assert loaded.names == [names[3], names[1], names[2], names[0]]
    assert loaded.camera_ids.tolist() == [4, 9, 2, 4]
    assert loaded.point_ids.tolist() == point_ids.tolist()
    assert_matches_pycolmap(loaded, rec)


def test_observations_and_covisibility_against_brute_force():
    rec = synthesize("SIMPLE_RADIAL", num_points=60, track_length=3)
    m = ReferenceMap.from_colmap(rec)
    seen = {
        iid: {p.point3D_id for p in rec.image(iid).points2D if p.has_point3D()}
        for iid in m.image_ids.tolist()
    }
    for i, iid in enumerate(m.image_ids.tolist()):
        _, xyz, idx = m.observations(i)
        assert set(m.point_ids[idx].tolist()) == seen[iid]
        np.testing.assert_allclose(xyz.numpy(), m.xyz[idx].numpy())
        shared = {j: len(seen[iid] & seen[jid]) for j, jid in enumerate(m.image_ids.tolist())}
        expect = sorted(((-n, j) for j, n in shared.items() if j != i and n > 0))
        order, counts = m.covisible(i)
        assert list(zip((-counts).tolist(), order.tolist(), strict=True)) == expect
        order2, counts2 = m.covisible(i, min_shared=5)
        assert bool((counts2 >= 5).all()) and len(order2) == sum(-n >= 5 for n, _ in expect)
    with pytest.raises(KeyError, match="nope"):
        m.image_index("nope")
    assert m.image_index(m.names[3]) == 3


def test_large_map_loads():
    """100k points, 500k observations through the vectorised loader (speed: not a test's job)."""
    rec = pycolmap.synthesize_dataset(
        pycolmap.SyntheticDatasetOptions(num_rigs=1, num_frames_per_rig=5, num_points3D=100_000)
    )
    m = ReferenceMap.from_colmap(rec)
    assert m.num_points == 100_000 and m.num_observations == 500_000
    # spot-check a few points against pycolmap
    for k in (0, 4_999, 99_999):
        p = rec.point3D(int(m.point_ids[k]))
        np.testing.assert_allclose(m.xyz[k].numpy(), p.xyz, rtol=0, atol=0)
        img, kp = m.track(k)
        got = sorted(zip(m.image_ids[img].tolist(), kp.tolist(), strict=True))
        assert got == sorted((e.image_id, e.point2D_idx) for e in p.track.elements)


def test_points3d_parser_falls_back_on_unsorted_records(tmp_path):
    """Records not sorted by id (other writers) take the sequential scan, same result."""
    rec = synthesize("PINHOLE", num_points=30)
    rec.write_binary(str(tmp_path))
    buf = (tmp_path / "points3D.bin").read_bytes()
    n, off, records = struct.unpack_from("<Q", buf)[0], 8, []
    for _ in range(n):
        length = struct.unpack_from("<Q", buf, off + 43)[0]
        records.append(buf[off : off + 51 + 8 * length])
        off += 51 + 8 * length
    shuffled = tmp_path / "shuffled.bin"
    shuffled.write_bytes(buf[:8] + b"".join(records[::-1]))
    ids = np.array(sorted(rec.point3D_ids()), np.uint64)
    lengths = np.array([rec.point3D(int(i)).track.length() for i in ids])
    h1, e1 = colmap_binary.parse_points3D_bin(tmp_path / "points3D.bin", ids, lengths)
    h2, e2 = colmap_binary.parse_points3D_bin(shuffled, ids, lengths)
    assert np.array_equal(h1["id"], ids) and np.array_equal(h2["id"], ids[::-1])
    assert np.array_equal(h2[::-1]["xyz"], h1["xyz"])
    # and the assembled map sorts the points (and their tracks) back by id
    ids_i, names, p2d = colmap_binary.parse_images_bin(tmp_path / "images.bin")
    images = [rec.image(int(i)) for i in ids_i]
    cams = {c: camera_from_colmap(rec.camera(c)) for c in {im.camera_id for im in images}}
    poses = poses_from_colmap([im.cam_from_world() for im in images])
    a = ReferenceMap._from_arrays_colmap(images, cams, poses, ids_i, names, p2d, h1, e1)
    b = ReferenceMap._from_arrays_colmap(images, cams, poses, ids_i, names, p2d, h2, e2)
    assert_maps_equal(a, b, tol=0)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(buf[:-5])
    with pytest.raises(ParseError, match="truncated"):
        colmap_binary.parse_points3D_bin(truncated, ids, lengths)
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(struct.pack("<Q", 2**60) + buf[8:])
    with pytest.raises(ParseError, match="header says"):
        colmap_binary.parse_points3D_bin(garbage, ids, lengths)


# ---------------------------------------------------------------------------------- from_arrays
def test_from_arrays_validates():
    names, cams, poses, keypoints, xyz, tii, tki, offsets = _mixed_scene()
    args = (names, cams, poses, keypoints, xyz, tii, tki, offsets)
    ReferenceMap.from_arrays(*args)  # valid

    def with_(k, v):
        a = list(args)
        a[k] = v
        return a

    bad = [
        (with_(0, [names[0]] * 4), "more than once"),
        (with_(2, poses[:3]), "batch shape"),
        (with_(3, keypoints[:3]), "keypoint arrays"),
        (with_(5, np.where(np.arange(len(tii)) == 0, 7, tii)), "track_image_index"),
        (with_(6, np.where(np.arange(len(tki)) == 0, 999, tki)), "refers to keypoint 999"),
        (with_(6, np.where(np.arange(len(tki)) == 1, tki[0], tki)), "more than one track"),
        (with_(7, offsets[:-1]), "track_offsets"),
    ]
    for a, msg in bad:
        with pytest.raises(InputError, match=msg):
            ReferenceMap.from_arrays(*a)


def test_to_colmap_rejects_cameras_that_share_an_id_but_differ():
    names, cams, poses, keypoints, xyz, tii, tki, offsets = _mixed_scene()
    m = ReferenceMap.from_arrays(
        names, cams, poses, keypoints, xyz, tii, tki, offsets, camera_ids=[1, 1, 2, 3]
    )
    with pytest.raises(InputError, match="share a COLMAP camera id"):
        m.to_colmap()


def test_empty_map_round_trips(tmp_path):
    cams = Camera("PINHOLE", 64, 48, torch.tensor([[50.0, 50, 31.5, 23.5]]))
    m = write_reconstruction(
        tmp_path / "m", ["a.png"], cams, Pose.identity((1,), torch.float64),
        [np.zeros((0, 2))], np.zeros((0, 3)), [], [], [0],
    )  # fmt: skip
    m2 = load_reference_map(tmp_path / "m")
    assert m2.num_points == 0 and m2.num_images == 1 and m2.names == ["a.png"]
    assert_maps_equal(m, m2)
    assert m2.covisible(0)[0].numel() == 0


# ---------------------------------------------------------------------------------- errors
def test_load_errors(tmp_path):
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_reference_map(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataFileNotFoundError, match="holds no COLMAP model"):
        load_reference_map(empty)
    # a parent folder: the message points at the sub-folder that holds the model
    synthesize("PINHOLE").write_binary(str(_mkdir(tmp_path / "sparse" / "0")))
    with pytest.raises(DataFileNotFoundError, match=r"sparse[/\\]0"):
        load_reference_map(tmp_path / "sparse")
    # half a model
    partial = _mkdir(tmp_path / "partial")
    (partial / "cameras.bin").write_bytes((tmp_path / "sparse/0/cameras.bin").read_bytes())
    with pytest.raises(DataFileNotFoundError, match=r"found only cameras\.bin"):
        load_reference_map(partial)
    # a corrupt model: ParseError naming the folder
    bad = _mkdir(tmp_path / "bad")
    for f in (tmp_path / "sparse/0").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "points3D.bin").read_bytes()
    (bad / "points3D.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError) as e:
        load_reference_map(bad)
    assert str(bad) in str(e.value)
    with pytest.raises(InputError, match="is a file"):
        load_reference_map(bad / "points3D.bin")


def test_unsupported_model_in_map_names_it(tmp_path):
    pycolmap.set_random_seed(0)
    rec = pycolmap.synthesize_dataset(
        pycolmap.SyntheticDatasetOptions(
            num_rigs=1,
            num_frames_per_rig=2,
            num_points3D=10,
            camera_model_id=pycolmap.CameraModelId.OPENCV_FISHEYE,
            camera_params=[500, 500, 512, 384, 0, 0, 0, 0],
        )
    )
    with pytest.raises(CameraModelError, match=r"OPENCV_FISHEYE.*supported models"):
        ReferenceMap.from_colmap(rec)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True)
    return p


# ---------------------------------------------------------------------------------- atomic writes
def test_write_replaces_other_format_and_keeps_other_files(tmp_path):
    m = ReferenceMap.from_colmap(synthesize("SIMPLE_PINHOLE", num_points=20))
    out = tmp_path / "model"
    m.write(out, text=True)
    (out / "notes.md").write_text("keep me")
    m.write(out, text=False)
    names = {p.name for p in out.iterdir()}
    assert "notes.md" in names and not any(n.endswith(".txt") for n in names)
    assert_maps_equal(load_reference_map(out), m)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_failed_write_leaves_the_old_model(tmp_path, monkeypatch):
    old = ReferenceMap.from_colmap(synthesize("PINHOLE", num_points=20))
    out = old.write(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    new = ReferenceMap.from_colmap(synthesize("SIMPLE_RADIAL", num_points=30))

    def fail_midway(self, path):
        Path(path, "cameras.bin").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(pycolmap.Reconstruction, "write_binary", fail_midway)
    with pytest.raises(RuntimeError, match="disk full"):
        new.write(out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folder left
    assert_maps_equal(load_reference_map(out), old)
    # and a fresh folder is created by one rename
    fresh = new.write(tmp_path / "fresh")
    assert_maps_equal(load_reference_map(fresh), new)


# ---------------------------------------------------------------------------------- synthesis
@pytest.mark.parametrize("model", ["SIMPLE_PINHOLE", "OPENCV", "FULL_OPENCV"])
def test_synthesize_reference_map(model, tmp_path):
    m = synthesize_reference_map(6, 40, camera_model=model, num_cameras=2, seed=3)
    assert (m.num_images, m.num_points, m.cameras.model) == (6, 40, model)
    assert m.num_observations == 6 * 40 and len(torch.unique(m.camera_ids)) == 2
    assert all(len(k) == 40 + 10 for k in m.keypoints)
    for i in range(m.num_images):
        kp, xyz, _ = m.observations(i)
        uv, valid = m.cameras[i].project(m.cam_from_world[i].transform(xyz))
        assert bool(valid.all()) and float((uv - kp).abs().max()) < 1e-6
    again = synthesize_reference_map(6, 40, camera_model=model, num_cameras=2, seed=3)
    assert_maps_equal(m, again, tol=0)
    other = synthesize_reference_map(6, 40, camera_model=model, num_cameras=2, seed=4)
    assert not torch.equal(other.xyz, m.xyz)
    assert_maps_equal(load_reference_map(m.write(tmp_path / "m")), m)


def test_synthesize_reference_map_params_and_errors():
    params = torch.tensor([700.0, 650.0, 319.5, 239.5], dtype=torch.float64)  # dgeo convention
    m = synthesize_reference_map(
        2, 20, camera_model="PINHOLE", camera_params=params, width=640, height=480, track_length=2
    )
    torch.testing.assert_close(m.cameras.params, params.expand(2, 4), rtol=0, atol=1e-12)
    assert m.num_observations == 40
    with pytest.raises(InputError, match="track_length"):
        synthesize_reference_map(2, 20, track_length=1)
    with pytest.raises(CameraModelError, match="FISHEYE"):
        synthesize_reference_map(2, 20, camera_model="FISHEYE")
    with pytest.raises(InputError, match="multiple of num_cameras"):
        synthesize_reference_map(3, 20, num_cameras=2)
