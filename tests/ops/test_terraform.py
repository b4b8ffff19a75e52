"""infra/terraform: every file parses, every reference resolves, variables are documented and
validated, the node tuning script renders to valid shell, and checkov passes (or each finding
is skipped inline with a reason)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from opshelpers import DEPLOY, ROOT, TERRAFORM, load_hcl, tf_blocks, unquote

TF_FILES = sorted(TERRAFORM.rglob("*.tf"))
MODULE_DIRS = sorted({p.parent for p in TF_FILES})
NODEGROUP = TERRAFORM / "modules" / "nodegroup"


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def code_text(directory: Path) -> str:
    """All .tf text of one module with comments removed."""
    text = "\n".join(p.read_text() for p in sorted(directory.glob("*.tf")))
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(re.sub(r"^\s*(#|//).*$", "", line) for line in text.splitlines())


def declared(directory: Path, kind: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for p in sorted(directory.glob("*.tf")):
        out.update(tf_blocks(p, kind))
    return out


def declared_locals(directory: Path) -> set[str]:
    names: set[str] = set()
    for p in sorted(directory.glob("*.tf")):
        for block in load_hcl(p).get("locals", []):
            names |= {k for k in block if k != "__is_block__"}
    return names


def module_calls(directory: Path) -> dict[str, tuple[Path, dict]]:
    calls = {}
    for name, body in declared(directory, "module").items():
        calls[name] = ((directory / body["source"]).resolve(), body)
    return calls


def test_there_are_modules_and_an_example_root() -> None:
    names = {rel(d) for d in MODULE_DIRS}
    assert {
        "infra/terraform/modules/vpc",
        "infra/terraform/modules/eks",
        "infra/terraform/modules/nodegroup",
        "infra/terraform/clusters/example",
    } <= names
    assert (TERRAFORM / "README.md").is_file()


@pytest.mark.parametrize("path", TF_FILES, ids=rel)
def test_file_parses(path: Path) -> None:
    assert isinstance(load_hcl(path), dict)


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=rel)
def test_variables_are_documented_typed_and_used(directory: Path) -> None:
    variables = declared(directory, "variable")
    code = code_text(directory)
    for name, body in variables.items():
        assert body.get("description", "").strip(), f"{rel(directory)}: variable {name} has no description"
        assert "type" in body, f"{rel(directory)}: variable {name} has no type"
        assert re.search(rf"\bvar\.{re.escape(name)}\b", code), f"{rel(directory)}: variable {name} is never used"
    assert any("validation" in b for b in variables.values()), f"{rel(directory)}: no variable is validated"


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=rel)
def test_every_reference_is_declared(directory: Path) -> None:
    code = code_text(directory)
    variables = declared(directory, "variable")
    for name in set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_-]*)", code)):
        assert name in variables, f"{rel(directory)}: var.{name} is not declared"
    local_names = declared_locals(directory)
    for name in set(re.findall(r"\blocal\.([A-Za-z_][A-Za-z0-9_-]*)", code)):
        assert name in local_names, f"{rel(directory)}: local.{name} is not declared"
    calls = module_calls(directory)
    for mod, attr in set(re.findall(r"\bmodule\.([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_-]*)", code)):
        assert mod in calls, f"{rel(directory)}: module.{mod} is not declared"
        outputs = declared(calls[mod][0], "output")
        assert attr in outputs, f"{rel(directory)}: module.{mod}.{attr} is not an output of {calls[mod][0].name}"


@pytest.mark.parametrize("directory", MODULE_DIRS, ids=rel)
def test_module_inputs_exist_and_required_ones_are_passed(directory: Path) -> None:
    meta = {"source", "version", "providers", "count", "for_each", "depends_on"}
    for name, (source, body) in module_calls(directory).items():
        assert source.is_dir(), f"module {name}: source {source} missing"
        inputs = declared(source, "variable")
        passed = set(body) - meta
        unknown = passed - inputs.keys()
        assert not unknown, f"module {name} passes inputs {source.name} does not declare: {sorted(unknown)}"
        required = {v for v, b in inputs.items() if "default" not in b}
        assert required <= passed, f"module {name} misses required inputs {sorted(required - passed)}"


def test_outputs_are_described() -> None:
    for directory in MODULE_DIRS:
        for name, body in declared(directory, "output").items():
            assert body.get("description", "").strip(), f"{rel(directory)}: output {name} has no description"


def test_templatefile_vars_match_the_template() -> None:
    (call,) = re.findall(r'templatefile\("\$\{path\.module\}/([^"]+)",\s*\{(.*?)\}\)', code_text(NODEGROUP), re.S)
    template, args = call
    given = set(re.findall(r"^\s*([a-z_]+)\s*=", args, re.M))
    used = set(re.findall(r"\$\{([a-z_]+)\}", (NODEGROUP / template).read_text()))
    assert given == used, f"templatefile passes {sorted(given)} but {template} uses {sorted(used)}"


def render_user_data() -> str:
    """Render user-data.sh.tftpl with the module's variable defaults (plain ${name} substitution)."""
    defaults = {k: unquote(v["default"]) for k, v in declared(NODEGROUP, "variable").items() if "default" in v}
    text = (NODEGROUP / "user-data.sh.tftpl").read_text()
    return re.sub(r"\$\{([a-z_]+)\}", lambda m: str(defaults[m.group(1)]), text)


