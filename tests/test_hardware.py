"""CPU kind detection (flags, the INTERNVL_CPU_KIND override, AVX2 emulation variables) and
`internvl info --hardware`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from internvl import hardware
from internvl.cli import main
from internvl.hardware import EMULATE_AVX2_ENV, KIND_ENV, cpu_kind


@pytest.fixture
def clean_env(monkeypatch):
    for name in (KIND_ENV, "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def fake_cpu(monkeypatch, *flags: str) -> None:
    monkeypatch.setattr(hardware, "_cpuinfo", lambda: ("Test CPU", frozenset(flags)))


@pytest.mark.parametrize("flags, kind", [(("avx2", "avx512f", "amx_bf16", "avx512_bf16"), "amx_bf16"),
                                         (("avx2", "avx512f", "avx512_bf16"), "avx512_bf16"),
                                         (("avx2", "avx512f"), "avx2"), (("avx2",), "avx2"), ((), "other")])
def test_kind_from_flags(clean_env, flags, kind):
    fake_cpu(clean_env, *flags)
    assert cpu_kind() == hardware.CPUKind(kind, "detected")


def test_override_wins(clean_env):
    fake_cpu(clean_env, "avx2", "avx512_bf16")
    clean_env.setenv(KIND_ENV, "avx2")
    assert cpu_kind().kind == "avx2" and cpu_kind().emulated


@pytest.mark.parametrize("name, value, lowered", [("ATEN_CPU_CAPABILITY", "avx2", True),
                                                  ("ONEDNN_MAX_CPU_ISA", "AVX2", True),
                                                  ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),
                                                  ("ATEN_CPU_CAPABILITY", "avx512", False)])
def test_emulation_variables_lower_a_native_bf16_cpu(clean_env, name, value, lowered):
    fake_cpu(clean_env, "avx2", "avx512f", "avx512_bf16")
    clean_env.setenv(name, value)
    kind = cpu_kind()
    assert kind.kind == ("avx2" if lowered else "avx512_bf16")
    assert (f"{name}={value}" in kind.source) == lowered


def test_emulation_reaches_torch_in_a_child_process():
    """EMULATE_AVX2_ENV, set before torch starts: torch's kernels report AVX2 and the plan is the AVX2 one."""
    code = ("import json, torch; from internvl.hardware import cpu_kind; from internvl.precision import choose_plan;"
            "p = choose_plan('cpu'); print(json.dumps([torch.backends.cpu.get_cpu_capability(), cpu_kind().kind,"
            " str(p.vision), str(p.weights)]))")
    if hardware.cpu_kind().kind == "other":
        pytest.skip("not an x86 CPU with AVX2: nothing to emulate")
    env = {**os.environ, **EMULATE_AVX2_ENV, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(KIND_ENV, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    capability, kind, vision, weights = json.loads(out.stdout.strip().splitlines()[-1])
    assert capability in ("AVX2", "DEFAULT")  # never AVX512 once told not to
    assert (kind, vision, weights) == ("avx2", "torch.float32", "torch.bfloat16")


def test_info_hardware_without_a_model(clean_env, capsys):
    assert main(["info", "--hardware"]) == 0
    out = capsys.readouterr().out
    for head in ("cpu ", "isa ", "cpu kind ", "threads ", "memory ", "cuda ", "precision ", "  vision ",
                 "  prefill ", "  decode ", "fast paths", "  int8 GEMV "):
        assert f"\n{head}" in f"\n{out}", head
    assert cpu_kind().kind in out


def test_info_hardware_shows_the_avx2_plan_and_why(clean_env, capsys):
    clean_env.setenv(KIND_ENV, "avx2")
    assert main(["info", "--hardware", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "mixed: weights bf16, vision fp32, prefill fp32, decode bf16" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["vision"].split()[1] == "fp32:" and "compute-bound" in lines["vision"]
    assert lines["decode"].split()[1] == "bf16:" and "memory-bound" in lines["decode"]
    assert "INTERNVL_CPU_KIND=avx2" in lines["prefill"]


def test_info_hardware_follows_the_flags(clean_env, capsys):
    clean_env.setenv(KIND_ENV, "avx2")
    assert main(["info", "--hardware", "--device", "cpu", "--dtype", "fp32"]) == 0
    assert "precision   uniform fp32" in capsys.readouterr().out


def test_info_hardware_and_a_model(capsys):
    assert main(["info", "--hardware", "tiny-random"]) == 0
    out = capsys.readouterr().out
    assert "precision " in out and "parameters " in out


def test_info_needs_something(capsys):
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hardware" in err and "Traceback" not in err


def test_bad_precision_flag(capsys):
    with pytest.raises(SystemExit) as e:
        main(["info", "--hardware", "--precision", "fast"])
    assert e.value.code == 2
    assert "--precision" in capsys.readouterr().err


def test_available_cpus_is_this_process_cpu_set(monkeypatch):
    """The CPU set a container or taskset grants, not the host's count; the host's count where there is no
    affinity API."""
    assert hardware.available_cpus() == len(os.sched_getaffinity(0)) <= os.cpu_count()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3})
    assert hardware.available_cpus() == 2
    monkeypatch.delattr(os, "sched_getaffinity")
    assert hardware.available_cpus() == (os.cpu_count() or 1)


def test_machine_line_names_the_cpu_its_kind_and_the_cpus_granted(clean_env):
    """What the tiny recipes' reports and model cards say they ran on: the kind follows the emulation
    variables (a number measured under AVX2 emulation says avx2), the count is the process's CPU set."""
    fake_cpu(clean_env, "avx2", "avx512f", "avx512_bf16")
    clean_env.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    clean_env.setattr(hardware.torch.cuda, "is_available", lambda: False)
    assert hardware.machine_line() == "Test CPU (avx512_bf16), 2 CPUs"
    clean_env.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert hardware.machine_line() == "Test CPU (avx2), 2 CPUs"
