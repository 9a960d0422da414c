import pickle

import pytest
import torch
from safetensors.torch import save_file

from stbench.errors import StbenchError
from stbench.nn.encoder import create_encoder, packaged_weights_path, read_state_dict


def test_packaged_efficientnet_lite0_weights_load_offline():
    path = packaged_weights_path("efficientnet_lite0")
    assert path is not None and path.is_file()
    file_state = torch.load(path, map_location="cpu", weights_only=True)
    enc = create_encoder("efficientnet_lite0", pretrained=True)
    assert enc.num_features == 1280
    assert torch.equal(enc.conv_stem.weight, file_state["_conv_stem.weight"])
    assert torch.equal(enc.blocks[0][0].conv_dw.weight, file_state["_blocks.0._depthwise_conv.weight"])
    random_init = create_encoder("efficientnet_lite0", pretrained=False)
    assert not torch.equal(random_init.conv_stem.weight, enc.conv_stem.weight)


def test_local_weights_file_and_url(tmp_path, http_server, monkeypatch):
    monkeypatch.setenv("STBENCH_CACHE", str(tmp_path / "cache"))
    src = create_encoder("test_efficientnet", pretrained=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    loaded = create_encoder("test_efficientnet", pretrained=False, weights=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), loaded.state_dict().values()))
    torch.save(src.state_dict(), tmp_path / "w.pth")
    url = http_server(tmp_path) + "w.pth"
    via_url = create_encoder("test_efficientnet", pretrained=True, weights=url)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), via_url.state_dict().values()))
    assert list((tmp_path / "cache" / "weights").glob("*-w.pth"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(StbenchError, match="cannot load weights"):
        read_state_dict(bad)


def test_unreachable_hub_names_both_ways_out(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(StbenchError) as e:
        create_encoder("test_resnet", pretrained=True)
    msg = str(e.value)
    assert "cannot fetch ImageNet weights for encoder 'test_resnet'" in msg
    assert "-o weights=PATH" in msg and "-o pretrained=false" in msg and "\n" not in msg


def test_mismatched_weights_and_unknown_encoder(tmp_path):
    save_file({"a": torch.zeros(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(StbenchError, match="do not match the encoder"):
        create_encoder("test_resnet", pretrained=False, weights=str(tmp_path / "x.safetensors"))
    with pytest.raises(StbenchError, match="unknown timm encoder 'resnet_nope'"):
        create_encoder("resnet_nope", pretrained=False)
    with pytest.raises(StbenchError, match="does not exist"):
        create_encoder("test_resnet", pretrained=False, weights=str(tmp_path / "missing.pth"))


def test_input_helpers_crop_resize_and_channel_statistics():
    import numpy as np

    from stbench.nn.inputs import centre_crop, channel_stats, resize

    x = torch.arange(2 * 3 * 10 * 8, dtype=torch.float32).reshape(2, 3, 10, 8)
    assert torch.equal(centre_crop(x, 4), x[..., 3:7, 2:6])  # an odd margin: one pixel nearer the top
    assert torch.equal(centre_crop(x, 9), x[..., 0:9, :]) and torch.equal(centre_crop(x, 12), x)
    assert centre_crop(x, None) is x
    square = x[..., :8, :]
    assert resize(x, 5).shape == (2, 3, 5, 5) and resize(square, 8) is square and resize(square, None) is square
    batches = [torch.rand(4, 3, 5, 5), torch.rand(2, 3, 5, 5)]
    pixels = torch.cat(batches).permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    for ddof in (0, 1):
        mean, var = channel_stats(iter(batches), dim=1, ddof=ddof)
        np.testing.assert_allclose(mean.numpy(), pixels.mean(0), rtol=1e-12)
        np.testing.assert_allclose(var.numpy(), pixels.var(0, ddof=ddof), rtol=1e-9)
    mean, _ = channel_stats([torch.from_numpy(pixels)], dim=-1)
    np.testing.assert_allclose(mean.numpy(), pixels.mean(0), rtol=1e-12)
    with pytest.raises(ValueError, match="no pixels"):
        channel_stats([])
