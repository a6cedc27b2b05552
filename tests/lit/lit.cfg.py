# lit configuration for msd's FileCheck tests (run by tests/test_lit.py, or `lit tests/lit`).
import os
import shutil
import sys

import lit.formats

config.name = "msd"  # noqa: F821 (lit injects `config`)
config.test_format = lit.formats.ShTest(execute_external=False)  # noqa: F821
config.suffixes = [".mlir"]  # noqa: F821
config.test_source_root = os.path.dirname(__file__)  # noqa: F821
config.excludes = ["Output", "inputs"]  # noqa: F821

# Tools come from the environment lit runs in (the project's venv).
bindir = os.path.dirname(sys.executable)
config.environment["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")  # noqa: F821
filecheck = shutil.which("filecheck", path=config.environment["PATH"])  # noqa: F821
msd_opt = shutil.which("msd-opt", path=config.environment["PATH"])  # noqa: F821
if filecheck is None or msd_opt is None:
    raise RuntimeError("lit needs `filecheck` and `msd-opt` on PATH: install the project (python3 dev.py test)")
config.substitutions.append(("FileCheck", filecheck))  # noqa: F821
config.substitutions.append(("msd-opt", msd_opt))  # noqa: F821
