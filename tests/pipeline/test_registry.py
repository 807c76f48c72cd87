import pytest

from pipeline.registry import EXTRACTORS, Registry, RegistryError


def test_duplicate_name_refused_and_unknown_lists_known():
    reg = Registry("thing")

    class A:
        name = "a"

    class B:
        name = "a"

    reg.register(A)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register(B)
    with pytest.raises(RegistryError, match="known: a"):
        reg.get("zzz")


def test_builtin_extractors_registered():
    import extractors  # noqa: F401

    assert {"audio", "logmel"} <= set(EXTRACTORS.names())
