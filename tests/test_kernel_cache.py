"""numba's on-disk cache of the kernels follows the whole kernel set, not one file.

A cached kernel embeds the kernels it calls. With numba's own stamps (one source
file each) an edited callee left its unchanged callers' cache in use: a CI run of
a new edge score inside an old refine kernel gave shifts 0.2 mm off. These tests
run a tiny two-file kernel folder in fresh processes, change only the callee, and
check that the caller's result follows; and that the real kernels use the stamp.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from portalign.kernels.cpu import _cache, gradient_correlation, search_program

CALLEE = "from numba import njit\n\n\n@njit(cache=True)\ndef value():\n    return {value}\n"
CALLER = "from callee import value\nfrom numba import njit\n\n\n@njit(cache=True)\ndef twice():\n    return 2 * value()\n"


def _run(folder: Path, user_cache: Path | None = None) -> tuple[int, int]:
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(folder)!r})\n"
        "from portalign.kernels.cpu._cache import register_kernel_folder\n"
        f"register_kernel_folder({str(folder)!r})\n"
        "import caller\n"
        "print(caller.twice(), sum(caller.twice.stats.cache_hits.values()))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    if user_cache is not None:
        env["XDG_CACHE_HOME"] = str(user_cache)  # numba's user-wide cache folder (Linux)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True, env=env)
    result, hits = done.stdout.split()
    return int(result), int(hits)


def test_a_changed_callee_recompiles_its_cached_caller(tmp_path: Path) -> None:
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "callee.py").write_text(CALLEE.format(value=1))
    (folder / "caller.py").write_text(CALLER)
    assert _run(folder)[0] == 2
    # the second process loads the caller from the cache (one hit), so the cache is in use at all
    result, hits = _run(folder)
    assert result == 2 and hits == 1, hits
    # only the callee changes; the caller's file is byte for byte the same
    (folder / "callee.py").write_text(CALLEE.format(value=5))
    assert _run(folder)[0] == 10


def test_the_cache_is_written_outside_the_kernels_folder(tmp_path: Path) -> None:
    """The user's cache folder comes before ``__pycache__`` beside the source: an installed package's folder gets no
    cache that ``pip uninstall`` would leave behind (the left-over folder shadowed a later editable install)."""
    folder = tmp_path / "kernels"
    folder.mkdir()
    (folder / "callee.py").write_text(CALLEE.format(value=3))
    (folder / "caller.py").write_text(CALLER)
    user_cache = tmp_path / "user-cache"
    assert _run(folder, user_cache) == (6, 0)
    assert _run(folder, user_cache) == (6, 1)  # loaded from the cache the first process wrote
    written = sorted(path.name for path in user_cache.rglob("*") if path.suffix in (".nbi", ".nbc"))
    assert any(name.startswith("caller.twice") for name in written), written
    assert not list(folder.rglob("*.nbi")) and not list(folder.rglob("*.nbc"))


def test_fingerprint_follows_every_source_file(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.py").write_text("x = 1\n")
    (folder / "b.py").write_text("y = 1\n")
    _cache.register_kernel_folder(str(folder))
    first = _cache.kernel_fingerprint(str(folder))
    assert len(first) == 64 and _cache.kernel_fingerprint(str(folder)) == first  # computed once per process
    _cache._FOLDERS[str(folder)] = None  # as a new process would
    (folder / "b.py").write_text("y = 2\n")
    assert _cache.kernel_fingerprint(str(folder)) != first


def test_the_kernels_are_stamped_with_the_kernel_set() -> None:
    for kernel in (gradient_correlation, search_program):
        locator = kernel._cache._impl._locator
        assert getattr(type(locator), "_portalign_kernel_set", False), type(locator)
        assert locator.get_source_stamp() == ("portalign-kernel-set", _cache.kernel_fingerprint())
        if os.access(os.path.expanduser("~"), os.W_OK) or os.environ.get("NUMBA_CACHE_DIR"):
            assert not os.path.abspath(locator.get_cache_path()).startswith(_cache.KERNEL_DIR + os.sep), locator


def test_locators_installed_into_a_caching_module_come_first_in_order_and_once() -> None:
    """``install_locators`` on a caching module shaped like numba's (numba-cuda's ``numba.cuda.core.caching`` is):
    the stamped locators go first, the user's folders before the source's ``__pycache__``, and only once."""
    import types

    from numba.core import caching

    fake = types.ModuleType("fake_caching")
    for name in ("_UserProvidedCacheLocator", "_InTreeCacheLocator", "_UserWideCacheLocator"):
        setattr(fake, name, getattr(caching, name, None) or getattr(caching, name.lstrip("_")))
    original = [fake._InTreeCacheLocator, fake._UserWideCacheLocator]
    fake.CacheImpl = type("CacheImpl", (), {"_locator_classes": list(original)})
    assert _cache.install_locators(fake) is True
    classes = fake.CacheImpl._locator_classes
    assert [getattr(c, "_portalign_kernel_set", False) for c in classes] == [True, True, True, False, False]
    assert [c.__mro__[1] for c in classes[:3]] == [fake._UserProvidedCacheLocator, fake._UserWideCacheLocator,
                                                   fake._InTreeCacheLocator]
    assert classes[3:] == original
    assert _cache.install_locators(fake) is True and fake.CacheImpl._locator_classes == classes  # once
    # a module without the classes is left alone
    bare = types.ModuleType("bare")
    bare.CacheImpl = type("CacheImpl", (), {"_locator_classes": []})
    assert _cache.install_locators(bare) is False and bare.CacheImpl._locator_classes == []


def test_the_gpu_kernels_folder_has_its_own_fingerprint() -> None:
    from portalign.kernels.gpu import _cache as gpu_cache

    assert gpu_cache.GPU_KERNEL_DIR in _cache._FOLDERS and _cache.KERNEL_DIR in _cache._FOLDERS
    assert _cache.kernel_fingerprint(gpu_cache.GPU_KERNEL_DIR) != _cache.kernel_fingerprint()
