#!/usr/bin/env bash
# Builds interfaces/frozen_vlm_perception_interfaces into the venv with the ROS 2 wheels' CMake
# (rosidl generators + ament_cmake). The venv itself is the ament prefix.
# Usage: tools/build_interfaces.sh VENV
set -euo pipefail
venv=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"

# The wheels' exported *.cmake files carry the wheel builder's Python and numpy include paths
# (/opt/python/cp311-cp311/...): point them at this venv's, or the generated C extension cannot build.
"$py" - "$venv" <<'PY'
import pathlib, re, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
py_include = sysconfig.get_paths()["include"]
np_include = numpy.get_include()
pattern = re.compile(r"/opt/python/cp311-cp311/[^;\"\s)]*")
def replace(m):
    path = m.group(0)
    if "numpy" in path:
        return np_include
    if path.rstrip("/").endswith(("include/python3.11", "include")):
        return py_include
    return path
changed = 0
for f in (venv / "share").rglob("*.cmake"):
    text = f.read_text(errors="replace")
    if "/opt/python/cp311-cp311/" in text:
        f.write_text(pattern.sub(replace, text))
        changed += 1
print(f"[build_interfaces] rewrote builder paths in {changed} cmake file(s)")
PY

build="$root/build/interfaces"
rm -rf "$build"; mkdir -p "$build"
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
export PATH="$venv/bin:$PATH"
cmake -S "$root/interfaces/frozen_vlm_perception_interfaces" -B "$build" \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$py" -DBUILD_TESTING=OFF \
  -DCMAKE_BUILD_TYPE=Release > "$build/build.log" 2>&1 || { cat "$build/build.log"; exit 1; }
cmake --build "$build" -j 2 >> "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
cmake --install "$build" >> "$build/build.log" 2>&1 || { tail -50 "$build/build.log"; exit 1; }
echo "[build_interfaces] installed frozen_vlm_perception_interfaces into $venv"
