"""The `swinv2` command line: info, list, convert, demo, and its error lines."""
import math
import re
import subprocess
import sys
import time

import pytest
import torch

from swinv2 import SwinTransformerV2, SwinV2Config, create_model
from swinv2.cli import main

# SPEC section 4, parameters with a 1000-class head.
SPEC_PARAMETERS = {
    "swinv2_tiny_window8_256": "28.35M",
    "swinv2_small_window8_256": "49.73M",
    "swinv2_base_window8_256": "87.92M",
    "swinv2_large_window12to16_192to256": "196.74M",
}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def parameters_line(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("parameters"))


# ------------------------------------------------------------------------------------------- info
@pytest.mark.parametrize("name", sorted(SPEC_PARAMETERS))
def test_info_prints_the_spec_parameter_count(capsys, name):
    code, out, _ = run(capsys, "info", name)
    assert code == 0
    assert parameters_line(out).split()[1] == SPEC_PARAMETERS[name]


def test_info_on_huge_is_fast_and_allocates_nothing():
    # In a fresh process, so that its peak memory is this command's alone. SwinV2-H holds 658M float32
    # parameters, 2.6 GB; built for real its initialisation alone takes tens of seconds on 2 cores.
    script = (
        "import resource, sys; from swinv2.cli import main; code = main(['info', 'swinv2_huge_window12_192']); "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)"
    )
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert re.search(r"parameters\s+658\.\d\dM .*paper: 658M", result.stdout)
    peak_gb = int(result.stdout.split("peak_kb")[1]) / 1024**2
    assert peak_gb < 1.5, f"peak memory {peak_gb:.2f} GB: the model was allocated"
    assert elapsed < 30  # a real SwinV2-H takes longer than this just to initialise


def test_info_on_giant_prints_the_paper_count(capsys):
    code, out, _ = run(capsys, "info", "swinv2_giant_window12_192")
    assert code == 0
    assert parameters_line(out).split()[1] == "3.00B"
    assert "paper: 3.0B" in out


def test_info_overrides_and_json(capsys):
    import json

    code, out, _ = run(capsys, "info", "swinv2_tiny_window8_256", "--img-size", "512", "--window-size", "16",
                       "--pretrained-window-sizes", "8", "8", "8", "8", "--num-classes", "10", "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["config"]["img_size"] == [512, 512]
    assert summary["config"]["num_classes"] == 10
    stages = [part for part in summary["parts"] if part["blocks"]]
    assert [stage["resolution"] for stage in stages] == [[128, 128], [64, 64], [32, 32], [16, 16]]
    # 16x16 in the last stage is no larger than the window: one unshifted window.
    assert [block["shift_size"] for block in stages[3]["blocks"]] == [[0, 0], [0, 0]]
    assert [block["shift_size"] for block in stages[2]["blocks"]][:2] == [[0, 0], [8, 8]]
    assert stages[0]["blocks"][0]["pretrained_window_size"] == [8, 8]
    # A 10-class head: 768 * 10 + 10 parameters instead of 768 * 1000 + 1000.
    assert summary["parameters"] == 28_347_154 - (768 * 1000 + 1000) + (768 * 10 + 10)


# ----------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("argv", [
    ["info", "swinv2_no_such_model"],
    ["info", "swinv2_tiny_window8_256", "--img-size", "100"],
    ["demo", "--image", "/no/such/image.png"],
    ["list", "no_such_pattern"],
    ["experiment", "no_such_experiment"],
])
def test_library_errors_are_one_line_and_exit_2(capsys, argv):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""  # nothing half-done: the demo checks its image before it prints anything
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "Traceback" not in err


