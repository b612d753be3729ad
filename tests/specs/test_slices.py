"""TPU slices: the shapes a chip count takes, which axes wrap, multi-slice clusters, and bad input."""
import pytest

from parplan.errors import ParplanError
from parplan.specs.cluster import cluster_from_dict, load_cluster
from parplan.specs.hardware import load_hardware
from parplan.specs.slices import default_slice_shape, format_shape, wraps


def test_default_shapes_are_googles_listed_shapes():
    """Google Cloud TPU docs list v5p slices 2x2x1 ... 16x16x24 and v5e slices 1x1 ... 16x16."""
    v5p = load_hardware("tpu-v5p").torus
    listed = {4: "1x2x2", 8: "2x2x2", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8", 512: "8x8x8",
              1024: "8x8x16", 2048: "8x16x16", 4096: "16x16x16", 6144: "16x16x24"}
    assert {n: format_shape(default_slice_shape(v5p, n)) for n in listed} == listed
    v5e = load_hardware("tpu-v5e").torus
    listed = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
    assert {n: format_shape(default_slice_shape(v5e, n)) for n in listed} == listed
    # A v4 pod of 4096 chips splits into two 3072-chip slices of whole cubes (PaLM's pods).
    assert default_slice_shape(load_hardware("tpu-v4").torus, 3072) == (12, 16, 16)


def test_wraparound_rules():
    """v4/v5p: every axis of a slice of whole 4x4x4 cubes wraps, none of a smaller one; v5e/v6e: an axis of
    16 chips wraps ("a TPU v5e 8x16 will have a wraparound on the longer axis")."""
    v5p, v5e = load_hardware("tpu-v5p").torus, load_hardware("tpu-v5e").torus
    assert wraps(v5p, (4, 4, 8)) == (True, True, True)
    assert wraps(v5p, (2, 4, 4)) == (False, False, False)
    assert wraps(v5e, (8, 16)) == (False, True)
    assert wraps(v5e, (4, 4)) == (False, False)


def test_multi_slice_clusters():
    cl = load_cluster("tpu-v5px2x4096")
    assert (cl.devices, cl.slices, cl.slice_shape, cl.slice_devices) == (8192, 2, (16, 16, 16), 4096)
    assert cl.label == "2 x 4096 tpu-v5p (2 slices of 16x16x16)"
    cl = cluster_from_dict({"hardware": "tpu-v5p", "slices": 2, "slice": "16x16x12"}, "file")
    assert (cl.devices, cl.slice_shape, cl.wraps) == (6144, (16, 16, 12), (True, True, True))
    cl = cluster_from_dict({"hardware": "tpu-v5e", "devices": 256, "slice": [16, 16], "wrap": [True, False]}, "f")
    assert cl.wraps == (True, False)


@pytest.mark.parametrize("spec, words", [
    ("tpu-v5px8192", ["exceed its largest slice of 6144", "tpu-v5px2x4096"]),
    ("tpu-v4x6144", ["exceed its largest slice of 4096", "tpu-v4x2x3072"]),
    ("tpu-v5ex17", ["no slice of 16x16 or less holds 17 chips", "such as 16 (4x4)"]),
    ("a100x2x8", ["not a TPU", "a100-80gbxCOUNT"]),
])
def test_counts_that_no_slice_holds_are_refused(spec, words):
    """A cluster larger than one slice was once split silently (6144 + 2048 for tpu-v5px8192)."""
    with pytest.raises(ParplanError) as exc:
        load_cluster(spec)
    assert all(w in str(exc.value) for w in words), str(exc.value)


@pytest.mark.parametrize("data, words", [
    ({"hardware": "tpu-v5p", "devices": 4096, "slice": "16x16x12"}, ["16x16x12", "3072", "not 4096"]),
    ({"hardware": "tpu-v5p", "devices": 4096, "slice": "16x16x16x2"}, ["3 positive whole sides"]),
    ({"hardware": "tpu-v5p", "devices": 8192, "slice": "16x16x32"}, ["does not fit the largest slice 16x16x24"]),
    ({"hardware": "tpu-v5p", "devices": 1000, "slice": "10x10x10", "slices": 2}, ["10x10x10 holds 1000 chips, not 500"]),
    ({"hardware": "a100-80gb", "devices": 64, "slices": 2}, ["not a TPU"]),
    ({"hardware": "tpu-v5e", "devices": 256, "wrap": [True]}, ["one true/false per axis"]),
])
def test_bad_slices_are_one_line_errors(data, words):
    with pytest.raises(ParplanError) as exc:
        cluster_from_dict(data, "cluster.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_slice_that_does_not_hold_the_count_says_what_does():
    with pytest.raises(ParplanError) as exc:
        cluster_from_dict({"hardware": "tpu-v5p", "devices": 4096, "slice": "16x16x12"}, "f")
    assert "shapes that hold 4096: 16x16x16" in str(exc.value)
