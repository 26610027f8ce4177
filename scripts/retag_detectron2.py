"""Fetch upstream detectron2 from PyPI (``sal-detectron2``) and retag it as a pure-Python ``py3-none-any`` wheel.

The PyPI build is tagged cp310 only because it ships a ``_C`` compiled for an old torch. Its Python code is
version-independent and ``_C`` is optional (kern_d2 never calls it), so we drop ``_C*.so`` and the stray
top-level ``tools/`` package, fix the RECORD, and set the tag to py3.
"""
import argparse
import pathlib
import subprocess
import sys
import tempfile
import zipfile


def retag(src: pathlib.Path, dst: pathlib.Path) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            name = info.filename
            if name.startswith("tools/") or (name.startswith("detectron2/_C") and name.endswith(".so")):
                continue
            data = zin.read(name)
            if name.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines()
                lines = [l for l in lines if not l.startswith("tools/") and "_C.cpython" not in l]
                data = ("\n".join(lines) + "\n").encode()
            elif name.endswith(".dist-info/WHEEL"):
                lines = ["Tag: py3-none-any" if l.startswith("Tag:") else l for l in data.decode().splitlines()]
                data = ("\n".join(lines) + "\n").encode()
            zout.writestr(info, data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="0.7.2")
    parser.add_argument("--out", required=True, help="folder for the retagged wheel")
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.10", "-d", tmp, f"sal-detectron2=={args.version}"]
        subprocess.run(cmd, check=True)
        wheels = list(pathlib.Path(tmp).glob("sal_detectron2-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"retag_detectron2: expected one sal-detectron2 wheel in {tmp}, found {wheels}")
        dst = out / f"sal_detectron2-{args.version}-py3-none-any.whl"
        retag(wheels[0], dst)
    print(f"retag_detectron2: wrote {dst}")


if __name__ == "__main__":
    main()
