"""Executes notebooks top to bottom with nbclient against the vtl kernel and saves them with
their outputs (what notebooks/ commits).

usage: .venv/bin/python tools/run_notebooks.py [--vtl ./vtl] [notebooks/*.ipynb]

The kernelspec is installed into a temporary prefix (`vtl kernel install --prefix`), so
nothing outside it is touched. Stops at the first cell error, leaving that notebook unsaved.
"""
import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import nbformat
from nbclient import NotebookClient

ap = argparse.ArgumentParser()
ap.add_argument("--vtl", default="./vtl")
ap.add_argument("notebooks", nargs="*")
args = ap.parse_args()
paths = args.notebooks or sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "notebooks", "*.ipynb")))

prefix = tempfile.mkdtemp(prefix="vtl-kernelspec-")
subprocess.run([os.path.abspath(args.vtl), "kernel", "install", "--prefix", prefix], check=True, stdout=subprocess.DEVNULL)
os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")

for path in paths:
    nb = nbformat.read(path, as_version=4)
    t0 = time.time()
    client = NotebookClient(nb, kernel_name="vtl", timeout=600, allow_errors=False,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    client.execute()
    nbformat.write(nb, path)
    print(f"{path}: {len(nb.cells)} cells in {time.time() - t0:.1f} s", flush=True)
