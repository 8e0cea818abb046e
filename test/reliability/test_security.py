"""Security: no code runs that was not meant to. No pickles (one restricted exception), no eval/exec,
no remote code, and paths from parameters checked before anything is read from them.
"""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = [ROOT / "frozen_vlm_perception", ROOT / "launch", ROOT / "tools"]
# The one module allowed to unpickle: HAPT's Python 2 pandas pickle, through an allow-list unpickler.
PICKLE_ALLOWED = {Path("frozen_vlm_perception/data/hapt.py")}
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _name(node: ast.AST) -> str:
    """``a.b.c`` for Name/Attribute chains, "" for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _name(node.value)
        return f"{head}.{node.attr}" if head else ""
    return ""


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


def _is_const(node, value) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def findings(source: str, path: Path = Path("<string>")) -> list[str]:
    """What in ``source`` could run code that was not meant to (one line per finding)."""
    out = []
    allowed_pickle = path in PICKLE_ALLOWED
    for node in ast.walk(ast.parse(source)):
        where = f"{path}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not allowed_pickle:
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.split(".")[0] in PICKLE_MODULES:
                    out.append(f"{where}: imports {module} (pickles run code when loaded)")
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                if _name(base).endswith("Unpickler") and not allowed_pickle:
                    out.append(f"{where}: subclasses {_name(base)}")
        if not isinstance(node, ast.Call):
            continue
        func = _name(node.func)
        last = func.rsplit(".", 1)[-1]
        head = func.split(".")[0]
        if func in ("eval", "exec", "compile", "__import__"):
            out.append(f"{where}: {func}()")
        elif head in PICKLE_MODULES and last in ("load", "loads", "Unpickler", "open"):
            out.append(f"{where}: {func}()")
        elif last == "read_pickle":
            out.append(f"{where}: {func}()")
        elif func in ("torch.load", "torch.serialization.load"):
            if not _is_const(_keyword(node, "weights_only"), True):
                out.append(f"{where}: torch.load without weights_only=True")
        elif func in ("np.load", "numpy.load"):
            allow = _keyword(node, "allow_pickle")
            if allow is not None and not _is_const(allow, False):
                out.append(f"{where}: {func}(allow_pickle=...)")
        elif func in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
            loader = _name(_keyword(node, "Loader")) if _keyword(node, "Loader") is not None else ""
            if last in ("unsafe_load", "full_load") or not loader.endswith("SafeLoader"):
                out.append(f"{where}: {func} without SafeLoader (use yaml.safe_load)")
        elif func in ("os.system", "os.popen") or (
            head == "subprocess" and _is_const(_keyword(node, "shell"), True)
        ):
            out.append(f"{where}: {func} through a shell")
        if _is_const(_keyword(node, "trust_remote_code"), True):
            out.append(f"{where}: {func}(trust_remote_code=True)")
    return out


def test_the_scanner_finds_what_it_looks_for():
    bad = """
import pickle
from dill import loads
import numpy as np, torch, yaml, subprocess, os, pandas as pd
pickle.load(f); pickle.loads(b); np.load(f, allow_pickle=True); torch.load(p)
torch.load(p, weights_only=False); eval("1"); exec("x = 1"); yaml.load(s); yaml.load(s, Loader=yaml.Loader)
subprocess.run(cmd, shell=True); os.system("ls"); pd.read_pickle(p)
AutoModel.from_pretrained(p, trust_remote_code=True)
class U(pickle.Unpickler): pass
"""
    found = findings(bad)
    assert len(found) == 16, "\n".join(found)
    fine = """
