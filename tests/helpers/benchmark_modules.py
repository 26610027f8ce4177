"""Import a script of benchmarks/ (not a package) as a module, for the tests of its pure parts."""
import importlib.util
import os

from tests.helpers import REPO_ROOT



def load_benchmark(name: str):
    """benchmarks/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
