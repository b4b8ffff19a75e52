from __future__ import annotations

import subprocess
import sys


def test_soft_fd_limit_is_raised_to_the_hard_limit():
    code = (
        "import resource\n"
        "from millionws.server.supervisor import Supervisor\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "print(Supervisor.raise_fd_limit() == (hard, hard) == resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_many_workers_start(start_server):
    # 40 workers: the inter-worker mesh gives the supervisor > 1 024 descriptors, past select()'s FD_SETSIZE.
    server = start_server(workers=40)
    assert len(server.worker_pids()) == 40 and all(server.worker_pids())