import numpy as np, torch, yaml, subprocess
model.eval(); torch.load(p, map_location="cpu", weights_only=True); np.load(f); np.load(f, allow_pickle=False)
yaml.safe_load(s); yaml.load(s, Loader=yaml.SafeLoader); subprocess.run(["ls"]); ast.literal_eval("1")
"""
    assert findings(fine) == []


def test_package_source_never_unpickles_or_evaluates():
    files = sorted(p for base in SCANNED if base.is_dir() for p in base.rglob("*.py"))
    assert len(files) > 20
    problems = [f for p in files for f in findings(p.read_text(), p.relative_to(ROOT))]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------------
# The one exception: HAPT's restricted unpickler


def _hapt_allowed() -> dict[str, object]:
    """The twelve globals HAPT.pkl.gz needs (Python 2 names, design doc), each with the harmless object
    it must resolve to today, imported here independently of hapt.py's table."""
    import _codecs
    import builtins

    import numpy as np
    import numpy._core.multiarray
    import pandas.core.frame
    import pandas.core.indexes.base
    import pandas.core.indexes.range
    import pandas.core.internals.managers

    from frozen_vlm_perception.data import hapt

    return {
        "__builtin__.object": builtins.object,
        "__builtin__.slice": builtins.slice,
        "_codecs.encode": _codecs.encode,
        "copy_reg._reconstructor": hapt._reconstructor,  # the restricted stand-in, not copyreg's
        "numpy.dtype": np.dtype,
        "numpy.ndarray": np.ndarray,
        "numpy.core.multiarray._reconstruct": numpy._core.multiarray._reconstruct,
        "pandas.core.frame.DataFrame": pandas.core.frame.DataFrame,
        "pandas.core.indexes.base.Index": pandas.core.indexes.base.Index,
        "pandas.core.indexes.base._new_Index": pandas.core.indexes.base._new_Index,
        "pandas.core.indexes.range.RangeIndex": pandas.core.indexes.range.RangeIndex,
        "pandas.core.internals.managers.BlockManager": pandas.core.internals.managers.BlockManager,
    }


def _find_class(qualified: str):
    from frozen_vlm_perception.data import hapt

    module, name = qualified.rsplit(".", 1)
    return hapt._HaptUnpickler(io.BytesIO(b"."), encoding="latin1").find_class(module, name)


def test_hapt_unpickler_resolves_each_allowed_name_to_the_intended_object():
    import copyreg

    from frozen_vlm_perception.data import hapt

    allowed = _hapt_allowed()
    assert len(allowed) == 12
    for qualified, intended in allowed.items():
        assert _find_class(qualified) is intended, qualified
    assert _find_class("copy_reg._reconstructor") is not copyreg._reconstructor
    # Nothing beyond the twelve is in the table (each entry was resolved above).
    assert {f"{m}.{n}" for m, n in hapt._ALLOWED_GLOBALS} == set(allowed) - {"copy_reg._reconstructor"}


@pytest.mark.parametrize(
    "qualified",
    [
        "os.system", "posix.system", "nt.system", "os.popen", "os.execv", "subprocess.Popen",
        "subprocess.check_output", "builtins.eval", "builtins.exec", "builtins.getattr",
        "builtins.__import__", "builtins.open", "__builtin__.eval", "__builtin__.exec",
        "__builtin__.getattr", "__builtin__.__import__", "__builtin__.apply", "copyreg._reconstructor",
        "copy_reg.__newobj__", "numpy.load", "numpy.core.multiarray.scalar", "pandas.read_pickle",
        "pandas.eval", "_codecs.decode", "importlib.import_module", "pickle.loads",
    ],
)  # fmt: skip
def test_hapt_unpickler_refuses_every_other_global(qualified):
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _find_class(qualified)


@pytest.mark.parametrize(
    "payload",
    [
        "cos\nsystem\n(S'touch {marker}'\ntR.",  # os.system("touch ...")
        "cposix\nsystem\n(S'touch {marker}'\ntR.",  # what pickle.dumps writes for os.system
        "csubprocess\ncheck_call\n((S'touch'\nS'{marker}'\nltR.",
        'cbuiltins\nexec\n(S\'open("{marker}", "w")\'\ntR.',
        # An allowed name used as a gadget: the Python 2 reconstructor on a class it is not meant for.
        "ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nc__builtin__\nobject\nNtR.",
    ],
    ids=["os.system", "posix.system", "subprocess", "builtins.exec", "reconstructor-gadget"],
)
def test_hapt_unpickler_refuses_code_execution(payload, tmp_path):
    from frozen_vlm_perception.data import hapt

    marker = tmp_path / "pwned"
    data = payload.format(marker=marker).encode()
    with pytest.raises(pickle.UnpicklingError, match="not allowed|refusing"):
        hapt._HaptUnpickler(io.BytesIO(data), encoding="latin1").load()
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Paths from parameters


