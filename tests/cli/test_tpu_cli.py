"""TPU clusters on the command line: multi-slice --hw, --ici, explain's map, and bad input as one line."""
import json

from tests.cli.test_bad_input import assert_one_line_error

TPU = ["estimate", "--model", "llama3.1-8b", "--hw", "tpu-v5ex2x256", "--dp", "512", "--zero", "3",
       "--global-batch", "512"]


def test_a_slice_shape_that_does_not_hold_the_devices(run_cli, tmp_path):
    path = tmp_path / "pod.yaml"
    path.write_text("hardware: tpu-v5p\ndevices: 4096\nslice: 16x16x12\n")
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", str(path)),
                          match="slice 16x16x12 holds 3072 chips, not 4096; shapes that hold 4096: 16x16x16")


def test_a_count_beyond_one_slice_names_the_multislice_form(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "tpu-v5px8192"),
                          match="such as tpu-v5px2x4096")


def test_a_map_onto_torus_axes_that_do_not_exist(run_cli):
    assert_one_line_error(run_cli(*TPU, "--ici", "dp=x+z+dcn"),
                          match="torus axis 'z' does not exist on a 16x16 slice (its axes are x, y")
    assert_one_line_error(run_cli("plan", "--model", "gpt3", "--hw", "h100x64", "--ici", "tp=x"),
                          match="--ici lays mesh axes over a TPU torus")


def test_a_tpu_without_the_dtype_says_what_it_has(run_cli):
    assert_one_line_error(run_cli("estimate", "--model", "gpt3", "--hw", "tpu-v4x64", "--dtype", "fp8"),
                          match="tpu-v4 has no dense fp8 rate (it has bf16)")
    assert_one_line_error(run_cli("plan", "--model", "gpt3", "--hw", "tpu-v6ex256", "--dtype", "fp8"),
                          match="tpu-v6e has no dense fp8 rate (it has bf16)")


def test_explain_shows_the_map_and_the_links_of_each_collective(run_cli):
    rc, out, err = run_cli("explain", *TPU[1:], "--ici", "dp=x+y+dcn")
    assert rc == 0, err
    assert "ici     slice 16x16 x 2 over DCN: dp over x16 ring * y16 ring * dcn2" in out
    assert "fsdp_allgather_fwd" in out and "on x+y+dcn" in out
    rc, out, err = run_cli(*TPU, "--format", "json")
    assert rc == 0, err
    assert json.loads(out)["layout"]["ici"].startswith("dp=")