def test_module_entry_point_reports_errors_with_exit_2():
    result = subprocess.run([sys.executable, "-m", "swinv2", "info", "nope"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown model 'nope'")


# ------------------------------------------------------------------------------------------- list
def test_list(capsys):
    code, out, _ = run(capsys, "list")
    names = out.split()
    assert code == 0 and names == sorted(names)
    for name in ("swinv2_tiny_window8_256", "swinv2_base_window12to24_192to384", "swinv2_giant_window12_192"):
        assert name in names
    _, out, _ = run(capsys, "list", "tiny")
    assert out.split() == ["swinv2_tiny_window16_256", "swinv2_tiny_window8_256"]
    _, out, _ = run(capsys, "list", "*to384")
    assert out.split() == ["swinv2_base_window12to24_192to384", "swinv2_large_window12to24_192to384"]


# ------------------------------------------------------------------------------------------- demo
def test_demo_runs_end_to_end_with_untrained_weights(capsys):
    code, out, _ = run(capsys, "demo")
    assert code == 0
    assert parameters_line(out).split()[1] == "28.35M"
    assert "UNTRAINED" in out
    assert "input: (1, 3, 256, 256)" in out
    # SPEC: stage i is (256 / 4 / 2^i) square with 96 * 2^i channels.
    for stage in range(4):
        side, channels = 64 // 2**stage, 96 * 2**stage
        assert f"stage {stage} output: (1, {side}, {side}, {channels})" in out
    assert "logits: (1, 1000)" in out
    assert re.search(r"forward time: \d+\.\d ms", out)
    assert "top-" not in out  # no predictions from random weights


def test_demo_with_pretrained_weights_prints_top_5(capsys, tmp_path):
    # A checkpoint whose head ignores the image: weight 0, bias = the logits. Softmax by hand below.
    model = create_model("swinv2_tiny_window8_256")
    state = model.state_dict()
    state["head.weight"] = torch.zeros_like(state["head.weight"])
    bias = torch.zeros(1000)
    bias[[7, 42, 3, 999, 500]] = torch.tensor([6.0, 5.0, 4.0, 3.0, 2.0])
    state["head.bias"] = bias
    checkpoint = tmp_path / "official.pth"
    torch.save({"model": state}, checkpoint)
    del model, state

    from PIL import Image

    image = tmp_path / "gray.png"
    Image.new("L", (300, 260), color=128).save(image)

    code, out, err = run(capsys, "demo", "--pretrained", str(checkpoint), "--image", str(image))
    assert code == 0, err
    assert "UNTRAINED" not in out
    denominator = sum(math.exp(value) for value in (6, 5, 4, 3, 2)) + 995
    expected = [(index, math.exp(value) / denominator) for index, value in zip((7, 42, 3, 999, 500), (6, 5, 4, 3, 2))]
    rows = [line.split(":") for line in out.split("top-5 classes (index: probability):\n")[1].splitlines()]
    assert [(int(index), float(probability)) for index, probability in rows] == [
        (index, pytest.approx(probability, abs=1e-4)) for index, probability in expected
    ]


# ---------------------------------------------------------------------------------------- convert
def tiny_official_checkpoint(path):
    config = SwinV2Config(img_size=32, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=4,
                          num_classes=10)
    state = SwinTransformerV2(config).state_dict()
    torch.save({"model": state}, path)
    return state


def read_state(path):
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return loaded.get("model", loaded) if isinstance(loaded, dict) else loaded


def test_convert_official_to_timm_and_back(capsys, tmp_path):
    original = tiny_official_checkpoint(tmp_path / "official.pth")

    # --img-size means nothing to a weights-only file: the library warns, the CLI says so in one line.
    code, out, err = run(capsys, "convert", str(tmp_path / "official.pth"), str(tmp_path / "timm.pth"),
                         "--from", "official", "--to", "timm", "--img-size", "32")
    assert code == 0, err
    assert "timm.pth" in out
    assert err.startswith("warning: ") and len(err.strip().splitlines()) == 1
    timm = read_state(tmp_path / "timm.pth")
    # SPEC section 2: in timm, the patch merging belongs to the next stage and the head is head.fc.
    assert torch.equal(timm["layers.1.downsample.reduction.weight"], original["layers.0.downsample.reduction.weight"])
    assert torch.equal(timm["head.fc.weight"], original["head.weight"])
    assert "layers.0.downsample.reduction.weight" not in timm

    code, _, err = run(capsys, "convert", str(tmp_path / "timm.pth"), str(tmp_path / "back.pth"),
                       "--from", "auto", "--to", "official")
    assert code == 0, err
    back = read_state(tmp_path / "back.pth")
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_convert_official_to_a_hugging_face_directory(capsys, tmp_path):
    import json

    from safetensors.torch import load_file

    original = tiny_official_checkpoint(tmp_path / "official.pth")
    code, _, err = run(capsys, "convert", str(tmp_path / "official.pth"), str(tmp_path / "hf"), "--to", "hf",
                       "--img-size", "32", "--window-size", "4")
    assert code == 0, err
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["image_size"], config["window_size"], config["embed_dim"]) == (32, 4, 16)
    hf = load_file(tmp_path / "hf" / "model.safetensors")
    # SPEC section 2: qkv split by rows into query, key, value; q_bias -> query.bias.
    qkv = original["layers.2.blocks.1.attn.qkv.weight"]
    prefix = "swinv2.encoder.layers.2.blocks.1.attention.self."
    for index, part in enumerate(("query", "key", "value")):
        assert torch.equal(hf[prefix + part + ".weight"], qkv[index * 64 : (index + 1) * 64])
    assert torch.equal(hf[prefix + "query.bias"], original["layers.2.blocks.1.attn.q_bias"])
    assert torch.equal(hf["classifier.weight"], original["head.weight"])


def test_convert_of_a_missing_file_is_an_error_line(capsys, tmp_path):
    code, _, err = run(capsys, "convert", str(tmp_path / "missing.pth"), str(tmp_path / "out.pth"))
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------- experiment
def test_experiment_lists_each_script_under_experiments(capsys):
    from pathlib import Path

    scripts = {path.stem.replace("_", "-") for path in (Path(__file__).parent.parent / "experiments").glob("*.py")}
    code, out, _ = run(capsys, "experiment")
    assert code == 0
    listed = {line.split()[0] for line in out.splitlines()[:-2] if line.strip()}
    assert listed == scripts - {"--init--", "common"}
    assert {"stability", "resolution-gap", "label-efficiency"} <= listed
