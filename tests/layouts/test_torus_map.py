"""Mesh axes laid over a TPU slice's torus axes: where each group lies, the maps the search tries, --ici."""
import numpy as np
import pytest

from parplan.errors import ParplanError
from parplan.layouts.layout import Layout
from parplan.layouts.torus_map import (describe_map, enumerate_maps, format_map, group_on_torus, parse_map)
from parplan.specs.cluster import load_cluster


def test_split_torus_axis_inner_axis_is_a_line_outer_a_strided_ring():
    """tp takes 4 neighbouring chips of a 16-chip ring (a line: no wraparound of its own); dp takes every
    4th chip, which close the ring through the wraparound, each link shared by the 4 dp groups."""
    cl = load_cluster("tpu-v5ex256")
    lay = Layout(tp=4, dp=64, order=("tp", "cp", "dp", "pp"),
                 torus_map=parse_map("tp=x:4,dp=x:4+y", {"tp": 4, "cp": 1, "dp": 64, "pp": 1}, cl))
    tp = group_on_torus(4, lay.stride("tp"), lay, cl)
    assert [int(s) for s in tp.sizes] == [4, 1] and not bool(tp.rings[0]) and int(tp.strides[0]) == 1
    dp = group_on_torus(64, lay.stride("dp"), lay, cl)
    assert [int(s) for s in dp.sizes] == [4, 16] and [int(s) for s in dp.strides] == [4, 1]
    assert [bool(r) for r in dp.rings] == [True, True] and int(dp.links) == 3


def test_hsdp_shard_and_replica_groups_inside_dp():
    """HSDP over dp = x16 * y16 * dcn2: shards within the slice, replicas across it over DCN."""
    cl = load_cluster("tpu-v5ex2x256")
    lay = Layout(dp=512, zero=3, shard_group=256, order=("tp", "cp", "dp", "pp"),
                 torus_map=parse_map("dp=x+y+dcn", {"tp": 1, "cp": 1, "dp": 512, "pp": 1}, cl))
    shard = group_on_torus(256, lay.stride("dp"), lay, cl)
    assert [int(s) for s in shard.sizes] == [16, 16] and int(shard.dcn) == 1
    replicas = group_on_torus(2, 256, lay, cl)
    assert [int(s) for s in replicas.sizes] == [1, 1] and int(replicas.dcn) == 2
    # A group starting inside a torus axis: the outer 8 of y's 16 chips, 2 apart, no ring of their own.
    half = group_on_torus(8, 32, lay, cl)
    assert [int(s) for s in half.sizes] == [1, 8] and int(half.strides[1]) == 2 and bool(half.rings[1])


def test_groups_of_candidate_arrays():
    cl = load_cluster("tpu-v5px64")
    tmap = (("tp", (np.array([4, 2]), np.array([1, 2]), np.array([1, 1]), np.array([1, 1]))),
            ("dp", (np.array([1, 2]), np.array([4, 2]), np.array([4, 4]), np.array([1, 1]))))
    lay = Layout(tp=4, dp=16, order=("tp", "dp"), torus_map=tmap)
    g = group_on_torus(np.array([4, 4]), np.array([1, 1]), lay, cl)
    assert [list(s) for s in g.sizes] == [[4, 2], [1, 2], [1, 1]]


def test_equal_torus_axes_count_once():
    """16x16x16: tp=8 over one, two or three axes (8, 4x2, 2x2x2) are the distinct maps; on 12x16x16 the
    12-long axis is not interchangeable with the 16s."""
    maps = enumerate_maps({"tp": 8, "cp": 1, "dp": 512, "pp": 1}, load_cluster("tpu-v5px4096"))
    assert sorted(sorted(int(f) for f in dict(m)["tp"][:3] if f > 1) for m in maps) == [[2, 2, 2], [2, 4], [8]]
    cl = load_cluster("tpu-v4x2x3072")
    texts = [format_map(m, cl) for m in enumerate_maps({"tp": 12, "cp": 1, "dp": 512, "pp": 1}, cl)]
    assert "tp=x:12,dp=y:16+z:16+dcn:2" in texts and all("dcn:2" in t.split(",dp=")[1] for t in texts)


def test_only_data_and_pipeline_cross_slices():
    cl = load_cluster("tpu-v5ex2x256")
    assert enumerate_maps({"tp": 512, "cp": 1, "dp": 1, "pp": 1}, cl) == []
    # Both data parallelism and the pipeline may take the slices (MaxText's dcn_data / dcn_pipeline).
    maps = enumerate_maps({"tp": 1, "cp": 1, "dp": 256, "pp": 2}, cl)
    assert {(dict(m)["dp"][-1], dict(m)["pp"][-1]) for m in maps} == {(2, 1), (1, 2)}
    with pytest.raises(ParplanError, match="only dp and pp cross slices over the data-centre network, not tp"):
        parse_map("tp=x:4+dcn,dp=x:4+y", {"tp": 8, "cp": 1, "dp": 64, "pp": 1}, cl)


def test_describe_names_rings_lines_and_slices():
    cl = load_cluster("tpu-v4x2x3072")
    tmap = parse_map("tp=x,dp=y+z+dcn", {"tp": 12, "cp": 1, "dp": 512, "pp": 1}, cl)
    assert describe_map(tmap, cl) == ("slice 12x16x16 x 2 over DCN: tp over x12 ring; "
                                      "dp over y16 ring * z16 ring * dcn2")


@pytest.mark.parametrize("text, words", [
    ("tp=z", ["torus axis 'z' does not exist on a 16x16 slice", "its axes are x, y"]),
    ("tp=x:8,dp=x:2+y", ["tp=4 but its parts (x:8) hold 8 chips"]),
    ("tp=x:4,dp=y", ["dp=64 but its parts (y:16) hold 16 chips"]),
    ("tp=x,dp=x+y", ["torus axis 'x' is shared by tp, dp", "x:2"]),
    ("ep=x", ["AXIS one of tp, cp, dp, pp"]),
])
def test_bad_maps_are_one_line_errors(text, words):
    cl = load_cluster("tpu-v5ex256")
    with pytest.raises(ParplanError) as exc:
        parse_map(text, {"tp": 4, "cp": 1, "dp": 64, "pp": 1}, cl)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_torus_axis_left_unused_is_refused():
    with pytest.raises(ParplanError, match="torus axis y holds 16 but the axes laid over it take 4"):
        parse_map("tp=x:4,dp=x:4+y:4", {"tp": 4, "cp": 1, "dp": 16, "pp": 1}, load_cluster("tpu-v5ex256"))
