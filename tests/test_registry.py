import pytest

from stbench.errors import PluginError, UnknownNameError
from stbench.registry import Registry


def make():
    r = Registry("model")
    r.add("heclip", object(), "stbench_heclip")
    r.add("bleep", object(), "stbench_bleep")
    r.add("random-k", object(), "stbench_baselines")
    return r


def test_get_unknown_suggests_close_name():
    with pytest.raises(UnknownNameError) as e:
        make().get("heclp")
    assert str(e.value) == "unknown model 'heclp'; did you mean 'heclip'?"


def test_get_unknown_without_close_name_lists_known():
    with pytest.raises(UnknownNameError, match=r"unknown model 'zzz'; known: bleep, heclip, random-k"):
        make().get("zzz")


def test_duplicate_names_both_plugins():
    r = make()
    with pytest.raises(PluginError, match="'heclip' is registered by both plugin 'stbench_heclip' and plugin 'thirdparty'"):
        r.add("heclip", object(), "thirdparty")


def test_names_glob_and_origin():
    r = make()
    assert r.names() == ["bleep", "heclip", "random-k"]
    assert r.names("*e*") == ["bleep", "heclip"]
    assert r.origin("bleep") == "stbench_bleep"
    assert "heclip" in r and "nope" not in r and len(r) == 3
