"""The fuzz target fuzz/fuzz_server.py: its seeds, a hypothesis run in process, a bounded atheris run.

The target drives millionws.protocol.http (with h11) and millionws.protocol.websocket in process, and above them the
/pubsub JSON handling (PubSub, Hub and the records between two fake workers) and App.handle (fuzz/app_layer.py), and
asserts their invariants (see the docstrings).  ``just fuzz`` runs it for as long as one likes; here it runs for
about 20 seconds under atheris (coverage-guided), and for a few hundred hypothesis examples in any case, so that the
suite exercises the same target when atheris is not installed."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.wscodec import OP_TEXT, close_frame, encode

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
sys.path.insert(0, str(FUZZ))
import fuzz_server  # noqa: E402

SEEDS = sorted((FUZZ / "seeds").iterdir())


def test_seeds_are_current_and_pass() -> None:
    """fuzz/seeds is what ``--write-seeds`` makes, and every seed reaches its layer and passes."""
    made = fuzz_server.seeds()
    assert {p.name for p in SEEDS} == set(made)
    for path in SEEDS:
        assert path.read_bytes() == made[path.name], f"{path.name}: run fuzz_server.py --write-seeds fuzz/seeds"
        fuzz_server.one_input(path.read_bytes())


def test_invariants_catch_a_bad_frame() -> None:
    """The checks can fail: a masked server frame, a Close with a code not allowed on the wire, a long header."""
    with pytest.raises(AssertionError, match="masked"):
        fuzz_server.server_frames(encode(OP_TEXT, b"x", key=b"abcd"))
    with pytest.raises(AssertionError):
        fuzz_server.server_frames(close_frame(1005, mask=False))  # 1005 must never be sent
    with pytest.raises(AssertionError, match="non-minimal"):
        fuzz_server.server_frames(encode(OP_TEXT, b"x", mask=False, length_bytes=2))
    with pytest.raises(AssertionError, match="after our Close"):
        peer = fuzz_server.Peer(125, fuzz_server.websocket.FramePool())
        peer.closed = True
        text = encode(OP_TEXT, b"x", mask=False)
        peer.sent(text, text)


def test_app_layer_invariants_can_fail() -> None:
    """The checks of modes 4-7 can fail: an unknown error code, NaN in an answer, an id out of range."""
    app_layer = fuzz_server.app_layer
    frame = fuzz_server.websocket.encode_frame
    for document in (b'{"op":"error","code":"oops","message":"m"}', b'{"op":"message","seq":NaN}',
                     b'{"op":"published","id":9007199254740992}', b'{"op":"hello"}', b"[]"):
        with pytest.raises((AssertionError, ValueError)):
            app_layer.documents([frame(1, document)], fuzz_server.server_frames)
    good = [frame(1, b'{"op":"error","code":"bad_json","message":"m"}'), frame(1, b'{"op":"gap","channel":"a"}')]
    assert len(app_layer.answers_in(good, fuzz_server.server_frames)) == 1


@st.composite
def mutated_seed(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))].read_bytes())
    rng = random.Random(draw(st.integers(0, 2**32)))
    for _ in range(draw(st.integers(1, 8))):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 2:
            del data[pos:pos + rng.randrange(1, 16)]
        else:
            data[pos:pos] = data[rng.randrange(len(data) + 1):][:rng.randrange(1, 64)]
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_seed(), st.binary(max_size=1500)))
def test_target_under_hypothesis(data: bytes) -> None:
    """The fallback fuzzer: the same target, random and seed-mutated inputs."""
    fuzz_server.one_input(data)


def test_atheris_bounded_run(tmp_path: Path) -> None:
    pytest.importorskip("atheris", reason="atheris not installed: pip install atheris (see fuzz/README.md)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_server.py"), "-atheris_runs=300000", "-max_total_time=20",
         f"-dict={FUZZ / 'http.dict'}", "-max_len=8192", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(corpus), str(FUZZ / "seeds")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    log = done.stdout + done.stderr
    crashes = sorted(tmp_path.glob("crash-*"))
    assert done.returncode == 0 and not crashes, f"finding in {crashes}:\n{log[-6000:]}"
    runs = re.search(r"Done (\d+) (?:runs )?in (\d+) second", log)
    assert runs, log[-3000:]
    executions, seconds = int(runs.group(1)), int(runs.group(2))
    cov = re.findall(r"cov: (\d+)", log)
    print(f"atheris: {executions} executions in {seconds} s, coverage {cov[-1] if cov else '?'} edges, "
          f"corpus {len(list(corpus.iterdir()))} inputs")
    # That it explored, not how fast: a shared CI machine may run it at a fraction of its usual pace.
    assert executions >= 2_000, executions
