import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Several workers share the machine's cores: one torch (OpenMP) thread each, also in the processes
    # they start.  torch's default of one thread per core makes every worker's eager reference spin
    # against the others' (measured: a 2.5 s test took 22 s on 2 cores with 2 workers).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
