from __future__ import annotations

import subprocess
import sys


def test_soft_fd_limit_is_raised_to_the_hard_limit():
    code = (
        "import resource\n"
        "from millionws.supervisor import Supervisor\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))\n"
        "print(Supervisor.raise_fd_limit() == (hard, hard) == resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