@pytest.mark.slow
@pytest.mark.parametrize("node_kind", ["perception", "reasoning"])
def test_model_dir_parameters_are_validated_at_configure(node_kind, context, model_dir, tmp_path, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode
    from frozen_vlm_perception.nodes.reasoning_node import ReasoningNode

    cls = PerceptionNode if node_kind == "perception" else ReasoningNode
    no_config = tmp_path / "no_config"
    no_config.mkdir()
    (no_config / "model.safetensors").write_bytes(b"\0" * 16)
    cases = {
        f"{model_dir}\x00/../../etc": "contains a NUL byte",
        str(model_dir / "config.json"): "is a file, not a model folder",
        str(no_config): "is a folder without config.json",
        str(tmp_path / "missing"): "not found; looked in",
    }
    for value, message in cases.items():
        capfd.readouterr()
        node = cls(context=context, parameter_overrides=[Parameter("model_dir", value=value)])
        try:
            assert node.trigger_configure() == R.FAILURE
            assert node.pipeline is None
            # Nothing half-started: rclpy's own parameter events and services only.
            assert not list(node.subscriptions)
            assert [p.topic_name for p in node.publishers] == ["/parameter_events"]
            assert not [s.srv_name for s in node.services if s.srv_name.endswith("/query")]
        finally:
            node.destroy_node()
        log = capfd.readouterr().err
        assert "configure failed" in log and message in log, (value, log)


# --------------------------------------------------------------------------------------------------
# DDS security: what can be checked without ros2cli (see docs/SECURITY.md)


@pytest.mark.slow
@pytest.mark.parametrize("keystore", ["missing", "fake-enclave"])
def test_runner_fails_closed_when_security_is_enforced_but_unusable(keystore, ros_env, tmp_path, monkeypatch):
    """ROS_SECURITY_ENABLE=true + Enforce with no keystore, or with an enclave whose files are not
    real certificates (or, with these PyPI wheels, a Fast DDS built without security): the runner must
    refuse to start, never run unsecured."""
    from node_harness import ChildProcess

    store = tmp_path / "keystore"
    if keystore == "fake-enclave":
        enclave = store / "enclaves" / "frozen_vlm_perception" / "runner"
        enclave.mkdir(parents=True)
        for name in ("identity_ca.cert.pem", "cert.pem", "key.pem", "permissions_ca.cert.pem",
                     "governance.p7s", "permissions.p7s"):  # fmt: skip
            (enclave / name).write_text("not a certificate\n")
    monkeypatch.setenv("ROS_SECURITY_ENABLE", "true")
    monkeypatch.setenv("ROS_SECURITY_STRATEGY", "Enforce")
    monkeypatch.setenv("ROS_SECURITY_KEYSTORE", str(store))
    child = ChildProcess(["-m", "frozen_vlm_perception.nodes.runner", "--nodes", "perception",
                          "--ros-args", "--enclave", "/frozen_vlm_perception/runner"])  # fmt: skip
    try:
        code = child.proc.wait(timeout=120)
    finally:
        child.stop()
    assert code == 2, child.output[-3000:]
    assert "fvp-runner: ready" not in child.output
    assert "error:" in child.output and "secur" in child.output.lower(), child.output[-3000:]


@pytest.mark.slow
def test_invalid_topic_parameters_fail_configure_with_the_parameter_named(context, model_dir, capfd):
    from rclpy.lifecycle import TransitionCallbackReturn as R
    from rclpy.parameter import Parameter

    from frozen_vlm_perception.nodes.perception_node import PerceptionNode
    from frozen_vlm_perception.nodes.reasoning_node import ReasoningNode

    for cls, name in ((PerceptionNode, "camera.topic"), (ReasoningNode, "latents_topic")):
        overrides = [
            Parameter("model_dir", value=str(model_dir)),
            Parameter(name, value="camera image; rm -rf"),
        ]
        node = cls(context=context, parameter_overrides=overrides)
        try:
            assert node.trigger_configure() == R.FAILURE
            assert node.pipeline is None and not list(node.subscriptions)  # refused before loading anything
        finally:
            node.destroy_node()
        log = capfd.readouterr().err
        assert f"parameter '{name}': Invalid topic name" in log, log
