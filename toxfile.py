"""tox's inline plugin: free each environment's disk once it has run, when asked to.

The matrix installs PyTorch and TensorFlow again in most of its ten environments: 23 GB when all of
them are kept, which is more than a CI machine may have free (a run failed with "No space left on
device" in its eighth environment). With ``XAI_TOOLBOX_TOX_PRUNE=1`` (set by ``.ci/run``, which
always starts from a fresh clone and so never reuses an environment) each environment's installed
files are deleted as soon as it is torn down; the peak is then the largest single environment
(about 4 GB, ``models``). Its ``tmp`` folder stays: the browser screenshots and the built site are
kept there for whoever reads the run afterwards. A local ``tox`` keeps its environments, to reuse.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tox.plugin import impl
from tox.tox_env.api import ToxEnv
from tox.tox_env.runner import RunToxEnv

_PRUNE = "XAI_TOOLBOX_TOX_PRUNE"


@impl
def tox_env_teardown(tox_env: ToxEnv) -> None:
    if os.environ.get(_PRUNE, "") in ("", "0") or not isinstance(tox_env, RunToxEnv):
        return
    env_dir = Path(tox_env.env_dir)
    keep = Path(tox_env.conf["env_tmp_dir"]).resolve()
    if not env_dir.is_dir():
        return
    freed = 0
    for child in env_dir.iterdir():
        if child.resolve() == keep:
            continue
        freed += _size(child)
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
    print(f"{tox_env.conf.name}: {_PRUNE} freed {freed / 2**30:.1f} GiB ({env_dir})", flush=True)


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
