"""`miniplaces export`: every model to ONNX and TorchScript within tolerance; safetensors folders through predict."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from miniplaces.cli import main
from miniplaces.data import read_categories
from miniplaces.engine.checkpoint import describe_model, save_checkpoint
from miniplaces.layers.unfold_conv import UnfoldConv2d
from miniplaces.models import create_model, list_models
from miniplaces.models import io as mio
from miniplaces.workflows import export as ex

TORCH_THREADS = 1
SIZE = 64  # every registered model takes 64×64 (the ViTs resample their position embeddings)


def sharpened(name: str, num_classes: int = 4) -> nn.Module:
    """A random model whose logits spread over several units, so the tolerance is tested on real magnitudes."""
    model = create_model(name, num_classes=num_classes).eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(head.weight, std=2.0)
    return model


def images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def make_checkpoint(path: Path, categories: list[str], root: Path | None = None, name: str = "simplenet") -> Path:
    model = sharpened(name, len(categories))
    config = {"image_size": 32, **({"root": str(root)} if root else {})}
    return save_checkpoint({"model": describe_model(model), "state_dict": model.state_dict(),
                            "categories": categories, "config": config}, path)


@pytest.mark.parametrize("stride,padding,dilation,kernel", [(1, 1, 1, 3), (2, 3, 1, 7), (2, 0, 1, 1), (1, 2, 2, 3)])
def test_traceable_unfold_conv_equals_the_layer(stride: int, padding: int, dilation: int, kernel: int) -> None:
    conv = UnfoldConv2d(5, 6, kernel, stride=stride, padding=padding, dilation=dilation).eval()
    model = ex.traceable(nn.Sequential(conv))
    assert isinstance(model[0], ex.TraceableUnfoldConv2d) and model[0].weight is not conv.weight  # a copy
    x = torch.randn(3, 5, 11, 13)
    with torch.no_grad():
        torch.testing.assert_close(model(x), conv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list_models())
def test_onnx_matches_pytorch_with_a_dynamic_batch(name: str, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = sharpened(name)
    result = ex.export_model(model, "onnx", tmp_path, images(3, 1), ["a", "b", "c", "d"], SIZE)
    assert result.model_file == tmp_path / "model.onnx" and result.batch_sizes == (1, 3)
    assert result.max_abs_diff <= ex.ATOL + ex.RTOL * 100
    graph = onnx.load(str(result.model_file)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # Independently of the export's own check: a batch size it never saw.
    session = ort.InferenceSession(str(result.model_file), providers=["CPUExecutionProvider"])
    x = images(5, 2)
    got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    with torch.no_grad():
        expected = model(x)
    assert expected.abs().max() > 1  # logits of real magnitude, not all near 0
    torch.testing.assert_close(got, expected, atol=ex.ATOL, rtol=ex.RTOL)
    config = mio.read_export_config(tmp_path)
    assert config["architecture"] == name and config["input_size"] == [3, SIZE, SIZE]
    assert config["label_names"] == ["a", "b", "c", "d"] and config["normalization"]["inside_model"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", list_models())
def test_torchscript_matches_pytorch(name: str, tmp_path: Path) -> None:
    model = sharpened(name)
    result = ex.export_model(model, "torchscript", tmp_path, images(3, 1), image_size=SIZE)
    loaded = torch.jit.load(str(result.model_file))
    x = images(4, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=ex.ATOL, rtol=ex.RTOL)
    assert mio.read_export_config(tmp_path)["format"] == "torchscript"


def test_an_export_beyond_the_tolerance_is_refused_and_not_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ex, "ATOL", -1.0)  # no difference, not even 0, is within a negative tolerance
    with pytest.raises(ex.ExportError, match="differs from PyTorch by up to .*nothing was written"):
        ex.export_model(sharpened("simplenet"), "torchscript", tmp_path / "out", images(2, 0))
    assert not (tmp_path / "out").exists()


def test_safetensors_folder_round_trips_through_predict(synth_root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("safetensors")
    categories = read_categories(synth_root)
    checkpoint = make_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", categories, synth_root)
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors"]) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "run" / "export" / "safetensors"  # the default: <run>/export/<format>
    assert str(folder / "model.safetensors") in out and "val images of" in out
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    val = sorted((synth_root / "images" / "val").iterdir())[:6]
    top = {}
    for source in (checkpoint, folder):
        assert main(["predict", "--checkpoint", str(source), "--device", "cpu", "--json", *map(str, val)]) == 0
        top[source] = json.loads(capsys.readouterr().out)
    assert top[checkpoint] == top[folder]  # same labels, names and probabilities
    assert all(len(d["top"]) == 4 for d in top[folder])  # top 5 of 4 classes
    model, info = mio.load_model_any(folder)
    assert info["categories"] == categories and info["config"]["image_size"] == 32
    assert describe_model(model) == {"name": "simplenet", "kwargs": {"num_classes": 4}}


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    pytest.importorskip("safetensors")
    ex.export_model(sharpened("simplenet"), "safetensors", tmp_path / "st", images(2, 0), ["a", "b", "c", "d"])
    return tmp_path / "st"


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("changes,message", [
    ({"architecture": None}, r"config\.json: key 'architecture' is missing"),
    ({"label_names": "abcd"}, r"config\.json: key 'label_names' is 'abcd', expected a list"),
    ({"format_version": 9}, r"config\.json: key 'format_version' is 9, this miniplaces reads 1"),
    ({"input_size": [3, 32]}, r"config\.json: key 'input_size' is \[3, 32\]"),
    ({"format": "onnx", "model_file": "model.onnx"}, r"holds the onnx export of a model"),
    ({"architecture": "nosuchnet"}, r"config\.json: keys 'architecture'/'model_args' do not build a model"),
    ({"architecture": "vit"}, r"model\.safetensors does not fit the model of .*config\.json \(missing: "),
    ({"model_args": {"num_classes": 7}, "num_classes": 7, "label_names": []},
     r"wrong shape: fc\.weight \(4, 512\) \(model \(7, 512\)\)"),
    ({"model_args": {"num_classes": 7}, "num_classes": 7},
     r"config\.json: key 'label_names' has 4 names for a model of 7 classes"),
    ({"model_args": {"num_classes": 7}},
     r"config\.json: key 'model_args\.num_classes' is 7 but key 'num_classes' is 4"),
    ({"model_args": {}, "label_names": []},
     r"key 'num_classes' is 4 but 'architecture'/'model_args' build a model of 100"),
    # Bounded as the config file is: nothing is allocated for a head of 10^8 classes or a 1-pixel input.
    ({"num_classes": -3}, r"config\.json: key 'num_classes' is -3, expected an integer from 1 to 100000"),
    ({"num_classes": 10**8, "model_args": {"num_classes": 10**8}, "label_names": []},
     r"config\.json: key 'num_classes' is 100000000, expected an integer from 1 to 100000"),
    ({"num_classes": True}, r"config\.json: key 'num_classes' is True, expected the number of classes"),
    ({"input_size": [3, 1, 1]}, r"config\.json: key 'input_size' is \[3, 1, 1\], expected \[3, S, S\] with S from 16"),
    ({"input_size": [3, 4096, 4096]}, r"key 'input_size' is \[3, 4096, 4096\]"),
    ({"label_names": ["a", 1, "c", "d"]}, r"key 'label_names' must hold strings only"),
    ({"normalization": {"inside_model": True, "mean": [0.5, 0.5, float("nan")], "std": [1, 1, 1]}},
     r"config\.json: key 'normalization' is .*expected inside_model with 3 finite means"),
    ({"library": None}, r"config\.json was not written by miniplaces \(key 'library' is None"),
    ({"model_file": "../../elsewhere.bin"},
     r"key 'model_file' is '\.\./\.\./elsewhere\.bin', expected 'model\.safetensors'"),
])
def test_a_bad_export_folder_is_a_clean_error(exported: Path, changes: dict, message: str) -> None:
    edit_config(exported, **changes)
    with pytest.raises(mio.ExportError, match=message):
        mio.load_exported(exported)


def test_unreadable_export_folders(exported: Path, tmp_path: Path) -> None:
    (exported / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(mio.ExportError, match=r"cannot read .*model\.safetensors: it is truncated"):
        mio.load_exported(exported)
    (exported / "config.json").write_text("{")
    with pytest.raises(mio.ExportError, match=r"config\.json is not valid JSON"):
        mio.load_exported(exported)
    (exported / "config.json").write_text("[1, 2]")
    with pytest.raises(mio.ExportError, match=r"config\.json holds a JSON list, expected an object"):
        mio.load_exported(exported)
    (tmp_path / "empty").mkdir()
    with pytest.raises(mio.ExportError, match="neither a run folder nor an export folder: it holds no "
                                              "checkpoints/best.pt and no config.json"):
        mio.load_model_any(tmp_path / "empty")


def test_cli_errors_are_one_line(synth_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", read_categories(synth_root))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    cases = [
        (["--checkpoint", str(checkpoint), "--format", "keras"], "unknown export format 'keras'; choose one of"),
        (["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(blocker / "out")],
         f"cannot write the export to {blocker / 'out'}"),
        (["--checkpoint", str(garbage), "--format", "torchscript"], f"cannot read checkpoint {garbage}"),
        (["--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx"], "does not exist"),
    ]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    cases.append((["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "o")],
                  "needs the onnxruntime package, which is not installed: pip install 'miniplaces[export]'"))
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_one_folder_holds_one_export(exported: Path) -> None:
    with pytest.raises(ex.ExportError, match=r"already holds the safetensors export .* to another folder"):
        ex.export_model(sharpened("simplenet"), "torchscript", exported, images(2, 0))
    assert not (exported / "model.torchscript.pt").exists()
    again = ex.export_model(sharpened("simplenet"), "safetensors", exported, images(2, 0))  # the same format: replaced
    assert again.max_abs_diff == 0.0 and mio.read_export_config(exported)["label_names"] == []


def rewrite_weights(folder: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    st = pytest.importorskip("safetensors.torch")
    tensors = st.load_file(str(folder / "model.safetensors"))
    change(tensors)
    st.save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("change,message", [
    (lambda t: t.update({"fc.weight": t["fc.weight"].to(torch.int64)}),
     r"model\.safetensors does not fit .*\(wrong dtype: fc\.weight torch\.int64 \(model torch\.float32\)\)"),
    (lambda t: t["fc.bias"].__setitem__(1, float("nan")),
     r"model\.safetensors: tensor fc\.bias holds NaN or infinite values; re-export the model"),
    (lambda t: t["fc.weight"].__setitem__((0, 0), float("inf")), r"tensor fc\.weight holds NaN or infinite"),
])
def test_tampered_weights_are_refused(exported: Path, change: Callable[[dict[str, torch.Tensor]], None],
                                      message: str) -> None:
    rewrite_weights(exported, change)
    with pytest.raises(mio.ExportError, match=message):
        mio.load_exported(exported)


def test_a_tampered_export_is_one_error_line_in_predict(exported: Path, synth_root: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    edit_config(exported, num_classes=-3)
    image = sorted((synth_root / "images" / "val").iterdir())[0]
    assert main(["predict", "--checkpoint", str(exported), "--device", "cpu", str(image)]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {exported / 'config.json'}: key 'num_classes' is -3, expected an integer from 1 to "
                   "100000; re-export the model\n")


def test_the_meta_dry_run_refuses_a_huge_model_before_allocating_it(exported: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    real = mio._build

    def spy(config: dict, path: Path) -> nn.Module:
        model = real(config, path)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(mio, "_build", spy)
    # The largest head allowed (100000 × 512 floats, 200 MB) is compared with the file's 4 × 512 by shape alone.
    edit_config(exported, num_classes=100_000, model_args={"num_classes": 100_000}, label_names=[])
    with pytest.raises(mio.ExportError, match=r"wrong shape: fc\.weight \(4, 512\) \(model \(100000, 512\)\)"):
        mio.load_exported(exported)
    assert built == ["meta"]  # refused from the shapes alone; the real model was never built


@pytest.mark.parametrize("content", [None, "[1, 2]", "{not json", '{"model_type": "bert", "vocab_size": 30522}'])
def test_a_folder_export_did_not_write_is_refused(tmp_path: Path, content: str | None) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    own = folder / "model.torchscript.pt"
    own.write_bytes(b"the user's own model")
    if content is not None:
        (folder / "config.json").write_text(content)
    with pytest.raises(ex.ForeignFolderError, match="not written by miniplaces export") as caught:
        ex.export_model(sharpened("simplenet"), "torchscript", folder, images(2, 0))
    assert "None export" not in str(caught.value)
    assert own.read_bytes() == b"the user's own model"
    assert content is None or (folder / "config.json").read_text() == content
    result = ex.export_model(sharpened("simplenet"), "torchscript", folder, images(2, 0), overwrite=True)
    assert result.model_file == own and mio.read_export_config(folder)["format"] == "torchscript"


def test_export_out_refuses_a_foreign_folder_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checkpoint = make_checkpoint(tmp_path / "c.pt", ["a", "b", "c", "d"])
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert"}')
    args = ["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(folder)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {folder / 'config.json'} is a JSON object of another program") and "None" not in err
    assert err.endswith("choose another output folder, or pass --force to replace it\n") and err.count("\n") == 1
    assert not (folder / "model.torchscript.pt").exists()
    assert main([*args, "--force"]) == 0
    assert mio.read_export_config(folder)["format"] == "torchscript"