def test_user_data_raises_the_limits_a_million_connections_need(tmp_path: Path) -> None:
    script = render_user_data()
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    sysctls = dict(
        (k.strip(), v.strip()) for k, v in re.findall(r"^([a-z0-9_.-]+) = (.+)$", script, re.M)
    )  # fmt: skip
    for key in ("fs.nr_open", "fs.file-max", "net.core.somaxconn", "net.ipv4.ip_local_port_range",
                "net.netfilter.nf_conntrack_max"):  # fmt: skip
        assert key in sysctls, f"user data does not set {key}"
    nofile = int(re.search(r"^LimitNOFILE=(\d+)$", script, re.M).group(1))
    assert int(sysctls["fs.nr_open"]) >= nofile >= 1_048_576
    assert int(sysctls["fs.file-max"]) >= nofile
    assert int(sysctls["net.netfilter.nf_conntrack_max"]) >= 1_048_576


def test_example_cluster_version_is_the_one_manifests_are_checked_for() -> None:
    from opshelpers import example_kubernetes_version

    version = example_kubernetes_version()
    tfvars = (TERRAFORM / "clusters" / "example" / "terraform.tfvars.example").read_text()
    assert f'kubernetes_version      = "{version}"' in tfvars
    assert re.fullmatch(r"1\.\d\d", version)


def find_checkov() -> str | None:
    candidates = [
        os.environ.get("CHECKOV", ""),
        shutil.which("checkov") or "",
        str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "millionws-checkov-venv/bin/checkov"),
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


@pytest.mark.parametrize(
    ("directories", "frameworks"),
    [
        ([TERRAFORM], ["terraform"]),
        ([DEPLOY, ROOT / "locust"], ["kubernetes", "dockerfile"]),
    ],
    ids=["terraform", "kubernetes+dockerfile"],
)
def test_checkov_passes_or_each_skip_is_justified(directories: list[Path], frameworks: list[str], tmp_path) -> None:
    checkov = find_checkov()
    assert checkov, "checkov not found: run tests/ops/install-checkov.sh (or set CHECKOV=/path/to/checkov)"
    cmd = [checkov, "--skip-download", "--output", "json", "--framework", *frameworks]
    for d in directories:
        cmd += ["-d", str(d)]
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode in (0, 1), r.stdout[-2000:] + r.stderr[-2000:]
    reports = []
    decoder, text, pos = json.JSONDecoder(), r.stdout.strip(), 0
    while pos < len(text):  # one JSON document per -d directory
        doc, pos = decoder.raw_decode(text, pos)
        reports += doc if isinstance(doc, list) else [doc]
        while pos < len(text) and text[pos].isspace():
            pos += 1
    failed, skipped, passed = [], [], 0
    for report in reports:
        results = report.get("results", {})
        passed += len(results.get("passed_checks", []))
        failed += results.get("failed_checks", [])
        skipped += results.get("skipped_checks", [])
    assert passed > 0, f"checkov checked nothing: {r.stdout[:500]} {r.stderr[-500:]}"
    assert not failed, "checkov findings:\n" + "\n".join(
        f"{f['check_id']} {f['resource']} {f['file_path']}:{f['file_line_range']}" for f in failed
    )
    for s in skipped:
        reason = (s.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= 20, f"{s['check_id']} on {s['resource']} is skipped without a justification"


@pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform CLI not installed (not on PyPI/apt)")
def test_terraform_fmt_is_clean() -> None:
    r = subprocess.run(["terraform", "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
